//! AMX int8 kernel: `tdpbusd` (Intel SDM / ISA Extensions Reference, "TDPBUSD": u8×i8 quads
//! summed exactly into int32 tiles, like `vpdpbusd`), the int8 path oneDNN takes on CPUs with
//! `amx_int8` (`brgemm` with `avx512_core_amx`).
//!
//! # Operands
//! * **B** is the `Tile` format: Quad8 with `NR = 32` (`panel[g][c][0..4] = B[c][4g .. 4g+4]`),
//!   `K` padded with zeros to a multiple of 64. Rows `16s .. 16s+16` of a panel's k-groups, 64
//!   bytes of columns `0..16` or `16..32` each, are one B tile of K step `s` (row stride 128 bytes):
//!   exactly the "VNNI-packed" B that `tdpbusd` multiplies.
//! * **A** tiles are 16 rows × 64 bytes. Rows that are equally spaced (a dense operand, a 1×1
//!   stride-1 conv's image, the pixels of one output row, or a conv computed over a virtual
//!   output width, see `conv`) are read in place with their own stride, when the 64-byte steps
//!   stay inside the buffer; otherwise `MC` rows at a time are gathered from the `AOperand`
//!   segments into a reused buffer in tile order (step `s` of a 16-row tile is the contiguous
//!   KiB at `s · 1024`, measured faster than rows `kp` bytes apart when A and B both come from
//!   L2, e.g. resnet50's stride-2 convs). Bytes past a row's `K` (the
//!   next row, or stale buffer contents) meet the zero padding of B, so they add nothing.
//!
//! Each 32 × 32 block of C is four accumulator tiles (`tmm0..3`) fed per K step by two A tiles
//! (`tmm4, tmm5`) and two B tiles (`tmm6, tmm7`); the block is stored to one of two buffers and
//! its AVX-512 epilogue runs interleaved with the next block's K steps. Rows past `m` in the last
//! block are computed on stale rows and dropped; columns past `n` are the zero padding of the
//! last panel. Fewer than 16 rows (batch-1 linear layers) run the VNNI kernel on the same packed
//! B (Tile is Quad8 with deeper padding).

use super::{AOperand, Epilogue, PackedB, RowMap, Sink};
use crate::kernels::quant::PerChannel;
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Output channels per weight panel (two B tiles of 16 int32 columns).
pub(super) const NR: usize = 32;
/// Bytes of K per tile step (64 bytes = 16 quads, the most a tile row holds).
pub(super) const KB: usize = 64;
/// Rows per C block (two A tiles).
const MB: usize = 32;
/// Row stride of a B tile in a panel: one k-group of `NR` columns.
const LDB: usize = NR * 4;

/// Whether this CPU has AMX-TILE and AMX-INT8 (CPUID.(EAX=7,ECX=0):EDX bits 24 and 25),
/// AVX-512 F/BW/VL (the epilogue), AVX2 and FMA, and the OS granted this process the tile data state (Linux
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`). Probed and requested once.
pub(crate) fn detected() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        if __cpuid(0).eax < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let cpu = (edx >> 24) & 1 == 1 && (edx >> 25) & 1 == 1;
        cpu && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && request_tile_permission()
    })
}

/// Linux: asks for permission to use the AMX tile data state (`XFEATURE_XTILEDATA` = 18, see the
/// kernel's `Documentation/arch/x86/xstate.rst`); without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with ARCH_REQ_XCOMP_PERM only extends the process's
    // permitted XSAVE features; it takes no pointers. `syscall` clobbers rcx and r11 (declared).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// The 64-byte tile configuration (palette 1; `colsb` u16 at byte 16 + 2t, `rows` at 48 + t):
/// eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16x64() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = 16;
        }
        TileConfig(c)
    }
}

/// Where one 16-row A tile is: row `r` of K step `s` at `base + r·ld + off[s]`.
#[derive(Clone, Copy)]
struct ATile<'o> {
    base: *const u8,
    ld: usize,
    off: &'o [usize],
}

/// `c[r][j]` (32 × 32 int32, row stride `NR`) = Σ over `steps` K steps of the A tiles `a0`
/// (rows 0..16) and `a1` (rows 16..32) against the B panel at `b` (`steps · 16` k-groups of
/// `LDB` bytes); `between(s)` runs after the tile instructions of step `s` are issued (work for
/// the vector units meanwhile).
///
/// # Safety
/// The 16×64 configuration is loaded; for each tile and step `s < steps`, 16 rows of 64 bytes at
/// `base + off[s]`, `ld` apart, are readable; `b` has `steps · 16 · LDB` readable bytes; `c` has
/// `MB · NR` writable int32.
#[inline(always)]
unsafe fn block(
    a0: ATile,
    a1: ATile,
    b: *const i8,
    steps: usize,
    c: *mut i32,
    mut between: impl FnMut(usize),
) {
    // SAFETY: tilezero touches only tile registers.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }
    for s in 0..steps {
        // SAFETY: the two A tiles of step s and B k-groups 16s .. 16s+16, bytes 0..64 and
        // 64..128 of each, are inside the buffers (caller).
        unsafe {
            let b0 = b.add(s * 16 * LDB);
            asm!(
                "tileloadd tmm4, [{a0} + {lda0}*1]",
                "tileloadd tmm5, [{a1} + {lda1}*1]",
                "tileloadd tmm6, [{b0} + {ldb}*1]",
                "tileloadd tmm7, [{b1} + {ldb}*1]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) a0.base.add(a0.off[s]),
                a1 = in(reg) a1.base.add(a1.off[s]),
                b0 = in(reg) b0,
                b1 = in(reg) b0.add(64),
                lda0 = in(reg) a0.ld,
                lda1 = in(reg) a1.ld,
                ldb = in(reg) LDB,
                options(nostack, readonly)
            );
        }
        between(s);
    }
    let ldc = NR * 4;
    // SAFETY: the four 16×16 int32 quarters of the 32×32 block at `c` (caller).
    unsafe {
        asm!(
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c3} + {ldc}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * NR),
            c3 = in(reg) c.add(16 * NR + 16),
            ldc = in(reg) ldc,
            options(nostack)
        );
    }
}

/// Per-channel constants of one 32-column panel for the AVX-512 epilogue: vector `v` covers
/// columns `j0 + 16v ..`, lanes past the GEMM's `n` masked off (`mask[v]`).
#[derive(Clone, Copy)]
struct Panel {
    /// `−zc[j]` (raw sink) or `add_i[j] − zc[j]` (u8 sink), wrapping: added to the accumulator.
    c: [__m512i; 2],
    bz: [__m512i; 2],
    add_f: [__m512; 2],
    add_s: [__m512; 2],
    mult: [__m512; 2],
    mask: [u16; 2],
}

/// A finished C block waiting for its epilogue: rows `i0 .. i0 + rows`, columns `j0 .. j0 + 32`.
#[derive(Clone, Copy)]
struct Pending {
    i0: usize,
    rows: usize,
    j0: usize,
    buf: usize,
    /// Row `i0` over a virtual width `vw`: `(i0 / vw, i0 % vw)` (unused otherwise).
    y0: usize,
    x0: usize,
}

/// Loads the panel constants of columns `j0 .. min(j0 + 32, n)`.
///
/// # Safety
/// AVX-512 F/BW/VL available; `j0 < epi.n`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn panel(epi: &Epilogue, j0: usize) -> Panel {
    let cols = (epi.n - j0).min(NR);
    let mask: [u16; 2] = std::array::from_fn(|v| {
        let live = cols.saturating_sub(16 * v).min(16);
        ((1u32 << live) - 1) as u16
    });
    // SAFETY (all masked loads): each per-channel vector has `n` entries (Epilogue, PerChannel);
    // lanes past `n` are masked off, and masked-off elements are not accessed, so they cannot
    // fault (Intel SDM vol. 1, 15.4.1 "Memory fault suppression" for AVX-512 masked moves).
    let ld_i = |p: &[i32], v: usize| unsafe {
        _mm512_maskz_loadu_epi32(mask[v], p.as_ptr().add(j0 + 16 * v))
    };
    let ld_f = |p: &[f32], v: usize| unsafe {
        _mm512_maskz_loadu_ps(mask[v], p.as_ptr().add(j0 + 16 * v))
    };
    let zero_i = _mm512_setzero_si512();
    let zero_f = _mm512_setzero_ps();
    let c = std::array::from_fn(|v| {
        let zc = ld_i(epi.zc, v);
        match epi.rq.filter(|_| matches!(epi.sink, Sink::U8(_))) {
            Some(rq) => _mm512_sub_epi32(ld_i(&rq.add_i, v), zc),
            None => _mm512_sub_epi32(zero_i, zc),
        }
    });
    let bz = std::array::from_fn(|v| epi.b_zp.map_or(zero_i, |b| ld_i(b, v)));
    let rq = epi.rq.filter(|_| matches!(epi.sink, Sink::U8(_)));
    let f = |g: fn(&PerChannel) -> &[f32]| -> [__m512; 2] {
        std::array::from_fn(|v| rq.map_or(zero_f, |r| ld_f(g(r), v)))
    };
    Panel {
        c,
        bz,
        add_f: f(|r| &r.add_f),
        add_s: f(|r| &r.add_s),
        mult: f(|r| &r.mult),
        mask,
    }
}

/// Epilogue of rows `r0 .. r1` of the finished block `q` (accumulators `t`, row stride `NR`):
/// the zero-point folding and requantization of `avx2::epilogue_tile` / `requant8`, a row of 32
/// columns per step. The packs work per 128-bit lane (Intel SDM vol. 2, PACKSSDW and PACKUSWB),
/// so the 32 bytes come out in dwords that one `vpermd` puts in column order.
///
/// # Safety
/// AVX-512 F/BW/VL available; `q` describes rows and columns of the epilogue's output.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn post_rows(epi: &mut Epilogue, k: &Panel, q: &Pending, r0: usize, r1: usize, t: &[i32]) {
    let nv = if k.mask[1] == 0 { 1 } else { 2 };
    let cols = (epi.n - q.j0).min(NR);
    let (bz, row_sums, rq) = (epi.b_zp, epi.row_sums, epi.rq);
    let (off, ld, virtual_rows) = (epi.out_off, epi.out_ld, epi.virtual_rows);
    // Sink index of each block row, or None for a dropped virtual row: a walk over the virtual
    // pixel grid from `(q.y0, q.x0)`, without a division per row.
    let (mut y, mut x) = (q.y0, q.x0 + r0);
    if let Some((vw, _)) = virtual_rows {
        while x >= vw {
            (y, x) = (y + 1, x - vw);
        }
    }
    let mut at = |r: usize| {
        let i = match virtual_rows {
            None => Some(q.i0 + r),
            Some((vw, ow)) => {
                let i = (x < ow).then_some(y * ow + x);
                x += 1;
                if x == vw {
                    (y, x) = (y + 1, 0);
                }
                i
            }
        };
        i.map(|i| off + i * ld + q.j0)
    };
    let rows = r0..r1.min(q.rows);
    // Row r's folded accumulators of vector v: acc + c[j] − row_sum·b_zp[j].
    let raw = |r: usize, v: usize| {
        // SAFETY: r < MB and 16v + 16 ≤ NR: inside the MB × NR block `t`.
        let acc = unsafe { _mm512_loadu_si512(t.as_ptr().add(r * NR + 16 * v) as *const _) };
        let x = _mm512_add_epi32(acc, k.c[v]);
        match bz {
            None => x,
            Some(_) => {
                let rs = _mm512_set1_epi32(row_sums.get(q.i0 + r).copied().unwrap_or(0));
                _mm512_sub_epi32(x, _mm512_mullo_epi32(rs, k.bz[v]))
            }
        }
    };
    let f = |x: __m512i, v: usize| {
        _mm512_cvtps_epi32(_mm512_mul_ps(
            _mm512_fmadd_ps(k.add_f[v], k.add_s[v], _mm512_cvtepi32_ps(x)),
            k.mult[v],
        ))
    };
    match &mut epi.sink {
        Sink::Raw(o) => {
            for r in rows {
                let Some(at) = at(r) else { continue };
                assert!(at + cols <= o.len());
                for v in 0..nv {
                    // SAFETY: the mask keeps lanes below `cols`; at + cols ≤ o.len().
                    unsafe {
                        _mm512_mask_storeu_epi32(
                            o.as_mut_ptr().add(at + 16 * v),
                            k.mask[v],
                            raw(r, v),
                        )
                    };
                }
            }
        }
        Sink::U8(o) => {
            let rq = rq.expect("u8 sink has a rule");
            let zp = _mm512_set1_epi16(rq.zp as i16);
            let lo = _mm512_set1_epi8(rq.lo as u8 as i8);
            // Dword `4L + d` of the packed result holds outputs `4L .. 4L + 4` of vector `d`.
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
            for r in rows {
                let Some(at) = at(r) else { continue };
                assert!(at + cols <= o.len());
                // packssdw / paddsw / packuswb / pmaxub per 128-bit lane, as `requant8`.
                let w = _mm512_adds_epi16(_mm512_packs_epi32(f(raw(r, 0), 0), f(raw(r, 1), 1)), zp);
                let b = _mm512_max_epu8(_mm512_packus_epi16(w, w), lo);
                let b = _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, b));
                let dst = o.as_mut_ptr().wrapping_add(at);
                if cols == NR {
                    // SAFETY: at + 32 ≤ o.len().
                    unsafe { _mm256_storeu_si256(dst as *mut __m256i, b) };
                } else {
                    let m = u32::from(k.mask[0]) | u32::from(k.mask[1]) << 16;
                    // SAFETY: the mask keeps bytes below `cols`; at + cols ≤ o.len().
                    unsafe { _mm256_mask_storeu_epi8(dst as *mut i8, m, b) };
                }
            }
        }
    }
}

thread_local! {
    /// Rows of A gathered for the tiles; reused across calls (grown, never shrunk or re-zeroed:
    /// stale bytes only meet rows that are dropped or the zero padding of B).
    static ABUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Two C blocks: one being computed into, one waiting for its epilogue.
#[repr(C, align(64))]
struct CBufs([[i32; MB * NR]; 2]);

/// Exact GEMM over a Tile (NR = 32, K padded to 64) panel matrix.
///
/// Blocks run in the order: rows in L2 chunks of `mc`, then panels, then 32-row blocks. The
/// epilogue of each block is interleaved, a few rows per K step, with the tile instructions of the
/// next block, so the vector units requantize while the tile unit multiplies (the tiles run
/// asynchronously to the out-of-order core). A rows are read in place when they are equally
/// spaced (dense, or a 1×1 stride-1 conv's image) and the tile read stays inside the buffer;
/// otherwise they are gathered into a reused buffer in tile order (each step's 16 rows one
/// contiguous KiB).
///
/// # Safety
/// [`detected`] must be true (AMX-TILE/INT8 with the OS permission, AVX-512 F/BW/VL, AVX2,
/// FMA); `b` packed as Tile with at least `a.k_steps()` steps per panel; `a` checked by
/// `AOperand::new`.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn gemm_amx(a: &AOperand, b: &PackedB, epi: &mut Epilogue) {
    if a.m < 16 && epi.virtual_rows.is_none() && crate::kernels::Isa::Avx512Vnni.detected() {
        // SAFETY: VNNI detected; a Tile panel is a Quad8 NR = 32 panel with more zero k-groups.
        unsafe { super::avx512vnni::gemm_vnni(a, b, epi) };
        return;
    }
    let kp = b.kp;
    debug_assert!(kp.is_multiple_of(KB));
    let steps = kp / KB;
    let row_bytes = 4 * a.steps;
    // Equally spaced rows: `(first byte of row 0, stride)`.
    let affine = match (a.segs, a.rows) {
        ([seg], RowMap::Dense { ld }) => Some((*seg, ld)),
        ([seg], RowMap::Pixels { ow, dy, dx }) if dy == ow * dx => Some((*seg, dx)),
        _ => None,
    };
    // Step offsets of a tile read in place: whole K steps of a `kp`-byte row (`lin`), or, when
    // each segment is whole 64-byte steps, step `s` in segment `s / per_seg` (`seg`).
    let lin: Vec<usize> = (0..steps).map(|s| s * KB).collect();
    // Step offsets of a tile gathered in tile order (16 rows of 64 bytes per step).
    let tile_order: Vec<usize> = (0..steps).map(|s| s * 16 * KB).collect();
    let per_seg = row_bytes / KB;
    let seg: Vec<usize> = if row_bytes.is_multiple_of(KB) && a.segs.len() * per_seg == steps {
        (0..steps)
            .map(|s| a.segs[s / per_seg] + (s % per_seg) * KB)
            .collect()
    } else {
        Vec::new()
    };
    // Rows `t .. t + 16` equally spaced (`Some(stride)`): one output row of a conv, or any rows
    // when the output rows are too (a 1×1 stride-1 conv, or rows over a virtual width).
    let spaced = |t: usize| match a.rows {
        RowMap::Dense { ld } => Some(ld),
        RowMap::Pixels { ow, dy, dx } if dy == ow * dx => Some(dx),
        RowMap::Pixels { ow, dx, .. } => (t / ow == (t + 15) / ow).then_some(dx),
    };
    // Rows per pass: their A stays in L2 while every panel sweeps it. Each pass streams all the
    // weights, so when they outweigh A (the deep layers of a batch-1 network) a pass holds up to
    // 1 MiB of A (half this machine's 2 MiB L2), else 256 KiB (measured faster there, e.g. 3×3
    // on 28×28×128: about 1.4 against 2.0 TOPS).
    let budget = if b.n > a.m { 1024 * 1024 } else { 256 * 1024 };
    let mc = ((budget / kp) / MB).max(1) * MB;
    let need = mc.min(a.m.next_multiple_of(MB)) * kp;
    let mut cbuf = CBufs([[0; MB * NR]; 2]);
    let cptr = cbuf.0.as_mut_ptr();
    let cfg = TileConfig::all_16x64();
    let base = a.bytes.as_ptr();
    let mut tiles: Vec<ATile> = Vec::with_capacity(mc / 16);
    let panels = b.n.div_ceil(NR);
    // SAFETY: AVX-512 F/BW/VL (caller); p * NR < n.
    let consts: Vec<Panel> = (0..panels).map(|p| unsafe { panel(epi, p * NR) }).collect();
    let per = MB.div_ceil(steps);
    // Weights that fit in L1 next to a block of A (e.g. 1×1 convs on 64 channels): each block of
    // rows meets every panel in turn, so its A tiles are loaded from L2 once; otherwise each
    // panel sweeps the row pass (its A in L2), and the panel stays in L1.
    let rows_outer = panels * NR * kp <= 32 * 1024;
    ABUF.with_borrow_mut(|abuf| {
        if abuf.len() < need {
            abuf.resize(need, 0);
        }
        // SAFETY: AMX and the tile permission were detected (caller); the configuration is 64
        // readable bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        let mut pending: Option<Pending> = None;
        let mut cur = 0;
        for ic in (0..a.m).step_by(mc) {
            let iend = (ic + mc).min(a.m);
            let blocks = (iend - ic).div_ceil(MB);
            // Each 16-row tile: in place (whole rows, or segments of one output row's pixels)
            // when its reads stay inside the rows AOperand::new checked, else gathered.
            tiles.clear();
            for (q, t) in (ic..ic + blocks * MB).step_by(16).enumerate() {
                let slot = &mut abuf[q * 16 * kp..(q + 1) * 16 * kp];
                let tile = match (affine, spaced(t)) {
                    (Some((s, ld)), _) if s + (t + 15) * ld + kp <= a.bytes.len() => ATile {
                        base: base.wrapping_add(s + t * ld),
                        ld,
                        off: &lin,
                    },
                    (_, Some(ld)) if !seg.is_empty() && t + 16 <= a.m => ATile {
                        base: base.wrapping_add(a.rows.offset(t)),
                        ld,
                        off: &seg,
                    },
                    _ => {
                        // Gathered in tile order: step s of the 16 rows is the 1 KiB at
                        // `s · 1024`, row r at `r · 64` in it (each tile load one contiguous
                        // KiB). A row is its segments back to back, cut at 64-byte steps.
                        for (r, i) in (t..iend.min(t + 16)).enumerate() {
                            let off = a.rows.offset(i);
                            let mut at = 0;
                            for &sg in a.segs {
                                let src = &a.bytes[off + sg..off + sg + row_bytes];
                                let mut done = 0;
                                while done < row_bytes {
                                    let (s, o) = ((at + done) / KB, (at + done) % KB);
                                    let n = (KB - o).min(row_bytes - done);
                                    slot[s * 16 * KB + r * KB + o..][..n]
                                        .copy_from_slice(&src[done..done + n]);
                                    done += n;
                                }
                                at += row_bytes;
                            }
                        }
                        ATile {
                            base: slot.as_ptr(),
                            ld: KB,
                            off: &tile_order,
                        }
                    }
                };
                tiles.push(tile);
            }
            for step in 0..panels * blocks {
                let (p, blk) = if rows_outer {
                    (step % panels, step / panels)
                } else {
                    (step / blocks, step % blocks)
                };
                let bp = b.panel8(p, NR).as_ptr();
                {
                    let i0 = ic + blk * MB;
                    // SAFETY: configuration loaded above. In-place tiles: whole rows read `kp`
                    // bytes ending inside `a.bytes` (checked above); segment tiles read 16
                    // equally spaced rows (`offset(t + r) = offset(t) + r·dx`: pixels of one
                    // output row, or of a map with `dy = ow·dx`), each step 64 bytes inside a
                    // segment that AOperand::new checked for rows < m.
                    // Gathered tiles are `16 · kp` bytes of `abuf`, which is not written until
                    // the next pass. The panel holds kp / 4 k-groups of LDB bytes; `cptr + cur`
                    // is one MB × NR block, not the one `pending` reads.
                    unsafe {
                        block(
                            tiles[2 * blk],
                            tiles[2 * blk + 1],
                            bp,
                            steps,
                            cptr.add(cur).cast(),
                            |s| {
                                if let Some(q) = &pending {
                                    let t = std::slice::from_raw_parts(
                                        cptr.add(q.buf).cast::<i32>(),
                                        MB * NR,
                                    );
                                    let k = &consts[q.j0 / NR];
                                    post_rows(epi, k, q, s * per, (s + 1) * per, t);
                                }
                            },
                        );
                    }
                    let (y0, x0) = epi
                        .virtual_rows
                        .map_or((0, 0), |(vw, _)| (i0 / vw, i0 % vw));
                    pending = Some(Pending {
                        i0,
                        rows: (iend - i0).min(MB),
                        j0: p * NR,
                        buf: cur,
                        y0,
                        x0,
                    });
                    cur ^= 1;
                }
            }
        }
        // SAFETY: releases this thread's tile state (AMX detected).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
        if let Some(q) = &pending {
            // SAFETY: the block at `q.buf` was stored by its last `block` call; AVX-512 (caller).
            unsafe {
                let t = std::slice::from_raw_parts(cptr.add(q.buf).cast::<i32>(), MB * NR);
                post_rows(epi, &consts[q.j0 / NR], q, 0, MB, t);
            }
        }
    });
}
