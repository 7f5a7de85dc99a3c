//! Phase 1, the non-private warm start, for a group of G discriminators with their throwaway
//! generators: member j trains on its own slice with its own seed, so a group ends where its
//! members would end one by one; one launch per op serves the whole group. Between iterations a
//! group's whole state is its tensors and a [`WarmStartPosition`]: the draws of iteration t come
//! from the member's stream of t, so nothing else needs saving for a resume to replay them.
use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::{critic_step, generator_step, CriticBatch, GsWganConfig, LabelledImages, SliceBatches};
use crate::backend::{ops, PublicDraw};
use crate::dp::NoiseKey;
use crate::error::{Error, Result};
use crate::models::gswgan::{
    bernoulli_latent, bernoulli_latent_from, member_keys, uniform_one_hot_labels, Discriminator, Generator, GeneratorArch,
};
use crate::nn::{stack, Module};
use crate::optim::Adam;
use crate::tensor::{Device, Tensor};
use crate::train::replay::{stream, Purpose};

/// A member's carried random streams, from its one seed: initialisation and batch order (whose
/// position a checkpoint records as passes and records handed out; see [`SliceBatches::restore`]).
/// Separate streams keep each use from shifting another.
pub struct MemberRngs {
    pub init: ChaCha20Rng,
    pub batches: ChaCha20Rng,
}

pub fn member_rngs(seed: u64) -> MemberRngs {
    let stream = |s: u64| {
        let mut r = ChaCha20Rng::seed_from_u64(seed);
        r.set_stream(s);
        r
    };
    MemberRngs { init: stream(0), batches: stream(1) }
}

/// The draws (z, α, labels) of a member's iteration `t`: addressed by iteration rather than
/// carried, so a group resumed at iteration t draws what the uninterrupted group drew.
pub fn member_draws(seed: u64, t: u64) -> ChaCha20Rng {
    stream(seed, Purpose::Generator, t)
}

/// `[G, B, 1]` of α ~ U(0, 1), member g's from `keys[g]`.
fn uniform_alpha(keys: &[NoiseKey], batch: usize, device: &Device) -> Result<Tensor> {
    ops::public_draws(PublicDraw::Unit, &[keys.len(), batch, 1], keys, device)
}

/// One critic batch of every member: its records `indices[g]` gathered on `device`, z and α drawn
/// there from its keys `z_keys[g]` and `alpha_keys[g]`.
pub(super) fn critic_batch(
    data: &LabelledImages,
    indices: &[Vec<usize>],
    z_keys: &[NoiseKey],
    alpha_keys: &[NoiseKey],
    device: &Device,
) -> Result<CriticBatch> {
    let (images, labels) = data.gather(indices, device)?;
    let b = indices[0].len();
    let z = bernoulli_latent_from(z_keys, b, device)?;
    Ok(CriticBatch { images, labels, z, alpha: uniform_alpha(alpha_keys, b, device)? })
}

/// A critic batch for every member: its next real batch from its slice, then z and α from its draws.
pub(super) fn next_critic_batch<R: Rng>(
    batches: &mut [SliceBatches],
    draws: &mut [R],
    data: &LabelledImages,
    device: &Device,
) -> Result<CriticBatch> {
    let indices: Vec<Vec<usize>> = batches.iter_mut().map(SliceBatches::next_batch).collect();
    // Every member's z key, then every member's α key: the order the draws were always taken in.
    let z_keys = member_keys(draws);
    critic_batch(data, &indices, &z_keys, &member_keys(draws), device)
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
    seeds: Vec<u64>,
    config: GsWganConfig,
    iterations: u64,
}

/// Where a group stands between two iterations, beside its tensors ([`WarmStart::tensors`]):
/// with the members' seeds and slices, all that [`WarmStart::restore`] needs to go on exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmStartPosition {
    /// Iterations the group has taken.
    pub iterations: u64,
    pub d_adam_steps: u64,
    pub g_adam_steps: u64,
    /// Each member's batch stream: passes started and records handed out of the last one.
    pub batches: Vec<(u64, usize)>,
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
        let (mut ds, mut gs, mut batches) = (Vec::new(), Vec::new(), Vec::new());
        for (&seed, slice) in seeds.iter().zip(slices) {
            let mut rngs = member_rngs(seed);
            ds.push(Discriminator::new(1, base, &mut rngs.init, device)?);
            gs.push(Generator::new(arch, 1, base, &mut rngs.init, device)?);
            batches.push(SliceBatches::new(slice, config.batch_size, rngs.batches)?);
        }
        Ok(WarmStart {
            discriminators: stack(&ds)?,
            generators: stack(&gs)?,
            d_optimizer: Adam::new(config.adam),
            g_optimizer: Adam::new(config.adam),
            batches,
            seeds: seeds.to_vec(),
            config,
            iterations: 0,
        })
    }

    /// One warm-start iteration: the critic steps of every member on its next real batches, then
    /// one plain generator step with batch = the last real batch size; `L_D` and `L_G`, `[G]` each.
    pub fn iteration(&mut self, data: &LabelledImages) -> Result<WarmStartLosses> {
        let device = self.discriminators.conv1.bias.device();
        let mut draws: Vec<ChaCha20Rng> = self.seeds.iter().map(|&seed| member_draws(seed, self.iterations)).collect();
        let (mut critic, mut last_batch) = (None, 0);
        for _ in 0..self.config.critic_steps {
            let batch = next_critic_batch(&mut self.batches, &mut draws, data, &device)?;
            last_batch = batch.images.shape()[1];
            critic = Some(critic_step(&mut self.discriminators, &mut self.d_optimizer, &mut self.generators, &batch, &self.config)?);
        }
        let critic = critic.ok_or_else(|| Error::Invalid("a warm-start iteration needs at least one critic step".into()))?;
        let labels = uniform_one_hot_labels(&mut draws, last_batch, &device)?;
        let z = bernoulli_latent(&mut draws, last_batch, &device)?;
        let generator = generator_step(&mut self.generators, &mut self.g_optimizer, &mut self.discriminators, &z, &labels)?;
        self.iterations += 1;
        Ok(WarmStartLosses { critic, generator })
    }

    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// See [`WarmStartPosition`].
    pub fn position(&self) -> WarmStartPosition {
        WarmStartPosition {
            iterations: self.iterations,
            d_adam_steps: self.d_optimizer.steps(),
            g_adam_steps: self.g_optimizer.steps(),
            batches: self.batches.iter().map(|b| (b.passes(), b.position())).collect(),
        }
    }

    /// Every tensor of the group's state by name: both models' weights and buffers and both
    /// optimizers' moments (none before the first iteration).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = Vec::new();
        for (prefix, module) in [("discriminators", &self.discriminators as &dyn Module), ("generators", &self.generators)] {
            out.extend(module.named_tensors().into_iter().map(|(name, t)| (format!("{prefix}.{name}"), t)));
        }
        for (prefix, adam) in [("d_adam", &self.d_optimizer), ("g_adam", &self.g_optimizer)] {
            let (m, v) = adam.moments();
            out.extend(m.iter().enumerate().map(|(i, t)| (format!("{prefix}.m.{i}"), t)));
            out.extend(v.iter().enumerate().map(|(i, t)| (format!("{prefix}.v.{i}"), t)));
        }
        out
    }

    /// The group that [`WarmStart::new`] makes from these seeds and slices, moved to `position`
    /// with `tensors` (as [`WarmStart::tensors`] named them): it goes on bit for bit as the group
    /// that was saved would have. Every tensor must be there, in its shape, and no other.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        arch: GeneratorArch,
        base: usize,
        seeds: &[u64],
        slices: Vec<Vec<usize>>,
        config: GsWganConfig,
        device: &Device,
        position: &WarmStartPosition,
        mut tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        if position.batches.len() != seeds.len() {
            return Err(Error::Invalid(format!("the position of {} batch streams for {} members", position.batches.len(), seeds.len())));
        }
        let mut warm = Self::new(arch, base, seeds, slices.clone(), config, device)?;
        let mut take = |name: String, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.remove(&name).ok_or_else(|| Error::Invalid(format!("it lacks {name}")))?;
            if t.shape() != shape {
                return Err(Error::Invalid(format!("{name} has shape {:?}, expected {shape:?}", t.shape())));
            }
            t.to_device(device)
        };
        for (prefix, module) in [("discriminators", &mut warm.discriminators as &mut dyn Module), ("generators", &mut warm.generators)] {
            for entry in module.entries_mut() {
                *entry.tensor = take(format!("{prefix}.{}", entry.name), entry.tensor.shape())?;
            }
        }
        let d_shapes: Vec<Vec<usize>> = warm.discriminators.params().iter().map(|p| p.shape().to_vec()).collect();
        let g_shapes: Vec<Vec<usize>> = warm.generators.params().iter().map(|p| p.shape().to_vec()).collect();
        for (prefix, adam, shapes, steps) in [
            ("d_adam", &mut warm.d_optimizer, d_shapes, position.d_adam_steps),
            ("g_adam", &mut warm.g_optimizer, g_shapes, position.g_adam_steps),
        ] {
            if steps == 0 {
                continue;
            }
            let mut moments = |which: &str| -> Result<Vec<Tensor>> {
                shapes.iter().enumerate().map(|(i, shape)| take(format!("{prefix}.{which}.{i}"), shape)).collect()
            };
            let (m, v) = (moments("m")?, moments("v")?);
            adam.restore(m, v, steps)?;
        }
        if let Some(name) = tensors.keys().min() {
            return Err(Error::Invalid(format!("it holds {name}, which a group of this run does not have")));
        }
        for ((batches, (&seed, slice)), &(passes, records)) in warm.batches.iter_mut().zip(seeds.iter().zip(slices)).zip(&position.batches)
        {
            *batches = SliceBatches::restore(slice, config.batch_size, member_rngs(seed).batches, passes, records)?;
        }
        warm.iterations = position.iterations;
        Ok(warm)
    }
}
