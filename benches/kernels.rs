//! Criterion benchmarks of qparity's optimized x86 kernels (single thread), one per shape of
//! issue 5, plus the peak MAC-instruction throughput. Throughput is in elements = operations
//! (2 per multiply-accumulate), so criterion's "elem/s" reads as OPS.
//!
//! `cargo bench --bench kernels [-- FILTER]`; `cargo xtask bench` runs this, times PyTorch's
//! fbgemm on the same shapes and prints the ratios. `QPARITY_BENCH_ACC=exact` benchmarks the
//! exact-accumulation kernels instead of the pair-saturating (FBGEMM AVX2) ones.

use criterion::{criterion_group, criterion_main, Criterion};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use criterion::{BenchmarkGroup, Criterion, Throughput};
    use qparity::gen::SplitMix64 as Rng;
    use qparity::kernels::x86::conv::{Conv2d, Conv2dParams, Depthwise3x3, Layout};
    use qparity::kernels::x86::{peak, Isa, Kernel, PackedLinear};
    use qparity::kernels::{Accumulation, Requant};
    use qparity::numerics::requant::FbgemmRequant;
    use std::hint::black_box;
    use std::time::Duration;

    /// The linear shapes `M×K×N` of issue 5 (PyTorch's side: xtask/bench/torch_bench.py).
    const LINEAR: [(usize, usize, usize); 4] = [
        (1, 1024, 1024),
        (16, 1024, 1024),
        (128, 1024, 1024),
        (256, 4096, 4096),
    ];

    /// Per-channel FBGEMM requantization with a float bias, as PyTorch's default x86 qconfig.
    fn fbgemm_rule(rng: &mut Rng, n: usize) -> Requant {
        let ws: Vec<f32> = (0..n)
            .map(|_| 0.001 + (rng.next_u32() % 1000) as f32 * 1e-5)
            .collect();
        let bias: Vec<f32> = (0..n)
            .map(|_| (rng.next_u32() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        Requant::Fbgemm(FbgemmRequant::new(
            4.0 / 255.0,
            &ws,
            true,
            Some(&bias),
            n,
            0.5,
            100,
            false,
        ))
    }

    fn conv3x3(c_in: usize, c_out: usize, groups: usize) -> Conv2dParams {
        Conv2dParams {
            in_channels: c_in,
            out_channels: c_out,
            kernel_size: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups,
        }
    }

    fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
    }

    pub fn benches(c: &mut Criterion) {
        let acc = match std::env::var("QPARITY_BENCH_ACC").as_deref() {
            Ok("exact") => Accumulation::Exact,
            _ => Accumulation::PairSaturatingI16,
        };
        let kernel = Kernel::best(acc);
        eprintln!("qparity kernel under benchmark: {}", kernel.name());
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut g = c.benchmark_group("qparity");
        configure(&mut g);
        for (m, k, n) in LINEAR {
            let w = rng.i8s(n * k);
            let a = rng.u8s(m * k);
            let lin = PackedLinear::with_kernel(kernel, &w, n, k, &[0], fbgemm_rule(&mut rng, n))
                .expect("valid linear");
            let mut out = vec![0u8; m * n];
            g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
            g.bench_function(format!("linear_{m}x{k}x{n}"), |b| {
                b.iter(|| {
                    lin.run(black_box(&a), m, 64, &mut out)
                        .expect("valid shapes")
                })
            });
        }
        {
            // Channels-last in and out, as PyTorch's side is timed (FBGEMM's native layout).
            let (c, h, w) = (64, 56, 56);
            let wt = rng.i8s(c * c * 9);
            let x = rng.u8s(c * h * w);
            let conv = Conv2d::with_kernel(
                kernel,
                &wt,
                conv3x3(c, c, 1),
                &[0],
                fbgemm_rule(&mut rng, c),
            )
            .expect("valid conv");
            let mut out = vec![0u8; c * h * w];
            g.throughput(Throughput::Elements(2 * (h * w * c * c * 9) as u64));
            g.bench_function("conv2d_3x3_64x64_56x56", |b| {
                b.iter(|| {
                    conv.run(Layout::Nhwc, black_box(&x), 1, h, w, 64, &mut out)
                        .expect("valid shapes")
                })
            });
        }
        {
            let (c, h, w) = (128, 56, 56);
            let wt = rng.i8s(c * 9);
            let x = rng.u8s(c * h * w);
            let dw = Depthwise3x3::new(&wt, c, (1, 1), (1, 1), &[0], fbgemm_rule(&mut rng, c))
                .expect("valid depthwise");
            let mut out = vec![0u8; c * h * w];
            g.throughput(Throughput::Elements(2 * (h * w * c * 9) as u64));
            g.bench_function("depthwise_3x3_128_56x56", |b| {
                b.iter(|| {
                    dw.run(black_box(&x), 1, h, w, 64, &mut out)
                        .expect("valid shapes")
                })
            });
        }
        for isa in [Isa::Avx2, Isa::Avx512Vnni] {
            let iters = 100_000;
            if peak::mac_loop(isa, 1, 1).is_none() {
                eprintln!(
                    "peak_{}: not measured, this CPU lacks {}",
                    isa.name(),
                    isa.name()
                );
                continue;
            }
            g.throughput(Throughput::Elements(peak::ops_per_iter(isa) * iters));
            g.bench_function(format!("peak_{}", isa.name()), |b| {
                b.iter(|| peak::mac_loop(isa, iters, black_box(0x0102_0304)))
            });
        }
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    x86::benches(c);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
