//! The driver shared by the ARM kernels: packing, tiling, zero-point corrections and the fused
//! requantization epilogue. Micro-kernels implement [`Micro`]; the driver does not know them
//! (the parent module picks one per kernel).

use core::arch::aarch64::*;

use super::{MR, NR};
use crate::kernels::quant::{PerChannel, QGemm};

/// What a micro-kernel needs from the driver.
pub(super) trait Micro {
    /// K is zero-padded to a multiple of this.
    const KB: usize;
    /// Element type of packed B.
    type B: Copy + Default;
    /// True when the micro-kernel subtracts both zero points itself (NEON): no corrections.
    const ZP_IN_KERNEL: bool;
    /// The micro-kernel computes `Σ (a − A_BIAS)·b`; `A_BIAS·Σb` is added back per column.
    const A_BIAS: i32;
    /// Packed B value of weight `b` in a column with zero point `zb`.
    fn pack_b(b: i8, zb: i32) -> Self::B;
    /// Packed A byte of activation `a`.
    fn pack_a(a: u8) -> u8;
    /// Offset of (k index `kk`, column `c` < NR) inside one B panel.
    fn b_offset(kk: usize, c: usize) -> usize;
    /// Offset of (k index `kk`, row `r` < MR) inside one A panel.
    fn a_offset(kk: usize, r: usize) -> usize;
    /// Computes one MR×NR tile; `tile[2r + h]` holds row `r`, columns `4h .. 4h + 4`.
    ///
    /// # Safety
    /// The CPU must have the kernel's feature; `a` must point to `kblocks·KB·MR` readable bytes
    /// and `b` to `kblocks·KB·NR` readable elements, laid out by `a_offset` / `b_offset`.
    unsafe fn tile(a: *const u8, b: *const Self::B, kblocks: usize, za: u8) -> [int32x4_t; 8];
}

/// Where a finished tile goes: element (i, j) to `base + i·rs + j·cs` of the buffer.
pub(super) struct Sink<'a> {
    base: usize,
    rs: usize,
    cs: usize,
    buf: Buf<'a>,
}

enum Buf<'a> {
    /// Raw int32 accumulators.
    I32(&'a mut [i32]),
    /// Requantized bytes, by the rule expanded to whole NEON registers (padded to NR columns).
    U8(&'a mut [u8], PerChannel),
}

impl<'a> Sink<'a> {
    pub(super) fn raw(c: &'a mut [i32], base: usize, rs: usize, cs: usize) -> Self {
        Sink {
            base,
            rs,
            cs,
            buf: Buf::I32(c),
        }
    }

    /// `epi` must cover the GEMM's columns padded to a multiple of NR.
    pub(super) fn requantized(
        out: &'a mut [u8],
        base: usize,
        rs: usize,
        cs: usize,
        epi: PerChannel,
    ) -> Self {
        Sink {
            base,
            rs,
            cs,
            buf: Buf::U8(out, epi),
        }
    }
}

/// Requantizes four accumulators of columns `j .. j + 4` with the per-channel form
/// `clamp(RNE(f32(fma(add_f, add_s, f32(acc + add_i)) · mult)) + zp, lo, 255)`.
///
/// Bit-identical to `QnnpackRequant::apply` / `FbgemmRequant::apply`: the same f32 operations
/// in the same order (the bias by one fused multiply-add, the multiplier not fused), `fcvtns` (round half to even) for in-range
/// values, and — unlike `fcvtns`, which saturates — `i32::MIN` for NaN and values outside
/// the int32 range, which is what the x86 `cvtps2dq` modelled by the scalar rule returns.
#[inline(always)]
fn apply4(epi: &PerChannel, acc: int32x4_t, j: usize) -> int32x4_t {
    assert!(j + 4 <= epi.mult.len());
    // SAFETY: `j + 4 <= len` of every vector (asserted; all four have the same length); NEON is
    // part of the aarch64 baseline.
    unsafe {
        let mul = vld1q_f32(epi.mult.as_ptr().add(j));
        let add_i = vld1q_s32(epi.add_i.as_ptr().add(j));
        let add_f = vld1q_f32(epi.add_f.as_ptr().add(j));
        let add_s = vld1q_f32(epi.add_s.as_ptr().add(j));
        // vfmaq_f32(a, b, c) = a + b·c, rounded once.
        let f = vmulq_f32(
            vfmaq_f32(vcvtq_f32_s32(vaddq_s32(acc, add_i)), add_f, add_s),
            mul,
        );
        let in_range = vandq_u32(
            vcgeq_f32(f, vdupq_n_f32(-2147483648.0)),
            vcltq_f32(f, vdupq_n_f32(2147483648.0)),
        );
        let q = vbslq_s32(in_range, vcvtnq_s32_f32(f), vdupq_n_s32(i32::MIN));
        // q + zp cannot wrap below (zp ≥ 0); saturating at i32::MAX clamps to 255 anyway.
        let v = vqaddq_s32(q, vdupq_n_s32(epi.zp));
        vminq_s32(vmaxq_s32(v, vdupq_n_s32(epi.lo)), vdupq_n_s32(255))
    }
}

impl Sink<'_> {
    /// Stores the valid `rows × cols` corner of a finished tile whose top-left is (i0, j0).
    #[inline(always)]
    fn store(&mut self, tile: &[int32x4_t; 8], i0: usize, j0: usize, rows: usize, cols: usize) {
        let mut buf = [0i32; 4];
        for r in 0..rows {
            for h in 0..2 {
                let c0 = h * 4;
                if c0 >= cols {
                    break;
                }
                let w = (cols - c0).min(4);
                let v = match &self.buf {
                    Buf::I32(_) => tile[2 * r + h],
                    Buf::U8(_, epi) => apply4(epi, tile[2 * r + h], j0 + c0),
                };
                // SAFETY: `buf` holds exactly four i32.
                unsafe { vst1q_s32(buf.as_mut_ptr(), v) };
                let at = self.base + (i0 + r) * self.rs + (j0 + c0) * self.cs;
                match &mut self.buf {
                    Buf::I32(c) => {
                        for (t, &x) in buf[..w].iter().enumerate() {
                            c[at + t * self.cs] = x;
                        }
                    }
                    Buf::U8(out, _) => {
                        for (t, &x) in buf[..w].iter().enumerate() {
                            out[at + t * self.cs] = x as u8;
                        }
                    }
                }
            }
        }
    }
}

/// Runs micro-kernel `M` on `p` (validated by the caller; `zbs` = the weight zero point of every
/// column) and stores into `sink`.
///
/// # Safety
/// The CPU must have `M`'s extension (callers hold a [`super::Kernel`] of it).
pub(super) unsafe fn run<M: Micro>(p: &QGemm<'_>, zbs: &[i32], mut sink: Sink<'_>) {
    let (m, n, k) = (p.m, p.n, p.k);
    if m == 0 || n == 0 {
        return;
    }
    let za = p.a_zero_point;
    let kp = k.div_ceil(M::KB) * M::KB;
    let panels = n.div_ceil(NR);

    // B panels, plus per-column corrections: col[j] is added to every accumulator of column j
    // and zb[j]·rowsum(a_i) is subtracted (both only when the micro-kernel ignores zero points).
    let mut pb = vec![M::B::default(); panels * kp * NR];
    let mut col = vec![0i32; panels * NR];
    let mut zbv = vec![0i32; panels * NR];
    for j in 0..n {
        let zb = zbs[j];
        let panel = &mut pb[(j / NR) * kp * NR..][..kp * NR];
        let mut colsum = 0i32;
        for (kk, &v) in p.b[j * k..(j + 1) * k].iter().enumerate() {
            panel[M::b_offset(kk, j % NR)] = M::pack_b(v, zb);
            colsum = colsum.wrapping_add(v as i32);
        }
        if !M::ZP_IN_KERNEL {
            col[j] = (M::A_BIAS.wrapping_sub(za))
                .wrapping_mul(colsum)
                .wrapping_add((k as i32).wrapping_mul(za).wrapping_mul(zb));
            zbv[j] = zb;
        }
    }

    let mut pa = vec![0u8; kp * MR];
    for i0 in (0..m).step_by(MR) {
        let rows = (m - i0).min(MR);
        pa.fill(0);
        let mut rowsum = [0i32; MR];
        for (r, sum) in rowsum.iter_mut().enumerate().take(rows) {
            for (kk, &v) in p.a[(i0 + r) * k..(i0 + r + 1) * k].iter().enumerate() {
                pa[M::a_offset(kk, r)] = M::pack_a(v);
                *sum = sum.wrapping_add(v as i32);
            }
        }
        for pj in 0..panels {
            let j0 = pj * NR;
            // SAFETY: the caller guarantees the CPU feature; `pa` has kp·MR bytes and the panel
            // slice kp·NR elements, both laid out by the kernel's own offset functions.
            let mut tile = unsafe {
                M::tile(
                    pa.as_ptr(),
                    pb[j0 * kp..][..kp * NR].as_ptr(),
                    kp / M::KB,
                    za as u8,
                )
            };
            if !M::ZP_IN_KERNEL {
                // SAFETY: `col` and `zbv` have panels·NR entries and j0 + 8 <= panels·NR.
                unsafe {
                    let c = [
                        vld1q_s32(col.as_ptr().add(j0)),
                        vld1q_s32(col.as_ptr().add(j0 + 4)),
                    ];
                    let z = [
                        vld1q_s32(zbv.as_ptr().add(j0)),
                        vld1q_s32(zbv.as_ptr().add(j0 + 4)),
                    ];
                    for r in 0..MR {
                        let s = vdupq_n_s32(rowsum[r]);
                        for h in 0..2 {
                            let t = vaddq_s32(tile[2 * r + h], c[h]);
                            tile[2 * r + h] = vmlsq_s32(t, z[h], s);
                        }
                    }
                }
            }
            sink.store(&tile, i0, j0, rows, (n - j0).min(NR));
        }
    }
}
