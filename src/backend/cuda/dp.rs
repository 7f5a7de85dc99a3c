//! Launchers of the dp family: GS-WGAN's row sanitiser (`kernels/dp.cu`, one block per row),
//! DP-SGD's noise-and-divide pass and its fusion with the SGD or Adam update (`kernels/dp.cu`, one
//! element per thread) and the per-example
//! conv weight-gradient norms (`kernels/dp_norms.cu`, tiles of each example's gradient squared in
//! registers, then the tiles of each example added by `reduce::sum_to`).
use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::conv::conv_params;
use super::device::CudaDevice;
use super::elementwise::fill;
use super::gemm::tile_grid;
use super::module::Kernel;
use super::optim::{self, buffer_mut};
use super::params::{
    NoiseDivideParams, NoisedAdamForeachParams, NoisedAdamParams, NoisedForeachTensor, NoisedSgdForeachParams, NoisedSgdParams,
    SanitizeRowsParams, FOREACH_TENSORS,
};
use super::{buffer, launched, output, reduce, step_block};
use crate::backend::{AdamParams, ConvGeometry, GradientNoise, NoisedAdamTensors, NoisedTensors, RowNorm, SgdParams};
use crate::dp::{NoiseKey, NoiseMode};
use crate::error::{Error, Result};
use crate::profile;
use crate::tensor::Tensor;

/// Threads per row: a warp multiple covering the row, at most 256 (a 784-long row takes 4 passes).
fn block_for(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// `out = rows of g clipped (or rescaled) to norm clip, plus noise_std·z` (see `Backend::sanitize_rows`).
pub(crate) fn sanitize_rows(
    dev: &Arc<CudaDevice>,
    g: &Tensor,
    clip: f32,
    row_norm: RowNorm,
    noise_std: f32,
    key: &NoiseKey,
) -> Result<Tensor> {
    let cols = g.shape()[g.rank() - 1];
    let rows = g.numel().checked_div(cols).unwrap_or(0);
    let mut out = dev.alloc(g.numel())?;
    if rows > 0 {
        // One block per row along grid x, whose limit is 2³¹ − 1.
        let grid = u32::try_from(rows)
            .ok()
            .filter(|&r| r < 1 << 31)
            .ok_or_else(|| Error::Invalid(format!("sanitize_rows: {rows} rows exceed one launch's 2^31 - 1 blocks; split the batch")))?;
        let p = SanitizeRowsParams {
            rows: rows as i64,
            cols: cols as i64,
            clip,
            noise_std,
            exact: i32::from(row_norm == RowNorm::Exactly),
            pad_: 0,
            key: step_block::noise_key_params(dev, key),
        };
        let k = match key.mode {
            NoiseMode::Fast => Kernel::SanitizeRowsPhilox,
            NoiseMode::Secure => Kernel::SanitizeRowsChacha,
        };
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block_for(cols), 1, 1), shared_mem_bytes: 0 };
        let _range = profile::range(k.symbol());
        // SAFETY: g and out hold rows·cols floats; block r reads g[r·cols..(r+1)·cols) and writes the
        // same range of out, a fresh allocation distinct from g. The block size is a multiple of 32,
        // as the kernel's warp reduction needs.
        let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&buffer(g).slice).arg(&mut out.slice).launch(cfg) };
        launched(k, r)?;
    }
    output(out, g.shape())
}

/// Each example's squared weight-gradient norm of a conv layer, `[G, B]` (see
/// `Backend::conv2d_weight_grad_sq_norms`). The kernel writes one partial sum per 64 × 64 tile of
/// each example's `[O, C·KH·KW]` gradient, `[G·B, tiles]`; the tiles are added in order by
/// `reduce::sum_to`. The per-example gradients themselves never reach global memory.
pub(crate) fn conv2d_weight_grad_sq_norms(dev: &Arc<CudaDevice>, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
    const OP: &str = "conv2d_weight_grad_sq_norms";
    let shape = [geom.groups, geom.batch];
    let examples = geom.groups * geom.batch;
    let (m, n) = (geom.out_channels, geom.in_channels * geom.kernel_h * geom.kernel_w);
    if examples == 0 {
        return output(dev.alloc(0)?, &shape);
    }
    if m * n == 0 {
        // A layer without weights: every example's gradient is empty, of norm 0.
        let mut zeros = dev.alloc(examples)?;
        fill(dev, &mut zeros, 0.0)?;
        return output(zeros, &shape);
    }
    let positions = geom.out_h * geom.out_w;
    let p = conv_params(OP, geom, 1, positions)?;
    let cfg = tile_grid(OP, m, n, examples, None)?;
    let tiles = cfg.grid_dim.0 as usize * cfg.grid_dim.1 as usize;
    let mut partials = dev.alloc(examples * tiles)?;
    let k = Kernel::Conv2dWeightGradSqNorms;
    let _range = profile::range(k.symbol());
    // SAFETY: x holds G·B·C·H·W floats and dy G·B·O·HO·WO (ops checked both against the geometry);
    // block (tx, ty) of example e reads x[e] and dy[e] only, bounds-checking every tap and tile
    // tail, and writes partials[e·tiles + ty·grid.x + tx] < G·B·tiles; every size the kernel
    // indexes with 32-bit ints was checked by `conv_params`. 256 threads, as `tile_grid` sets.
    let r = unsafe {
        dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&buffer(x).slice).arg(&buffer(dy).slice).arg(&mut partials.slice).launch(cfg)
    };
    launched(k, r)?;
    let partials = output(partials, &[examples, tiles])?;
    let sums = if tiles == 1 { partials } else { reduce::sum_to(dev, &partials, &[examples, 1])? };
    sums.reshape(&shape)
}

/// Threads per block of the one-element-per-thread noise passes.
const NOISE_THREADS: usize = 256;

/// The grid of a one-element-per-thread noise pass over up to `n > 0` elements in each of `rows`
/// tensors (grid y; ≤ 32).
fn noise_grid(op: &str, n: usize, rows: usize) -> Result<LaunchConfig> {
    // n ≤ 2^33 (ops) needs at most 2^25 blocks, within grid x's 2^31 − 1.
    let blocks = u32::try_from(n.div_ceil(NOISE_THREADS))
        .map_err(|_| Error::Invalid(format!("{op}: {n} elements exceed one launch; split the tensor")))?;
    Ok(LaunchConfig { grid_dim: (blocks, rows as u32, 1), block_dim: (NOISE_THREADS as u32, 1, 1), shared_mem_bytes: 0 })
}

/// The launch of a one-element-per-thread noise pass over `n > 0` elements, with its parameters.
fn noise_launch(dev: &CudaDevice, op: &str, n: usize, std: f32, divisor: f32, key: &NoiseKey) -> Result<(LaunchConfig, NoiseDivideParams)> {
    Ok((noise_grid(op, n, 1)?, NoiseDivideParams { n: n as i64, std, divisor, key: step_block::noise_key_params(dev, key) }))
}

/// `x ← (x + std·z) / divisor` in place, z the key's standard normals: DP-SGD's noise and its
/// division by the batch in one pass (ops has checked std, divisor and the element count).
pub(crate) fn add_gaussian_noise_and_divide(dev: &Arc<CudaDevice>, x: &mut Tensor, std: f32, divisor: f32, key: &NoiseKey) -> Result<()> {
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let (cfg, p) = noise_launch(dev, "add_gaussian_noise_and_divide", n, std, divisor, key)?;
    let k = match key.mode {
        NoiseMode::Fast => Kernel::GaussianAddDividePhilox,
        NoiseMode::Secure => Kernel::GaussianAddDivideChacha,
    };
    let x_buf = &mut buffer_mut(x)?.slice;
    let _range = profile::range(k.symbol());
    // SAFETY: x holds n floats (p.n = n); thread i < n reads and writes x[i] only, the others
    // return; x is unshared (storage_mut copied a shared buffer first).
    let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(x_buf).launch(cfg) };
    launched(k, r)
}

/// Plain SGD of `param` with the gradient `(sum + std·z) / divisor`, in one pass that never
/// writes the gradient; `flag` `[1]` becomes NaN if an element of it is not finite (ops has
/// checked the sizes, the noise and that SGD has no momentum).
pub(crate) fn noised_sgd_step(
    dev: &Arc<CudaDevice>,
    param: &mut Tensor,
    sum: &Tensor,
    noise: &GradientNoise,
    hp: &SgdParams,
    flag: &mut Tensor,
) -> Result<()> {
    let n = param.numel();
    if n == 0 {
        return Ok(());
    }
    let (cfg, noise_params) = noise_launch(dev, "noised_sgd_step", n, noise.std, noise.divisor, &noise.key)?;
    let p = NoisedSgdParams { noise: noise_params, sgd: optim::sgd_params(dev, hp, n)? };
    let k = match noise.key.mode {
        NoiseMode::Fast => Kernel::NoisedSgdUpdatePhilox,
        NoiseMode::Secure => Kernel::NoisedSgdUpdateChacha,
    };
    let (w, f) = (&mut buffer_mut(param)?.slice, &mut buffer_mut(flag)?.slice);
    let _range = profile::range(k.symbol());
    // SAFETY: param and sum hold n floats (p.noise.n = n), flag one; thread i < n reads sum[i],
    // updates param[i] and may write flag[0], the others return. param and flag are distinct
    // unshared allocations (two `&mut Tensor`s, storage_mut copied shared ones).
    let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(w).arg(&buffer(sum).slice).arg(f).launch(cfg) };
    launched(k, r)
}

/// A tensor's noise as its kernel slot holds it.
fn slot_noise(dev: &CudaDevice, n: usize, noise: &GradientNoise) -> Result<NoiseDivideParams> {
    Ok(NoiseDivideParams { n: n as i64, std: noise.std, divisor: noise.divisor, key: step_block::noise_key_params(dev, &noise.key) })
}

/// [`noised_sgd_step`] of every tensor, up to 32 per launch (ops has checked each tensor, and that
/// all share one noise mode): the device pointers and each tensor's noise go in the parameter struct.
pub(crate) fn noised_sgd_steps(dev: &Arc<CudaDevice>, tensors: &mut [NoisedTensors<'_>], hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
    let sgd = optim::sgd_params(dev, hp, 0)?;
    let stream = dev.stream().clone();
    for chunk in tensors.chunks_mut(FOREACH_TENSORS) {
        let largest = chunk.iter().map(|t| t.param.numel()).max().unwrap_or(0);
        if largest == 0 {
            continue;
        }
        let mode = chunk[0].noise.key.mode;
        let cfg = noise_grid("noised_sgd_step", largest, chunk.len())?;
        let mut p =
            NoisedSgdForeachParams { sgd, tensors: [NoisedForeachTensor::default(); FOREACH_TENSORS], count: chunk.len() as i32, pad_: 0 };
        let mut guards = Vec::with_capacity(2 * chunk.len());
        for (slot, t) in chunk.iter_mut().enumerate() {
            let noise = slot_noise(dev, t.param.numel(), t.noise)?;
            let (param, param_guard) = buffer_mut(t.param)?.slice.device_ptr_mut(&stream);
            let (sum, sum_guard) = buffer(t.sum).slice.device_ptr(&stream);
            guards.extend([param_guard, sum_guard]);
            p.tensors[slot] = NoisedForeachTensor { param, sum, m: 0, v: 0, noise };
        }
        let k = match mode {
            NoiseMode::Fast => Kernel::NoisedSgdUpdateForeachPhilox,
            NoiseMode::Secure => Kernel::NoisedSgdUpdateForeachChacha,
        };
        let _range = profile::range(k.symbol());
        // SAFETY: each slot's param and sum hold its n floats (checked by ops), the param a `&mut
        // Tensor` unshared by storage_mut(), flag one float in another allocation; block row y
        // reads sum[i] and updates param[i], i < n, of slot y only, and may write flag[0].
        let r = unsafe { stream.launch_builder(dev.kernel(k)).arg(&p).arg(&mut buffer_mut(flag)?.slice).launch(cfg) };
        launched(k, r)?;
        drop(guards);
    }
    Ok(())
}

/// [`noised_adam_step`] at step `t` of every tensor, up to 32 per launch, as [`noised_sgd_steps`].
pub(crate) fn noised_adam_steps(
    dev: &Arc<CudaDevice>,
    tensors: &mut [NoisedAdamTensors<'_>],
    t: u64,
    hp: &AdamParams,
    flag: &mut Tensor,
) -> Result<()> {
    let adam = optim::adam_params(dev, hp, t, 0)?;
    let stream = dev.stream().clone();
    for chunk in tensors.chunks_mut(FOREACH_TENSORS) {
        let largest = chunk.iter().map(|nt| nt.param.numel()).max().unwrap_or(0);
        if largest == 0 {
            continue;
        }
        let mode = chunk[0].noise.key.mode;
        let cfg = noise_grid("noised_adam_step", largest, chunk.len())?;
        let mut p = NoisedAdamForeachParams {
            adam,
            tensors: [NoisedForeachTensor::default(); FOREACH_TENSORS],
            count: chunk.len() as i32,
            pad_: 0,
        };
        let mut guards = Vec::with_capacity(4 * chunk.len());
        for (slot, nt) in chunk.iter_mut().enumerate() {
            let noise = slot_noise(dev, nt.param.numel(), nt.noise)?;
            let (param, param_guard) = buffer_mut(nt.param)?.slice.device_ptr_mut(&stream);
            let (sum, sum_guard) = buffer(nt.sum).slice.device_ptr(&stream);
            let (m, m_guard) = buffer_mut(nt.m)?.slice.device_ptr_mut(&stream);
            let (v, v_guard) = buffer_mut(nt.v)?.slice.device_ptr_mut(&stream);
            guards.extend([param_guard, sum_guard, m_guard, v_guard]);
            p.tensors[slot] = NoisedForeachTensor { param, sum, m, v, noise };
        }
        let k = match mode {
            NoiseMode::Fast => Kernel::NoisedAdamUpdateForeachPhilox,
            NoiseMode::Secure => Kernel::NoisedAdamUpdateForeachChacha,
        };
        let _range = profile::range(k.symbol());
        // SAFETY: each slot's param, sum, m and v hold its n floats (checked by ops); param, m and
        // v are `&mut Tensor`s unshared by storage_mut(), flag one float in another allocation;
        // block row y reads sum[i] and updates param[i], m[i], v[i], i < n, of slot y only, and may
        // write flag[0].
        let r = unsafe { stream.launch_builder(dev.kernel(k)).arg(&p).arg(&mut buffer_mut(flag)?.slice).launch(cfg) };
        launched(k, r)?;
        drop(guards);
    }
    Ok(())
}

/// Adam at step `t` of `param` with the gradient `(sum + std·z) / divisor`, in one pass that
/// never writes the gradient; `flag` as in [`noised_sgd_step`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn noised_adam_step(
    dev: &Arc<CudaDevice>,
    param: &mut Tensor,
    sum: &Tensor,
    noise: &GradientNoise,
    m: &mut Tensor,
    v: &mut Tensor,
    t: u64,
    hp: &AdamParams,
    flag: &mut Tensor,
) -> Result<()> {
    let n = param.numel();
    let adam = optim::adam_params(dev, hp, t, n)?;
    if n == 0 {
        return Ok(());
    }
    let (cfg, noise_params) = noise_launch(dev, "noised_adam_step", n, noise.std, noise.divisor, &noise.key)?;
    let p = NoisedAdamParams { noise: noise_params, adam };
    let k = match noise.key.mode {
        NoiseMode::Fast => Kernel::NoisedAdamUpdatePhilox,
        NoiseMode::Secure => Kernel::NoisedAdamUpdateChacha,
    };
    let (w, m_buf, v_buf, f) =
        (&mut buffer_mut(param)?.slice, &mut buffer_mut(m)?.slice, &mut buffer_mut(v)?.slice, &mut buffer_mut(flag)?.slice);
    let _range = profile::range(k.symbol());
    // SAFETY: param, sum, m and v hold n floats (p.noise.n = n), flag one; thread i < n reads
    // sum[i], updates param[i], m[i], v[i] and may write flag[0], the others return. param, m, v
    // and flag are distinct unshared allocations (four `&mut Tensor`s, storage_mut copied shared
    // ones).
    let r = unsafe {
        dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(w).arg(&buffer(sum).slice).arg(m_buf).arg(v_buf).arg(f).launch(cfg)
    };
    launched(k, r)
}
