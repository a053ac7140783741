//! `qparity check`: every number PyTorch produced in a golden case is recomputed and compared
//! element by element (exact / ambiguous / mismatched).
//!
//! A thin driver over [`Stage`]s: plan each stage's op, predict, compare with PyTorch's outputs,
//! and on the first mismatch of a case show the value chain ([`crate::ops::Plan::trace`]) and the
//! rule ([`crate::ops::Plan::rule`]).

use crate::backend::Backend;
use crate::engine::flow::Flow;
use crate::engine::CpuFeatures;
use crate::golden::stages::{element_results, ElementResult};
use crate::golden::{self, Body, Case, Stage};
use crate::kernels::Int8Gemm;
use crate::ops::{Lowered, Output, Value};
use crate::Result;
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
    /// Primitive op, or the model's name (`linear_relu`, `conv2d_dw`, `composed`, ...).
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
    /// Stages an optimized backend was asked to run but has no implementation for (they were
    /// checked on the reference model instead).
    #[serde(default)]
    pub backend_fallbacks: u64,
    /// Per op name, the stages that fell back (`--fused`).
    #[serde(default)]
    pub fallback_ops: BTreeMap<String, u64>,
    /// Per op name and backend kernel (`conv2d: x86-avx512vnni`), the stages that ran on the
    /// optimized backend (`--fused`).
    #[serde(default)]
    pub fused_stages: BTreeMap<String, u64>,
    /// The rules this case was built to pin (its `pins:<rule>` tags).
    #[serde(default)]
    pub pins: Vec<String>,
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
    /// Run each `convert_fx` stage the backend implements end to end on it (packed weights, fused
    /// requantization); those elements are counted in the group `<flow>[<backend>]`.
    pub backend: Option<&'static dyn Backend>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            cpu: CpuFeatures::AVX512_VNNI,
            kernel: None,
            backend: None,
        }
    }
}

/// Accumulates element comparisons for one case.
#[derive(Default)]
struct Recorder {
    groups: BTreeMap<String, Stats>,
    first: Option<Mismatch>,
    fallbacks: u64,
    fallback_ops: BTreeMap<String, u64>,
    fused: BTreeMap<String, u64>,
}

impl Recorder {
    fn group(&mut self, g: &str) -> &mut Stats {
        self.groups.entry(g.to_string()).or_default()
    }
}

/// Checks one case. Never panics on malformed data: problems become `error`.
pub fn check_case(case: &Case, opts: &CheckOptions) -> CaseResult {
    let (engine, mode) = match &case.body {
        Body::Primitive(_) => ("-".to_string(), "-".to_string()),
        Body::Model(m) => (m.engine.name().to_string(), m.mode.name().to_string()),
        Body::Graph(g) => (g.engine.name().to_string(), g.mode.name().to_string()),
    };
    let mut res = CaseResult {
        id: case.header.id.clone(),
        path: case.path.display().to_string(),
        kind: case.header.kind.name().into(),
        op: case.op_name().to_string(),
        engine,
        mode,
        isa: case.header.isa.name().into(),
        ..Default::default()
    };
    let mut rec = Recorder::default();
    let kernel = match opts.kernel {
        None => None,
        Some(name) => match crate::kernels::available()
            .into_iter()
            .find(|k| k.name() == name)
        {
            Some(k) => Some(k),
            None => {
                res.error = Some(format!("kernel {name} is not available on this CPU"));
                return res;
            }
        },
    };
    let outcome = case.stages(&opts.cpu).and_then(|stages| {
        stages
            .iter()
            .try_for_each(|s| check_stage(case, s, opts, kernel.as_deref(), &mut rec))?;
        match (opts.backend, &case.body) {
            (Some(backend), Body::Graph(_)) => {
                check_end_to_end(case, &stages, opts, backend, &mut rec)
            }
            _ => Ok(()),
        }
    });
    if let Err(e) = outcome {
        res.error = Some(e.to_string());
    }
    res.passed = res.error.is_none() && rec.groups.values().all(|s| s.mismatched == 0);
    res.groups = rec.groups;
    res.pins = case
        .header
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix("pins:"))
        .map(String::from)
        .collect();
    if let Some(m) = rec.first.as_mut() {
        // A case built to pin a rule says which one: the rule or the engine has drifted.
        let lines: Vec<String> = res.pins.iter().map(|t| pinned_rule(t)).collect();
        m.detail.splice(0..0, lines);
    }
    res.first_mismatch = rec.first;
    res.backend_fallbacks = rec.fallbacks;
    res.fallback_ops = rec.fallback_ops;
    res.fused_stages = rec.fused;
    res
}

/// The diagnosis line of a case tagged `pins:<rule>` (docs/NUMERICS.md, golden/README.md): the
/// rule on which this case's data make the rule and its nearest alternative disagree.
pub fn pinned_rule(tag: &str) -> String {
    let what = match tag {
        "R21-fbgemm-multiplier-division" => {
            "the FBGEMM multiplier divides, mult = f32(atws / f32(s_y)) \
             (nearest alternative: f32(atws · f32(1/s_y)))"
        }
        "R22-fbgemm-bias-per-tensor-reciprocal" => {
            "FBGEMM with per-tensor weights multiplies the bias by rcp = f32(1.0 / (double)atws) \
             (nearest alternative: divides, f32(bias / atws))"
        }
        "R22-fbgemm-bias-per-tensor-fma" => {
            "FBGEMM with per-tensor weights adds bias · rcp to f32(acc) in one fused multiply-add \
             (nearest alternative: two roundings, f32(f32(acc) + f32(bias · rcp)))"
        }
        "R22-fbgemm-bias-per-channel-division" => {
            "FBGEMM with per-channel weights divides the bias, f32(f32(acc) + f32(bias / atws[j])) \
             (nearest alternatives: the per-tensor form, an FMA with f32(1.0 / (double)atws[j]), \
             or that reciprocal's product rounded apart)"
        }
        "R25-qnnpack-bias-reciprocal" => {
            "QNNPACK's int32 bias is RNE(f32(bias · f32(1/sb))), sb = f32(w_s · s_x) \
             (nearest alternative: RNE(f32(bias / sb)))"
        }
        "R24-final-rne" => {
            "the requantized f32 value rounds half to even, q = cvt32(y) + zp_y with cvtps2dq \
             (nearest alternative: ties half away from zero)"
        }
        "R24-relu-clamp-at-zero-point" => {
            "quantized::linear_relu clamps below at the output zero point, q = max(q, zp_y) \
             (nearest alternative: at code 0)"
        }
        "R25-qnnpack-bias-rne" => {
            "QNNPACK's int32 bias rounds f32(bias · f32(1/sb)) half to even when it is a tie \
             n + 0.5 (nearest alternative: half away from zero)"
        }
        "R25-qnnpack-output-scale-reciprocal" => {
            "QNNPACK's requantization scale multiplies by the output scale's reciprocal, \
             req = f32(f32(w_s · s_x) · f32(1/s_y)) (nearest alternatives: f32(f32(w_s · s_x) / s_y), \
             or the quotient w_s · s_x / s_y in double)"
        }
        "R2-observer-zero-point-rne" | "R2-histogram-zero-point-rne" => {
            "the Python observer's zero point is qmin − RNE(f32(min / scale)), ties to even \
             (nearest alternative: ties away from zero)"
        }
        "R2-observer-zero-point-division" | "R2-histogram-zero-point-division" => {
            "the Python observer's zero point divides, f32(min / scale) \
             (nearest alternative: f32(min · f32(1/scale)))"
        }
        "R4-fbgemm-zero-point-anchor" => {
            "ChooseQuantizationParams anchors the zero point at the end with the smaller error \
             term, |qmin| + |min/scale| against |qmax| + |max/scale| (nearest alternative: the \
             other end)"
        }
        "R4-fbgemm-small-scale" => {
            "ChooseQuantizationParams raises a scale under 6.1e-5 to 6.1e-5 and stretches both ends \
             by 6.1e-5 / scale before anchoring the zero point (nearest alternatives: no floor, or \
             the other end)"
        }
        "R4-fbgemm-symmetric-midpoint" => {
            "ChooseQuantizationParams with preserve_sparsity takes the zero point at the range's \
             midpoint, RNE((qmin + qmax) / 2) (nearest alternative: the end with the smaller error)"
        }
        "R8-quantize-f32-scale-reciprocal" => {
            "quantize_per_tensor rounds the double scale to f32 before FBGEMM's reciprocal, \
             q = RNE(f32(x · f32(1/f32(scale)))) + zero point (nearest alternative: the \
             reciprocal of the double scale, f32(1/scale))"
        }
        "R11-decomposed-reciprocal-double" => {
            "quantized_decomposed.quantize_per_tensor multiplies by the reciprocal of the double \
             scale, q = RNE(f32(x · f32(1.0 / scale))) + zp (nearest alternative: R8's \
             f32(1 / f32(scale)))"
        }
        "R12-decomposed-quantize-f64-scales" => {
            "quantized_decomposed.quantize_per_channel with float64 scales computes in double, \
             q = RNE(x · (1 / s)) + zp (nearest alternative: the f32-scale arithmetic, \
             RNE(f32(x · f32(1 / f32(s)))))"
        }
        "R12-decomposed-dequantize-f64-scales" => {
            "quantized_decomposed.dequantize_per_channel with float64 scales computes in double, \
             y = f32((q − zp) · s) (nearest alternative: f32(f32(q − zp) · f32(s)))"
        }
        "R11-decomposed-int32-clamp-f32" => {
            "quantized_decomposed.quantize_per_tensor clamps in f32, where the int32 range's top \
             2^31 − 1 is 2^31, and x86 converts 2^31 to INT32_MIN: every input beyond the top \
             comes out as −2147483648 (nearest alternative: the clamp in double, 2147483647)"
        }
        "R12-decomposed-int32-clamp-op-precision" => {
            "quantized_decomposed.quantize_per_channel clamps in its op precision: with f32 \
             scales in f32 (the int32 range's top becomes 2^31, converted to INT32_MIN), with \
             float64 scales in double (2147483647) (nearest alternative: the other precision)"
        }
        "R13-fake-quantize-mask-rounded" => {
            "fake quantize's mask (the _cachemask variants) is taken on the rounded, unclamped \
             value, qmin ≤ zp + RNE(f32(x · f32(1/s))) ≤ qmax (nearest alternative: the float \
             range f32((qmin − zp) · s) ≤ x ≤ f32((qmax − zp) · s))"
        }
        "R13-fake-quantize-mask-ties-even" => {
            "fake quantize rounds x · f32(1/s) half to even (nearbyint) before its mask's range \
             test, so a tie half a step outside the range next to an even step count stays \
             inside (nearest alternative: half away from zero, std::round)"
        }
        "R13-per-tensor-clamp-before-int64" => {
            "fake_quantize_per_tensor_affine clamps fmin(fmax(qf, qmin), qmax) before its int64 \
             conversion, so +inf and values beyond 2^63 steps give qmax (nearest alternative: \
             the per-channel kernel's order, int64 first: INT64_MIN, so qmin)"
        }
        "R13-per-channel-int64-before-clamp" => {
            "fake_quantize_per_channel_affine converts to int64 before its clamp, so NaN, ±inf \
             and values beyond 2^63 steps give INT64_MIN, hence qmin (nearest alternative: the \
             per-tensor kernel's order, where +inf gives qmax)"
        }
        "R7-histogram-threshold-f32" => {
            "HistogramObserver's range search compares cSum[l] with f32(next_alpha · total) in f32 \
             (nearest alternative: in double, where 1e-5 · total lies just above an integer)"
        }
        "R34-adaptive-bounds-f32" => {
            "quantized adaptive_avg_pool2d bounds output o's window in f32, \
             [floor(f32(f32(o·in)/out)), ceil(f32(f32((o+1)·in)/out))) (nearest alternative: the \
             float op's exact integer bounds)"
        }
        "R16-weight-zero-point" => {
            "the accumulator folds both zero points, Σ (x − x_z)(w − w_z) = Σ x·w − x_z·Σ w \
             − w_z·Σ x + K·x_z·w_z, per output channel's w_z (nearest alternative: the weight \
             zero point forgotten, Σ (x − x_z)·w)"
        }
        _ => "(a rule this build does not describe)",
    };
    format!("this case pins {tag} (docs/NUMERICS.md): {what}")
}

/// Runs one stage: plan, predict (on the backend or kernel asked for, where it applies), compare.
fn check_stage(
    case: &Case,
    stage: &Stage,
    opts: &CheckOptions,
    kernel: Option<&dyn Int8Gemm>,
    rec: &mut Recorder,
) -> Result<()> {
    let in_stage = |e: crate::Error| case.field_err(&stage.location, e.to_string());
    let metas: Vec<_> = stage.inputs.iter().map(Value::meta).collect();
    let plan = stage
        .op
        .plan(&stage.ctx, &metas, stage.out.as_ref())
        .map_err(in_stage)?;
    let inputs: Vec<&Value> = stage.inputs.iter().collect();
    let mut group = stage.group.clone();
    let lowered = plan.lowered();
    let integer = stage.ctx.flow == Flow::ConvertFx;
    let mut outputs: Option<Vec<Output>> = None;
    if let (Some(backend), true) = (opts.backend, integer) {
        let prepared = match lowered {
            Some(low) => backend.prepare(low, &metas).map_err(in_stage)?,
            None => None,
        };
        match (prepared, lowered) {
            (Some(p), Some(low)) => {
                group = format!("{}[{}]", stage.group, backend.name());
                *rec.fused
                    .entry(format!("{}: {}", stage.op.name(), p.kernel()))
                    .or_default() += 1;
                let n = p.out_shape().iter().product();
                outputs = Some(if p.f32_output() {
                    let mut v = vec![0f32; n];
                    p.run_f32(low, &inputs, &mut v).map_err(in_stage)?;
                    let floats = crate::ops::Predicted::Floats(v);
                    vec![Output::new("output", p.out_shape().to_vec(), floats)]
                } else {
                    let mut codes = vec![0u8; n];
                    p.run(low, &inputs, &mut codes).map_err(in_stage)?;
                    backend_outputs(stage, &*plan, &inputs, p.out_shape(), &codes)
                        .map_err(in_stage)?
                });
            }
            // Stages of a convert flow count (models); primitives only where they lower.
            _ if stage.group.starts_with(Flow::ConvertFx.name()) || lowered.is_some() => {
                rec.fallbacks += 1;
                *rec.fallback_ops
                    .entry(stage.op.name().to_string())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    if let (None, Some(k), Some(Lowered::IntegerLayer(l))) = (&outputs, kernel, lowered) {
        let input = inputs
            .first()
            .ok_or_else(|| in_stage(crate::Error::invalid("layer", "no input")))?
            .quantized("layer input")
            .map_err(in_stage)?;
        outputs = Some(vec![l.predict(input, Some(k)).map_err(in_stage)?]);
    }
    let outputs = match outputs {
        Some(o) => o,
        None => plan.predict(&inputs).map_err(in_stage)?,
    };
    for (oi, e, results) in element_results(&outputs, &stage.expected).map_err(in_stage)? {
        let shape_ok = outputs[oi].shape.iter().product::<usize>() == e.tensor.numel();
        if !shape_ok && e.name == "int_repr" && stage.out.is_some() {
            return Err(case.field_err(
                &e.field,
                format!(
                    "shape {:?}, qparity computes {:?}",
                    e.tensor.shape, outputs[oi].shape
                ),
            ));
        }
        for (i, r) in results.into_iter().enumerate() {
            let g = rec.group(&group);
            match r {
                ElementResult::Exact => g.exact += 1,
                ElementResult::Ambiguous => g.ambiguous += 1,
                ElementResult::Mismatch { expected, got } => {
                    g.mismatched += 1;
                    if rec.first.is_none() {
                        let mut detail = plan
                            .trace(&inputs, oi, i)
                            .unwrap_or_else(|err| vec![format!("trace unavailable: {err}")]);
                        if detail.is_empty() {
                            detail.push(format!("rule: {}", plan.rule()));
                        }
                        rec.first = Some(Mismatch {
                            location: format!("{} {}, element {i}", stage.location, e.name),
                            expected,
                            got,
                            detail,
                        });
                    }
                }
                ElementResult::CountMismatch { ours, theirs } => {
                    g.mismatched += 1;
                    if rec.first.is_none() {
                        rec.first = Some(Mismatch {
                            location: format!("{} {}", stage.location, e.name),
                            expected: format!("{theirs} elements"),
                            got: format!("{ours} elements"),
                            detail: vec![],
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs a graph case's `convert_fx` flow end to end on the backend ([`crate::runner`]) from run
/// 0's input and compares every node's codes with PyTorch's (group `convert_fx[<backend>
/// end-to-end]`). Where a node first differs while every earlier node was equal, its inputs
/// are PyTorch's own, so the stage's verdict applies: if its plan admits every differing code
/// (oneDNN requantization order) they count as ambiguous and the nodes after it, which ran on
/// other inputs than PyTorch's, are not compared; otherwise they are mismatches.
fn check_end_to_end(
    case: &Case,
    stages: &[Stage],
    opts: &CheckOptions,
    backend: &dyn Backend,
    rec: &mut Recorder,
) -> Result<()> {
    use crate::numerics::bound::Pred;
    let graph = crate::runner::Graph::from_case(case, &opts.cpu)?;
    let model = graph.plan(Some(backend))?;
    let input = graph
        .inputs()
        .first()
        .ok_or_else(|| case.field_err("inputs", "no input"))?;
    let out = model.run(input)?;
    let group = format!("{}[{} end-to-end]", Flow::ConvertFx.name(), backend.name());
    rec.fallbacks += model.fallbacks() as u64;
    for (i, name) in graph.node_names().enumerate() {
        let ours = out.logical(i);
        let theirs = graph.recorded(i);
        if ours.len() != theirs.data.len() {
            return Err(case.field_err("flows.convert_fx", format!("node {name}: code count")));
        }
        let differing: Vec<usize> = (0..ours.len())
            .filter(|&k| ours[k] != theirs.data[k])
            .collect();
        let g = rec.group(&group);
        g.exact += (ours.len() - differing.len()) as u64;
        let Some(&first) = differing.first() else {
            continue;
        };
        let tag = format!("convert_fx run 0, node {name} (");
        let stage = stages
            .iter()
            .find(|s| s.location.starts_with(&tag))
            .ok_or_else(|| case.field_err("flows.convert_fx", format!("no stage of {name}")))?;
        let (_, preds) = stage.predict()?;
        let preds = preds
            .iter()
            .find(|o| o.name == "int_repr")
            .and_then(|o| o.ints())
            .unwrap_or_default();
        let admitted = |k: usize| {
            matches!(preds.get(k), Some(&p @ Pred::Ambiguous { .. })
                if p.admits(ours[k] as i64) && p.admits(theirs.data[k] as i64))
        };
        let g = rec.group(&group);
        if differing.iter().all(|&k| admitted(k)) {
            g.ambiguous += differing.len() as u64;
            break;
        }
        g.mismatched += differing.len() as u64;
        if rec.first.is_none() {
            rec.first = Some(Mismatch {
                location: format!(
                    "{group}, node {name} ({}), element {first}",
                    graph.op_name(i)
                ),
                expected: theirs.data[first].to_string(),
                got: ours[first].to_string(),
                detail: vec![format!(
                    "every earlier node equals PyTorch's; {} of {} codes differ",
                    differing.len(),
                    ours.len()
                )],
            });
        }
        break;
    }
    Ok(())
}

/// A backend's codes as the stage's outputs: `int_repr`, plus the plan's other outputs where the
/// stage expects more (an op's fixed output qparams). Where the backend's code differs from
/// PyTorch's, the plan's prediction of that element stands when it admits both (oneDNN
/// requantization order): the element is ambiguous, not mismatched.
fn backend_outputs(
    stage: &Stage,
    plan: &dyn crate::ops::Plan,
    inputs: &[&Value],
    shape: &[usize],
    codes: &[u8],
) -> Result<Vec<Output>> {
    use crate::numerics::bound::Pred;
    let ours = Output::new(
        "int_repr",
        shape.to_vec(),
        crate::ops::Predicted::exact(codes.iter().map(|&c| i64::from(c))),
    );
    let differs = stage.expected.iter().any(|e| {
        e.name != "int_repr"
            || e.tensor.as_int().is_none_or(|t| {
                t.len() != codes.len() || t.iter().zip(codes).any(|(&t, &c)| t != i64::from(c))
            })
    });
    if !differs {
        return Ok(vec![ours]);
    }
    let mut outs = plan.predict(inputs)?;
    for o in outs.iter_mut().filter(|o| o.name == "int_repr") {
        let reference = o.ints().unwrap_or_default();
        let merged: Vec<Pred> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| match reference.get(i) {
                Some(&p @ Pred::Ambiguous { .. }) if p.admits(i64::from(c)) => p,
                _ => Pred::Exact(i64::from(c)),
            })
            .collect();
        *o = Output::new(
            "int_repr",
            shape.to_vec(),
            crate::ops::Predicted::Ints(merged),
        );
    }
    if !outs.iter().any(|o| o.name == "int_repr") {
        outs.push(ours);
    }
    Ok(outs)
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

/// A whole check run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub elements_exact: u64,
    pub elements_ambiguous: u64,
    pub elements_mismatched: u64,
    /// Stages the optimized backend did not implement (checked on the reference model).
    pub backend_fallbacks: u64,
    /// Per op name, the stages that fell back.
    #[serde(default)]
    pub fallback_ops: BTreeMap<String, u64>,
    /// Per op name and kernel, the stages the optimized backend ran.
    #[serde(default)]
    pub fused_stages: BTreeMap<String, u64>,
    /// Element counts per "op / engine / group / isa" row.
    pub table: BTreeMap<String, Stats>,
    /// Per pinned rule (cases tagged `pins:<rule>`): its cases and how many failed.
    #[serde(default)]
    pub pinned: BTreeMap<String, PinStats>,
    pub cases: Vec<CaseResult>,
}

/// The cases that pin one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinStats {
    pub cases: usize,
    pub failed: usize,
    /// Mismatched elements over those cases.
    pub mismatched: u64,
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
            r.backend_fallbacks += c.backend_fallbacks;
            for (k, v) in &c.fallback_ops {
                *r.fallback_ops.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &c.fused_stages {
                *r.fused_stages.entry(k.clone()).or_default() += v;
            }
            for rule in &c.pins {
                let p = r.pinned.entry(rule.clone()).or_default();
                p.cases += 1;
                p.failed += usize::from(!c.passed);
                p.mismatched += c.totals().mismatched;
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

    /// Ambiguous elements and all elements of the reference flows (`convert_to_reference_fx`,
    /// `_convert_to_reference_decomposed_fx`).
    pub fn reference_ambiguity(&self) -> (u64, u64) {
        let mut amb = 0;
        let mut tot = 0;
        for c in &self.cases {
            for (g, s) in &c.groups {
                let reference = [
                    Flow::ConvertToReferenceFx,
                    Flow::ConvertToReferenceDecomposedFx,
                ]
                .iter()
                .any(|f| g == f.name());
                if reference {
                    amb += s.ambiguous;
                    tot += s.total();
                }
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
