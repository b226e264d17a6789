//! Softmax over a feature vector.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// Softmax over a `[features]` vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax;

impl OpDef for Softmax {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        if ins[0].len() != 1 {
            return Err(cx.bad("Softmax expects a [features] vector"));
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        "Softmax".to_string()
    }

    fn plan(&self, _: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(Softmax))
    }
}

impl Kernel for Softmax {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let n = ins.elems(0).max(1); // zero-sized vectors: nothing to do
        for (yc, xc) in y.chunks_mut(n).zip(ins.get(0).chunks(n)) {
            let m = xc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for (yv, xv) in yc.iter_mut().zip(xc) {
                *yv = libm::expf(xv - m);
                s += *yv;
            }
            yc.iter_mut().for_each(|v| *v /= s);
        }
    }
}
