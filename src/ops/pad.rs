//! Constant padding: channel by channel, so it carries channels through; a channel's constant
//! survives only where it equals the padding value.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Pad;

use super::{pad_sides, Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::Writer;

impl HostOp for Pad {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        pad_sides(ins[0], self.pads, self.value)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0)
            .iter()
            .map(|v| v.filter(|&v| v == self.value))
            .collect()
    }

    /// `Pad` (opset 13+: pads and the value as inputs) on the two spatial axes.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let [t, l, b, r] = self.pads.map(|v| v as i64);
        let pads = w.tmp(&format!("{}/pads", n.name));
        w.init_i64(&pads, &[0, 0, t, l, 0, 0, b, r]);
        let value = w.scalar(self.value);
        w.node("Pad", n.name, &[n.inputs[0], &pads, &value], n.output, &[]);
    }
}
