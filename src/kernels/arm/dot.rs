//! Dot-product kernels: `sdot` (FEAT_DotProd) and `sudot` (FEAT_I8MM), both by element.
//!
//! Each 32-bit lane of `sdot vd.4s, vn.16b, vm.4b[g]` adds the dot product of its four bytes of
//! `vn` with the four bytes of group `g` of `vm`. `vn` holds four B columns × four k, `vm` one
//! A row's 16 k, so one instruction advances a 1×4 strip of the tile by four k.
//!
//! `sdot` multiplies signed by signed; activations are unsigned. The `Sdot` kernel feeds it
//! `a ^ 0x80 = a − 128` (a valid i8) and the driver adds `128·Σ_k b[j][k]` back per column:
//! `Σ a·b = Σ (a − 128)·b + 128·Σ b`, exact in wrapping int32. `sudot` (signed `vn` × unsigned
//! `vm`) takes the mixed-sign operands directly.
//!
//! The instructions are written with `asm!` because the dotprod and i8mm intrinsics
//! (`vdotq_laneq_s32`, `vsudotq_laneq_s32`) are unstable in Rust 1.95/1.96.

use core::arch::aarch64::*;
use core::arch::asm;

use super::drive::Micro;
use super::{MR, NR};

const KB: usize = 16;

// B panel: per group of four k, NR columns × 4 bytes (two 16-byte vectors).
fn b_offset(kk: usize, c: usize) -> usize {
    (kk / 4) * (4 * NR) + c * 4 + kk % 4
}

// A panel: per block of 16 k, MR rows of 16 bytes.
fn a_offset(kk: usize, r: usize) -> usize {
    (kk / KB) * (KB * MR) + r * KB + kk % KB
}

/// Generates a micro-kernel whose inner step is `$insn vd.4s, vn.16b, vm.4b[g]`.
macro_rules! dot_kernel {
    ($name:ident, $feature:literal, $insn:literal, $bias:expr, $pack_a:expr) => {
        pub(super) struct $name;

        impl Micro for $name {
            const KB: usize = KB;
            type B = i8;
            const ZP_IN_KERNEL: bool = false;
            const A_BIAS: i32 = $bias;

            fn pack_b(b: i8, _zb: i32) -> i8 {
                b
            }

            fn pack_a(a: u8) -> u8 {
                $pack_a(a)
            }

            fn b_offset(kk: usize, c: usize) -> usize {
                b_offset(kk, c)
            }

            fn a_offset(kk: usize, r: usize) -> usize {
                a_offset(kk, r)
            }

            #[target_feature(enable = $feature)]
            unsafe fn tile(a: *const u8, b: *const i8, kblocks: usize, _za: u8) -> [int32x4_t; 8] {
                // SAFETY: the caller guarantees the CPU feature, kblocks·16·MR bytes at `a` and
                // kblocks·16·NR bytes at `b`; all loads stay inside block `kb`. The asm only
                // reads and writes the named vector registers (no memory, no stack, no flags).
                unsafe {
                    let mut acc = [vdupq_n_s32(0); 8];
                    for kb in 0..kblocks {
                        let pa = a.add(kb * KB * MR);
                        let va = [
                            vld1q_u8(pa),
                            vld1q_u8(pa.add(KB)),
                            vld1q_u8(pa.add(2 * KB)),
                            vld1q_u8(pa.add(3 * KB)),
                        ];
                        let pb = b.add(kb * KB * NR);
                        macro_rules! group {
                            ($g:literal) => {{
                                let b0 = vld1q_s8(pb.add($g * 4 * NR));
                                let b1 = vld1q_s8(pb.add($g * 4 * NR + 16));
                                for r in 0..MR {
                                    asm!(
                                        concat!($insn, " {acc:v}.4s, {b:v}.16b, {a:v}.4b[", $g, "]"),
                                        acc = inout(vreg) acc[2 * r],
                                        b = in(vreg) b0,
                                        a = in(vreg) va[r],
                                        options(pure, nomem, nostack, preserves_flags),
                                    );
                                    asm!(
                                        concat!($insn, " {acc:v}.4s, {b:v}.16b, {a:v}.4b[", $g, "]"),
                                        acc = inout(vreg) acc[2 * r + 1],
                                        b = in(vreg) b1,
                                        a = in(vreg) va[r],
                                        options(pure, nomem, nostack, preserves_flags),
                                    );
                                }
                            }};
                        }
                        group!(0);
                        group!(1);
                        group!(2);
                        group!(3);
                    }
                    acc
                }
            }
        }
    };
}

dot_kernel!(Sdot, "dotprod", "sdot", 128, |a: u8| a ^ 0x80);
dot_kernel!(Sudot, "i8mm", "sudot", 0, |a: u8| a);
