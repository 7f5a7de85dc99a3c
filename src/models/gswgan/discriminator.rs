//! The critic: `[B,1,28,28]` → SN conv 1→64 5×5 s2 p2 (14×14) → ReLU → SN conv 64→128 (7×7) → ReLU
//! → SN conv 128→256 (4×4) → ReLU → h (4096) → SN linear 4096→1 plus the projection ⟨E[y], h⟩.
//! 1,071,105 parameters at the published width.
use rand::Rng;

use super::{CLASSES, SIDE};
use crate::autograd::Tape;
use crate::error::{ensure_shape, Error, Result};
use crate::nn::{prefixed, Entry, Module, NormalizedWeight, SnConv2d, SnEmbedding, SnLinear, SpectralNorm, SpectralTrace};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug)]
pub struct Discriminator {
    pub conv1: SnConv2d,
    pub conv2: SnConv2d,
    pub conv3: SnConv2d,
    pub linear: SnLinear,
    pub embedding: SnEmbedding,
}

/// Critic values `[G, B, 1]` (unbounded) and every layer's trace.
pub struct DiscriminatorPass {
    pub critic: Tensor,
    pub layers: Vec<SpectralTrace>,
}

impl Discriminator {
    /// Widths base, 2·base, 4·base (64 is the published model); features 4·base·16.
    pub fn new<R: Rng>(groups: usize, base: usize, rng: &mut R, device: &Device) -> Result<Self> {
        let features = 4 * base * 16;
        Ok(Discriminator {
            conv1: SnConv2d::new(groups, 1, base, 5, 2, 2, rng, device)?,
            conv2: SnConv2d::new(groups, base, 2 * base, 5, 2, 2, rng, device)?,
            conv3: SnConv2d::new(groups, 2 * base, 4 * base, 5, 2, 2, rng, device)?,
            linear: SnLinear::new(groups, features, 1, rng, device)?,
            embedding: SnEmbedding::new(groups, CLASSES, features, rng, device)?,
        })
    }

    /// Critic values of images `[G, B, 784]` (or `[G, B, 1, 28, 28]`) with one-hot labels
    /// `[G, B, 10]`. Updates every layer's u, v (one power iteration each, all five in the same
    /// launches).
    pub fn forward(&mut self, tape: &Tape, images: &Tensor, labels: &Tensor) -> Result<DiscriminatorPass> {
        let _range = crate::profile::range("d_forward");
        let s = images.shape();
        ensure_shape!(s.len() >= 2 && images.numel() == s[0] * s[1] * SIDE * SIDE, "gs-wgan critic", "images {s:?} are not [G, B, 784]");
        let (g, b) = (s[0], s[1]);
        let x = tape.reshape(images, &[g, b, 1, SIDE, SIDE])?;
        let Discriminator { conv1, conv2, conv3, linear, embedding } = self;
        let weights = SpectralNorm::weights(tape, &mut [&mut conv1.sn, &mut conv2.sn, &mut conv3.sn, &mut linear.sn, &mut embedding.sn])?;
        let [w1, w2, w3, w4, w5]: [NormalizedWeight; 5] =
            weights.try_into().map_err(|_| Error::Invalid("five layers, five weights".into()))?;
        let (h1, t1) = conv1.forward_with(tape, &x, w1)?;
        let (h2, t2) = conv2.forward_with(tape, &tape.relu(&h1)?, w2)?;
        let (h3, t3) = conv3.forward_with(tape, &tape.relu(&h2)?, w3)?;
        let features = h3.numel() / (g * b);
        let h = tape.reshape(&tape.relu(&h3)?, &[g, b, features])?;
        let (linear, t4) = linear.forward_with(tape, &h, w4)?;
        let (embedded, t5) = embedding.forward_with(tape, labels, w5)?;
        let projection = tape.sum_products_to(&embedded, &h, &[g, b, 1])?;
        let critic = tape.add(&linear, &projection)?;
        Ok(DiscriminatorPass { critic, layers: vec![t1, t2, t3, t4, t5] })
    }
}

impl Module for Discriminator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let mut e = prefixed("conv1", self.conv1.entries());
        e.extend(prefixed("conv2", self.conv2.entries()));
        e.extend(prefixed("conv3", self.conv3.entries()));
        e.extend(prefixed("linear", self.linear.entries()));
        e.extend(prefixed("embedding", self.embedding.entries()));
        e
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let Discriminator { conv1, conv2, conv3, linear, embedding } = self;
        let mut e = prefixed("conv1", conv1.entries_mut());
        e.extend(prefixed("conv2", conv2.entries_mut()));
        e.extend(prefixed("conv3", conv3.entries_mut()));
        e.extend(prefixed("linear", linear.entries_mut()));
        e.extend(prefixed("embedding", embedding.entries_mut()));
        e
    }
}
