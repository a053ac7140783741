//! The library's layers only point down: no module may name a module of a higher layer
//! (`crate::<module>` in code; comments aside). The order is the one in `docs/ARCHITECTURE.md`.

use std::path::{Path, PathBuf};

/// Layers, bottom up. Modules in one layer may use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "tensor", "Error", "Result"],
    &["numerics"],
    &["geometry"],
    &["kernels"],
    &["engine"],
    &["ops"],
    &["backend"],
    &["golden"],
    &["runner"],
    &["check"],
    &["explain", "repro", "runtime"],
    &["gen"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`src/ops/layer.rs` → `ops`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::<module>` named outside comments.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn library_layers_only_point_down() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // `#[macro_export]` macros live at the crate root: they belong to their defining module.
    let mut macros = Vec::new();
    for f in &files {
        let Some(module) = module_of(src, f) else {
            continue;
        };
        for line in std::fs::read_to_string(f).unwrap().lines() {
            if let Some(rest) = line.trim_start().strip_prefix("macro_rules! ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                macros.push((name, module.clone()));
            }
        }
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let Some(module) = module_of(src, f) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("{}: module {module} has no layer", f.display()));
        for (line, used) in uses(&std::fs::read_to_string(f).unwrap()) {
            let theirs = layer_of(&used).or_else(|| {
                macros
                    .iter()
                    .find(|(name, _)| *name == used)
                    .and_then(|(_, m)| layer_of(m))
            });
            let Some(theirs) = theirs else {
                violations.push(format!(
                    "{}:{line}: unknown module crate::{used}",
                    f.display()
                ));
                continue;
            };
            checked += 1;
            if theirs > own {
                violations.push(format!(
                    "{}:{line}: {module} (layer {own}) uses crate::{used} (layer {theirs})",
                    f.display()
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} crate paths found: the scan is broken"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scan_sees_an_upward_use() {
    let found = uses("use crate::golden::Case; // crate::check in a comment\nlet x = 1;");
    assert_eq!(found, vec![(1, "golden".to_string())]);
    assert!(layer_of("golden") > layer_of("ops"));
}
