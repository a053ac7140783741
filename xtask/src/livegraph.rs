//! Random quantized graph specs for `cargo xtask diff-live --graphs`: valid DAGs over the ops the
//! graph checker supports, random qconfigs, engines, PTQ / QAT and calibration / test data; and
//! the shrinking steps that make a disagreeing spec smaller.
//!
//! A spec is a list of nodes over values: value 0 is the graph input (N, C, H, W), node `i`
//! produces value `i + 1`, and the model returns the last node's value. Every node is used (dead
//! nodes are removed). `xtask/capture/livegraph.py` builds the float model, its qconfig mapping
//! and its data from the spec, deterministically in `seed`.

use qparity::gen::SplitMix64 as Rng;
use serde::{Deserialize, Serialize};

/// One op of a spec, with its parameters (`in_channels` / `in_features` follow the input's shape:
/// [`Spec::normalize`] sets them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        groups: usize,
        bias: bool,
        /// Multiplies the He-uniform weight bound.
        wscale: f64,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
        wscale: f64,
    },
    Relu,
    Hardswish,
    MaxPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AdaptiveAvgPool2d {
        output: [usize; 2],
    },
    Flatten,
    Add,
    AddRelu,
    Mul,
    Cat,
}

impl Op {
    /// The op's name in the spec (and in coverage counts).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::Linear { .. } => "linear",
            Op::Relu => "relu",
            Op::Hardswish => "hardswish",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
            Op::Flatten => "flatten",
            Op::Add => "add",
            Op::AddRelu => "add_relu",
            Op::Mul => "mul",
            Op::Cat => "cat",
        }
    }
}

/// A node: its op and the values it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    #[serde(flatten)]
    pub op: Op,
    #[serde(rename = "in")]
    pub inputs: Vec<usize>,
}

/// An observer of the qconfig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObsSpec {
    pub observer: String,
    pub dtype: String,
    pub qscheme: String,
    pub reduce_range: bool,
    pub quant_min: Option<i64>,
    pub quant_max: Option<i64>,
}

/// The global qconfig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConfigSpec {
    pub activation: ObsSpec,
    pub weight: ObsSpec,
}

/// Calibration data: `batches` normal(mean, std) batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calib {
    pub batches: usize,
    pub std: f64,
    pub mean: f64,
}

/// A graph spec (the request of `xtask/difflive/graph_worker.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub id: String,
    pub seed: u64,
    pub engine: String,
    pub mode: String,
    /// `default`, or `avx2` (FBGEMM forced to its AVX2 kernels; fbgemm / x86 only).
    pub isa: String,
    pub input: [usize; 4],
    pub nodes: Vec<Node>,
    pub qconfig: QConfigSpec,
    pub calib: Calib,
    /// Test input `i`: a fresh batch with its deviation from the mean times `tests[i]`.
    pub tests: Vec<f64>,
}

/// A value's shape.
pub type Shape = Vec<usize>;

fn pool_out(h: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    if k == 0 || s == 0 || 2 * p > k || h + 2 * p < k {
        return None;
    }
    Some((h + 2 * p - k) / s + 1)
}

/// The output shape of `op` on `ins`, or why the op does not apply.
fn out_shape(op: &Op, ins: &[&Shape]) -> Result<Shape, String> {
    let one = |rank: usize| -> Result<&Shape, String> {
        match ins {
            [s] if s.len() == rank => Ok(s),
            _ => Err(format!(
                "{} takes one rank-{rank} input, got {ins:?}",
                op.name()
            )),
        }
    };
    match op {
        Op::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            ..
        } => {
            let s = one(4)?;
            if *groups == 0
                || s[1] != *in_channels
                || in_channels % groups != 0
                || out_channels % groups != 0
                || *out_channels == 0
            {
                return Err(format!(
                    "conv2d {in_channels}->{out_channels} groups {groups} on {s:?}"
                ));
            }
            let oh = pool_out(s[2] + 2 * padding[0], kernel[0], stride[0], 0);
            let ow = pool_out(s[3] + 2 * padding[1], kernel[1], stride[1], 0);
            match (oh, ow) {
                (Some(h), Some(w)) => Ok(vec![s[0], *out_channels, h, w]),
                _ => Err(format!("conv2d kernel {kernel:?} does not fit {s:?}")),
            }
        }
        Op::Linear {
            in_features,
            out_features,
            ..
        } => {
            let s = one(2)?;
            if s[1] != *in_features || *out_features == 0 {
                return Err(format!("linear {in_features}->{out_features} on {s:?}"));
            }
            Ok(vec![s[0], *out_features])
        }
        Op::Relu | Op::Hardswish => match ins {
            [s] => Ok((*s).clone()),
            _ => Err(format!("{} takes one input", op.name())),
        },
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
        }
        | Op::AvgPool2d {
            kernel,
            stride,
            padding,
        } => {
            let s = one(4)?;
            match (
                pool_out(s[2], *kernel, *stride, *padding),
                pool_out(s[3], *kernel, *stride, *padding),
            ) {
                (Some(h), Some(w)) => Ok(vec![s[0], s[1], h, w]),
                _ => Err(format!("{} k{kernel} p{padding} on {s:?}", op.name())),
            }
        }
        Op::AdaptiveAvgPool2d { output } => {
            let s = one(4)?;
            if output[0] == 0 || output[1] == 0 || output[0] > s[2] || output[1] > s[3] {
                return Err(format!("adaptive_avg_pool2d {output:?} on {s:?}"));
            }
            Ok(vec![s[0], s[1], output[0], output[1]])
        }
        Op::Flatten => {
            let s = one(4)?;
            Ok(vec![s[0], s[1] * s[2] * s[3]])
        }
        Op::Add | Op::AddRelu | Op::Mul => match ins {
            [a, b] if a == b => Ok((*a).clone()),
            _ => Err(format!(
                "{} needs two inputs of one shape: {ins:?}",
                op.name()
            )),
        },
        Op::Cat => {
            let first = ins.first().ok_or("cat of nothing")?;
            if ins.len() < 2
                || ins.iter().any(|s| {
                    s.len() != first.len()
                        || s.iter()
                            .zip(first.iter())
                            .enumerate()
                            .any(|(d, (a, b))| d != 1 && a != b)
                })
            {
                return Err(format!("cat along dim 1 of {ins:?}"));
            }
            let mut s = (*first).clone();
            s[1] = ins.iter().map(|s| s[1]).sum();
            Ok(s)
        }
    }
}

impl Spec {
    /// Sets every conv's `in_channels` and linear's `in_features` from its input's shape, drops
    /// nodes the output does not read, and returns every value's shape; an error where an op does
    /// not apply to its inputs (the spec is then invalid).
    pub fn normalize(&mut self) -> Result<Vec<Shape>, String> {
        if self.nodes.is_empty() {
            return Err("no nodes".into());
        }
        if self.input.contains(&0) || self.tests.is_empty() || self.calib.batches == 0 {
            return Err("empty input, tests or calibration".into());
        }
        self.prune();
        let mut shapes: Vec<Shape> = vec![self.input.to_vec()];
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.inputs.is_empty() || node.inputs.iter().any(|&j| j > i) {
                return Err(format!("node {i} reads {:?}", node.inputs));
            }
            let first = &shapes[node.inputs[0]];
            match &mut node.op {
                Op::Conv2d { in_channels, .. } if first.len() == 4 => *in_channels = first[1],
                Op::Linear { in_features, .. } if first.len() == 2 => *in_features = first[1],
                _ => {}
            }
            let mut seen = node.inputs.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != node.inputs.len() {
                // graphs.record_flow names each quantized input once: `cat([a, a])` or
                // `mul(a, a)` would be recorded with one input.
                return Err(format!("node {i} reads one value twice"));
            }
            if node.op == Op::Flatten && node.inputs[0] == 0 {
                // FX runs it in float, before the input's quantize node: no quantized node.
                return Err(format!("node {i}: flatten of the graph input"));
            }
            let ins: Vec<&Shape> = node.inputs.iter().map(|&j| &shapes[j]).collect();
            let s = out_shape(&node.op, &ins).map_err(|e| format!("node {i}: {e}"))?;
            if s.iter().product::<usize>() > 1 << 16 {
                return Err(format!("node {i}: value of shape {s:?} is too large"));
            }
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// Removes the nodes the last node does not depend on, renumbering the rest.
    fn prune(&mut self) {
        let n = self.nodes.len();
        let mut live = vec![false; n + 1];
        live[n] = true;
        for i in (0..n).rev() {
            if live[i + 1] {
                for &j in &self.nodes[i].inputs {
                    if j <= i {
                        live[j] = true;
                    }
                }
            }
        }
        let mut map = vec![0usize; n + 1];
        let mut next = 1;
        for v in 1..=n {
            if live[v] {
                map[v] = next;
                next += 1;
            }
        }
        let nodes = std::mem::take(&mut self.nodes);
        self.nodes = nodes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| live[i + 1])
            .map(|(_, mut node)| {
                for j in &mut node.inputs {
                    *j = map.get(*j).copied().unwrap_or(*j);
                }
                node
            })
            .collect();
    }

    /// How many nodes of each op.
    pub fn op_names(&self) -> Vec<&'static str> {
        self.nodes.iter().map(|n| n.op.name()).collect()
    }
}

const ENGINES: [&str; 4] = ["fbgemm", "x86", "qnnpack", "onednn"];

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.int(0, xs.len() as i64 - 1) as usize]
}

fn chance(rng: &mut Rng, p: f32) -> bool {
    rng.f32(0.0, 1.0) < p
}

fn conv(rng: &mut Rng, c: usize, out: usize, same: bool) -> Op {
    let k = if same {
        *pick(rng, &[1usize, 3, 3, 5])
    } else {
        rng.int(1, 3) as usize
    };
    let (stride, padding) = if same {
        (1, k / 2)
    } else {
        (rng.int(1, 2) as usize, rng.int(0, (k / 2) as i64) as usize)
    };
    let groups = if out.is_multiple_of(c) && chance(rng, 0.25) {
        c
    } else {
        1
    };
    Op::Conv2d {
        in_channels: c,
        out_channels: out,
        kernel: [k, k],
        stride: [stride, stride],
        padding: [padding, padding],
        groups,
        bias: chance(rng, 0.8),
        wscale: if chance(rng, 0.2) {
            rng.f32(2.0, 8.0) as f64
        } else {
            1.0
        },
    }
}

fn linear(rng: &mut Rng, f: usize, out: usize) -> Op {
    Op::Linear {
        in_features: f,
        out_features: out,
        bias: chance(rng, 0.8),
        wscale: if chance(rng, 0.2) {
            rng.f32(2.0, 8.0) as f64
        } else {
            1.0
        },
    }
}

/// A shape-preserving branch op on a value of `shape` (for residuals, products and concats).
fn same_shape_op(rng: &mut Rng, shape: &Shape, keep_channels: bool) -> Op {
    if shape.len() == 2 {
        let out = if keep_channels {
            shape[1]
        } else {
            rng.int(1, 8) as usize
        };
        return match rng.int(0, 3) {
            0 if keep_channels => Op::Relu,
            1 if keep_channels => Op::Hardswish,
            _ => linear(rng, shape[1], out),
        };
    }
    match rng.int(0, 5) {
        0 if keep_channels => Op::Relu,
        1 if keep_channels => Op::Hardswish,
        2 if keep_channels => Op::MaxPool2d {
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        3 if keep_channels => Op::AvgPool2d {
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        _ => {
            let out = if keep_channels {
                shape[1]
            } else {
                rng.int(1, 8) as usize
            };
            conv(rng, shape[1], out, true)
        }
    }
}

/// Draws the spec of graph `index` of a run with seed `seed`.
pub fn generate(seed: u64, index: u64, max_ops: usize, isas: &[&str]) -> Spec {
    let case_seed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03))
        ^ 0x11fe_9a9b;
    let mut rng = Rng::new(case_seed);
    for _ in 0..16 {
        let mut spec = draw(&mut rng, seed, index, max_ops, isas);
        if spec.normalize().is_ok() {
            return spec;
        }
    }
    // The drawing keeps shapes valid by construction; a single conv always is.
    let mut spec = draw(&mut rng, seed, index, 1, isas);
    spec.nodes = vec![Node {
        op: conv(&mut rng, spec.input[1], 2, true),
        inputs: vec![0],
    }];
    spec
}

fn draw(rng: &mut Rng, seed: u64, index: u64, max_ops: usize, isas: &[&str]) -> Spec {
    let engine = pick(rng, &ENGINES).to_string();
    let fbgemm_like = engine == "fbgemm" || engine == "x86";
    let isa = if fbgemm_like {
        pick(rng, isas).to_string()
    } else {
        "default".to_string()
    };
    let mode = if chance(rng, 0.3) { "qat" } else { "ptq" }.to_string();
    let input = [
        rng.int(1, 2) as usize,
        rng.int(1, 6) as usize,
        rng.int(3, 10) as usize,
        rng.int(3, 10) as usize,
    ];
    let target = rng.int(1, max_ops.max(1) as i64) as usize;
    let mut nodes: Vec<Node> = Vec::new();
    let mut shapes: Vec<Shape> = vec![input.to_vec()];
    let push = |nodes: &mut Vec<Node>, shapes: &mut Vec<Shape>, op: Op, inputs: Vec<usize>| {
        let ins: Vec<&Shape> = inputs.iter().map(|&j| &shapes[j]).collect();
        if let Ok(s) = out_shape(&op, &ins) {
            if s.iter().product::<usize>() <= 1 << 14 {
                nodes.push(Node { op, inputs });
                shapes.push(s);
                return Some(shapes.len() - 1);
            }
        }
        None
    };
    let mut attempts = 0;
    while nodes.len() < target && attempts < 64 {
        attempts += 1;
        // The input value: mostly the newest one, sometimes an earlier one (a branch).
        let v = if chance(rng, 0.6) {
            shapes.len() - 1
        } else {
            rng.int(0, shapes.len() as i64 - 1) as usize
        };
        let s = shapes[v].clone();
        let r = rng.int(0, 99);
        if s.len() == 4 {
            match r {
                0..=24 => {
                    let out = rng.int(1, 8) as usize;
                    let same = chance(rng, 0.5);
                    let op = conv(rng, s[1], out, same);
                    push(&mut nodes, &mut shapes, op, vec![v]);
                }
                25..=31 => {
                    push(&mut nodes, &mut shapes, Op::Relu, vec![v]);
                }
                32..=36 => {
                    push(&mut nodes, &mut shapes, Op::Hardswish, vec![v]);
                }
                37..=43 => {
                    let kernel = rng.int(2, 3) as usize;
                    let (stride, padding) = (rng.int(1, 2) as usize, rng.int(0, 1) as usize);
                    let op = if chance(rng, 0.5) {
                        Op::MaxPool2d {
                            kernel,
                            stride,
                            padding,
                        }
                    } else {
                        Op::AvgPool2d {
                            kernel,
                            stride,
                            padding,
                        }
                    };
                    push(&mut nodes, &mut shapes, op, vec![v]);
                }
                44..=48 => {
                    let output = [
                        rng.int(1, s[2] as i64) as usize,
                        rng.int(1, s[3] as i64) as usize,
                    ];
                    push(
                        &mut nodes,
                        &mut shapes,
                        Op::AdaptiveAvgPool2d { output },
                        vec![v],
                    );
                }
                49..=55 => {
                    if let Some(f) = push(&mut nodes, &mut shapes, Op::Flatten, vec![v]) {
                        let out = rng.int(1, 10) as usize;
                        let op = linear(rng, shapes[f][1], out);
                        push(&mut nodes, &mut shapes, op, vec![f]);
                    }
                }
                56..=79 => {
                    // A residual (or product) block: v -> branch -> add / add_relu / mul (v, branch).
                    let op = same_shape_op(rng, &s, true);
                    if let Some(b) = push(&mut nodes, &mut shapes, op, vec![v]) {
                        let join = pick(rng, &[Op::Add, Op::AddRelu, Op::AddRelu, Op::Mul]).clone();
                        let ins = if chance(rng, 0.5) {
                            vec![v, b]
                        } else {
                            vec![b, v]
                        };
                        push(&mut nodes, &mut shapes, join, ins);
                    }
                }
                _ => {
                    // A concat of branches (and sometimes the value itself), qparams differing.
                    let k = rng.int(2, 3) as usize;
                    let mut ins = Vec::new();
                    if chance(rng, 0.4) {
                        ins.push(v);
                    }
                    while ins.len() < k {
                        let op = same_shape_op(rng, &s, false);
                        match push(&mut nodes, &mut shapes, op, vec![v]) {
                            Some(b) => ins.push(b),
                            None => break,
                        }
                    }
                    if ins.len() >= 2 {
                        push(&mut nodes, &mut shapes, Op::Cat, ins);
                    }
                }
            }
        } else {
            match r {
                0..=39 => {
                    let out = rng.int(1, 10) as usize;
                    let op = linear(rng, s[1], out);
                    push(&mut nodes, &mut shapes, op, vec![v]);
                }
                40..=54 => {
                    let op = if chance(rng, 0.5) {
                        Op::Relu
                    } else {
                        Op::Hardswish
                    };
                    push(&mut nodes, &mut shapes, op, vec![v]);
                }
                55..=79 => {
                    let op = same_shape_op(rng, &s, true);
                    if let Some(b) = push(&mut nodes, &mut shapes, op, vec![v]) {
                        let join = pick(rng, &[Op::Add, Op::AddRelu, Op::Mul]).clone();
                        push(&mut nodes, &mut shapes, join, vec![v, b]);
                    }
                }
                _ => {
                    let op = same_shape_op(rng, &s, false);
                    if let Some(b) = push(&mut nodes, &mut shapes, op, vec![v]) {
                        push(&mut nodes, &mut shapes, Op::Cat, vec![b, v]);
                    }
                }
            }
        }
    }
    if nodes.is_empty() {
        let op = conv(rng, input[1], 2, true);
        nodes.push(Node {
            op,
            inputs: vec![0],
        });
    }
    let qat = mode == "qat";
    let qconfig = QConfigSpec {
        activation: activation_obs(rng, qat),
        weight: weight_obs(rng, &engine),
    };
    Spec {
        id: format!("livegraph-{seed}-{index:06}"),
        seed: rng.next_u64() >> 12,
        engine,
        mode,
        isa,
        input,
        nodes,
        qconfig,
        calib: Calib {
            batches: rng.int(1, 3) as usize,
            std: rng.f32(0.3, 3.0) as f64,
            mean: if chance(rng, 0.5) {
                0.0
            } else {
                rng.f32(-1.0, 1.0) as f64
            },
        },
        tests: (0..rng.int(1, 3))
            .map(|_| match rng.int(0, 2) {
                0 => rng.f32(0.2, 1.0) as f64,
                _ => rng.f32(1.2, 6.0) as f64,
            })
            .collect(),
    }
}

fn activation_obs(rng: &mut Rng, qat: bool) -> ObsSpec {
    // HistogramObserver only for PTQ: a fake-quant step would run its parameter search at every
    // training-mode forward.
    let observers: &[&str] = if qat {
        &["MinMaxObserver", "MovingAverageMinMaxObserver"]
    } else {
        &[
            "MinMaxObserver",
            "MovingAverageMinMaxObserver",
            "HistogramObserver",
        ]
    };
    let (quant_min, quant_max) = if chance(rng, 0.25) {
        (Some(0), Some(*pick(rng, &[15i64, 63, 127, 200, 255])))
    } else {
        (None, None)
    };
    let observer = *pick(rng, observers);
    let qscheme = *pick(
        rng,
        &[
            "per_tensor_affine",
            "per_tensor_affine",
            "per_tensor_symmetric",
        ],
    );
    // quint8 observers refuse reduce_range with a symmetric qscheme ("Cannot reduce range for
    // symmetric quantization for quint8"), except HistogramObserver, which takes it.
    let reduce_range =
        chance(rng, 0.5) && (qscheme == "per_tensor_affine" || observer == "HistogramObserver");
    ObsSpec {
        observer: observer.to_string(),
        dtype: "quint8".into(),
        qscheme: qscheme.to_string(),
        reduce_range,
        quant_min,
        quant_max,
    }
}

fn weight_obs(rng: &mut Rng, engine: &str) -> ObsSpec {
    let per_channel = chance(rng, 0.6);
    let observer = if per_channel {
        pick(
            rng,
            &[
                "PerChannelMinMaxObserver",
                "MovingAveragePerChannelMinMaxObserver",
            ],
        )
    } else {
        pick(rng, &["MinMaxObserver", "MovingAverageMinMaxObserver"])
    };
    // oneDNN packs only symmetric weights.
    let qscheme = match (per_channel, engine == "onednn" || chance(rng, 0.7)) {
        (true, true) => "per_channel_symmetric",
        (true, false) => "per_channel_affine",
        (false, true) => "per_tensor_symmetric",
        (false, false) => "per_tensor_affine",
    };
    let (quant_min, quant_max) = if chance(rng, 0.2) {
        let (a, b) = *pick(rng, &[(-127i64, 127i64), (-64, 63), (-8, 7)]);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    ObsSpec {
        observer: observer.to_string(),
        dtype: "qint8".into(),
        qscheme: qscheme.into(),
        reduce_range: chance(rng, 0.15),
        quant_min,
        quant_max,
    }
}

/// Smaller variants of a spec, most aggressive first: without one node (its readers read its
/// first input instead), with smaller shapes and channel counts, a simpler qconfig, PTQ, fewer
/// calibration batches and test inputs. Every variant is valid ([`Spec::normalize`] succeeded).
///
/// A graph with fewer nodes also comes with `reseeds` other data seeds (weights, calibration and
/// test inputs) after it: a disagreement that needs particular values (a rounding tie) rarely
/// survives the removal of a node that fed those values, and the data is not part of a case's
/// size.
pub fn shrink_candidates(spec: &Spec, reseeds: u64) -> Vec<Spec> {
    let mut out = structural_candidates(spec);
    let fewer: Vec<Spec> = out
        .iter()
        .filter(|c| c.nodes.len() < spec.nodes.len())
        .cloned()
        .collect();
    for k in 1..=reseeds {
        for c in &fewer {
            let mut r = c.clone();
            r.seed = (c.seed ^ k.wrapping_mul(0x9E37_79B9)) & ((1 << 52) - 1);
            out.push(r);
        }
    }
    out
}

fn structural_candidates(spec: &Spec) -> Vec<Spec> {
    let mut out = Vec::new();
    let mut push = |mut s: Spec| {
        if s != *spec && s.normalize().is_ok() {
            out.push(s);
        }
    };
    let n = spec.nodes.len();
    // Drop node i (value i + 1): its readers read its first input.
    for i in (0..n).rev() {
        if n == 1 {
            break;
        }
        let mut s = spec.clone();
        let repl = s.nodes[i].inputs[0];
        s.nodes.remove(i);
        for node in &mut s.nodes {
            for j in &mut node.inputs {
                if *j == i + 1 {
                    *j = repl;
                } else if *j > i + 1 {
                    *j -= 1;
                }
            }
        }
        push(s);
    }
    // Only the prefix up to node i (node i becomes the output).
    for i in 0..n.saturating_sub(1) {
        let mut s = spec.clone();
        s.nodes.truncate(i + 1);
        push(s);
    }
    // Smaller input.
    for d in 0..4 {
        if spec.input[d] > 1 {
            let mut s = spec.clone();
            s.input[d] = (spec.input[d] / 2).max(1);
            push(s.clone());
            s.input[d] = spec.input[d] - 1;
            push(s);
        }
    }
    // Fewer output channels / features; no bias; plain weights.
    for i in 0..n {
        let mut s = spec.clone();
        match &mut s.nodes[i].op {
            Op::Conv2d {
                out_channels,
                groups,
                ..
            } if *out_channels > 1 && *groups == 1 => *out_channels -= 1,
            Op::Linear { out_features, .. } if *out_features > 1 => *out_features -= 1,
            _ => continue,
        }
        push(s);
    }
    for i in 0..n {
        let mut s = spec.clone();
        match &mut s.nodes[i].op {
            Op::Conv2d { bias, wscale, .. } | Op::Linear { bias, wscale, .. }
                if *bias || *wscale != 1.0 =>
            {
                *bias = false;
                *wscale = 1.0;
            }
            _ => continue,
        }
        push(s);
    }
    // Simpler qconfig and data.
    let simple_act = ObsSpec {
        observer: "MinMaxObserver".into(),
        dtype: "quint8".into(),
        qscheme: "per_tensor_affine".into(),
        reduce_range: spec.qconfig.activation.reduce_range,
        quant_min: None,
        quant_max: None,
    };
    let simple_w = ObsSpec {
        observer: "MinMaxObserver".into(),
        dtype: "qint8".into(),
        qscheme: "per_tensor_symmetric".into(),
        reduce_range: false,
        quant_min: None,
        quant_max: None,
    };
    for (a, w) in [
        (Some(&simple_act), None),
        (None, Some(&simple_w)),
        (
            Some(&ObsSpec {
                reduce_range: false,
                ..simple_act.clone()
            }),
            None,
        ),
    ] {
        let mut s = spec.clone();
        if let Some(a) = a {
            s.qconfig.activation = a.clone();
        }
        if let Some(w) = w {
            s.qconfig.weight = w.clone();
        }
        push(s);
    }
    if spec.mode == "qat" {
        let mut s = spec.clone();
        s.mode = "ptq".into();
        push(s);
    }
    if spec.calib.batches > 1 {
        let mut s = spec.clone();
        s.calib.batches = 1;
        push(s);
    }
    for i in 0..spec.tests.len() {
        if spec.tests.len() > 1 {
            let mut s = spec.clone();
            s.tests.remove(i);
            push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_specs_are_valid_deterministic_and_varied() {
        let mut ops = std::collections::BTreeSet::new();
        let mut engines = std::collections::BTreeSet::new();
        for i in 0..400 {
            let a = generate(3, i, 8, &["default", "avx2"]);
            assert_eq!(a, generate(3, i, 8, &["default", "avx2"]));
            let mut b = a.clone();
            let shapes = b.normalize().unwrap_or_else(|e| panic!("spec {i}: {e}"));
            assert_eq!(a, b, "a generated spec is already normalized");
            assert_eq!(shapes.len(), a.nodes.len() + 1);
            ops.extend(a.op_names());
            engines.insert(a.engine.clone());
            if a.isa == "avx2" {
                assert!(a.engine == "fbgemm" || a.engine == "x86");
            }
        }
        assert_eq!(ops.len(), 12, "{ops:?}");
        assert_eq!(engines.len(), 4);
        assert_ne!(
            generate(1, 0, 8, &["default"]),
            generate(2, 0, 8, &["default"])
        );
    }

    #[test]
    fn invalid_specs_are_rejected_not_run() {
        let mut s = generate(5, 1, 4, &["default"]);
        s.nodes.push(Node {
            op: Op::Add,
            inputs: vec![0, s.nodes.len()],
        });
        // input (N, C, H, W) added to a value of another shape, unless they happen to agree
        let shapes = s.clone().normalize();
        if let Ok(sh) = shapes {
            assert_eq!(sh[0], sh[sh.len() - 2]);
        }
        let mut t = s.clone();
        t.nodes = vec![Node {
            op: Op::Flatten,
            inputs: vec![3],
        }];
        assert!(t.normalize().unwrap_err().contains("reads"));
        let mut u = s.clone();
        u.input[2] = 0;
        assert!(u.normalize().is_err());
        // One value read twice (the recorder would name it once).
        let mut d = s;
        d.nodes = vec![Node {
            op: Op::Cat,
            inputs: vec![0, 0],
        }];
        assert!(d.normalize().unwrap_err().contains("twice"));
    }

    #[test]
    fn shrinking_offers_smaller_valid_specs() {
        for i in 0..50 {
            let s = generate(9, i, 8, &["default"]);
            for c in shrink_candidates(&s, 2) {
                let mut d = c.clone();
                assert!(d.normalize().is_ok());
                assert_ne!(c, s);
                assert!(c.nodes.len() <= s.nodes.len());
                assert!(c.input.iter().zip(s.input.iter()).all(|(a, b)| a <= b));
            }
        }
        // A two-node graph shrinks to one node.
        let mut s = generate(9, 0, 8, &["default"]);
        s.nodes.truncate(1);
        s.nodes.push(Node {
            op: Op::Relu,
            inputs: vec![1],
        });
        s.normalize().unwrap();
        let cands = shrink_candidates(&s, 2);
        assert!(cands.iter().any(|c| c.nodes.len() == 1 && c.seed == s.seed));
        assert!(cands.iter().any(|c| c.nodes.len() == 1 && c.seed != s.seed));
    }
}
