//! Quantized engines: which kernel path runs a layer, how it accumulates and how it requantizes.
//!
//! Sources: PyTorch `aten/src/ATen/native/quantized/cpu/qlinear_prepack.cpp`,
//! `qconv_prepack.cpp` (`onednn_utils::should_use_onednn_quant`), FBGEMM `src/FbgemmConv.cc`
//! (`ConvFastPath`: depthwise, groupwise, pointwise, im2col) and `src/GenerateI8Depthwise.cc`.

pub mod flow;

use crate::geometry::Conv2dParams;
use crate::kernels::Accumulation;
use crate::{Error, Result};
use flow::Flow;
use serde::{Deserialize, Serialize};

/// `torch.backends.quantized.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// How the model was quantized: post-training (`prepare_fx` + calibration) or quantization-aware
/// training (`prepare_qat_fx` + training-mode forwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ptq,
    Qat,
}

impl Mode {
    /// The golden / CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ptq => "ptq",
            Mode::Qat => "qat",
        }
    }
}

/// How the taps of a convolution that fall into the zero padding enter its accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaddingTaps {
    /// As im2col columns holding the activation zero point, through the GEMM kernel like any other
    /// product (so they can saturate int16 pairs): FBGEMM's im2col convolution.
    ThroughKernel,
    /// Skipped by the kernel; their `a_zp · w` products are added exactly in int32, so after
    /// zero-point folding they contribute exactly 0 (oneDNN's int8 convolutions).
    Exact,
}

/// Everything about where a stage ran that decides its numerics: the convert flow, the quantized
/// engine, and the capture CPU (the ISA FBGEMM's GEMM kernels used, and whether the CPU had
/// AVX512-VNNI, which decides the x86 engine's conv path at prepack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub flow: Flow,
    pub engine: Engine,
    pub isa: Isa,
    pub cpu_has_vnni: bool,
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

    /// How conv taps that fall into the zero padding are accumulated. FBGEMM's im2col fills them
    /// with the activation zero point and runs them through the GEMM (so `zp·w` pairs saturate
    /// like any other). oneDNN's `jit_uni_x8s8s32x` kernel (oneDNN
    /// `src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp`, `compute_ker` / `kh_loop`) skips
    /// out-of-bounds taps in its `vpmaddubsw` loop (the `ow_start..ow_end` range per `kw`, and
    /// `h_padded` rows for `kh`) and adds `src_zero_point · Σ w` for them separately, from
    /// `vpmaddubsw(1, w)` sums that cannot saturate, multiplied in int32; its reference
    /// implementation is exact anyway.
    pub fn padding_taps(self) -> PaddingTaps {
        match self {
            KernelPath::Onednn => PaddingTaps::Exact,
            _ => PaddingTaps::ThroughKernel,
        }
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

/// How oneDNN's int8 conv accumulates on a CPU without VNNI (`isa` = [`Isa::Avx2`]); with VNNI
/// every implementation accumulates exactly (`vpdpbusd`).
///
/// oneDNN 3.x (PyTorch 2.15 bundles v3.13.3) tries its implementations in the order of
/// `src/cpu/cpu_convolution_list.cpp`; on an AVX2 CPU the first int8 one that accepts a 2D conv
/// is `jit_uni_x8s8s32x` (`jit_uni_int8_1x1:avx2` for unpadded 1×1, else `jit_uni_int8:avx2`).
/// Its `init_conf` (`src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp`) pads the channels of
/// non-grouped convs to blocks of 8 and accepts any kernel size, stride, dilation and padding,
/// and for grouped convs needs channels per group (in and out) that are multiples of 4 (blocks of
/// 8, else 4 with Xmm registers) — except depthwise convs (one in and one out channel per group),
/// which it also takes. Grouped convs it rejects run on the reference implementation `ref:any`
/// (exact int32). Accumulation:
///
/// - general kernel: `vpmaddubsw` on pairs of input channels of one tap, then `vpmaddwd` with
///   ones: pairwise int16 saturation ([`KernelPath::pairs_per_tap`], padded taps exact per
///   [`KernelPath::padding_taps`]);
/// - depthwise kernel (`compute_ker_dw`): `vpmaddwd` on zero-extended u8 activations: exact.
///
/// Verified with `ONEDNN_VERBOSE` on torch 2.15.0 (AMD EPYC, AVX2, no VNNI) over ~200 random
/// shapes (kernels 1–7, strides 1–4, dilations 1–3, paddings 0–5, 1–24 channels per group,
/// groups 1–4, inputs 1×1 to 12×14, activation zero points 0–255): the implementation and the
/// outputs followed this rule in every case, and the chosen implementation never depended on the
/// input size.
pub fn onednn_conv_accumulation(p: &Conv2dParams, isa: Isa) -> Accumulation {
    let (icg, ocg) = (p.in_channels / p.groups, p.out_channels / p.groups);
    let jit_general = p.groups == 1 || (icg.is_multiple_of(4) && ocg.is_multiple_of(4));
    match isa {
        Isa::Avx2 if jit_general && !p.is_depthwise() => Accumulation::PairSaturatingI16,
        _ => Accumulation::Exact,
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

    /// Shapes whose oneDNN implementation was read from `ONEDNN_VERBOSE` on torch 2.15.0 (AVX2,
    /// no VNNI); the first six are golden cases.
    #[test]
    fn onednn_conv_accumulation_follows_its_implementation_choice() {
        let conv = |ic, oc, k: [usize; 2], stride, padding, dilation, groups| Conv2dParams {
            in_channels: ic,
            out_channels: oc,
            kernel_size: k,
            stride,
            padding,
            dilation,
            groups,
        };
        let sat = Accumulation::PairSaturatingI16;
        let exact = Accumulation::Exact;
        let cases = [
            // jit_uni_int8:avx2 (model-conv2d-onednn-ptq-default-0212)
            (conv(4, 7, [2, 2], [2, 2], [0, 1], [2, 1], 1), sat),
            // jit_uni_int8_1x1:avx2 (model-composed-onednn-qat-default-0379)
            (conv(6, 5, [1, 1], [1, 1], [0, 0], [2, 1], 1), sat),
            // ref:any: 1 in / 2 out channels per group (model-conv2d-onednn-ptq-default-0026)
            (conv(4, 8, [1, 1], [2, 2], [1, 1], [2, 2], 4), exact),
            // ref:any: 2 / 1 per group (model-conv2d-onednn-ptq-default-0305)
            (conv(8, 4, [2, 2], [2, 2], [2, 0], [1, 1], 4), exact),
            // ref:any: 2 / 2 per group (model-conv2d-onednn-ptq-default-0398)
            (conv(6, 6, [2, 2], [2, 2], [1, 1], [2, 2], 3), exact),
            // jit_uni_int8:avx2 depthwise, vpmaddwd (model-conv2d-onednn-qat-default-0259)
            (conv(4, 4, [2, 2], [2, 2], [2, 2], [1, 1], 4), exact),
            // jit_uni_int8:avx2 with Xmm blocks of 4 channels per group
            (conv(8, 8, [3, 3], [1, 1], [1, 1], [1, 1], 2), sat),
            // ref:any: 4 in but 2 out channels per group
            (conv(8, 4, [3, 3], [1, 1], [1, 1], [1, 1], 2), exact),
            // jit_uni_int8:avx2: odd channels, large padding, stride and dilation
            (conv(17, 3, [7, 5], [4, 3], [5, 5], [3, 2], 1), sat),
        ];
        for (p, want) in cases {
            assert_eq!(onednn_conv_accumulation(&p, Isa::Avx2), want, "{p:?}");
            assert_eq!(onednn_conv_accumulation(&p, Isa::Vnni), exact, "{p:?}");
        }
        assert_eq!(KernelPath::Onednn.padding_taps(), PaddingTaps::Exact);
        assert_eq!(
            KernelPath::FbgemmGemm.padding_taps(),
            PaddingTaps::ThroughKernel
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
