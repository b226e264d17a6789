//! Linear: a weight layer whose input columns consume channels and whose rows produce them.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::{Linear, LinearRows};
use nap_runtime::kernels::act_scalar;

use super::{activation, add_channel_bias, probed, Constants, Coupling, HostOp, OnnxNode};
use crate::groups::Member;
use crate::onnx_out::{Attr, Writer};

impl HostOp for Linear {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], probe: Option<&Tensor>) -> Result<Tensor> {
        let mut y = ins[0].matmul(&params[self.weight as usize].t()?)?;
        if let Some(b) = self.bias {
            y = add_channel_bias(y, &params[b as usize])?;
        }
        activation(&probed(y, probe)?, self.act)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        produce_and_consume(cx, 1);
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        removed_rows_constant(cx, self.act)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let inputs = w.weighted_inputs(n.inputs[0], self.weight, self.bias);
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        w.with_act(
            self.act,
            "Gemm",
            n.name,
            &inputs,
            n.output,
            &[("transB", Attr::Int(1))],
        );
    }
}

/// A weight layer with `groups == 1`: each input channel is consumed by `k` columns of the
/// flattened weight (1 for a Linear, the kernel area for a convolution), each output channel is
/// produced by one row.
pub(super) fn produce_and_consume(cx: &mut Coupling<'_>, k: usize) {
    let (x, out, node) = (cx.input(0), cx.output(), cx.index());
    for c in 0..cx.channels(x) {
        let cols = c * k..(c + 1) * k;
        cx.member(
            x,
            c,
            Member::Consumer {
                node,
                slot: c,
                cols,
            },
        );
    }
    for r in 0..cx.channels(out) {
        cx.member(out, r, Member::Producer { node, row: r });
    }
}

/// A removed output row is zero before the activation.
pub(super) fn removed_rows_constant(
    cx: &Constants<'_>,
    act: nap_runtime::format::Activation,
) -> Vec<Option<f32>> {
    (0..cx.out_channels())
        .map(|r| cx.removed(r).then(|| act_scalar(act, 0.0)))
        .collect()
}

impl HostOp for LinearRows {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], probe: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let dims = x.dims().to_vec();
        let inp = *dims.last().expect("a LinearRows input has axes");
        let w = &params[self.weight as usize];
        let mut y = x.reshape(((), inp))?.matmul(&w.t()?)?;
        if let Some(b) = self.bias {
            y = add_channel_bias(y, &params[b as usize])?;
        }
        let mut out = dims;
        *out.last_mut().expect("checked above") = w.dim(0)?;
        activation(&probed(y.reshape(out)?, probe)?, self.act)
    }

    /// `MatMul` by the transposed weight, then `Add` of the bias.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let weight = w.tensor(self.weight);
        let wt = w.tmp(&format!("{}/weight_t", n.name));
        w.node(
            "Transpose",
            &format!("{}/transpose", n.name),
            &[&weight],
            &wt,
            &[("perm", Attr::Ints(vec![1, 0]))],
        );
        let inputs = [n.inputs[0], wt.as_str()];
        match self.bias {
            None => w.with_act(self.act, "MatMul", n.name, &inputs, n.output, &[]),
            Some(b) => {
                let (bias, mm) = (w.tensor(b), w.tmp(n.name));
                w.node("MatMul", &format!("{}/matmul", n.name), &inputs, &mm, &[]);
                w.with_act(self.act, "Add", n.name, &[&mm, &bias], n.output, &[]);
            }
        }
    }
}
