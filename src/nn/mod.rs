//! Layers: parameters (outside the tape) and the forward pass that records them on a tape.
//! Every parameter carries the model-group dimension G first.
pub mod conv;
pub mod init;
pub mod module;
pub mod spectral;

use rand::Rng;

use crate::autograd::Tape;
use crate::error::Result;
use crate::tensor::{Device, Tensor};

pub use conv::{Conv2d, ConvTranspose2d};
pub use module::{load_prefixed, member, prefixed, stack, Entry, Module, TensorKind};
pub use spectral::{NormalizedWeight, SnConv2d, SnEmbedding, SnLinear, SpectralNorm, SpectralTrace};

/// `y = x·Wᵀ + b` for `x` `[G, B, I]`, `W` `[G, O, I]`, `b` `[G, O]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// What a layer's forward leaves for per-example clipping: its input and its output (whose
/// gradient the tape retains).
#[derive(Clone, Debug)]
pub struct LayerTrace {
    pub input: Tensor,
    pub output: Tensor,
}

impl Linear {
    /// Glorot (Xavier) uniform weights, `U(−a, a)` with `a = sqrt(6 / (I + O))`, zero biases: the
    /// Keras default DP-CGAN uses.
    pub fn glorot<R: Rng>(groups: usize, inputs: usize, outputs: usize, rng: &mut R, device: &Device) -> Result<Self> {
        let a = (6.0 / (inputs + outputs) as f64).sqrt() as f32;
        Ok(Linear {
            weight: Tensor::uniform(&[groups, outputs, inputs], -a, a, rng, device)?,
            bias: Tensor::zeros(&[groups, outputs], device)?,
        })
    }

    /// PyTorch's default initialisation: weight and bias `U(±1/√I)`.
    pub fn pytorch_default<R: Rng>(groups: usize, inputs: usize, outputs: usize, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(Linear {
            weight: init::uniform_fan_in(&[groups, outputs, inputs], inputs, rng, device)?,
            bias: init::uniform_fan_in(&[groups, outputs], inputs, rng, device)?,
        })
    }

    pub fn params(&self) -> [&Tensor; 2] {
        [&self.weight, &self.bias]
    }

    pub fn params_mut(&mut self) -> [&mut Tensor; 2] {
        [&mut self.weight, &mut self.bias]
    }

    /// Records the layer on `tape` and keeps its output gradient for clipping.
    pub fn forward(&self, tape: &Tape, x: &Tensor) -> Result<(Tensor, LayerTrace)> {
        let y = tape.linear(x, &self.weight, Some(&self.bias))?;
        tape.retain_grad(&y);
        Ok((y.clone(), LayerTrace { input: x.clone(), output: y }))
    }
}

impl Module for Linear {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        vec![Entry::parameter("weight", &self.weight), Entry::parameter("bias", &self.bias)]
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        vec![Entry::parameter("weight", &mut self.weight), Entry::parameter("bias", &mut self.bias)]
    }
}
