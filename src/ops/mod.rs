//! Ops: one module per PyTorch op, each implementing [`Op`].
//!
//! An op instance (a layer with its weights, a quantize node with its qparams, an observer with
//! its configuration) is *planned* once for a stage: [`Op::plan`] validates the input shapes and
//! qparams and makes every decision — kernel path, accumulation model, requantization rule, the
//! flow's quantize clamp, the float op's error bound. Everything else reads that [`Plan`]:
//! prediction ([`Plan::predict`]), the value chain of one element for mismatch reports
//! ([`Plan::trace`]), the rule in words for reports and `qparity explain` ([`Plan::rule`]), and the
//! optimized backends ([`Plan::lowered`]).
//!
//! Adding an op is one new module here with its [`Op`] implementation, plus its registration in
//! the golden schema ([`crate::golden`]); see `docs/ARCHITECTURE.md`.

pub mod activation;
pub mod add;
pub mod aten_vec;
pub mod batch_norm;
pub mod cat;
pub mod clamp;
pub mod fake_quant;
pub mod flatten;
pub mod gemm;
pub mod layer;
pub mod movement;
pub mod mul;
pub mod observe;
pub mod piecewise;
pub mod pool;
pub mod quantize;
pub mod relu;
pub mod scalar;

use crate::engine::Ctx;
use crate::numerics::bound::Pred;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::fmt;

/// A tensor's memory format in PyTorch. Values are always held in logical (row-major, NCHW) order;
/// the memory format only decides how PyTorch's kernels iterate (which elements a vector loop
/// takes, which kernel a pool picks).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// `torch.contiguous_format` (NCHW for 4-D tensors).
    #[default]
    Contiguous,
    /// `torch.channels_last` (NHWC in memory), what quantized convs return.
    ChannelsLast,
}

/// A quantized u8 activation (`quint8` / `uint8`): values in logical order with their qparams and
/// the memory format PyTorch held them in.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    pub scale: f64,
    pub zero_point: i64,
    pub memory_format: MemoryFormat,
}

impl QTensor {
    /// The values in the order they lie in PyTorch's memory: logical order for contiguous
    /// tensors, NHWC for 4-D channels-last ones.
    pub fn memory_order(&self) -> Vec<u8> {
        match (self.memory_format, &self.shape[..]) {
            (MemoryFormat::ChannelsLast, &[n, c, h, w]) => {
                let mut out = Vec::with_capacity(self.data.len());
                for b in 0..n {
                    for y in 0..h {
                        for x in 0..w {
                            for ch in 0..c {
                                out.push(self.data[((b * c + ch) * h + y) * w + x]);
                            }
                        }
                    }
                }
                out
            }
            _ => self.data.clone(),
        }
    }

    /// A contiguous quantized tensor.
    pub fn new(shape: Vec<usize>, data: Vec<u8>, scale: f64, zero_point: i64) -> Self {
        Self {
            shape,
            data,
            scale,
            zero_point,
            memory_format: MemoryFormat::Contiguous,
        }
    }
}

/// The qparams of a stage's quantized output and the clamp its quantize node recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutQParams {
    pub scale: f64,
    pub zero_point: i64,
    pub quant_min: i64,
    pub quant_max: i64,
}

/// A stage input.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A plain tensor (float input of a quantize op, integer input of a dequantize op, an
    /// observer's batch).
    Tensor(Tensor),
    /// A quantized activation.
    Quantized(QTensor),
}

impl Value {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Tensor(t) => &t.shape,
            Value::Quantized(q) => &q.shape,
        }
    }

    /// What a plan may look at: shape and qparams, not the values.
    pub fn meta(&self) -> Meta<'_> {
        match self {
            Value::Tensor(t) => Meta {
                shape: &t.shape,
                qparams: None,
                memory_format: MemoryFormat::Contiguous,
            },
            Value::Quantized(q) => Meta {
                shape: &q.shape,
                qparams: Some((q.scale, q.zero_point)),
                memory_format: q.memory_format,
            },
        }
    }

    /// The quantized activation, or an error naming `what`.
    pub fn quantized(&self, what: &str) -> Result<&QTensor> {
        match self {
            Value::Quantized(q) => Ok(q),
            Value::Tensor(_) => Err(Error::invalid(what, "expected a quantized tensor")),
        }
    }

    /// The f32 payload, or an error naming `what`.
    pub fn f32s(&self, what: &str) -> Result<&[f32]> {
        match self {
            Value::Tensor(t) => t
                .as_f32()
                .ok_or_else(|| Error::invalid(what, format!("expected f32, got {:?}", t.dtype))),
            Value::Quantized(_) => Err(Error::invalid(what, "expected an f32 tensor")),
        }
    }

    /// The integer payload (a quantized tensor's integer representation included).
    pub fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match self {
            Value::Tensor(t) => t.as_int().map(<[i64]>::to_vec).ok_or_else(|| {
                Error::invalid(what, format!("expected integers, got {:?}", t.dtype))
            }),
            Value::Quantized(q) => Ok(q.data.iter().map(|&v| v as i64).collect()),
        }
    }
}

/// What [`Op::plan`] sees of an input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta<'a> {
    pub shape: &'a [usize],
    /// `(scale, zero_point)` of a quantized input.
    pub qparams: Option<(f64, i64)>,
    pub memory_format: MemoryFormat,
}

impl Meta<'_> {
    /// The qparams of a quantized input, or an error naming `what`.
    pub fn qparams(&self, what: &str) -> Result<(f64, i64)> {
        self.qparams
            .ok_or_else(|| Error::invalid(what, "expected a quantized input"))
    }
}

/// Predicted values of one output.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicted {
    /// Integers (quantized values, zero points), each decided or an admissible interval.
    Ints(Vec<Pred>),
    /// Floats, to be equal bit for bit (any NaN equals any NaN).
    Floats(Vec<f32>),
    /// Doubles, to be equal bit for bit (output qparams a kernel picks in double arithmetic).
    Doubles(Vec<f64>),
    /// Floats a float op may produce in any evaluation order: each value must lie in its
    /// `[lo, hi]` (the op's proven error bound around its exact value).
    Ranges(Vec<(f32, f32)>),
}

impl Predicted {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Predicted::Ints(v) => v.len(),
            Predicted::Floats(v) => v.len(),
            Predicted::Doubles(v) => v.len(),
            Predicted::Ranges(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer predictions that are all decided (`None` values: PyTorch's result is undefined).
    pub fn from_options(v: impl IntoIterator<Item = Option<i64>>) -> Self {
        Predicted::Ints(
            v.into_iter()
                .map(|o| {
                    o.map(Pred::Exact).unwrap_or(Pred::Ambiguous {
                        lo: i64::MIN,
                        hi: i64::MAX,
                    })
                })
                .collect(),
        )
    }

    /// Decided integer predictions.
    pub fn exact(v: impl IntoIterator<Item = i64>) -> Self {
        Predicted::Ints(v.into_iter().map(Pred::Exact).collect())
    }

    /// Element `i` as reports show it: an integer or its admissible interval, a float with its
    /// bits, or a float range (panics past the end, like indexing).
    pub fn show(&self, i: usize) -> String {
        match self {
            Predicted::Ints(v) => match v[i] {
                Pred::Exact(x) => x.to_string(),
                Pred::Ambiguous { lo, hi } => format!("{lo}..={hi} (ambiguous)"),
            },
            Predicted::Floats(v) => format!("{:e} (0x{:08x})", v[i], v[i].to_bits()),
            Predicted::Doubles(v) => format!("{:e} (0x{:016x})", v[i], v[i].to_bits()),
            Predicted::Ranges(v) if v[i].0.to_bits() == v[i].1.to_bits() => {
                format!("{:e} (0x{:08x})", v[i].0, v[i].0.to_bits())
            }
            Predicted::Ranges(v) => format!("within [{:e}, {:e}]", v[i].0, v[i].1),
        }
    }
}

/// Trace lines `name[i] = value` for every output with an element `i` (`name = value` for a
/// one-element output): the derivation of ops whose outputs are statistics.
pub(crate) fn outputs_at(outputs: &[Output], i: usize) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o.values.len() {
            1 => Some(format!("{} = {}", o.name, o.values.show(0))),
            n if i < n => Some(format!("{}[{i}] = {}", o.name, o.values.show(i))),
            _ => None,
        })
        .collect()
}

/// One predicted output of a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The output's name (`output`, `int_repr`, `scale`, `min_val`, …; the golden field).
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Predicted,
}

impl Output {
    /// The integer predictions (`None` for a float output).
    pub fn ints(&self) -> Option<&[Pred]> {
        match &self.values {
            Predicted::Ints(p) => Some(p),
            _ => None,
        }
    }

    /// An output named `name`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, values: Predicted) -> Self {
        Self {
            name: name.into(),
            shape,
            values,
        }
    }
}

/// The rule a plan applies, as labelled lines (`path`, `accumulation`, `requant`, `clamp`, …):
/// one description read by mismatch reports and `qparity explain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    pub lines: Vec<(String, String)>,
}

impl Rule {
    /// Appends a labelled line.
    pub fn with(mut self, label: &str, text: impl Into<String>) -> Self {
        self.lines.push((label.to_string(), text.into()));
        self
    }

    /// The text of the line labelled `label`.
    pub fn get(&self, label: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, t)| t.as_str())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .lines
            .iter()
            .map(|(l, t)| format!("{l}: {t}"))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// What an optimized backend needs to run a planned stage.
#[derive(Debug, Clone, Copy)]
pub enum Lowered<'a> {
    /// A quantized linear or conv2d in the integer flow.
    IntegerLayer(&'a layer::IntegerLayer),
    /// A u8 op whose every output code is one value function of one or two input codes.
    Pointwise(&'a dyn Pointwise),
    /// A reduction over windows of the `H×W` planes of one 4-D u8 input (pools, mean).
    Window(&'a dyn WindowOp),
    /// The flow's quantize node on an f32 input.
    Quantize(&'a dyn QuantizeOp),
    /// The flow's dequantize node at a graph's output (f32 out).
    Dequantize(&'a dyn DequantizeOp),
}

/// A planned u8 op whose output element `i` is one of the plan's value functions applied to one
/// or two input codes (ATen's vector and scalar lambdas of an elementwise op, QNNPACK's fixed
/// point, a movement's gather, a cat's per-input requantization). Every decision is the plan's:
/// which function element `i` takes and where its codes come from. A backend tabulates each
/// function once (256 or 65 536 entries, exact by construction) and walks the sources.
pub trait Pointwise: fmt::Debug + Sync {
    /// The output shape (logical order).
    fn shape(&self) -> &[usize];
    /// How many codes each element reads (1 or 2).
    fn arity(&self) -> usize;
    /// How many value functions there are.
    fn functions(&self) -> usize;
    /// Output element `i`: its value function and, per code it reads, `(input, flat index)`
    /// (unused entries are `(0, 0)`).
    fn source(&self, i: usize) -> (usize, [(usize, usize); 2]);
    /// Value function `f` on `codes` (the first [`Pointwise::arity`] are read), for inputs with
    /// `qparams` (the ones the plan was made for). `None`: PyTorch's result is undefined.
    fn value(&self, f: usize, qparams: &[(f64, i64)], codes: [u8; 2]) -> Option<i64>;
    /// Value function `f` as ATen's vector `qadd` lambda, where it is one (inputs with
    /// `qparams`). A backend may evaluate it in SIMD after checking it against
    /// [`Pointwise::value`] on every pair of codes.
    fn vector_add(&self, f: usize, qparams: &[(f64, i64)]) -> Option<aten_vec::VectorAdd> {
        let _ = (f, qparams);
        None
    }
}

/// How a [`WindowOp`] reduces a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The largest code (0 for a window without taps).
    Max,
    /// The sum of the codes.
    Sum,
    /// ATen's f32 cascade sum of the dequantized codes over the whole `H×W` plane, in the
    /// input's memory order ([`crate::numerics::sum::sum_hw`]).
    FloatPlane { channels_last: bool },
}

/// A planned reduction over windows of one 4-D quantized input: max / average pools,
/// `adaptive_avg_pool2d`, `mean` over `(H, W)`.
pub trait WindowOp: fmt::Debug + Sync {
    /// `N, C, H, W` of the input.
    fn in_dims(&self) -> [usize; 4];
    /// `N, C, OH, OW` of the logical results.
    fn out_dims(&self) -> [usize; 4];
    /// The output shape (`out_dims`, or `[N, C]` for a `mean` without `keepdim`).
    fn out_shape(&self) -> &[usize];
    fn reduction(&self) -> Reduction;
    /// The input rows (`axis` 0) or columns (`axis` 1) output position `o` reads.
    fn taps(&self, axis: usize, o: usize) -> Vec<usize>;
    /// Output code of logical result `j` (NCHW order) from its window's reduction: the integer
    /// `acc` for [`Reduction::Max`] / [`Reduction::Sum`], the f32 `sum` for
    /// [`Reduction::FloatPlane`]. `zero_point`, `scale`: the input's.
    fn finish(&self, j: usize, acc: i64, sum: f32, scale: f64, zero_point: i64) -> Option<i64>;
    /// A key of output position `(oy, ox)` such that every result at positions with equal keys,
    /// in any image and channel, takes the same [`WindowOp::finish`] of `acc` (`None`: no such
    /// guarantee). Lets a backend tabulate `finish` once per key.
    fn finish_class(&self, oy: usize, ox: usize) -> Option<u64> {
        let _ = (oy, ox);
        None
    }
    /// Which logical result lands at output position `i` (ATen's scrambled `N×C×1×1` outputs).
    fn source(&self, i: usize) -> usize {
        i
    }
}

/// A planned dequantize node (u8 codes to f32).
pub trait DequantizeOp: fmt::Debug + Sync {
    fn shape(&self) -> &[usize];
    /// The f32 value of code `q` of an input with `scale` and `zero_point`.
    fn dequantize(&self, q: u8, scale: f64, zero_point: i64) -> f32;
}

/// A planned quantize node on an f32 tensor.
pub trait QuantizeOp: fmt::Debug + Sync {
    fn shape(&self) -> &[usize];
    /// The code of `x` (`None`: NaN).
    fn quantize(&self, x: f32) -> Option<i64>;
    /// `(f32(1/scale), zero_point)` where every code is FBGEMM's `QuantizeAvx2` rule
    /// ([`crate::numerics::quantize::aten::quantize_avx2`], clamp 0..255); `None` otherwise.
    fn avx2_rule(&self) -> Option<(f32, i32)> {
        None
    }
    /// [`QuantizeOp::quantize`] of every value into `out` (the same length); `false` where a
    /// value has no u8 code.
    fn quantize_all(&self, x: &[f32], out: &mut [u8]) -> bool {
        x.len() == out.len()
            && x.iter().zip(out).all(|(&v, o)| {
                self.quantize(v)
                    .and_then(|c| u8::try_from(c).ok())
                    .map(|c| *o = c)
                    .is_some()
            })
    }
}

/// An op instance, ready to be planned for a stage.
pub trait Op: fmt::Debug + Send + Sync {
    /// The op's name (the golden registry name).
    fn name(&self) -> &'static str;

    /// Plans the op for inputs with these shapes and qparams and, for quantized outputs, these
    /// output qparams. Validates everything it is given; errors are clear, never panics.
    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>>;

    /// The op as a quantized linear / conv2d layer, if it is one (outside-runtime checks read
    /// its float bias and weights).
    fn layer(&self) -> Option<&layer::QLayer> {
        None
    }
}

/// A planned op: every decision made.
pub trait Plan: fmt::Debug {
    /// The rule in words.
    fn rule(&self) -> Rule;
    /// Predicts every output from the inputs (the same shapes and qparams the plan was made for).
    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>>;
    /// The chain of values that produced element `i` of output `output` (for mismatch reports).
    fn trace(&self, inputs: &[&Value], output: usize, i: usize) -> Result<Vec<String>> {
        let _ = (inputs, output, i);
        Ok(Vec::new())
    }
    /// The stage as an optimized backend runs it (`None`: no backend implements it).
    fn lowered(&self) -> Option<Lowered<'_>> {
        None
    }
}

/// Checks that a plan got the number of inputs its op takes.
/// An element's derivation text for `Plan::trace`, formatted only when `trace` is set (the
/// per-element predictions of large tensors skip it).
pub(crate) fn note(trace: bool, text: std::fmt::Arguments<'_>) -> String {
    if trace {
        text.to_string()
    } else {
        String::new()
    }
}

pub(crate) fn expect_inputs<'a, 'b>(
    op: &str,
    inputs: &'b [Meta<'a>],
    n: usize,
) -> Result<&'b [Meta<'a>]> {
    if inputs.len() != n {
        return Err(Error::invalid(
            op,
            format!("takes {n} input(s), got {}", inputs.len()),
        ));
    }
    Ok(inputs)
}

/// The single quantized input of a predict / trace call.
pub(crate) fn one_input<'v>(op: &str, inputs: &[&'v Value]) -> Result<&'v QTensor> {
    match inputs {
        [v] => v.quantized(op),
        _ => Err(Error::invalid(
            op,
            format!("takes 1 input, got {}", inputs.len()),
        )),
    }
}

/// The output qparams of a quantized op, or an error.
pub(crate) fn expect_out<'a>(op: &str, out: Option<&'a OutQParams>) -> Result<&'a OutQParams> {
    out.ok_or_else(|| Error::invalid(op, "needs output qparams"))
}

/// `xs[i]`, or a shape error naming the missing element (a trace of an element past the end).
pub(crate) fn element_at<T: Copy>(op: &str, xs: &[T], i: usize) -> Result<T> {
    xs.get(i)
        .copied()
        .ok_or_else(|| Error::shape(op, format!("no element {i} of {}", xs.len())))
}

/// An optional per-element float function of a binary op's inputs.
pub(crate) type BinaryFloat<'a> = Option<&'a dyn Fn(&QTensor, &QTensor, usize) -> f32>;

/// The reference flows' tail of an op whose float result is exact: `int_repr` (the flow's quantize
/// node with the output qparams, clamped to the flow's range) and `pre_quant` (the floats, each a
/// single-value range).
pub(crate) fn exact_float_then_quantize(
    op: &str,
    flow: crate::engine::flow::Flow,
    out: &OutQParams,
    shape: &[usize],
    floats: Vec<f32>,
) -> Result<Vec<Output>> {
    let (lo, hi) = flow.clamp(out.quant_min, out.quant_max);
    let ints = floats
        .iter()
        .map(|&x| {
            flow.quantize(x, out.scale, out.zero_point, lo, hi)
                .ok_or_else(|| Error::invalid(op, "NaN before the quantize node"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![
        Output::new("int_repr", shape.to_vec(), Predicted::exact(ints)),
        Output::new(
            "pre_quant",
            shape.to_vec(),
            Predicted::Ranges(floats.into_iter().map(|x| (x, x)).collect()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_show_values_bits_and_intervals() {
        let ints = Predicted::Ints(vec![Pred::Exact(7), Pred::Ambiguous { lo: 3, hi: 4 }]);
        assert_eq!((ints.len(), ints.is_empty()), (2, false));
        assert_eq!(ints.show(0), "7");
        assert_eq!(ints.show(1), "3..=4 (ambiguous)");
        let floats = Predicted::Floats(vec![-0.0]);
        assert_eq!(floats.show(0), "-0e0 (0x80000000)");
        let doubles = Predicted::Doubles(vec![0.5, 1.0, 2.0]);
        assert_eq!(doubles.len(), 3);
        assert_eq!(doubles.show(2), "2e0 (0x4000000000000000)");
        let ranges = Predicted::Ranges(vec![(1.0, 1.0), (1.0, 2.0)]);
        assert_eq!(ranges.show(0), "1e0 (0x3f800000)");
        assert_eq!(ranges.show(1), "within [1e0, 2e0]");
        assert!(Predicted::exact([]).is_empty());
        assert!(Predicted::Ranges(vec![]).is_empty());
    }

    #[test]
    fn outputs_at_names_single_values_and_indexed_elements() {
        let outs = [
            Output::new("scale", vec![], Predicted::Doubles(vec![0.5])),
            Output::new("min_val", vec![3], Predicted::exact([4, 5, 6])),
        ];
        assert_eq!(
            outputs_at(&outs, 2),
            ["scale = 5e-1 (0x3fe0000000000000)", "min_val[2] = 6"]
        );
        assert_eq!(outputs_at(&outs, 3), ["scale = 5e-1 (0x3fe0000000000000)"]);
    }

    #[test]
    fn memory_order_puts_channels_last_per_batch() {
        // [n 2, c 2, h 1, w 2]: logical order n, c, y, x; NHWC memory is n, y, x, c.
        let mut x = QTensor::new(vec![2, 2, 1, 2], (0..8).collect(), 1.0, 0);
        assert_eq!(x.memory_order(), (0..8).collect::<Vec<u8>>());
        x.memory_format = MemoryFormat::ChannelsLast;
        assert_eq!(x.memory_order(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
