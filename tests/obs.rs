//! Masked OBS (`nap::obs`) against a brute-force exact OBS that never inverts `A`: each
//! removal's cost and the compensated row come from the reduced normal equations of the row's
//! alive weights, `w'_K = w_K + H_KK⁻¹ H_KS w_S`, solved by Gaussian elimination.

#![allow(clippy::needless_range_loop)] // index loops mirror the formulas they check

use nap::curvature::damped;
use nap::kfac::LayerFactors;
use nap::obs::{masked_step, LayerInput, MaskedConfig};
use rand::{Rng, SeedableRng};

mod common;
use common::solve;

const DAMPING: f64 = 0.1;

fn rng(s: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(s)
}

/// `X Xᵀ / n` for a random `dim × n` X with correlated rows (neighbours share a component).
fn gram(dim: usize, n: usize, r: &mut impl Rng) -> Vec<f64> {
    let base: Vec<f64> = (0..(dim + 1) * n).map(|_| r.gen_range(-1.0..1.0)).collect();
    let x: Vec<f64> = (0..dim * n)
        .map(|k| {
            let (i, t) = (k / n, k % n);
            base[i * n + t] + 0.8 * base[(i + 1) * n + t]
        })
        .collect();
    let mut m = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            m[i * dim + j] = (0..n).map(|k| x[i * n + k] * x[j * n + k]).sum::<f64>() / n as f64;
        }
    }
    m
}

struct Layer {
    rows: usize,
    cols: usize,
    f: LayerFactors,
    wbar: Vec<f64>,
    alive: Vec<bool>,
    /// Damped A (dim²), with the entries between different column blocks zeroed.
    h: Vec<f64>,
    /// Damped G's diagonal.
    c: Vec<f64>,
}

fn layer(rows: usize, cols: usize, dead: &[usize], block: usize, seed: u64) -> Layer {
    let mut r = rng(seed);
    let dim = cols + 1;
    let mut a = gram(dim, 3 * dim, &mut r);
    // The bias input is a constant 1.
    for j in 0..dim {
        let v = if j == cols {
            1.0
        } else {
            a[j * dim + cols] * 0.3
        };
        a[j * dim + cols] = v;
        a[cols * dim + j] = v;
    }
    let g = gram(rows, 3 * rows, &mut r);
    let ad = damped(&a, dim, DAMPING);
    let gd = damped(&g, rows, DAMPING);
    let nb = dim.div_ceil(block);
    let per = dim.div_ceil(nb);
    let h = (0..dim * dim)
        .map(|k| {
            let (i, j) = (k / dim, k % dim);
            if i / per == j / per {
                ad[(i, j)]
            } else {
                0.0
            }
        })
        .collect();
    let mut wbar: Vec<f64> = (0..rows * dim).map(|_| r.gen_range(-1.0..1.0)).collect();
    let mut alive = vec![true; rows * cols];
    for &k in dead {
        alive[k] = false;
        wbar[(k / cols) * dim + k % cols] = 0.0;
    }
    Layer {
        rows,
        cols,
        f: LayerFactors {
            node: 0,
            a_dim: dim,
            g_dim: rows,
            a,
            g,
            positions: 1,
            examples: 1,
        },
        wbar,
        alive,
        h,
        c: (0..rows).map(|i| gd[(i, i)]).collect(),
    }
}

impl Layer {
    /// Row `i` with the columns `removed` set to zero and the other alive weights (and bias)
    /// re-optimised; returns the new row and `½ δᵀ H δ` (without `c_i`).
    fn brute_row(&self, i: usize, removed: &[usize]) -> (Vec<f64>, f64) {
        let dim = self.cols + 1;
        let w = &self.wbar[i * dim..(i + 1) * dim];
        let keep: Vec<usize> = (0..dim)
            .filter(|&j| (j == self.cols || self.alive[i * self.cols + j]) && !removed.contains(&j))
            .collect();
        let hk = |a: usize, b: usize| self.h[a * dim + b];
        let kk: Vec<f64> = keep
            .iter()
            .flat_map(|&a| keep.iter().map(move |&b| hk(a, b)))
            .collect();
        let rhs: Vec<f64> = keep
            .iter()
            .map(|&a| removed.iter().map(|&s| hk(a, s) * w[s]).sum())
            .collect();
        let dk = solve(kk, rhs);
        let mut delta = vec![0.0; dim];
        for (&a, v) in keep.iter().zip(&dk) {
            delta[a] = *v;
        }
        for &s in removed {
            delta[s] = -w[s];
        }
        let cost = 0.5
            * (0..dim)
                .map(|a| {
                    (0..dim)
                        .map(|b| delta[a] * hk(a, b) * delta[b])
                        .sum::<f64>()
                })
                .sum::<f64>();
        ((0..dim).map(|j| w[j] + delta[j]).collect(), cost)
    }

    /// Brute-force greedy order of the rows `r0..r1` (removed together, column by column) and
    /// the increments of their summed cost `Σ_i c_i ½ δ_iᵀ H δ_i`.
    fn greedy(&self, r0: usize, r1: usize) -> (Vec<usize>, Vec<f64>) {
        let cand: Vec<usize> = (0..self.cols)
            .filter(|&j| (r0..r1).any(|i| self.alive[i * self.cols + j]))
            .collect();
        let cost =
            |set: &[usize]| -> f64 { (r0..r1).map(|i| self.c[i] * self.brute_row(i, set).1).sum() };
        let (mut order, mut incs) = (Vec::new(), Vec::new());
        let mut prev = 0.0;
        while order.len() < cand.len() {
            let (best, q) = cand
                .iter()
                .filter(|q| !order.contains(*q))
                .map(|&q| {
                    let mut s = order.clone();
                    s.push(q);
                    (cost(&s), q)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap();
            order.push(q);
            incs.push(best - prev);
            prev = best;
        }
        (order, incs)
    }

    fn input(&self, cap: usize) -> LayerInput<'_> {
        LayerInput {
            factors: &self.f,
            rows: self.rows,
            cols: self.cols,
            wbar: &self.wbar,
            alive: &self.alive,
            has_bias: true,
            cap,
        }
    }
}

fn cfg(total: usize, block_rows: usize, max_block: usize) -> MaskedConfig {
    MaskedConfig {
        damping: DAMPING,
        total,
        block_rows,
        trace_fraction: 1.0,
        max_block,
    }
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

/// Every count of removals: each row (block) loses a prefix of the brute-force greedy order,
/// the prefixes are the cheapest increments over all rows (running maximum per row), the kept
/// weights are the exact OBS optimum with dead weights held at zero, and the predicted loss is
/// the exact joint cost.
fn check_against_brute_force(l: &Layer, block_rows: usize, max_block: usize) {
    let blocks: Vec<(usize, usize)> = (0..l.rows)
        .step_by(block_rows)
        .map(|r0| (r0, (r0 + block_rows).min(l.rows)))
        .collect();
    let traces: Vec<(Vec<usize>, Vec<f64>)> = blocks.iter().map(|&(a, b)| l.greedy(a, b)).collect();
    let mono: Vec<Vec<f64>> = traces
        .iter()
        .map(|(_, inc)| {
            let mut run = 0f64;
            inc.iter()
                .map(|&v| {
                    run = run.max(v);
                    run
                })
                .collect()
        })
        .collect();
    let alive: usize = l.alive.iter().filter(|a| **a).count();
    let dim = l.cols + 1;
    let mut steps = 0;
    for total in 1..=alive {
        let plan = masked_step(&[l.input(usize::MAX)], &cfg(total, block_rows, max_block)).unwrap();
        let mut predicted = 0.0;
        let mut taken_max = 0f64;
        let mut next_min = f64::INFINITY;
        for (b, &(r0, r1)) in blocks.iter().enumerate() {
            let (order, _) = &traces[b];
            let gone: Vec<usize> = (0..l.cols)
                .filter(|&j| (r0..r1).any(|i| plan.removed[0][i * l.cols + j]))
                .collect();
            let k = gone.len();
            let mut prefix = order[..k].to_vec();
            prefix.sort();
            assert_eq!(
                gone, prefix,
                "rows {r0}..{r1} lose a greedy prefix (total {total})"
            );
            if k > 0 {
                taken_max = taken_max.max(mono[b][k - 1]);
            }
            if k < order.len() {
                next_min = next_min.min(mono[b][k]);
            }
            for i in r0..r1 {
                let (row, cost) = l.brute_row(i, &order[..k]);
                predicted += l.c[i] * cost;
                for j in 0..dim {
                    let got = plan.wbar[0][i * dim + j];
                    if j < l.cols && !l.alive[i * l.cols + j] {
                        assert_eq!(got, 0.0, "dead weight ({i}, {j}) received compensation");
                    }
                    close(got, row[j], 1e-7, &format!("w[{i},{j}] (total {total})"));
                }
            }
        }
        assert!(
            taken_max <= next_min * (1.0 + 1e-9),
            "the plan takes an increment {taken_max} above one it leaves {next_min}"
        );
        close(plan.predicted[0], predicted, 1e-7, "predicted loss");
        steps += 1;
    }
    assert!(steps > 0);
}

#[test]
fn issue12_masked_obs_matches_brute_force_exact_obs() {
    // Row 0 dense (the layer inverse), row 1 one dead weight (downdate of A⁻¹), row 2 four dead
    // (fresh factor of A[M, M]).
    let l = layer(3, 7, &[7 + 2, 14, 14 + 3, 14 + 4, 14 + 6], 64, 1);
    check_against_brute_force(&l, 1, 64);
}

#[test]
fn issue12_masked_obs_with_column_blocks_and_row_blocks() {
    // 8 W̄ columns in blocks of at most 3: 3 + 3 + 2 (the bias in the last).
    let l = layer(3, 7, &[1, 7 + 5], 3, 2);
    check_against_brute_force(&l, 1, 3);
    // 4×1 blocks of two rows sharing a mask.
    let l = layer(4, 6, &[3, 6 + 3, 12 + 1, 18 + 1], 64, 3);
    check_against_brute_force(&l, 2, 64);
}

#[test]
fn issue12_removed_weights_never_receive_compensation() {
    let l = layer(4, 9, &[0, 1, 9 + 4, 18 + 8, 27, 27 + 5, 27 + 6], 64, 4);
    let plan = masked_step(&[l.input(usize::MAX)], &cfg(12, 1, 64)).unwrap();
    let dim = l.cols + 1;
    let mut moved = 0.0f64;
    for i in 0..l.rows {
        let removed: Vec<usize> = (0..l.cols)
            .filter(|&j| plan.removed[0][i * l.cols + j])
            .collect();
        let (row, _) = l.brute_row(i, &removed);
        // The unmasked update (A⁻¹ of the whole row, dead weights free to move) differs: the
        // test can tell the two apart.
        let a_inv_row = {
            let w = &l.wbar[i * dim..(i + 1) * dim];
            let keep: Vec<usize> = (0..dim).filter(|j| !removed.contains(j)).collect();
            let h = &l.h;
            let kk: Vec<f64> = keep
                .iter()
                .flat_map(|&a| keep.iter().map(move |&b| h[a * dim + b]))
                .collect();
            let rhs: Vec<f64> = keep
                .iter()
                .map(|&a| removed.iter().map(|&s| l.h[a * dim + s] * w[s]).sum())
                .collect();
            let dk = solve(kk, rhs);
            let mut out = w.to_vec();
            for (&a, v) in keep.iter().zip(&dk) {
                out[a] += v;
            }
            out
        };
        for j in 0..dim {
            let got = plan.wbar[0][i * dim + j];
            if j < l.cols && (!l.alive[i * l.cols + j] || plan.removed[0][i * l.cols + j]) {
                assert_eq!(
                    got, 0.0,
                    "weight ({i}, {j}) is dead or removed but is {got}"
                );
            }
            close(got, row[j], 1e-7, &format!("w[{i},{j}]"));
            if j < l.cols && l.alive[i * l.cols + j] && !removed.contains(&j) {
                moved = moved.max((a_inv_row[j] - row[j]).abs());
            }
        }
    }
    assert!(
        moved > 1e-3,
        "masked and unmasked updates agree ({moved}); the layer does not exercise the mask"
    );
}

#[test]
fn layer_caps_and_totals_are_respected() {
    let a = layer(5, 12, &[], 64, 5);
    let b = layer(3, 4, &[2], 64, 6);
    let plan = masked_step(&[a.input(10), b.input(usize::MAX)], &cfg(25, 1, 64)).unwrap();
    let n: Vec<usize> = plan
        .removed
        .iter()
        .map(|r| r.iter().filter(|x| **x).count())
        .collect();
    assert!(n[0] <= 10, "layer cap: {n:?}");
    // 10 (the cap) + 11 (all alive) is below the 25 asked for.
    assert_eq!(n[0] + n[1], 21, "total: {n:?}");
}

/// Channel mode on a layer with dead weights: removing input columns costs and compensates
/// each row inside its own alive weights (the same masked OBS), and removing output rows never
/// revives a dead weight of the rows that compensate.
#[test]
fn issue12_channel_costs_and_compensation_respect_masks() {
    use nap::channel::LayerCurvature;
    let l = layer(4, 8, &[1, 8 + 2, 8 + 5, 16 + 2, 24, 24 + 7], 64, 7);
    let lc = LayerCurvature::new(&l.f, DAMPING).unwrap();
    let dim = l.cols + 1;
    let sets = vec![vec![2, 3], vec![5], vec![0, 1, 7]];
    let costs = lc.column_costs(&l.wbar, &sets).unwrap();
    for (set, cost) in sets.iter().zip(&costs) {
        let mut want = 0.0;
        let mut w = l.wbar.clone();
        lc.remove_columns(&mut w, set).unwrap();
        for i in 0..l.rows {
            let gone: Vec<usize> = set
                .iter()
                .copied()
                .filter(|&j| l.alive[i * l.cols + j])
                .collect();
            let (row, c) = l.brute_row(i, &gone);
            want += l.c[i] * c;
            for j in 0..dim {
                let got = w[i * dim + j];
                if set.contains(&j) || (j < l.cols && !l.alive[i * l.cols + j]) {
                    assert_eq!(got, 0.0, "({i}, {j}) removed or dead but {got}");
                } else {
                    close(
                        got,
                        row[j],
                        1e-7,
                        &format!("w[{i},{j}] after removing {set:?}"),
                    );
                }
            }
        }
        close(*cost, want, 1e-7, &format!("cost of {set:?}"));
    }
    let mut w = l.wbar.clone();
    lc.remove_rows(&mut w, &[1]).unwrap();
    for i in 0..l.rows {
        for j in 0..l.cols {
            if i == 1 || !l.alive[i * l.cols + j] {
                assert_eq!(w[i * dim + j], 0.0, "({i}, {j})");
            }
        }
    }
}
