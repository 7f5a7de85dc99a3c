mod common;

// Elementwise maps: the CPU backend against the formulas written out in f64, and the CUDA kernels
// against the CPU backend on the same fresh random inputs.
use common::{assert_close_sums, on_cuda, rng, tol, Sums};
use dpgan::backend::ops::{binary, unary};
use dpgan::backend::{BinaryOp, UnaryOp};
use dpgan::tensor::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const UNARY_OPS: [UnaryOp; 14] = [
    UnaryOp::Affine { scale: 1.7, shift: -0.3 },
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Square,
    UnaryOp::Relu,
    UnaryOp::LeakyRelu(0.2),
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::ReluMask,
    UnaryOp::LeakyReluMask(0.2),
    UnaryOp::ClipFactor(1.1),
];

const BINARY_OPS: [BinaryOp; 9] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::BceWithLogits,
    BinaryOp::LeakyReluGrad(0.0),
    BinaryOp::LeakyReluGrad(0.2),
    BinaryOp::TanhGrad,
    BinaryOp::SigmoidGrad,
];

/// The formula of each unary op, plainly, in f64.
fn unary_formula(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Affine { scale, shift } => scale as f64 * x + shift as f64,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Square => x * x,
        UnaryOp::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::LeakyRelu(slope) => {
            if x > 0.0 {
                x
            } else {
                slope as f64 * x
            }
        }
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::ReluMask => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        UnaryOp::LeakyReluMask(slope) => {
            if x > 0.0 {
                1.0
            } else {
                slope as f64
            }
        }
        // min(1, C/‖g‖) from ‖g‖² = x.
        UnaryOp::ClipFactor(clip) => (clip as f64 / x.sqrt()).min(1.0),
    }
}

/// `log σ(z)`, split by sign so that f64 does not lose it for large |z|.
fn log_sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        -(-z).exp().ln_1p()
    } else {
        z - z.exp().ln_1p()
    }
}

/// The formula of each binary op in f64; BCE as the textbook `−(b·log σ(a) + (1 − b)·log(1 − σ(a)))`.
fn binary_formula(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::BceWithLogits => -(b * log_sigmoid(a) + (1.0 - b) * log_sigmoid(-a)),
        BinaryOp::LeakyReluGrad(slope) => {
            if b > 0.0 {
                a
            } else {
                slope as f64 * a
            }
        }
        BinaryOp::TanhGrad => a * (1.0 - b * b),
        BinaryOp::SigmoidGrad => a * b * (1.0 - b),
    }
}

/// The size of the terms an f32 evaluation of the op adds up, which is what bounds its rounding:
/// `|scale·x| + |shift|` for the affine map, `max(a, 0) + |a·b| + log(1 + e^−|a|)` for BCE, the
/// value itself for single operations and library functions. Measured against the value alone,
/// `1.7·x − 0.3` near its root or BCE at a target near 1 (`a − a·b`) fail on rounding alone.
fn unary_magnitude(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Affine { scale, shift } => (scale as f64 * x).abs() + (shift as f64).abs(),
        _ => unary_formula(op, x).abs(),
    }
}

fn binary_magnitude(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::BceWithLogits => a.max(0.0) + (a * b).abs() + (-a.abs()).exp().ln_1p(),
        // The rounding of 1 − b² (or 1 − b) is relative to 1, not to the difference.
        BinaryOp::TanhGrad => (a * (1.0 + b * b)).abs(),
        BinaryOp::SigmoidGrad => (a * b).abs() * (1.0 + b.abs()),
        _ => binary_formula(op, a, b).abs(),
    }
}

/// Inputs inside the op's domain: positive for the logs and roots, away from 0 for the reciprocal,
/// else normal with exact zeros sprinkled in (the masks' `x > 0` boundary) and a few large values.
fn unary_input(op: UnaryOp, rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => rng.random_range(1e-3f32..50.0),
            UnaryOp::Recip => rng.random_range(0.05f32..4.0) * if rng.random::<bool>() { 1.0 } else { -1.0 },
            UnaryOp::Exp => rng.random_range(-20.0f32..20.0),
            // Squared norms: zeros, ones within the bound C² = 1.21, and far past it.
            UnaryOp::ClipFactor(_) => match rng.random_range(0..6) {
                0 => 0.0,
                1 => rng.random_range(0.0f32..1e6),
                _ => rng.random_range(0.0f32..5.0),
            },
            _ => match rng.random_range(0..10) {
                0 => 0.0,
                1 => rng.random_range(-60.0f32..60.0),
                _ => rng.random_range(-4.0f32..4.0),
            },
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Operands for a binary op: divisors away from 0; for BCE, logits up to ±1e4 (far past where
/// `exp` overflows f32) and targets in [0, 1]; for a leaky ReLU's gradient, inputs with exact
/// zeros sprinkled in (the `b > 0` boundary).
fn binary_inputs(op: BinaryOp, rng: &mut ChaCha8Rng, a_shape: &[usize], b_shape: &[usize]) -> (Tensor, Tensor) {
    let draw = |rng: &mut ChaCha8Rng, shape: &[usize], second: bool| -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| match (op, second) {
                (BinaryOp::Div, true) => rng.random_range(0.25f32..4.0) * if rng.random::<bool>() { 1.0 } else { -1.0 },
                (BinaryOp::BceWithLogits, false) => match rng.random_range(0..4) {
                    0 => rng.random_range(-1e4f32..1e4),
                    1 => rng.random_range(-120.0f32..120.0),
                    _ => rng.random_range(-6.0f32..6.0),
                },
                (BinaryOp::BceWithLogits, true) => rng.random_range(0.0f32..=1.0),
                (BinaryOp::LeakyReluGrad(_), true) if rng.random_range(0..8) == 0 => 0.0,
                // tanh and sigmoid outputs: in (−1, 1) and (0, 1), their ends included.
                (BinaryOp::TanhGrad, true) => rng.random_range(-1.0f32..=1.0),
                (BinaryOp::SigmoidGrad, true) => rng.random_range(0.0f32..=1.0),
                _ => rng.random_range(-3.0f32..3.0),
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    };
    (draw(rng, a_shape, false), draw(rng, b_shape, true))
}

/// A random activation-like shape `[G, B, ...]`: G > 1, batch 1 now and then, odd sizes.
fn random_shape(rng: &mut ChaCha8Rng) -> Vec<usize> {
    let g = rng.random_range(2..=4);
    let b = if rng.random_range(0..3) == 0 { 1 } else { rng.random_range(2..=9) };
    let mut shape = vec![g, b];
    for _ in 0..rng.random_range(1..=3) {
        shape.push(*[1, 3, 5, 7, 13, 33].get(rng.random_range(0..6)).unwrap());
    }
    shape
}

/// Pairs of operand shapes: equal, broadcast either way, across ranks, to and from scalars, empty.
fn broadcast_pairs(rng: &mut ChaCha8Rng) -> Vec<(Vec<usize>, Vec<usize>)> {
    let (g, b, f) = (rng.random_range(2..=4), rng.random_range(2..=7), [5, 17, 33, 257][rng.random_range(0..4)]);
    vec![
        (vec![g, b, f], vec![g, b, f]),
        (vec![g, b, f], vec![f]),       // bias add, lower rank on the right
        (vec![f], vec![g, b, f]),       // ... and on the left
        (vec![g, 1, f], vec![g, b, 1]), // both operands broadcast
        (vec![g, b, 1], vec![1, 1, f]),
        (vec![1, b, 1, 3], vec![g, 1, f, 1]),
        (vec![], vec![g, b, f]), // scalar
        (vec![g, b, f], vec![1]),
        (vec![1, 1, 1], vec![1]), // batch 1, one element
        (vec![g, 0, f], vec![f]), // empty
        (vec![g, 0, f], vec![g, 0, f]),
        (random_shape(rng), vec![1]),
    ]
}

fn broadcast_index(out_shape: &[usize], flat: usize, shape: &[usize]) -> usize {
    // Decompose the output index, then read the operand at the same index, 0 on its size-1 dims.
    let lead = out_shape.len() - shape.len();
    let mut rest = flat;
    let mut index = vec![0; out_shape.len()];
    for d in (0..out_shape.len()).rev() {
        index[d] = rest % out_shape[d];
        rest /= out_shape[d];
    }
    let mut offset = 0;
    for (d, &size) in shape.iter().enumerate() {
        let i = if size == 1 { 0 } else { index[lead + d] };
        offset = offset * size + i;
    }
    offset
}

fn broadcast_out_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank).map(|i| if dim(a, i) == 1 { dim(b, i) } else { dim(a, i) }).collect()
}

/// Each output element's value by the formula, and the magnitude of its terms.
fn binary_oracle(op: BinaryOp, a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Sums {
    let (ad, bd) = (a.to_vec().unwrap(), b.to_vec().unwrap());
    let n: usize = out_shape.iter().product();
    let operands: Vec<(f64, f64)> = (0..n)
        .map(|i| (ad[broadcast_index(out_shape, i, a.shape())] as f64, bd[broadcast_index(out_shape, i, b.shape())] as f64))
        .collect();
    Sums {
        value: operands.iter().map(|&(x, y)| binary_formula(op, x, y)).collect(),
        magnitude: operands.iter().map(|&(x, y)| binary_magnitude(op, x, y)).collect(),
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|&v| v as f64).collect()
}

#[test]
fn unary_cpu_matches_formula() {
    let mut rng = rng("unary_cpu_matches_formula");
    for op in UNARY_OPS {
        for shape in [random_shape(&mut rng), vec![1, 1, 1], vec![3, 0, 5], vec![], vec![2, 1, 1001]] {
            let x = unary_input(op, &mut rng, &shape);
            let y = unary(op, &x).unwrap();
            assert_eq!(y.shape(), x.shape(), "{op:?}");
            let xs = x.cpu_data().unwrap();
            let expected = Sums {
                value: xs.iter().map(|&v| unary_formula(op, v as f64)).collect(),
                magnitude: xs.iter().map(|&v| unary_magnitude(op, v as f64)).collect(),
            };
            let got: Vec<f64> = y.cpu_data().unwrap().iter().map(|&v| v as f64).collect();
            assert_close_sums(&format!("{op:?} on {shape:?}"), &got, &expected, tol::F32_ELEMENTWISE);
        }
    }
}

#[test]
fn binary_cpu_matches_formula() {
    let mut rng = rng("binary_cpu_matches_formula");
    for op in BINARY_OPS {
        for (a_shape, b_shape) in broadcast_pairs(&mut rng) {
            let (a, b) = binary_inputs(op, &mut rng, &a_shape, &b_shape);
            let out = binary(op, &a, &b).unwrap();
            let out_shape = broadcast_out_shape(&a_shape, &b_shape);
            assert_eq!(out.shape(), &out_shape[..], "{op:?} {a_shape:?} {b_shape:?}");
            let expected = binary_oracle(op, &a, &b, &out_shape);
            let got: Vec<f64> = out.cpu_data().unwrap().iter().map(|&v| v as f64).collect();
            assert_close_sums(&format!("{op:?} {a_shape:?} with {b_shape:?}"), &got, &expected, tol::F32_ELEMENTWISE);
        }
    }
}

/// BCE with logits stays finite and exact at |logit| far beyond where `exp` overflows, where the
/// loss tends to `max(a, 0) − a·b`.
#[test]
fn bce_with_logits_is_stable_for_large_logits() {
    let logits = [1e4f32, -1e4, 100.0, -100.0, 89.0, -89.0, 1e30, -1e30];
    for target in [0.0f32, 0.25, 1.0] {
        let a = Tensor::from_vec(logits.to_vec(), &[logits.len()], &Device::Cpu).unwrap();
        let b = Tensor::full(&[1], target, &Device::Cpu).unwrap();
        let loss = binary(BinaryOp::BceWithLogits, &a, &b).unwrap().to_vec().unwrap();
        for (&x, &l) in logits.iter().zip(&loss) {
            assert!(l.is_finite(), "BCE({x}, {target}) = {l}");
            let limit = x.max(0.0) as f64 - x as f64 * target as f64;
            assert!((l as f64 - limit).abs() <= 1e-6 * limit.abs().max(1.0) + 1e-30, "BCE({x}, {target}) = {l}, expected ≈ {limit}");
        }
    }
}

#[test]
fn binary_rejects_incompatible_shapes() {
    let a = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4], &Device::Cpu).unwrap();
    assert!(binary(BinaryOp::Add, &a, &b).is_err());
}

#[test]
fn unary_cuda_matches_cpu() {
    on_cuda("unary_cuda_matches_cpu", |dev| {
        let mut rng = rng("unary_cuda_matches_cpu");
        for op in UNARY_OPS {
            for shape in [random_shape(&mut rng), vec![1, 1, 1], vec![3, 0, 5], vec![], vec![2, 3, 100_003]] {
                let x = unary_input(op, &mut rng, &shape);
                let expected = unary(op, &x).unwrap();
                let got = unary(op, &x.to_device(dev).unwrap()).unwrap();
                assert_eq!(got.shape(), x.shape());
                // Against the CPU backend's values; the device may fuse `scale·x + shift`.
                let magnitude = x.cpu_data().unwrap().iter().map(|&v| unary_magnitude(op, v as f64)).collect();
                let expected = Sums { value: f64s(&expected), magnitude };
                assert_close_sums(&format!("{op:?} on {shape:?}"), &f64s(&got), &expected, tol::F32_ELEMENTWISE);
            }
        }
    });
}

#[test]
fn binary_cuda_matches_cpu() {
    on_cuda("binary_cuda_matches_cpu", |dev| {
        let mut rng = rng("binary_cuda_matches_cpu");
        for op in BINARY_OPS {
            let mut pairs = broadcast_pairs(&mut rng);
            pairs.push((vec![3, 600, 1025], vec![3, 1, 1025]));
            for (a_shape, b_shape) in pairs {
                let (a, b) = binary_inputs(op, &mut rng, &a_shape, &b_shape);
                let expected = binary(op, &a, &b).unwrap();
                let got = binary(op, &a.to_device(dev).unwrap(), &b.to_device(dev).unwrap()).unwrap();
                assert_eq!(got.shape(), expected.shape());
                // Against the CPU backend's values; the device may fuse `max(a, 0) − a·b`.
                let expected = Sums { value: f64s(&expected), magnitude: binary_oracle(op, &a, &b, got.shape()).magnitude };
                let what = format!("{op:?} {a_shape:?} with {b_shape:?}");
                assert_close_sums(&what, &f64s(&got), &expected, tol::F32_ELEMENTWISE);
            }
        }
    });
}

#[test]
fn binary_refuses_mixed_devices() {
    on_cuda("binary_refuses_mixed_devices", |dev| {
        let a = Tensor::zeros(&[3], &Device::Cpu).unwrap();
        let b = Tensor::zeros(&[3], dev).unwrap();
        assert!(binary(BinaryOp::Add, &a, &b).is_err());
    });
}

/// `broadcast_to` copies each value unchanged, bit for bit (−0.0, NaN and infinities included), to
/// every output index that reads it, on the CPU against the index formula and on the GPU against
/// the CPU, over the broadcast pairs above (each operand to the pair's output shape).
#[test]
fn broadcast_to_copies_every_value_bit_for_bit() {
    use dpgan::backend::ops::broadcast_to;
    let mut rng = rng("broadcast_to_copies_every_value_bit_for_bit");
    let specials = [-0.0f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE / 4.0];
    let mut cases = Vec::new();
    for (a, b) in broadcast_pairs(&mut rng) {
        let out_shape = broadcast_out_shape(&a, &b);
        for shape in [a, b] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> =
                (0..n).map(|i| if i % 3 == 0 { specials[i / 3 % specials.len()] } else { rng.random_range(-3.0f32..3.0) }).collect();
            cases.push((Tensor::from_vec(data, &shape, &Device::Cpu).unwrap(), out_shape.clone()));
        }
    }
    let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    for (x, out_shape) in &cases {
        let got = broadcast_to(x, out_shape).unwrap();
        assert_eq!(got.shape(), &out_shape[..]);
        let source = x.to_vec().unwrap();
        let n: usize = out_shape.iter().product();
        let expected: Vec<u32> = (0..n).map(|i| source[broadcast_index(out_shape, i, x.shape())].to_bits()).collect();
        assert_eq!(bits(&got), expected, "{:?} -> {out_shape:?}", x.shape());
    }
    on_cuda("broadcast_to_copies_every_value_bit_for_bit", |dev| {
        for (x, out_shape) in &cases {
            let expected = broadcast_to(x, out_shape).unwrap();
            let got = broadcast_to(&x.to_device(dev).unwrap(), out_shape).unwrap();
            assert_eq!(bits(&got), bits(&expected), "cuda {:?} -> {out_shape:?}", x.shape());
        }
    });
}

/// The activation-gradient ops give the values of the ops they replaced, bit for bit: a mask and a
/// product for (leaky) ReLU, a square, an affine map and a product for tanh, an affine map and two
/// products for the sigmoid. On the CPU, and on the GPU against the GPU's own separate kernels.
#[test]
fn activation_gradients_equal_the_ops_they_replace() {
    let mut rng = rng("activation_gradients_equal_the_ops_they_replace");
    let n = 4099;
    let dy = Tensor::from_vec((0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect(), &[n], &Device::Cpu).unwrap();
    let x = Tensor::from_vec((0..n).map(|i| if i % 7 == 0 { 0.0 } else { rng.random_range(-3.0f32..3.0) }).collect(), &[n], &Device::Cpu)
        .unwrap();
    let composed = |op: BinaryOp, dy: &Tensor, x: &Tensor| -> Tensor {
        let mul = |a: &Tensor, b: &Tensor| binary(BinaryOp::Mul, a, b).unwrap();
        let affine = |t: &Tensor| unary(UnaryOp::Affine { scale: -1.0, shift: 1.0 }, t).unwrap();
        match op {
            BinaryOp::LeakyReluGrad(0.0) => mul(dy, &unary(UnaryOp::ReluMask, x).unwrap()),
            BinaryOp::LeakyReluGrad(slope) => mul(dy, &unary(UnaryOp::LeakyReluMask(slope), x).unwrap()),
            BinaryOp::TanhGrad => {
                let y = unary(UnaryOp::Tanh, x).unwrap();
                mul(dy, &affine(&unary(UnaryOp::Square, &y).unwrap()))
            }
            BinaryOp::SigmoidGrad => {
                let y = unary(UnaryOp::Sigmoid, x).unwrap();
                mul(dy, &mul(&y, &affine(&y)))
            }
            _ => unreachable!("only activation gradients here"),
        }
    };
    let fused = |op: BinaryOp, dy: &Tensor, x: &Tensor| -> Tensor {
        let operand = match op {
            BinaryOp::TanhGrad => unary(UnaryOp::Tanh, x).unwrap(),
            BinaryOp::SigmoidGrad => unary(UnaryOp::Sigmoid, x).unwrap(),
            _ => x.clone(),
        };
        binary(op, dy, &operand).unwrap()
    };
    let ops = [BinaryOp::LeakyReluGrad(0.0), BinaryOp::LeakyReluGrad(0.2), BinaryOp::TanhGrad, BinaryOp::SigmoidGrad];
    let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    for op in ops {
        assert_eq!(bits(&fused(op, &dy, &x)), bits(&composed(op, &dy, &x)), "{op:?} on the CPU");
    }
    on_cuda("activation_gradients_equal_the_ops_they_replace", |dev| {
        let (dy, x) = (dy.to_device(dev).unwrap(), x.to_device(dev).unwrap());
        for op in ops {
            assert_eq!(bits(&fused(op, &dy, &x)), bits(&composed(op, &dy, &x)), "{op:?} on the GPU");
        }
    });
}
