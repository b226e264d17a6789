//! Scaled dot-product attention of separate heads (ONNX `Attention`, or the `MatMul`, `Softmax`,
//! `MatMul` it is exported as).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::softmax::softmax_in_place;
use super::{InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;
use crate::model::Model;

/// `y[h] = softmax(scale · q[h] k[h]ᵀ) v[h]` for each head `h`, the softmax over each row: inputs
/// `q [H, T, d]`, `k [H, S, d]` and `v [H, S, dv]`, output `[H, T, dv]`. No mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub scale: f32,
}

impl OpDef for Attention {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 3)?;
        let (q, k, v) = (ins[0], ins[1], ins[2]);
        let ok = match (q, k, v) {
            ([h, _, d], [hk, s, dk], [hv, sv, _]) => h == hk && h == hv && d == dk && s == sv,
            _ => false,
        };
        if !ok {
            return Err(cx.bad(format!(
                "query {q:?}, key {k:?} and value {v:?} are not [H, T, d], [H, S, d], [H, S, dv]"
            )));
        }
        if k[1] == 0 {
            return Err(cx.bad("attention over no keys"));
        }
        if !self.scale.is_finite() {
            return Err(cx.bad("a non-finite scale"));
        }
        Ok(vec![q[0], q[1], v[2]])
    }

    fn label(&self) -> String {
        "Attention".to_string()
    }

    fn flops(&self, _: &Model<'_>, ins: &[&[u32]], _: &[u32]) -> (u64, u64) {
        let u = |v: u32| v as u64;
        let (h, t, d, s, dv) = (
            u(ins[0][0]),
            u(ins[0][1]),
            u(ins[0][2]),
            u(ins[1][1]),
            u(ins[2][2]),
        );
        let f = 2 * h * t * s * (d + dv);
        (f, f)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let u = |v: u32| v as usize;
        let (q, k, v) = (cx.ins[0], cx.ins[1], cx.ins[2]);
        let (t, s) = (u(q[1]), u(k[1]));
        cx.need_scratch(t.saturating_mul(s));
        Ok(Box::new(AttentionKernel {
            heads: u(q[0]),
            t,
            s,
            d: u(q[2]),
            dv: u(v[2]),
            scale: self.scale,
        }))
    }
}

#[derive(Debug)]
struct AttentionKernel {
    heads: usize,
    t: usize,
    s: usize,
    d: usize,
    dv: usize,
    scale: f32,
}

impl Kernel for AttentionKernel {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (t, s, d, dv) = (self.t, self.s, self.d, self.dv);
        let (q, k, v) = (ins.get(0), ins.get(1), ins.get(2));
        let p = &mut cx.scratch[..t * s];
        for h in 0..cx.n * self.heads {
            let (qh, kh) = (
                &q[h * t * d..(h + 1) * t * d],
                &k[h * s * d..(h + 1) * s * d],
            );
            let vh = &v[h * s * dv..(h + 1) * s * dv];
            let yh = &mut y[h * t * dv..(h + 1) * t * dv];
            for (i, pr) in p.chunks_mut(s.max(1)).enumerate().take(t) {
                let qi = &qh[i * d..(i + 1) * d];
                for (j, pj) in pr.iter_mut().enumerate() {
                    let kj = &kh[j * d..(j + 1) * d];
                    *pj = self.scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>();
                }
                softmax_in_place(pr);
                let yi = &mut yh[i * dv..(i + 1) * dv];
                yi.fill(0.0);
                for (j, &w) in pr.iter().enumerate() {
                    for (o, &vv) in yi.iter_mut().zip(&vh[j * dv..(j + 1) * dv]) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
}
