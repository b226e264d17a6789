//! Graph validation and shape inference, shared by the loader and the executor.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::format::*;
use crate::model::numel;

fn bad(node: &str, reason: impl Into<String>) -> Error {
    Error::BadGraph {
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// Output size of a sliding window along one axis, `None` if the window does not fit.
pub fn window_out(input: u32, kernel: u32, stride: u32, pad: u32, dilation: u32) -> Option<u32> {
    if stride == 0 || kernel == 0 || dilation == 0 {
        return None;
    }
    let span = (dilation as u64) * (kernel as u64 - 1) + 1;
    let padded = input as u64 + 2 * pad as u64;
    if padded < span {
        return None;
    }
    u32::try_from((padded - span) / stride as u64 + 1).ok()
}

/// What shape inference needs to know about the tensor table.
pub trait TensorTable {
    /// Shape of tensor `id`, `None` if it does not exist.
    fn tensor_shape(&self, id: TensorId) -> Option<&[u32]>;
    /// Whether tensor `id` is stored dense.
    fn tensor_is_dense(&self, id: TensorId) -> bool;
}

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

fn tensor<'h>(h: &'h dyn TensorTable, node: &str, id: TensorId) -> Result<&'h [u32]> {
    h.tensor_shape(id)
        .ok_or_else(|| bad(node, format!("tensor {id} does not exist")))
}

fn expect_shape(
    h: &dyn TensorTable,
    node: &str,
    id: TensorId,
    want: &[u32],
    what: &str,
) -> Result<()> {
    let t = tensor(h, node, id)?;
    if t != want {
        return Err(bad(
            node,
            format!("{what} (tensor {id}) has shape {t:?}, expected {want:?}"),
        ));
    }
    Ok(())
}

fn expect_dense(h: &dyn TensorTable, node: &str, id: TensorId) -> Result<()> {
    if h.tensor_is_dense(id) {
        Ok(())
    } else {
        Err(bad(node, "parameter vectors must be stored dense"))
    }
}

fn chw(node: &str, s: &[u32]) -> Result<[u32; 3]> {
    match s {
        [c, hh, w] => Ok([*c, *hh, *w]),
        _ => Err(bad(node, format!("expects a [C, H, W] input, got {s:?}"))),
    }
}

fn pool_out(
    node: &str,
    s: &[u32],
    kernel: [u32; 2],
    stride: [u32; 2],
    padding: [u32; 2],
) -> Result<Vec<u32>> {
    let [c, hh, w] = chw(node, s)?;
    if padding[0] as u64 * 2 > kernel[0] as u64 || padding[1] as u64 * 2 > kernel[1] as u64 {
        return Err(bad(node, "padding exceeds half the pooling window"));
    }
    let oh = window_out(hh, kernel[0], stride[0], padding[0], 1);
    let ow = window_out(w, kernel[1], stride[1], padding[1], 1);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(vec![c, oh, ow]),
        _ => Err(bad(node, "pooling window does not fit the input")),
    }
}

/// Output shape of `node` given its input shapes; checks tensor shapes and attributes.
pub fn infer(h: &dyn TensorTable, node: &Node, ins: &[&[u32]]) -> Result<Vec<u32>> {
    let name = node.name.as_str();
    let arity = |n: usize| {
        if ins.len() == n {
            Ok(())
        } else {
            Err(bad(name, format!("expects {n} inputs, got {}", ins.len())))
        }
    };
    match &node.op {
        Op::Linear { weight, bias, .. } => {
            arity(1)?;
            let w = tensor(h, name, *weight)?;
            let [out, inp] = match w[..] {
                [o, i] => [o, i],
                _ => return Err(bad(name, "Linear weight must be [out, in]")),
            };
            if ins[0] != [inp] {
                return Err(bad(
                    name,
                    format!("input {:?} does not match weight [{out}, {inp}]", ins[0]),
                ));
            }
            if let Some(b) = bias {
                expect_shape(h, name, *b, &[out], "bias")?;
                expect_dense(h, name, *b)?;
            }
            Ok(vec![out])
        }
        Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
            ..
        } => {
            arity(1)?;
            let [c, hh, ww] = chw(name, ins[0])?;
            let w = tensor(h, name, *weight)?;
            let [co, ci, kh, kw] = match w[..] {
                [a, b, c, d] => [a, b, c, d],
                _ => return Err(bad(name, "Conv2d weight must be [out, in/groups, kh, kw]")),
            };
            let g = *groups;
            if g == 0 || c % g != 0 || co % g != 0 || ci.checked_mul(g) != Some(c) {
                return Err(bad(
                    name,
                    format!("input channels {c}, groups {g} and weight {w:?} disagree"),
                ));
            }
            let oh = window_out(hh, kh, stride[0], padding[0], dilation[0]);
            let ow = window_out(ww, kw, stride[1], padding[1], dilation[1]);
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(bad(name, "convolution window does not fit the input"));
            };
            if let Some(b) = bias {
                expect_shape(h, name, *b, &[co], "bias")?;
                expect_dense(h, name, *b)?;
            }
            Ok(vec![co, oh, ow])
        }
        Op::BatchNorm {
            gamma,
            beta,
            mean,
            var,
            ..
        } => {
            arity(1)?;
            let c = *ins[0]
                .first()
                .ok_or_else(|| bad(name, "BatchNorm of a scalar"))?;
            for (t, what) in [
                (gamma, "gamma"),
                (beta, "beta"),
                (mean, "mean"),
                (var, "var"),
            ] {
                expect_shape(h, name, *t, &[c], what)?;
                expect_dense(h, name, *t)?;
            }
            Ok(ins[0].to_vec())
        }
        Op::Act(_) | Op::Softmax => {
            arity(1)?;
            if matches!(node.op, Op::Softmax) && ins[0].len() != 1 {
                return Err(bad(name, "Softmax expects a [features] vector"));
            }
            Ok(ins[0].to_vec())
        }
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
        } => {
            arity(1)?;
            pool_out(name, ins[0], *kernel, *stride, *padding)
        }
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ..
        } => {
            arity(1)?;
            pool_out(name, ins[0], *kernel, *stride, *padding)
        }
        Op::GlobalAvgPool => {
            arity(1)?;
            let [c, hh, w] = chw(name, ins[0])?;
            if hh == 0 || w == 0 {
                return Err(bad(name, "global pooling of an empty map"));
            }
            Ok(vec![c])
        }
        Op::Add { .. } => {
            arity(2)?;
            if ins[0] != ins[1] {
                return Err(bad(name, format!("adds {:?} and {:?}", ins[0], ins[1])));
            }
            Ok(ins[0].to_vec())
        }
        Op::Concat => {
            if ins.len() < 2 {
                return Err(bad(name, "Concat needs at least two inputs"));
            }
            let mut out = ins[0].to_vec();
            if out.is_empty() {
                return Err(bad(name, "Concat of scalars"));
            }
            for s in &ins[1..] {
                if s.len() != out.len() || s[1..] != out[1..] {
                    return Err(bad(
                        name,
                        format!("cannot concatenate {:?} with {:?}", ins[0], s),
                    ));
                }
                out[0] = out[0]
                    .checked_add(s[0])
                    .ok_or_else(|| bad(name, "channel count overflows"))?;
            }
            Ok(out)
        }
        Op::Flatten => {
            arity(1)?;
            let n = numel(ins[0]).ok_or(Error::Overflow("value shape"))?;
            Ok(vec![
                u32::try_from(n).map_err(|_| Error::Overflow("value shape"))?
            ])
        }
        Op::Reshape { shape } => {
            arity(1)?;
            if numel(ins[0]) != numel(shape) {
                return Err(bad(
                    name,
                    format!("cannot reshape {:?} to {:?}", ins[0], shape),
                ));
            }
            Ok(shape.clone())
        }
    }
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
