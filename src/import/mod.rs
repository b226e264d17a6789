//! Importing trained networks: PyTorch checkpoints (`.pth`/`.pt`, zip and legacy formats,
//! read without Python) and safetensors files.

pub mod npy;
pub mod onnx;
pub mod pickle;
pub mod pth;
pub mod safetensors;

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub use pth::{
    read_pth, read_pth_all, read_pth_all_bytes, read_pth_bytes, DType, PthTensor, TensorData,
};
pub use safetensors::{read_safetensors, write_safetensors};

/// A named f32 tensor, contiguous in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// Number of elements (the product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

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
            "{}: unrecognised checkpoint format (expected a PyTorch .pth/.pt or a .safetensors file)",
            path.display()
        ),
    }
}

/// Reads the float tensors of a checkpoint of any supported format.
pub fn read_checkpoint(path: &Path) -> Result<Vec<NamedTensor>> {
    match detect_format(path)? {
        CheckpointFormat::PthZip | CheckpointFormat::PthLegacy => read_pth(path),
        CheckpointFormat::Safetensors => read_safetensors(path),
    }
}
