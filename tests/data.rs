//! The data loader against the real MNIST and Fashion-MNIST files, and against corrupted copies of
//! them: every bad input must come back as an error that names the file and the problem.
//!
//! The data root (holding `mnist/` and `fashion-mnist/`) is `$DPGAN_DATA` if set, else
//! `../shared/data` beside the crate.
mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use dpgan::data::{read_images, Dataset, PixelScale, Split, NUM_CLASSES};
use dpgan::tensor::Device;
use dpgan::train::resident::ResidentData;
use flate2::read::GzDecoder;
use tempfile::TempDir;

const MNIST_TRAIN_COUNTS: [usize; NUM_CLASSES] = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
const MNIST_TEST_COUNTS: [usize; NUM_CLASSES] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];

fn data_root() -> PathBuf {
    match std::env::var_os("DPGAN_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}

fn load(set: &str, split: Split) -> Dataset {
    let dir = data_root().join(set);
    Dataset::load(&dir, split).unwrap_or_else(|e| panic!("loading {set} {split} from {}: {e}", dir.display()))
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

/// The mean pixel on [0, 1], the figure every MNIST normalisation quotes.
fn mean_unit_pixel(d: &Dataset) -> f64 {
    let px = d.pixels_f32(PixelScale::Unit);
    px.iter().map(|&x| x as f64).sum::<f64>() / px.len() as f64
}

#[test]
fn mnist_has_the_published_shape_and_class_counts() {
    for (split, count, classes, first_labels) in
        [(Split::Train, 60000, MNIST_TRAIN_COUNTS, [5, 0, 4, 1, 9]), (Split::Test, 10000, MNIST_TEST_COUNTS, [7, 2, 1, 0, 4])]
    {
        let d = load("mnist", split);
        assert_eq!(d.len(), count, "{split}");
        assert_eq!(d.image_size(), (28, 28));
        assert_eq!(d.pixels().len(), count * 28 * 28);
        assert_eq!(d.class_counts(), classes, "{split}");
        assert_eq!(&d.labels()[..5], first_labels, "{split}: file order");
        assert_eq!(d.image(count - 1).map(<[u8]>::len), Some(784));
        assert_eq!(d.image(count), None);
    }
    let mean = mean_unit_pixel(&load("mnist", Split::Train));
    assert!((mean - 0.1307).abs() < 1e-4, "MNIST training mean pixel {mean}, published 0.1307");
}

#[test]
fn fashion_mnist_is_balanced() {
    for (split, per_class) in [(Split::Train, 6000), (Split::Test, 1000)] {
        let d = load("fashion-mnist", split);
        assert_eq!(d.len(), per_class * NUM_CLASSES);
        assert_eq!(d.image_size(), (28, 28));
        assert_eq!(d.class_counts(), [per_class; NUM_CLASSES], "{split}");
    }
    let mean = mean_unit_pixel(&load("fashion-mnist", Split::Train));
    assert!((mean - 0.2860).abs() < 1e-4, "Fashion-MNIST training mean pixel {mean}, published 0.2860");
}

#[test]
fn pixel_scales_cover_their_ranges() {
    let d = load("mnist", Split::Test);
    let sym = d.pixels_f32(PixelScale::Symmetric);
    let unit = d.pixels_f32(PixelScale::Unit);
    assert_eq!(sym.len(), d.pixels().len());
    assert_eq!(range(&sym), (-1.0, 1.0));
    assert_eq!(range(&unit), (0.0, 1.0));
    // Same pixel, both scales: x/255 and (x − 127.5)/127.5 = 2·x/255 − 1.
    for (i, &x) in d.pixels().iter().enumerate().step_by(997) {
        assert!((unit[i] - x as f32 / 255.0).abs() <= f32::EPSILON);
        assert!((sym[i] - (2.0 * unit[i] - 1.0)).abs() <= 2.0 * f32::EPSILON);
    }
    assert_eq!(d.labels_u32().len(), d.len());
}

fn range(v: &[f32]) -> (f32, f32) {
    v.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// A directory holding MNIST's test split decompressed, for raw loading and for corrupting.
fn raw_test_split() -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        fs::write(tmp.path().join(name), gunzip(&data_root().join("mnist").join(format!("{name}.gz")))).unwrap();
    }
    tmp
}

#[test]
fn raw_and_gzip_files_give_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        fs::write(tmp.path().join(name), gunzip(&data_root().join("mnist").join(format!("{name}.gz")))).unwrap();
    }
    for split in [Split::Train, Split::Test] {
        let gz = load("mnist", split);
        let raw = Dataset::load(tmp.path(), split).unwrap();
        assert!(raw.files().0.extension().is_none(), "raw file was picked: {}", raw.files().0.display());
        assert_eq!(raw.pixels(), gz.pixels(), "{split} pixels");
        assert_eq!(raw.labels(), gz.labels(), "{split} labels");
    }
}

#[test]
fn compression_is_detected_by_content_not_by_name() {
    let tmp = raw_test_split();
    let images = tmp.path().join("t10k-images-idx3-ubyte");
    let misnamed = tmp.path().join("raw-bytes.gz");
    fs::rename(&images, &misnamed).unwrap();
    fs::copy(data_root().join("mnist/t10k-images-idx3-ubyte.gz"), &images).unwrap();
    assert_eq!(read_images(&misnamed).unwrap(), read_images(&images).unwrap());
}

/// Loads the test split from `dir`, expecting an error whose message holds every one of `needles`.
#[track_caller]
fn assert_load_fails(dir: &Path, needles: &[&str]) {
    let msg = match Dataset::load(dir, Split::Test) {
        Ok(_) => panic!("loading {} succeeded; expected an error mentioning {needles:?}", dir.display()),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(msg.contains(needle), "error {msg:?} does not mention {needle:?}");
    }
}

/// Rewrites `dir/name` through `edit`.
fn corrupt(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let path = dir.join(name);
    let mut bytes = fs::read(&path).unwrap();
    edit(&mut bytes);
    fs::write(path, bytes).unwrap();
}

#[test]
fn truncated_files_are_errors() {
    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-images-idx3-ubyte", |b| b.truncate(b.len() - 100));
    assert_load_fails(tmp.path(), &["t10k-images-idx3-ubyte", "truncated", "10000 images of 28×28"]);

    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-images-idx3-ubyte", |b| b.truncate(10));
    assert_load_fails(tmp.path(), &["t10k-images-idx3-ubyte", "truncated", "header"]);

    let tmp = tempfile::tempdir().unwrap();
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        fs::copy(data_root().join("mnist").join(name), tmp.path().join(name)).unwrap();
    }
    corrupt(tmp.path(), "t10k-images-idx3-ubyte.gz", |b| b.truncate(b.len() / 2));
    assert_load_fails(tmp.path(), &["t10k-images-idx3-ubyte.gz", "gzip", "corrupt or truncated"]);
}

#[test]
fn trailing_bytes_are_errors() {
    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-labels-idx1-ubyte", |b| b.extend([0, 0, 0]));
    assert_load_fails(tmp.path(), &["t10k-labels-idx1-ubyte", "3 trailing bytes", "10000 labels"]);
}

#[test]
fn wrong_magic_numbers_are_errors() {
    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-images-idx3-ubyte", |b| b[3] = 0x01);
    assert_load_fails(tmp.path(), &["t10k-images-idx3-ubyte", "wrong magic number 0x00000801", "label file"]);

    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-labels-idx1-ubyte", |b| b[0] = 0x7f);
    assert_load_fails(tmp.path(), &["t10k-labels-idx1-ubyte", "wrong magic number", "not an IDX file"]);

    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-images-idx3-ubyte", |b| b[2] = 0x0d);
    assert_load_fails(tmp.path(), &["t10k-images-idx3-ubyte", "data type 0x0d"]);
}

#[test]
fn image_and_label_counts_must_agree() {
    let tmp = raw_test_split();
    // A consistent label file with one label fewer: header count 9999 and 9999 bytes.
    corrupt(tmp.path(), "t10k-labels-idx1-ubyte", |b| {
        b[4..8].copy_from_slice(&9999u32.to_be_bytes());
        b.pop();
    });
    assert_load_fails(tmp.path(), &["t10k-labels-idx1-ubyte", "holds 9999 labels", "t10k-images-idx3-ubyte", "10000 images"]);
}

#[test]
fn labels_must_be_classes_0_to_9() {
    let tmp = raw_test_split();
    corrupt(tmp.path(), "t10k-labels-idx1-ubyte", |b| b[8 + 1234] = 10);
    assert_load_fails(tmp.path(), &["t10k-labels-idx1-ubyte", "label 10 at index 1234", "0..9"]);
}

#[test]
fn missing_files_are_named() {
    let tmp = raw_test_split();
    fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
    assert_load_fails(tmp.path(), &["test labels", "t10k-labels-idx1-ubyte and t10k-labels-idx1-ubyte.gz"]);

    let tmp = raw_test_split();
    fs::remove_file(tmp.path().join("t10k-images-idx3-ubyte")).unwrap();
    assert_load_fails(tmp.path(), &["test images", "t10k-images-idx3-ubyte and t10k-images-idx3-ubyte.gz"]);

    // The training split is absent from this directory altogether.
    let msg = Dataset::load(tmp.path(), Split::Train).unwrap_err().to_string();
    assert!(msg.contains("train-images-idx3-ubyte and train-images-idx3-ubyte.gz"), "{msg}");

    // The usual slip: the parent of the data sets' folders.
    let msg = Dataset::load(&data_root(), Split::Train).unwrap_err().to_string();
    assert!(msg.contains("subdirectories") && msg.contains("mnist") && msg.contains("point --data at one"), "{msg}");

    let gone = tmp.path().join("no-such-dir");
    assert_load_fails(&gone, &["no-such-dir", "does not exist", "--data"]);
}

#[test]
fn an_empty_file_is_an_error() {
    let tmp = raw_test_split();
    fs::write(tmp.path().join("t10k-images-idx3-ubyte"), b"").unwrap();
    assert_load_fails(tmp.path(), &["t10k-images-idx3-ubyte", "too short"]);
}

/// A batch from the set kept on the device is the records' own pixels (scaled) and one-hot labels,
/// in the batch's order, repeats and all; a record past the set is refused. On the GPU the same
/// batch is identical to the CPU's.
#[test]
fn resident_batches_are_the_records() {
    let test = load("mnist", Split::Test);
    let batch = [9_999usize, 0, 17, 17, 4_321, 1];
    for scale in [PixelScale::Symmetric, PixelScale::Unit] {
        let resident = ResidentData::upload(&test, scale, &Device::Cpu).unwrap();
        assert_eq!(resident.len(), test.len());
        let (images, labels) = resident.batch(&batch).unwrap();
        assert_eq!((images.shape(), labels.shape()), (&[1, batch.len(), 784][..], &[1, batch.len(), NUM_CLASSES][..]));
        let (images, labels) = (images.to_vec().unwrap(), labels.to_vec().unwrap());
        for (row, &record) in batch.iter().enumerate() {
            let expected: Vec<f32> = test.image(record).unwrap().iter().map(|&p| scale.apply(p)).collect();
            assert_eq!(&images[row * 784..(row + 1) * 784], &expected[..], "row {row}: record {record}'s pixels");
            let one_hot = &labels[row * NUM_CLASSES..(row + 1) * NUM_CLASSES];
            let class = test.labels()[record] as usize;
            assert!(
                one_hot.iter().enumerate().all(|(c, &v)| v == if c == class { 1.0 } else { 0.0 }),
                "row {row}: {one_hot:?} is not class {class}"
            );
        }
        assert!(resident.batch(&[test.len()]).is_err(), "a record past the set");
        let (empty, _) = resident.batch(&[]).unwrap();
        assert_eq!(empty.shape(), &[1, 0, 784]);
    }
    common::on_cuda("resident_batches_are_the_records", |dev| {
        let (cpu, gpu) = (
            ResidentData::upload(&test, PixelScale::Symmetric, &Device::Cpu).unwrap(),
            ResidentData::upload(&test, PixelScale::Symmetric, dev).unwrap(),
        );
        let ((ci, cl), (gi, gl)) = (cpu.batch(&batch).unwrap(), gpu.batch(&batch).unwrap());
        common::assert_identical("images gathered on the GPU", &gi.to_vec().unwrap(), &ci.to_vec().unwrap());
        common::assert_identical("labels gathered on the GPU", &gl.to_vec().unwrap(), &cl.to_vec().unwrap());
    });
}
