//! Integer GEMM kernels: u8 activations × i8 weights → i32 accumulators.
//!
//! Every kernel implements [`Int8Gemm`] and declares its [`Accumulation`] model. The
//! [`reference`](mod@reference) kernel is the plain, obviously correct implementation of both models; optimized
//! kernels (x86 AVX2 / AVX-512 VNNI, ARM NEON) must equal it bit for bit and are listed by
//! [`available`] so the property suites and fuzz targets cover each of them.

pub mod conformance;
pub mod depthwise;
pub mod isa;
pub mod pairs;
pub mod quant;
pub mod reference;

pub use isa::{Arch, Isa};
pub use quant::{Layout, Output, QConv, QGemm, QuantConv, QuantGemm, Requant};

#[cfg(target_arch = "x86_64")]
pub mod x86;

#[cfg(target_arch = "aarch64")]
pub mod arm;

/// How u8×i8 products are summed into the int32 accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accumulation {
    /// Every product is added exactly (int32, wrapping). What `vpdpbusd` (VNNI), QNNPACK and
    /// oneDNN on VNNI CPUs compute.
    Exact,
    /// Adjacent products along K are summed in pairs `(k0,k1), (k2,k3), …` and each pair is
    /// saturated to int16 before being added to the int32 accumulator (an odd K pairs the last
    /// element with a zero). What `vpmaddubsw` + `vpmaddwd` compute in FBGEMM's non-VNNI kernels.
    PairSaturatingI16,
}

/// A u8 × i8 → i32 matrix multiply.
///
/// `a` is M×K row-major (raw u8 activations, zero point not subtracted), `b` is N×K row-major
/// (raw i8 weights in PyTorch's `[out, in]` layout), `c` is M×N row-major and is overwritten with
/// `c[i][j] = Σ_k a[i][k]·b[j][k]` under [`Int8Gemm::accumulation`].
pub trait Int8Gemm: Send + Sync + std::fmt::Debug {
    /// Stable, human-readable name (used in test names and benchmark reports).
    fn name(&self) -> &'static str;
    /// The accumulation model this kernel implements.
    fn accumulation(&self) -> Accumulation;
    /// The instruction-set extension the kernel runs on (`None` for portable code).
    fn isa(&self) -> Option<Isa> {
        None
    }
    /// The kernel's GEMM with zero points and fused requantization, if it has one.
    fn quant_gemm(&self) -> Option<&dyn QuantGemm> {
        None
    }
    /// The kernel's conv2d with zero points and fused requantization, if it has one.
    fn quant_conv(&self) -> Option<&dyn QuantConv> {
        None
    }
    /// Computes `c = a · bᵀ`. Panics if a slice length disagrees with `m`, `n`, `k`
    /// (callers validate shapes; this is an internal contract).
    fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]);
}

/// A quantized layer's output computed end to end by an optimized backend (packed weights,
/// fused requantization), e.g. `backend::x86::run_convert_fx`.
#[derive(Debug, Clone)]
pub struct FusedOut {
    /// Requantized u8 values in PyTorch's layout (NCHW for conv).
    pub data: Vec<u8>,
    pub shape: Vec<usize>,
    /// The kernel that ran.
    pub kernel: &'static str,
}

/// Every kernel usable on this CPU: the reference kernels first, then each optimized kernel whose
/// CPU features are present.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    #[allow(unused_mut)]
    let mut v: Vec<Box<dyn Int8Gemm>> = vec![
        Box::new(reference::Reference::new(Accumulation::Exact)),
        Box::new(reference::Reference::new(Accumulation::PairSaturatingI16)),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend(x86::available());
    #[cfg(target_arch = "aarch64")]
    v.extend(arm::available());
    v
}
