//! Quantized engines: which kernel path runs a layer, how it accumulates and how it requantizes.
//!
//! Sources: PyTorch `aten/src/ATen/native/quantized/cpu/qlinear_prepack.cpp`,
//! `qconv_prepack.cpp` (`onednn_utils::should_use_onednn_quant`), FBGEMM `src/FbgemmConv.cc`
//! (`ConvFastPath`: depthwise, groupwise, pointwise, im2col) and `src/GenerateI8Depthwise.cc`.

use crate::kernels::Accumulation;
use crate::ops::Conv2dParams;
use crate::{Error, Result};

/// `torch.backends.quantized.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    Fbgemm,
    X86,
    Qnnpack,
    Onednn,
}

impl Engine {
    /// All engines.
    pub const ALL: [Engine; 4] = [Engine::Fbgemm, Engine::X86, Engine::Qnnpack, Engine::Onednn];

    /// Parses PyTorch's engine name.
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "fbgemm" => Engine::Fbgemm,
            "x86" => Engine::X86,
            "qnnpack" => Engine::Qnnpack,
            "onednn" => Engine::Onednn,
            other => {
                return Err(Error::invalid(
                    "engine",
                    format!("unknown engine {other:?} (expected fbgemm, x86, qnnpack or onednn)"),
                ))
            }
        })
    }

    /// PyTorch's name.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fbgemm => "fbgemm",
            Engine::X86 => "x86",
            Engine::Qnnpack => "qnnpack",
            Engine::Onednn => "onednn",
        }
    }
}

/// The instruction set FBGEMM's GEMM kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// AVX-512 VNNI (`vpdpbusd`): exact accumulation. The default on CPUs that have it.
    Vnni,
    /// AVX2 / AVX-512 without VNNI (`vpmaddubsw`): pairwise int16 saturation. Forced with
    /// `FBGEMM_ENABLE_INSTRUCTIONS=AVX2`.
    Avx2,
}

impl Isa {
    /// Parses the golden `isa` field (`default` = captured on a VNNI CPU) or a CLI value.
    pub fn from_name(s: &str) -> Result<Self> {
        match s {
            "default" | "vnni" | "avx512vnni" => Ok(Isa::Vnni),
            "avx2" | "avx512" => Ok(Isa::Avx2),
            other => Err(Error::invalid(
                "isa",
                format!("unknown ISA {other:?} (expected default, vnni or avx2)"),
            )),
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Vnni => "vnni",
            Isa::Avx2 => "avx2",
        }
    }
}

/// The kernel family that runs a quantized linear / conv layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// FBGEMM packed GEMM (linear, pointwise and im2col conv).
    FbgemmGemm,
    /// FBGEMM's depthwise conv kernel: `vpmaddubsw` on tap pairs, even on VNNI CPUs.
    FbgemmDepthwise,
    /// FBGEMM's groupwise conv kernel (small channels per group).
    FbgemmGroupwise,
    /// oneDNN (engine `onednn`, and conv under `x86` on VNNI CPUs with symmetric weights).
    Onednn,
    /// PyTorch's QNNPACK fork.
    Qnnpack,
}

impl KernelPath {
    /// How this path accumulates u8×i8 products on the given ISA.
    pub fn accumulation(self, isa: Isa) -> Accumulation {
        match (self, isa) {
            (KernelPath::FbgemmDepthwise, _) => Accumulation::PairSaturatingI16,
            (
                KernelPath::FbgemmGemm | KernelPath::FbgemmGroupwise | KernelPath::Onednn,
                Isa::Avx2,
            ) => Accumulation::PairSaturatingI16,
            _ => Accumulation::Exact,
        }
    }

    /// Whether int16 pairs stay within one kernel tap (oneDNN pads each tap's channels to an
    /// even count) instead of running along FBGEMM's flat im2col order.
    pub fn pairs_per_tap(self) -> bool {
        matches!(self, KernelPath::Onednn)
    }

    /// Whether the path requantizes with FBGEMM's float-bias rule (else QNNPACK's int32 bias).
    pub fn uses_fbgemm_requant(self) -> bool {
        !matches!(self, KernelPath::Qnnpack)
    }

    /// Whether the exact requantization order is unknown (oneDNN's JIT kernels): results within
    /// a rounding error of a tie are reported as ambiguous.
    pub fn requant_order_unknown(self) -> bool {
        matches!(self, KernelPath::Onednn)
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::FbgemmGemm => "fbgemm-gemm",
            KernelPath::FbgemmDepthwise => "fbgemm-depthwise",
            KernelPath::FbgemmGroupwise => "fbgemm-groupwise",
            KernelPath::Onednn => "onednn",
            KernelPath::Qnnpack => "qnnpack",
        }
    }
}

/// Kernel path of `quantized::linear`: fbgemm and x86 use FBGEMM (never oneDNN).
pub fn linear_path(engine: Engine) -> KernelPath {
    match engine {
        Engine::Fbgemm | Engine::X86 => KernelPath::FbgemmGemm,
        Engine::Qnnpack => KernelPath::Qnnpack,
        Engine::Onednn => KernelPath::Onednn,
    }
}

/// Kernel path of `quantized::conv2d`, decided at prepack time. Under `x86`, PyTorch picks oneDNN
/// on Linux CPUs with AVX512-VNNI (cpuinfo; unaffected by `FBGEMM_ENABLE_INSTRUCTIONS`) when
/// `groups <= 100` and every weight zero point is 0; otherwise FBGEMM.
pub fn conv_path(
    engine: Engine,
    p: &Conv2dParams,
    weight_symmetric: bool,
    cpu_has_vnni: bool,
) -> KernelPath {
    match engine {
        Engine::X86 if cpu_has_vnni && p.groups <= 100 && weight_symmetric => KernelPath::Onednn,
        Engine::Fbgemm | Engine::X86 => fbgemm_conv_path(p),
        Engine::Qnnpack => KernelPath::Qnnpack,
        Engine::Onednn => KernelPath::Onednn,
    }
}

/// FBGEMM `ConvFastPath` for 2D convolutions.
pub fn fbgemm_conv_path(p: &Conv2dParams) -> KernelPath {
    let g = p.groups;
    let (ic, oc) = (p.in_channels, p.out_channels);
    let k = p.kernel_size;
    // takeDepthWiseFastPath
    let depthwise = g == ic
        && (oc == g || oc == 2 * g)
        && g.is_multiple_of(8)
        && p.stride.iter().all(|&s| s == 1 || s == 2)
        && k[0] == k[1]
        && (k[0] == 3 || k[0] == 5)
        && p.dilation == [1, 1]
        && (0..2).all(|d| p.padding[d] == (k[d] - 1) / 2);
    if depthwise {
        return KernelPath::FbgemmDepthwise;
    }
    // fbgemmOptimizedGConv
    let (cpg, kpg) = (ic / g, oc / g);
    let groupwise = cpg == kpg
        && matches!(cpg, 2 | 4 | 8 | 16)
        && k == [3, 3]
        && p.padding == [1, 1]
        && p.dilation == [1, 1]
        && p.stride[0] == p.stride[1]
        && (p.stride[0] == 1 || p.stride[0] == 2)
        && g >= 8;
    if groupwise {
        return KernelPath::FbgemmGroupwise;
    }
    KernelPath::FbgemmGemm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fbgemm_depthwise_needs_multiple_of_8_channels_and_same_padding() {
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(16, 16, 16, 3, 1)),
            KernelPath::FbgemmDepthwise
        );
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(6, 6, 6, 3, 1)),
            KernelPath::FbgemmGemm
        );
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(16, 16, 16, 3, 0)),
            KernelPath::FbgemmGemm
        );
        assert_eq!(
            KernelPath::FbgemmDepthwise.accumulation(Isa::Vnni),
            Accumulation::PairSaturatingI16
        );
    }

    #[test]
    fn x86_conv_uses_onednn_only_with_symmetric_weights_on_vnni() {
        let p = Conv2dParams::square(4, 8, 1, 3, 1);
        assert_eq!(conv_path(Engine::X86, &p, true, true), KernelPath::Onednn);
        assert_eq!(
            conv_path(Engine::X86, &p, false, true),
            KernelPath::FbgemmGemm
        );
        assert_eq!(
            conv_path(Engine::X86, &p, true, false),
            KernelPath::FbgemmGemm
        );
        assert_eq!(linear_path(Engine::X86), KernelPath::FbgemmGemm);
        assert!(Engine::from_name("tpu").is_err());
    }
}
