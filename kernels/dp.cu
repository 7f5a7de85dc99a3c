// DP-SGD's noise-and-divide pass and its fusion with the optimizer update (below), and GS-WGAN's
// row sanitiser, one block per row (reference: src/backend/cpu/dp.rs):
//   out_i = g_i·min(1, clip/(‖g_i‖ + 1e-10)) + noise_std·z_i,  z from the key, element index row·cols + d
// (with p.exact, no min: every row rescaled to norm clip, GS-WGAN's σ = 0 control).
// The squared norm is summed in f64 (f32 squares are exact in f64; no overflow for any finite f32),
// the factor and the clipped values are rounded toward zero so that rounding never pushes a row
// past the clip bound. A NaN norm gives a NaN factor (a comparison, not fmin, which would return 1).
#include "common.cuh"
#include "optim.cuh"
#include "rng.cuh"

namespace dpgan {

template <int GEN>
__device__ __forceinline__ void sanitize_rows(const SanitizeRowsParams& p, const float* __restrict__ g,
                                              float* __restrict__ out) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const float* g_row = g + row * p.cols;
  float* out_row = out + row * p.cols;
  double sq = 0.0;
  for (int64_t d = threadIdx.x; d < p.cols; d += blockDim.x) {
    const double v = g_row[d];
    sq += v * v;
  }
  const double norm = sqrt(block_sum_f64(sq, scratch));
  const NoiseKeyParams key = resolved(p.key);
  const double ratio = (double)p.clip / (norm + 1e-10);
  const float factor = __double2float_rz(ratio >= 1.0 && !p.exact ? 1.0 : ratio);
  for (int64_t d = threadIdx.x; d < p.cols; d += blockDim.x) {
    float v = __fmul_rz(g_row[d], factor);
    if (p.noise_std != 0.0f) {
      v = __fadd_rn(v, __fmul_rn(p.noise_std, standard_normal_at<GEN>(key, (uint64_t)(row * p.cols + d))));
    }
    out_row[d] = v;
  }
}

// DP-SGD's noise and division of element i of the summed clipped gradient (reference:
// src/backend/cpu/dp.rs, add_gaussian_noise_and_divide): (sum + std·z[i]) / divisor with the
// roundings of rng.cu's noise followed by an elementwise division, so the value is that of the
// two separate passes. `p` is resolved (its step read from memory if it lives there).
template <int GEN>
__device__ __forceinline__ float noised_gradient(const NoiseDivideParams& p, float sum, int64_t i) {
  const float noised = __fadd_rn(sum, __fmul_rn(p.std, standard_normal_at<GEN>(p.key, (uint64_t)i)));
  return __fdiv_rn(noised, p.divisor);
}

// In place over x. One element per thread in all of these (no grid-stride: the host stand-in has
// no gridDim).
template <int GEN>
__device__ __forceinline__ void gaussian_add_divide(const NoiseDivideParams& p, float* __restrict__ x) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  x[i] = noised_gradient<GEN>(resolved(p), x[i], i);
}

// A gradient element that is not finite makes *flag NaN (0·g; every writer writes NaN, so the
// race is benign): the step's finiteness flag (src/dp/finite.rs), without the gradient in memory.
__device__ __forceinline__ void flag_nonfinite(float g, float* flag) {
  if (!isfinite(g)) *flag = __fmul_rn(0.0f, g);
}

// The noised gradient straight into the optimizer (reference: src/backend/cpu/dp.rs,
// noised_gradient, then src/backend/cpu/optim.rs): the values of add_gaussian_noise_and_divide
// followed by optim.cu's update, bit for bit, without writing the gradient out.
template <int GEN>
__device__ __forceinline__ void noised_sgd(const NoisedSgdParams& p, float* __restrict__ param,
                                           const float* __restrict__ sum, float* flag) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.noise.n) return;
  const float g = noised_gradient<GEN>(resolved(p.noise), sum[i], i);
  flag_nonfinite(g, flag);
  param[i] = sgd_plain_update(resolved(p.sgd), param[i], g);
}

template <int GEN>
__device__ __forceinline__ void noised_adam(const NoisedAdamParams& p, float* __restrict__ param,
                                            const float* __restrict__ sum, float* __restrict__ m,
                                            float* __restrict__ v, float* flag) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.noise.n) return;
  const float g = noised_gradient<GEN>(resolved(p.noise), sum[i], i);
  flag_nonfinite(g, flag);
  param[i] = adam_update(resolved(p.adam), param[i], g, &m[i], &v[i]);
}

// The same updates over up to 32 tensors in one launch: block row y updates tensor y with its own
// noise, element for element as the one-tensor kernels above.
template <int GEN>
__device__ __forceinline__ void noised_sgd_foreach(const NoisedSgdForeachParams& p, float* flag) {
  const NoisedForeachTensor& t = p.tensors[blockIdx.y];
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= t.noise.n) return;
  const float g = noised_gradient<GEN>(resolved(t.noise), t.sum[i], i);
  flag_nonfinite(g, flag);
  t.param[i] = sgd_plain_update(resolved(p.sgd), t.param[i], g);
}

template <int GEN>
__device__ __forceinline__ void noised_adam_foreach(const NoisedAdamForeachParams& p, float* flag) {
  const NoisedForeachTensor& t = p.tensors[blockIdx.y];
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= t.noise.n) return;
  const float g = noised_gradient<GEN>(resolved(t.noise), t.sum[i], i);
  flag_nonfinite(g, flag);
  t.param[i] = adam_update(resolved(p.adam), t.param[i], g, &t.m[i], &t.v[i]);
}

}  // namespace dpgan

extern "C" __global__ void dp_gaussian_add_divide_philox_f32(NoiseDivideParams p, float* __restrict__ x) {
  dpgan::gaussian_add_divide<dpgan::NOISE_PHILOX>(p, x);
}

extern "C" __global__ void dp_gaussian_add_divide_chacha_f32(NoiseDivideParams p, float* __restrict__ x) {
  dpgan::gaussian_add_divide<dpgan::NOISE_CHACHA>(p, x);
}

extern "C" __global__ void dp_noised_sgd_update_philox_f32(NoisedSgdParams p, float* __restrict__ param,
                                                           const float* __restrict__ sum, float* flag) {
  dpgan::noised_sgd<dpgan::NOISE_PHILOX>(p, param, sum, flag);
}

extern "C" __global__ void dp_noised_sgd_update_chacha_f32(NoisedSgdParams p, float* __restrict__ param,
                                                           const float* __restrict__ sum, float* flag) {
  dpgan::noised_sgd<dpgan::NOISE_CHACHA>(p, param, sum, flag);
}

extern "C" __global__ void dp_noised_adam_update_philox_f32(NoisedAdamParams p, float* __restrict__ param,
                                                            const float* __restrict__ sum, float* __restrict__ m,
                                                            float* __restrict__ v, float* flag) {
  dpgan::noised_adam<dpgan::NOISE_PHILOX>(p, param, sum, m, v, flag);
}

extern "C" __global__ void dp_noised_adam_update_chacha_f32(NoisedAdamParams p, float* __restrict__ param,
                                                            const float* __restrict__ sum, float* __restrict__ m,
                                                            float* __restrict__ v, float* flag) {
  dpgan::noised_adam<dpgan::NOISE_CHACHA>(p, param, sum, m, v, flag);
}

extern "C" __global__ void dp_noised_sgd_update_foreach_philox_f32(NoisedSgdForeachParams p, float* flag) {
  dpgan::noised_sgd_foreach<dpgan::NOISE_PHILOX>(p, flag);
}

extern "C" __global__ void dp_noised_sgd_update_foreach_chacha_f32(NoisedSgdForeachParams p, float* flag) {
  dpgan::noised_sgd_foreach<dpgan::NOISE_CHACHA>(p, flag);
}

extern "C" __global__ void dp_noised_adam_update_foreach_philox_f32(NoisedAdamForeachParams p, float* flag) {
  dpgan::noised_adam_foreach<dpgan::NOISE_PHILOX>(p, flag);
}

extern "C" __global__ void dp_noised_adam_update_foreach_chacha_f32(NoisedAdamForeachParams p, float* flag) {
  dpgan::noised_adam_foreach<dpgan::NOISE_CHACHA>(p, flag);
}

extern "C" __global__ void dp_sanitize_rows_philox_f32(SanitizeRowsParams p, const float* __restrict__ g,
                                                       float* __restrict__ out) {
  dpgan::sanitize_rows<dpgan::NOISE_PHILOX>(p, g, out);
}

extern "C" __global__ void dp_sanitize_rows_chacha_f32(SanitizeRowsParams p, const float* __restrict__ g,
                                                       float* __restrict__ out) {
  dpgan::sanitize_rows<dpgan::NOISE_CHACHA>(p, g, out);
}
