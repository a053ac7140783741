//! i8mm matrix kernel: `usmmla vd.4s, vn.16b, vm.16b` adds the 2×2 int32 product of a 2×8 u8
//! matrix (`vn`, two A rows of eight k) and an 8×2 i8 matrix (`vm`, two B columns of eight k,
//! stored column by column) to `vd = [c00, c01, c10, c11]`. Unsigned × signed, exact: no operand
//! bias. A 4×8 tile takes 8 accumulators; two `zip` per row pair turn 2×2 blocks into rows.
//!
//! Written with `asm!` because `vusmmlaq_s32` is unstable in Rust 1.95/1.96.

use core::arch::aarch64::*;
use core::arch::asm;

use super::drive::Micro;
use super::{MR, NR};

const KB: usize = 8;

/// The `usmmla` micro-kernel.
pub(super) struct Usmmla;

impl Micro for Usmmla {
    const KB: usize = KB;
    type B = i8;
    const ZP_IN_KERNEL: bool = false;
    const A_BIAS: i32 = 0;

    fn pack_b(b: i8, _zb: i32) -> i8 {
        b
    }

    fn pack_a(a: u8) -> u8 {
        a
    }

    // B panel: per block of 8 k, NR columns of 8 bytes (column pairs form one vector).
    fn b_offset(kk: usize, c: usize) -> usize {
        (kk / KB) * (KB * NR) + c * KB + kk % KB
    }

    // A panel: per block of 8 k, MR rows of 8 bytes (row pairs form one vector).
    fn a_offset(kk: usize, r: usize) -> usize {
        (kk / KB) * (KB * MR) + r * KB + kk % KB
    }

    #[target_feature(enable = "i8mm")]
    unsafe fn tile(a: *const u8, b: *const i8, kblocks: usize, _za: u8) -> [int32x4_t; 8] {
        // SAFETY: the caller guarantees FEAT_I8MM, kblocks·8·MR bytes at `a` and kblocks·8·NR
        // bytes at `b`; all loads stay inside block `kb`. The asm only touches the named vector
        // registers.
        unsafe {
            // acc[2p + q]: rows 2p, 2p+1 × columns 2q, 2q+1.
            let mut acc = [vdupq_n_s32(0); 8];
            for kb in 0..kblocks {
                let pa = a.add(kb * KB * MR);
                let va = [vld1q_u8(pa), vld1q_u8(pa.add(16))];
                let pb = b.add(kb * KB * NR);
                for q in 0..4 {
                    let vb = vld1q_s8(pb.add(q * 16));
                    for p in 0..2 {
                        asm!(
                            "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                            acc = inout(vreg) acc[4 * p + q],
                            a = in(vreg) va[p],
                            b = in(vreg) vb,
                            options(pure, nomem, nostack, preserves_flags),
                        );
                    }
                }
            }
            // Row 2p of columns 4h..4h+4 = low halves of blocks (p, 2h) and (p, 2h+1);
            // row 2p+1 = their high halves.
            let mut tile = [vdupq_n_s32(0); 8];
            for p in 0..2 {
                for h in 0..2 {
                    let x = vreinterpretq_s64_s32(acc[4 * p + 2 * h]);
                    let y = vreinterpretq_s64_s32(acc[4 * p + 2 * h + 1]);
                    tile[2 * (2 * p) + h] = vreinterpretq_s32_s64(vzip1q_s64(x, y));
                    tile[2 * (2 * p + 1) + h] = vreinterpretq_s32_s64(vzip2q_s64(x, y));
                }
            }
            tile
        }
    }
}
