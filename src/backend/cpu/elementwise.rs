//! Elementwise maps: unary, and binary with numpy broadcasting.
use super::Real;
use crate::backend::{BinaryOp, UnaryOp};

/// `y[i] = f(x[i])`.
pub fn unary_map<T: Real>(op: UnaryOp, x: &[T]) -> Vec<T> {
    x.iter().map(|&v| unary_scalar(op, v)).collect()
}

pub fn unary_scalar<T: Real>(op: UnaryOp, x: T) -> T {
    let (zero, one) = (T::zero(), T::one());
    match op {
        UnaryOp::Affine { scale, shift } => T::of(scale) * x + T::of(shift),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => one / x.sqrt(),
        UnaryOp::Recip => one / x,
        UnaryOp::Square => x * x,
        UnaryOp::Relu => x.max(zero),
        UnaryOp::LeakyRelu(slope) => {
            if x > zero {
                x
            } else {
                T::of(slope) * x
            }
        }
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::ReluMask => {
            if x > zero {
                one
            } else {
                zero
            }
        }
        UnaryOp::LeakyReluMask(slope) => {
            if x > zero {
                one
            } else {
                T::of(slope)
            }
        }
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

/// `out[i] = f(a[i'], b[i''])` over the broadcast shape.
pub fn binary_broadcast<T: Real>(op: BinaryOp, a: &[T], a_shape: &[usize], b: &[T], b_shape: &[usize], out_shape: &[usize]) -> Vec<T> {
    let n: usize = out_shape.iter().product();
    if a_shape == out_shape && b_shape == out_shape {
        return a.iter().zip(b).map(|(&x, &y)| binary_scalar(op, x, y)).collect();
    }
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    let rank = out_shape.len();
    let mut index = vec![0usize; rank];
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(binary_scalar(op, a[ia], b[ib]));
        // Odometer increment over the output index, keeping both input offsets in step.
        for d in (0..rank).rev() {
            index[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if index[d] < out_shape[d] {
                break;
            }
            ia -= sa[d] * out_shape[d];
            ib -= sb[d] * out_shape[d];
            index[d] = 0;
        }
    }
    out
}
