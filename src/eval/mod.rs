//! Evaluating synthetic data: classifiers trained on it, scored on the real test set.
pub mod metrics;
