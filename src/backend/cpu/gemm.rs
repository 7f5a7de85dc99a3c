//! Grouped GEMM through `matrixmultiply` (transposes expressed as strides).
use crate::backend::MatmulGeometry;

/// `c[g] = op(a[g]) · op(b[g])` for every group; `c` is overwritten.
pub fn gemm_grouped(geom: &MatmulGeometry, a: &[f32], b: &[f32], c: &mut [f32]) {
    let MatmulGeometry { groups, m, k, n, trans_a, trans_b } = *geom;
    // Row and column strides of op(A) (m×k) and op(B) (k×n) in their row-major storage.
    let (rsa, csa) = if trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if trans_b { (1, k) } else { (n, 1) };
    for g in 0..groups {
        let a_g = &a[g * m * k..(g + 1) * m * k];
        let b_g = &b[g * k * n..(g + 1) * k * n];
        let c_g = &mut c[g * m * n..(g + 1) * m * n];
        if m == 0 || n == 0 {
            continue;
        }
        if k == 0 {
            c_g.fill(0.0);
            continue;
        }
        // SAFETY: the slices hold exactly m·k, k·n and m·n elements and the strides above address
        // only those elements; `c_g` does not alias `a_g` or `b_g`.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a_g.as_ptr(),
                rsa as isize,
                csa as isize,
                b_g.as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                c_g.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
}
