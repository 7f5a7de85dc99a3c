//! Launchers of `kernels/norm.cu`: spectral norm's power iteration.
//!
//! With many groups (GS-WGAN's warm start trains hundreds of discriminators) one block per group
//! fills the device: one fused launch. With few (an ordinary model, G = 1) that would read the whole
//! matrix through a single SM, so the step is split into three launches that spread each group over
//! many blocks: Wᵀu by column tiles, then ‖·‖ and W v by row blocks, then u's normalisation.
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::elementwise::grid_for;
use super::module::Kernel;
use super::params::{FastDivmod, PixelNormParams, PowerIterationParams, SpectralDivideBwdParams};
use super::{buffer, launched, output};
use crate::backend::PowerIteration;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Threads per block of every power-iteration kernel: 16 warps. Fixed for the Wᵀu kernel, whose
/// block is 32 columns × 16 row slices (`DPGAN_WTU_COLS`, `DPGAN_WTU_SLICES` in norm.cu).
const BLOCK: u32 = 512;
/// Columns per block of the Wᵀu kernel.
const WTU_COLS: usize = 32;
/// Rows per block of the W v kernel: a warp per row.
const WV_ROWS: usize = BLOCK as usize / 32;
/// Blocks per SM below which the groups alone do not fill the device and the split path is used.
const FUSED_MIN_BLOCKS_PER_SM: usize = 2;

fn config(grid: (usize, usize)) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0 as u32, grid.1 as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One step for `w` `[G, O, I]` and `u` `[G, O]`: `v = normalize(wᵀu)`, `u' = normalize(w v)`,
/// `σ = u'ᵀ w v`. Returns `u'` `[G, O]`, `v` `[G, I]` and `σ` `[G]`.
pub(crate) fn power_iteration(dev: &Arc<CudaDevice>, w: &Tensor, u: &Tensor) -> Result<PowerIteration> {
    let s = w.shape();
    if s.len() != 3 || u.shape() != &s[..2] {
        return Err(Error::shape("power_iteration", format!("needs w [G, O, I] and u [G, O], got {s:?} and {:?}", u.shape())));
    }
    let (groups, rows, cols) = (s[0], s[1], s[2]);
    let mut u_out = dev.alloc(groups * rows)?;
    let mut v = dev.alloc(groups * cols)?;
    let mut sigma = dev.alloc(groups)?;
    let done = |u_out, v, sigma| -> Result<PowerIteration> {
        Ok(PowerIteration { u: output(u_out, &[groups, rows])?, v: output(v, &[groups, cols])?, sigma: output(sigma, &[groups])? })
    };
    // With rows = 0 v is a sum over nothing (zeros), and with cols = 0 u' is: the kernels write
    // both, and σ = 0. With neither there is nothing to launch: σ is set here.
    if groups == 0 {
        return done(u_out, v, sigma);
    }
    if rows + cols == 0 {
        super::elementwise::fill(dev, &mut sigma, 0.0)?;
        return done(u_out, v, sigma);
    }
    let too_big = || Error::shape("power_iteration", format!("w {s:?} exceeds the CUDA grid"));
    let p = PowerIterationParams { groups: groups as i64, rows: rows as i64, cols: cols as i64 };
    let (w_buf, u_buf) = (&buffer(w).slice, &buffer(u).slice);
    let sms = dev.properties().multiprocessors.max(1) as usize;
    if groups >= FUSED_MIN_BLOCKS_PER_SM * sms {
        if groups > i32::MAX as usize {
            return Err(too_big());
        }
        let k = Kernel::PowerIteration;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: w holds G·O·I floats and u G·O; block g reads only group g's slices of them and
        // writes only u_out[g·O..(g+1)·O), v[g·I..(g+1)·I) and σ[g], which those buffers hold.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(w_buf)
                .arg(u_buf)
                .arg(&mut u_out.slice)
                .arg(&mut v.slice)
                .arg(&mut sigma.slice)
                .launch(config((groups, 1)))
        };
        launched(k, r)?;
    } else {
        // Here groups < 2·SMs, well inside grid.y's 65535.
        let col_tiles = cols.div_ceil(WTU_COLS);
        if col_tiles > i32::MAX as usize {
            return Err(too_big());
        }
        let mut v_raw = dev.alloc(groups * cols)?;
        if cols > 0 {
            let k = Kernel::PowerIterationWtu;
            let _range = crate::profile::range(k.symbol());
            // SAFETY: block (t, g) reads w[g, r, c] and u[g, r] for r < O and c < I only (columns
            // of the tile past I are skipped) and writes v_raw[g, c] for those c; v_raw holds G·I.
            let r = unsafe {
                dev.stream()
                    .launch_builder(dev.kernel(k))
                    .arg(&p)
                    .arg(w_buf)
                    .arg(u_buf)
                    .arg(&mut v_raw.slice)
                    .launch(config((col_tiles, groups)))
            };
            launched(k, r)?;
        }
        // Enough row blocks for the rows (a warp each), and at least one: it also writes v.
        let row_blocks = rows.div_ceil(WV_ROWS).clamp(1, sms * 16);
        let k = Kernel::PowerIterationWv;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: block (b, g) reads v_raw[g, 0..I) (written by the launch before, stream-ordered)
        // and rows of w[g] below O; it writes v[g, c] for c < I and u_out[g, r] for r < O, which
        // hold G·I and G·O floats. The row and column strides of the blocks partition both.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(w_buf)
                .arg(&v_raw.slice)
                .arg(&mut u_out.slice)
                .arg(&mut v.slice)
                .launch(config((row_blocks, groups)))
        };
        launched(k, r)?;
        let k = Kernel::PowerIterationNormalizeU;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: block g normalises u_out[g·O..(g+1)·O) in place, inside u_out's G·O floats, and
        // writes σ[g], inside σ's G.
        let r = unsafe {
            dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&mut u_out.slice).arg(&mut sigma.slice).launch(config((groups, 1)))
        };
        launched(k, r)?;
        // v_raw is freed in stream order, after the launches that read it.
    }
    done(u_out, v, sigma)
}
/// `dW̄ = (dW − c·u vᵀ)/σ` per group for `dW` `[G, O, I]`, `c` and `σ` `[G]`, `u` `[G, O]`, `v`
/// `[G, I]` (shapes checked by ops): one elementwise pass.
pub(crate) fn spectral_divide_backward(
    dev: &Arc<CudaDevice>,
    dw: &Tensor,
    c: &Tensor,
    u: &Tensor,
    v: &Tensor,
    sigma: &Tensor,
) -> Result<Tensor> {
    let (rows, cols) = (dw.shape()[1], dw.shape()[2]);
    let n = dw.numel();
    let mut out = dev.alloc(n)?;
    if n == 0 {
        return output(out, dw.shape());
    }
    if n > i32::MAX as usize {
        return Err(Error::shape("spectral_divide_backward", format!("{:?} has {n} elements, past the kernel's 2^31 − 1", dw.shape())));
    }
    let p = SpectralDivideBwdParams {
        n: n as i64,
        rows: rows as i64,
        matrix: FastDivmod::new((rows * cols) as u32),
        cols: FastDivmod::new(cols as u32),
    };
    let k = Kernel::SpectralDivideBwd;
    let _range = crate::profile::range(k.symbol());
    // SAFETY: dw and out hold n = G·O·I floats, c and σ G, u G·O and v G·I (checked by ops);
    // element e reads dw[e], c[g], σ[g], u[g, row], v[g, col] for its own (g, row, col) and writes
    // out[e] only.
    let r = unsafe {
        dev.stream()
            .launch_builder(dev.kernel(k))
            .arg(&p)
            .arg(&buffer(dw).slice)
            .arg(&buffer(c).slice)
            .arg(&buffer(u).slice)
            .arg(&buffer(v).slice)
            .arg(&buffer(sigma).slice)
            .arg(&mut out.slice)
            .launch(grid_for(dev, n))
    };
    launched(k, r)?;
    output(out, dw.shape())
}
fn pixel_norm_params(x: &Tensor, eps: f32) -> PixelNormParams {
    let s = x.shape();
    PixelNormParams {
        positions: (s[0] * s[2]) as i64,
        channels: s[1] as i64,
        plane: s[2] as i64,
        eps,
        inv_channels: (1.0 / s[1].max(1) as f64) as f32,
    }
}

/// Pixel norm of `x` `[N, C, P]` (checked by ops): `(y [N, C, P], inv [N, P])`, one launch.
pub(crate) fn pixel_norm(dev: &Arc<CudaDevice>, x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let s = x.shape();
    let mut y = dev.alloc(x.numel())?;
    let mut inv = dev.alloc(s[0] * s[2])?;
    let p = pixel_norm_params(x, eps);
    if p.positions > 0 {
        let k = Kernel::PixelNorm;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: x and y hold N·C·P floats, inv N·P; the thread of position (n, p) reads and
        // writes x, y at (n, c, p) for c < C and inv at (n, p) only.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(x).slice)
                .arg(&mut y.slice)
                .arg(&mut inv.slice)
                .launch(grid_for(dev, s[0] * s[2]))
        };
        launched(k, r)?;
    }
    Ok((output(y, s)?, output(inv, &[s[0], s[2]])?))
}

/// The gradient of [`pixel_norm`] from `x`, its `inv` and `dy` (checked by ops), one launch.
pub(crate) fn pixel_norm_backward(dev: &Arc<CudaDevice>, x: &Tensor, inv: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    let mut dx = dev.alloc(x.numel())?;
    let p = pixel_norm_params(x, 0.0);
    if p.positions > 0 {
        let k = Kernel::PixelNormBwd;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: x, dy and dx hold N·C·P floats, inv N·P; the thread of position (n, p) reads x,
        // dy at (n, c, p) for c < C and inv at (n, p), and writes dx at (n, c, p) only.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(x).slice)
                .arg(&buffer(inv).slice)
                .arg(&buffer(dy).slice)
                .arg(&mut dx.slice)
                .launch(grid_for(dev, s[0] * s[2]))
        };
        launched(k, r)?;
    }
    output(dx, s)
}
