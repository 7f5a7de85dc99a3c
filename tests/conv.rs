//! `ops::conv2d` (with and without its fused bias), `conv2d_input_grad`, `conv2d_weight_grad` and
//! `conv_transpose2d` against the plain loop formulas in f64, at every geometry docs/algorithms.md uses (reduced channel counts), G > 1, batch 1 and
//! non-square inputs and kernels; the adjoint identities; PyTorch's output sizes; shape errors.
mod common;

use common::{assert_close_sums, expect_shape_error, randn_vec, tol, Sums};
use dpgan::backend::ops;
use dpgan::tensor::{Device, Tensor};
use rand::Rng;

/// One convolution: input `[G, B, C, H, W]`, weight `[G, O, C, KH, KW]`.
#[derive(Clone, Copy, Debug)]
struct Conv {
    groups: usize,
    batch: usize,
    in_channels: usize,
    in_h: usize,
    in_w: usize,
    out_channels: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    padding: usize,
}

/// PyTorch's `Conv2d` output size: `floor((n + 2·padding − k) / stride) + 1`.
fn torch_conv_out(n: usize, k: usize, stride: usize, padding: usize) -> usize {
    (n + 2 * padding - k) / stride + 1
}

/// PyTorch's `ConvTranspose2d` output size: `(n − 1)·stride − 2·padding + k + output_padding`.
fn torch_conv_transpose_out(n: usize, k: usize, stride: usize, padding: usize, output_padding: usize) -> usize {
    (n - 1) * stride + k + output_padding - 2 * padding
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    const fn new(g: usize, b: usize, c: usize, h: usize, w: usize, o: usize, k: (usize, usize), stride: usize, padding: usize) -> Self {
        Conv { groups: g, batch: b, in_channels: c, in_h: h, in_w: w, out_channels: o, kernel_h: k.0, kernel_w: k.1, stride, padding }
    }
    fn out_hw(&self) -> (usize, usize) {
        (
            torch_conv_out(self.in_h, self.kernel_h, self.stride, self.padding),
            torch_conv_out(self.in_w, self.kernel_w, self.stride, self.padding),
        )
    }
    fn x_shape(&self) -> [usize; 5] {
        [self.groups, self.batch, self.in_channels, self.in_h, self.in_w]
    }
    fn w_shape(&self) -> [usize; 5] {
        [self.groups, self.out_channels, self.in_channels, self.kernel_h, self.kernel_w]
    }
    fn y_shape(&self) -> [usize; 5] {
        let (ho, wo) = self.out_hw();
        [self.groups, self.batch, self.out_channels, ho, wo]
    }

    /// Calls `term(x_index, w_index, y_index)` for every product in
    /// `y[g,b,o,oy,ox] = Σ_{c,i,j} x[g,b,c, oy·s+i−p, ox·s+j−p] · w[g,o,c,i,j]`
    /// that does not fall on the zero padding.
    fn for_each_term(&self, mut term: impl FnMut(usize, usize, usize)) {
        let Conv { groups, batch, in_channels, in_h, in_w, out_channels, kernel_h, kernel_w, stride, padding } = *self;
        let (out_h, out_w) = self.out_hw();
        for g in 0..groups {
            for b in 0..batch {
                for o in 0..out_channels {
                    for oy in 0..out_h {
                        for ox in 0..out_w {
                            for c in 0..in_channels {
                                for i in 0..kernel_h {
                                    for j in 0..kernel_w {
                                        let (iy, ix) =
                                            ((oy * stride + i) as isize - padding as isize, (ox * stride + j) as isize - padding as isize);
                                        if iy < 0 || ix < 0 || iy as usize >= in_h || ix as usize >= in_w {
                                            continue;
                                        }
                                        let x_at = (((g * batch + b) * in_channels + c) * in_h + iy as usize) * in_w + ix as usize;
                                        let w_at = (((g * out_channels + o) * in_channels + c) * kernel_h + i) * kernel_w + j;
                                        let y_at = (((g * batch + b) * out_channels + o) * out_h + oy) * out_w + ox;
                                        term(x_at, w_at, y_at);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn forward_oracle(&self, x: &[f32], w: &[f32]) -> Sums {
        let mut y = Sums::zeros(self.y_shape().iter().product());
        self.for_each_term(|xi, wi, yi| y.add(yi, x[xi] as f64 * w[wi] as f64));
        y
    }
    fn input_grad_oracle(&self, dy: &[f32], w: &[f32]) -> Sums {
        let mut d_x = Sums::zeros(self.x_shape().iter().product());
        self.for_each_term(|xi, wi, yi| d_x.add(xi, dy[yi] as f64 * w[wi] as f64));
        d_x
    }
    fn weight_grad_oracle(&self, x: &[f32], dy: &[f32]) -> Sums {
        let mut d_w = Sums::zeros(self.w_shape().iter().product());
        self.for_each_term(|xi, wi, yi| d_w.add(wi, x[xi] as f64 * dy[yi] as f64));
        d_w
    }
}

/// The geometries of docs/algorithms.md at reduced channel counts, then shapes with tails.
const CONVS: &[(&str, Conv)] = &[
    ("GS-WGAN D conv1 5x5 s2 p2 28->14", Conv::new(1, 2, 1, 28, 28, 4, (5, 5), 2, 2)),
    ("GS-WGAN D conv2 5x5 s2 p2 14->7", Conv::new(1, 2, 4, 14, 14, 6, (5, 5), 2, 2)),
    ("GS-WGAN D conv3 5x5 s2 p2 7->4, G=3", Conv::new(3, 2, 6, 7, 7, 5, (5, 5), 2, 2)),
    ("ResNet G up-block 3x3 s1 p1 at 8", Conv::new(1, 2, 4, 8, 8, 5, (3, 3), 1, 1)),
    ("ResNet G up-block 3x3 s1 p1 at 16, G=2", Conv::new(2, 1, 3, 16, 16, 3, (3, 3), 1, 1)),
    ("ResNet G shortcut 1x1", Conv::new(1, 3, 4, 8, 8, 3, (1, 1), 1, 0)),
    ("ResNet G output 3x3 p0 32->30", Conv::new(1, 1, 3, 32, 32, 1, (3, 3), 1, 0)),
    ("LeNet conv1 5x5 p2 28->28", Conv::new(1, 2, 1, 28, 28, 3, (5, 5), 1, 2)),
    ("LeNet conv2 5x5 p0 14->10", Conv::new(1, 2, 3, 14, 14, 4, (5, 5), 1, 0)),
    ("batch 1, G=4", Conv::new(4, 1, 2, 6, 6, 3, (3, 3), 1, 1)),
    ("non-square input 9x13, 3x3 s2 p1", Conv::new(2, 2, 3, 9, 13, 4, (3, 3), 2, 1)),
    ("non-square kernel 3x5 p2", Conv::new(1, 2, 2, 10, 7, 3, (3, 5), 1, 2)),
    ("stride 3 that does not tile 11x8, 4x4 p1", Conv::new(1, 2, 2, 11, 8, 2, (4, 4), 3, 1)),
    ("kernel covers the padded input: 1x1 output", Conv::new(2, 2, 3, 5, 4, 2, (7, 6), 1, 1)),
    ("padding wider than half the kernel", Conv::new(1, 1, 2, 4, 5, 2, (2, 3), 2, 3)),
    ("1-pixel-wide input: some taps only ever see padding", Conv::new(1, 2, 2, 3, 1, 2, (3, 5), 1, 2)),
    ("stride 2 over padding only at the edges", Conv::new(1, 1, 1, 2, 2, 1, (5, 5), 2, 3)),
];

fn tensor32(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()
}

fn tensor64(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec_f64(data.iter().map(|&x| x as f64).collect(), shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

/// Random `x`, `w`, `dy` for a conv.
fn conv_inputs(rng: &mut impl Rng, conv: &Conv) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = randn_vec(rng, conv.x_shape().iter().product());
    let w = randn_vec(rng, conv.w_shape().iter().product());
    let dy = randn_vec(rng, conv.y_shape().iter().product());
    (x, w, dy)
}

/// The forward oracle plus a bias `[G, O]` per output channel (one more term per output).
fn with_bias(conv: &Conv, mut y: Sums, bias: &[f32]) -> Sums {
    let (ho, wo) = conv.out_hw();
    let (o, plane) = (conv.out_channels, ho * wo);
    for i in 0..y.value.len() {
        let (g, channel) = (i / (conv.batch * o * plane), i / plane % o);
        y.add(i, bias[g * o + channel] as f64);
    }
    y
}

/// `conv2d_bias` against the oracle and, bit for bit, against `conv2d` followed by the broadcast
/// add it replaces (the epilogue adds the bias to the same finished sum, rounding once).
fn check_conv_bias(name: &str, conv: &Conv, x: &Tensor, w: &Tensor, bias: &[f32], expected_y: &Sums, tolerance: f64) {
    let (s, p) = (conv.stride, conv.padding);
    let device = x.device();
    let bias_t = match x.dtype() {
        dpgan::tensor::DType::F64 => tensor64(bias, &[conv.groups, conv.out_channels]),
        dpgan::tensor::DType::F32 => Tensor::from_vec(bias.to_vec(), &[conv.groups, conv.out_channels], &device).unwrap(),
    };
    let fused = ops::conv2d_bias(x, w, &bias_t, s, p).unwrap();
    assert_eq!(fused.shape(), conv.y_shape(), "{name}: conv2d_bias shape");
    assert_close_sums(&format!("{name}: conv2d_bias {device:?}"), &values(&fused), &with_bias(conv, expected_y.clone(), bias), tolerance);
    let bias5 = bias_t.reshape(&[conv.groups, 1, conv.out_channels, 1, 1]).unwrap();
    let separate = ops::binary(dpgan::backend::BinaryOp::Add, &ops::conv2d(x, w, s, p).unwrap(), &bias5).unwrap();
    let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<u64>>();
    assert_eq!(bits(&fused), bits(&separate), "{name}: conv2d_bias against conv2d + add on {device:?}");
}

/// The three ops on one case, in f32 (tolerance F32_REDUCTION: every output is a sum of at most
/// C·KH·KW, O·KH·KW or B·HO·WO ≤ 1,568 products) and in f64 (tol::F64_TIGHT).
fn check_conv_ops(name: &str, conv: &Conv, rng: &mut impl Rng) {
    let (x, w, dy) = conv_inputs(rng, conv);
    let bias = randn_vec(rng, conv.groups * conv.out_channels);
    let (xs, ws, ys) = (conv.x_shape(), conv.w_shape(), conv.y_shape());
    let expected_y = conv.forward_oracle(&x, &w);
    let expected_dx = conv.input_grad_oracle(&dy, &w);
    let expected_dw = conv.weight_grad_oracle(&x, &dy);
    let (s, p, in_hw, k_hw) = (conv.stride, conv.padding, (conv.in_h, conv.in_w), (conv.kernel_h, conv.kernel_w));

    for (dtype, tensor, tolerance) in
        [("f32", tensor32 as fn(&[f32], &[usize]) -> Tensor, tol::F32_REDUCTION), ("f64", tensor64, tol::F64_TIGHT)]
    {
        let (xt, wt, dyt) = (tensor(&x, &xs), tensor(&w, &ws), tensor(&dy, &ys));
        let y = ops::conv2d(&xt, &wt, s, p).unwrap();
        assert_eq!(y.shape(), ys, "{name}: conv2d output shape (PyTorch's formula)");
        assert_close_sums(&format!("{name}: conv2d {dtype}"), &values(&y), &expected_y, tolerance);
        check_conv_bias(&format!("{name} {dtype}"), conv, &xt, &wt, &bias, &expected_y, tolerance);

        let d_x = ops::conv2d_input_grad(&dyt, &wt, in_hw, s, p).unwrap();
        assert_eq!(d_x.shape(), xs, "{name}: conv2d_input_grad shape");
        assert_close_sums(&format!("{name}: conv2d_input_grad {dtype}"), &values(&d_x), &expected_dx, tolerance);

        let d_w = ops::conv2d_weight_grad(&xt, &dyt, k_hw, s, p).unwrap();
        assert_eq!(d_w.shape(), ws, "{name}: conv2d_weight_grad shape");
        assert_close_sums(&format!("{name}: conv2d_weight_grad {dtype}"), &values(&d_w), &expected_dw, tolerance);
    }
}

#[test]
fn conv_ops_match_the_loop_formulas_at_every_spec_geometry() {
    let mut rng = common::rng("conv_ops_match_the_loop_formulas_at_every_spec_geometry");
    for (name, conv) in CONVS {
        check_conv_ops(name, conv, &mut rng);
    }
}

/// Random small geometries (kernel 1–6, stride 1–3, padding 0–3, sizes 1–9, non-square): every
/// edge of the padding arithmetic, with invalid ones required to be errors.
#[test]
fn conv_ops_match_the_loop_formulas_on_random_geometries() {
    let mut rng = common::rng("conv_ops_match_the_loop_formulas_on_random_geometries");
    let mut checked = 0;
    while checked < 150 {
        let conv = Conv::new(
            rng.random_range(1..=2),
            rng.random_range(1..=3),
            rng.random_range(1..=3),
            rng.random_range(1..=9),
            rng.random_range(1..=9),
            rng.random_range(1..=3),
            (rng.random_range(1..=6), rng.random_range(1..=6)),
            rng.random_range(1..=3),
            rng.random_range(0..=3),
        );
        let fits = conv.in_h + 2 * conv.padding >= conv.kernel_h && conv.in_w + 2 * conv.padding >= conv.kernel_w;
        if !fits {
            let (x, w) = (common::randn(&mut rng, &conv.x_shape()), common::randn(&mut rng, &conv.w_shape()));
            expect_shape_error(&format!("{conv:?}"), ops::conv2d(&x, &w, conv.stride, conv.padding));
            continue;
        }
        check_conv_ops(&format!("{conv:?}"), &conv, &mut rng);
        checked += 1;
    }
}

/// Large enough (G·B·O·C·KH·KW·HO·WO in the tens of millions) for any work-splitting the backend
/// does over groups and batch to take effect.
#[test]
fn conv_ops_match_the_loop_formulas_on_a_large_batch() {
    let mut rng = common::rng("conv_ops_match_the_loop_formulas_on_a_large_batch");
    for (name, conv) in [
        ("G=2, B=13, 5x5 s2 p2 28->14", Conv::new(2, 13, 6, 28, 28, 8, (5, 5), 2, 2)),
        ("G=1, B=9, 3x3 p1 16x16", Conv::new(1, 9, 16, 16, 16, 16, (3, 3), 1, 1)),
        ("G=5, B=3, 3x3 p1 8x8", Conv::new(5, 3, 16, 8, 8, 12, (3, 3), 1, 1)),
    ] {
        check_conv_ops(name, &conv, &mut rng);
    }
}

/// `(Σ a·b, ‖a‖·‖b‖)` in f64.
fn dot_and_scale(a: &[f64], b: &[f64]) -> (f64, f64) {
    let dot = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    (dot, norm(a) * norm(b))
}

/// `⟨conv2d(x, w), dy⟩ = ⟨x, conv2d_input_grad(dy, w)⟩ = ⟨w, conv2d_weight_grad(x, dy)⟩`, each
/// inner product summed in f64. The three differ only by the ops' own rounding, so the gap is
/// bounded by tol·‖op output‖·‖other operand‖ (Cauchy–Schwarz): F32_REDUCTION for f32 ops,
/// tol::F64_TIGHT for f64 ops.
#[test]
fn conv_adjoint_identities_hold() {
    let mut rng = common::rng("conv_adjoint_identities_hold");
    for (name, conv) in CONVS {
        let (x, w, dy) = conv_inputs(&mut rng, conv);
        let (xs, ws, ys) = (conv.x_shape(), conv.w_shape(), conv.y_shape());
        let (s, p) = (conv.stride, conv.padding);
        for (dtype, tensor, tolerance) in
            [("f32", tensor32 as fn(&[f32], &[usize]) -> Tensor, tol::F32_REDUCTION), ("f64", tensor64, tol::F64_TIGHT)]
        {
            let (xt, wt, dyt) = (tensor(&x, &xs), tensor(&w, &ws), tensor(&dy, &ys));
            let y = values(&ops::conv2d(&xt, &wt, s, p).unwrap());
            let d_x = values(&ops::conv2d_input_grad(&dyt, &wt, (conv.in_h, conv.in_w), s, p).unwrap());
            let d_w = values(&ops::conv2d_weight_grad(&xt, &dyt, (conv.kernel_h, conv.kernel_w), s, p).unwrap());
            let (y_dy, scale_y) = dot_and_scale(&y, &values(&dyt));
            let (x_dx, scale_x) = dot_and_scale(&values(&xt), &d_x);
            let (w_dw, scale_w) = dot_and_scale(&values(&wt), &d_w);
            let scale = scale_y.max(scale_x).max(scale_w);
            for (pair, a, b) in [("<y,dy> vs <x,dx>", y_dy, x_dx), ("<y,dy> vs <w,dw>", y_dy, w_dw)] {
                let gap = (a - b).abs() / scale;
                assert!(gap <= tolerance, "{name} {dtype}: {pair}: {a} vs {b}, gap {gap:.3e} relative to {scale:.3e} > {tolerance:.1e}");
            }
        }
    }
}

/// One transposed convolution: input `[G, B, C_in, H, W]`, weight `[G, C_in, C_out, KH, KW]`.
#[derive(Clone, Copy, Debug)]
struct ConvTranspose {
    groups: usize,
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    in_h: usize,
    in_w: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
    output_padding: usize,
}

impl ConvTranspose {
    fn out_hw(&self) -> (usize, usize) {
        let Self { in_h, in_w, kernel, stride, padding, output_padding, .. } = *self;
        (
            torch_conv_transpose_out(in_h, kernel.0, stride, padding, output_padding),
            torch_conv_transpose_out(in_w, kernel.1, stride, padding, output_padding),
        )
    }
    fn x_shape(&self) -> [usize; 5] {
        [self.groups, self.batch, self.in_channels, self.in_h, self.in_w]
    }
    fn w_shape(&self) -> [usize; 5] {
        [self.groups, self.in_channels, self.out_channels, self.kernel.0, self.kernel.1]
    }
    fn y_shape(&self) -> [usize; 5] {
        let (h, w) = self.out_hw();
        [self.groups, self.batch, self.out_channels, h, w]
    }

    /// PyTorch's definition: every input pixel scatters its kernel-weighted copy,
    /// `y[g,b,co, iy·s+i−p, ix·s+j−p] += x[g,b,ci,iy,ix] · w[g,ci,co,i,j]`, dropping what lands
    /// outside the output.
    fn oracle(&self, x: &[f32], w: &[f32]) -> Sums {
        let Self { groups, batch, in_channels, out_channels, in_h, in_w, kernel: (kh, kw), stride, padding, .. } = *self;
        let (out_h, out_w) = self.out_hw();
        let mut y = Sums::zeros(self.y_shape().iter().product());
        for g in 0..groups {
            for b in 0..batch {
                for ci in 0..in_channels {
                    for iy in 0..in_h {
                        for ix in 0..in_w {
                            let x_v = x[(((g * batch + b) * in_channels + ci) * in_h + iy) * in_w + ix] as f64;
                            for co in 0..out_channels {
                                for i in 0..kh {
                                    for j in 0..kw {
                                        let (oy, ox) =
                                            ((iy * stride + i) as isize - padding as isize, (ix * stride + j) as isize - padding as isize);
                                        if oy < 0 || ox < 0 || oy as usize >= out_h || ox as usize >= out_w {
                                            continue;
                                        }
                                        let w_v = w[(((g * in_channels + ci) * out_channels + co) * kh + i) * kw + j] as f64;
                                        y.add(
                                            (((g * batch + b) * out_channels + co) * out_h + oy as usize) * out_w + ox as usize,
                                            x_v * w_v,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }
}

#[allow(clippy::too_many_arguments)]
const fn conv_t(
    g: usize,
    b: usize,
    c_in: usize,
    c_out: usize,
    hw: (usize, usize),
    k: (usize, usize),
    s: usize,
    p: usize,
    op: usize,
) -> ConvTranspose {
    ConvTranspose {
        groups: g,
        batch: b,
        in_channels: c_in,
        out_channels: c_out,
        in_h: hw.0,
        in_w: hw.1,
        kernel: k,
        stride: s,
        padding: p,
        output_padding: op,
    }
}

const CONV_TRANSPOSES: &[(&str, ConvTranspose, (usize, usize))] = &[
    ("DCGAN G convT1 5x5 s1 4->8", conv_t(1, 2, 6, 4, (4, 4), (5, 5), 1, 0, 0), (8, 8)),
    ("DCGAN G convT2 5x5 s1 7->11", conv_t(1, 2, 4, 3, (7, 7), (5, 5), 1, 0, 0), (11, 11)),
    ("DCGAN G convT3 8x8 s2 11->28", conv_t(1, 2, 3, 1, (11, 11), (8, 8), 2, 0, 0), (28, 28)),
    ("G=3 batch 1, 8x8 s2 11->28", conv_t(3, 1, 2, 2, (11, 11), (8, 8), 2, 0, 0), (28, 28)),
    ("4x4 s2 p1 output_padding 1, non-square", conv_t(2, 2, 3, 2, (5, 3), (4, 4), 2, 1, 1), (11, 7)),
    ("3x5 kernel s3 p2 output_padding 2", conv_t(1, 2, 2, 3, (4, 6), (3, 5), 3, 2, 2), (10, 18)),
];

#[test]
fn conv_transpose_matches_its_definition_and_is_the_conv_input_grad() {
    let mut rng = common::rng("conv_transpose_matches_its_definition_and_is_the_conv_input_grad");
    for (name, ct, spec_hw) in CONV_TRANSPOSES {
        assert_eq!(ct.out_hw(), *spec_hw, "{name}: PyTorch's output size");
        let x = randn_vec(&mut rng, ct.x_shape().iter().product());
        let w = randn_vec(&mut rng, ct.w_shape().iter().product());
        let expected = ct.oracle(&x, &w);
        let (s, p, op) = (ct.stride, ct.padding, ct.output_padding);
        // F32_REDUCTION: each output sums at most C_in·KH·KW products.
        for (dtype, tensor, tolerance) in
            [("f32", tensor32 as fn(&[f32], &[usize]) -> Tensor, tol::F32_REDUCTION), ("f64", tensor64, tol::F64_TIGHT)]
        {
            let (xt, wt) = (tensor(&x, &ct.x_shape()), tensor(&w, &ct.w_shape()));
            let y = ops::conv_transpose2d(&xt, &wt, s, p, op).unwrap();
            assert_eq!(y.shape(), ct.y_shape(), "{name}: output shape");
            assert_close_sums(&format!("{name}: conv_transpose2d {dtype}"), &values(&y), &expected, tolerance);
            let as_input_grad = ops::conv2d_input_grad(&xt, &wt, ct.out_hw(), s, p).unwrap();
            assert_eq!(values(&as_input_grad), values(&y), "{name} {dtype}: conv_transpose2d is conv2d_input_grad");
        }
    }
}

#[test]
fn conv_shape_errors_are_errors_not_panics() {
    let mut rng = common::rng("conv_shape_errors_are_errors_not_panics");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let x = t(&[2, 3, 4, 9, 9]);
    let w = t(&[2, 5, 4, 3, 3]);
    let dy = t(&[2, 3, 5, 9, 9]); // conv2d(x, w, 1, 1)
    assert_eq!(ops::conv2d(&x, &w, 1, 1).unwrap().shape(), dy.shape());

    expect_shape_error("conv2d: input rank 4", ops::conv2d(&t(&[3, 4, 9, 9]), &w, 1, 1));
    expect_shape_error("conv2d: weight rank 4", ops::conv2d(&x, &t(&[5, 4, 3, 3]), 1, 1));
    expect_shape_error("conv2d: group counts", ops::conv2d(&x, &t(&[1, 5, 4, 3, 3]), 1, 1));
    expect_shape_error("conv2d: channels", ops::conv2d(&x, &t(&[2, 5, 3, 3, 3]), 1, 1));
    expect_shape_error("conv2d: kernel larger than padded input", ops::conv2d(&x, &t(&[2, 5, 4, 12, 3]), 1, 1));
    expect_shape_error("conv2d: kernel wider than padded input", ops::conv2d(&x, &t(&[2, 5, 4, 3, 10]), 1, 0));
    expect_shape_error("conv2d: stride 0", ops::conv2d(&x, &w, 0, 1));
    expect_shape_error("conv2d: empty kernel", ops::conv2d(&x, &t(&[2, 5, 4, 0, 0]), 1, 1));
    let x64 = Tensor::from_vec_f64(vec![0.0; x.numel()], x.shape()).unwrap();
    expect_shape_error("conv2d: dtypes", ops::conv2d(&x64, &w, 1, 1));

    expect_shape_error("input_grad: dy rank 4", ops::conv2d_input_grad(&t(&[3, 5, 9, 9]), &w, (9, 9), 1, 1));
    expect_shape_error("input_grad: dy height", ops::conv2d_input_grad(&dy, &w, (10, 9), 1, 1));
    expect_shape_error("input_grad: dy channels", ops::conv2d_input_grad(&t(&[2, 3, 4, 9, 9]), &w, (9, 9), 1, 1));
    expect_shape_error("input_grad: dy groups", ops::conv2d_input_grad(&t(&[1, 3, 5, 9, 9]), &w, (9, 9), 1, 1));
    expect_shape_error("input_grad: input smaller than kernel", ops::conv2d_input_grad(&t(&[2, 3, 5, 1, 1]), &w, (1, 1), 1, 0));
    expect_shape_error("input_grad: stride 0", ops::conv2d_input_grad(&dy, &w, (9, 9), 0, 1));

    expect_shape_error("weight_grad: dy batch", ops::conv2d_weight_grad(&x, &t(&[2, 2, 5, 9, 9]), (3, 3), 1, 1));
    expect_shape_error("weight_grad: dy groups", ops::conv2d_weight_grad(&x, &t(&[1, 3, 5, 9, 9]), (3, 3), 1, 1));
    expect_shape_error("weight_grad: dy size for kernel", ops::conv2d_weight_grad(&x, &dy, (5, 5), 1, 1));
    expect_shape_error("weight_grad: kernel larger than input", ops::conv2d_weight_grad(&x, &dy, (12, 12), 1, 1));
    expect_shape_error("weight_grad: x rank 4", ops::conv2d_weight_grad(&t(&[3, 4, 9, 9]), &dy, (3, 3), 1, 1));

    let xt = t(&[1, 2, 3, 4, 4]);
    let wt = t(&[1, 3, 2, 5, 5]);
    assert_eq!(ops::conv_transpose2d(&xt, &wt, 2, 1, 1).unwrap().shape(), [1, 2, 2, 10, 10]);
    expect_shape_error("conv_transpose2d: output_padding = stride", ops::conv_transpose2d(&xt, &wt, 2, 1, 2));
    expect_shape_error("conv_transpose2d: stride 0", ops::conv_transpose2d(&xt, &wt, 0, 0, 0));
    expect_shape_error("conv_transpose2d: weight in-channels", ops::conv_transpose2d(&xt, &t(&[1, 2, 2, 5, 5]), 1, 0, 0));
    expect_shape_error("conv_transpose2d: group counts", ops::conv_transpose2d(&xt, &t(&[2, 3, 2, 5, 5]), 1, 0, 0));
    expect_shape_error("conv_transpose2d: x rank 4", ops::conv_transpose2d(&t(&[2, 3, 4, 4]), &wt, 1, 0, 0));
    expect_shape_error(
        "conv_transpose2d: padding eats the output",
        ops::conv_transpose2d(&t(&[1, 1, 3, 1, 1]), &t(&[1, 3, 2, 3, 3]), 1, 2, 0),
    );
    // Only the width runs out: a 5×1 kernel on a 1-pixel-wide input with padding 1.
    expect_shape_error(
        "conv_transpose2d: padding eats the width",
        ops::conv_transpose2d(&t(&[1, 1, 3, 4, 1]), &t(&[1, 3, 2, 5, 1]), 1, 1, 0),
    );
    expect_shape_error("conv_transpose2d: empty input", ops::conv_transpose2d(&t(&[1, 1, 3, 0, 4]), &wt, 1, 0, 0));
    expect_shape_error("conv_transpose2d: empty kernel", ops::conv_transpose2d(&xt, &t(&[1, 3, 2, 0, 0]), 1, 0, 0));
}

/// Empty batch and zero channels are legal and give empty or zero outputs of the right shape.
#[test]
fn conv_empty_batch_and_channels() {
    let mut rng = common::rng("conv_empty_batch_and_channels");
    for (name, conv) in [
        ("batch 0", Conv::new(2, 0, 3, 7, 7, 4, (3, 3), 1, 1)),
        ("in-channels 0", Conv::new(1, 2, 0, 7, 5, 4, (3, 3), 2, 1)),
        ("out-channels 0", Conv::new(1, 2, 3, 7, 5, 0, (3, 3), 2, 1)),
        ("groups 0", Conv::new(0, 2, 3, 7, 5, 2, (3, 3), 2, 1)),
    ] {
        check_conv_ops(name, &conv, &mut rng);
    }
}

/// The three conv ops on `dev` against the f64 loop formulas, measured against Σ|terms| (a single
/// output may cancel to near 0). Inputs are uploaded, outputs stay on the device until compared.
fn check_cuda_conv_ops(name: &str, conv: &Conv, dev: &Device, rng: &mut impl Rng, tolerance: f64) {
    let (x, w, dy) = conv_inputs(rng, conv);
    let bias = randn_vec(rng, conv.groups * conv.out_channels);
    let (xs, ws, ys) = (conv.x_shape(), conv.w_shape(), conv.y_shape());
    let (s, p) = (conv.stride, conv.padding);
    let on_dev = |data: &[f32], shape: &[usize]| Tensor::from_vec(data.to_vec(), shape, dev).unwrap();
    let (xt, wt, dyt) = (on_dev(&x, &xs), on_dev(&w, &ws), on_dev(&dy, &ys));

    let y = ops::conv2d(&xt, &wt, s, p).unwrap();
    assert_eq!(y.shape(), ys, "{name}: conv2d shape");
    let expected_y = conv.forward_oracle(&x, &w);
    assert_close_sums(&format!("{name}: conv2d cuda"), &values(&y), &expected_y, tolerance);
    check_conv_bias(name, conv, &xt, &wt, &bias, &expected_y, tolerance);

    let d_x = ops::conv2d_input_grad(&dyt, &wt, (conv.in_h, conv.in_w), s, p).unwrap();
    assert_eq!(d_x.shape(), xs, "{name}: conv2d_input_grad shape");
    assert_close_sums(&format!("{name}: conv2d_input_grad cuda"), &values(&d_x), &conv.input_grad_oracle(&dy, &w), tolerance);

    let d_w = ops::conv2d_weight_grad(&xt, &dyt, (conv.kernel_h, conv.kernel_w), s, p).unwrap();
    assert_eq!(d_w.shape(), ws, "{name}: conv2d_weight_grad shape");
    assert_close_sums(&format!("{name}: conv2d_weight_grad cuda"), &values(&d_w), &conv.weight_grad_oracle(&x, &dy), tolerance);
}

/// Every geometry of the CPU tests (docs/algorithms.md's at reduced channel counts, G > 1, batch 1, non-square,
/// strides that do not tile, kernels that only see padding) and random small geometries. Sums of
/// at most C·KK, O·KK or B·P ≤ 1,568 products: F32_REDUCTION.
#[test]
fn conv_cuda_matches_the_loop_formulas_on_every_cpu_geometry() {
    common::on_cuda("conv_cuda_matches_the_loop_formulas_on_every_cpu_geometry", |dev| {
        let mut rng = common::rng("conv_cuda_matches_the_loop_formulas_on_every_cpu_geometry");
        for (name, conv) in CONVS {
            check_cuda_conv_ops(name, conv, dev, &mut rng, tol::F32_REDUCTION);
        }
        let mut checked = 0;
        while checked < 100 {
            let conv = Conv::new(
                rng.random_range(1..=3),
                rng.random_range(1..=3),
                rng.random_range(1..=5),
                rng.random_range(1..=11),
                rng.random_range(1..=11),
                rng.random_range(1..=5),
                (rng.random_range(1..=6), rng.random_range(1..=6)),
                rng.random_range(1..=3),
                rng.random_range(0..=3),
            );
            if conv.in_h + 2 * conv.padding >= conv.kernel_h && conv.in_w + 2 * conv.padding >= conv.kernel_w {
                check_cuda_conv_ops(&format!("{conv:?}"), &conv, dev, &mut rng, tol::F32_REDUCTION);
                checked += 1;
            }
        }
    });
}

/// The conv geometries of docs/algorithms.md at their full channel counts (batch reduced so that the f64 oracle stays
/// quick), plus tails of the 64-wide tiles in channels and positions. The weight gradient sums up to
/// B·HO·WO = 2,048 products and the forward up to C·KK = 3,200 (conv3): F32_REDUCTION.
#[test]
fn conv_cuda_matches_the_loop_formulas_at_full_spec_channels() {
    common::on_cuda("conv_cuda_matches_the_loop_formulas_at_full_spec_channels", |dev| {
        let mut rng = common::rng("conv_cuda_matches_the_loop_formulas_at_full_spec_channels");
        for (name, conv) in [
            ("GS-WGAN D conv1 1->64 5x5 s2 p2 28->14, B=8", Conv::new(1, 8, 1, 28, 28, 64, (5, 5), 2, 2)),
            ("GS-WGAN D conv2 64->128 5x5 s2 p2 14->7, B=2", Conv::new(1, 2, 64, 14, 14, 128, (5, 5), 2, 2)),
            ("GS-WGAN D conv3 128->256 5x5 s2 p2 7->4, B=2", Conv::new(1, 2, 128, 7, 7, 256, (5, 5), 2, 2)),
            ("GS-WGAN D conv1 G=3 groups, B=1", Conv::new(3, 1, 1, 28, 28, 64, (5, 5), 2, 2)),
            ("ResNet G up-block 256->256 3x3 p1 at 8, B=1", Conv::new(1, 1, 256, 8, 8, 256, (3, 3), 1, 1)),
            ("ResNet G up-block 256->256 3x3 p1 at 32 (1 image, 32 channels)", Conv::new(1, 1, 32, 32, 32, 32, (3, 3), 1, 1)),
            ("ResNet G shortcut 256->256 1x1 at 8", Conv::new(1, 2, 256, 8, 8, 256, (1, 1), 1, 0)),
            ("ResNet G output 256->1 3x3 p0 32->30, B=1", Conv::new(1, 1, 256, 32, 32, 1, (3, 3), 1, 0)),
            ("LeNet conv1 1->6 5x5 p2 28->28, B=4", Conv::new(1, 4, 1, 28, 28, 6, (5, 5), 1, 2)),
            ("LeNet conv2 6->16 5x5 p0 14->10, B=4", Conv::new(1, 4, 6, 14, 14, 16, (5, 5), 1, 0)),
            ("tails: 65->67 channels 3x3 s2 p1 13x11, G=2", Conv::new(2, 3, 65, 13, 11, 67, (3, 3), 2, 1)),
        ] {
            check_cuda_conv_ops(name, &conv, dev, &mut rng, tol::F32_REDUCTION);
        }
    });
}

/// Large batches, where the weight gradient's K = B·HO·WO is split across blocks and the slices
/// added in a second pass; K up to 32·196 = 6,272 and 16·1024: F32_LONG (long f32 reductions).
#[test]
fn conv_cuda_weight_grad_with_split_k_matches_the_loop_formulas() {
    common::on_cuda("conv_cuda_weight_grad_with_split_k_matches_the_loop_formulas", |dev| {
        let mut rng = common::rng("conv_cuda_weight_grad_with_split_k_matches_the_loop_formulas");
        for (name, conv) in [
            ("GS-WGAN D conv1 B=32", Conv::new(1, 32, 1, 28, 28, 64, (5, 5), 2, 2)),
            ("3x3 p1 at 32, B=16, 4 channels", Conv::new(1, 16, 4, 32, 32, 5, (3, 3), 1, 1)),
            ("G=2, 1x1, B=50", Conv::new(2, 50, 3, 10, 10, 2, (1, 1), 1, 0)),
        ] {
            check_cuda_conv_ops(name, &conv, dev, &mut rng, tol::F32_LONG);
        }
    });
}

/// Empty batch and zero channels on the device: the right shapes, zeros where a sum is empty (the
/// outputs start as NaN, so an unwritten element fails).
#[test]
fn conv_cuda_empty_batch_and_channels() {
    common::on_cuda("conv_cuda_empty_batch_and_channels", |dev| {
        let mut rng = common::rng("conv_cuda_empty_batch_and_channels");
        for (name, conv) in [
            ("batch 0", Conv::new(2, 0, 3, 7, 7, 4, (3, 3), 1, 1)),
            ("in-channels 0", Conv::new(1, 2, 0, 7, 5, 4, (3, 3), 2, 1)),
            ("out-channels 0", Conv::new(1, 2, 3, 7, 5, 0, (3, 3), 2, 1)),
            ("groups 0", Conv::new(0, 2, 3, 7, 5, 2, (3, 3), 2, 1)),
            ("empty input plane, output from padding only", Conv::new(1, 2, 3, 0, 4, 2, (3, 3), 1, 2)),
        ] {
            check_cuda_conv_ops(name, &conv, dev, &mut rng, tol::F32_REDUCTION);
        }
    });
}

/// `conv_transpose2d` on the device (the conv input-gradient kernel) against PyTorch's scatter
/// definition: the DCGAN generator's 5×5 s1 and 8×8 s2 layers at full and reduced channels, G > 1,
/// batch 1, output padding, non-square. Sums of at most C_in·KH·KW = 6,400 products (256 in, 5×5):
/// F32_REDUCTION.
#[test]
fn conv_transpose_cuda_matches_its_definition() {
    common::on_cuda("conv_transpose_cuda_matches_its_definition", |dev| {
        let mut rng = common::rng("conv_transpose_cuda_matches_its_definition");
        let full: &[(&str, ConvTranspose, (usize, usize))] = &[
            ("DCGAN G convT1 256->128 5x5 s1 4->8, B=2", conv_t(1, 2, 256, 128, (4, 4), (5, 5), 1, 0, 0), (8, 8)),
            ("DCGAN G convT2 128->64 5x5 s1 7->11, B=2", conv_t(1, 2, 128, 64, (7, 7), (5, 5), 1, 0, 0), (11, 11)),
            ("DCGAN G convT3 64->1 8x8 s2 11->28, B=3", conv_t(1, 3, 64, 1, (11, 11), (8, 8), 2, 0, 0), (28, 28)),
        ];
        for (name, ct, spec_hw) in CONV_TRANSPOSES.iter().chain(full) {
            assert_eq!(ct.out_hw(), *spec_hw, "{name}: PyTorch's output size");
            let x = randn_vec(&mut rng, ct.x_shape().iter().product());
            let w = randn_vec(&mut rng, ct.w_shape().iter().product());
            let expected = ct.oracle(&x, &w);
            let xt = Tensor::from_vec(x, &ct.x_shape(), dev).unwrap();
            let wt = Tensor::from_vec(w, &ct.w_shape(), dev).unwrap();
            let y = ops::conv_transpose2d(&xt, &wt, ct.stride, ct.padding, ct.output_padding).unwrap();
            assert_eq!(y.shape(), ct.y_shape(), "{name}: output shape");
            assert_close_sums(&format!("{name}: conv_transpose2d cuda"), &values(&y), &expected, tol::F32_REDUCTION);
        }
    });
}

/// With TF32 allowed on this thread, the convolutions large enough for a 64 × 64 tile run on tensor
/// cores: forward, input gradient (per stride phase) and weight gradient (split K at B = 32).
/// Inputs rounded to a 10-bit mantissa: TENSOR_CORE.
#[test]
fn conv_cuda_tf32_matches_the_loop_formulas_within_tensor_core_tolerance() {
    common::on_cuda("conv_cuda_tf32_matches_the_loop_formulas_within_tensor_core_tolerance", |dev| {
        let mut rng = common::rng("conv_cuda_tf32_matches_the_loop_formulas_within_tensor_core_tolerance");
        dpgan::backend::cuda::set_allow_tf32(true);
        for (name, conv) in [
            ("GS-WGAN D conv2 64->128 5x5 s2 p2 14->7, B=2", Conv::new(1, 2, 64, 14, 14, 128, (5, 5), 2, 2)),
            ("ResNet G up-block 256->256 3x3 p1 at 8, B=1", Conv::new(1, 1, 256, 8, 8, 256, (3, 3), 1, 1)),
            ("tails: 65->67 channels 3x3 s2 p1 13x11, G=2", Conv::new(2, 3, 65, 13, 11, 67, (3, 3), 2, 1)),
            ("weight grad with split K: 8->64 3x3 p1 at 14, B=16", Conv::new(1, 16, 8, 14, 14, 64, (3, 3), 1, 1)),
        ] {
            check_cuda_conv_ops(name, &conv, dev, &mut rng, tol::TENSOR_CORE);
        }
        dpgan::backend::cuda::set_allow_tf32(false);
    });
}

/// Through the cp.async pipeline, on 64 × 64 and on 128 × 128 tiles, the TF32 convolutions are the
/// register-staged ones bit for bit (the same rounded inputs, products and order): forward with and
/// without its bias, input gradient per stride phase, weight gradient with a split K, tails and
/// G > 1, on outputs poisoned with NaN. The last two shapes fill wide tiles in every op (the others
/// take the 64 × 64 pipeline under `Wide` where M or N is below 128).
#[test]
fn conv_cuda_tf32_pipelines_equal_the_register_staged_kernels_bit_for_bit() {
    use dpgan::backend::cuda::{Tf32Pipeline, Tf32PipelineScope, Tf32Scope};
    common::on_cuda("conv_cuda_tf32_pipelines_equal_the_register_staged_kernels_bit_for_bit", |dev| {
        let mut rng = common::rng("conv_cuda_tf32_pipelines_equal_the_register_staged_kernels_bit_for_bit");
        let _tf32 = Tf32Scope::new(true);
        for (name, conv) in [
            ("GS-WGAN D conv2 64->128 5x5 s2 p2 14->7, B=2", Conv::new(1, 2, 64, 14, 14, 128, (5, 5), 2, 2)),
            ("ResNet G up-block 256->256 3x3 p1 at 8, B=1", Conv::new(1, 1, 256, 8, 8, 256, (3, 3), 1, 1)),
            ("tails: 65->67 channels 3x3 s2 p1 13x11, G=2", Conv::new(2, 3, 65, 13, 11, 67, (3, 3), 2, 1)),
            ("weight grad with split K: 8->64 3x3 p1 at 14, B=16", Conv::new(1, 16, 8, 14, 14, 64, (3, 3), 1, 1)),
            ("ResNet G 256->256 3x3 p1 at 16, B=2", Conv::new(1, 2, 256, 16, 16, 256, (3, 3), 1, 1)),
            ("wide tails: 130->140 channels 3x3 s1 p1 9x9, G=2", Conv::new(2, 2, 130, 9, 9, 140, (3, 3), 1, 1)),
        ] {
            let (x, w, dy) = conv_inputs(&mut rng, &conv);
            let bias = randn_vec(&mut rng, conv.groups * conv.out_channels);
            let on_dev = |data: &[f32], shape: &[usize]| Tensor::from_vec(data.to_vec(), shape, dev).unwrap();
            let (xt, wt, dyt) = (on_dev(&x, &conv.x_shape()), on_dev(&w, &conv.w_shape()), on_dev(&dy, &conv.y_shape()));
            let bt = on_dev(&bias, &[conv.groups, conv.out_channels]);
            let (s, p) = (conv.stride, conv.padding);
            let run = |pipeline| {
                let _scope = Tf32PipelineScope::new(pipeline);
                let outputs = [
                    ops::conv2d(&xt, &wt, s, p).unwrap(),
                    ops::conv2d_bias(&xt, &wt, &bt, s, p).unwrap(),
                    ops::conv2d_input_grad(&dyt, &wt, (conv.in_h, conv.in_w), s, p).unwrap(),
                    ops::conv2d_weight_grad(&xt, &dyt, (conv.kernel_h, conv.kernel_w), s, p).unwrap(),
                ];
                outputs.map(|t| t.to_vec().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>())
            };
            let staged = run(Tf32Pipeline::RegisterStaged);
            for pipeline in [Tf32Pipeline::CpAsync, Tf32Pipeline::Wide] {
                let piped = run(pipeline);
                for (k, what) in ["conv2d", "conv2d with bias", "input grad", "weight grad"].iter().enumerate() {
                    assert!(staged[k].iter().all(|&v| f32::from_bits(v).is_finite()), "{name}: {what}");
                    assert_eq!(piped[k], staged[k], "{pipeline:?}, {name}: {what}");
                }
            }
        }
    });
}
