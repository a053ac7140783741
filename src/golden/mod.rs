//! Golden cases captured from PyTorch: the serde model of `golden/README.md`, a loader whose errors
//! name file, field and reason, and the manifest that pins every file's content.

pub mod manifest;

use crate::tensor::Tensor;
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The format tag every case and manifest carries.
pub const FORMAT: &str = "qparity-golden/1";

/// Fields common to every case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub torch_version: Option<String>,
    #[serde(default = "default_isa")]
    pub isa: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_isa() -> String {
    "default".into()
}

/// A loaded case.
#[derive(Debug, Clone)]
pub struct Case {
    pub path: PathBuf,
    pub header: Header,
    pub body: Body,
}

/// The kind-specific part of a case.
#[derive(Debug, Clone)]
pub enum Body {
    Primitive(PrimitiveCase),
    Model(Box<ModelCase>),
}

/// `kind: "primitive"`: one op with its arguments and PyTorch's result. `args` and `expected` are
/// decoded per op by [`crate::check`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimitiveCase {
    pub op: String,
    pub args: serde_json::Value,
    pub expected: serde_json::Value,
}

/// Observer / fake-quant description (class, kwargs as given, resolved attributes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObserverDesc {
    pub class: String,
    #[serde(default)]
    pub fake_quant: Option<String>,
    #[serde(default)]
    pub kwargs: Kwargs,
    #[serde(default)]
    pub resolved: Resolved,
}

/// Observer arguments, as passed to the constructor ([`Kwargs`]) or as PyTorch resolved them
/// ([`Resolved`]); `None`: not passed, or not recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ObserverArgs {
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub qscheme: Option<String>,
    #[serde(default)]
    pub reduce_range: Option<bool>,
    #[serde(default)]
    pub quant_min: Option<i64>,
    #[serde(default)]
    pub quant_max: Option<i64>,
    /// Resolved only: whether the quant range was customized.
    #[serde(default)]
    pub has_customized_qrange: Option<bool>,
    #[serde(default)]
    pub eps: Option<f64>,
    #[serde(default)]
    pub averaging_constant: Option<f64>,
    #[serde(default)]
    pub ch_axis: Option<i64>,
    #[serde(default)]
    pub bins: Option<i64>,
}

/// Keyword arguments passed to an observer constructor.
pub type Kwargs = ObserverArgs;

/// What PyTorch resolved an observer's arguments to.
pub type Resolved = ObserverArgs;

/// One layer of a model case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Layer {
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Relu,
    Flatten,
}

/// The qconfig of a model case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QConfigDesc {
    pub activation: ObserverDesc,
    pub weight: ObserverDesc,
}

/// An activation observer after calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObserverRecord {
    pub name: String,
    pub inputs: Vec<Tensor>,
    pub min_val: Tensor,
    pub max_val: Tensor,
    pub scale: Tensor,
    pub zero_point: Tensor,
    #[serde(default)]
    pub fq_scale: Option<Tensor>,
    #[serde(default)]
    pub fq_zero_point: Option<Tensor>,
}

/// A quantized weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightRecord {
    pub layer: usize,
    pub qscheme: String,
    pub dtype: String,
    #[serde(default)]
    pub axis: Option<i64>,
    pub quant_min: i64,
    pub quant_max: i64,
    pub scales: Tensor,
    pub zero_points: Tensor,
    pub int_repr: Tensor,
}

/// One quantized activation a converted graph computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizedRecord {
    pub source: String,
    pub scale: f64,
    pub zero_point: i64,
    pub quant_min: i64,
    pub quant_max: i64,
    pub int_repr: Tensor,
}

/// One run of a converted model on a test input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub output: Tensor,
    pub quantized: Vec<QuantizedRecord>,
}

/// A converted model's graph and its runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(default)]
    pub graph: String,
    pub runs: Vec<RunRecord>,
}

/// `kind: "model"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCase {
    pub engine: String,
    pub mode: String,
    pub input_shape: Vec<usize>,
    pub layers: Vec<Layer>,
    pub qconfig: QConfigDesc,
    pub calibration: Vec<Tensor>,
    pub observers: Vec<ObserverRecord>,
    pub weights: Vec<WeightRecord>,
    pub inputs: Vec<Tensor>,
    pub flows: BTreeMap<String, FlowRecord>,
}

/// Decodes a JSON value into `T`, reporting the failing field path.
pub fn decode<T: DeserializeOwned>(path: &Path, prefix: &str, v: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let field = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        Error::Case {
            path: path.to_path_buf(),
            field,
            why: e.into_inner().to_string(),
        }
    })
}

/// Parses a case from its JSON text.
pub fn parse_case(path: &Path, text: &str) -> Result<Case> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Case {
        path: path.to_path_buf(),
        field: format!("(line {}, column {})", e.line(), e.column()),
        why: format!("malformed JSON: {e}"),
    })?;
    if !v.is_object() {
        return Err(Error::Case {
            path: path.to_path_buf(),
            field: "(top level)".into(),
            why: "a case must be a JSON object".into(),
        });
    }
    let header: Header = decode(path, "", &v)?;
    if header.format != FORMAT {
        return Err(Error::Case {
            path: path.to_path_buf(),
            field: "format".into(),
            why: format!(
                "unsupported format {:?} (expected {FORMAT:?})",
                header.format
            ),
        });
    }
    let body = match header.kind.as_str() {
        "primitive" => Body::Primitive(decode(path, "", &v)?),
        "model" => Body::Model(Box::new(decode(path, "", &v)?)),
        other => {
            return Err(Error::Case {
                path: path.to_path_buf(),
                field: "kind".into(),
                why: format!("unknown case kind {other:?} (expected primitive or model)"),
            })
        }
    };
    Ok(Case {
        path: path.to_path_buf(),
        header,
        body,
    })
}

/// Reads and parses one case file.
pub fn load_case(path: &Path) -> Result<Case> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_case(path, &text)
}

/// Every case file under `path` (a file, or a directory searched recursively for `*.json` other
/// than `MANIFEST.json`), sorted.
pub fn case_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|error| Error::Io {
            path: dir.clone(),
            error,
        })?;
        for entry in rd {
            let entry = entry.map_err(|error| Error::Io {
                path: dir.clone(),
                error,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "json")
                && p.file_name().is_some_and(|n| n != "MANIFEST.json")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_case(Path::new("x.json"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn loader_errors_name_file_field_and_reason() {
        assert!(err("{").contains("malformed JSON"));
        assert!(err("[1]").contains("must be a JSON object"));
        let e = err(r#"{"format":"qparity-golden/1","id":"a","kind":"other"}"#);
        assert!(
            e.contains("x.json") && e.contains("kind") && e.contains("unknown case kind"),
            "{e}"
        );
        let e = err(r#"{"format":"v0","id":"a","kind":"model"}"#);
        assert!(e.contains("unsupported format"), "{e}");
        let e =
            err(r#"{"format":"qparity-golden/1","id":"a","kind":"primitive","op":"x","args":{}}"#);
        assert!(e.contains("expected"), "{e}");
        let e = err(
            r#"{"format":"qparity-golden/1","id":"a","kind":"model","engine":"x86","mode":"ptq",
            "input_shape":[1,2],"layers":[{"op":"linear","in_features":2,"out_features":1,
            "weight":{"dtype":"f32","shape":[1,2],"hex":"00"},"bias":null}]}"#,
        );
        assert!(e.contains("layers[0]") && e.contains("hex payload"), "{e}");
    }
}
