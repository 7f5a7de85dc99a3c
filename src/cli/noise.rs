//! The flags that choose a private run's noise, shared by `train` and `reproduce` of every
//! algorithm.
use clap::Args;
use dpgan::dp::{KeySource, NoiseMode};

#[derive(Args, Clone, Copy, Debug, Default)]
pub struct NoiseArgs {
    /// Draw the noise with Philox4x32 and 53-bit Box–Muller: faster than the default, ChaCha20
    /// with a sampler hardened against floating-point attacks, and not cryptographic (keyed by 64
    /// of the key's 256 bits).
    #[arg(long)]
    pub fast_noise: bool,
    /// Derive the noise and batch key from --seed instead of a secret drawn from the OS, so that
    /// the run replays exactly. NOT PRIVATE: anyone who knows the seed can remove the noise. For
    /// research replays and tests only; config.json and every sample.json say so.
    #[arg(long)]
    pub replayable_noise: bool,
}

impl NoiseArgs {
    pub fn mode(&self) -> NoiseMode {
        if self.fast_noise {
            NoiseMode::Fast
        } else {
            NoiseMode::Secure
        }
    }

    /// The flags as `refuse_on_resume` lists them.
    pub fn given(&self) -> [(&'static str, bool); 2] {
        [("--fast-noise", self.fast_noise), ("--replayable-noise", self.replayable_noise)]
    }
}

/// Says, before a run starts, that it is not private, if it is not.
pub fn warn_if_not_private(source: KeySource) {
    if let Some(warning) = source.warning() {
        eprintln!("warning: {warning}");
    }
}
