//! Element-wise sum of two values of one shape (residual connections).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{elementwise_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;
use crate::format::Activation;
use crate::kernels::apply_act;
use crate::model::Model;
use crate::par::par_elems;

/// Element-wise sum of two values of one shape, then `act`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Add {
    pub act: Activation,
}

impl OpDef for Add {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 2)?;
        if ins[0] != ins[1] {
            return Err(cx.bad(format!("adds {:?} and {:?}", ins[0], ins[1])));
        }
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        format!("Add+{:?}", self.act)
    }

    fn flops(&self, _: &Model<'_>, _ins: &[&[u32]], out: &[u32]) -> (u64, u64) {
        elementwise_flops(out)
    }

    fn plan(&self, _: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(self.clone()))
    }
}

impl Kernel for Add {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (a, b) = (ins.get(0), ins.get(1));
        par_elems(cx.pool, y, &|start, part| {
            let n = part.len();
            for ((yv, a0), a1) in part
                .iter_mut()
                .zip(&a[start..start + n])
                .zip(&b[start..start + n])
            {
                *yv = a0 + a1;
            }
            apply_act(self.act, part);
        });
    }
}
