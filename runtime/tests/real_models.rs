//! The runtime on real models against the candle reference's logits, on any target (CI runs it
//! on aarch64 under qemu). `NAP_REFS` names a folder written by
//! `nap check <checkpoint> --arch <arch> --dump <folder>`: `<arch>.nap` and `<arch>.ref`.
#![cfg(feature = "std")]

use std::path::PathBuf;

use nap_runtime::{Model, Session};

struct Reference {
    n: usize,
    per: usize,
    classes: usize,
    inputs: Vec<f32>,
    logits: Vec<f32>,
}

fn read_ref(path: &PathBuf) -> Reference {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"NAPREF1\0",
        "{} is not a reference file",
        path.display()
    );
    let u = |i: usize| u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().unwrap()) as usize;
    let (n, per, classes) = (u(0), u(1), u(2));
    let floats: Vec<f32> = b[20..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats.len(), n * (per + classes), "reference file size");
    Reference {
        n,
        per,
        classes,
        inputs: floats[..n * per].to_vec(),
        logits: floats[n * per..].to_vec(),
    }
}

/// The runtime on `arch`'s dumped inputs against the dumped candle logits, within `tol` of the
/// largest logit, with identical top-1.
fn check(arch: &str, tol: f32) {
    let Some(dir) = std::env::var_os("NAP_REFS").filter(|d| !d.is_empty()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "NAP_REFS must be set in CI"
        );
        eprintln!("NAP_REFS is not set: skipping the real-model check of {arch} (CI sets it)");
        return;
    };
    let dir = PathBuf::from(dir);
    let model = Model::open(dir.join(format!("{arch}.nap"))).expect("loading the model");
    let r = read_ref(&dir.join(format!("{arch}.ref")));
    let mut batches = vec![1, r.n.min(8)];
    batches.dedup();
    for batch in batches {
        let mut s = Session::new(&model, batch).unwrap();
        assert_eq!(s.input_len(0), r.per);
        assert_eq!(s.output_len(0), r.classes);
        let mut worst = 0f32;
        for start in (0..r.n - r.n % batch).step_by(batch) {
            let x = &r.inputs[start * r.per..(start + batch) * r.per];
            let y = s.run(x).unwrap();
            for (e, row) in y.chunks(r.classes).enumerate() {
                let want = &r.logits[(start + e) * r.classes..(start + e + 1) * r.classes];
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = row
                    .iter()
                    .zip(want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                worst = worst.max(err / scale);
                let top = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
                assert_eq!(
                    top(row),
                    top(want),
                    "{arch}: top-1 differs for example {}",
                    start + e
                );
            }
        }
        eprintln!(
            "{arch} batch {batch}: {} examples, max relative error {worst:.2e} ({})",
            r.n,
            std::env::consts::ARCH
        );
        assert!(worst <= tol, "{arch}: max relative error {worst} > {tol}");
    }
}

#[test]
fn real_model_mnist_cnn() {
    check("mnist-cnn", 1e-4);
}

#[test]
fn real_model_mobilenet_v2() {
    check("mobilenet-v2", 1e-4);
}

// Issue 13: models imported from ONNX (`scripts/onnx-fixtures.py`), whose candle logits are
// within 2.5e-6 of ONNX Runtime's.

#[test]
fn real_model_onnx_vgg19() {
    check("vgg19", 1e-5);
}

/// MaxPool with uneven pads (a Pad of minus infinity, then the pooling).
#[test]
fn real_model_onnx_inception_v2() {
    check("inception_v2", 1e-5);
}

/// MobileNetV2 with unfolded BatchNormalization nodes.
#[test]
fn real_model_onnx_m2_bn() {
    check("m2-bn", 1e-5);
}

#[test]
fn real_model_onnx_resnet50() {
    check("resnet50", 1e-5);
}

#[test]
fn real_model_onnx_squeezenet() {
    check("squeezenet", 1e-5);
}

#[test]
fn real_model_onnx_densenet121() {
    check("densenet121", 1e-5);
}

/// LRN and an average pool with uneven padding.
#[test]
fn real_model_onnx_inception_v1() {
    check("inception_v1", 1e-5);
}

/// Grouped 1×1 convolutions and channel shuffles (Reshape, Transpose, Reshape).
#[test]
fn real_model_onnx_shufflenet() {
    check("shufflenet", 1e-5);
}

#[test]
fn real_model_onnx_m2() {
    check("m2", 1e-5);
}

/// PP-OCR's text-direction classifier (squeeze-excite gates, HardSigmoid, hard-swish as Mul).
#[test]
fn real_model_ppocr_classifier() {
    check("cls", 1e-5);
}

/// PP-OCR's text detector up to its final Sigmoid (nearest upsampling, ConvTranspose heads).
#[test]
fn real_model_ppocr_detector_logits() {
    check("ppocr-det-logits", 1e-5);
}

/// A transformer block after a convolution (LayerNorm, row-wise projections, slices,
/// attention, softmax over the last axis).
#[test]
fn real_model_onnx_attention_block() {
    check("attention-block", 1e-5);
}

/// PP-OCR's recogniser up to its final Softmax: a CNN and two transformer blocks.
#[test]
fn real_model_ppocr_recogniser_logits() {
    check("ppocr-rec-logits", 1e-5);
}
