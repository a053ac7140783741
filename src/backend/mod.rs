//! Optimized backends: planned stages run the way a deployment engine runs them (weights packed
//! once, zero points folded, requantization fused into the kernel's epilogue, u8 out).
//! `qparity check --fused` puts every golden stage a backend implements through it and compares
//! bit for bit; what it does not implement is counted as a fallback.

pub mod kernel;
pub mod portable;
pub mod window;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use kernel::KernelBackend;

use crate::ops::{Lowered, MemoryFormat, Meta, Output, Predicted, Value};
use crate::{Error, Result};
use std::fmt;

/// An optimized backend.
pub trait Backend: fmt::Debug + Send + Sync {
    /// Name used in reports (`<flow>[<name>]` groups).
    fn name(&self) -> &'static str;

    /// Prepares a planned stage for inputs with these shapes and qparams, once: weights packed,
    /// tables built, windows laid out. `None` where the backend has no implementation (the
    /// caller falls back to the reference model and counts it).
    fn prepare(&self, stage: Lowered<'_>, inputs: &[Meta<'_>])
        -> Result<Option<Box<dyn Prepared>>>;

    /// As [`Backend::prepare`], for a runner that keeps every activation in memory order: each
    /// input's codes as its `memory_format` lays them out (NHWC for a 4-D channels-last tensor),
    /// the output written in `out_format`'s order. `None`: not implemented in memory order.
    fn prepare_in_memory(
        &self,
        stage: Lowered<'_>,
        inputs: &[Meta<'_>],
        out_format: MemoryFormat,
    ) -> Result<Option<Box<dyn Prepared>>> {
        let _ = (stage, inputs, out_format);
        Ok(None)
    }

    /// Prepares and runs a planned stage once: its `int_repr` output, or `None` where the backend
    /// has no implementation.
    fn run(&self, stage: Lowered<'_>, inputs: &[&Value]) -> Result<Option<Output>> {
        let metas: Vec<Meta<'_>> = inputs.iter().map(|v| v.meta()).collect();
        let Some(p) = self.prepare(stage, &metas)? else {
            return Ok(None);
        };
        let shape = p.out_shape().to_vec();
        if p.f32_output() {
            let mut out = vec![0f32; shape.iter().product()];
            p.run_f32(stage, inputs, &mut out)?;
            return Ok(Some(Output::new("output", shape, Predicted::Floats(out))));
        }
        let mut out = vec![0u8; shape.iter().product()];
        p.run(stage, inputs, &mut out)?;
        Ok(Some(Output::new(
            "int_repr",
            shape,
            Predicted::exact(out.into_iter().map(i64::from)),
        )))
    }
}

/// A stage prepared by a [`Backend`]: runs on inputs of the shapes and qparams it was prepared
/// for, writing u8 codes in logical (row-major) order.
pub trait Prepared: fmt::Debug + Send + Sync {
    /// What runs (a kernel name, `lut`, `window-max`, …).
    fn kernel(&self) -> &'static str;
    /// The output shape.
    fn out_shape(&self) -> &[usize];
    /// Runs on `inputs` (`stage`: the plan it was prepared from, for the decisions it keeps),
    /// writing `out` (`out_shape` elements).
    fn run(&self, stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()>;
    /// Whether the output is f32 ([`Prepared::run_f32`]) rather than u8 codes.
    fn f32_output(&self) -> bool {
        false
    }
    /// Runs a stage with an f32 output.
    fn run_f32(&self, stage: Lowered<'_>, inputs: &[&Value], out: &mut [f32]) -> Result<()> {
        let _ = (stage, inputs, out);
        Err(Error::invalid(self.kernel(), "has no f32 output"))
    }
}

/// Checks an output buffer's length against a prepared stage's shape.
fn check_out(what: &str, shape: &[usize], out: &[u8]) -> Result<()> {
    if out.len() != shape.iter().product::<usize>() {
        return Err(Error::shape(
            what,
            format!("output buffer of {} for shape {shape:?}", out.len()),
        ));
    }
    Ok(())
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
