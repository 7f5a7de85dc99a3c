// Grouped 2-D convolution as implicit GEMM: gemm_tile.cuh's main loop with loaders that gather the
// im2col matrix (or its adjoint) on the fly, so no column buffer ever reaches global memory.
//
// Shapes (per group g; P = HO·WO, KK = KH·KW):
//   forward       y  [O, B·P]      = w [O, C·KK]        · cols(x) [C·KK, B·P]
//   input grad    dx [C, B·H·W]    = wᵀ [C, O·KK]       · taps(dy) [O·KK, B·H·W]   (per stride phase)
//   weight grad   dw [O, C·KK]     = dy [O, B·P]        · cols(x)ᵀ [B·P, C·KK]   (K may be split)
// cols(x)[(c, ki, kj), (b, oy, ox)] = x[b, c, oy·s + ki − p, ox·s + kj − p], 0 in the padding.
// taps(dy)[(o, ki, kj), (b, iy, ix)] = dy[b, o, oy, ox] where oy·s + ki − p = iy (and likewise x),
// 0 when no such (oy, ox) exists: (iy + p − ki) must be ≥ 0, divisible by s, and below HO·s; the
// input gradient runs per phase of (iy + p) mod s, so that it only visits the taps that divide.
// Every index is decoded with FastDivmod; offsets within one image (< 2^31, checked by the launcher)
// are 32-bit, offsets across images and groups 64-bit.
#include "gemm_tile.cuh"

namespace dpgan {
namespace conv {

__device__ __forceinline__ int divmod(const FastDivmod& d, int n, int& rem) {
  const int q = (int)fast_div(d, (uint32_t)n);
  rem = n - q * (int)d.divisor;
  return q;
}

// ---- forward ----

// cols(x) as the B operand: each thread keeps one column n = (b, oy, ox) and walks k = (c, ki, kj).
template <class Build>
struct Im2colLoader {
  static constexpr bool K_CONTIGUOUS = false;
  using Slots = typename Build::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ image;  // x[g, b] of this thread's column; unused when !valid
  bool valid;
  int iy0, ix0;  // oy·s − p, ox·s − p
  int k_count, in_h, in_w, in_area;
  FastDivmod kernel_area, kernel_wd;

  __device__ __forceinline__ Im2colLoader(const ConvParams& p, const float* __restrict__ x_g, int n0) {
    const int n = n0 + Slots::mn(0);
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

  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int k = k0 + Slots::kk(i);
      bool in_range = false;
      const float* at = image;
      if (valid && k < k_count) {
        int tap, kj;
        const int c = divmod(kernel_area, k, tap);
        const int ki = divmod(kernel_wd, tap, kj);
        const int iy = iy0 + ki, ix = ix0 + kj;
        in_range = (unsigned)iy < (unsigned)in_h && (unsigned)ix < (unsigned)in_w;
        if (in_range) at = image + c * in_area + iy * in_w + ix;
      }
      put(i, at, in_range);
    }
  }
};

// y[g, b, o, pos] for column n = (b, pos) and row o, plus the group's bias[o] when BIAS (the
// same single rounding as a separate bias add).
template <bool BIAS>
struct ForwardEpilogue {
  FastDivmod out_area;
  int64_t image_size;  // O·P
  const float* __restrict__ bias;  // the group's [O], when BIAS
  __device__ __forceinline__ int64_t row(int o) const { return (int64_t)o * out_area.divisor; }
  __device__ __forceinline__ int64_t col(int n) const {
    int pos;
    const int b = divmod(out_area, n, pos);
    return b * image_size + pos;
  }
  __device__ __forceinline__ float value(int o, int, float c) const {
    if constexpr (BIAS) return c + bias[o];
    return c;
  }
};

// ---- input gradient ----
//
// dx[iy, ix] gathers dy[oy, ox]·w[ki, kj] over oy·s + ki − p = iy, so only the taps with
// ki ≡ iy + p (mod s) contribute. The input pixels are therefore split into s² phases by
// (ry, rx) = ((iy + p) mod s, (ix + p) mod s), one launch each: the phase's pixels are
// iy = first_y + s·j (j < rows), its taps ki = ry + s·ty (ty < taps_y), and then
// oy = (iy + p − ki)/s = shift_y + j − ty exactly. K = O·taps_y·taps_x: no stride-skipped tap is
// ever multiplied (a quarter of the work of the full O·KH·KW at stride 2). A phase without taps
// (ry ≥ KH) has K = 0 and writes zeros.

// wᵀ restricted to the phase's taps, as the A operand: element (c, k = (o, ty, tx)) =
// w[g, o, c, ry + s·ty, rx + s·tx]. Threads walk k.
template <class Build>
struct PhaseWeightLoader {
  static constexpr bool K_CONTIGUOUS = true;
  using Slots = typename Build::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ w_g;
  int m0, in_channels, k_count, kernel_h, kernel_w, stride, phase_y, phase_x;
  FastDivmod taps_area, taps_xd;

  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    const int k = k0 + Slots::kk(0);
    int tap = 0, tx = 0;
    const int o = k < k_count ? divmod(taps_area, k, tap) : 0;
    const int ty = divmod(taps_xd, tap, tx);
    const int ki = phase_y + stride * ty, kj = phase_x + stride * tx;
    const int64_t kernel_area = (int64_t)kernel_h * kernel_w;
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int c = m0 + Slots::mn(i);
      const bool in_range = k < k_count && c < in_channels;
      put(i, in_range ? w_g + ((int64_t)o * in_channels + c) * kernel_area + ki * kernel_w + kj : w_g, in_range);
    }
  }
};

// dy at the phase's taps, as the B operand: each thread keeps one column n = (b, j, i) (pixel
// iy = first_y + s·j, ix = first_x + s·i) and walks k = (o, ty, tx), reading
// dy[b, o, shift_y + j − ty, shift_x + i − tx] where that lies inside dy.
template <class Build>
struct PhaseDyLoader {
  static constexpr bool K_CONTIGUOUS = false;
  using Slots = typename Build::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ image;  // dy[g, b] of this thread's column; unused when !valid
  bool valid;
  int oy0, ox0;  // shift_y + j, shift_x + i
  int k_count, out_h, out_w, out_area;
  FastDivmod taps_area, taps_xd;

  __device__ __forceinline__ PhaseDyLoader(const ConvParams& p, const ConvPhase& q, const float* __restrict__ dy_g,
                                           int n0) {
    const int n = n0 + Slots::mn(0);
    valid = n < p.batch * (int)q.pixels.divisor;
    int pixel = 0, i = 0;
    const int b = valid ? divmod(q.pixels, n, pixel) : 0;
    const int j = divmod(q.cols_d, pixel, i);
    out_area = (int)p.out_area.divisor;
    image = dy_g + (int64_t)b * p.out_channels * out_area;
    oy0 = q.shift_y + j;
    ox0 = q.shift_x + i;
    k_count = p.out_channels * q.taps_y * q.taps_x;
    out_h = p.out_h;
    out_w = p.out_w;
    taps_area = q.taps_area;
    taps_xd = q.taps_xd;
  }

  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int k = k0 + Slots::kk(i);
      bool in_range = false;
      const float* at = image;
      if (valid && k < k_count) {
        int tap, tx;
        const int o = divmod(taps_area, k, tap);
        const int ty = divmod(taps_xd, tap, tx);
        const int oy = oy0 - ty, ox = ox0 - tx;
        in_range = (unsigned)oy < (unsigned)out_h && (unsigned)ox < (unsigned)out_w;
        if (in_range) at = image + o * out_area + oy * out_w + ox;
      }
      put(i, at, in_range);
    }
  }
};

// dx[g, b, c, first_y + s·j, first_x + s·i] for column n = (b, j, i) and row c.
struct PhaseInputGradEpilogue {
  FastDivmod pixels, cols_d;
  int64_t image_size;  // C·H·W
  int in_area, in_w, stride, first_y, first_x;
  __device__ __forceinline__ int64_t row(int c) const { return (int64_t)c * in_area; }
  __device__ __forceinline__ float value(int, int, float v) const { return v; }
  __device__ __forceinline__ int64_t col(int n) const {
    int pixel, i;
    const int b = divmod(pixels, n, pixel);
    const int j = divmod(cols_d, pixel, i);
    return b * image_size + (first_y + stride * j) * in_w + first_x + stride * i;
  }
};

// ---- weight gradient ----

// dy as the A operand [O, B·P]: element (o, k = (b, pos)) = dy[g, b, o, pos]. Threads walk k.
template <class Build>
struct DyRowsLoader {
  static constexpr bool K_CONTIGUOUS = true;
  using Slots = typename Build::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ dy_g;
  int m0, out_channels, k_count;
  FastDivmod out_area;

  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    const int k = k0 + Slots::kk(0);
    int pos = 0;
    const int b = k < k_count ? divmod(out_area, k, pos) : 0;
    const int64_t column = ((int64_t)b * out_channels) * out_area.divisor + pos;
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int o = m0 + Slots::mn(i);
      const bool in_range = k < k_count && o < out_channels;
      put(i, in_range ? dy_g + column + (int64_t)o * out_area.divisor : dy_g, in_range);
    }
  }
};

// cols(x)ᵀ as the B operand [B·P, C·KK]: threads walk k = (b, oy, ox); each thread keeps its
// Slots::LOADS columns n = (c, ki, kj) decoded for the whole main loop.
template <class Build>
struct Im2colTransposeLoader {
  static constexpr bool K_CONTIGUOUS = true;
  using Slots = typename Build::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ x_g;
  int c_offset[Slots::LOADS];  // c·H·W of each column
  int ky[Slots::LOADS], kx[Slots::LOADS];  // ki − p, kj − p
  bool col_ok[Slots::LOADS];
  int k_count, stride, in_h, in_w;
  int64_t image_size;  // C·H·W
  FastDivmod out_area, out_wd;

  __device__ __forceinline__ Im2colTransposeLoader(const ConvParams& p, const float* __restrict__ xg, int n0) {
    x_g = xg;
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
    k_count = p.batch * (int)p.out_area.divisor;
    stride = p.stride;
    in_h = p.in_h;
    in_w = p.in_w;
    image_size = (int64_t)p.in_channels * p.in_area.divisor;
    out_area = p.out_area;
    out_wd = p.out_wd;
  }

  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    const int k = k0 + Slots::kk(0);
    const bool k_ok = k < k_count;
    int pos = 0, ox = 0;
    const int b = k_ok ? divmod(out_area, k, pos) : 0;
    const int oy = divmod(out_wd, pos, ox);
    const float* __restrict__ image = x_g + b * image_size;
#pragma unroll
    for (int i = 0; i < Slots::LOADS; ++i) {
      const int iy = oy * stride + ky[i], ix = ox * stride + kx[i];
      const bool in_range = k_ok && col_ok[i] && (unsigned)iy < (unsigned)in_h && (unsigned)ix < (unsigned)in_w;
      put(i, in_range ? image + c_offset[i] + iy * in_w + ix : x_g, in_range);
    }
  }
};

// dw[s, g] as a row-major [O, C·KK] matrix (s the K slice, offset by the caller).
struct WeightGradEpilogue {
  int n;
  __device__ __forceinline__ int64_t row(int o) const { return (int64_t)o * n; }
  __device__ __forceinline__ int64_t col(int j) const { return j; }
  __device__ __forceinline__ float value(int, int, float v) const { return v; }
};


// Grid: x = tiles of B·HO·WO, y = tiles of O, z grid-strides over groups. With BIAS, bias [G, O]
// is added in the epilogue.
template <class Build, bool BIAS>
__device__ __forceinline__ void conv2d_fwd(const ConvParams& p, const float* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ bias, float* __restrict__ y,
                                           typename Build::Tiles& smem) {
  const int P = (int)p.out_area.divisor, KK = (int)p.kernel_area.divisor;
  const int M = p.out_channels, N = p.batch * P, K = p.in_channels * KK;
  const int m0 = blockIdx.y * Build::TILE, n0 = blockIdx.x * Build::TILE;
  const int64_t x_size = (int64_t)p.batch * p.in_channels * p.in_area.divisor;
  const int64_t y_size = (int64_t)p.batch * M * P;
  for (int g = blockIdx.z; g < p.groups; g += gridDim.z) {
    const tile::KMajorLoader<Build> la{w + (int64_t)g * M * K, m0, M, K};
    const Im2colLoader<Build> lb(p, x + g * x_size, n0);
    float acc[Build::FRAGS][4];
    tile::run_mainloop<Build>(la, lb, 0, K, smem, acc);
    const ForwardEpilogue<BIAS> ep{p.out_area, (int64_t)M * P, BIAS ? bias + (int64_t)g * M : nullptr};
    tile::store_tile<Build>(ep, y + g * y_size, m0, n0, M, N, acc);
  }
}

// One launch per stride phase (see above). Grid: x = tiles of the phase's B·rows·cols pixels,
// y = tiles of C, z grid-strides over groups.
template <class Build>
__device__ __forceinline__ void conv2d_input_grad(const ConvParams& p, const ConvPhase& q, const float* __restrict__ dy,
                                                  const float* __restrict__ w, float* __restrict__ dx,
                                                  typename Build::Tiles& smem) {
  const int HW = (int)p.in_area.divisor, KK = (int)p.kernel_area.divisor;
  const int M = p.in_channels, N = p.batch * (int)q.pixels.divisor, K = p.out_channels * q.taps_y * q.taps_x;
  const int m0 = blockIdx.y * Build::TILE, n0 = blockIdx.x * Build::TILE;
  const int64_t dy_size = (int64_t)p.batch * p.out_channels * p.out_area.divisor;
  const int64_t dx_size = (int64_t)p.batch * M * HW;
  for (int g = blockIdx.z; g < p.groups; g += gridDim.z) {
    const PhaseWeightLoader<Build> la{w + (int64_t)g * p.out_channels * M * KK,
                                            m0,
                                            M,
                                            K,
                                            p.kernel_h,
                                            p.kernel_w,
                                            p.stride,
                                            q.phase_y,
                                            q.phase_x,
                                            q.taps_area,
                                            q.taps_xd};
    const PhaseDyLoader<Build> lb(p, q, dy + g * dy_size, n0);
    float acc[Build::FRAGS][4];
    tile::run_mainloop<Build>(la, lb, 0, K, smem, acc);
    const PhaseInputGradEpilogue ep{q.pixels, q.cols_d, (int64_t)M * HW, HW, p.in_w, p.stride, q.first_y, q.first_x};
    tile::store_tile<Build>(ep, dx + g * dx_size, m0, n0, M, N, acc);
  }
}

// Grid: x = tiles of C·KH·KW, y = tiles of O, z grid-strides over (group, K slice); slice s writes
// its partial dw to dw[s] (dw holds splits · G · O · C·KH·KW floats).
template <class Build>
__device__ __forceinline__ void conv2d_weight_grad(const ConvParams& p, const float* __restrict__ x,
                                                   const float* __restrict__ dy, float* __restrict__ dw,
                                                   typename Build::Tiles& smem) {
  const int P = (int)p.out_area.divisor, KK = (int)p.kernel_area.divisor;
  const int M = p.out_channels, N = p.in_channels * KK, K = p.batch * P;
  const int m0 = blockIdx.y * Build::TILE, n0 = blockIdx.x * Build::TILE;
  const int64_t x_size = (int64_t)p.batch * p.in_channels * p.in_area.divisor;
  const int64_t dy_size = (int64_t)p.batch * M * P;
  const int64_t dw_size = (int64_t)M * N;
  const int64_t work = (int64_t)p.groups * p.splits;
  for (int64_t z = blockIdx.z; z < work; z += gridDim.z) {
    const int g = (int)(z / p.splits), s = (int)(z % p.splits);
    const DyRowsLoader<Build> la{dy + g * dy_size, m0, M, K, p.out_area};
    const Im2colTransposeLoader<Build> lb(p, x + g * x_size, n0);
    const tile::KRange kr = tile::split_range(s, p.split_len, K);
    float acc[Build::FRAGS][4];
    tile::run_mainloop<Build>(la, lb, kr.begin, kr.end, smem, acc);
    tile::store_tile<Build>(WeightGradEpilogue{N}, dw + ((int64_t)s * p.groups + g) * dw_size, m0, n0, M,
                            N, acc);
  }
}

}  // namespace conv
}  // namespace dpgan

// Entry points, one per op and build (gemm_tile.cuh): f32 FFMA; TF32 tensor cores (inputs rounded
// to TF32, f32 accumulation) for callers that allow it (src/backend/cuda/gemm.rs,
// set_allow_tf32), register-staged, through the cp.async pipeline, and on 128 × 128 tiles. The
// TF32 builds give the same values bit for bit; a GPU says which is fastest.
#define DPGAN_CONV_FWD(name, BUILD)                                                                         \
  extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)                                        \
      name(ConvParams p, const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y) { \
    BUILD::Tiles& smem = dpgan::tile::mainloop_tiles<BUILD>();                                              \
    dpgan::conv::conv2d_fwd<BUILD, false>(p, x, w, nullptr, y, smem);                                       \
  }
#define DPGAN_CONV_BIAS_FWD(name, BUILD)                                           \
  extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)               \
      name(ConvParams p, const float* __restrict__ x, const float* __restrict__ w, \
           const float* __restrict__ bias, float* __restrict__ y) {                \
    BUILD::Tiles& smem = dpgan::tile::mainloop_tiles<BUILD>();                     \
    dpgan::conv::conv2d_fwd<BUILD, true>(p, x, w, bias, y, smem);                  \
  }
#define DPGAN_CONV_INPUT_GRAD(name, BUILD)                                                       \
  extern "C" __global__ void __launch_bounds__(dpgan::tile::THREADS)                             \
      name(ConvParams p, ConvPhase q, const float* __restrict__ dy, const float* __restrict__ w, \
           float* __restrict__ dx) {                                                             \
    BUILD::Tiles& smem = dpgan::tile::mainloop_tiles<BUILD>();                                   \
    dpgan::conv::conv2d_input_grad<BUILD>(p, q, dy, w, dx, smem);                                \
  }
// The weight gradient's launch bounds are an argument: the f32 build holds four blocks an SM.
#define DPGAN_CONV_WEIGHT_GRAD(name, BUILD, ...)                                                              \
  extern "C" __global__ void __launch_bounds__(__VA_ARGS__)                                                   \
      name(ConvParams p, const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dw) { \
    BUILD::Tiles& smem = dpgan::tile::mainloop_tiles<BUILD>();                                                \
    dpgan::conv::conv2d_weight_grad<BUILD>(p, x, dy, dw, smem);                                               \
  }

DPGAN_CONV_FWD(conv_conv2d_fwd_f32, dpgan::tile::F32)
DPGAN_CONV_BIAS_FWD(conv_conv2d_bias_fwd_f32, dpgan::tile::F32)
DPGAN_CONV_INPUT_GRAD(conv_conv2d_input_grad_bwd_f32, dpgan::tile::F32)
// At most 64 registers, so that four blocks fit an SM (ptxas gives it 65 otherwise, and three).
DPGAN_CONV_WEIGHT_GRAD(conv_conv2d_weight_grad_bwd_f32, dpgan::tile::F32, dpgan::tile::THREADS, 4)

DPGAN_CONV_FWD(conv_conv2d_fwd_tf32, dpgan::tile::Tf32)
DPGAN_CONV_BIAS_FWD(conv_conv2d_bias_fwd_tf32, dpgan::tile::Tf32)
DPGAN_CONV_INPUT_GRAD(conv_conv2d_input_grad_bwd_tf32, dpgan::tile::Tf32)
DPGAN_CONV_WEIGHT_GRAD(conv_conv2d_weight_grad_bwd_tf32, dpgan::tile::Tf32, dpgan::tile::THREADS)

DPGAN_CONV_FWD(conv_conv2d_fwd_tf32_cp_async, dpgan::tile::Tf32CpAsync)
DPGAN_CONV_BIAS_FWD(conv_conv2d_bias_fwd_tf32_cp_async, dpgan::tile::Tf32CpAsync)
DPGAN_CONV_INPUT_GRAD(conv_conv2d_input_grad_bwd_tf32_cp_async, dpgan::tile::Tf32CpAsync)
DPGAN_CONV_WEIGHT_GRAD(conv_conv2d_weight_grad_bwd_tf32_cp_async, dpgan::tile::Tf32CpAsync, dpgan::tile::THREADS)

DPGAN_CONV_FWD(conv_conv2d_fwd_tf32_wide, dpgan::tile::Tf32Wide)
DPGAN_CONV_BIAS_FWD(conv_conv2d_bias_fwd_tf32_wide, dpgan::tile::Tf32Wide)
DPGAN_CONV_INPUT_GRAD(conv_conv2d_input_grad_bwd_tf32_wide, dpgan::tile::Tf32Wide)
DPGAN_CONV_WEIGHT_GRAD(conv_conv2d_weight_grad_bwd_tf32_wide, dpgan::tile::Tf32Wide, dpgan::tile::THREADS)

#undef DPGAN_CONV_FWD
#undef DPGAN_CONV_BIAS_FWD
#undef DPGAN_CONV_INPUT_GRAD
#undef DPGAN_CONV_WEIGHT_GRAD
