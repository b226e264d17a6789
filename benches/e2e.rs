//! End-to-end latency: nap-runtime (1 and 2 threads) against candle's CPU forward on the same
//! fused graph and inputs. Needs NAP_FIXTURES (scripts/fetch-fixtures.sh).
//!
//! RAYON_NUM_THREADS=1 NAP_FIXTURES=fixtures cargo bench --bench e2e   # candle single-threaded

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nap::export::{to_nap_bytes, ExportOptions};
use nap::{archs, import, reference};
use nap_runtime::{Model, Session};

fn fixtures() -> PathBuf {
    PathBuf::from(
        std::env::var_os("NAP_FIXTURES").expect("set NAP_FIXTURES to the fixtures folder"),
    )
}

fn bench_model(c: &mut Criterion, name: &str, ckpt: &str, arch: &str, batches: &[usize]) {
    let tensors = import::read_checkpoint(&fixtures().join(ckpt)).unwrap();
    let host = archs::from_checkpoint(arch, tensors).unwrap();
    let bytes = to_nap_bytes(&host, ExportOptions::default()).unwrap();
    let model = Model::from_vec(&bytes).unwrap();
    let dev = candle_core::Device::Cpu;
    // candle runs the same fused graph (BatchNorm folded, activations fused) as the runtime.
    let fused = nap::export::fuse(&host).unwrap();
    let params = reference::params(&fused, &dev).unwrap();
    let per: usize = host.input_shape().iter().map(|&d| d as usize).product();
    let mut g = c.benchmark_group(name);
    g.sample_size(20);
    for &b in batches {
        let x: Vec<f32> = (0..b * per)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.4)
            .collect();
        let mut s = Session::new(&model, b).unwrap();
        g.bench_with_input(BenchmarkId::new("nap-runtime", b), &b, |bench, _| {
            bench.iter(|| s.run(&x).unwrap()[0])
        });
        let mut s2 = Session::with_threads(&model, b, 2).unwrap();
        g.bench_with_input(
            BenchmarkId::new("nap-runtime-2threads", b),
            &b,
            |bench, _| bench.iter(|| s2.run(&x).unwrap()[0]),
        );
        let xt = reference::input(&fused, &x, &dev).unwrap();
        g.bench_with_input(BenchmarkId::new("candle", b), &b, |bench, _| {
            bench.iter(|| reference::forward(&fused.graph, &params, &xt).unwrap())
        });
    }
    g.finish();
}

fn e2e(c: &mut Criterion) {
    bench_model(c, "m1-mnist-cnn", "m1.pth", "mnist-cnn", &[1, 64]);
    bench_model(c, "m2-mobilenet-v2", "m2.pth", "mobilenet-v2", &[1]);
}

criterion_group!(benches, e2e);
criterion_main!(benches);
