//! AVX-512 VNNI kernel: `vpdpbusd` (u8×i8 quads summed exactly into int32), FBGEMM's VNNI path.

use super::avx2::epilogue_tile;
use super::{drive, AOperand, Epilogue, PackedB};
use std::arch::x86_64::*;

/// Output channels per weight panel (two zmm vectors of 16 int32 lanes).
pub(super) const NR: usize = 32;
/// Rows per micro-kernel tile.
const MR: usize = 6;
const NV: usize = NR / 16;

/// `tile[r][c] = Σ` of the exact quad dot products over the 4-byte steps of row `r` of A
/// (`a[r] + seg + 4·g`, see `AOperand`) against one Quad8 panel.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const R: usize>(
    a: &[*const u8; MR],
    segs: &[usize],
    steps: usize,
    b: *const i8,
    tile: &mut [i32; MR * NR],
) {
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    let mut bp = b;
    for &seg in segs {
        // SAFETY (all reads below): the caller guarantees that each of the R rows has `steps`
        // readable 4-byte steps at `a[r] + seg` for every segment, and that `b` holds
        // `segs.len() · steps` steps of NR×4 bytes.
        let ar: [*const u8; R] = std::array::from_fn(|r| unsafe { a[r].add(seg) });
        for g in 0..steps {
            let bv: [__m512i; NV] =
                std::array::from_fn(|v| unsafe { _mm512_loadu_si512(bp.add(v * 64) as *const _) });
            bp = unsafe { bp.add(NR * 4) };
            for (r, accr) in acc.iter_mut().enumerate() {
                let q = unsafe { (ar[r].add(g * 4) as *const i32).read_unaligned() };
                let av = _mm512_set1_epi32(q);
                for v in 0..NV {
                    accr[v] = _mm512_dpbusd_epi32(accr[v], av, bv[v]);
                }
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

type Micro = unsafe fn(&[*const u8; MR], &[usize], usize, *const i8, &mut [i32; MR * NR]);

/// Exact GEMM over a Quad8 (NR = 32) panel matrix.
///
/// # Safety
/// AVX-512 F/BW/VNNI and AVX2 must be available; `b` packed as Quad8 with NR = 32 and at least
/// `a.k_steps()` steps per panel; `a` checked by `AOperand::new`.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn gemm_vnni(a: &AOperand, b: &PackedB, epi: &mut Epilogue) {
    let micro: [Micro; MR] = [
        micro::<6>, micro::<5>, micro::<4>, micro::<3>, micro::<2>, micro::<1>,
    ];
    let mut tile = [0i32; MR * NR];
    drive::<MR>(a, b.n, NR, |ptrs, rows, i, p| {
        let bp = b.panel8(p, NR).as_ptr();
        // SAFETY: `ptrs` are row starts inside `a` (AOperand checked every read), `bp` is a full
        // panel of at least `a.k_steps()` steps, the features are enabled (caller).
        unsafe {
            micro[MR - rows](ptrs, a.segs, a.steps, bp, &mut tile);
            epilogue_tile(epi, i, p * NR, rows, &tile, NR);
        }
    });
}
