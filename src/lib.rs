//! qparity: an executable specification of PyTorch's CPU int8 quantization numerics.
//!
//! Layers, bottom up (data flows down, never back up):
//! 1. numeric primitives: [`qparams`], [`observer`], [`quantize`];
//! 2. integer kernels: [`kernels`];
//! 3. requantization and ops: [`requant`], [`ops`];
//! 4. engines and convert flows: [`engine`], [`flow`];
//! 5. goldens and comparison: [`golden`], [`check`], with explanations in [`explain`] and
//!    reproduction scripts in [`repro`];
//! 6. drivers: [`gen`] (case generation shared by tests, fuzz targets and live runs).
//!
//! Unsafe code is confined to the SIMD kernels under [`kernels`].
#![deny(unsafe_code)]

pub mod check;
pub mod engine;
pub mod error;
pub mod explain;
pub mod flow;
pub mod gen;
pub mod golden;
#[allow(unsafe_code)]
pub mod kernels;
pub mod observer;
pub mod ops;
pub mod qparams;
pub mod quantize;
pub mod repro;
pub mod requant;
pub mod tensor;

pub use error::{Error, Result};
