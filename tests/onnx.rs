//! ONNX import (issue 13): imported models against ONNX Runtime, which ran the same files when
//! `scripts/onnx-fixtures.py` made the fixtures; and the errors of models nap cannot import.
//!
//! Run with `cargo test --release --test onnx`. The model tests need `NAP_FIXTURES` to name the
//! folder filled by `scripts/fetch-fixtures.sh` (which runs `onnx-fixtures.py`); without it they
//! print a notice and pass, with it a missing file is a failure.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;

use nap::eval::{agreement, reference_logits, runtime_logits};
use nap::export::{to_nap_bytes, ExportOptions};
use nap::import::npy::read_npy;
use nap::import::onnx::{read_onnx, OnnxOptions, Unsupported};
use nap_runtime::format::{Activation, Op};
use nap_runtime::Model;

/// The ONNX fixtures' folder (`NAP_FIXTURES/onnx`).
fn fixtures(test: &str) -> Option<PathBuf> {
    common::fixtures(test).map(|d| d.join("onnx"))
}

/// Imports `name.onnx`, runs the candle reference and the runtime on `name[.case].input.npy`
/// and compares both with ONNX Runtime's `name[.case].output.npy`.
fn check_against_ort(dir: &Path, name: &str, case: &str, tol: f32) {
    check_against_ort_with(dir, name, case, tol, &OnnxOptions::default())
}

fn check_against_ort_with(dir: &Path, name: &str, case: &str, tol: f32, opts: &OnnxOptions) {
    let model = fixture(dir, &format!("{name}.onnx"));
    check_model_against_ort(&model, dir, &format!("{name}{case}"), tol, opts)
}

/// Imports `model`, runs it on `dir/stem.input.npy` and compares with `dir/stem.output.npy`:
/// the relative error, and the top-1 class of each example.
fn check_model_against_ort(model: &Path, dir: &Path, stem: &str, tol: f32, opts: &OnnxOptions) {
    check_outputs_against_ort(model, dir, stem, tol, opts, Compare::Classes)
}

/// MaxPool and AveragePool (count_include_pad 0) whose ceil_mode adds a last window.
#[test]
fn issue13_ceil_mode_pooling_matches_onnx_runtime() {
    let Some(dir) = fixtures("issue13_ceil_mode_pooling_matches_onnx_runtime") else {
        return;
    };
    check_against_ort(&dir, "pool-ceil", "", TOL);
}

/// A transformer block as torch exports it at opset 17 (LayerNormalization, Split, Unsqueeze,
/// attention written as MatMul, Mul, Softmax, MatMul) after a convolution.
#[test]
fn issue13_attention_block_matches_onnx_runtime() {
    let Some(dir) = fixtures("issue13_attention_block_matches_onnx_runtime") else {
        return;
    };
    let model = fixture(&dir, "attention-block.onnx");
    let opts = OnnxOptions::default();
    check_outputs_against_ort(&model, &dir, "attention-block", TOL, &opts, Compare::Steps);
}

/// How an output is compared with ONNX Runtime's.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// One vector of class scores per example: identical top-1.
    Classes,
    /// A map: its arg-max is no class (a probability map has many equal maxima).
    Map,
    /// A sequence of class-score vectors (the last axis): identical top-1 at every step.
    Steps,
}

/// [`check_model_against_ort`] with the comparison `cmp`; the relative error is against the
/// largest value of each example.
fn check_outputs_against_ort(
    model: &Path,
    dir: &Path,
    stem: &str,
    tol: f32,
    opts: &OnnxOptions,
    cmp: Compare,
) {
    let (name, case) = (stem, "");
    let m = read_onnx(model, opts).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let x = read_npy(&fixture(dir, &format!("{name}{case}.input.npy"))).unwrap();
    let want = read_npy(&fixture(dir, &format!("{name}{case}.output.npy"))).unwrap();
    assert_eq!(&x.shape[1..], m.input_shape(), "{name}: input shape");
    let classes: usize = want.dims()[1..].iter().product();
    let batch = x.dims()[0];
    let reference = reference_logits(&m, &x.data, batch, false).unwrap();
    let bytes = to_nap_bytes(&m, ExportOptions::default()).unwrap();
    let model = Model::from_vec(&bytes).unwrap();
    let ours = runtime_logits(&model, &x.data, batch, false).unwrap();
    for (engine, y) in [("candle", &reference), ("nap-runtime", &ours)] {
        let ag = agreement(y, &want.data, classes);
        let top1 = match cmp {
            Compare::Classes => ag.top1_mismatches,
            Compare::Map => 0,
            Compare::Steps => {
                agreement(y, &want.data, *want.dims().last().unwrap()).top1_mismatches
            }
        };
        eprintln!(
            "{name}{case} {engine} vs ONNX Runtime: {} examples, max rel err {:.2e}, top-1 mismatches {top1}",
            ag.examples, ag.max_rel_err
        );
        assert!(
            ag.max_rel_err <= tol && top1 == 0,
            "{name}{case}: {engine} disagrees with ONNX Runtime: {ag:?}, top-1 mismatches {top1}"
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
    for name in [
        "vgg19",
        "resnet50",
        "squeezenet",
        "densenet121",
        "inception_v1",
        "inception_v2",
        "shufflenet",
    ] {
        check_against_ort(&dir, name, "", TOL);
    }
}

/// A dynamic-shaped export (input [N, 1, H, W], flatten as torch's `x.view(x.size(0), -1)`)
/// needs --input-shape, says so, and with it folds the shape arithmetic and matches ORT.
#[test]
fn issue13_dynamic_input_needs_and_takes_input_shape() {
    let Some(dir) = fixtures("issue13_dynamic_input_needs_and_takes_input_shape") else {
        return;
    };
    let e = read_onnx(&fixture(&dir, "m1-dynamic.onnx"), &OnnxOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("--input-shape 1,H,W"), "{e:#}");
    let opts = OnnxOptions {
        input_shape: Some(vec![1, 28, 28]),
    };
    check_against_ort_with(&dir, "m1-dynamic", "", TOL, &opts);
    let wrong = OnnxOptions {
        input_shape: Some(vec![3, 28, 28]),
    };
    let e = read_onnx(&fixture(&dir, "m1-dynamic.onnx"), &wrong).unwrap_err();
    assert!(format!("{e:#}").contains("disagrees"), "{e:#}");
}

/// Weights in an external data file are read; a missing data file is an error, not a panic.
#[test]
fn issue13_external_data_is_read_and_a_missing_file_is_an_error() {
    let Some(dir) = fixtures("issue13_external_data_is_read_and_a_missing_file_is_an_error") else {
        return;
    };
    let ext = read_onnx(&fixture(&dir, "m1-external.onnx"), &OnnxOptions::default()).unwrap();
    let m1 = read_onnx(&fixture(&dir, "m1.onnx"), &OnnxOptions::default()).unwrap();
    assert_eq!(ext.tensors, m1.tensors);
    let e = read_onnx(
        &fixture(&dir, "m1-external-missing.onnx"),
        &OnnxOptions::default(),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("m1-external-missing.onnx"),
        "{e:#}"
    );
    eprintln!("{e:#}");
}

/// A graph with two ops nap does not support: both nodes are named, nothing else.
#[test]
fn issue13_unsupported_ops_are_listed_by_node() {
    let Some(dir) = fixtures("issue13_unsupported_ops_are_listed_by_node") else {
        return;
    };
    let e = read_onnx(&fixture(&dir, "unsupported.onnx"), &OnnxOptions::default()).unwrap_err();
    let u = e
        .downcast_ref::<Unsupported>()
        .unwrap_or_else(|| panic!("not an Unsupported error: {e:#}"));
    let mut ops: Vec<&str> = u.nodes.iter().map(|n| n.op.as_str()).collect();
    ops.sort();
    assert_eq!(ops, ["Celu", "Hardmax"], "{u}");
    assert!(u
        .nodes
        .iter()
        .all(|n| !n.node.is_empty() && !n.reason.is_empty()));
    eprintln!("{u}");
}

/// The Python of the fixture venv (numpy, onnxruntime), made by `fetch-fixtures.sh`.
fn fixture_python(dir: &Path) -> PathBuf {
    let py = dir.parent().unwrap().join(".venv-onnx/bin/python");
    assert!(
        py.is_file(),
        "NAP_FIXTURES is set but {} is missing: run scripts/fetch-fixtures.sh",
        py.display()
    );
    py
}

/// ONNX Runtime's output for `model` on `x` (through `scripts/ort-run.py`).
fn ort_run(py: &Path, model: &Path, x: &nap::ir::HostTensor) -> nap::ir::HostTensor {
    let dir = model.parent().unwrap();
    let (xin, yout) = (dir.join("x.npy"), dir.join("y.npy"));
    std::fs::write(&xin, nap::import::npy::npy_bytes(&x.dims(), &x.data)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ort-run.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .arg(model)
        .arg(&xin)
        .arg(&yout)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ort-run.py failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    read_npy(&yout).unwrap()
}

/// `m` written as ONNX (BatchNorm folded), run by ONNX Runtime, against nap-runtime on `x`.
fn onnx_out_matches_runtime(
    py: &Path,
    tmp: &Path,
    what: &str,
    m: &nap::ir::HostModel,
    x: &nap::ir::HostTensor,
) {
    let path = tmp.join(format!("{what}.onnx"));
    nap::onnx_out::write_onnx(&nap::export::fuse(m).unwrap(), &path).unwrap();
    let want = ort_run(py, &path, x);
    let bytes = to_nap_bytes(m, ExportOptions::default()).unwrap();
    let ours = runtime_logits(
        &Model::from_vec(&bytes).unwrap(),
        &x.data,
        x.dims()[0],
        false,
    )
    .unwrap();
    let classes: usize = want.dims()[1..].iter().product();
    let ag = agreement(&ours, &want.data, classes);
    eprintln!(
        "{what}: nap-runtime vs ONNX Runtime on nap's ONNX: max rel err {:.2e}, top-1 mismatches {}",
        ag.max_rel_err, ag.top1_mismatches
    );
    assert!(
        ag.max_rel_err <= TOL && ag.top1_mismatches == 0,
        "{what}: {ag:?}"
    );
}

/// Pruned (zeros in place) and channel-slimmed models written as ONNX run in ONNX Runtime with
/// nap-runtime's outputs, under the original input and output names, with the slimmed shapes.
#[test]
fn issue13_pruned_and_slimmed_onnx_run_in_onnx_runtime() {
    let Some(dir) = fixtures("issue13_pruned_and_slimmed_onnx_run_in_onnx_runtime") else {
        return;
    };
    let py = fixture_python(&dir);
    let tmp = tempfile::tempdir().unwrap();
    for name in ["m1", "m2"] {
        let m = read_onnx(
            &fixture(&dir, &format!("{name}.onnx")),
            &OnnxOptions::default(),
        )
        .unwrap();
        let x = read_npy(&fixture(&dir, &format!("{name}.input.npy"))).unwrap();
        onnx_out_matches_runtime(&py, tmp.path(), name, &m, &x);

        // Zeros in place: the smaller 70 % of every prunable weight tensor.
        let mut sparse = m.clone();
        for (_, w) in m.prunable() {
            let t = &mut sparse.tensors[w as usize];
            let mut mags: Vec<f32> = t.data.iter().map(|v| v.abs()).collect();
            mags.sort_by(f32::total_cmp);
            let cut = mags[mags.len() * 7 / 10];
            t.data
                .iter_mut()
                .filter(|v| v.abs() < cut)
                .for_each(|v| *v = 0.0);
        }
        onnx_out_matches_runtime(&py, tmp.path(), &format!("{name}-sparse"), &sparse, &x);

        // A third of the channel groups removed.
        let gs = nap::groups::analyze(&m).unwrap();
        let remove: Vec<bool> = (0..gs.groups.len()).map(|i| i % 3 == 0).collect();
        let slim = nap::channel::remove_channels(&m, &gs, &remove, true).unwrap();
        assert!(
            slim.param_count() < m.param_count() * 9 / 10,
            "{name}: nothing removed"
        );
        onnx_out_matches_runtime(&py, tmp.path(), &format!("{name}-slim"), &slim, &x);
        let bytes = std::fs::read(tmp.path().join(format!("{name}-slim.onnx"))).unwrap();
        let back = read_onnx(
            &tmp.path().join(format!("{name}-slim.onnx")),
            &OnnxOptions::default(),
        )
        .unwrap();
        assert_eq!(
            back.graph.values[back.graph.inputs[0] as usize].name,
            m.graph.values[m.graph.inputs[0] as usize].name
        );
        assert_eq!(
            back.graph.values[back.graph.outputs[0] as usize].name,
            m.graph.values[m.graph.outputs[0] as usize].name
        );
        assert_eq!(
            back.param_count(),
            nap::export::fuse(&slim).unwrap().param_count(),
            "{name}: {} bytes",
            bytes.len()
        );
    }
}

/// Transpose (ShuffleNet's channel shuffle), LRN and an average pool with uneven padding
/// (Inception v1), LayerNorm, row-wise projections, slices and attention (a transformer block,
/// PP-OCR's recogniser) written back as ONNX run in ONNX Runtime with nap-runtime's outputs.
#[test]
fn issue13_new_ops_written_as_onnx_run_in_onnx_runtime() {
    let Some(dir) = fixtures("issue13_new_ops_written_as_onnx_run_in_onnx_runtime") else {
        return;
    };
    let py = fixture_python(&dir);
    let tmp = tempfile::tempdir().unwrap();
    for name in ["shufflenet", "inception_v1", "attention-block", "pool-ceil"] {
        let m = read_onnx(
            &fixture(&dir, &format!("{name}.onnx")),
            &OnnxOptions::default(),
        )
        .unwrap();
        let x = read_npy(&fixture(&dir, &format!("{name}.input.npy"))).unwrap();
        onnx_out_matches_runtime(&py, tmp.path(), name, &m, &x);
    }
    // PP-OCR's recogniser: LayerNorm, row-wise projections, slices and attention.
    let opts = OnnxOptions {
        input_shape: Some(vec![3, 48, 320]),
    };
    let root = dir.parent().unwrap();
    let m = read_onnx(&fixture(root, "ppocr/rec.onnx"), &opts).unwrap();
    let x = read_npy(&fixture(&dir, "ppocr-rec.input.npy")).unwrap();
    onnx_out_matches_runtime(&py, tmp.path(), "ppocr-rec", &m, &x);
}

/// `nap run` takes a .npy batch and prints (and saves) the whole output, which matches ONNX
/// Runtime's on the same file.
#[test]
fn issue13_run_takes_npy_and_prints_the_whole_output() {
    let Some(dir) = fixtures("issue13_run_takes_npy_and_prints_the_whole_output") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let nap_file = tmp.path().join("m1.nap");
    let nap = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nap"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = nap(&[
        "convert".as_ref(),
        fixture(&dir, "m1.onnx").as_os_str(),
        "-o".as_ref(),
        nap_file.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let saved = tmp.path().join("y.npy");
    let x = fixture(&dir, "m1.input.npy");
    let o = nap(&[
        "run".as_ref(),
        nap_file.as_os_str(),
        "--input".as_ref(),
        x.as_os_str(),
        "--save".as_ref(),
        saved.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = read_npy(&fixture(&dir, "m1.output.npy")).unwrap();
    assert_eq!(r["output_shape"], serde_json::json!([2, 10]));
    let printed: Vec<f32> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let saved = read_npy(&saved).unwrap();
    assert_eq!(saved.shape, vec![2, 10]);
    assert_eq!(saved.data, printed);
    let ag = agreement(&printed, &want.data, 10);
    assert!(ag.max_rel_err <= TOL && ag.top1_mismatches == 0, "{ag:?}");
    assert_eq!(r["tops"].as_array().unwrap().len(), 2);
}

/// PP-OCR's text-direction classifier (paddle2onnx: Constant-node weights, dynamic H/W,
/// squeeze-and-excitation gates with HardSigmoid, hard-swish written as Mul and Div, a flatten
/// computed by Shape, Slice, Cast and Concat) against ONNX Runtime.
#[test]
fn issue13_ppocr_classifier_matches_onnx_runtime() {
    let Some(root) = common::fixtures("issue13_ppocr_classifier_matches_onnx_runtime") else {
        return;
    };
    let opts = OnnxOptions {
        input_shape: Some(vec![3, 48, 192]),
    };
    let model = fixture(&root, "ppocr/cls.onnx");
    check_model_against_ort(&model, &root.join("onnx"), "ppocr-cls", TOL, &opts);
}

/// PP-OCR's text detector (feature pyramid: nearest Resize by 2, 4 and 8, ConvTranspose 2×2
/// stride 2 heads, a sigmoid probability map) against ONNX Runtime on an image of text.
#[test]
fn issue13_ppocr_detector_matches_onnx_runtime() {
    let Some(root) = common::fixtures("issue13_ppocr_detector_matches_onnx_runtime") else {
        return;
    };
    let opts = OnnxOptions {
        input_shape: Some(vec![3, 96, 128]),
    };
    let dir = root.join("onnx");
    // Relative to the largest logit, before the final Sigmoid.
    let logits = fixture(&dir, "ppocr-det-logits.onnx");
    check_outputs_against_ort(&logits, &dir, "ppocr-det-logits", TOL, &opts, Compare::Map);
    // The probability map itself, within ONNX Runtime's own spread on this model: its
    // optimised and unoptimised runs differ by 2.1e-5.
    let model = fixture(&root, "ppocr/det.onnx");
    check_outputs_against_ort(&model, &dir, "ppocr-det", 5e-5, &opts, Compare::Map);
}

/// Hard-swish written out as `x · clip(x + 3, 0, 6) / 6` (PaddlePaddle's export) becomes one
/// HardSwish activation when fused: in PP-OCR's classifier only the squeeze-excite gates stay
/// Muls, and the function is unchanged.
#[test]
fn issue13_hard_swish_written_out_is_fused() {
    let Some(root) = common::fixtures("issue13_hard_swish_written_out_is_fused") else {
        return;
    };
    let opts = OnnxOptions {
        input_shape: Some(vec![3, 48, 192]),
    };
    let m = read_onnx(&fixture(&root, "ppocr/cls.onnx"), &opts).unwrap();
    let f = nap::export::fuse(&m).unwrap();
    let count = |m: &nap::ir::HostModel, want: &dyn Fn(&Op) -> bool| {
        m.graph.nodes.iter().filter(|n| want(&n.op)).count()
    };
    let is_mul = |op: &Op| *op == Op::Mul;
    let gates = count(
        &f,
        &|op: &Op| matches!(op, Op::Conv2d(c) if c.act == Activation::HardSigmoid { alpha: 0.2, beta: 0.5 }),
    );
    let hard_swish = count(&f, &|op: &Op| op.fused_act() == Some(Activation::HardSwish));
    assert!(
        count(&m, &is_mul) > gates + 10,
        "the fixture writes hard-swish out"
    );
    assert_eq!(
        count(&f, &is_mul),
        gates,
        "only the squeeze-excite gates stay Muls"
    );
    assert!(hard_swish >= 10, "{hard_swish} HardSwish activations");
    let x = read_npy(&fixture(&root.join("onnx"), "ppocr-cls.input.npy")).unwrap();
    let n = x.dims()[0];
    let a = reference_logits(&m, &x.data, n, false).unwrap();
    let b = reference_logits(&f, &x.data, n, false).unwrap();
    let ag = agreement(&b, &a, a.len() / n);
    assert!(ag.max_rel_err <= 1e-6, "{ag:?}");
}

/// PP-OCR's recogniser: a CNN, then two transformer blocks (LayerNorm written out in
/// ReduceMean, Sub, Pow, Sqrt and Div; attention whose query, key and value are sliced from one
/// projection after a Transpose that moves the batch axis), then a class vector per step.
#[test]
fn issue13_ppocr_recogniser_matches_onnx_runtime() {
    let Some(root) = common::fixtures("issue13_ppocr_recogniser_matches_onnx_runtime") else {
        return;
    };
    let path = fixture(&root, "ppocr/rec.onnx");
    let e = read_onnx(&path, &OnnxOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("--input-shape 3,H,W"), "{e:#}");
    let opts = OnnxOptions {
        input_shape: Some(vec![3, 48, 320]),
    };
    let dir = root.join("onnx");
    let logits = fixture(&dir, "ppocr-rec-logits.onnx");
    check_outputs_against_ort(
        &logits,
        &dir,
        "ppocr-rec-logits",
        TOL,
        &opts,
        Compare::Steps,
    );
    check_outputs_against_ort(&path, &dir, "ppocr-rec", TOL, &opts, Compare::Steps);
}
