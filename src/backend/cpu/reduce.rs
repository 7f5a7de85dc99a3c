//! Reductions: sums down to a broadcast shape, log-softmax over rows. f64 accumulation.
use super::elementwise::broadcast_strides;
use super::Real;

/// Sum `x` (shape `x_shape`) down to `shape` (same rank, each dim equal or 1).
pub fn sum_to<T: Real>(x: &[T], x_shape: &[usize], shape: &[usize]) -> Vec<T> {
    let out_len: usize = shape.iter().product();
    let mut acc = vec![0.0f64; out_len];
    let so = broadcast_strides(shape, x_shape);
    let rank = x_shape.len();
    let mut index = vec![0usize; rank];
    let mut io = 0usize;
    for &v in x {
        acc[io] += v.f64();
        for d in (0..rank).rev() {
            index[d] += 1;
            io += so[d];
            if index[d] < x_shape[d] {
                break;
            }
            io -= so[d] * x_shape[d];
            index[d] = 0;
        }
    }
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
