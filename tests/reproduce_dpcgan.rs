//! `dpgan reproduce dp-cgan` end to end on the CPU with real MNIST and 2 training steps per run:
//! results.json holds both conversions' ε equal to the accountant's and both classifiers' scores,
//! a rerun reuses the finished runs without rewriting anything, and other settings are refused.
mod common;

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use common::cli::{data_root, dpgan, files_with_mtimes, stderr_of_failure};
use dpgan::privacy::{Accountant, Conversion, Mechanism, Orders};
use dpgan::train::dpcgan::run::DpCganRunConfig;
use serde_json::Value;

const STEPS: u64 = 2;

fn args(out: &Path, steps: u64) -> Vec<String> {
    let (data, out) = (data_root().join("mnist"), out.to_string_lossy().into_owned());
    let steps = steps.to_string();
    let args = ["reproduce", "dp-cgan", "--data", &data.to_string_lossy(), "--out", &out, "--runs", "2", "--seed", "3", "--steps", &steps];
    args.iter().chain(&["--eval-epochs", "1", "--device", "cpu"]).map(|a| a.to_string()).collect()
}

/// Runs the command, which must succeed: (stdout, stderr).
fn reproduce(out: &Path) -> (String, String) {
    let args = args(out, STEPS);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = dpgan(&refs);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "dpgan {refs:?} exited with {}; stderr:\n{stderr}", output.status);
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Every stage's output of one run, with its modification time.
fn stage_files(run: &Path) -> Vec<(String, SystemTime, Vec<u8>)> {
    files_with_mtimes(
        run,
        &["checkpoint.safetensors", "checkpoint.json", "synthetic/train-images-idx3-ubyte.gz", "eval-logreg.json", "eval-mlp.json"],
    )
}

#[test]
fn reproduce_dp_cgan_reports_the_table_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repro");
    let (table, _) = reproduce(&out);

    let results = read_json(&out.join("results.json"));
    assert_eq!((results["experiment"].as_str(), results["runs"].as_u64()), (Some("dp-cgan"), Some(2)));
    let config: DpCganRunConfig = serde_json::from_value(read_json(&out.join("run-1/config.json"))).unwrap();
    assert_eq!((config.steps, config.seed), (STEPS, 3));
    let mechanism = Mechanism::SubsampledGaussian { sample_rate: config.sample_rate, noise_multiplier: config.noise_multiplier as f64 };
    for (key, conversion) in [("epsilon_improved", Conversion::Improved), ("epsilon_classic", Conversion::Classic)] {
        let mut accountant = Accountant::new(Orders::Standard, conversion, config.delta, None).unwrap();
        let expected = accountant.try_step(mechanism, STEPS).unwrap().epsilon;
        assert_eq!(results[key]["mean"].as_f64(), Some(expected), "{key}");
        assert_eq!(results[key]["runs"].as_array().map(Vec::len), Some(2), "{key}");
    }
    for (key, epochs) in [("logreg", Value::Null), ("mlp", Value::from(1))] {
        let reports = results[key].as_array().unwrap();
        assert_eq!(reports.len(), 2, "{key}");
        for (report, seed) in reports.iter().zip([3, 4]) {
            assert_eq!(report["classifier"], key);
            assert_eq!(report["epochs"], epochs, "--eval-epochs shortens the MLP only");
            assert_eq!((report["train_size"].as_u64(), report["test_size"].as_u64()), (Some(5000), Some(10_000)));
            assert_eq!(report["seeds"][0], seed);
            assert!(report["auroc_micro"]["mean"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{report}");
        }
    }
    assert!(table.contains("| AUROC, logistic regression |") && table.contains("| 0.8642 |"), "{table}");
    // A table made with other settings says which, and results.json records them.
    assert!(table.contains("Not the published settings: steps 2 (published: 24900), Poisson sampling"), "{table}");
    assert!(table.contains("MLP epochs 1 (published: 200)"), "{table}");
    let settings = &results["settings"];
    assert_eq!(
        (settings["steps"].as_u64(), settings["per_class"].as_u64(), settings["mlp_epochs"].as_u64()),
        (Some(STEPS), Some(500), Some(1))
    );
    assert_eq!(results["departures"].as_array().map(Vec::len), Some(3), "{results}");
    // The released set is what `dpgan sample` writes: sample.json and a grid beside the images.
    let record = read_json(&out.join("run-1/synthetic/sample.json"));
    assert_eq!(
        (record["count"].as_u64(), record["checkpoint_step"].as_u64(), record["private"].as_bool()),
        (Some(5000), Some(STEPS), Some(true))
    );
    assert!(out.join("run-1/synthetic/grid.png").is_file());

    // checkpoint.json one step behind its checkpoint, as a crash between the two writes leaves it:
    // the state stored with the generator is the one that counts (nothing is resumed, the same ε).
    let mut lagging = read_json(&out.join("run-1/checkpoint.json"));
    (lagging["step"], lagging["epsilon"]) = ((STEPS - 1).into(), 0.5.into());
    fs::write(out.join("run-1/checkpoint.json"), lagging.to_string()).unwrap();

    // A rerun reuses both finished runs: nothing trained or evaluated again, the same table.
    let before: Vec<_> = ["run-1", "run-2"].iter().map(|r| stage_files(&out.join(r))).collect();
    let json_before = fs::read(out.join("results.json")).unwrap();
    let (again, _) = reproduce(&out);
    let after: Vec<_> = ["run-1", "run-2"].iter().map(|r| stage_files(&out.join(r))).collect();
    assert_eq!(before, after, "a finished stage was rewritten");
    assert_eq!(fs::read(out.join("results.json")).unwrap(), json_before);
    assert_eq!(again, table);

    // Other settings on a finished run are refused, naming the flag.
    let args = args(&out, STEPS + 1);
    let err = stderr_of_failure(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--steps 2 there, 3 now") && err.contains("run-1"), "{err}");
}
