//! Checks golden cases against the reference engine: every number PyTorch produced is recomputed
//! and compared element by element (exact / ambiguous / mismatched).
//!
//! Model cases are checked stage by stage: each quantized layer runs on the quantized activation
//! PyTorch recorded before it, so one ambiguous element cannot cascade and a mismatch points at
//! the layer that caused it.

use crate::engine::flow::{Flow, LayerOp, OutQParams, Pred, QLayer, QTensor, QWeight, StageCtx};
use crate::engine::{fbgemm_gemm_isa, CpuFeatures, Engine};
use crate::geometry::Conv2dParams;
use crate::golden::{self, Body, Case, Layer, ModelCase, ObserverDesc, PrimitiveCase};
use crate::numerics::observer::{
    fused_moving_avg_obs_fake_quant, FusedConfig, FusedState, Observer, ObserverClass,
    ObserverConfig,
};
use crate::numerics::qparams::{fbgemm_choose_qparams, QDType, QScheme};
use crate::numerics::quantize::{aten, decomposed, fake_quant};
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Element counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub exact: u64,
    pub ambiguous: u64,
    pub mismatched: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.exact += o.exact;
        self.ambiguous += o.ambiguous;
        self.mismatched += o.mismatched;
    }
    /// All elements.
    pub fn total(&self) -> u64 {
        self.exact + self.ambiguous + self.mismatched
    }
}

/// The first disagreement of a case, with the values on both sides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mismatch {
    /// Which check, e.g. `convert_fx run 0, stage 1 (conv2d), element 17`.
    pub location: String,
    pub expected: String,
    pub got: String,
    /// The chain of values that produced qparity's result and the rule involved.
    pub detail: Vec<String>,
}

/// Result of one case.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaseResult {
    pub id: String,
    pub path: String,
    pub kind: String,
    /// Primitive op, or the model's layer pattern (`linear_relu`, `conv2d_dw`, `composed`, ...).
    pub op: String,
    pub engine: String,
    pub mode: String,
    pub isa: String,
    pub passed: bool,
    /// Set when the case could not be read or run.
    pub error: Option<String>,
    /// Element counts per check group (a flow name, `observers`, `weights`, or the primitive op).
    pub groups: BTreeMap<String, Stats>,
    pub first_mismatch: Option<Mismatch>,
}

impl CaseResult {
    /// Sum over groups.
    pub fn totals(&self) -> Stats {
        let mut s = Stats::default();
        for g in self.groups.values() {
            s.add(g);
        }
        s
    }
}

/// Options of a check run.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// The CPU that captured the goldens (from the set's manifest; default: an AVX-512 VNNI CPU).
    pub cpu: CpuFeatures,
    /// Name of a kernel from `kernels::available()` that runs every integer accumulation whose
    /// model it implements (None: the reference kernel).
    pub kernel: Option<&'static str>,
    /// Run each convert_fx layer end to end on the optimized x86 backend (packed weights, fused
    /// requantization, u8 out) where it implements the layer's kernel path; those elements are
    /// counted in the group `<flow>[x86-fused]`. Other layers keep the reference model.
    pub fused: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            cpu: CpuFeatures::AVX512_VNNI,
            kernel: None,
            fused: false,
        }
    }
}

/// Accumulates element comparisons for one case.
struct Recorder {
    groups: BTreeMap<String, Stats>,
    first: Option<Mismatch>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            groups: BTreeMap::new(),
            first: None,
        }
    }
    fn group(&mut self, g: &str) -> &mut Stats {
        self.groups.entry(g.to_string()).or_default()
    }
    fn exact(&mut self, g: &str, n: u64) {
        self.group(g).exact += n;
    }
    fn mismatch(&mut self, g: &str, m: impl FnOnce() -> Mismatch) {
        self.group(g).mismatched += 1;
        if self.first.is_none() {
            self.first = Some(m());
        }
    }
    /// Compares predictions with integer results.
    fn preds(
        &mut self,
        g: &str,
        loc: &str,
        pred: &[Pred],
        got: &[i64],
        detail: impl Fn(usize) -> Vec<String>,
    ) {
        if pred.len() != got.len() {
            self.mismatch(g, || Mismatch {
                location: loc.into(),
                expected: format!("{} elements", got.len()),
                got: format!("{} elements", pred.len()),
                detail: vec![],
            });
            return;
        }
        for (i, (&p, &v)) in pred.iter().zip(got).enumerate() {
            match p {
                Pred::Exact(x) if x == v => self.group(g).exact += 1,
                Pred::Ambiguous { .. } if p.admits(v) => self.group(g).ambiguous += 1,
                _ => self.mismatch(g, || Mismatch {
                    location: format!("{loc}, element {i}"),
                    expected: v.to_string(),
                    got: match p {
                        Pred::Exact(x) => x.to_string(),
                        Pred::Ambiguous { lo, hi } => format!("{lo}..={hi} (ambiguous)"),
                    },
                    detail: detail(i),
                }),
            }
        }
    }
    /// Compares optional integers (None = qparity says PyTorch's result is undefined).
    fn ints(&mut self, g: &str, loc: &str, ours: &[Option<i64>], theirs: &[i64]) {
        let pred: Vec<Pred> = ours
            .iter()
            .map(|o| {
                o.map(Pred::Exact).unwrap_or(Pred::Ambiguous {
                    lo: i64::MIN,
                    hi: i64::MAX,
                })
            })
            .collect();
        self.preds(g, loc, &pred, theirs, |_| vec![]);
    }
    /// Compares f32 results bit for bit (any NaN equals any NaN).
    fn floats(
        &mut self,
        g: &str,
        loc: &str,
        ours: &[f32],
        theirs: &[f32],
        inputs: impl Fn(usize) -> String,
    ) {
        if ours.len() != theirs.len() {
            self.mismatch(g, || Mismatch {
                location: loc.into(),
                expected: format!("{} elements", theirs.len()),
                got: format!("{} elements", ours.len()),
                detail: vec![],
            });
            return;
        }
        for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
            if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
                self.group(g).exact += 1;
            } else {
                self.mismatch(g, || Mismatch {
                    location: format!("{loc}, element {i}"),
                    expected: format!("{b:e} (0x{:08x})", b.to_bits()),
                    got: format!("{a:e} (0x{:08x})", a.to_bits()),
                    detail: vec![inputs(i)],
                });
            }
        }
    }
}

fn field_err(case: &Case, field: &str, why: impl Into<String>) -> Error {
    Error::Case {
        path: case.path.clone(),
        field: field.into(),
        why: why.into(),
    }
}

fn f32s<'a>(case: &Case, field: &str, t: &'a Tensor) -> Result<&'a [f32]> {
    t.as_f32().ok_or_else(|| {
        field_err(
            case,
            field,
            format!("expected an f32 tensor, got {:?}", t.dtype),
        )
    })
}

fn ints<'a>(case: &Case, field: &str, t: &'a Tensor) -> Result<&'a [i64]> {
    t.as_int().ok_or_else(|| {
        field_err(
            case,
            field,
            format!("expected an integer tensor, got {:?}", t.dtype),
        )
    })
}

fn parse_enum<T: serde::de::DeserializeOwned>(case: &Case, field: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| field_err(case, field, format!("unknown value {s:?}")))
}

/// Resolves an observer description into a configuration, and checks PyTorch's resolved range.
fn observer_config(case: &Case, field: &str, d: &ObserverDesc) -> Result<ObserverConfig> {
    let class = ObserverClass::from_name(&d.class)
        .map_err(|e| field_err(case, &format!("{field}.class"), e.to_string()))?;
    let dtype: Option<QDType> = d
        .kwargs
        .dtype
        .as_deref()
        .map(|s| parse_enum(case, &format!("{field}.kwargs.dtype"), s))
        .transpose()?;
    let qscheme: Option<QScheme> = d
        .kwargs
        .qscheme
        .as_deref()
        .map(|s| parse_enum(case, &format!("{field}.kwargs.qscheme"), s))
        .transpose()?;
    let cfg = ObserverConfig::from_kwargs(
        class,
        dtype,
        qscheme,
        d.kwargs.reduce_range,
        d.kwargs.quant_min,
        d.kwargs.quant_max,
        d.kwargs.eps,
        d.kwargs.averaging_constant,
        d.kwargs.ch_axis,
        d.kwargs.bins,
    )
    .map_err(|e| field_err(case, field, e.to_string()))?;
    if let (Some(lo), Some(hi)) = (d.resolved.quant_min, d.resolved.quant_max) {
        if (lo, hi) != (cfg.range.quant_min, cfg.range.quant_max) {
            return Err(field_err(
                case,
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

/// Checks one case. Never panics on malformed data: problems become `error`.
pub fn check_case(case: &Case, opts: &CheckOptions) -> CaseResult {
    let mut res = CaseResult {
        id: case.header.id.clone(),
        path: case.path.display().to_string(),
        kind: case.header.kind.clone(),
        isa: case.header.isa.clone(),
        ..Default::default()
    };
    let mut rec = Recorder::new();
    let outcome = match &case.body {
        Body::Primitive(p) => {
            res.op = p.op.clone();
            res.engine = "-".into();
            res.mode = "-".into();
            check_primitive(case, p, &mut rec)
        }
        Body::Model(m) => {
            res.op = model_op_name(m);
            res.engine = m.engine.clone();
            res.mode = m.mode.clone();
            check_model(case, m, opts, &mut rec)
        }
    };
    if let Err(e) = outcome {
        res.error = Some(e.to_string());
    }
    res.passed = res.error.is_none() && rec.groups.values().all(|s| s.mismatched == 0);
    res.groups = rec.groups;
    res.first_mismatch = rec.first;
    res
}

/// Loads and checks one file; a file that cannot be loaded gives a failed result with the error.
pub fn check_file(path: &Path, opts: &CheckOptions) -> CaseResult {
    match golden::load_case(path) {
        Ok(case) => check_case(&case, opts),
        Err(e) => CaseResult {
            id: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.display().to_string(),
            kind: "?".into(),
            op: "?".into(),
            engine: "?".into(),
            mode: "?".into(),
            isa: "?".into(),
            passed: false,
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

/// A short name for a model's layer pattern.
pub fn model_op_name(m: &ModelCase) -> String {
    let weighted = m
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Conv2d { .. } | Layer::Linear { .. }))
        .count();
    if weighted > 1 || m.layers.iter().any(|l| matches!(l, Layer::Flatten)) {
        return "composed".into();
    }
    let relu = m.layers.iter().any(|l| matches!(l, Layer::Relu));
    let base = match m.layers.first() {
        Some(Layer::Linear { .. }) => "linear".to_string(),
        Some(Layer::Conv2d {
            groups,
            in_channels,
            ..
        }) if *groups > 1 && groups == in_channels => "conv2d_dw".into(),
        Some(Layer::Conv2d { groups, .. }) if *groups > 1 => "conv2d_grouped".into(),
        Some(Layer::Conv2d { .. }) => "conv2d".into(),
        _ => "model".into(),
    };
    if relu {
        format!("{base}_relu")
    } else {
        base
    }
}

// ---------------------------------------------------------------------------------------------
// Primitive cases

#[derive(Deserialize)]
struct QArgs {
    input: Option<Tensor>,
    int_repr: Option<Tensor>,
    scale: Option<f64>,
    scales: Option<Tensor>,
    zero_point: Option<i64>,
    zero_points: Option<Tensor>,
    axis: Option<usize>,
    dtype: Option<String>,
    quant_min: Option<i64>,
    quant_max: Option<i64>,
}

/// Validated per-channel arguments: scales (as f64, plus the dtype PyTorch got), zero points and
/// an axis inside the tensor, one scale and zero point per channel.
struct ChannelArgs<'a> {
    scales: Vec<f64>,
    scales_dtype: crate::tensor::DType,
    zero_points: &'a [i64],
    shape: &'a [usize],
    axis: usize,
}

impl ChannelArgs<'_> {
    /// The channel of flat element `i`.
    fn channel_of(&self) -> impl Fn(usize) -> usize {
        channel_index(self.shape, self.axis)
    }

    /// Checks every channel's qparams against the quant range `lo..=hi`.
    fn check_qparams(&self, case: &Case, lo: i64, hi: i64) -> Result<()> {
        for (&s, &zp) in self.scales.iter().zip(self.zero_points) {
            check_qparams(case, s, zp, lo, hi)?;
        }
        Ok(())
    }
}

fn check_qparams(case: &Case, scale: f64, zero_point: i64, lo: i64, hi: i64) -> Result<()> {
    crate::numerics::qparams::validate_qparams("args", scale, zero_point, lo, hi)
        .map_err(|e| field_err(case, "args", e.to_string()))
}

fn channel_args<'a>(case: &Case, a: &'a QArgs, shape: &'a [usize]) -> Result<ChannelArgs<'a>> {
    let st = a
        .scales
        .as_ref()
        .ok_or_else(|| field_err(case, "args.scales", "missing"))?;
    let zt = a
        .zero_points
        .as_ref()
        .ok_or_else(|| field_err(case, "args.zero_points", "missing"))?;
    let zero_points = ints(case, "args.zero_points", zt)?;
    let axis = a
        .axis
        .ok_or_else(|| field_err(case, "args.axis", "missing"))?;
    let channels = *shape.get(axis).ok_or_else(|| {
        field_err(
            case,
            "args.axis",
            format!("axis {axis} outside shape {shape:?}"),
        )
    })?;
    let scales = st.to_f64_vec();
    if scales.len() != channels || zero_points.len() != channels {
        return Err(field_err(
            case,
            "args.scales",
            format!(
                "{} scales / {} zero points for {channels} channels",
                scales.len(),
                zero_points.len()
            ),
        ));
    }
    Ok(ChannelArgs {
        scales,
        scales_dtype: st.dtype,
        zero_points,
        shape,
        axis,
    })
}

fn channel_index(shape: &[usize], axis: usize) -> impl Fn(usize) -> usize {
    let inner: usize = shape
        .get(axis + 1..)
        .map(|s| s.iter().product())
        .unwrap_or(1);
    let ch = shape.get(axis).copied().unwrap_or(1).max(1);
    move |i| (i / inner) % ch
}

fn check_primitive(case: &Case, p: &PrimitiveCase, rec: &mut Recorder) -> Result<()> {
    let path = &case.path;
    let g = p.op.as_str();
    match g {
        "fused_moving_avg_obs_fake_quant" => return check_fused(case, p, rec),
        "observer" => return check_observer_prim(case, p, rec),
        _ => {}
    }
    let a: QArgs = golden::decode(path, "args", &p.args)?;
    fn need<'t>(case: &Case, o: Option<&'t Tensor>, f: &str) -> Result<&'t Tensor> {
        o.ok_or_else(|| field_err(case, &format!("args.{f}"), "missing"))
    }
    let num =
        |o: Option<f64>, f: &str| o.ok_or_else(|| field_err(case, &format!("args.{f}"), "missing"));
    let int =
        |o: Option<i64>, f: &str| o.ok_or_else(|| field_err(case, &format!("args.{f}"), "missing"));
    let input = || -> Result<(&Tensor, &[f32])> {
        let x = need(case, a.input.as_ref(), "input")?;
        Ok((x, f32s(case, "args.input", x)?))
    };
    // The quantized input of the dequantize ops.
    let int_repr = || -> Result<(&Tensor, &[i64])> {
        let q = need(case, a.int_repr.as_ref().or(a.input.as_ref()), "int_repr")?;
        Ok((q, ints(case, "args.int_repr", q)?))
    };
    let scale_zp = || Ok::<_, Error>((num(a.scale, "scale")?, int(a.zero_point, "zero_point")?));
    let quant_range = || {
        Ok::<_, Error>((
            int(a.quant_min, "quant_min")?,
            int(a.quant_max, "quant_max")?,
        ))
    };
    let dtype = |s: &Option<String>| -> Result<QDType> {
        let s = s
            .as_deref()
            .ok_or_else(|| field_err(case, "args.dtype", "missing"))?;
        parse_enum(case, "args.dtype", s)
    };
    let exp_t = |f: &str| -> Result<Tensor> {
        let v = p
            .expected
            .get(f)
            .ok_or_else(|| field_err(case, &format!("expected.{f}"), "missing"))?;
        golden::decode(path, &format!("expected.{f}"), v)
    };
    // Compare our results with the expected field `f`.
    let cmp_ints = |rec: &mut Recorder, f: &str, ours: &[Option<i64>]| -> Result<()> {
        let exp = exp_t(f)?;
        rec.ints(g, f, ours, ints(case, &format!("expected.{f}"), &exp)?);
        Ok(())
    };
    let cmp_floats =
        |rec: &mut Recorder, ours: &[f32], inputs: &dyn Fn(usize) -> String| -> Result<()> {
            let exp = exp_t("output")?;
            rec.floats(
                g,
                "output",
                ours,
                f32s(case, "expected.output", &exp)?,
                inputs,
            );
            Ok(())
        };
    let decomposed = g.starts_with("decomposed");
    match g {
        "quantize_per_tensor" => {
            let (_, xs) = input()?;
            let dt = dtype(&a.dtype)?;
            let (s, zp) = scale_zp()?;
            let (lo, hi) = dt.full_range();
            check_qparams(case, s, zp, lo, hi)?;
            let ours = aten::quantize_per_tensor(xs, s, zp, dt);
            cmp_ints(rec, "int_repr", &ours)?;
        }
        "quantize_per_channel" => {
            let (x, xs) = input()?;
            let dt = dtype(&a.dtype)?;
            let pc = channel_args(case, &a, &x.shape)?;
            let (lo, hi) = dt.full_range();
            pc.check_qparams(case, lo, hi)?;
            let ours =
                aten::quantize_per_channel(xs, &pc.scales, pc.zero_points, pc.channel_of(), dt);
            cmp_ints(rec, "int_repr", &ours)?;
        }
        "dequantize_per_tensor" | "decomposed_dequantize_per_tensor" => {
            let (_, qs) = int_repr()?;
            let (s, zp) = scale_zp()?;
            if !(s.is_finite() && s > 0.0) {
                return Err(field_err(
                    case,
                    "args.scale",
                    format!("scale must be finite and > 0, got {s}"),
                ));
            }
            let ours: Vec<f32> = qs
                .iter()
                .map(|&v| {
                    if decomposed {
                        decomposed::dequantize(v, s, zp)
                    } else {
                        aten::dequantize(v, s, zp)
                    }
                })
                .collect();
            cmp_floats(rec, &ours, &|i| format!("q = {}", qs[i]))?;
        }
        "dequantize_per_channel" | "decomposed_dequantize_per_channel" => {
            let (q, qs) = int_repr()?;
            let pc = channel_args(case, &a, &q.shape)?;
            let (scales, zps, chf) = (&pc.scales, pc.zero_points, pc.channel_of());
            let ours: Vec<f32> = qs
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = chf(i);
                    match (decomposed, pc.scales_dtype) {
                        (true, crate::tensor::DType::F32) => {
                            decomposed::dequantize_f32_scale(v, scales[c] as f32, zps[c])
                        }
                        (true, _) => decomposed::dequantize_f64_scale(v, scales[c], zps[c]),
                        (false, _) => aten::dequantize_per_channel(v, scales[c], zps[c]),
                    }
                })
                .collect();
            cmp_floats(rec, &ours, &|i| format!("q = {}", qs[i]))?;
        }
        "decomposed_quantize_per_tensor" => {
            let (_, xs) = input()?;
            let (s, zp) = scale_zp()?;
            let (lo, hi) = quant_range()?;
            check_qparams(case, s, zp, i64::MIN, i64::MAX)?;
            let ours: Vec<Option<i64>> = xs
                .iter()
                .map(|&v| decomposed::quantize(v, s, zp, lo, hi))
                .collect();
            cmp_ints(rec, "output", &ours)?;
        }
        "decomposed_quantize_per_channel" => {
            let (x, xs) = input()?;
            let pc = channel_args(case, &a, &x.shape)?;
            pc.check_qparams(case, i64::MIN, i64::MAX)?;
            let (lo, hi) = quant_range()?;
            let (scales, zps, chf) = (&pc.scales, pc.zero_points, pc.channel_of());
            let ours: Vec<Option<i64>> = xs
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = chf(i);
                    if pc.scales_dtype == crate::tensor::DType::F32 {
                        decomposed::quantize_f32_scale(v, scales[c] as f32, zps[c], lo, hi)
                    } else {
                        decomposed::quantize_f64_scale(v, scales[c], zps[c], lo, hi)
                    }
                })
                .collect();
            cmp_ints(rec, "output", &ours)?;
        }
        "fake_quantize_per_tensor_affine" => {
            let (_, xs) = input()?;
            let (s, zp) = scale_zp()?;
            let (lo, hi) = quant_range()?;
            check_qparams(case, s, zp, lo, hi)?;
            let ours: Vec<f32> = xs
                .iter()
                .map(|&v| fake_quant::fake_quantize(v, s as f32, zp, lo, hi))
                .collect();
            cmp_floats(rec, &ours, &|i| format!("x = {:e}", xs[i]))?;
        }
        "fake_quantize_per_channel_affine" => {
            let (x, xs) = input()?;
            let pc = channel_args(case, &a, &x.shape)?;
            let (lo, hi) = quant_range()?;
            pc.check_qparams(case, lo, hi)?;
            let (scales, zps, chf) = (&pc.scales, pc.zero_points, pc.channel_of());
            let ours: Vec<f32> = xs
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = chf(i);
                    fake_quant::fake_quantize(v, scales[c] as f32, zps[c], lo, hi)
                })
                .collect();
            cmp_floats(rec, &ours, &|i| format!("x = {:e}", xs[i]))?;
        }
        other => {
            return Err(field_err(
                case,
                "op",
                format!("unknown primitive op {other:?}"),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct FusedArgs {
    batches: Vec<Tensor>,
    averaging_const: f64,
    quant_min: i64,
    quant_max: i64,
    ch_axis: i64,
    per_row_fake_quant: bool,
    symmetric_quant: bool,
    #[serde(default = "yes")]
    observer_on: Flag,
    #[serde(default = "yes")]
    fake_quant_on: Flag,
}

/// A flag PyTorch takes as a bool or as a 0/1 tensor.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Int(i64),
}

impl Flag {
    fn on(self) -> bool {
        match self {
            Flag::Bool(b) => b,
            Flag::Int(i) => i != 0,
        }
    }
}

fn yes() -> Flag {
    Flag::Bool(true)
}

#[derive(Deserialize)]
struct FusedStep {
    output: Tensor,
    running_min: Tensor,
    running_max: Tensor,
    scale: Tensor,
    zero_point: Tensor,
}

fn check_fused(case: &Case, p: &PrimitiveCase, rec: &mut Recorder) -> Result<()> {
    let a: FusedArgs = golden::decode(&case.path, "args", &p.args)?;
    let steps: Vec<FusedStep> = golden::decode(
        &case.path,
        "expected.steps",
        p.expected.get("steps").unwrap_or(&serde_json::Value::Null),
    )?;
    if steps.len() != a.batches.len() {
        return Err(field_err(
            case,
            "expected.steps",
            format!("{} steps for {} batches", steps.len(), a.batches.len()),
        ));
    }
    if a.ch_axis < 0 || a.quant_min > a.quant_max {
        return Err(field_err(case, "args", "invalid ch_axis or quant range"));
    }
    let cfg = FusedConfig {
        averaging_const: a.averaging_const as f32,
        quant_min: a.quant_min,
        quant_max: a.quant_max,
        ch_axis: a.ch_axis as usize,
        per_row_fake_quant: a.per_row_fake_quant,
        symmetric_quant: a.symmetric_quant,
    };
    let mut st = FusedState {
        running_min: vec![],
        running_max: vec![],
        scale: vec![1.0],
        zero_point: vec![0],
    };
    let g = "fused_moving_avg_obs_fake_quant";
    for (k, (b, s)) in a.batches.iter().zip(&steps).enumerate() {
        let xs = f32s(case, "args.batches", b)?;
        let out = fused_moving_avg_obs_fake_quant(
            xs,
            &b.shape,
            &mut st,
            &cfg,
            a.observer_on.on(),
            a.fake_quant_on.on(),
        )?;
        let loc = format!("step {k}");
        rec.floats(
            g,
            &format!("{loc} running_min"),
            &st.running_min,
            f32s(case, "running_min", &s.running_min)?,
            |_| String::new(),
        );
        rec.floats(
            g,
            &format!("{loc} running_max"),
            &st.running_max,
            f32s(case, "running_max", &s.running_max)?,
            |_| String::new(),
        );
        rec.floats(
            g,
            &format!("{loc} scale"),
            &st.scale,
            f32s(case, "scale", &s.scale)?,
            |_| String::new(),
        );
        let zp: Vec<Option<i64>> = st.zero_point.iter().map(|&z| Some(z as i64)).collect();
        rec.ints(
            g,
            &format!("{loc} zero_point"),
            &zp,
            ints(case, "zero_point", &s.zero_point)?,
        );
        rec.floats(
            g,
            &format!("{loc} output"),
            &out,
            f32s(case, "output", &s.output)?,
            |i| format!("x = {:e}", xs[i]),
        );
    }
    Ok(())
}

#[derive(Deserialize)]
struct ObserverArgs {
    observer: ObserverDesc,
    batches: Vec<Tensor>,
}

fn check_observer_prim(case: &Case, p: &PrimitiveCase, rec: &mut Recorder) -> Result<()> {
    let a: ObserverArgs = golden::decode(&case.path, "args", &p.args)?;
    let cfg = observer_config(case, "args.observer", &a.observer)?;
    let mut obs =
        Observer::new(cfg).map_err(|e| field_err(case, "args.observer", e.to_string()))?;
    for (i, b) in a.batches.iter().enumerate() {
        let xs = f32s(case, &format!("args.batches[{i}]"), b)?;
        obs.forward(xs, &b.shape)
            .map_err(|e| field_err(case, &format!("args.batches[{i}]"), e.to_string()))?;
    }
    let g = format!("observer/{}", a.observer.class);
    compare_observer(case, &g, "", &obs, &p.expected, rec)
}

fn compare_observer(
    case: &Case,
    g: &str,
    loc: &str,
    obs: &Observer,
    expected: &serde_json::Value,
    rec: &mut Recorder,
) -> Result<()> {
    let get = |f: &str| -> Result<Option<Tensor>> {
        expected
            .get(f)
            .filter(|v| !v.is_null())
            .map(|v| golden::decode(&case.path, &format!("expected.{f}"), v))
            .transpose()
    };
    if let Some(t) = get("min_val")? {
        rec.floats(
            g,
            &format!("{loc}min_val"),
            &obs.min_val,
            f32s(case, "min_val", &t)?,
            |_| String::new(),
        );
    }
    if let Some(t) = get("max_val")? {
        rec.floats(
            g,
            &format!("{loc}max_val"),
            &obs.max_val,
            f32s(case, "max_val", &t)?,
            |_| String::new(),
        );
    }
    if let (Some(t), Some(h)) = (get("histogram")?, obs.histogram()) {
        rec.floats(
            g,
            &format!("{loc}histogram"),
            h,
            f32s(case, "histogram", &t)?,
            |_| String::new(),
        );
    }
    let q = obs.calculate_qparams()?;
    if let Some(t) = get("scale")? {
        rec.floats(
            g,
            &format!("{loc}scale"),
            &q.scale,
            f32s(case, "scale", &t)?,
            |_| String::new(),
        );
    }
    if let Some(t) = get("zero_point")? {
        let zp: Vec<Option<i64>> = q.zero_point.iter().map(|&z| Some(z)).collect();
        rec.ints(
            g,
            &format!("{loc}zero_point"),
            &zp,
            ints(case, "zero_point", &t)?,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Model cases

struct Stage {
    layer: QLayer,
    kind: &'static str,
}

fn build_stages(case: &Case, m: &ModelCase) -> Result<Vec<Stage>> {
    let mut stages = Vec::new();
    let mut wi = 0;
    for (li, l) in m.layers.iter().enumerate() {
        let next_relu = matches!(m.layers.get(li + 1), Some(Layer::Relu));
        let (op, bias, kind) = match l {
            Layer::Linear {
                in_features,
                out_features,
                bias,
                ..
            } => (
                LayerOp::Linear {
                    in_features: *in_features,
                    out_features: *out_features,
                },
                bias,
                "linear",
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
                LayerOp::Conv2d(Conv2dParams {
                    in_channels: *in_channels,
                    out_channels: *out_channels,
                    kernel_size: *kernel_size,
                    stride: *stride,
                    padding: *padding,
                    dilation: *dilation,
                    groups: *groups,
                }),
                bias,
                "conv2d",
            ),
            _ => continue,
        };
        let f = format!("weights[{wi}]");
        let w = m.weights.get(wi).ok_or_else(|| {
            field_err(
                case,
                "weights",
                format!("no quantized weight for layer {li}"),
            )
        })?;
        if w.layer != li && w.layer != wi {
            return Err(field_err(
                case,
                &format!("{f}.layer"),
                format!("refers to layer {}, expected {li}", w.layer),
            ));
        }
        let qs: QScheme = parse_enum(case, &format!("{f}.qscheme"), &w.qscheme)?;
        let int_repr: Vec<i8> = ints(case, &format!("{f}.int_repr"), &w.int_repr)?
            .iter()
            .map(|&v| {
                i8::try_from(v).map_err(|_| {
                    field_err(
                        case,
                        &format!("{f}.int_repr"),
                        format!("{v} is not an int8"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let bias = match bias {
            Some(b) => Some(f32s(case, &format!("layers[{li}].bias"), b)?.to_vec()),
            None => None,
        };
        let layer = QLayer {
            op,
            bias,
            weight: QWeight {
                shape: w.int_repr.shape.clone(),
                int_repr,
                scales: w.scales.to_f64_vec().iter().map(|&s| s as f32).collect(),
                zero_points: ints(case, &format!("{f}.zero_points"), &w.zero_points)?.to_vec(),
                per_channel: qs.is_per_channel(),
            },
            relu: next_relu,
        };
        stages.push(Stage { layer, kind });
        wi += 1;
    }
    Ok(stages)
}

fn check_model(case: &Case, m: &ModelCase, opts: &CheckOptions, rec: &mut Recorder) -> Result<()> {
    let engine =
        Engine::from_name(&m.engine).map_err(|e| field_err(case, "engine", e.to_string()))?;
    // "default" means whatever FBGEMM picked on the capture CPU (from the manifest's flags).
    let isa = fbgemm_gemm_isa(&case.header.isa, &opts.cpu)
        .map_err(|e| field_err(case, "isa", e.to_string()))?;
    opts.cpu
        .check_modelled(engine)
        .map_err(|e| field_err(case, "engine", e.to_string()))?;
    let qat = match m.mode.as_str() {
        "ptq" => false,
        "qat" => true,
        other => {
            return Err(field_err(
                case,
                "mode",
                format!("unknown mode {other:?} (expected ptq or qat)"),
            ))
        }
    };
    let stages = build_stages(case, m)?;
    let act_cfg = observer_config(case, "qconfig.activation", &m.qconfig.activation)?;
    let w_cfg = observer_config(case, "qconfig.weight", &m.qconfig.weight)?;

    // 1. Activation observers, fed exactly what PyTorch fed them.
    for (oi, o) in m.observers.iter().enumerate() {
        let loc = format!("observer {} ({}) ", oi, o.name);
        if qat {
            let fcfg = FusedConfig {
                averaging_const: act_cfg.averaging_constant,
                quant_min: act_cfg.range.quant_min,
                quant_max: act_cfg.range.quant_max,
                ch_axis: 0,
                per_row_fake_quant: false,
                symmetric_quant: act_cfg.qscheme.is_symmetric(),
            };
            let mut st = FusedState {
                running_min: vec![],
                running_max: vec![],
                scale: vec![1.0],
                zero_point: vec![0],
            };
            for (bi, b) in o.inputs.iter().enumerate() {
                let xs = f32s(case, &format!("observers[{oi}].inputs[{bi}]"), b)?;
                fused_moving_avg_obs_fake_quant(xs, &b.shape, &mut st, &fcfg, true, false)?;
            }
            let mut obs = Observer::new(act_cfg.clone())?;
            obs.min_val = st.running_min.clone();
            obs.max_val = st.running_max.clone();
            let exp = serde_json::json!({"min_val": o.min_val, "max_val": o.max_val, "scale": o.scale, "zero_point": o.zero_point});
            compare_observer(case, "observers", &loc, &obs, &exp, rec)?;
            if let (Some(fs), Some(fz)) = (&o.fq_scale, &o.fq_zero_point) {
                let q = fbgemm_choose_qparams(
                    st.running_min[0],
                    st.running_max[0],
                    fcfg.quant_min as i32,
                    fcfg.quant_max as i32,
                    fcfg.symmetric_quant,
                );
                rec.floats(
                    "observers",
                    &format!("{loc}fq_scale"),
                    &[q.scale],
                    f32s(case, "fq_scale", fs)?,
                    |_| String::new(),
                );
                rec.ints(
                    "observers",
                    &format!("{loc}fq_zero_point"),
                    &[Some(q.zero_point as i64)],
                    ints(case, "fq_zero_point", fz)?,
                );
            }
        } else {
            let mut obs = Observer::new(act_cfg.clone())?;
            for (bi, b) in o.inputs.iter().enumerate() {
                let xs = f32s(case, &format!("observers[{oi}].inputs[{bi}]"), b)?;
                obs.forward(xs, &b.shape).map_err(|e| {
                    field_err(
                        case,
                        &format!("observers[{oi}].inputs[{bi}]"),
                        e.to_string(),
                    )
                })?;
            }
            let exp = serde_json::json!({"min_val": o.min_val, "max_val": o.max_val, "scale": o.scale, "zero_point": o.zero_point});
            compare_observer(case, "observers", &loc, &obs, &exp, rec)?;
        }
    }

    // 2. Weights: observer qparams from the float weight, then the quantized int8 values.
    let mut wi = 0;
    for l in &m.layers {
        let (w, shape) = match l {
            Layer::Linear { weight, .. } | Layer::Conv2d { weight, .. } => (weight, &weight.shape),
            _ => continue,
        };
        let ws = f32s(case, &format!("weights[{wi}]"), w)?;
        let mut obs = Observer::new(w_cfg.clone())?;
        obs.forward(ws, shape)
            .map_err(|e| field_err(case, &format!("weights[{wi}]"), e.to_string()))?;
        let q = obs.calculate_qparams()?;
        let rec_w = &m.weights[wi];
        let loc = format!("layer {wi} weight ");
        let scales_f32: Vec<f32> = rec_w
            .scales
            .to_f64_vec()
            .iter()
            .map(|&s| s as f32)
            .collect();
        rec.floats(
            "weights",
            &format!("{loc}scales"),
            &q.scale,
            &scales_f32,
            |_| String::new(),
        );
        let zp: Vec<Option<i64>> = q.zero_point.iter().map(|&z| Some(z)).collect();
        rec.ints(
            "weights",
            &format!("{loc}zero_points"),
            &zp,
            ints(case, "weights.zero_points", &rec_w.zero_points)?,
        );
        let scales64: Vec<f64> = q.scale.iter().map(|&s| s as f64).collect();
        let ours = if w_cfg.qscheme.is_per_channel() {
            aten::quantize_per_channel(
                ws,
                &scales64,
                &q.zero_point,
                channel_index(shape, 0),
                w_cfg.dtype,
            )
        } else {
            aten::quantize_per_tensor(ws, scales64[0], q.zero_point[0], w_cfg.dtype)
        };
        rec.ints(
            "weights",
            &format!("{loc}int_repr"),
            &ours,
            ints(case, "weights.int_repr", &rec_w.int_repr)?,
        );
        wi += 1;
    }

    let kernel = match opts.kernel {
        None => None,
        Some(name) => Some(
            crate::kernels::available()
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    Error::invalid("kernel", format!("{name} is not available on this CPU"))
                })?,
        ),
    };
    // 3. Each flow, each run, stage by stage on PyTorch's recorded quantized activations.
    for (fname, fr) in &m.flows {
        let flow = Flow::from_name(fname)
            .map_err(|e| field_err(case, &format!("flows.{fname}"), e.to_string()))?;
        let ctx = StageCtx {
            flow,
            engine,
            isa,
            cpu: opts.cpu,
        };
        if fr.runs.len() != m.inputs.len() {
            return Err(field_err(
                case,
                &format!("flows.{fname}.runs"),
                format!("{} runs for {} inputs", fr.runs.len(), m.inputs.len()),
            ));
        }
        for (ri, run) in fr.runs.iter().enumerate() {
            check_run(
                case,
                m,
                &stages,
                &ctx,
                kernel.as_deref(),
                opts.fused,
                fname,
                ri,
                run,
                rec,
            )?;
        }
    }
    Ok(())
}

fn qtensor(case: &Case, field: &str, q: &golden::QuantizedRecord) -> Result<QTensor> {
    let data = ints(case, field, &q.int_repr)?
        .iter()
        .map(|&v| {
            u8::try_from(v).map_err(|_| field_err(case, field, format!("{v} is not a uint8")))
        })
        .collect::<Result<Vec<u8>>>()?;
    Ok(QTensor {
        shape: q.int_repr.shape.clone(),
        data,
        scale: q.scale,
        zero_point: q.zero_point,
    })
}

#[allow(clippy::too_many_arguments)]
fn check_run(
    case: &Case,
    m: &ModelCase,
    stages: &[Stage],
    ctx: &StageCtx,
    kernel: Option<&dyn crate::kernels::Int8Gemm>,
    fused: bool,
    fname: &str,
    ri: usize,
    run: &golden::RunRecord,
    rec: &mut Recorder,
) -> Result<()> {
    let g = fname;
    let base = format!("flows.{fname}.runs[{ri}]");
    let n_stage_entries = run
        .quantized
        .iter()
        .filter(|q| q.source == "conv2d" || q.source == "linear")
        .count();
    if n_stage_entries != stages.len() {
        return Err(field_err(
            case,
            &format!("{base}.quantized"),
            format!("the graph computed {n_stage_entries} quantized conv/linear outputs, the model has {} layers", stages.len()),
        ));
    }
    let x = &m.inputs[ri];
    let xs = f32s(case, &format!("inputs[{ri}]"), x)?;
    let mut si = 0;
    for (t, q) in run.quantized.iter().enumerate() {
        let field = format!("{base}.quantized[{t}]");
        let got = qtensor(case, &format!("{field}.int_repr"), q)?;
        let got_i: Vec<i64> = got.data.iter().map(|&v| v as i64).collect();
        // The clamp limits the graph applied must be the flow's.
        let (lo, hi) = if ctx.flow.keeps_quant_range() {
            (q.quant_min, q.quant_max)
        } else {
            (0, 255)
        };
        // Link to the observers: every quantize point of the graph has its own observer, in
        // graph order (a shape op after a QAT layer gets one too).
        let obs_idx = (run.quantized.len() == m.observers.len()).then_some(t);
        if let Some(o) = obs_idx.and_then(|i| m.observers.get(i)) {
            let os = o.scale.to_f64_vec();
            let oz = o
                .zero_point
                .as_int()
                .map(|v| v.to_vec())
                .unwrap_or_default();
            let same = os
                .first()
                .is_some_and(|&s| (s as f32).to_bits() == (q.scale as f32).to_bits())
                && oz.first() == Some(&q.zero_point);
            if same {
                rec.exact(g, 1);
            } else {
                rec.mismatch(g, || Mismatch {
                    location: format!("{field}: qparams vs observer {}", o.name),
                    expected: format!("scale {} zp {}", q.scale, q.zero_point),
                    got: format!("scale {:?} zp {:?}", os.first(), oz.first()),
                    detail: vec![
                        "the converted graph does not use the observer's calculate_qparams()"
                            .into(),
                    ],
                });
            }
            if ctx.flow.keeps_quant_range()
                && (q.quant_min, q.quant_max) != (m_range(m).0, m_range(m).1)
            {
                rec.mismatch(g, || Mismatch {
                    location: format!("{field}: quant range"),
                    expected: format!("{}..{}", q.quant_min, q.quant_max),
                    got: format!("{}..{}", m_range(m).0, m_range(m).1),
                    detail: vec![
                        "the decomposed flow carries the observer's quant_min/quant_max".into(),
                    ],
                });
            }
        }
        match q.source.as_str() {
            "input" => {
                if x.numel() != got.data.len() {
                    return Err(field_err(
                        case,
                        &field,
                        "input quantization has a different element count than the input",
                    ));
                }
                let pred: Vec<Pred> = xs
                    .iter()
                    .map(|&v| {
                        ctx.flow
                            .quantize(v, q.scale, q.zero_point, lo, hi)
                            .map(Pred::Exact)
                            .unwrap_or(Pred::Ambiguous { lo: 0, hi: 255 })
                    })
                    .collect();
                rec.preds(
                    g,
                    &format!("{fname} run {ri}, input quantize"),
                    &pred,
                    &got_i,
                    |i| {
                        vec![format!(
                            "x = {:e}, scale {}, zero_point {}, clamp {lo}..{hi}",
                            xs[i], q.scale, q.zero_point
                        )]
                    },
                );
            }
            "conv2d" | "linear" => {
                let st = &stages[si];
                if t == 0 {
                    return Err(field_err(
                        case,
                        &field,
                        "a quantized layer output without a quantized input before it",
                    ));
                }
                let inp = qtensor(
                    case,
                    &format!("{base}.quantized[{}].int_repr", t - 1),
                    &run.quantized[t - 1],
                )?;
                let out = OutQParams {
                    scale: q.scale,
                    zero_point: q.zero_point,
                    quant_min: q.quant_min,
                    quant_max: q.quant_max,
                };
                // The fused x86 backend where asked for and implemented, else the reference.
                let fo = if fused && ctx.flow == Flow::ConvertFx {
                    fused_layer(&st.layer, ctx, &inp, &out)
                        .map_err(|e| field_err(case, &field, e.to_string()))?
                } else {
                    None
                };
                let (group, shape, pred, path) = match fo {
                    Some(fo) => (
                        format!("{g}[x86-fused]"),
                        fo.shape,
                        fo.data.iter().map(|&v| Pred::Exact(v as i64)).collect(),
                        fo.kernel,
                    ),
                    None => {
                        let so = st
                            .layer
                            .run_with_kernel(ctx, kernel, &inp, &out)
                            .map_err(|e| field_err(case, &field, e.to_string()))?;
                        (g.to_string(), so.shape, so.pred, so.path)
                    }
                };
                if shape != got.shape {
                    return Err(field_err(
                        case,
                        &field,
                        format!("output shape {:?}, qparity computes {:?}", got.shape, shape),
                    ));
                }
                let loc = format!("{fname} run {ri}, stage {si} ({}, {path})", st.kind);
                rec.preds(&group, &loc, &pred, &got_i, |i| {
                    trace_lines(&st.layer, ctx, &inp, &out, i)
                });
                si += 1;
            }
            _ => {
                // Shape ops (flatten): the quantized values pass through unchanged.
                if t == 0 {
                    return Err(field_err(
                        case,
                        &field,
                        "a shape op before any quantized value",
                    ));
                }
                let prev = qtensor(case, "", &run.quantized[t - 1])?;
                let pred: Vec<Pred> = prev
                    .data
                    .iter()
                    .map(|&v| {
                        let f = ctx.flow.dequantize(v as i64, prev.scale, prev.zero_point);
                        ctx.flow
                            .quantize(f, q.scale, q.zero_point, lo, hi)
                            .map(Pred::Exact)
                            .unwrap_or(Pred::Exact(v as i64))
                    })
                    .collect();
                rec.preds(
                    g,
                    &format!("{fname} run {ri}, {} passthrough", q.source),
                    &pred,
                    &got_i,
                    |_| vec![],
                );
            }
        }
    }
    // Final output: dequantize of the last quantized activation.
    let last = run
        .quantized
        .last()
        .ok_or_else(|| field_err(case, &base, "no quantized activations recorded"))?;
    let lt = qtensor(case, "", last)?;
    let ours: Vec<f32> = lt
        .data
        .iter()
        .map(|&v| ctx.flow.dequantize(v as i64, lt.scale, lt.zero_point))
        .collect();
    let theirs = f32s(case, &format!("{base}.output"), &run.output)?;
    rec.floats(
        g,
        &format!("{fname} run {ri}, output dequantize"),
        &ours,
        theirs,
        |i| format!("q = {}", lt.data[i]),
    );
    Ok(())
}

/// The layer on the fused x86 backend (`None` where it has no implementation).
fn fused_layer(
    layer: &crate::engine::flow::QLayer,
    ctx: &StageCtx,
    inp: &QTensor,
    out: &OutQParams,
) -> Result<Option<crate::kernels::FusedOut>> {
    #[cfg(target_arch = "x86_64")]
    return crate::backend::x86::run_convert_fx(layer, ctx, inp, out);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (layer, ctx, inp, out);
        Ok(None)
    }
}

fn m_range(m: &ModelCase) -> (i64, i64) {
    (
        m.qconfig.activation.resolved.quant_min.unwrap_or(0),
        m.qconfig.activation.resolved.quant_max.unwrap_or(255),
    )
}

fn trace_lines(
    layer: &QLayer,
    ctx: &StageCtx,
    inp: &QTensor,
    out: &OutQParams,
    i: usize,
) -> Vec<String> {
    match layer.trace(ctx, inp, out, i) {
        Err(e) => vec![format!("trace unavailable: {e}")],
        Ok(t) => {
            let mut v = vec![format!(
                "input scale {} zp {}; output scale {} zp {} (clamp {}..{})",
                inp.scale, inp.zero_point, out.scale, out.zero_point, out.quant_min, out.quant_max
            )];
            if let Some(a) = t.acc {
                v.push(format!("int32 accumulator: {a}"));
            }
            if let Some(a) = t.acc_exact {
                v.push(format!("exact accumulator would be {a}"));
            }
            if let Some((k, s)) = t.saturated_pair {
                v.push(format!(
                    "pair saturation at k = {k}: pair sum {s} clamps to int16"
                ));
            }
            if let Some(b) = t.bias_term {
                v.push(format!("bias term: {b:e}"));
            }
            if let Some(mu) = t.multiplier {
                v.push(format!("multiplier: {mu:e}"));
            }
            if let Some((y, b)) = t.float_value {
                v.push(format!("float op: {y:e} ± {b:e}"));
            }
            v.push(format!("pre-rounding value: {:.9}", t.pre_round));
            v.push(format!("rule: {}", t.rule));
            v
        }
    }
}

/// A whole check run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub elements_exact: u64,
    pub elements_ambiguous: u64,
    pub elements_mismatched: u64,
    /// Element counts per "op / engine / group" row.
    pub table: BTreeMap<String, Stats>,
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// Builds the summary from case results.
    pub fn from_cases(cases: Vec<CaseResult>) -> Self {
        let mut r = Report::default();
        for c in &cases {
            if c.passed {
                r.passed += 1;
            } else {
                r.failed += 1;
            }
            for (g, s) in &c.groups {
                let key = format!("{} / {} / {} / {}", c.op, c.engine, g, c.isa);
                r.table.entry(key).or_default().add(s);
                r.elements_exact += s.exact;
                r.elements_ambiguous += s.ambiguous;
                r.elements_mismatched += s.mismatched;
            }
        }
        r.cases = cases;
        r
    }

    /// Ambiguous elements as a fraction of reference-flow elements.
    pub fn reference_ambiguity(&self) -> (u64, u64) {
        let mut amb = 0;
        let mut tot = 0;
        for (k, s) in &self.table {
            if k.contains("convert_to_reference") {
                amb += s.ambiguous;
                tot += s.total();
            }
        }
        (amb, tot)
    }
}

/// Checks every case file under `path`, calling `progress(done, total)` after each.
pub fn check_path(
    path: &Path,
    opts: &CheckOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    let files = golden::case_files(path)?;
    let total = files.len();
    let mut results = Vec::with_capacity(total);
    for (i, f) in files.iter().enumerate() {
        results.push(check_file(f, opts));
        progress(i + 1, total);
    }
    Ok(Report::from_cases(results))
}
