//! GS-WGAN's row sanitiser and DP-SGD's noised gradient (the references for `kernels/dp.cu`) and
//! the per-example conv weight-gradient norms (the reference for `kernels/dp_norms.cu`).
use super::Real;
use crate::backend::{ConvGeometry, GradientNoise, RowNorm};
use crate::dp::noise::{standard_normals, NoiseKey};
use crate::dp::rounding::f32_toward_zero;

/// For each row `gᵢ` (length `cols`) of `g`:
/// `ĝᵢ = gᵢ·min(1, clip/(‖gᵢ‖ + 1e-10)) + noise_std·zᵢ`, `z` drawn per element from `key`
/// (element index = position in `g`, so every row gets fresh noise). With `RowNorm::Exactly` the
/// factor is `clip/(‖gᵢ‖ + 1e-10)` without the `min`: every row is rescaled to norm `clip` (a zero
/// row stays zero).
///
/// ‖gᵢ‖ is summed in f64 (exact squares of f32 values, no overflow for any finite f32). The factor
/// is rounded to f32 toward zero and the product `g·factor`, exact in f64, is rounded toward zero
/// too, so the clipped row's norm never exceeds `clip` beyond the f64 norm's own rounding (~1e-16).
/// A row holding a NaN comes out all NaN (loud, never unclipped); one holding an infinity has a
/// zero factor, so its infinite entries become NaN. The noise is then added with one f32 product
/// and one f32 sum, as in the kernel.
pub fn sanitize_rows<T: Real>(g: &[T], cols: usize, clip: f32, rows: RowNorm, noise_std: f32, key: &NoiseKey) -> Vec<T> {
    let mut out = vec![T::of(0.0); g.len()];
    if cols == 0 {
        return out;
    }
    let std = T::of(noise_std);
    let z = if noise_std == 0.0 { Vec::new() } else { standard_normals(key, g.len()) };
    for (row, (g_row, out_row)) in g.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).enumerate() {
        let norm = g_row.iter().map(|v| v.f64() * v.f64()).sum::<f64>().sqrt();
        // Not `min`: min(NaN, 1) is 1, which would pass a row holding a NaN (and its other,
        // possibly huge, values) unclipped. A NaN norm gives a NaN factor and an all-NaN row.
        let ratio = clip as f64 / (norm + 1e-10);
        let factor = f32_toward_zero(if ratio >= 1.0 && rows == RowNorm::AtMost { 1.0 } else { ratio }) as f64;
        for (d, (o, &v)) in out_row.iter_mut().zip(g_row).enumerate() {
            // f64 tensors (finite-difference checks only) have no kernel to match: plain product.
            let clipped =
                if T::DTYPE == crate::tensor::DType::F32 { T::of(f32_toward_zero(v.f64() * factor)) } else { v * T::of_f64(factor) };
            *o = if noise_std == 0.0 { clipped } else { clipped + std * T::of(z[row * cols + d]) };
        }
    }
    out
}

/// Each example's squared weight-gradient norm of a conv layer, `[G, B]`, without forming the
/// gradient (the reference for `kernels/dp_norms.cu`):
///
/// `‖∂W_e‖² = Σ_{o,c,ki,kj} (Σ_{oy,ox} d_y[e,o,oy,ox] · x[e,c,oy·s+ki−p,ox·s+kj−p])²`
///
/// x `[G, B, C, H, W]`, d_y `[G, B, O, HO, WO]`, e = (g, b); each inner sum is one entry of example
/// e's weight gradient, accumulated in f64 and squared at once. Taps that read padding are skipped.
pub fn conv2d_weight_grad_sq_norms<T: Real>(geom: &ConvGeometry, x: &[T], d_y: &[T]) -> Vec<T> {
    let ConvGeometry { groups, batch, in_channels, in_h, in_w, out_channels, kernel_h, kernel_w, stride, padding, out_h, out_w } = *geom;
    let (image, out_image) = (in_channels * in_h * in_w, out_channels * out_h * out_w);
    // The output rows (or columns) whose input row `o·stride + k − padding` at tap k is inside 0..size.
    let valid = |out: usize, k: usize, size: usize| {
        let lo = padding.saturating_sub(k).div_ceil(stride);
        let hi = (size + padding).saturating_sub(k).div_ceil(stride).min(out);
        (lo.min(hi), hi)
    };
    let mut sq_norms = vec![T::zero(); groups * batch];
    for (e, sq) in sq_norms.iter_mut().enumerate() {
        let x_e = &x[e * image..][..image];
        let d_y_e = &d_y[e * out_image..][..out_image];
        let mut total = 0.0f64;
        for o in 0..out_channels {
            let d_y_o = &d_y_e[o * out_h * out_w..][..out_h * out_w];
            for c in 0..in_channels {
                let x_c = &x_e[c * in_h * in_w..][..in_h * in_w];
                for ki in 0..kernel_h {
                    let (y_lo, y_hi) = valid(out_h, ki, in_h);
                    for kj in 0..kernel_w {
                        let (x_lo, x_hi) = valid(out_w, kj, in_w);
                        let mut d_w = 0.0f64;
                        for oy in y_lo..y_hi {
                            let iy = oy * stride + ki - padding;
                            for ox in x_lo..x_hi {
                                d_w += d_y_o[oy * out_w + ox].f64() * x_c[iy * in_w + ox * stride + kj - padding].f64();
                            }
                        }
                        total += d_w * d_w;
                    }
                }
            }
        }
        *sq = T::of_f64(total);
    }
    sq_norms
}

/// `x[e] ← (x[e] + std·z[e]) / divisor` with `z[e] = standard_normal_at(key, e)`: DP-SGD's noise
/// and its division by the batch in one pass (the reference for `kernels/dp.cu`'s
/// `dp_gaussian_add_divide_*`). Rounded as `add_gaussian_noise` followed by an elementwise division
/// rounds, so the values equal those of the two passes bit for bit.
pub fn add_gaussian_noise_and_divide<T: Real>(x: &mut [T], std: f32, divisor: f32, key: &NoiseKey) {
    let (std, divisor) = (T::of(std), T::of(divisor));
    let z = standard_normals(key, x.len());
    for (v, z) in x.iter_mut().zip(z) {
        *v = (*v + std * T::of(z)) / divisor;
    }
}

/// The DP-SGD gradient `noise` makes of `sum` (`add_gaussian_noise_and_divide` on a copy), for the
/// noised optimizer steps; `flag` becomes NaN (`0·g`) if an element is not finite, as
/// `dp::nonfinite_flag` would say, and is left alone otherwise (the reference for
/// `kernels/dp.cu`'s `dp_noised_*_update_*`).
pub fn noised_gradient<T: Real>(sum: &[T], noise: &GradientNoise, flag: &mut [T]) -> Vec<T> {
    let mut grad = sum.to_vec();
    add_gaussian_noise_and_divide(&mut grad, noise.std, noise.divisor, &noise.key);
    if let Some(bad) = grad.iter().find(|g| !g.is_finite()) {
        flag[0] = T::zero() * *bad;
    }
    grad
}
