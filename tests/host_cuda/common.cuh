// Host stand-in for kernels/common.cuh, so that kernels/rng.cuh and kernels/dp.cu compile with a
// plain C++ compiler (tests/noise.rs and tests/sanitize.rs, `..._compiled_for_the_host_...`). The CUDA intrinsics it
// uses get their exact host meaning: __umulhi is the high word of the product, __funnelshift_l
// with equal halves a rotation, __dmul_rn/__dadd_rn IEEE double ops (compiled without
// contraction); log, sqrt and sincos are the host libm's, as in src/dp/noise.rs.
#pragma once
#include <math.h>

#include <cfenv>
#include <cmath>
#include <cstdint>
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static
#define __restrict__ __restrict
static inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
static inline uint64_t __umul64hi(uint64_t a, uint64_t b) { return (uint64_t)(((unsigned __int128)a * b) >> 64); }
static inline uint32_t __funnelshift_l(uint32_t lo, uint32_t hi, int n) {
  n &= 31;
  return n ? (hi << n) | (lo >> (32 - n)) : hi;
}
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
// Round-toward-zero conversions through the FPU's rounding mode (compiled with -frounding-math): an
// implementation independent of the reference's f32_toward_zero.
static inline float __double2float_rz(double x) {
  const int mode = std::fegetround();
  std::fesetround(FE_TOWARDZERO);
  volatile float y = (float)x;
  std::fesetround(mode);
  return y;
}
static inline float __fmul_rz(float a, float b) {
  const int mode = std::fegetround();
  std::fesetround(FE_TOWARDZERO);
  volatile float y = a * b;
  std::fesetround(mode);
  return y;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
using std::isfinite;
using std::log;
using std::sqrt;
// glibc's sincos (a GNU extension) serves as CUDA's.

// Mirror of common.cuh's NoiseKeyParams.
struct NoiseKeyParams {
  uint32_t key[8];
  uint32_t tensor_index;
  uint32_t step_lo;
  uint32_t step_hi;
  uint32_t pad_;
  const uint32_t* step_at;
};

// One thread per block, blocks run one after another: blockIdx.x is set by the driver program.
struct HostDim3 {
  unsigned x, y;
};
static HostDim3 threadIdx = {0, 0}, blockIdx = {0, 0}, blockDim = {1, 1};
namespace dpgan {
// A one-thread block's sum is its own value, in the order the reference sums (d ascending).
static inline double block_sum_f64(double v, double*) { return v; }
}  // namespace dpgan

// Mirror of common.cuh's NoiseDivideParams.
struct NoiseDivideParams {
  int64_t n;
  float std;
  float divisor;
  NoiseKeyParams key;
};

// Mirror of common.cuh's SanitizeRowsParams.
struct SanitizeRowsParams {
  int64_t rows;
  int64_t cols;
  float clip;
  float noise_std;
  int32_t exact;
  int32_t pad_;
  NoiseKeyParams key;
};

// Mirrors of common.cuh's optimizer parameters and the noised updates' (dp.cu with optim.cuh).
struct SgdUpdateParams {
  int64_t n;
  float lr;
  float momentum;
  float dampening;
  float weight_decay;
  int32_t nesterov;
  int32_t pad_;
  const float* lr_at;
};

struct AdamUpdateParams {
  int64_t n;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  float step_size;
  float bias2_sqrt;
  const float* corrections_at;
};

// What step_values.cuh resolves besides the above (no dp.cu kernel takes it).
struct EmaUpdateParams {
  int64_t n;
  float decay;
  int32_t pad_;
  const float* decay_at;
};

struct NoisedSgdParams {
  NoiseDivideParams noise;
  SgdUpdateParams sgd;
};

struct NoisedAdamParams {
  NoiseDivideParams noise;
  AdamUpdateParams adam;
};

// Mirrors of common.cuh's multi-tensor noised updates.
#define DPGAN_FOREACH_TENSORS 32
struct NoisedForeachTensor {
  float* param;
  const float* sum;
  float* m;
  float* v;
  NoiseDivideParams noise;
};

struct NoisedSgdForeachParams {
  SgdUpdateParams sgd;
  NoisedForeachTensor tensors[DPGAN_FOREACH_TENSORS];
  int32_t count;
  int32_t pad_;
};

struct NoisedAdamForeachParams {
  AdamUpdateParams adam;
  NoisedForeachTensor tensors[DPGAN_FOREACH_TENSORS];
  int32_t count;
  int32_t pad_;
};
