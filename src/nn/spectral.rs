//! Spectrally normalised layers (docs/algorithms.md §2): a trainable W̄ and buffers u `[G, O]`, v `[G, I]`
//! (W̄ viewed as O × I, I = in·k·k). Every forward, training or not, runs one power iteration
//! without gradient, stores the new u, v, and uses `W = W̄/s` with `s = uᵀW̄v` (which the power
//! iteration computes on its way), the gradient flowing through s into W̄. Tensor names follow
//! PyTorch's `spectral_norm` (`weight_orig`, `weight_u`, `weight_v`).
use rand::Rng;

use super::init::{normal, uniform_fan_in, unit_rows};
use super::module::{Entry, Module};
use super::LayerTrace;
use crate::autograd::Tape;
use crate::error::{ensure_shape, Result};
use crate::tensor::{Device, Tensor};

/// W̄ and its power-iteration vectors.
#[derive(Clone, Debug)]
pub struct SpectralNorm {
    pub weight_orig: Tensor,
    pub u: Tensor,
    pub v: Tensor,
}

/// What a spectrally normalised layer leaves for per-example clipping (`dp::clip::SpectralLayerGrad`):
/// its input and output, the weight `W = W̄/s` it ran with, and the u, v and `s = uᵀW̄v` `[G]`
/// that defined it.
#[derive(Clone, Debug)]
pub struct SpectralTrace {
    pub layer: LayerTrace,
    pub weight: Tensor,
    pub weight_orig: Tensor,
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: Tensor,
}

/// The weight a forward pass runs with, `W = W̄/s`, its `s` `[G]`, and the u and v of that pass
/// (the pass's own tensors: the module's state moves on at the next pass, in place).
#[derive(Clone, Debug)]
pub struct NormalizedWeight {
    pub weight: Tensor,
    pub sigma: Tensor,
    pub u: Tensor,
    pub v: Tensor,
}

impl SpectralNorm {
    /// Wraps `weight_orig` `[G, O, ...]` with u, v drawn N(0, 1) and normalised.
    pub fn new<R: Rng>(weight_orig: Tensor, rng: &mut R) -> Result<Self> {
        let s = weight_orig.shape().to_vec();
        ensure_shape!(s.len() >= 3, "spectral_norm", "weight must be [G, O, ...], got {s:?}");
        let device = weight_orig.device();
        let cols = weight_orig.numel() / (s[0] * s[1]).max(1);
        let u = unit_rows(&[s[0], s[1]], rng, &device)?;
        let v = unit_rows(&[s[0], cols], rng, &device)?;
        Ok(SpectralNorm { weight_orig, u, v })
    }

    /// The normalised weight for this forward pass and its σ; updates u and v.
    pub fn weight(&mut self, tape: &Tape) -> Result<NormalizedWeight> {
        let mut weights = Self::weights(tape, &mut [self])?;
        Ok(weights.remove(0))
    }

    /// [`SpectralNorm::weight`] of each of `norms`, their power iterations in the same launches: a
    /// model calls it once per forward pass for all its layers, then hands each layer its weight
    /// (`forward_with`). The same values as one call per layer.
    pub fn weights(tape: &Tape, norms: &mut [&mut SpectralNorm]) -> Result<Vec<NormalizedWeight>> {
        // u and v are updated in place: replacing them would free the previous step's tensors, which
        // a CUDA graph capture of a step refuses.
        let mut layers: Vec<(&Tensor, &mut Tensor, &mut Tensor)> = norms.iter_mut().map(|n| (&n.weight_orig, &mut n.u, &mut n.v)).collect();
        let steps = tape.spectral_normalize_all(&mut layers)?;
        Ok(steps.into_iter().map(|(weight, u, v, sigma)| NormalizedWeight { weight, sigma, u, v }).collect())
    }

    fn trace(&self, input: &Tensor, output: &Tensor, NormalizedWeight { weight, sigma, u, v }: NormalizedWeight) -> SpectralTrace {
        SpectralTrace {
            layer: LayerTrace { input: input.clone(), output: output.clone() },
            weight,
            weight_orig: self.weight_orig.clone(),
            u,
            v,
            sigma,
        }
    }

    fn entries(&self) -> Vec<Entry<&Tensor>> {
        vec![Entry::parameter("weight_orig", &self.weight_orig), Entry::buffer("weight_u", &self.u), Entry::buffer("weight_v", &self.v)]
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        vec![
            Entry::parameter("weight_orig", &mut self.weight_orig),
            Entry::buffer("weight_u", &mut self.u),
            Entry::buffer("weight_v", &mut self.v),
        ]
    }
}

/// Spectrally normalised `y = x·Wᵀ + b`, x `[G, B, I]`.
#[derive(Clone, Debug)]
pub struct SnLinear {
    pub sn: SpectralNorm,
    pub bias: Tensor,
}

impl SnLinear {
    pub fn new<R: Rng>(groups: usize, inputs: usize, outputs: usize, rng: &mut R, device: &Device) -> Result<Self> {
        let weight = uniform_fan_in(&[groups, outputs, inputs], inputs, rng, device)?;
        let bias = uniform_fan_in(&[groups, outputs], inputs, rng, device)?;
        Ok(SnLinear { sn: SpectralNorm::new(weight, rng)?, bias })
    }

    pub fn forward(&mut self, tape: &Tape, x: &Tensor) -> Result<(Tensor, SpectralTrace)> {
        let w = self.sn.weight(tape)?;
        self.forward_with(tape, x, w)
    }

    /// The forward pass with a weight already normalised (by [`SpectralNorm::weights`]).
    pub fn forward_with(&self, tape: &Tape, x: &Tensor, w: NormalizedWeight) -> Result<(Tensor, SpectralTrace)> {
        let y = tape.linear(x, &w.weight, Some(&self.bias))?;
        Ok((y.clone(), self.sn.trace(x, &y, w)))
    }
}

/// Spectrally normalised `y = conv2d(x, W) + b`, W `[G, O, C, K, K]` viewed as O × (C·K·K).
#[derive(Clone, Debug)]
pub struct SnConv2d {
    pub sn: SpectralNorm,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl SnConv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new<R: Rng>(
        groups: usize,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        rng: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let fan_in = in_channels * kernel * kernel;
        let weight = uniform_fan_in(&[groups, out_channels, in_channels, kernel, kernel], fan_in, rng, device)?;
        let bias = uniform_fan_in(&[groups, out_channels], fan_in, rng, device)?;
        Ok(SnConv2d { sn: SpectralNorm::new(weight, rng)?, bias, stride, padding })
    }

    pub fn forward(&mut self, tape: &Tape, x: &Tensor) -> Result<(Tensor, SpectralTrace)> {
        let w = self.sn.weight(tape)?;
        self.forward_with(tape, x, w)
    }

    /// The forward pass with a weight already normalised (by [`SpectralNorm::weights`]).
    pub fn forward_with(&self, tape: &Tape, x: &Tensor, w: NormalizedWeight) -> Result<(Tensor, SpectralTrace)> {
        let y = tape.conv2d_bias(x, &w.weight, &self.bias, self.stride, self.padding)?;
        Ok((y.clone(), self.sn.trace(x, &y, w)))
    }
}

/// A spectrally normalised embedding E `[G, classes, dim]`, N(0, 1) initialised: row y of E is
/// `onehot(y)·E`, a linear layer without bias on one-hot rows.
#[derive(Clone, Debug)]
pub struct SnEmbedding {
    pub sn: SpectralNorm,
}

impl SnEmbedding {
    pub fn new<R: Rng>(groups: usize, classes: usize, dim: usize, rng: &mut R, device: &Device) -> Result<Self> {
        let weight = normal(&[groups, classes, dim], rng, device)?;
        Ok(SnEmbedding { sn: SpectralNorm::new(weight, rng)? })
    }

    /// Rows `E[y]` `[G, B, dim]` for one-hot labels `[G, B, classes]`.
    pub fn forward(&mut self, tape: &Tape, one_hot: &Tensor) -> Result<(Tensor, SpectralTrace)> {
        let w = self.sn.weight(tape)?;
        self.forward_with(tape, one_hot, w)
    }

    /// The forward pass with a weight already normalised (by [`SpectralNorm::weights`]).
    pub fn forward_with(&self, tape: &Tape, one_hot: &Tensor, w: NormalizedWeight) -> Result<(Tensor, SpectralTrace)> {
        let y = tape.matmul(one_hot, &w.weight, false, false)?;
        Ok((y.clone(), self.sn.trace(one_hot, &y, w)))
    }
}

macro_rules! spectral_module {
    ($layer:ty, $($extra:ident),*) => {
        impl Module for $layer {
            fn entries(&self) -> Vec<Entry<&Tensor>> {
                let extra: Vec<Entry<&Tensor>> = vec![$(Entry::parameter(stringify!($extra), &self.$extra)),*];
                self.sn.entries().into_iter().chain(extra).collect()
            }
            fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
                let extra: Vec<Entry<&mut Tensor>> = vec![$(Entry::parameter(stringify!($extra), &mut self.$extra)),*];
                self.sn.entries_mut().into_iter().chain(extra).collect()
            }
        }
    };
}
spectral_module!(SnLinear, bias);
spectral_module!(SnConv2d, bias);
spectral_module!(SnEmbedding,);
