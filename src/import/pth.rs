//! PyTorch checkpoint (`torch.save`) reader, in pure Rust.
//!
//! Two container formats exist:
//!
//! * **zip** (torch ≥ 1.6 default): `<top>/data.pkl` is the pickled object, whose tensors refer
//!   through persistent ids `('storage', StorageType, key, location, numel)` to raw
//!   little-endian storages `<top>/data/<key>`; `<top>/byteorder` may say `big`.
//! * **legacy** (`_use_new_zipfile_serialization=False`, torch < 1.6): a stream of pickles:
//!   the magic number `0x1950a86a20f9469cfc6c`, the protocol version `1001`, a sys-info dict,
//!   the object pickle (same persistent ids, plus an optional view-metadata field), a pickle of
//!   the list of storage keys, then for each key an `i64` element count followed by the raw
//!   storage bytes.
//!
//! Tensors are rebuilt from `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! ...)` (and `_rebuild_tensor`, `_rebuild_parameter`, `_rebuild_parameter_with_state`,
//! `torch._tensor._rebuild_from_type_v2`). Strides and storage offsets are honoured; the output
//! is always contiguous (row-major). Floating-point storages (f32, f16, bf16, f64) become f32,
//! integer and bool storages become i64.
//!
//! The top-level object may be a state dict, a dict holding one under `state_dict`,
//! `model_state_dict` or `model`, or a whole pickled `nn.Module` (its `_parameters`, persistent
//! `_buffers` and `_modules` are walked in `state_dict()` order).
//!
//! Input is untrusted: every size is checked (with checked arithmetic) against the bytes that
//! are really there, and the total number of elements materialised is bounded by a multiple of
//! the file size, so that stride-0 or aliasing tricks cannot blow up memory.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::pickle::{self, Value};
use crate::ir::{shape_u32, HostTensor};

/// The element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Maps a storage class name (`FloatStorage`, ...) to its element type.
    pub fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }
}

/// The values of a tensor: floats as f32, integers and bools as i64.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor read from a checkpoint, with its original storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: TensorData,
}

/// Reads every float tensor of a `.pth`/`.pt` checkpoint (zip or legacy format), in file
/// order. Integer tensors (e.g. BatchNorm's `num_batches_tracked`) are skipped; use
/// [`read_pth_all`] to get them too.
pub fn read_pth(path: &Path) -> Result<Vec<HostTensor>> {
    float_only(read_pth_all(path)?)
}

/// Like [`read_pth`], from bytes in memory.
pub fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<HostTensor>> {
    float_only(read_pth_all_bytes(bytes)?)
}

fn float_only(ts: Vec<PthTensor>) -> Result<Vec<HostTensor>> {
    ts.into_iter()
        .filter_map(|t| match t.data {
            TensorData::F32(data) => Some(shape_u32(&t.shape, &t.name).map(|shape| HostTensor {
                name: t.name,
                shape,
                data,
            })),
            TensorData::I64(_) => None,
        })
        .collect()
}

/// Reads every tensor (float and integer) of a checkpoint, in file order.
pub fn read_pth_all(path: &Path) -> Result<Vec<PthTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read_pth_all_bytes(&bytes).with_context(|| format!("reading checkpoint {}", path.display()))
}

/// Like [`read_pth_all`], from bytes in memory.
pub fn read_pth_all_bytes(bytes: &[u8]) -> Result<Vec<PthTensor>> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(std::io::Cursor::new(bytes), bytes.len())
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        bail!("this is a tar-format PyTorch checkpoint (torch < 0.4), which is not supported")
    } else {
        bail!("not a PyTorch checkpoint: neither a zip archive nor a pickle stream")
    }
}

/// Where a tensor's data lives: a storage key, its dtype and element count, and an extra
/// element offset (legacy storage views).
#[derive(Clone, Debug)]
struct StorageRef {
    key: String,
    dtype: DType,
    numel: usize,
    view_offset: usize,
}

#[derive(Clone, Debug)]
struct TensorSpec {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Raw bytes of one storage plus its byte order.
struct Storage {
    bytes: Arc<Vec<u8>>,
    big_endian: bool,
}

/// Output budget: elements materialised, bounded by a multiple of the input size.
struct Budget {
    left: usize,
}

impl Budget {
    fn for_file(len: usize) -> Self {
        Budget {
            left: len.saturating_mul(8).saturating_add(16 << 20),
        }
    }
    fn take(&mut self, n: usize, name: &str) -> Result<()> {
        ensure!(
            n <= self.left,
            "tensor {name:?} would materialise {n} elements, more than this file can hold \
             (stride-0 or aliased views beyond the budget of {} elements)",
            self.left
        );
        self.left -= n;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Zip format

fn read_zip<R: Read + Seek>(reader: R, file_len: usize) -> Result<Vec<PthTensor>> {
    let mut zip = zip::ZipArchive::new(reader).context("opening zip archive")?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.matches('/').count())
        .ok_or_else(|| anyhow!("zip archive has no data.pkl: not a PyTorch checkpoint"))?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_owned();

    let pkl = read_entry(&mut zip, &pkl_name, file_len.saturating_mul(1100), file_len)?;
    let big_endian = match zip.by_name(&format!("{prefix}byteorder")) {
        Ok(mut e) => {
            let mut s = String::new();
            e.by_ref()
                .take(16)
                .read_to_string(&mut s)
                .context("reading byteorder")?;
            match s.trim() {
                "little" => false,
                "big" => true,
                other => bail!("unknown byteorder {other:?}"),
            }
        }
        Err(_) => false,
    };
    let root = pickle::loads(&pkl).with_context(|| format!("parsing {pkl_name}"))?;
    let entries = find_tensors(&root)?;
    let mut storages: HashMap<String, Storage> = HashMap::new();
    let mut budget = Budget::for_file(file_len);
    let mut out = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        let spec = tensor_spec(v).with_context(|| format!("tensor {name:?}"))?;
        let key = &spec.storage.key;
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            let need = spec
                .storage
                .numel
                .checked_add(spec.storage.view_offset)
                .and_then(|n| n.checked_mul(spec.storage.dtype.size()))
                .ok_or_else(|| anyhow!("tensor {name:?}: storage size overflows"))?;
            let bytes = read_entry(&mut zip, &entry, need, file_len)
                .with_context(|| format!("tensor {name:?}: reading its storage"))?;
            ensure!(
                bytes.len() >= need,
                "tensor {name:?}: storage {entry} has {} bytes, its header says {need}",
                bytes.len()
            );
            storages.insert(
                key.clone(),
                Storage {
                    bytes: Arc::new(bytes),
                    big_endian,
                },
            );
        }
        let st = &storages[key];
        out.push(materialise(&name, &spec, st, &mut budget)?);
    }
    Ok(out)
}

/// Reads at most `limit` bytes of a zip entry.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: usize,
    file_len: usize,
) -> Result<Vec<u8>> {
    let entry = zip
        .by_name(name)
        .with_context(|| format!("zip entry {name} is missing"))?;
    // Pre-allocate no more than the archive could hold stored; a deflated entry grows the
    // buffer only as real data arrives.
    let declared = usize::try_from(entry.size()).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(declared.min(limit).min(file_len));
    entry
        .take(limit as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading zip entry {name}"))?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Legacy format

/// `0x1950a86a20f9469cfc6c` as pickled by LONG1 (little-endian two's complement).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_legacy(bytes: &[u8]) -> Result<Vec<PthTensor>> {
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<Value> {
        let p = pickle::parse(&bytes[pos..])
            .with_context(|| format!("parsing the {what} pickle at byte {pos}"))?;
        pos += p.consumed;
        Ok(p.value)
    };
    let magic = next("magic number")?;
    ensure!(
        magic == Value::BigInt(LEGACY_MAGIC.to_vec()),
        "not a PyTorch checkpoint: the first pickle is {magic}, not the magic number"
    );
    let proto = next("protocol version")?;
    ensure!(
        proto == Value::Int(1001),
        "unsupported legacy checkpoint protocol version {proto} (expected 1001)"
    );
    let sys_info = next("sys info")?;
    let big_endian = match sys_info.get("little_endian") {
        Some(Value::Bool(le)) => !le,
        _ => false,
    };
    let root = next("state")?;
    let keys = next("storage keys")?;
    let keys: Vec<String> = keys
        .as_seq()
        .ok_or_else(|| anyhow!("storage key list is a {}, not a list", keys.kind()))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("storage key is a {}, not a str", k.kind()))
        })
        .collect::<Result<_>>()?;

    let entries = find_tensors(&root)?;
    let specs: Vec<(String, TensorSpec)> = entries
        .into_iter()
        .map(|(name, v)| {
            let s = tensor_spec(v).with_context(|| format!("tensor {name:?}"))?;
            Ok((name, s))
        })
        .collect::<Result<_>>()?;
    let mut dtypes: HashMap<&str, DType> = HashMap::new();
    for (name, s) in &specs {
        if let Some(prev) = dtypes.insert(&s.storage.key, s.storage.dtype) {
            ensure!(
                prev == s.storage.dtype,
                "tensor {name:?}: storage {} is used with two dtypes",
                s.storage.key
            );
        }
    }

    // The raw storages, in the order of the key list.
    let mut storages: HashMap<String, Storage> = HashMap::new();
    for key in &keys {
        let dtype = *dtypes.get(key.as_str()).ok_or_else(|| {
            anyhow!("storage {key} is listed but no tensor uses it: its element size is unknown")
        })?;
        let hdr = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| anyhow!("file truncated in the size of storage {key}"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(hdr);
        let n = if big_endian {
            i64::from_be_bytes(a)
        } else {
            i64::from_le_bytes(a)
        };
        pos += 8;
        let n = usize::try_from(n).map_err(|_| anyhow!("storage {key} has size {n}"))?;
        let len = n
            .checked_mul(dtype.size())
            .filter(|&l| l <= bytes.len() - pos)
            .ok_or_else(|| {
                anyhow!(
                    "storage {key} claims {n} elements of {} bytes but only {} bytes are left",
                    dtype.size(),
                    bytes.len() - pos
                )
            })?;
        storages.insert(
            key.clone(),
            Storage {
                bytes: Arc::new(bytes[pos..pos + len].to_vec()),
                big_endian,
            },
        );
        pos += len;
    }

    let mut budget = Budget::for_file(bytes.len());
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let st = storages.get(&spec.storage.key).ok_or_else(|| {
            anyhow!(
                "tensor {name:?}: storage {} is not in the file",
                spec.storage.key
            )
        })?;
        out.push(materialise(&name, &spec, st, &mut budget)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// From the pickled object to tensor specs

const STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// Finds the (name, tensor value) pairs of the state dict inside `root`, in order.
fn find_tensors(root: &Value) -> Result<Vec<(String, &Value)>> {
    find_tensors_in(root, 0)
}

fn find_tensors_in(root: &Value, level: usize) -> Result<Vec<(String, &Value)>> {
    ensure!(level < 8, "state dict nested too deeply");
    match root {
        Value::Dict(kv) => {
            for key in STATE_DICT_KEYS {
                if let Some(inner) = root.get(key) {
                    if matches!(inner, Value::Dict(_)) || is_module(inner) {
                        return find_tensors_in(inner, level + 1)
                            .with_context(|| format!("in the {key:?} entry"));
                    }
                }
            }
            let mut out = Vec::new();
            for (k, v) in kv {
                if is_tensor(v) {
                    let name = k
                        .as_str()
                        .ok_or_else(|| anyhow!("state dict key is a {}, not a str", k.kind()))?;
                    out.push((name.to_owned(), v));
                }
            }
            if out.is_empty() {
                let keys: Vec<String> = kv.iter().take(20).map(|(k, _)| k.to_string()).collect();
                bail!(
                    "no tensors found in the checkpoint's top-level dict (keys: {})",
                    keys.join(", ")
                );
            }
            Ok(out)
        }
        v if is_module(v) => {
            let mut out = Vec::new();
            collect_module("", v, &mut out, 0)?;
            ensure!(!out.is_empty(), "the pickled module holds no tensors");
            Ok(out)
        }
        other => bail!(
            "the checkpoint holds a {}, not a state dict or a module",
            other.kind()
        ),
    }
}

/// A pickled `nn.Module`: an object whose state has `_parameters`/`_modules`.
fn is_module(v: &Value) -> bool {
    match v {
        Value::Object { state: Some(s), .. } => {
            s.get("_parameters").is_some() || s.get("_modules").is_some()
        }
        _ => false,
    }
}

fn collect_module<'a>(
    prefix: &str,
    m: &'a Value,
    out: &mut Vec<(String, &'a Value)>,
    level: usize,
) -> Result<()> {
    ensure!(level < 64, "module tree nested too deeply");
    let Value::Object { state: Some(s), .. } = m else {
        return Ok(());
    };
    let non_persistent: Vec<&str> = match s.get("_non_persistent_buffers_set") {
        Some(Value::Set(xs)) | Some(Value::List(xs)) => {
            xs.iter().filter_map(|x| x.as_str()).collect()
        }
        Some(Value::Object { args, .. }) => args
            .iter()
            .flat_map(|a| a.as_seq().unwrap_or(&[]))
            .filter_map(|x| x.as_str())
            .collect(),
        _ => Vec::new(),
    };
    for (field, skip_np) in [("_parameters", false), ("_buffers", true)] {
        if let Some(Value::Dict(kv)) = s.get(field) {
            for (k, v) in kv {
                let Some(name) = k.as_str() else { continue };
                if skip_np && non_persistent.contains(&name) {
                    continue;
                }
                if is_tensor(v) {
                    out.push((format!("{prefix}{name}"), v));
                }
            }
        }
    }
    if let Some(Value::Dict(kv)) = s.get("_modules") {
        for (k, v) in kv {
            let Some(name) = k.as_str() else { continue };
            collect_module(&format!("{prefix}{name}."), v, out, level + 1)?;
        }
    }
    Ok(())
}

const TENSOR_BUILDERS: [&str; 5] = [
    "_rebuild_tensor_v2",
    "_rebuild_tensor",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_from_type_v2",
];

fn is_tensor(v: &Value) -> bool {
    match v {
        Value::Object { callable, .. } => match callable.as_ref() {
            Value::Global { module, name } => {
                (module == "torch._utils" || module == "torch._tensor")
                    && TENSOR_BUILDERS.contains(&name.as_str())
            }
            _ => false,
        },
        _ => false,
    }
}

fn tensor_spec(v: &Value) -> Result<TensorSpec> {
    tensor_spec_at(v, 0)
}

fn tensor_spec_at(v: &Value, level: usize) -> Result<TensorSpec> {
    ensure!(level < 8, "tensor wrapped too deeply");
    let Value::Object { callable, args, .. } = v else {
        bail!("expected a tensor, found a {}", v.kind());
    };
    let Value::Global { module, name } = callable.as_ref() else {
        bail!("expected a tensor, found a {}", v.kind());
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            ensure!(
                args.len() >= 4,
                "{name} has {} arguments, expected at least 4",
                args.len()
            );
            let storage = storage_ref(&args[0])?;
            let offset = to_usize(&args[1], "storage offset")?;
            let shape = usize_tuple(&args[2], "size")?;
            let stride = usize_tuple(&args[3], "stride")?;
            ensure!(
                shape.len() == stride.len(),
                "size has {} dimensions but stride has {}",
                shape.len(),
                stride.len()
            );
            Ok(TensorSpec {
                storage,
                offset,
                shape,
                stride,
            })
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            let data = args
                .first()
                .ok_or_else(|| anyhow!("{name} without arguments"))?;
            tensor_spec_at(data, level + 1)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, new_type, args, state): the tensor is func(*args).
            ensure!(
                args.len() >= 3,
                "_rebuild_from_type_v2 with too few arguments"
            );
            let inner_args = args[2]
                .as_seq()
                .ok_or_else(|| anyhow!("_rebuild_from_type_v2 args are a {}", args[2].kind()))?;
            let inner = Value::Object {
                callable: Box::new(args[0].clone()),
                args: inner_args.to_vec(),
                state: None,
            };
            tensor_spec_at(&inner, level + 1)
        }
        _ => bail!("unsupported tensor constructor {module}.{name}"),
    }
}

fn storage_ref(v: &Value) -> Result<StorageRef> {
    let Value::PersId(pid) = v else {
        bail!(
            "tensor storage is a {}, not a persistent-id storage reference",
            v.kind()
        );
    };
    let items = pid
        .as_seq()
        .ok_or_else(|| anyhow!("storage persistent id is a {}, not a tuple", pid.kind()))?;
    ensure!(
        items.len() >= 5,
        "storage persistent id has {} fields, expected 5 or 6",
        items.len()
    );
    ensure!(
        items[0].as_str() == Some("storage"),
        "persistent id of kind {} is not a storage",
        items[0]
    );
    let dtype = match &items[1] {
        Value::Global { module, name } if module == "torch" => DType::from_storage_name(name)
            .ok_or_else(|| anyhow!("unsupported storage type torch.{name}"))?,
        other => bail!("unsupported storage type {}", other.kind()),
    };
    let key = match &items[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => bail!("storage key is a {}", other.kind()),
    };
    ensure!(
        !key.is_empty() && !key.contains(['/', '\\']) && key != "..",
        "invalid storage key {key:?}"
    );
    let mut numel = to_usize(&items[4], "storage size")?;
    let mut view_offset = 0;
    // Legacy storage views: (view_key, offset, view_size).
    if let Some(view) = items.get(5) {
        if let Some(vm) = view.as_seq() {
            ensure!(
                vm.len() == 3,
                "storage view metadata has {} fields",
                vm.len()
            );
            view_offset = to_usize(&vm[1], "storage view offset")?;
            let view_size = to_usize(&vm[2], "storage view size")?;
            ensure!(
                view_offset
                    .checked_add(view_size)
                    .is_some_and(|e| e <= numel),
                "storage view [{view_offset}, +{view_size}) exceeds its storage of {numel}"
            );
            numel = view_size;
        }
    }
    Ok(StorageRef {
        key,
        dtype,
        numel,
        view_offset,
    })
}

fn to_usize(v: &Value, what: &str) -> Result<usize> {
    let i = v
        .as_int()
        .ok_or_else(|| anyhow!("{what} is a {}, not an int", v.kind()))?;
    usize::try_from(i).map_err(|_| anyhow!("{what} is {i}"))
}

fn usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>> {
    let items = v
        .as_seq()
        .ok_or_else(|| anyhow!("{what} is a {}, not a tuple", v.kind()))?;
    ensure!(items.len() <= 64, "{what} has {} dimensions", items.len());
    items.iter().map(|x| to_usize(x, what)).collect()
}

// ---------------------------------------------------------------------------------------------
// Materialisation

fn materialise(
    name: &str,
    spec: &TensorSpec,
    st: &Storage,
    budget: &mut Budget,
) -> Result<PthTensor> {
    let ctx = || format!("tensor {name:?}");
    let dtype = spec.storage.dtype;
    let es = dtype.size();
    let numel = spec
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {:?} overflows", spec.shape))
        .with_context(ctx)?;
    budget.take(numel, name)?;

    // The storage elements this view may address: [base, base + storage numel).
    let base = spec.storage.view_offset;
    let avail = st.bytes.len() / es;
    ensure!(
        base.checked_add(spec.storage.numel)
            .is_some_and(|e| e <= avail),
        "{}: storage {} holds {avail} elements, its reference needs {}+{}",
        ctx(),
        spec.storage.key,
        base,
        spec.storage.numel
    );
    let mut indices_needed = 0usize;
    if numel > 0 {
        let mut last = spec.offset;
        for (&d, &s) in spec.shape.iter().zip(&spec.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| anyhow!("{}: strides overflow", ctx()))?;
        }
        indices_needed = last + 1;
    }
    ensure!(
        indices_needed <= spec.storage.numel,
        "{}: size {:?}, stride {:?} and offset {} address element {} of a storage of {}",
        ctx(),
        spec.shape,
        spec.stride,
        spec.offset,
        indices_needed.saturating_sub(1),
        spec.storage.numel
    );

    // Element indices (relative to `base`), row-major over `shape`.
    let contiguous = is_contiguous(&spec.shape, &spec.stride);
    let mut idx: Vec<usize> = Vec::new();
    let start = base + spec.offset;
    let indices: Box<dyn Iterator<Item = usize>> = if contiguous || numel == 0 {
        Box::new(start..start + numel)
    } else {
        idx.reserve_exact(numel);
        let nd = spec.shape.len();
        let mut counter = vec![0usize; nd];
        let mut cur = start;
        for _ in 0..numel {
            idx.push(cur);
            // Odometer increment.
            for ax in (0..nd).rev() {
                counter[ax] += 1;
                cur += spec.stride[ax];
                if counter[ax] < spec.shape[ax] {
                    break;
                }
                cur -= spec.stride[ax] * spec.shape[ax];
                counter[ax] = 0;
            }
        }
        Box::new(idx.into_iter())
    };

    let b = &st.bytes[..];
    let be = st.big_endian;
    let get = |i: usize| -> &[u8] { &b[i * es..(i + 1) * es] };
    fn arr<const N: usize>(s: &[u8], be: bool) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        if be {
            a.reverse();
        }
        a
    }
    let data = match dtype {
        DType::F32 => TensorData::F32(
            indices
                .map(|i| f32::from_le_bytes(arr(get(i), be)))
                .collect(),
        ),
        DType::F16 => TensorData::F32(
            indices
                .map(|i| half::f16::from_le_bytes(arr(get(i), be)).to_f32())
                .collect(),
        ),
        DType::BF16 => TensorData::F32(
            indices
                .map(|i| half::bf16::from_le_bytes(arr(get(i), be)).to_f32())
                .collect(),
        ),
        DType::F64 => TensorData::F32(
            indices
                .map(|i| f64::from_le_bytes(arr(get(i), be)) as f32)
                .collect(),
        ),
        DType::I64 => TensorData::I64(
            indices
                .map(|i| i64::from_le_bytes(arr(get(i), be)))
                .collect(),
        ),
        DType::I32 => TensorData::I64(
            indices
                .map(|i| i32::from_le_bytes(arr(get(i), be)) as i64)
                .collect(),
        ),
        DType::I16 => TensorData::I64(
            indices
                .map(|i| i16::from_le_bytes(arr(get(i), be)) as i64)
                .collect(),
        ),
        DType::I8 => TensorData::I64(indices.map(|i| get(i)[0] as i8 as i64).collect()),
        DType::U8 | DType::Bool => TensorData::I64(indices.map(|i| get(i)[0] as i64).collect()),
    };
    Ok(PthTensor {
        name: name.to_owned(),
        shape: spec.shape.clone(),
        dtype,
        data,
    })
}

/// Row-major contiguity, ignoring the strides of size-1 dimensions.
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}
