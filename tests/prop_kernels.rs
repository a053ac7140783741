//! Kernel properties: every available kernel equals the reference kernel of its accumulation
//! model, and the pair-saturating model's relation to exact accumulation (reduce_range makes it
//! exact; full-range activations saturate exactly where `ops::gemm::first_saturating_pair` predicts).

use proptest::prelude::*;
use qparity::gen::{self, check_property, ConvCase, GemmCase};
use qparity::kernels::reference::{sat16, Reference};
use qparity::kernels::{self, Accumulation};
use qparity::ops;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const PERSIST: &str = "tests/proptest-regressions/prop_kernels.txt";

#[test]
fn every_kernel_equals_reference_on_gemm() {
    let ks = kernels::available();
    assert!(ks.len() >= 2, "the reference kernels are always available");
    for kernel in &ks {
        let name = format!("{}_equals_reference_gemm", kernel.name());
        check_property(&name, PERSIST, gen::gemm_case(), GemmCase::repro, |g| {
            let want = g.run(&Reference::new(kernel.accumulation()));
            let got = g.run(kernel.as_ref());
            for i in 0..want.len() {
                prop_assert_eq!(
                    got[i],
                    want[i],
                    "kernel {} at c[{}][{}]",
                    kernel.name(),
                    i / g.n,
                    i % g.n
                );
            }
            Ok(())
        });
    }
}

/// Tall GEMMs (M = 14..80): the AMX kernel's tile path and every kernel's M tails.
#[test]
fn every_kernel_equals_reference_on_tall_gemm() {
    for kernel in &kernels::available() {
        let name = format!("{}_equals_reference_tall_gemm", kernel.name());
        check_property(
            &name,
            PERSIST,
            gen::gemm_case_tall(),
            GemmCase::repro,
            |g| {
                let want = g.run(&Reference::new(kernel.accumulation()));
                let got = g.run(kernel.as_ref());
                prop_assert!(g.m >= 14);
                prop_assert_eq!(got, want, "kernel {}", kernel.name());
                Ok(())
            },
        );
    }
}

#[test]
fn every_kernel_equals_reference_on_conv() {
    for kernel in &kernels::available() {
        let name = format!("{}_equals_reference_conv", kernel.name());
        check_property(&name, PERSIST, gen::conv_case(), ConvCase::repro, |c| {
            let want = c.run(&Reference::new(kernel.accumulation()));
            let got = c.run(kernel.as_ref());
            prop_assert!(want.is_ok(), "generated conv rejected: {:?}", want);
            prop_assert_eq!(got.ok(), want.ok(), "kernel {}", kernel.name());
            Ok(())
        });
    }
}

/// The x86 conv (weights packed once, activations read in place from the padded image or via
/// im2col) on every x86 kernel equals the reference accumulators.
#[cfg(target_arch = "x86_64")]
#[test]
fn x86_conv_equals_reference() {
    check_property(
        "x86_conv_equals_reference",
        PERSIST,
        gen::conv_case(),
        ConvCase::repro,
        |c| {
            gen::fuzz::check_conv(&c);
            Ok(())
        },
    );
}

#[test]
fn reduce_range_activations_never_saturate_pairs() {
    check_property(
        "reduce_range_exact",
        PERSIST,
        gen::gemm_case_reduced(),
        GemmCase::repro,
        |g| {
            prop_assert!(g.a.iter().all(|&v| v <= 127));
            let exact = g.reference(Accumulation::Exact);
            let pair = g.reference(Accumulation::PairSaturatingI16);
            prop_assert_eq!(pair, exact);
            for i in 0..g.m {
                for j in 0..g.n {
                    let a = &g.a[i * g.k..(i + 1) * g.k];
                    let b = &g.b[j * g.k..(j + 1) * g.k];
                    prop_assert_eq!(ops::gemm::first_saturating_pair(a, b), None);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn full_range_activations_saturate_at_predicted_elements() {
    let cases = AtomicUsize::new(0);
    let saturating_cases = AtomicUsize::new(0);
    check_property(
        "full_range_saturation_predicted",
        PERSIST,
        gen::gemm_case(),
        GemmCase::repro,
        |g| {
            cases.fetch_add(1, Relaxed);
            let exact = g.reference(Accumulation::Exact);
            let pair = g.reference(Accumulation::PairSaturatingI16);
            let mut any = false;
            for i in 0..g.m {
                for j in 0..g.n {
                    let a = &g.a[i * g.k..(i + 1) * g.k];
                    let b = &g.b[j * g.k..(j + 1) * g.k];
                    let e = i * g.n + j;
                    let first = ops::gemm::first_saturating_pair(a, b);
                    let pairs = gen::saturating_pairs(a, b);
                    prop_assert_eq!(first, pairs.first().copied());
                    if first.is_none() {
                        prop_assert_eq!(pair[e], exact[e], "c[{}][{}] unpredicted", i, j);
                    } else {
                        any = true;
                        let loss = pairs
                            .iter()
                            .fold(0i32, |s, &(_, p)| s.wrapping_add(p - sat16(p)));
                        prop_assert_eq!(pair[e], exact[e].wrapping_sub(loss), "c[{}][{}]", i, j);
                    }
                }
            }
            if any {
                saturating_cases.fetch_add(1, Relaxed);
            }
            Ok(())
        },
    );
    let (n, s) = (cases.load(Relaxed), saturating_cases.load(Relaxed));
    assert!(
        s * 5 >= n,
        "non-vacuity: only {s} of {n} generated GEMMs had a saturating pair"
    );
}
