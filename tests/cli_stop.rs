//! A long run meets a person: Ctrl-C and SIGTERM stop it with a checkpoint and the status that says
//! so, a run directory trains in one process at a time and is never shortened, bad numbers are
//! refused before anything is written, the wrong kind of directory gets a sentence, and the budget
//! stop has its own exit status.
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cli::{binary, data_root, dpgan, stdout_of};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mnist() -> String {
    s(&data_root().join("mnist"))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// `train dp-cgan` on MNIST into `run` on the CPU at batch size `batch`, then `extra`.
fn dp_cgan_args(run: &Path, batch: &str, extra: &[&str]) -> Vec<String> {
    let (data, run) = (mnist(), s(run));
    let args = ["train", "dp-cgan", "--data", &data, "--out", &run, "--device", "cpu", "--batch-size", batch];
    args.iter().chain(extra).map(|a| a.to_string()).collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A DP-CGAN training process far longer than the test, logging every 5 steps.
fn long_run(args: &[&str]) -> Child {
    Command::new(binary()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits until `path` has a line (the run took steps), at most a minute.
fn wait_for_line(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while fs::read_to_string(path).map_or(true, |t| t.lines().next().is_none()) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before logging");
        assert!(start.elapsed() < Duration::from_secs(60), "no metrics line within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (e.g. "INT") to `child` and returns its exit code and stderr.
fn signal_and_wait(child: Child, signal: &str) -> (Option<i32>, String) {
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} failed");
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn step_of(run: &Path) -> u64 {
    read_json(&run.join("checkpoint.json"))["step"].as_u64().unwrap()
}

#[test]
fn signals_stop_a_run_with_a_checkpoint_and_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = s(&run);
    let extra = ["--steps", "1000000", "--log-every", "5", "--checkpoint-every", "1000000", "--seed", "1"];
    let args = dp_cgan_args(&run, "64", &extra);
    let mut child = long_run(&strs(&args));
    wait_for_line(&run.join("metrics.jsonl"), &mut child);

    // While it trains, the directory is taken: a second process may not train in it.
    let out = dpgan(&["train", "dp-cgan", "--resume", &run_s, "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use"), "{err}");

    let (code, stderr) = signal_and_wait(child, "INT");
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("SIGINT") && stderr.contains(&format!("dpgan train dp-cgan --resume {run_s}")), "{stderr}");
    let first = step_of(&run);
    assert!(first >= 5, "stopped at step {first}, after at least one logged interval");

    // SIGTERM, as a scheduler preempts: the same, with 143.
    let mut child = long_run(&["train", "dp-cgan", "--resume", &run_s, "--device", "cpu"]);
    let metrics = run.join("metrics.jsonl");
    let lines = |p: &Path| fs::read_to_string(p).unwrap().lines().count();
    let before = lines(&metrics);
    let start = Instant::now();
    while lines(&metrics) == before {
        assert!(start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(), "the resumed run logged nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, stderr) = signal_and_wait(child, "TERM");
    assert_eq!(code, Some(143), "{stderr}");
    let second = step_of(&run);
    assert!(second > first, "the resumed run went on from {first}: {second}");

    // A run is never shortened; nothing is changed by the attempt.
    let config = fs::read(run.join("config.json")).unwrap();
    let out = dpgan(&["train", "dp-cgan", "--resume", &run_s, "--steps", "2", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--steps 2") && err.contains("cannot be shortened"), "{err}");
    assert_eq!(fs::read(run.join("config.json")).unwrap(), config);

    // And it finishes where asked, from its checkpoint.
    let total = (second + 3).to_string();
    stdout_of(&["train", "dp-cgan", "--resume", &run_s, "--steps", &total, "--device", "cpu"]);
    assert_eq!(step_of(&run), second + 3);
}

#[test]
fn bad_numbers_are_refused_by_name_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (data, out_s) = (mnist(), s(&out));
    for (flag, value) in [
        ("--d-lr", "nan"),
        ("--g-lr", "-1"),
        ("--noise-multiplier", "-1"),
        ("--noise-multiplier", "inf"),
        ("--clip", "0"),
        ("--delta", "2"),
        ("--target-epsilon", "inf"),
        ("--d-lr", "-0.1"),
    ] {
        let result = dpgan(&["train", "dp-cgan", "--data", &data, "--out", &out_s, "--device", "cpu", flag, value]);
        let err = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{flag} {value}: {err}");
        assert!(!out.exists(), "{flag} {value} wrote {}", out.display());
    }
}

#[test]
fn the_wrong_kind_of_directory_gets_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = s(&run);
    stdout_of(&strs(&dp_cgan_args(&run, "64", &["--steps", "2"])));
    for args in [
        vec!["train", "gs-wgan", "--resume", &run_s, "--device", "cpu"],
        vec!["train", "gs-wgan", "warm-start", "--resume", &run_s, "--device", "cpu"],
    ] {
        let out = dpgan(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("is a DP-CGAN run") && err.contains(&format!("dpgan train dp-cgan --resume {run_s}")), "{args:?}: {err}");
    }
    let other = s(&dir.path().join("g"));
    let out = dpgan(&["train", "gs-wgan", "--warm-start", &run_s, "--out", &other, "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a DP-CGAN run, not a GS-WGAN warm start"), "{err}");
}

#[test]
fn a_budget_stop_says_so_and_exits_with_3() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = dp_cgan_args(&run, "100", &["--steps", "400", "--noise-multiplier", "0.8", "--target-epsilon", "1.2"]);
    let out = dpgan(&strs(&args));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    // A sentence, not a debug dump of the mechanism.
    assert!(stdout.contains("would spend ε = ") && stdout.contains("past the budget ε = 1.2"), "{stdout}");
    assert!(!stdout.contains("SubsampledGaussian") && !stdout.contains("noise_multiplier:"), "{stdout}");
}

/// The data's path is recorded absolute, so a run resumes from any working directory.
#[test]
fn a_relative_data_path_still_resumes_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = Command::new(binary())
        .current_dir(data_root())
        .args(["train", "dp-cgan", "--data", "mnist", "--out", &s(&run), "--device", "cpu", "--batch-size", "64", "--steps", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = read_json(&run.join("config.json"));
    assert!(Path::new(config["data"]["dir"].as_str().unwrap()).is_absolute(), "{config}");
    let out = Command::new(binary())
        .current_dir(dir.path())
        .args(["train", "dp-cgan", "--resume", &s(&run), "--steps", "3", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The peak resident memory of `child` (VmHWM), read until it exits, and its output.
fn peak_memory_kb(mut child: Child) -> (u64, std::process::Output) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = fs::read_to_string(&status_path) {
            if let Some(kb) =
                status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            {
                peak = peak.max(kb);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (peak, child.wait_with_output().unwrap())
}

/// `dpgan sample` streams: a million images in bounded memory (they alone are 3.1 GB as f32).
#[test]
fn sampling_a_million_images_stays_under_512_mb() {
    let dir = tempfile::tempdir().unwrap();
    let (run, out) = (dir.path().join("run"), dir.path().join("released"));
    let run_s = s(&run);
    stdout_of(&strs(&dp_cgan_args(&run, "64", &["--steps", "1"])));
    let child = Command::new(binary())
        .args(["sample", "--run", &run_s, "--count", "1000000", "--format", "npy", "--out", &s(&out), "--device", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (peak_kb, output) = peak_memory_kb(child);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(peak_kb > 0 && peak_kb < 512 * 1024, "peak resident memory {peak_kb} kB");
    // The set is whole: a million images and labels, balanced.
    assert_eq!(fs::metadata(out.join("images.npy")).unwrap().len(), 128 + 1_000_000 * 784 * 4);
    let labels = fs::read(out.join("labels.npy")).unwrap();
    assert_eq!(labels.len(), 128 + 1_000_000);
    assert!((0..10u8).all(|c| labels[128..].iter().filter(|&&l| l == c).count() == 100_000));
}

/// Gathers `child`'s stderr as it comes, for a test to wait on a line; the text so far.
fn watch_stderr(child: &mut Child) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let stderr = child.stderr.take().expect("stderr is piped");
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    (text, reader)
}

/// A warm start stopped by SIGINT inside its group (the default checkpoint cadence, ten minutes,
/// never comes) checkpoints the group and exits with 130; `--resume` goes on from that iteration
/// and ends with the discriminators of a run never stopped, bit for bit.
#[test]
fn a_warm_start_stopped_inside_its_group_by_sigint_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, whole) = (dir.path().join("warm"), dir.path().join("whole"));
    let warm_s = s(&warm);
    let iterations = 12;
    let args = common::cli::tiny_warm_start_args(&warm, 2, 2, iterations);
    let mut child = long_run(&strs(&args));
    let (stderr, reader) = watch_stderr(&mut child);
    let start = Instant::now();
    // A progress line after every iteration: once the second is reported the group is under way.
    while !stderr.lock().unwrap().contains(&format!("group 0 · iteration 2/{iterations}")) {
        assert!(start.elapsed() < Duration::from_secs(120) && child.try_wait().unwrap().is_none(), "{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _) = signal_and_wait(child, "INT");
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains(&format!("dpgan train gs-wgan warm-start --resume {warm_s}")), "{stderr}");
    assert!(warm.join("discriminators/group-0000.partial.safetensors").is_file(), "no checkpoint of the group: {stderr}");
    assert!(!warm.join("discriminators/group-0000.safetensors").exists(), "the group finished before the signal: {stderr}");

    // The cadence is the run's, as every other setting.
    let out = dpgan(&["train", "gs-wgan", "warm-start", "--resume", &warm_s, "--checkpoint-every", "5"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("drop --checkpoint-every"));

    let out = dpgan(&["train", "gs-wgan", "warm-start", "--resume", &warm_s, "--device", "cpu"]);
    let resumed = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{resumed}");
    let from: u64 = resumed
        .split("continuing group 0 from its checkpoint at iteration ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the resumed run did not continue inside the group:\n{resumed}"));
    assert!((2..iterations).contains(&from), "continued from iteration {from}");
    assert!(!warm.join("discriminators/group-0000.partial.safetensors").exists());

    common::cli::tiny_warm_start(&whole, 2, 2, iterations);
    let file = "discriminators/group-0000.safetensors";
    assert_eq!(fs::read(warm.join(file)).unwrap(), fs::read(whole.join(file)).unwrap(), "resumed from iteration {from}");
}

/// A run killed before its first checkpoint (SIGKILL leaves no chance to write one) is started
/// again by the command that began it; `--resume` says so.
#[test]
fn a_run_killed_before_its_first_checkpoint_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = s(&run);
    let long = dp_cgan_args(&run, "64", &["--log-every", "5", "--steps", "1000000", "--checkpoint-every", "1000000"]);
    let mut child = long_run(&strs(&long));
    wait_for_line(&run.join("metrics.jsonl"), &mut child);
    let (code, _) = signal_and_wait(child, "KILL");
    assert_eq!(code, None, "killed by a signal");
    assert!(run.join("config.json").is_file() && !run.join("checkpoint.safetensors").exists());

    let out = dpgan(&["train", "dp-cgan", "--resume", &run_s, "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("start it again with the command that began it"), "{err}");

    let out = dpgan(&strs(&dp_cgan_args(&run, "64", &["--log-every", "5", "--steps", "5"])));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("stopped before its first checkpoint: starting it again"), "{err}");
    assert_eq!(step_of(&run), 5);
    let steps: Vec<u64> = fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [5], "the killed attempt's metrics are gone");
}

/// Reads `run`'s checkpoint.json while `child` trains until four checkpoints were seen: each at a
/// multiple of `every` (its `counter`: "step" or "iteration") and with the training time so far.
/// Then kills the run, before any check fails, so that a failure leaves no run behind.
fn assert_checkpoints_at_multiples_of(run: &Path, mut child: Child, every: u64, counter: &str) {
    let seen = checkpoints_seen(run, &mut child, every, counter);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let seen = seen.unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(status.code(), None, "killed by a signal after the checkpoints at {seen:?}");
}

fn checkpoints_seen(run: &Path, child: &mut Child, every: u64, counter: &str) -> Result<BTreeSet<u64>, String> {
    let (start, mut seen) = (Instant::now(), BTreeSet::new());
    while seen.len() < 4 {
        if child.try_wait().unwrap().is_some() {
            return Err(format!("the run ended after the checkpoints at {seen:?}"));
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("checkpoints seen in 120 s: {seen:?}"));
        }
        if let Ok(text) = fs::read_to_string(run.join("checkpoint.json")) {
            let state: Value = serde_json::from_str(&text).map_err(|e| format!("checkpoint.json: {e}"))?;
            let at = state[counter].as_u64().ok_or(format!("no {counter} in {state}"))?;
            if !at.is_multiple_of(every) {
                return Err(format!("a checkpoint at {counter} {at}"));
            }
            if !state["wall_s"].as_f64().is_some_and(|w| w > 0.0) {
                return Err(format!("a checkpoint without its training time: {state}"));
            }
            seen.insert(at);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(seen)
}

/// A running run checkpoints every --checkpoint-every steps and only there (what a crash falls
/// back to), each checkpoint with the training time so far: DP-SGD's loop (DP-CGAN, DPSGD-GAN)
/// and GS-WGAN's phase 2.
#[test]
fn a_running_run_checkpoints_at_multiples_of_checkpoint_every() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let long = dp_cgan_args(&run, "64", &["--log-every", "1000000", "--steps", "1000000", "--checkpoint-every", "3"]);
    assert_checkpoints_at_multiples_of(&run, long_run(&strs(&long)), 3, "step");

    let (warm, phase_two) = (dir.path().join("warm"), dir.path().join("phase-two"));
    common::cli::tiny_warm_start(&warm, 2, 2, 1);
    let (warm, phase_two_s) = (s(&warm), s(&phase_two));
    let args = ["train", "gs-wgan", "--warm-start", &warm, "--out", &phase_two_s, "--generator", "dcgan", "--device", "cpu"];
    let rest = ["--iterations", "1000000", "--log-every", "1000000", "--sample-every", "1000000", "--checkpoint-every", "2"];
    assert_checkpoints_at_multiples_of(&phase_two, long_run(&[&args[..], &rest[..]].concat()), 2, "iteration");
}
