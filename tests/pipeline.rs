//! Import → export → runtime against candle's reference forward, for every built-in architecture,
//! storage type and layout. Run in release: `cargo test --release --test pipeline`.

use nap::export::{fuse, to_nap_bytes, ExportOptions, Storage};
use nap::ir::HostModel;
use nap::{archs, eval, reference};
use nap_runtime::format::{BatchNorm, Conv2d, DType, Linear, Op};
use nap_runtime::{Model, TensorView};
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Random weights with non-trivial BatchNorm statistics, so that folding is exercised.
fn model(arch: &str, seed: u64) -> HostModel {
    let mut m = archs::random(arch, seed).unwrap();
    let mut r = rng(seed + 1);
    for n in m.graph.nodes.clone() {
        if let Op::BatchNorm(BatchNorm {
            gamma,
            beta,
            mean,
            var,
            ..
        }) = n.op
        {
            for (t, lo, hi) in [
                (gamma, 0.5, 1.5),
                (beta, -0.2, 0.2),
                (mean, -0.2, 0.2),
                (var, 0.5, 2.0),
            ] {
                m.tensors[t as usize]
                    .data
                    .iter_mut()
                    .for_each(|v| *v = r.gen_range(lo..hi));
            }
        }
    }
    m
}

fn inputs(m: &HostModel, n: usize, seed: u64) -> Vec<f32> {
    let per: usize = m.input_shape().iter().map(|&d| d as usize).product();
    let mut r = rng(seed);
    (0..n * per).map(|_| r.gen_range(-1.0..1.0)).collect()
}

fn runtime(bytes: &[u8], x: &[f32], batch: usize) -> Vec<f32> {
    let model = Model::from_vec(bytes).unwrap();
    eval::runtime_logits(&model, x, batch, false).unwrap()
}

fn assert_agrees(arch: &str, ours: &[f32], reference: &[f32], classes: usize, tol: f32) {
    let ag = eval::agreement(ours, reference, classes);
    assert!(
        ag.max_rel_err <= tol,
        "{arch}: max relative error {} > {tol}",
        ag.max_rel_err
    );
    assert_eq!(ag.top1_mismatches, 0, "{arch}: top-1 differs");
}

const ARCHS: &[&str] = &[
    "digits-cnn",
    "mnist-cnn",
    "lenet-300-100",
    "lenet5-caffe",
    "mobilenet-v2",
];

#[test]
fn runtime_matches_reference_for_every_architecture() {
    for (i, arch) in ARCHS.iter().enumerate() {
        let m = model(arch, i as u64);
        let n = if *arch == "mobilenet-v2" { 2 } else { 5 };
        let x = inputs(&m, n, 100 + i as u64);
        let reference = eval::reference_logits(&m, &x, 64, false).unwrap();
        let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
        let classes = m.output_shape()[0] as usize;
        for batch in [1, 2] {
            assert_agrees(arch, &runtime(&bytes, &x, batch), &reference, classes, 1e-4);
        }
    }
}

#[test]
fn fusion_preserves_the_function_and_removes_nodes() {
    let m = model("mobilenet-v2", 7);
    let f = fuse(&m).unwrap();
    assert!(f
        .graph
        .nodes
        .iter()
        .all(|n| !matches!(n.op, Op::BatchNorm(BatchNorm { .. }) | Op::Act(_))));
    assert!(f.graph.nodes.len() < m.graph.nodes.len() / 2);
    let x = inputs(&m, 2, 8);
    let a = eval::reference_logits(&m, &x, 2, false).unwrap();
    let b = eval::reference_logits(&f, &x, 2, false).unwrap();
    assert_agrees("fused mobilenet-v2", &b, &a, 1000, 1e-5);
}

#[test]
fn f16_storage_matches_reference_on_rounded_weights() {
    let m = model("mnist-cnn", 3);
    let bytes = to_nap_bytes(
        &m,
        ExportOptions {
            dtype: DType::F16,
            storage: Storage::Dense,
        },
    )
    .unwrap();
    let nap = Model::from_vec(&bytes).unwrap();
    let w = m.prunable()[0].1;
    assert!(matches!(
        nap.tensor(w),
        TensorView::Dense(nap_runtime::model::Elems::F16(_))
    ));
    // The reference runs on the same f16-rounded weights, so only f32 arithmetic differs.
    let mut rounded = fuse(&m).unwrap();
    for (_, w) in rounded.prunable() {
        for v in &mut rounded.tensors[w as usize].data {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }
    let x = inputs(&m, 4, 9);
    let reference = eval::reference_logits(&rounded, &x, 4, false).unwrap();
    assert_agrees(
        "mnist-cnn f16",
        &runtime(&bytes, &x, 4),
        &reference,
        10,
        1e-4,
    );
}

#[test]
fn sparse_weights_are_stored_csr_and_match_reference() {
    for arch in ["lenet-300-100", "lenet5-caffe", "mnist-cnn"] {
        let mut m = model(arch, 11);
        let mut r = rng(12);
        for (_, w) in m.prunable() {
            m.tensors[w as usize]
                .data
                .iter_mut()
                .for_each(|v| *v = if r.gen_bool(0.9) { 0.0 } else { *v });
        }
        let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
        let nap = Model::from_vec(&bytes).unwrap();
        let dense = to_nap_bytes(
            &m,
            ExportOptions {
                storage: Storage::Dense,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            bytes.len() < dense.len() / 3,
            "{arch}: CSR file is not smaller"
        );
        let csr = nap
            .graph()
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Linear(Linear { weight, .. }) | Op::Conv2d(Conv2d { weight, .. }) if matches!(nap.tensor(weight), TensorView::Csr(_))))
            .count();
        assert!(csr > 0, "{arch}: no layer stored as CSR");
        let x = inputs(&m, 3, 13);
        let reference = eval::reference_logits(&m, &x, 3, false).unwrap();
        for batch in [1, 3] {
            assert_agrees(arch, &runtime(&bytes, &x, batch), &reference, 10, 1e-4);
        }
    }
}

#[test]
fn exported_metadata_counts_parameters() {
    let m = model("lenet5-caffe", 2);
    assert_eq!(m.param_count(), 431_080);
    assert_eq!(model("lenet-300-100", 2).param_count(), 266_610);
    assert_eq!(model("mnist-cnn", 2).param_count(), 390_410);
    let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
    let nap = Model::from_vec(&bytes).unwrap();
    let layers = &nap.metadata().layers;
    assert_eq!(layers.len(), 4);
    assert_eq!(
        layers.iter().map(|l| l.params).sum::<u64>(),
        500 + 25_000 + 400_000 + 5_000
    );
}

#[test]
fn reference_forward_matches_hand_computed_linear() {
    // Independent of both engines: y = relu(W x + b) by hand.
    let mut m = archs::random("lenet-300-100", 5).unwrap();
    for t in &mut m.tensors {
        t.data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i % 7) as f32 - 3.0) * 0.01);
    }
    let x: Vec<f32> = (0..784).map(|i| ((i % 5) as f32) * 0.1).collect();
    let layer = |w: &[f32], b: &[f32], x: &[f32], relu: bool| -> Vec<f32> {
        (0..b.len())
            .map(|o| {
                let s: f64 = (0..x.len())
                    .map(|k| w[o * x.len() + k] as f64 * x[k] as f64)
                    .sum::<f64>()
                    + b[o] as f64;
                if relu {
                    s.max(0.0) as f32
                } else {
                    s as f32
                }
            })
            .collect()
    };
    let t = &m.tensors;
    let h1 = layer(&t[0].data, &t[1].data, &x, true);
    let h2 = layer(&t[2].data, &t[3].data, &h1, true);
    let y = layer(&t[4].data, &t[5].data, &h2, false);
    let got = reference::logits(&m, &x).unwrap();
    for (a, b) in got.iter().zip(&y) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn threads_give_the_same_outputs() {
    for arch in ["mnist-cnn", "mobilenet-v2", "lenet-300-100"] {
        let m = model(arch, 21);
        let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
        let nap = Model::from_vec(&bytes).unwrap();
        for batch in [1, 4] {
            let x = inputs(&m, batch, 22);
            let one = nap_runtime::Session::new(&nap, batch)
                .unwrap()
                .run(&x)
                .unwrap()
                .to_vec();
            let mut s = nap_runtime::Session::with_threads(&nap, batch, 3).unwrap();
            s.set_profiling(true);
            let three = s.run(&x).unwrap().to_vec();
            assert_agrees(arch, &three, &one, m.output_shape()[0] as usize, 1e-6);
            let times = s.node_times().unwrap();
            assert_eq!(times.len(), nap.graph().nodes.len());
            assert!(times.iter().any(|t| !t.is_zero()));
        }
    }
}

#[test]
fn mlp_specs_build_and_match_lenet() {
    let a = archs::random("mlp-784-300-100-10", 4).unwrap();
    let b = archs::random("lenet-300-100", 4).unwrap();
    assert_eq!(a.param_count(), b.param_count());
    assert_eq!(a.tensors, b.tensors);
    let m = archs::random("mlp-5-7-3", 4).unwrap();
    assert_eq!(m.param_count(), 5 * 7 + 7 + 7 * 3 + 3);
    let x = inputs(&m, 3, 5);
    let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
    let reference = eval::reference_logits(&m, &x, 3, false).unwrap();
    assert_agrees("mlp-5-7-3", &runtime(&bytes, &x, 3), &reference, 3, 1e-4);
    for bad in ["mlp-", "mlp-784", "mlp-784-x-10", "mlp-0-10"] {
        assert!(archs::random(bad, 0).is_err(), "{bad}");
    }
}
