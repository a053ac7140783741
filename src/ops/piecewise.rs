//! Piecewise-linear activations on a quint8 tensor: `quantized::hardswish(x, so, zo)` (FX:
//! `nnq.Hardswish`) and `hardsigmoid` (`F.hardsigmoid`, `nn.Hardsigmoid` on a quantized tensor;
//! the kernel picks the output qparams `(1/256, 0)`), `quantized::leaky_relu(x, slope, inplace,
//! so, zo)` (FX: `nnq.LeakyReLU`).
//!
//! Each output code depends on its input code only, through an f32 function `f` of the
//! dequantized value that is the same in every path:
//! - hardswish `f(x) = f32(f32(x · min(max(f32(x + 3), 0), 6)) / 6)`;
//! - hardsigmoid `f(x) = f32(min(max(f32(x + 3), 0), 6) / 6)`;
//! - leaky_relu `f(x) = x > 0 ? x : f32(x · f32(slope))`.
//!
//! Kernels:
//! - **ATen** (fbgemm, x86, onednn; `aten/src/ATen/native/quantized/cpu/qhardswish.cpp` →
//!   `qhardswish_kernel` in `kernels/QuantizedOpKernels.cpp`), the output allocated in
//!   `qx.suggest_memory_format()`: the vector lambda dequantizes with
//!   `fma(s, q, f32(s·(−z)))` and quantizes `f(x)` with `QuantizeAvx2` and `f32(1.0/so)` (double
//!   division); the scalar lambda dequantizes `f32(s·(q − z))` and quantizes with `quantize_val`
//!   (`f32(1/f32(so))`). Which element takes which lambda: [`super::aten_vec::Lanes`].
//!   hardsigmoid (`qhardsigmoid.cpp: hardsigmoid_quantized_cpu` → `qhardsigmoid_kernel`) is the
//!   same with `(so, zo) = (0.00390625, 0)` and the vector reciprocal `f32(1.0/0.00390625) = 256`;
//!   leaky_relu (`qrelu.cpp: quantized_leaky_relu` → `leaky_qrelu_out_kernel`, every engine)
//!   with the vector reciprocal `f32(1/f32(so))`.
//! - **QNNPACK** (qnnpack, quint8; `qnnpack_hardswish` → `qnnpack/src/hardswish.c`,
//!   `qnnpack_hardsigmoid` → `qnnpack/src/hardsigmoid.c`): a 256-entry
//!   table, `x = f32(s·f32(i − z))`, `v = f32(f32(f32(1/so)·f(x)) + zo)` (the zero point added
//!   before rounding), entry `RNE(clamp(v, 0, 255))`. QNNPACK refuses scales that are not
//!   normal f32 values.
//!
//! Reference flows: the flow's dequantize, the float op (`nn.Hardswish` / `nn.Hardsigmoid`
//! compute the same `f` in f32: exact), the flow's quantize node with the given qparams
//! (hardsigmoid's fixed-qparams observer gives `(1/256, 0)`, 0..255).

use super::add::checked_out;
use super::aten_vec::{self, Dequant, Lanes, Operand};
use super::{expect_inputs, Meta, Op, OutQParams, Output, Plan, Predicted, Rule, Value};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// A piecewise-linear activation of this module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Piecewise {
    /// `quantized::hardswish(x, output_scale, output_zero_point)`.
    Hardswish,
    /// `hardsigmoid` on a quantized tensor.
    Hardsigmoid,
    /// `quantized::leaky_relu(x, negative_slope, inplace, output_scale, output_zero_point)`.
    LeakyRelu { negative_slope: f64 },
}

/// hardsigmoid's output qparams for quint8 (`1.0 / 2^8`, 0).
const HARDSIGMOID_QPARAMS: (f64, i64) = (0.00390625, 0);

impl Piecewise {
    fn op_name(&self) -> &'static str {
        match self {
            Piecewise::Hardswish => "hardswish",
            Piecewise::Hardsigmoid => "hardsigmoid",
            Piecewise::LeakyRelu { .. } => "leaky_relu",
        }
    }

    /// The f32 function of the dequantized value.
    fn f(&self, x: f32) -> f32 {
        match self {
            Piecewise::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Piecewise::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Piecewise::LeakyRelu { negative_slope } => {
                if x > 0.0 {
                    x
                } else {
                    x * *negative_slope as f32
                }
            }
        }
    }

    fn describe_f(&self) -> &'static str {
        match self {
            Piecewise::Hardswish => "f(x) = f32(f32(x·min(max(f32(x+3), 0), 6))/6)",
            Piecewise::Hardsigmoid => "f(x) = f32(min(max(f32(x+3), 0), 6)/6)",
            Piecewise::LeakyRelu { .. } => "f(x) = x > 0 ? x : f32(x·f32(slope))",
        }
    }

    /// The reciprocal the ATen vector lambda quantizes with.
    fn vector_inv(&self, so: f64) -> f32 {
        match self {
            Piecewise::Hardswish | Piecewise::Hardsigmoid => aten_vec::inv64(so),
            Piecewise::LeakyRelu { .. } => aten_vec::inv32(so),
        }
    }

    /// Whether QNNPACK has its own table kernel for the op under the qnnpack engine.
    fn has_qnnpack_table(&self) -> bool {
        matches!(self, Piecewise::Hardswish | Piecewise::Hardsigmoid)
    }

    /// The output qparams the quantized kernel picks itself.
    fn kernel_qparams(&self) -> Option<(f64, i64)> {
        match self {
            Piecewise::Hardsigmoid => Some(HARDSIGMOID_QPARAMS),
            Piecewise::Hardswish | Piecewise::LeakyRelu { .. } => None,
        }
    }

    /// The QNNPACK table entry of code `i`.
    fn qnnpack_entry(&self, i: u8, d: &Dequant, so: f64, zo: i64) -> i64 {
        let x = d.scalar(i);
        let v = aten_vec::inv32(so) * self.f(x) + zo as f32;
        v.clamp(0.0, 255.0).round_ties_even() as i64
    }
}

/// How every code maps to its output.
#[derive(Debug)]
enum Path {
    /// ATen: per code, the vector and the scalar lambda's output; `lanes` picks per element.
    Aten {
        lanes: Lanes,
        vector: Box<[i64; 256]>,
        scalar: Box<[i64; 256]>,
    },
    /// QNNPACK's lookup table.
    Qnnpack { lut: Box<[i64; 256]> },
    /// A reference flow: per code, its quantized float result.
    Float { table: Box<[Option<i64>; 256]> },
}

impl Op for Piecewise {
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
        let input = &expect_inputs(op, inputs, 1)?[0];
        let (s, z) = input.qparams(op)?;
        validate_qparams(&format!("{op} input qparams"), s, z, 0, 255)?;
        if let Piecewise::LeakyRelu { negative_slope } = self {
            if !(*negative_slope as f32).is_finite() {
                return Err(Error::invalid(
                    op,
                    format!("negative_slope {negative_slope} is not a finite f32"),
                ));
            }
        }
        let format = Operand::of(input)?.suggest_memory_format();
        let out = match (ctx.flow.is_integer(), self.kernel_qparams()) {
            (true, Some((scale, zero_point))) => {
                let fixed = OutQParams {
                    scale,
                    zero_point,
                    quant_min: 0,
                    quant_max: 255,
                };
                if out.is_some_and(|o| (o.scale, o.zero_point) != (scale, zero_point)) {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "the quantized kernel's output qparams are ({scale}, {zero_point})"
                        ),
                    ));
                }
                fixed
            }
            _ => checked_out(op, out)?,
        };
        let (so, zo) = (out.scale, out.zero_point);
        let d = Dequant::new(s, z);
        let codes = || (0..=255u8).map(|q| q as usize);
        let path = if !ctx.flow.is_integer() {
            let (lo, hi) = ctx.flow.clamp(out.quant_min, out.quant_max);
            let mut table = Box::new([None; 256]);
            for q in codes() {
                let x = ctx.flow.dequantize(q as i64, s, z);
                table[q] = ctx.flow.quantize(self.f(x), so, zo, lo, hi);
            }
            Path::Float { table }
        } else if ctx.engine == Engine::Qnnpack && self.has_qnnpack_table() {
            for (what, v) in [("input", s), ("output", so)] {
                if !(v as f32).is_normal() {
                    return Err(Error::invalid(
                        op,
                        format!("QNNPACK refuses the {what} scale {v}: not a normal f32"),
                    ));
                }
            }
            let mut lut = Box::new([0; 256]);
            for q in codes() {
                lut[q] = self.qnnpack_entry(q as u8, &d, so, zo);
            }
            Path::Qnnpack { lut }
        } else {
            let lanes = Lanes::unary(op, input, format, &ctx.cpu)?;
            let inv = self.vector_inv(so);
            let (mut vector, mut scalar) = (Box::new([0; 256]), Box::new([0; 256]));
            for q in codes() {
                vector[q] = aten_vec::quantize_vec(self.f(d.vector(q as u8)), inv, zo);
                scalar[q] = aten_vec::quantize_val(self.f(d.scalar(q as u8)), so, zo)
                    .ok_or_else(|| Error::invalid(op, "NaN before quantize_val"))?;
            }
            Path::Aten {
                lanes,
                vector,
                scalar,
            }
        };
        Ok(Box::new(PiecewisePlan {
            op: *self,
            flow: ctx.flow,
            dequant: d,
            path,
            out,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct PiecewisePlan {
    op: Piecewise,
    flow: Flow,
    dequant: Dequant,
    path: Path,
    out: OutQParams,
    shape: Vec<usize>,
}

impl PiecewisePlan {
    fn value(&self, q: u8, i: usize) -> Option<i64> {
        match &self.path {
            Path::Aten {
                lanes,
                vector,
                scalar,
            } => Some(if lanes.is_vector(i) {
                vector[q as usize]
            } else {
                scalar[q as usize]
            }),
            Path::Qnnpack { lut } => Some(lut[q as usize]),
            Path::Float { table } => table[q as usize],
        }
    }
}

impl Plan for PiecewisePlan {
    fn rule(&self) -> Rule {
        let (so, zo) = (self.out.scale, self.out.zero_point);
        let f = self.op.describe_f();
        match &self.path {
            Path::Aten { lanes, .. } => Rule::default()
                .with(
                    "kernel",
                    format!(
                        "ATen {}: vector lambda fma-dequantize, {f}, QuantizeAvx2 with inv \
                         {:e}; scalar lambda plain dequantize, {f}, quantize_val ({so}, {zo})",
                        self.op.op_name(),
                        self.op.vector_inv(so)
                    ),
                )
                .with("layout", lanes.describe()),
            Path::Qnnpack { .. } => Rule::default().with(
                "kernel",
                format!(
                    "QNNPACK table: x = f32(s·f32(i − z)), {f}, RNE(clamp(f32(f32(1/so)·f(x)) + \
                     {zo}, 0, 255))"
                ),
            ),
            Path::Float { .. } => {
                let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
                Rule::default()
                    .with("float op", format!("{f} on the dequantized input (exact)"))
                    .with(
                        "quantize",
                        format!("{} ({so}, {zo}), clamp {lo}..{hi}", self.flow.name()),
                    )
            }
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let t = inputs[0].quantized("input")?;
        if t.shape != self.shape {
            return Err(Error::shape(
                self.op.op_name(),
                format!("planned for {:?}, got {:?}", self.shape, t.shape),
            ));
        }
        let values = t.data.iter().enumerate().map(|(i, &q)| self.value(q, i));
        let mut outs = vec![Output::new(
            "int_repr",
            self.shape.clone(),
            Predicted::from_options(values),
        )];
        if let Path::Float { .. } = self.path {
            // The float op before the quantize node (exact: one f32 function of the code).
            let floats = t.data.iter().map(|&q| {
                let x = self.flow.dequantize(q as i64, t.scale, t.zero_point);
                let y = self.op.f(x);
                (y, y)
            });
            outs.insert(
                1,
                Output::new(
                    "pre_quant",
                    self.shape.clone(),
                    Predicted::Ranges(floats.collect()),
                ),
            );
        }
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
        let t = inputs[0].quantized("input")?;
        if output != 0 {
            return Ok(vec![format!("rule: {}", self.rule())]);
        }
        let q = *t
            .data
            .get(i)
            .ok_or_else(|| Error::invalid(self.op.op_name(), "element index out of range"))?;
        let d = &self.dequant;
        let line = match &self.path {
            Path::Aten { lanes, .. } => {
                let v = lanes.is_vector(i);
                let x = d.at(q, v);
                let side = if v { "vector" } else { "scalar" };
                format!("q {q}: {side} x {x:e}, f(x) {:e}", self.op.f(x))
            }
            Path::Qnnpack { .. } => {
                let x = d.scalar(q);
                format!("q {q}: table x {x:e}, f(x) {:e}", self.op.f(x))
            }
            Path::Float { .. } => {
                let x = self.flow.dequantize(q as i64, t.scale, t.zero_point);
                format!("q {q}: x {x:e}, f(x) {:e}", self.op.f(x))
            }
        };
        Ok(vec![
            format!("{line} → {:?}", self.value(q, i)),
            format!("rule: {}", self.rule()),
        ])
    }

    fn lowered(&self) -> Option<super::Lowered<'_>> {
        (!matches!(self.path, Path::Float { .. })).then_some(super::Lowered::Pointwise(self))
    }
}

/// Function 0: ATen's vector lambda or QNNPACK's table; function 1: ATen's scalar lambda.
impl super::Pointwise for PiecewisePlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn arity(&self) -> usize {
        1
    }
    fn functions(&self) -> usize {
        2
    }
    fn source(&self, i: usize) -> (usize, [(usize, usize); 2]) {
        let f = match &self.path {
            Path::Aten { lanes, .. } => usize::from(!lanes.is_vector(i)),
            _ => 0,
        };
        (f, [(0, i), (0, 0)])
    }
    fn value(&self, f: usize, _qparams: &[(f64, i64)], [q, _]: [u8; 2]) -> Option<i64> {
        let q = q as usize;
        match &self.path {
            Path::Aten { vector, scalar, .. } => Some(if f == 0 { vector[q] } else { scalar[q] }),
            Path::Qnnpack { lut } => Some(lut[q]),
            Path::Float { table } => table[q],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Isa};
    use crate::numerics::bound::Pred;
    use crate::ops::QTensor;

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

    fn run(op: Piecewise, c: Ctx, x: QTensor, o: OutQParams) -> Result<Vec<Pred>> {
        let x = Value::Quantized(x);
        let plan = op.plan(&c, &[x.meta()], Some(&o))?;
        Ok(plan.predict(&[&x])?.remove(0).ints().unwrap().to_vec())
    }

    #[test]
    fn hardswish_by_hand() {
        // s = 0.5, z = 10: q 0 → x −5 → 0; q 8 → −1 → −1·2/6 = −1/3; q 12 → 1 → 4/6;
        // q 20 → 5 → 5. so = 1/6, zo = 100: −2 → 98, 4 → 104, 30 → 130.
        let x = QTensor::new(vec![4], vec![0, 8, 12, 20], 0.5, 10);
        for engine in [Engine::Fbgemm, Engine::Qnnpack] {
            let p = run(
                Piecewise::Hardswish,
                ctx(Flow::ConvertFx, engine),
                x.clone(),
                out(1.0 / 6.0, 100),
            );
            assert_eq!(p.unwrap(), [100, 98, 104, 130].map(Pred::Exact).to_vec());
        }
        let p = run(
            Piecewise::Hardswish,
            ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm),
            x,
            OutQParams {
                quant_max: 127,
                ..out(1.0 / 6.0, 100)
            },
        );
        assert_eq!(p.unwrap(), [100, 98, 104, 127].map(Pred::Exact).to_vec());
    }

    /// Each kernel's rule states the op's float function.
    #[test]
    fn rules_state_the_function() {
        let x = Value::Quantized(QTensor::new(vec![1], vec![5], 1.0, 0));
        for (op, f) in [
            (Piecewise::Hardswish, "f(x) = f32(f32(x·min"),
            (Piecewise::Hardsigmoid, "f(x) = f32(min(max"),
            (
                Piecewise::LeakyRelu {
                    negative_slope: 0.01,
                },
                "f(x) = x > 0 ? x",
            ),
        ] {
            for engine in [Engine::Fbgemm, Engine::Qnnpack] {
                let c = ctx(Flow::ConvertFx, engine);
                // hardsigmoid's quantized kernel fixes its output qparams.
                let o = match op {
                    Piecewise::Hardsigmoid => out(1.0 / 256.0, 0),
                    _ => out(0.1, 10),
                };
                let plan = op.plan(&c, &[x.meta()], Some(&o)).unwrap();
                let rule = plan.rule();
                assert!(rule.lines.iter().any(|(_, t)| t.contains(f)), "{rule:?}");
            }
        }
    }

    /// The reference flows' float leaky_relu keeps PyTorch's `x > 0 ? x : x·slope`
    /// (`aten/src/ATen/native/cpu/Activation.cpp` `leaky_relu_kernel`, scalar and vector
    /// lambdas): at x = +0 with a negative slope the product gives -0.0, the `pre_quant` value
    /// torch 2.15.0 records (`F.leaky_relu(torch.tensor([0.0]), -0.5)` has its sign bit set).
    #[test]
    fn leaky_relu_of_zero_takes_the_slope_branch() {
        let x = Value::Quantized(QTensor::new(vec![3], vec![8, 10, 12], 0.5, 10));
        for (slope, zero_bits) in [(-0.5, 0x8000_0000u32), (0.01, 0)] {
            let op = Piecewise::LeakyRelu {
                negative_slope: slope,
            };
            let c = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
            let plan = op.plan(&c, &[x.meta()], Some(&out(0.1, 10))).unwrap();
            let outs = plan.predict(&[&x]).unwrap();
            let pre = outs.iter().find(|o| o.name == "pre_quant").unwrap();
            let Predicted::Ranges(r) = &pre.values else {
                panic!("{:?}", pre.values)
            };
            let bits: Vec<u32> = r.iter().map(|&(lo, _)| lo.to_bits()).collect();
            let neg = (-(slope as f32)).to_bits(); // x = -1: -1·slope
            assert_eq!(bits, [neg, zero_bits, 1.0f32.to_bits()], "slope {slope}");
        }
    }

    #[test]
    fn qnnpack_adds_the_zero_point_before_rounding() {
        // f(5) = 5, so = 2: 2.5. zo = 0: both 2. zo = 1: ATen RNE(2.5) + 1 = 3, QNNPACK
        // RNE(2.5 + 1) = 4.
        let x = QTensor::new(vec![1], vec![5], 1.0, 0);
        let o = out(2.0, 0);
        let o1 = out(2.0, 1);
        let aten = ctx(Flow::ConvertFx, Engine::X86);
        let qnn = ctx(Flow::ConvertFx, Engine::Qnnpack);
        assert_eq!(
            run(Piecewise::Hardswish, aten, x.clone(), o).unwrap(),
            [Pred::Exact(2)]
        );
        assert_eq!(
            run(Piecewise::Hardswish, qnn, x.clone(), o).unwrap(),
            [Pred::Exact(2)]
        );
        assert_eq!(
            run(Piecewise::Hardswish, aten, x.clone(), o1).unwrap(),
            [Pred::Exact(3)]
        );
        assert_eq!(
            run(Piecewise::Hardswish, qnn, x, o1).unwrap(),
            [Pred::Exact(4)]
        );
    }

    #[test]
    fn hardsigmoid_picks_its_output_qparams() {
        // s = 0.25, z = 12: q 0 → x −3 → 0; q 12 → 0 → 0.5 → 128; q 13 → 0.25 → f32(3.25/6)
        // → ·256 = 138.67 → 139; q 30 → 4.5 → 1 → 256 → 255.
        let x = QTensor::new(vec![4], vec![0, 12, 13, 30], 0.25, 12);
        for engine in [Engine::Onednn, Engine::Qnnpack] {
            let c = ctx(Flow::ConvertFx, engine);
            let v = Value::Quantized(x.clone());
            let plan = Piecewise::Hardsigmoid.plan(&c, &[v.meta()], None).unwrap();
            let outs = plan.predict(&[&v]).unwrap();
            let want = [0, 128, 139, 255].map(Pred::Exact).to_vec();
            assert_eq!(outs[0].ints().unwrap(), &want[..]);
            assert_eq!(outs[1].values, Predicted::Floats(vec![0.00390625]));
            assert_eq!(outs[2].values, Predicted::exact([0]));
            // Given qparams must be the kernel's.
            assert!(Piecewise::Hardsigmoid
                .plan(&c, &[v.meta()], Some(&out(0.5, 0)))
                .is_err());
        }
        // Reference flows take the observer's qparams and return the values and the floats
        // before the quantize node (hardsigmoid of -3, 0, 0.25, 4.5).
        let c = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
        let v = Value::Quantized(x);
        let plan = Piecewise::Hardsigmoid.plan(&c, &[v.meta()], Some(&out(0.00390625, 0)));
        let outs = plan.unwrap().predict(&[&v]).unwrap();
        assert_eq!(outs.len(), 2);
        let floats = [0.0f32, 0.5, 0.25f32 / 6.0 + 0.5, 1.0];
        assert_eq!(
            outs[1].values,
            Predicted::Ranges(floats.iter().map(|&f| (f, f)).collect())
        );
        assert_eq!(
            outs[0].ints().unwrap(),
            &[0, 128, 139, 255].map(Pred::Exact)[..]
        );
    }

    #[test]
    fn leaky_relu_scales_negative_values() {
        // s = 0.5, z = 100, slope 0.25: q 90 → −5 → −1.25; q 110 → 5. so = 0.25, zo = 50:
        // −5 + 50 = 45, 20 + 50 = 70; q 99 → −0.5 → −0.125 → −0.5 → RNE −0 → 50.
        let x = QTensor::new(vec![3], vec![90, 110, 99], 0.5, 100);
        let op = Piecewise::LeakyRelu {
            negative_slope: 0.25,
        };
        for flow in [Flow::ConvertFx, Flow::ConvertToReferenceFx] {
            let p = run(op, ctx(flow, Engine::Qnnpack), x.clone(), out(0.25, 50));
            assert_eq!(p.unwrap(), [45, 70, 50].map(Pred::Exact).to_vec());
        }
        let nan = Piecewise::LeakyRelu {
            negative_slope: f64::NAN,
        };
        assert!(run(nan, ctx(Flow::ConvertFx, Engine::X86), x, out(0.25, 50)).is_err());
    }

    #[test]
    fn errors() {
        let c = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let x = QTensor::new(vec![2], vec![0, 1], 0.5, 10);
        let v = Value::Quantized(x.clone());
        assert!(Piecewise::Hardswish
            .plan(&c, &[], Some(&out(1.0, 0)))
            .is_err());
        assert!(Piecewise::Hardswish.plan(&c, &[v.meta()], None).is_err());
        assert!(run(Piecewise::Hardswish, c, x.clone(), out(f64::NAN, 0)).is_err());
        assert!(run(Piecewise::Hardswish, c, x, out(1.0, 256)).is_err());
        let sub = QTensor::new(vec![1], vec![0], 1e-40, 0);
        let q = ctx(Flow::ConvertFx, Engine::Qnnpack);
        assert!(run(Piecewise::Hardswish, q, sub, out(1.0, 0)).is_err());
    }
}
