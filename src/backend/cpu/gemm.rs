//! Grouped GEMM through `matrixmultiply` (transposes expressed as strides).
use super::Real;
use crate::backend::MatmulGeometry;

/// `c[g] = op(a[g]) · op(b[g])` for every group; `c` is overwritten.
pub fn gemm_grouped<T: Real>(geom: &MatmulGeometry, a: &[T], b: &[T], c: &mut [T]) {
    let MatmulGeometry { groups, m, k, n, trans_a, trans_b } = *geom;
    for g in 0..groups {
        let a_g = &a[g * m * k..(g + 1) * m * k];
        let b_g = &b[g * k * n..(g + 1) * k * n];
        let c_g = &mut c[g * m * n..(g + 1) * m * n];
        T::gemm(m, k, n, a_g, trans_a, b_g, trans_b, T::zero(), c_g);
    }
}
