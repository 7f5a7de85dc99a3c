//! `dpgan report RUN`: a run as a person reads it. `losses.png` (each loss against steps),
//! `epsilon.png` (ε against steps under every conversion or accounting the metrics record, with
//! the run's target or budget), `samples.png` (the latest progress grid, rows labelled by class)
//! and `summary.md` (settings, steps, ε, δ, the sampling the ε assumes, the noise key, and what
//! may be published), all written atomically into `RUN/report/` or `--out`. It reads config.json,
//! metrics.jsonl, the grids and the checkpoint's state, never the checkpoint's secret key.
use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use dpgan::data::classes::class_names_of_file;
use dpgan::dp::NoiseMode;
use dpgan::io::image::{read_grid_tiles, Grid};
use dpgan::io::plot::{write_line_chart, Level, Line, Panel};
use dpgan::models::dpcgan::CLASSES;
use dpgan::train::gswgan::run::{Accounting, GsWganRunConfig, GsWganState, ALGORITHM as GS_WGAN};
use dpgan::train::gswgan::warm_start_run::{group_path, WarmStartRunConfig, WARM_START_ALGORITHM};
use dpgan::train::run_dir::{checkpoint_state, read_algorithm, read_config, CHECKPOINT, METRICS, SAMPLES};
use dpgan::{Error, Result};
use serde::Serialize;
use serde_json::Value;

mod dp_sgd;
mod summary;
use summary::{markdown, Privacy, Steps, Summary};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run: a DP-CGAN run, a DPSGD-GAN run, a GS-WGAN run or a GS-WGAN warm start.
    #[arg(value_name = "RUN")]
    run: PathBuf,
    /// Where to write the report [default: RUN/report].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    json: super::json::JsonOut,
}

/// Everything a kind of run hands the writer: the summary, the charts' panels, and the latest grid
/// with the row labels for it.
struct Gathered {
    summary: Summary,
    x_label: &'static str,
    losses: Vec<Panel>,
    epsilon: Vec<Panel>,
    grid: Option<(PathBuf, [&'static str; CLASSES])>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let root = args.run.as_path();
    let mut gathered = match read_algorithm(root)?.as_str() {
        dp_sgd::DP_CGAN => dp_sgd::dp_cgan(root)?,
        dp_sgd::DPSGD_GAN => dp_sgd::dpsgd_gan(root)?,
        GS_WGAN => gs_wgan(root)?,
        WARM_START_ALGORITHM => warm_start(root)?,
        other => {
            return Err(Error::file(root, format!("holds a config.json for the algorithm {other:?}, which this dpgan does not know")));
        }
    };
    let out = args.out.clone().unwrap_or_else(|| root.join("report"));
    refuse_output_dir(&out)?;
    args.json.check()?;
    fs::create_dir_all(&out).map_err(|e| Error::file(&out, format!("cannot create: {e}")))?;

    let summary = &mut gathered.summary;
    if gathered.losses.iter().any(|p| !p.lines.is_empty()) {
        write_line_chart(&out.join("losses.png"), gathered.x_label, &gathered.losses)?;
        summary.files.push("losses.png".into());
    } else {
        summary.notes.push("No losses are logged in metrics.jsonl yet, so there is no losses.png.".into());
    }
    if gathered.epsilon.iter().any(|p| !p.lines.is_empty()) {
        write_line_chart(&out.join("epsilon.png"), gathered.x_label, &gathered.epsilon)?;
        summary.files.push("epsilon.png".into());
    } else if summary.privacy.is_some() {
        summary.notes.push("No ε is logged in metrics.jsonl yet, so there is no epsilon.png.".into());
    }
    match &gathered.grid {
        Some((path, labels)) => {
            let images = read_grid_tiles(path, CLASSES, 10, 28, 28)?;
            Grid { images: &images, rows: CLASSES, cols: 10, height: 28, width: 28, range: (0.0, 1.0), row_labels: labels }
                .write_png(&out.join("samples.png"))?;
            summary.files.push("samples.png".into());
        }
        None if summary.privacy.is_some() => summary.notes.push("The run has drawn no sample grid yet, so there is no samples.png.".into()),
        None => {}
    }
    summary.files.push("summary.md".into());
    dpgan::io::atomic_write(&out.join("summary.md"), markdown(summary).as_bytes())?;

    args.json.emit(summary, || text_of(root, &out, summary))
}

/// What the report says on stdout: where it went, how far the run got, what it spent.
fn text_of(root: &Path, out: &Path, summary: &Summary) -> String {
    let mut text = format!("report of {} ({}) in {}: {}\n", root.display(), summary.kind, out.display(), summary.files.join(", "));
    text += &format!("{} of {} {}", summary.steps.taken, summary.steps.planned, summary.steps.unit);
    if let Some(privacy) = &summary.privacy {
        text += &format!(": ε = {:.4} ({}), δ = {}", privacy.epsilon, privacy.governs, privacy.delta);
    }
    text.push('\n');
    if let Some(warning) = &summary.warning {
        text += &format!("{warning}\n");
    }
    text
}

/// A report never goes beside a released data set: it holds the run's losses on real data, which
/// the guarantee does not cover, and would travel with the release.
fn refuse_output_dir(out: &Path) -> Result<()> {
    if out.join(super::sample::SAMPLE_RECORD).is_file() {
        return Err(Error::file(
            out,
            "holds a data set released by `dpgan sample`: a report plots losses on the real data, keep it apart (choose another --out)",
        ));
    }
    Ok(())
}

fn gs_wgan(root: &Path) -> Result<Gathered> {
    let config: GsWganRunConfig = read_config(root, GS_WGAN)?;
    let state: Option<GsWganState> = checkpointed(root)?;
    let no_checkpoint = state.is_none();
    if let Some(state) = &state {
        state.check_format(&root.join(CHECKPOINT))?;
    }
    let metrics = read_metrics(root)?;
    let governing = config.accounting;
    let spent =
        |a: Accounting| state.as_ref().map(|s| if a == Accounting::AsPublished { s.epsilon_as_published } else { s.epsilon_per_step });
    let epsilons =
        [governing, governing.other()].into_iter().filter_map(|a| spent(a).map(|e| (format!("{} accounting", a.name()), e))).collect();
    let k = config.discriminators;
    let privacy = Privacy {
        epsilon: spent(governing).unwrap_or(0.0),
        delta: config.delta,
        governs: format!("{} accounting", governing.name()),
        epsilons,
        planned_epsilon: config.planned_epsilon(governing)?.epsilon,
        target_epsilon: config.target_epsilon,
        target_role: target_role(config.target_epsilon, config.noise_multiplier_calibrated),
        noise_multiplier: config.noise_multiplier,
        sampling: match governing {
            Accounting::PerStep => format!(
                "per-step: each generator step counts once, as one Gaussian of noise multiplier σ/√B on the slice chosen with \
                 probability 1/K = 1/{k}, bounded by joint convexity (a proof for this mechanism)"
            ),
            Accounting::AsPublished => format!(
                "as-published: each of the B = {} sanitised gradients of a step counts as a query subsampled without replacement at \
                 1/K = 1/{k}, the paper's accounting (the number to compare with it, not a proof for this mechanism: one record can \
                 influence all B gradients of a step)",
                config.batch_size
            ),
        },
        noise_key: config.noise_key,
        noise: noise_name(config.noise),
    };
    let settings = vec![
        ("warm start", Value::from(config.warm_start.display().to_string())),
        ("data", config.data.dir.display().to_string().into()),
        ("training records", config.data.records.into()),
        ("discriminators K", k.into()),
        ("seed", config.seed.into()),
        ("iterations planned", config.iterations.into()),
        ("generator", config.generator.clone().into()),
        ("model width (base)", config.base.into()),
        ("batch size B", config.batch_size.into()),
        ("clip norm C", config.clip.into()),
        ("noise multiplier σ", config.noise_multiplier.into()),
        ("σ calibrated to the target", config.noise_multiplier_calibrated.into()),
        ("δ", config.delta.into()),
        ("accounting", governing.name().into()),
        ("noise sampler", noise_name(config.noise).into()),
        (
            "log / sample / checkpoint every",
            format!("{} / {} / {} iterations", config.log_every, config.sample_every, config.checkpoint_every).into(),
        ),
        ("device at start", config.device.clone().into()),
        ("build", build_name(&config.build).into()),
    ];
    let steps = Steps {
        unit: "iterations",
        taken: state.as_ref().map_or(0, |s| s.iteration),
        planned: config.iterations,
        stopped: state.and_then(|s| s.stopped),
    };
    // One panel per accounting: the two differ by orders of magnitude (10 against 659 for the
    // published run), so a shared axis would flatten one of them.
    let epsilon = [governing, governing.other()]
        .into_iter()
        .map(|a| Panel {
            title: format!("ε at δ = {}, {} accounting{}", config.delta, a.name(), if a == governing { " (governs)" } else { "" }),
            y_label: "ε".into(),
            lines: vec![Line {
                name: format!("ε, {}", a.name()),
                points: series(&metrics, &format!("epsilon_{}", a.name().replace('-', "_"))),
            }]
            .into_iter()
            .filter(|l| !l.points.is_empty())
            .collect(),
            levels: if a == governing {
                budget_level(config.target_epsilon, config.noise_multiplier_calibrated).into_iter().collect()
            } else {
                vec![]
            },
            y_from_zero: true,
        })
        .collect();
    let mut summary = Summary::new(root, GS_WGAN, "GS-WGAN run", Some(config.noise_key), steps, Some(privacy), settings);
    note_no_checkpoint(&mut summary, no_checkpoint);
    Ok(Gathered {
        summary,
        x_label: "iteration",
        losses: loss_panels(&metrics, "critic (the selected discriminator)", "generator"),
        epsilon,
        grid: latest_grid(root)?.map(|g| (g, class_names_of_file(&config.data.labels.path))),
    })
}

fn warm_start(root: &Path) -> Result<Gathered> {
    let config: WarmStartRunConfig = read_config(root, WARM_START_ALGORITHM)?;
    let metrics = read_metrics(root)?;
    let done: usize = (0..config.groups())
        .filter(|&g| group_path(root, g).is_file())
        .map(|g| (config.discriminators - g * config.group_size).min(config.group_size))
        .sum();
    let settings = vec![
        ("data", Value::from(config.data.dir.display().to_string())),
        ("training records", config.data.records.into()),
        ("discriminators K", config.discriminators.into()),
        ("group size", config.group_size.into()),
        ("iterations per discriminator", config.iterations.into()),
        ("critic steps per iteration", config.critic_steps.into()),
        ("throwaway generators", config.generator.clone().into()),
        ("model width (base)", config.base.into()),
        ("batch size", config.batch_size.into()),
        ("seed", config.seed.into()),
        ("device at start", config.device.clone().into()),
        ("build", build_name(&config.build).into()),
    ];
    let steps = Steps { unit: "discriminators", taken: done as u64, planned: config.discriminators as u64, stopped: None };
    let summary = Summary::new(root, WARM_START_ALGORITHM, "GS-WGAN warm start", None, steps, None, settings);
    Ok(Gathered {
        summary,
        x_label: "discriminators trained",
        losses: loss_panels(&metrics, "critic (last iteration, group mean)", "throwaway generator"),
        epsilon: vec![],
        grid: None,
    })
}

/// The checkpoint's state, from the safetensors file (the copy beside the weights), or `None`
/// when the run has not written one yet.
fn checkpointed<S: serde::de::DeserializeOwned>(root: &Path) -> Result<Option<S>> {
    if root.join(CHECKPOINT).is_file() {
        checkpoint_state(root).map(Some)
    } else {
        Ok(None)
    }
}

/// A run without a checkpoint has no generator to sample yet, and has spent nothing it can release.
fn note_no_checkpoint(summary: &mut Summary, no_checkpoint: bool) {
    if no_checkpoint {
        summary.notes.push(
            "The run has written no checkpoint yet (it stopped before its first), so there is no generator to sample and ε is \
             reported as 0."
                .into(),
        );
    }
}

/// metrics.jsonl's records, none if there is no file yet. A torn last line (a crash mid-append)
/// is left out, as resuming drops it; a bad line before it is an error.
fn read_metrics(root: &Path) -> Result<Vec<Value>> {
    let path = root.join(METRICS);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(&path).map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => return Err(Error::file(&path, format!("line {} is not a JSON record: {e}", i + 1))),
        }
    }
    Ok(records)
}

/// (step, `key`) of every record that has both as numbers.
fn series(metrics: &[Value], key: &str) -> Vec<(f64, f64)> {
    metrics.iter().filter_map(|m| Some((m.get("step")?.as_f64()?, m.get(key)?.as_f64()?))).collect()
}

/// One panel per loss (D's and G's scales differ, and a WGAN critic's loss is signed).
fn loss_panels(metrics: &[Value], d: &str, g: &str) -> Vec<Panel> {
    [("d_loss", d), ("g_loss", g)]
        .into_iter()
        .map(|(key, who)| Panel {
            title: format!("{who} loss"),
            y_label: "loss".into(),
            lines: Some(Line { name: format!("{who} loss"), points: series(metrics, key) })
                .into_iter()
                .filter(|l| !l.points.is_empty())
                .collect(),
            levels: vec![],
            y_from_zero: false,
        })
        .collect()
}

/// The newest `samples/step-N.png`, by N.
fn latest_grid(root: &Path) -> Result<Option<PathBuf>> {
    let dir = root.join(SAMPLES);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut latest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(&dir).map_err(|e| Error::file(&dir, format!("cannot list: {e}")))? {
        let path = entry.map_err(|e| Error::file(&dir, format!("cannot list: {e}")))?.path();
        let step =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")?.strip_suffix(".png")?.parse::<u64>().ok());
        if let Some(step) = step.filter(|&s| latest.as_ref().is_none_or(|(l, _)| s > *l)) {
            latest = Some((step, path));
        }
    }
    Ok(latest.map(|(_, p)| p))
}

/// What the target ε was to the run: σ calibrated to spend up to it, or a budget the run stops at.
fn target_role(target: Option<f64>, calibrated: bool) -> Option<String> {
    target.map(|_| {
        if calibrated {
            "target: σ was calibrated so that the planned steps spend up to it".to_string()
        } else {
            "budget: the run stops, with a checkpoint, before a step that would pass it".to_string()
        }
    })
}

fn budget_level(target: Option<f64>, calibrated: bool) -> Option<Level> {
    target.map(|value| Level { name: format!("{} ε = {value}", if calibrated { "target" } else { "budget" }), value })
}

/// An f32 setting as the number it was written as (1.15, not 1.149999976158142).
fn f32_value(x: f32) -> Value {
    Value::from(x.to_string().parse::<f64>().unwrap_or(x as f64))
}

fn noise_name(mode: NoiseMode) -> String {
    match mode {
        NoiseMode::Secure => "secure (ChaCha20, hardened Box–Muller)".into(),
        NoiseMode::Fast => "fast (Philox4x32, not cryptographic)".into(),
    }
}

fn build_name(build: &dpgan::train::dpcgan::run::BuildRecord) -> String {
    match &build.commit {
        Some(commit) => format!("dpgan {} ({commit})", build.version),
        None => format!("dpgan {}", build.version),
    }
}

/// A setting's name as config.json writes it (kebab-case enums).
fn kebab<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}
