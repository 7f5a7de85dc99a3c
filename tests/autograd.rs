//! Finite-difference checks (f64, CPU) of every backward rule, first and second order, and the
//! WGAN-GP penalty of a small conv critic differentiated w.r.t. its weights.
mod common;

use common::{assert_close_f64, randn_vec, tol};
use dpgan::autograd::Tape;
use dpgan::tensor::Tensor;
use dpgan::Result;
use rand::Rng;

/// A function of some f64 inputs, evaluated on a tape.
type Func = dyn Fn(&Tape, &[Tensor]) -> Result<Tensor>;

fn f64_tensor(rng: &mut impl Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec_f64(randn_vec(rng, n).into_iter().map(f64::from).collect(), shape).unwrap()
}

/// Replaces input `i`'s element `j` by `value`.
fn with_element(inputs: &[Tensor], i: usize, j: usize, delta: f64) -> Vec<Tensor> {
    let mut out = inputs.to_vec();
    let mut data = inputs[i].to_vec_f64().unwrap();
    data[j] += delta;
    out[i] = Tensor::from_vec_f64(data, inputs[i].shape()).unwrap();
    out
}

/// `L = Σ r ⊙ f(inputs)` with fixed random weights `r`, so that every output element matters.
fn weighted_loss(tape: &Tape, f: &Func, inputs: &[Tensor], weights: &Tensor) -> Tensor {
    let out = f(tape, inputs).unwrap();
    assert_eq!(out.shape(), weights.shape(), "weights must match the output shape");
    tape.sum_all(&tape.mul(&out, weights).unwrap()).unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.to_vec_f64().unwrap()[0]
}

/// Central differences of `scalar` w.r.t. every element of every input in `wrt`.
fn numeric_grads(inputs: &[Tensor], wrt: &[usize], scalar: &dyn Fn(&[Tensor]) -> f64) -> Vec<Vec<f64>> {
    const H: f64 = 1e-6;
    wrt.iter()
        .map(|&i| {
            (0..inputs[i].numel())
                .map(|j| (scalar(&with_element(inputs, i, j, H)) - scalar(&with_element(inputs, i, j, -H))) / (2.0 * H))
                .collect()
        })
        .collect()
}

/// Checks the tape's gradient of `Σ r ⊙ f` w.r.t. the inputs `wrt` against finite differences.
fn check_first_order(name: &str, inputs: Vec<Tensor>, wrt: &[usize], f: &Func) {
    let mut rng = common::rng(name);
    let out_shape = f(&Tape::new(), &inputs).unwrap().shape().to_vec();
    let weights = f64_tensor(&mut rng, &out_shape);
    let loss = |xs: &[Tensor]| value(&weighted_loss(&Tape::new(), f, xs, &weights));

    let tape = Tape::new();
    wrt.iter().for_each(|&i| tape.watch(&inputs[i]));
    let grads = tape.backward(&weighted_loss(&tape, f, &inputs, &weights)).unwrap();
    for (k, numeric) in numeric_grads(&inputs, wrt, &loss).into_iter().enumerate() {
        let i = wrt[k];
        let analytic = grads.of(&inputs[i]).unwrap();
        assert_eq!(analytic.shape(), inputs[i].shape(), "{name}: gradient shape of input {i}");
        assert_close_f64(&format!("{name}: d/d input {i}"), &analytic.to_vec_f64().unwrap(), &numeric, 1e-6);
    }
}

/// Second order: `S = ⟨∇ₓ₀ L, v⟩` built with `create_graph`, differentiated again w.r.t. every
/// input in `wrt`, against finite differences of `S`.
fn check_second_order(name: &str, inputs: Vec<Tensor>, wrt: &[usize], f: &Func) {
    let mut rng = common::rng(name);
    let out_shape = f(&Tape::new(), &inputs).unwrap().shape().to_vec();
    let weights = f64_tensor(&mut rng, &out_shape);
    let direction = f64_tensor(&mut rng, inputs[0].shape());
    let directional = |tape: &Tape, xs: &[Tensor], create_graph: bool| -> Tensor {
        let loss = weighted_loss(tape, f, xs, &weights);
        let seed = loss.full_like(&[], 1.0).unwrap();
        let g = tape.backward_with(&loss, seed, create_graph).unwrap();
        let g0 = g.of(&xs[0]).unwrap().clone();
        tape.sum_all(&tape.mul(&g0, &direction).unwrap()).unwrap()
    };
    let s_value = |xs: &[Tensor]| {
        let tape = Tape::new();
        xs.iter().for_each(|x| tape.watch(x));
        value(&directional(&tape, xs, false))
    };

    let tape = Tape::new();
    inputs.iter().for_each(|x| tape.watch(x));
    let s = directional(&tape, &inputs, true);
    // A linear op has a constant gradient: then S depends on no input and its gradient is zero.
    let grads = if tape.is_tracked(&s) { Some(tape.backward(&s).unwrap()) } else { None };
    for (k, numeric) in numeric_grads(&inputs, wrt, &s_value).into_iter().enumerate() {
        let i = wrt[k];
        let analytic = match grads.as_ref().and_then(|g| g.get(&inputs[i])) {
            Some(g) => g.to_vec_f64().unwrap(),
            None => vec![0.0; inputs[i].numel()],
        };
        if analytic.iter().all(|&v| v == 0.0) {
            assert!(num_norm(&numeric) < 1e-6, "{name}: second order of input {i} is zero on the tape but not numerically");
        } else {
            assert_close_f64(&format!("{name}: second order, input {i}"), &analytic, &numeric, 1e-5);
        }
    }
}

fn inputs(name: &str, shapes: &[&[usize]]) -> Vec<Tensor> {
    let mut rng = common::rng(name);
    shapes.iter().map(|s| f64_tensor(&mut rng, s)).collect()
}

macro_rules! grad_test {
    ($name:ident, [$($shape:expr),+], $wrt:expr, $f:expr) => {
        #[test]
        fn $name() {
            let xs = inputs(stringify!($name), &[$(&$shape),+]);
            check_first_order(stringify!($name), xs.clone(), &$wrt, &$f);
            check_second_order(stringify!($name), xs, &$wrt, &$f);
        }
    };
}

grad_test!(add_broadcast, [[2, 3, 4], [2, 1, 4]], [0, 1], |t, x| t.add(&x[0], &x[1]));
grad_test!(sub_broadcast, [[2, 3, 4], [4]], [0, 1], |t, x| t.sub(&x[0], &x[1]));
grad_test!(mul_broadcast, [[2, 3, 4], [2, 3, 1]], [0, 1], |t, x| t.mul(&x[0], &x[1]));
grad_test!(div_broadcast, [[3, 5], [1, 5]], [0, 1], |t, x| t.div(&x[0], &t.affine(&t.square(&x[1])?, 1.0, 0.5)?));
grad_test!(bce_with_logits, [[4, 6], [4, 6]], [0, 1], |t, x| t.bce_with_logits(&t.scale(&x[0], 3.0)?, &x[1]));
grad_test!(affine, [[7]], [0], |t, x| t.affine(&x[0], -1.5, 0.25));
grad_test!(sum_squares_to, [[2, 3, 4, 5]], [0], |t, x| t.sum_squares_to(&x[0], &[2, 1, 4, 1]));
grad_test!(sum_products_to, [[2, 3, 4, 5], [2, 3, 4, 5]], [0, 1], |t, x| t.sum_products_to(&x[0], &x[1], &[2, 1, 4, 1]));
grad_test!(sum_products_to_lower_rank, [[2, 3, 4], [2, 3, 4]], [0, 1], |t, x| t.sum_products_to(&x[0], &t.tanh(&x[1])?, &[3, 1]));
grad_test!(sum_squares_to_rank_down, [[3, 4]], [0], |t, x| t.sum_squares_to(&x[0], &[4]));
grad_test!(exp, [[2, 5]], [0], |t, x| t.exp(&x[0]));
grad_test!(log, [[2, 5]], [0], |t, x| t.log(&t.affine(&t.square(&x[0])?, 1.0, 0.5)?));
grad_test!(sqrt, [[2, 5]], [0], |t, x| t.sqrt(&t.affine(&t.square(&x[0])?, 1.0, 0.5)?));
grad_test!(rsqrt, [[2, 5]], [0], |t, x| t.rsqrt(&t.affine(&t.square(&x[0])?, 1.0, 0.5)?));
grad_test!(recip, [[2, 5]], [0], |t, x| t.recip(&t.affine(&t.square(&x[0])?, 1.0, 0.5)?));
grad_test!(square, [[3, 3]], [0], |t, x| t.square(&x[0]));
grad_test!(relu, [[4, 5]], [0], |t, x| t.mul(&t.relu(&x[0])?, &x[0]));
grad_test!(leaky_relu, [[4, 5]], [0], |t, x| t.mul(&t.leaky_relu(&x[0], 0.2)?, &x[0]));
grad_test!(sigmoid, [[4, 5]], [0], |t, x| t.sigmoid(&t.scale(&x[0], 2.0)?));
grad_test!(tanh, [[4, 5]], [0], |t, x| t.tanh(&x[0]));
grad_test!(sum_to_leading_and_inner, [[2, 3, 4, 5]], [0], |t, x| t.square(&t.sum_to(&x[0], &[2, 1, 4, 1])?));
grad_test!(sum_to_lower_rank, [[3, 4]], [0], |t, x| t.square(&t.sum_to(&x[0], &[4])?));
grad_test!(broadcast_to, [[3, 1], [3, 4]], [0, 1], |t, x| t.mul(&t.broadcast_to(&x[0], &[2, 3, 4])?, &x[1]));
grad_test!(reshape, [[2, 6]], [0], |t, x| t.square(&t.reshape(&x[0], &[3, 4])?));
grad_test!(matmul_nn, [[2, 3, 4], [2, 4, 5]], [0, 1], |t, x| t.matmul(&x[0], &x[1], false, false));
grad_test!(matmul_tn, [[2, 4, 3], [2, 4, 5]], [0, 1], |t, x| t.matmul(&x[0], &x[1], true, false));
grad_test!(matmul_nt, [[2, 3, 4], [2, 5, 4]], [0, 1], |t, x| t.matmul(&x[0], &x[1], false, true));
grad_test!(matmul_tt, [[2, 4, 3], [2, 5, 4]], [0, 1], |t, x| t.matmul(&x[0], &x[1], true, true));
grad_test!(linear, [[2, 3, 5], [2, 4, 5], [2, 4]], [0, 1, 2], |t, x| t.tanh(&t.linear(&x[0], &x[1], Some(&x[2]))?));
grad_test!(conv2d_s2_p2, [[2, 2, 2, 7, 6], [2, 3, 2, 5, 5]], [0, 1], |t, x| t.conv2d(&x[0], &x[1], 2, 2));
grad_test!(conv2d_bias_s2_p2, [[2, 2, 2, 7, 6], [2, 3, 2, 5, 5], [2, 3]], [0, 1, 2], |t, x| t
    .tanh(&t.conv2d_bias(&x[0], &x[1], &x[2], 2, 2)?));
grad_test!(conv2d_3x3_p1, [[1, 2, 3, 5, 5], [1, 2, 3, 3, 3]], [0, 1], |t, x| t.tanh(&t.conv2d(&x[0], &x[1], 1, 1)?));
grad_test!(conv2d_input_grad, [[2, 2, 3, 4, 4], [2, 3, 2, 3, 3]], [0, 1], |t, x| t.conv2d_input_grad(&x[0], &x[1], (7, 8), 2, 1));
grad_test!(conv2d_weight_grad, [[1, 2, 2, 6, 6], [1, 2, 3, 3, 3]], [0, 1], |t, x| t.conv2d_weight_grad(&x[0], &x[1], (3, 3), 2, 1));
grad_test!(conv_transpose2d_s2, [[1, 2, 3, 4, 4], [1, 3, 2, 4, 4]], [0, 1], |t, x| t.conv_transpose2d(&x[0], &x[1], 2, 0, 0));
grad_test!(conv2d_4x4_s2_p1, [[2, 2, 2, 6, 6], [2, 3, 2, 4, 4]], [0, 1], |t, x| t.tanh(&t.conv2d(&x[0], &x[1], 2, 1)?));
grad_test!(conv_transpose2d_3x3_s2_p1, [[1, 2, 3, 4, 4], [1, 3, 2, 3, 3]], [0, 1], |t, x| t
    .tanh(&t.conv_transpose2d(&x[0], &x[1], 2, 1, 0)?));
grad_test!(conv_transpose2d_4x4_s2_p1, [[2, 2, 2, 3, 3], [2, 2, 3, 4, 4]], [0, 1], |t, x| t.conv_transpose2d(&x[0], &x[1], 2, 1, 0));
grad_test!(channel_concat_leaky_relu, [[1, 2, 2, 3, 3], [1, 2, 3, 3, 3]], [0, 1], |t, x| {
    let joined = t.concat(&[&x[0], &x[1]], 2)?;
    t.mul(&t.leaky_relu(&joined, 0.2)?, &joined)
});
grad_test!(add_channel_bias, [[2, 2, 3, 2, 2], [2, 3]], [0, 1], |t, x| t.square(&t.add_channel_bias(&x[0], &x[1])?));
grad_test!(max_pool2x2, [[2, 3, 5, 4]], [0], |t, x| t.square(&t.max_pool2x2(&x[0])?));
grad_test!(upsample_nearest2x, [[2, 3, 3]], [0], |t, x| t.square(&t.upsample_nearest2x(&x[0])?));
grad_test!(sum_pool2x2, [[2, 4, 6]], [0], |t, x| t.square(&t.sum_pool2x2(&x[0])?));
grad_test!(narrow_and_pad, [[3, 6, 2]], [0], |t, x| t.square(&t.pad(&t.narrow(&x[0], 1, 1, 4)?, 0, 1, 2)?));
grad_test!(crop, [[1, 2, 8, 8]], [0], |t, x| t.square(&t.crop(&x[0], 7, 5)?));
grad_test!(concat, [[2, 3], [2, 4], [2, 1]], [0, 1, 2], |t, x| t.square(&t.concat(&[&x[0], &x[1], &x[2]], 1)?));
grad_test!(log_softmax, [[3, 5]], [0], |t, x| t.log_softmax(&x[0]));
grad_test!(softmax_cross_entropy, [[2, 3, 4], [2, 3, 4]], [0], |t, x| t.softmax_cross_entropy(&x[0], &t.sigmoid(&x[1])?));
grad_test!(mean_all, [[3, 4]], [0], |t, x| t.reshape(&t.mean_all(&t.square(&x[0])?)?, &[1]));

/// A small conv critic: conv 5×5 s2 p2 → tanh → linear to one value per example. (tanh rather
/// than the ReLU of the real critic so that the conv bias reaches ∇ₓD too; ReLU's own second-order
/// rule is checked above.)
fn critic(t: &Tape, x: &Tensor, p: &[Tensor]) -> Result<Tensor> {
    let h = t.tanh(&t.add_channel_bias(&t.conv2d(x, &p[0], 2, 2)?, &p[1])?)?;
    let (g, b) = (x.shape()[0], x.shape()[1]);
    let flat = t.reshape(&h, &[g, b, h.numel() / (g * b)])?;
    t.linear(&flat, &p[2], Some(&p[3]))
}

/// WGAN-GP: mean_i (‖∇ₓ D(x̂ᵢ)‖ − 1)², differentiated w.r.t. the critic's weights (double backward),
/// with ∇ₓD from a full recorded backward and from one recorded towards x̂ only (what training
/// uses): both against finite differences, and the second equal to the first bit for bit (the ops
/// it leaves out, the recorded weight gradients of D, never reach the penalty).
#[test]
fn gradient_penalty_of_conv_critic_wrt_weights() {
    let (g, b) = (2, 3);
    let xs = inputs("gradient_penalty", &[&[g, b, 1, 6, 6], &[g, 3, 1, 5, 5], &[g, 3], &[g, 1, 27], &[g, 1]]);
    let x_hat = xs[0].clone();
    let penalty = |tape: &Tape, params: &[Tensor], towards_input_only: bool| -> Tensor {
        tape.watch(&x_hat);
        params.iter().for_each(|p| tape.watch(p));
        let d = tape.sum_all(&critic(tape, &x_hat, params).unwrap()).unwrap();
        let grads = if towards_input_only {
            tape.backward_to_create_graph(&d, &[&x_hat]).unwrap()
        } else {
            tape.backward_create_graph(&d).unwrap()
        };
        assert_eq!(params.iter().all(|p| grads.get(p).is_none()), towards_input_only, "weight gradients only when asked for");
        let dx = grads.of(&x_hat).unwrap().clone();
        let sq = tape.sum_to(&tape.square(&dx).unwrap(), &[g, b, 1, 1, 1]).unwrap();
        let dev = tape.affine(&tape.sqrt(&sq).unwrap(), 1.0, -1.0).unwrap();
        tape.mean_all(&tape.square(&dev).unwrap()).unwrap()
    };
    let params = xs[1..].to_vec();
    let numeric = numeric_grads(&params, &[0, 1, 2, 3], &|ps: &[Tensor]| value(&penalty(&Tape::new(), ps, true)));
    let mut by_mode = Vec::new();
    for towards_input_only in [false, true] {
        let tape = Tape::new();
        let gp = penalty(&tape, &params, towards_input_only);
        let recorded = tape.len();
        let grads = tape.backward(&gp).unwrap();
        for (i, num) in numeric.iter().enumerate() {
            match grads.get(&params[i]) {
                Some(g) => assert_close_f64(&format!("gradient penalty: d/d param {i}"), &g.to_vec_f64().unwrap(), num, 1e-5),
                None => assert!(num_norm(num) < 1e-6, "gradient penalty: param {i} has no gradient on the tape but a numeric one"),
            }
        }
        // The last layer's bias cannot influence ∇ₓD, so it gets no gradient; everything else does.
        assert!(num_norm(&numeric[0]) > 1e-3 && num_norm(&numeric[1]) > 1e-3 && num_norm(&numeric[2]) > 1e-3);
        assert!(grads.get(&params[3]).is_none());
        let bits: Vec<Vec<f64>> = params[..3].iter().map(|p| grads.of(p).unwrap().to_vec_f64().unwrap()).collect();
        by_mode.push((recorded, bits));
    }
    let ((full_ops, full), (input_ops, input_only)) = (&by_mode[0], &by_mode[1]);
    assert_eq!(full, input_only, "the penalty's weight gradients do not depend on what else was recorded");
    assert!(input_ops < full_ops, "recording towards x̂ only records fewer ops ({input_ops} against {full_ops})");
}

fn num_norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn retained_layer_output_gradient_is_reported() {
    let xs = inputs("retained", &[&[1, 4, 3], &[1, 2, 3]]);
    let tape = Tape::new();
    tape.watch(&xs[1]);
    let y = tape.matmul(&xs[0], &xs[1], false, true).unwrap();
    tape.retain_grad(&y);
    let loss = tape.sum_all(&tape.square(&y).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let dy = grads.of(&y).unwrap().to_vec_f64().unwrap();
    let expected: Vec<f64> = y.to_vec_f64().unwrap().iter().map(|v| 2.0 * v).collect();
    assert_close_f64("retained dL/dy", &dy, &expected, 1e-12);
}

#[test]
fn backward_errors_name_the_cause() {
    let xs = inputs("errors", &[&[2, 2]]);
    let tape = Tape::new();
    let y = tape.square(&xs[0]).unwrap();
    let err = tape.backward(&tape.sum_all(&y).unwrap()).unwrap_err().to_string();
    assert!(err.contains("does not depend on any watched tensor"), "{err}");
    tape.watch(&xs[0]);
    let y = tape.square(&xs[0]).unwrap();
    let err = tape.backward(&y).unwrap_err().to_string();
    assert!(err.contains("scalar root"), "{err}");
}

grad_test!(pixel_norm, [[2, 2, 3, 2, 2]], [0], |t, x| t.pixel_norm(&x[0], 1e-10));

/// Pixel norm's gradient from its fused first-order rule (`pixel_norm_backward`) and from the tape
/// ops a recorded backward builds: equal to f64 rounding.
#[test]
fn pixel_norm_gradient_is_the_same_fused_and_recorded() {
    let xs = inputs("pixel_norm_two_ways", &[&[2, 3, 5, 2, 3], &[2, 3, 5, 2, 3]]);
    let grads: Vec<Vec<f64>> = [false, true]
        .into_iter()
        .map(|create_graph| {
            let tape = Tape::new();
            tape.watch(&xs[0]);
            let y = tape.pixel_norm(&xs[0], 1e-3).unwrap();
            tape.backward_with(&y, xs[1].clone(), create_graph).unwrap().of(&xs[0]).unwrap().to_vec_f64().unwrap()
        })
        .collect();
    assert_close_f64("pixel norm dx, fused against recorded", &grads[0], &grads[1], tol::F64_TIGHT);
}

/// Spectral norm with u, v held fixed (they come from the power iteration, without gradient): the
/// gradient flows through s = uᵀW̄v only. The power iteration's own σ (from the W̄v it computed,
/// summed in another order) equals uᵀW̄v recomputed to f64 rounding (F64_TIGHT).
#[test]
fn spectral_normalize_gradient_through_sigma() {
    let xs = inputs("spectral_normalize", &[&[2, 3, 2, 2, 2], &[2, 3]]);
    let tape = Tape::new();
    let (w_sn, u, v, _) = tape.spectral_normalize(&xs[0], &xs[1]).unwrap();
    let direct = tape.divide_by_sigma(&xs[0], &u, &v).unwrap();
    assert_close_f64("spectral_normalize = W̄/(uᵀW̄v)", &w_sn.to_vec_f64().unwrap(), &direct.to_vec_f64().unwrap(), tol::F64_TIGHT);
    let f = move |t: &Tape, x: &[Tensor]| t.divide_by_sigma(&x[0], &u, &v);
    check_first_order("spectral_normalize", vec![xs[0].clone()], &[0], &f);
    check_second_order("spectral_normalize", vec![xs[0].clone()], &[0], &f);
}

/// The division's gradient two ways: a first-order backward takes the fused rule (a product, its
/// per-group sum and `spectral_divide_backward`), a recorded one builds it from tape ops. Both
/// equal the closed form dW̄ = dW/σ − (⟨dW, W̄⟩/σ²)·u vᵀ to f64 rounding, for G = 2 and a 4-d W̄.
#[test]
fn spectral_divide_gradient_is_the_same_fused_and_recorded() {
    let xs = inputs("spectral_divide_two_ways", &[&[2, 3, 2, 2, 2], &[2, 3], &[2, 8], &[2, 3, 2, 2, 2]]);
    let (w_bar, u, v, dw) = (&xs[0], &xs[1], &xs[2], &xs[3]);
    let sigma_values: Vec<f64> = (0..2)
        .map(|g| {
            let (w, uu, vv) = (w_bar.to_vec_f64().unwrap(), u.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
            (0..3).flat_map(|r| (0..8).map(move |k| (r, k))).map(|(r, k)| uu[g * 3 + r] * w[(g * 3 + r) * 8 + k] * vv[g * 8 + k]).sum()
        })
        .collect();
    let (w, uu, vv, d) = (w_bar.to_vec_f64().unwrap(), u.to_vec_f64().unwrap(), v.to_vec_f64().unwrap(), dw.to_vec_f64().unwrap());
    let mut expected = Vec::new();
    for g in 0..2 {
        let s = sigma_values[g];
        let dot: f64 = (0..24).map(|e| d[g * 24 + e] * w[g * 24 + e]).sum();
        for e in 0..24 {
            let (r, k) = (e / 8, e % 8);
            expected.push(d[g * 24 + e] / s - dot / (s * s) * uu[g * 3 + r] * vv[g * 8 + k]);
        }
    }
    for create_graph in [false, true] {
        let tape = Tape::new();
        tape.watch(w_bar);
        let out = tape.divide_by_sigma(w_bar, u, v).unwrap();
        let grads = tape.backward_with(&out, dw.clone(), create_graph).unwrap();
        let got = grads.of(w_bar).unwrap().to_vec_f64().unwrap();
        assert_close_f64(&format!("dW̄ (create_graph = {create_graph})"), &got, &expected, tol::F64_TIGHT);
    }
}

/// After many power iterations uᵀW v is the top singular value, so W/s has spectral norm 1.
#[test]
fn spectral_normalize_converges_to_unit_spectral_norm() {
    let xs = inputs("spectral_unit", &[&[1, 4, 3], &[1, 4]]);
    let tape = Tape::new();
    let mut u = xs[1].clone();
    let mut w_sn = xs[0].clone();
    for _ in 0..200 {
        let (w, u_next, _, _) = tape.spectral_normalize(&xs[0], &u).unwrap();
        w_sn = w;
        u = u_next;
    }
    // Largest singular value of W/s via the Gram matrix's power iteration, in f64.
    let w = w_sn.to_vec_f64().unwrap();
    let gram: Vec<f64> = (0..9).map(|k| (0..4).map(|r| w[r * 3 + k / 3] * w[r * 3 + k % 3]).sum()).collect();
    let mut v = vec![1.0, 0.5, 0.25];
    let mut lambda = 0.0;
    for _ in 0..500 {
        let next: Vec<f64> = (0..3).map(|i| (0..3).map(|j| gram[i * 3 + j] * v[j]).sum()).collect();
        lambda = num_norm(&next);
        v = next.iter().map(|x| x / lambda).collect();
    }
    assert!((lambda.sqrt() - 1.0).abs() < 1e-9, "spectral norm after normalisation: {}", lambda.sqrt());
}

/// `backward_to` gives the requested gradients exactly as a full backward does, and only those:
/// a two-layer net's hidden-output gradient without either weight's gradient.
#[test]
fn backward_to_returns_exactly_the_requested_gradients() {
    let mut rng = common::rng("backward_to_returns_exactly_the_requested_gradients");
    let (x, w1, w2) = (f64_tensor(&mut rng, &[1, 5, 7]), f64_tensor(&mut rng, &[1, 4, 7]), f64_tensor(&mut rng, &[1, 3, 4]));
    let forward = |tape: &Tape| {
        tape.watch(&w1);
        tape.watch(&w2);
        let h = tape.matmul(&x, &w1, false, true).unwrap();
        let y = tape.matmul(&tape.tanh(&h).unwrap(), &w2, false, true).unwrap();
        (h, tape.sum_all(&tape.square(&y).unwrap()).unwrap())
    };
    let full = Tape::new();
    let (h_full, loss_full) = forward(&full);
    full.retain_grad(&h_full);
    let all = full.backward(&loss_full).unwrap();

    let pruned = Tape::new();
    let (h, loss) = forward(&pruned);
    let some = pruned.backward_to(&loss, &[&h]).unwrap();
    let (a, b) = (some.of(&h).unwrap().to_vec_f64().unwrap(), all.of(&h_full).unwrap().to_vec_f64().unwrap());
    assert_eq!(a, b, "the same rules in the same order give the same bits");
    assert!(some.get(&w1).is_none() && some.get(&w2).is_none(), "weights were not asked for");
    assert!(all.get(&w1).is_some() && all.get(&w2).is_some());
}
