//! Backward rules, one per recorded op, written with the tape's own ops so that a backward pass
//! recorded with `create_graph` can be differentiated again. Each returns the gradients of the
//! op's inputs in the order they were recorded (`None`: no gradient flows there).
use super::ops::Saved;
use super::Tape;
use crate::backend::ops as raw;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;

/// `needs[i]` says whether input i's gradient is wanted (it leads to a watched, retained or
/// requested tensor); the rules of multi-input ops skip the others, which for a layer's input or
/// a frozen weight saves a whole GEMM or convolution.
pub(super) fn backward(tape: &Tape, saved: &Saved, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let need = |i: usize| needs.get(i).copied().unwrap_or(true);
    Ok(match saved {
        Saved::Binary { op, a, b } => {
            let (da, db) = binary(tape, *op, a, b, dy, (need(0), need(1)))?;
            let reduce = |g: Option<Tensor>, shape: &[usize]| g.map(|g| tape.sum_to(&g, shape)).transpose();
            vec![reduce(da, a.shape())?, reduce(db, b.shape())?]
        }
        Saved::Unary { op, operand } => vec![Some(unary(tape, *op, operand.as_ref(), dy)?)],
        Saved::SumTo { x_shape } => vec![Some(tape.broadcast_to(dy, x_shape)?)],
        Saved::SumSquaresTo { x } => vec![Some(tape.mul(&tape.broadcast_to(dy, x.shape())?, &tape.scale(x, 2.0)?)?)],
        Saved::SumProductsTo { a, b } => {
            // dy has the summed shape at a's rank (or fewer leading dims): the products broadcast it.
            let dy = tape.reshape(dy, &at_rank(dy.shape(), a.rank()))?;
            vec![need(0).then(|| tape.mul(&dy, b)).transpose()?, need(1).then(|| tape.mul(&dy, a)).transpose()?]
        }
        Saved::BroadcastTo { x_shape } => vec![Some(tape.sum_to(dy, x_shape)?)],
        Saved::Reshape { x_shape } => vec![Some(tape.reshape(dy, x_shape)?)],
        Saved::Matmul { a, b, trans_a, trans_b, bias } => {
            // C = op(A)·op(B): d op(A) = dC·op(B)ᵀ, d op(B) = op(A)ᵀ·dC, transposed back as needed.
            let da = need(0)
                .then(|| if *trans_a { tape.matmul(b, dy, *trans_b, true) } else { tape.matmul(dy, b, false, !*trans_b) })
                .transpose()?;
            let db = need(1)
                .then(|| if *trans_b { tape.matmul(dy, a, true, *trans_a) } else { tape.matmul(a, dy, !*trans_a, false) })
                .transpose()?;
            let mut grads = vec![da, db];
            if *bias {
                // The bias's gradient sums dy over the rows (examples), per column.
                let (g, n) = (dy.shape()[0], dy.shape()[2]);
                grads.push(need(2).then(|| tape.reshape(&tape.sum_to(dy, &[g, 1, n])?, &[g, n])).transpose()?);
            }
            grads
        }
        Saved::Conv2d { x, w, stride, padding, bias } => {
            let in_hw = (x.shape()[3], x.shape()[4]);
            let k = (w.shape()[3], w.shape()[4]);
            let mut grads = vec![
                need(0).then(|| tape.conv2d_input_grad(dy, w, in_hw, *stride, *padding)).transpose()?,
                need(1).then(|| tape.conv2d_weight_grad(x, dy, k, *stride, *padding)).transpose()?,
            ];
            if *bias {
                // The bias's gradient sums dy over examples and positions, per output channel.
                let (g, o) = (dy.shape()[0], dy.shape()[2]);
                grads.push(need(2).then(|| tape.reshape(&tape.sum_to(dy, &[g, 1, o, 1, 1])?, &[g, o])).transpose()?);
            }
            grads
        }
        Saved::ConvInputGrad { dy: g, w, stride, padding } => {
            // out = A(g, w), bilinear: ⟨ḡ, A(g, w)⟩ = ⟨conv2d(ḡ, w), g⟩ = ⟨wgrad(ḡ, g), w⟩.
            let k = (w.shape()[3], w.shape()[4]);
            vec![
                need(0).then(|| tape.conv2d(dy, w, *stride, *padding)).transpose()?,
                need(1).then(|| tape.conv2d_weight_grad(dy, g, k, *stride, *padding)).transpose()?,
            ]
        }
        Saved::ConvWeightGrad { x, dy: g, stride, padding } => {
            // out = W(x, g), bilinear: ⟨w̄, W(x, g)⟩ = ⟨conv2d(x, w̄), g⟩ = ⟨A(g, w̄), x⟩.
            let in_hw = (x.shape()[3], x.shape()[4]);
            vec![
                need(0).then(|| tape.conv2d_input_grad(g, dy, in_hw, *stride, *padding)).transpose()?,
                need(1).then(|| tape.conv2d(x, dy, *stride, *padding)).transpose()?,
            ]
        }
        Saved::MaxPoolGather { selector } => vec![Some(tape.max_pool2x2_scatter(selector, dy)?)],
        Saved::MaxPoolScatter { selector } => vec![Some(tape.max_pool2x2_gather(selector, dy)?)],
        Saved::Upsample => vec![Some(tape.sum_pool2x2(dy)?)],
        Saved::SumPool => vec![Some(tape.upsample_nearest2x(dy)?)],
        Saved::Narrow { axis, start, dim } => {
            let len = dy.shape()[*axis];
            vec![Some(tape.pad(dy, *axis, *start, dim - start - len)?)]
        }
        Saved::Pad { axis, before, dim } => vec![Some(tape.narrow(dy, *axis, *before, *dim)?)],
        Saved::Concat { axis, sizes } => {
            let mut offset = 0;
            let mut grads = Vec::with_capacity(sizes.len());
            for (i, &len) in sizes.iter().enumerate() {
                grads.push(need(i).then(|| tape.narrow(dy, *axis, offset, len)).transpose()?);
                offset += len;
            }
            grads
        }
        Saved::LogSoftmax { y } => {
            // dx = dy − softmax(x)·Σ_k dy_k, softmax(x) = exp(y).
            let mut rows = dy.shape().to_vec();
            let last = rows.len() - 1;
            rows[last] = 1;
            let total = tape.sum_to(dy, &rows)?;
            let p = tape.exp(y)?;
            vec![Some(tape.sub(dy, &tape.mul(&p, &total)?)?)]
        }
        Saved::SpectralSigma { u, v, w_shape } => {
            // ∂W̄ = gσ·u vᵀ per group: the outer product is a constant (u, v carry no gradient).
            let (g, rows, cols) = (u.shape()[0], u.shape()[1], v.shape()[1]);
            let outer = raw::matmul(&u.reshape(&[g, rows, 1])?, &v.reshape(&[g, cols, 1])?, false, true)?;
            let scaled = tape.mul(&outer, &tape.reshape(dy, &[g, 1, 1])?)?;
            vec![Some(tape.reshape(&scaled, w_shape)?)]
        }
        Saved::PixelNorm { x, inv, eps } => vec![Some(pixel_norm(tape, x, inv, *eps, dy)?)],
        Saved::SpectralDivide { w_bar, w, u, v, sigma } => vec![Some(spectral_divide(tape, w_bar, w, u, v, sigma, dy)?)],
    })
}

/// `dx` of pixel norm `y = x·inv`, `inv = (Σ_c x²/C + eps)^(−1/2)`:
/// `dx = inv·dy − x·inv³·(Σ_c x·dy)/C`. A first-order pass is one launch from the forward's `inv`;
/// a recorded one builds the same from tape ops with `inv` recomputed as a function of `x`.
fn pixel_norm(tape: &Tape, x: &Tensor, inv: &Tensor, eps: f32, dy: &Tensor) -> Result<Tensor> {
    if !tape.is_recording() {
        return raw::pixel_norm_backward(x, inv, dy);
    }
    let s = x.shape();
    let per_position = [s[0], s[1], 1, s[3], s[4]];
    // C and eps as tensors of x's dtype, so that an f64 tape divides by C exactly (an affine map
    // would round 1/C to f32), as the fused rule does.
    let channels = raw::scalar_like(x, s[2] as f64)?;
    let mean_sq = tape.div(&tape.sum_squares_to(x, &per_position)?, &channels)?;
    let inv = tape.rsqrt(&tape.add(&mean_sq, &raw::scalar_like(x, f64::from(eps))?)?)?;
    let along = tape.div(&tape.sum_products_to(x, dy, &per_position)?, &channels)?;
    let k = tape.mul(&tape.mul(&inv, &tape.square(&inv)?)?, &along)?;
    tape.sub(&tape.mul(dy, &inv)?, &tape.mul(x, &k)?)
}

/// `dW̄` of `W = W̄/σ`, `σ = uᵀW̄v`: `dW/σ − (⟨dW, W̄⟩/σ²)·u vᵀ = (dW − ⟨dW, W⟩·u vᵀ)/σ` per group.
/// A first-order pass takes two launches (`sum_products_to` for c and `spectral_divide_backward`);
/// a recorded one builds the same value from tape ops, with σ recorded as a function of W̄, so
/// that it can be differentiated again.
fn spectral_divide(tape: &Tape, w_bar: &Tensor, w: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let s = w_bar.shape();
    let (g, rows, cols) = (s[0], u.shape()[1], v.shape()[1]);
    let mut per_group = vec![1; s.len()];
    per_group[0] = g;
    if tape.is_recording() {
        let sigma = tape.reshape(&tape.spectral_sigma(w_bar, u, v, sigma.clone())?, &per_group)?;
        let c = tape.sum_products_to(dy, &tape.div(w_bar, &sigma)?, &per_group)?;
        let outer = raw::matmul(&u.reshape(&[g, rows, 1])?, &v.reshape(&[g, cols, 1])?, false, true)?.reshape(s)?;
        return tape.div(&tape.sub(dy, &tape.mul(&outer, &c)?)?, &sigma);
    }
    let c = raw::sum_products_to(dy, w, &per_group)?.reshape(&[g])?;
    raw::spectral_divide_backward(&dy.reshape(&[g, rows, cols])?, &c, u, v, sigma)?.reshape(s)
}

/// `shape` with leading 1s up to `rank` dims (a summed shape may drop leading dims).
fn at_rank(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut full = vec![1; rank.saturating_sub(shape.len())];
    full.extend_from_slice(shape);
    full
}

/// Gradients of `out = op(a, b)` before reduction to the operands' shapes, each only if wanted.
fn binary(
    tape: &Tape,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
    wanted: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (want_a, want_b) = wanted;
    let grad = |want: bool, f: &dyn Fn() -> Result<Tensor>| want.then(f).transpose();
    Ok(match op {
        BinaryOp::Add => (want_a.then(|| dy.clone()), want_b.then(|| dy.clone())),
        BinaryOp::Sub => (want_a.then(|| dy.clone()), grad(want_b, &|| tape.neg(dy))?),
        BinaryOp::Mul => (grad(want_a, &|| tape.mul(dy, b))?, grad(want_b, &|| tape.mul(dy, a))?),
        BinaryOp::Div => {
            let da = tape.div(dy, b)?;
            // d/db (a/b) = −a/b² = −(dy/b)·(a/b)
            let db = grad(want_b, &|| tape.neg(&tape.mul(&da, &tape.div(a, b)?)?))?;
            (want_a.then_some(da), db)
        }
        // a·(1 − b²): ∂/∂a through the same op, ∂/∂b = −2ab.
        BinaryOp::TanhGrad => (
            grad(want_a, &|| tape.binary(BinaryOp::TanhGrad, dy, b))?,
            grad(want_b, &|| tape.scale(&tape.mul(&tape.mul(dy, a)?, b)?, -2.0))?,
        ),
        // a·b(1 − b): ∂/∂a through the same op, ∂/∂b = a(1 − 2b).
        BinaryOp::SigmoidGrad => (
            grad(want_a, &|| tape.binary(BinaryOp::SigmoidGrad, dy, b))?,
            grad(want_b, &|| tape.mul(&tape.mul(dy, a)?, &tape.affine(b, -2.0, 1.0)?))?,
        ),
        // Linear in a with a piecewise constant factor of b: no gradient flows into b.
        BinaryOp::LeakyReluGrad(slope) => (grad(want_a, &|| tape.binary(BinaryOp::LeakyReluGrad(slope), dy, b))?, None),
        BinaryOp::BceWithLogits => {
            // ∂/∂x = σ(x) − t, ∂/∂t = −x
            let da = grad(want_a, &|| tape.mul(dy, &tape.sub(&tape.sigmoid(a)?, b)?))?;
            let db = grad(want_b, &|| tape.neg(&tape.mul(dy, a)?))?;
            (da, db)
        }
    })
}

/// Whether `op`'s derivative is written in its output `y` (else in its input `x`).
pub(super) fn unary_needs_output(op: UnaryOp) -> bool {
    matches!(op, UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip | UnaryOp::Sigmoid | UnaryOp::Tanh)
}

/// `dx` of `y = op(x)`; `operand` is `y` or `x` as `unary_needs_output` says (none for affine).
fn unary(tape: &Tape, op: UnaryOp, operand: Option<&Tensor>, dy: &Tensor) -> Result<Tensor> {
    let Some(v) = operand else {
        let UnaryOp::Affine { scale, .. } = op else { unreachable!("only affine maps save no operand") };
        return tape.scale(dy, scale);
    };
    match op {
        UnaryOp::Affine { scale, .. } => tape.scale(dy, scale),
        // v = y below
        UnaryOp::Exp => tape.mul(dy, v),
        UnaryOp::Sqrt => tape.scale(&tape.div(dy, v)?, 0.5),
        // y = x^(−1/2): dy/dx = −y³/2
        UnaryOp::Rsqrt => tape.mul(dy, &tape.scale(&tape.mul(v, &tape.square(v)?)?, -0.5)?),
        // y = 1/x: dy/dx = −y²
        UnaryOp::Recip => tape.mul(dy, &tape.neg(&tape.square(v)?)?),
        // σ' = σ(1 − σ)
        UnaryOp::Sigmoid => tape.binary(BinaryOp::SigmoidGrad, dy, v),
        // tanh' = 1 − tanh²
        UnaryOp::Tanh => tape.binary(BinaryOp::TanhGrad, dy, v),
        // v = x below
        UnaryOp::Log => tape.div(dy, v),
        UnaryOp::Square => tape.mul(dy, &tape.scale(v, 2.0)?),
        // dy masked by the input's sign, in one op (linear in dy; see `binary` for its own rule).
        UnaryOp::Relu => tape.binary(BinaryOp::LeakyReluGrad(0.0), dy, v),
        UnaryOp::LeakyRelu(slope) => tape.binary(BinaryOp::LeakyReluGrad(slope), dy, v),
        UnaryOp::ReluMask | UnaryOp::LeakyReluMask(_) => raw::unary(UnaryOp::Affine { scale: 0.0, shift: 0.0 }, dy),
        // DP-SGD forms clip factors outside any tape: nothing differentiates through them.
        UnaryOp::ClipFactor(_) => {
            Err(crate::error::Error::Invalid("clip factors have no backward rule: they are formed outside the tape".into()))
        }
    }
}
