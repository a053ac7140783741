//! `cargo bench --bench gops [-- --json] [-- --filter NAME]`: GOPS per benchmark shape for
//! qparity's optimized x86 kernels (single thread), plus the peak MAC-instruction throughput.
//! A plain timing binary (harness = false), read by `cargo xtask bench`; one JSON object per
//! line with `--json`.

#[cfg(target_arch = "x86_64")]
mod imp {
    use qparity::kernels::x86::conv::{Conv2d, Conv2dParams, Depthwise3x3};
    use qparity::kernels::x86::{peak, Isa, KernelId, PackedLinear};
    use qparity::kernels::{Accumulation, Requant};
    use qparity::requant::FbgemmRequant;
    use std::time::Instant;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        fn u8s(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn i8s(&mut self, n: usize) -> Vec<i8> {
            (0..n).map(|_| self.next() as i8).collect()
        }
    }

    fn time(min_time: f64, mut f: impl FnMut()) -> f64 {
        for _ in 0..3 {
            f();
        }
        let mut n = 1u32;
        let mut dt;
        loop {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            dt = t.elapsed().as_secs_f64();
            if dt > min_time / 10.0 {
                break;
            }
            n *= 2;
        }
        let mut best = dt / n as f64;
        let end = Instant::now() + std::time::Duration::from_secs_f64(min_time);
        while Instant::now() < end {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            best = best.min(t.elapsed().as_secs_f64() / n as f64);
        }
        best
    }

    fn fbgemm_rule(rng: &mut Rng, n: usize) -> (Requant, Vec<f32>) {
        let ws: Vec<f32> = (0..n)
            .map(|_| 0.001 + (rng.next() % 1000) as f32 * 1e-5)
            .collect();
        let bias: Vec<f32> = (0..n)
            .map(|_| (rng.next() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let r = FbgemmRequant::new(4.0 / 255.0, &ws, true, Some(&bias), n, 0.5, 100, false);
        (Requant::Fbgemm(r), ws)
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let json = args.iter().any(|a| a == "--json");
        let filter = args
            .iter()
            .position(|a| a == "--filter")
            .and_then(|i| args.get(i + 1).cloned());
        let min_time: f64 = std::env::var("QPARITY_BENCH_MIN_TIME")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.5);
        let acc = match std::env::var("QPARITY_BENCH_ACC").as_deref() {
            Ok("exact") => Accumulation::Exact,
            _ => Accumulation::PairSaturatingI16,
        };
        let kernel = KernelId::best(acc);
        let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let report = |name: &str, ops: f64, secs: f64, extra: &str| {
            let gops = ops / secs / 1e9;
            if json {
                println!(
                    "{{\"name\":\"{name}\",\"ops\":{ops},\"seconds\":{secs},\"gops\":{gops},\"kernel\":\"{}\"{extra}}}",
                    kernel.name()
                );
            } else {
                println!(
                    "{name:<28} {gops:8.1} GOPS  ({:.1} µs, {})",
                    secs * 1e6,
                    kernel.name()
                );
            }
        };
        for (m, k, n) in [
            (1, 1024, 1024),
            (16, 1024, 1024),
            (128, 1024, 1024),
            (256, 4096, 4096),
        ] {
            let name = format!("linear_{m}x{k}x{n}");
            if !want(&name) {
                continue;
            }
            let w = rng.i8s(n * k);
            let a = rng.u8s(m * k);
            let (rq, _) = fbgemm_rule(&mut rng, n);
            let lin = PackedLinear::with_kernel(kernel, &w, n, k, &[0], rq).expect("valid shapes");
            let mut out = vec![0u8; m * n];
            let s = time(min_time, || {
                lin.run(&a, m, 64, &mut out).expect("valid shapes")
            });
            report(&name, 2.0 * (m * k * n) as f64, s, "");
        }
        let name = "conv2d_3x3_64x64_56x56";
        if want(name) {
            let (c, h, w) = (64, 56, 56);
            let wt = rng.i8s(c * c * 9);
            let x = rng.u8s(c * h * w);
            let (rq, _) = fbgemm_rule(&mut rng, c);
            let p = Conv2dParams::new(c, c, (3, 3), (1, 1), (1, 1), (1, 1), 1);
            let conv = Conv2d::with_kernel(kernel, &wt, p, &[0], rq).expect("valid conv");
            let mut out = vec![0u8; c * h * w];
            let s = time(min_time, || {
                conv.run(&x, 1, h, w, 64, &mut out).expect("valid shapes");
            });
            report(name, 2.0 * (h * w * c * c * 9) as f64, s, "");
        }
        let name = "depthwise_3x3_128_56x56";
        if want(name) {
            let (c, h, w) = (128, 56, 56);
            let wt = rng.i8s(c * 9);
            let x = rng.u8s(c * h * w);
            let (rq, _) = fbgemm_rule(&mut rng, c);
            let dw = Depthwise3x3::new(&wt, c, (1, 1), (1, 1), &[0], rq).expect("valid depthwise");
            let mut out = vec![0u8; c * h * w];
            let s = time(min_time, || {
                dw.run(&x, 1, h, w, 64, &mut out).expect("valid shapes");
            });
            report(name, 2.0 * (h * w * c * 9) as f64, s, "");
        }
        for isa in [Isa::Avx2, Isa::Avx512Vnni] {
            let name = format!("peak_{}", isa.name());
            if !want(&name) {
                continue;
            }
            match peak::peak_gops(isa, 2_000_000) {
                Some(g) => {
                    if json {
                        println!("{{\"name\":\"{name}\",\"gops\":{g}}}");
                    } else {
                        println!("{name:<28} {g:8.1} GOPS  (MAC instruction peak, one core)");
                    }
                }
                None if !json => println!("{name:<28}      n/a  (CPU lacks {})", isa.name()),
                None => {}
            }
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    imp::main();
}
