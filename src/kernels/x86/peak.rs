//! Peak-throughput micro-benchmarks of the multiply-accumulate instructions (no dependent chains:
//! 6 (AVX2) or 12 (VNNI) independent accumulators), used by the benchmark report to say how close GEMMs come.

use super::Isa;
use std::arch::x86_64::*;

/// Six independent `vpmaddubsw → vpmaddwd → vpaddd` chains per iteration (inline asm so the
/// loop-invariant products cannot be hoisted by the compiler).
#[target_feature(enable = "avx2")]
unsafe fn pairsat_loop(iters: u64, seed: i32) -> i32 {
    let a = _mm256_set1_epi32(seed);
    let b = _mm256_set1_epi32(seed.rotate_left(7));
    let ones = _mm256_set1_epi16(1);
    let mut out = _mm256_setzero_si256();
    // SAFETY: AVX2 is enabled for this function; the asm only touches the declared registers.
    unsafe {
        std::arch::asm!(
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm7, ymm7, ymm7",
            "vpxor ymm9, ymm9, ymm9",
            "vpxor ymm11, ymm11, ymm11",
            "2:",
            "vpmaddubsw ymm0, ymm14, ymm15",
            "vpmaddubsw ymm2, ymm14, ymm15",
            "vpmaddubsw ymm4, ymm14, ymm15",
            "vpmaddubsw ymm6, ymm14, ymm15",
            "vpmaddubsw ymm8, ymm14, ymm15",
            "vpmaddubsw ymm10, ymm14, ymm15",
            "vpmaddwd ymm0, ymm0, ymm13",
            "vpmaddwd ymm2, ymm2, ymm13",
            "vpmaddwd ymm4, ymm4, ymm13",
            "vpmaddwd ymm6, ymm6, ymm13",
            "vpmaddwd ymm8, ymm8, ymm13",
            "vpmaddwd ymm10, ymm10, ymm13",
            "vpaddd ymm1, ymm1, ymm0",
            "vpaddd ymm3, ymm3, ymm2",
            "vpaddd ymm5, ymm5, ymm4",
            "vpaddd ymm7, ymm7, ymm6",
            "vpaddd ymm9, ymm9, ymm8",
            "vpaddd ymm11, ymm11, ymm10",
            "dec {n}",
            "jnz 2b",
            "vpaddd ymm1, ymm1, ymm3",
            "vpaddd ymm5, ymm5, ymm7",
            "vpaddd ymm9, ymm9, ymm11",
            "vpaddd ymm1, ymm1, ymm5",
            "vpaddd ymm12, ymm1, ymm9",
            n = inout(reg) iters.max(1) => _,
            in("ymm13") ones,
            in("ymm14") a,
            in("ymm15") b,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            lateout("ymm12") out,
            options(nostack),
        );
    }
    _mm256_extract_epi32::<0>(out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_loop(iters: u64, seed: i32) -> i32 {
    let a = _mm512_set1_epi32(seed);
    let b = _mm512_set1_epi32(seed.rotate_left(7));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_si512();
    for x in acc {
        s = _mm512_add_epi32(s, x);
    }
    _mm512_reduce_add_epi32(s)
}

/// Runs `iters` iterations of the MAC-instruction loop of `isa` (`None` if the CPU lacks it);
/// one iteration is [`ops_per_iter`] operations.
pub fn mac_loop(isa: Isa, iters: u64, seed: i32) -> Option<i32> {
    if !isa.detected() {
        return None;
    }
    Some(match isa {
        // SAFETY: AVX2 was detected above.
        Isa::Avx2 => unsafe { pairsat_loop(iters, seed) },
        // SAFETY: AVX-512 F/BW/VNNI were detected above.
        Isa::Avx512Vnni => unsafe { vnni_loop(iters, seed) },
    })
}

/// Operations (2 per u8×i8 multiply-accumulate) in one iteration of [`mac_loop`]:
/// six `vpmaddubsw+vpmaddwd+vpaddd` chains (ymm, 32 MAC each) for [`Isa::Avx2`], twelve
/// `vpdpbusd` (zmm, 64 MAC each) for [`Isa::Avx512Vnni`].
pub fn ops_per_iter(isa: Isa) -> u64 {
    2 * match isa {
        Isa::Avx2 => 6 * 32,
        Isa::Avx512Vnni => 12 * 64,
    }
}
