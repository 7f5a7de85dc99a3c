// Spectral norm's power iteration: for each group g, with W = w[g] (rows × cols) and u = u[g],
//   v = normalize(Wᵀu),  u' = normalize(W v),  normalize(x) = x / max(‖x‖, 1e-12),
//   σ = u'ᵀ W v, from the W v just computed (no third pass over W).
// Mirrors src/backend/cpu/norm.rs (which accumulates in f64; here f32 with block reductions).
// Two ways to run it, picked by the launcher (src/backend/cuda/norm.rs): one fused kernel with a
// block per group when the groups fill the device, three launches that spread each group over many
// blocks when they do not (G = 1). Either way a launch serves up to 16 layers.
#include "common.cuh"

namespace dpgan {

// x[0..n) ← x / max(‖x‖, 1e-12) by the whole block; x was written by this block before the call.
// Returns (to every thread) x'ᵀx with x' the normalised x: for x = W v that is σ = u'ᵀ W v,
// summed from the normalised values as PyTorch's dot(u', W v) is (‖x‖² / ‖x‖ would square the
// tiny values the guard is for into subnormals). `scratch` holds 32 floats of shared memory.
// Exact sqrtf and division (no fast-math).
__device__ __forceinline__ float block_normalize(float* x, int64_t n, float* scratch) {
  float sq = 0.0f;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sq += x[k] * x[k];
  const float norm = fmaxf(sqrtf(block_sum(sq, scratch)), 1e-12f);
  float dot = 0.0f;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const float normalised = x[k] / norm;
    dot += normalised * x[k];
    x[k] = normalised;
  }
  return block_sum(dot, scratch);  // its barriers also order the writes to x before later reads
}

}  // namespace dpgan

// Every kernel below takes a batch of layers (PowerIterationBatch, common.cuh): grid.z (grid.x for
// the per-group kernels' groups) picks the layer, so one launch serves every spectrally normalised
// layer of a model. The grid is sized for the largest layer; blocks past a smaller layer's extent
// return at once (uniformly over the block, so no __syncthreads is skipped by some threads only).

// One block per (group, layer): grid (max groups, 1, layers), any multiple of 32 threads up to 1024.
//   1. v_raw[c] = Σ_r W[r, c]·u[r]: a thread per column (a warp reads 32 adjacent columns of a row),
//      summing over the rows in order; written to v, then normalised in place.
//   2. u_raw[r] = Σ_c W[r, c]·v[c]: a warp per row, lanes striding over the columns, then a warp
//      shuffle tree; written to u_out, then normalised in place.
// v and u_out double as the scratch vectors, so nothing limits cols or rows but memory; they are
// written and re-read by the block (ordinary global loads, made visible by __syncthreads). The
// copies into u_state and v_state come after every read of u (u_state may be u).
extern "C" __global__ void norm_power_iteration_fwd_f32(PowerIterationBatch b) {
  __shared__ float scratch[32];
  const PowerIterationLayer& p = b.layers[blockIdx.z];
  const int64_t g = blockIdx.x;
  if (g >= p.groups) return;
  const float* w_g = p.w + g * p.rows * p.cols;
  const float* u_g = p.u + g * p.rows;
  float* u_out_g = p.u_out + g * p.rows;
  float* v_g = p.v + g * p.cols;

  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t r = 0; r < p.rows; ++r) acc += w_g[r * p.cols + c] * u_g[r];
    v_g[c] = acc;
  }
  __syncthreads();
  dpgan::block_normalize(v_g, p.cols, scratch);
  // Each thread copies the elements it normalised.
  if (p.v_state != nullptr)
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) p.v_state[g * p.cols + c] = v_g[c];

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
  const float s = dpgan::block_normalize(u_out_g, p.rows, scratch);
  if (threadIdx.x == 0) p.sigma[g] = s;
  if (p.u_state != nullptr)
    for (int64_t r = threadIdx.x; r < p.rows; r += blockDim.x) p.u_state[g * p.rows + r] = u_out_g[r];
}

// ---- The same step in three launches, for few groups (one block per group would leave most of
// the device idle: G = 1 reads a 256 × 6400 matrix through one SM). Same formulas; v_raw is a
// scratch buffer [groups, cols], u_raw is written into u_out and normalised there.

// Columns per block of the Wᵀu kernel (one per lane) and row slices sharing out its rows.
#define DPGAN_WTU_COLS 32
#define DPGAN_WTU_SLICES 16

// 1. v_raw[g, c] = Σ_r W[r, c]·u[r]. Grid (max ⌈cols/32⌉, max groups, layers), block 512 = 32
//    columns × 16 row slices: slice s sums rows s, s + 16, ... (a warp reads 32 adjacent columns of
//    a row), then slice 0 adds the 16 partial sums in order.
extern "C" __global__ void norm_power_iteration_wtu_fwd_f32(PowerIterationBatch b) {
  __shared__ float partial[DPGAN_WTU_SLICES][DPGAN_WTU_COLS];
  const PowerIterationLayer& p = b.layers[blockIdx.z];
  const int64_t g = blockIdx.y;
  if (g >= p.groups) return;
  const int lane = threadIdx.x % DPGAN_WTU_COLS;
  const int slice = threadIdx.x / DPGAN_WTU_COLS;
  const int64_t c = (int64_t)blockIdx.x * DPGAN_WTU_COLS + lane;
  float acc = 0.0f;
  if (c < p.cols) {
    const float* w_g = p.w + g * p.rows * p.cols;
    const float* u_g = p.u + g * p.rows;
    for (int64_t r = slice; r < p.rows; r += DPGAN_WTU_SLICES) acc += w_g[r * p.cols + c] * u_g[r];
  }
  partial[slice][lane] = acc;
  __syncthreads();
  if (slice == 0 && c < p.cols) {
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < DPGAN_WTU_SLICES; ++s) sum += partial[s][lane];
    p.v_raw[g * p.cols + c] = sum;
  }
}

// 2. v = v_raw / max(‖v_raw‖, 1e-12) and u_raw[g, r] = Σ_c W[r, c]·v[c]. Grid (max row blocks,
//    max groups, layers), any multiple of 32 threads: every block computes the group's norm itself
//    (the same reduction in the same order, so the same value in every block), writes its stripe
//    of v, and takes rows with a warp per row (lanes striding over the columns, then a shuffle
//    tree). u_raw goes to u_out.
extern "C" __global__ void norm_power_iteration_wv_fwd_f32(PowerIterationBatch b) {
  __shared__ float scratch[32];
  const PowerIterationLayer& p = b.layers[blockIdx.z];
  const int64_t g = blockIdx.y;
  if (g >= p.groups) return;
  const float* v_raw_g = p.v_raw + g * p.cols;
  float sq = 0.0f;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) sq += v_raw_g[c] * v_raw_g[c];
  const float norm = fmaxf(sqrtf(dpgan::block_sum(sq, scratch)), 1e-12f);

  for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < p.cols; c += (int64_t)gridDim.x * blockDim.x) {
    const float v = v_raw_g[c] / norm;
    p.v[g * p.cols + c] = v;
    if (p.v_state != nullptr) p.v_state[g * p.cols + c] = v;
  }
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x >> 5;
  const float* w_g = p.w + g * p.rows * p.cols;
  for (int64_t r = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); r < p.rows; r += (int64_t)gridDim.x * warps) {
    const float* row = w_g + r * p.cols;
    float acc = 0.0f;
    for (int64_t c = lane; c < p.cols; c += 32) acc += row[c] * (v_raw_g[c] / norm);
    acc = dpgan::warp_sum(acc);
    if (lane == 0) p.u_out[g * p.rows + r] = acc;
  }
}

// 3. u_out[g] ← u_out[g] / max(‖u_out[g]‖, 1e-12) and σ[g]: grid (max groups, 1, layers). u was
//    read by launch 1, so u_state (possibly u) is written only here.
extern "C" __global__ void norm_power_iteration_normalize_u_fwd_f32(PowerIterationBatch b) {
  __shared__ float scratch[32];
  const PowerIterationLayer& p = b.layers[blockIdx.z];
  const int64_t g = blockIdx.x;
  if (g >= p.groups) return;
  float* u_out_g = p.u_out + g * p.rows;
  const float s = dpgan::block_normalize(u_out_g, p.rows, scratch);
  if (threadIdx.x == 0) p.sigma[g] = s;
  if (p.u_state != nullptr)
    for (int64_t r = threadIdx.x; r < p.rows; r += blockDim.x) p.u_state[g * p.rows + r] = u_out_g[r];
}

// The gradient of spectral norm's W = W̄/σ with σ = uᵀW̄v (u, v constants) for W̄ [G, O, I]:
//   dW̄ = dW/σ − (⟨dW, W̄⟩/σ²)·u vᵀ = (dW − c·u vᵀ)/σ,  c = ⟨dW, W⟩ per group (computed before:
// sum_products_to), one pass instead of the division's and σ's rules (eight launches).
// Mirrors src/backend/cpu/norm.rs (spectral_divide_backward). Exact division (no fast-math).
extern "C" __global__ void norm_spectral_divide_bwd_f32(SpectralDivideBwdParams p, const float* __restrict__ dw,
                                                        const float* __restrict__ c, const float* __restrict__ u,
                                                        const float* __restrict__ v,
                                                        const float* __restrict__ sigma, float* __restrict__ dw_bar) {
  DPGAN_FOR_EACH(e, p.n) {
    const uint32_t i = (uint32_t)e;
    const uint32_t g = dpgan::fast_div(p.matrix, i);
    const uint32_t in_group = i - g * p.matrix.divisor;
    const uint32_t row = dpgan::fast_div(p.cols, in_group);
    const uint32_t col = in_group - row * p.cols.divisor;
    const float along = c[g] * u[g * p.rows + row];
    dw_bar[e] = (dw[e] - along * v[(int64_t)g * p.cols.divisor + col]) / sigma[g];
  }
}

// Pixel norm, one thread per position (n, p) of x [N, C, P], looping over the C channels (a warp
// reads 32 adjacent positions of one channel: coalesced):
//   inv = 1/sqrt(Σ_c x²·(1/C) + eps),  y_c = x_c·inv.
// inv [N, P] is kept for the backward pass. Mirrors src/backend/cpu/norm.rs (pixel_norm, in f64).
extern "C" __global__ void norm_pixel_norm_fwd_f32(PixelNormParams p, const float* __restrict__ x,
                                                   float* __restrict__ y, float* __restrict__ inv_out) {
  DPGAN_FOR_EACH(pos, p.positions) {
    const int64_t n = pos / p.plane, q = pos - n * p.plane;
    const float* x_n = x + n * p.channels * p.plane + q;
    float sum_sq = 0.0f;
    for (int64_t c = 0; c < p.channels; ++c) sum_sq += x_n[c * p.plane] * x_n[c * p.plane];
    const float inv = 1.0f / sqrtf(sum_sq * p.inv_channels + p.eps);
    float* y_n = y + n * p.channels * p.plane + q;
    for (int64_t c = 0; c < p.channels; ++c) y_n[c * p.plane] = x_n[c * p.plane] * inv;
    inv_out[pos] = inv;
  }
}

// Its gradient at each position, with s = Σ_c x_c·dy_c:
//   dx_c = inv·dy_c − x_c·inv³·s/C
// (the product rule through y = x·inv and inv = (Σx²/C + eps)^(−1/2)), from the forward's inv.
extern "C" __global__ void norm_pixel_norm_bwd_f32(PixelNormParams p, const float* __restrict__ x,
                                                   const float* __restrict__ inv_in, const float* __restrict__ dy,
                                                   float* __restrict__ dx) {
  DPGAN_FOR_EACH(pos, p.positions) {
    const int64_t n = pos / p.plane, q = pos - n * p.plane;
    const int64_t base = n * p.channels * p.plane + q;
    float s = 0.0f;
    for (int64_t c = 0; c < p.channels; ++c) s += x[base + c * p.plane] * dy[base + c * p.plane];
    const float inv = inv_in[pos];
    const float k = inv * inv * inv * s * p.inv_channels;
    for (int64_t c = 0; c < p.channels; ++c) dx[base + c * p.plane] = inv * dy[base + c * p.plane] - x[base + c * p.plane] * k;
  }
}
