//! Conv2d: with `groups == 1` a weight layer like Linear; depthwise convolutions carry channels
//! through; other grouped convolutions pin theirs. BatchNorm folds into it.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use nap_runtime::format::{Activation, BatchNorm, Conv2d};
use nap_runtime::kernels::act_scalar;

use super::constant_maps;
use super::linear::{produce_and_consume, removed_rows_constant};
use super::{
    activation, add_channel_bias, onnx_pair, pad2d, probed, square, window_attrs, Constants,
    Coupling, HostOp, OnnxNode,
};
use crate::groups::Member;
use crate::ir::{HostModel, HostTensor};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Conv2d {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], probe: Option<&Tensor>) -> Result<Tensor> {
        let w = &params[self.weight as usize];
        let c = ins[0].dim(1)?;
        if self.groups > 1 && self.groups as usize == c && w.dim(0)? == c {
            let mut y = depthwise(ins[0], w, self.stride, self.padding, self.dilation)?;
            if let Some(b) = self.bias {
                y = add_channel_bias(y, &params[b as usize])?;
            }
            return activation(&probed(y, probe)?, self.act);
        }
        // candle takes one stride and one padding for both axes: unequal padding is applied
        // beforehand, unequal strides by keeping every `stride`-th output of a stride-1 pass.
        let (s, p) = (self.stride, self.padding);
        let (x, pad) = match p {
            [a, b] if a == b => (ins[0].clone(), a as usize),
            _ => (pad2d(ins[0], p, 0.0)?, 0),
        };
        let step = if s[0] == s[1] { s[0] as usize } else { 1 };
        let mut y = x.conv2d(
            w,
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
            y = add_channel_bias(y, &params[b as usize])?;
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
        let ks = w.tensor_shape(self.weight);
        let mut attrs = window_attrs([ks[2], ks[3]], self.stride, self.padding);
        attrs.push(("dilations", Attr::Ints(onnx_pair(self.dilation))));
        attrs.push(("group", Attr::Int(self.groups as i64)));
        let inputs = w.weighted_inputs(n.inputs[0], self.weight, self.bias);
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        w.with_act(self.act, "Conv", n.name, &inputs, n.output, &attrs);
    }
}

/// A depthwise convolution (`x` `[N, C, H, W]`, `w` `[C, 1, kh, kw]`). candle runs a grouped
/// convolution as one convolution per group, whose backward pass costs a pass over the whole
/// input per group. A constant kernel (statistics, evaluation) runs as one custom op on the
/// CPU; a trained one as a sum over the kernel's taps of the input window each sees, scaled per
/// channel, whose backward pass costs a pass per tap.
fn depthwise(
    x: &Tensor,
    w: &Tensor,
    stride: [u32; 2],
    padding: [u32; 2],
    dilation: [u32; 2],
) -> Result<Tensor> {
    let (c, _, kh, kw) = w.dims4()?;
    let (h, wd) = (x.dim(2)?, x.dim(3)?);
    let [s0, s1, p0, p1, d0, d1] = [stride, padding, dilation]
        .concat()
        .try_into()
        .map(|a: [u32; 6]| a.map(|v| v as usize))
        .expect("three pairs");
    let span = |k: usize, d: usize| d * (k - 1) + 1;
    ensure!(
        h + 2 * p0 >= span(kh, d0) && wd + 2 * p1 >= span(kw, d1),
        "the depthwise window does not fit the input"
    );
    let (oh, ow) = (
        (h + 2 * p0 - span(kh, d0)) / s0 + 1,
        (wd + 2 * p1 - span(kw, d1)) / s1 + 1,
    );
    if constant_maps::applies(x) && !w.track_op() {
        let geom = constant_maps::DepthwiseGeom {
            kernel: [kh, kw],
            stride: [s0, s1],
            pad: [p0, p1],
            dilation: [d0, d1],
            out: [oh, ow],
        };
        let w = w
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        return constant_maps::depthwise(x, w, geom);
    }
    let xp = pad2d(x, padding, 0.0)?;
    // The input rows (columns) that tap `i` reads, one per output row (column).
    let window = |t: &Tensor, dim: usize, first: usize, step: usize, n: usize| -> Result<Tensor> {
        Ok(if step == 1 {
            t.narrow(dim, first, n)?
        } else {
            let idx: Vec<u32> = (0..n).map(|r| (first + r * step) as u32).collect();
            t.index_select(&Tensor::new(idx, t.device())?, dim)?
        })
    };
    let mut acc: Option<Tensor> = None;
    for i in 0..kh {
        let rows = window(&xp, 2, i * d0, s0, oh)?;
        for j in 0..kw {
            let tap = window(&rows, 3, j * d1, s1, ow)?;
            let wij = w.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((1, c, 1, 1))?;
            let t = tap.broadcast_mul(&wij)?;
            acc = Some(match acc {
                None => t,
                Some(a) => (a + t)?,
            });
        }
    }
    acc.ok_or_else(|| anyhow::anyhow!("empty depthwise kernel"))
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::depthwise;
    use crate::ops::tests::max_diff;

    /// Both depthwise forms (a constant kernel's custom op, a trained kernel's taps) against
    /// candle's grouped convolution (the stride-1 pass subsampled, for unequal strides), and
    /// their input gradients against each other, on strides, paddings and dilations of real
    /// models.
    #[test]
    fn depthwise_taps_equal_candle_grouped_convolution() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 11), &dev).unwrap();
        for (k, s, p, d) in [
            (3, [1, 1], [1, 1], [1, 1]),
            (3, [2, 2], [1, 1], [1, 1]),
            (5, [2, 1], [2, 2], [1, 1]),
            (3, [1, 1], [2, 2], [2, 2]),
            (1, [1, 1], [0, 0], [1, 1]),
        ] {
            let w = Tensor::randn(0f32, 1.0, (5, 1, k, k), &dev).unwrap();
            let got = depthwise(&x, &w, s, p, d).unwrap();
            // The trainable-kernel path (a `Var` kernel), and both paths' input gradients.
            let xv = Var::from_tensor(&x).unwrap();
            let wv = Var::from_tensor(&w).unwrap();
            let taps = depthwise(xv.as_tensor(), wv.as_tensor(), s, p, d).unwrap();
            let fused = depthwise(xv.as_tensor(), &w, s, p, d).unwrap();
            let r = Tensor::randn(0f32, 1.0, taps.dims(), &dev).unwrap();
            let grad = |y: &Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(xv.as_tensor()).unwrap().clone()
            };
            assert!(max_diff(&taps, &got) < 1e-5, "k {k} s {s:?}: tap path");
            assert!(
                max_diff(&grad(&taps), &grad(&fused)) < 1e-5,
                "k {k} s {s:?} p {p:?} d {d:?}: input gradients"
            );
            let full = x.conv2d(&w, p[0] as usize, 1, d[0] as usize, 5).unwrap();
            let rows: Vec<u32> = (0..got.dim(2).unwrap() as u32).map(|r| r * s[0]).collect();
            let cols: Vec<u32> = (0..got.dim(3).unwrap() as u32).map(|c| c * s[1]).collect();
            let want = full
                .index_select(&Tensor::new(rows, &dev).unwrap(), 2)
                .unwrap()
                .index_select(&Tensor::new(cols, &dev).unwrap(), 3)
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "k {k} s {s:?} p {p:?} d {d:?}");
            let err = max_diff(&got, &want);
            assert!(err < 1e-5, "k {k} s {s:?} p {p:?} d {d:?}: {err}");
        }
    }
}
