//! DPSGD-GAN's private D step as a CUDA graph replays it (see [`crate::train::captured`]): its
//! plan of per-step values (batch, example weights, generator keys, noise step, D's Adam
//! corrections) and its step on a padded batch. G's steps, one after every n_D D steps, stay
//! eager: they update G in place, where the D step's graph reads it.
use rand::Rng;

use super::{DiscriminatorLosses, DpsgdGan};
use crate::backend::step_values::StepValues;
use crate::error::Result;
use crate::models::dpsgd_gan::SIDE;
use crate::nn::Module;
use crate::tensor::{Storage, Tensor};
use crate::train::captured::{self, storages, CaptureRollback, CapturedStep, PaddedBatch, ReplayableStep};
use crate::train::replay::GeneratorKeys;
use crate::train::resident::ResidentData;

/// DPSGD-GAN's D step captured into a CUDA graph.
pub type GraphedDiscriminatorStep = CapturedStep<DiscriminatorLosses>;

impl CaptureRollback for DpsgdGan {
    /// D's step number (the noise key's) and D's Adam step count.
    fn counters(&self) -> Vec<u64> {
        vec![self.d_steps, self.d_optimizer.steps()]
    }

    fn set_counters(&mut self, counters: &[u64]) {
        self.d_steps = counters[0];
        self.d_optimizer.set_steps(counters[1]);
    }

    /// D's tensors and Adam moments, which the step updates, and G's, which it reads (an eager G
    /// step updates them in place).
    fn updated_buffers(&self) -> Vec<*const Storage> {
        let (m, v) = self.d_optimizer.moments();
        let (d, g) = (self.discriminator.entries(), self.generator.entries());
        storages(d.into_iter().chain(g).map(|e| e.tensor).chain(m).chain(v))
    }
}

impl ReplayableStep for DpsgdGan {
    type Losses = DiscriminatorLosses;
    const STEP: &'static str = "DPSGD-GAN D step";

    fn step_values(&self, batch: &PaddedBatch, keys: &GeneratorKeys) -> StepValues {
        let (batch_indices, example_weight_rows) = batch.values();
        StepValues {
            noise_step: Some(self.d_steps),
            sgd_lr: None,
            ema_decay: None,
            adam_corrections: vec![self.d_optimizer.hp.bias_corrections(self.d_optimizer.steps() + 1)],
            draw_keys: keys.draw_words(),
            batch_indices: vec![batch_indices],
            example_weight_rows,
        }
    }

    fn padded_step(
        &mut self,
        data: &ResidentData,
        batch: &PaddedBatch,
        weight_table: &Tensor,
        _fake_batch: usize,
        keys: GeneratorKeys,
    ) -> Result<DiscriminatorLosses> {
        let (images, labels, weights) = batch.gather(data, weight_table)?;
        let images = images.reshape(&[1, batch.rows(), 1, SIDE, SIDE])?;
        self.discriminator_step_with(&images, &labels, keys, Some(&weights))
    }

    fn count_replayed_step(&mut self) {
        self.d_steps += 1;
        self.d_optimizer.count_replayed_step();
    }

    fn copied(losses: &DiscriminatorLosses) -> Result<DiscriminatorLosses> {
        losses.copied()
    }

    fn ready_for_capture(&self) -> bool {
        self.d_optimizer.steps() > 0
    }
}

impl DpsgdGan {
    /// The D step on `data`'s records `batch` padded to `rows` rows (B generated examples), under
    /// a strict binding of its planned values: what a capture records, run eagerly.
    pub fn discriminator_step_bound<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
        rows: usize,
        rng: &mut R,
    ) -> Result<DiscriminatorLosses> {
        let fake = self.config.batch_size;
        captured::bound_step(self, data, batch, rows, fake, rng)
    }

    /// The D step captured into a CUDA graph and run once; replay the next ones with
    /// [`CapturedStep::step`].
    pub fn capture_discriminator_step<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
        rows: usize,
        rng: &mut R,
    ) -> Result<GraphedDiscriminatorStep> {
        let fake = self.config.batch_size;
        captured::capture(self, data, batch, rows, fake, rng)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::dp::{NoiseMode, NoiseSource};
    use crate::tensor::Device;
    use crate::train::dpsgd_gan::DpsgdGanConfig;

    fn model() -> DpsgdGan {
        let config = DpsgdGanConfig { batch_size: 4, ..DpsgdGanConfig::default() };
        DpsgdGan::new(config, 8, NoiseSource::from_seed(5, NoiseMode::Fast), &mut ChaCha8Rng::seed_from_u64(6), &Device::Cpu).unwrap()
    }

    fn data() -> ResidentData {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let pixels = (0..20 * 784).map(|_| rng.random_range(0.0..1.0)).collect();
        ResidentData::from_parts(pixels, &(0..20).map(|i| i % 10).collect::<Vec<u32>>(), &Device::Cpu).unwrap()
    }

    fn values(m: &DpsgdGan) -> Vec<Vec<f32>> {
        m.discriminator.params().into_iter().map(|t| t.to_vec().unwrap()).collect()
    }

    /// D steps bound strictly to their plans take the eager steps: bit for bit unpadded, within
    /// f32 summation order (relative 1e-5 per parameter tensor) padded with 3 rows of weight 0.
    #[test]
    fn bound_d_steps_are_the_eager_steps_padded_or_not() {
        let data = data();
        for padding in [0, 3] {
            let (mut eager, mut bound) = (model(), model());
            for (step, batch) in [[3u32, 0, 19, 7, 12], [1, 2, 3, 4, 5]].iter().enumerate() {
                let records: Vec<usize> = batch.iter().map(|&i| i as usize).collect();
                let (images, labels) = data.batch(&records).unwrap();
                let images = images.reshape(&[1, batch.len(), 1, SIDE, SIDE]).unwrap();
                let rng = || ChaCha8Rng::seed_from_u64(step as u64);
                let e = eager.discriminator_step(&images, &labels, &mut rng()).unwrap();
                let b = bound.discriminator_step_bound(&data, batch, batch.len() + padding, &mut rng()).unwrap();
                for (k, (got, want)) in values(&bound).iter().zip(values(&eager)).enumerate() {
                    let diff = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>().sqrt();
                    let size = want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
                    let tol = if padding == 0 { 0.0 } else { 1e-5 };
                    assert!(diff <= tol * size, "padding {padding}, step {step}: parameter {k} differs by {}", diff / size);
                }
                let (bl, el) = (b.loss.item().unwrap(), e.loss.item().unwrap());
                assert!((bl - el).abs() <= 1e-5 * el.abs(), "padding {padding}, step {step}: D loss {bl} vs {el}");
                assert_eq!(b.nonfinite.to_vec().unwrap(), [0.0]);
            }
            assert_eq!(bound.d_steps_taken(), 2);
        }
    }

    /// A plan missing any one of the D step's kinds of value is refused by name.
    #[test]
    fn a_plan_missing_a_value_is_refused_by_name() {
        let padded = PaddedBatch::new(&[3u32, 0, 19], 6, 4).unwrap();
        type Damage = fn(&mut StepValues);
        let cases: [(&str, Damage); 5] = [
            ("a noise key's step 0", |v| v.noise_step = Some(1)),
            ("Adam's bias corrections at t = 1", |v| v.adam_corrections.clear()),
            ("the keys of a public draw", |v| v.draw_keys.truncate(1)),
            ("a gather of 6 rows", |v| v.batch_indices[0][1] = 18),
            ("a gather of 10 rows from a table of 2", |v| v.example_weight_rows[0] = 1),
        ];
        captured::assert_each_missing_value_is_refused(model, &data(), &padded, 4, &cases);
    }

    /// Two models' updated buffers differ (D's tensors and Adam moments, G's tensors), and what a
    /// refused capture leaves is put back: D's step number and Adam count.
    #[test]
    fn updated_buffers_identify_the_model_and_a_refusal_rolls_back() {
        let (data, batch) = (data(), [1u32, 2, 3]);
        let (mut a, mut b) = (model(), model());
        for m in [&mut a, &mut b] {
            m.discriminator_step_bound(&data, &batch, 4, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        }
        assert_ne!(a.updated_buffers(), b.updated_buffers());
        assert_eq!(a.counters(), [a.d_steps_taken(), a.d_optimizer.steps()]);
        let tensors = a.discriminator.entries().len() + 2 * a.discriminator.params().len() + a.generator.entries().len();
        assert_eq!(a.updated_buffers().len(), tensors);
        let step = |m: &mut DpsgdGan| {
            m.discriminator_step_bound(&data, &batch, 4, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
        };
        captured::assert_a_refusal_rolls_back(&mut a, step, DpsgdGan::count_replayed_step);
    }

    /// The D step, as a capture records it, does nothing a capture refuses (no host copy, no
    /// release of older memory, no copy-on-write).
    #[test]
    fn the_captured_d_step_is_capturable() {
        captured::assert_step_capturable(&mut model(), &data(), &[3, 0, 19], 6, 4);
    }

    #[test]
    fn capture_needs_a_cuda_device() {
        let err = model().capture_discriminator_step(&data(), &[1, 2], 2, &mut ChaCha8Rng::seed_from_u64(1)).err().unwrap();
        assert!(err.to_string().contains("not available on cpu"), "{err}");
    }
}
