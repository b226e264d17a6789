//! Per-node counts of a loaded model: parameters, non-zeros, bytes and FLOPs, for tools that
//! report on a model (`nap inspect`, `nap bench`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;

use crate::format::{DType, Layout, Op};
use crate::model::{Model, TensorView};

/// One graph node's parameters and work, per example.
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    pub name: String,
    pub op: String,
    pub output: Vec<u32>,
    /// Elements of every tensor the node reads from the file.
    pub params: usize,
    pub nonzero: usize,
    pub density: f64,
    /// Stored bytes of those tensors.
    pub bytes: u64,
    /// Floating-point operations as stored: 2 per multiply-add of a stored weight (all weights
    /// of a dense tensor, non-zeros of a CSR one, every block entry of a blocked one), 2 per
    /// output element for BatchNorm, Add and activations, 0 for data movement.
    pub flops: u64,
    /// The same with every weight counted (the dense model's work).
    pub dense_flops: u64,
    /// `dense f32`, `csr f16`, `bcsr4x1 f32`, ... for Linear and Conv2d weights; empty
    /// otherwise.
    pub storage: String,
}

/// Short operator name with its fused activation, e.g. `Conv2d(g1)+Relu`.
pub fn op_name(op: &Op) -> String {
    op.def().label()
}

fn layout_bytes(l: &Layout) -> u64 {
    match l {
        Layout::Dense { values } => values.len,
        Layout::Csr {
            row_ptr,
            col_idx,
            values,
            ..
        }
        | Layout::BlockCsr {
            row_ptr,
            col_idx,
            values,
            ..
        } => row_ptr.len + col_idx.len + values.len,
    }
}

/// One row per graph node, in graph order.
pub fn layer_stats(model: &Model<'_>) -> Vec<LayerStats> {
    let g = model.graph();
    let mut rows = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let out = g.values[n.output as usize].shape.clone();
        let (mut params, mut nonzero, mut bytes) = (0usize, 0usize, 0u64);
        n.op.for_each_tensor(|t| {
            let (p, nz) = model.tensor_density(t);
            params += p;
            nonzero += nz;
            bytes += layout_bytes(&model.tensor_entry(t).layout);
        });
        let ins: Vec<&[u32]> = n
            .inputs
            .iter()
            .map(|&v| g.values[v as usize].shape.as_slice())
            .collect();
        let (flops, dense_flops) = n.op.def().flops(model, &ins, &out);
        let storage = match n.op.weight_bias() {
            Some((weight, _)) => {
                let view = model.tensor(weight);
                format!(
                    "{} {}",
                    match view {
                        TensorView::Dense(_) => "dense".to_string(),
                        TensorView::Csr(_) => "csr".to_string(),
                        TensorView::BlockCsr(b) => format!("bcsr{}x1", b.block()),
                    },
                    match model.tensor_entry(weight).dtype {
                        DType::F32 => "f32",
                        DType::F16 => "f16",
                    }
                )
            }
            None => String::new(),
        };
        rows.push(LayerStats {
            name: n.name.clone(),
            op: op_name(&n.op),
            output: out,
            params,
            nonzero,
            density: if params == 0 {
                1.0
            } else {
                nonzero as f64 / params as f64
            },
            bytes,
            flops,
            dense_flops,
            storage,
        });
    }
    rows
}
