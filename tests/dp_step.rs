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
    let losses = [
        ClippedLoss { layers: vec![&real as &dyn PerExampleGrad], noised: true, weights: None },
        ClippedLoss { layers: vec![&fake], noised: false, weights: None },
    ];
    let got = values(&private_gradients(&losses, &config, &noise, 0).unwrap());
    let part = |l: &LayerGrad| {
        let f = dpgan::dp::clip::clip_factors(&l.per_example_sq_norms().unwrap(), config.clip).unwrap();
        let c = l.clipped_sum(&f).unwrap();
        [c.weight.to_vec_f64().unwrap(), c.bias.unwrap().to_vec_f64().unwrap()].concat()
    };
    let expected: Vec<f64> = part(&real).iter().zip(part(&fake)).map(|(a, b)| (a + b) / 6.0).collect();
    assert_close_f64("noiseless DP-SGD gradient", &got, &expected, 1e-14);
}

/// Example weights scale each example's clip factor: weights of 1 change nothing; a batch padded
/// with weight-0 rows gives exactly the gradient of its unpadded examples (what a padded Poisson
/// batch relies on); a weight of the wrong shape is refused.
#[test]
fn weighted_examples_are_clipped_then_scaled_and_zero_weights_contribute_nothing() {
    let mut rng = common::rng("weighted_examples");
    let (g, b, pad, i, o) = (1, 5, 3, 6, 4);
    let padded = linear(&mut rng, g, b + pad, i, o);
    let LayerGrad::Linear { input, output_grad, .. } = &padded else { unreachable!() };
    let head = |t: &Tensor| dpgan::backend::ops::narrow(t, 1, 0, b).unwrap();
    let unpadded = LayerGrad::Linear { input: head(input), output_grad: head(output_grad), bias: true };
    let config = DpSgdConfig { clip: 0.8, noise_multiplier: 0.0, batch_divisor: 5.0 };
    let noise = NoiseSource::from_seed(3, NoiseMode::Fast);
    let gradient = |layer: &LayerGrad, weights: Option<&Tensor>| {
        let losses = [ClippedLoss { layers: vec![layer as &dyn PerExampleGrad], noised: true, weights }];
        values(&private_gradients(&losses, &config, &noise, 0).unwrap())
    };
    let weights = |w: Vec<f64>| {
        let n = w.len();
        Tensor::from_vec_f64(w, &[g, n]).unwrap()
    };
    let ones = weights(vec![1.0; b + pad]);
    assert_eq!(gradient(&padded, Some(&ones)), gradient(&padded, None), "weights of 1");
    let mask = weights([vec![1.0; b], vec![0.0; pad]].concat());
    assert_close_f64("padded batch", &gradient(&padded, Some(&mask)), &gradient(&unpadded, None), 1e-14);
    assert_ne!(gradient(&padded, None), gradient(&unpadded, None), "the padding rows must matter unweighted");
    let wrong = weights(vec![1.0; b]);
    let losses = [ClippedLoss { layers: vec![&padded as &dyn PerExampleGrad], noised: true, weights: Some(&wrong) }];
    let err = private_gradients(&losses, &config, &noise, 0).unwrap_err().to_string();
    assert!(err.contains("weights"), "{err}");
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
        let losses = [
            ClippedLoss { layers: vec![&a as &dyn PerExampleGrad], noised: noised.0, weights: None },
            ClippedLoss { layers: vec![&c], noised: noised.1, weights: None },
        ];
        let v = values(&private_gradients(&losses, &config, &noise, 7).unwrap());
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        // n = 60,200: the sample std's relative error is about 1/sqrt(2n) = 0.29%; 6 sigma is 1.8%.
        assert!((std / expected_std - 1.0).abs() < 0.018, "{noised:?}: std {std} vs {expected_std}");
        assert!(mean.abs() < 6.0 * expected_std / n.sqrt(), "{noised:?}: mean {mean}");
    }
    let public = [ClippedLoss { layers: vec![&a as &dyn PerExampleGrad], noised: false, weights: None }];
    assert!(values(&private_gradients(&public, &config, &noise, 7).unwrap()).iter().all(|&x| x == 0.0));
}

#[test]
fn noise_replays_from_the_seed_and_differs_between_steps() {
    let mut rng = common::rng("noise_replays");
    let layer = linear(&mut rng, 2, 4, 6, 3);
    let config = DpSgdConfig { clip: 1.0, noise_multiplier: 1.0, batch_divisor: 4.0 };
    let losses = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised: true, weights: None }];
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
    let losses = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised: true, weights: None }];
    for config in [
        DpSgdConfig { clip: 0.0, noise_multiplier: 1.0, batch_divisor: 1.0 },
        DpSgdConfig { clip: 1.0, noise_multiplier: -1.0, batch_divisor: 1.0 },
        DpSgdConfig { clip: 1.0, noise_multiplier: 1.0, batch_divisor: 0.0 },
    ] {
        assert!(private_gradients(&losses, &config, &noise, 0).is_err(), "{config:?}");
    }
    assert!(private_gradients(&[], &DpSgdConfig { clip: 1.0, noise_multiplier: 1.0, batch_divisor: 1.0 }, &noise, 0).is_err());
    // A divisor that is not finite and positive is refused on every path, the noiseless ones too
    // (σ = 0, or only public losses), where no noise op would catch it.
    let public = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised: false, weights: None }];
    for divisor in [0.0, -1.0, f32::INFINITY, f32::NAN] {
        for sigma in [0.0, 1.0] {
            let config = DpSgdConfig { clip: 1.0, noise_multiplier: sigma, batch_divisor: divisor };
            assert!(private_gradients(&losses, &config, &noise, 0).is_err(), "{config:?}");
            assert!(private_gradients(&public, &config, &noise, 0).is_err(), "public losses, {config:?}");
        }
    }
}

/// The fused noise-and-divide pass equals the noise followed by the division, bit for bit, in both
/// noise modes, in f32 and f64.
#[test]
fn noise_and_division_in_one_pass_equal_the_two_passes() {
    use dpgan::backend::{ops, BinaryOp};
    let mut rng = common::rng("noise_and_division_in_one_pass_equal_the_two_passes");
    for mode in [NoiseMode::Fast, NoiseMode::Secure] {
        let key = NoiseSource::from_seed(rng.random(), mode).key_at(3, 1);
        for x in [common::randn(&mut rng, &[3, 1001]), f64_tensor(&mut rng, &[2, 37])] {
            let (std, divisor) = (1.15f32 * 1.1, 64.0f32);
            let mut two_passes = x.clone();
            ops::add_gaussian_noise(&mut two_passes, std, &key).unwrap();
            let two_passes = ops::binary(BinaryOp::Div, &two_passes, &ops::scalar_like(&x, divisor as f64).unwrap()).unwrap();
            let mut fused = x.clone();
            ops::add_gaussian_noise_and_divide(&mut fused, std, divisor, &key).unwrap();
            let (a, e) = (fused.to_vec_f64().unwrap(), two_passes.to_vec_f64().unwrap());
            assert!(a.iter().zip(&e).all(|(a, e)| a.to_bits() == e.to_bits()), "{mode:?} {:?}: fused differs from two passes", x.dtype());
            assert!(a.iter().zip(x.to_vec_f64().unwrap()).any(|(a, x)| *a != x / divisor as f64), "{mode:?}: no noise added");
        }
    }
    let mut x = Tensor::zeros(&[4], &dpgan::Device::Cpu).unwrap();
    let key = NoiseSource::from_seed(0, NoiseMode::Fast).key_at(0, 0);
    for divisor in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(ops::add_gaussian_noise_and_divide(&mut x, 1.0, divisor, &key).is_err(), "divisor {divisor}");
    }
}

/// On the GPU the fused kernel equals the GPU's two passes bit for bit, and the CPU's fused pass
/// to the noise's own CPU/GPU agreement (`tests/noise.rs`: its libm may differ by an ulp or two).
#[test]
fn cuda_noise_and_division_match_the_two_passes_and_the_cpu() {
    use dpgan::backend::{ops, BinaryOp};
    common::on_cuda("cuda_noise_and_division_match_the_two_passes_and_the_cpu", |dev| {
        let mut rng = common::rng("cuda_noise_and_division_match_the_two_passes_and_the_cpu");
        for mode in [NoiseMode::Fast, NoiseMode::Secure] {
            let key = NoiseSource::from_seed(rng.random(), mode).key_at(11, 2);
            for shape in [vec![1], vec![3, 1001], vec![257]] {
                let x = common::randn(&mut rng, &shape);
                let (std, divisor) = (0.7f32, 33.0f32);
                let mut two_passes = x.to_device(dev).unwrap();
                ops::add_gaussian_noise(&mut two_passes, std, &key).unwrap();
                let two_passes = ops::binary(BinaryOp::Div, &two_passes, &ops::scalar_like(&two_passes, divisor as f64).unwrap()).unwrap();
                let mut fused = x.to_device(dev).unwrap();
                ops::add_gaussian_noise_and_divide(&mut fused, std, divisor, &key).unwrap();
                let fused = fused.to_vec().unwrap();
                common::assert_identical(&format!("{mode:?} {shape:?}: fused vs two passes"), &fused, &two_passes.to_vec().unwrap());
                let mut on_cpu = x.clone();
                ops::add_gaussian_noise_and_divide(&mut on_cpu, std, divisor, &key).unwrap();
                for (i, (g, c)) in fused.iter().zip(on_cpu.to_vec().unwrap()).enumerate() {
                    let ulp = (c.abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
                    assert!(((g - c) as f64).abs() <= 3.0 * ulp, "{mode:?} {shape:?}: element {i}: gpu {g}, cpu {c}");
                }
            }
        }
    });
}

/// Without a GPU, the next best check of `dp_gaussian_add_divide_*`: `kernels/dp.cu` compiled for
/// the host (tests/host_cuda/, one thread per block) must reproduce the CPU reference bit for bit
/// in both noise modes, with the noise step in the parameters and read from memory (a step block's
/// path). Skips (saying why) without a C++ compiler or the sources.
#[test]
fn noise_and_divide_kernel_compiled_for_the_host_matches_the_reference() {
    let test = "noise_and_divide_kernel_compiled_for_the_host_matches_the_reference";
    let Some((exe, _dir)) = common::build_host_kernel_program(test, &["rng.cuh", "optim.cuh", "dp.cu"], "dp_noise_main.cpp") else {
        return;
    };
    let mut rng = common::rng(test);
    let x: Vec<f32> = randn_vec(&mut rng, 1003);
    let (std, divisor) = (1.265f32, 600.0f32);
    let fast = NoiseSource::from_seed(rng.random(), NoiseMode::Fast).key_at(7 + (1 << 32), 3);
    let secure = dpgan::dp::NoiseKey { mode: NoiseMode::Secure, ..fast };
    let mut input = format!("{} {:x} {:x}\n", x.len(), std.to_bits(), divisor.to_bits());
    fast.key.iter().for_each(|w| input.push_str(&format!("{w:x} ")));
    input.push_str(&format!("{:x} {:x} {:x}\n", fast.tensor_index, fast.step as u32, (fast.step >> 32) as u32));
    x.iter().for_each(|v| input.push_str(&format!("{:x}\n", v.to_bits())));
    for source in common::VALUE_SOURCES {
        let bits = common::run_host_kernel_program("noise", &exe, &[source], &input);
        assert_eq!(bits.len(), 2 * x.len());
        for (k, key) in [fast, secure].iter().enumerate() {
            let mut expected = x.clone();
            dpgan::backend::cpu::add_gaussian_noise_and_divide(&mut expected, std, divisor, key);
            let got: Vec<f32> = bits[k * x.len()..(k + 1) * x.len()].iter().map(|&b| f32::from_bits(b)).collect();
            common::assert_identical(&format!("{:?}, step from the {source}", key.mode), &got, &expected);
        }
    }
}

/// `private_update` moves the parameters exactly as `private_gradients` followed by the optimizer's
/// own step (the noise, division and update fused per tensor), bit for bit: plain SGD and Adam,
/// both noise modes, f32 and f64, over three steps (Adam's moments and step count included), with
/// the noise on and off (σ = 0, a public loss). The finiteness flag is 0 throughout.
#[test]
fn private_update_equals_private_gradients_then_the_optimizer_step() {
    use dpgan::backend::{AdamParams, SgdParams};
    use dpgan::dp::private_update;
    use dpgan::optim::{Adam, Optimizer, Sgd};
    let mut rng = common::rng("private_update_equals_private_gradients_then_the_optimizer_step");
    let adam = AdamParams { lr: 2e-3, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let sgd = SgdParams { lr: 0.15, momentum: 0.0, dampening: 0.0, weight_decay: 0.001, nesterov: false };
    for mode in [NoiseMode::Fast, NoiseMode::Secure] {
        for f64_values in [false, true] {
            for (noise_multiplier, noised) in [(1.1, true), (0.0, true), (1.1, false)] {
                let tensor =
                    |rng: &mut rand_chacha::ChaCha8Rng, s: &[usize]| if f64_values { f64_tensor(rng, s) } else { common::randn(rng, s) };
                let layer =
                    LayerGrad::Linear { input: tensor(&mut rng, &[1, 5, 7]), output_grad: tensor(&mut rng, &[1, 5, 3]), bias: true };
                let config = DpSgdConfig { clip: 0.8, noise_multiplier, batch_divisor: 4.5 };
                let noise = NoiseSource::from_seed(rng.random(), mode);
                let losses = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised, weights: None }];
                let start = vec![tensor(&mut rng, &[1, 3, 7]), tensor(&mut rng, &[1, 3])];
                for name in ["sgd", "adam"] {
                    let make = || -> Box<dyn Optimizer> {
                        if name == "sgd" {
                            Box::new(Sgd::new(sgd))
                        } else {
                            Box::new(Adam::new(adam))
                        }
                    };
                    let what = format!("{mode:?} f64 {f64_values} σ {noise_multiplier} noised {noised} {name}");
                    let (mut reference, mut fused) = (start.clone(), start.clone());
                    let (mut opt_reference, mut opt_fused) = (make(), make());
                    for step in 0..3 {
                        let grads = private_gradients(&losses, &config, &noise, step).unwrap();
                        opt_reference.step(&mut reference.iter_mut().collect::<Vec<_>>(), &grads).unwrap();
                        let flag =
                            private_update(&losses, &config, &noise, step, opt_fused.as_mut(), &mut fused.iter_mut().collect::<Vec<_>>())
                                .unwrap();
                        assert_eq!(flag.to_vec_f64().unwrap(), [0.0], "{what}: flag at step {step}");
                        let (got, expected) = (values(&fused), values(&reference));
                        assert!(
                            got.iter().zip(&expected).all(|(a, e)| a.to_bits() == e.to_bits()),
                            "{what}: step {step}: {got:?} vs {expected:?}"
                        );
                        assert!(got != values(&start), "{what}: the parameters did not move");
                    }
                }
            }
        }
    }
}

/// A non-finite clipped sum (an example whose norm was NaN makes its clip factor NaN) gives the
/// fused update's flag NaN, as `nonfinite_flag` of the written gradient would; SGD with momentum
/// has no fused noised update and says so.
#[test]
fn private_update_flags_a_non_finite_gradient_and_refuses_momentum() {
    use dpgan::backend::{ops, GradientNoise, SgdParams};
    use dpgan::optim::{Optimizer, Sgd};
    let mut rng = common::rng("private_update_flags_a_non_finite_gradient_and_refuses_momentum");
    let key = NoiseSource::from_seed(rng.random(), NoiseMode::Secure).key_at(2, 0);
    let noise = GradientNoise { std: 0.5, divisor: 8.0, key };
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut sum = randn_vec(&mut rng, 40);
        sum[17] = bad;
        let sum = Tensor::from_vec(sum, &[40], &dpgan::Device::Cpu).unwrap();
        let mut param = common::randn(&mut rng, &[40]);
        let mut flag = Tensor::zeros(&[1], &dpgan::Device::Cpu).unwrap();
        let mut sgd = Sgd::plain(0.1);
        sgd.noised_step(&mut [&mut param], std::slice::from_ref(&sum), &[noise], &mut flag).unwrap();
        assert!(flag.item().unwrap().is_nan(), "{bad}: flag {:?}", flag.item());
        let mut written = sum.clone();
        ops::add_gaussian_noise_and_divide(&mut written, noise.std, noise.divisor, &noise.key).unwrap();
        assert!(dpgan::dp::nonfinite_flag(&[&written]).unwrap().item().unwrap().is_nan());
    }
    let mut momentum = Sgd::new(SgdParams { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false });
    let mut param = common::randn(&mut rng, &[4]);
    let sum = common::randn(&mut rng, &[4]);
    let mut flag = Tensor::zeros(&[1], &dpgan::Device::Cpu).unwrap();
    let err = momentum.noised_step(&mut [&mut param], &[sum], &[noise], &mut flag).unwrap_err().to_string();
    assert!(err.contains("momentum"), "{err}");
}

/// On the GPU the fused noised SGD and Adam kernels equal the GPU's separate noise-and-divide and
/// optimizer kernels bit for bit (the same device functions), flag included, in both noise modes,
/// across block tails.
#[test]
fn cuda_noised_updates_equal_the_separate_kernels() {
    use dpgan::backend::{ops, AdamParams, GradientNoise, SgdParams};
    common::on_cuda("cuda_noised_updates_equal_the_separate_kernels", |dev| {
        let mut rng = common::rng("cuda_noised_updates_equal_the_separate_kernels");
        let adam = AdamParams { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let sgd = SgdParams { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
        for mode in [NoiseMode::Fast, NoiseMode::Secure] {
            for n in [1, 255, 257, 12_345] {
                let key = NoiseSource::from_seed(rng.random(), mode).key_at(9, 4);
                let noise = GradientNoise { std: 1.3, divisor: 120.0, key };
                let on = |t: Tensor| t.to_device(dev).unwrap();
                let (sum, param, m) =
                    (on(common::randn(&mut rng, &[n])), on(common::randn(&mut rng, &[n])), on(common::randn(&mut rng, &[n])));
                // Adam's second moment is a running mean of squares: non-negative.
                let squares: Vec<f32> = randn_vec(&mut rng, n).iter().map(|x| x * x).collect();
                let v = on(Tensor::from_vec(squares, &[n], &dpgan::Device::Cpu).unwrap());
                let mut grad = sum.clone();
                ops::add_gaussian_noise_and_divide(&mut grad, noise.std, noise.divisor, &noise.key).unwrap();

                let (mut separate, mut fused) = (param.clone(), param.clone());
                ops::sgd_step(&mut separate, &grad, None, &sgd).unwrap();
                let mut flag = Tensor::zeros(&[1], dev).unwrap();
                ops::noised_sgd_step(&mut fused, &sum, &noise, &sgd, &mut flag).unwrap();
                common::assert_identical(&format!("{mode:?} n {n}: sgd"), &fused.to_vec().unwrap(), &separate.to_vec().unwrap());
                assert_eq!(flag.to_vec().unwrap(), [0.0], "{mode:?} n {n}: sgd flag");

                let (mut separate, mut fused) = (param.clone(), param.clone());
                let (mut m1, mut v1, mut m2, mut v2) = (m.clone(), v.clone(), m.clone(), v.clone());
                ops::adam_step(&mut separate, &grad, &mut m1, &mut v1, 7, &adam).unwrap();
                ops::noised_adam_step(&mut fused, &sum, &noise, &mut m2, &mut v2, 7, &adam, &mut flag).unwrap();
                for (what, a, e) in [("param", &fused, &separate), ("m", &m2, &m1), ("v", &v2, &v1)] {
                    common::assert_identical(&format!("{mode:?} n {n}: adam {what}"), &a.to_vec().unwrap(), &e.to_vec().unwrap());
                }
                assert_eq!(flag.to_vec().unwrap(), [0.0], "{mode:?} n {n}: adam flag");

                let mut bad = sum.to_vec().unwrap();
                bad[n / 2] = f32::NAN;
                let mut param = param.clone();
                ops::noised_sgd_step(&mut param, &on(Tensor::from_vec(bad, &[n], &dpgan::Device::Cpu).unwrap()), &noise, &sgd, &mut flag)
                    .unwrap();
                assert!(flag.to_vec().unwrap()[0].is_nan(), "{mode:?} n {n}: a NaN gradient element must set the flag");
            }
        }
    });
}

/// The multi-tensor noised steps equal one noised step per tensor, bit for bit, on every backend:
/// 35 tensors (two launches of up to 32 on a GPU) of sizes 0 to 3,000, each with its own key, std
/// and divisor, in both noise modes; the flag stays 0. Mixed noise modes in one call are refused.
#[test]
fn noised_steps_equal_one_noised_step_per_tensor_on_every_backend() {
    use dpgan::backend::{ops, AdamParams, GradientNoise, NoisedAdamTensors, NoisedTensors, SgdParams};
    let test = "noised_steps_equal_one_noised_step_per_tensor_on_every_backend";
    let mut devices = vec![dpgan::Device::Cpu];
    common::on_cuda(test, |dev| devices.push(dev.clone()));
    let mut rng = common::rng(test);
    let adam = AdamParams { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 };
    let sgd = SgdParams { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let sizes: Vec<usize> = (0..35).map(|i| [0, 1, 255, 257, 3000][i % 5] + i).collect();
    for dev in &devices {
        for mode in [NoiseMode::Fast, NoiseMode::Secure] {
            let source = NoiseSource::from_seed(rng.random(), mode);
            let noises: Vec<GradientNoise> = (0..sizes.len())
                .map(|i| GradientNoise { std: 1.0 + 0.01 * i as f32, divisor: 64.0 + i as f32, key: source.key_at(5, i as u32) })
                .collect();
            let on = |t: Tensor| t.to_device(dev).unwrap();
            let sums: Vec<Tensor> = sizes.iter().map(|&n| on(common::randn(&mut rng, &[n]))).collect();
            let params: Vec<Tensor> = sizes.iter().map(|&n| on(common::randn(&mut rng, &[n]))).collect();
            let ms: Vec<Tensor> = sizes.iter().map(|&n| on(common::randn(&mut rng, &[n]))).collect();
            let vs: Vec<Tensor> = sizes
                .iter()
                .map(|&n| on(Tensor::from_vec(randn_vec(&mut rng, n).iter().map(|x| x * x).collect(), &[n], &dpgan::Device::Cpu).unwrap()))
                .collect();
            let what = format!("{dev} {mode:?}");

            let (mut one_by_one, mut together) = (params.clone(), params.clone());
            let mut flag = Tensor::zeros(&[1], dev).unwrap();
            for ((p, sum), noise) in one_by_one.iter_mut().zip(&sums).zip(&noises) {
                ops::noised_sgd_step(p, sum, noise, &sgd, &mut flag).unwrap();
            }
            let mut tensors: Vec<NoisedTensors<'_>> =
                together.iter_mut().zip(&sums).zip(&noises).map(|((param, sum), noise)| NoisedTensors { param, sum, noise }).collect();
            ops::noised_sgd_steps(&mut tensors, &sgd, &mut flag).unwrap();
            for (i, (a, e)) in together.iter().zip(&one_by_one).enumerate() {
                common::assert_identical(&format!("{what}: sgd tensor {i}"), &a.to_vec().unwrap(), &e.to_vec().unwrap());
            }

            let (mut one_by_one, mut together) = (params.clone(), params.clone());
            let (mut m1, mut v1, mut m2, mut v2) = (ms.clone(), vs.clone(), ms.clone(), vs.clone());
            for (i, p) in one_by_one.iter_mut().enumerate() {
                ops::noised_adam_step(p, &sums[i], &noises[i], &mut m1[i], &mut v1[i], 4, &adam, &mut flag).unwrap();
            }
            let mut tensors: Vec<NoisedAdamTensors<'_>> = together
                .iter_mut()
                .zip(&sums)
                .zip(&noises)
                .zip(m2.iter_mut().zip(v2.iter_mut()))
                .map(|(((param, sum), noise), (m, v))| NoisedAdamTensors { param, sum, noise, m, v })
                .collect();
            ops::noised_adam_steps(&mut tensors, 4, &adam, &mut flag).unwrap();
            for (what_t, a, e) in [("param", &together, &one_by_one), ("m", &m2, &m1), ("v", &v2, &v1)] {
                for (i, (a, e)) in a.iter().zip(e).enumerate() {
                    common::assert_identical(&format!("{what}: adam {what_t} of tensor {i}"), &a.to_vec().unwrap(), &e.to_vec().unwrap());
                }
            }
            assert_eq!(flag.to_vec().unwrap(), [0.0], "{what}: flag");
        }
        // One call, one kernel, one noise mode.
        let fast = GradientNoise { std: 1.0, divisor: 8.0, key: NoiseSource::from_seed(1, NoiseMode::Fast).key_at(0, 0) };
        let secure = GradientNoise { key: dpgan::dp::NoiseKey { mode: NoiseMode::Secure, tensor_index: 1, ..fast.key }, ..fast };
        let sum = Tensor::zeros(&[3], dev).unwrap();
        let (mut a, mut b, mut flag) = (sum.clone(), sum.clone(), Tensor::zeros(&[1], dev).unwrap());
        let mut tensors =
            vec![NoisedTensors { param: &mut a, sum: &sum, noise: &fast }, NoisedTensors { param: &mut b, sum: &sum, noise: &secure }];
        let err = ops::noised_sgd_steps(&mut tensors, &sgd, &mut flag).unwrap_err().to_string();
        assert!(err.contains("one noise mode"), "{err}");
    }
}

/// Without a GPU, the next best check of `dp_noised_{sgd,adam}_update_*`: `kernels/dp.cu` (with
/// optim.cuh) compiled for the host, one thread per block, must reproduce the CPU reference (the
/// noised gradient, then the optimizer's update) bit for bit in both noise modes, parameters,
/// Adam's moments and the finiteness flag included, with one NaN element in the sum; with the
/// step, lr and bias corrections in the parameters and read from memory (a step block's path).
#[test]
fn noised_update_kernels_compiled_for_the_host_match_the_reference() {
    use dpgan::backend::cpu::{adam_update, noised_gradient, sgd_update};
    use dpgan::backend::{AdamParams, GradientNoise, SgdParams};
    let test = "noised_update_kernels_compiled_for_the_host_match_the_reference";
    let Some((exe, _dir)) = common::build_host_kernel_program(test, &["rng.cuh", "optim.cuh", "dp.cu"], "dp_noised_update_main.cpp") else {
        return;
    };
    let mut rng = common::rng(test);
    let n = 517;
    let mut sum: Vec<f32> = randn_vec(&mut rng, n);
    sum[300] = f32::NAN;
    let (param, m) = (randn_vec(&mut rng, n), randn_vec(&mut rng, n));
    let v: Vec<f32> = randn_vec(&mut rng, n).iter().map(|x| x * x).collect();
    let sgd = SgdParams { lr: 0.05, momentum: 0.0, dampening: 0.0, weight_decay: 1e-3, nesterov: false };
    let adam = AdamParams { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 };
    let t = 5;
    // The bias corrections as the CUDA launcher folds them in (f64, then f32).
    let (step_size, bias2_sqrt) = adam.bias_corrections(t);
    let fast = NoiseSource::from_seed(rng.random(), NoiseMode::Fast).key_at(3 + (1 << 33), 6);
    let secure = dpgan::dp::NoiseKey { mode: NoiseMode::Secure, ..fast };
    let (std, divisor) = (1.07f32 * 0.9, 256.0f32);

    let hex = |xs: &[f32]| xs.iter().map(|x| format!("{:x}", x.to_bits())).collect::<Vec<_>>().join(" ");
    let mut input = format!("{n} {}\n", hex(&[std, divisor]));
    fast.key.iter().for_each(|w| input.push_str(&format!("{w:x} ")));
    input.push_str(&format!("{:x} {:x} {:x}\n", fast.tensor_index, fast.step as u32, (fast.step >> 32) as u32));
    input.push_str(&format!("{}\n", hex(&[sgd.lr, sgd.weight_decay])));
    input.push_str(&format!("{}\n", hex(&[adam.beta1, adam.beta2, adam.eps, adam.weight_decay, step_size, bias2_sqrt])));
    for xs in [&sum, &param, &m, &v] {
        input.push_str(&format!("{}\n", hex(xs)));
    }
    for source in common::VALUE_SOURCES {
        let got: Vec<f32> =
            common::run_host_kernel_program("noised-update", &exe, &[source], &input).into_iter().map(f32::from_bits).collect();
        let per_mode = 4 * n + 2;
        assert_eq!(got.len(), 2 * per_mode);
        for (k, key) in [fast, secure].iter().enumerate() {
            let noise = GradientNoise { std, divisor, key: *key };
            let mut flag = [0.0f32];
            let grad = noised_gradient(&sum, &noise, &mut flag);
            let mut expected_sgd = param.clone();
            sgd_update(&mut expected_sgd, &grad, None, &sgd);
            let (mut expected_param, mut expected_m, mut expected_v) = (param.clone(), m.clone(), v.clone());
            adam_update(&mut expected_param, &grad, &mut expected_m, &mut expected_v, t, &adam);
            let out = &got[k * per_mode..(k + 1) * per_mode];
            let mode = format!("{:?}, values from the {source}", key.mode);
            common::assert_identical(&format!("{mode}: sgd param"), &out[..n], &expected_sgd);
            assert!(out[n].is_nan() && flag[0].is_nan(), "{mode}: sgd flag {} (reference {})", out[n], flag[0]);
            common::assert_identical(&format!("{mode}: adam param"), &out[n + 1..2 * n + 1], &expected_param);
            common::assert_identical(&format!("{mode}: adam m"), &out[2 * n + 1..3 * n + 1], &expected_m);
            common::assert_identical(&format!("{mode}: adam v"), &out[3 * n + 1..4 * n + 1], &expected_v);
            assert!(out[4 * n + 1].is_nan(), "{mode}: adam flag {}", out[4 * n + 1]);
            assert!(out[..n].iter().zip(&param).filter(|(a, p)| a != p).count() > n / 2, "{mode}: sgd moved too few parameters");
        }
    }
}

/// The multi-tensor noised updates (`dp_noised_{sgd,adam}_update_foreach_*`, block row y for
/// tensor y) compiled for the host: tensors of different sizes (an empty one among them), each
/// with its own key, std and divisor, updated over a grid that covers the largest, must each end
/// exactly as the CPU reference's one-tensor update leaves it, in both noise modes; a NaN in one
/// tensor's sum makes the shared flag NaN. Also with the tensors' shared step, the lr and the bias
/// corrections read from memory (a step block's path).
#[test]
fn noised_foreach_kernels_compiled_for_the_host_match_the_reference() {
    use dpgan::backend::cpu::{adam_update, noised_gradient, sgd_update};
    use dpgan::backend::{AdamParams, GradientNoise, SgdParams};
    let test = "noised_foreach_kernels_compiled_for_the_host_match_the_reference";
    let Some((exe, _dir)) = common::build_host_kernel_program(test, &["rng.cuh", "optim.cuh", "dp.cu"], "dp_noised_foreach_main.cpp")
    else {
        return;
    };
    let mut rng = common::rng(test);
    let sizes = [300usize, 1, 0, 77];
    let source = NoiseSource::from_seed(rng.random(), NoiseMode::Fast);
    let step = 9 + (1 << 33);
    let noises: Vec<GradientNoise> = sizes
        .iter()
        .enumerate()
        .map(|(i, _)| GradientNoise { std: 0.8 + i as f32 * 0.25, divisor: 100.0 + 7.0 * i as f32, key: source.key_at(step, i as u32) })
        .collect();
    let mut sums: Vec<Vec<f32>> = sizes.iter().map(|&n| randn_vec(&mut rng, n)).collect();
    sums[3][40] = f32::NAN;
    let params: Vec<Vec<f32>> = sizes.iter().map(|&n| randn_vec(&mut rng, n)).collect();
    let ms: Vec<Vec<f32>> = sizes.iter().map(|&n| randn_vec(&mut rng, n)).collect();
    let vs: Vec<Vec<f32>> = sizes.iter().map(|&n| randn_vec(&mut rng, n).iter().map(|x| x * x).collect()).collect();
    let sgd = SgdParams { lr: 0.05, momentum: 0.0, dampening: 0.0, weight_decay: 1e-3, nesterov: false };
    let adam = AdamParams { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 };
    let t = 3;
    let (step_size, bias2_sqrt) = adam.bias_corrections(t);

    let hex = |xs: &[f32]| xs.iter().map(|x| format!("{:x}", x.to_bits())).collect::<Vec<_>>().join(" ");
    let mut input = format!("{}\n", sizes.len());
    for (n, noise) in sizes.iter().zip(&noises) {
        input.push_str(&format!("{n} {} ", hex(&[noise.std, noise.divisor])));
        noise.key.key.iter().for_each(|w| input.push_str(&format!("{w:x} ")));
        input.push_str(&format!("{:x} {:x} {:x}\n", noise.key.tensor_index, noise.key.step as u32, (noise.key.step >> 32) as u32));
    }
    input.push_str(&format!("{}\n", hex(&[sgd.lr, sgd.weight_decay])));
    input.push_str(&format!("{}\n", hex(&[adam.beta1, adam.beta2, adam.eps, adam.weight_decay, step_size, bias2_sqrt])));
    for i in 0..sizes.len() {
        for xs in [&sums[i], &params[i], &ms[i], &vs[i]] {
            input.push_str(&format!("{}\n", hex(xs)));
        }
    }
    for source in common::VALUE_SOURCES {
        let got: Vec<f32> =
            common::run_host_kernel_program("noised-foreach", &exe, &[source], &input).into_iter().map(f32::from_bits).collect();
        let total: usize = sizes.iter().sum();
        let per_mode = 4 * total + 2;
        assert_eq!(got.len(), 2 * per_mode);
        for (k, mode) in [NoiseMode::Fast, NoiseMode::Secure].into_iter().enumerate() {
            let mut out = &got[k * per_mode..(k + 1) * per_mode];
            let mut take = |n: usize| {
                let (head, rest) = out.split_at(n);
                out = rest;
                head.to_vec()
            };
            let mut flag = [0.0f32];
            let grads: Vec<Vec<f32>> = sums
                .iter()
                .zip(&noises)
                .map(|(sum, noise)| {
                    noised_gradient(sum, &GradientNoise { key: dpgan::dp::NoiseKey { mode, ..noise.key }, ..*noise }, &mut flag)
                })
                .collect();
            for (i, (&n, grad)) in sizes.iter().zip(&grads).enumerate() {
                let mut expected = params[i].clone();
                sgd_update(&mut expected, grad, None, &sgd);
                common::assert_identical(&format!("{mode:?} ({source}): sgd param of tensor {i}"), &take(n), &expected);
            }
            let sgd_flag = take(1)[0];
            assert!(sgd_flag.is_nan() && flag[0].is_nan(), "{mode:?} ({source}): sgd flag {sgd_flag} (reference {})", flag[0]);
            for (i, (&n, grad)) in sizes.iter().zip(&grads).enumerate() {
                let (mut param, mut m, mut v) = (params[i].clone(), ms[i].clone(), vs[i].clone());
                adam_update(&mut param, grad, &mut m, &mut v, t, &adam);
                common::assert_identical(&format!("{mode:?} ({source}): adam param of tensor {i}"), &take(n), &param);
                common::assert_identical(&format!("{mode:?} ({source}): adam m of tensor {i}"), &take(n), &m);
                common::assert_identical(&format!("{mode:?} ({source}): adam v of tensor {i}"), &take(n), &v);
            }
            assert!(take(1)[0].is_nan(), "{mode:?} ({source}): adam flag");
        }
    }
}
