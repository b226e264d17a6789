//! Reference forward pass with candle: interprets the graph IR with candle ops. It is
//! differentiable (training uses it with `Var` parameters) and independent of the runtime's
//! kernels, which tests compare against it.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use nap_runtime::format::{BatchNorm, Graph, Node, Op};

use crate::ir::HostModel;
use crate::ops::host;

/// Uploads every tensor of `m` to `dev`, in tensor-id order.
pub fn params(m: &HostModel, dev: &Device) -> Result<Vec<Tensor>> {
    m.tensors
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            Ok(Tensor::from_slice(&t.data, shape, dev)?)
        })
        .collect()
}

/// A batch of inputs `[n, ...input shape]` as a tensor.
pub fn input(m: &HostModel, data: &[f32], dev: &Device) -> Result<Tensor> {
    let per: usize = m.input_shape().iter().map(|&d| d as usize).product();
    if per == 0 || !data.len().is_multiple_of(per) {
        bail!(
            "input of {} values is not a whole number of examples of {:?}",
            data.len(),
            m.input_shape()
        );
    }
    let mut shape = vec![data.len() / per];
    shape.extend(m.input_shape().iter().map(|&d| d as usize));
    Ok(Tensor::from_slice(data, shape, dev)?)
}

pub use crate::ops::activation;

/// Runs the graph on `x` (`[n, ...]`) and returns every value; `params[i]` is tensor `i`.
pub fn forward_all(g: &Graph, params: &[Tensor], x: &Tensor) -> Result<Vec<Option<Tensor>>> {
    forward_probed(g, params, x, &[])
}

/// [`forward_all`] with `probes[i]` (where present) added to the pre-activation output of node
/// `i`, a Linear or Conv2d, before its activation. Zero-valued `Var` probes give back the gradient
/// of a loss with respect to those pre-activations.
pub fn forward_probed(
    g: &Graph,
    params: &[Tensor],
    x: &Tensor,
    probes: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    vals[g.inputs[0] as usize] = Some(x.clone());
    for (ni, node) in g.nodes.iter().enumerate() {
        let ins = inputs_of(node, &vals)?;
        let y = eval_node(node, &ins, params, probes.get(ni).and_then(|p| p.as_ref()))?;
        vals[node.output as usize] = Some(y);
    }
    Ok(vals)
}

fn inputs_of<'v>(node: &Node, vals: &'v [Option<Tensor>]) -> Result<Vec<&'v Tensor>> {
    node.inputs
        .iter()
        .map(|&v| {
            vals[v as usize]
                .as_ref()
                .context("value used before definition")
        })
        .collect()
}

/// One node's output from its inputs; `probe` (if any) is added to a Linear's or Conv2d's
/// pre-activation.
fn eval_node(
    node: &Node,
    ins: &[&Tensor],
    params: &[Tensor],
    probe: Option<&Tensor>,
) -> Result<Tensor> {
    host(&node.op).eval(ins, params, probe)
}

/// Recomputes the running statistics of every BatchNorm from `data` (inputs of `m`, all in one
/// batch): node by node, each BatchNorm's mean and variance become those of its input over the
/// examples and positions, computed with the BatchNorms before it already updated. This is what
/// a pass in training mode with cumulative averaging does, exactly, in one pass. Values are
/// dropped after their last use.
pub fn recalibrate_batchnorm(m: &mut HostModel, data: &[f32]) -> Result<()> {
    if !m
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::BatchNorm(BatchNorm { .. })))
    {
        return Ok(());
    }
    let dev = Device::Cpu;
    let mut params = params(m, &dev)?;
    let x0 = input(m, data, &dev)?;
    let (g, tensors) = (&m.graph, &mut m.tensors);
    let mut last_use = vec![usize::MAX; g.values.len()];
    for (ni, node) in g.nodes.iter().enumerate() {
        for &v in &node.inputs {
            last_use[v as usize] = ni;
        }
    }
    for &v in &g.outputs {
        last_use[v as usize] = usize::MAX;
    }
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    vals[g.inputs[0] as usize] = Some(x0);
    for (ni, node) in g.nodes.iter().enumerate() {
        let ins = inputs_of(node, &vals)?;
        if let Op::BatchNorm(BatchNorm { mean, var, .. }) = node.op {
            let x = ins[0];
            let c = x.dim(1)?;
            // [N, C, ...] -> [C, N * positions]
            let flat = x.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
            let n = flat.dim(1)? as f64;
            let mu = flat.mean(1)?;
            let centred = flat.broadcast_sub(&mu.reshape((c, 1))?)?;
            let v = (centred.sqr()?.sum(1)? / (n - 1.0).max(1.0))?;
            for (id, t) in [(mean, mu), (var, v)] {
                tensors[id as usize].data = t.to_dtype(DType::F32)?.to_vec1()?;
                params[id as usize] = t;
            }
        }
        let y = eval_node(node, &ins, &params, None)?;
        vals[node.output as usize] = Some(y);
        for &v in &node.inputs {
            if last_use[v as usize] == ni {
                vals[v as usize] = None;
            }
        }
    }
    Ok(())
}

/// Runs the graph and returns its first output.
pub fn forward(g: &Graph, params: &[Tensor], x: &Tensor) -> Result<Tensor> {
    let mut vals = forward_all(g, params, x)?;
    vals[g.outputs[0] as usize]
        .take()
        .context("graph output not computed")
}

/// Convenience: logits of `m` for `data` (`[n, ...]` flattened) on the CPU, as rows.
pub fn logits(m: &HostModel, data: &[f32]) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let ps = params(m, &dev)?;
    let x = input(m, data, &dev)?;
    Ok(forward(&m.graph, &ps, &x)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}
