//! aarch64 kernels: NEON (baseline), dotprod (`sdot`) and i8mm (`usmmla`, `sudot`).
//!
//! Every kernel implements [`Accumulation::Exact`]: each u8×i8 product is added exactly to a
//! wrapping int32 accumulator, which is what PyTorch's QNNPACK (ARM) and FBGEMM's VNNI paths
//! compute. All arithmetic below is modular (mod 2³²), so any summation order, and the algebraic
//! zero-point corrections `Σ(a−za)(b−zb) = Σab − za·Σb − zb·Σa + K·za·zb`, give bit-identical
//! results to the reference triple loop.
//!
//! The kernels share one driver ([`drive`]): A is packed into panels of [`MR`] rows and B into
//! panels of [`NR`] columns (K zero-padded to the kernel's block), a micro-kernel computes an
//! MR×NR int32 tile in registers, and the tile is finished in registers — zero-point corrections
//! and, for the fused entry points, the requantization rule in the per-channel form every kernel
//! of this crate shares ([`crate::kernels::quant`]) — before it is stored. The micro-kernels
//! (`neon`, `dot`, `mmla`) implement the driver's `Micro` trait and know nothing else; this
//! module picks one per [`Kernel`].
//!
//! A [`Kernel`] can only be obtained for a CPU that has its extension ([`Kernel::new`] returns
//! `None` otherwise; features detected once, [`Kernel::best`] picks the fastest): that is what
//! makes the `unsafe` SIMD calls behind it sound.
//!
//! ```compile_fail
//! use qparity::kernels::arm::{Kernel, KernelKind};
//! let usmmla = Kernel { kind: KernelKind::I8mmUsmmla }; // error: private field
//! ```
//!
//! ```
//! use qparity::kernels::arm::{Kernel, KernelKind};
//! use qparity::kernels::Int8Gemm;
//! if let Some(usmmla) = Kernel::new(KernelKind::I8mmUsmmla) {
//!     let mut c = [0i32; 1];
//!     usmmla.gemm(1, 1, 2, &[3, 4], &[5, -6], &mut c);
//!     assert_eq!(c, [3 * 5 - 4 * 6]);
//! }
//! ```

pub mod conv;
mod dot;
mod drive;
mod mmla;
mod neon;

use std::sync::OnceLock;

use super::quant::PerChannel;
use super::{Accumulation, Int8Gemm, Isa, Layout, Output, QConv, QGemm, QuantConv, QuantGemm};
use crate::geometry::Conv2dParams;
use crate::Result;

/// Rows of A per micro-kernel tile.
pub const MR: usize = 4;
/// Columns of B per micro-kernel tile.
pub const NR: usize = 8;

/// The name of an ARM kernel (a name runs nothing; the entry points take a [`Kernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// QNNPACK-style: operands widened to int16 with the zero points subtracted there,
    /// `smlal`/`smlal2` by element into int32.
    NeonSmlal,
    /// `sdot` on `(a − 128)` (a signed byte) and b; `128·Σb` is added back per column.
    DotprodSdot,
    /// `sudot` (signed × unsigned by element): the mixed-sign dot product directly.
    I8mmSudot,
    /// `usmmla`: 2×8 · 8×2 u8×i8 matrix multiply-accumulate into a 2×2 int32 block.
    I8mmUsmmla,
}

impl KernelKind {
    /// Every ARM kernel, baseline first.
    pub const ALL: [KernelKind; 4] = [
        KernelKind::NeonSmlal,
        KernelKind::DotprodSdot,
        KernelKind::I8mmSudot,
        KernelKind::I8mmUsmmla,
    ];

    /// Stable name: `arm-<isa>-<instruction>`.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::NeonSmlal => "arm-neon-smlal",
            KernelKind::DotprodSdot => "arm-dotprod-sdot",
            KernelKind::I8mmSudot => "arm-i8mm-sudot",
            KernelKind::I8mmUsmmla => "arm-i8mm-usmmla",
        }
    }

    /// The extension the kernel needs.
    pub fn isa(self) -> Isa {
        match self {
            KernelKind::NeonSmlal => Isa::Neon,
            KernelKind::DotprodSdot => Isa::Dotprod,
            KernelKind::I8mmSudot | KernelKind::I8mmUsmmla => Isa::I8mm,
        }
    }
}

/// An ARM kernel this CPU can run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kernel {
    kind: KernelKind,
}

impl Kernel {
    /// `Some` iff this CPU has the kernel's extension.
    pub fn new(kind: KernelKind) -> Option<Kernel> {
        kind.isa().detected().then_some(Kernel { kind })
    }

    /// The kernel to use on this CPU, chosen once: `usmmla` if i8mm is present, else `sdot` if
    /// dotprod is, else the NEON baseline (part of every aarch64 CPU).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            [
                KernelKind::I8mmUsmmla,
                KernelKind::DotprodSdot,
                KernelKind::NeonSmlal,
            ]
            .into_iter()
            .find_map(Kernel::new)
            .expect("NEON is part of every aarch64 CPU")
        })
    }

    /// Every kernel this CPU supports, baseline first.
    pub fn supported() -> Vec<Kernel> {
        KernelKind::ALL
            .into_iter()
            .filter_map(Kernel::new)
            .collect()
    }

    /// Which kernel this is.
    pub fn kind(self) -> KernelKind {
        self.kind
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        self.kind.name()
    }

    /// Runs the driver with this kernel's micro-kernel.
    fn run(self, p: &QGemm<'_>, zb: &[i32], sink: drive::Sink<'_>) {
        // SAFETY: a `Kernel` exists only if its extension was detected (`Kernel::new`; the field
        // is private), which is the contract of `drive::run`.
        unsafe {
            match self.kind {
                KernelKind::NeonSmlal => drive::run::<neon::Neon>(p, zb, sink),
                KernelKind::DotprodSdot => drive::run::<dot::Sdot>(p, zb, sink),
                KernelKind::I8mmSudot => drive::run::<dot::Sudot>(p, zb, sink),
                KernelKind::I8mmUsmmla => drive::run::<mmla::Usmmla>(p, zb, sink),
            }
        }
    }
}

impl Int8Gemm for Kernel {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn accumulation(&self) -> Accumulation {
        Accumulation::Exact
    }

    fn isa(&self) -> Option<Isa> {
        Some(self.kind.isa())
    }

    fn quant_gemm(&self) -> Option<&dyn QuantGemm> {
        Some(self)
    }

    fn quant_conv(&self) -> Option<&dyn QuantConv> {
        Some(self)
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
        self.run(&p, &vec![0; n], drive::Sink::raw(c, 0, n, 1));
    }
}

impl QuantGemm for Kernel {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn accumulation(&self) -> Accumulation {
        Accumulation::Exact
    }

    /// `Σ_k (a − za)·(b − zb[j])` (int32, wrapping), or the rule applied to it without
    /// materialising the int32 matrix; M×N row-major.
    fn qgemm(&self, p: &QGemm<'_>, out: Output<'_>) -> Result<()> {
        let zb = p.validate()?;
        p.check_output(out.len())?;
        let sink = match out {
            Output::Raw(c) => drive::Sink::raw(c, 0, p.n, 1),
            Output::Requantized(rule, o) => {
                let epi = PerChannel::new(rule, 0, p.n, p.n.div_ceil(NR) * NR)?;
                drive::Sink::requantized(o, 0, p.n, 1, epi)
            }
        };
        self.run(p, &zb, sink);
        Ok(())
    }
}

impl QuantConv for Kernel {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn accumulation(&self) -> Accumulation {
        Accumulation::Exact
    }

    fn supports(&self, _: &Conv2dParams, _: Layout) -> bool {
        true
    }

    fn qconv(&self, c: &QConv<'_>, out: Output<'_>) -> Result<(usize, usize)> {
        conv::conv2d(*self, c, out)
    }
}

/// The ARM kernels this CPU supports, as [`Int8Gemm`]s.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    Kernel::supported()
        .into_iter()
        .map(|k| Box::new(k) as Box<dyn Int8Gemm>)
        .collect()
}
