//! Shape-checked entry points of the op set. Every function validates its operands (same device,
//! compatible shapes), derives the output geometry and calls the backend of the operands' device.
use super::{
    backend, census, step_values, AdamParams, AdamTensors, BinaryOp, ConvGeometry, GradientNoise, MatmulGeometry, NoisedAdamTensors,
    NoisedTensors, PowerIteration, PowerIterationInput, PowerIterationIo, PublicDraw, RowNorm, SgdParams, UnaryOp,
};
use crate::dp::noise::{NoiseKey, MAX_NOISE_ELEMENTS};
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// The device all operands share (and their common dtype); mixing either is an error, never a
/// silent copy or cast.
fn device_of(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let first = ts[0].device();
    for t in &ts[1..] {
        let d = t.device();
        if !d.same(&first) {
            return Err(Error::DeviceMismatch { op, a: first.to_string(), b: d.to_string() });
        }
        if t.dtype() != ts[0].dtype() {
            return Err(Error::shape(op, format!("operands have different dtypes ({:?} and {:?})", ts[0].dtype(), t.dtype())));
        }
    }
    if ts[0].dtype() == DType::F64 && !first.is_cpu() {
        return Err(Error::Unsupported { op, device: format!("{first} in f64 (f64 is CPU-only)") });
    }
    Ok(first)
}

/// The backend of `device`, with the op counted (see [`census`]).
fn dispatch<'a>(op: &'static str, device: &'a Device) -> &'a dyn super::Backend {
    census::note(op);
    backend(device)
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    dispatch("unary", &x.device()).unary(op, x)
}

/// A one-element tensor of `value` with `like`'s dtype and device (scalar operands of binary ops).
pub fn scalar_like(like: &Tensor, value: f64) -> Result<Tensor> {
    like.full_like(&[], value)
}

/// The numpy broadcast of two shapes (aligned on the right; each dim equal or 1).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        ensure_shape!(da == db || da == 1 || db == 1, op, "cannot broadcast {a:?} with {b:?}");
        out[i] = if da == 1 { db } else { da };
    }
    Ok(out)
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dev = device_of("binary", &[a, b])?;
    let out = broadcast_shape("binary", a.shape(), b.shape())?;
    dispatch("binary", &dev).binary(op, a, b, &out)
}

/// Sum of `x` down to `shape`, which must be broadcastable to `x`'s shape (the adjoint of the
/// broadcast). A shape of lower rank is aligned on the right, as in broadcasting.
pub fn sum_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    match summed_shape("sum_to", x, shape)? {
        None => x.reshape(shape),
        Some(full) => dispatch("sum_to", &x.device()).sum_to(x, &full)?.reshape(shape),
    }
}

/// Sum of `x`'s squares down to `shape` (as `sum_to`), in one pass: per-example squared norms.
pub fn sum_squares_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    match summed_shape("sum_squares_to", x, shape)? {
        None => unary(UnaryOp::Square, x)?.reshape(shape),
        Some(full) => dispatch("sum_squares_to", &x.device()).sum_squares_to(x, &full)?.reshape(shape),
    }
}

/// `sum_to(a ⊙ b, shape)` in one pass; `a` and `b` have equal shapes (no broadcasting).
pub fn sum_products_to(a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let dev = device_of("sum_products_to", &[a, b])?;
    ensure_shape!(a.shape() == b.shape(), "sum_products_to", "factors {:?} and {:?} differ (no broadcasting here)", a.shape(), b.shape());
    match summed_shape("sum_products_to", a, shape)? {
        None => binary(BinaryOp::Mul, a, b)?.reshape(shape),
        Some(full) => dispatch("sum_products_to", &dev).sum_products_to(a, b, &full)?.reshape(shape),
    }
}

/// `shape` at x's rank (aligned on the right), checked to be a sum of x; `None` when nothing is
/// summed.
fn summed_shape(op: &'static str, x: &Tensor, shape: &[usize]) -> Result<Option<Vec<usize>>> {
    ensure_shape!(shape.len() <= x.rank(), op, "cannot sum {:?} to higher rank {shape:?}", x.shape());
    let lead = x.rank() - shape.len();
    let mut full = vec![1; lead];
    full.extend_from_slice(shape);
    for (i, (&t, &s)) in full.iter().zip(x.shape()).enumerate() {
        ensure_shape!(t == s || t == 1, op, "cannot sum {:?} to {shape:?} (dim {i})", x.shape());
    }
    Ok(if full == x.shape() { None } else { Some(full) })
}

/// Grouped matrix product; see [`MatmulGeometry`].
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let dev = device_of("matmul", &[a, b])?;
    ensure_shape!(a.rank() == 3 && b.rank() == 3, "matmul", "operands must be [G, rows, cols], got {:?} and {:?}", a.shape(), b.shape());
    let (ga, gb) = (a.shape()[0], b.shape()[0]);
    ensure_shape!(ga == gb, "matmul", "group counts differ: {:?} and {:?}", a.shape(), b.shape());
    let (m, ka) = if trans_a { (a.shape()[2], a.shape()[1]) } else { (a.shape()[1], a.shape()[2]) };
    let (kb, n) = if trans_b { (b.shape()[2], b.shape()[1]) } else { (b.shape()[1], b.shape()[2]) };
    ensure_shape!(
        ka == kb,
        "matmul",
        "inner dims differ: {:?}{} · {:?}{}",
        a.shape(),
        if trans_a { "ᵀ" } else { "" },
        b.shape(),
        if trans_b { "ᵀ" } else { "" }
    );
    let geom = MatmulGeometry { groups: ga, m, k: ka, n, trans_a, trans_b };
    dispatch("matmul", &dev).matmul(a, b, None, &geom)
}

/// A linear layer, `x · wᵀ + bias` for `x` `[G, B, I]`, `w` `[G, O, I]` and `bias` `[G, O]`, in one
/// launch (the bias added in the product's epilogue).
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let dev = device_of("matmul", &[x, w, bias])?;
    ensure_shape!(x.rank() == 3 && w.rank() == 3, "linear", "x {:?} must be [G, B, I] and w {:?} [G, O, I]", x.shape(), w.shape());
    let (g, m, k) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let n = w.shape()[1];
    ensure_shape!(
        w.shape() == [g, n, k] && bias.shape() == [g, n],
        "linear",
        "x {:?}, w {:?} and bias {:?} do not fit [G, B, I], [G, O, I], [G, O]",
        x.shape(),
        w.shape(),
        bias.shape()
    );
    let geom = MatmulGeometry { groups: g, m, k, n, trans_a: false, trans_b: true };
    dispatch("matmul", &dev).matmul(x, w, Some(bias), &geom)
}

/// Checks `x` `[G, B, C, H, W]` against `w` `[G, O, C, KH, KW]` and derives the output size.
pub fn conv_geometry(x_shape: &[usize], w_shape: &[usize], stride: usize, padding: usize) -> Result<ConvGeometry> {
    ensure_shape!(x_shape.len() == 5, "conv2d", "input must be [G, B, C, H, W], got {x_shape:?}");
    ensure_shape!(w_shape.len() == 5, "conv2d", "weight must be [G, O, C, KH, KW], got {w_shape:?}");
    ensure_shape!(stride >= 1, "conv2d", "stride must be at least 1");
    let [g, b, c, h, w] = [x_shape[0], x_shape[1], x_shape[2], x_shape[3], x_shape[4]];
    let [gw, o, cw, kh, kw] = [w_shape[0], w_shape[1], w_shape[2], w_shape[3], w_shape[4]];
    ensure_shape!(g == gw, "conv2d", "group counts differ: input {x_shape:?}, weight {w_shape:?}");
    ensure_shape!(c == cw, "conv2d", "input has {c} channels, weight expects {cw}");
    ensure_shape!(kh >= 1 && kw >= 1, "conv2d", "kernel {kh}×{kw} is empty: weight {w_shape:?}");
    ensure_shape!(
        h + 2 * padding >= kh && w + 2 * padding >= kw,
        "conv2d",
        "kernel {kh}×{kw} larger than the padded input {}×{}",
        h + 2 * padding,
        w + 2 * padding
    );
    let out_h = (h + 2 * padding - kh) / stride + 1;
    let out_w = (w + 2 * padding - kw) / stride + 1;
    Ok(ConvGeometry {
        groups: g,
        batch: b,
        in_channels: c,
        in_h: h,
        in_w: w,
        out_channels: o,
        kernel_h: kh,
        kernel_w: kw,
        stride,
        padding,
        out_h,
        out_w,
    })
}

/// Grouped 2-D convolution (cross-correlation, as in PyTorch), no bias.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let dev = device_of("conv2d", &[x, w])?;
    let geom = conv_geometry(x.shape(), w.shape(), stride, padding)?;
    dispatch("conv2d", &dev).conv2d(x, w, None, &geom)
}

/// `conv2d(x, w) + bias` with `bias` `[G, O]` per output channel, in one launch.
pub fn conv2d_bias(x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let dev = device_of("conv2d", &[x, w, bias])?;
    let geom = conv_geometry(x.shape(), w.shape(), stride, padding)?;
    ensure_shape!(
        bias.shape() == [geom.groups, geom.out_channels],
        "conv2d",
        "bias {:?} must be [G, O] = [{}, {}] for weight {:?}",
        bias.shape(),
        geom.groups,
        geom.out_channels,
        w.shape()
    );
    dispatch("conv2d", &dev).conv2d(x, w, Some(bias), &geom)
}

/// The gradient of `conv2d` w.r.t. its input of spatial size `in_hw`, from `dy` `[G, B, O, HO, WO]`.
pub fn conv2d_input_grad(dy: &Tensor, w: &Tensor, in_hw: (usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
    let dev = device_of("conv2d_input_grad", &[dy, w])?;
    ensure_shape!(dy.rank() == 5 && w.rank() == 5, "conv2d_input_grad", "dy {:?} and weight {:?} must be rank 5", dy.shape(), w.shape());
    let s = dy.shape();
    let geom = conv_geometry(&[s[0], s[1], w.shape()[2], in_hw.0, in_hw.1], w.shape(), stride, padding)?;
    ensure_shape!(
        geom.out_channels == s[2] && geom.out_h == s[3] && geom.out_w == s[4],
        "conv2d_input_grad",
        "dy {s:?} does not match the conv output {:?} for input {in_hw:?}",
        geom.output_shape()
    );
    dispatch("conv2d_input_grad", &dev).conv2d_input_grad(dy, w, &geom)
}

/// The gradient of `conv2d` w.r.t. its weight of kernel size `kernel_hw`.
pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, kernel_hw: (usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
    let dev = device_of("conv2d_weight_grad", &[x, dy])?;
    ensure_shape!(x.rank() == 5 && dy.rank() == 5, "conv2d_weight_grad", "x {:?} and dy {:?} must be rank 5", x.shape(), dy.shape());
    let (xs, s) = (x.shape(), dy.shape());
    let geom = conv_geometry(xs, &[xs[0], s[2], xs[2], kernel_hw.0, kernel_hw.1], stride, padding)?;
    ensure_shape!(
        geom.output_shape() == [s[0], s[1], s[2], s[3], s[4]],
        "conv2d_weight_grad",
        "dy {s:?} does not match the conv output {:?}",
        geom.output_shape()
    );
    dispatch("conv2d_weight_grad", &dev).conv2d_weight_grad(x, dy, &geom)
}

/// Each example's squared norm of its own `conv2d_weight_grad` (what per-example clipping needs of a
/// conv layer), `[G, B]`, without materialising per-example gradients: x `[G, B, C, H, W]`, dy
/// `[G, B, O, HO, WO]`, the same geometry as `conv2d_weight_grad`.
pub fn conv2d_weight_grad_sq_norms(x: &Tensor, dy: &Tensor, kernel_hw: (usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
    let op = "conv2d_weight_grad_sq_norms";
    let dev = device_of(op, &[x, dy])?;
    ensure_shape!(x.rank() == 5 && dy.rank() == 5, op, "x {:?} and dy {:?} must be rank 5", x.shape(), dy.shape());
    let (xs, s) = (x.shape(), dy.shape());
    let geom = conv_geometry(xs, &[xs[0], s[2], xs[2], kernel_hw.0, kernel_hw.1], stride, padding)?;
    ensure_shape!(
        geom.output_shape() == [s[0], s[1], s[2], s[3], s[4]],
        op,
        "dy {s:?} does not match the conv output {:?}",
        geom.output_shape()
    );
    dispatch("conv2d_weight_grad_sq_norms", &dev).conv2d_weight_grad_sq_norms(x, dy, &geom)
}

/// Output size of a transposed convolution: `(H − 1)·stride − 2·padding + K + output_padding`.
pub fn conv_transpose2d_out_hw(
    x_shape: &[usize],
    w_shape: &[usize],
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<(usize, usize)> {
    ensure_shape!(x_shape.len() == 5 && w_shape.len() == 5, "conv_transpose2d", "x {x_shape:?} and weight {w_shape:?} must be rank 5");
    ensure_shape!(output_padding < stride.max(1), "conv_transpose2d", "output_padding {output_padding} must be below stride {stride}");
    let size = |n: usize, k: usize| -> Result<usize> {
        let full = n.saturating_sub(1) * stride + k + output_padding;
        ensure_shape!(n > 0 && full > 2 * padding, "conv_transpose2d", "padding {padding} leaves no output for input {x_shape:?}");
        Ok(full - 2 * padding)
    };
    Ok((size(x_shape[3], w_shape[3])?, size(x_shape[4], w_shape[4])?))
}

/// Transposed convolution with PyTorch's weight layout `[G, C_in, C_out, KH, KW]`: exactly the
/// input gradient of a conv whose output is `x`.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize, output_padding: usize) -> Result<Tensor> {
    let out_hw = conv_transpose2d_out_hw(x.shape(), w.shape(), stride, padding, output_padding)?;
    conv2d_input_grad(x, w, out_hw, stride, padding)
}

fn check_spatial(op: &'static str, x: &Tensor) -> Result<()> {
    ensure_shape!(x.rank() >= 2, op, "needs [.., H, W], got {:?}", x.shape());
    Ok(())
}

fn pooled_shape(x: &Tensor) -> Vec<usize> {
    let mut s = x.shape().to_vec();
    let r = s.len();
    s[r - 2] /= 2;
    s[r - 1] /= 2;
    s
}

/// 2×2 max pooling, stride 2 (odd sizes floor, as in PyTorch).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    max_pool2x2_gather(x, x)
}

pub fn max_pool2x2_gather(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let dev = device_of("max_pool2x2", &[x, v])?;
    check_spatial("max_pool2x2", x)?;
    ensure_shape!(x.shape() == v.shape(), "max_pool2x2", "selector {:?} and values {:?} differ", x.shape(), v.shape());
    dispatch("max_pool2x2_gather", &dev).max_pool2x2_gather(x, v)
}

pub fn max_pool2x2_scatter(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dev = device_of("max_pool2x2_scatter", &[x, dy])?;
    check_spatial("max_pool2x2_scatter", x)?;
    ensure_shape!(dy.shape() == pooled_shape(x), "max_pool2x2_scatter", "dy {:?} is not the pooled shape of {:?}", dy.shape(), x.shape());
    dispatch("max_pool2x2_scatter", &dev).max_pool2x2_scatter(x, dy)
}

pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    check_spatial("upsample_nearest2x", x)?;
    dispatch("upsample_nearest2x", &x.device()).upsample_nearest2x(x)
}

pub fn sum_pool2x2(x: &Tensor) -> Result<Tensor> {
    check_spatial("sum_pool2x2", x)?;
    let r = x.rank();
    ensure_shape!(
        x.shape()[r - 2].is_multiple_of(2) && x.shape()[r - 1].is_multiple_of(2),
        "sum_pool2x2",
        "needs even H and W, got {:?}",
        x.shape()
    );
    dispatch("sum_pool2x2", &x.device()).sum_pool2x2(x)
}

pub fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    ensure_shape!(axis < x.rank(), "narrow", "axis {axis} out of range for {:?}", x.shape());
    ensure_shape!(start + len <= x.shape()[axis], "narrow", "{start}..{} exceeds dim {axis} of {:?}", start + len, x.shape());
    if start == 0 && len == x.shape()[axis] {
        return Ok(x.clone());
    }
    dispatch("narrow", &x.device()).narrow(x, axis, start, len)
}

pub fn pad(x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor> {
    ensure_shape!(axis < x.rank(), "pad", "axis {axis} out of range for {:?}", x.shape());
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    dispatch("pad", &x.device()).pad(x, axis, before, after)
}

/// The top-left `h × w` window of `[.., H, W]`.
pub fn crop(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    check_spatial("crop", x)?;
    let r = x.rank();
    narrow(&narrow(x, r - 2, 0, h)?, r - 1, 0, w)
}

pub fn concat(xs: &[&Tensor], axis: usize) -> Result<Tensor> {
    ensure_shape!(!xs.is_empty(), "concat", "nothing to concatenate");
    let dev = device_of("concat", xs)?;
    let first = xs[0].shape();
    ensure_shape!(axis < first.len(), "concat", "axis {axis} out of range for {first:?}");
    for x in xs {
        let s = x.shape();
        let same = s.len() == first.len() && s.iter().zip(first).enumerate().all(|(i, (a, b))| i == axis || a == b);
        ensure_shape!(same, "concat", "shapes {first:?} and {s:?} differ outside axis {axis}");
    }
    dispatch("concat", &dev).concat(xs, axis)
}

/// Rows `indices` of `table` (`[R, ...]`) in that order, `[indices.len(), ...]`; an index past the
/// table is an error that names it.
pub fn gather_rows(table: &Tensor, indices: &[u32]) -> Result<Tensor> {
    ensure_shape!(table.rank() >= 1, "gather_rows", "needs a table of rank ≥ 1, got a scalar");
    let rows = table.shape()[0];
    if let Some(bad) = indices.iter().find(|&&i| i as usize >= rows) {
        return Err(Error::shape("gather_rows", format!("index {bad} is past the table's {rows} rows")));
    }
    step_values::require_gather(indices, rows)?;
    dispatch("gather_rows", &table.device()).gather_rows(table, indices)
}

pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    ensure_shape!(x.rank() >= 1 && x.shape()[x.rank() - 1] > 0, "log_softmax", "needs a non-empty last axis, got {:?}", x.shape());
    dispatch("log_softmax", &x.device()).log_softmax(x)
}

/// One power iteration of spectral norm: `u'`, `v` and `σ = u'ᵀ w v` (see `Backend::power_iterations`).
pub fn power_iteration(w: &Tensor, u: &Tensor) -> Result<PowerIteration> {
    let mut steps = power_iterations(&[(w, u)])?;
    Ok(steps.remove(0))
}

/// One power iteration for each `(w [G, O, I], u [G, O], v [G, I])`, a spectral norm's state: u'
/// and v written back into u and v in place and returned in tensors of their own, all in the same
/// launches (see [`PowerIterationInput::State`]).
pub fn power_iterations_in_place(layers: &mut [(&Tensor, &mut Tensor, &mut Tensor)]) -> Result<Vec<PowerIteration>> {
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<&Tensor> = layers.iter().flat_map(|(w, u, v)| [*w, &**u, &**v]).collect();
    let dev = device_of("power_iteration", &all)?;
    for (w, u, v) in layers.iter() {
        check_power_iteration(w, u)?;
        let s = w.shape();
        ensure_shape!(v.shape() == [s[0], s[2]], "power_iteration", "v {:?} must be [G, I] of weight {s:?}", v.shape());
    }
    let mut io: Vec<PowerIterationIo<'_>> =
        layers.iter_mut().map(|(w, u, v)| PowerIterationIo { w, input: PowerIterationInput::State { u, v } }).collect();
    dispatch("power_iteration", &dev).power_iterations(&mut io)
}

/// The shapes every power iteration needs: the weight viewed `[G, O, I]`, u `[G, O]`.
fn check_power_iteration(w: &Tensor, u: &Tensor) -> Result<()> {
    ensure_shape!(w.rank() == 3, "power_iteration", "weight must be viewed as [G, O, I], got {:?}", w.shape());
    ensure_shape!(u.shape() == &w.shape()[..2], "power_iteration", "u {:?} must be [G, O] of weight {:?}", u.shape(), w.shape());
    Ok(())
}

/// One power iteration for each `(w [G, O, I], u [G, O])`, all on one device, in the same
/// launches (see `Backend::power_iterations`); the steps in the layers' order.
pub fn power_iterations(layers: &[(&Tensor, &Tensor)]) -> Result<Vec<PowerIteration>> {
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<&Tensor> = layers.iter().flat_map(|&(w, u)| [w, u]).collect();
    let dev = device_of("power_iteration", &all)?;
    for &(w, u) in layers {
        check_power_iteration(w, u)?;
    }
    let mut io: Vec<PowerIterationIo<'_>> = layers.iter().map(|&(w, u)| PowerIterationIo { w, input: PowerIterationInput::U(u) }).collect();
    dispatch("power_iteration", &dev).power_iterations(&mut io)
}

/// Pixel norm over the channels of `x` `[G, B, C, H, W]`: `y = x / sqrt(mean_c x² + eps)` per
/// position, and the factor `inv = 1/sqrt(mean_c x² + eps)` `[G, B, 1, H, W]` its gradient needs.
pub fn pixel_norm(x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    ensure_shape!(x.rank() == 5 && x.shape()[2] > 0, "pixel_norm", "needs [G, B, C, H, W] with C ≥ 1, got {:?}", x.shape());
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::Invalid(format!("pixel_norm: eps {eps} must be finite and ≥ 0")));
    }
    let s = x.shape();
    let (n, plane) = (s[0] * s[1], s[3] * s[4]);
    let (y, inv) = dispatch("pixel_norm", &x.device()).pixel_norm(&x.reshape(&[n, s[2], plane])?, eps)?;
    Ok((y.reshape(s)?, inv.reshape(&[s[0], s[1], 1, s[3], s[4]])?))
}

/// The gradient of [`pixel_norm`] at `x` `[G, B, C, H, W]` from its `inv` `[G, B, 1, H, W]` and `dy`.
pub fn pixel_norm_backward(x: &Tensor, inv: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dev = device_of("pixel_norm_backward", &[x, inv, dy])?;
    ensure_shape!(x.rank() == 5, "pixel_norm_backward", "needs x [G, B, C, H, W], got {:?}", x.shape());
    let s = x.shape();
    ensure_shape!(
        dy.shape() == s && inv.shape() == [s[0], s[1], 1, s[3], s[4]],
        "pixel_norm_backward",
        "dy {:?} and inv {:?} do not fit x {s:?}",
        dy.shape(),
        inv.shape()
    );
    let (n, plane) = (s[0] * s[1], s[3] * s[4]);
    let flat = |t: &Tensor, c: usize| t.reshape(&[n, c, plane]);
    let inv = inv.reshape(&[n, plane])?;
    dispatch("pixel_norm_backward", &dev).pixel_norm_backward(&flat(x, s[2])?, &inv, &flat(dy, s[2])?)?.reshape(s)
}

/// The gradient of spectral norm's `W = W̄/σ` (see `Backend::spectral_divide_backward`): `dw`
/// `[G, O, I]`, `c = ⟨dW, W⟩` and `σ` `[G]`, `u` `[G, O]`, `v` `[G, I]`.
pub fn spectral_divide_backward(dw: &Tensor, c: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    let dev = device_of("spectral_divide_backward", &[dw, c, u, v, sigma])?;
    ensure_shape!(dw.rank() == 3, "spectral_divide_backward", "dW must be viewed as [G, O, I], got {:?}", dw.shape());
    let (g, rows, cols) = (dw.shape()[0], dw.shape()[1], dw.shape()[2]);
    ensure_shape!(
        c.shape() == [g] && sigma.shape() == [g] && u.shape() == [g, rows] && v.shape() == [g, cols],
        "spectral_divide_backward",
        "c {:?}, σ {:?}, u {:?} and v {:?} do not fit dW {:?}",
        c.shape(),
        sigma.shape(),
        u.shape(),
        v.shape(),
        dw.shape()
    );
    dispatch("spectral_divide_backward", &dev).spectral_divide_backward(dw, c, u, v, sigma)
}

pub fn sgd_step(param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, hp: &SgdParams) -> Result<()> {
    let dev = device_of("sgd_step", &[param, grad])?;
    ensure_shape!(param.shape() == grad.shape(), "sgd_step", "param {:?} and grad {:?} differ", param.shape(), grad.shape());
    if hp.momentum != 0.0 {
        let buf = momentum_buf.as_deref().ok_or_else(|| Error::Invalid("sgd_step: momentum needs a momentum buffer".into()))?;
        ensure_shape!(buf.shape() == param.shape(), "sgd_step", "momentum buffer {:?} and param {:?} differ", buf.shape(), param.shape());
        device_of("sgd_step", &[param, buf])?;
    }
    step_values::require_sgd_lr(hp.lr)?;
    dispatch("sgd_step", &dev).sgd_step(param, grad, momentum_buf, hp)
}

pub fn adam_step(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, t: u64, hp: &AdamParams) -> Result<()> {
    let dev = device_of("adam_step", &[param, grad, m, v])?;
    for (name, s) in [("grad", grad.shape()), ("m", m.shape()), ("v", v.shape())] {
        ensure_shape!(s == param.shape(), "adam_step", "{name} {s:?} differs from param {:?}", param.shape());
    }
    if t == 0 {
        return Err(Error::Invalid("adam_step: step count t is 1-based".into()));
    }
    step_values::require_adam_corrections(hp, t)?;
    dispatch("adam_step", &dev).adam_step(param, grad, m, v, t, hp)
}

/// `sgd_step` without momentum of every `(param, grad)` pair in one op (one launch per 32 tensors
/// on a GPU), with the same values pair by pair; momentum is refused (its buffers are per tensor).
pub fn sgd_steps(pairs: &mut [(&mut Tensor, &Tensor)], hp: &SgdParams) -> Result<()> {
    if hp.momentum != 0.0 {
        return Err(Error::Invalid("sgd_steps: one op only for SGD without momentum".into()));
    }
    if pairs.is_empty() {
        return Ok(());
    }
    let all: Vec<&Tensor> = pairs.iter().flat_map(|(param, grad)| [&**param, *grad]).collect();
    let dev = device_of("sgd_step", &all)?;
    for (param, grad) in pairs.iter() {
        ensure_shape!(param.shape() == grad.shape(), "sgd_step", "param {:?} and grad {:?} differ", param.shape(), grad.shape());
    }
    step_values::require_sgd_lr(hp.lr)?;
    dispatch("sgd_step", &dev).sgd_steps(pairs, hp)
}

/// `adam_step` of every tensor of a model in one op (one launch per 32 tensors on a GPU), with
/// the same values tensor by tensor.
pub fn adam_steps(tensors: &mut [AdamTensors<'_>], t: u64, hp: &AdamParams) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let all: Vec<&Tensor> = tensors.iter().flat_map(|at| [&*at.param, at.grad, &*at.m, &*at.v]).collect();
    let dev = device_of("adam_step", &all)?;
    for at in tensors.iter() {
        for (name, s) in [("grad", at.grad.shape()), ("m", at.m.shape()), ("v", at.v.shape())] {
            ensure_shape!(s == at.param.shape(), "adam_step", "{name} {s:?} differs from param {:?}", at.param.shape());
        }
    }
    if t == 0 {
        return Err(Error::Invalid("adam_step: step count t is 1-based".into()));
    }
    step_values::require_adam_corrections(hp, t)?;
    dispatch("adam_step", &dev).adam_steps(tensors, t, hp)
}

/// What both noised optimizer steps check: devices, one element count, the noise, the divisor and
/// a `[1]` flag; the noise is noted for the audit.
fn check_noised_step(
    op: &'static str,
    param: &Tensor,
    sum: &Tensor,
    noise: &GradientNoise,
    flag: &Tensor,
    state: &[&Tensor],
) -> Result<Device> {
    let mut all = vec![param, sum, flag];
    all.extend_from_slice(state);
    let dev = device_of(op, &all)?;
    for t in std::iter::once(sum).chain(state.iter().copied()) {
        ensure_shape!(t.shape() == param.shape(), op, "{:?} differs from param {:?}", t.shape(), param.shape());
    }
    ensure_shape!(flag.shape() == [1], op, "the finiteness flag must be [1], got {:?}", flag.shape());
    check_noise(op, noise.std, param.numel())?;
    if !(noise.divisor.is_finite() && noise.divisor > 0.0) {
        return Err(Error::Invalid(format!("{op}: divisor {} must be finite and > 0", noise.divisor)));
    }
    noise_drawn(&noise.key, noise.std)?;
    Ok(dev)
}

/// In place, plain SGD of `param` with the DP-SGD gradient `(sum + std·z) / divisor` of `noise`,
/// in one pass that never writes the gradient (`add_gaussian_noise_and_divide` then `sgd_step`,
/// bit for bit); `flag` `[1]` becomes NaN if the gradient has a non-finite element. SGD with
/// momentum is refused (no algorithm uses it with DP-SGD).
pub fn noised_sgd_step(param: &mut Tensor, sum: &Tensor, noise: &GradientNoise, hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
    if hp.momentum != 0.0 {
        return Err(Error::Invalid("noised_sgd_step: fused only for SGD without momentum".into()));
    }
    let dev = check_noised_step("noised_sgd_step", param, sum, noise, flag, &[])?;
    step_values::require_sgd_lr(hp.lr)?;
    dispatch("noised_sgd_step", &dev).noised_sgd_step(param, sum, noise, hp, flag)
}

/// [`noised_sgd_step`] with Adam at step `t` (1-based).
#[allow(clippy::too_many_arguments)]
pub fn noised_adam_step(
    param: &mut Tensor,
    sum: &Tensor,
    noise: &GradientNoise,
    m: &mut Tensor,
    v: &mut Tensor,
    t: u64,
    hp: &AdamParams,
    flag: &mut Tensor,
) -> Result<()> {
    if t == 0 {
        return Err(Error::Invalid("noised_adam_step: step count t is 1-based".into()));
    }
    let dev = check_noised_step("noised_adam_step", param, sum, noise, flag, &[m, v])?;
    step_values::require_adam_corrections(hp, t)?;
    dispatch("noised_adam_step", &dev).noised_adam_step(param, sum, noise, m, v, t, hp, flag)
}

/// The device of a multi-tensor noised step, every tensor checked as its one-tensor step checks it
/// (and its noise noted for the audit); one noise mode for all, since one kernel serves them.
fn check_noised_steps<'a>(
    op: &'static str,
    tensors: impl Iterator<Item = (&'a Tensor, &'a Tensor, &'a GradientNoise, Vec<&'a Tensor>)>,
    flag: &Tensor,
) -> Result<Option<Device>> {
    let (mut device, mut mode) = (None, None);
    for (param, sum, noise, state) in tensors {
        let first = *mode.get_or_insert(noise.key.mode);
        if first != noise.key.mode {
            return Err(Error::Invalid(format!("{op}: one call takes one noise mode, got {first:?} and {:?}", noise.key.mode)));
        }
        device = Some(check_noised_step(op, param, sum, noise, flag, &state)?);
    }
    Ok(device)
}

/// [`noised_sgd_step`] of every tensor in one op (one launch per 32 tensors on a GPU), with the
/// same values tensor by tensor; all noises of one mode.
pub fn noised_sgd_steps(tensors: &mut [NoisedTensors<'_>], hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
    if hp.momentum != 0.0 {
        return Err(Error::Invalid("noised_sgd_step: fused only for SGD without momentum".into()));
    }
    let checked = tensors.iter().map(|t| (&*t.param, t.sum, t.noise, Vec::new()));
    match check_noised_steps("noised_sgd_step", checked, flag)? {
        None => Ok(()),
        Some(dev) => {
            step_values::require_sgd_lr(hp.lr)?;
            dispatch("noised_sgd_step", &dev).noised_sgd_steps(tensors, hp, flag)
        }
    }
}

/// [`noised_adam_step`] at step `t` of every tensor in one op, as [`noised_sgd_steps`].
pub fn noised_adam_steps(tensors: &mut [NoisedAdamTensors<'_>], t: u64, hp: &AdamParams, flag: &mut Tensor) -> Result<()> {
    if t == 0 {
        return Err(Error::Invalid("noised_adam_step: step count t is 1-based".into()));
    }
    let checked = tensors.iter().map(|nt| (&*nt.param, nt.sum, nt.noise, vec![&*nt.m, &*nt.v]));
    match check_noised_steps("noised_adam_step", checked, flag)? {
        None => Ok(()),
        Some(dev) => {
            step_values::require_adam_corrections(hp, t)?;
            dispatch("noised_adam_step", &dev).noised_adam_steps(tensors, t, hp, flag)
        }
    }
}

/// In place, the moving average `ema ← decay·ema + (1 − decay)·x` in one pass, with the values of
/// two affine maps and an addition.
pub fn ema_update(ema: &mut Tensor, x: &Tensor, decay: f32) -> Result<()> {
    let dev = device_of("ema_update", &[ema, x])?;
    ensure_shape!(ema.shape() == x.shape(), "ema_update", "average {:?} and value {:?} differ", ema.shape(), x.shape());
    if !decay.is_finite() {
        return Err(Error::Invalid(format!("ema_update: decay {decay} must be finite")));
    }
    step_values::require_ema_decay(decay)?;
    dispatch("ema_update", &dev).ema_update(ema, x, decay)
}

/// `ema_update` of every `(ema, x)` pair in one op (one launch per 32 pairs on a GPU).
pub fn ema_updates(pairs: &mut [(&mut Tensor, &Tensor)], decay: f32) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let all: Vec<&Tensor> = pairs.iter().flat_map(|(ema, x)| [&**ema, *x]).collect();
    let dev = device_of("ema_update", &all)?;
    for (ema, x) in pairs.iter() {
        ensure_shape!(ema.shape() == x.shape(), "ema_update", "average {:?} and value {:?} differ", ema.shape(), x.shape());
    }
    if !decay.is_finite() {
        return Err(Error::Invalid(format!("ema_update: decay {decay} must be finite")));
    }
    step_values::require_ema_decay(decay)?;
    dispatch("ema_update", &dev).ema_updates(pairs, decay)
}

/// Privacy noise about to be drawn from `key`: noted for the audit, and refused under a strict
/// binding of step values that lacks its step (a replay would draw the same noise again).
fn noise_drawn(key: &NoiseKey, std: f32) -> Result<()> {
    step_values::require_noise_step(key.step)?;
    crate::dp::audit::note(key, std);
    Ok(())
}

fn check_noise(op: &str, std: f32, n: usize) -> Result<()> {
    if !(std.is_finite() && std >= 0.0) {
        return Err(Error::Invalid(format!("{op}: noise std {std} must be finite and ≥ 0")));
    }
    if n as u64 > MAX_NOISE_ELEMENTS {
        return Err(Error::Invalid(format!(
            "{op}: {n} elements exceed the {MAX_NOISE_ELEMENTS} one noise key can cover; split the tensor"
        )));
    }
    Ok(())
}

/// In place, `x ← x + std·z` with `z` the standard normals of `key` (reproducible, the same on
/// every backend); see `dp::noise`.
pub fn add_gaussian_noise(x: &mut Tensor, std: f32, key: &NoiseKey) -> Result<()> {
    let dev = device_of("add_gaussian_noise", &[x])?;
    check_noise("add_gaussian_noise", std, x.numel())?;
    noise_drawn(key, std)?;
    dispatch("add_gaussian_noise", &dev).add_gaussian_noise(x, std, key)
}

/// A tensor of the standard normals a Philox `key` assigns to its elements (`standard_normal_at`,
/// as `add_gaussian_noise` draws them), for public randomness such as latent codes: one
/// [`public_draws`] launch, no fill. Not privacy noise, so the noise audit does not record it.
pub fn standard_normals(shape: &[usize], key: &NoiseKey, device: &Device) -> Result<Tensor> {
    public_draws(PublicDraw::Normal, shape, std::slice::from_ref(key), device)
}

/// One-hot rows `[prefix.., classes]` of classes drawn uniformly from a Philox `key` where they are
/// used (`dp::noise::uniform_class_at` of each row): public randomness such as generator labels,
/// with no upload. [`public_draws`] of one member.
pub fn uniform_one_hot(prefix: &[usize], classes: usize, key: &NoiseKey, device: &Device) -> Result<Tensor> {
    let classes = u32::try_from(classes).map_err(|_| Error::Invalid(format!("uniform_one_hot: {classes} classes (below 2³²)")))?;
    let mut shape = prefix.to_vec();
    shape.push(classes as usize);
    public_draws(PublicDraw::OneHot { classes }, &shape, std::slice::from_ref(key), device)
}

/// `shape` (`keys.len()` equal blocks, member-major) of public randomness drawn where it is used,
/// block m from `keys[m]` alone, so a group's members draw what each would draw alone: one-hot
/// rows (the last axis is `classes`), classes or uniforms in [0, 1) (`dp::noise::uniform_class_at`
/// and `uniform_unit_at`). Generator labels, latent bits and interpolation weights with no upload.
/// The keys are Philox keys at one tensor index and step, each drawn from a public stream.
pub fn public_draws(draw: PublicDraw, shape: &[usize], keys: &[NoiseKey], device: &Device) -> Result<Tensor> {
    let first = keys.first().ok_or_else(|| Error::Invalid("public_draws: no key".into()))?;
    if keys.iter().any(|k| k.mode != crate::dp::NoiseMode::Fast) {
        return Err(Error::Invalid("public_draws: public draws take Philox (fast) keys".into()));
    }
    if keys.iter().any(|k| (k.step, k.tensor_index) != (first.step, first.tensor_index)) {
        return Err(Error::Invalid("public_draws: the keys must share one step and tensor index".into()));
    }
    let numel: usize = shape.iter().product();
    if !numel.is_multiple_of(keys.len()) {
        return Err(Error::Invalid(format!("public_draws: {numel} elements do not split into {} members", keys.len())));
    }
    let per_member = numel / keys.len();
    // Philox's counter word is a row (one-hot) or an element (otherwise) of one member.
    let counters = match draw {
        PublicDraw::OneHot { classes } | PublicDraw::Class { classes } if classes == 0 => {
            return Err(Error::Invalid("public_draws: 0 classes (at least one)".into()));
        }
        PublicDraw::OneHot { classes } => {
            if shape.last() != Some(&(classes as usize)) {
                return Err(Error::Invalid(format!("public_draws: one-hot rows of {classes} classes in shape {shape:?}")));
            }
            per_member / classes as usize
        }
        PublicDraw::Class { .. } | PublicDraw::Unit | PublicDraw::Normal => per_member,
    };
    if u32::try_from(counters).is_err() {
        return Err(Error::Invalid(format!("public_draws: {counters} draws per member (below 2³² of them)")));
    }
    step_values::require_draw_keys(&keys.iter().map(|k| [k.key[0], k.key[1]]).collect::<Vec<_>>())?;
    // No fill: the op writes every element.
    let mut out = Tensor::uninit(shape, device)?;
    dispatch("public_draws", device).public_draws(&mut out, draw, keys)?;
    Ok(out)
}

/// In place, `x ← (x + std·z) / divisor`: the noise of `add_gaussian_noise` and a division by
/// `divisor` in one pass over `x`, with the values of the two separate ops.
pub fn add_gaussian_noise_and_divide(x: &mut Tensor, std: f32, divisor: f32, key: &NoiseKey) -> Result<()> {
    let dev = device_of("add_gaussian_noise_and_divide", &[x])?;
    check_noise("add_gaussian_noise_and_divide", std, x.numel())?;
    if !(divisor.is_finite() && divisor > 0.0) {
        return Err(Error::Invalid(format!("add_gaussian_noise_and_divide: divisor {divisor} must be finite and > 0")));
    }
    noise_drawn(key, std)?;
    dispatch("add_gaussian_noise_and_divide", &dev).add_gaussian_noise_and_divide(x, std, divisor, key)
}

/// GS-WGAN's sanitiser over the rows (last axis) of `g`: each row clipped to norm `clip` (or, with
/// `RowNorm::Exactly`, rescaled to it), then `N(0, noise_std²)` added per element. Returns a new
/// tensor; see `Backend::sanitize_rows`.
pub fn sanitize_rows(g: &Tensor, clip: f32, rows: RowNorm, noise_std: f32, key: &NoiseKey) -> Result<Tensor> {
    let dev = device_of("sanitize_rows", &[g])?;
    ensure_shape!(g.rank() >= 1, "sanitize_rows", "needs rows along a last axis, got a scalar");
    if !(clip.is_finite() && clip > 0.0) {
        return Err(Error::Invalid(format!("sanitize_rows: clip bound {clip} must be finite and > 0")));
    }
    check_noise("sanitize_rows", noise_std, g.numel())?;
    noise_drawn(key, noise_std)?;
    dispatch("sanitize_rows", &dev).sanitize_rows(g, clip, rows, noise_std, key)
}

/// `x` repeated along its size-1 (or missing leading) dims to `shape`: the adjoint of `sum_to`.
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = broadcast_shape("broadcast_to", x.shape(), shape)?;
    ensure_shape!(out == shape, "broadcast_to", "cannot broadcast {:?} to {shape:?}", x.shape());
    if x.shape() == shape {
        return Ok(x.clone());
    }
    dispatch("broadcast_to", &x.device()).broadcast_to(x, shape)
}
