// Gaussian noise added in place: x[e] ← x[e] + std·z[e], z[e] the key's standard normal of element
// e; and one-hot rows of uniformly drawn classes (rng.cuh; reference: src/backend/cpu/rng.rs). One
// element per thread, grid-stride; no state on the device, so any element can be computed in any
// order.
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

// Element i of a [rows, classes] one-hot: 1 where its column is its row's drawn class. Each of a
// row's threads recomputes the row's Philox block (ten rounds: cheaper than sharing it).
__device__ __forceinline__ void uniform_one_hot(const UniformOneHotParams& p, float* __restrict__ out) {
  const int64_t n = p.rows * (int64_t)p.classes;
  DPGAN_FOR_EACH(i, n) {
    const uint64_t row = (uint64_t)i / p.classes;
    const uint32_t col = (uint32_t)((uint64_t)i - row * p.classes);
    out[i] = uniform_class_at(p.key, row, p.classes) == col ? 1.0f : 0.0f;
  }
}

}  // namespace dpgan

extern "C" __global__ void rng_gaussian_add_philox_f32(GaussianNoiseParams p, float* __restrict__ x) {
  dpgan::gaussian_add<dpgan::NOISE_PHILOX>(p, x);
}

extern "C" __global__ void rng_gaussian_add_chacha_f32(GaussianNoiseParams p, float* __restrict__ x) {
  dpgan::gaussian_add<dpgan::NOISE_CHACHA>(p, x);
}

extern "C" __global__ void rng_uniform_one_hot_philox_f32(UniformOneHotParams p, float* __restrict__ out) {
  dpgan::uniform_one_hot(p, out);
}
