//! Structured (channel) pruning: group costs in the fine-grained criterion's loss units, the
//! optimal compensation of what remains, and physical removal into a smaller dense model.
//!
//! For a layer with `W̄ = [W | b]` and K-FAC factors `A ⊗ G` (damped as for fine-grained
//! pruning), `nap-algorithm.md` §3:
//!
//! * removing output rows `R` (a producer) costs `½ tr(W̄_R A W̄_Rᵀ ([G⁻¹]_RR)⁻¹)`, one row
//!   `½ w̄_rᵀ A w̄_r / [G⁻¹]_rr`, and the other rows absorb it with
//!   `δW̄ = −G⁻¹[:, R] ([G⁻¹]_RR)⁻¹ W̄_R`;
//! * removing input columns `J` (a consumer) costs `½ tr(W̄_Jᵀ G W̄_J ([A⁻¹]_JJ)⁻¹)`, and the other
//!   columns (the bias column included) absorb it with `δW̄ = −W̄_J ([A⁻¹]_JJ)⁻¹ A⁻¹[J, :]`.
//!
//! A group's cost is the sum of its members' costs (layers are independent blocks of the
//! Fisher). With producer costs, a removed channel's pre-activation is zero, so after its
//! BatchNorm and activation it carries a constant; [`remove_channels`] folds that constant
//! into every consumer's bias (exact where the consumer reads no zero padding).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use faer::linalg::solvers::Solve;
use faer::Mat;
use nap_runtime::format::{BatchNorm, Conv2d, Linear, Node, Op, Slice, TensorId};

use crate::curvature::{damped, spd_inverse, sub_llt};
use crate::groups::{Group, Groups, Member};
use crate::ir::{HostModel, HostTensor};
use crate::kfac::LayerFactors;
use crate::ops::{host, Constants};
use crate::prune::Criterion;
use rayon::prelude::*;

/// Which members' costs a group's cost sums.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelCost {
    /// Producer rows: the channel's pre-activation set to zero, the other rows compensate, the
    /// constant it leaves is folded into the consumers.
    #[default]
    Producer,
    /// Consumer columns: the channel is no longer read, the other inputs compensate.
    Consumer,
    /// Both (each layer's block estimate added; counts the channel twice in part).
    Sum,
}

/// Weight and bias of a Linear or Conv2d node.
fn weight_bias(m: &HostModel, node: usize) -> Result<(TensorId, Option<TensorId>)> {
    m.graph.nodes[node]
        .op
        .weight_bias()
        .with_context(|| format!("node {:?} has no weight", m.graph.nodes[node].name))
}

/// The weight tensor of node `node`, which must be a Linear or Conv2d (a group member).
fn weight_of(m: &HostModel, node: usize) -> &HostTensor {
    let (w, _) = m.graph.nodes[node]
        .op
        .weight_bias()
        .expect("group producers and consumers are Linear or Conv2d");
    &m.tensors[w as usize]
}

/// `W̄ = [W | b]` of a Linear or Conv2d node as row-major f64 `rows × (cols + 1)`; the bias
/// column is zero for a node without bias.
pub fn wbar(m: &HostModel, node: usize) -> Result<(usize, usize, Vec<f64>)> {
    let (weight, bias) = weight_bias(m, node)?;
    let t = &m.tensors[weight as usize];
    let rows = t.shape[0] as usize;
    let cols = t.numel() / rows.max(1);
    let mut w = vec![0f64; rows * (cols + 1)];
    for i in 0..rows {
        for j in 0..cols {
            w[i * (cols + 1) + j] = t.data[i * cols + j] as f64;
        }
        w[i * (cols + 1) + cols] = bias.map_or(0.0, |b| m.tensors[b as usize].data[i] as f64);
    }
    Ok((rows, cols, w))
}

/// Writes `W̄` back (see [`wbar`]); a bias column that became non-zero on a node without bias
/// goes through [`add_bias`].
pub fn set_wbar(m: &mut HostModel, node: usize, w: &[f64]) -> Result<()> {
    let (weight, bias) = weight_bias(m, node)?;
    let rows = m.tensors[weight as usize].shape[0] as usize;
    let cols = m.tensors[weight as usize].numel() / rows.max(1);
    for i in 0..rows {
        for j in 0..cols {
            m.tensors[weight as usize].data[i * cols + j] = w[i * (cols + 1) + j] as f32;
        }
    }
    let b: Vec<f64> = (0..rows).map(|i| w[i * (cols + 1) + cols]).collect();
    match bias {
        Some(t) => {
            for (d, v) in m.tensors[t as usize].data.iter_mut().zip(&b) {
                *d = *v as f32;
            }
        }
        None if b.iter().any(|v| *v != 0.0) => add_bias(m, node, &b)?,
        None => {}
    }
    Ok(())
}

/// Adds `delta` (one value per output row) to a Linear/Conv2d node's output before its
/// activation: to its bias; without one, to the running mean of a BatchNorm that is the
/// output's only reader (`BN(y + d)` with mean `μ − d` is `BN(y)`), so checkpoints keep their
/// keys; otherwise a new bias tensor `<node>.bias`.
pub fn add_bias(m: &mut HostModel, node: usize, delta: &[f64]) -> Result<()> {
    let (bias, act) = match m.graph.nodes[node].op {
        Op::Linear(Linear { bias, act, .. }) | Op::Conv2d(Conv2d { bias, act, .. }) => (bias, act),
        _ => bail!("node {:?} has no bias", m.graph.nodes[node].name),
    };
    if let Some(b) = bias {
        for (d, v) in m.tensors[b as usize].data.iter_mut().zip(delta) {
            *d += *v as f32;
        }
        return Ok(());
    }
    let out = m.graph.nodes[node].output;
    let readers: Vec<usize> = (0..m.graph.nodes.len())
        .filter(|&i| m.graph.nodes[i].inputs.contains(&out))
        .collect();
    if act == nap_runtime::format::Activation::None && readers.len() == 1 {
        if let Op::BatchNorm(BatchNorm { mean, .. }) = m.graph.nodes[readers[0]].op {
            if !m.graph.outputs.contains(&out) {
                for (d, v) in m.tensors[mean as usize].data.iter_mut().zip(delta) {
                    *d -= *v as f32;
                }
                return Ok(());
            }
        }
    }
    let name = format!("{}.bias", m.graph.nodes[node].name);
    m.tensors.push(HostTensor {
        name,
        shape: vec![delta.len() as u32],
        data: delta.iter().map(|v| *v as f32).collect(),
    });
    let id = (m.tensors.len() - 1) as TensorId;
    match &mut m.graph.nodes[node].op {
        Op::Linear(Linear { bias, .. }) | Op::Conv2d(Conv2d { bias, .. }) => *bias = Some(id),
        _ => unreachable!("checked above"),
    }
    Ok(())
}

/// One layer's damped factors and their inverses.
pub struct LayerCurvature {
    pub a: Mat<f64>,
    pub g: Mat<f64>,
    pub a_inv: Mat<f64>,
    pub g_inv: Mat<f64>,
}

impl LayerCurvature {
    pub fn new(f: &LayerFactors, eps: f64) -> Result<Self> {
        let a = damped(&f.a, f.a_dim, eps);
        let g = damped(&f.g, f.g_dim, eps);
        Ok(LayerCurvature {
            a_inv: spd_inverse(&a)?,
            g_inv: spd_inverse(&g)?,
            a,
            g,
        })
    }

    /// `½ w̄_rᵀ A w̄_r / [G⁻¹]_rr` for every row of `w` (`rows × a_dim`, row-major).
    pub fn row_costs(&self, w: &[f64]) -> Vec<f64> {
        let d = self.a.nrows();
        w.chunks(d)
            .enumerate()
            .map(|(r, wr)| {
                let mut q = 0.0;
                for i in 0..d {
                    if wr[i] == 0.0 {
                        continue;
                    }
                    let ai: f64 = (0..d).map(|j| self.a[(i, j)] * wr[j]).sum();
                    q += wr[i] * ai;
                }
                0.5 * q / self.g_inv[(r, r)]
            })
            .collect()
    }

    /// Which entries of `w` (`rows × a_dim`) are alive: the non-zero weights and every bias;
    /// `None` when no weight is zero (the layer is dense and the unmasked formulas hold).
    fn alive(&self, w: &[f64]) -> Option<Vec<bool>> {
        let d = self.a.nrows();
        let alive: Vec<bool> = w
            .iter()
            .enumerate()
            .map(|(k, v)| k % d == d - 1 || *v != 0.0)
            .collect();
        alive.contains(&false).then_some(alive)
    }

    /// Row `i`'s alive columns `M` and `(A[M, M])⁻¹` (see [`crate::obs`]).
    fn row_inverse(&self, alive: &[bool], i: usize) -> Result<(Vec<usize>, Mat<f64>)> {
        let d = self.a.nrows();
        let m: Vec<usize> = (0..d).filter(|&j| alive[i * d + j]).collect();
        let inv = crate::obs::masked_inverse_of(&self.a, &self.a_inv, &m)?;
        Ok((m, inv))
    }

    /// [`LayerCurvature::column_cost`] of each column set in `sets`. In a layer with dead
    /// weights each row is compensated inside its own alive weights:
    /// `Σ_i ½ G_ii w_iJᵀ ([(A[M_i, M_i])⁻¹]_JJ)⁻¹ w_iJ` over the alive part of `J`.
    pub fn column_costs(&self, w: &[f64], sets: &[Vec<usize>]) -> Result<Vec<f64>> {
        let Some(alive) = self.alive(w) else {
            return sets.iter().map(|c| self.column_cost(w, c)).collect();
        };
        let (rows, d) = (self.g.nrows(), self.a.nrows());
        let per_row: Vec<Vec<f64>> = (0..rows)
            .into_par_iter()
            .map(|i| -> Result<Vec<f64>> {
                let (m, inv) = self.row_inverse(&alive, i)?;
                let pos: BTreeMap<usize, usize> =
                    m.iter().enumerate().map(|(p, &j)| (j, p)).collect();
                sets.iter()
                    .map(|cols| {
                        let jj: Vec<usize> =
                            cols.iter().filter_map(|c| pos.get(c).copied()).collect();
                        if jj.is_empty() {
                            return Ok(0.0);
                        }
                        let wj = Mat::from_fn(jj.len(), 1, |a, _| w[i * d + m[jj[a]]]);
                        let x = sub_llt(&inv, &jj, "[(A[M,M])⁻¹]_JJ")?.solve(&wj);
                        let q: f64 = (0..jj.len()).map(|a| wj[(a, 0)] * x[(a, 0)]).sum();
                        Ok(0.5 * self.g[(i, i)] * q)
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        Ok((0..sets.len())
            .map(|k| per_row.iter().map(|r| r[k]).sum())
            .collect())
    }

    /// `½ tr(W̄_Jᵀ G W̄_J ([A⁻¹]_JJ)⁻¹)` for the column set `cols` of `w`.
    pub fn column_cost(&self, w: &[f64], cols: &[usize]) -> Result<f64> {
        let (rows, d) = (self.g.nrows(), self.a.nrows());
        let wj = Mat::from_fn(rows, cols.len(), |i, a| w[i * d + cols[a]]);
        let gw = &self.g * &wj;
        let m = wj.transpose() * &gw;
        let x = sub_llt(&self.a_inv, cols, "[A⁻¹]_JJ")?.solve(&m);
        Ok(0.5 * (0..cols.len()).map(|a| x[(a, a)]).sum::<f64>())
    }

    /// Removes rows `rs` of `w` (set to zero) and compensates the others:
    /// `δW̄ = −G⁻¹[:, R] ([G⁻¹]_RR)⁻¹ W̄_R`.
    pub fn remove_rows(&self, w: &mut [f64], rs: &[usize]) -> Result<()> {
        if rs.is_empty() {
            return Ok(());
        }
        let (rows, d) = (self.g.nrows(), self.a.nrows());
        let wr = Mat::from_fn(rs.len(), d, |a, j| w[rs[a] * d + j]);
        let coef = sub_llt(&self.g_inv, rs, "[G⁻¹]_RR")?.solve(&wr);
        let gcols = Mat::from_fn(rows, rs.len(), |i, a| self.g_inv[(i, rs[a])]);
        let delta = &gcols * &coef;
        // Dead weights of the other rows stay dead.
        let alive = self.alive(w);
        for i in 0..rows {
            for j in 0..d {
                if alive.as_ref().is_none_or(|a| a[i * d + j]) {
                    w[i * d + j] -= delta[(i, j)];
                }
            }
        }
        for &r in rs {
            w[r * d..(r + 1) * d].fill(0.0);
        }
        Ok(())
    }

    /// Removes columns `cols` of `w` (set to zero) and compensates the others:
    /// `δW̄ = −W̄_J ([A⁻¹]_JJ)⁻¹ A⁻¹[J, :]`.
    pub fn remove_columns(&self, w: &mut [f64], cols: &[usize]) -> Result<()> {
        if cols.is_empty() {
            return Ok(());
        }
        let (rows, d) = (self.g.nrows(), self.a.nrows());
        if let Some(alive) = self.alive(w) {
            // Each row is compensated inside its own alive weights (exact OBS of the row).
            let updates: Vec<(Vec<usize>, Mat<f64>)> = (0..rows)
                .into_par_iter()
                .map(|i| -> Result<(Vec<usize>, Mat<f64>)> {
                    let (m, inv) = self.row_inverse(&alive, i)?;
                    let jj: Vec<usize> = (0..m.len()).filter(|&p| cols.contains(&m[p])).collect();
                    if jj.is_empty() {
                        return Ok((m, Mat::zeros(0, 1)));
                    }
                    let wj = Mat::from_fn(jj.len(), 1, |a, _| w[i * d + m[jj[a]]]);
                    let coef = sub_llt(&inv, &jj, "[(A[M,M])⁻¹]_JJ")?.solve(&wj);
                    let hcols = Mat::from_fn(m.len(), jj.len(), |p, a| inv[(p, jj[a])]);
                    Ok((m, &hcols * &coef))
                })
                .collect::<Result<_>>()?;
            for (i, (m, delta)) in updates.into_iter().enumerate() {
                if delta.nrows() == m.len() {
                    for (p, &j) in m.iter().enumerate() {
                        w[i * d + j] -= delta[(p, 0)];
                    }
                }
                for &c in cols {
                    w[i * d + c] = 0.0;
                }
            }
            return Ok(());
        }
        let arows = Mat::from_fn(cols.len(), d, |a, j| self.a_inv[(cols[a], j)]);
        let coef = sub_llt(&self.a_inv, cols, "[A⁻¹]_JJ")?.solve(&arows);
        let wj = Mat::from_fn(rows, cols.len(), |i, a| w[i * d + cols[a]]);
        let delta = &wj * &coef;
        for i in 0..rows {
            for j in 0..d {
                w[i * d + j] -= delta[(i, j)];
            }
            for &c in cols {
                w[i * d + c] = 0.0;
            }
        }
        Ok(())
    }
}

/// The nodes whose K-FAC factors the channel criterion reads: every producer and consumer.
pub fn curvature_nodes(groups: &Groups) -> Vec<usize> {
    let set: BTreeSet<usize> = groups
        .groups
        .iter()
        .flat_map(|g| g.members.iter())
        .filter(|mb| matches!(mb, Member::Producer { .. } | Member::Consumer { .. }))
        .map(Member::node)
        .collect();
    set.into_iter().collect()
}

/// Curvature of the nodes in `factors` (by node index).
pub fn curvatures(factors: &[LayerFactors], eps: f64) -> Result<BTreeMap<usize, LayerCurvature>> {
    factors
        .iter()
        .map(|f| Ok((f.node, LayerCurvature::new(f, eps)?)))
        .collect()
}

/// Every group's cost, in the units of the mean per-example loss.
pub fn group_costs(
    m: &HostModel,
    groups: &Groups,
    curv: &BTreeMap<usize, LayerCurvature>,
    cost: ChannelCost,
) -> Result<Vec<f64>> {
    let mut row_costs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut wbars: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for &node in curv.keys() {
        let (_, _, w) = wbar(m, node)?;
        row_costs.insert(node, curv[&node].row_costs(&w));
        wbars.insert(node, w);
    }
    let layer = |node: usize| {
        curv.get(&node)
            .with_context(|| format!("no curvature for node {:?}", m.graph.nodes[node].name))
    };
    let mut costs = vec![0.0; groups.groups.len()];
    // Consumer column sets, by node: (group, columns).
    let mut sets: BTreeMap<usize, Vec<(usize, Vec<usize>)>> = BTreeMap::new();
    for (gi, g) in groups.groups.iter().enumerate() {
        if cost != ChannelCost::Consumer {
            for (node, row) in g.producers() {
                layer(node)?;
                costs[gi] += row_costs[&node][row];
            }
        }
        if cost != ChannelCost::Producer {
            let mut by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (node, cols) in g.consumers() {
                by_node.entry(node).or_default().extend(cols);
            }
            for (node, cols) in by_node {
                sets.entry(node).or_default().push((gi, cols));
            }
        }
    }
    for (node, list) in sets {
        let cols: Vec<Vec<usize>> = list.iter().map(|(_, c)| c.clone()).collect();
        let c = layer(node)?.column_costs(&wbars[&node], &cols)?;
        for ((gi, _), v) in list.iter().zip(c) {
            costs[*gi] += v;
        }
    }
    Ok(costs)
}

/// Multiply-accumulates per example that removing each group alone saves (its producers' rows,
/// its consumers' columns, its depthwise channels, over their output positions).
pub fn group_flops(m: &HostModel, groups: &Groups) -> Vec<f64> {
    groups
        .groups
        .iter()
        .map(|g| MacCut::new(m).add(g))
        .collect()
}

/// Multiply-accumulates per example that removing a set of groups saves, counted exactly: a
/// weight whose row and column both go is counted once.
pub struct MacCut<'a> {
    m: &'a HostModel,
    /// Rows and columns removed so far, per Linear or Conv2d node.
    cut: BTreeMap<usize, (usize, usize)>,
    /// Saved so far.
    pub saved: f64,
}

impl<'a> MacCut<'a> {
    pub fn new(m: &'a HostModel) -> Self {
        MacCut {
            m,
            cut: BTreeMap::new(),
            saved: 0.0,
        }
    }

    /// What `rows` removed rows and `cols` removed columns of `node` save.
    fn node_saved(&self, node: usize, rows: usize, cols: usize) -> f64 {
        let s = &weight_of(self.m, node).shape;
        let k: usize = s[1..].iter().map(|&d| d as usize).product();
        (rows * k + cols * s[0] as usize - rows * cols) as f64
            * positions(self.m, &self.m.graph.nodes[node])
    }

    /// Adds group `g` to the removed set; returns what it saves on top of those already added.
    pub fn add(&mut self, g: &Group) -> f64 {
        let before = self.saved;
        for mb in &g.members {
            let (node, dr, dc) = match mb {
                Member::Producer { node, .. } | Member::Depthwise { node, .. } => (*node, 1, 0),
                Member::Consumer { node, cols, .. } => (*node, 0, cols.len()),
                Member::Norm { .. } | Member::Sliced { .. } => continue,
            };
            let (r, c) = self.cut.get(&node).copied().unwrap_or((0, 0));
            self.saved += self.node_saved(node, r + dr, c + dc) - self.node_saved(node, r, c);
            self.cut.insert(node, (r + dr, c + dc));
        }
        self.saved - before
    }
}

/// Applies the OBS compensation for removing the groups flagged in `remove` under `cost`: the
/// producers' other rows (producer, sum) and the consumers' other columns (consumer, sum). The
/// removed rows and columns end at zero.
pub fn compensate(
    m: &mut HostModel,
    groups: &Groups,
    remove: &[bool],
    curv: &BTreeMap<usize, LayerCurvature>,
    cost: ChannelCost,
) -> Result<()> {
    let mut rows: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut cols: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (g, _) in groups.groups.iter().zip(remove).filter(|(_, r)| **r) {
        for (node, row) in g.producers() {
            rows.entry(node).or_default().push(row);
        }
        for (node, c) in g.consumers() {
            cols.entry(node).or_default().extend(c);
        }
    }
    let nodes: BTreeSet<usize> = rows.keys().chain(cols.keys()).copied().collect();
    for node in nodes {
        let lc = curv
            .get(&node)
            .with_context(|| format!("no curvature for node {:?}", m.graph.nodes[node].name))?;
        let (_, _, mut w) = wbar(m, node)?;
        if cost != ChannelCost::Consumer {
            if let Some(rs) = rows.get(&node) {
                lc.remove_rows(&mut w, rs)?;
            }
        }
        if cost != ChannelCost::Producer {
            if let Some(cs) = cols.get(&node) {
                lc.remove_columns(&mut w, cs)?;
            }
        }
        set_wbar(m, node, &w)?;
    }
    Ok(())
}

/// The constant every channel of a removed group carries once its producers' rows are zero
/// (`None` for channels of kept groups), per value and channel, propagated through the graph.
/// Depthwise convolutions and pools are taken to see the constant everywhere (no padding).
pub fn removed_constants(
    m: &HostModel,
    groups: &Groups,
    remove: &[bool],
) -> Result<Vec<Vec<Option<f32>>>> {
    let g = &m.graph;
    let removed = |v: u32, c: usize| groups.slot_group[v as usize][c].is_some_and(|gi| remove[gi]);
    let mut k: Vec<Vec<Option<f32>>> = groups
        .slot_group
        .iter()
        .map(|row| vec![None; row.len()])
        .collect();
    for node in &g.nodes {
        let removed = |c: usize| removed(node.output, c);
        let o = host(&node.op).constants(&Constants {
            m,
            node,
            known: &k,
            removed: &removed,
        });
        k[node.output as usize] = o;
    }
    Ok(k)
}

/// The model without the groups flagged in `remove`: producer rows and their bias entries,
/// BatchNorm entries, depthwise channels and consumer columns are deleted, and value shapes
/// re-inferred. With `fold`, each removed channel's constant ([`removed_constants`]) is first
/// folded into its consumers' biases. Every producer keeps at least one row.
pub fn remove_channels(
    m: &HostModel,
    groups: &Groups,
    remove: &[bool],
    fold: bool,
) -> Result<HostModel> {
    if remove.len() != groups.groups.len() {
        bail!("{} flags for {} groups", remove.len(), groups.groups.len());
    }
    let mut out = m.clone();
    if fold {
        let k = removed_constants(m, groups, remove)?;
        let mut delta: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for (g, _) in groups.groups.iter().zip(remove).filter(|(_, r)| **r) {
            for mb in &g.members {
                let Member::Consumer { node, slot, cols } = mb else {
                    continue;
                };
                let x = m.graph.nodes[*node].inputs[0] as usize;
                let kv = k[x][*slot].with_context(|| {
                    format!(
                        "no constant for channel {slot} read by {:?}",
                        m.graph.nodes[*node].name
                    )
                })? as f64;
                if kv == 0.0 {
                    continue;
                }
                let t = weight_of(m, *node);
                let (rows, ncols) = (t.shape[0] as usize, t.numel() / t.shape[0] as usize);
                let d = delta.entry(*node).or_insert_with(|| vec![0.0; rows]);
                for (i, di) in d.iter_mut().enumerate() {
                    *di += cols
                        .clone()
                        .map(|j| t.data[i * ncols + j] as f64)
                        .sum::<f64>()
                        * kv;
                }
            }
        }
        for (node, d) in delta {
            add_bias(&mut out, node, &d)?;
        }
    }
    // Per node: rows (or channels) to drop, and flattened weight columns to drop.
    let mut drop_rows: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut drop_cols: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (g, _) in groups.groups.iter().zip(remove).filter(|(_, r)| **r) {
        for mb in &g.members {
            match mb {
                Member::Producer { node, row } => {
                    drop_rows.entry(*node).or_default().insert(*row);
                }
                Member::Norm { node, ch }
                | Member::Depthwise { node, ch }
                | Member::Sliced { node, ch } => {
                    drop_rows.entry(*node).or_default().insert(*ch);
                }
                Member::Consumer { node, cols, .. } => {
                    drop_cols.entry(*node).or_default().extend(cols.clone());
                }
            }
        }
    }
    let nodes: BTreeSet<usize> = drop_rows.keys().chain(drop_cols.keys()).copied().collect();
    for ni in nodes {
        let rows = drop_rows.get(&ni).cloned().unwrap_or_default();
        let cols = drop_cols.get(&ni).cloned().unwrap_or_default();
        let name = out.graph.nodes[ni].name.clone();
        match &mut out.graph.nodes[ni].op {
            Op::Linear(Linear { weight, bias, .. }) | Op::Conv2d(Conv2d { weight, bias, .. }) => {
                let (weight, bias) = (*weight, *bias);
                let t = &out.tensors[weight as usize];
                let (r, c) = (t.shape[0] as usize, t.numel() / t.shape[0].max(1) as usize);
                if rows.len() >= r {
                    bail!("removing every output of {name:?}");
                }
                let keep_r: Vec<usize> = (0..r).filter(|i| !rows.contains(i)).collect();
                let keep_c: Vec<usize> = (0..c).filter(|j| !cols.contains(j)).collect();
                let data: Vec<f32> = keep_r
                    .iter()
                    .flat_map(|&i| keep_c.iter().map(move |&j| (i, j)))
                    .map(|(i, j)| t.data[i * c + j])
                    .collect();
                let mut shape = t.shape.clone();
                shape[0] = keep_r.len() as u32;
                if shape.len() == 4 {
                    let kk = (shape[2] * shape[3]) as usize;
                    if !keep_c.len().is_multiple_of(kk) {
                        bail!("{name:?}: removed columns are not whole input channels");
                    }
                    shape[1] = (keep_c.len() / kk) as u32;
                } else {
                    shape[1] = keep_c.len() as u32;
                }
                if keep_c.is_empty() {
                    bail!("removing every input of {name:?}");
                }
                out.tensors[weight as usize].data = data;
                out.tensors[weight as usize].shape = shape;
                if let Some(b) = bias {
                    keep_entries(&mut out.tensors[b as usize], &keep_r);
                }
                if let Op::Conv2d(Conv2d { groups, .. }) = &mut out.graph.nodes[ni].op {
                    if *groups != 1 {
                        *groups = keep_r.len() as u32;
                    }
                }
            }
            Op::BatchNorm(BatchNorm {
                gamma,
                beta,
                mean,
                var,
                ..
            }) => {
                let ids = [*gamma, *beta, *mean, *var];
                let n = out.tensors[ids[0] as usize].numel();
                let keep: Vec<usize> = (0..n).filter(|i| !rows.contains(i)).collect();
                for id in ids {
                    keep_entries(&mut out.tensors[id as usize], &keep);
                }
            }
            Op::Slice(Slice { start, end, .. }) => {
                // `rows` are removed input channels.
                let before = |p: u32| rows.iter().filter(|&&r| r < p as usize).count() as u32;
                let (s, e) = (*start - before(*start), *end - before(*end));
                if s == e {
                    bail!("removing every channel of slice {name:?}");
                }
                (*start, *end) = (s, e);
            }
            _ => unreachable!("members are weights, norms and slices"),
        }
    }
    out.reinfer_shapes()?;
    Ok(out)
}

fn keep_entries(t: &mut HostTensor, keep: &[usize]) {
    t.data = keep.iter().map(|&i| t.data[i]).collect();
    t.shape = vec![keep.len() as u32];
}

/// One structured pruning step's settings.
#[derive(Clone, Debug)]
pub struct ChannelStepConfig {
    /// `Nap` (group cost in loss units) or `Magnitude` (L1 norm of the producers' rows, i.e.
    /// L1-norm filter pruning); others have no channel version.
    pub criterion: Criterion,
    pub cost: ChannelCost,
    /// Share of the alive groups to remove.
    pub fraction: f64,
    /// At most this share of one producer's rows per step (and never all of them).
    pub layer_cap: f64,
    /// Rank by `cost / flops^β` (β = 0: loss only).
    pub flops_weight: f64,
    pub damping: f64,
    /// Apply the OBS compensation (NAP only).
    pub compensate: bool,
    /// Stop selecting once the selected groups save this many multiply-accumulates.
    pub max_macs: Option<f64>,
    /// Every channel space (the groups of one set of producers) keeps a multiple of this many
    /// channels, at least one multiple: the selection in it is rounded to the cheapest groups
    /// that leave the largest multiple not above what the selection left (1: no rounding).
    pub channel_multiple: usize,
}

/// What a step removed.
#[derive(Clone, Debug)]
pub struct ChannelReport {
    /// Groups removed.
    pub removed: usize,
    /// Per prunable layer ([`HostModel::prunable`] order): rows (channels) removed.
    pub removed_per_layer: Vec<usize>,
    pub predicted_loss_increase: f64,
    /// The removed groups' costs, each credited to its first producer's layer.
    pub predicted_per_layer: Vec<f64>,
}

/// Multiply-accumulates per example of the Linear and Conv2d layers as stored (dense).
pub fn macs(m: &HostModel) -> f64 {
    layer_macs(m, |t| t.numel())
}

/// Multiply-accumulates per example with a non-zero weight.
pub fn nonzero_macs(m: &HostModel) -> f64 {
    layer_macs(m, |t| t.data.iter().filter(|v| **v != 0.0).count())
}

/// `Σ weights(W) · output positions` over the Linear and Conv2d layers.
fn layer_macs(m: &HostModel, weights: impl Fn(&HostTensor) -> usize) -> f64 {
    m.graph
        .nodes
        .iter()
        .filter_map(|n| {
            let (weight, _) = n.op.weight_bias()?;
            Some(weights(&m.tensors[weight as usize]) as f64 * positions(m, n))
        })
        .sum()
}

/// Output positions per example of a node (each weight is used once per position).
fn positions(m: &HostModel, n: &Node) -> f64 {
    let s = &m.graph.values[n.output as usize].shape;
    s[1..].iter().map(|&d| d as f64).product()
}

/// Rounds a selection so that every channel space (the groups sharing one set of producers)
/// keeps a multiple of `mult` groups, at least `mult`: where the selection touches a space, it
/// becomes the space's cheapest groups (by `key`) down to that multiple; a space of at most
/// `mult` groups keeps all of them.
fn round_to_multiple(remove: &mut [bool], key: &[f64], groups: &Groups, mult: usize) {
    let mut spaces: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    for (gi, g) in groups.groups.iter().enumerate() {
        let mut p: Vec<usize> = g.producers().map(|p| p.0).collect();
        p.sort_unstable();
        p.dedup();
        spaces.entry(p).or_default().push(gi);
    }
    for members in spaces.values_mut() {
        let total = members.len();
        let removed = members.iter().filter(|&&g| remove[g]).count();
        if removed == 0 {
            continue;
        }
        let keep = if total <= mult {
            total
        } else {
            ((total - removed) / mult * mult).max(mult)
        };
        members.sort_by(|&a, &b| key[a].total_cmp(&key[b]));
        for (i, &g) in members.iter().enumerate() {
            remove[g] = i < total - keep;
        }
    }
}

/// The Slices along channels whose output group `g` is part of: `(node, channels it keeps)`.
fn slices_of<'a>(m: &'a HostModel, g: &'a Group) -> impl Iterator<Item = (usize, usize)> + 'a {
    g.members.iter().filter_map(|mb| match *mb {
        Member::Sliced { node, ch } => match m.graph.nodes[node].op {
            Op::Slice(Slice { start, end, .. }) if (start as usize..end as usize).contains(&ch) => {
                Some((node, (end - start) as usize))
            }
            _ => None,
        },
        _ => None,
    })
}

/// Where a selection removes every channel of a Slice along channels, keeps the one that costs
/// most to remove (by `key`): the rounding to multiples works per set of producers and can empty
/// a slice of them.
fn keep_a_channel_per_slice(m: &HostModel, remove: &mut [bool], key: &[f64], groups: &Groups) {
    let mut slices: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (gi, g) in groups.groups.iter().enumerate() {
        for (node, _) in slices_of(m, g) {
            slices.entry(node).or_default().push(gi);
        }
    }
    for members in slices.values() {
        if members.iter().all(|&g| remove[g]) {
            if let Some(&g) = members.iter().max_by(|&&a, &&b| key[a].total_cmp(&key[b])) {
                remove[g] = false;
            }
        }
    }
}

/// One step of structured pruning: scores every group of `groups` (`m`'s, from
/// [`crate::groups::analyze`]), removes the cheapest share under the per-layer caps
/// (compensating with OBS for NAP), and returns the smaller model. `factors` holds the K-FAC
/// factors of [`curvature_nodes`] (NAP only).
pub fn channel_step(
    m: &HostModel,
    groups: &Groups,
    factors: &[LayerFactors],
    cfg: &ChannelStepConfig,
) -> Result<(HostModel, ChannelReport)> {
    let layers = m.prunable();
    let layer_of: BTreeMap<usize, usize> = layers
        .iter()
        .enumerate()
        .map(|(l, &(n, _))| (n, l))
        .collect();
    let curv = match cfg.criterion {
        Criterion::Nap => curvatures(factors, cfg.damping)?,
        Criterion::Magnitude => BTreeMap::new(),
        c => bail!("criterion {c:?} has no channel version; use nap or magnitude"),
    };
    let cost = match cfg.criterion {
        Criterion::Nap => group_costs(m, groups, &curv, cfg.cost)?,
        _ => groups
            .groups
            .iter()
            .map(|g| {
                g.producers()
                    .map(|(node, row)| {
                        let t = weight_of(m, node);
                        let c = t.numel() / t.shape[0] as usize;
                        t.data[row * c..(row + 1) * c]
                            .iter()
                            .map(|v| v.abs() as f64)
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect(),
    };
    let flops = group_flops(m, groups);
    let key: Vec<f64> = cost
        .iter()
        .zip(&flops)
        .map(|(c, f)| c / f.max(1.0).powf(cfg.flops_weight))
        .collect();
    let mut order: Vec<usize> = (0..groups.groups.len()).collect();
    order.sort_by(|&a, &b| key[a].total_cmp(&key[b]));
    let rows_of = |node: usize| weight_of(m, node).shape[0] as usize;
    let want = ((groups.groups.len() as f64 * cfg.fraction).round() as usize).max(1);
    let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
    let mut remove = vec![false; groups.groups.len()];
    let mut n = 0;
    let mut saved = MacCut::new(m);
    for gi in order {
        if n >= want || cfg.max_macs.is_some_and(|t| saved.saved >= t) {
            break;
        }
        // Producers keep a row, and slices along channels a channel, each step.
        let g = &groups.groups[gi];
        let limited: Vec<(usize, usize)> = g
            .producers()
            .map(|(p, _)| (p, rows_of(p)))
            .chain(slices_of(m, g))
            .collect();
        let fits = limited.iter().all(|&(p, rows)| {
            let cap = ((rows as f64 * cfg.layer_cap).floor() as usize).min(rows - 1);
            taken.get(&p).copied().unwrap_or(0) < cap
        });
        if !fits {
            continue;
        }
        for (p, _) in limited {
            *taken.entry(p).or_default() += 1;
        }
        remove[gi] = true;
        n += 1;
        saved.add(&groups.groups[gi]);
    }
    if cfg.channel_multiple > 1 {
        round_to_multiple(&mut remove, &key, groups, cfg.channel_multiple);
        keep_a_channel_per_slice(m, &mut remove, &key, groups);
        n = remove.iter().filter(|&&r| r).count();
    }
    let mut report = ChannelReport {
        removed: n,
        removed_per_layer: vec![0; layers.len()],
        predicted_loss_increase: 0.0,
        predicted_per_layer: vec![0.0; layers.len()],
    };
    for (gi, g) in groups
        .groups
        .iter()
        .enumerate()
        .filter(|(gi, _)| remove[*gi])
    {
        for mb in &g.members {
            if let Member::Producer { node, .. } | Member::Depthwise { node, .. } = mb {
                report.removed_per_layer[layer_of[node]] += 1;
            }
        }
        if let Some((node, _)) = g.producers().next() {
            report.predicted_per_layer[layer_of[&node]] += cost[gi];
        }
        report.predicted_loss_increase += cost[gi];
    }
    if n == 0 {
        return Ok((m.clone(), report));
    }
    let mut work = m.clone();
    let nap = cfg.criterion == Criterion::Nap;
    if nap && cfg.compensate {
        compensate(&mut work, groups, &remove, &curv, cfg.cost)?;
    }
    // With consumer compensation the consumers' other columns already absorbed the channel.
    let fold = !(nap && cfg.compensate && cfg.cost != ChannelCost::Producer);
    let out = remove_channels(&work, groups, &remove, fold)?;
    Ok((out, report))
}
