//! Constant padding: channel by channel, so it carries channels through; a channel's constant
//! survives only where it equals the padding value.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Pad;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::Writer;

impl HostOp for Pad {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let mut x = ins[0].clone();
        let [t, l, b, r] = self.pads.map(|v| v as usize);
        for (dim, before, after) in [(2usize, t, b), (3, l, r)] {
            let mut parts = Vec::with_capacity(3);
            for n in [before, after] {
                let mut shape = x.dims().to_vec();
                shape[dim] = n;
                parts.push((n > 0).then(|| Tensor::full(self.value, shape, x.device())));
            }
            let (lo, hi) = (parts.remove(0), parts.remove(0));
            let mut all = Vec::new();
            if let Some(lo) = lo {
                all.push(lo?.to_dtype(x.dtype())?);
            }
            all.push(x.clone());
            if let Some(hi) = hi {
                all.push(hi?.to_dtype(x.dtype())?);
            }
            if all.len() > 1 {
                x = Tensor::cat(&all, dim)?;
            }
        }
        Ok(x)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0)
            .iter()
            .map(|v| v.filter(|&v| v == self.value))
            .collect()
    }

    /// `Pad` (opset 13+: pads and the value as inputs) on the two spatial axes.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let [t, l, b, r] = self.pads.map(|v| v as i64);
        let pads = w.tmp(&format!("{}/pads", n.name));
        w.init_i64(&pads, &[0, 0, t, l, 0, 0, b, r]);
        let value = w.scalar(self.value);
        w.node("Pad", n.name, &[n.inputs[0], &pads, &value], n.output, &[]);
    }
}
