// Optimizer updates, in place, one element per thread (grid-stride). The formulas are PyTorch's as
// documented on SgdParams / AdamParams; Adam's bias corrections arrive precomputed on the host in
// f64. Rounded exactly as src/backend/cpu/optim.rs rounds (see optim.cuh), so an update is
// bit-identical on both backends, a run can move between them and the tests can compare exactly.
#include "common.cuh"
#include "optim.cuh"

// No momentum: p ← p − lr·(g + wd·p).
extern "C" __global__ void optim_sgd_update_f32(SgdUpdateParams p, float* __restrict__ param,
                                                const float* __restrict__ grad) {
  const SgdUpdateParams hp = resolved(p);
  DPGAN_FOR_EACH(i, hp.n) { param[i] = dpgan::sgd_plain_update(hp, param[i], grad[i]); }
}

// g ← g + wd·p; buf ← momentum·buf + (1 − dampening)·g; p ← p − lr·(nesterov ? g + momentum·buf : buf).
extern "C" __global__ void optim_sgd_momentum_update_f32(SgdUpdateParams hp, float* __restrict__ param,
                                                         const float* __restrict__ grad,
                                                         float* __restrict__ momentum_buf) {
  const SgdUpdateParams p = resolved(hp);
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

// Adam (see optim.cuh's adam_update).
extern "C" __global__ void optim_adam_update_f32(AdamUpdateParams p, float* __restrict__ param,
                                                 const float* __restrict__ grad, float* __restrict__ m,
                                                 float* __restrict__ v) {
  const AdamUpdateParams hp = resolved(p);
  DPGAN_FOR_EACH(i, hp.n) { param[i] = dpgan::adam_update(hp, param[i], grad[i], &m[i], &v[i]); }
}

// An exponential moving average in place: ema ← decay·ema + (1 − decay)·x, three roundings as the
// CPU's (src/backend/cpu/optim.rs, ema_update) and as the affine, affine, add it replaces.
extern "C" __global__ void optim_ema_update_f32(EmaUpdateParams p, float* __restrict__ ema, const float* __restrict__ x) {
  const float decay = resolved(p).decay;
  const float keep = decay, take = 1.0f - decay;
  DPGAN_FOR_EACH(i, p.n) { ema[i] = __fadd_rn(__fmul_rn(keep, ema[i]), __fmul_rn(take, x[i])); }
}

// Plain SGD over up to 32 tensors in one launch (param in a, grad in b): block row y updates
// tensor y, the x blocks stride over its elements, as optim_sgd_update_f32 does.
extern "C" __global__ void optim_sgd_update_foreach_f32(SgdForeachParams p) {
  const ForeachTensor& t = p.tensors[blockIdx.y];
  const SgdUpdateParams hp = resolved(p.hp);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < t.n; i += (int64_t)blockDim.x * gridDim.x) {
    t.a[i] = dpgan::sgd_plain_update(hp, t.a[i], t.b[i]);
  }
}

// Adam over up to 32 tensors in one launch (a model's parameters): block row y updates tensor y,
// the x blocks stride over its elements. The same update per element as optim_adam_update_f32.
extern "C" __global__ void optim_adam_update_foreach_f32(AdamForeachParams p) {
  const ForeachTensor& t = p.tensors[blockIdx.y];
  const AdamUpdateParams hp = resolved(p.hp);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < t.n; i += (int64_t)blockDim.x * gridDim.x) {
    t.a[i] = dpgan::adam_update(hp, t.a[i], t.b[i], &t.c[i], &t.d[i]);
  }
}

// The EMA over up to 32 tensors in one launch (ema in a, the model's tensor in b), rounded as
// optim_ema_update_f32.
extern "C" __global__ void optim_ema_update_foreach_f32(EmaForeachParams p) {
  const ForeachTensor& t = p.tensors[blockIdx.y];
  const float decay = p.decay_at ? *p.decay_at : p.decay;
  const float keep = decay, take = 1.0f - decay;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < t.n; i += (int64_t)blockDim.x * gridDim.x) {
    t.a[i] = __fadd_rn(__fmul_rn(keep, t.a[i]), __fmul_rn(take, t.b[i]));
  }
}
