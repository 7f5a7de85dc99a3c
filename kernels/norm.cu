// Spectral norm's power iteration: for each group g, with W = w[g] (rows × cols) and u = u[g],
//   v = normalize(Wᵀu),  u' = normalize(W v),  normalize(x) = x / max(‖x‖, 1e-12).
// Mirrors src/backend/cpu/norm.rs (which accumulates in f64; here f32 with block reductions).
#include "common.cuh"

namespace dpgan {

// x[0..n) ← x / max(‖x‖, 1e-12) by the whole block; x was written by this block before the call.
// `scratch` holds 32 floats of shared memory. Exact sqrtf and division (no fast-math).
__device__ __forceinline__ void block_normalize(float* x, int64_t n, float* scratch) {
  float sq = 0.0f;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sq += x[k] * x[k];
  const float norm = fmaxf(sqrtf(block_sum(sq, scratch)), 1e-12f);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) x[k] = x[k] / norm;
  __syncthreads();  // x is read by other threads next
}

}  // namespace dpgan

// One block per group (grid.x = groups), any multiple of 32 threads up to 1024.
//   1. v_raw[c] = Σ_r W[r, c]·u[r]: a thread per column (a warp reads 32 adjacent columns of a row),
//      summing over the rows in order; written to v, then normalised in place.
//   2. u_raw[r] = Σ_c W[r, c]·v[c]: a warp per row, lanes striding over the columns, then a warp
//      shuffle tree; written to u_out, then normalised in place.
// v and u_out double as the scratch vectors, so nothing limits cols or rows but memory; they are
// written and re-read by the block (ordinary global loads, made visible by __syncthreads), hence
// not __restrict__.
extern "C" __global__ void norm_power_iteration_fwd_f32(PowerIterationParams p, const float* __restrict__ w,
                                                        const float* __restrict__ u, float* u_out, float* v) {
  __shared__ float scratch[32];
  const int64_t g = blockIdx.x;
  if (g >= p.groups) return;  // uniform over the block: no __syncthreads is skipped by some threads only
  const float* w_g = w + g * p.rows * p.cols;
  const float* u_g = u + g * p.rows;
  float* u_out_g = u_out + g * p.rows;
  float* v_g = v + g * p.cols;

  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t r = 0; r < p.rows; ++r) acc += w_g[r * p.cols + c] * u_g[r];
    v_g[c] = acc;
  }
  __syncthreads();
  dpgan::block_normalize(v_g, p.cols, scratch);

  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  for (int64_t r = threadIdx.x >> 5; r < p.rows; r += warps) {
    const float* row = w_g + r * p.cols;
    float acc = 0.0f;
    for (int64_t c = lane; c < p.cols; c += 32) acc += row[c] * v_g[c];
    acc = dpgan::warp_sum(acc);
    if (lane == 0) u_out_g[r] = acc;
  }
  __syncthreads();
  dpgan::block_normalize(u_out_g, p.rows, scratch);
}
