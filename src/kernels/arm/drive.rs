//! The driver shared by the ARM kernels: packing, tiling, zero-point corrections and the fused
//! requantization epilogue.

use core::arch::aarch64::*;

use super::{dot, mmla, neon, ArmKernel, QGemm, Requant, MR, NR};

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

/// Where a finished tile goes.
pub(super) enum Sink<'a> {
    /// Raw int32 accumulators, row-major with leading dimension `ldc`.
    I32 { c: &'a mut [i32], ldc: usize },
    /// Requantized bytes: element (i, j) goes to `out[base + i·rs + j·cs]`.
    U8 {
        out: &'a mut [u8],
        base: usize,
        rs: usize,
        cs: usize,
        epi: Epilogue,
    },
}

/// A requantization rule expanded into per-column vectors (padded to a multiple of NR) so that
/// the epilogue runs on whole NEON registers.
pub(super) struct Epilogue {
    /// QNNPACK adds the int32 bias before converting; FBGEMM adds an f32 bias after.
    qnnpack: bool,
    add_i: Vec<i32>,
    add_f: Vec<f32>,
    mul: Vec<f32>,
    zp: i32,
    lo: i32,
}

impl Epilogue {
    /// The rule for output channels `j0 .. j0 + n` (already validated to cover them).
    pub(super) fn new(rule: Requant<'_>, j0: usize, n: usize) -> Self {
        let len = n.div_ceil(NR) * NR;
        let mut add_i = vec![0i32; len];
        let mut add_f = vec![0f32; len];
        let mut mul = vec![0f32; len];
        let (qnnpack, zp, relu) = match rule {
            Requant::Qnnpack(q) => {
                add_i[..n].copy_from_slice(&q.bias_q[j0..j0 + n]);
                mul[..n].copy_from_slice(&q.scale[j0..j0 + n]);
                (true, q.out_zero_point, q.relu)
            }
            Requant::Fbgemm(f) => {
                for j in 0..n {
                    add_f[j] = f.bias_term[j0 + j];
                    mul[j] = f.multiplier[if f.multiplier.len() == 1 { 0 } else { j0 + j }];
                }
                (false, f.out_zero_point, f.relu)
            }
        };
        Self {
            qnnpack,
            add_i,
            add_f,
            mul,
            zp,
            lo: if relu { zp } else { 0 },
        }
    }

    /// Requantizes four accumulators of columns `j .. j + 4` to `clamp(q + zp, lo, 255)`.
    ///
    /// Bit-identical to `QnnpackRequant::apply` / `FbgemmRequant::apply`: the same f32 operations
    /// in the same order (no fused multiply-add), `fcvtns` (round half to even) for in-range
    /// values, and — unlike `fcvtns`, which saturates — `i32::MIN` for NaN and values outside
    /// the int32 range, which is what the x86 `cvtps2dq` modelled by the scalar rule returns.
    #[inline(always)]
    fn apply4(&self, acc: int32x4_t, j: usize) -> int32x4_t {
        debug_assert!(j + 4 <= self.mul.len());
        // SAFETY: `j + 4 <= len` of every vector (len is the padded column count and j is a
        // multiple of 4 below it); NEON is part of the aarch64 baseline.
        unsafe {
            let mul = vld1q_f32(self.mul.as_ptr().add(j));
            let f = if self.qnnpack {
                let bias = vld1q_s32(self.add_i.as_ptr().add(j));
                vmulq_f32(vcvtq_f32_s32(vaddq_s32(acc, bias)), mul)
            } else {
                let bias = vld1q_f32(self.add_f.as_ptr().add(j));
                vmulq_f32(vaddq_f32(vcvtq_f32_s32(acc), bias), mul)
            };
            let in_range = vandq_u32(
                vcgeq_f32(f, vdupq_n_f32(-2147483648.0)),
                vcltq_f32(f, vdupq_n_f32(2147483648.0)),
            );
            let q = vbslq_s32(in_range, vcvtnq_s32_f32(f), vdupq_n_s32(i32::MIN));
            // q + zp cannot wrap below (zp ≥ 0); saturating at i32::MAX clamps to 255 anyway.
            let v = vqaddq_s32(q, vdupq_n_s32(self.zp));
            vminq_s32(vmaxq_s32(v, vdupq_n_s32(self.lo)), vdupq_n_s32(255))
        }
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
                let v = match self {
                    Sink::I32 { .. } => tile[2 * r + h],
                    Sink::U8 { epi, .. } => epi.apply4(tile[2 * r + h], j0 + c0),
                };
                // SAFETY: `buf` holds exactly four i32.
                unsafe { vst1q_s32(buf.as_mut_ptr(), v) };
                let i = i0 + r;
                match self {
                    Sink::I32 { c, ldc } => {
                        let at = i * *ldc + j0 + c0;
                        c[at..at + w].copy_from_slice(&buf[..w]);
                    }
                    Sink::U8 {
                        out, base, rs, cs, ..
                    } => {
                        for (t, &x) in buf[..w].iter().enumerate() {
                            out[*base + i * *rs + (j0 + c0 + t) * *cs] = x as u8;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `kernel` on `p` (validated by the caller) and stores into `sink`.
///
/// Panics if the CPU lacks the kernel's feature (callers check first and return an error).
pub(super) fn run(kernel: ArmKernel, p: &QGemm<'_>, sink: Sink<'_>) {
    assert!(
        kernel.supported(),
        "{} is not supported here",
        kernel.name()
    );
    match kernel {
        ArmKernel::Neon => run_with::<neon::Neon>(p, sink),
        ArmKernel::DotprodSdot => run_with::<dot::Sdot>(p, sink),
        ArmKernel::I8mmSudot => run_with::<dot::Sudot>(p, sink),
        ArmKernel::I8mmUsmmla => run_with::<mmla::Usmmla>(p, sink),
    }
}

fn run_with<M: Micro>(p: &QGemm<'_>, mut sink: Sink<'_>) {
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
        let zb = p.b_zp(j);
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
            // SAFETY: `run` asserted the CPU feature; `pa` has kp·MR bytes and the panel slice
            // kp·NR elements, both laid out by the kernel's own offset functions.
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
