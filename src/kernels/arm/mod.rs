//! aarch64 kernels: NEON (baseline), dotprod (`sdot`) and i8mm (`usmmla`, `sudot`).
//!
//! Every kernel implements [`Accumulation::Exact`]: each u8×i8 product is added exactly to a
//! wrapping int32 accumulator, which is what PyTorch's QNNPACK (ARM) and FBGEMM's VNNI paths
//! compute. All arithmetic below is modular (mod 2³²), so any summation order, and the algebraic
//! zero-point corrections `Σ(a−za)(b−zb) = Σab − za·Σb − zb·Σa + K·za·zb`, give bit-identical
//! results to the reference triple loop.
//!
//! The kernels share one driver: A is packed into panels of [`MR`] rows and B into panels of
//! [`NR`] columns (K zero-padded to the kernel's block), a micro-kernel computes an MR×NR int32
//! tile in registers, and the tile is finished in registers — zero-point corrections and, for the
//! fused entry points, the requantization rule of [`crate::numerics::requant`] — before it is stored.
//!
//! CPU features are detected once (`is_aarch64_feature_detected!`); [`available`] lists the
//! kernels this CPU can run and [`ArmKernel::best`] picks the fastest of them, also once.

pub mod conv;
mod dot;
mod drive;
mod mmla;
mod neon;

use std::sync::OnceLock;

use super::{Accumulation, Int8Gemm};
use crate::numerics::requant::{FbgemmRequant, QnnpackRequant};
use crate::{Error, Result};

pub use conv::{conv2d, Conv2dParams};

/// Rows of A per micro-kernel tile.
pub const MR: usize = 4;
/// Columns of B per micro-kernel tile.
pub const NR: usize = 8;

/// An instruction-set level of aarch64, as named in `QPARITY_REQUIRE_ISA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Advanced SIMD, part of every aarch64 CPU.
    Neon,
    /// FEAT_DotProd: `sdot`/`udot`.
    Dotprod,
    /// FEAT_I8MM: `usmmla`, `usdot`, `sudot`.
    I8mm,
}

impl Isa {
    /// Every ARM level, in increasing order.
    pub const ALL: [Isa; 3] = [Isa::Neon, Isa::Dotprod, Isa::I8mm];

    /// The name used by `QPARITY_REQUIRE_ISA` and in kernel names.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    /// Parses a name as written in `QPARITY_REQUIRE_ISA`.
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether the running CPU has this level (detected once per process).
    pub fn detected(self) -> bool {
        static FEATURES: OnceLock<[bool; 3]> = OnceLock::new();
        let f = FEATURES.get_or_init(|| {
            [
                std::arch::is_aarch64_feature_detected!("neon"),
                std::arch::is_aarch64_feature_detected!("dotprod"),
                std::arch::is_aarch64_feature_detected!("i8mm"),
            ]
        });
        f[self as usize]
    }
}

/// One of the ARM GEMM kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArmKernel {
    /// QNNPACK-style: operands widened to int16 with the zero points subtracted there,
    /// `smlal`/`smlal2` by element into int32.
    Neon,
    /// `sdot` on `(a − 128)` (a signed byte) and b; `128·Σb` is added back per column.
    DotprodSdot,
    /// `sudot` (signed × unsigned by element): the mixed-sign dot product directly.
    I8mmSudot,
    /// `usmmla`: 2×8 · 8×2 u8×i8 matrix multiply-accumulate into a 2×2 int32 block.
    I8mmUsmmla,
}

impl ArmKernel {
    /// Every ARM kernel, baseline first.
    pub const ALL: [ArmKernel; 4] = [
        ArmKernel::Neon,
        ArmKernel::DotprodSdot,
        ArmKernel::I8mmSudot,
        ArmKernel::I8mmUsmmla,
    ];

    /// Stable name: `arm-<isa>-<instruction>`.
    pub fn name(self) -> &'static str {
        match self {
            ArmKernel::Neon => "arm-neon-smlal",
            ArmKernel::DotprodSdot => "arm-dotprod-sdot",
            ArmKernel::I8mmSudot => "arm-i8mm-sudot",
            ArmKernel::I8mmUsmmla => "arm-i8mm-usmmla",
        }
    }

    /// The instruction-set level the kernel needs.
    pub fn isa(self) -> Isa {
        match self {
            ArmKernel::Neon => Isa::Neon,
            ArmKernel::DotprodSdot => Isa::Dotprod,
            ArmKernel::I8mmSudot | ArmKernel::I8mmUsmmla => Isa::I8mm,
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        self.isa().detected()
    }

    /// The kernel to use on this CPU, chosen once: `usmmla` if i8mm is present, else `sdot` if
    /// dotprod is, else the NEON baseline.
    pub fn best() -> ArmKernel {
        static BEST: OnceLock<ArmKernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            [
                ArmKernel::I8mmUsmmla,
                ArmKernel::DotprodSdot,
                ArmKernel::Neon,
            ]
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(ArmKernel::Neon)
        })
    }

    fn check_supported(self) -> Result<()> {
        if self.supported() {
            Ok(())
        } else {
            Err(Error::invalid(
                "kernel",
                format!(
                    "{} needs the {} CPU feature, which this CPU lacks",
                    self.name(),
                    self.isa().name()
                ),
            ))
        }
    }

    /// `c[i][j] = Σ_k (a[i][k] − za)·(b[j][k] − zb[j])` (int32, wrapping): the accumulator that
    /// [`crate::numerics::requant`] rules take.
    pub fn gemm_zp(self, p: &QGemm<'_>, c: &mut [i32]) -> Result<()> {
        self.check_supported()?;
        p.validate()?;
        if c.len() != p.m * p.n {
            return Err(Error::shape(
                "gemm output",
                format!("len {} != M·N = {}", c.len(), p.m * p.n),
            ));
        }
        let sink = drive::Sink::I32 { c, ldc: p.n };
        drive::run(self, p, sink);
        Ok(())
    }

    /// The fused GEMM + requantization: `out[i][j] = rule(Σ_k (a−za)(b−zb[j]), j)`, bit-identical
    /// to applying [`QnnpackRequant::apply`] / [`FbgemmRequant::apply`] to [`Self::gemm_zp`]'s
    /// result, but without materialising the int32 matrix. `out` is M×N row-major.
    pub fn gemm_requant(self, p: &QGemm<'_>, rule: Requant<'_>, out: &mut [u8]) -> Result<()> {
        self.check_supported()?;
        p.validate()?;
        rule.validate(p.n, 0)?;
        if out.len() != p.m * p.n {
            return Err(Error::shape(
                "gemm output",
                format!("len {} != M·N = {}", out.len(), p.m * p.n),
            ));
        }
        let epi = drive::Epilogue::new(rule, 0, p.n);
        let sink = drive::Sink::U8 {
            out,
            base: 0,
            rs: p.n,
            cs: 1,
            epi,
        };
        drive::run(self, p, sink);
        Ok(())
    }
}

/// A quantized GEMM problem: `a` is M×K u8 (row-major), `b` is N×K i8 (PyTorch `[out, in]`).
#[derive(Debug, Clone, Copy)]
pub struct QGemm<'a> {
    /// Rows of A and C.
    pub m: usize,
    /// Rows of B, columns of C (output channels).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// M×K activations.
    pub a: &'a [u8],
    /// Activation zero point, 0..=255.
    pub a_zero_point: i32,
    /// N×K weights.
    pub b: &'a [i8],
    /// Weight zero points, −128..=127: one (per tensor) or N (per channel).
    pub b_zero_points: &'a [i32],
}

impl QGemm<'_> {
    fn validate(&self) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        let mk = m.checked_mul(k);
        let nk = n.checked_mul(k);
        if m.checked_mul(n).is_none() || mk != Some(self.a.len()) {
            return Err(Error::shape(
                "gemm A",
                format!("len {} != M·K ({m}·{k})", self.a.len()),
            ));
        }
        if nk != Some(self.b.len()) {
            return Err(Error::shape(
                "gemm B",
                format!("len {} != N·K ({n}·{k})", self.b.len()),
            ));
        }
        if !(0..=255).contains(&self.a_zero_point) {
            return Err(Error::invalid(
                "activation zero point",
                format!("{} is outside 0..=255", self.a_zero_point),
            ));
        }
        let zl = self.b_zero_points.len();
        if zl != 1 && zl != n {
            return Err(Error::shape(
                "weight zero points",
                format!("{zl} given, need 1 or N = {n}"),
            ));
        }
        if let Some(z) = self
            .b_zero_points
            .iter()
            .find(|z| !(-128..=127).contains(*z))
        {
            return Err(Error::invalid(
                "weight zero point",
                format!("{z} is outside -128..=127"),
            ));
        }
        Ok(())
    }

    fn b_zp(&self, j: usize) -> i32 {
        if self.b_zero_points.len() == 1 {
            self.b_zero_points[0]
        } else {
            self.b_zero_points[j]
        }
    }
}

/// A requantization rule to fuse into the GEMM.
#[derive(Debug, Clone, Copy)]
pub enum Requant<'a> {
    /// QNNPACK: int32 bias, f32 scale, round half to even.
    Qnnpack(&'a QnnpackRequant),
    /// FBGEMM `ReQuantizeOutput` (exact accumulation).
    Fbgemm(&'a FbgemmRequant),
}

impl Requant<'_> {
    /// Checks that the rule covers output channels `j0 .. j0 + n`.
    fn validate(&self, n: usize, j0: usize) -> Result<()> {
        let need = j0 + n;
        let (what, lens, zp): (&str, Vec<(&str, usize, bool)>, i32) = match self {
            Requant::Qnnpack(q) => (
                "qnnpack requant",
                vec![
                    ("scale", q.scale.len(), false),
                    ("bias", q.bias_q.len(), false),
                ],
                q.out_zero_point,
            ),
            Requant::Fbgemm(f) => (
                "fbgemm requant",
                vec![
                    ("multiplier", f.multiplier.len(), true),
                    ("bias term", f.bias_term.len(), false),
                ],
                f.out_zero_point,
            ),
        };
        for (field, len, may_be_one) in lens {
            if len < need && !(may_be_one && len == 1) {
                return Err(Error::shape(
                    what,
                    format!("{field} has {len} entries, {need} output channels"),
                ));
            }
        }
        if !(0..=255).contains(&zp) {
            return Err(Error::invalid(
                "output zero point",
                format!("{zp} is outside 0..=255"),
            ));
        }
        Ok(())
    }
}

/// [`ArmKernel`] as an [`Int8Gemm`] (raw `Σ a·b`, no zero points).
#[derive(Debug, Clone, Copy)]
pub struct ArmGemm {
    kernel: ArmKernel,
}

impl ArmGemm {
    /// The kernel wrapped for the [`Int8Gemm`] interface, if this CPU supports it.
    pub fn new(kernel: ArmKernel) -> Option<Self> {
        kernel.supported().then_some(Self { kernel })
    }

    /// The wrapped kernel.
    pub fn kernel(&self) -> ArmKernel {
        self.kernel
    }
}

impl Int8Gemm for ArmGemm {
    fn name(&self) -> &'static str {
        self.kernel.name()
    }

    fn accumulation(&self) -> Accumulation {
        Accumulation::Exact
    }

    fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
        assert_eq!(a.len(), m * k, "a must be M×K");
        assert_eq!(b.len(), n * k, "b must be N×K");
        assert_eq!(c.len(), m * n, "c must be M×N");
        let p = QGemm {
            m,
            n,
            k,
            a,
            a_zero_point: 0,
            b,
            b_zero_points: &[0],
        };
        // `new` only builds supported kernels and the shapes were asserted above.
        self.kernel
            .gemm_zp(&p, c)
            .expect("validated ARM gemm cannot fail");
    }
}

/// The ARM kernels this CPU supports.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    ArmKernel::ALL
        .into_iter()
        .filter_map(ArmGemm::new)
        .map(|k| Box::new(k) as Box<dyn Int8Gemm>)
        .collect()
}
