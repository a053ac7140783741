//! `sigmoid`, `tanh` and `elu` on quantized tensors: the ops whose kernels call `exp`-family
//! functions.
//!
//! **fbgemm, x86, onednn** (and qnnpack where it has no kernel of its own) run ATen's kernels in
//! `aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp` through `cpu_kernel_vec`
//! (`aten/src/ATen/native/cpu/Loops.h`). The quantized elementwise kernels are only registered
//! for the AVX2 build (`REGISTER_DISPATCH`; an AVX-512 CPU falls back to it), so on every AVX2
//! or AVX-512 CPU `Vectorized<quint8>` has 32 lanes and the vector lambda takes blocks of 64
//! elements: in a row of `L` elements (input and output in the same memory layout coalesce into
//! one row of `numel`, in memory order), element `p` takes the vector body iff
//! `p < ⌊L/64⌋·64`, the rest the scalar tail. When the output's layout differs from the input's
//! (a channels-last input of an op that returns a contiguous tensor), no row is contiguous for
//! both and every element takes the scalar tail. With several threads and `numel ≥ 32768`,
//! `TensorIterator::for_each` cuts the range into per-thread chunks, each restarting the block
//! count; goldens run one thread, and this module models one thread.
//!
//! Per element (`s` the input scale as f32, `z` its zero point, [`sleef`] and [`glibc`] the
//! functions each path calls):
//!
//! - `sigmoid` (`qsigmoid.cpp: sigmoid_quantized_cpu` → `qsigmoid_kernel`, output qparams fixed
//!   to `(1/256, 0)`): body `x = f32((f32(q) − f32(z))·s)` (the 2-argument dequantize: no FMA),
//!   `y = f32(1/f32(1 + Sleef_expf8_u10(−x)))`, `q' = sat(RNE(f32(y·256)))`; tail `x` the same,
//!   `y = f32(1.0/(1.0 + (double)expf(−x)))` in double, `q' = quantize_val(1/256, 0, y)`.
//! - `tanh` (`qtanh.cpp: tanh_quantized_cpu` → `qtanh_kernel`, output qparams fixed to
//!   `(2/256, 128)`): body `x = fma(s, f32(q), f32(s·−f32(z)))` (the 3-argument dequantize),
//!   `q' = sat(RNE(f32(Sleef_tanhf8_u10(x)·128)) + 128)`; tail `x = f32(s·(q − z))`,
//!   `q' = quantize_val(2/256, 128, tanhf(x))`.
//! - `elu` (`qelu.cpp: quantized_elu` → `qelu_kernel`, the caller's output qparams `(so, zo)`,
//!   coefficients `α`, `sc`, `isc` as f32; the output is contiguous whatever the input's
//!   layout): body `x` the 3-argument dequantize, `y = f32((x > 0 ? x :
//!   f32(Sleef_expm1f8_u10(f32(x·isc))·α))·sc)`, `q' = sat(RNE(f32(y·f32(1.0/so))) + zo)`;
//!   tail `x = f32(s·(q − z))`, `y = x ≥ 0 ? f32(x·sc) : f32(f32(expm1f(f32(x·isc))·α)·sc)`,
//!   `q' = quantize_val(so, zo, y)`. torch 2.15 calls `expm1` (older sources `exp(·) − 1`).
//!   QNNPACK has no ELU: every engine runs this kernel.
//!
//! **qnnpack** (quint8) builds a 256-entry lookup table when the operator is created, with
//! `x = f32(s·f32(i − z))`, clamped to `[0, 255]` and rounded by `lrintf` (half to even):
//! `qnnpack/src/sigmoid.c` `v = f32(256/f32(1 + expf(−x)))`, `qnnpack/src/tanh.c`
//! `v = f32(f32(128·tanhf(x)) + 128)` (glibc `expf`, `tanhf`, no FMA). The output keeps the
//! input's memory format.
//!
//! **Reference flows** (`convert_to_reference_fx`, `_convert_to_reference_decomposed_fx`):
//! the flow's dequantize, the float op, then the flow's quantize with the observer's qparams.
//! Which `exp`, `expm1` or `tanh` the float op calls (SLEEF's AVX-512 or AVX2 build, MKL's `vsTanh`,
//! glibc, at PyTorch's choice of CPU capability and path) is not pinned, so qparity evaluates
//! the function exactly (f64) and bounds PyTorch's f32 result ([`Sigmoid::float_bound`],
//! [`Tanh::float_bound`], [`Elu::float_bound`]); an element is exact or honestly ambiguous.

use super::{expect_inputs, MemoryFormat, Meta, Op, OutQParams, Output, Plan, Predicted, Rule};
use super::{QTensor, Value};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::numerics::bound::{f32_down, f32_up, Pred};
use crate::numerics::qparams::validate_qparams;
use crate::numerics::quantize::aten;
use crate::numerics::transcendental::glibc::{self, ExpfBuild};
use crate::numerics::transcendental::sleef;
use crate::{Error, Result};
use std::fmt;

/// Elements per iteration of ATen's vectorized loop for `Vectorized<quint8>` (2 × 32 lanes).
const VECTOR_BLOCK: usize = 64;

/// Relative slack for the f64 evaluation of a float op's exact value (glibc's double `exp`,
/// `expm1` and `tanh` are within a few ulp of 2^-52; this is far above that and far below an
/// f32 ulp).
const F64_EVAL_SLACK: f64 = 1.0 / (1u64 << 40) as f64;

/// The smallest normal f32, 2^-126: absolute slack for results that underflow.
const F32_MIN_NORMAL: f64 = f32::MIN_POSITIVE as f64;

/// What an activation computes on each path; the plan around it is shared.
trait Activation: fmt::Debug + Send + Sync {
    /// The op's registry name.
    fn name(&self) -> &'static str;
    /// Checks the op's own parameters.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The output qparams the quantized kernel picks itself, or `None` when it takes the
    /// caller's.
    fn kernel_qparams(&self) -> Option<(f64, i64)>;
    /// Whether ATen's output keeps the input's memory format (else it is contiguous).
    fn keeps_memory_format(&self) -> bool;
    /// ATen: the inverse output scale the vector body's quantize multiplies by.
    fn vector_inv_scale(&self, out_scale: f64) -> f32;
    /// ATen vector body: the f32 fed to the vector quantize, with the steps for traces.
    fn vector_body(&self, q: u8, s: f32, z: i64) -> (f32, String);
    /// ATen scalar tail: the f32 fed to `quantize_val`, with the steps for traces.
    fn scalar_tail(&self, q: u8, s: f32, z: i64) -> (f32, String);
    /// QNNPACK's lookup-table entry before clamping and `lrintf`, if QNNPACK has a kernel.
    fn qnnpack_entry(&self, i: u8, s: f32, z: i64, expf: ExpfBuild) -> Option<(f32, String)>;
    /// The float op of the reference flows at `x`: its exact value (f64) and a bound on
    /// |PyTorch's f32 result − exact value|.
    fn float_op(&self, x: f32) -> (f64, f64);
    /// The rule lines of each path, for reports.
    fn describe_vector(&self) -> String;
    fn describe_scalar(&self) -> String;
    fn describe_qnnpack(&self) -> String;
    fn describe_float(&self) -> String;
}

/// `torch.sigmoid` / `nn.Sigmoid` on a quantized tensor. Output qparams `(1/256, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sigmoid;

impl Sigmoid {
    /// The fixed output qparams of the quantized kernels (`qsigmoid.cpp`, quint8).
    pub const QPARAMS: (f64, i64) = (0.00390625, 0);

    /// Bound on |PyTorch's float sigmoid − σ(x)| for an f32 `x`, given σ(x) = `y`.
    ///
    /// PyTorch's CPU `sigmoid_kernel` (`aten/src/ATen/native/cpu/UnaryOpsKernel.cpp`) computes
    /// `1/(1 + exp(−x))` in f32 on both of its paths; only the `exp` varies (SLEEF u10, at most
    /// 1 ulp, in the vector body; glibc `expf`, at most 0.502 ulp, in the tail). With
    /// `e = exp(−x)(1 + δ₁)`, `|δ₁| ≤ 2^-23`, then two roundings `(1 + δ₂)`, `(1 + δ₃)` with
    /// `|δ| ≤ 2^-24`: `ŷ/y = (1 + δ₃)/((1 + δ₁·e/(1 + e))(1 + δ₂))`, so
    /// `|ŷ − y| ≤ (2^-22 + 2^-44)·y`. Where `exp(−x)` overflows or the result is subnormal
    /// (`x < −87`) the error is below 2^-126 absolute. Hence `2^-22·y·(1 + 2^-20) + 2^-126`,
    /// plus the f64 evaluation slack.
    pub fn float_bound(y: f64) -> f64 {
        let rel = (2.0f64).powi(-22) * (1.0 + (2.0f64).powi(-20)) + F64_EVAL_SLACK;
        rel * y.abs() + F32_MIN_NORMAL
    }
}

impl Activation for Sigmoid {
    fn name(&self) -> &'static str {
        "sigmoid"
    }

    fn kernel_qparams(&self) -> Option<(f64, i64)> {
        Some(Self::QPARAMS)
    }

    fn keeps_memory_format(&self) -> bool {
        true
    }

    fn vector_inv_scale(&self, out_scale: f64) -> f32 {
        // `float inv_output_scale = 1.0 / output_scale;` (double division).
        (1.0 / out_scale) as f32
    }

    fn vector_body(&self, q: u8, s: f32, z: i64) -> (f32, String) {
        // Vectorized<quint8>::dequantize(scale, zero_point): (f32(q) − f32(z))·s.
        let x = (q as f32 - z as f32) * s;
        let e = sleef::expf_u10(-x);
        let y = 1.0 / (1.0 + e);
        (
            y,
            format!("x = {x:e} (no FMA), Sleef_expf8_u10(-x) = {e:e}, y = 1/(1+e) = {y:e}"),
        )
    }

    fn scalar_tail(&self, q: u8, s: f32, z: i64) -> (f32, String) {
        let x = aten::dequantize(q as i64, s as f64, z);
        // ATen's path is modelled on AVX2 CPUs only, where glibc runs its FMA build of expf.
        let e = glibc::expf(-x, ExpfBuild::Fma);
        let y = (1.0 / (1.0 + e as f64)) as f32;
        (
            y,
            format!("x = {x:e}, expf(-x) = {e:e}, y = f32(1.0/(1.0 + (double)e)) = {y:e}"),
        )
    }

    fn qnnpack_entry(&self, i: u8, s: f32, z: i64, expf: ExpfBuild) -> Option<(f32, String)> {
        let x = s * (i as i32 - z as i32) as f32;
        let e = glibc::expf(-x, expf);
        let v = 256.0f32 / (1.0 + e);
        Some((v, format!("x = {x:e}, expf(-x) = {e:e}, 256/(1+e) = {v:e}")))
    }

    fn float_op(&self, x: f32) -> (f64, f64) {
        let y = 1.0 / (1.0 + (-(x as f64)).exp());
        (y, Self::float_bound(y))
    }

    fn describe_vector(&self) -> String {
        "x = f32((f32(q) - f32(zp))·s) (no FMA), y = f32(1/f32(1 + Sleef_expf8_u10(-x))), \
         q' = sat(RNE(f32(y·256)))"
            .into()
    }

    fn describe_scalar(&self) -> String {
        "x = f32(s·(q - zp)), y = f32(1.0/(1.0 + (double)expf(-x))), q' = quantize_val(1/256, 0, y)"
            .into()
    }

    fn describe_qnnpack(&self) -> String {
        "LUT[i] = lrintf(clamp(f32(256/f32(1 + expf(-f32(s·f32(i - zp))))), 0, 255)), glibc expf"
            .into()
    }

    fn describe_float(&self) -> String {
        "σ(x) = 1/(1 + e^-x) evaluated in f64; PyTorch's f32 within 2^-22·σ + 2^-126".into()
    }
}

/// `torch.tanh` / `nn.Tanh` on a quantized tensor. Output qparams `(2/256, 128)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tanh;

impl Tanh {
    /// The fixed output qparams of the quantized kernels (`qtanh.cpp`, quint8).
    pub const QPARAMS: (f64, i64) = (0.0078125, 128);

    /// Bound on |PyTorch's float tanh − tanh(x)| for an f32 `x`, given tanh(x) = `y`.
    ///
    /// PyTorch's CPU `tanh` evaluates one library function per element: MKL's `vsTanh` in its
    /// high-accuracy mode (`aten/src/ATen/cpu/vml.h`, `VML_HA`), SLEEF's `tanhf` u10, or glibc's
    /// `tanhf`, each documented within 1 ulp (glibc's SunPro `tanhf` within 2 in its own test
    /// tables). Two ulps of an f32 result are at most `2^-22·|y|`; results below 2^-126 are
    /// `x` itself, within 2^-149. Hence `2^-22·|y|·(1 + 2^-20) + 2^-149`, plus the f64
    /// evaluation slack.
    pub fn float_bound(y: f64) -> f64 {
        let rel = (2.0f64).powi(-22) * (1.0 + (2.0f64).powi(-20)) + F64_EVAL_SLACK;
        rel * y.abs() + f64::from(f32::from_bits(1))
    }
}

impl Activation for Tanh {
    fn name(&self) -> &'static str {
        "tanh"
    }

    fn kernel_qparams(&self) -> Option<(f64, i64)> {
        Some(Self::QPARAMS)
    }

    fn keeps_memory_format(&self) -> bool {
        true
    }

    fn vector_inv_scale(&self, out_scale: f64) -> f32 {
        // `float inv_output_scale = 1.0 / output_scale;` with a float output scale.
        (1.0 / (out_scale as f32) as f64) as f32
    }

    fn vector_body(&self, q: u8, s: f32, z: i64) -> (f32, String) {
        // Vectorized<quint8>::dequantize(scale, zero_point, scale·(−zero_point)).
        let x = s.mul_add(q as f32, s * -(z as f32));
        let t = sleef::tanhf_u10(x);
        (
            t,
            format!("x = fma(s, q, s·-zp) = {x:e}, Sleef_tanhf8_u10(x) = {t:e}"),
        )
    }

    fn scalar_tail(&self, q: u8, s: f32, z: i64) -> (f32, String) {
        let x = aten::dequantize(q as i64, s as f64, z);
        let t = glibc::tanhf(x);
        (t, format!("x = {x:e}, tanhf(x) = {t:e}"))
    }

    fn qnnpack_entry(&self, i: u8, s: f32, z: i64, _expf: ExpfBuild) -> Option<(f32, String)> {
        let x = s * (i as i32 - z as i32) as f32;
        let t = glibc::tanhf(x);
        let v = 128.0f32 * t + 128.0;
        Some((
            v,
            format!("x = {x:e}, tanhf(x) = {t:e}, 128·t + 128 = {v:e}"),
        ))
    }

    fn float_op(&self, x: f32) -> (f64, f64) {
        let y = (x as f64).tanh();
        (y, Self::float_bound(y))
    }

    fn describe_vector(&self) -> String {
        "x = fma(s, f32(q), f32(s·-zp)), q' = sat(RNE(f32(Sleef_tanhf8_u10(x)·128)) + 128)".into()
    }

    fn describe_scalar(&self) -> String {
        "x = f32(s·(q - zp)), q' = quantize_val(2/256, 128, tanhf(x))".into()
    }

    fn describe_qnnpack(&self) -> String {
        "LUT[i] = lrintf(clamp(f32(f32(128·tanhf(f32(s·f32(i - zp)))) + 128), 0, 255)), glibc tanhf"
            .into()
    }

    fn describe_float(&self) -> String {
        "tanh(x) evaluated in f64; PyTorch's f32 within 2^-22·|tanh| + 2^-149".into()
    }
}

/// `quantized::elu(x, output_scale, output_zero_point, alpha, scale, input_scale)` (FX: `nnq.ELU`):
/// `ELU(x) = x·scale` for `x > 0`, `expm1(x·input_scale)·alpha·scale` otherwise, with the
/// caller's output qparams. The coefficients are PyTorch `Scalar`s, used as f32.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Elu {
    pub alpha: f64,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default = "one")]
    pub input_scale: f64,
}

fn one() -> f64 {
    1.0
}

impl Elu {
    /// `nn.ELU(alpha)`: scale and input scale 1.
    pub fn new(alpha: f64) -> Self {
        Elu {
            alpha,
            scale: 1.0,
            input_scale: 1.0,
        }
    }

    /// The f32 coefficients the kernels use (`Scalar::to<float>()`): alpha, scale, input scale.
    fn coefs(&self) -> (f32, f32, f32) {
        (
            self.alpha as f32,
            self.scale as f32,
            self.input_scale as f32,
        )
    }

    /// Bound on |PyTorch's float ELU − ELU(x)| for an f32 `x` on the negative branch, given
    /// the exact `y = f32(alpha)·f32(scale)·expm1(x·f32(input_scale))`.
    ///
    /// The float kernel (`aten/src/ATen/native/cpu/Elu.h`, scalar and vectorized) computes
    /// `expm1(f32(x·input_scale))·f32(alpha·scale)` in f32, with SLEEF's `expm1f` u10 or glibc's
    /// `expm1f` (each within 1 ulp, ≤ 2^-23 relative). Rounding `x·input_scale` moves the
    /// argument `u` by ≤ 2^-24·|u|, which moves `expm1(u)` for `u ≤ 0` by at most
    /// `e^u·|u|·2^-24 ≤ |expm1(u)|·2^-24`; the two products add 2^-24 each. Relative total
    /// `2^-23 + 3·2^-24` plus second-order terms, below 2^-21. Subnormal intermediates add
    /// at most a few 2^-149 scaled by `|alpha·scale|`: `2^-126·(1 + |alpha·scale|)` covers them.
    pub fn float_bound(&self, y: f64) -> f64 {
        let (alpha, scale, _) = self.coefs();
        let negcoef = (alpha as f64 * scale as f64).abs();
        ((2.0f64).powi(-21) + F64_EVAL_SLACK) * y.abs() + F32_MIN_NORMAL * (1.0 + negcoef)
    }
}

impl Activation for Elu {
    fn name(&self) -> &'static str {
        "elu"
    }

    fn validate(&self) -> Result<()> {
        let (alpha, scale, input_scale) = self.coefs();
        for (name, v) in [
            ("alpha", alpha),
            ("scale", scale),
            ("input_scale", input_scale),
        ] {
            if !v.is_finite() {
                return Err(Error::invalid(
                    "elu",
                    format!("{name} must be a finite f32, got {v}"),
                ));
            }
        }
        Ok(())
    }

    fn kernel_qparams(&self) -> Option<(f64, i64)> {
        None
    }

    fn keeps_memory_format(&self) -> bool {
        // `quantized_elu` allocates `_empty_affine_quantized(qx.sizes(), ...)` without a memory
        // format: the output is contiguous.
        false
    }

    fn vector_inv_scale(&self, out_scale: f64) -> f32 {
        // `float inv_o_scale = static_cast<float>(1.0 / o_scale);` with a float `o_scale`.
        (1.0 / (out_scale as f32) as f64) as f32
    }

    fn vector_body(&self, q: u8, s: f32, z: i64) -> (f32, String) {
        let (alpha, scale, input_scale) = self.coefs();
        let x = s.mul_add(q as f32, s * -(z as f32));
        let e = sleef::expm1f_u10(x * input_scale);
        let neg = e * alpha;
        let y = (if x > 0.0 { x } else { neg }) * scale;
        (
            y,
            format!(
                "x = fma(s, q, s·-zp) = {x:e}, Sleef_expm1f8_u10(x·input_scale) = {e:e}, \
                 ·alpha = {neg:e}, y = (x > 0 ? x : that)·scale = {y:e}"
            ),
        )
    }

    fn scalar_tail(&self, q: u8, s: f32, z: i64) -> (f32, String) {
        let (alpha, scale, input_scale) = self.coefs();
        let x = aten::dequantize(q as i64, s as f64, z);
        if x >= 0.0 {
            let y = x * scale;
            (y, format!("x = {x:e} >= 0, y = x·scale = {y:e}"))
        } else {
            let e = glibc::expm1f(x * input_scale);
            let y = e * alpha * scale;
            (
                y,
                format!("x = {x:e} < 0, expm1f(x·input_scale) = {e:e}, y = e·alpha·scale = {y:e}"),
            )
        }
    }

    fn qnnpack_entry(&self, _: u8, _: f32, _: i64, _: ExpfBuild) -> Option<(f32, String)> {
        // No QNNPACK kernel: every engine runs ATen's.
        None
    }

    fn float_op(&self, x: f32) -> (f64, f64) {
        let (alpha, scale, input_scale) = self.coefs();
        if x > 0.0 {
            // The kernel rounds x·scale to f32 once. The f64 product of two f32s is exact, and
            // the caller rounds `y ± err` outwards to f32, which brackets that one rounding:
            // no margin is needed (and with scale 1 the result is x itself).
            (x as f64 * scale as f64, 0.0)
        } else {
            let y = alpha as f64 * scale as f64 * (x as f64 * input_scale as f64).exp_m1();
            (y, self.float_bound(y))
        }
    }

    fn describe_vector(&self) -> String {
        "x = fma(s, f32(q), f32(s·-zp)), y = f32((x > 0 ? x : f32(Sleef_expm1f8_u10(f32(x·isc))·α))·sc), \
         q' = sat(RNE(f32(y·f32(1.0/so))) + zo)"
            .into()
    }

    fn describe_scalar(&self) -> String {
        "x = f32(s·(q - zp)), y = x >= 0 ? f32(x·sc) : f32(f32(expm1f(f32(x·isc))·α)·sc), \
         q' = quantize_val(so, zo, y)"
            .into()
    }

    fn describe_qnnpack(&self) -> String {
        "no QNNPACK kernel".into()
    }

    fn describe_float(&self) -> String {
        format!(
            "ELU(x) = x > 0 ? x·sc : α·sc·expm1(x·isc) (α {}, sc {}, isc {}) evaluated in f64; \
             PyTorch's f32 within 2^-21·|y| + 2^-126·(1 + |α·sc|) on the negative branch",
            self.alpha, self.scale, self.input_scale
        )
    }
}

/// `Op` for each activation: the shared plan around its [`Activation`] paths.
macro_rules! activation_ops {
    ($($op:ty),*) => {$(
        impl Op for $op {
            fn name(&self) -> &'static str {
                Activation::name(self)
            }

            fn plan<'a>(
                &'a self,
                ctx: &Ctx,
                inputs: &[Meta<'_>],
                out: Option<&OutQParams>,
            ) -> Result<Box<dyn Plan + 'a>> {
                plan_activation(self, ctx, inputs, out)
            }
        }
    )*};
}

activation_ops!(Sigmoid, Tanh, Elu);

/// How a plan computes each element.
#[derive(Debug)]
enum Path {
    /// ATen's kernel: elements at memory positions below `body` take the vector lambda.
    Aten {
        body: usize,
        vector: Box<[i64; 256]>,
        scalar: Box<[i64; 256]>,
    },
    /// QNNPACK's lookup table.
    Qnnpack { lut: Box<[i64; 256]> },
    /// A reference flow: dequantize, float op (bounded), quantize.
    Float { preds: Box<[Pred; 256]> },
}

#[derive(Debug)]
struct ActivationPlan<'a, A: Activation> {
    op: &'a A,
    flow: Flow,
    engine: Engine,
    expf: ExpfBuild,
    path: Path,
    /// Input scale (double, as PyTorch holds it) and zero point.
    in_qparams: (f64, i64),
    /// Output scale, zero point and the quantize node's clamp.
    out: OutQParams,
    shape: Vec<usize>,
    format: MemoryFormat,
}

/// Position in memory of each logical (NCHW) element of a tensor in `format`.
fn memory_position(shape: &[usize], format: MemoryFormat, i: usize) -> usize {
    match (format, shape) {
        (MemoryFormat::ChannelsLast, &[_, c, h, w]) => {
            let (x, rest) = (i % w, i / w);
            let (y, rest) = (rest % h, rest / h);
            let (ch, b) = (rest % c, rest / c);
            ((b * h + y) * w + x) * c + ch
        }
        _ => i,
    }
}

/// Whether a tensor's memory order is its logical order (contiguous, or channels-last with one
/// channel or one pixel).
fn memory_is_logical(shape: &[usize], format: MemoryFormat) -> bool {
    match (format, shape) {
        (MemoryFormat::ChannelsLast, &[_, c, h, w]) => c == 1 || h * w == 1,
        _ => true,
    }
}

fn plan_activation<'a, A: Activation>(
    op: &'a A,
    ctx: &Ctx,
    inputs: &[Meta<'_>],
    out: Option<&OutQParams>,
) -> Result<Box<dyn Plan + 'a>> {
    let name = op.name();
    op.validate()?;
    let input = expect_inputs(name, inputs, 1)?[0];
    let (scale, zero_point) = input.qparams(name)?;
    validate_qparams("input qparams", scale, zero_point, 0, 255)?;
    let s = scale as f32;
    let expf = ExpfBuild::for_cpu(ctx.cpu.avx2);
    let numel: usize = input.shape.iter().product();
    let (out, path) = if ctx.flow.is_integer() {
        let (out_scale, out_zp) = match (op.kernel_qparams(), out) {
            (Some(fixed), _) => fixed,
            (None, Some(o)) => (o.scale, o.zero_point),
            (None, None) => return Err(Error::invalid(name, "needs output qparams")),
        };
        validate_qparams("output qparams", out_scale, out_zp, 0, 255)?;
        let out = OutQParams {
            scale: out_scale,
            zero_point: out_zp,
            quant_min: 0,
            quant_max: 255,
        };
        let entry = |i: u8| op.qnnpack_entry(i, s, zero_point, expf);
        let path = if ctx.engine == Engine::Qnnpack && entry(0).is_some() {
            if !s.is_normal() {
                return Err(Error::invalid(
                    name,
                    format!("QNNPACK refuses the input scale {scale}: not a normal f32"),
                ));
            }
            let mut lut = Box::new([0i64; 256]);
            for (i, l) in lut.iter_mut().enumerate() {
                let (v, _) = entry(i as u8).expect("QNNPACK entry");
                *l = v.clamp(0.0, 255.0).round_ties_even() as i64;
            }
            Path::Qnnpack { lut }
        } else {
            if !ctx.cpu.avx2 {
                return Err(Error::invalid(
                    name,
                    "ATen's kernels on CPUs without AVX2 (DEFAULT capability) are not modelled",
                ));
            }
            let inv = op.vector_inv_scale(out_scale);
            let mut vector = Box::new([0i64; 256]);
            let mut scalar = Box::new([0i64; 256]);
            for q in 0..=255u8 {
                let (y, _) = op.vector_body(q, s, zero_point);
                vector[q as usize] = aten::quantize_avx2(y, inv, out_zp as i32, 0, 255) as i64;
                let (y, _) = op.scalar_tail(q, s, zero_point);
                scalar[q as usize] =
                    aten::quantize_scalar(y, out_scale as f32, out_zp as i32, 0, 255)
                        .ok_or_else(|| Error::invalid(name, "NaN before quantize_val"))?;
            }
            let same_layout =
                op.keeps_memory_format() || memory_is_logical(input.shape, input.memory_format);
            let body = if same_layout {
                numel / VECTOR_BLOCK * VECTOR_BLOCK
            } else {
                0
            };
            Path::Aten {
                body,
                vector,
                scalar,
            }
        };
        (out, path)
    } else {
        let out = *out.ok_or_else(|| Error::invalid(name, "needs output qparams"))?;
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        if out.quant_min > out.quant_max {
            return Err(Error::invalid(
                name,
                format!("quant range {}..{} is empty", out.quant_min, out.quant_max),
            ));
        }
        let (lo, hi) = ctx.flow.clamp(out.quant_min, out.quant_max);
        let mut preds = Box::new([Pred::Exact(0); 256]);
        for (q, p) in preds.iter_mut().enumerate() {
            let x = ctx.flow.dequantize(q as i64, scale, zero_point);
            let (y, err) = op.float_op(x);
            let quant = |v: f32| {
                ctx.flow
                    .quantize(v, out.scale, out.zero_point, lo, hi)
                    .ok_or_else(|| Error::invalid(name, "NaN before the quantize node"))
            };
            *p = Pred::from_ends(quant(f32_down(y - err))?, quant(f32_up(y + err))?);
        }
        (out, Path::Float { preds })
    };
    Ok(Box::new(ActivationPlan {
        op,
        flow: ctx.flow,
        engine: ctx.engine,
        expf,
        path,
        in_qparams: (scale, zero_point),
        out,
        shape: input.shape.to_vec(),
        format: input.memory_format,
    }))
}

impl<A: Activation> ActivationPlan<'_, A> {
    /// Whether logical element `i` takes ATen's vector body.
    fn in_body(&self, i: usize) -> bool {
        match self.path {
            Path::Aten { body, .. } => memory_position(&self.shape, self.format, i) < body,
            _ => false,
        }
    }
}

impl<A: Activation> Plan for ActivationPlan<'_, A> {
    fn rule(&self) -> Rule {
        let (s, z) = (self.out.scale, self.out.zero_point);
        match &self.path {
            Path::Aten { body, .. } => Rule::default()
                .with(
                    "path",
                    format!(
                        "ATen {} kernel ({}): elements at memory positions < {body} take the AVX2 \
                         vector body, the rest the scalar tail",
                        self.op.name(),
                        self.engine.name()
                    ),
                )
                .with("vector body", self.op.describe_vector())
                .with("scalar tail", self.op.describe_scalar())
                .with("output qparams", format!("({s}, {z})")),
            Path::Qnnpack { .. } => Rule::default()
                .with("path", "QNNPACK 256-entry lookup table")
                .with("table", self.op.describe_qnnpack())
                .with("output qparams", format!("({s}, {z})")),
            Path::Float { .. } => {
                let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
                Rule::default()
                    .with("float op", self.op.describe_float())
                    .with(
                        "quantize",
                        format!("{} ({s}, {z}), clamp {lo}..{hi}", self.flow.name()),
                    )
            }
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q: &QTensor = inputs[0].quantized("input")?;
        if q.shape != self.shape {
            return Err(Error::shape(
                self.op.name(),
                format!("planned for {:?}, got {:?}", self.shape, q.shape),
            ));
        }
        let values = match &self.path {
            Path::Aten { vector, scalar, .. } => {
                Predicted::exact(q.data.iter().enumerate().map(|(i, &v)| {
                    if self.in_body(i) {
                        vector[v as usize]
                    } else {
                        scalar[v as usize]
                    }
                }))
            }
            Path::Qnnpack { lut } => Predicted::exact(q.data.iter().map(|&v| lut[v as usize])),
            Path::Float { preds } => {
                Predicted::Ints(q.data.iter().map(|&v| preds[v as usize]).collect())
            }
        };
        let mut outs = vec![Output::new("int_repr", self.shape.clone(), values)];
        if self.flow.is_integer() && self.op.kernel_qparams().is_some() {
            outs.push(Output::new(
                "output_scale",
                vec![1],
                Predicted::Floats(vec![self.out.scale as f32]),
            ));
            outs.push(Output::new(
                "output_zero_point",
                vec![1],
                Predicted::exact([self.out.zero_point]),
            ));
        }
        Ok(outs)
    }

    fn trace(&self, inputs: &[&Value], output: usize, i: usize) -> Result<Vec<String>> {
        let q = inputs[0].quantized("input")?;
        if output != 0 {
            return Ok(vec![format!("rule: {}", self.rule())]);
        }
        let v = super::element_at(self.op.name(), &q.data, i)?;
        let (scale, zp) = self.in_qparams;
        let s = scale as f32;
        let mut lines = vec![format!("q = {v}, input scale {scale}, zero point {zp}")];
        match &self.path {
            Path::Aten { .. } => {
                let p = memory_position(&self.shape, self.format, i);
                if self.in_body(i) {
                    lines.push(format!("memory position {p}: vector body"));
                    lines.push(self.op.vector_body(v, s, zp).1);
                } else {
                    lines.push(format!("memory position {p}: scalar tail"));
                    lines.push(self.op.scalar_tail(v, s, zp).1);
                }
            }
            Path::Qnnpack { .. } => {
                if let Some((_, steps)) = self.op.qnnpack_entry(v, s, zp, self.expf) {
                    lines.push(steps);
                }
            }
            Path::Float { preds } => {
                let x = self.flow.dequantize(v as i64, scale, zp);
                let (y, err) = self.op.float_op(x);
                lines.push(format!(
                    "x = {x:e}, exact {y:e} ± {err:e}, prediction {:?}",
                    preds[v as usize]
                ));
            }
        }
        lines.push(format!("rule: {}", self.rule()));
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Isa};

    fn ctx(flow: Flow, engine: Engine) -> Ctx {
        Ctx {
            flow,
            engine,
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
        }
    }

    fn run(op: &dyn Op, ctx: &Ctx, x: &QTensor, out: Option<&OutQParams>) -> Vec<Output> {
        let v = Value::Quantized(x.clone());
        op.plan(ctx, &[v.meta()], out)
            .unwrap()
            .predict(&[&v])
            .unwrap()
    }

    fn ints(o: &Output) -> Vec<i64> {
        o.ints().unwrap().iter().map(|p| p.value()).collect()
    }

    #[test]
    fn memory_positions_follow_the_layout() {
        // [1, 2, 2, 3] channels-last: logical (c, h, w) sits at ((h·3 + w)·2 + c).
        let shape = [1, 2, 2, 3];
        let cl = MemoryFormat::ChannelsLast;
        assert_eq!(memory_position(&shape, cl, 0), 0);
        assert_eq!(memory_position(&shape, cl, 1), 2); // c0 h0 w1
        assert_eq!(memory_position(&shape, cl, 6), 1); // c1 h0 w0
        assert_eq!(memory_position(&shape, cl, 11), 11);
        assert!(memory_is_logical(&[2, 1, 3, 3], cl));
        assert!(!memory_is_logical(&shape, cl));
    }

    #[test]
    fn sigmoid_quantizes_to_its_fixed_qparams() {
        // scale 1/16, zero point 128: q = 128 is x = 0, σ = 0.5 → 128; large |x| saturates.
        let x = QTensor::new(vec![4], vec![0, 128, 255, 144], 0.0625, 128);
        for engine in Engine::ALL {
            let o = run(&Sigmoid, &ctx(Flow::ConvertFx, engine), &x, None);
            // σ(-8)·256 = 0.0858 → 0, σ(0)·256 = 128, σ(7.9375)·256 = 255.9 → 255,
            // σ(1)·256 = 187.1 → 187.
            assert_eq!(ints(&o[0]), [0, 128, 255, 187], "{engine:?}");
            assert_eq!(o[1].values, Predicted::Floats(vec![1.0 / 256.0]));
            assert_eq!(o[2].values, Predicted::exact([0]));
        }
    }

    #[test]
    fn sigmoid_body_and_tail_use_their_own_exp() {
        // Input scale f32 0x3e8d354c, zero point 133: q = 128 is x = -1.37899, where
        // 256·σ(x) lies next to 51.5; SLEEF's exp (body) gives 52, glibc's expf with the
        // double division (tail) gives 51. In a 65-element row positions 0..64 take the body.
        let s = f32::from_bits(0x3e8d354c);
        let x = QTensor::new(vec![65], vec![128; 65], s as f64, 133);
        let o = run(&Sigmoid, &ctx(Flow::ConvertFx, Engine::X86), &x, None);
        let v = ints(&o[0]);
        assert!(v[..64].iter().all(|&a| a == 52), "{v:?}");
        assert_eq!(v[64], 51);
        // Channels-last: the memory position decides, not the logical index. [1, 65, 1, 1]
        // has one pixel, so memory order is logical order; [1, 5, 13, 1] does not.
        let mut cl = QTensor::new(vec![1, 5, 13, 1], vec![128; 65], s as f64, 133);
        cl.memory_format = MemoryFormat::ChannelsLast;
        let v = ints(&run(&Sigmoid, &ctx(Flow::ConvertFx, Engine::Onednn), &cl, None)[0]);
        // The last byte in memory is channel 4 of the last pixel: logical index 4·13 + 12.
        let last = 4 * 13 + 12;
        assert_eq!(v[last], 51);
        assert_eq!(v.iter().filter(|&&a| a == 52).count(), 64);
        // QNNPACK's table uses glibc's expf in f32: 256/(1 + e) rounds to 52 here as well.
        let v = ints(&run(&Sigmoid, &ctx(Flow::ConvertFx, Engine::Qnnpack), &x, None)[0]);
        assert_eq!(v, vec![52; 65]);
    }

    #[test]
    fn sigmoid_reference_flow_is_exact_or_ambiguous() {
        let x = QTensor::new(vec![3], vec![100, 128, 160], 0.05, 128);
        let out = OutQParams {
            scale: 1.0 / 256.0,
            zero_point: 0,
            quant_min: 0,
            quant_max: 255,
        };
        let o = run(
            &Sigmoid,
            &ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm),
            &x,
            Some(&out),
        );
        // σ(-1.4)·256 = 50.64, σ(0)·256 = 128 exactly, σ(1.6)·256 = 212.997.
        assert_eq!(
            o[0].values,
            Predicted::Ints(vec![Pred::Exact(51), Pred::Exact(128), Pred::Exact(213)])
        );
        // The decomposed flow clamps to the observer's range.
        let narrow = OutQParams {
            quant_max: 127,
            ..out
        };
        let o = run(
            &Sigmoid,
            &ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm),
            &x,
            Some(&narrow),
        );
        assert_eq!(ints(&o[0]), [51, 127, 127]);
    }

    #[test]
    fn tanh_quantizes_to_its_fixed_qparams() {
        // scale 1/32, zero point 100: q = 100 is x = 0 → 128; q = 132 is x = 1,
        // 128·tanh(1) + 128 = 225.48 → 225; q = 68 is x = -1 → 30.52 → 31.
        let x = QTensor::new(vec![3], vec![100, 132, 68], 0.03125, 100);
        for engine in Engine::ALL {
            let o = run(&Tanh, &ctx(Flow::ConvertFx, engine), &x, None);
            assert_eq!(ints(&o[0]), [128, 225, 31], "{engine:?}");
            assert_eq!(o[1].values, Predicted::Floats(vec![2.0 / 256.0]));
            assert_eq!(o[2].values, Predicted::exact([128]));
        }
    }

    #[test]
    fn tanh_body_dequantizes_with_fma() {
        // Input scale f32 0x3f850adc, zero point 131: q = 128 is x = -3.1181817, where
        // 128·tanh(x) + 128 lies next to 0.5. The vector body (FMA dequantize, SLEEF) gives 1,
        // the scalar tail (glibc tanhf) and QNNPACK's table give 0.
        let s = f32::from_bits(0x3f850adc);
        let x = QTensor::new(vec![65], vec![128; 65], s as f64, 131);
        let v = ints(&run(&Tanh, &ctx(Flow::ConvertFx, Engine::Fbgemm), &x, None)[0]);
        assert!(v[..64].iter().all(|&a| a == 1), "{v:?}");
        assert_eq!(v[64], 0);
        let v = ints(&run(&Tanh, &ctx(Flow::ConvertFx, Engine::Qnnpack), &x, None)[0]);
        assert_eq!(v, vec![0; 65]);
    }

    #[test]
    fn tanh_reference_flow_bounds_the_float_op() {
        let out = OutQParams {
            scale: 2.0 / 256.0,
            zero_point: 128,
            quant_min: 0,
            quant_max: 255,
        };
        // q = 128 + k with scale 1/64: x = k/64, 128·tanh(x) + 128 far from .5 except where the
        // bound straddles a boundary; every element must be exact or an interval of width 1.
        let x = QTensor::new(vec![256], (0..=255).collect(), 1.0 / 64.0, 128);
        let o = run(
            &Tanh,
            &ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Qnnpack),
            &x,
            Some(&out),
        );
        let preds = o[0].ints().unwrap();
        for (k, p) in preds.iter().enumerate() {
            let exact = 128.0 * ((k as f64 - 128.0) / 64.0).tanh() + 128.0;
            match *p {
                Pred::Exact(v) => assert_eq!(v, exact.round_ties_even() as i64, "k {k}"),
                Pred::Ambiguous { lo, hi } => {
                    assert_eq!(hi - lo, 1);
                    assert!((exact - (lo as f64 + 0.5)).abs() < 1e-4, "k {k}");
                }
            }
        }
        // x = 0 gives exactly 128 (tanh(0) = 0, no error).
        assert_eq!(preds[128], Pred::Exact(128));
    }

    fn out_qparams(scale: f64, zero_point: i64) -> OutQParams {
        OutQParams {
            scale,
            zero_point,
            quant_min: 0,
            quant_max: 255,
        }
    }

    #[test]
    fn elu_by_hand() {
        // Input scale 1/2, zero point 128; output (1/4, 128). q = 130 is x = 1 → 4 steps up;
        // q = 126 is x = -1, expm1(-1) = -0.632 → -2.53 steps → 125; q = 0 is x = -64,
        // expm1 = -1 → 124; q = 255 is x = 63.5 → 382 → saturates at 255.
        let codes = [130u8, 128, 126, 0, 255];
        let out = out_qparams(0.25, 128);
        for n in [5, 64 * 5] {
            // 5 elements: all scalar tail; 320: all vector body.
            let x = QTensor::new(vec![n], codes.repeat(n / 5), 0.5, 128);
            for engine in Engine::ALL {
                let o = run(
                    &Elu::new(1.0),
                    &ctx(Flow::ConvertFx, engine),
                    &x,
                    Some(&out),
                );
                assert_eq!(
                    ints(&o[0])[..5],
                    [132, 128, 125, 124, 255],
                    "{engine:?} {n}"
                );
                assert_eq!(o.len(), 1, "the caller's qparams are not predicted outputs");
            }
        }
        // alpha 2, scale 2, input scale 0.5: x = -1 gives 4·expm1(-0.5) = -1.574 → -6.3 steps
        // → 122; x = 1 gives 2 → 136.
        let op = Elu {
            alpha: 2.0,
            scale: 2.0,
            input_scale: 0.5,
        };
        let x = QTensor::new(vec![2], vec![126, 130], 0.5, 128);
        let o = run(&op, &ctx(Flow::ConvertFx, Engine::X86), &x, Some(&out));
        assert_eq!(ints(&o[0]), [122, 136]);
    }

    #[test]
    fn elu_body_and_tail_and_the_output_layout() {
        let elu1 = |engine, x: &QTensor, out: &OutQParams| {
            ints(&run(&Elu::new(1.0), &ctx(Flow::ConvertFx, engine), x, Some(out))[0])
        };
        // Input scale f32 0x3b90f58b, zero point 159, output (f32 0x3b066000, 217): q = 128 is
        // x = -0.137138, whose exact output code is 154.4999989. The body (FMA dequantize, SLEEF
        // expm1f) gives 154, the tail (plain dequantize, glibc expm1f) 155.
        let (s, so) = (f32::from_bits(0x3b90f58b), f32::from_bits(0x3b066000));
        let out = out_qparams(so as f64, 217);
        let x = QTensor::new(vec![65], vec![128; 65], s as f64, 159);
        let v = elu1(Engine::Qnnpack, &x, &out);
        assert!(v[..64].iter().all(|&a| a == 154), "{v:?}");
        assert_eq!(v[64], 155);
        // The output is contiguous: a channels-last input shares no contiguous row with it, so
        // every element takes the tail, unless its memory order is the logical one.
        let mut cl = QTensor::new(vec![1, 5, 13, 1], vec![128; 65], s as f64, 159);
        cl.memory_format = MemoryFormat::ChannelsLast;
        let v = elu1(Engine::Fbgemm, &cl, &out);
        assert_eq!(v, vec![155; 65]);
        cl.shape = vec![1, 65, 1, 1];
        let v = elu1(Engine::Fbgemm, &cl, &out);
        assert_eq!(v.iter().filter(|&&a| a == 154).count(), 64);
        // Input scale f32 0x3daf2270, zero point 150, output (f32 0x3ba9e000, 186): x = -1.88133,
        // exact code 22.50000034; SLEEF's expm1f (body) rounds to 23 where glibc's gives 22.
        let (s, so) = (f32::from_bits(0x3daf2270), f32::from_bits(0x3ba9e000));
        let out = out_qparams(so as f64, 186);
        let x = QTensor::new(vec![65], vec![128; 65], s as f64, 150);
        let v = elu1(Engine::Onednn, &x, &out);
        assert!(v[..64].iter().all(|&a| a == 23), "{v:?}");
        assert_eq!(v[64], 22);
    }

    #[test]
    fn elu_reference_flow_is_exact_or_ambiguous() {
        let out = out_qparams(1.0 / 64.0, 160);
        let x = QTensor::new(vec![256], (0..=255).collect(), 1.0 / 32.0, 128);
        for (flow, alpha) in [
            (Flow::ConvertToReferenceFx, 1.0),
            (Flow::ConvertToReferenceDecomposedFx, 0.7),
        ] {
            let o = run(&Elu::new(alpha), &ctx(flow, Engine::Fbgemm), &x, Some(&out));
            let preds = o[0].ints().unwrap();
            for (q, p) in preds.iter().enumerate() {
                let xv = (q as f64 - 128.0) / 32.0;
                let y = if xv > 0.0 {
                    xv
                } else {
                    (alpha as f32) as f64 * xv.exp_m1()
                };
                let exact = (y * 64.0 + 160.0).clamp(0.0, 255.0);
                match *p {
                    Pred::Exact(v) => assert_eq!(v, exact.round_ties_even() as i64, "q {q}"),
                    Pred::Ambiguous { lo, hi } => {
                        assert_eq!(hi - lo, 1, "q {q}");
                        assert!((exact - (lo as f64 + 0.5)).abs() < 1e-4, "q {q}");
                    }
                }
                // Positive inputs are exact: x·1 is x.
                if q > 128 {
                    assert!(matches!(p, Pred::Exact(_)), "q {q}");
                }
            }
        }
    }

    /// What `qparity explain` shows: every path's rule names its formula and the function it
    /// calls, and an element's trace names the path it took and that function's value.
    #[test]
    fn rules_and_traces_name_each_path() {
        struct Texts {
            name: &'static str,
            body: [&'static str; 2],
            tail: [&'static str; 2],
            table: Option<[&'static str; 2]>,
            float: &'static str,
        }
        let x = QTensor::new(vec![65], vec![100; 65], 0.05, 128);
        let v = Value::Quantized(x);
        let elu = Elu::new(1.0);
        let out = out_qparams(1.0 / 64.0, 160);
        let cases: [(&dyn Op, Option<&OutQParams>, Texts); 3] = [
            (
                &Sigmoid,
                None,
                Texts {
                    name: "sigmoid",
                    body: [
                        "y = f32(1/f32(1 + Sleef_expf8_u10(-x)))",
                        "Sleef_expf8_u10(-x) = ",
                    ],
                    tail: ["(double)expf(-x)", "y = f32(1.0/(1.0 + (double)e)) = "],
                    table: Some([
                        "f32(256/f32(1 + expf(-f32(s·f32(i - zp)))))",
                        "256/(1+e) = ",
                    ]),
                    float: "σ(x) = 1/(1 + e^-x) evaluated in f64",
                },
            ),
            (
                &Tanh,
                None,
                Texts {
                    name: "tanh",
                    body: [
                        "sat(RNE(f32(Sleef_tanhf8_u10(x)·128)) + 128)",
                        "Sleef_tanhf8_u10(x) = ",
                    ],
                    tail: ["quantize_val(2/256, 128, tanhf(x))", "tanhf(x) = "],
                    table: Some([
                        "f32(f32(128·tanhf(f32(s·f32(i - zp)))) + 128)",
                        "128·t + 128 = ",
                    ]),
                    float: "tanh(x) evaluated in f64",
                },
            ),
            (
                &elu,
                Some(&out),
                Texts {
                    name: "elu",
                    body: [
                        "f32(Sleef_expm1f8_u10(f32(x·isc))·α)",
                        "Sleef_expm1f8_u10(x·input_scale) = ",
                    ],
                    tail: [
                        "f32(f32(expm1f(f32(x·isc))·α)·sc)",
                        "expm1f(x·input_scale) = ",
                    ],
                    table: None,
                    float: "α·sc·expm1(x·isc) (α 1, sc 1, isc 1) evaluated in f64",
                },
            ),
        ];
        for (op, integer_out, t) in cases {
            let plan = |flow, engine, out| op.plan(&ctx(flow, engine), &[v.meta()], out).unwrap();
            let has = |text: &str, parts: &[&str]| {
                for p in parts {
                    assert!(text.contains(p), "{}: {p:?} not in {text:?}", t.name);
                }
            };
            let aten = plan(Flow::ConvertFx, Engine::Fbgemm, integer_out);
            let kernel = format!("ATen {} kernel (fbgemm)", t.name);
            has(&aten.rule().to_string(), &[&kernel, t.body[0], t.tail[0]]);
            let body = aten.trace(&[&v], 0, 0).unwrap().join("\n");
            has(&body, &["memory position 0: vector body", t.body[1]]);
            let tail = aten.trace(&[&v], 0, 64).unwrap().join("\n");
            has(&tail, &["memory position 64: scalar tail", t.tail[1]]);
            let qnnpack = plan(Flow::ConvertFx, Engine::Qnnpack, integer_out);
            match t.table {
                Some([rule, step]) => {
                    has(
                        &qnnpack.rule().to_string(),
                        &["QNNPACK 256-entry lookup table", rule],
                    );
                    has(&qnnpack.trace(&[&v], 0, 3).unwrap().join("\n"), &[step]);
                }
                // No QNNPACK kernel: ATen's runs.
                None => has(
                    &qnnpack.rule().to_string(),
                    &[&format!("ATen {} kernel", t.name)],
                ),
            }
            let float = plan(Flow::ConvertToReferenceFx, Engine::Fbgemm, Some(&out));
            has(
                &float.rule().to_string(),
                &[t.float, "(0.015625, 160), clamp 0..255"],
            );
            has(
                &float.trace(&[&v], 0, 0).unwrap().join("\n"),
                &["exact ", "prediction Exact("],
            );
        }
    }

    /// Each float bound is wide enough to reach a rounding tie that lies between one and two
    /// f32 ulps of the exact value away (0.6–0.8 of the bound): the reference flow must call
    /// that element ambiguous, where a bound of zero would decide it. Inputs found by a search
    /// over input scales; the exact output codes are 127.5000234 (sigmoid), 62.4999876 (tanh)
    /// and 129.5000090 (ELU).
    #[test]
    fn float_bounds_reach_ties_one_to_two_ulps_away() {
        let cases: [(&dyn Op, u32, u8, OutQParams, i64); 3] = [
            (&Sigmoid, 0x3bff_fd45, 127, out_qparams(1.0 / 256.0, 0), 127),
            (&Tanh, 0x3d08_2529, 111, out_qparams(2.0 / 256.0, 128), 62),
            (
                &Elu::new(1.0),
                0x3d30_c42a,
                113,
                out_qparams(1.0 / 64.0, 160),
                129,
            ),
        ];
        for (op, scale_bits, q, out, lo) in cases {
            let x = QTensor::new(vec![1], vec![q], f32::from_bits(scale_bits) as f64, 128);
            let o = run(
                op,
                &ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm),
                &x,
                Some(&out),
            );
            assert_eq!(
                o[0].ints().unwrap(),
                [Pred::Ambiguous { lo, hi: lo + 1 }],
                "{}",
                op.name()
            );
        }
    }

    /// ELU's positive branch rounds `x·scale` to f32 once. Here `x = 44/32`,
    /// `scale = f32 0x3f868ba3`: the exact product is 92.500001 output steps (1/64), the f32
    /// product exactly 92.5, which rounds half to even to 92. The prediction must admit 92
    /// (taking the exact product alone would claim 93). With scale 1 there is no rounding:
    /// inputs exactly on a tie stay exact, half to even.
    #[test]
    fn elu_positive_branch_brackets_the_f32_rounding_of_x_times_scale() {
        let scale = f32::from_bits(0x3f86_8ba3);
        let op = Elu {
            scale: scale as f64,
            ..Elu::new(1.0)
        };
        let x = QTensor::new(vec![1], vec![172], 1.0 / 32.0, 128);
        let y32 = (44.0f32 / 32.0) * scale;
        assert_eq!(y32 * 64.0, 92.5);
        let o = run(
            &op,
            &ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm),
            &x,
            Some(&out_qparams(1.0 / 64.0, 0)),
        );
        assert_eq!(o[0].ints().unwrap(), [Pred::Ambiguous { lo: 92, hi: 93 }]);
        // scale 1, x = 1/128, 2/128, 3/128 with output steps of 1/64 around 160: 160.5, 161,
        // 161.5 steps.
        let x = QTensor::new(vec![3], vec![129, 130, 131], 1.0 / 128.0, 128);
        let o = run(
            &Elu::new(1.0),
            &ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm),
            &x,
            Some(&out_qparams(1.0 / 64.0, 160)),
        );
        assert_eq!(
            o[0].ints().unwrap(),
            [Pred::Exact(160), Pred::Exact(161), Pred::Exact(162)]
        );
    }

    #[test]
    fn elu_params_and_errors() {
        let p: Elu = serde_json::from_value(serde_json::json!({
            "alpha": 0.5, "output_scale": 0.1, "output_zero_point": 3
        }))
        .unwrap();
        assert_eq!(p, Elu::new(0.5));
        let x = Value::Quantized(QTensor::new(vec![2], vec![1, 2], 0.1, 0));
        let c = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let out = out_qparams(0.1, 0);
        for bad in [f64::NAN, f64::INFINITY, 1e39] {
            let op = Elu::new(bad);
            let e = op.plan(&c, &[x.meta()], Some(&out)).unwrap_err();
            assert!(e.to_string().contains("alpha"), "{e}");
            let op = Elu {
                input_scale: bad,
                ..Elu::new(1.0)
            };
            assert!(op.plan(&c, &[x.meta()], Some(&out)).is_err());
        }
        // The caller's output qparams are required and checked.
        let e = Elu::new(1.0).plan(&c, &[x.meta()], None).unwrap_err();
        assert!(e.to_string().contains("output qparams"), "{e}");
        assert!(Elu::new(1.0)
            .plan(&c, &[x.meta()], Some(&out_qparams(f64::NAN, 0)))
            .is_err());
        assert!(Elu::new(1.0)
            .plan(&c, &[x.meta()], Some(&out_qparams(0.1, 256)))
            .is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let x = Value::Quantized(QTensor::new(vec![2], vec![1, 2], 0.1, 3));
        assert!(Sigmoid.plan(&c, &[], None).is_err());
        assert!(Sigmoid.plan(&c, &[x.meta(), x.meta()], None).is_err());
        let nan = Value::Quantized(QTensor::new(vec![2], vec![1, 2], f64::NAN, 3));
        assert!(Sigmoid.plan(&c, &[nan.meta()], None).is_err());
        let zero = Value::Quantized(QTensor::new(vec![2], vec![1, 2], 0.0, 3));
        assert!(Sigmoid.plan(&c, &[zero.meta()], None).is_err());
        // Reference flows need the observer's qparams.
        let r = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
        assert!(Sigmoid.plan(&r, &[x.meta()], None).is_err());
        // The quantize node's range: one value is a range, min above max is not.
        let d = ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm);
        let range = |quant_min, quant_max| OutQParams {
            quant_min,
            quant_max,
            ..out_qparams(1.0 / 256.0, 0)
        };
        let o = run(
            &Sigmoid,
            &d,
            &QTensor::new(vec![2], vec![1, 2], 0.1, 3),
            Some(&range(7, 7)),
        );
        assert_eq!(o[0].ints().unwrap(), [Pred::Exact(7), Pred::Exact(7)]);
        let e = Sigmoid
            .plan(&d, &[x.meta()], Some(&range(8, 7)))
            .unwrap_err();
        assert!(e.to_string().contains("8..7 is empty"), "{e}");
        // QNNPACK refuses subnormal input scales.
        let tiny = Value::Quantized(QTensor::new(vec![2], vec![1, 2], 1e-40, 3));
        let q = ctx(Flow::ConvertFx, Engine::Qnnpack);
        assert!(Sigmoid.plan(&q, &[tiny.meta()], None).is_err());
        // Without AVX2 ATen runs kernels qparity does not model.
        let old = Ctx {
            cpu: CpuFeatures {
                avx2: false,
                ..CpuFeatures::AVX2
            },
            ..c
        };
        assert!(Sigmoid.plan(&old, &[x.meta()], None).is_err());
    }
}
