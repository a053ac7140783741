//! Deciding integer results of float computations whose evaluation order PyTorch leaves open.
//!
//! A float op in the reference flows (an f32 linear or conv with MKL/oneDNN, a float add, …) has no
//! specified summation order, so qparity evaluates it exactly enough ([`FloatSum`]) and bounds
//! what any order can give. The map from that f32 value to a quantized integer is monotone, so
//! quantizing both ends of the interval decides the element ([`Pred::Exact`]) or shows that the
//! interval straddles a rounding boundary ([`Pred::Ambiguous`]). Nothing is ever guessed.

/// Prediction for one integer output element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pred {
    /// Decided: PyTorch must produce exactly this value.
    Exact(i64),
    /// The value lies within a proven error bound of a rounding boundary: anything in `lo..=hi`
    /// is consistent with PyTorch's arithmetic.
    Ambiguous { lo: i64, hi: i64 },
}

impl Pred {
    /// Whether `v` is consistent with this prediction.
    pub fn admits(self, v: i64) -> bool {
        match self {
            Pred::Exact(x) => x == v,
            Pred::Ambiguous { lo, hi } => (lo..=hi).contains(&v),
        }
    }

    /// The most likely value (the exact one, or the interval's lower end).
    pub fn value(self) -> i64 {
        match self {
            Pred::Exact(x) | Pred::Ambiguous { lo: x, .. } => x,
        }
    }

    /// The prediction for a monotone map evaluated at both ends of an interval.
    pub fn from_ends(lo: i64, hi: i64) -> Self {
        if lo == hi {
            Pred::Exact(lo)
        } else {
            Pred::Ambiguous {
                lo: lo.min(hi),
                hi: lo.max(hi),
            }
        }
    }
}

/// An output of a float op, evaluated exactly enough to bound PyTorch's f32 result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatSum {
    /// Σ x·w + bias, computed in f64 from exact products (error below `f64_err`).
    pub value: f64,
    /// Σ |x·w| + |bias|.
    pub abs_sum: f64,
    /// Number of summands (products plus the bias).
    pub terms: usize,
}

impl FloatSum {
    /// A bound on |f32 result − exact value| for any summation order, with or without FMA:
    /// `γ_n · Σ|terms|` with `n = summands + 1` (each product and each addition rounds once) and
    /// `γ_n = n·u/(1 − n·u)`, `u = 2^-24` (Higham, *Accuracy and Stability of Numerical
    /// Algorithms*, §3.1), plus the error of the f64 evaluation itself.
    pub fn error_bound(&self) -> f64 {
        let u = f32::EPSILON as f64 / 2.0;
        let n = (self.terms + 1) as f64;
        let gamma = n * u / (1.0 - n * u);
        let f64_err = n * f64::EPSILON * self.abs_sum;
        gamma * self.abs_sum + f64_err + f32::from_bits(1) as f64
    }

    /// The f32 interval that contains every f32 result an evaluation order can give.
    pub fn f32_interval(&self) -> (f32, f32) {
        let b = self.error_bound();
        (f32_down(self.value - b), f32_up(self.value + b))
    }
}

/// f32 rounding of a real value, downwards.
pub fn f32_down(v: f64) -> f32 {
    let r = v as f32;
    if (r as f64) > v {
        r.next_down()
    } else {
        r
    }
}

/// f32 rounding of a real value, upwards.
pub fn f32_up(v: f64) -> f32 {
    let r = v as f32;
    if (r as f64) < v {
        r.next_up()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_contains_every_f32_summation_order() {
        // Four terms whose f32 sum depends on the order.
        let xs = [1.0e8f32, 3.0, -1.0e8, 0.25];
        let exact: f64 = xs.iter().map(|&x| x as f64).sum();
        let s = FloatSum {
            value: exact,
            abs_sum: xs.iter().map(|&x| (x as f64).abs()).sum(),
            terms: xs.len(),
        };
        let (lo, hi) = s.f32_interval();
        let orders = [[0, 1, 2, 3], [0, 2, 1, 3], [1, 3, 0, 2], [3, 2, 1, 0]];
        let mut seen = std::collections::BTreeSet::new();
        for o in orders {
            let v = o.iter().fold(0.0f32, |acc, &i| acc + xs[i]);
            assert!(lo <= v && v <= hi, "{v} outside [{lo}, {hi}]");
            seen.insert(v.to_bits());
        }
        assert!(
            seen.len() > 1,
            "the orders must disagree for the test to mean anything"
        );
        assert_eq!(Pred::from_ends(3, 3), Pred::Exact(3));
        assert_eq!(Pred::from_ends(4, 3), Pred::Ambiguous { lo: 3, hi: 4 });
        assert!(Pred::Ambiguous { lo: 3, hi: 4 }.admits(4));
    }

    /// The bound is Higham's `γ_n · Σ|terms|` with f32's unit roundoff `u = 2⁻²⁴`, plus the
    /// error of the f64 evaluation (`n · ε₆₄ · Σ|terms|`): at least both (soundness rests on
    /// them), and within 1 % of `n · u · Σ|terms|` when `n · u` is small (a looser bound widens
    /// every ambiguous interval). An all-zero sum still gets a non-empty interval around 0.
    #[test]
    fn error_bound_is_highams_gamma_n_with_the_f32_unit_roundoff() {
        let u = 2f64.powi(-24);
        for terms in [1usize, 8, 1000] {
            let s = FloatSum {
                value: 3.0,
                abs_sum: 5.0,
                terms,
            };
            let n = (terms + 1) as f64;
            let gamma_n = n * u / (1.0 - n * u);
            let b = s.error_bound();
            let f64_err = n * f64::EPSILON * s.abs_sum;
            assert!(b >= gamma_n * s.abs_sum + f64_err, "{terms} terms: {b:e}");
            assert!(b <= 1.01 * n * u * s.abs_sum, "{terms} terms: {b:e}");
        }
        let zero = FloatSum {
            value: 0.0,
            abs_sum: 0.0,
            terms: 3,
        };
        let (lo, hi) = zero.f32_interval();
        assert!(lo <= 0.0 && 0.0 <= hi && lo < hi, "[{lo:e}, {hi:e}]");
    }

    /// `f32_down` / `f32_up` give the nearest f32 at or below / at or above a real value, on
    /// both sides of a representable one and for either direction of `as f32`'s rounding.
    #[test]
    fn f32_down_and_up_round_outwards() {
        let one = 1.0f32;
        let (above, below) = (1.0 + 2f64.powi(-30), 1.0 - 2f64.powi(-30));
        for sign in [1.0f32, -1.0] {
            let s = sign as f64;
            assert_eq!(f32_down(s), sign * one);
            assert_eq!(f32_up(s), sign * one);
            // `s · above` rounds to ±1 in f32 (towards zero); `s · below` also (away from zero).
            let (up_a, down_b) = (one.next_up(), one.next_down());
            if sign > 0.0 {
                assert_eq!((f32_down(above), f32_up(above)), (one, up_a));
                assert_eq!((f32_down(below), f32_up(below)), (down_b, one));
            } else {
                assert_eq!((f32_down(-above), f32_up(-above)), (-up_a, -one));
                assert_eq!((f32_down(-below), f32_up(-below)), (-one, -down_b));
            }
        }
    }
}
