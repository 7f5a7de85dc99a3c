//! What the DP-SGD runs (DP-CGAN, DPSGD-GAN) share around their steps: planning σ and the budget
//! before anything is written, the checks a resumed checkpoint must pass, and the training loop in
//! which the accountant governs (a step is recorded before it runs, and a step that would pass
//! the ε budget is never taken: the run stops there with a checkpoint).
use std::path::Path;
use std::time::Instant;

use crate::data::dataset::{Dataset, Split};
use crate::dp::rounding::round_up_to_f32;
use crate::dp::{FiniteChecks, KeySource, NoiseMode, RunKey};
use crate::error::{Error, Result};
use crate::privacy::accountant::{Accountant, Mechanism};
use crate::privacy::calibrate::calibrate_noise_multiplier;
use crate::privacy::conversion::{Conversion, Guarantee};
use crate::privacy::rdp::Orders;
use crate::tensor::Tensor;
use crate::train::dpcgan::run::DataRecord;
use crate::train::progress::Progress;
use crate::train::run_dir::{file_sha256, MetricsLog, RunDir, CHECKPOINT, METRICS};
use crate::train::{check_delta_flag, check_positive, Stop};

/// The privacy settings a DP-SGD run asks for, before planning.
#[derive(Clone, Copy, Debug)]
pub struct PrivacyRequest {
    pub batch_size: usize,
    pub steps: u64,
    pub clip: f32,
    /// `None`: calibrated to `target_epsilon`.
    pub noise_multiplier: Option<f32>,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub orders: Orders,
    pub conversion: Conversion,
}

/// What planning decided: q = B/N and σ (calibrated or given).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrivacyPlan {
    pub sample_rate: f64,
    pub noise_multiplier: f32,
    pub calibrated: bool,
}

impl PrivacyRequest {
    /// Checks every number (NaN and negative values included) against the data, calibrating σ if
    /// asked, and that the budget allows the first step. Nothing is written: an impossible setting
    /// fails here, before any file exists.
    pub fn plan(&self, records: usize, every: [(&str, u64); 3]) -> Result<PrivacyPlan> {
        if self.batch_size == 0 || self.batch_size > records {
            return Err(Error::Invalid(format!(
                "--batch-size must be in 1..={records} (the training set's size), got {}",
                self.batch_size
            )));
        }
        for (name, every) in every {
            if every == 0 {
                return Err(Error::Invalid(format!("{name} must be at least 1")));
            }
        }
        check_positive("--clip", self.clip as f64)?;
        if let Some(sigma) = self.noise_multiplier {
            check_positive("--noise-multiplier", sigma as f64)?;
        }
        if let Some(target) = self.target_epsilon {
            check_positive("--target-epsilon", target)?;
        }
        check_delta_flag(self.delta)?;
        if self.steps == 0 {
            return Err(Error::Invalid("the run must have at least one step".into()));
        }
        let sample_rate = self.batch_size as f64 / records as f64;
        let (noise_multiplier, calibrated) = match (self.noise_multiplier, self.target_epsilon) {
            (Some(sigma), _) => (sigma, false),
            (None, Some(target)) => {
                let sigma =
                    calibrate_noise_multiplier(sample_rate, self.steps, self.delta, target, &self.orders.values(), self.conversion)?;
                (round_up_to_f32(sigma), true)
            }
            (None, None) => return Err(Error::Invalid("give --noise-multiplier or --target-epsilon".into())),
        };
        let plan = PrivacyPlan { sample_rate, noise_multiplier, calibrated };
        // The budget must allow the first step at least; the whole plan's ε is reported.
        Accountant::new(self.orders, self.conversion, self.delta, self.target_epsilon)?.check_budget(plan.mechanism(), 1)?;
        Ok(plan)
    }
}

impl PrivacyPlan {
    /// The privacy cost of one step: the Poisson-subsampled Gaussian at q and σ.
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::SubsampledGaussian { sample_rate: self.sample_rate, noise_multiplier: self.noise_multiplier as f64 }
    }
}

/// What a DP-SGD run's config.json records of its privacy, the same for DP-CGAN and DPSGD-GAN:
/// the run, its resume and `dpgan report` read it through this one view.
#[derive(Clone, Copy, Debug)]
pub struct RecordedPrivacy {
    /// Steps planned: each one step of the accountant.
    pub steps: u64,
    pub batch_size: usize,
    pub plan: PrivacyPlan,
    pub clip: f32,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub orders: Orders,
    pub conversion: Conversion,
    pub noise: NoiseMode,
    pub noise_key: KeySource,
}

impl RecordedPrivacy {
    /// The privacy cost of one step.
    pub fn mechanism(&self) -> Mechanism {
        self.plan.mechanism()
    }

    /// A fresh accountant for the run, with its budget.
    pub fn accountant(&self) -> Result<Accountant> {
        Accountant::new(self.orders, self.conversion, self.delta, self.target_epsilon)
    }

    /// The accountant after `steps` steps: what a resumed checkpoint's must equal.
    pub fn accountant_after(&self, steps: u64) -> Result<Accountant> {
        self.accountant()?.after(self.mechanism(), steps)
    }

    /// The ε of the whole plan (every step taken), whatever the budget.
    pub fn planned_epsilon(&self) -> Result<Guarantee> {
        Accountant::new(self.orders, self.conversion, self.delta, None)?.try_step(self.mechanism(), self.steps)
    }

    /// The loop's settings; `every` is (log, sample, checkpoint).
    pub fn loop_settings(&self, every: (u64, u64, u64)) -> LoopSettings {
        let (log_every, sample_every, checkpoint_every) = every;
        LoopSettings {
            steps: self.steps,
            log_every,
            sample_every,
            checkpoint_every,
            sample_rate: self.plan.sample_rate,
            delta: self.delta,
            conversion: self.conversion,
            noise_key: self.noise_key,
            mechanism: self.mechanism(),
        }
    }
}

/// The training set a run recorded, loaded and checked to be the same files (SHA-256).
pub fn load_recorded_data(record: &DataRecord) -> Result<Dataset> {
    let data = Dataset::load(&record.dir, Split::Train)?;
    let (images, labels) = data.files();
    for (recorded, path) in [(&record.images, images), (&record.labels, labels)] {
        if file_sha256(path)? != recorded.sha256 {
            return Err(Error::file(
                path,
                "differs from the file this run trained on (SHA-256 mismatch): resuming would not continue the same run",
            ));
        }
    }
    Ok(data)
}

/// What a resumed checkpoint must show: its format and algorithm, a key of the kind config.json
/// records, and an accountant that is exactly `expected` (rebuilt from config.json's q and σ after
/// the steps taken), never taken on trust.
pub struct CheckpointCheck<'a> {
    pub dir: &'a RunDir,
    pub format: (u32, &'a str),
    pub found: (u32, &'a str),
    pub noise_key: KeySource,
    pub seed: u64,
    pub key: &'a RunKey,
    pub expected: &'a Accountant,
    pub recorded: &'a Accountant,
    pub steps: u64,
    pub plan: PrivacyPlan,
}

impl CheckpointCheck<'_> {
    pub fn verify(&self) -> Result<()> {
        let checkpoint = self.dir.path(CHECKPOINT);
        let ((format, algorithm), (found_format, found_algorithm)) = (self.format, self.found);
        if found_format != format || found_algorithm != algorithm {
            return Err(Error::file(
                &checkpoint,
                format!("checkpoint format {found_format} of {found_algorithm} is not this version's ({format} of {algorithm})"),
            ));
        }
        self.noise_key.check(self.key, self.seed).map_err(|e| Error::file(&checkpoint, e.to_string()))?;
        if self.expected != self.recorded {
            return Err(Error::file(
                &checkpoint,
                format!(
                    "its accountant is not {} steps of q = {}, σ = {} with config.json's δ and budget: refusing to continue a run whose \
                     privacy record does not match its settings",
                    self.steps, self.plan.sample_rate, self.plan.noise_multiplier
                ),
            ));
        }
        Ok(())
    }
}

/// The new total of a resumed run: `flag`'s value if given, never below the steps taken.
pub fn resumed_total(flag: &str, new_total: Option<u64>, taken: u64, root: &Path) -> Result<Option<u64>> {
    match new_total {
        Some(total) if total < taken => Err(Error::Invalid(format!(
            "{flag} {total} is below the {taken} steps {} has taken; a run cannot be shortened (nothing was changed)",
            root.display()
        ))),
        other => Ok(other),
    }
}

/// The loop's view of a run's settings.
#[derive(Clone, Copy, Debug)]
pub struct LoopSettings {
    pub steps: u64,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub sample_rate: f64,
    pub delta: f64,
    pub conversion: Conversion,
    pub noise_key: KeySource,
    pub mechanism: Mechanism,
}

/// What the loop owns of a run: its directory, its secret key (its noise and batches, saved only
/// in the checkpoint), its accountant, its settings, and its training time in earlier processes.
pub struct RunCore {
    pub dir: RunDir,
    pub key: RunKey,
    pub accountant: Accountant,
    pub settings: LoopSettings,
    pub wall_before: f64,
}

impl RunCore {
    /// Writes a checkpoint: `state(spent)` (the state a run records, given the ε spent) beside
    /// `tensors` and the key.
    pub fn save<S: serde::Serialize>(&self, tensors: &[(String, &Tensor)], state: impl FnOnce(Guarantee) -> S) -> Result<()> {
        let _range = crate::profile::range("checkpoint");
        self.dir.save_checkpoint(tensors, &state(self.accountant.spent()?), &self.key)
    }
}

/// One step's losses on the device (reading them is a host sync: the loop does it when logging):
/// D's, G's if G stepped, and the finiteness flag of D's private update.
pub struct StepReport {
    pub d_loss: Tensor,
    pub g_loss: Option<Tensor>,
    pub nonfinite: Tensor,
}

/// A DP-SGD run as the shared loop drives it.
pub trait PrivateRun {
    fn core(&self) -> &RunCore;
    fn core_mut(&mut self) -> &mut RunCore;
    fn steps_taken(&self) -> u64;
    /// Takes step `step` (0-based).
    fn step(&mut self, step: u64) -> Result<StepReport>;
    /// Fields of the algorithm's own in a metrics line logged after `done` steps.
    fn extra_metrics(&self, done: u64) -> serde_json::Map<String, serde_json::Value>;
    fn write_grid(&self, done: u64) -> Result<()>;
    fn checkpoint(&self, wall_s: f64, stopped: Option<String>) -> Result<()>;
    /// Why the driver refused to capture the run's step into a CUDA graph, if it did (the run then
    /// took its steps eagerly).
    fn capture_refusal(&self) -> Option<&str> {
        None
    }
}

/// How a call to [`train`] ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub steps: u64,
    pub guarantee: Guarantee,
    /// ε under the other conversion, for the report.
    pub other: Guarantee,
    pub stop: Stop,
    /// Training time in this process, and its steps per second.
    pub wall_s: f64,
    pub steps_per_s: f64,
}

/// Loss sums of a logging interval, with how many steps contributed each.
#[derive(Default)]
struct LossSums {
    d: Option<Tensor>,
    g: Option<Tensor>,
    d_count: u64,
    g_count: u64,
}

/// Trains until the planned number of steps or the budget, logging, drawing grids and
/// checkpointing on the way, and always checkpointing at the end.
pub fn train<R: PrivateRun>(run: &mut R, progress: &Progress) -> Result<Outcome> {
    let (s, wall_before) = (run.core().settings, run.core().wall_before);
    let start_step = run.steps_taken();
    let mut metrics = MetricsLog::open(&run.core().dir.path(METRICS), Some(start_step))?;
    let started = Instant::now();
    let (mut interval_start, mut interval_steps) = (Instant::now(), 0u64);
    let mut sums = LossSums::default();
    // Read where the loop syncs anyway, before anything of those steps is written.
    let mut finite = FiniteChecks::new("the discriminator's private gradient");
    let mut stop = Stop::Completed;
    while run.steps_taken() < s.steps {
        let step = run.steps_taken();
        // Spend first: a step the budget does not allow is never taken.
        let guarantee = match run.core_mut().accountant.try_step(s.mechanism, 1) {
            Ok(g) => g,
            Err(Error::PrivacyBudget(why)) => {
                stop = Stop::Budget(why);
                break;
            }
            Err(e) => return Err(e),
        };
        let report = run.step(step)?;
        finite.push(step + 1, report.nonfinite)?;
        sums.add(report.d_loss, report.g_loss)?;
        interval_steps += 1;
        let done = step + 1;
        progress.set_step(done);
        let last = done == s.steps;
        if done.is_multiple_of(s.log_every) || last {
            finite.verify()?;
            let (d_loss, g_loss) = sums.take_means()?;
            let rate = interval_steps as f64 / interval_start.elapsed().as_secs_f64();
            let other = run.core().accountant.spent_with(other_conversion(s.conversion))?;
            let mut line = serde_json::json!({
                "step": done,
                "epoch": done as f64 * s.sample_rate,
                "d_loss": d_loss,
                "g_loss": g_loss,
                "epsilon": guarantee.epsilon,
                "order": guarantee.order,
                conversion_key(other_conversion(s.conversion)): other.epsilon,
                "delta": s.delta,
                "steps_per_s": rate,
                "wall_s": wall_before + started.elapsed().as_secs_f64(),
            });
            if let Some(object) = line.as_object_mut() {
                object.extend(run.extra_metrics(done));
            }
            metrics.append(&line)?;
            let g = g_loss.map_or("–".to_string(), |g| format!("{g:.4}"));
            progress.report(
                done,
                &format!("ε {:.3} · D {d_loss:.4} · G {g} · {rate:.1} steps/s{}", guarantee.epsilon, not_private(s.noise_key)),
            );
            (interval_start, interval_steps) = (Instant::now(), 0);
        }
        if done.is_multiple_of(s.sample_every) || last {
            finite.verify()?;
            run.write_grid(done)?;
        }
        if done.is_multiple_of(s.checkpoint_every) && !last {
            finite.verify()?;
            run.checkpoint(wall_before + started.elapsed().as_secs_f64(), None)?;
        }
        if let Some(signal) = crate::train::interrupt::requested() {
            stop = Stop::Interrupted(signal);
            break;
        }
    }
    finite.verify()?;
    let wall_s = started.elapsed().as_secs_f64();
    let reason = stop.recorded_reason("step", run.steps_taken() + 1);
    run.checkpoint(wall_before + wall_s, reason)?;
    let taken = run.steps_taken();
    let steps = taken - start_step;
    let accountant = &run.core().accountant;
    Ok(Outcome {
        steps: taken,
        guarantee: accountant.spent()?,
        other: accountant.spent_with(other_conversion(s.conversion))?,
        stop,
        wall_s,
        steps_per_s: if wall_s > 0.0 { steps as f64 / wall_s } else { 0.0 },
    })
}

impl LossSums {
    fn add(&mut self, d: Tensor, g: Option<Tensor>) -> Result<()> {
        let plus = |sum: Option<Tensor>, t: Tensor| -> Result<Tensor> {
            match sum {
                None => Ok(t),
                Some(s) => crate::backend::ops::binary(crate::backend::BinaryOp::Add, &s, &t),
            }
        };
        self.d = Some(plus(self.d.take(), d)?);
        self.d_count += 1;
        if let Some(g) = g {
            self.g = Some(plus(self.g.take(), g)?);
            self.g_count += 1;
        }
        Ok(())
    }

    /// The interval's mean D loss and mean G loss (none if G did not step), reset for the next.
    fn take_means(&mut self) -> Result<(f64, Option<f64>)> {
        let d = self.d.take().map(|t| t.item()).transpose()?.map_or(f64::NAN, f64::from) / self.d_count.max(1) as f64;
        let g = self.g.take().map(|t| t.item()).transpose()?.map(|g| f64::from(g) / self.g_count.max(1) as f64);
        (self.d_count, self.g_count) = (0, 0);
        Ok((d, g))
    }
}

/// The progress line's mark of a run that is not private.
pub fn not_private(source: KeySource) -> &'static str {
    if source.is_private() {
        ""
    } else {
        " · NOT PRIVATE (replayable noise)"
    }
}

/// The conversion a run does not use, reported beside the one it does.
pub fn other_conversion(c: Conversion) -> Conversion {
    match c {
        Conversion::Improved => Conversion::Classic,
        Conversion::Classic => Conversion::Improved,
    }
}

fn conversion_key(c: Conversion) -> &'static str {
    match c {
        Conversion::Improved => "epsilon_improved",
        Conversion::Classic => "epsilon_classic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PrivacyRequest {
        PrivacyRequest {
            batch_size: 10,
            steps: 100,
            clip: 1.0,
            noise_multiplier: Some(1.5),
            target_epsilon: None,
            delta: 1e-5,
            orders: Orders::Standard,
            conversion: Conversion::Improved,
        }
    }

    const EVERY: [(&str, u64); 3] = [("--log-every", 1), ("--sample-every", 2), ("--checkpoint-every", 3)];

    fn refusal(r: PrivacyRequest, records: usize, every: [(&str, u64); 3]) -> String {
        match r.plan(records, every) {
            Ok(plan) => panic!("{r:?} planned as {plan:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// q = B/N for any B from 1 to N; B = 0, B > N, a zero interval, no step are refused by name.
    #[test]
    fn the_plan_takes_every_batch_size_up_to_the_data_and_refuses_the_rest() {
        for batch_size in [1, 10, 999, 1000] {
            let plan = PrivacyRequest { batch_size, ..request() }.plan(1000, EVERY).unwrap();
            assert_eq!(plan, PrivacyPlan { sample_rate: batch_size as f64 / 1000.0, noise_multiplier: 1.5, calibrated: false });
        }
        for batch_size in [0, 1001] {
            assert!(refusal(PrivacyRequest { batch_size, ..request() }, 1000, EVERY).contains("--batch-size must be in 1..=1000"));
        }
        for i in 0..3 {
            let mut every = EVERY;
            every[i].1 = 0;
            assert!(refusal(request(), 1000, every).contains(&format!("{} must be at least 1", EVERY[i].0)));
        }
        assert!(refusal(PrivacyRequest { steps: 0, ..request() }, 1000, EVERY).contains("at least one step"));
        assert!(refusal(PrivacyRequest { noise_multiplier: None, ..request() }, 1000, EVERY).contains("--target-epsilon"));
    }

    /// A target alone calibrates σ: the smallest f32 not below the accountant's σ for it (some of
    /// these targets' σ round down to the nearest f32), whose whole plan then spends at most the
    /// target; a budget the first step passes is refused.
    #[test]
    fn a_target_calibrates_sigma_and_a_budget_must_allow_one_step() {
        let mut rounded_down = 0;
        for target in [2.0, 5.0] {
            let r = PrivacyRequest { noise_multiplier: None, target_epsilon: Some(target), ..request() };
            let plan = r.plan(1000, EVERY).unwrap();
            let exact = calibrate_noise_multiplier(0.01, 100, 1e-5, target, &Orders::Standard.values(), Conversion::Improved).unwrap();
            let sigma = plan.noise_multiplier;
            assert!(plan.calibrated && sigma as f64 >= exact && (sigma.next_down() as f64) < exact, "ε {target}: σ {sigma} for {exact}");
            let spent =
                Accountant::new(Orders::Standard, Conversion::Improved, 1e-5, None).unwrap().try_step(plan.mechanism(), 100).unwrap();
            assert!(spent.epsilon <= target, "{spent:?}");
            rounded_down += usize::from(((exact as f32) as f64) < exact);
        }
        assert!(rounded_down > 0, "no target whose σ the nearest f32 would shrink");
        let one_step = Accountant::new(Orders::Standard, Conversion::Improved, 1e-5, None)
            .unwrap()
            .try_step(request().plan(1000, EVERY).unwrap().mechanism(), 1)
            .unwrap()
            .epsilon;
        let tight = PrivacyRequest { target_epsilon: Some(0.9 * one_step), ..request() };
        assert!(matches!(tight.plan(1000, EVERY), Err(Error::PrivacyBudget(_))));
        assert!(PrivacyRequest { target_epsilon: Some(1.1 * one_step), ..request() }.plan(1000, EVERY).is_ok());
    }
}
