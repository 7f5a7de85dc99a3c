//! Reductions: sums down to a broadcast shape, log-softmax over rows. f64 accumulation.
use super::elementwise::{broadcast_strides, coalesce, dense_strides, for_each_row};
use super::Real;

/// Sum `x` (shape `x_shape`) down to `shape` (same rank, each dim equal or 1).
pub fn sum_to<T: Real>(x: &[T], x_shape: &[usize], shape: &[usize]) -> Vec<T> {
    sum_map_to(x_shape, shape, |i| x[i].f64())
}

/// `sum_to` of the squares of `x`, each squared in f64 (exact for an f32 input) before it is added.
pub fn sum_squares_to<T: Real>(x: &[T], x_shape: &[usize], shape: &[usize]) -> Vec<T> {
    sum_map_to(x_shape, shape, |i| x[i].f64() * x[i].f64())
}

/// `sum_to` of `x ⊙ y` (both of shape `x_shape`), each product in f64 (exact for f32 inputs).
pub fn sum_products_to<T: Real>(x: &[T], y: &[T], x_shape: &[usize], shape: &[usize]) -> Vec<T> {
    sum_map_to(x_shape, shape, |i| x[i].f64() * y[i].f64())
}

/// `summand(i)` for each offset i of a dense `x_shape`, summed down to `shape` with f64 accumulation.
fn sum_map_to<T: Real>(x_shape: &[usize], shape: &[usize], summand: impl Fn(usize) -> f64) -> Vec<T> {
    let out_len: usize = shape.iter().product();
    let mut acc = vec![0.0f64; out_len];
    let (sizes, strides) = coalesce(x_shape, &[&dense_strides(x_shape), &broadcast_strides(shape, x_shape)]);
    // Each output's terms are added in the input's order, whatever the loop shape.
    for_each_row::<2>(&sizes, &strides, |[ix, io], len, [dx, dout]| {
        if len == 0 {
            return;
        }
        let offsets = (0..len).map(|j| ix + j * dx);
        if dout == 0 {
            acc[io] = offsets.fold(acc[io], |s, i| s + summand(i));
        } else {
            for (j, i) in offsets.enumerate() {
                acc[io + j * dout] += summand(i);
            }
        }
    });
    acc.into_iter().map(T::of_f64).collect()
}

/// `y[r, j] = x[r, j] − log Σ_k exp(x[r, k])` for rows of length `cols`, max-shifted.
pub fn log_softmax_rows<T: Real>(x: &[T], cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.f64()));
        let lse = max + row.iter().map(|&v| (v.f64() - max).exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|&v| T::of_f64(v.f64() - lse)));
    }
    out
}

#[cfg(test)]
mod sum_to_tests {
    use super::*;

    /// The plain oracle: every element added to the output its broadcast index names.
    fn naive(x: &[f64], x_shape: &[usize], shape: &[usize]) -> Vec<f64> {
        let mut out = vec![0.0; shape.iter().product()];
        let so = broadcast_strides(shape, x_shape);
        for (i, &v) in x.iter().enumerate() {
            let (mut rest, mut o) = (i, 0);
            for d in (0..x_shape.len()).rev() {
                o += (rest % x_shape[d]) * so[d];
                rest /= x_shape[d];
            }
            out[o] += v;
        }
        out
    }

    #[test]
    fn every_reduction_pattern_matches_the_oracle_bit_for_bit() {
        let cases: [(&[usize], &[usize]); 8] = [
            (&[2, 3, 4], &[2, 3, 1]),
            (&[2, 3, 4], &[2, 1, 4]),
            (&[2, 3, 4], &[1, 3, 1]),
            (&[2, 3, 4], &[1, 1, 1]),
            (&[5, 1, 7], &[1, 1, 7]),
            (&[3, 4], &[3, 4]),
            (&[2, 0, 3], &[2, 1, 3]),
            (&[4, 6], &[6]),
        ];
        for (x_shape, shape) in cases {
            let n: usize = x_shape.iter().product();
            let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 101) as f64 / 7.0 - 5.0).collect();
            let got: Vec<f64> = sum_to(&x, x_shape, shape);
            assert_eq!(got, naive(&x, x_shape, shape), "{x_shape:?} -> {shape:?}");
        }
    }
}
