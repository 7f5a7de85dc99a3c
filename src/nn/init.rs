//! PyTorch's default initialisation, which GS-WGAN keeps: weights Kaiming-uniform with a = √5 and
//! biases uniform, both `U(−1/√fan_in, 1/√fan_in)`; embeddings and spectral-norm vectors N(0, 1).
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;
use crate::tensor::{numel, Device, Tensor};

/// `U(−b, b)` with `b = 1/√fan_in`. For weights this is Kaiming-uniform with a = √5:
/// `gain = √(2/(1 + a²)) = √(1/3)`, `b = √3·gain/√fan_in = 1/√fan_in`; PyTorch's bias bound is the same.
pub fn uniform_fan_in<R: Rng>(shape: &[usize], fan_in: usize, rng: &mut R, device: &Device) -> Result<Tensor> {
    let bound = (1.0 / (fan_in.max(1) as f64).sqrt()) as f32;
    Tensor::uniform(shape, -bound, bound, rng, device)
}

/// Standard normal entries (nn.Embedding's default).
pub fn normal<R: Rng>(shape: &[usize], rng: &mut R, device: &Device) -> Result<Tensor> {
    Tensor::randn(shape, rng, device)
}

/// Rows of length `shape.last()` drawn N(0, 1) and scaled to unit norm (`x / max(‖x‖, 1e-12)`, as
/// the power iteration normalises): spectral norm's initial u and v.
pub fn unit_rows<R: Rng>(shape: &[usize], rng: &mut R, device: &Device) -> Result<Tensor> {
    let len = shape.last().copied().unwrap_or(1).max(1);
    let mut data: Vec<f64> = (0..numel(shape)).map(|_| StandardNormal.sample(rng)).collect();
    for row in data.chunks_mut(len) {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    Tensor::from_vec(data.into_iter().map(|x| x as f32).collect(), shape, device)
}
