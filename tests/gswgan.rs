//! GS-WGAN's layers, models and training steps on the CPU: parameter counts, shapes for G = 1 and
//! G = 3, the layers against plain formulas, the WGAN-GP loss gradient against f64 finite
//! differences, group training against one-by-one training, the private step's sanitised
//! gradient, and the EMA.
mod common;

use common::{assert_close, assert_identical, tol};
use dpgan::autograd::Tape;
use dpgan::dp::{GsWganSanitizer, NoiseMode, NoiseSource, RunKey};
use dpgan::models::gswgan::{
    bernoulli_latent, one_hot, uniform_one_hot_labels, Discriminator, Generator, GeneratorArch, PIXELS, PIXEL_NORM_EPS, PUBLISHED_BASE,
};
use dpgan::nn::{member, stack, Module, SnConv2d};
use dpgan::optim::{Adam, Optimizer};
use dpgan::tensor::{DType, Device, Tensor};
use dpgan::train::gswgan::{
    ema_decay, ema_update, image_gradient, member_rngs, private_generator_step, select_discriminator, wgan_gp_loss, CriticState,
    GsWganConfig, LabelledImages, PrivateTraining, SliceBatches, WarmStart,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const CPU: Device = Device::Cpu;

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Random images in [0, 1) with labels, `[G, B, 784]` and one-hot `[G, B, 10]`.
fn random_batch(rng: &mut impl Rng, groups: usize, batch: usize) -> (Tensor, Tensor) {
    let images = Tensor::uniform(&[groups, batch, PIXELS], 0.0, 1.0, rng, &CPU).unwrap();
    let labels: Vec<u32> = (0..groups * batch).map(|_| rng.random_range(0..10)).collect();
    (images, one_hot(&labels, groups, &CPU).unwrap())
}

#[test]
fn published_parameter_counts() {
    let mut rng = common::rng("parameter_counts");
    for groups in [1, 3] {
        let d = Discriminator::new(groups, PUBLISHED_BASE, &mut rng, &CPU).unwrap();
        assert_eq!(d.parameter_count(), 1_071_105, "discriminator, G = {groups}");
        // Five spectrally normalised layers, each with u and v.
        assert_eq!(d.buffers().len(), 10);
        assert!(d.named_tensors().iter().all(|(_, t)| t.shape()[0] == groups));
        let dcgan = Generator::new(GeneratorArch::Dcgan, groups, PUBLISHED_BASE, &mut rng, &CPU).unwrap();
        assert_eq!(dcgan.parameter_count(), 1_114_305, "DCGAN generator, G = {groups}");
        assert!(dcgan.buffers().is_empty());
        let resnet = Generator::new(GeneratorArch::Resnet, groups, PUBLISHED_BASE, &mut rng, &CPU).unwrap();
        assert_eq!(resnet.parameter_count(), 3_826_177, "ResNet generator, G = {groups}");
        // Linear, 3 blocks × 3 convs, the output conv.
        assert_eq!(resnet.buffers().len(), 2 * 11);
    }
}

/// Names are unique and follow PyTorch's spectral_norm (weight_orig, weight_u, weight_v).
#[test]
fn named_tensors_for_checkpoints() {
    let mut rng = common::rng("named_tensors");
    let d = Discriminator::new(1, 2, &mut rng, &CPU).unwrap();
    let names: Vec<String> = d.named_tensors().into_iter().map(|(n, _)| n).collect();
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for n in ["conv1.weight_orig", "conv1.weight_u", "conv1.weight_v", "conv1.bias", "linear.bias", "embedding.weight_orig"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

/// Output shapes at the published widths, B = 2, for G = 1 and G = 3 (ResNet with B = 1 at G = 3
/// to keep the CPU time down); images lie in (0, 1).
#[test]
fn output_shapes_for_groups() {
    let mut rng = common::rng("output_shapes");
    for groups in [1, 3] {
        let (images, labels) = random_batch(&mut rng, groups, 2);
        let mut d = Discriminator::new(groups, PUBLISHED_BASE, &mut rng, &CPU).unwrap();
        let pass = d.forward(&Tape::new(), &images, &labels).unwrap();
        assert_eq!(pass.critic.shape(), [groups, 2, 1]);
        for arch in [GeneratorArch::Dcgan, GeneratorArch::Resnet] {
            let b = if arch == GeneratorArch::Resnet && groups > 1 { 1 } else { 2 };
            let mut g = Generator::new(arch, groups, PUBLISHED_BASE, &mut rng, &CPU).unwrap();
            let mut draws: Vec<ChaCha20Rng> = (0..groups as u64).map(ChaCha20Rng::seed_from_u64).collect();
            let z = bernoulli_latent(&mut draws, b, &CPU).unwrap();
            let l = uniform_one_hot_labels(&mut draws, b, &CPU).unwrap();
            let x = g.forward(&Tape::new(), &z, &l).unwrap();
            assert_eq!(x.shape(), [groups, b, PIXELS], "{arch:?}");
            assert!(values(&x).iter().all(|&p| p > 0.0 && p < 1.0), "{arch:?}: sigmoid output outside (0, 1)");
        }
    }
}

/// z holds only 0 and 1, about half of each.
#[test]
fn latent_is_bernoulli() {
    let mut draws = vec![common::rng("latent")];
    let z = values(&bernoulli_latent(&mut draws, 200, &CPU).unwrap());
    assert!(z.iter().all(|&v| v == 0.0 || v == 1.0));
    let ones = z.iter().filter(|&&v| v == 1.0).count() as f64 / z.len() as f64;
    // 2000 fair coins: the share of ones is within 0.5 ± 0.06 except with probability < 1e-7.
    assert!((ones - 0.5).abs() < 0.06, "share of ones {ones}");
}

#[test]
fn pixel_norm_and_upsample_match_formulas() {
    let mut rng = common::rng("pixel_norm_upsample");
    let (g, b, c, h, w) = (2, 3, 5, 3, 4);
    let x = common::randn(&mut rng, &[g, b, c, h, w]);
    let xs = values(&x);
    let tape = Tape::new();
    let pn = values(&tape.pixel_norm(&x, PIXEL_NORM_EPS).unwrap());
    let mut expected = vec![0.0f32; xs.len()];
    for n in 0..g * b {
        for p in 0..h * w {
            let at = |k: usize| n * c * h * w + k * h * w + p;
            let mean_sq = (0..c).map(|k| (xs[at(k)] as f64).powi(2)).sum::<f64>() / c as f64;
            let scale = 1.0 / (mean_sq + PIXEL_NORM_EPS as f64).sqrt();
            (0..c).for_each(|k| expected[at(k)] = (xs[at(k)] as f64 * scale) as f32);
        }
    }
    assert_close("pixel norm", &pn, &expected, tol::F32_REDUCTION);

    let up = values(&tape.upsample_nearest2x(&x).unwrap());
    let mut expected = vec![0.0f32; xs.len() * 4];
    for plane in 0..g * b * c {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                expected[plane * 4 * h * w + y * 2 * w + xx] = xs[plane * h * w + (y / 2) * w + xx / 2];
            }
        }
    }
    assert_identical("upsample ×2", &up, &expected);
}

/// One forward of a spectrally normalised conv: u, v are one power iteration from the old u
/// (v = normalize(W̄ᵀu), u' = normalize(W̄v)), and the layer ran with W = W̄/(u'ᵀW̄v).
#[test]
fn spectral_conv_matches_power_iteration_formula() {
    let mut rng = common::rng("spectral_conv");
    let (groups, o, c, k) = (2, 3, 2, 3);
    let mut layer = SnConv2d::new(groups, c, o, k, 1, 1, &mut rng, &CPU).unwrap();
    let (wbar, u0) = (values(&layer.sn.weight_orig), values(&layer.sn.u));
    for row in u0.chunks(o) {
        assert!((norm(&row.iter().map(|&x| x as f64).collect::<Vec<_>>()) - 1.0).abs() < 1e-6, "u starts normalised");
    }
    let x = common::randn(&mut rng, &[groups, 2, c, 4, 4]);
    let (_, trace) = layer.forward(&Tape::new(), &x).unwrap();
    let cols = c * k * k;
    let (mut u_exp, mut v_exp, mut w_exp) = (Vec::new(), Vec::new(), Vec::new());
    for gi in 0..groups {
        let w = |r: usize, j: usize| wbar[gi * o * cols + r * cols + j] as f64;
        let u = &u0[gi * o..(gi + 1) * o];
        let v: Vec<f64> = (0..cols).map(|j| (0..o).map(|r| w(r, j) * u[r] as f64).sum()).collect();
        let v: Vec<f64> = v.iter().map(|x| x / norm(&v)).collect();
        let u1: Vec<f64> = (0..o).map(|r| (0..cols).map(|j| w(r, j) * v[j]).sum()).collect();
        let u1: Vec<f64> = u1.iter().map(|x| x / norm(&u1)).collect();
        let sigma: f64 = (0..o).map(|r| u1[r] * (0..cols).map(|j| w(r, j) * v[j]).sum::<f64>()).sum();
        u_exp.extend(u1.iter().map(|&x| x as f32));
        v_exp.extend(v.iter().map(|&x| x as f32));
        w_exp.extend((0..o * cols).map(|i| (w(i / cols, i % cols) / sigma) as f32));
    }
    assert_close("u after one iteration", &values(&layer.sn.u), &u_exp, tol::F32_REDUCTION);
    assert_close("v after one iteration", &values(&layer.sn.v), &v_exp, tol::F32_REDUCTION);
    assert_close("W = W̄/σ", &values(&trace.weight), &w_exp, tol::F32_REDUCTION);
    let expected_conv = Tape::new().add_channel_bias(&Tape::new().conv2d(&x, &trace.weight, 1, 1).unwrap(), &layer.bias).unwrap();
    assert_identical("output = conv(x, W) + b", &values(&trace.layer.output), &values(&expected_conv));
}

/// The critic's output is SN-linear(h) + ⟨E[y], h⟩ with E the normalised embedding.
#[test]
fn projection_output_matches_formula() {
    let mut rng = common::rng("projection");
    let (groups, b) = (3, 4);
    let mut d = Discriminator::new(groups, 2, &mut rng, &CPU).unwrap();
    let (images, labels) = random_batch(&mut rng, groups, b);
    let pass = d.forward(&Tape::new(), &images, &labels).unwrap();
    let (linear, embedding) = (&pass.layers[3], &pass.layers[4]);
    let h = values(&linear.layer.input);
    let lin = values(&linear.layer.output);
    let e = values(&embedding.weight);
    let y = values(&labels);
    let f = h.len() / (groups * b);
    let mut expected = Vec::new();
    for gi in 0..groups {
        for i in 0..b {
            let n = gi * b + i;
            let class = (0..10).find(|&k| y[n * 10 + k] == 1.0).unwrap();
            let dot: f64 = (0..f).map(|j| e[(gi * 10 + class) * f + j] as f64 * h[n * f + j] as f64).sum();
            expected.push((lin[n] as f64 + dot) as f32);
        }
    }
    assert_close("critic = linear(h) + ⟨E[y], h⟩", &values(&pass.critic), &expected, tol::F32_REDUCTION);
}

/// Every tensor of `m` in f64 (CPU), for finite differences.
fn to_f64<M: Module>(m: &mut M) {
    for e in m.entries_mut() {
        *e.tensor = e.tensor.to_dtype(DType::F64).unwrap();
    }
}

/// A tiny critic (base 2) and one critic batch, all in f64: real and fake images, labels, α.
struct CriticCase {
    d: Discriminator,
    real: Tensor,
    fake: Tensor,
    labels: Tensor,
    alpha: Tensor,
}

fn f64_critic_case(rng: &mut impl Rng, groups: usize, b: usize) -> CriticCase {
    let mut d = Discriminator::new(groups, 2, rng, &CPU).unwrap();
    to_f64(&mut d);
    let f64_batch = |t: Tensor| t.to_dtype(DType::F64).unwrap();
    let (real, labels) = random_batch(rng, groups, b);
    let (fake, _) = random_batch(rng, groups, b);
    let alpha = Tensor::uniform(&[groups, b, 1], 0.0, 1.0, rng, &CPU).unwrap();
    CriticCase { d, real: f64_batch(real), fake: f64_batch(fake), labels: f64_batch(labels), alpha: f64_batch(alpha) }
}

/// The WGAN-GP critic loss of a tiny spectrally normalised critic against central differences in
/// its weights. The power iteration is first run to convergence: there u, v are the top singular
/// pair, s = σ_max(W̄) and ∂s/∂W̄ = uvᵀ, which is the gradient through s with u, v held fixed, so
/// the finite differences of the whole loss (one more power iteration per evaluation) must agree
/// with the tape's gradient. A random subset of each tensor's coordinates is checked.
#[test]
fn wgan_gp_loss_gradient_matches_finite_differences() {
    let mut rng = common::rng("wgan_gp_gradient");
    let (groups, b) = (1, 3);
    let CriticCase { mut d, real, fake, labels, alpha } = f64_critic_case(&mut rng, groups, b);
    // Converge every layer's power iteration (thousands of steps: the top two singular values of
    // a small random matrix can lie close together).
    for sn in [&mut d.conv1.sn, &mut d.conv2.sn, &mut d.conv3.sn, &mut d.linear.sn, &mut d.embedding.sn] {
        for _ in 0..5000 {
            sn.weight(&Tape::new()).unwrap();
        }
    }
    let config = GsWganConfig::default();
    let loss_of = |d: &Discriminator| -> f64 {
        let mut d = d.clone();
        wgan_gp_loss(&Tape::new(), &mut d, &real, &fake, &labels, &alpha, &config).unwrap().to_vec_f64().unwrap()[0]
    };

    let tape = Tape::new();
    let mut at = d.clone();
    at.params().into_iter().for_each(|p| tape.watch(p));
    let loss = wgan_gp_loss(&tape, &mut at, &real, &fake, &labels, &alpha, &config).unwrap();
    let grads = tape.backward(&tape.sum_all(&loss).unwrap()).unwrap();
    let analytic: Vec<Vec<f64>> = d.params().iter().map(|p| grads.of(p).unwrap().to_vec_f64().unwrap()).collect();

    // Rounding in one evaluation of L is a few ε·|L|; a difference quotient carries it divided by h.
    const H: f64 = 1e-6;
    let rounding = 8.0 * f64::EPSILON * loss_of(&d).abs().max(1.0) / H;
    let (mut checked, mut kinks, mut coords_total) = (Vec::new(), 0, 0);
    for (index, analytic) in analytic.iter().enumerate() {
        let count = analytic.len();
        let coords: Vec<usize> = (0..12.min(count)).map(|_| rng.random_range(0..count)).collect();
        coords_total += coords.len();
        let (mut kept, mut numeric) = (Vec::new(), Vec::new());
        for &j in &coords {
            let shifted = |delta: f64| {
                let mut m = d.clone();
                let p = &mut m.params_mut()[index];
                let mut data = p.to_vec_f64().unwrap();
                data[j] += delta;
                **p = Tensor::from_vec_f64(data, p.shape()).unwrap();
                loss_of(&m)
            };
            let central = (shifted(H) - shifted(-H)) / (2.0 * H);
            let wide = (shifted(2.0 * H) - shifted(-2.0 * H)) / (4.0 * H);
            // On a smooth stretch the quotients at h and 2h differ by O(h²·L‴) (nothing at this
            // h); a ReLU switching inside [−2h, 2h] is a kink that moves them apart. Such
            // coordinates are skipped (and counted), not compared.
            if (central - wide).abs() > 1e-6 * central.abs() + 4.0 * rounding {
                kinks += 1;
                continue;
            }
            kept.push(analytic[j]);
            numeric.push(central);
        }
        checked.push((index, kept, numeric));
    }
    eprintln!("{kinks} of {coords_total} coordinates skipped at ReLU kinks");
    assert!(kinks * 2 <= coords_total, "{kinks} of {coords_total} coordinates sit at ReLU kinks");
    // Each tensor within 1e-5 of its gradient's norm, plus the rounding of the quotients.
    let total = norm(&checked.iter().flat_map(|c| c.2.iter().copied()).collect::<Vec<_>>());
    assert!(total > 1e3 * rounding, "the loss barely depends on the weights: {total}");
    for (index, analytic, numeric) in checked {
        let error = norm(&analytic.iter().zip(&numeric).map(|(a, n)| a - n).collect::<Vec<_>>());
        let allowed = 1e-5 * norm(&numeric) + rounding * (numeric.len() as f64).sqrt();
        assert!(
            error <= allowed,
            "∂L_D/∂ param {index}: error norm {error:.3e} > {allowed:.3e}\n tape:    {analytic:?}\n numeric: {numeric:?}"
        );
    }
}

/// WGAN-GP's critic loss against its definition evaluated independently, per member (G = 2, f64):
/// x̂ = αx + (1 − α)x̃ formed here, ∇ₓ̂D by a separate backward, and
/// L_D = mean D(x̃) − mean D(x) + λ·mean (√(‖∇ₓ̂D‖² + ε) − 1)² + 0.001·mean D(x)², the means over
/// the batch, with D's three forward passes in the order the loss runs them (each advances the
/// spectral-norm vectors).
#[test]
fn wgan_gp_loss_is_its_formula() {
    let mut rng = common::rng("wgan_gp_loss_is_its_formula");
    let (groups, b) = (2, 3);
    let CriticCase { d, real, fake, labels, alpha } = f64_critic_case(&mut rng, groups, b);
    let config = GsWganConfig::default();
    let got = wgan_gp_loss(&Tape::new(), &mut d.clone(), &real, &fake, &labels, &alpha, &config).unwrap().to_vec_f64().unwrap();

    let mut e = d.clone();
    let critic = |e: &mut Discriminator, tape: &Tape, x: &Tensor| e.forward(tape, x, &labels).unwrap().critic;
    let d_real = critic(&mut e, &Tape::new(), &real).to_vec_f64().unwrap();
    let d_fake = critic(&mut e, &Tape::new(), &fake).to_vec_f64().unwrap();
    let (x, x_tilde, a) = (real.to_vec_f64().unwrap(), fake.to_vec_f64().unwrap(), alpha.to_vec_f64().unwrap());
    let x_hat: Vec<f64> = (0..x.len()).map(|j| a[j / PIXELS] * x[j] + (1.0 - a[j / PIXELS]) * x_tilde[j]).collect();
    let x_hat = Tensor::from_vec_f64(x_hat, real.shape()).unwrap();
    let tape = Tape::new();
    tape.watch(&x_hat);
    let d_hat = critic(&mut e, &tape, &x_hat);
    let grad = tape.backward(&tape.sum_all(&d_hat).unwrap()).unwrap().of(&x_hat).unwrap().to_vec_f64().unwrap();
    let eps = f64::from(dpgan::train::gswgan::GP_NORM_EPS);
    // The engine's means scale by 1/B rounded to f32 (its scalar constants are f32, on f64
    // tensors too): the formula uses the same factor, so the comparison stays at f64 rounding.
    let inv_b = f64::from(1.0 / b as f32);
    for g in 0..groups {
        let mean = |v: &[f64], f: &dyn Fn(f64) -> f64| (0..b).map(|i| f(v[g * b + i])).sum::<f64>() * inv_b;
        let penalty = (0..b)
            .map(|i| {
                let row = &grad[(g * b + i) * PIXELS..][..PIXELS];
                ((row.iter().map(|v| v * v).sum::<f64>() + eps).sqrt() - 1.0).powi(2)
            })
            .sum::<f64>()
            * inv_b;
        let want = mean(&d_fake, &|v| v) - mean(&d_real, &|v| v)
            + f64::from(config.gp_weight) * penalty
            + f64::from(config.drift_weight) * mean(&d_real, &|v| v * v);
        assert!((got[g] - want).abs() <= 1e-10 * want.abs().max(1.0), "member {g}: L_D {} against the formula's {want}", got[g]);
        assert!(penalty > 1e-3, "member {g}: the penalty must matter for the check to mean anything ({penalty})");
    }
}

/// The private generator step's image gradient is that of L_G = −(1/B)·Σᵢ D(x̃ᵢ, lᵢ) per member,
/// checked against the tape's gradient of that expression written with an explicit 1/B.
#[test]
fn image_gradient_is_that_of_minus_the_mean_critic() {
    let mut rng = common::rng("image_gradient_is_that_of_minus_the_mean_critic");
    let (groups, b) = (2, 5);
    let mut d = Discriminator::new(groups, 2, &mut rng, &CPU).unwrap();
    to_f64(&mut d);
    let (fake, labels) = random_batch(&mut rng, groups, b);
    let (fake, labels) = (fake.to_dtype(DType::F64).unwrap(), labels.to_dtype(DType::F64).unwrap());
    let (loss, grad) = image_gradient(&mut d.clone(), &fake, &labels).unwrap();
    let tape = Tape::new();
    tape.watch(&fake);
    let critic = d.clone().forward(&tape, &fake, &labels).unwrap().critic;
    let values = critic.to_vec_f64().unwrap();
    let scaled = tape.scale(&tape.sum_all(&critic).unwrap(), -1.0 / b as f32).unwrap();
    let want = tape.backward(&scaled).unwrap().of(&fake).unwrap().to_vec_f64().unwrap();
    let got = grad.to_vec_f64().unwrap();
    let error = norm(&got.iter().zip(&want).map(|(a, w)| a - w).collect::<Vec<_>>());
    assert!(error <= 1e-12 * norm(&want), "image gradient off by {error:e} (norm {})", norm(&want));
    let losses = loss.to_vec_f64().unwrap();
    // 1/B rounded to f32, as the engine's scalar constants are (see `wgan_gp_loss_is_its_formula`).
    let inv_b = f64::from(1.0 / b as f32);
    for g in 0..groups {
        let want = -values[g * b..(g + 1) * b].iter().sum::<f64>() * inv_b;
        assert!((losses[g] - want).abs() <= 1e-12 * want.abs().max(1.0), "member {g}: L_G {} against {want}", losses[g]);
    }
}

/// Random records (images in [0, 1), labels) for training tests.
fn random_data(rng: &mut impl Rng, n: usize) -> LabelledImages {
    let pixels = (0..n * PIXELS).map(|_| rng.random::<f32>()).collect();
    LabelledImages::new(pixels, (0..n).map(|_| rng.random_range(0..10)).collect()).unwrap()
}

fn tiny_config() -> GsWganConfig {
    GsWganConfig { critic_steps: 2, batch_size: 4, ..GsWganConfig::default() }
}

/// Three discriminators (and their generators) trained as one group end bit for bit where each
/// ends trained alone with the same seed and slice: every op computes member g from member g's
/// tensors alone, in the same order whatever G is, and each member draws from its own streams.
#[test]
fn group_training_equals_one_by_one() {
    let mut rng = common::rng("group_equals_one_by_one");
    let data = random_data(&mut rng, 18);
    let seeds: Vec<u64> = (0..3).map(|_| rng.random()).collect();
    // Slices of 6 with batches of 4: batch sizes 4, 2, 4, 2 exercise the partial batch.
    let slices: Vec<Vec<usize>> = (0..3).map(|j| (6 * j..6 * j + 6).collect()).collect();
    let run = |seeds: &[u64], slices: Vec<Vec<usize>>| {
        let mut w = WarmStart::new(GeneratorArch::Dcgan, 2, seeds, slices, tiny_config(), &CPU).unwrap();
        for _ in 0..2 {
            w.iteration(&data).unwrap();
        }
        w
    };
    let group = run(&seeds, slices.clone());
    assert_eq!(group.discriminators.groups(), 3);
    for j in 0..3 {
        let alone = run(&seeds[j..=j], vec![slices[j].clone()]);
        let (dg, gg) = (member(&group.discriminators, j).unwrap(), member(&group.generators, j).unwrap());
        for ((name, a), (_, b)) in dg.named_tensors().into_iter().zip(alone.discriminators.named_tensors()) {
            assert_identical(&format!("member {j} D {name}"), &values(a), &values(b));
        }
        for ((name, a), (_, b)) in gg.named_tensors().into_iter().zip(alone.generators.named_tensors()) {
            assert_identical(&format!("member {j} G {name}"), &values(a), &values(b));
        }
    }
    // Training moved the weights: the comparison is not between untouched initialisations.
    let fresh = member(&WarmStart::new(GeneratorArch::Dcgan, 2, &seeds, slices, tiny_config(), &CPU).unwrap().discriminators, 0).unwrap();
    assert_ne!(values(&fresh.conv1.sn.weight_orig), values(&member(&group.discriminators, 0).unwrap().conv1.sn.weight_orig));
}

/// Slices of 60 in batches of 32 go 32, 28, 32, 28, and each pass covers the slice exactly once.
#[test]
fn slice_batches_keep_the_partial_batch() {
    let slice: Vec<usize> = (100..160).collect();
    let mut batches = SliceBatches::new(slice.clone(), 32, member_rngs(7).batches).unwrap();
    for _ in 0..2 {
        let (a, b) = (batches.next_batch(), batches.next_batch());
        assert_eq!((a.len(), b.len()), (32, 28));
        let mut pass: Vec<usize> = a.into_iter().chain(b).collect();
        pass.sort_unstable();
        assert_eq!(pass, slice);
    }
    assert_eq!(batches.passes(), 2);
}

/// A restored batch stream (same seed, passes and position) continues exactly where the first left.
#[test]
fn slice_batches_resume() {
    let slice: Vec<usize> = (0..60).collect();
    let mut run = SliceBatches::new(slice.clone(), 32, member_rngs(11).batches).unwrap();
    for _ in 0..3 {
        run.next_batch();
    }
    let mut resumed = SliceBatches::restore(slice, 32, member_rngs(11).batches, run.passes(), run.position()).unwrap();
    for _ in 0..5 {
        assert_eq!(resumed.next_batch(), run.next_batch());
    }
}

/// Stacking members and taking them apart again gives the members back.
#[test]
fn stack_and_member_round_trip() {
    let mut rng = common::rng("stack_member");
    let members: Vec<Generator> = (0..3).map(|_| Generator::new(GeneratorArch::Resnet, 1, 1, &mut rng, &CPU).unwrap()).collect();
    let group = stack(&members).unwrap();
    assert_eq!(group.groups(), 3);
    for (j, m) in members.iter().enumerate() {
        for ((name, a), (_, b)) in member(&group, j).unwrap().named_tensors().into_iter().zip(m.named_tensors()) {
            assert_identical(&format!("member {j} {name}"), &values(a), &values(b));
        }
    }
}

/// With σ = 0 every sanitised row whose norm exceeds C/B is rescaled to norm exactly C/B (to f32
/// rounding), rows within the bound pass unchanged (the `min(1, ·)` of docs/algorithms.md's formula), and the
/// private step updates G by back-propagating exactly that sanitised gradient (D's weights frozen).
#[test]
fn private_step_sanitises_the_image_gradient() {
    let mut rng = common::rng("private_step");
    let b = 5;
    let mut g = Generator::new(GeneratorArch::Resnet, 1, 1, &mut rng, &CPU).unwrap();
    let mut draws = vec![ChaCha20Rng::seed_from_u64(rng.random())];
    let z = bernoulli_latent(&mut draws, b, &CPU).unwrap();
    let labels = uniform_one_hot_labels(&mut draws, b, &CPU).unwrap();
    let key = NoiseSource::from_seed(rng.random(), NoiseMode::Fast).next_key();
    // A critic whose gradient vanishes at one of the generated images (every ReLU on its path
    // dead there, which a width-2 critic does for a few percent of draws) cannot show how rows
    // are rescaled: draw critics until the gradient has no zero row.
    // (On clones: a forward pass advances the spectral norms' power iteration.)
    let generated = g.clone().forward(&Tape::new(), &z, &labels).unwrap();
    let mut d = (0..100)
        .map(|_| Discriminator::new(1, 2, &mut rng, &CPU).unwrap())
        .find(|d| {
            let (_, grad) = image_gradient(&mut d.clone(), &generated, &labels).unwrap();
            values(&grad).chunks(PIXELS).all(|row| row.iter().any(|&x| x != 0.0))
        })
        .expect("a width-2 critic with a gradient at every generated image in 100 draws");

    // By hand: the image gradient, its rows sanitised, back-propagated through G.
    let (mut g_hand, mut d_hand) = (g.clone(), d.clone());
    let tape = Tape::new();
    g_hand.params().into_iter().for_each(|p| tape.watch(p));
    let fake = g_hand.forward(&tape, &z, &labels).unwrap();
    let (_, grad) = image_gradient(&mut d_hand, &fake, &labels).unwrap();
    let row_norms =
        |t: &Tensor| -> Vec<f64> { values(t).chunks(PIXELS).map(|r| norm(&r.iter().map(|&x| x as f64).collect::<Vec<_>>())).collect() };
    let raw_norms = row_norms(&grad);
    let smallest = raw_norms.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(smallest > 0.0, "the image gradient has a zero row");

    // A bound no row fits under: every row comes out at norm C/B exactly.
    let sanitizer = GsWganSanitizer::new(0.5 * smallest * b as f64, 0.0).unwrap();
    let bound = sanitizer.clip_norm / b as f64;
    let sanitized = sanitizer.sanitize(&grad, &key).unwrap();
    for (i, n) in row_norms(&sanitized).into_iter().enumerate() {
        assert!((n - bound).abs() <= 1e-6 * bound, "row {i}: norm {n}, expected C/B = {bound}");
    }
    // A bound every row fits under: σ = 0 (the non-private control) scales every row up to C/B.
    let loose = GsWganSanitizer::new(2.0 * raw_norms.iter().copied().fold(0.0, f64::max) * b as f64, 0.0).unwrap();
    let loose_bound = loose.clip_norm / b as f64;
    for (i, n) in row_norms(&loose.sanitize(&grad, &key).unwrap()).into_iter().enumerate() {
        assert!((n - loose_bound).abs() <= 1e-6 * loose_bound, "row {i} within the bound: norm {n}, expected C/B = {loose_bound}");
    }

    let grads = tape.backward_with(&fake, sanitized, false).unwrap();
    let g_grads: Vec<Tensor> = g_hand.params().iter().map(|p| grads.of(p).unwrap().clone()).collect();
    let config = GsWganConfig::default();
    Adam::new(config.adam).step(&mut g_hand.params_mut(), &g_grads).unwrap();

    let d_before = d.clone();
    let (loss, nonfinite) = private_generator_step(&mut g, &mut Adam::new(config.adam), &mut d, &z, &labels, &sanitizer, &key).unwrap();
    assert_eq!(values(&nonfinite), [0.0]);
    assert_eq!(loss.shape(), [1]);
    for ((name, a), (_, e)) in g.named_tensors().into_iter().zip(g_hand.named_tensors()) {
        assert_identical(&format!("G {name} after the private step"), &values(a), &values(e));
    }
    for (a, e) in d.params().into_iter().zip(d_before.params()) {
        assert_identical("D's parameters stay frozen", &values(a), &values(e));
    }
    assert_ne!(values(&d.conv1.sn.u), values(&d_before.conv1.sn.u), "D's spectral-norm vectors advance on forward");
}

/// A discriminator gone infinite gives image-gradient rows whose norms are not finite: they are
/// never passed on unclipped, and the step's flag says so.
#[test]
fn a_non_finite_image_gradient_is_flagged() {
    let mut rng = common::rng("non_finite_private_step");
    let b = 3;
    let mut g = Generator::new(GeneratorArch::Dcgan, 1, 1, &mut rng, &CPU).unwrap();
    let mut d = Discriminator::new(1, 2, &mut rng, &CPU).unwrap();
    let mut draws = vec![ChaCha20Rng::seed_from_u64(rng.random())];
    let z = bernoulli_latent(&mut draws, b, &CPU).unwrap();
    let labels = uniform_one_hot_labels(&mut draws, b, &CPU).unwrap();
    let key = NoiseSource::from_seed(rng.random(), NoiseMode::Fast).next_key();
    let sanitizer = GsWganSanitizer::new(1.0, 1.07).unwrap();
    let mut adam = Adam::new(GsWganConfig::default().adam);
    let (_, finite) = private_generator_step(&mut g, &mut adam, &mut d, &z, &labels, &sanitizer, &key).unwrap();
    assert_eq!(values(&finite), [0.0]);
    for p in d.params_mut() {
        *p = p.full_like(p.shape(), f64::INFINITY).unwrap();
    }
    let (_, nonfinite) = private_generator_step(&mut g, &mut adam, &mut d, &z, &labels, &sanitizer, &key).unwrap();
    assert!(values(&nonfinite)[0].is_nan());
    assert!(g.params().iter().any(|p| values(p).iter().any(|v| v.is_nan())), "G took the step: its update is NaN, not unclipped");
}

#[test]
fn ema_follows_the_formula() {
    assert_eq!(ema_decay(0), 0.0);
    assert_eq!(ema_decay(1), 0.5);
    assert!((ema_decay(9) - 0.9).abs() < 1e-7);
    assert_eq!(ema_decay(5000), 0.999);
    let mut rng = common::rng("ema");
    let model = Generator::new(GeneratorArch::Resnet, 1, 1, &mut rng, &CPU).unwrap();
    let mut ema = Generator::new(GeneratorArch::Resnet, 1, 1, &mut rng, &CPU).unwrap();
    let before = ema.clone();
    let a = 0.75f32;
    ema_update(&mut ema, &model, a).unwrap();
    assert_eq!(ema.entries().len(), model.params().len() + model.buffers().len());
    for (((name, e), (_, m)), (_, old)) in ema.named_tensors().into_iter().zip(model.named_tensors()).zip(before.named_tensors()) {
        let expected: Vec<f32> = values(old).iter().zip(values(m)).map(|(&o, m)| a * o + (1.0 - a) * m).collect();
        assert_close(&format!("EMA of {name}"), &values(e), &expected, tol::F32_ELEMENTWISE);
    }
}

/// A phase-2 iteration on tiny models: finite losses, B from the critic's last batch, and G_s equal
/// to G after the first iteration (decay 0).
#[test]
fn private_iteration_runs_and_copies_g_first() {
    let mut rng = common::rng("private_iteration");
    let data = random_data(&mut rng, 12);
    let config = tiny_config();
    let sanitizer = GsWganSanitizer::new(1.0, 1.07).unwrap();
    let key = RunKey::generate().unwrap();
    let mut training = PrivateTraining::new(GeneratorArch::Dcgan, 2, rng.random(), sanitizer, &key, NoiseMode::Fast, config, &CPU).unwrap();
    let d = Discriminator::new(1, 2, &mut rng, &CPU).unwrap();
    let mut critic = CriticState::new(d, (0..6).collect(), member_rngs(rng.random()).batches, &config).unwrap();
    assert_eq!(select_discriminator(&key, training.iterations(), 1).unwrap(), 0);
    let losses = training.iteration(&mut critic, &data).unwrap();
    // Two critic steps on a slice of 6 in batches of 4: the last batch holds 2.
    assert_eq!(losses.batch_size, 2);
    assert!(values(&losses.critic).iter().chain(&values(&losses.generator)).all(|x| x.is_finite()));
    for ((name, a), (_, b)) in training.ema.named_tensors().into_iter().zip(training.generator.named_tensors()) {
        assert_identical(&format!("G_s {name} after iteration 0"), &values(a), &values(b));
    }
    assert_eq!(training.noise().step(), 1);
    // The iteration count addresses the next choice of discriminator: it must advance.
    assert_eq!(training.iterations(), 1);
    training.iteration(&mut critic, &data).unwrap();
    assert_eq!((training.iterations(), training.noise().step()), (2, 2));
}

/// The step functions on the published architectures, batch 2, one step each.
#[test]
fn published_models_take_a_step() {
    let mut rng = common::rng("published_step");
    let data = random_data(&mut rng, 4);
    let config = GsWganConfig { critic_steps: 1, batch_size: 2, ..GsWganConfig::default() };
    let mut w = WarmStart::new(GeneratorArch::Dcgan, PUBLISHED_BASE, &[rng.random()], vec![vec![0, 1, 2, 3]], config, &CPU).unwrap();
    let before = w.discriminators.clone();
    let losses = w.iteration(&data).unwrap();
    assert_eq!(losses.critic.shape(), [1]);
    assert!(values(&losses.critic).iter().chain(&values(&losses.generator)).all(|x| x.is_finite()));
    assert_ne!(values(&before.conv3.sn.weight_orig), values(&w.discriminators.conv3.sn.weight_orig));
}
