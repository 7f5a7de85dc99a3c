//! Optimizer updates, in place, PyTorch's formulas (see `SgdParams` and `AdamParams`).
use super::Real;
use crate::backend::{AdamParams, SgdParams};

pub fn sgd_update<T: Real>(param: &mut [T], grad: &[T], momentum_buf: Option<&mut [T]>, hp: &SgdParams) {
    let (lr, momentum, wd) = (T::of(hp.lr), T::of(hp.momentum), T::of(hp.weight_decay));
    match momentum_buf {
        Some(buf) if hp.momentum != 0.0 => {
            let damp = T::one() - T::of(hp.dampening);
            for ((p, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let g = g + wd * *p;
                *b = momentum * *b + damp * g;
                let step = if hp.nesterov { g + momentum * *b } else { *b };
                *p = *p - lr * step;
            }
        }
        _ => {
            for (p, &g) in param.iter_mut().zip(grad) {
                *p = *p - lr * (g + wd * *p);
            }
        }
    }
}

pub fn adam_update<T: Real>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], t: u64, hp: &AdamParams) {
    let bias1 = 1.0 - (hp.beta1 as f64).powi(t.min(i32::MAX as u64) as i32);
    let bias2 = 1.0 - (hp.beta2 as f64).powi(t.min(i32::MAX as u64) as i32);
    let step_size = T::of_f64(hp.lr as f64 / bias1);
    let bias2_sqrt = T::of_f64(bias2.sqrt());
    let (b1, b2, eps, wd) = (T::of(hp.beta1), T::of(hp.beta2), T::of(hp.eps), T::of(hp.weight_decay));
    for i in 0..param.len() {
        let g = grad[i] + wd * param[i];
        m[i] = b1 * m[i] + (T::one() - b1) * g;
        v[i] = b2 * v[i] + (T::one() - b2) * g * g;
        param[i] = param[i] - step_size * m[i] / (v[i].sqrt() / bias2_sqrt + eps);
    }
}

/// `ema ← decay·ema + (1 − decay)·x`, rounded after each product and the sum (the reference for
/// `optim_ema_update_f32`).
pub fn ema_update<T: Real>(ema: &mut [T], x: &[T], decay: f32) {
    let (keep, take) = (T::of(decay), T::one() - T::of(decay));
    for (e, &v) in ema.iter_mut().zip(x) {
        *e = keep * *e + take * v;
    }
}
