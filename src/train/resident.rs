//! The training set kept on the run's device: uploaded once when a run starts, each step's batch
//! gathered there from its record indices. A step then sends 4 bytes a record to the device
//! instead of the record (3,136 bytes of pixels and a one-hot label), and the host does no copying.
use crate::backend::ops;
use crate::data::dataset::{Dataset, PixelScale, IMAGE_SIDE};
use crate::data::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// Every record's pixels `[N, 784]` and one-hot label `[N, 10]`, on one device (a clone shares them).
#[derive(Clone)]
pub struct ResidentData {
    images: Tensor,
    one_hot: Tensor,
}

impl ResidentData {
    /// Uploads `data`'s images, scaled for the model, and labels (MNIST: 188 MB of f32 pixels).
    pub fn upload(data: &Dataset, scale: PixelScale, device: &Device) -> Result<Self> {
        Self::from_parts(data.pixels_f32(scale), &data.labels_u32(), device)
    }

    /// Uploads images already scaled (`[n, 784]` row-major) and their labels.
    pub fn from_parts(pixels: Vec<f32>, labels: &[u32], device: &Device) -> Result<Self> {
        let n = labels.len();
        if u32::try_from(n).is_err() {
            return Err(Error::Invalid(format!("a training set of {n} records is past the 2³² a batch index can address")));
        }
        Ok(ResidentData {
            images: Tensor::from_vec(pixels, &[n, PIXELS], device)?,
            one_hot: Tensor::one_hot(labels, NUM_CLASSES, &[n], device)?,
        })
    }

    /// The device the set lives on.
    pub fn device(&self) -> Device {
        self.images.device()
    }

    pub fn len(&self) -> usize {
        self.images.shape()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records `batch` (indices into the set) as images `[1, n, 784]` and one-hot labels
    /// `[1, n, 10]`, in that order.
    pub fn batch(&self, batch: &[usize]) -> Result<(Tensor, Tensor)> {
        self.rows(batch, &[1, batch.len()])
    }

    /// The records `records` as images `[prefix.., 784]` and one-hot labels `[prefix.., 10]`
    /// (`prefix` multiplies out to the number of records: `[G, B]` for a group's batches, laid
    /// out member by member).
    pub fn rows(&self, records: &[usize], prefix: &[usize]) -> Result<(Tensor, Tensor)> {
        let indices = records
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| Error::Invalid(format!("record {i} is past the training set's {} records", self.len()))))
            .collect::<Result<Vec<u32>>>()?;
        self.rows_at(&indices, prefix)
    }

    /// [`ResidentData::rows`] of records given as the u32 indices the gather kernel reads.
    pub fn rows_at(&self, indices: &[u32], prefix: &[usize]) -> Result<(Tensor, Tensor)> {
        if prefix.iter().product::<usize>() != indices.len() {
            return Err(Error::Invalid(format!("{} records do not fill a [{prefix:?}] batch", indices.len())));
        }
        let shape = |last: usize| prefix.iter().copied().chain([last]).collect::<Vec<usize>>();
        let images = ops::gather_rows(&self.images, indices)?.reshape(&shape(PIXELS))?;
        let labels = ops::gather_rows(&self.one_hot, indices)?.reshape(&shape(NUM_CLASSES))?;
        Ok((images, labels))
    }
}
