//! Element-wise product of two values: of one shape (`x · hardsigmoid(x)`), or a map and one
//! factor per channel (a squeeze-and-excitation gate).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{elementwise_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;
use crate::model::Model;

/// `y = a · b`. `b` has `a`'s shape, or `a`'s first (channel) dimension followed by ones, in
/// which case channel `c` of `a` is scaled by `b[c]`. The output has `a`'s shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mul;

impl Mul {
    /// Whether `b` holds one factor per channel of `a` (and not `a`'s own shape).
    pub fn is_gate(a: &[u32], b: &[u32]) -> bool {
        a != b && !a.is_empty() && b.first() == a.first() && b[1..].iter().all(|&d| d == 1)
    }
}

impl OpDef for Mul {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 2)?;
        if ins[0] != ins[1] && !Mul::is_gate(ins[0], ins[1]) {
            return Err(cx.bad(format!(
                "multiplies {:?} by {:?}: the second factor must have the first's shape or one \
                 value per channel",
                ins[0], ins[1]
            )));
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        "Mul".to_string()
    }

    fn flops(&self, _: &Model<'_>, _ins: &[&[u32]], out: &[u32]) -> (u64, u64) {
        let (f, _) = elementwise_flops(out);
        (f / 2, f / 2)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let (a, b) = (cx.ins[0], cx.ins[1]);
        Ok(Box::new(MulKernel {
            channels: Mul::is_gate(a, b).then(|| a[0] as usize),
        }))
    }
}

#[derive(Debug)]
struct MulKernel {
    /// `Some(C)` where the second factor has one value per channel.
    channels: Option<usize>,
}

impl Kernel for MulKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (a, b) = (ins.get(0), ins.get(1));
        match self.channels {
            None => {
                for ((yv, x), g) in y.iter_mut().zip(a).zip(b) {
                    *yv = x * g;
                }
            }
            Some(c) => {
                // `max(1)`: zero-sized maps have nothing to do, but `chunks` needs a size.
                let plane = (ins.elems(0) / c.max(1)).max(1);
                for ((yc, xc), g) in y.chunks_mut(plane).zip(a.chunks(plane)).zip(b) {
                    for (yv, x) in yc.iter_mut().zip(xc) {
                        *yv = x * g;
                    }
                }
            }
        }
    }
}
