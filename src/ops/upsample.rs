//! Nearest-neighbour upsampling: channel by channel, so it carries channels and constants
//! through.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Upsample;

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

impl HostOp for Upsample {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let [sh, sw] = self.scale.map(|s| s as usize);
        Ok(x.upsample_nearest2d(h * sh, w * sw)?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0).to_vec()
    }

    /// `Resize` (opset 13+: inputs X, roi, scales) in nearest mode with floor rounding of
    /// asymmetric coordinates, which is exactly integer replication.
    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let scales = w.tmp(&format!("{}/scales", n.name));
        w.init_f32(
            &scales,
            &[4],
            &[1.0, 1.0, self.scale[0] as f32, self.scale[1] as f32],
        );
        w.node(
            "Resize",
            n.name,
            &[n.inputs[0], "", &scales],
            n.output,
            &[
                ("mode", Attr::Str("nearest".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        );
    }
}
