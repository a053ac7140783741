//! PyTorch's three FX convert flows and the quantize / dequantize nodes each one puts between
//! ops:
//!
//! - `convert_fx`: `quantize_per_tensor` (aten, clamp 0..255), then quantized ops (integer kernels
//!   with the engine's accumulation and requantization, [`crate::engine`]).
//! - `convert_to_reference_fx`: quantize (aten, 0..255) → dequantize → f32 float op with
//!   fake-quantized weights → quantize (aten, 0..255).
//! - `_convert_to_reference_decomposed_fx`: the same with `quantized_decomposed` q/dq that clamp to
//!   the observer's `quant_min..quant_max` (0..127 under reduce_range).

use crate::numerics::quantize::{aten, decomposed};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// PyTorch's three FX convert flows, by their function names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Flow {
    #[serde(rename = "convert_fx")]
    ConvertFx,
    #[serde(rename = "convert_to_reference_fx")]
    ConvertToReferenceFx,
    #[serde(
        rename = "_convert_to_reference_decomposed_fx",
        alias = "convert_to_reference_decomposed_fx"
    )]
    ConvertToReferenceDecomposedFx,
}

impl Flow {
    /// All flows.
    pub const ALL: [Flow; 3] = [
        Flow::ConvertFx,
        Flow::ConvertToReferenceFx,
        Flow::ConvertToReferenceDecomposedFx,
    ];

    /// Parses PyTorch's function name.
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "convert_fx" => Flow::ConvertFx,
            "convert_to_reference_fx" => Flow::ConvertToReferenceFx,
            "_convert_to_reference_decomposed_fx" | "convert_to_reference_decomposed_fx" => {
                Flow::ConvertToReferenceDecomposedFx
            }
            other => {
                return Err(Error::invalid(
                    "flow",
                    format!("unknown convert flow {other:?}"),
                ))
            }
        })
    }

    /// PyTorch's function name.
    pub fn name(self) -> &'static str {
        match self {
            Flow::ConvertFx => "convert_fx",
            Flow::ConvertToReferenceFx => "convert_to_reference_fx",
            Flow::ConvertToReferenceDecomposedFx => "_convert_to_reference_decomposed_fx",
        }
    }

    /// Whether activations are clamped to the observer's quant range at inference (only the
    /// decomposed flow carries quant_min/quant_max; the others clamp to the dtype's 0..255).
    pub fn keeps_quant_range(self) -> bool {
        self == Flow::ConvertToReferenceDecomposedFx
    }

    /// Quantizes a float activation as this flow's quantize node does.
    pub fn quantize(
        self,
        x: f32,
        scale: f64,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
    ) -> Option<i64> {
        match self {
            Flow::ConvertToReferenceDecomposedFx => {
                decomposed::quantize(x, scale, zero_point, qmin, qmax)
            }
            _ => Some(aten::quantize_avx2(x, aten::inv32(scale), zero_point as i32, 0, 255) as i64),
        }
    }

    /// Dequantizes an activation as this flow's dequantize node does.
    pub fn dequantize(self, q: i64, scale: f64, zero_point: i64) -> f32 {
        match self {
            Flow::ConvertToReferenceDecomposedFx => decomposed::dequantize(q, scale, zero_point),
            _ => aten::dequantize(q, scale, zero_point),
        }
    }

    /// The clamp its activation quantize nodes apply, given the observer's quant range.
    pub fn clamp(self, quant_min: i64, quant_max: i64) -> (i64, i64) {
        if self.keeps_quant_range() {
            (quant_min, quant_max)
        } else {
            (0, 255)
        }
    }

    /// Whether the flow runs quantized integer ops (else float ops between q/dq nodes).
    pub fn is_integer(self) -> bool {
        self == Flow::ConvertFx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each flow's dequantize node is its own family's formula. On quint8 activations the two
    /// agree (every code and zero point is exact in f32); beyond 2²⁴ they part:
    /// `quantized_decomposed` converts the code to f32 before subtracting the zero point, ATen
    /// subtracts in int32.
    #[test]
    fn decomposed_flow_dequantizes_as_quantized_decomposed() {
        let (q, zp) = (16_777_217, 1);
        let exact = 16_777_216.0f32;
        assert_eq!(
            Flow::ConvertToReferenceDecomposedFx.dequantize(q, 1.0, zp),
            exact - 1.0
        );
        for flow in [Flow::ConvertFx, Flow::ConvertToReferenceFx] {
            assert_eq!(flow.dequantize(q, 1.0, zp), exact, "{flow:?}");
        }
    }
}
