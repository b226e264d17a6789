//! A range along one axis (ONNX `Slice` with step 1, `Split`; a transformer's query, key and
//! value taken from one projection).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// Positions `start..end` of per-example axis `axis`; the other axes are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub axis: u32,
    pub start: u32,
    pub end: u32,
}

impl OpDef for Slice {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let x = ins[0];
        let Some(&len) = x.get(self.axis as usize) else {
            return Err(cx.bad(format!("axis {} of a rank-{} value", self.axis, x.len())));
        };
        if self.start >= self.end || self.end > len {
            return Err(cx.bad(format!(
                "range {}..{} of an axis of {len}",
                self.start, self.end
            )));
        }
        let mut y = x.to_vec();
        y[self.axis as usize] = self.end - self.start;
        Ok(y)
    }

    fn label(&self) -> String {
        format!("Slice(axis {}, {}..{})", self.axis, self.start, self.end)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let x = cx.ins[0];
        let a = self.axis as usize;
        let size = |d: &[u32]| d.iter().map(|&v| v as usize).product::<usize>();
        let inner = size(&x[a + 1..]);
        Ok(Box::new(SliceKernel {
            stride: x[a] as usize * inner,
            offset: self.start as usize * inner,
            len: (self.end - self.start) as usize * inner,
        }))
    }
}

/// Copies `len` floats at `offset` of each block of `stride` floats.
#[derive(Debug)]
struct SliceKernel {
    stride: usize,
    offset: usize,
    len: usize,
}

impl Kernel for SliceKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        if self.len == 0 {
            return;
        }
        let x = ins.get(0);
        for (yb, xb) in y.chunks_mut(self.len).zip(x.chunks(self.stride)) {
            yb.copy_from_slice(&xb[self.offset..self.offset + self.len]);
        }
    }
}
