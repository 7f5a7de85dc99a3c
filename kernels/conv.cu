// Grouped 2-D convolution as implicit GEMM: gemm_tile.cuh's main loop with loaders that gather the
// im2col matrix (or its adjoint) on the fly, so no column buffer ever reaches global memory.
//
// Shapes (per group g; P = HO·WO, KK = KH·KW):
//   forward       y  [O, B·P]      = w [O, C·KK]        · cols(x) [C·KK, B·P]
//   input grad    dx [C, B·H·W]    = wᵀ [C, O·KK]       · taps(dy) [O·KK, B·H·W]
//   weight grad   dw [O, C·KK]     = dy [O, B·P]        · cols(x)ᵀ [B·P, C·KK]   (K may be split)
// cols(x)[(c, ki, kj), (b, oy, ox)] = x[b, c, oy·s + ki − p, ox·s + kj − p], 0 in the padding.
// taps(dy)[(o, ki, kj), (b, iy, ix)] = dy[b, o, oy, ox] where oy·s + ki − p = iy (and likewise x),
// 0 when no such (oy, ox) exists: (iy + p − ki) must be ≥ 0, divisible by s, and below HO·s.
// Every index is decoded with FastDivmod; offsets within one image (< 2^31, checked by the launcher)
// are 32-bit, offsets across images and groups 64-bit.
#include "gemm_tile.cuh"

namespace dpgan {
namespace conv {

using tile::LOADS;

__device__ __forceinline__ int divmod(const FastDivmod& d, int n, int& rem) {
  const int q = (int)fast_div(d, (uint32_t)n);
  rem = n - q * (int)d.divisor;
  return q;
}

// ---- forward ----

// cols(x) as the B operand: each thread keeps one column n = (b, oy, ox) and walks k = (c, ki, kj).
struct Im2colLoader {
  static constexpr bool K_CONTIGUOUS = false;
  const float* __restrict__ image;  // x[g, b] of this thread's column; unused when !valid
  bool valid;
  int iy0, ix0;  // oy·s − p, ox·s − p
  int k_count, in_h, in_w, in_area;
  FastDivmod kernel_area, kernel_wd;

  __device__ __forceinline__ Im2colLoader(const ConvParams& p, const float* __restrict__ x_g, int n0) {
    const int n = n0 + tile::Slot<false>::mn(0);
    valid = n < p.batch * (int)p.out_area.divisor;
    int pos = 0, ox = 0;
    const int b = valid ? divmod(p.out_area, n, pos) : 0;
    const int oy = divmod(p.out_wd, pos, ox);
    image = x_g + (int64_t)b * p.in_channels * p.in_area.divisor;
    iy0 = oy * p.stride - p.padding;
    ix0 = ox * p.stride - p.padding;
    k_count = p.in_channels * (int)p.kernel_area.divisor;
    in_h = p.in_h;
    in_w = p.in_w;
    in_area = (int)p.in_area.divisor;
    kernel_area = p.kernel_area;
    kernel_wd = p.kernel_wd;
  }

  __device__ __forceinline__ void load(int k0, float (&r)[LOADS]) const {
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int k = k0 + tile::Slot<false>::kk(i);
      float v = 0.0f;
      if (valid && k < k_count) {
        int tap, kj;
        const int c = divmod(kernel_area, k, tap);
        const int ki = divmod(kernel_wd, tap, kj);
        const int iy = iy0 + ki, ix = ix0 + kj;
        if ((unsigned)iy < (unsigned)in_h && (unsigned)ix < (unsigned)in_w) v = image[c * in_area + iy * in_w + ix];
      }
      r[i] = v;
    }
  }
};

// y[g, b, o, pos] for column n = (b, pos) and row o.
struct ForwardEpilogue {
  FastDivmod out_area;
  int64_t image_size;  // O·P
  __device__ __forceinline__ int64_t row(int o) const { return (int64_t)o * out_area.divisor; }
  __device__ __forceinline__ int64_t col(int n) const {
    int pos;
    const int b = divmod(out_area, n, pos);
    return b * image_size + pos;
  }
};

// ---- input gradient ----

// wᵀ as the A operand: element (c, k = (o, tap)) = w[g, o, c, tap]. Threads walk k (the taps of
// one (o, c) are contiguous).
struct WeightTransposeLoader {
  static constexpr bool K_CONTIGUOUS = true;
  const float* __restrict__ w_g;
  int m0, in_channels, k_count;
  FastDivmod kernel_area;

  __device__ __forceinline__ void load(int k0, float (&r)[LOADS]) const {
    const int k = k0 + tile::Slot<true>::kk(0);
    int tap = 0;
    const int o = k < k_count ? divmod(kernel_area, k, tap) : 0;
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int c = m0 + tile::Slot<true>::mn(i);
      r[i] = (k < k_count && c < in_channels)
                 ? w_g[((int64_t)o * in_channels + c) * kernel_area.divisor + tap]
                 : 0.0f;
    }
  }
};

// taps(dy) as the B operand: each thread keeps one column n = (b, iy, ix) and walks k = (o, ki, kj),
// reading dy[b, o, (iy + p − ki)/s, (ix + p − kj)/s] where both divisions are exact and in range.
struct DyTapLoader {
  static constexpr bool K_CONTIGUOUS = false;
  const float* __restrict__ image;  // dy[g, b] of this thread's column; unused when !valid
  bool valid;
  int ty, tx;  // iy + p, ix + p
  int k_count, stride, out_h, out_w, out_area;
  FastDivmod kernel_area, kernel_wd, stride_d;

  __device__ __forceinline__ DyTapLoader(const ConvParams& p, const float* __restrict__ dy_g, int n0) {
    const int n = n0 + tile::Slot<false>::mn(0);
    valid = n < p.batch * (int)p.in_area.divisor;
    int pos = 0, ix = 0;
    const int b = valid ? divmod(p.in_area, n, pos) : 0;
    const int iy = divmod(p.in_wd, pos, ix);
    out_area = (int)p.out_area.divisor;
    image = dy_g + (int64_t)b * p.out_channels * out_area;
    ty = iy + p.padding;
    tx = ix + p.padding;
    k_count = p.out_channels * (int)p.kernel_area.divisor;
    stride = p.stride;
    out_h = p.out_h;
    out_w = p.out_w;
    kernel_area = p.kernel_area;
    kernel_wd = p.kernel_wd;
    stride_d = p.stride_d;
  }

  __device__ __forceinline__ void load(int k0, float (&r)[LOADS]) const {
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int k = k0 + tile::Slot<false>::kk(i);
      float v = 0.0f;
      if (valid && k < k_count) {
        int tap, kj;
        const int o = divmod(kernel_area, k, tap);
        const int ki = divmod(kernel_wd, tap, kj);
        const int sy = ty - ki, sx = tx - kj;
        if (sy >= 0 && sx >= 0) {
          int ry, rx;
          const int oy = divmod(stride_d, sy, ry);
          const int ox = divmod(stride_d, sx, rx);
          if (ry == 0 && rx == 0 && oy < out_h && ox < out_w) v = image[o * out_area + oy * out_w + ox];
        }
      }
      r[i] = v;
    }
  }
};

// dx[g, b, c, pos] for column n = (b, pos) and row c.
struct InputGradEpilogue {
  FastDivmod in_area;
  int64_t image_size;  // C·H·W
  __device__ __forceinline__ int64_t row(int c) const { return (int64_t)c * in_area.divisor; }
  __device__ __forceinline__ int64_t col(int n) const {
    int pos;
    const int b = divmod(in_area, n, pos);
    return b * image_size + pos;
  }
};

// ---- weight gradient ----

// dy as the A operand [O, B·P]: element (o, k = (b, pos)) = dy[g, b, o, pos]. Threads walk k.
struct DyRowsLoader {
  static constexpr bool K_CONTIGUOUS = true;
  const float* __restrict__ dy_g;
  int m0, out_channels, k_count;
  FastDivmod out_area;

  __device__ __forceinline__ void load(int k0, float (&r)[LOADS]) const {
    const int k = k0 + tile::Slot<true>::kk(0);
    int pos = 0;
    const int b = k < k_count ? divmod(out_area, k, pos) : 0;
    const int64_t column = ((int64_t)b * out_channels) * out_area.divisor + pos;
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int o = m0 + tile::Slot<true>::mn(i);
      r[i] = (k < k_count && o < out_channels) ? dy_g[column + (int64_t)o * out_area.divisor] : 0.0f;
    }
  }
};

// cols(x)ᵀ as the B operand [B·P, C·KK]: threads walk k = (b, oy, ox); each thread keeps its LOADS
// columns n = (c, ki, kj) decoded for the whole main loop.
struct Im2colTransposeLoader {
  static constexpr bool K_CONTIGUOUS = true;
  const float* __restrict__ x_g;
  int c_offset[LOADS];  // c·H·W of each column
  int ky[LOADS], kx[LOADS];  // ki − p, kj − p
  bool col_ok[LOADS];
  int k_count, stride, in_h, in_w;
  int64_t image_size;  // C·H·W
  FastDivmod out_area, out_wd;

  __device__ __forceinline__ Im2colTransposeLoader(const ConvParams& p, const float* __restrict__ xg, int n0) {
    x_g = xg;
    const int n_count = p.in_channels * (int)p.kernel_area.divisor;
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int n = n0 + tile::Slot<true>::mn(i);
      col_ok[i] = n < n_count;
      int tap = 0, kj = 0;
      const int c = col_ok[i] ? divmod(p.kernel_area, n, tap) : 0;
      const int ki = divmod(p.kernel_wd, tap, kj);
      c_offset[i] = c * (int)p.in_area.divisor;
      ky[i] = ki - p.padding;
      kx[i] = kj - p.padding;
    }
    k_count = p.batch * (int)p.out_area.divisor;
    stride = p.stride;
    in_h = p.in_h;
    in_w = p.in_w;
    image_size = (int64_t)p.in_channels * p.in_area.divisor;
    out_area = p.out_area;
    out_wd = p.out_wd;
  }

  __device__ __forceinline__ void load(int k0, float (&r)[LOADS]) const {
    const int k = k0 + tile::Slot<true>::kk(0);
    const bool k_ok = k < k_count;
    int pos = 0, ox = 0;
    const int b = k_ok ? divmod(out_area, k, pos) : 0;
    const int oy = divmod(out_wd, pos, ox);
    const float* __restrict__ image = x_g + b * image_size;
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int iy = oy * stride + ky[i], ix = ox * stride + kx[i];
      const bool inside = (unsigned)iy < (unsigned)in_h && (unsigned)ix < (unsigned)in_w;
      r[i] = (k_ok && col_ok[i] && inside) ? image[c_offset[i] + iy * in_w + ix] : 0.0f;
    }
  }
};

// dw[s, g] as a row-major [O, C·KK] matrix (s the K slice, offset by the caller).
struct WeightGradEpilogue {
  int n;
  __device__ __forceinline__ int64_t row(int o) const { return (int64_t)o * n; }
  __device__ __forceinline__ int64_t col(int j) const { return j; }
};

}  // namespace conv
}  // namespace dpgan

using dpgan::tile::BM;
using dpgan::tile::BN;

// Grid: x = tiles of B·HO·WO, y = tiles of O, z grid-strides over groups.
extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)
    conv_conv2d_fwd_f32(ConvParams p, const float* __restrict__ x, const float* __restrict__ w,
                        float* __restrict__ y) {
  __shared__ __align__(16) dpgan::tile::SharedTiles smem;
  const int P = (int)p.out_area.divisor, KK = (int)p.kernel_area.divisor;
  const int M = p.out_channels, N = p.batch * P, K = p.in_channels * KK;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int64_t x_size = (int64_t)p.batch * p.in_channels * p.in_area.divisor;
  const int64_t y_size = (int64_t)p.batch * M * P;
  for (int g = blockIdx.z; g < p.groups; g += gridDim.z) {
    const dpgan::tile::KMajorLoader la{w + (int64_t)g * M * K, m0, M, K};
    const dpgan::conv::Im2colLoader lb(p, x + g * x_size, n0);
    float acc[dpgan::tile::TM][dpgan::tile::TN];
    dpgan::tile::mainloop(la, lb, 0, K, smem, acc);
    const dpgan::conv::ForwardEpilogue ep{p.out_area, (int64_t)M * P};
    dpgan::tile::store_tile(ep, y + g * y_size, m0, n0, M, N, acc);
  }
}

// Grid: x = tiles of B·H·W, y = tiles of C, z grid-strides over groups.
extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)
    conv_conv2d_input_grad_bwd_f32(ConvParams p, const float* __restrict__ dy, const float* __restrict__ w,
                                   float* __restrict__ dx) {
  __shared__ __align__(16) dpgan::tile::SharedTiles smem;
  const int HW = (int)p.in_area.divisor, KK = (int)p.kernel_area.divisor;
  const int M = p.in_channels, N = p.batch * HW, K = p.out_channels * KK;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int64_t dy_size = (int64_t)p.batch * p.out_channels * p.out_area.divisor;
  const int64_t dx_size = (int64_t)p.batch * M * HW;
  for (int g = blockIdx.z; g < p.groups; g += gridDim.z) {
    const dpgan::conv::WeightTransposeLoader la{w + (int64_t)g * p.out_channels * M * KK, m0, M, K, p.kernel_area};
    const dpgan::conv::DyTapLoader lb(p, dy + g * dy_size, n0);
    float acc[dpgan::tile::TM][dpgan::tile::TN];
    dpgan::tile::mainloop(la, lb, 0, K, smem, acc);
    const dpgan::conv::InputGradEpilogue ep{p.in_area, (int64_t)M * HW};
    dpgan::tile::store_tile(ep, dx + g * dx_size, m0, n0, M, N, acc);
  }
}

// Grid: x = tiles of C·KH·KW, y = tiles of O, z grid-strides over (group, K slice); slice s writes
// its partial dw to dw[s] (dw holds splits · G · O · C·KH·KW floats).
extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)
    conv_conv2d_weight_grad_bwd_f32(ConvParams p, const float* __restrict__ x, const float* __restrict__ dy,
                                    float* __restrict__ dw) {
  __shared__ __align__(16) dpgan::tile::SharedTiles smem;
  const int P = (int)p.out_area.divisor, KK = (int)p.kernel_area.divisor;
  const int M = p.out_channels, N = p.in_channels * KK, K = p.batch * P;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int64_t x_size = (int64_t)p.batch * p.in_channels * p.in_area.divisor;
  const int64_t dy_size = (int64_t)p.batch * M * P;
  const int64_t dw_size = (int64_t)M * N;
  const int64_t work = (int64_t)p.groups * p.splits;
  for (int64_t z = blockIdx.z; z < work; z += gridDim.z) {
    const int g = (int)(z / p.splits), s = (int)(z % p.splits);
    const dpgan::conv::DyRowsLoader la{dy + g * dy_size, m0, M, K, p.out_area};
    const dpgan::conv::Im2colTransposeLoader lb(p, x + g * x_size, n0);
    const dpgan::tile::KRange kr = dpgan::tile::split_range(s, p.split_len, K);
    float acc[dpgan::tile::TM][dpgan::tile::TN];
    dpgan::tile::mainloop(la, lb, kr.begin, kr.end, smem, acc);
    dpgan::tile::store_tile(dpgan::conv::WeightGradEpilogue{N}, dw + ((int64_t)s * p.groups + g) * dw_size, m0, n0, M,
                            N, acc);
  }
}
