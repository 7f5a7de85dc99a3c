// Device side of dpgan's noise generators: Philox4x32-10, the ChaCha20 block function and the
// Box–Muller samplers, bit for bit what src/dp/noise.rs (the reference) computes. A header because
// dp.cu includes it too, and the build puts every .cu in one translation unit.
//
// Every double operation that could be contracted into a fused multiply-add is written with an
// explicit rounding intrinsic (__dmul_rn, __dadd_rn), so the uniforms and the Box–Muller
// arithmetic round as on the CPU; only log, sincos (CUDA's, ≤ 2 ulp in f64) differ from the host's
// libm, which the final rounding to f32 almost always hides.
#pragma once
#include "common.cuh"
#include "step_values.cuh"

namespace dpgan {

enum NoiseGenerator : int { NOISE_PHILOX = 0, NOISE_CHACHA = 1 };

// Philox4x32 with 10 rounds (Random123's philox4x32_R(10, ctr, key)); c is updated in place.
__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint32_t hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
  }
}

__device__ __forceinline__ uint32_t rotl32(uint32_t x, int n) { return __funnelshift_l(x, x, n); }

__device__ __forceinline__ void chacha_quarter(uint32_t& a, uint32_t& b, uint32_t& c, uint32_t& d) {
  a += b; d = rotl32(d ^ a, 16);
  c += d; b = rotl32(b ^ c, 12);
  a += b; d = rotl32(d ^ a, 8);
  c += d; b = rotl32(b ^ c, 7);
}

// The ChaCha20 block function of RFC 8439 §2.3 into s[16] (all indices constant after unrolling,
// so the state stays in registers).
__device__ __forceinline__ void chacha20_block(const uint32_t key[8], uint32_t counter, uint32_t n0, uint32_t n1,
                                               uint32_t n2, uint32_t s[16]) {
  uint32_t init[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u, key[0], key[1], key[2], key[3],
                       key[4],      key[5],      key[6],      key[7],      counter, n0,     n1,     n2};
#pragma unroll
  for (int i = 0; i < 16; ++i) s[i] = init[i];
#pragma unroll
  for (int i = 0; i < 10; ++i) {
    chacha_quarter(s[0], s[4], s[8], s[12]);
    chacha_quarter(s[1], s[5], s[9], s[13]);
    chacha_quarter(s[2], s[6], s[10], s[14]);
    chacha_quarter(s[3], s[7], s[11], s[15]);
    chacha_quarter(s[0], s[5], s[10], s[15]);
    chacha_quarter(s[1], s[6], s[11], s[12]);
    chacha_quarter(s[2], s[7], s[8], s[13]);
    chacha_quarter(s[3], s[4], s[9], s[14]);
  }
#pragma unroll
  for (int i = 0; i < 16; ++i) s[i] += init[i];
}

// (⌊x / 2¹¹⌋ + 0.5)·2⁻⁵³, in (0, 1).
__device__ __forceinline__ double uniform_from_u64(uint32_t lo, uint32_t hi) {
  const uint64_t x = ((uint64_t)hi << 32) | lo;
  return __dmul_rn(__dadd_rn((double)(x >> 11), 0.5), 0x1p-53);
}

// Box–Muller: (r cos θ, r sin θ), r = sqrt(−2 ln u1), θ = 2π u2.
__device__ __forceinline__ void box_muller(double u1, double u2, double& z_cos, double& z_sin) {
  const double r = sqrt(__dmul_rn(-2.0, log(u1)));
  double s, c;
  sincos(__dmul_rn(0x1.921fb54442d18p+2, u2), &s, &c);
  z_cos = __dmul_rn(r, c);
  z_sin = __dmul_rn(r, s);
}

// The class in [0, classes) that a Philox key assigns to row r (uniform_class_at in
// src/dp/noise.rs): Philox block r, its first two words as a 64-bit u, ⌊u·classes / 2⁶⁴⌋.
__device__ __forceinline__ uint32_t uniform_class_at(const NoiseKeyParams& k, uint64_t r, uint32_t classes) {
  uint32_t c[4] = {(uint32_t)r, k.tensor_index, k.step_lo, k.step_hi};
  philox4x32_10(c, k.key[0], k.key[1]);
  const uint64_t u = ((uint64_t)c[1] << 32) | c[0];
  return (uint32_t)__umul64hi(u, (uint64_t)classes);
}

// The uniform in [0, 1) that a Philox key assigns to element e (uniform_unit_at in
// src/dp/noise.rs): Philox block e, the top 24 bits of its first word times 2⁻²⁴ (exact in f32).
__device__ __forceinline__ float uniform_unit_at(const NoiseKeyParams& k, uint64_t e) {
  uint32_t c[4] = {(uint32_t)e, k.tensor_index, k.step_lo, k.step_hi};
  philox4x32_10(c, k.key[0], k.key[1]);
  return (float)(c[0] >> 8) * (1.0f / 16777216.0f);
}

// The standard normal, rounded to f32, that the key assigns to element e (standard_normal_at in
// src/dp/noise.rs). Fast: Philox block e/2, words 0-1 and 2-3 as two 53-bit uniforms (the tails
// reach |z| = 8.6), lane e mod 2 the cos or sin normal. Secure: ChaCha20 block e/2, half e mod 2,
// the sum of four Box–Muller normals over 2 (the floating-point guard documented there).
template <int GEN>
__device__ __forceinline__ float standard_normal_at(const NoiseKeyParams& k, uint64_t e) {
  if (GEN == NOISE_PHILOX) {
    uint32_t c[4] = {(uint32_t)(e >> 1), k.tensor_index, k.step_lo, k.step_hi};
    philox4x32_10(c, k.key[0], k.key[1]);
    double z_cos, z_sin;
    box_muller(uniform_from_u64(c[0], c[1]), uniform_from_u64(c[2], c[3]), z_cos, z_sin);
    return (float)((e & 1) ? z_sin : z_cos);
  } else {
    uint32_t s[16];
    chacha20_block(k.key, (uint32_t)(e >> 1), k.tensor_index, k.step_lo, k.step_hi, s);
    const bool upper = (e & 1) != 0;
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = upper ? s[8 + i] : s[i];
    double z0, z1, z2, z3;
    box_muller(uniform_from_u64(w[0], w[1]), uniform_from_u64(w[2], w[3]), z0, z1);
    box_muller(uniform_from_u64(w[4], w[5]), uniform_from_u64(w[6], w[7]), z2, z3);
    return (float)__dmul_rn(__dadd_rn(__dadd_rn(z0, z1), __dadd_rn(z2, z3)), 0.5);
  }
}

}  // namespace dpgan
