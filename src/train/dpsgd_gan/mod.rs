//! DPSGD-GAN's steps (docs/algorithms.md §4): the discriminator trained by DP-SGD on real and generated
//! examples alike, the generator through it, many D steps per G step.
//!
//! A D step puts the realised real batch (Poisson, any size) and B generated examples through D
//! as one batch; every example's gradient, real or generated, is clipped to C; Gaussian noise of
//! standard deviation σC from the run's secret key is added once to the sum, which is divided by
//! 2B, the expected count, never the realised one (so that one record moves the update by at most
//! C/(2B) whatever the draw). D then takes an Adam step. G's step is the non-saturating loss
//! through D on B fresh generated examples, with Adam: it touches no data except through D.
pub mod graphed;
pub mod run;
pub mod schedule;

use std::collections::HashMap;

use rand::Rng;

use crate::autograd::Tape;
use crate::backend::{ops, AdamParams, UnaryOp};
use crate::dp::clip::LayerGrad;
use crate::dp::{private_gradients, private_update, ClippedLoss, DpSgdConfig, NoiseSource};
use crate::error::{Error, Result};
use crate::models::dpsgd_gan::{Discriminator, Generator, CLASSES, LATENT};
use crate::nn::Module;
use crate::optim::{Adam, Optimizer};
use crate::profile;
use crate::tensor::{Device, Tensor};
use crate::train::captured::weighted_mean;
use crate::train::real_then_generated;
use crate::train::replay::GeneratorKeys;

/// docs/algorithms.md §4's published settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpsgdGanConfig {
    pub clip: f32,
    pub noise_multiplier: f32,
    /// B: the expected real batch (q·N) and the number of generated examples per step; D's
    /// summed gradient is divided by 2B.
    pub batch_size: usize,
    pub d_adam: AdamParams,
    pub g_adam: AdamParams,
}

/// Adam(2e-4, β = (0.5, 0.999)), both networks.
pub const PUBLISHED_ADAM: AdamParams = AdamParams { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };

impl Default for DpsgdGanConfig {
    fn default() -> Self {
        DpsgdGanConfig { clip: 1.0, noise_multiplier: 1.0, batch_size: 128, d_adam: PUBLISHED_ADAM, g_adam: PUBLISHED_ADAM }
    }
}

/// The two networks, their optimizers and the noise source of one run.
pub struct DpsgdGan {
    pub generator: Generator,
    pub discriminator: Discriminator,
    pub config: DpsgdGanConfig,
    d_optimizer: Adam,
    g_optimizer: Adam,
    noise: NoiseSource,
    /// D steps taken: the noise of D step t comes from the key of t.
    d_steps: u64,
}

/// A D step's mean loss over its examples and its finiteness flag (`[1]`, 0 or NaN), on the device.
#[derive(Clone)]
pub struct DiscriminatorLosses {
    pub loss: Tensor,
    pub nonfinite: Tensor,
}

impl DiscriminatorLosses {
    /// Copies in storage of their own (a replayed step's live in its graph's).
    pub fn copied(&self) -> Result<DiscriminatorLosses> {
        let copy = |t: &Tensor| ops::unary(UnaryOp::Affine { scale: 1.0, shift: 0.0 }, t);
        Ok(DiscriminatorLosses { loss: copy(&self.loss)?, nonfinite: copy(&self.nonfinite)? })
    }
}

/// A G step's mean non-saturating loss, and D's logits on its generated batch before G moved
/// (what the adaptive schedule reads: D's accuracy on generated data, no real data involved).
pub struct GeneratorLosses {
    pub loss: Tensor,
    pub fake_logits: Tensor,
}

impl DpsgdGan {
    pub fn new<R: Rng>(config: DpsgdGanConfig, width: usize, noise: NoiseSource, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(DpsgdGan {
            generator: Generator::new(1, width, rng, device)?,
            discriminator: Discriminator::new(1, width, rng, device)?,
            d_optimizer: Adam::new(config.d_adam),
            g_optimizer: Adam::new(config.g_adam),
            config,
            noise,
            d_steps: 0,
        })
    }

    pub fn d_steps_taken(&self) -> u64 {
        self.d_steps
    }

    pub fn g_steps_taken(&self) -> u64 {
        self.g_optimizer.steps()
    }

    /// B generator inputs: z ~ N(0, I) and one-hot labels uniform over the classes, both computed on
    /// the device from keys drawn from `rng` (public randomness).
    pub fn generator_inputs<R: Rng>(batch: usize, rng: &mut R, device: &Device) -> Result<(Tensor, Tensor)> {
        GeneratorKeys::draw(rng).inputs(batch, LATENT, CLASSES, device)
    }

    /// D's private gradient for D step `self.d_steps_taken()`, in `params()` order, and the summed
    /// per-example loss: real images `[1, n, 1, 28, 28]` (n as drawn, 0 included) with one-hot
    /// labels `[1, n, 10]`, and generated ones `[1, B, ...]`, all clipped to C, noised once,
    /// divided by 2B. [`Self::discriminator_step`] applies the same gradient without writing it.
    /// This does not advance the step, so its noise is that step's: for inspecting a step (tests),
    /// never for releasing beside the step itself, which would publish the same noise twice.
    pub fn private_gradients(
        &self,
        images: &Tensor,
        labels: &Tensor,
        fake: &Tensor,
        fake_labels: &Tensor,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let _range = profile::range("dpsgd_gan_private_gradients");
        let (layers, _, loss) = self.discriminator_layers(images, labels, fake, fake_labels)?;
        let clipped = [ClippedLoss { layers: layers.iter().map(|l| l as _).collect(), noised: true, weights: None }];
        Ok((private_gradients(&clipped, &self.dp_config(), &self.noise, self.d_steps)?, loss))
    }

    /// D's layers for per-example clipping (their inputs and output gradients) on one batch of the
    /// real and generated examples, each example's loss `[1, n + B, 1]` and their sum.
    fn discriminator_layers(
        &self,
        images: &Tensor,
        labels: &Tensor,
        fake: &Tensor,
        fake_labels: &Tensor,
    ) -> Result<(Vec<LayerGrad>, Tensor, Tensor)> {
        let generated = fake.shape()[1];
        if generated != self.config.batch_size {
            return Err(Error::Invalid(format!("a D step takes B = {} generated examples, got {generated}", self.config.batch_size)));
        }
        // One batch through D: real examples first (target 1), then generated ones (target 0).
        let (batch, batch_labels, targets) = real_then_generated(images, labels, fake, fake_labels)?;
        let tape = Tape::new();
        let d = &self.discriminator;
        d.params().into_iter().for_each(|p| tape.watch(p));
        let pass = profile::scoped("d_forward", || d.forward(&tape, &batch, &batch_labels))?;
        let per_example = tape.bce_with_logits(&pass.logits, &targets)?;
        let loss = tape.sum_all(&per_example)?;
        // Only the layers' output gradients: the clipped sums are the weight gradients.
        Ok((pass.layer_grads(&tape.backward_to(&loss, &pass.outputs())?)?, per_example, loss))
    }

    /// DP-SGD's settings for a D step: C, σ and the divisor 2B.
    fn dp_config(&self) -> DpSgdConfig {
        DpSgdConfig {
            clip: self.config.clip,
            noise_multiplier: self.config.noise_multiplier,
            batch_divisor: (2 * self.config.batch_size) as f32,
        }
    }

    /// One private D step on the real batch, with B generated examples from `rng` (G detached).
    pub fn discriminator_step<R: Rng>(&mut self, images: &Tensor, labels: &Tensor, rng: &mut R) -> Result<DiscriminatorLosses> {
        self.discriminator_step_with(images, labels, GeneratorKeys::draw(rng), None)
    }

    /// [`DpsgdGan::discriminator_step`] with its generator keys drawn already. With `weights`
    /// `[1, n + B]` (each 1 or 0), the real rows weighing 0 are padding: they contribute nothing
    /// to D's update nor to the logged loss (see [`crate::train::captured`]).
    fn discriminator_step_with(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        keys: GeneratorKeys,
        weights: Option<&Tensor>,
    ) -> Result<DiscriminatorLosses> {
        let _step = profile::range("dpsgd_gan_discriminator_step");
        let device = images.device();
        let (z, fake_labels) = keys.inputs(self.config.batch_size, LATENT, CLASSES, &device)?;
        // Nothing watched: G's forward records nothing.
        let fake = profile::scoped("g_forward", || self.generator.forward(&Tape::new(), &z, &fake_labels))?;
        let (layers, per_example, loss_sum) = self.discriminator_layers(images, labels, &fake, &fake_labels)?;
        let clipped = [ClippedLoss { layers: layers.iter().map(|l| l as _).collect(), noised: true, weights }];
        let dp = self.dp_config();
        let d_params = &mut self.discriminator.params_mut();
        let nonfinite = private_update(&clipped, &dp, &self.noise, self.d_steps, &mut self.d_optimizer, d_params)?;
        self.d_steps += 1;
        let loss = match weights {
            None => {
                let examples = images.shape()[1] + self.config.batch_size;
                ops::unary(UnaryOp::Affine { scale: 1.0 / examples as f32, shift: 0.0 }, &loss_sum)?
            }
            Some(w) => weighted_mean(&per_example, w)?,
        };
        Ok(DiscriminatorLosses { loss, nonfinite })
    }

    /// One G step: B fresh generated examples from `rng`, Adam on mean BCE(1, D(G(z, y), y)).
    pub fn generator_step<R: Rng>(&mut self, rng: &mut R, device: &Device) -> Result<GeneratorLosses> {
        let _range = profile::range("dpsgd_gan_generator_step");
        let (z, labels) = Self::generator_inputs(self.config.batch_size, rng, device)?;
        let tape = Tape::new();
        self.generator.params().into_iter().for_each(|p| tape.watch(p));
        let fake = self.generator.forward(&tape, &z, &labels)?;
        let logits = self.discriminator.forward(&tape, &fake, &labels)?.logits;
        let loss = tape.mean_all(&tape.bce_with_logits(&logits, &logits.full_like(logits.shape(), 1.0)?)?)?;
        let grads = tape.backward(&loss)?;
        let g_grads = self.generator.params().into_iter().map(|p| grads.of(p).cloned()).collect::<Result<Vec<_>>>()?;
        drop(tape); // it shares G's weights: released, the update is in place
        self.g_optimizer.step(&mut self.generator.params_mut(), &g_grads)?;
        Ok(GeneratorLosses { loss, fake_logits: logits })
    }

    /// Everything a checkpoint holds besides the step counters: both networks and both Adam
    /// states, by name.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut named = Vec::new();
        for (prefix, model, adam) in [
            ("generator", &self.generator as &dyn Module, &self.g_optimizer),
            ("discriminator", &self.discriminator as &dyn Module, &self.d_optimizer),
        ] {
            let names: Vec<String> = model.entries().into_iter().map(|e| e.name).collect();
            named.extend(model.named_tensors().into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
            let (m, v) = adam.moments();
            named.extend(m.iter().zip(&names).map(|(t, n)| (format!("{prefix}_adam.m.{n}"), t)));
            named.extend(v.iter().zip(&names).map(|(t, n)| (format!("{prefix}_adam.v.{n}"), t)));
        }
        named
    }

    /// Adam's step counts, (G, D), saved beside the tensors.
    pub fn adam_steps(&self) -> (u64, u64) {
        (self.g_optimizer.steps(), self.d_optimizer.steps())
    }

    /// Puts a checkpoint's state back: the tensors of [`DpsgdGan::named_tensors`], the D steps
    /// taken and both Adam step counts. Every tensor must be present with its exact shape.
    pub fn restore(&mut self, mut tensors: HashMap<String, Tensor>, d_steps: u64, (g_adam, d_adam): (u64, u64)) -> Result<()> {
        let mut take = |name: String, like: &Tensor| -> Result<Tensor> {
            let t = tensors.remove(&name).ok_or_else(|| Error::Invalid(format!("checkpoint lacks tensor {name}")))?;
            if t.shape() != like.shape() {
                return Err(Error::Invalid(format!("checkpoint tensor {name} has shape {:?}, the model {:?}", t.shape(), like.shape())));
            }
            Ok(t)
        };
        for (prefix, model, adam, steps) in [
            ("generator", &mut self.generator as &mut dyn Module, &mut self.g_optimizer, g_adam),
            ("discriminator", &mut self.discriminator as &mut dyn Module, &mut self.d_optimizer, d_adam),
        ] {
            for entry in model.entries_mut() {
                *entry.tensor = take(format!("{prefix}.{}", entry.name), entry.tensor)?;
            }
            if steps > 0 {
                let params = model.named_tensors();
                let mut moment =
                    |which: &str| params.iter().map(|(n, p)| take(format!("{prefix}_adam.{which}.{n}"), p)).collect::<Result<Vec<_>>>();
                let (m, v) = (moment("m")?, moment("v")?);
                adam.restore(m, v, steps)?;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Invalid(format!("checkpoint holds tensor {extra}, which this model does not have")));
        }
        self.d_steps = d_steps;
        Ok(())
    }
}

/// D's accuracy on a generated batch from its logits `[1, B, 1]`: the share it calls generated
/// (logit below 0). A host read: the adaptive schedule asks for it once per G step.
pub fn fake_accuracy(fake_logits: &Tensor) -> Result<f64> {
    let logits = fake_logits.to_vec()?;
    if logits.is_empty() {
        return Err(Error::Invalid("D's accuracy on an empty generated batch".into()));
    }
    Ok(logits.iter().filter(|&&l| l < 0.0).count() as f64 / logits.len() as f64)
}
