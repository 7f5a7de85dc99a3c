//! Classification scores against hand-computed values and brute-force definitions.
mod common;

use dpgan::eval::metrics::{accuracy, macro_f1, micro_auc, per_class_auc, roc_auc};
use rand::Rng;

/// scikit-learn's documented examples.
#[test]
fn known_values() {
    // roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75
    assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap(), 0.75);
    // f1_score([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1], average="macro") = 0.2666…
    let (truth, pred) = ([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1]);
    approx::assert_relative_eq!(macro_f1(&pred, &truth, 3).unwrap(), 0.8 / 3.0, max_relative = 1e-15);
    approx::assert_relative_eq!(accuracy(&pred, &truth).unwrap(), 1.0 / 3.0, max_relative = 1e-15);
    // Perfect, reversed, all tied.
    let labels = [false, true, false, true];
    assert_eq!(roc_auc(&[0.0, 1.0, 0.2, 0.9], &labels).unwrap(), 1.0);
    assert_eq!(roc_auc(&[1.0, 0.0, 0.9, 0.2], &labels).unwrap(), 0.0);
    assert_eq!(roc_auc(&[0.5; 4], &labels).unwrap(), 0.5);
}

/// AUC against its definition, counted pair by pair, on scores with many ties.
#[test]
fn auc_equals_the_pairwise_definition() {
    let mut rng = common::rng("auc_equals_the_pairwise_definition");
    for _ in 0..20 {
        let n = rng.random_range(2..200);
        let scores: Vec<f64> = (0..n).map(|_| (rng.random_range(0..20) as f64) / 4.0).collect();
        let mut positive: Vec<bool> = (0..n).map(|_| rng.random()).collect();
        positive[0] = true;
        positive[1] = false;
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in (0..n).filter(|&i| positive[i]) {
            for j in (0..n).filter(|&j| !positive[j]) {
                pairs += 1.0;
                wins += if scores[i] > scores[j] {
                    1.0
                } else if scores[i] == scores[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
        approx::assert_relative_eq!(roc_auc(&scores, &positive).unwrap(), wins / pairs, max_relative = 1e-12);
    }
}

#[test]
fn micro_and_per_class_auc_flatten_one_vs_rest() {
    // Three examples, two classes; scores row-major [example][class].
    let scores = [0.9, 0.1, 0.3, 0.7, 0.6, 0.4];
    let truth = [0, 1, 1];
    // Per class: class 0 scores [0.9, 0.3, 0.6] with positive [T, F, F] → 1.0; class 1 scores
    // [0.1, 0.7, 0.4] with positive [F, T, T] → 1.0.
    assert_eq!(per_class_auc(&scores, &truth, 2).unwrap(), vec![1.0, 1.0]);
    // Micro: positives {0.9, 0.7, 0.4} vs negatives {0.1, 0.3, 0.6}: 8 of 9 pairs won.
    approx::assert_relative_eq!(micro_auc(&scores, &truth, 2).unwrap(), 8.0 / 9.0, max_relative = 1e-15);
}

#[test]
fn degenerate_inputs_are_errors() {
    assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_err());
    assert!(roc_auc(&[f64::NAN, 0.2], &[true, false]).is_err());
    assert!(accuracy(&[1, 2], &[1]).is_err() && accuracy(&[], &[]).is_err());
}
