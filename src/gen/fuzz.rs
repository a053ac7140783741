//! Fuzz target bodies. Each takes raw bytes, builds a legal case with [`arbitrary`] and panics
//! (with a reproducer) when a law is violated. The cargo-fuzz wrappers in `fuzz/fuzz_targets/`
//! call these, and `tests/corpus_replay.rs` replays every committed corpus file through them on
//! stable Rust.

use super::{saturating_pairs, ConvCase, GemmCase, LayerCase, QParamCase};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine, Isa};
use crate::kernels::reference::sat16;
use crate::kernels::{self, Accumulation};
use crate::numerics::bound::Pred;
use crate::numerics::observer::{Observer, ObserverClass, ObserverConfig};
use crate::numerics::qparams::{
    fbgemm_choose_qparams, observer_qparams, ObservedQParams, ObserverQParamsConfig, QScheme,
};
use crate::numerics::quantize::{aten, decomposed, fake_quant};
use arbitrary::{Arbitrary, Unstructured};

/// Names of the targets, as used for `fuzz/fuzz_targets/<name>.rs` and `corpus/<name>/`.
pub const TARGETS: [&str; 6] = [
    "kernel_agreement",
    "flow_relations",
    "qparams_observers",
    "golden_loader",
    "quantize",
    "graph_agreement",
];

/// Runs the target called `name` on `data`. Unknown names are an error.
pub fn run_target(name: &str, data: &[u8]) -> Result<(), String> {
    match name {
        "kernel_agreement" => kernel_agreement(data),
        "flow_relations" => flow_relations(data),
        "qparams_observers" => qparams_observers(data),
        "golden_loader" => golden_loader(data),
        "quantize" => quantize(data),
        "graph_agreement" => graph_agreement(data),
        other => return Err(format!("unknown fuzz target {other:?}")),
    }
    Ok(())
}

/// FBGEMM `QuantizeAvx2` re-derived in i64/f64 from its description: the f32 product `x·inv`
/// (a product of two f32 values is exact in f64, so one rounding to f32 is the f32 product),
/// `min(v, 2^31−128)` with NaN → the constant, round half to even with out-of-range → INT32_MIN,
/// wrapping int32 `+ zp`, clamp.
pub fn quantize_avx2_model(x: f32, inv: f32, zp: i64, lo: i64, hi: i64) -> i64 {
    let v = (x as f64 * inv as f64) as f32 as f64;
    let v = if v.is_nan() || v > 2147483520.0 {
        2147483520.0
    } else {
        v
    };
    let r = v.round_ties_even();
    let r: i64 = if !(-2147483648.0..2147483648.0).contains(&r) {
        -2147483648
    } else {
        r as i64
    };
    let wrapped = (r + zp + (1i64 << 31)).rem_euclid(1i64 << 32) - (1i64 << 31);
    wrapped.clamp(lo, hi)
}

/// Every available kernel equals the reference kernel of its accumulation model (GEMM and conv),
/// and the pair-saturating reference differs from exact accumulation exactly by the saturation
/// of the pairs [`crate::ops::gemm::first_saturating_pair`] finds.
pub fn kernel_agreement(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(g) = GemmCase::arbitrary(&mut u) else {
        return;
    };
    check_gemm(&g);
    if let Ok(c) = ConvCase::arbitrary(&mut u) {
        check_conv(&c);
    }
}

/// Panics unless every optimized kernel agrees with the reference on `g`, and pair saturation
/// changes the exact result by exactly the predicted pairs.
pub fn check_gemm(g: &GemmCase) {
    let exact = g.reference(Accumulation::Exact);
    let pair = g.reference(Accumulation::PairSaturatingI16);
    for kernel in kernels::available()
        .iter()
        .filter(|k| !k.name().starts_with("reference"))
    {
        let want = match kernel.accumulation() {
            Accumulation::Exact => &exact,
            Accumulation::PairSaturatingI16 => &pair,
        };
        let got = g.run(kernel.as_ref());
        if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
            panic!(
                "kernel {} differs from the reference at c[{}][{}]: {} vs {}\n{}",
                kernel.name(),
                i / g.n,
                i % g.n,
                got[i],
                want[i],
                g.repro()
            );
        }
    }
    for i in 0..g.m {
        for j in 0..g.n {
            let (a, b) = (&g.a[i * g.k..(i + 1) * g.k], &g.b[j * g.k..(j + 1) * g.k]);
            let loss = saturating_pairs(a, b)
                .iter()
                .fold(0i32, |s, &(_, p)| s.wrapping_add(p - sat16(p)));
            assert_eq!(
                pair[i * g.n + j],
                exact[i * g.n + j].wrapping_sub(loss),
                "pair saturation at c[{i}][{j}] is not explained by the predicted pairs\n{}",
                g.repro()
            );
        }
    }
}

/// Panics unless every optimized kernel agrees with the reference on the conv problem `c`.
pub fn check_conv(c: &ConvCase) {
    let reference = |acc| {
        c.run(&crate::kernels::reference::Reference::new(acc))
            .unwrap_or_else(|e| panic!("generated conv case rejected: {e}\n{}", c.repro()))
    };
    let (exact, pair) = (
        reference(Accumulation::Exact),
        reference(Accumulation::PairSaturatingI16),
    );
    let want = |acc| match acc {
        Accumulation::Exact => &exact,
        Accumulation::PairSaturatingI16 => &pair,
    };
    // The reference kernels in `available()` are what `want` ran.
    for kernel in kernels::available()
        .iter()
        .filter(|k| !k.name().starts_with("reference"))
    {
        let got = c.run(kernel.as_ref()).expect("same shapes");
        assert_eq!(
            &got,
            want(kernel.accumulation()),
            "kernel {} differs from the reference on a conv\n{}",
            kernel.name(),
            c.repro()
        );
    }
    #[cfg(target_arch = "x86_64")]
    check_x86_conv(c, want);
}

/// The x86 conv (packed weights, activations fed in place from the padded image or through
/// im2col) on every x86 SIMD kernel equals the reference accumulators `want(model)`.
#[cfg(target_arch = "x86_64")]
fn check_x86_conv<'a>(c: &ConvCase, want: impl Fn(Accumulation) -> &'a Vec<i32>) {
    use crate::kernels::x86::conv::{Conv2d, Layout};
    use crate::kernels::x86::Kernel;
    use crate::kernels::Requant;
    let [nb, _, h, w] = c.input_shape;
    let p = c.params;
    // Any valid rule: `run_raw` returns the accumulators before it.
    let rule = Requant::Qnnpack(crate::numerics::requant::QnnpackRequant::new(
        1.0,
        &[1.0],
        None,
        p.out_channels,
        1.0,
        0,
        false,
    ));
    // The SIMD kernels (the portable one is the reference dot product itself).
    for id in Kernel::supported() {
        let want = want(id.accumulation());
        let conv = Conv2d::with_kernel(id, &c.weight, p, &c.w_zp, rule.clone())
            .unwrap_or_else(|e| panic!("x86 conv rejected a valid case: {e}\n{}", c.repro()));
        let mut got = vec![0i32; want.len()];
        conv.run_raw(Layout::Nchw, &c.input, nb, h, w, c.a_zp, &mut got)
            .unwrap_or_else(|e| panic!("x86 conv failed: {e}\n{}", c.repro()));
        assert_eq!(
            &got,
            want,
            "x86 conv on {} (in place: {}) differs from the reference\n{}",
            id.name(),
            conv.is_implicit(),
            c.repro()
        );
    }
}

/// Decomposed flow == reference flow when the quant range is the full 0..255 (ambiguous
/// elements aside).
pub fn flow_relations(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(c) = LayerCase::arbitrary(&mut u) {
        check_flow_relation(&c);
    }
}

/// Compares the two reference flows' predictions; returns `(decided, total)` element counts.
pub fn check_flow_relation(c: &LayerCase) -> (usize, usize) {
    let ctx = |flow| Ctx {
        flow,
        engine: Engine::Fbgemm,
        isa: Isa::Avx2,
        cpu: crate::engine::CpuFeatures::AVX2,
    };
    let r = c
        .layer
        .run(&ctx(Flow::ConvertToReferenceFx), &c.input, &c.out)
        .unwrap_or_else(|e| panic!("reference flow rejected a legal case: {e}\n{}", c.repro()));
    let d = c
        .layer
        .run(&ctx(Flow::ConvertToReferenceDecomposedFx), &c.input, &c.out)
        .unwrap_or_else(|e| panic!("decomposed flow rejected a legal case: {e}\n{}", c.repro()));
    assert_eq!(r.shape, d.shape);
    let (rp, dp) = (
        r.ints().expect("integer output"),
        d.ints().expect("integer output"),
    );
    let mut decided = 0;
    for (i, (a, b)) in rp.iter().zip(dp).enumerate() {
        if let (Pred::Exact(x), Pred::Exact(y)) = (a, b) {
            assert_eq!(
                x,
                y,
                "element {i}: convert_to_reference_fx predicts {x}, decomposed {y}\n{}",
                c.repro()
            );
            decided += 1;
        }
    }
    (decided, rp.len())
}

/// PyTorch quirk (observer.py `_calculate_qparams`): symmetric quint8 without a custom range
/// always uses zero point 128, even when reduce_range makes the range 0..127, so the zero point
/// is outside the quant range there.
pub fn sym_u8_reduce_quirk(q: &QParamCase, sym: bool) -> bool {
    sym && q.dtype.is_unsigned8() && q.reduce_range && q.custom.is_none()
}

fn finite_stat(v: f32) -> bool {
    v.is_finite() && v.abs() <= 1e30
}

/// Qparam choosers and observers on arbitrary float data: never panic; with finite, moderate
/// statistics the scale is finite and > 0, the zero point lies in the range and 0.0 round-trips
/// exactly.
pub fn qparams_observers(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(q), Ok(a), Ok(b)) = (
        QParamCase::arbitrary(&mut u),
        f32::arbitrary(&mut u),
        f32::arbitrary(&mut u),
    ) else {
        return;
    };
    let sym = bool::arbitrary(&mut u).unwrap_or(false);
    check_qparams(&q, a, b, sym);
    let xs: Vec<f32> = (0..u.int_in_range(0usize..=64).unwrap_or(0))
        .map_while(|_| f32::arbitrary(&mut u).ok())
        .collect();
    check_observer(&q, sym, &xs);
}

/// The per-tensor qscheme: symmetric or affine.
pub fn per_tensor_qscheme(symmetric: bool) -> QScheme {
    if symmetric {
        QScheme::PerTensorSymmetric
    } else {
        QScheme::PerTensorAffine
    }
}

/// The qparams chooser configuration of a quant case, per-tensor, with PyTorch's default eps.
pub fn qparams_config(q: &QParamCase, symmetric: bool) -> ObserverQParamsConfig {
    ObserverQParamsConfig {
        dtype: q.dtype,
        qscheme: per_tensor_qscheme(symmetric),
        range: q.range,
        eps: f32::EPSILON,
    }
}

/// Checks both choosers on statistics `(min(a, b), max(a, b))`.
pub fn check_qparams(q: &QParamCase, a: f32, b: f32, sym: bool) {
    let (lo, hi) = (q.range.quant_min, q.range.quant_max);
    let cfg = qparams_config(q, sym);
    let (mn, mx) = if a <= b { (a, b) } else { (b, a) };
    let res = observer_qparams(&cfg, &[mn], &[mx]);
    if finite_stat(a) && finite_stat(b) {
        let p = res.unwrap_or_else(|e| panic!("observer_qparams({mn}, {mx}) failed: {e}"));
        if !check_observed(q, sym, &p, "observer_qparams", mn, mx) {
            return;
        }
        // With preserve_sparsity FBGEMM divides by (qmax − qmin)/2, which is 0 for a two-value
        // range: PyTorch then gets an infinite scale (reproduced, see qparams tests), so the
        // invariant only holds for wider ranges.
        if hi > lo && !(sym && (hi - lo) / 2 == 0) {
            let f = fbgemm_choose_qparams(mn, mx, lo as i32, hi as i32, sym);
            check_pair(f.scale, f.zero_point as i64, lo, hi, "fbgemm", mn, mx, q);
        }
    }
}

/// Checks the per-tensor qparams an observer `who` chose for statistics `(mn, mx)`: zero point
/// 128 under [`sym_u8_reduce_quirk`] (returns false), else the invariants of `check_pair`.
fn check_observed(
    q: &QParamCase,
    sym: bool,
    p: &ObservedQParams,
    who: &str,
    mn: f32,
    mx: f32,
) -> bool {
    if sym_u8_reduce_quirk(q, sym) {
        assert_eq!(p.zero_point[0], 128, "{}", q.repro());
        return false;
    }
    let (lo, hi) = (q.range.quant_min, q.range.quant_max);
    check_pair(p.scale[0], p.zero_point[0], lo, hi, who, mn, mx, q);
    true
}

#[allow(clippy::too_many_arguments)]
fn check_pair(s: f32, zp: i64, lo: i64, hi: i64, who: &str, mn: f32, mx: f32, q: &QParamCase) {
    let ctx = || {
        format!(
            "{who}(min {mn:e}, max {mx:e}) → scale {s:e}, zp {zp}\n{}",
            q.repro()
        )
    };
    assert!(s.is_finite() && s > 0.0, "scale not finite > 0: {}", ctx());
    assert!(
        (lo..=hi).contains(&zp),
        "zero point out of range: {}",
        ctx()
    );
    let q0 = aten::quantize_avx2(0.0, 1.0 / s, zp as i32, lo as i32, hi as i32) as i64;
    assert_eq!(
        aten::dequantize(q0, s as f64, zp).to_bits(),
        0f32.to_bits(),
        "0.0 not exactly representable: {}",
        ctx()
    );
}

/// Feeds `xs` to a min/max observer and checks the qparams it computes.
pub fn check_observer(q: &QParamCase, sym: bool, xs: &[f32]) {
    let cfg = ObserverConfig {
        class: ObserverClass::MinMaxObserver,
        dtype: q.dtype,
        qscheme: per_tensor_qscheme(sym),
        range: q.range,
        reduce_range: q.reduce_range,
        eps: f32::EPSILON,
        averaging_constant: 0.01,
        ch_axis: 0,
        bins: 2048,
    };
    let mut obs = Observer::new(cfg).expect("a MinMaxObserver config always builds");
    let fed = obs.forward(xs, &[xs.len()]);
    let res = obs.calculate_qparams();
    if fed.is_ok() && !xs.is_empty() && xs.iter().all(|&x| finite_stat(x)) {
        let p = res.unwrap_or_else(|e| panic!("observer on {xs:?} failed: {e}\n{}", q.repro()));
        check_observed(q, sym, &p, "MinMaxObserver", obs.min_val[0], obs.max_val[0]);
    }
}

/// The golden loader on arbitrary bytes: an error or a case, never a panic.
pub fn golden_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::golden::parse_case(std::path::Path::new("fuzz-input.json"), &text);
}

/// Quantize on arbitrary floats (NaN/±inf included): aten matches the documented AVX2 rules,
/// the decomposed op clamps to its range (NaN undefined), fake-quant stays on the grid.
pub fn quantize(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(q) = QParamCase::arbitrary(&mut u) else {
        return;
    };
    // `arbitrary` yields defaults once the input is exhausted: stop at the end of the data.
    for _ in 0..4096 {
        if u.is_empty() {
            break;
        }
        let Ok(raw) = f32::arbitrary(&mut u) else {
            break;
        };
        let sel = u8::arbitrary(&mut u).unwrap_or(9);
        let k = i32::arbitrary(&mut u).unwrap_or(0) % 400;
        let x = super::hard_float(
            q.scale,
            q.zero_point,
            q.range.quant_min,
            q.range.quant_max,
            sel,
            k,
            raw,
        );
        check_quantize(&q, x);
    }
}

/// Checks the quantize families on one input.
pub fn check_quantize(q: &QParamCase, x: f32) {
    let (lo, hi) = (q.range.quant_min, q.range.quant_max);
    let (dlo, dhi) = q.dtype.full_range();
    let inv = 1.0f32 / q.scale;
    let got = aten::quantize_avx2(x, inv, q.zero_point as i32, dlo as i32, dhi as i32) as i64;
    let want = quantize_avx2_model(x, inv, q.zero_point, dlo, dhi);
    assert_eq!(got, want, "aten quantize of {x:e}\n{}", q.repro());
    let d = decomposed::quantize(x, q.scale as f64, q.zero_point, lo, hi);
    match d {
        None => assert!(
            x.is_nan(),
            "decomposed gave no value for {x:e}\n{}",
            q.repro()
        ),
        Some(v) => assert!(
            (lo..=hi).contains(&v),
            "decomposed {v} out of {lo}..{hi} for {x:e}\n{}",
            q.repro()
        ),
    }
    for (kernel, fq) in [
        (
            "per-tensor",
            fake_quant::per_tensor as fn(f32, f32, i64, i64, i64) -> (f32, bool),
        ),
        ("per-channel", fake_quant::per_channel),
    ] {
        let (f, _) = fq(x, q.scale, q.zero_point, lo, hi);
        let on_grid = (lo..=hi).any(|v| ((v - q.zero_point) as f64 * q.scale as f64) as f32 == f);
        assert!(
            on_grid,
            "{kernel} fake_quantize({x:e}) = {f:e} is off the grid\n{}",
            q.repro()
        );
    }
}

/// A random quantized graph ([`super::graph::FuzzGraph`]) runs node by node on this CPU's
/// optimized backend ([`crate::backend::native`]: x86 or ARM) and on the reference: every output
/// byte must be one the reference admits (see [`super::graph::check_graph`]).
pub fn graph_agreement(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(g) = super::graph::FuzzGraph::arbitrary(&mut u) else {
        return;
    };
    if let Err(d) = super::graph::check_graph(&g, crate::backend::native()) {
        panic!("{d}");
    }
}
