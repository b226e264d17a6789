//! A standalone element-wise activation.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{elementwise_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;
use crate::format::Activation;
use crate::kernels::apply_act;
use crate::model::Model;

impl OpDef for Activation {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        Ok(ins[0].to_vec())
    }

    fn label(&self) -> String {
        format!("{self:?}")
    }

    fn flops(&self, _: &Model<'_>, _ins: &[&[u32]], out: &[u32]) -> (u64, u64) {
        elementwise_flops(out)
    }

    fn plan(&self, _: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(ActKernel(*self)))
    }
}

#[derive(Debug)]
struct ActKernel(Activation);

impl Kernel for ActKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        y.copy_from_slice(ins.get(0));
        apply_act(self.0, y);
    }
}
