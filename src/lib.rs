//! dpgan: differentially private GANs (DP-CGAN, GS-WGAN) on hand-written CUDA kernels, with a CPU
//! reference backend, an autograd tape and privacy accounting.
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod data;
pub mod dp;
pub mod error;
pub mod eval;
pub mod io;
pub mod models;
pub mod nn;
pub mod optim;
pub mod privacy;
pub mod profile;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{Device, Tensor};
