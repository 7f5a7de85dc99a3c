// Gaussian noise added in place: x[e] ← x[e] + std·z[e], z[e] the key's standard normal of element
// e; and public draws, member by member from its own key: one-hot classes, classes, uniforms
// (rng.cuh; reference: src/backend/cpu/rng.rs). One element per thread, grid-stride; no state on
// the device, so any element can be computed in any order.
#include "common.cuh"
#include "rng.cuh"

namespace dpgan {

template <int GEN>
__device__ __forceinline__ void gaussian_add(const GaussianNoiseParams& p, float* __restrict__ x) {
  const NoiseKeyParams key = resolved(p.key);
  DPGAN_FOR_EACH(i, p.n) {
    // Two roundings, as on the CPU (no fused multiply-add).
    x[i] = __fadd_rn(x[i], __fmul_rn(p.std, standard_normal_at<GEN>(key, (uint64_t)i)));
  }
}

// Element e of member m's block (public_draws in src/backend/cpu/rng.rs): for a one-hot, 1 where
// its column is its row's drawn class (each of a row's threads recomputes the row's Philox block:
// ten rounds, cheaper than sharing it); else a class, a uniform or a normal of its own block.
// The member's key comes from the parameters, or from memory (keys_at, a step's value block).
__device__ __forceinline__ void public_draws(const PublicDrawParams& p, float* __restrict__ out) {
  const int64_t n = p.per_member * p.count;
  DPGAN_FOR_EACH(i, n) {
    const int64_t local = i / p.per_member;
    const uint64_t e = (uint64_t)(i - local * p.per_member);
    NoiseKeyParams k = {};
    const uint32_t* member_key = p.keys_at ? p.keys_at + 2 * local : p.keys[local];
    k.key[0] = member_key[0];
    k.key[1] = member_key[1];
    k.tensor_index = p.tensor_index;
    k.step_lo = p.step_lo;
    k.step_hi = p.step_hi;
    float v;
    if (p.kind == PUBLIC_DRAW_ONE_HOT) {
      const uint64_t row = e / p.classes;
      v = uniform_class_at(k, row, p.classes) == (uint32_t)(e - row * p.classes) ? 1.0f : 0.0f;
    } else if (p.kind == PUBLIC_DRAW_CLASS) {
      v = (float)uniform_class_at(k, e, p.classes);
    } else if (p.kind == PUBLIC_DRAW_UNIT) {
      v = uniform_unit_at(k, e);
    } else {
      v = standard_normal_at<NOISE_PHILOX>(k, e);
    }
    out[(int64_t)p.first * p.per_member + i] = v;
  }
}

}  // namespace dpgan

extern "C" __global__ void rng_gaussian_add_philox_f32(GaussianNoiseParams p, float* __restrict__ x) {
  dpgan::gaussian_add<dpgan::NOISE_PHILOX>(p, x);
}

extern "C" __global__ void rng_gaussian_add_chacha_f32(GaussianNoiseParams p, float* __restrict__ x) {
  dpgan::gaussian_add<dpgan::NOISE_CHACHA>(p, x);
}

extern "C" __global__ void rng_public_draws_philox_f32(PublicDrawParams p, float* __restrict__ out) {
  dpgan::public_draws(p, out);
}
