#!/usr/bin/env bash
# Runs dpgan's CUDA kernels on the host (scripts/emulate/host_cuda.h: each block as one std::thread
# per CUDA thread, std::barriers for __syncthreads and warp shuffles) against references: every
# program in scripts/emulate/, each for one family of kernels. It checks index math, tails,
# grid-striding, shared-memory staging and reductions without a GPU; it says nothing about speed
# or about races that only a real warp schedule shows. Needs g++ with C++20. Exit status 1 on any
# mismatch. Arguments: program names to run (default: all), e.g. `tiled pointwise`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
if [ $# -eq 0 ]; then
  set -- $(cd "$here/emulate" && ls *.cpp | sed 's/\.cpp$//')
fi
status=0
for program in "$@"; do
  # No contraction: a*b + c rounds twice, as the kernels' __fmul_rn/__fadd_rn and nvcc's
  # explicit-rounding intrinsics do.
  g++ -std=c++20 -O1 -ffp-contract=off -frounding-math -pthread -I "$here/../kernels" -I "$here/emulate" -x c++ \
    "$here/emulate/$program.cpp" -o "$out/$program"
  "$out/$program" || status=1
done
exit $status
