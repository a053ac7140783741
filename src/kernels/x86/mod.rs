//! x86-64 kernels (AVX2, AVX-512 VNNI).

use super::Int8Gemm;

/// The x86 kernels this CPU supports.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    Vec::new()
}
