// Gaussian noise added in place: x[e] ← x[e] + std·z[e], z[e] the key's standard normal of element
// e (rng.cuh; reference: src/backend/cpu/rng.rs). One element per thread, grid-stride; no state on
// the device, so any element can be computed in any order.
#include "common.cuh"
#include "rng.cuh"

namespace dpgan {

template <int GEN>
__device__ __forceinline__ void gaussian_add(const GaussianNoiseParams& p, float* __restrict__ x) {
  DPGAN_FOR_EACH(i, p.n) {
    // Two roundings, as on the CPU (no fused multiply-add).
    x[i] = __fadd_rn(x[i], __fmul_rn(p.std, standard_normal_at<GEN>(p.key, (uint64_t)i)));
  }
}

}  // namespace dpgan

extern "C" __global__ void rng_gaussian_add_philox_f32(GaussianNoiseParams p, float* __restrict__ x) {
  dpgan::gaussian_add<dpgan::NOISE_PHILOX>(p, x);
}

extern "C" __global__ void rng_gaussian_add_chacha_f32(GaussianNoiseParams p, float* __restrict__ x) {
  dpgan::gaussian_add<dpgan::NOISE_CHACHA>(p, x);
}
