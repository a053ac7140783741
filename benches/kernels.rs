//! Benchmarks of qparity's optimized x86 kernels (single thread) on the shapes of
//! `xtask/bench/torch_bench.py`, in pairs that compute the same numerics as a PyTorch fbgemm
//! configuration, plus the peak throughput of every multiply-accumulate instruction sequence the
//! CPU has.
//!
//! ```text
//! cargo bench --bench kernels -- [--pair vnni|avx2] [--peaks] [--only NAME] [--min-time S] [--json] [--list]
//! ```
//!
//! * pair `vnni`: the AVX-512 VNNI kernel (exact accumulation), the counterpart of fbgemm's default
//!   on a VNNI CPU;
//! * pair `avx2`: the AVX2 pair-saturating kernel, the counterpart of fbgemm with
//!   `FBGEMM_ENABLE_INSTRUCTIONS=AVX2`.
//!
//! Without `--pair`/`--peaks` every pair this CPU can run and the peaks are measured. Timing is
//! the method of `torch_bench.py`, so the two sides are measured alike: after three warm-up calls
//! the batch size is doubled until a batch takes a twentieth of the measuring time, then batches
//! run until that time is spent; each line reports the fastest and the median per-call wall time
//! of the batches and the fastest per-call on-CPU time: wall time minus the time the thread
//! waited for the CPU (`/proc/thread-self/schedstat`), which leaves out the time slices other
//! processes get on a shared machine. `cargo xtask bench` runs this and PyTorch shape by shape, alternating.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use qparity::gen::SplitMix64 as Rng;
    use qparity::kernels::x86::conv::{Conv2d, Conv2dParams, Depthwise3x3, Layout};
    use qparity::kernels::x86::peak::MacLoop;
    use qparity::kernels::x86::{Kernel, KernelKind, PackedLinear};
    use qparity::kernels::{Accumulation, Isa, Requant};
    use qparity::numerics::requant::FbgemmRequant;
    use std::hint::black_box;
    use std::time::Instant;

    /// The linear shapes `M×K×N`.
    const LINEAR: [(usize, usize, usize); 4] = [
        (1, 1024, 1024),
        (16, 1024, 1024),
        (128, 1024, 1024),
        (256, 4096, 4096),
    ];

    /// Every benchmark name, in the order they run.
    pub fn names() -> Vec<String> {
        let mut v: Vec<String> = LINEAR
            .iter()
            .map(|(m, k, n)| format!("linear_{m}x{k}x{n}"))
            .collect();
        v.push("conv2d_3x3_64x64_56x56".into());
        v.push("depthwise_3x3_128_56x56".into());
        v
    }

    /// A pair of qparity kernel and fbgemm configuration that compute the same numerics.
    #[derive(Clone, Copy)]
    pub struct Pair {
        pub name: &'static str,
        /// The instruction set both sides compute with (its numerics class).
        pub isa: Isa,
        pub kind: KernelKind,
    }

    pub const PAIRS: [Pair; 2] = [
        Pair {
            name: "vnni",
            isa: Isa::Avx512Vnni,
            kind: KernelKind::Avx512Vnni,
        },
        Pair {
            name: "avx2",
            isa: Isa::Avx2,
            kind: KernelKind::Avx2PairSat,
        },
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

    /// Nanoseconds this thread has waited for a CPU while runnable (`/proc/thread-self/schedstat`,
    /// field 2; accounted when the thread gets the CPU back, so exact at the end of a batch).
    fn wait_ns() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Per-call seconds: `(fastest wall, median wall, fastest on-CPU)` over batches of calls
    /// (the method of `torch_bench.py`). On-CPU is wall time minus the time the thread waited for
    /// the CPU (NaN where the kernel does not report it).
    fn measure(min_time: f64, mut f: impl FnMut()) -> (f64, f64, f64) {
        for _ in 0..3 {
            f();
        }
        let mut n = 1usize;
        loop {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            if t.elapsed().as_secs_f64() > min_time / 20.0 {
                break;
            }
            n *= 2;
        }
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < min_time || wall.len() < 5 {
            // Waits read inside the timed interval: a wait can only be counted if it happened
            // within it, so on-CPU time is never underestimated.
            let t = Instant::now();
            let w0 = wait_ns();
            for _ in 0..n {
                f();
            }
            let w1 = wait_ns();
            let dt = t.elapsed().as_secs_f64();
            wall.push(dt / n as f64);
            if let (Some(w0), Some(w1)) = (w0, w1) {
                cpu.push((dt - w1.saturating_sub(w0) as f64 * 1e-9) / n as f64);
            }
        }
        wall.sort_by(f64::total_cmp);
        let cpu_min = cpu.iter().copied().fold(f64::NAN, f64::min);
        (wall[0], wall[wall.len() / 2], cpu_min)
    }

    fn report(
        json: bool,
        fields: &[(&str, String)],
        ops: f64,
        (best, median, cpu): (f64, f64, f64),
    ) {
        let gops = ops / best / 1e9;
        if json {
            let mut body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": \"{v}\""))
                .collect();
            body.push(format!("\"ops\": {ops}"));
            body.push(format!("\"min_s\": {best:e}"));
            body.push(format!("\"median_s\": {median:e}"));
            body.push(if cpu.is_nan() {
                "\"cpu_min_s\": null".to_string()
            } else {
                format!("\"cpu_min_s\": {cpu:e}")
            });
            body.push(format!("\"gops\": {gops}"));
            println!("{{{}}}", body.join(", "));
        } else {
            let widths = [26, 5, 11, 22, 15];
            let label: String = fields
                .iter()
                .zip(widths)
                .map(|((_, v), w)| format!("{v:<w$} "))
                .collect();
            println!(
                "{label:<84} {gops:8.1} GOPS (median {:8.1}, on-CPU {:8.1})",
                ops / median / 1e9,
                ops / cpu / 1e9
            );
        }
    }

    /// Benchmarks the shapes selected by `only` with the pair's kernel.
    pub fn run_pair(
        pair: &Pair,
        only: Option<&str>,
        min_time: f64,
        json: bool,
    ) -> Result<(), String> {
        let kernel = Kernel::new(pair.kind).ok_or_else(|| {
            format!(
                "pair {}: this CPU lacks {} (kernel {})",
                pair.name,
                pair.isa,
                pair.kind.name()
            )
        })?;
        let numerics = match kernel.accumulation() {
            Accumulation::Exact => "exact",
            Accumulation::PairSaturatingI16 => "pair-saturating",
        };
        let want = |name: &str| only.is_none_or(|o| o == name);
        let fields = |name: &str, kname: &str| {
            vec![
                ("name", name.to_string()),
                ("pair", pair.name.to_string()),
                ("isa", pair.isa.name().to_string()),
                ("kernel", kname.to_string()),
                ("numerics", numerics.to_string()),
            ]
        };
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        for (m, k, n) in LINEAR {
            let name = format!("linear_{m}x{k}x{n}");
            let w = rng.i8s(n * k);
            let a = rng.u8s(m * k);
            let rule = fbgemm_rule(&mut rng, n);
            if !want(&name) {
                continue;
            }
            let lin = PackedLinear::with_kernel(kernel, &w, n, k, &[0], rule)
                .map_err(|e| e.to_string())?;
            let mut out = vec![0u8; m * n];
            let t = measure(min_time, || {
                lin.run(black_box(&a), m, 64, &mut out)
                    .expect("valid shapes")
            });
            report(
                json,
                &fields(&name, kernel.name()),
                2.0 * (m * k * n) as f64,
                t,
            );
        }
        {
            // Channels-last in and out, as PyTorch's side is timed (FBGEMM's native layout).
            let name = "conv2d_3x3_64x64_56x56";
            let (c, h, w) = (64, 56, 56);
            let wt = rng.i8s(c * c * 9);
            let x = rng.u8s(c * h * w);
            let rule = fbgemm_rule(&mut rng, c);
            if want(name) {
                let p = Conv2dParams::square(c, c, 1, 3, 1);
                let conv =
                    Conv2d::with_kernel(kernel, &wt, p, &[0], rule).map_err(|e| e.to_string())?;
                let mut out = vec![0u8; c * h * w];
                let t = measure(min_time, || {
                    conv.run(Layout::Nhwc, black_box(&x), 1, h, w, 64, &mut out)
                        .expect("valid shapes");
                });
                report(
                    json,
                    &fields(name, kernel.name()),
                    2.0 * (h * w * c * c * 9) as f64,
                    t,
                );
            }
        }
        {
            // FBGEMM's depthwise kernel saturates tap pairs on every CPU class: both pairs run
            // qparity's depthwise kernel, which models it.
            let name = "depthwise_3x3_128_56x56";
            let (c, h, w) = (128, 56, 56);
            let wt = rng.i8s(c * 9);
            let x = rng.u8s(c * h * w);
            let rule = fbgemm_rule(&mut rng, c);
            if want(name) {
                let dw = Depthwise3x3::new(&wt, c, (1, 1), (1, 1), &[0], rule)
                    .map_err(|e| e.to_string())?;
                let kname = if dw.is_simd() {
                    "x86-avx2-depthwise3x3"
                } else {
                    "x86-depthwise3x3-scalar"
                };
                let mut f = fields(name, kname);
                f[4].1 = "pair-saturating".into();
                let mut out = vec![0u8; c * h * w];
                let t = measure(min_time, || {
                    dw.run(black_box(&x), 1, h, w, 64, &mut out)
                        .expect("valid shapes");
                });
                report(json, &f, 2.0 * (h * w * c * 9) as f64, t);
            }
        }
        Ok(())
    }

    /// The peak of every MAC loop this CPU has.
    pub fn run_peaks(min_time: f64, json: bool) {
        for l in MacLoop::supported() {
            let iters = 20_000;
            let numerics = match l.accumulation() {
                Accumulation::Exact => "exact",
                Accumulation::PairSaturatingI16 => "pair-saturating",
            };
            let t = measure(min_time, || {
                l.run(black_box(iters)).expect("supported");
            });
            let fields = [
                ("name", format!("peak_{}", l.name())),
                ("numerics", numerics.to_string()),
            ];
            report(json, &fields, (l.ops_per_iter() * iters) as f64, t);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let json = args.iter().any(|a| a == "--json");
    if args.iter().any(|a| a == "--list") {
        for n in x86::names() {
            println!("{n}");
        }
        return;
    }
    let min_time: f64 = value("--min-time")
        .map(|v| v.parse().expect("--min-time takes seconds"))
        .unwrap_or(1.0);
    let only = value("--only");
    let peaks = args.iter().any(|a| a == "--peaks");
    let pairs: Vec<&x86::Pair> = match value("--pair") {
        Some(p) => match x86::PAIRS.iter().find(|x| x.name == p) {
            Some(x) => vec![x],
            None => {
                eprintln!("unknown pair {p:?} (vnni, avx2)");
                std::process::exit(2);
            }
        },
        None if peaks => Vec::new(),
        // Every pair this CPU can run.
        None => x86::PAIRS
            .iter()
            .filter(|p| qparity::kernels::x86::Kernel::new(p.kind).is_some())
            .collect(),
    };
    for p in pairs {
        if let Err(e) = x86::run_pair(p, only.as_deref(), min_time, json) {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    if peaks || value("--pair").is_none() && only.is_none() {
        x86::run_peaks(min_time, json);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("the kernel benchmarks are x86-64 only");
}
