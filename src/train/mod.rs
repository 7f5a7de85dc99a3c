//! Training steps of the published algorithms.
pub mod dpcgan;
pub mod gswgan;
