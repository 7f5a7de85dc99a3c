// Per-example squared norms of a conv layer's weight gradient, without writing any per-example
// gradient to memory (reference: src/backend/cpu/dp.rs, conv2d_weight_grad_sq_norms):
//   ‖∂W_e‖² = Σ_{o, (c,ki,kj)} (Σ_pos dy_e[o, pos] · cols(x_e)[(c,ki,kj), pos])²
// for example e = (g, b), P = HO·WO positions, KK = KH·KW. Example e's gradient is the [O, C·KK]
// product dy_e [O, P] · cols(x_e)ᵀ [P, C·KK]; each block computes one 64 × 64 tile of it with
// gemm_tile.cuh's main loop (K = P, f32 FFMA: clipping norms take no TF32 shortcut), squares the
// tile in registers and sums the squares over the block in f64, in a fixed order. Tile t of
// example e writes partial[e · tiles + t]; the launcher adds each example's tiles with reduce's
// sum_to, so the result is deterministic.
//
// This lives beside dp.cu rather than in it because dp.cu is also compiled for the host with a
// one-thread stand-in for common.cuh (tests/sanitize.rs), which cannot run a tiled kernel; this
// file runs on the host under scripts/emulate-kernels.sh instead.
#include "gemm_tile.cuh"

namespace dpgan {
namespace dp_norms {

__device__ __forceinline__ int divmod(const FastDivmod& d, int n, int& rem) {
  const int q = (int)fast_div(d, (uint32_t)n);
  rem = n - q * (int)d.divisor;
  return q;
}

// cols(x_e)ᵀ of one example as the B operand [P, C·KK]: element (pos = (oy, ox), n = (c, ki, kj)) =
// x_e[c, oy·s + ki − p, ox·s + kj − p], 0 in the padding. Threads walk pos; each thread decodes its
// Slots::LOADS columns once for the whole main loop.
template <class Build>
struct ExampleIm2colLoader {
  static constexpr bool K_CONTIGUOUS = true;
  using Slots = typename Build::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ image;  // x[g, b]
  int c_offset[Slots::LOADS];              // c·H·W of each column
  int ky[Slots::LOADS], kx[Slots::LOADS];         // ki − p, kj − p
  bool col_ok[Slots::LOADS];
  int positions, stride, in_h, in_w;
  FastDivmod out_wd;

  __device__ __forceinline__ ExampleIm2colLoader(const ConvParams& p, const float* __restrict__ x_e, int n0) {
    image = x_e;
    const int n_count = p.in_channels * (int)p.kernel_area.divisor;
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int n = n0 + Slots::mn(i);
      col_ok[i] = n < n_count;
      int tap = 0, kj = 0;
      const int c = col_ok[i] ? divmod(p.kernel_area, n, tap) : 0;
      const int ki = divmod(p.kernel_wd, tap, kj);
      c_offset[i] = c * (int)p.in_area.divisor;
      ky[i] = ki - p.padding;
      kx[i] = kj - p.padding;
    }
    positions = (int)p.out_area.divisor;
    stride = p.stride;
    in_h = p.in_h;
    in_w = p.in_w;
    out_wd = p.out_wd;
  }

  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    const int k = k0 + Slots::kk(0);
    const bool k_ok = k < positions;
    int ox = 0;
    const int oy = k_ok ? divmod(out_wd, k, ox) : 0;
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int iy = oy * stride + ky[i], ix = ox * stride + kx[i];
      const bool in_range = k_ok && col_ok[i] && (unsigned)iy < (unsigned)in_h && (unsigned)ix < (unsigned)in_w;
      put(i, in_range ? image + c_offset[i] + iy * in_w + ix : image, in_range);
    }
  }
};

// Sum over the block by a shared-memory tree: the same order on every run (and no warp shuffles,
// so the host emulation runs it as written). `scratch` holds THREADS doubles; thread 0 gets the sum.
__device__ __forceinline__ double block_tree_sum(double v, double* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int width = tile::THREADS / 2; width > 0; width >>= 1) {
    if ((int)threadIdx.x < width) scratch[threadIdx.x] += scratch[threadIdx.x + width];
    __syncthreads();
  }
  return scratch[0];
}

// Grid: x = tiles of C·KK, y = tiles of O, z grid-strides over the G·B examples.
__device__ __forceinline__ void conv2d_weight_grad_sq_norms(const ConvParams& p, const float* __restrict__ x,
                                                            const float* __restrict__ dy, float* __restrict__ partial,
                                                            tile::F32::Tiles& smem, double* scratch) {
  const int P = (int)p.out_area.divisor;
  const int M = p.out_channels;
  const int m0 = blockIdx.y * tile::F32::TILE, n0 = blockIdx.x * tile::F32::TILE;
  const int64_t tiles = (int64_t)gridDim.x * gridDim.y;
  const int64_t tile_index = (int64_t)blockIdx.y * gridDim.x + blockIdx.x;
  const int64_t x_size = (int64_t)p.in_channels * p.in_area.divisor;
  const int64_t dy_size = (int64_t)M * P;
  const int64_t examples = (int64_t)p.groups * p.batch;
  for (int64_t e = blockIdx.z; e < examples; e += gridDim.z) {
    // dy_e is a row-major [O, P] matrix: the A operand as it is.
    const tile::KMajorLoader<tile::F32> la{dy + e * dy_size, m0, M, P};
    const ExampleIm2colLoader<tile::F32> lb(p, x + e * x_size, n0);
    float acc[tile::F32::FRAGS][4];
    tile::run_mainloop<tile::F32>(la, lb, 0, P, smem, acc);
    // Entries outside O × C·KK are exact zeros (the loaders read 0 there): no mask needed.
    double sq = 0.0;
#pragma unroll
    for (int f = 0; f < tile::F32::FRAGS; ++f)
#pragma unroll
      for (int r = 0; r < 4; ++r) sq += (double)acc[f][r] * (double)acc[f][r];
    const double total = block_tree_sum(sq, scratch);
    if (threadIdx.x == 0) partial[e * tiles + tile_index] = (float)total;
    __syncthreads();  // scratch[0] is read before the next example overwrites it
  }
}

}  // namespace dp_norms
}  // namespace dpgan

extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)
    dp_conv2d_weight_grad_sq_norms_bwd_f32(ConvParams p, const float* __restrict__ x, const float* __restrict__ dy,
                                           float* __restrict__ partial) {
  dpgan::tile::F32::Tiles& smem = dpgan::tile::mainloop_tiles<dpgan::tile::F32>();
  __shared__ double scratch[dpgan::tile::THREADS];
  dpgan::dp_norms::conv2d_weight_grad_sq_norms(p, x, dy, partial, smem, scratch);
}
