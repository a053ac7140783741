//! A golden case as a list of stages: each one op instance with the inputs PyTorch gave it, the
//! context that decides its numerics, and the outputs PyTorch produced.
//!
//! Model cases are checked stage by stage: every quantized op runs on the quantized activation
//! PyTorch recorded before it, so one ambiguous element cannot cascade and a mismatch names the op
//! that caused it. This is also the library's interface for engine authors: iterate the stages,
//! run your engine on [`Stage::inputs`], and compare with [`Stage::compare`].
//!
//! ```
//! use qparity::golden::{manifest::Manifest, Case};
//! use std::path::Path;
//!
//! let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/avx2-seed0");
//! let cpu = Manifest::load(&set)?.cpu()?;
//! let case = Case::load(&set.join("cases/model-linear-qnnpack-ptq-default-0032.json"))?;
//! let mut flipped = 0;
//! for stage in case.stages(&cpu)? {
//!     // Inputs and PyTorch's outputs as ndarray arrays, with the qparams of quantized inputs.
//!     let inputs = stage.input_arrays();
//!     let qparams = stage.input_qparams();
//!     assert_eq!(inputs.len(), qparams.len());
//!     for (name, expected) in stage.expected_arrays() {
//!         // Your engine's result for this output goes here; PyTorch's own is equal, and one
//!         // element off by one is a mismatch with the rule that decides it.
//!         let mut ours: Vec<f64> = expected.iter().copied().collect();
//!         assert_eq!(stage.compare(&name, &ours)?.mismatches(), 0);
//!         if stage.location.starts_with("convert_fx") && stage.location.contains("(linear)") {
//!             ours[0] += 1.0;
//!             let c = stage.compare(&name, &ours)?;
//!             assert_eq!(c.mismatches(), 1);
//!             assert!(c.rule.get("requant").unwrap().starts_with("QNNPACK"));
//!             flipped += 1;
//!         }
//!     }
//! }
//! assert!(flipped > 0);
//! # Ok::<(), qparity::Error>(())
//! ```

use super::{
    Body, Case, FusedArgs, Layer, ModelCase, ObserverDesc, PerTensorOrChannel, PrimArgs,
    PrimExpected, PrimOp, PrimitiveCase, QArgs, QOpArgs, QuantizedLinearArgs, QuantizedRecord,
    Source,
};
use crate::engine::flow::Flow;
use crate::engine::{fbgemm_gemm_isa, CpuFeatures, Ctx, Engine, Isa};
use crate::geometry::Conv2dParams;
use crate::numerics::bound::Pred;
use crate::numerics::observer::{FusedConfig, FusedState, ObserverConfig};
use crate::ops::clamp::Clamp;
use crate::ops::fake_quant::{FakeQuantize, FusedMovingAvgObsFakeQuant};
use crate::ops::layer::{Geometry, QLayer, QWeight};
use crate::ops::observe::{GraphQParams, Observe, WeightQuantize};
use crate::ops::quantize::{Dequantize, Family, FlowDequantize, FlowQuantize, QParams, Quantize};
use crate::ops::{Op, OutQParams, Output, Predicted, QTensor, Value};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// One output PyTorch produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The output's name, matching [`Output::name`].
    pub name: String,
    /// Where it is in the case file.
    pub field: String,
    pub tensor: Tensor,
}

/// One op instance of a case with its inputs and PyTorch's outputs.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Where in the case (`convert_fx run 1, stage 0 (conv2d)`).
    pub location: String,
    /// The report group: a convert flow, `observers`, `weights`, or the primitive op.
    pub group: String,
    pub ctx: Ctx,
    pub op: Arc<dyn Op>,
    pub inputs: Vec<Value>,
    /// Output qparams of a quantized output.
    pub out: Option<OutQParams>,
    pub expected: Vec<Expected>,
}

/// How one element of an engine's output compares with PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Equal to PyTorch's value.
    Equal,
    /// Different from PyTorch's value, but within what the op's proven float bound admits (an
    /// evaluation-order effect, in reference-flow float ops or oneDNN's requantization).
    Admissible,
    /// Different, and no evaluation PyTorch's rule allows gives it.
    Mismatch,
}

/// Per-element verdicts for one output, with the rule that decides them.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub output: String,
    pub verdicts: Vec<Verdict>,
    /// The rule of the stage's plan ([`crate::ops::Plan::rule`]).
    pub rule: crate::ops::Rule,
}

impl Comparison {
    /// Number of mismatched elements.
    pub fn mismatches(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|v| **v == Verdict::Mismatch)
            .count()
    }
}

impl Stage {
    /// The inputs' values as `ndarray` arrays in f64 (quantized inputs as their integer values;
    /// see [`Stage::input_qparams`] for their scale and zero point).
    pub fn input_arrays(&self) -> Vec<ArrayD<f64>> {
        self.inputs
            .iter()
            .map(|v| match v {
                Value::Tensor(t) => to_array(&t.shape, t.to_f64_vec()),
                Value::Quantized(q) => {
                    to_array(&q.shape, q.data.iter().map(|&x| x as f64).collect())
                }
            })
            .collect()
    }

    /// `(scale, zero_point)` of each quantized input.
    pub fn input_qparams(&self) -> Vec<Option<(f64, i64)>> {
        self.inputs.iter().map(|v| v.meta().qparams).collect()
    }

    /// PyTorch's outputs as `ndarray` arrays in f64.
    pub fn expected_arrays(&self) -> Vec<(String, ArrayD<f64>)> {
        self.expected
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    to_array(&e.tensor.shape, e.tensor.to_f64_vec()),
                )
            })
            .collect()
    }

    /// Plans the stage and predicts its outputs.
    pub fn predict(&self) -> Result<(Box<dyn crate::ops::Plan + '_>, Vec<Output>)> {
        let metas: Vec<_> = self.inputs.iter().map(Value::meta).collect();
        let plan = self.op.plan(&self.ctx, &metas, self.out.as_ref())?;
        let refs: Vec<&Value> = self.inputs.iter().collect();
        let outs = plan.predict(&refs)?;
        Ok((plan, outs))
    }

    /// Compares an engine's values for output `name` (flat, PyTorch's layout) with PyTorch's,
    /// element by element, using qparity's prediction to tell evaluation-order effects from
    /// mismatches.
    pub fn compare(&self, name: &str, engine: &[f64]) -> Result<Comparison> {
        let (plan, outs) = self.predict()?;
        let exp = self
            .expected
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::invalid("output", format!("the stage has no output {name:?}")))?;
        let pred = outs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| Error::invalid("output", format!("qparity predicts no {name:?}")))?;
        let theirs = exp.tensor.to_f64_vec();
        if engine.len() != theirs.len() {
            return Err(Error::shape(
                "engine output",
                format!("{} values, PyTorch produced {}", engine.len(), theirs.len()),
            ));
        }
        let verdicts = engine
            .iter()
            .zip(&theirs)
            .enumerate()
            .map(|(i, (&e, &t))| {
                let equal = e.to_bits() == t.to_bits() || (e.is_nan() && t.is_nan()) || e == t;
                if equal {
                    return Verdict::Equal;
                }
                match &pred.values {
                    Predicted::Ints(p)
                        if e.fract() == 0.0 && p.get(i).is_some_and(|p| p.admits(e as i64)) =>
                    {
                        Verdict::Admissible
                    }
                    _ => Verdict::Mismatch,
                }
            })
            .collect();
        Ok(Comparison {
            output: name.to_string(),
            verdicts,
            rule: plan.rule(),
        })
    }
}

fn to_array(shape: &[usize], data: Vec<f64>) -> ArrayD<f64> {
    let n = data.len();
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .unwrap_or_else(|_| ArrayD::from_shape_vec(IxDyn(&[n]), vec![0.0; n]).expect("1-d"))
}

impl Case {
    /// The stages of this case, captured on a CPU with these features (from the set's manifest):
    /// they decide FBGEMM's default kernels and every kernel path that reads the CPU.
    pub fn stages(&self, cpu: &CpuFeatures) -> Result<Vec<Stage>> {
        let isa = fbgemm_gemm_isa(self.header.isa, cpu);
        let cpu = *cpu;
        let engine = match &self.body {
            Body::Model(m) => Some(m.engine),
            Body::Graph(g) => Some(g.engine),
            Body::Primitive(_) => None,
        };
        if let Some(engine) = engine {
            cpu.check_modelled(engine)
                .map_err(|e| self.field_err("engine", e.to_string()))?;
        }
        match &self.body {
            Body::Primitive(p) => primitive_stages(self, p, isa, cpu),
            Body::Model(m) => model_stages(self, m, isa, cpu),
            Body::Graph(g) => graph_stages(self, g, isa, cpu),
        }
    }
}

fn ctx(flow: Flow, engine: Engine, isa: Isa, cpu: CpuFeatures) -> Ctx {
    Ctx {
        flow,
        engine,
        isa,
        cpu,
    }
}

/// Primitives do not depend on the engine or flow; this context is never read.
fn neutral_ctx(isa: Isa, cpu: CpuFeatures) -> Ctx {
    ctx(Flow::ConvertFx, Engine::Fbgemm, isa, cpu)
}

fn need<'a, T>(case: &Case, v: Option<&'a T>, field: &str) -> Result<&'a T> {
    v.ok_or_else(|| case.field_err(field, "missing"))
}

fn expected(name: impl Into<String>, field: impl Into<String>, tensor: Tensor) -> Expected {
    Expected {
        name: name.into(),
        field: field.into(),
        tensor,
    }
}

fn q_params(case: &Case, a: &QArgs, per_channel: bool) -> Result<QParams> {
    if !per_channel {
        return Ok(QParams::PerTensor {
            scale: *need(case, a.scale.as_ref(), "args.scale")?,
            zero_point: *need(case, a.zero_point.as_ref(), "args.zero_point")?,
        });
    }
    let st = need(case, a.scales.as_ref(), "args.scales")?;
    let zt = need(case, a.zero_points.as_ref(), "args.zero_points")?;
    Ok(QParams::PerChannel {
        scales: st.to_f64_vec(),
        scales_f32: st.dtype == DType::F32,
        zero_points: zt
            .as_int()
            .ok_or_else(|| case.field_err("args.zero_points", "expected an integer tensor"))?
            .to_vec(),
        axis: *need(case, a.axis.as_ref(), "args.axis")?,
    })
}

fn expected_field(case: &Case, e: &PrimExpected, name: &str) -> Result<Expected> {
    let t = match name {
        "int_repr" => e.int_repr.as_ref(),
        "output" => e.output.as_ref(),
        "mask" => e.mask.as_ref(),
        _ => None,
    };
    Ok(expected(
        name,
        format!("expected.{name}"),
        need(case, t, &format!("expected.{name}"))?.clone(),
    ))
}

fn range(case: &Case, a: &QArgs) -> Result<(i64, i64)> {
    Ok((
        *need(case, a.quant_min.as_ref(), "args.quant_min")?,
        *need(case, a.quant_max.as_ref(), "args.quant_max")?,
    ))
}

fn primitive_stages(
    case: &Case,
    p: &PrimitiveCase,
    isa: Isa,
    cpu: CpuFeatures,
) -> Result<Vec<Stage>> {
    let stage = |group: String, op: Arc<dyn Op>, inputs, out, expected| Stage {
        location: p.op.name().to_string(),
        group,
        ctx: neutral_ctx(isa, cpu),
        op,
        inputs,
        out,
        expected,
    };
    let group = p.op.name().to_string();
    match &p.args {
        PrimArgs::Quantize(a) => {
            let input = need(case, a.input.as_ref(), "args.input");
            let int_input = || {
                need(
                    case,
                    a.int_repr.as_ref().or(a.input.as_ref()),
                    "args.int_repr",
                )
            };
            let dtype = || need(case, a.dtype.as_ref(), "args.dtype").copied();
            let (op, x, out_name): (Arc<dyn Op>, &Tensor, &str) = match p.op {
                PrimOp::QuantizePerTensor | PrimOp::QuantizePerChannel => (
                    Arc::new(Quantize {
                        family: Family::Aten,
                        qparams: q_params(case, a, p.op == PrimOp::QuantizePerChannel)?,
                        dtype: dtype()?,
                        range: None,
                    }),
                    input?,
                    "int_repr",
                ),
                PrimOp::DecomposedQuantizePerTensor | PrimOp::DecomposedQuantizePerChannel => (
                    Arc::new(Quantize {
                        family: Family::Decomposed,
                        qparams: q_params(case, a, p.op == PrimOp::DecomposedQuantizePerChannel)?,
                        dtype: a.dtype.unwrap_or(crate::numerics::qparams::QDType::Uint8),
                        range: Some(range(case, a)?),
                    }),
                    input?,
                    "output",
                ),
                PrimOp::DequantizePerTensor
                | PrimOp::DequantizePerChannel
                | PrimOp::DecomposedDequantizePerTensor
                | PrimOp::DecomposedDequantizePerChannel => {
                    let family = match p.op {
                        PrimOp::DequantizePerTensor | PrimOp::DequantizePerChannel => Family::Aten,
                        _ => Family::Decomposed,
                    };
                    let per_channel = matches!(
                        p.op,
                        PrimOp::DequantizePerChannel | PrimOp::DecomposedDequantizePerChannel
                    );
                    (
                        Arc::new(Dequantize {
                            family,
                            qparams: q_params(case, a, per_channel)?,
                        }),
                        int_input()?,
                        "output",
                    )
                }
                PrimOp::FakeQuantizePerTensorAffine | PrimOp::FakeQuantizePerChannelAffine => {
                    let (quant_min, quant_max) = range(case, a)?;
                    (
                        Arc::new(FakeQuantize {
                            qparams: q_params(
                                case,
                                a,
                                p.op == PrimOp::FakeQuantizePerChannelAffine,
                            )?,
                            quant_min,
                            quant_max,
                        }),
                        input?,
                        "output",
                    )
                }
                other => {
                    return Err(case.field_err(
                        "args",
                        format!("{} does not take quantize arguments", other.name()),
                    ))
                }
            };
            let mut exp = vec![expected_field(case, &p.expected, out_name)?];
            if p.expected.mask.is_some() {
                exp.push(expected_field(case, &p.expected, "mask")?);
            }
            Ok(vec![stage(
                group,
                op,
                vec![Value::Tensor(x.clone())],
                None,
                exp,
            )])
        }
        PrimArgs::Fused(a) => fused_stage(case, p, a)
            .map(|(op, inputs, exp)| vec![stage(group, op, inputs, None, exp)]),
        PrimArgs::Observer(a) => {
            let cfg = observer_config(case, "args.observer", &a.observer)?;
            let e = &p.expected;
            let fields = [
                ("min_val", &e.min_val),
                ("max_val", &e.max_val),
                ("histogram", &e.histogram),
                ("scale", &e.scale),
                ("zero_point", &e.zero_point),
            ];
            let exp = fields
                .iter()
                .filter_map(|(n, t)| {
                    t.as_ref()
                        .map(|t| expected(*n, format!("expected.{n}"), t.clone()))
                })
                .collect();
            Ok(vec![stage(
                format!("observer/{:?}", a.observer.class),
                Arc::new(Observe { cfg, fused: false }),
                a.batches.iter().cloned().map(Value::Tensor).collect(),
                None,
                exp,
            )])
        }
        PrimArgs::QuantizedLinear(a) => quantized_linear_stage(case, p, a, isa, cpu),
        PrimArgs::QuantizedOp(a) => Ok(vec![quantized_op_stage(case, p, a, isa, cpu)?]),
    }
}

/// The op a quantized-op primitive names, with its parameters.
fn quantized_op(case: &Case, op: PrimOp, params: &serde_json::Value) -> Result<Arc<dyn Op>> {
    fn decode<T: serde::de::DeserializeOwned>(case: &Case, v: &serde_json::Value) -> Result<T> {
        super::decode(&case.path, "args.params", v)
    }
    Ok(match op {
        PrimOp::Relu6 => Arc::new(Clamp::RELU6),
        PrimOp::Hardtanh => Arc::new(decode::<Clamp>(case, params)?),
        PrimOp::Relu => Arc::new(crate::ops::relu::Relu),
        PrimOp::Add => Arc::new(crate::ops::add::Add { relu: false }),
        PrimOp::AddRelu => Arc::new(crate::ops::add::Add { relu: true }),
        PrimOp::Mul => Arc::new(crate::ops::mul::Mul { relu: false }),
        PrimOp::MulRelu => Arc::new(crate::ops::mul::Mul { relu: true }),
        PrimOp::Cat => Arc::new(decode::<crate::ops::cat::Cat>(case, params)?),
        PrimOp::CatRelu => Arc::new(crate::ops::cat::Cat {
            relu: true,
            ..decode(case, params)?
        }),
        PrimOp::Hardswish => Arc::new(crate::ops::piecewise::Piecewise::Hardswish),
        PrimOp::Hardsigmoid => Arc::new(crate::ops::piecewise::Piecewise::Hardsigmoid),
        PrimOp::LeakyRelu => {
            #[derive(serde::Deserialize)]
            struct P {
                negative_slope: f64,
            }
            let negative_slope = decode::<P>(case, params)?.negative_slope;
            Arc::new(crate::ops::piecewise::Piecewise::LeakyRelu { negative_slope })
        }
        PrimOp::Sigmoid => Arc::new(crate::ops::activation::Sigmoid),
        PrimOp::Tanh => Arc::new(crate::ops::activation::Tanh),
        PrimOp::Elu => Arc::new(decode::<crate::ops::activation::Elu>(case, params)?),
        PrimOp::MaxPool2d => Arc::new(decode::<crate::ops::pool::max::MaxPool2d>(case, params)?),
        PrimOp::AvgPool2d => Arc::new(decode::<crate::ops::pool::avg::AvgPool2d>(case, params)?),
        PrimOp::AdaptiveAvgPool2d => Arc::new(decode::<
            crate::ops::pool::adaptive::AdaptiveAvgPool2d,
        >(case, params)?),
        PrimOp::MeanHw => Arc::new(decode::<crate::ops::pool::mean::MeanHw>(case, params)?),
        PrimOp::BatchNorm2d => {
            Arc::new(decode::<crate::ops::batch_norm::BatchNorm2d>(case, params)?)
        }
        PrimOp::Flatten => Arc::new(decode::<crate::ops::flatten::Flatten>(case, params)?),
        PrimOp::AddScalar | PrimOp::AddScalarRelu | PrimOp::MulScalar | PrimOp::MulScalarRelu => {
            use crate::ops::scalar::{ScalarKind, ScalarOp};
            let add = matches!(op, PrimOp::AddScalar | PrimOp::AddScalarRelu);
            let kind = if add {
                ScalarKind::Add
            } else {
                ScalarKind::Mul
            };
            let relu = matches!(op, PrimOp::AddScalarRelu | PrimOp::MulScalarRelu);
            Arc::new(ScalarOp::new(kind, relu, decode(case, params)?))
        }
        other => {
            return Err(case.field_err(
                "op",
                format!("{} is not an op on quantized tensors", other.name()),
            ))
        }
    })
}

fn quantized_op_stage(
    case: &Case,
    p: &PrimitiveCase,
    a: &QOpArgs,
    isa: Isa,
    cpu: CpuFeatures,
) -> Result<Stage> {
    let inputs = a
        .inputs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut q = quantized(
                case,
                &format!("args.inputs[{i}].int_repr"),
                &r.int_repr,
                r.scale,
                r.zero_point,
            )?;
            q.memory_format = r.memory_format;
            Ok(Value::Quantized(q))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut expected = vec![expected_field(case, &p.expected, "int_repr")?];
    let out = if p.op.kernel_picks_output_qparams() {
        // PyTorch's choice is an output to predict, not an input to the op.
        expected.push(expected_qparam(
            "output_scale",
            Tensor::f64(vec![1], vec![a.output_scale]),
        ));
        expected.push(expected_qparam(
            "output_zero_point",
            Tensor::int(DType::I64, vec![1], vec![a.output_zero_point]),
        ));
        None
    } else {
        Some(OutQParams {
            scale: a.output_scale,
            zero_point: a.output_zero_point,
            quant_min: 0,
            quant_max: 255,
        })
    };
    Ok(Stage {
        location: format!("{} ({})", p.op.name(), a.engine.name()),
        group: p.op.name().to_string(),
        ctx: ctx(Flow::ConvertFx, a.engine, isa, cpu),
        op: quantized_op(case, p.op, &a.params)?,
        inputs,
        out,
        expected,
    })
}

/// An output qparam PyTorch's kernel chose, from the case's `args`.
fn expected_qparam(name: &str, tensor: Tensor) -> Expected {
    expected(name, format!("args.{name}"), tensor)
}

type StageParts = (Arc<dyn Op>, Vec<Value>, Vec<Expected>);

fn fused_stage(case: &Case, p: &PrimitiveCase, a: &FusedArgs) -> Result<StageParts> {
    let steps = need(case, p.expected.steps.as_ref(), "expected.steps")?;
    if steps.len() != a.batches.len() {
        return Err(case.field_err(
            "expected.steps",
            format!("{} steps for {} batches", steps.len(), a.batches.len()),
        ));
    }
    if a.ch_axis < 0 || a.quant_min > a.quant_max {
        return Err(case.field_err("args", "invalid ch_axis or quant range"));
    }
    let op = FusedMovingAvgObsFakeQuant {
        cfg: FusedConfig {
            averaging_const: a.averaging_const as f32,
            quant_min: a.quant_min,
            quant_max: a.quant_max,
            ch_axis: a.ch_axis as usize,
            per_row_fake_quant: a.per_row_fake_quant,
            symmetric_quant: a.symmetric_quant,
        },
        observer_on: a.observer_on.on(),
        fake_quant_on: a.fake_quant_on.on(),
        initial: a
            .initial
            .as_ref()
            .map(|i| fused_initial(case, i))
            .transpose()?,
    };
    let mut exp = Vec::new();
    for (k, s) in steps.iter().enumerate() {
        for (n, t) in [
            ("running_min", &s.running_min),
            ("running_max", &s.running_max),
            ("scale", &s.scale),
            ("zero_point", &s.zero_point),
            ("output", &s.output),
        ] {
            exp.push(expected(
                format!("step {k} {n}"),
                format!("expected.steps[{k}].{n}"),
                t.clone(),
            ));
        }
    }
    Ok((
        Arc::new(op),
        a.batches.iter().cloned().map(Value::Tensor).collect(),
        exp,
    ))
}

/// The case's `args.initial` buffers as the op's starting state.
fn fused_initial(case: &Case, i: &super::FusedInitial) -> Result<FusedState> {
    let floats = |n: &str, t: &Tensor| -> Result<Vec<f32>> {
        match t.dtype {
            DType::F32 => Ok(t.to_f64_vec().into_iter().map(|v| v as f32).collect()),
            other => Err(case.field_err(
                &format!("args.initial.{n}"),
                format!("expected f32, got {other:?}"),
            )),
        }
    };
    let zero_point = int_vec(case, "args.initial.zero_point", &i.zero_point)?
        .into_iter()
        .map(|z| {
            i32::try_from(z).map_err(|_| {
                case.field_err("args.initial.zero_point", format!("{z} is not an i32"))
            })
        })
        .collect::<Result<_>>()?;
    Ok(FusedState {
        running_min: floats("running_min", &i.running_min)?,
        running_max: floats("running_max", &i.running_max)?,
        scale: floats("scale", &i.scale)?,
        zero_point,
    })
}

fn int_vec(case: &Case, field: &str, t: &Tensor) -> Result<Vec<i64>> {
    t.as_int().map(<[i64]>::to_vec).ok_or_else(|| {
        case.field_err(
            field,
            format!("expected an integer tensor, got {:?}", t.dtype),
        )
    })
}

fn quantized_linear_stage(
    case: &Case,
    p: &PrimitiveCase,
    a: &QuantizedLinearArgs,
    isa: Isa,
    cpu: CpuFeatures,
) -> Result<Vec<Stage>> {
    let [n, k] = a.weight_int_repr.shape[..] else {
        return Err(case.field_err(
            "args.weight_int_repr",
            "must be [out_features, in_features]",
        ));
    };
    let weight = QWeight {
        shape: a.weight_int_repr.shape.clone(),
        int_repr: int_vec(case, "args.weight_int_repr", &a.weight_int_repr)?
            .into_iter()
            .map(|v| {
                i8::try_from(v).map_err(|_| {
                    case.field_err("args.weight_int_repr", format!("{v} is not an int8"))
                })
            })
            .collect::<Result<_>>()?,
        scales: a.weight_scale.values().iter().map(|&s| s as f32).collect(),
        zero_points: a.weight_zero_point.values(),
        per_channel: match (&a.weight_scale, &a.weight_zero_point) {
            (PerTensorOrChannel::PerTensor(_), PerTensorOrChannel::PerTensor(_)) => false,
            (PerTensorOrChannel::PerChannel(_), PerTensorOrChannel::PerChannel(_)) => true,
            _ => {
                return Err(case.field_err(
                    "args.weight_zero_point",
                    "per tensor or per channel like args.weight_scale",
                ))
            }
        },
    };
    let bias = match &a.bias {
        Some(b) => Some(
            b.as_f32()
                .ok_or_else(|| case.field_err("args.bias", "expected an f32 tensor"))?
                .to_vec(),
        ),
        None => None,
    };
    let layer = QLayer {
        geometry: Geometry::Linear {
            in_features: k,
            out_features: n,
        },
        bias,
        weight,
        relu: a.relu,
        cache: Default::default(),
    };
    let xq_t = need(
        case,
        p.expected.input_int_repr.as_ref(),
        "expected.input_int_repr",
    )?;
    let xq = quantized(
        case,
        "expected.input_int_repr",
        xq_t,
        a.input_scale,
        a.input_zero_point,
    )?;
    let fctx = ctx(Flow::ConvertFx, a.engine, isa, cpu);
    let quantize = Quantize {
        family: Family::Aten,
        qparams: QParams::PerTensor {
            scale: a.input_scale,
            zero_point: a.input_zero_point,
        },
        dtype: crate::numerics::qparams::QDType::Quint8,
        range: None,
    };
    Ok(vec![
        Stage {
            location: "quantize_per_tensor(input)".into(),
            group: p.op.name().to_string(),
            ctx: fctx,
            op: Arc::new(quantize),
            inputs: vec![Value::Tensor(a.input.clone())],
            out: None,
            expected: vec![expected(
                "int_repr",
                "expected.input_int_repr",
                xq_t.clone(),
            )],
        },
        Stage {
            location: format!(
                "quantized::linear{} ({})",
                if a.relu { "_relu" } else { "" },
                a.engine.name()
            ),
            group: p.op.name().to_string(),
            ctx: fctx,
            op: Arc::new(layer),
            inputs: vec![Value::Quantized(xq)],
            out: Some(OutQParams {
                scale: a.output_scale,
                zero_point: a.output_zero_point,
                quant_min: 0,
                quant_max: 255,
            }),
            expected: vec![expected_field(case, &p.expected, "int_repr")?],
        },
    ])
}

fn quantized(case: &Case, field: &str, t: &Tensor, scale: f64, zero_point: i64) -> Result<QTensor> {
    let data = int_vec(case, field, t)?
        .into_iter()
        .map(|v| u8::try_from(v).map_err(|_| case.field_err(field, format!("{v} is not a uint8"))))
        .collect::<Result<Vec<u8>>>()?;
    Ok(QTensor::new(t.shape.clone(), data, scale, zero_point))
}

/// Resolves an observer description into a configuration, and checks PyTorch's resolved range.
pub fn observer_config(case: &Case, field: &str, d: &ObserverDesc) -> Result<ObserverConfig> {
    let k = &d.kwargs;
    let cfg = ObserverConfig::from_kwargs(
        d.class,
        k.dtype,
        k.qscheme,
        k.reduce_range,
        k.quant_min,
        k.quant_max,
        k.eps,
        k.averaging_constant,
        k.ch_axis,
        k.bins,
    )
    .map_err(|e| case.field_err(field, e.to_string()))?;
    if let (Some(lo), Some(hi)) = (d.resolved.quant_min, d.resolved.quant_max) {
        if (lo, hi) != (cfg.range.quant_min, cfg.range.quant_max) {
            return Err(case.field_err(
                &format!("{field}.resolved"),
                format!(
                    "PyTorch resolved the quant range to {lo}..{hi}, qparity to {}..{}",
                    cfg.range.quant_min, cfg.range.quant_max
                ),
            ));
        }
    }
    Ok(cfg)
}

/// The weighted layers of a model, each with its quantized weight, in graph order.
fn model_layers(case: &Case, m: &ModelCase) -> Result<Vec<Arc<QLayer>>> {
    let mut out = Vec::new();
    let mut wi = 0;
    for (li, l) in m.layers.iter().enumerate() {
        let next_relu = matches!(m.layers.get(li + 1), Some(Layer::Relu));
        let (geometry, bias) = match l {
            Layer::Linear {
                in_features,
                out_features,
                bias,
                ..
            } => (
                Geometry::Linear {
                    in_features: *in_features,
                    out_features: *out_features,
                },
                bias,
            ),
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                groups,
                bias,
                ..
            } => (
                Geometry::Conv2d(Conv2dParams {
                    in_channels: *in_channels,
                    out_channels: *out_channels,
                    kernel_size: *kernel_size,
                    stride: *stride,
                    padding: *padding,
                    dilation: *dilation,
                    groups: *groups,
                }),
                bias,
            ),
            _ => continue,
        };
        let f = format!("weights[{wi}]");
        let w = m.weights.get(wi).ok_or_else(|| {
            case.field_err("weights", format!("no quantized weight for layer {li}"))
        })?;
        if w.layer != li && w.layer != wi {
            return Err(case.field_err(
                &format!("{f}.layer"),
                format!("refers to layer {}, expected {li}", w.layer),
            ));
        }
        let int_repr = int_vec(case, &format!("{f}.int_repr"), &w.int_repr)?
            .into_iter()
            .map(|v| {
                i8::try_from(v).map_err(|_| {
                    case.field_err(&format!("{f}.int_repr"), format!("{v} is not an int8"))
                })
            })
            .collect::<Result<_>>()?;
        let bias = match bias {
            Some(b) => Some(
                b.as_f32()
                    .ok_or_else(|| {
                        case.field_err(&format!("layers[{li}].bias"), "expected an f32 tensor")
                    })?
                    .to_vec(),
            ),
            None => None,
        };
        let layer = QLayer {
            geometry,
            bias,
            weight: QWeight {
                shape: w.int_repr.shape.clone(),
                int_repr,
                scales: w.scales.to_f64_vec().iter().map(|&s| s as f32).collect(),
                zero_points: int_vec(case, &format!("{f}.zero_points"), &w.zero_points)?,
                per_channel: w.qscheme.is_per_channel(),
            },
            relu: next_relu,
            cache: Default::default(),
        };
        layer
            .check_params()
            .map_err(|e| case.field_err(&f, e.to_string()))?;
        out.push(Arc::new(layer));
        wi += 1;
    }
    Ok(out)
}

fn model_stages(case: &Case, m: &ModelCase, isa: Isa, cpu: CpuFeatures) -> Result<Vec<Stage>> {
    let qat = m.mode == crate::engine::Mode::Qat;
    let act_cfg = observer_config(case, "qconfig.activation", &m.qconfig.activation)?;
    let w_cfg = observer_config(case, "qconfig.weight", &m.qconfig.weight)?;
    let layers = model_layers(case, m)?;
    let base_ctx = ctx(Flow::ConvertFx, m.engine, isa, cpu);
    let mut stages = Vec::new();

    // 1. Activation observers, fed exactly what PyTorch fed them.
    let observe: Arc<dyn Op> = Arc::new(Observe {
        cfg: act_cfg.clone(),
        fused: qat,
    });
    for (oi, o) in m.observers.iter().enumerate() {
        let f = format!("observers[{oi}]");
        let mut exp = vec![
            expected("min_val", format!("{f}.min_val"), o.min_val.clone()),
            expected("max_val", format!("{f}.max_val"), o.max_val.clone()),
            expected("scale", format!("{f}.scale"), o.scale.clone()),
            expected(
                "zero_point",
                format!("{f}.zero_point"),
                o.zero_point.clone(),
            ),
        ];
        if qat {
            if let (Some(s), Some(z)) = (&o.fq_scale, &o.fq_zero_point) {
                exp.push(expected("fq_scale", format!("{f}.fq_scale"), s.clone()));
                exp.push(expected(
                    "fq_zero_point",
                    format!("{f}.fq_zero_point"),
                    z.clone(),
                ));
            }
        }
        stages.push(Stage {
            location: format!("observer {oi} ({})", o.name),
            group: "observers".into(),
            ctx: base_ctx,
            op: observe.clone(),
            inputs: o.inputs.iter().cloned().map(Value::Tensor).collect(),
            out: None,
            expected: exp,
        });
    }

    // 2. Weights: observer qparams from the float weight, then the quantized int8 values.
    let wq: Arc<dyn Op> = Arc::new(WeightQuantize { cfg: w_cfg });
    let float_weights = m.layers.iter().filter_map(|l| match l {
        Layer::Linear { weight, .. } | Layer::Conv2d { weight, .. } => Some(weight),
        _ => None,
    });
    for (wi, w) in float_weights.enumerate() {
        let rec = m
            .weights
            .get(wi)
            .ok_or_else(|| case.field_err("weights", format!("no record for weight {wi}")))?;
        let f = format!("weights[{wi}]");
        let scales = Tensor::f32(
            rec.scales.shape.clone(),
            rec.scales.to_f64_vec().iter().map(|&s| s as f32).collect(),
        );
        stages.push(Stage {
            location: format!("layer {wi} weight"),
            group: "weights".into(),
            ctx: base_ctx,
            op: wq.clone(),
            inputs: vec![Value::Tensor(w.clone())],
            out: None,
            expected: vec![
                expected("scales", format!("{f}.scales"), scales),
                expected(
                    "zero_points",
                    format!("{f}.zero_points"),
                    rec.zero_points.clone(),
                ),
                expected("int_repr", format!("{f}.int_repr"), rec.int_repr.clone()),
            ],
        });
    }

    // 3. Each flow, each run, stage by stage on PyTorch's recorded quantized activations.
    let act_range = (act_cfg.range.quant_min, act_cfg.range.quant_max);
    for (&flow, fr) in &m.flows {
        if fr.runs.len() != m.inputs.len() {
            return Err(case.field_err(
                &format!("flows.{}.runs", flow.name()),
                format!("{} runs for {} inputs", fr.runs.len(), m.inputs.len()),
            ));
        }
        let fctx = ctx(flow, m.engine, isa, cpu);
        for (ri, run) in fr.runs.iter().enumerate() {
            run_stages(case, m, &layers, fctx, act_range, ri, run, &mut stages)?;
        }
    }
    Ok(stages)
}

#[allow(clippy::too_many_arguments)]
fn run_stages(
    case: &Case,
    m: &ModelCase,
    layers: &[Arc<QLayer>],
    fctx: Ctx,
    act_range: (i64, i64),
    ri: usize,
    run: &super::RunRecord,
    stages: &mut Vec<Stage>,
) -> Result<()> {
    let flow = fctx.flow;
    let fname = flow.name();
    let base = format!("flows.{fname}.runs[{ri}]");
    let n_layers = run.quantized.iter().filter(|q| q.source.is_layer()).count();
    if n_layers != layers.len() {
        return Err(case.field_err(
            &format!("{base}.quantized"),
            format!(
                "the graph computed {n_layers} quantized conv/linear outputs, the model has {} layers",
                layers.len()
            ),
        ));
    }
    let x = m
        .inputs
        .get(ri)
        .ok_or_else(|| case.field_err(&format!("inputs[{ri}]"), "missing"))?;
    let qts = run
        .quantized
        .iter()
        .enumerate()
        .map(|(t, q)| record_tensor(case, &format!("{base}.quantized[{t}].int_repr"), q))
        .collect::<Result<Vec<_>>>()?;
    let mut li = 0;
    for (t, q) in run.quantized.iter().enumerate() {
        let field = format!("{base}.quantized[{t}]");
        let out = OutQParams {
            scale: q.scale,
            zero_point: q.zero_point,
            quant_min: q.quant_min,
            quant_max: q.quant_max,
        };
        let exp = vec![expected(
            "int_repr",
            format!("{field}.int_repr"),
            q.int_repr.clone(),
        )];
        // Every quantize point of the graph has its own observer, in graph order (a shape op
        // after a QAT layer gets one too): the graph must use its calculate_qparams().
        if run.quantized.len() == m.observers.len() {
            let o = &m.observers[t];
            let mut gexp = vec![
                expected(
                    "scale",
                    format!("{field}.scale"),
                    Tensor::f32(vec![], vec![q.scale as f32]),
                ),
                expected(
                    "zero_point",
                    format!("{field}.zero_point"),
                    Tensor::int(DType::I64, vec![], vec![q.zero_point]),
                ),
            ];
            if flow.keeps_quant_range() {
                gexp.push(expected(
                    "quant_range",
                    format!("{field}.quant_min/quant_max"),
                    Tensor::int(DType::I64, vec![2], vec![q.quant_min, q.quant_max]),
                ));
            }
            stages.push(Stage {
                location: format!(
                    "{fname} run {ri}, qparams of {field} vs observer {}",
                    o.name
                ),
                group: fname.into(),
                ctx: fctx,
                op: Arc::new(GraphQParams {
                    quant_range: flow.keeps_quant_range().then_some(act_range),
                }),
                inputs: vec![
                    Value::Tensor(o.scale.clone()),
                    Value::Tensor(o.zero_point.clone()),
                ],
                out: None,
                expected: gexp,
            });
        }
        let (location, op, input): (String, Arc<dyn Op>, Value) = match q.source {
            Source::Input => {
                if x.numel() != q.int_repr.numel() {
                    return Err(case.field_err(
                        &field,
                        "input quantization has a different element count than the input",
                    ));
                }
                (
                    format!("{fname} run {ri}, input quantize"),
                    Arc::new(FlowQuantize),
                    Value::Tensor(x.clone()),
                )
            }
            src => {
                if t == 0 {
                    return Err(case.field_err(
                        &field,
                        format!(
                            "a {} output without a quantized input before it",
                            src.name()
                        ),
                    ));
                }
                let prev = Value::Quantized(qts[t - 1].clone());
                if src.is_layer() {
                    let l = layers[li].clone();
                    if l.geometry.name() != src.name() {
                        return Err(case.field_err(
                            &format!("{field}.source"),
                            format!(
                                "{} where the model's layer {li} is {}",
                                src.name(),
                                l.geometry.name()
                            ),
                        ));
                    }
                    li += 1;
                    (
                        format!("{fname} run {ri}, stage {} ({})", li - 1, src.name()),
                        l as Arc<dyn Op>,
                        prev,
                    )
                } else {
                    (
                        format!("{fname} run {ri}, {} passthrough", src.name()),
                        Arc::new(Movement::requantize(src.name())),
                        prev,
                    )
                }
            }
        };
        if let Some(pq) = &q.pre_quant {
            let floats = core_pre_quant(case, &field, pq, q, &*op, &fctx, &input, &out)?;
            if q.source == Source::Input {
                // No float op: the quantize node received the model input itself.
                if floats
                    .as_f32()
                    .map(|f| f.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                    != x.as_f32().map(|f| f.iter().map(|v| v.to_bits()).collect())
                {
                    return Err(case.field_err(
                        &format!("{field}.pre_quant"),
                        format!("differs from inputs[{ri}], which the input quantize node reads"),
                    ));
                }
            } else {
                let [int_expected] = <[Expected; 1]>::try_from(exp).expect("one expected output");
                float_then_quantize(
                    stages,
                    &location,
                    fname,
                    fctx,
                    op,
                    vec![input],
                    out,
                    &field,
                    floats,
                    int_expected,
                );
                continue;
            }
        }
        stages.push(Stage {
            location,
            group: fname.into(),
            ctx: fctx,
            op,
            inputs: vec![input],
            out: Some(out),
            expected: exp,
        });
    }
    // Final output: dequantize of the last quantized activation.
    let last = qts
        .last()
        .ok_or_else(|| case.field_err(&base, "no quantized activations recorded"))?;
    stages.push(Stage {
        location: format!("{fname} run {ri}, output dequantize"),
        group: fname.into(),
        ctx: fctx,
        op: Arc::new(FlowDequantize),
        inputs: vec![Value::Quantized(last.clone())],
        out: None,
        expected: vec![expected(
            "output",
            format!("{base}.output"),
            run.output.clone(),
        )],
    });
    Ok(())
}

/// PyTorch's pre-quantize floats of a core model case's quantized activation `field`: stored,
/// a delta from the layer's reference evaluation, or pinned by SHA-256 (the input itself, or a
/// float op qparity evaluates exactly).
#[allow(clippy::too_many_arguments)]
fn core_pre_quant(
    case: &Case,
    field: &str,
    pq: &super::graph::PreQuant,
    q: &QuantizedRecord,
    op: &dyn Op,
    fctx: &Ctx,
    input: &Value,
    out: &OutQParams,
) -> Result<Tensor> {
    use super::graph::PreQuant;
    let pfield = format!("{field}.pre_quant");
    if fctx.flow.is_integer() {
        return Err(case.field_err(
            &pfield,
            format!(
                "{} quantizes in integer ops: pre_quant belongs to the reference flows",
                fctx.flow.name()
            ),
        ));
    }
    let n = q.int_repr.numel();
    let t = match pq {
        PreQuant::DeltaFrom { .. } => {
            return Err(case.field_err(
                &pfield,
                "model cases have no node names to take differences from (delta_from)",
            ))
        }
        PreQuant::Pinned { shape, sha256 } => {
            let floats = match (q.source, input) {
                (Source::Input, Value::Tensor(x)) => x
                    .as_f32()
                    .ok_or_else(|| case.field_err(&pfield, "the model input is not f32"))?
                    .to_vec(),
                _ => exact_floats(case, field, op, fctx, std::slice::from_ref(input), out)?,
            };
            if floats.len() != shape.iter().product::<usize>()
                || super::graph::sha256_f32(&floats) != *sha256
            {
                return Err(case.field_err(
                    &pfield,
                    format!(
                        "PyTorch's pre-quantize floats (SHA-256) differ from qparity's exact \
                         evaluation of {} (first values: {:?})",
                        q.source.name(),
                        &floats[..floats.len().min(4)]
                    ),
                ));
            }
            Tensor::f32(shape.clone(), floats)
        }
        _ => pq
            .decode(
                || match (op.layer(), input) {
                    (Some(l), Value::Quantized(x)) => {
                        l.reference_float(fctx.flow, x).map_err(|e| e.to_string())
                    }
                    _ => Err(
                        "only conv2d and linear pre-quantize floats are delta-encoded \
                              against the reference evaluation"
                            .into(),
                    ),
                },
                |_| None,
            )
            .map_err(|e| case.field_err(&pfield, e))?,
    };
    if t.numel() != n {
        return Err(case.field_err(
            &pfield,
            format!("{} values for {n} quantized values", t.numel()),
        ));
    }
    Ok(t)
}

/// A reference flow's value as two stages: the float op against PyTorch's own pre-quantize
/// floats (within the op's proven bound; group `<flow>/float`), then the quantize node exactly on
/// those floats (group `<flow>`).
#[allow(clippy::too_many_arguments)]
fn float_then_quantize(
    stages: &mut Vec<Stage>,
    location: &str,
    fname: &str,
    fctx: Ctx,
    op: Arc<dyn Op>,
    inputs: Vec<Value>,
    out: OutQParams,
    field: &str,
    floats: Tensor,
    int_expected: Expected,
) {
    stages.push(Stage {
        location: format!("{location}, float op"),
        group: format!("{fname}/float"),
        ctx: fctx,
        op,
        inputs,
        out: Some(out),
        expected: vec![expected(
            "pre_quant",
            format!("{field}.pre_quant"),
            floats.clone(),
        )],
    });
    stages.push(Stage {
        location: format!("{location}, quantize"),
        group: fname.into(),
        ctx: fctx,
        op: Arc::new(FlowQuantize),
        inputs: vec![Value::Tensor(floats)],
        out: Some(out),
        expected: vec![int_expected],
    });
}

fn record_tensor(case: &Case, field: &str, q: &QuantizedRecord) -> Result<QTensor> {
    quantized(case, field, &q.int_repr, q.scale, q.zero_point)
}

/// Compares predicted outputs of one stage with PyTorch's, returning per-output element results:
/// for each expected output, `(expected, prediction, per-element exact/ambiguous/mismatch)`.
pub(crate) fn element_results<'a>(
    outputs: &'a [Output],
    expected: &'a [Expected],
) -> Result<Vec<(usize, &'a Expected, Vec<ElementResult>)>> {
    let mut res = Vec::new();
    for e in expected {
        let (oi, o) = outputs
            .iter()
            .enumerate()
            .find(|(_, o)| o.name == e.name)
            .ok_or_else(|| {
                Error::invalid("stage", format!("qparity does not predict {}", e.field))
            })?;
        let n = e.tensor.numel();
        if o.values.len() != n {
            res.push((
                oi,
                e,
                vec![ElementResult::CountMismatch {
                    ours: o.values.len(),
                    theirs: n,
                }],
            ));
            continue;
        }
        let r = match &o.values {
            Predicted::Ints(p) => {
                let theirs = e.tensor.as_int().ok_or_else(|| {
                    Error::invalid(
                        e.field.clone(),
                        format!("expected integers, got {:?}", e.tensor.dtype),
                    )
                })?;
                p.iter()
                    .zip(theirs)
                    .map(|(&p, &v)| match p {
                        Pred::Exact(x) if x == v => ElementResult::Exact,
                        Pred::Ambiguous { .. } if p.admits(v) => ElementResult::Ambiguous,
                        _ => ElementResult::Mismatch {
                            expected: v.to_string(),
                            got: match p {
                                Pred::Exact(x) => x.to_string(),
                                Pred::Ambiguous { lo, hi } => format!("{lo}..={hi} (ambiguous)"),
                            },
                        },
                    })
                    .collect()
            }
            Predicted::Ranges(ranges) => {
                let theirs = e.tensor.as_f32().ok_or_else(|| {
                    Error::invalid(
                        e.field.clone(),
                        format!("expected f32, got {:?}", e.tensor.dtype),
                    )
                })?;
                ranges
                    .iter()
                    .zip(theirs)
                    .enumerate()
                    .map(|(i, (&(lo, hi), &v))| {
                        // A one-point range is an exact value: equal bit for bit, so -0.0 is
                        // not +0.0 (a hashed output compares the same bytes).
                        let point = lo.to_bits() == hi.to_bits();
                        if point && v.to_bits() == lo.to_bits() || !point && lo <= v && v <= hi {
                            ElementResult::Exact
                        } else if point {
                            ElementResult::Mismatch {
                                expected: format!("{v:e} (0x{:08x})", v.to_bits()),
                                got: o.values.show(i),
                            }
                        } else {
                            ElementResult::Mismatch {
                                expected: format!("{v:e} (0x{:08x})", v.to_bits()),
                                got: format!("within [{lo:e}, {hi:e}] (proven bound)"),
                            }
                        }
                    })
                    .collect()
            }
            Predicted::Doubles(ours) => {
                let theirs = e.tensor.to_f64_vec();
                ours.iter()
                    .zip(&theirs)
                    .map(|(&a, &b)| match a.to_bits() == b.to_bits() {
                        true => ElementResult::Exact,
                        false => ElementResult::Mismatch {
                            expected: format!("{b:e} (0x{:016x})", b.to_bits()),
                            got: format!("{a:e} (0x{:016x})", a.to_bits()),
                        },
                    })
                    .collect()
            }
            Predicted::Floats(ours) => {
                let theirs: Vec<f32> = match e.tensor.as_f32() {
                    Some(t) => t.to_vec(),
                    None if e.tensor.dtype == DType::F64 => {
                        e.tensor.to_f64_vec().iter().map(|&v| v as f32).collect()
                    }
                    None => {
                        return Err(Error::invalid(
                            e.field.clone(),
                            format!("expected floats, got {:?}", e.tensor.dtype),
                        ))
                    }
                };
                ours.iter()
                    .zip(&theirs)
                    .map(|(&a, &b)| {
                        if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
                            ElementResult::Exact
                        } else {
                            ElementResult::Mismatch {
                                expected: format!("{b:e} (0x{:08x})", b.to_bits()),
                                got: format!("{a:e} (0x{:08x})", a.to_bits()),
                            }
                        }
                    })
                    .collect()
            }
        };
        res.push((oi, e, r));
    }
    Ok(res)
}

/// The outcome of one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ElementResult {
    Exact,
    Ambiguous,
    Mismatch { expected: String, got: String },
    CountMismatch { ours: usize, theirs: usize },
}

// ---------------------------------------------------------------------------------------------
// Graph cases

use super::graph::{GraphCase, GraphNode, IntRepr, ParamSet, WeightRec};
use crate::ops::movement::{Movement, Step};
use std::collections::BTreeMap;

/// A weighted module's float weight (shape and values) and bias.
struct FloatParams {
    shape: Vec<usize>,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// The float weight and bias of a weighted module as the converted model quantizes them.
fn module_float_params(case: &Case, module: &str, p: &ParamSet) -> Result<FloatParams> {
    let field = format!("params.{module}");
    let err = |why: String| case.field_err(&field, why);
    let (shape, w) = p.weight.values().map_err(err)?;
    let bias = match &p.bias {
        Some(b) => Some(b.values().map_err(err)?.1),
        None => None,
    };
    let Some(bn) = &p.bn else {
        return Ok(FloatParams {
            shape,
            weight: w,
            bias,
        });
    };
    let channels = shape.first().copied().unwrap_or(0);
    let stat = |name: &str, v: &super::graph::Param| -> Result<Vec<f32>> {
        let (_, v) = v
            .values()
            .map_err(|e| case.field_err(&format!("{field}.bn.{name}"), e))?;
        if v.len() != channels {
            return Err(case.field_err(
                &format!("{field}.bn.{name}"),
                format!("{} values for {channels} output channels", v.len()),
            ));
        }
        Ok(v)
    };
    let folded = fold_batch_norm(
        &w,
        bias.as_deref(),
        &BatchNorm {
            running_mean: stat("running_mean", &bn.running_mean)?,
            running_var: stat("running_var", &bn.running_var)?,
            weight: stat("weight", &bn.weight)?,
            bias: stat("bias", &bn.bias)?,
            eps: bn.eps,
        },
    )
    .map_err(|e| case.field_err(&format!("{field}.bn"), e.to_string()))?;
    Ok(FloatParams {
        shape,
        weight: folded.0,
        bias: Some(folded.1),
    })
}

/// A BatchNorm2d's running statistics and affine parameters (one value per channel).
struct BatchNorm {
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
}

/// Folds a BatchNorm into the conv before it, as `torch/nn/utils/fusion.py`
/// `fuse_conv_bn_weights` does for PTQ fusion and for QAT `ConvBn2d.to_float` at convert, in f32
/// with each step correctly rounded (ATen's `rsqrt` is `1 / sqrt` in both its vector and scalar
/// kernels; `eps` is cast to f32 first):
/// `r = rsqrt(var + eps)`, `w' = w · (γ · r)` per output channel,
/// `b' = ((b − mean) · r) · γ + β` with `b = 0` when the conv has no bias.
fn fold_batch_norm(w: &[f32], b: Option<&[f32]>, bn: &BatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = bn.running_mean.len();
    if c == 0 || !w.len().is_multiple_of(c) || b.is_some_and(|b| b.len() != c) {
        return Err(Error::shape(
            "conv weight and BatchNorm",
            format!("{} weights, {c} BatchNorm channels", w.len()),
        ));
    }
    if !bn.eps.is_finite() || bn.eps < 0.0 {
        return Err(Error::invalid("BatchNorm eps", format!("{}", bn.eps)));
    }
    let eps = bn.eps as f32;
    let rsqrt: Vec<f32> = bn
        .running_var
        .iter()
        .map(|&v| 1.0 / (v + eps).sqrt())
        .collect();
    let inner = w.len() / c;
    let weight = w
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let j = i / inner;
            x * (bn.weight[j] * rsqrt[j])
        })
        .collect();
    let bias = (0..c)
        .map(|j| {
            (b.map_or(0.0, |b| b[j]) - bn.running_mean[j]) * rsqrt[j] * bn.weight[j] + bn.bias[j]
        })
        .collect();
    Ok((weight, bias))
}

/// The layer a weighted graph node computes, with the weight this flow quantized.
/// Float parameters and re-derived int8 weights of a graph case, computed once and shared by the
/// flows (PTQ flows quantize the same weights; `same_as` records resolve to one record).
#[derive(Default)]
struct WeightCache {
    float: std::collections::HashMap<String, Arc<FloatParams>>,
    quantized: std::collections::HashMap<(String, *const WeightRec), Arc<QWeight>>,
}

fn graph_layer(
    case: &Case,
    g: &GraphCase,
    flow: Flow,
    node: &GraphNode,
    cache: &mut WeightCache,
) -> Result<QLayer> {
    let fname = flow.name();
    let module = node.module.as_deref().ok_or_else(|| {
        case.field_err(
            &format!("flows.{fname}.nodes.{}", node.name),
            "a weighted op needs `module`",
        )
    })?;
    let attr_field = format!("flows.{fname}.nodes.{}.attrs", node.name);
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LayerAttrs {
        #[serde(default)]
        in_features: Option<usize>,
        #[serde(default)]
        out_features: Option<usize>,
        #[serde(default)]
        conv: Option<Conv2dParams>,
        #[serde(default)]
        relu: bool,
    }
    let a: LayerAttrs = super::decode(&case.path, &attr_field, &node.attrs)?;
    let geometry = match (node.op.as_str(), a.conv, a.in_features, a.out_features) {
        ("conv2d", Some(p), None, None) => Geometry::Conv2d(p),
        ("linear", None, Some(in_features), Some(out_features)) => Geometry::Linear {
            in_features,
            out_features,
        },
        _ => {
            return Err(case.field_err(
                &attr_field,
                "conv2d takes `conv`, linear `in_features` and `out_features`",
            ))
        }
    };
    let params = g.params.get(module).ok_or_else(|| {
        case.field_err("params", format!("no float parameters for module {module}"))
    })?;
    let fp = match cache.float.get(module) {
        Some(fp) => fp.clone(),
        None => {
            let fp = Arc::new(module_float_params(case, module, params)?);
            cache.float.insert(module.to_string(), fp.clone());
            fp
        }
    };
    let rec = g
        .weight(flow, module)
        .map_err(|e| case.field_err(&format!("flows.{fname}.weights"), e))?;
    let key = (module.to_string(), rec as *const WeightRec);
    let weight = match cache.quantized.get(&key) {
        Some(w) => w.clone(),
        None => {
            let w = Arc::new(flow_weight(
                case,
                &format!("flows.{fname}.weights.{module}"),
                rec,
                &fp.shape,
                &fp.weight,
            )?);
            cache.quantized.insert(key, w.clone());
            w
        }
    };
    Ok(QLayer {
        geometry,
        bias: fp.bias.clone(),
        weight: (*weight).clone(),
        relu: a.relu,
        cache: Default::default(),
    })
}

/// The int8 weight a flow used: stored, or re-derived from the float weight with the recorded
/// qparams (FBGEMM's scalar quantize per channel, or QuantizeAvx2 per tensor) and checked against
/// PyTorch's SHA-256.
fn flow_weight(
    case: &Case,
    field: &str,
    rec: &WeightRec,
    shape: &[usize],
    w: &[f32],
) -> Result<QWeight> {
    let scales: Vec<f64> = rec.scales.to_f64_vec();
    let zero_points = int_vec(case, &format!("{field}.zero_points"), &rec.zero_points)?;
    let per_channel = rec.qscheme.is_per_channel();
    let channels = if per_channel {
        shape.first().copied().unwrap_or(1)
    } else {
        1
    };
    if scales.len() != channels || zero_points.len() != channels {
        return Err(case.field_err(
            field,
            format!(
                "{} scales / {} zero points for {channels} channels",
                scales.len(),
                zero_points.len()
            ),
        ));
    }
    let to_i8 = |ints: Vec<i64>| -> Result<Vec<i8>> {
        if let Some(v) = ints.iter().find(|&&v| i8::try_from(v).is_err()) {
            return Err(case.field_err(&format!("{field}.int_repr"), format!("{v} is not an int8")));
        }
        Ok(ints.iter().map(|&v| v as i8).collect())
    };
    let int_repr: Vec<i8> = match &rec.int_repr {
        IntRepr::Tensor(t) => to_i8(int_vec(case, &format!("{field}.int_repr"), t)?)?,
        IntRepr::Pinned { shape: s, sha256 } => {
            if s != shape {
                return Err(case.field_err(
                    &format!("{field}.int_repr"),
                    format!("shape {s:?}, the float weight has {shape:?}"),
                ));
            }
            if rec.dtype != crate::numerics::qparams::QDType::Qint8 {
                return Err(case.field_err(
                    &format!("{field}.dtype"),
                    format!("{:?}: pinned weights must be qint8", rec.dtype),
                ));
            }
            let inner: usize = shape.iter().skip(1).product();
            let q = if per_channel {
                crate::numerics::quantize::aten::quantize_per_channel_outer_i8(
                    w,
                    &scales,
                    &zero_points,
                    inner,
                )
            } else {
                // `quantize_per_tensor` to qint8 (QuantizeAvx2; defined for every input).
                let inv = 1.0f32 / scales[0] as f32;
                let zp = zero_points[0] as i32;
                Some(
                    w.iter()
                        .map(|&v| {
                            crate::numerics::quantize::aten::quantize_avx2(v, inv, zp, -128, 127)
                                as i8
                        })
                        .collect::<Vec<i8>>(),
                )
            };
            let q = q.ok_or_else(|| case.field_err(field, "the float weight holds NaN"))?;
            let bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
            if super::graph::sha256_bytes(&bytes) != *sha256 {
                return Err(case.field_err(
                    &format!("{field}.int_repr"),
                    "qparity's int8 weights (the float weight quantized with PyTorch's scales \
                     and zero points) differ from PyTorch's (SHA-256)",
                ));
            }
            q
        }
    };
    Ok(QWeight {
        shape: shape.to_vec(),
        int_repr,
        scales: scales.iter().map(|&s| s as f32).collect(),
        zero_points,
        per_channel,
    })
}

/// A float op's pre-quantize values where qparity's plan claims them exactly (every predicted
/// interval a single value); an error otherwise.
fn exact_floats(
    case: &Case,
    field: &str,
    op: &dyn Op,
    ctx: &Ctx,
    inputs: &[Value],
    out: &OutQParams,
) -> Result<Vec<f32>> {
    let metas: Vec<_> = inputs.iter().map(Value::meta).collect();
    let refs: Vec<&Value> = inputs.iter().collect();
    let err = |e: Error| case.field_err(field, e.to_string());
    let plan = op.plan(ctx, &metas, Some(out)).map_err(err)?;
    let outs = plan.predict(&refs).map_err(err)?;
    match outs
        .iter()
        .find(|o| o.name == "pre_quant")
        .map(|o| &o.values)
    {
        Some(Predicted::Ranges(r)) if r.iter().all(|(lo, hi)| lo.to_bits() == hi.to_bits()) => {
            Ok(r.iter().map(|&(v, _)| v).collect())
        }
        _ => Err(case.field_err(
            &format!("{field}.pre_quant"),
            format!(
                "only a SHA-256 is stored, but qparity's {} float op is not exact",
                op.name()
            ),
        )),
    }
}

/// A graph node's attributes as the op's parameters: the capture records `avg_pool2d`'s
/// dilation (always 1, which `F.avg_pool2d` does not take); everything else is passed as is.
fn graph_op_attrs(op: PrimOp, attrs: &serde_json::Value) -> serde_json::Value {
    let mut attrs = attrs.clone();
    if let (PrimOp::AvgPool2d, serde_json::Value::Object(m)) = (op, &mut attrs) {
        if m.get("dilation") == Some(&serde_json::json!([1, 1])) {
            m.remove("dilation");
        }
    }
    attrs
}

/// A data-movement node: `movement` with its `steps`, or one step named by the node's op with
/// the step's attributes.
fn graph_movement(case: &Case, fname: &str, node: &GraphNode) -> Result<Movement> {
    let field = format!("flows.{fname}.nodes.{}.attrs", node.name);
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Steps {
        steps: Vec<Step>,
    }
    let steps = if node.op == "movement" {
        super::decode::<Steps>(&case.path, &field, &node.attrs)?.steps
    } else {
        let mut attrs = match &node.attrs {
            serde_json::Value::Object(m) => m.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            _ => return Err(case.field_err(&field, "attributes must be an object")),
        };
        attrs.insert("op".into(), serde_json::Value::String(node.op.clone()));
        vec![super::decode::<Step>(
            &case.path,
            &field,
            &serde_json::Value::Object(attrs),
        )?]
    };
    let name = match node.op.as_str() {
        "flatten" => "flatten",
        "dropout" => "dropout",
        "reshape" => "reshape",
        "transpose" => "transpose",
        "contiguous" => "contiguous",
        "chunk" => "chunk",
        _ => "movement",
    };
    Ok(Movement::new(name, steps))
}

fn graph_stages(case: &Case, g: &GraphCase, isa: Isa, cpu: CpuFeatures) -> Result<Vec<Stage>> {
    let mut stages = Vec::new();
    // Decoded codes and pre-quantize floats by (flow, run, node): bases of later flows' deltas.
    // Flows are visited in declaration order (convert_fx, reference, decomposed).
    type Decoded = (Tensor, Option<Tensor>);
    let mut decoded: std::collections::HashMap<(Flow, usize, String), Decoded> =
        std::collections::HashMap::new();
    let mut cache = WeightCache::default();
    for (&flow, fr) in &g.flows {
        let fname = flow.name();
        let fctx = ctx(flow, g.engine, isa, cpu);
        if fr.runs.len() != g.inputs.len() {
            return Err(case.field_err(
                &format!("flows.{fname}.runs"),
                format!("{} runs for {} inputs", fr.runs.len(), g.inputs.len()),
            ));
        }
        // One op per node, shared by the runs.
        let mut ops: Vec<Arc<dyn Op>> = Vec::with_capacity(fr.nodes.len());
        let mut layers: Vec<Option<Arc<QLayer>>> = Vec::with_capacity(fr.nodes.len());
        for node in &fr.nodes {
            let (op, layer): (Arc<dyn Op>, Option<Arc<QLayer>>) = match node.op.as_str() {
                "quantize" => (Arc::new(FlowQuantize), None),
                "movement" | "flatten" | "dropout" | "reshape" | "transpose" | "contiguous"
                | "chunk" => (Arc::new(graph_movement(case, fname, node)?), None),
                "conv2d" | "linear" => {
                    let l = Arc::new(graph_layer(case, g, flow, node, &mut cache)?);
                    (l.clone(), Some(l))
                }
                name => {
                    let p = PrimOp::from_name(name)
                        .filter(|p| p.is_quantized_op())
                        .ok_or_else(|| {
                            case.field_err(
                                &format!("flows.{fname}.nodes.{}.op", node.name),
                                format!("unknown op {name:?}"),
                            )
                        })?;
                    (
                        quantized_op(case, p, &graph_op_attrs(p, &node.attrs))?,
                        None,
                    )
                }
            };
            ops.push(op);
            layers.push(layer);
        }
        for (ri, run) in fr.runs.iter().enumerate() {
            let base = format!("flows.{fname}.runs[{ri}]");
            // Every node's codes (some stored as differences from another flow's).
            let mut values: BTreeMap<&str, Value> = BTreeMap::new();
            values.insert("input", Value::Tensor(g.inputs[ri].clone()));
            for node in &fr.nodes {
                let nfield = format!("{base}.values.{}", node.name);
                let rec = run.values.get(&node.name).ok_or_else(|| {
                    case.field_err(&nfield, "the run recorded no value for this node")
                })?;
                let codes = rec
                    .int_repr
                    .decode(|b| {
                        decoded
                            .get(&(b.flow, ri, b.node.clone()))
                            .map(|d| d.0.clone())
                    })
                    .map_err(|e| case.field_err(&format!("{nfield}.int_repr"), e))?;
                let mut q = quantized(
                    case,
                    &format!("{nfield}.int_repr"),
                    &codes,
                    rec.scale,
                    rec.zero_point,
                )?;
                q.memory_format = rec.memory_format;
                values.insert(node.name.as_str(), Value::Quantized(q));
                decoded.insert((flow, ri, node.name.clone()), (codes, None));
            }
            let value = |name: &str, field: &str| -> Result<Value> {
                values.get(name).cloned().ok_or_else(|| {
                    case.field_err(field, format!("no recorded value of node {name:?}"))
                })
            };
            for (ni, node) in fr.nodes.iter().enumerate() {
                let nfield = format!("{base}.values.{}", node.name);
                let rec = &run.values[&node.name];
                let inputs = node
                    .inputs
                    .iter()
                    .map(|n| value(n, &nfield))
                    .collect::<Result<Vec<_>>>()?;
                let out = OutQParams {
                    scale: rec.scale,
                    zero_point: rec.zero_point,
                    quant_min: rec.quant_min,
                    quant_max: rec.quant_max,
                };
                let location = format!("{fname} run {ri}, node {} ({})", node.name, node.op);
                let codes = decoded[&(flow, ri, node.name.clone())].0.clone();
                let int_expected = expected("int_repr", format!("{nfield}.int_repr"), codes);
                let Some(pq) = &rec.pre_quant else {
                    stages.push(Stage {
                        location,
                        group: fname.into(),
                        ctx: fctx,
                        op: ops[ni].clone(),
                        inputs,
                        out: Some(out),
                        expected: vec![int_expected],
                    });
                    continue;
                };
                // Pinned floats: qparity's float op must be exact and hash like PyTorch's.
                if let super::graph::PreQuant::Pinned { shape, sha256 } = pq {
                    let floats = exact_floats(case, &nfield, &*ops[ni], &fctx, &inputs, &out)?;
                    if floats.len() != shape.iter().product::<usize>()
                        || super::graph::sha256_f32(&floats) != *sha256
                    {
                        return Err(case.field_err(
                            &format!("{nfield}.pre_quant"),
                            format!(
                                "PyTorch's pre-quantize floats (SHA-256) differ from qparity's \
                                 exact evaluation of {} (first values: {:?})",
                                node.op,
                                &floats[..floats.len().min(4)]
                            ),
                        ));
                    }
                    let t = Tensor::f32(shape.clone(), floats);
                    if let Some(d) = decoded.get_mut(&(flow, ri, node.name.clone())) {
                        d.1 = Some(t.clone());
                    }
                    float_then_quantize(
                        &mut stages,
                        &location,
                        fname,
                        fctx,
                        ops[ni].clone(),
                        inputs,
                        out,
                        &nfield,
                        t,
                        int_expected,
                    );
                    continue;
                }
                // The float op against PyTorch's own float (within the proven bound), then the
                // quantize node exactly on that float.
                let floats = pq
                    .decode(
                        || match (&layers[ni], inputs.first()) {
                            (Some(l), Some(Value::Quantized(q))) => {
                                l.reference_float(flow, q).map_err(|e| e.to_string())
                            }
                            _ => Err("only conv2d and linear pre-quantize floats are \
                                      delta-encoded against the reference evaluation"
                                .into()),
                        },
                        |b| {
                            decoded
                                .get(&(b.flow, ri, b.node.clone()))
                                .and_then(|d| d.1.clone())
                        },
                    )
                    .map_err(|e| case.field_err(&format!("{nfield}.pre_quant"), e))?;
                if let Some(d) = decoded.get_mut(&(flow, ri, node.name.clone())) {
                    d.1 = Some(floats.clone());
                }
                float_then_quantize(
                    &mut stages,
                    &location,
                    fname,
                    fctx,
                    ops[ni].clone(),
                    inputs,
                    out,
                    &nfield,
                    floats,
                    int_expected,
                );
            }
            stages.push(Stage {
                location: format!("{fname} run {ri}, output dequantize"),
                group: fname.into(),
                ctx: fctx,
                op: Arc::new(FlowDequantize),
                inputs: vec![value(&fr.output, &format!("flows.{fname}.output"))?],
                out: None,
                expected: vec![expected(
                    "output",
                    format!("{base}.output"),
                    run.output.clone(),
                )],
            });
        }
    }
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bn(mean: [f32; 2], var: [f32; 2], gamma: [f32; 2], beta: [f32; 2], eps: f64) -> BatchNorm {
        BatchNorm {
            running_mean: mean.to_vec(),
            running_var: var.to_vec(),
            weight: gamma.to_vec(),
            bias: beta.to_vec(),
            eps,
        }
    }

    /// A one-point float prediction is exact only bit for bit (-0.0 is not +0.0); a wider range
    /// admits every value inside it.
    #[test]
    fn float_points_compare_bits_and_ranges_compare_values() {
        let outputs = [Output::new(
            "pre_quant",
            vec![4],
            Predicted::Ranges(vec![(-0.0, -0.0), (0.0, 0.0), (-0.0, -0.0), (1.0, 2.0)]),
        )];
        let expected = [Expected {
            name: "pre_quant".into(),
            field: "stage.pre_quant".into(),
            tensor: Tensor::f32(vec![4], vec![0.0, -0.0, -0.0, 1.5]),
        }];
        let res = element_results(&outputs, &expected).unwrap();
        let r = &res[0].2;
        assert!(
            matches!(&r[0], ElementResult::Mismatch { expected, got }
                if expected.contains("0x00000000") && got.contains("0x80000000")),
            "{:?}",
            r[0]
        );
        assert!(matches!(r[1], ElementResult::Mismatch { .. }), "{:?}", r[1]);
        assert!(matches!(r[2], ElementResult::Exact), "{:?}", r[2]);
        assert!(matches!(r[3], ElementResult::Exact), "{:?}", r[3]);
    }

    #[test]
    fn batch_norm_folds_per_output_channel() {
        // rsqrt(4) = 0.5 and rsqrt(0.25) = 2: γ·r = [1, 6].
        let b = bn([0.5, -1.0], [4.0, 0.25], [2.0, 3.0], [0.1, -1.0], 0.0);
        let (w, bias) = fold_batch_norm(&[1.0, 2.0, 3.0, 4.0], None, &b).unwrap();
        assert_eq!(w, [1.0, 2.0, 18.0, 24.0]);
        assert_eq!(bias, [-0.5f32 + 0.1, 5.0]);
        // A conv bias is shifted by the mean before scaling.
        let (_, bias) = fold_batch_norm(&[1.0, 2.0, 3.0, 4.0], Some(&[1.5, 1.0]), &b).unwrap();
        assert_eq!(bias, [1.1, 11.0]);
    }

    #[test]
    fn batch_norm_fold_multiplies_the_weight_by_gamma_times_rsqrt() {
        // w·(γ·r) and (w·γ)·r differ for some f32 values: the fold must take the first.
        let mut seen = false;
        for k in 1..2000u32 {
            let w = 1.0 + k as f32 * 0.000_123;
            let (gamma, var) = (1.0 + k as f32 * 0.0007, 0.3 + k as f32 * 0.001);
            let b = bn([0.0; 2], [var; 2], [gamma; 2], [0.0; 2], 1e-5);
            let (f, _) = fold_batch_norm(&[w, w], None, &b).unwrap();
            let r = 1.0 / (var + 1e-5f32).sqrt();
            assert_eq!(f[0], w * (gamma * r));
            seen |= f[0] != (w * gamma) * r;
        }
        assert!(seen, "no input told the two orders apart");
    }

    #[test]
    fn batch_norm_fold_rejects_bad_parameters() {
        let b = bn([0.0; 2], [1.0; 2], [1.0; 2], [0.0; 2], 1e-5);
        assert!(fold_batch_norm(&[1.0, 2.0, 3.0], None, &b).is_err());
        assert!(fold_batch_norm(&[1.0, 2.0], Some(&[1.0]), &b).is_err());
        for eps in [f64::NAN, -1.0, f64::INFINITY] {
            let b = bn([0.0; 2], [1.0; 2], [1.0; 2], [0.0; 2], eps);
            assert!(fold_batch_norm(&[1.0, 2.0], None, &b).is_err());
        }
    }

    /// An op whose plan predicts fixed integers for output `int_repr` (one ambiguous element).
    #[derive(Debug)]
    struct Fixed(Vec<Pred>);

    impl Op for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn plan<'a>(
            &'a self,
            _ctx: &Ctx,
            _inputs: &[crate::ops::Meta<'_>],
            _out: Option<&OutQParams>,
        ) -> Result<Box<dyn crate::ops::Plan + 'a>> {
            Ok(Box::new(FixedPlan(self)))
        }
    }

    #[derive(Debug)]
    struct FixedPlan<'a>(&'a Fixed);

    impl crate::ops::Plan for FixedPlan<'_> {
        fn rule(&self) -> crate::ops::Rule {
            crate::ops::Rule::default().with("fixed", "as given")
        }
        fn predict(&self, _inputs: &[&Value]) -> Result<Vec<Output>> {
            let p = Predicted::Ints(self.0 .0.clone());
            Ok(vec![Output::new("int_repr", vec![self.0 .0.len()], p)])
        }
    }

    /// The engine authors' interface: inputs and PyTorch's outputs as arrays, the quantized
    /// inputs' qparams, and per-element verdicts (equal, admissible within an ambiguous
    /// prediction, mismatched), with clear errors for an unknown output or a wrong length.
    #[test]
    fn a_stage_compares_an_engines_output_element_by_element() {
        let q = QTensor {
            shape: vec![2, 2],
            data: vec![1, 2, 3, 250],
            scale: 0.25,
            zero_point: 7,
            memory_format: crate::ops::MemoryFormat::Contiguous,
        };
        let f = Tensor::f32(vec![3], vec![0.5, -1.0, f32::NAN]);
        let stage = Stage {
            location: "test".into(),
            group: "fixed".into(),
            ctx: neutral_ctx(Isa::Avx2, CpuFeatures::default()),
            op: Arc::new(Fixed(vec![
                Pred::Exact(4),
                Pred::Ambiguous { lo: 5, hi: 6 },
                Pred::Exact(0),
                Pred::Exact(-2),
            ])),
            inputs: vec![Value::Quantized(q), Value::Tensor(f)],
            out: None,
            expected: vec![expected(
                "int_repr",
                "expected.int_repr",
                Tensor::int(DType::I64, vec![4], vec![4, 5, 0, -2]),
            )],
        };
        let arrays = stage.input_arrays();
        assert_eq!(arrays.len(), 2);
        assert_eq!(arrays[0].shape(), [2, 2]);
        assert_eq!(
            arrays[0].iter().copied().collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 250.0]
        );
        assert_eq!(arrays[1].shape(), [3]);
        assert_eq!(arrays[1][[1]], -1.0);
        assert!(arrays[1][[2]].is_nan());
        assert_eq!(stage.input_qparams(), [Some((0.25, 7)), None]);
        let exp = stage.expected_arrays();
        assert_eq!(exp.len(), 1);
        assert_eq!(exp[0].0, "int_repr");
        assert_eq!(
            exp[0].1.iter().copied().collect::<Vec<_>>(),
            [4.0, 5.0, 0.0, -2.0]
        );

        let c = stage.compare("int_repr", &[4.0, 6.0, -0.0, -3.0]).unwrap();
        assert_eq!(c.output, "int_repr");
        use Verdict::*;
        assert_eq!(c.verdicts, [Equal, Admissible, Equal, Mismatch]);
        assert_eq!(c.mismatches(), 1);
        assert_eq!(c.rule.get("fixed"), Some("as given"));
        // Outside the ambiguous interval, or not an integer: mismatched.
        let c = stage.compare("int_repr", &[4.5, 7.0, 0.0, -2.0]).unwrap();
        assert_eq!(c.verdicts, [Mismatch, Mismatch, Equal, Equal]);
        assert_eq!(c.mismatches(), 2);
        assert_eq!(
            stage
                .compare("int_repr", &[4.0, 5.0, 0.0, -2.0])
                .unwrap()
                .mismatches(),
            0
        );
        // Any NaN equals any NaN, whatever its payload; a NaN against a number is a mismatch.
        let quiet = f32::from_bits(0xffc0_0001);
        let nans = Stage {
            op: Arc::new(Fixed(vec![Pred::Exact(0), Pred::Exact(1)])),
            expected: vec![expected(
                "int_repr",
                "expected.output",
                Tensor::f32(vec![2], vec![quiet, 1.0]),
            )],
            ..stage.clone()
        };
        let c = nans.compare("int_repr", &[f64::NAN, f64::NAN]).unwrap();
        assert_eq!(c.verdicts, [Equal, Mismatch]);
        let e = stage.compare("output", &[4.0; 4]).unwrap_err();
        assert!(e.to_string().contains("no output \"output\""), "{e}");
        let e = stage.compare("int_repr", &[4.0; 3]).unwrap_err();
        assert!(
            e.to_string().contains("3 values, PyTorch produced 4"),
            "{e}"
        );
    }

    /// A fused case's channel axis must not be negative and its range not empty; a one-code range
    /// (quant_min = quant_max) and a channel axis past 0 are accepted.
    #[test]
    fn fused_case_arguments_are_checked() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("golden/avx2-seed0/cases/prim-fused_moving_avg_obs_fake_quant-0058.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let cpu = CpuFeatures::default();
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            edit(&mut v["args"]);
            super::super::parse_case(&path, &v.to_string()).and_then(|c| c.stages(&cpu))
        };
        assert!(with(&|_| {}).is_ok());
        let e = with(&|a| a["ch_axis"] = (-1).into()).unwrap_err();
        assert!(e.to_string().contains("ch_axis"), "{e}");
        let e = with(&|a| a["quant_min"] = 256.into()).unwrap_err();
        assert!(e.to_string().contains("quant range"), "{e}");
        assert!(with(&|a| a["ch_axis"] = 1.into()).is_ok());
        assert!(with(&|a| {
            a["quant_min"] = 5.into();
            a["quant_max"] = 5.into();
        })
        .is_ok());
    }

    type EditedStages = Result<Vec<Stage>>;

    /// The stages of a committed golden case after `edit` changes its JSON (set and case id).
    fn edited_case_stages(
        set: &str,
        id: &str,
    ) -> impl Fn(&dyn Fn(&mut serde_json::Value)) -> EditedStages {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(set);
        let path = dir.join(format!("cases/{id}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let cpu = super::super::manifest::Manifest::load(&dir)
            .unwrap()
            .cpu()
            .unwrap();
        move |edit| {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            edit(&mut v);
            super::super::parse_case(&path, &v.to_string()).and_then(|c| c.stages(&cpu))
        }
    }

    /// A model case's weight must name its own layer, and a model case's pre_quant cannot be a
    /// difference from another node (model cases have no node names): both are errors naming
    /// the field.
    #[test]
    fn model_case_weights_and_pre_quant_are_checked() {
        let with = edited_case_stages("avx2-seed0", "model-linear-fbgemm-ptq-avx2-0008");
        assert!(with(&|_| {}).is_ok());
        let e = with(&|v| v["weights"][0]["layer"] = 3.into()).unwrap_err();
        assert!(e.to_string().contains("weights[0].layer"), "{e}");
        let e = with(&|v| {
            v["flows"]["convert_to_reference_fx"]["runs"][0]["quantized"][0]["pre_quant"] = serde_json::json!({
                "shape": [1], "delta_from": {"flow": "convert_fx", "node": "x"}, "delta": "", "sha256": ""
            })
        })
        .unwrap_err();
        assert!(e.to_string().contains("delta_from"), "{e}");
        // A zero-point count of its own that does not match the channels: an error, not a panic.
        let e = with(&|v| {
            v["weights"][0]["zero_points"] =
                serde_json::json!({"dtype": "i64", "shape": [4], "data": [0, 0, 0, 0]})
        })
        .unwrap_err();
        assert!(e.to_string().contains(": weights[0]: "), "{e}");
        assert!(
            e.to_string().contains("4 zero points for 14 expected"),
            "{e}"
        );
    }

    /// A graph case's pinned pre-quantize floats must have their recorded shape, and only an
    /// exact float op may be pinned by hash alone.
    #[test]
    fn graph_case_pinned_floats_are_checked() {
        let with = edited_case_stages(
            "graphs-avx2-seed0",
            "graph-resnet18-fbgemm-ptq-default-0000",
        );
        assert!(with(&|_| {}).is_ok());
        let values = |v: &mut serde_json::Value| -> serde_json::Value {
            v["flows"]["convert_to_reference_fx"]["runs"][0]["values"].clone()
        };
        // maxpool's floats are exact and hash like PyTorch's; a shape of one element fewer is not.
        let e = with(&|v| {
            let mut vals = values(v);
            vals["maxpool"]["pre_quant"]["shape"] = serde_json::json!([1, 64, 8, 7]);
            v["flows"]["convert_to_reference_fx"]["runs"][0]["values"] = vals;
        })
        .unwrap_err();
        assert!(e.to_string().contains("values.maxpool.pre_quant"), "{e}");
        // conv1's float op is not exact: a hash alone cannot pin it.
        let e = with(&|v| {
            let mut vals = values(v);
            vals["conv1"]["pre_quant"]
                .as_object_mut()
                .unwrap()
                .remove("delta");
            v["flows"]["convert_to_reference_fx"]["runs"][0]["values"] = vals;
        })
        .unwrap_err();
        assert!(e.to_string().contains("is not exact"), "{e}");
        // A flow weight whose zero-point count alone is wrong.
        let e = with(&|v| {
            v["flows"]["convert_fx"]["weights"]["conv1"]["zero_points"] =
                serde_json::json!({"dtype": "i64", "shape": [63], "data": vec![0; 63]})
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("63 zero points for 64 channels"),
            "{e}"
        );
    }

    /// An ambiguous integer prediction admits PyTorch's value only inside its interval.
    #[test]
    fn ambiguous_predictions_admit_only_their_interval() {
        let outputs = [Output::new(
            "int_repr",
            vec![3],
            Predicted::Ints(vec![Pred::Ambiguous { lo: 5, hi: 6 }; 3]),
        )];
        let expected = [Expected {
            name: "int_repr".into(),
            field: "stage.int_repr".into(),
            tensor: Tensor::int(DType::U8, vec![3], vec![6, 7, 4]),
        }];
        let res = element_results(&outputs, &expected).unwrap();
        let r = &res[0].2;
        assert!(matches!(r[0], ElementResult::Ambiguous), "{:?}", r[0]);
        assert!(matches!(r[1], ElementResult::Mismatch { .. }), "{:?}", r[1]);
        assert!(matches!(r[2], ElementResult::Mismatch { .. }), "{:?}", r[2]);
    }

    /// A float prediction compares with f32 or f64 expected tensors (f64 rounded to f32) and
    /// refuses an integer one.
    #[test]
    fn float_predictions_take_f32_or_f64_and_refuse_integers() {
        let outputs = [Output::new(
            "output",
            vec![2],
            Predicted::Floats(vec![0.5, 0.1]),
        )];
        let exp = |tensor| {
            [Expected {
                name: "output".into(),
                field: "stage.output".into(),
                tensor,
            }]
        };
        let f64s = exp(Tensor::f64(vec![2], vec![0.5, 0.1]));
        let r = element_results(&outputs, &f64s).unwrap();
        assert!(r[0].2.iter().all(|e| matches!(e, ElementResult::Exact)));
        let ints = exp(Tensor::int(DType::I64, vec![2], vec![0, 1]));
        let e = element_results(&outputs, &ints).unwrap_err();
        assert!(e.to_string().contains("expected floats"), "{e}");
        // Any NaN equals any NaN; a NaN against a number is a mismatch.
        let nans = [Output::new(
            "output",
            vec![2],
            Predicted::Floats(vec![f32::NAN, f32::NAN]),
        )];
        let theirs = exp(Tensor::f32(vec![2], vec![1.0, f32::from_bits(0xffc0_0001)]));
        let r = element_results(&nans, &theirs).unwrap();
        assert!(matches!(r[0].2[0], ElementResult::Mismatch { .. }));
        assert!(matches!(r[0].2[1], ElementResult::Exact));
    }

    /// Graph movement nodes keep their own op names (reports name the node's op).
    #[test]
    fn graph_movement_nodes_keep_their_names() {
        let set = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/graphs-vnni-seed0");
        let cpu = super::super::manifest::Manifest::load(&set)
            .unwrap()
            .cpu()
            .unwrap();
        let mut names = std::collections::BTreeSet::new();
        for id in [
            "graph-mobilenet_v2-qnnpack-ptq-default-0009",
            "graph-shufflenet_v2_x1_0-qnnpack-ptq-default-0011",
        ] {
            let case = Case::load(&set.join(format!("cases/{id}.json"))).unwrap();
            names.extend(case.stages(&cpu).unwrap().iter().map(|s| s.op.name()));
        }
        for op in [
            "flatten",
            "dropout",
            "reshape",
            "transpose",
            "contiguous",
            "chunk",
        ] {
            assert!(names.contains(op), "{op} not among {names:?}");
        }
    }
}
