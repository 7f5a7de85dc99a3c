// Host stand-in for kernels/common.cuh, so that kernels/rng.cuh compiles with a plain C++ compiler
// (tests/noise.rs, rng_cuh_compiled_for_the_host_matches_the_reference). The CUDA intrinsics it
// uses get their exact host meaning: __umulhi is the high word of the product, __funnelshift_l
// with equal halves a rotation, __dmul_rn/__dadd_rn IEEE double ops (compiled without
// contraction); log, sqrt and sincos are the host libm's, as in src/dp/noise.rs.
#pragma once
#include <cmath>
#include <cstdint>
#define __device__
#define __forceinline__ inline
static inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
static inline uint32_t __funnelshift_l(uint32_t lo, uint32_t hi, int n) {
  n &= 31;
  return n ? (hi << n) | (lo >> (32 - n)) : hi;
}
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
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
};
