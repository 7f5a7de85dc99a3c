//! A labelled image data set in MNIST's layout: one directory, four IDX files under their standard
//! names, raw or gzip. Loading checks what the models rely on (28×28 images, images and labels
//! agree in number, every label is a class 0..9), so a bad directory fails here with the file
//! named, not later in a training step.
use std::env;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::idx::{read_images, read_labels};
use crate::error::{Error, Result};

/// MNIST and Fashion-MNIST both have ten classes; the conditional models are built for them.
pub const NUM_CLASSES: usize = 10;

/// Every model takes 28×28 images (MNIST's size). An image of another size is refused rather than
/// reshaped: read as rows of 784 pixels it would become several records, or part of one, and the
/// privacy guarantee, which is per record, would no longer be per image.
pub const IMAGE_SIDE: usize = 28;

/// The environment variable that names the data directory when `--data` is not given.
pub const DATA_ENV: &str = "DPGAN_DATA";

/// Which half of the data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// Standard base names of the image and label files (`.gz` is also accepted).
    pub fn file_names(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "training",
            Split::Test => "test",
        })
    }
}

/// How bytes 0..=255 become model inputs; each algorithm matches its generator's output range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelScale {
    /// `(x − 127.5) / 127.5` in [−1, 1]: DP-CGAN, whose generator ends in tanh.
    Symmetric,
    /// `x / 255` in [0, 1]: GS-WGAN, whose generator ends in a sigmoid.
    Unit,
}

impl PixelScale {
    pub fn apply(self, x: u8) -> f32 {
        match self {
            PixelScale::Symmetric => (x as f32 - 127.5) / 127.5,
            PixelScale::Unit => x as f32 / 255.0,
        }
    }
}

/// Every pixel scaled to `scale`, in the same (row-major) order.
pub fn scale_pixels(pixels: &[u8], scale: PixelScale) -> Vec<f32> {
    pixels.iter().map(|&x| scale.apply(x)).collect()
}

/// One split of a data set, validated: `len()` images of [`IMAGE_SIDE`]² bytes and as many labels,
/// each below [`NUM_CLASSES`].
#[derive(Clone, Debug)]
pub struct Dataset {
    split: Split,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    images_file: PathBuf,
    labels_file: PathBuf,
}

impl Dataset {
    /// Loads `split` from `dir`, which holds the standard IDX file names, raw or `.gz`.
    pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
        if !dir.is_dir() {
            let why = if dir.exists() { "is not a directory" } else { "does not exist" };
            return Err(Error::file(dir, format!("the data directory {why} (pass --data DIR or set {DATA_ENV})")));
        }
        let (images_name, labels_name) = split.file_names();
        let images_file = find_file(dir, images_name, &format!("{split} images"))?;
        let labels_file = find_file(dir, labels_name, &format!("{split} labels"))?;
        let images = read_images(&images_file)?;
        if (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
            return Err(Error::file(
                &images_file,
                format!(
                    "holds {}×{} images, but dpgan's models take {IMAGE_SIDE}×{IMAGE_SIDE} images (MNIST's size), one image per \
                     record; resize the data set to {IMAGE_SIDE}×{IMAGE_SIDE}",
                    images.rows, images.cols
                ),
            ));
        }
        let labels = read_labels(&labels_file)?.labels;
        if labels.len() != images.count {
            return Err(Error::file(
                &labels_file,
                format!(
                    "holds {} labels but {} holds {} images; the two files must come from the same set",
                    labels.len(),
                    images_file.display(),
                    images.count
                ),
            ));
        }
        if images.count == 0 {
            return Err(Error::file(&images_file, "holds no images"));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES) {
            return Err(Error::file(&labels_file, format!("label {l} at index {i} is not a class 0..{}", NUM_CLASSES - 1)));
        }
        Ok(Dataset { split, rows: images.rows, cols: images.cols, pixels: images.pixels, labels, images_file, labels_file })
    }

    pub fn split(&self) -> Split {
        self.split
    }
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Always false for a loaded set (loading rejects empty files); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// `(rows, cols)` of every image: 28×28 for MNIST and Fashion-MNIST.
    pub fn image_size(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// All pixels as stored, `len() × rows × cols`, row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
    /// The pixels of example `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.rows * self.cols;
        let start = i.checked_mul(size)?;
        self.pixels.get(start..start.checked_add(size)?)
    }
    /// Labels as stored, each below [`NUM_CLASSES`].
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// Labels widened to what `Tensor::one_hot` takes.
    pub fn labels_u32(&self) -> Vec<u32> {
        self.labels.iter().map(|&l| l as u32).collect()
    }
    /// All pixels scaled for a model, `len() × rows × cols`.
    pub fn pixels_f32(&self, scale: PixelScale) -> Vec<f32> {
        scale_pixels(&self.pixels, scale)
    }
    /// How many examples each class has (the per-class partition sizes, the balance checks).
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
    /// The image and label files this set was read from.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.images_file, &self.labels_file)
    }
}

/// `dir/name`, else `dir/name.gz`, else an error listing both names (and the subdirectories that
/// do hold the file, since pointing at the parent of `mnist/` is the likely slip).
fn find_file(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let gz = format!("{name}.gz");
    let candidates = |d: &Path| [d.join(name), d.join(&gz)].into_iter().find(|p| p.is_file());
    if let Some(path) = candidates(dir) {
        return Ok(path);
    }
    let mut holders: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|sub| sub.is_dir() && candidates(sub).is_some())
        .filter_map(|sub| sub.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    holders.sort();
    let hint = if holders.is_empty() {
        "the directory must hold the four MNIST-layout IDX files, raw or .gz".to_string()
    } else {
        format!("its subdirectories {} have it: point --data at one of them", holders.join(", "))
    };
    Err(Error::file(dir, format!("missing the {what}: looked for {name} and {gz} ({hint})")))
}

/// The data directory: the `--data` value, else `$DPGAN_DATA`, else an error saying how to give one.
/// A `--data` value that is not a directory but names one inside `$DPGAN_DATA` (`--data mnist`)
/// resolves to that one, so a data set can be picked by name.
pub fn data_dir(cli: Option<&Path>) -> Result<PathBuf> {
    let dir = resolve_data_dir(cli, env::var_os(DATA_ENV).filter(|d| !d.is_empty()).map(PathBuf::from))?;
    if dir.is_dir() {
        return Ok(dir);
    }
    // A name `dpgan data fetch` puts in its default place, or a hint to fetch it.
    let name = cli.and_then(|c| c.to_str()).filter(|n| crate::data::fetch::known(n).is_some());
    match (name, default_data_root()) {
        (Some(name), Some(root)) if root.join(name).is_dir() => Ok(root.join(name)),
        (Some(name), _) => Err(Error::file(&dir, format!("no such data directory: fetch the data set with `dpgan data fetch {name}`"))),
        _ => Ok(dir),
    }
}

/// Where `dpgan data fetch` puts a data set by default: `$DPGAN_DATA`, else the user's cache
/// (`$XDG_CACHE_HOME/dpgan/data`, else `~/.cache/dpgan/data`).
pub fn default_data_root() -> Option<PathBuf> {
    let nonempty = |v: &str| env::var_os(v).filter(|d| !d.is_empty()).map(PathBuf::from);
    nonempty(DATA_ENV)
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|c| c.join("dpgan/data")))
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache/dpgan/data")))
}

/// [`data_dir`] with `$DPGAN_DATA`'s value passed in, so that it can be tested without touching the
/// process environment.
fn resolve_data_dir(cli: Option<&Path>, env_dir: Option<PathBuf>) -> Result<PathBuf> {
    match (cli, env_dir) {
        (Some(dir), Some(root)) if !dir.is_dir() && root.join(dir).is_dir() => Ok(root.join(dir)),
        (Some(dir), _) => Ok(dir.to_path_buf()),
        (None, Some(root)) => Ok(root),
        (None, None) => Err(Error::Invalid(format!(
            "no data directory: pass --data DIR or set {DATA_ENV} to a directory holding train-images-idx3-ubyte[.gz], \
             train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_scales_hit_their_ends() {
        assert_eq!(scale_pixels(&[0, 255], PixelScale::Symmetric), vec![-1.0, 1.0]);
        assert_eq!(scale_pixels(&[0, 255], PixelScale::Unit), vec![0.0, 1.0]);
        assert!((PixelScale::Symmetric.apply(128) - 0.5 / 127.5).abs() < 1e-7);
    }

    #[test]
    fn data_dir_prefers_the_flag() {
        assert_eq!(data_dir(Some(Path::new("/x"))).unwrap(), PathBuf::from("/x"));
    }

    #[test]
    fn data_dir_resolves_a_name_inside_the_data_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("mnist")).unwrap();
        let env_root = Some(root.path().to_path_buf());
        // A name that is no directory here but is one in the root resolves there.
        assert_eq!(resolve_data_dir(Some(Path::new("mnist")), env_root.clone()).unwrap(), root.path().join("mnist"));
        // An existing directory is taken as given, even if the root has one of the same name.
        let here = tempfile::tempdir().unwrap();
        assert_eq!(resolve_data_dir(Some(here.path()), env_root.clone()).unwrap(), here.path());
        // Neither: the value is kept, so that loading names the path the user typed.
        assert_eq!(resolve_data_dir(Some(Path::new("nowhere-xyz")), env_root.clone()).unwrap(), PathBuf::from("nowhere-xyz"));
        assert_eq!(resolve_data_dir(Some(Path::new("mnist")), None).unwrap(), PathBuf::from("mnist"));
        assert_eq!(resolve_data_dir(None, env_root).unwrap(), root.path());
        assert!(matches!(resolve_data_dir(None, None), Err(Error::Invalid(_))));
    }
}
