//! Shared by the fuzz targets: load with and without blob verification, then plan and run.

use nap_runtime::format::{AvgPool2d, Conv2d, Linear, MaxPool2d, Op};
use nap_runtime::{AlignedBytes, LoadOptions, Model, Session, SessionOptions};

/// What a session may plan: the session refuses more, before allocating, with a typed error.
const MEMORY_LIMIT: u64 = 256 << 20;

/// Whether a loaded model is cheap enough to run inside the fuzzer's time limit. A valid header
/// may describe huge windows; running those is slow by design, not a bug. (Memory is held by
/// the session's limit instead.)
fn cheap_to_run(m: &Model<'_>) -> bool {
    let numel = |s: &[u32]| s.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let g = m.graph();
    g.nodes.iter().all(|n| {
        let out = numel(&g.values[n.output as usize].shape)
            .unwrap_or(u64::MAX)
            .max(1);
        let per_out = match &n.op {
            Op::Conv2d(Conv2d { weight, .. }) => numel(&m.tensor_entry(*weight).shape[1..]),
            Op::MaxPool2d(MaxPool2d { kernel, .. }) | Op::AvgPool2d(AvgPool2d { kernel, .. }) => {
                numel(kernel)
            }
            Op::Linear(Linear { weight, .. }) => numel(&m.tensor_entry(*weight).shape[1..]),
            _ => Some(1),
        };
        per_out
            .and_then(|p| p.max(1).checked_mul(out))
            .is_some_and(|w| w <= 1 << 24)
    })
}

pub fn load_and_run(bytes: &AlignedBytes, verify: &[bool]) {
    for &verify_blobs in verify {
        let opts = LoadOptions {
            verify_blobs,
            ..LoadOptions::default()
        };
        if let Ok(m) = Model::from_bytes_with(bytes.as_bytes(), opts) {
            // Accessors must work on every tensor of a model that loaded.
            for id in 0..m.header().tensors.len() as u32 {
                let _ = m.tensor(id).stored();
            }
            if !m.non_finite().is_empty() {
                let strict = LoadOptions {
                    finite_weights: true,
                    ..opts
                };
                assert!(Model::from_bytes_with(bytes.as_bytes(), strict).is_err());
            }
            if cheap_to_run(&m) {
                let opts = SessionOptions {
                    memory_limit: MEMORY_LIMIT,
                    ..SessionOptions::default()
                };
                if let Ok(mut s) = Session::with_options(&m, 1, opts) {
                    let zeros = vec![0f32; s.input_len(0)];
                    let _ = s.run(&zeros);
                }
            }
        }
    }
}
