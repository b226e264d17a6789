//! Max and average pooling: channel by channel, so they carry channels and constants through
//! (a constant map pools to itself where no padding enters the window).

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::{AvgPool2d, AvgPool2dUneven, MaxPool2d};

use super::{onnx_pair, pad2d, pad_sides, window_attrs, Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

fn pair(p: [u32; 2]) -> (usize, usize) {
    (p[0] as usize, p[1] as usize)
}

/// Average pooling of `x` padded by `pads` (`[top, left, bottom, right]`) with zeros, which
/// count in the mean only with `count_include_pad`.
fn avg_pool(
    x: &Tensor,
    kernel: [u32; 2],
    stride: [u32; 2],
    pads: [u32; 4],
    count_include_pad: bool,
) -> Result<Tensor> {
    let (k, s) = (pair(kernel), pair(stride));
    let sum = pad_sides(x, pads, 0.0)?.avg_pool2d_with_stride(k, s)?;
    if count_include_pad || pads == [0; 4] {
        return Ok(sum);
    }
    let ones = Tensor::ones((1, 1, x.dim(2)?, x.dim(3)?), x.dtype(), x.device())?;
    let frac = pad_sides(&ones, pads, 0.0)?.avg_pool2d_with_stride(k, s)?;
    Ok(sum.broadcast_div(&frac)?)
}

impl HostOp for MaxPool2d {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let xp = pad2d(ins[0], self.padding, f32::NEG_INFINITY)?;
        Ok(xp.max_pool2d_with_stride(pair(self.kernel), pair(self.stride))?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0).to_vec()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let attrs = window_attrs(self.kernel, self.stride, self.padding);
        w.node("MaxPool", n.name, n.inputs, n.output, &attrs);
    }
}

impl HostOp for AvgPool2d {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let [p0, p1] = self.padding;
        let pads = [p0, p1, p0, p1];
        avg_pool(
            ins[0],
            self.kernel,
            self.stride,
            pads,
            self.count_include_pad,
        )
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0).to_vec()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let mut attrs = window_attrs(self.kernel, self.stride, self.padding);
        attrs.push((
            "count_include_pad",
            Attr::Int(self.count_include_pad as i64),
        ));
        w.node("AveragePool", n.name, n.inputs, n.output, &attrs);
    }
}

impl HostOp for AvgPool2dUneven {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        avg_pool(ins[0], self.kernel, self.stride, self.pads, false)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0).to_vec()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let [t, l, b, r] = self.pads.map(|v| v as i64);
        let attrs = [
            ("kernel_shape", Attr::Ints(onnx_pair(self.kernel))),
            ("strides", Attr::Ints(onnx_pair(self.stride))),
            ("pads", Attr::Ints(vec![t, l, b, r])),
            ("count_include_pad", Attr::Int(0)),
        ];
        w.node("AveragePool", n.name, n.inputs, n.output, &attrs);
    }
}
