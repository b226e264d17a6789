//! Local response normalisation: mixes neighbouring channels, so its channels are pinned.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Lrn;

use super::{HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Lrn {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let size = self.size as usize;
        let (below, above) = ((size - 1) / 2, size / 2);
        let sq = x.sqr()?;
        let c = sq.dim(1)?;
        let zeros = |n: usize| -> Result<Tensor> {
            let mut shape = sq.dims().to_vec();
            shape[1] = n;
            Ok(Tensor::zeros(shape, sq.dtype(), sq.device())?)
        };
        // Channel `ch` of the padded squares is channel `ch - below` of the map.
        let padded = Tensor::cat(&[&zeros(below)?, &sq, &zeros(above)?], 1)?;
        let mut sum = padded.narrow(1, 0, c)?;
        for k in 1..size {
            sum = (sum + padded.narrow(1, k, c)?)?;
        }
        let scale = self.alpha as f64 / size as f64;
        let denom = ((sum * scale)? + self.bias as f64)?.powf(self.beta as f64)?;
        Ok((x / denom)?)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let attrs = [
            ("size", Attr::Int(self.size as i64)),
            ("alpha", Attr::Float(self.alpha)),
            ("beta", Attr::Float(self.beta)),
            ("bias", Attr::Float(self.bias)),
        ];
        w.node("LRN", n.name, n.inputs, n.output, &attrs);
    }
}
