//! `dpgan data fetch`: the four IDX files of MNIST or Fashion-MNIST from a public mirror, each
//! checked against a checksum pinned here before it is put in place (atomically), so a corrupted
//! or substituted file never lands under its final name.
//!
//! The pinned checksums are of the decompressed IDX bytes, not of the gzip files: the same data
//! re-compressed (mirrors differ in gzip level and header) is still the same data set, and one bit
//! of the data changed is not.
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{Error, Result};
use crate::io::atomic_write;
use crate::train::run_dir::sha256_hex;

/// One file of a data set and the SHA-256 of its decompressed IDX bytes.
pub struct KnownFile {
    pub name: &'static str,
    pub raw_sha256: &'static str,
}

/// A data set dpgan can fetch: its name, the mirror it comes from by default, its files.
pub struct KnownSet {
    pub name: &'static str,
    pub mirror: &'static str,
    pub files: [KnownFile; 4],
}

pub const MNIST: KnownSet = KnownSet {
    name: "mnist",
    mirror: "https://ossci-datasets.s3.amazonaws.com/mnist/",
    files: [
        KnownFile { name: "train-images-idx3-ubyte.gz", raw_sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" },
        KnownFile { name: "train-labels-idx1-ubyte.gz", raw_sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5" },
        KnownFile { name: "t10k-images-idx3-ubyte.gz", raw_sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7" },
        KnownFile { name: "t10k-labels-idx1-ubyte.gz", raw_sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2" },
    ],
};

pub const FASHION_MNIST: KnownSet = KnownSet {
    name: "fashion-mnist",
    mirror: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files: [
        KnownFile { name: "train-images-idx3-ubyte.gz", raw_sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888" },
        KnownFile { name: "train-labels-idx1-ubyte.gz", raw_sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9" },
        KnownFile { name: "t10k-images-idx3-ubyte.gz", raw_sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b" },
        KnownFile { name: "t10k-labels-idx1-ubyte.gz", raw_sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34" },
    ],
};

/// The data sets by name.
pub fn known(name: &str) -> Option<&'static KnownSet> {
    [&MNIST, &FASHION_MNIST].into_iter().find(|s| s.name == name)
}

/// The largest file a fetch reads (the biggest is 26 MB): a server sending more is refused
/// rather than filling memory.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// What happened to each file.
pub enum Fetched {
    Downloaded(PathBuf),
    AlreadyThere(PathBuf),
}

/// Fetches `set` into `dir` (created if missing) from `mirror` (a base URL; the set's own by
/// default). A file already in `dir` with the pinned content is kept; any other is downloaded,
/// checked and put in place atomically. A checksum mismatch is an error naming the file, and
/// leaves nothing under its name.
pub fn fetch(set: &KnownSet, dir: &Path, mirror: Option<&str>, mut report: impl FnMut(&str)) -> Result<Vec<Fetched>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    let base = mirror.unwrap_or(set.mirror);
    let base = if base.ends_with('/') { base.to_string() } else { format!("{base}/") };
    let mut out = Vec::new();
    for file in &set.files {
        let path = dir.join(file.name);
        if path.is_file() && std::fs::read(&path).ok().and_then(|b| raw_sha256(&b).ok()).as_deref() == Some(file.raw_sha256) {
            out.push(Fetched::AlreadyThere(path));
            continue;
        }
        let url = format!("{base}{}", file.name);
        report(&format!("downloading {url}"));
        let bytes = download(&url)?;
        let got = raw_sha256(&bytes).map_err(|e| Error::file(&path, format!("downloaded from {url}, not a gzip IDX file: {e}")))?;
        if got != file.raw_sha256 {
            return Err(Error::file(
                &path,
                format!("downloaded from {url}, but its data's SHA-256 is {got}, not the pinned {}: refused", file.raw_sha256),
            ));
        }
        atomic_write(&path, &bytes)?;
        out.push(Fetched::Downloaded(path));
    }
    Ok(out)
}

fn download(url: &str) -> Result<Vec<u8>> {
    let response = ureq::get(url).call().map_err(|e| Error::Invalid(format!("cannot download {url}: {e}")))?;
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Invalid(format!("cannot download {url}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Invalid(format!("{url} is larger than {MAX_FILE_BYTES} bytes: not the data set's file")));
    }
    Ok(bytes)
}

/// SHA-256 of the decompressed bytes of a gzip file, hex.
fn raw_sha256(gz: &[u8]) -> std::io::Result<String> {
    sha256_hex(GzDecoder::new(gz))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned checksums are those of the development copies (when they are there).
    #[test]
    fn pinned_checksums_match_the_development_data() {
        let root = std::env::var_os("DPGAN_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
        for set in [&MNIST, &FASHION_MNIST] {
            for file in &set.files {
                let path = root.join(set.name).join(file.name);
                let Ok(bytes) = std::fs::read(&path) else {
                    eprintln!("skipping {}: not there", path.display());
                    continue;
                };
                assert_eq!(raw_sha256(&bytes).unwrap(), file.raw_sha256, "{}", path.display());
            }
        }
        assert!(known("mnist").is_some() && known("cifar").is_none());
    }
}
