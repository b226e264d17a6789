//! The 8×8 handwritten digits of UCI "optdigits" (test part, 1797 samples, 10 classes), as
//! shipped by scikit-learn (`sklearn/datasets/data/digits.csv.gz`), embedded in the binary.
//! See `data/README.md` for provenance and licences.

use std::io::Read;

pub use super::Dataset;

/// The embedded gzip-compressed CSV: 1797 lines of 64 pixel values (0..16) and a label.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
/// Number of samples.
pub const DIGITS_N: usize = 1797;

/// Loads the embedded digits: shape `[1, 8, 8]`, pixels scaled to `x/16` in `[0, 1]`.
pub fn load_digits() -> Dataset {
    // The data is part of the binary and checked by tests: a failure here is a build defect.
    parse_digits(DIGITS_CSV_GZ).expect("embedded digits data is corrupt")
}

fn parse_digits(gz: &[u8]) -> anyhow::Result<Dataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text)?;
    let mut images = Vec::with_capacity(DIGITS_N * 64);
    let mut labels = Vec::with_capacity(DIGITS_N);
    for (ln, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let vals: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("line {}: {e}", ln + 1))?;
        anyhow::ensure!(vals.len() == 65, "line {}: {} fields", ln + 1, vals.len());
        anyhow::ensure!(
            vals[..64].iter().all(|&v| (0.0..=16.0).contains(&v)),
            "line {}: pixel out of range",
            ln + 1
        );
        let label = vals[64];
        anyhow::ensure!(
            (0.0..=9.0).contains(&label) && label.fract() == 0.0,
            "line {}: bad label {label}",
            ln + 1
        );
        images.extend(vals[..64].iter().map(|v| v / 16.0));
        labels.push(label as super::Label);
    }
    let n = labels.len();
    anyhow::ensure!(n == DIGITS_N, "{n} samples, expected {DIGITS_N}");
    Ok(Dataset {
        images,
        labels,
        n,
        shape: [1, 8, 8],
    })
}
