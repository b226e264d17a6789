//! A range along one axis. Along channels (an ONNX Split) it carries its channels through
//! (output channel `c` is input channel `start + c`) and removing input channels moves its
//! range; along any other axis its channels are pinned.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Slice;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::groups::Member;
use crate::onnx_out::Writer;

impl HostOp for Slice {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let (axis, start) = (self.axis as usize + 1, self.start as usize);
        Ok(ins[0]
            .narrow(axis, start, (self.end - self.start) as usize)?
            .contiguous()?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        if self.axis != 0 {
            return cx.pin_all();
        }
        let (x, out, node) = (cx.input(0), cx.output(), cx.index());
        for c in 0..cx.channels(x) {
            cx.member(x, c, Member::Sliced { node, ch: c });
        }
        for c in 0..(self.end - self.start) as usize {
            cx.tie(x, self.start as usize + c, out, c);
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        if self.axis != 0 {
            return vec![None; cx.out_channels()];
        }
        cx.input(0)[self.start as usize..self.end as usize].to_vec()
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
