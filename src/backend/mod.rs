//! Optimized backends: planned stages run the way a deployment engine runs them (weights packed
//! once, zero points folded, requantization fused into the kernel's epilogue, u8 out).
//! `qparity check --fused` puts every golden stage a backend implements through it and compares
//! bit for bit; what it does not implement is counted as a fallback.

pub mod kernel;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use kernel::KernelBackend;

use crate::ops::{Lowered, Output, Value};
use crate::Result;
use std::fmt;

/// An optimized backend.
pub trait Backend: fmt::Debug + Send + Sync {
    /// Name used in reports (`<flow>[<name>]` groups).
    fn name(&self) -> &'static str;
    /// Runs a planned stage on its inputs; `None` where the backend has no implementation (the
    /// caller falls back to the reference model and counts it).
    fn run(&self, stage: Lowered<'_>, inputs: &[&Value]) -> Result<Option<Output>>;
}

/// The backend for this CPU architecture, if there is one.
pub fn native() -> Option<&'static dyn Backend> {
    #[cfg(target_arch = "x86_64")]
    let native: Option<&'static dyn Backend> = Some(&x86::X86Backend);
    #[cfg(target_arch = "aarch64")]
    let native: Option<&'static dyn Backend> = {
        static ARM: std::sync::OnceLock<KernelBackend> = std::sync::OnceLock::new();
        Some(ARM.get_or_init(|| {
            KernelBackend::new("arm-fused", Box::new(crate::kernels::arm::Kernel::best()))
        }))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let native: Option<&'static dyn Backend> = None;
    native
}

/// Checks that a layer's input is the one it was planned for (data length, shape, zero point).
fn check_planned_input(
    l: &crate::ops::layer::IntegerLayer,
    input: &crate::ops::QTensor,
) -> Result<()> {
    if input.data.len() != input.shape.iter().product::<usize>()
        || input.zero_point != l.input_zero_point
    {
        return Err(crate::Error::shape(
            "layer input",
            "data length, shape or zero point differ from the planned input",
        ));
    }
    Ok(())
}
