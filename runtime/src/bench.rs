//! Latency of `.nap` models on the machine that runs them (feature `std`): warm-up, repeated
//! timed runs, median and spread, a per-node breakdown, and with a baseline (usually the dense
//! original) the speedup, both models timed in the same process with their runs interleaved so
//! that frequency changes and background load hit both alike. `nap bench` and the runtime-only
//! `nap-bench` binary both print this report.

use std::format;
use std::string::{String, ToString};
use std::time::Instant;
use std::vec::Vec;

use serde::Serialize;

use crate::format::IndexWidth;
use crate::kernels::{
    bspmv, gemm, gemm_workspace, gemv, spmm, spmv, Activation, Bias, Dtype, Elems, Isa, MatRef,
};
use crate::model::{BlockCsrBuf, CsrBuf};
use crate::stats::{layer_stats, LayerStats};
use crate::{Model, Session, SparsePolicy, TensorView};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Examples per run.
    pub batch: usize,
    /// Threads per large operation.
    pub threads: usize,
    /// Untimed runs per model before timing.
    pub warmup: usize,
    /// Timed runs per model; 0 picks enough for about `seconds` (at least 20).
    pub runs: usize,
    /// Target timing length per model when `runs` is 0.
    pub seconds: f64,
    /// Which CSR weights run sparse.
    pub policy: SparsePolicy,
    /// Most bytes each session's buffers may take ([`crate::SessionOptions::memory_limit`]).
    pub memory_limit: u64,
    /// [`crate::SessionOptions::winograd`].
    pub winograd: bool,
    /// [`crate::SessionOptions::fuse`].
    pub fuse: crate::Fusion,
    /// [`crate::SessionOptions::split`].
    pub split: crate::Split,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch: 1,
            threads: 1,
            warmup: 10,
            runs: 0,
            seconds: 2.0,
            policy: SparsePolicy::default(),
            memory_limit: crate::DEFAULT_MEMORY_LIMIT,
            winograd: true,
            fuse: crate::Fusion::Large,
            split: crate::Split::Adaptive,
        }
    }
}

/// Distribution of per-run wall times.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub runs: usize,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    fn from_seconds(mut s: Vec<f64>) -> Self {
        s.sort_by(f64::total_cmp);
        let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize] * 1e3;
        Latency {
            runs: s.len(),
            median_ms: q(0.5),
            p10_ms: q(0.1),
            p90_ms: q(0.9),
            min_ms: s[0] * 1e3,
            mean_ms: s.iter().sum::<f64>() / s.len() as f64 * 1e3,
        }
    }
}

/// One node's share of a run.
#[derive(Clone, Debug, Serialize)]
pub struct NodeTime {
    #[serde(flatten)]
    pub stats: LayerStats,
    /// Mean time per run in this node (profiled runs, after the timed ones).
    pub mean_us: f64,
    /// Which kernels ran: `dense`, `sparse` (the stored CSR or blocked weight) or `expanded`
    /// (a sparse weight the policy expanded to dense at load); empty for nodes without weights.
    pub ran: &'static str,
    /// The algorithm that ran the node, where its op has several (a convolution:
    /// `winograd_f4`, `channels_in_lanes`, `implicit_gemm`, ...); empty otherwise.
    pub kernel: &'static str,
}

/// One model's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModelBench {
    pub path: String,
    pub bytes: u64,
    pub params: usize,
    pub nonzero: usize,
    /// FLOPs per example as stored, and with every weight counted; see [`LayerStats`].
    pub flops: u64,
    pub dense_flops: u64,
    pub latency: Latency,
    pub nodes: Vec<NodeTime>,
}

/// The machine, as far as the runtime sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub arch: &'static str,
    pub os: &'static str,
    pub cpus: usize,
    /// Instruction sets the runtime has kernels for and this CPU runs.
    pub isa: Vec<String>,
}

impl Machine {
    pub fn detect() -> Self {
        Machine {
            arch: std::env::consts::ARCH,
            os: std::env::consts::OS,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            isa: [
                Isa::Avx2Fma,
                Isa::Avx2FmaF16c,
                Isa::Avx512F,
                Isa::Neon,
                Isa::NeonFp16,
            ]
            .into_iter()
            .filter(|i| i.is_available())
            .map(|i| format!("{i:?}"))
            .collect(),
        }
    }
}

/// Everything `nap bench` reports.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub batch: usize,
    pub threads: usize,
    pub warmup: usize,
    pub policy: SparsePolicy,
    pub model: ModelBench,
    pub baseline: Option<ModelBench>,
    /// Baseline median latency / model median latency.
    pub speedup: Option<f64>,
    /// Baseline FLOPs / model FLOPs (as stored).
    pub flop_reduction: Option<f64>,
}

/// A model to time: its path (for the report) and the loaded model.
pub struct Target<'a> {
    pub path: String,
    pub model: &'a Model<'a>,
}

/// Deterministic input in [0, 1) for `len` floats (kernel speed does not depend on the values).
pub fn default_input(len: usize) -> Vec<f32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Times `model` (and `baseline`, interleaved run by run) with `input` of one example, repeated
/// to the batch size; `input` of `None` uses [`default_input`].
pub fn bench(
    model: &Target<'_>,
    baseline: Option<&Target<'_>>,
    input: Option<&[f32]>,
    opts: &BenchOptions,
) -> crate::Result<BenchReport> {
    let targets: Vec<&Target<'_>> = core::iter::once(model).chain(baseline).collect();
    let mut sessions = Vec::with_capacity(targets.len());
    let mut inputs = Vec::with_capacity(targets.len());
    for t in &targets {
        let s = Session::with_options(
            t.model,
            opts.batch,
            crate::SessionOptions {
                threads: opts.threads,
                policy: opts.policy,
                memory_limit: opts.memory_limit,
                winograd: opts.winograd,
                fuse: opts.fuse,
                split: opts.split,
                ..crate::SessionOptions::default()
            },
        )?;
        let one = s.input_len(0);
        let x = match input {
            Some(x) if x.len() != one => {
                return Err(crate::Error::Shape {
                    what: "bench input (one example)",
                    expected: one,
                    got: x.len(),
                })
            }
            Some(x) => x.to_vec(),
            None => default_input(one),
        };
        inputs.push(x.repeat(opts.batch));
        sessions.push(s);
    }
    for _ in 0..opts.warmup.max(1) {
        for (s, x) in sessions.iter_mut().zip(&inputs) {
            s.run(x)?;
        }
    }
    let runs = if opts.runs > 0 {
        opts.runs
    } else {
        let t = Instant::now();
        for (s, x) in sessions.iter_mut().zip(&inputs) {
            s.run(x)?;
        }
        let per_round = t.elapsed().as_secs_f64().max(1e-7);
        ((opts.seconds * targets.len() as f64 / per_round) as usize).clamp(20, 1_000_000)
    };
    let mut times = vec_of(targets.len(), runs);
    for _ in 0..runs {
        for ((s, x), t) in sessions.iter_mut().zip(&inputs).zip(&mut times) {
            let t0 = Instant::now();
            s.run(x)?;
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    let profile_runs = runs.clamp(1, 200);
    let mut results = Vec::with_capacity(targets.len());
    for (((t, s), x), lat) in targets.iter().zip(&mut sessions).zip(&inputs).zip(times) {
        s.set_profiling(true);
        for _ in 0..profile_runs {
            s.run(x)?;
        }
        let node_times = s.node_times().unwrap_or(&[]).to_vec();
        s.set_profiling(false);
        let expanded = s.expanded();
        let methods = s.methods();
        let stats = layer_stats(t.model);
        let graph = t.model.graph();
        let nodes: Vec<NodeTime> = stats
            .into_iter()
            .zip(node_times)
            .zip(expanded)
            .zip(methods)
            .zip(&graph.nodes)
            .map(|((((stats, d), exp), kernel), node)| NodeTime {
                kernel,
                ran: match (node.op.weight_bias(), exp) {
                    (_, true) => "expanded",
                    (Some((weight, _)), false) => match t.model.tensor(weight) {
                        TensorView::Dense(_) => "dense",
                        _ => "sparse",
                    },
                    (None, false) => "",
                },
                stats,
                mean_us: d.as_secs_f64() * 1e6 / profile_runs as f64,
            })
            .collect();
        results.push(ModelBench {
            path: t.path.clone(),
            bytes: t.model.bytes().len() as u64,
            params: nodes.iter().map(|n| n.stats.params).sum(),
            nonzero: nodes.iter().map(|n| n.stats.nonzero).sum(),
            flops: nodes.iter().map(|n| n.stats.flops).sum(),
            dense_flops: nodes.iter().map(|n| n.stats.dense_flops).sum(),
            latency: Latency::from_seconds(lat),
            nodes,
        });
    }
    let baseline = (results.len() > 1).then(|| results.pop()).flatten();
    let model = results.pop().expect("the model was timed");
    Ok(BenchReport {
        machine: Machine::detect(),
        batch: opts.batch,
        threads: opts.threads,
        warmup: opts.warmup,
        policy: opts.policy,
        speedup: baseline
            .as_ref()
            .map(|b| b.latency.median_ms / model.latency.median_ms),
        flop_reduction: baseline
            .as_ref()
            .map(|b| b.flops as f64 / model.flops.max(1) as f64),
        model,
        baseline,
    })
}

fn vec_of(n: usize, cap: usize) -> Vec<Vec<f64>> {
    (0..n).map(|_| Vec::with_capacity(cap)).collect()
}

/// The report as text: one block per model, the speedup, and the per-node table (side by side
/// with the baseline's nodes of the same name).
pub fn render(r: &BenchReport) -> String {
    let mut o = String::new();
    let m = &r.machine;
    o += &format!(
        "machine: {} {}, {} CPUs, kernels for {}\n",
        m.arch,
        m.os,
        m.cpus,
        if m.isa.is_empty() {
            "scalar only".to_string()
        } else {
            m.isa.join(", ")
        }
    );
    o += &format!(
        "batch {}, {} thread(s), {} warm-up runs; sparse weights run sparse up to density {} \
         (CSR, batch-1 Linear) / {} (CSR, convolutions, batches) / {} (4x1 blocks)\n",
        r.batch,
        r.threads,
        r.warmup,
        r.policy.max_density_gemv,
        r.policy.max_density_gemm,
        r.policy.max_density_blocked
    );
    for (label, b) in [("model", Some(&r.model)), ("baseline", r.baseline.as_ref())] {
        let Some(b) = b else { continue };
        let l = &b.latency;
        o += &format!(
            "{label:<9}{}: {} bytes, {} of {} parameters non-zero ({:.2} %), {:.3} MFLOPs/example\n",
            b.path,
            b.bytes,
            b.nonzero,
            b.params,
            100.0 * b.nonzero as f64 / b.params.max(1) as f64,
            b.flops as f64 / 1e6
        );
        o += &format!(
            "{:9}median {:.4} ms (p10 {:.4}, p90 {:.4}, min {:.4}) over {} runs\n",
            "", l.median_ms, l.p10_ms, l.p90_ms, l.min_ms, l.runs
        );
    }
    if let (Some(s), Some(f)) = (r.speedup, r.flop_reduction) {
        o += &format!("speedup {s:.2}x over the baseline (FLOP reduction {f:.2}x)\n");
    }
    o += &format!(
        "\n{:<24} {:<20} {:<12} {:<8} {:<17} {:>8} {:>10} {:>10}",
        "node", "op", "storage", "ran", "kernel", "density", "MFLOPs", "mean µs"
    );
    if r.baseline.is_some() {
        o += &format!(" {:>11} {:>8}", "baseline µs", "speedup");
    }
    o += "\n";
    for n in &r.model.nodes {
        let s = &n.stats;
        o += &format!(
            "{:<24} {:<20} {:<12} {:<8} {:<17} {:>7.1}% {:>10.4} {:>10.2}",
            s.name,
            s.op,
            s.storage,
            n.ran,
            n.kernel,
            100.0 * s.density,
            s.flops as f64 / 1e6,
            n.mean_us
        );
        if let Some(b) = &r.baseline {
            match b.nodes.iter().find(|bn| bn.stats.name == s.name) {
                Some(bn) => {
                    o += &format!(
                        " {:>11.2} {:>7.2}x",
                        bn.mean_us,
                        bn.mean_us / n.mean_us.max(1e-9)
                    )
                }
                None => o += &format!(" {:>11} {:>8}", "-", "-"),
            }
        }
        o += "\n";
    }
    o
}

/// The median of `v` (reordered); `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Mean µs per call of `f` over `reps` calls after one untimed call (operands in cache).
pub fn time_warm(reps: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64 * 1e6
}

/// One measured point of [`calibrate`].
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationPoint {
    /// `gemv` (batch-1 Linear), `gemm` (convolution) or `gemv4x1` (batch-1 Linear, 4×1 blocks).
    pub product: &'static str,
    pub density: f64,
    pub dense_us: f64,
    pub sparse_us: f64,
}

/// What `nap bench --calibrate` measures: the break-even densities on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub machine: Machine,
    /// The policy to use here: the densest measured CSR that still beat dense, per product.
    pub policy: SparsePolicy,
    pub points: Vec<CalibrationPoint>,
}

/// Densities [`calibrate`] measures, densest first.
const CALIBRATION_DENSITIES: [f64; 10] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05];

/// Measures dense against sparse (f32 values, u16 indices, random sparsity) for a batch-1 Linear
/// of 512×1024 (unstructured CSR and 4×1 blocks) and a 3×3 convolution as a 128×576 weight on 7×7
/// pixels (M1's third layer), on one thread with operands in cache, and returns the break-even
/// densities.
pub fn calibrate() -> Calibration {
    let time = time_warm;
    let mut points = Vec::new();
    let mut limits = [0.0f64; 3];
    for (pi, (product, m, k, p)) in [
        ("gemv", 512, 1024, 1),
        ("gemm", 128, 576, 49),
        ("gemv4x1", 512, 1024, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let w = default_input(m * k);
        let b = default_input(k * p);
        let noise = default_input(m * k + 7);
        let mut y = std::vec![0f32; m * p];
        let mut ws = std::vec![0f32; gemm_workspace(m, p, k)];
        let reps = ((2e6 / (m * k * p) as f64) as usize).max(3);
        for &d in &CALIBRATION_DENSITIES {
            // Unstructured, or (4×1 product) whole 4×1 blocks kept with probability `d`.
            let keep = |i: usize| {
                let j = if pi == 2 { (i / k / 4) * k + i % k } else { i };
                (noise[7 + j] as f64) < d
            };
            let wd: Vec<f32> = (0..m * k)
                .map(|i| if keep(i) { w[i] - 0.5 } else { 0.0 })
                .collect();
            // Only the storage this product times is built.
            enum Stored {
                Csr(CsrBuf),
                Blocks(BlockCsrBuf),
            }
            let stored = if pi == 2 {
                Stored::Blocks(BlockCsrBuf::from_dense(
                    m,
                    k,
                    4,
                    &wd,
                    Dtype::F32,
                    IndexWidth::U16,
                ))
            } else {
                Stored::Csr(CsrBuf::from_dense(m, k, &wd, Dtype::F32, IndexWidth::U16))
            };
            let (mut td, mut ts) = (Vec::new(), Vec::new());
            for _ in 0..15 {
                td.push(time(reps, &mut || {
                    if p == 1 {
                        gemv(Elems::F32(&wd), k, m, k, &b, None, Activation::None, &mut y)
                    } else {
                        let am = MatRef::row_major(Elems::F32(&wd), m, k);
                        let bm = MatRef::row_major(Elems::F32(&b), k, p);
                        gemm(am, bm, &mut y, p, Bias::None, Activation::None, &mut ws)
                    }
                }));
                ts.push(time(reps, &mut || match &stored {
                    Stored::Blocks(bl) => bspmv(&bl.view(), &b, None, Activation::None, &mut y),
                    Stored::Csr(c) if p == 1 => spmv(&c.view(), &b, None, Activation::None, &mut y),
                    Stored::Csr(c) => spmm(&c.view(), 0..m, &b, p, None, Activation::None, &mut y),
                }));
            }
            let (dense_us, sparse_us) = (median(&mut td), median(&mut ts));
            if sparse_us < dense_us && limits[pi] == 0.0 {
                limits[pi] = d;
            }
            points.push(CalibrationPoint {
                product,
                density: d,
                dense_us,
                sparse_us,
            });
        }
    }
    Calibration {
        machine: Machine::detect(),
        policy: SparsePolicy {
            max_density_gemv: limits[0] as f32,
            max_density_gemm: limits[1] as f32,
            max_density_blocked: limits[2] as f32,
        },
        points,
    }
}

/// Command-line front end shared by `nap bench` and `nap-bench` (feature `cli`).
#[cfg(feature = "cli")]
pub mod cli {
    use std::path::PathBuf;
    use std::string::{String, ToString};

    use super::*;

    /// Time a .nap model on this machine (median of repeated runs after warm-up), optionally
    /// against a baseline such as its dense original, with a per-node breakdown.
    #[derive(clap::Args, Debug, Clone)]
    pub struct BenchArgs {
        /// The .nap model to time (not needed with --calibrate).
        #[arg(required_unless_present = "calibrate")]
        pub model: Option<PathBuf>,
        /// A baseline .nap (usually the dense original) timed in the same run, runs interleaved;
        /// the report adds the speedup and the FLOP reduction.
        #[arg(long)]
        pub vs: Option<PathBuf>,
        /// Examples per run.
        #[arg(long, default_value_t = 1)]
        pub batch: usize,
        /// Threads per large operation: a number, or `auto` for this machine's physical cores.
        #[arg(long, default_value = "1", value_parser = parse_threads)]
        pub threads: usize,
        /// Most memory, in MiB, each model's session may plan (activations, scratch, expanded
        /// weights); a model needing more is an error before anything is allocated.
        #[arg(long, value_name = "MIB", default_value_t = crate::DEFAULT_MEMORY_LIMIT >> 20)]
        pub memory_limit: u64,
        /// Refuse models with NaN or infinite weights.
        #[arg(long)]
        pub strict: bool,
        /// Untimed runs per model first.
        #[arg(long, default_value_t = 10)]
        pub warmup: usize,
        /// Timed runs per model; 0 runs for about --seconds (at least 20 runs).
        #[arg(long, default_value_t = 0)]
        pub runs: usize,
        /// Timing length per model when --runs is 0.
        #[arg(long, default_value_t = 2.0)]
        pub seconds: f64,
        /// One example as raw little-endian f32 (default: deterministic values in [0, 1)).
        #[arg(long)]
        pub input: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        pub json: bool,
        /// Measure this machine's break-even densities of sparse against dense kernels and
        /// print them (JSON with --json); -o saves the policy for --policy.
        #[arg(long)]
        pub calibrate: bool,
        /// With --calibrate: where to save the measured policy (JSON).
        #[arg(short, long, requires = "calibrate")]
        pub output: Option<PathBuf>,
        /// A policy saved by --calibrate: which CSR weights run sparse.
        #[arg(long, conflicts_with_all = ["keep_csr", "calibrate"])]
        pub policy: Option<PathBuf>,
        /// Run every CSR weight with the sparse kernels, however dense.
        #[arg(long)]
        pub keep_csr: bool,
        /// Run 3×3 convolutions without Winograd (the direct sums).
        #[arg(long)]
        pub no_winograd: bool,
        /// Which convolution pairs run as one kernel: `off`, `large` (maps between them of at
        /// least 4 MB per example) or `all`.
        #[arg(long, default_value = "large", value_parser = parse_fusion)]
        pub fuse: crate::Fusion,
        /// How parallel operations hand work to the threads: `adaptive` (in steps that an
        /// early thread takes over where threads run unevenly, on the caller alone where
        /// waiting for workers costs more), `static` (one share per thread) or `steps`.
        #[arg(long, default_value = "adaptive", value_parser = parse_split)]
        pub split: crate::Split,
    }

    /// `--threads`: a positive number, or `auto` ([`crate::pool::physical_cores`]).
    pub fn parse_threads(s: &str) -> Result<usize, String> {
        if s == "auto" {
            return Ok(crate::pool::physical_cores());
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected a positive number or `auto`, got `{s}`")),
        }
    }

    /// `--fuse`: `off`, `large` or `all`.
    pub fn parse_fusion(s: &str) -> Result<crate::Fusion, String> {
        match s {
            "off" => Ok(crate::Fusion::Off),
            "large" => Ok(crate::Fusion::Large),
            "all" => Ok(crate::Fusion::All),
            _ => Err(format!("expected off, large or all, got `{s}`")),
        }
    }

    /// `--split`: `adaptive`, `static` or `steps`.
    pub fn parse_split(s: &str) -> Result<crate::Split, String> {
        match s {
            "adaptive" => Ok(crate::Split::Adaptive),
            "static" => Ok(crate::Split::Static),
            "steps" => Ok(crate::Split::Steps),
            _ => Err(format!("expected adaptive, static or steps, got `{s}`")),
        }
    }

    /// Reads a policy file written by `--calibrate -o` (or a bare policy object).
    pub fn read_policy(path: &std::path::Path) -> Result<SparsePolicy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let v = v.get("policy").cloned().unwrap_or(v);
        let p: SparsePolicy = serde_json::from_value(v)
            .map_err(|e| format!("{}: not a policy: {e}", path.display()))?;
        for d in [
            p.max_density_gemv,
            p.max_density_gemm,
            p.max_density_blocked,
        ] {
            if !(0.0..=1.0).contains(&d) {
                return Err(format!(
                    "{}: densities must lie in [0, 1], got {d}",
                    path.display()
                ));
            }
        }
        Ok(p)
    }

    fn print(text: &str) -> Result<(), String> {
        use std::io::Write;
        match std::io::stdout().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    fn calibrate_cli(a: &BenchArgs) -> Result<(), String> {
        let c = calibrate();
        let json = serde_json::to_string_pretty(&c).map_err(|e| e.to_string())? + "\n";
        if let Some(out) = &a.output {
            let tmp = out.with_extension("tmp");
            std::fs::write(&tmp, &json)
                .and_then(|_| std::fs::rename(&tmp, out))
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        if a.json {
            return print(&json);
        }
        let mut o = format!(
            "{} {}: sparse (f32 values, u16 indices) against dense, median µs\n",
            c.machine.arch, c.machine.os
        );
        o += &format!(
            "{:<8} {:>8} {:>10} {:>10} {:>8}\n",
            "product", "density", "dense", "sparse", "speedup"
        );
        for p in &c.points {
            o += &format!(
                "{:<8} {:>8.2} {:>10.2} {:>10.2} {:>7.2}x\n",
                p.product,
                p.density,
                p.dense_us,
                p.sparse_us,
                p.dense_us / p.sparse_us
            );
        }
        o += &format!(
            "policy: CSR runs sparse up to density {} (batch-1 Linear) and {} (convolutions, batches), \
             4x1 blocks up to {}\n",
            c.policy.max_density_gemv, c.policy.max_density_gemm, c.policy.max_density_blocked
        );
        if let Some(out) = &a.output {
            o += &format!("saved to {} (use with --policy)\n", out.display());
        }
        print(&o)
    }

    /// Runs the benchmark (or the calibration) and prints the report; errors name the file or
    /// setting at fault.
    pub fn run(a: &BenchArgs) -> Result<Option<BenchReport>, String> {
        if a.calibrate {
            return calibrate_cli(a).map(|_| None);
        }
        let path = a.model.as_ref().ok_or("a model to time is required")?;
        if a.batch == 0 || a.threads == 0 {
            return Err("--batch and --threads must be at least 1".to_string());
        }
        if a.seconds.is_nan() || a.seconds <= 0.0 {
            return Err(format!("--seconds must be positive, got {}", a.seconds));
        }
        let load = crate::LoadOptions {
            finite_weights: a.strict,
            ..crate::LoadOptions::default()
        };
        let open =
            |p: &PathBuf| Model::open_with(p, load).map_err(|e| format!("{}: {e}", p.display()));
        let model = open(path)?;
        let base = a.vs.as_ref().map(open).transpose()?;
        let input = match &a.input {
            Some(p) => {
                let b = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                if b.len() % 4 != 0 {
                    return Err(format!(
                        "{}: length is not a multiple of 4 bytes",
                        p.display()
                    ));
                }
                Some(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>(),
                )
            }
            None => None,
        };
        let t = Target {
            path: path.display().to_string(),
            model: &model,
        };
        let b = base.as_ref().zip(a.vs.as_ref()).map(|(m, p)| Target {
            path: p.display().to_string(),
            model: m,
        });
        let opts = BenchOptions {
            batch: a.batch,
            threads: a.threads,
            warmup: a.warmup,
            runs: a.runs,
            seconds: a.seconds,
            policy: match (&a.policy, a.keep_csr) {
                (Some(p), _) => read_policy(p)?,
                (None, true) => SparsePolicy::KEEP_CSR,
                (None, false) => SparsePolicy::default(),
            },
            memory_limit: a.memory_limit.saturating_mul(1 << 20),
            winograd: !a.no_winograd,
            fuse: a.fuse,
            split: a.split,
        };
        let r = bench(&t, b.as_ref(), input.as_deref(), &opts).map_err(|e| match &b {
            Some(b) => format!("{} vs {}: {e}", t.path, b.path),
            None => format!("{}: {e}", t.path),
        })?;
        let text = if a.json {
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n"
        } else {
            render(&r)
        };
        print(&text).map(|_| Some(r))
    }
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::cli::parse_threads;

    #[test]
    fn issue14_threads_auto_is_the_physical_cores() {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = parse_threads("auto").unwrap();
        assert_eq!(auto, crate::physical_cores());
        assert!((1..=logical).contains(&auto), "{auto} of {logical}");
        assert_eq!(parse_threads("3"), Ok(3));
        for bad in ["0", "-1", "two", ""] {
            assert!(parse_threads(bad).is_err(), "{bad:?}");
        }
    }
}
