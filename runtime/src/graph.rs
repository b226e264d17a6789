//! Graph validation and shape inference, shared by the loader and the executor.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::format::*;
use crate::model::numel;
use crate::ops::InferCx;

fn bad(node: &str, reason: impl Into<String>) -> Error {
    Error::BadGraph {
        node: node.to_string(),
        reason: reason.into(),
    }
}

pub use crate::ops::{window_out, TensorTable};

impl TensorTable for Header {
    fn tensor_shape(&self, id: TensorId) -> Option<&[u32]> {
        self.tensors.get(id as usize).map(|t| t.shape.as_slice())
    }

    fn tensor_is_dense(&self, id: TensorId) -> bool {
        self.tensors
            .get(id as usize)
            .is_some_and(|t| matches!(t.layout, Layout::Dense { .. }))
    }
}

/// Output shape of `node` given its input shapes; checks tensor shapes and attributes.
pub fn infer(h: &dyn TensorTable, node: &Node, ins: &[&[u32]]) -> Result<Vec<u32>> {
    let cx = InferCx {
        tensors: h,
        node: &node.name,
    };
    node.op.def().infer(&cx, ins)
}

/// Largest per-example value the runtime accepts (elements), to keep buffer planning in range.
pub const MAX_VALUE_ELEMS: usize = 1 << 28;

/// Checks references, definition order and every node's declared output shape.
pub fn validate(h: &Header) -> Result<()> {
    validate_graph(&h.graph, h)
}

/// [`validate`] for a graph whose tensors live elsewhere (the pruner's in-memory models).
pub fn validate_graph(g: &Graph, h: &dyn TensorTable) -> Result<()> {
    let nv = g.values.len();
    for v in &g.values {
        let n = numel(&v.shape).ok_or(Error::Overflow("value shape"))?;
        if n > MAX_VALUE_ELEMS {
            return Err(bad(&v.name, "value is too large"));
        }
    }
    let mut defined = vec![false; nv];
    if g.inputs.is_empty() || g.outputs.is_empty() {
        return Err(bad("<graph>", "graph needs inputs and outputs"));
    }
    for &i in &g.inputs {
        let slot = defined
            .get_mut(i as usize)
            .ok_or_else(|| bad("<graph>", format!("input value {i} does not exist")))?;
        if *slot {
            return Err(bad("<graph>", "an input is listed twice"));
        }
        *slot = true;
    }
    for node in &g.nodes {
        let mut shapes: Vec<&[u32]> = Vec::with_capacity(node.inputs.len());
        for &i in &node.inputs {
            if !defined.get(i as usize).copied().unwrap_or(false) {
                return Err(bad(
                    &node.name,
                    format!("reads value {i} before it is defined"),
                ));
            }
            shapes.push(&g.values[i as usize].shape);
        }
        let out = node.output as usize;
        if out >= nv {
            return Err(bad(&node.name, "output value does not exist"));
        }
        if defined[out] {
            return Err(bad(&node.name, "output value is defined twice"));
        }
        let shape = infer(h, node, &shapes)?;
        if shape != g.values[out].shape {
            return Err(bad(
                &node.name,
                format!(
                    "computes {:?} but declares {:?}",
                    shape, g.values[out].shape
                ),
            ));
        }
        defined[out] = true;
    }
    for &o in &g.outputs {
        if !defined.get(o as usize).copied().unwrap_or(false) {
            return Err(bad(
                "<graph>",
                format!("output value {o} is never computed"),
            ));
        }
    }
    Ok(())
}
