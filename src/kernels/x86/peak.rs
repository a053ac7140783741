//! Peak-throughput loops of the multiply-accumulate instruction sequences the x86 kernels are
//! built from, so benchmark reports can say how close a GEMM comes to the machine's limit. Each
//! loop is inline assembly (the compiler can neither hoist nor fuse it) with enough independent
//! accumulators to hide the instructions' latency.

use super::super::Accumulation;
use std::arch::asm;

/// A multiply-accumulate instruction sequence, in one vector width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacLoop {
    /// `vpmaddubsw` → `vpmaddwd(·, 1)` → `vpaddd` on ymm: FBGEMM's AVX2 chain (pairs saturated
    /// to int16), 32 u8×i8 MACs per chain.
    PairChainYmm,
    /// The same chain on zmm (AVX-512 BW), 64 MACs per chain.
    PairChainZmm,
    /// `vpdpbusd` on ymm (AVX-512 VNNI + VL), 32 exact MACs.
    VpdpbusdYmm,
    /// `vpdpbusd` on zmm (AVX-512 VNNI), 64 exact MACs.
    VpdpbusdZmm,
}

/// Six independent chains per iteration (`$w` = ymm or zmm).
macro_rules! chain_loop {
    ($name:ident, $feat:literal, $w:literal, [$($r:tt),*]) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(iters: u64) {
            // SAFETY: the features are enabled for this function (callers check them); the asm
            // touches only the declared registers and no memory.
            unsafe {
                asm!(
                    concat!("vpxor ", "xmm13, xmm13, xmm13"),
                    "2:",
                    concat!("vpmaddubsw ", $w, "0, ", $w, "14, ", $w, "15"),
                    concat!("vpmaddubsw ", $w, "2, ", $w, "14, ", $w, "15"),
                    concat!("vpmaddubsw ", $w, "4, ", $w, "14, ", $w, "15"),
                    concat!("vpmaddubsw ", $w, "6, ", $w, "14, ", $w, "15"),
                    concat!("vpmaddubsw ", $w, "8, ", $w, "14, ", $w, "15"),
                    concat!("vpmaddubsw ", $w, "10, ", $w, "14, ", $w, "15"),
                    concat!("vpmaddwd ", $w, "0, ", $w, "0, ", $w, "13"),
                    concat!("vpmaddwd ", $w, "2, ", $w, "2, ", $w, "13"),
                    concat!("vpmaddwd ", $w, "4, ", $w, "4, ", $w, "13"),
                    concat!("vpmaddwd ", $w, "6, ", $w, "6, ", $w, "13"),
                    concat!("vpmaddwd ", $w, "8, ", $w, "8, ", $w, "13"),
                    concat!("vpmaddwd ", $w, "10, ", $w, "10, ", $w, "13"),
                    concat!("vpaddd ", $w, "1, ", $w, "1, ", $w, "0"),
                    concat!("vpaddd ", $w, "3, ", $w, "3, ", $w, "2"),
                    concat!("vpaddd ", $w, "5, ", $w, "5, ", $w, "4"),
                    concat!("vpaddd ", $w, "7, ", $w, "7, ", $w, "6"),
                    concat!("vpaddd ", $w, "9, ", $w, "9, ", $w, "8"),
                    concat!("vpaddd ", $w, "11, ", $w, "11, ", $w, "10"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters.max(1) => _,
                    $(out($r) _,)*
                    options(nostack, nomem),
                );
            }
        }
    };
}

/// Twelve independent `vpdpbusd` accumulators per iteration.
macro_rules! dpbusd_loop {
    ($name:ident, $feat:literal, $w:literal, [$($r:tt),*]) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(iters: u64) {
            // SAFETY: as for the chains.
            unsafe {
                asm!(
                    "2:",
                    concat!("vpdpbusd ", $w, "0, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "1, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "2, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "3, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "4, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "5, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "6, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "7, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "8, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "9, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "10, ", $w, "14, ", $w, "15"),
                    concat!("vpdpbusd ", $w, "11, ", $w, "14, ", $w, "15"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters.max(1) => _,
                    $(out($r) _,)*
                    options(nostack, nomem),
                );
            }
        }
    };
}

chain_loop!(
    chain_ymm,
    "avx2",
    "ymm",
    [
        "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10",
        "ymm11", "ymm13", "ymm14", "ymm15"
    ]
);
chain_loop!(
    chain_zmm,
    "avx512f,avx512bw",
    "zmm",
    [
        "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11", "zmm13", "zmm14", "zmm15"
    ]
);
dpbusd_loop!(
    dpbusd_ymm,
    "avx512f,avx512vl,avx512vnni",
    "ymm",
    [
        "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11", "zmm14", "zmm15"
    ]
);
dpbusd_loop!(
    dpbusd_zmm,
    "avx512f,avx512vnni",
    "zmm",
    [
        "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",
        "zmm11", "zmm14", "zmm15"
    ]
);

impl MacLoop {
    /// Every loop, AVX2 first.
    pub const ALL: [MacLoop; 4] = [
        MacLoop::PairChainYmm,
        MacLoop::PairChainZmm,
        MacLoop::VpdpbusdYmm,
        MacLoop::VpdpbusdZmm,
    ];

    /// Stable name for reports.
    pub fn name(self) -> &'static str {
        match self {
            MacLoop::PairChainYmm => "vpmaddubsw-chain-ymm",
            MacLoop::PairChainZmm => "vpmaddubsw-chain-zmm",
            MacLoop::VpdpbusdYmm => "vpdpbusd-ymm",
            MacLoop::VpdpbusdZmm => "vpdpbusd-zmm",
        }
    }

    /// The accumulation model the sequence computes: the peak that bounds kernels of that model.
    pub fn accumulation(self) -> Accumulation {
        match self {
            MacLoop::PairChainYmm | MacLoop::PairChainZmm => Accumulation::PairSaturatingI16,
            MacLoop::VpdpbusdYmm | MacLoop::VpdpbusdZmm => Accumulation::Exact,
        }
    }

    /// Whether this CPU has the instructions.
    pub fn available(self) -> bool {
        use std::arch::is_x86_feature_detected as has;
        match self {
            MacLoop::PairChainYmm => has!("avx2"),
            MacLoop::PairChainZmm => has!("avx512f") && has!("avx512bw"),
            MacLoop::VpdpbusdYmm => has!("avx512f") && has!("avx512vl") && has!("avx512vnni"),
            MacLoop::VpdpbusdZmm => has!("avx512f") && has!("avx512vnni"),
        }
    }

    /// Every loop this CPU can run.
    pub fn supported() -> Vec<MacLoop> {
        MacLoop::ALL.into_iter().filter(|l| l.available()).collect()
    }

    /// Operations (2 per u8×i8 multiply-accumulate) in one iteration of [`MacLoop::run`].
    pub fn ops_per_iter(self) -> u64 {
        2 * match self {
            MacLoop::PairChainYmm => 6 * 32,
            MacLoop::PairChainZmm => 6 * 64,
            MacLoop::VpdpbusdYmm => 12 * 32,
            MacLoop::VpdpbusdZmm => 12 * 64,
        }
    }

    /// Runs `iters` iterations; `None` (nothing run) if the CPU lacks the instructions.
    pub fn run(self, iters: u64) -> Option<()> {
        if !self.available() {
            return None;
        }
        // SAFETY: `available` checked every feature each loop is compiled for.
        unsafe {
            match self {
                MacLoop::PairChainYmm => chain_ymm(iters),
                MacLoop::PairChainZmm => chain_zmm(iters),
                MacLoop::VpdpbusdYmm => dpbusd_ymm(iters),
                MacLoop::VpdpbusdZmm => dpbusd_zmm(iters),
            }
        }
        Some(())
    }
}
