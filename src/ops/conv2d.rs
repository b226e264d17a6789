//! Conv2d: with `groups == 1` a weight layer like Linear; depthwise convolutions carry channels
//! through; other grouped convolutions pin theirs. BatchNorm folds into it.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use nap_runtime::format::{Activation, BatchNorm, Conv2d};
use nap_runtime::kernels::act_scalar;

use super::linear::{produce_and_consume, removed_rows_constant};
use super::{
    activation, onnx_pads, onnx_pair, pad2d, probed, square, Constants, Coupling, HostOp, OnnxNode,
};
use crate::groups::Member;
use crate::ir::{HostModel, HostTensor};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Conv2d {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], probe: Option<&Tensor>) -> Result<Tensor> {
        // candle takes one stride and one padding for both axes: unequal padding is applied
        // beforehand, unequal strides by keeping every `stride`-th output of a stride-1 pass.
        let (s, p) = (self.stride, self.padding);
        let (x, pad) = match p {
            [a, b] if a == b => (ins[0].clone(), a as usize),
            _ => (pad2d(ins[0], p, 0.0)?, 0),
        };
        let step = if s[0] == s[1] { s[0] as usize } else { 1 };
        let mut y = x.conv2d(
            &params[self.weight as usize],
            pad,
            step,
            square(self.dilation, "dilation")?,
            self.groups as usize,
        )?;
        if step == 1 {
            for (dim, stride) in [(2, s[0] as usize), (3, s[1] as usize)] {
                if stride > 1 {
                    let keep: Vec<u32> = (0..y.dim(dim)? as u32).step_by(stride).collect();
                    y = y.index_select(&Tensor::new(keep, y.device())?, dim)?;
                }
            }
        }
        if let Some(b) = self.bias {
            y = y.broadcast_add(&params[b as usize].reshape((1, (), 1, 1))?)?;
        }
        activation(&probed(y, probe)?, self.act)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        let (x, out) = (cx.input(0), cx.output());
        let (cin, cout) = (cx.channels(x), cx.channels(out));
        if self.groups == 1 {
            let k = cx.tensor(self.weight).shape[2..].iter().product::<u32>() as usize;
            produce_and_consume(cx, k);
        } else if self.groups as usize == cin && cin == cout {
            cx.pass(x);
            let node = cx.index();
            for c in 0..cout {
                cx.member(out, c, Member::Depthwise { node, ch: c });
            }
        } else {
            cx.pin_all();
        }
    }

    /// A depthwise convolution is taken to see its input's constant everywhere (no padding).
    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        if self.groups == 1 {
            return removed_rows_constant(cx, self.act);
        }
        let (n, x) = (cx.out_channels(), cx.input(0));
        let w = cx.tensor(self.weight);
        let per = w.len() / n.max(1);
        (0..n)
            .map(|c| {
                x.get(c).copied().flatten().map(|v| {
                    let s: f32 = w[c * per..(c + 1) * per].iter().sum();
                    let b = self.bias.map_or(0.0, |b| cx.tensor(b)[c]);
                    act_scalar(self.act, v * s + b)
                })
            })
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let ks = w.tensor_shape(self.weight).to_vec();
        let mut inputs = vec![n.inputs[0].to_string(), w.tensor(self.weight)];
        if let Some(b) = self.bias {
            inputs.push(w.tensor(b));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        w.with_act(
            self.act,
            "Conv",
            n.name,
            &inputs,
            n.output,
            &[
                ("kernel_shape", Attr::Ints(vec![ks[2] as i64, ks[3] as i64])),
                ("strides", Attr::Ints(onnx_pair(self.stride))),
                ("dilations", Attr::Ints(onnx_pair(self.dilation))),
                ("pads", Attr::Ints(onnx_pads(self.padding))),
                ("group", Attr::Int(self.groups as i64)),
            ],
        );
    }
}

/// `bn(conv(x))` as one convolution, for a convolution without activation: its weight rows are
/// scaled and its bias shifted; the new weight and bias are appended to `m`'s tensors (under the
/// convolution's weight name and the BatchNorm's beta name).
pub fn fold_batchnorm(m: &mut HostModel, conv: &Conv2d, bn: &BatchNorm) -> Result<Conv2d> {
    ensure!(
        conv.act == Activation::None,
        "a BatchNorm folds only into a convolution without activation"
    );
    let t = &m.tensors;
    let scale: Vec<f32> = t[bn.gamma as usize]
        .data
        .iter()
        .zip(&t[bn.var as usize].data)
        .map(|(g, v)| g / (v + bn.eps).sqrt())
        .collect();
    let w = &t[conv.weight as usize];
    let per = w.numel() / scale.len().max(1);
    let wdata: Vec<f32> = w
        .data
        .iter()
        .enumerate()
        .map(|(k, v)| v * scale[k / per])
        .collect();
    let b0 = conv
        .bias
        .map(|b| t[b as usize].data.clone())
        .unwrap_or(vec![0.0; scale.len()]);
    let bdata: Vec<f32> = (0..scale.len())
        .map(|o| (b0[o] - t[bn.mean as usize].data[o]) * scale[o] + t[bn.beta as usize].data[o])
        .collect();
    let weight = HostTensor {
        name: w.name.clone(),
        shape: w.shape.clone(),
        data: wdata,
    };
    let bias = HostTensor {
        name: t[bn.beta as usize].name.clone(),
        shape: vec![scale.len() as u32],
        data: bdata,
    };
    m.tensors.push(weight);
    m.tensors.push(bias);
    let n = m.tensors.len() as u32;
    Ok(Conv2d {
        weight: n - 2,
        bias: Some(n - 1),
        ..conv.clone()
    })
}
