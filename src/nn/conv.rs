//! Convolutions with bias over model groups: input `[G, B, C, H, W]`, weight `[G, O, C, K, K]`
//! (conv) or `[G, C, O, K, K]` (transposed, PyTorch's layout), bias `[G, O]`.
use rand::Rng;

use super::init::uniform_fan_in;
use super::module::{Entry, Module};
use super::LayerTrace;
use crate::autograd::Tape;
use crate::error::Result;
use crate::tensor::{Device, Tensor};

/// `y = conv2d(x, W) + b`, cross-correlation as in PyTorch.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// PyTorch's default initialisation, fan-in `C·K·K`.
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
        Ok(Conv2d {
            weight: uniform_fan_in(&[groups, out_channels, in_channels, kernel, kernel], fan_in, rng, device)?,
            bias: uniform_fan_in(&[groups, out_channels], fan_in, rng, device)?,
            stride,
            padding,
        })
    }

    /// Records the layer on `tape`. For per-example clipping, call `tape.retain_grad` on the
    /// trace's output before the backward pass.
    pub fn forward(&self, tape: &Tape, x: &Tensor) -> Result<(Tensor, LayerTrace)> {
        let y = tape.conv2d_bias(x, &self.weight, &self.bias, self.stride, self.padding)?;
        Ok((y.clone(), LayerTrace { input: x.clone(), output: y }))
    }
}

impl Module for Conv2d {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        vec![Entry::parameter("weight", &self.weight), Entry::parameter("bias", &self.bias)]
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        vec![Entry::parameter("weight", &mut self.weight), Entry::parameter("bias", &mut self.bias)]
    }
}

/// `y = conv_transpose2d(x, W) + b`, output size `(H − 1)·stride − 2·padding + K`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl ConvTranspose2d {
    /// PyTorch's default initialisation: its fan-in is computed from the weight's dim 1, which for
    /// a transposed conv is the output channels, so `O·K·K`.
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
        let fan_in = out_channels * kernel * kernel;
        Ok(ConvTranspose2d {
            weight: uniform_fan_in(&[groups, in_channels, out_channels, kernel, kernel], fan_in, rng, device)?,
            bias: uniform_fan_in(&[groups, out_channels], fan_in, rng, device)?,
            stride,
            padding,
        })
    }

    pub fn forward(&self, tape: &Tape, x: &Tensor) -> Result<(Tensor, LayerTrace)> {
        let y = tape.conv_transpose2d(x, &self.weight, self.stride, self.padding, 0)?;
        let y = tape.add_channel_bias(&y, &self.bias)?;
        Ok((y.clone(), LayerTrace { input: x.clone(), output: y }))
    }
}

impl Module for ConvTranspose2d {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        vec![Entry::parameter("weight", &self.weight), Entry::parameter("bias", &self.bias)]
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        vec![Entry::parameter("weight", &mut self.weight), Entry::parameter("bias", &mut self.bias)]
    }
}
