//! The runtime check: every golden `convert_fx` linear / conv2d stage through a [`Runtime`], its
//! u8 outputs compared with PyTorch's, and each mismatched element attributed to the smallest
//! rule change that reproduces it ([`super::rules::Classifier`]).

use super::rules::{Cause, Classifier, Evaluator};
use super::{expected_output, runtime_stage, QStage, Runtime, RuntimeInfo};
use crate::engine::{CpuFeatures, KernelPath};
use crate::golden::{self, Case};
use crate::kernels::reference::Reference;
use crate::kernels::Accumulation;
use crate::ops::layer::IntegerLayer;
use crate::ops::{QTensor, Value};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Accumulators a runtime reported, compared with the accumulation models (pairs: in the
/// kernel path's or the im2col GEMM's order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccStats {
    /// Accumulators reported.
    pub reported: u64,
    /// Equal to PyTorch's (the planned kernel path's model).
    pub pytorch: u64,
    /// Equal to exact accumulation.
    pub exact: u64,
    /// Equal to int16 pair saturation.
    pub pairs: u64,
    /// Equal to neither model.
    pub other: u64,
}

/// Figures of one report row (runtime × PyTorch engine × op kind × capture CPU).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub stages: u64,
    /// Stages the runtime does not support.
    pub unsupported: u64,
    pub elements: u64,
    pub equal: u64,
    pub mismatched: u64,
    /// Mismatched elements per cause.
    pub causes: BTreeMap<String, u64>,
    /// Elements several equally small changes explain, per list of those changes, before
    /// [`Row::resolve`] attributes them.
    #[serde(skip)]
    pub pending: BTreeMap<Vec<String>, u64>,
    /// The first element of each cause: `stage, element i: PyTorch p, runtime r`.
    pub examples: BTreeMap<String, String>,
    pub accumulators: AccStats,
}

impl Row {
    /// Attributes the elements several changes explain equally: to the one of those changes that
    /// alone explains other elements of the row, if exactly one does (e.g. a tie at +x.5 that
    /// both "half away" and "half up" give, in a row where only "half away" explains the ties at
    /// −x.5); the others stay `one of: ...`.
    pub fn resolve(&mut self) {
        for (alts, n) in std::mem::take(&mut self.pending) {
            let named: Vec<&String> = alts
                .iter()
                .filter(|a| self.causes.contains_key(*a))
                .collect();
            let key = match named[..] {
                [one] => one.clone(),
                _ => Cause::OneOf(alts.clone()).to_string(),
            };
            *self.causes.entry(key).or_default() += n;
        }
    }
}

/// A whole runtime check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeReport {
    pub runtime: RuntimeInfo,
    /// Rows keyed `engine / op kind / capture CPU [capture ISA]`.
    pub rows: BTreeMap<String, Row>,
    /// Cases or stages that could not be run (the runtime errored, a case did not load).
    pub errors: Vec<String>,
}

impl RuntimeReport {
    pub fn new(runtime: RuntimeInfo) -> Self {
        Self {
            runtime,
            rows: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Resolves every row ([`Row::resolve`]); call once after the last stage.
    pub fn resolve(&mut self) {
        for r in self.rows.values_mut() {
            r.resolve();
        }
    }

    /// Sum over rows.
    pub fn total(&self) -> Row {
        let mut t = Row::default();
        for r in self.rows.values() {
            t.stages += r.stages;
            t.unsupported += r.unsupported;
            t.elements += r.elements;
            t.equal += r.equal;
            t.mismatched += r.mismatched;
            for (c, n) in &r.causes {
                *t.causes.entry(c.clone()).or_default() += n;
            }
        }
        t
    }

    /// Mismatched elements no rule change explains.
    pub fn unexplained(&self) -> u64 {
        self.total()
            .causes
            .get(&Cause::Unexplained.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// The table as Markdown: one line per row, the causes with their counts in the last column.
    pub fn render_markdown(&self) -> String {
        let rt = &self.runtime;
        let mut s = String::from(
            "| runtime (ISA) | PyTorch engine / op / capture CPU | elements | equal | mismatched | causes |\n\
             |---|---|---|---|---|---|\n",
        );
        for (k, r) in &self.rows {
            let causes: Vec<String> = r.causes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            s += &format!(
                "| {} {} ({}) | {k} | {} | {} | {} | {} |\n",
                rt.name,
                rt.version,
                rt.isa,
                r.elements,
                r.equal,
                r.mismatched,
                causes.join("; ")
            );
        }
        s
    }

    /// The table as text: one row per runtime row, causes indented below it.
    pub fn render(&self) -> String {
        let rt = &self.runtime;
        let mut s = format!(
            "runtime {} {} (ISA {})\n{:<58} {:>7} {:>10} {:>10} {:>10}\n",
            rt.name,
            rt.version,
            rt.isa,
            "pytorch engine / op / capture CPU",
            "stages",
            "elements",
            "equal",
            "mismatched"
        );
        for (k, r) in &self.rows {
            s += &format!(
                "{:<58} {:>7} {:>10} {:>10} {:>10}{}\n",
                k,
                r.stages,
                r.elements,
                r.equal,
                r.mismatched,
                if r.unsupported > 0 {
                    format!("  ({} stages unsupported)", r.unsupported)
                } else {
                    String::new()
                }
            );
            for (c, n) in &r.causes {
                s += &format!("    {n:>8}  {c}\n");
            }
            let a = &r.accumulators;
            if a.reported > 0 {
                s += &format!(
                    "    accumulators: {} reported, {} equal PyTorch's, {} exact, {} pairs, {} neither\n",
                    a.reported, a.pytorch, a.exact, a.pairs, a.other
                );
            }
        }
        let t = self.total();
        s += &format!(
            "\n{} stages ({} unsupported), {} elements: {} equal to PyTorch, {} mismatched, {} unexplained\n",
            t.stages,
            t.unsupported,
            t.elements,
            t.equal,
            t.mismatched,
            self.unexplained()
        );
        for e in self.errors.iter().take(20) {
            s += &format!("error: {e}\n");
        }
        s
    }
}

/// Runs every convert_fx linear / conv2d stage of `case` (captured on `cpu`) through `rt`.
pub fn check_case(
    rt: &mut dyn Runtime,
    case: &Case,
    cpu: &CpuFeatures,
    report: &mut RuntimeReport,
) -> Result<()> {
    let stages = case.stages(cpu)?;
    for stage in &stages {
        let metas: Vec<_> = stage.inputs.iter().map(Value::meta).collect();
        let plan = stage.op.plan(&stage.ctx, &metas, stage.out.as_ref())?;
        let Some((qs, layer)) = runtime_stage(&case.header.id, stage, plan.as_ref())? else {
            continue;
        };
        let key = format!(
            "{} / {} / {}{}",
            qs.engine.name(),
            qs.op.kind(),
            cpu.class_name(),
            match case.header.isa.name() {
                "default" => String::new(),
                other => format!(" [FBGEMM {other}]"),
            }
        );
        let row = report.rows.entry(key).or_default();
        let expected = expected_output(stage)?;
        let input = stage.inputs[0].quantized("layer input")?;
        compare_stage(rt, &qs, layer, input, &expected, row)?;
    }
    Ok(())
}

/// Runs one stage through `rt` and adds it to `row`: `layer` is PyTorch's planned layer,
/// `input` its quantized input and `expected` PyTorch's u8 output (as f64, flat).
pub fn compare_stage(
    rt: &mut dyn Runtime,
    qs: &QStage,
    layer: &IntegerLayer,
    input: &QTensor,
    expected: &[f64],
    row: &mut Row,
) -> Result<()> {
    row.stages += 1;
    let Some(out) = rt.run(qs)? else {
        row.unsupported += 1;
        return Ok(());
    };
    let got: Vec<u8> = out.output.iter().copied().collect();
    if got.len() != expected.len() {
        return Err(Error::shape(
            qs.id.clone(),
            format!(
                "the runtime answered {} values, PyTorch has {}",
                got.len(),
                expected.len()
            ),
        ));
    }
    let mismatched: Vec<usize> = (0..got.len())
        .filter(|&i| got[i] as f64 != expected[i])
        .collect();
    row.elements += got.len() as u64;
    row.mismatched += mismatched.len() as u64;
    row.equal += (got.len() - mismatched.len()) as u64;
    if mismatched.is_empty() && out.accumulators.is_none() {
        return Ok(());
    }
    let acc_of = |a: Accumulation, path: KernelPath| {
        layer
            .geometry
            .int_acc(input, &layer.weight, path, &Reference::new(a))
    };
    let exact = acc_of(Accumulation::Exact, layer.path)?;
    let pairs = acc_of(Accumulation::PairSaturatingI16, layer.path)?;
    let pairs_gemm = acc_of(Accumulation::PairSaturatingI16, KernelPath::FbgemmGemm)?;
    if let Some(a) = &out.accumulators {
        let pt = match layer.accumulation {
            Accumulation::Exact => &exact,
            Accumulation::PairSaturatingI16 => &pairs,
        };
        let s = &mut row.accumulators;
        for (i, &v) in a.iter().enumerate() {
            let p = v == pairs[i] || v == pairs_gemm[i];
            s.reported += 1;
            s.pytorch += u64::from(v == pt[i]);
            s.exact += u64::from(v == exact[i]);
            s.pairs += u64::from(p);
            s.other += u64::from(v != exact[i] && !p);
        }
    }
    if mismatched.is_empty() {
        return Ok(());
    }
    let ev = Evaluator::new(qs, layer.accumulation, &layer.requant);
    let classifier = Classifier::new(&ev.base, pairs_gemm != pairs);
    for i in mismatched {
        let j = qs.channel_of(i);
        let cause = classifier.classify(&ev, [exact[i], pairs[i], pairs_gemm[i]], j, got[i]);
        if let Cause::OneOf(v) = &cause {
            *row.pending.entry(v.clone()).or_default() += 1;
        } else {
            *row.causes.entry(cause.to_string()).or_default() += 1;
        }
        let cause = cause.to_string();
        row.examples.entry(cause).or_insert_with(|| {
            format!(
                "{}, element {i}: PyTorch {}, runtime {}; accumulators exact {}, pairs {}",
                qs.id, expected[i], got[i], exact[i], pairs[i]
            )
        });
    }
    Ok(())
}

/// Runs every case under `path` (one golden set, or files of it, captured on `cpu`), calling
/// `progress(done, total)` after each; cases that fail to load or run are listed in `errors`.
/// A runtime that stops answering ends the run with an error.
pub fn check_path(
    rt: &mut dyn Runtime,
    path: &Path,
    cpu: &CpuFeatures,
    report: &mut RuntimeReport,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let files = golden::case_files(path)?;
    for (n, f) in files.iter().enumerate() {
        let case = match golden::load_case(f) {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        if let Err(e) = check_case(rt, &case, cpu, report) {
            let msg = format!("{}: {e}", f.display());
            // A dead runtime cannot answer the next case either.
            if e.to_string().contains("closed its stdout") {
                return Err(Error::invalid("runtime", msg));
            }
            report.errors.push(msg);
        }
        progress(n + 1, files.len());
    }
    Ok(())
}
