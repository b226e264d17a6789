//! Factor algebra and OBS/OBD against independent oracles (nap-algorithm.md §5).

use nap::curvature::{damped, obd_score, spd_inverse, Inverses};
use nap::kfac::LayerFactors;
use rand::{Rng, SeedableRng};

mod common;
use common::solve;

fn rng(s: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(s)
}

/// `X Xᵀ · scale` for a random `dim × n` matrix X (positive definite when n ≥ dim).
fn gram(dim: usize, n: usize, scale: f64, r: &mut impl Rng) -> Vec<f64> {
    let x: Vec<f64> = (0..dim * n).map(|_| r.gen_range(-1.0..1.0)).collect();
    let mut m = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            m[i * dim + j] = (0..n).map(|k| x[i * n + k] * x[j * n + k]).sum::<f64>() * scale;
        }
    }
    m
}

fn factors(a: Vec<f64>, a_dim: usize, g: Vec<f64>, g_dim: usize) -> LayerFactors {
    LayerFactors {
        node: 0,
        a_dim,
        g_dim,
        a,
        g,
        positions: 1,
        examples: 1,
    }
}

/// The full `(dout·din1)²` Fisher `A ⊗ G` over weights indexed `q = i * din1 + j`:
/// `F[(i,j),(i2,j2)] = G[i,i2] A[j,j2]`.
fn kronecker(a: &[f64], din1: usize, g: &[f64], dout: usize) -> Vec<f64> {
    let n = dout * din1;
    (0..n * n)
        .map(|k| {
            let (p, q) = (k / n, k % n);
            g[(p / din1) * dout + q / din1] * a[(p % din1) * din1 + q % din1]
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

#[test]
fn damping_is_relative_and_handles_dead_units() {
    let mut r = rng(1);
    let mut a = gram(4, 8, 0.5, &mut r);
    let mean = (0..4).map(|i| a[i * 5]).sum::<f64>() / 4.0;
    let d = damped(&a, 4, 1e-2);
    for i in 0..4 {
        close(d[(i, i)], a[i * 5] + 1e-2 * mean, 1e-12, "damped diagonal");
    }
    // A dead input (constant-zero pixel): its row and column are zero.
    for k in 0..4 {
        a[2 * 4 + k] = 0.0;
        a[k * 4 + 2] = 0.0;
    }
    let inv = spd_inverse(&damped(&a, 4, 1e-2)).unwrap();
    assert!((0..4).all(|i| (0..4).all(|j| inv[(i, j)].is_finite())));
    // An all-zero factor (a layer that saw nothing) becomes eps · I.
    let z = spd_inverse(&damped(&[0.0; 9], 3, 1e-2)).unwrap();
    close(z[(1, 1)], 100.0, 1e-12, "inverse of eps I");
    // The inverse is one.
    let dm = damped(&a, 4, 1e-2);
    let prod = &dm * &inv;
    for i in 0..4 {
        for j in 0..4 {
            close(prod[(i, j)], if i == j { 1.0 } else { 0.0 }, 1e-9, "A A⁻¹");
        }
    }
}

/// With F = A ⊗ G small enough to invert whole: removing one weight, the K-FAC OBS score and
/// update equal brute-force OBS on the full matrix (ΔL = w²/(2[F⁻¹]_qq), δw = −w F⁻¹e_q/[F⁻¹]_qq).
#[test]
fn obs_equals_brute_force_on_the_full_kronecker_fisher() {
    let mut r = rng(2);
    let (din1, dout) = (4usize, 3usize);
    let a = gram(din1, 10, 0.3, &mut r);
    let g = gram(dout, 10, 0.2, &mut r);
    let f = factors(a.clone(), din1, g.clone(), dout);
    let inv = Inverses::new(&f, 0.0).unwrap();
    let w: Vec<f64> = (0..dout * din1).map(|_| r.gen_range(-1.0..1.0)).collect();
    let n = dout * din1;
    let big = kronecker(&a, din1, &g, dout);
    for q in [0usize, 5, 11] {
        let (i, j) = (q / din1, q % din1);
        let mut e = vec![0.0; n];
        e[q] = 1.0;
        let finv_q = solve(big.clone(), e); // F⁻¹ e_q
        let score = w[q] * w[q] / (2.0 * finv_q[q]);
        close(inv.obs_score(w[q], i, j), score, 1e-8, "OBS score");
        let mut upd = w.clone();
        let mut remove = vec![false; n];
        remove[q] = true;
        inv.obs_update(&mut upd, &remove);
        for k in 0..n {
            let want = if k == q {
                0.0
            } else {
                w[k] - w[q] * finv_q[k] / finv_q[q]
            };
            close(upd[k], want, 1e-8, "OBS update");
        }
        // The update realises the predicted loss increase: ½ δwᵀ F δw = score.
        let dw: Vec<f64> = (0..n).map(|k| upd[k] - w[k]).collect();
        let quad: f64 = (0..n)
            .map(|p| (0..n).map(|k| dw[p] * big[p * n + k] * dw[k]).sum::<f64>())
            .sum::<f64>()
            * 0.5;
        close(quad, score, 1e-8, "½ δwᵀFδw");
    }
}

/// With G := I and A := 2XXᵀ/N the criterion is OBC / L-OBS row by row: the score is the minimum of
/// the layer-wise quadratic under the constraint w_q + δw_q = 0, found here through its KKT system.
#[test]
fn g_identity_gives_the_obc_row_wise_formulas() {
    let mut r = rng(3);
    let (din1, dout, n) = (5usize, 2usize, 12usize);
    let a = gram(din1, n, 2.0 / n as f64, &mut r);
    let eye: Vec<f64> = (0..dout * dout)
        .map(|k| if k / dout == k % dout { 1.0 } else { 0.0 })
        .collect();
    let f = factors(a.clone(), din1, eye, dout);
    let inv = Inverses::new(&f, 0.0).unwrap();
    let w: Vec<f64> = (0..dout * din1).map(|_| r.gen_range(-1.0..1.0)).collect();
    for (i, j) in [(0usize, 1usize), (1, 4)] {
        // KKT: [A e_j; e_jᵀ 0][δw; λ] = [0; −w_ij]
        let m = din1 + 1;
        let mut kkt = vec![0.0; m * m];
        for p in 0..din1 {
            for q in 0..din1 {
                kkt[p * m + q] = a[p * din1 + q];
            }
        }
        kkt[j * m + din1] = 1.0;
        kkt[din1 * m + j] = 1.0;
        let mut rhs = vec![0.0; m];
        rhs[din1] = -w[i * din1 + j];
        let sol = solve(kkt, rhs);
        let dw = &sol[..din1];
        let min: f64 = 0.5
            * (0..din1)
                .map(|p| {
                    (0..din1)
                        .map(|q| dw[p] * a[p * din1 + q] * dw[q])
                        .sum::<f64>()
                })
                .sum::<f64>();
        close(inv.obs_score(w[i * din1 + j], i, j), min, 1e-8, "OBC score");
        let mut upd = w.clone();
        let mut remove = vec![false; dout * din1];
        remove[i * din1 + j] = true;
        inv.obs_update(&mut upd, &remove);
        for q in 0..din1 {
            close(
                upd[i * din1 + q],
                w[i * din1 + q] + dw[q],
                1e-8,
                "OBC update",
            );
        }
        for q in 0..din1 {
            let other = 1 - i;
            assert_eq!(
                upd[other * din1 + q],
                w[other * din1 + q],
                "other rows untouched when G = I"
            );
        }
    }
}

#[test]
fn obd_uses_the_fisher_diagonal_and_rescales_with_the_loss() {
    let mut r = rng(4);
    let f = factors(gram(3, 6, 1.0, &mut r), 3, gram(2, 6, 1.0, &mut r), 2);
    close(
        obd_score(&f, 0.5, 1, 2),
        0.5 * 0.25 * f.a[8] * f.g[3],
        1e-12,
        "OBD",
    );
    // Scaling the loss by c scales G (and so F) by c: every OBS score scales by c.
    let c = 7.0;
    let g2: Vec<f64> = f.g.iter().map(|v| v * c).collect();
    let f2 = factors(f.a.clone(), 3, g2, 2);
    let (i1, i2) = (
        Inverses::new(&f, 0.0).unwrap(),
        Inverses::new(&f2, 0.0).unwrap(),
    );
    close(
        i2.obs_score(0.3, 1, 0),
        c * i1.obs_score(0.3, 1, 0),
        1e-9,
        "loss rescaling",
    );
}

/// The row-joint update equals brute-force OBS on the full Kronecker Fisher for a set removed
/// from one row: `δw = −F⁻¹[:, S] (F⁻¹[S, S])⁻¹ w_S`, also realising ½ w_Sᵀ(F⁻¹_SS)⁻¹w_S; the
/// row-local variant changes only that row and is the minimiser with the other rows fixed.
#[test]
fn row_update_is_joint_obs_for_one_row() {
    let mut r = rng(9);
    let (din1, dout) = (5usize, 3usize);
    let a = gram(din1, 12, 0.3, &mut r);
    let g = gram(dout, 12, 0.2, &mut r);
    let inv = Inverses::new(&factors(a.clone(), din1, g.clone(), dout), 0.0).unwrap();
    let n = dout * din1;
    let big = kronecker(&a, din1, &g, dout);
    let w: Vec<f64> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
    let set = [din1, din1 + 2, din1 + 3]; // row 1, columns 0, 2, 3
    let cols_of_finv: Vec<Vec<f64>> = set
        .iter()
        .map(|&q| {
            let mut e = vec![0.0; n];
            e[q] = 1.0;
            solve(big.clone(), e)
        })
        .collect();
    let fss: Vec<f64> = (0..set.len() * set.len())
        .map(|k| cols_of_finv[k % set.len()][set[k / set.len()]])
        .collect();
    let coef = solve(fss, set.iter().map(|&q| w[q]).collect());
    let mut remove = vec![false; n];
    set.iter().for_each(|&q| remove[q] = true);
    let mut upd = w.clone();
    inv.obs_update_rows(&mut upd, &remove, true).unwrap();
    for k in 0..n {
        let d: f64 = (0..set.len()).map(|s| cols_of_finv[s][k] * coef[s]).sum();
        let want = if remove[k] { 0.0 } else { w[k] - d };
        close(upd[k], want, 1e-8, "row-joint OBS update");
    }
    // Row-local: only row 1 changes, and it solves min ½δᵀ A δ s.t. δ_S = −w_S in that row.
    let mut local = w.clone();
    inv.obs_update_rows(&mut local, &remove, false).unwrap();
    for k in 0..n {
        if k / din1 != 1 {
            assert_eq!(local[k], w[k]);
        }
    }
    let cols = [0usize, 2, 3];
    let mut kkt = vec![0.0; (din1 + 3) * (din1 + 3)];
    let m = din1 + 3;
    for i in 0..din1 {
        for j in 0..din1 {
            kkt[i * m + j] = a[i * din1 + j];
        }
    }
    for (c, &j) in cols.iter().enumerate() {
        kkt[j * m + din1 + c] = 1.0;
        kkt[(din1 + c) * m + j] = 1.0;
    }
    let mut rhs = vec![0.0; m];
    for (c, &j) in cols.iter().enumerate() {
        rhs[din1 + c] = -w[din1 + j];
    }
    let sol = solve(kkt, rhs);
    for j in 0..din1 {
        close(
            local[din1 + j],
            w[din1 + j] + sol[j],
            1e-8,
            "row-local update",
        );
    }
}
