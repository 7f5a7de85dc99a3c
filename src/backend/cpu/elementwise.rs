//! Elementwise maps: unary, and binary with numpy broadcasting.
use super::Real;
use crate::backend::{BinaryOp, UnaryOp};
use crate::dp::rounding::f32_toward_zero;

/// `y[i] = f(x[i])`. The op is matched once, outside the loop, so that each loop body is one
/// inlined expression (vectorised where the op is arithmetic) instead of a dispatch per element.
pub fn unary_map<T: Real>(op: UnaryOp, x: &[T]) -> Vec<T> {
    fn map<T: Real>(x: &[T], f: impl Fn(T) -> T) -> Vec<T> {
        x.iter().map(|&v| f(v)).collect()
    }
    let (zero, one) = (T::zero(), T::one());
    match op {
        UnaryOp::Affine { scale, shift } => {
            let (scale, shift) = (T::of(scale), T::of(shift));
            map(x, |v| scale * v + shift)
        }
        UnaryOp::Exp => map(x, T::exp),
        UnaryOp::Log => map(x, T::ln),
        UnaryOp::Sqrt => map(x, T::sqrt),
        UnaryOp::Rsqrt => map(x, |v| one / v.sqrt()),
        UnaryOp::Recip => map(x, |v| one / v),
        UnaryOp::Square => map(x, |v| v * v),
        UnaryOp::Relu => map(x, |v| v.max(zero)),
        UnaryOp::LeakyRelu(slope) => {
            let slope = T::of(slope);
            map(x, |v| if v > zero { v } else { slope * v })
        }
        UnaryOp::Sigmoid => map(x, sigmoid),
        UnaryOp::Tanh => map(x, T::tanh),
        UnaryOp::ReluMask => map(x, |v| if v > zero { one } else { zero }),
        UnaryOp::LeakyReluMask(slope) => {
            let slope = T::of(slope);
            map(x, |v| if v > zero { one } else { slope })
        }
        UnaryOp::ClipFactor(clip) => map(x, |v| clip_factor(v, clip)),
    }
}

/// DP-SGD's clip factor `C / max(sqrt(max(x, 0)), C)` from a squared norm: 1 within the bound,
/// else the f64 quotient, rounded toward zero for f32 (as `kernels/elementwise.cu` does), so that
/// the factor times the norm never exceeds C through rounding. NaN for a NaN or infinite x.
fn clip_factor<T: Real>(x: T, clip: f32) -> T {
    if !x.is_finite() {
        return T::nan();
    }
    let norm = x.max(T::zero()).f64().sqrt();
    if norm <= clip as f64 {
        return T::one();
    }
    let ratio = clip as f64 / norm;
    // f64 tensors (finite-difference checks only) have no kernel to match: the plain quotient.
    if T::DTYPE == crate::tensor::DType::F32 {
        T::of(f32_toward_zero(ratio))
    } else {
        T::of_f64(ratio)
    }
}

/// Logistic function, written so that neither branch overflows.
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

pub fn binary_scalar<T: Real>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::BceWithLogits => a.max(T::zero()) - a * b + (-a.abs()).exp().ln_1p(),
        BinaryOp::TanhGrad => a * (T::of(1.0) - b * b),
        BinaryOp::SigmoidGrad => a * (b * (T::of(1.0) - b)),
        BinaryOp::LeakyReluGrad(slope) => {
            if b > T::zero() {
                a
            } else {
                a * T::of(slope)
            }
        }
    }
}

/// Row-major strides of `shape` seen from `out_shape` (right-aligned), 0 on broadcast dims.
pub fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let lead = out_shape.len() - shape.len();
    let mut strides = vec![0; out_shape.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        strides[lead + i] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

/// Row-major strides of a dense tensor of `shape`.
pub fn dense_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        strides[i] = stride;
        stride *= shape[i];
    }
    strides
}

/// The iteration space of a strided loop with size-1 dims dropped and adjacent dims merged where
/// every operand's strides allow it (outer stride = inner stride × inner size): `(sizes, strides
/// per operand)`, outermost first, at least one dim. Visiting the merged space in row-major order
/// visits the elements in the original order, so results do not change; only the per-element
/// index bookkeeping goes, leaving long inner loops.
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut sizes: Vec<usize> = Vec::new();
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = !sizes.is_empty() && strides.iter().zip(&merged).all(|(s, m)| s[d] == m[m.len() - 1] * sizes[sizes.len() - 1]);
        if mergeable {
            *sizes.last_mut().expect("checked non-empty") *= shape[d];
        } else {
            sizes.push(shape[d]);
            for (m, s) in merged.iter_mut().zip(strides) {
                m.push(s[d]);
            }
        }
    }
    if sizes.is_empty() {
        sizes.push(1);
        merged.iter_mut().for_each(|m| m.push(0));
    }
    sizes.reverse();
    merged.iter_mut().for_each(|m| m.reverse());
    (sizes, merged)
}

/// Calls `row(offsets, len, inner strides)` for every innermost row of a coalesced loop, in
/// row-major order, with each operand's offset at the row's start.
pub fn for_each_row<const K: usize>(sizes: &[usize], strides: &[Vec<usize>], mut row: impl FnMut([usize; K], usize, [usize; K])) {
    let rank = sizes.len();
    let inner = sizes[rank - 1];
    let inner_strides: [usize; K] = std::array::from_fn(|k| strides[k][rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let mut offsets = [0usize; K];
    let rows: usize = sizes[..rank - 1].iter().product();
    for _ in 0..rows {
        row(offsets, inner, inner_strides);
        for d in (0..rank - 1).rev() {
            index[d] += 1;
            for k in 0..K {
                offsets[k] += strides[k][d];
            }
            if index[d] < sizes[d] {
                break;
            }
            for k in 0..K {
                offsets[k] -= strides[k][d] * sizes[d];
            }
            index[d] = 0;
        }
    }
}

/// `out[i] = f(a[i'], b[i''])` over the broadcast shape.
pub fn binary_broadcast<T: Real>(op: BinaryOp, a: &[T], a_shape: &[usize], b: &[T], b_shape: &[usize], out_shape: &[usize]) -> Vec<T> {
    let n: usize = out_shape.iter().product();
    if a_shape == out_shape && b_shape == out_shape {
        return a.iter().zip(b).map(|(&x, &y)| binary_scalar(op, x, y)).collect();
    }
    let (sa, sb) = (broadcast_strides(a_shape, out_shape), broadcast_strides(b_shape, out_shape));
    let (sizes, strides) = coalesce(out_shape, &[&sa, &sb, &dense_strides(out_shape)]);
    let mut out = Vec::with_capacity(n);
    for_each_row::<3>(&sizes, &strides, |[ia, ib, _], len, [da, db, _]| match (da, db) {
        (1, 1) => out.extend(a[ia..ia + len].iter().zip(&b[ib..ib + len]).map(|(&x, &y)| binary_scalar(op, x, y))),
        (1, 0) => out.extend(a[ia..ia + len].iter().map(|&x| binary_scalar(op, x, b[ib]))),
        (0, 1) => out.extend(b[ib..ib + len].iter().map(|&y| binary_scalar(op, a[ia], y))),
        _ => out.extend((0..len).map(|j| binary_scalar(op, a[ia + j * da], b[ib + j * db]))),
    });
    out
}

/// `x` (of `x_shape`) repeated along the broadcast dims of `out_shape`: each value copied as is.
pub fn broadcast_copy<T: Real>(x: &[T], x_shape: &[usize], out_shape: &[usize]) -> Vec<T> {
    let (sizes, strides) = coalesce(out_shape, &[&broadcast_strides(x_shape, out_shape), &dense_strides(out_shape)]);
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for_each_row::<2>(&sizes, &strides, |[ix, _], len, [dx, _]| out.extend((0..len).map(|j| x[ix + j * dx])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_merges_what_is_contiguous_for_every_operand() {
        // [2, 3, 4] against a [1, 3, 4] operand: the last two dims merge, the first stays.
        let out = [2, 3, 4];
        let (sizes, strides) = coalesce(&out, &[&broadcast_strides(&[1, 3, 4], &out), &dense_strides(&out)]);
        assert_eq!(sizes, [2, 12]);
        assert_eq!(strides, [vec![0, 1], vec![12, 1]]);
        // A column broadcast [2, 3, 1] keeps three rows of one stride-0 element per (i, j)...
        let (sizes, _) = coalesce(&out, &[&broadcast_strides(&[2, 3, 1], &out), &dense_strides(&out)]);
        assert_eq!(sizes, [6, 4]);
        // ...and size-1 dims vanish; a scalar is one element.
        assert_eq!(coalesce(&[1, 5, 1], &[&[0, 1, 0]]).0, [5]);
        assert_eq!(coalesce(&[1, 1], &[&[0, 0]]), (vec![1], vec![vec![0]]));
    }

    #[test]
    fn broadcasting_matches_the_index_formula() {
        let (a_shape, b_shape, out) = ([2, 1, 4], [3, 1], [2, 3, 4]);
        let a: Vec<f64> = (0..8).map(|i| i as f64).collect();
        let b: Vec<f64> = (0..3).map(|i| 10.0 * i as f64).collect();
        let got = binary_broadcast(BinaryOp::Add, &a, &a_shape, &b, &b_shape, &out);
        let mut want = Vec::new();
        for i in 0..2 {
            for bj in &b {
                for k in 0..4 {
                    want.push(a[i * 4 + k] + bj);
                }
            }
        }
        assert_eq!(got, want);
    }
}
