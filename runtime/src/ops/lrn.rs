//! Local response normalisation across channels (ONNX `LRN`; AlexNet, GoogLeNet).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{elementwise_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;
use crate::model::Model;

/// `y[c] = x[c] / (bias + alpha / size · Σ x[i]²)^beta`, the sum over the channels
/// `i ∈ [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉]` inside `[0, C)`, at every position of a `[C, ...]`
/// value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lrn {
    pub size: u32,
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
}

impl OpDef for Lrn {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        if ins[0].is_empty() {
            return Err(cx.bad("LRN of a value without channels"));
        }
        if self.size == 0 {
            return Err(cx.bad("LRN over a window of 0 channels"));
        }
        if ![self.alpha, self.beta, self.bias]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(cx.bad("LRN with a non-finite attribute"));
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        format!("Lrn({})", self.size)
    }

    fn flops(&self, _: &Model<'_>, _: &[&[u32]], out: &[u32]) -> (u64, u64) {
        let (f, _) = elementwise_flops(out);
        let f = f * (self.size as u64 + 2);
        (f, f)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let c = cx.ins[0][0] as usize;
        let plane = cx.ins[0][1..].iter().map(|&d| d as usize).product();
        Ok(Box::new(LrnKernel {
            op: self.clone(),
            c,
            plane,
        }))
    }
}

#[derive(Debug)]
struct LrnKernel {
    op: Lrn,
    c: usize,
    plane: usize,
}

impl Kernel for LrnKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (c, plane, size) = (self.c, self.plane, self.op.size as usize);
        let n = c * plane;
        if n == 0 {
            return;
        }
        let (below, above) = ((size - 1) / 2, size / 2);
        let scale = self.op.alpha / size as f32;
        for (xe, ye) in ins.get(0).chunks(n).zip(y.chunks_mut(n)) {
            for (ch, yp) in ye.chunks_mut(plane).enumerate() {
                yp.fill(0.0);
                for i in ch.saturating_sub(below)..(ch + above + 1).min(c) {
                    for (s, &v) in yp.iter_mut().zip(&xe[i * plane..(i + 1) * plane]) {
                        *s += v * v;
                    }
                }
                for (s, &v) in yp.iter_mut().zip(&xe[ch * plane..(ch + 1) * plane]) {
                    *s = v / libm::powf(self.op.bias + scale * *s, self.op.beta);
                }
            }
        }
    }
}
