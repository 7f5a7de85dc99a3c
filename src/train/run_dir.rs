//! A run's directory: `config.json` (everything needed to reproduce it), `metrics.jsonl` (one line
//! per logging interval), `checkpoint.safetensors` (+ `checkpoint.json` for people and tools) and
//! `samples/step-NNNNNNNN.png`. Every file is written atomically, so a crash leaves the previous
//! checkpoint whole; the metrics log is cut back to the checkpoint's step when a run resumes.
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dp::RunKey;
use crate::error::{Error, Result};
use crate::io::checkpoint::{load_metadata, load_tensors, save_tensors};
use crate::io::{atomic_write, atomic_write_private, create_private_dir, private_file_options};
use crate::tensor::{Device, Tensor};

pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const CHECKPOINT_JSON: &str = "checkpoint.json";
pub const SAMPLES: &str = "samples";
/// The file whose OS lock marks a run directory in use (see [`RunDir::lock`]).
pub const LOCK: &str = ".lock";
/// The safetensors metadata key under which a checkpoint keeps its JSON state.
const STATE_KEY: &str = "dpgan.state";
/// The metadata key of the run's secret key: only in the safetensors file, never in the JSON state
/// or `checkpoint.json`.
const RUN_KEY: &str = "dpgan.key";

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
    /// Held while this process trains in the run (see [`RunDir::lock`]).
    _lock: Option<std::sync::Arc<File>>,
}

impl RunDir {
    /// A new run in `root` (created if needed). A directory that already holds a run is refused:
    /// continuing one is `--resume`, and nothing of it is overwritten.
    pub fn create(root: &Path) -> Result<Self> {
        if root.join(CONFIG).exists() {
            return Err(Error::file(root, "already holds a run (config.json exists): continue it with --resume, or choose another --out"));
        }
        // Owner-only: it will hold the secret noise key and what was trained without privacy.
        create_private_dir(root)?;
        fs::create_dir_all(root.join(SAMPLES)).map_err(|e| Error::file(root, format!("cannot create the run directory: {e}")))?;
        let mut dir = RunDir { root: root.to_path_buf(), _lock: None };
        dir._lock = Some(std::sync::Arc::new(dir.lock()?));
        Ok(dir)
    }

    /// A training run in `root` that stopped before its first checkpoint has nothing to continue
    /// from: its config.json and metrics are removed (under the run's lock, so never those of a
    /// run training now) so that it can start again in the same place. Whether there was one.
    pub fn forget_if_never_checkpointed(root: &Path) -> Result<bool> {
        if !root.join(CONFIG).is_file() || root.join(CHECKPOINT).is_file() {
            return Ok(false);
        }
        let dir = Self::open_for_training(root)?;
        for name in [METRICS, CONFIG] {
            let path = dir.path(name);
            if path.exists() {
                fs::remove_file(&path).map_err(|e| Error::file(&path, format!("cannot remove: {e}")))?;
            }
        }
        Ok(true)
    }

    /// An existing run.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join(CONFIG).is_file() {
            return Err(not_a_run(root));
        }
        fs::create_dir_all(root.join(SAMPLES)).map_err(|e| Error::file(root, format!("cannot create samples/: {e}")))?;
        Ok(RunDir { root: root.to_path_buf(), _lock: None })
    }

    /// An existing run, to train in: [`RunDir::open`] holding the run's lock.
    pub fn open_for_training(root: &Path) -> Result<Self> {
        let mut dir = Self::open(root)?;
        dir._lock = Some(std::sync::Arc::new(dir.lock()?));
        Ok(dir)
    }

    /// Takes the run directory for this process: one process trains in a run at a time (a
    /// second `--resume` of a run in training would interleave two runs' steps and checkpoints).
    /// The lock is the operating system's on `RUN/.lock`, held until the returned file is
    /// dropped or the process ends, however it ends.
    fn lock(&self) -> Result<File> {
        let path = self.path(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot open the run's lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(Error::file(
                &self.root,
                "is in use: another dpgan process is training in it (wait for it to finish, or stop it with Ctrl-C)",
            )),
            Err(fs::TryLockError::Error(e)) => Err(Error::file(&path, format!("cannot lock: {e}"))),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The PNG grid of step `step`.
    pub fn sample_grid_path(&self, step: u64) -> PathBuf {
        self.root.join(SAMPLES).join(format!("step-{step:08}.png"))
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.path(name);
        let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::file(&path, format!("cannot encode: {e}")))?;
        text.push('\n');
        atomic_write(&path, text.as_bytes())
    }

    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        read_json(&self.path(name))
    }

    /// config.json as the `expected` algorithm's config. A run of another kind gets a sentence
    /// that names the command for it, before any field is parsed.
    pub fn read_config<T: DeserializeOwned>(&self, expected: &str) -> Result<T> {
        read_config(&self.root, expected)
    }

    /// Saves a checkpoint: the tensors, `state` and the run's secret `key` in one safetensors file
    /// (one atomic rename, so they never disagree), then the state again as readable JSON (without
    /// the key).
    pub fn save_checkpoint<S: Serialize>(&self, tensors: &[(String, &Tensor)], state: &S, key: &RunKey) -> Result<()> {
        let state = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(format!("checkpoint state as JSON: {e}")))?;
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let metadata = HashMap::from([(STATE_KEY.to_string(), state.clone()), (RUN_KEY.to_string(), key.to_hex())]);
        save_tensors(&self.path(CHECKPOINT), &named, Some(metadata))?;
        atomic_write(&self.path(CHECKPOINT_JSON), format!("{state}\n").as_bytes())
    }

    /// Loads the checkpoint's tensors onto `device` and its state (from the safetensors file, the
    /// authoritative copy).
    pub fn load_checkpoint<S: DeserializeOwned>(&self, device: &Device) -> Result<(HashMap<String, Tensor>, S)> {
        let (tensors, state, _) = self.load_checkpoint_keyed(device)?;
        Ok((tensors, state))
    }

    /// [`RunDir::load_checkpoint`] and the run's secret key, for resuming.
    pub fn load_checkpoint_keyed<S: DeserializeOwned>(&self, device: &Device) -> Result<(HashMap<String, Tensor>, S, RunKey)> {
        let path = self.path(CHECKPOINT);
        if !path.is_file() {
            return Err(Error::file(
                &path,
                "no checkpoint to resume from: the run stopped before writing its first one; start it again with the command that \
                 began it (the same --out)",
            ));
        }
        let (tensors, metadata) = load_tensors(&path, device)?;
        let state = metadata.get(STATE_KEY).ok_or_else(|| Error::file(&path, format!("no {STATE_KEY} in the metadata")))?;
        let state = serde_json::from_str(state).map_err(|e| Error::file(&path, format!("checkpoint state: {e}")))?;
        let key = metadata.get(RUN_KEY).ok_or_else(|| {
            Error::file(&path, "holds no run key (written by an older dpgan): the run cannot continue with the same noise and batches")
        })?;
        let key = RunKey::from_hex(key).map_err(|e| Error::file(&path, e.to_string()))?;
        Ok((tensors, state, key))
    }
}

/// The error for a directory without config.json: a sentence saying what it is instead.
fn not_a_run(root: &Path) -> Error {
    let sentence = if root.join("sample.json").is_file() {
        "is a synthetic data set written by `dpgan sample`, not a run directory"
    } else if root.join("run-1").is_dir() {
        "is a `dpgan reproduce` directory, not a run: name one of its runs (run-K/ for DP-CGAN; run-K/generator/ or \
         run-K/warm-start/ for GS-WGAN)"
    } else if root.join("generator").join(CONFIG).is_file() || root.join("warm-start").join(CONFIG).is_file() {
        "is one run of `dpgan reproduce gs-wgan`, not a run directory: name its generator/ or warm-start/"
    } else {
        "is not a dpgan run directory (no config.json)"
    };
    Error::file(root, sentence)
}

/// The `algorithm` that `root`'s config.json names ("unknown" if none), for a command that takes
/// every kind of run; a directory that holds no run gets a sentence saying what it is instead.
pub fn read_algorithm(root: &Path) -> Result<String> {
    let path = root.join(CONFIG);
    if !path.is_file() {
        return Err(not_a_run(root));
    }
    let value: serde_json::Value = read_json(&path)?;
    Ok(value.get("algorithm").and_then(|a| a.as_str()).unwrap_or("unknown").to_string())
}

/// [`RunDir::read_config`] of the run in `root`, without opening it for writing.
pub fn read_config<T: DeserializeOwned>(root: &Path, expected: &str) -> Result<T> {
    let path = root.join(CONFIG);
    if !path.is_file() {
        return Err(not_a_run(root));
    }
    let value: serde_json::Value = read_json(&path)?;
    let found = value.get("algorithm").and_then(|a| a.as_str()).unwrap_or("unknown");
    if found != expected {
        return Err(wrong_kind(root, found, expected));
    }
    serde_json::from_value(value).map_err(|e| Error::file(&path, format!("not what this dpgan writes for a {expected} run: {e}")))
}

/// The error for a directory of another kind than a command expects, naming the command for it.
pub fn wrong_kind(root: &Path, found: &str, expected: &str) -> Error {
    let r = root.display();
    let kind = |algorithm: &str| match algorithm {
        "dp-cgan" => "DP-CGAN run".to_string(),
        "gs-wgan" => "GS-WGAN run".to_string(),
        "dpsgd-gan" => "DPSGD-GAN run".to_string(),
        "gs-wgan-warm-start" => "GS-WGAN warm start".to_string(),
        other => format!("{other} run"),
    };
    let next = match found {
        "dp-cgan" => format!(": continue it with `dpgan train dp-cgan --resume {r}`, sample it with `dpgan sample --run {r}`"),
        "gs-wgan" => format!(": continue it with `dpgan train gs-wgan --resume {r}`, sample it with `dpgan sample --run {r}`"),
        "dpsgd-gan" => format!(": continue it with `dpgan train dpsgd-gan --resume {r}`, sample it with `dpgan sample --run {r}`"),
        "gs-wgan-warm-start" => format!(
            ": continue it with `dpgan train gs-wgan warm-start --resume {r}`, or train the private generator on it with \
             `dpgan train gs-wgan --warm-start {r} --out RUN_DIR`"
        ),
        _ => String::new(),
    };
    Error::file(root, format!("is a {}, not a {}{next}", kind(found), kind(expected)))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not what dpgan wrote: {e}")))
}

/// The state of the checkpoint in the run directory `root`, from `checkpoint.safetensors` (the
/// copy saved with the tensors, as [`RunDir::load_checkpoint`] reads it), never from
/// `checkpoint.json`: a crash between the two writes leaves the JSON a checkpoint behind, and a
/// released generator must be reported with the step and ε of the tensors it comes from.
pub fn checkpoint_state<S: DeserializeOwned>(root: &Path) -> Result<S> {
    let path = root.join(CHECKPOINT);
    if !path.is_file() {
        return Err(Error::file(&path, "no checkpoint: the run stopped before writing its first one"));
    }
    let metadata = load_metadata(&path)?;
    let state = metadata.get(STATE_KEY).ok_or_else(|| Error::file(&path, format!("no {STATE_KEY} in the metadata")))?;
    serde_json::from_str(state).map_err(|e| Error::file(&path, format!("checkpoint state: {e}")))
}

/// The metrics log: JSON objects, one per line, each with a `step`.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens the log for appending. `keep_through`: when resuming from the checkpoint of that step,
    /// lines of later steps (logged after the checkpoint by the interrupted process) are dropped
    /// first, so the log describes the run that continues.
    pub fn open(path: &Path, keep_through: Option<u64>) -> Result<Self> {
        if let Some(last) = keep_through.filter(|_| path.exists()) {
            let reader = BufReader::new(File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?);
            let mut kept = String::new();
            for line in reader.lines() {
                let line = line.map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
                let step = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64()));
                // A torn last line (a crash mid-append) has no step and is dropped with the rest.
                if step.is_some_and(|s| s <= last) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            atomic_write_private(path, kept.as_bytes())?;
        }
        // Owner-only: the real-data losses are a (non-private) function of the records.
        let file =
            private_file_options().create(true).append(true).open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    pub fn append(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::file(&self.path, format!("cannot append: {e}")))
    }
}

/// SHA-256 of a file, hex: recorded for every input file so a run names the exact data it saw.
pub fn file_sha256(path: &Path) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    sha256_hex(file).map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

/// SHA-256 of everything `reader` yields, hex.
pub fn sha256_hex(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        run.write_json(CONFIG, &serde_json::json!({"x": 1})).unwrap();
        let err = RunDir::create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        assert!(RunDir::open(dir.path()).is_ok());
        assert!(RunDir::open(&dir.path().join("nope")).unwrap_err().to_string().contains("no config.json"));
    }

    #[test]
    fn resuming_cuts_the_log_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS);
        let mut log = MetricsLog::open(&path, None).unwrap();
        for step in [100, 200, 300] {
            log.append(&serde_json::json!({ "step": step })).unwrap();
        }
        drop(log);
        // A torn line, as a crash mid-append would leave.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"step\": 4").unwrap();
        let mut log = MetricsLog::open(&path, Some(200)).unwrap();
        log.append(&serde_json::json!({ "step": 300 })).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":100}\n{\"step\":200}\n{\"step\":300}\n");
    }

    #[test]
    fn checkpoints_keep_tensors_and_state_together() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let t = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3], &Device::Cpu).unwrap();
        let key = RunKey::generate().unwrap();
        run.save_checkpoint(&[("a".to_string(), &t)], &serde_json::json!({"step": 7}), &key).unwrap();
        let (tensors, state, loaded): (_, serde_json::Value, _) = run.load_checkpoint_keyed(&Device::Cpu).unwrap();
        assert_eq!(tensors["a"].to_vec().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(state["step"], 7);
        assert_eq!(loaded, key);
        let readable: serde_json::Value = run.read_json(CHECKPOINT_JSON).unwrap();
        assert_eq!(readable, state);
        let text = fs::read_to_string(run.path(CHECKPOINT_JSON)).unwrap();
        assert!(!text.contains(&key.to_hex()), "the readable state holds the key");
    }

    /// What a run keeps to itself is its owner's alone: the run directory dpgan makes (0700), the
    /// checkpoint with the key and the discriminators, a rewritten and a fresh metrics log (0600).
    /// A directory the user made is left as it is; the files in it are still owner-only.
    #[cfg(unix)]
    #[test]
    fn a_runs_private_files_are_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("runs").join("a");
        let run = RunDir::create(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&dir.path().join("runs")) & 0o700, 0o700, "a parent is made as usual");
        let t = Tensor::from_vec(vec![1.0], &[1], &Device::Cpu).unwrap();
        run.save_checkpoint(&[("a".to_string(), &t)], &serde_json::json!({"step": 1}), &RunKey::generate().unwrap()).unwrap();
        assert_eq!(mode(&run.path(CHECKPOINT)), 0o600);
        let log = run.path(METRICS);
        MetricsLog::open(&log, None).unwrap().append(&serde_json::json!({ "step": 1 })).unwrap();
        assert_eq!(mode(&log), 0o600);
        MetricsLog::open(&log, Some(1)).unwrap();
        assert_eq!(mode(&log), 0o600, "the log rewritten at a resume");

        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
        let run = RunDir::create(&theirs).unwrap();
        assert_eq!(mode(&theirs), 0o755);
        run.save_checkpoint(&[("a".to_string(), &t)], &serde_json::json!({"step": 1}), &RunKey::generate().unwrap()).unwrap();
        assert_eq!(mode(&run.path(CHECKPOINT)), 0o600);
    }

    #[test]
    fn sha256_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(file_sha256(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_state_beside_the_tensors_wins_over_the_json_copy() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        assert!(checkpoint_state::<serde_json::Value>(dir.path()).unwrap_err().to_string().contains("no checkpoint"));
        let t = Tensor::from_vec(vec![1.0], &[1], &Device::Cpu).unwrap();
        run.save_checkpoint(&[("a".to_string(), &t)], &serde_json::json!({"step": 7}), &RunKey::generate().unwrap()).unwrap();
        // What a crash between the two writes leaves: the JSON copy of an older checkpoint.
        run.write_json(CHECKPOINT_JSON, &serde_json::json!({"step": 3})).unwrap();
        assert_eq!(checkpoint_state::<serde_json::Value>(dir.path()).unwrap()["step"], 7);
    }
}
