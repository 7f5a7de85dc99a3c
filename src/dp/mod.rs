//! Differential privacy: per-example gradient norms and clipping, reproducible Gaussian noise, and
//! GS-WGAN's gradient sanitiser.
pub mod clip;
pub mod noise;
pub mod sanitize;

pub use noise::{NoiseKey, NoiseMode, NoiseSource};
pub use sanitize::GsWganSanitizer;
