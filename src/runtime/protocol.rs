//! The JSON-lines runtime protocol (docs/RUNTIMES.md): qparity writes one JSON object per line
//! to the runtime's stdin and reads one per line from its stdout.
//!
//! 1. Handshake: `{"qparity_runtime": 1}` → `{"name": .., "version": .., "isa": ..}`.
//! 2. One request per stage ([`WireStage`]) → `{"id": N, "output": [u8, ...]}` (flat, logical
//!    order), optionally with `"accumulators": [i32, ...]`; or `{"id": N, "unsupported": why}`;
//!    or `{"id": N, "error": why}`.
//! 3. qparity closes stdin; the runtime exits.
//!
//! [`ProcessRuntime`] drives a child process; [`serve`] answers the protocol for any in-process
//! [`Runtime`] (`qparity runtime-serve` serves a rule variant of qparity's own model, the
//! protocol's self-test).

use super::rules::{Accum, Bias, Clamp, Evaluator, Mult, Round, Rules};
use super::{QStage, Runtime, RuntimeInfo, RuntimeOutput, StageOp};
use crate::engine::{Engine, KernelPath};
use crate::geometry::Conv2dParams;
use crate::kernels::reference::Reference;
use crate::kernels::{Accumulation, Requant};
use crate::numerics::requant::{FbgemmRequant, QnnpackRequant};
use crate::ops::layer::{Geometry, QWeight};
use crate::ops::QTensor;
use crate::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The protocol version qparity speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The handshake request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub qparity_runtime: u32,
}

/// A quantized tensor on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireInput {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    pub scale: f64,
    pub zero_point: i32,
}

/// Int8 weights on the wire; `axis` is 0 for per-channel qparams, null for per-tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireWeight {
    pub shape: Vec<usize>,
    pub data: Vec<i8>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<i32>,
    pub axis: Option<usize>,
}

/// The output's shape and qparams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireOutput {
    pub shape: Vec<usize>,
    pub scale: f64,
    pub zero_point: i32,
}

/// One stage request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireStage {
    pub id: u64,
    /// `linear` or `conv2d`.
    pub op: String,
    /// Where the stage comes from (informative).
    pub source: String,
    /// The PyTorch engine that produced the expected output (informative).
    pub engine: String,
    pub input: WireInput,
    pub weight: WireWeight,
    /// Float bias per output channel.
    pub bias: Option<Vec<f32>>,
    /// Int32 bias with scale `f32(f32(s_x)·w_s)` per output channel.
    pub bias_int32: Option<Vec<i32>>,
    pub output: WireOutput,
    pub relu: bool,
    /// conv2d only: `[h, w]` each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dilation: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
}

/// One answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WireAnswer {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accumulators: Option<Vec<i32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl WireStage {
    /// The request for a stage.
    pub fn new(id: u64, s: &QStage) -> Self {
        let conv = match s.op {
            StageOp::Conv2d(p) => Some(p),
            StageOp::Linear => None,
        };
        WireStage {
            id,
            op: s.op.name().into(),
            source: s.id.clone(),
            engine: s.engine.name().into(),
            input: WireInput {
                shape: s.input.shape().to_vec(),
                data: s.input.iter().copied().collect(),
                scale: s.input_scale,
                zero_point: s.input_zero_point,
            },
            weight: WireWeight {
                shape: s.weight.shape().to_vec(),
                data: s.weight.iter().copied().collect(),
                scales: s.weight_scales.clone(),
                zero_points: s.weight_zero_points.clone(),
                axis: s.per_channel().then_some(0),
            },
            bias: s.bias.clone(),
            bias_int32: s.bias_i32.clone(),
            output: WireOutput {
                shape: s.output_shape.clone(),
                scale: s.output_scale,
                zero_point: s.output_zero_point,
            },
            relu: s.relu,
            stride: conv.map(|p| p.stride),
            padding: conv.map(|p| p.padding),
            dilation: conv.map(|p| p.dilation),
            groups: conv.map(|p| p.groups),
        }
    }

    /// The stage a request describes (validated).
    pub fn to_stage(&self) -> Result<QStage> {
        let wshape = &self.weight.shape;
        let op = match self.op.as_str() {
            "linear" => StageOp::Linear,
            "conv2d" => {
                let (Some(stride), Some(padding), Some(dilation), Some(groups)) =
                    (self.stride, self.padding, self.dilation, self.groups)
                else {
                    return Err(Error::invalid(
                        "conv2d",
                        "stride, padding, dilation and groups are required",
                    ));
                };
                if wshape.len() != 4 || self.input.shape.len() != 4 {
                    return Err(Error::shape("conv2d", "input and weight must be 4-D"));
                }
                StageOp::Conv2d(Conv2dParams {
                    in_channels: self.input.shape[1],
                    out_channels: wshape[0],
                    kernel_size: [wshape[2], wshape[3]],
                    stride,
                    padding,
                    dilation,
                    groups,
                })
            }
            other => return Err(Error::invalid("op", format!("unknown op {other:?}"))),
        };
        let arr =
            |what: &str, e: ndarray::ShapeError| Error::shape(what.to_string(), e.to_string());
        Ok(QStage {
            id: self.source.clone(),
            op,
            engine: Engine::from_name(&self.engine)?,
            input: ArrayD::from_shape_vec(IxDyn(&self.input.shape), self.input.data.clone())
                .map_err(|e| arr("input", e))?,
            input_scale: self.input.scale,
            input_zero_point: self.input.zero_point,
            weight: ArrayD::from_shape_vec(IxDyn(wshape), self.weight.data.clone())
                .map_err(|e| arr("weight", e))?,
            weight_scales: self.weight.scales.clone(),
            weight_zero_points: self.weight.zero_points.clone(),
            bias: self.bias.clone(),
            bias_i32: self.bias_int32.clone(),
            output_scale: self.output.scale,
            output_zero_point: self.output.zero_point,
            relu: self.relu,
            output_shape: self.output.shape.clone(),
        })
    }
}

/// A runtime in a child process speaking the protocol.
#[derive(Debug)]
pub struct ProcessRuntime {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    info: RuntimeInfo,
    next_id: u64,
    command: String,
}

impl ProcessRuntime {
    /// Starts `sh -c command` and performs the handshake.
    pub fn spawn(command: &str) -> Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::invalid("runtime", format!("cannot start {command:?}: {e}")))?;
        let stdin = child.stdin.take().map(BufWriter::new);
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| {
            Error::invalid("runtime", "the child process has no stdout".to_string())
        })?);
        let mut rt = ProcessRuntime {
            child,
            stdin,
            stdout,
            info: RuntimeInfo {
                name: String::new(),
                version: String::new(),
                isa: String::new(),
            },
            next_id: 0,
            command: command.to_string(),
        };
        let handshake = |e: Error| Error::invalid("runtime handshake", e.to_string());
        rt.send(&Hello {
            qparity_runtime: PROTOCOL_VERSION,
        })
        .map_err(handshake)?;
        let line = rt.read_line().map_err(handshake)?;
        rt.info = serde_json::from_str(&line).map_err(|e| {
            Error::invalid("runtime handshake", format!("{e} in {:?}", truncate(&line)))
        })?;
        Ok(rt)
    }

    fn send<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let cmd = self.command.clone();
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error::invalid("runtime", "stdin is closed"))?;
        let io = |e: std::io::Error| Error::invalid("runtime", format!("writing to {cmd:?}: {e}"));
        serde_json::to_writer(&mut *w, v)
            .map_err(|e| Error::invalid("runtime", format!("encoding a request: {e}")))?;
        w.write_all(b"\n").map_err(io)?;
        w.flush().map_err(io)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| Error::invalid("runtime", format!("reading from the runtime: {e}")))?;
        if n == 0 {
            return Err(Error::invalid(
                "runtime",
                format!("{:?} closed its stdout (exited?)", self.command),
            ));
        }
        Ok(line)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

impl Runtime for ProcessRuntime {
    fn info(&self) -> RuntimeInfo {
        self.info.clone()
    }

    fn run(&mut self, stage: &QStage) -> Result<Option<RuntimeOutput>> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&WireStage::new(id, stage))?;
        let line = self.read_line()?;
        let a: WireAnswer = serde_json::from_str(&line).map_err(|e| {
            Error::invalid("runtime answer", format!("{e} in {:?}", truncate(&line)))
        })?;
        if a.id != id {
            return Err(Error::invalid(
                "runtime answer",
                format!("id {} answers request {id}", a.id),
            ));
        }
        if let Some(e) = a.error {
            return Err(Error::invalid("runtime", format!("{}: {e}", stage.id)));
        }
        if a.unsupported.is_some() {
            return Ok(None);
        }
        let shape = IxDyn(&stage.output_shape);
        let output = a
            .output
            .ok_or_else(|| Error::invalid("runtime answer", "no output, unsupported or error"))?;
        let output = ArrayD::from_shape_vec(shape.clone(), output)
            .map_err(|e| Error::shape("runtime output", e.to_string()))?;
        let accumulators = a
            .accumulators
            .map(|v| ArrayD::from_shape_vec(shape, v))
            .transpose()
            .map_err(|e| Error::shape("runtime accumulators", e.to_string()))?;
        Ok(Some(RuntimeOutput {
            output,
            accumulators,
        }))
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        // Closing stdin ends the protocol; the runtime exits.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Answers the protocol on `input` / `output` for an in-process runtime until `input` closes.
pub fn serve(rt: &mut dyn Runtime, input: impl BufRead, mut output: impl Write) -> Result<()> {
    let io = |e: std::io::Error| Error::invalid("runtime-serve", e.to_string());
    let mut lines = input.lines();
    let hello = lines.next().transpose().map_err(io)?.unwrap_or_default();
    let h: Hello = serde_json::from_str(&hello)
        .map_err(|e| Error::invalid("handshake", format!("{e} in {:?}", truncate(&hello))))?;
    if h.qparity_runtime != PROTOCOL_VERSION {
        return Err(Error::invalid(
            "handshake",
            format!("protocol {} (this runtime speaks 1)", h.qparity_runtime),
        ));
    }
    let info =
        serde_json::to_string(&rt.info()).map_err(|e| Error::invalid("info", e.to_string()))?;
    writeln!(output, "{info}").map_err(io)?;
    output.flush().map_err(io)?;
    for line in lines {
        let line = line.map_err(io)?;
        let req: WireStage = serde_json::from_str(&line)
            .map_err(|e| Error::invalid("request", format!("{e} in {:?}", truncate(&line))))?;
        let answer = match req.to_stage().and_then(|s| rt.run(&s)) {
            Ok(Some(o)) => WireAnswer {
                id: req.id,
                output: Some(o.output.iter().copied().collect()),
                accumulators: o.accumulators.map(|a| a.iter().copied().collect()),
                ..WireAnswer::default()
            },
            Ok(None) => WireAnswer {
                id: req.id,
                unsupported: Some("not implemented".into()),
                ..WireAnswer::default()
            },
            Err(e) => WireAnswer {
                id: req.id,
                error: Some(e.to_string()),
                ..WireAnswer::default()
            },
        };
        let s =
            serde_json::to_string(&answer).map_err(|e| Error::invalid("answer", e.to_string()))?;
        writeln!(output, "{s}").map_err(io)?;
        output.flush().map_err(io)?;
    }
    Ok(())
}

/// Changes to PyTorch's rule, one per dimension (`None`: PyTorch's choice for the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub acc: Option<Accum>,
    pub bias: Option<Bias>,
    pub mult: Option<Mult>,
    pub round: Option<Round>,
    pub clamp: Option<Clamp>,
}

impl Overrides {
    /// Parses `dim=value[,dim=value...]`: `acc=exact|pairs`, `bias=float|int32`,
    /// `mult=f32-div|f32-recip|exact|q31`, `round=half-even|half-away|half-up`,
    /// `clamp=pytorch|no-relu|max127`. The empty string is PyTorch's rule.
    pub fn parse(s: &str) -> Result<Self> {
        let mut o = Overrides::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || Error::invalid("rule variant", format!("unknown {part:?}"));
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match (k, v) {
                ("acc", "exact") => o.acc = Some(Accum::Exact),
                ("acc", "pairs") => o.acc = Some(Accum::PairsGemm),
                ("bias", "float") => o.bias = Some(Bias::FloatTerm),
                ("bias", "int32") => o.bias = Some(Bias::Int32),
                ("mult", "f32-div") => o.mult = Some(Mult::F32Div),
                ("mult", "f32-recip") => o.mult = Some(Mult::F32Recip),
                ("mult", "exact") => o.mult = Some(Mult::Exact),
                ("mult", "q31") => o.mult = Some(Mult::Q31),
                ("round", "half-even") => o.round = Some(Round::HalfEven),
                ("round", "half-away") => o.round = Some(Round::HalfAway),
                ("round", "half-up") => o.round = Some(Round::HalfUp),
                ("clamp", "pytorch") => o.clamp = Some(Clamp::Pytorch),
                ("clamp", "no-relu") => o.clamp = Some(Clamp::NoRelu),
                ("clamp", "max127") => o.clamp = Some(Clamp::Max127),
                _ => return Err(bad()),
            }
        }
        Ok(o)
    }

    fn apply(&self, base: Rules) -> Rules {
        Rules {
            acc: self.acc.unwrap_or(base.acc),
            bias: self.bias.unwrap_or(base.bias),
            mult: self.mult.unwrap_or(base.mult),
            round: self.round.unwrap_or(base.round),
            clamp: self.clamp.unwrap_or(base.clamp),
        }
    }
}

/// An in-process runtime computing a variant of PyTorch's rule from the stage alone: exact
/// accumulation (or pairs, by override) on qparity's reference kernel, the engine's
/// requantization with the overrides applied. It answers its accumulators.
#[derive(Debug, Clone)]
pub struct VariantRuntime {
    pub overrides: Overrides,
    pub label: String,
}

impl VariantRuntime {
    /// The accumulators of a stage under `acc` (zero points folded, no bias).
    pub fn accumulators(stage: &QStage, acc: Accumulation) -> Result<Vec<i32>> {
        let geometry = match stage.op {
            StageOp::Linear => Geometry::Linear {
                in_features: stage.weight.shape().get(1).copied().unwrap_or(0),
                out_features: stage.out_channels(),
            },
            StageOp::Conv2d(p) => Geometry::Conv2d(p),
        };
        let weight = QWeight {
            shape: stage.weight.shape().to_vec(),
            int_repr: stage.weight.iter().copied().collect(),
            scales: stage.weight_scales.clone(),
            zero_points: stage.weight_zero_points.iter().map(|&z| z as i64).collect(),
            per_channel: stage.per_channel(),
        };
        let input = QTensor {
            shape: stage.input.shape().to_vec(),
            data: stage.input.iter().copied().collect(),
            scale: stage.input_scale,
            zero_point: stage.input_zero_point as i64,
            memory_format: Default::default(),
        };
        geometry.int_acc(
            &input,
            &weight,
            KernelPath::FbgemmGemm,
            &Reference::new(acc),
        )
    }

    /// PyTorch's requantization for the stage's engine.
    pub fn requant(stage: &QStage) -> Requant {
        let n = stage.out_channels();
        if stage.engine == Engine::Qnnpack {
            Requant::Qnnpack(QnnpackRequant::new(
                stage.input_scale,
                &stage.weight_scales,
                stage.bias.as_deref(),
                n,
                stage.output_scale,
                stage.output_zero_point,
                stage.relu,
            ))
        } else {
            Requant::Fbgemm(FbgemmRequant::new(
                stage.input_scale,
                &stage.weight_scales,
                stage.per_channel(),
                stage.bias.as_deref(),
                n,
                stage.output_scale,
                stage.output_zero_point,
                stage.relu,
            ))
        }
    }
}

impl Runtime for VariantRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: format!("qparity-variant[{}]", self.label),
            version: env!("CARGO_PKG_VERSION").into(),
            isa: "scalar".into(),
        }
    }

    fn run(&mut self, stage: &QStage) -> Result<Option<RuntimeOutput>> {
        let requant = Self::requant(stage);
        let ev = Evaluator::new(stage, Accumulation::Exact, &requant);
        let rules = self.overrides.apply(Rules {
            acc: Accum::Exact,
            ..ev.base
        });
        let acc = match rules.acc {
            Accum::Exact => Accumulation::Exact,
            Accum::Pairs | Accum::PairsGemm => Accumulation::PairSaturatingI16,
        };
        let raw = Self::accumulators(stage, acc)?;
        let out: Vec<u8> = raw
            .iter()
            .enumerate()
            .map(|(i, &r)| ev.value(&rules, r, stage.channel_of(i)))
            .collect();
        let shape = IxDyn(&stage.output_shape);
        Ok(Some(RuntimeOutput {
            output: ArrayD::from_shape_vec(shape.clone(), out)
                .map_err(|e| Error::shape("output", e.to_string()))?,
            accumulators: Some(
                ArrayD::from_shape_vec(shape, raw)
                    .map_err(|e| Error::shape("accumulators", e.to_string()))?,
            ),
        }))
    }
}
