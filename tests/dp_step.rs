//! The DP-SGD gradient: clipped losses summed, noise of std σC added exactly once per coordinate
//! when a loss is private, division by the batch divisor; reproducible from the seed.
mod common;

use common::{assert_close_f64, randn_vec};
use dpgan::dp::clip::{LayerGrad, PerExampleGrad};
use dpgan::dp::{private_gradients, ClippedLoss, DpSgdConfig, NoiseMode, NoiseSource};
use dpgan::tensor::Tensor;
use rand::Rng;

fn f64_tensor(rng: &mut impl Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec_f64(randn_vec(rng, n).into_iter().map(f64::from).collect(), shape).unwrap()
}

fn linear(rng: &mut impl Rng, g: usize, b: usize, i: usize, o: usize) -> LayerGrad {
    LayerGrad::Linear { input: f64_tensor(rng, &[g, b, i]), output_grad: f64_tensor(rng, &[g, b, o]), bias: true }
}

fn zero_linear(g: usize, b: usize, i: usize, o: usize) -> LayerGrad {
    let zeros = |s: &[usize]| Tensor::from_vec_f64(vec![0.0; s.iter().product()], s).unwrap();
    LayerGrad::Linear { input: zeros(&[g, b, i]), output_grad: zeros(&[g, b, o]), bias: true }
}

fn values(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(|t| t.to_vec_f64().unwrap()).collect()
}

/// Without noise the result is (real part + fake part)/divisor, each part clipped on its own.
#[test]
fn noiseless_step_is_the_sum_of_separately_clipped_losses() {
    let mut rng = common::rng("noiseless_step");
    let (real, fake) = (linear(&mut rng, 2, 6, 5, 4), linear(&mut rng, 2, 6, 5, 4));
    let config = DpSgdConfig { clip: 1.5, noise_multiplier: 0.0, batch_divisor: 6.0 };
    let noise = NoiseSource::from_seed(1, NoiseMode::Fast);
    let losses =
        [ClippedLoss { layers: vec![&real as &dyn PerExampleGrad], noised: true }, ClippedLoss { layers: vec![&fake], noised: false }];
    let got = values(&private_gradients(&losses, &config, &noise, 0).unwrap());
    let part = |l: &LayerGrad| {
        let f = dpgan::dp::clip::clip_factors(&l.per_example_sq_norms().unwrap(), config.clip).unwrap();
        let c = l.clipped_sum(&f).unwrap();
        [c.weight.to_vec_f64().unwrap(), c.bias.unwrap().to_vec_f64().unwrap()].concat()
    };
    let expected: Vec<f64> = part(&real).iter().zip(part(&fake)).map(|(a, b)| (a + b) / 6.0).collect();
    assert_close_f64("noiseless DP-SGD gradient", &got, &expected, 1e-14);
}

/// With zero gradients the result is the noise alone: std σC/divisor, added once even when two
/// losses are private, absent when none is.
#[test]
fn noise_is_added_once_with_std_sigma_c() {
    let (g, b, i, o) = (1, 3, 300, 200);
    let (a, c) = (zero_linear(g, b, i, o), zero_linear(g, b, i, o));
    let config = DpSgdConfig { clip: 2.0, noise_multiplier: 1.1, batch_divisor: 4.0 };
    let noise = NoiseSource::from_seed(20261124, NoiseMode::Fast);
    let expected_std = 1.1 * 2.0 / 4.0;
    for noised in [(true, false), (true, true)] {
        let losses =
            [ClippedLoss { layers: vec![&a as &dyn PerExampleGrad], noised: noised.0 }, ClippedLoss { layers: vec![&c], noised: noised.1 }];
        let v = values(&private_gradients(&losses, &config, &noise, 7).unwrap());
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        // n = 60,200: the sample std's relative error is about 1/sqrt(2n) = 0.29%; 6 sigma is 1.8%.
        assert!((std / expected_std - 1.0).abs() < 0.018, "{noised:?}: std {std} vs {expected_std}");
        assert!(mean.abs() < 6.0 * expected_std / n.sqrt(), "{noised:?}: mean {mean}");
    }
    let public = [ClippedLoss { layers: vec![&a as &dyn PerExampleGrad], noised: false }];
    assert!(values(&private_gradients(&public, &config, &noise, 7).unwrap()).iter().all(|&x| x == 0.0));
}

#[test]
fn noise_replays_from_the_seed_and_differs_between_steps() {
    let mut rng = common::rng("noise_replays");
    let layer = linear(&mut rng, 2, 4, 6, 3);
    let config = DpSgdConfig { clip: 1.0, noise_multiplier: 1.0, batch_divisor: 4.0 };
    let losses = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised: true }];
    let run =
        |seed: u64, step: u64| values(&private_gradients(&losses, &config, &NoiseSource::from_seed(seed, NoiseMode::Fast), step).unwrap());
    assert_eq!(run(5, 3), run(5, 3));
    assert_ne!(run(5, 3), run(5, 4));
    assert_ne!(run(5, 3), run(6, 3));
}

#[test]
fn bad_configurations_are_errors() {
    let layer = zero_linear(1, 2, 3, 4);
    let noise = NoiseSource::from_seed(0, NoiseMode::Fast);
    let losses = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised: true }];
    for config in [
        DpSgdConfig { clip: 0.0, noise_multiplier: 1.0, batch_divisor: 1.0 },
        DpSgdConfig { clip: 1.0, noise_multiplier: -1.0, batch_divisor: 1.0 },
        DpSgdConfig { clip: 1.0, noise_multiplier: 1.0, batch_divisor: 0.0 },
    ] {
        assert!(private_gradients(&losses, &config, &noise, 0).is_err(), "{config:?}");
    }
    assert!(private_gradients(&[], &DpSgdConfig { clip: 1.0, noise_multiplier: 1.0, batch_divisor: 1.0 }, &noise, 0).is_err());
}
