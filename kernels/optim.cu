// Optimizer updates, in place, one element per thread (grid-stride). The formulas are PyTorch's as
// documented on SgdParams / AdamParams; Adam's bias corrections arrive precomputed on the host in
// f64.
//
// Every operation is rounded exactly as src/backend/cpu/optim.rs rounds it: __fmul_rn / __fadd_rn /
// __fsub_rn are never contracted into fused multiply-adds, and sqrtf and `/` are correctly rounded
// (no fast-math). An update is then bit-identical on both backends, so a run can move between
// them and the tests can compare exactly.
#include "common.cuh"

namespace dpgan {

// a·b + c with two roundings, as the CPU computes it.
__device__ __forceinline__ float mul_add_rn(float a, float b, float c) { return __fadd_rn(__fmul_rn(a, b), c); }

}  // namespace dpgan

// No momentum: p ← p − lr·(g + wd·p).
extern "C" __global__ void optim_sgd_update_f32(SgdUpdateParams p, float* __restrict__ param,
                                                const float* __restrict__ grad) {
  DPGAN_FOR_EACH(i, p.n) {
    const float w = param[i];
    const float g = dpgan::mul_add_rn(p.weight_decay, w, grad[i]);
    param[i] = __fsub_rn(w, __fmul_rn(p.lr, g));
  }
}

// g ← g + wd·p; buf ← momentum·buf + (1 − dampening)·g; p ← p − lr·(nesterov ? g + momentum·buf : buf).
extern "C" __global__ void optim_sgd_momentum_update_f32(SgdUpdateParams p, float* __restrict__ param,
                                                         const float* __restrict__ grad,
                                                         float* __restrict__ momentum_buf) {
  const float damp = 1.0f - p.dampening;
  DPGAN_FOR_EACH(i, p.n) {
    const float w = param[i];
    const float g = dpgan::mul_add_rn(p.weight_decay, w, grad[i]);
    const float buf = __fadd_rn(__fmul_rn(p.momentum, momentum_buf[i]), __fmul_rn(damp, g));
    momentum_buf[i] = buf;
    const float step = p.nesterov ? dpgan::mul_add_rn(p.momentum, buf, g) : buf;
    param[i] = __fsub_rn(w, __fmul_rn(p.lr, step));
  }
}

// g ← g + wd·p; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − step_size·m / (sqrt(v)/bias2_sqrt + ε).
extern "C" __global__ void optim_adam_update_f32(AdamUpdateParams p, float* __restrict__ param,
                                                 const float* __restrict__ grad, float* __restrict__ m,
                                                 float* __restrict__ v) {
  const float one_minus_beta1 = 1.0f - p.beta1, one_minus_beta2 = 1.0f - p.beta2;
  DPGAN_FOR_EACH(i, p.n) {
    const float w = param[i];
    const float g = dpgan::mul_add_rn(p.weight_decay, w, grad[i]);
    const float m_i = __fadd_rn(__fmul_rn(p.beta1, m[i]), __fmul_rn(one_minus_beta1, g));
    const float v_i = __fadd_rn(__fmul_rn(p.beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
    m[i] = m_i;
    v[i] = v_i;
    const float denom = __fadd_rn(sqrtf(v_i) / p.bias2_sqrt, p.eps);
    param[i] = __fsub_rn(w, __fmul_rn(p.step_size, m_i) / denom);
  }
}
