//! Quantized engines: which kernel path runs a layer, how it accumulates and how it requantizes.
//!
//! Every decision is made from the capture CPU ([`CpuFeatures`], a golden set's manifest flags)
//! and `FBGEMM_ENABLE_INSTRUCTIONS` (a case's `isa`), never from the CPU running qparity.
//!
//! Sources: PyTorch `aten/src/ATen/native/quantized/cpu/qlinear_prepack.cpp`,
//! `qconv_prepack.cpp` and `OnednnUtils.h` (`should_use_onednn_quant`); FBGEMM `src/Utils.cc`
//! (`fbgemmInstructionSet`), `src/FbgemmConv.cc` (`ConvFastPath`: depthwise, groupwise,
//! pointwise, im2col), `src/GroupwiseConv.cc` and `src/GenerateI8Depthwise.cc`; oneDNN
//! `src/cpu/cpu_convolution_list.cpp` and the `jit_*_x8s8s32x_conv_kernel.cpp` kernels.

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
/// engine, the ISA of FBGEMM's packed GEMM ([`fbgemm_gemm_isa`]) and the capture CPU (which
/// decides the x86 engine's conv path and every kernel path that reads the CPU itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub flow: Flow,
    pub engine: Engine,
    pub isa: Isa,
    pub cpu: CpuFeatures,
}

/// The instruction set of FBGEMM's packed GEMM (`fbgemmPacked`: linear, pointwise and im2col conv),
/// as `fbgemmInstructionSet()` resolves it ([`fbgemm_gemm_isa`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// AVX-512 VNNI (`vpdpbusd`): exact accumulation. The default on CPUs that have it.
    Vnni,
    /// AVX2, or AVX-512 without VNNI (`vpmaddubsw`): pairwise int16 saturation. Also what
    /// `FBGEMM_ENABLE_INSTRUCTIONS=AVX2` forces on a VNNI CPU.
    Avx2,
}

impl Isa {
    /// Parses a CLI value (`vnni`, `avx2`; `avx512` = AVX-512 without VNNI, which pairs like AVX2).
    pub fn from_name(s: &str) -> Result<Self> {
        match s {
            "vnni" | "avx512vnni" => Ok(Isa::Vnni),
            "avx2" | "avx512" => Ok(Isa::Avx2),
            other => Err(Error::invalid(
                "isa",
                format!("unknown ISA {other:?} (expected vnni or avx2)"),
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

/// The capture CPU's features that PyTorch's int8 libraries dispatch on, as cpuinfo (FBGEMM,
/// PyTorch) and oneDNN's own CPUID probe report them. A golden set's manifest records them
/// (`cpu_flags`), and every path is modelled from them, never from the CPU that runs the check.
///
/// CPU classes and what the model assumes for each:
///
/// | class | FBGEMM GEMM | FBGEMM groupwise | FBGEMM depthwise | x86 engine conv | oneDNN |
/// |---|---|---|---|---|---|
/// | AVX2 | pairs | pairs | pairs | FBGEMM | pairs (`jit_uni` rules) |
/// | AVX-512 VNNI (and AMX) | exact; pairs when forced to AVX2 | exact | pairs | oneDNN | exact |
/// | AVX-512 without VNNI | pairs | pairs | pairs | FBGEMM | not modelled (error) |
/// | AVX2 + AVX-VNNI (no AVX-512) | pairs | pairs | pairs | FBGEMM | exact |
///
/// "pairs" is `vpmaddubsw`'s int16 saturation of adjacent u8·s8 products; "exact" is `vpdpbusd`
/// (or AMX `tdpbusd`, or a reference loop) into int32. The AVX2 and AVX-512 VNNI rows are
/// confirmed by captures (goldens of both classes, and forced-AVX2 hybrids); the other rows
/// follow from the sources cited in [`fbgemm_gemm_isa`], [`KernelPath::accumulation`],
/// [`conv_path`] and [`onednn_conv_accumulation`]. oneDNN's int8 convs on AVX-512 without VNNI
/// run `brgemm` or `jit_avx512_core_x8s8s32x` kernels whose `vpmaddubsw` pairing no capture has
/// pinned, so [`CpuFeatures::check_modelled`] refuses the onednn engine there rather than guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuFeatures {
    /// `avx2`.
    pub avx2: bool,
    /// `avx512f`, `avx512bw`, `avx512dq` and `avx512vl` together (FBGEMM
    /// `fbgemmHasAvx512Support`, oneDNN `avx512_core`).
    pub avx512: bool,
    /// `avx512_vnni` (FBGEMM `fbgemmHasAvx512VnniSupport`, oneDNN `avx512_core_vnni`).
    pub avx512_vnni: bool,
    /// `avx_vnni`: VEX-encoded `vpdpbusd` (oneDNN `avx2_vnni`); FBGEMM does not use it.
    pub avx_vnni: bool,
    /// `amx_int8` (oneDNN `avx512_core_amx`).
    pub amx_int8: bool,
}

impl CpuFeatures {
    /// An AVX2 CPU without AVX-512 or VNNI (e.g. Haswell, AMD Zen 1–3).
    pub const AVX2: CpuFeatures = CpuFeatures {
        avx2: true,
        avx512: false,
        avx512_vnni: false,
        avx_vnni: false,
        amx_int8: false,
    };
    /// An AVX-512 VNNI CPU (e.g. Cascade Lake and later Xeons, AMD Zen 4).
    pub const AVX512_VNNI: CpuFeatures = CpuFeatures {
        avx2: true,
        avx512: true,
        avx512_vnni: true,
        avx_vnni: false,
        amx_int8: false,
    };

    /// From a manifest's `cpu_flags` (Linux `/proc/cpuinfo` names: `avx2`, `avx512f`, `avx512bw`,
    /// `avx512dq`, `avx512vl`, `avx512_vnni`, `avx_vnni`, `amx_int8`; other flags are ignored).
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Self {
        let has = |name: &str| flags.iter().any(|f| f.as_ref() == name);
        CpuFeatures {
            avx2: has("avx2"),
            avx512: ["avx512f", "avx512bw", "avx512dq", "avx512vl"]
                .iter()
                .all(|f| has(f)),
            avx512_vnni: has("avx512_vnni") || has("avx512vnni"),
            avx_vnni: has("avx_vnni"),
            amx_int8: has("amx_int8"),
        }
    }

    /// The CPU this process runs on: the `/proc/cpuinfo` name of every feature the runtime
    /// detection reports, read by [`CpuFeatures::from_flags`].
    pub fn host() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let amx = amx_int8_in_cpuid_7_edx(std::arch::x86_64::__cpuid_count(7, 0).edx);
            let detected = [
                ("avx2", has!("avx2")),
                ("avx512f", has!("avx512f")),
                ("avx512bw", has!("avx512bw")),
                ("avx512dq", has!("avx512dq")),
                ("avx512vl", has!("avx512vl")),
                ("avx512_vnni", has!("avx512vnni")),
                ("avx_vnni", has!("avxvnni")),
                ("amx_int8", amx),
            ];
            let names: Vec<&str> = detected
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| *name)
                .collect();
            CpuFeatures::from_flags(&names)
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }

    /// Whether oneDNN's int8 kernels have a `vpdpbusd`-class instruction (`jcp.has_vnni` in
    /// `jit_uni_x8s8s32x_conv_kernel.cpp` is `mayiuse(avx2_vnni)`, in
    /// `jit_avx512_core_x8s8s32x_conv_kernel.cpp` `mayiuse(avx512_core_vnni)`; AMX implies both).
    pub fn onednn_has_vnni(&self) -> bool {
        self.avx512_vnni || self.avx_vnni || self.amx_int8
    }

    /// The class name used in reports (`AVX2`, `AVX-512 VNNI`, ...).
    pub fn class_name(&self) -> &'static str {
        match (
            self.avx2,
            self.avx512,
            self.avx512_vnni,
            self.avx_vnni,
            self.amx_int8,
        ) {
            (_, _, _, _, true) => "AMX",
            (_, true, true, _, _) => "AVX-512 VNNI",
            (_, true, false, _, _) => "AVX-512 without VNNI",
            (true, false, _, true, _) => "AVX2 + AVX-VNNI",
            (true, false, _, false, _) => "AVX2",
            _ => "no AVX2",
        }
    }

    /// Errors when the engine's kernels on this CPU are not modelled: FBGEMM needs AVX2, and
    /// oneDNN's int8 kernels on AVX-512 without VNNI (or below AVX2) pair products in ways no
    /// capture has pinned (see the table above).
    pub fn check_modelled(&self, engine: Engine) -> Result<()> {
        let why = match engine {
            Engine::Fbgemm | Engine::X86 if !self.avx2 => {
                "FBGEMM's int8 kernels need AVX2; this capture CPU has none"
            }
            Engine::Onednn if !self.onednn_has_vnni() && self.avx512 => {
                "oneDNN's int8 kernels on AVX-512 without VNNI (brgemm / jit_avx512_core_x8s8s32x \
                 with vpmaddubsw) are not modelled: no capture has pinned their pairing"
            }
            Engine::Onednn if !self.onednn_has_vnni() && !self.avx2 => {
                "oneDNN's int8 kernels below AVX2 (jit_uni sse41) are not modelled"
            }
            _ => return Ok(()),
        };
        Err(Error::invalid(
            "cpu_flags",
            format!(
                "{} capture CPU, engine {}: {why}",
                self.class_name(),
                engine.name()
            ),
        ))
    }
}

/// AMX-INT8 is bit 25 of EDX of CPUID leaf 7, sub-leaf 0 (Intel SDM vol. 2A, CPUID).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn amx_int8_in_cpuid_7_edx(edx: u32) -> bool {
    edx & (1 << 25) != 0
}

/// A golden case's `isa`: the FBGEMM instruction set it was captured with.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CaptureIsa {
    /// Whatever FBGEMM picked on the capture CPU (see the set's CPU flags).
    #[default]
    Default,
    /// Captured with `FBGEMM_ENABLE_INSTRUCTIONS=AVX2`.
    Avx2,
}

impl CaptureIsa {
    /// The golden name.
    pub fn name(self) -> &'static str {
        match self {
            CaptureIsa::Default => "default",
            CaptureIsa::Avx2 => "avx2",
        }
    }
}

/// The ISA of FBGEMM's packed GEMM for a case captured with `FBGEMM_ENABLE_INSTRUCTIONS` unset
/// ([`CaptureIsa::Default`]) or `AVX2` on a CPU with these features.
///
/// FBGEMM `src/Utils.cc` `fbgemmInstructionSet()`: the detected ISA is `avx512_vnni` on CPUs with
/// AVX512-VNNI, else `avx512`, else `avx2`; `fbgemmEnvGetIsa()` reads the variable once, and a
/// forced ISA the CPU supports wins. `PackAMatrix.cc`, `PackAWithRowOffset.cc`,
/// `PackAWithIm2Col.cc`, `PackBMatrix.cc` and `ExecuteKernelU8S8.cc` all pick their kernel from
/// it: `GenerateKernelU8S8S32ACC32Avx512VNNI.cc` (`vpdpbusd`) for `avx512_vnni`,
/// `GenerateKernelU8S8S32ACC32.cc` (`vpmaddubsw`, AVX2 and AVX-512 alike) otherwise. This is the
/// only int8 conv/linear path the variable changes.
pub fn fbgemm_gemm_isa(case_isa: CaptureIsa, cpu: &CpuFeatures) -> Isa {
    match case_isa {
        CaptureIsa::Default if cpu.avx512_vnni => Isa::Vnni,
        _ => Isa::Avx2,
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
    /// How this path accumulates u8×i8 products, given FBGEMM's GEMM ISA ([`fbgemm_gemm_isa`])
    /// and the capture CPU. Only the GEMM follows `FBGEMM_ENABLE_INSTRUCTIONS`; the other paths
    /// read the CPU:
    ///
    /// - groupwise: FBGEMM `src/GroupwiseConv.cc` `getOrCreateConvKernel` picks
    ///   `GenConvKernel<avx512_vnni>` when `fbgemmHasAvx512VnniSupport()` (cpuinfo), else the
    ///   AVX-512 or AVX2 kernel; `src/CodeGenHelpers.h` `genU8I8S32FMA` emits `vpdpbusd` for
    ///   VNNI and `vpmaddubsw` + `vpmaddwd` otherwise;
    /// - depthwise: `src/GenerateI8Depthwise.cc` always emits AVX2 `vpmaddubsw` on tap pairs,
    ///   whatever the CPU or the variable;
    /// - oneDNN: its own CPU probe ([`CpuFeatures::onednn_has_vnni`]); convs refine this in
    ///   [`onednn_conv_accumulation`];
    /// - QNNPACK: exact int32 on every CPU.
    pub fn accumulation(self, isa: Isa, cpu: &CpuFeatures) -> Accumulation {
        let pairs = |exact: bool| {
            if exact {
                Accumulation::Exact
            } else {
                Accumulation::PairSaturatingI16
            }
        };
        match self {
            KernelPath::FbgemmGemm => pairs(isa == Isa::Vnni),
            KernelPath::FbgemmGroupwise => pairs(cpu.avx512_vnni),
            KernelPath::FbgemmDepthwise => Accumulation::PairSaturatingI16,
            KernelPath::Onednn => pairs(cpu.onednn_has_vnni()),
            KernelPath::Qnnpack => Accumulation::Exact,
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
/// (`aten/src/ATen/native/quantized/cpu/OnednnUtils.h`, `should_use_onednn_quant`) on Linux when
/// cpuinfo reports AVX512-VNNI (the CPU, not `FBGEMM_ENABLE_INSTRUCTIONS`), `groups <= 100` and
/// every weight zero point is 0; otherwise FBGEMM.
pub fn conv_path(
    engine: Engine,
    p: &Conv2dParams,
    weight_symmetric: bool,
    cpu: &CpuFeatures,
) -> KernelPath {
    match engine {
        Engine::X86 if cpu.avx512_vnni && p.groups <= 100 && weight_symmetric => KernelPath::Onednn,
        Engine::Fbgemm | Engine::X86 => fbgemm_conv_path(p, cpu),
        Engine::Qnnpack => KernelPath::Qnnpack,
        Engine::Onednn => KernelPath::Onednn,
    }
}

/// How oneDNN's int8 conv accumulates on the capture CPU. oneDNN probes the CPU itself
/// (`src/cpu/x64/cpu_isa_traits.hpp` `mayiuse`) and never reads `FBGEMM_ENABLE_INSTRUCTIONS`, so a
/// forced-AVX2 capture on a VNNI CPU still runs oneDNN's VNNI kernels. With AVX512-VNNI, AVX-VNNI
/// or AMX every int8 implementation accumulates exactly (`vpdpbusd` when `jcp.has_vnni`, AMX
/// `tdpbusd`, or `ref:any`); the rest of this comment is the AVX2 CPU without VNNI
/// ([`CpuFeatures::check_modelled`] refuses AVX-512 without VNNI).
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
pub fn onednn_conv_accumulation(p: &Conv2dParams, cpu: &CpuFeatures) -> Accumulation {
    let (icg, ocg) = (p.in_channels / p.groups, p.out_channels / p.groups);
    let jit_general = p.groups == 1 || (icg.is_multiple_of(4) && ocg.is_multiple_of(4));
    if !cpu.onednn_has_vnni() && jit_general && !p.is_depthwise() {
        Accumulation::PairSaturatingI16
    } else {
        Accumulation::Exact
    }
}

/// FBGEMM `ConvFastPath` (`src/FbgemmConv.cc`) for 2D convolutions: `takeDepthWiseFastPath`
/// (3×3, 5×5 or 7×7), then `fbgemmOptimizedGConv` (`src/Fbgemm.cc`), then pointwise and
/// im2col, which both run the packed GEMM. The direct-conv path only takes transposed convs.
/// The groupwise kernel needs at least `numOfGroupsTogether` groups
/// (`src/PackWeightMatrixForGConv.cc`): `max(1, W / (OC/G) / max(IC/G, 4))` with the vector width
/// `W` = 64 bytes on AVX-512 CPUs and 32 otherwise (the CPU, not `FBGEMM_ENABLE_INSTRUCTIONS`).
pub fn fbgemm_conv_path(p: &Conv2dParams, cpu: &CpuFeatures) -> KernelPath {
    let g = p.groups;
    let (ic, oc) = (p.in_channels, p.out_channels);
    let k = p.kernel_size;
    // takeDepthWiseFastPath
    let depthwise = g == ic
        && (oc == g || oc == 2 * g)
        && g.is_multiple_of(8)
        && p.stride.iter().all(|&s| s == 1 || s == 2)
        && k[0] == k[1]
        && matches!(k[0], 3 | 5 | 7)
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
        && g >= groups_together(cpg, kpg, cpu);
    if groupwise {
        return KernelPath::FbgemmGroupwise;
    }
    KernelPath::FbgemmGemm
}

/// FBGEMM `PackWeightMatrixForGConv::numOfGroupsTogether`.
fn groups_together(cpg: usize, kpg: usize, cpu: &CpuFeatures) -> usize {
    let width = if cpu.avx512 || cpu.avx512_vnni {
        64
    } else {
        32
    };
    if kpg == 0 {
        return 1;
    }
    (width / kpg / cpg.max(4)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fbgemm_depthwise_needs_multiple_of_8_channels_and_same_padding() {
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(16, 16, 16, 3, 1), &CpuFeatures::AVX2),
            KernelPath::FbgemmDepthwise
        );
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(6, 6, 6, 3, 1), &CpuFeatures::AVX2),
            KernelPath::FbgemmGemm
        );
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(16, 16, 16, 3, 0), &CpuFeatures::AVX2),
            KernelPath::FbgemmGemm
        );
        assert_eq!(
            fbgemm_conv_path(&Conv2dParams::square(16, 16, 16, 7, 3), &CpuFeatures::AVX2),
            KernelPath::FbgemmDepthwise
        );
        assert_eq!(
            KernelPath::FbgemmDepthwise.accumulation(Isa::Vnni, &CpuFeatures::AVX512_VNNI),
            Accumulation::PairSaturatingI16
        );
    }

    /// FBGEMM's groupwise kernel needs `numOfGroupsTogether` groups, which depends on the CPU's
    /// vector width: 2 channels per group need 8 groups on AVX-512 and 4 on AVX2.
    #[test]
    fn fbgemm_groupwise_needs_the_groups_one_vector_holds() {
        let (avx2, avx512) = (CpuFeatures::AVX2, CpuFeatures::AVX512_VNNI);
        // AVX-512 without VNNI has the 64-byte width too.
        let skylake = CpuFeatures {
            avx512_vnni: false,
            ..avx512
        };
        let path = |cpg: usize, g: usize, cpu: &CpuFeatures| {
            fbgemm_conv_path(&Conv2dParams::square(cpg * g, cpg * g, g, 3, 1), cpu)
        };
        for (cpg, min_avx2, min_avx512) in [(2, 4, 8), (4, 2, 4), (8, 1, 1), (16, 1, 1)] {
            for g in 1..=9 {
                let cpus = [
                    (&avx2, min_avx2),
                    (&avx512, min_avx512),
                    (&skylake, min_avx512),
                ];
                for (cpu, min) in cpus {
                    let want = if g >= min {
                        KernelPath::FbgemmGroupwise
                    } else {
                        KernelPath::FbgemmGemm
                    };
                    // One group of 8 or 16 channels is a plain conv, still groupwise.
                    assert_eq!(path(cpg, g, cpu), want, "cpg {cpg} g {g} {cpu:?}");
                }
            }
        }
        assert_eq!(path(3, 8, &avx512), KernelPath::FbgemmGemm);
    }

    /// A forced-AVX2 capture on a VNNI CPU is a hybrid: only FBGEMM's GEMM follows the variable.
    #[test]
    fn forced_avx2_on_vnni_changes_only_fbgemm_gemm() {
        let vnni = CpuFeatures::AVX512_VNNI;
        let avx2 = CpuFeatures::AVX2;
        let sat = Accumulation::PairSaturatingI16;
        let exact = Accumulation::Exact;
        assert_eq!(fbgemm_gemm_isa(CaptureIsa::Default, &vnni), Isa::Vnni);
        assert_eq!(fbgemm_gemm_isa(CaptureIsa::Avx2, &vnni), Isa::Avx2);
        assert_eq!(fbgemm_gemm_isa(CaptureIsa::Default, &avx2), Isa::Avx2);
        let forced = Isa::Avx2;
        assert_eq!(KernelPath::FbgemmGemm.accumulation(forced, &vnni), sat);
        assert_eq!(
            KernelPath::FbgemmGroupwise.accumulation(forced, &vnni),
            exact
        );
        assert_eq!(KernelPath::Onednn.accumulation(forced, &vnni), exact);
        assert_eq!(KernelPath::FbgemmDepthwise.accumulation(forced, &vnni), sat);
        assert_eq!(KernelPath::FbgemmGroupwise.accumulation(forced, &avx2), sat);
        assert_eq!(KernelPath::Onednn.accumulation(forced, &avx2), sat);
        let gconv = Conv2dParams::square(16, 16, 8, 3, 1);
        assert_eq!(fbgemm_conv_path(&gconv, &vnni), KernelPath::FbgemmGroupwise);
        assert_eq!(onednn_conv_accumulation(&gconv, &vnni), exact);
        // AVX-VNNI without AVX-512: FBGEMM pairs, oneDNN is exact, x86 conv stays on FBGEMM.
        let avx_vnni = CpuFeatures {
            avx_vnni: true,
            ..avx2
        };
        assert_eq!(fbgemm_gemm_isa(CaptureIsa::Default, &avx_vnni), Isa::Avx2);
        assert_eq!(KernelPath::Onednn.accumulation(Isa::Avx2, &avx_vnni), exact);
        assert_eq!(
            conv_path(Engine::X86, &gconv, true, &avx_vnni),
            KernelPath::FbgemmGroupwise
        );
    }

    #[test]
    fn cpu_classes_from_flags_and_unmodelled_ones_are_errors() {
        let flags = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let xeon = CpuFeatures::from_flags(&flags(
            "sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni avx_vnni",
        ));
        assert!(xeon.avx512_vnni && xeon.avx512 && xeon.avx_vnni);
        assert_eq!(xeon.class_name(), "AVX-512 VNNI");
        let haswell = CpuFeatures::from_flags(&flags("sse4_2 avx avx2 fma f16c"));
        assert_eq!(haswell, CpuFeatures::AVX2);
        let skylake = CpuFeatures::from_flags(&flags("avx2 avx512f avx512bw avx512vl avx512dq"));
        assert_eq!(skylake.class_name(), "AVX-512 without VNNI");
        // x86 convs stay on FBGEMM without AVX512-VNNI, so only the onednn engine is refused.
        for e in [Engine::Fbgemm, Engine::X86, Engine::Qnnpack] {
            assert!(skylake.check_modelled(e).is_ok(), "{e:?}");
        }
        let err = skylake
            .check_modelled(Engine::Onednn)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not modelled"), "{err}");
        let none = CpuFeatures::from_flags(&flags("sse4_2 avx"));
        assert!(none.check_modelled(Engine::Fbgemm).is_err());
        assert!(none.check_modelled(Engine::Qnnpack).is_ok());
        for cpu in [xeon, haswell, CpuFeatures::AVX512_VNNI] {
            for e in Engine::ALL {
                assert!(cpu.check_modelled(e).is_ok(), "{cpu:?} {e:?}");
            }
        }
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
            // The rule is on channels per group, not on totals: 3 in / 4 out and 2 in / 4 out
            // per group (6 input channels, 8 and 12 output) are ref:any by that rule (not read
            // from ONEDNN_VERBOSE).
            (conv(6, 8, [3, 3], [1, 1], [1, 1], [1, 1], 2), exact),
            (conv(6, 12, [3, 3], [1, 1], [1, 1], [1, 1], 3), exact),
        ];
        for (p, want) in cases {
            let avx2 = onednn_conv_accumulation(&p, &CpuFeatures::AVX2);
            assert_eq!(avx2, want, "{p:?}");
            let vnni = onednn_conv_accumulation(&p, &CpuFeatures::AVX512_VNNI);
            assert_eq!(vnni, exact, "{p:?}");
        }
        assert_eq!(KernelPath::Onednn.padding_taps(), PaddingTaps::Exact);
        assert_eq!(
            KernelPath::FbgemmGemm.padding_taps(),
            PaddingTaps::ThroughKernel
        );
    }

    /// The names reports, golden ids and the CLI use are PyTorch's and the golden format's
    /// (`golden/README.md`): each parses back, and equals the serde name where there is one.
    #[test]
    fn names_are_the_golden_and_cli_names() {
        let serde_name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        for (e, want) in Engine::ALL
            .iter()
            .zip(["fbgemm", "x86", "qnnpack", "onednn"])
        {
            assert_eq!(e.name(), want);
            assert_eq!(Engine::from_name(want).ok(), Some(*e));
            assert_eq!(serde_name(serde_json::json!(e)), want);
        }
        for (m, want) in [(Mode::Ptq, "ptq"), (Mode::Qat, "qat")] {
            assert_eq!(m.name(), want);
            assert_eq!(serde_name(serde_json::json!(m)), want);
        }
        for (i, want) in [(Isa::Vnni, "vnni"), (Isa::Avx2, "avx2")] {
            assert_eq!(i.name(), want);
            assert_eq!(Isa::from_name(want).ok(), Some(i));
        }
        assert_eq!(Isa::from_name("avx512vnni").ok(), Some(Isa::Vnni));
        assert_eq!(Isa::from_name("avx512").ok(), Some(Isa::Avx2));
        assert!(Isa::from_name("amx").is_err());
        for (i, want) in [(CaptureIsa::Default, "default"), (CaptureIsa::Avx2, "avx2")] {
            assert_eq!(i.name(), want);
            assert_eq!(serde_name(serde_json::json!(i)), want);
        }
        let paths = [
            (KernelPath::FbgemmGemm, "fbgemm-gemm"),
            (KernelPath::FbgemmDepthwise, "fbgemm-depthwise"),
            (KernelPath::FbgemmGroupwise, "fbgemm-groupwise"),
            (KernelPath::Onednn, "onednn"),
            (KernelPath::Qnnpack, "qnnpack"),
        ];
        for (k, want) in paths {
            assert_eq!(k.name(), want);
        }
    }

    /// Every CPU class of the table on [`CpuFeatures`], from its flags, with the engines it
    /// refuses and oneDNN's `has_vnni`.
    #[test]
    fn every_cpu_class_is_named_and_checked() {
        let flags = |s: &str| CpuFeatures::from_flags(&s.split(' ').collect::<Vec<_>>());
        let avx512 = "avx2 avx512f avx512bw avx512dq avx512vl";
        let amx = flags(&format!("{avx512} avx512_vnni amx_int8"));
        let vnni_alias = flags(&format!("{avx512} avx512vnni"));
        let avx_vnni = flags("avx2 avx_vnni");
        let avx2 = flags("avx2");
        let partial_avx512 = flags("avx2 avx512f avx512bw avx512dq");
        let none = flags("sse4_2");
        assert!(amx.amx_int8 && amx.avx512_vnni && amx.avx512);
        assert_eq!(vnni_alias, CpuFeatures::AVX512_VNNI);
        assert!(!partial_avx512.avx512, "avx512vl missing");
        let classes = [
            (amx, "AMX"),
            (vnni_alias, "AVX-512 VNNI"),
            (flags(avx512), "AVX-512 without VNNI"),
            (avx_vnni, "AVX2 + AVX-VNNI"),
            (avx2, "AVX2"),
            (partial_avx512, "AVX2"),
            (none, "no AVX2"),
        ];
        for (cpu, want) in classes {
            assert_eq!(cpu.class_name(), want, "{cpu:?}");
        }
        // AMX alone (no VNNI flag) still gives oneDNN an exact instruction.
        let amx_only = CpuFeatures {
            amx_int8: true,
            ..CpuFeatures::AVX2
        };
        assert!(amx_only.onednn_has_vnni() && avx_vnni.onednn_has_vnni());
        assert!(!avx2.onednn_has_vnni() && !flags(avx512).onednn_has_vnni());
        let err = none.check_modelled(Engine::Onednn).unwrap_err().to_string();
        assert!(
            err.contains("no AVX2") && err.contains("below AVX2"),
            "{err}"
        );
        let err = none.check_modelled(Engine::X86).unwrap_err().to_string();
        assert!(
            err.contains("engine x86") && err.contains("need AVX2"),
            "{err}"
        );
        assert!(avx2.check_modelled(Engine::Onednn).is_ok());
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let host = CpuFeatures::host();
            let avx512 =
                has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
            assert_eq!(host.avx2, has!("avx2"));
            assert_eq!(host.avx512, avx512);
            assert_eq!(host.avx512_vnni, has!("avx512vnni"));
            assert_eq!(host.avx_vnni, has!("avxvnni"));
        }
        assert!(amx_int8_in_cpuid_7_edx(1 << 25));
        assert!(amx_int8_in_cpuid_7_edx(u32::MAX));
        assert!(!amx_int8_in_cpuid_7_edx(0));
        assert!(!amx_int8_in_cpuid_7_edx(!(1 << 25)));
        let amx_no_avx2 = CpuFeatures {
            amx_int8: true,
            ..CpuFeatures::default()
        };
        assert!(amx_no_avx2.check_modelled(Engine::Onednn).is_ok());
    }

    /// Only oneDNN pairs per tap, skips padded taps, and has an unknown requantization order;
    /// only QNNPACK requantizes without FBGEMM's float bias.
    #[test]
    fn path_properties() {
        let all = [
            KernelPath::FbgemmGemm,
            KernelPath::FbgemmDepthwise,
            KernelPath::FbgemmGroupwise,
            KernelPath::Onednn,
            KernelPath::Qnnpack,
        ];
        for k in all {
            let onednn = k == KernelPath::Onednn;
            assert_eq!(k.pairs_per_tap(), onednn, "{k:?}");
            assert_eq!(k.requant_order_unknown(), onednn, "{k:?}");
            assert_eq!(k.padding_taps() == PaddingTaps::Exact, onednn, "{k:?}");
            assert_eq!(k.uses_fbgemm_requant(), k != KernelPath::Qnnpack, "{k:?}");
        }
        let exact = Accumulation::Exact;
        for cpu in [CpuFeatures::AVX2, CpuFeatures::AVX512_VNNI] {
            for isa in [Isa::Avx2, Isa::Vnni] {
                assert_eq!(KernelPath::Qnnpack.accumulation(isa, &cpu), exact);
            }
        }
        assert_eq!(linear_path(Engine::Fbgemm), KernelPath::FbgemmGemm);
        assert_eq!(linear_path(Engine::Qnnpack), KernelPath::Qnnpack);
        assert_eq!(linear_path(Engine::Onednn), KernelPath::Onednn);
        let p = Conv2dParams::square(4, 8, 1, 3, 1);
        // should_use_onednn_quant: at most 100 groups.
        let dw = |g| Conv2dParams::square(g, g, g, 3, 0);
        let cases = [
            (Engine::Fbgemm, p, true, KernelPath::FbgemmGemm),
            (Engine::Qnnpack, p, true, KernelPath::Qnnpack),
            (Engine::Onednn, p, false, KernelPath::Onednn),
            (Engine::X86, dw(100), true, KernelPath::Onednn),
            (Engine::X86, dw(101), true, KernelPath::FbgemmGemm),
        ];
        for (engine, p, symmetric, want) in cases {
            let got = conv_path(engine, &p, symmetric, &CpuFeatures::AVX512_VNNI);
            assert_eq!(got, want, "{engine:?} {p:?} {symmetric}");
        }
    }

    #[test]
    fn x86_conv_uses_onednn_only_with_symmetric_weights_on_vnni() {
        let p = Conv2dParams::square(4, 8, 1, 3, 1);
        let (vnni, avx2) = (&CpuFeatures::AVX512_VNNI, &CpuFeatures::AVX2);
        assert_eq!(conv_path(Engine::X86, &p, true, vnni), KernelPath::Onednn);
        assert_eq!(
            conv_path(Engine::X86, &p, false, vnni),
            KernelPath::FbgemmGemm
        );
        assert_eq!(
            conv_path(Engine::X86, &p, true, avx2),
            KernelPath::FbgemmGemm
        );
        assert_eq!(linear_path(Engine::X86), KernelPath::FbgemmGemm);
        assert!(Engine::from_name("tpu").is_err());
    }
}
