//! GS-WGAN's gradient sanitiser (docs/algorithms.md §2, phase 2 step 4): the gradient of the generator loss
//! with respect to each generated image, `g` of shape `[G, B, D]`, is clipped row by row to norm
//! C/B and noised with `N(0, (2σC/B)²)` per element, fresh for every sample. dpgan does this as an
//! explicit step between "D backward to the image" and "G backward", never in a hook.
use super::noise::NoiseKey;
use super::rounding::{f32_toward_zero, round_up_to_f32};
use crate::backend::{ops, RowNorm};
use crate::error::{ensure_shape, Error, Result};
use crate::profile;
use crate::tensor::Tensor;

/// The sanitiser's hyper-parameters as the paper states them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GsWganSanitizer {
    /// C: the clip bound before division by the batch size (1 in the paper).
    pub clip_norm: f64,
    /// σ (1.07 in the paper); 0 gives the non-private control, rows rescaled to norm C/B.
    pub noise_multiplier: f64,
    /// The factor 2 of the noise std 2σC/B: replacing one sample moves a clipped row by up to
    /// 2·C/B.
    pub sensitivity_factor: f64,
}

impl GsWganSanitizer {
    /// The paper's sanitiser: sensitivity factor 2.
    pub fn new(clip_norm: f64, noise_multiplier: f64) -> Result<Self> {
        if !(clip_norm.is_finite() && clip_norm > 0.0 && noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(Error::Invalid(format!(
                "GS-WGAN sanitiser: clip norm {clip_norm} must be > 0 and noise multiplier {noise_multiplier} ≥ 0"
            )));
        }
        Ok(GsWganSanitizer { clip_norm, noise_multiplier, sensitivity_factor: 2.0 })
    }

    /// The row clip bound C/B and the noise std 2σC/B for batch size B, computed in f64 and rounded
    /// once to f32: the bound toward zero, the std up (`dp::rounding`), so that neither rounding
    /// lowers the noise below what the accountant's σ assumes.
    pub fn bounds(&self, batch: usize) -> (f32, f32) {
        let per_row = self.clip_norm / batch as f64;
        (f32_toward_zero(per_row), round_up_to_f32(self.sensitivity_factor * self.noise_multiplier * per_row))
    }

    /// `ĝᵢ = gᵢ·min(1, (C/B)/(‖gᵢ‖ + 1e-10)) + N(0, (2σC/B)²)` for every row `gᵢ` of `g`
    /// (`[G, B, D]`; B is the batch size), noise drawn from `key`. With σ = 0 (the non-private
    /// control, docs/algorithms.md §2) every row is instead rescaled to exactly norm C/B, without the `min`.
    pub fn sanitize(&self, g: &Tensor, key: &NoiseKey) -> Result<Tensor> {
        ensure_shape!(g.rank() == 3 && g.shape()[1] > 0, "gs_wgan_sanitize", "gradient must be [G, B, D] with B > 0, got {:?}", g.shape());
        let (clip, noise_std) = self.bounds(g.shape()[1]);
        let rows = if self.noise_multiplier == 0.0 { RowNorm::Exactly } else { RowNorm::AtMost };
        let _range = profile::range("sanitize");
        ops::sanitize_rows(g, clip, rows, noise_std, key)
    }
}
