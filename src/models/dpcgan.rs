//! DP-CGAN's generator and discriminator (docs/algorithms.md §1): plain concatenation conditioning, Glorot
//! weights, zero biases; G 115,344 parameters, D 101,889.
use rand::Rng;

use crate::autograd::{Gradients, Tape};
use crate::dp::clip::LayerGrad;
use crate::error::Result;
use crate::nn::{prefixed, Entry, LayerTrace, Linear, Module};
use crate::tensor::{Device, Tensor};

pub const LATENT: usize = 100;
pub const CLASSES: usize = 10;
pub const PIXELS: usize = 784;
pub const HIDDEN: usize = 128;

/// `[z (100), onehot(y) (10)] → Linear 110→128 → ReLU → Linear 128→784 → tanh`.
#[derive(Clone, Debug)]
pub struct Generator {
    pub hidden: Linear,
    pub output: Linear,
}

/// `[x (784), onehot(y) (10)] → Linear 794→128 → ReLU → Linear 128→1` (a logit).
#[derive(Clone, Debug)]
pub struct Discriminator {
    pub hidden: Linear,
    pub output: Linear,
}

/// A discriminator forward pass: the logits `[G, B, 1]` and each layer's trace for clipping.
pub struct DiscriminatorPass {
    pub logits: Tensor,
    pub layers: [LayerTrace; 2],
}

impl DiscriminatorPass {
    /// The layers' outputs: what a backward pass must reach for [`DiscriminatorPass::layer_grads`].
    pub fn outputs(&self) -> Vec<&Tensor> {
        self.layers.iter().map(|l| &l.output).collect()
    }

    /// The layers' clipping views from a backward pass over `Σᵢ ℓᵢ`.
    pub fn layer_grads(&self, grads: &Gradients) -> Result<Vec<LayerGrad>> {
        self.layers
            .iter()
            .map(|l| Ok(LayerGrad::Linear { input: l.input.clone(), output_grad: grads.of(&l.output)?.clone(), bias: true }))
            .collect()
    }
}

fn count(params: &[&Tensor]) -> usize {
    params.iter().map(|p| p.numel()).sum()
}

impl Generator {
    pub fn new<R: Rng>(groups: usize, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(Generator {
            hidden: Linear::glorot(groups, LATENT + CLASSES, HIDDEN, rng, device)?,
            output: Linear::glorot(groups, HIDDEN, PIXELS, rng, device)?,
        })
    }

    pub fn params(&self) -> Vec<&Tensor> {
        self.hidden.params().into_iter().chain(self.output.params()).collect()
    }

    pub fn params_mut(&mut self) -> Vec<&mut Tensor> {
        let Generator { hidden, output } = self;
        hidden.params_mut().into_iter().chain(output.params_mut()).collect()
    }

    /// Parameters per model (one group).
    pub fn parameter_count(&self) -> usize {
        count(&self.params()) / self.hidden.weight.shape()[0]
    }

    /// Images in [−1, 1], `[G, B, 784]`, from `z` `[G, B, 100]` and one-hot labels `[G, B, 10]`.
    pub fn forward(&self, tape: &Tape, z: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let _range = crate::profile::range("g_forward");
        let input = tape.concat(&[z, labels], 2)?;
        let (h, _) = self.hidden.forward(tape, &input)?;
        let (out, _) = self.output.forward(tape, &tape.relu(&h)?)?;
        tape.tanh(&out)
    }
}

/// Its tensors by name (`hidden.weight`, ...), as checkpoints and released generators store them.
impl Module for Generator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let Generator { hidden, output } = self;
        prefixed("hidden", hidden.entries()).into_iter().chain(prefixed("output", output.entries())).collect()
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let Generator { hidden, output } = self;
        prefixed("hidden", hidden.entries_mut()).into_iter().chain(prefixed("output", output.entries_mut())).collect()
    }
}

impl Discriminator {
    pub fn new<R: Rng>(groups: usize, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(Discriminator {
            hidden: Linear::glorot(groups, PIXELS + CLASSES, HIDDEN, rng, device)?,
            output: Linear::glorot(groups, HIDDEN, 1, rng, device)?,
        })
    }

    pub fn params(&self) -> Vec<&Tensor> {
        self.hidden.params().into_iter().chain(self.output.params()).collect()
    }

    pub fn params_mut(&mut self) -> Vec<&mut Tensor> {
        let Discriminator { hidden, output } = self;
        hidden.params_mut().into_iter().chain(output.params_mut()).collect()
    }

    pub fn parameter_count(&self) -> usize {
        count(&self.params()) / self.hidden.weight.shape()[0]
    }

    /// Logits `[G, B, 1]` of images `[G, B, 784]` with one-hot labels `[G, B, 10]`.
    pub fn forward(&self, tape: &Tape, images: &Tensor, labels: &Tensor) -> Result<DiscriminatorPass> {
        let _range = crate::profile::range("d_forward");
        let input = tape.concat(&[images, labels], 2)?;
        let (h, first) = self.hidden.forward(tape, &input)?;
        let (logits, second) = self.output.forward(tape, &tape.relu(&h)?)?;
        Ok(DiscriminatorPass { logits, layers: [first, second] })
    }
}
