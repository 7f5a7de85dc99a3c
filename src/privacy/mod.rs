//! Privacy accounting: Rényi DP of the Poisson-subsampled Gaussian (the DP-SGD step of DP-CGAN),
//! conversion to (ε, δ), calibration of the noise multiplier for a target ε, GS-WGAN's two
//! accountings, and an [`Accountant`] that composes a run's steps and refuses to overspend.
//!
//! Exactness first: every number here must match the public reference libraries (TF-Privacy,
//! Opacus) on the same inputs to 1e-6 relative, and never fall below the exact value.
pub mod accountant;
pub mod calibrate;
pub mod conversion;
pub mod gswgan;
pub mod rdp;
pub mod special;

pub use accountant::{Accountant, Mechanism};
pub use calibrate::calibrate_noise_multiplier;
pub use conversion::{Conversion, Guarantee};
pub use rdp::{rdp_subsampled_gaussian, Orders};

use crate::{Error, Result};

/// Checks a step count: at least one.
pub fn check_steps(steps: u64) -> Result<()> {
    if steps == 0 {
        return Err(Error::Invalid("the number of steps must be at least 1".into()));
    }
    Ok(())
}

/// (ε, δ) of `steps` compositions of the Poisson-subsampled Gaussian (rate `sample_rate`, noise
/// multiplier `noise_multiplier`): RDP adds up over steps at each order, then one conversion.
pub fn dp_sgd_epsilon(
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
    orders: &[f64],
    conversion: Conversion,
) -> Result<Guarantee> {
    rdp::check_mechanism(sample_rate, noise_multiplier)?;
    check_steps(steps)?;
    conversion::check_delta(delta)?;
    let per_step = rdp::rdp_curve(sample_rate, noise_multiplier, orders)?;
    let total: Vec<f64> = per_step.iter().map(|r| r * steps as f64).collect();
    conversion::epsilon(orders, &total, delta, conversion)
}
