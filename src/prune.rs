//! One fine-grained pruning step: score every alive weight of every prunable layer, rank them all
//! together in loss units, remove the cheapest, compensate the rest (OBS) and keep masks.

use anyhow::{bail, Result};

use crate::curvature::{obd_score, Inverses};
use crate::ir::HostModel;
use crate::kfac::LayerFactors;
use crate::obs;

/// How weights are scored.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// K-FAC OBS: `½ w² / ([A⁻¹]_jj [G⁻¹]_ii)`, ranked globally.
    Nap,
    /// K-FAC OBD: `½ w² A_jj G_ii`, ranked globally.
    Obd,
    /// `|w|`, ranked globally.
    Magnitude,
    /// `|w|`, the same fraction removed from every layer.
    MagnitudeUniform,
    /// Gradual magnitude pruning (Zhu & Gupta): `|w|` ranked globally, in the gradual schedule.
    Gmp,
}

/// Compensation of the remaining weights.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ObsUpdate {
    /// Exact OBS inside each row's alive weights (`(A[M,M])⁻¹`, [`crate::obs`]), weights removed
    /// greedily per row and ranked by their joint cost; the default.
    Masked,
    /// The masked OBS's choice of weights ([`ObsUpdate::Masked`]) without its compensation: the
    /// removed weights are zeroed and the others keep their values (an ablation).
    MaskedSelect,
    /// No compensation; weights ranked one by one by their OBS cost on the layer's unmasked
    /// `A⁻¹` (an ablation).
    None,
    /// The sum of the single-weight OBS updates (`δW̄ = −G⁻¹ C A⁻¹`) on the unmasked `A⁻¹`
    /// (the textbook K-FAC form; dead weights take part and are zeroed again).
    Independent,
    /// The joint OBS update of the weights removed from each row, spread over the other rows
    /// through `G⁻¹`; rows are treated independently.
    Row,
    /// The joint OBS update of the weights removed from each row, changing only that row.
    RowLocal,
}

impl ObsUpdate {
    /// Whether the remaining weights are moved to compensate for the removed ones.
    pub fn compensates(self) -> bool {
        !matches!(self, ObsUpdate::None | ObsUpdate::MaskedSelect)
    }
}

#[derive(Clone, Debug)]
pub struct StepConfig {
    pub criterion: Criterion,
    /// Fraction of the alive weights (over all layers) to remove.
    pub fraction: f64,
    /// At most this fraction of one layer's alive weights goes in one step.
    pub layer_cap: f64,
    pub update: ObsUpdate,
    /// Relative damping of both factors.
    pub damping: f64,
    /// Rows per pruning block: 1 scores and removes single weights; `r > 1` scores the `r × 1`
    /// blocks of `r` consecutive output rows at one input column by the sum of their alive
    /// weights' scores and removes whole blocks, so the runtime can store the weight with one
    /// column index per block.
    pub block_rows: usize,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            criterion: Criterion::Nap,
            fraction: 0.2,
            layer_cap: 0.9,
            update: ObsUpdate::Masked,
            damping: 1e-1,
            block_rows: 1,
        }
    }
}

/// Which weights of each prunable layer are alive (`true`), in [`HostModel::prunable`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct Masks(pub Vec<Vec<bool>>);

impl Masks {
    /// Everything that is non-zero now is alive.
    pub fn from_model(m: &HostModel) -> Masks {
        Masks(
            m.prunable()
                .iter()
                .map(|&(_, w)| {
                    m.tensors[w as usize]
                        .data
                        .iter()
                        .map(|v| *v != 0.0)
                        .collect()
                })
                .collect(),
        )
    }

    /// Alive weights of each layer.
    pub fn alive_per_layer(&self) -> Vec<usize> {
        self.0
            .iter()
            .map(|l| l.iter().filter(|a| **a).count())
            .collect()
    }

    pub fn alive(&self) -> usize {
        self.0
            .iter()
            .map(|l| l.iter().filter(|a| **a).count())
            .sum()
    }

    /// Zeroes every dead weight of `m`.
    pub fn apply(&self, m: &mut HostModel) {
        for (mask, (_, w)) in self.0.iter().zip(m.prunable()) {
            for (v, alive) in m.tensors[w as usize].data.iter_mut().zip(mask) {
                if !alive {
                    *v = 0.0;
                }
            }
        }
    }
}

/// What a step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Weights removed per prunable layer.
    pub removed: Vec<usize>,
    /// Sum of the removed weights' scores (loss units for `Nap`/`Obd`).
    pub predicted_loss_increase: f64,
    /// The same sum per prunable layer.
    pub predicted_per_layer: Vec<f64>,
}

/// Prunes `m` in place. `factors` must hold one entry per prunable layer in graph order (as
/// [`crate::kfac::collect`] returns them) unless the criterion is a magnitude one.
pub fn prune_step(
    m: &mut HostModel,
    masks: &mut Masks,
    factors: &[LayerFactors],
    cfg: &StepConfig,
) -> Result<StepReport> {
    let layers = m.prunable();
    let needs_curvature = matches!(cfg.criterion, Criterion::Nap | Criterion::Obd);
    if needs_curvature && factors.len() != layers.len() {
        bail!(
            "{} factor pairs for {} prunable layers",
            factors.len(),
            layers.len()
        );
    }
    if cfg.criterion == Criterion::Nap
        && matches!(cfg.update, ObsUpdate::Masked | ObsUpdate::MaskedSelect)
    {
        return masked(m, masks, factors, cfg);
    }
    let inverses: Vec<Option<Inverses>> = if cfg.criterion == Criterion::Nap {
        factors
            .iter()
            .map(|f| Inverses::new(f, cfg.damping).map(Some))
            .collect::<Result<_>>()?
    } else {
        layers.iter().map(|_| None).collect()
    };
    // Every alive weight's score, by layer (NaN where dead).
    let mut scores: Vec<Vec<f64>> = Vec::with_capacity(layers.len());
    for (l, &(_, w)) in layers.iter().enumerate() {
        let t = &m.tensors[w as usize];
        let rows = t.shape[0] as usize;
        let cols = t.numel() / rows.max(1);
        scores.push(
            t.data
                .iter()
                .enumerate()
                .map(|(k, &v)| {
                    if !masks.0[l][k] {
                        return f64::NAN;
                    }
                    let (i, j) = (k / cols, k % cols);
                    match cfg.criterion {
                        Criterion::Nap => inverses[l]
                            .as_ref()
                            .expect("built above")
                            .obs_score(v as f64, i, j),
                        Criterion::Obd => obd_score(&factors[l], v as f64, i, j),
                        Criterion::Magnitude | Criterion::MagnitudeUniform | Criterion::Gmp => {
                            (v as f64).abs()
                        }
                    }
                })
                .collect(),
        );
    }
    // Candidates: (summed score, layer, first row, column, alive members) for every block with
    // an alive weight; a block is one weight when `block_rows` is 1.
    let br = cfg.block_rows.max(1);
    let mut cands: Vec<(f64, usize, usize, usize, usize)> = Vec::new();
    for (l, &(_, w)) in layers.iter().enumerate() {
        let t = &m.tensors[w as usize];
        let rows = t.shape[0] as usize;
        let cols = t.numel() / rows.max(1);
        for r0 in (0..rows).step_by(br) {
            for j in 0..cols {
                let (mut s, mut n) = (0.0, 0);
                for i in r0..(r0 + br).min(rows) {
                    if masks.0[l][i * cols + j] {
                        s += scores[l][i * cols + j];
                        n += 1;
                    }
                }
                if n > 0 {
                    cands.push((s, l, r0, j, n));
                }
            }
        }
    }
    let alive_per = masks.alive_per_layer();
    let mut removed = vec![0usize; layers.len()];
    let mut predicted = vec![0.0; layers.len()];
    cands.sort_by(|a, b| a.0.total_cmp(&b.0));
    let kill = |masks: &mut Masks, l: usize, r0: usize, j: usize, removed: &mut [usize]| {
        let t = &m.tensors[layers[l].1 as usize];
        let rows = t.shape[0] as usize;
        let cols = t.numel() / rows.max(1);
        for i in r0..(r0 + br).min(rows) {
            if masks.0[l][i * cols + j] {
                masks.0[l][i * cols + j] = false;
                removed[l] += 1;
            }
        }
    };
    if cfg.criterion == Criterion::MagnitudeUniform {
        for (l, &alive) in alive_per.iter().enumerate() {
            let quota = (alive as f64 * cfg.fraction).round() as usize;
            for &(s, _, r0, j, _) in cands.iter().filter(|c| c.1 == l) {
                if removed[l] >= quota {
                    break;
                }
                kill(masks, l, r0, j, &mut removed);
                predicted[l] += s;
            }
        }
    } else {
        let total = (alive_per.iter().sum::<usize>() as f64 * cfg.fraction).round() as usize;
        let caps: Vec<usize> = alive_per
            .iter()
            .map(|&a| (a as f64 * cfg.layer_cap).floor() as usize)
            .collect();
        let mut taken = 0;
        for &(s, l, r0, j, n) in &cands {
            if taken >= total {
                break;
            }
            if removed[l] + n <= caps[l] {
                kill(masks, l, r0, j, &mut removed);
                predicted[l] += s;
                taken += n;
            }
        }
    }
    if cfg.update.compensates() && cfg.criterion == Criterion::Nap {
        for (l, &(node, w)) in layers.iter().enumerate() {
            if removed[l] == 0 {
                continue;
            }
            let (rows, cols, mut wb) = crate::channel::wbar(m, node)?;
            // Newly removed = alive before this step and dead now; those get the OBS removal.
            let remove: Vec<bool> = (0..rows * (cols + 1))
                .map(|k| {
                    let (i, j) = (k / (cols + 1), k % (cols + 1));
                    j < cols && wb[k] != 0.0 && !masks.0[l][i * cols + j]
                })
                .collect();
            let inv = inverses[l].as_ref().expect("built above");
            if cfg.update == ObsUpdate::Row || cfg.update == ObsUpdate::RowLocal {
                inv.obs_update_rows(&mut wb, &remove, cfg.update == ObsUpdate::Row)?;
            } else {
                inv.obs_update(&mut wb, &remove);
            }
            let bias = m.graph.nodes[node].op.weight_bias().and_then(|(_, b)| b);
            for i in 0..rows {
                for j in 0..cols {
                    m.tensors[w as usize].data[i * cols + j] = wb[i * (cols + 1) + j] as f32;
                }
                if let Some(b) = bias {
                    m.tensors[b as usize].data[i] = wb[i * (cols + 1) + cols] as f32;
                }
            }
        }
    }
    masks.apply(m);
    Ok(StepReport {
        removed,
        predicted_loss_increase: predicted.iter().sum(),
        predicted_per_layer: predicted,
    })
}

/// [`prune_step`] with [`ObsUpdate::Masked`] or [`ObsUpdate::MaskedSelect`].
fn masked(
    m: &mut HostModel,
    masks: &mut Masks,
    factors: &[LayerFactors],
    cfg: &StepConfig,
) -> Result<StepReport> {
    let layers = m.prunable();
    let mut wbars = Vec::with_capacity(layers.len());
    let mut has_bias = Vec::with_capacity(layers.len());
    for &(node, _) in &layers {
        wbars.push(crate::channel::wbar(m, node)?);
        has_bias.push(
            m.graph.nodes[node]
                .op
                .weight_bias()
                .and_then(|(_, b)| b)
                .is_some(),
        );
    }
    let alive_per = masks.alive_per_layer();
    let inputs: Vec<obs::LayerInput<'_>> = wbars
        .iter()
        .enumerate()
        .map(|(l, (rows, cols, wb))| obs::LayerInput {
            factors: &factors[l],
            rows: *rows,
            cols: *cols,
            wbar: wb,
            alive: &masks.0[l],
            has_bias: has_bias[l],
            cap: (alive_per[l] as f64 * cfg.layer_cap).floor() as usize,
        })
        .collect();
    let plan = obs::masked_step(
        &inputs,
        &obs::MaskedConfig {
            damping: cfg.damping,
            total: (alive_per.iter().sum::<usize>() as f64 * cfg.fraction).round() as usize,
            block_rows: cfg.block_rows.max(1),
            trace_fraction: cfg.layer_cap.max(2.0 * cfg.fraction).min(1.0),
            max_block: obs::MAX_BLOCK,
        },
    )?;
    let mut removed = vec![0usize; layers.len()];
    for (l, &(node, _)) in layers.iter().enumerate() {
        for (k, r) in plan.removed[l].iter().enumerate() {
            if *r {
                masks.0[l][k] = false;
                removed[l] += 1;
            }
        }
        if removed[l] > 0 && cfg.update.compensates() {
            crate::channel::set_wbar(m, node, &plan.wbar[l])?;
        }
    }
    masks.apply(m);
    Ok(StepReport {
        removed,
        predicted_loss_increase: plan.predicted.iter().sum(),
        predicted_per_layer: plan.predicted,
    })
}
