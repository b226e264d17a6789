//! Loads a `.nap` file (memory-mapped), runs it once on an input and prints the output and the
//! time per run. Small enough to copy to a device next to a model:
//!
//! ```text
//! cargo build --release -p nap-runtime --features std --example run_model --target aarch64-unknown-linux-gnu
//! run_model MODEL.nap [INPUT.f32] [RUNS]
//! ```
//!
//! `INPUT.f32` holds raw little-endian f32 values, one example (`[C, H, W]` or `[N]`); without
//! it (or with `-`) the input is all zeros. A per-node time breakdown follows.

#[cfg(not(feature = "std"))]
fn main() {
    eprintln!("run_model memory-maps its model: build it with --features std");
    std::process::exit(2);
}

#[cfg(feature = "std")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use nap_runtime::{Model, Session};
    use std::time::Instant;

    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: {} MODEL.nap [INPUT.f32] [RUNS]", args[0]);
        std::process::exit(2);
    };
    let t0 = Instant::now();
    let model = Model::open(path)?;
    let load = t0.elapsed();
    let mut session = Session::new(&model, 1)?;
    let n = session.input_len(0);
    let input: Vec<f32> = match args.get(2).filter(|p| !p.is_empty() && *p != "-") {
        Some(p) => std::fs::read(p)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        None => vec![0.0; n],
    };
    let runs: u32 = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(10);
    let first = session.run(&input)?.to_vec();
    let t1 = Instant::now();
    for _ in 0..runs {
        session.run(&input)?;
    }
    let per_run = t1.elapsed() / runs.max(1);
    let m = model.metadata();
    println!(
        "model {path}: arch {:?}, method {:?}, loaded in {load:?}",
        m.arch, m.method
    );
    println!(
        "{} inputs -> {} outputs, {per_run:?} per run ({runs} runs)",
        n,
        first.len()
    );
    let best = first
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, v)| (i, *v));
    println!("output {:?}", &first[..first.len().min(16)]);
    if let Some((i, v)) = best {
        println!("argmax {i} ({v})");
    }
    session.set_profiling(true);
    for _ in 0..runs {
        session.run(&input)?;
    }
    if let Some(times) = session.node_times() {
        println!("time per node (mean of {runs} runs):");
        for (node, t) in model.graph().nodes.iter().zip(times) {
            println!(
                "  {:>10.1} µs  {}",
                t.as_secs_f64() * 1e6 / runs.max(1) as f64,
                node.name
            );
        }
    }
    Ok(())
}
