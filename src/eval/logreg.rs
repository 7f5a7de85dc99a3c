//! One-vs-rest logistic regression with an L2 penalty, scikit-learn's `LogisticRegression(C=1,
//! multi_class="ovr")`: one binary problem per class k,
//!
//!   minimise  Σᵢ log-loss(yᵢₖ, xᵢ·wₖ + bₖ) + ½‖wₖ‖² / C   (the intercept bₖ not penalised),
//!
//! solved to convergence by full-batch L-BFGS. The ten problems are independent, so their sum is
//! minimised at once (one `[N, D] · [D, 10]` product per evaluation); the objective is divided by N,
//! as scikit-learn does, so that the stopping tolerance does not depend on the set's size. Loss and
//! gradient come from the tape on the inputs' device; the L-BFGS bookkeeping (7,850 numbers) runs on
//! the host in f64.
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

use super::features::{one_hot_targets, score_rows, Features};

/// Solver settings. The defaults are scikit-learn's C and tolerance; its default of 100 iterations
/// stops short of convergence on MNIST, so dpgan allows more. A few thousand images converge in a few
/// hundred iterations; the full 60,000-image training set is ill-conditioned at C = 1 (pixels that
/// are always background move only with the intercept and the weak penalty) and ends 1,000
/// iterations at max |gradient| ≈ 1.5e-4, which the report states as not converged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogRegConfig {
    /// Inverse regularisation strength.
    pub c: f64,
    /// Stop when every component of the (size-normalised) objective's gradient is at most this.
    pub tolerance: f64,
    pub max_iterations: usize,
    /// Curvature pairs L-BFGS keeps (scipy's default, which scikit-learn uses).
    pub memory: usize,
}

impl Default for LogRegConfig {
    fn default() -> Self {
        LogRegConfig { c: 1.0, tolerance: 1e-4, max_iterations: 1000, memory: 10 }
    }
}

/// How the solver ended.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Convergence {
    pub iterations: usize,
    /// max |∂f/∂θ| at the returned parameters.
    pub max_gradient: f64,
    /// The gradient met the tolerance.
    pub converged: bool,
}

/// The fitted binary models: weights `[1, 10, D]` and intercepts `[1, 10]`.
#[derive(Clone, Debug)]
pub struct LogReg {
    pub weight: Tensor,
    pub bias: Tensor,
    pub convergence: Convergence,
}

/// The objective `f = (Σᵢₖ BCE(xᵢ·wₖ + bₖ, yᵢₖ) + ½‖W‖²/C) / N` and its gradients `(f, ∂f/∂W, ∂f/∂b)`,
/// for `x` `[1, N, D]`, one-hot `targets` `[1, N, 10]`, `weight` `[1, 10, D]`, `bias` `[1, 10]`, in
/// the inputs' dtype and on their device.
pub fn objective(x: &Tensor, targets: &Tensor, weight: &Tensor, bias: &Tensor, c: f64) -> Result<(f64, Tensor, Tensor)> {
    let n = x.shape().get(1).copied().unwrap_or(0);
    if n == 0 || c <= 0.0 {
        return Err(Error::Invalid(format!("logistic regression: {n} examples, C = {c} (needs examples and C > 0)")));
    }
    let tape = Tape::new();
    tape.watch(weight);
    tape.watch(bias);
    let logits = tape.linear(x, weight, Some(bias))?;
    let data_loss = tape.sum_all(&tape.bce_with_logits(&logits, targets)?)?;
    // Divisions by tensors in the inputs' dtype, not f32 scale factors: an f64 check stays exact.
    let penalty = tape.div(&tape.sum_all(&tape.square(weight)?)?, &x.full_like(&[], 2.0 * c)?)?;
    let total = tape.div(&tape.add(&data_loss, &penalty)?, &x.full_like(&[], n as f64)?)?;
    let mut grads = tape.backward(&total)?;
    let d_weight = grads.remove(weight).ok_or_else(|| Error::Autograd("logistic regression: no weight gradient".into()))?;
    let d_bias = grads.remove(bias).ok_or_else(|| Error::Autograd("logistic regression: no bias gradient".into()))?;
    Ok((total.to_vec_f64()?[0], d_weight, d_bias))
}

/// A tensor of `values` with `like`'s dtype and device.
fn tensor_like(like: &Tensor, values: &[f64], shape: &[usize]) -> Result<Tensor> {
    match like.dtype() {
        DType::F64 => Tensor::from_vec_f64(values.to_vec(), shape),
        DType::F32 => Tensor::from_vec(values.iter().map(|&v| v as f32).collect(), shape, &like.device()),
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

impl LogReg {
    /// Fits on `x` (rows of features) with `labels`, computing on `device`.
    pub fn fit(x: &Features, labels: &[u8], config: &LogRegConfig, device: &Device) -> Result<LogReg> {
        let all: Vec<usize> = (0..x.rows).collect();
        let inputs = x.gather(&all, &[1, x.rows, x.dim], device)?;
        let targets = one_hot_targets(labels, &all, device)?;
        Self::fit_tensors(&inputs, &targets, config)
    }

    /// Fits on `x` `[1, N, D]` against one-hot `targets` `[1, N, 10]` in their dtype, on their
    /// device, from zero weights (so the result does not depend on a seed).
    pub fn fit_tensors(x: &Tensor, targets: &Tensor, config: &LogRegConfig) -> Result<LogReg> {
        let (classes, dim) = (targets.shape().last().copied().unwrap_or(0), x.shape().last().copied().unwrap_or(0));
        let unpack = |theta: &[f64]| -> Result<(Tensor, Tensor)> {
            let (w, b) = theta.split_at(classes * dim);
            Ok((tensor_like(x, w, &[1, classes, dim])?, tensor_like(x, b, &[1, classes])?))
        };
        let evaluate = |theta: &[f64]| -> Result<(f64, Vec<f64>)> {
            let (w, b) = unpack(theta)?;
            let (f, dw, db) = objective(x, targets, &w, &b, config.c)?;
            let mut g = dw.to_vec_f64()?;
            g.extend(db.to_vec_f64()?);
            if !f.is_finite() {
                return Err(Error::Invalid("logistic regression: the objective is not finite (NaN or infinite inputs?)".into()));
            }
            Ok((f, g))
        };
        let mut theta = vec![0.0; classes * (dim + 1)];
        let (mut f, mut g) = evaluate(&theta)?;
        let mut history: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new(); // (s, y, 1 / yᵀs)
        let mut iterations = 0;
        let mut stalled = 0;
        let epsilon = if x.dtype() == DType::F64 { f64::EPSILON } else { f32::EPSILON as f64 };
        while iterations < config.max_iterations && max_abs(&g) > config.tolerance {
            iterations += 1;
            let mut direction = two_loop(&g, &history);
            let mut slope = dot(&g, &direction);
            if slope >= 0.0 {
                // Not a descent direction (stale curvature): restart from steepest descent.
                history.clear();
                direction = g.iter().map(|v| -v).collect();
                slope = -dot(&g, &g);
            }
            // The first step has no curvature to scale it: keep it within a unit change.
            let mut step = if history.is_empty() { 1.0 / max_abs(&direction).max(1.0) } else { 1.0 };
            let mut accepted = None;
            for _ in 0..40 {
                let trial: Vec<f64> = theta.iter().zip(&direction).map(|(t, d)| t + step * d).collect();
                let (f_trial, g_trial) = evaluate(&trial)?;
                // Armijo's sufficient decrease.
                if f_trial <= f + 1e-4 * step * slope {
                    accepted = Some((trial, f_trial, g_trial));
                    break;
                }
                step *= 0.5;
            }
            // No decrease left to find at the arithmetic's precision: this is the minimum it can resolve.
            let Some((trial, f_trial, g_trial)) = accepted else { break };
            // Steps that change f by no more than its rounding: the gradient is as small as this
            // dtype can resolve; stop instead of spending the remaining iterations.
            stalled = if f - f_trial <= 4.0 * epsilon * f.abs() { stalled + 1 } else { 0 };
            if stalled == 10 {
                (theta, g) = (trial, g_trial);
                break;
            }
            let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = g_trial.iter().zip(&g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
                if history.len() == config.memory.max(1) {
                    history.remove(0);
                }
                history.push((s, y, 1.0 / sy));
            }
            (theta, f, g) = (trial, f_trial, g_trial);
        }
        let max_gradient = max_abs(&g);
        let (weight, bias) = unpack(&theta)?;
        Ok(LogReg { weight, bias, convergence: Convergence { iterations, max_gradient, converged: max_gradient <= config.tolerance } })
    }

    /// Each binary model's probability σ(x·wₖ + bₖ) for every row (`rows × 10`): one-vs-rest scores,
    /// not normalised across classes.
    pub fn scores(&self, x: &Features) -> Result<Vec<f64>> {
        let device = self.weight.device();
        let tape = Tape::new();
        let forward = |batch: &Tensor| tape.linear(batch, &self.weight, Some(&self.bias));
        score_rows(x, &device, forward, |row| row.iter_mut().for_each(|z| *z = 1.0 / (1.0 + (-*z).exp())))
    }
}

/// L-BFGS's two-loop recursion: `−H·g` with H the inverse-Hessian estimate from the stored pairs,
/// scaled by `sᵀy / yᵀy` of the newest pair.
fn two_loop(g: &[f64], history: &[(Vec<f64>, Vec<f64>, f64)]) -> Vec<f64> {
    let mut q = g.to_vec();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, rho) in history.iter().rev() {
        let alpha = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= alpha * yi);
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = history.last() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|qi| *qi *= gamma);
    }
    for ((s, y, rho), alpha) in history.iter().zip(alphas.into_iter().rev()) {
        let beta = rho * dot(y, &q);
        q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (alpha - beta) * si);
    }
    q.iter_mut().for_each(|qi| *qi = -*qi);
    q
}
