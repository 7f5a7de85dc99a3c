//! Launcher of `kernels/norm.cu`: spectral norm's power iteration, one block per group.
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::module::Kernel;
use super::params::PowerIterationParams;
use super::{buffer, launched, output};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Threads per block (16 warps): a group's matrix is read by one block, so a wide block keeps more
/// loads in flight when there are few groups (G = 1 for an ordinary model).
const BLOCK: u32 = 512;

/// One step for `w` `[G, O, I]` and `u` `[G, O]`: `v = normalize(wᵀu)`, `u' = normalize(w v)`.
/// Returns `(u' [G, O], v [G, I])`.
pub(crate) fn power_iteration(dev: &Arc<CudaDevice>, w: &Tensor, u: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = w.shape();
    if s.len() != 3 || u.shape() != &s[..2] {
        return Err(Error::shape("power_iteration", format!("needs w [G, O, I] and u [G, O], got {s:?} and {:?}", u.shape())));
    }
    let (groups, rows, cols) = (s[0], s[1], s[2]);
    let mut u_out = dev.alloc(groups * rows)?;
    let mut v = dev.alloc(groups * cols)?;
    // With rows = 0 v is a sum over nothing (zeros) and with cols = 0 u' is: the kernel writes both.
    if groups > 0 && rows + cols > 0 {
        let grid = u32::try_from(groups)
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| Error::shape("power_iteration", format!("{groups} groups exceed the CUDA grid")))?;
        let p = PowerIterationParams { groups: groups as i64, rows: rows as i64, cols: cols as i64 };
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let k = Kernel::PowerIteration;
        // SAFETY: w holds G·O·I floats and u G·O; block g reads only group g's slices of them and
        // writes only u_out[g·O..(g+1)·O) and v[g·I..(g+1)·I), which those buffers hold.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(w).slice)
                .arg(&buffer(u).slice)
                .arg(&mut u_out.slice)
                .arg(&mut v.slice)
                .launch(cfg)
        };
        launched(k, r)?;
    }
    Ok((output(u_out, &[groups, rows])?, output(v, &[groups, cols])?))
}
