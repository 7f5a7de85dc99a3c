mod common;

// Optimizer updates over several steps: the CPU backend against PyTorch's rules re-implemented
// plainly in f64, and the CUDA kernels against the CPU backend on the same fresh random inputs.
use common::{assert_close, assert_close_f64, on_cuda, randn, rng, tol, uniform};
use dpgan::backend::ops::{adam_step, sgd_step};
use dpgan::backend::{AdamParams, SgdParams};
use dpgan::tensor::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const STEPS: usize = 5;

fn sgd_configs() -> Vec<SgdParams> {
    let sgd = |lr, momentum, dampening, weight_decay, nesterov| SgdParams { lr, momentum, dampening, weight_decay, nesterov };
    vec![
        sgd(0.1, 0.0, 0.0, 0.0, false),   // plain
        sgd(0.05, 0.0, 0.0, 1e-2, false), // weight decay, no momentum
        sgd(0.05, 0.9, 0.0, 0.0, false),  // heavy ball
        sgd(0.02, 0.9, 0.1, 5e-3, false), // dampening and weight decay
        sgd(0.02, 0.9, 0.0, 1e-2, true),  // Nesterov with weight decay
        sgd(0.01, 0.5, 0.0, 0.0, true),
    ]
}

fn adam_configs() -> Vec<AdamParams> {
    let adam = |lr, beta1, beta2, eps, weight_decay| AdamParams { lr, beta1, beta2, eps, weight_decay };
    vec![
        adam(1e-3, 0.9, 0.999, 1e-8, 0.0), // PyTorch's defaults
        adam(2e-4, 0.5, 0.999, 1e-8, 0.0), // DCGAN's
        adam(1e-2, 0.9, 0.99, 1e-3, 1e-2), // L2 weight decay, large eps
        adam(1e-4, 0.0, 0.9, 1e-8, 0.0),   // no first moment (as in WGAN-GP setups)
    ]
}

/// Parameter shapes: a conv weight of a model group, a bias, an empty tensor. No single elements in
/// the f32-against-f64 checks: where `β·m` and `(1 − β)·g` nearly cancel, the f32 state's relative
/// error is unbounded, and only a norm over many elements is a fair measure. The CUDA checks, which
/// compare bit for bit, take single elements too.
fn param_shapes(rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let g = rng.random_range(2..=4);
    vec![vec![g, rng.random_range(1..=9), 3, 5, 5], vec![g, 33], vec![g, 0, 7]]
}

/// The CUDA updates round every operation as the CPU reference does (no fused multiply-adds), so
/// they agree bit for bit.
const BIT_IDENTICAL: f64 = 0.0;

fn cuda_param_shapes(rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut shapes = param_shapes(rng);
    shapes.extend([vec![1, 1], vec![1, 128, 64, 4, 4], vec![3, 100_003]]);
    shapes
}

/// SGD as PyTorch writes it (with a momentum buffer that starts at zero), in f64.
fn sgd_formula(p: &mut [f64], g: &[f64], buf: &mut [f64], hp: &SgdParams) {
    let (lr, momentum, dampening, wd) = (hp.lr as f64, hp.momentum as f64, hp.dampening as f64, hp.weight_decay as f64);
    for i in 0..p.len() {
        let d_p = g[i] + wd * p[i];
        if momentum == 0.0 {
            p[i] -= lr * d_p;
            continue;
        }
        buf[i] = momentum * buf[i] + (1.0 - dampening) * d_p;
        let step = if hp.nesterov { d_p + momentum * buf[i] } else { buf[i] };
        p[i] -= lr * step;
    }
}

/// Adam as PyTorch writes it at step t (1-based), with L2 weight decay added to the gradient, in f64.
fn adam_formula(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], t: i32, hp: &AdamParams) {
    let (lr, b1, b2, eps, wd) = (hp.lr as f64, hp.beta1 as f64, hp.beta2 as f64, hp.eps as f64, hp.weight_decay as f64);
    let bias1 = 1.0 - b1.powi(t);
    let bias2 = 1.0 - b2.powi(t);
    for i in 0..p.len() {
        let grad = g[i] + wd * p[i];
        m[i] = b1 * m[i] + (1.0 - b1) * grad;
        v[i] = b2 * v[i] + (1.0 - b2) * grad * grad;
        let m_hat = m[i] / bias1;
        let v_hat = v[i] / bias2;
        p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|&x| x as f64).collect()
}

#[test]
fn sgd_cpu_matches_formula() {
    let mut rng = rng("sgd_cpu_matches_formula");
    for hp in sgd_configs() {
        for shape in param_shapes(&mut rng) {
            let mut param = randn(&mut rng, &shape);
            let mut buf = Tensor::zeros(&shape, &Device::Cpu).unwrap();
            let (mut p_ref, mut buf_ref) = (f64s(&param), f64s(&buf));
            for step in 1..=STEPS {
                let grad = randn(&mut rng, &shape);
                sgd_step(&mut param, &grad, Some(&mut buf), &hp).unwrap();
                sgd_formula(&mut p_ref, &f64s(&grad), &mut buf_ref, &hp);
                // f32 state against f64 over a few steps: a few roundings per element and step.
                let what = format!("{hp:?} on {shape:?}, step {step}");
                assert_close_f64(&format!("param, {what}"), &f64s(&param), &p_ref, tol::F32_ELEMENTWISE);
                assert_close_f64(&format!("momentum buffer, {what}"), &f64s(&buf), &buf_ref, tol::F32_ELEMENTWISE);
            }
        }
    }
}

#[test]
fn sgd_without_momentum_needs_no_buffer_and_leaves_one_alone() {
    let mut rng = rng("sgd_without_momentum_needs_no_buffer_and_leaves_one_alone");
    let hp = SgdParams { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 1e-2, nesterov: false };
    let mut a = randn(&mut rng, &[2, 7]);
    let mut b = a.clone();
    let grad = randn(&mut rng, &[2, 7]);
    let mut buf = uniform(&mut rng, &[2, 7], -1.0, 1.0);
    let before = buf.to_vec().unwrap();
    sgd_step(&mut a, &grad, None, &hp).unwrap();
    sgd_step(&mut b, &grad, Some(&mut buf), &hp).unwrap();
    assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    assert_eq!(buf.to_vec().unwrap(), before);
}

#[test]
fn sgd_momentum_without_a_buffer_is_an_error() {
    let hp = SgdParams { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    let mut p = Tensor::zeros(&[3], &Device::Cpu).unwrap();
    let g = Tensor::zeros(&[3], &Device::Cpu).unwrap();
    assert!(sgd_step(&mut p, &g, None, &hp).is_err());
    let mut short = Tensor::zeros(&[2], &Device::Cpu).unwrap();
    assert!(sgd_step(&mut p, &g, Some(&mut short), &hp).is_err());
}

/// An in-place update must not show through a clone that shares the storage (a tape may hold it).
#[test]
fn updates_copy_shared_storage_first() {
    let mut rng = rng("updates_copy_shared_storage_first");
    let mut param = randn(&mut rng, &[4, 5]);
    let saved = param.clone();
    let before = saved.to_vec().unwrap();
    let grad = randn(&mut rng, &[4, 5]);
    sgd_step(&mut param, &grad, None, &sgd_configs()[0]).unwrap();
    assert_eq!(saved.to_vec().unwrap(), before);
    assert_ne!(param.to_vec().unwrap(), before);
}

#[test]
fn adam_cpu_matches_formula() {
    let mut rng = rng("adam_cpu_matches_formula");
    for hp in adam_configs() {
        for shape in param_shapes(&mut rng) {
            let mut param = randn(&mut rng, &shape);
            let mut m = Tensor::zeros(&shape, &Device::Cpu).unwrap();
            let mut v = Tensor::zeros(&shape, &Device::Cpu).unwrap();
            let (mut p_ref, mut m_ref, mut v_ref) = (f64s(&param), f64s(&m), f64s(&v));
            for t in 1..=STEPS {
                let grad = randn(&mut rng, &shape);
                adam_step(&mut param, &grad, &mut m, &mut v, t as u64, &hp).unwrap();
                adam_formula(&mut p_ref, &f64s(&grad), &mut m_ref, &mut v_ref, t as i32, &hp);
                let what = format!("{hp:?} on {shape:?}, step {t}");
                assert_close_f64(&format!("param, {what}"), &f64s(&param), &p_ref, tol::F32_ELEMENTWISE);
                assert_close_f64(&format!("m, {what}"), &f64s(&m), &m_ref, tol::F32_ELEMENTWISE);
                assert_close_f64(&format!("v, {what}"), &f64s(&v), &v_ref, tol::F32_ELEMENTWISE);
            }
        }
    }
}

#[test]
fn adam_rejects_step_zero_and_mismatched_state() {
    let hp = adam_configs()[0];
    let mut p = Tensor::zeros(&[3], &Device::Cpu).unwrap();
    let g = Tensor::zeros(&[3], &Device::Cpu).unwrap();
    let (mut m, mut v) = (Tensor::zeros(&[3], &Device::Cpu).unwrap(), Tensor::zeros(&[3], &Device::Cpu).unwrap());
    assert!(adam_step(&mut p, &g, &mut m, &mut v, 0, &hp).is_err());
    let mut short = Tensor::zeros(&[2], &Device::Cpu).unwrap();
    assert!(adam_step(&mut p, &g, &mut short, &mut v, 1, &hp).is_err());
}

#[test]
fn sgd_cuda_matches_cpu() {
    on_cuda("sgd_cuda_matches_cpu", |dev| {
        let mut rng = rng("sgd_cuda_matches_cpu");
        for hp in sgd_configs() {
            for shape in cuda_param_shapes(&mut rng) {
                let mut param = randn(&mut rng, &shape);
                let mut buf = uniform(&mut rng, &shape, -0.5, 0.5);
                let mut param_gpu = param.to_device(dev).unwrap();
                let mut buf_gpu = buf.to_device(dev).unwrap();
                for step in 1..=STEPS {
                    let grad = randn(&mut rng, &shape);
                    sgd_step(&mut param, &grad, Some(&mut buf), &hp).unwrap();
                    sgd_step(&mut param_gpu, &grad.to_device(dev).unwrap(), Some(&mut buf_gpu), &hp).unwrap();
                    let what = format!("{hp:?} on {shape:?}, step {step}");
                    assert_close(&format!("param, {what}"), &param_gpu.to_vec().unwrap(), param.cpu_data().unwrap(), BIT_IDENTICAL);
                    assert_close(&format!("momentum buffer, {what}"), &buf_gpu.to_vec().unwrap(), buf.cpu_data().unwrap(), BIT_IDENTICAL);
                }
            }
        }
    });
}

#[test]
fn adam_cuda_matches_cpu() {
    on_cuda("adam_cuda_matches_cpu", |dev| {
        let mut rng = rng("adam_cuda_matches_cpu");
        for hp in adam_configs() {
            for shape in cuda_param_shapes(&mut rng) {
                let mut param = randn(&mut rng, &shape);
                // Moments from an earlier run: m anything, v ≥ 0.
                let mut m = randn(&mut rng, &shape);
                let mut v = uniform(&mut rng, &shape, 0.0, 2.0);
                let (mut param_gpu, mut m_gpu, mut v_gpu) =
                    (param.to_device(dev).unwrap(), m.to_device(dev).unwrap(), v.to_device(dev).unwrap());
                // Start mid-run too, where the bias corrections are near 1.
                let first = if rng.random::<bool>() { 1 } else { 1000 };
                for t in first..first + STEPS as u64 {
                    let grad = randn(&mut rng, &shape);
                    adam_step(&mut param, &grad, &mut m, &mut v, t, &hp).unwrap();
                    adam_step(&mut param_gpu, &grad.to_device(dev).unwrap(), &mut m_gpu, &mut v_gpu, t, &hp).unwrap();
                    let what = format!("{hp:?} on {shape:?}, step {t}");
                    assert_close(&format!("param, {what}"), &param_gpu.to_vec().unwrap(), param.cpu_data().unwrap(), BIT_IDENTICAL);
                    assert_close(&format!("m, {what}"), &m_gpu.to_vec().unwrap(), m.cpu_data().unwrap(), BIT_IDENTICAL);
                    assert_close(&format!("v, {what}"), &v_gpu.to_vec().unwrap(), v.cpu_data().unwrap(), BIT_IDENTICAL);
                }
            }
        }
    });
}

#[test]
fn cuda_updates_copy_shared_storage_first() {
    on_cuda("cuda_updates_copy_shared_storage_first", |dev| {
        let mut rng = rng("cuda_updates_copy_shared_storage_first");
        let mut param = randn(&mut rng, &[4, 5]).to_device(dev).unwrap();
        let saved = param.clone();
        let before = saved.to_vec().unwrap();
        let grad = randn(&mut rng, &[4, 5]).to_device(dev).unwrap();
        let hp = adam_configs()[0];
        let (mut m, mut v) = (Tensor::zeros(&[4, 5], dev).unwrap(), Tensor::zeros(&[4, 5], dev).unwrap());
        adam_step(&mut param, &grad, &mut m, &mut v, 1, &hp).unwrap();
        assert_eq!(saved.to_vec().unwrap(), before);
        assert_ne!(param.to_vec().unwrap(), before);
    });
}

/// The optimizer objects keep per-parameter state and apply the backend's update rule.
#[test]
fn optimizer_objects_match_the_raw_updates() {
    use dpgan::optim::{Adam, Optimizer, Sgd};
    let mut rng = common::rng("optimizer_objects_match_the_raw_updates");
    let shapes: [&[usize]; 2] = [&[2, 3, 4], &[2, 5]];
    let params: Vec<Tensor> = shapes.iter().map(|s| common::randn(&mut rng, s)).collect();
    let grads: Vec<Vec<Tensor>> = (0..3).map(|_| shapes.iter().map(|s| common::randn(&mut rng, s)).collect()).collect();
    let adam_hp = AdamParams { lr: 1e-3, beta1: 0.5, beta2: 0.9, eps: 1e-8, weight_decay: 0.0 };
    let sgd_hp = SgdParams { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };

    let (mut with_adam, mut with_sgd) = (params.clone(), params.clone());
    let (mut adam, mut sgd) = (Adam::new(adam_hp), Sgd::new(sgd_hp));
    for g in &grads {
        adam.step(&mut with_adam.iter_mut().collect::<Vec<_>>(), g).unwrap();
        sgd.step(&mut with_sgd.iter_mut().collect::<Vec<_>>(), g).unwrap();
    }
    for (k, p) in params.iter().enumerate() {
        let (mut pa, mut ps) = (p.clone(), p.clone());
        let mut m = p.full_like(p.shape(), 0.0).unwrap();
        let mut v = m.clone();
        let mut buf = m.clone();
        for (t, g) in grads.iter().enumerate() {
            dpgan::backend::ops::adam_step(&mut pa, &g[k], &mut m, &mut v, t as u64 + 1, &adam_hp).unwrap();
            dpgan::backend::ops::sgd_step(&mut ps, &g[k], Some(&mut buf), &sgd_hp).unwrap();
        }
        assert_eq!(with_adam[k].to_vec().unwrap(), pa.to_vec().unwrap(), "adam, parameter {k}");
        assert_eq!(with_sgd[k].to_vec().unwrap(), ps.to_vec().unwrap(), "sgd, parameter {k}");
    }
    assert_eq!(adam.steps(), 3);
    let mut one = [params[0].clone()];
    assert!(adam.step(&mut one.iter_mut().collect::<Vec<_>>(), &grads[0][..1]).is_err(), "state for 2 parameters, given 1");
}

/// The moving average in one pass equals the two affine maps and the addition it replaced, bit for
/// bit (f32 and f64, decays 0 (a copy), 0.5, 0.999), updates in place without touching a tensor
/// that shares its storage, and refuses mismatched shapes and a non-finite decay.
#[test]
fn ema_update_equals_two_scalings_and_a_sum() {
    use dpgan::backend::ops::{binary, ema_update, unary};
    use dpgan::backend::{BinaryOp, UnaryOp};
    let mut rng = rng("ema_update_equals_two_scalings_and_a_sum");
    for decay in [0.0f32, 0.5, 0.999] {
        for f64_values in [false, true] {
            let make = |rng: &mut ChaCha8Rng| {
                let t = randn(rng, &[3, 257]);
                if f64_values {
                    Tensor::from_vec_f64(t.to_vec().unwrap().into_iter().map(f64::from).collect(), &[3, 257]).unwrap()
                } else {
                    t
                }
            };
            let (ema, x) = (make(&mut rng), make(&mut rng));
            let before = f64s(&ema);
            let kept = unary(UnaryOp::Affine { scale: decay, shift: 0.0 }, &ema).unwrap();
            let added = unary(UnaryOp::Affine { scale: 1.0 - decay, shift: 0.0 }, &x).unwrap();
            let expected = f64s(&binary(BinaryOp::Add, &kept, &added).unwrap());
            let mut fused = ema.clone();
            ema_update(&mut fused, &x, decay).unwrap();
            let got = f64s(&fused);
            assert!(got.iter().zip(&expected).all(|(a, e)| a.to_bits() == e.to_bits()), "decay {decay} f64 {f64_values}");
            assert_eq!(f64s(&ema), before, "decay {decay}: the tensor sharing the average's storage moved");
            assert!(got != before, "decay {decay}: nothing moved");
        }
    }
    let mut ema = randn(&mut rng, &[4]);
    assert!(ema_update(&mut ema, &randn(&mut rng, &[5]), 0.5).is_err());
    assert!(ema_update(&mut ema, &randn(&mut rng, &[4]), f32::NAN).is_err());
}

/// The CUDA moving average equals the CPU's bit for bit (two products and a sum, each rounded to
/// nearest on both), across block tails.
#[test]
fn ema_update_cuda_matches_cpu() {
    use dpgan::backend::ops::ema_update;
    on_cuda("ema_update_cuda_matches_cpu", |dev| {
        let mut rng = rng("ema_update_cuda_matches_cpu");
        for n in [1, 255, 1025, 100_003] {
            let (ema, x) = (randn(&mut rng, &[n]), randn(&mut rng, &[n]));
            let decay = rng.random_range(0.0..1.0f32);
            let mut on_cpu = ema.clone();
            ema_update(&mut on_cpu, &x, decay).unwrap();
            let mut on_gpu = ema.to_device(dev).unwrap();
            ema_update(&mut on_gpu, &x.to_device(dev).unwrap(), decay).unwrap();
            common::assert_identical(&format!("n {n}, decay {decay}"), &on_gpu.to_vec().unwrap(), &on_cpu.to_vec().unwrap());
        }
    });
}

/// A model's tensors: every shape above, repeated past the 32 a multi-tensor launch takes.
fn many_shapes(rng: &mut ChaCha8Rng, count: usize) -> Vec<Vec<usize>> {
    let shapes = cuda_param_shapes(rng);
    (0..count).map(|i| shapes[i % shapes.len()].clone()).collect()
}

/// `sgd_steps` (plain SGD, weight decay on) over a model's tensors equals `sgd_step` tensor by
/// tensor, bit for bit, on the CPU and on the GPU (40 tensors in two launches), over three steps;
/// momentum, whose buffers are per tensor, is refused rather than ignored.
#[test]
fn sgd_steps_equal_one_step_per_tensor() {
    use dpgan::backend::ops::sgd_steps;
    let mut rng = rng("sgd_steps_equal_one_step_per_tensor");
    let hp = SgdParams { lr: 0.07, momentum: 0.0, dampening: 0.0, weight_decay: 1e-3, nesterov: false };
    let shapes = many_shapes(&mut rng, 40);
    let start: Vec<Tensor> = shapes.iter().map(|s| randn(&mut rng, s)).collect();
    let grads: Vec<Vec<Tensor>> = (0..3).map(|_| shapes.iter().map(|s| randn(&mut rng, s)).collect()).collect();
    let check = |device: &Device| {
        let mut one_by_one: Vec<Tensor> = start.iter().map(|t| t.to_device(device).unwrap()).collect();
        let mut together = one_by_one.clone();
        for (step, grads) in grads.iter().enumerate() {
            let grads: Vec<Tensor> = grads.iter().map(|g| g.to_device(device).unwrap()).collect();
            for (p, g) in one_by_one.iter_mut().zip(&grads) {
                sgd_step(p, g, None, &hp).unwrap();
            }
            let mut pairs: Vec<(&mut Tensor, &Tensor)> = together.iter_mut().zip(&grads).collect();
            sgd_steps(&mut pairs, &hp).unwrap();
            for (i, (a, b)) in one_by_one.iter().zip(&together).enumerate() {
                assert_close(&format!("{device:?} tensor {i}, step {step}"), &b.to_vec().unwrap(), &a.to_vec().unwrap(), BIT_IDENTICAL);
            }
        }
        let (mut p, g) = (start[0].to_device(device).unwrap(), grads[0][0].to_device(device).unwrap());
        let err = sgd_steps(&mut [(&mut p, &g)], &SgdParams { momentum: 0.9, ..hp }).unwrap_err().to_string();
        assert!(err.contains("without momentum"), "{err}");
    };
    check(&Device::Cpu);
    on_cuda("sgd_steps_equal_one_step_per_tensor", check);
}

/// `adam_steps` over a model's tensors equals `adam_step` tensor by tensor, bit for bit: on the
/// CPU, and on the GPU (the multi-tensor kernel, 40 tensors in two launches, against the
/// single-tensor one), over three steps from a random mid-run state.
#[test]
fn adam_steps_equal_one_step_per_tensor() {
    use dpgan::backend::ops::adam_steps;
    use dpgan::backend::AdamTensors;
    let mut rng = rng("adam_steps_equal_one_step_per_tensor");
    let hp = adam_configs()[2];
    let shapes = many_shapes(&mut rng, 40);
    let state = |rng: &mut ChaCha8Rng, device: &Device| -> Vec<[Tensor; 3]> {
        shapes.iter().map(|s| [randn(rng, s), randn(rng, s), uniform(rng, s, 0.0, 2.0)].map(|t| t.to_device(device).unwrap())).collect()
    };
    let grads: Vec<Vec<Tensor>> = (0..3).map(|_| shapes.iter().map(|s| randn(&mut rng, s)).collect()).collect();
    let check = |device: &Device, rng: &mut ChaCha8Rng| {
        let mut one_by_one = state(rng, device);
        // Clones share storage until written: each update copies first (see above).
        let mut together: Vec<[Tensor; 3]> = one_by_one.clone();
        for (step, grads) in grads.iter().enumerate() {
            let t = 7 + step as u64;
            let grads: Vec<Tensor> = grads.iter().map(|g| g.to_device(device).unwrap()).collect();
            for ([p, m, v], g) in one_by_one.iter_mut().zip(&grads) {
                adam_step(p, g, m, v, t, &hp).unwrap();
            }
            let mut tensors: Vec<AdamTensors<'_>> =
                together.iter_mut().zip(&grads).map(|([param, m, v], grad)| AdamTensors { param, grad, m, v }).collect();
            adam_steps(&mut tensors, t, &hp).unwrap();
            for (i, (a, b)) in one_by_one.iter().zip(&together).enumerate() {
                for (name, x, y) in [("param", &a[0], &b[0]), ("m", &a[1], &b[1]), ("v", &a[2], &b[2])] {
                    assert_close(
                        &format!("{device:?} tensor {i} {name}, step {t}"),
                        &y.to_vec().unwrap(),
                        &x.to_vec().unwrap(),
                        BIT_IDENTICAL,
                    );
                }
            }
        }
    };
    check(&Device::Cpu, &mut rng);
    on_cuda("adam_steps_equal_one_step_per_tensor", |dev| check(dev, &mut rng));
}

/// `ema_updates` equals `ema_update` pair by pair, bit for bit, on the CPU and on the GPU (40 pairs,
/// two launches), and refuses a pair whose shapes differ.
#[test]
fn ema_updates_equal_one_update_per_tensor() {
    use dpgan::backend::ops::{ema_update, ema_updates};
    let mut rng = rng("ema_updates_equal_one_update_per_tensor");
    let shapes = many_shapes(&mut rng, 40);
    let emas: Vec<Tensor> = shapes.iter().map(|s| randn(&mut rng, s)).collect();
    let xs: Vec<Tensor> = shapes.iter().map(|s| randn(&mut rng, s)).collect();
    let check = |device: &Device| {
        let xs: Vec<Tensor> = xs.iter().map(|x| x.to_device(device).unwrap()).collect();
        let mut one_by_one: Vec<Tensor> = emas.iter().map(|e| e.to_device(device).unwrap()).collect();
        let mut together: Vec<Tensor> = emas.iter().map(|e| e.to_device(device).unwrap()).collect();
        for (e, x) in one_by_one.iter_mut().zip(&xs) {
            ema_update(e, x, 0.999).unwrap();
        }
        let mut pairs: Vec<(&mut Tensor, &Tensor)> = together.iter_mut().zip(&xs).collect();
        ema_updates(&mut pairs, 0.999).unwrap();
        for (i, (a, b)) in one_by_one.iter().zip(&together).enumerate() {
            assert_close(&format!("{device:?} pair {i}"), &b.to_vec().unwrap(), &a.to_vec().unwrap(), BIT_IDENTICAL);
        }
    };
    check(&Device::Cpu);
    on_cuda("ema_updates_equal_one_update_per_tensor", check);
    let (mut a, b) = (randn(&mut rng, &[2, 3]), randn(&mut rng, &[3, 2]));
    assert!(ema_updates(&mut [(&mut a, &b)], 0.5).is_err(), "shapes differ");
}
