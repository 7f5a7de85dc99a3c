//! Launchers of `kernels/rng.cu`: Gaussian noise added in place and uniform one-hot rows, one
//! element per thread (grid-stride, 256 threads per block, at most 16 blocks per SM).
use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::device::CudaDevice;
use super::elementwise::grid_for;
use super::launched;
use super::module::Kernel;
use super::optim::buffer_mut;
use super::params::{GaussianNoiseParams, NoiseKeyParams, UniformOneHotParams};
use crate::dp::{NoiseKey, NoiseMode};
use crate::error::Result;
use crate::tensor::Tensor;

/// `x ← x + std·z`, z the key's standard normals (ops has checked std and the element count).
pub(crate) fn add_gaussian_noise(dev: &Arc<CudaDevice>, x: &mut Tensor, std: f32, key: &NoiseKey) -> Result<()> {
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let p = GaussianNoiseParams { n: n as i64, std, pad_: 0, key: NoiseKeyParams::new(key) };
    let k = match key.mode {
        NoiseMode::Fast => Kernel::GaussianAddPhilox,
        NoiseMode::Secure => Kernel::GaussianAddChacha,
    };
    let x_buf = &mut buffer_mut(x)?.slice;
    let _range = crate::profile::range(k.symbol());
    // SAFETY: x holds n floats (p.n = n); the kernel reads and writes x[i] for i < n only, and x is
    // unshared (storage_mut copied a shared buffer first).
    let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(x_buf).launch(grid_for(dev, n)) };
    launched(k, r)
}

/// Every element of `out` `[.., classes]` overwritten with one-hot rows of the Philox key's classes
/// (ops has checked the mode, that classes ≥ 1 and that rows and classes fit in 32 bits).
pub(crate) fn uniform_one_hot(dev: &Arc<CudaDevice>, out: &mut Tensor, key: &NoiseKey) -> Result<()> {
    let n = out.numel();
    if n == 0 {
        return Ok(());
    }
    let classes = out.shape()[out.rank() - 1];
    let p = UniformOneHotParams { rows: (n / classes) as i64, classes: classes as u32, pad_: 0, key: NoiseKeyParams::new(key) };
    let k = Kernel::UniformOneHotPhilox;
    let out_buf = &mut buffer_mut(out)?.slice;
    let _range = crate::profile::range(k.symbol());
    // SAFETY: out holds rows·classes = n floats; the kernel writes every out[i], i < n, and out is
    // unshared (storage_mut copied a shared buffer first).
    let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(out_buf).launch(grid_for(dev, n)) };
    launched(k, r)
}
