//! `cargo xtask golden --compare A B`: where two captures of one seed differ, case by case and
//! tensor by tensor. With the CPU-independent generator (`qparity-gen/2`) the drawn data
//! (shapes, weights, inputs, primitive arguments) must be identical, so every difference is one
//! of PyTorch's own results depending on the capture CPU.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use qparity::engine::CpuFeatures;
use qparity::golden::manifest::Manifest;
use qparity::tensor::{Data, Tensor};
use serde_json::Value;

/// One differing leaf: a tensor (elements that differ, elements compared) or another value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Count {
    differ: u64,
    total: u64,
}

/// Differences of one case, keyed by JSON path with array indices removed
/// (`flows.convert_fx.runs[].quantized[].int_repr`).
type Diffs = BTreeMap<String, Count>;

fn is_tensor(v: &Value) -> bool {
    v.get("dtype").is_some() && v.get("shape").is_some()
}

/// Elements of a tensor as comparable strings (the bit pattern of each float, or the integer),
/// whatever its payload encoding (readable or compact "z").
fn elements(t: &Value) -> Option<Vec<String>> {
    let t: Tensor = serde_json::from_value(t.clone()).ok()?;
    Some(match &t.data {
        Data::F32(v) => v.iter().map(|x| format!("{:08x}", x.to_bits())).collect(),
        Data::F64(v) => v.iter().map(|x| format!("{:016x}", x.to_bits())).collect(),
        Data::Int(v) => v.iter().map(i64::to_string).collect(),
    })
}

fn walk(a: &Value, b: &Value, path: &str, out: &mut Diffs) {
    let mut add = |differ: u64, total: u64| {
        let c = out.entry(path.to_string()).or_default();
        c.differ += differ;
        c.total += total;
    };
    if is_tensor(a) && is_tensor(b) {
        match (elements(a), elements(b)) {
            (Some(x), Some(y)) if x.len() == y.len() && a["shape"] == b["shape"] => {
                let d = x.iter().zip(&y).filter(|(p, q)| p != q).count() as u64;
                add(d, x.len() as u64);
            }
            (x, _) => {
                let n = x.map_or(1, |v| v.len().max(1)) as u64;
                add(n, n);
            }
        }
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => walk(u, v, &p, out),
                    _ => {
                        let c = out.entry(p).or_default();
                        c.differ += 1;
                        c.total += 1;
                    }
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            let p = format!("{path}[]");
            for (u, v) in x.iter().zip(y) {
                walk(u, v, &p, out);
            }
        }
        _ => add(u64::from(a != b), 1),
    }
}

/// Whether a path is data the generator drew (the same on every CPU by construction), as opposed
/// to a result PyTorch computed.
fn drawn(kind: &str, path: &str) -> bool {
    let top = path.split(['.', '[']).next().unwrap_or("");
    match kind {
        "primitive" => top == "args",
        _ => matches!(
            top,
            "layers" | "calibration" | "inputs" | "input_shape" | "tags"
        ),
    }
}

/// `kind/op/engine/mode/isa`, as in the manifest's counts.
fn group_key(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    format!(
        "{}/{}/{}/{}/{}",
        s("kind"),
        s("op"),
        s("engine"),
        s("mode"),
        s("isa")
    )
}

fn describe(dir: &Path, m: &Manifest) -> String {
    let class = CpuFeatures::from_flags(&m.cpu_flags).class_name();
    let mut parts = vec![class.to_string()];
    if let Some(e) = &m.emulator {
        parts.push(format!("under {e}"));
    }
    if let Some(n) = &m.cpu_name {
        parts.push(n.clone());
    }
    if let Some(c) = &m.aten_cpu_capability {
        parts.push(format!("ATen {c}"));
    }
    format!("{} ({})", dir.display(), parts.join(", "))
}

fn case_names(dir: &Path) -> Result<BTreeSet<String>> {
    let cases = dir.join("cases");
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&cases).with_context(|| format!("listing {}", cases.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            names.insert(name);
        }
    }
    Ok(names)
}

fn load(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// A graph case with its compact encodings undone, so that two captures compare by value: each
/// flow's weight records resolved (`same_as`), its graph code as text, and every value qparity
/// decodes from the case (codes, pre-quantize floats, outputs) under `decoded`, keyed by its
/// field. Other cases are returned as they are.
fn canonical(path: &Path, v: Value, cpu: &CpuFeatures) -> Result<Value> {
    if v.get("kind").and_then(Value::as_str) != Some("graph") {
        return Ok(v);
    }
    let case = qparity::golden::load_case(path)?;
    let qparity::golden::Body::Graph(g) = &case.body else {
        bail!("{}: not a graph case", path.display());
    };
    let mut decoded: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for stage in case.stages(cpu)? {
        for e in stage.expected {
            let flow = e.field.split('.').nth(1).unwrap_or("").to_string();
            decoded
                .entry(flow)
                .or_default()
                .insert(e.field.clone(), serde_json::to_value(&e.tensor)?);
        }
    }
    let mut flows = serde_json::Map::new();
    for (&flow, fr) in &g.flows {
        let mut weights = serde_json::Map::new();
        for module in fr.weights.keys() {
            let rec = g.weight(flow, module).map_err(anyhow::Error::msg)?;
            weights.insert(module.clone(), serde_json::to_value(rec)?);
        }
        let name = flow.name().to_string();
        flows.insert(
            name.clone(),
            serde_json::json!({
                "graph": fr.graph_code().map_err(anyhow::Error::msg)?,
                "nodes": fr.nodes,
                "output": fr.output,
                "weights": weights,
                "decoded": decoded.remove(&name).unwrap_or_default(),
            }),
        );
    }
    let mut v = v;
    v["flows"] = Value::Object(flows);
    Ok(v)
}

/// The earliest stage at which a case differs, in dataflow order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Identical,
    /// Drawn data differs: the generator was not CPU-independent.
    Drawn,
    /// A primitive op's result.
    Primitive,
    /// The float tensors the observers saw (calibration forward passes: ATen / oneDNN f32
    /// kernels), hence possibly every qparam and result after them.
    Calibration,
    /// Weight qparams with identical observer inputs.
    Weights,
    /// Same qparams; only convert_fx's integer results differ (int8 kernels).
    Int8,
    /// Same qparams; only the reference flows' float ops differ.
    Reference,
    /// Same qparams; both convert_fx and the reference flows differ.
    Int8AndReference,
}

fn stage(kind: &str, diffs: &Diffs) -> Stage {
    let any = |prefix: &str| diffs.keys().any(|p| p.starts_with(prefix));
    if diffs.is_empty() {
        return Stage::Identical;
    }
    if diffs.keys().any(|p| drawn(kind, p)) {
        return Stage::Drawn;
    }
    if kind == "primitive" {
        return Stage::Primitive;
    }
    if any("observers") {
        return Stage::Calibration;
    }
    if any("weights") {
        return Stage::Weights;
    }
    let fx = any("flows.convert_fx.");
    let reference =
        any("flows.convert_to_reference_fx.") || any("flows._convert_to_reference_decomposed_fx.");
    match (fx, reference) {
        (true, false) => Stage::Int8,
        (false, true) => Stage::Reference,
        _ => Stage::Int8AndReference,
    }
}

/// Per group: cases per earliest differing stage, and convert_fx's differing quantized
/// activations in the cases whose qparams agree.
#[derive(Default)]
struct Group {
    cases: usize,
    stages: BTreeMap<Stage, usize>,
    int8: Count,
}

fn render(d: &Diffs) -> String {
    d.iter()
        .map(|(p, c)| {
            if c.total > 1 {
                format!("{p} {}/{}", c.differ, c.total)
            } else {
                p.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(a: &Path, b: &Path, per_case: bool) -> Result<()> {
    let (ma, mb) = (
        Manifest::load(a).with_context(|| format!("{}: no golden set", a.display()))?,
        Manifest::load(b).with_context(|| format!("{}: no golden set", b.display()))?,
    );
    if ma.seed != mb.seed {
        let seed = |s: Option<u64>| s.map_or("none".to_string(), |s| s.to_string());
        bail!(
            "{} has seed {} and {} seed {}: --compare needs two captures of one seed",
            a.display(),
            seed(ma.seed),
            b.display(),
            seed(mb.seed)
        );
    }
    println!("A: {}", describe(a, &ma));
    println!("B: {}", describe(b, &mb));
    if ma.generator != mb.generator {
        println!(
            "warning: different generators ({:?} vs {:?}): drawn data may differ too",
            ma.generator, mb.generator
        );
    }
    let (na, nb) = (case_names(a)?, case_names(b)?);
    let common: Vec<&String> = na.intersection(&nb).collect();
    println!(
        "seed {}: {} cases in both, {} only in A, {} only in B",
        ma.seed.map_or("?".into(), |s| s.to_string()),
        common.len(),
        na.difference(&nb).count(),
        nb.difference(&na).count()
    );
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut drawn_differ = Vec::new();
    let mut lines = Vec::new();
    for name in common {
        let (pa, pb) = (a.join("cases").join(name), b.join("cases").join(name));
        let va = canonical(&pa, load(&pa)?, &ma.cpu()?)?;
        let vb = canonical(&pb, load(&pb)?, &mb.cpu()?)?;
        let kind = va.get("kind").and_then(Value::as_str).unwrap_or("?");
        let mut diffs = Diffs::new();
        walk(&va, &vb, "", &mut diffs);
        diffs.retain(|_, c| c.differ > 0);
        let st = stage(kind, &diffs);
        let g = groups.entry(group_key(&va)).or_default();
        g.cases += 1;
        *g.stages.entry(st).or_default() += 1;
        let id = name.trim_end_matches(".json").to_string();
        if st == Stage::Drawn {
            drawn_differ.push(id.clone());
        }
        if matches!(st, Stage::Int8 | Stage::Int8AndReference) {
            if let Some(c) = diffs.get("flows.convert_fx.runs[].quantized[].int_repr") {
                g.int8.differ += c.differ;
                g.int8.total += c.total;
            }
        }
        if st != Stage::Identical {
            lines.push(format!("{id} [{st:?}]: {}", render(&diffs)));
        }
    }
    let total: usize = groups.values().map(|g| g.cases).sum();
    let count = |st: Stage| -> usize { groups.values().filter_map(|g| g.stages.get(&st)).sum() };
    match drawn_differ.len() {
        0 => println!(
            "drawn data (shapes, weights, inputs, primitive args): identical in every case"
        ),
        n => println!(
            "drawn data differs in {n} case(s) (the generator is not CPU-independent there): {}",
            drawn_differ.join(", ")
        ),
    }
    println!(
        "PyTorch's results: identical in {} of {total} cases; first difference in the observers' \
         float inputs {}, primitive results {}, weights {}; with identical qparams: convert_fx \
         integers only {}, reference-flow floats only {}, both {}\n",
        count(Stage::Identical),
        count(Stage::Calibration),
        count(Stage::Primitive),
        count(Stage::Weights),
        count(Stage::Int8),
        count(Stage::Reference),
        count(Stage::Int8AndReference),
    );
    println!(
        "| kind/op/engine/mode/isa | cases | identical | observer inputs | int8 only (activations) \
         | reference floats only | other |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (k, g) in &groups {
        let n = |st: Stage| g.stages.get(&st).copied().unwrap_or(0);
        let int8 = n(Stage::Int8) + n(Stage::Int8AndReference);
        let int8 = if int8 == 0 {
            "0".to_string()
        } else {
            format!("{int8} ({}/{})", g.int8.differ, g.int8.total)
        };
        let other = n(Stage::Drawn) + n(Stage::Primitive) + n(Stage::Weights);
        println!(
            "| {k} | {} | {} | {} | {int8} | {} | {other} |",
            g.cases,
            n(Stage::Identical),
            n(Stage::Calibration),
            n(Stage::Reference),
        );
    }
    if per_case && !lines.is_empty() {
        println!();
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_and_readable_payloads_compare_by_value() {
        let readable = json!({"dtype": "i8", "shape": [3], "data": [1, 2, 3]});
        let compact = json!({"dtype": "i8", "shape": [3], "z": "eNpjZGIGAAANAAc="});
        assert_eq!(elements(&readable), elements(&compact));
        let mut d = Diffs::new();
        walk(&readable, &compact, "t", &mut d);
        assert_eq!(
            d["t"],
            Count {
                differ: 0,
                total: 3
            }
        );
    }

    #[test]
    fn walk_counts_differing_elements_per_path_without_indices() {
        let t = |hex: &str| json!({"dtype": "f32", "shape": [2], "hex": hex});
        let a = json!({"kind": "model", "inputs": [t("3f80000040000000")],
                       "flows": {"convert_fx": {"runs": [{"quantized": [{"int_repr":
                           {"dtype": "u8", "shape": [3], "data": [1, 2, 3]}, "scale": 0.5}]}]}}});
        let mut b = a.clone();
        b["flows"]["convert_fx"]["runs"][0]["quantized"][0]["int_repr"]["data"] = json!([1, 9, 9]);
        b["flows"]["convert_fx"]["runs"][0]["quantized"][0]["scale"] = json!(0.25);
        let mut d = Diffs::new();
        walk(&a, &b, "", &mut d);
        d.retain(|_, c| c.differ > 0);
        let want: Diffs = [
            (
                "flows.convert_fx.runs[].quantized[].int_repr".to_string(),
                Count {
                    differ: 2,
                    total: 3,
                },
            ),
            (
                "flows.convert_fx.runs[].quantized[].scale".to_string(),
                Count {
                    differ: 1,
                    total: 1,
                },
            ),
        ]
        .into();
        assert_eq!(d, want);
        assert!(!d.keys().any(|p| drawn("model", p)));
        assert_eq!(stage("model", &d), Stage::Int8);
        let mut c = a.clone();
        c["inputs"][0] = t("3f80000040000001");
        let mut d = Diffs::new();
        walk(&a, &c, "", &mut d);
        d.retain(|_, c| c.differ > 0);
        assert_eq!(
            d["inputs[]"],
            Count {
                differ: 1,
                total: 2
            }
        );
        assert_eq!(stage("model", &d), Stage::Drawn);
        assert!(drawn("model", "inputs[]"));
        assert!(drawn("primitive", "args.input"));
        assert!(!drawn("primitive", "expected.int_repr"));
    }
}
