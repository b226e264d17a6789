//! Concatenation along channels.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// Concatenation along channels (the first per-example dimension) of two or more inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concat;

impl OpDef for Concat {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        if ins.len() < 2 {
            return Err(cx.bad("Concat needs at least two inputs"));
        }
        let mut out = ins[0].to_vec();
        if out.is_empty() {
            return Err(cx.bad("Concat of scalars"));
        }
        for s in &ins[1..] {
            if s.len() != out.len() || s[1..] != out[1..] {
                return Err(cx.bad(format!("cannot concatenate {:?} with {:?}", ins[0], s)));
            }
            out[0] = out[0]
                .checked_add(s[0])
                .ok_or_else(|| cx.bad("channel count overflows"))?;
        }
        Ok(out)
    }

    fn label(&self) -> String {
        "Concat".to_string()
    }

    fn plan(&self, _: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(Concat))
    }
}

impl Kernel for Concat {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let mut at = 0;
        for e in 0..cx.n {
            for i in 0..ins.len() {
                let (x, len) = (ins.get(i), ins.elems(i));
                y[at..at + len].copy_from_slice(&x[e * len..(e + 1) * len]);
                at += len;
            }
        }
    }
}
