//! The DP-SGD gradient as one call: per-example clipping of one or more losses, Gaussian noise of
//! standard deviation σC added once per coordinate, division by the batch size.
//!
//! [`private_update`] takes the optimizer step too, fusing noise, division and update per tensor.
//!
//! Several losses can be clipped separately (each example's norm bounded by C within its own loss)
//! and summed into one gradient, with the noise added once if any of them touched private data.
//! DP-CGAN and DPSGD-GAN pass their real and generated examples as one loss over one batch: each
//! example is its own term, so that is the same clipping in one pass.
use super::clip::{clip_factors, per_example_sq_norms, PerExampleGrad};
use super::finite::nonfinite_flag;
use super::noise::NoiseSource;
use super::rounding::round_up_to_f32;
use crate::backend::{ops, BinaryOp, GradientNoise};
use crate::error::{ensure_shape, Error, Result};
use crate::optim::Optimizer;
use crate::profile;
use crate::tensor::Tensor;

/// One loss whose examples are clipped together: each example's gradient over all `layers` is
/// scaled to norm at most C. `noised` says whether it touched private data.
pub struct ClippedLoss<'a> {
    pub layers: Vec<&'a dyn PerExampleGrad>,
    pub noised: bool,
    /// Each example's weight `[G, B]`, each in [0, 1], applied to its clip factor (so every
    /// example's contribution stays within the bound): 0 for the padding rows of a batch padded
    /// to a fixed size, which then contribute nothing. `None`: every example weighs 1.
    pub weights: Option<&'a Tensor>,
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

impl DpSgdConfig {
    /// The noise std σ·C the kernels take: the product is exact in f64 and rounded up to f32, so
    /// the noise is never below what the accountant assumes for σ and C.
    pub fn noise_std(&self) -> f32 {
        round_up_to_f32(self.noise_multiplier as f64 * self.clip as f64)
    }
}

/// The DP-SGD gradient of the parameters that `losses`' layers share, in layer order (each layer's
/// weight, then its bias if it has one): `(Σ_losses Σᵢ cᵢgᵢ + N(0, σ²C²)) / divisor`, the noise
/// drawn once, from `noise`'s key at `step` (tensor index = parameter index), if any loss is noised.
pub fn private_gradients(losses: &[ClippedLoss], config: &DpSgdConfig, noise: &NoiseSource, step: u64) -> Result<Vec<Tensor>> {
    let _step = profile::range("dp_sgd_gradients");
    let (mut grads, noised) = clipped_sums(losses, config)?;
    if let Some(std) = noised {
        // Noise and the division in one pass over each summed gradient.
        let _noise = profile::range("noise");
        for (index, g) in grads.iter_mut().enumerate() {
            let key = noise.key_at(step, index as u32);
            ops::add_gaussian_noise_and_divide(g, std, config.batch_divisor, &key)?;
        }
        return Ok(grads);
    }
    divided(&grads, config)
}

/// DP-SGD's update: `optimizer` steps `params` (in the order of [`private_gradients`]) with the
/// gradients `private_gradients` gives for the same arguments, bit for bit; when they are noised,
/// the noise, the division and the update run as one pass per tensor
/// ([`Optimizer::noised_step`]) and the gradients are never written. Returns the step's
/// finiteness flag `[1]`: 0, or NaN if a gradient element was not finite (see
/// [`nonfinite_flag`]).
pub fn private_update(
    losses: &[ClippedLoss],
    config: &DpSgdConfig,
    noise: &NoiseSource,
    step: u64,
    optimizer: &mut dyn Optimizer,
    params: &mut [&mut Tensor],
) -> Result<Tensor> {
    let _step = profile::range("dp_sgd_update");
    let (sums, noised) = clipped_sums(losses, config)?;
    let Some(std) = noised else {
        let grads = divided(&sums, config)?;
        let flag = nonfinite_flag(&grads.iter().collect::<Vec<_>>())?;
        optimizer.step(params, &grads)?;
        return Ok(flag);
    };
    let noises: Vec<GradientNoise> =
        (0..sums.len()).map(|index| GradientNoise { std, divisor: config.batch_divisor, key: noise.key_at(step, index as u32) }).collect();
    let mut flag = sums[0].full_like(&[1], 0.0)?;
    optimizer.noised_step(params, &sums, &noises, &mut flag)?;
    Ok(flag)
}

/// The clipped sums `Σ_losses Σᵢ cᵢgᵢ` per parameter, and the noise std σC if any loss is noised
/// and σ > 0 (else `None`: the gradient is the sum divided).
fn clipped_sums(losses: &[ClippedLoss], config: &DpSgdConfig) -> Result<(Vec<Tensor>, Option<f32>)> {
    if !(config.noise_multiplier.is_finite() && config.noise_multiplier >= 0.0) {
        return Err(Error::Invalid(format!("noise multiplier must be finite and non-negative, got {}", config.noise_multiplier)));
    }
    if !(config.batch_divisor.is_finite() && config.batch_divisor > 0.0) {
        return Err(Error::Invalid(format!("batch divisor must be positive, got {}", config.batch_divisor)));
    }
    if losses.is_empty() {
        return Err(Error::Invalid("DP-SGD step with no loss".into()));
    }
    let mut totals: Option<Vec<Tensor>> = None;
    for loss in losses {
        let _clip = profile::range("per_example_clip");
        let factors = clip_factors(&per_example_sq_norms(&loss.layers)?, config.clip)?;
        let factors = match loss.weights {
            None => factors,
            Some(w) => {
                ensure_shape!(
                    w.shape() == factors.shape(),
                    "private_gradients",
                    "weights {:?} for clip factors {:?}",
                    w.shape(),
                    factors.shape()
                );
                ops::binary(BinaryOp::Mul, &factors, w)?
            }
        };
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
    let sums = totals.expect("losses is not empty");
    let noise_std = config.noise_std();
    let noised = losses.iter().any(|l| l.noised) && noise_std > 0.0;
    Ok((sums, noised.then_some(noise_std)))
}

/// The sums divided by the batch divisor (no noise).
fn divided(sums: &[Tensor], config: &DpSgdConfig) -> Result<Vec<Tensor>> {
    sums.iter().map(|g| ops::binary(BinaryOp::Div, g, &ops::scalar_like(g, config.batch_divisor as f64)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// σ·C rounded to the nearest f32 is below the exact product for some (σ, C), the published
    /// DP-CGAN's among them: the std must be the smallest f32 not below it.
    #[test]
    fn the_noise_std_is_never_below_sigma_times_c() {
        let mut nearest_was_short = 0;
        for (sigma, clip) in [(1.15f32, 1.1f32), (1.0, 1.0), (0.7, 0.3), (1.07, 1.0 / 3.0), (2.9, 0.05)] {
            let std = DpSgdConfig { clip, noise_multiplier: sigma, batch_divisor: 1.0 }.noise_std();
            let exact = sigma as f64 * clip as f64;
            assert!(std as f64 >= exact && (std.next_down() as f64) < exact, "σ {sigma}, C {clip}: std {std} for {exact}");
            nearest_was_short += usize::from(((sigma * clip) as f64) < exact);
        }
        assert!(nearest_was_short > 0, "no case where the f32 product falls short");
    }
}
