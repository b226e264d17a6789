//! Sparse kernels against the runtime's own dense ones and the `gemm` crate (0.19,
//! `Parallelism::None`), single-threaded, across unstructured sparsity 0–99 %: batch-1
//! matrix-vector products ([`SPMV_KERNELS`] vs dense GEMV) on weight shapes from real models and
//! two squares, and sparse × dense products ([`SPMM_KERNELS`] vs dense GEMM) on the convolutions
//! of M1 (3×3 via patches) and the 1×1 convolutions of MobileNetV2.
//!
//! Criterion groups report dense-equivalent FLOP/s (2·rows·cols per product, criterion prints it
//! as elem/s), so a sparse kernel's figure is directly comparable with the dense one.
//! `NAP_BENCH_TABLE=1` instead prints the BENCHMARKS.md table: the median of interleaved rounds
//! (robust on a shared machine), the speedup over dense and the break-even sparsity;
//! `NAP_BENCH_SHAPE=SUBSTRING` limits it to matching shapes; `NAP_BENCH_COLD=1` flushes the
//! caches before every timed call (weights streamed from memory, as in a model larger than the
//! caches).

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;

use common::{data, gemm_crate};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nap_runtime::format::IndexWidth;
use nap_runtime::kernels::{
    bspmv, gemm, gemm_workspace, gemv, Activation, Bias, Dtype, Elems, MatRef, SPMM_KERNELS,
    SPMV_KERNELS,
};
use nap_runtime::model::{BlockCsrBuf, CsrBuf};

/// `(name, rows, columns)` of the weight matrix.
const SHAPES: &[(&str, usize, usize)] = &[
    ("1024x1024", 1024, 1024),
    ("4096x1024", 4096, 1024),
    ("lenet300_fc1_300x784", 300, 784),
    ("lenet5_fc1_500x800", 500, 800),
    ("m1_fc_256x1152", 256, 1152),
    ("m2_classifier_1000x1280", 1000, 1280),
];

/// `(name, output channels M, patch rows K, pixels P)`: `Y[M × P] = W[M × K] · B[K × P]`.
const CONV_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("m1_conv2_64x288x196", 64, 288, 196),
    ("m1_conv3_128x576x49", 128, 576, 49),
    ("m2_stem3x3_32x27x12544", 32, 27, 12544),
    ("m2_pw_144x24x3136", 144, 24, 3136),
    ("m2_pw_32x144x784", 32, 144, 784),
    ("m2_pw_192x32x784", 192, 32, 784),
    ("m2_pw_384x64x196", 384, 64, 196),
    ("m2_pw_960x160x49", 960, 160, 49),
    ("m2_pw_1280x320x49", 1280, 320, 49),
];

const SPARSITIES: &[f64] = &[0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];

/// `w` (`m × k`) with a random `sparsity` fraction of its 4×1 blocks set to zero.
fn sparsify_blocks(w: &[f32], m: usize, k: usize, sparsity: f64, seed: u32) -> Vec<f32> {
    let u = data(m.div_ceil(4) * k, seed);
    let mut out = w.to_vec();
    for r in 0..m {
        for j in 0..k {
            if ((u[(r / 4) * k + j] + 0.5) as f64) < sparsity {
                out[r * k + j] = 0.0;
            }
        }
    }
    out
}

/// `w` with a uniformly random `sparsity` fraction of its entries set to zero.
fn sparsify(w: &[f32], sparsity: f64, seed: u32) -> Vec<f32> {
    let u = data(w.len(), seed);
    w.iter()
        .zip(u)
        .map(|(&v, r)| {
            if ((r + 0.5) as f64) < sparsity {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// Every available kernel with u16 indices (the storage of layers with at most 65,536 inputs).
fn sparse_kernels() -> Vec<&'static nap_runtime::kernels::SpmvKernel> {
    SPMV_KERNELS
        .iter()
        .filter(|k| k.isa.is_available() && k.index == IndexWidth::U16)
        .collect()
}

/// The median of the rounds, or with `NAP_BENCH_STAT=min` the fastest.
fn median(mut v: Vec<f64>) -> f64 {
    if std::env::var("NAP_BENCH_STAT").is_ok_and(|s| s == "min") {
        return v.iter().copied().fold(f64::INFINITY, f64::min);
    }
    nap_runtime::bench::median(&mut v)
}

/// µs per call of `f`: warm, the mean of `reps` calls after an untimed one; cold, one call after
/// [`flush_caches`].
fn time_call(cold: bool, reps: usize, f: &mut dyn FnMut()) -> f64 {
    if cold {
        flush_caches();
        let t = Instant::now();
        f();
        return t.elapsed().as_secs_f64() * 1e6;
    }
    nap_runtime::bench::time_warm(reps, f)
}

/// Evicts the benchmark's operands from every cache level by streaming through 64 MiB.
fn flush_caches() {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u64>> = std::cell::RefCell::new(vec![1; 8 << 20]);
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        let mut acc = 0u64;
        for v in b.iter_mut().step_by(8) {
            *v = v.wrapping_add(acc);
            acc ^= *v;
        }
        black_box(acc);
    });
}

fn table(cold: bool) {
    println!(
        "{} caches: {}\n",
        if cold { "cold" } else { "warm" },
        if cold {
            "flushed before every timed call"
        } else {
            "operands in cache (an untimed call first)"
        }
    );
    let kers = sparse_kernels();
    let head: Vec<String> = kers.iter().map(|k| format!("{} µs", k.name)).collect();
    println!(
        "| shape | sparsity | dense gemv µs | gemm crate µs | {} | speedup f32 | speedup f16 | 4×1 blocks µs | speedup 4×1 |",
        head.join(" | ")
    );
    println!(
        "|---|---:|---:|---:|{}---:|---:|---:|---:|",
        "---:|".repeat(kers.len())
    );
    let mut summary = Vec::new();
    let only = std::env::var("NAP_BENCH_SHAPE").unwrap_or_default();
    for &(name, m, k) in SHAPES.iter().filter(|s| s.0.contains(only.as_str())) {
        let w = data(m * k, 3);
        let x = data(k, 4);
        let mut y = vec![0f32; m];
        let reps = ((4e6 / (m * k) as f64) as usize).max(2);
        // Warm: one untimed call first, so every implementation is timed with its operands in
        // cache. Cold: caches flushed before one timed call, as when a model's weights exceed
        // the caches and every layer streams its weights from memory.
        let time = |f: &mut dyn FnMut()| time_call(cold, reps, f);
        let (mut speedups, mut blocked_speedups) = (Vec::new(), Vec::new());
        for &s in SPARSITIES {
            let ws = sparsify(&w, s, 5);
            let bufs: Vec<CsrBuf> = kers
                .iter()
                .map(|ker| CsrBuf::from_dense(m, k, &ws, ker.dtype, ker.index))
                .collect();
            // The same sparsity in whole 4×1 blocks (what `nap prune --block 4x1` produces).
            let wb = sparsify_blocks(&w, m, k, s, 6);
            let blk = BlockCsrBuf::from_dense(m, k, 4, &wb, Dtype::F32, IndexWidth::U16);
            let mut tb = Vec::new();
            let mut t = vec![vec![]; 2 + kers.len()];
            for _ in 0..31 {
                tb.push(time(&mut || {
                    bspmv(&blk.view(), &x, None, Activation::None, &mut y);
                    black_box(&y);
                }));
                t[0].push(time(&mut || {
                    gemv(Elems::F32(&ws), k, m, k, &x, None, Activation::None, &mut y);
                    black_box(&y);
                }));
                t[1].push(time(&mut || {
                    gemm_crate(m, 1, k, &ws, &x, &mut y);
                    black_box(&y);
                }));
                for (i, (ker, buf)) in kers.iter().zip(&bufs).enumerate() {
                    t[2 + i].push(time(&mut || {
                        ker.run(&buf.view(), 0..m, &x, None, Activation::None, &mut y);
                        black_box(&y);
                    }));
                }
            }
            let dtypes: Vec<Dtype> = kers.iter().map(|k| k.dtype).collect();
            let (csr, blocked) = table_row(name, s, t, &dtypes, 2, Some(median(tb)));
            speedups.push((s, csr));
            blocked_speedups.push((s, blocked.expect("a blocked time was passed")));
        }
        summary.push(format!(
            "{name}: break-even sparsity (f32 values) {} unstructured, {} in 4×1 blocks",
            break_even(&speedups),
            break_even(&blocked_speedups)
        ));
    }
    print_summary(&summary);
}

/// The SpMM table: every available u16-index kernel against the runtime's dense GEMM.
fn conv_table(cold: bool) {
    let kers: Vec<_> = SPMM_KERNELS
        .iter()
        .filter(|k| k.isa.is_available() && k.index == IndexWidth::U16)
        .collect();
    let head: Vec<String> = kers.iter().map(|k| format!("{} µs", k.name)).collect();
    println!(
        "\n| conv shape (M×K×P) | sparsity | dense gemm µs | gemm crate µs | {} | speedup f32 | speedup f16 |",
        head.join(" | ")
    );
    println!(
        "|---|---:|---:|---:|{}---:|---:|",
        "---:|".repeat(kers.len())
    );
    let only = std::env::var("NAP_BENCH_SHAPE").unwrap_or_default();
    let mut summary = Vec::new();
    for &(name, m, k, p) in CONV_SHAPES.iter().filter(|s| s.0.contains(only.as_str())) {
        let w = data(m * k, 3);
        let b = data(k * p, 4);
        let mut y = vec![0f32; m * p];
        let mut ws = vec![0f32; gemm_workspace(m, p, k)];
        let reps = ((2e7 / (m * k * p) as f64) as usize).max(2);
        let time = |f: &mut dyn FnMut()| time_call(cold, reps, f);
        let mut speedups = Vec::new();
        for &s in SPARSITIES {
            let wsp = sparsify(&w, s, 5);
            let bufs: Vec<CsrBuf> = kers
                .iter()
                .map(|ker| CsrBuf::from_dense(m, k, &wsp, ker.dtype, ker.index))
                .collect();
            let mut t = vec![vec![]; 2 + kers.len()];
            for _ in 0..15 {
                t[0].push(time(&mut || {
                    let am = MatRef::row_major(Elems::F32(&wsp), m, k);
                    let bm = MatRef::row_major(Elems::F32(&b), k, p);
                    gemm(am, bm, &mut y, p, Bias::None, Activation::None, &mut ws);
                    black_box(&y);
                }));
                t[1].push(time(&mut || {
                    gemm_crate(m, p, k, &wsp, &b, &mut y);
                    black_box(&y);
                }));
                for (i, (ker, buf)) in kers.iter().zip(&bufs).enumerate() {
                    t[2 + i].push(time(&mut || {
                        ker.run(&buf.view(), 0..m, &b, p, None, Activation::None, &mut y);
                        black_box(&y);
                    }));
                }
            }
            let dtypes: Vec<Dtype> = kers.iter().map(|k| k.dtype).collect();
            speedups.push((s, table_row(name, s, t, &dtypes, 1, None).0));
        }
        summary.push(format!(
            "{name}: break-even sparsity (f32 values) {}",
            break_even(&speedups)
        ));
    }
    print_summary(&summary);
}

/// Prints one table row from the rounds `t` (dense, `gemm` crate, then one per sparse kernel,
/// whose value types are `dtypes`), and `blocks` (µs of the 4×1-blocked kernel) if given; returns
/// the speedup of the fastest f32 sparse kernel.
fn table_row(
    name: &str,
    sparsity: f64,
    t: Vec<Vec<f64>>,
    dtypes: &[Dtype],
    digits: usize,
    blocks: Option<f64>,
) -> (f64, Option<f64>) {
    let t: Vec<f64> = t.into_iter().map(median).collect();
    let best = |d: Dtype| {
        dtypes
            .iter()
            .zip(&t[2..])
            .filter(|(k, _)| **k == d)
            .map(|(_, &v)| v)
            .fold(f64::INFINITY, f64::min)
    };
    let (b32, b16) = (best(Dtype::F32), best(Dtype::F16));
    let cells: Vec<String> = t.iter().map(|v| format!("{v:.digits$}")).collect();
    let extra = blocks.map_or(String::new(), |b| {
        format!(" {b:.digits$} | {:.2}× |", t[0] / b)
    });
    println!(
        "| {name} | {:.0} % | {} | {:.2}× | {:.2}× |{extra}",
        sparsity * 100.0,
        cells.join(" | "),
        t[0] / b32,
        t[0] / b16
    );
    (t[0] / b32, blocks.map(|b| t[0] / b))
}

fn print_summary(summary: &[String]) {
    println!();
    for s in summary {
        println!("- {s}");
    }
}

/// First sparsity where the sparse kernel wins, interpolated linearly between measured points.
fn break_even(speedups: &[(f64, f64)]) -> String {
    let be = speedups
        .windows(2)
        .find(|p| p[0].1 < 1.0 && p[1].1 >= 1.0)
        .map(|p| {
            let (s0, r0, s1, r1) = (p[0].0, p[0].1, p[1].0, p[1].1);
            s0 + (1.0 - r0) * (s1 - s0) / (r1 - r0)
        });
    match (speedups[0].1 >= 1.0, be) {
        (true, _) => "≤ 0 %".to_string(),
        (false, Some(b)) => format!("{:.0} %", b * 100.0),
        (false, None) => "none ≤ 99 %".to_string(),
    }
}

fn bench_spmv(c: &mut Criterion) {
    if std::env::var_os("NAP_BENCH_TABLE").is_some() {
        let cold = std::env::var_os("NAP_BENCH_COLD").is_some();
        if std::env::var_os("NAP_BENCH_CONV_ONLY").is_none() {
            table(cold);
        }
        conv_table(cold);
        return;
    }
    for &(name, m, k) in SHAPES {
        let w = data(m * k, 3);
        let x = data(k, 4);
        let mut y = vec![0f32; m];
        for &s in SPARSITIES {
            let ws = sparsify(&w, s, 5);
            let mut g = c.benchmark_group(format!("spmv/{name}/{:.0}%", s * 100.0));
            g.throughput(Throughput::Elements((2 * m * k) as u64));
            g.sample_size(10);
            g.bench_function(BenchmarkId::from_parameter("dense_gemv"), |b| {
                b.iter(|| {
                    gemv(Elems::F32(&ws), k, m, k, &x, None, Activation::None, &mut y);
                    black_box(&y);
                })
            });
            g.bench_function(BenchmarkId::from_parameter("gemm_crate"), |b| {
                b.iter(|| {
                    gemm_crate(m, 1, k, &ws, &x, &mut y);
                    black_box(&y);
                })
            });
            for ker in sparse_kernels() {
                let csr = CsrBuf::from_dense(m, k, &ws, ker.dtype, ker.index);
                g.bench_function(BenchmarkId::from_parameter(ker.name), |b| {
                    b.iter(|| {
                        ker.run(&csr.view(), 0..m, &x, None, Activation::None, &mut y);
                        black_box(&y);
                    })
                });
            }
            g.finish();
        }
    }
}

fn bench_spmm(c: &mut Criterion) {
    if std::env::var_os("NAP_BENCH_TABLE").is_some() {
        return;
    }
    for &(name, m, k, p) in CONV_SHAPES {
        let w = data(m * k, 3);
        let b = data(k * p, 4);
        let mut y = vec![0f32; m * p];
        let mut ws = vec![0f32; gemm_workspace(m, p, k)];
        for &s in SPARSITIES {
            let wsp = sparsify(&w, s, 5);
            let mut g = c.benchmark_group(format!("spmm/{name}/{:.0}%", s * 100.0));
            g.throughput(Throughput::Elements((2 * m * k * p) as u64));
            g.sample_size(10);
            g.bench_function(BenchmarkId::from_parameter("dense_gemm"), |bch| {
                bch.iter(|| {
                    let am = MatRef::row_major(Elems::F32(&wsp), m, k);
                    let bm = MatRef::row_major(Elems::F32(&b), k, p);
                    gemm(am, bm, &mut y, p, Bias::None, Activation::None, &mut ws);
                    black_box(&y);
                })
            });
            g.bench_function(BenchmarkId::from_parameter("gemm_crate"), |bch| {
                bch.iter(|| {
                    gemm_crate(m, p, k, &wsp, &b, &mut y);
                    black_box(&y);
                })
            });
            for ker in SPMM_KERNELS
                .iter()
                .filter(|k| k.isa.is_available() && k.index == IndexWidth::U16)
            {
                let csr = CsrBuf::from_dense(m, k, &wsp, ker.dtype, ker.index);
                g.bench_function(BenchmarkId::from_parameter(ker.name), |bch| {
                    bch.iter(|| {
                        ker.run(&csr.view(), 0..m, &b, p, None, Activation::None, &mut y);
                        black_box(&y);
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = bench_spmv, bench_spmm
}
criterion_main!(benches);
