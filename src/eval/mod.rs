//! Evaluating synthetic data: a classifier trained on it, scored on the real test set (accuracy,
//! macro-F1, micro-averaged and per-class AUROC). Repeated runs use the seeds `seed, seed + 1, ...`
//! and are averaged: the best run is never picked, since choosing by test score tunes on the test set.
//!
//! Classifiers (one file each): `logreg` and `mlp`, DP-CGAN's, see pixels scaled to [−1, 1];
//! `lenet`, GS-WGAN's CNN, and `cnn`, DPSGD-GAN's, see normalised [0, 1] pixels; `cnn` chooses its
//! epoch on images held out of the synthetic set. All train with dpgan's tape on the device
//! given, so the same code runs on the CPU and on CUDA.
pub mod cnn;
pub mod features;
pub mod lenet;
pub mod logreg;
pub mod metrics;
pub mod mlp;

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::tensor::Device;

pub use cnn::{Cnn, CnnConfig, EpochChoice};
pub use features::{Features, ImageSet};
pub use lenet::{LeNet, LeNetConfig};
pub use logreg::{Convergence, LogReg, LogRegConfig};
pub use mlp::{Mlp, MlpConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classifier {
    /// One-vs-rest L2 logistic regression (DP-CGAN).
    Logreg,
    /// One hidden layer of 100 ReLU (DP-CGAN).
    Mlp,
    /// LeNet-5 (GS-WGAN).
    Lenet,
    /// Two convolutions, dropout, two linear layers (DPSGD-GAN).
    Cnn,
}

impl Classifier {
    pub fn name(self) -> &'static str {
        match self {
            Classifier::Logreg => "logreg",
            Classifier::Mlp => "mlp",
            Classifier::Lenet => "lenet",
            Classifier::Cnn => "cnn",
        }
    }
    /// The recipe's number of epochs; `None` for logistic regression, which runs to convergence.
    pub fn default_epochs(self) -> Option<usize> {
        match self {
            Classifier::Logreg => None,
            Classifier::Mlp => Some(MlpConfig::default().epochs),
            Classifier::Lenet => Some(LeNetConfig::default().epochs),
            Classifier::Cnn => Some(CnnConfig::default().epochs),
        }
    }
}

impl fmt::Display for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to evaluate: the first seed, how many runs, and an optional shorter training (for tests and
/// quick looks; `None` is the recipe).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalConfig {
    pub seed: u64,
    pub repeats: usize,
    pub epochs: Option<usize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { seed: 0, repeats: 1, epochs: None }
    }
}

/// The scores of one trained classifier on the test set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunScores {
    pub seed: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub auroc_micro: f64,
    pub per_class_auroc: Vec<f64>,
    pub train_seconds: f64,
    /// Logistic regression only: L-BFGS iterations and whether the gradient met the tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<Convergence>,
    /// CNN only: the epoch scored, chosen on images held out of the training set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_choice: Option<EpochChoice>,
}

/// A metric over the runs: mean, sample standard deviation (n − 1; 0 for one run), every value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metric {
    pub mean: f64,
    pub sd: f64,
    pub runs: Vec<f64>,
}

impl Metric {
    pub fn over(runs: Vec<f64>) -> Metric {
        let n = runs.len() as f64;
        let mean = runs.iter().sum::<f64>() / n;
        let sd = if runs.len() > 1 { (runs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        Metric { mean, sd, runs }
    }
}

/// Everything `dpgan eval` reports; read back where a finished evaluation is reused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub classifier: Classifier,
    pub repeats: usize,
    pub seeds: Vec<u64>,
    /// Epochs each run trained (`None` for logistic regression).
    pub epochs: Option<usize>,
    pub train_size: usize,
    pub test_size: usize,
    pub accuracy: Metric,
    pub macro_f1: Metric,
    pub auroc_micro: Metric,
    /// Each class's one-vs-rest AUROC, averaged over the runs.
    pub per_class_auroc: Vec<f64>,
    pub runs: Vec<RunScores>,
}

/// Trains `classifier` on `train` `config.repeats` times and scores each on `test`.
pub fn evaluate(train: &ImageSet, test: &ImageSet, classifier: Classifier, config: &EvalConfig, device: &Device) -> Result<EvalReport> {
    evaluate_with_progress(train, test, classifier, config, device, |_, _| {})
}

/// [`evaluate`], calling `progress(run_index, scores)` after each run.
pub fn evaluate_with_progress(
    train: &ImageSet,
    test: &ImageSet,
    classifier: Classifier,
    config: &EvalConfig,
    device: &Device,
    mut progress: impl FnMut(usize, &RunScores),
) -> Result<EvalReport> {
    if config.repeats == 0 {
        return Err(Error::Invalid("evaluation: repeats must be at least 1".into()));
    }
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::Invalid(format!(
            "evaluation: training images are {}×{} but test images are {}×{}",
            train.height, train.width, test.height, test.width
        )));
    }
    let epochs = match (classifier, config.epochs) {
        (Classifier::Logreg, Some(_)) => {
            return Err(Error::Invalid("epochs apply to mlp, lenet and cnn; logreg runs L-BFGS to convergence".into()));
        }
        (_, Some(0)) => return Err(Error::Invalid("epochs must be at least 1".into())),
        (c, e) => e.or(c.default_epochs()),
    };
    let scale = if matches!(classifier, Classifier::Lenet | Classifier::Cnn) { Features::normalised } else { Features::symmetric };
    let (x_train, x_test) = (scale(train), scale(test));
    let truth: Vec<u32> = test.labels.iter().map(|&l| l as u32).collect();
    let mut runs = Vec::with_capacity(config.repeats);
    for r in 0..config.repeats {
        let seed = config.seed.wrapping_add(r as u64);
        let started = Instant::now();
        let (scores, solver, epoch_choice) = train_and_score(classifier, &x_train, train.labels, &x_test, epochs, seed, device)?;
        let train_seconds = started.elapsed().as_secs_f64();
        let predicted = features::argmax_rows(&scores);
        let run = RunScores {
            seed,
            accuracy: metrics::accuracy(&predicted, &truth)?,
            macro_f1: metrics::macro_f1(&predicted, &truth, NUM_CLASSES)?,
            auroc_micro: metrics::micro_auc(&scores, &truth, NUM_CLASSES)?,
            per_class_auroc: metrics::per_class_auc(&scores, &truth, NUM_CLASSES)?,
            train_seconds,
            solver,
            epoch_choice,
        };
        progress(r, &run);
        runs.push(run);
    }
    let metric = |f: fn(&RunScores) -> f64| Metric::over(runs.iter().map(f).collect());
    let per_class_auroc = (0..NUM_CLASSES).map(|k| runs.iter().map(|r| r.per_class_auroc[k]).sum::<f64>() / runs.len() as f64).collect();
    Ok(EvalReport {
        classifier,
        repeats: config.repeats,
        seeds: runs.iter().map(|r| r.seed).collect(),
        epochs,
        train_size: train.len(),
        test_size: test.len(),
        accuracy: metric(|r| r.accuracy),
        macro_f1: metric(|r| r.macro_f1),
        auroc_micro: metric(|r| r.auroc_micro),
        per_class_auroc,
        runs,
    })
}

/// One run: train with `seed`, return the test scores (`rows × 10`) and, for logreg, how it
/// converged, for the CNN, which epoch it kept.
fn train_and_score(
    classifier: Classifier,
    x_train: &Features,
    labels: &[u8],
    x_test: &Features,
    epochs: Option<usize>,
    seed: u64,
    device: &Device,
) -> Result<(Vec<f64>, Option<Convergence>, Option<EpochChoice>)> {
    match classifier {
        Classifier::Logreg => {
            let model = LogReg::fit(x_train, labels, &LogRegConfig::default(), device)?;
            Ok((model.scores(x_test)?, Some(model.convergence), None))
        }
        Classifier::Mlp => {
            let config = MlpConfig { epochs: epochs.unwrap_or(MlpConfig::default().epochs), ..MlpConfig::default() };
            Ok((Mlp::fit(x_train, labels, &config, seed, device)?.scores(x_test)?, None, None))
        }
        Classifier::Lenet => {
            let config = LeNetConfig { epochs: epochs.unwrap_or(LeNetConfig::default().epochs), ..LeNetConfig::default() };
            Ok((LeNet::fit(x_train, labels, &config, seed, device)?.scores(x_test)?, None, None))
        }
        Classifier::Cnn => {
            let config = CnnConfig { epochs: epochs.unwrap_or(CnnConfig::default().epochs), ..CnnConfig::default() };
            let (model, choice) = Cnn::fit(x_train, labels, &config, seed, device)?;
            Ok((model.scores(x_test)?, None, Some(choice)))
        }
    }
}
