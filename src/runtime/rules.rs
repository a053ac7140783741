//! The rule variants a runtime's requantized output is explained by, and the classification of
//! each mismatched element: change PyTorch's rule one dimension at a time (then two, then more)
//! and keep the smallest changes that reproduce the runtime's value.
//!
//! Dimensions and their alternatives (PyTorch's choice per engine in brackets):
//! - accumulation: exact int32, or int16 pair saturation (`vpmaddubsw`) [the planned kernel
//!   path's, [`crate::engine::KernelPath::accumulation`]];
//! - bias: FBGEMM's float bias term added to `f32(acc)` [fbgemm, x86, onednn], or an int32 bias
//!   added to the accumulator [qnnpack] ([`super::QStage::bias_i32`]);
//! - multiplier: `f32(atws / f32(s_y))` [FBGEMM], `f32(f32(w_s·s_x)·f32(1/s_y))` [QNNPACK], the
//!   exact `s_x·w_s/s_y` in f64, or the FBGEMM f32 multiplier as a fixed-point Q0.31 value
//!   applied to the integer without an intermediate f32 rounding (gemmlowp / tract style);
//! - rounding: half to even [both], half away from zero, half up;
//! - clamp: `[0 or zp_y under ReLU, 255]` [both], the ReLU's lower clamp missing, or `..127`.
//!
//! PyTorch's own rule is evaluated by the plan's requantization ([`crate::kernels::Requant`]), so
//! the unchanged rule is bit for bit what qparity models; sources of the formulas are in
//! [`crate::numerics::requant`].

use super::QStage;
use crate::kernels::{Accumulation, Requant};
use crate::numerics::requant::FbgemmRequant;

/// How products are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Accum {
    Exact,
    /// Pairs in the planned kernel path's order (its im2col K order, oneDNN's pairs per tap).
    Pairs,
    /// Pairs in the im2col GEMM order `(ky, kx, ic)` with padded taps through the kernel
    /// (FBGEMM's GEMM, and runtimes that lower conv to an im2col GEMM).
    PairsGemm,
}

/// How the bias enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bias {
    /// FBGEMM's float term added to the float accumulator.
    FloatTerm,
    /// The stage's int32 bias added to the int32 accumulator.
    Int32,
}

/// The requantization multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mult {
    /// `f32(f32(f32(s_x)·w_s) / f32(s_y))`, product rounded to f32.
    F32Div,
    /// `f32(f32(w_s·s_x)·f32(1/s_y))`, product rounded to f32.
    F32Recip,
    /// `s_x·w_s/s_y` in f64.
    Exact,
    /// [`Mult::F32Div`]'s value as Q0.31 and a shift, applied to the integer exactly.
    Q31,
}

/// Rounding of the scaled value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Round {
    HalfEven,
    HalfAway,
    HalfUp,
}

/// The output clamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Clamp {
    /// `[zp_y under a fused ReLU else 0, 255]`.
    Pytorch,
    /// `[0, 255]` even under a fused ReLU.
    NoRelu,
    /// `[zp_y under a fused ReLU else 0, 127]`.
    Max127,
}

/// One requantization rule: a choice in every dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rules {
    pub acc: Accum,
    pub bias: Bias,
    pub mult: Mult,
    pub round: Round,
    pub clamp: Clamp,
}

impl Rules {
    /// PyTorch's rule for a planned layer.
    pub fn pytorch(acc: Accumulation, requant: &Requant) -> Self {
        let acc = match acc {
            Accumulation::Exact => Accum::Exact,
            Accumulation::PairSaturatingI16 => Accum::Pairs,
        };
        let (bias, mult) = match requant {
            Requant::Fbgemm(_) => (Bias::FloatTerm, Mult::F32Div),
            Requant::Qnnpack(_) => (Bias::Int32, Mult::F32Recip),
        };
        Rules {
            acc,
            bias,
            mult,
            round: Round::HalfEven,
            clamp: Clamp::Pytorch,
        }
    }

    /// Every combination of the alternatives.
    pub fn all() -> Vec<Rules> {
        let mut v = Vec::new();
        for acc in [Accum::Exact, Accum::Pairs, Accum::PairsGemm] {
            for bias in [Bias::FloatTerm, Bias::Int32] {
                for mult in [Mult::F32Div, Mult::F32Recip, Mult::Exact, Mult::Q31] {
                    for round in [Round::HalfEven, Round::HalfAway, Round::HalfUp] {
                        for clamp in [Clamp::Pytorch, Clamp::NoRelu, Clamp::Max127] {
                            v.push(Rules {
                                acc,
                                bias,
                                mult,
                                round,
                                clamp,
                            });
                        }
                    }
                }
            }
        }
        v
    }

    /// The dimensions in which `self` differs from `base`, named by `self`'s choice.
    pub fn changes(&self, base: &Rules) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.acc != base.acc {
            v.push(match self.acc {
                Accum::Exact => "exact accumulation",
                Accum::Pairs => "int16 pair saturation",
                Accum::PairsGemm => "int16 pair saturation (im2col GEMM order)",
            });
        }
        if self.bias != base.bias {
            v.push(match self.bias {
                Bias::FloatTerm => "float bias term",
                Bias::Int32 => "int32 bias",
            });
        }
        if self.mult != base.mult {
            v.push(match self.mult {
                Mult::F32Div => "multiplier f32(atws/s_y)",
                Mult::F32Recip => "multiplier f32(w_s·s_x)·f32(1/s_y)",
                Mult::Exact => "exact multiplier",
                Mult::Q31 => "fixed-point Q0.31 multiplier",
            });
        }
        if self.round != base.round {
            v.push(match self.round {
                Round::HalfEven => "round half to even",
                Round::HalfAway => "round half away from zero",
                Round::HalfUp => "round half up",
            });
        }
        if self.clamp != base.clamp {
            v.push(match self.clamp {
                Clamp::Pytorch => "PyTorch's clamp",
                Clamp::NoRelu => "no ReLU clamp",
                Clamp::Max127 => "clamp to ..127",
            });
        }
        v
    }
}

/// A scaled value before rounding: a float, or an exact fraction `n / 2^s`.
enum Scaled {
    F(f64),
    Frac(i128, u32),
}

fn round_f64(v: f64, r: Round) -> i64 {
    let q = match r {
        Round::HalfEven => v.round_ties_even(),
        Round::HalfAway => v.round(),
        Round::HalfUp => (v + 0.5).floor(),
    };
    // Saturating float-to-int cast; NaN gives 0.
    q as i64
}

fn round_frac(n: i128, s: u32, r: Round) -> i64 {
    if s == 0 {
        return n.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    }
    let floor = n >> s;
    let rem = n - (floor << s);
    let half = 1i128 << (s - 1);
    let up = match rem.cmp(&half) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => match r {
            Round::HalfEven => floor & 1 == 1,
            Round::HalfAway => n >= 0,
            Round::HalfUp => true,
        },
    };
    (floor + i128::from(up)).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// `m = q · 2^-s` with `q` in `[2^30, 2^31)`: exact for every normal f32 `m` (24-bit
/// significand). `None` for zero, negative or non-finite multipliers.
fn q31(m: f32) -> Option<(i64, u32)> {
    if !(m.is_finite() && m > 0.0) {
        return None;
    }
    let mut e = 0i32;
    let mut f = m as f64;
    while f >= 1.0 {
        f /= 2.0;
        e += 1;
    }
    while f < 0.5 {
        f *= 2.0;
        e -= 1;
    }
    let q = (f * 2f64.powi(31)).round() as i64;
    let s = 31 - e;
    u32::try_from(s).ok().map(|s| (q, s))
}

/// Evaluates rule variants for one stage.
#[derive(Debug)]
pub struct Evaluator<'a> {
    stage: &'a QStage,
    /// PyTorch's rule and requantization.
    pub base: Rules,
    requant: &'a Requant,
    /// FBGEMM's rule for this stage (float bias term, f32 division multiplier), whatever the
    /// engine.
    fb: FbgemmRequant,
    recip: Vec<f32>,
    exact: Vec<f64>,
    fixed: Vec<Option<(i64, u32)>>,
}

impl<'a> Evaluator<'a> {
    pub fn new(stage: &'a QStage, acc: Accumulation, requant: &'a Requant) -> Self {
        let n = stage.out_channels();
        let fb = FbgemmRequant::new(
            stage.input_scale,
            &stage.weight_scales,
            stage.weight_scales.len() > 1,
            stage.bias.as_deref(),
            n,
            stage.output_scale,
            stage.output_zero_point,
            stage.relu,
        );
        let inv_out = 1.0f32 / stage.output_scale as f32;
        let recip = (0..n)
            .map(|j| ((stage.weight_scale(j) as f64 * stage.input_scale) as f32) * inv_out)
            .collect();
        let exact = (0..n)
            .map(|j| stage.input_scale * stage.weight_scale(j) as f64 / stage.output_scale)
            .collect();
        let fixed = (0..n).map(|j| q31(fb.multiplier[fb_idx(&fb, j)])).collect();
        Self {
            stage,
            base: Rules::pytorch(acc, requant),
            requant,
            fb,
            recip,
            exact,
            fixed,
        }
    }

    /// The u8 output of accumulator `raw` (under the rule's accumulation) of channel `j`.
    pub fn value(&self, r: &Rules, raw: i32, j: usize) -> u8 {
        let pytorch_requant = Rules {
            acc: self.base.acc,
            ..*r
        } == self.base;
        if pytorch_requant {
            return self.requant.apply(raw, j);
        }
        let bq = self
            .stage
            .bias_i32
            .as_ref()
            .map_or(0, |b| b.get(j).copied().unwrap_or(0));
        let (int, float) = match r.bias {
            Bias::Int32 => {
                let v = raw as i64 + bq as i64;
                (Some(v), v as f32)
            }
            Bias::FloatTerm => (None, self.fb.biased(raw, j)),
        };
        let scaled = match r.mult {
            Mult::F32Div => Scaled::F((float * self.fb.multiplier[fb_idx(&self.fb, j)]) as f64),
            Mult::F32Recip => Scaled::F((float * self.recip[j]) as f64),
            Mult::Exact => Scaled::F(int.map_or(float as f64, |v| v as f64) * self.exact[j]),
            Mult::Q31 => match (self.fixed[j], int) {
                (Some((q, s)), Some(v)) => Scaled::Frac(v as i128 * q as i128, s),
                (Some((q, s)), None) => Scaled::F(float as f64 * q as f64 / 2f64.powi(s as i32)),
                (None, _) => Scaled::F(f64::NAN),
            },
        };
        let q = match scaled {
            Scaled::F(v) => round_f64(v, r.round),
            Scaled::Frac(n, s) => round_frac(n, s, r.round),
        };
        let zp = self.stage.output_zero_point as i64;
        let lo = match (r.clamp, self.stage.relu) {
            (Clamp::NoRelu, _) | (_, false) => 0,
            (_, true) => zp.max(0),
        };
        let hi = if r.clamp == Clamp::Max127 { 127 } else { 255 };
        q.saturating_add(zp).clamp(lo, hi.max(lo)) as u8
    }
}

fn fb_idx(fb: &FbgemmRequant, j: usize) -> usize {
    if fb.multiplier.len() == 1 {
        0
    } else {
        j
    }
}

/// Why a runtime's element differs from PyTorch's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// One smallest set of rule changes reproduces it (joined by ` + `).
    Named(String),
    /// Several smallest sets do, equally small.
    OneOf(Vec<String>),
    /// PyTorch's own rule gives it: PyTorch's recorded value is an evaluation-order effect qparity
    /// marks ambiguous (oneDNN requantization).
    PytorchAmbiguous,
    /// No combination of the modelled changes reproduces it.
    Unexplained,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Named(s) => f.write_str(s),
            Cause::OneOf(v) => write!(f, "one of: {}", v.join(", ")),
            Cause::PytorchAmbiguous => f.write_str("PyTorch's rule (ambiguous evaluation order)"),
            Cause::Unexplained => f.write_str("unexplained"),
        }
    }
}

/// Every rule variant ordered by how many dimensions it changes from a base rule.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// `(variant, its changes)`, fewest changes first.
    variants: Vec<(Rules, Vec<&'static str>)>,
}

impl Classifier {
    /// The variants of `base`; `gemm_pairs` keeps the im2col-GEMM pair order as an alternative
    /// of its own (drop it where it equals the kernel path's pairs).
    pub fn new(base: &Rules, gemm_pairs: bool) -> Self {
        let mut variants: Vec<_> = Rules::all()
            .into_iter()
            .filter(|r| gemm_pairs || r.acc != Accum::PairsGemm)
            .map(|r| {
                let c = r.changes(base);
                (r, c)
            })
            .collect();
        variants.sort_by_key(|(r, c)| (c.len(), *r));
        Self { variants }
    }

    /// Classifies output `got` of channel `j`, given the accumulators of both models.
    /// `raw` holds the accumulators under [`Accum::Exact`], [`Accum::Pairs`] and
    /// [`Accum::PairsGemm`].
    pub fn classify(&self, ev: &Evaluator<'_>, raw: [i32; 3], j: usize, got: u8) -> Cause {
        let mut level = None;
        let mut hits: Vec<String> = Vec::new();
        for (r, changes) in &self.variants {
            if level.is_some_and(|l| changes.len() > l) {
                break;
            }
            let a = match r.acc {
                Accum::Exact => raw[0],
                Accum::Pairs => raw[1],
                Accum::PairsGemm => raw[2],
            };
            if ev.value(r, a, j) == got {
                level = Some(changes.len());
                hits.push(changes.join(" + "));
            }
        }
        match (level, hits.len()) {
            (None, _) => Cause::Unexplained,
            (Some(0), _) => Cause::PytorchAmbiguous,
            (Some(_), 1) => Cause::Named(hits.remove(0)),
            _ => Cause::OneOf(hits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_round_by_each_rule() {
        // 5/2 = 2.5, -5/2 = -2.5, 7/4 = 1.75, -3/4 = -0.75.
        assert_eq!(round_frac(5, 1, Round::HalfEven), 2);
        assert_eq!(round_frac(5, 1, Round::HalfAway), 3);
        assert_eq!(round_frac(5, 1, Round::HalfUp), 3);
        assert_eq!(round_frac(-5, 1, Round::HalfEven), -2);
        assert_eq!(round_frac(-5, 1, Round::HalfAway), -3);
        assert_eq!(round_frac(-5, 1, Round::HalfUp), -2);
        assert_eq!(round_frac(7, 2, Round::HalfEven), 2);
        assert_eq!(round_frac(-3, 2, Round::HalfAway), -1);
        assert_eq!(round_f64(-2.5, Round::HalfUp), -2);
        assert_eq!(round_f64(2.5, Round::HalfEven), 2);
        assert_eq!(round_f64(-2.5, Round::HalfAway), -3);
    }

    #[test]
    fn q31_is_exact_for_f32_multipliers() {
        for m in [1.0f32, 0.5, 0.001234, 3.75e-5, 0.9999999, 7.0] {
            let (q, s) = q31(m).unwrap();
            assert!((1 << 30..1 << 31).contains(&q), "{m}: {q}");
            assert_eq!(q as f64 / 2f64.powi(s as i32), m as f64);
        }
        assert_eq!(q31(0.0), None);
        assert_eq!(q31(-1.0), None);
    }

    #[test]
    fn every_variant_differs_from_the_base_by_its_changes() {
        let base = Rules::pytorch(
            Accumulation::PairSaturatingI16,
            &Requant::Fbgemm(FbgemmRequant::new(
                0.1,
                &[0.01],
                false,
                None,
                1,
                0.2,
                3,
                false,
            )),
        );
        let c = Classifier::new(&base, false);
        assert_eq!(c.variants.len(), 144);
        assert!(c.variants[0].1.is_empty());
        assert_eq!(
            c.variants.iter().filter(|v| v.1.len() == 1).count(),
            1 + 1 + 3 + 2 + 2
        );
        assert_eq!(Classifier::new(&base, true).variants.len(), 216);
    }
}
