//! `cargo xtask repro-live`: generates `qparity repro` scripts for golden cases and runs them with
//! the venv's PyTorch (`$QPARITY_VENV`, default `target/golden-venv`), so a script is shown to
//! reproduce PyTorch's recorded values (every script exits 0 when nothing differs).
//!
//! Default selection: from `golden/ops-vnni-seed0`, the first case of every op under every
//! engine; from `golden/graphs-vnni-seed0`, one case per model (model k its k-th engine / mode
//! variant), its output node in the three convert flows (a graph script rebuilds the
//! torchvision model the way the capture did).

use anyhow::{bail, Context, Result};
use qparity::engine::flow::Flow;
use qparity::explain::ElementQuery;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of `repro-live`.
pub struct Opts {
    /// Case files (default: the selection above).
    pub cases: Vec<PathBuf>,
    /// Graph cases: the node (default: each flow's output node).
    pub node: Option<String>,
    /// Graph cases: one flow (default: all three).
    pub flow: Option<String>,
    /// Where the scripts are written.
    pub out: PathBuf,
}

fn default_cases(root: &Path) -> Result<Vec<PathBuf>> {
    let mut picked = Vec::new();
    let ops = root.join("golden/ops-vnni-seed0/cases");
    let mut seen = BTreeSet::new();
    let mut names: Vec<String> = std::fs::read_dir(&ops)
        .with_context(|| format!("reading {}", ops.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for n in names {
        // qop-<op>-<engine>-<k>.json: the first case of each (op, engine).
        let Some(stem) = n.strip_suffix(".json") else {
            continue;
        };
        let Some((head, _k)) = stem.rsplit_once('-') else {
            continue;
        };
        if seen.insert(head.to_string()) {
            picked.push(ops.join(&n));
        }
    }
    // graph-<model>-<engine>-<mode>-…: model k takes its k-th variant (engines and modes vary).
    let graphs = root.join("golden/graphs-vnni-seed0/cases");
    let mut by_model: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in std::fs::read_dir(&graphs).with_context(|| format!("reading {}", graphs.display()))? {
        let Some(n) = e?.file_name().into_string().ok() else {
            continue;
        };
        let model = n.split('-').nth(1).unwrap_or_default().to_string();
        by_model.entry(model).or_default().push(n);
    }
    for (k, mut files) in by_model.into_values().enumerate() {
        files.sort();
        picked.push(graphs.join(&files[k % files.len()]));
    }
    Ok(picked)
}

/// Runs `repro-live`.
pub fn run(root: &Path, o: Opts) -> Result<()> {
    let python = crate::difflive::venv_python(root);
    if !python.exists() {
        bail!(
            "no Python at {} (set QPARITY_VENV to a venv with torch, or create target/golden-venv)",
            python.display()
        );
    }
    let cases = if o.cases.is_empty() {
        default_cases(root)?
    } else {
        o.cases.clone()
    };
    let flows: Vec<Option<Flow>> = match &o.flow {
        Some(f) => vec![Some(Flow::from_name(f)?)],
        None => Flow::ALL.iter().map(|&f| Some(f)).collect(),
    };
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let (mut ok, mut failed) = (0usize, Vec::new());
    for case in &cases {
        let graph = case
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("graph-"));
        let queries: Vec<ElementQuery> = if graph {
            flows
                .iter()
                .map(|&flow| ElementQuery {
                    node: o.node.clone(),
                    flow,
                    ..Default::default()
                })
                .collect()
        } else {
            vec![ElementQuery::default()]
        };
        for q in queries {
            let stem = case.file_stem().and_then(|s| s.to_str()).unwrap_or("case");
            let label = match q.flow {
                Some(f) if graph => format!("{stem} [{}]", f.name()),
                _ => stem.to_string(),
            };
            let script = o.out.join(format!(
                "{stem}{}.py",
                q.flow
                    .filter(|_| graph)
                    .map(|f| format!("-{}", f.name()))
                    .unwrap_or_default()
            ));
            qparity::repro::write_repro_node(case, &q, &script, true)
                .with_context(|| format!("generating the script of {}", case.display()))?;
            let out = Command::new(&python)
                .arg("-W")
                .arg("ignore")
                .arg(&script)
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let summary = stdout
                .lines()
                .filter(|l| l.contains("elements differ") || l.contains("qparity predicts"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            if out.status.success() {
                ok += 1;
                println!("ok      {label}: {summary}");
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err.lines().last().unwrap_or_default();
                println!("FAILED  {label}: {summary} {last}");
                failed.push(label);
            }
        }
    }
    println!(
        "\n{ok} scripts reproduced PyTorch's recorded values, {} failed",
        failed.len()
    );
    if !failed.is_empty() {
        bail!(
            "{} repro scripts failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_selection_is_one_ops_case_per_op_and_engine_and_one_graph_case_per_model() {
        let root = crate::workspace_root();
        let cases = default_cases(&root).unwrap();
        let names: Vec<String> = cases
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let (graphs, ops): (Vec<_>, Vec<_>) = names.iter().partition(|n| n.starts_with("graph-"));
        // Every ops case is the first of its (op, engine) and no (op, engine) repeats.
        let heads: BTreeSet<_> = ops.iter().map(|n| n.rsplit_once('-').unwrap().0).collect();
        assert_eq!(heads.len(), ops.len());
        let mut first = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(root.join("golden/ops-vnni-seed0/cases")).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            let head = n.rsplit_once('-').unwrap().0.to_string();
            let slot = first.entry(head).or_insert_with(|| n.clone());
            if n < *slot {
                *slot = n;
            }
        }
        let mut want: Vec<_> = first.into_values().collect();
        let mut got: Vec<_> = ops.iter().map(|n| n.to_string()).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        // One graph case per model, the models' variants rotating.
        let models: BTreeSet<_> = graphs
            .iter()
            .map(|n| n.split('-').nth(1).unwrap())
            .collect();
        assert_eq!(models.len(), graphs.len());
        assert_eq!(models.len(), 7);
        let variants: BTreeSet<_> = graphs
            .iter()
            .map(|n| n.splitn(3, '-').nth(2).unwrap())
            .collect();
        assert!(variants.len() > 1, "{graphs:?}");
        assert!(cases.iter().all(|p| p.is_file()));
    }
}
