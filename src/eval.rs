//! Running models over data sets, in the runtime and in the candle reference, and comparing them.

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use nap_runtime::{Model, Session};
use serde::Serialize;

use crate::ir::HostModel;
use crate::reference;
use crate::util::argmax;

fn bar(n: usize, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} examples"))
            .unwrap(),
    );
    b
}

/// Logits of the runtime for `n` examples laid out back to back, in batches of `batch`
/// (the last batch is zero-padded).
pub fn runtime_logits(
    model: &Model<'_>,
    inputs: &[f32],
    batch: usize,
    progress: bool,
) -> Result<Vec<f32>> {
    let mut s = Session::new(model, batch).map_err(|e| anyhow!("{e}"))?;
    let per = s.input_len(0);
    let classes = s.output_len(0);
    if per == 0 || !inputs.len().is_multiple_of(per) {
        bail!(
            "input of {} values is not a whole number of examples of {per}",
            inputs.len()
        );
    }
    let n = inputs.len() / per;
    let mut out = Vec::with_capacity(n * classes);
    let mut buf = vec![0f32; batch * per];
    let b = bar(n, "runtime  ", progress);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let chunk = &inputs[start * per..end * per];
        buf[..chunk.len()].copy_from_slice(chunk);
        buf[chunk.len()..].fill(0.0);
        let y = s.run(&buf).map_err(|e| anyhow!("{e}"))?;
        out.extend_from_slice(&y[..(end - start) * classes]);
        b.inc((end - start) as u64);
    }
    b.finish_and_clear();
    Ok(out)
}

/// Logits of the candle reference, in batches.
pub fn reference_logits(
    m: &HostModel,
    inputs: &[f32],
    batch: usize,
    progress: bool,
) -> Result<Vec<f32>> {
    reference_logits_on(m, inputs, batch, progress, &candle_core::Device::Cpu)
}

/// [`reference_logits`] on a chosen candle device.
pub fn reference_logits_on(
    m: &HostModel,
    inputs: &[f32],
    batch: usize,
    progress: bool,
    dev: &candle_core::Device,
) -> Result<Vec<f32>> {
    let per: usize = m.input_shape().iter().map(|&d| d as usize).product();
    let n = inputs.len() / per;
    let dev = dev.clone();
    let ps = reference::params(m, &dev)?;
    let mut out = Vec::new();
    let b = bar(n, "reference", progress);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let x = reference::input(m, &inputs[start * per..end * per], &dev)?;
        let y = reference::forward(&m.graph, &ps, &x)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
        b.inc((end - start) as u64);
    }
    b.finish_and_clear();
    Ok(out)
}

/// Fraction of rows whose argmax equals the label.
pub fn accuracy(logits: &[f32], labels: &[crate::data::Label], classes: usize) -> f32 {
    let correct = logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &l)| argmax(row) == l as usize)
        .count();
    correct as f32 / labels.len().max(1) as f32
}

/// `ln Σ exp(row)`, computed stably.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    row.iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// Mean cross-entropy (natural log) of `logits` against `labels`.
pub fn cross_entropy(logits: &[f32], labels: &[crate::data::Label], classes: usize) -> f64 {
    let mut sum = 0f64;
    for (row, &l) in logits.chunks(classes).zip(labels) {
        sum += log_sum_exp(row) - row[l as usize] as f64;
    }
    sum / labels.len().max(1) as f64
}

/// Mean over examples of `KL(softmax(reference) ‖ softmax(a))` in nats.
pub fn kl_divergence(a: &[f32], reference: &[f32], classes: usize) -> f64 {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let lse = log_sum_exp(row);
        row.iter().map(|&v| v as f64 - lse).collect()
    };
    let rows = reference.len() / classes.max(1);
    let mut sum = 0.0;
    for (ra, rb) in a.chunks(classes).zip(reference.chunks(classes)) {
        let (la, lb) = (log_softmax(ra), log_softmax(rb));
        sum += la
            .iter()
            .zip(&lb)
            .map(|(qa, pb)| pb.exp() * (pb - qa))
            .sum::<f64>();
    }
    sum / rows.max(1) as f64
}

/// How closely two sets of logits agree.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub examples: usize,
    /// max over examples of max_i |a_i - b_i| / max_i |b_i| (b is the reference).
    pub max_rel_err: f32,
    pub max_abs_err: f32,
    /// Examples whose top-1 class differs.
    pub top1_mismatches: usize,
}

pub fn agreement(a: &[f32], reference: &[f32], classes: usize) -> Agreement {
    let mut ag = Agreement {
        examples: reference.len() / classes,
        max_rel_err: 0.0,
        max_abs_err: 0.0,
        top1_mismatches: 0,
    };
    for (ra, rb) in a.chunks(classes).zip(reference.chunks(classes)) {
        let scale = rb.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = ra
            .iter()
            .zip(rb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        ag.max_abs_err = ag.max_abs_err.max(err);
        ag.max_rel_err = ag.max_rel_err.max(err / scale);
        if argmax(ra) != argmax(rb) {
            ag.top1_mismatches += 1;
        }
    }
    ag
}
