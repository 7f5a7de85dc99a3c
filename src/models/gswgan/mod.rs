//! GS-WGAN's models (docs/algorithms.md §2): the spectrally normalised projection discriminator and the DCGAN
//! and ResNet generators. Every model is a group of G (tensors `[G, ...]`, activations
//! `[G, B, ...]`); `base` scales the widths (64 is the published size, smaller ones make tests
//! fast with the same code).
mod discriminator;
mod generator;

use rand::Rng;

use crate::backend::{ops, PublicDraw};
use crate::dp::NoiseKey;
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

/// `shape` `[G, ..]` of public draws computed on `device`, member g's block from one key drawn from
/// `rngs[g]`: a group draws what its members would draw alone, and nothing is uploaded.
pub fn member_public_draws<R: Rng>(draw: PublicDraw, shape: &[usize], rngs: &mut [R], device: &Device) -> Result<Tensor> {
    ops::public_draws(draw, shape, &member_keys(rngs), device)
}

/// One public key per member, member g's drawn from `rngs[g]`: what [`member_public_draws`] draws
/// with, for a caller that plans its keys before its draws.
pub fn member_keys<R: Rng>(rngs: &mut [R]) -> Vec<NoiseKey> {
    rngs.iter_mut().map(NoiseKey::public).collect()
}

/// `[G, B, 10]` of z ~ Bernoulli(0.5), member g's from `rngs[g]` ([`member_public_draws`]).
pub fn bernoulli_latent<R: Rng>(rngs: &mut [R], batch: usize, device: &Device) -> Result<Tensor> {
    bernoulli_latent_from(&member_keys(rngs), batch, device)
}

/// [`bernoulli_latent`] from member keys drawn beforehand ([`member_keys`]).
pub fn bernoulli_latent_from(keys: &[NoiseKey], batch: usize, device: &Device) -> Result<Tensor> {
    ops::public_draws(PublicDraw::Class { classes: 2 }, &[keys.len(), batch, LATENT], keys, device)
}

/// One-hot labels `[G, B, 10]` uniform over the classes (public), member g's from `rngs[g]`
/// ([`member_public_draws`]).
pub fn uniform_one_hot_labels<R: Rng>(rngs: &mut [R], batch: usize, device: &Device) -> Result<Tensor> {
    uniform_one_hot_labels_from(&member_keys(rngs), batch, device)
}

/// [`uniform_one_hot_labels`] from member keys drawn beforehand ([`member_keys`]).
pub fn uniform_one_hot_labels_from(keys: &[NoiseKey], batch: usize, device: &Device) -> Result<Tensor> {
    ops::public_draws(PublicDraw::OneHot { classes: CLASSES as u32 }, &[keys.len(), batch, CLASSES], keys, device)
}

/// One-hot `[G, B, 10]` of `labels` (G·B of them, member-major).
pub fn one_hot(labels: &[u32], groups: usize, device: &Device) -> Result<Tensor> {
    if groups == 0 || !labels.len().is_multiple_of(groups) {
        return Err(Error::Invalid(format!("{} labels do not split into {groups} equal member batches", labels.len())));
    }
    Tensor::one_hot(labels, CLASSES, &[groups, labels.len() / groups], device)
}
