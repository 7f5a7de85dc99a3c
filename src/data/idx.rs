//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, a data-type byte, the number of
//! dimensions), one big-endian u32 per dimension, then the data in row-major order. MNIST uses
//! unsigned bytes (type 0x08): images are `[count, rows, cols]` (magic 0x00000803), labels are
//! `[count]` (magic 0x00000801). Everything is checked before it is trusted: the magic, the header
//! length, and that the data is exactly as long as the dimensions say, so that a truncated
//! download or a file with trailing junk is an error rather than a silently shorter data set.
use std::fs;
use std::io::Read;
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
    let bytes = read_maybe_gzip(path)?;
    parse_images(&bytes).map_err(|msg| Error::file(path, msg))
}

/// Reads an IDX label file (raw or gzip); every error names `path`.
pub fn read_labels(path: &Path) -> Result<IdxLabels> {
    let bytes = read_maybe_gzip(path)?;
    parse_labels(&bytes).map_err(|msg| Error::file(path, msg))
}

/// The file's bytes, decompressed when they start with the gzip magic.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    // Multi-member, because `cat a.gz b.gz` is still valid gzip and some mirrors produce it.
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::file(path, format!("gzip data is corrupt or truncated ({e}); download the file again")))?;
    Ok(out)
}

/// Parses unsigned-byte images `[count, rows, cols]`.
pub(crate) fn parse_images(bytes: &[u8]) -> std::result::Result<IdxImages, String> {
    let (dims, data) = parse_header(bytes, IMAGES_MAGIC, "images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(format!("image size {rows}×{cols} in the header is empty"));
    }
    let described = format!("{count} images of {rows}×{cols}");
    Ok(IdxImages { count, rows, cols, pixels: exact_data(data, &dims, &described)?.to_vec() })
}

/// Parses unsigned-byte labels `[count]`.
pub(crate) fn parse_labels(bytes: &[u8]) -> std::result::Result<IdxLabels, String> {
    let (dims, data) = parse_header(bytes, LABELS_MAGIC, "labels")?;
    let described = format!("{} labels", dims[0]);
    Ok(IdxLabels { labels: exact_data(data, &dims, &described)?.to_vec() })
}

/// Checks the magic number and returns the dimensions and the bytes after the header.
fn parse_header<'a>(bytes: &'a [u8], expected_magic: u32, what: &str) -> std::result::Result<(Vec<usize>, &'a [u8]), String> {
    if bytes.len() < 4 {
        return Err(format!("too short to be an IDX file ({} bytes; the magic number alone takes 4)", bytes.len()));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(wrong_magic(magic, expected_magic, what));
    }
    let ndims = bytes[3] as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(format!("truncated: the IDX header needs {header_len} bytes but the file has {}", bytes.len()));
    }
    let dims = bytes[4..header_len].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    Ok((dims, &bytes[header_len..]))
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

/// The data bytes, provided there are exactly as many as the dimensions say.
fn exact_data<'a>(data: &'a [u8], dims: &[usize], described: &str) -> std::result::Result<&'a [u8], String> {
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    match data.len().cmp(&expected) {
        std::cmp::Ordering::Equal => Ok(data),
        std::cmp::Ordering::Less => {
            Err(format!("truncated: the header announces {described} ({expected} data bytes) but only {} follow the header", data.len()))
        }
        std::cmp::Ordering::Greater => {
            Err(format!("{} trailing bytes after the {described} ({expected} data bytes) the header announces", data.len() - expected))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
