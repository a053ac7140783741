//! The ARM kernels: the conformance suite (`qparity::kernels::conformance`) instantiated for
//! every kernel this CPU has, plus what the suite does not check (which kernels exist and which
//! one is chosen). Runs on aarch64 only (natively or under qemu via `cargo xtask arm-test`).
//!
//! `QPARITY_REQUIRE_ISA=neon,dotprod,i8mm` makes the run fail unless a kernel of each listed
//! extension was available and exercised. `QPARITY_CONFORMANCE_REPORT=<file>` appends one
//! summary line per check and kernel to that file.
#![cfg(target_arch = "aarch64")]

use qparity::kernels::arm::{self, Kernel, KernelKind};
use qparity::kernels::{Int8Gemm, Isa};

fn kernels() -> Vec<Box<dyn Int8Gemm>> {
    arm::available()
}

qparity::kernel_conformance_tests!(kernels());

#[test]
fn best_kernel_is_the_widest_supported_and_all_are_listed() {
    let want = if Isa::I8mm.detected() {
        KernelKind::I8mmUsmmla
    } else if Isa::Dotprod.detected() {
        KernelKind::DotprodSdot
    } else {
        KernelKind::NeonSmlal
    };
    assert_eq!(Kernel::best().kind(), want);
    for kind in KernelKind::ALL {
        assert_eq!(
            Kernel::new(kind).is_some(),
            kind.isa().detected(),
            "{}",
            kind.name()
        );
    }
    let names: Vec<&str> = qparity::kernels::available()
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
    assert!(
        names.contains(&"arm-neon-smlal"),
        "NEON is part of every aarch64 CPU"
    );
    for k in kernels() {
        assert!(
            k.quant_gemm().is_some() && k.quant_conv().is_some(),
            "{}",
            k.name()
        );
    }
}
