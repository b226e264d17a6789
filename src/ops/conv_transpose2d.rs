//! ConvTranspose2d: its weight is `[in, out, kh, kw]`, not a weight layer's `[out, in, ...]`,
//! so its channels are pinned (never pruned) and its weight stays dense.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use nap_runtime::format::ConvTranspose2d;

use super::{add_channel_bias, onnx_pair, square, window_attrs, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for ConvTranspose2d {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        ensure!(
            self.output_padding[0] == self.output_padding[1],
            "the candle reference supports only equal output padding along height and width"
        );
        let mut y = ins[0].conv_transpose2d(
            &params[self.weight as usize],
            square(self.padding, "padding")?,
            self.output_padding[0] as usize,
            square(self.stride, "stride")?,
            square(self.dilation, "dilation")?,
        )?;
        if let Some(b) = self.bias {
            y = add_channel_bias(y, &params[b as usize])?;
        }
        Ok(y)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let ks = w.tensor_shape(self.weight);
        let mut attrs = window_attrs([ks[2], ks[3]], self.stride, self.padding);
        attrs.push(("dilations", Attr::Ints(onnx_pair(self.dilation))));
        attrs.push(("output_padding", Attr::Ints(onnx_pair(self.output_padding))));
        attrs.push(("group", Attr::Int(1)));
        let inputs = w.weighted_inputs(n.inputs[0], self.weight, self.bias);
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        w.node("ConvTranspose", n.name, &inputs, n.output, &attrs);
    }
}
