//! Phase 2's iteration replayed from a CUDA graph. The selected discriminator changes every
//! iteration and a graph replays the buffers it captured, so the iteration runs on a working
//! critic: buffers of its own that D_j's weights, spectral-norm vectors and Adam moments are
//! copied into before the iteration and back out of after it (on the device when the critics are
//! resident there, from and to the host when they are paged). G, its Adam state and G_s are
//! updated in place, as in any iteration.
//!
//! A graph has fixed shapes and D_j's batches do not: a slice of 60 in batches of 32 gives 32, 28,
//! 32, 28, 32 in one iteration and 28, 32, 28, 32, 28 in D_j's next. One graph is captured per
//! pattern of batch sizes (at most `critic_steps + 1` patterns: where the slice's partial batch
//! falls, if it does). Each iteration plans its values on the host (its batches, its draws' keys,
//! its noise step, the EMA's decay, D_j's and G's bias corrections), copies them into the graph's
//! step block and replays; the host's work is the plan, the critic's copies, one upload and one
//! launch.
//!
//! A capture finds each per-step value by value, so it waits for an iteration whose values of one
//! kind all differ (early on, G's Adam step count can equal one of D_j's); until then, and on the
//! CPU, iterations run eagerly under a strict binding of their values, which refuses any value the
//! plan lacks: what proves on the CPU that a replay repeats no noise step.
use rand_chacha::ChaCha20Rng;

use super::{CriticState, IterationPlan, LabelledImages, PhaseTwoStep, PrivateLosses};
use crate::backend::cuda::{CapturedGraph, StepBlock};
use crate::backend::step_values::{self, StepValues};
use crate::dp::NoiseKey;
use crate::error::{Error, Result};
use crate::models::gswgan::Discriminator;
use crate::nn::Module;
use crate::optim::Adam;
use crate::tensor::{Device, Storage, Tensor};
use crate::train::captured::{attempt_capture, storages, Attempt, CaptureRollback};

/// The most iteration graphs one run captures (one per pattern of batch sizes; a run with more
/// patterns takes the others eagerly).
pub const MAX_ITERATION_GRAPHS: usize = 8;

/// A discriminator and Adam state in buffers of their own, which the selected critic is copied
/// into and out of.
pub struct WorkingCritic {
    pub discriminator: Discriminator,
    pub optimizer: Adam,
}

impl WorkingCritic {
    /// Buffers on `device` shaped as `like`'s, with Adam moments (zero) made up front: a graph
    /// captured later must not make them.
    pub fn new(like: &CriticState, device: &Device) -> Result<Self> {
        let mut discriminator = like.discriminator.clone();
        for entry in discriminator.entries_mut() {
            *entry.tensor = entry.tensor.copy_on(device)?;
        }
        let zeros = |p: &&Tensor| Tensor::zeros(p.shape(), device);
        let params = discriminator.params();
        let (m, v) = (params.iter().map(zeros).collect::<Result<Vec<_>>>()?, params.iter().map(zeros).collect::<Result<Vec<_>>>()?);
        let mut optimizer = Adam::new(like.optimizer.hp);
        optimizer.restore(m, v, 0)?;
        Ok(WorkingCritic { discriminator, optimizer })
    }

    /// Copies `critic`'s state in (its tensors and Adam state; zero moments if it has taken no
    /// step).
    pub fn load(&mut self, critic: &CriticState) -> Result<()> {
        copy_entries(&mut self.discriminator, &critic.discriminator)?;
        let device = self.device();
        self.optimizer.copy_state_from(&critic.optimizer, &device)
    }

    /// Copies the state back out into `critic`, where it lives.
    pub fn store(&self, critic: &mut CriticState) -> Result<()> {
        copy_entries(&mut critic.discriminator, &self.discriminator)?;
        let device = critic.discriminator.conv1.bias.device();
        critic.optimizer.copy_state_from(&self.optimizer, &device)
    }

    pub fn device(&self) -> Device {
        self.discriminator.conv1.bias.device()
    }

    /// The storage of every tensor the iteration updates in place: a replay writes these buffers.
    pub fn buffers(&self) -> Vec<*const Storage> {
        let (m, v) = self.optimizer.moments();
        let entries = self.discriminator.entries();
        entries.iter().map(|e| e.tensor).chain(m).chain(v).map(|t| t.storage() as *const Storage).collect()
    }
}

fn copy_entries(dst: &mut Discriminator, src: &Discriminator) -> Result<()> {
    let (targets, sources) = (dst.entries_mut(), src.entries());
    if targets.len() != sources.len() {
        return Err(Error::Invalid(format!("copying a critic of {} tensors into one of {}", sources.len(), targets.len())));
    }
    for (target, source) in targets.into_iter().zip(sources) {
        target.tensor.copy_from(source.tensor)?;
    }
    Ok(())
}

/// Whether an iteration may be captured: its values of one kind all differ (a capture finds each
/// by value), G's Adam moments exist (its first step makes them, and a graph would own and reset
/// them) and the run has fewer than [`MAX_ITERATION_GRAPHS`] graphs.
fn may_capture(values_tell_apart: bool, generator_steps: u64, graphs: usize) -> bool {
    values_tell_apart && generator_steps > 0 && graphs < MAX_ITERATION_GRAPHS
}

/// How a run's iterations were taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterationCounts {
    /// Eagerly, unbound (values of one kind coincided, so no capture could tell them apart).
    pub eager: u64,
    /// Eagerly under a strict binding of their values (on the CPU, or past the graphs' limit).
    pub bound: u64,
    /// Captured into a new graph (and run once).
    pub captured: u64,
    /// Replayed from a graph.
    pub replayed: u64,
}

/// Phase 2's iterations on a working critic, replayed from graphs once captured.
pub struct GraphedPhaseTwo {
    working: WorkingCritic,
    graphs: Vec<CapturedIteration>,
    counts: IterationCounts,
    /// Why the driver refused a capture, if it did: the iterations that no graph replays are then
    /// taken eagerly, with no further capture.
    refusal: Option<String>,
}

/// One pattern of batch sizes' graph, the block its replays read their values from, and what
/// identifies the generator it updates.
struct CapturedIteration {
    sizes: Vec<usize>,
    block: StepBlock,
    graph: CapturedGraph,
    /// Rewritten by every replay: copied out after each.
    losses: PrivateLosses,
    /// The storage of G's tensors, its Adam moments and G_s's.
    generator: Vec<*const Storage>,
}

/// An iteration's state on the host, as a refused capture leaves it to put back: G's and the
/// working critic's Adam step counts, and every tensor the iteration updates in place.
struct IterationState<'s, 'a> {
    step: &'s mut PhaseTwoStep<'a>,
    working: &'s mut WorkingCritic,
}

/// The storage of G's tensors, its Adam moments and G_s's: what a replay updates on the
/// generator's side.
fn generator_buffers(step: &PhaseTwoStep<'_>) -> Vec<*const Storage> {
    let (m, v) = step.optimizer.moments();
    let (g, ema) = (step.generator.entries(), step.ema.entries());
    storages(g.into_iter().chain(ema).map(|e| e.tensor).chain(m).chain(v))
}

impl IterationState<'_, '_> {
    /// Counts, on the host, an iteration a replay took: D_j's Adam steps and G's.
    fn count_replayed(&mut self, critic_steps: usize) {
        for _ in 0..critic_steps {
            self.working.optimizer.count_replayed_step();
        }
        self.step.optimizer.count_replayed_step();
    }
}

impl CaptureRollback for IterationState<'_, '_> {
    fn counters(&self) -> Vec<u64> {
        vec![self.step.optimizer.steps(), self.working.optimizer.steps()]
    }

    fn set_counters(&mut self, counters: &[u64]) {
        self.step.optimizer.set_steps(counters[0]);
        self.working.optimizer.set_steps(counters[1]);
    }

    fn updated_buffers(&self) -> Vec<*const Storage> {
        let mut buffers = self.working.buffers();
        buffers.extend(generator_buffers(self.step));
        buffers
    }
}

impl GraphedPhaseTwo {
    /// A working critic on `device` shaped as `like` (any of the run's critics).
    pub fn new(like: &CriticState, device: &Device) -> Result<Self> {
        let working = WorkingCritic::new(like, device)?;
        Ok(GraphedPhaseTwo { working, graphs: Vec::new(), counts: IterationCounts::default(), refusal: None })
    }

    pub fn counts(&self) -> IterationCounts {
        self.counts
    }

    /// Why the driver refused to capture an iteration, if it did.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// The graphs captured so far (one per pattern of batch sizes).
    pub fn graphs(&self) -> usize {
        self.graphs.len()
    }

    /// Iteration `t` with `critic` selected: [`PhaseTwoStep::run`]'s iteration, its plan drawn the
    /// same way, run on the working critic (replayed, captured, or eagerly; see the module doc),
    /// then copied back into `critic`. The losses are in storage of their own.
    pub fn iterate(
        &mut self,
        step: &mut PhaseTwoStep<'_>,
        critic: &mut CriticState,
        data: &LabelledImages,
        draws: &mut ChaCha20Rng,
        key: &NoiseKey,
        t: u64,
    ) -> Result<PrivateLosses> {
        let plan = IterationPlan::draw(&mut critic.batches, draws, step.config.critic_steps)?;
        self.working.load(critic)?;
        let values = step.step_values(&plan, &self.working.optimizer, key, t);
        let losses = self.run_planned(step, &plan, values, data, key, t)?;
        self.working.store(critic)?;
        Ok(losses)
    }

    fn run_planned(
        &mut self,
        step: &mut PhaseTwoStep<'_>,
        plan: &IterationPlan,
        values: StepValues,
        data: &LabelledImages,
        key: &NoiseKey,
        t: u64,
    ) -> Result<PrivateLosses> {
        let sizes = plan.batch_sizes();
        if let Some(captured) = self.graphs.iter_mut().find(|g| g.sizes == sizes) {
            if captured.generator != generator_buffers(step) {
                return Err(Error::Invalid("a captured phase-2 iteration replays only on the generator it was captured from".into()));
            }
            captured.block.upload(values)?;
            captured.graph.replay()?;
            IterationState { step, working: &mut self.working }.count_replayed(sizes.len());
            self.counts.replayed += 1;
            return captured.losses.copied();
        }
        let unambiguous = values.check().is_ok();
        let capturable = self.refusal.is_none() && may_capture(unambiguous, step.optimizer.steps(), self.graphs.len());
        if let (Device::Cuda(cuda), true) = (self.working.device(), capturable) {
            let index_bound = u32::try_from(data.len()).map_err(|_| Error::Invalid("a training set past 2³² records".into()))?;
            let mut block = StepBlock::new(&cuda, values.layout(), index_bound)?;
            block.upload(values.clone())?;
            // Taken before the capture: a replay must find G's buffers as they were.
            let generator = generator_buffers(step);
            let mut state = IterationState { step, working: &mut self.working };
            let attempt = attempt_capture(&mut state, |s| {
                let WorkingCritic { discriminator, optimizer } = &mut *s.working;
                cuda.capture(|| block.bind(true, || s.step.execute(discriminator, optimizer, plan, data, key, t)))
            })?;
            match attempt {
                Attempt::Captured((losses, graph)) => {
                    // The capture recorded the iteration without running it.
                    graph.replay()?;
                    self.counts.captured += 1;
                    let copied = losses.copied()?;
                    self.graphs.push(CapturedIteration { sizes, block, graph, losses, generator });
                    return Ok(copied);
                }
                Attempt::Refused(reason) => self.refusal = Some(reason),
            }
        }
        let WorkingCritic { discriminator, optimizer } = &mut self.working;
        if unambiguous {
            self.counts.bound += 1;
            step_values::bind(&values, true, None, || step.execute(discriminator, optimizer, plan, data, key, t))
        } else {
            self.counts.eager += 1;
            step.execute(discriminator, optimizer, plan, data, key, t)
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::dp::{GsWganSanitizer, NoiseMode, NoiseSource};
    use crate::models::gswgan::{Generator, GeneratorArch, PIXELS};
    use crate::train::gswgan::{GsWganConfig, SliceBatches};

    const CPU: Device = Device::Cpu;

    /// A tiny phase 2: G (DCGAN, base 1) with G_s and Adam, three width-2 critics on slices of 6
    /// (batches of 4: three critic steps give sizes 4, 2, 4 or 2, 4, 2), 18 random records.
    struct Setup {
        generator: Generator,
        ema: Generator,
        optimizer: Adam,
        critics: Vec<CriticState>,
    }

    impl Setup {
        /// The iteration's step over this G, and the critics.
        fn split<'a>(&'a mut self, sanitizer: &'a GsWganSanitizer, config: &'a GsWganConfig) -> (PhaseTwoStep<'a>, &'a mut [CriticState]) {
            let step =
                PhaseTwoStep { generator: &mut self.generator, optimizer: &mut self.optimizer, ema: &mut self.ema, sanitizer, config };
            (step, &mut self.critics)
        }
    }

    fn config() -> GsWganConfig {
        GsWganConfig { critic_steps: 3, batch_size: 4, ..GsWganConfig::default() }
    }

    fn data() -> LabelledImages {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let pixels = (0..18 * PIXELS).map(|_| rng.random::<f32>()).collect();
        LabelledImages::new(pixels, (0..18).map(|_| rng.random_range(0..10)).collect()).unwrap()
    }

    fn setup() -> Setup {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let generator = Generator::new(GeneratorArch::Dcgan, 1, 1, &mut rng, &CPU).unwrap();
        let critics = (0..3)
            .map(|j| {
                let d = Discriminator::new(1, 2, &mut rng, &CPU).unwrap();
                CriticState::new(d, (6 * j..6 * j + 6).collect(), ChaCha20Rng::seed_from_u64(j as u64), &config()).unwrap()
            })
            .collect();
        Setup { ema: generator.clone(), generator, optimizer: Adam::new(config().adam), critics }
    }

    fn sanitizer() -> GsWganSanitizer {
        GsWganSanitizer::new(1.0, 1.07).unwrap()
    }

    /// The critics chosen at iterations 0, 1, ...: repeats and returns, so that D_j's Adam state
    /// and batch position carry across iterations.
    const CHOICES: [usize; 9] = [0, 1, 0, 2, 2, 1, 0, 2, 1];

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec().unwrap().into_iter().map(f32::to_bits).collect()
    }

    fn assert_same_module<M: Module>(what: &str, a: &M, b: &M) {
        for ((name, x), (_, y)) in a.named_tensors().into_iter().zip(b.named_tensors()) {
            assert_eq!(bits(x), bits(y), "{what} {name}");
        }
    }

    fn assert_same_adam(what: &str, a: &Adam, b: &Adam) {
        assert_eq!(a.steps(), b.steps(), "{what}: steps");
        let ((am, av), (bm, bv)) = (a.moments(), b.moments());
        assert_eq!(am.len(), bm.len(), "{what}: moments");
        for (x, y) in am.iter().zip(bm).chain(av.iter().zip(bv)) {
            assert_eq!(bits(x), bits(y), "{what}: a moment");
        }
    }

    /// Iterations on the working critic (bound to their plans where the values tell apart, else
    /// eagerly) equal [`PhaseTwoStep::run`] on the selected critics bit for bit: losses, G, G_s,
    /// G's Adam state and every critic's tensors, Adam state and batch position. And the working
    /// critic's, G's and G_s's buffers stay the ones a graph would have captured.
    #[test]
    fn iterations_on_the_working_critic_equal_the_eager_iterations() {
        let (data, config, sanitizer) = (data(), config(), sanitizer());
        let noise = NoiseSource::from_seed(3, NoiseMode::Fast);
        let (mut eager, mut graphed) = (setup(), setup());
        let mut phase_two = GraphedPhaseTwo::new(&graphed.critics[0], &CPU).unwrap();
        let working_buffers = phase_two.working.buffers();
        let d = &graphed.critics[0].discriminator;
        assert_eq!(working_buffers.len(), d.entries().len() + 2 * d.params().len(), "every tensor, then both moments of every parameter");
        assert!(working_buffers.iter().all(|b| !b.is_null()));
        for (t, &j) in CHOICES.iter().enumerate() {
            let t = t as u64;
            let key = noise.key_at(t, 0);
            let draws = || ChaCha20Rng::seed_from_u64(100 + t);
            let (mut step, critics) = eager.split(&sanitizer, &config);
            let want = step.run(&mut critics[j], &data, &mut draws(), &key, t).unwrap();
            let g_buffers: Vec<*const Storage> =
                graphed.generator.entries().iter().chain(&graphed.ema.entries()).map(|e| e.tensor.storage() as *const Storage).collect();
            let (mut step, critics) = graphed.split(&sanitizer, &config);
            let got = phase_two.iterate(&mut step, &mut critics[j], &data, &mut draws(), &key, t).unwrap();
            for (what, a, b) in [
                ("critic", &got.critic, &want.critic),
                ("generator", &got.generator, &want.generator),
                ("flag", &got.nonfinite, &want.nonfinite),
            ] {
                assert_eq!(bits(a), bits(b), "iteration {t}: {what} loss");
            }
            assert_eq!(got.batch_size, want.batch_size);
            let after: Vec<*const Storage> =
                graphed.generator.entries().iter().chain(&graphed.ema.entries()).map(|e| e.tensor.storage() as *const Storage).collect();
            // G_s starts as a clone sharing G's storage, which the first update separates; from
            // then on (when a capture can happen) both are updated in place.
            if t > 0 {
                assert_eq!(after, g_buffers, "iteration {t}: G and G_s are updated in place");
            }
        }
        assert_eq!(phase_two.working.buffers(), working_buffers, "the working critic is updated in place");
        assert_same_module("G", &graphed.generator, &eager.generator);
        assert_same_module("G_s", &graphed.ema, &eager.ema);
        assert_same_adam("G's Adam", &graphed.optimizer, &eager.optimizer);
        for (j, (a, b)) in graphed.critics.iter().zip(&eager.critics).enumerate() {
            assert_same_module(&format!("critic {j}"), &a.discriminator, &b.discriminator);
            assert_same_adam(&format!("critic {j}'s Adam"), &a.optimizer, &b.optimizer);
            assert_eq!((a.batches.passes(), a.batches.position()), (b.batches.passes(), b.batches.position()), "critic {j}'s batches");
        }
        // Both ways were taken: G's step count equals a critic's early on (ambiguous, eager), not
        // later (bound, as a capture would be).
        let counts = phase_two.counts();
        assert!(counts.eager > 0 && counts.bound > 0, "{counts:?}");
        assert_eq!(counts.eager + counts.bound, CHOICES.len() as u64);
        assert_eq!((counts.captured, counts.replayed, phase_two.graphs()), (0, 0, 0), "no graph on the CPU");
    }

    /// The iteration refuses, by name, a plan missing any one of its values: a capture could never
    /// bake one in (a noise step baked in would be noise reused).
    #[test]
    fn an_iteration_plan_missing_a_value_is_refused_by_name() {
        let (data, config, sanitizer) = (data(), config(), sanitizer());
        let mut s = setup();
        let key = NoiseSource::from_seed(3, NoiseMode::Fast).key_at(9, 0);
        // G has taken 20 steps, so its corrections differ from the fresh critic's.
        let warm_adam = |g: &Generator| {
            let mut adam = Adam::new(config.adam);
            let zeros: Vec<Tensor> = g.params().iter().map(|p| Tensor::zeros(p.shape(), &CPU).unwrap()).collect();
            adam.restore(zeros.clone(), zeros, 20).unwrap();
            adam
        };
        let mut warm = warm_adam(&s.generator);
        let plan = IterationPlan::draw(&mut s.critics[0].batches.clone(), &mut ChaCha20Rng::seed_from_u64(1), 3).unwrap();
        let step =
            PhaseTwoStep { generator: &mut s.generator, optimizer: &mut warm, ema: &mut s.ema, sanitizer: &sanitizer, config: &config };
        let full = step.step_values(&plan, &s.critics[0].optimizer, &key, 9);
        type Damage = fn(&mut StepValues);
        let cases: [(&str, Damage); 7] = [
            ("a noise key's step 9", |v| v.noise_step = Some(10)),
            ("a moving average's decay", |v| v.ema_decay = None),
            ("Adam's bias corrections at t = 1", |v| {
                v.adam_corrections.remove(0);
            }),
            ("Adam's bias corrections at t = 3", |v| {
                v.adam_corrections.remove(2);
            }),
            ("Adam's bias corrections at t = 21", |v| v.adam_corrections.truncate(3)),
            ("the keys of a public draw", |v| v.draw_keys[4][0] ^= 1),
            ("a gather of 4 rows", |v| v.batch_indices[2][1] = 17),
        ];
        for (what, damage) in cases {
            let mut s = setup();
            let mut g_opt = warm_adam(&s.generator);
            let mut plan_values = full.clone();
            damage(&mut plan_values);
            let mut step = PhaseTwoStep {
                generator: &mut s.generator,
                optimizer: &mut g_opt,
                ema: &mut s.ema,
                sanitizer: &sanitizer,
                config: &config,
            };
            let critic = &mut s.critics[0];
            let err = step_values::bind(&plan_values, true, None, || {
                step.execute(&mut critic.discriminator, &mut critic.optimizer, &plan, &data, &key, 9)
            })
            .err()
            .unwrap_or_else(|| panic!("a plan without {what} was accepted"))
            .to_string();
            assert!(err.contains(what) && err.contains("would repeat it"), "{what}: {err}");
        }
        let mut s = setup();
        let mut g_opt = warm_adam(&s.generator);
        let mut step =
            PhaseTwoStep { generator: &mut s.generator, optimizer: &mut g_opt, ema: &mut s.ema, sanitizer: &sanitizer, config: &config };
        let critic = &mut s.critics[0];
        step_values::bind(&full, true, None, || step.execute(&mut critic.discriminator, &mut critic.optimizer, &plan, &data, &key, 9))
            .unwrap();
    }

    /// An iteration on the working critic, bound to its plan as a capture records it, does nothing
    /// a capture refuses (no host copy, no release of older memory, no copy-on-write). And what a
    /// refused capture of the next one leaves is put back: G's and the working critic's Adam
    /// counts; the iteration updates G, G_s, G's moments and the working critic in place.
    #[test]
    fn an_iteration_on_the_working_critic_is_capturable_and_a_refusal_rolls_back() {
        let (data, config, sanitizer) = (data(), config(), sanitizer());
        let noise = NoiseSource::from_seed(3, NoiseMode::Fast);
        let mut s = setup();
        let mut phase_two = GraphedPhaseTwo::new(&s.critics[0], &CPU).unwrap();
        let (mut step, critics) = s.split(&sanitizer, &config);
        // Three iterations first: G's moments and G_s's own storage come with G's first step, and
        // G's next corrections (t = 4) then differ from a fresh critic's (t = 1, 2, 3).
        for t in 0..3 {
            let draws = &mut ChaCha20Rng::seed_from_u64(t);
            phase_two.iterate(&mut step, &mut critics[0], &data, draws, &noise.key_at(t, 0), t).unwrap();
        }
        let plan = IterationPlan::draw(&mut critics[1].batches, &mut ChaCha20Rng::seed_from_u64(3), config.critic_steps).unwrap();
        phase_two.working.load(&critics[1]).unwrap();
        let key = noise.key_at(3, 0);
        let values = step.step_values(&plan, &phase_two.working.optimizer, &key, 3);
        let WorkingCritic { discriminator, optimizer } = &mut phase_two.working;
        crate::train::captured::assert_capturable("a phase-2 iteration", || {
            step_values::bind(&values, true, None, || step.execute(discriminator, optimizer, &plan, &data, &key, 3))
        });

        let plan = IterationPlan::draw(&mut critics[1].batches, &mut ChaCha20Rng::seed_from_u64(4), config.critic_steps).unwrap();
        let mut state = IterationState { step: &mut step, working: &mut phase_two.working };
        assert_eq!(state.counters(), [state.step.optimizer.steps(), state.working.optimizer.steps()]);
        let g = state.step.generator.params().len();
        let expected = state.working.buffers().len() + state.step.generator.entries().len() + state.step.ema.entries().len() + 2 * g;
        assert_eq!(state.updated_buffers().len(), expected, "the working critic's, G's, G_s's and G's moments");
        let iterate = |s: &mut IterationState<'_, '_>| {
            let WorkingCritic { discriminator, optimizer } = &mut *s.working;
            s.step.execute(discriminator, optimizer, &plan, &data, &noise.key_at(4, 0), 4).unwrap();
        };
        crate::train::captured::assert_a_refusal_rolls_back(&mut state, iterate, |s| s.count_replayed(config.critic_steps));
    }

    #[test]
    fn an_iteration_is_captured_only_when_its_values_tell_apart_after_g_has_stepped_below_the_limit() {
        assert!(may_capture(true, 1, 0));
        assert!(may_capture(true, 7, MAX_ITERATION_GRAPHS - 1));
        assert!(!may_capture(false, 7, 0), "values a capture could not tell apart");
        assert!(!may_capture(true, 0, 0), "G's moments not made yet");
        assert!(!may_capture(true, 7, MAX_ITERATION_GRAPHS), "the graphs' limit");
    }

    /// The plan draws what the eager iteration drew, in its order: z then α per critic step, then
    /// the labels and z of the private step; the batches from the critic's slice.
    #[test]
    fn a_plan_holds_the_iterations_batches_and_keys_in_draw_order() {
        let mut batches = SliceBatches::new((0..6).collect(), 4, ChaCha20Rng::seed_from_u64(2)).unwrap();
        let mut reference = batches.clone();
        let mut draws = ChaCha20Rng::seed_from_u64(8);
        let mut same = draws.clone();
        let plan = IterationPlan::draw(&mut batches, &mut draws, 3).unwrap();
        assert_eq!(plan.batches, (0..3).map(|_| reference.next_batch()).collect::<Vec<_>>());
        assert_eq!(plan.batch_sizes(), [4, 2, 4]);
        assert_eq!(plan.generator_batch(), 4);
        let words: Vec<[u32; 2]> = (0..8).map(|_| NoiseKey::public(&mut same)).map(|k| [k.key[0], k.key[1]]).collect();
        assert_eq!(plan.draw_words(), words);
        assert!(IterationPlan::draw(&mut batches, &mut draws, 0).is_err());
    }
}
