//! AMX int8 kernel: `tdpbusd` (Intel SDM / ISA Extensions Reference, "TDPBUSD": u8×i8 quads
//! summed exactly into int32 tiles, like `vpdpbusd`), the int8 path oneDNN takes on CPUs with
//! `amx_int8` (`brgemm` with `avx512_core_amx`).
//!
//! # Operands
//! * **B** is the `Tile` format: Quad8 with `NR = 32` (`panel[g][c][0..4] = B[c][4g .. 4g+4]`),
//!   `K` padded with zeros to a multiple of 64. Rows `16s .. 16s+16` of a panel's k-groups, 64
//!   bytes of columns `0..16` or `16..32` each, are one B tile of K step `s` (row stride 128 bytes):
//!   exactly the "VNNI-packed" B that `tdpbusd` multiplies.
//! * **A** is gathered, `MC` rows at a time, from the `AOperand` segments into a contiguous
//!   buffer with a row stride of `kp` bytes (the padding columns stay zero: they meet the zero
//!   padding of B, so any value would do, but the buffer is never read past its end). A tile is
//!   16 rows × 64 bytes of it.
//!
//! Each 32 × 32 block of C is four accumulator tiles (`tmm0..3`) fed per K step by two A tiles
//! (`tmm4, tmm5`) and two B tiles (`tmm6, tmm7`); the block is stored to memory and goes through
//! the shared AVX2 epilogue. Rows past `m` in the last block are computed on stale buffer rows and
//! dropped; columns past `n` are the zero padding of the last panel. Fewer than 16 rows (batch-1
//! linear layers) run the VNNI kernel on the same packed B (Tile is Quad8 with deeper padding).

use super::avx2::epilogue_tile;
use super::{AOperand, Epilogue, PackedB};
use std::arch::asm;
use std::sync::OnceLock;

/// Output channels per weight panel (two B tiles of 16 int32 columns).
pub(super) const NR: usize = 32;
/// Bytes of K per tile step (64 bytes = 16 quads, the most a tile row holds).
pub(super) const KB: usize = 64;
/// Rows per C block (two A tiles).
const MB: usize = 32;
/// Row stride of a B tile in a panel: one k-group of `NR` columns.
const LDB: usize = NR * 4;

/// Whether this CPU has AMX-TILE and AMX-INT8 (CPUID.(EAX=7,ECX=0):EDX bits 24 and 25), AVX2 and
/// FMA (the epilogue), and the OS granted this process the tile data state (Linux
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

/// `c[r][j]` (32 × 32 int32, row stride `NR`) = Σ over `steps` K steps of A rows `a + r·lda`
/// against the B panel at `b` (`steps · 16` k-groups of `LDB` bytes).
///
/// # Safety
/// The 16×64 configuration is loaded; `a` has 32 readable rows of `steps · 64` bytes, `lda` apart;
/// `b` has `steps · 16 · LDB` readable bytes; `c` has `MB · NR` writable int32.
#[inline(always)]
unsafe fn block(a: *const u8, lda: usize, b: *const i8, steps: usize, c: *mut i32) {
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
        // SAFETY: A rows 0..16 and 16..32 at byte 64·s, 64 bytes each, and B k-groups
        // 16s .. 16s+16, bytes 0..64 and 64..128 of each, are inside the buffers (caller).
        unsafe {
            let a0 = a.add(s * KB);
            let b0 = b.add(s * 16 * LDB);
            asm!(
                "tileloadd tmm4, [{a0} + {lda}*1]",
                "tileloadd tmm5, [{a1} + {lda}*1]",
                "tileloadd tmm6, [{b0} + {ldb}*1]",
                "tileloadd tmm7, [{b1} + {ldb}*1]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a0.add(16 * lda),
                b0 = in(reg) b0,
                b1 = in(reg) b0.add(64),
                lda = in(reg) lda,
                ldb = in(reg) LDB,
                options(nostack, readonly)
            );
        }
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

/// Exact GEMM over a Tile (NR = 32, K padded to 64) panel matrix.
///
/// # Safety
/// [`detected`] must be true (AMX-TILE/INT8 with the OS permission, AVX2, FMA); `b` packed as
/// Tile with at least `a.k_steps()` steps per panel; `a` checked by `AOperand::new`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_amx(a: &AOperand, b: &PackedB, epi: &mut Epilogue) {
    if a.m < 16 && crate::kernels::Isa::Avx512Vnni.detected() {
        // SAFETY: VNNI detected; a Tile panel is a Quad8 NR = 32 panel with more zero k-groups.
        unsafe { super::avx512vnni::gemm_vnni(a, b, epi) };
        return;
    }
    let kp = b.kp;
    debug_assert!(kp.is_multiple_of(KB));
    let steps = kp / KB;
    let row_bytes = 4 * a.steps;
    // Rows gathered per pass: their A (up to 256 KiB) stays in L2 while every panel sweeps it.
    let mc = ((256 * 1024 / kp) / MB).max(1) * MB;
    let mut abuf = vec![0u8; mc.min(a.m.next_multiple_of(MB)) * kp];
    let mut tile = [0i32; MB * NR];
    let cfg = TileConfig::all_16x64();
    // SAFETY: AMX and the tile permission were detected (caller); the configuration is 64
    // readable bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    for ic in (0..a.m).step_by(mc) {
        let iend = (ic + mc).min(a.m);
        for (r, dst) in abuf.chunks_exact_mut(kp).take(iend - ic).enumerate() {
            let off = a.rows.offset(ic + r);
            for (s, &seg) in a.segs.iter().enumerate() {
                dst[s * row_bytes..(s + 1) * row_bytes]
                    .copy_from_slice(&a.bytes[off + seg..off + seg + row_bytes]);
            }
        }
        let blocks = (iend - ic).div_ceil(MB);
        for p in 0..b.n.div_ceil(NR) {
            let bp = b.panel8(p, NR).as_ptr();
            for blk in 0..blocks {
                let i0 = ic + blk * MB;
                // SAFETY: configuration loaded above; the block's 32 rows of `kp` bytes are inside
                // `abuf` (its rows are a multiple of MB), the panel holds kp / 4 k-groups of
                // LDB bytes, `tile` is MB × NR; AVX2 for the epilogue (caller).
                unsafe {
                    block(
                        abuf.as_ptr().add(blk * MB * kp),
                        kp,
                        bp,
                        steps,
                        tile.as_mut_ptr(),
                    );
                    epilogue_tile(epi, i0, p * NR, (iend - i0).min(MB), &tile, NR);
                }
            }
        }
    }
    // SAFETY: releases this thread's tile state (AMX detected).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
