//! Flatten and Reshape. Flatten ties channel `c` of `[C, H, W]` to the `H·W` features it
//! becomes; a general Reshape pins its channels.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::{Flatten, Reshape};

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Flatten {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        Ok(ins[0].flatten_from(1)?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        let (x, out) = (cx.input(0), cx.output());
        let cin = cx.channels(x);
        let per = cx.channels(out) / cin.max(1);
        for c in 0..cin {
            for k in 0..per {
                cx.tie(x, c, out, c * per + k);
            }
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        let x = cx.input(0);
        let per = cx.out_channels() / x.len().max(1);
        x.iter()
            .flat_map(|&v| std::iter::repeat_n(v, per))
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.node(
            "Flatten",
            n.name,
            n.inputs,
            n.output,
            &[("axis", Attr::Int(1))],
        );
    }
}

impl HostOp for Reshape {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let mut s = vec![x.dim(0)?];
        s.extend(self.shape.iter().map(|&d| d as usize));
        Ok(x.reshape(s)?)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let s = w.tmp(&format!("{}/shape", n.name));
        let mut dims = vec![-1i64];
        dims.extend(self.shape.iter().map(|&d| d as i64));
        w.init_i64(&s, &dims);
        w.node("Reshape", n.name, &[n.inputs[0], &s], n.output, &[]);
    }
}
