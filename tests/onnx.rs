//! ONNX import (issue 13): imported models against ONNX Runtime, which ran the same files when
//! `scripts/onnx-fixtures.py` made the fixtures; and the errors of models nap cannot import.
//!
//! Run with `cargo test --release --test onnx`. The model tests need `NAP_FIXTURES` to name the
//! folder filled by `scripts/fetch-fixtures.sh` (which runs `onnx-fixtures.py`); without it they
//! print a notice and pass, with it a missing file is a failure.

use std::path::{Path, PathBuf};

use nap::eval::{agreement, reference_logits, runtime_logits};
use nap::export::{to_nap_bytes, ExportOptions};
use nap::import::npy::read_npy;
use nap::import::onnx::{read_onnx, OnnxOptions, Unsupported};
use nap_runtime::Model;

fn fixtures(test: &str) -> Option<PathBuf> {
    match std::env::var_os("NAP_FIXTURES") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d).join("onnx")),
        _ => {
            eprintln!(
                "NOTE: NAP_FIXTURES is not set, skipping {test}; run \
                 `scripts/fetch-fixtures.sh fixtures` and set NAP_FIXTURES=fixtures to run it"
            );
            None
        }
    }
}

fn fixture(dir: &Path, rel: &str) -> PathBuf {
    let p = dir.join(rel);
    assert!(
        p.is_file(),
        "NAP_FIXTURES is set but {} is missing: run scripts/fetch-fixtures.sh",
        p.display()
    );
    p
}

/// Imports `name.onnx`, runs the candle reference and the runtime on `name[.case].input.npy`
/// and compares both with ONNX Runtime's `name[.case].output.npy`.
fn check_against_ort(dir: &Path, name: &str, case: &str, tol: f32) {
    let m = read_onnx(
        &fixture(dir, &format!("{name}.onnx")),
        &OnnxOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let x = read_npy(&fixture(dir, &format!("{name}{case}.input.npy"))).unwrap();
    let want = read_npy(&fixture(dir, &format!("{name}{case}.output.npy"))).unwrap();
    assert_eq!(
        &x.shape[1..],
        m.input_shape()
            .iter()
            .map(|&d| d as usize)
            .collect::<Vec<_>>(),
        "{name}: input shape"
    );
    let classes: usize = want.shape[1..].iter().product();
    let batch = x.shape[0];
    let reference = reference_logits(&m, &x.data, batch, false).unwrap();
    let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
    let model = Model::from_vec(&bytes).unwrap();
    let ours = runtime_logits(&model, &x.data, batch, false).unwrap();
    for (engine, y) in [("candle", &reference), ("nap-runtime", &ours)] {
        let ag = agreement(y, &want.data, classes);
        eprintln!(
            "{name}{case} {engine} vs ONNX Runtime: {} examples, max rel err {:.2e}, top-1 mismatches {}",
            ag.examples, ag.max_rel_err, ag.top1_mismatches
        );
        assert!(
            ag.max_rel_err <= tol && ag.top1_mismatches == 0,
            "{name}{case}: {engine} disagrees with ONNX Runtime: {ag:?}"
        );
    }
}

const TOL: f32 = 1e-5;

#[test]
fn issue13_real_models_match_onnx_runtime() {
    let Some(dir) = fixtures("issue13_real_models_match_onnx_runtime") else {
        return;
    };
    check_against_ort(&dir, "m1", "", TOL);
    check_against_ort(&dir, "m1", ".mnist64", TOL);
    check_against_ort(&dir, "m2", "", TOL);
    check_against_ort(&dir, "m2", ".photos", TOL);
    check_against_ort(&dir, "m2-bn", "", TOL);
}

#[test]
fn issue13_backend_test_graphs_match_onnx_runtime() {
    let Some(dir) = fixtures("issue13_backend_test_graphs_match_onnx_runtime") else {
        return;
    };
    for name in ["vgg19", "resnet50", "squeezenet", "densenet121"] {
        check_against_ort(&dir, name, "", TOL);
    }
}

/// The graphs with ops nap does not support yet: every offending node is named, nothing else.
#[test]
fn issue13_unsupported_ops_are_listed_by_node() {
    let Some(dir) = fixtures("issue13_unsupported_ops_are_listed_by_node") else {
        return;
    };
    for (name, op) in [
        ("inception_v1", "Lrn"),
        ("inception_v2", "MaxPool2d"),
        ("shufflenet", "Transpose"),
    ] {
        let e = read_onnx(
            &fixture(&dir, &format!("{name}.onnx")),
            &OnnxOptions::default(),
        )
        .expect_err(name);
        let u = e
            .downcast_ref::<Unsupported>()
            .unwrap_or_else(|| panic!("{name}: not an Unsupported error: {e:#}"));
        assert!(
            u.nodes.iter().any(|n| n.op.contains(op)),
            "{name}: {op} not listed: {u}"
        );
        assert!(u
            .nodes
            .iter()
            .all(|n| !n.node.is_empty() && !n.reason.is_empty()));
        eprintln!("{u}");
    }
}
