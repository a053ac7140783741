//! Single-thread timing of ResNet conv shapes (batch 1, channels-last, FBGEMM requantization) on
//! every exact x86 kernel this CPU has:
//! `cargo run --release --example conv_shapes [-- SECONDS [NAME-FILTER]]` (pin it, e.g.
//! `taskset -c 1`; the filter keeps the shapes whose name contains it). Prints the fastest per-call time of 10-call batches and GOPS
//! (2·M·N·K per call).

#[cfg(target_arch = "x86_64")]
fn main() {
    use qparity::kernels::x86::conv::{Conv2d, Conv2dParams, Layout};
    use qparity::kernels::x86::{Kernel, KernelKind};
    use qparity::kernels::Requant;
    use qparity::numerics::requant::FbgemmRequant;
    use std::time::Instant;

    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    let filter = std::env::args().nth(2).unwrap_or_default();
    // (name, in channels, out channels, kernel, stride, H = W)
    let shapes = [
        ("r18 7x7/2 224 3->64", 3, 64, 7, 2, 224),
        ("r18 3x3 56x56 64->64", 64, 64, 3, 1, 56),
        ("r18 3x3 28x28 128->128", 128, 128, 3, 1, 28),
        ("r18 3x3 14x14 256->256", 256, 256, 3, 1, 14),
        ("r18 3x3 7x7 512->512", 512, 512, 3, 1, 7),
        ("r50 1x1 56x56 64->256", 64, 256, 1, 1, 56),
        ("r50 1x1 56x56 256->64", 256, 64, 1, 1, 56),
        ("r50 1x1 28x28 512->128", 512, 128, 1, 1, 28),
        ("r50 1x1 14x14 1024->256", 1024, 256, 1, 1, 14),
        ("r50 1x1 7x7 2048->512", 2048, 512, 1, 1, 7),
    ];
    let kinds = [KernelKind::Avx512Vnni, KernelKind::Amx];
    let mut seed = 0x1234_5678_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for (name, ic, oc, k, s, hw) in shapes {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let p = Conv2dParams {
            in_channels: ic,
            out_channels: oc,
            kernel_size: [k, k],
            stride: [s, s],
            padding: [k / 2, k / 2],
            dilation: [1, 1],
            groups: 1,
        };
        let w: Vec<i8> = (0..oc * ic * k * k).map(|_| next() as i8).collect();
        let x: Vec<u8> = (0..ic * hw * hw).map(|_| next() as u8).collect();
        let (oh, ow) = (hw.div_ceil(s), hw.div_ceil(s));
        let ops = 2.0 * (oh * ow * oc * ic * k * k) as f64;
        let rule = Requant::Fbgemm(FbgemmRequant::new(
            0.05,
            &[0.002],
            false,
            None,
            oc,
            0.1,
            3,
            false,
        ));
        let mut outs = Vec::new();
        let mut line = format!("{name:<26}");
        for kind in kinds {
            let Some(kernel) = Kernel::new(kind) else {
                line += &format!(" {:>16}: n/a", kind.name());
                continue;
            };
            let conv = Conv2d::with_kernel(kernel, &w, p, &[0], rule.clone()).unwrap();
            let mut out = vec![0u8; oc * oh * ow];
            let mut best = f64::INFINITY;
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                let t = Instant::now();
                for _ in 0..10 {
                    conv.run(Layout::Nhwc, &x, 1, hw, hw, 3, &mut out).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / 10.0);
            }
            line += &format!(
                " {:>16}: {:8.1} us {:7.1} GOPS",
                kind.name(),
                best * 1e6,
                ops / best / 1e9
            );
            outs.push(out);
        }
        let same = outs.windows(2).all(|o| o[0] == o[1]);
        println!("{line}  outputs equal: {same}");
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {}
