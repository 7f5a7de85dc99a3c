//! Launchers of `kernels/shape.cu`: narrow, pad and concat along one axis, the tensor seen as
//! `[outer, dim, inner]` around it, and rows gathered by index. One thread per element,
//! grid-striding ([`grid_for`]); an empty output (or an empty part of a concat) launches nothing.
use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::device::{CudaBuffer, CudaDevice};
use super::elementwise::grid_for;
use super::module::Kernel;
use super::params::{AxisCopyParams, GatherRowsParams, GATHER_INLINE_ROWS};
use super::{buffer, launched, output, step_block};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `(outer, dim, inner)` around `axis`.
fn split(op: &'static str, shape: &[usize], axis: usize) -> Result<(usize, usize, usize)> {
    if axis >= shape.len() {
        return Err(Error::shape(op, format!("axis {axis} out of range for {shape:?}")));
    }
    Ok((shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product()))
}

fn with_dim(shape: &[usize], axis: usize, dim: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[axis] = dim;
    s
}

/// Launches one of the axis-copy kernels (narrow, pad, concat part) over `p.n` elements. The
/// caller has checked that `p` addresses only elements inside `src` and `out`.
fn copy_along_axis(dev: &Arc<CudaDevice>, k: Kernel, p: &AxisCopyParams, src: &Tensor, out: &mut CudaBuffer) -> Result<()> {
    let _range = crate::profile::range(k.symbol());
    // SAFETY: the kernel reads src and writes out only at the offsets `p` describes, which the
    // caller checked lie inside both buffers (see the "In bounds" comment at each call).
    let r = unsafe {
        dev.stream().launch_builder(dev.kernel(k)).arg(p).arg(&buffer(src).slice).arg(&mut out.slice).launch(grid_for(dev, p.n as usize))
    };
    launched(k, r)
}

/// Elements `start..start + len` along `axis`.
pub(crate) fn narrow(dev: &Arc<CudaDevice>, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let (outer, dim, inner) = split("narrow", x.shape(), axis)?;
    if start + len > dim {
        return Err(Error::shape("narrow", format!("{start}..{} exceeds dim {axis} of {:?}", start + len, x.shape())));
    }
    let n = outer * len * inner;
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let p = AxisCopyParams {
            n: n as i64,
            inner: inner as i64,
            src_dim: dim as i64,
            dst_dim: len as i64,
            src_start: start as i64,
            dst_start: 0,
            len: len as i64,
        };
        // In bounds: out holds n = outer·len·inner floats; element (o, j, k) reads x at
        // (o, start + j, k) with start + j < start + len ≤ dim (checked above), inside x.
        copy_along_axis(dev, Kernel::Narrow, &p, x, &mut out)?;
    }
    output(out, &with_dim(x.shape(), axis, len))
}

/// `before` and `after` zero slices around `x` along `axis`.
pub(crate) fn pad(dev: &Arc<CudaDevice>, x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor> {
    let (outer, dim, inner) = split("pad", x.shape(), axis)?;
    let padded = before + dim + after;
    let n = outer * padded * inner;
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let p = AxisCopyParams {
            n: n as i64,
            inner: inner as i64,
            src_dim: dim as i64,
            dst_dim: padded as i64,
            src_start: 0,
            dst_start: before as i64,
            len: dim as i64,
        };
        // In bounds: out holds n = outer·padded·inner floats, each written once; x is read only at
        // (o, j − before, k) with 0 ≤ j − before < dim, inside x (outer·dim·inner floats).
        copy_along_axis(dev, Kernel::Pad, &p, x, &mut out)?;
    }
    output(out, &with_dim(x.shape(), axis, padded))
}

/// Concatenation along `axis`: one launch per non-empty part, each writing its own slices of the
/// output, which together cover it.
pub(crate) fn concat(dev: &Arc<CudaDevice>, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = xs.first().ok_or_else(|| Error::shape("concat", "nothing to concatenate"))?.shape();
    let (outer, _, inner) = split("concat", first, axis)?;
    for x in xs {
        let s = x.shape();
        if s.len() != first.len() || s.iter().zip(first).enumerate().any(|(i, (a, b))| i != axis && a != b) {
            return Err(Error::shape("concat", format!("shapes {first:?} and {s:?} differ outside axis {axis}")));
        }
    }
    let total: usize = xs.iter().map(|x| x.shape()[axis]).sum();
    let mut out = dev.alloc(outer * total * inner)?;
    let mut offset = 0;
    for x in xs {
        let len = x.shape()[axis];
        let n = outer * len * inner;
        if n > 0 {
            let p = AxisCopyParams {
                n: n as i64,
                inner: inner as i64,
                src_dim: len as i64,
                dst_dim: total as i64,
                src_start: 0,
                dst_start: offset as i64,
                len: len as i64,
            };
            // In bounds: the part holds n = outer·len·inner floats, read once each; element (o, j, k)
            // goes to out at (o, offset + j, k) with offset + j < offset + len ≤ total, inside out
            // (outer·total·inner floats). Parts write disjoint slices; launches are stream-ordered.
            copy_along_axis(dev, Kernel::ConcatPart, &p, x, &mut out)?;
        }
        offset += len;
    }
    output(out, &with_dim(first, axis, total))
}

/// Rows `indices` of `table` (`[R, ...]`): the rows stay on the device; up to
/// [`GATHER_INLINE_ROWS`] indices travel in the launch's parameters (no copy, nothing a CUDA graph
/// capture refuses), more are uploaded (4 bytes a row).
pub(crate) fn gather_rows(dev: &Arc<CudaDevice>, table: &Tensor, indices: &[u32]) -> Result<Tensor> {
    let shape = table.shape();
    let rows = shape.first().copied().ok_or_else(|| Error::shape("gather_rows", "needs a table of rank ≥ 1"))?;
    if let Some(bad) = indices.iter().find(|&&i| i as usize >= rows) {
        return Err(Error::shape("gather_rows", format!("index {bad} is past the table's {rows} rows")));
    }
    let row_len: usize = shape[1..].iter().product();
    let n = indices.len() * row_len;
    let mut out = dev.alloc(n)?;
    if n > 0 {
        let mut p = GatherRowsParams { n: n as i64, row_len: row_len as i64, inline_indices: [0; GATHER_INLINE_ROWS] };
        // The bound step block's copy of the indices, if it holds them (a step's batch or its
        // example weight rows).
        let block_indices = step_block::gather_indices_at(dev, indices, rows);
        let index_buf = if block_indices != 0 {
            None
        } else if indices.len() <= GATHER_INLINE_ROWS {
            p.inline_indices[..indices.len()].copy_from_slice(indices);
            None
        } else {
            let buf = dev
                .stream()
                .clone_htod(indices)
                .map_err(|e| Error::cuda(format!("copying {} row indices to the device", indices.len()), e))?;
            Some(buf)
        };
        let k = Kernel::GatherRows;
        let _range = crate::profile::range(k.symbol());
        let mut launch = dev.stream().launch_builder(dev.kernel(k));
        launch.arg(&p).arg(&buffer(table).slice);
        // A null index pointer: the kernel reads the parameters' indices.
        match &index_buf {
            Some(buf) => launch.arg(buf),
            None => launch.arg(&block_indices),
        };
        // SAFETY: out holds n = len·row_len floats, written once each; element (r, k) reads index r
        // (r < len: the uploaded slice's length, the step block's len indices, or within the
        // len ≤ GATHER_INLINE_ROWS indices copied into the parameters) and table at that
        // index·row_len + k, inside the table since every index is below its rows (checked above;
        // the block's copy is read only from a table at least as long as its uploads were checked
        // against: the index bound, or the weight table's two rows, see StepValues::gather_word).
        let r = unsafe { launch.arg(&mut out.slice).launch(grid_for(dev, n)) };
        launched(k, r)?;
    }
    let mut out_shape = shape.to_vec();
    out_shape[0] = indices.len();
    output(out, &out_shape)
}
