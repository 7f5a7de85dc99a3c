// Narrow, pad and concat along one axis of a row-major tensor, seen as [outer, dim, inner] around
// the axis (AxisCopyParams), and rows gathered by index (GatherRowsParams). One thread per
// element, grid-stride, 64-bit offsets; the output is written exactly once. Mirrors
// src/backend/cpu/shape.rs.
#include "common.cuh"

namespace dpgan {

// dst[o, dst_start + j, k] = src[o, src_start + j, k] for j < len: element i of [outer, len, inner].
__device__ __forceinline__ void copy_axis_window(const AxisCopyParams& p, const float* __restrict__ src,
                                                 float* __restrict__ dst) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t k = i % p.inner;
    const int64_t rest = i / p.inner;
    const int64_t j = rest % p.len;
    const int64_t o = rest / p.len;
    dst[(o * p.dst_dim + p.dst_start + j) * p.inner + k] = src[(o * p.src_dim + p.src_start + j) * p.inner + k];
  }
}

}  // namespace dpgan

// out [outer, len, inner] = x[:, start..start + len, :] (src_start = start, dst_start = 0).
extern "C" __global__ void shape_narrow_fwd_f32(AxisCopyParams p, const float* __restrict__ x, float* __restrict__ out) {
  dpgan::copy_axis_window(p, x, out);
}

// One part of a concat: part [outer, len, inner] into out[:, offset..offset + len, :]
// (src_start = 0, dst_start = offset). The launcher runs it once per non-empty part.
extern "C" __global__ void shape_concat_part_fwd_f32(AxisCopyParams p, const float* __restrict__ part,
                                                     float* __restrict__ out) {
  dpgan::copy_axis_window(p, part, out);
}

// out [outer, before + dim + after, inner]: x's slices at dst_start = before, zeros elsewhere.
// One thread per output element, so the zeros need no separate pass.
extern "C" __global__ void shape_pad_fwd_f32(AxisCopyParams p, const float* __restrict__ x, float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t k = i % p.inner;
    const int64_t rest = i / p.inner;
    const int64_t j = rest % p.dst_dim - p.dst_start;  // slice of x, if 0 ≤ j < src_dim
    const int64_t o = rest / p.dst_dim;
    out[i] = (j >= 0 && j < p.src_dim) ? x[(o * p.src_dim + j) * p.inner + k] : 0.0f;
  }
}

// out[r, k] = table[index r, k]: a batch gathered from a training set that stays on the device, the
// indices from the parameters when `indices` is null. The launcher checked every index against the
// table's rows.
extern "C" __global__ void shape_gather_rows_fwd_f32(GatherRowsParams p, const float* __restrict__ table,
                                                    const uint32_t* __restrict__ indices, float* __restrict__ out) {
  DPGAN_FOR_EACH(i, p.n) {
    const int64_t r = i / p.row_len;
    const int64_t k = i - r * p.row_len;
    const uint32_t row = indices != nullptr ? indices[r] : p.inline_indices[r];
    out[i] = table[(int64_t)row * p.row_len + k];
  }
}
