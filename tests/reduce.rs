mod common;

// Reductions: sum_to, sum_squares_to, sum_products_to and log_softmax. The CPU backend against the sums written out in f64, and the
// CUDA kernels against the CPU backend on the same fresh random inputs.
use common::{assert_close, assert_close_f64, assert_close_sums, on_cuda, randn, rng, tol, Sums};
use dpgan::backend::ops::{log_softmax, sum_products_to, sum_squares_to, sum_to};
use dpgan::tensor::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `x` summed down to `target` (right-aligned, each dim equal or 1), plainly: every element of `x`
/// goes to the output index with the summed dims set to 0.
fn sum_to_formula(x: &[f32], x_shape: &[usize], target: &[usize]) -> Sums {
    let lead = x_shape.len() - target.len();
    let mut out = Sums::zeros(target.iter().product());
    for (flat, &v) in x.iter().enumerate() {
        let mut rest = flat;
        let mut index = vec![0; x_shape.len()];
        for d in (0..x_shape.len()).rev() {
            index[d] = rest % x_shape[d];
            rest /= x_shape[d];
        }
        let mut o = 0;
        for (d, &size) in target.iter().enumerate() {
            o = o * size + if size == 1 { 0 } else { index[lead + d] };
        }
        out.add(o, v as f64);
    }
    out
}

/// `y = x − log Σ exp(x)` per row, the log-sum-exp shifted by the row's maximum, in f64.
fn log_softmax_formula(x: &[f32], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let max = row.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        out.extend(row.iter().map(|&v| v as f64 - max - sum.ln()));
    }
    out
}

/// The layouts the engine sums over: bias gradients of linear and conv layers, per-example and
/// per-feature totals, lower-rank targets, G > 1, batch 1, odd sizes and empty tensors.
fn sum_to_cases(rng: &mut ChaCha8Rng) -> Vec<(Vec<usize>, Vec<usize>)> {
    let g = rng.random_range(2..=4);
    let b = rng.random_range(2..=11);
    let f = [1, 3, 7, 31, 33, 100][rng.random_range(0..6)];
    let (c, h) = (rng.random_range(1..=6), [1, 2, 5, 7][rng.random_range(0..4)]);
    let mut cases = vec![
        (vec![g, b, f], vec![g, 1, f]), // linear bias grad
        (vec![g, b, f], vec![1, 1, f]),
        (vec![g, b, f], vec![g, b, 1]),                 // trailing dim
        (vec![g, b, f], vec![g, 1, 1]),                 // per-group total
        (vec![g, b, f], vec![]),                        // everything, to a scalar
        (vec![g, b, f], vec![f]),                       // lower rank, right-aligned
        (vec![g, b, c, h, h], vec![g, 1, c, 1, 1]),     // conv bias grad
        (vec![g, 1, c, h, h + 2], vec![g, 1, c, 1, 1]), // batch 1
        (vec![g, b, c, h, h], vec![1, b, 1, h, 1]),     // alternating kept and summed dims
        (vec![1, b, f], vec![1, 1, f]),
        (vec![g, b, f], vec![g, b, f]), // nothing to sum
        (vec![g, 0, f], vec![g, 1, f]), // empty: sums over nothing are 0
        (vec![0, f], vec![1, f]),
        (vec![g, 0, f], vec![g, 0, 1]), // empty output
    ];
    // And random ones: rank 1 to 5, each dim summed or not.
    for _ in 0..6 {
        let rank = rng.random_range(1..=5);
        let x: Vec<usize> = (0..rank).map(|_| [1, 2, 3, 5, 8, 13][rng.random_range(0..6)]).collect();
        let t: Vec<usize> = x.iter().map(|&d| if rng.random::<bool>() { 1 } else { d }).collect();
        cases.push((x, t));
    }
    cases
}

#[test]
fn sum_to_cpu_matches_formula() {
    let mut rng = rng("sum_to_cpu_matches_formula");
    for (x_shape, target) in sum_to_cases(&mut rng) {
        let x = randn(&mut rng, &x_shape);
        let y = sum_to(&x, &target).unwrap();
        assert_eq!(y.shape(), &target[..]);
        let got: Vec<f64> = y.cpu_data().unwrap().iter().map(|&v| v as f64).collect();
        let expected = sum_to_formula(x.cpu_data().unwrap(), &x_shape, &target);
        // The CPU sums in f64 and rounds once: within an f32 rounding of the value itself.
        assert_close_f64(&format!("sum_to {x_shape:?} -> {target:?}"), &got, &expected.value, tol::F32_ELEMENTWISE);
    }
}

/// `x`'s elements squared (in f32, as the formula's input; the f64 square of an f32 is exact).
fn squares(x: &Tensor) -> Vec<f32> {
    x.cpu_data().unwrap().iter().map(|&v| v * v).collect()
}

/// The sum of squares against the sum of the squares written out: the fused op squares each term
/// in f64, so it is within an f32 rounding of the exact value (the squares here are exact in f64
/// but the formula's input rounds them to f32 first: a relative 2⁻²⁴ per term).
#[test]
fn sum_squares_to_cpu_matches_formula() {
    let mut rng = rng("sum_squares_to_cpu_matches_formula");
    for (x_shape, target) in sum_to_cases(&mut rng) {
        let x = randn(&mut rng, &x_shape);
        let y = sum_squares_to(&x, &target).unwrap();
        assert_eq!(y.shape(), &target[..]);
        let got: Vec<f64> = y.cpu_data().unwrap().iter().map(|&v| v as f64).collect();
        let expected = sum_to_formula(&squares(&x), &x_shape, &target);
        assert_close_f64(&format!("sum_squares_to {x_shape:?} -> {target:?}"), &got, &expected.value, tol::F32_ELEMENTWISE);
    }
}

/// `x ⊙ y` elementwise, each product rounded to f32 (the formula's input; the f64 product of two
/// f32s is exact).
fn products(x: &Tensor, y: &Tensor) -> Vec<f32> {
    x.cpu_data().unwrap().iter().zip(y.cpu_data().unwrap()).map(|(&a, &b)| a * b).collect()
}

/// The sum of products against the sum of the products written out (within an f32 rounding per
/// term, as for the squares above).
#[test]
fn sum_products_to_cpu_matches_formula() {
    let mut rng = rng("sum_products_to_cpu_matches_formula");
    for (x_shape, target) in sum_to_cases(&mut rng) {
        let (x, y) = (randn(&mut rng, &x_shape), randn(&mut rng, &x_shape));
        let got = sum_products_to(&x, &y, &target).unwrap();
        assert_eq!(got.shape(), &target[..]);
        let got: Vec<f64> = got.cpu_data().unwrap().iter().map(|&v| v as f64).collect();
        let expected = sum_to_formula(&products(&x, &y), &x_shape, &target);
        assert_close_f64(&format!("sum_products_to {x_shape:?} -> {target:?}"), &got, &expected.value, tol::F32_ELEMENTWISE);
    }
}

#[test]
fn sum_to_rejects_shapes_that_do_not_broadcast() {
    let x = Tensor::zeros(&[2, 3, 4], &Device::Cpu).unwrap();
    for bad in [vec![2, 2, 4], vec![4, 3], vec![1, 2, 3, 4]] {
        assert!(sum_to(&x, &bad).is_err(), "{bad:?}");
        assert!(sum_squares_to(&x, &bad).is_err(), "{bad:?}");
        assert!(sum_products_to(&x, &x, &bad).is_err(), "{bad:?}");
    }
    // The factors of a product must have one shape: no broadcasting between them.
    let err = sum_products_to(&x, &Tensor::zeros(&[2, 1, 4], &Device::Cpu).unwrap(), &[2, 1, 1]).unwrap_err().to_string();
    assert!(err.contains("differ"), "{err}");
}

#[test]
fn log_softmax_cpu_matches_formula() {
    let mut rng = rng("log_softmax_cpu_matches_formula");
    for shape in log_softmax_shapes(&mut rng) {
        let x = log_softmax_input(&mut rng, &shape);
        let y = log_softmax(&x).unwrap();
        assert_eq!(y.shape(), &shape[..]);
        let got: Vec<f64> = y.cpu_data().unwrap().iter().map(|&v| v as f64).collect();
        let expected = log_softmax_formula(x.cpu_data().unwrap(), *shape.last().unwrap());
        assert_close_f64(&format!("log_softmax {shape:?}"), &got, &expected, tol::F32_ELEMENTWISE);
    }
}

#[test]
fn log_softmax_rows_exponentiate_to_one() {
    let mut rng = rng("log_softmax_rows_exponentiate_to_one");
    let x = log_softmax_input(&mut rng, &[3, 5, 10]);
    let y = log_softmax(&x).unwrap();
    for row in y.cpu_data().unwrap().chunks(10) {
        let total: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        approx::assert_relative_eq!(total, 1.0, max_relative = 1e-6);
    }
}

#[test]
fn log_softmax_rejects_an_empty_last_axis() {
    assert!(log_softmax(&Tensor::zeros(&[3, 0], &Device::Cpu).unwrap()).is_err());
    assert!(log_softmax(&Tensor::scalar(1.0, &Device::Cpu).unwrap()).is_err());
}

fn log_softmax_shapes(rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let g = rng.random_range(2..=4);
    let b = rng.random_range(2..=9);
    vec![vec![g, b, 10], vec![g, 1, 33], vec![b, 1], vec![7], vec![g, b, 257], vec![2, 3, 1000], vec![g, 0, 10]]
}

/// Normal logits, with some rows shifted by ±200 (exp would overflow f32 without the max shift) and
/// now and then an entry 150 below the rest (its exp underflows f32). Not −1e30: a relative-norm
/// comparison would see nothing but that entry.
fn log_softmax_input(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let cols = *shape.last().unwrap();
    let mut x = randn(rng, shape).to_vec().unwrap();
    for row in x.chunks_mut(cols) {
        let shift = [0.0, 200.0, -200.0][rng.random_range(0..3)];
        for v in row.iter_mut() {
            *v = *v * 3.0 + shift;
        }
        if cols > 1 && rng.random_range(0..4) == 0 {
            row[rng.random_range(0..cols)] = shift - 150.0;
        }
    }
    Tensor::from_vec(x, shape, &Device::Cpu).unwrap()
}

#[test]
fn sum_to_cuda_matches_cpu() {
    on_cuda("sum_to_cuda_matches_cpu", |dev| {
        let mut rng = rng("sum_to_cuda_matches_cpu");
        let mut cases = sum_to_cases(&mut rng);
        // Few outputs over many terms (the summands are split over blocks, then a second pass),
        // many outputs over few, and both kernels' tails.
        cases.extend([
            (vec![2, 600, 8, 7, 7], vec![2, 1, 8, 1, 1]),
            (vec![1, 600, 64, 14, 14], vec![1, 1, 64, 1, 1]),
            (vec![1, 5000, 7], vec![1, 1, 7]),
            (vec![3, 600, 1025], vec![3, 1, 1025]),
            (vec![3, 40_001], vec![3, 1]),
            (vec![4099, 37], vec![4099, 1]),
            (vec![50, 2, 3, 4, 5], vec![1, 1, 1, 1, 1]),
            (vec![9, 300, 2], vec![9, 1, 2]),
        ]);
        for (x_shape, target) in cases {
            let x = randn(&mut rng, &x_shape);
            assert_cuda_sum_matches_cpu(
                dev,
                "sum_to",
                &|t, to| sum_to(&t[0], to),
                std::slice::from_ref(&x),
                x.cpu_data().unwrap(),
                &target,
            );
        }
    });
}

/// A reduction of its inputs down to a shape.
type SumOf<'a> = &'a dyn Fn(&[Tensor], &[usize]) -> dpgan::Result<Tensor>;

/// `sum` (sum_to, sum_squares_to or sum_products_to) of `inputs` on the GPU against the CPU: f32
/// partial sums, over up to ~10^5 terms per output, against the CPU's f64 sums, the error measured
/// against the sum of the |summands| per output (a single output's sum may cancel to near 0).
fn assert_cuda_sum_matches_cpu(dev: &Device, name: &str, sum: SumOf<'_>, inputs: &[Tensor], summands: &[f32], target: &[usize]) {
    let expected = sum(inputs, target).unwrap();
    let on_device: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap()).collect();
    let got = sum(&on_device, target).unwrap();
    assert_eq!(got.shape(), expected.shape());
    let f64s = |t: &Tensor| -> Vec<f64> { t.to_vec().unwrap().iter().map(|&v| v as f64).collect() };
    let magnitude = sum_to_formula(summands, inputs[0].shape(), target).magnitude;
    let expected = Sums { value: f64s(&expected), magnitude };
    assert_close_sums(&format!("{name} {:?} -> {target:?}", inputs[0].shape()), &f64s(&got), &expected, tol::F32_REDUCTION);
}

/// sum_squares_to on the GPU against the CPU on sum_to's cases and the per-example norm layouts
/// (`[G, B, features]` to `[G, B, 1]`, with few examples over many features: a split, then a
/// plain second pass), the error against Σx² per output.
#[test]
fn sum_squares_to_cuda_matches_cpu() {
    on_cuda("sum_squares_to_cuda_matches_cpu", |dev| {
        let mut rng = rng("sum_squares_to_cuda_matches_cpu");
        let mut cases = sum_to_cases(&mut rng);
        cases.extend([
            (vec![1, 600, 784], vec![1, 600, 1]),
            (vec![1, 600, 128], vec![1, 600, 1]),
            (vec![4, 3, 16384], vec![4, 3, 1]),
            (vec![2, 600, 8, 7, 7], vec![2, 1, 8, 1, 1]),
            (vec![1, 5000, 7], vec![1, 1, 7]),
        ]);
        for (x_shape, target) in cases {
            let x = randn(&mut rng, &x_shape);
            assert_cuda_sum_matches_cpu(
                dev,
                "sum_squares_to",
                &|t, to| sum_squares_to(&t[0], to),
                std::slice::from_ref(&x),
                &squares(&x),
                &target,
            );
        }
    });
}

/// sum_products_to on the GPU against the CPU on sum_to's cases and the layouts the engine uses
/// (a conditional critic's projection `[G, B, F]` to `[G, B, 1]`, a weight's dot with its
/// gradient per group, pixel norm's per-position sums), the error against Σ|x·y| per output.
#[test]
fn sum_products_to_cuda_matches_cpu() {
    on_cuda("sum_products_to_cuda_matches_cpu", |dev| {
        let mut rng = rng("sum_products_to_cuda_matches_cpu");
        let mut cases = sum_to_cases(&mut rng);
        cases.extend([
            (vec![1, 32, 4096], vec![1, 32, 1]),
            (vec![1, 256, 128, 25], vec![1, 1, 1, 1]),
            (vec![3, 64, 25], vec![3, 1, 1]),
            (vec![1, 32, 256, 4, 4], vec![1, 32, 1, 4, 4]),
            (vec![1, 5000, 7], vec![1, 1, 7]),
        ]);
        for (x_shape, target) in cases {
            let (x, y) = (randn(&mut rng, &x_shape), randn(&mut rng, &x_shape));
            let summands = products(&x, &y);
            assert_cuda_sum_matches_cpu(dev, "sum_products_to", &|t, to| sum_products_to(&t[0], &t[1], to), &[x, y], &summands, &target);
        }
    });
}

#[test]
fn log_softmax_cuda_matches_cpu() {
    on_cuda("log_softmax_cuda_matches_cpu", |dev| {
        let mut rng = rng("log_softmax_cuda_matches_cpu");
        let mut shapes = log_softmax_shapes(&mut rng);
        shapes.extend([vec![1, 600, 10], vec![4, 100, 10_007], vec![100_003, 3]]);
        for shape in shapes {
            let x = log_softmax_input(&mut rng, &shape);
            let expected = log_softmax(&x).unwrap();
            let got = log_softmax(&x.to_device(dev).unwrap()).unwrap();
            assert_eq!(got.shape(), expected.shape());
            // f32 sums of exp over a row against the CPU's f64.
            assert_close(&format!("log_softmax {shape:?}"), &got.to_vec().unwrap(), expected.cpu_data().unwrap(), tol::F32_REDUCTION);
        }
    });
}
