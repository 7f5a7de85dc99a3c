//! narrow, pad, concat and crop against index formulas on every axis, pad as the adjoint of narrow,
//! concat of three tensors and back, rows gathered by index, in-place copies between devices, and
//! shape errors.
//!
//! These ops only move values, so every comparison uses F32_ELEMENTWISE as a stand-in for "exact":
//! one misplaced element among N gives a relative error near sqrt(2/N), far above 1e-6.
mod common;

use common::{assert_close, assert_identical, expect_shape_error, on_cuda, randn_vec, tol};
use dpgan::backend::ops;
use dpgan::tensor::{Device, Tensor};

const SHAPES: &[&[usize]] = &[&[7], &[3, 4, 5], &[2, 3, 4, 5], &[1, 6, 1, 3], &[2, 1, 9]];

fn tensor(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn data(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap()
}

/// The multi-index of flat position `i` in a row-major `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

fn with_dim(shape: &[usize], axis: usize, n: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[axis] = n;
    s
}

/// `out[.., i, ..] = x[.., start + i, ..]` along `axis`.
fn narrow_oracle(x: &[f32], shape: &[usize], axis: usize, start: usize, len: usize) -> Vec<f32> {
    let out_shape = with_dim(shape, axis, len);
    (0..out_shape.iter().product())
        .map(|o| {
            let mut idx = unravel(o, &out_shape);
            idx[axis] += start;
            x[ravel(&idx, shape)]
        })
        .collect()
}

/// `out[.., i, ..] = x[.., i − before, ..]` where that is inside `x`, else 0.
fn pad_oracle(x: &[f32], shape: &[usize], axis: usize, before: usize, after: usize) -> Vec<f32> {
    let out_shape = with_dim(shape, axis, before + shape[axis] + after);
    (0..out_shape.iter().product())
        .map(|o| {
            let mut idx = unravel(o, &out_shape);
            if idx[axis] < before || idx[axis] >= before + shape[axis] {
                return 0.0;
            }
            idx[axis] -= before;
            x[ravel(&idx, shape)]
        })
        .collect()
}

#[test]
fn narrow_and_pad_match_their_formulas_on_every_axis() {
    let mut rng = common::rng("narrow_and_pad_match_their_formulas_on_every_axis");
    for &shape in SHAPES {
        let x = randn_vec(&mut rng, shape.iter().product());
        let xt = tensor(x.clone(), shape);
        for axis in 0..shape.len() {
            let dim = shape[axis];
            // Every window, including empty ones and the whole axis.
            for start in 0..=dim {
                for len in 0..=dim - start {
                    let got = ops::narrow(&xt, axis, start, len).unwrap();
                    assert_eq!(got.shape(), with_dim(shape, axis, len), "narrow {shape:?} axis {axis} {start}+{len}");
                    let what = format!("narrow {shape:?} axis {axis} {start}+{len}");
                    assert_close(&what, &data(&got), &narrow_oracle(&x, shape, axis, start, len), tol::F32_ELEMENTWISE);
                }
            }
            for (before, after) in [(0, 0), (1, 0), (0, 2), (3, 1), (2, 5)] {
                let got = ops::pad(&xt, axis, before, after).unwrap();
                assert_eq!(got.shape(), with_dim(shape, axis, before + dim + after), "pad {shape:?} axis {axis}");
                let what = format!("pad {shape:?} axis {axis} ({before}, {after})");
                assert_close(&what, &data(&got), &pad_oracle(&x, shape, axis, before, after), tol::F32_ELEMENTWISE);
            }
        }
    }
}

/// `⟨narrow(x, a, s, l), y⟩ = ⟨x, pad(y, a, s, dim − s − l)⟩`, in f64 sums; both sides are sums of
/// the same exact products, so only f64 rounding separates them (bounded by F32_ELEMENTWISE·‖x‖‖y‖).
#[test]
fn pad_is_the_adjoint_of_narrow() {
    let mut rng = common::rng("pad_is_the_adjoint_of_narrow");
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    for &shape in SHAPES {
        let x = randn_vec(&mut rng, shape.iter().product());
        let xt = tensor(x.clone(), shape);
        for axis in 0..shape.len() {
            let dim = shape[axis];
            for (start, len) in [(0, dim), (0, dim / 2), (dim / 3, dim - dim / 3), (dim - 1, 1)] {
                let narrowed = data(&ops::narrow(&xt, axis, start, len).unwrap());
                let y = randn_vec(&mut rng, narrowed.len());
                let padded = data(&ops::pad(&tensor(y.clone(), &with_dim(shape, axis, len)), axis, start, dim - start - len).unwrap());
                let (lhs, rhs) = (dot(&narrowed, &y), dot(&x, &padded));
                let scale = dot(&x, &x).sqrt() * dot(&y, &y).sqrt();
                assert!((lhs - rhs).abs() <= tol::F32_ELEMENTWISE * scale, "{shape:?} axis {axis} {start}+{len}: {lhs} vs {rhs}");
            }
        }
    }
}

#[test]
fn concat_of_three_matches_its_formula_and_narrows_back() {
    let mut rng = common::rng("concat_of_three_matches_its_formula_and_narrows_back");
    for &shape in SHAPES {
        for axis in 0..shape.len() {
            let sizes = [shape[axis] + 2, 1, shape[axis]];
            let parts: Vec<Vec<f32>> = sizes.iter().map(|&n| randn_vec(&mut rng, with_dim(shape, axis, n).iter().product())).collect();
            let tensors: Vec<Tensor> = parts.iter().zip(sizes).map(|(p, n)| tensor(p.clone(), &with_dim(shape, axis, n))).collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let got = ops::concat(&refs, axis).unwrap();
            let total: usize = sizes.iter().sum();
            let out_shape = with_dim(shape, axis, total);
            assert_eq!(got.shape(), out_shape, "concat {shape:?} axis {axis}");

            // out[.., i, ..] = part_k[.., i − offset_k, ..] for the part k whose range holds i.
            let expected: Vec<f32> = (0..out_shape.iter().product())
                .map(|o| {
                    let mut idx = unravel(o, &out_shape);
                    let mut k = 0;
                    while idx[axis] >= sizes[k] {
                        idx[axis] -= sizes[k];
                        k += 1;
                    }
                    parts[k][ravel(&idx, &with_dim(shape, axis, sizes[k]))]
                })
                .collect();
            assert_close(&format!("concat {shape:?} axis {axis}"), &data(&got), &expected, tol::F32_ELEMENTWISE);

            let mut offset = 0;
            for (k, &n) in sizes.iter().enumerate() {
                let back = ops::narrow(&got, axis, offset, n).unwrap();
                assert_close(&format!("narrow(concat) part {k} {shape:?} axis {axis}"), &data(&back), &parts[k], tol::F32_ELEMENTWISE);
                offset += n;
            }
        }
    }
    // A single part and an empty part are fine too.
    let a = tensor(randn_vec(&mut rng, 12), &[3, 4]);
    let empty = tensor(vec![], &[3, 0]);
    assert_eq!(data(&ops::concat(&[&a], 1).unwrap()), data(&a));
    assert_eq!(data(&ops::concat(&[&empty, &a, &empty], 1).unwrap()), data(&a));
}

/// `crop(x, h, w)[.., y, x] = x[.., y, x]` for y < h, x < w: the top-left window.
#[test]
fn crop_takes_the_top_left_window() {
    let mut rng = common::rng("crop_takes_the_top_left_window");
    for (shape, h, w) in
        [(&[2, 3, 8, 8][..], 7, 7), (&[1, 1, 32, 32][..], 28, 28), (&[4, 5, 9][..], 5, 9), (&[6, 2][..], 1, 1), (&[2, 3, 4][..], 3, 0)]
    {
        let x = randn_vec(&mut rng, shape.iter().product());
        let got = ops::crop(&tensor(x.clone(), shape), h, w).unwrap();
        let r = shape.len();
        let out_shape = with_dim(&with_dim(shape, r - 2, h), r - 1, w);
        assert_eq!(got.shape(), out_shape);
        let expected: Vec<f32> = (0..out_shape.iter().product()).map(|o| x[ravel(&unravel(o, &out_shape), shape)]).collect();
        assert_close(&format!("crop {shape:?} to {h}x{w}"), &data(&got), &expected, tol::F32_ELEMENTWISE);
    }
}

/// Random row indices of a table of `rows` rows: repeats, the first and the last row, any order.
fn row_indices(rng: &mut impl rand::Rng, rows: usize, n: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..n).map(|_| rng.random_range(0..rows as u32)).collect();
    if n >= 2 {
        idx[0] = rows as u32 - 1;
        idx[n - 1] = 0;
    }
    idx
}

/// gather_rows against its formula: `out[r, ...] = table[indices[r], ...]` for tables of rank 1
/// to 4, with repeated indices, an empty index list and a one-row table.
#[test]
fn gather_rows_matches_its_formula() {
    let mut rng = common::rng("gather_rows_matches_its_formula");
    for shape in [vec![7], vec![5, 3], vec![9, 1, 4], vec![1, 2, 3, 2], vec![60, 784]] {
        let table = randn_vec(&mut rng, shape.iter().product());
        let row_len: usize = shape[1..].iter().product();
        for n in [0, 1, 3, 17] {
            let idx = row_indices(&mut rng, shape[0], n);
            let got = ops::gather_rows(&tensor(table.clone(), &shape), &idx).unwrap();
            assert_eq!(got.shape(), with_dim(&shape, 0, n).as_slice(), "gather {shape:?} n = {n}");
            let expected: Vec<f32> = idx.iter().flat_map(|&i| table[i as usize * row_len..(i as usize + 1) * row_len].to_vec()).collect();
            assert_identical(&format!("gather {shape:?} rows {idx:?}"), &data(&got), &expected);
        }
    }
}

#[test]
fn shape_op_errors_are_errors_not_panics() {
    let mut rng = common::rng("shape_op_errors_are_errors_not_panics");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let x = t(&[2, 3, 4]);
    expect_shape_error("narrow: axis out of range", ops::narrow(&x, 3, 0, 1));
    expect_shape_error("narrow: past the end", ops::narrow(&x, 1, 2, 2));
    expect_shape_error("narrow: start past the end", ops::narrow(&x, 2, 5, 0));
    expect_shape_error("narrow: rank 0", ops::narrow(&Tensor::scalar(1.0, &Device::Cpu).unwrap(), 0, 0, 1));
    expect_shape_error("pad: axis out of range", ops::pad(&x, 3, 1, 1));
    expect_shape_error("concat: nothing", ops::concat(&[], 0));
    expect_shape_error("concat: axis out of range", ops::concat(&[&x, &x], 3));
    expect_shape_error("concat: other dim differs", ops::concat(&[&x, &t(&[2, 3, 5])], 1));
    expect_shape_error("concat: third part differs", ops::concat(&[&x, &x, &t(&[3, 3, 4])], 2));
    expect_shape_error("concat: ranks differ", ops::concat(&[&x, &t(&[2, 3, 4, 1])], 0));
    let x64 = Tensor::from_vec_f64(vec![0.0; x.numel()], x.shape()).unwrap();
    expect_shape_error("concat: dtypes", ops::concat(&[&x, &x64], 0));
    expect_shape_error("crop: higher than the input", ops::crop(&x, 4, 4));
    expect_shape_error("crop: wider than the input", ops::crop(&x, 3, 5));
    expect_shape_error("crop: rank 1", ops::crop(&t(&[5]), 1, 1));
    expect_shape_error("gather_rows: an index past the table", ops::gather_rows(&x, &[0, 2]));
    expect_shape_error("gather_rows: a scalar table", ops::gather_rows(&Tensor::scalar(1.0, &Device::Cpu).unwrap(), &[0]));
}

/// Shapes for the GPU comparisons: the CPU tests' shapes, plus G > 1 / batch-1 activations
/// `[G, B, C, H, W]`, sizes that are not multiples of the 256-thread block and one large enough to
/// grid-stride.
fn cuda_shapes() -> Vec<Vec<usize>> {
    let mut shapes: Vec<Vec<usize>> = SHAPES.iter().map(|s| s.to_vec()).collect();
    shapes.extend([vec![3, 1, 5, 7, 9], vec![2, 4, 3, 1, 13], vec![1, 600, 3, 29, 31]]);
    shapes
}

/// Windows of an axis of size `dim` to narrow to: the first and last slice, a middle run, all but
/// the ends, and an empty window (the whole axis is no launch: ops returns x itself).
fn windows(dim: usize) -> Vec<(usize, usize)> {
    let mut w = vec![(0, 1.min(dim)), (dim.saturating_sub(1), 1.min(dim)), (dim / 3, dim - dim / 3 - dim / 4), (dim / 2, 0)];
    if dim > 2 {
        w.push((1, dim - 2));
    }
    w
}

/// narrow and pad on every axis on the GPU against the CPU. They only move values (pad adds
/// zeros), so the results must be identical; device outputs start as NaN, so an unwritten element
/// (a pad zero not written, a tail missed) shows.
#[test]
fn narrow_and_pad_cuda_match_cpu_on_every_axis() {
    on_cuda("narrow_and_pad_cuda_match_cpu_on_every_axis", |dev| {
        let mut rng = common::rng("narrow_and_pad_cuda_match_cpu_on_every_axis");
        for shape in cuda_shapes() {
            let mut x = randn_vec(&mut rng, shape.iter().product());
            x.iter_mut().step_by(5).for_each(|e| *e = -0.0);
            let xt = tensor(x, &shape);
            let xd = xt.to_device(dev).unwrap();
            for axis in 0..shape.len() {
                for (start, len) in windows(shape[axis]) {
                    let (got, expected) = (ops::narrow(&xd, axis, start, len).unwrap(), ops::narrow(&xt, axis, start, len).unwrap());
                    assert_eq!(got.shape(), expected.shape(), "narrow {shape:?} axis {axis} {start}+{len}");
                    assert_identical(&format!("narrow {shape:?} axis {axis} {start}+{len}"), &data(&got), &data(&expected));
                }
                for (before, after) in [(1, 0), (0, 3), (2, 5), (4, 1)] {
                    let (got, expected) = (ops::pad(&xd, axis, before, after).unwrap(), ops::pad(&xt, axis, before, after).unwrap());
                    assert_eq!(got.shape(), expected.shape(), "pad {shape:?} axis {axis} ({before}, {after})");
                    assert_identical(&format!("pad {shape:?} axis {axis} ({before}, {after})"), &data(&got), &data(&expected));
                }
            }
        }
        // An empty tensor padded: the output is all zeros, written by the kernel.
        let empty = tensor(vec![], &[2, 0, 3]);
        let got = ops::pad(&empty.to_device(dev).unwrap(), 1, 2, 1).unwrap();
        assert_identical("pad of an empty axis", &data(&got), &data(&ops::pad(&empty, 1, 2, 1).unwrap()));
    });
}

/// concat of one, two and four parts on every axis, with unequal sizes along the axis and an empty
/// part among them, on the GPU against the CPU: identical results.
#[test]
fn concat_cuda_matches_cpu_on_every_axis() {
    on_cuda("concat_cuda_matches_cpu_on_every_axis", |dev| {
        let mut rng = common::rng("concat_cuda_matches_cpu_on_every_axis");
        for shape in cuda_shapes() {
            for axis in 0..shape.len() {
                let d = shape[axis];
                for sizes in [vec![d], vec![d, 3], vec![2, 0, d, 1]] {
                    let parts: Vec<Tensor> = sizes
                        .iter()
                        .map(|&n| tensor(randn_vec(&mut rng, with_dim(&shape, axis, n).iter().product()), &with_dim(&shape, axis, n)))
                        .collect();
                    let on_dev: Vec<Tensor> = parts.iter().map(|t| t.to_device(dev).unwrap()).collect();
                    let expected = ops::concat(&parts.iter().collect::<Vec<_>>(), axis).unwrap();
                    let got = ops::concat(&on_dev.iter().collect::<Vec<_>>(), axis).unwrap();
                    assert_eq!(got.shape(), expected.shape(), "concat {shape:?} axis {axis} sizes {sizes:?}");
                    assert_identical(&format!("concat {shape:?} axis {axis} sizes {sizes:?}"), &data(&got), &data(&expected));
                }
            }
        }
    });
}

/// gather_rows on the GPU against the CPU: identical rows (values only move), for a training-set
/// sized table (60,000 × 784, a Poisson batch's worth of indices, and GS-WGAN's and DPSGD-GAN's
/// batches, whose indices travel in the launch's parameters: up to 256, and one past), tables whose
/// rows are not a multiple of the block, an empty index list, and an out-of-range index refused
/// before launch.
#[test]
fn gather_rows_cuda_matches_cpu() {
    on_cuda("gather_rows_cuda_matches_cpu", |dev| {
        let mut rng = common::rng("gather_rows_cuda_matches_cpu");
        for (shape, n) in [
            (vec![60_000, 784], 613),
            (vec![60_000, 784], 32),
            (vec![60_000, 784], 256),
            (vec![60_000, 784], 257),
            (vec![60_000, 10], 613),
            (vec![10, 10], 600),
            (vec![7, 3, 5], 9),
            (vec![4], 0),
        ] {
            let table = tensor(randn_vec(&mut rng, shape.iter().product()), &shape);
            let on_dev = table.to_device(dev).unwrap();
            let idx = row_indices(&mut rng, shape[0], n);
            let (got, expected) = (ops::gather_rows(&on_dev, &idx).unwrap(), ops::gather_rows(&table, &idx).unwrap());
            assert_eq!(got.shape(), expected.shape(), "gather {shape:?} n = {n}");
            assert_identical(&format!("gather {shape:?} n = {n}"), &data(&got), &data(&expected));
        }
        let small = tensor(vec![1.0; 6], &[3, 2]).to_device(dev).unwrap();
        expect_shape_error("gather_rows on the GPU: an index past the table", ops::gather_rows(&small, &[3]));
    });
}

/// `copy_from` overwrites a tensor's values in place: its storage stays (a CUDA graph reading it
/// reads the new values), a tensor sharing the old storage keeps the old values, and a copy of
/// another shape or dtype is refused.
#[test]
fn copy_from_overwrites_values_in_place_on_the_cpu() {
    let mut rng = common::rng("copy_from_overwrites_values_in_place_on_the_cpu");
    let (old, new) = (randn_vec(&mut rng, 12), randn_vec(&mut rng, 12));
    let mut dst = tensor(old.clone(), &[3, 4]);
    let src = tensor(new.clone(), &[3, 4]);
    let before = dst.storage() as *const _;
    dst.copy_from(&src).unwrap();
    assert_eq!(data(&dst), new);
    assert!(std::ptr::eq(dst.storage(), before), "the copy keeps the storage");
    let mut shared = tensor(old.clone(), &[3, 4]);
    let alias = shared.clone();
    shared.copy_from(&src).unwrap();
    assert_eq!((data(&shared), data(&alias)), (new.clone(), old), "a tensor sharing the old storage keeps its values");
    let err = dst.copy_from(&tensor(new.clone(), &[4, 3])).unwrap_err().to_string();
    assert!(err.contains("copying [4, 3] into [3, 4]"), "{err}");
    let f64s = Tensor::from_vec_f64(vec![0.0; 12], &[3, 4]).unwrap();
    assert!(dst.copy_from(&f64s).unwrap_err().to_string().contains("F64"));
}

/// `copy_from` between the device and the host and on the device: the same values, the
/// destination's device buffer kept (its address is what a captured graph reads).
#[test]
fn copy_from_moves_values_between_host_and_device_in_place() {
    on_cuda("copy_from_moves_values_between_host_and_device_in_place", |dev| {
        let mut rng = common::rng("copy_from_moves_values_between_host_and_device_in_place");
        for n in [1usize, 1000, 300_001] {
            let values = randn_vec(&mut rng, n);
            let host = tensor(values.clone(), &[n]);
            let mut on_dev = Tensor::zeros(&[n], dev).unwrap();
            let before = on_dev.storage() as *const _;
            on_dev.copy_from(&host).unwrap();
            assert_identical(&format!("host to device, n = {n}"), &data(&on_dev), &values);
            let mut other = Tensor::zeros(&[n], dev).unwrap();
            other.copy_from(&on_dev).unwrap();
            assert_identical(&format!("device to device, n = {n}"), &data(&other), &values);
            let mut back = tensor(vec![0.0; n], &[n]);
            back.copy_from(&other).unwrap();
            assert_identical(&format!("device to host, n = {n}"), &data(&back), &values);
            assert!(std::ptr::eq(on_dev.storage(), before), "the copy keeps the device buffer");
        }
        let mut small = Tensor::zeros(&[2], dev).unwrap();
        assert!(small.copy_from(&tensor(vec![1.0; 3], &[3])).is_err());
    });
}
