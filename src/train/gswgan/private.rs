//! Phase 2, private generator training: a discriminator drawn uniformly each iteration takes its
//! critic steps on its own slice, then, frozen, passes G its sanitised image gradient; G takes an
//! Adam step and the released copy G_s follows by EMA.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::graphed::GraphedPhaseTwo;
use super::warm_start::critic_batch;
use super::{critic_step, ema_decay, ema_update, private_generator_step, GsWganConfig, LabelledImages, SliceBatches};
use crate::backend::step_values::StepValues;
use crate::dp::{GsWganSanitizer, NoiseKey, NoiseMode, NoiseSource, RunKey, SecretPurpose};
use crate::error::{Error, Result};
use crate::models::gswgan::{bernoulli_latent_from, uniform_one_hot_labels_from, Discriminator, Generator, GeneratorArch};
use crate::optim::Adam;
use crate::tensor::{Device, Tensor};

/// One warm-started discriminator with its own (fresh) Adam state and its slice's batches. Where
/// the K of them live (all on the device, or paged in) is the caller's choice.
pub struct CriticState {
    pub discriminator: Discriminator,
    pub optimizer: Adam,
    pub batches: SliceBatches,
}

impl CriticState {
    pub fn new(discriminator: Discriminator, slice: Vec<usize>, batch_rng: ChaCha20Rng, config: &GsWganConfig) -> Result<Self> {
        Ok(CriticState {
            discriminator,
            optimizer: Adam::new(config.adam),
            batches: SliceBatches::new(slice, config.batch_size, batch_rng)?,
        })
    }
}

/// One phase-2 iteration's losses and finiteness flag (`[1]` each, on the device; see
/// [`crate::dp::finite`]), and the batch size B of the private step.
pub struct PrivateLosses {
    pub critic: Tensor,
    pub generator: Tensor,
    pub nonfinite: Tensor,
    pub batch_size: usize,
}

impl PrivateLosses {
    /// Copies in storage of their own (a replayed iteration's live in its graph's).
    pub fn copied(&self) -> Result<PrivateLosses> {
        let copy = |t: &Tensor| t.copy_on(&t.device());
        Ok(PrivateLosses {
            critic: copy(&self.critic)?,
            generator: copy(&self.generator)?,
            nonfinite: copy(&self.nonfinite)?,
            batch_size: self.batch_size,
        })
    }
}

pub struct PrivateTraining {
    pub generator: Generator,
    /// G_s: what a run releases.
    pub ema: Generator,
    g_optimizer: Adam,
    pub sanitizer: GsWganSanitizer,
    noise: NoiseSource,
    draws: ChaCha20Rng,
    config: GsWganConfig,
    iterations: u64,
}

impl PrivateTraining {
    /// G initialised from `seed`'s stream 0; the public draws (z, α, labels) come from its stream
    /// 2. The choice of discriminator and the sanitiser's noise (`mode`, one key per iteration)
    /// come from the secret `key`, never from the seed's streams.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arch: GeneratorArch,
        base: usize,
        seed: u64,
        sanitizer: GsWganSanitizer,
        key: &RunKey,
        mode: NoiseMode,
        config: GsWganConfig,
        device: &Device,
    ) -> Result<Self> {
        let mut init = ChaCha20Rng::seed_from_u64(seed);
        let generator = Generator::new(arch, 1, base, &mut init, device)?;
        let mut draws = ChaCha20Rng::seed_from_u64(seed);
        draws.set_stream(2);
        Ok(PrivateTraining {
            ema: generator.clone(),
            generator,
            g_optimizer: Adam::new(config.adam),
            sanitizer,
            noise: key.noise(mode),
            draws,
            config,
            iterations: 0,
        })
    }

    /// One iteration with the selected discriminator (held in `critic`): see [`PhaseTwoStep`].
    pub fn iteration(&mut self, critic: &mut CriticState, data: &LabelledImages) -> Result<PrivateLosses> {
        self.iterate(critic, data, None)
    }

    /// [`PrivateTraining::iteration`] on `graphed`'s working critic, replayed from a CUDA graph
    /// once captured: the same values.
    pub fn graphed_iteration(
        &mut self,
        graphed: &mut GraphedPhaseTwo,
        critic: &mut CriticState,
        data: &LabelledImages,
    ) -> Result<PrivateLosses> {
        self.iterate(critic, data, Some(graphed))
    }

    fn iterate(&mut self, critic: &mut CriticState, data: &LabelledImages, graphed: Option<&mut GraphedPhaseTwo>) -> Result<PrivateLosses> {
        let key = self.noise.next_key();
        let mut step = PhaseTwoStep {
            generator: &mut self.generator,
            optimizer: &mut self.g_optimizer,
            ema: &mut self.ema,
            sanitizer: &self.sanitizer,
            config: &self.config,
        };
        let losses = match graphed {
            Some(graphed) => graphed.iterate(&mut step, critic, data, &mut self.draws, &key, self.iterations)?,
            None => step.run(critic, data, &mut self.draws, &key, self.iterations)?,
        };
        self.noise.next_step();
        self.iterations += 1;
        Ok(losses)
    }

    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The noise stream's position (saved in checkpoints so that a resumed run draws the same noise).
    pub fn noise(&self) -> &NoiseSource {
        &self.noise
    }
}

/// Iteration t's discriminator, j uniform in [0, k), from the key's stream of that iteration: the
/// accountant's 1/k subsampling holds only if j is a fresh uniform draw that the seed does not reveal.
pub fn select_discriminator(key: &RunKey, iteration: u64, k: usize) -> Result<usize> {
    if k == 0 {
        return Err(Error::Invalid("phase 2 needs at least one discriminator".into()));
    }
    Ok(key.stream(SecretPurpose::Selection, iteration).random_range(0..k))
}

/// What a phase-2 iteration takes from the host before its first launch: D_j's critic batches
/// (from its slice) and the keys of the iteration's public draws (from its generator stream), drawn
/// in the order the iteration uses them. Planned apart from the launches, a captured iteration's
/// values can be written before its replay.
#[derive(Clone, Debug)]
pub struct IterationPlan {
    /// Each critic step's record indices.
    pub batches: Vec<Vec<usize>>,
    /// Each critic step's keys of its z and α.
    critic_keys: Vec<[NoiseKey; 2]>,
    /// The private generator step's keys of its labels and z.
    generator_keys: [NoiseKey; 2],
}

impl IterationPlan {
    /// `critic_steps` batches from `batches` and the keys from `draws`, in the iteration's order:
    /// each critic step's z then α, then the generator step's labels then z.
    pub fn draw<R: Rng>(batches: &mut SliceBatches, draws: &mut R, critic_steps: usize) -> Result<Self> {
        if critic_steps == 0 {
            return Err(Error::Invalid("a phase-2 iteration needs at least one critic step".into()));
        }
        let mut critic = Vec::with_capacity(critic_steps);
        let mut critic_keys = Vec::with_capacity(critic_steps);
        for _ in 0..critic_steps {
            critic.push(batches.next_batch());
            let z = NoiseKey::public(draws);
            critic_keys.push([z, NoiseKey::public(draws)]);
        }
        let labels = NoiseKey::public(draws);
        let generator_keys = [labels, NoiseKey::public(draws)];
        Ok(IterationPlan { batches: critic, critic_keys, generator_keys })
    }

    /// Each critic step's batch size; the last is the private step's B.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.iter().map(Vec::len).collect()
    }

    /// The private generator step's batch size B (the last critic batch's, as published).
    pub fn generator_batch(&self) -> usize {
        self.batches.last().map_or(0, Vec::len)
    }

    /// The words of every public draw's key (Philox's words 0 and 1), in draw order.
    pub fn draw_words(&self) -> Vec<[u32; 2]> {
        self.critic_keys.iter().flatten().chain(&self.generator_keys).map(|k| [k.key[0], k.key[1]]).collect()
    }

    /// The critic batches' indices as a gather reads them.
    pub fn batch_indices(&self) -> Vec<Vec<u32>> {
        self.batches.iter().map(|b| b.iter().map(|&i| i as u32).collect()).collect()
    }
}

/// What one phase-2 iteration updates besides the selected critic: G, its Adam state and G_s. The
/// one implementation of the iteration, for [`PrivateTraining`] and for a checkpointed run alike.
pub struct PhaseTwoStep<'a> {
    pub generator: &'a mut Generator,
    pub optimizer: &'a mut Adam,
    pub ema: &'a mut Generator,
    pub sanitizer: &'a GsWganSanitizer,
    pub config: &'a GsWganConfig,
}

impl PhaseTwoStep<'_> {
    /// D_j's critic steps on its slice, then the private generator step through D_j frozen (its
    /// sanitiser noise from `key`), then the EMA at iteration `t`. `draws` supplies the batches'
    /// α, z and labels. Returns the last critic loss, the generator loss, the finiteness flag of
    /// G's sanitised gradient, and B, the private step's batch size.
    pub fn run(
        &mut self,
        critic: &mut CriticState,
        data: &LabelledImages,
        draws: &mut ChaCha20Rng,
        key: &NoiseKey,
        t: u64,
    ) -> Result<PrivateLosses> {
        let plan = IterationPlan::draw(&mut critic.batches, draws, self.config.critic_steps)?;
        self.execute(&mut critic.discriminator, &mut critic.optimizer, &plan, data, key, t)
    }

    /// The iteration's launches for `plan`, D_j being `discriminator` with its Adam state
    /// `optimizer` (the selected critic's, or a working copy of them).
    pub fn execute(
        &mut self,
        discriminator: &mut Discriminator,
        optimizer: &mut Adam,
        plan: &IterationPlan,
        data: &LabelledImages,
        key: &NoiseKey,
        t: u64,
    ) -> Result<PrivateLosses> {
        let device = discriminator.conv1.bias.device();
        let mut critic_loss = None;
        for (batch, [z_key, alpha_key]) in plan.batches.iter().zip(&plan.critic_keys) {
            use std::slice::from_ref;
            let batch = critic_batch(data, from_ref(batch), from_ref(z_key), from_ref(alpha_key), &device)?;
            critic_loss = Some(critic_step(discriminator, optimizer, self.generator, &batch, self.config)?);
        }
        let critic_loss = critic_loss.ok_or_else(|| Error::Invalid("a phase-2 iteration needs at least one critic step".into()))?;
        let batch_size = plan.generator_batch();
        let [labels_key, z_key] = &plan.generator_keys;
        let labels = uniform_one_hot_labels_from(std::slice::from_ref(labels_key), batch_size, &device)?;
        let z = bernoulli_latent_from(std::slice::from_ref(z_key), batch_size, &device)?;
        let (generator_loss, nonfinite) =
            private_generator_step(self.generator, self.optimizer, discriminator, &z, &labels, self.sanitizer, key)?;
        ema_update(self.ema, self.generator, ema_decay(t))?;
        Ok(PrivateLosses { critic: critic_loss, generator: generator_loss, nonfinite, batch_size })
    }

    /// The values of iteration `t` with `plan` that change from one iteration to the next, D_j's
    /// Adam state being `d_optimizer` (before the iteration): the noise step, the EMA's decay, the
    /// bias corrections of D_j's critic steps then of G's step, the draws' keys and the batches.
    pub fn step_values(&self, plan: &IterationPlan, d_optimizer: &Adam, key: &NoiseKey, t: u64) -> StepValues {
        let d_t = d_optimizer.steps();
        let critic = (1..=plan.batches.len() as u64).map(|k| d_optimizer.hp.bias_corrections(d_t + k));
        let generator = self.optimizer.hp.bias_corrections(self.optimizer.steps() + 1);
        StepValues {
            noise_step: Some(key.step),
            sgd_lr: None,
            ema_decay: Some(ema_decay(t)),
            adam_corrections: critic.chain([generator]).collect(),
            draw_keys: plan.draw_words(),
            batch_indices: plan.batch_indices(),
            example_weight_rows: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::select_discriminator;
    use crate::dp::RunKey;

    /// Over many iterations every discriminator is chosen about T/k times (a χ² test at k − 1 = 9
    /// degrees of freedom: 33.7 is its 0.9999 quantile), consecutive choices are not tied to each
    /// other, and another key chooses differently.
    #[test]
    fn the_discriminator_is_a_fresh_uniform_draw_of_the_key_at_each_iteration() {
        let (k, t) = (10usize, 20_000u64);
        let key = RunKey::generate().unwrap();
        let choices: Vec<usize> = (0..t).map(|i| select_discriminator(&key, i, k).unwrap()).collect();
        let mut counts = vec![0u64; k];
        for &j in &choices {
            counts[j] += 1;
        }
        let expected = t as f64 / k as f64;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 < 33.7, "counts {counts:?}: χ² = {chi2}");
        // Uniform pairs (j_t, j_t+1): the same choice twice in a row about 1/k of the time.
        let repeats = choices.windows(2).filter(|w| w[0] == w[1]).count() as f64 / (t - 1) as f64;
        assert!((repeats - 0.1).abs() < 0.015, "consecutive repeats {repeats}");
        let other = RunKey::generate().unwrap();
        let agree = (0..t).filter(|&i| select_discriminator(&other, i, k).unwrap() == choices[i as usize]).count() as f64 / t as f64;
        assert!((agree - 0.1).abs() < 0.015, "two keys agree on {agree} of the choices");
        assert!(select_discriminator(&key, 0, 0).is_err());
        assert_eq!(select_discriminator(&key, 7, 1).unwrap(), 0);
    }
}
