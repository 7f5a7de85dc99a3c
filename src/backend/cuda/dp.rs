//! Launcher of `kernels/dp.cu`: GS-WGAN's row sanitiser, one block per row.
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::module::Kernel;
use super::params::{NoiseKeyParams, SanitizeRowsParams};
use super::{buffer, launched, output};
use crate::dp::{NoiseKey, NoiseMode};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Threads per row: a warp multiple covering the row, at most 256 (a 784-long row takes 4 passes).
fn block_for(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// `out = rows of g clipped to norm clip, plus noise_std·z` (see `Backend::sanitize_rows`).
pub(crate) fn sanitize_rows(dev: &Arc<CudaDevice>, g: &Tensor, clip: f32, noise_std: f32, key: &NoiseKey) -> Result<Tensor> {
    let cols = g.shape()[g.rank() - 1];
    let rows = g.numel().checked_div(cols).unwrap_or(0);
    let mut out = dev.alloc(g.numel())?;
    if rows > 0 {
        // One block per row along grid x, whose limit is 2³¹ − 1.
        let grid = u32::try_from(rows)
            .ok()
            .filter(|&r| r < 1 << 31)
            .ok_or_else(|| Error::Invalid(format!("sanitize_rows: {rows} rows exceed one launch's 2^31 - 1 blocks; split the batch")))?;
        let p = SanitizeRowsParams { rows: rows as i64, cols: cols as i64, clip, noise_std, key: NoiseKeyParams::new(key) };
        let k = match key.mode {
            NoiseMode::Fast => Kernel::SanitizeRowsPhilox,
            NoiseMode::Secure => Kernel::SanitizeRowsChacha,
        };
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block_for(cols), 1, 1), shared_mem_bytes: 0 };
        // SAFETY: g and out hold rows·cols floats; block r reads g[r·cols..(r+1)·cols) and writes the
        // same range of out, a fresh allocation distinct from g. The block size is a multiple of 32,
        // as the kernel's warp reduction needs.
        let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&buffer(g).slice).arg(&mut out.slice).launch(cfg) };
        launched(k, r)?;
    }
    output(out, g.shape())
}
