#!/usr/bin/env bash
# Shrinks the GPU bundle to fit one device call: the device tool carries at most 64 MiB (working
# tree and carried paths together), and `../shared/tools/gpu-bundle` leaves about 155 MB of
# binaries in .gpu/ (each of the ~30 test executables embeds the same kernel fatbin and much of the
# same code). One xz stream with a dictionary larger than all of them together stores each shared
# part once: about 5 MB.
#
#   ../shared/tools/gpu-bundle --data mnist,fashion-mnist && scripts/gpu-pack.sh
#   device run, carry [".gpu"]:  bash scripts/gpu-session.sh tests bench     (unpacks it first)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/.gpu" 2>/dev/null || { echo "gpu-pack: no .gpu/: run ../shared/tools/gpu-bundle first" >&2; exit 1; }
[ -d bin ] && [ -d tests ] && [ -f run-tests ] || { echo "gpu-pack: .gpu/ lacks bin/, tests/ or run-tests" >&2; exit 1; }
tar cf - bin tests run-tests | xz -9e --lzma2=dict=192MiB >bundle.tar.xz.tmp
mv bundle.tar.xz.tmp bundle.tar.xz
rm -rf bin tests run-tests
total=$(du -sb . | cut -f1)
tree=$(cd "$root" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
echo "gpu-pack: .gpu/ is $((total / 1048576)) MiB, the tracked tree $((tree / 1048576)) MiB (the limit: 64 MiB together)"
if [ $((total + tree)) -gt $((64 * 1048576)) ]; then
  echo "gpu-pack: too large to carry; bundle fewer data sets (--data mnist)" >&2
  exit 1
fi
