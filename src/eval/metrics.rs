//! Classification scores: accuracy, macro-F1, and ROC AUC (binary, per class one-vs-rest, and
//! micro-averaged over classes, DP-CGAN's metric). AUC is the Mann–Whitney statistic with tied
//! scores counted half, which equals the trapezoidal area under the ROC curve (scikit-learn's).
use crate::error::{Error, Result};

fn check_lengths(a: usize, b: usize, what: &str) -> Result<()> {
    if a != b || a == 0 {
        return Err(Error::Invalid(format!("{what}: {a} predictions for {b} labels")));
    }
    Ok(())
}

pub fn accuracy(predicted: &[u32], truth: &[u32]) -> Result<f64> {
    check_lengths(predicted.len(), truth.len(), "accuracy")?;
    Ok(predicted.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / truth.len() as f64)
}

/// The unweighted mean over classes of F1 = 2·precision·recall / (precision + recall); a class
/// with no true and no predicted example scores 0 (scikit-learn's `zero_division=0`).
pub fn macro_f1(predicted: &[u32], truth: &[u32], classes: usize) -> Result<f64> {
    check_lengths(predicted.len(), truth.len(), "macro_f1")?;
    let total: f64 = (0..classes as u32)
        .map(|c| {
            let tp = predicted.iter().zip(truth).filter(|&(&p, &t)| p == c && t == c).count() as f64;
            let predicted_c = predicted.iter().filter(|&&p| p == c).count() as f64;
            let actual_c = truth.iter().filter(|&&t| t == c).count() as f64;
            // F1 = 2TP / (predicted + actual)
            if predicted_c + actual_c == 0.0 {
                0.0
            } else {
                2.0 * tp / (predicted_c + actual_c)
            }
        })
        .sum();
    Ok(total / classes as f64)
}

/// Binary ROC AUC of `scores` for `positive` labels: P(score of a positive > score of a
/// negative) + ½·P(tie). An error if either class is absent.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Result<f64> {
    check_lengths(scores.len(), positive.len(), "roc_auc")?;
    if scores.iter().any(|s| s.is_nan()) {
        return Err(Error::Invalid("roc_auc: a score is NaN".into()));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over runs of tied scores; the positives' rank sum gives U.
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| positive[order[k]]).count() as f64 * average_rank;
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return Err(Error::Invalid("roc_auc: needs both positive and negative examples".into()));
    }
    Ok((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// One-vs-rest AUC of each class from `scores` (`n × classes`, row-major).
pub fn per_class_auc(scores: &[f64], truth: &[u32], classes: usize) -> Result<Vec<f64>> {
    check_lengths(scores.len(), truth.len() * classes, "per_class_auc")?;
    (0..classes)
        .map(|c| {
            let column: Vec<f64> = scores.iter().skip(c).step_by(classes).copied().collect();
            let positive: Vec<bool> = truth.iter().map(|&t| t as usize == c).collect();
            roc_auc(&column, &positive)
        })
        .collect()
}

/// Micro-averaged AUC: every (example, class) pair is one binary decision, positive where the
/// class is the example's label (scikit-learn's `average="micro"` on one-hot labels).
pub fn micro_auc(scores: &[f64], truth: &[u32], classes: usize) -> Result<f64> {
    check_lengths(scores.len(), truth.len() * classes, "micro_auc")?;
    let positive: Vec<bool> = (0..scores.len()).map(|k| truth[k / classes] as usize == k % classes).collect();
    roc_auc(scores, &positive)
}
