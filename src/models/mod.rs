//! The published models.
pub mod dpcgan;
