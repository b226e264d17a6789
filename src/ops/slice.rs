//! A range along one axis: keeps some of a value's entries, so its channels are pinned.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Slice;

use super::{HostOp, OnnxNode};
use crate::onnx_out::Writer;

impl HostOp for Slice {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let (axis, start) = (self.axis as usize + 1, self.start as usize);
        Ok(ins[0]
            .narrow(axis, start, (self.end - self.start) as usize)?
            .contiguous()?)
    }

    /// `Slice` (opset 13+: starts, ends and axes as inputs).
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let mut input = |what: &str, v: i64| {
            let name = w.tmp(&format!("{}/{what}", n.name));
            w.init_i64(&name, &[v]);
            name
        };
        let (starts, ends, axes) = (
            input("starts", self.start as i64),
            input("ends", self.end as i64),
            input("axes", self.axis as i64 + 1),
        );
        w.node(
            "Slice",
            n.name,
            &[n.inputs[0], &starts, &ends, &axes],
            n.output,
            &[],
        );
    }
}
