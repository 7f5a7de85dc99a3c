//! Properties of the algorithms that a bug could break while training still looks normal, each
//! stated as what the guarantee needs rather than as today's lines:
//! - every noised tensor of a run gets fresh noise: no (key, step, tensor) position twice, and step
//!   t (iteration t) draws the key of t;
//! - DP-CGAN's update is `lr · (Σ clipped + σC·z_t) / (q·N)` whatever the realised Poisson batch
//!   size, with z_t exactly the normals of step t's key;
//! - DPSGD-GAN's D gradient is `(Σ clipped + σC·z_t) / 2B` whatever the realised batch, z_t the
//!   normals of D step t's key (its Adam update is not linear in the gradient, so the gradient
//!   handed to Adam is what is pinned), and its run draws fresh noise at every D step;
//! - every Poisson batch is a fresh draw;
//! - GS-WGAN's sanitiser noise is exactly `(2σC/B)·z`;
//! - a calibrated σ is never below the one the accountant needs for the target.
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use common::cli::data_root;
use dpgan::backend::{ops, RowNorm};
use dpgan::data::sampling::Sampling;
use dpgan::data::{Dataset, Split};
use dpgan::dp::audit::record_noise_keys;
use dpgan::dp::noise::standard_normal_at;
use dpgan::dp::{GsWganSanitizer, NoiseKey, NoiseMode, NoiseSource, RunKey};
use dpgan::privacy::{calibrate_noise_multiplier, Conversion, Orders};
use dpgan::tensor::{Device, Tensor};
use dpgan::train::dpcgan::run::{DpCganRun, DpCganRunConfig, DpCganSettings};
use dpgan::train::dpcgan::{DpCgan, DpCganConfig};
use dpgan::train::gswgan::run::{Accounting, GsWganRunConfig, GsWganRunner, GsWganSettings};
use dpgan::train::progress::Progress;
use dpgan::train::replay::StepBatches;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn mnist() -> std::path::PathBuf {
    data_root().join("mnist")
}

/// The positions of `keys`: none may repeat within a run.
fn assert_all_fresh(what: &str, keys: &[NoiseKey]) {
    let mut seen = HashSet::new();
    for k in keys {
        assert!(
            seen.insert((k.mode as u8, k.key, k.step, k.tensor_index)),
            "{what}: step {} tensor {} noised twice",
            k.step,
            k.tensor_index
        );
    }
}

#[test]
fn a_dp_cgan_run_draws_fresh_noise_at_every_step() {
    for cuda_graph in [false, true] {
        dp_cgan_noise_is_fresh(cuda_graph);
    }
}

/// A DP-CGAN run's noise keys, unpadded or with the padded batches of `--cuda-graph` (run eagerly
/// here, through the same strict binding of per-step values a capture uses).
fn dp_cgan_noise_is_fresh(cuda_graph: bool) {
    let data = Dataset::load(&mnist(), Split::Train).unwrap();
    let settings = DpCganSettings { seed: 3, steps: Some(6), batch_size: 64, cuda_graph, ..DpCganSettings::default() };
    let config = DpCganRunConfig::plan(&settings, &data, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (outcome, keys) = record_noise_keys(|| {
        let mut run = DpCganRun::start(&dir.path().join("run"), config, &data, &Device::Cpu).unwrap();
        run.train(&Progress::new(0, 6)).unwrap()
    });
    assert_eq!(outcome.steps, 6);
    assert_all_fresh("dp-cgan", &keys);
    // Step t noises D's four parameter tensors with the keys of step t.
    let mut per_step: HashMap<u64, Vec<u32>> = HashMap::new();
    for k in &keys {
        per_step.entry(k.step).or_default().push(k.tensor_index);
    }
    for t in 0..6 {
        assert_eq!(per_step.get(&t).map(Vec::as_slice), Some(&[0, 1, 2, 3][..]), "step {t}'s noised tensors");
    }
    assert_eq!(per_step.len(), 6);
}

/// D's parameters, flattened, in `params()` order.
fn d_params(model: &DpCgan) -> Vec<Vec<f32>> {
    model.discriminator.params().into_iter().map(|p| p.to_vec().unwrap()).collect()
}

/// A model at step `t` with fixed initial weights.
fn model_at_step(config: DpCganConfig, noise: NoiseSource, t: u64) -> DpCgan {
    let mut model = DpCgan::new(config, noise, &mut ChaCha8Rng::seed_from_u64(11), &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = model.named_tensors().into_iter().map(|(n, t)| (n, t.clone())).collect();
    model.restore(tensors, t, 0).unwrap();
    model
}

/// Two models from the same weights and inputs, one with σ and one without: D's updates differ by
/// exactly `lr·σC·z/(q·N)`, z the standard normals that step t's key assigns to each parameter
/// tensor, for a realised batch smaller than the expected one (Poisson). This pins the noise's
/// scale, its divisor and its key to the step, bit-level sources aside.
#[test]
fn dp_cgan_noise_is_the_step_keys_normals_times_sigma_c_over_the_expected_batch() {
    let (sigma, clip, divisor, lr) = (1.15f32, 1.1f32, 20.0f32, 0.15f32);
    let noisy = DpCganConfig { clip, noise_multiplier: sigma, batch_divisor: divisor, d_lr: lr, ..DpCganConfig::default() };
    let quiet = DpCganConfig { noise_multiplier: 0.0, ..noisy };
    let mut data_rng = common::rng("dp_cgan_noise_is_the_step_keys_normals");
    let realised = 13; // a Poisson draw below its expectation q·N = 20
    let images = Tensor::uniform(&[1, realised, 784], -1.0, 1.0, &mut data_rng, &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..realised).map(|_| data_rng.random_range(0..10)).collect();
    let labels = Tensor::one_hot(&labels, 10, &[1, realised], &Device::Cpu).unwrap();
    let source = NoiseSource::from_seed(5, NoiseMode::Fast);
    for t in [0u64, 1, 7, (1 << 32) + 2] {
        let before = d_params(&model_at_step(quiet, source.clone(), t));
        let step = |config| {
            let mut model = model_at_step(config, source.clone(), t);
            model.private_step(&images, &labels, 20, &mut ChaCha8Rng::seed_from_u64(t)).unwrap();
            d_params(&model)
        };
        let (with_noise, without) = (step(noisy), step(quiet));
        for (index, ((a, b), w0)) in with_noise.iter().zip(&without).zip(&before).enumerate() {
            let key = source.key_at(t, index as u32);
            // θ − lr·(g + σC·z)/D against θ − lr·g/D.
            let expected: Vec<f32> = (0..a.len()).map(|e| -lr * (sigma * clip * standard_normal_at(&key, e as u64)) / divisor).collect();
            let got: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            // Rounding of θ (|θ| ≲ 0.1, f32) against a difference of ~1e-2 per element.
            common::assert_close(&format!("step {t}, D tensor {index}: noisy − quiet update"), &got, &expected, 1e-4);
            assert_ne!(a, w0, "the step moved D");
        }
    }
}

/// DPSGD-GAN: two models from the same weights and inputs, one with σ and one without: D's
/// private gradients differ by exactly `σC·z/(2B)`, z the normals of D step t's key, for realised
/// real batches below, at and above B (0 included).
#[test]
fn dpsgd_gan_noise_is_the_step_keys_normals_times_sigma_c_over_two_b() {
    use dpgan::train::dpsgd_gan::{DpsgdGan, DpsgdGanConfig};
    let (sigma, clip, b) = (1.0f32, 0.7f32, 10usize);
    let noisy = DpsgdGanConfig { clip, noise_multiplier: sigma, batch_size: b, ..DpsgdGanConfig::default() };
    let quiet = DpsgdGanConfig { noise_multiplier: 0.0, ..noisy };
    let source = NoiseSource::from_seed(8, NoiseMode::Fast);
    let mut rng = common::rng("dpsgd_gan_noise_is_the_step_keys_normals");
    let labels = |rng: &mut ChaCha8Rng, n: usize| {
        let l: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
        Tensor::one_hot(&l, 10, &[1, n], &Device::Cpu).unwrap()
    };
    for (t, realised) in [(0u64, 0usize), (1, 4), (5, 10), ((1 << 32) + 3, 17)] {
        let at_step = |config| {
            let mut m = DpsgdGan::new(config, 4, source.clone(), &mut ChaCha8Rng::seed_from_u64(11), &Device::Cpu).unwrap();
            let tensors: HashMap<String, Tensor> = m.named_tensors().into_iter().map(|(n, t)| (n, t.clone())).collect();
            m.restore(tensors, t, (0, 0)).unwrap();
            m
        };
        let images = Tensor::uniform(&[1, realised, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
        let y = labels(&mut rng, realised);
        let fake = Tensor::uniform(&[1, b, 1, 28, 28], 0.0, 1.0, &mut rng, &Device::Cpu).unwrap();
        let fake_y = labels(&mut rng, b);
        let (with_noise, _) = at_step(noisy).private_gradients(&images, &y, &fake, &fake_y).unwrap();
        let (without, _) = at_step(quiet).private_gradients(&images, &y, &fake, &fake_y).unwrap();
        assert_eq!(with_noise.len(), 10, "five convs, weight and bias each");
        for (index, (a, q)) in with_noise.iter().zip(&without).enumerate() {
            let key = source.key_at(t, index as u32);
            let expected: Vec<f32> = (0..a.numel()).map(|e| sigma * clip * standard_normal_at(&key, e as u64) / (2 * b) as f32).collect();
            let got: Vec<f32> = a.to_vec().unwrap().iter().zip(q.to_vec().unwrap()).map(|(x, y)| x - y).collect();
            common::assert_close(&format!("D step {t}, {realised} real, tensor {index}: noisy − quiet"), &got, &expected, 1e-4);
        }
    }
}

/// GS-WGAN's sanitiser adds exactly `(2σC/B)·z` to every clipped row, z the key's normals: the
/// noise scale pinned element by element, not only in distribution.
#[test]
fn the_sanitiser_adds_the_keys_normals_times_two_sigma_c_over_b() {
    let mut rng = common::rng("the_sanitiser_adds_the_keys_normals");
    let (batch, sigma, clip) = (7usize, 1.07f64, 1.0f64);
    let g = Tensor::randn(&[1, batch, 784], &mut rng, &Device::Cpu).unwrap();
    let key = NoiseSource::from_seed(3, NoiseMode::Secure).key_at(12, 0);
    let sanitised = GsWganSanitizer::new(clip, sigma).unwrap().sanitize(&g, &key).unwrap().to_vec().unwrap();
    let clipped = ops::sanitize_rows(&g, (clip / batch as f64) as f32, RowNorm::AtMost, 0.0, &key).unwrap().to_vec().unwrap();
    let std = (2.0 * sigma * clip / batch as f64) as f32;
    let expected: Vec<f32> = clipped.iter().enumerate().map(|(e, c)| c + std * standard_normal_at(&key, e as u64)).collect();
    common::assert_close("sanitised rows", &sanitised, &expected, common::tol::F32_ELEMENTWISE);
}

/// A DPSGD-GAN run noises D's ten tensors at every D step with the keys of that step, never a
/// position twice.
#[test]
fn a_dpsgd_gan_run_draws_fresh_noise_at_every_d_step() {
    use dpgan::train::dpsgd_gan::run::{DpsgdGanRun, DpsgdGanRunConfig, DpsgdGanSettings};
    let data = Dataset::load(&mnist(), Split::Train).unwrap();
    let settings =
        DpsgdGanSettings { seed: 3, d_steps: 5, batch_size: 16, width: 4, schedule: "2".parse().unwrap(), ..DpsgdGanSettings::default() };
    let config = DpsgdGanRunConfig::plan(&settings, &data, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (outcome, keys) = record_noise_keys(|| {
        let mut run = DpsgdGanRun::start(&dir.path().join("run"), config, &data, &Device::Cpu).unwrap();
        run.train(&Progress::new(0, 5)).unwrap()
    });
    assert_eq!(outcome.steps, 5);
    assert_all_fresh("dpsgd-gan", &keys);
    let mut per_step: HashMap<u64, Vec<u32>> = HashMap::new();
    for k in &keys {
        per_step.entry(k.step).or_default().push(k.tensor_index);
    }
    for t in 0..5 {
        assert_eq!(per_step.get(&t).map(Vec::as_slice), Some(&(0..10).collect::<Vec<u32>>()[..]), "D step {t}'s noised tensors");
    }
    assert_eq!(per_step.len(), 5);
}

/// Over many steps every Poisson batch is a fresh draw: no two equal, and consecutive batches
/// overlap as independent draws do (q²N records on average).
#[test]
fn poisson_batches_are_fresh_at_every_step() {
    let (records, q, steps) = (2000usize, 0.05, 400u64);
    let mut batches = StepBatches::new(records, Sampling::Poisson { sample_rate: q }, &RunKey::generate().unwrap()).unwrap();
    let drawn: Vec<Vec<usize>> = (0..steps).map(|t| batches.batch(t).unwrap()).collect();
    let distinct: HashSet<&Vec<usize>> = drawn.iter().collect();
    assert_eq!(distinct.len(), drawn.len(), "a Poisson batch was drawn twice");
    let overlaps: Vec<f64> = drawn
        .windows(2)
        .map(|w| {
            let a: HashSet<&usize> = w[0].iter().collect();
            w[1].iter().filter(|i| a.contains(i)).count() as f64
        })
        .collect();
    let mean = overlaps.iter().sum::<f64>() / overlaps.len() as f64;
    // Each overlap is Binomial(N, q²): mean 5, sd ≈ 2.2; over 399 pairs the mean's sd is 0.11.
    let expected = q * q * records as f64;
    assert!(
        (mean - expected).abs() < 6.0 * (expected / overlaps.len() as f64).sqrt(),
        "mean overlap {mean}, independent draws give {expected}"
    );
}

/// Whatever the target, steps and rate: the σ a planned run uses spends at most the target, and
/// is not below the accountant's own calibration.
#[test]
fn a_calibrated_sigma_never_spends_more_than_its_target() {
    let data = Dataset::load(&mnist(), Split::Train).unwrap();
    let mut rng = common::rng("a_calibrated_sigma_never_spends_more_than_its_target");
    for _ in 0..6 {
        let batch_size = rng.random_range(30..2000);
        let steps = rng.random_range(10..5000);
        let target = 10f64.powf(rng.random_range(-0.5..1.3));
        let settings = DpCganSettings {
            seed: 1,
            steps: Some(steps),
            batch_size,
            noise_multiplier: None,
            target_epsilon: Some(target),
            ..DpCganSettings::default()
        };
        let config = DpCganRunConfig::plan(&settings, &data, &Device::Cpu).unwrap();
        let exact =
            calibrate_noise_multiplier(config.sample_rate, steps, config.delta, target, &Orders::Standard.values(), Conversion::Improved)
                .unwrap();
        assert!(
            config.noise_multiplier as f64 >= exact,
            "B {batch_size}, {steps} steps, ε {target}: σ {} < {exact}",
            config.noise_multiplier
        );
        let planned = config.privacy().planned_epsilon().unwrap().epsilon;
        assert!(planned <= target, "B {batch_size}, {steps} steps: planned ε {planned} > target {target}");
    }
}

/// GS-WGAN: phase 2 noises one sanitised gradient per iteration, iteration t with the key of t.
mod gs_wgan {
    use super::*;

    fn warm_start(out: &Path) {
        common::cli::tiny_warm_start(out, 2, 2, 2);
    }

    #[test]
    fn phase_two_draws_the_key_of_each_iteration_once() {
        let dir = tempfile::tempdir().unwrap();
        let warm = dir.path().join("warm");
        warm_start(&warm);
        let settings = GsWganSettings {
            warm_start: warm,
            seed: 9,
            iterations: 5,
            generator: "dcgan".parse().unwrap(),
            accounting: Accounting::AsPublished,
            ..GsWganSettings::default()
        };
        let config = GsWganRunConfig::plan(&settings, &Device::Cpu).unwrap();
        let (outcome, keys) = record_noise_keys(|| {
            let mut run = GsWganRunner::start(&dir.path().join("run"), config, &Device::Cpu).unwrap();
            run.train(&Progress::new(0, 5)).unwrap()
        });
        assert_eq!(outcome.iterations, 5);
        assert_all_fresh("gs-wgan phase 2", &keys);
        let steps: Vec<(u64, u32)> = keys.iter().map(|k| (k.step, k.tensor_index)).collect();
        assert_eq!(steps, (0..5).map(|t| (t, 0)).collect::<Vec<_>>(), "iteration t must sanitise with the key of t");
    }
}
