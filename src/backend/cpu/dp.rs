//! GS-WGAN's row sanitiser: the reference for `kernels/dp.cu`.
use super::Real;
use crate::dp::noise::{standard_normal_at, NoiseKey};

/// The f64 `x` rounded to f32 toward zero (what CUDA's `__double2float_rz` does). The clip factor
/// and the clipped values are rounded this way so that rounding can only shrink a row, never push
/// it past the clip bound.
pub fn f32_toward_zero(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64).abs() > x.abs() {
        // Finite and non-zero here: one step down in magnitude (sign-magnitude bits).
        f32::from_bits(y.to_bits() - 1)
    } else {
        y
    }
}

/// For each row `gᵢ` (length `cols`) of `g`:
/// `ĝᵢ = gᵢ·min(1, clip/(‖gᵢ‖ + 1e-10)) + noise_std·zᵢ`, `z` drawn per element from `key`
/// (element index = position in `g`, so every row gets fresh noise).
///
/// ‖gᵢ‖ is summed in f64 (exact squares of f32 values, no overflow for any finite f32). The factor
/// is rounded to f32 toward zero and the product `g·factor`, exact in f64, is rounded toward zero
/// too, so the clipped row's norm never exceeds `clip` beyond the f64 norm's own rounding (~1e-16).
/// A row holding a NaN comes out all NaN (loud, never unclipped); one holding an infinity has a
/// zero factor, so its infinite entries become NaN. The noise is then added with one f32 product
/// and one f32 sum, as in the kernel.
pub fn sanitize_rows<T: Real>(g: &[T], cols: usize, clip: f32, noise_std: f32, key: &NoiseKey) -> Vec<T> {
    let mut out = vec![T::of(0.0); g.len()];
    if cols == 0 {
        return out;
    }
    let std = T::of(noise_std);
    for (row, (g_row, out_row)) in g.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).enumerate() {
        let norm = g_row.iter().map(|v| v.f64() * v.f64()).sum::<f64>().sqrt();
        // Not `min`: min(NaN, 1) is 1, which would pass a row holding a NaN (and its other,
        // possibly huge, values) unclipped. A NaN norm gives a NaN factor and an all-NaN row.
        let ratio = clip as f64 / (norm + 1e-10);
        let factor = f32_toward_zero(if ratio >= 1.0 { 1.0 } else { ratio }) as f64;
        for (d, (o, &v)) in out_row.iter_mut().zip(g_row).enumerate() {
            // f64 tensors (finite-difference checks only) have no kernel to match: plain product.
            let clipped =
                if T::DTYPE == crate::tensor::DType::F32 { T::of(f32_toward_zero(v.f64() * factor)) } else { v * T::of_f64(factor) };
            *o = if noise_std == 0.0 { clipped } else { clipped + std * T::of(standard_normal_at(key, (row * cols + d) as u64)) };
        }
    }
    out
}
