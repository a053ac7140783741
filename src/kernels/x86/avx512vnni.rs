//! AVX-512 VNNI kernel: `vpdpbusd` (u8×i8 quads summed exactly into int32), FBGEMM's VNNI path.

use super::avx2::{epilogue_tile, mc_for};
use super::{Epilogue, PackedA, PackedB};
use std::arch::x86_64::*;

/// Output channels per weight panel (two zmm vectors of 16 int32 lanes).
pub(super) const NR: usize = 32;
/// Rows per micro-kernel tile.
const MR: usize = 6;
const NV: usize = NR / 16;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const R: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    tile: &mut [i32; MR * NR],
) {
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    for g in 0..kg {
        // SAFETY: the caller guarantees `b` holds `kg` groups of NR×4 bytes and each of the R
        // rows of `a` holds `4·kg` bytes.
        let bp = unsafe { b.add(g * NR * 4) };
        let mut bv = [_mm512_setzero_si512(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: in bounds as above; unaligned load.
            *x = unsafe { _mm512_loadu_si512(bp.add(v * 64) as *const _) };
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds as above.
            let q = unsafe { (a.add(r * lda + g * 4) as *const i32).read_unaligned() };
            let av = _mm512_set1_epi32(q);
            for v in 0..NV {
                accr[v] = _mm512_dpbusd_epi32(accr[v], av, bv[v]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (v, x) in accr.iter().enumerate() {
            // SAFETY: r < R ≤ MR and v < NV: inside the MR×NR tile.
            unsafe { _mm512_storeu_si512(tile.as_mut_ptr().add(r * NR + v * 16) as *mut _, *x) };
        }
    }
}

/// Exact GEMM over a Quad8 (NR = 32) panel matrix.
///
/// # Safety
/// AVX-512 F/BW/VNNI and AVX2 must be available; `b` packed as Quad8 with NR = 32.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn gemm_vnni(a: &PackedA, b: &PackedB, epi: &mut Epilogue) {
    let (m, kp) = (a.m, a.kp);
    debug_assert_eq!(kp, b.kp);
    let kg = kp / 4;
    let panels = b.n.div_ceil(NR);
    let mc = mc_for(kp, MR);
    let mut tile = [0i32; MR * NR];
    for ic in (0..m).step_by(mc) {
        let iend = (ic + mc).min(m);
        for p in 0..panels {
            let bp = b.data8[p * NR * kp..(p + 1) * NR * kp].as_ptr();
            let mut i = ic;
            while i < iend {
                let rows = (iend - i).min(MR);
                let ap = a.data8[i * kp..(i + rows) * kp].as_ptr();
                // SAFETY: `ap` covers `rows` rows of kp = 4·kg bytes; `bp` one full panel; the
                // features of `micro` and `epilogue_tile` are enabled here.
                unsafe {
                    match rows {
                        6 => micro::<6>(kg, ap, kp, bp, &mut tile),
                        5 => micro::<5>(kg, ap, kp, bp, &mut tile),
                        4 => micro::<4>(kg, ap, kp, bp, &mut tile),
                        3 => micro::<3>(kg, ap, kp, bp, &mut tile),
                        2 => micro::<2>(kg, ap, kp, bp, &mut tile),
                        _ => micro::<1>(kg, ap, kp, bp, &mut tile),
                    }
                    epilogue_tile(epi, i, p * NR, rows, &tile, NR);
                }
                i += rows;
            }
        }
    }
}
