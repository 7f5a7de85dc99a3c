// The per-step values of a launch's parameters (common.cuh, "Per-step values from device memory"),
// read from memory where a pointer says so. A header of its own so that the host stand-in for
// common.cuh (tests/host_cuda/) compiles the same resolution.
#pragma once
#include "common.cuh"

__device__ __forceinline__ SgdUpdateParams resolved(SgdUpdateParams p) {
  if (p.lr_at) p.lr = *p.lr_at;
  return p;
}
__device__ __forceinline__ AdamUpdateParams resolved(AdamUpdateParams p) {
  if (p.corrections_at) {
    p.step_size = p.corrections_at[0];
    p.bias2_sqrt = p.corrections_at[1];
  }
  return p;
}
__device__ __forceinline__ EmaUpdateParams resolved(EmaUpdateParams p) {
  if (p.decay_at) p.decay = *p.decay_at;
  return p;
}
__device__ __forceinline__ NoiseKeyParams resolved(NoiseKeyParams k) {
  if (k.step_at) {
    k.step_lo = k.step_at[0];
    k.step_hi = k.step_at[1];
  }
  return k;
}
__device__ __forceinline__ NoiseDivideParams resolved(NoiseDivideParams p) {
  p.key = resolved(p.key);
  return p;
}
