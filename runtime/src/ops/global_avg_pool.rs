//! Mean over the spatial dimensions: `[C, H, W] -> [C]`.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// `[C, H, W] -> [C]`, the mean of each channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl OpDef for GlobalAvgPool {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [c, hh, w] = cx.chw(ins[0])?;
        if hh == 0 || w == 0 {
            return Err(cx.bad("global pooling of an empty map"));
        }
        Ok(vec![c])
    }

    fn label(&self) -> String {
        "GlobalAvgPool".to_string()
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(GapKernel {
            hw: cx.ins[0][1] as usize * cx.ins[0][2] as usize,
        }))
    }
}

#[derive(Debug)]
struct GapKernel {
    hw: usize,
}

impl Kernel for GapKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let inv = 1.0 / self.hw as f32;
        for (yv, xc) in y.iter_mut().zip(ins.get(0).chunks(self.hw)) {
            *yv = lane_sum(xc) * inv;
        }
    }
}

/// The sum of `x` in eight interleaved partial sums, which the compiler keeps in one vector;
/// a single running sum is a chain of dependent additions.
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut blocks = x.chunks_exact(8);
    for b in &mut blocks {
        for (a, v) in acc.iter_mut().zip(b) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(blocks.remainder()) {
        *a += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}
