//! The command line: one variant of [`Command`] per subcommand, its arguments and its `run` in a
//! file of its own (`info.rs`, `privacy.rs`, `train.rs` with `gswgan.rs`, `sample.rs`, `eval.rs`,
//! `reproduce/`, `report.rs`, `bench.rs`). Commands render their report to a string and hand it to [`emit`].
use std::io::{self, Write};

use clap::{Parser, Subcommand, ValueEnum};
use dpgan::backend::cuda::{Tf32Pipeline, Tf32PipelineScope};
use dpgan::{Device, Error, Result};

mod bench;
mod data;
mod dp_sgd_args;
mod dpsgd_gan;
mod eval;
mod export;
mod gswgan;
mod info;
mod json;
mod noise;
mod privacy;
mod report;
mod reproduce;
mod sample;
mod train;

#[derive(Parser, Debug)]
#[command(name = "dpgan", version, about = "Differentially private GANs (DP-CGAN, GS-WGAN) on hand-written CUDA kernels")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Which build the TF32 tensor-core matmuls and convolutions take where a command allows TF32
    /// (`--tf32`): the same values bit for bit, a different speed (`dpgan bench kernels` times all
    /// three). `wide` takes 128 × 128 tiles where M and N fill them, else `cp-async`'s.
    #[arg(long, global = true, value_enum, default_value_t = Tf32Build::RegisterStaged)]
    tf32_build: Tf32Build,
}

/// `--tf32-build`: the CLI's names of `Tf32Pipeline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tf32Build {
    RegisterStaged,
    CpAsync,
    Wide,
}

impl From<Tf32Build> for Tf32Pipeline {
    fn from(b: Tf32Build) -> Self {
        match b {
            Tf32Build::RegisterStaged => Tf32Pipeline::RegisterStaged,
            Tf32Build::CpAsync => Tf32Pipeline::CpAsync,
            Tf32Build::Wide => Tf32Pipeline::Wide,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The build (version, compiled kernels) and the CUDA devices this machine has.
    Info(info::InfoArgs),
    /// Privacy accounting: ε of a DP-SGD run, σ for a target ε, GS-WGAN's two accountings.
    Privacy(privacy::PrivacyArgs),
    /// Train a private GAN: `train dp-cgan`, `train dpsgd-gan`, or `train gs-wgan warm-start` then `train gs-wgan` (published settings by default).
    Train(train::TrainArgs),
    /// Release a synthetic data set from a run (or an exported generator): balanced labels, IDX or NPY, a PNG grid.
    Sample(sample::SampleArgs),
    /// The generator a run may publish, as one file: its weights and the (ε, δ) it carries, nothing private.
    Export(export::ExportArgs),
    /// Scores a synthetic set: a classifier trained on it, tested on the real test set.
    Eval(eval::EvalArgs),
    /// A published experiment end to end (train, sample, evaluate) beside the published table.
    Reproduce(reproduce::ReproduceArgs),
    /// A run as plots and a page: losses and ε against steps, the latest grid, settings and what may be published.
    Report(report::ReportArgs),
    /// Data sets: `data fetch mnist|fashion-mnist` downloads and verifies one.
    Data(data::DataArgs),
    /// Benchmarks: `bench kernels` times every kernel family against the device's measured ceilings; `bench step` the training step.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command (on this thread, which every command trains and benchmarks on: the TF32
/// build chosen holds for all of it).
pub fn run(cli: Cli) -> Result<()> {
    let _tf32_build = Tf32PipelineScope::new(cli.tf32_build.into());
    match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Privacy(args) => privacy::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Report(args) => report::run(&args),
    }
}

/// Writes a command's output to stdout. A closed pipe (`dpgan info | head`) is not an error;
/// anything else is reported instead of panicking the way `println!` would.
fn emit(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Error::file("<stdout>", format!("cannot write: {e}"))),
        _ => Ok(()),
    }
}

/// The exit status of a training run after its report: a stop at the ε budget (3) or by a signal
/// (130, 143) is not a failure, but the status says it, and a signal's message says how to go on.
fn stop_status(stop: &dpgan::train::Stop, resume: &str) -> Result<()> {
    use dpgan::train::Stop;
    match stop {
        Stop::Completed => Ok(()),
        Stop::Budget(_) => Err(Error::Stopped { code: BUDGET_EXIT, msg: "stopped at the ε budget (exit status 3)".into() }),
        Stop::Interrupted(signal) => Err(interrupted(*signal, resume)),
    }
}

/// The exit status of a run that stopped before its planned end at the ε budget.
const BUDGET_EXIT: u8 = 3;

/// What a command stopped by a signal says, and the status it exits with.
fn interrupted(signal: dpgan::train::interrupt::Signal, resume: &str) -> Error {
    Error::Stopped {
        code: signal.exit_code(),
        msg: format!("stopped by {} with everything done so far saved; continue with `{resume}`", signal.name()),
    }
}

/// `--device`, or the best available one (saying which and why).
fn choose_device(flag: Option<&str>) -> Result<Device> {
    match flag {
        None => {
            let (device, why_not_gpu) = Device::best_available();
            match why_not_gpu {
                Some(why) => eprintln!("device: cpu (no usable GPU: {why})"),
                None => eprintln!("device: {device}"),
            }
            Ok(device)
        }
        Some("cpu") => Ok(Device::Cpu),
        Some("cuda") => Device::cuda(0),
        Some(other) => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(ordinal) => Device::cuda(ordinal),
            None => Err(Error::Invalid(format!("--device must be cpu, cuda or cuda:N, got {other}"))),
        },
    }
}

/// A flag that would change a resumed run's recorded settings is an error, not silently ignored.
pub(super) fn refuse_on_resume(given: &[(&str, bool)], allowed: &str) -> Result<()> {
    let flags: Vec<&str> = given.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    if flags.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--resume continues a run with the settings in its config.json; drop {} (only {allowed} may change)",
        flags.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::{Cli, Tf32Pipeline};
    use clap::{CommandFactory, Parser};

    /// Every command and subcommand below `cmd`, with its path (`dpgan train dp-cgan`).
    fn walk(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    fn commands() -> Vec<(String, clap::Command)> {
        let mut all = Vec::new();
        walk(&Cli::command(), "dpgan".into(), &mut all);
        all
    }

    #[test]
    fn every_command_and_flag_has_a_help_line() {
        let mut missing = Vec::new();
        for (path, cmd) in commands() {
            if path != "dpgan" && cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"))));
                }
            }
        }
        assert!(missing.is_empty(), "without a help line: {missing:?}");
    }

    #[test]
    fn json_means_the_same_in_every_command() {
        let mut with_json = Vec::new();
        for (path, cmd) in commands() {
            if let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some("json")) {
                let help = arg.get_help().map(ToString::to_string);
                with_json.push((path, help, arg.get_num_args(), arg.get_value_names().map(<[_]>::to_vec)));
            }
        }
        assert!(with_json.len() >= 6, "{with_json:?}");
        let (_, help, num, missing) = &with_json[0];
        for (path, h, n, m) in &with_json {
            assert_eq!((h, n, m), (help, num, missing), "{path}'s --json differs from {}'s", with_json[0].0);
        }
        // Alone or with `-` it replaces the text; with a path it writes a file.
        let parsed = Cli::try_parse_from(["dpgan", "info", "--json"]).unwrap();
        assert!(format!("{parsed:?}").contains(r#"path: Some("-")"#), "{parsed:?}");
        let parsed = Cli::try_parse_from(["dpgan", "info", "--json", "out.json"]).unwrap();
        assert!(format!("{parsed:?}").contains(r#"path: Some("out.json")"#), "{parsed:?}");
    }

    /// Each `--tf32-build` name takes its own build, before or after the subcommand; the default is
    /// the register-staged one.
    #[test]
    fn tf32_build_names_map_to_their_builds() {
        let build = |args: &[&str]| Tf32Pipeline::from(Cli::try_parse_from(args).unwrap().tf32_build);
        assert_eq!(build(&["dpgan", "info"]), Tf32Pipeline::RegisterStaged);
        for (name, pipeline) in
            [("register-staged", Tf32Pipeline::RegisterStaged), ("cp-async", Tf32Pipeline::CpAsync), ("wide", Tf32Pipeline::Wide)]
        {
            assert_eq!(build(&["dpgan", "--tf32-build", name, "info"]), pipeline, "{name}");
            assert_eq!(build(&["dpgan", "info", "--tf32-build", name]), pipeline, "{name}");
        }
    }
}
