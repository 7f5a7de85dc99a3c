//! Gaussian noise added in place: the reference for `kernels/rng.cu`.
use super::Real;
use crate::dp::noise::{standard_normals, NoiseKey};

/// `x[e] ← x[e] + std·z[e]` with `z[e] = standard_normal_at(key, e)`, rounded as the kernel rounds:
/// the normal to f32 first, then one product and one sum in `T`.
pub fn add_gaussian_noise<T: Real>(x: &mut [T], std: f32, key: &NoiseKey) {
    let std = T::of(std);
    let z = standard_normals(key, x.len());
    for (v, z) in x.iter_mut().zip(z) {
        *v += std * T::of(z);
    }
}
