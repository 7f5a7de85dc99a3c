//! One DP-CGAN training step (docs/algorithms.md §1): every real and every generated example's
//! gradient of D's loss is clipped to C on its own, the sum is noised once (the real part needs
//! it) and D takes an SGD step on it; then G takes an Adam step on the non-saturating loss through
//! the updated D.
pub mod graphed;
pub mod run;

use std::collections::HashMap;

use rand::Rng;

use crate::autograd::Tape;
use crate::backend::{ops, AdamParams, BinaryOp, UnaryOp};
use crate::dp::{nonfinite_flag, private_update, ClippedLoss, DpSgdConfig, NoiseSource};
use crate::error::{Error, Result};
use crate::models::dpcgan::{Discriminator, Generator, CLASSES, LATENT};
use crate::optim::{Adam, Optimizer, Sgd};
use crate::profile;
use crate::tensor::{Device, Tensor};
use crate::train::captured::weighted_mean;
use crate::train::real_then_generated;
use crate::train::replay::GeneratorKeys;

/// docs/algorithms.md §1's published settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpCganConfig {
    pub clip: f32,
    pub noise_multiplier: f32,
    /// What D's summed gradient is divided by: the batch size, or q·N under Poisson sampling.
    pub batch_divisor: f32,
    pub d_lr: f32,
    pub g_adam: AdamParams,
}

impl Default for DpCganConfig {
    fn default() -> Self {
        DpCganConfig {
            clip: 1.1,
            noise_multiplier: 1.15,
            batch_divisor: 600.0,
            d_lr: 0.15,
            g_adam: AdamParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-7, weight_decay: 0.0 },
        }
    }
}

/// The two networks, their optimizers and the noise source of one run.
pub struct DpCgan {
    pub generator: Generator,
    pub discriminator: Discriminator,
    pub config: DpCganConfig,
    d_optimizer: Sgd,
    g_optimizer: Adam,
    noise: NoiseSource,
    step: u64,
}

/// Mean losses of a step, on the device (reading them is a host sync: do it when logging), and
/// the step's finiteness flag (see [`crate::dp::finite`]).
#[derive(Clone)]
pub struct StepLosses {
    pub discriminator: Tensor,
    pub generator: Tensor,
    /// `[1]`: 0, or NaN when D's update held a NaN or an infinity (an example whose gradient norm
    /// was not finite makes it all NaN).
    pub nonfinite: Tensor,
}

impl StepLosses {
    /// Copies of the losses in storage of their own (a replayed step's live in its graph's).
    pub fn copied(&self) -> Result<StepLosses> {
        let copy = |t: &Tensor| ops::unary(UnaryOp::Affine { scale: 1.0, shift: 0.0 }, t);
        Ok(StepLosses { discriminator: copy(&self.discriminator)?, generator: copy(&self.generator)?, nonfinite: copy(&self.nonfinite)? })
    }
}

impl DpCgan {
    pub fn new<R: Rng>(config: DpCganConfig, noise: NoiseSource, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(DpCgan {
            generator: Generator::new(1, rng, device)?,
            discriminator: Discriminator::new(1, rng, device)?,
            d_optimizer: Sgd::plain(config.d_lr),
            g_optimizer: Adam::new(config.g_adam),
            config,
            noise,
            step: 0,
        })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Sets D's learning rate for the coming steps (the run's schedule decides it).
    pub fn set_discriminator_lr(&mut self, lr: f32) {
        self.d_optimizer.hp.lr = lr;
    }

    /// Everything a checkpoint holds besides the step counter: both networks' parameters and G's
    /// Adam moments (D's plain SGD has no state), by name.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut named: Vec<(String, &Tensor)> = Vec::new();
        let (m, v) = self.g_optimizer.moments();
        for (prefix, params) in [("generator", self.generator.params()), ("discriminator", self.discriminator.params())] {
            named.extend(params.into_iter().zip(PARAM_NAMES).map(|(t, n)| (format!("{prefix}.{n}"), t)));
        }
        named.extend(m.iter().zip(PARAM_NAMES).map(|(t, n)| (format!("generator_adam.m.{n}"), t)));
        named.extend(v.iter().zip(PARAM_NAMES).map(|(t, n)| (format!("generator_adam.v.{n}"), t)));
        named
    }

    /// Adam's step count for G (saved beside the tensors).
    pub fn generator_adam_steps(&self) -> u64 {
        self.g_optimizer.steps()
    }

    /// Puts a checkpoint's state back: the tensors of [`DpCgan::named_tensors`], the number of
    /// steps taken and G's Adam step count. Every tensor must be present with its exact shape.
    pub fn restore(&mut self, mut tensors: HashMap<String, Tensor>, steps: u64, adam_steps: u64) -> Result<()> {
        let mut take = |name: String, like: &Tensor| -> Result<Tensor> {
            let t = tensors.remove(&name).ok_or_else(|| Error::Invalid(format!("checkpoint lacks tensor {name}")))?;
            if t.shape() != like.shape() {
                return Err(Error::Invalid(format!("checkpoint tensor {name} has shape {:?}, the model {:?}", t.shape(), like.shape())));
            }
            Ok(t)
        };
        for (prefix, params) in [("generator", self.generator.params_mut()), ("discriminator", self.discriminator.params_mut())] {
            for (p, n) in params.into_iter().zip(PARAM_NAMES) {
                *p = take(format!("{prefix}.{n}"), p)?;
            }
        }
        if adam_steps > 0 {
            let params = self.generator.params();
            let m = params.iter().zip(PARAM_NAMES).map(|(p, n)| take(format!("generator_adam.m.{n}"), p)).collect::<Result<Vec<_>>>()?;
            let v = params.iter().zip(PARAM_NAMES).map(|(p, n)| take(format!("generator_adam.v.{n}"), p)).collect::<Result<Vec<_>>>()?;
            self.g_optimizer.restore(m, v, adam_steps)?;
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Invalid(format!("checkpoint holds tensor {extra}, which this model does not have")));
        }
        self.step = steps;
        Ok(())
    }

    /// The private step on a batch of real images `[1, B, 784]` (in [−1, 1]) with one-hot labels,
    /// and `fake_batch` generated examples (public randomness, so their number is free to choose:
    /// under Poisson sampling the run keeps it at the expected batch size while B varies).
    ///
    /// Real and generated examples go through D as one batch (real first, target 1; then
    /// generated, target 0): D has no layer that mixes examples, so each example's gradient, norm
    /// and clip factor are what a pass of its own would give, and the one clipped sum is the sum
    /// of the real part's and the generated part's. The noise is added once, as the real part
    /// needs; one forward, backward and clipping instead of two.
    pub fn private_step<R: Rng>(&mut self, images: &Tensor, labels: &Tensor, fake_batch: usize, rng: &mut R) -> Result<StepLosses> {
        self.private_step_with(images, labels, fake_batch, GeneratorKeys::draw(rng), None)
    }

    /// [`DpCgan::private_step`] with its generator randomness drawn already. With `weights`
    /// `[1, B + fake_batch]` (each 1 or 0), the real rows weighing 0 are padding: they contribute
    /// nothing to D's update nor to the logged loss, so a batch padded to a fixed size takes the
    /// step of its real rows.
    fn private_step_with(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        fake_batch: usize,
        keys: GeneratorKeys,
        weights: Option<&Tensor>,
    ) -> Result<StepLosses> {
        let _step = profile::range("dpcgan_private_step");
        let batch = images.shape()[1];
        let device = images.device();
        let (z, fake_labels) = keys.inputs(fake_batch, LATENT, CLASSES, &device)?;
        // G's forward is recorded once, for G's step; D's tape sees `fake` as a constant.
        let (g_tape, fake) = self.generator_forward(&z, &fake_labels)?;

        let (examples, example_labels, targets) = real_then_generated(images, labels, &fake, &fake_labels)?;
        let tape = Tape::new();
        let d = &self.discriminator;
        d.params().into_iter().for_each(|p| tape.watch(p));
        let pass = profile::scoped("d_forward", || d.forward(&tape, &examples, &example_labels))?;
        let per_example = tape.bce_with_logits(&pass.logits, &targets)?;
        let loss = tape.sum_all(&per_example)?;
        // Only the layers' output gradients: the clipped sums below are the weight gradients.
        let layers = pass.layer_grads(&tape.backward_to(&loss, &pass.outputs())?)?;
        // The tape's saved inputs share D's weights: released now, the update below is in place.
        drop(tape);

        let dp = DpSgdConfig {
            clip: self.config.clip,
            noise_multiplier: self.config.noise_multiplier,
            batch_divisor: self.config.batch_divisor,
        };
        let clipped = [ClippedLoss { layers: layers.iter().map(|l| l as _).collect(), noised: true, weights }];
        let d_params = &mut self.discriminator.params_mut();
        let nonfinite = private_update(&clipped, &dp, &self.noise, self.step, &mut self.d_optimizer, d_params)?;

        let d_loss = match weights {
            None => {
                // The log's D loss, mean real loss + mean generated loss, from the sums: with r the
                // real part's sum and t the total, r/B + (t − r)/B' (an empty Poisson batch
                // contributes 0).
                let real_sum = ops::sum_to(&ops::narrow(&per_example, 1, 0, batch)?, &[])?;
                let (b, b_fake) = (batch.max(1) as f32, fake_batch.max(1) as f32);
                let total_part = ops::unary(UnaryOp::Affine { scale: 1.0 / b_fake, shift: 0.0 }, &loss)?;
                let real_part = ops::unary(UnaryOp::Affine { scale: 1.0 / b - 1.0 / b_fake, shift: 0.0 }, &real_sum)?;
                ops::binary(BinaryOp::Add, &total_part, &real_part)?
            }
            Some(w) => weighted_d_loss(&per_example, w, batch, fake_batch)?,
        };
        let g_loss = self.generator_step(g_tape, &fake, &fake_labels)?;
        self.step += 1;
        Ok(StepLosses { discriminator: d_loss, generator: g_loss, nonfinite })
    }

    /// The same step without privacy (mean losses, no clipping, no noise): the baseline a private
    /// step is measured against.
    pub fn non_private_step<R: Rng>(&mut self, images: &Tensor, labels: &Tensor, rng: &mut R) -> Result<StepLosses> {
        self.non_private_step_with(images, labels, GeneratorKeys::draw(rng))
    }

    /// [`DpCgan::non_private_step`] with its generator keys drawn already.
    fn non_private_step_with(&mut self, images: &Tensor, labels: &Tensor, keys: GeneratorKeys) -> Result<StepLosses> {
        let batch = images.shape()[1];
        let (z, fake_labels) = keys.inputs(batch, LATENT, CLASSES, &images.device())?;
        let (g_tape, fake) = self.generator_forward(&z, &fake_labels)?;
        let tape = Tape::new();
        let d = &self.discriminator;
        d.params().into_iter().for_each(|p| tape.watch(p));
        let real = d.forward(&tape, images, labels)?.logits;
        let generated = d.forward(&tape, &fake, &fake_labels)?.logits;
        let real_loss = tape.mean_all(&tape.bce_with_logits(&real, &ones_like(&real)?)?)?;
        let fake_loss = tape.mean_all(&tape.bce_with_logits(&generated, &generated.full_like(generated.shape(), 0.0)?)?)?;
        let d_loss = tape.add(&real_loss, &fake_loss)?;
        let grads = tape.backward(&d_loss)?;
        let d_grads = d.params().into_iter().map(|p| grads.of(p).cloned()).collect::<Result<Vec<_>>>()?;
        let nonfinite = nonfinite_flag(&d_grads.iter().collect::<Vec<_>>())?;
        drop(tape); // it shares D's weights: released, the update is in place
        self.d_optimizer.step(&mut self.discriminator.params_mut(), &d_grads)?;
        let g_loss = self.generator_step(g_tape, &fake, &fake_labels)?;
        self.step += 1;
        Ok(StepLosses { discriminator: d_loss, generator: g_loss, nonfinite })
    }

    /// G's forward on a tape that watches G, for G's step after D's (G does not change between).
    fn generator_forward(&self, z: &Tensor, labels: &Tensor) -> Result<(Tape, Tensor)> {
        let _range = profile::range("generator_forward");
        let tape = Tape::new();
        self.generator.params().into_iter().for_each(|p| tape.watch(p));
        let fake = self.generator.forward(&tape, z, labels)?;
        Ok((tape, fake))
    }

    /// G's Adam step on mean BCE(1, D(G(z, l), l)) through the current D (G sees no private data
    /// except through D). Takes G's tape (its forward) and drops it before the update, which is
    /// then in place: the tape's saved inputs share G's weights.
    fn generator_step(&mut self, tape: Tape, fake: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let _range = profile::range("generator_step");
        let logits = self.discriminator.forward(&tape, fake, labels)?.logits;
        let loss = tape.mean_all(&tape.bce_with_logits(&logits, &ones_like(&logits)?)?)?;
        let grads = tape.backward(&loss)?;
        let g_grads = self.generator.params().into_iter().map(|p| grads.of(p).cloned()).collect::<Result<Vec<_>>>()?;
        drop(tape);
        self.g_optimizer.step(&mut self.generator.params_mut(), &g_grads)?;
        Ok(loss)
    }
}

/// The logged D loss of a padded batch: the mean real loss over the rows weighing 1 (their count
/// read on the device, so the padding's size is no launch parameter; 0 for an empty batch) plus
/// the mean generated loss. `per_example` is `[1, rows + fake_batch, 1]`, `weights` `[1, rows +
/// fake_batch]`.
fn weighted_d_loss(per_example: &Tensor, weights: &Tensor, rows: usize, fake_batch: usize) -> Result<Tensor> {
    let real = |t: &Tensor| ops::narrow(t, 1, 0, rows);
    let real_mean = weighted_mean(&real(per_example)?, &real(weights)?)?;
    let fake_sum = ops::sum_to(&ops::narrow(per_example, 1, rows, fake_batch)?, &[])?;
    let fake_mean = ops::unary(UnaryOp::Affine { scale: 1.0 / fake_batch.max(1) as f32, shift: 0.0 }, &fake_sum)?;
    ops::binary(BinaryOp::Add, &real_mean, &fake_mean)
}

/// Parameter names in `params()` order, the same for both networks.
const PARAM_NAMES: [&str; 4] = ["hidden.weight", "hidden.bias", "output.weight", "output.bias"];

fn ones_like(t: &Tensor) -> Result<Tensor> {
    t.full_like(t.shape(), 1.0)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::dp::NoiseMode;

    /// Each D parameter's gradient of one example's loss, flattened, by a tape of its own.
    fn example_gradient(d: &Discriminator, image: &Tensor, label: &Tensor, target: f32) -> Vec<f64> {
        let tape = Tape::new();
        d.params().into_iter().for_each(|p| tape.watch(p));
        let logits = d.forward(&tape, image, label).unwrap().logits;
        let loss =
            tape.sum_all(&tape.bce_with_logits(&logits, &logits.full_like(logits.shape(), target as f64).unwrap()).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        d.params().into_iter().flat_map(|p| grads.of(p).unwrap().to_vec().unwrap()).map(f64::from).collect()
    }

    /// The private step's D update, without noise, against brute force: every real and generated
    /// example's gradient from a pass of its own, clipped to C in f64, summed and divided. C at the
    /// median norm, so that it binds for some examples and not others; a real batch larger than
    /// the generated one.
    #[test]
    fn the_private_d_update_is_the_brute_force_clipped_sum() {
        let config = DpCganConfig { noise_multiplier: 0.0, batch_divisor: 7.0, d_lr: 1.0, ..DpCganConfig::default() };
        let device = Device::Cpu;
        let mut model =
            DpCgan::new(config, NoiseSource::from_seed(1, NoiseMode::Fast), &mut ChaCha8Rng::seed_from_u64(2), &device).unwrap();
        let mut data = ChaCha8Rng::seed_from_u64(3);
        let (real, fake_count) = (5, 3);
        let images = Tensor::uniform(&[1, real, 784], -1.0, 1.0, &mut data, &device).unwrap();
        let labels: Vec<u32> = (0..real).map(|_| data.random_range(0..CLASSES as u32)).collect();
        let labels = Tensor::one_hot(&labels, CLASSES, &[1, real], &device).unwrap();
        // The generated examples the step will draw: the same stream, the same G.
        let keys = GeneratorKeys::draw(&mut ChaCha8Rng::seed_from_u64(4));
        let (z, fake_labels) = keys.inputs(fake_count, LATENT, CLASSES, &device).unwrap();
        let fake = model.generator.forward(&Tape::new(), &z, &fake_labels).unwrap();

        let mut gradients = Vec::new();
        for i in 0..real {
            let (x, y) = (ops::narrow(&images, 1, i, 1).unwrap(), ops::narrow(&labels, 1, i, 1).unwrap());
            gradients.push(example_gradient(&model.discriminator, &x, &y, 1.0));
        }
        for j in 0..fake_count {
            let (x, y) = (ops::narrow(&fake, 1, j, 1).unwrap(), ops::narrow(&fake_labels, 1, j, 1).unwrap());
            gradients.push(example_gradient(&model.discriminator, &x, &y, 0.0));
        }
        // C at the median norm: the clip binds for some examples and not for others.
        let norm = |g: &[f64]| g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut norms: Vec<f64> = gradients.iter().map(|g| norm(g)).collect();
        norms.sort_by(f64::total_cmp);
        let clip = norms[norms.len() / 2] as f32;
        model.config.clip = clip;
        let mut expected = vec![0.0f64; gradients[0].len()];
        for g in &gradients {
            let factor = (clip as f64 / norm(g)).min(1.0);
            expected.iter_mut().zip(g).for_each(|(e, v)| *e += factor * v / config.batch_divisor as f64);
        }

        let before: Vec<f64> = model.discriminator.params().into_iter().flat_map(|p| p.to_vec().unwrap()).map(f64::from).collect();
        model.private_step(&images, &labels, fake_count, &mut ChaCha8Rng::seed_from_u64(4)).unwrap();
        let after = model.discriminator.params().into_iter().flat_map(|p| p.to_vec().unwrap()).map(f64::from);
        let update: Vec<f64> = before.iter().zip(after).map(|(b, a)| b - a).collect();
        let error = update.iter().zip(&expected).map(|(u, e)| (u - e).powi(2)).sum::<f64>().sqrt();
        let size = expected.iter().map(|e| e * e).sum::<f64>().sqrt();
        // f32 forward and backward passes and a w − lr·g rounding at |w| ≫ |g|: 1e-4 of the update.
        assert!(error <= 1e-4 * size, "update differs from the brute-force clipped sum by {error} (|update| {size})");
    }
}
