//! Single-thread timing of one graph case (e.g. a model written by `cargo xtask bench --models`)
//! on the optimized backend: `cargo run --release --example model_time -- CASE.json [SECONDS]`.
//! Prints the fastest whole-model time and each node's fastest time (runs reuse their buffers).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::time::Instant;
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: model_time CASE.json [SECONDS]")?;
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let case = qparity::golden::load_case(std::path::Path::new(&path))?;
    let host = qparity::engine::CpuFeatures::host();
    let graph = qparity::runner::Graph::from_case(&case, &host)?;
    let backend = qparity::backend::native().ok_or("no optimized backend on this CPU")?;
    let planned = graph.plan(Some(backend))?;
    let input = qparity::ops::Value::Tensor(graph.inputs().first().ok_or("no input")?.clone());
    // Runs into one reused set of buffers, as `cargo xtask bench --models` times them.
    let mut out = qparity::runner::RunOutput::default();
    let mut best = f64::INFINITY;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        planned.run_into(&input, &mut out)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mut per_node = vec![f64::INFINITY; graph.node_names().count()];
    for _ in 0..20 {
        planned.run_into_timed(&input, &mut out, |i, s| per_node[i] = per_node[i].min(s))?;
    }
    for ((name, op, k), s) in planned.kernels().iter().zip(&per_node) {
        println!(
            "{name:<24} {op:<20} {:<16} {:8.1} us",
            k.unwrap_or("reference"),
            s * 1e6
        );
    }
    println!(
        "model: {:.3} ms (fastest), nodes sum {:.3} ms",
        best * 1e3,
        per_node.iter().sum::<f64>() * 1e3
    );
    Ok(())
}
