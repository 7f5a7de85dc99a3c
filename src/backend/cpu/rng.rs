//! Gaussian noise added in place and public draws: the reference for `kernels/rng.cu`.
use super::Real;
use crate::backend::PublicDraw;
use crate::dp::noise::{standard_normals, uniform_class_at, uniform_unit_at, NoiseKey};

/// `x[e] ← x[e] + std·z[e]` with `z[e] = standard_normal_at(key, e)`, rounded as the kernel rounds:
/// the normal to f32 first, then one product and one sum in `T`.
pub fn add_gaussian_noise<T: Real>(x: &mut [T], std: f32, key: &NoiseKey) {
    let std = T::of(std);
    let z = standard_normals(key, x.len());
    for (v, z) in x.iter_mut().zip(z) {
        *v += std * T::of(z);
    }
}

/// `keys.len()` equal blocks of `out` (at least one key), block m drawn from `keys[m]`: one-hot
/// rows at `uniform_class_at(key, r, classes)` of row r, classes `uniform_class_at(key, e, classes)`,
/// uniforms `uniform_unit_at(key, e)` or normals `standard_normal_at(key, e)` of element e.
pub fn public_draws<T: Real>(out: &mut [T], draw: PublicDraw, keys: &[NoiseKey]) {
    if out.is_empty() {
        return;
    }
    let per_member = out.len() / keys.len();
    for (block, key) in out.chunks_exact_mut(per_member).zip(keys) {
        match draw {
            PublicDraw::OneHot { classes } => {
                for (r, row) in block.chunks_exact_mut(classes as usize).enumerate() {
                    let hot = uniform_class_at(key, r as u64, classes) as usize;
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = T::of(if c == hot { 1.0 } else { 0.0 });
                    }
                }
            }
            PublicDraw::Class { classes } => {
                for (e, v) in block.iter_mut().enumerate() {
                    *v = T::of(uniform_class_at(key, e as u64, classes) as f32);
                }
            }
            PublicDraw::Unit => {
                for (e, v) in block.iter_mut().enumerate() {
                    *v = T::of(uniform_unit_at(key, e as u64));
                }
            }
            PublicDraw::Normal => {
                for (v, z) in block.iter_mut().zip(standard_normals(key, per_member)) {
                    *v = T::of(z);
                }
            }
        }
    }
}
