//! MNIST in the IDX format (`{train,t10k}-{images-idx3,labels-idx1}-ubyte`, optionally `.gz`).
//!
//! Pixels are normalised as M1 (and most MNIST models) expect: `(x/255 − 0.1307)/0.3081`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

pub use super::Dataset;

/// MNIST's mean and standard deviation of `x/255` over the training set.
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

/// Which half of MNIST to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// 60,000 samples: `train-*`.
    Train,
    /// 10,000 samples: `t10k-*`.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Loads one split of MNIST from `dir` (the folder holding the four IDX files; each may also be
/// gzip-compressed with a `.gz` suffix).
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    let p = split.prefix();
    let img_path = dir.join(format!("{p}-images-idx3-ubyte"));
    let lbl_path = dir.join(format!("{p}-labels-idx1-ubyte"));
    let img = read_maybe_gz(&img_path)?;
    let lbl = read_maybe_gz(&lbl_path)?;
    let (dims, pixels) =
        parse_idx(&img, 3).with_context(|| format!("parsing {}", img_path.display()))?;
    let (ldims, labels) =
        parse_idx(&lbl, 1).with_context(|| format!("parsing {}", lbl_path.display()))?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    ensure!(
        ldims[0] == n,
        "{} has {n} images but {} has {} labels",
        img_path.display(),
        lbl_path.display(),
        ldims[0]
    );
    if let Some(bad) = labels.iter().position(|&l| l > 9) {
        bail!(
            "{}: label {} of sample {bad} is not a digit 0-9",
            lbl_path.display(),
            labels[bad]
        );
    }
    Ok(Dataset {
        images: pixels
            .iter()
            .map(|&x| (x as f32 / 255.0 - MNIST_MEAN) / MNIST_STD)
            .collect(),
        labels: labels.iter().map(|&l| l as super::Label).collect(),
        n,
        shape: [1, h, w],
    })
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    if path.exists() {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    let mut gz = PathBuf::from(path);
    gz.as_mut_os_string().push(".gz");
    if gz.exists() {
        let f = std::fs::File::open(&gz).with_context(|| format!("opening {}", gz.display()))?;
        let mut out = Vec::new();
        // MNIST's largest file is 47 MB; bound the decompressed size well above that.
        std::io::Read::read_to_end(
            &mut std::io::Read::take(flate2::read::GzDecoder::new(f), 1 << 30),
            &mut out,
        )
        .with_context(|| format!("decompressing {}", gz.display()))?;
        return Ok(out);
    }
    bail!(
        "MNIST file {} not found (nor {}); run scripts/fetch-fixtures.sh to fetch MNIST",
        path.display(),
        gz.display()
    )
}

/// Parses an IDX file of unsigned bytes with `ndim` dimensions: returns the dimensions and
/// the data, checking the magic number and that the size matches exactly.
pub fn parse_idx(bytes: &[u8], ndim: usize) -> Result<(Vec<usize>, &[u8])> {
    ensure!(bytes.len() >= 4, "file too short for an IDX header");
    ensure!(
        bytes[0] == 0 && bytes[1] == 0,
        "bad IDX magic number {:02x}{:02x}{:02x}{:02x}",
        bytes[0],
        bytes[1],
        bytes[2],
        bytes[3]
    );
    ensure!(
        bytes[2] == 0x08,
        "IDX element type 0x{:02x} is not unsigned byte (0x08)",
        bytes[2]
    );
    ensure!(
        bytes[3] as usize == ndim,
        "IDX file has {} dimensions, expected {ndim}",
        bytes[3]
    );
    let header = 4 + 4 * ndim;
    ensure!(bytes.len() >= header, "file too short for its IDX header");
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let total = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("IDX dimensions overflow")?;
    ensure!(
        bytes.len() - header == total,
        "IDX dimensions {dims:?} need {total} data bytes but the file has {}",
        bytes.len() - header
    );
    Ok((dims, &bytes[header..]))
}
