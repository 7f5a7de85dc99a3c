//! From an RDP curve (ε_RDP(α) at a list of orders) to one (ε, δ) guarantee.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How RDP becomes (ε, δ)-DP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    /// Mironov 2017, Prop. 3: ε = RDP(α) + ln(1/δ)/(α−1). What TF-Privacy 0.2 and DP-CGAN used.
    Classic,
    /// Balle et al. 2020 ("Hypothesis testing interpretations and Rényi DP", Thm. 21), as Opacus's
    /// `get_privacy_spent` writes it: ε = RDP(α) + ln((α−1)/α) − (ln δ + ln α)/(α−1). It differs
    /// from the classic one by ln(1−1/α) − ln(α)/(α−1) < 0 at every α > 1, so it is never worse.
    #[default]
    Improved,
}

/// The guarantee and the order that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guarantee {
    pub epsilon: f64,
    pub delta: f64,
    /// The order at which the minimum was attained; NaN when no order gave a number.
    pub order: f64,
}

/// Checks δ ∈ (0, 1).
pub fn check_delta(delta: f64) -> Result<()> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(Error::Invalid(format!("δ must be in (0, 1), got {delta}")));
    }
    Ok(())
}

/// ε at δ, minimised over `orders` (each > 1) for the RDP values `rdp` (same length).
///
/// As Opacus's `get_privacy_spent`: orders whose ε is NaN are ignored, and if every one is NaN the
/// answer is ε = ∞ (no guarantee). Among equal minima the first order wins. One departure: a
/// negative minimum (possible only for a near-zero RDP at orders beyond 1/δ) is reported as 0, as
/// TF-Privacy does; a negative ε is no guarantee at all, and 0 is the tightest true one.
pub fn epsilon(orders: &[f64], rdp: &[f64], delta: f64, conversion: Conversion) -> Result<Guarantee> {
    check_delta(delta)?;
    if orders.len() != rdp.len() || orders.is_empty() {
        return Err(Error::Invalid(format!("{} orders but {} RDP values", orders.len(), rdp.len())));
    }
    let mut best = Guarantee { epsilon: f64::INFINITY, delta, order: f64::NAN };
    let mut any_number = false;
    for (&alpha, &r) in orders.iter().zip(rdp) {
        super::rdp::check_order(alpha)?;
        let eps = epsilon_at(alpha, r, delta, conversion);
        if eps.is_nan() {
            continue;
        }
        if !any_number || eps < best.epsilon {
            best = Guarantee { epsilon: eps, delta, order: alpha };
            any_number = true;
        }
    }
    best.epsilon = best.epsilon.max(0.0);
    Ok(best)
}

/// ε at one order.
pub fn epsilon_at(alpha: f64, rdp: f64, delta: f64, conversion: Conversion) -> f64 {
    match conversion {
        Conversion::Classic => rdp - delta.ln() / (alpha - 1.0),
        Conversion::Improved => rdp - (delta.ln() + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dp_accounting's `test_compute_epsilon_delta_pure_dp`: constant RDP 1.1 (pure DP) at orders
    /// 2..32, δ = 1e-5, improved conversion: ε = 1.32783806176 at α = 32.
    #[test]
    fn pure_dp_curve_matches_dp_accounting() {
        let orders: Vec<f64> = (2..33).map(f64::from).collect();
        let g = epsilon(&orders, &vec![1.1; orders.len()], 1e-5, Conversion::Improved).unwrap();
        assert!((g.epsilon - 1.32783806176).abs() < 1e-10, "{}", g.epsilon);
        assert_eq!(g.order, 32.0);
        let c = epsilon(&orders, &vec![1.1; orders.len()], 1e-5, Conversion::Classic).unwrap();
        assert!((c.epsilon - (1.1 + 1e5f64.ln() / 31.0)).abs() < 1e-14);
    }

    #[test]
    fn nan_orders_are_skipped_and_all_nan_means_no_guarantee() {
        let g = epsilon(&[2.0, 3.0], &[f64::NAN, 0.5], 1e-5, Conversion::Classic).unwrap();
        assert_eq!(g.order, 3.0);
        let none = epsilon(&[2.0], &[f64::NAN], 1e-5, Conversion::Improved).unwrap();
        assert!(none.epsilon.is_infinite() && none.order.is_nan());
        let inf = epsilon(&[2.0], &[f64::INFINITY], 1e-5, Conversion::Improved).unwrap();
        assert_eq!(inf.epsilon, f64::INFINITY);
    }

    /// Among orders with the same ε the first is reported: an infinite tie (no order gives a
    /// guarantee) and a finite one, found by stepping the second RDP value until its ε equals the
    /// first's to the last bit.
    #[test]
    fn among_equal_minima_the_first_order_wins() {
        let tie = epsilon(&[2.0, 3.0], &[f64::INFINITY, f64::INFINITY], 1e-5, Conversion::Classic).unwrap();
        assert_eq!((tie.epsilon, tie.order), (f64::INFINITY, 2.0));
        let delta = 1e-5;
        let target = epsilon_at(4.0, 0.75, delta, Conversion::Classic);
        let mut r = target + delta.ln() / (8.0 - 1.0);
        for _ in 0..64 {
            let e = epsilon_at(8.0, r, delta, Conversion::Classic);
            if e == target {
                break;
            }
            r = if e < target { r.next_up() } else { r.next_down() };
        }
        assert_eq!(epsilon_at(8.0, r, delta, Conversion::Classic), target, "no exact tie found");
        let g = epsilon(&[4.0, 8.0], &[0.75, r], delta, Conversion::Classic).unwrap();
        assert_eq!((g.epsilon, g.order), (target, 4.0));
        let g = epsilon(&[8.0, 4.0], &[r, 0.75], delta, Conversion::Classic).unwrap();
        assert_eq!((g.epsilon, g.order), (target, 8.0));
    }

    #[test]
    fn improved_is_never_worse_and_negative_becomes_zero() {
        for alpha in [1.01, 1.5, 2.0, 10.0, 63.0, 1e4] {
            for r in [0.0, 1e-3, 2.0] {
                assert!(epsilon_at(alpha, r, 1e-5, Conversion::Improved) < epsilon_at(alpha, r, 1e-5, Conversion::Classic));
            }
        }
        let g = epsilon(&[1e7], &[0.0], 1e-5, Conversion::Improved).unwrap();
        assert!(epsilon_at(1e7, 0.0, 1e-5, Conversion::Improved) < 0.0);
        assert_eq!(g.epsilon, 0.0);
    }

    #[test]
    fn bad_delta_and_lengths_are_refused() {
        assert!(epsilon(&[2.0], &[0.1], 0.0, Conversion::Classic).is_err());
        assert!(epsilon(&[2.0], &[0.1], 1.0, Conversion::Classic).is_err());
        assert!(epsilon(&[2.0, 3.0], &[0.1], 1e-5, Conversion::Classic).is_err());
        assert!(epsilon(&[1.0], &[0.1], 1e-5, Conversion::Classic).is_err());
    }
}
