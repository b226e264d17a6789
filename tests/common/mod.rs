//! Helpers shared by the integration tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The folder `NAP_FIXTURES` names (filled by `scripts/fetch-fixtures.sh`), or `None` with a
/// notice when it is not set (CI sets it, so there a missing file is a failure).
pub fn fixtures(test: &str) -> Option<PathBuf> {
    match std::env::var_os("NAP_FIXTURES") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => {
            eprintln!(
                "NOTE: NAP_FIXTURES is not set, skipping {test}; run \
                 `scripts/fetch-fixtures.sh fixtures` and set NAP_FIXTURES=fixtures to run it"
            );
            None
        }
    }
}

/// `dir/rel`, which must exist.
pub fn fixture(dir: &Path, rel: &str) -> PathBuf {
    let p = dir.join(rel);
    assert!(
        p.is_file(),
        "NAP_FIXTURES is set but {} is missing: run scripts/fetch-fixtures.sh",
        p.display()
    );
    p
}

/// Solves `m x = b` by Gaussian elimination with partial pivoting (independent of faer).
pub fn solve(mut m: Vec<f64>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
            .unwrap();
        for k in 0..n {
            m.swap(c * n + k, p * n + k);
        }
        b.swap(c, p);
        for r in c + 1..n {
            let f = m[r * n + c] / m[c * n + c];
            for k in c..n {
                m[r * n + k] -= f * m[c * n + k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        x[r] = (b[r] - (r + 1..n).map(|k| m[r * n + k] * x[k]).sum::<f64>()) / m[r * n + r];
    }
    x
}
