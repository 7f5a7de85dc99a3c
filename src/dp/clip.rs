//! Per-example gradient norms without per-example gradients, clip factors, and clipped sums.
//!
//! For every parametric layer the caller hands over its input activation `a` and the gradient `δ`
//! of the summed per-example losses `Σᵢ ℓᵢ` w.r.t. its output (the tape keeps both: the input is
//! the tensor the layer was called with, `δ` comes from `Tape::retain_grad` on its output).
//! Example i's gradient for the layer is a function of `aᵢ` and `δᵢ` alone, so:
//! * linear `y = a·Wᵀ + b`: `‖∂W‖² = ‖aᵢ‖²·‖δᵢ‖²` and `‖∂b‖² = ‖δᵢ‖²` (the outer-product identity);
//! * conv: `‖∂W‖²` from example i's own weight gradient, reduced to its squared norm, and
//!   `‖∂b‖² = Σ_c (Σ_p δᵢ,c,p)²`.
//!
//! Norms are summed over layers, clip factors `cᵢ = min(1, C/‖gᵢ‖)` formed where the tensors live,
//! and the clipped sum `Σᵢ cᵢ gᵢ` of each layer is one weighted weight-gradient product
//! (`Δᵀ·diag(c)·A` for a linear layer). Shapes follow the model groups: activations `[G, B, ...]`,
//! norms and factors `[G, B]`.
use crate::backend::ops;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{ensure_shape, Error, Result};
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
        let (g, b) = self.group_batch()?;
        let (a, delta) = (self.input(), self.output_grad());
        let weight = match self {
            LayerGrad::Linear { .. } => ops::binary(BinaryOp::Mul, &row_sq_norms(a)?, &row_sq_norms(delta)?)?,
            LayerGrad::Conv2d { kernel, stride, padding, .. } => {
                per_example(g, b, |i| ops::conv2d_weight_grad(&example(a, i)?, &example(delta, i)?, *kernel, *stride, *padding))?
            }
            LayerGrad::ConvTranspose2d { kernel, stride, padding, .. } => {
                // y = conv2d_input_grad(a, W), so ∂W = conv2d_weight_grad(δ, a) (roles swapped).
                per_example(g, b, |i| ops::conv2d_weight_grad(&example(delta, i)?, &example(a, i)?, *kernel, *stride, *padding))?
            }
        };
        if !self.has_bias() {
            return Ok(weight);
        }
        let bias_grads = per_example_bias_grads(delta)?;
        ops::binary(BinaryOp::Add, &weight, &row_sq_norms(&bias_grads)?)
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

/// Squared L2 norm of each `[G, B, ...]` example, as `[G, B]`.
fn row_sq_norms(t: &Tensor) -> Result<Tensor> {
    let (g, b) = (t.shape()[0], t.shape()[1]);
    let flat = t.reshape(&[g, b, t.numel() / (g * b).max(1)])?;
    ops::sum_to(&ops::unary(UnaryOp::Square, &flat)?, &[g, b, 1])?.reshape(&[g, b])
}

/// Example i of `[G, B, ...]`, as `[G, 1, ...]`.
fn example(t: &Tensor, i: usize) -> Result<Tensor> {
    ops::narrow(t, 1, i, 1)
}

/// `[G, B]` of the squared norms of `grad_of(i)` (each `[G, ...]`), one example at a time: the
/// plain reference path; a fused kernel never materialises these per-example gradients.
fn per_example(g: usize, b: usize, grad_of: impl Fn(usize) -> Result<Tensor>) -> Result<Tensor> {
    let columns = (0..b)
        .map(|i| {
            let grad = grad_of(i)?;
            let flat = grad.reshape(&[g, 1, grad.numel() / g.max(1)])?;
            ops::sum_to(&ops::unary(UnaryOp::Square, &flat)?, &[g, 1, 1])?.reshape(&[g, 1])
        })
        .collect::<Result<Vec<_>>>()?;
    if columns.is_empty() {
        return Err(Error::Invalid("per-example norms of an empty batch".into()));
    }
    ops::concat(&columns.iter().collect::<Vec<_>>(), 1)
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

/// Total squared norm of each example's gradient over all `layers`, `[G, B]`.
pub fn per_example_sq_norms(layers: &[LayerGrad]) -> Result<Tensor> {
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
/// gradient, and `cᵢ‖gᵢ‖ = C` up to the rounding of one division for a clipped one.
pub fn clip_factors(sq_norms: &Tensor, clip: f32) -> Result<Tensor> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(Error::Invalid(format!("the clipping norm must be positive and finite, got {clip}")));
    }
    let norms = ops::unary(UnaryOp::Sqrt, sq_norms)?;
    // max(‖g‖, C) = relu(‖g‖ − C) + C
    let excess = ops::unary(UnaryOp::Relu, &ops::unary(UnaryOp::Affine { scale: 1.0, shift: -clip }, &norms)?)?;
    let bounded = ops::unary(UnaryOp::Affine { scale: 1.0, shift: clip }, &excess)?;
    ops::binary(BinaryOp::Div, &ops::scalar_like(&bounded, clip as f64)?, &bounded)
}
