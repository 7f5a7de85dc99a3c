//! Kernel parameter structs, `#[repr(C)]` mirrors of `kernels/common.cuh`.
use cudarc::driver::DeviceRepr;

use crate::backend::{BinaryOp, UnaryOp};

pub const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnaryParams {
    pub n: i64,
    pub op: i32,
    pub a: f32,
    pub b: f32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BinaryParams {
    pub n: i64,
    pub op: i32,
    pub rank: i32,
    pub shape: [i64; MAX_RANK],
    pub a_strides: [i64; MAX_RANK],
    pub b_strides: [i64; MAX_RANK],
}

// The C structs have the same sizes (checked by `kernels/common.cuh`'s layout and the tests below).
const _: () = assert!(std::mem::size_of::<UnaryParams>() == 24);
const _: () = assert!(std::mem::size_of::<BinaryParams>() == 16 + 3 * 8 * MAX_RANK);

// SAFETY: plain-old-data structs whose layout matches the C side; passed by value as kernel params.
unsafe impl DeviceRepr for UnaryParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for BinaryParams {}

impl UnaryParams {
    pub fn new(op: UnaryOp, n: usize) -> Self {
        let (code, a, b) = match op {
            UnaryOp::Affine { scale, shift } => (0, scale, shift),
            UnaryOp::Exp => (1, 0.0, 0.0),
            UnaryOp::Log => (2, 0.0, 0.0),
            UnaryOp::Sqrt => (3, 0.0, 0.0),
            UnaryOp::Rsqrt => (4, 0.0, 0.0),
            UnaryOp::Recip => (5, 0.0, 0.0),
            UnaryOp::Square => (6, 0.0, 0.0),
            UnaryOp::Relu => (7, 0.0, 0.0),
            UnaryOp::LeakyRelu(s) => (8, s, 0.0),
            UnaryOp::Sigmoid => (9, 0.0, 0.0),
            UnaryOp::Tanh => (10, 0.0, 0.0),
            UnaryOp::ReluMask => (11, 0.0, 0.0),
            UnaryOp::LeakyReluMask(s) => (12, s, 0.0),
        };
        UnaryParams { n: n as i64, op: code, a, b, pad_: 0 }
    }
}

pub fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::BceWithLogits => 4,
    }
}
