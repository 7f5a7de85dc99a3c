//! Phase 2, private generator training: a discriminator drawn uniformly each iteration takes its
//! critic steps on its own slice, then, frozen, passes G its sanitised image gradient; G takes an
//! Adam step and the released copy G_s follows by EMA.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::warm_start::next_critic_batch;
use super::{critic_step, ema_decay, ema_update, private_generator_step, GsWganConfig, LabelledImages, SliceBatches};
use crate::dp::{GsWganSanitizer, NoiseKey, NoiseMode, NoiseSource, RunKey, SecretPurpose};
use crate::error::{Error, Result};
use crate::models::gswgan::{bernoulli_latent, uniform_one_hot_labels, Discriminator, Generator, GeneratorArch};
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
        let key = self.noise.next_key();
        let mut step = PhaseTwoStep {
            generator: &mut self.generator,
            optimizer: &mut self.g_optimizer,
            ema: &mut self.ema,
            sanitizer: &self.sanitizer,
            config: &self.config,
        };
        let losses = step.run(critic, data, &mut self.draws, &key, self.iterations)?;
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
        let device = critic.discriminator.conv1.bias.device();
        let mut critic_loss = None;
        let mut batch_size = 0;
        for _ in 0..self.config.critic_steps {
            let batch = next_critic_batch(std::slice::from_mut(&mut critic.batches), std::slice::from_mut(draws), data, &device)?;
            batch_size = batch.images.shape()[1];
            critic_loss = Some(critic_step(&mut critic.discriminator, &mut critic.optimizer, self.generator, &batch, self.config)?);
        }
        let critic_loss = critic_loss.ok_or_else(|| Error::Invalid("a phase-2 iteration needs at least one critic step".into()))?;
        let rngs = std::slice::from_mut(draws);
        let labels = uniform_one_hot_labels(rngs, batch_size, &device)?;
        let z = bernoulli_latent(rngs, batch_size, &device)?;
        let (generator_loss, nonfinite) =
            private_generator_step(self.generator, self.optimizer, &mut critic.discriminator, &z, &labels, self.sanitizer, key)?;
        ema_update(self.ema, self.generator, ema_decay(t))?;
        Ok(PrivateLosses { critic: critic_loss, generator: generator_loss, nonfinite, batch_size })
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
