//! DP-CGAN's private step as a CUDA graph replays it (see [`crate::train::captured`]): its plan of
//! per-step values (batch, example weights, generator keys, noise step, D's learning rate, G's
//! Adam corrections) and its step on a padded batch.
use rand::Rng;

use super::{DpCgan, StepLosses};
use crate::backend::step_values::StepValues;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};
use crate::train::captured::{self, storages, CaptureRollback, CapturedStep, PaddedBatch, ReplayableStep};
use crate::train::replay::GeneratorKeys;
use crate::train::resident::ResidentData;

/// DP-CGAN's private step captured into a CUDA graph.
pub type GraphedPrivateStep = CapturedStep<StepLosses>;

impl CaptureRollback for DpCgan {
    /// The step number (the noise key's) and G's Adam step count.
    fn counters(&self) -> Vec<u64> {
        vec![self.step, self.g_optimizer.steps()]
    }

    fn set_counters(&mut self, counters: &[u64]) {
        self.step = counters[0];
        self.g_optimizer.set_steps(counters[1]);
    }

    /// Both networks' parameters and G's Adam moments (D's SGD keeps no state).
    fn updated_buffers(&self) -> Vec<*const Storage> {
        let (m, v) = self.g_optimizer.moments();
        storages(self.generator.params().into_iter().chain(self.discriminator.params()).chain(m).chain(v))
    }
}

impl ReplayableStep for DpCgan {
    type Losses = StepLosses;
    const STEP: &'static str = "DP-CGAN step";

    fn step_values(&self, batch: &PaddedBatch, keys: &GeneratorKeys) -> StepValues {
        let (batch_indices, example_weight_rows) = batch.values();
        StepValues {
            noise_step: Some(self.step),
            sgd_lr: Some(self.d_optimizer.hp.lr),
            ema_decay: None,
            adam_corrections: vec![self.g_optimizer.hp.bias_corrections(self.g_optimizer.steps() + 1)],
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
        fake_batch: usize,
        keys: GeneratorKeys,
    ) -> Result<StepLosses> {
        let (images, labels, weights) = batch.gather(data, weight_table)?;
        self.private_step_with(&images, &labels, fake_batch, keys, Some(&weights))
    }

    fn count_replayed_step(&mut self) {
        self.step += 1;
        self.g_optimizer.count_replayed_step();
    }

    fn copied(losses: &StepLosses) -> Result<StepLosses> {
        losses.copied()
    }

    fn ready_for_capture(&self) -> bool {
        self.g_optimizer.steps() > 0
    }
}

/// DP-CGAN's non-private step (the baseline the private one is measured against), as a CUDA graph
/// replays it: batches of the captured size only, unpadded (its mean losses take no weights).
/// Wraps the model for a capture or a replay: `captured::capture(&mut NonPrivateDpCgan(&mut m), ..)`.
pub struct NonPrivateDpCgan<'a>(pub &'a mut DpCgan);

impl CaptureRollback for NonPrivateDpCgan<'_> {
    fn counters(&self) -> Vec<u64> {
        self.0.counters()
    }

    fn set_counters(&mut self, counters: &[u64]) {
        self.0.set_counters(counters);
    }

    fn updated_buffers(&self) -> Vec<*const Storage> {
        self.0.updated_buffers()
    }
}

impl ReplayableStep for NonPrivateDpCgan<'_> {
    type Losses = StepLosses;
    const STEP: &'static str = "DP-CGAN non-private step";

    /// The private step's values but the noise step (nothing is noised).
    fn step_values(&self, batch: &PaddedBatch, keys: &GeneratorKeys) -> StepValues {
        StepValues { noise_step: None, ..self.0.step_values(batch, keys) }
    }

    fn padded_step(
        &mut self,
        data: &ResidentData,
        batch: &PaddedBatch,
        _weight_table: &Tensor,
        _fake_batch: usize,
        keys: GeneratorKeys,
    ) -> Result<StepLosses> {
        if batch.padding() > 0 {
            return Err(Error::Invalid(format!("{} takes unpadded batches; this one has {} padding rows", Self::STEP, batch.padding())));
        }
        let (images, labels) = data.rows_at(&batch.indices, &[1, batch.rows()])?;
        self.0.non_private_step_with(&images, &labels, keys)
    }

    fn count_replayed_step(&mut self) {
        self.0.count_replayed_step();
    }

    fn copied(losses: &StepLosses) -> Result<StepLosses> {
        losses.copied()
    }

    fn ready_for_capture(&self) -> bool {
        self.0.ready_for_capture()
    }
}

impl DpCgan {
    /// The private step on `data`'s records `batch` padded to `rows` rows, under a strict binding
    /// of its planned values: what a capture records, run eagerly ([`captured::bound_step`]).
    pub fn private_step_bound<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
        rows: usize,
        fake_batch: usize,
        rng: &mut R,
    ) -> Result<StepLosses> {
        captured::bound_step(self, data, batch, rows, fake_batch, rng)
    }

    /// The private step captured into a CUDA graph and run once ([`captured::capture`]); replay
    /// the next ones with [`CapturedStep::step`].
    pub fn capture_private_step<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
        rows: usize,
        fake_batch: usize,
        rng: &mut R,
    ) -> Result<GraphedPrivateStep> {
        captured::capture(self, data, batch, rows, fake_batch, rng)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::backend::step_values;
    use crate::dp::{NoiseMode, NoiseSource};
    use crate::tensor::Device;
    use crate::train::dpcgan::DpCganConfig;

    fn model() -> DpCgan {
        let config = DpCganConfig { batch_divisor: 6.0, ..DpCganConfig::default() };
        DpCgan::new(config, NoiseSource::from_seed(5, NoiseMode::Fast), &mut ChaCha8Rng::seed_from_u64(6), &Device::Cpu).unwrap()
    }

    fn data() -> ResidentData {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let pixels = (0..20 * 784).map(|_| rng.random_range(-1.0..1.0)).collect();
        ResidentData::from_parts(pixels, &(0..20).map(|i| i % 10).collect::<Vec<u32>>(), &Device::Cpu).unwrap()
    }

    fn values(m: &DpCgan) -> Vec<Vec<f32>> {
        m.generator.params().into_iter().chain(m.discriminator.params()).map(|t| t.to_vec().unwrap()).collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
        let diff = got.iter().zip(want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>().sqrt();
        let size = want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
        assert!(diff <= tol * size.max(1e-30), "{what}: relative difference {}", diff / size);
    }

    /// Steps bound strictly to their plans take the eager steps: the plan holds every per-step
    /// value the step uses (else the strict binding would refuse). Unpadded (rows = B), the
    /// weights are all 1 and every parameter and G's loss are the eager ones bit for bit; padded
    /// with 5 rows of weight 0, the update is the eager one up to the summation order of the longer
    /// batch (f32, relative 1e-6 of each parameter tensor). The logged D loss, summed through the
    /// weights, agrees to 1e-6 either way.
    #[test]
    fn bound_steps_are_the_eager_steps_padded_or_not() {
        let data = data();
        for padding in [0, 5] {
            let (mut eager, mut bound) = (model(), model());
            for (step, batch) in [[3u32, 0, 19, 7, 7, 12], [1, 2, 3, 4, 5, 6]].iter().enumerate() {
                let records: Vec<usize> = batch.iter().map(|&i| i as usize).collect();
                let (images, labels) = data.batch(&records).unwrap();
                let rng = || ChaCha8Rng::seed_from_u64(step as u64);
                let e = eager.private_step(&images, &labels, 4, &mut rng()).unwrap();
                let b = bound.private_step_bound(&data, batch, batch.len() + padding, 4, &mut rng()).unwrap();
                let what = format!("padding {padding}, step {step}");
                for (k, (got, want)) in values(&bound).iter().zip(values(&eager)).enumerate() {
                    if padding == 0 {
                        assert_eq!(got, &want, "{what}: parameter {k}");
                    } else {
                        close(&format!("{what}: parameter {k}"), got, &want, 1e-6);
                    }
                }
                close(&format!("{what}: D loss"), &b.discriminator.to_vec().unwrap(), &e.discriminator.to_vec().unwrap(), 1e-6);
                close(
                    &format!("{what}: G loss"),
                    &b.generator.to_vec().unwrap(),
                    &e.generator.to_vec().unwrap(),
                    if padding == 0 { 0.0 } else { 1e-6 },
                );
                assert_eq!(b.nonfinite.to_vec().unwrap(), [0.0], "{what}");
            }
            assert_eq!((bound.steps_taken(), bound.generator_adam_steps()), (2, 2));
        }
    }

    /// A padded step does not depend on the record its padding rows gather (record 0, zeroed by
    /// its weight): two training sets that differ only in record 0, which the batch does not
    /// hold, give the same step bit for bit, even when record 0 would make D's gradient infinite
    /// (where the weight of 0 alone would leave a NaN: 0 times infinity).
    #[test]
    fn padding_rows_depend_on_no_record() {
        let (a, b) = (data(), {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let mut pixels: Vec<f32> = (0..20 * 784).map(|_| rng.random_range(-1.0..1.0)).collect();
            pixels[..784].fill(1e38);
            let mut labels: Vec<u32> = (0..20).map(|i| i % 10).collect();
            labels[0] = 9;
            ResidentData::from_parts(pixels, &labels, &Device::Cpu).unwrap()
        });
        let step = |data: &ResidentData| {
            let mut m = model();
            let l = m.private_step_bound(data, &[3, 5, 19], 7, 4, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
            (values(&m), l.discriminator.to_vec().unwrap(), l.generator.to_vec().unwrap())
        };
        let (same, other) = (step(&a), step(&b));
        assert!(other.0.iter().flatten().all(|v| v.is_finite()), "record 0 leaked into the padded step");
        assert_eq!(same, other);
        // Record 0 in the batch does matter (the two sets do differ there).
        let with_zero = |data: &ResidentData| {
            let mut m = model();
            m.private_step_bound(data, &[0, 5, 19], 7, 4, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
            values(&m)
        };
        assert_ne!(with_zero(&a), with_zero(&b));
    }

    /// An empty batch padded to 4 rows leaves D's update to the noise and the generated examples,
    /// and logs the generated part's loss alone (no division by zero).
    #[test]
    fn an_empty_batch_pads_to_rows_of_weight_zero() {
        let data = data();
        let mut m = model();
        let losses = m.private_step_bound(&data, &[], 4, 3, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert!(losses.discriminator.item().unwrap().is_finite());
        assert_eq!(losses.nonfinite.to_vec().unwrap(), [0.0]);
        let err = m.private_step_bound(&data, &[1, 2, 3], 2, 3, &mut ChaCha8Rng::seed_from_u64(1)).err().unwrap().to_string();
        assert!(err.contains("does not fit a padded step of 2 rows"), "{err}");
    }

    /// A plan missing any one kind of value is refused by the step, naming the value: the step uses
    /// every kind, and a capture could never bake one in.
    #[test]
    fn a_plan_missing_a_value_is_refused_by_name() {
        let data = data();
        let padded = PaddedBatch::new(&[3u32, 0, 19, 7, 7, 12], 8, 4).unwrap();
        type Damage = fn(&mut StepValues);
        let cases: [(&str, Damage); 7] = [
            ("a noise key's step 0", |v| v.noise_step = Some(1)),
            ("an SGD learning rate", |v| v.sgd_lr = None),
            ("Adam's bias corrections at t = 1", |v| v.adam_corrections.clear()),
            ("the keys of a public draw", |v| v.draw_keys.truncate(1)),
            ("the keys of a public draw", |v| v.draw_keys[0][1] ^= 1),
            ("a gather of 8 rows", |v| v.batch_indices[0][2] = 18),
            ("a gather of 12 rows from a table of 2", |v| v.example_weight_rows[0] = 1),
        ];
        captured::assert_each_missing_value_is_refused(model, &data, &padded, 4, &cases);
        // A binding that is not strict refuses nothing.
        let table = captured::weight_table(&Device::Cpu).unwrap();
        let keys = GeneratorKeys::draw(&mut ChaCha8Rng::seed_from_u64(1));
        let mut m = model();
        step_values::bind(&StepValues::default(), false, None, || m.padded_step(&data, &padded, &table, 4, keys)).unwrap();
    }

    /// The non-private step under the strict binding of its plan is the eager non-private step
    /// bit for bit (its plan holds every value it uses); a padded batch is refused.
    #[test]
    fn the_bound_non_private_step_is_the_eager_one_and_refuses_padding() {
        let data = data();
        let batch = [3u32, 0, 19, 7, 7, 12];
        let records: Vec<usize> = batch.iter().map(|&i| i as usize).collect();
        let (images, labels) = data.batch(&records).unwrap();
        let (mut eager, mut bound) = (model(), model());
        assert!(!NonPrivateDpCgan(&mut bound).ready_for_capture(), "G's moments come with its first step");
        let e = eager.non_private_step(&images, &labels, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let b = captured::bound_step(&mut NonPrivateDpCgan(&mut bound), &data, &batch, 6, 6, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        assert_eq!(values(&bound), values(&eager));
        assert!(NonPrivateDpCgan(&mut bound).ready_for_capture());
        let (padded, keys) = (PaddedBatch::new(&batch, 6, 6).unwrap(), GeneratorKeys::draw(&mut ChaCha8Rng::seed_from_u64(3)));
        assert_eq!(NonPrivateDpCgan(&mut bound).step_values(&padded, &keys).noise_step, None, "nothing is noised");
        assert_eq!(b.discriminator.to_vec().unwrap(), e.discriminator.to_vec().unwrap());
        assert_eq!(b.generator.to_vec().unwrap(), e.generator.to_vec().unwrap());
        let err = captured::bound_step(&mut NonPrivateDpCgan(&mut bound), &data, &batch, 7, 6, &mut ChaCha8Rng::seed_from_u64(3))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("takes unpadded batches"), "{err}");
    }

    /// What a replay checks it was handed the captured model by: two models' updated buffers
    /// differ. What a refused capture leaves is put back: the step number and G's Adam count
    /// ([`captured::assert_a_refusal_rolls_back`]), for the private and the non-private step.
    #[test]
    fn updated_buffers_identify_the_model_and_a_refusal_rolls_back() {
        let (data, batch) = (data(), [1u32, 2, 3]);
        let (mut a, mut b) = (model(), model());
        for m in [&mut a, &mut b] {
            m.private_step_bound(&data, &batch, 4, 4, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        }
        assert_ne!(a.updated_buffers(), b.updated_buffers());
        assert_eq!(a.counters(), [a.steps_taken(), a.generator_adam_steps()]);
        assert_eq!(a.updated_buffers().len(), 3 * a.generator.params().len() + a.discriminator.params().len());
        let private = |m: &mut DpCgan| {
            m.private_step_bound(&data, &batch, 4, 4, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
        };
        captured::assert_a_refusal_rolls_back(&mut a, private, DpCgan::count_replayed_step);
        let non_private = |m: &mut NonPrivateDpCgan<'_>| {
            captured::bound_step(m, &data, &batch, 3, 3, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
        };
        let expected = b.updated_buffers();
        assert_eq!(NonPrivateDpCgan(&mut b).updated_buffers(), expected, "the same model's buffers");
        captured::assert_a_refusal_rolls_back(&mut NonPrivateDpCgan(&mut b), non_private, |m| m.count_replayed_step());
    }

    /// Both steps, as a capture records them, do nothing a capture refuses (no host copy, no
    /// release of older memory, no copy-on-write), padded or not.
    #[test]
    fn the_captured_steps_are_capturable() {
        let data = data();
        captured::assert_step_capturable(&mut model(), &data, &[3, 0, 19, 7], 6, 4);
        captured::assert_step_capturable(&mut NonPrivateDpCgan(&mut model()), &data, &[3, 0, 19, 7], 4, 4);
    }

    #[test]
    fn capture_needs_a_cuda_device() {
        let err = model().capture_private_step(&data(), &[1, 2], 2, 2, &mut ChaCha8Rng::seed_from_u64(1)).err().unwrap();
        assert!(err.to_string().contains("not available on cpu"), "{err}");
    }
}
