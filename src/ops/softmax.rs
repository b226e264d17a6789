//! Softmax over the last axis: mixes the values of a row, so its channels are pinned.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Softmax;

use super::{HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Softmax {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(ins[0], candle_core::D::Minus1)?)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.node(
            "Softmax",
            n.name,
            n.inputs,
            n.output,
            &[("axis", Attr::Int(-1))],
        );
    }
}
