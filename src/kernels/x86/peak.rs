//! Peak-throughput micro-benchmarks of the multiply-accumulate instructions (no dependent chains:
//! 12 independent accumulators), used by the benchmark report to say how close GEMMs come.

use super::Isa;
use std::arch::x86_64::*;
use std::time::Instant;

#[target_feature(enable = "avx2")]
unsafe fn pairsat_loop(iters: u64, seed: i32) -> i32 {
    let a = _mm256_set1_epi32(seed);
    let b = _mm256_set1_epi32(seed.rotate_left(7));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
        }
        // Keep the products from being hoisted out of the loop.
        std::hint::black_box(&acc);
    }
    let mut s = _mm256_setzero_si256();
    for x in acc {
        s = _mm256_add_epi32(s, x);
    }
    _mm256_extract_epi32::<0>(s)
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

/// Peak GOPS (2 ops per u8×i8 multiply-accumulate) of the given instruction sequence on one core:
/// `vpmaddubsw+vpmaddwd+vpaddd` (ymm, 32 MAC) for [`Isa::Avx2`], `vpdpbusd` (zmm, 64 MAC) for
/// [`Isa::Avx512Vnni`]. `None` if the CPU lacks the ISA. Best of 5 runs of `iters` iterations.
pub fn peak_gops(isa: Isa, iters: u64) -> Option<f64> {
    if !isa.detected() {
        return None;
    }
    let mut best = f64::INFINITY;
    for run in 0..5 {
        let t = Instant::now();
        let r = match isa {
            // SAFETY: AVX2 was detected above.
            Isa::Avx2 => unsafe { pairsat_loop(iters, 0x0102_0304 + run) },
            // SAFETY: AVX-512 F/BW/VNNI were detected above.
            Isa::Avx512Vnni => unsafe { vnni_loop(iters, 0x0102_0304 + run) },
        };
        std::hint::black_box(r);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let macs_per_iter = match isa {
        Isa::Avx2 => 12 * 32,
        Isa::Avx512Vnni => 12 * 64,
    };
    Some(2.0 * (macs_per_iter as f64) * iters as f64 / best / 1e9)
}
