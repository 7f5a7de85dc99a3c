//! The report's summary: one value that `summary.md` renders for people and `--json` prints
//! whole, so the two never disagree.
use std::path::Path;

use dpgan::dp::KeySource;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

#[derive(Serialize)]
pub struct Summary {
    /// The run directory as given.
    pub run: String,
    pub algorithm: &'static str,
    pub kind: &'static str,
    /// Whether the run's (ε, δ) holds: false with `--replayable-noise`; none for a warm start,
    /// which trains without noise and claims nothing.
    pub private: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
    pub steps: Steps,
    pub privacy: Option<Privacy>,
    #[serde(serialize_with = "in_order")]
    pub settings: Vec<(&'static str, Value)>,
    pub may_be_published: String,
    pub stays_private: String,
    /// The files the report wrote, summary.md last.
    pub files: Vec<String>,
    /// What the report could not draw, and why.
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct Steps {
    pub unit: &'static str,
    pub taken: u64,
    pub planned: u64,
    /// Why the run stopped before its plan, as its checkpoint records it.
    pub stopped: Option<String>,
}

#[derive(Serialize)]
pub struct Privacy {
    /// Spent by the checkpoint's steps, under the conversion or accounting that governs.
    pub epsilon: f64,
    pub delta: f64,
    pub governs: String,
    /// ε under each conversion or accounting the run records, the governing one first.
    #[serde(serialize_with = "in_order")]
    pub epsilons: Vec<(String, f64)>,
    /// ε if every planned step runs, under the governing one.
    pub planned_epsilon: f64,
    pub target_epsilon: Option<f64>,
    pub target_role: Option<String>,
    pub noise_multiplier: f64,
    /// The sampling the ε assumes, and whether it is a proof for this run.
    pub sampling: String,
    pub noise_key: KeySource,
    pub noise: String,
}

/// Pairs as a JSON object in their order (serde_json's own map would sort them).
fn in_order<K: Serialize, V: Serialize, S: Serializer>(pairs: &[(K, V)], serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

impl Summary {
    /// The summary of a run of `kind`; `noise_key` is none for a warm start.
    pub fn new(
        root: &Path,
        algorithm: &'static str,
        kind: &'static str,
        noise_key: Option<KeySource>,
        steps: Steps,
        privacy: Option<Privacy>,
        settings: Vec<(&'static str, Value)>,
    ) -> Self {
        let run = root.display().to_string();
        let may_be_published = match (&privacy, noise_key) {
            (Some(p), Some(KeySource::Secret)) => format!(
                "The output of `dpgan sample --run {run}` (its images, labels, grid and sample.json) or the generator itself, as \
                 `dpgan export --run {run} --out FILE` writes it: they carry (ε = {:.4}, δ = {}) under the {}.",
                p.epsilon, p.delta, p.governs
            ),
            (Some(_), _) => "Nothing with a privacy claim: --replayable-noise derived the noise and batches from the seed, so anyone \
                             who knows the seed can replay them and the (ε, δ) guarantee does not hold. Its samples are a research \
                             replay, fit only for data that is not sensitive."
                .to_string(),
            (None, _) => format!(
                "Nothing: the warm start trains its discriminators on the real data without noise. It is the input of the private \
                 phase (`dpgan train gs-wgan --warm-start {run} --out RUN_DIR`), whose samples may be published."
            ),
        };
        let stays_private = match privacy {
            Some(_) => "The run directory: its checkpoint.safetensors holds the run's secret key, and it holds the discriminator(s) \
                        and the losses on the real data, none of which the guarantee covers (and so does the run's progress \
                        output on stderr). This report too: losses.png plots losses on the real data, and samples.png is the \
                        run's progress grid."
                .to_string(),
            None => "The whole directory, this report included: its discriminators and losses come from the real data, without \
                     noise."
                .to_string(),
        };
        Summary {
            run,
            algorithm,
            kind,
            private: noise_key.map(KeySource::is_private),
            warning: noise_key.and_then(KeySource::warning),
            steps,
            privacy,
            settings,
            may_be_published,
            stays_private,
            files: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// summary.md: a page that says what the run is, what it spent, and what may leave the machine.
pub fn markdown(s: &Summary) -> String {
    let mut md = format!("# dpgan report: {}\n\n{} (`{}`)\n\n", s.run, s.kind, s.algorithm);
    if let Some(warning) = s.warning {
        md += &format!("> **{warning}**\n\n");
    }
    let steps = &s.steps;
    md += &format!("**Progress:** {} of {} {}", steps.taken, steps.planned, steps.unit);
    if let Some(why) = &steps.stopped {
        md += &format!("; stopped early: {why}");
    }
    md += "\n\n";
    match &s.privacy {
        Some(p) => {
            md += "## Privacy\n\n| | |\n|---|---|\n";
            md += &format!("| ε spent ({}, governs) | {:.4} |\n", p.governs, p.epsilon);
            for (name, epsilon) in p.epsilons.iter().skip(1) {
                md += &format!("| ε ({name}) | {epsilon:.4} |\n");
            }
            md += &format!("| δ | {} |\n", p.delta);
            md += &format!("| ε if every planned step runs | {:.4} |\n", p.planned_epsilon);
            if let (Some(target), Some(role)) = (p.target_epsilon, &p.target_role) {
                md += &format!("| target ε | {target} ({role}) |\n");
            }
            md += &format!("| noise multiplier σ | {} |\n", p.noise_multiplier);
            md += &format!("| sampling the ε assumes | {} |\n", p.sampling);
            let key = match p.noise_key {
                KeySource::Secret => "secret: drawn from the operating system, kept only in checkpoint.safetensors",
                KeySource::Replayable => "**derived from the seed (--replayable-noise): NOT PRIVATE**",
            };
            md += &format!("| noise key | {key} |\n| noise sampler | {} |\n\n", p.noise);
        }
        None => md += "## Privacy\n\nNone claimed: a warm start is not private, and spends no ε.\n\n",
    }
    md += &format!("## What may be published\n\n{}\n\n## What stays private\n\n{}\n\n", s.may_be_published, s.stays_private);
    md += "## Settings\n\n| setting | value |\n|---|---|\n";
    for (name, value) in &s.settings {
        let value = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        md += &format!("| {name} | {} |\n", value.replace('|', "\\|"));
    }
    md += "\n## Files\n\n";
    for file in &s.files {
        let what = match file.as_str() {
            "losses.png" => "each loss against the steps, from metrics.jsonl",
            "epsilon.png" => "ε against the steps, under each conversion or accounting the run records, with its target or budget",
            "samples.png" => "the run's latest progress grid, one row per class",
            _ => "this page",
        };
        md += &format!("- `{file}`: {what}\n");
    }
    for note in &s.notes {
        md += &format!("\n{note}\n");
    }
    md
}
