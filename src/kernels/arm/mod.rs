//! aarch64 kernels (NEON, dotprod, i8mm).

use super::Int8Gemm;

/// The ARM kernels this CPU supports.
pub fn available() -> Vec<Box<dyn Int8Gemm>> {
    Vec::new()
}
