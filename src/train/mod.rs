//! Training: the published algorithms' steps and the machinery of a run around them (a run
//! directory, replayable randomness, progress).
pub mod captured;
pub mod dp_sgd_run;
pub mod dpcgan;
pub mod dpsgd_gan;
pub mod gswgan;
pub mod interrupt;
pub mod progress;
pub mod release;
pub mod replay;
pub mod resident;
pub mod run_dir;

use crate::backend::ops;
use crate::data::dataset::IMAGE_SIDE;
use crate::tensor::Tensor;

/// Receives generated images a chunk at a time: pixels `[n, 784]` row-major, and their class.
/// Sampling through a sink keeps memory bounded by a chunk, whatever the count.
pub type ImageSink<'a> = dyn FnMut(&[f32], u8) -> crate::error::Result<()> + 'a;

/// The images and labels `generate` hands its sink, collected.
pub fn collect_images(generate: impl FnOnce(&mut ImageSink) -> crate::error::Result<()>) -> crate::error::Result<(Vec<f32>, Vec<u8>)> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    generate(&mut |chunk: &[f32], class: u8| {
        images.extend_from_slice(chunk);
        labels.extend(std::iter::repeat_n(class, chunk.len() / (IMAGE_SIDE * IMAGE_SIDE)));
        Ok(())
    })?;
    Ok((images, labels))
}

/// Calls `draw(class, n)` for chunks of at most `chunk` images (what bounds memory whatever the
/// count) until `per_class` of each class, class by class: every generator's balanced sampling.
pub fn by_class_chunks(
    per_class: usize,
    chunk: usize,
    mut draw: impl FnMut(u32, usize) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    for class in 0..crate::data::NUM_CLASSES as u32 {
        let mut left = per_class;
        while left > 0 {
            let n = left.min(chunk.max(1));
            draw(class, n)?;
            left -= n;
        }
    }
    Ok(())
}

/// D's batch for a private step: the real examples (target 1) followed by the generated ones
/// (target 0) along the batch axis, as examples, one-hot labels and BCE targets `[1, n + m, 1]`,
/// all made on the device (no upload). DP-CGAN's and DPSGD-GAN's D steps clip each of its
/// examples on its own; an empty real part (a Poisson draw) leaves the generated ones.
pub fn real_then_generated(
    images: &Tensor,
    labels: &Tensor,
    fake: &Tensor,
    fake_labels: &Tensor,
) -> crate::error::Result<(Tensor, Tensor, Tensor)> {
    let (real, generated) = (images.shape()[1], fake.shape()[1]);
    // Ones for the real part, padded with the generated part's zeros: two launches, no upload.
    let targets = ops::pad(&Tensor::full(&[1, real, 1], 1.0, &fake.device())?, 1, 0, generated)?;
    Ok((ops::concat(&[images, fake], 1)?, ops::concat(&[labels, fake_labels], 1)?, targets))
}

/// Refuses a setting that must be finite and above zero (a NaN learning rate trains NaN losses; a
/// negative one ascends), naming the flag.
pub(crate) fn check_positive(flag: &str, value: f64) -> crate::error::Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(crate::error::Error::Invalid(format!("{flag} must be finite and positive, got {value}")))
    }
}

/// Refuses a δ outside (0, 1), naming the flag.
pub(crate) fn check_delta_flag(delta: f64) -> crate::error::Result<()> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(crate::error::Error::Invalid(format!("--delta must be in (0, 1), got {delta}")))
    }
}

/// Why a run's `train` returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// Every planned step ran.
    Completed,
    /// The next step would have passed the ε budget (the accountant's sentence).
    Budget(String),
    /// A signal asked the run to stop; it finished its step and wrote a checkpoint.
    Interrupted(interrupt::Signal),
}

impl Stop {
    /// The signal that stopped the run, if one did.
    pub fn signal(&self) -> Option<interrupt::Signal> {
        match self {
            Stop::Interrupted(signal) => Some(*signal),
            Stop::Completed | Stop::Budget(_) => None,
        }
    }

    /// What the checkpoint records as the reason the run ended early: only the budget ends it
    /// for good (an interrupted run is continued with `--resume`). `unit` names a step.
    pub fn recorded_reason(&self, unit: &str, next: u64) -> Option<String> {
        match self {
            Stop::Budget(why) => Some(format!("stopped before {unit} {next}: {why}")),
            Stop::Completed | Stop::Interrupted(_) => None,
        }
    }
}
