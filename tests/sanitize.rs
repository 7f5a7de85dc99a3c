mod common;

// GS-WGAN's sanitiser: the clip bound under huge gradients, small rows untouched by the clip, σ = 0
// giving rows of norm exactly C/B (small ones scaled up), the noise std 2σC/B measured with a fixed seed, G > 1, NaN rows, and the
// CUDA kernel against the CPU reference.
use common::{assert_close, on_cuda, tol};
use dpgan::backend::ops::sanitize_rows;
use dpgan::backend::RowNorm;
use dpgan::dp::noise::standard_normal_at;
use dpgan::dp::{GsWganSanitizer, NoiseMode, NoiseSource};
use dpgan::tensor::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const D: usize = 784;

fn row_norms(v: &[f32], cols: usize) -> Vec<f64> {
    v.chunks_exact(cols).map(|r| r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()).collect()
}

/// Rows of normal values, each scaled by 10^k with k uniform in [lo, hi] (log-uniform norms).
fn scaled_rows(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let cols = shape[shape.len() - 1];
    let mut v = common::randn_vec(rng, shape.iter().product());
    for row in v.chunks_exact_mut(cols) {
        let scale = 10f64.powf(rng.random_range(lo..=hi)) as f32;
        row.iter_mut().for_each(|x| *x *= scale);
    }
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Property: whatever the gradient's size (norms up to ~1e32, beyond f32's squares), no clipped or
/// rescaled row exceeds the bound (C/B = 1/B here). The factor and products round toward zero, so
/// the bound is exact up to the f64 norm's own rounding; 1e-12 relative leaves room only for that.
#[test]
fn clip_bound_holds_for_huge_gradients() {
    let mut rng = common::rng("clip_bound_holds_for_huge_gradients");
    for rows in [RowNorm::AtMost, RowNorm::Exactly] {
        for mode in [NoiseMode::Fast, NoiseMode::Secure] {
            for shape in [[4, 32, D], [1, 1, D], [3, 28, 101]] {
                let g = scaled_rows(&mut rng, &shape, -3.0, 30.0);
                let clip = 1.0 / shape[1] as f32;
                let out = sanitize_rows(&g, clip, rows, 0.0, &NoiseSource::from_seed(1, mode).key_at(0, 0)).unwrap();
                for (i, n) in row_norms(&out.to_vec().unwrap(), shape[2]).into_iter().enumerate() {
                    assert!(n <= clip as f64 * (1.0 + 1e-12), "{rows:?} {shape:?}: row {i} has norm {n} > C/B = {clip}");
                }
            }
        }
    }
}

/// The clip (the private sanitiser's row bound, here without noise): rows with norm below the bound
/// pass bit for bit.
#[test]
fn small_rows_pass_the_clip_unchanged() {
    let mut rng = common::rng("small_rows_pass_the_clip_unchanged");
    let g = scaled_rows(&mut rng, &[2, 32, D], -8.0, -3.0); // norms ≤ 28·1e-3 < 1/32
    let key = NoiseSource::from_seed(2, NoiseMode::Fast).key_at(0, 0);
    let out = sanitize_rows(&g, 1.0 / 32.0, RowNorm::AtMost, 0.0, &key).unwrap();
    assert_eq!(out.to_vec().unwrap(), g.to_vec().unwrap());
}

/// σ = 0, the non-private control (docs/algorithms.md §2): every row, whether above or below C/B, comes out
/// with norm C/B (relative 1e-6), in the direction it had; a zero row stays zero.
#[test]
fn sigma_zero_rescales_rows_to_exactly_c_over_b() {
    let mut rng = common::rng("sigma_zero_rescales_rows_to_exactly_c_over_b");
    let sanitizer = GsWganSanitizer::new(1.0, 0.0).unwrap();
    let key = NoiseSource::from_seed(3, NoiseMode::Fast).key_at(0, 0);
    let zero = Tensor::from_vec(vec![0.0; 2 * 7], &[1, 2, 7], &Device::Cpu).unwrap();
    assert_eq!(sanitizer.sanitize(&zero, &key).unwrap().to_vec().unwrap(), vec![0.0; 14]);
    // Norms from ~1e-3 up: the formula's 1e-10 moves a row's norm by 1e-10/‖g‖ relative, < 1e-6 here.
    for (shape, lo, hi) in [([3, 32, D], -4.5, 20.0), ([2, 28, D], -4.5, -2.0), ([1, 1, 5], 2.0, 20.0)] {
        let g = scaled_rows(&mut rng, &shape, lo, hi);
        let out = sanitizer.sanitize(&g, &key).unwrap();
        let (clip, _) = sanitizer.bounds(shape[1]);
        let (g, out) = (g.to_vec().unwrap(), out.to_vec().unwrap());
        let (g_norms, out_norms) = (row_norms(&g, shape[2]), row_norms(&out, shape[2]));
        let below = g_norms.iter().filter(|&&n| n < clip as f64).count();
        assert!(shape[1] == 1 || below > 0, "test setup: {shape:?} has no row below C/B");
        for (i, (&gn, &on)) in g_norms.iter().zip(&out_norms).enumerate() {
            assert!((on / clip as f64 - 1.0).abs() < 1e-6, "{shape:?}: row {i}: norm {on}, C/B = {clip}");
            let cols = shape[2];
            let cos: f64 = (0..cols).map(|d| g[i * cols + d] as f64 * out[i * cols + d] as f64).sum::<f64>() / (gn * on);
            assert!((cos - 1.0).abs() < 1e-6, "{shape:?}: row {i} turned (cosine {cos})");
        }
    }
}

/// The CPU result against the formula in f64: g·min(1, (C/B)/(‖g‖ + 1e-10)) + (2σC/B)·z.
#[test]
fn sanitized_rows_follow_the_formula() {
    let mut rng = common::rng("sanitized_rows_follow_the_formula");
    for mode in [NoiseMode::Fast, NoiseMode::Secure] {
        let shape = [2, 32, D];
        let g = scaled_rows(&mut rng, &shape, -4.0, 3.0);
        let key = NoiseSource::from_seed(4, mode).key_at(17, 3);
        let sanitizer = GsWganSanitizer::new(1.0, 1.07).unwrap();
        let out = sanitizer.sanitize(&g, &key).unwrap().to_vec().unwrap();
        let (clip, std) = sanitizer.bounds(32);
        let g = g.to_vec().unwrap();
        let mut expected = vec![0.0f32; g.len()];
        for (r, norm) in row_norms(&g, D).into_iter().enumerate() {
            let factor = (clip as f64 / (norm + 1e-10)).min(1.0);
            for d in 0..D {
                let e = r * D + d;
                expected[e] = (g[e] as f64 * factor + std as f64 * standard_normal_at(&key, e as u64) as f64) as f32;
            }
        }
        assert_close(&format!("{mode:?} sanitised rows"), &out, &expected, tol::F32_ELEMENTWISE);
    }
}

/// What the sanitiser adds to the clipped rows (its output minus the σ = 0 output) has mean 0 and
/// std 2σC/B: 8·32·784 ≈ 2·10⁵ draws, 6-standard-error bounds. Noise differs from row to row.
#[test]
fn noise_std_is_two_sigma_c_over_b() {
    let mut rng = common::rng("noise_std_is_two_sigma_c_over_b");
    let shape = [8, 32, D];
    let g = scaled_rows(&mut rng, &shape, -3.0, 2.0);
    for mode in [NoiseMode::Fast, NoiseMode::Secure] {
        let key = NoiseSource::from_seed(2026, mode).key_at(100, 0);
        let noisy = GsWganSanitizer::new(1.0, 1.07).unwrap().sanitize(&g, &key).unwrap().to_vec().unwrap();
        let clipped = GsWganSanitizer::new(1.0, 0.0).unwrap().sanitize(&g, &key).unwrap().to_vec().unwrap();
        let noise: Vec<f64> = noisy.iter().zip(&clipped).map(|(&a, &b)| a as f64 - b as f64).collect();
        let n = noise.len() as f64;
        let expected_std = 2.0 * 1.07 * 1.0 / 32.0;
        let mean = noise.iter().sum::<f64>() / n;
        let std = (noise.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt();
        assert!(mean.abs() < 6.0 * expected_std / n.sqrt(), "{mode:?}: noise mean {mean}");
        // s.e. of the sample std ≈ std/sqrt(2n).
        assert!((std / expected_std - 1.0).abs() < 6.0 / (2.0 * n).sqrt(), "{mode:?}: noise std {std}, expected {expected_std}");
        let (row0, row1) = (&noise[..D], &noise[D..2 * D]);
        assert!(row0.iter().zip(row1).all(|(a, b)| a != b), "{mode:?}: two samples got the same noise");
    }
}

/// A row holding a NaN comes out all NaN (never unclipped), and the other rows are untouched by it.
#[test]
fn nan_row_is_poisoned_not_passed_unclipped() {
    let mut rng = common::rng("nan_row_is_poisoned_not_passed_unclipped");
    let mut v = common::randn_vec(&mut rng, 3 * 10);
    v.iter_mut().for_each(|x| *x *= 1e6);
    v[13] = f32::NAN;
    let g = Tensor::from_vec(v, &[1, 3, 10], &Device::Cpu).unwrap();
    let out =
        sanitize_rows(&g, 0.5, RowNorm::AtMost, 0.0, &NoiseSource::from_seed(0, NoiseMode::Fast).key_at(0, 0)).unwrap().to_vec().unwrap();
    assert!(out[10..20].iter().all(|x| x.is_nan()), "NaN row: {:?}", &out[10..20]);
    for n in [row_norms(&out[..10], 10)[0], row_norms(&out[20..], 10)[0]] {
        assert!((n / 0.5 - 1.0).abs() < 1e-6, "finite row norm {n}");
    }
}

/// The kernel against the CPU reference (f64 norms in a different order, so a factor may differ by
/// one f32 ulp; noise as in tests/noise.rs), on tails and G > 1, with and without noise.
#[test]
fn cuda_sanitize_matches_cpu() {
    on_cuda("cuda_sanitize_matches_cpu", |dev| {
        let mut rng = common::rng("cuda_sanitize_matches_cpu");
        for mode in [NoiseMode::Fast, NoiseMode::Secure] {
            for shape in [[1, 1, D], [3, 32, D], [2, 5, 33], [2, 3, 1000], [1, 2, 1]] {
                for sigma in [0.0, 1.07] {
                    let g = scaled_rows(&mut rng, &shape, -3.0, 25.0);
                    let key = NoiseSource::from_seed(8, mode).key_at(1, 2);
                    let sanitizer = GsWganSanitizer::new(1.0, sigma).unwrap();
                    let on_cpu = sanitizer.sanitize(&g, &key).unwrap().to_vec().unwrap();
                    let on_gpu = sanitizer.sanitize(&g.to_device(dev).unwrap(), &key).unwrap().to_vec().unwrap();
                    assert_close(&format!("{mode:?} {shape:?} σ = {sigma}"), &on_gpu, &on_cpu, tol::F32_ELEMENTWISE);
                    if sigma == 0.0 {
                        let (clip, _) = sanitizer.bounds(shape[1]);
                        for n in row_norms(&on_gpu, shape[2]) {
                            assert!(n <= clip as f64 * (1.0 + 1e-12), "{mode:?} {shape:?}: GPU row norm {n} > {clip}");
                            assert!(n >= clip as f64 * (1.0 - 1e-6), "{mode:?} {shape:?}: GPU row norm {n}, σ = 0 wants {clip}");
                        }
                    }
                }
            }
        }
    });
}

/// The sanitiser's f32 bounds never favour the adversary: the row bound C/B is rounded toward zero
/// and the noise std 2σC/B up, each the nearest f32 on its side of the f64 value.
#[test]
fn sanitizer_bounds_round_the_clip_down_and_the_noise_up() {
    for (clip, sigma) in [(1.0, 1.07), (1.1, 1.15), (0.3, 0.7), (1.0, 0.0)] {
        let sanitizer = GsWganSanitizer::new(clip, sigma).unwrap();
        for batch in [1, 3, 32, 600] {
            let (bound, std) = sanitizer.bounds(batch);
            let (exact_bound, exact_std) = (clip / batch as f64, 2.0 * sigma * clip / batch as f64);
            assert!(bound as f64 <= exact_bound && bound.next_up() as f64 > exact_bound, "C/B {exact_bound}: {bound}");
            assert!(std as f64 >= exact_std && (std == 0.0 || (std.next_down() as f64) < exact_std), "2σC/B {exact_std}: {std}");
        }
    }
}

/// Rounding toward zero: |y| ≤ |x|, and the next f32 away from zero is already past |x|
/// (negative, tiny, subnormal and exactly representable values included).
#[test]
fn rounding_toward_zero_never_grows_a_value() {
    use dpgan::dp::rounding::f32_toward_zero;
    let mut rng = common::rng("rounding_toward_zero_never_grows_a_value");
    let specials = [0.0, -0.0, 1.0, -0.5, 1e-45, -1e-40, f32::MAX as f64, 0.1, -0.1];
    let randoms = (0..100_000).map(|_| rng.random_range(-1.0..1.0f64) * 10f64.powi(rng.random_range(-40..38)));
    for x in specials.into_iter().chain(randoms) {
        let y = f32_toward_zero(x);
        assert!((y as f64).abs() <= x.abs(), "{x}: rounded to {y}, away from zero");
        let next = f32::from_bits(y.abs().to_bits() + 1) as f64;
        assert!(next > x.abs(), "{x}: rounded to {y}, but {next} is closer and not past it");
    }
}

/// Without a GPU, the next best check of `kernels/dp.cu`: the kernel compiled for the host and run
/// one thread per block (tests/host_cuda/; rounding toward zero by the FPU's rounding mode, an
/// implementation independent of the reference's) must reproduce the CPU backend bit for bit on
/// huge, small, zero and NaN rows, with noise in both modes (its step in the parameters and read
/// from memory, a step block's path). Skips (saying why) without a C++ compiler or the sources.
#[test]
fn dp_cu_compiled_for_the_host_matches_the_reference() {
    let Some((exe, _dir)) = common::build_host_kernel_program(
        "dp_cu_compiled_for_the_host_matches_the_reference",
        &["rng.cuh", "optim.cuh", "dp.cu"],
        "dp_main.cpp",
    ) else {
        return;
    };
    let mut rng = common::rng("dp_cu_compiled_for_the_host_matches_the_reference");
    let (rows, cols) = (40, 97);
    let g = scaled_rows(&mut rng, &[1, rows, cols], -6.0, 30.0);
    let mut v = g.to_vec().unwrap();
    v[3 * cols..4 * cols].fill(0.0);
    v[5 * cols + 7] = f32::NAN;
    v[6 * cols + 1] = f32::INFINITY;
    let g = Tensor::from_vec(v.clone(), &[1, rows, cols], &Device::Cpu).unwrap();
    for (clip, std, row_norm) in [(1.0f32 / 32.0, 0.066875f32, RowNorm::AtMost), (0.5, 0.0, RowNorm::AtMost), (0.5, 0.0, RowNorm::Exactly)]
    {
        let fast = NoiseSource::from_seed(31, NoiseMode::Fast).key_at(1 + (1 << 33), 5);
        let secure = dpgan::dp::NoiseKey { mode: NoiseMode::Secure, ..fast };
        let exact = i32::from(row_norm == RowNorm::Exactly);
        let mut input = format!("{rows} {cols} {:x} {:x} {exact}\n", clip.to_bits(), std.to_bits());
        fast.key.iter().for_each(|w| input.push_str(&format!("{w:x} ")));
        input.push_str(&format!("{:x} {:x} {:x}\n", fast.tensor_index, fast.step as u32, (fast.step >> 32) as u32));
        v.iter().for_each(|x| input.push_str(&format!("{:x}\n", x.to_bits())));
        for source in common::VALUE_SOURCES {
            let bits = common::run_host_kernel_program("dp", &exe, &[source], &input);
            assert_eq!(bits.len(), 2 * rows * cols);
            for (k, key) in [fast, secure].iter().enumerate() {
                let expected = sanitize_rows(&g, clip, row_norm, std, key).unwrap().to_vec().unwrap();
                for (e, x) in expected.iter().enumerate() {
                    let got = bits[k * rows * cols + e];
                    // NaN payloads may differ; NaN-ness may not.
                    let same = if x.is_nan() { f32::from_bits(got).is_nan() } else { got == x.to_bits() };
                    assert!(
                        same,
                        "{:?} {row_norm:?} clip {clip} std {std}, step from the {source}: element {e}: kernel {}, reference {x}",
                        key.mode,
                        f32::from_bits(got)
                    );
                }
            }
        }
    }
}
