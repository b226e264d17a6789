//! Constant padding of a map's borders (ONNX `Pad`; the uneven part of a convolution's or
//! pooling's padding).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// `[C, H, W] -> [C, top + H + bottom, left + W + right]`, the new cells `value` (which may be
/// minus infinity, before a max pooling). `pads` is `[top, left, bottom, right]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pad {
    pub pads: [u32; 4],
    pub value: f32,
}

impl OpDef for Pad {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [c, h, w] = cx.chw(ins[0])?;
        if self.value.is_nan() {
            return Err(cx.bad("padding with NaN"));
        }
        let [t, l, b, r] = self.pads;
        match (
            h.checked_add(t).and_then(|v| v.checked_add(b)),
            w.checked_add(l).and_then(|v| v.checked_add(r)),
        ) {
            (Some(oh), Some(ow)) => Ok(vec![c, oh, ow]),
            _ => Err(cx.bad("padded size overflows")),
        }
    }

    fn label(&self) -> String {
        format!("Pad{:?}", self.pads)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let u = |v: u32| v as usize;
        Ok(Box::new(PadKernel {
            hw: [u(cx.ins[0][1]), u(cx.ins[0][2])],
            pads: self.pads.map(u),
            value: self.value,
        }))
    }
}

#[derive(Debug)]
struct PadKernel {
    hw: [usize; 2],
    pads: [usize; 4],
    value: f32,
}

impl Kernel for PadKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let ([h, w], [t, l, b, r]) = (self.hw, self.pads);
        let ow = l + w + r;
        let (in_plane, out_plane) = (h * w, (t + h + b) * ow);
        y.fill(self.value);
        if in_plane == 0 || out_plane == 0 {
            return;
        }
        for (xp, yp) in ins.get(0).chunks(in_plane).zip(y.chunks_mut(out_plane)) {
            for (row, xr) in xp.chunks(w).enumerate() {
                let at = (t + row) * ow + l;
                yp[at..at + w].copy_from_slice(xr);
            }
        }
    }
}
