//! `MANIFEST.json` of a golden set (`golden/<set>/`): torch version, the capture CPU's flags, case
//! counts and a SHA-256 per file, so a hand edit, a missing or an extra file is caught. The CPU
//! flags decide how every case of the set is modelled ([`Manifest::cpu`]), on any host.

use crate::engine::CpuFeatures;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub torch_version: String,
    #[serde(default)]
    pub python_version: Option<String>,
    /// The capture CPU's flags (`/proc/cpuinfo` names), as the capture process saw them.
    #[serde(default)]
    pub cpu_flags: Vec<String>,
    /// Where `cpu_flags` come from: `cpuinfo` (PyTorch's `torch.cpu.get_capabilities()` inside
    /// the capture process, i.e. what FBGEMM and PyTorch dispatch on, also under an emulator);
    /// absent in older sets, whose flags are the capture host's `/proc/cpuinfo`.
    #[serde(default)]
    pub cpu_flags_source: Option<String>,
    /// cpuinfo's CPU name, e.g. `Intel Core` under `qemu-x86_64 -cpu Haswell`.
    #[serde(default)]
    pub cpu_name: Option<String>,
    /// `torch.backends.cpu.get_cpu_capability()` (ATen's vector kernels: `AVX2`, `AVX512`).
    #[serde(default)]
    pub aten_cpu_capability: Option<String>,
    /// The emulator the capture ran under (`qemu-x86_64 -cpu Haswell`), or none.
    #[serde(default)]
    pub emulator: Option<String>,
    /// The generator that drew the data (`qparity-gen/2`); absent: an earlier generator whose
    /// draws depended on the CPU, so no machine regenerates such a set byte for byte.
    #[serde(default)]
    pub generator: Option<String>,
    /// Provenance and whether the set can be regenerated.
    #[serde(default)]
    pub note: Option<String>,
    /// Which capture plan drew the cases: `core` (primitives and small models, the default),
    /// `ops` (ops on quantized tensors under every engine), `graphs` (torchvision models) or
    /// `pins` (cases on which a numerics rule and its nearest alternative differ).
    #[serde(default)]
    pub suite: Option<String>,
    /// The `--cases` the set was captured with (for the ops suite: cases per op).
    #[serde(default)]
    pub plan_cases: Option<usize>,
    /// The pins suite's rule filter (`--rules`); absent: every rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<String>>,
    #[serde(default)]
    pub seed: Option<u64>,
    pub cases: usize,
    #[serde(default)]
    pub counts: BTreeMap<String, usize>,
    /// Path relative to the manifest's folder → SHA-256 (hex).
    pub files: BTreeMap<String, String>,
    pub content_hash: String,
}

impl Manifest {
    /// Reads `dir/MANIFEST.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("MANIFEST.json");
        let text = std::fs::read_to_string(&path).map_err(|error| Error::Io {
            path: path.clone(),
            error,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Case {
            path: path.clone(),
            field: format!("(line {}, column {})", e.line(), e.column()),
            why: format!("malformed JSON: {e}"),
        })?;
        super::decode(&path, "", &v)
    }

    /// The capture CPU's features; an error when the manifest lists no flags (the CPU that
    /// produced the set is then unknown, and so is the kernel every CPU-dependent path ran).
    pub fn cpu(&self) -> Result<CpuFeatures> {
        if self.cpu_flags.is_empty() {
            return Err(Error::invalid(
                "cpu_flags",
                "the manifest lists no cpu_flags: the capture CPU is unknown",
            ));
        }
        Ok(CpuFeatures::from_flags(&self.cpu_flags))
    }

    /// The content hash over `"<path> <sha256>\n"` lines sorted by path.
    pub fn compute_content_hash(files: &BTreeMap<String, String>) -> String {
        let mut h = Sha256::new();
        for (p, d) in files {
            h.update(format!("{p} {d}\n").as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Checks every listed file's hash, that no case file is unlisted, and the content hash.
    /// Returns the problems found (empty when the folder matches).
    pub fn verify(&self, dir: &Path) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        if self.format != super::FORMAT {
            problems.push(format!(
                "manifest format {:?} is not {:?}",
                self.format,
                super::FORMAT
            ));
        }
        if Self::compute_content_hash(&self.files) != self.content_hash {
            problems.push("content_hash does not match the listed file hashes".into());
        }
        if self.files.len() != self.cases {
            problems.push(format!(
                "manifest says {} cases but lists {} files",
                self.cases,
                self.files.len()
            ));
        }
        for (rel, want) in &self.files {
            let p = dir.join(rel);
            match std::fs::read(&p) {
                Ok(bytes) => {
                    let got = hex::encode(Sha256::digest(&bytes));
                    if &got != want {
                        problems.push(format!(
                            "{rel}: content changed (sha256 {got}, manifest {want})"
                        ));
                    }
                }
                Err(e) => {
                    problems.push(format!("{rel}: listed in the manifest but unreadable: {e}"))
                }
            }
        }
        let listed: std::collections::BTreeSet<PathBuf> =
            self.files.keys().map(|k| dir.join(k)).collect();
        for f in super::case_files(dir)? {
            if !listed.contains(&f) {
                problems.push(format!("{}: not listed in the manifest", f.display()));
            }
        }
        Ok(problems)
    }
}

/// A golden set: a folder with a `MANIFEST.json`.
#[derive(Debug, Clone)]
pub struct GoldenSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// What a path to check holds: golden sets, and case files that belong to none.
#[derive(Debug, Clone, Default)]
pub struct Located {
    pub sets: Vec<GoldenSet>,
    /// Case files outside every set (no manifest at or above them).
    pub loose: Vec<PathBuf>,
}

/// Finds the golden sets of a path: the set whose `MANIFEST.json` is at or above `path`, or else
/// every folder under `path` with a `MANIFEST.json` (sorted), plus the case files outside them.
pub fn locate(path: &Path) -> Result<Located> {
    let start = if path.is_dir() {
        Some(path)
    } else {
        path.parent()
    };
    let mut dir = start;
    while let Some(d) = dir {
        if d.join("MANIFEST.json").is_file() {
            return Ok(Located {
                sets: vec![GoldenSet {
                    dir: d.to_path_buf(),
                    manifest: Manifest::load(d)?,
                }],
                loose: Vec::new(),
            });
        }
        dir = d.parent().filter(|p| !p.as_os_str().is_empty());
    }
    let mut located = Located::default();
    if path.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        let mut dirs = Vec::new();
        while let Some(d) = stack.pop() {
            if d.join("MANIFEST.json").is_file() {
                dirs.push(d);
                continue;
            }
            let rd = std::fs::read_dir(&d).map_err(|error| Error::Io {
                path: d.clone(),
                error,
            })?;
            for entry in rd {
                let p = entry
                    .map_err(|error| Error::Io {
                        path: d.clone(),
                        error,
                    })?
                    .path();
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        dirs.sort();
        for d in dirs {
            let manifest = Manifest::load(&d)?;
            located.sets.push(GoldenSet { dir: d, manifest });
        }
    }
    located.loose = super::case_files(path)?
        .into_iter()
        .filter(|f| !located.sets.iter().any(|s| f.starts_with(&s.dir)))
        .collect();
    Ok(located)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(flags: &str) -> String {
        let flags: Vec<String> = flags.split_whitespace().map(|f| format!("{f:?}")).collect();
        format!(
            r#"{{"format":"qparity-golden/1","torch_version":"2.15.0","cpu_flags":[{}],
               "cases":0,"files":{{}},"content_hash":"{}"}}"#,
            flags.join(","),
            Manifest::compute_content_hash(&BTreeMap::new())
        )
    }

    #[test]
    fn locate_finds_sets_below_and_the_set_above_a_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for (name, flags) in [
            ("a", "avx2"),
            ("b", "avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni"),
        ] {
            std::fs::create_dir_all(root.join(name).join("cases")).unwrap();
            std::fs::write(root.join(name).join("MANIFEST.json"), manifest_json(flags)).unwrap();
            std::fs::write(root.join(name).join("cases/x.json"), "{}").unwrap();
        }
        std::fs::write(root.join("loose.json"), "{}").unwrap();
        let l = locate(root).unwrap();
        assert_eq!(l.sets.len(), 2);
        assert_eq!(l.loose, vec![root.join("loose.json")]);
        assert_eq!(l.sets[0].manifest.cpu().unwrap(), CpuFeatures::AVX2);
        assert_eq!(l.sets[1].manifest.cpu().unwrap(), CpuFeatures::AVX512_VNNI);
        let one = locate(&root.join("b/cases/x.json")).unwrap();
        assert_eq!(one.sets.len(), 1);
        assert_eq!(one.sets[0].dir, root.join("b"));
        assert!(one.loose.is_empty());
        std::fs::write(root.join("a/MANIFEST.json"), manifest_json("")).unwrap();
        let err = locate(&root.join("a")).unwrap().sets[0]
            .manifest
            .cpu()
            .unwrap_err();
        assert!(err.to_string().contains("cpu_flags"), "{err}");
    }
}
