//! Data: the IDX reader and the MNIST-layout data set with its conversions to model inputs.
//! Fetching MNIST and Fashion-MNIST from public mirrors, checked against pinned checksums.
//! Class names for grids, Fashion-MNIST's recognised by its labels' checksum (`classes`).
//! Batches: Poisson sampling, shuffled batches and GS-WGAN's disjoint partitions (`sampling`).
pub mod classes;
pub mod dataset;
pub mod fetch;
pub mod idx;
pub mod sampling;

pub use dataset::{data_dir, default_data_root, scale_pixels, Dataset, PixelScale, Split, DATA_ENV, IMAGE_SIDE, NUM_CLASSES};
pub use idx::{read_images, read_labels, IdxImages, IdxLabels};
pub use sampling::{disjoint_partitions, BatchSampler, Sampling};
