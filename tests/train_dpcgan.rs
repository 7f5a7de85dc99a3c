//! `dpgan train dp-cgan` end to end on the CPU with real MNIST: every artefact written, the
//! reported ε equal to the accountant's, resume bit-for-bit, the budget obeyed, and bad inputs
//! refused before anything is written.
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::cli::{assert_interval_means, check_export, data_root, dpgan, error_of, metrics_lines, stderr_of_failure, stdout_of};
use dpgan::io::checkpoint::{load_tensors, save_tensors};
use dpgan::io::synthetic::read_synthetic;
use dpgan::privacy::{Accountant, Conversion, Mechanism, Orders};
use dpgan::train::dpcgan::run::{DpCganRunConfig, DpCganState};
use dpgan::train::run_dir::file_sha256;
use dpgan::{Device, Tensor};
use serde_json::Value;

fn mnist() -> String {
    data_root().join("mnist").to_string_lossy().into_owned()
}

fn train(out: &Path, extra: &[&str]) -> String {
    let (data, out) = (mnist(), out.to_string_lossy().into_owned());
    let mut args = vec!["train", "dp-cgan", "--data", &data, "--out", &out, "--device", "cpu"];
    args.extend_from_slice(extra);
    stdout_of(&args)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn tensors(run: &Path) -> HashMap<String, Tensor> {
    load_tensors(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap().0
}

/// ε of `steps` steps at the run's settings, from the accountant directly.
fn expected_epsilon(config: &DpCganRunConfig, steps: u64, conversion: Conversion) -> f64 {
    let mechanism = Mechanism::SubsampledGaussian { sample_rate: config.sample_rate, noise_multiplier: config.noise_multiplier as f64 };
    let mut accountant = Accountant::new(Orders::Standard, conversion, config.delta, None).unwrap();
    accountant.try_step(mechanism, steps).unwrap().epsilon
}

#[test]
fn a_short_run_writes_every_artefact_and_reports_the_accountants_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let report = train(
        &run,
        &["--seed", "1", "--steps", "120", "--batch-size", "100", "--log-every", "40", "--sample-every", "60", "--checkpoint-every", "50"],
    );

    let config: DpCganRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert_eq!((config.steps, config.batch_size, config.seed), (120, 100, 1));
    assert_eq!(config.sample_rate, 100.0 / 60_000.0);
    assert_eq!((config.clip, config.noise_multiplier, config.delta), (1.1, 1.15, 1e-5), "docs/algorithms.md's defaults");
    assert_eq!(config.data.images.sha256, file_sha256(&config.data.images.path).unwrap());
    assert_eq!(config.data.labels.sha256, file_sha256(&config.data.labels.path).unwrap());
    assert_eq!(config.data.records, 60_000);
    assert_eq!(config.build.version, env!("CARGO_PKG_VERSION"));

    let lines: Vec<Value> =
        fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [40, 80, 120]);
    for line in &lines {
        let step = line["step"].as_u64().unwrap();
        assert_eq!(line["epsilon"].as_f64().unwrap(), expected_epsilon(&config, step, Conversion::Improved), "step {step}");
        assert_eq!(line["epsilon_classic"].as_f64().unwrap(), expected_epsilon(&config, step, Conversion::Classic), "step {step}");
        for key in ["d_loss", "g_loss", "wall_s", "steps_per_s"] {
            assert!(line[key].as_f64().is_some_and(f64::is_finite), "{key} in {line}");
        }
    }

    let state: DpCganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert_eq!((state.step, state.stopped.as_deref()), (120, None));
    assert_eq!(state.epsilon, expected_epsilon(&config, 120, Conversion::Improved));
    assert!(report.contains(&format!("ε = {:.4}", state.epsilon)), "{report}");

    let checkpoint = tensors(&run);
    for name in ["generator.hidden.weight", "discriminator.output.bias", "generator_adam.m.output.weight", "generator_adam.v.hidden.bias"] {
        assert!(checkpoint[name].to_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
    for step in [60, 120] {
        let png = run.join(format!("samples/step-{step:08}.png"));
        let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(&png).unwrap()));
        let info = decoder.read_info().unwrap().info().clone();
        // A 10 px margin (the widest digit, 8 px at a 14 px line, and a 2 px gap) labels the rows,
        // then 10 × 10 tiles of 28 px with 2 px gaps; 8-bit grayscale.
        assert_eq!((info.width, info.height), (312, 302), "labelled 10 × 10 tiles of 28 px with 2 px gaps");
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Eight));
    }
    let leftovers: Vec<_> =
        fs::read_dir(&run).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");

    // The released data: balanced labels, loads back in both layouts, says what ε it carries.
    for (format, count) in [("idx", 50), ("npy", 30)] {
        let out = dir.path().join(format!("synthetic-{format}"));
        let (run_s, out_s, count_s) = (run.to_string_lossy().into_owned(), out.to_string_lossy().into_owned(), count.to_string());
        stdout_of(&["sample", "--run", &run_s, "--count", &count_s, "--out", &out_s, "--format", format, "--device", "cpu"]);
        let set = read_synthetic(&out).unwrap();
        assert_eq!((set.count, set.height, set.width), (count, 28, 28));
        for class in 0..10u8 {
            assert_eq!(set.labels.iter().filter(|&&l| l == class).count(), count / 10, "class {class} in {format}");
        }
        assert!(set.images.iter().all(|p| (0.0..=1.0).contains(p)));
        let record = read_json(&out.join("sample.json"));
        assert_eq!(record["epsilon"].as_f64().unwrap(), state.epsilon);
        assert_eq!(record["checkpoint_step"], 120);
        assert!(out.join("grid.png").is_file());
        let err = stderr_of_failure(&["sample", "--run", &run_s, "--count", &count_s, "--out", &out_s, "--device", "cpu"]);
        assert!(err.contains("already holds"), "{err}");
    }
    let err =
        stderr_of_failure(&["sample", "--run", &run.to_string_lossy(), "--count", "55", "--out", &dir.path().join("x").to_string_lossy()]);
    assert!(err.contains("multiple of 10"), "{err}");
    // The generator alone, published: it samples what the run samples.
    check_export(&run, dir.path(), 20);
}

#[test]
fn a_resumed_run_ends_with_the_same_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    // Replayable noise, so that an uninterrupted run of the same seed is the reference (with a
    // secret key each run has its own; tests/run_key.rs resumes copies of one run instead).
    let common = ["--seed", "9", "--batch-size", "64", "--log-every", "5", "--checkpoint-every", "7", "--replayable-noise"];
    train(&straight, &[&common[..], &["--steps", "30"]].concat());
    train(&split, &[&common[..], &["--steps", "17"]].concat());
    let split_dir = split.to_string_lossy().into_owned();
    let before: DpCganState = serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap();
    stdout_of(&["train", "dp-cgan", "--resume", &split_dir, "--steps", "30", "--device", "cpu"]);

    let (a, b) = (tensors(&straight), tensors(&split));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let (x, y) = (t.to_vec().unwrap(), b[name].to_vec().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resuming");
    }
    let (sa, sb): (DpCganState, DpCganState) = (
        serde_json::from_value(read_json(&straight.join("checkpoint.json"))).unwrap(),
        serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap(),
    );
    assert_eq!((sa.step, sa.epsilon, sa.generator_adam_steps), (sb.step, sb.epsilon, sb.generator_adam_steps));
    // The resumed log continues the interrupted one: every step once, in order.
    let steps: Vec<u64> = fs::read_to_string(split.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]) && steps.last() == Some(&30), "{steps:?}");
    // Training time adds up over the processes.
    assert!(before.wall_s > 0.0 && sb.wall_s > before.wall_s, "{} s, then {} s", before.wall_s, sb.wall_s);
    // Asking for the steps already taken is no change, and is accepted.
    stdout_of(&["train", "dp-cgan", "--resume", &split_dir, "--steps", "30", "--device", "cpu"]);
    let again: DpCganState = serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap();
    assert_eq!((again.step, again.epsilon), (30, sb.epsilon));

    let err = stderr_of_failure(&["train", "dp-cgan", "--resume", &split_dir, "--clip", "2"]);
    assert!(err.contains("--clip") && err.contains("config.json"), "{err}");

    // A checkpoint is resumed only as what it claims to be: this version's format of this
    // algorithm, with an accountant that is config.json's q and σ after the steps taken (a
    // checkpoint that says fewer steps were spent would let the run pass its budget).
    let checkpoint = split.join("checkpoint.safetensors");
    let (tensors, metadata) = load_tensors(&checkpoint, &Device::Cpu).unwrap();
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    type Tamper = fn(&mut Value);
    let tampered: [(&str, Tamper); 4] = [
        ("checkpoint format 1 of dp-cgan is not this version's (2 of dp-cgan)", |s| s["format"] = 1.into()),
        ("checkpoint format 2 of dpsgd-gan is not this version's (2 of dp-cgan)", |s| s["algorithm"] = "dpsgd-gan".into()),
        ("privacy record does not match its settings", |s| s["accountant"]["history"][0][1] = 29.into()),
        ("privacy record does not match its settings", |s| s["accountant"]["delta"] = 1e-3.into()),
    ];
    for (why, tamper) in tampered {
        let mut state: Value = serde_json::from_str(&metadata["dpgan.state"]).unwrap();
        tamper(&mut state);
        let mut changed = metadata.clone();
        changed.insert("dpgan.state".into(), state.to_string());
        save_tensors(&checkpoint, &named, Some(changed)).unwrap();
        let err = stderr_of_failure(&["train", "dp-cgan", "--resume", &split_dir, "--steps", "31", "--device", "cpu"]);
        assert!(err.contains(why), "{why}: {err}");
    }
    save_tensors(&checkpoint, &named, Some(metadata)).unwrap();
    stdout_of(&["train", "dp-cgan", "--resume", &split_dir, "--steps", "31", "--device", "cpu"]);
}

/// A `--cuda-graph` run pads its batches (on the CPU, eagerly, through the strict binding of
/// per-step values a capture uses): config.json records the rows (six standard deviations above
/// the expected Poisson batch), an interrupted and resumed run ends with the weights of an
/// uninterrupted one bit for bit, and its losses stay within rounding of the unpadded run's
/// (the same batches, noise and draws, summed over longer batches).
#[test]
fn a_padded_run_records_its_rows_and_resumes_bit_for_bit() {
    use dpgan::data::{Dataset, Split};
    use dpgan::train::dpcgan::run::{padded_rows, DpCganRun, DpCganSettings, SamplingKind};
    use dpgan::train::progress::Progress;
    let data = Dataset::load(std::path::Path::new(&mnist()), Split::Train).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = |steps: u64, cuda_graph: bool| DpCganSettings {
        seed: 9,
        steps: Some(steps),
        batch_size: 64,
        replayable_noise: true,
        log_every: 1,
        checkpoint_every: 5,
        cuda_graph,
        ..DpCganSettings::default()
    };
    let run = |name: &str, steps: u64, cuda_graph: bool| {
        let config = DpCganRunConfig::plan(&settings(steps, cuda_graph), &data, &Device::Cpu).unwrap();
        let root = dir.path().join(name);
        DpCganRun::start(&root, config, &data, &Device::Cpu).unwrap().train(&Progress::new(0, steps)).unwrap();
        root
    };
    let (straight, split, unpadded) = (run("straight", 12, true), run("split", 7, true), run("unpadded", 12, false));
    let mut resumed = DpCganRun::resume(&split, &Device::Cpu, Some(12)).unwrap();
    resumed.train(&Progress::new(7, 12)).unwrap();

    let config: DpCganRunConfig = serde_json::from_value(read_json(&straight.join("config.json"))).unwrap();
    let rows = padded_rows(SamplingKind::Poisson, 64, config.sample_rate, data.len());
    assert_eq!(config.padded_rows, Some(rows));
    // q·N = 64, sd = sqrt(64·(1 − q)) ≈ 7.99: 64 + 6·7.99 → 112.
    assert_eq!(rows, 112);
    assert_eq!(padded_rows(SamplingKind::Shuffle, 64, config.sample_rate, data.len()), 64);
    // The published q·N = 600 of 60,000: 600 + 6·sqrt(594) → 747 (what the README says).
    assert_eq!(padded_rows(SamplingKind::Poisson, 600, 0.01, 60_000), 747);
    let plain: Value = read_json(&unpadded.join("config.json"));
    assert!(plain.get("padded_rows").is_none(), "a run without --cuda-graph records no rows");

    let (a, b) = (tensors(&straight), tensors(&split));
    for (name, t) in &a {
        let (x, y) = (t.to_vec().unwrap(), b[name].to_vec().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resuming a padded run");
    }
    // Within f32 rounding, amplified by 12 steps of training: relative 1e-3.
    for (step, ((pd, pg), (ud, ug))) in losses(&straight).into_iter().zip(losses(&unpadded)).enumerate() {
        for (what, p, u) in [("D", pd, ud), ("G", pg, ug)] {
            assert!((p - u).abs() <= 1e-3 * u.abs().max(1.0), "step {}: {what} loss {p} padded, {u} unpadded", step + 1);
        }
    }
}

/// metrics.jsonl's losses are means over the steps since the last line, its `epoch` is steps × q,
/// and its rate the interval's steps over their wall time: a run that logs every step and one of
/// the same seed and noise that logs every third agree.
#[test]
fn logged_losses_are_means_over_the_logging_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (every_run, third_run) = (dir.path().join("every"), dir.path().join("third"));
    let common = ["--seed", "4", "--batch-size", "64", "--steps", "4", "--replayable-noise"];
    train(&every_run, &[&common[..], &["--log-every", "1"]].concat());
    train(&third_run, &[&common[..], &["--log-every", "3"]].concat());
    let third = metrics_lines(&third_run);
    assert_interval_means(&metrics_lines(&every_run), &third, "step");
    let config: DpCganRunConfig = serde_json::from_value(read_json(&third_run.join("config.json"))).unwrap();
    for line in &third {
        assert_eq!(line["epoch"].as_f64().unwrap(), line["step"].as_u64().unwrap() as f64 * config.sample_rate, "{line}");
    }
}

#[test]
fn the_budget_stops_the_run_before_it_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // σ = 0.8 at q = 1/600 passes ε = 1.2 between steps 50 and 100 (ε = 1.08 after one step).
    let (data, out) = (mnist(), run.to_string_lossy().into_owned());
    let args =
        ["train", "dp-cgan", "--data", &data, "--out", &out, "--device", "cpu", "--seed", "2", "--steps", "400", "--batch-size", "100"];
    // Exit status 3: stopped at the budget.
    let report = common::cli::stdout_with_status(&[&args[..], &["--noise-multiplier", "0.8", "--target-epsilon", "1.2"]].concat(), 3);
    let state: DpCganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert!(state.step > 0 && state.step < 400, "stopped at {}", state.step);
    assert!(state.stopped.as_deref().is_some_and(|s| s.contains("budget")), "{:?}", state.stopped);
    // The checkpoint names the step the budget refused: the next one.
    let refused = format!("stopped before step {}:", state.step + 1);
    assert!(state.stopped.as_deref().is_some_and(|s| s.starts_with(&refused)), "{:?}", state.stopped);
    let config: DpCganRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert!(expected_epsilon(&config, state.step, Conversion::Improved) <= 1.2);
    assert!(expected_epsilon(&config, state.step + 1, Conversion::Improved) > 1.2, "it stopped a step too early");
    assert!(report.contains(&format!("stopped at step {}", state.step)), "{report}");
}

#[test]
fn a_target_epsilon_calibrates_sigma_and_is_met() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["--seed", "4", "--steps", "20", "--batch-size", "100", "--target-epsilon", "1.0"]);
    let config: DpCganRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert!(config.noise_multiplier_calibrated);
    let spent = expected_epsilon(&config, 20, Conversion::Improved);
    assert!(spent <= 1.0 && spent > 0.999, "calibrated σ = {} gives ε = {spent}", config.noise_multiplier);
    let state: DpCganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert_eq!((state.step, state.stopped), (20, None), "a calibrated run is never cut short by its own budget");
}

#[test]
fn impossible_settings_and_bad_data_fail_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_string_lossy().into_owned();
    let data = mnist();
    let err = stderr_of_failure(&[
        "train",
        "dp-cgan",
        "--data",
        &data,
        "--out",
        &run_s,
        "--device",
        "cpu",
        "--steps",
        "1000",
        "--target-epsilon",
        "1e-6",
    ]);
    assert!(err.contains("unreachable"), "{err}");
    assert!(!run.exists(), "an impossible run wrote {}", run.display());

    // A truncated copy of the training images.
    let bad = dir.path().join("bad");
    fs::create_dir(&bad).unwrap();
    for name in ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        fs::copy(data_root().join("mnist").join(name), bad.join(name)).unwrap();
    }
    let images = fs::read(data_root().join("mnist/train-images-idx3-ubyte.gz")).unwrap();
    fs::write(bad.join("train-images-idx3-ubyte.gz"), &images[..images.len() / 2]).unwrap();
    let bad_s = bad.to_string_lossy().into_owned();
    let out = dpgan(&["train", "dp-cgan", "--data", &bad_s, "--out", &run_s, "--device", "cpu", "--steps", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train-images-idx3-ubyte.gz"), "{err}");
    assert!(!run.exists());

    let err = stderr_of_failure(&["train", "dp-cgan", "--data", &data, "--out", &run_s, "--device", "cpu", "--batch-size", "0"]);
    assert!(err.contains("--batch-size"), "{err}");
    let err = stderr_of_failure(&["train", "dp-cgan", "--data", &data, "--out", &run_s, "--device", "cpu", "--cuda-graph"]);
    assert!(err.contains("--cuda-graph needs a CUDA device"), "{err}");
    assert!(!run.exists());
    // An existing run is never overwritten.
    train(&run, &["--seed", "1", "--steps", "2", "--batch-size", "10"]);
    let err = stderr_of_failure(&["train", "dp-cgan", "--data", &data, "--out", &run_s, "--device", "cpu", "--steps", "2"]);
    assert!(err.contains("--resume"), "{err}");
}

/// `dpgan sample` reports the step and ε stored with the generator's weights, even when
/// checkpoint.json lags them (a crash between the two writes); its record names the run, not where
/// it lies; and it never writes into the run, nor over a data set or an earlier sample.
#[test]
fn sampling_reports_its_checkpoint_and_never_writes_over_data() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_string_lossy().into_owned();
    train(&run, &["--seed", "7", "--steps", "2", "--batch-size", "50"]);
    let lagging = fs::read(run.join("checkpoint.json")).unwrap();
    stdout_of(&["train", "dp-cgan", "--resume", &run_s, "--steps", "4", "--device", "cpu"]);
    fs::write(run.join("checkpoint.json"), &lagging).unwrap();
    let (_, metadata) = load_tensors(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let state: DpCganState = serde_json::from_str(&metadata["dpgan.state"]).unwrap();
    let old: DpCganState = serde_json::from_slice(&lagging).unwrap();
    assert_eq!((state.step, old.step), (4, 2));
    assert!(state.epsilon > old.epsilon);

    let out = dir.path().join("released");
    let sample = |out: &Path| -> Vec<String> {
        ["sample", "--run", &run_s, "--count", "10", "--out", &out.to_string_lossy(), "--device", "cpu"].map(String::from).to_vec()
    };
    let args = sample(&out);
    stdout_of(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let record = read_json(&out.join("sample.json"));
    assert_eq!((record["checkpoint_step"].as_u64(), record["epsilon"].as_f64()), (Some(4), Some(state.epsilon)));
    assert_eq!(record["run"], "run", "the run's name, not its path");
    assert_eq!(record["build"]["version"], env!("CARGO_PKG_VERSION"));
    let text = fs::read_to_string(out.join("sample.json")).unwrap();
    assert!(!text.contains(&*dir.path().to_string_lossy()), "sample.json holds a local path:\n{text}");

    // A copy of MNIST's training files, a set of .npy files, the run itself, a folder inside it, an
    // earlier sample: each refused, nothing written.
    let mnist = dir.path().join("mnist-copy");
    fs::create_dir(&mnist).unwrap();
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        fs::copy(data_root().join("mnist").join(name), mnist.join(name)).unwrap();
    }
    let npy = dir.path().join("npy");
    fs::create_dir(&npy).unwrap();
    fs::write(npy.join("images.npy"), b"not mine to replace").unwrap();
    let files_of = |d: &Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        files.into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect()
    };
    let kept: Vec<_> = [&mnist, &npy, &run, &out].iter().map(|d| files_of(d)).collect();
    for (target, needle) in [
        (mnist.clone(), "already holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"),
        (npy.clone(), "already holds images.npy"),
        (run.clone(), "the run directory or inside it"),
        (run.join("samples/release"), "the run directory or inside it"),
        (dir.path().join("elsewhere/../run/released"), "the run directory or inside it"),
        (out.clone(), "already holds"),
    ] {
        let args = sample(&target);
        let err = error_of(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains(needle), "{}: {err}", target.display());
    }
    assert_eq!([&mnist, &npy, &run, &out].iter().map(|d| files_of(d)).collect::<Vec<_>>(), kept);
    assert!(!run.join("samples/release").exists() && !run.join("released").exists());
}

/// D's weights made huge (as a diverging run might make them): every example's gradient norm
/// overflows to ∞ or NaN, which cannot be clipped. The step fails naming itself, and nothing of it
/// is written: checkpoint and metrics stay as the last checkpoint left them.
#[test]
fn a_step_whose_gradient_norms_are_not_finite_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["--seed", "6", "--steps", "2", "--batch-size", "50", "--log-every", "1"]);
    let path = run.join("checkpoint.safetensors");
    let (mut tensors, metadata) = load_tensors(&path, &Device::Cpu).unwrap();
    let hidden = tensors.remove("discriminator.hidden.weight").unwrap();
    let huge: Vec<f32> = hidden.to_vec().unwrap().iter().map(|w| w * 1e30).collect();
    tensors.insert("discriminator.hidden.weight".into(), Tensor::from_vec(huge, hidden.shape(), &Device::Cpu).unwrap());
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_tensors(&path, &named, Some(metadata)).unwrap();
    let (checkpoint, metrics) = (fs::read(&path).unwrap(), fs::read(run.join("metrics.jsonl")).unwrap());

    let out = dpgan(&["train", "dp-cgan", "--resume", &run.to_string_lossy(), "--steps", "4", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("error: step 3: the discriminator's private gradient holds a NaN or an infinity"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), checkpoint, "the checkpoint was rewritten");
    assert_eq!(fs::read(run.join("metrics.jsonl")).unwrap(), metrics, "steps after the bad one were logged");
}

/// The per-step (D, G) losses of `metrics.jsonl`.
fn losses(run: &Path) -> Vec<(f64, f64)> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["d_loss"].as_f64().unwrap(), v["g_loss"].as_f64().unwrap())
        })
        .collect()
}

/// The same short run on the GPU and on the CPU: same seed and replayable noise, so the same initial
/// weights, batches, latents and (counter-based) noise; the backends differ only in the order of f32 sums (TF32 is
/// off by default), which training then amplifies. Bounds, set before any measurement: relative
/// 1e-4 over the first 5 steps, where the difference is still rounding, and 1e-2 by step 20.
/// Skips without a GPU (fails with DPGAN_REQUIRE_GPU=1).
#[test]
fn the_same_short_run_on_the_gpu_matches_the_cpu_losses() {
    let Some(_) = common::cuda_or_skip("the_same_short_run_on_the_gpu_matches_the_cpu_losses") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runs = [dir.path().join("cpu"), dir.path().join("cuda"), dir.path().join("cuda-graph")];
    for (run, device) in runs.iter().zip(["cpu", "cuda", "cuda"]) {
        let (data, out) = (mnist(), run.to_string_lossy().into_owned());
        let args =
            ["train", "dp-cgan", "--data", &data, "--out", &out, "--device", device, "--seed", "5", "--steps", "20", "--replayable-noise"];
        let graph: &[&str] = if run.ends_with("cuda-graph") { &["--cuda-graph"] } else { &[] };
        stdout_of(
            &[&args[..], &["--batch-size", "128", "--log-every", "1", "--sample-every", "20", "--checkpoint-every", "20"], graph].concat(),
        );
    }
    let cpu = losses(&runs[0]);
    // The replayed run (padded batches, steps 2 on from one CUDA graph) is held to the same bounds:
    // it differs from the CPU's steps by the order of f32 sums too.
    for (name, run) in [("GPU", &runs[1]), ("GPU, CUDA graph", &runs[2])] {
        let gpu = losses(run);
        assert_eq!((cpu.len(), gpu.len()), (20, 20), "{name}: one metrics line per step");
        for (step, (&(cd, cg), &(gd, gg))) in cpu.iter().zip(&gpu).enumerate() {
            let bound = if step < 5 { 1e-4 } else { 1e-2 };
            for (what, c, g) in [("D", cd, gd), ("G", cg, gg)] {
                assert!((c - g).abs() <= bound * c.abs().max(1.0), "step {}: {what} loss {g} on the {name}, {c} on the CPU", step + 1);
            }
        }
    }
}
