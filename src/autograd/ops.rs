//! The differentiable ops: each computes through `backend::ops` and records what its backward
//! rule needs.
use super::Tape;
use crate::backend::ops as raw;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;

/// What a recorded op keeps for its backward rule (only that).
#[derive(Clone)]
pub enum Saved {
    Binary {
        op: BinaryOp,
        a: Tensor,
        b: Tensor,
    },
    /// `operand` is the op's input or its output, whichever its derivative is written in (see
    /// `rules::unary_needs_output`); an affine map keeps neither.
    Unary {
        op: UnaryOp,
        operand: Option<Tensor>,
    },
    SumTo {
        x_shape: Vec<usize>,
    },
    /// `Σ x²` down to a shape: `∂/∂x = 2x·dy` broadcast back.
    SumSquaresTo {
        x: Tensor,
    },
    /// `Σ a⊙b` down to a shape: `∂/∂a = dy·b`, `∂/∂b = dy·a` (dy broadcast by the product).
    SumProductsTo {
        a: Tensor,
        b: Tensor,
    },
    BroadcastTo {
        x_shape: Vec<usize>,
    },
    Reshape {
        x_shape: Vec<usize>,
    },
    /// `op(a)·op(b)`, plus a bias `[G, N]` (the op's third input) when `bias` (a linear layer).
    Matmul {
        a: Tensor,
        b: Tensor,
        trans_a: bool,
        trans_b: bool,
        bias: bool,
    },
    /// `conv2d(x, w)`, plus a bias `[G, O]` (the op's third input) when `bias`.
    Conv2d {
        x: Tensor,
        w: Tensor,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    /// `dx = conv2d_input_grad(dy, w)` (also conv-transpose's forward).
    ConvInputGrad {
        dy: Tensor,
        w: Tensor,
        stride: usize,
        padding: usize,
    },
    /// `dw = conv2d_weight_grad(x, dy)`.
    ConvWeightGrad {
        x: Tensor,
        dy: Tensor,
        stride: usize,
        padding: usize,
    },
    /// `max_pool2x2_gather(selector, v)`: only `v` gets a gradient.
    MaxPoolGather {
        selector: Tensor,
    },
    MaxPoolScatter {
        selector: Tensor,
    },
    Upsample,
    SumPool,
    Narrow {
        axis: usize,
        start: usize,
        dim: usize,
    },
    Pad {
        axis: usize,
        before: usize,
        dim: usize,
    },
    Concat {
        axis: usize,
        sizes: Vec<usize>,
    },
    LogSoftmax {
        y: Tensor,
    },
    /// `σ = uᵀW̄v` per group with `u` `[G, O]` and `v` `[G, I]` held constant: `∂σ/∂W̄ = u vᵀ`.
    SpectralSigma {
        u: Tensor,
        v: Tensor,
        w_shape: Vec<usize>,
    },
    /// Pixel norm: `x / sqrt(mean_c x² + eps)` per position of `x` `[G, B, C, H, W]`, with the
    /// factor `inv` the gradient reuses.
    PixelNorm {
        x: Tensor,
        inv: Tensor,
        eps: f32,
    },
    /// `W = W̄/σ` with `σ` `[G]` = `uᵀW̄v` and `u`, `v` constants (spectral norm): the gradient
    /// flows into W̄ directly and through σ, in one rule.
    SpectralDivide {
        w_bar: Tensor,
        w: Tensor,
        u: Tensor,
        v: Tensor,
        sigma: Tensor,
    },
}

impl Tape {
    pub(super) fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let out = raw::binary(op, a, b)?;
        Ok(self.record(out, &[a, b], || Saved::Binary { op, a: a.clone(), b: b.clone() }))
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        let y = raw::unary(op, x)?;
        let operand = match op {
            UnaryOp::Affine { .. } => None,
            _ if super::rules::unary_needs_output(op) => Some(y.clone()),
            _ => Some(x.clone()),
        };
        Ok(self.record(y, &[x], || Saved::Unary { op, operand }))
    }

    /// Elementwise `a + b` with broadcasting.
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, a, b)
    }
    /// Per-element binary cross-entropy of `logits` against `targets` (broadcasting).
    pub fn bce_with_logits(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::BceWithLogits, logits, targets)
    }

    /// `scale · x + shift`.
    pub fn affine(&self, x: &Tensor, scale: f32, shift: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { scale, shift }, x)
    }
    pub fn scale(&self, x: &Tensor, s: f32) -> Result<Tensor> {
        self.affine(x, s, 0.0)
    }
    pub fn neg(&self, x: &Tensor) -> Result<Tensor> {
        self.affine(x, -1.0, 0.0)
    }
    pub fn exp(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Exp, x)
    }
    pub fn log(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Log, x)
    }
    pub fn sqrt(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt, x)
    }
    pub fn rsqrt(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt, x)
    }
    pub fn recip(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Recip, x)
    }
    pub fn square(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Square, x)
    }
    pub fn relu(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Relu, x)
    }
    pub fn leaky_relu(&self, x: &Tensor, slope: f32) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyRelu(slope), x)
    }
    pub fn sigmoid(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid, x)
    }
    pub fn tanh(&self, x: &Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh, x)
    }

    /// Sum down to `shape` (broadcast-compatible with `x`, right-aligned).
    pub fn sum_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let out = raw::sum_to(x, shape)?;
        Ok(self.record(out, &[x], || Saved::SumTo { x_shape: x.shape().to_vec() }))
    }

    /// `sum_to` of `x`'s squares in one op (one reduction instead of a square and a sum).
    pub fn sum_squares_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let out = raw::sum_squares_to(x, shape)?;
        Ok(self.record(out, &[x], || Saved::SumSquaresTo { x: x.clone() }))
    }

    /// `sum_to(a ⊙ b, shape)` in one op (`a`, `b` of equal shapes): one reduction instead of a
    /// product and a sum forward, and two products instead of a broadcast and two products back.
    pub fn sum_products_to(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let out = raw::sum_products_to(a, b, shape)?;
        Ok(self.record(out, &[a, b], || Saved::SumProductsTo { a: a.clone(), b: b.clone() }))
    }

    /// Sum of all elements, shape `[]`.
    pub fn sum_all(&self, x: &Tensor) -> Result<Tensor> {
        self.sum_to(x, &[])
    }

    /// Mean of all elements, shape `[]`.
    pub fn mean_all(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.numel().max(1) as f32;
        self.scale(&self.sum_all(x)?, 1.0 / n)
    }

    pub fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let out = raw::broadcast_to(x, shape)?;
        Ok(self.record(out, &[x], || Saved::BroadcastTo { x_shape: x.shape().to_vec() }))
    }

    pub fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let out = x.reshape(shape)?;
        Ok(self.record(out, &[x], || Saved::Reshape { x_shape: x.shape().to_vec() }))
    }

    /// Records `sigma` `[G]` as `uᵀW̄v` per group (`w_bar` `[G, O, ...]` viewed as `[G, O, I]`,
    /// `u` `[G, O]` and `v` `[G, I]` constants): the power iteration computes that value while it
    /// updates u (`ops::power_iteration`), and the gradient `gσ·u vᵀ` flows from here into W̄.
    pub fn spectral_sigma(&self, w_bar: &Tensor, u: &Tensor, v: &Tensor, sigma: Tensor) -> Result<Tensor> {
        check_spectral_operands("spectral_sigma", w_bar, u, v, &sigma)?;
        Ok(self.record(sigma, &[w_bar], || Saved::SpectralSigma { u: u.clone(), v: v.clone(), w_shape: w_bar.shape().to_vec() }))
    }

    /// Pixel norm over the channels of `[G, B, C, H, W]`: `x / sqrt(mean_c x² + eps)` per position.
    /// One launch forward and one for a first-order backward (`ops::pixel_norm_backward`), where
    /// the same value from elementwise ops and a sum took four and twelve.
    pub fn pixel_norm(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        let (y, inv) = raw::pixel_norm(x, eps)?;
        Ok(self.record(y, &[x], || Saved::PixelNorm { x: x.clone(), inv, eps }))
    }

    /// `W̄ / σ` per group for `sigma` `[G]` = `uᵀW̄v` computed elsewhere (the power iteration's),
    /// with `u` `[G, O]` and `v` `[G, I]` held constant: the gradient flows through σ into W̄ as in
    /// PyTorch's spectral norm. One recorded op whose first-order rule is two launches
    /// (`ops::spectral_divide_backward`), where a division and [`Tape::spectral_sigma`] took eight.
    pub fn spectral_divide(&self, w_bar: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        check_spectral_operands("spectral_divide", w_bar, u, v, sigma)?;
        let mut per_group = vec![1; w_bar.rank()];
        per_group[0] = w_bar.shape()[0];
        let w = raw::binary(BinaryOp::Div, w_bar, &sigma.reshape(&per_group)?)?;
        Ok(self.record(w.clone(), &[w_bar], || Saved::SpectralDivide {
            w_bar: w_bar.clone(),
            w,
            u: u.clone(),
            v: v.clone(),
            sigma: sigma.clone(),
        }))
    }

    /// Grouped matrix product (see `backend::MatmulGeometry`).
    pub fn matmul(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        let out = raw::matmul(a, b, trans_a, trans_b)?;
        Ok(self.record(out, &[a, b], || Saved::Matmul { a: a.clone(), b: b.clone(), trans_a, trans_b, bias: false }))
    }

    /// `x · wᵀ + bias` for `x` `[G, B, I]`, `w` `[G, O, I]`, `bias` `[G, O]` (PyTorch's layout), in
    /// one launch: the bias is added in the product's epilogue.
    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let Some(bias) = bias else { return self.matmul(x, w, false, true) };
        let out = raw::linear(x, w, bias)?;
        Ok(self.record(out, &[x, w, bias], || Saved::Matmul { a: x.clone(), b: w.clone(), trans_a: false, trans_b: true, bias: true }))
    }

    pub fn conv2d(&self, x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
        let out = raw::conv2d(x, w, stride, padding)?;
        Ok(self.record(out, &[x, w], || Saved::Conv2d { x: x.clone(), w: w.clone(), stride, padding, bias: false }))
    }

    /// `conv2d(x, w) + bias` per output channel (`bias` `[G, O]`) in one launch: the bias is added
    /// in the convolution's epilogue, where a separate broadcast add took a launch of its own.
    pub fn conv2d_bias(&self, x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
        let out = raw::conv2d_bias(x, w, bias, stride, padding)?;
        Ok(self.record(out, &[x, w, bias], || Saved::Conv2d { x: x.clone(), w: w.clone(), stride, padding, bias: true }))
    }

    /// `conv2d`'s input gradient as a differentiable op (its forward is a transposed conv).
    pub fn conv2d_input_grad(&self, dy: &Tensor, w: &Tensor, in_hw: (usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
        let out = raw::conv2d_input_grad(dy, w, in_hw, stride, padding)?;
        Ok(self.record(out, &[dy, w], || Saved::ConvInputGrad { dy: dy.clone(), w: w.clone(), stride, padding }))
    }

    pub fn conv2d_weight_grad(&self, x: &Tensor, dy: &Tensor, kernel_hw: (usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
        let out = raw::conv2d_weight_grad(x, dy, kernel_hw, stride, padding)?;
        Ok(self.record(out, &[x, dy], || Saved::ConvWeightGrad { x: x.clone(), dy: dy.clone(), stride, padding }))
    }

    /// Transposed convolution, PyTorch's weight layout `[G, C_in, C_out, KH, KW]`.
    pub fn conv_transpose2d(&self, x: &Tensor, w: &Tensor, stride: usize, padding: usize, output_padding: usize) -> Result<Tensor> {
        let out_hw = raw::conv_transpose2d_out_hw(x.shape(), w.shape(), stride, padding, output_padding)?;
        self.conv2d_input_grad(x, w, out_hw, stride, padding)
    }

    /// Adds a per-channel bias `[G, C]` to `[G, B, C, H, W]`.
    pub fn add_channel_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let s = bias.shape();
        let b = self.reshape(bias, &[s[0], 1, s[1], 1, 1])?;
        self.add(x, &b)
    }

    pub fn max_pool2x2(&self, x: &Tensor) -> Result<Tensor> {
        let out = raw::max_pool2x2(x)?;
        // The selector is x itself; it is saved as a value, so no gradient flows through the argmax.
        Ok(self.record(out, &[x], || Saved::MaxPoolGather { selector: x.clone() }))
    }

    /// `max_pool2x2`'s input gradient as a differentiable op (in `dy`).
    pub fn max_pool2x2_scatter(&self, selector: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let out = raw::max_pool2x2_scatter(selector, dy)?;
        Ok(self.record(out, &[dy], || Saved::MaxPoolScatter { selector: selector.clone() }))
    }

    pub(crate) fn max_pool2x2_gather(&self, selector: &Tensor, v: &Tensor) -> Result<Tensor> {
        let out = raw::max_pool2x2_gather(selector, v)?;
        Ok(self.record(out, &[v], || Saved::MaxPoolGather { selector: selector.clone() }))
    }

    pub fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        let out = raw::upsample_nearest2x(x)?;
        Ok(self.record(out, &[x], || Saved::Upsample))
    }

    pub fn sum_pool2x2(&self, x: &Tensor) -> Result<Tensor> {
        let out = raw::sum_pool2x2(x)?;
        Ok(self.record(out, &[x], || Saved::SumPool))
    }

    pub fn narrow(&self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let out = raw::narrow(x, axis, start, len)?;
        let dim = x.shape()[axis];
        Ok(self.record(out, &[x], || Saved::Narrow { axis, start, dim }))
    }

    pub fn pad(&self, x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor> {
        let out = raw::pad(x, axis, before, after)?;
        let dim = x.shape()[axis];
        Ok(self.record(out, &[x], || Saved::Pad { axis, before, dim }))
    }

    /// The top-left `h × w` window of `[.., H, W]`.
    pub fn crop(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let r = x.rank();
        let rows = self.narrow(x, r - 2, 0, h)?;
        self.narrow(&rows, r - 1, 0, w)
    }

    pub fn concat(&self, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
        let out = raw::concat(xs, axis)?;
        let sizes = xs.iter().map(|t| t.shape()[axis]).collect();
        Ok(self.record(out, xs, || Saved::Concat { axis, sizes }))
    }

    pub fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        let y = raw::log_softmax(x)?;
        let saved = y.clone();
        Ok(self.record(y, &[x], || Saved::LogSoftmax { y: saved }))
    }

    /// Per-row cross-entropy `−Σ_k t_k log softmax(x)_k` of `logits` `[.., K]` against target
    /// distributions (one-hot rows), shape `[..]`.
    pub fn softmax_cross_entropy(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logp = self.log_softmax(logits)?;
        let picked = self.mul(&logp, targets)?;
        let mut rows = logits.shape().to_vec();
        let last = rows.len() - 1;
        rows[last] = 1;
        let summed = self.sum_to(&picked, &rows)?;
        let per_row = self.reshape(&summed, &logits.shape()[..last])?;
        self.neg(&per_row)
    }
}

/// W̄ `[G, O, ...]` (viewed as `[G, O, I]`) with its spectral-norm vectors u `[G, O]`, v `[G, I]`
/// and σ `[G]`.
fn check_spectral_operands(op: &'static str, w_bar: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<()> {
    let s = w_bar.shape();
    crate::error::ensure_shape!(s.len() >= 3, op, "needs W̄ [G, O, ...], got {s:?}");
    let (g, rows) = (s[0], s[1]);
    let cols = w_bar.numel() / (g * rows).max(1);
    crate::error::ensure_shape!(
        u.shape() == [g, rows] && v.shape() == [g, cols] && sigma.shape() == [g],
        op,
        "u {:?}, v {:?} and σ {:?} do not fit W̄ {s:?}",
        u.shape(),
        v.shape(),
        sigma.shape()
    );
    Ok(())
}
