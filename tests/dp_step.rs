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
    // A divisor that is not finite and positive is refused on every path, the noiseless ones too
    // (σ = 0, or only public losses), where no noise op would catch it.
    let public = [ClippedLoss { layers: vec![&layer as &dyn PerExampleGrad], noised: false }];
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
/// in both noise modes. Skips (saying why) without a C++ compiler or the sources.
#[test]
fn noise_and_divide_kernel_compiled_for_the_host_matches_the_reference() {
    let test = "noise_and_divide_kernel_compiled_for_the_host_matches_the_reference";
    let Some((exe, _dir)) = common::build_host_kernel_program(test, &["rng.cuh", "dp.cu"], "dp_noise_main.cpp") else {
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
    let mut child =
        std::process::Command::new(&exe).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "host noise program failed");
    let bits: Vec<u32> = String::from_utf8(out.stdout).unwrap().lines().map(|h| u32::from_str_radix(h, 16).unwrap()).collect();
    assert_eq!(bits.len(), 2 * x.len());
    for (k, key) in [fast, secure].iter().enumerate() {
        let mut expected = x.clone();
        dpgan::backend::cpu::add_gaussian_noise_and_divide(&mut expected, std, divisor, key);
        let got: Vec<f32> = bits[k * x.len()..(k + 1) * x.len()].iter().map(|&b| f32::from_bits(b)).collect();
        common::assert_identical(&format!("{:?}", key.mode), &got, &expected);
    }
}
