//! `dpgan train dpsgd-gan` end to end on the CPU with real MNIST: the issue's tiny run trains,
//! samples, evaluates and reports the accountant's ε (the same as `dpgan privacy epsilon` for the
//! steps taken); a resumed run (adaptive schedule) ends bit for bit where an uninterrupted one
//! does; the budget stops it; a resumed run refuses new settings.
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::cli::{check_export, data_root, json_of, stderr_of_failure, stdout_of, stdout_with_status};
use dpgan::io::checkpoint::load_tensors;
use dpgan::io::synthetic::read_synthetic;
use dpgan::train::dpsgd_gan::run::{DpsgdGanRunConfig, DpsgdGanState};
use dpgan::{Device, Tensor};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "dpsgd-gan", "--data", data, "--out", out, "--device", "cpu"];
    args.extend_from_slice(extra);
    args
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn tensors(run: &Path) -> HashMap<String, Tensor> {
    load_tensors(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap().0
}

/// `dpgan privacy epsilon` for `steps` steps at the run's q and σ.
fn privacy_epsilon(config: &DpsgdGanRunConfig, steps: u64) -> f64 {
    let (q, sigma, t) = (config.sample_rate.to_string(), config.noise_multiplier.to_string(), steps.to_string());
    let report =
        json_of(&["privacy", "epsilon", "--sample-rate", &q, "--noise-multiplier", &sigma, "--steps", &t, "--delta", "1e-5", "--json"]);
    report["epsilon"].as_f64().unwrap_or_else(|| panic!("no epsilon in {report}"))
}

#[test]
fn the_issues_tiny_run_trains_samples_and_reports_the_accountants_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (data, out) = (s(&data_root().join("mnist")), s(&run));
    let tiny = ["--width", "16", "--d-steps", "20", "--d-steps-per-g-step", "5", "--batch-size", "64", "--seed", "1", "--log-every", "10"];
    let report = stdout_of(&train_args(&data, &out, &tiny));

    let config: DpsgdGanRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert_eq!((config.steps, config.batch_size, config.width, config.seed), (20, 64, 16, 1));
    assert_eq!(config.sample_rate, 64.0 / 60_000.0);
    assert_eq!((config.clip, config.noise_multiplier, config.delta), (1.0, 1.0, 1e-5), "docs/algorithms.md §4's defaults");
    assert_eq!((config.d_adam.lr, config.d_adam.beta1, config.g_adam.beta2), (2e-4, 0.5, 0.999));
    assert_eq!(read_json(&run.join("config.json"))["noise_key"], "secret");

    let lines: Vec<Value> =
        fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [10, 20]);
    for line in &lines {
        let step = line["step"].as_u64().unwrap();
        assert_eq!(line["epsilon"].as_f64().unwrap(), privacy_epsilon(&config, step), "step {step}");
        assert_eq!(line["g_steps"].as_u64().unwrap(), step / 5, "a G step after every 5 D steps");
        for key in ["d_loss", "g_loss", "wall_s", "steps_per_s"] {
            assert!(line[key].as_f64().is_some_and(f64::is_finite), "{key} in {line}");
        }
    }
    let state: DpsgdGanState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert_eq!((state.step, state.generator_adam_steps, state.discriminator_adam_steps), (20, 4, 20));
    assert_eq!(state.epsilon, privacy_epsilon(&config, 20));
    assert!(report.contains(&format!("ε = {:.4}", state.epsilon)) && report.contains("20 D steps"), "{report}");
    assert!(run.join("samples/step-00000020.png").is_file());
    for name in ["generator.up28.weight", "discriminator.logit.bias", "discriminator_adam.v.down4.weight", "generator_adam.m.label.bias"] {
        assert!(tensors(&run)[name].to_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }

    // The released set: balanced, in [0, 1], carrying the run's ε; and it evaluates.
    let released = dir.path().join("released");
    stdout_of(&["sample", "--run", &out, "--count", "40", "--out", &s(&released), "--device", "cpu"]);
    let set = read_synthetic(&released).unwrap();
    assert_eq!(set.count, 40);
    assert!((0..10u8).all(|c| set.labels.iter().filter(|&&l| l == c).count() == 4));
    assert!(set.images.iter().all(|p| (0.0..=1.0).contains(p)));
    let record = read_json(&released.join("sample.json"));
    assert_eq!((record["algorithm"].as_str(), record["epsilon"].as_f64()), (Some("dpsgd-gan"), Some(state.epsilon)));
    assert_eq!(record["private"], true);
    check_export(&run, dir.path(), 20);
    let eval = json_of(&["eval", "--synthetic", &s(&released), "--data", &data, "--classifier", "logreg", "--device", "cpu", "--json"]);
    assert!(eval["accuracy"]["mean"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{eval}");
}

#[test]
fn a_resumed_adaptive_run_ends_with_the_same_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    let data = s(&data_root().join("mnist"));
    // Replayable noise, so that an uninterrupted run of the same seed is the reference
    // (tests/run_key.rs resumes copies of one secret-key run instead).
    let common = ["--seed", "4", "--width", "4", "--batch-size", "16", "--d-steps-per-g-step", "adaptive", "--checkpoint-every", "3"];
    let common = [&common[..], &["--log-every", "2", "--replayable-noise"]].concat();
    let (a, b) = (s(&straight), s(&split));
    stdout_of(&train_args(&data, &a, &[&common[..], &["--d-steps", "9"]].concat()));
    stdout_of(&train_args(&data, &b, &[&common[..], &["--d-steps", "5"]].concat()));
    stdout_of(&["train", "dpsgd-gan", "--resume", &b, "--d-steps", "9", "--device", "cpu"]);

    let (ta, tb) = (tensors(&straight), tensors(&split));
    assert_eq!(ta.len(), tb.len());
    for (name, t) in &ta {
        let (x, y) = (t.to_vec().unwrap(), tb[name].to_vec().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resuming");
    }
    let (sa, sb): (DpsgdGanState, DpsgdGanState) = (
        serde_json::from_value(read_json(&straight.join("checkpoint.json"))).unwrap(),
        serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap(),
    );
    assert_eq!((sa.step, sa.epsilon, sa.generator_adam_steps), (sb.step, sb.epsilon, sb.generator_adam_steps));
    assert_eq!(sa.schedule, sb.schedule);
    assert_eq!(sa.generator_adam_steps, 9, "the adaptive schedule starts at one D step per G step");
    assert!(sa.schedule.accuracy_ema.is_some_and(|a| (0.0..=1.0).contains(&a)), "{:?}", sa.schedule);

    for flag in [["--width", "8"], ["--d-steps-per-g-step", "3"]] {
        let err = stderr_of_failure(&[&["train", "dpsgd-gan", "--resume", &b][..], &flag[..]].concat());
        assert!(err.contains(flag[0]) && err.contains("config.json"), "{err}");
    }
    let err = stderr_of_failure(&["train", "dpsgd-gan", "--resume", &b, "--d-steps", "4", "--device", "cpu"]);
    assert!(err.contains("--d-steps 4") && err.contains("cannot be shortened"), "{err}");
}

/// A `--cuda-graph` run pads its D steps' Poisson batches (on the CPU, eagerly, through the strict
/// binding of per-step values a capture uses, G steps in between): config.json records the rows,
/// and an interrupted and resumed run ends with the weights of an uninterrupted one bit for bit.
#[test]
fn a_padded_run_records_its_rows_and_resumes_bit_for_bit() {
    use dpgan::data::{Dataset, Split};
    use dpgan::train::captured::poisson_rows;
    use dpgan::train::dpsgd_gan::run::{DpsgdGanRun, DpsgdGanSettings};
    use dpgan::train::dpsgd_gan::schedule::GStepSchedule;
    use dpgan::train::progress::Progress;
    let data = Dataset::load(&data_root().join("mnist"), Split::Train).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = |d_steps: u64| DpsgdGanSettings {
        seed: 4,
        d_steps,
        batch_size: 16,
        width: 4,
        schedule: GStepSchedule::Fixed { d_steps_per_g_step: 2 },
        replayable_noise: true,
        checkpoint_every: 3,
        cuda_graph: true,
        ..DpsgdGanSettings::default()
    };
    let run = |name: &str, d_steps: u64| {
        let config = DpsgdGanRunConfig::plan(&settings(d_steps), &data, &Device::Cpu).unwrap();
        let root = dir.path().join(name);
        DpsgdGanRun::start(&root, config, &data, &Device::Cpu).unwrap().train(&Progress::new(0, d_steps)).unwrap();
        root
    };
    let (straight, split) = (run("straight", 9), run("split", 5));
    DpsgdGanRun::resume(&split, &Device::Cpu, Some(9)).unwrap().train(&Progress::new(5, 9)).unwrap();

    let config: DpsgdGanRunConfig = serde_json::from_value(read_json(&straight.join("config.json"))).unwrap();
    // q·N = 16: 16 + 6·sqrt(16·(1 − q)) → 40.
    assert_eq!(config.padded_rows, Some(poisson_rows(config.sample_rate, data.len())));
    assert_eq!(config.padded_rows, Some(40));
    let (ta, tb) = (tensors(&straight), tensors(&split));
    for (name, t) in &ta {
        let (x, y) = (t.to_vec().unwrap(), tb[name].to_vec().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resuming a padded run");
    }
    let err = stderr_of_failure(&train_args(&s(&data_root().join("mnist")), &s(&dir.path().join("x")), &["--cuda-graph"]));
    assert!(err.contains("--cuda-graph needs a CUDA device"), "{err}");
}

#[test]
fn the_budget_stops_the_run_before_it_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (data, out) = (s(&data_root().join("mnist")), s(&run));
    // σ = 0.6 at q = 16/60000: ε = 1.65 after 20 steps, 1.73 after 100: 1.7 falls between.
    let budget = ["--width", "4", "--batch-size", "16", "--d-steps", "200", "--noise-multiplier", "0.6", "--target-epsilon", "1.7"];
    let report = stdout_with_status(&train_args(&data, &out, &[&budget[..], &["--seed", "2", "--log-every", "50"]].concat()), 3);
    let state: DpsgdGanState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert!(state.step > 0 && state.step < 200, "stopped at {}", state.step);
    assert!(state.stopped.as_deref().is_some_and(|s| s.contains("budget")), "{:?}", state.stopped);
    // The checkpoint names the step the budget refused: the next one.
    let refused = format!("stopped before step {}:", state.step + 1);
    assert!(state.stopped.as_deref().is_some_and(|s| s.starts_with(&refused)), "{:?}", state.stopped);
    let config: DpsgdGanRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert!(privacy_epsilon(&config, state.step) <= 1.7);
    assert!(privacy_epsilon(&config, state.step + 1) > 1.7, "it stopped a step too early");
    assert!(report.contains(&format!("stopped at D step {}", state.step)), "{report}");
}
