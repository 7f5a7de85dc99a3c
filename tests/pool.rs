//! 2×2 max pooling (gather/scatter), nearest ×2 upsampling and 2×2 sum pooling against their index
//! formulas, ties and NaN, odd sizes, the adjoint pairs, and shape errors.
mod common;

use common::{assert_close, assert_close_f64, assert_identical, expect_shape_error, on_cuda, randn_vec, tol};
use dpgan::backend::ops;
use dpgan::tensor::{Device, Tensor};
use rand::Rng;

/// Shapes `[.., H, W]` of rank 2 to 5, with odd H and W (the last row/column is dropped), H or W of
/// 1 (nothing pooled) and a plain even case.
const SHAPES: &[&[usize]] = &[&[2, 3, 7, 5], &[4, 6], &[5, 8], &[3, 9, 4], &[1, 1, 2, 2], &[2, 1, 3, 1, 6], &[2, 2, 1, 5], &[2, 3, 8, 8]];

fn tensor(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn tensor64(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec_f64(data.iter().map(|&x| x as f64).collect(), shape).unwrap()
}

fn data(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap()
}

/// `(planes, H, W)` of a `[.., H, W]` shape.
fn planes(shape: &[usize]) -> (usize, usize, usize) {
    let r = shape.len();
    (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1])
}

fn pooled(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    let r = s.len();
    s[r - 2] /= 2;
    s[r - 1] /= 2;
    s
}

/// Flat index in `x` of each window's maximum: windows at (2·oy, 2·ox) for oy < H/2, ox < W/2
/// (floor), scanned in row-major order, the first maximum kept unless a NaN comes (a NaN wins, as in
/// PyTorch: `val > max || isnan(val)`).
fn argmax_oracle(x: &[f32], shape: &[usize]) -> Vec<usize> {
    let (n, h, w) = planes(shape);
    let mut picks = Vec::new();
    for p in 0..n {
        for oy in 0..h / 2 {
            for ox in 0..w / 2 {
                let window = [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| (p * h + 2 * oy + dy) * w + 2 * ox + dx);
                let mut best = window[0];
                for at in window {
                    if x[at] > x[best] || x[at].is_nan() {
                        best = at;
                    }
                }
                picks.push(best);
            }
        }
    }
    picks
}

/// Values from {−1, 0, 1} so that most windows hold ties.
fn tied(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1i32..=1) as f32).collect()
}

/// Gather and max pool are copies, so F32_ELEMENTWISE only stands in for "exact": one misplaced
/// element among N gives a relative error near sqrt(2/N) ≫ 1e-6.
#[test]
fn max_pool_picks_the_first_maximum_of_each_window() {
    let mut rng = common::rng("max_pool_picks_the_first_maximum_of_each_window");
    for &shape in SHAPES {
        let n = shape.iter().product();
        for (kind, x) in [("random", randn_vec(&mut rng, n)), ("tied", tied(&mut rng, n))] {
            let v = randn_vec(&mut rng, n);
            let picks = argmax_oracle(&x, shape);
            let (xt, vt) = (tensor(x.clone(), shape), tensor(v.clone(), shape));

            let pooled_x = ops::max_pool2x2(&xt).unwrap();
            assert_eq!(pooled_x.shape(), pooled(shape), "{shape:?}: pooled shape");
            let expected: Vec<f32> = picks.iter().map(|&i| x[i]).collect();
            assert_close(&format!("max_pool2x2 {kind} {shape:?}"), &data(&pooled_x), &expected, tol::F32_ELEMENTWISE);

            // v distinct from x shows which element of a tied window was picked.
            let gathered = ops::max_pool2x2_gather(&xt, &vt).unwrap();
            let expected: Vec<f32> = picks.iter().map(|&i| v[i]).collect();
            assert_close(&format!("max_pool2x2_gather {kind} {shape:?}"), &data(&gathered), &expected, tol::F32_ELEMENTWISE);
            let (x64, v64) = (tensor64(&x, shape), tensor64(&v, shape));
            let gathered64 = ops::max_pool2x2_gather(&x64, &v64).unwrap().to_vec_f64().unwrap();
            assert!(gathered64.iter().zip(&expected).all(|(&a, &e)| a == e as f64), "max_pool2x2_gather f64 {kind} {shape:?}");

            let dy = randn_vec(&mut rng, picks.len());
            let mut expected = vec![0.0; n];
            picks.iter().zip(&dy).for_each(|(&i, &d)| expected[i] = d);
            let scattered = ops::max_pool2x2_scatter(&xt, &tensor(dy, &pooled(shape))).unwrap();
            assert_eq!(scattered.shape(), shape);
            assert_close(&format!("max_pool2x2_scatter {kind} {shape:?}"), &data(&scattered), &expected, tol::F32_ELEMENTWISE);
        }
    }
}

#[test]
fn max_pool_ties_and_signed_zeros_keep_the_first_in_row_major_order() {
    // One window per case: [a b; c d]; v = [10, 20, 30, 40] names the pick.
    let v = tensor(vec![10.0, 20.0, 30.0, 40.0], &[2, 2]);
    for (x, pick) in [
        ([1.0, 1.0, 1.0, 1.0], 10.0),
        ([0.0, 2.0, 2.0, 1.0], 20.0),
        ([0.0, 1.0, 2.0, 2.0], 30.0),
        ([-0.0, 0.0, 0.0, -1.0], 10.0),
        ([0.0, -0.0, -1.0, -0.0], 10.0),
        ([-3.0, -3.0, -2.0, -2.0], 30.0),
        ([f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY], 10.0),
    ] {
        let got = ops::max_pool2x2_gather(&tensor(x.to_vec(), &[2, 2]), &v).unwrap().item().unwrap();
        assert_eq!(got, pick, "window {x:?}");
    }
}

/// A NaN anywhere in a window wins, so max pooling propagates it (PyTorch does the same); windows
/// without NaN are unaffected.
#[test]
fn max_pool_propagates_nan() {
    let mut rng = common::rng("max_pool_propagates_nan");
    let shape = [3, 6, 7];
    let mut x = randn_vec(&mut rng, 3 * 6 * 7);
    let nan_at: Vec<usize> = (0..12).map(|_| rng.random_range(0..x.len())).collect();
    nan_at.iter().for_each(|&i| x[i] = f32::NAN);
    // The first element of the first window too: the comparison that starts from it must not skip it.
    x[0] = f32::NAN;
    let picks = argmax_oracle(&x, &shape);
    let pooled_x = data(&ops::max_pool2x2(&tensor(x.clone(), &shape)).unwrap());
    let (_, h, w) = planes(&shape);
    for (o, (&got, &pick)) in pooled_x.iter().zip(&picks).enumerate() {
        let (p, oy, ox) = (o / ((h / 2) * (w / 2)), (o / (w / 2)) % (h / 2), o % (w / 2));
        let window = [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| x[(p * h + 2 * oy + dy) * w + 2 * ox + dx]);
        if window.iter().any(|v| v.is_nan()) {
            assert!(got.is_nan(), "window {o} {window:?}: got {got}, expected NaN");
        } else {
            assert_eq!(got, x[pick], "window {o} {window:?}");
        }
    }
    assert!(pooled_x[0].is_nan(), "a NaN in a window's first position propagates");
}

/// `⟨gather(x, v), dy⟩ = ⟨v, scatter(x, dy)⟩` and `⟨upsample(x), y⟩ = ⟨x, sum_pool(y)⟩`, in f64 sums.
/// The gap is bounded by tol·‖v‖·‖dy‖: the copies are exact, sum_pool adds 4 terms in f32, so
/// F32_ELEMENTWISE.
#[test]
fn pool_adjoint_pairs() {
    let mut rng = common::rng("pool_adjoint_pairs");
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let norm = |a: &[f32]| dot(a, a).sqrt();
    for &shape in SHAPES {
        let n: usize = shape.iter().product();
        for (kind, x) in [("random", randn_vec(&mut rng, n)), ("tied", tied(&mut rng, n))] {
            let v = randn_vec(&mut rng, n);
            let dy = randn_vec(&mut rng, pooled(shape).iter().product());
            let xt = tensor(x, shape);
            let gathered = data(&ops::max_pool2x2_gather(&xt, &tensor(v.clone(), shape)).unwrap());
            let scattered = data(&ops::max_pool2x2_scatter(&xt, &tensor(dy.clone(), &pooled(shape))).unwrap());
            let (lhs, rhs) = (dot(&gathered, &dy), dot(&v, &scattered));
            assert!((lhs - rhs).abs() <= tol::F32_ELEMENTWISE * norm(&v) * norm(&dy), "gather/scatter {kind} {shape:?}: {lhs} vs {rhs}");
        }

        let x = randn_vec(&mut rng, n);
        let mut up_shape = shape.to_vec();
        let r = up_shape.len();
        up_shape[r - 2] *= 2;
        up_shape[r - 1] *= 2;
        let y = randn_vec(&mut rng, 4 * n);
        let up = data(&ops::upsample_nearest2x(&tensor(x.clone(), shape)).unwrap());
        let summed = data(&ops::sum_pool2x2(&tensor(y.clone(), &up_shape)).unwrap());
        let (lhs, rhs) = (dot(&up, &y), dot(&x, &summed));
        assert!((lhs - rhs).abs() <= tol::F32_ELEMENTWISE * norm(&x) * norm(&y), "upsample/sum_pool {shape:?}: {lhs} vs {rhs}");
    }
}

/// `up[.., y, x] = in[.., ⌊y/2⌋, ⌊x/2⌋]` (a copy: F32_ELEMENTWISE stands for exact) and
/// `sum[.., y, x] = Σ_{dy,dx ∈ {0,1}} in[.., 2y+dy, 2x+dx]` (4 f32 terms against an f64 sum:
/// F32_ELEMENTWISE).
#[test]
fn upsample_and_sum_pool_match_their_formulas() {
    let mut rng = common::rng("upsample_and_sum_pool_match_their_formulas");
    for &shape in SHAPES {
        let (n, h, w) = planes(shape);
        let x = randn_vec(&mut rng, n * h * w);
        let up = ops::upsample_nearest2x(&tensor(x.clone(), shape)).unwrap();
        let mut up_shape = shape.to_vec();
        let r = up_shape.len();
        up_shape[r - 2] = 2 * h;
        up_shape[r - 1] = 2 * w;
        assert_eq!(up.shape(), up_shape, "upsample shape");
        let mut expected = Vec::new();
        for p in 0..n {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    expected.push(x[(p * h + y / 2) * w + xx / 2]);
                }
            }
        }
        assert_close(&format!("upsample_nearest2x {shape:?}"), &data(&up), &expected, tol::F32_ELEMENTWISE);

        let big = randn_vec(&mut rng, 4 * n * h * w);
        let summed = ops::sum_pool2x2(&tensor(big.clone(), &up_shape)).unwrap();
        assert_eq!(summed.shape(), shape, "sum_pool shape");
        let mut expected = Vec::new();
        for p in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    let at = |dy: usize, dx: usize| big[(p * 2 * h + 2 * y + dy) * 2 * w + 2 * xx + dx] as f64;
                    expected.push(at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
                }
            }
        }
        assert_close_f64(&format!("sum_pool2x2 {shape:?}"), &summed.to_vec_f64().unwrap(), &expected, tol::F32_ELEMENTWISE);
    }
}

#[test]
fn pool_shape_errors_are_errors_not_panics() {
    let mut rng = common::rng("pool_shape_errors_are_errors_not_panics");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let x = t(&[2, 5, 7]);
    expect_shape_error("max_pool2x2: rank 1", ops::max_pool2x2(&t(&[8])));
    expect_shape_error("gather: shapes differ", ops::max_pool2x2_gather(&x, &t(&[2, 5, 6])));
    expect_shape_error("scatter: dy not pooled shape", ops::max_pool2x2_scatter(&x, &t(&[2, 3, 3])));
    expect_shape_error("scatter: dy rank", ops::max_pool2x2_scatter(&x, &t(&[2, 6])));
    expect_shape_error("scatter: rank 1", ops::max_pool2x2_scatter(&t(&[4]), &t(&[2])));
    expect_shape_error("upsample: rank 1", ops::upsample_nearest2x(&t(&[4])));
    expect_shape_error("sum_pool: odd H", ops::sum_pool2x2(&t(&[2, 5, 4])));
    expect_shape_error("sum_pool: odd W", ops::sum_pool2x2(&t(&[2, 4, 7])));
    expect_shape_error("sum_pool: rank 1", ops::sum_pool2x2(&t(&[4])));
    let v64 = Tensor::from_vec_f64(vec![0.0; x.numel()], x.shape()).unwrap();
    expect_shape_error("gather: dtypes", ops::max_pool2x2_gather(&x, &v64));
}

/// Shapes for the GPU comparisons: the CPU tests' shapes, plus batch 1 and G > 1 layouts
/// `[G, B, C, H, W]` with odd H and W (a dropped last row and column), a plane too small to pool,
/// sizes that are not multiples of the 256-thread block, one large enough to grid-stride, and an
/// empty batch.
fn cuda_shapes() -> Vec<Vec<usize>> {
    let mut shapes: Vec<Vec<usize>> = SHAPES.iter().map(|s| s.to_vec()).collect();
    shapes.extend([
        vec![1, 1, 1, 33, 65],
        vec![3, 5, 2, 17, 13],
        vec![4, 1, 3, 28, 28],
        vec![2, 600, 1, 14, 14],
        vec![1, 1, 1, 1, 1],
        vec![1, 1, 2, 1, 9],
        vec![2, 0, 3, 6, 6],
        vec![1, 2, 3, 1023, 257],
    ]);
    shapes
}

/// x with NaN at random places (and in the first slot), ±inf, and −0 beside +0: the comparison
/// rule `val > max || isnan(val)` must choose the same element as on the CPU.
fn with_specials(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    let mut x = tied(rng, n);
    for _ in 0..n.div_ceil(7) {
        let i = rng.random_range(0..n);
        x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0][rng.random_range(0..5)];
    }
    if n > 0 {
        x[0] = f32::NAN;
    }
    x
}

/// Gather, max pool and scatter on the GPU against the CPU on fresh inputs: random, tied and with
/// NaN/inf/signed zeros. They only move values (scatter adds dy into a zero), so the results must
/// be identical, bit for bit; device outputs start as NaN, so an unwritten element shows.
#[test]
fn max_pool_cuda_matches_cpu() {
    on_cuda("max_pool_cuda_matches_cpu", |dev| {
        let mut rng = common::rng("max_pool_cuda_matches_cpu");
        for shape in cuda_shapes() {
            let n: usize = shape.iter().product();
            for (kind, x) in [("random", randn_vec(&mut rng, n)), ("tied", tied(&mut rng, n)), ("specials", with_specials(&mut rng, n))] {
                let mut v = randn_vec(&mut rng, n);
                // −0 in v shows whether the gather copies signs.
                v.iter_mut().step_by(5).for_each(|e| *e = -0.0);
                let mut dy = randn_vec(&mut rng, pooled(&shape).iter().product());
                dy.iter_mut().step_by(3).for_each(|e| *e = -0.0);
                let (xt, vt, dyt) = (tensor(x, &shape), tensor(v, &shape), tensor(dy, &pooled(&shape)));
                let (xd, vd, dyd) = (xt.to_device(dev).unwrap(), vt.to_device(dev).unwrap(), dyt.to_device(dev).unwrap());
                let what = |op: &str| format!("{op} {kind} {shape:?}");

                let (got, expected) = (ops::max_pool2x2(&xd).unwrap(), ops::max_pool2x2(&xt).unwrap());
                assert_eq!(got.shape(), expected.shape(), "{}", what("max_pool2x2 shape"));
                assert_identical(&what("max_pool2x2"), &data(&got), &data(&expected));

                let (got, expected) = (ops::max_pool2x2_gather(&xd, &vd).unwrap(), ops::max_pool2x2_gather(&xt, &vt).unwrap());
                assert_eq!(got.shape(), expected.shape(), "{}", what("gather shape"));
                assert_identical(&what("max_pool2x2_gather"), &data(&got), &data(&expected));

                let (got, expected) = (ops::max_pool2x2_scatter(&xd, &dyd).unwrap(), ops::max_pool2x2_scatter(&xt, &dyt).unwrap());
                assert_eq!(got.shape(), shape, "{}", what("scatter shape"));
                assert_identical(&what("max_pool2x2_scatter"), &data(&got), &data(&expected));
            }
        }
    });
}

/// Upsample (a copy) and sum pool (four f32 additions in the CPU's order, which the kernel keeps:
/// no fast-math, no reassociation) on the GPU against the CPU: identical results.
#[test]
fn upsample_and_sum_pool_cuda_match_cpu() {
    on_cuda("upsample_and_sum_pool_cuda_match_cpu", |dev| {
        let mut rng = common::rng("upsample_and_sum_pool_cuda_match_cpu");
        for shape in cuda_shapes() {
            let n: usize = shape.iter().product();
            let mut x = randn_vec(&mut rng, n);
            x.iter_mut().step_by(4).for_each(|e| *e = -0.0);
            let xt = tensor(x, &shape);
            let (got, expected) = (ops::upsample_nearest2x(&xt.to_device(dev).unwrap()).unwrap(), ops::upsample_nearest2x(&xt).unwrap());
            assert_eq!(got.shape(), expected.shape(), "upsample shape {shape:?}");
            assert_identical(&format!("upsample_nearest2x {shape:?}"), &data(&got), &data(&expected));

            // sum_pool needs even H and W: pool the upsampled shape, on values that cancel and on
            // −0s (−0 + −0 stays −0 on both).
            let up_shape = expected.shape().to_vec();
            let mut y = randn_vec(&mut rng, 4 * n);
            y.iter_mut().step_by(2).for_each(|e| *e = -0.0);
            let yt = tensor(y, &up_shape);
            let (got, expected) = (ops::sum_pool2x2(&yt.to_device(dev).unwrap()).unwrap(), ops::sum_pool2x2(&yt).unwrap());
            assert_eq!(got.shape(), shape, "sum_pool shape");
            assert_identical(&format!("sum_pool2x2 {up_shape:?}"), &data(&got), &data(&expected));
        }
    });
}
