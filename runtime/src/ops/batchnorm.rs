//! Inference BatchNorm, run as a per-channel affine map.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{elementwise_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::TensorId;
use crate::model::Model;

/// Inference BatchNorm over channels (the first per-example dimension):
/// `(x - mean) / sqrt(var + eps) * gamma + beta`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub gamma: TensorId,
    pub beta: TensorId,
    pub mean: TensorId,
    pub var: TensorId,
    pub eps: f32,
}

impl OpDef for BatchNorm {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let c = *ins[0]
            .first()
            .ok_or_else(|| cx.bad("BatchNorm of a scalar"))?;
        for (t, what) in [
            (self.gamma, "gamma"),
            (self.beta, "beta"),
            (self.mean, "mean"),
            (self.var, "var"),
        ] {
            cx.dense_vector(t, &[c], what)?;
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        "BatchNorm".to_string()
    }

    fn flops(&self, _: &Model<'_>, _ins: &[&[u32]], out: &[u32]) -> (u64, u64) {
        elementwise_flops(out)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let c = cx.ins[0][0] as usize;
        let [gm, bt, mn, vr] =
            [self.gamma, self.beta, self.mean, self.var].map(|t| cx.dense_f32(t));
        let (gm, bt, mn, vr) = (gm?, bt?, mn?, vr?);
        let p = cx.params();
        let scale: Vec<f32> = (0..c)
            .map(|j| gm.of(p)[j] / libm::sqrtf(vr.of(p)[j] + self.eps))
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|j| bt.of(p)[j] - mn.of(p)[j] * scale[j])
            .collect();
        Ok(Box::new(ChannelAffine {
            scale: cx.push_params(scale),
            shift: cx.push_params(shift),
            c,
        }))
    }
}

/// `y = x * scale[c] + shift[c]` per channel.
#[derive(Debug)]
pub(crate) struct ChannelAffine {
    scale: Range,
    shift: Range,
    c: usize,
}

impl Kernel for ChannelAffine {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let x = ins.get(0);
        let (s, t, c) = (self.scale.of(cx.params), self.shift.of(cx.params), self.c);
        // `max(1)`: a zero-sized value (c == 0 or an empty map) has nothing to do, but
        // `chunks` needs a non-zero size.
        let hw = (ins.elems(0) / c.max(1)).max(1);
        for (ch, (yc, xc)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
            let j = ch % c;
            for (yv, xv) in yc.iter_mut().zip(xc) {
                *yv = xv * s[j] + t[j];
            }
        }
    }
}
