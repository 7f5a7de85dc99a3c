//! Differential privacy: per-example gradient norms and clipping.
pub mod clip;
