// Reductions: sum_to (the adjoint of broadcasting) and log_softmax over the last axis.
// f32 accumulation: per-thread running sums, then a warp or shared-memory tree. The order of the
// additions is fixed by the launch configuration, so a result is reproducible on a given device.
#include "common.cuh"

namespace dpgan {

// x's offset of mixed-radix index `idx` over `rank` runs (innermost first). The outermost run needs
// no division: what is left of `idx` is already below its size.
__device__ __forceinline__ int64_t runs_offset(uint32_t idx, const FastDivmod* dims, const int64_t* strides, int rank) {
  int64_t offset = 0;
#pragma unroll
  for (int d = 0; d < DPGAN_SUM_TO_MAX_RUNS; ++d) {
    if (d == rank - 1) {
      offset += (int64_t)idx * strides[d];
      break;
    }
    if (d >= rank) break;
    const uint32_t q = fast_div(dims[d], idx);
    offset += (int64_t)(idx - q * dims[d].divisor) * strides[d];
    idx = q;
  }
  return offset;
}

// Summands [begin, end) of output o's reduction, as x offsets relative to o's base.
struct SplitRange {
  int64_t begin, end;
};

__device__ __forceinline__ SplitRange split_range(const SumToParams& p) {
  const int64_t begin = (int64_t)blockIdx.y * p.split_len;
  const int64_t end = begin + p.split_len < p.reduce_count ? begin + p.split_len : (int64_t)p.reduce_count;
  return {begin, end};
}

// Rows of the outer kernel's block: each sums every 8th summand of the block's split.
#define DPGAN_SUM_TO_ROWS 8

// x's innermost dim is summed: one warp per output (and split), its lanes walking the summands,
// which lie in contiguous runs of x. Block: 256 threads = 8 outputs; grid (outputs / 8, splits),
// grid-striding over outputs. What is summed at an offset: the value, its square (per-example
// squared norms in one pass instead of a square and a sum) or its product with y's element there
// (y has x's shape: a product and a sum in one pass).
enum Summand { VALUE, SQUARE, PRODUCT };

template <Summand S>
__device__ __forceinline__ float summand(const float* __restrict__ x, const float* __restrict__ y, int64_t at) {
  const float v = x[at];
  if constexpr (S == SQUARE) return v * v;
  if constexpr (S == PRODUCT) return v * y[at];
  return v;
}

template <Summand S>
__device__ __forceinline__ void sum_to_inner(const SumToParams& p, const float* __restrict__ x,
                                             const float* __restrict__ y, float* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const SplitRange range = split_range(p);
  for (int64_t o = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); o < p.out_count; o += (int64_t)gridDim.x * warps) {
    const int64_t base = runs_offset((uint32_t)o, p.kept_dims, p.kept_strides, p.kept_rank);
    float acc = 0.0f;
    for (int64_t j = range.begin + lane; j < range.end; j += 32) {
      acc += summand<S>(x, y, base + runs_offset((uint32_t)j, p.summed_dims, p.summed_strides, p.summed_rank));
    }
    acc = warp_sum(acc);
    if (lane == 0) out[o * p.splits + blockIdx.y] = acc;
  }
}

// x's innermost dim is kept: a block takes 32 consecutive outputs (lanes, so each load of a warp
// is one contiguous run of x) and 8 rows that share out the summands; the rows are then added in
// shared memory. Block (32, 8); grid (outputs / 32, splits), grid-striding over tiles of 32.
template <Summand S>
__device__ __forceinline__ void sum_to_outer(const SumToParams& p, const float* __restrict__ x,
                                             const float* __restrict__ y, float* __restrict__ out) {
  __shared__ float rows[DPGAN_SUM_TO_ROWS][32];
  const SplitRange range = split_range(p);
  for (int64_t tile = (int64_t)blockIdx.x * 32; tile < p.out_count; tile += (int64_t)gridDim.x * 32) {
    const int64_t o = tile + threadIdx.x;
    float acc = 0.0f;
    if (o < p.out_count) {
      const int64_t base = runs_offset((uint32_t)o, p.kept_dims, p.kept_strides, p.kept_rank);
      for (int64_t j = range.begin + threadIdx.y; j < range.end; j += DPGAN_SUM_TO_ROWS) {
        acc += summand<S>(x, y, base + runs_offset((uint32_t)j, p.summed_dims, p.summed_strides, p.summed_rank));
      }
    }
    rows[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
#pragma unroll
    for (int half = DPGAN_SUM_TO_ROWS / 2; half > 0; half >>= 1) {
      if (threadIdx.y < half) rows[threadIdx.y][threadIdx.x] += rows[threadIdx.y + half][threadIdx.x];
      __syncthreads();
    }
    if (threadIdx.y == 0 && o < p.out_count) out[o * p.splits + blockIdx.y] = rows[0][threadIdx.x];
    __syncthreads();  // the next tile reuses `rows`
  }
}

}  // namespace dpgan

extern "C" __global__ void reduce_sum_to_inner_fwd_f32(SumToParams p, const float* __restrict__ x,
                                                       float* __restrict__ out) {
  dpgan::sum_to_inner<dpgan::VALUE>(p, x, nullptr, out);
}

extern "C" __global__ void reduce_sum_sq_to_inner_fwd_f32(SumToParams p, const float* __restrict__ x,
                                                          float* __restrict__ out) {
  dpgan::sum_to_inner<dpgan::SQUARE>(p, x, nullptr, out);
}

extern "C" __global__ void reduce_sum_to_outer_fwd_f32(SumToParams p, const float* __restrict__ x,
                                                       float* __restrict__ out) {
  dpgan::sum_to_outer<dpgan::VALUE>(p, x, nullptr, out);
}

extern "C" __global__ void reduce_sum_sq_to_outer_fwd_f32(SumToParams p, const float* __restrict__ x,
                                                          float* __restrict__ out) {
  dpgan::sum_to_outer<dpgan::SQUARE>(p, x, nullptr, out);
}

extern "C" __global__ void reduce_sum_prod_to_inner_fwd_f32(SumToParams p, const float* __restrict__ x,
                                                            const float* __restrict__ y, float* __restrict__ out) {
  dpgan::sum_to_inner<dpgan::PRODUCT>(p, x, y, out);
}

extern "C" __global__ void reduce_sum_prod_to_outer_fwd_f32(SumToParams p, const float* __restrict__ x,
                                                            const float* __restrict__ y, float* __restrict__ out) {
  dpgan::sum_to_outer<dpgan::PRODUCT>(p, x, y, out);
}

// y[r, k] = (x[r, k] − m) − log Σ_k exp(x[r, k] − m), m = max_k x[r, k]. One warp per row, three
// passes over it (max, sum, write; the row stays in L1/L2). Block: 256 threads = 8 rows;
// grid-striding over rows.
extern "C" __global__ void reduce_log_softmax_fwd_f32(LogSoftmaxParams p, const float* __restrict__ x,
                                                      float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  for (int64_t r = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); r < p.rows; r += (int64_t)gridDim.x * warps) {
    const float* row = x + r * p.cols;
    float m = -__int_as_float(0x7f800000);  // -inf
    for (int64_t k = lane; k < p.cols; k += 32) m = fmaxf(m, row[k]);
    m = dpgan::warp_max(m);
    float sum = 0.0f;
    for (int64_t k = lane; k < p.cols; k += 32) sum += expf(row[k] - m);
    // (x − m) − log Σ rather than x − (m + log Σ): no rounding of the sum at m's magnitude.
    const float log_sum = logf(dpgan::warp_sum(sum));
    for (int64_t k = lane; k < p.cols; k += 32) y[r * p.cols + k] = (row[k] - m) - log_sum;
  }
}
