#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler from PyPI into a virtual environment and prints nvcc's path.
#
#   scripts/install-nvcc.sh [VENV_DIR]      (default: $DPGAN_NVCC_VENV or .venv-nvcc in the repo)
#
# Idempotent: a venv that already holds exactly the pinned versions is reused without touching pip.
# All four packages are pinned together: a newer nvvm would emit PTX that driver 580 (CUDA 13.0)
# rejects.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-${DPGAN_NVCC_VENV:-$root/.venv-nvcc}}
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
)
stamp="$venv/.dpgan-pins"
want=$(printf '%s\n' "${pins[@]}")

find_nvcc() { ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$(find_nvcc)" ]; then
  find_nvcc
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "install-nvcc: $python not found; install Python 3 first" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
nvcc=$(find_nvcc)
[ -x "$nvcc" ] || { echo "install-nvcc: nvcc not found under $venv after install" >&2; exit 1; }
printf '%s\n' "$want" >"$stamp"
echo "$nvcc"
