//! `dpgan train gs-wgan` end to end on the CPU with real MNIST and tiny models (K = 4
//! discriminators in groups of 2, the DCGAN generator at a small width, 2-3 iterations): every
//! artefact written, both accountings reported and equal to the accountant's, a warm start resumed
//! without redoing a finished group, phase 2 resumed bit for bit, the budget obeyed, bad input refused.
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cli::{assert_interval_means, check_export, data_root, metrics_lines, stderr_of_failure, stdout_of};
use dpgan::data::{Dataset, Split};
use dpgan::io::checkpoint::{load_tensors, save_tensors};
use dpgan::io::synthetic::read_synthetic;
use dpgan::models::gswgan::GeneratorArch;
use dpgan::privacy::gswgan::GsWganRun;
use dpgan::privacy::{Accountant, Conversion, Mechanism, Orders};
use dpgan::train::gswgan::group_checkpoint::CheckpointEvery;
use dpgan::train::gswgan::group_size::GroupSize;
use dpgan::train::gswgan::run::{GsWganRunConfig, GsWganRunner, GsWganSettings, GsWganState};
use dpgan::train::gswgan::warm_start_run::{WarmStartOutcome, WarmStartRun, WarmStartRunConfig, WarmStartSettings};
use dpgan::train::interrupt::Signal;
use dpgan::train::progress::Progress;
use dpgan::{Device, Tensor};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    load_tensors(path, &Device::Cpu).unwrap().0
}

fn warm_start(out: &Path) -> String {
    common::cli::tiny_warm_start(out, 4, 2, 2)
}

fn phase_two(warm: &Path, out: &Path, extra: &[&str]) -> String {
    phase_two_with_status(warm, out, extra, 0)
}

/// Phase 2 that must exit with `code` (3: stopped at the ε budget).
fn phase_two_with_status(warm: &Path, out: &Path, extra: &[&str], code: i32) -> String {
    let (warm, out) = (s(warm), s(out));
    let mut args = vec!["train", "gs-wgan", "--warm-start", &warm, "--out", &out, "--generator", "dcgan", "--device", "cpu"];
    args.extend_from_slice(extra);
    common::cli::stdout_with_status(&args, code)
}

/// ε after `iterations` under each accounting, from the accountant directly.
fn expected(config: &GsWganRunConfig, iterations: u64) -> (f64, f64) {
    let run = GsWganRun { noise_multiplier: config.noise_multiplier, discriminators: 4, batch_size: 32 };
    let epsilon = |orders, conversion, mechanism| {
        let mut accountant = Accountant::new(orders, conversion, config.delta, None).unwrap();
        accountant.try_step(mechanism, iterations).unwrap().epsilon
    };
    (
        epsilon(Orders::Standard, Conversion::Classic, Mechanism::GsWganAsPublished(run)),
        epsilon(Orders::Fine, Conversion::Improved, Mechanism::GsWganPerStep(run)),
    )
}

/// Each critic of `state` is in the file the first checkpoint after its last selection wrote,
/// named by that checkpoint's iteration; `picked[t − 1]` is iteration t's critic, `checkpoints`
/// the iterations checkpointed (every `--checkpoint-every` and the last).
fn assert_written_at_checkpoints(state: &GsWganState, picked: &[u64], checkpoints: &[u64]) {
    for record in &state.critics {
        let last = picked.iter().rposition(|&j| j == record.index as u64).unwrap() as u64 + 1;
        let written = checkpoints.iter().find(|&&c| c >= last).unwrap();
        assert_eq!(record.file, format!("critic-{:04}-{written:08}.safetensors", record.index), "selections {picked:?}");
    }
}

/// The files under RUN/critics, sorted.
fn critic_files(run: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(run.join("critics")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_warm_start_writes_its_groups_and_a_resume_redoes_none_that_finished() {
    let dir = tempfile::tempdir().unwrap();
    let warm = dir.path().join("warm");
    let report = warm_start(&warm);
    assert!(report.contains("2 groups trained, 0 already done"), "{report}");

    let config: WarmStartRunConfig = serde_json::from_value(read_json(&warm.join("config.json"))).unwrap();
    assert_eq!((config.discriminators, config.group_size, config.iterations, config.seed, config.base), (4, 2, 2, 3, 4));
    assert_eq!(config.data.records, 60_000);
    let slices = config.slices(60_000).unwrap();
    assert_eq!(slices.iter().map(Vec::len).collect::<Vec<_>>(), [15_000; 4]);
    let lines = fs::read_to_string(warm.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4]);

    let (first, second) = (warm.join("discriminators/group-0000.safetensors"), warm.join("discriminators/group-0001.safetensors"));
    let group1 = tensors(&second);
    assert_eq!(group1["conv1.weight_orig"].shape()[0], 2, "two discriminators per group file");
    assert!(group1.values().all(|t| t.to_vec().unwrap().iter().all(|x| x.is_finite())));
    let (kept, redone) = (fs::read(&first).unwrap(), fs::read(&second).unwrap());
    let kept_time = fs::metadata(&first).unwrap().modified().unwrap();

    // An interrupted warm start: the second group never finished.
    fs::remove_file(&second).unwrap();
    let report = stdout_of(&["train", "gs-wgan", "warm-start", "--resume", &s(&warm), "--device", "cpu"]);
    assert!(report.contains("1 groups trained, 1 already done"), "{report}");
    assert_eq!(fs::metadata(&first).unwrap().modified().unwrap(), kept_time, "a finished group was rewritten");
    assert_eq!(fs::read(&first).unwrap(), kept);
    assert_eq!(fs::read(&second).unwrap(), redone, "the redone group differs from the first attempt");

    let err = stderr_of_failure(&["train", "gs-wgan", "warm-start", "--resume", &s(&warm), "--discriminators", "8"]);
    assert!(err.contains("--discriminators") && err.contains("config.json"), "{err}");
}

#[test]
fn phase_two_writes_every_artefact_and_reports_both_accountings() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, run) = (dir.path().join("warm"), dir.path().join("run"));
    warm_start(&warm);
    let report =
        phase_two(&warm, &run, &["--iterations", "3", "--seed", "5", "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "2"]);

    let config: GsWganRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert_eq!((config.iterations, config.discriminators, config.batch_size, config.base), (3, 4, 32, 4));
    assert_eq!((config.noise_multiplier, config.clip, config.delta), (1.07, 1.0, 1e-5), "docs/algorithms.md's defaults");
    assert_eq!(config.accounting, dpgan::train::gswgan::run::Accounting::PerStep);

    let lines: Vec<Value> =
        fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    for line in &lines {
        let step = line["step"].as_u64().unwrap();
        let (published, per_step) = expected(&config, step);
        assert_eq!(line["epsilon_as_published"].as_f64().unwrap(), published, "step {step}");
        assert_eq!(line["epsilon_per_step"].as_f64().unwrap(), per_step, "step {step}");
        assert_eq!(line["epsilon"].as_f64().unwrap(), per_step, "per-step governs by default");
        assert!(line["discriminator"].as_u64().unwrap() < 4);
        for key in ["d_loss", "g_loss", "wall_s", "steps_per_s"] {
            assert!(line[key].as_f64().is_some_and(f64::is_finite), "{key} in {line}");
        }
    }
    let (published, per_step) = expected(&config, 3);
    assert!(per_step > published, "the per-step accounting counts more: {per_step} vs {published}");
    assert!(
        report.contains(&format!("ε = {published:.4} as-published")) && report.contains(&format!("{per_step:.4} per-step")),
        "{report}"
    );

    let state: GsWganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert_eq!((state.iteration, state.generator_adam_steps, state.stopped.as_deref()), (3, 3, None));
    assert_eq!((state.epsilon_as_published, state.epsilon_per_step), (published, per_step));
    let checkpoint = tensors(&run.join("checkpoint.safetensors"));
    assert!(!state.critics.is_empty() && state.critics.iter().all(|c| c.adam_steps % 5 == 0 && c.adam_steps > 0));
    for name in checkpoint.keys() {
        assert!(checkpoint[name].to_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
    for prefix in ["generator.", "ema.", "generator_adam.m.", "generator_adam.v."] {
        assert!(checkpoint.keys().any(|k| k.starts_with(prefix)), "no {prefix}* in the checkpoint");
    }
    // Each selected critic in its own file, weights and Adam moments; no file the checkpoint does not name.
    assert_eq!(critic_files(&run), state.critics.iter().map(|c| c.file.clone()).collect::<Vec<_>>());
    let picked: Vec<u64> = lines.iter().map(|l| l["discriminator"].as_u64().unwrap()).collect();
    assert_written_at_checkpoints(&state, &picked, &[2, 3]);
    for record in &state.critics {
        let critic = tensors(&run.join("critics").join(&record.file));
        for prefix in ["conv1.", "adam.m.", "adam.v."] {
            assert!(critic.keys().any(|k| k.starts_with(prefix)), "no {prefix}* in {}", record.file);
        }
        assert!(critic.values().all(|t| t.to_vec().unwrap().iter().all(|v| v.is_finite())), "{}", record.file);
    }
    for step in [2, 3] {
        let png = run.join(format!("samples/step-{step:08}.png"));
        let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(&png).unwrap()));
        let info = decoder.read_info().unwrap().info().clone();
        // A 10 px margin (the widest digit, 8 px at a 14 px line, and a 2 px gap) labels the rows,
        // then 10 × 10 tiles of 28 px with 2 px gaps; 8-bit grayscale.
        assert_eq!((info.width, info.height), (312, 302), "labelled 10 × 10 tiles of 28 px with 2 px gaps");
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Eight));
    }

    // The released data comes from G_s and carries the run's ε: the one stored with G_s, even
    // with checkpoint.json lagging it as a crash between the two writes leaves it.
    let mut lagging = read_json(&run.join("checkpoint.json"));
    (lagging["iteration"], lagging["epsilon"], lagging["epsilon_per_step"]) = (2.into(), 0.5.into(), 0.5.into());
    fs::write(run.join("checkpoint.json"), lagging.to_string()).unwrap();
    let out = dir.path().join("synthetic");
    stdout_of(&["sample", "--run", &s(&run), "--count", "20", "--out", &s(&out), "--device", "cpu"]);
    let set = read_synthetic(&out).unwrap();
    assert_eq!(set.count, 20);
    for class in 0..10u8 {
        assert_eq!(set.labels.iter().filter(|&&l| l == class).count(), 2, "class {class}");
    }
    assert!(set.images.iter().all(|p| (0.0..=1.0).contains(p)));
    let record = read_json(&out.join("sample.json"));
    assert_eq!((record["algorithm"].as_str(), record["epsilon"].as_f64()), (Some("gs-wgan"), Some(per_step)));
    assert_eq!((record["checkpoint_step"].as_u64(), record["run"].as_str()), (Some(3), Some("run")));
    check_export(&run, dir.path(), 20);

    // A privacy record that is not config.json's settings after the iterations taken, in either
    // accounting alone, is not resumed: the run would continue from a budget it did not spend.
    let checkpoint = run.join("checkpoint.safetensors");
    let (tensors, mut metadata) = load_tensors(&checkpoint, &Device::Cpu).unwrap();
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let run_s = s(&run);
    for accounting in ["as_published", "per_step"] {
        let mut state: Value = serde_json::from_str(&metadata["dpgan.state"]).unwrap();
        let count = &mut state[accounting]["history"][0][1];
        assert_eq!(count.as_u64(), Some(3), "{accounting}: {state}");
        *count = 2.into();
        let mut tampered = metadata.clone();
        tampered.insert("dpgan.state".into(), state.to_string());
        save_tensors(&checkpoint, &named, Some(tampered)).unwrap();
        let err = stderr_of_failure(&["train", "gs-wgan", "--resume", &run_s, "--iterations", "4", "--device", "cpu"]);
        assert!(err.contains("privacy record does not match its settings"), "{accounting}: {err}");
    }

    // A checkpoint of format 2 recorded a per-step ε that does not hold: neither sampled nor resumed.
    let state = metadata.get_mut("dpgan.state").expect("the state in the metadata");
    assert!(state.contains("\"format\": 3"), "{state}");
    *state = state.replace("\"format\": 3", "\"format\": 2");
    save_tensors(&checkpoint, &named, Some(metadata)).unwrap();
    let again_s = s(&dir.path().join("again"));
    for args in [
        vec!["sample", "--run", &run_s, "--count", "20", "--out", &again_s, "--device", "cpu"],
        vec!["train", "gs-wgan", "--resume", &run_s, "--iterations", "4", "--device", "cpu"],
    ] {
        let err = stderr_of_failure(&args);
        assert!(err.contains("format 2") && err.contains("train phase 2 again"), "{args:?}: {err}");
    }
}

#[test]
fn a_resumed_phase_two_ends_with_the_same_tensors_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, straight, split) = (dir.path().join("warm"), dir.path().join("straight"), dir.path().join("split"));
    warm_start(&warm);
    // Replayable noise, so that an uninterrupted run of the same seed is the reference.
    let common = ["--seed", "7", "--log-every", "1", "--checkpoint-every", "1", "--sample-every", "10", "--replayable-noise"];
    phase_two(&warm, &straight, &[&common[..], &["--iterations", "3"]].concat());
    phase_two(&warm, &split, &[&common[..], &["--iterations", "2"]].concat());
    // What a crash between writing a critic file and the checkpoint that names it leaves behind:
    // a file no checkpoint names. The resumed run ignores it and the next checkpoint removes it.
    fs::write(split.join("critics/critic-0003-00000003.safetensors"), b"left by an interrupted checkpoint").unwrap();
    let before: GsWganState = serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap();
    stdout_of(&["train", "gs-wgan", "--resume", &s(&split), "--iterations", "3", "--device", "cpu"]);

    let (a, b) = (tensors(&straight.join("checkpoint.safetensors")), tensors(&split.join("checkpoint.safetensors")));
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    assert_eq!(names, {
        let mut n: Vec<&String> = b.keys().collect();
        n.sort();
        n
    });
    for name in names {
        assert_eq!(bits(&a[name]), bits(&b[name]), "{name} differs after resuming");
    }
    let (sa, sb): (GsWganState, GsWganState) = (
        serde_json::from_value(read_json(&straight.join("checkpoint.json"))).unwrap(),
        serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap(),
    );
    assert_eq!((sa.iteration, sa.epsilon, sa.epsilon_as_published), (sb.iteration, sb.epsilon, sb.epsilon_as_published));
    // Training time adds up over the processes.
    assert!(before.wall_s > 0.0 && sb.wall_s > before.wall_s, "{} s, then {} s", before.wall_s, sb.wall_s);
    // The critics too: the same ones selected, with the same weights, moments and batch positions.
    let positions = |s: &GsWganState| s.critics.iter().map(|c| (c.index, c.adam_steps, c.passes, c.position)).collect::<Vec<_>>();
    assert_eq!(positions(&sa), positions(&sb));
    for (ca, cb) in sa.critics.iter().zip(&sb.critics) {
        let (a, b) = (tensors(&straight.join("critics").join(&ca.file)), tensors(&split.join("critics").join(&cb.file)));
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            assert_eq!(bits(t), bits(&b[name]), "critic {} {name} differs after resuming", ca.index);
        }
    }
    // A checkpoint every iteration rewrote only the critic each iteration trained, and the
    // superseded versions are gone: a critic's file carries the iteration of its last selection.
    let picked: Vec<u64> = fs::read_to_string(straight.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["discriminator"].as_u64().unwrap())
        .collect();
    assert_eq!(picked.len(), 3);
    for record in &sa.critics {
        let last = picked.iter().rposition(|&j| j == record.index as u64).unwrap() + 1;
        assert_eq!(record.file, format!("critic-{:04}-{last:08}.safetensors", record.index));
    }
    assert_eq!(critic_files(&straight), sa.critics.iter().map(|c| c.file.clone()).collect::<Vec<_>>());
    assert_eq!(critic_files(&split), sb.critics.iter().map(|c| c.file.clone()).collect::<Vec<_>>());

    let err = stderr_of_failure(&["train", "gs-wgan", "--resume", &s(&split), "--noise-multiplier", "2"]);
    assert!(err.contains("--noise-multiplier") && err.contains("config.json"), "{err}");

    // A run is never shortened, and the attempt changes nothing; asking for the iterations it has
    // taken is no change and is accepted.
    let config = fs::read(split.join("config.json")).unwrap();
    for fewer in ["0", "1", "2"] {
        let err = stderr_of_failure(&["train", "gs-wgan", "--resume", &s(&split), "--iterations", fewer, "--device", "cpu"]);
        assert!(err.contains(&format!("--iterations {fewer} is below the 3 iterations")) && err.contains("cannot be shortened"), "{err}");
        assert_eq!(fs::read(split.join("config.json")).unwrap(), config);
    }
    stdout_of(&["train", "gs-wgan", "--resume", &s(&split), "--iterations", "3", "--device", "cpu"]);
    let state: GsWganState = serde_json::from_value(read_json(&split.join("checkpoint.json"))).unwrap();
    assert_eq!((state.iteration, state.epsilon), (3, sb.epsilon));
}

/// The checkpoint's tensors, the critics' records and every critic file of two phase-2 runs are
/// equal bit for bit.
fn assert_same_phase_two(what: &str, a: &Path, b: &Path) {
    let (ta, tb) = (tensors(&a.join("checkpoint.safetensors")), tensors(&b.join("checkpoint.safetensors")));
    assert_eq!(ta.len(), tb.len(), "{what}");
    for (name, t) in &ta {
        assert_eq!(bits(t), bits(&tb[name]), "{what}: {name}");
    }
    let (sa, sb): (GsWganState, GsWganState) = (
        serde_json::from_value(read_json(&a.join("checkpoint.json"))).unwrap(),
        serde_json::from_value(read_json(&b.join("checkpoint.json"))).unwrap(),
    );
    let positions = |s: &GsWganState| s.critics.iter().map(|c| (c.index, c.adam_steps, c.passes, c.position)).collect::<Vec<_>>();
    assert_eq!((sa.iteration, positions(&sa)), (sb.iteration, positions(&sb)), "{what}");
    for (ca, cb) in sa.critics.iter().zip(&sb.critics) {
        let (x, y) = (tensors(&a.join("critics").join(&ca.file)), tensors(&b.join("critics").join(&cb.file)));
        assert_eq!(x.len(), y.len(), "{what}");
        for (name, t) in &x {
            assert_eq!(bits(t), bits(&y[name]), "{what}: critic {} {name}", ca.index);
        }
    }
}

/// `cuda_graph` runs each iteration on a working critic (the selected one copied in and out), on
/// the CPU bound to its plan of per-step values where a capture could be: the run ends where the
/// run without it ends, bit for bit, whether it starts that way or is switched on at a resume.
/// The CLI refuses `--cuda-graph` and `--tf32` on the CPU (the library starts the graphed run),
/// and a TF32 run's resume there.
#[test]
fn phase_two_on_a_working_critic_ends_bit_for_bit_where_the_plain_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, plain, graphed, switched) =
        (dir.path().join("warm"), dir.path().join("plain"), dir.path().join("graphed"), dir.path().join("switched"));
    warm_start(&warm);
    let common = ["--seed", "7", "--log-every", "1", "--checkpoint-every", "2", "--sample-every", "10", "--replayable-noise"];
    phase_two(&warm, &plain, &[&common[..], &["--iterations", "6"]].concat());
    let err = stderr_of_failure(
        &[&["train", "gs-wgan", "--warm-start", &s(&warm), "--out", &s(&graphed), "--device", "cpu", "--cuda-graph"][..], &common[..]]
            .concat(),
    );
    assert!(err.contains("--cuda-graph needs a CUDA device"), "{err}");
    let err = stderr_of_failure(
        &[&["train", "gs-wgan", "--warm-start", &s(&warm), "--out", &s(&graphed), "--device", "cpu", "--tf32"][..], &common[..]].concat(),
    );
    assert!(err.contains("--tf32 needs a CUDA device"), "{err}");
    assert!(!graphed.exists(), "a refused run left its directory");

    let settings = GsWganSettings {
        warm_start: warm.clone(),
        seed: 7,
        iterations: 6,
        generator: GeneratorArch::Dcgan,
        replayable_noise: true,
        log_every: 1,
        sample_every: 10,
        checkpoint_every: 2,
        cuda_graph: true,
        ..GsWganSettings::default()
    };
    let config = GsWganRunConfig::plan(&settings, &Device::Cpu).unwrap();
    assert!(config.cuda_graph);
    let mut run = GsWganRunner::start(&graphed, config, &Device::Cpu).unwrap();
    run.train(&Progress::new(0, 6)).unwrap();
    let counts = run.iteration_counts().expect("iterations on the working critic");
    assert_eq!(counts.eager + counts.bound, 6, "{counts:?}");
    assert!(counts.bound > 0, "no iteration was bound to its plan: {counts:?}");
    drop(run);
    assert_same_phase_two("started with cuda_graph", &plain, &graphed);
    let recorded: GsWganRunConfig = serde_json::from_value(read_json(&graphed.join("config.json"))).unwrap();
    assert!(recorded.cuda_graph, "the choice is recorded");

    // Three plain iterations, then the rest on the working critic.
    phase_two(&warm, &switched, &[&common[..], &["--iterations", "3"]].concat());
    let mut config = read_json(&switched.join("config.json"));
    assert!(config.get("cuda_graph").is_none(), "a run without it records nothing");
    config["cuda_graph"] = Value::Bool(true);
    fs::write(switched.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut run = GsWganRunner::resume(&switched, &Device::Cpu, Some(6)).unwrap();
    run.train(&Progress::new(3, 6)).unwrap();
    drop(run);
    assert_same_phase_two("switched on at a resume", &plain, &switched);

    // A TF32 run (config.json says so) resumes only where TF32 exists.
    config["tf32"] = Value::Bool(true);
    fs::write(switched.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let err = stderr_of_failure(&["train", "gs-wgan", "--resume", &s(&switched), "--iterations", "7", "--device", "cpu"]);
    assert!(err.contains("trains with TF32") && err.contains("CUDA device"), "{err}");
}

/// Phase 2 trains with the warm start's batch size B, the one its accountant counts: every
/// selected critic steps through B records per critic step, and ε is that of B.
#[test]
fn phase_two_trains_with_the_batch_size_of_its_warm_start() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, run) = (dir.path().join("warm"), dir.path().join("run"));
    let mut args = common::cli::tiny_warm_start_args(&warm, 4, 2, 2);
    args.extend(["--batch-size".to_string(), "16".to_string()]);
    stdout_of(&args.iter().map(String::as_str).collect::<Vec<_>>());
    phase_two(&warm, &run, &["--iterations", "3", "--seed", "5"]);
    let config: GsWganRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert_eq!(config.batch_size, 16);
    let state: GsWganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    let run16 = GsWganRun { noise_multiplier: config.noise_multiplier, discriminators: 4, batch_size: 16 };
    let mut accountant = Accountant::new(Orders::Fine, Conversion::Improved, config.delta, None).unwrap();
    assert_eq!(state.epsilon_per_step, accountant.try_step(Mechanism::GsWganPerStep(run16), 3).unwrap().epsilon);
    // 5 critic steps of 16 records per selection, from a fresh pass over a slice of 15,000.
    let handed_out: usize = state.critics.iter().map(|c| c.position).sum();
    assert_eq!(handed_out, 3 * 5 * 16, "{:?}", state.critics);
    assert!(state.critics.iter().all(|c| c.passes == 1 && c.position % 80 == 0), "{:?}", state.critics);
}

/// metrics.jsonl's losses are means over the iterations since the last line (and the rate is
/// those iterations over their wall time): one run that logs every iteration and one of the same
/// seed and noise that logs every third agree.
#[test]
fn logged_losses_are_means_over_the_logging_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, every_run, third_run) = (dir.path().join("warm"), dir.path().join("every"), dir.path().join("third"));
    warm_start(&warm);
    let common = ["--seed", "7", "--iterations", "4", "--replayable-noise"];
    phase_two(&warm, &every_run, &[&common[..], &["--log-every", "1"]].concat());
    phase_two(&warm, &third_run, &[&common[..], &["--log-every", "3", "--checkpoint-every", "2"]].concat());
    let every = metrics_lines(&every_run);
    assert_interval_means(&every, &metrics_lines(&third_run), "iteration");
    // Checkpoints at iterations 2 and 4 only. The key is the seed's, so the selections are the
    // same in both runs, and they test this: a critic last selected at 1 or 3 (which a checkpoint
    // at every iteration would name so), one last selected before 4 (which a checkpoint only at
    // the end would name 4).
    let picked: Vec<u64> = every.iter().map(|l| l["discriminator"].as_u64().unwrap()).collect();
    let last = |j: u64| picked.iter().rposition(|&p| p == j).unwrap() + 1;
    assert!(picked.iter().any(|&j| last(j) % 2 == 1) && picked.iter().any(|&j| last(j) < 4), "selections {picked:?}");
    let state: GsWganState = serde_json::from_value(read_json(&third_run.join("checkpoint.json"))).unwrap();
    assert_written_at_checkpoints(&state, &picked, &[2, 4]);
}

#[test]
fn the_governing_budget_stops_phase_two_before_it_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, run) = (dir.path().join("warm"), dir.path().join("run"));
    warm_start(&warm);
    // Under the as-published accounting, a budget between the ε of one and of two iterations.
    let probe = GsWganRun { noise_multiplier: 1.07, discriminators: 4, batch_size: 32 };
    let at = |n| {
        let mut accountant = Accountant::new(Orders::Standard, Conversion::Classic, 1e-5, None).unwrap();
        accountant.try_step(Mechanism::GsWganAsPublished(probe), n).unwrap().epsilon
    };
    let budget = 0.5 * (at(1) + at(2));
    let report = phase_two_with_status(
        &warm,
        &run,
        &[
            "--iterations",
            "3",
            "--seed",
            "1",
            "--accounting",
            "as-published",
            "--noise-multiplier",
            "1.07",
            "--target-epsilon",
            &budget.to_string(),
        ],
        3,
    );
    assert!(report.contains("stopped at iteration 1 of 3"), "{report}");
    let state: GsWganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert_eq!(state.iteration, 1);
    assert_eq!(state.epsilon, at(1));
    assert!(state.epsilon <= budget && state.stopped.as_deref().is_some_and(|s| s.contains("before iteration 2")), "{state:?}");
}

#[test]
fn a_target_epsilon_alone_calibrates_sigma_under_the_governing_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, run) = (dir.path().join("warm"), dir.path().join("run"));
    warm_start(&warm);
    // Two iterations of phase 2 into `out`, σ calibrated to `target`.
    let calibrated = |out: &Path, target: &str| {
        let (warm_s, out_s) = (s(&warm), s(out));
        let args = ["--warm-start", &warm_s, "--out", &out_s, "--generator", "dcgan", "--device", "cpu", "--iterations", "2"];
        common::cli::dpgan(&[&["train", "gs-wgan"], &args[..], &["--seed", "4", "--target-epsilon", target]].concat())
    };
    let target = 40.0;
    let output = calibrated(&run, &target.to_string());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("(calibrated to ε = 40 under per-step)") && stderr.contains("per-step governs"), "{stderr}");
    let config: GsWganRunConfig = serde_json::from_value(read_json(&run.join("config.json"))).unwrap();
    assert!(config.noise_multiplier_calibrated);
    let per_step_at = |sigma: f64| {
        let run = GsWganRun { noise_multiplier: sigma, discriminators: 4, batch_size: 32 };
        let mut accountant = Accountant::new(Orders::Fine, Conversion::Improved, 1e-5, None).unwrap();
        accountant.try_step(Mechanism::GsWganPerStep(run), 2).unwrap().epsilon
    };
    let sigma = config.noise_multiplier;
    assert!(per_step_at(sigma) <= target, "σ = {sigma} spends {} > {target}", per_step_at(sigma));
    let smaller = (sigma as f32).next_down() as f64;
    assert!(per_step_at(smaller) > target, "σ = {sigma} is not the smallest f32 within the budget");
    let state: GsWganState = serde_json::from_value(read_json(&run.join("checkpoint.json"))).unwrap();
    assert_eq!((state.iteration, state.stopped.as_deref()), (2, None), "the whole plan fits the budget it was calibrated to");

    // Targets on both sides of σ = 1, where calibration first doubles its bracket up or halves it
    // down: each σ is still the smallest f32 within the target.
    for (target, side) in [(2.0, "above 1"), (5000.0, "below 0.5")] {
        let settings = GsWganSettings {
            warm_start: warm.clone(),
            iterations: 2,
            noise_multiplier: None,
            target_epsilon: Some(target),
            ..GsWganSettings::default()
        };
        let sigma = GsWganRunConfig::plan(&settings, &Device::Cpu).unwrap().noise_multiplier;
        assert!(if side == "above 1" { sigma > 1.0 } else { sigma < 0.5 }, "ε = {target}: σ = {sigma} is not {side}");
        assert!(per_step_at(sigma) <= target, "ε = {target}: σ = {sigma} spends {}", per_step_at(sigma));
        let smaller = (sigma as f32).next_down() as f64;
        assert!(per_step_at(smaller) > target, "ε = {target}: σ = {sigma} is not the smallest f32 within it");
    }

    // A target no σ reaches (at δ = 1e-5 the conversion alone costs ~0.02 at the largest order):
    // calibration gives up at σ = 1e6 with the reason, and nothing is written.
    let unreachable = dir.path().join("unreachable");
    let output = calibrated(&unreachable, "0.001");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no noise multiplier up to 1e6 reaches ε = 0.001"), "{stderr}");
    assert!(!unreachable.exists(), "a refused plan wrote its run directory");
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = s(&data_root().join("mnist"));
    let out = dir.path().join("never");
    let err = stderr_of_failure(&["train", "gs-wgan", "warm-start", "--data", &data, "--out", &s(&out), "--discriminators", "0"]);
    assert!(err.contains("--discriminators"), "{err}");
    let err = stderr_of_failure(&[
        "train",
        "gs-wgan",
        "warm-start",
        "--data",
        &data,
        "--out",
        &s(&out),
        "--discriminators",
        "4000",
        "--batch-size",
        "32",
    ]);
    assert!(err.contains("--batch-size"), "{err}");
    for bad in ["0", "lots"] {
        let err = stderr_of_failure(&["train", "gs-wgan", "warm-start", "--data", &data, "--out", &s(&out), "--group-size", bad]);
        assert!(err.contains("--group-size") && err.contains("auto"), "{bad}: {err}");
    }
    let err = stderr_of_failure(&["train", "gs-wgan", "warm-start", "--data", &data, "--out", &s(&out), "--device", "cpu", "--tf32"]);
    assert!(err.contains("--tf32 needs a CUDA device"), "{err}");
    assert!(!out.exists(), "a refused run left {}", out.display());

    let err = stderr_of_failure(&["train", "gs-wgan", "--out", &s(&out)]);
    assert!(err.contains("--warm-start"), "{err}");
    // A directory that is not a warm start.
    fs::create_dir_all(dir.path().join("empty")).unwrap();
    let err = stderr_of_failure(&["train", "gs-wgan", "--warm-start", &s(&dir.path().join("empty")), "--out", &s(&out), "--seed", "1"]);
    assert!(err.contains("config.json"), "{err}");
    assert!(!out.exists(), "a refused run left {}", out.display());
}

/// A tiny warm start of `discriminators` in groups of `group_size` on MNIST through the library,
/// in `out`, checkpointing its group under way every `every` iterations.
fn library_warm_start(out: &Path, data: &Dataset, seed: u64, shape: (usize, usize, u64), every: u64) -> WarmStartRun {
    let (discriminators, group_size, iterations) = shape;
    let settings = WarmStartSettings {
        seed,
        discriminators,
        group_size: GroupSize::Fixed(group_size),
        iterations,
        generator: GeneratorArch::Dcgan,
        base: 4,
        batch_size: 32,
        checkpoint_every: CheckpointEvery::Iterations(every),
        tf32: false,
    };
    let config = WarmStartRunConfig::plan(&settings, data, &Device::Cpu).unwrap();
    WarmStartRun::start(out, config, data, &Device::Cpu).unwrap()
}

fn mnist_train() -> Dataset {
    Dataset::load(&data_root().join("mnist"), Split::Train).unwrap()
}

/// Trains `run` to its end (no stop); its outcome.
fn finish(run: &mut WarmStartRun) -> WarmStartOutcome {
    let total = run.config().discriminators as u64 * run.config().iterations;
    run.train_until(&Progress::new(run.iterations_done(), total), &mut || None).unwrap()
}

/// `WarmStartRun::resume`'s error, which there must be.
fn resume_error(root: &Path) -> String {
    match WarmStartRun::resume(root, &Device::Cpu) {
        Ok(_) => panic!("{} resumed", root.display()),
        Err(e) => e.to_string(),
    }
}

/// config.json records whether a warm start trains with TF32: a run from before the flag (no
/// `tf32`) reads as f32, and a TF32 run is not resumed on the CPU, which would quietly change its
/// arithmetic.
#[test]
fn a_warm_start_records_tf32_and_resumes_a_tf32_run_only_on_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_train();
    let out = dir.path().join("run");
    drop(library_warm_start(&out, &data, 5, (2, 2, 1), 1));
    let path = out.join("config.json");
    let mut config: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(config["tf32"], Value::Bool(false));
    config.as_object_mut().unwrap().remove("tf32");
    fs::write(&path, config.to_string()).unwrap();
    assert!(!WarmStartRun::resume(&out, &Device::Cpu).unwrap().config().tf32, "no record is f32");
    config["tf32"] = Value::Bool(true);
    fs::write(&path, config.to_string()).unwrap();
    let err = resume_error(&out);
    assert!(err.contains("TF32") && err.contains("CUDA device"), "{err}");
}

/// Copies the run directory `from` (files one level down at most) to `to`, as a process killed at
/// that moment would have left it.
fn snapshot(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().map(Result::unwrap) {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            snapshot(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A warm start stopped inside its second group (by `train_until`'s stop, where a signal would
/// stop it) and resumed ends with the discriminators of a run never stopped, bit for bit; so does
/// one killed (no chance to save) after the group's last periodic checkpoint. The group's weights,
/// optimizer moments, batch positions and iteration come back, and iteration t draws t's values.
#[test]
fn a_warm_start_stopped_inside_a_group_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_train();
    let (whole, stopped, killed) = (dir.path().join("whole"), dir.path().join("stopped"), dir.path().join("killed"));
    let shape = (4, 2, 5);
    finish(&mut library_warm_start(&whole, &data, 3, shape, 2));

    // stop() is asked before each group and after every iteration of one but its last: its 9th
    // call comes after iteration 3 of group 1, when the periodic checkpoint holds iteration 2.
    let mut run = library_warm_start(&stopped, &data, 3, shape, 2);
    let mut calls = 0;
    let outcome = run
        .train_until(&Progress::new(0, 20), &mut || {
            calls += 1;
            (calls == 9).then(|| {
                snapshot(&stopped, &killed);
                Signal::Interrupt
            })
        })
        .unwrap();
    drop(run);
    assert_eq!((outcome.interrupted, outcome.checkpointed, outcome.groups_trained), (Some(Signal::Interrupt), Some((1, 3)), 1));
    let partial = stopped.join("discriminators/group-0001.partial.safetensors");
    assert!(partial.is_file() && !stopped.join("discriminators/group-0001.safetensors").exists());
    // Nothing secret or new in the run's JSON: the record lives in the checkpoint only.
    assert!(!fs::read_to_string(stopped.join("config.json")).unwrap().contains("position"));

    for (run_dir, iteration) in [(&stopped, 3), (&killed, 2)] {
        let mut run = WarmStartRun::resume(run_dir, &Device::Cpu).unwrap();
        assert_eq!(run.iterations_done(), 2 * 5 + 2 * iteration, "{}: group 0 done, group 1 at iteration {iteration}", run_dir.display());
        let outcome = finish(&mut run);
        assert_eq!((outcome.groups_trained, outcome.groups_skipped, outcome.interrupted), (1, 1, None));
        for group in ["group-0000", "group-0001"] {
            let file = format!("discriminators/{group}.safetensors");
            assert_eq!(fs::read(run_dir.join(&file)).unwrap(), fs::read(whole.join(&file)).unwrap(), "{}: {file}", run_dir.display());
        }
        assert!(!run_dir.join("discriminators/group-0001.partial.safetensors").exists(), "a finished group's checkpoint is deleted");
        let lines: Vec<Value> =
            fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().map(|l| l["group"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
    }
}

/// A group checkpoint that is damaged, of another run, or not of this run's models is refused when
/// the run resumes, before anything trains, by a sentence naming the file and the cause; the file
/// is left as it was.
#[test]
fn a_bad_group_checkpoint_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_train();
    let stop_after_first_iteration = || {
        let mut calls = 0;
        move || {
            calls += 1;
            (calls == 2).then_some(Signal::Terminate)
        }
    };
    let mut runs = Vec::new();
    for seed in [3, 4] {
        let root = dir.path().join(format!("seed-{seed}"));
        let mut run = library_warm_start(&root, &data, seed, (2, 2, 3), 100);
        let outcome = run.train_until(&Progress::new(0, 6), &mut stop_after_first_iteration()).unwrap();
        assert_eq!(outcome.checkpointed, Some((0, 1)));
        runs.push(root);
    }
    let name = "discriminators/group-0000.partial.safetensors";
    let case = |label: &str, write: &dyn Fn(&Path)| -> (PathBuf, String) {
        let root = dir.path().join(label);
        snapshot(&runs[0], &root);
        write(&root.join(name));
        let before = fs::read(root.join(name)).unwrap();
        let err = resume_error(&root);
        assert!(err.contains(&s(&root.join(name))) && err.contains("delete it to train the group again"), "{label}: {err}");
        assert_eq!(fs::read(root.join(name)).unwrap(), before, "{label}: the file was changed");
        (root, err)
    };

    let (damaged, err) = case("truncated", &|path| {
        let bytes = fs::read(path).unwrap();
        fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(err.contains("is damaged"), "{err}");
    // The command line says the same, as an error line.
    let err = common::cli::error_of(&["train", "gs-wgan", "warm-start", "--resume", &s(&damaged), "--device", "cpu"]);
    assert!(err.contains("is damaged") && err.contains(name), "{err}");

    let (_, err) = case("another-run", &|path| {
        fs::copy(runs[1].join(name), path).unwrap();
    });
    assert!(err.contains("was written with seed 4, this run's is 3: it belongs to another run"), "{err}");

    let (_, err) = case("missing-tensor", &|path| {
        let (mut tensors, metadata) = load_tensors(path, &Device::Cpu).unwrap();
        let victim = tensors.keys().filter(|k| k.starts_with("generators.")).min().unwrap().clone();
        tensors.remove(&victim);
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_tensors(path, &named, Some(metadata)).unwrap();
    });
    assert!(err.contains("does not fit this run's group: it lacks generators."), "{err}");

    // A group's finished file is never a checkpoint to continue from.
    let (_, err) = case("not-a-checkpoint", &|path| {
        let (tensors, _) = load_tensors(path, &Device::Cpu).unwrap();
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_tensors(path, &named, None).unwrap();
    });
    assert!(err.contains("not a dpgan group checkpoint"), "{err}");
}

/// `--checkpoint-every` takes iterations or a wall time and refuses anything else by name.
#[test]
fn checkpoint_every_reads_iterations_or_a_wall_time() {
    for (text, every) in [
        ("500", CheckpointEvery::Iterations(500)),
        ("30s", CheckpointEvery::Seconds(30)),
        ("10m", CheckpointEvery::Seconds(600)),
        ("2h", CheckpointEvery::Seconds(7200)),
    ] {
        assert_eq!(text.parse::<CheckpointEvery>().unwrap(), every);
        assert_eq!(every.to_string(), text, "config.json records the flag's spelling");
    }
    for bad in ["0", "0m", "", "m", "10d", "-5", "1.5h", "99999999999999999999h"] {
        let err = bad.parse::<CheckpointEvery>().unwrap_err().to_string();
        assert!(err.contains("--checkpoint-every"), "{bad:?}: {err}");
    }
    assert_eq!(CheckpointEvery::default(), CheckpointEvery::Seconds(600));
    assert!(CheckpointEvery::Iterations(3).due(6, Duration::ZERO) && !CheckpointEvery::Iterations(3).due(7, Duration::from_secs(1 << 20)));
    assert!(CheckpointEvery::Seconds(60).due(1, Duration::from_secs(60)) && !CheckpointEvery::Seconds(60).due(1, Duration::from_secs(59)));
}

/// `--group-size auto` on a GPU: the probe's peak grows with the group, and the size chosen fits the
/// budget by the measured line, capped by K.
#[test]
fn auto_group_size_measures_the_probe_and_fits_the_free_memory() {
    use dpgan::train::gswgan::group_size::{auto_group_size, probe_peak, GroupFootprint, ProbeShape, FREE_FRACTION, PROBE_MEMBERS};
    common::on_cuda("auto_group_size_measures_the_probe_and_fits_the_free_memory", |dev| {
        let shape = ProbeShape { arch: GeneratorArch::Resnet, base: 8, batch_size: 8 };
        let one = probe_peak(shape, 1, dev).unwrap().expect("a stream-ordered pool to measure");
        let many = probe_peak(shape, PROBE_MEMBERS, dev).unwrap().unwrap();
        assert!(many > one && one > 0, "peaks: 1 member {one} B, {PROBE_MEMBERS} members {many} B");
        assert_eq!(auto_group_size(shape, 3, dev).unwrap().size, 3, "a tiny group fits any GPU: K caps it");
        let choice = auto_group_size(shape, usize::MAX, dev).unwrap();
        let footprint = GroupFootprint::from_peaks(one, many, PROBE_MEMBERS).unwrap();
        let dpgan::Device::Cuda(cuda) = dev else { unreachable!() };
        let free = cuda.memory_info().unwrap().0 as f64;
        // Free memory moves a little between the two readings: a 2% margin.
        assert!(footprint.bytes(choice.size) as f64 <= 1.02 * FREE_FRACTION * free, "{}: {footprint:?}", choice.how);
        assert!(footprint.bytes(2 * choice.size) as f64 > 0.98 * FREE_FRACTION * free, "{}: twice as many would fit too", choice.how);
        eprintln!("{}", choice.how);
    });
}

/// Phase 2 through the runner on the GPU and on the CPU, from one warm start: same seed and
/// replayable noise, so the same selections, batches, draws and (counter-based) noise; the
/// backends differ only in the order of f32 sums. The runner moves each selected critic to the
/// device and back (or keeps them resident), and checkpoints every iteration. Bound, set before any
/// measurement: relative 1e-4 over the 3 iterations (F32_LONG, as for one phase-2 iteration in
/// tests/models_gpu.rs). Skips without a GPU (fails with DPGAN_REQUIRE_GPU=1).
#[test]
fn phase_two_on_the_gpu_matches_the_cpu() {
    let Some(_) = common::cuda_or_skip("phase_two_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let warm = dir.path().join("warm");
    warm_start(&warm);
    let runs = [dir.path().join("cpu"), dir.path().join("cuda")];
    for (run, device) in runs.iter().zip(["cpu", "cuda"]) {
        let (warm, out) = (s(&warm), s(run));
        let args = ["train", "gs-wgan", "--warm-start", &warm, "--out", &out, "--generator", "dcgan", "--device", device];
        let rest = ["--seed", "5", "--iterations", "3", "--log-every", "1", "--checkpoint-every", "1", "--replayable-noise"];
        stdout_of(&[&args[..], &rest[..]].concat());
    }
    let (cpu, gpu) = (metrics_lines(&runs[0]), metrics_lines(&runs[1]));
    assert_eq!((cpu.len(), gpu.len()), (3, 3), "one metrics line per iteration");
    for (t, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert_eq!(c["discriminator"], g["discriminator"], "iteration {}: the same critic selected", t + 1);
        for key in ["d_loss", "g_loss"] {
            let (c, g) = (c[key].as_f64().unwrap(), g[key].as_f64().unwrap());
            assert!((c - g).abs() <= 1e-4 * c.abs().max(1.0), "iteration {}: {key} {g} on the GPU, {c} on the CPU", t + 1);
        }
    }
}
