//! Per-example gradient norms without per-example gradients, clip factors, and clipped sums.
//!
//! For every parametric layer the caller hands over its input activation `a` and the gradient `δ`
//! of the summed per-example losses `Σᵢ ℓᵢ` w.r.t. its output (the tape keeps both: the input is
//! the tensor the layer was called with, `δ` comes from `Tape::retain_grad` on its output).
//! Example i's gradient for the layer is a function of `aᵢ` and `δᵢ` alone, so:
//! * linear `y = a·Wᵀ + b`: `‖∂W‖² = ‖aᵢ‖²·‖δᵢ‖²` and `‖∂b‖² = ‖δᵢ‖²` (the outer-product identity);
//! * conv: `‖∂W‖²` from example i's own weight gradient, computed tile by tile and reduced to its
//!   squared norm inside one op (`ops::conv2d_weight_grad_sq_norms`, never written out), and
//!   `‖∂b‖² = Σ_c (Σ_p δᵢ,c,p)²`.
//!
//! Norms are summed over layers, clip factors `cᵢ = min(1, C/‖gᵢ‖)` formed where the tensors live,
//! and the clipped sum `Σᵢ cᵢ gᵢ` of each layer is one weighted weight-gradient product
//! (`Δᵀ·diag(c)·A` for a linear layer). Shapes follow the model groups: activations `[G, B, ...]`,
//! norms and factors `[G, B]`.
use crate::backend::ops;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{ensure_shape, Error, Result};
use crate::profile;
use crate::tensor::Tensor;

/// One parametric layer's view for per-example clipping.
#[derive(Clone, Debug)]
pub enum LayerGrad {
    /// `y = a·Wᵀ (+ b)` with `a` `[G, B, I]` and `δ` `[G, B, O]`. An embedding is this layer on
    /// one-hot rows.
    Linear { input: Tensor, output_grad: Tensor, bias: bool },
    /// `y = conv2d(a, W) (+ b)` with `a` `[G, B, C, H, W]` and `δ` `[G, B, O, HO, WO]`.
    Conv2d { input: Tensor, output_grad: Tensor, kernel: (usize, usize), stride: usize, padding: usize, bias: bool },
    /// `y = conv_transpose2d(a, W) (+ b)`, W in PyTorch's `[G, C_in, C_out, KH, KW]` layout, `a`
    /// `[G, B, C_in, H, W]`, `δ` `[G, B, C_out, HO, WO]`.
    ConvTranspose2d { input: Tensor, output_grad: Tensor, kernel: (usize, usize), stride: usize, padding: usize, bias: bool },
}

/// A layer's clipped, summed gradients: the weight's, and the bias's if the layer has one.
#[derive(Clone, Debug)]
pub struct ClippedGrads {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LayerGrad {
    fn input(&self) -> &Tensor {
        match self {
            LayerGrad::Linear { input, .. } | LayerGrad::Conv2d { input, .. } | LayerGrad::ConvTranspose2d { input, .. } => input,
        }
    }
    fn output_grad(&self) -> &Tensor {
        match self {
            LayerGrad::Linear { output_grad, .. }
            | LayerGrad::Conv2d { output_grad, .. }
            | LayerGrad::ConvTranspose2d { output_grad, .. } => output_grad,
        }
    }
    fn has_bias(&self) -> bool {
        match self {
            LayerGrad::Linear { bias, .. } | LayerGrad::Conv2d { bias, .. } | LayerGrad::ConvTranspose2d { bias, .. } => *bias,
        }
    }

    /// `[G, B]` of the input and the output gradient, checked to agree.
    fn group_batch(&self) -> Result<(usize, usize)> {
        let (a, d) = (self.input().shape(), self.output_grad().shape());
        let rank = if matches!(self, LayerGrad::Linear { .. }) { 3 } else { 5 };
        ensure_shape!(
            a.len() == rank && d.len() == rank,
            "per_example_sq_norms",
            "layer input {a:?} and output gradient {d:?} must both have rank {rank}"
        );
        ensure_shape!(a[..2] == d[..2], "per_example_sq_norms", "input {a:?} and output gradient {d:?} differ in [G, B]");
        Ok((a[0], a[1]))
    }

    /// Each example's squared gradient norm for this layer's weight and bias, `[G, B]`.
    pub fn per_example_sq_norms(&self) -> Result<Tensor> {
        if let LayerGrad::Linear { input, output_grad, bias } = self {
            // ‖aᵢ‖²‖δᵢ‖² + ‖δᵢ‖² = (‖aᵢ‖² + 1)‖δᵢ‖²: ‖δᵢ‖² once for the weight and the bias.
            let (g, b) = self.group_batch()?;
            let delta_sq = row_sq_norms(output_grad)?;
            let input_sq = row_sq_norms(input)?;
            let factor = if *bias { ops::unary(UnaryOp::Affine { scale: 1.0, shift: 1.0 }, &input_sq)? } else { input_sq };
            let norms = ops::binary(BinaryOp::Mul, &factor, &delta_sq)?;
            ensure_shape!(norms.shape() == [g, b], "per_example_sq_norms", "norms {:?} for [G, B] = [{g}, {b}]", norms.shape());
            return Ok(norms);
        }
        let weight = self.weight_sq_norms()?;
        if !self.has_bias() {
            return Ok(weight);
        }
        let bias_grads = per_example_bias_grads(self.output_grad())?;
        ops::binary(BinaryOp::Add, &weight, &row_sq_norms(&bias_grads)?)
    }

    /// Each example's squared gradient norm for the weight alone, `[G, B]`. A conv layer's comes
    /// from the fused `conv2d_weight_grad_sq_norms`, which never forms the per-example gradients.
    fn weight_sq_norms(&self) -> Result<Tensor> {
        let (g, b) = self.group_batch()?;
        let (a, delta) = (self.input(), self.output_grad());
        let norms = match self {
            LayerGrad::Linear { .. } => ops::binary(BinaryOp::Mul, &row_sq_norms(a)?, &row_sq_norms(delta)?)?,
            LayerGrad::Conv2d { kernel, stride, padding, .. } => ops::conv2d_weight_grad_sq_norms(a, delta, *kernel, *stride, *padding)?,
            LayerGrad::ConvTranspose2d { kernel, stride, padding, .. } => {
                // y = conv2d_input_grad(a, W), so ∂W = conv2d_weight_grad(δ, a) (roles swapped).
                ops::conv2d_weight_grad_sq_norms(delta, a, *kernel, *stride, *padding)?
            }
        };
        ensure_shape!(norms.shape() == [g, b], "per_example_sq_norms", "norms {:?} for [G, B] = [{g}, {b}]", norms.shape());
        Ok(norms)
    }

    /// The layer's forward without bias, `a` through `weight`: `a·Wᵀ` or `conv2d(a, W)`.
    fn forward(&self, a: &Tensor, weight: &Tensor) -> Result<Tensor> {
        match self {
            LayerGrad::Linear { .. } => ops::matmul(a, weight, false, true),
            LayerGrad::Conv2d { stride, padding, .. } => ops::conv2d(a, weight, *stride, *padding),
            LayerGrad::ConvTranspose2d { stride, padding, kernel, .. } => {
                let out = self.output_grad().shape();
                ensure_shape!(
                    weight.shape()[3..] == [kernel.0, kernel.1],
                    "spectral norm",
                    "weight {:?} does not match kernel {kernel:?}",
                    weight.shape()
                );
                ops::conv2d_input_grad(a, weight, (out[3], out[4]), *stride, *padding)
            }
        }
    }

    /// `Σᵢ cᵢ gᵢ` for this layer, with `factors` `[G, B]`: one weighted weight-gradient product.
    pub fn clipped_sum(&self, factors: &Tensor) -> Result<ClippedGrads> {
        let (g, b) = self.group_batch()?;
        ensure_shape!(factors.shape() == [g, b], "clipped_sum", "factors {:?} must be [G, B] = [{g}, {b}]", factors.shape());
        let (a, delta) = (self.input(), self.output_grad());
        let mut scale_shape = vec![1; delta.rank()];
        scale_shape[..2].copy_from_slice(&[g, b]);
        let weighted = ops::binary(BinaryOp::Mul, delta, &factors.reshape(&scale_shape)?)?;
        let weight = match self {
            // ∂W = Σᵢ cᵢ δᵢ aᵢᵀ = (diag(c)Δ)ᵀ A
            LayerGrad::Linear { .. } => ops::matmul(&weighted, a, true, false)?,
            LayerGrad::Conv2d { kernel, stride, padding, .. } => ops::conv2d_weight_grad(a, &weighted, *kernel, *stride, *padding)?,
            LayerGrad::ConvTranspose2d { kernel, stride, padding, .. } => {
                ops::conv2d_weight_grad(&weighted, a, *kernel, *stride, *padding)?
            }
        };
        let bias = if self.has_bias() {
            let per_example = per_example_bias_grads(&weighted)?;
            let s = per_example.shape().to_vec();
            Some(ops::sum_to(&per_example, &[s[0], 1, s[2]])?.reshape(&[s[0], s[2]])?)
        } else {
            None
        };
        Ok(ClippedGrads { weight, bias })
    }
}

/// A spectrally normalised layer: the layer ran with `W = W̄/σ`, `σ = uᵀW̄v` per group, `u` `[G, O]`
/// and `v` `[G, I]` held constant (as the power iteration leaves them). With `Gᵢ` example i's
/// gradient for `W` (what `layer` describes) and `sᵢ = ⟨Gᵢ, W⟩`, its gradient for `W̄` is
/// `(Gᵢ − sᵢ·u vᵀ)/σ`, so `‖∂W̄‖² = (‖Gᵢ‖² − 2sᵢtᵢ + sᵢ²‖u‖²‖v‖²)/σ²` with `tᵢ = uᵀGᵢv`. Both
/// `sᵢ = ⟨δᵢ, layer(aᵢ, W)⟩` and `tᵢ = ⟨uᵀδᵢ, layer(aᵢ, v)⟩` come without per-example gradients.
#[derive(Clone, Debug)]
pub struct SpectralLayerGrad {
    pub layer: LayerGrad,
    /// The effective weight `W = W̄/σ` the layer ran with, `[G, O, ...]`.
    pub weight: Tensor,
    pub u: Tensor,
    pub v: Tensor,
    /// `σ = uᵀW̄v`, `[G]`.
    pub sigma: Tensor,
}

impl SpectralLayerGrad {
    fn shapes(&self) -> Result<(usize, usize, usize)> {
        let (g, _) = self.layer.group_batch()?;
        let w = self.weight.shape();
        ensure_shape!(w.len() >= 3 && w[0] == g, "spectral norm", "weight {w:?} must be [G = {g}, O, ...]");
        let dy = self.layer.output_grad().shape();
        ensure_shape!(dy.len() >= 3, "spectral norm", "output gradient {dy:?} must be [G, B, O, ...]");
        let (o, i) = (w[1], self.weight.numel() / (g * w[1]).max(1));
        ensure_shape!(
            self.u.shape() == [g, o] && self.v.shape() == [g, i] && self.sigma.shape() == [g],
            "spectral norm",
            "u {:?}, v {:?}, σ {:?} do not fit weight {w:?}",
            self.u.shape(),
            self.v.shape(),
            self.sigma.shape()
        );
        if matches!(self.layer, LayerGrad::ConvTranspose2d { .. }) {
            return Err(Error::Invalid(
                "spectral norm of a transposed conv is not supported (no model of docs/algorithms.md uses it)".into(),
            ));
        }
        Ok((g, o, i))
    }

    /// `(sᵢ, tᵢ)` as `[G, B]` each.
    fn projections(&self) -> Result<(Tensor, Tensor)> {
        let (g, o, i) = self.shapes()?;
        let (a, delta) = (self.layer.input(), self.layer.output_grad());
        let s = per_example_dot(delta, &self.layer.forward(a, &self.weight)?)?;
        // uᵀδᵢ: δ `[G, B, O, ...]` contracted with u over the output channels (axis 2, which
        // shapes() checked exists), `[G, B, 1, ...]`.
        let mut u_shape = vec![1; delta.rank()];
        u_shape[0] = g;
        u_shape[2] = o;
        let u_delta_full = ops::binary(BinaryOp::Mul, delta, &self.u.reshape(&u_shape)?)?;
        let mut summed = delta.shape().to_vec();
        summed[2] = 1;
        let u_delta = ops::sum_to(&u_delta_full, &summed)?;
        // layer(aᵢ, v): v as a one-output weight `[G, 1, ...]`.
        let mut v_shape = self.weight.shape().to_vec();
        v_shape[1] = 1;
        debug_assert_eq!(v_shape.iter().product::<usize>(), g * i);
        let a_v = self.layer.forward(a, &self.v.reshape(&v_shape)?)?;
        let t = per_example_dot(&u_delta, &a_v)?;
        Ok((s, t))
    }

    fn sigma_per_example(&self, b: usize) -> Result<Tensor> {
        let g = self.sigma.shape()[0];
        ops::broadcast_to(&self.sigma.reshape(&[g, 1])?, &[g, b])
    }

    /// Each example's squared gradient norm for `W̄` and the bias, `[G, B]`.
    pub fn per_example_sq_norms(&self) -> Result<Tensor> {
        let (g, b) = self.layer.group_batch()?;
        let (s, t) = self.projections()?;
        // ‖u‖²‖v‖², 1 unless the power iteration met a zero vector.
        let uv = ops::binary(
            BinaryOp::Mul,
            &row_sq_norms(&self.u.reshape(&[g, 1, self.u.numel() / g])?)?,
            &row_sq_norms(&self.v.reshape(&[g, 1, self.v.numel() / g])?)?,
        )?;
        let g_sq = self.layer.weight_sq_norms()?;
        let cross = ops::unary(UnaryOp::Affine { scale: -2.0, shift: 0.0 }, &ops::binary(BinaryOp::Mul, &s, &t)?)?;
        let s_sq = ops::binary(BinaryOp::Mul, &ops::unary(UnaryOp::Square, &s)?, &uv)?;
        let numerator = ops::binary(BinaryOp::Add, &ops::binary(BinaryOp::Add, &g_sq, &cross)?, &s_sq)?;
        let sigma_sq = ops::unary(UnaryOp::Square, &self.sigma_per_example(b)?)?;
        let weight = ops::binary(BinaryOp::Div, &numerator, &sigma_sq)?;
        if !self.layer.has_bias() {
            return Ok(weight);
        }
        ops::binary(BinaryOp::Add, &weight, &row_sq_norms(&per_example_bias_grads(self.layer.output_grad())?)?)
    }

    /// `Σᵢ cᵢ ∂ℓᵢ/∂W̄ = (Σᵢ cᵢGᵢ − (Σᵢ cᵢsᵢ)·u vᵀ)/σ`, and the bias's clipped sum.
    pub fn clipped_sum(&self, factors: &Tensor) -> Result<ClippedGrads> {
        let (g, o, i) = self.shapes()?;
        let inner = self.layer.clipped_sum(factors)?;
        let (s, _) = self.projections()?;
        let weighted_s = ops::sum_products_to(&s, &factors.reshape(s.shape())?, &[g, 1])?;
        // The gradient of W = W̄/σ applied to the clipped sum, in one pass.
        let w = ops::spectral_divide_backward(
            &inner.weight.reshape(&[g, o, i])?,
            &weighted_s.reshape(&[g])?,
            &self.u.reshape(&[g, o])?,
            &self.v.reshape(&[g, i])?,
            &self.sigma.reshape(&[g])?,
        )?;
        Ok(ClippedGrads { weight: w.reshape(inner.weight.shape())?, bias: inner.bias })
    }
}

/// `Σ` over each example's elements of `x ⊙ y` (equal shapes), `[G, B, ...]` → `[G, B]`, in one pass.
fn per_example_dot(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (g, b) = (x.shape()[0], x.shape()[1]);
    let flat = |t: &Tensor| t.reshape(&[g, b, t.numel() / (g * b).max(1)]);
    ops::sum_products_to(&flat(x)?, &flat(y)?, &[g, b, 1])?.reshape(&[g, b])
}

/// Squared L2 norm of each `[G, B, ...]` example, as `[G, B]` (one fused pass).
fn row_sq_norms(t: &Tensor) -> Result<Tensor> {
    let (g, b) = (t.shape()[0], t.shape()[1]);
    let flat = t.reshape(&[g, b, t.numel() / (g * b).max(1)])?;
    ops::sum_squares_to(&flat, &[g, b, 1])?.reshape(&[g, b])
}

/// Each example's bias gradient `[G, B, O]`: `δ` summed over its spatial positions.
fn per_example_bias_grads(delta: &Tensor) -> Result<Tensor> {
    let s = delta.shape();
    if s.len() == 3 {
        return Ok(delta.clone());
    }
    let flat = delta.reshape(&[s[0], s[1], s[2], s[3] * s[4]])?;
    ops::sum_to(&flat, &[s[0], s[1], s[2], 1])?.reshape(&[s[0], s[1], s[2]])
}

/// What per-example clipping needs of a layer: each example's squared gradient norm, and the
/// clipped sum of its gradients.
pub trait PerExampleGrad {
    fn per_example_sq_norms(&self) -> Result<Tensor>;
    fn clipped_sum(&self, factors: &Tensor) -> Result<ClippedGrads>;
}

impl PerExampleGrad for LayerGrad {
    fn per_example_sq_norms(&self) -> Result<Tensor> {
        LayerGrad::per_example_sq_norms(self)
    }
    fn clipped_sum(&self, factors: &Tensor) -> Result<ClippedGrads> {
        LayerGrad::clipped_sum(self, factors)
    }
}

impl PerExampleGrad for SpectralLayerGrad {
    fn per_example_sq_norms(&self) -> Result<Tensor> {
        SpectralLayerGrad::per_example_sq_norms(self)
    }
    fn clipped_sum(&self, factors: &Tensor) -> Result<ClippedGrads> {
        SpectralLayerGrad::clipped_sum(self, factors)
    }
}

/// Total squared norm of each example's gradient over all `layers`, `[G, B]`.
pub fn per_example_sq_norms<L: PerExampleGrad + ?Sized>(layers: &[&L]) -> Result<Tensor> {
    let _range = profile::range("per_example_sq_norms");
    let mut total: Option<Tensor> = None;
    for layer in layers {
        let n = layer.per_example_sq_norms()?;
        total = Some(match total {
            None => n,
            Some(t) => ops::binary(BinaryOp::Add, &t, &n)?,
        });
    }
    total.ok_or_else(|| Error::Invalid("per-example norms of no layers".into()))
}

/// `cᵢ = min(1, C/‖gᵢ‖)` from squared norms `[G, B]`, computed where the norms live, as
/// `C / max(‖gᵢ‖, C)`: exactly 1 for an example within the bound, no division by zero for a zero
/// gradient, and for a clipped one the f64 quotient rounded toward zero, so that `cᵢ‖gᵢ‖ ≤ C`
/// whatever the rounding (the norm as computed; the noise std is rounded up likewise). A NaN or
/// infinite norm gives a NaN factor, never 1 (the max would drop a NaN) nor 0 (C/∞, an example
/// dropped silently): its clipped sum, and so the whole update, is NaN, which the run refuses.
pub fn clip_factors(sq_norms: &Tensor, clip: f32) -> Result<Tensor> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(Error::Invalid(format!("the clipping norm must be positive and finite, got {clip}")));
    }
    let _range = profile::range("clip_factors");
    ops::unary(UnaryOp::ClipFactor(clip), sq_norms)
}
