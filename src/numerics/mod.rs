//! Numeric primitives: dtypes and quant ranges, the qparam choosers, observers, quantize /
//! dequantize / fake-quantize, and the integer requantization rules. Everything above builds on
//! these; nothing here knows about kernels, ops or engines.

pub mod bound;
pub mod observer;
pub mod qparams;
pub mod quantize;
pub mod requant;
pub mod sum;
#[cfg(test)]
pub(crate) mod test_rng;
pub mod transcendental;
