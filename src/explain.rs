//! `qparity explain`: what each FX convert flow does with an engine's default qconfig, and
//! ([`explain_case`]) how qparity derives one element of a golden case, stage by stage.
//!
//! The only hand-written data here is the default qconfig table (what `get_default_qconfig` /
//! `get_default_qat_qconfig` in `torch/ao/quantization/qconfig.py` instantiate). Everything else
//! (quant ranges, where `reduce_range` survives, kernel paths, accumulation, bias handling and
//! requantization) comes from the plans the reference engine itself runs: each layer shown is
//! planned with [`Op::plan`] and described by [`crate::ops::Plan::rule`], exactly as a mismatch
//! report describes it.

use crate::engine::flow::Flow;
use crate::engine::{conv_path, CpuFeatures, Ctx, Engine, Isa, KernelPath};
use crate::geometry::Conv2dParams;
use crate::kernels::Accumulation;
use crate::numerics::qparams::{calculate_qmin_qmax, QDType, QScheme, QuantRange};
use crate::ops::layer::{Geometry, QLayer, QWeight};
use crate::ops::{Lowered, Op, OutQParams, Rule, Value};
use crate::Result;
use serde::Serialize;
use std::fmt::Write as _;

/// One observer (or fake-quant) of a default qconfig, as `qconfig.py` builds it.
#[derive(Debug, Clone, Serialize)]
pub struct ObserverSpec {
    /// Observer class.
    pub class: &'static str,
    /// Fake-quant wrapper class (QAT only).
    pub fake_quant: Option<&'static str>,
    pub dtype: QDType,
    pub qscheme: QScheme,
    /// `quant_min` / `quant_max` passed explicitly (`None` = not passed).
    pub quant_min: Option<i64>,
    pub quant_max: Option<i64>,
    pub reduce_range: bool,
}

impl ObserverSpec {
    /// The range the observer uses to choose scale / zero point.
    pub fn range(&self) -> Result<QuantRange> {
        calculate_qmin_qmax(
            self.quant_min,
            self.quant_max,
            self.dtype,
            self.reduce_range,
        )
    }
}

/// The default qconfig of an engine (`torch/ao/quantization/qconfig.py`, torch 2.x).
#[derive(Debug, Clone, Serialize)]
pub struct DefaultQConfig {
    /// The Python call that returns it.
    pub call: String,
    pub activation: ObserverSpec,
    pub weight: ObserverSpec,
}

/// `get_default_qconfig(engine)` (PTQ) or `get_default_qat_qconfig(engine)` (QAT, version 1).
pub fn default_qconfig(engine: Engine, qat: bool) -> DefaultQConfig {
    // Which engines ask for reduce_range / per-channel weights (qconfig.py).
    let reduce_range = matches!(engine, Engine::Fbgemm | Engine::X86);
    let per_channel = !matches!(engine, Engine::Qnnpack);
    let weight_qscheme = if per_channel {
        QScheme::PerChannelSymmetric
    } else {
        QScheme::PerTensorSymmetric
    };
    if qat {
        DefaultQConfig {
            call: format!("get_default_qat_qconfig({:?})", engine.name()),
            activation: ObserverSpec {
                class: "MovingAverageMinMaxObserver",
                fake_quant: Some("FusedMovingAvgObsFakeQuantize"),
                dtype: QDType::Quint8,
                qscheme: QScheme::PerTensorAffine,
                quant_min: Some(0),
                quant_max: Some(255),
                reduce_range,
            },
            weight: ObserverSpec {
                class: if per_channel {
                    "MovingAveragePerChannelMinMaxObserver"
                } else {
                    "MovingAverageMinMaxObserver"
                },
                fake_quant: Some("FusedMovingAvgObsFakeQuantize"),
                dtype: QDType::Qint8,
                qscheme: weight_qscheme,
                quant_min: Some(-128),
                quant_max: Some(127),
                reduce_range: false,
            },
        }
    } else {
        DefaultQConfig {
            call: format!("get_default_qconfig({:?})", engine.name()),
            activation: ObserverSpec {
                class: "HistogramObserver",
                fake_quant: None,
                dtype: QDType::Quint8,
                qscheme: QScheme::PerTensorAffine,
                quant_min: None,
                quant_max: None,
                reduce_range,
            },
            weight: ObserverSpec {
                class: if per_channel {
                    "PerChannelMinMaxObserver"
                } else {
                    "MinMaxObserver"
                },
                fake_quant: None,
                dtype: QDType::Qint8,
                qscheme: weight_qscheme,
                quant_min: None,
                quant_max: None,
                reduce_range: false,
            },
        }
    }
}

/// What one convert flow does at inference.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub flow: &'static str,
    /// Clamp limits of the activation quantize nodes at inference.
    pub inference_range: [i64; 2],
    /// Where `reduce_range` is still visible at inference.
    pub reduce_range_survives_in: &'static str,
    /// What computes the layer: an integer kernel or a float op on dequantized values.
    pub compute: String,
    /// Whether int16 pair saturation can change results in this flow (linear, conv).
    pub int16_saturation: [bool; 2],
}

/// The kernel path of one layer shape.
#[derive(Debug, Clone, Serialize)]
pub struct PathRow {
    pub layer: String,
    pub path: String,
    pub accumulation: String,
    /// Whether the path's accumulation saturates int16 pairs.
    pub saturates: bool,
    pub bias: String,
    pub requant: String,
    /// Why this path (for conv under x86).
    pub rule: String,
}

/// The whole explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub engine: &'static str,
    pub mode: &'static str,
    pub isa: &'static str,
    pub qconfig: DefaultQConfig,
    pub activation_range_at_calibration: [i64; 2],
    pub weight_range: [i64; 2],
    pub weight_granularity: &'static str,
    pub flows: Vec<FlowRow>,
    pub kernels: Vec<PathRow>,
    /// Smallest raw activation value for which a `vpmaddubsw` pair can saturate.
    pub saturating_activation_min: i64,
    pub notes: Vec<String>,
}

/// Smallest u8 activation `a` such that a pair `a·w + a·w` with int8 weights leaves int16.
fn saturation_threshold() -> i64 {
    (0..=255i64)
        .find(|&a| {
            let hi = 2 * a * 127;
            let lo = 2 * a * -128;
            hi > i16::MAX as i64 || lo < i16::MIN as i64
        })
        .unwrap_or(256)
}

/// A representative layer of this shape with the qconfig's weight granularity, planned under
/// `ctx`: its rule and, in the integer flow, its accumulation model.
fn planned(
    ctx: &Ctx,
    geometry: Geometry,
    per_channel: bool,
    act_range: &QuantRange,
) -> Result<(Rule, Option<Accumulation>)> {
    let shape = geometry.weight_shape();
    let oc = geometry.out_channels();
    let nw = if per_channel { oc } else { 1 };
    let layer = QLayer {
        geometry,
        bias: Some(vec![0.0; oc]),
        weight: QWeight {
            int_repr: vec![0; shape.iter().product()],
            shape,
            scales: vec![0.01; nw],
            zero_points: vec![0; nw],
            per_channel,
        },
        relu: false,
        cache: Default::default(),
    };
    let input_shape = match geometry {
        Geometry::Linear { in_features, .. } => vec![1, in_features],
        Geometry::Conv2d(p) => vec![1, p.in_channels, 8, 8],
    };
    let meta = crate::ops::Meta {
        shape: &input_shape,
        qparams: Some((0.1, 0)),
        memory_format: crate::ops::MemoryFormat::Contiguous,
    };
    let out = OutQParams {
        scale: 0.1,
        zero_point: 0,
        quant_min: act_range.quant_min,
        quant_max: act_range.quant_max,
    };
    let plan = layer.plan(ctx, &[meta], Some(&out))?;
    let acc = match plan.lowered() {
        Some(Lowered::IntegerLayer(l)) => Some(l.accumulation),
        _ => None,
    };
    Ok((plan.rule(), acc))
}

/// The CPU's ISA as FBGEMM would pick it.
pub fn host_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            return Isa::Vnni;
        }
    }
    Isa::Avx2
}

/// Builds the explanation for an engine, mode and ISA.
pub fn explain(engine: Engine, qat: bool, isa: Isa) -> Result<Explanation> {
    let qc = default_qconfig(engine, qat);
    let calib = qc.activation.range()?;
    let wr = qc.weight.range()?;
    let full = qc.activation.dtype.full_range();
    let per_channel = qc.weight.qscheme.is_per_channel();
    let threshold = saturation_threshold();

    // Layer shapes: the user story's conv, a depthwise conv, and a linear.
    let conv = Conv2dParams::square;
    let shapes: Vec<(String, Option<Conv2dParams>)> = vec![
        ("linear".into(), None),
        (
            "conv2d 3->5, 3x3, groups=1".into(),
            Some(conv(3, 5, 1, 3, 0)),
        ),
        (
            "conv2d depthwise 16ch, 3x3, pad 1".into(),
            Some(conv(16, 16, 16, 3, 1)),
        ),
    ];
    let vnni = isa == Isa::Vnni;
    // `--isa vnni`: an AVX-512 VNNI CPU with FBGEMM's default kernels; `avx2`: an AVX2 CPU.
    let cpu = if vnni {
        CpuFeatures::AVX512_VNNI
    } else {
        CpuFeatures::AVX2
    };
    let geometry = |p: &Option<Conv2dParams>| match p {
        None => Geometry::Linear {
            in_features: 16,
            out_features: 4,
        },
        Some(p) => Geometry::Conv2d(*p),
    };
    let ctx = |flow| Ctx {
        flow,
        engine,
        isa,
        cpu,
    };
    let mut kernels = Vec::new();
    for (name, p) in &shapes {
        let (rule, acc) = planned(&ctx(Flow::ConvertFx), geometry(p), per_channel, &calib)?;
        let line = |l: &str| rule.get(l).unwrap_or("").to_string();
        let why =
            match (engine, p) {
                (Engine::X86, Some(p)) => {
                    let onednn_if =
                        conv_path(engine, p, true, &CpuFeatures::AVX512_VNNI) == KernelPath::Onednn;
                    format!(
                    "x86 conv: oneDNN iff Linux + AVX512-VNNI + groups<=100 + symmetric weights, \
                     else FBGEMM ConvFastPath; shape+weights {}, VNNI {}",
                    if onednn_if { "qualify" } else { "do not qualify" },
                    if vnni { "yes" } else { "no" }
                )
                }
                (Engine::X86 | Engine::Fbgemm, None) => {
                    "quantized::linear under fbgemm and x86 always uses FBGEMM".into()
                }
                (Engine::Fbgemm, Some(_)) => {
                    "FBGEMM ConvFastPath (depthwise/groupwise/im2col)".into()
                }
                _ => format!("engine {} always uses {}", engine.name(), line("path")),
            };
        kernels.push(PathRow {
            layer: name.clone(),
            path: line("path"),
            accumulation: line("accumulation"),
            saturates: acc == Some(Accumulation::PairSaturatingI16),
            bias: line("bias"),
            requant: line("requant"),
            rule: why,
        });
    }

    let mut flows = Vec::new();
    for flow in Flow::ALL {
        let inf = flow.clamp(calib.quant_min, calib.quant_max);
        let reduced = (calib.quant_min, calib.quant_max) != full;
        let survives = match (reduced, flow.keeps_quant_range()) {
            (false, _) => "nowhere (no reduce_range in this qconfig)",
            (true, true) => "scale/zero point and the quantize clamp",
            (true, false) => "scale/zero point only (clamp is the dtype's 0..255)",
        };
        let (rule, _) = planned(&ctx(flow), geometry(&shapes[0].1), per_channel, &calib)?;
        let sat = |i: usize| kernels[i].saturates && flow.is_integer() && inf.1 >= threshold;
        flows.push(FlowRow {
            flow: flow.name(),
            inference_range: [inf.0, inf.1],
            reduce_range_survives_in: survives,
            compute: if flow.is_integer() {
                "quantized::linear / quantized::conv2d (integer kernel, see paths)".into()
            } else {
                rule.to_string()
            },
            int16_saturation: [sat(0), sat(1) || sat(2)],
        });
    }

    let mut notes = Vec::new();
    let reduced = (calib.quant_min, calib.quant_max) != full;
    if reduced {
        notes.push(format!(
            "reduce_range picks scale/zp for {}..{}, but convert_fx and convert_to_reference_fx \
             clamp to {}..{}: inputs beyond the calibration range quantize above {}. Simulating \
             those flows with clamp {}..{} mismatches.",
            calib.quant_min,
            calib.quant_max,
            full.0,
            full.1,
            calib.quant_max,
            calib.quant_min,
            calib.quant_max
        ));
    }
    if flows.iter().any(|f| f.int16_saturation.iter().any(|&s| s)) {
        notes.push(format!(
            "int16 saturation: on {} a vpmaddubsw pair a0*w0 + a1*w1 leaves int16 once raw \
             activations reach {} (> {}); convert_fx clamps to 0..255, so inputs beyond the \
             calibration range get there and results depend on the ISA.",
            isa.name(),
            threshold,
            threshold - 1
        ));
    } else {
        notes.push(format!(
            "no int16 saturation on {} for the integer kernels shown",
            isa.name()
        ));
    }

    Ok(Explanation {
        engine: engine.name(),
        mode: if qat { "qat" } else { "ptq" },
        isa: isa.name(),
        activation_range_at_calibration: [calib.quant_min, calib.quant_max],
        weight_range: [wr.quant_min, wr.quant_max],
        weight_granularity: if per_channel {
            "per-channel (axis 0), symmetric"
        } else {
            "per-tensor, symmetric"
        },
        qconfig: qc,
        flows,
        kernels,
        saturating_activation_min: threshold,
        notes,
    })
}

fn obs_line(o: &ObserverSpec) -> String {
    let mut s = String::new();
    if let Some(fq) = o.fake_quant {
        let _ = write!(s, "{fq}(observer={}", o.class);
    } else {
        let _ = write!(s, "{}(", o.class);
    }
    let _ = write!(s, " dtype={} qscheme={}", o.dtype.name(), o.qscheme.name());
    if let (Some(a), Some(b)) = (o.quant_min, o.quant_max) {
        let _ = write!(s, " quant_min={a} quant_max={b}");
    }
    let _ = write!(s, " reduce_range={})", o.reduce_range);
    s
}

/// Renders the explanation as a one-screen text table.
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let yn = |b: bool| if b { "YES" } else { "no" };
    let _ = writeln!(
        s,
        "engine {}  mode {}  isa {}   qconfig = {}",
        e.engine, e.mode, e.isa, e.qconfig.call
    );
    let _ = writeln!(s, "  activation: {}", obs_line(&e.qconfig.activation));
    let _ = writeln!(s, "  weight:     {}", obs_line(&e.qconfig.weight));
    let _ = writeln!(
        s,
        "  calibration range: activations {}..{}, weights {}..{} ({})",
        e.activation_range_at_calibration[0],
        e.activation_range_at_calibration[1],
        e.weight_range[0],
        e.weight_range[1],
        e.weight_granularity
    );
    let _ = writeln!(
        s,
        "\n{:<36} {:>9}  {:<50} {:>8} {:>6}",
        "flow", "clamp", "reduce_range survives in", "sat lin", "conv"
    );
    for f in &e.flows {
        let _ = writeln!(
            s,
            "{:<36} {:>9}  {:<50} {:>8} {:>6}",
            f.flow,
            format!("{}..{}", f.inference_range[0], f.inference_range[1]),
            f.reduce_range_survives_in,
            yn(f.int16_saturation[0]),
            yn(f.int16_saturation[1])
        );
        let _ = writeln!(s, "{:<36} computes: {}", "", f.compute);
    }
    let _ = writeln!(s, "\nconvert_fx kernels on {}:", e.isa);
    for k in &e.kernels {
        let _ = writeln!(s, "  {:<34} -> {}: {}", k.layer, k.path, k.accumulation);
        let _ = writeln!(s, "  {:<34}    why:     {}", "", k.rule);
        let _ = writeln!(s, "  {:<34}    bias:    {}", "", k.bias);
    }
    let mut seen = Vec::new();
    for k in &e.kernels {
        if !seen.contains(&k.requant) {
            let _ = writeln!(s, "  requant ({}): {}", k.path, k.requant);
            seen.push(k.requant.clone());
        }
    }
    let _ = writeln!(s);
    for n in &e.notes {
        let _ = writeln!(s, "* {n}");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// One element of a golden case, step by step

/// Which stages and element of a case to explain.
#[derive(Debug, Clone, Default)]
pub struct ElementQuery {
    /// The element (logical, row-major index into the stage's output).
    pub index: usize,
    /// A graph node or model stage name (model and graph cases).
    pub node: Option<String>,
    /// The convert flow (model and graph cases; default: every flow).
    pub flow: Option<Flow>,
    /// The test input (model and graph cases).
    pub run: usize,
}

/// One output of a stage at the explained element.
#[derive(Debug, Clone, Serialize)]
pub struct OutputValue {
    /// The output's name (`int_repr`, `pre_quant`, `output_scale`, …).
    pub output: String,
    /// Where PyTorch's value is in the case file.
    pub field: String,
    /// The element shown (an output with one value shows its only element).
    pub index: usize,
    pub pytorch: String,
    pub qparity: String,
    /// `exact`, `ambiguous` (within the proven bound) or `mismatch`.
    pub verdict: &'static str,
}

/// One stage (an op planned on PyTorch's recorded inputs) at the explained element.
#[derive(Debug, Clone, Serialize)]
pub struct StageExplanation {
    pub location: String,
    pub op: &'static str,
    pub flow: &'static str,
    pub engine: &'static str,
    /// The plan's rule ([`crate::ops::Plan::rule`]).
    pub rule: Vec<(String, String)>,
    /// The inputs at the element (int code and dequantized value) where an input has the
    /// output's shape; else its shape and qparams.
    pub inputs: Vec<String>,
    /// The op's own derivation of the element ([`crate::ops::Plan::trace`]).
    pub steps: Vec<String>,
    pub outputs: Vec<OutputValue>,
}

/// `qparity explain CASE`: the selected stages of a case at one element.
#[derive(Debug, Clone, Serialize)]
pub struct CaseExplanation {
    pub case: String,
    pub op: String,
    /// The CPU class the case is modelled on (its golden set's manifest, else this machine).
    pub cpu: &'static str,
    pub stages: Vec<StageExplanation>,
}

fn describe_input(v: &Value, i: usize, out_numel: usize) -> String {
    match v {
        Value::Quantized(q) if q.data.len() == out_numel && i < q.data.len() => {
            let code = q.data[i];
            let x = (code as i64 - q.zero_point) as f64 * q.scale;
            format!(
                "q = {code} (scale {:e}, zero point {}, {:?}): scale·(q − zp) = {x:e}",
                q.scale, q.zero_point, q.memory_format
            )
        }
        Value::Quantized(q) => format!(
            "quantized {:?}, scale {:e}, zero point {}, {:?}",
            q.shape, q.scale, q.zero_point, q.memory_format
        ),
        Value::Tensor(t) if t.numel() == out_numel && i < t.numel() => {
            match (t.as_f32(), t.as_int()) {
                (Some(f), _) => format!("x = {:e} (0x{:08x})", f[i], f[i].to_bits()),
                (_, Some(n)) => format!("x = {}", n[i]),
                _ => format!("{:?} {:?}", t.dtype, t.shape),
            }
        }
        Value::Tensor(t) => format!("{:?} {:?}", t.dtype, t.shape),
    }
}

fn show_expected(t: &crate::tensor::Tensor, i: usize) -> String {
    match (t.as_f32(), t.as_int()) {
        (Some(f), _) => format!("{:e} (0x{:08x})", f[i], f[i].to_bits()),
        (_, Some(n)) => n[i].to_string(),
        _ => {
            let v = t.to_f64_vec()[i];
            format!("{v:e} (0x{:016x})", v.to_bits())
        }
    }
}

/// Whether a stage's location names this node (graph: `node NAME (op)`) and run.
fn stage_selected(s: &crate::golden::Stage, q: &ElementQuery, staged: bool) -> bool {
    if q.flow.is_some_and(|f| f != s.ctx.flow) {
        return false;
    }
    if !staged {
        return true;
    }
    let run = format!(" run {},", q.run);
    if s.location.contains(" run ") && !s.location.contains(&run) {
        return false;
    }
    match &q.node {
        // A graph node or model stage by name or number, or any stage by its whole location
        // or the part after its run (`layer 0 weight`, `observer 1`, `flatten passthrough`).
        Some(n) => {
            s.location.contains(&format!("node {n} ("))
                || s.location.contains(&format!("stage {n} ("))
                || s.location == *n
                || s.location.starts_with(&format!("{n} ("))
                || s.location.ends_with(&format!(", {n}"))
        }
        None => true,
    }
}

fn explain_stage(s: &crate::golden::Stage, i: usize) -> Result<StageExplanation> {
    use crate::golden::stages::{element_results, ElementResult};
    let metas: Vec<_> = s.inputs.iter().map(Value::meta).collect();
    let plan = s.op.plan(&s.ctx, &metas, s.out.as_ref())?;
    let inputs: Vec<&Value> = s.inputs.iter().collect();
    let outputs = plan.predict(&inputs)?;
    let mut out_rows = Vec::new();
    let mut steps = Vec::new();
    let mut shown_numel = 0;
    for (oi, e, results) in element_results(&outputs, &s.expected)? {
        let n = e.tensor.numel();
        let k = if n == 1 { 0 } else { i };
        if k >= n {
            return Err(crate::Error::invalid(
                "explain",
                format!("{} has {n} elements, no element {i}", e.field),
            ));
        }
        if n > 1 && steps.is_empty() {
            // The rule is shown on its own: keep the element's own lines.
            steps = plan.trace(&inputs, oi, k)?;
            steps.retain(|l| !l.starts_with("rule: "));
            if steps.is_empty() && oi != 0 {
                // Some ops trace only their first output (a reference flow's int_repr, which
                // passes through the float shown here).
                steps = plan.trace(&inputs, 0, k).unwrap_or_default();
                steps.retain(|l| !l.starts_with("rule: "));
            }
            shown_numel = n;
        }
        let verdict = match &results[k.min(results.len() - 1)] {
            ElementResult::Exact => "exact",
            ElementResult::Ambiguous => "ambiguous",
            _ => "mismatch",
        };
        let ours = match results.first() {
            Some(ElementResult::CountMismatch { ours, .. }) => format!("{ours} elements"),
            _ => outputs[oi].values.show(k),
        };
        out_rows.push(OutputValue {
            output: e.name.clone(),
            field: e.field.clone(),
            index: k,
            pytorch: show_expected(&e.tensor, k),
            qparity: ours,
            verdict,
        });
    }
    if shown_numel == 0 {
        shown_numel = s.expected.first().map_or(0, |e| e.tensor.numel());
    }
    Ok(StageExplanation {
        location: s.location.clone(),
        op: s.op.name(),
        flow: s.ctx.flow.name(),
        engine: s.ctx.engine.name(),
        rule: plan.rule().lines,
        inputs: s
            .inputs
            .iter()
            .map(|v| describe_input(v, i, shown_numel))
            .collect(),
        steps,
        outputs: out_rows,
    })
}

/// The CPU a case is modelled on: its golden set's manifest, else this machine.
pub(crate) fn case_cpu(path: &std::path::Path) -> Result<CpuFeatures> {
    let located = crate::golden::manifest::locate(path)?;
    match located.sets.first() {
        Some(set) => set.manifest.cpu(),
        None => Ok(CpuFeatures::host()),
    }
}

/// The stages of a case that `q` selects: every stage of a primitive case; for model and graph
/// cases the stages of `q.node` in run `q.run` (and `q.flow`), or all of them when they are few.
pub(crate) fn select_stages<'s>(
    case: &crate::golden::Case,
    stages: &'s [crate::golden::Stage],
    q: &ElementQuery,
) -> Result<Vec<&'s crate::golden::Stage>> {
    // Primitive cases are one op (a few stages); model and graph cases are chosen by node.
    let staged = !matches!(case.body, crate::golden::Body::Primitive(_));
    let chosen: Vec<_> = stages
        .iter()
        .filter(|s| stage_selected(s, q, staged))
        .collect();
    if chosen.is_empty() {
        return Err(crate::Error::invalid(
            "explain",
            format!(
                "no stage of {} matches (node {}, flow {}, run {}); stages include: {}",
                case.header.id,
                q.node.as_deref().unwrap_or("any"),
                q.flow.map_or("any", Flow::name),
                q.run,
                stages
                    .iter()
                    .take(12)
                    .map(|s| s.location.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    if staged && q.node.is_none() && chosen.len() > 3 {
        return Err(crate::Error::invalid(
            "explain",
            format!(
                "{} has {} stages: name one with --node (e.g. {})",
                case.header.id,
                chosen.len(),
                chosen
                    .iter()
                    .take(6)
                    .map(|s| s.location.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    Ok(chosen)
}

/// Explains element `q.index` of the stages of a case that `q` selects: each stage's op is
/// planned on PyTorch's recorded inputs (as `qparity check` plans it), and its rule, the inputs
/// at that element, the op's own derivation ([`crate::ops::Plan::trace`]) and the predicted and
/// recorded outputs are reported. The CPU is the golden set's (its manifest), else this machine's.
pub fn explain_case(path: &std::path::Path, q: &ElementQuery) -> Result<CaseExplanation> {
    let case = crate::golden::load_case(path)?;
    let cpu = case_cpu(path)?;
    let stages = case.stages(&cpu)?;
    let chosen = select_stages(&case, &stages, q)?;
    Ok(CaseExplanation {
        case: case.header.id.clone(),
        op: case.header.op.clone(),
        cpu: cpu.class_name(),
        stages: chosen
            .into_iter()
            .map(|s| explain_stage(s, q.index))
            .collect::<Result<_>>()?,
    })
}

/// Text rendering of [`explain_case`].
pub fn render_case(e: &CaseExplanation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "case {} ({}), modelled on {}", e.case, e.op, e.cpu);
    for st in &e.stages {
        let _ = writeln!(
            s,
            "\n{} — {} under {} / {}",
            st.location, st.op, st.flow, st.engine
        );
        let _ = writeln!(s, "  rule:");
        for (l, t) in &st.rule {
            let _ = writeln!(s, "    {l}: {t}");
        }
        let _ = writeln!(s, "  inputs:");
        for (k, t) in st.inputs.iter().enumerate() {
            let _ = writeln!(s, "    [{k}] {t}");
        }
        if !st.steps.is_empty() {
            let _ = writeln!(s, "  steps:");
            for t in &st.steps {
                let _ = writeln!(s, "    {t}");
            }
        }
        let _ = writeln!(s, "  outputs:");
        for o in &st.outputs {
            let _ = writeln!(
                s,
                "    {}[{}]: pytorch {}, qparity {} ({}; {})",
                o.output, o.index, o.pytorch, o.qparity, o.verdict, o.field
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {

    fn golden(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn explains_an_ops_case_element_with_its_kernel_qparams() {
        let p = golden("golden/ops-vnni-seed0/cases/qop-add_scalar-x86-0013.json");
        let q = ElementQuery {
            index: 2,
            ..Default::default()
        };
        let e = explain_case(&p, &q).unwrap();
        assert_eq!(e.stages.len(), 1);
        let st = &e.stages[0];
        let names: Vec<&str> = st.outputs.iter().map(|o| o.output.as_str()).collect();
        assert_eq!(names, ["int_repr", "output_scale", "output_zero_point"]);
        assert!(st.outputs.iter().all(|o| o.verdict == "exact"));
        assert!(st.steps.iter().any(|l| l.starts_with("requantize:")));
        assert!(st.inputs[0].starts_with("q = "));
        assert!(render_case(&e).contains("int_repr[2]: pytorch"));
        // An element past the end is an error, not a panic.
        let q = ElementQuery {
            index: 1 << 30,
            ..Default::default()
        };
        assert!(explain_case(&p, &q).is_err());
    }

    /// Every stage of the first case of each case group (op × engine × mode) in the two VNNI
    /// sets that cover every op explains element 0: a rule with text, a derivation with numbers
    /// for every output of more than one element, and every output exact.
    #[test]
    fn every_stage_kind_explains_itself() {
        let mut groups = std::collections::BTreeSet::new();
        let mut ops = std::collections::BTreeSet::new();
        for set in ["golden/ops-vnni-seed0", "golden/vnni-xeon-seed1"] {
            let mut files: Vec<_> = std::fs::read_dir(golden(set).join("cases"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for p in files {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                let group = stem.rsplit_once('-').map_or(stem.as_str(), |(g, _)| g);
                if !groups.insert(group.to_string()) {
                    continue;
                }
                let case = crate::golden::load_case(&p).unwrap();
                let cpu = case_cpu(&p).unwrap();
                let primitive = matches!(case.body, crate::golden::Body::Primitive(_));
                for s in case.stages(&cpu).unwrap() {
                    let e = explain_stage(&s, 0)
                        .unwrap_or_else(|err| panic!("{stem} {}: {err}", s.location));
                    let at = format!("{stem} {} ({})", s.location, e.op);
                    // A primitive or ops-suite case is one op, named as the capture names it.
                    if primitive {
                        assert_eq!(e.op, case.header.op, "{at}");
                    }
                    ops.insert(e.op);
                    assert!(
                        e.rule.iter().any(|(l, t)| !l.is_empty() && !t.is_empty()),
                        "{at}: rule {:?}",
                        e.rule
                    );
                    assert!(
                        e.outputs.iter().all(|o| o.verdict == "exact"),
                        "{at}: {:?}",
                        e.outputs
                    );
                    let numel = s.expected.first().map_or(0, |x| x.tensor.numel());
                    if numel > 1 {
                        assert!(
                            e.steps
                                .iter()
                                .any(|l| l.chars().any(|c| c.is_ascii_digit())),
                            "{at}: steps {:?}",
                            e.steps
                        );
                    }
                }
            }
        }
        // Every op qparity models appears, under the name reports give it.
        let all = [
            "adaptive_avg_pool2d",
            "add",
            "add_relu",
            "add_scalar",
            "add_scalar_relu",
            "avg_pool2d",
            "batch_norm2d",
            "cat",
            "cat_relu",
            "conv2d",
            "decomposed_dequantize_per_channel",
            "decomposed_dequantize_per_tensor",
            "decomposed_quantize_per_channel",
            "decomposed_quantize_per_tensor",
            "dequantize",
            "dequantize_per_channel",
            "dequantize_per_tensor",
            "elu",
            "fake_quantize_per_channel_affine",
            "fake_quantize_per_tensor_affine",
            "flatten",
            "fused_moving_avg_obs_fake_quant",
            "graph_qparams",
            "hardsigmoid",
            "hardswish",
            "hardtanh",
            "leaky_relu",
            "linear",
            "max_pool2d",
            "mean",
            "mul",
            "mul_relu",
            "mul_scalar",
            "mul_scalar_relu",
            "observer",
            "quantize",
            "quantize_per_channel",
            "quantize_per_tensor",
            "relu",
            "relu6",
            "sigmoid",
            "tanh",
            "weight_quantize",
        ];
        assert_eq!(ops.into_iter().collect::<Vec<_>>(), all);
    }

    #[test]
    fn explains_a_graph_node_in_each_flow() {
        let p =
            golden("golden/graphs-vnni-seed0/cases/graph-resnet18-fbgemm-ptq-default-0000.json");
        // Without a node, a graph case asks for one.
        assert!(explain_case(&p, &ElementQuery::default()).is_err());
        let q = ElementQuery {
            index: 7,
            node: Some("layer1_0_conv1".into()),
            ..Default::default()
        };
        let e = explain_case(&p, &q).unwrap();
        // convert_fx: one stage; each reference flow: the float op and its quantize node.
        let flows: Vec<&str> = e.stages.iter().map(|s| s.flow).collect();
        assert_eq!(flows.len(), 5, "{flows:?}");
        assert!(e.stages.iter().all(|s| !s.steps.is_empty()));
        assert!(e
            .stages
            .iter()
            .flat_map(|s| &s.outputs)
            .all(|o| o.verdict == "exact"));
        let q = ElementQuery {
            node: Some("no_such_node".into()),
            ..Default::default()
        };
        assert!(explain_case(&p, &q).is_err());
    }

    /// A weight element's derivation names the element, its channel and its code; a qparams
    /// element's names the channel's scale.
    #[test]
    fn weight_trace_names_the_element_channel_and_code() {
        let p = golden("golden/vnni-xeon-seed1/cases/model-composed-fbgemm-ptq-avx2-0069.json");
        let case = crate::golden::load_case(&p).unwrap();
        let stages = case.stages(&case_cpu(&p).unwrap()).unwrap();
        // A [12, 24] per-channel weight: element 49 is in channel 2.
        let s = stages
            .iter()
            .find(|s| s.location == "layer 1 weight")
            .unwrap();
        let metas: Vec<_> = s.inputs.iter().map(Value::meta).collect();
        let plan = s.op.plan(&s.ctx, &metas, s.out.as_ref()).unwrap();
        let inputs: Vec<&Value> = s.inputs.iter().collect();
        let t = plan.trace(&inputs, 2, 49).unwrap();
        assert!(
            t[0].starts_with("w = ") && t[0].ends_with("channel 2"),
            "{t:?}"
        );
        assert!(t[1].contains("→ q = "), "{t:?}");
        let t = plan.trace(&inputs, 0, 3).unwrap();
        assert!(t.iter().any(|l| l.starts_with("scales[3] = ")), "{t:?}");
    }

    /// A model case's weight, observer and passthrough stages are chosen by their location.
    #[test]
    fn explains_model_stages_by_location() {
        let p = golden("golden/vnni-xeon-seed1/cases/model-composed-fbgemm-ptq-avx2-0069.json");
        // (A per-tensor observer's outputs are single values: no derivation steps.)
        for (node, stages, steps) in [
            ("layer 0 weight", 1, true),
            ("observer 1", 1, false),
            ("flatten passthrough", 1, true),
        ] {
            let q = ElementQuery {
                index: 1,
                node: Some(node.into()),
                ..Default::default()
            };
            let e = explain_case(&p, &q).unwrap_or_else(|err| panic!("{node}: {err}"));
            assert_eq!(e.stages.len(), stages, "{node}");
            // Per-channel weights: element 1 of the first multi-element output, channel 1's scale.
            if node == "layer 0 weight" {
                assert!(e.stages[0].steps[0].starts_with("scales[1] = "), "{e:?}");
            }
            assert!(
                e.stages.iter().all(|s| s.steps.is_empty() != steps),
                "{node}"
            );
        }
    }
    use super::*;

    #[test]
    fn x86_reduce_range_only_clamps_in_decomposed_flow() {
        let e = explain(Engine::X86, true, Isa::Avx2).unwrap();
        assert_eq!(e.activation_range_at_calibration, [0, 127]);
        let by = |n: &str| e.flows.iter().find(|f| f.flow == n).unwrap().clone();
        assert_eq!(by("convert_fx").inference_range, [0, 255]);
        assert_eq!(by("convert_to_reference_fx").inference_range, [0, 255]);
        assert_eq!(
            by("_convert_to_reference_decomposed_fx").inference_range,
            [0, 127]
        );
        // AVX2: FBGEMM pairs saturate in the integer flow only.
        assert_eq!(by("convert_fx").int16_saturation, [true, true]);
        assert_eq!(
            by("convert_to_reference_fx").int16_saturation,
            [false, false]
        );
        assert_eq!(e.saturating_activation_min, 129);
        assert_eq!(e.weight_granularity, "per-channel (axis 0), symmetric");
    }

    #[test]
    fn qnnpack_is_full_range_per_tensor_int32_bias_no_saturation() {
        let e = explain(Engine::Qnnpack, false, Isa::Avx2).unwrap();
        assert_eq!(e.activation_range_at_calibration, [0, 255]);
        assert!(e.flows.iter().all(|f| f.int16_saturation == [false, false]));
        assert!(e.kernels.iter().all(|k| k.path == "qnnpack"));
        assert!(e.kernels[0].bias.starts_with("int32 bias"));
        assert_eq!(e.weight_granularity, "per-tensor, symmetric");
    }

    #[test]
    fn vnni_linear_is_exact_but_depthwise_still_saturates() {
        let e = explain(Engine::Fbgemm, false, Isa::Vnni).unwrap();
        assert!(e.kernels[0].accumulation.starts_with("exact"));
        assert_eq!(e.kernels[2].path, "fbgemm-depthwise");
        assert!(e.kernels[2].accumulation.starts_with("pairwise"));
        let cfx = &e.flows[0];
        assert_eq!(cfx.int16_saturation, [false, true]);
        // x86 on VNNI runs the regular conv through oneDNN (symmetric per-channel weights).
        let x = explain(Engine::X86, false, Isa::Vnni).unwrap();
        assert_eq!(x.kernels[1].path, "onednn");
        assert_eq!(x.kernels[0].path, "fbgemm-gemm");
    }
}
