//! Nearest-neighbour upsampling by integer factors (ONNX `Resize` in nearest mode; feature
//! pyramids of detectors).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// `y[c, i, j] = x[c, i / scale[0], j / scale[1]]`: `[C, H, W] -> [C, H·s0, W·s1]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upsample {
    pub scale: [u32; 2],
}

impl OpDef for Upsample {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [c, h, w] = cx.chw(ins[0])?;
        if self.scale.contains(&0) {
            return Err(cx.bad("upsampling by a factor of 0"));
        }
        match (h.checked_mul(self.scale[0]), w.checked_mul(self.scale[1])) {
            (Some(oh), Some(ow)) => Ok(vec![c, oh, ow]),
            _ => Err(cx.bad("upsampled size overflows")),
        }
    }

    fn label(&self) -> String {
        format!("Upsample({}x{})", self.scale[0], self.scale[1])
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let s = |i: usize| cx.ins[0][i] as usize;
        Ok(Box::new(UpsampleKernel {
            hw: [s(1), s(2)],
            scale: self.scale.map(|v| v as usize),
        }))
    }
}

#[derive(Debug)]
struct UpsampleKernel {
    hw: [usize; 2],
    scale: [usize; 2],
}

impl Kernel for UpsampleKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let ([h, w], [sh, sw]) = (self.hw, self.scale);
        let (ow, plane) = (w * sw, h * w);
        if plane == 0 {
            return;
        }
        for (xp, yp) in ins.get(0).chunks(plane).zip(y.chunks_mut(plane * sh * sw)) {
            for (r, xr) in xp.chunks(w).enumerate() {
                let first = &mut yp[r * sh * ow..(r * sh + 1) * ow];
                for (o, &v) in first.chunks_mut(sw).zip(xr) {
                    o.fill(v);
                }
                for k in 1..sh {
                    yp.copy_within(r * sh * ow..(r * sh + 1) * ow, (r * sh + k) * ow);
                }
            }
        }
    }
}
