//! GS-WGAN's models (docs/algorithms.md §2): the spectrally normalised projection discriminator and the DCGAN
//! and ResNet generators. Every model is a group of G (tensors `[G, ...]`, activations
//! `[G, B, ...]`); `base` scales the widths (64 is the published size, smaller ones make tests
//! fast with the same code).
mod discriminator;
mod generator;

use rand::Rng;

use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

pub use discriminator::{Discriminator, DiscriminatorPass};
pub use generator::{DcganGenerator, Generator, GeneratorArch, ResnetGenerator, UpBlock};

pub const CLASSES: usize = 10;
/// z ~ Bernoulli(0.5)^10.
pub const LATENT: usize = 10;
pub const SIDE: usize = 28;
pub const PIXELS: usize = SIDE * SIDE;
/// The published widths: D 64→128→256, DCGAN G 256→128→64, ResNet G 256.
pub const PUBLISHED_BASE: usize = 64;
/// Pixel norm's ε inside the square root.
pub const PIXEL_NORM_EPS: f32 = 1e-10;

/// `[G, B, 10]` of z ~ Bernoulli(0.5): member g's values drawn from `rngs[g]`, so a group draws
/// what its members would draw alone.
pub fn bernoulli_latent<R: Rng>(rngs: &mut [R], batch: usize, device: &Device) -> Result<Tensor> {
    let data = rngs.iter_mut().flat_map(|r| (0..batch * LATENT).map(|_| if r.random::<bool>() { 1.0 } else { 0.0 }).collect::<Vec<f32>>());
    Tensor::from_vec(data.collect(), &[rngs.len(), batch, LATENT], device)
}

/// Labels uniform over the classes (public), `batch` per member from its own generator.
pub fn uniform_labels<R: Rng>(rngs: &mut [R], batch: usize) -> Vec<u32> {
    rngs.iter_mut().flat_map(|r| (0..batch).map(|_| r.random_range(0..CLASSES as u32)).collect::<Vec<_>>()).collect()
}

/// One-hot `[G, B, 10]` of `labels` (G·B of them, member-major).
pub fn one_hot(labels: &[u32], groups: usize, device: &Device) -> Result<Tensor> {
    if groups == 0 || !labels.len().is_multiple_of(groups) {
        return Err(Error::Invalid(format!("{} labels do not split into {groups} equal member batches", labels.len())));
    }
    Tensor::one_hot(labels, CLASSES, &[groups, labels.len() / groups], device)
}
