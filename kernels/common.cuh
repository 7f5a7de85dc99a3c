// Shared helpers for dpgan's kernels: index helpers, warp/block reductions, the parameter structs
// mirrored on the Rust side (src/backend/cuda/params.rs; sizes are checked there).
#pragma once
#include <cstdint>

#define DPGAN_MAX_RANK 8

// Grid-stride loop over [0, n).
#define DPGAN_FOR_EACH(i, n)                                                                   \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n);          \
       i += (int64_t)blockDim.x * gridDim.x)

namespace dpgan {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Maximum over the warp (every lane gets it). fmaxf ignores a NaN operand, as f32::max does.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < warps) ? scratch[threadIdx.x] : 0.0f;
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  return scratch[0];
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// block_sum in f64 (norms that clipping depends on); `scratch` holds 32 doubles of shared memory.
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum_f64(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < warps) ? scratch[threadIdx.x] : 0.0;
  if (warp == 0) v = warp_sum_f64(v);
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  return scratch[0];
}

}  // namespace dpgan

// ---- Division by a divisor fixed at launch: a multiply-high and a shift instead of a division ----

// Granlund & Montgomery's method as in PyTorch's IntDivider; `multiplier` and `shift` are computed
// on the host (params.rs, FastDivmod::new). Exact for dividends below 2^31 and divisors in [1, 2^31].
struct FastDivmod {
  uint32_t divisor;
  uint32_t multiplier;
  uint32_t shift;
  uint32_t pad_;
};

namespace dpgan {

__device__ __forceinline__ uint32_t fast_div(const FastDivmod& d, uint32_t n) {
  return (__umulhi(n, d.multiplier) + n) >> d.shift;
}

}  // namespace dpgan

// ---- Parameter structs (mirrored in src/backend/cuda/params.rs) ----

// Unary elementwise op codes (UnaryOp on the Rust side).
enum UnaryCode : int32_t {
  UNARY_AFFINE = 0,
  UNARY_EXP = 1,
  UNARY_LOG = 2,
  UNARY_SQRT = 3,
  UNARY_RSQRT = 4,
  UNARY_RECIP = 5,
  UNARY_SQUARE = 6,
  UNARY_RELU = 7,
  UNARY_LEAKY_RELU = 8,
  UNARY_SIGMOID = 9,
  UNARY_TANH = 10,
  UNARY_RELU_MASK = 11,
  UNARY_LEAKY_RELU_MASK = 12,
  UNARY_CLIP_FACTOR = 13,
};

struct UnaryParams {
  int64_t n;
  int32_t op;
  float a;  // affine scale, or the leaky slope
  float b;  // affine shift
  int32_t pad_;
};

enum BinaryCode : int32_t {
  BINARY_ADD = 0,
  BINARY_SUB = 1,
  BINARY_MUL = 2,
  BINARY_DIV = 3,
  BINARY_BCE_WITH_LOGITS = 4,
  BINARY_LEAKY_RELU_GRAD = 5,  // a where b > 0, else scalar·a
  BINARY_FIRST = 6,            // a, unchanged: broadcast_to (launched with b = a)
  BINARY_TANH_GRAD = 7,        // a·(1 − b²), b² rounded first
  BINARY_SIGMOID_GRAD = 8,     // a·(b·(1 − b))
};

// A broadcast binary op: out has `rank` dims `shape`; a and b are read through their strides
// (0 on broadcast dims).
struct BinaryParams {
  int64_t n;
  int32_t op;
  int32_t rank;
  float scalar;  // the op's parameter (a leaky ReLU's slope), 0 for the others
  int32_t pad_;
  int64_t shape[DPGAN_MAX_RANK];
  int64_t a_strides[DPGAN_MAX_RANK];
  int64_t b_strides[DPGAN_MAX_RANK];
};

// ---- reduce.cu ----

#define DPGAN_SUM_TO_MAX_RUNS 4

// sum_to after the host has merged x's dims into alternating runs of kept and summed dims (size-1
// dims dropped). Output o and summand j are mixed-radix numbers over the kept and summed runs;
// x[kept_offset(o) + summed_offset(j)] is summed into out[o]. Runs are stored innermost first.
// With splits > 1 the summands of each output are cut into `splits` ranges of `split_len` and
// partial sums written to out[o * splits + s]; a second launch adds them up.
struct SumToParams {
  int32_t out_count;     // product of the kept runs
  int32_t reduce_count;  // product of the summed runs: terms per output
  int32_t split_len;     // terms per partial sum
  int32_t splits;        // partial sums per output (1: out[o] is the result)
  int32_t kept_rank;
  int32_t summed_rank;
  FastDivmod kept_dims[DPGAN_SUM_TO_MAX_RUNS];
  FastDivmod summed_dims[DPGAN_SUM_TO_MAX_RUNS];
  int64_t kept_strides[DPGAN_SUM_TO_MAX_RUNS];  // x's strides of the kept runs
  int64_t summed_strides[DPGAN_SUM_TO_MAX_RUNS];
};

// log_softmax over rows of `cols` contiguous elements.
struct LogSoftmaxParams {
  int64_t rows;
  int64_t cols;
};

// ---- optim.cu ----

// ---- Per-step values from device memory ----
// A value that changes every step (a learning rate, an EMA's decay, Adam's bias corrections, the
// noise step, a public draw's key) travels in the launch parameters, or, when its `*_at` pointer is not null, is
// read from that device address (a step's value block, src/backend/cuda/step_block.rs): a CUDA
// graph of the step then replays with the values the host wrote there for the next step. A kernel
// reads each once, through step_values.cuh's `resolved`, before its loop.

// SgdParams: `momentum_buf` is used only by optim_sgd_momentum_update_f32. lr_at: lr from memory.
struct SgdUpdateParams {
  int64_t n;
  float lr;
  float momentum;
  float dampening;
  float weight_decay;
  int32_t nesterov;
  int32_t pad_;
  const float* lr_at;
};

// AdamParams with the bias corrections of step t folded in on the host (f64):
// step_size = lr / (1 − β1ᵗ), bias2_sqrt = sqrt(1 − β2ᵗ). corrections_at: {step_size, bias2_sqrt}
// from memory.
struct AdamUpdateParams {
  int64_t n;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  float step_size;
  float bias2_sqrt;
  const float* corrections_at;
};

struct EmaUpdateParams {
  int64_t n;
  float decay;
  int32_t pad_;
  const float* decay_at;  // not null: decay is read from here (a step's value block)
};

// One tensor of a multi-tensor ("foreach") update: up to four arrays of n floats (Adam: param,
// grad, m, v; the EMA: ema, x).
struct ForeachTensor {
  float* a;
  const float* b;
  float* c;
  float* d;
  int64_t n;
};

// Up to 32 tensors per launch: grid.y picks the tensor, grid.x strides over its elements.
#define DPGAN_FOREACH_TENSORS 32
struct AdamForeachParams {
  AdamUpdateParams hp;  // its n unused: each tensor has its own
  ForeachTensor tensors[DPGAN_FOREACH_TENSORS];
  int32_t count;
  int32_t pad_;
};

struct EmaForeachParams {
  float decay;
  int32_t count;
  const float* decay_at;  // not null: decay is read from here (a step's value block)
  ForeachTensor tensors[DPGAN_FOREACH_TENSORS];
};

// Plain SGD (no momentum) over up to 32 tensors: param in a, grad in b.
struct SgdForeachParams {
  SgdUpdateParams hp;  // its n unused: each tensor has its own
  ForeachTensor tensors[DPGAN_FOREACH_TENSORS];
  int32_t count;
  int32_t pad_;
};

// ---- rng.cu, dp.cu ----

// A NoiseKey (src/dp/noise.rs): the 256-bit key (Philox uses words 0 and 1) and the position
// (tensor index, step) that makes each tensor's noise fresh. step_at: {step_lo, step_hi} from
// memory (the key itself always travels in the parameters).
struct NoiseKeyParams {
  uint32_t key[8];
  uint32_t tensor_index;
  uint32_t step_lo;
  uint32_t step_hi;
  uint32_t pad_;
  const uint32_t* step_at;
};

struct GaussianNoiseParams {
  int64_t n;
  float std;
  int32_t pad_;
  NoiseKeyParams key;
};

// Public draws (rng_public_draws_philox_f32): a tensor of members × per_member floats, member m's
// block drawn from its own Philox key (words 0-1; all at one tensor_index and step); one launch
// writes members [first, first + count), count ≤ MAX_DRAW_MEMBERS. kind: PUBLIC_DRAW_*.
constexpr int MAX_DRAW_MEMBERS = 64;
constexpr uint32_t PUBLIC_DRAW_ONE_HOT = 0;  // rows of `classes`, 1 at the row's class
constexpr uint32_t PUBLIC_DRAW_CLASS = 1;    // each element a class in [0, classes), as a float
constexpr uint32_t PUBLIC_DRAW_UNIT = 2;     // each element a uniform in [0, 1)
constexpr uint32_t PUBLIC_DRAW_NORMAL = 3;   // each element a standard normal
struct PublicDrawParams {
  int64_t per_member;
  int32_t first;
  int32_t count;
  uint32_t kind;
  uint32_t classes;
  uint32_t tensor_index;
  uint32_t step_lo;
  uint32_t step_hi;
  uint32_t pad_;
  uint32_t keys[MAX_DRAW_MEMBERS][2];
  const uint32_t* keys_at;  // not null: the launch's count keys, two words each, from memory
};

// DP-SGD's last step over a summed gradient: x[e] ← (x[e] + std·z[e]) / divisor, in place.
struct NoiseDivideParams {
  int64_t n;
  float std;
  float divisor;
  NoiseKeyParams key;
};

// DP-SGD's noise and division followed by an optimizer update, in one pass (dp.cu): the
// gradient (sum + std·z)/divisor of noise.n elements feeds the update; the optimizer's n is unused.
struct NoisedSgdParams {
  NoiseDivideParams noise;
  SgdUpdateParams sgd;
};

struct NoisedAdamParams {
  NoiseDivideParams noise;
  AdamUpdateParams adam;
};

// One tensor of a multi-tensor noised update: its parameter, summed clipped gradient, Adam's m and
// v (unused by SGD) and its own noise (n, std, divisor, key with the tensor's index).
struct NoisedForeachTensor {
  float* param;
  const float* sum;
  float* m;
  float* v;
  NoiseDivideParams noise;
};

// Up to 32 tensors per launch, one noise mode: grid.y picks the tensor, grid.x its elements (one
// per thread; the grid covers the largest tensor). The optimizer's n is unused.
struct NoisedSgdForeachParams {
  SgdUpdateParams sgd;
  NoisedForeachTensor tensors[DPGAN_FOREACH_TENSORS];
  int32_t count;
  int32_t pad_;
};

struct NoisedAdamForeachParams {
  AdamUpdateParams adam;
  NoisedForeachTensor tensors[DPGAN_FOREACH_TENSORS];
  int32_t count;
  int32_t pad_;
};

// g and out are rows × cols, row-major; the clip bound and noise std are per row (C/B, 2σC/B).
struct SanitizeRowsParams {
  int64_t rows;
  int64_t cols;
  float clip;
  float noise_std;
  int32_t exact;  // 1: every row rescaled to norm clip (σ = 0 control); 0: clipped to at most clip
  int32_t pad_;
  NoiseKeyParams key;
};

// ---- pool.cu ----

// 2×2 windows over planes of `[.., H, W]`: `n` elements in the launch (outputs of gather, upsample
// and sum_pool; inputs of scatter, which writes one output per input), the input plane in_h × in_w
// and the output plane out_h × out_w. All offsets are 64-bit.
struct Pool2x2Params {
  int64_t n;
  int64_t in_h;
  int64_t in_w;
  int64_t out_h;
  int64_t out_w;
};

// ---- shape.cu ----

// One axis of a row-major tensor seen as [outer, dim, inner]: `len` slices of src starting at
// `src_start` go to dst starting at `dst_start`; src has `src_dim` slices, dst `dst_dim`.
// narrow and concat_part copy [outer, len, inner] (n = outer·len·inner); pad writes all of dst
// (n = outer·dst_dim·inner), zeros outside the copied slices.
struct AxisCopyParams {
  int64_t n;
  int64_t inner;
  int64_t src_dim;
  int64_t dst_dim;
  int64_t src_start;
  int64_t dst_start;
  int64_t len;
};

// Rows gathered by index: out[r, k] = table[indices[r], k], n = rows · row_len elements.
// Up to GATHER_INLINE_ROWS indices travel in the parameters (a GS-WGAN or DPSGD-GAN batch: no
// upload, and a launch a CUDA graph can capture); the kernel's `indices` is then null. Larger
// batches come in a device buffer.
constexpr int GATHER_INLINE_ROWS = 256;
struct GatherRowsParams {
  int64_t n;
  int64_t row_len;
  uint32_t inline_indices[GATHER_INLINE_ROWS];
};

// ---- norm.cu ----

// One layer of spectral norm's power iteration: w [groups, rows, cols] and u [groups, rows] in,
// u_out [groups, rows], v [groups, cols] and σ [groups] out; v_raw [groups, cols] the split path's
// scratch (unused by the fused kernel).
// u_state and v_state (null, or a spectral norm's own u and v; u_state may be u itself) receive
// copies of u' and v: the layer's state updated in place beside the step's own outputs.
struct PowerIterationLayer {
  const float* w;
  const float* u;
  float* u_out;
  float* v;
  float* v_raw;
  float* sigma;
  float* u_state;
  float* v_state;
  int64_t groups;
  int64_t rows;
  int64_t cols;
};

// Up to 16 layers in one launch (1,416 bytes of kernel parameters, well inside 4 KiB).
#define DPGAN_POWER_ITERATION_LAYERS 16
struct PowerIterationBatch {
  PowerIterationLayer layers[DPGAN_POWER_ITERATION_LAYERS];
  int32_t count;
  int32_t pad_;
};

// Pixel norm over the channels of x viewed as [N, C, P] (N = G·B examples, P = H·W positions):
// one thread per (n, p), `positions` = N·P of them.
struct PixelNormParams {
  int64_t positions;
  int64_t channels;  // C
  int64_t plane;     // P
  float eps;
  float inv_channels;  // 1/C, rounded once on the host
};

// The gradient of W = W̄/σ with σ = uᵀW̄v for n = G·O·I elements (n < 2^31): the element index
// splits into the group (by O·I) and the column (by I).
struct SpectralDivideBwdParams {
  int64_t n;
  int64_t rows;       // O
  FastDivmod matrix;  // O·I
  FastDivmod cols;    // I
};

// ---- gemm.cu ----

// C[g] = op(A[g]) · op(B[g]), row-major, A [G, M, K] (or [G, K, M] when trans_a), B [G, K, N] (or
// [G, N, K] when trans_b). With splits > 1, K is cut into slices of split_len (a multiple of the
// tile's K step) and slice s writes its partial product to c[s][g] (c then holds splits · G · M · N
// floats); the host adds the slices in a second, deterministic pass. trans_a and trans_b say which of
// the four kernels (gemm_grouped_{nn,tn,nt,tt}_fwd_f32) the launcher picked.
struct GemmParams {
  int32_t groups;
  int32_t m;
  int32_t n;
  int32_t k;
  int32_t trans_a;
  int32_t trans_b;
  int32_t splits;
  int32_t split_len;
};

// ---- conv.cu ----

// A grouped conv's geometry (ConvGeometry on the Rust side) with the divisors its kernels decode
// flat indices by. x [G, B, C, H, W], w [G, O, C, KH, KW], y [G, B, O, HO, WO]. splits/split_len cut
// the weight gradient's K = B·HO·WO as in GemmParams (1 and K for the other kernels).
struct ConvParams {
  int32_t groups;
  int32_t batch;
  int32_t in_channels;
  int32_t in_h;
  int32_t in_w;
  int32_t out_channels;
  int32_t kernel_h;
  int32_t kernel_w;
  int32_t stride;
  int32_t padding;
  int32_t out_h;
  int32_t out_w;
  int32_t splits;
  int32_t split_len;
  FastDivmod kernel_area;  // KH·KW
  FastDivmod kernel_wd;    // KW
  FastDivmod in_area;      // H·W
  FastDivmod in_wd;        // W
  FastDivmod out_area;     // HO·WO
  FastDivmod out_wd;       // WO
  FastDivmod stride_d;     // stride
};

// One stride phase of the conv input gradient: the input pixels with (iy + p) mod s = phase_y and
// (ix + p) mod s = phase_x, i.e. iy = first_y + s·j (j < rows), ix = first_x + s·i (i < cols), and
// the taps ki = phase_y + s·ty (ty < taps_y), kj = phase_x + s·tx (tx < taps_x) that reach them,
// from dy[shift_y + j − ty, shift_x + i − tx].
struct ConvPhase {
  int32_t phase_y;
  int32_t phase_x;
  int32_t first_y;
  int32_t first_x;
  int32_t rows;
  int32_t cols;
  int32_t taps_y;
  int32_t taps_x;
  int32_t shift_y;
  int32_t shift_x;
  int32_t pad0_;
  int32_t pad1_;
  FastDivmod pixels;     // rows·cols
  FastDivmod cols_d;     // cols
  FastDivmod taps_area;  // taps_y·taps_x
  FastDivmod taps_xd;    // taps_x
};

// The Rust mirrors assert the same sizes (src/backend/cuda/params.rs).
static_assert(sizeof(FastDivmod) == 16, "FastDivmod layout");
static_assert(sizeof(SumToParams) == 216, "SumToParams layout");
static_assert(sizeof(LogSoftmaxParams) == 16, "LogSoftmaxParams layout");
static_assert(sizeof(SgdUpdateParams) == 40, "SgdUpdateParams layout");
static_assert(sizeof(AdamUpdateParams) == 40, "AdamUpdateParams layout");
static_assert(sizeof(NoiseKeyParams) == 56, "NoiseKeyParams layout");
static_assert(sizeof(GaussianNoiseParams) == 72, "GaussianNoiseParams layout");
static_assert(sizeof(PublicDrawParams) == 560, "PublicDrawParams layout");
static_assert(sizeof(SanitizeRowsParams) == 88, "SanitizeRowsParams layout");
static_assert(sizeof(NoiseDivideParams) == 72, "NoiseDivideParams layout");
static_assert(sizeof(NoisedSgdParams) == 112, "NoisedSgdParams layout");
static_assert(sizeof(NoisedForeachTensor) == 104, "NoisedForeachTensor layout");
static_assert(sizeof(NoisedSgdForeachParams) == 40 + DPGAN_FOREACH_TENSORS * 104 + 8, "NoisedSgdForeachParams layout");
static_assert(sizeof(NoisedAdamForeachParams) == 40 + DPGAN_FOREACH_TENSORS * 104 + 8, "NoisedAdamForeachParams layout");
// Kernel parameters are limited to 4 KiB.
static_assert(sizeof(NoisedAdamForeachParams) <= 4096, "NoisedAdamForeachParams fits one launch's parameters");
static_assert(sizeof(EmaUpdateParams) == 24, "EmaUpdateParams layout");
static_assert(sizeof(ForeachTensor) == 40, "ForeachTensor layout");
static_assert(sizeof(AdamForeachParams) == 40 + 32 * 40 + 8, "AdamForeachParams layout");
static_assert(sizeof(EmaForeachParams) == 16 + 32 * 40, "EmaForeachParams layout");
static_assert(sizeof(SgdForeachParams) == 40 + 32 * 40 + 8, "SgdForeachParams layout");
static_assert(sizeof(NoisedAdamParams) == 112, "NoisedAdamParams layout");
static_assert(sizeof(Pool2x2Params) == 40, "Pool2x2Params layout");
static_assert(sizeof(AxisCopyParams) == 56, "AxisCopyParams layout");
static_assert(sizeof(GatherRowsParams) == 16 + 4 * GATHER_INLINE_ROWS, "GatherRowsParams layout");
static_assert(sizeof(PowerIterationLayer) == 88, "PowerIterationLayer layout");
static_assert(sizeof(PowerIterationBatch) == 16 * 88 + 8, "PowerIterationBatch layout");
static_assert(sizeof(SpectralDivideBwdParams) == 48, "SpectralDivideBwdParams layout");
static_assert(sizeof(PixelNormParams) == 32, "PixelNormParams layout");
static_assert(sizeof(GemmParams) == 32, "GemmParams layout");
static_assert(sizeof(ConvParams) == 168, "ConvParams layout");
static_assert(sizeof(ConvPhase) == 112, "ConvPhase layout");
