//! DP-CGAN's models and training step on the CPU.
mod common;

use dpgan::dp::{NoiseMode, NoiseSource};
use dpgan::models::dpcgan::{Discriminator, Generator};
use dpgan::tensor::{Device, Tensor};
use dpgan::train::dpcgan::{DpCgan, DpCganConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn models_have_the_published_parameter_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(Generator::new(1, &mut rng, &Device::Cpu).unwrap().parameter_count(), 115_344);
    assert_eq!(Discriminator::new(1, &mut rng, &Device::Cpu).unwrap().parameter_count(), 101_889);
}

fn batch(rng: &mut impl Rng, b: usize) -> (Tensor, Tensor) {
    let images = Tensor::uniform(&[1, b, 784], -1.0, 1.0, rng, &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..10)).collect();
    (images, Tensor::one_hot(&labels, 10, &[1, b], &Device::Cpu).unwrap())
}

fn weights(run: &DpCgan) -> Vec<f32> {
    run.discriminator.params().into_iter().chain(run.generator.params()).flat_map(|p| p.to_vec().unwrap()).collect()
}

fn d_weights(run: &DpCgan) -> Vec<f32> {
    run.discriminator.params().into_iter().flat_map(|p| p.to_vec().unwrap()).collect()
}

fn run(config: DpCganConfig, seed: u64, noise_seed: u64) -> DpCgan {
    DpCgan::new(config, NoiseSource::from_seed(noise_seed, NoiseMode::Fast), &mut ChaCha8Rng::seed_from_u64(seed), &Device::Cpu).unwrap()
}

/// With no noise and a clip no gradient reaches, the private step is the non-private one, and so
/// are the mean losses it logs.
#[test]
fn unclipped_noiseless_private_step_equals_the_plain_step() {
    let config = DpCganConfig { clip: 1e30, noise_multiplier: 0.0, batch_divisor: 16.0, ..DpCganConfig::default() };
    let (mut private, mut plain) = (run(config, 1, 2), run(config, 1, 2));
    let mut data_rng = common::rng("unclipped_noiseless_private_step_equals_the_plain_step");
    for step in 0..2 {
        let (x, y) = batch(&mut data_rng, 16);
        let seed: u64 = data_rng.random();
        let p = private.private_step(&x, &y, x.shape()[1], &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let q = plain.non_private_step(&x, &y, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        for (name, a, b) in [("D loss", &p.discriminator, &q.discriminator), ("G loss", &p.generator, &q.generator)] {
            common::assert_close(&format!("{name} at step {step}"), &a.to_vec().unwrap(), &b.to_vec().unwrap(), common::tol::F32_REDUCTION);
        }
    }
    common::assert_close("weights after two steps", &weights(&private), &weights(&plain), common::tol::F32_REDUCTION);
    assert_eq!((private.steps_taken(), plain.steps_taken()), (2, 2), "both kinds of step count themselves");
}

/// The learning rate the run's schedule sets is the one D's SGD step uses: twice the rate, twice
/// the move (no noise, the same batch and draws). Unclipped, so that the moves are large beside the
/// f32 rounding of w + Δ that the difference of weights carries.
#[test]
fn the_scheduled_learning_rate_reaches_d_step() {
    let config = DpCganConfig { clip: 1e30, noise_multiplier: 0.0, batch_divisor: 16.0, ..DpCganConfig::default() };
    let mut data_rng = common::rng("the_scheduled_learning_rate_reaches_d_step");
    let (x, y) = batch(&mut data_rng, 16);
    let seed: u64 = data_rng.random();
    let moved = |lr: f32| -> Vec<f32> {
        let mut dp = run(config, 5, 6);
        let before = d_weights(&dp);
        dp.set_discriminator_lr(lr);
        dp.private_step(&x, &y, 16, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        d_weights(&dp).iter().zip(&before).map(|(a, b)| a - b).collect()
    };
    let (once, twice) = (moved(config.d_lr), moved(2.0 * config.d_lr));
    let doubled: Vec<f32> = once.iter().map(|d| 2.0 * d).collect();
    common::assert_close("D's move at twice the rate", &twice, &doubled, 1e-4);
    assert!(moved(0.0).iter().all(|&d| d == 0.0), "a rate of 0 leaves D where it was");
}

/// Without noise, D moves by at most lr·2C per step: each of the two losses contributes at most
/// C·B before the division by B.
#[test]
fn discriminator_update_is_bounded_by_the_clip() {
    let config = DpCganConfig { clip: 0.05, noise_multiplier: 0.0, batch_divisor: 16.0, ..DpCganConfig::default() };
    let mut dp = run(config, 3, 4);
    let mut data_rng = common::rng("discriminator_update_is_bounded_by_the_clip");
    for _ in 0..3 {
        let before = d_weights(&dp);
        let (x, y) = batch(&mut data_rng, 16);
        dp.private_step(&x, &y, x.shape()[1], &mut data_rng).unwrap();
        let moved: f64 = d_weights(&dp).iter().zip(&before).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let bound = (config.d_lr * 2.0 * config.clip) as f64;
        assert!(moved <= bound * (1.0 + 1e-4), "D moved {moved} > {bound}");
        assert!(moved > 0.1 * bound, "D moved {moved}: the clip should bind at C = {}", config.clip);
    }
}

#[test]
fn a_run_replays_from_its_seeds() {
    let config = DpCganConfig { batch_divisor: 8.0, ..DpCganConfig::default() };
    let steps = |noise_seed: u64| {
        let mut dp = run(config, 5, noise_seed);
        let mut data_rng = ChaCha8Rng::seed_from_u64(6);
        for _ in 0..2 {
            let (x, y) = batch(&mut data_rng, 8);
            dp.private_step(&x, &y, x.shape()[1], &mut data_rng).unwrap();
        }
        assert_eq!(dp.steps_taken(), 2);
        weights(&dp)
    };
    assert_eq!(steps(7), steps(7));
    assert_ne!(steps(7), steps(8));
}

/// Poisson sampling can draw an empty batch: the step still runs and still adds the noise (the
/// mechanism ran), so D moves by exactly the noise plus the clipped generated-data part.
#[test]
fn an_empty_poisson_batch_still_takes_a_noised_step() {
    let config = DpCganConfig::default();
    let (mut with_noise, mut without) = (run(config, 3, 1), run(DpCganConfig { noise_multiplier: 0.0, ..config }, 3, 1));
    let (x, y) = batch(&mut common::rng("an_empty_poisson_batch_still_takes_a_noised_step"), 0);
    let losses = with_noise.private_step(&x, &y, 16, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    without.private_step(&x, &y, 16, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    assert!(losses.discriminator.item().unwrap().is_finite() && losses.generator.item().unwrap().is_finite());
    let (a, b) = (d_weights(&with_noise), d_weights(&without));
    // Noise of std σC/B = 1.15·1.1/600 per coordinate separates the two runs' D everywhere.
    let differing = a.iter().zip(&b).filter(|(p, q)| p != q).count();
    assert!(differing as f64 > 0.99 * a.len() as f64, "only {differing} of {} coordinates were noised", a.len());
    assert!(a.iter().all(|v| v.is_finite()));
}
