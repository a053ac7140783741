//! AVX2 kernels: FBGEMM's non-VNNI `vpmaddubsw` path (pair-saturating) and an exact i16 kernel,
//! plus the vectorized requantization epilogue shared with the AVX-512 kernel.

use super::{drive, AOperand, Epilogue, PackedB, Sink};
use std::arch::x86_64::*;

/// Output channels per weight panel (two ymm vectors of 8 int32 lanes).
pub(super) const NR: usize = 16;
/// Rows per micro-kernel tile.
const MR: usize = 4;
const NV: usize = NR / 8;

/// Micro-kernel: `tile[r][c]` = the sum over the 4-byte steps of row `r` of A (`a[r] + seg + 4·g`,
/// see `AOperand`) against one weight panel. `SAT`: Quad8 panel, u8 quads, each step's two pairs
/// saturated to int16 by `vpmaddubsw` and added by `vpmaddwd(·, 1)` (FBGEMM's non-VNNI path);
/// otherwise Pair16 panel, u16 pairs, exact `vpmaddwd` (u8·i8 products fit the i16 operands and
/// their pair sum, at most 2·255·128, fits i32).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro<const R: usize, const SAT: bool>(
    a: &[*const u8; MR],
    segs: &[usize],
    steps: usize,
    b: *const i8,
    tile: &mut [i32; MR * NR],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); NV]; R];
    let mut bp = b;
    for &seg in segs {
        // SAFETY (all reads below): the caller guarantees that each of the R rows has `steps`
        // readable 4-byte steps at `a[r] + seg` for every segment, and that `b` holds
        // `segs.len() · steps` steps of NR×4 bytes.
        let ar: [*const u8; R] = std::array::from_fn(|r| unsafe { a[r].add(seg) });
        for g in 0..steps {
            let bv: [__m256i; NV] = std::array::from_fn(|v| unsafe {
                _mm256_loadu_si256(bp.add(v * 32) as *const __m256i)
            });
            bp = unsafe { bp.add(NR * 4) };
            for (r, accr) in acc.iter_mut().enumerate() {
                let q = unsafe { (ar[r].add(g * 4) as *const i32).read_unaligned() };
                let av = _mm256_set1_epi32(q);
                for v in 0..NV {
                    let s = if SAT {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(av, bv[v]), ones)
                    } else {
                        _mm256_madd_epi16(av, bv[v])
                    };
                    accr[v] = _mm256_add_epi32(accr[v], s);
                }
            }
        }
    }
    store_tile(&acc, tile);
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn store_tile<const R: usize>(acc: &[[__m256i; NV]; R], tile: &mut [i32; MR * NR]) {
    for (r, accr) in acc.iter().enumerate() {
        for (v, x) in accr.iter().enumerate() {
            // SAFETY: r < R ≤ MR and v < NV, inside the MR×NR tile.
            unsafe {
                _mm256_storeu_si256(tile.as_mut_ptr().add(r * NR + v * 8) as *mut __m256i, *x)
            };
        }
    }
}

type Micro = unsafe fn(&[*const u8; MR], &[usize], usize, *const i8, &mut [i32; MR * NR]);

/// GEMM through one micro-kernel family (`R` = 4, 3, 2, 1 rows), panel by panel.
///
/// # Safety
/// AVX2 must be available; `b` must be packed in the micro-kernel's format with NR = 16, its
/// panels must hold at least `a.k_steps()` steps, and `a` must have been checked by
/// `AOperand::new`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_with(a: &AOperand, b: &PackedB, epi: &mut Epilogue, micro: [Micro; MR], wide: bool) {
    let mut tile = [0i32; MR * NR];
    drive::<MR>(a, b.n, NR, |ptrs, rows, i, p| {
        let bp = if wide {
            b.panel16(p, NR).as_ptr() as *const i8
        } else {
            b.panel8(p, NR).as_ptr()
        };
        // SAFETY: `ptrs` are row starts inside `a` (AOperand checked every read), `bp` is a full
        // panel of at least `a.k_steps()` steps (caller), AVX2 is enabled (caller).
        unsafe {
            micro[MR - rows](ptrs, a.segs, a.steps, bp, &mut tile);
            epilogue_tile(epi, i, p * NR, rows, &tile, NR);
        }
    });
}

/// Pair-saturating GEMM over a Quad8 (NR = 16) panel matrix.
///
/// # Safety
/// AVX2 must be available; `b` packed as Quad8 with NR = 16 and at least `a.k_steps()` steps.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_pairsat(a: &AOperand, b: &PackedB, epi: &mut Epilogue) {
    let micro: [Micro; MR] = [
        micro::<4, true>,
        micro::<3, true>,
        micro::<2, true>,
        micro::<1, true>,
    ];
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(a, b, epi, micro, false) }
}

/// Exact GEMM over a Pair16 (NR = 16) panel matrix.
///
/// # Safety
/// AVX2 must be available; `b` packed as Pair16 with NR = 16 and at least `a.k_steps()` steps.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_exact(a: &AOperand, b: &PackedB, epi: &mut Epilogue) {
    let micro: [Micro; MR] = [
        micro::<4, false>,
        micro::<3, false>,
        micro::<2, false>,
        micro::<1, false>,
    ];
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(a, b, epi, micro, true) }
}

/// Requantizes 8 folded accumulators (unified rule, see `RequantVec`) into 8 u8 stored at `dst`.
///
/// FBGEMM `requantizeOutputProcessingAvx2`: `cvtepi32_ps`, the bias by one FMA
/// (`add_f · add_s + x`; as compiled, FBGEMM's `mul_ps(bias, rcp)` + `add_ps` is contracted), mul
/// by the multiplier (not fused), `cvtps_epi32` (RNE), `packs_epi32`, `adds_epi16(zp)`,
/// `packus_epi16`, `max_epu8(lo)`.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn requant8(
    raw: __m256i,
    add_i: __m256i,
    add_f: __m256,
    add_s: __m256,
    mult: __m256,
    zp: __m256i,
    lo: __m256i,
    dst: *mut u8,
) {
    let x = _mm256_add_epi32(raw, add_i);
    let f = _mm256_mul_ps(_mm256_fmadd_ps(add_f, add_s, _mm256_cvtepi32_ps(x)), mult);
    let q = _mm256_cvtps_epi32(f);
    let w = _mm256_adds_epi16(_mm256_packs_epi32(q, q), zp);
    let b = _mm256_max_epu8(_mm256_packus_epi16(w, w), lo);
    // Lane 0 holds outputs 0..4 in bytes 0..4, lane 1 outputs 4..8 in bytes 16..20.
    let v = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
    // SAFETY: the caller guarantees 8 writable bytes at `dst`.
    unsafe { _mm_storel_epi64(dst as *mut __m128i, _mm256_castsi256_si128(v)) };
}

/// Vectorized epilogue for a `rows × ld` tile at `(i0, j0)`: full 8-column groups in SIMD,
/// the rest (columns past the last full group) with the scalar rule.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn epilogue_tile(
    epi: &mut Epilogue,
    i0: usize,
    j0: usize,
    rows: usize,
    t: &[i32],
    ld: usize,
) {
    let n = epi.n;
    let cols = ld.min(n - j0);
    let vec_cols = cols / 8 * 8;
    if vec_cols > 0 {
        for r in 0..rows {
            let i = i0 + r;
            let rs = _mm256_set1_epi32(epi.row_sum(i));
            for c in (0..vec_cols).step_by(8) {
                let j = j0 + c;
                // SAFETY: c + 8 ≤ cols ≤ ld, so the tile read is in bounds; j + 8 ≤ n for the
                // per-channel vectors (each of length n) and for the output row.
                unsafe {
                    let mut raw = _mm256_loadu_si256(t.as_ptr().add(r * ld + c) as *const __m256i);
                    raw = _mm256_sub_epi32(
                        raw,
                        _mm256_loadu_si256(epi.zc.as_ptr().add(j) as *const __m256i),
                    );
                    if let Some(bz) = epi.b_zp {
                        let bzv = _mm256_loadu_si256(bz.as_ptr().add(j) as *const __m256i);
                        raw = _mm256_sub_epi32(raw, _mm256_mullo_epi32(rs, bzv));
                    }
                    match &mut epi.sink {
                        Sink::Raw(o) => {
                            let at = epi.out_off + i * epi.out_ld + j;
                            assert!(at + 8 <= o.len());
                            _mm256_storeu_si256(o.as_mut_ptr().add(at) as *mut __m256i, raw)
                        }
                        Sink::U8(o) => {
                            let rq = epi.rq.expect("u8 sink has a rule");
                            requant8(
                                raw,
                                _mm256_loadu_si256(rq.add_i.as_ptr().add(j) as *const __m256i),
                                _mm256_loadu_ps(rq.add_f.as_ptr().add(j)),
                                _mm256_loadu_ps(rq.add_s.as_ptr().add(j)),
                                _mm256_loadu_ps(rq.mult.as_ptr().add(j)),
                                _mm256_set1_epi16(rq.zp as i16),
                                _mm256_set1_epi8(rq.lo as u8 as i8),
                                {
                                    let at = epi.out_off + i * epi.out_ld + j;
                                    assert!(at + 8 <= o.len());
                                    o.as_mut_ptr().add(at)
                                },
                            )
                        }
                    }
                }
            }
        }
    }
    if vec_cols < cols {
        let sub = &t[vec_cols..];
        epi.tile_scalar(i0, j0 + vec_cols, rows, cols - vec_cols, sub, ld);
    }
}

/// Per-channel constants of the depthwise epilogue.
pub(super) struct DwChannel {
    pub w: [i8; 9],
    pub b_zp: i32,
    /// `a_zp · col_off[c]`.
    pub zc: i32,
    pub add_i: i32,
    pub add_f: f32,
    pub add_s: f32,
    pub mult: f32,
    pub zp: i32,
    pub lo: i32,
}

/// Interleaves four 32-pixel tap vectors into four vectors of `[t0,t1,t2,t3]` byte quads; the
/// pixel order is (0..4|16..20), (4..8|20..24), (8..12|24..28), (12..16|28..32).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn interleave4(t0: __m256i, t1: __m256i, t2: __m256i, t3: __m256i) -> [__m256i; 4] {
    let lo01 = _mm256_unpacklo_epi8(t0, t1);
    let hi01 = _mm256_unpackhi_epi8(t0, t1);
    let lo23 = _mm256_unpacklo_epi8(t2, t3);
    let hi23 = _mm256_unpackhi_epi8(t2, t3);
    [
        _mm256_unpacklo_epi16(lo01, lo23),
        _mm256_unpackhi_epi16(lo01, lo23),
        _mm256_unpacklo_epi16(hi01, hi23),
        _mm256_unpackhi_epi16(hi01, hi23),
    ]
}

/// Depthwise 3×3, stride 1, one channel, FBGEMM's accumulation (`GenerateI8Depthwise.cc`): taps in
/// row-major order, pairs (0,1),(2,3),(4,5),(6,7),(8,0) each saturated to int16 by `vpmaddubsw`,
/// summed in int32; then zero-point folding and the unified requantization.
///
/// `plane` is the zero-point-padded input channel with row stride `ps ≥ ow + 34` and at least
/// `oh + 2` rows; `out` has `oh` rows of `ow` bytes.
///
/// # Safety
/// AVX2 must be available and the buffer sizes above must hold.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dw3x3_plane(
    plane: &[u8],
    ps: usize,
    oh: usize,
    ow: usize,
    ch: &DwChannel,
    out: &mut [u8],
) {
    assert!(ps >= ow + 34 && plane.len() >= (oh + 2) * ps && out.len() == oh * ow);
    let quad = |t: &[i8]| i32::from_le_bytes([t[0] as u8, t[1] as u8, t[2] as u8, t[3] as u8]);
    let w0123 = _mm256_set1_epi32(quad(&ch.w[0..4]));
    let w4567 = _mm256_set1_epi32(quad(&ch.w[4..8]));
    let w8 = _mm256_set1_epi32(ch.w[8] as i16 as u16 as i32);
    let ones16 = _mm256_set1_epi16(1);
    let ones8 = _mm256_set1_epi8(1);
    let zero = _mm256_setzero_si256();
    let zc = _mm256_set1_epi32(ch.zc);
    let bzp = _mm256_set1_epi32(ch.b_zp);
    let add_i = _mm256_set1_epi32(ch.add_i);
    let add_f = _mm256_set1_ps(ch.add_f);
    let add_s = _mm256_set1_ps(ch.add_s);
    let mult = _mm256_set1_ps(ch.mult);
    let zpv = _mm256_set1_epi16(ch.zp as i16);
    let lov = _mm256_set1_epi8(ch.lo as u8 as i8);
    let mut tmp = [0u8; 32];
    for oy in 0..oh {
        let base = plane[oy * ps..].as_ptr();
        let mut x = 0;
        while x < ow {
            // SAFETY: rows oy..oy+3 exist and x + 2 + 32 ≤ ow + 33 < ps (asserted above).
            let t = |ky: usize, kx: usize| unsafe {
                _mm256_loadu_si256(base.add(ky * ps + x + kx) as *const __m256i)
            };
            let g0 = interleave4(t(0, 0), t(0, 1), t(0, 2), t(1, 0));
            let g1 = interleave4(t(1, 1), t(1, 2), t(2, 0), t(2, 1));
            let t8 = t(2, 2);
            let l8 = _mm256_unpacklo_epi8(t8, zero);
            let h8 = _mm256_unpackhi_epi8(t8, zero);
            let g2 = [
                _mm256_unpacklo_epi16(l8, zero),
                _mm256_unpackhi_epi16(l8, zero),
                _mm256_unpacklo_epi16(h8, zero),
                _mm256_unpackhi_epi16(h8, zero),
            ];
            let mut q = [zero; 4];
            for v in 0..4 {
                let a0 = _mm256_madd_epi16(_mm256_maddubs_epi16(g0[v], w0123), ones16);
                let a1 = _mm256_madd_epi16(_mm256_maddubs_epi16(g1[v], w4567), ones16);
                let a2 = _mm256_madd_epi16(g2[v], w8);
                let mut raw = _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), a2), zc);
                if ch.b_zp != 0 {
                    let s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(g0[v], ones8), ones16);
                    let s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(g1[v], ones8), ones16);
                    let rs = _mm256_add_epi32(_mm256_add_epi32(s0, s1), g2[v]);
                    raw = _mm256_sub_epi32(raw, _mm256_mullo_epi32(rs, bzp));
                }
                let f = _mm256_mul_ps(
                    _mm256_fmadd_ps(
                        add_f,
                        add_s,
                        _mm256_cvtepi32_ps(_mm256_add_epi32(raw, add_i)),
                    ),
                    mult,
                );
                q[v] = _mm256_cvtps_epi32(f);
            }
            let s01 = _mm256_adds_epi16(_mm256_packs_epi32(q[0], q[1]), zpv);
            let s23 = _mm256_adds_epi16(_mm256_packs_epi32(q[2], q[3]), zpv);
            let b = _mm256_max_epu8(_mm256_packus_epi16(s01, s23), lov);
            // A store past the row's end spills into the next row, which is written after this
            // one; only the last row keeps its tail inside.
            let dst = &mut out[oy * ow + x..];
            if dst.len() >= 32 {
                // SAFETY: 32 writable bytes at dst.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, b) };
            } else {
                // SAFETY: tmp has 32 bytes.
                unsafe { _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, b) };
                let l = dst.len();
                dst.copy_from_slice(&tmp[..l]);
            }
            x += 32;
        }
    }
}
