// Grouped f32 GEMM: C[g] = op(A[g]) · op(B[g]), row-major, all four transpose combinations.
// The tiled main loop is gemm_tile.cuh's (square tiles, K step 16, 256 threads, f32 accumulation),
// in the build the kernel names. Grid: x = tiles of N, y = tiles of M, z = (group, K slice),
// grid-striding in z.
#include "gemm_tile.cuh"

namespace dpgan {

// C's row-major [M, N] layout, offset to the (slice, group) matrix by the caller. With BIAS the
// group's bias[n] is added to the first K slice's partial product only, so the slices' sum holds
// it once (without a split: the same single rounding as a separate add).
template <bool BIAS>
struct GemmEpilogue {
  int n;
  const float* __restrict__ bias;  // the group's [N] on the first slice, else nullptr
  __device__ __forceinline__ int64_t row(int m) const { return (int64_t)m * n; }
  __device__ __forceinline__ int64_t col(int j) const { return j; }
  __device__ __forceinline__ float value(int, int j, float c) const {
    if constexpr (BIAS) return bias != nullptr ? c + bias[j] : c;
    return c;
  }
};

template <bool TRANS_A, bool TRANS_B, class Build, bool BIAS = false>
__device__ __forceinline__ void gemm_grouped(const GemmParams& p, const float* __restrict__ a,
                                             const float* __restrict__ b, float* __restrict__ c,
                                             typename Build::Tiles& smem, const float* __restrict__ bias = nullptr) {
  using ALoader = typename std::conditional<TRANS_A, tile::MNMajorLoader<Build>, tile::KMajorLoader<Build>>::type;
  using BLoader = typename std::conditional<TRANS_B, tile::KMajorLoader<Build>, tile::MNMajorLoader<Build>>::type;
  const int m0 = blockIdx.y * Build::TILE, n0 = blockIdx.x * Build::TILE;
  const int64_t a_size = (int64_t)p.m * p.k, b_size = (int64_t)p.k * p.n, c_size = (int64_t)p.m * p.n;
  const int64_t work = (int64_t)p.groups * p.splits;
  for (int64_t z = blockIdx.z; z < work; z += gridDim.z) {
    const int g = (int)(z / p.splits), s = (int)(z % p.splits);
    const ALoader la{a + g * a_size, m0, p.m, p.k};
    const BLoader lb{b + g * b_size, n0, p.n, p.k};
    const tile::KRange kr = tile::split_range(s, p.split_len, p.k);
    float acc[Build::FRAGS][4];
    tile::run_mainloop<Build>(la, lb, kr.begin, kr.end, smem, acc);
    const GemmEpilogue<BIAS> ep{p.n, BIAS && s == 0 ? bias + (int64_t)g * p.n : nullptr};
    tile::store_tile<Build>(ep, c + ((int64_t)s * p.groups + g) * c_size, m0, n0, p.m, p.n, acc);
  }
}

}  // namespace dpgan

// One entry point per transpose combination and build, named BLAS-style by op(A) and op(B) (n: as
// stored, t: transposed) and by the build's suffix. Separate kernels, because one kernel branching
// to all four transposes needs the registers of all four (126 against 64 at sm_90), halving the
// blocks an SM holds.
#define DPGAN_GEMM(name, TRANS_A, TRANS_B, BUILD)                                                           \
  extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)                                        \
      name(GemmParams p, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c) { \
    BUILD::Tiles& smem = dpgan::tile::mainloop_tiles<BUILD>();                                              \
    dpgan::gemm_grouped<TRANS_A, TRANS_B, BUILD>(p, a, b, c, smem);                                         \
  }
// f32 FFMA.
DPGAN_GEMM(gemm_grouped_nn_fwd_f32, false, false, dpgan::tile::F32)
DPGAN_GEMM(gemm_grouped_tn_fwd_f32, true, false, dpgan::tile::F32)
DPGAN_GEMM(gemm_grouped_nt_fwd_f32, false, true, dpgan::tile::F32)
DPGAN_GEMM(gemm_grouped_tt_fwd_f32, true, true, dpgan::tile::F32)
// On TF32 tensor cores (inputs rounded to TF32, f32 accumulation), for callers that accept TF32's
// 10-bit mantissa.
DPGAN_GEMM(gemm_grouped_nn_fwd_tf32, false, false, dpgan::tile::Tf32)
DPGAN_GEMM(gemm_grouped_tn_fwd_tf32, true, false, dpgan::tile::Tf32)
DPGAN_GEMM(gemm_grouped_nt_fwd_tf32, false, true, dpgan::tile::Tf32)
DPGAN_GEMM(gemm_grouped_tt_fwd_tf32, true, true, dpgan::tile::Tf32)
// The TF32 products through the cp.async pipeline, on 64 × 64 and on 128 × 128 tiles: the same
// values as the kernels above bit for bit (the same roundings, and each element's products added
// in the same order), other ways of feeding the tensor cores, kept beside them until a GPU says
// which is fastest.
DPGAN_GEMM(gemm_grouped_nn_fwd_tf32_cp_async, false, false, dpgan::tile::Tf32CpAsync)
DPGAN_GEMM(gemm_grouped_tn_fwd_tf32_cp_async, true, false, dpgan::tile::Tf32CpAsync)
DPGAN_GEMM(gemm_grouped_nt_fwd_tf32_cp_async, false, true, dpgan::tile::Tf32CpAsync)
DPGAN_GEMM(gemm_grouped_tt_fwd_tf32_cp_async, true, true, dpgan::tile::Tf32CpAsync)
DPGAN_GEMM(gemm_grouped_nn_fwd_tf32_wide, false, false, dpgan::tile::Tf32Wide)
DPGAN_GEMM(gemm_grouped_tn_fwd_tf32_wide, true, false, dpgan::tile::Tf32Wide)
DPGAN_GEMM(gemm_grouped_nt_fwd_tf32_wide, false, true, dpgan::tile::Tf32Wide)
DPGAN_GEMM(gemm_grouped_tt_fwd_tf32_wide, true, true, dpgan::tile::Tf32Wide)
#undef DPGAN_GEMM

// x·Wᵀ + bias (a linear layer): the NT product with bias [G, N] added in the epilogue.
extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)
    gemm_grouped_nt_bias_fwd_f32(GemmParams p, const float* __restrict__ a, const float* __restrict__ b,
                                 const float* __restrict__ bias, float* __restrict__ c) {
  dpgan::tile::F32::Tiles& smem = dpgan::tile::mainloop_tiles<dpgan::tile::F32>();
  dpgan::gemm_grouped<false, true, dpgan::tile::F32, true>(p, a, b, c, smem, bias);
}

extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)
    gemm_grouped_nt_bias_fwd_tf32(GemmParams p, const float* __restrict__ a, const float* __restrict__ b,
                                  const float* __restrict__ bias, float* __restrict__ c) {
  dpgan::tile::Tf32::Tiles& smem = dpgan::tile::mainloop_tiles<dpgan::tile::Tf32>();
  dpgan::gemm_grouped<false, true, dpgan::tile::Tf32, true>(p, a, b, c, smem, bias);
}

// The rate of TF32 mma.sync on this device: `dpgan bench kernels`' tensor-core ceiling, which the
// TF32 GEMMs are measured against. Each warp multiplies one pair of fragments held in registers
// `rounds` times into MMA_PEAK_CHAINS independent accumulators (enough to cover the instruction's
// latency), with no memory traffic in the loop; each thread then writes the sum of its
// accumulators, so that nothing is optimised away and the result can be checked exactly: every
// product adds the same 16 × 8 block A·B, with A[r][k] = (r + 2k) mod 5 − 2 and
// B[k][c] = (3k + c) mod 7 − 3 (small integers, exact in TF32 and in every sum below 2^24).
constexpr int MMA_PEAK_CHAINS = 8;
extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS) gemm_mma_peak_fwd_tf32(int rounds, float* __restrict__ out) {
  using namespace dpgan::tile;
  const int lane = threadIdx.x % 32, group = lane / 4, t4 = lane % 4;
  auto a_at = [](int r, int k) { return to_tf32((float)((r + 2 * k) % 5 - 2)); };
  auto b_at = [](int k, int c) { return to_tf32((float)((3 * k + c) % 7 - 3)); };
  const uint32_t a[4] = {a_at(group, t4), a_at(group + 8, t4), a_at(group, t4 + 4), a_at(group + 8, t4 + 4)};
  const uint32_t b[2] = {b_at(t4, group), b_at(t4 + 4, group)};
  float acc[MMA_PEAK_CHAINS][4];
  zero_accumulators(acc);
  for (int i = 0; i < rounds; ++i)
#pragma unroll
    for (int c = 0; c < MMA_PEAK_CHAINS; ++c) mma_tf32(acc[c], a, b);
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < MMA_PEAK_CHAINS; ++c)
#pragma unroll
    for (int r = 0; r < 4; ++r) sum += acc[c][r];
  out[(int64_t)blockIdx.x * blockDim.x + threadIdx.x] = sum;
}
