//! BatchNorm: carries channels through; its four vectors are members of each channel.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::BatchNorm;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::groups::Member;
use crate::onnx_out::{Attr, Writer};

impl HostOp for BatchNorm {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let ps = [self.gamma, self.beta, self.mean, self.var].map(|t| &params[t as usize]);
        if super::constant_maps::applies(x) && !ps.iter().any(|p| p.track_op()) {
            let [g, b, m, v] = ps.map(|p| {
                p.to_dtype(candle_core::DType::F64)
                    .and_then(|p| p.to_vec1::<f64>())
            });
            let (g, b, m, v) = (g?, b?, m?, v?);
            let scale: Vec<f64> = g
                .iter()
                .zip(&v)
                .map(|(g, v)| g / (v + self.eps as f64).sqrt())
                .collect();
            let shift = (0..scale.len()).map(|c| b[c] - m[c] * scale[c]).collect();
            return super::constant_maps::channel_affine(x, scale, shift);
        }
        let shape: Vec<usize> = (0..x.rank())
            .map(|i| if i == 1 { x.dim(1).unwrap_or(1) } else { 1 })
            .collect();
        let p = |id: u32| params[id as usize].reshape(shape.clone());
        let inv = (p(self.var)? + self.eps as f64)?.sqrt()?.recip()?;
        let scale = p(self.gamma)?.mul(&inv)?;
        Ok(x.broadcast_sub(&p(self.mean)?)?
            .broadcast_mul(&scale)?
            .broadcast_add(&p(self.beta)?)?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        let (x, out, node) = (cx.input(0), cx.output(), cx.index());
        cx.pass(x);
        for c in 0..cx.channels(out) {
            cx.member(out, c, Member::Norm { node, ch: c });
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        let t = |id| cx.tensor(id);
        let x = cx.input(0);
        (0..cx.out_channels())
            .map(|c| {
                x[c].map(|v| {
                    (v - t(self.mean)[c]) / (t(self.var)[c] + self.eps).sqrt() * t(self.gamma)[c]
                        + t(self.beta)[c]
                })
            })
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let inputs = [
            n.inputs[0].to_string(),
            w.tensor(self.gamma),
            w.tensor(self.beta),
            w.tensor(self.mean),
            w.tensor(self.var),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        w.node(
            "BatchNormalization",
            n.name,
            &inputs,
            n.output,
            &[("epsilon", Attr::Float(self.eps))],
        );
    }
}
