//! The smallest noise multiplier that meets a target ε.
//!
//! ε is decreasing in σ (the RDP of the subsampled Gaussian decreases in σ at every order, and the
//! conversion is a minimum over orders of increasing functions of it), so bisection on ln σ finds
//! the boundary. The search keeps the invariant "ε(σ_hi) ≤ target" and returns σ_hi, so the answer
//! always meets the target as computed, never just misses it.
use super::conversion::{check_delta, Conversion};
use super::{check_steps, dp_sgd_epsilon, rdp::check_mechanism};
use crate::{Error, Result};

/// The range searched. Below 0.01 the mechanism gives no meaningful privacy; above 1000 the
/// conversion term ln(1/δ)/(α−1) at the largest order dominates and more noise buys nothing.
pub const SIGMA_MIN: f64 = 0.01;
pub const SIGMA_MAX: f64 = 1000.0;
/// Bisection stops when σ_hi/σ_lo < 1 + 1e-12.
const LOG_TOLERANCE: f64 = 1e-12;

/// The smallest σ in [`SIGMA_MIN`], [`SIGMA_MAX`] (to 1e-12 relative) with ε(σ) ≤ `target_epsilon`
/// for `steps` steps at rate `sample_rate`, at `delta`, with the given orders and conversion.
pub fn calibrate_noise_multiplier(
    sample_rate: f64,
    steps: u64,
    delta: f64,
    target_epsilon: f64,
    orders: &[f64],
    conversion: Conversion,
) -> Result<f64> {
    check_mechanism(sample_rate, 1.0)?;
    check_steps(steps)?;
    check_delta(delta)?;
    if !(target_epsilon > 0.0 && target_epsilon.is_finite()) {
        return Err(Error::Invalid(format!("target ε must be positive and finite, got {target_epsilon}")));
    }
    let eps =
        |log_sigma: f64| -> Result<f64> { Ok(dp_sgd_epsilon(sample_rate, log_sigma.exp(), steps, delta, orders, conversion)?.epsilon) };
    let (mut lo, mut hi) = (SIGMA_MIN.ln(), SIGMA_MAX.ln());
    let at_max = eps(hi)?;
    if at_max > target_epsilon {
        return Err(Error::Invalid(format!(
            "target ε = {target_epsilon} is unreachable: even σ = {SIGMA_MAX} gives ε = {at_max} (q = {sample_rate}, {steps} steps, δ = {delta})"
        )));
    }
    let at_min = eps(lo)?;
    if at_min <= target_epsilon {
        return Err(Error::Invalid(format!(
            "target ε = {target_epsilon} is so large that σ = {SIGMA_MIN} already gives ε = {at_min}: no meaningful noise multiplier to report"
        )));
    }
    while hi - lo > LOG_TOLERANCE {
        let mid = 0.5 * (lo + hi);
        if eps(mid)? <= target_epsilon {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi.exp())
}
