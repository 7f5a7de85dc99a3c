//! Kernel parameter structs, `#[repr(C)]` mirrors of `kernels/common.cuh`.
use cudarc::driver::DeviceRepr;

use crate::backend::{BinaryOp, UnaryOp};

pub const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnaryParams {
    pub n: i64,
    pub op: i32,
    pub a: f32,
    pub b: f32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BinaryParams {
    pub n: i64,
    pub op: i32,
    pub rank: i32,
    /// The op's scalar (a leaky ReLU's slope), 0 for the others.
    pub scalar: f32,
    pub pad_: i32,
    pub shape: [i64; MAX_RANK],
    pub a_strides: [i64; MAX_RANK],
    pub b_strides: [i64; MAX_RANK],
}

// The C structs have the same sizes (checked by `kernels/common.cuh`'s layout and the tests below).
const _: () = assert!(std::mem::size_of::<UnaryParams>() == 24);
const _: () = assert!(std::mem::size_of::<BinaryParams>() == 24 + 3 * 8 * MAX_RANK);

// SAFETY: plain-old-data structs whose layout matches the C side; passed by value as kernel params.
unsafe impl DeviceRepr for UnaryParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for BinaryParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for SumToParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for LogSoftmaxParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for SgdUpdateParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for AdamUpdateParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for EmaUpdateParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for AdamForeachParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for EmaForeachParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for SgdForeachParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for GaussianNoiseParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for PublicDrawParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for SanitizeRowsParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for NoiseDivideParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for NoisedSgdParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for NoisedAdamParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for NoisedSgdForeachParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for NoisedAdamForeachParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for Pool2x2Params {}
// SAFETY: as above.
unsafe impl DeviceRepr for AxisCopyParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for GatherRowsParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for PowerIterationBatch {}
// SAFETY: as above.
unsafe impl DeviceRepr for SpectralDivideBwdParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for PixelNormParams {}
unsafe impl DeviceRepr for GemmParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for ConvParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for ConvPhase {}

impl UnaryParams {
    pub fn new(op: UnaryOp, n: usize) -> Self {
        let (code, a, b) = match op {
            UnaryOp::Affine { scale, shift } => (0, scale, shift),
            UnaryOp::Exp => (1, 0.0, 0.0),
            UnaryOp::Log => (2, 0.0, 0.0),
            UnaryOp::Sqrt => (3, 0.0, 0.0),
            UnaryOp::Rsqrt => (4, 0.0, 0.0),
            UnaryOp::Recip => (5, 0.0, 0.0),
            UnaryOp::Square => (6, 0.0, 0.0),
            UnaryOp::Relu => (7, 0.0, 0.0),
            UnaryOp::LeakyRelu(s) => (8, s, 0.0),
            UnaryOp::Sigmoid => (9, 0.0, 0.0),
            UnaryOp::Tanh => (10, 0.0, 0.0),
            UnaryOp::ReluMask => (11, 0.0, 0.0),
            UnaryOp::LeakyReluMask(s) => (12, s, 0.0),
            UnaryOp::ClipFactor(clip) => (13, clip, 0.0),
        };
        UnaryParams { n: n as i64, op: code, a, b, pad_: 0 }
    }
}

/// `BINARY_FIRST` in common.cuh: the first operand unchanged (broadcast_to's copy).
pub const BINARY_FIRST: i32 = 6;

/// The op's code in `BinaryCode` (common.cuh) and its scalar parameter.
pub fn binary_code(op: BinaryOp) -> (i32, f32) {
    match op {
        BinaryOp::Add => (0, 0.0),
        BinaryOp::Sub => (1, 0.0),
        BinaryOp::Mul => (2, 0.0),
        BinaryOp::Div => (3, 0.0),
        BinaryOp::BceWithLogits => (4, 0.0),
        BinaryOp::LeakyReluGrad(slope) => (5, slope),
        BinaryOp::TanhGrad => (7, 0.0),
        BinaryOp::SigmoidGrad => (8, 0.0),
    }
}

/// Division by a divisor fixed at launch, done on the device as a multiply-high and a shift
/// (Granlund & Montgomery, as PyTorch's `IntDivider`): `n / d = (umulhi(n, multiplier) + n) >> shift`,
/// exact for `n < 2^31` and `1 ≤ d ≤ 2^31`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastDivmod {
    pub divisor: u32,
    pub multiplier: u32,
    pub shift: u32,
    pub pad_: u32,
}

impl FastDivmod {
    pub fn new(divisor: u32) -> Self {
        assert!((1..=1 << 31).contains(&divisor), "FastDivmod: divisor {divisor} outside [1, 2^31]");
        let shift = divisor.next_power_of_two().trailing_zeros();
        let magic = ((1u64 << 32) * ((1u64 << shift) - divisor as u64)) / divisor as u64 + 1;
        let multiplier = u32::try_from(magic).expect("the magic number of a divisor ≤ 2^31 fits in 32 bits");
        FastDivmod { divisor, multiplier, shift, pad_: 0 }
    }

    /// What the device computes (`fast_div` in common.cuh); the host needs it only to test the magic.
    #[cfg(test)]
    pub fn div(&self, n: u32) -> u32 {
        let hi = ((n as u64 * self.multiplier as u64) >> 32) as u32;
        (hi + n) >> self.shift
    }
}

/// The most runs of kept (or of summed) dims `sum_to`'s kernels take.
pub const SUM_TO_MAX_RUNS: usize = 4;

/// `sum_to` over x's dims merged into alternating runs of kept and summed dims (innermost first);
/// see `SumToParams` in common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SumToParams {
    pub out_count: i32,
    pub reduce_count: i32,
    pub split_len: i32,
    pub splits: i32,
    pub kept_rank: i32,
    pub summed_rank: i32,
    pub kept_dims: [FastDivmod; SUM_TO_MAX_RUNS],
    pub summed_dims: [FastDivmod; SUM_TO_MAX_RUNS],
    pub kept_strides: [i64; SUM_TO_MAX_RUNS],
    pub summed_strides: [i64; SUM_TO_MAX_RUNS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LogSoftmaxParams {
    pub rows: i64,
    pub cols: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SgdUpdateParams {
    pub n: i64,
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: i32,
    pub pad_: i32,
    /// Not 0: the device address lr is read from (a step's value block), instead of `lr`.
    pub lr_at: u64,
}

/// Adam's hyper-parameters with the bias corrections of step t folded in (computed in f64):
/// `step_size = lr / (1 − β1ᵗ)`, `bias2_sqrt = sqrt(1 − β2ᵗ)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdamUpdateParams {
    pub n: i64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step_size: f32,
    pub bias2_sqrt: f32,
    /// Not 0: the device address `[step_size, bias2_sqrt]` are read from (a step's value block).
    pub corrections_at: u64,
}

/// One tensor of a multi-tensor update (`ForeachTensor` in common.cuh): device pointers to up to
/// four arrays of `n` floats (Adam: param, grad, m, v; the EMA: ema, x; unused ones 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForeachTensor {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub n: i64,
}

/// The most tensors one multi-tensor launch takes (`DPGAN_FOREACH_TENSORS`).
pub const FOREACH_TENSORS: usize = 32;

/// Adam over up to [`FOREACH_TENSORS`] tensors in one launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdamForeachParams {
    pub hp: AdamUpdateParams,
    pub tensors: [ForeachTensor; FOREACH_TENSORS],
    pub count: i32,
    pub pad_: i32,
}

/// Plain SGD over up to [`FOREACH_TENSORS`] tensors in one launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SgdForeachParams {
    pub hp: SgdUpdateParams,
    pub tensors: [ForeachTensor; FOREACH_TENSORS],
    pub count: i32,
    pub pad_: i32,
}

/// The EMA over up to [`FOREACH_TENSORS`] tensors in one launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmaForeachParams {
    pub decay: f32,
    pub count: i32,
    /// Not 0: the device address `decay` is read from (a step's value block).
    pub decay_at: u64,
    pub tensors: [ForeachTensor; FOREACH_TENSORS],
}

/// An exponential moving average's decay over `n` elements.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmaUpdateParams {
    pub n: i64,
    pub decay: f32,
    pub pad_: i32,
    /// Not 0: the device address `decay` is read from (a step's value block).
    pub decay_at: u64,
}

/// A [`NoiseKey`](crate::dp::NoiseKey) as the kernels read it; the mode picks the kernel. Its
/// `Debug` leaves the key out, as `NoiseKey`'s does, so that no parameter struct holding it (all
/// of them derive `Debug`) can print it into a log or an error.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct NoiseKeyParams {
    pub key: [u32; 8],
    pub tensor_index: u32,
    pub step_lo: u32,
    pub step_hi: u32,
    pub pad_: u32,
    /// Not 0: the device address `[step_lo, step_hi]` are read from (a step's value block).
    pub step_at: u64,
}

impl std::fmt::Debug for NoiseKeyParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKeyParams")
            .field("tensor_index", &self.tensor_index)
            .field("step", &(((self.step_hi as u64) << 32) | self.step_lo as u64))
            .field("step_at", &self.step_at)
            .finish_non_exhaustive()
    }
}

impl NoiseKeyParams {
    pub fn new(k: &crate::dp::NoiseKey) -> Self {
        NoiseKeyParams {
            key: k.key,
            tensor_index: k.tensor_index,
            step_lo: k.step as u32,
            step_hi: (k.step >> 32) as u32,
            pad_: 0,
            step_at: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GaussianNoiseParams {
    pub n: i64,
    pub std: f32,
    pub pad_: i32,
    pub key: NoiseKeyParams,
}

/// The most members one public-draw launch takes (their keys travel in the parameters).
pub const MAX_DRAW_MEMBERS: usize = 64;
/// `PublicDrawParams::kind`, as in common.cuh.
pub const PUBLIC_DRAW_ONE_HOT: u32 = 0;
pub const PUBLIC_DRAW_CLASS: u32 = 1;
pub const PUBLIC_DRAW_UNIT: u32 = 2;
pub const PUBLIC_DRAW_NORMAL: u32 = 3;

/// Public draws of members `[first, first + count)` of a tensor of `per_member`-float blocks, each
/// member from its own Philox key (words 0-1), all at one tensor index and step.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PublicDrawParams {
    pub per_member: i64,
    pub first: i32,
    pub count: i32,
    pub kind: u32,
    pub classes: u32,
    pub tensor_index: u32,
    pub step_lo: u32,
    pub step_hi: u32,
    pub pad_: u32,
    pub keys: [[u32; 2]; MAX_DRAW_MEMBERS],
    /// Not 0: the device address of the launch's `count` keys (two words each), instead of `keys`.
    pub keys_at: u64,
}

/// DP-SGD's noise and division in one pass: `x ← (x + std·z) / divisor`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NoiseDivideParams {
    pub n: i64,
    pub std: f32,
    pub divisor: f32,
    pub key: NoiseKeyParams,
}

/// DP-SGD's noise and division feeding plain SGD in one pass (`dp_noised_sgd_update_*`); the
/// optimizer's `n` is unused.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NoisedSgdParams {
    pub noise: NoiseDivideParams,
    pub sgd: SgdUpdateParams,
}

/// DP-SGD's noise and division feeding Adam in one pass (`dp_noised_adam_update_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NoisedAdamParams {
    pub noise: NoiseDivideParams,
    pub adam: AdamUpdateParams,
}

/// One tensor of a multi-tensor noised update (`NoisedForeachTensor`): device pointers to its
/// parameter, summed clipped gradient and Adam's m and v (0 for SGD), and its own noise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NoisedForeachTensor {
    pub param: u64,
    pub sum: u64,
    pub m: u64,
    pub v: u64,
    pub noise: NoiseDivideParams,
}

/// DP-SGD's noised plain SGD over up to [`FOREACH_TENSORS`] tensors of one noise mode in one launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NoisedSgdForeachParams {
    pub sgd: SgdUpdateParams,
    pub tensors: [NoisedForeachTensor; FOREACH_TENSORS],
    pub count: i32,
    pub pad_: i32,
}

/// DP-SGD's noised Adam over up to [`FOREACH_TENSORS`] tensors of one noise mode in one launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NoisedAdamForeachParams {
    pub adam: AdamUpdateParams,
    pub tensors: [NoisedForeachTensor; FOREACH_TENSORS],
    pub count: i32,
    pub pad_: i32,
}

/// GS-WGAN's sanitiser over `rows × cols`: per-row clip bound and noise std.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SanitizeRowsParams {
    pub rows: i64,
    pub cols: i64,
    pub clip: f32,
    pub noise_std: f32,
    /// 1: rescale every row to norm `clip` (`RowNorm::Exactly`); 0: clip.
    pub exact: i32,
    pub pad_: i32,
    pub key: NoiseKeyParams,
}

/// 2×2 windows over planes of `[.., H, W]`: `n` elements in the launch (outputs, or for the
/// scatter its inputs, one output each), the input plane `in_h × in_w`, the output plane
/// `out_h × out_w`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pool2x2Params {
    pub n: i64,
    pub in_h: i64,
    pub in_w: i64,
    pub out_h: i64,
    pub out_w: i64,
}

/// One axis of a tensor seen as `[outer, dim, inner]`: `len` slices of src from `src_start` go to
/// dst from `dst_start` (see `AxisCopyParams` in common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AxisCopyParams {
    pub n: i64,
    pub inner: i64,
    pub src_dim: i64,
    pub dst_dim: i64,
    pub src_start: i64,
    pub dst_start: i64,
    pub len: i64,
}

/// The most row indices a gather takes in its parameters (`GATHER_INLINE_ROWS` in common.cuh).
pub const GATHER_INLINE_ROWS: usize = 256;

/// Rows gathered by index: `out[r, k] = table[indices[r], k]`, `n = rows · row_len` elements; the
/// indices in `inline_indices` when the kernel's index pointer is null (up to
/// [`GATHER_INLINE_ROWS`]: no upload, capturable), else in a device buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GatherRowsParams {
    pub n: i64,
    pub row_len: i64,
    pub inline_indices: [u32; GATHER_INLINE_ROWS],
}

/// One layer of a batched power iteration (`PowerIterationLayer` in common.cuh): device pointers to
/// its w `[groups, rows, cols]` and u `[groups, rows]`, its outputs u', v, σ, and the split path's
/// scratch v_raw (0 for the fused kernel, which does not read it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PowerIterationLayer {
    pub w: u64,
    pub u: u64,
    pub u_out: u64,
    pub v: u64,
    pub v_raw: u64,
    pub sigma: u64,
    /// 0, or the layer's state, which receives copies of u' and v (`u_state` may equal `u`).
    pub u_state: u64,
    pub v_state: u64,
    pub groups: i64,
    pub rows: i64,
    pub cols: i64,
}

/// The most layers one power-iteration launch takes (`DPGAN_POWER_ITERATION_LAYERS`).
pub const POWER_ITERATION_LAYERS: usize = 16;

/// Up to [`POWER_ITERATION_LAYERS`] layers for one launch of each power-iteration kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PowerIterationBatch {
    pub layers: [PowerIterationLayer; POWER_ITERATION_LAYERS],
    pub count: i32,
    pub pad_: i32,
}

/// Pixel norm over the channels of `x` viewed as `[N, C, P]`: one thread per (n, p).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PixelNormParams {
    /// N·P.
    pub positions: i64,
    pub channels: i64,
    /// P = H·W.
    pub plane: i64,
    pub eps: f32,
    /// 1/C rounded once.
    pub inv_channels: f32,
}

/// The gradient of `W = W̄/σ`, `σ = uᵀW̄v`, over `n = G·O·I < 2^31` elements.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpectralDivideBwdParams {
    pub n: i64,
    /// O.
    pub rows: i64,
    /// O·I: an element's group is its index divided by this.
    pub matrix: FastDivmod,
    /// I: an element's row within the group is its remainder divided by this.
    pub cols: FastDivmod,
}

// The same sizes are asserted on the C side (common.cuh).
const _: () = assert!(std::mem::size_of::<NoiseKeyParams>() == 56);
const _: () = assert!(std::mem::size_of::<GaussianNoiseParams>() == 72);
const _: () = assert!(std::mem::size_of::<PublicDrawParams>() == 560);
const _: () = assert!(std::mem::size_of::<SanitizeRowsParams>() == 88);
const _: () = assert!(std::mem::size_of::<NoiseDivideParams>() == 72);
const _: () = assert!(std::mem::size_of::<NoisedSgdParams>() == 112);
const _: () = assert!(std::mem::size_of::<NoisedAdamParams>() == 112);
const _: () = assert!(std::mem::size_of::<NoisedForeachTensor>() == 104);
const _: () = assert!(std::mem::size_of::<NoisedSgdForeachParams>() == 40 + FOREACH_TENSORS * 104 + 8);
const _: () = assert!(std::mem::size_of::<NoisedAdamForeachParams>() == 40 + FOREACH_TENSORS * 104 + 8);
/// The operands of `gemm_grouped_{nn,tn,nt,tt}_fwd_f32`; see `GemmParams` in common.cuh. With `splits > 1` the kernel
/// writes `splits` partial products of K slices of `split_len`, added up by a second pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmParams {
    pub groups: i32,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub trans_a: i32,
    pub trans_b: i32,
    pub splits: i32,
    pub split_len: i32,
}

/// A conv geometry for `kernels/conv.cu`, with the divisors its kernels decode flat indices by;
/// see `ConvParams` in common.cuh. `splits`/`split_len` cut the weight gradient's K = B·HO·WO.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub groups: i32,
    pub batch: i32,
    pub in_channels: i32,
    pub in_h: i32,
    pub in_w: i32,
    pub out_channels: i32,
    pub kernel_h: i32,
    pub kernel_w: i32,
    pub stride: i32,
    pub padding: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub splits: i32,
    pub split_len: i32,
    pub kernel_area: FastDivmod,
    pub kernel_wd: FastDivmod,
    pub in_area: FastDivmod,
    pub in_wd: FastDivmod,
    pub out_area: FastDivmod,
    pub out_wd: FastDivmod,
    pub stride_d: FastDivmod,
}

/// One stride phase of the conv input gradient; see `ConvPhase` in common.cuh and `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPhase {
    pub phase_y: i32,
    pub phase_x: i32,
    pub first_y: i32,
    pub first_x: i32,
    pub rows: i32,
    pub cols: i32,
    pub taps_y: i32,
    pub taps_x: i32,
    pub shift_y: i32,
    pub shift_x: i32,
    pub pad0_: i32,
    pub pad1_: i32,
    pub pixels: FastDivmod,
    pub cols_d: FastDivmod,
    pub taps_area: FastDivmod,
    pub taps_xd: FastDivmod,
}

// The same sizes are asserted on the C side (common.cuh).
const _: () = assert!(std::mem::size_of::<ConvPhase>() == 12 * 4 + 4 * 16);
const _: () = assert!(std::mem::size_of::<GemmParams>() == 32);
const _: () = assert!(std::mem::size_of::<ConvParams>() == 14 * 4 + 7 * 16);
const _: () = assert!(std::mem::size_of::<ConvParams>() == 168);
const _: () = assert!(std::mem::size_of::<FastDivmod>() == 16);
const _: () = assert!(std::mem::size_of::<SumToParams>() == 24 + 2 * 16 * SUM_TO_MAX_RUNS + 2 * 8 * SUM_TO_MAX_RUNS);
const _: () = assert!(std::mem::size_of::<SumToParams>() == 216);
const _: () = assert!(std::mem::size_of::<LogSoftmaxParams>() == 16);
const _: () = assert!(std::mem::size_of::<SgdUpdateParams>() == 40);
const _: () = assert!(std::mem::size_of::<AdamUpdateParams>() == 40);
const _: () = assert!(std::mem::size_of::<EmaUpdateParams>() == 24);
const _: () = assert!(std::mem::size_of::<ForeachTensor>() == 40);
const _: () = assert!(std::mem::size_of::<AdamForeachParams>() == 40 + FOREACH_TENSORS * 40 + 8);
const _: () = assert!(std::mem::size_of::<EmaForeachParams>() == 16 + FOREACH_TENSORS * 40);
const _: () = assert!(std::mem::size_of::<SgdForeachParams>() == 40 + FOREACH_TENSORS * 40 + 8);
const _: () = assert!(std::mem::size_of::<Pool2x2Params>() == 40);
const _: () = assert!(std::mem::size_of::<AxisCopyParams>() == 56);
const _: () = assert!(std::mem::size_of::<GatherRowsParams>() == 16 + 4 * GATHER_INLINE_ROWS);
const _: () = assert!(std::mem::size_of::<PowerIterationLayer>() == 88);
const _: () = assert!(std::mem::size_of::<PowerIterationBatch>() == POWER_ITERATION_LAYERS * 88 + 8);
const _: () = assert!(std::mem::size_of::<SpectralDivideBwdParams>() == 48);
const _: () = assert!(std::mem::size_of::<PixelNormParams>() == 32);

#[cfg(test)]
mod tests {
    use super::{FastDivmod, GaussianNoiseParams, NoiseKeyParams};

    /// A launch's parameters may end up in an error or a log: the key words never do.
    #[test]
    fn debug_output_leaves_the_noise_key_out() {
        let key = NoiseKeyParams { key: [0x9e37_79b9; 8], tensor_index: 3, step_lo: 7, ..Default::default() };
        let text = format!("{:?}", GaussianNoiseParams { n: 10, std: 1.0, pad_: 0, key });
        assert!(text.contains("step: 7") && text.contains("tensor_index: 3"), "{text}");
        for word in [format!("{}", 0x9e37_79b9u32), format!("{:x}", 0x9e37_79b9u32)] {
            assert!(!text.to_lowercase().contains(&word), "{text}");
        }
    }

    #[test]
    fn fast_divmod_matches_division() {
        let divisors = (1u32..=300).chain([511, 512, 513, 4095, 65_537, 1_000_003, (1 << 30) + 1, (1 << 31) - 1, 1 << 31]);
        for d in divisors {
            let f = FastDivmod::new(d);
            let near = |k: u32| [k.saturating_sub(1), k, k.saturating_add(1)];
            let multiples = (1..=64u64).map(|q| q * d as u64).filter(|&k| k < 1 << 31).flat_map(|k| near(k as u32));
            let dividends = (0u32..2000).chain(multiples).chain(near((1u32 << 31) - 1));
            for n in dividends.filter(|&n| n < 1 << 31) {
                assert_eq!(f.div(n), n / d, "{n} / {d}");
            }
        }
    }
}
