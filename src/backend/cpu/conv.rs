//! Grouped 2-D convolution by im2col + GEMM (the plain 7-loop form is the test oracle).
//!
//! Shapes: x `[G, B, C, H, W]`, w `[G, O, C, KH, KW]`, y `[G, B, O, HO, WO]`. Per (g, b):
//! `y = W · cols(x)` with `W` as `O × (C·KH·KW)` and `cols(x)` as `(C·KH·KW) × (HO·WO)`.
use crate::backend::ConvGeometry;

/// Unfolds one image `[C, H, W]` into `cols` `[C·KH·KW, HO·WO]` (zeros where the window is padding).
fn im2col(geom: &ConvGeometry, image: &[f32], cols: &mut [f32]) {
    let ConvGeometry { in_channels, in_h, in_w, kernel_h, kernel_w, stride, padding, out_h, out_w, .. } = *geom;
    let positions = out_h * out_w;
    for c in 0..in_channels {
        for ki in 0..kernel_h {
            for kj in 0..kernel_w {
                let row = (c * kernel_h + ki) * kernel_w + kj;
                let dst = &mut cols[row * positions..(row + 1) * positions];
                for oy in 0..out_h {
                    let iy = (oy * stride + ki) as isize - padding as isize;
                    for ox in 0..out_w {
                        let ix = (ox * stride + kj) as isize - padding as isize;
                        dst[oy * out_w + ox] = if iy >= 0 && (iy as usize) < in_h && ix >= 0 && (ix as usize) < in_w {
                            image[(c * in_h + iy as usize) * in_w + ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Folds `cols` back onto one image, summing overlapping windows (the adjoint of `im2col`).
fn col2im(geom: &ConvGeometry, cols: &[f32], image: &mut [f32]) {
    let ConvGeometry { in_channels, in_h, in_w, kernel_h, kernel_w, stride, padding, out_h, out_w, .. } = *geom;
    let positions = out_h * out_w;
    for c in 0..in_channels {
        for ki in 0..kernel_h {
            for kj in 0..kernel_w {
                let row = (c * kernel_h + ki) * kernel_w + kj;
                let src = &cols[row * positions..(row + 1) * positions];
                for oy in 0..out_h {
                    let iy = (oy * stride + ki) as isize - padding as isize;
                    if iy < 0 || iy as usize >= in_h {
                        continue;
                    }
                    for ox in 0..out_w {
                        let ix = (ox * stride + kj) as isize - padding as isize;
                        if ix >= 0 && (ix as usize) < in_w {
                            image[(c * in_h + iy as usize) * in_w + ix as usize] += src[oy * out_w + ox];
                        }
                    }
                }
            }
        }
    }
}

/// `c (m×n) = alpha·op(a)·op(b) + beta·c`, all row-major.
#[allow(clippy::too_many_arguments)]
fn sgemm(m: usize, k: usize, n: usize, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, beta: f32, c: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if trans_b { (1, k) } else { (n, 1) };
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the asserts above bound every address the strides reach; c aliases neither input.
    unsafe {
        matrixmultiply::sgemm(m, k, n, 1.0, a.as_ptr(), rsa as isize, csa as isize, b.as_ptr(), rsb as isize, csb as isize, beta, c.as_mut_ptr(), n as isize, 1);
    }
}

fn sizes(geom: &ConvGeometry) -> (usize, usize, usize, usize) {
    let patch = geom.in_channels * geom.kernel_h * geom.kernel_w;
    let positions = geom.out_h * geom.out_w;
    let image = geom.in_channels * geom.in_h * geom.in_w;
    let out_image = geom.out_channels * positions;
    (patch, positions, image, out_image)
}

/// `y[g,b,o,oy,ox] = Σ_{c,i,j} x[g,b,c,oy·s+i−p,ox·s+j−p] · w[g,o,c,i,j]`.
pub fn conv2d_fwd(geom: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (patch, positions, image, out_image) = sizes(geom);
    let o = geom.out_channels;
    let mut y = vec![0.0; geom.groups * geom.batch * out_image];
    let mut cols = vec![0.0; patch * positions];
    for g in 0..geom.groups {
        let w_g = &w[g * o * patch..(g + 1) * o * patch];
        for b in 0..geom.batch {
            let gb = g * geom.batch + b;
            im2col(geom, &x[gb * image..(gb + 1) * image], &mut cols);
            sgemm(o, patch, positions, w_g, false, &cols, false, 0.0, &mut y[gb * out_image..(gb + 1) * out_image]);
        }
    }
    y
}

/// `d_x = col2im(Wᵀ · d_y)` per (g, b).
pub fn conv2d_input_grad(geom: &ConvGeometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (patch, positions, image, out_image) = sizes(geom);
    let o = geom.out_channels;
    let mut d_x = vec![0.0; geom.groups * geom.batch * image];
    let mut cols = vec![0.0; patch * positions];
    for g in 0..geom.groups {
        let w_g = &w[g * o * patch..(g + 1) * o * patch];
        for b in 0..geom.batch {
            let gb = g * geom.batch + b;
            sgemm(patch, o, positions, w_g, true, &dy[gb * out_image..(gb + 1) * out_image], false, 0.0, &mut cols);
            col2im(geom, &cols, &mut d_x[gb * image..(gb + 1) * image]);
        }
    }
    d_x
}

/// `d_w[g] = Σ_b d_y[g,b] · cols(x[g,b])ᵀ`.
pub fn conv2d_weight_grad(geom: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (patch, positions, image, out_image) = sizes(geom);
    let o = geom.out_channels;
    let mut d_w = vec![0.0; geom.groups * o * patch];
    let mut cols = vec![0.0; patch * positions];
    for g in 0..geom.groups {
        let d_w_g = &mut d_w[g * o * patch..(g + 1) * o * patch];
        for b in 0..geom.batch {
            let gb = g * geom.batch + b;
            im2col(geom, &x[gb * image..(gb + 1) * image], &mut cols);
            sgemm(o, positions, patch, &dy[gb * out_image..(gb + 1) * out_image], false, &cols, true, 1.0, d_w_g);
        }
    }
    d_w
}
