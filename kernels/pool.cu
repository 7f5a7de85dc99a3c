// 2×2 pooling over the last two dims of `[.., H, W]`: max pooling as a gather (the value of v at
// each window's argmax in x) and its adjoint scatter, nearest ×2 upsampling and 2×2 sum pooling.
// Every kernel writes each element of its output exactly once (one thread per output element,
// grid-stride, 64-bit offsets): no atomics, no zeroing pass. Mirrors src/backend/cpu/pool.rs.
#include "common.cuh"

namespace dpgan {

// Offset (within the plane) of the first maximum of x in the window at (oy, ox), scanned in
// row-major order. A NaN wins over numbers and a later NaN over an earlier one (`val > max ||
// isnan(val)`, PyTorch's rule), exactly as the CPU reference compares.
__device__ __forceinline__ int64_t window_argmax(const float* __restrict__ plane, int64_t w, int64_t oy, int64_t ox) {
  int64_t best = (2 * oy) * w + 2 * ox;
  float best_val = plane[best];
  const int64_t candidates[3] = {best + 1, best + w, best + w + 1};
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const float val = plane[candidates[k]];
    if (val > best_val || isnan(val)) {
      best = candidates[k];
      best_val = val;
    }
  }
  return best;
}

}  // namespace dpgan

// out[p, oy, ox] = v[p, argmax of x's window at (2·oy, 2·ox)]; out is [planes, out_h, out_w] with
// out_h = in_h / 2, out_w = in_w / 2 (floor: an odd last row or column is never read).
extern "C" __global__ void pool_max2x2_gather_fwd_f32(Pool2x2Params p, const float* __restrict__ x,
                                                      const float* __restrict__ v, float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t ox = i % p.out_w;
    const int64_t rest = i / p.out_w;
    const int64_t oy = rest % p.out_h;
    const int64_t plane = rest / p.out_h;
    const int64_t base = plane * p.in_h * p.in_w;
    out[i] = v[base + dpgan::window_argmax(x + base, p.in_w, oy, ox)];
  }
}

// d_x[p, y, xx] = dy[p, y/2, xx/2] if (y, xx) is its window's argmax in x, else 0 (also 0 in an odd
// last row or column, which no window covers). One thread per element of d_x, so every element is
// written once. `0 + dy` rather than dy: the CPU adds dy into zeros, which turns −0 into +0.
extern "C" __global__ void pool_max2x2_scatter_bwd_f32(Pool2x2Params p, const float* __restrict__ x,
                                                       const float* __restrict__ dy, float* __restrict__ d_x) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t xx = i % p.in_w;
    const int64_t rest = i / p.in_w;
    const int64_t y = rest % p.in_h;
    const int64_t plane = rest / p.in_h;
    const int64_t oy = y / 2, ox = xx / 2;
    float grad = 0.0f;
    if (oy < p.out_h && ox < p.out_w) {
      const int64_t base = plane * p.in_h * p.in_w;
      if (dpgan::window_argmax(x + base, p.in_w, oy, ox) == y * p.in_w + xx) {
        grad = __fadd_rn(0.0f, dy[(plane * p.out_h + oy) * p.out_w + ox]);
      }
    }
    d_x[i] = grad;
  }
}

// out[p, y, xx] = x[p, y/2, xx/2]; out is [planes, 2·in_h, 2·in_w].
extern "C" __global__ void pool_upsample_nearest2x_fwd_f32(Pool2x2Params p, const float* __restrict__ x,
                                                           float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t xx = i % p.out_w;
    const int64_t rest = i / p.out_w;
    const int64_t y = rest % p.out_h;
    const int64_t plane = rest / p.out_h;
    out[i] = x[(plane * p.in_h + y / 2) * p.in_w + xx / 2];
  }
}

// out[p, oy, ox] = ((x[2oy, 2ox] + x[2oy, 2ox+1]) + x[2oy+1, 2ox]) + x[2oy+1, 2ox+1], in the CPU's
// order (no fast-math, so nothing is reassociated); in_h = 2·out_h, in_w = 2·out_w.
extern "C" __global__ void pool_sum2x2_fwd_f32(Pool2x2Params p, const float* __restrict__ x, float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t ox = i % p.out_w;
    const int64_t rest = i / p.out_w;
    const int64_t oy = rest % p.out_h;
    const int64_t plane = rest / p.out_h;
    const float* top = x + (plane * p.in_h + 2 * oy) * p.in_w + 2 * ox;
    const float* bottom = top + p.in_w;
    out[i] = ((top[0] + top[1]) + bottom[0]) + bottom[1];
  }
}
