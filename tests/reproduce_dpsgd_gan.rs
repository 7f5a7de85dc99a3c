//! `dpgan reproduce dpsgd-gan` end to end on the CPU with real MNIST and tiny settings (d = 16, 20
//! D steps, n_D = 5, 12 images per class, one CNN epoch): results.json holds the accountant's ε and
//! the CNN's scores with the epoch it kept on held-out synthetic images, the table names every
//! departure from the published run, a rerun reuses every stage, and other settings are refused.
mod common;

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use common::cli::{data_root, dpgan, files_with_mtimes, stderr_of_failure};
use dpgan::privacy::{Accountant, Conversion, Mechanism, Orders};
use dpgan::train::dpsgd_gan::run::DpsgdGanRunConfig;
use serde_json::Value;

const D_STEPS: u64 = 20;

fn args(out: &Path, d_steps: u64) -> Vec<String> {
    let (data, out) = (data_root().join("mnist"), out.to_string_lossy().into_owned());
    let d_steps = d_steps.to_string();
    let args = ["reproduce", "dpsgd-gan", "--data", &data.to_string_lossy(), "--out", &out, "--runs", "2", "--seed", "3"];
    let tiny = ["--width", "16", "--d-steps", &d_steps, "--d-steps-per-g-step", "5", "--batch-size", "64", "--per-class", "12"];
    args.iter().chain(&tiny).chain(&["--eval-epochs", "1", "--device", "cpu"]).map(|a| a.to_string()).collect()
}

/// Runs the command, which must succeed: its stdout.
fn reproduce(out: &Path) -> String {
    let args = args(out, D_STEPS);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = dpgan(&refs);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "dpgan {refs:?} exited with {}; stderr:\n{stderr}", output.status);
    String::from_utf8(output.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Every stage's output of one run, with its modification time.
fn stage_files(run: &Path) -> Vec<(String, SystemTime, Vec<u8>)> {
    files_with_mtimes(run, &["generator/checkpoint.safetensors", "generator/checkpoint.json", "synthetic/images.npy", "eval-cnn.json"])
}

#[test]
fn reproduce_dpsgd_gan_reports_the_table_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repro");
    let table = reproduce(&out);

    let results = read_json(&out.join("results.json"));
    assert_eq!((results["experiment"].as_str(), results["runs"].as_u64()), (Some("dpsgd-gan"), Some(2)));
    let config: DpsgdGanRunConfig = serde_json::from_value(read_json(&out.join("run-1/generator/config.json"))).unwrap();
    assert_eq!((config.steps, config.seed, config.width, config.batch_size), (D_STEPS, 3, 16, 64));
    // ε is the accountant's for the D steps taken (σ = 1.0, the published one, q = 64/60,000).
    let mechanism = Mechanism::SubsampledGaussian { sample_rate: config.sample_rate, noise_multiplier: config.noise_multiplier as f64 };
    let mut accountant = Accountant::new(Orders::Standard, Conversion::Improved, config.delta, None).unwrap();
    let expected = accountant.try_step(mechanism, D_STEPS).unwrap().epsilon;
    assert_eq!((config.noise_multiplier, results["epsilon"]["mean"].as_f64()), (1.0, Some(expected)));
    assert_eq!(results["g_steps"], serde_json::json!([4, 4]), "20 D steps, a G step after every 5");

    let reports = results["cnn"].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    for (report, seed) in reports.iter().zip([3, 4]) {
        assert_eq!(
            (report["classifier"].as_str(), report["epochs"].as_u64(), report["seeds"][0].as_u64()),
            (Some("cnn"), Some(1), Some(seed))
        );
        assert_eq!((report["train_size"].as_u64(), report["test_size"].as_u64()), (Some(120), Some(10_000)));
        // 120 synthetic images hold out 1/12 of themselves, one of each class, to choose the epoch.
        let choice = &report["runs"][0]["epoch_choice"];
        assert_eq!((choice["epoch"].as_u64(), choice["held_out"].as_u64()), (Some(1), Some(10)), "{report}");
        assert!(report["accuracy"]["mean"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{report}");
    }
    assert_eq!(results["published"]["accuracy"].as_f64(), Some(0.93));
    assert!(table.contains("DPSGD-GAN on MNIST, n_D = 5") && table.contains("| 0.930 |"), "{table}");
    assert!(table.contains("never on real data"), "{table}");
    let departures = "Not the published settings: n_D 5 (published: 50), D steps 20 (published: 450000), batch size 64 \
                      (published: 128), width 16 (published: 128), images per class 12 (published: 6000), CNN epochs 1 (published: 10).";
    assert!(table.contains(departures), "{table}");
    assert_eq!(results["departures"].as_array().map(Vec::len), Some(6), "{results}");
    let record = read_json(&out.join("run-2/synthetic/sample.json"));
    assert_eq!(
        (record["count"].as_u64(), record["checkpoint_step"].as_u64(), record["private"].as_bool(), record["format"].as_str()),
        (Some(120), Some(D_STEPS), Some(true), Some("NPY"))
    );

    // A rerun reuses both finished runs: nothing trained, sampled or evaluated again, the same table.
    let before: Vec<_> = ["run-1", "run-2"].iter().map(|r| stage_files(&out.join(r))).collect();
    let json_before = fs::read(out.join("results.json")).unwrap();
    assert_eq!(reproduce(&out), table);
    let after: Vec<_> = ["run-1", "run-2"].iter().map(|r| stage_files(&out.join(r))).collect();
    assert_eq!(before, after, "a finished stage was rewritten");
    assert_eq!(fs::read(out.join("results.json")).unwrap(), json_before);

    // Other settings on a finished run are refused, naming the flag and the run.
    let args = args(&out, D_STEPS + 1);
    let err = stderr_of_failure(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--d-steps 20 there, 21 now") && err.contains("run-1"), "{err}");
}
