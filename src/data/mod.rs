//! Data: the IDX reader and the MNIST-layout data set with its conversions to model inputs.
//! Batching, Poisson sampling and GS-WGAN's disjoint partitions build on [`Dataset`].
pub mod dataset;
pub mod idx;

pub use dataset::{data_dir, scale_pixels, Dataset, PixelScale, Split, DATA_ENV, NUM_CLASSES};
pub use idx::{read_images, read_labels, IdxImages, IdxLabels};
