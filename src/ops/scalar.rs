//! A quint8 tensor plus or times a Python number: `quantized::add.Scalar` / `add_relu.Scalar`
//! (legacy names `add_scalar`, `add_scalar_relu`) and `quantized::mul.Scalar` / `mul_relu.Scalar`
//! (`mul_scalar`, `mul_scalar_relu`); FX lowers `x + 3.0` / `x * 0.5` on a quantized activation to
//! them. These kernels choose their output qparams themselves: [`ScalarPlan`] predicts the codes
//! and the qparams (`output_scale`, `output_zero_point`), and both are compared with PyTorch's.
//!
//! `add.Scalar` (`aten/src/ATen/native/quantized/cpu/BinaryOps.cpp: _add_scalar_out`), with the
//! input's double scale `s`, zero point `z` and `c` the number as a double:
//! - `cq = nearbyint(c / s)` (double division, ties to even), `zc = z − cq`.
//! - `0 ≤ zc ≤ 255`: the codes are copied, the output qparams are `(s, zc)`; `add_relu` then
//!   takes `max(q, zc)` (`relu_quantized_cpu_`).
//! - `zc < 0`: `s' = ((255 − zc) / 255)·s`, `z' = 0`; `zc > 255`: `s' = ((zc − 0) / 255)·s`,
//!   `z' = 255` (double arithmetic, left to right). The codes are requantized by
//!   `qadd_scalar_kernel` (`kernels/QuantizedOpKernels.cpp`): `m = f32(f32(s) · f32(1/f32(s')))`,
//!   `v = (q − z) + cq` in wrapping int32, `q' = sat(z' + RNE(f32(f32(v)·m)))`
//!   (`requantize_from_int`, `aten/src/ATen/native/quantized/AffineQuantizerBase.cpp`; its
//!   vector form `RequantizeAvx2` agrees because `|v·m|` stays below 2^31 here), `add_relu`
//!   then `max(q', z')`. `cq` is first converted with `Scalar::to<int32_t>`, which raises when
//!   it does not fit in int32 (PyTorch's error, also for a NaN or infinite `c`).
//!
//! `mul.Scalar` (`qmul.cpp: _mul_scalar_out`), metadata only:
//! - `c > 0`: codes copied (`mul_relu`: `max(q, z)`), qparams `(c·s, z)`;
//! - `c == 0` (also −0.0): every code 0, qparams `(1.0, 0)`;
//! - `c < 0`: `q' = 255 − q` (`mul_relu`: `max(q', 255 − z)`), qparams `(|c|·s, 255 − z)`.
//!   A NaN or infinite `c` gives a NaN or infinite scale in PyTorch: an error here.
//!
//! Every engine runs these ATen kernels (QNNPACK has none), the memory format does not change
//! any value (the output takes the input's suggested format) and no element depends on its
//! position, so a plan is a table over the 256 codes.
//!
//! Reference flows (`convert_to_reference_fx`, `_convert_to_reference_decomposed_fx`): the flow's
//! dequantize, the float `x + f32(c)` or `x · f32(c)` (ATen converts the wrapped number to the
//! tensor's f32; one rounding, exact), `max(·, 0)` for the relu forms, then the flow's quantize
//! node with the observer's qparams (FX shares them with the input).

use super::{expect_inputs, Meta, Op, OutQParams, Output, Plan, Predicted, Rule, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// Which arithmetic the op does with its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    Add,
    Mul,
}

/// `quantized::add.Scalar` / `mul.Scalar` (relu-fused when `relu`) with the number `other`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarOp {
    pub kind: ScalarKind,
    pub relu: bool,
    /// The Python number (a double in PyTorch's `Scalar`).
    pub other: f64,
}

/// The op's parameters as a case stores them (`args.params` / a graph node's attributes).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalarParams {
    pub other: f64,
}

impl ScalarOp {
    /// The op from its kind, relu flag and decoded parameters.
    pub fn new(kind: ScalarKind, relu: bool, p: ScalarParams) -> Self {
        Self {
            kind,
            relu,
            other: p.other,
        }
    }

    fn op_name(&self) -> &'static str {
        match (self.kind, self.relu) {
            (ScalarKind::Add, false) => "add_scalar",
            (ScalarKind::Add, true) => "add_scalar_relu",
            (ScalarKind::Mul, false) => "mul_scalar",
            (ScalarKind::Mul, true) => "mul_scalar_relu",
        }
    }

    fn symbol(&self) -> char {
        match self.kind {
            ScalarKind::Add => '+',
            ScalarKind::Mul => '·',
        }
    }

    /// The integer kernel's decisions for input qparams `(s, z)`.
    pub fn kernel(&self, s: f64, z: i64) -> Result<Kernel> {
        let op = self.op_name();
        let c = self.other;
        match self.kind {
            ScalarKind::Add => {
                let ratio = c / s;
                let cq = ratio.round_ties_even();
                // In int64 (`std::nearbyint` into int64_t); out-of-range values and NaN land in a
                // saturating branch and fail the int32 conversion below.
                if cq.is_nan() || cq.abs() > i32::MAX as f64 {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "PyTorch raises: nearbyint({c:e} / {s:e}) = {cq:e} does not fit in \
                             int32 (\"value cannot be converted to type int without overflow\")"
                        ),
                    ));
                }
                let cq = cq as i64;
                let zc = z - cq;
                if (0..=255).contains(&zc) {
                    return Ok(Kernel::Shift {
                        cq,
                        out_scale: s,
                        out_zero_point: zc,
                    });
                }
                let (out_scale, out_zero_point) = if zc < 0 {
                    ((255.0 - zc as f64) / 255.0 * s, 0)
                } else {
                    ((zc as f64 - 0.0) / 255.0 * s, 255)
                };
                let multiplier = s as f32 * (1.0f32 / out_scale as f32);
                Ok(Kernel::Requantize {
                    cq: cq as i32,
                    multiplier,
                    out_scale,
                    out_zero_point,
                })
            }
            ScalarKind::Mul => {
                if !c.is_finite() {
                    return Err(Error::invalid(
                        op,
                        format!("the number {c} gives PyTorch a non-finite output scale"),
                    ));
                }
                Ok(if c > 0.0 {
                    Kernel::Rescale {
                        out_scale: c * s,
                        out_zero_point: z,
                    }
                } else if c == 0.0 {
                    Kernel::Zero
                } else {
                    Kernel::Negate {
                        out_scale: c.abs() * s,
                        out_zero_point: 255 - z,
                    }
                })
            }
        }
    }
}

/// What the quantized kernel does, decided from the input's qparams and the number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// `add.Scalar` with `z − cq` in 0..255: codes kept, zero point shifted.
    Shift {
        cq: i64,
        out_scale: f64,
        out_zero_point: i64,
    },
    /// `add.Scalar` saturating: `requantize_from_int((q − z) + cq)` to `(s', z')`.
    Requantize {
        cq: i32,
        multiplier: f32,
        out_scale: f64,
        out_zero_point: i64,
    },
    /// `mul.Scalar`, `c > 0`: codes kept, scale multiplied.
    Rescale { out_scale: f64, out_zero_point: i64 },
    /// `mul.Scalar`, `c == 0`: all codes 0, qparams (1.0, 0).
    Zero,
    /// `mul.Scalar`, `c < 0`: `255 − q`, qparams `(|c|·s, 255 − z)`.
    Negate { out_scale: f64, out_zero_point: i64 },
}

impl Kernel {
    /// The output qparams PyTorch's kernel sets.
    pub fn out_qparams(&self) -> (f64, i64) {
        match *self {
            Kernel::Shift {
                out_scale,
                out_zero_point,
                ..
            }
            | Kernel::Requantize {
                out_scale,
                out_zero_point,
                ..
            }
            | Kernel::Rescale {
                out_scale,
                out_zero_point,
            }
            | Kernel::Negate {
                out_scale,
                out_zero_point,
            } => (out_scale, out_zero_point),
            Kernel::Zero => (1.0, 0),
        }
    }
}

impl Op for ScalarOp {
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
        let input = expect_inputs(op, inputs, 1)?[0];
        let (s, z) = input.qparams(op)?;
        validate_qparams(&format!("{op} input qparams"), s, z, 0, 255)?;
        let shape = input.shape.to_vec();
        if ctx.flow.is_integer() {
            let kernel = self.kernel(s, z)?;
            let (so, zo) = kernel.out_qparams();
            // A graph node records the qparams PyTorch's kernel chose: they must be these.
            if let Some(o) = out {
                if o.scale.to_bits() != so.to_bits() || o.zero_point != zo {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "PyTorch's output has qparams ({:e}, {}), but the kernel picks \
                             ({so:e}, {zo}) for input ({s:e}, {z}) and {}",
                            o.scale, o.zero_point, self.other
                        ),
                    ));
                }
            }
            return Ok(Box::new(ScalarPlan {
                op: *self,
                flow: ctx.flow,
                input: (s, z),
                path: Path::Integer(kernel),
                shape,
            }));
        }
        let out = super::add::checked_out(op, out)?;
        if !self.other.is_finite() {
            return Err(Error::invalid(
                op,
                format!("the number {} is not finite", self.other),
            ));
        }
        Ok(Box::new(ScalarPlan {
            op: *self,
            flow: ctx.flow,
            input: (s, z),
            path: Path::Float(out),
            shape,
        }))
    }
}

#[derive(Debug, Clone, Copy)]
enum Path {
    Integer(Kernel),
    /// The reference flows, with the quantize node's qparams and clamp.
    Float(OutQParams),
}

/// A planned scalar op.
#[derive(Debug)]
pub struct ScalarPlan {
    op: ScalarOp,
    flow: Flow,
    input: (f64, i64),
    path: Path,
    shape: Vec<usize>,
}

/// One output code's derivation: the steps in words and the result.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementSteps {
    pub steps: Vec<(String, String)>,
    /// `None`: PyTorch's result is undefined (a NaN before a quantize node).
    pub value: Option<i64>,
    /// The reference flows' float before the quantize node.
    pub float: Option<f32>,
}

impl ScalarPlan {
    /// Output code for input code `q`, with every step that produced it in words when `trace`
    /// (`steps` is empty otherwise: predictions skip the formatting).
    pub fn element(&self, q: u8, trace: bool) -> ElementSteps {
        let (s, z) = self.input;
        let mut steps = Vec::new();
        let mut step = |l: &str, t: std::fmt::Arguments<'_>| {
            if trace {
                steps.push((l.to_string(), t.to_string()));
            }
        };
        let relu = self.op.relu;
        match self.path {
            Path::Integer(k) => {
                let q = q as i64;
                // The kernel's code, and the floor a fused relu applies to it.
                let (r, floor) = match k {
                    Kernel::Shift {
                        out_zero_point: zo, ..
                    }
                    | Kernel::Rescale {
                        out_zero_point: zo, ..
                    } => {
                        step("kernel", format_args!("codes kept: q = {q}"));
                        (q, zo)
                    }
                    Kernel::Requantize {
                        cq,
                        multiplier,
                        out_zero_point: zo,
                        ..
                    } => {
                        let v = (q as i32 - z as i32).wrapping_add(cq);
                        let x = v as f32 * multiplier;
                        step(
                            "integer",
                            format_args!("v = (q − z) + cq = ({q} − {z}) + {cq} = {v} (int32)"),
                        );
                        step(
                            "requantize",
                            format_args!(
                                "f32({v})·{multiplier:e} = {x:e}, RNE → {}, + {zo}",
                                x.round_ties_even()
                            ),
                        );
                        let r = super::aten_vec::requantize_val(v, multiplier, zo);
                        step("saturate", format_args!("clamp to 0..255 → {r}"));
                        (r, zo)
                    }
                    Kernel::Zero => {
                        step("kernel", format_args!("every code set to 0"));
                        (0, 0)
                    }
                    Kernel::Negate {
                        out_zero_point: zo, ..
                    } => {
                        step("kernel", format_args!("255 − q = 255 − {q} = {}", 255 - q));
                        (255 - q, zo)
                    }
                };
                let value = if relu {
                    step("relu", format_args!("max({r}, {floor}) = {}", r.max(floor)));
                    r.max(floor)
                } else {
                    r
                };
                ElementSteps {
                    steps,
                    value: Some(value),
                    float: None,
                }
            }
            Path::Float(out) => {
                let x = self.flow.dequantize(q as i64, s, z);
                let c = self.op.other as f32;
                let y = match self.op.kind {
                    ScalarKind::Add => x + c,
                    ScalarKind::Mul => x * c,
                };
                let y = if relu { y.max(0.0) } else { y };
                step(
                    "dequantize",
                    format_args!("{}: x = dequantize({q}) = {x:e}", self.flow.name()),
                );
                let relu_txt = if relu { ", max(·, 0)" } else { "" };
                step(
                    "float op",
                    format_args!(
                        "x {} f32({}) = {x:e} {} {c:e}{relu_txt} = {y:e} (f32, one rounding)",
                        self.op.symbol(),
                        self.op.other,
                        self.op.symbol()
                    ),
                );
                let (lo, hi) = self.flow.clamp(out.quant_min, out.quant_max);
                let value = self.flow.quantize(y, out.scale, out.zero_point, lo, hi);
                step(
                    "quantize",
                    format_args!(
                        "{}: scale {:e}, zero point {}, clamp {lo}..{hi} → {value:?}",
                        self.flow.name(),
                        out.scale,
                        out.zero_point
                    ),
                );
                ElementSteps {
                    steps,
                    value,
                    float: Some(y),
                }
            }
        }
    }
}

impl Plan for ScalarPlan {
    fn rule(&self) -> Rule {
        let relu = self.op.relu;
        let (s, z) = self.input;
        match self.path {
            Path::Integer(k) => {
                let (so, zo) = k.out_qparams();
                let kernel = match k {
                    Kernel::Shift { cq, .. } => format!(
                        "ATen _add_scalar_out: cq = nearbyint(c/s) = {cq}, z − cq = {zo} in 0..255: \
                         codes copied{}",
                        if relu { ", max(q, z − cq)" } else { "" }
                    ),
                    Kernel::Requantize { cq, multiplier, .. } => format!(
                        "ATen qadd_scalar_kernel: cq = nearbyint(c/s) = {cq}, z − cq = {} outside \
                         0..255: q' = sat({zo} + RNE(f32((q − z) + cq)·{multiplier:e})){} \
                         (requantize_from_int, m = f32(s)·f32(1/f32(s')))",
                        z - cq as i64,
                        if relu { ", max(q', z')" } else { "" }
                    ),
                    Kernel::Rescale { .. } => format!(
                        "ATen _mul_scalar_out, c > 0: codes copied{}",
                        if relu { ", max(q, z)" } else { "" }
                    ),
                    Kernel::Zero => "ATen _mul_scalar_out, c == 0: every code 0".into(),
                    Kernel::Negate { .. } => format!(
                        "ATen _mul_scalar_out, c < 0: q' = 255 − q{}",
                        if relu { ", max(q', 255 − z)" } else { "" }
                    ),
                };
                Rule::default().with("kernel", kernel).with(
                    "output qparams",
                    format!(
                        "picked by the kernel from input ({s:e}, {z}) and c = {}: ({so:e}, {zo})",
                        self.op.other
                    ),
                )
            }
            Path::Float(out) => {
                let (lo, hi) = self.flow.clamp(out.quant_min, out.quant_max);
                Rule::default()
                    .with(
                        "float op",
                        format!(
                            "dequantize(q) {} f32({}) in f32{} (exact)",
                            self.op.symbol(),
                            self.op.other,
                            if relu { ", max(·, 0)" } else { "" }
                        ),
                    )
                    .with(
                        "quantize",
                        format!("{}, clamp {lo}..{hi}", self.flow.name()),
                    )
            }
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let op = self.op.op_name();
        let q = super::one_input(op, inputs)?;
        if q.shape != self.shape || (q.scale, q.zero_point) != self.input {
            return Err(Error::shape(
                op,
                format!("planned for {:?}, got {:?}", self.shape, q.shape),
            ));
        }
        let table: Vec<ElementSteps> = (0..=255u8).map(|c| self.element(c, false)).collect();
        let values = q.data.iter().map(|&c| table[c as usize].value);
        let mut outs = vec![Output::new(
            "int_repr",
            self.shape.clone(),
            Predicted::from_options(values),
        )];
        match self.path {
            Path::Integer(k) => {
                let (so, zo) = k.out_qparams();
                outs.push(Output::new(
                    "output_scale",
                    vec![1],
                    Predicted::Doubles(vec![so]),
                ));
                outs.push(Output::new(
                    "output_zero_point",
                    vec![1],
                    Predicted::exact([zo]),
                ));
            }
            Path::Float(_) => {
                let floats = q.data.iter().map(|&c| {
                    let y = table[c as usize].float.unwrap_or(f32::NAN);
                    (y, y)
                });
                outs.push(Output::new(
                    "pre_quant",
                    self.shape.clone(),
                    Predicted::Ranges(floats.collect()),
                ));
            }
        }
        Ok(outs)
    }

    fn trace(&self, inputs: &[&Value], output: usize, i: usize) -> Result<Vec<String>> {
        let op = self.op.op_name();
        let q = super::one_input(op, inputs)?;
        let rule = format!("rule: {}", self.rule());
        if output != 0 {
            return Ok(vec![rule]);
        }
        let code = super::element_at(op, &q.data, i)?;
        let e = self.element(code, true);
        let mut lines: Vec<String> = e.steps.iter().map(|(l, t)| format!("{l}: {t}")).collect();
        lines.push(rule);
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Engine, Isa};
    use crate::numerics::bound::Pred;
    use crate::ops::{MemoryFormat, QTensor};

    fn ctx(flow: Flow) -> Ctx {
        Ctx {
            flow,
            engine: Engine::Fbgemm,
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
        }
    }

    fn op(kind: ScalarKind, relu: bool, other: f64) -> ScalarOp {
        ScalarOp { kind, relu, other }
    }

    /// (codes, output scale, output zero point) in convert_fx.
    fn run(o: ScalarOp, x: &QTensor) -> Result<(Vec<i64>, f64, i64)> {
        let v = Value::Quantized(x.clone());
        let plan = o.plan(&ctx(Flow::ConvertFx), &[v.meta()], None)?;
        let outs = plan.predict(&[&v])?;
        let codes = outs[0]
            .ints()
            .unwrap()
            .iter()
            .map(|p| match p {
                Pred::Exact(v) => *v,
                _ => panic!("ambiguous"),
            })
            .collect();
        let Predicted::Doubles(s) = &outs[1].values else {
            panic!("no output_scale")
        };
        let Some(&[Pred::Exact(z)]) = outs[2].ints() else {
            panic!("no output_zero_point")
        };
        assert_eq!(
            (outs[1].name.as_str(), outs[2].name.as_str()),
            ("output_scale", "output_zero_point")
        );
        Ok((codes, s[0], z))
    }

    fn x() -> QTensor {
        QTensor::new(vec![4], vec![0, 1, 100, 255], 0.1, 100)
    }

    #[test]
    fn add_shifts_the_zero_point_while_it_stays_in_range() {
        use ScalarKind::Add;
        // 3.0 / 0.1 = 30 (29.999999999999996 rounds to 30): z' = 70, codes kept.
        assert_eq!(
            run(op(Add, false, 3.0), &x()).unwrap(),
            (vec![0, 1, 100, 255], 0.1, 70)
        );
        assert_eq!(
            run(op(Add, true, 3.0), &x()).unwrap(),
            (vec![70, 70, 100, 255], 0.1, 70)
        );
        assert_eq!(run(op(Add, false, -3.0), &x()).unwrap().2, 130);
        // c / s exactly 0.5 rounds to even (0), 1.4999999999999998 to 1.
        assert_eq!(run(op(Add, false, 0.05), &x()).unwrap().2, 100);
        assert_eq!(run(op(Add, false, 0.15), &x()).unwrap().2, 99);
        assert_eq!(
            run(op(Add, true, 0.0), &x()).unwrap().0,
            vec![100, 100, 100, 255]
        );
    }

    #[test]
    fn add_requantizes_when_the_zero_point_would_leave_the_range() {
        use ScalarKind::Add;
        // s = 0.5, z = 10, c = 100: cq = 200, zc = −190 < 0: s' = (445/255)·0.5, z' = 0.
        let t = QTensor::new(vec![3], vec![0, 11, 255], 0.5, 10);
        let (codes, s2, z2) = run(op(Add, false, 100.0), &t).unwrap();
        assert_eq!((s2, z2), (445.0 / 255.0 * 0.5, 0));
        // m = f32(0.5 · f32(1/f32(s'))) ≈ 0.5730; v = q − 10 + 200 = 190, 201, 445.
        let m = 0.5f32 * (1.0f32 / s2 as f32);
        let expect: Vec<i64> = [190, 201, 445]
            .iter()
            .map(|&v| ((v as f32 * m).round_ties_even() as i64).clamp(0, 255))
            .collect();
        assert_eq!(codes, expect);
        assert_eq!(codes[2], 255);
        // zc > 255: z' = 255, s' = (zc/255)·s.
        let (_, s2, z2) = run(op(Add, false, -200.0), &t).unwrap();
        assert_eq!((s2, z2), (410.0 / 255.0 * 0.5, 255));
        // Exact ties: s = 1, zc = −255 → s' = 2, m = 0.5, v odd → half to even.
        let t = QTensor::new(vec![4], vec![0, 1, 2, 3], 1.0, 0);
        let (codes, s2, z2) = run(op(Add, false, 255.0), &t).unwrap();
        assert_eq!((s2, z2), (2.0, 0));
        // v = 255, 256, 257, 258 → 127.5, 128, 128.5, 129 → 128, 128, 128, 129.
        assert_eq!(codes, vec![128, 128, 128, 129]);
        // relu on the requantized codes: max(q', z') with z' = 255 saturates everything.
        let (codes, _, _) = run(op(Add, true, -400.0), &t).unwrap();
        assert_eq!(codes, vec![255; 4]);
    }

    #[test]
    fn add_errors_where_pytorch_raises() {
        use ScalarKind::Add;
        for c in [1e9, -1e9, f64::NAN, f64::INFINITY] {
            let e = run(op(Add, false, c), &x()).unwrap_err().to_string();
            assert!(e.contains("int32"), "{e}");
        }
        // 2^31 − 1 codes still fit.
        assert!(run(op(Add, false, 214748364.7), &x()).is_ok());
    }

    #[test]
    fn mul_changes_qparams_only() {
        use ScalarKind::Mul;
        assert_eq!(
            run(op(Mul, false, 3.0), &x()).unwrap(),
            (vec![0, 1, 100, 255], 3.0 * 0.1, 100)
        );
        assert_eq!(
            run(op(Mul, true, 3.0), &x()).unwrap(),
            (vec![100, 100, 100, 255], 3.0 * 0.1, 100)
        );
        assert_eq!(
            run(op(Mul, false, 0.0), &x()).unwrap(),
            (vec![0; 4], 1.0, 0)
        );
        assert_eq!(
            run(op(Mul, true, -0.0), &x()).unwrap(),
            (vec![0; 4], 1.0, 0)
        );
        assert_eq!(
            run(op(Mul, false, -3.0), &x()).unwrap(),
            (vec![255, 254, 155, 0], 3.0 * 0.1, 155)
        );
        assert_eq!(
            run(op(Mul, true, -3.0), &x()).unwrap().0,
            vec![255, 254, 155, 155]
        );
        assert!(run(op(Mul, false, f64::NAN), &x()).is_err());
        assert!(run(op(Mul, false, f64::INFINITY), &x()).is_err());
    }

    #[test]
    fn memory_format_changes_nothing() {
        let mut t = QTensor::new(vec![1, 2, 1, 2], vec![3, 200, 7, 90], 0.25, 30);
        let a = run(op(ScalarKind::Add, true, 70.0), &t).unwrap();
        t.memory_format = MemoryFormat::ChannelsLast;
        assert_eq!(run(op(ScalarKind::Add, true, 70.0), &t).unwrap(), a);
    }

    #[test]
    fn graph_nodes_must_carry_the_kernels_qparams() {
        let o = op(ScalarKind::Mul, false, 0.5);
        let v = Value::Quantized(x());
        let given = |scale: f64, zero_point: i64| OutQParams {
            scale,
            zero_point,
            quant_min: 0,
            quant_max: 255,
        };
        let c = ctx(Flow::ConvertFx);
        assert!(o.plan(&c, &[v.meta()], Some(&given(0.05, 100))).is_ok());
        assert!(o.plan(&c, &[v.meta()], Some(&given(0.1, 100))).is_err());
        assert!(o.plan(&c, &[v.meta()], Some(&given(0.05, 99))).is_err());
    }

    #[test]
    fn reference_flows_compute_in_f32_then_quantize() {
        let t = QTensor::new(vec![3], vec![0, 10, 20], 0.5, 10);
        let v = Value::Quantized(t);
        let out = OutQParams {
            scale: 0.5,
            zero_point: 10,
            quant_min: 0,
            quant_max: 127,
        };
        for (flow, top) in [
            (Flow::ConvertToReferenceFx, 255),
            (Flow::ConvertToReferenceDecomposedFx, 127),
        ] {
            // x = −5, 0, 5; x + 100 = 95, 100, 105 → 200, 210, 220 → clamped by the flow.
            let o = op(ScalarKind::Add, false, 100.0);
            let plan = o.plan(&ctx(flow), &[v.meta()], Some(&out)).unwrap();
            let outs = plan.predict(&[&v]).unwrap();
            let want: Vec<Pred> = [200, 210, 220]
                .map(|c: i64| Pred::Exact(c.min(top)))
                .to_vec();
            assert_eq!(outs[0].ints().unwrap(), &want[..]);
            assert_eq!(
                outs[1].values,
                Predicted::Ranges(vec![(95.0, 95.0), (100.0, 100.0), (105.0, 105.0)])
            );
            // x · −0.5 with relu: 2.5, 0, 0 → 15, 10, 10. f32(c) is used: 0.1 → 0.1f32.
            let o = op(ScalarKind::Mul, true, -0.5);
            let plan = o.plan(&ctx(flow), &[v.meta()], Some(&out)).unwrap();
            let outs = plan.predict(&[&v]).unwrap();
            assert_eq!(outs[0].ints().unwrap(), &[15, 10, 10].map(Pred::Exact)[..]);
            assert!(o.plan(&ctx(flow), &[v.meta()], None).is_err());
        }
        // The number enters as f32: x · f32(0.1) differs from f32(x · 0.1 in double) for x = 3.
        let t = Value::Quantized(QTensor::new(vec![1], vec![6], 0.5, 0));
        let o = op(ScalarKind::Mul, false, 0.1);
        let plan = o
            .plan(&ctx(Flow::ConvertToReferenceFx), &[t.meta()], Some(&out))
            .unwrap();
        let outs = plan.predict(&[&t]).unwrap();
        assert_eq!(
            outs[1].values,
            Predicted::Ranges(vec![(3.0f32 * 0.1f32, 3.0f32 * 0.1f32)])
        );
    }

    #[test]
    fn untraced_elements_have_the_traced_values_and_no_text() {
        // Each integer kernel (shift, requantize, rescale, zero, negate), relu-fused or not, and
        // the float path: predict's untraced table matches the traced derivation code by code.
        let (s, z) = (0.5, 10);
        let ops = [
            op(ScalarKind::Add, false, 3.0),
            op(ScalarKind::Add, true, 100.0),
            op(ScalarKind::Mul, true, 0.5),
            op(ScalarKind::Mul, false, 0.0),
            op(ScalarKind::Mul, true, -2.0),
        ];
        let out = OutQParams {
            scale: 0.3,
            zero_point: 4,
            quant_min: 0,
            quant_max: 255,
        };
        let mut plans: Vec<ScalarPlan> = Vec::new();
        for o in ops {
            let kernel = o.kernel(s, z).unwrap();
            for (flow, path) in [
                (Flow::ConvertFx, Path::Integer(kernel)),
                (Flow::ConvertToReferenceDecomposedFx, Path::Float(out)),
            ] {
                plans.push(ScalarPlan {
                    op: o,
                    flow,
                    input: (s, z),
                    path,
                    shape: vec![256],
                });
            }
        }
        let kernels: std::collections::HashSet<_> = plans
            .iter()
            .filter_map(|p| match p.path {
                Path::Integer(k) => Some(std::mem::discriminant(&k)),
                Path::Float(_) => None,
            })
            .collect();
        assert_eq!(kernels.len(), 5);
        for p in &plans {
            for c in 0..=255u8 {
                let (quiet, traced) = (p.element(c, false), p.element(c, true));
                assert!(quiet.steps.is_empty());
                assert!(traced.steps.len() >= 2 || !p.op.relu && traced.steps.len() == 1);
                assert_eq!((quiet.value, quiet.float), (traced.value, traced.float));
            }
        }
    }

    /// The derivation shows the requantize product (the value comes from `requantize_val`) and
    /// names the float op by its symbol.
    #[test]
    fn traces_show_the_product_and_the_op_symbol() {
        let (s, z) = (0.5, 10);
        let add = op(ScalarKind::Add, false, 100.0);
        let kernel = add.kernel(s, z).unwrap();
        let Kernel::Requantize { multiplier: m, .. } = kernel else {
            panic!("{kernel:?}")
        };
        let plan = |op, flow, path| ScalarPlan {
            op,
            flow,
            input: (s, z),
            path,
            shape: vec![1],
        };
        // q = 11: v = 11 − 10 + 200 = 201.
        let e = plan(add, Flow::ConvertFx, Path::Integer(kernel)).element(11, true);
        let product = format!("= {:e}, RNE", 201f32 * m);
        assert!(e.steps.iter().any(|(_, t)| t.contains(&product)), "{e:?}");
        let out = OutQParams {
            scale: 0.3,
            zero_point: 4,
            quant_min: 0,
            quant_max: 255,
        };
        for (o, symbol) in [(add, " + "), (op(ScalarKind::Mul, false, 2.0), " · ")] {
            let p = plan(o, Flow::ConvertToReferenceFx, Path::Float(out));
            let e = p.element(11, true);
            assert!(e.steps.iter().any(|(_, t)| t.contains(symbol)), "{e:?}");
            assert!(p.rule().lines.iter().any(|(_, t)| t.contains(symbol)));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let o = op(ScalarKind::Add, false, 1.0);
        let c = ctx(Flow::ConvertFx);
        let v = Value::Quantized(x());
        assert!(o.plan(&c, &[], None).is_err());
        assert!(o.plan(&c, &[v.meta(), v.meta()], None).is_err());
        let bad = Value::Quantized(QTensor::new(vec![1], vec![0], 0.0, 0));
        assert!(o.plan(&c, &[bad.meta()], None).is_err());
        let bad = Value::Quantized(QTensor::new(vec![1], vec![0], 0.1, 256));
        assert!(o.plan(&c, &[bad.meta()], None).is_err());
        let t = Value::Tensor(crate::tensor::Tensor::f32(vec![1], vec![0.0]));
        assert!(o.plan(&c, &[t.meta()], None).is_err());
        // Predicting other inputs than planned is an error.
        let plan = o.plan(&c, &[v.meta()], None).unwrap();
        let other = Value::Quantized(QTensor::new(vec![2], vec![0, 0], 0.1, 100));
        assert!(plan.predict(&[&other]).is_err());
        assert!(plan.predict(&[]).is_err());
        assert!(plan.trace(&[&v], 0, 9).is_err());
        assert!(plan.trace(&[&v], 0, 3).unwrap().len() > 1);
    }
}
