//! Mul of two values: ties channel `c` of both factors and the output, like Add, so a
//! squeeze-and-excitation gate's channel is pruned with the channel it scales.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Mul;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::Writer;

impl HostOp for Mul {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        Ok(ins[0].broadcast_mul(ins[1])?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        for i in 0..cx.inputs().len() {
            cx.pass(cx.input(i));
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        let (a, b) = (cx.input(0), cx.input(1));
        (0..cx.out_channels())
            .map(|c| match (a[c], b[c]) {
                (Some(x), Some(g)) => Some(x * g),
                (Some(0.0), _) | (_, Some(0.0)) => Some(0.0),
                _ => None,
            })
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.node("Mul", n.name, n.inputs, n.output, &[]);
    }
}
