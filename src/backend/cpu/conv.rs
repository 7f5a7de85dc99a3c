//! Grouped 2-D convolution by im2col + GEMM (the plain 7-loop form is the test oracle).
//!
//! Shapes: x `[G, B, C, H, W]`, w `[G, O, C, KH, KW]`, y `[G, B, O, HO, WO]`; P = HO·WO positions,
//! patch = C·KH·KW. A group's images go through in chunks of n, so that each GEMM is wide even when
//! P is small (16 positions in GS-WGAN's last critic conv, where one GEMM per image spends its time
//! packing W): `cols` `[patch, n·P]` holds the chunk's windows as columns, and per chunk
//!   y     `[O, n·P]`     = W `[O, patch]` · cols
//!   cols  `[patch, n·P]` = Wᵀ · d_y            (then folded back onto d_x)
//!   d_w   `[O, patch]`  += d_y `[O, n·P]` · colsᵀ
//! Chunk sizes depend on shapes only, so results are reproducible; large GEMMs thread inside
//! `matrixmultiply`.
use super::Real;
use crate::backend::ConvGeometry;

/// Columns (n·P) a chunk aims for: enough that packing W costs little next to the product.
const TARGET_COLUMNS: usize = 256;

/// Most elements of `cols` per chunk (4 MiB in f32), so that it stays near the caches.
const COLS_BUDGET: usize = 1 << 20;

/// Sizes derived from a geometry.
struct Layout {
    /// `C·KH·KW`: one window, one weight row.
    patch: usize,
    /// `HO·WO`.
    positions: usize,
    /// `C·H·W`.
    image: usize,
    /// `O·HO·WO`.
    out_image: usize,
    /// Images per chunk.
    chunk: usize,
}

fn layout(geom: &ConvGeometry) -> Layout {
    let patch = geom.in_channels * geom.kernel_h * geom.kernel_w;
    let positions = geom.out_h * geom.out_w;
    let wanted = TARGET_COLUMNS.div_ceil(positions.max(1));
    let affordable = COLS_BUDGET / (patch * positions).max(1);
    let max_chunk = wanted.min(affordable).clamp(1, geom.batch.max(1));
    // Balanced chunks: as few as max_chunk allows, of nearly equal size.
    let chunks = geom.batch.div_ceil(max_chunk).max(1);
    Layout {
        patch,
        positions,
        image: geom.in_channels * geom.in_h * geom.in_w,
        out_image: geom.out_channels * positions,
        chunk: geom.batch.div_ceil(chunks).max(1),
    }
}

/// The output coordinates `lo..hi` (of `0..out`) whose input coordinate `o·stride + k − padding` at
/// kernel tap `k` lands inside `0..size`; the others read zero padding.
fn valid_range(out: usize, k: usize, stride: usize, padding: usize, size: usize) -> (usize, usize) {
    let lo = padding.saturating_sub(k).div_ceil(stride);
    let hi = (size + padding).saturating_sub(k).div_ceil(stride).min(out);
    (lo.min(hi), hi)
}

/// Unfolds a chunk's `n` images `[n, C, H, W]` into `cols` `[patch, n·P]`: row (c, ki, kj), column
/// (i, oy, ox) is `x[i, c, oy·s+ki−p, ox·s+kj−p]`, zero in the padding.
fn im2col<T: Real>(geom: &ConvGeometry, images: &[T], n: usize, cols: &mut [T]) {
    let ConvGeometry { in_channels, in_h, in_w, kernel_h, kernel_w, stride, padding, out_h, out_w, .. } = *geom;
    let (positions, image) = (out_h * out_w, in_channels * in_h * in_w);
    for (row_index, row) in cols.chunks_mut(n * positions).enumerate() {
        let (c, ki, kj) = (row_index / (kernel_h * kernel_w), (row_index / kernel_w) % kernel_h, row_index % kernel_w);
        let (y_lo, y_hi) = valid_range(out_h, ki, stride, padding, in_h);
        let (x_lo, x_hi) = valid_range(out_w, kj, stride, padding, in_w);
        if x_lo == x_hi {
            // This tap reads padding at every output column.
            row.fill(T::zero());
            continue;
        }
        for (i, dst) in row.chunks_mut(positions).enumerate() {
            let plane = &images[i * image + c * in_h * in_w..][..in_h * in_w];
            dst[..y_lo * out_w].fill(T::zero());
            dst[y_hi * out_w..].fill(T::zero());
            for oy in y_lo..y_hi {
                let dst = &mut dst[oy * out_w..][..out_w];
                dst[..x_lo].fill(T::zero());
                dst[x_hi..].fill(T::zero());
                let src = &plane[(oy * stride + ki - padding) * in_w + x_lo * stride + kj - padding..];
                if stride == 1 {
                    dst[x_lo..x_hi].copy_from_slice(&src[..x_hi - x_lo]);
                } else {
                    dst[x_lo..x_hi].iter_mut().zip(src.iter().step_by(stride)).for_each(|(d, &s)| *d = s);
                }
            }
        }
    }
}

/// Adds column block `i` of `cols` `[patch, n·P]` back onto image i `[C, H, W]`, summing where
/// windows overlap: the adjoint of `im2col`.
fn col2im<T: Real>(geom: &ConvGeometry, cols: &[T], n: usize, i: usize, image: &mut [T]) {
    let ConvGeometry { in_channels, in_h, in_w, kernel_h, kernel_w, stride, padding, out_h, out_w, .. } = *geom;
    let positions = out_h * out_w;
    for c in 0..in_channels {
        let plane = &mut image[c * in_h * in_w..][..in_h * in_w];
        for ki in 0..kernel_h {
            let (y_lo, y_hi) = valid_range(out_h, ki, stride, padding, in_h);
            for kj in 0..kernel_w {
                let (x_lo, x_hi) = valid_range(out_w, kj, stride, padding, in_w);
                if x_lo == x_hi {
                    continue;
                }
                let row_index = (c * kernel_h + ki) * kernel_w + kj;
                let src = &cols[(row_index * n + i) * positions..][..positions];
                for oy in y_lo..y_hi {
                    let src = &src[oy * out_w + x_lo..oy * out_w + x_hi];
                    let dst = &mut plane[(oy * stride + ki - padding) * in_w + x_lo * stride + kj - padding..];
                    if stride == 1 {
                        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
                    } else {
                        dst.iter_mut().step_by(stride).zip(src).for_each(|(d, &s)| *d += s);
                    }
                }
            }
        }
    }
}

/// The chunk `[n, O, P]` of a conv output starting at image `first`, as `[O, n·P]`.
fn gather_chunk<T: Real>(y: &[T], first: usize, n: usize, o: usize, positions: usize, out: &mut [T]) {
    for i in 0..n {
        for oc in 0..o {
            out[(oc * n + i) * positions..][..positions].copy_from_slice(&y[((first + i) * o + oc) * positions..][..positions]);
        }
    }
}

/// The inverse of `gather_chunk`: `[O, n·P]` written to images `first..first + n` of `y`.
fn scatter_chunk<T: Real>(chunk: &[T], first: usize, n: usize, o: usize, positions: usize, y: &mut [T]) {
    for i in 0..n {
        for oc in 0..o {
            y[((first + i) * o + oc) * positions..][..positions].copy_from_slice(&chunk[(oc * n + i) * positions..][..positions]);
        }
    }
}

/// `y[g,b,o,oy,ox] = Σ_{c,i,j} x[g,b,c,oy·s+i−p,ox·s+j−p] · w[g,o,c,i,j]`.
pub fn conv2d_fwd<T: Real>(geom: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    let Layout { patch, positions, image, out_image, chunk } = layout(geom);
    let (batch, o) = (geom.batch, geom.out_channels);
    let mut y = vec![T::zero(); geom.groups * batch * out_image];
    let mut cols = vec![T::zero(); patch * chunk * positions];
    let mut y_chunk = vec![T::zero(); o * chunk * positions];
    for g in 0..geom.groups {
        let w_g = &w[g * o * patch..][..o * patch];
        for b0 in (0..batch).step_by(chunk) {
            let (n, first) = (chunk.min(batch - b0), g * batch + b0);
            let cols = &mut cols[..patch * n * positions];
            im2col(geom, &x[first * image..][..n * image], n, cols);
            let y_chunk = &mut y_chunk[..o * n * positions];
            T::gemm(o, patch, n * positions, w_g, false, cols, false, T::zero(), y_chunk);
            scatter_chunk(y_chunk, first, n, o, positions, &mut y);
        }
    }
    y
}

/// `y[g, b, o, ..] += bias[g, o]` over a conv output of `geom` (one rounding per element, as a
/// separate broadcast add).
pub fn add_channel_bias<T: Real>(geom: &ConvGeometry, y: &mut [T], bias: &[T]) {
    let (o, positions) = (geom.out_channels, geom.out_h * geom.out_w);
    if o * positions == 0 {
        return;
    }
    for (image_index, image) in y.chunks_mut(o * positions).enumerate() {
        let g = image_index / geom.batch.max(1);
        for (channel, plane) in image.chunks_mut(positions).enumerate() {
            let b = bias[g * o + channel];
            plane.iter_mut().for_each(|v| *v += b);
        }
    }
}

/// `d_x = fold(Wᵀ · d_y)` per chunk.
pub fn conv2d_input_grad<T: Real>(geom: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let Layout { patch, positions, image, chunk, .. } = layout(geom);
    let (batch, o) = (geom.batch, geom.out_channels);
    let mut d_x = vec![T::zero(); geom.groups * batch * image];
    let mut cols = vec![T::zero(); patch * chunk * positions];
    let mut dy_chunk = vec![T::zero(); o * chunk * positions];
    for g in 0..geom.groups {
        let w_g = &w[g * o * patch..][..o * patch];
        for b0 in (0..batch).step_by(chunk) {
            let (n, first) = (chunk.min(batch - b0), g * batch + b0);
            let dy_chunk = &mut dy_chunk[..o * n * positions];
            gather_chunk(dy, first, n, o, positions, dy_chunk);
            let cols = &mut cols[..patch * n * positions];
            T::gemm(patch, o, n * positions, w_g, true, dy_chunk, false, T::zero(), cols);
            for i in 0..n {
                col2im(geom, cols, n, i, &mut d_x[(first + i) * image..][..image]);
            }
        }
    }
    d_x
}

/// `d_w[g] = Σ_chunks d_y[g, chunk] · cols(x[g, chunk])ᵀ`.
pub fn conv2d_weight_grad<T: Real>(geom: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let Layout { patch, positions, image, chunk, .. } = layout(geom);
    let (batch, o) = (geom.batch, geom.out_channels);
    let mut d_w = vec![T::zero(); geom.groups * o * patch];
    let mut cols = vec![T::zero(); patch * chunk * positions];
    let mut dy_chunk = vec![T::zero(); o * chunk * positions];
    for g in 0..geom.groups {
        let d_w_g = &mut d_w[g * o * patch..][..o * patch];
        for b0 in (0..batch).step_by(chunk) {
            let (n, first) = (chunk.min(batch - b0), g * batch + b0);
            let cols = &mut cols[..patch * n * positions];
            im2col(geom, &x[first * image..][..n * image], n, cols);
            let dy_chunk = &mut dy_chunk[..o * n * positions];
            gather_chunk(dy, first, n, o, positions, dy_chunk);
            T::gemm(o, n * positions, patch, dy_chunk, false, cols, true, T::one(), d_w_g);
        }
    }
    d_w
}
