//! The benchmark's cases: every kernel family at the shapes DP-CGAN and GS-WGAN use, each with
//! its operands (a small instance for validation, the full one for timing), the op, and its FLOP
//! and byte counts at full size, stated per case.
use rand_chacha::ChaCha8Rng;

use super::{gemm_bytes, gemm_flops, ConvShape, F32};
use crate::backend::cuda::Tf32Pipeline;
use crate::backend::{ops, AdamParams, BinaryOp, RowNorm, SgdParams, UnaryOp};
use crate::dp::noise::{NoiseMode, NoiseSource};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// The GS-WGAN ResNet generator's parameter count: the size of the optimiser and noise cases.
pub const RESNET_G_PARAMS: usize = 3_826_177;

pub(crate) type Make = Box<dyn Fn(&mut ChaCha8Rng, Size) -> Result<Vec<Tensor>>>;
pub(crate) type Op = Box<dyn Fn(&mut [Tensor]) -> Result<Vec<Tensor>>>;

/// Which instance `make` builds: the small one checked against the CPU, or the timed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Small,
    Full,
}

/// One kernel case: how to build its operands, the op, and its FLOP and byte counts at full size.
pub struct Case {
    pub name: String,
    pub family: &'static str,
    pub shape: String,
    pub flops: Option<f64>,
    pub bytes: f64,
    pub bytes_note: String,
    /// On TF32 tensor cores, fed through this pipeline; `None`: f32.
    pub tf32: Option<Tf32Pipeline>,
    pub(crate) make: Make,
    pub(crate) op: Op,
}

pub(crate) fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Result<Tensor> {
    Tensor::randn(shape, rng, &Device::Cpu)
}

pub(crate) fn pick(size: Size, small: usize, full: usize) -> usize {
    if size == Size::Small {
        small
    } else {
        full
    }
}

pub(crate) fn gemm_case(name: String, shape: String, (m, n, k): (usize, usize, usize), make: Make, op: Op) -> Case {
    let bytes_note = format!("A [{m},{k}] and B [{k},{n}] read once, C [{m},{n}] written once");
    Case { name, family: "gemm", shape, flops: Some(gemm_flops(m, n, k)), bytes: gemm_bytes(m, n, k), bytes_note, tf32: None, make, op }
}

/// DP-CGAN's linear layers at B = 600: forward `x·Wᵀ + b` (the bias in the epilogue), input
/// gradient `dy·W`, weight gradient `dyᵀ·x`.
fn linear_cases(cases: &mut Vec<Case>) {
    const B: usize = 600;
    for (net, i, o) in [("D", 794, 128), ("D", 128, 1), ("G", 110, 128), ("G", 128, 784)] {
        let base = format!("dp-cgan {net} linear {i}→{o}");
        let x_w_b = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
            let b = pick(s, 8, B);
            Ok(vec![randn(rng, &[1, b, i])?, randn(rng, &[1, o, i])?, randn(rng, &[1, o])?])
        };
        let fwd: Op = Box::new(|t| Ok(vec![ops::linear(&t[0], &t[1], &t[2])?]));
        cases.push(gemm_case(format!("{base} fwd"), format!("x[{B},{i}]·W[{o},{i}]ᵀ + b[{o}]"), (B, o, i), Box::new(x_w_b), fwd));
        let dy_w = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
            let b = pick(s, 8, B);
            Ok(vec![randn(rng, &[1, b, o])?, randn(rng, &[1, o, i])?])
        };
        let dx: Op = Box::new(|t| Ok(vec![ops::matmul(&t[0], &t[1], false, false)?]));
        cases.push(gemm_case(format!("{base} dx"), format!("dy[{B},{o}]·W[{o},{i}]"), (B, i, o), Box::new(dy_w), dx));
        let dy_x = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
            let b = pick(s, 8, B);
            Ok(vec![randn(rng, &[1, b, o])?, randn(rng, &[1, b, i])?])
        };
        let dw: Op = Box::new(|t| Ok(vec![ops::matmul(&t[0], &t[1], true, false)?]));
        cases.push(gemm_case(format!("{base} dW"), format!("dy[{B},{o}]ᵀ·x[{B},{i}]"), (o, i, B), Box::new(dy_x), dw));
    }
}

/// A conv's forward, input gradient and weight gradient; validated at batch 2. With `tf32` on TF32
/// tensor cores through that pipeline (named so), the warm start's candidate paths beside the f32
/// one.
fn conv_cases(cases: &mut Vec<Case>, base: &str, c: ConvShape, tf32: Option<Tf32Pipeline>) {
    let ConvShape { batch, in_channels: ci, out_channels: co, in_hw: hw, kernel: k, stride: s, padding: p } = c;
    let oh = c.out_hw();
    let shape = format!("x[{batch},{ci},{hw},{hw}] w[{co},{ci},{k},{k}] s{s} p{p} → [{batch},{co},{oh},{oh}]");
    let note = "x, w, y once each (two read, one written)".to_string();
    let suffix = tf32.map(|p| format!(" {}", p.label())).unwrap_or_default();
    let case = |dir: &str, make: Make, op: Op| Case {
        name: format!("{base} {dir}{suffix}"),
        family: "conv",
        shape: shape.clone(),
        flops: Some(c.flops()),
        bytes: c.bytes(),
        bytes_note: note.clone(),
        tf32,
        make,
        op,
    };
    // The forward with its bias, as the layers run it (added in the epilogue).
    let x_w_b = move |rng: &mut ChaCha8Rng, sz: Size| -> Result<Vec<Tensor>> {
        let b = pick(sz, 2, batch);
        Ok(vec![randn(rng, &[1, b, ci, hw, hw])?, randn(rng, &[1, co, ci, k, k])?, randn(rng, &[1, co])?])
    };
    cases.push(case("fwd", Box::new(x_w_b), Box::new(move |t| Ok(vec![ops::conv2d_bias(&t[0], &t[1], &t[2], s, p)?]))));
    let dy_w = move |rng: &mut ChaCha8Rng, sz: Size| -> Result<Vec<Tensor>> {
        let b = pick(sz, 2, batch);
        Ok(vec![randn(rng, &[1, b, co, oh, oh])?, randn(rng, &[1, co, ci, k, k])?])
    };
    cases.push(case("dgrad", Box::new(dy_w), Box::new(move |t| Ok(vec![ops::conv2d_input_grad(&t[0], &t[1], (hw, hw), s, p)?]))));
    let x_dy = move |rng: &mut ChaCha8Rng, sz: Size| -> Result<Vec<Tensor>> {
        let b = pick(sz, 2, batch);
        Ok(vec![randn(rng, &[1, b, ci, hw, hw])?, randn(rng, &[1, b, co, oh, oh])?])
    };
    cases.push(case("wgrad", Box::new(x_dy), Box::new(move |t| Ok(vec![ops::conv2d_weight_grad(&t[0], &t[1], (k, k), s, p)?]))));
}

/// The DCGAN generator's transposed convs (PyTorch layout `[C_in, C_out, K, K]`), counted as the
/// conv whose input gradient they are.
fn conv_transpose_cases(cases: &mut Vec<Case>) {
    const B: usize = 32;
    for (ci, co, hw, k, s) in [(256, 128, 4, 5, 1), (128, 64, 7, 5, 1), (64, 1, 11, 8, 2)] {
        let out = (hw - 1) * s + k;
        let as_conv = ConvShape { batch: B, in_channels: co, out_channels: ci, in_hw: out, kernel: k, stride: s, padding: 0 };
        let make = move |rng: &mut ChaCha8Rng, sz: Size| -> Result<Vec<Tensor>> {
            let b = pick(sz, 2, B);
            Ok(vec![randn(rng, &[1, b, ci, hw, hw])?, randn(rng, &[1, ci, co, k, k])?])
        };
        cases.push(Case {
            name: format!("gs-wgan dcgan G convT {ci}→{co} {k}×{k} s{s}, {hw}→{out}"),
            family: "conv",
            shape: format!("x[{B},{ci},{hw},{hw}] w[{ci},{co},{k},{k}] → [{B},{co},{out},{out}]"),
            flops: Some(as_conv.flops()),
            bytes: as_conv.bytes(),
            bytes_note: "x, w, y once each".into(),
            tf32: None,
            make: Box::new(make),
            op: Box::new(move |t| Ok(vec![ops::conv_transpose2d(&t[0], &t[1], s, 0, 0)?])),
        });
    }
}

/// A memory-bound case: no FLOP count, bytes as stated.
fn mem_case(name: &str, family: &'static str, shape: String, bytes: f64, bytes_note: &str, make: Make, op: Op) -> Case {
    Case { name: name.into(), family, shape, flops: None, bytes, bytes_note: bytes_note.into(), tf32: None, make, op }
}

fn elementwise_cases(cases: &mut Vec<Case>) {
    // GS-WGAN's largest activation: the ResNet G at 32², batch 32.
    const SHAPE: [usize; 4] = [32, 256, 32, 32];
    const SMALL: [usize; 4] = [2, 3, 5, 7];
    let n = SHAPE.iter().product::<usize>() as f64;
    let one =
        |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, if s == Size::Small { &SMALL } else { &SHAPE })?]) };
    let desc = format!("{SHAPE:?}");
    for (name, op) in [("relu", UnaryOp::Relu), ("sigmoid", UnaryOp::Sigmoid)] {
        let f: Op = Box::new(move |t| Ok(vec![ops::unary(op, &t[0])?]));
        cases.push(mem_case(&format!("unary {name}"), "elementwise", desc.clone(), 2.0 * F32 * n, "x read, y written", Box::new(one), f));
    }
    let two = |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let sh: &[usize] = if s == Size::Small { &SMALL } else { &SHAPE };
        Ok(vec![randn(rng, sh)?, randn(rng, sh)?])
    };
    let add: Op = Box::new(|t| Ok(vec![ops::binary(BinaryOp::Add, &t[0], &t[1])?]));
    cases.push(mem_case(
        "binary add",
        "elementwise",
        format!("{desc} + {desc}"),
        3.0 * F32 * n,
        "a, b read, y written",
        Box::new(two),
        add,
    ));
    let bias = |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let sh: &[usize] = if s == Size::Small { &SMALL } else { &SHAPE };
        Ok(vec![randn(rng, sh)?, randn(rng, &[1, sh[1], 1, 1])?])
    };
    let mul: Op = Box::new(|t| Ok(vec![ops::binary(BinaryOp::Mul, &t[0], &t[1])?]));
    let bytes = F32 * (2.0 * n + 256.0);
    cases.push(mem_case(
        "binary mul broadcast",
        "elementwise",
        format!("{desc} · [1,256,1,1]"),
        bytes,
        "a read, b [256] read once, y written",
        Box::new(bias),
        mul,
    ));
}

fn sum_to_cases(cases: &mut Vec<Case>) {
    for (name, full, small, to) in [
        ("sum_to conv bias grad", vec![32, 256, 32, 32], vec![2, 3, 5, 7], vec![1usize, 0, 1, 1]),
        ("sum_to dp-cgan linear bias grad", vec![600, 128], vec![8, 5], vec![0]),
    ] {
        // `0` in `to` stands for "keep this dim" (the channel / feature axis).
        let target = move |sh: &[usize]| -> Vec<usize> {
            let lead = sh.len() - to.len();
            to.iter().enumerate().map(|(i, &d)| if d == 0 { sh[lead + i] } else { d }).collect()
        };
        let out_full = target(&full);
        let n = full.iter().product::<usize>() as f64;
        let m = out_full.iter().product::<usize>() as f64;
        let (f2, s2) = (full.clone(), small.clone());
        let make =
            move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, if s == Size::Small { &s2 } else { &f2 })?]) };
        let op: Op = Box::new(move |t| {
            let to = target(t[0].shape());
            Ok(vec![ops::sum_to(&t[0], &to)?])
        });
        cases.push(mem_case(name, "reduce", format!("{full:?} → {out_full:?}"), F32 * (n + m), "x read, sums written", Box::new(make), op));
    }
}

fn log_softmax_case(cases: &mut Vec<Case>) {
    // The evaluation classifiers' logits over the 10,000 test images.
    let (r, c) = (10_000, 10);
    let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, &[pick(s, 7, r), c])?]) };
    let op: Op = Box::new(|t| Ok(vec![ops::log_softmax(&t[0])?]));
    cases.push(mem_case(
        "log_softmax eval logits",
        "reduce",
        format!("[{r},{c}]"),
        2.0 * F32 * (r * c) as f64,
        "x read, y written",
        Box::new(make),
        op,
    ));
}

fn optimizer_cases(cases: &mut Vec<Case>) {
    let n = RESNET_G_PARAMS;
    let size = move |s: Size| pick(s, 10_001, n);
    let adam = AdamParams { lr: 1e-4, beta1: 0.5, beta2: 0.9, eps: 1e-8, weight_decay: 0.0 };
    let make_adam = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let k = size(s);
        Ok(vec![randn(rng, &[k])?, randn(rng, &[k])?, randn(rng, &[k])?, Tensor::uniform(&[k], 0.0, 1.0, rng, &Device::Cpu)?])
    };
    let adam_op: Op = Box::new(move |t| match t {
        [p, g, m, v] => ops::adam_step(p, g, m, v, 10, &adam).map(|()| Vec::new()),
        _ => Err(Error::Invalid("adam case needs 4 operands".into())),
    });
    let note = "p, g, m, v read; p, m, v written";
    cases.push(mem_case(
        "adam step (resnet G params)",
        "optim",
        format!("[{n}]"),
        7.0 * F32 * n as f64,
        note,
        Box::new(make_adam),
        adam_op,
    ));
    let sgd = SgdParams { lr: 0.02, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let make_sgd = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let k = size(s);
        Ok(vec![randn(rng, &[k])?, randn(rng, &[k])?, randn(rng, &[k])?])
    };
    let sgd_op: Op = Box::new(move |t| match t {
        [p, g, buf] => ops::sgd_step(p, g, Some(buf), &sgd).map(|()| Vec::new()),
        _ => Err(Error::Invalid("sgd case needs 3 operands".into())),
    });
    let note = "p, g, buf read; p, buf written";
    cases.push(mem_case("sgd momentum step", "optim", format!("[{n}]"), 5.0 * F32 * n as f64, note, Box::new(make_sgd), sgd_op));
}

fn power_iteration_case(cases: &mut Vec<Case>) {
    let (o, i) = (256, 6400);
    let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let (oo, ii) = (pick(s, 16, o), pick(s, 100, i));
        Ok(vec![randn(rng, &[1, oo, ii])?, randn(rng, &[1, oo])?])
    };
    let op: Op = Box::new(|t| {
        let step = ops::power_iteration(&t[0], &t[1])?;
        Ok(vec![step.u, step.v, step.sigma])
    });
    let bytes = F32 * (2 * o * i + 2 * o + i + 1) as f64;
    let note = "W read twice (Wᵀu, then Wv: v must be complete first), u read, u, v and σ written";
    cases.push(Case {
        name: "spectral-norm power iteration".into(),
        family: "power_iter",
        shape: format!("W[{o},{i}]"),
        flops: Some(4.0 * (o * i) as f64),
        bytes,
        bytes_note: note.into(),
        tf32: None,
        make: Box::new(make),
        op,
    });
}

/// A critic forward's power iterations in one batch, at the published width: conv 64 × 25,
/// 128 × 1600, 256 × 3200, linear 1 × 4096, embedding 10 × 4096 (3 launches at G = 1, not 15).
fn batched_power_iteration_case(cases: &mut Vec<Case>) {
    const LAYERS: [(usize, usize); 5] = [(64, 25), (128, 1600), (256, 3200), (1, 4096), (10, 4096)];
    let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let mut t = Vec::new();
        for (o, i) in LAYERS {
            let (oo, ii) = (pick(s, o.min(4), o), pick(s, i.min(30), i));
            t.push(randn(rng, &[1, oo, ii])?);
            t.push(randn(rng, &[1, oo])?);
        }
        Ok(t)
    };
    let op: Op = Box::new(|t| {
        let layers: Vec<(&Tensor, &Tensor)> = t.chunks(2).map(|p| (&p[0], &p[1])).collect();
        Ok(ops::power_iterations(&layers)?.into_iter().flat_map(|step| [step.u, step.v, step.sigma]).collect())
    });
    let bytes = LAYERS.iter().map(|&(o, i)| F32 * (2 * o * i + 2 * o + i + 1) as f64).sum();
    let flops = LAYERS.iter().map(|&(o, i)| 4.0 * (o * i) as f64).sum();
    cases.push(Case {
        name: "gs-wgan critic power iterations, 5 layers batched".into(),
        family: "power_iter",
        shape: LAYERS.iter().map(|(o, i)| format!("W[{o},{i}]")).collect::<Vec<_>>().join(" "),
        flops: Some(flops),
        bytes,
        bytes_note: "each W read twice, each u read, u, v and σ written".into(),
        tf32: None,
        make: Box::new(make),
        op,
    });
}

/// The fused normalisation ops at GS-WGAN's shapes: the ResNet generator's pixel norm (forward
/// and backward) at 32², batch 32; the spectral division's gradient for the critic's largest
/// weight; the critic's projection Σ_f E[y]·h (a product and a sum in one reduction).
fn fused_norm_cases(cases: &mut Vec<Case>) {
    const X: [usize; 5] = [1, 32, 256, 32, 32];
    const X_SMALL: [usize; 5] = [1, 2, 5, 3, 3];
    let n = X.iter().product::<usize>() as f64;
    let positions = (X[1] * X[3] * X[4]) as f64;
    let x = |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, if s == Size::Small { &X_SMALL } else { &X })?]) };
    let fwd: Op = Box::new(|t| {
        let (y, inv) = ops::pixel_norm(&t[0], 1e-10)?;
        Ok(vec![y, inv])
    });
    let desc = format!("{:?}", &X[1..]);
    cases.push(mem_case(
        "pixel norm fwd",
        "reduce",
        desc.clone(),
        F32 * (2.0 * n + positions),
        "x read, y and inv written",
        Box::new(x),
        fwd,
    ));
    let x_dy = |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let sh: &[usize] = if s == Size::Small { &X_SMALL } else { &X };
        let x = randn(rng, sh)?;
        let (_, inv) = ops::pixel_norm(&x, 1e-10)?;
        Ok(vec![x, inv, randn(rng, sh)?])
    };
    let bwd: Op = Box::new(|t| Ok(vec![ops::pixel_norm_backward(&t[0], &t[1], &t[2])?]));
    cases.push(mem_case(
        "pixel norm bwd",
        "reduce",
        desc,
        F32 * (3.0 * n + positions),
        "x, dy read, inv read, dx written",
        Box::new(x_dy),
        bwd,
    ));

    let (o, i) = (256, 3200);
    let sn = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let (oo, ii) = (pick(s, 4, o), pick(s, 9, i));
        Ok(vec![
            randn(rng, &[1, oo, ii])?,
            randn(rng, &[1])?,
            randn(rng, &[1, oo])?,
            randn(rng, &[1, ii])?,
            Tensor::full(&[1], 1.5, &Device::Cpu)?,
        ])
    };
    let sn_op: Op = Box::new(|t| Ok(vec![ops::spectral_divide_backward(&t[0], &t[1], &t[2], &t[3], &t[4])?]));
    let bytes = F32 * (2 * o * i + o + i) as f64;
    cases.push(mem_case(
        "spectral-norm division bwd",
        "elementwise",
        format!("dW[{o},{i}]"),
        bytes,
        "dW read, dW̄ written, u and v read",
        Box::new(sn),
        sn_op,
    ));

    let (b, f) = (32, 4096);
    let pair = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let (bb, ff) = (pick(s, 3, b), pick(s, 40, f));
        Ok(vec![randn(rng, &[1, bb, ff])?, randn(rng, &[1, bb, ff])?])
    };
    let proj: Op = Box::new(|t| {
        let (g, b) = (t[0].shape()[0], t[0].shape()[1]);
        Ok(vec![ops::sum_products_to(&t[0], &t[1], &[g, b, 1])?])
    });
    cases.push(mem_case(
        "sum_products_to critic projection",
        "reduce",
        format!("[{b},{f}]·[{b},{f}] → [{b},1]"),
        F32 * (2 * b * f + b) as f64,
        "both factors read once, sums written",
        Box::new(pair),
        proj,
    ));
}

fn pool_cases(cases: &mut Vec<Case>) {
    // LeNet-5's first pool in the evaluation CNN, batch 128; the ResNet G's ×2 upsampling to 32².
    let pool_shape = [128usize, 6, 28, 28];
    let n = pool_shape.iter().product::<usize>() as f64;
    let small = [2usize, 3, 6, 10];
    let one = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        Ok(vec![randn(rng, if s == Size::Small { &small } else { &pool_shape })?])
    };
    let fwd: Op = Box::new(|t| Ok(vec![ops::max_pool2x2(&t[0])?]));
    cases.push(mem_case(
        "max_pool2x2 fwd (lenet)",
        "pool",
        format!("{pool_shape:?}"),
        F32 * (n + n / 4.0),
        "x read, y (¼) written",
        Box::new(one),
        fwd,
    ));
    let x_dy = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let sh = if s == Size::Small { small } else { pool_shape };
        Ok(vec![randn(rng, &sh)?, randn(rng, &[sh[0], sh[1], sh[2] / 2, sh[3] / 2])?])
    };
    let bwd: Op = Box::new(|t| Ok(vec![ops::max_pool2x2_scatter(&t[0], &t[1])?]));
    cases.push(mem_case(
        "max_pool2x2 bwd (lenet)",
        "pool",
        format!("{pool_shape:?}"),
        F32 * (2.0 * n + n / 4.0),
        "x and dy (¼) read, dx written",
        Box::new(x_dy),
        bwd,
    ));
    let up_shape = [32usize, 256, 16, 16];
    let m = up_shape.iter().product::<usize>() as f64;
    let up_make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        Ok(vec![randn(rng, if s == Size::Small { &[2, 3, 4, 5] } else { &up_shape })?])
    };
    let up: Op = Box::new(|t| Ok(vec![ops::upsample_nearest2x(&t[0])?]));
    cases.push(mem_case(
        "upsample_nearest2x (resnet G)",
        "pool",
        format!("{up_shape:?} → 32²"),
        F32 * 5.0 * m,
        "x read, y (4×) written",
        Box::new(up_make),
        up,
    ));
}

fn noise_cases(cases: &mut Vec<Case>) {
    let n = RESNET_G_PARAMS;
    for (label, mode) in [("fast", NoiseMode::Fast), ("secure", NoiseMode::Secure)] {
        let key = NoiseSource::from_seed(7, mode).key_at(3, 1);
        let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, &[pick(s, 10_001, n)])?]) };
        let op: Op = Box::new(move |t| ops::add_gaussian_noise(&mut t[0], 1.07, &key).map(|()| Vec::new()));
        cases.push(mem_case(
            &format!("gaussian noise {label}"),
            "noise",
            format!("[{n}]"),
            2.0 * F32 * n as f64,
            "x read and written in place",
            Box::new(make),
            op,
        ));
    }
    // DP-SGD's noise fused with the division by the batch, over the same parameter count.
    for (label, mode) in [("fast", NoiseMode::Fast), ("secure", NoiseMode::Secure)] {
        let key = NoiseSource::from_seed(7, mode).key_at(3, 1);
        let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, &[pick(s, 10_001, n)])?]) };
        let op: Op = Box::new(move |t| ops::add_gaussian_noise_and_divide(&mut t[0], 1.07, 32.0, &key).map(|()| Vec::new()));
        cases.push(mem_case(
            &format!("gaussian noise and divide {label}"),
            "noise",
            format!("[{n}]"),
            2.0 * F32 * n as f64,
            "x read and written in place",
            Box::new(make),
            op,
        ));
    }
    // GS-WGAN's sanitiser: B = 32 image gradients, C = 1 scaled by 1/B, σ = 1.07, sensitivity ×2.
    let (b, d) = (32, 784);
    let key = NoiseSource::from_seed(7, NoiseMode::Fast).key_at(3, 2);
    let make = move |rng: &mut ChaCha8Rng, _: Size| -> Result<Vec<Tensor>> { Ok(vec![randn(rng, &[b, d])?]) };
    let op: Op = Box::new(move |t| Ok(vec![ops::sanitize_rows(&t[0], 1.0 / 32.0, RowNorm::AtMost, 2.0 * 1.07 / 32.0, &key)?]));
    cases.push(mem_case(
        "sanitize_rows (gs-wgan)",
        "noise",
        format!("[{b},{d}]"),
        2.0 * F32 * (b * d) as f64,
        "g read, ĝ written",
        Box::new(make),
        op,
    ));
}

/// Per-example squared weight-gradient norms of GS-WGAN's critic convs at B = 32
/// (`conv2d_weight_grad_sq_norms`): each example's `[O, C·K²]` gradient formed tile by tile and
/// reduced in registers, so the FLOPs are those of B per-example weight-gradient products.
fn per_example_norm_cases(cases: &mut Vec<Case>) {
    const B: usize = 32;
    for (name, ci, co, hw) in [("gs-wgan D conv1", 1, 64, 28), ("gs-wgan D conv2", 64, 128, 14), ("gs-wgan D conv3", 128, 256, 7)] {
        let c = ConvShape { batch: B, in_channels: ci, out_channels: co, in_hw: hw, kernel: 5, stride: 2, padding: 2 };
        let oh = c.out_hw();
        let make = move |rng: &mut ChaCha8Rng, sz: Size| -> Result<Vec<Tensor>> {
            let b = pick(sz, 2, B);
            Ok(vec![randn(rng, &[1, b, ci, hw, hw])?, randn(rng, &[1, b, co, oh, oh])?])
        };
        let (x_len, dy_len) = (B * ci * hw * hw, B * co * oh * oh);
        cases.push(Case {
            name: format!("{name} per-example norms {ci}→{co} 5×5 s2 @{hw}"),
            family: "dp",
            shape: format!("x[{B},{ci},{hw},{hw}] dy[{B},{co},{oh},{oh}] → [{B}]"),
            flops: Some(2.0 * (B * co * ci * 25 * oh * oh) as f64),
            bytes: F32 * (x_len + dy_len + B) as f64,
            bytes_note: "x and dy read once, one norm per example written".into(),
            tf32: None,
            make: Box::new(make),
            op: Box::new(|t| Ok(vec![ops::conv2d_weight_grad_sq_norms(&t[0], &t[1], (5, 5), 2, 2)?])),
        });
    }
}

/// Plain matmuls on TF32 tensor cores through each build (the same values, three schedules): a
/// square one and the implicit GEMMs of GS-WGAN's ResNet generator's 256→256 3×3 conv at 16×16 and
/// batch 32 as plain products (forward: O × B·P × C·KK; weight gradient: O × C·KK × B·P).
fn tf32_gemm_cases(cases: &mut Vec<Case>) {
    for pipeline in Tf32Pipeline::ALL {
        let label = pipeline.label();
        for (what, m, n, k) in [("square", 1024, 1024, 1024), ("resnet conv fwd", 256, 8192, 2304), ("resnet conv dW", 256, 2304, 8192)] {
            let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
                // Validated at 128 × 160: every build takes its own kernel there (the wide one needs
                // M and N of at least 128), with a tail in N.
                let (m, n, k) = (pick(s, 128, m), pick(s, 160, n), pick(s, 80, k));
                Ok(vec![randn(rng, &[1, m, k])?, randn(rng, &[1, k, n])?])
            };
            let op: Op = Box::new(|t| Ok(vec![ops::matmul(&t[0], &t[1], false, false)?]));
            let mut case =
                gemm_case(format!("gemm {label} {what} {m}×{n}×{k}"), format!("A[{m},{k}]·B[{k},{n}]"), (m, n, k), Box::new(make), op);
            case.tf32 = Some(pipeline);
            cases.push(case);
        }
    }
}

/// Every case, in report order.
pub fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    linear_cases(&mut cases);
    tf32_gemm_cases(&mut cases);
    // The GS-WGAN convs in f32, then again on TF32 tensor cores (the non-private warm start's
    // candidate path, measured beside the TF32 ceilings); the ResNet generator's, which dominate
    // the warm start, also through the cp.async pipeline and on wide tiles.
    for tf32 in [None, Some(Tf32Pipeline::RegisterStaged), Some(Tf32Pipeline::CpAsync), Some(Tf32Pipeline::Wide)] {
        if matches!(tf32, None | Some(Tf32Pipeline::RegisterStaged)) {
            for (name, ci, co, hw) in [("gs-wgan D conv1", 1, 64, 28), ("gs-wgan D conv2", 64, 128, 14), ("gs-wgan D conv3", 128, 256, 7)] {
                let c = ConvShape { batch: 32, in_channels: ci, out_channels: co, in_hw: hw, kernel: 5, stride: 2, padding: 2 };
                conv_cases(&mut cases, &format!("{name} {ci}→{co} 5×5 s2 @{hw}"), c, tf32);
            }
        }
        for hw in [8, 16, 32] {
            let c = ConvShape { batch: 32, in_channels: 256, out_channels: 256, in_hw: hw, kernel: 3, stride: 1, padding: 1 };
            conv_cases(&mut cases, &format!("gs-wgan resnet G 256→256 3×3 @{hw}"), c, tf32);
        }
    }
    conv_transpose_cases(&mut cases);
    elementwise_cases(&mut cases);
    sum_to_cases(&mut cases);
    log_softmax_case(&mut cases);
    optimizer_cases(&mut cases);
    power_iteration_case(&mut cases);
    batched_power_iteration_case(&mut cases);
    fused_norm_cases(&mut cases);
    pool_cases(&mut cases);
    noise_cases(&mut cases);
    per_example_norm_cases(&mut cases);
    cases
}

/// The families a full report covers (the CLI test checks them).
pub const FAMILIES: &[&str] = &["gemm", "conv", "elementwise", "reduce", "optim", "power_iter", "pool", "noise", "dp"];

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_family_has_cases_and_counts_are_positive() {
        let cases = all_cases();
        for fam in FAMILIES {
            assert!(cases.iter().any(|c| c.family == *fam), "no case of family {fam}");
        }
        for c in &cases {
            assert!(c.bytes > 0.0 && c.flops.is_none_or(|f| f > 0.0), "{}", c.name);
            assert!(FAMILIES.contains(&c.family), "{} has an unlisted family", c.name);
        }
        let mut names: Vec<_> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "case names must be unique");
    }

    /// Every case's small instance runs on the CPU backend and its in-place ops keep their shapes:
    /// the validation step cannot fail for a reason other than the GPU.
    #[test]
    fn small_instances_run_on_the_cpu() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for c in all_cases() {
            let mut t = (c.make)(&mut rng, Size::Small).unwrap();
            let out = (c.op)(&mut t).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert!(out.iter().chain(&t).all(|x| x.to_vec().unwrap().iter().all(|v| v.is_finite())), "{}", c.name);
        }
    }

    /// A wide matmul case is validated on the wide kernel: its small instance fills a 128 × 128
    /// tile (below that the product would take the 64 × 64 build).
    #[test]
    fn wide_matmul_cases_validate_the_wide_kernel() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let wide: Vec<Case> = all_cases().into_iter().filter(|c| c.family == "gemm" && c.tf32 == Some(Tf32Pipeline::Wide)).collect();
        assert_eq!(wide.len(), 3, "the square matmul and the ResNet conv's two products");
        for c in wide {
            let t = (c.make)(&mut rng, Size::Small).unwrap();
            let (m, n) = (t[0].shape()[1], t[1].shape()[2]);
            assert!(m >= 128 && n >= 128, "{}: {m} × {n}", c.name);
        }
    }
}
