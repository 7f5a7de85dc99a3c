//! Training steps replayed from a CUDA graph. One step (its batch gathered from the resident
//! training set, then the model's private step) is captured once with its per-step values bound
//! strictly to a step block (`backend::step_values`); each later step plans its own values (batch
//! indices, example weights, generator keys, noise step, the optimizers' learning rate or bias
//! corrections), copies them into the block and replays the graph. The host's work per step is
//! then the plan, one copy and one launch.
//!
//! A replay repeats the captured step's shapes, so a batch is padded to a fixed number of rows: its
//! records, then rows of zeros (record 0 gathered, then multiplied by its weight, 0), so a padding
//! row's example depends on no record, only on the model. Its clip factor is multiplied by its
//! weight, 0, so it adds nothing to the update (exactly: 0 times a finite gradient; a non-finite
//! one, which only a non-finite model gives, trips the step's finiteness flag as in any step) and
//! nothing to the logged loss. A Poisson batch, whose size varies, thus replays whenever it fits
//! the rows; a larger one takes the unpadded step.
//!
//! [`bound_step`] runs the capture's body on any backend, so the CPU checks that a model's plan
//! holds every per-step value its step uses, and that padding changes nothing.
use rand::Rng;

use std::sync::Arc;

use crate::backend::cuda::{CapturedGraph, CudaDevice, StepBlock};
use crate::backend::step_values::{self, StepValues};
use crate::backend::{ops, BinaryOp};
use crate::error::{Error, Result};
use crate::tensor::{Device, Storage, Tensor};
use crate::train::replay::GeneratorKeys;
use crate::train::resident::ResidentData;

/// A batch padded to a fixed number of rows, as a captured step gathers it.
pub struct PaddedBatch {
    /// The batch's records, then record 0 up to the rows (zeroed by its weight after the gather).
    pub indices: Vec<u32>,
    /// Each example's row of the weight table `[[1], [0]]`: 0 for the batch's records and the
    /// generated examples that follow them, 1 for the padding.
    pub weight_rows: Vec<u32>,
}

impl PaddedBatch {
    /// `batch` padded to `rows` rows, with the weight rows of `fake_batch` generated examples after.
    pub fn new(batch: &[u32], rows: usize, fake_batch: usize) -> Result<Self> {
        if batch.len() > rows {
            return Err(Error::Invalid(format!("a batch of {} records does not fit a padded step of {rows} rows", batch.len())));
        }
        let padding = rows - batch.len();
        let indices = batch.iter().copied().chain(std::iter::repeat_n(0, padding)).collect();
        let weight_rows =
            std::iter::repeat_n(0, batch.len()).chain(std::iter::repeat_n(1, padding)).chain(std::iter::repeat_n(0, fake_batch)).collect();
        Ok(PaddedBatch { indices, weight_rows })
    }

    pub fn rows(&self) -> usize {
        self.indices.len()
    }

    /// The padding rows (weight row 1).
    pub fn padding(&self) -> usize {
        self.weight_rows.iter().filter(|&&r| r == 1).count()
    }

    /// The per-step values of its gathers, for a model's plan.
    pub fn values(&self) -> (Vec<u32>, Vec<u32>) {
        (self.indices.clone(), self.weight_rows.clone())
    }

    /// The batch gathered from `data`: images `[1, rows, 784]` and one-hot labels `[1, rows, 10]`,
    /// zero in the padding rows, and every example's weight `[1, rows + fake_batch]` (the real rows'
    /// then the generated examples'), from `weight_table` ([`weight_table`]).
    pub fn gather(&self, data: &ResidentData, weight_table: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let rows = self.rows();
        let (images, labels) = data.rows_at(&self.indices, &[1, rows])?;
        let weights = ops::gather_rows(weight_table, &self.weight_rows)?.reshape(&[1, self.weight_rows.len()])?;
        // Padding rows zeroed: their examples depend on no record, only on the model.
        let real_weights = ops::narrow(&weights, 1, 0, rows)?.reshape(&[1, rows, 1])?;
        let images = ops::binary(BinaryOp::Mul, &images, &real_weights)?;
        let labels = ops::binary(BinaryOp::Mul, &labels, &real_weights)?;
        Ok((images, labels, weights))
    }
}

/// The rows a Poisson-sampled run pads its batches to: the expected size qN plus six standard
/// deviations of the binomial size, so that about one step in a billion exceeds it (and takes the
/// unpadded step). At most N.
pub fn poisson_rows(sample_rate: f64, records: usize) -> usize {
    let n = records as f64;
    let sd = (n * sample_rate * (1.0 - sample_rate)).max(0.0).sqrt();
    ((sample_rate * n + 6.0 * sd).ceil() as usize).clamp(1, records.max(1))
}

/// The weight table padded batches gather their examples' weights from (row 0 weighs 1, row 1 0).
pub fn weight_table(device: &Device) -> Result<Tensor> {
    Tensor::from_vec(vec![1.0, 0.0], &[2, 1], device)
}

/// The mean of `per_example` `[1, rows + fake, 1]` (or `[1, rows + fake]`) over the examples that
/// weigh 1 (`weights` `[1, rows + fake]`), the count read on the device: for a padded batch's logged
/// loss, whose number of real rows is no launch parameter. 0 when every example weighs 0.
pub fn weighted_mean(per_example: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let sum = ops::sum_products_to(&per_example.reshape(weights.shape())?, weights, &[])?;
    let count = ops::sum_to(weights, &[])?;
    ops::binary(BinaryOp::Div, &sum, &at_least_one(&count)?)
}

/// `max(count, 1)` of a whole count on the device: `count + 1 − [count > 0]`.
pub fn at_least_one(count: &Tensor) -> Result<Tensor> {
    use crate::backend::UnaryOp;
    let empty = ops::unary(UnaryOp::Affine { scale: -1.0, shift: 1.0 }, &ops::unary(UnaryOp::ReluMask, count)?)?;
    ops::binary(BinaryOp::Add, count, &empty)
}

/// What a step changes on the host besides its tensors' values, which a capture the driver refuses
/// leaves changed for a step that did not run: its counters, and the tensors it updates in place.
pub trait CaptureRollback {
    /// The counters the step advances on the host (step numbers, optimizers' step counts).
    fn counters(&self) -> Vec<u64>;

    /// Puts back counters [`CaptureRollback::counters`] returned.
    fn set_counters(&mut self, counters: &[u64]);

    /// The storage of every tensor the step updates in place (parameters, optimizer moments) and
    /// of the networks it reads: a replay writes and reads these buffers, so it must be handed the
    /// model whose buffers they are, and a refused capture must have left them where they were.
    fn updated_buffers(&self) -> Vec<*const Storage>;
}

/// The outcome of [`attempt_capture`].
pub enum Attempt<T> {
    Captured(T),
    /// The driver refused the capture (its reason); the state is as before the attempt.
    Refused(String),
}

/// Runs `capture` (work recorded into a CUDA graph, not run) on `state`. If the driver refuses it
/// ([`Error::CaptureRefused`]), nothing of the work ran on the device, so the counters it advanced
/// on the host are put back and the caller can take the same work eagerly. That needs the
/// tensors it updates to be the ones from before (updated in place, as a capture requires): a
/// capture that replaced one is an error. Any other error is returned as it is.
pub fn attempt_capture<S: CaptureRollback + ?Sized, T>(state: &mut S, capture: impl FnOnce(&mut S) -> Result<T>) -> Result<Attempt<T>> {
    let (counters, buffers) = (state.counters(), state.updated_buffers());
    match capture(state) {
        Ok(captured) => Ok(Attempt::Captured(captured)),
        Err(Error::CaptureRefused(reason)) => {
            if state.updated_buffers() != buffers {
                return Err(Error::Invalid(format!(
                    "a refused CUDA graph capture ({reason}) replaced tensors it should have updated in place: the step cannot be taken again"
                )));
            }
            state.set_counters(&counters);
            Ok(Attempt::Refused(reason))
        }
        Err(e) => Err(e),
    }
}

/// A model whose private step a CUDA graph can capture and replay.
pub trait ReplayableStep: CaptureRollback {
    /// The step's losses, on the device.
    type Losses;
    /// What is captured and replayed for: names the step in errors.
    const STEP: &'static str;

    /// The values that change from one step to the next, for the step the model takes next on
    /// `batch` with generator keys `keys`.
    fn step_values(&self, batch: &PaddedBatch, keys: &GeneratorKeys) -> StepValues;

    /// The step on the padded batch, eagerly (or recorded, inside a capture).
    fn padded_step(
        &mut self,
        data: &ResidentData,
        batch: &PaddedBatch,
        weight_table: &Tensor,
        fake_batch: usize,
        keys: GeneratorKeys,
    ) -> Result<Self::Losses>;

    /// Counts, on the host, a step a replay took (what the step's host code counts).
    fn count_replayed_step(&mut self);

    /// Copies of losses in storage of their own (a replayed step's live in its graph's buffers,
    /// which the next replay rewrites).
    fn copied(losses: &Self::Losses) -> Result<Self::Losses>;

    /// Whether every state tensor the step updates exists already (an optimizer's moments are
    /// made by its first step; made inside a capture, a graph would own and reset them).
    fn ready_for_capture(&self) -> bool;
}

/// The storage of each of `tensors`, for [`CaptureRollback::updated_buffers`].
pub fn storages<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Vec<*const Storage> {
    tensors.into_iter().map(|t| t.storage() as *const Storage).collect()
}

/// The model's step on `data`'s records `batch` padded to `rows` rows, with generator keys drawn
/// from `rng` as the eager step draws them, under a strict binding of its planned values: what a
/// capture records, run eagerly. On any backend it fails, naming the value, if the step uses a
/// per-step value its plan lacks.
pub fn bound_step<M: ReplayableStep, R: Rng>(
    model: &mut M,
    data: &ResidentData,
    batch: &[u32],
    rows: usize,
    fake_batch: usize,
    rng: &mut R,
) -> Result<M::Losses> {
    let padded = PaddedBatch::new(batch, rows, fake_batch)?;
    bound_planned(model, data, &padded, fake_batch, GeneratorKeys::draw(rng))
}

/// [`bound_step`] on a padded batch with its generator keys drawn already.
fn bound_planned<M: ReplayableStep>(
    model: &mut M,
    data: &ResidentData,
    padded: &PaddedBatch,
    fake_batch: usize,
    keys: GeneratorKeys,
) -> Result<M::Losses> {
    let values = model.step_values(padded, &keys);
    let table = weight_table(&data.device())?;
    step_values::bind(&values, true, None, || model.padded_step(data, padded, &table, fake_batch, keys))
}

/// A run's captured step: none yet, captured, or refused by the driver (the run then takes its
/// padded steps eagerly, the same steps with more launches).
pub enum StepGraph<L> {
    Pending,
    Captured(Box<CapturedStep<L>>),
    Refused(String),
}

impl<L> StepGraph<L> {
    /// Why the driver refused the capture, if it did.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            StepGraph::Refused(reason) => Some(reason),
            _ => None,
        }
    }
}

/// A run's padded step on `batch` (which fits `rows`): replayed from `graph` once captured;
/// captured there (and run) on a CUDA device once the model is ready; else [`bound_step`], eagerly.
/// If the driver refuses the capture, the step is taken eagerly with the same values (see
/// [`attempt_capture`]) and so is every later one. Any device thus takes the same padded steps.
/// The losses are in storage of their own, for a run loop that reads them later.
pub fn run_step<M: ReplayableStep, R: Rng>(
    graph: &mut StepGraph<M::Losses>,
    model: &mut M,
    data: &ResidentData,
    batch: &[u32],
    rows: usize,
    fake_batch: usize,
    rng: &mut R,
) -> Result<M::Losses> {
    if let StepGraph::Captured(captured) = graph {
        return M::copied(captured.step(model, batch, rng)?);
    }
    let cuda = match data.device() {
        Device::Cuda(cuda) if matches!(graph, StepGraph::Pending) && model.ready_for_capture() => cuda,
        _ => return bound_step(model, data, batch, rows, fake_batch, rng),
    };
    let padded = PaddedBatch::new(batch, rows, fake_batch)?;
    let keys = GeneratorKeys::draw(rng);
    match attempt_capture(model, |m| capture_planned(&cuda, m, data, &padded, fake_batch, keys))? {
        Attempt::Captured(captured) => {
            let losses = M::copied(captured.losses())?;
            *graph = StepGraph::Captured(Box::new(captured));
            Ok(losses)
        }
        Attempt::Refused(reason) => {
            *graph = StepGraph::Refused(reason);
            bound_planned(model, data, &padded, fake_batch, keys)
        }
    }
}

/// A captured step, the block its replays read their values from, and what identifies the model
/// it was captured from.
pub struct CapturedStep<L> {
    block: StepBlock,
    graph: CapturedGraph,
    /// The captured step's losses, rewritten by every replay (read them before the next one).
    losses: L,
    rows: usize,
    fake_batch: usize,
    /// Read by the graph: kept alive as long as it.
    _weight_table: Tensor,
    model_buffers: Vec<*const Storage>,
}

/// Captures the model's step on `data`'s records `batch` padded to `rows` rows (generator keys
/// from `rng`) into a CUDA graph and runs it once: the model is then one step on, as after
/// [`bound_step`]. Needs a CUDA device, a non-empty data set and the model's state made by an
/// eager step first.
pub fn capture<M: ReplayableStep, R: Rng>(
    model: &mut M,
    data: &ResidentData,
    batch: &[u32],
    rows: usize,
    fake_batch: usize,
    rng: &mut R,
) -> Result<CapturedStep<M::Losses>> {
    let Device::Cuda(cuda) = data.device() else {
        return Err(Error::Unsupported { op: "capturing a training step into a CUDA graph", device: data.device().to_string() });
    };
    let padded = PaddedBatch::new(batch, rows, fake_batch)?;
    capture_planned(&cuda, model, data, &padded, fake_batch, GeneratorKeys::draw(rng))
}

/// [`capture`] on a padded batch with its generator keys drawn already.
fn capture_planned<M: ReplayableStep>(
    cuda: &Arc<CudaDevice>,
    model: &mut M,
    data: &ResidentData,
    padded: &PaddedBatch,
    fake_batch: usize,
    keys: GeneratorKeys,
) -> Result<CapturedStep<M::Losses>> {
    if !model.ready_for_capture() {
        return Err(Error::Invalid(format!(
            "{} is captured after an eager one: the first step makes the optimizer's moments, which a graph would own and reset at every replay",
            M::STEP
        )));
    }
    if data.is_empty() {
        return Err(Error::Invalid("a captured step pads its batch with record 0 of a non-empty training set".into()));
    }
    let values = model.step_values(padded, &keys);
    let index_bound = u32::try_from(data.len()).map_err(|_| Error::Invalid("a training set past 2³² records".into()))?;
    let mut block = StepBlock::new(cuda, values.layout(), index_bound)?;
    block.upload(values)?;
    // Made before the capture: a graph may not copy from the host.
    let table = weight_table(&data.device())?;
    let (losses, graph) = cuda.capture(|| block.bind(true, || model.padded_step(data, padded, &table, fake_batch, keys)))?;
    // The capture recorded the step without running it.
    graph.replay()?;
    let rows = padded.rows();
    Ok(CapturedStep { block, graph, losses, rows, fake_batch, _weight_table: table, model_buffers: model.updated_buffers() })
}

impl<L> CapturedStep<L> {
    /// The losses of the step last run (the capture's run or the last replay).
    pub fn losses(&self) -> &L {
        &self.losses
    }

    /// The rows a batch is padded to: a larger batch cannot replay.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The model's next step on `data`'s records `batch` (at most [`CapturedStep::rows`] of them,
    /// from the data set the capture gathered from), replayed: its values planned with generator
    /// keys from `rng`, copied into the block, then one graph launch. Returns the step's losses,
    /// valid until the next replay. A batch that does not fit, or another model, is refused
    /// before anything moves.
    pub fn step<M: ReplayableStep<Losses = L>, R: Rng>(&mut self, model: &mut M, batch: &[u32], rng: &mut R) -> Result<&L> {
        if model.updated_buffers() != self.model_buffers {
            return Err(Error::Invalid(format!(
                "a captured {} replays only on the model it was captured from (and not after a restore)",
                M::STEP
            )));
        }
        let padded = PaddedBatch::new(batch, self.rows, self.fake_batch)?;
        let keys = GeneratorKeys::draw(rng);
        self.block.upload(model.step_values(&padded, &keys))?;
        self.graph.replay()?;
        model.count_replayed_step();
        Ok(&self.losses)
    }
}

/// A damage done to a step's plan, for [`assert_each_missing_value_is_refused`].
#[cfg(test)]
pub(crate) type PlanDamage = fn(&mut StepValues);

/// Test support: `make`'s step on `padded` refuses, by name, a plan with any one of `cases`'
/// damages (so a capture could never bake that value in), and runs under the undamaged plan.
#[cfg(test)]
pub(crate) fn assert_each_missing_value_is_refused<M: ReplayableStep>(
    make: impl Fn() -> M,
    data: &ResidentData,
    padded: &PaddedBatch,
    fake_batch: usize,
    cases: &[(&str, PlanDamage)],
) {
    let table = weight_table(&Device::Cpu).unwrap();
    let keys = GeneratorKeys::draw(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1));
    let full = make().step_values(padded, &keys);
    for (what, damage) in cases {
        let mut m = make();
        let mut plan = full.clone();
        damage(&mut plan);
        let err = step_values::bind(&plan, true, None, || m.padded_step(data, padded, &table, fake_batch, keys))
            .err()
            .unwrap_or_else(|| panic!("a plan without {what} was accepted"))
            .to_string();
        assert!(err.contains(what) && err.contains("would repeat it"), "{err}");
    }
    let mut m = make();
    assert!(step_values::bind(&full, true, None, || m.padded_step(data, padded, &table, fake_batch, keys)).is_ok());
}

/// Test support: what a refused capture of `model`'s next step leaves is put back. `step` takes
/// the model's next step eagerly and `count_replay` counts a replayed one; every counter must
/// advance by the step (else it counts something [`CaptureRollback::counters`] misses), a replay
/// must count the same, a refusal that advanced them must leave them as before, and the step must
/// update its buffers in place (none null, all distinct, the same after it).
#[cfg(test)]
pub(crate) fn assert_a_refusal_rolls_back<M: CaptureRollback>(model: &mut M, step: impl FnOnce(&mut M), count_replay: impl Fn(&mut M)) {
    let (before, buffers) = (model.counters(), model.updated_buffers());
    assert!(!buffers.is_empty() && buffers.iter().all(|p| !p.is_null()), "{buffers:?}");
    let distinct: std::collections::HashSet<_> = buffers.iter().collect();
    assert_eq!(distinct.len(), buffers.len(), "a buffer is listed twice");
    step(model);
    let after = model.counters();
    assert!(before.iter().zip(&after).all(|(b, a)| a > b), "a counter the step did not advance: {before:?} → {after:?}");
    assert_eq!(model.updated_buffers(), buffers, "the step replaced a tensor instead of updating it in place");
    model.set_counters(&before);
    assert_eq!(model.counters(), before);
    count_replay(model);
    assert_eq!(model.counters(), after, "a replay counts otherwise than the step");
    let refused = attempt_capture(model, |m| {
        count_replay(m);
        Err::<(), _>(Error::CaptureRefused("a test's refusal".into()))
    });
    assert!(matches!(refused, Ok(Attempt::Refused(ref why)) if why == "a test's refusal"));
    assert_eq!(model.counters(), after, "a refused capture left its counts");
}

/// Test support: `f` (a step under its binding) does nothing a CUDA graph capture refuses or
/// should not hold: no copy between host and device (a pageable copy, or a wait for the stream),
/// no release of a storage older than the step (a free of memory from before the capture), no
/// copy-on-write (an update in place that would land in a new buffer). Checked on any backend by
/// the census, so the CPU proves a step capturable before a GPU captures it.
#[cfg(test)]
pub(crate) fn assert_capturable<R>(what: &str, f: impl FnOnce() -> Result<R>) -> R {
    use crate::backend::census::{self, COPY_ON_WRITE, DEVICE_TO_HOST, HOST_TO_DEVICE, RELEASE_OF_OLDER};
    let (result, counts) = census::count_ops(f);
    let result = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    for refused in [HOST_TO_DEVICE, DEVICE_TO_HOST, RELEASE_OF_OLDER, COPY_ON_WRITE] {
        assert_eq!(counts.get(refused), None, "{what} does {refused}, which a capture refuses or should not hold: {counts:?}");
    }
    result
}

/// Test support: [`assert_capturable`] for `model`'s padded step on `batch` padded to `rows` rows,
/// after one eager step (which makes the optimizers' moments), as a capture records it.
#[cfg(test)]
pub(crate) fn assert_step_capturable<M: ReplayableStep>(model: &mut M, data: &ResidentData, batch: &[u32], rows: usize, fake_batch: usize) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    bound_step(model, data, batch, rows, fake_batch, &mut rng).unwrap();
    let padded = PaddedBatch::new(batch, rows, fake_batch).unwrap();
    let keys = GeneratorKeys::draw(&mut rng);
    let values = model.step_values(&padded, &keys);
    // Made before the capture, as `capture` makes it.
    let table = weight_table(&data.device()).unwrap();
    assert_capturable(M::STEP, || step_values::bind(&values, true, None, || model.padded_step(data, &padded, &table, fake_batch, keys)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters and one tensor, as a model's host state.
    struct Counted {
        counters: Vec<u64>,
        tensor: Tensor,
    }

    impl CaptureRollback for Counted {
        fn counters(&self) -> Vec<u64> {
            self.counters.clone()
        }
        fn set_counters(&mut self, counters: &[u64]) {
            self.counters = counters.to_vec();
        }
        fn updated_buffers(&self) -> Vec<*const Storage> {
            storages([&self.tensor])
        }
    }

    /// A refusal puts back what the attempt counted; a capture keeps it; any other error passes
    /// through; a refusal after a tensor was replaced (not updated in place) cannot be undone.
    #[test]
    fn a_refused_capture_puts_the_counters_back_and_other_errors_pass_through() {
        let fresh = || Counted { counters: vec![4, 9], tensor: Tensor::zeros(&[2], &Device::Cpu).unwrap() };
        let refuse = || Err::<u8, _>(Error::CaptureRefused("ending the capture: not permitted".into()));
        let mut s = fresh();
        let refused = attempt_capture(&mut s, |s| {
            s.counters = vec![5, 10];
            refuse()
        });
        assert!(matches!(refused, Ok(Attempt::Refused(ref why)) if why == "ending the capture: not permitted"));
        assert_eq!(s.counters, [4, 9]);
        let captured = attempt_capture(&mut s, |s| {
            s.counters = vec![5, 10];
            Ok(7)
        });
        assert!(matches!(captured, Ok(Attempt::Captured(7))));
        assert_eq!(s.counters, [5, 10]);
        for other in [Error::Invalid("a plan without a noise step".into()), Error::cuda("launching", "out of memory")] {
            let what = other.to_string();
            let err = attempt_capture(&mut fresh(), |_| Err::<u8, _>(other)).err().unwrap().to_string();
            assert_eq!(err, what);
        }
        let mut s = fresh();
        let err = attempt_capture(&mut s, |s| {
            s.tensor = Tensor::zeros(&[2], &Device::Cpu)?;
            refuse()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("replaced tensors it should have updated in place") && err.contains("not permitted"), "{err}");
    }

    #[test]
    fn a_batch_is_padded_with_record_zero_and_weight_rows_of_one() {
        let p = PaddedBatch::new(&[7, 3], 4, 2).unwrap();
        assert_eq!((p.indices.as_slice(), p.weight_rows.as_slice()), (&[7, 3, 0, 0][..], &[0, 0, 1, 1, 0, 0][..]));
        let full = PaddedBatch::new(&[7, 3], 2, 1).unwrap();
        assert_eq!((full.indices.as_slice(), full.weight_rows.as_slice()), (&[7, 3][..], &[0, 0, 0][..]));
        let err = PaddedBatch::new(&[1, 2, 3], 2, 0).err().unwrap().to_string();
        assert!(err.contains("does not fit a padded step of 2 rows"), "{err}");
    }

    #[test]
    fn the_weighted_mean_counts_the_examples_that_weigh_one() {
        let d = Device::Cpu;
        let x = Tensor::from_vec(vec![1.0, 2.0, 10.0, 3.0], &[1, 4, 1], &d).unwrap();
        let w = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0], &[1, 4], &d).unwrap();
        assert_eq!(weighted_mean(&x, &w).unwrap().item().unwrap(), 2.0);
        let none = Tensor::from_vec(vec![0.0; 4], &[1, 4], &d).unwrap();
        assert_eq!(weighted_mean(&x, &none).unwrap().item().unwrap(), 0.0);
        for (count, floor) in [(0.0, 1.0), (1.0, 1.0), (5.0, 5.0)] {
            let c = Tensor::from_vec(vec![count], &[], &d).unwrap();
            assert_eq!(at_least_one(&c).unwrap().item().unwrap(), floor);
        }
    }
}
