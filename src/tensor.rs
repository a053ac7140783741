//! Tensors as stored in golden files: bit-exact floats (hex bit patterns) and integer arrays.
//!
//! The JSON form is documented in `golden/README.md`. Every f32 round-trips bit for bit,
//! NaN payloads, ±inf, −0.0 and subnormals included.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    U8,
    I8,
    I32,
    I64,
    Bool,
}

impl DType {
    /// Inclusive value range of an integer dtype (`None` for floats).
    pub fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DType::U8 => Some((0, 255)),
            DType::I8 => Some((-128, 127)),
            DType::I32 => Some((i32::MIN as i64, i32::MAX as i64)),
            DType::I64 => Some((i64::MIN, i64::MAX)),
            DType::Bool => Some((0, 1)),
            DType::F32 | DType::F64 => None,
        }
    }
}

/// Tensor payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Int(Vec<i64>),
}

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    /// An f32 tensor. Panics if `shape` does not match `data.len()` (a programming error).
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            dtype: DType::F32,
            shape,
            data: Data::F32(data),
        }
    }

    /// An f64 tensor.
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            dtype: DType::F64,
            shape,
            data: Data::F64(data),
        }
    }

    /// An integer tensor of the given dtype.
    pub fn int(dtype: DType, shape: Vec<usize>, data: Vec<i64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        assert!(dtype.int_range().is_some());
        Tensor {
            dtype,
            shape,
            data: Data::Int(data),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }

    /// The f32 payload, if this is an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The integer payload, if this is an integer tensor.
    pub fn as_int(&self) -> Option<&[i64]> {
        match &self.data {
            Data::Int(v) => Some(v),
            _ => None,
        }
    }

    /// Every element as f64 (exact for f32 and for integers up to 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::Int(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawTensor {
    dtype: DType,
    shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    z: Option<String>,
}

impl DType {
    /// Bytes per element in the compact `z` payload.
    fn width(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::U8 | DType::I8 | DType::Bool => 1,
        }
    }
}

/// Decodes a compact payload: base64 of the zlib stream of the elements' little-endian bytes.
fn decode_z(z: &str, dtype: DType, n: usize) -> Result<Data, String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let packed = base64::engine::general_purpose::STANDARD
        .decode(z.trim())
        .map_err(|e| format!("\"z\" payload is not base64: {e}"))?;
    let want = n.checked_mul(dtype.width()).ok_or("shape overflows")?;
    let mut raw = Vec::with_capacity(want);
    flate2::read::ZlibDecoder::new(&packed[..])
        .take(want as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("\"z\" payload is not a zlib stream: {e}"))?;
    if raw.len() != want {
        return Err(format!(
            "\"z\" payload holds {} bytes, expected {want} ({n} elements × {})",
            raw.len(),
            dtype.width()
        ));
    }
    Ok(match dtype {
        DType::F32 => Data::F32(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        DType::F64 => Data::F64(
            raw.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        DType::U8 => Data::Int(raw.iter().map(|&b| b as i64).collect()),
        DType::I8 => Data::Int(raw.iter().map(|&b| b as i8 as i64).collect()),
        DType::Bool => {
            if let Some(i) = raw.iter().position(|&b| b > 1) {
                return Err(format!("element {i} of a bool tensor is {}", raw[i]));
            }
            Data::Int(raw.iter().map(|&b| b as i64).collect())
        }
        DType::I32 => Data::Int(
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        DType::I64 => Data::Int(
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
    })
}

fn decode_hex<const W: usize>(s: &str, n: usize) -> Result<Vec<u64>, String> {
    if s.len() != n * W {
        return Err(format!(
            "hex payload has {} digits, expected {} ({} elements × {W})",
            s.len(),
            n * W,
            n
        ));
    }
    let b = s.as_bytes();
    (0..n)
        .map(|i| {
            let chunk = std::str::from_utf8(&b[i * W..(i + 1) * W])
                .map_err(|_| format!("element {i}: not ASCII hex"))?;
            u64::from_str_radix(chunk, 16).map_err(|_| format!("element {i}: bad hex {chunk:?}"))
        })
        .collect()
}

impl TryFrom<RawTensor> for Tensor {
    type Error = String;
    fn try_from(r: RawTensor) -> Result<Self, String> {
        let n = r
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("shape overflows")?;
        if let Some(z) = &r.z {
            if r.hex.is_some() || r.data.is_some() {
                return Err("a tensor has one payload: \"z\", \"hex\" or \"data\"".into());
            }
            return Ok(Tensor {
                dtype: r.dtype,
                data: decode_z(z, r.dtype, n)?,
                shape: r.shape,
            });
        }
        let data = match r.dtype {
            DType::F32 | DType::F64 => {
                if r.data.is_some() {
                    return Err(
                        "float tensors store their elements in \"hex\", not \"data\"".into(),
                    );
                }
                let hex = r.hex.ok_or("missing \"hex\" payload")?;
                if r.dtype == DType::F32 {
                    Data::F32(
                        decode_hex::<8>(&hex, n)?
                            .into_iter()
                            .map(|b| f32::from_bits(b as u32))
                            .collect(),
                    )
                } else {
                    Data::F64(
                        decode_hex::<16>(&hex, n)?
                            .into_iter()
                            .map(f64::from_bits)
                            .collect(),
                    )
                }
            }
            dt => {
                if r.hex.is_some() {
                    return Err("integer tensors store their elements in \"data\"".into());
                }
                let v = r.data.ok_or("missing \"data\" payload")?;
                if v.len() != n {
                    return Err(format!(
                        "shape {:?} has {n} elements but data has {}",
                        r.shape,
                        v.len()
                    ));
                }
                let (lo, hi) = dt.int_range().expect("integer dtype");
                if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| x < lo || x > hi) {
                    return Err(format!("element {i} = {x} is outside the {dt:?} range"));
                }
                Data::Int(v)
            }
        };
        Ok(Tensor {
            dtype: r.dtype,
            shape: r.shape,
            data,
        })
    }
}

impl<'de> Deserialize<'de> for Tensor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawTensor::deserialize(d)?;
        Tensor::try_from(raw).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Tensor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (hex, data) = match &self.data {
            Data::F32(v) => (
                Some(v.iter().map(|x| format!("{:08x}", x.to_bits())).collect()),
                None,
            ),
            Data::F64(v) => (
                Some(v.iter().map(|x| format!("{:016x}", x.to_bits())).collect()),
                None,
            ),
            Data::Int(v) => (None, Some(v.clone())),
        };
        RawTensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            hex,
            data,
            z: None,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads written by Python's `base64.b64encode(zlib.compress(a.astype("<f4").tobytes()))`.
    #[test]
    fn compact_payloads_decode_bit_exactly_and_reject_bad_lengths() {
        let t: Tensor = serde_json::from_str(
            r#"{"dtype":"f32","shape":[3],"z":"eNpjYGiwZ2BgaGBgOFAPAAvCAn8="}"#,
        )
        .unwrap();
        let v = t.as_f32().unwrap();
        assert_eq!(v[0], 1.0);
        assert_eq!(v[1].to_bits(), 0x8000_0000);
        assert!(v[2].is_nan());
        let t: Tensor =
            serde_json::from_str(r#"{"dtype":"i8","shape":[3],"z":"eNprqGcAAAKBAQA="}"#).unwrap();
        assert_eq!(t.as_int().unwrap(), &[-128, 127, 0]);
        for bad in [
            r#"{"dtype":"i8","shape":[4],"z":"eNprqGcAAAKBAQA="}"#,
            r#"{"dtype":"i8","shape":[2],"z":"eNprqGcAAAKBAQA="}"#,
            r#"{"dtype":"i8","shape":[3],"z":"not base64!"}"#,
            r#"{"dtype":"i8","shape":[3],"z":"AAAA"}"#,
            r#"{"dtype":"i8","shape":[3],"z":"eNprqGcAAAKBAQA=","data":[1,2,3]}"#,
        ] {
            assert!(serde_json::from_str::<Tensor>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn f32_round_trip_is_bit_exact_for_special_values() {
        let specials = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7fc0_0000),
            f32::from_bits(0xffc0_1234), // negative NaN with payload
            f32::from_bits(0x7f80_0001), // signalling NaN
            f32::from_bits(1),           // smallest subnormal
            f32::from_bits(0x807f_ffff), // largest negative subnormal
            f32::MIN_POSITIVE,
            f32::MAX,
            -f32::MAX,
            0.1,
            1.0 / 3.0,
        ];
        let t = Tensor::f32(vec![2, 7], specials.to_vec());
        let json = serde_json::to_string(&t).unwrap();
        let back: Tensor = serde_json::from_str(&json).unwrap();
        let (a, b) = (t.as_f32().unwrap(), back.as_f32().unwrap());
        assert_eq!(back.shape, vec![2, 7]);
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    #[test]
    fn f32_round_trip_every_exponent_and_sign() {
        // One value per (sign, exponent) pair with a varying mantissa: 512 patterns.
        let v: Vec<f32> = (0u32..512)
            .map(|i| f32::from_bits(((i & 0x1ff) << 23) | (i.wrapping_mul(2654435761) & 0x7f_ffff)))
            .collect();
        let t = Tensor::f32(vec![512], v.clone());
        let back: Tensor = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        let got = back.as_f32().unwrap();
        assert!(v.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn decode_errors_name_the_problem() {
        let e = serde_json::from_str::<Tensor>(r#"{"dtype":"f32","shape":[2],"hex":"3f800000"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 16"), "{e}");
        let e = serde_json::from_str::<Tensor>(r#"{"dtype":"u8","shape":[2],"data":[1,256]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        let e = serde_json::from_str::<Tensor>(r#"{"dtype":"f32","shape":[1],"hex":"3f80000g"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad hex"), "{e}");
        let e = serde_json::from_str::<Tensor>(r#"{"dtype":"q9","shape":[1],"data":[1]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant"), "{e}");
    }
}
