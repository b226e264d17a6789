//! Shape changes of contiguous data: the kernel is a copy.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{CopyKernel, InferCx, Kernel, OpDef, PlanCx};
use crate::error::{Error, Result};
use crate::model::numel;

/// Any shape to `[numel]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flatten;

/// Any shape to `shape` of the same number of elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshape {
    pub shape: Vec<u32>,
}

impl OpDef for Flatten {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let n = numel(ins[0]).ok_or(Error::Overflow("value shape"))?;
        Ok(vec![
            u32::try_from(n).map_err(|_| Error::Overflow("value shape"))?
        ])
    }

    fn label(&self) -> String {
        "Flatten".to_string()
    }

    fn plan(&self, _: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(CopyKernel))
    }
}

impl OpDef for Reshape {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        if numel(ins[0]) != numel(&self.shape) {
            return Err(cx.bad(format!("cannot reshape {:?} to {:?}", ins[0], self.shape)));
        }
        Ok(self.shape.clone())
    }

    fn label(&self) -> String {
        "Reshape".to_string()
    }

    fn plan(&self, _: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(CopyKernel))
    }
}
