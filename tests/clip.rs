//! Per-example gradient norms and clipped sums against brute force (one backward per example), in
//! f64 on the CPU, for linear, embedding, conv and conv-transpose layers and the whole DP-CGAN
//! discriminator; and the clip bound under huge gradients.
mod common;

use common::{assert_close_f64, randn_vec};
use dpgan::autograd::Tape;
use dpgan::backend::ops;
use dpgan::dp::clip::{clip_factors, per_example_sq_norms, LayerGrad, PerExampleGrad, SpectralLayerGrad};
use dpgan::tensor::{Device, Tensor};
use dpgan::Result;
use rand::Rng;

/// f64 has ~1e-16 rounding; the brute force sums the same products in another order.
const TOL: f64 = 1e-10;

fn f64_tensor(rng: &mut impl Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec_f64(randn_vec(rng, n).into_iter().map(|v| f64::from(v) * scale).collect(), shape).unwrap()
}

/// A model: params, a batch `[G, B, ...]` → per-example outputs `[G, B, 1]`, and the layers it
/// used (input and output tensors, to be turned into `LayerGrad`s once δ is known).
struct Run {
    output: Tensor,
    layers: Vec<(LayerKind, Tensor, Tensor)>,
}

#[derive(Clone, Copy)]
enum LayerKind {
    Linear { bias: bool },
    Conv2d { kernel: (usize, usize), stride: usize, padding: usize },
    ConvTranspose2d { kernel: (usize, usize), stride: usize, padding: usize },
}

type Model = dyn Fn(&Tape, &[Tensor], &Tensor) -> Result<Run>;

/// Per-example loss: a fixed nonlinear function of each example's output, summed over examples.
fn summed_loss(tape: &Tape, output: &Tensor) -> Tensor {
    let per_example = tape.bce_with_logits(output, &output.full_like(output.shape(), 1.0).unwrap()).unwrap();
    tape.sum_all(&per_example).unwrap()
}

/// The ghost path: one backward, then norms and clipped sums from (input, δ) per layer.
fn ghost(model: &Model, params: &[Tensor], batch: &Tensor, clip: f32) -> (Vec<f64>, Vec<Vec<f64>>) {
    let tape = Tape::new();
    params.iter().for_each(|p| tape.watch(p));
    let run = model(&tape, params, batch).unwrap();
    run.layers.iter().for_each(|(_, _, out)| tape.retain_grad(out));
    let grads = tape.backward(&summed_loss(&tape, &run.output)).unwrap();
    let layers: Vec<LayerGrad> = run
        .layers
        .iter()
        .map(|(kind, input, out)| {
            let (input, output_grad) = (input.clone(), grads.of(out).unwrap().clone());
            match *kind {
                LayerKind::Linear { bias } => LayerGrad::Linear { input, output_grad, bias },
                LayerKind::Conv2d { kernel, stride, padding } => {
                    LayerGrad::Conv2d { input, output_grad, kernel, stride, padding, bias: true }
                }
                LayerKind::ConvTranspose2d { kernel, stride, padding } => {
                    LayerGrad::ConvTranspose2d { input, output_grad, kernel, stride, padding, bias: true }
                }
            }
        })
        .collect();
    let refs: Vec<&dyn PerExampleGrad> = layers.iter().map(|l| l as &dyn PerExampleGrad).collect();
    let sq = per_example_sq_norms(&refs).unwrap();
    let factors = clip_factors(&sq, clip).unwrap();
    let mut sums = Vec::new();
    for layer in &layers {
        let c = layer.clipped_sum(&factors).unwrap();
        sums.push(c.weight.to_vec_f64().unwrap());
        if let Some(b) = c.bias {
            sums.push(b.to_vec_f64().unwrap());
        }
    }
    (sq.to_vec_f64().unwrap(), sums)
}

/// Brute force: one backward per example, its full gradient, its norm, clipped and summed.
fn brute_force(model: &Model, params: &[Tensor], batch: &Tensor, clip: f64) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (g, b) = (batch.shape()[0], batch.shape()[1]);
    let mut sq = vec![0.0; g * b];
    let mut sums: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.numel()]).collect();
    for i in 0..b {
        let tape = Tape::new();
        params.iter().for_each(|p| tape.watch(p));
        let run = model(&tape, params, &ops::narrow(batch, 1, i, 1).unwrap()).unwrap();
        let grads = tape.backward(&summed_loss(&tape, &run.output)).unwrap();
        let per_param: Vec<Vec<f64>> = params.iter().map(|p| grads.of(p).unwrap().to_vec_f64().unwrap()).collect();
        for group in 0..g {
            // Every parameter is [G, ...]: group `group` owns the `group`-th slice of each.
            let slice = |v: &Vec<f64>| {
                let n = v.len() / g;
                v[group * n..(group + 1) * n].to_vec()
            };
            let norm2: f64 = per_param.iter().map(|v| slice(v).iter().map(|x| x * x).sum::<f64>()).sum();
            sq[group * b + i] = norm2;
            let factor = (clip / norm2.sqrt()).min(1.0);
            for (sum, v) in sums.iter_mut().zip(&per_param) {
                let n = v.len() / g;
                for k in 0..n {
                    sum[group * n + k] += factor * v[group * n + k];
                }
            }
        }
    }
    (sq, sums)
}

/// Checks ghost against brute force with the clip set between the middle two per-example norms,
/// so that some examples are clipped and some are not.
fn check(name: &str, model: &Model, params: Vec<Tensor>, batch: Tensor) {
    let (sq, _) = brute_force(model, &params, &batch, 1.0);
    let mut sorted: Vec<f64> = sq.iter().map(|v| v.sqrt()).collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let clip = ((sorted[mid - 1] + sorted[mid]) / 2.0) as f32;
    let (sq_ghost, sums_ghost) = ghost(model, &params, &batch, clip);
    let (sq_brute, sums_brute) = brute_force(model, &params, &batch, clip as f64);
    assert_close_f64(&format!("{name}: per-example squared norms"), &sq_ghost, &sq_brute, TOL);
    assert_eq!(sums_ghost.len(), sums_brute.len(), "{name}: one clipped sum per parameter");
    for (k, (a, e)) in sums_ghost.iter().zip(&sums_brute).enumerate() {
        assert_close_f64(&format!("{name}: clipped sum of parameter {k}"), a, e, TOL);
    }
    // The clip binds for some examples and not others, or the test proves less than it says.
    let norms: Vec<f64> = sq_brute.iter().map(|v| v.sqrt()).collect();
    assert!(norms.iter().any(|&n| n > clip as f64) && norms.iter().any(|&n| n < clip as f64), "{name}: norms {norms:?} vs clip {clip}");
}

fn linear_model(t: &Tape, p: &[Tensor], x: &Tensor) -> Result<Run> {
    let h = t.linear(x, &p[0], Some(&p[1]))?;
    let a = t.tanh(&h)?;
    let out = t.linear(&a, &p[2], Some(&p[3]))?;
    Ok(Run {
        output: out.clone(),
        layers: vec![(LayerKind::Linear { bias: true }, x.clone(), h), (LayerKind::Linear { bias: true }, a, out)],
    })
}

#[test]
fn linear_layers_match_brute_force_with_groups() {
    let mut rng = common::rng("linear_layers_match_brute_force_with_groups");
    let (g, b, i, h) = (3, 7, 6, 5);
    let params = vec![
        f64_tensor(&mut rng, &[g, h, i], 1.0),
        f64_tensor(&mut rng, &[g, h], 1.0),
        f64_tensor(&mut rng, &[g, 1, h], 1.0),
        f64_tensor(&mut rng, &[g, 1], 1.0),
    ];
    let batch = f64_tensor(&mut rng, &[g, b, i], 1.0);
    check("linear", &linear_model, params, batch);
}

/// An embedding is a linear layer on one-hot rows: E[y] = onehot(y)·E.
#[test]
fn embedding_matches_brute_force() {
    let mut rng = common::rng("embedding_matches_brute_force");
    let (g, b, classes, d) = (2, 9, 10, 4);
    let labels: Vec<u32> = (0..g * b).map(|_| rng.random_range(0..classes as u32)).collect();
    let onehot = Tensor::one_hot(&labels, classes, &[g, b], &dpgan::Device::Cpu).unwrap().to_dtype(dpgan::tensor::DType::F64).unwrap();
    let params = vec![f64_tensor(&mut rng, &[g, d, classes], 1.0), f64_tensor(&mut rng, &[g, 1, d], 1.0)];
    let model = |t: &Tape, p: &[Tensor], y: &Tensor| -> Result<Run> {
        let e = t.matmul(y, &p[0], false, true)?;
        let a = t.tanh(&e)?;
        let out = t.linear(&a, &p[1], None)?;
        Ok(Run {
            output: out.clone(),
            layers: vec![(LayerKind::Linear { bias: false }, y.clone(), e), (LayerKind::Linear { bias: false }, a, out)],
        })
    };
    check("embedding", &model, params, onehot);
}

/// A conv layer (with bias) followed by a linear readout, at one geometry.
fn conv_case(name: &str, (g, b, c, hw, o, k, stride, padding): (usize, usize, usize, usize, usize, usize, usize, usize)) {
    let mut rng = common::rng(name);
    let out_hw = (hw + 2 * padding - k) / stride + 1;
    let params = vec![
        f64_tensor(&mut rng, &[g, o, c, k, k], 0.3),
        f64_tensor(&mut rng, &[g, o], 1.0),
        f64_tensor(&mut rng, &[g, 1, o * out_hw * out_hw], 0.3),
        f64_tensor(&mut rng, &[g, 1], 1.0),
    ];
    let batch = f64_tensor(&mut rng, &[g, b, c, hw, hw], 1.0);
    let model = move |t: &Tape, p: &[Tensor], x: &Tensor| -> Result<Run> {
        let conv = t.add_channel_bias(&t.conv2d(x, &p[0], stride, padding)?, &p[1])?;
        let a = t.tanh(&conv)?;
        let flat = t.reshape(&a, &[g, x.shape()[1], o * out_hw * out_hw])?;
        let out = t.linear(&flat, &p[2], Some(&p[3]))?;
        Ok(Run {
            output: out.clone(),
            layers: vec![
                (LayerKind::Conv2d { kernel: (k, k), stride, padding }, x.clone(), conv),
                (LayerKind::Linear { bias: true }, flat, out),
            ],
        })
    };
    check(name, &model, params, batch);
}

#[test]
fn conv_layers_match_brute_force_at_every_spec_geometry() {
    // (G, B, C, H=W, O, K, stride, padding): GS-WGAN D (5×5 s2 p2 at 28, 14, 7), ResNet G
    // (3×3 p1, 1×1, 3×3 p0), LeNet (5×5 p2, 5×5 p0), at reduced channel counts.
    conv_case("conv 5x5 s2 p2 28->14", (1, 4, 1, 28, 3, 5, 2, 2));
    conv_case("conv 5x5 s2 p2 14->7, G=2", (2, 3, 2, 14, 3, 5, 2, 2));
    conv_case("conv 5x5 s2 p2 7->4", (1, 5, 3, 7, 4, 5, 2, 2));
    conv_case("conv 3x3 s1 p1", (2, 3, 2, 8, 3, 3, 1, 1));
    conv_case("conv 1x1", (1, 4, 3, 6, 2, 1, 1, 0));
    conv_case("conv 3x3 p0 10->8", (1, 3, 2, 10, 1, 3, 1, 0));
    conv_case("lenet conv 5x5 p2", (1, 3, 1, 12, 2, 5, 1, 2));
    conv_case("lenet conv 5x5 p0", (1, 3, 2, 9, 3, 5, 1, 0));
    // DPSGD-GAN's discriminator (docs/algorithms.md §4): 4×4 s2 p1 (28→14, 14→7), 3×3 s2 p1 (7→4), 4×4 s1
    // p0 (4→1).
    conv_case("dpsgd-gan conv 4x4 s2 p1 28->14", (1, 4, 1, 28, 3, 4, 2, 1));
    conv_case("dpsgd-gan conv 4x4 s2 p1 14->7, G=2", (2, 3, 3, 14, 4, 4, 2, 1));
    conv_case("dpsgd-gan conv 3x3 s2 p1 7->4", (1, 5, 4, 7, 3, 3, 2, 1));
    conv_case("dpsgd-gan conv 4x4 s1 p0 4->1", (1, 4, 5, 4, 2, 4, 1, 0));
}

fn conv_transpose_case(name: &str, (g, b, c, hw, o, k, stride, padding): (usize, usize, usize, usize, usize, usize, usize, usize)) {
    let mut rng = common::rng(name);
    let out_hw = (hw - 1) * stride + k - 2 * padding;
    let params = vec![
        f64_tensor(&mut rng, &[g, c, o, k, k], 0.3),
        f64_tensor(&mut rng, &[g, o], 1.0),
        f64_tensor(&mut rng, &[g, 1, o * out_hw * out_hw], 0.3),
        f64_tensor(&mut rng, &[g, 1], 1.0),
    ];
    let batch = f64_tensor(&mut rng, &[g, b, c, hw, hw], 1.0);
    let model = move |t: &Tape, p: &[Tensor], x: &Tensor| -> Result<Run> {
        let up = t.add_channel_bias(&t.conv_transpose2d(x, &p[0], stride, padding, 0)?, &p[1])?;
        let a = t.tanh(&up)?;
        let flat = t.reshape(&a, &[g, x.shape()[1], o * out_hw * out_hw])?;
        let out = t.linear(&flat, &p[2], Some(&p[3]))?;
        Ok(Run {
            output: out.clone(),
            layers: vec![
                (LayerKind::ConvTranspose2d { kernel: (k, k), stride, padding }, x.clone(), up),
                (LayerKind::Linear { bias: true }, flat, out),
            ],
        })
    };
    check(name, &model, params, batch);
}

#[test]
fn conv_transpose_layers_match_brute_force() {
    // (G, B, C, H=W, O, K, stride, padding): GS-WGAN's DCGAN generator, 5×5 s1 (4→8) and 8×8 s2
    // (11→28); DPSGD-GAN's generator (docs/algorithms.md §4), 4×4 s1 p0 from a 1×1 code (1→4), 3×3 s2 p1
    // (4→7), 4×4 s2 p1 (7→14, 14→28): at reduced channel counts.
    conv_transpose_case("conv-transpose 5x5 s1 4->8", (1, 3, 3, 4, 2, 5, 1, 0));
    conv_transpose_case("conv-transpose 8x8 s2 11->28, G=2", (2, 3, 2, 11, 1, 8, 2, 0));
    conv_transpose_case("conv-transpose 4x4 s1 p0 1->4", (1, 5, 6, 1, 3, 4, 1, 0));
    conv_transpose_case("conv-transpose 3x3 s2 p1 4->7, G=2", (2, 3, 4, 4, 3, 3, 2, 1));
    conv_transpose_case("conv-transpose 4x4 s2 p1 7->14", (1, 4, 3, 7, 2, 4, 2, 1));
    conv_transpose_case("conv-transpose 4x4 s2 p1 14->28", (1, 3, 2, 14, 1, 4, 2, 1));
}

/// DP-CGAN's discriminator, [x (784), onehot(y) (10)] → Linear 794→128 → ReLU → Linear 128→1,
/// at its real width.
#[test]
fn dp_cgan_discriminator_matches_brute_force() {
    let mut rng = common::rng("dp_cgan_discriminator_matches_brute_force");
    let b = 6;
    let params = vec![
        f64_tensor(&mut rng, &[1, 128, 794], 0.05),
        f64_tensor(&mut rng, &[1, 128], 0.1),
        f64_tensor(&mut rng, &[1, 1, 128], 0.1),
        f64_tensor(&mut rng, &[1, 1], 0.1),
    ];
    let batch = f64_tensor(&mut rng, &[1, b, 794], 1.0);
    let model = |t: &Tape, p: &[Tensor], x: &Tensor| -> Result<Run> {
        let h = t.linear(x, &p[0], Some(&p[1]))?;
        let a = t.relu(&h)?;
        let out = t.linear(&a, &p[2], Some(&p[3]))?;
        Ok(Run {
            output: out.clone(),
            layers: vec![(LayerKind::Linear { bias: true }, x.clone(), h), (LayerKind::Linear { bias: true }, a, out)],
        })
    };
    check("dp-cgan D", &model, params, batch);
}

/// DPSGD-GAN's discriminator (docs/algorithms.md §4) whole, at width 4: two conv branches (image, label
/// planes) concatenated, leaky ReLUs, 4×4 s2 p1, 3×3 s2 p1 and 4×4 s1 p0 convs, in f64 from its own
/// initialisation (scaled up so that some examples' norms pass the clip and others do not). The
/// batch packs each example's 784 pixels and its one-hot label in one row, so that brute force
/// slices both together.
#[test]
fn dpsgd_gan_discriminator_matches_brute_force() {
    use dpgan::models::dpsgd_gan::Discriminator;
    use dpgan::nn::Module;
    let mut rng = common::rng("dpsgd_gan_discriminator_matches_brute_force");
    let (b, width) = (5, 4);
    let base = Discriminator::new(1, width, &mut rng, &Device::Cpu).unwrap();
    let params: Vec<Tensor> = base
        .params()
        .iter()
        .map(|p| {
            ops::unary(dpgan::backend::UnaryOp::Affine { scale: 3.0, shift: 0.0 }, &p.to_dtype(dpgan::tensor::DType::F64).unwrap()).unwrap()
        })
        .collect();
    let pixels = f64_tensor(&mut rng, &[1, b, 784], 1.0);
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..10)).collect();
    let onehot = Tensor::one_hot(&labels, 10, &[1, b], &Device::Cpu).unwrap().to_dtype(dpgan::tensor::DType::F64).unwrap();
    let batch = ops::concat(&[&pixels, &onehot], 2).unwrap();
    let model = move |t: &Tape, p: &[Tensor], x: &Tensor| -> Result<Run> {
        let mut d = base.clone();
        for (dst, src) in d.params_mut().into_iter().zip(p) {
            *dst = src.clone();
        }
        let n = x.shape()[1];
        let images = ops::narrow(x, 2, 0, 784)?.reshape(&[1, n, 1, 28, 28])?;
        let pass = d.forward(t, &images, &ops::narrow(x, 2, 784, 10)?)?;
        let layers = pass
            .layers
            .iter()
            .map(|l| {
                let kind = LayerKind::Conv2d { kernel: (l.kernel, l.kernel), stride: l.stride, padding: l.padding };
                (kind, l.trace.input.clone(), l.trace.output.clone())
            })
            .collect();
        Ok(Run { output: pass.logits, layers })
    };
    check("dpsgd-gan D", &model, params, batch);
}

/// No example's clipped contribution exceeds C, however large its gradient.
#[test]
fn clip_bound_holds_for_huge_gradients() {
    let mut rng = common::rng("clip_bound_holds_for_huge_gradients");
    for scale in [1e-3, 1.0, 1e3, 1e8] {
        let (g, b, i, o) = (2, 8, 5, 3);
        let x = f64_tensor(&mut rng, &[g, b, i], scale);
        let delta = f64_tensor(&mut rng, &[g, b, o], scale);
        let layer = LayerGrad::Linear { input: x.clone(), output_grad: delta.clone(), bias: true };
        let clip = 0.7f32;
        let factors = clip_factors(&layer.per_example_sq_norms().unwrap(), clip).unwrap();
        for e in 0..b {
            // Example e's clipped contribution alone: all other factors zero.
            let mut only = vec![0.0; g * b];
            let f = factors.to_vec_f64().unwrap();
            for grp in 0..g {
                only[grp * b + e] = f[grp * b + e];
            }
            let c = layer.clipped_sum(&Tensor::from_vec_f64(only, &[g, b]).unwrap()).unwrap();
            let (w, bias) = (c.weight.to_vec_f64().unwrap(), c.bias.unwrap().to_vec_f64().unwrap());
            for grp in 0..g {
                let wn = w.len() / g;
                let bn = bias.len() / g;
                let norm2: f64 = w[grp * wn..(grp + 1) * wn].iter().chain(&bias[grp * bn..(grp + 1) * bn]).map(|v| v * v).sum();
                assert!(
                    norm2.sqrt() <= clip as f64 * (1.0 + 1e-12),
                    "scale {scale}: example {e} of group {grp} contributes {}",
                    norm2.sqrt()
                );
            }
        }
    }
}

#[test]
fn clip_factors_are_one_within_the_bound_and_finite_for_zero() {
    // −1e−9: a squared norm that rounding took below zero (the spectral-norm formula subtracts)
    // is a norm of about zero, within the bound.
    let sq = Tensor::from_vec_f64(vec![0.0, 0.25, 1.0, 4.0, 1e30, -1e-9], &[1, 6]).unwrap();
    let f = clip_factors(&sq, 1.0).unwrap().to_vec_f64().unwrap();
    assert_close_f64("clip factors", &f, &[1.0, 1.0, 1.0, 0.5, 1e-15, 1.0], 1e-15);
    assert!(clip_factors(&sq, 0.0).is_err() && clip_factors(&sq, f32::NAN).is_err());
}

/// A NaN or infinite norm must never leave an example unclipped (a factor of 1) or drop it silently
/// (a factor of 0): its factor is NaN, and so is every entry of the clipped sums it enters.
fn non_finite_norms_give_nan_factors_and_nan_sums(device: &Device) {
    let sq = Tensor::from_vec(vec![0.25, f32::NAN, 4.0, f32::INFINITY], &[1, 4], device).unwrap();
    let f = clip_factors(&sq, 1.0).unwrap().to_vec().unwrap();
    assert_eq!((f[0], f[2]), (1.0, 0.5), "finite norms keep their factors");
    assert!(f[1].is_nan() && f[3].is_nan(), "factors of NaN and ∞ norms: {f:?}");
    // A linear layer whose example 1 has a factor NaN: every entry of both sums is NaN, so the
    // update cannot be applied as if that example were clipped.
    let mut rng = common::rng("non_finite_norms");
    let input = common::randn(&mut rng, &[1, 4, 3]).to_device(device).unwrap();
    let mut grads = common::randn_vec(&mut rng, 4 * 2);
    grads[2] = 0.0;
    let output_grad = Tensor::from_vec(grads, &[1, 4, 2], device).unwrap();
    let layer = LayerGrad::Linear { input, output_grad, bias: true };
    let sums = layer.clipped_sum(&clip_factors(&sq, 1.0).unwrap()).unwrap();
    assert!(sums.weight.to_vec().unwrap().iter().chain(&sums.bias.unwrap().to_vec().unwrap()).all(|v| v.is_nan()));
}

#[test]
fn non_finite_norms_give_nan_factors_on_the_cpu() {
    non_finite_norms_give_nan_factors_and_nan_sums(&Device::Cpu);
    let sq = Tensor::from_vec_f64(vec![f64::NAN, f64::INFINITY, 1.0, f64::NEG_INFINITY], &[1, 4]).unwrap();
    let f = clip_factors(&sq, 1.0).unwrap().to_vec_f64().unwrap();
    assert!(f[0].is_nan() && f[1].is_nan() && f[2] == 1.0 && f[3].is_nan(), "{f:?}");
}

#[test]
fn non_finite_norms_give_nan_factors_on_cuda() {
    common::on_cuda("non_finite_norms_give_nan_factors_on_cuda", non_finite_norms_give_nan_factors_and_nan_sums);
}

/// A clipped example's factor is the largest f32 not above C/‖g‖ (its f64 quotient, within 1e-16,
/// which no f32 step straddles): rounding never pushes `c·‖g‖` past C. The f32 quotient rounded to
/// nearest, as the factor once was, lands above C/‖g‖ for many of these norms.
fn clip_factors_never_round_past_the_bound(device: &Device) {
    let mut rng = common::rng("clip_factors_never_round_past_the_bound");
    let mut nearest_past = 0;
    for clip in [1.1f32, 1.0, 0.37] {
        let sq: Vec<f32> = (0..4096).map(|_| clip * clip * 10f32.powf(rng.random_range(-3.0..6.0))).collect();
        let f = clip_factors(&Tensor::from_vec(sq.clone(), &[4, 1024], device).unwrap(), clip).unwrap().to_vec().unwrap();
        for (&x, &c) in sq.iter().zip(&f) {
            let norm = (x as f64).sqrt();
            if norm <= clip as f64 {
                assert_eq!(c, 1.0, "C {clip}, ‖g‖² {x}: within the bound");
                continue;
            }
            let quotient = clip as f64 / norm;
            assert!(c as f64 <= quotient && c.next_up() as f64 > quotient, "C {clip}, ‖g‖² {x}: factor {c} for {quotient}");
            nearest_past += usize::from((clip / x.sqrt()) as f64 > quotient);
        }
    }
    assert!(nearest_past > 100, "only {nearest_past} norms whose nearest f32 factor is past the bound");
}

#[test]
fn clip_factors_never_round_past_the_bound_on_the_cpu() {
    clip_factors_never_round_past_the_bound(&Device::Cpu);
}

#[test]
fn clip_factors_never_round_past_the_bound_on_cuda() {
    common::on_cuda("clip_factors_never_round_past_the_bound_on_cuda", clip_factors_never_round_past_the_bound);
}

/// `σ = uᵀW̄v` per group, `[G]`.
fn sigma_of(w_bar: &Tensor, u: &Tensor, v: &Tensor) -> Tensor {
    let (g, o) = (u.shape()[0], u.shape()[1]);
    let i = v.shape()[1];
    let wv = ops::matmul(&w_bar.reshape(&[g, o, i]).unwrap(), &v.reshape(&[g, i, 1]).unwrap(), false, false).unwrap();
    ops::matmul(&u.reshape(&[g, o, 1]).unwrap(), &wv, true, false).unwrap().reshape(&[g]).unwrap()
}

/// A spectrally normalised critic like GS-WGAN's (SN conv 5×5 s2 p2 → tanh → SN linear), at
/// reduced size, with u and v held fixed: ghost norms and clipped sums for W̄ against brute force.
#[test]
fn spectral_norm_layers_match_brute_force() {
    let mut rng = common::rng("spectral_norm_layers_match_brute_force");
    let (g, b, c, hw, o) = (2, 6, 2, 7, 3);
    let flat = o * 4 * 4;
    let params = vec![
        f64_tensor(&mut rng, &[g, o, c, 5, 5], 0.3),
        f64_tensor(&mut rng, &[g, o], 1.0),
        f64_tensor(&mut rng, &[g, 1, flat], 0.3),
        f64_tensor(&mut rng, &[g, 1], 1.0),
    ];
    // u, v after a few power iterations from random starts, then held fixed.
    let settle = |w: &Tensor, rows: usize, cols: usize, rng: &mut rand_chacha::ChaCha8Rng| {
        let mut u = f64_tensor(rng, &[g, rows], 1.0);
        let mut v = None;
        for _ in 0..3 {
            let step = ops::power_iteration(&w.reshape(&[g, rows, cols]).unwrap(), &u).unwrap();
            u = step.u;
            v = Some(step.v);
        }
        (u, v.unwrap())
    };
    let (u1, v1) = settle(&params[0], o, c * 25, &mut rng);
    let (u2, v2) = settle(&params[2], 1, flat, &mut rng);
    let (uu1, vv1, uu2, vv2) = (u1.clone(), v1.clone(), u2.clone(), v2.clone());
    let model = move |t: &Tape, p: &[Tensor], x: &Tensor| -> Result<Run> {
        let w1 = t.divide_by_sigma(&p[0], &uu1, &vv1)?;
        let conv = t.add_channel_bias(&t.conv2d(x, &w1, 2, 2)?, &p[1])?;
        let a = t.reshape(&t.tanh(&conv)?, &[g, x.shape()[1], flat])?;
        let w2 = t.divide_by_sigma(&p[2], &uu2, &vv2)?;
        let out = t.linear(&a, &w2, Some(&p[3]))?;
        Ok(Run {
            output: out.clone(),
            layers: vec![
                (LayerKind::Conv2d { kernel: (5, 5), stride: 2, padding: 2 }, x.clone(), conv),
                (LayerKind::Linear { bias: true }, a, out),
            ],
        })
    };
    let batch = f64_tensor(&mut rng, &[g, b, c, hw, hw], 1.0);

    let tape = Tape::new();
    params.iter().for_each(|p| tape.watch(p));
    let run = model(&tape, &params, &batch).unwrap();
    run.layers.iter().for_each(|(_, _, out)| tape.retain_grad(out));
    let grads = tape.backward(&summed_loss(&tape, &run.output)).unwrap();
    let delta = |k: usize| grads.of(&run.layers[k].2).unwrap().clone();
    let effective = |w: &Tensor, u: &Tensor, v: &Tensor| Tape::new().divide_by_sigma(w, u, v).unwrap();
    let layers = [
        SpectralLayerGrad {
            layer: LayerGrad::Conv2d { input: batch.clone(), output_grad: delta(0), kernel: (5, 5), stride: 2, padding: 2, bias: true },
            weight: effective(&params[0], &u1, &v1),
            sigma: sigma_of(&params[0], &u1, &v1),
            u: u1,
            v: v1,
        },
        SpectralLayerGrad {
            layer: LayerGrad::Linear { input: run.layers[1].1.clone(), output_grad: delta(1), bias: true },
            weight: effective(&params[2], &u2, &v2),
            sigma: sigma_of(&params[2], &u2, &v2),
            u: u2,
            v: v2,
        },
    ];
    let (sq_brute, _) = brute_force(&model, &params, &batch, 1.0);
    let refs: Vec<&dyn PerExampleGrad> = layers.iter().map(|l| l as &dyn PerExampleGrad).collect();
    let sq = per_example_sq_norms(&refs).unwrap();
    assert_close_f64("spectral: per-example squared norms", &sq.to_vec_f64().unwrap(), &sq_brute, TOL);

    let mut sorted: Vec<f64> = sq_brute.iter().map(|v| v.sqrt()).collect();
    sorted.sort_by(f64::total_cmp);
    let clip = ((sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0) as f32;
    let (_, sums_brute) = brute_force(&model, &params, &batch, clip as f64);
    let factors = clip_factors(&sq, clip).unwrap();
    let mut sums = Vec::new();
    for l in &layers {
        let c = l.clipped_sum(&factors).unwrap();
        sums.push(c.weight.to_vec_f64().unwrap());
        sums.push(c.bias.unwrap().to_vec_f64().unwrap());
    }
    for (k, (a, e)) in sums.iter().zip(&sums_brute).enumerate() {
        assert_close_f64(&format!("spectral: clipped sum of parameter {k}"), a, e, TOL);
    }
}

/// The same clipping on the GPU equals the CPU's (f32 on both), for linear and conv layers.
#[test]
fn cuda_clipping_matches_cpu() {
    common::on_cuda("cuda_clipping_matches_cpu", |dev| {
        let mut rng = common::rng("cuda_clipping_matches_cpu");
        let cpu_layers = [
            LayerGrad::Linear {
                input: common::randn(&mut rng, &[2, 37, 794]),
                output_grad: common::randn(&mut rng, &[2, 37, 128]),
                bias: true,
            },
            LayerGrad::Conv2d {
                input: common::randn(&mut rng, &[2, 5, 3, 14, 14]),
                output_grad: common::randn(&mut rng, &[2, 5, 4, 7, 7]),
                kernel: (5, 5),
                stride: 2,
                padding: 2,
                bias: true,
            },
        ];
        for cpu in &cpu_layers {
            let gpu = match cpu {
                LayerGrad::Linear { input, output_grad, bias } => LayerGrad::Linear {
                    input: input.to_device(dev).unwrap(),
                    output_grad: output_grad.to_device(dev).unwrap(),
                    bias: *bias,
                },
                LayerGrad::Conv2d { input, output_grad, kernel, stride, padding, bias } => LayerGrad::Conv2d {
                    input: input.to_device(dev).unwrap(),
                    output_grad: output_grad.to_device(dev).unwrap(),
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                    bias: *bias,
                },
                LayerGrad::ConvTranspose2d { .. } => unreachable!("not in this list"),
            };
            let (sq_cpu, sq_gpu) = (cpu.per_example_sq_norms().unwrap(), gpu.per_example_sq_norms().unwrap());
            common::assert_close("per-example squared norms", &sq_gpu.to_vec().unwrap(), &sq_cpu.to_vec().unwrap(), common::tol::F32_LONG);
            let median = {
                let mut v = sq_cpu.to_vec().unwrap();
                v.sort_by(f32::total_cmp);
                v[v.len() / 2].sqrt()
            };
            let (f_cpu, f_gpu) = (clip_factors(&sq_cpu, median).unwrap(), clip_factors(&sq_gpu, median).unwrap());
            common::assert_close("clip factors", &f_gpu.to_vec().unwrap(), &f_cpu.to_vec().unwrap(), common::tol::F32_LONG);
            let (c_cpu, c_gpu) = (cpu.clipped_sum(&f_cpu).unwrap(), gpu.clipped_sum(&f_cpu.to_device(dev).unwrap()).unwrap());
            common::assert_close(
                "clipped weight sum",
                &c_gpu.weight.to_vec().unwrap(),
                &c_cpu.weight.to_vec().unwrap(),
                common::tol::F32_LONG,
            );
            common::assert_close(
                "clipped bias sum",
                &c_gpu.bias.unwrap().to_vec().unwrap(),
                &c_cpu.bias.unwrap().to_vec().unwrap(),
                common::tol::F32_LONG,
            );
        }
    });
}

/// Each example's squared weight-gradient norm the slow way: its own `conv2d_weight_grad`, one
/// example at a time, squared and summed per group (the path `LayerGrad::Conv2d` used to take).
fn materialised_sq_norms(x: &Tensor, dy: &Tensor, kernel: (usize, usize), stride: usize, padding: usize) -> Vec<f64> {
    let (g, b) = (x.shape()[0], x.shape()[1]);
    let mut out = vec![0.0; g * b];
    for i in 0..b {
        let (x_i, dy_i) = (ops::narrow(x, 1, i, 1).unwrap(), ops::narrow(dy, 1, i, 1).unwrap());
        let grad = ops::conv2d_weight_grad(&x_i, &dy_i, kernel, stride, padding).unwrap().to_vec_f64().unwrap();
        let per_group = grad.len() / g;
        for grp in 0..g {
            out[grp * b + i] = grad[grp * per_group..(grp + 1) * per_group].iter().map(|v| v * v).sum();
        }
    }
    out
}

/// (G, B, C, H, W, O, K, stride, padding).
type NormGeometry = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

/// The GS-WGAN critic convs at reduced width, batch 1, G > 1,
/// odd sizes, kernels wider than the input with padding, a 1×1, and the 8×8 s2 conv whose weight
/// gradient is the DCGAN conv-transpose's.
const NORM_GEOMETRIES: [NormGeometry; 9] = [
    (1, 3, 1, 28, 28, 5, 5, 2, 2),
    (2, 2, 3, 14, 14, 7, 5, 2, 2),
    (1, 1, 4, 7, 7, 9, 5, 2, 2),
    (3, 2, 2, 9, 13, 4, 3, 1, 1),
    (1, 2, 5, 5, 6, 3, 1, 1, 0),
    (2, 3, 2, 11, 11, 3, 8, 2, 0),
    (1, 2, 3, 5, 4, 2, 7, 1, 3),
    (1, 1, 1, 2, 2, 1, 5, 2, 3),
    (2, 1, 2, 4, 4, 67, 3, 1, 1),
];

fn norm_inputs(rng: &mut impl Rng, (g, b, c, h, w, o, k, s, p): NormGeometry) -> (Tensor, Tensor) {
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    (f64_tensor(rng, &[g, b, c, h, w], 1.0), f64_tensor(rng, &[g, b, o, ho, wo], 1.0))
}

/// The fused op against each example's materialised gradient, in f64 (rounding only) and in f32
/// (the op accumulates in f64, so its f32 result is the f64 one rounded).
#[test]
fn conv_weight_grad_sq_norms_match_materialised_per_example_gradients() {
    let mut rng = common::rng("conv_weight_grad_sq_norms_match_materialised_per_example_gradients");
    for geom in NORM_GEOMETRIES {
        let (g, b, _, _, _, _, k, s, p) = geom;
        let (x, dy) = norm_inputs(&mut rng, geom);
        let expected = materialised_sq_norms(&x, &dy, (k, k), s, p);
        let fused = ops::conv2d_weight_grad_sq_norms(&x, &dy, (k, k), s, p).unwrap();
        assert_eq!(fused.shape(), [g, b], "{geom:?}");
        assert_close_f64(&format!("f64 {geom:?}"), &fused.to_vec_f64().unwrap(), &expected, TOL);
        let (x32, dy32) = (x.to_dtype(dpgan::tensor::DType::F32).unwrap(), dy.to_dtype(dpgan::tensor::DType::F32).unwrap());
        let expected32 = materialised_sq_norms(
            &x32.to_dtype(dpgan::tensor::DType::F64).unwrap(),
            &dy32.to_dtype(dpgan::tensor::DType::F64).unwrap(),
            (k, k),
            s,
            p,
        );
        let fused32 = ops::conv2d_weight_grad_sq_norms(&x32, &dy32, (k, k), s, p).unwrap().to_vec().unwrap();
        let fused32: Vec<f64> = fused32.into_iter().map(f64::from).collect();
        assert_close_f64(&format!("f32 {geom:?}"), &fused32, &expected32, common::tol::F32_ELEMENTWISE);
    }
}

#[test]
fn conv_weight_grad_sq_norms_reject_mismatched_shapes() {
    let x = Tensor::zeros(&[2, 3, 1, 8, 8], &dpgan::Device::Cpu).unwrap();
    let dy = Tensor::zeros(&[2, 3, 4, 4, 4], &dpgan::Device::Cpu).unwrap();
    common::expect_shape_error("dy of the wrong size", ops::conv2d_weight_grad_sq_norms(&x, &dy, (3, 3), 1, 1));
    let other_batch = Tensor::zeros(&[2, 2, 4, 4, 4], &dpgan::Device::Cpu).unwrap();
    common::expect_shape_error("dy of another batch", ops::conv2d_weight_grad_sq_norms(&x, &other_batch, (5, 5), 1, 0));
    common::expect_shape_error("rank 4", ops::conv2d_weight_grad_sq_norms(&x.reshape(&[6, 1, 8, 8]).unwrap(), &dy, (5, 5), 2, 2));
    assert_eq!(ops::conv2d_weight_grad_sq_norms(&x, &dy, (5, 5), 2, 2).unwrap().to_vec().unwrap(), vec![0.0; 6]);
}

/// The fused kernel (`kernels/dp_norms.cu`) against the CPU op on fresh f32 inputs, output poisoned.
#[test]
fn cuda_conv_weight_grad_sq_norms_match_cpu() {
    common::on_cuda("cuda_conv_weight_grad_sq_norms_match_cpu", |dev| {
        let mut rng = common::rng("cuda_conv_weight_grad_sq_norms_match_cpu");
        let wide = (2, 3, 64, 7, 7, 130, 5, 2, 2); // several tiles in both O and C·KK
        for geom in NORM_GEOMETRIES.into_iter().chain([wide]) {
            let (_, _, _, _, _, _, k, s, p) = geom;
            let (x, dy) = norm_inputs(&mut rng, geom);
            let (x, dy) = (x.to_dtype(dpgan::tensor::DType::F32).unwrap(), dy.to_dtype(dpgan::tensor::DType::F32).unwrap());
            let cpu = ops::conv2d_weight_grad_sq_norms(&x, &dy, (k, k), s, p).unwrap();
            let gpu = ops::conv2d_weight_grad_sq_norms(&x.to_device(dev).unwrap(), &dy.to_device(dev).unwrap(), (k, k), s, p).unwrap();
            assert_eq!(gpu.shape(), cpu.shape());
            // Each gradient entry is an f32 sum over HO·WO ≤ 196 positions; the squares are summed in
            // f64 per tile, then the tiles in f32.
            common::assert_close(&format!("{geom:?}"), &gpu.to_vec().unwrap(), &cpu.to_vec().unwrap(), common::tol::F32_REDUCTION);
        }
    });
}
