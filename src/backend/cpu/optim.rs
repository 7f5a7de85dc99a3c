//! Optimizer updates, in place, PyTorch's formulas (see `SgdParams` and `AdamParams`).
use crate::backend::{AdamParams, SgdParams};

pub fn sgd_update(param: &mut [f32], grad: &[f32], momentum_buf: Option<&mut [f32]>, hp: &SgdParams) {
    match momentum_buf {
        Some(buf) if hp.momentum != 0.0 => {
            for ((p, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let g = g + hp.weight_decay * *p;
                *b = hp.momentum * *b + (1.0 - hp.dampening) * g;
                let step = if hp.nesterov { g + hp.momentum * *b } else { *b };
                *p -= hp.lr * step;
            }
        }
        _ => {
            for (p, &g) in param.iter_mut().zip(grad) {
                *p -= hp.lr * (g + hp.weight_decay * *p);
            }
        }
    }
}

pub fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], t: u64, hp: &AdamParams) {
    let bias1 = 1.0 - (hp.beta1 as f64).powi(t as i32);
    let bias2 = 1.0 - (hp.beta2 as f64).powi(t as i32);
    let step_size = (hp.lr as f64 / bias1) as f32;
    let bias2_sqrt = bias2.sqrt() as f32;
    for i in 0..param.len() {
        let g = grad[i] + hp.weight_decay * param[i];
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
        param[i] -= step_size * m[i] / (v[i].sqrt() / bias2_sqrt + hp.eps);
    }
}
