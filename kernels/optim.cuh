// One element's optimizer update, shared by optim.cu's kernels and dp.cu's noised updates (DP-SGD's
// noise, division and update in one pass), so both round alike. A header because the build puts
// every .cu in one translation unit, and tests/host_cuda compiles dp.cu with it for the host.
//
// Every operation is rounded exactly as src/backend/cpu/optim.rs rounds it: __fmul_rn / __fadd_rn /
// __fsub_rn are never contracted into fused multiply-adds, and sqrtf and `/` are correctly rounded
// (no fast-math). An update is then bit-identical on both backends.
#pragma once
#include "common.cuh"
#include "step_values.cuh"

namespace dpgan {

// a·b + c with two roundings, as the CPU computes it.
__device__ __forceinline__ float mul_add_rn(float a, float b, float c) { return __fadd_rn(__fmul_rn(a, b), c); }

// No momentum: returns w − lr·(grad + wd·w).
__device__ __forceinline__ float sgd_plain_update(const SgdUpdateParams& p, float w, float grad) {
  const float g = mul_add_rn(p.weight_decay, w, grad);
  return __fsub_rn(w, __fmul_rn(p.lr, g));
}

// g ← grad + wd·w; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; returns w − step_size·m / (sqrt(v)/bias2_sqrt + ε).
__device__ __forceinline__ float adam_update(const AdamUpdateParams& p, float w, float grad, float* m, float* v) {
  const float g = mul_add_rn(p.weight_decay, w, grad);
  const float m_i = __fadd_rn(__fmul_rn(p.beta1, *m), __fmul_rn(1.0f - p.beta1, g));
  const float v_i = __fadd_rn(__fmul_rn(p.beta2, *v), __fmul_rn(__fmul_rn(1.0f - p.beta2, g), g));
  *m = m_i;
  *v = v_i;
  const float denom = __fadd_rn(sqrtf(v_i) / p.bias2_sqrt, p.eps);
  return __fsub_rn(w, __fmul_rn(p.step_size, m_i) / denom);
}

}  // namespace dpgan
