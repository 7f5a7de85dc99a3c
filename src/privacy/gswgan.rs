//! GS-WGAN's privacy accounting (Chen, Orekondy, Fritz 2020), in the two ways SPEC.md names.
//!
//! `as-published`: the Gaussian mechanism (RDP α/(2σ²)) amplified by subsampling WITHOUT
//! replacement at γ = 1/k (Wang, Balle, Kasiviswanathan 2019, "Subsampled Rényi DP and analytical
//! moments accountant", Theorem 9, the general upper bound), composed B·T times, converted with the
//! classic formula. This reproduces the published ε = 10.
//!
//! `per-step`: one generator step selects one discriminator (q = 1/k) and all B sanitised
//! gradients of that step depend on its slice, so the step is counted once, as a Poisson-subsampled
//! Gaussian with effective noise multiplier σ/√B, T times. Far larger ε; dpgan reports both.
use serde::{Deserialize, Serialize};

use super::conversion::{self, check_delta, Conversion, Guarantee};
use super::special::{log_add, LogBinomials};
use super::{check_steps, dp_sgd_epsilon};
use crate::{Error, Result};

/// Integer orders searched by the as-published accounting: 2..=MAX_ORDER.
pub const MAX_ORDER: u64 = 256;
/// Step of the 1-D search around the best integer order.
const FINE_STEP: f64 = 1e-3;

/// The parameters of a GS-WGAN run that accounting needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GsWganRun {
    /// σ of the sanitiser (noise std 2σC/B per gradient, sensitivity 2C/B).
    pub noise_multiplier: f64,
    /// k, the number of discriminators (data slices); one is chosen per iteration.
    pub discriminators: u64,
    /// B, the batch size of a generator step.
    pub batch_size: u64,
}

impl GsWganRun {
    pub fn check(&self) -> Result<()> {
        if !(self.noise_multiplier > 0.0 && self.noise_multiplier.is_finite()) {
            return Err(Error::Invalid(format!("noise multiplier σ must be positive and finite, got {}", self.noise_multiplier)));
        }
        if self.discriminators == 0 {
            return Err(Error::Invalid("the number of discriminators k must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Invalid("the batch size B must be at least 1".into()));
        }
        Ok(())
    }

    /// γ = 1/k.
    pub fn sampling_ratio(&self) -> f64 {
        1.0 / self.discriminators as f64
    }

    /// σ/√B, the noise multiplier of one generator step counted as one mechanism.
    pub fn per_step_noise_multiplier(&self) -> f64 {
        self.noise_multiplier / (self.batch_size as f64).sqrt()
    }
}

/// WBK Theorem 9 with ε(j) = j/(2σ²): for integer α ≥ 2,
/// K(α) = min{(α−1)ε(α), ln[1 + γ²C(α,2)·min(4(e^{ε(2)}−1), 2e^{ε(2)}) + Σ_{j=3..α} 2γʲC(α,j)e^{(j−1)ε(j)}]},
/// the bound on the cumulant (α−1)·RDP(α) of one subsampled query. The sum is taken in log-space.
pub fn log_moment_integer(noise_multiplier: f64, gamma: f64, alpha: u64) -> f64 {
    let gaussian = |j: f64| j / (2.0 * noise_multiplier * noise_multiplier);
    let ln_gamma = gamma.ln();
    let eps2 = gaussian(2.0);
    let mut log_sum = 0.0; // the 1
    for (j, log_coef, _) in LogBinomials::new(alpha as f64).take(alpha as usize + 1).skip(2) {
        let jf = j as f64;
        let term = if j == 2 {
            2.0 * ln_gamma + log_coef + (4.0 * eps2.exp_m1()).min(2.0 * eps2.exp()).ln()
        } else {
            std::f64::consts::LN_2 + jf * ln_gamma + log_coef + (jf - 1.0) * gaussian(jf)
        };
        log_sum = log_add(log_sum, term);
    }
    ((alpha as f64 - 1.0) * gaussian(alpha as f64)).min(log_sum)
}

/// Per-query RDP at any order α > 1, as SPEC.md defines it for the as-published accounting:
/// α ≤ 2 uses K(2); otherwise K is interpolated linearly between the neighbouring integers; then
/// divided by α−1 and capped by the unamplified Gaussian's α/(2σ²).
pub fn per_query_rdp(noise_multiplier: f64, gamma: f64, alpha: f64) -> Result<f64> {
    super::rdp::check_order(alpha)?;
    let k = if alpha <= 2.0 {
        log_moment_integer(noise_multiplier, gamma, 2)
    } else {
        let lo = alpha.floor();
        let k_lo = log_moment_integer(noise_multiplier, gamma, lo as u64);
        if alpha == lo {
            k_lo
        } else {
            let k_hi = log_moment_integer(noise_multiplier, gamma, lo as u64 + 1);
            k_lo + (alpha - lo) * (k_hi - k_lo)
        }
    };
    Ok((k / (alpha - 1.0)).min(alpha / (2.0 * noise_multiplier * noise_multiplier)))
}

/// The as-published accounting after `iterations` generator iterations: B·T compositions, classic
/// conversion, minimised over integer orders 2..=256 and then over a 1e-3 grid within ±1 of the
/// best integer.
pub fn as_published(run: &GsWganRun, iterations: u64, delta: f64) -> Result<Guarantee> {
    run.check()?;
    check_steps(iterations)?;
    check_delta(delta)?;
    let gamma = run.sampling_ratio();
    let compositions = (run.batch_size * iterations) as f64;
    let at = |alpha: f64| -> Result<f64> {
        let rdp = compositions * per_query_rdp(run.noise_multiplier, gamma, alpha)?;
        Ok(conversion::epsilon_at(alpha, rdp, delta, Conversion::Classic))
    };
    let mut best = Guarantee { epsilon: f64::INFINITY, delta, order: f64::NAN };
    for alpha in 2..=MAX_ORDER {
        let eps = at(alpha as f64)?;
        if eps < best.epsilon {
            best = Guarantee { epsilon: eps, delta, order: alpha as f64 };
        }
    }
    let centre = best.order;
    for step in 0..=(2.0 / FINE_STEP) as u64 {
        let alpha = centre - 1.0 + step as f64 * FINE_STEP;
        if alpha <= 1.0 {
            continue;
        }
        let eps = at(alpha)?;
        if eps < best.epsilon {
            best = Guarantee { epsilon: eps, delta, order: alpha };
        }
    }
    Ok(best)
}

/// The per-step accounting: T Poisson-subsampled Gaussian steps at q = 1/k with noise multiplier
/// σ/√B, through the same RDP and conversion as DP-SGD.
pub fn per_step(run: &GsWganRun, iterations: u64, delta: f64, orders: &[f64], conversion: Conversion) -> Result<Guarantee> {
    run.check()?;
    dp_sgd_epsilon(run.sampling_ratio(), run.per_step_noise_multiplier(), iterations, delta, orders, conversion)
}
