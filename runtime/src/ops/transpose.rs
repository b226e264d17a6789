//! Permutation of a value's axes (ONNX `Transpose`: channel shuffles, attention heads).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;

/// `y` has axis `i` of length `x.shape[perm[i]]`: `y[.., j_i, ..] = x[.., j at perm, ..]`. Axes
/// are per-example (the batch stays first); `perm` is a permutation of `0..rank`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transpose {
    pub perm: Vec<u32>,
}

impl OpDef for Transpose {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let x = ins[0];
        let mut seen = vec![false; x.len()];
        if self.perm.len() != x.len() {
            return Err(cx.bad(format!(
                "permutation {:?} of a rank-{} value",
                self.perm,
                x.len()
            )));
        }
        for &p in &self.perm {
            match seen.get_mut(p as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(cx.bad(format!("{:?} is not a permutation", self.perm))),
            }
        }
        Ok(self.perm.iter().map(|&p| x[p as usize]).collect())
    }

    fn label(&self) -> String {
        format!("Transpose{:?}", self.perm)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let x = cx.ins[0];
        let mut strides = vec![1usize; x.len()];
        for i in (0..x.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * x[i + 1] as usize;
        }
        Ok(Box::new(TransposeKernel {
            dims: cx.out.iter().map(|&d| d as usize).collect(),
            strides: self.perm.iter().map(|&p| strides[p as usize]).collect(),
        }))
    }
}

/// Walks the output in order; `strides[i]` is the input stride of output axis `i`.
#[derive(Debug)]
struct TransposeKernel {
    dims: Vec<usize>,
    strides: Vec<usize>,
}

impl Kernel for TransposeKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let n = ins.elems(0);
        let Some((&inner, outer_dims)) = self.dims.split_last() else {
            y.copy_from_slice(ins.get(0));
            return;
        };
        if n == 0 {
            return;
        }
        let (&step, outer_strides) = self.strides.split_last().expect("same rank as dims");
        let mut idx = vec![0usize; outer_dims.len()];
        for (xe, ye) in ins.get(0).chunks(n).zip(y.chunks_mut(n)) {
            idx.fill(0);
            let mut base = 0usize;
            for row in ye.chunks_mut(inner) {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = xe[base + k * step];
                }
                // Odometer over the outer axes, last fastest.
                for a in (0..outer_dims.len()).rev() {
                    idx[a] += 1;
                    base += outer_strides[a];
                    if idx[a] < outer_dims[a] {
                        break;
                    }
                    base -= outer_strides[a] * outer_dims[a];
                    idx[a] = 0;
                }
            }
        }
    }
}
