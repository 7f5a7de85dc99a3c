//! What a grid writes beside each row: the class's name. Fashion-MNIST's classes are items of
//! clothing, named here in label order; MNIST's (and any other set's) are the digits themselves.
//! A data set is recognised by its content (the SHA-256 of its labels' IDX bytes, pinned in
//! [`super::fetch`]), never by the name of its folder.
use std::io::Read;
use std::path::Path;

use super::fetch::FASHION_MNIST;
use super::idx::{read_labels, LABELS_MAGIC};
use crate::train::run_dir::sha256_hex;

/// Fashion-MNIST's ten classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
/// Every other set's classes: the label itself.
pub const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The class names of a training set with these labels: Fashion-MNIST's when they are its
/// training or test labels exactly, the digits otherwise.
pub fn class_names(labels: &[u8]) -> [&'static str; 10] {
    let header = [LABELS_MAGIC.to_be_bytes(), (labels.len() as u32).to_be_bytes()].concat();
    let Ok(sha) = sha256_hex(header.as_slice().chain(labels)) else { return DIGITS };
    let fashion = FASHION_MNIST.files.iter().any(|f| f.name.contains("labels") && f.raw_sha256 == sha);
    if fashion {
        FASHION_MNIST_CLASSES
    } else {
        DIGITS
    }
}

/// [`class_names`] of the labels in `path` (IDX, raw or gzip). A file that cannot be read (moved
/// since the run trained) gives the digits: the names only help a reader, and the row index is
/// still the class.
pub fn class_names_of_file(path: &Path) -> [&'static str; 10] {
    read_labels(path).map(|l| class_names(&l.labels)).unwrap_or(DIGITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_that_are_not_fashion_mnist_are_digits() {
        let labels: Vec<u8> = (0..60_000).map(|i| (i % 10) as u8).collect();
        assert_eq!(class_names(&labels), DIGITS);
        assert_eq!(class_names_of_file(Path::new("/nonexistent/train-labels-idx1-ubyte.gz")), DIGITS);
    }
}
