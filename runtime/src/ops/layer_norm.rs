//! Layer normalisation over the last axis (a transformer's LayerNorm).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{elementwise_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::TensorId;
use crate::model::Model;

/// `y = (x − mean) / sqrt(var + eps) · gamma + beta` over the last axis (length `D`; `gamma` and
/// `beta` are `[D]`), the variance the mean of the squared deviations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerNorm {
    pub gamma: TensorId,
    pub beta: TensorId,
    pub eps: f32,
}

impl OpDef for LayerNorm {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let Some(&d) = ins[0].last() else {
            return Err(cx.bad("LayerNorm of a value without axes"));
        };
        cx.dense_vector(self.gamma, &[d], "gamma")?;
        cx.dense_vector(self.beta, &[d], "beta")?;
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(cx.bad(format!("epsilon {}", self.eps)));
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        "LayerNorm".to_string()
    }

    fn flops(&self, _: &Model<'_>, _: &[&[u32]], out: &[u32]) -> (u64, u64) {
        let (f, _) = elementwise_flops(out);
        (4 * f, 4 * f)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(LayerNormKernel {
            d: *cx.ins[0].last().expect("checked by infer") as usize,
            gamma: cx.dense_f32(self.gamma)?,
            beta: cx.dense_f32(self.beta)?,
            eps: self.eps,
        }))
    }
}

#[derive(Debug)]
struct LayerNormKernel {
    d: usize,
    gamma: Range,
    beta: Range,
    eps: f32,
}

impl Kernel for LayerNormKernel {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        if self.d == 0 {
            return;
        }
        let (g, b) = (self.gamma.of(cx.params), self.beta.of(cx.params));
        let inv_d = 1.0 / self.d as f32;
        for (yr, xr) in y.chunks_mut(self.d).zip(ins.get(0).chunks(self.d)) {
            let mean = xr.iter().sum::<f32>() * inv_d;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() * inv_d;
            let inv = 1.0 / libm::sqrtf(var + self.eps);
            for (((o, &v), &gi), &bi) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                *o = (v - mean) * inv * gi + bi;
            }
        }
    }
}
