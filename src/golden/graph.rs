//! `kind: "graph"` (format `qparity-golden/2`): a quantized model as the graph each convert flow
//! produced, every quantized value PyTorch computed recorded by node name, so stages can name their
//! inputs (residual adds, concats, branches) and a mismatch names one node.
//!
//! Large float parameters may be stored as a description of the capture's generator
//! ([`super::prng`]) instead of their values; conv and linear pre-quantize floats of the reference
//! flows may be stored as differences from a documented reference evaluation
//! ([`PreQuant::Delta`]), verified by SHA-256 after decoding. Both encodings are lossless.

use super::prng::Rng;
use crate::engine::flow::Flow;
use crate::engine::{Engine, Mode};
use crate::numerics::qparams::{QDType, QScheme};
use crate::ops::MemoryFormat;
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A graph case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphCase {
    pub engine: Engine,
    pub mode: Mode,
    pub qconfig: super::QConfigDesc,
    /// Float parameters of the weighted modules, by module path.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSet>,
    /// Test inputs (f32); `flows.<flow>.runs[i]` ran on `inputs[i]`.
    pub inputs: Vec<Tensor>,
    pub flows: BTreeMap<Flow, GraphFlow>,
    /// `cargo xtask diff-live --graphs` cases: the graph spec the model, its qconfig mapping and
    /// its calibration were built from (`xtask/capture/livegraph.py`); `qparity repro` rebuilds
    /// the model from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// The float parameters of one weighted module, as the prepared model held them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSet {
    pub weight: Param,
    #[serde(default)]
    pub bias: Option<Param>,
    /// A BatchNorm2d folded into the conv at convert (`fuse_conv_bn_weights`).
    #[serde(default)]
    pub bn: Option<BnParams>,
}

/// BatchNorm2d parameters and running statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BnParams {
    pub running_mean: Param,
    pub running_var: Param,
    pub weight: Param,
    pub bias: Param,
    pub eps: f64,
}

/// A float parameter: its values, or how the capture's generator drew them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Param {
    Tensor(Tensor),
    Prng { shape: Vec<usize>, prng: PrngSpec },
}

/// `Rng(seed, stream)` of `xtask/capture/rng.py`, then `f32(a + b·z)` (normal) or
/// `f32(a + (b − a)·u)` (uniform) per element, in row-major order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrngSpec {
    pub seed: u64,
    pub stream: u64,
    pub dist: Distribution,
    pub a: f64,
    pub b: f64,
}

/// The distribution of a generated parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Normal,
    Uniform,
}

impl Param {
    /// The f32 values and shape.
    pub fn values(&self) -> Result<(Vec<usize>, Vec<f32>), String> {
        match self {
            Param::Tensor(t) => t
                .as_f32()
                .map(|v| (t.shape.clone(), v.to_vec()))
                .ok_or_else(|| format!("expected an f32 tensor, got {:?}", t.dtype)),
            Param::Prng { shape, prng } => {
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or("shape overflows")?;
                if n > 1 << 28 {
                    return Err(format!("{n} generated elements is beyond any model here"));
                }
                let mut rng = Rng::new(prng.seed, prng.stream);
                let v = match prng.dist {
                    Distribution::Normal => rng
                        .normal(prng.a, prng.b, n)
                        .into_iter()
                        .map(|x| x as f32)
                        .collect(),
                    Distribution::Uniform => rng.uniform_f32(prng.a, prng.b, n),
                };
                Ok((shape.clone(), v))
            }
        }
    }
}

/// One convert flow's graph and its runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFlow {
    /// `gm.code` of the converted model (informational).
    #[serde(default)]
    pub graph: String,
    /// `gm.code` as base64 of its zlib stream, in place of `graph` for long graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_z: Option<String>,
    /// Every node that produces a quantized value, in execution order.
    pub nodes: Vec<GraphNode>,
    /// The node whose value the graph dequantizes into its output.
    pub output: String,
    /// Weights as this flow quantized them, by module path.
    #[serde(default)]
    pub weights: BTreeMap<String, WeightEntry>,
    pub runs: Vec<GraphRun>,
}

/// A node of a converted graph that produces a quantized value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphNode {
    /// The FX node name (unique in the flow).
    pub name: String,
    /// The registry op it computes (`quantize` for the graph input's quantize node).
    pub op: String,
    /// The nodes whose quantized values it reads; `input` is the graph's float input.
    pub inputs: Vec<String>,
    /// The op's parameters (conv geometry, fused relu, pool sizes, …).
    #[serde(default)]
    pub attrs: serde_json::Value,
    /// Weighted ops: the module path of their parameters and weights.
    #[serde(default)]
    pub module: Option<String>,
}

/// A flow's weight record, or a reference to the identical record of another flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WeightEntry {
    Rec(Box<WeightRec>),
    SameAs {
        /// The flow whose record of the same module this flow's weight equals.
        same_as: Flow,
    },
}

impl GraphFlow {
    /// `gm.code` of the converted model, from `graph` or `graph_z`.
    pub fn graph_code(&self) -> Result<String, String> {
        match &self.graph_z {
            None => Ok(self.graph.clone()),
            Some(z) => {
                let bytes = unzlib(z, 1 << 26)?;
                String::from_utf8(bytes).map_err(|_| "graph_z is not UTF-8 text".to_string())
            }
        }
    }
}

impl GraphCase {
    /// The weight record `flow` used for `module`, following `same_as` references (one level:
    /// the referenced flow must hold the record itself).
    pub fn weight(&self, flow: Flow, module: &str) -> Result<&WeightRec, String> {
        let entry = |f: Flow| {
            self.flows
                .get(&f)
                .and_then(|fr| fr.weights.get(module))
                .ok_or_else(|| format!("{} has no weight record for module {module}", f.name()))
        };
        match entry(flow)? {
            WeightEntry::Rec(r) => Ok(r),
            WeightEntry::SameAs { same_as } => match entry(*same_as)? {
                WeightEntry::Rec(r) => Ok(r),
                WeightEntry::SameAs { .. } => Err(format!(
                    "{}'s record of {module} refers to {}'s, which is itself a reference",
                    flow.name(),
                    same_as.name()
                )),
            },
        }
    }
}

/// A weight as one flow quantized it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRec {
    pub qscheme: QScheme,
    pub dtype: QDType,
    #[serde(default)]
    pub axis: Option<i64>,
    pub quant_min: i64,
    pub quant_max: i64,
    pub scales: Tensor,
    pub zero_points: Tensor,
    pub int_repr: IntRepr,
}

/// Integer values, stored or pinned by the SHA-256 of their little-endian bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntRepr {
    Tensor(Tensor),
    Pinned { shape: Vec<usize>, sha256: String },
}

/// One run of a flow: every node's quantized value, and the graph's float output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphRun {
    pub values: BTreeMap<String, ValueRec>,
    pub output: Tensor,
}

/// A quantized value and, in the reference flows, the float its quantize node received.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRec {
    pub scale: f64,
    pub zero_point: i64,
    pub quant_min: i64,
    pub quant_max: i64,
    #[serde(default)]
    pub memory_format: MemoryFormat,
    pub int_repr: Codes,
    #[serde(default)]
    pub pre_quant: Option<PreQuant>,
}

/// Another flow's recorded value of the same run, the base of a cross-flow delta.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    pub flow: Flow,
    pub node: String,
}

/// A quantized value's u8 codes: stored, or as differences from another flow's codes of the same
/// run (`z`: base64 of the zlib stream of the bytes `(code − base) mod 256`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Codes {
    Tensor(Tensor),
    DeltaFrom {
        shape: Vec<usize>,
        delta_from: BaseRef,
        z: String,
    },
}

impl Codes {
    /// The codes, given the base flow's codes for a cross-flow delta.
    pub fn decode(&self, base: impl FnOnce(&BaseRef) -> Option<Tensor>) -> Result<Tensor, String> {
        match self {
            Codes::Tensor(t) => Ok(t.clone()),
            Codes::DeltaFrom {
                shape,
                delta_from,
                z,
            } => {
                let b = base(delta_from).ok_or_else(|| {
                    format!(
                        "no value of node {:?} in {} to take differences from",
                        delta_from.node,
                        delta_from.flow.name()
                    )
                })?;
                let bv = b.as_int().ok_or("the base value is not integer")?;
                let n: usize = shape.iter().product();
                if bv.len() != n {
                    return Err(format!(
                        "base {} has {} values, this one {n}",
                        delta_from.node,
                        bv.len()
                    ));
                }
                let d = unzlib(z, n)?;
                let v = bv
                    .iter()
                    .zip(d)
                    .map(|(&b, d)| ((b as u8).wrapping_add(d)) as i64)
                    .collect();
                Ok(Tensor::int(DType::U8, shape.clone(), v))
            }
        }
    }
}

/// Decompresses a base64 zlib payload of at most `limit` bytes.
fn unzlib(z: &str, limit: usize) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let packed = base64::engine::general_purpose::STANDARD
        .decode(z.trim())
        .map_err(|e| format!("payload is not base64: {e}"))?;
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&packed[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("payload is not a zlib stream: {e}"))?;
    if raw.len() > limit {
        return Err(format!("payload holds more than {limit} bytes"));
    }
    Ok(raw)
}

/// The f32 tensor a reference flow's quantize node received.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PreQuant {
    Plain(Tensor),
    /// The same encoding with another flow's pre-quantize floats of the same run as the base.
    DeltaFrom {
        shape: Vec<usize>,
        delta_from: BaseRef,
        delta: String,
        sha256: String,
    },
    /// Differences from the reference evaluation of the node's float op
    /// ([`reference_float`](crate::ops::layer::QLayer::reference_float) for conv2d and linear):
    /// `delta` is base64 of the zlib stream of the zigzag LEB128 varints of
    /// `ord(pytorch[i]) − ord(reference[i])`, where `ord` maps f32 bits to integers monotonically
    /// (`+x → bits`, `−x → −(bits & 0x7fffffff) − 1`); `sha256` is of PyTorch's f32 values
    /// (little-endian bytes).
    Delta {
        shape: Vec<usize>,
        delta: String,
        sha256: String,
    },
    /// Only the SHA-256 of PyTorch's f32 values (little-endian bytes), for float ops qparity
    /// reproduces bit for bit: its own values must hash the same. (Untagged variants are tried in
    /// order; this one, a subset of the others' fields, comes last.)
    Pinned {
        shape: Vec<usize>,
        sha256: String,
    },
}

/// `ord` of the delta encoding: a monotone bijection from f32 bit patterns to integers.
pub fn f32_ord(v: f32) -> i64 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        -((b & 0x7fff_ffff) as i64) - 1
    } else {
        b as i64
    }
}

/// The inverse of [`f32_ord`].
pub fn f32_from_ord(o: i64) -> Option<f32> {
    if o >= 0 {
        u32::try_from(o)
            .ok()
            .filter(|b| *b < 0x8000_0000)
            .map(f32::from_bits)
    } else {
        let mag = u32::try_from(-(o + 1)).ok().filter(|m| *m < 0x8000_0000)?;
        Some(f32::from_bits(mag | 0x8000_0000))
    }
}

/// SHA-256 (hex) of f32 values' little-endian bytes.
pub fn sha256_f32(v: &[f32]) -> String {
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// SHA-256 (hex) of bytes.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// SHA-256 (hex) of integer values stored as little-endian bytes of `dtype`.
pub fn sha256_ints(v: &[i64], dtype: DType) -> String {
    let bytes: Vec<u8> = match dtype {
        DType::I8 | DType::U8 | DType::Bool => v.iter().map(|&x| x as u8).collect(),
        DType::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    };
    sha256_bytes(&bytes)
}

impl PreQuant {
    /// PyTorch's f32 values, given the reference evaluation (for [`PreQuant::Delta`]) or the
    /// base flow's floats (for [`PreQuant::DeltaFrom`]).
    pub fn decode(
        &self,
        reference: impl FnOnce() -> Result<Vec<f32>, String>,
        base: impl FnOnce(&BaseRef) -> Option<Tensor>,
    ) -> Result<Tensor, String> {
        let (shape, delta, sha256, r) = match self {
            PreQuant::Plain(t) => {
                if t.as_f32().is_none() {
                    return Err("pre_quant must be an f32 tensor".into());
                }
                return Ok(t.clone());
            }
            PreQuant::Pinned { .. } => {
                return Err(
                    "pinned pre-quantize floats are checked against qparity's own \
                            values, not decoded"
                        .into(),
                )
            }
            PreQuant::Delta {
                shape,
                delta,
                sha256,
            } => (shape, delta, sha256, reference()?),
            PreQuant::DeltaFrom {
                shape,
                delta_from,
                delta,
                sha256,
            } => {
                let b = base(delta_from).ok_or_else(|| {
                    format!(
                        "no pre-quantize floats of node {:?} in {} to take differences from",
                        delta_from.node,
                        delta_from.flow.name()
                    )
                })?;
                let v = b.as_f32().ok_or("the base floats are not f32")?.to_vec();
                (shape, delta, sha256, v)
            }
        };
        let n: usize = shape.iter().product();
        if r.len() != n {
            return Err(format!(
                "the base of the differences has {} values for shape {shape:?}",
                r.len()
            ));
        }
        let raw = unzlib(delta, 10 * n)?;
        let mut out = Vec::with_capacity(n);
        let mut it = raw.iter();
        for (i, &rv) in r.iter().enumerate() {
            let mut z: u64 = 0;
            let mut shift = 0;
            loop {
                let b = *it
                    .next()
                    .ok_or_else(|| format!("delta ends before element {i}"))?;
                if shift > 63 {
                    return Err(format!("delta varint {i} is too long"));
                }
                z |= ((b & 0x7f) as u64) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
            let v = f32_ord(rv)
                .checked_add(d)
                .and_then(f32_from_ord)
                .ok_or_else(|| format!("delta {d} of element {i} leaves the f32 range"))?;
            out.push(v);
        }
        if it.next().is_some() {
            return Err("delta holds more values than the shape".into());
        }
        if sha256_f32(&out) != *sha256 {
            return Err(
                "decoded pre-quantize floats do not match their SHA-256: the base of the \
                 differences (qparity's reference evaluation, or another flow's floats) differs \
                 from the capture's"
                    .into(),
            );
        }
        Ok(Tensor::f32(shape.clone(), out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ord_is_a_monotone_bijection_including_signed_zeros() {
        let vals = [
            f32::NEG_INFINITY,
            -1.0,
            -f32::from_bits(1),
            -0.0,
            0.0,
            f32::from_bits(1),
            1.0,
            f32::INFINITY,
        ];
        let ords: Vec<i64> = vals.iter().map(|&v| f32_ord(v)).collect();
        assert!(ords.windows(2).all(|w| w[0] < w[1]), "{ords:?}");
        for &v in &vals {
            assert_eq!(f32_from_ord(f32_ord(v)).unwrap().to_bits(), v.to_bits());
        }
        assert_eq!(f32_ord(-0.0), -1);
        assert!(f32_from_ord(1 << 40).is_none());
    }

    #[test]
    fn delta_payload_round_trips_and_is_checked() {
        use base64::Engine as _;
        use std::io::Write as _;
        let reference = vec![1.0f32, -2.5, 0.0, 3.0];
        let actual = vec![1.0f32.next_up(), -2.5, -0.0, 3.0f32.next_down().next_down()];
        let mut bytes = Vec::new();
        for (a, r) in actual.iter().zip(&reference) {
            let d = f32_ord(*a) - f32_ord(*r);
            let mut z = ((d << 1) ^ (d >> 63)) as u64;
            loop {
                let b = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    bytes.push(b);
                    break;
                }
                bytes.push(b | 0x80);
            }
        }
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&bytes).unwrap();
        let delta = base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap());
        let pq = PreQuant::Delta {
            shape: vec![2, 2],
            delta: delta.clone(),
            sha256: sha256_f32(&actual),
        };
        let t = pq.decode(|| Ok(reference.clone()), |_| None).unwrap();
        let got: Vec<u32> = t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = actual.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
        // A different reference decodes to other floats, which the hash rejects.
        let mut other = reference.clone();
        other[3] = 4.0;
        assert!(pq
            .decode(|| Ok(other), |_| None)
            .unwrap_err()
            .contains("SHA-256"));
        let wrong_shape = PreQuant::Delta {
            shape: vec![5],
            delta,
            sha256: sha256_f32(&actual),
        };
        assert!(wrong_shape.decode(|| Ok(vec![0.0; 5]), |_| None).is_err());
    }
}
