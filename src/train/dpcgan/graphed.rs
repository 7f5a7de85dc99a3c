//! DP-CGAN's private step replayed from a CUDA graph. One step (its batch gathered from the
//! resident training set, then the private step) is captured once with its per-step values bound
//! strictly to a step block; each later step plans its own values (batch indices, generator keys,
//! noise step, D's learning rate, G's Adam bias corrections), copies them into the block and
//! replays the graph. The host's work per step is then the plan, one copy and one launch.
//!
//! A replay repeats the captured step's shapes: only batches of the captured size replay
//! (shuffled batches, the benchmark's fixed one). Poisson batches vary in size and take the eager
//! step. [`DpCgan::private_step_bound`] runs the capture's body on any backend, so the CPU checks
//! that the plan holds every per-step value the step uses.
use rand::Rng;

use super::{DpCgan, GeneratorKeys, StepLosses};
use crate::backend::cuda::{CapturedGraph, StepBlock};
use crate::backend::step_values::{self, StepValues};
use crate::error::{Error, Result};
use crate::tensor::{Device, Storage, Tensor};
use crate::train::resident::ResidentData;

/// A captured private step, the block its replays read their values from, and what identifies
/// the model it was captured from.
pub struct GraphedPrivateStep {
    block: StepBlock,
    graph: CapturedGraph,
    /// The captured step's losses, rewritten by every replay (read them before the next one).
    losses: StepLosses,
    batch: usize,
    /// The storage of the model's first parameter of each network: a replay updates these
    /// buffers, so it must be handed the model whose buffers they are.
    model_buffers: [*const Storage; 2],
}

impl DpCgan {
    /// The values that change from one private step to the next, for the step this model takes
    /// next on records `batch` with generator keys `keys`.
    fn private_step_values(&self, batch: &[u32], keys: &GeneratorKeys) -> StepValues {
        StepValues {
            noise_step: Some(self.step),
            sgd_lr: Some(self.d_optimizer.hp.lr),
            adam_corrections: Some(self.g_optimizer.hp.bias_corrections(self.g_optimizer.steps() + 1)),
            draw_keys: keys.draw_words(),
            batch_indices: batch.to_vec(),
        }
    }

    /// The private step on `data`'s records `batch` (gathered on the device), with generator keys
    /// drawn from `rng` as [`DpCgan::private_step`] draws them, under a strict binding of its
    /// planned values: what a capture records. On any backend it fails, naming the value, if the
    /// step uses a per-step value its plan lacks; otherwise it is the eager step, bit for bit.
    pub fn private_step_bound<R: Rng>(&mut self, data: &ResidentData, batch: &[u32], fake_batch: usize, rng: &mut R) -> Result<StepLosses> {
        let keys = GeneratorKeys::draw(rng);
        let values = self.private_step_values(batch, &keys);
        step_values::bind(&values, true, None, || self.gathered_private_step(data, batch, fake_batch, keys))
    }

    fn gathered_private_step(&mut self, data: &ResidentData, batch: &[u32], fake_batch: usize, keys: GeneratorKeys) -> Result<StepLosses> {
        let (images, labels) = data.rows_at(batch, &[1, batch.len()])?;
        self.private_step_with(&images, &labels, fake_batch, keys)
    }

    fn buffers(&self) -> [*const Storage; 2] {
        let first = |params: Vec<&Tensor>| params.first().map_or(std::ptr::null(), |t| t.storage() as *const Storage);
        [first(self.generator.params()), first(self.discriminator.params())]
    }

    /// Captures the private step on `data`'s records `batch` (generator keys from `rng`) into a
    /// CUDA graph and runs it once: the model is then one step on, as after
    /// [`DpCgan::private_step`]. Needs a CUDA device and one eager step first (the first step
    /// allocates G's Adam moments, which a graph would own and reset at every replay).
    pub fn capture_private_step<R: Rng>(
        &mut self,
        data: &ResidentData,
        batch: &[u32],
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
        let keys = GeneratorKeys::draw(rng);
        let values = self.private_step_values(batch, &keys);
        let index_bound = u32::try_from(data.len()).map_err(|_| Error::Invalid("a training set past 2³² records".into()))?;
        let mut block = StepBlock::new(&cuda, values.layout(), index_bound)?;
        block.upload(&values)?;
        let (losses, graph) = cuda.capture(|| block.bind(true, || self.gathered_private_step(data, batch, fake_batch, keys)))?;
        // The capture recorded the step without running it.
        graph.replay()?;
        Ok(GraphedPrivateStep { block, graph, losses, batch: batch.len(), model_buffers: self.buffers() })
    }
}

impl GraphedPrivateStep {
    /// The losses of the step last run (the capture's run or the last replay).
    pub fn losses(&self) -> &StepLosses {
        &self.losses
    }

    /// The model's next private step on `data`'s records `batch` (the captured number of them;
    /// the data set the capture gathered from), replayed: its values planned with generator keys
    /// from `rng`, copied into the block, then one graph launch. Returns the step's losses, valid
    /// until the next replay.
    pub fn step<R: Rng>(&mut self, model: &mut DpCgan, batch: &[u32], rng: &mut R) -> Result<&StepLosses> {
        if model.buffers() != self.model_buffers {
            return Err(Error::Invalid(
                "a captured DP-CGAN step replays only on the model it was captured from (and not after a restore)".into(),
            ));
        }
        if batch.len() != self.batch {
            return Err(Error::Invalid(format!("a captured DP-CGAN step replays batches of {} records, not {}", self.batch, batch.len())));
        }
        let keys = GeneratorKeys::draw(rng);
        self.block.upload(&model.private_step_values(batch, &keys))?;
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

    /// Two steps bound strictly to their plans take exactly the eager steps: the plan holds every
    /// per-step value the step uses (else the strict binding would refuse), and binding changes no
    /// value.
    #[test]
    fn bound_steps_are_the_eager_steps() {
        let data = data();
        let (mut eager, mut bound) = (model(), model());
        for (step, batch) in [[3u32, 0, 19, 7, 7, 12], [1, 2, 3, 4, 5, 6]].iter().enumerate() {
            let records: Vec<usize> = batch.iter().map(|&i| i as usize).collect();
            let (images, labels) = data.batch(&records).unwrap();
            let e = eager.private_step(&images, &labels, 4, &mut ChaCha8Rng::seed_from_u64(step as u64)).unwrap();
            let b = bound.private_step_bound(&data, batch, 4, &mut ChaCha8Rng::seed_from_u64(step as u64)).unwrap();
            assert_eq!(values(&bound), values(&eager), "step {step}");
            for (x, y) in [(&b.discriminator, &e.discriminator), (&b.generator, &e.generator), (&b.nonfinite, &e.nonfinite)] {
                assert_eq!(x.to_vec().unwrap(), y.to_vec().unwrap(), "step {step}");
            }
        }
        assert_eq!((bound.steps_taken(), bound.generator_adam_steps()), (2, 2));
    }

    /// A plan missing any one kind of value is refused by the step, naming the value: the step uses
    /// every kind, and a capture could never bake one in.
    #[test]
    fn a_plan_missing_a_value_is_refused_by_name() {
        let data = data();
        let batch = [3u32, 0, 19, 7, 7, 12];
        let keys = GeneratorKeys::draw(&mut ChaCha8Rng::seed_from_u64(1));
        let m = model();
        let full = m.private_step_values(&batch, &keys);
        type Damage = fn(&mut StepValues);
        let cases: [(&str, Damage); 6] = [
            ("a noise key's step 0", |v| v.noise_step = Some(1)),
            ("an SGD learning rate", |v| v.sgd_lr = None),
            ("Adam's bias corrections at t = 1", |v| v.adam_corrections = None),
            ("the keys of a public draw", |v| v.draw_keys.truncate(1)),
            ("the keys of a public draw", |v| v.draw_keys[0][1] ^= 1),
            ("a gather of 6 rows", |v| v.batch_indices[2] = 18),
        ];
        for (what, damage) in cases {
            let mut m = model();
            let mut plan = full.clone();
            damage(&mut plan);
            let err = step_values::bind(&plan, true, None, || m.gathered_private_step(&data, &batch, 4, keys))
                .err()
                .unwrap_or_else(|| panic!("a plan without {what} was accepted"))
                .to_string();
            assert!(err.contains(what) && err.contains("would repeat it"), "{err}");
        }
        // The full plan passes; a binding that is not strict refuses nothing.
        let mut m = model();
        step_values::bind(&full, true, None, || m.gathered_private_step(&data, &batch, 4, keys)).unwrap();
        let mut m = model();
        step_values::bind(&StepValues::default(), false, None, || m.gathered_private_step(&data, &batch, 4, keys)).unwrap();
    }

    #[test]
    fn capture_needs_a_cuda_device() {
        let err = model().capture_private_step(&data(), &[1, 2], 2, &mut ChaCha8Rng::seed_from_u64(1)).err().unwrap();
        assert!(err.to_string().contains("not available on cpu"), "{err}");
    }
}
