//! `quantized::add` and `quantized::add_relu` of two quint8 tensors (FX: `operator.add` /
//! `torch.add` between quantized activations, `add` + `relu` fused to `add_relu`), with the output
//! qparams the op is called with.
//!
//! Kernels (`aten/src/ATen/native/quantized/cpu/BinaryOps.cpp: qadd`):
//! - **qnnpack, equal shapes**: `qnnpack_add` → QNNPACK's `q8vadd` (`qnnpack/src/add.c`,
//!   parameters from `pytorch_qnnp_compute_add_quantization_params` in
//!   `qnnpack/src/qnnpack/requantization.h`, kernel `qnnpack/src/q8vadd/sse2.c`), fixed point:
//!   `ra = f32(f32(sa)/f32(so))`, `rb` likewise, `shift = 21 − exponent(max(ra, rb))`,
//!   `ma = RNE(ra·2^shift)`, `mb = RNE(rb·2^shift)`, `acc = ma·qa + mb·qb − (ma·za + mb·zb)`
//!   (int32), `acc >> shift` rounded half away from zero, `+ zo`, clamped to `[relu ? zo : 0, 255]`.
//!   `qb` is first made contiguous in `qa`'s memory format, so elements pair up in logical order.
//!   Errors (PyTorch raises them): a ratio outside `[2^-14, 2^8)`, a subnormal f32 scale, no
//!   elements per batch row, `add_relu` with `zo = 255` (empty output range), a 0-d input.
//! - **every other case** (fbgemm, x86, onednn; qnnpack with broadcasting): ATen's
//!   `qadd_kernel` (`kernels/QuantizedOpKernels.cpp`) over a `TensorIterator`. The op allocates
//!   the output with `qa`'s shape and `qa.suggest_memory_format()`; when the inputs broadcast to
//!   a larger shape, `TensorIterator` resizes it (dense in its iteration order). Vector
//!   lambda: `c = f32(fma(sa, qa, sa·(−za)) + fma(sb, qb, sb·(−zb)))`, quantized with
//!   `QuantizeAvx2` and `f32(1/f32(so))`; scalar lambda: `c = f32(sa·(qa − za)) + f32(sb·(qb − zb))`,
//!   quantized with `quantize_val`; `add_relu` takes `max(c, 0)` first. Which element takes
//!   which lambda: [`super::aten_vec::Lanes`].
//!
//! Reference flows: the flow's dequantize of both inputs, the float `a + b` (broadcasting both
//! ways; one f32 rounding, exact), `relu` for `add_relu`, then the flow's quantize node.

use super::aten_vec::{self, broadcast_indices, Dequant, Lanes, LoopOut, Operand};
use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Predicted, Rule};
use super::{QTensor, Value};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// `quantized::add` (`relu: false`) or `quantized::add_relu` (`relu: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add {
    pub relu: bool,
}

impl Add {
    fn op_name(&self) -> &'static str {
        if self.relu {
            "add_relu"
        } else {
            "add"
        }
    }
}

/// Validates the two quantized inputs of a binary op and the output qparams; returns the
/// inputs' qparams.
pub(crate) fn binary_inputs<'m, 'a>(
    op: &str,
    inputs: &'m [Meta<'a>],
    out: Option<&OutQParams>,
) -> Result<(&'m Meta<'a>, &'m Meta<'a>, OutQParams)> {
    let ins = expect_inputs(op, inputs, 2)?;
    for (k, m) in ins.iter().enumerate() {
        let (s, z) = m.qparams(op)?;
        validate_qparams(&format!("{op} input {k} qparams"), s, z, 0, 255)?;
        aten_vec::alloc_strides(m.shape, m.memory_format)?;
    }
    Ok((&ins[0], &ins[1], checked_out(op, out)?))
}

/// The output qparams of a quint8 elementwise op, validated.
pub(crate) fn checked_out(op: &str, out: Option<&OutQParams>) -> Result<OutQParams> {
    let out = *expect_out(op, out)?;
    validate_qparams(
        &format!("{op} output qparams"),
        out.scale,
        out.zero_point,
        0,
        255,
    )?;
    if out.quant_min > out.quant_max {
        return Err(Error::invalid(op, "output quant_min exceeds quant_max"));
    }
    Ok(out)
}

impl Op for Add {
    fn name(&self) -> &'static str {
        self.op_name()
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let op = self.op_name();
        let (a, b, out) = binary_inputs(op, inputs, out)?;
        let (sa, za) = a.qparams(op)?;
        let (sb, zb) = b.qparams(op)?;
        let shape = aten_vec::broadcast_shape(op, a.shape, b.shape)?;
        let empty_batch = a.shape.first() == Some(&0);
        let kernel = if !ctx.flow.is_integer() {
            Kernel::Float
        } else if ctx.engine == Engine::Qnnpack && a.shape == b.shape && !empty_batch {
            let (so, zo) = (out.scale, out.zero_point);
            Kernel::Qnnpack(QnnpackAdd::new(a.shape, sa, za, sb, zb, so, zo, self.relu)?)
        } else {
            let qa = Operand::of(a)?;
            let qb = Operand::of(b)?;
            // The op allocates its output with qa's shape and suggested memory format; when qa
            // itself is broadcast, TensorIterator resizes that output to the broadcast shape.
            let given = Operand::new(a.shape, qa.suggest_memory_format())?;
            let out_loop = if shape == a.shape {
                LoopOut::Given(&given)
            } else {
                LoopOut::Allocated(&shape)
            };
            Kernel::Aten {
                lanes: Lanes::new(op, out_loop, &[qa, qb], &ctx.cpu)?,
                inv: aten_vec::inv32(out.scale),
            }
        };
        Ok(Box::new(AddPlan {
            op: *self,
            flow: ctx.flow,
            kernel,
            b_index: broadcast_indices(&shape, b.shape)?,
            a_index: broadcast_indices(&shape, a.shape)?,
            out,
            shape,
        }))
    }
}

/// QNNPACK's `q8vadd` parameters (x86 SSE2 and scalar paths compute the same integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QnnpackAdd {
    pub a_multiplier: u32,
    pub b_multiplier: u32,
    pub shift: u32,
    /// `−(ma·za + mb·zb)` in wrapping 32-bit arithmetic.
    pub zero_point_product: i32,
    pub out_zero_point: i32,
    pub out_min: i32,
    pub out_max: i32,
}

impl QnnpackAdd {
    /// `pytorch_qnnp_create_add_nc_q8` with PyTorch's arguments, or the error PyTorch raises.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shape: &[usize],
        sa: f64,
        za: i64,
        sb: f64,
        zb: i64,
        so: f64,
        zo: i64,
        relu: bool,
    ) -> Result<Self> {
        let fail = |why: String| {
            Error::invalid(
                "add (qnnpack)",
                format!("PyTorch fails to create the QNNPACK Add operator: {why}"),
            )
        };
        if shape.is_empty() {
            return Err(Error::invalid(
                "add (qnnpack)",
                "qnnpack_add(): Got empty input tensor (0-d)",
            ));
        }
        if shape[0] > 0 && shape[1..].iter().product::<usize>() == 0 {
            return Err(fail("number of channels must be non-zero".into()));
        }
        let (a, b, o) = (sa as f32, sb as f32, so as f32);
        for (what, s) in [("A", a), ("B", b), ("output", o)] {
            if !s.is_normal() || s <= 0.0 {
                return Err(fail(format!(
                    "{what} scale {s:e} is not a positive normal f32"
                )));
            }
        }
        let out_min = if relu { zo as i32 } else { 0 };
        if out_min >= 255 {
            return Err(fail(format!("[{out_min}, 255] output range is empty")));
        }
        let ra = a / o;
        let rb = b / o;
        for r in [ra, rb] {
            if !(2f32.powi(-14)..256.0).contains(&r) {
                return Err(fail(format!(
                    "input-to-output scale ratio {r:e} outside [2^-14, 2^8)"
                )));
            }
        }
        let max = if ra > rb { ra } else { rb };
        let exponent = (max.to_bits() >> 23) as i32 - 127;
        let shift = (21 - exponent) as u32;
        let mult = |r: f32| (r * 2f32.powi(shift as i32)).round_ties_even() as u32;
        let (ma, mb) = (mult(ra), mult(rb));
        let zpp = ma
            .wrapping_mul(za as u32)
            .wrapping_add(mb.wrapping_mul(zb as u32))
            .wrapping_neg() as i32;
        Ok(Self {
            a_multiplier: ma,
            b_multiplier: mb,
            shift,
            zero_point_product: zpp,
            out_zero_point: zo as i32,
            out_min,
            out_max: 255,
        })
    }

    /// `pytorch_qnnp_add_quantize`: one output value.
    pub fn apply(&self, qa: u8, qb: u8) -> i64 {
        let acc = self
            .zero_point_product
            .wrapping_add((qa as u32).wrapping_mul(self.a_multiplier) as i32)
            .wrapping_add((qb as u32).wrapping_mul(self.b_multiplier) as i32);
        let mask = ((1u32 << self.shift) - 1) as i32;
        let threshold = mask >> 1;
        let rem = (acc & mask) - (acc < 0) as i32;
        let r = (acc >> self.shift) + (rem > threshold) as i32;
        (r + self.out_zero_point).clamp(self.out_min, self.out_max) as i64
    }
}

#[derive(Debug)]
enum Kernel {
    Qnnpack(QnnpackAdd),
    Aten { lanes: Lanes, inv: f32 },
    Float,
}

#[derive(Debug)]
struct AddPlan {
    op: Add,
    flow: Flow,
    kernel: Kernel,
    a_index: Vec<usize>,
    b_index: Vec<usize>,
    out: OutQParams,
    shape: Vec<usize>,
}

impl AddPlan {
    /// ATen's vector (`v`) or scalar lambda on one pair of codes: the code and the float sum.
    fn aten(
        &self,
        inv: f32,
        v: bool,
        (da, qa): (Dequant, u8),
        (db, qb): (Dequant, u8),
    ) -> (Option<i64>, f32) {
        let c = da.at(qa, v) + db.at(qb, v);
        let c = if self.op.relu { c.max(0.0) } else { c };
        let q = if v {
            Some(aten_vec::quantize_vec(c, inv, self.out.zero_point))
        } else {
            aten_vec::quantize_val(c, self.out.scale, self.out.zero_point)
        };
        (q, c)
    }

    /// Output element `i` and, when `trace`, the intermediate values that produced it.
    fn element(&self, a: &QTensor, b: &QTensor, i: usize, trace: bool) -> (Option<i64>, String) {
        let (qa, qb) = (a.data[self.a_index[i]], b.data[self.b_index[i]]);
        match &self.kernel {
            Kernel::Qnnpack(p) => {
                let q = p.apply(qa, qb);
                (
                    Some(q),
                    super::note(
                        trace,
                        format_args!("qa {qa}, qb {qb}: QNNPACK fixed point → {q}"),
                    ),
                )
            }
            Kernel::Aten { lanes, inv } => {
                let v = lanes.is_vector(i);
                let (da, db) = (
                    Dequant::new(a.scale, a.zero_point),
                    Dequant::new(b.scale, b.zero_point),
                );
                let (q, c) = self.aten(*inv, v, (da, qa), (db, qb));
                let side = if v { "vector (FMA)" } else { "scalar" };
                (
                    q,
                    super::note(
                        trace,
                        format_args!(
                            "qa {qa}, qb {qb}: {side} lambda: da {:e}, db {:e}, c {c:e} → {q:?}",
                            da.at(qa, v),
                            db.at(qb, v)
                        ),
                    ),
                )
            }
            Kernel::Float => float_binary(
                self.flow,
                &self.out,
                self.op.relu,
                (qa, a),
                (qb, b),
                '+',
                trace,
            ),
        }
    }
}

/// The reference flows' float binary op on one element: the flow's dequantize of both inputs,
/// `x + y` or `x * y` in f32 (one rounding, exact), `max(·, 0)` if `relu`, the flow's quantize;
/// the derivation text only when `trace`.
pub(crate) fn float_binary(
    flow: Flow,
    out: &OutQParams,
    relu: bool,
    (qa, a): (u8, &QTensor),
    (qb, b): (u8, &QTensor),
    op: char,
    trace: bool,
) -> (Option<i64>, String) {
    let (lo, hi) = flow.clamp(out.quant_min, out.quant_max);
    let c = float_binary_value(flow, relu, (qa, a), (qb, b), op);
    let q = flow.quantize(c, out.scale, out.zero_point, lo, hi);
    if !trace {
        return (q, String::new());
    }
    let x = flow.dequantize(qa as i64, a.scale, a.zero_point);
    let y = flow.dequantize(qb as i64, b.scale, b.zero_point);
    (
        q,
        format!("qa {qa}, qb {qb}: x {x:e} {op} y {y:e} = {c:e} → {q:?}"),
    )
}

/// The reference flows' float result of [`float_binary`] (before the quantize node).
pub(crate) fn float_binary_value(
    flow: Flow,
    relu: bool,
    (qa, a): (u8, &QTensor),
    (qb, b): (u8, &QTensor),
    op: char,
) -> f32 {
    let x = flow.dequantize(qa as i64, a.scale, a.zero_point);
    let y = flow.dequantize(qb as i64, b.scale, b.zero_point);
    let c = if op == '*' { x * y } else { x + y };
    // `torch.relu` (`clamp_min(x, 0)`) replaces only values below zero: a product `0 · (−y)` =
    // −0.0 stays −0.0 (it quantizes like +0.0, but the pinned floats hash its sign bit).
    if relu && c < 0.0 {
        0.0
    } else {
        c
    }
}

/// `Plan::predict` of a binary elementwise op: one `int_repr` output of `shape`, element `i` from
/// `element(a, b, i, false)` (no derivation text); in the reference flows (`float` given) also
/// `pre_quant`, element `i` from `float(a, b, i)` (exact).
pub(crate) fn binary_predict(
    inputs: &[&Value],
    shape: &[usize],
    element: impl Fn(&QTensor, &QTensor, usize, bool) -> (Option<i64>, String),
    float: super::BinaryFloat<'_>,
) -> Result<Vec<Output>> {
    let (a, b) = (inputs[0].quantized("a")?, inputs[1].quantized("b")?);
    let n: usize = shape.iter().product();
    let values = (0..n).map(|i| element(a, b, i, false).0);
    let ints = Output::new("int_repr", shape.to_vec(), Predicted::from_options(values));
    Ok(match float {
        Some(f) => vec![
            ints,
            Output::new(
                "pre_quant",
                shape.to_vec(),
                Predicted::Ranges((0..n).map(|i| f(a, b, i)).map(|x| (x, x)).collect()),
            ),
        ],
        None => vec![ints],
    })
}

/// `Plan::trace` of a binary elementwise op: element `i`'s derivation
/// (`element(a, b, i, true)`), then the rule.
pub(crate) fn binary_trace(
    op: &str,
    inputs: &[&Value],
    shape: &[usize],
    i: usize,
    rule: Rule,
    element: impl Fn(&QTensor, &QTensor, usize, bool) -> (Option<i64>, String),
) -> Result<Vec<String>> {
    let (a, b) = (inputs[0].quantized("a")?, inputs[1].quantized("b")?);
    if i >= shape.iter().product::<usize>() {
        return Err(Error::invalid(op, "element index out of range"));
    }
    Ok(vec![element(a, b, i, true).1, format!("rule: {rule}")])
}

/// The rule lines of [`float_binary`].
pub(crate) fn float_binary_rule(flow: Flow, out: &OutQParams, relu: bool, op: char) -> Rule {
    let (lo, hi) = flow.clamp(out.quant_min, out.quant_max);
    let relu = if relu {
        ", relu(c): values below 0 become +0, −0.0 stays"
    } else {
        ""
    };
    Rule::default()
        .with(
            "float op",
            format!("c = dequantize(a) {op} dequantize(b) in f32{relu} (exact)"),
        )
        .with("quantize", format!("{}, clamp {lo}..{hi}", flow.name()))
}

impl Plan for AddPlan {
    fn rule(&self) -> Rule {
        let relu = if self.op.relu { ", max(c, 0)" } else { "" };
        match &self.kernel {
            Kernel::Qnnpack(p) => Rule::default().with(
                "kernel",
                format!(
                    "QNNPACK q8vadd: acc = {}·qa + {}·qb + {} (int32), acc >> {} rounded half \
                     away from zero, + {}, clamp {}..{}",
                    p.a_multiplier,
                    p.b_multiplier,
                    p.zero_point_product,
                    p.shift,
                    p.out_zero_point,
                    p.out_min,
                    p.out_max
                ),
            ),
            Kernel::Aten { lanes, .. } => Rule::default()
                .with(
                    "kernel",
                    format!(
                        "ATen qadd_kernel: vector c = fma(sa, qa, sa·(−za)) + fma(sb, qb, \
                         sb·(−zb)){relu}, QuantizeAvx2 with f32(1/so); scalar c = sa·(qa − za) + \
                         sb·(qb − zb){relu}, quantize_val"
                    ),
                )
                .with("layout", lanes.describe()),
            Kernel::Float => float_binary_rule(self.flow, &self.out, self.op.relu, '+'),
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let float = |a: &QTensor, b: &QTensor, i: usize| {
            let (qa, qb) = (a.data[self.a_index[i]], b.data[self.b_index[i]]);
            float_binary_value(self.flow, self.op.relu, (qa, a), (qb, b), '+')
        };
        let float: super::BinaryFloat<'_> = matches!(self.kernel, Kernel::Float).then_some(&float);
        binary_predict(
            inputs,
            &self.shape,
            |a, b, i, t| self.element(a, b, i, t),
            float,
        )
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let (op, rule) = (self.op.op_name(), self.rule());
        binary_trace(op, inputs, &self.shape, i, rule, |a, b, i, t| {
            self.element(a, b, i, t)
        })
    }

    fn lowered(&self) -> Option<super::Lowered<'_>> {
        (!matches!(self.kernel, Kernel::Float)).then_some(super::Lowered::Pointwise(self))
    }
}

/// Function 0: QNNPACK's fixed point or ATen's vector lambda; function 1: ATen's scalar lambda.
impl super::Pointwise for AddPlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn arity(&self) -> usize {
        2
    }
    fn functions(&self) -> usize {
        2
    }
    fn source(&self, i: usize) -> (usize, [(usize, usize); 2]) {
        let f = match &self.kernel {
            Kernel::Aten { lanes, .. } => usize::from(!lanes.is_vector(i)),
            _ => 0,
        };
        (f, [(0, self.a_index[i]), (1, self.b_index[i])])
    }
    fn vector_add(&self, f: usize, qparams: &[(f64, i64)]) -> Option<aten_vec::VectorAdd> {
        let (Kernel::Aten { inv, .. }, 0) = (&self.kernel, f) else {
            return None;
        };
        let [(sa, za), (sb, zb)] = [*qparams.first()?, *qparams.get(1)?];
        Some(aten_vec::VectorAdd {
            a: Dequant::new(sa, za),
            b: Dequant::new(sb, zb),
            relu: self.op.relu,
            inv: *inv,
            zero_point: self.out.zero_point as i32,
        })
    }
    fn value(&self, f: usize, qparams: &[(f64, i64)], [qa, qb]: [u8; 2]) -> Option<i64> {
        match &self.kernel {
            Kernel::Qnnpack(p) => Some(p.apply(qa, qb)),
            Kernel::Aten { inv, .. } => {
                let [(sa, za), (sb, zb)] = [*qparams.first()?, *qparams.get(1)?];
                let (da, db) = (Dequant::new(sa, za), Dequant::new(sb, zb));
                self.aten(*inv, f == 0, (da, qa), (db, qb)).0
            }
            Kernel::Float => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Isa};
    use crate::numerics::bound::Pred;
    use crate::ops::MemoryFormat;

    fn ctx(flow: Flow, engine: Engine) -> Ctx {
        Ctx {
            flow,
            engine,
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
        }
    }

    fn out(scale: f64, zero_point: i64) -> OutQParams {
        OutQParams {
            scale,
            zero_point,
            quant_min: 0,
            quant_max: 255,
        }
    }

    fn run(op: Add, c: Ctx, a: &Value, b: &Value, o: OutQParams) -> Result<Vec<Pred>> {
        let plan = op.plan(&c, &[a.meta(), b.meta()], Some(&o))?;
        let mut outs = plan.predict(&[a, b])?;
        Ok(outs.remove(0).ints().unwrap().to_vec())
    }

    fn q(shape: Vec<usize>, data: Vec<u8>, scale: f64, zp: i64) -> Value {
        Value::Quantized(QTensor::new(shape, data, scale, zp))
    }

    /// The code a derivation line ends with (`→ 17` or `→ Some(17)`).
    fn traced_code(line: &str) -> Option<i64> {
        let tail = line.rsplit_once("→ ")?.1.trim();
        let tail = tail
            .strip_prefix("Some(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(tail);
        tail.parse().ok()
    }

    #[test]
    fn predictions_skip_the_derivation_text_and_traces_derive_the_predicted_code() {
        // Every kernel of add and mul: QNNPACK fixed point, ATen's vector body and scalar tail,
        // the reference flows' float op. predict formats no text; trace derives the same code.
        let n = 67;
        let a = q(
            vec![n],
            (0..n).map(|i| (i * 37 % 256) as u8).collect(),
            0.05,
            120,
        );
        let b = q(
            vec![n],
            (0..n).map(|i| (i * 91 % 256) as u8).collect(),
            0.08,
            7,
        );
        let o = out(0.11, 60);
        let mul = crate::ops::mul::Mul { relu: true };
        let cases: [(&dyn Op, Ctx); 6] = [
            (&Add { relu: false }, ctx(Flow::ConvertFx, Engine::Qnnpack)),
            (&Add { relu: true }, ctx(Flow::ConvertFx, Engine::Fbgemm)),
            (
                &Add { relu: false },
                ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm),
            ),
            (&mul, ctx(Flow::ConvertFx, Engine::X86)),
            (
                &mul,
                ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm),
            ),
            (&mul, ctx(Flow::ConvertToReferenceFx, Engine::Qnnpack)),
        ];
        for (op, c) in cases {
            let plan = op.plan(&c, &[a.meta(), b.meta()], Some(&o)).unwrap();
            let codes = plan.predict(&[&a, &b]).unwrap().remove(0);
            let codes = codes.ints().unwrap();
            for (i, p) in codes.iter().enumerate() {
                let lines = plan.trace(&[&a, &b], 0, i).unwrap();
                let got = traced_code(&lines[0]);
                assert_eq!(
                    Some(*p),
                    got.map(Pred::Exact),
                    "{} {c:?} [{i}]: {lines:?}",
                    op.name()
                );
            }
        }
        // Untraced, the reference flows' float op keeps its code and has no text.
        let (qa, qb) = (200, 3);
        let (ta, tb) = (
            QTensor::new(vec![1], vec![qa], 0.05, 120),
            QTensor::new(vec![1], vec![qb], 0.08, 7),
        );
        let flow = Flow::ConvertToReferenceFx;
        let traced = float_binary(flow, &o, false, (qa, &ta), (qb, &tb), '+', true);
        let quiet = float_binary(flow, &o, false, (qa, &ta), (qb, &tb), '+', false);
        assert_eq!(quiet, (traced.0, String::new()));
        assert!(traced.1.starts_with("qa 200, qb 3: x "), "{}", traced.1);
    }

    #[test]
    fn aten_body_uses_fma_and_the_tail_does_not() {
        // sa = 0.044154033 (f32), za = 166, qa = 228, so = 0.013452336 (f32): s·(qa − za) rounds
        // to 2.73755002 (→ 203.4999... → 203 after f32(c·(1/so))), while the vector lambda's
        // fma(sa, 228, f32(−166·sa)) gives 2.73755026 (→ 204). Values computed independently
        // (numpy f64 arithmetic). qb = zb = 0 adds an exact zero.
        let (sa, so) = (0.044154033064842224, 0.013452336192131042);
        let n = 65; // one row: 64 vector elements, 1 scalar
        let a = q(vec![n], vec![228; n], sa, 166);
        let b = q(vec![n], vec![0; n], 0.125, 0);
        let fb = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let p = run(Add { relu: false }, fb, &a, &b, out(so, 0)).unwrap();
        assert!(p[..64].iter().all(|&v| v == Pred::Exact(204)));
        assert_eq!(p[64], Pred::Exact(203));
        // Under qnnpack with equal shapes the fixed-point kernel runs instead; with broadcasting
        // qnnpack falls back to ATen (the broadcast scalar keeps the row vectorized).
        let bb = q(vec![1], vec![0], 0.125, 0);
        let qn = ctx(Flow::ConvertFx, Engine::Qnnpack);
        assert_eq!(
            run(Add { relu: false }, qn, &a, &bb, out(so, 0)).unwrap(),
            p
        );
        let fixed = run(Add { relu: false }, qn, &a, &b, out(so, 0)).unwrap();
        assert!(fixed.iter().all(|&v| v == fixed[0]));
        // Two rows of 65 (a [2, 65] with b [2, 1]: b is not a scalar within a row but has
        // stride 0): vector, 64 each.
        let a2 = q(vec![2, n], vec![228; 2 * n], sa, 166);
        let b2 = q(vec![2, 1], vec![0; 2], 0.125, 0);
        let p = run(Add { relu: false }, fb, &a2, &b2, out(so, 0)).unwrap();
        let vec_count = p.iter().filter(|&&v| v == Pred::Exact(204)).count();
        assert_eq!(vec_count, 128);
        assert_eq!(p[64], Pred::Exact(203));
        assert_eq!(p[129], Pred::Exact(203));
    }

    #[test]
    fn qnnpack_rounds_half_away_from_zero() {
        // sa = sb = so: ratios 1, shift 21, multipliers 2^21; zp 0 so acc = 2^21·(qa + qb).
        // With sa = so/2, sb = so/2: (qa + qb)/2 — odd sums are exact halves.
        let a = q(vec![4], vec![1, 3, 5, 2], 0.5, 0);
        let b = q(vec![4], vec![0, 0, 0, 1], 0.5, 0);
        let p = run(
            Add { relu: false },
            ctx(Flow::ConvertFx, Engine::Qnnpack),
            &a,
            &b,
            out(1.0, 0),
        )
        .unwrap();
        // 0.5 → 1, 1.5 → 2, 2.5 → 3 (half away), 1.5 → 2.
        assert_eq!(
            p,
            vec![
                Pred::Exact(1),
                Pred::Exact(2),
                Pred::Exact(3),
                Pred::Exact(2)
            ]
        );
        // Negative halves round away from zero too: zo = 10, qa − za = −1, −3 → −0.5, −1.5.
        let a = q(vec![2], vec![9, 7], 0.5, 10);
        let b = q(vec![2], vec![0, 0], 0.5, 0);
        let p = run(
            Add { relu: false },
            ctx(Flow::ConvertFx, Engine::Qnnpack),
            &a,
            &b,
            out(1.0, 10),
        )
        .unwrap();
        assert_eq!(p, vec![Pred::Exact(9), Pred::Exact(8)]);
        // ATen on the same inputs rounds half to even: −0.5 → 0, −1.5 → −2.
        let p = run(
            Add { relu: false },
            ctx(Flow::ConvertFx, Engine::X86),
            &a,
            &b,
            out(1.0, 10),
        )
        .unwrap();
        assert_eq!(p, vec![Pred::Exact(10), Pred::Exact(8)]);
    }

    #[test]
    fn relu_clamps_at_the_output_zero_point() {
        let a = q(vec![3], vec![0, 100, 200], 0.25, 100);
        let b = q(vec![3], vec![100, 100, 100], 0.25, 100);
        for engine in [Engine::Fbgemm, Engine::Qnnpack] {
            let p = run(
                Add { relu: true },
                ctx(Flow::ConvertFx, engine),
                &a,
                &b,
                out(0.5, 20),
            )
            .unwrap();
            // −25 → 20 (relu), 0 → 20, 12.5 → 20 + 50 = 70.
            assert_eq!(p, vec![Pred::Exact(20), Pred::Exact(20), Pred::Exact(70)]);
        }
    }

    #[test]
    fn errors_pytorch_raises_are_errors() {
        let c = ctx(Flow::ConvertFx, Engine::Qnnpack);
        let a = q(vec![2], vec![1, 2], 0.5, 0);
        let b = q(vec![2], vec![1, 2], 0.5, 0);
        // Ratio 0.5 / 1e-3 = 500 ≥ 2^8.
        assert!(run(Add { relu: false }, c, &a, &b, out(1e-3, 0)).is_err());
        // add_relu with zo = 255 has an empty output range under qnnpack ...
        assert!(run(Add { relu: true }, c, &a, &b, out(0.5, 255)).is_err());
        // ... but not under ATen.
        assert!(run(
            Add { relu: true },
            ctx(Flow::ConvertFx, Engine::Fbgemm),
            &a,
            &b,
            out(0.5, 255)
        )
        .is_ok());
        // Either input may broadcast (PyTorch resizes the output that qa's shape gave it);
        // shapes that do not broadcast are errors.
        let fb = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let plain =
            |c: Ctx, x: &Value, y: &Value, o: OutQParams| run(Add { relu: false }, c, x, y, o);
        let small = q(vec![1], vec![1], 0.5, 0);
        assert_eq!(plain(fb, &a, &small, out(0.5, 0)).unwrap().len(), 2);
        assert_eq!(plain(fb, &small, &a, out(0.5, 0)).unwrap().len(), 2);
        let three = q(vec![3], vec![0; 3], 0.5, 0);
        assert!(plain(fb, &a, &three, out(0.5, 0)).is_err());
        // qnnpack: a 0-d input is an error, an empty batch an empty output, empty rows an error.
        let zd = q(vec![], vec![1], 0.5, 0);
        assert!(plain(c, &zd, &zd, out(0.5, 0)).is_err());
        assert_eq!(plain(fb, &zd, &zd, out(0.5, 0)).unwrap().len(), 1);
        let e = q(vec![0, 2], vec![], 0.5, 0);
        assert!(plain(c, &e, &e, out(1e-9, 0)).unwrap().is_empty());
        let e = q(vec![2, 0], vec![], 0.5, 0);
        assert!(plain(c, &e, &e, out(0.5, 0)).is_err());
        // Bad qparams, missing inputs and output qparams.
        assert!(run(Add { relu: false }, fb, &a, &b, out(f64::NAN, 0)).is_err());
        assert!(run(Add { relu: false }, fb, &a, &b, out(0.0, 0)).is_err());
        assert!(run(
            Add { relu: false },
            fb,
            &a,
            &q(vec![2], vec![1, 2], 0.5, 300),
            out(0.5, 0)
        )
        .is_err());
        assert!(Add { relu: false }
            .plan(&fb, &[a.meta()], Some(&out(0.5, 0)))
            .is_err());
        assert!(Add { relu: false }
            .plan(&fb, &[a.meta(), b.meta()], None)
            .is_err());
    }

    #[test]
    fn output_range_may_be_a_single_code() {
        // quant_min == quant_max is a valid (degenerate) range; quant_min > quant_max is not.
        let single = OutQParams {
            quant_min: 7,
            quant_max: 7,
            ..out(0.5, 7)
        };
        assert_eq!(checked_out("add", Some(&single)).unwrap(), single);
        let reversed = OutQParams {
            quant_min: 8,
            quant_max: 7,
            ..single
        };
        let e = checked_out("add", Some(&reversed)).unwrap_err();
        assert!(e.to_string().contains("quant_min exceeds quant_max"), "{e}");
    }

    #[test]
    fn relu_keeps_a_negative_zero_product() {
        // 0 · (−0.5) = −0.0: relu replaces values below zero only, so the sign bit stays.
        let a = QTensor::new(vec![1], vec![3], 0.5, 3);
        let b = QTensor::new(vec![1], vec![2], 0.5, 3);
        for flow in [
            Flow::ConvertToReferenceFx,
            Flow::ConvertToReferenceDecomposedFx,
        ] {
            let c = float_binary_value(flow, true, (3, &a), (2, &b), '*');
            assert_eq!(c.to_bits(), (-0.0f32).to_bits(), "{flow:?}");
            let c = float_binary_value(flow, true, (3, &a), (2, &b), '+');
            assert_eq!(c.to_bits(), 0.0f32.to_bits(), "{flow:?}");
        }
        // The reference flows' rule names the float op, relu's sign rule and the clamp.
        let o = OutQParams {
            quant_max: 127,
            ..out(0.5, 0)
        };
        let r = float_binary_rule(Flow::ConvertToReferenceDecomposedFx, &o, true, '*');
        let op = r.get("float op").unwrap();
        assert!(op.contains("dequantize(a) * dequantize(b)") && op.contains("−0.0 stays"));
        assert!(r.get("quantize").unwrap().ends_with("clamp 0..127"));
        let r = float_binary_rule(Flow::ConvertToReferenceFx, &o, false, '+');
        assert!(!r.get("float op").unwrap().contains("relu"));
        assert!(r.get("quantize").unwrap().ends_with("clamp 0..255"));
    }

    #[test]
    fn reference_flows_add_in_float_and_broadcast_both_ways() {
        let a = q(vec![2, 1], vec![10, 20], 0.5, 0);
        let b = q(vec![3], vec![0, 1, 2], 0.25, 1);
        for flow in [
            Flow::ConvertToReferenceFx,
            Flow::ConvertToReferenceDecomposedFx,
        ] {
            let o = OutQParams {
                scale: 0.5,
                zero_point: 0,
                quant_min: 0,
                quant_max: 127,
            };
            let p = run(Add { relu: true }, ctx(flow, Engine::Fbgemm), &a, &b, o).unwrap();
            // a = [5, 10], b = [−0.25, 0, 0.25]: sums / 0.5 = 9.5, 10, 10.5, 19.5, 20, 20.5.
            let expect = [10, 10, 10, 20, 20, 20];
            assert_eq!(p, expect.map(Pred::Exact).to_vec());
        }
        // Channels-last inputs change nothing in the float flows.
        let mut qa = QTensor::new(vec![1, 2, 1, 1], vec![1, 2], 0.5, 0);
        qa.memory_format = MemoryFormat::ChannelsLast;
        let a = Value::Quantized(qa);
        let b = q(vec![1, 2, 1, 1], vec![3, 4], 0.5, 0);
        let p = run(
            Add { relu: false },
            ctx(Flow::ConvertToReferenceFx, Engine::X86),
            &a,
            &b,
            out(0.5, 0),
        )
        .unwrap();
        assert_eq!(p, vec![Pred::Exact(4), Pred::Exact(6)]);
    }
}
