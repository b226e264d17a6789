//! Small shared helpers.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. A reader never sees a partial file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        Ok(())
    })
}

/// [`atomic_write`] for writers that want a path: `write` creates the temporary file, which is
/// then synced and renamed over `path`; on any error it is removed and `path` is untouched.
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| -> Result<()> {
        write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("writing {}", path.display()))
}

/// Index of the largest value.
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// `k` largest values as (index, value), descending.
pub fn top_k(xs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]));
    idx.into_iter().take(k).map(|i| (i, xs[i])).collect()
}

/// Softmax of one row.
pub fn softmax(xs: &[f32]) -> Vec<f32> {
    let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = xs.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Parses a candle device: `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`. A device whose
/// feature is not compiled in is an error that says so.
pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    let (kind, ordinal) = match s.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("device {s:?}: {n:?} is not a device number"))?,
        ),
        None => (s, 0),
    };
    match kind {
        "cpu" if ordinal == 0 => Ok(candle_core::Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => candle_core::Device::new_cuda(ordinal)
            .with_context(|| format!("opening CUDA device {ordinal}")),
        "cuda" => anyhow::bail!("device {s:?}: this nap was built without the `cuda` feature (cargo build --release --features cuda)"),
        "metal" if cfg!(feature = "metal") => candle_core::Device::new_metal(ordinal)
            .with_context(|| format!("opening Metal device {ordinal}")),
        "metal" => anyhow::bail!("device {s:?}: this nap was built without the `metal` feature (cargo build --release --features metal)"),
        _ => anyhow::bail!("unknown device {s:?}: use cpu, cuda, cuda:N, metal or metal:N"),
    }
}
