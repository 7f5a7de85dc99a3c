//! The published models.
pub mod dpcgan;
pub mod dpsgd_gan;
pub mod gswgan;
