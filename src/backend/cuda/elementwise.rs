//! Launchers of `kernels/elementwise.cu`.
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{CudaBuffer, CudaDevice};
use super::module::Kernel;
use super::params::{binary_code, BinaryParams, UnaryParams, BINARY_FIRST, MAX_RANK};
use super::{buffer, output};
use crate::backend::cpu::broadcast_strides;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const BLOCK: u32 = 256;

/// A grid-stride launch over `n` elements: enough blocks to fill the device, no more.
pub(crate) fn grid_for(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let max_blocks = (dev.properties().multiprocessors.max(1) as u32) * 16;
    let blocks = (n.div_ceil(BLOCK as usize) as u32).clamp(1, max_blocks);
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn launched(what: Kernel, r: std::result::Result<impl Sized, cudarc::driver::DriverError>) -> Result<()> {
    r.map(|_| ()).map_err(|e| Error::cuda(format!("launching {}", what.symbol()), e))
}

pub(crate) fn fill(dev: &Arc<CudaDevice>, out: &mut CudaBuffer, value: f32) -> Result<()> {
    let n = out.len();
    if n == 0 {
        return Ok(());
    }
    let f = dev.kernel(Kernel::Fill);
    let n64 = n as i64;
    let _range = crate::profile::range(Kernel::Fill.symbol());
    // SAFETY: the kernel writes out[0..n) and reads nothing; `out` holds n floats.
    let r = unsafe { dev.stream().launch_builder(f).arg(&mut out.slice).arg(&value).arg(&n64).launch(grid_for(dev, n)) };
    launched(Kernel::Fill, r)
}

pub(crate) fn unary(dev: &Arc<CudaDevice>, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let n = x.numel();
    let mut y = dev.alloc(n)?;
    if n > 0 {
        let p = UnaryParams::new(op, n);
        let f = dev.kernel(Kernel::Unary);
        let _range = crate::profile::range(Kernel::Unary.symbol());
        // SAFETY: x and y hold n floats each; the kernel reads x[0..n) and writes y[0..n).
        let r = unsafe { dev.stream().launch_builder(f).arg(&p).arg(&buffer(x).slice).arg(&mut y.slice).launch(grid_for(dev, n)) };
        launched(Kernel::Unary, r)?;
    }
    output(y, x.shape())
}

fn to_fixed(v: &[usize]) -> [i64; MAX_RANK] {
    let mut out = [0i64; MAX_RANK];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x as i64;
    }
    out
}

pub(crate) fn binary(dev: &Arc<CudaDevice>, op: BinaryOp, a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    launch_binary(dev, binary_code(op), a, b, out_shape)
}

/// `x` broadcast to `shape` (checked by ops): the binary kernel copying its first operand.
pub(crate) fn broadcast_to(dev: &Arc<CudaDevice>, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    launch_binary(dev, (BINARY_FIRST, 0.0), x, x, shape)
}

/// One launch of the binary kernels with op `code` and its scalar, over `out_shape`.
fn launch_binary(dev: &Arc<CudaDevice>, (code, scalar): (i32, f32), a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    if out_shape.len() > MAX_RANK {
        return Err(Error::shape("binary", format!("rank {} exceeds the CUDA kernels' limit of {MAX_RANK}", out_shape.len())));
    }
    let n: usize = out_shape.iter().product();
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let same = a.shape() == out_shape && b.shape() == out_shape;
        let p = BinaryParams {
            n: n as i64,
            op: code,
            rank: out_shape.len() as i32,
            scalar,
            pad_: 0,
            shape: to_fixed(out_shape),
            a_strides: to_fixed(&broadcast_strides(a.shape(), out_shape)),
            b_strides: to_fixed(&broadcast_strides(b.shape(), out_shape)),
        };
        let k = if same { Kernel::BinarySame } else { Kernel::BinaryBroadcast };
        let _range = crate::profile::range(k.symbol());
        // SAFETY: a and b are read only at offsets Σ idx·stride, which stay inside their shapes
        // (broadcast strides are 0 on size-1 dims); out holds n floats.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(a).slice)
                .arg(&buffer(b).slice)
                .arg(&mut out.slice)
                .launch(grid_for(dev, n))
        };
        launched(k, r)?;
    }
    output(out, out_shape)
}
