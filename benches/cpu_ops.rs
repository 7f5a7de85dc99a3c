//! CPU backend throughput at the shapes the two algorithms use: `cargo bench --bench cpu_ops`.
//!
//! Each case runs once to warm up, then enough times for ~0.5 s; the median time and the achieved
//! GFLOP/s are printed beside a large GEMM measured in the same run (this machine's ceiling for
//! our CPU path).
use std::time::{Duration, Instant};

use dpgan::backend::ops;
use dpgan::dp::{NoiseMode, NoiseSource};
use dpgan::tensor::{Device, Tensor};
use dpgan::train::dpcgan::{DpCgan, DpCganConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    Tensor::randn(shape, rng, &Device::Cpu).expect("cpu tensor")
}

/// Median seconds per call of `f`.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed() < Duration::from_millis(500) && samples.len() < 1000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn report(name: &str, flops: f64, seconds: f64) {
    println!("{name:<48} {:>10.3} ms {:>10.2} GFLOP/s", seconds * 1e3, flops / seconds / 1e9);
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    println!("{:<48} {:>13} {:>18}", "case", "median", "throughput");

    let (a, b) = (randn(&mut rng, &[1, 1024, 1024]), randn(&mut rng, &[1, 1024, 1024]));
    report("ceiling: gemm 1024³", 2.0 * 1024f64.powi(3), time(|| drop(ops::matmul(&a, &b, false, false).unwrap())));

    // DP-CGAN discriminator, B = 600: [600, 794] · [128, 794]ᵀ and its weight gradient.
    let (x, w) = (randn(&mut rng, &[1, 600, 794]), randn(&mut rng, &[1, 128, 794]));
    let flops = 2.0 * 600.0 * 794.0 * 128.0;
    report("dp-cgan D linear 794→128, B=600 (fwd)", flops, time(|| drop(ops::matmul(&x, &w, false, true).unwrap())));
    let dy = randn(&mut rng, &[1, 600, 128]);
    report("dp-cgan D linear 794→128, B=600 (dW)", flops, time(|| drop(ops::matmul(&dy, &x, true, false).unwrap())));

    // A whole DP-CGAN step at B = 600 (both networks, forward and backward), private beside the
    // same engine's non-private step.
    let labels: Vec<u32> = (0..600).map(|i| i % 10).collect();
    let images = Tensor::uniform(&[1, 600, 784], -1.0, 1.0, &mut rng, &Device::Cpu).unwrap();
    let onehot = Tensor::one_hot(&labels, 10, &[1, 600], &Device::Cpu).unwrap();
    for mode in [NoiseMode::Secure, NoiseMode::Fast] {
        let noise = NoiseSource::from_seed(1, mode);
        let mut dp = DpCgan::new(DpCganConfig::default(), noise, &mut rng, &Device::Cpu).unwrap();
        let private = time(|| drop(dp.private_step(&images, &onehot, images.shape()[1], &mut rng).unwrap()));
        let plain = time(|| drop(dp.non_private_step(&images, &onehot, &mut rng).unwrap()));
        println!("{:<48} {:>10.3} ms", format!("dp-cgan step, B=600, private ({mode:?} noise)"), private * 1e3);
        println!("{:<48} {:>10.3} ms", "dp-cgan step, B=600, non-private", plain * 1e3);
        println!("{:<48} {:>10.2}×", "dp-cgan private / non-private", private / plain);
    }

    // The noise alone at the size of GS-WGAN's published generator (3.8M parameters), per mode:
    // the hardened sampler (the default) beside the fast one.
    let mut params = randn(&mut rng, &[3_800_000]);
    for mode in [NoiseMode::Secure, NoiseMode::Fast] {
        let key = NoiseSource::from_seed(1, mode).key_at(0, 0);
        let seconds = time(|| ops::add_gaussian_noise(&mut params, 0.1, &key).unwrap());
        println!(
            "{:<48} {:>10.3} ms {:>10.1} ns/element",
            format!("gaussian noise, 3.8M ({mode:?})"),
            seconds * 1e3,
            seconds * 1e9 / 3.8e6
        );
    }

    // GS-WGAN discriminator convs, batch 32.
    for (name, cin, cout, hw) in [
        ("gs-wgan D conv1 1→64 5×5 s2, 28²", 1, 64, 28),
        ("gs-wgan D conv2 64→128 5×5 s2, 14²", 64, 128, 14),
        ("gs-wgan D conv3 128→256 5×5 s2, 7²", 128, 256, 7),
    ] {
        let x = randn(&mut rng, &[1, 32, cin, hw, hw]);
        let w = randn(&mut rng, &[1, cout, cin, 5, 5]);
        let y = ops::conv2d(&x, &w, 2, 2).unwrap();
        let positions = (y.shape()[3] * y.shape()[4]) as f64;
        let flops = 2.0 * 32.0 * positions * (cout * cin * 25) as f64;
        report(&format!("{name} (fwd)"), flops, time(|| drop(ops::conv2d(&x, &w, 2, 2).unwrap())));
        report(&format!("{name} (dW)"), flops, time(|| drop(ops::conv2d_weight_grad(&x, &y, (5, 5), 2, 2).unwrap())));
        report(&format!("{name} (dx)"), flops, time(|| drop(ops::conv2d_input_grad(&y, &w, (hw, hw), 2, 2).unwrap())));
    }
}
