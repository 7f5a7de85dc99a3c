//! Launchers of `kernels/conv.cu`: conv2d forward, input gradient and weight gradient as implicit
//! GEMMs on `gemm.rs`'s 64 × 64 tiles (per group; P = HO·WO, KK = KH·KW):
//!
//! | kernel      | M | N        | K        | grid z             |
//! |-------------|---|----------|----------|--------------------|
//! | forward     | O | B·P      | C·KK     | groups             |
//! | input grad  | C | B·H·W    | O·KK     | groups             |
//! | weight grad | O | C·KK     | B·P      | groups × K slices  |
//!
//! The weight gradient's K (the batch's positions) is long while O·C·KK can be a single tile (64
//! filters of 1·5·5), so it is split like a GEMM's and the slices added by `reduce::sum_to`.
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{CudaBuffer, CudaDevice};
use super::elementwise::fill;
use super::gemm::{check_i32, split_k, sum_splits, tile_grid, TILE_M, TILE_N};
use super::module::Kernel;
use super::params::{ConvParams, FastDivmod};
use super::{buffer, launched, output};
use crate::backend::ConvGeometry;
use crate::error::Result;
use crate::tensor::Tensor;

/// A divisor for the kernels' index decoding. A zero size (an empty input plane, which padding can
/// still turn into a non-empty output) is never divided by: the launches skip or see no valid tap.
fn divisor(size: usize) -> FastDivmod {
    FastDivmod::new(size.max(1) as u32)
}

/// The kernels' parameters, after checking that every size they index with 32-bit ints fits.
fn conv_params(op: &'static str, geom: &ConvGeometry, splits: usize, split_len: usize) -> Result<ConvParams> {
    let ConvGeometry { groups, batch, in_channels, in_h, in_w, out_channels, kernel_h, kernel_w, stride, padding, out_h, out_w } = *geom;
    let (in_area, out_area, kernel_area) = (in_h * in_w, out_h * out_w, kernel_h * kernel_w);
    for (what, v) in [
        ("G", groups),
        ("B·H·W", batch * in_area),
        ("B·HO·WO", batch * out_area),
        ("C·H·W", in_channels * in_area),
        ("O·HO·WO", out_channels * out_area),
        ("C·KH·KW", in_channels * kernel_area),
        ("O·KH·KW", out_channels * kernel_area),
        ("H + 2·padding", in_h + 2 * padding),
        ("W + 2·padding", in_w + 2 * padding),
        ("stride·HO", stride * out_h),
        ("stride·WO", stride * out_w),
    ] {
        check_i32(op, what, v)?;
    }
    let i = |v: usize| v as i32;
    Ok(ConvParams {
        groups: i(groups),
        batch: i(batch),
        in_channels: i(in_channels),
        in_h: i(in_h),
        in_w: i(in_w),
        out_channels: i(out_channels),
        kernel_h: i(kernel_h),
        kernel_w: i(kernel_w),
        stride: i(stride),
        padding: i(padding),
        out_h: i(out_h),
        out_w: i(out_w),
        splits: i(splits),
        split_len: i(split_len),
        kernel_area: divisor(kernel_area),
        kernel_wd: divisor(kernel_w),
        in_area: divisor(in_area),
        in_wd: divisor(in_w),
        out_area: divisor(out_area),
        out_wd: divisor(out_w),
        stride_d: divisor(stride),
    })
}

/// One launch of a conv kernel on its two operands.
fn launch(
    dev: &Arc<CudaDevice>,
    kernel: Kernel,
    p: &ConvParams,
    config: LaunchConfig,
    a: &Tensor,
    b: &Tensor,
    out: &mut CudaBuffer,
) -> Result<()> {
    // SAFETY: the launchers pass operands whose sizes match `p` (ops checked the shapes against the
    // geometry) and an output holding what the kernel writes (its M·N per group, times the K
    // slices); every size the kernel indexes with 32-bit ints was checked by `conv_params`, and
    // the kernels bounds-check every tile tail and every padded or stride-skipped tap.
    let r = unsafe {
        dev.stream()
            .launch_builder(dev.kernel(kernel))
            .arg(p)
            .arg(&buffer(a).slice)
            .arg(&buffer(b).slice)
            .arg(&mut out.slice)
            .launch(config)
    };
    launched(kernel, r)
}

/// `y = conv2d(x, w)`: `[G, B, O, HO, WO]`.
pub(crate) fn conv2d(dev: &Arc<CudaDevice>, x: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
    let shape = geom.output_shape();
    let mut y = dev.alloc(shape.iter().product())?;
    let (m, n) = (geom.out_channels, geom.batch * geom.out_h * geom.out_w);
    if geom.groups * m * n > 0 {
        let p = conv_params("conv2d", geom, 1, geom.in_channels * geom.kernel_h * geom.kernel_w)?;
        launch(dev, Kernel::Conv2d, &p, tile_grid("conv2d", m, n, geom.groups)?, x, w, &mut y)?;
    }
    output(y, &shape)
}

/// `dx` of `conv2d` (also conv-transpose2d's forward): `[G, B, C, H, W]`.
pub(crate) fn conv2d_input_grad(dev: &Arc<CudaDevice>, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
    let shape = geom.input_shape();
    let mut d_x = dev.alloc(shape.iter().product())?;
    let (m, n) = (geom.in_channels, geom.batch * geom.in_h * geom.in_w);
    if geom.groups * m * n > 0 {
        let p = conv_params("conv2d_input_grad", geom, 1, geom.out_channels * geom.kernel_h * geom.kernel_w)?;
        launch(dev, Kernel::Conv2dInputGrad, &p, tile_grid("conv2d_input_grad", m, n, geom.groups)?, dy, w, &mut d_x)?;
    }
    output(d_x, &shape)
}

/// `dw` of `conv2d`: `[G, O, C, KH, KW]`, K = B·HO·WO split across blocks when the tiles are few.
pub(crate) fn conv2d_weight_grad(dev: &Arc<CudaDevice>, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
    let shape = geom.weight_shape();
    let out_len: usize = shape.iter().product();
    let (m, n, k) = (geom.out_channels, geom.in_channels * geom.kernel_h * geom.kernel_w, geom.batch * geom.out_h * geom.out_w);
    if out_len == 0 {
        return output(dev.alloc(0)?, &shape);
    }
    if k == 0 {
        // An empty batch: a sum over nothing.
        let mut d_w = dev.alloc(out_len)?;
        fill(dev, &mut d_w, 0.0)?;
        return output(d_w, &shape);
    }
    let tiles = geom.groups * m.div_ceil(TILE_M) * n.div_ceil(TILE_N);
    let (splits, split_len) = split_k(tiles, k, out_len, dev.properties().multiprocessors as usize);
    let p = conv_params("conv2d_weight_grad", geom, splits, split_len)?;
    let mut partials = dev.alloc(splits * out_len)?;
    launch(dev, Kernel::Conv2dWeightGrad, &p, tile_grid("conv2d_weight_grad", m, n, geom.groups * splits)?, x, dy, &mut partials)?;
    sum_splits(dev, partials, splits, out_len, &shape)
}
