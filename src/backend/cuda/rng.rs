//! Launcher of `kernels/rng.cu`: Gaussian noise added in place, one element per thread
//! (grid-stride, 256 threads per block, at most 16 blocks per SM).
use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::device::CudaDevice;
use super::elementwise::grid_for;
use super::launched;
use super::module::Kernel;
use super::optim::buffer_mut;
use super::params::{GaussianNoiseParams, NoiseKeyParams};
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
