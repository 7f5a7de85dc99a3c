//! The flags DP-CGAN's and DPSGD-GAN's `train` share: where the run lives, and the DP-SGD
//! privacy settings. No clap defaults, so that `--resume` can refuse them: each algorithm applies
//! its own defaults after parsing, and the help lines name both.
use std::path::PathBuf;

use clap::Args;

use super::privacy::{ConversionArg, OrdersArg};

/// The data, the run directory (new or resumed) and the device.
#[derive(Args, Debug)]
pub struct RunDirArgs {
    /// Training data: a directory with MNIST-layout IDX files (MNIST or Fashion-MNIST), or a name
    /// under $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The run directory to create (config.json, metrics.jsonl, checkpoints, sample grids).
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its checkpoint (with its own settings).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    pub device: Option<String>,
}

/// C, σ, the ε budget, δ and the accounting: a step here is one step of the accountant (a D step
/// of DPSGD-GAN).
#[derive(Args, Debug)]
pub struct DpSgdPrivacyArgs {
    /// C: each example's gradient norm bound (DPSGD-GAN's real and generated examples alike)
    /// [default: 1.1 for dp-cgan, 1.0 for dpsgd-gan].
    #[arg(long, allow_negative_numbers = true)]
    pub clip: Option<f32>,
    /// σ: noise std over C [default: 1.15 for dp-cgan, 1.0 for dpsgd-gan, or calibrated to
    /// --target-epsilon].
    #[arg(long, allow_negative_numbers = true)]
    pub noise_multiplier: Option<f32>,
    /// The ε budget at δ: σ is calibrated to it when --noise-multiplier is absent, and the run
    /// stops (with a checkpoint) before any step (DPSGD-GAN: D step) that would pass it.
    #[arg(long, allow_negative_numbers = true)]
    pub target_epsilon: Option<f64>,
    /// δ [default: 1e-5].
    #[arg(long, allow_negative_numbers = true)]
    pub delta: Option<f64>,
    /// How RDP becomes (ε, δ) [default: improved].
    #[arg(long, value_enum)]
    pub conversion: Option<ConversionArg>,
    /// Rényi orders [default: standard].
    #[arg(long, value_enum)]
    pub orders: Option<OrdersArg>,
}

impl RunDirArgs {
    /// The flags `--resume` refuses, as `refuse_on_resume` lists them.
    pub fn given(&self) -> [(&'static str, bool); 1] {
        [("--data", self.data.is_some())]
    }
}

impl DpSgdPrivacyArgs {
    /// σ: the flag; none (calibrated to the target) when only --target-epsilon is given; else the
    /// algorithm's `default`.
    pub fn noise_multiplier_or(&self, default: Option<f32>) -> Option<f32> {
        match (self.noise_multiplier, self.target_epsilon) {
            (Some(sigma), _) => Some(sigma),
            (None, Some(_)) => None,
            (None, None) => default,
        }
    }

    /// The flags as `refuse_on_resume` lists them.
    pub fn given(&self) -> [(&'static str, bool); 6] {
        [
            ("--clip", self.clip.is_some()),
            ("--noise-multiplier", self.noise_multiplier.is_some()),
            ("--target-epsilon", self.target_epsilon.is_some()),
            ("--delta", self.delta.is_some()),
            ("--conversion", self.conversion.is_some()),
            ("--orders", self.orders.is_some()),
        ]
    }
}
