//! Differential privacy: per-example gradient norms and clipping, a run's secret key, Gaussian
//! noise addressed by position, the DP-SGD gradient, and GS-WGAN's gradient sanitiser.
pub mod audit;
pub mod clip;
pub mod key;
pub mod noise;
pub mod sanitize;
pub mod step;

pub use key::{KeySource, RunKey, SecretPurpose};
pub use noise::{NoiseKey, NoiseMode, NoiseSource};
pub use sanitize::GsWganSanitizer;
pub use step::{private_gradients, ClippedLoss, DpSgdConfig};
