//! Global average pooling, `[C, H, W] -> [C]`: carries channels and constants through.

use anyhow::Result;
use candle_core::{Tensor, D};
use nap_runtime::format::GlobalAvgPool;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for GlobalAvgPool {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        Ok(ins[0].mean(D::Minus1)?.mean(D::Minus1)?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0).to_vec()
    }

    /// ONNX keeps the `[N, C, 1, 1]` shape; the IR's `[C]` is its flattening.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let t = w.tmp(n.name);
        w.node("GlobalAveragePool", n.name, n.inputs, &t, &[]);
        w.node(
            "Flatten",
            &format!("{}/flatten", n.name),
            &[&t],
            n.output,
            &[("axis", Attr::Int(1))],
        );
    }
}
