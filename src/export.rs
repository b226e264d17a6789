//! Writing `.nap` files: fold BatchNorm into convolutions, fuse activations into their
//! producers, choose each tensor's storage, and encode through the runtime's format types.

use std::path::Path;

use anyhow::{anyhow, Result};
use half::f16;
use nap_runtime::format::{
    Activation, BlobRef, DType, FileBuilder, Graph, Header, IndexWidth, LayerStats, Layout, Op,
    TensorEntry, TensorId, ValueId,
};

use crate::ir::HostModel;
use crate::ops::fold_batchnorm;
use crate::util::atomic_write;
use nap_runtime::kernels::{Dtype, Elems, BSPMV_BLOCK as BLOCK};
use nap_runtime::model::{BlockCsrBuf, CsrBuf, Indices};

/// How tensors are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Storage {
    /// Dense always.
    Dense,
    /// CSR for a Linear/Conv2d weight when that takes fewer bytes than dense.
    Auto,
    /// CSR for a Linear/Conv2d weight only where the device runs it faster than dense: density
    /// at most the policy's limit for the product (`nap bench --calibrate` measures it; Linear
    /// layers use the batch-1 limit). The runtime then never expands a weight at load.
    ForDevice(nap_runtime::SparsePolicy),
}

#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub dtype: DType,
    pub storage: Storage,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: DType::F32,
            storage: Storage::Auto,
        }
    }
}

fn consumers(g: &Graph) -> Vec<usize> {
    let mut c = vec![0; g.values.len()];
    for n in &g.nodes {
        for &v in &n.inputs {
            c[v as usize] += 1;
        }
    }
    for &v in &g.outputs {
        c[v as usize] += 1;
    }
    c
}

/// The node that computes each value (`None` for graph inputs).
fn producers(g: &Graph) -> Vec<Option<usize>> {
    let mut p = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        p[n.output as usize] = Some(i);
    }
    p
}

/// Whether `a` equals `b` up to 1e-6 relative.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

/// Folds every BatchNorm that is the only consumer of a convolution into that convolution,
/// replaces hard-swish written out (`x · relu6(x + 3) / 6`, the affine maps as constant
/// BatchNorms) by its activation, and fuses every activation that is the only consumer of a
/// Linear, Conv2d or Add into that op. The result computes the same function (up to rounding)
/// with fewer nodes.
pub fn fuse(m: &HostModel) -> Result<HostModel> {
    let mut m = m.clone();
    while fuse_hard_swish(&mut m) {}
    loop {
        let uses = consumers(&m.graph);
        let producer = producers(&m.graph);
        let mut changed = false;
        for j in 0..m.graph.nodes.len() {
            let node = &m.graph.nodes[j];
            let x = node.inputs[0];
            let Some(i) = producer[x as usize] else {
                continue;
            };
            if uses[x as usize] != 1 {
                continue;
            }
            let out = node.output;
            match (node.op.clone(), m.graph.nodes[i].op.clone()) {
                (Op::BatchNorm(bn), Op::Conv2d(conv)) if conv.act == Activation::None => {
                    m.graph.nodes[i].op = Op::Conv2d(fold_batchnorm(&mut m, &conv, &bn)?);
                }
                (Op::Act(a), producer) if producer.fused_act() == Some(Activation::None) => {
                    if let Some(act) = m.graph.nodes[i].op.act_mut() {
                        *act = a;
                    }
                }
                _ => continue,
            }
            m.graph.nodes[i].output = out;
            m.graph.nodes.remove(j);
            changed = true;
            break;
        }
        if !changed {
            break;
        }
    }
    compact(&mut m);
    m.validate()?;
    Ok(m)
}

/// The per-channel `(scale, shift)` of a BatchNorm if it is the same for every channel.
fn uniform_affine(m: &HostModel, op: &Op) -> Option<(f64, f64)> {
    let Op::BatchNorm(bn) = op else {
        return None;
    };
    let t = |id: TensorId| &m.tensors[id as usize].data;
    let (g, b, mu, var) = (t(bn.gamma), t(bn.beta), t(bn.mean), t(bn.var));
    let affine = |c: usize| {
        let scale = g[c] as f64 / (var[c] as f64 + bn.eps as f64).sqrt();
        (scale, b[c] as f64 - mu[c] as f64 * scale)
    };
    let first = affine(0);
    (1..g.len())
        .map(affine)
        .all(|(s, h)| close(s, first.0) && close(h, first.1))
        .then_some(first)
}

/// Replaces one `x · relu6(x + 3) / 6` (an affine `+3`, a ReLU6, a Mul by `x`, an affine `/6`,
/// each intermediate used once) by `HardSwish(x)`; `false` if there is none.
fn fuse_hard_swish(m: &mut HostModel) -> bool {
    let uses = consumers(&m.graph);
    let producer = producers(&m.graph);
    let single = |v: ValueId| uses[v as usize] == 1;
    let nodes = &m.graph.nodes;
    for (d, dn) in nodes.iter().enumerate() {
        if !uniform_affine(m, &dn.op).is_some_and(|(s, h)| close(s, 1.0 / 6.0) && close(h, 0.0)) {
            continue;
        }
        let Some(c) = producer[dn.inputs[0] as usize].filter(|_| single(dn.inputs[0])) else {
            continue;
        };
        if nodes[c].op != Op::Mul {
            continue;
        }
        for (x, gate) in [(0, 1), (1, 0)] {
            let (x, gate) = (nodes[c].inputs[x], nodes[c].inputs[gate]);
            let Some(b) = producer[gate as usize].filter(|_| single(gate)) else {
                continue;
            };
            if nodes[b].op != Op::Act(Activation::Relu6) {
                continue;
            }
            let ain = nodes[b].inputs[0];
            let Some(a) = producer[ain as usize].filter(|_| single(ain)) else {
                continue;
            };
            let plus3 = uniform_affine(m, &nodes[a].op)
                .is_some_and(|(s, h)| close(s, 1.0) && close(h, 3.0));
            if !plus3 || nodes[a].inputs[0] != x {
                continue;
            }
            m.graph.nodes[d].op = Op::Act(Activation::HardSwish);
            m.graph.nodes[d].inputs = vec![x];
            let mut dead = [a, b, c];
            dead.sort_unstable();
            for i in dead.into_iter().rev() {
                m.graph.nodes.remove(i);
            }
            return true;
        }
    }
    false
}

/// Drops values and tensors nothing refers to, renumbering the rest.
fn compact(m: &mut HostModel) {
    let g = &mut m.graph;
    let mut used_v = vec![false; g.values.len()];
    for &v in g.inputs.iter().chain(&g.outputs) {
        used_v[v as usize] = true;
    }
    for n in &g.nodes {
        used_v[n.output as usize] = true;
        n.inputs.iter().for_each(|&v| used_v[v as usize] = true);
    }
    let mut vmap = vec![u32::MAX; g.values.len()];
    let mut values = Vec::new();
    for (i, v) in g.values.iter().enumerate() {
        if used_v[i] {
            vmap[i] = values.len() as ValueId;
            values.push(v.clone());
        }
    }
    g.values = values;
    g.inputs.iter_mut().for_each(|v| *v = vmap[*v as usize]);
    g.outputs.iter_mut().for_each(|v| *v = vmap[*v as usize]);

    let mut used_t = vec![false; m.tensors.len()];
    for n in &g.nodes {
        n.op.for_each_tensor(|t| used_t[t as usize] = true);
    }
    let mut tmap = vec![u32::MAX; m.tensors.len()];
    let mut tensors = Vec::new();
    for (i, t) in m.tensors.drain(..).enumerate() {
        if used_t[i] {
            tmap[i] = tensors.len() as u32;
            tensors.push(t);
        }
    }
    m.tensors = tensors;
    for n in &mut g.nodes {
        n.output = vmap[n.output as usize];
        n.inputs.iter_mut().for_each(|v| *v = vmap[*v as usize]);
        n.op.map_tensors(|t| tmap[t as usize]);
    }
}

/// Per-layer parameter and non-zero counts of the prunable layers.
pub fn layer_stats(m: &HostModel) -> Vec<LayerStats> {
    m.prunable()
        .into_iter()
        .map(|(i, w)| {
            let t = &m.tensors[w as usize];
            LayerStats {
                name: m.graph.nodes[i].name.clone(),
                params: t.numel() as u64,
                nonzero: t.data.iter().filter(|v| **v != 0.0).count() as u64,
            }
        })
        .collect()
}

fn encode_values(fb: &mut FileBuilder, v: &[f32], dtype: DType) -> BlobRef {
    match dtype {
        DType::F32 => fb.add_f32(v),
        DType::F16 => fb.add_f16(&v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>()),
    }
}

/// Row pointers, column indices and values (f32, written as `dtype`) of a CSR or blocked-CSR
/// matrix as blobs.
fn sparse_blobs(
    fb: &mut FileBuilder,
    row_ptr: &[u32],
    col_idx: Indices<'_>,
    values: Elems<'_>,
    dtype: DType,
) -> (BlobRef, BlobRef, BlobRef) {
    let Elems::F32(vals) = values else {
        unreachable!("CsrBuf and BlockCsrBuf are built with f32 values here")
    };
    let rp = fb.add_u32(row_ptr);
    let ci = match col_idx {
        Indices::U16(c) => fb.add_u16(c),
        Indices::U32(c) => fb.add_u32(c),
    };
    (rp, ci, encode_values(fb, vals, dtype))
}

/// Encodes `m` (fused first) as a `.nap` image.
pub fn to_nap_bytes(m: &HostModel, opts: ExportOptions) -> Result<Vec<u8>> {
    let m = fuse(m)?;
    let prunable = m.prunable();
    let weights: Vec<u32> = prunable.iter().map(|&(_, w)| w).collect();
    let mut fb = FileBuilder::new();
    let mut entries = Vec::with_capacity(m.tensors.len());
    for (id, t) in m.tensors.iter().enumerate() {
        let is_weight = weights.contains(&(id as u32));
        let dtype = if is_weight { opts.dtype } else { DType::F32 };
        let rows = t.shape.first().copied().unwrap_or(1) as usize;
        let cols = t.numel().checked_div(rows).unwrap_or(0);
        let nnz = t.data.iter().filter(|v| **v != 0.0).count();
        let index = IndexWidth::for_cols(cols);
        let dense_bytes = t.numel() * dtype.size();
        let csr_bytes = (rows + 1) * 4 + nnz * (index.size() + dtype.size());
        let linear = prunable
            .iter()
            .any(|&(i, w)| w == id as u32 && matches!(m.graph.nodes[i].op, Op::Linear(_)));
        // A Linear weight whose non-zeros fill 4×1 blocks (what `nap prune --block 4x1` leaves)
        // is stored blocked: one column index per four weights, run by the blocked kernel.
        let blocked = (is_weight && linear && opts.storage != Storage::Dense && nnz > 0)
            .then(|| BlockCsrBuf::from_dense(rows, cols, BLOCK, &t.data, Dtype::F32, index))
            .filter(|b| {
                let entries = b.view().blocks() * BLOCK;
                let bytes = (rows.div_ceil(BLOCK) + 1) * 4
                    + b.view().blocks() * (index.size() + BLOCK * dtype.size());
                nnz as f64 >= 0.9 * entries as f64 && bytes < csr_bytes && bytes < dense_bytes
            });
        let limit = match opts.storage {
            Storage::ForDevice(p) if blocked.is_some() => p.max_density_blocked as f64,
            Storage::ForDevice(p) if linear => p.max_density_gemv as f64,
            Storage::ForDevice(p) => p.max_density_gemm as f64,
            _ => 1.0,
        };
        let stored = blocked.as_ref().map_or(nnz, |b| b.view().blocks() * BLOCK);
        let sparse = match opts.storage {
            Storage::Dense => false,
            Storage::Auto => is_weight && (blocked.is_some() || csr_bytes < dense_bytes),
            Storage::ForDevice(_) => {
                is_weight
                    && (blocked.is_some() || csr_bytes < dense_bytes)
                    && stored as f64 <= limit * t.numel() as f64
            }
        };
        let layout = match (&blocked, sparse) {
            (Some(b), true) => {
                let w = b.view();
                let (row_ptr, col_idx, values) =
                    sparse_blobs(&mut fb, w.row_ptr(), w.col_idx(), w.values(), dtype);
                Layout::BlockCsr {
                    block: BLOCK as u32,
                    nnzb: w.blocks() as u64,
                    index,
                    row_ptr,
                    col_idx,
                    values,
                }
            }
            (None, true) => {
                let csr = CsrBuf::from_dense(rows, cols, &t.data, Dtype::F32, index);
                let w = csr.view();
                let (row_ptr, col_idx, values) =
                    sparse_blobs(&mut fb, w.row_ptr(), w.col_idx(), w.values(), dtype);
                Layout::Csr {
                    nnz: nnz as u64,
                    index,
                    row_ptr,
                    col_idx,
                    values,
                }
            }
            (_, false) => Layout::Dense {
                values: encode_values(&mut fb, &t.data, dtype),
            },
        };
        entries.push(TensorEntry {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype,
            layout,
        });
    }
    let mut meta = m.meta.clone();
    meta.layers = layer_stats(&m);
    let header = Header {
        producer: format!("nap {}", env!("CARGO_PKG_VERSION")),
        metadata: meta,
        graph: m.graph.clone(),
        tensors: entries,
        extensions: Vec::new(),
    };
    fb.finish(&header)
        .map_err(|e| anyhow!("encoding header: {e}"))
}

/// Writes `m` to `path` atomically.
pub fn write_nap(m: &HostModel, path: &Path, opts: ExportOptions) -> Result<()> {
    let bytes = to_nap_bytes(m, opts)?;
    atomic_write(path, &bytes)
}
