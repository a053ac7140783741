//! `cargo xtask diff-live --graphs`: random quantized graphs ([`crate::livegraph`]) built,
//! calibrated and converted with all three FX flows by a pool of long-lived PyTorch workers
//! (`xtask/difflive/graph_worker.py`, which records each graph with
//! `xtask/capture/graphs.py: graph_case`), each case checked node by node by qparity's checker.
//!
//! Two kinds of disagreement are reported apart:
//! - qparity vs PyTorch (a qparity bug): the case fails `qparity::check::check_case`;
//! - PyTorch vs PyTorch: two flows of the same graph compute different codes at a node whose
//!   inputs they agree on. A difference is filed under a documented rule (docs/NUMERICS.md R31)
//!   where the rule explains every differing element, and as a new finding otherwise.
//!
//! Both are saved in the golden format (with a `qparity repro` script) and shrunk while they still
//! disagree.

use crate::livegraph::{self, Spec};
use anyhow::{bail, Context, Result};
use qparity::engine::flow::Flow;
use qparity::golden::graph::{GraphCase, GraphFlow};
use qparity::golden::Body;
use qparity::tensor::Tensor;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Options of `diff-live --graphs`.
pub struct Opts {
    pub count: Option<usize>,
    pub seconds: Option<f64>,
    pub seed: u64,
    /// `(I, N)`: this run takes the graph indices `i ≡ I (mod N)`.
    pub shard: (u64, u64),
    pub workers: usize,
    /// ISA variants to run (`default`, `avx2`).
    pub isas: Vec<String>,
    pub max_ops: usize,
    /// Seconds of shrinking per disagreement (0: none).
    pub shrink_seconds: f64,
    pub out: PathBuf,
    pub json: bool,
}

struct Worker {
    isa: String,
    stdin: ChildStdin,
    child: Child,
    busy: bool,
}

enum Msg {
    Line(usize, String),
    Closed(usize),
}

/// A pool of PyTorch workers, one or more per ISA variant.
struct Pool {
    workers: Vec<Worker>,
    rx: mpsc::Receiver<Msg>,
    torch: String,
}

impl Pool {
    fn start(root: &Path, per_isa: usize, isas: &[String]) -> Result<Self> {
        let python = crate::difflive::venv_python(root);
        if !python.exists() {
            bail!(
                "no Python at {} (set QPARITY_VENV to a venv with torch, or create target/golden-venv)",
                python.display()
            );
        }
        let script = root.join("xtask/difflive/graph_worker.py");
        let (tx, rx) = mpsc::channel();
        let mut workers = Vec::new();
        let mut torch = String::new();
        for isa in isas {
            for _ in 0..per_isa {
                let id = workers.len();
                let mut cmd = Command::new(&python);
                cmd.arg(&script)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .env("OMP_NUM_THREADS", "1")
                    .env("MKL_NUM_THREADS", "1");
                match isa.as_str() {
                    "avx2" => {
                        cmd.env("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2");
                    }
                    "default" => {
                        cmd.env_remove("FBGEMM_ENABLE_INSTRUCTIONS");
                    }
                    other => bail!("unknown ISA variant {other:?} (expected default or avx2)"),
                }
                let mut child = cmd.spawn().with_context(|| {
                    format!("starting {} {}", python.display(), script.display())
                })?;
                let stdin = child.stdin.take().context("worker stdin")?;
                let stdout = child.stdout.take().context("worker stdout")?;
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        match line {
                            Ok(l) => {
                                if tx.send(Msg::Line(id, l)).is_err() {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = tx.send(Msg::Closed(id));
                });
                workers.push(Worker {
                    isa: isa.clone(),
                    stdin,
                    child,
                    busy: true,
                });
            }
        }
        let mut pool = Pool {
            workers,
            rx,
            torch: String::new(),
        };
        // Hellos.
        for _ in 0..pool.workers.len() {
            let (id, line) = pool.recv()?;
            let hello: Value = serde_json::from_str(&line).context("worker hello is not JSON")?;
            let got = hello["isa"].as_str().unwrap_or("?");
            if got != pool.workers[id].isa {
                bail!(
                    "worker {id} runs ISA variant {got}, not {}",
                    pool.workers[id].isa
                );
            }
            torch = hello["torch"].as_str().unwrap_or("?").to_string();
            pool.workers[id].busy = false;
        }
        pool.torch = torch;
        Ok(pool)
    }

    fn recv(&self) -> Result<(usize, String)> {
        match self.rx.recv_timeout(Duration::from_secs(600)) {
            Ok(Msg::Line(id, l)) => Ok((id, l)),
            Ok(Msg::Closed(id)) => bail!("PyTorch worker {id} exited"),
            Err(_) => bail!("no PyTorch worker answered for 10 minutes"),
        }
    }

    fn free(&self, isa: &str) -> Option<usize> {
        self.workers.iter().position(|w| !w.busy && w.isa == isa)
    }

    fn send(&mut self, id: usize, spec: &Spec) -> Result<()> {
        let w = &mut self.workers[id];
        let mut line = serde_json::to_string(spec)?;
        line.push('\n');
        w.stdin
            .write_all(line.as_bytes())
            .and_then(|_| w.stdin.flush())
            .context("writing to a PyTorch worker")?;
        w.busy = true;
        Ok(())
    }

    /// Runs specs (any ISA mix) to completion; replies in the specs' order.
    fn run_all(&mut self, specs: &[Spec]) -> Result<Vec<Value>> {
        let mut queue: VecDeque<usize> = (0..specs.len()).collect();
        let mut on: HashMap<usize, usize> = HashMap::new();
        let mut out: Vec<Option<Value>> = vec![None; specs.len()];
        let mut done = 0;
        while done < specs.len() {
            let mut waiting = VecDeque::new();
            while let Some(i) = queue.pop_front() {
                match self.free(&specs[i].isa) {
                    Some(w) => {
                        self.send(w, &specs[i])?;
                        on.insert(w, i);
                    }
                    None => waiting.push_back(i),
                }
            }
            queue = waiting;
            let (w, line) = self.recv()?;
            self.workers[w].busy = false;
            let i = on.remove(&w).context("a reply from an idle worker")?;
            out[i] = Some(serde_json::from_str(&line).context("worker reply is not JSON")?);
            done += 1;
        }
        Ok(out.into_iter().map(|v| v.unwrap_or(Value::Null)).collect())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// What one graph's check found.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// qparity vs PyTorch: the first mismatch or check error.
    pub ours: Option<String>,
    /// PyTorch vs PyTorch differences explained by a documented rule: rule -> elements.
    pub rules: BTreeMap<String, u64>,
    /// PyTorch vs PyTorch differences no rule explains: one line each.
    pub unexplained: Vec<String>,
    /// Runs (test inputs) checked.
    pub runs: usize,
}

/// Checks a case PyTorch returned: qparity's checker, then the flows against each other.
pub fn judge(case_json: &Value, spec: &Spec) -> Result<Verdict> {
    let text = case_json.to_string();
    let case = qparity::golden::parse_case(Path::new("diff-live-graph.json"), &text)
        .map_err(|e| anyhow::anyhow!("PyTorch's case does not parse: {e}"))?;
    let opts = qparity::check::CheckOptions {
        cpu: qparity::engine::CpuFeatures::host(),
        ..Default::default()
    };
    let r = qparity::check::check_case(&case, &opts);
    let mut v = Verdict::default();
    if let Some(e) = r.error {
        v.ours = Some(format!("check error: {e}"));
    } else if !r.passed {
        v.ours = Some(match r.first_mismatch {
            Some(m) => format!("{}: expected {}, qparity {}", m.location, m.expected, m.got),
            None => "a group mismatched".to_string(),
        });
    }
    let Body::Graph(g) = &case.body else {
        bail!(
            "PyTorch returned a {} case, not a graph",
            case.header.kind.name()
        );
    };
    v.runs = g.inputs.len();
    compare_flows(g, case.header.isa, spec, &mut v)
        .map_err(|e| anyhow::anyhow!("comparing flows: {e}"))?;
    Ok(v)
}

/// One decoded value: codes, scale, zero point, clamp range.
struct Decoded {
    codes: Vec<i64>,
    scale: f64,
    zero_point: i64,
    range: (i64, i64),
}

fn decode_flow(
    flow: Flow,
    fr: &GraphFlow,
    done: &HashMap<(Flow, usize, String), Tensor>,
) -> Result<Vec<Vec<Decoded>>, String> {
    let mut runs = Vec::new();
    for (ri, run) in fr.runs.iter().enumerate() {
        let mut vals = Vec::new();
        for node in &fr.nodes {
            let rec = run
                .values
                .get(&node.name)
                .ok_or_else(|| format!("{} run {ri} has no value of {}", flow.name(), node.name))?;
            let t = rec
                .int_repr
                .decode(|b| done.get(&(b.flow, ri, b.node.clone())).cloned())?;
            let codes = t.as_int().ok_or("codes are not integers")?.to_vec();
            vals.push(Decoded {
                codes,
                scale: rec.scale,
                zero_point: rec.zero_point,
                range: (rec.quant_min, rec.quant_max),
            });
        }
        runs.push(vals);
    }
    Ok(runs)
}

/// Ops a flow pair computes with different arithmetic (convert_fx's quantized kernels against the
/// reference flows' f32 op then quantize; the reference flows against each other only where the
/// weight is dequantized differently, R32). Pure data movement and max / relu select a code.
fn arithmetic_differs(op: &str, pair: (Flow, Flow)) -> bool {
    let selects = matches!(
        op,
        "quantize"
            | "relu"
            | "max_pool2d"
            | "flatten"
            | "movement"
            | "reshape"
            | "dropout"
            | "contiguous"
            | "transpose"
            | "chunk"
    );
    if selects {
        return false;
    }
    let fx = pair.0 == Flow::ConvertFx || pair.1 == Flow::ConvertFx;
    fx || matches!(op, "conv2d" | "linear")
}

/// Whether a conv / linear node's weight codes differ between two flows: the decomposed flow
/// clamps the weight to the observer's `quant_min..quant_max` (narrower than qint8's under
/// `reduce_range` or a custom range), the others keep qint8's range (docs/NUMERICS.md R32).
fn weights_differ(
    g: &GraphCase,
    node: &qparity::golden::graph::GraphNode,
    a: Flow,
    b: Flow,
) -> bool {
    use qparity::golden::graph::IntRepr;
    let Some(m) = node.module.as_deref() else {
        return false;
    };
    let codes = |f: Flow| match g.weight(f, m).ok().map(|w| &w.int_repr) {
        Some(IntRepr::Tensor(t)) => t.as_int().map(<[i64]>::to_vec),
        _ => None,
    };
    let decomposed = Flow::ConvertToReferenceDecomposedFx;
    (a == decomposed || b == decomposed)
        && matches!((codes(a), codes(b)), (Some(x), Some(y)) if x != y)
}

/// Whether convert_fx's kernel for a conv / linear node accumulates u8·s8 pairs in saturating
/// int16 (docs/NUMERICS.md R17: FBGEMM's AVX2 GEMM, its depthwise kernel, oneDNN without VNNI),
/// so that its codes may differ from the reference flows' by more than one.
fn saturates_pairs(
    g: &GraphCase,
    node: &qparity::golden::graph::GraphNode,
    isa: qparity::engine::CaptureIsa,
    cpu: &qparity::engine::CpuFeatures,
) -> bool {
    use qparity::engine::{conv_path, fbgemm_gemm_isa, linear_path};
    use qparity::kernels::Accumulation;
    let gemm_isa = fbgemm_gemm_isa(isa, cpu);
    let path = match node.op.as_str() {
        "linear" => linear_path(g.engine),
        "conv2d" => {
            let c = &node.attrs["conv"];
            let pair = |k: &str| -> Option<[usize; 2]> {
                let a = c[k].as_array()?;
                Some([a.first()?.as_u64()? as usize, a.get(1)?.as_u64()? as usize])
            };
            let get = |k: &str| c[k].as_u64().map(|x| x as usize);
            let (Some(ic), Some(oc), Some(groups), Some(k), Some(st), Some(pd), Some(dl)) = (
                get("in_channels"),
                get("out_channels"),
                get("groups"),
                pair("kernel_size"),
                pair("stride"),
                pair("padding"),
                pair("dilation"),
            ) else {
                return false;
            };
            let p = qparity::geometry::Conv2dParams {
                in_channels: ic,
                out_channels: oc,
                kernel_size: k,
                stride: st,
                padding: pd,
                dilation: dl,
                groups,
            };
            let symmetric = node
                .module
                .as_deref()
                .and_then(|m| g.weight(Flow::ConvertFx, m).ok())
                .and_then(|w| w.zero_points.as_int().map(|z| z.iter().all(|&z| z == 0)))
                .unwrap_or(false);
            conv_path(g.engine, &p, symmetric, cpu)
        }
        _ => return false,
    };
    path.accumulation(gemm_isa, cpu) == Accumulation::PairSaturatingI16
}

/// Compares the flows of a graph node by node (nodes matched by position where the flows' op
/// sequences agree; otherwise only the outputs are compared when every input agrees, which is
/// then the graph input). A node whose inputs agree in both flows and whose codes differ is
/// explained element by element:
/// - `R31-flow-clamp-reduce_range` / `R31-flow-clamp-quant_range`: one flow clamps to the
///   observer's `quant_min..quant_max` (the decomposed flow), the other to the dtype's 0..255,
///   and clamping the latter's code gives the former's (docs/NUMERICS.md R31);
/// - `R31-flow-arithmetic`: the flows compute the op with different arithmetic (quantized kernel
///   against f32 op and quantize, R16–R33) and differ by one code;
/// - `R17-int16-pair-saturation`: convert_fx's conv / linear kernel saturates int16 pairs
///   ([`saturates_pairs`]), any difference;
/// - `R32-decomposed-weight-clamp`: the decomposed flow's weight codes differ from the other
///   flow's ([`weights_differ`]), any difference at that node;
/// - `F5-convert_fx-shape-op-keeps-input-qparams`: convert_fx's relu / max_pool2d has its input's
///   qparams and the other flow's has others (docs/FINDINGS.md live finding 5; every element).
///
/// Any other difference, and any difference of scale or zero point, is unexplained.
fn compare_flows(
    g: &GraphCase,
    isa: qparity::engine::CaptureIsa,
    spec: &Spec,
    v: &mut Verdict,
) -> Result<(), String> {
    let cpu = qparity::engine::CpuFeatures::host();
    let mut done: HashMap<(Flow, usize, String), Tensor> = HashMap::new();
    let mut dec: BTreeMap<Flow, Vec<Vec<Decoded>>> = BTreeMap::new();
    for (&flow, fr) in &g.flows {
        let d = decode_flow(flow, fr, &done)?;
        for (ri, run) in d.iter().enumerate() {
            for (node, val) in fr.nodes.iter().zip(run) {
                done.insert(
                    (flow, ri, node.name.clone()),
                    Tensor::int(
                        qparity::tensor::DType::U8,
                        vec![val.codes.len()],
                        val.codes.clone(),
                    ),
                );
            }
        }
        dec.insert(flow, d);
    }
    let clamp_rule = if spec.qconfig.activation.reduce_range {
        "R31-flow-clamp-reduce_range"
    } else {
        "R31-flow-clamp-quant_range"
    };
    let flows: Vec<Flow> = g.flows.keys().copied().collect();
    for (a_i, &fa) in flows.iter().enumerate() {
        for &fb in &flows[a_i + 1..] {
            let (na, nb) = (&g.flows[&fa].nodes, &g.flows[&fb].nodes);
            let aligned = na.len() == nb.len() && na.iter().zip(nb).all(|(x, y)| x.op == y.op);
            if !aligned {
                v.unexplained.push(format!(
                    "{} and {} record different node sequences ({} vs {} nodes)",
                    fa.name(),
                    fb.name(),
                    na.len(),
                    nb.len()
                ));
                continue;
            }
            let index_a: HashMap<&str, usize> = na
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.as_str(), i))
                .collect();
            let index_b: HashMap<&str, usize> = nb
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.as_str(), i))
                .collect();
            for (ri, (ra, rb)) in dec[&fa].iter().zip(&dec[&fb]).enumerate() {
                let same = |i: usize| {
                    ra[i].codes == rb[i].codes
                        && ra[i].scale == rb[i].scale
                        && ra[i].zero_point == rb[i].zero_point
                };
                for (k, (x, y)) in na.iter().zip(nb).enumerate() {
                    if same(k) {
                        continue;
                    }
                    // Only where both flows read the same values.
                    let ins_a: Vec<Option<usize>> = x
                        .inputs
                        .iter()
                        .map(|n| {
                            (n != "input")
                                .then(|| index_a.get(n.as_str()).copied())
                                .flatten()
                        })
                        .collect();
                    let ins_b: Vec<Option<usize>> = y
                        .inputs
                        .iter()
                        .map(|n| {
                            (n != "input")
                                .then(|| index_b.get(n.as_str()).copied())
                                .flatten()
                        })
                        .collect();
                    if ins_a != ins_b || ins_a.iter().flatten().any(|&i| !same(i)) {
                        continue;
                    }
                    let where_ = format!(
                        "{} vs {} run {ri} node {} ({})",
                        fa.name(),
                        fb.name(),
                        x.name,
                        x.op
                    );
                    let (p, q) = (&ra[k], &rb[k]);
                    // convert_fx's quantized relu / max_pool2d keep their input's qparams; the
                    // reference flows quantize with the op's own observer, which a cat after it
                    // replaces by its shared one (docs/FINDINGS.md, live finding 5).
                    let keeps_input = fa == Flow::ConvertFx
                        && matches!(x.op.as_str(), "relu" | "max_pool2d")
                        && p.codes.len() == q.codes.len()
                        && ins_a.first().copied().flatten().is_some_and(|i| {
                            (ra[i].scale, ra[i].zero_point) == (p.scale, p.zero_point)
                        });
                    if keeps_input && (p.scale, p.zero_point) != (q.scale, q.zero_point) {
                        *v.rules
                            .entry("F5-convert_fx-shape-op-keeps-input-qparams".to_string())
                            .or_default() += p.codes.len() as u64;
                        continue;
                    }
                    if p.scale != q.scale
                        || p.zero_point != q.zero_point
                        || p.codes.len() != q.codes.len()
                    {
                        v.unexplained.push(format!(
                            "{where_}: qparams differ (scale {} / {}, zero point {} / {})",
                            p.scale, q.scale, p.zero_point, q.zero_point
                        ));
                        continue;
                    }
                    let arith = arithmetic_differs(&x.op, (fa, fb));
                    let pairs = (fa == Flow::ConvertFx || fb == Flow::ConvertFx)
                        && saturates_pairs(g, x, isa, &cpu);
                    let weights_clamped = weights_differ(g, x, fa, fb);
                    let (mut clamp, mut wclamp, mut off1, mut sat, mut other, mut worst) =
                        (0u64, 0u64, 0u64, 0u64, 0u64, 0i64);
                    for (&c, &d) in p.codes.iter().zip(&q.codes) {
                        if c == d {
                            continue;
                        }
                        // The narrower clamp range's flow is the one whose code must be the clamp.
                        let explained_by_clamp = if p.range != q.range {
                            let (wide, narrow, nr) =
                                if (q.range.1 - q.range.0) < (p.range.1 - p.range.0) {
                                    (c, d, q.range)
                                } else {
                                    (d, c, p.range)
                                };
                            wide.clamp(nr.0, nr.1) == narrow && !(nr.0..=nr.1).contains(&wide)
                        } else {
                            false
                        };
                        if explained_by_clamp {
                            clamp += 1;
                        } else if weights_clamped {
                            wclamp += 1;
                        } else if arith && (c - d).abs() <= 1 {
                            off1 += 1;
                        } else if pairs {
                            sat += 1;
                        } else {
                            other += 1;
                            worst = worst.max((c - d).abs());
                        }
                    }
                    if clamp > 0 {
                        *v.rules.entry(clamp_rule.to_string()).or_default() += clamp;
                    }
                    if off1 > 0 {
                        *v.rules
                            .entry("R31-flow-arithmetic".to_string())
                            .or_default() += off1;
                    }
                    if wclamp > 0 {
                        *v.rules
                            .entry("R32-decomposed-weight-clamp".to_string())
                            .or_default() += wclamp;
                    }
                    if sat > 0 {
                        *v.rules
                            .entry("R17-int16-pair-saturation".to_string())
                            .or_default() += sat;
                    }
                    if other > 0 {
                        v.unexplained.push(format!(
                            "{where_}: {other} elements differ beyond the documented rules (up to {worst} codes; clamp ranges {:?} / {:?})",
                            p.range, q.range
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Coverage counts of the graphs checked.
#[derive(Default)]
struct Coverage {
    ops: BTreeMap<String, u64>,
    observers: BTreeMap<String, u64>,
    qschemes: BTreeMap<String, u64>,
    reduce_range: BTreeMap<String, u64>,
    custom_range: BTreeMap<String, u64>,
    engines: BTreeMap<String, u64>,
    isas: BTreeMap<String, u64>,
    modes: BTreeMap<String, u64>,
}

impl Coverage {
    fn add(&mut self, s: &Spec) {
        for op in s.op_names() {
            *self.ops.entry(op.into()).or_default() += 1;
        }
        let (a, w) = (&s.qconfig.activation, &s.qconfig.weight);
        let inc = |m: &mut BTreeMap<String, u64>, k: String| *m.entry(k).or_default() += 1;
        inc(&mut self.observers, format!("activation:{}", a.observer));
        inc(&mut self.observers, format!("weight:{}", w.observer));
        inc(&mut self.qschemes, format!("activation:{}", a.qscheme));
        inc(&mut self.qschemes, format!("weight:{}", w.qscheme));
        let on = |b: bool| if b { "on" } else { "off" };
        inc(
            &mut self.reduce_range,
            format!("activation:{}", on(a.reduce_range)),
        );
        inc(
            &mut self.reduce_range,
            format!("weight:{}", on(w.reduce_range)),
        );
        inc(
            &mut self.custom_range,
            format!("activation:{}", on(a.quant_min.is_some())),
        );
        inc(
            &mut self.custom_range,
            format!("weight:{}", on(w.quant_min.is_some())),
        );
        inc(&mut self.engines, s.engine.clone());
        inc(&mut self.isas, s.isa.clone());
        inc(&mut self.modes, s.mode.clone());
    }

    fn json(&self) -> Value {
        json!({"ops": self.ops, "observers": self.observers, "qschemes": self.qschemes,
               "reduce_range": self.reduce_range, "custom_quant_range": self.custom_range,
               "engines": self.engines, "isa_variants": self.isas, "modes": self.modes})
    }
}

/// Which disagreement a shrink keeps.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ours,
    Unexplained,
}

/// What a disagreement is about, so that a shrink keeps the same one: a check error or a
/// mismatch, the flow(s) and the op named in the message (`node n1 (conv2d)`).
fn signature(msg: &str) -> (bool, Vec<&'static str>, String) {
    let flows = [
        "_convert_to_reference_decomposed_fx",
        "convert_to_reference_fx",
        "convert_fx",
    ];
    let mut named = Vec::new();
    let mut rest = msg.to_string();
    for f in flows {
        if rest.contains(f) {
            named.push(f);
            rest = rest.replace(f, "");
        }
    }
    let op = msg
        .split_once(" (")
        .and_then(|(_, r)| r.split_once(')'))
        .map_or(String::new(), |(op, _)| op.to_string());
    (msg.starts_with("check error"), named, op)
}

fn first_message(kind: Kind, v: &Verdict) -> Option<&str> {
    match kind {
        Kind::Ours => v.ours.as_deref(),
        Kind::Unexplained => v.unexplained.first().map(String::as_str),
    }
}

/// Whether `v` still shows the disagreement `want` (its first message's [`signature`]).
fn still(kind: Kind, want: &str, v: &Verdict) -> bool {
    first_message(kind, v).is_some_and(|m| signature(m) == signature(want))
}

/// Shrinks `spec` while it still disagrees in the same way: each round runs the candidates of
/// [`livegraph::shrink_candidates`] in batches of the pool's size and keeps the first that still
/// disagrees. Returns the smallest spec, its case and verdict, and the rounds taken.
fn shrink(
    pool: &mut Pool,
    spec: &Spec,
    case: &Value,
    kind: Kind,
    budget: Duration,
) -> Result<(Spec, Value, Verdict, usize)> {
    let start = Instant::now();
    let mut best = (spec.clone(), case.clone(), judge(case, spec)?);
    let want = first_message(kind, &best.2)
        .context("shrinking a graph that does not disagree")?
        .to_string();
    let mut rounds = 0;
    'outer: while start.elapsed() < budget {
        let cands = livegraph::shrink_candidates(&best.0, 6);
        let batch = pool.workers.len().max(1);
        for chunk in cands.chunks(batch) {
            if start.elapsed() >= budget {
                break 'outer;
            }
            let replies = pool.run_all(chunk)?;
            for (s, r) in chunk.iter().zip(replies) {
                let Some(c) = r.get("case") else { continue };
                let verdict = judge(c, s)?;
                if still(kind, &want, &verdict) {
                    best = (s.clone(), c.clone(), verdict);
                    rounds += 1;
                    continue 'outer;
                }
            }
        }
        break;
    }
    Ok((best.0, best.1, best.2, rounds))
}

/// Writes a case, its repro script and its spec under `dir`.
fn save(dir: &Path, case: &Value) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let id = case["id"].as_str().unwrap_or("case").to_string();
    let cp = dir.join(format!("{id}.json"));
    let text = serde_json::to_string(case)?;
    std::fs::write(&cp, &text).with_context(|| format!("writing {}", cp.display()))?;
    let parsed = qparity::golden::parse_case(&cp, &text)?;
    // A case qparity cannot take apart has no repro script; the report says why.
    match qparity::repro::script_for(&parsed, &text) {
        Ok(script) => std::fs::write(dir.join(format!("{id}.py")), script)?,
        Err(e) => std::fs::write(dir.join(format!("{id}.no-repro.txt")), format!("{e}\n"))?,
    }
    Ok(cp.display().to_string())
}

fn add_timings(total: &mut BTreeMap<String, f64>, t: &Value) {
    if let Some(o) = t.as_object() {
        for (k, v) in o {
            *total.entry(k.clone()).or_default() += v.as_f64().unwrap_or(0.0);
        }
    }
}

/// Runs `diff-live --graphs` and prints its report.
pub fn run(root: &Path, o: Opts) -> Result<()> {
    if o.shard.1 == 0 || o.shard.0 >= o.shard.1 {
        bail!(
            "--shard I/N needs 0 ≤ I < N, got {}/{}",
            o.shard.0,
            o.shard.1
        );
    }
    if o.count.is_none() && o.seconds.is_none() {
        bail!("give --count N or --seconds S");
    }
    if o.count == Some(0) || o.seconds.is_some_and(|s| s.is_nan() || s <= 0.0) {
        bail!("--count and --seconds must be positive");
    }
    if o.workers == 0 || o.max_ops == 0 {
        bail!("--workers and --max-ops must be at least 1");
    }
    let isas: Vec<&str> = o.isas.iter().map(String::as_str).collect();
    let mut pool = Pool::start(root, o.workers, &o.isas)?;
    let started = Instant::now();
    let deadline = o.seconds.map(Duration::from_secs_f64);
    let wanted = o.count.unwrap_or(usize::MAX);

    let mut next_k: u64 = 0;
    let mut pending: VecDeque<Spec> = VecDeque::new();
    let mut on: HashMap<usize, Spec> = HashMap::new();
    let mut graphs = 0u64;
    let mut runs = 0u64;
    let mut rejected = 0u64;
    let mut rejected_why: BTreeMap<String, u64> = BTreeMap::new();
    let mut spec_errors: Vec<String> = Vec::new();
    let mut cov = Coverage::default();
    let mut timings: BTreeMap<String, f64> = BTreeMap::new();
    let mut check_secs = 0.0;
    let mut rule_cases: BTreeMap<String, u64> = BTreeMap::new();
    let mut rule_elems: BTreeMap<String, u64> = BTreeMap::new();
    let mut rule_examples: BTreeMap<String, String> = BTreeMap::new();
    // Each with the run time (s) at which it was found.
    let mut ours: Vec<(Spec, Value, Verdict, f64)> = Vec::new();
    let mut unexplained: Vec<(Spec, Value, Verdict, f64)> = Vec::new();
    let bar = if o.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    loop {
        let time_up = deadline.is_some_and(|d| started.elapsed() >= d);
        // Dispatch to every free worker. With --count exactly the first `count` graph indices
        // of the shard run (a spec waits for a worker of its ISA variant; later ones may pass it).
        if !time_up {
            loop {
                let mut more = (next_k as usize) < wanted;
                if more && pending.len() < 4 * pool.workers.len() {
                    let index = o.shard.0 + next_k * o.shard.1;
                    next_k += 1;
                    pending.push_back(livegraph::generate(o.seed, index, o.max_ops, &isas));
                    more = (next_k as usize) < wanted;
                }
                let pos = pending.iter().position(|s| pool.free(&s.isa).is_some());
                match pos {
                    Some(p) => {
                        let s = pending.remove(p).context("queue")?;
                        let w = pool.free(&s.isa).context("free worker")?;
                        pool.send(w, &s)?;
                        on.insert(w, s);
                    }
                    None if more && pending.len() < 4 * pool.workers.len() => continue,
                    None => break,
                }
            }
        }
        if on.is_empty() {
            break;
        }
        let (w, line) = pool.recv()?;
        pool.workers[w].busy = false;
        let spec = on.remove(&w).context("a reply from an idle worker")?;
        let reply: Value = serde_json::from_str(&line).context("worker reply is not JSON")?;
        add_timings(&mut timings, &reply["timings"]);
        if let Some(e) = reply.get("error") {
            spec_errors.push(format!("{}: {}", spec.id, e));
            continue;
        }
        if let Some(r) = reply.get("rejected").and_then(Value::as_str) {
            rejected += 1;
            let key: String = r.chars().take(90).collect();
            *rejected_why.entry(key).or_default() += 1;
            continue;
        }
        let case = reply.get("case").context("worker reply without a case")?;
        let t = Instant::now();
        let v = judge(case, &spec).with_context(|| format!("graph {}", spec.id))?;
        check_secs += t.elapsed().as_secs_f64();
        graphs += 1;
        runs += v.runs as u64;
        cov.add(&spec);
        for (rule, n) in &v.rules {
            *rule_cases.entry(rule.clone()).or_default() += 1;
            *rule_elems.entry(rule.clone()).or_default() += n;
            if !rule_examples.contains_key(rule) {
                let p = save(&o.out.join("rules").join(rule), case)?;
                rule_examples.insert(rule.clone(), p);
            }
        }
        let at = started.elapsed().as_secs_f64();
        if v.ours.is_some() {
            ours.push((spec.clone(), case.clone(), v.clone(), at));
        }
        if !v.unexplained.is_empty() {
            unexplained.push((spec, case.clone(), v, at));
        }
        bar.set_message(format!(
            "{graphs} graphs, {} ours, {} unexplained",
            ours.len(),
            unexplained.len()
        ));
        bar.tick();
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Save and shrink the disagreements (a few of each kind; the rest are listed).
    let budget = Duration::from_secs_f64(o.shrink_seconds);
    let mut report_kind = |items: &[(Spec, Value, Verdict, f64)],
                           kind: Kind,
                           dir: &str|
     -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for (i, (spec, case, v, at)) in items.iter().enumerate() {
            let path = save(&o.out.join(dir), case)?;
            let mut entry = json!({"id": spec.id, "ops": spec.op_names(), "engine": spec.engine,
                "isa": spec.isa, "mode": spec.mode, "saved": path, "found_after_seconds": at,
                "what": match kind { Kind::Ours => json!(v.ours), Kind::Unexplained => json!(v.unexplained) }});
            if i < 3 && o.shrink_seconds > 0.0 {
                let t = Instant::now();
                let (s, c, sv, rounds) = shrink(&mut pool, spec, case, kind, budget)?;
                let mut c = c;
                c["id"] = json!(format!("{}-shrunk", spec.id));
                let p = save(&o.out.join(dir), &c)?;
                entry["shrunk"] = json!({"ops": s.op_names(), "nodes": s.nodes.len(), "input": s.input,
                    "rounds": rounds, "seconds": t.elapsed().as_secs_f64(), "saved": p, "spec": s,
                    "what": match kind { Kind::Ours => json!(sv.ours), Kind::Unexplained => json!(sv.unexplained) }});
            }
            out.push(entry);
        }
        Ok(out)
    };
    let ours_r = report_kind(&ours, Kind::Ours, "qparity")?;
    let unexplained_r = report_kind(&unexplained, Kind::Unexplained, "pytorch")?;
    let report = json!({
        "mode": "graphs", "seed": o.seed, "shard": format!("{}/{}", o.shard.0, o.shard.1),
        "torch": pool.torch, "workers": pool.workers.len(), "isa_variants": o.isas,
        "seconds": elapsed, "graphs": graphs, "graphs_per_sec": graphs as f64 / elapsed,
        "runs": runs, "runs_per_sec": runs as f64 / elapsed,
        "rejected": rejected, "rejected_reasons": rejected_why, "spec_errors": spec_errors,
        "coverage": cov.json(),
        "profile": {"pytorch_seconds": timings, "qparity_check_seconds": check_secs},
        "qparity_vs_pytorch": ours_r,
        "pytorch_vs_pytorch": {"rules": rule_cases.iter().map(|(k, n)| (k.clone(), json!({"graphs": n, "elements": rule_elems[k], "example": rule_examples[k]}))).collect::<BTreeMap<_, _>>(),
                               "unexplained": unexplained_r},
    });
    std::fs::create_dir_all(&o.out)?;
    let rp = o.out.join(format!(
        "report-{}-{}of{}.json",
        o.seed, o.shard.0, o.shard.1
    ));
    std::fs::write(&rp, serde_json::to_string_pretty(&report)?)?;
    if o.json {
        println!("{report}");
    } else {
        print_summary(&report);
        println!("  report: {}", rp.display());
    }
    Ok(())
}

fn print_summary(r: &Value) {
    println!(
        "{} graphs in {:.1}s ({:.2} graphs/s, {:.2} runs/s), {} rejected by PyTorch, torch {}, {} workers",
        r["graphs"],
        r["seconds"].as_f64().unwrap_or(0.0),
        r["graphs_per_sec"].as_f64().unwrap_or(0.0),
        r["runs_per_sec"].as_f64().unwrap_or(0.0),
        r["rejected"],
        r["torch"].as_str().unwrap_or("?"),
        r["workers"]
    );
    println!(
        "  qparity vs PyTorch: {} disagreements",
        r["qparity_vs_pytorch"].as_array().map_or(0, Vec::len)
    );
    if let Some(rules) = r["pytorch_vs_pytorch"]["rules"].as_object() {
        for (k, v) in rules {
            println!(
                "  PyTorch flows differ by rule {k}: {} graphs, {} elements",
                v["graphs"], v["elements"]
            );
        }
    }
    println!(
        "  PyTorch vs PyTorch, unexplained: {}",
        r["pytorch_vs_pytorch"]["unexplained"]
            .as_array()
            .map_or(0, Vec::len)
    );
}

/// Merges shard reports: counts add up; graphs/s is over the longest shard (shards run in
/// parallel) and over the summed seconds (one machine running them in turn).
pub fn merge(paths: &[PathBuf], json_out: bool) -> Result<()> {
    if paths.is_empty() {
        bail!("--merge needs report files");
    }
    let mut reports = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
        if v["mode"] != "graphs" {
            bail!("{} is not a diff-live --graphs report", p.display());
        }
        reports.push(v);
    }
    let seeds: std::collections::BTreeSet<String> =
        reports.iter().map(|r| r["seed"].to_string()).collect();
    let shards: Vec<String> = reports
        .iter()
        .map(|r| r["shard"].as_str().unwrap_or("?").to_string())
        .collect();
    let dup = {
        let mut s = shards.clone();
        s.sort();
        s.dedup();
        s.len() != shards.len() && seeds.len() == 1
    };
    if dup {
        bail!("the same shard of one seed appears twice: {shards:?}");
    }
    let sum = |k: &str| {
        reports
            .iter()
            .map(|r| r[k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let max_secs = reports
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let mut coverage = Value::Null;
    let mut profile = Value::Null;
    let mut rejected_reasons = Value::Null;
    let mut ours = Value::Array(vec![]);
    let mut pvp = Value::Null;
    let mut spec_errors = Value::Array(vec![]);
    for r in &reports {
        add_values(&mut coverage, &r["coverage"]);
        add_values(&mut profile, &r["profile"]);
        add_values(&mut rejected_reasons, &r["rejected_reasons"]);
        add_values(&mut ours, &r["qparity_vs_pytorch"]);
        add_values(&mut spec_errors, &r["spec_errors"]);
        add_values(&mut pvp, &r["pytorch_vs_pytorch"]);
    }
    let graphs = sum("graphs");
    let merged = json!({
        "mode": "graphs", "merged": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "seeds": seeds, "shards": shards, "graphs": graphs as u64, "runs": sum("runs") as u64,
        "seconds_sum": sum("seconds"), "seconds_max": max_secs,
        "graphs_per_sec_parallel": if max_secs > 0.0 { graphs / max_secs } else { 0.0 },
        "graphs_per_sec_serial": if sum("seconds") > 0.0 { graphs / sum("seconds") } else { 0.0 },
        "rejected": sum("rejected") as u64, "rejected_reasons": rejected_reasons, "spec_errors": spec_errors,
        "coverage": coverage, "profile": profile,
        "qparity_vs_pytorch": ours, "pytorch_vs_pytorch": pvp,
    });
    if json_out {
        println!("{merged}");
    } else {
        println!("{}", serde_json::to_string_pretty(&merged)?);
    }
    Ok(())
}

/// Adds `v` into `acc`: numbers add, objects merge key by key, arrays concatenate; other values
/// (example paths) keep the first.
fn add_values(acc: &mut Value, v: &Value) {
    if acc.is_null() {
        *acc = v.clone();
        return;
    }
    match (acc, v) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, x) in b {
                add_values(a.entry(k.clone()).or_insert(Value::Null), x);
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (acc, Value::Number(b)) if acc.is_number() => {
            let (x, y) = (acc.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            *acc = match (acc.as_u64(), b.as_u64()) {
                (Some(i), Some(j)) => json!(i + j),
                _ => json!(x + y),
            };
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_keeps_the_same_kind_of_disagreement() {
        let a =
            "convert_fx run 0, node n1 (conv2d) int_repr, element 231: expected 225, qparity 226";
        let b = "convert_fx run 1, node n0 (conv2d) int_repr, element 3: expected 2, qparity 3";
        let c = "check error: diff-live-graph.json: flows.convert_fx.runs[0].values.cat.int_repr: shape";
        let d = "convert_to_reference_fx run 0, node n1 (conv2d) float op pre_quant, element 1";
        assert_eq!(signature(a), signature(b));
        assert_ne!(signature(a), signature(c));
        assert_ne!(signature(a), signature(d));
        let v = Verdict {
            ours: Some(b.into()),
            ..Default::default()
        };
        assert!(still(Kind::Ours, a, &v));
        assert!(!still(Kind::Unexplained, a, &v));
    }

    /// A graph diff-live reported as new (seed 100, graph 5423, shrunk): convert_fx's relu
    /// keeps its input's qparams, the reference flows take the cat's shared observer's; now
    /// documented (docs/FINDINGS.md live finding 5) and filed under its rule.
    #[test]
    fn documented_flow_differences_are_filed_under_their_rule() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/difflive/pytorch-relu-cat-qparams.json");
        let case: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let spec: Spec = serde_json::from_value(case["spec"].clone()).unwrap();
        let v = judge(&case, &spec).unwrap();
        assert!(v.ours.is_none(), "{:?}", v.ours);
        assert!(v.unexplained.is_empty(), "{:?}", v.unexplained);
        assert_eq!(
            v.rules.keys().map(String::as_str).collect::<Vec<_>>(),
            ["F5-convert_fx-shape-op-keeps-input-qparams"]
        );
    }

    #[test]
    fn shard_reports_add_up() {
        let mut acc = Value::Null;
        add_values(
            &mut acc,
            &json!({"ops": {"conv2d": 2}, "list": [1], "example": "a"}),
        );
        add_values(
            &mut acc,
            &json!({"ops": {"conv2d": 3, "cat": 1}, "list": [2], "example": "b"}),
        );
        assert_eq!(
            acc,
            json!({"ops": {"conv2d": 5, "cat": 1}, "list": [1, 2], "example": "a"})
        );
    }
}
