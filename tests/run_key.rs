//! A private run's noise, batches and choice of discriminator come from a secret key drawn from the
//! OS, not from `--seed`: two runs with the same seed differ, a run resumes bit for bit from the key
//! in its checkpoint, no file that may be published holds the key, and `--replayable-noise` (the
//! seed-derived key) replays exactly and says everywhere that it is not private.
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::cli::{data_root, dpgan, stdout_of};
use common::key_scan::{files_under, holds_key, run_key};
use dpgan::io::checkpoint::load_tensors;
use dpgan::{Device, Tensor};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mnist() -> String {
    s(&data_root().join("mnist"))
}

/// A short DP-CGAN run in `out`; returns stdout and stderr.
fn dp_cgan(out: &Path, extra: &[&str]) -> (String, String) {
    let (data, out) = (mnist(), s(out));
    let mut args = vec!["train", "dp-cgan", "--data", &data, "--out", &out, "--device", "cpu", "--batch-size", "64", "--seed", "5"];
    args.extend_from_slice(extra);
    let output = dpgan(&args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "dpgan {args:?} failed:\n{stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

fn resume_dp_cgan(run: &Path, steps: u64) -> (String, String) {
    let output = dpgan(&["train", "dp-cgan", "--resume", &s(run), "--steps", &steps.to_string(), "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "resuming {} failed:\n{stderr}", run.display());
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

fn checkpoint(run: &Path) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    load_tensors(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Whether every tensor of the two checkpoints is bit-identical.
fn same_tensors(a: &Path, b: &Path) -> bool {
    let ((ta, _), (tb, _)) = (checkpoint(a), checkpoint(b));
    ta.len() == tb.len() && ta.iter().all(|(name, t)| tb.get(name).is_some_and(|u| bits(t) == bits(u)))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn two_dp_cgan_runs_with_the_same_seed_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    dp_cgan(&a, &["--steps", "3"]);
    dp_cgan(&b, &["--steps", "3"]);
    let ((ta, _), (tb, _)) = (checkpoint(&a), checkpoint(&b));
    // The same seed: the same initial weights and latent draws, but other noise and batches.
    for name in ["discriminator.hidden.weight", "generator.hidden.weight"] {
        assert_ne!(bits(&ta[name]), bits(&tb[name]), "{name} equal in two runs of the same seed");
    }
    assert_ne!(run_key(&a).0, run_key(&b).0);
    let config = read_json(&a.join("config.json"));
    assert_eq!(config["noise_key"], "secret");
    assert_eq!(config["noise"], "Secure", "the hardened sampler is the default");
}

#[test]
fn a_run_copied_at_step_k_and_resumed_twice_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (first, copy) = (dir.path().join("first"), dir.path().join("copy"));
    dp_cgan(&first, &["--steps", "4"]);
    copy_dir(&first, &copy);
    resume_dp_cgan(&first, 9);
    resume_dp_cgan(&copy, 9);
    assert!(same_tensors(&first, &copy), "two resumptions of one checkpoint differ");
    assert_eq!(read_json(&first.join("checkpoint.json")), {
        let mut state = read_json(&copy.join("checkpoint.json"));
        state["wall_s"] = read_json(&first.join("checkpoint.json"))["wall_s"].clone();
        state
    });
}

#[test]
fn replayable_noise_replays_exactly_and_says_it_is_not_private() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fresh) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("fresh"));
    let (_, stderr) = dp_cgan(&a, &["--steps", "3", "--replayable-noise"]);
    assert!(stderr.contains("NOT PRIVATE"), "{stderr}");
    let (report, _) = dp_cgan(&b, &["--steps", "3", "--replayable-noise"]);
    assert!(report.contains("NOT PRIVATE"), "{report}");
    assert!(same_tensors(&a, &b), "two replayable runs of one seed differ");
    assert_eq!(read_json(&a.join("config.json"))["noise_key"], "replayable-from-seed-not-private");
    // A secret-key run of the same seed is not a replay of it.
    dp_cgan(&fresh, &["--steps", "3"]);
    assert!(!same_tensors(&a, &fresh));
    // The released set says so too.
    let out = dir.path().join("released");
    stdout_of(&["sample", "--run", &s(&a), "--count", "10", "--out", &s(&out), "--device", "cpu"]);
    let record = read_json(&out.join("sample.json"));
    assert_eq!(record["private"], false, "{record}");
    assert!(record["warning"].as_str().is_some_and(|w| w.contains("NOT PRIVATE")), "{record}");
    let out = dir.path().join("released-fresh");
    stdout_of(&["sample", "--run", &s(&fresh), "--count", "10", "--out", &s(&out), "--device", "cpu"]);
    let record = read_json(&out.join("sample.json"));
    assert_eq!(record["private"], true, "{record}");
    assert!(record.get("warning").is_none(), "{record}");
}

#[test]
fn no_publishable_file_or_output_holds_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (run, released) = (dir.path().join("run"), dir.path().join("released"));
    let (report, stderr) = dp_cgan(&run, &["--steps", "6", "--log-every", "2", "--checkpoint-every", "3", "--sample-every", "3"]);
    let (report2, stderr2) = resume_dp_cgan(&run, 8);
    let sampled = stdout_of(&["sample", "--run", &s(&run), "--count", "10", "--out", &s(&released), "--device", "cpu"]);
    let key = run_key(&run);
    let holds = |data: &[u8]| holds_key(&key, data);
    for text in [&report, &stderr, &report2, &stderr2, &sampled] {
        assert!(!holds(text.as_bytes()), "the key was printed:\n{text}");
    }
    let mut checked = 0;
    for path in files_under(&run).into_iter().chain(files_under(&released)) {
        if path.file_name().is_some_and(|n| n == "checkpoint.safetensors") {
            continue; // the one place the key lives
        }
        assert!(!holds(&fs::read(&path).unwrap()), "{} holds the run key", path.display());
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} files checked");
}

/// GS-WGAN: the choice of discriminator and the noise come from the key too.
mod gs_wgan {
    use super::*;

    fn warm_start(out: &Path) {
        common::cli::tiny_warm_start(out, 4, 4, 2);
    }

    fn phase_two(warm: &Path, out: &Path, extra: &[&str]) {
        let (warm, out) = (s(warm), s(out));
        let mut args =
            vec!["train", "gs-wgan", "--warm-start", &warm, "--out", &out, "--generator", "dcgan", "--device", "cpu", "--seed", "7"];
        args.extend_from_slice(extra);
        stdout_of(&args);
    }

    fn selected(run: &Path) -> Vec<u64> {
        fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["discriminator"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn same_seed_runs_differ_and_a_copied_run_resumes_bit_identical() {
        let dir = tempfile::tempdir().unwrap();
        let warm = dir.path().join("warm");
        warm_start(&warm);
        let runs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("run-{i}"))).collect();
        for run in &runs {
            phase_two(&warm, run, &["--iterations", "12", "--log-every", "1"]);
        }
        // 12 choices among 4 discriminators: three runs agreeing by chance has probability 4^-24.
        let choices: Vec<Vec<u64>> = runs.iter().map(|r| selected(r)).collect();
        assert!(choices[0] != choices[1] || choices[0] != choices[2], "the same seed chose the same discriminators: {choices:?}");
        assert!(!same_tensors(&runs[0], &runs[1]));

        let copy = dir.path().join("copy");
        copy_dir(&runs[0], &copy);
        for run in [&runs[0], &copy] {
            stdout_of(&["train", "gs-wgan", "--resume", &s(run), "--iterations", "14", "--device", "cpu"]);
        }
        assert!(same_tensors(&runs[0], &copy), "two resumptions of one checkpoint differ");
        assert_eq!(selected(&runs[0]), selected(&copy));
    }

    #[test]
    fn replayable_runs_replay_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let warm = dir.path().join("warm");
        warm_start(&warm);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for run in [&a, &b] {
            phase_two(&warm, run, &["--iterations", "3", "--replayable-noise", "--fast-noise"]);
        }
        assert!(same_tensors(&a, &b));
        let config = read_json(&a.join("config.json"));
        assert_eq!((config["noise_key"].as_str(), config["noise"].as_str()), (Some("replayable-from-seed-not-private"), Some("Fast")));
    }
}

/// DPSGD-GAN: the same key handling as DP-CGAN's (the run directory machinery is shared).
mod dpsgd_gan {
    use super::*;

    fn train(out: &Path, extra: &[&str]) {
        let (data, out) = (mnist(), s(out));
        let mut args = vec![
            "train",
            "dpsgd-gan",
            "--data",
            &data,
            "--out",
            &out,
            "--device",
            "cpu",
            "--width",
            "4",
            "--batch-size",
            "16",
            "--seed",
            "6",
        ];
        args.extend_from_slice(extra);
        stdout_of(&args);
    }

    #[test]
    fn same_seed_runs_differ_a_copied_run_resumes_bit_identical_and_no_release_holds_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, copy) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("copy"));
        for run in [&a, &b] {
            train(run, &["--d-steps", "4", "--d-steps-per-g-step", "2"]);
        }
        assert!(!same_tensors(&a, &b), "two runs of one seed drew the same noise and batches");
        assert_ne!(run_key(&a).0, run_key(&b).0);
        copy_dir(&a, &copy);
        for run in [&a, &copy] {
            stdout_of(&["train", "dpsgd-gan", "--resume", &s(run), "--d-steps", "7", "--device", "cpu"]);
        }
        assert!(same_tensors(&a, &copy), "two resumptions of one checkpoint differ");

        let released = dir.path().join("released");
        let sampled = stdout_of(&["sample", "--run", &s(&a), "--count", "10", "--out", &s(&released), "--device", "cpu"]);
        let (hex, bytes) = run_key(&a);
        let holds = |data: &[u8]| {
            String::from_utf8_lossy(data).to_lowercase().contains(&hex) || data.windows(bytes.len()).any(|w| w == bytes.as_slice())
        };
        assert!(!holds(sampled.as_bytes()));
        for path in files_under(&a).into_iter().chain(files_under(&released)) {
            if path.file_name().is_some_and(|n| n != "checkpoint.safetensors") {
                assert!(!holds(&fs::read(&path).unwrap()), "{} holds the run key", path.display());
            }
        }
    }
}

/// A checkpoint whose accountant is not what config.json's q and σ give after its steps is not
/// resumed: the privacy record is rebuilt from the settings, never taken on trust.
#[test]
fn a_checkpoint_with_a_tampered_accountant_is_refused() {
    use dpgan::io::checkpoint::save_tensors;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    dp_cgan(&run, &["--steps", "4"]);
    let (tensors, mut metadata) = checkpoint(&run);
    let mut state: Value = serde_json::from_str(&metadata["dpgan.state"]).unwrap();
    // Two of the four steps forgotten: ε would look smaller than what was spent.
    state["accountant"]["history"][0][1] = serde_json::json!(2);
    metadata.insert("dpgan.state".into(), state.to_string());
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_tensors(&run.join("checkpoint.safetensors"), &named, Some(metadata)).unwrap();
    let err = common::cli::stderr_of_failure(&["train", "dp-cgan", "--resume", &s(&run), "--steps", "6", "--device", "cpu"]);
    assert!(err.contains("accountant") && err.contains("config.json"), "{err}");
}
