//! Differential privacy: per-example gradient norms and clipping, a run's secret key, Gaussian
//! noise addressed by position, the DP-SGD gradient, GS-WGAN's gradient sanitiser, and the check
//! that no update is NaN or infinite.
pub mod audit;
pub mod clip;
pub mod finite;
pub mod key;
pub mod noise;
pub mod rounding;
pub mod sanitize;
pub mod step;

pub use finite::{nonfinite_flag, FiniteChecks};
pub use key::{KeySource, RunKey, SecretPurpose};
pub use noise::{NoiseKey, NoiseMode, NoiseSource};
pub use sanitize::GsWganSanitizer;
pub use step::{private_gradients, private_update, ClippedLoss, DpSgdConfig};
