//! Layer normalisation over the last axis: mixes the values of a row, so its channels are
//! pinned.

use anyhow::Result;
use candle_core::{Tensor, D};
use nap_runtime::format::LayerNorm;

use super::{HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for LayerNorm {
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps as f64)?.sqrt()?)?;
        let (g, b) = (&params[self.gamma as usize], &params[self.beta as usize]);
        Ok(normed.broadcast_mul(g)?.broadcast_add(b)?)
    }

    /// `LayerNormalization` (opset 17) over the last axis.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let (g, b) = (w.tensor(self.gamma), w.tensor(self.beta));
        w.node(
            "LayerNormalization",
            n.name,
            &[n.inputs[0], &g, &b],
            n.output,
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(self.eps))],
        );
    }
}
