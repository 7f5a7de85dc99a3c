//! f64 values rounded to f32 in the direction the privacy proof needs. The accountant's proof is for
//! the exact clip bound and noise std; a clip bound or factor rounded toward zero can only shrink a
//! contribution, and a noise std (or a calibrated σ) rounded up can only add noise, so the f32
//! values a kernel takes never leave the proof short by a rounding.

/// The f64 `x` rounded to f32 toward zero (what CUDA's `__double2float_rz` does).
pub fn f32_toward_zero(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64).abs() > x.abs() {
        // Finite and non-zero here: one step down in magnitude (sign-magnitude bits).
        f32::from_bits(y.to_bits() - 1)
    } else {
        y
    }
}

/// The smallest f32 not below `x`.
pub fn round_up_to_f32(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) < x {
        y.next_up()
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_up_never_gives_less_and_is_the_nearest_f32_that_does() {
        for x in [1.15f64, 0.1 + 1e-12, 3.0, 1.0 / 3.0, 1.07 * 2.0 / 32.0, 1.15 * 1.1] {
            let y = round_up_to_f32(x);
            assert!(y as f64 >= x && (y.next_down() as f64) < x, "{x} -> {y}");
        }
    }
}
