//! DP-CGAN's private step replayed from a CUDA graph. One step (its batch gathered from the
//! resident training set, then the private step) is captured once with its per-step values bound
//! strictly to a step block; each later step plans its own values (batch indices, example
//! weights, generator keys, noise step, D's learning rate, G's Adam bias corrections), copies them
//! into the block and replays the graph. The host's work per step is then the plan, one copy and
//! one launch.
//!
//! A replay repeats the captured step's shapes, so a batch is padded to a fixed number of rows:
//! its records, then rows of zeros (record 0 gathered, then multiplied by its weight, 0), so a
//! padding row's example depends on no record, only on D. Its clip factor is multiplied by its
//! weight, 0, so it adds nothing to D's update (exactly: 0 times a finite gradient; a non-finite
//! one, which only a non-finite D gives, trips the step's finiteness flag as in any step) and
//! nothing to the logged loss. A Poisson batch, whose size varies, thus replays whenever it fits
//! the rows; a larger one takes the eager step.
//! [`DpCgan::private_step_bound`] runs the capture's body on any backend, so the CPU checks that
//! the plan holds every per-step value the step uses, and that padding changes nothing.
use rand::Rng;

use super::{DpCgan, GeneratorKeys, StepLosses};
use crate::backend::cuda::{CapturedGraph, StepBlock};
use crate::backend::step_values::{self, StepValues};
use crate::backend::{ops, BinaryOp};
use crate::error::{Error, Result};
use crate::tensor::{Device, Storage, Tensor};
use crate::train::resident::ResidentData;

/// A batch padded to `rows` rows, as a captured step gathers it.
struct PaddedBatch {
    /// The batch's records, then record 0 up to `rows` (zeroed by its weight after the gather).
    indices: Vec<u32>,
    /// Each example's row of the weight table `[[1], [0]]`: 0 for the batch's records and the
    /// generated examples, 1 for the padding.
    weight_rows: Vec<u32>,
}

impl PaddedBatch {
    fn new(batch: &[u32], rows: usize, fake_batch: usize) -> Result<Self> {
        if batch.len() > rows {
            return Err(Error::Invalid(format!("a batch of {} records does not fit a padded step of {rows} rows", batch.len())));
        }
        let padding = rows - batch.len();
        let indices = batch.iter().copied().chain(std::iter::repeat_n(0, padding)).collect();
        let weight_rows =
            std::iter::repeat_n(0, batch.len()).chain(std::iter::repeat_n(1, padding)).chain(std::iter::repeat_n(0, fake_batch)).collect();
        Ok(PaddedBatch { indices, weight_rows })
    }
}

/// The weight table padded batches gather their examples' weights from (row 0 weighs 1, row 1 0).
fn weight_table(device: &Device) -> Result<Tensor> {
    Tensor::from_vec(vec![1.0, 0.0], &[2, 1], device)
}

/// A captured private step, the block its replays read their values from, and what identifies
/// the model it was captured from.
pub struct GraphedPrivateStep {
    block: StepBlock,
    graph: CapturedGraph,
    /// The captured step's losses, rewritten by every replay (read them before the next one).
    losses: StepLosses,
    rows: usize,
    fake_batch: usize,
    /// Read by the graph: kept alive as long as it.
    _weight_table: Tensor,
    /// The storage of the model's first parameter of each network: a replay updates these
    /// buffers, so it must be handed the model whose buffers they are.
    model_buffers: [*const Storage; 2],
}

impl DpCgan {
    /// The values that change from one private step to the next, for the step this model takes
    /// next on the padded batch `batch` with generator keys `keys`.
    fn private_step_values(&self, batch: &PaddedBatch, keys: &GeneratorKeys) -> StepValues {
        StepValues {
            noise_step: Some(self.step),
            sgd_lr: Some(self.d_optimizer.hp.lr),
            adam_corrections: Some(self.g_optimizer.hp.bias_corrections(self.g_optimizer.steps() + 1)),
            draw_keys: keys.draw_words(),
            batch_indices: batch.indices.clone(),
            example_weight_rows: batch.weight_rows.clone(),
        }
    }

    /// The private step on `data`'s records `batch` padded to `rows` rows, with generator keys
    /// drawn from `rng` as [`DpCgan::private_step`] draws them, under a strict binding of its
    /// planned values: what a capture records, run eagerly. On any backend it fails, naming the
    /// value, if the step uses a per-step value its plan lacks.
    pub fn private_step_bound<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
        rows: usize,
        fake_batch: usize,
        rng: &mut R,
    ) -> Result<StepLosses> {
        let padded = PaddedBatch::new(batch, rows, fake_batch)?;
        let keys = GeneratorKeys::draw(rng);
        let values = self.private_step_values(&padded, &keys);
        let table = weight_table(&data.device())?;
        step_values::bind(&values, true, None, || self.padded_private_step(data, &padded, &table, fake_batch, keys))
    }

    fn padded_private_step(
        &mut self,
        data: &ResidentData,
        batch: &PaddedBatch,
        weight_table: &Tensor,
        fake_batch: usize,
        keys: GeneratorKeys,
    ) -> Result<StepLosses> {
        let rows = batch.indices.len();
        let (images, labels) = data.rows_at(&batch.indices, &[1, rows])?;
        let weights = ops::gather_rows(weight_table, &batch.weight_rows)?.reshape(&[1, rows + fake_batch])?;
        // Padding rows zeroed: their examples depend on no record, only on D.
        let real_weights = ops::narrow(&weights, 1, 0, rows)?.reshape(&[1, rows, 1])?;
        let images = ops::binary(BinaryOp::Mul, &images, &real_weights)?;
        let labels = ops::binary(BinaryOp::Mul, &labels, &real_weights)?;
        self.private_step_with(&images, &labels, fake_batch, keys, Some(&weights))
    }

    fn buffers(&self) -> [*const Storage; 2] {
        let first = |params: Vec<&Tensor>| params.first().map_or(std::ptr::null(), |t| t.storage() as *const Storage);
        [first(self.generator.params()), first(self.discriminator.params())]
    }

    /// Captures the private step on `data`'s records `batch` padded to `rows` rows (generator keys
    /// from `rng`) into a CUDA graph and runs it once: the model is then one step on, as after
    /// [`DpCgan::private_step_bound`]. Needs a CUDA device, a non-empty data set and one eager
    /// step first (the first step allocates G's Adam moments, which a graph would own and reset at
    /// every replay).
    pub fn capture_private_step<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
        rows: usize,
        fake_batch: usize,
        rng: &mut R,
    ) -> Result<GraphedPrivateStep> {
        let Device::Cuda(cuda) = data.device() else {
            return Err(Error::Unsupported { op: "capturing a DP-CGAN step into a CUDA graph", device: data.device().to_string() });
        };
        if self.g_optimizer.steps() == 0 {
            return Err(Error::Invalid(
                "a DP-CGAN step is captured after an eager one: the first step allocates G's Adam moments, which a graph would own and reset at every replay".into(),
            ));
        }
        if data.is_empty() {
            return Err(Error::Invalid("a DP-CGAN step pads its batch with record 0 of a non-empty training set".into()));
        }
        let padded = PaddedBatch::new(batch, rows, fake_batch)?;
        let keys = GeneratorKeys::draw(rng);
        let values = self.private_step_values(&padded, &keys);
        let index_bound = u32::try_from(data.len()).map_err(|_| Error::Invalid("a training set past 2³² records".into()))?;
        let mut block = StepBlock::new(&cuda, values.layout(), index_bound)?;
        block.upload(&values)?;
        // Made before the capture: a graph may not copy from the host.
        let table = weight_table(&data.device())?;
        let (losses, graph) = cuda.capture(|| block.bind(true, || self.padded_private_step(data, &padded, &table, fake_batch, keys)))?;
        // The capture recorded the step without running it.
        graph.replay()?;
        Ok(GraphedPrivateStep { block, graph, losses, rows, fake_batch, _weight_table: table, model_buffers: self.buffers() })
    }
}

impl GraphedPrivateStep {
    /// The losses of the step last run (the capture's run or the last replay).
    pub fn losses(&self) -> &StepLosses {
        &self.losses
    }

    /// The rows a batch is padded to: a larger batch cannot replay.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The model's next private step on `data`'s records `batch` (at most [`GraphedPrivateStep::rows`]
    /// of them, from the data set the capture gathered from), replayed: its values planned with
    /// generator keys from `rng`, copied into the block, then one graph launch. Returns the step's
    /// losses, valid until the next replay.
    pub fn step<R: Rng>(&mut self, model: &mut DpCgan, batch: &[u32], rng: &mut R) -> Result<&StepLosses> {
        if model.buffers() != self.model_buffers {
            return Err(Error::Invalid(
                "a captured DP-CGAN step replays only on the model it was captured from (and not after a restore)".into(),
            ));
        }
        let padded = PaddedBatch::new(batch, self.rows, self.fake_batch)?;
        let keys = GeneratorKeys::draw(rng);
        self.block.upload(&model.private_step_values(&padded, &keys))?;
        self.graph.replay()?;
        // What the step's host code would have counted.
        model.step += 1;
        model.g_optimizer.count_replayed_step();
        Ok(&self.losses)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::dp::{NoiseMode, NoiseSource};
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
        let table = weight_table(&Device::Cpu).unwrap();
        let keys = GeneratorKeys::draw(&mut ChaCha8Rng::seed_from_u64(1));
        let full = model().private_step_values(&padded, &keys);
        type Damage = fn(&mut StepValues);
        let cases: [(&str, Damage); 7] = [
            ("a noise key's step 0", |v| v.noise_step = Some(1)),
            ("an SGD learning rate", |v| v.sgd_lr = None),
            ("Adam's bias corrections at t = 1", |v| v.adam_corrections = None),
            ("the keys of a public draw", |v| v.draw_keys.truncate(1)),
            ("the keys of a public draw", |v| v.draw_keys[0][1] ^= 1),
            ("a gather of 8 rows", |v| v.batch_indices[2] = 18),
            ("a gather of 12 rows from a table of 2", |v| v.example_weight_rows[0] = 1),
        ];
        for (what, damage) in cases {
            let mut m = model();
            let mut plan = full.clone();
            damage(&mut plan);
            let err = step_values::bind(&plan, true, None, || m.padded_private_step(&data, &padded, &table, 4, keys))
                .err()
                .unwrap_or_else(|| panic!("a plan without {what} was accepted"))
                .to_string();
            assert!(err.contains(what) && err.contains("would repeat it"), "{err}");
        }
        // The full plan passes; a binding that is not strict refuses nothing.
        let mut m = model();
        step_values::bind(&full, true, None, || m.padded_private_step(&data, &padded, &table, 4, keys)).unwrap();
        let mut m = model();
        step_values::bind(&StepValues::default(), false, None, || m.padded_private_step(&data, &padded, &table, 4, keys)).unwrap();
    }

    #[test]
    fn capture_needs_a_cuda_device() {
        let err = model().capture_private_step(&data(), &[1, 2], 2, 2, &mut ChaCha8Rng::seed_from_u64(1)).err().unwrap();
        assert!(err.to_string().contains("not available on cpu"), "{err}");
    }
}
