//! Shared by the fuzz targets: load with and without blob verification, then plan and run.

use nap_runtime::format::{AvgPool2d, Conv2d, Linear, MaxPool2d, Op};
use nap_runtime::{AlignedBytes, LoadOptions, Model, Session};

/// Whether a loaded model is small enough to plan and run inside the fuzzer's memory and time
/// limits. A valid header may describe gigabytes of activations or huge windows; running those
/// is slow by design, not a bug.
fn cheap_to_run(m: &Model<'_>) -> bool {
    let numel = |s: &[u32]| s.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let g = m.graph();
    let mut total = 0u64;
    for v in &g.values {
        match numel(&v.shape) {
            Some(n) => total = total.saturating_add(n),
            None => return false,
        }
    }
    if total > 1 << 20 {
        return false;
    }
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
        if let Ok(m) = Model::from_bytes_with(bytes.as_bytes(), LoadOptions { verify_blobs }) {
            // Accessors must work on every tensor of a model that loaded.
            for id in 0..m.header().tensors.len() as u32 {
                let _ = m.tensor(id).stored();
            }
            if cheap_to_run(&m) {
                if let Ok(mut s) = Session::new(&m, 1) {
                    let zeros = vec![0f32; s.input_len(0)];
                    let _ = s.run(&zeros);
                }
            }
        }
    }
}
