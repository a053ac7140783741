//! The x86 kernels: the conformance suite (`qparity::kernels::conformance`) instantiated for
//! every SIMD kernel this CPU has, the portable kernels and the depthwise 3×3 kernel, plus what
//! the suite does not check (which kernels exist, which path a layer takes, constructor errors).
//! `QPARITY_REQUIRE_ISA=avx2,avx512vnni,amx` makes the run fail when a named extension has no kernel
//! here (nothing is skipped silently).
#![cfg(target_arch = "x86_64")]

use qparity::kernels::x86::conv::{Conv2d, Conv2dParams, Depthwise3x3, DepthwiseKernel, Layout};
use qparity::kernels::x86::{Kernel, KernelKind, PackedLinear};
use qparity::kernels::{Accumulation, Int8Gemm, Isa, QuantConv, Requant};
use qparity::numerics::requant::FbgemmRequant;

/// Every x86 kernel: the SIMD kernels this CPU supports, then the portable ones.
fn kernels() -> Vec<Box<dyn Int8Gemm>> {
    let mut v = Kernel::supported();
    v.push(Kernel::portable(Accumulation::Exact));
    v.push(Kernel::portable(Accumulation::PairSaturatingI16));
    v.into_iter()
        .map(|k| Box::new(k) as Box<dyn Int8Gemm>)
        .collect()
}

fn conv_only() -> Vec<Box<dyn QuantConv>> {
    vec![Box::new(DepthwiseKernel)]
}

qparity::kernel_conformance_tests!(kernels(), conv_only());

#[test]
fn every_kernel_is_listed_and_has_fused_entry_points() {
    let names: Vec<_> = qparity::kernels::available()
        .iter()
        .map(|k| k.name())
        .collect();
    for k in Kernel::supported() {
        assert!(
            names.contains(&k.name()),
            "{} missing from available()",
            k.name()
        );
    }
    for kind in KernelKind::SIMD {
        let isa = kind.isa().expect("SIMD kernels need an extension");
        assert_eq!(
            Kernel::new(kind).is_some(),
            isa.detected(),
            "{}",
            kind.name()
        );
    }
    if Isa::Avx2.detected() {
        assert!(names.contains(&"x86-avx2-pair-sat16"));
    }
    // Exact accumulation prefers AMX, then AVX-512 VNNI.
    let best = Kernel::best(Accumulation::Exact).kind();
    if Isa::Amx.detected() {
        assert_eq!(best, KernelKind::Amx);
    } else if Isa::Avx512Vnni.detected() {
        assert_eq!(best, KernelKind::Avx512Vnni);
    }
    for k in kernels() {
        assert!(k.quant_gemm().is_some(), "{} has no QuantGemm", k.name());
        assert!(k.quant_conv().is_some(), "{} has no QuantConv", k.name());
    }
}

fn rule(n: usize) -> Requant {
    Requant::Fbgemm(FbgemmRequant::new(
        0.05,
        &[0.01],
        false,
        None,
        n,
        0.1,
        0,
        false,
    ))
}

#[test]
fn convs_read_activations_in_place_and_depthwise_runs_simd() {
    // A 3×3 conv with 16 input channels per group reads A straight from the padded image on
    // every SIMD kernel (no im2col matrix); the suite checks its numerics.
    let p = Conv2dParams::square(16, 20, 1, 3, 1);
    for k in Kernel::supported() {
        let conv = Conv2d::with_kernel(k, &vec![1; 20 * 16 * 9], p, &[0], rule(20)).unwrap();
        assert!(conv.is_implicit(), "{} should feed A in place", k.name());
    }
    let dw = Depthwise3x3::new(&[1; 4 * 9], 4, (1, 1), (1, 1), &[0], rule(4)).unwrap();
    assert_eq!(dw.is_simd(), Isa::Avx2.detected());
}

#[test]
fn constructors_reject_bad_input() {
    let r = rule(2);
    assert!(PackedLinear::new(&[0; 5], 2, 3, &[0], r.clone(), Accumulation::Exact).is_err());
    assert!(PackedLinear::new(&[0; 6], 2, 3, &[0, 0, 0], r.clone(), Accumulation::Exact).is_err());
    assert!(PackedLinear::new(&[0; 6], 2, 3, &[128], r.clone(), Accumulation::Exact).is_err());
    assert!(PackedLinear::new(&[0; 6], 2, 3, &[0], rule(1), Accumulation::Exact).is_err());
    let lin = PackedLinear::new(&[0; 6], 2, 3, &[0], r.clone(), Accumulation::Exact).unwrap();
    assert!(lin.run(&[0; 5], 2, 0, &mut [0; 4]).is_err());
    assert!(lin.run(&[0; 6], 2, 300, &mut [0; 4]).is_err());
    assert!(lin.run(&[0; 6], 2, 0, &mut [0; 3]).is_err());
    let p = Conv2dParams::square(3, 4, 2, 3, 0);
    assert!(Conv2d::new(&[0; 54], p, &[0], rule(4), Accumulation::Exact).is_err());
    let p = Conv2dParams::square(4, 4, 2, 3, 1);
    let conv = Conv2d::new(&[0; 72], p, &[0], rule(4), Accumulation::Exact).unwrap();
    let mut out = vec![0u8; 4 * 9];
    assert!(conv
        .run(Layout::Nchw, &[0; 35], 1, 3, 3, 0, &mut out)
        .is_err());
    assert!(conv
        .run(Layout::Nhwc, &[0; 36], 1, 3, 3, -1, &mut out)
        .is_err());
    assert!(Depthwise3x3::new(&[0; 35], 4, (1, 1), (1, 1), &[0], rule(4)).is_err());
    assert!(Depthwise3x3::new(&[0; 36], 4, (0, 1), (1, 1), &[0], rule(4)).is_err());
}

/// Convs whose A tiles the AMX kernel reads in place (whole rows of a 1×1 conv, 16 pixels of one
/// output row per tile for 64-byte segments, plain or dilated), gathers (tiles across output
/// rows, the last rows), or gets from the chunked im2col (7×7 on 3 channels), across row chunks
/// and column tails, with per-channel weight zero points: raw and requantized outputs of every
/// exact SIMD kernel equal the portable kernel's.
#[test]
fn exact_kernels_equal_portable_on_tiled_convs() {
    // [IC, OC, kernel, stride, padding, dilation, H, W]
    let shapes = [
        [64, 40, 3, 1, 1, 1, 5, 21],
        [64, 72, 1, 2, 0, 1, 9, 40],
        [128, 32, 3, 2, 1, 1, 7, 40],
        [64, 16, 3, 1, 2, 2, 6, 24],
        [64, 48, 1, 1, 0, 1, 3, 23],
        [64, 32, 3, 1, 1, 1, 12, 50],
        [3, 8, 7, 2, 3, 1, 60, 60],
        // AMX computes these over a virtual width (the padded one); the last windows of the
        // 7×7 run past the image.
        [256, 40, 3, 1, 1, 1, 7, 7],
        [64, 64, 3, 1, 1, 1, 14, 14],
        // Unpadded channels-last inputs are read in place (1×1 above), unless the virtual width
        // reads past them, as this valid 3×3 does.
        [64, 32, 3, 1, 0, 1, 10, 12],
    ];
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let exact: Vec<Kernel> = Kernel::supported()
        .into_iter()
        .filter(|k| k.kind().accumulation() == Accumulation::Exact)
        .collect();
    assert!(!exact.is_empty() || !Isa::Avx2.detected());
    for [ic, oc, k, s, pad, d, h, w] in shapes {
        let p = Conv2dParams {
            in_channels: ic,
            out_channels: oc,
            kernel_size: [k, k],
            stride: [s, s],
            padding: [pad, pad],
            dilation: [d, d],
            groups: 1,
        };
        let wts: Vec<i8> = (0..oc * ic * k * k).map(|_| next() as i8).collect();
        let zps: Vec<i32> = (0..oc).map(|j| (j % 7) as i32 - 3).collect();
        // Two images: the second is read where the first ends (in place or through the image).
        let nb = 2;
        let x: Vec<u8> = (0..nb * ic * h * w).map(|_| next() as u8).collect();
        let span = d * (k - 1) + 1;
        let (oh, ow) = ((h + 2 * pad - span) / s + 1, (w + 2 * pad - span) / s + 1);
        let n = nb * oc * oh * ow;
        // NCHW ↔ NHWC of `nb` images of `c` channels and `hh × ww` pixels.
        let to_nhwc = |v: &[u8], c: usize, hh: usize, ww: usize| -> Vec<u8> {
            let mut t = vec![0; v.len()];
            for (i, &e) in v.iter().enumerate() {
                let (b, ch, px) = (i / (c * hh * ww), i / (hh * ww) % c, i % (hh * ww));
                t[(b * hh * ww + px) * c + ch] = e;
            }
            t
        };
        let port = Kernel::portable(Accumulation::Exact);
        // The anchor: the portable kernel on NCHW (a padded copy, no in-place read, no virtual
        // width); the NHWC runs get the same images transposed.
        let anchor = Conv2d::with_kernel(port, &wts, p, &zps, rule(oc)).unwrap();
        let mut q_nchw = vec![0u8; n];
        anchor
            .run(Layout::Nchw, &x, nb, h, w, 5, &mut q_nchw)
            .unwrap();
        let x_nhwc = to_nhwc(&x, ic, h, w);
        for layout in [Layout::Nhwc, Layout::Nchw] {
            let (x, want) = match layout {
                Layout::Nhwc => (&x_nhwc, to_nhwc(&q_nchw, oc, oh, ow)),
                Layout::Nchw => (&x, q_nchw.clone()),
            };
            let mut raw_want = vec![0i32; 0];
            let mut q_want = vec![0u8; 0];
            for kern in std::iter::once(port).chain(exact.iter().copied()) {
                let conv = Conv2d::with_kernel(kern, &wts, p, &zps, rule(oc)).unwrap();
                let mut raw = vec![0i32; n];
                let mut q = vec![0u8; n];
                conv.run_raw(layout, x, nb, h, w, 5, &mut raw).unwrap();
                conv.run(layout, x, nb, h, w, 5, &mut q).unwrap();
                assert_eq!(q, want, "{} {p:?} {layout:?} against NCHW", kern.name());
                if kern == port {
                    (raw_want, q_want) = (raw, q);
                    assert!(
                        q_want.iter().any(|&v| v != q_want[0]),
                        "{p:?}: constant output"
                    );
                } else {
                    let at = |v: &[i32]| v.iter().zip(&raw_want).position(|(a, b)| a != b);
                    assert_eq!(at(&raw), None, "{} {p:?} {layout:?} raw", kern.name());
                    assert_eq!(q, q_want, "{} {p:?} {layout:?}", kern.name());
                }
            }
        }
    }
}
