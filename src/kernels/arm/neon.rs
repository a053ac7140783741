//! Baseline NEON kernel in the style of QNNPACK's `q8gemm` 4x8 NEON micro-kernel: both operands
//! are widened to int16 with their zero points subtracted there (`usubl` for activations, at
//! packing time for weights), then `smlal`/`smlal2` by element accumulate int16×int16 products
//! into int32. `(a − za)` and `(b − zb)` both lie in −255..=255, so each product is exact.
//!
//! Source of the scheme: PyTorch `aten/src/ATen/native/quantized/cpu/qnnpack/src/q8gemm/4x8-neon.c`.

use core::arch::aarch64::*;

use super::drive::Micro;
use super::{MR, NR};

/// The NEON micro-kernel.
pub(super) struct Neon;

const KB: usize = 8;

impl Micro for Neon {
    const KB: usize = KB;
    type B = i16;
    const ZP_IN_KERNEL: bool = true;
    const A_BIAS: i32 = 0;

    fn pack_b(b: i8, zb: i32) -> i16 {
        // −128..=127 minus −128..=127: fits int16.
        (b as i32 - zb) as i16
    }

    fn pack_a(a: u8) -> u8 {
        a
    }

    // B panel: for every k, the NR columns as int16.
    fn b_offset(kk: usize, c: usize) -> usize {
        kk * NR + c
    }

    // A panel: per block of 8 k, MR rows of 8 bytes.
    fn a_offset(kk: usize, r: usize) -> usize {
        (kk / KB) * (KB * MR) + r * KB + kk % KB
    }

    #[target_feature(enable = "neon")]
    unsafe fn tile(a: *const u8, b: *const i16, kblocks: usize, za: u8) -> [int32x4_t; 8] {
        // SAFETY: the caller guarantees `a` has kblocks·8·MR bytes and `b` kblocks·8·NR
        // elements; every load below stays inside block `kb` of both.
        unsafe {
            let vza = vdup_n_u8(za);
            let mut acc = [vdupq_n_s32(0); 8];
            for kb in 0..kblocks {
                let pa = a.add(kb * KB * MR);
                // a − za as int16 (usubl wraps mod 2¹⁶; the true value is in −255..=255).
                let va = [
                    vreinterpretq_s16_u16(vsubl_u8(vld1_u8(pa), vza)),
                    vreinterpretq_s16_u16(vsubl_u8(vld1_u8(pa.add(KB)), vza)),
                    vreinterpretq_s16_u16(vsubl_u8(vld1_u8(pa.add(2 * KB)), vza)),
                    vreinterpretq_s16_u16(vsubl_u8(vld1_u8(pa.add(3 * KB)), vza)),
                ];
                let pb = b.add(kb * KB * NR);
                macro_rules! step {
                    ($t:literal) => {{
                        let vb = vld1q_s16(pb.add($t * NR));
                        let lo = vget_low_s16(vb);
                        for r in 0..MR {
                            acc[2 * r] = vmlal_laneq_s16::<$t>(acc[2 * r], lo, va[r]);
                            acc[2 * r + 1] = vmlal_high_laneq_s16::<$t>(acc[2 * r + 1], vb, va[r]);
                        }
                    }};
                }
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                step!(4);
                step!(5);
                step!(6);
                step!(7);
            }
            acc
        }
    }
}
