//! `golden/MANIFEST.json`: torch version, CPU flags, case counts and a SHA-256 per file, so a hand
//! edit, a missing or an extra file is caught.

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
    #[serde(default)]
    pub cpu_flags: Vec<String>,
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

    /// Whether the capture CPU had AVX512-VNNI (decides FBGEMM's default kernels and x86's conv path).
    pub fn cpu_has_vnni(&self) -> bool {
        self.cpu_flags
            .iter()
            .any(|f| f == "avx512_vnni" || f == "avx512vnni")
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
