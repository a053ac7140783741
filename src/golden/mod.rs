//! Golden cases captured from PyTorch: the typed schema of `golden/README.md`, a loader whose
//! errors name file, field and reason, the manifest that pins every file's content, and the
//! stages a case decomposes into ([`stages`]).
//!
//! Every closed set of names — case kind, primitive op, engine, mode, convert flow, capture ISA,
//! quantized-activation source, observer class, dtype, qscheme — is an enum: an unknown value is a
//! load error naming the file and the field, never a string compared later.

pub mod graph;
pub mod manifest;
pub mod prng;
pub mod stages;

use crate::engine::flow::Flow;
use crate::engine::{Engine, Mode};
use crate::numerics::observer::ObserverClass;
use crate::numerics::qparams::{QDType, QScheme};
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use stages::{Expected, Stage};

/// The format tag of primitive and chain-model cases and of manifests.
pub const FORMAT: &str = "qparity-golden/1";

/// The format tag of graph cases (`kind: "graph"`).
pub const FORMAT_V2: &str = "qparity-golden/2";

/// `kind`: a primitive op or a small quantized model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Primitive,
    Model,
    Graph,
}

impl Kind {
    /// The golden name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Primitive => "primitive",
            Kind::Model => "model",
            Kind::Graph => "graph",
        }
    }
}

pub use crate::engine::CaptureIsa;

/// The op registry: every op a primitive case can hold. Capture (`xtask/capture`), check, repro
/// and diff-live all use these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimOp {
    QuantizePerTensor,
    QuantizePerChannel,
    DequantizePerTensor,
    DequantizePerChannel,
    DecomposedQuantizePerTensor,
    DecomposedDequantizePerTensor,
    DecomposedQuantizePerChannel,
    DecomposedDequantizePerChannel,
    FakeQuantizePerTensorAffine,
    FakeQuantizePerChannelAffine,
    FusedMovingAvgObsFakeQuant,
    Observer,
    /// `quantized::linear` on a recorded quantized input (what `cargo xtask diff-live` draws).
    QuantizedLinear,
    /// `relu6` on a quantized tensor (`quantized::relu6`, `F.relu6`, `nn.ReLU6`).
    Relu6,
    /// `hardtanh` / `clamp` on a quantized tensor; params `{min_val, max_val}`.
    Hardtanh,
    /// `relu` on a quantized tensor.
    Relu,
    /// `quantized::add(a, b, scale, zero_point)`; params `{scale, zero_point}` (the output
    /// qparams it is called with, also the case's output qparams).
    Add,
    /// `quantized::add_relu(a, b, scale, zero_point)`; params as [`PrimOp::Add`].
    AddRelu,
    /// `quantized::mul(a, b, scale, zero_point)`; params as [`PrimOp::Add`].
    Mul,
    /// `quantized::mul_relu(a, b, scale, zero_point)`; params as [`PrimOp::Add`].
    MulRelu,
    /// `quantized::cat(xs, dim, scale, zero_point)`; params `dim`, `scale`, `zero_point`.
    Cat,
    /// `quantized::cat_relu(xs, dim, scale, zero_point)`; params as [`PrimOp::Cat`].
    CatRelu,
    /// `quantized::hardswish(x, scale, zero_point)`; params `scale`, `zero_point`.
    Hardswish,
    /// `hardsigmoid` on a quantized tensor (output qparams fixed by the kernel).
    Hardsigmoid,
    /// `quantized::leaky_relu(x, negative_slope, False, scale, zero_point)`; params
    /// `negative_slope`, `scale`, `zero_point`.
    LeakyRelu,
    /// `sigmoid` on a quantized tensor (output qparams fixed by the kernel).
    Sigmoid,
    /// `tanh` on a quantized tensor (output qparams fixed by the kernel).
    Tanh,
    /// `quantized::elu` (params: alpha, scale, input_scale; output qparams).
    Elu,
    /// `max_pool2d` on a quantized tensor; params `{kernel_size, stride, padding, dilation,
    /// ceil_mode}`.
    MaxPool2d,
    /// `avg_pool2d` on a quantized tensor; params `{kernel_size, stride, padding, ceil_mode,
    /// count_include_pad, divisor_override}`.
    AvgPool2d,
    /// `adaptive_avg_pool2d` on a quantized tensor; params `{output_size}`.
    AdaptiveAvgPool2d,
    /// `mean` over dimensions 2 and 3 of a quantized tensor; params `{dim, keepdim}`.
    MeanHw,
    /// `quantized::batch_norm2d` (`_relu` with `relu`) in eval mode; params `{weight, bias,
    /// running_mean, running_var, eps, relu}`.
    BatchNorm2d,
    /// `flatten` of a quantized tensor; params `{start_dim, end_dim}`.
    Flatten,
    /// `quantized::add(x, other)` with a number (`add.Scalar`); params `{other}` (output qparams
    /// picked by the kernel).
    AddScalar,
    /// `quantized::add_relu(x, other)` (`add_relu.Scalar`); params as [`PrimOp::AddScalar`].
    AddScalarRelu,
    /// `quantized::mul(x, other)` with a number (`mul.Scalar`); params as [`PrimOp::AddScalar`].
    MulScalar,
    /// `quantized::mul_relu(x, other)` (`mul_relu.Scalar`); params as [`PrimOp::AddScalar`].
    MulScalarRelu,
}

impl PrimOp {
    /// Every registered primitive op.
    pub const ALL: [PrimOp; 38] = [
        PrimOp::QuantizePerTensor,
        PrimOp::QuantizePerChannel,
        PrimOp::DequantizePerTensor,
        PrimOp::DequantizePerChannel,
        PrimOp::DecomposedQuantizePerTensor,
        PrimOp::DecomposedDequantizePerTensor,
        PrimOp::DecomposedQuantizePerChannel,
        PrimOp::DecomposedDequantizePerChannel,
        PrimOp::FakeQuantizePerTensorAffine,
        PrimOp::FakeQuantizePerChannelAffine,
        PrimOp::FusedMovingAvgObsFakeQuant,
        PrimOp::Observer,
        PrimOp::QuantizedLinear,
        PrimOp::Relu6,
        PrimOp::Hardtanh,
        PrimOp::Relu,
        PrimOp::Add,
        PrimOp::AddRelu,
        PrimOp::Mul,
        PrimOp::MulRelu,
        PrimOp::Cat,
        PrimOp::CatRelu,
        PrimOp::Hardswish,
        PrimOp::Hardsigmoid,
        PrimOp::LeakyRelu,
        PrimOp::Sigmoid,
        PrimOp::Tanh,
        PrimOp::Elu,
        PrimOp::MaxPool2d,
        PrimOp::AvgPool2d,
        PrimOp::AdaptiveAvgPool2d,
        PrimOp::MeanHw,
        PrimOp::BatchNorm2d,
        PrimOp::Flatten,
        PrimOp::AddScalar,
        PrimOp::AddScalarRelu,
        PrimOp::MulScalar,
        PrimOp::MulScalarRelu,
    ];

    /// The golden name.
    pub fn name(self) -> &'static str {
        match self {
            PrimOp::QuantizePerTensor => "quantize_per_tensor",
            PrimOp::QuantizePerChannel => "quantize_per_channel",
            PrimOp::DequantizePerTensor => "dequantize_per_tensor",
            PrimOp::DequantizePerChannel => "dequantize_per_channel",
            PrimOp::DecomposedQuantizePerTensor => "decomposed_quantize_per_tensor",
            PrimOp::DecomposedDequantizePerTensor => "decomposed_dequantize_per_tensor",
            PrimOp::DecomposedQuantizePerChannel => "decomposed_quantize_per_channel",
            PrimOp::DecomposedDequantizePerChannel => "decomposed_dequantize_per_channel",
            PrimOp::FakeQuantizePerTensorAffine => "fake_quantize_per_tensor_affine",
            PrimOp::FakeQuantizePerChannelAffine => "fake_quantize_per_channel_affine",
            PrimOp::FusedMovingAvgObsFakeQuant => "fused_moving_avg_obs_fake_quant",
            PrimOp::Observer => "observer",
            PrimOp::QuantizedLinear => "quantized_linear",
            PrimOp::Relu6 => "relu6",
            PrimOp::Hardtanh => "hardtanh",
            PrimOp::Relu => "relu",
            PrimOp::Add => "add",
            PrimOp::AddRelu => "add_relu",
            PrimOp::Mul => "mul",
            PrimOp::MulRelu => "mul_relu",
            PrimOp::Cat => "cat",
            PrimOp::CatRelu => "cat_relu",
            PrimOp::Hardswish => "hardswish",
            PrimOp::Hardsigmoid => "hardsigmoid",
            PrimOp::LeakyRelu => "leaky_relu",
            PrimOp::Sigmoid => "sigmoid",
            PrimOp::Tanh => "tanh",
            PrimOp::Elu => "elu",
            PrimOp::MaxPool2d => "max_pool2d",
            PrimOp::AvgPool2d => "avg_pool2d",
            PrimOp::AdaptiveAvgPool2d => "adaptive_avg_pool2d",
            PrimOp::MeanHw => "mean",
            PrimOp::BatchNorm2d => "batch_norm2d",
            PrimOp::Flatten => "flatten",
            PrimOp::AddScalar => "add_scalar",
            PrimOp::AddScalarRelu => "add_scalar_relu",
            PrimOp::MulScalar => "mul_scalar",
            PrimOp::MulScalarRelu => "mul_scalar_relu",
        }
    }

    /// Parses a golden name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }

    /// An op on quantized tensors whose arguments are [`QOpArgs`].
    pub fn is_quantized_op(self) -> bool {
        matches!(
            self,
            PrimOp::Relu6
                | PrimOp::Hardtanh
                | PrimOp::Relu
                | PrimOp::Add
                | PrimOp::AddRelu
                | PrimOp::Mul
                | PrimOp::MulRelu
                | PrimOp::Cat
                | PrimOp::CatRelu
                | PrimOp::Hardswish
                | PrimOp::Hardsigmoid
                | PrimOp::LeakyRelu
                | PrimOp::Sigmoid
                | PrimOp::Tanh
                | PrimOp::Elu
                | PrimOp::MaxPool2d
                | PrimOp::AvgPool2d
                | PrimOp::AdaptiveAvgPool2d
                | PrimOp::MeanHw
                | PrimOp::BatchNorm2d
                | PrimOp::Flatten
                | PrimOp::AddScalar
                | PrimOp::AddScalarRelu
                | PrimOp::MulScalar
                | PrimOp::MulScalarRelu
        )
    }

    /// An op on quantized tensors whose kernel picks its output qparams: the case's
    /// `output_scale` / `output_zero_point` are PyTorch's choice, predicted and compared like
    /// the values (`output_scale`, `output_zero_point` outputs), not given to the op.
    pub fn kernel_picks_output_qparams(self) -> bool {
        matches!(
            self,
            PrimOp::Hardsigmoid
                | PrimOp::Sigmoid
                | PrimOp::Tanh
                | PrimOp::AddScalar
                | PrimOp::AddScalarRelu
                | PrimOp::MulScalar
                | PrimOp::MulScalarRelu
        )
    }
}

/// Fields common to every case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub id: String,
    pub kind: Kind,
    /// Primitive cases: a [`PrimOp`] name; model cases: the model's name (informational).
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub torch_version: Option<String>,
    #[serde(default)]
    pub isa: CaptureIsa,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A loaded case.
#[derive(Debug, Clone)]
pub struct Case {
    pub path: PathBuf,
    pub header: Header,
    pub body: Body,
}

/// The kind-specific part of a case.
#[derive(Debug, Clone)]
pub enum Body {
    Primitive(Box<PrimitiveCase>),
    Model(Box<ModelCase>),
    Graph(Box<graph::GraphCase>),
}

/// `kind: "primitive"`: one op with its arguments and PyTorch's result.
#[derive(Debug, Clone)]
pub struct PrimitiveCase {
    pub op: PrimOp,
    pub args: PrimArgs,
    pub expected: PrimExpected,
}

/// The arguments of a primitive op (decoded by the op's family).
#[derive(Debug, Clone)]
pub enum PrimArgs {
    Quantize(QArgs),
    Fused(FusedArgs),
    Observer(ObserverCaseArgs),
    QuantizedLinear(QuantizedLinearArgs),
    QuantizedOp(QOpArgs),
}

/// A quantized tensor as a case stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QTensorRecord {
    /// u8 values in logical (NCHW) order.
    pub int_repr: Tensor,
    pub scale: f64,
    pub zero_point: i64,
    /// The memory format PyTorch held the tensor in.
    #[serde(default)]
    pub memory_format: crate::ops::MemoryFormat,
}

/// Arguments of an op on quantized tensors (`relu6`, `hardtanh`, …): the engine, the quantized
/// inputs, the op's own parameters (decoded by the op) and the output qparams PyTorch reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QOpArgs {
    pub engine: Engine,
    pub inputs: Vec<QTensorRecord>,
    #[serde(default)]
    pub params: serde_json::Value,
    pub output_scale: f64,
    pub output_zero_point: i64,
}

/// Arguments of the quantize / dequantize / fake-quantize primitives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QArgs {
    #[serde(default)]
    pub input: Option<Tensor>,
    #[serde(default)]
    pub int_repr: Option<Tensor>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub scales: Option<Tensor>,
    #[serde(default)]
    pub zero_point: Option<i64>,
    #[serde(default)]
    pub zero_points: Option<Tensor>,
    #[serde(default)]
    pub axis: Option<usize>,
    #[serde(default)]
    pub dtype: Option<QDType>,
    #[serde(default)]
    pub quant_min: Option<i64>,
    #[serde(default)]
    pub quant_max: Option<i64>,
}

/// A flag PyTorch takes as a bool or as a 0/1 tensor.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(untagged)]
pub enum Flag {
    Bool(bool),
    Int(i64),
}

impl Flag {
    /// Whether the flag is set.
    pub fn on(self) -> bool {
        match self {
            Flag::Bool(b) => b,
            Flag::Int(i) => i != 0,
        }
    }
}

impl Default for Flag {
    fn default() -> Self {
        Flag::Bool(true)
    }
}

/// Arguments of `fused_moving_avg_obs_fake_quant`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusedArgs {
    pub batches: Vec<Tensor>,
    pub averaging_const: f64,
    pub quant_min: i64,
    pub quant_max: i64,
    pub ch_axis: i64,
    pub per_row_fake_quant: bool,
    pub symmetric_quant: bool,
    #[serde(default)]
    pub observer_on: Flag,
    #[serde(default)]
    pub fake_quant_on: Flag,
    /// The buffers before the first batch (default: an untrained module's).
    #[serde(default)]
    pub initial: Option<FusedInitial>,
}

/// The buffers `fused_moving_avg_obs_fake_quant` updates in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusedInitial {
    pub running_min: Tensor,
    pub running_max: Tensor,
    pub scale: Tensor,
    pub zero_point: Tensor,
}

/// Arguments of an observer case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObserverCaseArgs {
    pub observer: ObserverDesc,
    pub batches: Vec<Tensor>,
}

/// Arguments of `quantized_linear`: a float input quantized per tensor (`torch.quantize_per_tensor`,
/// quint8), int8 weights quantized per tensor or per output channel, a float bias, the output
/// qparams and the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedLinearArgs {
    pub engine: Engine,
    /// f32 input `[M, K]`.
    pub input: Tensor,
    pub input_scale: f64,
    pub input_zero_point: i64,
    /// i8 weight `[N, K]`.
    pub weight_int_repr: Tensor,
    /// One scale, or one per output channel (`torch.per_channel_affine`, axis 0).
    pub weight_scale: PerTensorOrChannel<f64>,
    /// One zero point, or one per output channel (with per-channel scales).
    pub weight_zero_point: PerTensorOrChannel<i64>,
    #[serde(default)]
    pub bias: Option<Tensor>,
    pub output_scale: f64,
    pub output_zero_point: i64,
    /// `quantized::linear_relu` (the lower clamp at the output zero point) instead of
    /// `quantized::linear`.
    #[serde(default)]
    pub relu: bool,
}

/// A quantization parameter given once per tensor (a JSON number) or per channel (a list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerTensorOrChannel<T> {
    PerTensor(T),
    PerChannel(Vec<T>),
}

impl<T: Copy> PerTensorOrChannel<T> {
    /// The values, one per tensor or per channel.
    pub fn values(&self) -> Vec<T> {
        match self {
            PerTensorOrChannel::PerTensor(v) => vec![*v],
            PerTensorOrChannel::PerChannel(v) => v.clone(),
        }
    }
}

/// PyTorch's results of a primitive case (the fields its op produces).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimExpected {
    #[serde(default)]
    pub int_repr: Option<Tensor>,
    /// `quantized_linear`: PyTorch's quantized input.
    #[serde(default)]
    pub input_int_repr: Option<Tensor>,
    #[serde(default)]
    pub output: Option<Tensor>,
    /// Fake quantize: the mask of the `_cachemask` variant (bool: the unclamped value is in
    /// range), captured with `fake_quantize_per_*_affine_cachemask`.
    #[serde(default)]
    pub mask: Option<Tensor>,
    #[serde(default)]
    pub min_val: Option<Tensor>,
    #[serde(default)]
    pub max_val: Option<Tensor>,
    #[serde(default)]
    pub histogram: Option<Tensor>,
    #[serde(default)]
    pub scale: Option<Tensor>,
    #[serde(default)]
    pub zero_point: Option<Tensor>,
    /// `fused_moving_avg_obs_fake_quant`: the buffers and output after each batch.
    #[serde(default)]
    pub steps: Option<Vec<FusedStep>>,
}

/// One step of `fused_moving_avg_obs_fake_quant`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusedStep {
    pub output: Tensor,
    pub running_min: Tensor,
    pub running_max: Tensor,
    pub scale: Tensor,
    pub zero_point: Tensor,
}

/// The fake-quant wrapper of a QAT observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FakeQuantClass {
    FusedMovingAvgObsFakeQuantize,
    FakeQuantize,
}

/// Observer / fake-quant description (class, kwargs as given, resolved attributes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObserverDesc {
    pub class: ObserverClass,
    #[serde(default)]
    pub fake_quant: Option<FakeQuantClass>,
    #[serde(default)]
    pub kwargs: ObserverArgs,
    #[serde(default)]
    pub resolved: ObserverArgs,
}

/// Observer arguments, as passed to the constructor (`kwargs`) or as PyTorch resolved them
/// (`resolved`); `None`: not passed, or not recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ObserverArgs {
    #[serde(default)]
    pub dtype: Option<QDType>,
    #[serde(default)]
    pub qscheme: Option<QScheme>,
    #[serde(default)]
    pub reduce_range: Option<bool>,
    #[serde(default)]
    pub quant_min: Option<i64>,
    #[serde(default)]
    pub quant_max: Option<i64>,
    /// Resolved only: whether the quant range was customized.
    #[serde(default)]
    pub has_customized_qrange: Option<bool>,
    #[serde(default)]
    pub eps: Option<f64>,
    #[serde(default)]
    pub averaging_constant: Option<f64>,
    #[serde(default)]
    pub ch_axis: Option<i64>,
    #[serde(default)]
    pub bins: Option<i64>,
}

/// One layer of a model case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Layer {
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Relu,
    Flatten,
}

/// The qconfig of a model case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QConfigDesc {
    pub activation: ObserverDesc,
    pub weight: ObserverDesc,
}

/// An activation observer after calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObserverRecord {
    pub name: String,
    pub inputs: Vec<Tensor>,
    pub min_val: Tensor,
    pub max_val: Tensor,
    pub scale: Tensor,
    pub zero_point: Tensor,
    #[serde(default)]
    pub fq_scale: Option<Tensor>,
    #[serde(default)]
    pub fq_zero_point: Option<Tensor>,
}

/// A quantized weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightRecord {
    pub layer: usize,
    pub qscheme: QScheme,
    pub dtype: QDType,
    #[serde(default)]
    pub axis: Option<i64>,
    pub quant_min: i64,
    pub quant_max: i64,
    pub scales: Tensor,
    pub zero_points: Tensor,
    pub int_repr: Tensor,
}

/// What produced a quantized activation in a converted graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The model input's quantize node.
    Input,
    Conv2d,
    Linear,
    Flatten,
}

impl Source {
    /// The golden name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Input => "input",
            Source::Conv2d => "conv2d",
            Source::Linear => "linear",
            Source::Flatten => "flatten",
        }
    }

    /// A weighted layer (conv2d, linear).
    pub fn is_layer(self) -> bool {
        matches!(self, Source::Conv2d | Source::Linear)
    }
}

/// One quantized activation a converted graph computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizedRecord {
    pub source: Source,
    pub scale: f64,
    pub zero_point: i64,
    pub quant_min: i64,
    pub quant_max: i64,
    pub int_repr: Tensor,
    /// Reference flows: the f32 tensor the quantize node received (golden/README.md). Absent
    /// in captures made before it was recorded; then the float op and the quantize are checked
    /// as one stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_quant: Option<graph::PreQuant>,
}

/// One run of a converted model on a test input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub output: Tensor,
    pub quantized: Vec<QuantizedRecord>,
}

/// A converted model's graph and its runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(default)]
    pub graph: String,
    pub runs: Vec<RunRecord>,
}

/// `kind: "model"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCase {
    pub engine: Engine,
    pub mode: Mode,
    pub input_shape: Vec<usize>,
    pub layers: Vec<Layer>,
    pub qconfig: QConfigDesc,
    pub calibration: Vec<Tensor>,
    pub observers: Vec<ObserverRecord>,
    pub weights: Vec<WeightRecord>,
    pub inputs: Vec<Tensor>,
    pub flows: BTreeMap<Flow, FlowRecord>,
}

/// Decodes a JSON value into `T`, reporting the failing field path.
pub fn decode<T: DeserializeOwned>(path: &Path, prefix: &str, v: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let field = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        Error::Case {
            path: path.to_path_buf(),
            field,
            why: e.into_inner().to_string(),
        }
    })
}

fn case_err(path: &Path, field: &str, why: impl Into<String>) -> Error {
    Error::Case {
        path: path.to_path_buf(),
        field: field.into(),
        why: why.into(),
    }
}

/// Decodes the op-specific part of a primitive case.
fn decode_primitive(path: &Path, op_name: &str, v: &serde_json::Value) -> Result<PrimitiveCase> {
    let op = PrimOp::from_name(op_name).ok_or_else(|| {
        let known: Vec<&str> = PrimOp::ALL.iter().map(|o| o.name()).collect();
        case_err(
            path,
            "op",
            format!(
                "unknown primitive op {op_name:?} (known: {})",
                known.join(", ")
            ),
        )
    })?;
    let null = serde_json::Value::Null;
    let args_v = v.get("args").unwrap_or(&null);
    let args = match op {
        PrimOp::FusedMovingAvgObsFakeQuant => PrimArgs::Fused(decode(path, "args", args_v)?),
        PrimOp::Observer => PrimArgs::Observer(decode(path, "args", args_v)?),
        PrimOp::QuantizedLinear => PrimArgs::QuantizedLinear(decode(path, "args", args_v)?),
        op if op.is_quantized_op() => PrimArgs::QuantizedOp(decode(path, "args", args_v)?),
        _ => PrimArgs::Quantize(decode(path, "args", args_v)?),
    };
    let expected = decode(path, "expected", v.get("expected").unwrap_or(&null))?;
    Ok(PrimitiveCase { op, args, expected })
}

/// Parses a case from its JSON text.
pub fn parse_case(path: &Path, text: &str) -> Result<Case> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        case_err(
            path,
            &format!("(line {}, column {})", e.line(), e.column()),
            format!("malformed JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(case_err(
            path,
            "(top level)",
            "a case must be a JSON object",
        ));
    }
    let format = v.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if format != FORMAT && format != FORMAT_V2 {
        return Err(case_err(
            path,
            "format",
            format!("unsupported format {format:?} (expected {FORMAT:?} or {FORMAT_V2:?})"),
        ));
    }
    let header: Header = decode(path, "", &v)?;
    let want = match header.kind {
        Kind::Graph => FORMAT_V2,
        _ => FORMAT,
    };
    if header.format != want {
        return Err(case_err(
            path,
            "format",
            format!(
                "a {} case has format {want:?}, not {:?}",
                header.kind.name(),
                header.format
            ),
        ));
    }
    let body = match header.kind {
        Kind::Primitive => Body::Primitive(Box::new(decode_primitive(path, &header.op, &v)?)),
        Kind::Model => Body::Model(Box::new(decode(path, "", &v)?)),
        Kind::Graph => {
            let mut body = v.clone();
            if let Some(o) = body.as_object_mut() {
                for k in [
                    "format",
                    "id",
                    "kind",
                    "op",
                    "seed",
                    "torch_version",
                    "isa",
                    "tags",
                ] {
                    o.remove(k);
                }
            }
            Body::Graph(Box::new(decode(path, "", &body)?))
        }
    };
    Ok(Case {
        path: path.to_path_buf(),
        header,
        body,
    })
}

/// Reads and parses one case file.
pub fn load_case(path: &Path) -> Result<Case> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_case(path, &text)
}

impl Case {
    /// Reads and parses one case file.
    pub fn load(path: &Path) -> Result<Self> {
        load_case(path)
    }

    /// An error about a field of this case.
    pub fn field_err(&self, field: &str, why: impl Into<String>) -> Error {
        case_err(&self.path, field, why)
    }

    /// The op name (primitive op, or the model's name).
    pub fn op_name(&self) -> &str {
        match &self.body {
            Body::Primitive(p) => p.op.name(),
            Body::Model(_) | Body::Graph(_) => &self.header.op,
        }
    }
}

/// Every case file under `path` (a file, or a directory searched recursively for `*.json` other
/// than `MANIFEST.json`), sorted.
pub fn case_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|error| Error::Io {
            path: dir.clone(),
            error,
        })?;
        for entry in rd {
            let entry = entry.map_err(|error| Error::Io {
                path: dir.clone(),
                error,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "json")
                && p.file_name().is_some_and(|n| n != "MANIFEST.json")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_case(Path::new("x.json"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn loader_errors_name_file_field_and_reason() {
        assert!(err("{").contains("malformed JSON"));
        assert!(err("[1]").contains("must be a JSON object"));
        let e = err(r#"{"format":"qparity-golden/1","id":"a","kind":"other"}"#);
        assert!(
            e.contains("x.json") && e.contains("kind") && e.contains("unknown variant `other`"),
            "{e}"
        );
        let e = err(r#"{"format":"v0","id":"a","kind":"model"}"#);
        assert!(e.contains("unsupported format"), "{e}");
        let e =
            err(r#"{"format":"qparity-golden/1","id":"a","kind":"primitive","op":"x","args":{}}"#);
        assert!(e.contains(": op: unknown primitive op \"x\""), "{e}");
        let e = err(
            r#"{"format":"qparity-golden/1","id":"a","kind":"primitive","op":"quantize_per_tensor",
            "args":{"dtype":"quint4"}}"#,
        );
        assert!(e.contains("args.dtype") && e.contains("quint4"), "{e}");
        // Closed sets are enums: an unknown engine, mode, flow or source names its field.
        let model = |engine: &str, mode: &str, flow: &str, source: &str| {
            format!(
                r#"{{"format":"qparity-golden/1","id":"a","kind":"model","engine":"{engine}",
                "mode":"{mode}","input_shape":[1],"layers":[],"qconfig":{{"activation":
                {{"class":"MinMaxObserver"}},"weight":{{"class":"MinMaxObserver"}}}},
                "calibration":[],"observers":[],"weights":[],"inputs":[],"flows":{{"{flow}":
                {{"runs":[{{"output":{{"dtype":"f32","shape":[0],"hex":""}},"quantized":[
                {{"source":"{source}","scale":1.0,"zero_point":0,"quant_min":0,"quant_max":255,
                "int_repr":{{"dtype":"u8","shape":[0],"data":[]}}}}]}}]}}}}}}"#
            )
        };
        assert!(parse_case(
            Path::new("x.json"),
            &model("x86", "ptq", "convert_fx", "input")
        )
        .is_ok());
        for (text, field) in [
            (model("tpu", "ptq", "convert_fx", "input"), "engine"),
            (model("x86", "int4", "convert_fx", "input"), "mode"),
            (model("x86", "ptq", "convert_pt2e", "input"), "flows"),
            (model("x86", "ptq", "convert_fx", "maxpool"), "source"),
        ] {
            let e = err(&text);
            assert!(
                e.contains(field) && e.contains("unknown variant"),
                "{field}: {e}"
            );
        }
        let e = err(
            r#"{"format":"qparity-golden/1","id":"a","kind":"model","engine":"x86","mode":"ptq",
            "input_shape":[1,2],"layers":[{"op":"linear","in_features":2,"out_features":1,
            "weight":{"dtype":"f32","shape":[1,2],"hex":"00"},"bias":null}]}"#,
        );
        assert!(e.contains("layers[0]") && e.contains("hex payload"), "{e}");
    }
}
