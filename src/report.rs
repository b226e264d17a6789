//! What a finished pruning run leaves behind: the pruned model as `.nap` and safetensors, test
//! accuracy in candle and in the runtime, `report.json`, a per-layer table and SVG plots.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::data::Dataset;
use crate::eval::{self, Agreement};
use crate::export::{self, ExportOptions};
use crate::ir::{self, HostModel};
use crate::plot::{self, Series};
use crate::prune::Masks;
use crate::schedule::{compression, Outcome, RunState, StepRecord};
use crate::stop::Paired;
use crate::util::atomic_write;

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub params: usize,
    pub kept: usize,
    pub density: f64,
    /// Sum of the scores of the weights removed from this layer over accepted steps.
    pub predicted_dl: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelScore {
    pub val_accuracy: f32,
    /// Candle reference on the test set.
    pub test_accuracy: Option<f32>,
    /// The exported `.nap` in nap-runtime on the test set.
    pub runtime_test_accuracy: Option<f32>,
    /// Runtime logits against candle's on the test set.
    pub runtime_agreement: Option<Agreement>,
    /// Non-zero prunable weights.
    pub alive: usize,
    /// Prunable weights / non-zero ones.
    pub compression: f64,
    /// The dense model's parameters / (non-zero prunable weights + all other parameters).
    pub total_compression: f64,
    /// All parameters as stored (a channel-pruned model has fewer).
    pub params: usize,
    /// Multiply-accumulates per example of the Linear and Conv2d layers, dense.
    pub macs: f64,
    /// Of those, the ones with a non-zero weight (what sparse kernels can skip).
    pub nonzero_macs: f64,
    pub nap_bytes: u64,
}

/// The final model against the dense one on one split, example by example.
#[derive(Clone, Debug, Serialize)]
pub struct SplitComparison {
    pub split: String,
    pub examples: usize,
    pub dense_accuracy: f32,
    pub accuracy: f32,
    /// Accuracy drop (dense − pruned, fraction) and its 95 % interval.
    pub drop: f64,
    pub interval95: (f64, f64),
    pub paired: Paired,
}

impl SplitComparison {
    fn new(split: &str, dense: &HostModel, pruned: &HostModel, data: &Dataset) -> Result<Self> {
        let classes = dense.output_shape().iter().product::<u32>() as usize;
        let d = eval::reference_logits(dense, &data.images, 512, false)?;
        let p = eval::reference_logits(pruned, &data.images, 512, false)?;
        let paired = Paired::compare(&p, &d, Some(&data.labels), classes);
        Ok(SplitComparison {
            split: split.to_string(),
            examples: data.n,
            dense_accuracy: eval::accuracy(&d, &data.labels, classes),
            accuracy: eval::accuracy(&p, &data.labels, classes),
            drop: paired.drop,
            interval95: paired.interval(0.95),
            paired,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub arch: String,
    pub state: RunState,
    pub dense: ModelScore,
    pub pruned: ModelScore,
    pub layers: Vec<LayerRow>,
    /// The final model's accuracy drop on the validation split (decided on), the confirmation
    /// split (nothing selected on it) and the test set, with 95 % intervals.
    pub comparisons: Vec<SplitComparison>,
    pub peak_rss_mib: Option<f64>,
    pub files: Vec<PathBuf>,
}

/// Peak resident memory of this process (Linux `VmHWM`), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn score_model(
    m: &HostModel,
    nap_bytes: &[u8],
    val_accuracy: f32,
    test: Option<&Dataset>,
    prunable: usize,
    dense_params: usize,
) -> Result<ModelScore> {
    let alive = Masks::from_model(m).alive();
    let params = m.param_count();
    let own_prunable: usize = m.prunable_sizes().iter().sum();
    let classes = m.output_shape().iter().product::<u32>() as usize;
    let (test_accuracy, runtime_test_accuracy, runtime_agreement) = match test {
        Some(t) => {
            let reference = eval::reference_logits(m, &t.images, 512, false)?;
            let model = nap_runtime::Model::from_vec(nap_bytes).map_err(|e| anyhow!("{e}"))?;
            let ours = eval::runtime_logits(&model, &t.images, 64, false)?;
            (
                Some(eval::accuracy(&reference, &t.labels, classes)),
                Some(eval::accuracy(&ours, &t.labels, classes)),
                Some(eval::agreement(&ours, &reference, classes)),
            )
        }
        None => (None, None, None),
    };
    Ok(ModelScore {
        val_accuracy,
        test_accuracy,
        runtime_test_accuracy,
        runtime_agreement,
        alive,
        compression: compression(prunable, alive),
        total_compression: dense_params as f64 / (params - own_prunable + alive).max(1) as f64,
        params,
        macs: crate::channel::macs(m),
        nonzero_macs: crate::channel::nonzero_macs(m),
        nap_bytes: nap_bytes.len() as u64,
    })
}

/// Writes the pruned model, evaluates both models on `test` (candle and runtime), writes
/// `report.json`, `accuracy.svg` and `density.svg` into `dir`.
pub fn finish(
    dense: &HostModel,
    outcome: &Outcome,
    confirm: Option<&Dataset>,
    test: Option<&Dataset>,
    dir: &Path,
    export_opts: ExportOptions,
) -> Result<Report> {
    let st = &outcome.state;
    let mut pruned = outcome.model.clone();
    let s = &st.settings;
    pruned.meta.method = serde_json::to_value(s.criterion)?
        .as_str()
        .unwrap_or("pruned")
        .to_string();
    pruned.meta.extra.push((
        "pruning".into(),
        format!(
            "criterion {:?}, obs update {:?}, damping {}, max drop {:?}, {} steps",
            s.criterion,
            s.obs_update,
            s.damping,
            s.max_drop,
            st.steps.len()
        ),
    ));
    let m = &pruned;
    let nap_path = dir.join("pruned.nap");
    let st_path = dir.join("pruned.safetensors");
    let onnx_path = dir.join("pruned.onnx");
    let nap = export::to_nap_bytes(m, export_opts)?;
    atomic_write(&nap_path, &nap)?;
    ir::write_checkpoint(&st_path, m)?;
    crate::onnx_out::write_onnx(&export::fuse(m)?, &onnx_path)?;
    let dense_nap = export::to_nap_bytes(dense, export_opts)?;
    // The input model's prunable layers (the same layers in the same order as the pruned
    // model's, also after a channel phase).
    let dense_layers = dense.prunable_sizes();
    let prunable: usize = dense_layers.iter().sum();
    let pruned_val = st.best_val().accuracy;
    let dense_score = score_model(
        dense,
        &dense_nap,
        st.dense.reference().accuracy,
        test,
        prunable,
        dense.param_count(),
    )?;
    let pruned_score = score_model(m, &nap, pruned_val, test, prunable, dense.param_count())?;
    let masks = Masks::from_model(m);
    let predicted = st.predicted_per_layer();
    let layers: Vec<LayerRow> = st
        .dense
        .layers
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let kept = masks.0[i].iter().filter(|a| **a).count();
            let params = dense_layers[i];
            LayerRow {
                name: name.clone(),
                params,
                kept,
                density: kept as f64 / params.max(1) as f64,
                predicted_dl: predicted[i],
            }
        })
        .collect();
    let acc_svg = dir.join("accuracy.svg");
    atomic_write(&acc_svg, accuracy_plot(st).as_bytes())?;
    let dens_svg = dir.join("density.svg");
    let bars: Vec<(String, f64)> = layers
        .iter()
        .map(|l| (format!("{} ({})", l.name, l.params), l.density))
        .collect();
    atomic_write(
        &dens_svg,
        plot::bar_chart(
            &format!(
                "{} {:?}: kept weights per layer ({:.1}x overall)",
                st.arch, st.settings.criterion, pruned_score.compression
            ),
            &bars,
        )
        .as_bytes(),
    )?;
    let mut comparisons = Vec::new();
    if let Some(p) = st.final_paired {
        comparisons.push(SplitComparison {
            split: "validation".into(),
            examples: p.n,
            dense_accuracy: st.dense.reference().accuracy,
            accuracy: st.best_val().accuracy,
            drop: p.drop,
            interval95: p.interval(0.95),
            paired: p,
        });
    }
    for (name, data) in [("confirmation", confirm), ("test", test)] {
        if let Some(d) = data {
            comparisons.push(SplitComparison::new(name, dense, m, d)?);
        }
    }
    let report_path = dir.join("report.json");
    let report = Report {
        comparisons,
        arch: st.arch.clone(),
        state: st.clone(),
        dense: dense_score,
        pruned: pruned_score,
        layers,
        peak_rss_mib: peak_rss_mib(),
        files: vec![
            nap_path,
            st_path,
            onnx_path,
            report_path.clone(),
            acc_svg,
            dens_svg,
        ],
    };
    atomic_write(&report_path, &serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

fn accuracy_plot(st: &RunState) -> String {
    let channels = st.settings.mode == crate::schedule::Mode::Channel;
    let x = |s: &StepRecord| {
        if channels {
            s.flops_reduction.unwrap_or(1.0)
        } else {
            s.compression
        }
    };
    let mut acc = vec![(1.0, 100.0 * st.dense.val.accuracy as f64)];
    acc.extend(st.accepted().map(|s| (x(s), 100.0 * s.val.accuracy as f64)));
    let rejected: Vec<(f64, f64)> = st
        .steps
        .iter()
        .filter(|s| !s.accepted)
        .map(|s: &StepRecord| (x(s), 100.0 * s.val.accuracy as f64))
        .collect();
    let before_ft: Vec<(f64, f64)> = st
        .accepted()
        .map(|s| (x(s), 100.0 * s.pruned_accuracy as f64))
        .collect();
    let mut series = vec![
        Series {
            name: "accepted (after fine-tuning)",
            color: "#2a6fb0",
            points: acc,
            line: true,
        },
        Series {
            name: "accepted, before fine-tuning",
            color: "#999",
            points: before_ft,
            line: false,
        },
    ];
    if !rejected.is_empty() {
        series.push(Series {
            name: "rolled back",
            color: "#c00",
            points: rejected,
            line: false,
        });
    }
    let limit = st
        .settings
        .max_drop
        .map(|d| 100.0 * (st.dense.reference().accuracy as f64 - d));
    plot::line_chart(
        &format!(
            "{} {:?}: validation accuracy against compression",
            st.arch, st.settings.criterion
        ),
        if channels {
            "FLOP reduction (dense multiply-accumulates / remaining), log scale"
        } else {
            "compression (prunable weights / non-zero), log scale"
        },
        "validation accuracy (%)",
        &series,
        true,
        limit.map(|l| (l, "tolerance")),
    )
}

/// The per-layer table and the summary, for people.
pub fn print_summary(r: &Report) {
    println!(
        "{:<24} {:>10} {:>10} {:>9} {:>14}",
        "layer", "params", "kept", "density", "predicted ΔL"
    );
    for l in &r.layers {
        println!(
            "{:<24} {:>10} {:>10} {:>8.2}% {:>14.3e}",
            l.name,
            l.params,
            l.kept,
            100.0 * l.density,
            l.predicted_dl
        );
    }
    let total: usize = r.layers.iter().map(|l| l.params).sum();
    println!(
        "{:<24} {:>10} {:>10} {:>8.2}%",
        "total",
        total,
        r.pruned.alive,
        100.0 * r.pruned.alive as f64 / total.max(1) as f64
    );
    println!(
        "compression {:.1}x of the prunable weights ({:.1}x of all parameters); .nap {} -> {} bytes",
        r.pruned.compression, r.pruned.total_compression, r.dense.nap_bytes, r.pruned.nap_bytes
    );
    println!(
        "multiply-accumulates per example {:.3e} -> {:.3e} ({:.2}x fewer; {:.2}x counting only non-zero weights); parameters {} -> {}",
        r.dense.macs,
        r.pruned.macs,
        r.dense.macs / r.pruned.macs.max(1.0),
        r.dense.macs / r.pruned.nonzero_macs.max(1.0),
        r.dense.params,
        r.pruned.params
    );
    println!(
        "validation accuracy {:.2}% -> {:.2}%",
        100.0 * r.dense.val_accuracy,
        100.0 * r.pruned.val_accuracy
    );
    if let (Some(d), Some(p), Some(rt)) = (
        r.dense.test_accuracy,
        r.pruned.test_accuracy,
        r.pruned.runtime_test_accuracy,
    ) {
        println!(
            "test accuracy {:.2}% -> {:.2}% (candle), {:.2}% in nap-runtime",
            100.0 * d,
            100.0 * p,
            100.0 * rt
        );
    }
    let interval = |drop: f64, (lo, hi): (f64, f64)| {
        format!(
            "{:+.2} points (95% interval {:+.2} to {:+.2})",
            100.0 * drop,
            100.0 * lo,
            100.0 * hi
        )
    };
    for c in &r.comparisons {
        println!(
            "accuracy drop on the {} split{} ({} examples, {:.2}% -> {:.2}%): {}",
            c.split,
            if c.split == "validation" {
                " (decided on)"
            } else {
                ""
            },
            c.examples,
            100.0 * c.dense_accuracy,
            100.0 * c.accuracy,
            interval(c.drop, c.interval95)
        );
    }
    for w in &r.state.warnings {
        println!("warning: {w}");
    }
    if let Some(mib) = r.peak_rss_mib {
        println!("peak memory {mib:.0} MiB");
    }
    let st = &r.state;
    println!(
        "{} steps ({} accepted) in {:.1} s: statistics {:.1} s, fine-tuning {:.1} s; stopped: {}",
        st.steps.len(),
        st.accepted().count(),
        st.seconds,
        st.stats_s,
        st.finetune_s,
        st.stopped.as_deref().unwrap_or("-")
    );
    for f in &r.files {
        println!("wrote {}", f.display());
    }
}
