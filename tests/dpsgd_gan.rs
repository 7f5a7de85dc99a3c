//! DPSGD-GAN's models and steps on the CPU (docs/algorithms.md §4): parameter counts, shapes, and the D
//! step's private gradient against the plain one.
mod common;

use std::collections::HashMap;

use dpgan::autograd::Tape;
use dpgan::backend::census::{count_ops, COPY_ON_WRITE};
use dpgan::backend::ops;
use dpgan::dp::{NoiseMode, NoiseSource};
use dpgan::models::dpsgd_gan::{Discriminator, Generator};
use dpgan::nn::Module;
use dpgan::tensor::{Device, Tensor};
use dpgan::train::dpsgd_gan::{fake_accuracy, DpsgdGan, DpsgdGanConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn models_have_the_published_parameter_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let d = Discriminator::new(1, 128, &mut rng, &Device::Cpu).unwrap();
    assert_eq!(d.parameter_count(), 1_724_289, "docs/algorithms.md §4's D at d = 128");
    // G at d = 128: convT 128→256 k4 (524,544) + 10→256 k4 (41,216) + 512→256 k3 (1,179,904) +
    // 256→128 k4 (524,416) + 128→1 k4 (2,049).
    assert_eq!(Generator::new(1, 128, &mut rng, &Device::Cpu).unwrap().parameter_count(), 2_272_129);
    assert_eq!(Discriminator::new(2, 16, &mut rng, &Device::Cpu).unwrap().groups(), 2);
    assert!(Generator::new(1, 7, &mut rng, &Device::Cpu).is_err(), "an odd width cannot split D's branches");
}

/// PyTorch's default initialisation: every weight and bias within ±1/√fan_in, fan-in C·K·K for a
/// conv and (PyTorch's quirk) C_out·K·K for a conv-transpose.
#[test]
fn initialisation_is_pytorchs_default() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let g = Generator::new(1, 16, &mut rng, &Device::Cpu).unwrap();
    let d = Discriminator::new(1, 16, &mut rng, &Device::Cpu).unwrap();
    let check = |name: &str, t: &Tensor, fan_in: usize| {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let v = t.to_vec().unwrap();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max <= bound && max > 0.8 * bound, "{name}: max |w| {max}, bound {bound}");
    };
    check("G up7 (convT 64→32 k3)", &g.up7.weight, 32 * 9);
    check("G latent bias (convT 128→32 k4)", &g.latent.bias, 32 * 16);
    check("D down7 (conv 16→32 k4)", &d.down7.weight, 16 * 16);
    check("D label (conv 10→8 k4)", &d.label.weight, 10 * 16);
}

fn labels(rng: &mut impl Rng, n: usize) -> Tensor {
    let l: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
    Tensor::one_hot(&l, 10, &[1, n], &Device::Cpu).unwrap()
}

#[test]
fn the_generator_draws_images_in_the_unit_interval_and_d_one_logit_each() {
    let mut rng = common::rng("the_generator_draws_images_in_the_unit_interval");
    let g = Generator::new(1, 8, &mut rng, &Device::Cpu).unwrap();
    let d = Discriminator::new(1, 8, &mut rng, &Device::Cpu).unwrap();
    let (z, y) = DpsgdGan::generator_inputs(5, &mut rng, &Device::Cpu).unwrap();
    let images = g.forward(&Tape::new(), &z, &y).unwrap();
    assert_eq!(images.shape(), [1, 5, 1, 28, 28]);
    assert!(images.to_vec().unwrap().iter().all(|p| (0.0..=1.0).contains(p)));
    let pass = d.forward(&Tape::new(), &images, &y).unwrap();
    assert_eq!(pass.logits.shape(), [1, 5, 1]);
    assert_eq!(pass.layers.len(), 5);
}

fn model(config: DpsgdGanConfig) -> DpsgdGan {
    DpsgdGan::new(config, 8, NoiseSource::from_seed(3, NoiseMode::Fast), &mut ChaCha8Rng::seed_from_u64(4), &Device::Cpu).unwrap()
}

/// With no noise and a clip no gradient reaches, D's private gradient is the plain gradient of
/// the summed per-example BCE (real target 1, generated 0) divided by 2B, whatever the realised
/// real batch: never by the realised count n + B.
#[test]
fn unclipped_noiseless_gradient_is_the_summed_loss_over_two_b() {
    let b = 6;
    let config = DpsgdGanConfig { clip: 1e30, noise_multiplier: 0.0, batch_size: b, ..DpsgdGanConfig::default() };
    let m = model(config);
    let mut rng = common::rng("unclipped_noiseless_gradient_is_the_summed_loss_over_two_b");
    for real in [0usize, 3, 11] {
        let images = Tensor::uniform(&[1, real, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
        let y = labels(&mut rng, real);
        let fake = Tensor::uniform(&[1, b, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
        let fake_y = labels(&mut rng, b);
        let (private, _) = m.private_gradients(&images, &y, &fake, &fake_y).unwrap();

        let tape = Tape::new();
        m.discriminator.params().into_iter().for_each(|p| tape.watch(p));
        let mut loss = {
            let logits = m.discriminator.forward(&tape, &fake, &fake_y).unwrap().logits;
            tape.sum_all(&tape.bce_with_logits(&logits, &logits.full_like(logits.shape(), 0.0).unwrap()).unwrap()).unwrap()
        };
        if real > 0 {
            let logits = m.discriminator.forward(&tape, &images, &y).unwrap().logits;
            let real_loss = tape.sum_all(&tape.bce_with_logits(&logits, &logits.full_like(logits.shape(), 1.0).unwrap()).unwrap()).unwrap();
            loss = tape.add(&loss, &real_loss).unwrap();
        }
        let grads = tape.backward(&tape.scale(&loss, 1.0 / (2 * b) as f32).unwrap()).unwrap();
        for (i, (p, g)) in m.discriminator.params().into_iter().zip(&private).enumerate() {
            let plain = grads.of(p).unwrap().to_vec().unwrap();
            common::assert_close(&format!("{real} real: D tensor {i}"), &g.to_vec().unwrap(), &plain, common::tol::F32_REDUCTION);
        }
    }
}

/// Without noise, each of the n + B examples contributes at most C before the division by 2B.
#[test]
fn the_noiseless_gradient_is_bounded_by_the_clip() {
    let (b, clip) = (4, 0.01f32);
    let m = model(DpsgdGanConfig { clip, noise_multiplier: 0.0, batch_size: b, ..DpsgdGanConfig::default() });
    let mut rng = common::rng("the_noiseless_gradient_is_bounded_by_the_clip");
    let real = 7;
    let images = Tensor::uniform(&[1, real, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
    let y = labels(&mut rng, real);
    let fake = Tensor::uniform(&[1, b, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
    let (grads, _) = m.private_gradients(&images, &y, &fake, &labels(&mut rng, b)).unwrap();
    let norm = grads.iter().flat_map(|g| g.to_vec().unwrap()).map(|v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let bound = (real + b) as f64 * clip as f64 / (2 * b) as f64;
    // Clipped: every example's own norm is far above 0.01 at initialisation, so the bound binds.
    assert!(norm <= bound * (1.0 + 1e-5) && norm > 0.1 * bound, "‖g‖ = {norm}, bound {bound}");
    let wrong = m.private_gradients(&images, &y, &ops::narrow(&fake, 1, 0, 3).unwrap(), &labels(&mut rng, 3));
    assert!(wrong.is_err(), "a D step takes exactly B generated examples");
}

/// Both steps move their own network only: D's step leaves G, G's step leaves D. Each updates its
/// network in place: no parameter is copied because a tape still shares it (the census's
/// `copy_on_write`).
#[test]
fn each_step_moves_only_its_network() {
    let mut m = model(DpsgdGanConfig { batch_size: 4, ..DpsgdGanConfig::default() });
    let mut rng = common::rng("each_step_moves_only_its_network");
    let flat = |module: &dyn Module| -> Vec<f32> { module.params().into_iter().flat_map(|p| p.to_vec().unwrap()).collect() };
    let (g0, d0) = (flat(&m.generator), flat(&m.discriminator));
    let images = Tensor::uniform(&[1, 5, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
    let y = labels(&mut rng, 5);
    let (stepped, d_census) = count_ops(|| m.discriminator_step(&images, &y, &mut rng).map(|_| ()));
    stepped.unwrap();
    let (g1, d1) = (flat(&m.generator), flat(&m.discriminator));
    assert_eq!(g0, g1);
    assert_ne!(d0, d1);
    let (stepped, g_census) = count_ops(|| m.generator_step(&mut rng, &Device::Cpu).map(|_| ()));
    stepped.unwrap();
    for (step, census) in [("D", d_census), ("G", g_census)] {
        assert_eq!(census.get(COPY_ON_WRITE), None, "the {step} step copies a parameter to update it: {census:?}");
    }
    assert_eq!(d1, flat(&m.discriminator));
    assert_ne!(g1, flat(&m.generator));
    assert_eq!((m.d_steps_taken(), m.g_steps_taken()), (1, 1));
}

/// softplus(x) = log(1 + eˣ) in f64: BCE with logits is softplus(−l) for target 1, softplus(l) for 0.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The losses a step reports are means of the per-example BCE, computed here from D's logits:
/// D's over its n real and B generated examples, G's non-saturating one over its B, whose logits
/// (before G moves) are returned for the schedule.
#[test]
fn the_steps_report_their_mean_losses() {
    let b = 5;
    let mut m = model(DpsgdGanConfig { batch_size: b, ..DpsgdGanConfig::default() });
    let mut rng = common::rng("the_steps_report_their_mean_losses");
    let dev = Device::Cpu;
    let logits = |m: &DpsgdGan, x: &Tensor, y: &Tensor| -> Vec<f64> {
        m.discriminator.forward(&Tape::new(), x, y).unwrap().logits.to_vec().unwrap().into_iter().map(f64::from).collect()
    };
    let close =
        |what: &str, got: f32, want: f64| assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: {got} vs {want}");
    for real in [0usize, 3] {
        let images = Tensor::uniform(&[1, real, 1, 28, 28], 0.0, 1.0, &mut rng, &dev).unwrap();
        let y = labels(&mut rng, real);
        // What the step will generate: the same draws from a copy of its generator.
        let (z, fake_y) = DpsgdGan::generator_inputs(b, &mut rng.clone(), &dev).unwrap();
        let fake = m.generator.forward(&Tape::new(), &z, &fake_y).unwrap();
        let mut sum: f64 = logits(&m, &fake, &fake_y).iter().map(|&l| softplus(l)).sum();
        if real > 0 {
            sum += logits(&m, &images, &y).iter().map(|&l| softplus(-l)).sum::<f64>();
        }
        let (_, summed) = m.private_gradients(&images, &y, &fake, &fake_y).unwrap();
        close(&format!("{real} real: the summed loss"), summed.item().unwrap(), sum);
        let d = m.discriminator_step(&images, &y, &mut rng).unwrap();
        close(&format!("{real} real: D's loss"), d.loss.item().unwrap(), sum / (real + b) as f64);
    }
    let (z, y) = DpsgdGan::generator_inputs(b, &mut rng.clone(), &dev).unwrap();
    let before = logits(&m, &m.generator.forward(&Tape::new(), &z, &y).unwrap(), &y);
    let g = m.generator_step(&mut rng, &dev).unwrap();
    let returned: Vec<f64> = g.fake_logits.to_vec().unwrap().into_iter().map(f64::from).collect();
    assert_eq!(returned, before, "D's logits on the generated batch before G moved");
    close("G's loss", g.loss.item().unwrap(), before.iter().map(|&l| softplus(-l)).sum::<f64>() / b as f64);
}

/// D's accuracy on generated data is the share of logits below 0 (a logit of 0 is a coin toss,
/// not a call of "generated"); an empty batch has none.
#[test]
fn fake_accuracy_is_the_share_of_negative_logits() {
    let logits = Tensor::from_vec(vec![-1.0, 0.0, 2.0, -3.0], &[1, 4, 1], &Device::Cpu).unwrap();
    assert_eq!(fake_accuracy(&logits).unwrap(), 0.5);
    assert_eq!(fake_accuracy(&Tensor::from_vec(vec![-0.5; 3], &[1, 3, 1], &Device::Cpu).unwrap()).unwrap(), 1.0);
    assert!(fake_accuracy(&Tensor::zeros(&[1, 0, 1], &Device::Cpu).unwrap()).is_err());
}

/// A checkpoint taken before G's first step (D's Adam has moments, G's has none) restores.
#[test]
fn a_model_restores_before_either_optimizer_has_stepped() {
    let mut rng = common::rng("a_model_restores_before_either_optimizer_has_stepped");
    let config = DpsgdGanConfig { batch_size: 4, ..DpsgdGanConfig::default() };
    let mut trained = model(config);
    let saved = |m: &DpsgdGan| -> HashMap<String, Tensor> { m.named_tensors().into_iter().map(|(n, t)| (n, t.clone())).collect() };
    let mut fresh = model(config);
    fresh.restore(saved(&trained), 0, trained.adam_steps()).unwrap();
    let images = Tensor::uniform(&[1, 3, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
    trained.discriminator_step(&images, &labels(&mut rng, 3), &mut rng).unwrap();
    assert_eq!(trained.adam_steps(), (0, 1));
    fresh.restore(saved(&trained), trained.d_steps_taken(), trained.adam_steps()).unwrap();
    assert_eq!((fresh.d_steps_taken(), fresh.adam_steps()), (1, (0, 1)));
    let bits = |m: &DpsgdGan| -> Vec<(String, Vec<u32>)> {
        m.named_tensors().into_iter().map(|(n, t)| (n, t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect())).collect()
    };
    assert_eq!(bits(&fresh), bits(&trained));
}
