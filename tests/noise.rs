mod common;

// Gaussian noise: the generators against their published test vectors, the samplers' statistics at
// n = 10⁶ with fixed seeds (every bound below is ≥ 6 standard errors, so a correct sampler fails
// with probability < 1e-8 and a fixed seed makes the outcome deterministic anyway), reproducibility
// from (seed, step, tensor index), and the CUDA kernels against the CPU reference.
use common::on_cuda;
use dpgan::backend::ops::{add_gaussian_noise, public_draws, uniform_one_hot};
use dpgan::backend::PublicDraw;
use dpgan::dp::noise::{chacha20_block, philox4x32_10, standard_normal_at, uniform_class_at, uniform_unit_at};
use dpgan::dp::{NoiseKey, NoiseMode, NoiseSource};
use dpgan::tensor::{Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const N: usize = 1_000_000;
const MODES: [NoiseMode; 2] = [NoiseMode::Fast, NoiseMode::Secure];

/// Random123's tests/kat_vectors, the three `philox4x32 10` lines: counter, key, expected.
#[test]
fn philox_matches_random123_known_answers() {
    let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0; 4], [0; 2], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
        ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
    ];
    for (ctr, key, expected) in kat {
        assert_eq!(philox4x32_10(ctr, key), expected, "philox4x32-10 of {ctr:08x?} under {key:08x?}");
    }
}

/// RFC 8439 §2.3.2: key 00 01 .. 1f, block counter 1, nonce 00 00 00 09 00 00 00 4a 00 00 00 00.
#[test]
fn chacha20_block_matches_rfc8439() {
    let mut key = [0u32; 8];
    for (i, w) in key.iter_mut().enumerate() {
        *w = u32::from_le_bytes([4 * i as u8, 4 * i as u8 + 1, 4 * i as u8 + 2, 4 * i as u8 + 3]);
    }
    let nonce = [0x0900_0000, 0x4a00_0000, 0];
    let expected = [
        0xe4e7f110, 0x15593bd1, 0x1fdd0f50, 0xc47120a3, 0xc7f4d1c7, 0x0368c033, 0x9aaa2204, 0x4e6cd4c3, 0x466482d2, 0x09aa9f07, 0x05d7c214,
        0xa2028bd9, 0xd19c12b5, 0xb94e16de, 0xe883d0cb, 0x4e3c50a2,
    ];
    assert_eq!(chacha20_block(&key, 1, nonce), expected);
}

/// A second, independent implementation: rand_chacha's ChaCha20 (64-bit counter in state words 12-13,
/// 64-bit stream in 14-15) is the RFC function with counter | nonce₀ << 32 and stream nonce₁ | nonce₂ << 32.
#[test]
fn chacha20_block_matches_rand_chacha() {
    let mut seeds = ChaCha20Rng::seed_from_u64(0x5eed);
    for _ in 0..50 {
        let mut key_bytes = [0u8; 32];
        seeds.fill_bytes(&mut key_bytes);
        let key: [u32; 8] = std::array::from_fn(|i| u32::from_le_bytes(key_bytes[4 * i..4 * i + 4].try_into().unwrap()));
        let (counter, nonce) = (seeds.next_u32(), [seeds.next_u32(), seeds.next_u32(), seeds.next_u32()]);
        let mut reference = ChaCha20Rng::from_seed(key_bytes);
        reference.set_stream(nonce[1] as u64 | (nonce[2] as u64) << 32);
        reference.set_word_pos(16 * (counter as u128 | (nonce[0] as u128) << 32));
        let expected: [u32; 16] = std::array::from_fn(|_| reference.next_u32());
        assert_eq!(chacha20_block(&key, counter, nonce), expected, "counter {counter}, nonce {nonce:x?}");
    }
}

fn noise_on_cpu(key: &NoiseKey, n: usize) -> Vec<f32> {
    let mut x = Tensor::zeros(&[n], &Device::Cpu).unwrap();
    add_gaussian_noise(&mut x, 1.0, key).unwrap();
    x.to_vec().unwrap()
}

/// Φ(x) through erfc (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7, far below the KS bound).
fn normal_cdf(x: f64) -> f64 {
    let z = -x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z.abs());
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    0.5 * if z >= 0.0 { erfc } else { 2.0 - erfc }
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma) * (x - ma)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb) * (y - mb)).sum();
    cov / (va * vb).sqrt()
}

/// Mean, variance, tails, the Kolmogorov–Smirnov distance to Φ and lag correlations (of z and of z²,
/// lags 1 to 8 span Philox's four lanes and ChaCha's two halves) at n = 10⁶.
#[test]
fn normals_have_the_standard_normal_distribution() {
    let n = N as f64;
    let six_se = 6.0 / n.sqrt();
    for mode in MODES {
        let z: Vec<f64> = noise_on_cpu(&NoiseSource::from_seed(20_261_124, mode).key_at(3, 1), N).into_iter().map(f64::from).collect();
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        assert!(mean.abs() < six_se, "{mode:?}: mean {mean} (6 s.e. = {six_se})");
        // Var of the sample variance is 2/n for a normal.
        assert!((var - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "{mode:?}: variance {var}");
        // P(|z| > 3) = 0.0026998; binomial s.e. sqrt(p(1 − p)/n).
        let p3 = 2.0 * normal_cdf(-3.0);
        let tail = z.iter().filter(|v| v.abs() > 3.0).count() as f64 / n;
        assert!((tail - p3).abs() < 6.0 * (p3 * (1.0 - p3) / n).sqrt(), "{mode:?}: P(|z| > 3) = {tail}, expected {p3}");
        // KS: P(√n·D > 1.95) ≈ 0.001 under the null; √n·D > 2.5 has probability ≈ 6e-6.
        let mut sorted = z.clone();
        sorted.sort_by(f64::total_cmp);
        let d = sorted.iter().enumerate().map(|(i, &v)| {
            let f = normal_cdf(v);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        });
        let d = d.fold(0.0, f64::max);
        assert!(d * n.sqrt() < 2.5, "{mode:?}: KS distance {d} (√n·D = {})", d * n.sqrt());
        let sq: Vec<f64> = z.iter().map(|v| v * v).collect();
        for lag in 1..=8 {
            let c = correlation(&z[..N - lag], &z[lag..]);
            let c2 = correlation(&sq[..N - lag], &sq[lag..]);
            assert!(c.abs() < six_se && c2.abs() < six_se, "{mode:?}: lag-{lag} correlation {c}, of squares {c2}");
        }
    }
}

#[test]
fn same_seed_same_noise_and_every_position_fresh_noise() {
    for mode in MODES {
        let source = NoiseSource::from_seed(7, mode);
        let base = noise_on_cpu(&source.key_at(5, 2), 4099);
        assert_eq!(base, noise_on_cpu(&NoiseSource::from_seed(7, mode).key_at(5, 2), 4099), "{mode:?}: same seed");
        let others = [
            NoiseSource::from_seed(8, mode).key_at(5, 2),
            source.key_at(6, 2),
            source.key_at(5, 3),
            source.key_at(5 + (1 << 32), 2), // the step's high word counts
        ];
        for key in others {
            let other = noise_on_cpu(&key, 4099);
            let equal = base.iter().zip(&other).filter(|(a, b)| a == b).count();
            assert_eq!(equal, 0, "{mode:?}: {key:?} repeats {equal} values of step 5, tensor 2");
        }
    }
    // The two modes draw from different generators.
    let (fast, secure) = (NoiseSource::from_seed(7, NoiseMode::Fast), NoiseSource::from_seed(7, NoiseMode::Secure));
    assert_ne!(noise_on_cpu(&fast.key_at(0, 0), 64), noise_on_cpu(&secure.key_at(0, 0), 64));
}

/// Noise of different tensors and steps is uncorrelated (6 standard errors at n = 10⁶).
#[test]
fn noise_of_different_positions_is_uncorrelated() {
    let source = NoiseSource::from_seed(99, NoiseMode::Fast);
    let a: Vec<f64> = noise_on_cpu(&source.key_at(0, 0), N).into_iter().map(f64::from).collect();
    for key in [source.key_at(0, 1), source.key_at(1, 0)] {
        let b: Vec<f64> = noise_on_cpu(&key, N).into_iter().map(f64::from).collect();
        let c = correlation(&a, &b);
        assert!(c.abs() < 6.0 / (N as f64).sqrt(), "{key:?}: correlation {c} with (step 0, tensor 0)");
    }
}

/// A source moved step by step hands out exactly the keys addressed by `(step, tensor index)`, so
/// a resumed run that addresses them directly draws the noise an uninterrupted one draws.
#[test]
fn noise_source_positions_are_addressable() {
    let mut source = NoiseSource::from_seed(123, NoiseMode::Secure);
    let fixed = source.clone();
    for step in 0..4 {
        for tensor in 0..3 {
            assert_eq!(source.next_key(), fixed.key_at(step, tensor));
        }
        source.next_step();
    }
    assert_eq!((source.step(), source.next_key().tensor_index), (4, 0));
}

/// The CPU backend's batched normals (a block per pair, split over threads) are the reference's,
/// bit for bit, at every index including an odd tail and thread boundaries.
#[test]
fn batched_normals_equal_the_reference_at_every_index() {
    use dpgan::dp::noise::standard_normals;
    for mode in MODES {
        let key = NoiseSource::from_seed(17, mode).key_at(4, 9);
        for n in [0usize, 1, 2, 7, 200_001] {
            let batched = standard_normals(&key, n);
            assert_eq!(batched.len(), n);
            for (e, z) in batched.iter().enumerate() {
                assert_eq!(z.to_bits(), standard_normal_at(&key, e as u64).to_bits(), "{mode:?}, n {n}, element {e}");
            }
        }
    }
}

/// The transforms reach far into the tails: at the smallest uniform (53 zero bits) a Box–Muller
/// normal is beyond 8.5 (the 53-bit bound, √(−2 ln 2⁻⁵⁴) ≈ 8.65); 32-bit uniforms stopped at 6.76,
/// beyond which a Gaussian mechanism's output would have infinite privacy loss.
#[test]
fn both_samplers_reach_their_tails() {
    use dpgan::dp::noise::{fast_normals_from_words, secure_normal_from_words};
    // u1 = 0.5·2⁻⁵³ (all-zero words), u2 = 0.5·2⁻⁵³ (cos ≈ 1): the largest positive normal.
    let (fast, _) = fast_normals_from_words([0, 0, 0, 0]);
    assert!(fast > 8.6 && fast < 8.7, "fast sampler's extreme: {fast}");
    // u2 just below 1/2: θ ≈ π, cos ≈ −1.
    let (negative, _) = fast_normals_from_words([0, 0, u32::MAX, 0x7FFF_FFFF]);
    assert!(negative < -8.6, "fast sampler's negative extreme: {negative}");
    // The secure sampler sums four: its extreme is twice as far.
    let secure = secure_normal_from_words(&[0; 8]);
    assert!(secure > 8.0, "secure sampler's extreme: {secure}");
    // And through the whole path, to f32.
    assert!((fast as f32) > 8.6);
}

/// `x + std·z` with the key's normals, rounded in f32 as documented, at every index (an odd length,
/// so the last Philox block and ChaCha half are partial).
#[test]
fn noise_is_added_in_place_with_the_given_std() {
    let mut rng = common::rng("noise_is_added_in_place_with_the_given_std");
    for mode in MODES {
        let key = NoiseSource::from_seed(5, mode).key_at(11, 0);
        let x = common::randn(&mut rng, &[3, 337]);
        let mut y = x.clone();
        add_gaussian_noise(&mut y, 0.25, &key).unwrap();
        let (x, y) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        for (e, (&xv, &yv)) in x.iter().zip(&y).enumerate() {
            assert_eq!(yv, xv + 0.25 * standard_normal_at(&key, e as u64), "{mode:?}: element {e}");
        }
        assert!(add_gaussian_noise(&mut Tensor::zeros(&[4], &Device::Cpu).unwrap(), -1.0, &key).is_err(), "negative std accepted");
        assert!(add_gaussian_noise(&mut Tensor::zeros(&[4], &Device::Cpu).unwrap(), f32::NAN, &key).is_err(), "NaN std accepted");
    }
}

/// The kernels draw bit-identical uniforms (Philox and ChaCha20 are integer arithmetic), so the
/// normals agree except where CUDA's f64 log/sincos (≤ 2 ulp) and the host's libm round an f32
/// differently: every element within 2 f32 ulp, and all but a handful bit-identical.
#[test]
fn cuda_noise_matches_cpu() {
    on_cuda("cuda_noise_matches_cpu", |dev| {
        for mode in MODES {
            for shape in [vec![1], vec![3, 1001], vec![N + 3]] {
                let key = NoiseSource::from_seed(42, mode).key_at(9, 4);
                let mut rng = common::rng("cuda_noise_matches_cpu");
                let x = common::randn(&mut rng, &shape);
                let mut on_cpu = x.clone();
                add_gaussian_noise(&mut on_cpu, 0.5, &key).unwrap();
                let mut on_gpu = x.to_device(dev).unwrap();
                add_gaussian_noise(&mut on_gpu, 0.5, &key).unwrap();
                assert_normals_agree(&format!("{mode:?} {shape:?}"), &on_gpu.to_vec().unwrap(), &on_cpu.to_vec().unwrap());
            }
        }
    });
}

/// GPU normals against the CPU's: every element within 2 f32 ulp (CUDA's f64 log and sincos against
/// the host's libm), and all but one in 10,000 bit-identical.
fn assert_normals_agree(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut differ = 0;
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let ulp = (b.abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
        assert!(((a - b) as f64).abs() <= 2.0 * ulp, "{what}: element {i}: gpu {a}, cpu {b}");
        differ += (a != b) as usize;
    }
    assert!(differ <= cpu.len() / 10_000, "{what}: {differ} of {} elements not bit-identical", cpu.len());
}

/// The classes of `uniform_one_hot`'s rows on the CPU, each checked to be one-hot.
fn hot_columns(t: &Tensor, classes: usize) -> Vec<usize> {
    let v = t.to_vec().unwrap();
    v.chunks(classes)
        .enumerate()
        .map(|(r, row)| {
            assert!(row.iter().all(|&x| x == 0.0 || x == 1.0) && row.iter().sum::<f32>() == 1.0, "row {r} is not one-hot: {row:?}");
            row.iter().position(|&x| x == 1.0).unwrap()
        })
        .collect()
}

/// Generator labels drawn where they are used: every row one-hot at `uniform_class_at` of its
/// index, the classes uniform (χ² over 10⁶ rows below the 1e-8 tail for 9 and 2 degrees of freedom,
/// 59 and 37), fresh across rows, steps and tensor indices; bad requests refused by name.
#[test]
fn uniform_one_hot_rows_draw_the_keys_classes_uniformly() {
    let key = NoiseSource::from_seed(11, NoiseMode::Fast).key_at(3, 2);
    for (classes, chi2_bound) in [(10usize, 59.0), (3, 37.0)] {
        let t = uniform_one_hot(&[2, N / 2], classes, &key, &Device::Cpu).unwrap();
        assert_eq!(t.shape(), [2, N / 2, classes]);
        let hot = hot_columns(&t, classes);
        let mut counts = vec![0f64; classes];
        for (r, &c) in hot.iter().enumerate() {
            assert_eq!(c as u32, uniform_class_at(&key, r as u64, classes as u32), "{classes} classes, row {r}");
            counts[c] += 1.0;
        }
        let expected = N as f64 / classes as f64;
        let chi2: f64 = counts.iter().map(|c| (c - expected).powi(2) / expected).sum();
        assert!(chi2 < chi2_bound, "{classes} classes: χ² = {chi2} over counts {counts:?}");
        // Consecutive rows agree about 1/classes of the time, as independent draws do.
        let same = hot.windows(2).filter(|w| w[0] == w[1]).count() as f64 / (N - 1) as f64;
        assert!((same - 1.0 / classes as f64).abs() < 6.0 * (1.0 / (classes as f64 * N as f64)).sqrt(), "{classes}: {same}");
    }
    let rows = |k: &NoiseKey| hot_columns(&uniform_one_hot(&[64], 10, k, &Device::Cpu).unwrap(), 10);
    let other_step = NoiseKey { step: 4, ..key };
    let other_tensor = NoiseKey { tensor_index: 3, ..key };
    assert_ne!(rows(&key), rows(&other_step));
    assert_ne!(rows(&key), rows(&other_tensor));
    assert_eq!(rows(&key), rows(&key));

    let refused =
        |prefix: &[usize], classes: usize, k: &NoiseKey| uniform_one_hot(prefix, classes, k, &Device::Cpu).unwrap_err().to_string();
    assert!(refused(&[4], 10, &NoiseKey { mode: NoiseMode::Secure, ..key }).contains("Philox"));
    assert!(refused(&[4], 0, &key).contains("0 classes"));
    assert!(refused(&[4], 1 << 32, &key).contains("below 2³²"));
    assert!(refused(&[1 << 16, 1 << 16], 2, &key).contains("below 2³²"));
}

/// Keys of `members` members at one step and tensor index, as a group's public streams give them.
fn member_keys(members: u64) -> Vec<NoiseKey> {
    (0..members).map(|m| NoiseSource::from_seed(100 + m, NoiseMode::Fast).key_at(6, 0)).collect()
}

/// A group's public draws: member m's block is what `keys[m]` draws alone (one-hot rows, classes,
/// uniforms by their formulas), whatever the group; uniforms are multiples of 2⁻²⁴ in [0, 1) with
/// the moments and the histogram of U(0, 1) (bounds ≥ 6 standard errors; χ² over 10 bins below its
/// 1e-8 tail, 59), Bernoulli bits are fair; bad requests refused by name.
#[test]
fn public_draws_give_each_member_what_its_key_draws_alone() {
    let keys = member_keys(3);
    let alone = |draw: PublicDraw, inner: &[usize], key: &NoiseKey| {
        public_draws(draw, &[&[1][..], inner].concat(), std::slice::from_ref(key), &Device::Cpu).unwrap().to_vec().unwrap()
    };
    for (draw, inner) in [
        (PublicDraw::OneHot { classes: 10 }, vec![50, 10]),
        (PublicDraw::Class { classes: 2 }, vec![40, 10]),
        (PublicDraw::Unit, vec![40, 1]),
        (PublicDraw::Normal, vec![41, 3]),
    ] {
        let group = public_draws(draw, &[&[3][..], &inner].concat(), &keys, &Device::Cpu).unwrap();
        let per_member: usize = inner.iter().product();
        for (m, key) in keys.iter().enumerate() {
            let block = &group.to_vec().unwrap()[m * per_member..(m + 1) * per_member];
            assert_eq!(block, alone(draw, &inner, key), "{draw:?}: member {m}");
            let formula: Vec<f32> = match draw {
                PublicDraw::OneHot { classes } => {
                    uniform_one_hot(&inner[..1], classes as usize, key, &Device::Cpu).unwrap().to_vec().unwrap()
                }
                PublicDraw::Class { classes } => (0..per_member as u64).map(|e| uniform_class_at(key, e, classes) as f32).collect(),
                PublicDraw::Unit => (0..per_member as u64).map(|e| uniform_unit_at(key, e)).collect(),
                PublicDraw::Normal => (0..per_member as u64).map(|e| standard_normal_at(key, e)).collect(),
            };
            assert_eq!(block, formula, "{draw:?}: member {m}");
        }
    }
    // The uniform: Philox block e's first word, its top 24 bits over 2²⁴.
    let key = keys[0];
    let words = philox4x32_10([5, key.tensor_index, key.step as u32, (key.step >> 32) as u32], [key.key[0], key.key[1]]);
    assert_eq!(uniform_unit_at(&key, 5), (words[0] >> 8) as f32 / 16_777_216.0);

    let units = public_draws(PublicDraw::Unit, &[2, N / 2], &keys[1..], &Device::Cpu).unwrap().to_vec().unwrap();
    assert!(units.iter().all(|&u| (0.0..1.0).contains(&u) && (u * 16_777_216.0).fract() == 0.0));
    let mean = units.iter().map(|&u| u as f64).sum::<f64>() / N as f64;
    let var = units.iter().map(|&u| (u as f64 - mean).powi(2)).sum::<f64>() / N as f64;
    assert!((mean - 0.5).abs() < 6.0 * (1.0 / 12.0 / N as f64).sqrt(), "mean {mean}");
    assert!((var - 1.0 / 12.0).abs() < 6.0 * (1.0 / 180.0 / N as f64).sqrt(), "variance {var}");
    let mut bins = [0f64; 10];
    units.iter().for_each(|&u| bins[(u * 10.0) as usize] += 1.0);
    let chi2: f64 = bins.iter().map(|c| (c - N as f64 / 10.0).powi(2) / (N as f64 / 10.0)).sum();
    assert!(chi2 < 59.0, "χ² = {chi2} over {bins:?}");
    let bits = public_draws(PublicDraw::Class { classes: 2 }, &[1, N], &keys[..1], &Device::Cpu).unwrap().to_vec().unwrap();
    assert!(bits.iter().all(|&b| b == 0.0 || b == 1.0));
    let ones = bits.iter().sum::<f32>() as f64 / N as f64;
    assert!((ones - 0.5).abs() < 6.0 * 0.5 / (N as f64).sqrt(), "share of ones {ones}");

    let refused =
        |draw: PublicDraw, shape: &[usize], keys: &[NoiseKey]| public_draws(draw, shape, keys, &Device::Cpu).unwrap_err().to_string();
    let unit = PublicDraw::Unit;
    assert!(refused(unit, &[1, 4], &[]).contains("no key"));
    assert!(refused(unit, &[2, 4], &[key, NoiseKey { mode: NoiseMode::Secure, ..keys[1] }]).contains("Philox"));
    assert!(refused(unit, &[2, 4], &[key, NoiseKey { step: 7, ..keys[1] }]).contains("one step and tensor index"));
    assert!(refused(unit, &[2, 4], &[key, NoiseKey { tensor_index: 1, ..keys[1] }]).contains("one step and tensor index"));
    assert!(refused(unit, &[3, 5], &keys[..2]).contains("15 elements do not split into 2 members"));
    assert!(refused(PublicDraw::OneHot { classes: 10 }, &[1, 4, 7], &[key]).contains("one-hot rows of 10 classes"));
    assert!(refused(PublicDraw::Class { classes: 0 }, &[1, 4], &[key]).contains("0 classes"));
    assert!(refused(unit, &[1, 1 << 16, 1 << 16], &[key]).contains("below 2³²"));
}

/// The kernel against the CPU: integer arithmetic only, so bit for bit: one member, members across
/// the launches' 64-key chunks, each kind; normals, through CUDA's f64 log and sincos, within 2 f32
/// ulp and all but a handful bit-identical (as `cuda_noise_matches_cpu`).
#[test]
fn cuda_public_draws_match_cpu() {
    on_cuda("cuda_public_draws_match_cpu", |dev| {
        for members in [1u64, 3, 130] {
            let keys = member_keys(members);
            let m = members as usize;
            for (draw, shape) in [
                (PublicDraw::OneHot { classes: 10 }, vec![m, 33, 10]),
                (PublicDraw::Class { classes: 2 }, vec![m, 33, 10]),
                (PublicDraw::Unit, vec![m, 1000, 1]),
                (PublicDraw::Normal, vec![m, 600, 100]),
            ] {
                let on_cpu = public_draws(draw, &shape, &keys, &Device::Cpu).unwrap();
                let on_gpu = public_draws(draw, &shape, &keys, dev).unwrap();
                assert_eq!(on_gpu.shape(), on_cpu.shape());
                let (g, c) = (on_gpu.to_vec().unwrap(), on_cpu.to_vec().unwrap());
                if draw == PublicDraw::Normal {
                    assert_normals_agree(&format!("normals, {members} members"), &g, &c);
                } else {
                    assert_eq!(g, c, "{draw:?}, {members} members");
                }
            }
        }
    });
}

/// The kernel against the CPU: integer arithmetic only, so bit for bit, on a size that spans many
/// blocks and one row.
#[test]
fn cuda_uniform_one_hot_matches_cpu() {
    on_cuda("cuda_uniform_one_hot_matches_cpu", |dev| {
        let key = NoiseSource::from_seed(5, NoiseMode::Fast).key_at(1 << 33, 1);
        for (prefix, classes) in [(vec![1], 10), (vec![3, 333_337], 10), (vec![1000], 7)] {
            let on_cpu = uniform_one_hot(&prefix, classes, &key, &Device::Cpu).unwrap();
            let on_gpu = uniform_one_hot(&prefix, classes, &key, dev).unwrap();
            assert_eq!(on_gpu.shape(), on_cpu.shape());
            assert_eq!(on_gpu.to_vec().unwrap(), on_cpu.to_vec().unwrap(), "{prefix:?} × {classes}");
        }
    });
}

/// Without a GPU, the next best check of `kernels/rng.cuh`: its device functions compiled for the
/// host (tests/host_cuda/ stands in for the CUDA intrinsics, with the host's libm) must give the
/// reference's normals and classes bit for bit, which pins down everything but the launch and
/// CUDA's own log/sincos: the word order, lane selection, constants and uniform conversions. Skips (saying
/// why) without a C++ compiler or the sources.
#[test]
fn rng_cuh_compiled_for_the_host_matches_the_reference() {
    use std::process::Command;
    let Some((exe, _dir)) =
        common::build_host_kernel_program("rng_cuh_compiled_for_the_host_matches_the_reference", &["rng.cuh"], "rng_main.cpp")
    else {
        return;
    };
    let n = 100_003u64;
    for (seed, step, tensor) in [(42, 9 + (1u64 << 32), 7), (0, 0, 0)] {
        let fast = NoiseSource::from_seed(seed, NoiseMode::Fast).key_at(step, tensor);
        let secure = NoiseKey { mode: NoiseMode::Secure, ..fast };
        let mut args: Vec<String> = fast.key.iter().map(|w| format!("{w:x}")).collect();
        args.extend([format!("{tensor:x}"), format!("{:x}", step as u32), format!("{:x}", (step >> 32) as u32), n.to_string()]);
        let out = Command::new(&exe).args(&args).output().unwrap();
        assert!(out.status.success(), "rng_host {args:?} failed");
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count() as u64, n);
        for (e, line) in text.lines().enumerate() {
            let bits: Vec<u32> = line.split_whitespace().map(|h| u32::from_str_radix(h, 16).unwrap()).collect();
            assert_eq!(bits[0], standard_normal_at(&fast, e as u64).to_bits(), "Philox, element {e}");
            assert_eq!(bits[1], standard_normal_at(&secure, e as u64).to_bits(), "ChaCha20, element {e}");
            assert_eq!(bits[2..4], [uniform_class_at(&fast, e as u64, 10), uniform_class_at(&fast, e as u64, 7)], "classes, row {e}");
            assert_eq!(bits[4], uniform_unit_at(&fast, e as u64).to_bits(), "uniform, element {e}");
        }
    }
}
