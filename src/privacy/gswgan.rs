//! GS-WGAN's privacy accounting (Chen, Orekondy, Fritz 2020), in the two ways docs/algorithms.md names.
//!
//! `as-published`: the Gaussian mechanism (RDP α/(2σ²)) amplified by subsampling WITHOUT
//! replacement at γ = 1/k (Wang, Balle, Kasiviswanathan 2019, "Subsampled Rényi DP and analytical
//! moments accountant", Theorem 9, the general upper bound), composed B·T times, converted with the
//! classic formula. This reproduces the published ε = 10.
//!
//! `per-step`: a proven bound for the mechanism as it runs. A generator step picks one of k fixed,
//! disjoint slices, and one record of that slice can move all B sanitised rows of the step together
//! (through the critic it trained): joint sensitivity √B·2C/B against noise 2σC/B per coordinate, a
//! Gaussian of RDP ε_α = αB/(2σ²), i.e. noise multiplier σ/√B. The selection is not Poisson
//! sampling: the step's output is (1 − q)R + q·M(Sᵢ) without the record and (1 − q)R + q·M(Sᵢ ∪ x)
//! with it, where R, the other k − 1 slices' part, is not M(Sᵢ), so the subsampled Gaussian's
//! analysis does not cover it. Joint convexity of exp((α − 1)·D_α) does. Let N be the number of the
//! T steps that select the record's slice, Binomial(T, q = 1/k) and independent of the data. Given
//! the selections, only those N steps depend on the record, each a Gaussian of RDP at most ε_α
//! whatever state the critics are in (every row is clipped), so given them the whole run has
//! (α − 1)·D_α ≤ N·(α − 1)·ε_α; convexity over the selections then gives
//! exp((α − 1)·D_α) ≤ E[exp(N·(α − 1)·ε_α)] = (1 + q·(e^{(α − 1)·ε_α} − 1))^T: T compositions of
//! RDP(α) = ln(1 + q·(e^{(α − 1)·ε_α} − 1))/(α − 1) per step. The Gaussian's ε_α is the same for a
//! mean shift either way, so the bound holds for adding and for removing the record alike; steps
//! of different σ or B compose the same way (the expectation factorises over the independent
//! selections). The best order lies between 1 and 2 for the published run, hence
//! [`Orders::Fine`](super::Orders::Fine).
//!
//! Convexity uses nothing about R. A sharper analysis of selection among disjoint slices could
//! tighten the bound; none is claimed here. (The Poisson-subsampled Gaussian at σ/√B, which does not
//! apply, would give ε ≈ 366 for the published run; this bound gives ε ≈ 659.)
use serde::{Deserialize, Serialize};

use super::check_steps;
use super::conversion::{self, check_delta, Conversion, Guarantee};
use super::rdp::check_order;
use super::special::{log_add, LogBinomials};
use crate::{Error, Result};

/// Integer orders searched by the as-published accounting: 2..=MAX_ORDER.
pub const MAX_ORDER: u64 = 256;
/// Step of the 1-D search around the best integer order.
const FINE_STEP: f64 = 1e-3;

/// The parameters of a GS-WGAN run that accounting needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GsWganRun {
    /// σ of the sanitiser (noise std 2σC/B per gradient, sensitivity 2C/B).
    pub noise_multiplier: f64,
    /// k, the number of discriminators (data slices); one is chosen per iteration.
    pub discriminators: u64,
    /// B, the batch size of a generator step.
    pub batch_size: u64,
}

impl GsWganRun {
    pub fn check(&self) -> Result<()> {
        if !(self.noise_multiplier > 0.0 && self.noise_multiplier.is_finite()) {
            return Err(Error::Invalid(format!("noise multiplier σ must be positive and finite, got {}", self.noise_multiplier)));
        }
        if self.discriminators == 0 {
            return Err(Error::Invalid("the number of discriminators k must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Invalid("the batch size B must be at least 1".into()));
        }
        Ok(())
    }

    /// γ = 1/k.
    pub fn sampling_ratio(&self) -> f64 {
        1.0 / self.discriminators as f64
    }

    /// σ/√B, the noise multiplier of the Gaussian that one generator step is as a whole.
    pub fn per_step_noise_multiplier(&self) -> f64 {
        self.noise_multiplier / (self.batch_size as f64).sqrt()
    }
}

/// WBK Theorem 9 with ε(j) = j/(2σ²): for integer α ≥ 2,
/// K(α) = min{(α−1)ε(α), ln[1 + γ²C(α,2)·min(4(e^{ε(2)}−1), 2e^{ε(2)}) + Σ_{j=3..α} 2γʲC(α,j)e^{(j−1)ε(j)}]},
/// the bound on the cumulant (α−1)·RDP(α) of one subsampled query. The sum is taken in log-space.
pub fn log_moment_integer(noise_multiplier: f64, gamma: f64, alpha: u64) -> f64 {
    let gaussian = |j: f64| j / (2.0 * noise_multiplier * noise_multiplier);
    let ln_gamma = gamma.ln();
    let eps2 = gaussian(2.0);
    let mut log_sum = 0.0; // the 1
    for (j, log_coef, _) in LogBinomials::new(alpha as f64).take(alpha as usize + 1).skip(2) {
        let jf = j as f64;
        let term = if j == 2 {
            2.0 * ln_gamma + log_coef + (4.0 * eps2.exp_m1()).min(2.0 * eps2.exp()).ln()
        } else {
            std::f64::consts::LN_2 + jf * ln_gamma + log_coef + (jf - 1.0) * gaussian(jf)
        };
        log_sum = log_add(log_sum, term);
    }
    ((alpha as f64 - 1.0) * gaussian(alpha as f64)).min(log_sum)
}

/// Per-query RDP at any order α > 1, as docs/algorithms.md defines it for the as-published accounting:
/// α ≤ 2 uses K(2); otherwise K is interpolated linearly between the neighbouring integers; then
/// divided by α−1 and capped by the unamplified Gaussian's α/(2σ²).
pub fn per_query_rdp(noise_multiplier: f64, gamma: f64, alpha: f64) -> Result<f64> {
    check_order(alpha)?;
    let k = if alpha <= 2.0 {
        log_moment_integer(noise_multiplier, gamma, 2)
    } else {
        let lo = alpha.floor();
        let k_lo = log_moment_integer(noise_multiplier, gamma, lo as u64);
        if alpha == lo {
            k_lo
        } else {
            let k_hi = log_moment_integer(noise_multiplier, gamma, lo as u64 + 1);
            k_lo + (alpha - lo) * (k_hi - k_lo)
        }
    };
    Ok((k / (alpha - 1.0)).min(alpha / (2.0 * noise_multiplier * noise_multiplier)))
}

/// The as-published accounting after `iterations` generator iterations: B·T compositions, classic
/// conversion, minimised over integer orders 2..=256 and then over a 1e-3 grid within ±1 of the
/// best integer.
pub fn as_published(run: &GsWganRun, iterations: u64, delta: f64) -> Result<Guarantee> {
    run.check()?;
    check_steps(iterations)?;
    check_delta(delta)?;
    let gamma = run.sampling_ratio();
    let compositions = (run.batch_size * iterations) as f64;
    let at = |alpha: f64| -> Result<f64> {
        let rdp = compositions * per_query_rdp(run.noise_multiplier, gamma, alpha)?;
        Ok(conversion::epsilon_at(alpha, rdp, delta, Conversion::Classic))
    };
    let mut best = Guarantee { epsilon: f64::INFINITY, delta, order: f64::NAN };
    for alpha in 2..=MAX_ORDER {
        let eps = at(alpha as f64)?;
        if eps < best.epsilon {
            best = Guarantee { epsilon: eps, delta, order: alpha as f64 };
        }
    }
    let centre = best.order;
    for step in 0..=(2.0 / FINE_STEP) as u64 {
        let alpha = centre - 1.0 + step as f64 * FINE_STEP;
        if alpha <= 1.0 {
            continue;
        }
        let eps = at(alpha)?;
        if eps < best.epsilon {
            best = Guarantee { epsilon: eps, delta, order: alpha };
        }
    }
    Ok(best)
}

/// ln(1 + q·(eˣ − 1)) for q ∈ (0, 1] and x ≥ 0, to a few ulp at every x: ln1p(q·expm1(x)) keeps a
/// small x exact, and once q·expm1(x) overflows (x > 709) the identity
/// 1 + q(eˣ − 1) = q·eˣ·(1 + (1 − q)e^{−x}/q) gives x + ln q + ln1p((1 − q)e^{−x}/q).
pub fn log1p_q_expm1(q: f64, x: f64) -> f64 {
    let scaled = q * x.exp_m1();
    if scaled.is_finite() {
        scaled.ln_1p()
    } else {
        x + q.ln() + ((1.0 - q) / q * (-x).exp()).ln_1p()
    }
}

/// RDP at order `alpha` of one generator step under the per-step accounting (see the module
/// documentation): ln(1 + q·(e^{(α − 1)·ε_α} − 1))/(α − 1), with q = 1/k and ε_α = αB/(2σ²).
pub fn per_step_rdp(run: &GsWganRun, alpha: f64) -> Result<f64> {
    run.check()?;
    check_order(alpha)?;
    let gaussian = alpha * run.batch_size as f64 / (2.0 * run.noise_multiplier * run.noise_multiplier);
    Ok(log1p_q_expm1(run.sampling_ratio(), (alpha - 1.0) * gaussian) / (alpha - 1.0))
}

/// The per-step accounting after `iterations` generator iterations: T times [`per_step_rdp`] at
/// each of `orders`, then the conversion (training uses [`Orders::Fine`](super::Orders::Fine) and
/// the improved one, valid at every α > 1).
pub fn per_step(run: &GsWganRun, iterations: u64, delta: f64, orders: &[f64], conversion: Conversion) -> Result<Guarantee> {
    run.check()?;
    check_steps(iterations)?;
    check_delta(delta)?;
    let total = orders.iter().map(|&alpha| Ok(iterations as f64 * per_step_rdp(run, alpha)?)).collect::<Result<Vec<f64>>>()?;
    conversion::epsilon(orders, &total, delta, conversion)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WBK's α = 2 term on both sides of its min: with large σ (ε(2) small) 4(e^{ε(2)} − 1) is the
    /// smaller, with small σ 2e^{ε(2)}; K(2) against the theorem's expression written out.
    #[test]
    fn the_alpha_two_moment_takes_the_smaller_of_its_two_bounds() {
        let gamma = 1e-3;
        for sigma in [5.0, 1.07, 0.5] {
            let eps2 = 2.0 / (2.0 * sigma * sigma);
            let bound = (4.0 * f64::exp_m1(eps2)).min(2.0 * eps2.exp());
            let want = eps2.min((gamma * gamma * bound).ln_1p());
            let got = log_moment_integer(sigma, gamma, 2);
            assert!((got - want).abs() <= 1e-12 * want, "σ {sigma}: {got} vs {want}");
        }
    }

    /// Without subsampling (γ = 1) the bound is the Gaussian's exact cumulant (α−1)·α/(2σ²): the
    /// sum's last term alone, 2e^{(α−1)ε(α)}, already exceeds it, so the min takes the first side.
    #[test]
    fn without_subsampling_the_moment_is_the_gaussians_cumulant() {
        for sigma in [0.5, 1.07, 5.0] {
            for alpha in [2u64, 3, 8, 64] {
                let a = alpha as f64;
                let want = (a - 1.0) * a / (2.0 * sigma * sigma);
                let got = log_moment_integer(sigma, 1.0, alpha);
                assert!((got - want).abs() <= 1e-13 * want, "σ {sigma} α {alpha}: {got} vs {want}");
            }
        }
    }

    /// Between integer orders the per-query RDP interpolates K linearly (docs/algorithms.md): at
    /// α = lo + f it is (K(lo) + f·(K(lo+1) − K(lo)))/(α − 1), checked where that is below the
    /// Gaussian cap, so the interpolation is what decides the value.
    #[test]
    fn fractional_orders_interpolate_the_moment_linearly() {
        for (sigma, gamma) in [(1.07, 0.01), (2.0, 0.05), (0.8, 1e-3)] {
            for alpha in [2.5, 3.25, 7.75, 31.5] {
                let lo = f64::floor(alpha);
                let (k_lo, k_hi) = (log_moment_integer(sigma, gamma, lo as u64), log_moment_integer(sigma, gamma, lo as u64 + 1));
                let interpolated = (k_lo + (alpha - lo) * (k_hi - k_lo)) / (alpha - 1.0);
                let cap = alpha / (2.0 * sigma * sigma);
                assert!(interpolated < cap, "σ {sigma} γ {gamma} α {alpha}: the cap would decide ({interpolated} ≥ {cap})");
                let got = per_query_rdp(sigma, gamma, alpha).unwrap();
                assert!((got - interpolated).abs() <= 1e-13 * interpolated, "σ {sigma} γ {gamma} α {alpha}: {got} vs {interpolated}");
                // Strictly between its integer neighbours' K (K grows with α), not at either end.
                assert!(k_lo < k_hi, "σ {sigma} γ {gamma} α {alpha}: K({lo}) = {k_lo} ≥ K({}) = {k_hi}", lo + 1.0);
            }
        }
    }

    /// Without subsampling (γ = 1) one query is the Gaussian mechanism: its RDP is exactly
    /// α/(2σ²) at every order, integer or not (between integers the interpolated K lies above the
    /// convex (α−1)α/(2σ²), and below α = 2 K(2)/(α−1) does, so the Gaussian cap is what decides).
    #[test]
    fn without_subsampling_a_query_is_the_gaussian_mechanism() {
        for sigma in [0.5, 1.07, 5.0] {
            for alpha in [1.5, 2.0, 2.5, 7.3, 40.0] {
                let want = alpha / (2.0 * sigma * sigma);
                let got = per_query_rdp(sigma, 1.0, alpha).unwrap();
                assert!((got - want).abs() <= 1e-13 * want, "σ {sigma} α {alpha}: {got} vs {want}");
            }
        }
    }

    /// The as-published search: the best integer order in 2..=256, then a 1e-3 grid within ±1 of it.
    /// Written out here over the same ε(α), it gives the same guarantee. Between integer orders K
    /// is linear, so ε(α) = (T·K(α) + ln(1/δ))/(α − 1) is monotone there and the grid cannot beat
    /// the integers (the published run, k = 1000); where the Gaussian cap α/(2σ²) decides (little
    /// or no subsampling, k = 1 or 2) ε is convex in α and the grid finds a strictly better
    /// fractional order.
    #[test]
    fn as_published_refines_the_best_integer_order_on_a_fine_grid() {
        for (sigma, k, batch, iterations, fractional_wins) in
            [(1.07, 1000, 32, 20_000, false), (1.07, 1, 32, 10, true), (5.0, 2, 16, 50, true), (3.0, 1, 1, 1, true)]
        {
            let run = GsWganRun { noise_multiplier: sigma, discriminators: k, batch_size: batch };
            let delta = 1e-5;
            let eps_at = |alpha: f64| {
                let rdp = (batch * iterations) as f64 * per_query_rdp(sigma, run.sampling_ratio(), alpha).unwrap();
                conversion::epsilon_at(alpha, rdp, delta, Conversion::Classic)
            };
            let (mut best_order, mut best_integer) = (0.0, f64::INFINITY);
            for alpha in 2..=MAX_ORDER {
                let eps = eps_at(alpha as f64);
                if eps < best_integer {
                    (best_order, best_integer) = (alpha as f64, eps);
                }
            }
            let grid = (0..=2000).map(|step| best_order - 1.0 + step as f64 * 1e-3).filter(|&alpha| alpha > 1.0);
            let best_fine = grid.map(eps_at).fold(best_integer, f64::min);
            let got = as_published(&run, iterations, delta).unwrap();
            let what = format!("σ {sigma} k {k} B {batch} T {iterations}");
            assert_eq!(got.epsilon, best_fine, "{what}");
            assert_eq!(best_fine < best_integer, fractional_wins, "{what}: grid {best_fine} against integers {best_integer}");
            assert!((got.order - best_order).abs() <= 1.0, "{what}: order {} far from {best_order}", got.order);
        }
    }

    /// The per-step noise multiplier the CLI reports is the one the accounting uses: with k = 1
    /// (every step sees the slice) a step is exactly the Gaussian of noise multiplier σ/√B, whose
    /// RDP is α/(2m²).
    #[test]
    fn the_reported_per_step_noise_multiplier_is_the_accounted_one() {
        for (sigma, batch) in [(1.07, 32), (0.6, 1), (2.5, 600)] {
            let run = GsWganRun { noise_multiplier: sigma, discriminators: 1, batch_size: batch };
            let m = run.per_step_noise_multiplier();
            assert!((m - sigma / (batch as f64).sqrt()).abs() <= 1e-15 * m, "σ {sigma} B {batch}: {m}");
            for alpha in [1.5, 2.0, 32.0] {
                let rdp = per_step_rdp(&run, alpha).unwrap();
                let gaussian = alpha / (2.0 * m * m);
                assert!((rdp - gaussian).abs() <= 1e-13 * gaussian, "σ {sigma} B {batch} α {alpha}: {rdp} vs {gaussian}");
            }
        }
    }

    /// Both branches against their defining expressions where those are exact, and continuous
    /// where they meet.
    #[test]
    fn log1p_q_expm1_is_exact_in_every_range() {
        // Tiny x: ln(1 + q(eˣ − 1)) = qx + O(x²), where forming 1 + … would lose every digit.
        let (q, x) = (1e-3, 1e-12);
        let want = q * x + 0.5 * q * (1.0 - q) * x * x;
        assert!(((log1p_q_expm1(q, x) - want) / want).abs() < 1e-15);
        // q = 1 is the plain Gaussian: x itself, on both branches.
        for x in [1e-9, 0.3, 50.0, 700.0, 1e4, 1e300] {
            assert!(((log1p_q_expm1(1.0, x) - x) / x).abs() < 1e-15, "x {x}");
        }
        // Across the overflow of expm1 (x ≈ 709.78) the two forms agree to rounding.
        for q in [1e-3, 0.5, 1.0 / 3.0] {
            let below = log1p_q_expm1(q, 709.0);
            let want = 709.0 + f64::ln(q) + ((1.0 - q) / q * (-709f64).exp()).ln_1p();
            assert!(((below - want) / want).abs() < 1e-15, "q {q}: {below} vs {want}");
            let above = log1p_q_expm1(q, 710.0);
            assert!((above - below - 1.0).abs() < 1e-12, "q {q}: {above} − {below}");
        }
        assert_eq!(log1p_q_expm1(1e-3, f64::INFINITY), f64::INFINITY);
        assert_eq!(log1p_q_expm1(1e-3, 0.0), 0.0);
    }

    /// Past expm1's overflow the identity's last term matters when q is tiny (few examples in
    /// very many slices): ln(1 + q(eˣ − 1)) = ln((1 − q) + q·eˣ), a log-sum-exp of ln(1 − q) and
    /// ln q + x computed independently, agrees to rounding (of terms near 700 that cancel), at q
    /// from 1e-300 to 1e-307 and x just past 709.78, where the last term is 1e-10 to 1e-2 of the
    /// result, far above that rounding.
    #[test]
    fn log1p_q_expm1_agrees_with_log_sum_exp_past_overflow() {
        for q in [1e-300, 1e-305, 1e-307] {
            for x in [710.0, 712.0] {
                let want = log_add(f64::ln_1p(-q), f64::ln(q) + x);
                let got = log1p_q_expm1(q, x);
                // x + ln q cancels ~700 against ~700: rounding is relative to those terms.
                let scale = x + f64::ln(q).abs();
                assert!((got - want).abs() <= 4.0 * f64::EPSILON * scale, "q {q} x {x}: {got} vs {want}");
                let without_last_term = x + f64::ln(q);
                assert!((got - without_last_term).abs() > 1e3 * f64::EPSILON * scale, "q {q} x {x}: the case must exercise the last term");
            }
        }
    }

    #[test]
    fn per_step_rdp_is_below_the_gaussian_and_refuses_bad_input() {
        let run = GsWganRun { noise_multiplier: 1.07, discriminators: 1000, batch_size: 32 };
        for alpha in [1.0001, 1.052, 2.0, 63.0] {
            let gaussian = alpha * 32.0 / (2.0 * 1.07 * 1.07);
            let rdp = per_step_rdp(&run, alpha).unwrap();
            assert!(rdp > 0.0 && rdp < gaussian, "α {alpha}: {rdp} vs {gaussian}");
        }
        let one = GsWganRun { discriminators: 1, ..run };
        let want = 3.0 * 32.0 / (2.0 * 1.07 * 1.07);
        assert!((per_step_rdp(&one, 3.0).unwrap() - want).abs() < 1e-14 * want, "k = 1 is the Gaussian itself");
        assert!(per_step_rdp(&run, 1.0).is_err());
        assert!(per_step_rdp(&GsWganRun { noise_multiplier: 0.0, ..run }, 2.0).is_err());
    }
}
