//! Datasets and input images.
//!
//! * [`mnist`]: the IDX files of MNIST (fetched by `scripts/fetch-fixtures.sh`).
//! * [`digits`]: the 8×8 UCI digits (1797 samples), embedded in the binary.
//! * [`image`]: PNG/JPEG files preprocessed as the imported models expect.
//! * [`user`]: the user's own data: a folder of images or a tensor file.

pub mod digits;
pub mod image;
pub mod mnist;
pub mod user;

pub use digits::load_digits;
pub use mnist::{load_mnist, Split};

/// A class label.
pub type Label = u32;

/// A labelled image dataset held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `n * C * H * W` values, sample after sample, already normalised for the model.
    pub images: Vec<f32>,
    pub labels: Vec<Label>,
    pub n: usize,
    /// `[C, H, W]` of one sample.
    pub shape: [usize; 3],
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Values per sample (`C * H * W`).
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The values of sample `i`. Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[f32] {
        let s = self.sample_len();
        &self.images[i * s..(i + 1) * s]
    }
    /// Number of classes: one more than the largest label (0 for an empty set).
    pub fn num_classes(&self) -> usize {
        self.labels
            .iter()
            .map(|&l| l as usize + 1)
            .max()
            .unwrap_or(0)
    }
    /// A new dataset made of the given samples, in the given order. Panics on an index out of
    /// range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let s = self.sample_len();
        let mut images = Vec::with_capacity(indices.len() * s);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            n: indices.len(),
            shape: self.shape,
        }
    }
    /// The first `k` samples (all of them if `k >= n`).
    pub fn take(&self, k: usize) -> Dataset {
        let idx: Vec<usize> = (0..k.min(self.n)).collect();
        self.subset(&idx)
    }
    /// Splits into `(train, test)` after a shuffle determined by `seed` alone (the same on
    /// every platform and version). `test_fraction` is clamped to `[0, 1]`; the test set gets
    /// `round(n * test_fraction)` samples. Not stratified.
    pub fn split(&self, test_fraction: f32, seed: u64) -> (Dataset, Dataset) {
        let f = if test_fraction.is_nan() {
            0.0
        } else {
            test_fraction.clamp(0.0, 1.0)
        };
        let n_test = ((self.n as f64) * f as f64).round() as usize;
        let perm = permutation(self.n, seed);
        let (test, train) = perm.split_at(n_test.min(self.n));
        (self.subset(train), self.subset(test))
    }
}

impl Dataset {
    /// Splits into `(train, validation, confirmation)` after the shuffle of [`Dataset::split`]:
    /// the first `round(n · val)` shuffled examples validate, the next `round(n · (val +
    /// confirm)) − round(n · val)` confirm, the rest train. The validation examples are exactly
    /// those `split(val, seed)` holds out, so models trained with either hold-out never saw
    /// them.
    pub fn split3(&self, val: f32, confirm: f32, seed: u64) -> (Dataset, Dataset, Dataset) {
        let clamp = |f: f32| {
            if f.is_nan() {
                0.0
            } else {
                f.clamp(0.0, 1.0) as f64
            }
        };
        let n_val = ((self.n as f64) * clamp(val)).round() as usize;
        let n_held =
            (((self.n as f64) * clamp(val + confirm)).round() as usize).clamp(n_val, self.n);
        let perm = permutation(self.n, seed);
        (
            self.subset(&perm[n_held..]),
            self.subset(&perm[..n_val.min(self.n)]),
            self.subset(&perm[n_val.min(self.n)..n_held]),
        )
    }
}

/// A permutation of `0..n` by Fisher–Yates driven by SplitMix64 (stable by construction).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Multiply-shift reduction to [0, i]; the bias is below 2^-32 for any realistic n.
        let j = ((next() as u128 * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
    p
}
