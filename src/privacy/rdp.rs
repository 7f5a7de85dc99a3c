//! Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang, "Rényi
//! Differential Privacy of the Sampled Gaussian Mechanism", 2019).
//!
//! With μ₀ = N(0, σ²), μ₁ = N(1, σ²) and μ = (1−q)μ₀ + qμ₁, the RDP at order α is
//! ln A_α / (α−1), A_α = E_{z∼μ₀}[(μ(z)/μ₀(z))^α]. Integer α: the binomial expansion
//! A_α = Σᵢ C(α,i) qⁱ(1−q)^{α−i} e^{(i²−i)/(2σ²)} (§3.2), summed in log-space. Fractional α: the
//! two series of §3.3, split at z₀ = σ² ln(1/q − 1) + ½, summed WITH the signs of the generalised
//! binomial coefficients as TF-Privacy's `_compute_log_a_frac` and Opacus do: that is the exact
//! value (checked against numerical integration in tests/privacy.rs), not an upper bound.
use serde::{Deserialize, Serialize};

use super::special::{log_add, log_erfc, log_sub, LogBinomials};
use crate::{Error, Result};

/// Which list of Rényi orders an accountant optimises over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Orders {
    /// Opacus's and today's TF-Privacy's list: 1.1, 1.2, …, 10.9, then 12, 13, …, 63.
    Standard,
    /// TF-Privacy 0.2's list, which DP-CGAN's published ε used: 1.25, 1.5, 1.75, 2, 2.25, 2.5, 3,
    /// 3.5, 4, 4.5, 5, 6, …, 63, 128, 256, 512.
    #[serde(rename = "tf-privacy-0.2")]
    TfPrivacy02,
    /// 1.0001, 1.0002, …, 1.9999 (steps of 10⁻⁴), then the standard list from 2: for GS-WGAN's
    /// per-step bound, whose RDP grows exponentially in α so that its best order sits between 1 and
    /// 2 and moves by far less than 0.1 (1.052 for the published run). That bound is a closed form;
    /// the subsampled Gaussian's series would take minutes at these 10,000 orders.
    Fine,
}

impl Orders {
    pub fn values(self) -> Vec<f64> {
        match self {
            // Formed as Opacus forms them, 1 + x/10, so the floats are the same bits.
            Orders::Standard => (1..100).map(|x| 1.0 + x as f64 / 10.0).chain((12..64).map(f64::from)).collect(),
            Orders::TfPrivacy02 => [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5]
                .into_iter()
                .chain((5..64).map(f64::from))
                .chain([128.0, 256.0, 512.0])
                .collect(),
            // 1 + n/10⁴ is the same float as the standard list's 1 + x/10 at n = 1000x.
            Orders::Fine => (1..10_000)
                .map(|n| 1.0 + n as f64 / 10_000.0)
                .chain(Orders::Standard.values().into_iter().filter(|&alpha| alpha >= 2.0))
                .collect(),
        }
    }
}

/// Checks the mechanism's parameters, naming the one that is wrong.
pub fn check_mechanism(sample_rate: f64, noise_multiplier: f64) -> Result<()> {
    if !(sample_rate > 0.0 && sample_rate <= 1.0) {
        return Err(Error::Invalid(format!("sample rate q must be in (0, 1], got {sample_rate}")));
    }
    if !(noise_multiplier > 0.0 && noise_multiplier.is_finite()) {
        return Err(Error::Invalid(format!("noise multiplier σ must be positive and finite, got {noise_multiplier}")));
    }
    Ok(())
}

/// Checks a Rényi order: finite and above 1.
pub fn check_order(alpha: f64) -> Result<()> {
    if !(alpha > 1.0 && alpha.is_finite()) {
        return Err(Error::Invalid(format!("Rényi order α must be finite and above 1, got {alpha}")));
    }
    Ok(())
}

/// RDP at order `alpha` of one step of the Gaussian mechanism with noise multiplier
/// `noise_multiplier` on a Poisson sample at rate `sample_rate`. q = 0 gives 0, q = 1 the plain
/// Gaussian's α/(2σ²).
pub fn rdp_subsampled_gaussian(sample_rate: f64, noise_multiplier: f64, alpha: f64) -> Result<f64> {
    check_order(alpha)?;
    if sample_rate == 0.0 {
        return Ok(0.0);
    }
    check_mechanism(sample_rate, noise_multiplier)?;
    if sample_rate == 1.0 {
        return Ok(alpha / (2.0 * noise_multiplier * noise_multiplier));
    }
    Ok(log_a(sample_rate, noise_multiplier, alpha)? / (alpha - 1.0))
}

/// The RDP of one step at every order of `orders`.
pub fn rdp_curve(sample_rate: f64, noise_multiplier: f64, orders: &[f64]) -> Result<Vec<f64>> {
    orders.iter().map(|&a| rdp_subsampled_gaussian(sample_rate, noise_multiplier, a)).collect()
}

/// ln A_α for 0 < q < 1.
fn log_a(q: f64, sigma: f64, alpha: f64) -> Result<f64> {
    if alpha.fract() == 0.0 {
        Ok(log_a_integer(q, sigma, alpha))
    } else {
        log_a_fractional(q, sigma, alpha)
    }
}

/// §3.2, rearranged so that nothing cancels: Σᵢ C(α,i)qⁱ(1−q)^{α−i} = 1 and the i = 0, 1 terms have
/// exponent 0, so A_α − 1 = Σ_{i≥2} C(α,i)qⁱ(1−q)^{α−i}·expm1((i²−i)/(2σ²)), all terms positive.
/// ln A_α = ln1p(A_α − 1) is then exact to rounding even where A_α − 1 is far below 1e-16 (tiny q,
/// large σ), where summing A_α itself would leave only rounding noise.
fn log_a_integer(q: f64, sigma: f64, alpha: f64) -> f64 {
    let two_var = 2.0 * sigma * sigma;
    let (ln_q, ln_1mq) = (q.ln(), (-q).ln_1p());
    // ln(eˣ − 1), without overflow for large x.
    let ln_expm1 = |x: f64| if x > 30.0 { x + (-(-x).exp()).ln_1p() } else { x.exp_m1().ln() };
    let log_a_minus_1 = LogBinomials::new(alpha).take(alpha as usize + 1).skip(2).fold(f64::NEG_INFINITY, |acc, (i, log_coef, _)| {
        let i = i as f64;
        log_add(acc, log_coef + i * ln_q + (alpha - i) * ln_1mq + ln_expm1((i * i - i) / two_var))
    });
    log_add(0.0, log_a_minus_1)
}

/// Terms below e^{−45} ≈ 3e-20 of A_α ≥ 1 cannot change its f64 value: once past i = α, where the
/// series alternate and shrink, the first omitted term bounds the tail. (TF-Privacy and Opacus
/// stop at e^{−30}, which is ~1e-13 absolute; this is that, done to the end of f64.)
const LOG_NEGLIGIBLE: f64 = -45.0;
/// A guard, far beyond what any valid input needs (the terms decay at least like i^{−α−2}).
const MAX_TERMS: u64 = 10_000_000;

/// §3.3: A_α = Σᵢ C(α,i)·[qⁱ(1−q)^{α−i} e^{(i²−i)/2σ²} ½erfc((i−z₀)/√2σ)
///                        + q^{α−i}(1−q)ⁱ e^{((α−i)²−(α−i))/2σ²} ½erfc((z₀−(α−i))/√2σ)],
/// each of the two series kept as a signed log-sum.
///
/// Accuracy: ln A_α comes out with an absolute error of about 1e-16 (A_α ≈ 1 is summed in f64), so
/// the relative error of the RDP is about 1e-16/ln A_α: below 1e-8 for ln A_α > 1e-8 (every
/// DP-SGD setting in docs/algorithms.md and the tests), but only noise once ln A_α < 1e-15 (e.g. q = 1e-6 with
/// σ = 100), where the RDP itself is below 1e-15. A negative result there is rounding, and is
/// reported as 0, which is never below the true value by more than that same 1e-16.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> Result<f64> {
    let two_var = 2.0 * sigma * sigma;
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    let (ln_q, ln_1mq) = (q.ln(), (-q).ln_1p());
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let ln_half = 0.5f64.ln();
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for (i, log_coef, positive) in LogBinomials::new(alpha) {
        let fi = i as f64;
        let j = alpha - fi;
        let log_s0 = log_coef + fi * ln_q + j * ln_1mq + (fi * fi - fi) / two_var + ln_half + log_erfc((fi - z0) / sqrt2_sigma);
        let log_s1 = log_coef + j * ln_q + fi * ln_1mq + (j * j - j) / two_var + ln_half + log_erfc((z0 - j) / sqrt2_sigma);
        if positive {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            let fail = || Error::Invalid(format!("RDP series cancelled below zero at q = {q}, σ = {sigma}, α = {alpha}"));
            log_a0 = log_sub(log_a0, log_s0).ok_or_else(fail)?;
            log_a1 = log_sub(log_a1, log_s1).ok_or_else(fail)?;
        }
        let log_total = log_add(log_a0, log_a1);
        if fi > alpha && log_s0.max(log_s1) < log_total + LOG_NEGLIGIBLE {
            return Ok(log_total.max(0.0));
        }
        if i >= MAX_TERMS {
            break;
        }
    }
    Err(Error::Invalid(format!("RDP series did not converge in {MAX_TERMS} terms at q = {q}, σ = {sigma}, α = {alpha}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lists_have_the_published_lengths_and_ends() {
        let s = Orders::Standard.values();
        assert_eq!(s.len(), 99 + 52);
        assert_eq!((s[0], s[98], s[99], s[150]), (1.1, 1.0 + 99.0 / 10.0, 12.0, 63.0));
        let t = Orders::TfPrivacy02.values();
        assert_eq!(t.len(), 10 + 59 + 3);
        assert_eq!((t[0], t[10], t[68], t[71]), (1.25, 5.0, 63.0, 512.0));
        let f = Orders::Fine.values();
        assert_eq!(f.len(), 9_999 + 90 + 52);
        assert_eq!((f[0], f[519], f[9_998], f[9_999], f[f.len() - 1]), (1.0001, 1.052, 1.9999, 2.0, 63.0));
        assert!(f.windows(2).all(|w| w[0] < w[1]), "increasing");
        assert!(s.iter().filter(|&&a| a >= 1.1).all(|a| f.contains(a)), "every standard order, bit for bit");
    }

    #[test]
    fn edge_sample_rates() {
        assert_eq!(rdp_subsampled_gaussian(0.0, 1.0, 2.5).unwrap(), 0.0);
        assert_eq!(rdp_subsampled_gaussian(1.0, 2.0, 2.5).unwrap(), 2.5 / 8.0);
        assert!(rdp_subsampled_gaussian(1.5, 1.0, 2.0).is_err());
        assert!(rdp_subsampled_gaussian(0.1, 0.0, 2.0).is_err());
        assert!(rdp_subsampled_gaussian(0.1, 1.0, 1.0).is_err());
    }

    /// At α = 2 the expansion has one term beyond the first two: A₂ − 1 = q²·expm1(1/σ²), exactly.
    /// With q = 1e-6 and σ = 100 that is 1e-16: summing A₂ itself would return rounding noise.
    #[test]
    fn integer_orders_stay_exact_far_below_f64_resolution_of_a() {
        for (q, sigma) in [(1e-6f64, 100.0f64), (1e-3, 1.0), (0.3, 0.5)] {
            let want = (q * q * (1.0 / (sigma * sigma)).exp_m1()).ln_1p();
            let got = rdp_subsampled_gaussian(q, sigma, 2.0).unwrap();
            assert!(((got - want) / want).abs() < 1e-14, "q {q} σ {sigma}: {got:e} vs {want:e}");
        }
        // Past x = 30 the term's ln(eˣ − 1) is taken as x + ln(1 − e⁻ˣ): that correction, 2e⁻ˣ ≈
        // 2e-13 in ln A₂ ≈ 30 (6e-15 relative, about 50 ulps), must come out with the right sign.
        // Both sides round a few ulps (≈ 1e-16 relative each): a 1e-15 tolerance sees it.
        let (q, sigma) = (0.99f64, (1.0f64 / 30.001).sqrt());
        let want = (q * q * (1.0 / (sigma * sigma)).exp_m1()).ln_1p();
        let got = rdp_subsampled_gaussian(q, sigma, 2.0).unwrap();
        assert!(((got - want) / want).abs() < 1e-15, "q {q} σ {sigma}: {got:e} vs {want:e}");
    }

    /// At an integer order both expansions compute the same A_α (the fractional one with its
    /// erfc-weighted split), so they must agree: a check of the signed series and its stopping rule.
    #[test]
    fn fractional_series_agrees_with_the_binomial_sum_at_integers() {
        for &(q, sigma) in &[(0.01, 1.15), (0.1, 0.8), (0.5, 2.0), (1e-3, 0.19)] {
            for alpha in [2.0, 3.0, 7.0, 20.0] {
                let exact = log_a_integer(q, sigma, alpha);
                let series = log_a_fractional(q, sigma, alpha).unwrap();
                assert!(((series - exact) / exact).abs() < 1e-9, "q {q} σ {sigma} α {alpha}: {series} vs {exact}");
            }
        }
    }
}
