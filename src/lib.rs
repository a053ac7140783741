//! qparity: an executable specification of PyTorch's CPU int8 quantization numerics.
//!
//! Layers, bottom up (data flows down, never back up):
//! 1. numeric primitives: [`numerics`] (qparams, observers, quantize, requantization);
//! 2. geometry of windowed ops: [`geometry`];
//! 3. integer kernels: [`kernels`];
//! 4. ops: [`ops`];
//! 5. engines and convert flows: [`engine`];
//! 6. optimized backends: [`backend`];
//! 7. goldens and comparison: [`golden`], [`check`], with explanations in [`explain`] and
//!    reproduction scripts in [`repro`];
//! 8. outside runtimes checked against PyTorch: [`runtime`] (trait, JSON-lines protocol, causes);
//! 9. drivers: `gen` (feature `gen`: case generation shared by tests, fuzz targets and live runs).
//!
//! Unsafe code is confined to the SIMD kernels under [`kernels`].
#![deny(unsafe_code)]

pub mod backend;
pub mod check;
pub mod engine;
pub mod error;
pub mod explain;
#[cfg(feature = "gen")]
pub mod gen;
pub mod geometry;
pub mod golden;
#[allow(unsafe_code)]
pub mod kernels;
pub mod numerics;
pub mod ops;
pub mod repro;
pub mod runner;
pub mod runtime;
pub mod tensor;

pub use error::{Error, Result};
