//! Optimized backends: quantized layers run the way a deployment engine runs them (weights packed
//! once, zero points folded, requantization fused), for `qparity check --fused`.

#[cfg(target_arch = "x86_64")]
pub mod x86;
