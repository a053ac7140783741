//! The model runner: a graph case's `convert_fx` flow planned once and run end to end from the
//! model's f32 input on an optimized backend, every node's u8 output kept.
//!
//! [`Graph::from_case`] takes the flow's nodes, their ops and wiring, and the shapes, qparams and
//! memory formats PyTorch recorded for every node (what each node is planned for).
//! [`Graph::plan`] plans every node once and prepares it on the backend (weights packed once,
//! tables built once); a node the backend does not implement runs its reference plan and is
//! counted ([`Model::fallbacks`]). [`Model::run`] then runs the whole graph, each node on the
//! outputs of the nodes before it (buffers allocated per run).

use crate::backend::{Backend, Prepared};
use crate::engine::flow::Flow;
use crate::engine::{CpuFeatures, Ctx};
use crate::golden::{Body, Case};
use crate::ops::{Meta, Op, OutQParams, Plan, QTensor, Value};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::sync::Arc;

/// Where a node reads an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The model's f32 input.
    Input,
    /// Node `i`'s output.
    Node(usize),
}

/// One node of the flow.
#[derive(Debug)]
struct Node {
    name: String,
    op: Arc<dyn Op>,
    inputs: Vec<Slot>,
    out: OutQParams,
    /// The output as PyTorch recorded it in run 0 (shape, qparams, memory format; its codes
    /// are what [`Graph::recorded`] returns).
    record: QTensor,
}

/// A graph case's `convert_fx` flow, ready to plan.
#[derive(Debug)]
pub struct Graph {
    ctx: Ctx,
    nodes: Vec<Node>,
    output: usize,
    /// The output dequantize node.
    dequantize: Arc<dyn Op>,
    /// The model's inputs, one per recorded run.
    inputs: Vec<Tensor>,
}

impl Graph {
    /// The `convert_fx` flow of a graph case captured on `cpu` (the set's manifest).
    pub fn from_case(case: &Case, cpu: &CpuFeatures) -> Result<Graph> {
        let Body::Graph(g) = &case.body else {
            return Err(Error::invalid("runner", "not a graph case"));
        };
        let fr = g
            .flows
            .get(&Flow::ConvertFx)
            .ok_or_else(|| case.field_err("flows", "no convert_fx flow"))?;
        let n = fr.nodes.len();
        // The stages of run 0 are the flow's nodes in order (ops shared by runs), then the
        // output dequantize.
        let stages: Vec<_> = case
            .stages(cpu)?
            .into_iter()
            .filter(|s| {
                s.ctx.flow == Flow::ConvertFx && s.location.starts_with("convert_fx run 0,")
            })
            .collect();
        if stages.len() != n + 1 {
            return Err(case.field_err(
                "flows.convert_fx",
                format!("{} stages in run 0 for {n} nodes", stages.len()),
            ));
        }
        let mut index = std::collections::HashMap::new();
        let mut nodes = Vec::with_capacity(n);
        for (i, (node, stage)) in fr.nodes.iter().zip(&stages).enumerate() {
            if !stage.location.contains(&format!("node {} (", node.name)) {
                return Err(case.field_err(
                    "flows.convert_fx",
                    format!("stage {:?} is not node {}", stage.location, node.name),
                ));
            }
            let inputs = node
                .inputs
                .iter()
                .map(|name| match name.as_str() {
                    "input" => Ok(Slot::Input),
                    other => index.get(other).copied().map(Slot::Node).ok_or_else(|| {
                        case.field_err(
                            &format!("flows.convert_fx.nodes.{}.inputs", node.name),
                            format!("{other:?} is not an earlier node"),
                        )
                    }),
                })
                .collect::<Result<Vec<_>>>()?;
            let out = stage
                .out
                .ok_or_else(|| Error::invalid("runner", "a node without output qparams"))?;
            let record = nodes_record(case, g, &node.name, &stage.expected)?;
            nodes.push(Node {
                name: node.name.clone(),
                op: stage.op.clone(),
                inputs,
                out,
                record,
            });
            index.insert(node.name.as_str(), i);
        }
        let output = *index
            .get(fr.output.as_str())
            .ok_or_else(|| case.field_err("flows.convert_fx.output", "not a node"))?;
        Ok(Graph {
            ctx: stages[n].ctx,
            nodes,
            output,
            dequantize: stages[n].op.clone(),
            inputs: g.inputs.clone(),
        })
    }

    /// The model's recorded inputs (one per run).
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// Node names, in order.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The op name of node `i`.
    pub fn op_name(&self, i: usize) -> &'static str {
        self.nodes[i].op.name()
    }

    /// PyTorch's recorded output of node `i` in run 0.
    pub fn recorded(&self, i: usize) -> &QTensor {
        &self.nodes[i].record
    }

    /// What node `i`'s input `slot` looks like when planning.
    fn meta_of<'a>(&'a self, slot: Slot, input: &'a Value) -> Meta<'a> {
        match slot {
            Slot::Input => input.meta(),
            Slot::Node(j) => Meta {
                shape: &self.nodes[j].record.shape,
                qparams: Some((self.nodes[j].record.scale, self.nodes[j].record.zero_point)),
                memory_format: self.nodes[j].record.memory_format,
            },
        }
    }

    /// Plans every node once and prepares it on `backend` (`None`: every node on its reference
    /// plan).
    pub fn plan(&self, backend: Option<&dyn Backend>) -> Result<Model<'_>> {
        let input = Value::Tensor(
            self.inputs
                .first()
                .cloned()
                .ok_or_else(|| Error::invalid("runner", "the case has no input"))?,
        );
        let mut plans = Vec::with_capacity(self.nodes.len());
        let mut prepared = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let metas: Vec<Meta<'_>> = node
                .inputs
                .iter()
                .map(|&s| self.meta_of(s, &input))
                .collect();
            let in_node = |e: Error| Error::invalid(format!("node {}", node.name), e.to_string());
            let plan = node
                .op
                .plan(&self.ctx, &metas, Some(&node.out))
                .map_err(in_node)?;
            let p = match (backend, plan.lowered()) {
                (Some(b), Some(low)) => b
                    .prepare_in_memory(low, &metas, node.record.memory_format)
                    .map_err(in_node)?,
                _ => None,
            };
            plans.push(plan);
            prepared.push(p);
        }
        let out = &self.nodes[self.output].record;
        let out_meta = Meta {
            shape: &out.shape,
            qparams: Some((out.scale, out.zero_point)),
            memory_format: out.memory_format,
        };
        let dequantize = self.dequantize.plan(&self.ctx, &[out_meta], None)?;
        let dq_prepared = match (backend, dequantize.lowered()) {
            (Some(b), Some(low)) => b.prepare_in_memory(low, &[out_meta], out.memory_format)?,
            _ => None,
        };
        Ok(Model {
            graph: self,
            plans,
            prepared,
            dequantize,
            dq_prepared,
        })
    }
}

/// PyTorch's recorded output of a node (run 0) with its qparams and memory format.
fn nodes_record(
    case: &Case,
    g: &crate::golden::graph::GraphCase,
    name: &str,
    expected: &[crate::golden::stages::Expected],
) -> Result<QTensor> {
    let rec = g
        .flows
        .get(&Flow::ConvertFx)
        .and_then(|f| f.runs.first())
        .and_then(|r| r.values.get(name))
        .ok_or_else(|| case.field_err("flows.convert_fx.runs[0]", format!("no value of {name}")))?;
    let e = expected
        .iter()
        .find(|e| e.name == "int_repr")
        .ok_or_else(|| Error::invalid("runner", format!("node {name} records no codes")))?;
    let data = e
        .tensor
        .as_int()
        .ok_or_else(|| Error::invalid("runner", "codes are not integers"))?
        .iter()
        .map(|&v| u8::try_from(v).map_err(|_| Error::invalid("runner", "a code is not a u8")))
        .collect::<Result<Vec<u8>>>()?;
    Ok(QTensor {
        shape: e.tensor.shape.clone(),
        data,
        scale: rec.scale,
        zero_point: rec.zero_point,
        memory_format: rec.memory_format,
    })
}

/// A planned graph.
#[derive(Debug)]
pub struct Model<'g> {
    graph: &'g Graph,
    plans: Vec<Box<dyn Plan + 'g>>,
    prepared: Vec<Option<Box<dyn Prepared>>>,
    dequantize: Box<dyn Plan + 'g>,
    dq_prepared: Option<Box<dyn Prepared>>,
}

/// One run's results.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Every node's output codes in memory order (NHWC for 4-D channels-last values; see
    /// [`RunOutput::logical`]), in node order.
    pub nodes: Vec<QTensor>,
    /// The dequantized model output.
    pub output: Vec<f32>,
}

impl RunOutput {
    /// Node `i`'s codes in logical (row-major) order.
    pub fn logical(&self, i: usize) -> Vec<u8> {
        to_logical(&self.nodes[i])
    }
}

/// A value's codes (memory order) in logical order.
fn to_logical(q: &QTensor) -> Vec<u8> {
    match crate::backend::portable::memory_positions(&q.shape, q.memory_format) {
        Some(m) => m.iter().map(|&p| q.data[p]).collect(),
        None => q.data.clone(),
    }
}

/// A node's reference plan on memory-order inputs: inputs to logical order, outputs back.
fn reference_in_memory(plan: &dyn Plan, inputs: &[&Value], out: &QTensor) -> Result<Vec<u8>> {
    let logical: Vec<Value> = inputs
        .iter()
        .map(|v| match v {
            Value::Quantized(q) => Value::Quantized(QTensor {
                data: to_logical(q),
                ..q.clone()
            }),
            other => (*other).clone(),
        })
        .collect();
    let refs: Vec<&Value> = logical.iter().collect();
    let codes = reference_codes(plan, &refs)?;
    Ok(
        match crate::backend::portable::memory_positions(&out.shape, out.memory_format) {
            Some(m) => {
                let mut v = vec![0u8; codes.len()];
                for (&c, &p) in codes.iter().zip(&m) {
                    v[p] = c;
                }
                v
            }
            None => codes,
        },
    )
}

impl Model<'_> {
    /// Nodes (and the output dequantize) that run their reference plan.
    pub fn fallbacks(&self) -> usize {
        self.prepared.iter().filter(|p| p.is_none()).count()
            + usize::from(self.dq_prepared.is_none())
    }

    /// Per node: its name, op and the backend kernel that runs it (`None`: the reference plan).
    pub fn kernels(&self) -> Vec<(&str, &'static str, Option<&'static str>)> {
        self.graph
            .nodes
            .iter()
            .zip(&self.prepared)
            .map(|(n, p)| (n.name.as_str(), n.op.name(), p.as_ref().map(|p| p.kernel())))
            .collect()
    }

    /// Runs the model on `input`; `timer(i, seconds)` is told each node's time.
    pub fn run_timed(&self, input: &Tensor, timer: impl FnMut(usize, f64)) -> Result<RunOutput> {
        let mut out = RunOutput::default();
        self.run_into_timed(&Value::Tensor(input.clone()), &mut out, timer)?;
        Ok(out)
    }

    /// Runs the model on `input`.
    pub fn run(&self, input: &Tensor) -> Result<RunOutput> {
        self.run_timed(input, |_, _| {})
    }

    /// Runs the model on `input` (the graph's input value), writing `out` in place: the node
    /// and output buffers of the run `out` holds are reused, so repeated runs of one model do
    /// not allocate them again (what a deployed runtime does with its activation memory).
    pub fn run_into(&self, input: &Value, out: &mut RunOutput) -> Result<()> {
        self.run_into_timed(input, out, |_, _| {})
    }

    /// [`Model::run_into`], telling `timer(i, seconds)` each node's time.
    pub fn run_into_timed(
        &self,
        input: &Value,
        out: &mut RunOutput,
        mut timer: impl FnMut(usize, f64),
    ) -> Result<()> {
        let mut old = std::mem::take(&mut out.nodes).into_iter();
        let mut values: Vec<Value> = Vec::with_capacity(self.plans.len());
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let start = std::time::Instant::now();
            // The buffer of this node's previous output, if any (every code is rewritten).
            let reuse = old.next().map(|q| q.data).unwrap_or_default();
            let ins: Vec<&Value> = node
                .inputs
                .iter()
                .map(|&s| match s {
                    Slot::Input => input,
                    Slot::Node(j) => &values[j],
                })
                .collect();
            let in_node = |e: Error| Error::invalid(format!("node {}", node.name), e.to_string());
            let r = &node.record;
            let data = match (&self.prepared[i], self.plans[i].lowered()) {
                (Some(p), Some(low)) => {
                    let mut data = reuse;
                    data.resize(r.data.len(), 0);
                    p.run(low, &ins, &mut data).map_err(in_node)?;
                    data
                }
                _ => reference_in_memory(&*self.plans[i], &ins, r).map_err(in_node)?,
            };
            if data.len() != r.data.len() {
                return Err(in_node(Error::shape(
                    "output",
                    format!("{} codes, PyTorch recorded {}", data.len(), r.data.len()),
                )));
            }
            values.push(Value::Quantized(QTensor {
                shape: r.shape.clone(),
                data,
                scale: r.scale,
                zero_point: r.zero_point,
                memory_format: r.memory_format,
            }));
            timer(i, start.elapsed().as_secs_f64());
        }
        let last = &values[self.graph.output];
        match (&self.dq_prepared, self.dequantize.lowered()) {
            (Some(p), Some(low)) => {
                out.output.resize(p.out_shape().iter().product(), 0.0);
                p.run_f32(low, &[last], &mut out.output)?;
            }
            _ => {
                out.output = match self
                    .dequantize
                    .predict(&[&Value::Quantized(QTensor {
                        data: to_logical(last.quantized("output")?),
                        ..last.quantized("output")?.clone()
                    })])?
                    .into_iter()
                    .next()
                {
                    Some(crate::ops::Output {
                        values: crate::ops::Predicted::Floats(f),
                        ..
                    }) => f,
                    _ => {
                        return Err(Error::invalid(
                            "runner",
                            "the dequantize node gave no floats",
                        ))
                    }
                }
            }
        }
        out.nodes = values
            .into_iter()
            .filter_map(|v| match v {
                Value::Quantized(q) => Some(q),
                Value::Tensor(_) => None,
            })
            .collect();
        Ok(())
    }
}

/// A node's codes from its reference plan (every element decided).
fn reference_codes(plan: &dyn Plan, inputs: &[&Value]) -> Result<Vec<u8>> {
    let outs = plan.predict(inputs)?;
    let o = outs
        .iter()
        .find(|o| o.name == "int_repr")
        .ok_or_else(|| Error::invalid("reference plan", "no int_repr output"))?;
    let preds = o
        .ints()
        .ok_or_else(|| Error::invalid("reference plan", "int_repr is not integers"))?;
    preds
        .iter()
        .map(|p| match *p {
            crate::numerics::bound::Pred::Exact(v) => u8::try_from(v).ok(),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| {
            Error::invalid(
                "reference plan",
                "an output the reference model leaves undecided or outside 0..=255",
            )
        })
}
