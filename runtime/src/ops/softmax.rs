//! Softmax over the last axis (a classifier's features, a sequence model's classes per step).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// Softmax over the last axis: of a `[features]` vector, or of each row of a `[rows, classes]`
/// value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax;

impl OpDef for Softmax {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        if ins[0].is_empty() {
            return Err(cx.bad("Softmax of a value without axes"));
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        "Softmax".to_string()
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(SoftmaxKernel {
            last: *cx.ins[0].last().expect("checked by infer") as usize,
        }))
    }
}

#[derive(Debug)]
struct SoftmaxKernel {
    last: usize,
}

impl Kernel for SoftmaxKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let n = self.last.max(1); // zero-sized rows: nothing to do
        for (yc, xc) in y.chunks_mut(n).zip(ins.get(0).chunks(n)) {
            yc.copy_from_slice(xc);
            softmax_in_place(yc);
        }
    }
}

/// Replaces `v` by its softmax.
pub(crate) fn softmax_in_place(v: &mut [f32]) {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // An f32 running sum of thousands of terms (a recogniser's classes) drifts by 1e-5.
    let mut s = 0f64;
    for x in v.iter_mut() {
        *x = libm::expf(*x - m);
        s += *x as f64;
    }
    let inv = (1.0 / s) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
}
