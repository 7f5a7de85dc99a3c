//! DPSGD-GAN's conditional DCGAN (docs/algorithms.md §4, Bie, Kamath and Zhang 2023) at width d: leaky ReLU
//! of slope 0.2, PyTorch's default initialisation. At d = 128, D has 1,724,289 parameters and G
//! 2,272,129.
//! * G(z, y): z `[128, 1, 1]`, y one-hot `[10, 1, 1]`; each through its own convT 4×4 s1 p0 to
//!   `[2d, 4, 4]`, concatenated (4d) → convT 3×3 s2 p1 (→7) → convT 4×4 s2 p1 (→14) → convT 4×4 s2
//!   p1 to one channel (→28) → (tanh + 1)/2, pixels in [0, 1].
//! * D(x, y): x `[1, 28, 28]` and y as ten 28×28 one-hot planes, each through its own conv 4×4 s2
//!   p1 to `[d/2, 14, 14]`, concatenated (d) → conv 4×4 s2 p1 (→7) → conv 3×3 s2 p1 (→4) → conv
//!   4×4 s1 p0 to one logit.
use rand::Rng;

use crate::autograd::{Gradients, Tape};
use crate::backend::ops;
use crate::dp::clip::LayerGrad;
use crate::error::{ensure_shape, Error, Result};
use crate::nn::{prefixed, Conv2d, ConvTranspose2d, Entry, LayerTrace, Module};
use crate::tensor::{Device, Tensor};

pub const LATENT: usize = 128;
pub const CLASSES: usize = 10;
pub const SIDE: usize = 28;
/// The published width d.
pub const WIDTH: usize = 128;
const SLOPE: f32 = 0.2;

#[derive(Clone, Debug)]
pub struct Generator {
    pub latent: ConvTranspose2d,
    pub label: ConvTranspose2d,
    pub up7: ConvTranspose2d,
    pub up14: ConvTranspose2d,
    pub up28: ConvTranspose2d,
}

#[derive(Clone, Debug)]
pub struct Discriminator {
    pub image: Conv2d,
    pub label: Conv2d,
    pub down7: Conv2d,
    pub down4: Conv2d,
    pub logit: Conv2d,
}

/// One conv of a forward pass: its trace and its geometry (square kernels).
pub struct ConvTrace {
    pub trace: LayerTrace,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// A discriminator forward pass: logits `[G, B, 1]` and each conv's trace for clipping.
pub struct DiscriminatorPass {
    pub logits: Tensor,
    /// The five convs, in `params()` order.
    pub layers: Vec<ConvTrace>,
}

impl DiscriminatorPass {
    /// The convs' outputs: what a backward pass must reach for [`DiscriminatorPass::layer_grads`].
    pub fn outputs(&self) -> Vec<&Tensor> {
        self.layers.iter().map(|l| &l.trace.output).collect()
    }

    /// The convs' clipping views from a backward pass over `Σᵢ ℓᵢ`, in `params()` order.
    pub fn layer_grads(&self, grads: &Gradients) -> Result<Vec<LayerGrad>> {
        self.layers
            .iter()
            .map(|l| {
                Ok(LayerGrad::Conv2d {
                    input: l.trace.input.clone(),
                    output_grad: grads.of(&l.trace.output)?.clone(),
                    kernel: (l.kernel, l.kernel),
                    stride: l.stride,
                    padding: l.padding,
                    bias: true,
                })
            })
            .collect()
    }
}

/// Refuses a width the architecture cannot take (d/2 channels per branch of D).
fn check_width(width: usize) -> Result<()> {
    if width >= 2 && width.is_multiple_of(2) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("--width must be an even number of at least 2, got {width}")))
    }
}

impl Generator {
    pub fn new<R: Rng>(groups: usize, width: usize, rng: &mut R, device: &Device) -> Result<Self> {
        check_width(width)?;
        let d = width;
        Ok(Generator {
            latent: ConvTranspose2d::new(groups, LATENT, 2 * d, 4, 1, 0, rng, device)?,
            label: ConvTranspose2d::new(groups, CLASSES, 2 * d, 4, 1, 0, rng, device)?,
            up7: ConvTranspose2d::new(groups, 4 * d, 2 * d, 3, 2, 1, rng, device)?,
            up14: ConvTranspose2d::new(groups, 2 * d, d, 4, 2, 1, rng, device)?,
            up28: ConvTranspose2d::new(groups, d, 1, 4, 2, 1, rng, device)?,
        })
    }

    /// Images `[G, B, 1, 28, 28]` in [0, 1] from z `[G, B, 128]` and one-hot labels `[G, B, 10]`.
    pub fn forward(&self, tape: &Tape, z: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let _range = crate::profile::range("g_forward");
        ensure_shape!(
            z.rank() == 3 && z.shape()[2] == LATENT && labels.rank() == 3 && labels.shape()[..2] == z.shape()[..2],
            "dpsgd-gan generator",
            "z {:?} must be [G, B, {LATENT}] and labels {:?} [G, B, {CLASSES}]",
            z.shape(),
            labels.shape()
        );
        let (g, b) = (z.shape()[0], z.shape()[1]);
        let lrelu = |x: (Tensor, LayerTrace)| tape.leaky_relu(&x.0, SLOPE);
        let a = lrelu(self.latent.forward(tape, &tape.reshape(z, &[g, b, LATENT, 1, 1])?)?)?;
        let c = lrelu(self.label.forward(tape, &tape.reshape(labels, &[g, b, CLASSES, 1, 1])?)?)?;
        let h = tape.concat(&[&a, &c], 2)?;
        let h = lrelu(self.up7.forward(tape, &h)?)?;
        let h = lrelu(self.up14.forward(tape, &h)?)?;
        let (out, _) = self.up28.forward(tape, &h)?;
        tape.affine(&tape.tanh(&out)?, 0.5, 0.5)
    }
}

impl Discriminator {
    pub fn new<R: Rng>(groups: usize, width: usize, rng: &mut R, device: &Device) -> Result<Self> {
        check_width(width)?;
        let d = width;
        Ok(Discriminator {
            image: Conv2d::new(groups, 1, d / 2, 4, 2, 1, rng, device)?,
            label: Conv2d::new(groups, CLASSES, d / 2, 4, 2, 1, rng, device)?,
            down7: Conv2d::new(groups, d, 2 * d, 4, 2, 1, rng, device)?,
            down4: Conv2d::new(groups, 2 * d, 4 * d, 3, 2, 1, rng, device)?,
            logit: Conv2d::new(groups, 4 * d, 1, 4, 1, 0, rng, device)?,
        })
    }

    /// Logits `[G, B, 1]` of images `[G, B, 1, 28, 28]` with one-hot labels `[G, B, 10]` (a
    /// constant: spread into planes outside the tape).
    pub fn forward(&self, tape: &Tape, images: &Tensor, labels: &Tensor) -> Result<DiscriminatorPass> {
        let _range = crate::profile::range("d_forward");
        ensure_shape!(
            images.rank() == 5
                && images.shape()[2..] == [1, SIDE, SIDE]
                && labels.shape() == [images.shape()[0], images.shape()[1], CLASSES],
            "dpsgd-gan discriminator",
            "images {:?} must be [G, B, 1, {SIDE}, {SIDE}] and labels {:?} [G, B, {CLASSES}]",
            images.shape(),
            labels.shape()
        );
        let (g, b) = (images.shape()[0], images.shape()[1]);
        let planes = ops::broadcast_to(&labels.reshape(&[g, b, CLASSES, 1, 1])?, &[g, b, CLASSES, SIDE, SIDE])?;
        let mut layers = Vec::with_capacity(5);
        let mut conv = |layer: &Conv2d, x: &Tensor| -> Result<Tensor> {
            let (y, trace) = layer.forward(tape, x)?;
            layers.push(ConvTrace { trace, kernel: layer.weight.shape()[3], stride: layer.stride, padding: layer.padding });
            Ok(y)
        };
        let a = tape.leaky_relu(&conv(&self.image, images)?, SLOPE)?;
        let c = tape.leaky_relu(&conv(&self.label, &planes)?, SLOPE)?;
        let h = tape.concat(&[&a, &c], 2)?;
        let h = tape.leaky_relu(&conv(&self.down7, &h)?, SLOPE)?;
        let h = tape.leaky_relu(&conv(&self.down4, &h)?, SLOPE)?;
        let out = conv(&self.logit, &h)?;
        let logits = tape.reshape(&out, &[g, b, 1])?;
        Ok(DiscriminatorPass { logits, layers })
    }
}

impl Module for Generator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let Generator { latent, label, up7, up14, up28 } = self;
        [("latent", latent), ("label", label), ("up7", up7), ("up14", up14), ("up28", up28)]
            .into_iter()
            .flat_map(|(name, layer)| prefixed(name, layer.entries()))
            .collect()
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let Generator { latent, label, up7, up14, up28 } = self;
        [("latent", latent), ("label", label), ("up7", up7), ("up14", up14), ("up28", up28)]
            .into_iter()
            .flat_map(|(name, layer)| prefixed(name, layer.entries_mut()))
            .collect()
    }
}

impl Module for Discriminator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let Discriminator { image, label, down7, down4, logit } = self;
        [("image", image), ("label", label), ("down7", down7), ("down4", down4), ("logit", logit)]
            .into_iter()
            .flat_map(|(name, layer)| prefixed(name, layer.entries()))
            .collect()
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let Discriminator { image, label, down7, down4, logit } = self;
        [("image", image), ("label", label), ("down7", down7), ("down4", down4), ("logit", logit)]
            .into_iter()
            .flat_map(|(name, layer)| prefixed(name, layer.entries_mut()))
            .collect()
    }
}
