//! Scaled dot-product attention: mixes positions and heads, so its channels are pinned.

use anyhow::Result;
use candle_core::{Tensor, D};
use nap_runtime::format::Attention;

use super::{HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Attention {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let (q, k, v) = (ins[0], ins[1], ins[2]);
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * self.scale as f64)?;
        Ok(candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)?)
    }

    /// `MatMul(q, Transpose(k))`, `Mul` by the scale, `Softmax`, `MatMul` by `v`: the form
    /// every opset runs.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let name = n.name;
        let (kt, qk, scaled, p) = (w.tmp(name), w.tmp(name), w.tmp(name), w.tmp(name));
        let perm = Attr::Ints(vec![0, 1, 3, 2]);
        w.node(
            "Transpose",
            &format!("{name}/kt"),
            &[n.inputs[1]],
            &kt,
            &[("perm", perm)],
        );
        w.node(
            "MatMul",
            &format!("{name}/qk"),
            &[n.inputs[0], &kt],
            &qk,
            &[],
        );
        let scale = w.scalar(self.scale);
        w.node(
            "Mul",
            &format!("{name}/scale"),
            &[&qk, &scale],
            &scaled,
            &[],
        );
        w.node(
            "Softmax",
            &format!("{name}/softmax"),
            &[&scaled],
            &p,
            &[("axis", Attr::Int(-1))],
        );
        w.node("MatMul", name, &[&p, n.inputs[2]], n.output, &[]);
    }
}
