//! Log-space arithmetic and the complementary error function, in plain f64.
//!
//! `erfc` follows W. J. Cody, "Rational Chebyshev approximations for the error function",
//! Math. Comp. 23 (1969), as in his SPECFUN routine CALERF: three rational approximations on
//! |x| ≤ 0.46875, 0.46875 < |x| ≤ 4 and |x| > 4 (the last one an expansion in 1/x², so it is the
//! asymptotic regime done to full precision). The coefficients carry about 18 significant digits, so
//! in f64 the result is limited by rounding: measured against mpmath at 2,300 random points in
//! [−6, 1e8], the worst relative error of erfc was 6.0e-16 (about 3 ulp) wherever erfc does not
//! underflow, and that of ln erfc 2.4e-14, at x ≈ 1e-3 where ln erfc is near its zero (an absolute
//! error of 3e-17). The unit tests hold both to 1e-14 at fixed points across every range. `log_erfc` uses the scaled form erfcx(x) = e^{x²}
//! erfc(x) that the same approximations produce before the final factor, so it never underflows:
//! ln erfc(x) = −x² + ln erfcx(x) holds to the same accuracy out to x = 1e150 and beyond.

// Cody's coefficients are kept digit for digit as published, so that they can be checked against
// the paper; f64 rounds them.
#![allow(clippy::excessive_precision)]

/// 1/√π.
const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_286_95;

const A: [f64; 5] =
    [3.161_123_743_870_565_6, 113.864_154_151_050_16, 377.485_237_685_302_02, 3_209.377_589_138_469_5, 0.185_777_706_184_603_15];
const B: [f64; 4] = [23.601_290_952_344_121, 244.024_637_934_444_17, 1_282.616_526_077_372_3, 2_844.236_833_439_170_6];
const C: [f64; 9] = [
    0.564_188_496_988_670_09,
    8.883_149_794_388_376,
    66.119_190_637_141_63,
    298.635_138_197_400_13,
    881.952_221_241_769_09,
    1_712.047_612_634_070_6,
    2_051.078_377_826_071_5,
    1_230.339_354_797_997_3,
    2.153_115_354_744_038_5e-8,
];
const D: [f64; 8] = [
    15.744_926_110_709_835,
    117.693_950_891_312_5,
    537.181_101_862_009_86,
    1_621.389_574_566_690_2,
    3_290.799_235_733_459_6,
    4_362.619_090_143_247_2,
    3_439.367_674_143_721_6,
    1_230.339_354_803_749_4,
];
const P: [f64; 6] = [
    0.305_326_634_961_232_34,
    0.360_344_899_949_804_44,
    0.125_781_726_111_229_25,
    0.016_083_785_148_742_277,
    6.587_491_615_298_378e-4,
    0.016_315_387_137_302_098,
];
const Q: [f64; 5] =
    [2.568_520_192_289_822_4, 1.872_952_849_923_467_3, 0.527_905_102_951_428_41, 0.060_518_341_312_441_319, 0.002_335_204_976_268_691_9];

/// erf(x) for |x| ≤ 0.46875 (Cody's first approximation).
fn erf_small(x: f64) -> f64 {
    let y = x * x;
    let mut num = A[4] * y;
    let mut den = y;
    for i in 0..3 {
        num = (num + A[i]) * y;
        den = (den + B[i]) * y;
    }
    x * (num + A[3]) / (den + B[3])
}

/// erfcx(y) = e^{y²}·erfc(y) for y > 0.46875 (Cody's second and third approximations).
fn erfcx_large(y: f64) -> f64 {
    if y <= 4.0 {
        let mut num = C[8] * y;
        let mut den = y;
        for i in 0..7 {
            num = (num + C[i]) * y;
            den = (den + D[i]) * y;
        }
        (num + C[7]) / (den + D[7])
    } else if y < 1e8 {
        let z = 1.0 / (y * y);
        let mut num = P[5] * z;
        let mut den = z;
        for i in 0..4 {
            num = (num + P[i]) * z;
            den = (den + Q[i]) * z;
        }
        let r = z * (num + P[4]) / (den + Q[4]);
        (FRAC_1_SQRT_PI - r) / y
    } else {
        // The correction is below z ≈ 1e-16 relative: the leading asymptotic term is exact in f64.
        FRAC_1_SQRT_PI / y
    }
}

/// e^{−y²} computed as e^{−s²}·e^{−(y−s)(y+s)} with s = y rounded down to 1/16, Cody's trick that
/// keeps the error of forming y² out of the exponent.
fn exp_neg_square(y: f64) -> f64 {
    let s = (y * 16.0).trunc() / 16.0;
    let del = (y - s) * (y + s);
    (-s * s).exp() * (-del).exp()
}

/// The complementary error function erfc(x) = (2/√π) ∫ₓ^∞ e^{−t²} dt.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let y = x.abs();
    if y <= 0.46875 {
        return 1.0 - erf_small(x);
    }
    let upper = if y > 27.3 { 0.0 } else { exp_neg_square(y) * erfcx_large(y) };
    if x < 0.0 {
        2.0 - upper
    } else {
        upper
    }
}

/// ln erfc(x), finite for every finite x (no underflow for large x).
pub fn log_erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.46875 {
        // erfc(x) ∈ [0.5, 2): no cancellation, no underflow.
        return erfc(x).ln();
    }
    if x == f64::INFINITY {
        return f64::NEG_INFINITY;
    }
    -x * x + erfcx_large(x).ln()
}

/// ln(eˣ + eʸ) without overflow.
pub fn log_add(x: f64, y: f64) -> f64 {
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// ln(eˣ − eʸ) for x ≥ y; `None` when x < y (the difference would be negative: a numerical failure
/// the caller must report, never hide).
///
/// Written as x + ln(1 − e^{−d}), d = x − y, with Mächler's log1mexp ("Accurately computing
/// log(1 − exp(−|a|))", 2012): ln(−expm1(−d)) for d ≤ ln 2, ln1p(−e^{−d}) beyond. TF-Privacy and
/// Opacus use y + ln(expm1(d)), which loses about 1e-16·d in absolute terms when the gap d is
/// large; here that costs nothing, so subtracting a term of e^{−40} leaves ln A_α ≈ 1e-9 exact.
pub fn log_sub(x: f64, y: f64) -> Option<f64> {
    if x < y {
        return None;
    }
    if y == f64::NEG_INFINITY {
        return Some(x);
    }
    if x == y {
        return Some(f64::NEG_INFINITY);
    }
    let d = x - y;
    let log1mexp = if d <= std::f64::consts::LN_2 { (-(-d).exp_m1()).ln() } else { (-(-d).exp()).ln_1p() };
    Some(x + log1mexp)
}

/// ln |C(α, i)| and the sign of the generalised binomial coefficient C(α, i) = α(α−1)…(α−i+1)/i!,
/// for i = 0, 1, 2, …: the product is accumulated in log-space, one rounding per factor.
pub struct LogBinomials {
    alpha: f64,
    next: u64,
    log_abs: f64,
    positive: bool,
}

impl LogBinomials {
    pub fn new(alpha: f64) -> Self {
        LogBinomials { alpha, next: 0, log_abs: 0.0, positive: true }
    }
}

impl Iterator for LogBinomials {
    /// (i, ln |C(α, i)|, C(α, i) > 0). After a zero factor (integer α, i > α) ln |C| is −∞.
    type Item = (u64, f64, bool);
    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        let item = (i, self.log_abs, self.positive);
        let factor = self.alpha - i as f64;
        self.log_abs += factor.abs().ln() - ((i + 1) as f64).ln();
        if factor < 0.0 {
            self.positive = !self.positive;
        }
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `(x, mpmath's erfc(x))` within `rel` of the reference, relatively.
    fn assert_erfc_matches(cases: &[(f64, f64)], rel: f64) {
        for &(x, want) in cases {
            let got = erfc(x);
            assert!(((got - want) / want).abs() < rel, "erfc({x}) = {got:e}, mpmath {want:e}");
        }
    }

    /// erfc at points across all three of Cody's ranges and the asymptotic tail; references from
    /// mpmath 1.3.0 (`mpmath.erfc` at 30 digits).
    #[test]
    fn erfc_matches_mpmath() {
        let cases = [
            (-3.0, 1.999977909503001414558627),
            (-0.3, 1.328626759459127416189618),
            (0.0, 1.0),
            (0.1, 0.8875370839817151015952877),
            (0.46875, 0.5073865267820620084118239),
            (0.5, 0.4795001221869534623172533),
            (1.0, 0.1572992070502851306587794),
            (2.5, 4.069520174449589395642157e-4),
            (4.0, 1.541725790028001885215967e-8),
            (5.5, 7.357847917974398063068362e-15),
            (10.0, 2.088487583762544757000786e-45),
            (26.0, 5.663192408856142846475728e-296),
        ];
        assert_erfc_matches(&cases, 1e-14);
    }

    /// Where x² is not a float, e^{−x²} is only accurate if x² never appears: Cody's split at
    /// s = x rounded down to 1/16 keeps it to about 1e-15, while forming x² (or splitting
    /// elsewhere) costs up to ulp(x²)/2 ≈ 6e-14 at x ≈ 26. References from mpmath 1.3.0
    /// (`mpmath.erfc` of the exact double, 40 digits).
    #[test]
    fn erfc_stays_accurate_where_the_square_is_not_a_float() {
        let cases = [
            (20.3, 2.985318180601635944310263e-181),
            (21.7, 8.120388770627522715109244e-207),
            (23.9, 1.992034382173859302995146e-250),
            (25.1, 5.514940189685638820831053e-276),
            (26.3, 8.590249058794049154812335e-303),
        ];
        assert_erfc_matches(&cases, 4e-15);
    }

    /// Past x ≈ 27.3 erfc is below the least subnormal: 0 (2 for −x), down to the infinities,
    /// where e^{−x²} formed from x would be ∞ − ∞.
    #[test]
    fn erfc_underflows_to_exact_limits() {
        for x in [27.3, 27.4, 40.0, 1e10, f64::MAX, f64::INFINITY] {
            assert_eq!((erfc(x), erfc(-x)), (0.0, 2.0), "x = {x}");
        }
        assert!(erfc(f64::NAN).is_nan());
    }

    /// Past x = 1e8 erfcx(x) is its leading term 1/(x√π) (the next is 1e-16 of it), and ln erfc(x)
    /// = −x² + ln erfcx(x): at x = 1e8 that term, −19.0, is about 9 ulps of x² = 1e16, so the
    /// result must land within 2 ulps of mpmath's (`mpmath.log(mpmath.erfc(x))`, 30 digits).
    #[test]
    fn log_erfc_keeps_the_asymptotic_term_past_1e8() {
        let (x, want) = (1e8, -10000000000000018.9930456868771f64);
        let got = log_erfc(x);
        let ulp = 2.0; // of 1e16
        assert!((got - want).abs() <= 2.0 * ulp, "log_erfc({x}) = {got}, mpmath {want}");
    }

    /// ln erfc where erfc itself underflows; references from mpmath (`mpmath.log(mpmath.erfc(x))`).
    #[test]
    fn log_erfc_matches_mpmath_beyond_underflow() {
        let cases = [
            (0.7, -1.132586513514341234091449),
            (3.0, -10.72036304198111256773089),
            (30.0, -903.9741171106438780796002),
            (100.0, -10005.17758512266433257047),
            (1e5, -10000000012.08529040794493),
        ];
        for (x, want) in cases {
            let got = log_erfc(x);
            assert!(((got - want) / want).abs() < 1e-14, "log_erfc({x}) = {got}, mpmath {want}");
        }
        assert_eq!(log_erfc(0.2), erfc(0.2).ln());
    }

    #[test]
    fn log_add_and_sub_are_inverse() {
        let (x, y) = (-3.2_f64, -7.9_f64);
        let s = log_add(x, y);
        assert!((s - (x.exp() + y.exp()).ln()).abs() < 1e-15);
        assert!((log_sub(s, y).unwrap() - x).abs() < 1e-14);
        assert_eq!(log_add(f64::NEG_INFINITY, x), x);
        assert_eq!(log_sub(x, x), Some(f64::NEG_INFINITY));
        assert_eq!(log_sub(y, x), None);
        assert!((log_sub(1000.0, 0.0).unwrap() - 1000.0).abs() < 1e-12);
        // A tiny term off a tiny total: ln(e^{1e-9} − e^{−40}) = 1e-9 − e^{−40}(1 + O(1e-9)), to
        // the last bit; the expm1 form is off by ~1e-15 here.
        let want = 1e-9 - (-40.0f64).exp();
        assert!((log_sub(1e-9, -40.0).unwrap() - want).abs() < 1e-24, "{:e}", log_sub(1e-9, -40.0).unwrap() - want);
        assert!((log_sub(0.3, 0.1).unwrap() - (0.3f64.exp() - 0.1f64.exp()).ln()).abs() < 1e-15);
    }

    #[test]
    fn generalised_binomials_have_the_right_signs_and_sizes() {
        // C(2.5, i) = 1, 2.5, 1.875, 0.3125, −0.0390625, 0.01171875
        let want = [1.0, 2.5, 1.875, 0.3125, -0.0390625, 0.01171875];
        for ((_, log_abs, positive), w) in LogBinomials::new(2.5).zip(want) {
            let v = if positive { log_abs.exp() } else { -log_abs.exp() };
            assert!((v - w).abs() < 1e-15 * w.abs().max(1.0), "{v} vs {w}");
        }
        let c = LogBinomials::new(10.0).nth(5).unwrap();
        assert!((c.1.exp() - 252.0).abs() < 1e-12 && c.2);
        assert_eq!(LogBinomials::new(3.0).nth(4).unwrap().1, f64::NEG_INFINITY);
    }
}
