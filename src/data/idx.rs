//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, a data-type byte, the number of
//! dimensions), one big-endian u32 per dimension, then the data in row-major order. MNIST uses
//! unsigned bytes (type 0x08): images are `[count, rows, cols]` (magic 0x00000803), labels are
//! `[count]` (magic 0x00000801). Everything is checked before it is trusted: the magic, the header
//! length, and that the data is exactly as long as the dimensions say, so that a truncated
//! download or a file with trailing junk is an error rather than a silently shorter data set. The
//! file is read as a stream: the header first, then exactly the bytes it announces (at most
//! [`MAX_DATA_BYTES`]), so a small gzip file cannot expand to more than its header admits.
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// The first two bytes of every gzip stream. Compression is recognised by content, not by the
/// file's extension, so a raw file named `.gz` (or the reverse) still reads.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The only IDX data type MNIST-style files use.
const UNSIGNED_BYTE: u8 = 0x08;

/// Magic number of an IDX file of unsigned-byte images `[count, rows, cols]`.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels `[count]`.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Greyscale images as stored: `count × rows × cols` bytes, 0 (background) to 255, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// One label byte per example, as stored (not yet checked against a number of classes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxLabels {
    pub labels: Vec<u8>,
}

/// Reads an IDX image file (raw or gzip); every error names `path`.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    read_file(path, read_images_from)
}

/// Reads an IDX label file (raw or gzip); every error names `path`.
pub fn read_labels(path: &Path) -> Result<IdxLabels> {
    read_file(path, read_labels_from)
}

/// The most data bytes one IDX file may announce (MNIST's training images are 47 MB): a header
/// alone can never make dpgan allocate or decompress more.
pub const MAX_DATA_BYTES: usize = 1 << 30;

/// Trailing bytes counted past the announced data before counting stops (the error then says "at
/// least"): whether a few bytes follow or a gzip bomb, no more is decompressed.
const TRAILING_COUNTED: u64 = 1 << 20;

/// Why reading failed: the content (a message), or the reading itself (for gzip, corrupt or
/// truncated data).
enum ReadError {
    Content(String),
    Io(std::io::Error),
}

impl From<String> for ReadError {
    fn from(msg: String) -> Self {
        ReadError::Content(msg)
    }
}

/// Opens `path` and hands `parse` its content, decompressed while it is read when the file starts
/// with the gzip magic, so that no more is decompressed than the parser asks for.
fn read_file<T>(path: &Path, parse: impl FnOnce(&mut dyn Read) -> std::result::Result<T, ReadError>) -> Result<T> {
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?);
    let gzip = file.fill_buf().map_err(|e| Error::file(path, format!("cannot read: {e}")))?.starts_with(&GZIP_MAGIC);
    // Multi-member, because `cat a.gz b.gz` is still valid gzip and some mirrors produce it.
    let parsed = if gzip { parse(&mut MultiGzDecoder::new(file)) } else { parse(&mut file) };
    parsed.map_err(|e| match e {
        ReadError::Content(msg) => Error::file(path, msg),
        ReadError::Io(e) if gzip => Error::file(path, format!("gzip data is corrupt or truncated ({e}); download the file again")),
        ReadError::Io(e) => Error::file(path, format!("cannot read: {e}")),
    })
}

/// Unsigned-byte images `[count, rows, cols]`.
fn read_images_from(input: &mut dyn Read) -> std::result::Result<IdxImages, ReadError> {
    let dims = read_header(input, IMAGES_MAGIC, "images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(format!("image size {rows}×{cols} in the header is empty").into());
    }
    let pixels = read_exact_data(input, &dims, &format!("{count} images of {rows}×{cols}"))?;
    Ok(IdxImages { count, rows, cols, pixels })
}

/// Unsigned-byte labels `[count]`.
fn read_labels_from(input: &mut dyn Read) -> std::result::Result<IdxLabels, ReadError> {
    let dims = read_header(input, LABELS_MAGIC, "labels")?;
    Ok(IdxLabels { labels: read_exact_data(input, &dims, &format!("{} labels", dims[0]))? })
}

/// Reads up to `len` bytes: fewer only at the end of the input.
fn read_up_to(input: &mut dyn Read, len: usize) -> std::result::Result<Vec<u8>, ReadError> {
    let mut out = Vec::with_capacity(len);
    input.take(len as u64).read_to_end(&mut out).map_err(ReadError::Io)?;
    Ok(out)
}

/// Checks the magic number and returns the dimensions.
fn read_header(input: &mut dyn Read, expected_magic: u32, what: &str) -> std::result::Result<Vec<usize>, ReadError> {
    let magic = read_up_to(input, 4)?;
    if magic.len() < 4 {
        return Err(format!("too short to be an IDX file ({} bytes; the magic number alone takes 4)", magic.len()).into());
    }
    let magic = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
    if magic != expected_magic {
        return Err(wrong_magic(magic, expected_magic, what).into());
    }
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let dims = read_up_to(input, 4 * ndims)?;
    if dims.len() < 4 * ndims {
        return Err(format!("truncated: the IDX header needs {header_len} bytes but the file has {}", 4 + dims.len()).into());
    }
    Ok(dims.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect())
}

/// Why `magic` is not `expected`, with a hint when the file is the other MNIST kind.
fn wrong_magic(magic: u32, expected: u32, what: &str) -> String {
    let [z0, z1, dtype, _] = magic.to_be_bytes();
    let why = if z0 != 0 || z1 != 0 {
        "not an IDX file (IDX files start with two zero bytes)".to_string()
    } else if dtype != UNSIGNED_BYTE {
        format!("IDX data type 0x{dtype:02x} is not supported (MNIST-style files hold unsigned bytes, type 0x08)")
    } else if magic == LABELS_MAGIC {
        "this is an IDX label file".to_string()
    } else if magic == IMAGES_MAGIC {
        "this is an IDX image file".to_string()
    } else {
        format!("{} dimensions", magic & 0xff)
    };
    format!("wrong magic number 0x{magic:08x}, expected 0x{expected:08x} for {what}: {why}")
}

/// The data bytes, provided there are exactly as many as the dimensions say: the announced number
/// is checked against [`MAX_DATA_BYTES`] before anything is read, and at most
/// [`TRAILING_COUNTED`] bytes past it are read to report trailing junk.
fn read_exact_data(input: &mut dyn Read, dims: &[usize], described: &str) -> std::result::Result<Vec<u8>, ReadError> {
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    if expected > MAX_DATA_BYTES {
        return Err(format!(
            "the header announces {described} ({expected} data bytes), more than the {MAX_DATA_BYTES} bytes dpgan reads from one IDX file"
        )
        .into());
    }
    let data = read_up_to(input, expected)?;
    if data.len() < expected {
        return Err(format!(
            "truncated: the header announces {described} ({expected} data bytes) but only {} follow the header",
            data.len()
        )
        .into());
    }
    let mut trailing = Vec::new();
    input.take(TRAILING_COUNTED).read_to_end(&mut trailing).map_err(ReadError::Io)?;
    if !trailing.is_empty() {
        let at_least = if trailing.len() as u64 == TRAILING_COUNTED { "at least " } else { "" };
        return Err(format!(
            "{at_least}{} trailing bytes after the {described} ({expected} data bytes) the header announces",
            trailing.len()
        )
        .into());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn message(e: ReadError) -> String {
        match e {
            ReadError::Content(msg) => msg,
            ReadError::Io(e) => e.to_string(),
        }
    }

    fn parse_images(bytes: &[u8]) -> std::result::Result<IdxImages, String> {
        read_images_from(&mut &bytes[..]).map_err(message)
    }

    fn parse_labels(bytes: &[u8]) -> std::result::Result<IdxLabels, String> {
        read_labels_from(&mut &bytes[..]).map_err(message)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// A reader that counts the bytes taken from it.
    struct Counted<R> {
        inner: R,
        taken: usize,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n;
            Ok(n)
        }
    }

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn images_and_labels_round_trip() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).collect();
        let img = parse_images(&idx(IMAGES_MAGIC, &[2, 3, 4], &pixels)).unwrap();
        assert_eq!(img, IdxImages { count: 2, rows: 3, cols: 4, pixels });
        let lab = parse_labels(&idx(LABELS_MAGIC, &[3], &[7, 0, 9])).unwrap();
        assert_eq!(lab.labels, vec![7, 0, 9]);
    }

    #[test]
    fn length_must_match_the_header_exactly() {
        let short = parse_images(&idx(IMAGES_MAGIC, &[2, 3, 4], &[0; 23])).unwrap_err();
        assert!(short.contains("truncated") && short.contains("2 images of 3×4"), "{short}");
        let long = parse_labels(&idx(LABELS_MAGIC, &[3], &[0; 5])).unwrap_err();
        assert!(long.contains("2 trailing bytes"), "{long}");
        let header = parse_images(&idx(IMAGES_MAGIC, &[2], &[])).unwrap_err();
        assert!(header.contains("IDX header needs 16 bytes"), "{header}");
        assert!(parse_labels(&[0, 0]).unwrap_err().contains("too short"));
    }

    #[test]
    fn magic_errors_say_what_the_file_is() {
        let swapped = parse_images(&idx(LABELS_MAGIC, &[1], &[0])).unwrap_err();
        assert!(swapped.contains("wrong magic number 0x00000801") && swapped.contains("label file"), "{swapped}");
        let float = parse_labels(&idx(0x0000_0d01, &[1], &[0; 4])).unwrap_err();
        assert!(float.contains("data type 0x0d"), "{float}");
        let text = parse_labels(b"hello world").unwrap_err();
        assert!(text.contains("not an IDX file"), "{text}");
    }

    #[test]
    fn huge_dimensions_do_not_allocate_or_overflow() {
        let err = parse_images(&idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[])).unwrap_err();
        assert!(err.contains("overflow") || err.contains("truncated"), "{err}");
        let err = parse_images(&idx(IMAGES_MAGIC, &[60000, 0, 28], &[])).unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn a_header_announcing_too_much_is_refused_before_reading_the_data() {
        let claim = idx(IMAGES_MAGIC, &[1 << 31, 28, 28], &[]);
        let err = parse_images(&claim).unwrap_err();
        assert!(err.contains("2147483648 images of 28×28") && err.contains(&MAX_DATA_BYTES.to_string()), "{err}");
        // Labels within the cap but far beyond the stream: truncated, after reading what there is.
        let err = parse_labels(&idx(LABELS_MAGIC, &[1 << 29], &[0; 10])).unwrap_err();
        assert!(err.contains("truncated") && err.contains("only 10 follow"), "{err}");
    }

    #[test]
    fn gzip_data_is_decompressed_only_as_far_as_the_header_announces() {
        // 10 labels, then 64 MiB of zeros: a few kB compressed.
        let bomb = gzip(&idx(LABELS_MAGIC, &[10], &vec![0; 10 + (64 << 20)]));
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let mut input = Counted { inner: MultiGzDecoder::new(bomb.as_slice()), taken: 0 };
        let err = message(read_labels_from(&mut input).expect_err("trailing data is refused"));
        assert!(err.contains(&format!("at least {TRAILING_COUNTED} trailing bytes after the 10 labels")), "{err}");
        assert!(input.taken <= 8 + 10 + TRAILING_COUNTED as usize, "decompressed {} bytes", input.taken);

        let exact = gzip(&idx(LABELS_MAGIC, &[3], &[7, 0, 9]));
        assert_eq!(read_labels_from(&mut MultiGzDecoder::new(exact.as_slice())).ok().map(|l| l.labels), Some(vec![7, 0, 9]));
    }
}
