//! MobileNetV2 channel pruning, one shot: no labelled ImageNet images exist here, so the pruned
//! models are measured by their fidelity to the dense model (top-1 agreement and KL divergence)
//! on views (crops and flips) of the bundled photos.
//!
//! ```sh
//! cargo run --release --example m2_channel -- [OUT_DIR] [--no-bn]    # default runs/m2-channel
//! ```
//!
//! After every step the BatchNorm statistics are recomputed on the statistics views
//! ([`nap::reference::recalibrate_batchnorm`]); `--no-bn` leaves them as trained.
//!
//! K-FAC statistics (true Fisher: labels sampled from the model, so none are needed) come from
//! 30 views (shorter side 320: centre, mirror, four corners); fidelity is measured on 40 others
//! (shorter side 256 and 288). For each criterion (NAP with OBS compensation, and L1-norm filter
//! pruning) channels are ranked by cost per multiply-accumulate saved (`--flops-weight 1`) and
//! removed in steps of at most 25 % of them, each step stopping at the next FLOP target and
//! statistics recomputed every step, until each reduction of 1.3×, 1.5× and 2× is reached; every model is written as
//! `OUT/{nap,l1}-{1.3,1.5,2}x.nap` next to `OUT/dense.nap`, and the table as `OUT/fidelity.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use nap::channel::{channel_step, curvature_nodes, macs, ChannelCost, ChannelStepConfig};
use nap::data::image::{imagenet_view, open_image, ImagenetView};
use nap::data::Dataset;
use nap::eval::{agreement, kl_divergence, reference_logits};
use nap::export::{write_nap, ExportOptions};
use nap::groups::analyze;
use nap::kfac::{collect, StatsConfig};
use nap::prune::Criterion;
use nap::{archs, import, reference};

fn views(photos: &[PathBuf], specs: &[ImagenetView]) -> Result<Dataset> {
    let mut images = Vec::new();
    for p in photos {
        let img = open_image(p)?;
        for v in specs {
            images.extend(imagenet_view(&img, v).with_context(|| p.display().to_string())?);
        }
    }
    let n = photos.len() * specs.len();
    Ok(Dataset {
        images,
        labels: vec![0; n],
        n,
        shape: [3, 224, 224],
    })
}

fn spec(resize: u32, x: f64, y: f64, flip: bool) -> ImagenetView {
    ImagenetView { resize, x, y, flip }
}

#[derive(serde::Serialize)]
struct Row {
    criterion: &'static str,
    batchnorm_recalibrated: bool,
    target: f64,
    flops_reduction: f64,
    params: usize,
    channels_removed: usize,
    top1_agreement: f64,
    top5_contains_dense_top1: f64,
    kl_to_dense: f64,
    max_abs_logit_err: f32,
    file: PathBuf,
    seconds: f64,
}

fn top5_hits(logits: &[f32], dense: &[f32]) -> f64 {
    let mut hits = 0;
    let mut n = 0;
    for (a, d) in logits.chunks(1000).zip(dense.chunks(1000)) {
        let top = d
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|x| x.0)
            .unwrap_or(0);
        let mut idx: Vec<usize> = (0..1000).collect();
        idx.sort_by(|&i, &j| a[j].total_cmp(&a[i]));
        hits += idx[..5].contains(&top) as usize;
        n += 1;
    }
    hits as f64 / n.max(1) as f64
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let recalibrate = !args.iter().any(|a| a == "--no-bn");
    let out = PathBuf::from(
        args.iter()
            .find(|a| !a.starts_with("--"))
            .cloned()
            .unwrap_or_else(|| "runs/m2-channel".into()),
    );
    std::fs::create_dir_all(&out)?;
    let dense = archs::from_checkpoint(
        "mobilenet-v2",
        import::read_checkpoint(Path::new("fixtures/m2.pth"))
            .context("fixtures/m2.pth (run scripts/fetch-fixtures.sh)")?,
    )?;
    let mut photos: Vec<PathBuf> = std::fs::read_dir("fixtures/photos")?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    photos.sort();
    let corners = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)];
    let mut stat_specs = vec![spec(320, 0.5, 0.5, false), spec(320, 0.5, 0.5, true)];
    stat_specs.extend(corners.iter().map(|&(x, y)| spec(320, x, y, false)));
    let mut eval_specs = vec![
        ImagenetView::CENTER,
        spec(256, 0.5, 0.5, true),
        spec(288, 0.5, 0.5, false),
        spec(288, 0.5, 0.5, true),
    ];
    eval_specs.extend(corners.iter().map(|&(x, y)| spec(256, x, y, true)));
    let stats = views(&photos, &stat_specs)?;
    let test = views(&photos, &eval_specs)?;
    eprintln!(
        "{} photos: {} views for statistics, {} for fidelity",
        photos.len(),
        stats.n,
        test.n
    );
    let dense_logits = reference_logits(&dense, &test.images, 8, false)?;
    let dense_macs = macs(&dense);
    write_nap(&dense, &out.join("dense.nap"), ExportOptions::default())?;
    // What recalibrating the BatchNorms on the statistics views alone does to the dense model.
    let recal_only = {
        let mut d = dense.clone();
        reference::recalibrate_batchnorm(&mut d, &stats.images)?;
        let l = reference_logits(&d, &test.images, 8, false)?;
        let ag = agreement(&l, &dense_logits, 1000);
        (
            1.0 - ag.top1_mismatches as f64 / ag.examples.max(1) as f64,
            top5_hits(&l, &dense_logits),
            kl_divergence(&l, &dense_logits, 1000),
        )
    };
    let mut rows = Vec::new();
    for (name, criterion) in [("nap", Criterion::Nap), ("l1", Criterion::Magnitude)] {
        let mut m = dense.clone();
        let t0 = Instant::now();
        let mut removed = 0;
        for target in [1.3, 1.5, 2.0] {
            let mut step = 0u64;
            while dense_macs / macs(&m) < target * (1.0 - 1e-9) {
                let groups = analyze(&m)?;
                let factors = if criterion == Criterion::Nap {
                    let cfg = StatsConfig {
                        nodes: Some(curvature_nodes(&groups)),
                        batch: 6,
                        seed: step,
                        ..Default::default()
                    };
                    collect(&m, &stats, &cfg, &Device::Cpu)?
                } else {
                    Vec::new()
                };
                let (next, rep) = channel_step(
                    &m,
                    &groups,
                    &factors,
                    &ChannelStepConfig {
                        criterion,
                        cost: ChannelCost::Producer,
                        fraction: 0.25,
                        layer_cap: 0.5,
                        flops_weight: 1.0,
                        damping: 0.1,
                        compensate: true,
                        max_macs: Some(macs(&m) - dense_macs / target),
                        channel_multiple: 1,
                    },
                )?;
                if rep.removed == 0 {
                    break;
                }
                removed += rep.removed;
                m = next;
                if recalibrate {
                    reference::recalibrate_batchnorm(&mut m, &stats.images)?;
                }
                step += 1;
                eprintln!(
                    "{name}: {removed} channels removed, {:.3}x FLOPs ({:.0} s)",
                    dense_macs / macs(&m),
                    t0.elapsed().as_secs_f64()
                );
            }
            let logits = reference_logits(&m, &test.images, 8, false)?;
            let ag = agreement(&logits, &dense_logits, 1000);
            let file = out.join(format!("{name}-{target}x.nap"));
            write_nap(&m, &file, ExportOptions::default())?;
            rows.push(Row {
                criterion: name,
                batchnorm_recalibrated: recalibrate,
                target,
                flops_reduction: dense_macs / macs(&m),
                params: m.param_count(),
                channels_removed: removed,
                top1_agreement: 1.0 - ag.top1_mismatches as f64 / ag.examples.max(1) as f64,
                top5_contains_dense_top1: top5_hits(&logits, &dense_logits),
                kl_to_dense: kl_divergence(&logits, &dense_logits, 1000),
                max_abs_logit_err: ag.max_abs_err,
                file,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
    }
    println!("| criterion | FLOP reduction | params | top-1 agreement | dense top-1 in top-5 | KL to dense (nats) |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| dense | 1.00× | {} | 100 % | 100 % | 0 |",
        dense.param_count()
    );
    {
        let (t1, t5, kl) = recal_only;
        println!(
            "| dense, BatchNorm recalibrated | 1.00× | {} | {:.1} % | {:.1} % | {:.3} |",
            dense.param_count(),
            100.0 * t1,
            100.0 * t5,
            kl
        );
    }
    for r in &rows {
        println!(
            "| {} | {:.2}× | {} | {:.1} % | {:.1} % | {:.3} |",
            r.criterion,
            r.flops_reduction,
            r.params,
            100.0 * r.top1_agreement,
            100.0 * r.top5_contains_dense_top1,
            r.kl_to_dense
        );
    }
    std::fs::write(out.join("fidelity.json"), serde_json::to_vec_pretty(&rows)?)?;
    Ok(())
}
