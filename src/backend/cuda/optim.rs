//! Launchers of `kernels/optim.cu`: in-place SGD and Adam updates, one element per thread.
use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{CudaBuffer, CudaDevice};
use super::elementwise::grid_for;
use super::module::Kernel;
use super::params::{
    AdamForeachParams, AdamUpdateParams, EmaForeachParams, EmaUpdateParams, ForeachTensor, SgdForeachParams, SgdUpdateParams,
    FOREACH_TENSORS,
};
use super::{buffer, launched, step_block};
use crate::backend::{AdamParams, AdamTensors, SgdParams};
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// The device buffer of a tensor updated in place (copied first if its storage is shared).
pub(super) fn buffer_mut(t: &mut Tensor) -> Result<&mut CudaBuffer> {
    match t.storage_mut()? {
        Storage::Cuda(b) => Ok(b),
        Storage::Cpu(_) | Storage::CpuF64(_) => unreachable!("ops checks devices before dispatching to the CUDA backend"),
    }
}

/// SGD's kernel parameters for `n` elements (lr from the bound step block if it holds it).
pub(super) fn sgd_params(dev: &CudaDevice, hp: &SgdParams, n: usize) -> Result<SgdUpdateParams> {
    Ok(SgdUpdateParams {
        n: n as i64,
        lr: hp.lr,
        momentum: hp.momentum,
        dampening: hp.dampening,
        weight_decay: hp.weight_decay,
        nesterov: hp.nesterov as i32,
        pad_: 0,
        lr_at: step_block::sgd_lr_at(dev, hp.lr),
    })
}

/// Adam's kernel parameters for `n` elements at step `t` (1-based), the bias corrections folded in
/// (read from the bound step block if it holds them).
pub(super) fn adam_params(dev: &CudaDevice, hp: &AdamParams, t: u64, n: usize) -> Result<AdamUpdateParams> {
    if t == 0 {
        return Err(Error::Invalid("adam_step: step count t is 1-based".into()));
    }
    let (step_size, bias2_sqrt) = hp.bias_corrections(t);
    Ok(AdamUpdateParams {
        n: n as i64,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay: hp.weight_decay,
        step_size,
        bias2_sqrt,
        corrections_at: step_block::adam_corrections_at(dev, (step_size, bias2_sqrt)),
    })
}

fn check_len(op: &'static str, name: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.numel() != n {
        return Err(Error::shape(op, format!("{name} {:?} has {} elements, param has {n}", t.shape(), t.numel())));
    }
    Ok(())
}

/// `p ← p − lr·step` with PyTorch's SGD step (see [`SgdParams`]); momentum needs `momentum_buf`.
pub(crate) fn sgd_step(
    dev: &Arc<CudaDevice>,
    param: &mut Tensor,
    grad: &Tensor,
    momentum_buf: Option<&mut Tensor>,
    hp: &SgdParams,
) -> Result<()> {
    let n = param.numel();
    check_len("sgd_step", "grad", grad, n)?;
    let p = sgd_params(dev, hp, n)?;
    let momentum_buf = match momentum_buf {
        Some(buf) if hp.momentum != 0.0 => {
            check_len("sgd_step", "momentum buffer", buf, n)?;
            Some(buffer_mut(buf)?)
        }
        None if hp.momentum != 0.0 => return Err(Error::Invalid("sgd_step: momentum needs a momentum buffer".into())),
        // Without momentum PyTorch keeps no buffer; one handed in is left untouched (as on the CPU).
        _ => None,
    };
    if n == 0 {
        return Ok(());
    }
    let g = &buffer(grad).slice;
    let w = &mut buffer_mut(param)?.slice;
    let cfg = grid_for(dev, n);
    match momentum_buf {
        None => {
            let k = Kernel::SgdUpdate;
            let _range = crate::profile::range(k.symbol());
            // SAFETY: param and grad hold n floats (checked above); the kernel reads grad[0..n) and
            // updates param[0..n) in place. They are distinct allocations: storage_mut() copied a
            // shared param before handing out its buffer.
            let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(w).arg(g).launch(cfg) };
            launched(k, r)
        }
        Some(buf) => {
            let k = Kernel::SgdMomentumUpdate;
            let _range = crate::profile::range(k.symbol());
            // SAFETY: param, grad and the momentum buffer hold n floats each (checked above) and are
            // distinct allocations (two `&mut Tensor`s, unshared by storage_mut()).
            let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(w).arg(g).arg(&mut buf.slice).launch(cfg) };
            launched(k, r)
        }
    }
}

/// In-place Adam update at step `t` (see [`AdamParams`]).
pub(crate) fn adam_step(
    dev: &Arc<CudaDevice>,
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    t: u64,
    hp: &AdamParams,
) -> Result<()> {
    let n = param.numel();
    let p = adam_params(dev, hp, t, n)?;
    for (name, s) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        check_len("adam_step", name, s, n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let k = Kernel::AdamUpdate;
    let (w, m_buf, v_buf) = (&mut buffer_mut(param)?.slice, &mut buffer_mut(m)?.slice, &mut buffer_mut(v)?.slice);
    let _range = crate::profile::range(k.symbol());
    // SAFETY: param, grad, m and v hold n floats each (checked above); param, m and v are distinct
    // allocations (three `&mut Tensor`s, unshared by storage_mut()). The kernel reads and writes
    // index i of each only.
    let r = unsafe {
        dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(w).arg(&buffer(grad).slice).arg(m_buf).arg(v_buf).launch(grid_for(dev, n))
    };
    launched(k, r)
}

/// `ema ← decay·ema + (1 − decay)·x` in place (ops has checked the shapes).
pub(crate) fn ema_update(dev: &Arc<CudaDevice>, ema: &mut Tensor, x: &Tensor, decay: f32) -> Result<()> {
    let n = ema.numel();
    if n == 0 {
        return Ok(());
    }
    let p = EmaUpdateParams { n: n as i64, decay, pad_: 0, decay_at: step_block::ema_decay_at(dev, decay) };
    let k = Kernel::EmaUpdate;
    let e = &mut buffer_mut(ema)?.slice;
    let _range = crate::profile::range(k.symbol());
    // SAFETY: ema and x hold n floats each (checked by ops) and are distinct allocations (ema is a
    // `&mut Tensor`, unshared by storage_mut()); the kernel reads x[i] and updates ema[i] only.
    let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(e).arg(&buffer(x).slice).launch(grid_for(dev, n)) };
    launched(k, r)
}

/// The grid of a multi-tensor launch: enough x blocks for the largest tensor (at most what fills
/// the device), one row of blocks per tensor.
fn foreach_grid(dev: &CudaDevice, largest: usize, count: usize) -> LaunchConfig {
    let x = grid_for(dev, largest.max(1));
    LaunchConfig { grid_dim: (x.grid_dim.0, count as u32, 1), ..x }
}

/// Adam at step `t` for every tensor (ops has checked each one's lengths and `t`), up to 32 per
/// launch: the device pointers go in the kernel's parameter struct.
pub(crate) fn adam_steps(dev: &Arc<CudaDevice>, tensors: &mut [AdamTensors<'_>], t: u64, hp: &AdamParams) -> Result<()> {
    let hp = adam_params(dev, hp, t, 0)?;
    let stream = dev.stream().clone();
    for chunk in tensors.chunks_mut(FOREACH_TENSORS) {
        let largest = chunk.iter().map(|at| at.param.numel()).max().unwrap_or(0);
        if largest == 0 {
            continue;
        }
        let grid = foreach_grid(dev, largest, chunk.len());
        let mut p = AdamForeachParams { hp, tensors: [ForeachTensor::default(); FOREACH_TENSORS], count: chunk.len() as i32, pad_: 0 };
        let mut guards = Vec::with_capacity(4 * chunk.len());
        for (slot, at) in chunk.iter_mut().enumerate() {
            let n = at.param.numel() as i64;
            let (a, a_guard) = buffer_mut(at.param)?.slice.device_ptr_mut(&stream);
            let (b, b_guard) = buffer(at.grad).slice.device_ptr(&stream);
            let (c, c_guard) = buffer_mut(at.m)?.slice.device_ptr_mut(&stream);
            let (d, d_guard) = buffer_mut(at.v)?.slice.device_ptr_mut(&stream);
            guards.extend([a_guard, b_guard, c_guard, d_guard]);
            p.tensors[slot] = ForeachTensor { a, b, c, d, n };
        }
        let k = Kernel::AdamUpdateForeach;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: each slot's param, grad, m and v hold its n floats (checked by ops) and come from
        // distinct allocations (`&mut Tensor`s, unshared by storage_mut()); block row y reads and
        // writes element i < n of slot y's arrays only.
        let r = unsafe { stream.launch_builder(dev.kernel(k)).arg(&p).launch(grid) };
        launched(k, r)?;
        drop(guards);
    }
    Ok(())
}

/// Launches `k` over every `(a, b)` pair (a updated in place from b; ops has checked that each
/// pair's lengths agree), up to 32 pairs per launch: `params` wraps a chunk's slots and count in
/// the kernel's parameter struct.
fn pairs_foreach<P: DeviceRepr>(
    dev: &Arc<CudaDevice>,
    pairs: &mut [(&mut Tensor, &Tensor)],
    k: Kernel,
    params: impl Fn([ForeachTensor; FOREACH_TENSORS], i32) -> P,
) -> Result<()> {
    let stream = dev.stream().clone();
    for chunk in pairs.chunks_mut(FOREACH_TENSORS) {
        let largest = chunk.iter().map(|(a, _)| a.numel()).max().unwrap_or(0);
        if largest == 0 {
            continue;
        }
        let (grid, count) = (foreach_grid(dev, largest, chunk.len()), chunk.len() as i32);
        let mut tensors = [ForeachTensor::default(); FOREACH_TENSORS];
        let mut guards = Vec::with_capacity(2 * chunk.len());
        for (slot, (a_t, b_t)) in chunk.iter_mut().enumerate() {
            let n = a_t.numel() as i64;
            let (a, a_guard) = buffer_mut(a_t)?.slice.device_ptr_mut(&stream);
            let (b, b_guard) = buffer(b_t).slice.device_ptr(&stream);
            guards.extend([a_guard, b_guard]);
            tensors[slot] = ForeachTensor { a, b, c: 0, d: 0, n };
        }
        let p = params(tensors, count);
        let _range = crate::profile::range(k.symbol());
        // SAFETY: each slot's a and b hold its n floats (checked by ops), a a `&mut Tensor`
        // unshared by storage_mut(); block row y updates a[i] from b[i], i < n, of slot y only.
        let r = unsafe { stream.launch_builder(dev.kernel(k)).arg(&p).launch(grid) };
        launched(k, r)?;
        drop(guards);
    }
    Ok(())
}

/// Plain SGD for every `(param, grad)` pair (ops has checked the lengths and that there is no
/// momentum), up to 32 per launch.
pub(crate) fn sgd_steps(dev: &Arc<CudaDevice>, pairs: &mut [(&mut Tensor, &Tensor)], hp: &SgdParams) -> Result<()> {
    let hp = sgd_params(dev, hp, 0)?;
    pairs_foreach(dev, pairs, Kernel::SgdUpdateForeach, |tensors, count| SgdForeachParams { hp, tensors, count, pad_: 0 })
}

/// `ema ← decay·ema + (1 − decay)·x` for every pair (lengths checked by ops), up to 32 per launch.
pub(crate) fn ema_updates(dev: &Arc<CudaDevice>, pairs: &mut [(&mut Tensor, &Tensor)], decay: f32) -> Result<()> {
    let decay_at = step_block::ema_decay_at(dev, decay);
    pairs_foreach(dev, pairs, Kernel::EmaUpdateForeach, |tensors, count| EmaForeachParams { decay, count, decay_at, tensors })
}
