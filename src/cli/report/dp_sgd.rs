//! What the reports of the DP-SGD runs (DP-CGAN, DPSGD-GAN) share: the same privacy record in
//! config.json, the same accountant in the checkpoint, the same ε keys in metrics.jsonl. Each
//! algorithm adds its own settings, its sampling sentence and its loss panels.
use std::path::Path;

use dpgan::data::classes::class_names_of_file;
use dpgan::io::plot::{Level, Line, Panel};
use dpgan::privacy::accountant::Accountant;
use dpgan::train::dp_sgd_run::{other_conversion, RecordedPrivacy};
pub(super) use dpgan::train::dpcgan::run::ALGORITHM as DP_CGAN;
use dpgan::train::dpcgan::run::{AdamRecord, BuildRecord, DataRecord, DpCganRunConfig, DpCganState, LrSchedule, SamplingKind};
pub(super) use dpgan::train::dpsgd_gan::run::ALGORITHM as DPSGD_GAN;
use dpgan::train::dpsgd_gan::run::{DpsgdGanRunConfig, DpsgdGanState};
use dpgan::train::dpsgd_gan::schedule::{GStepSchedule, ACCURACY_THRESHOLD};
use dpgan::train::run_dir::read_config;
use dpgan::Result;
use serde_json::Value;

use super::summary::{Privacy, Steps, Summary};
use super::{
    budget_level, build_name, checkpointed, f32_value, kebab, latest_grid, loss_panels, noise_name, note_no_checkpoint, read_metrics,
    series, target_role, Gathered,
};

/// A DP-SGD run as its config.json and checkpoint record it, and what its report calls things.
pub(super) struct DpSgdRun<'a> {
    pub root: &'a Path,
    pub algorithm: &'static str,
    /// What the run is, in the summary ("DP-CGAN run").
    pub kind: &'static str,
    /// What one accountant step is called: "steps", "D steps".
    pub unit: &'static str,
    pub x_label: &'static str,
    pub privacy: RecordedPrivacy,
    pub data: &'a DataRecord,
    pub seed: u64,
    /// (log, sample, checkpoint) every so many steps.
    pub every: (u64, u64, u64),
    pub device: &'a str,
    pub build: &'a BuildRecord,
    /// The sampling the ε assumes, and whether it is a proof for this run.
    pub sampling: String,
    /// The algorithm's own settings, listed after the privacy ones.
    pub own_settings: Vec<(&'static str, Value)>,
    /// What the losses.png panels call D and G.
    pub players: (&'static str, &'static str),
}

/// What the checkpoint says was spent; none before the first checkpoint.
pub(super) struct Spent {
    pub steps: u64,
    pub epsilon: f64,
    pub accountant: Accountant,
    pub stopped: Option<String>,
}

/// Poisson sampling at q, which the accountant's ε is a proof for.
pub(super) fn poisson_sampling(sample_rate: f64) -> String {
    format!(
        "Poisson: each record joins a step with probability q = B/N = {sample_rate:.6}, which is what the accountant's ε is a proof for"
    )
}

impl DpSgdRun<'_> {
    /// The summary (ε under both conversions, the plan, the settings), the loss panels, ε against
    /// the steps with the target or budget, and the latest grid labelled by the data's classes.
    pub fn gather(self, spent: Option<Spent>, metrics: &[Value]) -> Result<Gathered> {
        let p = self.privacy;
        let governing = kebab(&p.conversion);
        let other = kebab(&other_conversion(p.conversion));
        let mut epsilons = Vec::new();
        if let Some(spent) = &spent {
            for conversion in [p.conversion, other_conversion(p.conversion)] {
                epsilons.push((format!("{} conversion", kebab(&conversion)), spent.accountant.spent_with(conversion)?.epsilon));
            }
        }
        let calibrated = p.plan.calibrated;
        let privacy = Privacy {
            epsilon: spent.as_ref().map_or(0.0, |s| s.epsilon),
            delta: p.delta,
            governs: format!("{governing} conversion"),
            epsilons,
            planned_epsilon: p.planned_epsilon()?.epsilon,
            target_epsilon: p.target_epsilon,
            target_role: target_role(p.target_epsilon, calibrated),
            noise_multiplier: f32_value(p.plan.noise_multiplier).as_f64().unwrap_or(f64::NAN),
            sampling: self.sampling,
            noise_key: p.noise_key,
            noise: noise_name(p.noise),
        };
        let (log, sample, checkpoint) = self.every;
        let mut settings = vec![
            ("data", Value::from(self.data.dir.display().to_string())),
            ("training records", self.data.records.into()),
            ("seed", self.seed.into()),
            ("steps planned", p.steps.into()),
            ("batch size B", p.batch_size.into()),
            ("sample rate q", p.plan.sample_rate.into()),
            ("clip norm C", f32_value(p.clip)),
            ("noise multiplier σ", f32_value(p.plan.noise_multiplier)),
            ("σ calibrated to the target", calibrated.into()),
            ("δ", p.delta.into()),
            ("Rényi orders", kebab(&p.orders).into()),
            ("conversion", governing.clone().into()),
        ];
        settings.extend(self.own_settings);
        settings.extend([
            ("noise sampler", noise_name(p.noise).into()),
            ("log / sample / checkpoint every", format!("{log} / {sample} / {checkpoint} {}", self.unit).into()),
            ("device at start", self.device.into()),
            ("build", build_name(self.build).into()),
        ]);
        let no_checkpoint = spent.is_none();
        let steps = Steps {
            unit: self.unit,
            taken: spent.as_ref().map_or(0, |s| s.steps),
            planned: p.steps,
            stopped: spent.and_then(|s| s.stopped),
        };
        let epsilon_panel = Panel {
            title: format!("ε at δ = {} ({governing} conversion governs)", p.delta),
            y_label: "ε".into(),
            lines: [
                ("epsilon".to_string(), format!("ε, {governing} conversion")),
                (format!("epsilon_{other}"), format!("ε, {other} conversion")),
            ]
            .into_iter()
            .map(|(key, name)| Line { name, points: series(metrics, &key) })
            .filter(|l| !l.points.is_empty())
            .collect(),
            levels: budget_level(p.target_epsilon, calibrated).into_iter().collect(),
            y_from_zero: true,
        };
        let mut summary = Summary::new(self.root, self.algorithm, self.kind, Some(p.noise_key), steps, Some(privacy), settings);
        note_no_checkpoint(&mut summary, no_checkpoint);
        let (d, g) = self.players;
        Ok(Gathered {
            summary,
            x_label: self.x_label,
            losses: loss_panels(metrics, d, g),
            epsilon: vec![epsilon_panel],
            grid: latest_grid(self.root)?.map(|grid| (grid, class_names_of_file(&self.data.labels.path))),
        })
    }
}

pub(super) fn dp_cgan(root: &Path) -> Result<Gathered> {
    let config: DpCganRunConfig = read_config(root, DP_CGAN)?;
    let state: Option<DpCganState> = checkpointed(root)?;
    let sampling = match config.sampling {
        SamplingKind::Poisson => poisson_sampling(config.sample_rate),
        SamplingKind::Shuffle => format!(
            "shuffled batches of B = {} (as the published run): the ε assumes Poisson sampling at q = {:.6}, so it is the customary \
             approximation, not a proof for this run",
            config.batch_size, config.sample_rate
        ),
    };
    let a = config.g_adam;
    let own_settings = vec![
        ("sampling", kebab(&config.sampling).into()),
        ("D learning rate (SGD)", f32_value(config.d_lr)),
        ("D learning-rate schedule", schedule_name(config.d_lr_schedule).into()),
        ("G Adam", format!("lr {}, β1 {}, β2 {}, ε {}", a.lr, a.beta1, a.beta2, a.eps).into()),
    ];
    let run = DpSgdRun {
        root,
        algorithm: DP_CGAN,
        kind: "DP-CGAN run",
        unit: "steps",
        x_label: "step",
        privacy: config.privacy(),
        data: &config.data,
        seed: config.seed,
        every: (config.log_every, config.sample_every, config.checkpoint_every),
        device: &config.device,
        build: &config.build,
        sampling,
        own_settings,
        players: ("discriminator", "generator"),
    };
    let spent = state.map(|s| Spent { steps: s.step, epsilon: s.epsilon, accountant: s.accountant, stopped: s.stopped });
    run.gather(spent, &read_metrics(root)?)
}

/// A DPSGD-GAN run: a step is a D step, the accountant's unit; its G steps and, under the
/// adaptive schedule, n_D and D's accuracy on generated data (what moves n_D) are plotted too.
pub(super) fn dpsgd_gan(root: &Path) -> Result<Gathered> {
    let config: DpsgdGanRunConfig = read_config(root, DPSGD_GAN)?;
    let state: Option<DpsgdGanState> = checkpointed(root)?;
    let metrics = read_metrics(root)?;
    let adaptive = config.d_steps_per_g_step == GStepSchedule::Adaptive;
    let schedule = match (&state, adaptive) {
        (Some(s), true) => {
            format!("adaptive (1, 2, 5, 10, … as D's accuracy on generated data falls; now {})", s.schedule.d_steps_per_g_step)
        }
        (None, true) => "adaptive (1, 2, 5, 10, … as D's accuracy on generated data falls)".to_string(),
        (_, false) => config.d_steps_per_g_step.to_string(),
    };
    let adam = |a: AdamRecord| Value::from(format!("lr {}, β1 {}, β2 {}, ε {}", a.lr, a.beta1, a.beta2, a.eps));
    let mut own_settings = vec![
        ("model width d", config.width.into()),
        ("D steps per G step n_D", schedule.into()),
        ("D Adam", adam(config.d_adam)),
        ("G Adam", adam(config.g_adam)),
    ];
    if let Some(s) = &state {
        own_settings.push(("G steps taken", s.generator_adam_steps.into()));
    }
    let run = DpSgdRun {
        root,
        algorithm: DPSGD_GAN,
        kind: "DPSGD-GAN run",
        unit: "D steps",
        x_label: "D step",
        privacy: config.privacy(),
        data: &config.data,
        seed: config.seed,
        every: (config.log_every, config.sample_every, config.checkpoint_every),
        device: &config.device,
        build: &config.build,
        sampling: poisson_sampling(config.sample_rate),
        own_settings,
        players: ("discriminator (real and generated examples)", "generator"),
    };
    let spent = state.map(|s| Spent { steps: s.step, epsilon: s.epsilon, accountant: s.accountant, stopped: s.stopped });
    let mut gathered = run.gather(spent, &metrics)?;
    if adaptive {
        gathered.losses.extend(schedule_panels(&metrics));
    }
    Ok(gathered)
}

/// n_D, and the EMA of D's accuracy on generated data with the threshold at which n_D moves up.
fn schedule_panels(metrics: &[Value]) -> [Panel; 2] {
    let panel = |title: &str, y_label: &str, key: &str, levels: Vec<Level>| Panel {
        title: title.into(),
        y_label: y_label.into(),
        lines: Some(Line { name: title.into(), points: series(metrics, key) }).into_iter().filter(|l| !l.points.is_empty()).collect(),
        levels,
        y_from_zero: true,
    };
    let threshold = Level { name: format!("n_D moves up at or below {ACCURACY_THRESHOLD}"), value: ACCURACY_THRESHOLD };
    [
        panel("D steps per G step n_D", "n_D", "d_steps_per_g_step", vec![]),
        panel("D's accuracy on generated data (EMA)", "accuracy", "fake_accuracy_ema", vec![threshold]),
    ]
}

fn schedule_name(schedule: LrSchedule) -> String {
    match schedule {
        LrSchedule::Constant => "constant".into(),
        LrSchedule::LinearDecay { final_lr, decay_steps } => format!("linear decay to {final_lr} over {decay_steps} steps, then constant"),
    }
}
