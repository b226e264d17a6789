//! Add: ties channel `c` of both inputs and the output (a residual stream is one group).

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Add;
use nap_runtime::kernels::act_scalar;

use super::{activation, Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::Writer;

impl HostOp for Add {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        activation(&(ins[0] + ins[1])?, self.act)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        for i in 0..cx.inputs().len() {
            cx.pass(cx.input(i));
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        (0..cx.out_channels())
            .map(|c| {
                let a = cx.input(0)[c]?;
                let b = cx.input(1)[c]?;
                Some(act_scalar(self.act, a + b))
            })
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.with_act(self.act, "Add", n.name, n.inputs, n.output, &[]);
    }
}
