//! Activations: element-wise, so they carry channels and constants through.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Activation;
use nap_runtime::kernels::act_scalar;

use super::{constant_maps, Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::Writer;

/// `a(x)` in candle.
pub fn activation(x: &Tensor, a: Activation) -> Result<Tensor> {
    let clamps = matches!(
        a,
        Activation::Relu6
            | Activation::HardSwish
            | Activation::HardSigmoid { .. }
            | Activation::LeakyRelu { .. }
    );
    if clamps && constant_maps::applies(x) {
        return constant_maps::clamp_act(x, a);
    }
    Ok(match a {
        Activation::None => x.clone(),
        Activation::Relu => x.relu()?,
        Activation::Relu6 => x.clamp(0f32, 6f32)?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Activation::Tanh => x.tanh()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::Silu => x.silu()?,
        Activation::HardSwish => (x * ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?)?,
        Activation::HardSigmoid { alpha, beta } => {
            x.affine(alpha as f64, beta as f64)?.clamp(0f32, 1f32)?
        }
        Activation::LeakyRelu { alpha } => {
            (x.relu()? - x.neg()?.relu()?.affine(alpha as f64, 0.0)?)?
        }
    })
}

impl HostOp for Activation {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        activation(ins[0], *self)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pass(cx.input(0));
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        cx.input(0)
            .iter()
            .map(|v| v.map(|v| act_scalar(*self, v)))
            .collect()
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.act(*self, n.name, n.inputs[0], n.output);
    }
}
