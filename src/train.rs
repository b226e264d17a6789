//! Training with candle through the reference forward pass.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::Dataset;
use crate::ir::HostModel;
use crate::prune::Masks;
use crate::reference;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub progress: bool,
    /// Where candle computes.
    pub device: Device,
    /// Fraction of the batches over which the learning rate ramps up linearly.
    pub warmup: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch: 64,
            lr: 3e-3,
            weight_decay: 1e-4,
            seed: 0,
            progress: true,
            device: Device::Cpu,
            warmup: 0.0,
        }
    }
}

/// Checks that `data` fits `m`'s input and output.
pub fn check_data(m: &HostModel, data: &Dataset) -> Result<()> {
    let want: Vec<usize> = m.input_shape().iter().map(|&d| d as usize).collect();
    // Vector inputs `[n]` take data of shape `[n, 1, 1]`.
    let fits = if want.len() == 3 {
        data.shape[..] == want[..]
    } else {
        data.shape.iter().product::<usize>() == want.iter().product::<usize>()
            && data.shape[1..] == [1, 1]
    };
    if !fits {
        bail!(
            "the data's examples are {:?} but the model takes {:?}",
            data.shape,
            want
        );
    }
    if data.n == 0 {
        bail!("the data set is empty");
    }
    let classes = m.output_shape().iter().product::<u32>() as usize;
    if let Some(&l) = data.labels.iter().find(|&&l| l as usize >= classes) {
        bail!("the data has label {l} but the model has {classes} outputs");
    }
    Ok(())
}

/// Trains all parameters of `m` in place with AdamW on cross-entropy; returns the last epoch's
/// mean training loss.
pub fn train(m: &mut HostModel, data: &Dataset, cfg: &TrainConfig) -> Result<f32> {
    train_masked(m, data, cfg, None)
}

/// [`train`] that keeps pruned weights at zero: after every optimizer step the dead entries of
/// `masks` (one per prunable layer, [`HostModel::prunable`] order) are reset to zero, so neither
/// gradients nor weight decay revive them.
pub fn train_masked(
    m: &mut HostModel,
    data: &Dataset,
    cfg: &TrainConfig,
    masks: Option<&Masks>,
) -> Result<f32> {
    check_data(m, data)?;
    let dev = cfg.device.clone();
    let vars: Vec<Var> = reference::params(m, &dev)?
        .into_iter()
        .map(|t| Var::from_tensor(&t))
        .collect::<candle_core::Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    // (variable, 0/1 mask tensor) for every masked weight.
    let mask_tensors: Vec<(usize, Tensor)> = match masks {
        Some(mk) => m
            .prunable()
            .iter()
            .zip(&mk.0)
            .map(|(&(_, w), keep)| {
                let vals: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                let t = Tensor::from_vec(vals, vars[w as usize].as_tensor().shape(), &dev)?;
                Ok((w as usize, t))
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let per = data.images.len() / data.n;
    let mut order: Vec<usize> = (0..data.n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let bar = if cfg.progress {
        ProgressBar::new((cfg.epochs * data.n.div_ceil(cfg.batch)) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("training {bar:30} {pos}/{len} batches, loss {msg}").unwrap(),
    );
    let mut last = f32::NAN;
    let mut xb = Vec::with_capacity(cfg.batch * per);
    let mut yb = Vec::with_capacity(cfg.batch);
    let total_batches = (cfg.epochs * data.n.div_ceil(cfg.batch)).max(1);
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in order.chunks(cfg.batch) {
            // Linear warm-up over the first `warmup` of the batches (Adam's first steps are
            // sign-like and would jolt a trained model), then cosine decay to zero.
            let warm = (cfg.warmup * total_batches as f64).max(1.0);
            let lr = cfg.lr
                * ((step + 1) as f64 / warm).min(1.0)
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total_batches as f64).cos());
            opt.set_learning_rate(lr);
            step += 1;
            xb.clear();
            yb.clear();
            for &i in chunk {
                xb.extend_from_slice(&data.images[i * per..(i + 1) * per]);
                yb.push(data.labels[i] as u32);
            }
            let x = reference::input(m, &xb, &dev)?;
            let y = Tensor::from_slice(&yb, yb.len(), &dev)?;
            let logits = reference::forward(&m.graph, &tensors, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            opt.backward_step(&loss)?;
            for (w, mask) in &mask_tensors {
                vars[*w].set(&vars[*w].as_tensor().mul(mask)?)?;
            }
            let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !l.is_finite() {
                bail!("training diverged (loss {l}) in epoch {epoch}");
            }
            sum += l as f64 * chunk.len() as f64;
            count += chunk.len();
            bar.inc(1);
            bar.set_message(format!("{l:.4}"));
        }
        last = (sum / count as f64) as f32;
    }
    bar.finish_and_clear();
    for (t, v) in m.tensors.iter_mut().zip(&vars) {
        t.data = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    }
    Ok(last)
}

/// Top-1 accuracy of the candle reference on `data`, in batches.
pub fn reference_accuracy(m: &HostModel, data: &Dataset, batch: usize) -> Result<f32> {
    check_data(m, data)?;
    let logits = crate::eval::reference_logits(m, &data.images, batch, false)?;
    let classes = m.output_shape().iter().product::<u32>() as usize;
    Ok(crate::eval::accuracy(&logits, &data.labels, classes))
}
