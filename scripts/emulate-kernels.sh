#!/usr/bin/env bash
# Runs the tiled GEMM, conv and per-example norm kernels (kernels/gemm.cu, conv.cu, dp_norms.cu) on
# the host: each block as 256 std::threads with a std::barrier for __syncthreads, against f64 loops.
# It checks index math, tails, K splits and grid-striding without a GPU; it says nothing about speed
# or about races that only a real warp schedule shows. Needs g++ with C++20. Exit status 1 on any
# mismatch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
g++ -std=c++20 -O1 -pthread -I "$here/../kernels" -x c++ "$here/emulate_kernels.cpp" -o "$out/emulate_kernels"
"$out/emulate_kernels"
