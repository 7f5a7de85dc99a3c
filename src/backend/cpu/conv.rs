//! Grouped 2-D convolution by im2col + GEMM (the plain 7-loop form is the test oracle).
//!
//! Shapes: x `[G, B, C, H, W]`, w `[G, O, C, KH, KW]`, y `[G, B, O, HO, WO]`. Per (g, b):
//! `y = W · cols(x)` with `W` as `O × (C·KH·KW)` and `cols(x)` as `(C·KH·KW) × (HO·WO)`.
use super::Real;
use crate::backend::ConvGeometry;

/// Unfolds one image `[C, H, W]` into `cols` `[C·KH·KW, HO·WO]` (zeros where the window is padding).
fn im2col<T: Real>(geom: &ConvGeometry, image: &[T], cols: &mut [T]) {
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
                            T::zero()
                        };
                    }
                }
            }
        }
    }
}

/// Folds `cols` back onto one image, summing overlapping windows (the adjoint of `im2col`).
fn col2im<T: Real>(geom: &ConvGeometry, cols: &[T], image: &mut [T]) {
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
                            let at = (c * in_h + iy as usize) * in_w + ix as usize;
                            image[at] += src[oy * out_w + ox];
                        }
                    }
                }
            }
        }
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
pub fn conv2d_fwd<T: Real>(geom: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    let (patch, positions, image, out_image) = sizes(geom);
    let o = geom.out_channels;
    let mut y = vec![T::zero(); geom.groups * geom.batch * out_image];
    let mut cols = vec![T::zero(); patch * positions];
    for g in 0..geom.groups {
        let w_g = &w[g * o * patch..(g + 1) * o * patch];
        for b in 0..geom.batch {
            let gb = g * geom.batch + b;
            im2col(geom, &x[gb * image..(gb + 1) * image], &mut cols);
            T::gemm(o, patch, positions, w_g, false, &cols, false, T::zero(), &mut y[gb * out_image..(gb + 1) * out_image]);
        }
    }
    y
}

/// `d_x = col2im(Wᵀ · d_y)` per (g, b).
pub fn conv2d_input_grad<T: Real>(geom: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let (patch, positions, image, out_image) = sizes(geom);
    let o = geom.out_channels;
    let mut d_x = vec![T::zero(); geom.groups * geom.batch * image];
    let mut cols = vec![T::zero(); patch * positions];
    for g in 0..geom.groups {
        let w_g = &w[g * o * patch..(g + 1) * o * patch];
        for b in 0..geom.batch {
            let gb = g * geom.batch + b;
            T::gemm(patch, o, positions, w_g, true, &dy[gb * out_image..(gb + 1) * out_image], false, T::zero(), &mut cols);
            col2im(geom, &cols, &mut d_x[gb * image..(gb + 1) * image]);
        }
    }
    d_x
}

/// `d_w[g] = Σ_b d_y[g,b] · cols(x[g,b])ᵀ`.
pub fn conv2d_weight_grad<T: Real>(geom: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let (patch, positions, image, out_image) = sizes(geom);
    let o = geom.out_channels;
    let mut d_w = vec![T::zero(); geom.groups * o * patch];
    let mut cols = vec![T::zero(); patch * positions];
    for g in 0..geom.groups {
        let d_w_g = &mut d_w[g * o * patch..(g + 1) * o * patch];
        for b in 0..geom.batch {
            let gb = g * geom.batch + b;
            im2col(geom, &x[gb * image..(gb + 1) * image], &mut cols);
            T::gemm(o, positions, patch, &dy[gb * out_image..(gb + 1) * out_image], false, &cols, true, T::one(), d_w_g);
        }
    }
    d_w
}
