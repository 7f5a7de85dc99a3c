//! Gaussian noise added in place and uniform one-hot rows: the reference for `kernels/rng.cu`.
use super::Real;
use crate::dp::noise::{standard_normals, uniform_class_at, NoiseKey};

/// `x[e] ← x[e] + std·z[e]` with `z[e] = standard_normal_at(key, e)`, rounded as the kernel rounds:
/// the normal to f32 first, then one product and one sum in `T`.
pub fn add_gaussian_noise<T: Real>(x: &mut [T], std: f32, key: &NoiseKey) {
    let std = T::of(std);
    let z = standard_normals(key, x.len());
    for (v, z) in x.iter_mut().zip(z) {
        *v += std * T::of(z);
    }
}

/// Rows of `classes` values, row r one-hot at `uniform_class_at(key, r, classes)`.
pub fn uniform_one_hot<T: Real>(out: &mut [T], classes: usize, key: &NoiseKey) {
    for (r, row) in out.chunks_exact_mut(classes).enumerate() {
        let hot = uniform_class_at(key, r as u64, classes as u32) as usize;
        for (c, v) in row.iter_mut().enumerate() {
            *v = T::of(if c == hot { 1.0 } else { 0.0 });
        }
    }
}
