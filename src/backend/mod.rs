//! The op set: what every backend provides.
//!
//! `ops` holds the public, shape-checked entry points; each picks the backend of its operands'
//! device and calls the [`Backend`] method, which only does arithmetic on validated shapes.
//! `cpu` is the reference implementation, `cuda` launches our kernels.
//!
//! Layout conventions: parametric ops carry a leading model-group dimension G. Weights are
//! `[G, ...]`, activations `[G, B, ...]`; group g uses weights g on its own slice. G = 1 is an
//! ordinary model.
pub mod census;
pub mod cpu;
pub mod cuda;
pub mod ops;
pub mod step_values;

use crate::dp::NoiseKey;
use crate::error::Result;
use crate::tensor::{Device, Tensor};

/// Elementwise maps of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `scale * x + shift`
    Affine {
        scale: f32,
        shift: f32,
    },
    Exp,
    Log,
    Sqrt,
    /// `1 / sqrt(x)`
    Rsqrt,
    Recip,
    Square,
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    /// ReLU's derivative: 1 where `x > 0`, else 0.
    ReluMask,
    /// LeakyReLU's derivative: 1 where `x > 0`, else the slope.
    LeakyReluMask(f32),
    /// Per-example clip factors from squared norms, `C / max(sqrt(max(x, 0)), C)` for clipping
    /// norm C: exactly 1 within the bound, no division by zero at a zero gradient. A clipped
    /// example's factor is its f64 quotient `C/sqrt(x)` rounded to f32 toward zero, so `c·sqrt(x)`
    /// never exceeds C through rounding (and the next f32 up would). NaN for a NaN or infinite
    /// input (never 1, which would let the example through, nor 0, which would drop it silently).
    /// One pass instead of seven ops.
    ClipFactor(f32),
}

/// Elementwise maps of two tensors, broadcasting numpy-style (dims aligned on the right, each
/// either equal or 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// Binary cross-entropy of logits `a` against targets `b`, per element:
    /// `max(a, 0) - a·b + log(1 + exp(-|a|))` (stable for any `a`).
    BceWithLogits,
    /// The gradient `a` of a leaky ReLU (slope 0: a ReLU) passed back through it at its input `b`:
    /// `a` where `b > 0`, else `slope·a`. One op where a mask and a product took two, with the
    /// same values (`a·1` and `a·slope`).
    LeakyReluGrad(f32),
    /// The gradient `a` passed back through tanh at its output `b`: `a·(1 − b²)`, with `b²`
    /// rounded first (the values of the square, affine map and product it replaces).
    TanhGrad,
    /// The gradient `a` passed back through the logistic sigmoid at its output `b`: `a·(b·(1 − b))`.
    SigmoidGrad,
}

/// Geometry of a grouped 2-D convolution, derived and checked by `ops`.
/// Input `[G, B, C, H, W]`, weight `[G, O, C, KH, KW]`, output `[G, B, O, HO, WO]` with
/// `HO = (H + 2·padding − KH) / stride + 1` (floor), likewise `WO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub groups: usize,
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvGeometry {
    pub fn input_shape(&self) -> [usize; 5] {
        [self.groups, self.batch, self.in_channels, self.in_h, self.in_w]
    }
    pub fn weight_shape(&self) -> [usize; 5] {
        [self.groups, self.out_channels, self.in_channels, self.kernel_h, self.kernel_w]
    }
    pub fn output_shape(&self) -> [usize; 5] {
        [self.groups, self.batch, self.out_channels, self.out_h, self.out_w]
    }
}

/// Grouped matrix product `C[g] = op(A[g]) · op(B[g])`, `op` an optional transpose.
/// `A` is `[G, M, K]` (or `[G, K, M]` when `trans_a`), `B` is `[G, K, N]` (or `[G, N, K]`), `C` is `[G, M, N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulGeometry {
    pub groups: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// SGD with momentum and weight decay, PyTorch's update rule:
/// `g ← g + wd·p; buf ← momentum·buf + (1 − dampening)·g; p ← p − lr·(nesterov ? g + momentum·buf : buf)`
/// (with no momentum, `p ← p − lr·g`). The buffer starts at zero, so with dampening ≠ 0 the first
/// step differs from PyTorch, which starts the buffer at `g`; with dampening 0 they agree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Adam, PyTorch's update rule with bias correction at step `t` (1-based):
/// `m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − lr·(m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + ε)`,
/// with `g ← g + wd·p` first when `weight_decay > 0` (L2, not decoupled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// What a public draw (`ops::public_draws`) puts in each member's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicDraw {
    /// Rows of `classes` values, one-hot at the row's class (`uniform_class_at` of the row).
    OneHot { classes: u32 },
    /// Each element a class in `0..classes` (`uniform_class_at` of the element), as a float.
    Class { classes: u32 },
    /// Each element a uniform in [0, 1) (`uniform_unit_at` of the element).
    Unit,
    /// Each element a standard normal (`standard_normal_at` of the element, Philox): latent codes.
    Normal,
}

/// How `sanitize_rows` bounds each row's norm by `clip`: `AtMost` clips (rows within the bound
/// pass unchanged, the private sanitiser), `Exactly` rescales every row to norm `clip` (GS-WGAN's
/// non-private control, σ = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowNorm {
    AtMost,
    Exactly,
}

/// DP-SGD's noise on a summed clipped gradient: the gradient is `(sum + std·z) / divisor`, z the
/// standard normals `key` assigns (as `Backend::add_gaussian_noise_and_divide` computes it).
#[derive(Clone, Copy, Debug)]
pub struct GradientNoise {
    pub std: f32,
    pub divisor: f32,
    pub key: NoiseKey,
}

/// One power iteration of spectral norm (`Backend::power_iteration`), per group: the new `u`
/// `[G, O]`, `v` `[G, I]` and `σ = uᵀ W v` `[G]`, the estimate `W` is divided by.
#[derive(Clone, Debug)]
pub struct PowerIteration {
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: Tensor,
}

/// Where one layer of [`Backend::power_iterations`] reads u from.
pub enum PowerIterationInput<'a> {
    /// u `[G, O]`, read only.
    U(&'a Tensor),
    /// A spectral norm's state, u `[G, O]` and v `[G, I]`: u read from it, u' and v also written
    /// back into it, in place. The returned u' and v are the step's own tensors, for a tape to keep
    /// while the state moves on; the state itself is never replaced, so a step frees nothing an
    /// earlier step made (which a CUDA graph capture of the step would refuse).
    State { u: &'a mut Tensor, v: &'a mut Tensor },
}

/// One layer of [`Backend::power_iterations`]: its weight viewed `[G, O, I]` and its u.
pub struct PowerIterationIo<'a> {
    pub w: &'a Tensor,
    pub input: PowerIterationInput<'a>,
}

/// One tensor's operands of a multi-tensor Adam step: the parameter, its gradient and moments.
pub struct AdamTensors<'a> {
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
}

/// One tensor of a multi-tensor noised update ([`ops::noised_sgd_steps`]): its parameter, summed
/// clipped gradient and noise.
pub struct NoisedTensors<'a> {
    pub param: &'a mut Tensor,
    pub sum: &'a Tensor,
    pub noise: &'a GradientNoise,
}

/// One tensor of [`ops::noised_adam_steps`]: [`NoisedTensors`]' and Adam's moments.
pub struct NoisedAdamTensors<'a> {
    pub param: &'a mut Tensor,
    pub sum: &'a Tensor,
    pub noise: &'a GradientNoise,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
}

/// What every backend provides. Shapes are validated by `ops` before a call; implementations
/// allocate their outputs on their own device.
pub trait Backend {
    fn name(&self) -> String;

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor>;
    /// `out_shape` is the broadcast shape of `a` and `b`.
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor>;
    /// `x` repeated along the dims where `shape` is larger (x's dims equal or 1, aligned on the
    /// right): each value copied unchanged.
    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// Sum over the broadcast dims of `x` down to `shape` (same rank, each dim equal or 1).
    fn sum_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// `sum_to` of `x`'s squares, in one pass (per-example squared norms).
    fn sum_squares_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// `sum_to` of `a ⊙ b` (equal shapes), in one pass: a product and its sum, as in the
    /// projection of a conditional critic or the dot product of a gradient with a weight.
    fn sum_products_to(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor>;

    /// `op(A)·op(B)` per group, plus `bias` `[G, N]` per column when given (a linear layer, A·Bᵀ;
    /// backends may refuse a bias with other transposes).
    fn matmul(&self, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, geom: &MatmulGeometry) -> Result<Tensor>;

    /// `conv2d(x, w)`, plus `bias` `[G, O]` per output channel when given (added to each
    /// finished sum: the values of a separate add, without its launch).
    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, geom: &ConvGeometry) -> Result<Tensor>;
    /// `dx` of `conv2d` from `dy`; also conv-transpose2d's forward.
    fn conv2d_input_grad(&self, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor>;
    /// `dw` of `conv2d` from the input `x` and `dy`.
    fn conv2d_weight_grad(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor>;

    /// For each 2×2 window of `x` (`[.., H, W]`, floor), the value of `v` at the window's argmax
    /// in `x` (the first maximum in row-major order; a NaN wins over numbers, the last NaN over an
    /// earlier one, as in PyTorch). `max_pool2x2(x)` is `gather(x, x)`.
    fn max_pool2x2_gather(&self, x: &Tensor, v: &Tensor) -> Result<Tensor>;
    /// The adjoint of `gather`: `dy` (pooled shape) routed to each window's argmax in `x`, zeros elsewhere.
    fn max_pool2x2_scatter(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor>;
    /// Nearest-neighbour ×2: `[.., H, W]` → `[.., 2H, 2W]`.
    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor>;
    /// Sum of each 2×2 window, `[.., 2H, 2W]` → `[.., H, W]`: the adjoint of the upsample.
    fn sum_pool2x2(&self, x: &Tensor) -> Result<Tensor>;

    /// Elements `start..start + len` along `axis`.
    fn narrow(&self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor>;
    /// Zeros added before and after along `axis`: the adjoint of `narrow`.
    fn pad(&self, x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor>;
    /// Concatenation along `axis`; all other dims equal.
    fn concat(&self, xs: &[&Tensor], axis: usize) -> Result<Tensor>;
    /// Rows `indices` of `table` (`[R, ...]`, every index below R), in that order: `[n, ...]`.
    /// A training set kept on the device gives each batch this way, so a step uploads its record
    /// indices instead of the records.
    fn gather_rows(&self, table: &Tensor, indices: &[u32]) -> Result<Tensor>;

    /// `log_softmax` over the last axis.
    fn log_softmax(&self, x: &Tensor) -> Result<Tensor>;

    /// One power iteration of spectral norm for each layer `(w [G, O, I], u [G, O])`:
    /// `v = normalize(wᵀu)`, `u' = normalize(w v)`, `normalize(x) = x / max(‖x‖, 1e-12)`, and the
    /// estimate `σ = u'ᵀ w v` from the `w v` just computed, also written into a layer's state when
    /// it has one (see [`PowerIterationInput`]). No gradient flows through it. The layers are
    /// independent: a model's are batched into the same launches.
    fn power_iterations(&self, layers: &mut [PowerIterationIo<'_>]) -> Result<Vec<PowerIteration>>;
    /// Pixel norm of `x` `[N, C, P]` over its C channels: `inv = 1/sqrt(Σ_c x²/C + eps)` per
    /// (n, p) and `y = x·inv`; returns `(y [N, C, P], inv [N, P])`.
    fn pixel_norm(&self, x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)>;
    /// The gradient of `pixel_norm` from its input, its `inv` and `dy`:
    /// `dx_c = inv·dy_c − x_c·inv³·(Σ_c x·dy)/C`.
    fn pixel_norm_backward(&self, x: &Tensor, inv: &Tensor, dy: &Tensor) -> Result<Tensor>;
    /// The gradient of spectral norm's `W = W̄/σ`, `σ = uᵀW̄v` with `u` `[G, O]` and `v` `[G, I]`
    /// held constant: `dW̄ = (dW − c·u vᵀ)/σ` per group for `dW` `[G, O, I]`, given
    /// `c = ⟨dW, W⟩` `[G]` and `σ` `[G]`.
    fn spectral_divide_backward(&self, dw: &Tensor, c: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor>;

    /// In-place SGD update of `param` from `grad`; `momentum_buf` is required when momentum ≠ 0.
    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, hp: &SgdParams) -> Result<()>;
    /// In-place Adam update at step `t` (1-based).
    fn adam_step(&self, param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, t: u64, hp: &AdamParams) -> Result<()>;
    /// In place, `ema ← decay·ema + (1 − decay)·x` (each product and the sum rounded).
    fn ema_update(&self, ema: &mut Tensor, x: &Tensor, decay: f32) -> Result<()>;
    /// `adam_step` of every tensor of a model in one pass (a GPU takes up to 32 per launch), with
    /// the same values tensor by tensor.
    /// `sgd_step` without momentum of every `(param, grad)` pair in one op, the same values pair by pair.
    fn sgd_steps(&self, pairs: &mut [(&mut Tensor, &Tensor)], hp: &SgdParams) -> Result<()>;
    fn adam_steps(&self, tensors: &mut [AdamTensors<'_>], t: u64, hp: &AdamParams) -> Result<()>;
    /// `ema_update` of every `(ema, x)` pair in one pass (up to 32 per launch on a GPU).
    fn ema_updates(&self, pairs: &mut [(&mut Tensor, &Tensor)], decay: f32) -> Result<()>;

    /// In place, `x[e] ← x[e] + std·z[e]` with `z[e]` the standard normal that `key` assigns to
    /// element e (`dp::noise::standard_normal_at`): the same values on every backend.
    fn add_gaussian_noise(&self, x: &mut Tensor, std: f32, key: &NoiseKey) -> Result<()>;
    /// Overwrites every element of `out` (f32), `keys.len()` equal blocks, block m with `draw` of
    /// `keys[m]` (Philox keys at one tensor index and step; ops has checked the keys and sizes).
    fn public_draws(&self, out: &mut Tensor, draw: PublicDraw, keys: &[NoiseKey]) -> Result<()>;
    /// GS-WGAN's sanitiser over the rows of `g` (its last axis):
    /// `ĝᵢ = gᵢ·min(1, clip/(‖gᵢ‖ + 1e-10)) + noise_std·zᵢ` with fresh noise per element from `key`
    /// (`RowNorm::Exactly` drops the `min`; see `cpu::sanitize_rows` for the rounding that keeps
    /// the clip bound).
    fn sanitize_rows(&self, g: &Tensor, clip: f32, rows: RowNorm, noise_std: f32, key: &NoiseKey) -> Result<Tensor>;
    /// Each example's squared norm of `conv2d_weight_grad(x, dy)` restricted to that example,
    /// `[G, B]`, without materialising the per-example gradients (see `cpu::conv2d_weight_grad_sq_norms`).
    fn conv2d_weight_grad_sq_norms(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor>;
    /// In place, `x[e] ← (x[e] + std·z[e]) / divisor`: `add_gaussian_noise` and the division by a
    /// scalar in one pass, with the same values as the two (see `cpu::add_gaussian_noise_and_divide`).
    fn add_gaussian_noise_and_divide(&self, x: &mut Tensor, std: f32, divisor: f32, key: &NoiseKey) -> Result<()>;
    /// In place, plain SGD (no momentum) of `param` with the DP-SGD gradient that `noise` makes of
    /// `sum`, in one pass that never writes the gradient: the values of
    /// `add_gaussian_noise_and_divide` followed by `sgd_step`, bit for bit. `flag` `[1]` becomes
    /// NaN if an element of the gradient is not finite, and is left alone otherwise.
    fn noised_sgd_step(&self, param: &mut Tensor, sum: &Tensor, noise: &GradientNoise, hp: &SgdParams, flag: &mut Tensor) -> Result<()>;
    /// `noised_sgd_step` with Adam at step `t` (`adam_step`'s values, bit for bit).
    #[allow(clippy::too_many_arguments)]
    fn noised_adam_step(
        &self,
        param: &mut Tensor,
        sum: &Tensor,
        noise: &GradientNoise,
        m: &mut Tensor,
        v: &mut Tensor,
        t: u64,
        hp: &AdamParams,
        flag: &mut Tensor,
    ) -> Result<()>;
    /// `noised_sgd_step` of every tensor (one noise mode) in one op, the same values tensor by tensor.
    fn noised_sgd_steps(&self, tensors: &mut [NoisedTensors<'_>], hp: &SgdParams, flag: &mut Tensor) -> Result<()>;
    /// `noised_adam_step` of every tensor (one noise mode) in one op, the same values tensor by tensor.
    fn noised_adam_steps(&self, tensors: &mut [NoisedAdamTensors<'_>], t: u64, hp: &AdamParams, flag: &mut Tensor) -> Result<()>;
}

/// The backend that computes on `device`.
pub fn backend(device: &Device) -> &dyn Backend {
    match device {
        Device::Cpu => &cpu::Cpu,
        Device::Cuda(dev) => dev.as_ref(),
    }
}
