//! Files dpgan writes: every write is atomic (a temporary file beside the target, synced, then
//! renamed over it), so a crash leaves either the old file or the new one, never half of one.
//!
//! What a run keeps to itself (the checkpoint with the secret noise key and the discriminators,
//! models trained without privacy, the real-data losses) is written readable by its owner only
//! (mode 0600 on Unix, in a run directory made 0700): on a shared machine another user could
//! otherwise read the key, and with it take the noise out of every released update.
pub mod checkpoint;
pub mod font;
pub mod image;
pub mod plot;
pub mod synthetic;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
    file.commit()
}

/// [`atomic_write`] of a file only its owner may read (0600 on Unix).
pub fn atomic_write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create_private(path)?;
    file.write_all(bytes).map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
    file.commit()
}

/// Options that create a file only its owner may read and write (0600 on Unix; elsewhere the
/// platform's default).
pub fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates the directory `dir` (its missing parents as usual) readable only by its owner (0700 on
/// Unix), for what a run keeps to itself. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::file(parent, format!("cannot create: {e}")))?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::file(dir, format!("cannot create: {e}"))),
        _ => Ok(()),
    }
}

/// A file written in pieces and put in place at once: the bytes go to a temporary file beside
/// `path`, [`AtomicFile::commit`] syncs it and renames it over `path`; dropped uncommitted (an
/// error, a panic) it is removed, so `path` never holds part of a file.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let mut options = fs::OpenOptions::new();
        Self::create_with(path, options.write(true).create(true).truncate(true))
    }

    /// [`AtomicFile::create`] of a file only its owner may read (0600 on Unix): the rename keeps
    /// the temporary file's mode.
    pub fn create_private(path: &Path) -> Result<Self> {
        let mut options = private_file_options();
        Self::create_with(path, options.write(true).create_new(true))
    }

    fn create_with(path: &Path, options: &fs::OpenOptions) -> Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
        let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        // A leftover of a crashed process of the same id would keep its own mode.
        let _ = fs::remove_file(&tmp);
        let file = options.open(&tmp).map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, file: Some(BufWriter::new(file)) })
    }

    /// Syncs the file, renames it over the target and syncs the directory (so the rename is
    /// durable too).
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("an AtomicFile is committed once");
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let result = (|| -> std::io::Result<()> {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            fs::rename(&self.tmp, &self.path)?;
            fs::File::open(&dir)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            Error::file(&self.path, format!("cannot write: {e}"))
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not yet committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not yet committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
