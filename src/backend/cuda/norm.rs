//! Launchers of `kernels/norm.cu`: spectral norm's power iteration, pixel norm and the gradient of
//! spectral norm's division.
//!
//! The power iteration takes every spectrally normalised layer of a model at once (up to 16 per
//! launch, the layer in grid.z). With many groups (GS-WGAN's warm start trains hundreds of
//! discriminators) one block per group fills the device: one fused launch. With few (an ordinary
//! model, G = 1) that would read the whole matrix through a single SM, so the step is split into
//! three launches that spread each group over many blocks: Wᵀu by column tiles, then ‖·‖ and W v
//! by row blocks, then u's normalisation. A model's 5 or 11 layers then cost 3 launches, not 15 or 33.
use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::{CudaBuffer, CudaDevice};
use super::elementwise::grid_for;
use super::module::Kernel;
use super::optim::buffer_mut;
use super::params::{
    FastDivmod, PixelNormParams, PowerIterationBatch, PowerIterationLayer, SpectralDivideBwdParams, POWER_ITERATION_LAYERS,
};
use super::{buffer, launched, output};
use crate::backend::{PowerIteration, PowerIterationInput, PowerIterationIo};
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

/// A layer's outputs, allocated before its launch.
struct LayerOutputs {
    u_out: CudaBuffer,
    v: CudaBuffer,
    v_raw: Option<CudaBuffer>,
    sigma: CudaBuffer,
}

/// One step for each layer (shapes checked by ops): `v = normalize(wᵀu)`, `u' = normalize(w v)`,
/// `σ = u'ᵀ w v`; returns each layer's `u'` `[G, O]`, `v` `[G, I]`, `σ` `[G]`, and writes u' and
/// v into a layer's state too when it has one (u_state is then the u read: every kernel reads a
/// group's u before any block writes its state, see norm.cu). All layers go through the same
/// launches, 16 at a time: one fused launch when every layer's groups fill the device, else the
/// three split ones.
pub(crate) fn power_iterations(dev: &Arc<CudaDevice>, layers: &mut [PowerIterationIo<'_>]) -> Result<Vec<PowerIteration>> {
    let dims: Vec<(usize, usize, usize)> = layers.iter().map(|l| (l.w.shape()[0], l.w.shape()[1], l.w.shape()[2])).collect();
    let sms = dev.properties().multiprocessors.max(1) as usize;
    // With rows = 0 v is a sum over nothing (zeros), and with cols = 0 u' is: the kernels write
    // both, and σ = 0. With neither (or no groups) there is nothing to launch: σ is set here.
    let launched_layer = |&(g, o, i): &(usize, usize, usize)| g > 0 && o + i > 0;
    let fused = dims.iter().filter(|d| launched_layer(d)).all(|&(g, _, _)| g >= FUSED_MIN_BLOCKS_PER_SM * sms);
    let mut outs = Vec::with_capacity(layers.len());
    for &(g, o, i) in &dims {
        let mut sigma = dev.alloc(g)?;
        if g > 0 && o + i == 0 {
            super::elementwise::fill(dev, &mut sigma, 0.0)?;
        }
        let v_raw = if fused { None } else { Some(dev.alloc(g * i)?) };
        outs.push(LayerOutputs { u_out: dev.alloc(g * o)?, v: dev.alloc(g * i)?, v_raw, sigma });
    }
    let active: Vec<usize> = (0..layers.len()).filter(|&l| launched_layer(&dims[l])).collect();
    for chunk in active.chunks(POWER_ITERATION_LAYERS) {
        launch_batch(dev, layers, &dims, &mut outs, chunk, fused, sms)?;
    }
    outs.into_iter()
        .zip(dims)
        .map(|(out, (g, o, i))| {
            Ok(PowerIteration { u: output(out.u_out, &[g, o])?, v: output(out.v, &[g, i])?, sigma: output(out.sigma, &[g])? })
        })
        .collect()
}

/// The launches for the layers `chunk` (indices into `layers`, at most 16, each with groups and
/// rows + cols > 0).
fn launch_batch(
    dev: &Arc<CudaDevice>,
    layers: &mut [PowerIterationIo<'_>],
    dims: &[(usize, usize, usize)],
    outs: &mut [LayerOutputs],
    chunk: &[usize],
    fused: bool,
    sms: usize,
) -> Result<()> {
    let stream = dev.stream().clone();
    let too_big = |what: &str| Error::shape("power_iteration", format!("{what} exceeds the CUDA grid"));
    let max_groups = chunk.iter().map(|&l| dims[l].0).max().unwrap_or(0);
    let mut batch =
        PowerIterationBatch { layers: [PowerIterationLayer::default(); POWER_ITERATION_LAYERS], count: chunk.len() as i32, pad_: 0 };
    // The guards keep each pointer's stream ordering until the launches are queued.
    let mut guards = Vec::with_capacity(chunk.len() * 6);
    let mut wanted: Vec<bool> = vec![false; outs.len()];
    chunk.iter().for_each(|&l| wanted[l] = true);
    let chosen = layers.iter_mut().zip(outs.iter_mut()).enumerate().filter(|(l, _)| wanted[*l]);
    for (slot, (l, (layer, out))) in chosen.enumerate() {
        let (g, o, i) = dims[l];
        let (w_ptr, w_guard) = buffer(layer.w).slice.device_ptr(&stream);
        // A state's u is read and then overwritten (u_state = u); the kernels read a group's u
        // before any block writes its state.
        let (u_ptr, u_state, v_state) = match &mut layer.input {
            PowerIterationInput::U(u) => {
                let (ptr, guard) = buffer(u).slice.device_ptr(&stream);
                guards.push(guard);
                (ptr, 0, 0)
            }
            PowerIterationInput::State { u, v } => {
                let (u_ptr, u_guard) = buffer_mut(u)?.slice.device_ptr_mut(&stream);
                let (v_ptr, v_guard) = buffer_mut(v)?.slice.device_ptr_mut(&stream);
                guards.extend([u_guard, v_guard]);
                (u_ptr, u_ptr, v_ptr)
            }
        };
        let (u_out, u_out_guard) = out.u_out.slice.device_ptr_mut(&stream);
        let (v, v_guard) = out.v.slice.device_ptr_mut(&stream);
        let (sigma, sigma_guard) = out.sigma.slice.device_ptr_mut(&stream);
        let v_raw = match out.v_raw.as_mut() {
            Some(scratch) => {
                let (ptr, guard) = scratch.slice.device_ptr_mut(&stream);
                guards.push(guard);
                ptr
            }
            None => 0,
        };
        guards.extend([w_guard, u_out_guard, v_guard, sigma_guard]);
        batch.layers[slot] = PowerIterationLayer {
            w: w_ptr,
            u: u_ptr,
            u_out,
            v,
            v_raw,
            sigma,
            u_state,
            v_state,
            groups: g as i64,
            rows: o as i64,
            cols: i as i64,
        };
    }
    let count = chunk.len();
    let run = |kernel: Kernel, grid: (usize, usize)| -> Result<()> {
        // The CUDA limits: grid.x below 2³¹, grid.y below 2¹⁶.
        if grid.0 > i32::MAX as usize || grid.1 > 65_535 {
            return Err(too_big(&format!("a grid of {grid:?} blocks")));
        }
        let _range = crate::profile::range(kernel.symbol());
        let config = LaunchConfig { grid_dim: (grid.0 as u32, grid.1 as u32, count as u32), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: every layer's pointers come from live buffers of the sizes its dims give (w and
        // u checked by ops, the outputs allocated above for them); block (x, y, z) reads and writes
        // only layer z's group and rows or columns below that layer's extents (the kernels return
        // early past them), and the launches are stream-ordered, so each reads what the one before
        // wrote.
        let r = unsafe { stream.launch_builder(dev.kernel(kernel)).arg(&batch).launch(config) };
        launched(kernel, r)
    };
    if fused {
        run(Kernel::PowerIteration, (max_groups, 1))?;
    } else {
        if max_groups > 65_535 {
            return Err(too_big(&format!("{max_groups} groups")));
        }
        let col_tiles = chunk.iter().map(|&l| dims[l].2.div_ceil(WTU_COLS)).max().unwrap_or(0);
        if col_tiles > 0 {
            run(Kernel::PowerIterationWtu, (col_tiles, max_groups))?;
        }
        // Enough row blocks for the rows (a warp each), and at least one: it also writes v.
        let row_blocks = chunk.iter().map(|&l| dims[l].1.div_ceil(WV_ROWS)).max().unwrap_or(0).clamp(1, sms * 16);
        run(Kernel::PowerIterationWv, (row_blocks, max_groups))?;
        run(Kernel::PowerIterationNormalizeU, (max_groups, 1))?;
    }
    drop(guards);
    // v_raw is freed in stream order with its buffer, after the launches that read it.
    Ok(())
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
