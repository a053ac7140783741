//! x86-64 kernels (AVX2, AVX-512 VNNI, AMX) with packed weights and fused requantization.
//!
//! # Kernels
//! | kernel | instructions | accumulation model |
//! |---|---|---|
//! | [`KernelKind::Avx2PairSat`] | `vpmaddubsw` → `vpmaddwd(·, 1)` → `vpaddd` | [`Accumulation::PairSaturatingI16`] (FBGEMM's non-VNNI acc32 path, `GenerateKernelU8S8S32ACC32.cc`) |
//! | [`KernelKind::Avx2Exact`] | u8/i8 widened to i16, `vpmaddwd` → `vpaddd` | [`Accumulation::Exact`] without VNNI |
//! | [`KernelKind::Avx512Vnni`] | `vpdpbusd` | [`Accumulation::Exact`] (FBGEMM's VNNI path) |
//! | [`KernelKind::Amx`] | `tdpbusd` on 16×64-byte tiles (`amx` module) | [`Accumulation::Exact`] (oneDNN's AMX path) |
//! | [`KernelKind::Portable`] | the `reference` kernel | either |
//!
//! `#[target_feature]` appears only on the `unsafe` entry points inside `avx2`/`avx512vnni`;
//! they are reached only through a [`Kernel`], which can only be obtained for a CPU that supports
//! it ([`Kernel::new`] returns `None` otherwise), and the best kernel per accumulation model is
//! detected once and cached ([`Kernel::best`]).
//!
//! # Packing layout (and why)
//! The weights `B` (PyTorch's `[N, K]` = `[out, in]`, i8) are packed once into column panels of
//! `NR` output channels (`NR` = 16 for AVX2, 32 for AVX-512; the last panel is zero-padded),
//! `K` is padded with zeros to a multiple of 4 (`kp`), and inside a panel the data is ordered
//! k-group-major:
//!
//! * **`Quad8`** (for `vpmaddubsw` and `vpdpbusd`): `panel[g][c][0..4] = B[c][4g .. 4g+4]`, i.e. each
//!   32-bit lane of a vector holds *four consecutive k of one output channel*. One broadcast of
//!   `A[i][4g..4g+4]` (a 32-bit `vpbroadcastd`) against one 32-byte (or 64-byte) load of the panel
//!   gives, per lane, exactly the quad `vpdpbusd` sums, and for `vpmaddubsw` exactly the pairs
//!   `(k0,k1), (k2,k3)` that FBGEMM saturates (its `row_interleave` = 4): `vpmaddwd` with ones then
//!   adds the two saturated pairs into int32 without saturation. This is what makes the AVX2 kernel
//!   bit-faithful to FBGEMM rather than merely close: the pair boundaries are fixed by the layout.
//!   Zero padding of odd K pairs the last element with zero, as FBGEMM does.
//! * **`Tile`** (AMX): `Quad8` with `NR` = 32 and `K` padded to a multiple of 64, so 16
//!   consecutive k-groups of 16 columns are one `tdpbusd` B tile (see the `amx` module).
//! * **`Pair16`** (exact AVX2): `panel[h][c][0..2] = (i16) B[c][2h .. 2h+2]`; activations are
//!   widened to u16 when `A` is packed, and `vpmaddwd` sums two exact 16-bit products per lane.
//!
//! Activations are not packed: the micro-kernels read each row of A where it lies, as a list of
//! segments of 4-byte steps (`AOperand`). A linear layer's input is used as is when `K` is a
//! multiple of 4 (otherwise rows are copied with zero padding; `Pair16` widens them to u16); a
//! convolution's rows are windows of the padded channels-last image, one segment per kernel row
//! ([`conv`] module docs), so no im2col matrix is written. Row sums are taken only for asymmetric
//! weights. The micro-kernel keeps an `MR × NR` int32 tile in registers over the whole of `K`
//! (`MR` = 4 rows × 2 vectors on AVX2, 6 × 2 on AVX-512); rows are processed in blocks of `MC`
//! rows so the block's share of A (up to 512 KiB) stays in L2 while each `K × NR` weight panel is
//! swept over it by `MC / MR` micro-kernel calls.
//!
//! # Fused epilogue
//! Each finished tile goes through the epilogue in registers-to-L1 order: zero points are folded as
//! FBGEMM does (`raw = acc − a_zp·col_off[j] − row_sum[i]·b_zp[j]`, `col_off[j] = Σ_k B[j][k] −
//! K·b_zp[j]`, wrapping int32; equal to `Σ(a − a_zp)(b − b_zp)` for exact accumulation), then the
//! requantization rule: FBGEMM `f32(f32(f32(raw) + bterm[j]) · mult[j])` or QNNPACK
//! `f32(f32(raw + bq[j]) · scale[j])`, `cvtps2dq` (RNE), `packs`/`adds(zp)`/`packus`, ReLU via the
//! lower clamp, exactly like `requantizeOutputProcessingAvx2` (FBGEMM `src/QuantUtilsAvx2.cc`).
//! Column tails narrower than a vector evaluate the same per-channel form in scalar code.

use super::quant::{self, check_activation_zero_point, PerChannel};
use super::reference;
use super::{Accumulation, Int8Gemm, Isa, Output, QConv, QGemm, QuantConv, QuantGemm, Requant};
use crate::{Error, Result};
use std::sync::OnceLock;

mod amx;
mod avx2;
mod avx512vnni;
pub mod binary;
pub mod conv;
pub mod depthwise;
pub mod quantize;

pub mod peak;

/// Weight layout of a packed matrix (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Quad8 { nr: usize },
    Pair16 { nr: usize },
    Tile { nr: usize },
    Plain,
}

/// The name of an x86 kernel. A name alone runs nothing: the entry points take a [`Kernel`],
/// which only CPU detection hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// AVX2 `vpmaddubsw`/`vpmaddwd`, pair-saturating (FBGEMM without VNNI).
    Avx2PairSat,
    /// AVX2 exact kernel (operands widened to i16, `vpmaddwd`).
    Avx2Exact,
    /// AVX-512 VNNI `vpdpbusd`, exact.
    Avx512Vnni,
    /// AMX `tdpbusd` on int8 tiles, exact.
    Amx,
    /// The portable reference kernel.
    Portable(Accumulation),
}

impl KernelKind {
    /// Every SIMD kernel, AVX2 first.
    pub const SIMD: [KernelKind; 4] = [
        KernelKind::Avx2PairSat,
        KernelKind::Avx2Exact,
        KernelKind::Avx512Vnni,
        KernelKind::Amx,
    ];

    /// The ISA the kernel needs (`None` for the portable one).
    pub fn isa(self) -> Option<Isa> {
        match self {
            KernelKind::Avx2PairSat | KernelKind::Avx2Exact => Some(Isa::Avx2),
            KernelKind::Avx512Vnni => Some(Isa::Avx512Vnni),
            KernelKind::Amx => Some(Isa::Amx),
            KernelKind::Portable(_) => None,
        }
    }

    /// The accumulation model the kernel implements.
    pub fn accumulation(self) -> Accumulation {
        match self {
            KernelKind::Avx2PairSat => Accumulation::PairSaturatingI16,
            KernelKind::Avx2Exact | KernelKind::Avx512Vnni | KernelKind::Amx => Accumulation::Exact,
            KernelKind::Portable(a) => a,
        }
    }

    /// Stable name for reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Avx2PairSat => "x86-avx2-pair-sat16",
            KernelKind::Avx2Exact => "x86-avx2-exact",
            KernelKind::Avx512Vnni => "x86-avx512vnni",
            KernelKind::Amx => "x86-amx",
            KernelKind::Portable(Accumulation::Exact) => "portable-exact",
            KernelKind::Portable(Accumulation::PairSaturatingI16) => "portable-pair-sat16",
        }
    }

    fn format(self) -> Format {
        match self {
            KernelKind::Avx2PairSat => Format::Quad8 { nr: avx2::NR },
            KernelKind::Avx2Exact => Format::Pair16 { nr: avx2::NR },
            KernelKind::Avx512Vnni => Format::Quad8 { nr: avx512vnni::NR },
            KernelKind::Amx => Format::Tile { nr: amx::NR },
            KernelKind::Portable(_) => Format::Plain,
        }
    }
}

/// An x86 kernel that this CPU can run: the proof of CPU detection that makes the `unsafe`
/// SIMD calls behind [`PackedLinear`] and [`conv::Conv2d`] sound.
///
/// The field is private, so the only ways to hold one are [`Kernel::new`] (which returns `None`
/// when the CPU lacks the kernel's ISA), [`Kernel::best`], [`Kernel::supported`] and
/// [`Kernel::portable`]. Naming a kernel into existence does not compile:
///
/// ```compile_fail
/// use qparity::kernels::x86::{Kernel, KernelKind, PackedLinear};
/// use qparity::kernels::Requant;
/// use qparity::numerics::requant::FbgemmRequant;
/// let rule = Requant::Fbgemm(FbgemmRequant::new(0.02, &[0.01], false, None, 2, 0.05, 10, false));
/// let vnni = Kernel { kind: KernelKind::Avx512Vnni }; // error: private field
/// let lin = PackedLinear::with_kernel(vnni, &[1, 2, 3, 4], 2, 2, &[0], rule);
/// ```
///
/// nor does passing the bare name where a kernel is expected:
///
/// ```compile_fail
/// use qparity::kernels::x86::{KernelKind, PackedLinear};
/// use qparity::kernels::Requant;
/// use qparity::numerics::requant::FbgemmRequant;
/// let rule = Requant::Fbgemm(FbgemmRequant::new(0.02, &[0.01], false, None, 2, 0.05, 10, false));
/// let lin = PackedLinear::with_kernel(KernelKind::Avx512Vnni, &[1, 2, 3, 4], 2, 2, &[0], rule);
/// ```
///
/// The same program with the kernel obtained the only legal way compiles, and runs the VNNI
/// kernel exactly when the CPU has it:
///
/// ```
/// use qparity::kernels::x86::{Kernel, KernelKind, PackedLinear};
/// use qparity::kernels::Requant;
/// use qparity::numerics::requant::FbgemmRequant;
/// let rule = Requant::Fbgemm(FbgemmRequant::new(0.02, &[0.01], false, None, 2, 0.05, 10, false));
/// if let Some(vnni) = Kernel::new(KernelKind::Avx512Vnni) {
///     let lin = PackedLinear::with_kernel(vnni, &[1, 2, 3, 4], 2, 2, &[0], rule).unwrap();
///     assert_eq!(lin.kernel().kind(), KernelKind::Avx512Vnni);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kernel {
    kind: KernelKind,
}

impl Kernel {
    /// `Some` iff this CPU can run `kind`.
    pub fn new(kind: KernelKind) -> Option<Kernel> {
        match kind.isa() {
            Some(isa) if !isa.detected() => None,
            _ => Some(Kernel { kind }),
        }
    }

    /// The portable kernel of `acc` (runs on every CPU).
    pub fn portable(acc: Accumulation) -> Kernel {
        Kernel {
            kind: KernelKind::Portable(acc),
        }
    }

    /// The fastest kernel for `acc` on this CPU; detected once and cached.
    pub fn best(acc: Accumulation) -> Kernel {
        static EXACT: OnceLock<Kernel> = OnceLock::new();
        static PAIR: OnceLock<Kernel> = OnceLock::new();
        let (cell, order): (_, &[KernelKind]) = match acc {
            Accumulation::Exact => (
                &EXACT,
                &[
                    KernelKind::Amx,
                    KernelKind::Avx512Vnni,
                    KernelKind::Avx2Exact,
                ],
            ),
            Accumulation::PairSaturatingI16 => (&PAIR, &[KernelKind::Avx2PairSat]),
        };
        *cell.get_or_init(|| {
            order
                .iter()
                .find_map(|&k| Kernel::new(k))
                .unwrap_or(Kernel::portable(acc))
        })
    }

    /// Every SIMD kernel this CPU supports.
    pub fn supported() -> Vec<Kernel> {
        KernelKind::SIMD
            .into_iter()
            .filter_map(Kernel::new)
            .collect()
    }

    /// Which kernel this is.
    pub fn kind(self) -> KernelKind {
        self.kind
    }

    /// The ISA the kernel needs (`None` for the portable one).
    pub fn isa(self) -> Option<Isa> {
        self.kind.isa()
    }

    /// The accumulation model the kernel implements.
    pub fn accumulation(self) -> Accumulation {
        self.kind.accumulation()
    }

    /// Stable name for reports.
    pub fn name(self) -> &'static str {
        self.kind.name()
    }

    fn format(self) -> Format {
        self.kind.format()
    }
}

/// Rounds `k` up to a multiple of 4.
fn pad4(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Packs `b` (`n × k`) into column panels of `nr` channels, `kp` deep, with groups of `group`
/// consecutive k per channel: `panel[k / group][c][k % group] = b[c][k]` (zero padding).
fn panels<T: Copy + Default>(
    b: &[i8],
    n: usize,
    k: usize,
    kp: usize,
    nr: usize,
    group: usize,
    conv: impl Fn(i8) -> T,
) -> Vec<T> {
    let count = n.div_ceil(nr);
    let mut out = vec![T::default(); count * nr * kp];
    for p in 0..count {
        let base = p * nr * kp;
        for c in 0..nr.min(n - p * nr) {
            let row = &b[(p * nr + c) * k..(p * nr + c + 1) * k];
            for (kk, &v) in row.iter().enumerate() {
                out[base + (kk / group) * nr * group + c * group + kk % group] = conv(v);
            }
        }
    }
    out
}

/// A weight matrix packed for one kernel (layout in the module docs).
#[derive(Debug, Clone)]
pub struct PackedB {
    kernel: Kernel,
    n: usize,
    k: usize,
    kp: usize,
    data8: Vec<i8>,
    data16: Vec<i16>,
    /// `Σ_k B[j][k]` (int32, exact).
    col_sums: Vec<i32>,
}

impl PackedB {
    /// Packs the `n × k` row-major weights `b` for `kernel`.
    pub fn new(kernel: Kernel, b: &[i8], n: usize, k: usize) -> Result<Self> {
        if b.len()
            != n.checked_mul(k)
                .ok_or_else(|| Error::shape("weights", "n·k overflows"))?
        {
            return Err(Error::shape(
                "weights",
                format!("expected {n}×{k} = {} values, got {}", n * k, b.len()),
            ));
        }
        let kp = match kernel.format() {
            Format::Tile { .. } => k.div_ceil(amx::KB) * amx::KB,
            _ => pad4(k),
        };
        let col_sums = (0..n)
            .map(|j| b[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let (mut data8, mut data16) = (Vec::new(), Vec::new());
        match kernel.format() {
            Format::Plain => data8 = b.to_vec(),
            Format::Quad8 { nr } | Format::Tile { nr } => data8 = panels(b, n, k, kp, nr, 4, |v| v),
            Format::Pair16 { nr } => data16 = panels(b, n, k, kp, nr, 2, i16::from),
        }
        Ok(Self {
            kernel,
            n,
            k,
            kp,
            data8,
            data16,
            col_sums,
        })
    }

    /// The kernel this matrix is packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of one panel's K steps (`kp` u8 or `kp` i16 per column), `nr` columns wide, divided
    /// by `nr`: the most an activation row may read, in bytes.
    fn step_bytes(&self) -> usize {
        match self.kernel.format() {
            Format::Quad8 { .. } | Format::Tile { .. } => self.kp,
            Format::Pair16 { .. } => 2 * self.kp,
            Format::Plain => self.k,
        }
    }

    /// The `Quad8`/`Pair16` panel `p` (`nr` columns, `kp` k), as bytes or i16.
    fn panel8(&self, p: usize, nr: usize) -> &[i8] {
        &self.data8[p * nr * self.kp..(p + 1) * nr * self.kp]
    }

    fn panel16(&self, p: usize, nr: usize) -> &[i16] {
        &self.data16[p * nr * self.kp..(p + 1) * nr * self.kp]
    }
}

/// Where the micro-kernels find row `i` of the activation operand.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowMap {
    /// Row `i` starts at byte `i · ld`.
    Dense { ld: usize },
    /// Row `i` is output pixel `(oy, ox) = (i / ow, i % ow)` of a convolution, starting at byte
    /// `oy · dy + ox · dx` of a padded channels-last image.
    Pixels { ow: usize, dy: usize, dx: usize },
}

impl RowMap {
    #[inline]
    fn offset(self, i: usize) -> usize {
        match self {
            RowMap::Dense { ld } => i * ld,
            RowMap::Pixels { ow, dy, dx } => (i / ow) * dy + (i % ow) * dx,
        }
    }
}

/// The activation operand as the micro-kernels read it. Each row is `segs.len()` segments of
/// `steps` 4-byte steps, segment `s` starting at byte `row + segs[s]`; one step is the four u8 of
/// a `Quad8` k-group, or the two u16 (little-endian, high byte 0) of a `Pair16` k-pair, and the
/// steps of a row, in order, meet the steps of the weight panel one to one.
///
/// A dense GEMM has one segment per row. A convolution reads its rows straight out of the
/// zero-point-padded channels-last image ("implicit im2col"): with the K order `(ky, kx, ic)`,
/// the `KW·ICg` values of one kernel row are contiguous in the image, so a row of A is `KH`
/// segments `dilation_h·padded_width·ICg` apart, and no im2col matrix is written.
pub(crate) struct AOperand<'a> {
    bytes: &'a [u8],
    m: usize,
    rows: RowMap,
    segs: &'a [usize],
    steps: usize,
    /// `Σ_k A[i][k]` per row, or empty when no weight zero point needs it.
    row_sums: &'a [i32],
}

impl<'a> AOperand<'a> {
    /// Checks once that every read the micro-kernels will make is inside `bytes` (the soundness
    /// condition of the SIMD kernels); a violation is a bug in the caller, hence the panic.
    pub(crate) fn new(
        bytes: &'a [u8],
        m: usize,
        rows: RowMap,
        segs: &'a [usize],
        steps: usize,
        row_sums: &'a [i32],
    ) -> Self {
        // The offset grows with `oy` and with `ox`: the largest is at the last pixel, or at the
        // end of the output row before it.
        let last_row = match (m, rows) {
            (0, _) => 0,
            (_, RowMap::Dense { ld }) => (m - 1) * ld,
            (_, RowMap::Pixels { ow, dy, dx }) => {
                let oy = (m - 1) / ow;
                let before = if oy > 0 {
                    (oy - 1) * dy + (ow - 1) * dx
                } else {
                    0
                };
                rows.offset(m - 1).max(before)
            }
        };
        let last_seg = segs.iter().copied().max().unwrap_or(0);
        assert!(
            m == 0 || last_row + last_seg + 4 * steps <= bytes.len(),
            "activation operand reads past its buffer"
        );
        assert!(row_sums.is_empty() || row_sums.len() == m);
        Self {
            bytes,
            m,
            rows,
            segs,
            steps,
            row_sums,
        }
    }

    /// 4-byte steps per row.
    fn k_steps(&self) -> usize {
        self.segs.len() * self.steps
    }
}

/// Walks an `m × n` output in L2 blocks of rows, weight panels of `nr` columns and tiles of up
/// to `MR` rows, calling `tile(rows, n_rows, i0, panel)` with the start of each tile row in A
/// (rows past `n_rows` repeat the first, so they are valid but unused).
///
/// The block of rows is sized so its share of A (`mc · K` bytes) is up to 512 KiB, this
/// machine's per-core L2: each weight panel is swept over the block, and fewer, larger blocks
/// mean fewer passes over a weight matrix that lives in L3 (on the 256×4096×4096 benchmark,
/// 128 KiB blocks measured about 20 % slower than 512 KiB ones).
pub(crate) fn drive<const MR: usize>(
    a: &AOperand,
    n: usize,
    nr: usize,
    mut tile: impl FnMut(&[*const u8; MR], usize, usize, usize),
) {
    let kbytes = 4 * a.k_steps();
    let mc = ((512 * 1024 / kbytes.max(1)) / MR).max(1) * MR;
    let panels = n.div_ceil(nr);
    let base = a.bytes.as_ptr();
    for ic in (0..a.m).step_by(mc) {
        let iend = (ic + mc).min(a.m);
        for p in 0..panels {
            let mut i = ic;
            while i < iend {
                let rows = (iend - i).min(MR);
                let first = a.rows.offset(i);
                let ptrs: [*const u8; MR] = std::array::from_fn(|r| {
                    let off = if r < rows {
                        a.rows.offset(i + r)
                    } else {
                        first
                    };
                    base.wrapping_add(off)
                });
                tile(&ptrs, rows, i, p);
                i += rows;
            }
        }
    }
}

/// Activations packed for a dense GEMM: rows of `kp` u8 (zero-padded; borrowed when no padding is
/// needed) or `kp` little-endian u16 for `Pair16`, plus their row sums when asked for.
pub(crate) struct DenseA<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    m: usize,
    ld: usize,
    steps: usize,
    row_sums: Vec<i32>,
}

impl<'a> DenseA<'a> {
    /// `a` is `m` rows of `ld_in` bytes whose first `k` are the row (`ld_in ≥ k`).
    fn new(
        kernel: Kernel,
        a: &'a [u8],
        m: usize,
        k: usize,
        ld_in: usize,
        need_row_sums: bool,
    ) -> Self {
        use std::borrow::Cow;
        let kp = pad4(k);
        let row = |i: usize| &a[i * ld_in..i * ld_in + k];
        let row_sums = if need_row_sums {
            (0..m)
                .map(|i| row(i).iter().map(|&v| v as i32).sum())
                .collect()
        } else {
            Vec::new()
        };
        let (bytes, ld, steps) = match kernel.format() {
            Format::Plain if ld_in == k => (Cow::Borrowed(a), k, 0),
            Format::Plain => (Cow::Owned((0..m).flat_map(row).copied().collect()), k, 0),
            // Rows `ld_in` apart (a multiple of 4) with zeros, or anything (it meets the zero
            // padding of B), after the first `k` bytes.
            Format::Quad8 { .. } | Format::Tile { .. }
                if ld_in >= kp && ld_in.is_multiple_of(4) =>
            {
                (Cow::Borrowed(a), ld_in, kp / 4)
            }
            Format::Quad8 { .. } | Format::Tile { .. } => {
                let mut d = vec![0u8; m * kp];
                for i in 0..m {
                    d[i * kp..i * kp + k].copy_from_slice(row(i));
                }
                (Cow::Owned(d), kp, kp / 4)
            }
            Format::Pair16 { .. } => {
                let mut d = vec![0u8; m * 2 * kp];
                for i in 0..m {
                    for (c, &v) in row(i).iter().enumerate() {
                        d[i * 2 * kp + 2 * c] = v;
                    }
                }
                (Cow::Owned(d), 2 * kp, kp / 2)
            }
        };
        Self {
            bytes,
            m,
            ld,
            steps,
            row_sums,
        }
    }

    fn operand<'s>(&'s self, seg0: &'s [usize; 1]) -> AOperand<'s> {
        AOperand::new(
            &self.bytes,
            self.m,
            RowMap::Dense { ld: self.ld },
            seg0,
            self.steps,
            &self.row_sums,
        )
    }
}

/// What the epilogue writes.
pub(crate) enum Sink<'a> {
    /// int32 `raw` values, M×N row-major.
    Raw(&'a mut [i32]),
    /// Requantized u8, M×N row-major.
    U8(&'a mut [u8]),
}

/// Everything the epilogue needs: zero-point folding and the requantization constants expanded
/// to one entry per output channel.
pub(crate) struct Epilogue<'a> {
    /// Columns of the GEMM.
    n: usize,
    /// Output element `(i, j)` is at `out_off + i·out_ld + j` of the sink, `i` the output row
    /// of GEMM row `i` ([`Epilogue::out_row`]).
    out_ld: usize,
    out_off: usize,
    /// `Some((vw, ow))`: the GEMM's rows are the pixels of a conv output computed over a padded
    /// width `vw ≥ ow` (see `conv`), GEMM row `i` is output pixel `(i / vw, i % vw)`, and rows
    /// with `i % vw ≥ ow` are dropped. Only the AMX kernel is given such an operand.
    virtual_rows: Option<(usize, usize)>,
    /// Per-row activation sums (empty when `b_zp` is `None`).
    row_sums: &'a [i32],
    /// `a_zp · col_off[j]`.
    zc: &'a [i32],
    /// `b_zp[j]`, or `None` when every weight zero point is 0 (the row-sum term vanishes).
    b_zp: Option<&'a [i32]>,
    /// The rule of the GEMM's `n` columns (`None` for a raw sink).
    rq: Option<&'a PerChannel>,
    sink: Sink<'a>,
}

impl Epilogue<'_> {
    /// Folds zero points into one accumulator.
    #[inline]
    fn raw(&self, acc: i32, i: usize, j: usize) -> i32 {
        let mut r = acc.wrapping_sub(self.zc[j]);
        if let Some(bz) = self.b_zp {
            r = r.wrapping_sub(self.row_sum(i).wrapping_mul(bz[j]));
        }
        r
    }

    #[inline]
    fn row_sum(&self, i: usize) -> i32 {
        self.row_sums.get(i).copied().unwrap_or(0)
    }

    /// The output row of GEMM row `i`, `None` for a dropped row.
    #[inline]
    fn out_row(&self, i: usize) -> Option<usize> {
        out_row(self.virtual_rows, i)
    }

    /// Index of output element `(i, j)` in the sink (`i` an output row).
    #[inline]
    fn at(&self, i: usize, j: usize) -> usize {
        self.out_off + i * self.out_ld + j
    }

    /// Scalar epilogue for a tile of `rows × cols` accumulators at `(i0, j0)`, `ld` apart.
    fn tile_scalar(
        &mut self,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
        t: &[i32],
        ld: usize,
    ) {
        for r in 0..rows {
            let Some(o) = self.out_row(i0 + r) else {
                continue;
            };
            for c in 0..cols {
                let (i, j) = (i0 + r, j0 + c);
                let raw = self.raw(t[r * ld + c], i, j);
                let at = self.at(o, j);
                match &mut self.sink {
                    Sink::Raw(o) => o[at] = raw,
                    Sink::U8(o) => o[at] = self.rq.expect("u8 sink has a rule").apply(raw, j),
                }
            }
        }
    }
}

/// The output row of GEMM row `i` under [`Epilogue::virtual_rows`].
#[inline]
fn out_row(virtual_rows: Option<(usize, usize)>, i: usize) -> Option<usize> {
    match virtual_rows {
        None => Some(i),
        Some((vw, ow)) => (i % vw < ow).then_some(i / vw * ow + i % vw),
    }
}

/// Runs `c = a·bᵀ` on a packed B through the epilogue.
fn run_packed(b: &PackedB, a: &AOperand, epi: &mut Epilogue) {
    assert!(
        epi.virtual_rows.is_none()
            || matches!(b.kernel.kind(), KernelKind::Amx | KernelKind::Portable(_)),
        "virtual conv rows on a kernel whose epilogue does not drop them"
    );
    if b.kernel.format() != Format::Plain {
        // The micro-kernels read `k_steps` steps of each weight panel: keep them inside it.
        assert!(
            a.k_steps() * 4 <= b.step_bytes(),
            "activation rows longer than the packed weights"
        );
    }
    match b.kernel.kind() {
        KernelKind::Avx2PairSat => {
            // SAFETY: a `Kernel` of a SIMD kind exists only if its ISA was detected (its field
            // is private; `Kernel::new` checks), `b` was packed for this kernel's format and `a` checked its
            // reads when it was built (AOperand::new).
            unsafe { avx2::gemm_pairsat(a, b, epi) }
        }
        KernelKind::Avx2Exact => {
            // SAFETY: as above (AVX2 and FMA detected, `Isa::Avx2`; Pair16 format).
            unsafe { avx2::gemm_exact(a, b, epi) }
        }
        KernelKind::Avx512Vnni => {
            // SAFETY: as above (AVX-512 F/BW/VNNI, AVX2 and FMA detected; Quad8 format, NR = 32).
            unsafe { avx512vnni::gemm_vnni(a, b, epi) }
        }
        KernelKind::Amx => {
            // SAFETY: as above (AMX-TILE/INT8 with the OS tile permission, AVX-512 F/BW/VL, AVX2
            // and FMA detected, `amx::detected`; Tile format, NR = 32, K padded to 64).
            unsafe { amx::gemm_amx(a, b, epi) }
        }
        KernelKind::Portable(acc) => {
            let k = b.k;
            let mut t = vec![0i32; b.n];
            for i in 0..a.m {
                let off = a.rows.offset(i);
                let row = &a.bytes[off..off + k];
                for (j, tj) in t.iter_mut().enumerate() {
                    *tj = reference::dot(acc, row, &b.data8[j * k..(j + 1) * k]);
                }
                epi.tile_scalar(i, 0, 1, b.n, &t, b.n);
            }
        }
    }
}

/// A linear layer's weights packed once, with zero-point folding and a requantization rule fused
/// into the GEMM's epilogue.
///
/// ```
/// # #[cfg(target_arch = "x86_64")] {
/// use qparity::kernels::{Accumulation, Requant, x86::PackedLinear};
/// use qparity::numerics::requant::FbgemmRequant;
/// let (n, k) = (3, 5);
/// let w: Vec<i8> = (0..15).map(|v| v as i8 - 7).collect();
/// let rq = FbgemmRequant::new(0.02, &[0.01], false, None, n, 0.05, 10, false);
/// let lin = PackedLinear::new(&w, n, k, &[0], Requant::Fbgemm(rq), Accumulation::Exact).unwrap();
/// let a = [200u8; 10]; // m = 2
/// let mut out = [0u8; 6];
/// lin.run(&a, 2, 128, &mut out).unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PackedLinear {
    packed: PackedB,
    /// `col_off[j] = Σ_k B[j][k] − K·b_zp[j]` (FBGEMM's `col_offsets`), wrapping.
    col_off: Vec<i32>,
    b_zp: Vec<i32>,
    symmetric: bool,
    /// The fused rule (`None`: raw output only).
    rq: Option<PerChannel>,
}

impl PackedLinear {
    /// Packs `weights` (`n × k`, PyTorch `[out, in]`, raw int8) with weight zero points (one for
    /// per-tensor, `n` for per-channel) for the fastest kernel of `accumulation` on this CPU.
    pub fn new(
        weights: &[i8],
        n: usize,
        k: usize,
        weight_zero_points: &[i32],
        requant: Requant,
        accumulation: Accumulation,
    ) -> Result<Self> {
        Self::with_kernel(
            Kernel::best(accumulation),
            weights,
            n,
            k,
            weight_zero_points,
            requant,
        )
    }

    /// As [`PackedLinear::new`], for an explicit kernel (from [`Kernel::new`]).
    pub fn with_kernel(
        kernel: Kernel,
        weights: &[i8],
        n: usize,
        k: usize,
        weight_zero_points: &[i32],
        requant: Requant,
    ) -> Result<Self> {
        Self::build(kernel, weights, n, k, weight_zero_points, Some(&requant))
    }

    /// [`PackedLinear::with_kernel`] with an optional rule (without one, only
    /// [`PackedLinear::run_raw`] works).
    pub(crate) fn build(
        kernel: Kernel,
        weights: &[i8],
        n: usize,
        k: usize,
        weight_zero_points: &[i32],
        requant: Option<&Requant>,
    ) -> Result<Self> {
        if n == 0 || k == 0 {
            return Err(Error::shape(
                "linear",
                format!("n = {n}, k = {k} must be ≥ 1"),
            ));
        }
        let b_zp = quant::weight_zero_points(weight_zero_points, n)?;
        let rq = requant.map(|r| PerChannel::new(r, 0, n, n)).transpose()?;
        let packed = PackedB::new(kernel, weights, n, k)?;
        let col_off = (0..n)
            .map(|j| packed.col_sums[j].wrapping_sub((k as i32).wrapping_mul(b_zp[j])))
            .collect();
        let symmetric = b_zp.iter().all(|&z| z == 0);
        Ok(Self {
            packed,
            col_off,
            b_zp,
            symmetric,
            rq,
        })
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.packed.kernel
    }

    /// Whether every weight zero point is 0 (activation row sums are then not needed).
    pub(crate) fn symmetric(&self) -> bool {
        self.symmetric
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.packed.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.packed.k
    }

    fn check(&self, a: &[u8], m: usize, a_zp: i32, out_len: usize) -> Result<()> {
        let (n, k) = (self.packed.n, self.packed.k);
        if a.len() != m * k {
            return Err(Error::shape(
                "linear input",
                format!("expected {m}×{k} = {} values, got {}", m * k, a.len()),
            ));
        }
        if out_len != m * n {
            return Err(Error::shape(
                "linear output",
                format!("expected {m}×{n} = {} values, got {out_len}", m * n),
            ));
        }
        check_activation_zero_point(a_zp)
    }

    /// The fused rule, or an error for a matrix packed without one.
    pub(crate) fn rule(&self) -> Result<&PerChannel> {
        self.rq.as_ref().ok_or_else(|| {
            Error::invalid("requantization", "packed without a rule: raw output only")
        })
    }

    fn epilogue_run(&self, a: &[u8], m: usize, a_zp: i32, sink: Sink<'_>) {
        let k = self.packed.k;
        let dense = DenseA::new(self.packed.kernel, a, m, k, k, !self.symmetric);
        self.run_operand(&dense.operand(&[0]), a_zp, sink, self.packed.n, 0, None);
    }

    /// Runs on an activation operand (`a_zp` validated by the caller; a u8 sink only when the
    /// matrix has a rule), writing output `(i, j)` at `out_off + i·out_ld + j` of `sink`.
    pub(crate) fn run_operand(
        &self,
        a: &AOperand,
        a_zp: i32,
        sink: Sink<'_>,
        out_ld: usize,
        out_off: usize,
        virtual_rows: Option<(usize, usize)>,
    ) {
        let zc: Vec<i32> = self.col_off.iter().map(|&c| c.wrapping_mul(a_zp)).collect();
        let mut epi = Epilogue {
            n: self.packed.n,
            out_ld,
            out_off,
            virtual_rows,
            row_sums: a.row_sums,
            zc: &zc,
            b_zp: (!self.symmetric).then_some(&self.b_zp[..]),
            rq: self.rq.as_ref(),
            sink,
        };
        run_packed(&self.packed, a, &mut epi);
    }

    /// Requantized output: `out[i][j]` = the rule applied to `Σ_k (a[i][k] − a_zp)(w[j][k] − w_zp[j])`
    /// (accumulated under the kernel's model). `a` is `m × k` row-major raw u8, `out` is `m × n`.
    pub fn run(&self, a: &[u8], m: usize, a_zp: i32, out: &mut [u8]) -> Result<()> {
        self.check(a, m, a_zp, out.len())?;
        self.rule()?;
        self.epilogue_run(a, m, a_zp, Sink::U8(out));
        Ok(())
    }

    /// The zero-point-folded int32 accumulators `raw` (what [`PackedLinear::run`] requantizes).
    pub fn run_raw(&self, a: &[u8], m: usize, a_zp: i32, out: &mut [i32]) -> Result<()> {
        self.check(a, m, a_zp, out.len())?;
        self.epilogue_run(a, m, a_zp, Sink::Raw(out));
        Ok(())
    }
}

/// Each kernel is also an [`Int8Gemm`] (B is packed on every call; for tests and the trait).
impl Int8Gemm for Kernel {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn accumulation(&self) -> Accumulation {
        self.kind.accumulation()
    }

    fn isa(&self) -> Option<Isa> {
        self.kind.isa()
    }

    fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
        assert_eq!(a.len(), m * k, "a must be M×K");
        assert_eq!(b.len(), n * k, "b must be N×K");
        assert_eq!(c.len(), m * n, "c must be M×N");
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c.fill(0);
            return;
        }
        let packed = PackedB::new(*self, b, n, k).expect("shapes checked above");
        let dense = DenseA::new(*self, a, m, k, k, false);
        let zc = vec![0i32; n];
        let mut epi = Epilogue {
            n,
            out_ld: n,
            out_off: 0,
            virtual_rows: None,
            row_sums: &[],
            zc: &zc,
            b_zp: None,
            rq: None,
            sink: Sink::Raw(c),
        };
        run_packed(&packed, &dense.operand(&[0]), &mut epi);
    }

    fn quant_gemm(&self) -> Option<&dyn QuantGemm> {
        Some(self)
    }

    fn quant_conv(&self) -> Option<&dyn QuantConv> {
        Some(self)
    }
}

impl QuantGemm for Kernel {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn accumulation(&self) -> Accumulation {
        self.kind.accumulation()
    }

    /// Packs B on every call (a layer packs once with [`PackedLinear`]).
    fn qgemm(&self, p: &QGemm<'_>, out: Output<'_>) -> Result<()> {
        let zb = p.validate()?;
        p.check_output(out.len())?;
        let rule = match &out {
            Output::Requantized(r, _) => Some(*r),
            Output::Raw(_) => None,
        };
        if let Some(r) = rule {
            r.validate(p.n)?;
        }
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        if p.k == 0 {
            // Every sum is empty: raw = 0.
            match out {
                Output::Raw(o) => o.fill(0),
                Output::Requantized(r, o) => {
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = r.apply(0, i % p.n);
                    }
                }
            }
            return Ok(());
        }
        let lin = PackedLinear::build(*self, p.b, p.n, p.k, &zb, rule)?;
        match out {
            Output::Raw(o) => lin.run_raw(p.a, p.m, p.a_zero_point, o),
            Output::Requantized(_, o) => lin.run(p.a, p.m, p.a_zero_point, o),
        }
    }
}

impl QuantConv for Kernel {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn accumulation(&self) -> Accumulation {
        self.kind.accumulation()
    }

    fn supports(&self, _: &crate::geometry::Conv2dParams, _: super::Layout) -> bool {
        true
    }

    /// Packs the weights on every call (a layer packs once with [`conv::Conv2d`]).
    fn qconv(&self, c: &QConv<'_>, out: Output<'_>) -> Result<(usize, usize)> {
        let hw = c.validate()?;
        c.check_output(out.len(), hw)?;
        let rule = match &out {
            Output::Requantized(r, _) => Some(*r),
            Output::Raw(_) => None,
        };
        let conv = conv::Conv2d::build(*self, c.weight, c.params, c.w_zero_points, rule)?;
        let (x, nb, h, w, zp) = (c.input, c.batch, c.height, c.width, c.a_zero_point);
        match out {
            Output::Raw(o) => conv.run_raw(c.layout, x, nb, h, w, zp, o),
            Output::Requantized(_, o) => conv.run(c.layout, x, nb, h, w, zp, o),
        }
    }
}

/// Whether AMX int8 runs here (CPU and OS; the tile permission is requested once).
pub(crate) fn amx_detected() -> bool {
    amx::detected()
}

/// The x86 SIMD kernels this CPU supports, as [`Int8Gemm`]s.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    Kernel::supported()
        .into_iter()
        .map(|k| Box::new(k) as Box<dyn Int8Gemm>)
        .collect()
}
