//! `--json`, the same in every command that has it: alone (or as `--json -`) it prints the report
//! as one JSON object on stdout instead of the text; `--json PATH` writes that object to PATH,
//! atomically, and prints the text as usual.
use std::path::{Path, PathBuf};

use clap::Args;
use dpgan::{Error, Result};
use serde::Serialize;

#[derive(Args, Debug, Clone, Default)]
pub(super) struct JsonOut {
    /// Print the report as one JSON object instead of text; `--json PATH` writes it to PATH (atomically) and prints the text.
    #[arg(long = "json", value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    path: Option<PathBuf>,
}

impl JsonOut {
    /// Whether the JSON replaces the text on stdout.
    fn to_stdout(&self) -> bool {
        self.path.as_deref() == Some(Path::new("-"))
    }

    /// The file `--json PATH` names, if any (not stdout).
    pub(super) fn file(&self) -> Option<&Path> {
        self.path.as_deref().filter(|_| !self.to_stdout())
    }

    /// Fails before a long command if the file could not be written after it.
    pub(super) fn check(&self) -> Result<()> {
        if self.to_stdout() {
            return Ok(());
        }
        if let Some(dir) = self.path.as_deref().and_then(Path::parent).filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::file(dir, "the directory for --json does not exist"));
            }
        }
        Ok(())
    }

    /// Emits `report` as `--json` says: the JSON on stdout, or the text on stdout and, with a
    /// path, the JSON in that file.
    pub(super) fn emit<T: Serialize>(&self, report: &T, text: impl FnOnce() -> String) -> Result<()> {
        if self.to_stdout() {
            let mut s = serde_json::to_string_pretty(report).map_err(|e| Error::Invalid(format!("the report as JSON: {e}")))?;
            s.push('\n');
            return super::emit(&s);
        }
        if let Some(path) = &self.path {
            dpgan::bench::write_json_atomic(path, report)?;
        }
        super::emit(&text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `--json PATH` names a file; alone or as `-` the JSON goes to stdout.
    #[test]
    fn only_a_path_names_a_file() {
        let out = |path: Option<&str>| JsonOut { path: path.map(PathBuf::from) };
        assert_eq!(out(None).file(), None);
        assert_eq!(out(Some("-")).file(), None);
        assert_eq!(out(Some("runs/bench.json")).file(), Some(Path::new("runs/bench.json")));
    }
}
