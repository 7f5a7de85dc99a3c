//! Differential privacy: per-example gradient norms and clipping, reproducible Gaussian noise, the
//! DP-SGD gradient, and GS-WGAN's gradient sanitiser.
pub mod clip;
pub mod noise;
pub mod sanitize;
pub mod step;

pub use noise::{NoiseKey, NoiseMode, NoiseSource};
pub use sanitize::GsWganSanitizer;
pub use step::{private_gradients, ClippedLoss, DpSgdConfig};
