//! Phase 1, the non-private warm start, for a group of G discriminators with their throwaway
//! generators: member j trains on its own slice with its own seed, so a group ends where its
//! members would end one by one; one launch per op serves the whole group.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{critic_step, generator_step, CriticBatch, GsWganConfig, LabelledImages, SliceBatches};
use crate::error::{Error, Result};
use crate::models::gswgan::{bernoulli_latent, one_hot, uniform_labels, Discriminator, Generator, GeneratorArch};
use crate::nn::stack;
use crate::optim::Adam;
use crate::tensor::{Device, Tensor};

/// A member's independent random streams, all from its one seed: initialisation, batch order, and
/// the draws of training (z, α, labels). Separate streams keep each use from shifting another.
pub struct MemberRngs {
    pub init: ChaCha20Rng,
    pub batches: ChaCha20Rng,
    pub draws: ChaCha20Rng,
}

pub fn member_rngs(seed: u64) -> MemberRngs {
    let stream = |s: u64| {
        let mut r = ChaCha20Rng::seed_from_u64(seed);
        r.set_stream(s);
        r
    };
    MemberRngs { init: stream(0), batches: stream(1), draws: stream(2) }
}

/// `[G, B, 1]` of α ~ U(0, 1), member g's from `rngs[g]`.
pub(super) fn uniform_alpha<R: Rng>(rngs: &mut [R], batch: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = rngs.iter_mut().flat_map(|r| (0..batch).map(|_| r.random::<f32>()).collect::<Vec<_>>()).collect();
    Tensor::from_vec(data, &[rngs.len(), batch, 1], device)
}

/// A critic batch for every member: its next real batch from its slice, then z and α from its draws.
pub(super) fn next_critic_batch<R: Rng>(
    batches: &mut [SliceBatches],
    draws: &mut [R],
    data: &LabelledImages,
    device: &Device,
) -> Result<CriticBatch> {
    let indices: Vec<Vec<usize>> = batches.iter_mut().map(SliceBatches::next_batch).collect();
    let (images, labels) = data.gather(&indices, device)?;
    let b = indices[0].len();
    let z = bernoulli_latent(draws, b, device)?;
    let alpha = uniform_alpha(draws, b, device)?;
    Ok(CriticBatch { images, labels, z, alpha })
}

/// Losses of the last warm-start iteration, `[G]` each, on the device.
pub struct WarmStartLosses {
    pub critic: Tensor,
    pub generator: Tensor,
}

pub struct WarmStart {
    pub discriminators: Discriminator,
    pub generators: Generator,
    d_optimizer: Adam,
    g_optimizer: Adam,
    batches: Vec<SliceBatches>,
    draws: Vec<ChaCha20Rng>,
    config: GsWganConfig,
    last_batch: usize,
    iterations: u64,
}

impl WarmStart {
    /// Member j is initialised from `seeds[j]` (D, then its generator) and owns `slices[j]`; all
    /// slices must have one size, so the members' batch sizes stay in step.
    pub fn new(
        arch: GeneratorArch,
        base: usize,
        seeds: &[u64],
        slices: Vec<Vec<usize>>,
        config: GsWganConfig,
        device: &Device,
    ) -> Result<Self> {
        if seeds.is_empty() || seeds.len() != slices.len() {
            return Err(Error::Invalid(format!("{} seeds for {} slices", seeds.len(), slices.len())));
        }
        if slices.iter().any(|s| s.len() != slices[0].len()) {
            return Err(Error::Invalid("a warm-start group needs slices of one size".into()));
        }
        let (mut ds, mut gs, mut batches, mut draws) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&seed, slice) in seeds.iter().zip(slices) {
            let mut rngs = member_rngs(seed);
            ds.push(Discriminator::new(1, base, &mut rngs.init, device)?);
            gs.push(Generator::new(arch, 1, base, &mut rngs.init, device)?);
            batches.push(SliceBatches::new(slice, config.batch_size, rngs.batches)?);
            draws.push(rngs.draws);
        }
        Ok(WarmStart {
            discriminators: stack(&ds)?,
            generators: stack(&gs)?,
            d_optimizer: Adam::new(config.adam),
            g_optimizer: Adam::new(config.adam),
            batches,
            draws,
            config,
            last_batch: config.batch_size,
            iterations: 0,
        })
    }

    /// One critic step of every member on its next real batch; `L_D` `[G]`.
    pub fn critic_step(&mut self, data: &LabelledImages) -> Result<Tensor> {
        let device = self.discriminators.conv1.bias.device();
        let batch = next_critic_batch(&mut self.batches, &mut self.draws, data, &device)?;
        self.last_batch = batch.images.shape()[1];
        critic_step(&mut self.discriminators, &mut self.d_optimizer, &mut self.generators, &batch, &self.config)
    }

    /// The plain generator step with batch = the last real batch size; `L_G` `[G]`.
    pub fn generator_step(&mut self) -> Result<Tensor> {
        let device = self.discriminators.conv1.bias.device();
        let labels = uniform_labels(&mut self.draws, self.last_batch);
        let labels = one_hot(&labels, self.draws.len(), &device)?;
        let z = bernoulli_latent(&mut self.draws, self.last_batch, &device)?;
        generator_step(&mut self.generators, &mut self.g_optimizer, &mut self.discriminators, &z, &labels)
    }

    /// One warm-start iteration: the critic steps, then one generator step.
    pub fn iteration(&mut self, data: &LabelledImages) -> Result<WarmStartLosses> {
        let mut critic = None;
        for _ in 0..self.config.critic_steps {
            critic = Some(self.critic_step(data)?);
        }
        let critic = critic.ok_or_else(|| Error::Invalid("a warm-start iteration needs at least one critic step".into()))?;
        let generator = self.generator_step()?;
        self.iterations += 1;
        Ok(WarmStartLosses { critic, generator })
    }

    pub fn iterations(&self) -> u64 {
        self.iterations
    }
}
