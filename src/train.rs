//! Training with candle through the reference forward pass.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
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

/// Distillation from a reference model: its logits on the training examples, in the data's
/// order.
#[derive(Clone, Copy, Debug)]
pub struct Teacher<'a> {
    /// `n × classes` logits of the reference on the data's examples.
    pub logits: &'a [f32],
    /// Weight of the distillation term: the loss is `(1 − w) · CE(labels) + w · T² ·
    /// KL(softmax(t / T) ‖ softmax(z / T))` (1: the reference alone, no labels needed).
    pub weight: f64,
    pub temperature: f64,
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

/// Checks that `m` is a classifier: its output is one vector of class scores per example, which
/// cross-entropy, the Fisher of the K-FAC statistics and top-1 accuracy all assume.
pub fn check_classifier(m: &HostModel) -> Result<()> {
    let out = m.output_shape();
    if out.len() != 1 || out[0] < 2 {
        bail!(
            "training and pruning need a classifier, whose output is one vector of class scores \
             per example; this model's output is {out:?} per example (a map or a regression \
             output: not supported yet)"
        );
    }
    Ok(())
}

/// Trains all parameters of `m` in place with AdamW on cross-entropy; returns the last epoch's
/// mean training loss.
pub fn train(m: &mut HostModel, data: &Dataset, cfg: &TrainConfig) -> Result<f32> {
    train_masked(m, data, cfg, None, None)
}

/// [`train`] that keeps pruned weights at zero: after every optimizer step the dead entries of
/// `masks` (one per prunable layer, [`HostModel::prunable`] order) are reset to zero, so neither
/// gradients nor weight decay revive them. With a `teacher` the loss mixes in distillation from
/// its logits.
pub fn train_masked(
    m: &mut HostModel,
    data: &Dataset,
    cfg: &TrainConfig,
    masks: Option<&Masks>,
    teacher: Option<&Teacher<'_>>,
) -> Result<f32> {
    let mut mk = masks.cloned();
    train_with_events(
        m,
        data,
        cfg,
        mk.as_mut(),
        teacher,
        None,
        &[],
        &mut |_, _, _| Ok(()),
    )
}

/// AdamW's state: the step count and both moments of every parameter tensor (in
/// [`HostModel::tensors`] order), carried from one fine-tune to the next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptState {
    pub t: usize,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl OptState {
    /// The state as tensors `t`, `m.K`, `v.K` (for a safetensors file).
    pub fn to_named(&self) -> Result<Vec<crate::ir::HostTensor>> {
        let mut out = vec![crate::ir::HostTensor {
            name: "t".into(),
            shape: vec![1],
            data: vec![self.t as f32],
        }];
        for (k, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            for (p, d) in [("m", m), ("v", v)] {
                out.push(crate::ir::HostTensor {
                    name: format!("{p}.{k}"),
                    shape: crate::ir::shape_u32(&[d.len()], "optimiser moment")?,
                    data: d.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Reads what [`OptState::to_named`] wrote.
    pub fn from_named(ts: Vec<crate::ir::HostTensor>) -> Result<Self> {
        let mut by: std::collections::HashMap<String, Vec<f32>> =
            ts.into_iter().map(|t| (t.name, t.data)).collect();
        let t = by
            .remove("t")
            .and_then(|v| v.first().copied())
            .ok_or_else(|| anyhow::anyhow!("optimizer state without a step count"))?;
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for k in 0.. {
            match (by.remove(&format!("m.{k}")), by.remove(&format!("v.{k}"))) {
                (Some(a), Some(b)) => {
                    m.push(a);
                    v.push(b);
                }
                (None, None) => break,
                _ => bail!("optimizer state: moment {k} is incomplete"),
            }
        }
        Ok(OptState {
            t: t as usize,
            m,
            v,
        })
    }
}

/// A prune event during training: called with the current weights and masks and the event's
/// index; it may remove weights (and must update the masks to match).
pub type PruneHook<'a> = dyn FnMut(&mut HostModel, &mut Masks, usize) -> Result<()> + 'a;

struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    weight_decay: f64,
}

impl AdamW {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(
        vars: &[Var],
        state: Option<&OptState>,
        weight_decay: f64,
        dev: &Device,
    ) -> Result<Self> {
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (k, var) in vars.iter().enumerate() {
            let shape = var.as_tensor().shape();
            match state.filter(|s| s.m.len() == vars.len()) {
                Some(s) => {
                    if s.m[k].len() != shape.elem_count() || s.v[k].len() != shape.elem_count() {
                        bail!("optimizer state does not match parameter {k}");
                    }
                    m.push(Tensor::from_slice(&s.m[k], shape, dev)?);
                    v.push(Tensor::from_slice(&s.v[k], shape, dev)?);
                }
                None => {
                    m.push(Tensor::zeros(shape, DType::F32, dev)?);
                    v.push(Tensor::zeros(shape, DType::F32, dev)?);
                }
            }
        }
        Ok(AdamW {
            m,
            v,
            t: state.map_or(0, |s| s.t),
            weight_decay,
        })
    }

    fn step(
        &mut self,
        vars: &[Var],
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let scale_m = 1.0 / (1.0 - Self::BETA1.powi(self.t as i32));
        let scale_v = 1.0 / (1.0 - Self::BETA2.powi(self.t as i32));
        for (k, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[k] * Self::BETA1)? + (g * (1.0 - Self::BETA1))?)?;
            let v = ((&self.v[k] * Self::BETA2)? + (g.sqr()? * (1.0 - Self::BETA2))?)?;
            let step = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + Self::EPS)?)?;
            let theta = ((var.as_tensor() * (1.0 - lr * self.weight_decay))? - (step * lr)?)?;
            var.set(&theta)?;
            // Detached, or each moment would keep the autograd graph of every earlier step.
            self.m[k] = m.detach();
            self.v[k] = v.detach();
        }
        Ok(())
    }

    fn state(&self) -> Result<OptState> {
        Ok(OptState {
            t: self.t,
            m: self
                .m
                .iter()
                .map(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .collect::<Result<_>>()?,
            v: self
                .v
                .iter()
                .map(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .collect::<Result<_>>()?,
        })
    }
}

/// 0/1 tensors of the masked weights: `(tensor index, mask)`.
fn mask_tensors(
    m: &HostModel,
    masks: Option<&Masks>,
    dev: &Device,
) -> Result<Vec<(usize, Tensor)>> {
    let Some(mk) = masks else {
        return Ok(Vec::new());
    };
    m.prunable()
        .iter()
        .zip(&mk.0)
        .map(|(&(_, w), keep)| {
            let vals: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
            let shape: Vec<usize> = m.tensors[w as usize]
                .shape
                .iter()
                .map(|&d| d as usize)
                .collect();
            Ok((w as usize, Tensor::from_vec(vals, shape, dev)?))
        })
        .collect()
}

/// The training loop behind [`train_masked`]: AdamW from `state` (fresh if `None`; the
/// final state is written back), the learning rate warming up over `cfg.warmup` of the batches
/// (none when continuing from a state) and decaying along a cosine to zero, and before the
/// batches listed in `events` (ascending batch indices) a call of `hook`, after which the
/// weights and masks it left are loaded and the moments of removed weights cleared.
#[allow(clippy::too_many_arguments)]
pub fn train_with_events(
    m: &mut HostModel,
    data: &Dataset,
    cfg: &TrainConfig,
    mut masks: Option<&mut Masks>,
    teacher: Option<&Teacher<'_>>,
    state: Option<&mut OptState>,
    events: &[usize],
    hook: &mut PruneHook<'_>,
) -> Result<f32> {
    check_classifier(m)?;
    check_data(m, data)?;
    let classes = m.output_shape().iter().product::<u32>() as usize;
    if let Some(t) = teacher {
        if t.logits.len() != data.n * classes {
            bail!(
                "teacher logits: {} values for {} examples of {classes} classes",
                t.logits.len(),
                data.n
            );
        }
    }
    if !events.is_empty() && masks.is_none() {
        bail!("prune events need masks");
    }
    let dev = cfg.device.clone();
    let vars: Vec<Var> = reference::params(m, &dev)?
        .into_iter()
        .map(|t| Var::from_tensor(&t))
        .collect::<candle_core::Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let mut mask_t = mask_tensors(m, masks.as_deref(), &dev)?;
    let continuing = state.as_ref().is_some_and(|s| s.t > 0);
    let mut opt = AdamW::new(&vars, state.as_deref(), cfg.weight_decay, &dev)?;
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
    let mut tb: Vec<f32> = Vec::with_capacity(cfg.batch * classes);
    let total_batches = (cfg.epochs * data.n.div_ceil(cfg.batch)).max(1);
    let warmup = if continuing { 0.0 } else { cfg.warmup };
    let mut step = 0usize;
    let mut next_event = 0usize;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in order.chunks(cfg.batch) {
            while next_event < events.len() && events[next_event] <= step {
                let mk = masks.as_deref_mut().expect("checked above");
                for (t, v) in m.tensors.iter_mut().zip(&vars) {
                    t.data = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                }
                hook(m, mk, next_event)?;
                for (t, v) in m.tensors.iter().zip(&vars) {
                    v.set(&Tensor::from_slice(&t.data, v.as_tensor().shape(), &dev)?)?;
                }
                mask_t = mask_tensors(m, Some(mk), &dev)?;
                for (w, mask) in &mask_t {
                    opt.m[*w] = opt.m[*w].mul(mask)?.detach();
                    opt.v[*w] = opt.v[*w].mul(mask)?.detach();
                }
                next_event += 1;
            }
            // Linear warm-up over the first `warmup` of the batches (Adam's first steps are
            // sign-like and would jolt a trained model), then cosine decay to zero.
            let warm = (warmup * total_batches as f64).max(1.0);
            let lr = cfg.lr
                * ((step + 1) as f64 / warm).min(1.0)
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total_batches as f64).cos());
            step += 1;
            xb.clear();
            yb.clear();
            tb.clear();
            for &i in chunk {
                xb.extend_from_slice(&data.images[i * per..(i + 1) * per]);
                yb.push(data.labels[i]);
                if let Some(t) = teacher {
                    tb.extend_from_slice(&t.logits[i * classes..(i + 1) * classes]);
                }
            }
            let x = reference::input(m, &xb, &dev)?;
            let y = Tensor::from_slice(&yb, yb.len(), &dev)?;
            let logits = reference::forward(&m.graph, &tensors, &x)?;
            let loss = match teacher {
                Some(t) => {
                    let temp = t.temperature;
                    let tl = (Tensor::from_slice(&tb, (chunk.len(), classes), &dev)? / temp)?;
                    let log_pt = candle_nn::ops::log_softmax(&tl, 1)?;
                    let pt = log_pt.exp()?;
                    let log_q = candle_nn::ops::log_softmax(&(&logits / temp)?, 1)?;
                    let kd = ((pt * (log_pt - log_q)?)?.sum(1)?.mean_all()? * (temp * temp))?;
                    if t.weight >= 1.0 {
                        kd
                    } else {
                        let ce = candle_nn::loss::cross_entropy(&logits, &y)?;
                        ((ce * (1.0 - t.weight))? + (kd * t.weight)?)?
                    }
                }
                None => candle_nn::loss::cross_entropy(&logits, &y)?,
            };
            let grads = loss.backward()?;
            opt.step(&vars, &grads, lr)?;
            for (w, mask) in &mask_t {
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
    if let Some(s) = state {
        *s = opt.state()?;
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
