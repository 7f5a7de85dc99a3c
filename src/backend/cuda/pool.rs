//! Launchers of `kernels/pool.cu`: 2×2 max pooling (gather and its adjoint scatter), nearest ×2
//! upsampling and 2×2 sum pooling over the last two dims `[.., H, W]`. One thread per output
//! element, grid-striding ([`grid_for`]); an empty output launches nothing.
use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::device::CudaDevice;
use super::elementwise::grid_for;
use super::module::Kernel;
use super::params::Pool2x2Params;
use super::{buffer, launched, output};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `(planes, H, W)` of a `[.., H, W]` tensor.
fn planes(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(Error::shape(op, format!("needs [.., H, W], got {s:?}")));
    }
    let r = s.len();
    Ok((s[..r - 2].iter().product(), s[r - 2], s[r - 1]))
}

fn with_hw(shape: &[usize], h: usize, w: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    let r = s.len();
    s[r - 2] = h;
    s[r - 1] = w;
    s
}

fn params(n: usize, (in_h, in_w): (usize, usize), (out_h, out_w): (usize, usize)) -> Pool2x2Params {
    Pool2x2Params { n: n as i64, in_h: in_h as i64, in_w: in_w as i64, out_h: out_h as i64, out_w: out_w as i64 }
}

/// `out[.., oy, ox] = v[.., argmax of x's window at (2·oy, 2·ox)]`, H and W floored.
pub(crate) fn max_pool2x2_gather(dev: &Arc<CudaDevice>, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n_planes, h, w) = planes("max_pool2x2", x)?;
    if v.shape() != x.shape() {
        return Err(Error::shape("max_pool2x2", format!("selector {:?} and values {:?} differ", x.shape(), v.shape())));
    }
    let (oh, ow) = (h / 2, w / 2);
    let n = n_planes * oh * ow;
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let p = params(n, (h, w), (oh, ow));
        let k = Kernel::MaxPool2x2Gather;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: x and v hold planes·h·w floats; each output reads its window (rows 2·oy, 2·oy + 1
        // < h, columns 2·ox, 2·ox + 1 < w) in its own plane; out holds n = planes·oh·ow floats.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(x).slice)
                .arg(&buffer(v).slice)
                .arg(&mut out.slice)
                .launch(grid_for(dev, n))
        };
        launched(k, r)?;
    }
    output(out, &with_hw(x.shape(), oh, ow))
}

/// `d_x` of max pooling: `dy` (pooled shape) routed to each window's argmax in `x`, zeros
/// elsewhere. Every element of `d_x` is written by its own thread.
pub(crate) fn max_pool2x2_scatter(dev: &Arc<CudaDevice>, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (n_planes, h, w) = planes("max_pool2x2_scatter", x)?;
    let (oh, ow) = (h / 2, w / 2);
    if dy.shape() != with_hw(x.shape(), oh, ow) {
        return Err(Error::shape("max_pool2x2_scatter", format!("dy {:?} is not the pooled shape of {:?}", dy.shape(), x.shape())));
    }
    let n = n_planes * h * w;
    let mut d_x = dev.alloc(n)?;
    if n > 0 {
        let p = params(n, (h, w), (oh, ow));
        let k = Kernel::MaxPool2x2Scatter;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: x and d_x hold n = planes·h·w floats, dy planes·oh·ow; a thread reads x's window
        // and dy only for (y/2, x/2) inside the oh × ow grid of its own plane.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(x).slice)
                .arg(&buffer(dy).slice)
                .arg(&mut d_x.slice)
                .launch(grid_for(dev, n))
        };
        launched(k, r)?;
    }
    output(d_x, x.shape())
}

/// `out[.., y, x] = in[.., y/2, x/2]`: `[.., H, W]` → `[.., 2H, 2W]`.
pub(crate) fn upsample_nearest2x(dev: &Arc<CudaDevice>, x: &Tensor) -> Result<Tensor> {
    let (n_planes, h, w) = planes("upsample_nearest2x", x)?;
    let n = n_planes * 4 * h * w;
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let p = params(n, (h, w), (2 * h, 2 * w));
        let k = Kernel::UpsampleNearest2x;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: out holds n = planes·2h·2w floats; each reads x at (y/2, x/2) < (h, w) of its plane.
        let r = unsafe {
            dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&buffer(x).slice).arg(&mut out.slice).launch(grid_for(dev, n))
        };
        launched(k, r)?;
    }
    output(out, &with_hw(x.shape(), 2 * h, 2 * w))
}

/// Sum of each 2×2 window: `[.., 2H, 2W]` → `[.., H, W]`.
pub(crate) fn sum_pool2x2(dev: &Arc<CudaDevice>, x: &Tensor) -> Result<Tensor> {
    let (n_planes, h, w) = planes("sum_pool2x2", x)?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(Error::shape("sum_pool2x2", format!("needs even H and W, got {:?}", x.shape())));
    }
    let (oh, ow) = (h / 2, w / 2);
    let n = n_planes * oh * ow;
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let p = params(n, (h, w), (oh, ow));
        let k = Kernel::SumPool2x2;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: h = 2·oh and w = 2·ow (checked above), so each output's window lies in its plane
        // of x (planes·h·w floats); out holds n = planes·oh·ow floats.
        let r = unsafe {
            dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&buffer(x).slice).arg(&mut out.slice).launch(grid_for(dev, n))
        };
        launched(k, r)?;
    }
    output(out, &with_hw(x.shape(), oh, ow))
}
