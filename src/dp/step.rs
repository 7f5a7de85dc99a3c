//! The DP-SGD gradient as one call: per-example clipping of one or more losses, Gaussian noise of
//! standard deviation σC added once per coordinate, division by the batch size.
//!
//! Several losses can be clipped separately (each example's norm bounded by C within its own loss)
//! and summed into one gradient, with the noise added once if any of them touched private data.
//! DP-CGAN and DPSGD-GAN pass their real and generated examples as one loss over one batch: each
//! example is its own term, so that is the same clipping in one pass.
use super::clip::{clip_factors, per_example_sq_norms, PerExampleGrad};
use super::noise::NoiseSource;
use crate::backend::{ops, BinaryOp};
use crate::error::{ensure_shape, Error, Result};
use crate::profile;
use crate::tensor::Tensor;

/// One loss whose examples are clipped together: each example's gradient over all `layers` is
/// scaled to norm at most C. `noised` says whether it touched private data.
pub struct ClippedLoss<'a> {
    pub layers: Vec<&'a dyn PerExampleGrad>,
    pub noised: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpSgdConfig {
    /// The clipping norm C.
    pub clip: f32,
    /// σ: the noise standard deviation is σ·C.
    pub noise_multiplier: f32,
    /// What the summed gradient is divided by: the batch size, or under Poisson sampling the
    /// expected batch size q·N (so that the sensitivity stays C/divisor whatever the draw).
    pub batch_divisor: f32,
}

/// The DP-SGD gradient of the parameters that `losses`' layers share, in layer order (each layer's
/// weight, then its bias if it has one): `(Σ_losses Σᵢ cᵢgᵢ + N(0, σ²C²)) / divisor`, the noise
/// drawn once, from `noise`'s key at `step` (tensor index = parameter index), if any loss is noised.
pub fn private_gradients(losses: &[ClippedLoss], config: &DpSgdConfig, noise: &NoiseSource, step: u64) -> Result<Vec<Tensor>> {
    if !(config.noise_multiplier.is_finite() && config.noise_multiplier >= 0.0) {
        return Err(Error::Invalid(format!("noise multiplier must be finite and non-negative, got {}", config.noise_multiplier)));
    }
    if !(config.batch_divisor.is_finite() && config.batch_divisor > 0.0) {
        return Err(Error::Invalid(format!("batch divisor must be positive, got {}", config.batch_divisor)));
    }
    if losses.is_empty() {
        return Err(Error::Invalid("DP-SGD step with no loss".into()));
    }
    let _step = profile::range("dp_sgd_gradients");
    let mut totals: Option<Vec<Tensor>> = None;
    for loss in losses {
        let _clip = profile::range("per_example_clip");
        let factors = clip_factors(&per_example_sq_norms(&loss.layers)?, config.clip)?;
        let mut sums = Vec::new();
        let _sums = profile::range("clipped_sums");
        for layer in &loss.layers {
            let c = layer.clipped_sum(&factors)?;
            sums.push(c.weight);
            sums.extend(c.bias);
        }
        totals = Some(match totals {
            None => sums,
            Some(acc) => {
                ensure_shape!(acc.len() == sums.len(), "private_gradients", "losses cover different parameter lists");
                acc.iter().zip(&sums).map(|(a, s)| ops::binary(BinaryOp::Add, a, s)).collect::<Result<_>>()?
            }
        });
    }
    let mut grads = totals.expect("losses is not empty");
    let noise_std = config.noise_multiplier * config.clip;
    if losses.iter().any(|l| l.noised) && noise_std > 0.0 {
        // Noise and the division in one pass over each summed gradient.
        let _noise = profile::range("noise");
        for (index, g) in grads.iter_mut().enumerate() {
            let key = noise.key_at(step, index as u32);
            ops::add_gaussian_noise_and_divide(g, noise_std, config.batch_divisor, &key)?;
        }
        return Ok(grads);
    }
    grads.iter().map(|g| ops::binary(BinaryOp::Div, g, &ops::scalar_like(g, config.batch_divisor as f64)?)).collect()
}
