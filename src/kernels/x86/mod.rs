//! x86-64 kernels (AVX2, AVX-512 VNNI) with packed weights and fused requantization.
//!
//! # Kernels
//! | kernel | instructions | accumulation model |
//! |---|---|---|
//! | [`KernelId::Avx2PairSat`] | `vpmaddubsw` → `vpmaddwd(·, 1)` → `vpaddd` | [`Accumulation::PairSaturatingI16`] (FBGEMM's non-VNNI acc32 path, `GenerateKernelU8S8S32ACC32.cc`) |
//! | [`KernelId::Avx2Exact`] | u8/i8 widened to i16, `vpmaddwd` → `vpaddd` | [`Accumulation::Exact`] without VNNI |
//! | [`KernelId::Avx512Vnni`] | `vpdpbusd` | [`Accumulation::Exact`] (FBGEMM's VNNI path) |
//! | [`KernelId::Portable`] | the [`reference`](super::reference) kernel | either |
//!
//! `#[target_feature]` appears only on the `unsafe` entry points inside `avx2`/`avx512vnni`;
//! a [`KernelId`] can only be obtained for a CPU that supports it ([`KernelId::new`] returns
//! `None` otherwise), and the best kernel per accumulation model is detected once and cached
//! ([`KernelId::best`]).
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
//! * **`Pair16`** (exact AVX2): `panel[h][c][0..2] = (i16) B[c][2h .. 2h+2]`; activations are
//!   widened to u16 when `A` is packed, and `vpmaddwd` sums two exact 16-bit products per lane.
//!
//! Activations are packed per call into rows of `kp` bytes (u16 for `Pair16`), zero-padded, and
//! their row sums are taken on the way (needed for asymmetric weights). The micro-kernel keeps an
//! `MR × NR` int32 tile in registers over the whole of `K` (`MR` = 4 rows × 2 vectors on AVX2, 6 × 2
//! on AVX-512); rows are processed in blocks of `MC` rows so an `MC × kp` block of A stays in L2
//! while each `kp × NR` weight panel is reused by `MC / MR` micro-kernel calls.
//!
//! # Fused epilogue
//! Each finished tile goes through the epilogue in registers-to-L1 order: zero points are folded as
//! FBGEMM does (`raw = acc − a_zp·col_off[j] − row_sum[i]·b_zp[j]`, `col_off[j] = Σ_k B[j][k] −
//! K·b_zp[j]`, wrapping int32; equal to `Σ(a − a_zp)(b − b_zp)` for exact accumulation), then the
//! requantization rule: FBGEMM `f32(f32(f32(raw) + bterm[j]) · mult[j])` or QNNPACK
//! `f32(f32(raw + bq[j]) · scale[j])`, `cvtps2dq` (RNE), `packs`/`adds(zp)`/`packus`, ReLU via the
//! lower clamp, exactly like `requantizeOutputProcessingAvx2` (FBGEMM `src/QuantUtilsAvx2.cc`).
//! Column tails narrower than a vector use the scalar rule itself ([`Requant::apply`]).

use super::reference::{self, Reference};
use super::{Accumulation, Int8Gemm, Requant};
use crate::{Error, Result};
use std::sync::OnceLock;

mod avx2;
mod avx512vnni;
pub mod conv;
pub mod peak;

/// An instruction-set extension an x86 kernel needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX2 (`vpmaddubsw`, `vpmaddwd`).
    Avx2,
    /// AVX-512 F/BW + VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl Isa {
    /// Name used by `QPARITY_REQUIRE_ISA` (`avx2`, `avx512vnni`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// Parses a `QPARITY_REQUIRE_ISA` entry.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx2" => Ok(Isa::Avx2),
            "avx512vnni" | "avx512_vnni" | "vnni" => Ok(Isa::Avx512Vnni),
            other => Err(Error::invalid(
                "ISA name",
                format!("{other:?} (known: avx2, avx512vnni)"),
            )),
        }
    }

    /// Whether this CPU supports the extension (std caches the CPUID probe).
    pub fn detected(self) -> bool {
        match self {
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx2")
            }
        }
    }
}

/// Weight layout of a packed matrix (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Quad8 { nr: usize },
    Pair16 { nr: usize },
    Plain,
}

/// A GEMM kernel choice. Values other than `Portable` can only be constructed on CPUs that
/// support them, which is what makes the `unsafe` SIMD calls behind them sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelId {
    /// AVX2 `vpmaddubsw`/`vpmaddwd`, pair-saturating (FBGEMM without VNNI).
    Avx2PairSat,
    /// AVX2 exact kernel (operands widened to i16, `vpmaddwd`).
    Avx2Exact,
    /// AVX-512 VNNI `vpdpbusd`, exact.
    Avx512Vnni,
    /// The portable reference kernel.
    Portable(Accumulation),
}

impl KernelId {
    /// `Some(id)` iff this CPU can run `id`.
    pub fn new(id: KernelId) -> Option<KernelId> {
        match id.isa() {
            Some(isa) if !isa.detected() => None,
            _ => Some(id),
        }
    }

    /// The ISA the kernel needs (`None` for the portable one).
    pub fn isa(self) -> Option<Isa> {
        match self {
            KernelId::Avx2PairSat | KernelId::Avx2Exact => Some(Isa::Avx2),
            KernelId::Avx512Vnni => Some(Isa::Avx512Vnni),
            KernelId::Portable(_) => None,
        }
    }

    /// The accumulation model the kernel implements.
    pub fn accumulation(self) -> Accumulation {
        match self {
            KernelId::Avx2PairSat => Accumulation::PairSaturatingI16,
            KernelId::Avx2Exact | KernelId::Avx512Vnni => Accumulation::Exact,
            KernelId::Portable(a) => a,
        }
    }

    /// Stable name for reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelId::Avx2PairSat => "x86-avx2-pair-sat16",
            KernelId::Avx2Exact => "x86-avx2-exact",
            KernelId::Avx512Vnni => "x86-avx512vnni",
            KernelId::Portable(Accumulation::Exact) => "portable-exact",
            KernelId::Portable(Accumulation::PairSaturatingI16) => "portable-pair-sat16",
        }
    }

    /// The fastest kernel for `acc` on this CPU; detected once and cached.
    pub fn best(acc: Accumulation) -> KernelId {
        static EXACT: OnceLock<KernelId> = OnceLock::new();
        static PAIR: OnceLock<KernelId> = OnceLock::new();
        let (cell, order): (_, &[KernelId]) = match acc {
            Accumulation::Exact => (&EXACT, &[KernelId::Avx512Vnni, KernelId::Avx2Exact]),
            Accumulation::PairSaturatingI16 => (&PAIR, &[KernelId::Avx2PairSat]),
        };
        *cell.get_or_init(|| {
            order
                .iter()
                .find_map(|&k| KernelId::new(k))
                .unwrap_or(KernelId::Portable(acc))
        })
    }

    /// Every SIMD kernel this CPU supports.
    pub fn all_supported() -> Vec<KernelId> {
        [
            KernelId::Avx2PairSat,
            KernelId::Avx2Exact,
            KernelId::Avx512Vnni,
        ]
        .into_iter()
        .filter_map(KernelId::new)
        .collect()
    }

    fn format(self) -> Format {
        match self {
            KernelId::Avx2PairSat => Format::Quad8 { nr: avx2::NR },
            KernelId::Avx2Exact => Format::Pair16 { nr: avx2::NR },
            KernelId::Avx512Vnni => Format::Quad8 { nr: avx512vnni::NR },
            KernelId::Portable(_) => Format::Plain,
        }
    }
}

/// Rounds `k` up to a multiple of 4.
fn pad4(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// A weight matrix packed for one kernel (layout in the module docs).
#[derive(Debug, Clone)]
pub struct PackedB {
    kernel: KernelId,
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
    pub fn new(kernel: KernelId, b: &[i8], n: usize, k: usize) -> Result<Self> {
        if b.len()
            != n.checked_mul(k)
                .ok_or_else(|| Error::shape("weights", "n·k overflows"))?
        {
            return Err(Error::shape(
                "weights",
                format!("expected {n}×{k} = {} values, got {}", n * k, b.len()),
            ));
        }
        let kp = pad4(k);
        let col_sums = (0..n)
            .map(|j| b[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let (mut data8, mut data16) = (Vec::new(), Vec::new());
        match kernel.format() {
            Format::Plain => data8 = b.to_vec(),
            Format::Quad8 { nr } => {
                let panels = n.div_ceil(nr);
                data8 = vec![0i8; panels * nr * kp];
                for p in 0..panels {
                    let base = p * nr * kp;
                    for c in 0..nr.min(n - p * nr) {
                        let row = &b[(p * nr + c) * k..(p * nr + c + 1) * k];
                        for (kk, &v) in row.iter().enumerate() {
                            data8[base + (kk / 4) * nr * 4 + c * 4 + kk % 4] = v;
                        }
                    }
                }
            }
            Format::Pair16 { nr } => {
                let panels = n.div_ceil(nr);
                data16 = vec![0i16; panels * nr * kp];
                for p in 0..panels {
                    let base = p * nr * kp;
                    for c in 0..nr.min(n - p * nr) {
                        let row = &b[(p * nr + c) * k..(p * nr + c + 1) * k];
                        for (kk, &v) in row.iter().enumerate() {
                            data16[base + (kk / 2) * nr * 2 + c * 2 + kk % 2] = v as i16;
                        }
                    }
                }
            }
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
    pub fn kernel(&self) -> KernelId {
        self.kernel
    }
}

/// Activations packed per call: rows of `kp` (zero-padded), u8 or widened to u16.
pub(crate) struct PackedA {
    m: usize,
    kp: usize,
    data8: Vec<u8>,
    data16: Vec<u16>,
    row_sums: Vec<i32>,
}

impl PackedA {
    /// From activations already laid out in rows of `kp = pad4(k)` bytes with zero padding
    /// (as im2col writes them).
    /// Row sums are only taken when `need_row_sums` (asymmetric weights); otherwise empty.
    fn from_padded(kernel: KernelId, a: Vec<u8>, m: usize, k: usize, need_row_sums: bool) -> Self {
        let kp = pad4(k);
        debug_assert_eq!(a.len(), m * kp);
        let row_sums = if need_row_sums {
            (0..m)
                .map(|i| a[i * kp..i * kp + k].iter().map(|&v| v as i32).sum())
                .collect()
        } else {
            vec![0; m]
        };
        let (mut data8, mut data16) = (Vec::new(), Vec::new());
        match kernel.format() {
            Format::Plain => {
                data8 = Vec::with_capacity(m * k);
                for i in 0..m {
                    data8.extend_from_slice(&a[i * kp..i * kp + k]);
                }
            }
            Format::Quad8 { .. } => data8 = a,
            Format::Pair16 { .. } => data16 = a.iter().map(|&v| v as u16).collect(),
        }
        Self {
            m,
            kp,
            data8,
            data16,
            row_sums,
        }
    }

    fn new(kernel: KernelId, a: &[u8], m: usize, k: usize) -> Self {
        let kp = pad4(k);
        let row_sums = (0..m)
            .map(|i| a[i * k..(i + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let (mut data8, mut data16) = (Vec::new(), Vec::new());
        match kernel.format() {
            Format::Plain => data8 = a.to_vec(),
            Format::Quad8 { .. } => {
                if kp == k {
                    data8 = a.to_vec();
                } else {
                    data8 = vec![0u8; m * kp];
                    for i in 0..m {
                        data8[i * kp..i * kp + k].copy_from_slice(&a[i * k..(i + 1) * k]);
                    }
                }
            }
            Format::Pair16 { .. } => {
                data16 = vec![0u16; m * kp];
                for i in 0..m {
                    for (d, &s) in data16[i * kp..i * kp + k].iter_mut().zip(&a[i * k..]) {
                        *d = s as u16;
                    }
                }
            }
        }
        Self {
            m,
            kp,
            data8,
            data16,
            row_sums,
        }
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
    n: usize,
    row_sums: &'a [i32],
    /// `a_zp · col_off[j]`.
    zc: &'a [i32],
    /// `b_zp[j]`, or `None` when every weight zero point is 0 (the row-sum term vanishes).
    b_zp: Option<&'a [i32]>,
    rq: Option<&'a RequantVec>,
    requant: Option<&'a Requant>,
    sink: Sink<'a>,
}

/// A requantization rule in the unified per-channel form
/// `q = clamp(RNE(f32(f32(f32(raw + add_i[j]) + add_f[j]) · mult[j])) + zp, lo, 255)`:
/// FBGEMM has `add_i = 0`, QNNPACK `add_f = 0` (adding +0.0 leaves the rounded value unchanged).
#[derive(Debug, Clone)]
pub(crate) struct RequantVec {
    add_i: Vec<i32>,
    add_f: Vec<f32>,
    mult: Vec<f32>,
    zp: i32,
    lo: i32,
}

impl RequantVec {
    fn new(r: &Requant, n: usize) -> Result<Self> {
        let zp = match r {
            Requant::Fbgemm(f) => f.out_zero_point,
            Requant::Qnnpack(q) => q.out_zero_point,
        };
        if !(0..=255).contains(&zp) {
            return Err(Error::invalid(
                "output zero point",
                format!("{zp} not in 0..=255"),
            ));
        }
        let bad = |what: &str, len: usize| {
            Error::shape(
                "requantization",
                format!("{what} has {len} entries for {n} output channels"),
            )
        };
        match r {
            Requant::Fbgemm(f) => {
                if f.bias_term.len() != n {
                    return Err(bad("bias_term", f.bias_term.len()));
                }
                let mult = match f.multiplier.len() {
                    1 => vec![f.multiplier[0]; n],
                    l if l == n => f.multiplier.clone(),
                    l => return Err(bad("multiplier", l)),
                };
                Ok(Self {
                    add_i: vec![0; n],
                    add_f: f.bias_term.clone(),
                    mult,
                    zp: f.out_zero_point,
                    lo: if f.relu { f.out_zero_point } else { 0 },
                })
            }
            Requant::Qnnpack(q) => {
                if q.scale.len() != n {
                    return Err(bad("scale", q.scale.len()));
                }
                if q.bias_q.len() != n {
                    return Err(bad("bias_q", q.bias_q.len()));
                }
                Ok(Self {
                    add_i: q.bias_q.clone(),
                    add_f: vec![0.0; n],
                    mult: q.scale.clone(),
                    zp: q.out_zero_point,
                    lo: if q.relu { q.out_zero_point } else { 0 },
                })
            }
        }
    }
}

impl Epilogue<'_> {
    /// Folds zero points into one accumulator.
    #[inline]
    fn raw(&self, acc: i32, i: usize, j: usize) -> i32 {
        let mut r = acc.wrapping_sub(self.zc[j]);
        if let Some(bz) = self.b_zp {
            r = r.wrapping_sub(self.row_sums[i].wrapping_mul(bz[j]));
        }
        r
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
            for c in 0..cols {
                let (i, j) = (i0 + r, j0 + c);
                let raw = self.raw(t[r * ld + c], i, j);
                match &mut self.sink {
                    Sink::Raw(o) => o[i * self.n + j] = raw,
                    Sink::U8(o) => {
                        o[i * self.n + j] = self.requant.expect("u8 sink has a rule").apply(raw, j)
                    }
                }
            }
        }
    }
}

/// Runs `c = a·bᵀ` on a packed B through the epilogue.
fn run_packed(b: &PackedB, a: &PackedA, epi: &mut Epilogue) {
    match b.kernel {
        KernelId::Avx2PairSat => {
            // SAFETY: a KernelId other than Portable exists only if its ISA was detected
            // (KernelId::new / best), and `b` was packed for this kernel's format.
            unsafe { avx2::gemm_pairsat(a, b, epi) }
        }
        KernelId::Avx2Exact => {
            // SAFETY: as above (AVX2 detected; Pair16 format).
            unsafe { avx2::gemm_exact(a, b, epi) }
        }
        KernelId::Avx512Vnni => {
            // SAFETY: as above (AVX-512 F/BW/VNNI and AVX2 detected; Quad8 format, NR = 32).
            unsafe { avx512vnni::gemm_vnni(a, b, epi) }
        }
        KernelId::Portable(acc) => {
            let k = b.k;
            let mut t = vec![0i32; b.n];
            for i in 0..a.m {
                for (j, tj) in t.iter_mut().enumerate() {
                    *tj = reference::dot(
                        acc,
                        &a.data8[i * k..(i + 1) * k],
                        &b.data8[j * k..(j + 1) * k],
                    );
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
/// use qparity::requant::FbgemmRequant;
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
    requant: Requant,
    rq: RequantVec,
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
            KernelId::best(accumulation),
            weights,
            n,
            k,
            weight_zero_points,
            requant,
        )
    }

    /// As [`PackedLinear::new`], for an explicit kernel (from [`KernelId::new`]).
    pub fn with_kernel(
        kernel: KernelId,
        weights: &[i8],
        n: usize,
        k: usize,
        weight_zero_points: &[i32],
        requant: Requant,
    ) -> Result<Self> {
        if n == 0 || k == 0 {
            return Err(Error::shape(
                "linear",
                format!("n = {n}, k = {k} must be ≥ 1"),
            ));
        }
        let b_zp = match weight_zero_points.len() {
            1 => vec![weight_zero_points[0]; n],
            l if l == n => weight_zero_points.to_vec(),
            l => {
                return Err(Error::shape(
                    "weight zero points",
                    format!("{l} given for {n} output channels (need 1 or {n})"),
                ))
            }
        };
        if let Some(z) = b_zp.iter().find(|z| !(-128..=127).contains(*z)) {
            return Err(Error::invalid(
                "weight zero point",
                format!("{z} not in -128..=127"),
            ));
        }
        let rq = RequantVec::new(&requant, n)?;
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
            requant,
            rq,
        })
    }

    /// The kernel in use.
    pub fn kernel(&self) -> KernelId {
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
        if !(0..=255).contains(&a_zp) {
            return Err(Error::invalid(
                "input zero point",
                format!("{a_zp} not in 0..=255"),
            ));
        }
        Ok(())
    }

    fn epilogue_run(&self, a: &[u8], m: usize, a_zp: i32, sink: Sink<'_>) {
        let pa = PackedA::new(self.packed.kernel, a, m, self.packed.k);
        self.run_packed_a(&pa, a_zp, sink);
    }

    /// Runs on already packed activations (`a_zp` validated by the caller).
    pub(crate) fn run_packed_a(&self, pa: &PackedA, a_zp: i32, sink: Sink<'_>) {
        let zc: Vec<i32> = self.col_off.iter().map(|&c| c.wrapping_mul(a_zp)).collect();
        let mut epi = Epilogue {
            n: self.packed.n,
            row_sums: &pa.row_sums,
            zc: &zc,
            b_zp: (!self.symmetric).then_some(&self.b_zp[..]),
            rq: Some(&self.rq),
            requant: Some(&self.requant),
            sink,
        };
        run_packed(&self.packed, pa, &mut epi);
    }

    /// Requantized output: `out[i][j]` = the rule applied to `Σ_k (a[i][k] − a_zp)(w[j][k] − w_zp[j])`
    /// (accumulated under the kernel's model). `a` is `m × k` row-major raw u8, `out` is `m × n`.
    pub fn run(&self, a: &[u8], m: usize, a_zp: i32, out: &mut [u8]) -> Result<()> {
        self.check(a, m, a_zp, out.len())?;
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

/// An [`Int8Gemm`] view of one x86 kernel (packs B on every call; for tests and the trait).
#[derive(Debug, Clone, Copy)]
pub struct X86Gemm {
    id: KernelId,
}

impl X86Gemm {
    /// `None` when this CPU lacks the kernel's ISA.
    pub fn new(id: KernelId) -> Option<Self> {
        KernelId::new(id).map(|id| Self { id })
    }

    /// The kernel.
    pub fn id(&self) -> KernelId {
        self.id
    }
}

impl Int8Gemm for X86Gemm {
    fn name(&self) -> &'static str {
        self.id.name()
    }

    fn accumulation(&self) -> Accumulation {
        self.id.accumulation()
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
        let packed = PackedB::new(self.id, b, n, k).expect("shapes checked above");
        let pa = PackedA::new(self.id, a, m, k);
        let zc = vec![0i32; n];
        let mut epi = Epilogue {
            n,
            row_sums: &pa.row_sums,
            zc: &zc,
            b_zp: None,
            rq: None,
            requant: None,
            sink: Sink::Raw(c),
        };
        run_packed(&packed, &pa, &mut epi);
    }
}

/// The x86 SIMD kernels this CPU supports, as [`Int8Gemm`]s.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    KernelId::all_supported()
        .into_iter()
        .filter_map(X86Gemm::new)
        .map(|g| Box::new(g) as Box<dyn Int8Gemm>)
        .collect()
}

/// The portable fallback used when no SIMD kernel fits (re-exported for symmetry).
pub fn portable(acc: Accumulation) -> Reference {
    Reference::new(acc)
}
