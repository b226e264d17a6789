//! Concat on channels: each input channel is the output channel at its offset.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Concat;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Concat {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        Ok(Tensor::cat(ins, 1)?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        let (mut at, out) = (0, cx.output());
        for i in 0..cx.inputs().len() {
            let x = cx.input(i);
            for c in 0..cx.channels(x) {
                cx.tie(x, c, out, at + c);
            }
            at += cx.channels(x);
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        (0..cx.node.inputs.len())
            .flat_map(|i| cx.input(i).iter().copied())
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.node(
            "Concat",
            n.name,
            n.inputs,
            n.output,
            &[("axis", Attr::Int(1))],
        );
    }
}
