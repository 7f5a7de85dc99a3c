//! Synthetic data sets on disk: what `dpgan sample` writes and `dpgan eval` reads.
//!
//! Two layouts, one directory each:
//! * IDX, MNIST's own: `train-images-idx3-ubyte.gz` and `train-labels-idx1-ubyte.gz`, pixels
//!   `round(x·255)`, so any MNIST loader reads a synthetic set as if it were the training split.
//! * NPY: `images.npy` (float32 `(N, H, W)`) and `labels.npy` (uint8 `(N,)`), the bytes `numpy.save`
//!   writes, so `np.load` reads them and the pixels keep their full precision.
//!
//! Images are in [0, 1] in memory whatever the layout; every file is written atomically, and a
//! malformed or mismatched file is an error naming it, never a silently shorter set.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::AtomicFile;
use crate::data::dataset::NUM_CLASSES;
use crate::data::idx::{read_images, read_labels, IMAGES_MAGIC, LABELS_MAGIC};
use crate::error::{Error, Result};

/// File names of the IDX layout (MNIST's training split, gzip).
pub const IDX_IMAGES: &str = "train-images-idx3-ubyte.gz";
pub const IDX_LABELS: &str = "train-labels-idx1-ubyte.gz";
/// File names of the NPY layout.
pub const NPY_IMAGES: &str = "images.npy";
pub const NPY_LABELS: &str = "labels.npy";

/// On-disk layout of a synthetic set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticFormat {
    Idx,
    Npy,
}

impl SyntheticFormat {
    fn file_names(self) -> (&'static str, &'static str) {
        match self {
            SyntheticFormat::Idx => (IDX_IMAGES, IDX_LABELS),
            SyntheticFormat::Npy => (NPY_IMAGES, NPY_LABELS),
        }
    }
    fn other(self) -> SyntheticFormat {
        match self {
            SyntheticFormat::Idx => SyntheticFormat::Npy,
            SyntheticFormat::Npy => SyntheticFormat::Idx,
        }
    }
}

impl std::fmt::Display for SyntheticFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyntheticFormat::Idx => "IDX",
            SyntheticFormat::Npy => "NPY",
        })
    }
}

/// A synthetic set read back: `count × height × width` pixels in [0, 1], one label per image.
#[derive(Clone, Debug)]
pub struct SyntheticSet {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub format: SyntheticFormat,
}

/// Why `labels` are unusable: a label that is not a class.
/// What is wrong with images of `size` pixels and their labels, if anything: their counts, a
/// label that is no class, a pixel outside [0, 1].
fn chunk_problem(images: &[f32], labels: &[u8], size: usize) -> Option<String> {
    if images.len() != labels.len() * size {
        return Some(format!(
            "{} pixels for {} labels of {size}-pixel images (expected {})",
            images.len(),
            labels.len(),
            labels.len() * size
        ));
    }
    label_problem(labels).or_else(|| pixel_problem(images, size))
}

fn label_problem(labels: &[u8]) -> Option<String> {
    let (i, l) = labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES)?;
    Some(format!("label {l} at index {i} is out of range: classes are 0..{}", NUM_CLASSES - 1))
}

/// Why `images` are unusable: a pixel outside [0, 1] (NaN included).
fn pixel_problem(images: &[f32], image_size: usize) -> Option<String> {
    let (i, x) = images.iter().enumerate().find(|(_, x)| !(0.0..=1.0).contains(*x))?;
    Some(format!("pixel {x} at index {i} (image {}) is outside [0, 1]", i / image_size.max(1)))
}

/// Writes `labels.len()` images of `height × width` (pixels in [0, 1], row-major) and their labels
/// into `dir` (created if missing) in `format`. Refuses a directory that already holds the other
/// layout, which `read_synthetic` could not tell apart from this one.
pub fn write_synthetic(dir: &Path, images: &[f32], labels: &[u8], height: usize, width: usize, format: SyntheticFormat) -> Result<()> {
    // Checked whole before anything is created, so a refused set leaves no directory behind.
    if let Some(why) = chunk_problem(images, labels, height * width) {
        return Err(Error::file(dir, format!("cannot write the synthetic set: {why}")));
    }
    let mut writer = SyntheticWriter::create(dir, labels.len(), height, width, format)?;
    writer.write_chunk(images, labels)?;
    writer.finish()
}

/// A synthetic set written as it is generated, in memory bounded by a chunk whatever the count:
/// the images stream into a temporary file (gzip-compressed for IDX), the labels (a byte each)
/// are kept until [`SyntheticWriter::finish`] puts both files in place. Dropped unfinished, it
/// leaves nothing under the final names.
pub struct SyntheticWriter {
    dir: PathBuf,
    format: SyntheticFormat,
    count: usize,
    image_size: usize,
    images: ImageSink,
    labels: Vec<u8>,
}

enum ImageSink {
    Idx(GzEncoder<AtomicFile>),
    Npy(AtomicFile),
}

impl SyntheticWriter {
    /// A writer of `count` images of `height × width` into `dir` (created if missing).
    pub fn create(dir: &Path, count: usize, height: usize, width: usize, format: SyntheticFormat) -> Result<Self> {
        if height * width == 0 || count == 0 {
            return Err(Error::file(dir, format!("cannot write the synthetic set: nothing to write: {count} images of {height}×{width}")));
        }
        let (other_images, _) = format.other().file_names();
        if dir.join(other_images).exists() {
            return Err(Error::file(
                dir,
                format!("already holds {other_images} ({} layout); write {format} into another directory or remove it", format.other()),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create the directory: {e}")))?;
        let path = dir.join(format.file_names().0);
        let write_error = |e: std::io::Error| Error::file(&path, format!("cannot write: {e}"));
        let images = match format {
            SyntheticFormat::Idx => {
                let mut gz = GzEncoder::new(AtomicFile::create(&path)?, Compression::default());
                gz.write_all(&idx_header(IMAGES_MAGIC, &[count as u32, height as u32, width as u32])).map_err(write_error)?;
                ImageSink::Idx(gz)
            }
            SyntheticFormat::Npy => {
                let mut file = AtomicFile::create(&path)?;
                file.write_all(&npy_header("<f4", &[count, height, width])).map_err(write_error)?;
                ImageSink::Npy(file)
            }
        };
        Ok(SyntheticWriter { dir: dir.to_path_buf(), format, count, image_size: height * width, images, labels: Vec::with_capacity(count) })
    }

    /// Appends images (pixels in [0, 1]) and their labels, checked as they come.
    pub fn push(&mut self, images: &[f32], labels: &[u8]) -> Result<()> {
        let problem = if self.labels.len() + labels.len() > self.count {
            Some(format!("more than the {} images announced", self.count))
        } else {
            chunk_problem(images, labels, self.image_size)
        };
        if let Some(why) = problem {
            return Err(Error::file(&self.dir, format!("cannot write the synthetic set: {why}")));
        }
        self.write_chunk(images, labels)
    }

    /// Appends a chunk already checked by [`chunk_problem`] (within the announced count).
    fn write_chunk(&mut self, images: &[f32], labels: &[u8]) -> Result<()> {
        let path = self.dir.join(self.format.file_names().0);
        let written = match &mut self.images {
            ImageSink::Idx(gz) => {
                let pixels: Vec<u8> = images.iter().map(|&x| (x * 255.0).round() as u8).collect();
                gz.write_all(&pixels)
            }
            // NPY's "<f4" is little-endian: the memory itself on such a machine.
            #[cfg(target_endian = "little")]
            ImageSink::Npy(file) => file.write_all(bytemuck::cast_slice(images)),
            #[cfg(not(target_endian = "little"))]
            ImageSink::Npy(file) => file.write_all(&images.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        };
        written.map_err(|e| Error::file(&path, format!("cannot write: {e}")))?;
        self.labels.extend_from_slice(labels);
        Ok(())
    }

    /// Puts both files in place once every announced image was pushed.
    pub fn finish(self) -> Result<()> {
        if self.labels.len() != self.count {
            return Err(Error::file(
                &self.dir,
                format!("cannot write the synthetic set: {} of the {} images announced", self.labels.len(), self.count),
            ));
        }
        let (images_name, labels_name) = self.format.file_names();
        let images_path = self.dir.join(images_name);
        let mut labels_file = AtomicFile::create(&self.dir.join(labels_name))?;
        let labels_path = self.dir.join(labels_name);
        let label_error = |e: std::io::Error| Error::file(&labels_path, format!("cannot write: {e}"));
        match self.format {
            SyntheticFormat::Idx => {
                let mut gz = GzEncoder::new(&mut labels_file, Compression::default());
                gz.write_all(&idx_header(LABELS_MAGIC, &[self.count as u32]))
                    .and_then(|()| gz.write_all(&self.labels))
                    .map_err(label_error)?;
                gz.finish().map_err(label_error)?;
            }
            SyntheticFormat::Npy => {
                labels_file
                    .write_all(&npy_header("|u1", &[self.count]))
                    .and_then(|()| labels_file.write_all(&self.labels))
                    .map_err(label_error)?;
            }
        }
        let images = match self.images {
            ImageSink::Idx(gz) => gz.finish().map_err(|e| Error::file(&images_path, format!("cannot compress: {e}")))?,
            ImageSink::Npy(file) => file,
        };
        images.commit()?;
        labels_file.commit()
    }
}

/// Reads the synthetic set in `dir`, whichever layout it holds.
pub fn read_synthetic(dir: &Path) -> Result<SyntheticSet> {
    if !dir.is_dir() {
        let why = if dir.exists() { "is not a directory" } else { "does not exist" };
        return Err(Error::file(dir, format!("the synthetic data directory {why} (write one with `dpgan sample`)")));
    }
    let has = |name: &str| dir.join(name).exists();
    let format = match (has(IDX_IMAGES) || has(IDX_LABELS), has(NPY_IMAGES) || has(NPY_LABELS)) {
        (true, false) => SyntheticFormat::Idx,
        (false, true) => SyntheticFormat::Npy,
        (true, true) => {
            return Err(Error::file(
                dir,
                format!("holds both IDX ({IDX_IMAGES}) and NPY ({NPY_IMAGES}) files; keep one layout per directory"),
            ))
        }
        (false, false) => {
            return Err(Error::file(
                dir,
                format!("no synthetic data: expected {IDX_IMAGES} + {IDX_LABELS} (IDX) or {NPY_IMAGES} + {NPY_LABELS} (NPY)"),
            ))
        }
    };
    let (images_name, labels_name) = format.file_names();
    let (images_path, labels_path) = (dir.join(images_name), dir.join(labels_name));
    for path in [&images_path, &labels_path] {
        if !path.is_file() {
            return Err(Error::file(path, "missing: a synthetic set needs both its image and its label file"));
        }
    }
    let (images, height, width, labels) = match format {
        SyntheticFormat::Idx => {
            let idx = read_images(&images_path)?;
            let images = idx.pixels.iter().map(|&p| p as f32 / 255.0).collect();
            (images, idx.rows, idx.cols, read_labels(&labels_path)?.labels)
        }
        SyntheticFormat::Npy => {
            let (images, shape) = read_npy_f32(&images_path)?;
            if shape.len() != 3 {
                return Err(Error::file(&images_path, format!("shape {shape:?}: expected (N, H, W)")));
            }
            (images, shape[1], shape[2], read_npy_labels(&labels_path)?)
        }
    };
    let (count, size) = (labels.len(), height * width);
    if count == 0 {
        return Err(Error::file(&labels_path, "holds no labels"));
    }
    if images.len() != count * size {
        let msg = format!("holds {count} labels but {} holds {} images", images_path.display(), images.len() / size.max(1));
        return Err(Error::file(&labels_path, format!("{msg}; the two files must come from the same sample")));
    }
    if let Some(why) = label_problem(&labels) {
        return Err(Error::file(&labels_path, why));
    }
    if let Some(why) = pixel_problem(&images, size) {
        return Err(Error::file(&images_path, why));
    }
    Ok(SyntheticSet { images, labels, count, height, width, format })
}

/// An IDX header of unsigned bytes: magic, big-endian dimensions (MNIST's).
fn idx_header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out
}

/// numpy's growth room for the leading axis (`numpy.lib.format.GROWTH_AXIS_MAX_DIGITS`).
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// numpy aligns the data of a `.npy` file to 64 bytes.
const NPY_ALIGN: usize = 64;
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// The NPY v1.0 header `numpy.save` (numpy ≥ 1.23) writes for a C-order array: the dict with sorted
/// keys, spaces for the leading axis to grow, then spaces and a newline up to a multiple of 64
/// bytes (a whole 64 when already aligned, as numpy does).
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_repr = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
    if let Some(first) = dims.first() {
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.len())));
    }
    let with_newline = dict.len() + 1;
    let pad = NPY_ALIGN - (NPY_MAGIC.len() + 4 + with_newline) % NPY_ALIGN;
    let mut out = NPY_MAGIC.to_vec();
    out.extend([1u8, 0]);
    out.extend(((with_newline + pad) as u16).to_le_bytes());
    out.extend(dict.bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// The header fields of a `.npy` file and the bytes after the header.
struct Npy<'a> {
    descr: String,
    shape: Vec<usize>,
    data: &'a [u8],
}

/// Parses the header numpy writes (versions 1.0, 2.0 and 3.0); C order only.
fn parse_npy(bytes: &[u8]) -> std::result::Result<Npy<'_>, String> {
    if !bytes.starts_with(NPY_MAGIC) || bytes.len() < 10 {
        return Err("not an NPY file (it must start with \\x93NUMPY)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("NPY version {v}.{} is not supported", bytes[7])),
    };
    let header = bytes.get(start..start + len).ok_or("truncated NPY header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the NPY header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}':")).ok_or(format!("the NPY header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?.strip_prefix('\'').and_then(|s| s.split('\'').next()).ok_or("unreadable 'descr'")?.to_string();
    if !field("fortran_order")?.starts_with("False") {
        return Err("Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)".into());
    }
    let shape_text = field("shape")?.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("unreadable 'shape'")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("unreadable dimension '{s}' in the shape")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Npy { descr, shape, data: &bytes[start + len..] })
}

/// The data of a `.npy` file, checked to be exactly `numel · item` bytes.
fn npy_data<'a>(npy: &Npy<'a>, item: usize) -> std::result::Result<&'a [u8], String> {
    let numel = npy.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("the shape overflows")?;
    let expected = numel.checked_mul(item).ok_or("the shape overflows")?;
    if npy.data.len() != expected {
        return Err(format!("shape {:?} needs {expected} data bytes but the file holds {}", npy.shape, npy.data.len()));
    }
    Ok(npy.data)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

/// A little-endian float32 array and its shape.
fn read_npy_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = read_file(path)?;
    let parsed = (|| {
        let npy = parse_npy(&bytes)?;
        if npy.descr != "<f4" {
            return Err(format!("dtype '{}': images must be float32 ('<f4')", npy.descr));
        }
        let values = npy_data(&npy, 4)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok((values, npy.shape))
    })();
    parsed.map_err(|msg| Error::file(path, msg))
}

/// A 1-D label array: uint8, or the int32/int64 that `np.array(list_of_ints)` gives.
fn read_npy_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_file(path)?;
    let parsed = (|| {
        let npy = parse_npy(&bytes)?;
        if npy.shape.len() != 1 {
            return Err(format!("shape {:?}: labels must be one-dimensional (N,)", npy.shape));
        }
        let widen = |b: &[u8]| -> i64 {
            match b.len() {
                1 => b[0] as i64,
                4 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                _ => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            }
        };
        let item = match npy.descr.as_str() {
            "|u1" | "<u1" => 1,
            "<i4" => 4,
            "<i8" => 8,
            other => return Err(format!("dtype '{other}': labels must be uint8 ('|u1'), int32 or int64")),
        };
        npy_data(&npy, item)?
            .chunks_exact(item)
            .enumerate()
            .map(|(i, b)| {
                let l = widen(b);
                u8::try_from(l)
                    .ok()
                    .filter(|&l| (l as usize) < NUM_CLASSES)
                    .ok_or(format!("label {l} at index {i} is out of range: classes are 0..{}", NUM_CLASSES - 1))
            })
            .collect()
    })();
    parsed.map_err(|msg| Error::file(path, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_what_numpy_writes() {
        // np.save of np.zeros((3, 2, 4), np.float32): 128 bytes, data 64-aligned.
        let mut expected = b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2, 4), }".to_vec();
        expected.extend([b' '; 55]);
        expected.push(b'\n');
        assert_eq!(npy_header("<f4", &[3, 2, 4]), expected);
        let parsed = parse_npy(&expected).unwrap();
        assert_eq!((parsed.descr.as_str(), parsed.shape.as_slice(), parsed.data.len()), ("<f4", &[3, 2, 4][..], 0));
    }

    #[test]
    fn npy_parser_accepts_other_key_orders_and_rejects_fortran() {
        let text = "{'shape': (2,), 'fortran_order': False, 'descr': '<i8'}\n";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((text.len() as u16).to_le_bytes());
        bytes.extend(text.bytes());
        let npy = parse_npy(&bytes).unwrap();
        assert_eq!((npy.descr.as_str(), npy.shape), ("<i8", vec![2]));
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes[at..at + 5].copy_from_slice(b"True ");
        assert!(parse_npy(&bytes).err().unwrap().contains("Fortran"));
    }
}
