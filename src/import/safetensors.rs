//! safetensors reading and writing (the `safetensors` crate, through candle for reading).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::safetensors::{Load, SliceSafetensors};
use candle_core::{DType, Device, Tensor};

use crate::ir::{shape_u32, HostTensor};

/// Reads every floating-point tensor (f32, f16, bf16, f64 → f32) of a `.safetensors` file, in
/// the order of their data in the file. Integer and bool tensors are skipped.
pub fn read_safetensors(path: &Path) -> Result<Vec<HostTensor>> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// [`read_safetensors`], and the file's `__metadata__` string map (empty if it has none).
pub fn read_safetensors_with_metadata(
    path: &Path,
) -> Result<(Vec<HostTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let tensors = read_safetensors_bytes(&bytes)
        .with_context(|| format!("reading safetensors {}", path.display()))?;
    let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("reading safetensors {}: {e}", path.display()))?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// Like [`read_safetensors`], from bytes in memory.
pub fn read_safetensors_bytes(bytes: &[u8]) -> Result<Vec<HostTensor>> {
    let st = SliceSafetensors::new(bytes).map_err(|e| anyhow!("invalid safetensors file: {e}"))?;
    let mut views = st.tensors();
    // The header is a JSON object (unordered); the data section keeps the writer's order.
    views.sort_by_key(|(name, v)| (v.data().as_ptr() as usize, name.clone()));
    let mut out = Vec::with_capacity(views.len());
    for (name, view) in views {
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| anyhow!("tensor {name:?}: {e}"))?;
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            continue;
        }
        let shape = shape_u32(t.dims(), &name)?;
        let data = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| anyhow!("tensor {name:?}: {e}"))?;
        out.push(HostTensor { name, shape, data });
    }
    Ok(out)
}

/// Writes f32 tensors to a `.safetensors` file atomically (a temporary file in the same
/// folder, then a rename). Names must be unique and shapes must match the data lengths.
pub fn write_safetensors(path: &Path, tensors: &[HostTensor]) -> Result<()> {
    write_safetensors_with(path, tensors, None)
}

/// [`write_safetensors`] with one `__metadata__` entry.
pub fn write_safetensors_with(
    path: &Path,
    tensors: &[HostTensor],
    metadata: Option<(&str, &str)>,
) -> Result<()> {
    let mut map: HashMap<&str, Tensor> = HashMap::with_capacity(tensors.len());
    for t in tensors {
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d as usize))
            .ok_or_else(|| anyhow!("tensor {:?}: shape {:?} overflows", t.name, t.shape))?;
        ensure!(
            numel == t.data.len(),
            "tensor {:?}: shape {:?} has {numel} elements but data has {}",
            t.name,
            t.shape,
            t.data.len()
        );
        let tensor = Tensor::from_slice(&t.data, t.dims(), &Device::Cpu)
            .map_err(|e| anyhow!("tensor {:?}: {e}", t.name))?;
        if map.insert(t.name.as_str(), tensor).is_some() {
            bail!("tensor name {:?} appears twice", t.name);
        }
    }
    let info = metadata.map(|(k, v)| HashMap::from([(k.to_string(), v.to_string())]));
    let bytes = ::safetensors::serialize(map, info).map_err(|e| anyhow!("{e}"))?;
    crate::util::atomic_write(path, &bytes)
}
