//! Differential privacy: per-example gradient norms and clipping, reproducible Gaussian noise, the
//! DP-SGD gradient, GS-WGAN's gradient sanitiser, and the check that no update is NaN or infinite.
pub mod clip;
pub mod finite;
pub mod noise;
pub mod sanitize;
pub mod step;

pub use finite::{nonfinite_flag, FiniteChecks};
pub use noise::{NoiseKey, NoiseMode, NoiseSource};
pub use sanitize::GsWganSanitizer;
pub use step::{private_gradients, ClippedLoss, DpSgdConfig};
