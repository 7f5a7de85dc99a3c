// Elementwise kernels: fill, unary maps, broadcast binary maps.
// Exact math functions (no fast-math): losses and norms feed clipping and the privacy guarantee.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_stable(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

// DP-SGD's clip factor a / max(sqrt(max(x, 0)), a) from a squared norm x: 1 within the bound, else
// the f64 quotient rounded toward zero, so that the factor times the norm never exceeds a through
// rounding; NaN for a NaN or infinite x.
__device__ __forceinline__ float clip_factor(float x, float a) {
  if (!isfinite(x)) return __int_as_float(0x7fc00000);
  const double norm = sqrt((double)fmaxf(x, 0.0f));
  return norm <= (double)a ? 1.0f : __double2float_rz((double)a / norm);
}

__device__ __forceinline__ float unary_apply(const UnaryParams& p, float x) {
  switch (p.op) {
    case UNARY_AFFINE: return p.a * x + p.b;
    case UNARY_EXP: return expf(x);
    case UNARY_LOG: return logf(x);
    case UNARY_SQRT: return sqrtf(x);
    case UNARY_RSQRT: return 1.0f / sqrtf(x);
    case UNARY_RECIP: return 1.0f / x;
    case UNARY_SQUARE: return x * x;
    case UNARY_RELU: return fmaxf(x, 0.0f);
    case UNARY_LEAKY_RELU: return x > 0.0f ? x : p.a * x;
    case UNARY_SIGMOID: return sigmoidf_stable(x);
    case UNARY_TANH: return tanhf(x);
    case UNARY_RELU_MASK: return x > 0.0f ? 1.0f : 0.0f;
    case UNARY_LEAKY_RELU_MASK: return x > 0.0f ? 1.0f : p.a;
    case UNARY_CLIP_FACTOR: return clip_factor(x, p.a);
    default: return __int_as_float(0x7fc00000);  // an unknown code poisons the output
  }
}

__device__ __forceinline__ float binary_apply(const BinaryParams& p, float a, float b) {
  switch (p.op) {
    case BINARY_ADD: return a + b;
    case BINARY_SUB: return a - b;
    case BINARY_MUL: return a * b;
    case BINARY_DIV: return a / b;
    case BINARY_BCE_WITH_LOGITS: return fmaxf(a, 0.0f) - a * b + log1pf(expf(-fabsf(a)));
    case BINARY_LEAKY_RELU_GRAD: return b > 0.0f ? a : a * p.scalar;
    case BINARY_FIRST: return a;
    // b² rounded on its own (no fused multiply-add), as the square the rule used to launch.
    case BINARY_TANH_GRAD: return a * (1.0f - __fmul_rn(b, b));
    case BINARY_SIGMOID_GRAD: return a * (b * (1.0f - b));
    default: return __int_as_float(0x7fc00000);
  }
}

extern "C" __global__ void elementwise_fill_fwd_f32(float* __restrict__ out, float value, int64_t n) {
  DPGAN_FOR_EACH(i, n) out[i] = value;
}

extern "C" __global__ void elementwise_unary_fwd_f32(UnaryParams p, const float* __restrict__ x,
                                                     float* __restrict__ y) {
  DPGAN_FOR_EACH(i, p.n) y[i] = unary_apply(p, x[i]);
}

// Same-shape operands: no index arithmetic.
extern "C" __global__ void elementwise_binary_same_fwd_f32(BinaryParams p, const float* __restrict__ a,
                                                           const float* __restrict__ b,
                                                           float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) out[i] = binary_apply(p, a[i], b[i]);
}

// General broadcast: the output index is decomposed dim by dim into the operands' offsets.
extern "C" __global__ void elementwise_binary_broadcast_fwd_f32(BinaryParams p,
                                                                const float* __restrict__ a,
                                                                const float* __restrict__ b,
                                                                float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) {
    int64_t rest = i, ia = 0, ib = 0;
    for (int d = p.rank - 1; d >= 0; --d) {
      const int64_t idx = rest % p.shape[d];
      rest /= p.shape[d];
      ia += idx * p.a_strides[d];
      ib += idx * p.b_strides[d];
    }
    out[i] = binary_apply(p, a[ia], b[ib]);
  }
}
