//! The warm-start group under way, checkpointed between two iterations to
//! `discriminators/group-NNNN.partial.safetensors` (every `--checkpoint-every`, and when a signal
//! stops the run), so that `--resume` goes on inside the group instead of training it again. One
//! file, written atomically: the group's tensors ([`WarmStart::tensors`]) and a JSON record of its
//! [`WarmStartPosition`] and of the settings it was trained under, checked against the run's before
//! anything of it is used. The warm start has no secret key, so there is none to keep out of it.
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::warm_start::{WarmStart, WarmStartPosition};
use super::warm_start_run::{WarmStartRunConfig, DISCRIMINATORS};
use crate::error::{Error, Result};
use crate::io::checkpoint::{load_tensors, save_tensors};
use crate::tensor::{Device, Tensor};

/// The safetensors metadata key of a group checkpoint's record.
const UNDER_WAY_KEY: &str = "dpgan.group_under_way";

/// How often the group under way is checkpointed: every N iterations (counted from the group's
/// start, so the same ones whether or not it was resumed), or after a stretch of wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CheckpointEvery {
    Iterations(u64),
    Seconds(u64),
}

impl Default for CheckpointEvery {
    /// Ten minutes: a published group (G = 50) checkpoints in seconds and trains for far longer,
    /// so at most ten minutes of it are lost and the writes cost about one percent.
    fn default() -> Self {
        CheckpointEvery::Seconds(600)
    }
}

impl CheckpointEvery {
    /// Whether to checkpoint after the group's iteration `iteration` (1-based), `since` the last
    /// checkpoint of this process (or its start on the group).
    pub fn due(self, iteration: u64, since: Duration) -> bool {
        match self {
            CheckpointEvery::Iterations(n) => iteration.is_multiple_of(n),
            CheckpointEvery::Seconds(s) => since.as_secs() >= s,
        }
    }
}

impl FromStr for CheckpointEvery {
    type Err = Error;

    /// `N` iterations, or a wall time `Ns`, `Nm` or `Nh`; N at least 1.
    fn from_str(text: &str) -> Result<Self> {
        let refuse = || Error::Invalid(format!("--checkpoint-every takes iterations (500) or a wall time (30s, 10m, 2h), got {text:?}"));
        let (digits, unit) = match text.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c)),
            _ => (text, None),
        };
        let n: u64 = digits.parse().map_err(|_| refuse())?;
        if n == 0 {
            return Err(Error::Invalid("--checkpoint-every must be at least 1 (iteration or second)".into()));
        }
        let seconds = |factor: u64| n.checked_mul(factor).map(CheckpointEvery::Seconds).ok_or_else(refuse);
        match unit {
            None => Ok(CheckpointEvery::Iterations(n)),
            Some('s') => seconds(1),
            Some('m') => seconds(60),
            Some('h') => seconds(3600),
            Some(_) => Err(refuse()),
        }
    }
}

impl fmt::Display for CheckpointEvery {
    /// The flag's own spelling (how config.json records it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CheckpointEvery::Iterations(n) => write!(f, "{n}"),
            CheckpointEvery::Seconds(s) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            CheckpointEvery::Seconds(s) if s % 60 == 0 => write!(f, "{}m", s / 60),
            CheckpointEvery::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

impl TryFrom<String> for CheckpointEvery {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

impl From<CheckpointEvery> for String {
    fn from(every: CheckpointEvery) -> String {
        every.to_string()
    }
}

/// What a group checkpoint records beside its tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UnderWayRecord {
    group: usize,
    first: usize,
    count: usize,
    /// The run settings that shape the state: a file of another run is refused by name.
    seed: u64,
    partition_seed: u64,
    discriminators: usize,
    group_size: usize,
    iterations: u64,
    generator: String,
    base: usize,
    batch_size: usize,
    critic_steps: usize,
    position: WarmStartPosition,
    /// Wall seconds spent on the group so far, by every process that trained it.
    group_s: f64,
}

/// The checkpoint of group `group` under way in the run directory `root`.
pub fn partial_path(root: &Path, group: usize) -> PathBuf {
    root.join(DISCRIMINATORS).join(format!("group-{group:04}.partial.safetensors"))
}

/// A group checkpoint read back, checked and restored: the group to continue.
pub struct GroupUnderWay {
    pub group: usize,
    pub warm: WarmStart,
    /// Wall seconds already spent on the group.
    pub group_s: f64,
}

/// Writes `warm`, group `group` (discriminators `members`) of the run `config`, to `path`.
pub fn save(path: &Path, group: usize, members: Range<usize>, config: &WarmStartRunConfig, warm: &WarmStart, group_s: f64) -> Result<()> {
    let record = UnderWayRecord {
        group,
        first: members.start,
        count: members.len(),
        seed: config.seed,
        partition_seed: config.partition_seed,
        discriminators: config.discriminators,
        group_size: config.group_size,
        iterations: config.iterations,
        generator: config.generator.clone(),
        base: config.base,
        batch_size: config.batch_size,
        critic_steps: config.critic_steps,
        position: warm.position(),
        group_s,
    };
    let record = serde_json::to_string(&record).map_err(|e| Error::Invalid(format!("group checkpoint record as JSON: {e}")))?;
    let tensors = warm.tensors();
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    save_tensors(path, &named, Some(HashMap::from([(UNDER_WAY_KEY.to_string(), record)])))
}

/// Reads the checkpoint of group `group` (discriminators `members`, on `slices`) of the run
/// `config` and restores the group on `device`, refusing, with the reason and what to do, a file
/// that is damaged, belongs to another run or group, or holds an impossible position.
pub fn load(
    path: &Path,
    group: usize,
    members: Range<usize>,
    slices: Vec<Vec<usize>>,
    config: &WarmStartRunConfig,
    device: &Device,
) -> Result<GroupUnderWay> {
    let refuse = |why: String| {
        Error::file(
            path,
            format!("{why}; it cannot continue group {group} (delete it to train the group again from its start, or restore the file)"),
        )
    };
    let (tensors, metadata) = load_tensors(path, device).map_err(|e| match e {
        Error::File { msg, .. } => refuse(format!("is damaged ({msg})")),
        other => other,
    })?;
    let record =
        metadata.get(UNDER_WAY_KEY).ok_or_else(|| refuse(format!("has no {UNDER_WAY_KEY} record: not a dpgan group checkpoint")))?;
    let record: UnderWayRecord =
        serde_json::from_str(record).map_err(|e| refuse(format!("has a {UNDER_WAY_KEY} record this dpgan cannot read ({e})")))?;
    let settings = [
        ("group", record.group.to_string(), group.to_string()),
        ("first discriminator", record.first.to_string(), members.start.to_string()),
        ("discriminator count", record.count.to_string(), members.len().to_string()),
        ("seed", record.seed.to_string(), config.seed.to_string()),
        ("partition seed", record.partition_seed.to_string(), config.partition_seed.to_string()),
        ("--discriminators", record.discriminators.to_string(), config.discriminators.to_string()),
        ("--group-size", record.group_size.to_string(), config.group_size.to_string()),
        ("--iterations", record.iterations.to_string(), config.iterations.to_string()),
        ("--generator", record.generator.clone(), config.generator.clone()),
        ("model width", record.base.to_string(), config.base.to_string()),
        ("--batch-size", record.batch_size.to_string(), config.batch_size.to_string()),
        ("critic steps", record.critic_steps.to_string(), config.critic_steps.to_string()),
    ];
    if let Some((name, found, expected)) = settings.iter().find(|(_, found, expected)| found != expected) {
        return Err(refuse(format!("was written with {name} {found}, this run's is {expected}: it belongs to another run")));
    }
    let p = &record.position;
    if p.iterations == 0 || p.iterations >= config.iterations {
        return Err(refuse(format!("stands at iteration {} of {}, not inside the group", p.iterations, config.iterations)));
    }
    if p.iterations.checked_mul(config.critic_steps as u64) != Some(p.d_adam_steps) || p.g_adam_steps != p.iterations {
        return Err(refuse(format!(
            "records {} critic and {} generator optimizer steps after {} iterations of {} critic steps",
            p.d_adam_steps, p.g_adam_steps, p.iterations, config.critic_steps
        )));
    }
    let seeds: Vec<u64> = members.map(|j| config.member_seed(j)).collect();
    let warm =
        WarmStart::restore(config.arch()?, config.base, &seeds, slices, config.step_config(), device, p, tensors).map_err(|e| match e {
            Error::Invalid(msg) => refuse(format!("does not fit this run's group: {msg}")),
            other => other,
        })?;
    Ok(GroupUnderWay { group, warm, group_s: record.group_s })
}
