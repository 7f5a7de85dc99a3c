//! Launchers of `kernels/conv.cu`: conv2d forward, input gradient and weight gradient as implicit
//! GEMMs on `gemm.rs`'s tiles (per group; P = HO·WO, KK = KH·KW):
//!
//! | kernel      | M | N        | K        | grid z             |
//! |-------------|---|----------|----------|--------------------|
//! | forward     | O | B·P      | C·KK     | groups             |
//! | input grad  | C | B·H·W/s² | O·KK/s²  | groups, s² launches|
//! | weight grad | O | C·KK     | B·P      | groups × K slices  |
//!
//! Each has an f32 FFMA kernel and three TF32 tensor-core builds (register-staged, through the
//! cp.async pipeline, and on 128 × 128 tiles: `gemm::Tf32Pipeline`), taken where the calling
//! thread allows TF32 and the product is large enough (`gemm::tf32_for`).
//!
//! The weight gradient's K (the batch's positions) is long while O·C·KK can be a single tile (64
//! filters of 1·5·5), so it is split like a GEMM's and the slices added by `reduce::sum_to`.
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{CudaBuffer, CudaDevice};
use super::elementwise::fill;
use super::gemm::{build_for, check_i32, split_k, sum_splits, tf32_for, tile_grid, tiles_64};
use super::module::Kernel;
use super::params::{ConvParams, ConvPhase, FastDivmod};
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
pub(super) fn conv_params(op: &'static str, geom: &ConvGeometry, splits: usize, split_len: usize) -> Result<ConvParams> {
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

/// The stride phases of the input gradient that hold at least one input pixel (all s² of them for
/// an input of at least s pixels each way): pixels with `(iy + p) mod s = phase_y` are
/// `iy = first_y + s·j`, reached by the taps `ki = phase_y + s·ty` from `oy = shift_y + j − ty`
/// (and likewise in x). A phase may have no taps (`phase_y ≥ KH`): its K is 0 and it writes zeros.
fn input_grad_phases(geom: &ConvGeometry) -> Vec<ConvPhase> {
    let (s, p) = (geom.stride, geom.padding);
    // (phase, first, count of pixels, count of taps, shift) along one axis.
    let axis = |size: usize, kernel: usize| -> Vec<(usize, usize, usize, usize, usize)> {
        (0..s)
            .map(|phase| {
                let first = (phase + s - p % s) % s;
                let count = if first < size { (size - first).div_ceil(s) } else { 0 };
                let taps = if phase < kernel { (kernel - phase).div_ceil(s) } else { 0 };
                debug_assert_eq!((first + p - phase) % s, 0, "first + p ≡ phase (mod s)");
                (phase, first, count, taps, (first + p - phase) / s)
            })
            .filter(|a| a.2 > 0)
            .collect()
    };
    let (ys, xs) = (axis(geom.in_h, geom.kernel_h), axis(geom.in_w, geom.kernel_w));
    let mut phases = Vec::with_capacity(ys.len() * xs.len());
    for &(phase_y, first_y, rows, taps_y, shift_y) in &ys {
        for &(phase_x, first_x, cols, taps_x, shift_x) in &xs {
            let i = |v: usize| v as i32;
            phases.push(ConvPhase {
                phase_y: i(phase_y),
                phase_x: i(phase_x),
                first_y: i(first_y),
                first_x: i(first_x),
                rows: i(rows),
                cols: i(cols),
                taps_y: i(taps_y),
                taps_x: i(taps_x),
                shift_y: i(shift_y),
                shift_x: i(shift_x),
                pad0_: 0,
                pad1_: 0,
                pixels: divisor(rows * cols),
                cols_d: divisor(cols),
                taps_area: divisor(taps_y * taps_x),
                taps_xd: divisor(taps_x),
            });
        }
    }
    phases
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
    let _range = crate::profile::range(kernel.symbol());
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
/// `conv2d(x, w)` `[G, B, O, HO, WO]`, with `bias` `[G, O]` added in the epilogue when given.
pub(crate) fn conv2d(dev: &Arc<CudaDevice>, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, geom: &ConvGeometry) -> Result<Tensor> {
    let shape = geom.output_shape();
    let mut y = dev.alloc(shape.iter().product())?;
    let (m, n) = (geom.out_channels, geom.batch * geom.out_h * geom.out_w);
    if geom.groups * m * n > 0 {
        let k = geom.in_channels * geom.kernel_h * geom.kernel_w;
        let p = conv_params("conv2d", geom, 1, k)?;
        let tf32 = tf32_for(dev, m, n, k);
        let config = tile_grid("conv2d", m, n, geom.groups, tf32)?;
        match bias {
            None => {
                let kernel = build_for(tf32, [Kernel::Conv2d, Kernel::Conv2dTf32, Kernel::Conv2dTf32CpAsync, Kernel::Conv2dTf32Wide]);
                launch(dev, kernel, &p, config, x, w, &mut y)?
            }
            Some(bias) => {
                let kernel = build_for(
                    tf32,
                    [Kernel::Conv2dBias, Kernel::Conv2dBiasTf32, Kernel::Conv2dBiasTf32CpAsync, Kernel::Conv2dBiasTf32Wide],
                );
                let _range = crate::profile::range(kernel.symbol());
                // SAFETY: as `launch`'s, and bias holds G·O floats (checked by ops), read at
                // [g·O + o] for o < O only.
                let r = unsafe {
                    dev.stream()
                        .launch_builder(dev.kernel(kernel))
                        .arg(&p)
                        .arg(&buffer(x).slice)
                        .arg(&buffer(w).slice)
                        .arg(&buffer(bias).slice)
                        .arg(&mut y.slice)
                        .launch(config)
                };
                launched(kernel, r)?;
            }
        }
    }
    output(y, &shape)
}

/// `dx` of `conv2d` (also conv-transpose2d's forward): `[G, B, C, H, W]`, one launch per stride
/// phase; together the phases write every pixel once.
pub(crate) fn conv2d_input_grad(dev: &Arc<CudaDevice>, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
    let shape = geom.input_shape();
    let mut d_x = dev.alloc(shape.iter().product())?;
    let (m, n) = (geom.in_channels, geom.batch * geom.in_h * geom.in_w);
    if geom.groups * m * n == 0 {
        return output(d_x, &shape);
    }
    let p = conv_params("conv2d_input_grad", geom, 1, geom.out_channels * geom.kernel_h * geom.kernel_w)?;
    for q in input_grad_phases(geom) {
        let n = geom.batch * (q.rows * q.cols) as usize;
        let k = geom.out_channels * (q.taps_y * q.taps_x) as usize;
        let tf32 = tf32_for(dev, m, n, k);
        let kernel = build_for(
            tf32,
            [Kernel::Conv2dInputGrad, Kernel::Conv2dInputGradTf32, Kernel::Conv2dInputGradTf32CpAsync, Kernel::Conv2dInputGradTf32Wide],
        );
        let config = tile_grid("conv2d_input_grad", m, n, geom.groups, tf32)?;
        let _range = crate::profile::range(kernel.symbol());
        // SAFETY: dy and w match `p` (ops checked the shapes against the geometry) and d_x holds
        // G·B·C·H·W floats; the phase's pixels lie inside H × W and its taps inside KH × KW
        // (`input_grad_phases`), every dy read is bounds-checked against HO × WO in the kernel, and
        // the sizes it indexes with 32-bit ints were checked by `conv_params`.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(kernel))
                .arg(&p)
                .arg(&q)
                .arg(&buffer(dy).slice)
                .arg(&buffer(w).slice)
                .arg(&mut d_x.slice)
                .launch(config)
        };
        launched(kernel, r)?;
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
    let (splits, split_len) = split_k(tiles_64(geom.groups, m, n), k, out_len, dev.properties().multiprocessors as usize);
    let p = conv_params("conv2d_weight_grad", geom, splits, split_len)?;
    let mut partials = dev.alloc(splits * out_len)?;
    let tf32 = tf32_for(dev, m, n, k);
    let kernel = build_for(
        tf32,
        [Kernel::Conv2dWeightGrad, Kernel::Conv2dWeightGradTf32, Kernel::Conv2dWeightGradTf32CpAsync, Kernel::Conv2dWeightGradTf32Wide],
    );
    launch(dev, kernel, &p, tile_grid("conv2d_weight_grad", m, n, geom.groups * splits, tf32)?, x, dy, &mut partials)?;
    sum_splits(dev, partials, splits, out_len, &shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops::conv_geometry;

    /// The phases cover every input pixel exactly once, and each phase's taps and dy positions are
    /// exactly the (ki, kj, oy, ox) with oy·s + ki − p = iy inside dy, for every pixel.
    #[test]
    fn input_grad_phases_cover_each_pixel_once_with_exactly_its_taps() {
        for (h, w, k, s, p) in [
            (28, 28, 5, 2, 2),
            (11, 8, 4, 3, 1),
            (28, 28, 8, 2, 0),
            (9, 13, 3, 2, 1),
            (4, 5, 2, 2, 3),
            (2, 2, 5, 2, 3),
            (8, 8, 3, 1, 1),
            (1, 3, 3, 3, 1),
        ] {
            let geom = conv_geometry(&[1, 1, 1, h, w], &[1, 1, 1, k, k], s, p).unwrap();
            let mut seen = vec![0; h * w];
            for q in input_grad_phases(&geom) {
                for j in 0..q.rows {
                    for i in 0..q.cols {
                        let (iy, ix) = ((q.first_y + s as i32 * j) as usize, (q.first_x + s as i32 * i) as usize);
                        assert!(iy < h && ix < w, "{q:?}: pixel ({iy}, {ix}) outside {h}×{w}");
                        seen[iy * w + ix] += 1;
                        let mut from_phase = vec![];
                        for ty in 0..q.taps_y {
                            for tx in 0..q.taps_x {
                                let (oy, ox) = (q.shift_y + j - ty, q.shift_x + i - tx);
                                let (ki, kj) = (q.phase_y + s as i32 * ty, q.phase_x + s as i32 * tx);
                                if (0..geom.out_h as i32).contains(&oy) && (0..geom.out_w as i32).contains(&ox) {
                                    from_phase.push((ki, kj, oy, ox));
                                }
                            }
                        }
                        let mut direct = vec![];
                        for ki in 0..k as i32 {
                            for kj in 0..k as i32 {
                                let (sy, sx) = (iy as i32 + p as i32 - ki, ix as i32 + p as i32 - kj);
                                let (oy, ox) = (sy.div_euclid(s as i32), sx.div_euclid(s as i32));
                                let divides = sy.rem_euclid(s as i32) == 0 && sx.rem_euclid(s as i32) == 0;
                                if divides && (0..geom.out_h as i32).contains(&oy) && (0..geom.out_w as i32).contains(&ox) {
                                    direct.push((ki, kj, oy, ox));
                                }
                            }
                        }
                        from_phase.sort();
                        direct.sort();
                        assert_eq!(from_phase, direct, "{h}×{w} k{k} s{s} p{p}: pixel ({iy}, {ix})");
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{h}×{w} k{k} s{s} p{p}: coverage {seen:?}");
        }
    }
}
