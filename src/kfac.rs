//! Kronecker-factored curvature statistics (K-FAC) of every Linear and Conv2d of a graph.
//!
//! For a layer with weight `W̄ = [W | b]` (`d_out × (d_in + 1)`, conv weights flattened in
//! `(channel, ki, kj)` order), input `ā = [a; 1]` and pre-activation gradient `g = ∂ℓ_n/∂s` of
//! the *per-example* loss, the layer's Fisher block is approximated by `A ⊗ G` with
//!
//! * Linear: `A = E_n[ā āᵀ]`, `G = E_n[g gᵀ]`;
//! * Conv2d (KFC "expand", `T` output positions, `ā_t` the patch at position `t`):
//!   `A = E_n[(1/T) Σ_t ā_t ā_tᵀ]`, `G = E_n[Σ_t g_t g_tᵀ]`, so `A ⊗ G = T · A_avg ⊗ G_avg`.
//!
//! Element `(i, j)` of `W̄` then has Fisher diagonal `A_jj G_ii`, in units of the mean
//! per-example loss, the same for every layer (what makes one global ranking meaningful).
//! Statistics are accumulated in f64, batch by batch; patches are never kept.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use nap_runtime::format::{Conv2d, Linear, Op};
use rand::{Rng, SeedableRng};

use crate::data::Dataset;
use crate::ir::HostModel;
use crate::reference;

/// Which labels the gradients use.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Fisher {
    /// Labels sampled from the model's own predictive distribution (`softmax(z / T)`),
    /// `samples` per example.
    True,
    /// The data set's labels (smoothed by `label_smoothing`).
    Empirical,
    /// The expectation over the model's predictive distribution `softmax(z / T)`, computed
    /// exactly with one backward pass per output (C times the cost of `True`, no sampling
    /// noise).
    Exact,
}

/// The loss whose curvature is modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Softmax cross-entropy on class labels (classification; the default).
    CrossEntropy,
    /// `½‖f − y‖²` with one-hot targets, i.e. a unit-variance Gaussian likelihood.
    Mse,
}

#[derive(Clone, Debug)]
pub struct StatsConfig {
    pub fisher: Fisher,
    pub loss: Loss,
    /// Examples per batch.
    pub batch: usize,
    /// Use at most this many examples (all if `None`).
    pub max_examples: Option<usize>,
    /// Seed of the label sampling (true Fisher).
    pub seed: u64,
    /// Temperature of the label distribution of `True` and `Exact`: labels `y ~ softmax(z / T)`,
    /// gradients of the model's own loss `−log softmax(z)_y`. `T > 1` spreads the curvature of a
    /// model that is near-certain on its training data over all classes.
    pub temperature: f64,
    /// Labels drawn per example (`True`).
    pub samples: usize,
    /// `Exact` with `k` backward passes instead of one per class: each example's `k − 1` most
    /// likely classes exactly and one more drawn from the rest (`None`: every class).
    pub top_classes: Option<usize>,
    /// `Exact` estimated with this many Gaussian probes (one backward pass each) instead of
    /// one pass per class; takes precedence over `top_classes`.
    pub probes: Option<usize>,
    /// Label smoothing of `Empirical`: the target is `(1 − ε) onehot(y) + ε / C`.
    pub label_smoothing: f64,
    /// Show a progress bar.
    pub progress: bool,
    /// Collect only these nodes (graph indices of Linear/Conv2d layers); every Linear and
    /// Conv2d if `None`.
    pub nodes: Option<Vec<usize>>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            fisher: Fisher::True,
            loss: Loss::CrossEntropy,
            batch: 64,
            max_examples: None,
            seed: 0,
            temperature: 1.0,
            samples: 1,
            top_classes: None,
            probes: None,
            label_smoothing: 0.0,
            progress: false,
            nodes: None,
        }
    }
}

/// The two factors of one layer, dense row-major symmetric matrices.
#[derive(Clone, Debug)]
pub struct LayerFactors {
    /// Index of the Linear/Conv2d node in the graph.
    pub node: usize,
    /// `d_in + 1` (the bias column is always present, also for layers without bias).
    pub a_dim: usize,
    /// `d_out`.
    pub g_dim: usize,
    pub a: Vec<f64>,
    pub g: Vec<f64>,
    /// Output positions per example (1 for Linear).
    pub positions: usize,
    /// Examples accumulated.
    pub examples: usize,
}

/// `(B, C, H, W) -> (B * OH * OW, C * kh * kw)` patches, columns ordered like a flattened
/// `[out, in, kh, kw]` weight; padding reads as 0.
fn im2col(x: &Tensor, k: [usize; 2], stride: [usize; 2], pad: [usize; 2]) -> Result<Tensor> {
    let (b, c, _, _) = x.dims4()?;
    let xp = x
        .pad_with_zeros(2, pad[0], pad[0])?
        .pad_with_zeros(3, pad[1], pad[1])?;
    let u = xp.unfold(2, k[0], stride[0])?.unfold(3, k[1], stride[1])?;
    let (oh, ow) = (u.dim(2)?, u.dim(3)?);
    Ok(u.permute((0, 2, 3, 1, 4, 5))?
        .contiguous()?
        .reshape((b * oh * ow, c * k[0] * k[1]))?)
}

/// `[rows, d]` with a column of ones appended.
fn with_ones(x: &Tensor) -> Result<Tensor> {
    let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
    Ok(Tensor::cat(&[x, &ones], 1)?)
}

fn add_gram(acc: &mut [f64], x: &Tensor, scale: f64) -> Result<()> {
    let gram = x.t()?.matmul(x)?.flatten_all()?.to_vec1::<f64>()?;
    for (a, v) in acc.iter_mut().zip(gram) {
        *a += v * scale;
    }
    Ok(())
}

/// Scalar losses `Σ_n s_n` whose gradients at the probes are per-example gradients `g_n`, one
/// loss per pass; `G` is the sum over passes of `E[g gᵀ]`.
fn backward_passes(
    logits: &Tensor,
    cfg: &StatsConfig,
    labels: &[crate::data::Label],
    rng: &mut impl Rng,
) -> Result<Vec<Tensor>> {
    let (n, classes) = logits.dims2()?;
    let dev = logits.device();
    let onehot = |ys: &[u32]| -> Result<Tensor> {
        let mut v = vec![0f64; n * classes];
        for (i, &y) in ys.iter().enumerate() {
            v[i * classes + y as usize] = 1.0;
        }
        Ok(Tensor::from_vec(v, (n, classes), dev)?)
    };
    let data_labels: Vec<u32> = labels.to_vec();
    let t = cfg.temperature;
    Ok(match (cfg.loss, cfg.fisher) {
        (Loss::CrossEntropy, Fisher::Exact) if cfg.probes.is_some() => {
            // Gaussian probes ε ~ N(0, Σ_c p_c (p − e_c)(p − e_c)ᵀ), ε = Σ_c √p_c ξ_c (p − e_c) with
            // ξ_c ~ N(0, 1): the gradient of εᵀ z is Jᵀ ε, whose outer product has the exact
            // expectation, from one backward pass per probe whatever the number of classes.
            let k = cfg.probes.unwrap_or(1).max(1);
            let p = candle_nn::ops::softmax(logits, D::Minus1)?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            let pt = candle_nn::ops::softmax(&(logits / t)?, D::Minus1)?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            (0..k)
                .map(|_| {
                    let mut eps = vec![0f64; n * classes];
                    for i in 0..n {
                        let mut total = 0.0;
                        for c in 0..classes {
                            let a = pt[i][c].sqrt() * standard_normal(rng);
                            total += a;
                            eps[i * classes + c] -= a;
                        }
                        for c in 0..classes {
                            eps[i * classes + c] += total * p[i][c];
                        }
                    }
                    let eps = (Tensor::from_vec(eps, (n, classes), dev)?
                        .to_dtype(logits.dtype())?
                        / (k as f64).sqrt())?;
                    Ok((logits * eps)?.sum_all()?)
                })
                .collect::<Result<_>>()?
        }
        (Loss::CrossEntropy, Fisher::Exact) if cfg.top_classes.is_some_and(|k| k < classes) => {
            // The k − 1 most likely classes of each example exactly, the rest by one class drawn
            // in proportion to its probability and weighted by their total mass: an unbiased
            // estimate of the same expectation with k backward passes.
            let k = cfg.top_classes.unwrap_or(classes).max(1);
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let pt = candle_nn::ops::softmax(&(logits / t)?, D::Minus1)?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            let mut weights = vec![vec![0f64; n * classes]; k];
            for (i, p) in pt.iter().enumerate() {
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                for (j, &c) in order[..k - 1].iter().enumerate() {
                    weights[j][i * classes + c] = p[c].sqrt();
                }
                let rest = &order[k - 1..];
                let mass: f64 = rest.iter().map(|&c| p[c]).sum();
                let mut u = rng.gen::<f64>() * mass;
                let mut pick = *rest.last().expect("k <= classes");
                for &c in rest {
                    if u < p[c] {
                        pick = c;
                        break;
                    }
                    u -= p[c];
                }
                weights[k - 1][i * classes + pick] = mass.sqrt();
            }
            weights
                .into_iter()
                .map(|w| {
                    let w = Tensor::from_vec(w, (n, classes), dev)?.to_dtype(logp.dtype())?;
                    Ok((w * logp.neg()?)?.sum_all()?)
                })
                .collect::<Result<_>>()?
        }
        (Loss::CrossEntropy, Fisher::Exact) => {
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let sqrt_p = candle_nn::ops::softmax(&(logits / t)?, D::Minus1)?
                .sqrt()?
                .detach();
            (0..classes)
                .map(|c| {
                    let col = |t: &Tensor| t.narrow(1, c, 1);
                    Ok((col(&sqrt_p)? * col(&logp)?.neg()?)?.sum_all()?)
                })
                .collect::<Result<_>>()?
        }
        (Loss::CrossEntropy, Fisher::True) => {
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let scaled = (logits / t)?.detach();
            let k = cfg.samples.max(1);
            (0..k)
                .map(|_| {
                    let ys = sample_labels(&scaled, rng)?;
                    Ok(((&logp * onehot(&ys)?)?.neg()?.sum_all()? / (k as f64).sqrt())?)
                })
                .collect::<Result<_>>()?
        }
        (Loss::CrossEntropy, Fisher::Empirical) => {
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let e = cfg.label_smoothing;
            let target = ((onehot(&data_labels)? * (1.0 - e))? + e / classes as f64)?;
            vec![(logp * target)?.neg()?.sum_all()?]
        }
        (Loss::Mse, Fisher::Exact) => (0..classes)
            .map(|c| Ok(logits.narrow(1, c, 1)?.sum_all()?))
            .collect::<Result<_>>()?,
        (Loss::Mse, Fisher::True) => {
            // y = f + ε with ε ~ N(0, I): the gradient of ½‖f − y‖² is −ε through Jᵀ.
            let eps: Vec<f64> = (0..n * classes).map(|_| standard_normal(rng)).collect();
            let eps = Tensor::from_vec(eps, (n, classes), dev)?;
            vec![(logits * eps)?.sum_all()?]
        }
        (Loss::Mse, Fisher::Empirical) => {
            let r = (logits - onehot(&data_labels)?)?;
            vec![(r.sqr()?.sum_all()? * 0.5)?]
        }
    })
}

/// One draw from N(0, 1) (Box–Muller).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Samples one label per row from `softmax(logits)`.
fn sample_labels(logits: &Tensor, rng: &mut impl Rng) -> Result<Vec<u32>> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    Ok(probs
        .iter()
        .map(|p| {
            let u: f64 = rng.gen();
            let mut acc = 0.0;
            for (i, v) in p.iter().enumerate() {
                acc += v;
                if u < acc {
                    return i as u32;
                }
            }
            (p.len() - 1) as u32
        })
        .collect())
}

/// Bytes of memory per example that a statistics pass holds, estimated: candle keeps every value
/// of the forward pass (f64) for the backward pass, which holds about as much again, and the
/// probes and their gradients as much once more (measured on MobileNetV2 and PP-OCR's
/// classifier: 3 to 4 times the values' bytes).
fn bytes_per_example(m: &HostModel) -> usize {
    let values: usize = m
        .graph
        .values
        .iter()
        .map(|v| v.shape.iter().map(|&d| d as usize).product::<usize>())
        .sum();
    values.saturating_mul(8 * 4).max(1)
}

/// `requested` examples per statistics batch, or fewer where they would not fit in half of
/// `available` bytes.
pub fn fitting_batch(m: &HostModel, requested: usize, available: Option<usize>) -> usize {
    match available {
        Some(bytes) => (bytes / 2 / bytes_per_example(m)).clamp(1, requested.max(1)),
        None => requested.max(1),
    }
}

/// The memory the system can still give this process (Linux: `MemAvailable`), if known.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Accumulates the K-FAC factors of every Linear and Conv2d of `m` over `data`.
pub fn collect(
    m: &HostModel,
    data: &Dataset,
    cfg: &StatsConfig,
    dev: &Device,
) -> Result<Vec<LayerFactors>> {
    crate::train::check_data(m, data)?;
    let g = &m.graph;
    let mut layers = Vec::new();
    for (ni, node) in g.nodes.iter().enumerate() {
        if cfg.nodes.as_ref().is_some_and(|only| !only.contains(&ni)) {
            continue;
        }
        let out = &g.values[node.output as usize].shape;
        let (a_dim, positions) = match &node.op {
            Op::Linear(Linear { weight, .. }) => {
                (m.tensors[*weight as usize].shape[1] as usize + 1, 1)
            }
            Op::Conv2d(Conv2d {
                weight,
                groups,
                dilation,
                ..
            }) => {
                if *groups != 1 || *dilation != [1, 1] {
                    bail!(
                        "K-FAC statistics of node {:?}: grouped or dilated convolutions are not supported yet",
                        node.name
                    );
                }
                let w = &m.tensors[*weight as usize].shape;
                (
                    (w[1] * w[2] * w[3]) as usize + 1,
                    (out[1] * out[2]) as usize,
                )
            }
            _ => continue,
        };
        let g_dim = out[0] as usize;
        layers.push(LayerFactors {
            node: ni,
            a_dim,
            g_dim,
            a: vec![0.0; a_dim * a_dim],
            g: vec![0.0; g_dim * g_dim],
            positions,
            examples: 0,
        });
    }
    let params: Vec<Tensor> = reference::params(m, dev)?
        .into_iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<candle_core::Result<_>>()?;
    let n_total = cfg.max_examples.map_or(data.n, |k| k.min(data.n));
    let per = data.images.len() / data.n;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let bar = if cfg.progress {
        indicatif::ProgressBar::new(n_total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("K-FAC statistics {bar:30} {pos}/{len} examples")
            .expect("valid template"),
    );
    let batch = fitting_batch(m, cfg.batch.max(1), available_memory());
    if batch < cfg.batch && cfg.progress {
        eprintln!(
            "K-FAC statistics: {batch} examples per batch instead of {} (what fits in half the \
             available memory)",
            cfg.batch
        );
    }
    for start in (0..n_total).step_by(batch) {
        let end = (start + batch).min(n_total);
        let n = end - start;
        let x =
            reference::input(m, &data.images[start * per..end * per], dev)?.to_dtype(DType::F64)?;
        let mut probes: Vec<Option<Tensor>> = vec![None; g.nodes.len()];
        let mut vars = Vec::new();
        for l in &layers {
            let mut shape = vec![n];
            shape.extend(
                g.values[g.nodes[l.node].output as usize]
                    .shape
                    .iter()
                    .map(|&d| d as usize),
            );
            let v = Var::zeros(shape, DType::F64, dev)?;
            probes[l.node] = Some(v.as_tensor().clone());
            vars.push(v);
        }
        let vals = reference::forward_probed(g, &params, &x, &probes)?;
        let logits = vals[g.outputs[0] as usize].as_ref().context("no output")?;
        let passes = backward_passes(logits, cfg, &data.labels[start..end], &mut rng)?;
        let mut grads = Vec::with_capacity(passes.len());
        for pass in &passes {
            let gs = pass.backward()?;
            grads.push(
                vars.iter()
                    .map(|v| gs.get(v.as_tensor()).context("probe gradient").cloned())
                    .collect::<Result<Vec<Tensor>>>()?,
            );
        }
        for (li, l) in layers.iter_mut().enumerate() {
            let node = &g.nodes[l.node];
            let input = vals[node.inputs[0] as usize]
                .as_ref()
                .context("layer input")?
                .detach();
            match &node.op {
                Op::Linear(Linear { .. }) => {
                    add_gram(&mut l.a, &with_ones(&input)?, 1.0)?;
                    for gp in &grads {
                        add_gram(&mut l.g, &gp[li], 1.0)?;
                    }
                }
                Op::Conv2d(Conv2d {
                    weight,
                    stride,
                    padding,
                    ..
                }) => {
                    let w = &m.tensors[*weight as usize].shape;
                    let k = [w[2] as usize, w[3] as usize];
                    let s = [stride[0] as usize, stride[1] as usize];
                    let p = [padding[0] as usize, padding[1] as usize];
                    let patches = with_ones(&im2col(&input, k, s, p)?)?;
                    add_gram(&mut l.a, &patches, 1.0 / l.positions as f64)?;
                    for gp in &grads {
                        // (n, C_out, OH, OW) -> (n · OH · OW, C_out)
                        let gt = gp[li].permute((0, 2, 3, 1))?.reshape(((), l.g_dim))?;
                        add_gram(&mut l.g, &gt, 1.0)?;
                    }
                }
                _ => unreachable!("only Linear and Conv2d layers are collected"),
            }
            l.examples += n;
        }
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    for l in &mut layers {
        let inv = 1.0 / l.examples.max(1) as f64;
        l.a.iter_mut().for_each(|v| *v *= inv);
        l.g.iter_mut().for_each(|v| *v *= inv);
    }
    Ok(layers)
}
