//! Factor algebra on K-FAC statistics: relative damping, inverses and the OBS/OBD saliencies.

use anyhow::{anyhow, Result};
use faer::linalg::solvers::{DenseSolveCore, Llt, Solve};
use faer::{Mat, Side};

use crate::kfac::LayerFactors;

/// `m + eps · mean(diag m) · I` for a symmetric `dim × dim` row-major matrix. A factor whose
/// diagonal is all zero (a layer that never sees signal) is damped by `eps` absolutely, so the
/// result is always positive definite for positive semi-definite input.
pub fn damped(m: &[f64], dim: usize, eps: f64) -> Mat<f64> {
    let mean = (0..dim).map(|i| m[i * dim + i]).sum::<f64>() / dim.max(1) as f64;
    let lambda = if mean > 0.0 && mean.is_finite() {
        eps * mean
    } else {
        eps
    };
    Mat::from_fn(dim, dim, |i, j| {
        m[i * dim + j] + if i == j { lambda } else { 0.0 }
    })
}

/// Cholesky factor of the principal submatrix `m[idx, idx]` (the system every OBS removal of
/// the set `idx` solves); `what` names the submatrix in the error.
pub fn sub_llt(m: &Mat<f64>, idx: &[usize], what: &str) -> Result<Llt<f64>> {
    Mat::from_fn(idx.len(), idx.len(), |a, b| m[(idx[a], idx[b])])
        .llt(Side::Lower)
        .map_err(|e| anyhow!("{what} is not positive definite: {e:?}"))
}

/// Inverse of a symmetric positive definite matrix through Cholesky.
pub fn spd_inverse(m: &Mat<f64>) -> Result<Mat<f64>> {
    let llt = m
        .llt(Side::Lower)
        .map_err(|e| anyhow!("factor is not positive definite after damping: {e:?}"))?;
    Ok(llt.inverse())
}

/// Damped inverses of one layer's factors.
pub struct Inverses {
    /// `A_d⁻¹`, `(d_in + 1)²`.
    pub a_inv: Mat<f64>,
    /// `G_d⁻¹`, `d_out²`.
    pub g_inv: Mat<f64>,
}

impl Inverses {
    pub fn new(f: &LayerFactors, eps: f64) -> Result<Self> {
        Ok(Inverses {
            a_inv: spd_inverse(&damped(&f.a, f.a_dim, eps))?,
            g_inv: spd_inverse(&damped(&f.g, f.g_dim, eps))?,
        })
    }

    /// OBS saliency of weight `(i, j)` (output row `i`, input column `j`, the bias is column
    /// `d_in`): the predicted increase of the mean per-example loss when it is removed and the
    /// others are compensated, `½ w² / ([A⁻¹]_jj [G⁻¹]_ii)`.
    pub fn obs_score(&self, w: f64, i: usize, j: usize) -> f64 {
        0.5 * w * w / (self.a_inv[(j, j)] * self.g_inv[(i, i)])
    }

    /// The independent OBS update for removing the set `remove` (row-major `d_out × (d_in + 1)`
    /// flags) from `w` (same layout, bias as the last column): `δW̄ = −G⁻¹ C A⁻¹` with
    /// `C_ij = w_ij / ([A⁻¹]_jj [G⁻¹]_ii)` on the removed entries, which are then set to zero.
    pub fn obs_update(&self, w: &mut [f64], remove: &[bool]) {
        let (rows, cols) = (self.g_inv.nrows(), self.a_inv.nrows());
        let c = Mat::from_fn(rows, cols, |i, j| {
            if remove[i * cols + j] {
                w[i * cols + j] / (self.a_inv[(j, j)] * self.g_inv[(i, i)])
            } else {
                0.0
            }
        });
        let delta = &self.g_inv * &c * &self.a_inv;
        for i in 0..rows {
            for j in 0..cols {
                let k = i * cols + j;
                w[k] = if remove[k] { 0.0 } else { w[k] - delta[(i, j)] };
            }
        }
    }
}

impl Inverses {
    /// The joint OBS update per row: for the weights `S` removed from row `i`, the exact OBS
    /// update of removing `S` alone under `H = A ⊗ G`,
    /// `δW̄ = −(G⁻¹ e_i / [G⁻¹]_ii) (A⁻¹[:, S] (A⁻¹[S, S])⁻¹ w_S)ᵀ`, summed over rows (rows
    /// interact only through `G`). With `spread = false` only row `i` changes (the minimiser
    /// with the other rows held fixed). Removed entries end at zero. Same layout as
    /// [`Inverses::obs_update`].
    pub fn obs_update_rows(&self, w: &mut [f64], remove: &[bool], spread: bool) -> Result<()> {
        let cols = self.a_inv.nrows();
        let rows = self.g_inv.nrows();
        let mut r = Mat::<f64>::zeros(rows, cols);
        for (i, (row, flags)) in w.chunks(cols).zip(remove.chunks(cols)).enumerate() {
            let s: Vec<usize> = (0..cols).filter(|&j| flags[j]).collect();
            if s.is_empty() {
                continue;
            }
            let ws = Mat::from_fn(s.len(), 1, |a, _| row[s[a]]);
            let coef =
                sub_llt(&self.a_inv, &s, "A⁻¹ restricted to a row's removed set")?.solve(&ws);
            for j in 0..cols {
                r[(i, j)] = s
                    .iter()
                    .enumerate()
                    .map(|(a, &q)| self.a_inv[(j, q)] * coef[(a, 0)])
                    .sum();
            }
        }
        let delta = if spread {
            for i in 0..rows {
                let d = self.g_inv[(i, i)];
                for j in 0..cols {
                    r[(i, j)] /= d;
                }
            }
            &self.g_inv * &r
        } else {
            r
        };
        for (k, v) in w.iter_mut().enumerate() {
            *v = if remove[k] {
                0.0
            } else {
                *v - delta[(k / cols, k % cols)]
            };
        }
        Ok(())
    }
}

/// OBD saliency `½ w² A_jj G_ii` (no compensation), on undamped factors.
pub fn obd_score(f: &LayerFactors, w: f64, i: usize, j: usize) -> f64 {
    0.5 * w * w * f.a[j * f.a_dim + j] * f.g[i * f.g_dim + i]
}
