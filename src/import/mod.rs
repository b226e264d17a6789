//! Model sources. [`load_model`] is the one entry point: an ONNX file (graph and weights), a
//! checkpoint nap wrote (its graph is in the file), or a PyTorch (`.pth`/`.pt`, zip and legacy
//! formats, read without Python) or safetensors checkpoint of a built-in architecture.

pub mod npy;
pub mod onnx;
pub mod pickle;
pub mod pth;
pub mod safetensors;

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ir::{HostModel, HostTensor};

pub use pth::{
    read_pth, read_pth_all, read_pth_all_bytes, read_pth_bytes, DType, PthTensor, TensorData,
};
pub use safetensors::{
    read_safetensors, read_safetensors_with_metadata, write_safetensors, write_safetensors_with,
};

/// The kind of checkpoint file, as recognised by [`detect_format`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    PthZip,
    PthLegacy,
    Safetensors,
}

/// Recognises a checkpoint by its first bytes, falling back to the file extension.
pub fn detect_format(path: &Path) -> Result<CheckpointFormat> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(16)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    if head.starts_with(b"PK\x03\x04") {
        return Ok(CheckpointFormat::PthZip);
    }
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(CheckpointFormat::PthLegacy);
    }
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(CheckpointFormat::Safetensors);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "safetensors" => Ok(CheckpointFormat::Safetensors),
        "pth" | "pt" | "bin" | "ckpt" => Ok(CheckpointFormat::PthZip),
        _ => bail!(
            "{}: unrecognised model format (expected .onnx, a PyTorch .pth/.pt or a .safetensors file)",
            path.display()
        ),
    }
}

/// Whether `path` names an ONNX model (by its extension: ONNX files have no magic bytes).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads a model for the pruner from any source:
/// - `model.onnx`: graph and weights from the file (`arch` must be `None`; `onnx` gives the
///   input shape of graphs with dynamic dimensions);
/// - a safetensors checkpoint written by nap (`nap train`, `nap prune`): its model card holds
///   the graph, so `arch` is not needed (if given, it must match);
/// - any other `.pth`/`.pt`/`.safetensors` checkpoint: the tensors of built-in architecture
///   `arch` (also one with fewer channels, as channel pruning leaves it).
pub fn load_model(path: &Path, arch: Option<&str>, onnx: &onnx::OnnxOptions) -> Result<HostModel> {
    if is_onnx(path) {
        if let Some(a) = arch {
            bail!(
                "{}: an ONNX file carries its own graph; drop --arch {a}",
                path.display()
            );
        }
        return onnx::read_onnx(path, onnx);
    }
    if onnx.input_shape.is_some() {
        bail!("--input-shape applies to ONNX models only");
    }
    let (tensors, card) = match detect_format(path)? {
        CheckpointFormat::Safetensors => {
            let (t, mut meta) = read_safetensors_with_metadata(path)?;
            (t, meta.remove(crate::ir::MODEL_CARD_KEY))
        }
        _ => (
            read_pth(path).with_context(|| format!("reading {}", path.display()))?,
            None,
        ),
    };
    let file = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match (card, arch) {
        (Some(card), arch) => {
            let m = crate::ir::from_model_card(&card, tensors)
                .with_context(|| format!("loading {}", path.display()))?;
            if let Some(a) = arch.filter(|&a| a != m.meta.arch) {
                bail!(
                    "{} holds a model of {} (its graph is in the file), not --arch {a}",
                    path.display(),
                    m.meta.arch
                );
            }
            Ok(m)
        }
        (None, Some(arch)) => {
            // A channel-pruned checkpoint has fewer channels than the architecture: if the
            // exact mapping fails, try it as one, and report the exact mapping's error if that
            // fails too.
            let mut m = match crate::archs::from_checkpoint(arch, tensors.clone()) {
                Ok(m) => m,
                Err(e) => crate::archs::from_slimmed_checkpoint(arch, tensors)
                    .map_err(|_| e)
                    .with_context(|| format!("mapping {} onto {arch}", path.display()))?,
            };
            m.meta.source = file;
            Ok(m)
        }
        (None, None) => bail!(
            "{}: this checkpoint holds weights only; name its built-in architecture with --arch \
             (`nap train --help` lists them), or give the model as an .onnx file",
            path.display()
        ),
    }
}

/// Reads the float tensors of a checkpoint of any supported format.
pub fn read_checkpoint(path: &Path) -> Result<Vec<HostTensor>> {
    match detect_format(path)? {
        CheckpointFormat::PthZip | CheckpointFormat::PthLegacy => read_pth(path),
        CheckpointFormat::Safetensors => read_safetensors(path),
    }
}
