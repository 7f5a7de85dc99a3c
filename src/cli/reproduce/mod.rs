//! `dpgan reproduce`: a published experiment in one command, one file per experiment
//! (`dpcgan.rs`, `gswgan.rs`). Both share the shape of the work: N independent runs in
//! `OUT/run-1`, `OUT/run-2`, ... (seeds s, s+1, ...), each trained, sampled and evaluated; a table of
//! mean ± sd over the runs (never the best) beside the published numbers, printed and written with
//! every run's scores to `OUT/results.json`. A finished run is reused and an interrupted one
//! resumed, so the command can be run again after a crash without redoing work.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use dpgan::eval::Metric;
use dpgan::{Error, Result};

mod dpcgan;
mod gswgan;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(Subcommand, Debug)]
enum Experiment {
    /// DP-CGAN on MNIST: AUROC of logistic regression and an MLP trained on 5,000 samples.
    DpCgan(dpcgan::DpCganReproduceArgs),
    /// GS-WGAN on MNIST or Fashion-MNIST: warm start, private phase, LeNet-5 trained on 60,000 samples.
    GsWgan(gswgan::GsWganReproduceArgs),
}

pub fn run(args: &ReproduceArgs) -> Result<()> {
    match &args.experiment {
        Experiment::DpCgan(a) => dpcgan::run(a),
        Experiment::GsWgan(a) => gswgan::run(a),
    }
}

/// One run of an experiment: its number (1-based), its directory and its seed.
struct RunSlot {
    number: usize,
    root: PathBuf,
    seed: u64,
}

/// The runs of `--runs N --seed S` under `out`: run K in `out/run-K` with seed S + K − 1.
fn run_slots(out: &Path, runs: usize, seed: u64) -> Result<Vec<RunSlot>> {
    if runs == 0 {
        return Err(Error::Invalid("--runs must be at least 1".into()));
    }
    (1..=runs)
        .map(|number| {
            let seed = seed
                .checked_add(number as u64 - 1)
                .ok_or_else(|| Error::Invalid(format!("--seed {seed} leaves no room for {runs} runs (seed + run − 1 overflows)")))?;
            Ok(RunSlot { number, root: out.join(format!("run-{number}")), seed })
        })
        .collect()
}

/// The comparison table: one row per quantity, the mean ± sd over the runs (the mean alone for
/// one run) beside the published value.
struct Table {
    runs: usize,
    text: String,
}

impl Table {
    fn new(title: &str, runs: usize) -> Table {
        let mut text = String::new();
        writeln!(text, "{title}, {runs} run(s); mean ± sd over runs, never the best").ok();
        writeln!(text, "| | dpgan | published |").ok();
        writeln!(text, "|---|---:|---:|").ok();
        Table { runs, text }
    }

    fn cell(&self, m: &Metric) -> String {
        if self.runs > 1 {
            format!("{:.4} ± {:.4}", m.mean, m.sd)
        } else {
            format!("{:.4}", m.mean)
        }
    }

    /// A row of `values` (one per run); `published` is shown as given ("" where there is none).
    fn row(&mut self, label: &str, values: Vec<f64>, published: &str) {
        let cell = self.cell(&Metric::over(values));
        writeln!(self.text, "| {label} | {cell} | {published} |").ok();
    }

    fn note(&mut self, line: &str) {
        writeln!(self.text, "{line}").ok();
    }

    /// The table, ending with where the results went.
    fn finish(mut self, out: &Path) -> String {
        writeln!(self.text, "results: {}", out.join(RESULTS).display()).ok();
        self.text
    }
}

/// What the whole experiment writes beside its runs.
const RESULTS: &str = "results.json";

/// Writes `OUT/results.json` atomically.
fn write_results(out: &Path, json: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(json).map_err(|e| Error::Invalid(format!("results as JSON: {e}")))? + "\n";
    dpgan::io::atomic_write(&out.join(RESULTS), text.as_bytes())
}

/// A stage found on disk must have been made with the settings asked for now: otherwise the table
/// would average runs of different experiments. Each entry: the flag, what the stage recorded,
/// what the command asks for.
fn same_settings(dir: &Path, settings: &[(&str, String, String)]) -> Result<()> {
    let differ: Vec<String> = settings
        .iter()
        .filter(|(_, recorded, asked)| recorded != asked)
        .map(|(flag, recorded, asked)| format!("{flag} {recorded} there, {asked} now"))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::file(
        dir,
        format!(
            "was made with other settings ({}): rerun with the settings it was made with to continue it, or choose another --out",
            differ.join("; ")
        ),
    ))
}
