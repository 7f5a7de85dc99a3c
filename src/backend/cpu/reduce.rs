//! Reductions: sums down to a broadcast shape, log-softmax over rows. f64 accumulation.
use super::elementwise::broadcast_strides;

/// Sum `x` (shape `x_shape`) down to `shape` (same rank, each dim equal or 1).
pub fn sum_to(x: &[f32], x_shape: &[usize], shape: &[usize]) -> Vec<f32> {
    let out_len: usize = shape.iter().product();
    let mut acc = vec![0.0f64; out_len];
    let so = broadcast_strides(shape, x_shape);
    let rank = x_shape.len();
    let mut index = vec![0usize; rank];
    let mut io = 0usize;
    for &v in x {
        acc[io] += v as f64;
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
    acc.into_iter().map(|v| v as f32).collect()
}

/// `y[r, j] = x[r, j] − log Σ_k exp(x[r, k])` for rows of length `cols`, max-shifted.
pub fn log_softmax_rows(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|&v| (v as f64 - lse) as f32));
    }
    out
}
