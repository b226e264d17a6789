//! Masked OBS for fine-grained pruning: exact Optimal Brain Surgeon inside each row's alive
//! weights, removed greedily one weight at a time (OBC, Frantar & Alistarh 2022), ranked across
//! rows and layers by the loss each removal adds.
//!
//! **Model.** Under K-FAC a layer's Fisher block is `A ⊗ G`. Row `i` of `W̄ = [W | b]` alone,
//! with the other rows held fixed, has curvature `c_i · A` with `c_i = G_ii`. Its alive
//! weights `M_i` (the bias included when the layer has one) have curvature `c_i · A[M_i, M_i]`,
//! whose inverse `H⁻¹` is *not* `A⁻¹[M_i, M_i]`: a dead weight must neither compensate nor be
//! counted. Removing the set `S ⊂ M_i` and re-optimising the rest of `M_i` costs
//! `ΔL = ½ c_i w_Sᵀ ([H⁻¹]_SS)⁻¹ w_S` and moves the row by `δw_M = −H⁻¹[:, S] ([H⁻¹]_SS)⁻¹ w_S`.
//!
//! **Order.** Within a row the weights go greedily: each time the one whose single removal
//! costs least, `½ c_i w_q² / [H⁻¹]_qq`, with `w` and `H⁻¹` updated after every removal (a
//! rank-one downdate of the inverse). Sequential exact removals give the joint optimum of the
//! removed set, so the sum of a row's increments is the joint cost of what it loses:
//! correlated inputs are not each counted as free. Increments are made non-decreasing along
//! each row (running maximum) and all rows' increments are ranked together; a row loses the
//! prefix of its order that falls below the global cut.
//!
//! **Cost.** `H⁻¹` of a row comes from the layer's `A⁻¹` by a Schur-complement downdate while
//! few of the row's weights are dead, otherwise from a Cholesky factor of `A[M, M]`; rows with
//! the same mask share it. The downdates during the greedy are kept as a low-rank correction
//! (`H⁻¹ − U Uᵀ`), so removing `t` weights from a row of `m` costs `O(m t²)`, not `O(m² t)`.
//! Very wide layers are split into column blocks of at most [`MAX_BLOCK`] inputs, each with its
//! own diagonal block of `A` (the WoodFisher block-diagonal approximation).
//! Each segment's greedy trace is cut at `trace_fraction` of its removable weights.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use faer::linalg::solvers::{DenseSolveCore, Solve};
use faer::{Mat, Side};
use rayon::prelude::*;

use crate::curvature::damped;
use crate::kfac::LayerFactors;

/// Widest column block whose `A` is kept whole; wider layers are split evenly.
pub const MAX_BLOCK: usize = 2048;

/// One layer's pruning problem.
pub struct LayerInput<'a> {
    /// K-FAC factors (`a_dim = cols + 1`).
    pub factors: &'a LayerFactors,
    /// Output rows.
    pub rows: usize,
    /// Input columns of the weight (the bias column is `cols`).
    pub cols: usize,
    /// `W̄`, row-major `rows × (cols + 1)`, bias last (zero when the layer has none).
    pub wbar: &'a [f64],
    /// Alive weights, row-major `rows × cols`.
    pub alive: &'a [bool],
    /// The bias column may move (the layer has a bias).
    pub has_bias: bool,
    /// At most this many weights of the layer may go in this step.
    pub cap: usize,
}

/// A removal plan for all layers, and the result of applying it.
pub struct Plan {
    /// Per layer: the new `W̄` (removed weights exactly zero, dead ones untouched).
    pub wbar: Vec<Vec<f64>>,
    /// Per layer: the weights removed (row-major `rows × cols` flags).
    pub removed: Vec<Vec<bool>>,
    /// Per layer: predicted increase of the mean per-example loss (the joint costs).
    pub predicted: Vec<f64>,
}

/// Settings of a masked OBS step.
#[derive(Clone, Copy, Debug)]
pub struct MaskedConfig {
    /// Relative damping of both factors.
    pub damping: f64,
    /// Weights to remove over all layers.
    pub total: usize,
    /// Rows per block (`r × 1` blocks of consecutive rows at one column go together).
    pub block_rows: usize,
    /// Each row (block) is traced for at most this fraction of its removable weights.
    pub trace_fraction: f64,
    /// Widest column block of `A` kept whole ([`MAX_BLOCK`] by default).
    pub max_block: usize,
}

/// A row block × column block of one layer, with the alive columns it works on.
struct Segment {
    layer: usize,
    r0: usize,
    r1: usize,
    block: usize,
    /// `W̄` columns of the segment's alive set `M` (bias last if present).
    cols: Vec<usize>,
    /// Whether `cols[k]` may be removed (not the bias).
    removable: Vec<bool>,
    /// Greedy removal order (indices into `cols`) and the increments, raw and running max.
    order: Vec<usize>,
    inc: Vec<f64>,
    inc_mono: Vec<f64>,
    /// Weights removed by each step of the order (rows alive at that column).
    count: Vec<usize>,
    /// Steps of the order taken by the plan.
    take: usize,
}

struct Block {
    start: usize,
    end: usize,
    a_d: Mat<f64>,
    a_inv: Mat<f64>,
}

struct LayerSys {
    blocks: Vec<Block>,
    /// `c_i` per row.
    scale: Vec<f64>,
}

fn layer_system(inp: &LayerInput<'_>, damping: f64, max_block: usize) -> Result<LayerSys> {
    let f = inp.factors;
    let dim = inp.cols + 1;
    if f.a_dim != dim || f.g_dim != inp.rows {
        return Err(anyhow!(
            "factors {}x{} for a {}x{} layer",
            f.g_dim,
            f.a_dim,
            inp.rows,
            dim
        ));
    }
    let a_d = damped(&f.a, dim, damping);
    let g_d = damped(&f.g, f.g_dim, damping);
    let scale = (0..inp.rows).map(|i| g_d[(i, i)]).collect();
    let nb = dim.div_ceil(max_block.max(1));
    let per = dim.div_ceil(nb);
    let blocks = (0..nb)
        .map(|b| {
            let (start, end) = (b * per, ((b + 1) * per).min(dim));
            let sub = Mat::from_fn(end - start, end - start, |i, j| a_d[(start + i, start + j)]);
            let a_inv = sub
                .llt(Side::Lower)
                .map_err(|e| anyhow!("damped A is not positive definite: {e:?}"))?
                .inverse();
            Ok(Block {
                start,
                end,
                a_d: sub,
                a_inv,
            })
        })
        .collect::<Result<_>>()?;
    Ok(LayerSys { blocks, scale })
}

/// `(A[M, M])⁻¹` for the block's local column indices `m`.
fn masked_inverse(b: &Block, m: &[usize]) -> Result<Mat<f64>> {
    masked_inverse_of(&b.a_d, &b.a_inv, m)
}

/// `(A[M, M])⁻¹` of a positive definite `a` with inverse `a_inv`, for the sorted indices `m`:
/// `a_inv` itself when `m` is everything, a Schur-complement downdate of it when few indices
/// are missing, else a fresh Cholesky factor of `A[M, M]`.
pub fn masked_inverse_of(a: &Mat<f64>, a_inv: &Mat<f64>, m: &[usize]) -> Result<Mat<f64>> {
    struct View<'a> {
        a_d: &'a Mat<f64>,
        a_inv: &'a Mat<f64>,
    }
    let b = View { a_d: a, a_inv };
    let n = a.nrows();
    if m.len() == n {
        return Ok(b.a_inv.clone());
    }
    let mut is_alive = vec![false; n];
    for &j in m {
        is_alive[j] = true;
    }
    let d: Vec<usize> = (0..n).filter(|&j| !is_alive[j]).collect();
    let (mm, dd) = (m.len() as f64, d.len() as f64);
    // Downdate: dd³/3 + dd² mm + mm² dd; fresh: mm³ (factor and inverse).
    if dd * dd * dd / 3.0 + dd * dd * mm + mm * mm * dd < mm * mm * mm {
        let inv = &b.a_inv;
        let idd = Mat::from_fn(d.len(), d.len(), |i, j| inv[(d[i], d[j])]);
        let idm = Mat::from_fn(d.len(), m.len(), |i, j| inv[(d[i], m[j])]);
        let x = idd
            .llt(Side::Lower)
            .map_err(|e| anyhow!("A⁻¹ restricted to the dead weights: {e:?}"))?
            .solve(&idm);
        let corr = idm.transpose() * &x;
        Ok(Mat::from_fn(m.len(), m.len(), |i, j| {
            inv[(m[i], m[j])] - corr[(i, j)]
        }))
    } else {
        let sub = Mat::from_fn(m.len(), m.len(), |i, j| b.a_d[(m[i], m[j])]);
        Ok(sub
            .llt(Side::Lower)
            .map_err(|e| anyhow!("A restricted to a row's alive weights: {e:?}"))?
            .inverse())
    }
}

/// Greedy OBS on one segment: removes up to `limit` removable columns one at a time from the
/// rows `w` (each `m` long, aligned with `hinv`'s order), updating them in place. Returns the
/// removal order, the raw increments `½ Σ_i c_i w_iq² / [H⁻¹]_qq` and the weights removed per
/// step.
fn greedy(
    hinv: &Mat<f64>,
    w: &mut [Vec<f64>],
    c: &[f64],
    removable: &[bool],
    limit: usize,
) -> (Vec<usize>, Vec<f64>, Vec<usize>) {
    let m = hinv.nrows();
    let mut d: Vec<f64> = (0..m).map(|q| hinv[(q, q)]).collect();
    let floor = d.iter().fold(0f64, |a, &v| a.max(v)) * 1e-14;
    let mut gone: Vec<bool> = removable.iter().map(|r| !r).collect();
    let mut u_cols: Vec<Vec<f64>> = Vec::with_capacity(limit);
    let (mut order, mut inc, mut count) = (Vec::new(), Vec::new(), Vec::new());
    let mut h = vec![0f64; m];
    for _ in 0..limit {
        let mut best = (f64::INFINITY, usize::MAX);
        for q in 0..m {
            if gone[q] {
                continue;
            }
            let num: f64 = w.iter().zip(c).map(|(row, ci)| ci * row[q] * row[q]).sum();
            let s = 0.5 * num / d[q].max(floor);
            if s < best.0 {
                best = (s, q);
            }
        }
        let (cost, p) = best;
        if p == usize::MAX {
            break;
        }
        for (q, hq) in h.iter_mut().enumerate() {
            *hq = hinv[(q, p)];
        }
        for u in &u_cols {
            let f = u[p];
            if f != 0.0 {
                for (hq, uq) in h.iter_mut().zip(u) {
                    *hq -= f * uq;
                }
            }
        }
        let hp = h[p].max(floor);
        let mut n = 0;
        for row in w.iter_mut() {
            let wp = row[p];
            if wp != 0.0 {
                n += 1;
                let coef = wp / hp;
                for (x, hq) in row.iter_mut().zip(&h) {
                    *x -= coef * hq;
                }
            }
            row[p] = 0.0;
        }
        let s = hp.sqrt();
        let u: Vec<f64> = h.iter().map(|v| v / s).collect();
        for (dq, uq) in d.iter_mut().zip(&u) {
            *dq -= uq * uq;
        }
        u_cols.push(u);
        gone[p] = true;
        order.push(p);
        inc.push(cost);
        count.push(n.max(1));
    }
    (order, inc, count)
}

/// Builds the segments of every layer: one per row block and column block that has a removable
/// alive weight.
fn segments(inputs: &[LayerInput<'_>], sys: &[LayerSys], block_rows: usize) -> Vec<Segment> {
    let mut out = Vec::new();
    for (l, (inp, s)) in inputs.iter().zip(sys).enumerate() {
        for r0 in (0..inp.rows).step_by(block_rows) {
            let r1 = (r0 + block_rows).min(inp.rows);
            for (bi, b) in s.blocks.iter().enumerate() {
                let mut cols = Vec::new();
                let mut removable = Vec::new();
                for j in b.start..b.end.min(inp.cols) {
                    if (r0..r1).any(|i| inp.alive[i * inp.cols + j]) {
                        cols.push(j);
                        removable.push(true);
                    }
                }
                if cols.is_empty() {
                    continue;
                }
                if inp.has_bias && b.end == inp.cols + 1 {
                    cols.push(inp.cols);
                    removable.push(false);
                }
                out.push(Segment {
                    layer: l,
                    r0,
                    r1,
                    block: bi,
                    cols,
                    removable,
                    order: Vec::new(),
                    inc: Vec::new(),
                    inc_mono: Vec::new(),
                    count: Vec::new(),
                    take: 0,
                });
            }
        }
    }
    out
}

/// The segment's rows of `W̄`, restricted to its columns.
fn seg_rows(inp: &LayerInput<'_>, s: &Segment) -> Vec<Vec<f64>> {
    (s.r0..s.r1)
        .map(|i| {
            s.cols
                .iter()
                .map(|&j| {
                    let alive = j == inp.cols || inp.alive[i * inp.cols + j];
                    if alive {
                        inp.wbar[i * (inp.cols + 1) + j]
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs `f(segment, H⁻¹)` on every segment selected by `which`, computing each distinct
/// `(layer, block, columns)` inverse once, in parallel.
fn for_each_segment<F>(
    segs: &mut [Segment],
    sys: &[LayerSys],
    which: impl Fn(&Segment) -> bool,
    f: F,
) -> Result<()>
where
    F: Fn(&mut Segment, &Mat<f64>) + Sync,
{
    let mut groups: HashMap<(usize, usize, Vec<usize>), Vec<&mut Segment>> = HashMap::new();
    for s in segs.iter_mut().filter(|s| which(s)) {
        let key = (s.layer, s.block, s.cols.clone());
        groups.entry(key).or_default().push(s);
    }
    let groups: Vec<_> = groups.into_iter().collect();
    groups
        .into_par_iter()
        .map(|((l, b, cols), members)| {
            let blk = &sys[l].blocks[b];
            let local: Vec<usize> = cols.iter().map(|&j| j - blk.start).collect();
            let hinv = masked_inverse(blk, &local)?;
            members.into_par_iter().for_each(|s| f(s, &hinv));
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// Plans and applies one masked OBS step over all layers.
pub fn masked_step(inputs: &[LayerInput<'_>], cfg: &MaskedConfig) -> Result<Plan> {
    let br = cfg.block_rows.max(1);
    let sys: Vec<LayerSys> = inputs
        .par_iter()
        .map(|inp| layer_system(inp, cfg.damping, cfg.max_block))
        .collect::<Result<_>>()?;
    let mut segs = segments(inputs, &sys, br);
    // Pass 1: greedy traces.
    for_each_segment(
        &mut segs,
        &sys,
        |_| true,
        |s, hinv| {
            let inp = &inputs[s.layer];
            let mut w = seg_rows(inp, s);
            let c = &sys[s.layer].scale[s.r0..s.r1];
            let n = s.removable.iter().filter(|r| **r).count();
            let limit = ((n as f64 * cfg.trace_fraction).ceil() as usize)
                .max(n.min(4))
                .min(n);
            let (order, inc, count) = greedy(hinv, &mut w, c, &s.removable, limit);
            let mut run = 0f64;
            s.inc_mono = inc
                .iter()
                .map(|&v| {
                    run = run.max(v);
                    run
                })
                .collect();
            s.order = order;
            s.inc = inc;
            s.count = count;
        },
    )?;
    // Global selection: all increments in one order; a segment's k-th step only after its
    // (k-1)-th, a layer at most `cap` weights.
    let mut cands: Vec<(f64, usize, usize)> = Vec::new();
    for (si, s) in segs.iter().enumerate() {
        for (k, &v) in s.inc_mono.iter().enumerate() {
            cands.push((v, si, k));
        }
    }
    cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut taken_layer = vec![0usize; inputs.len()];
    let mut closed = vec![false; segs.len()];
    let mut total = 0usize;
    for &(_, si, k) in &cands {
        if total >= cfg.total {
            break;
        }
        if closed[si] || segs[si].take != k {
            closed[si] = true;
            continue;
        }
        let (l, n) = (segs[si].layer, segs[si].count[k]);
        if taken_layer[l] + n > inputs[l].cap {
            closed[si] = true;
            continue;
        }
        segs[si].take = k + 1;
        taken_layer[l] += n;
        total += n;
    }
    // Pass 2: replay the selected prefixes to get the compensated weights.
    let mut wbar: Vec<Vec<f64>> = inputs.iter().map(|i| i.wbar.to_vec()).collect();
    let mut removed: Vec<Vec<bool>> = inputs.iter().map(|i| vec![false; i.alive.len()]).collect();
    let mut predicted = vec![0f64; inputs.len()];
    let results = std::sync::Mutex::new(Vec::new());
    for_each_segment(
        &mut segs,
        &sys,
        |s| s.take > 0,
        |s, hinv| {
            let inp = &inputs[s.layer];
            let mut w = seg_rows(inp, s);
            let c = &sys[s.layer].scale[s.r0..s.r1];
            let (order, _, _) = greedy(hinv, &mut w, c, &s.removable, s.take);
            results.lock().expect("no panics while holding").push((
                s.layer,
                s.r0,
                s.cols.clone(),
                order,
                w,
            ));
        },
    )?;
    for s in segs.iter().filter(|s| s.take > 0) {
        predicted[s.layer] += s.inc[..s.take].iter().sum::<f64>();
    }
    for (l, r0, cols, order, w) in results.into_inner().expect("not poisoned") {
        let inp = &inputs[l];
        for (di, row) in w.iter().enumerate() {
            let i = r0 + di;
            for (k, &j) in cols.iter().enumerate() {
                if j == inp.cols || inp.alive[i * inp.cols + j] {
                    wbar[l][i * (inp.cols + 1) + j] = row[k];
                }
            }
            for &k in &order {
                let j = cols[k];
                if inp.alive[i * inp.cols + j] {
                    removed[l][i * inp.cols + j] = true;
                }
                wbar[l][i * (inp.cols + 1) + j] = 0.0;
            }
        }
    }
    Ok(Plan {
        wbar,
        removed,
        predicted,
    })
}
