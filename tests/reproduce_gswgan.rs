//! `dpgan reproduce gs-wgan` end to end on the CPU with real MNIST and tiny settings (K = 4
//! discriminators, 2 warm-start and 3 phase-2 iterations, the DCGAN generator at a small width, 20
//! images per class, one LeNet-5 epoch): results.json holds the table's fields and both accountings
//! equal to the accountant's, a rerun reuses every finished stage without rewriting it, a stage
//! removed or stale is redone to the same result, a phase 2 stopped before its first checkpoint
//! starts again, and a rerun with other settings is refused.
mod common;

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use common::cli::{data_root, files_with_mtimes, stderr_of_failure};
use dpgan::privacy::gswgan::GsWganRun;
use dpgan::privacy::{Accountant, Conversion, Mechanism, Orders};
use serde_json::Value;

const ITERATIONS: u64 = 3;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "reproduce",
        "gs-wgan",
        "--data",
        &s(&data_root().join("mnist")),
        "--out",
        &s(out),
        "--runs",
        "2",
        "--seed",
        "7",
        "--discriminators",
        "4",
        "--group-size",
        "2",
        "--warm-start-iterations",
        "2",
        "--iterations",
        &ITERATIONS.to_string(),
        "--generator",
        "dcgan",
        "--per-class",
        "20",
        "--eval-epochs",
        "1",
        "--device",
        "cpu",
        "--base",
        "4",
        // A phase 2 restarted from nothing must come out the same below, so its key comes from the
        // seed (a secret key would give the restarted run other noise, as it should).
        "--replayable-noise",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Runs the command, which must succeed: (stdout, stderr).
fn reproduce(out: &Path, extra: &[&str]) -> (String, String) {
    let args = args(out, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = common::cli::dpgan(&refs);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "dpgan {refs:?} exited with {}; stderr:\n{stderr}", output.status);
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

/// ε after `iterations` under each accounting (as-published, per-step), from the accountant.
fn expected(iterations: u64) -> (f64, f64) {
    let run = GsWganRun { noise_multiplier: 1.07, discriminators: 4, batch_size: 32 };
    let epsilon = |orders, conversion, mechanism| {
        let mut accountant = Accountant::new(orders, conversion, 1e-5, None).unwrap();
        accountant.try_step(mechanism, iterations).unwrap().epsilon
    };
    (
        epsilon(Orders::Standard, Conversion::Classic, Mechanism::GsWganAsPublished(run)),
        epsilon(Orders::Fine, Conversion::Improved, Mechanism::GsWganPerStep(run)),
    )
}

/// Every stage's output of one run, with its modification time.
fn stage_files(run: &Path) -> Vec<(String, SystemTime, Vec<u8>)> {
    files_with_mtimes(
        run,
        &[
            "warm-start/discriminators/group-0000.safetensors",
            "warm-start/discriminators/group-0001.safetensors",
            "generator/checkpoint.safetensors",
            "generator/checkpoint.json",
            "synthetic/images.npy",
            "synthetic/labels.npy",
            "synthetic/sample.json",
            "eval-lenet.json",
        ],
    )
}

#[test]
fn reproduce_gs_wgan_reports_the_table_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repro");
    let (table, _) = reproduce(&out, &[]);

    let results = read_json(&out.join("results.json"));
    assert_eq!(results["experiment"], "gs-wgan");
    assert_eq!(results["dataset"], "mnist", "identified from the data directory's name");
    assert_eq!(results["runs"], 2);
    let settings = &results["settings"];
    assert_eq!(settings["discriminators"], 4);
    assert_eq!(settings["iterations"], ITERATIONS);
    assert_eq!(settings["warm_start_iterations"], 2);
    assert_eq!(settings["generator"], "dcgan");
    assert_eq!(settings["accounting"], "as-published", "the published accounting by default");
    assert_eq!(settings["noise_multiplier"], 1.07);
    assert_eq!(settings["per_class"], 20);
    assert_eq!(settings["eval_epochs"], 1);
    assert_eq!(results["published"]["accuracy"], 0.8);
    assert_eq!(results["published"]["epsilon_as_published"], 10.0);

    let (as_published, per_step) = expected(ITERATIONS);
    assert!(as_published < per_step, "the per-step accounting counts more: {per_step} vs {as_published}");
    for (key, value) in [("epsilon_as_published", as_published), ("epsilon_per_step", per_step)] {
        assert_eq!(results[key]["mean"].as_f64(), Some(value), "{key}: every run spends the same");
        assert_eq!(results[key]["runs"].as_array().map(Vec::len), Some(2), "{key}");
    }
    let accuracy = &results["accuracy"];
    let runs: Vec<f64> = accuracy["runs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|a| (0.0..=1.0).contains(a)), "{accuracy}");
    let mean = (runs[0] + runs[1]) / 2.0;
    let sd = ((runs[0] - mean).powi(2) + (runs[1] - mean).powi(2)).sqrt();
    assert!((accuracy["mean"].as_f64().unwrap() - mean).abs() < 1e-12 && (accuracy["sd"].as_f64().unwrap() - sd).abs() < 1e-12);
    for key in ["macro_f1", "warm_start_wall_s", "phase_two_wall_s"] {
        assert!(results[key]["mean"].as_f64().is_some_and(f64::is_finite), "{key}: {}", results[key]);
    }
    let per_run = results["per_run"].as_array().unwrap();
    assert_eq!(per_run.iter().map(|r| r["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [7, 8]);
    for run in per_run {
        assert_eq!(run["iterations"], ITERATIONS);
        assert_eq!(run["lenet"]["classifier"], "lenet");
        assert_eq!(run["lenet"]["train_size"], 200);
        assert_eq!(run["lenet"]["test_size"], 10_000, "scored on the real test set");
        assert_eq!(run["lenet"]["epochs"], 1);
    }
    assert_ne!(per_run[0]["phase_two_seed"], per_run[1]["phase_two_seed"]);

    assert!(table.contains("| LeNet-5 accuracy on the real test set |") && table.contains("| 0.80 |"), "{table}");
    assert!(table.contains(&format!("{:.4} ± {:.4}", mean, sd)), "{table}");
    assert!(table.contains(&format!("| ε, as-published accounting | {as_published:.4} ± 0.0000 | 10 |")), "{table}");
    assert!(table.contains(&format!("| ε, per-step accounting | {per_step:.4} ± 0.0000 |")), "{table}");
    assert!(table.contains("Not the published settings") && table.contains("images per class 20 (published: 6000)"), "{table}");

    let sample = read_json(&out.join("run-1/synthetic/sample.json"));
    assert_eq!((sample["count"].as_u64(), sample["checkpoint_step"].as_u64()), (Some(200), Some(ITERATIONS)));
    assert_eq!(sample["epsilon_as_published"].as_f64(), Some(as_published));

    // Phase 2's checkpoint.json an iteration behind its checkpoint, as a crash between the two
    // writes leaves it: the state stored with G and G_s is the one that counts.
    let mut lagging = read_json(&out.join("run-1/generator/checkpoint.json"));
    (lagging["iteration"], lagging["epsilon_as_published"]) = ((ITERATIONS - 1).into(), 0.5.into());
    fs::write(out.join("run-1/generator/checkpoint.json"), lagging.to_string()).unwrap();

    // A rerun reuses both finished runs: no stage is redone, no file rewritten, the same table.
    let before: Vec<_> = ["run-1", "run-2"].iter().map(|r| stage_files(&out.join(r))).collect();
    let json_before = fs::read(out.join("results.json")).unwrap();
    let (again, stderr) = reproduce(&out, &[]);
    assert!(!stderr.contains("gs-wgan warm start:") && !stderr.contains("gs-wgan: "), "a stage was redone:\n{stderr}");
    let after: Vec<_> = ["run-1", "run-2"].iter().map(|r| stage_files(&out.join(r))).collect();
    assert_eq!(before, after, "a finished stage was rewritten");
    assert_eq!(fs::read(out.join("results.json")).unwrap(), json_before);
    assert_eq!(again, table);

    // An interrupted run: run 2's released set and evaluation are gone; only they are redone, to
    // the same images and scores.
    fs::remove_file(out.join("run-2/synthetic/sample.json")).unwrap();
    fs::remove_file(out.join("run-2/eval-lenet.json")).unwrap();
    let (_, stderr) = reproduce(&out, &[]);
    assert!(!stderr.contains("gs-wgan warm start:") && !stderr.contains("gs-wgan: "), "training was redone:\n{stderr}");
    let redone = stage_files(&out.join("run-2"));
    for ((name, _, bytes), (_, _, old)) in redone.iter().zip(&before[1]) {
        if name != "eval-lenet.json" {
            assert_eq!(bytes, old, "{name} differs after the redo");
        }
    }
    let results = read_json(&out.join("results.json"));
    assert_eq!(results["accuracy"]["runs"], accuracy["runs"], "the redone evaluation scores the same");

    // A released set older than its generator's checkpoint is stale: it is sampled again, and the
    // evaluation made from it redone.
    let stale = out.join("run-1/synthetic/sample.json");
    fs::File::options().write(true).open(&stale).unwrap().set_modified(SystemTime::UNIX_EPOCH).unwrap();
    reproduce(&out, &[]);
    let redone = stage_files(&out.join("run-1"));
    for ((name, modified, bytes), (_, old_modified, old)) in redone.iter().zip(&before[0]) {
        let remade = name.starts_with("synthetic/") || name == "eval-lenet.json";
        assert_eq!(modified != old_modified, remade, "{name}: remade {}, expected {remade}", modified != old_modified);
        if name != "eval-lenet.json" {
            assert_eq!(bytes, old, "{name} differs after the redo");
        }
    }
    assert_eq!(read_json(&out.join("results.json"))["accuracy"]["runs"], accuracy["runs"]);

    // Phase 2 stopped before its first checkpoint: it starts again, and what came after it is made
    // again from the new generator (the same one: the CPU run is deterministic).
    let images = fs::read(out.join("run-2/synthetic/images.npy")).unwrap();
    fs::remove_file(out.join("run-2/generator/checkpoint.safetensors")).unwrap();
    fs::remove_file(out.join("run-2/generator/checkpoint.json")).unwrap();
    let (_, stderr) = reproduce(&out, &[]);
    assert!(stderr.contains("stopped before its first checkpoint") && !stderr.contains("gs-wgan warm start:"), "{stderr}");
    assert_eq!(read_json(&out.join("run-2/generator/checkpoint.json"))["iteration"], ITERATIONS);
    assert_eq!(fs::read(out.join("run-2/synthetic/images.npy")).unwrap(), images);
    assert_eq!(read_json(&out.join("results.json"))["accuracy"]["runs"], accuracy["runs"]);

    // Other settings on a finished run are refused, naming the flag.
    let args = args(&out, &[]);
    let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let at = refs.iter().position(|a| *a == "--iterations").unwrap();
    refs[at + 1] = "4";
    let err = stderr_of_failure(&refs);
    assert!(err.contains("--iterations 3 there, 4 now") && err.contains("generator"), "{err}");
}

#[test]
fn bad_settings_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repro");
    for (extra, expected) in [
        (vec!["--runs", "0"], "--runs must be at least 1"),
        (vec!["--per-class", "0"], "--per-class must be at least 1"),
        (vec!["--eval-epochs", "0"], "--eval-epochs must be at least 1"),
    ] {
        let mut args = args(&out, &[]);
        let at = args.iter().position(|a| a == extra[0]).unwrap();
        args[at + 1] = extra[1].to_string();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = stderr_of_failure(&refs);
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
}
