//! The published models.
pub mod dpcgan;
pub mod gswgan;
