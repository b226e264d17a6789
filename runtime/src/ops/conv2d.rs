//! 2-D convolution (PyTorch `Conv2d`), grouped and depthwise, dense or sparse weights.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{weight_flops, window_out, InferCx, Inputs, Kernel, OpDef, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::{Activation, TensorId};
use crate::kernels::{self, Bias, ConvGeom, Elems, MatRef};
use crate::model::{Model, TensorView};
use crate::par::{par_depthwise, par_gemm, par_spmm, slice_elems};

/// PyTorch `Conv2d` followed by `act`; weight `[out, in/groups, kh, kw]`. Attributes are
/// `[height, width]` pairs; padding is symmetric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub stride: [u32; 2],
    pub padding: [u32; 2],
    pub dilation: [u32; 2],
    pub groups: u32,
    pub act: Activation,
}

impl OpDef for Conv2d {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [c, hh, ww] = cx.chw(ins[0])?;
        let w = cx.tensor(self.weight)?;
        let [co, ci, kh, kw] = match w[..] {
            [a, b, c, d] => [a, b, c, d],
            _ => return Err(cx.bad("Conv2d weight must be [out, in/groups, kh, kw]")),
        };
        let g = self.groups;
        if g == 0 || c % g != 0 || co % g != 0 || ci.checked_mul(g) != Some(c) {
            return Err(cx.bad(format!(
                "input channels {c}, groups {g} and weight {w:?} disagree"
            )));
        }
        let (s, p, d) = (self.stride, self.padding, self.dilation);
        let oh = window_out(hh, kh, s[0], p[0], d[0]);
        let ow = window_out(ww, kw, s[1], p[1], d[1]);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return Err(cx.bad("convolution window does not fit the input"));
        };
        if let Some(b) = self.bias {
            cx.dense_vector(b, &[co], "bias")?;
        }
        Ok(vec![co, oh, ow])
    }

    fn label(&self) -> String {
        format!("Conv2d(g{})+{:?}", self.groups, self.act)
    }

    fn flops(&self, model: &Model<'_>, _ins: &[&[u32]], out: &[u32]) -> (u64, u64) {
        weight_flops(
            model,
            self.weight,
            out.iter().skip(1).map(|&d| d as u64).product(),
        )
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let ws = &cx.model.tensor_entry(self.weight).shape;
        let gm = cx.geom([ws[2], ws[3]], self.stride, self.padding, self.dilation);
        let (c, out_c) = (gm.c, cx.out[0] as usize);
        let groups = self.groups as usize;
        let dense = cx.densify(self.weight, cx.policy.max_density_gemm, None)?;
        // The depthwise kernel takes dense weights only; CSR depthwise weights go through the
        // grouped path, which needs the im2col scratch.
        let depthwise = groups == c
            && out_c == c
            && groups > 1
            && (dense.is_some() || matches!(cx.model.tensor(self.weight), TensorView::Dense(_)));
        let direct = gm.kh == 1 && gm.kw == 1 && gm.stride == [1, 1] && gm.pad == [0, 0];
        if !depthwise {
            let cpg = c / groups;
            if !direct {
                cx.need_scratch(kernels::im2col_len(&gm, cpg));
            }
            cx.need_gemm_ws(kernels::gemm_workspace(
                out_c / groups,
                gm.oh * gm.ow,
                cpg * gm.kh * gm.kw,
            ));
        }
        Ok(Box::new(ConvKernel {
            weight: self.weight,
            dense,
            bias: self.bias.map(|b| cx.dense_f32(b)).transpose()?,
            act: self.act,
            geom: gm,
            groups,
            out_c,
            depthwise,
            direct,
        }))
    }
}

#[derive(Debug)]
struct ConvKernel {
    weight: TensorId,
    /// The sparse weight expanded into the parameters by the [`crate::SparsePolicy`].
    dense: Option<Range>,
    bias: Option<Range>,
    act: Activation,
    geom: ConvGeom,
    groups: usize,
    out_c: usize,
    depthwise: bool,
    /// 1×1, stride 1, no padding: the input is its own patch matrix.
    direct: bool,
}

impl Kernel for ConvKernel {
    fn expanded(&self) -> bool {
        self.dense.is_some()
    }

    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (gm, groups, act) = (&self.geom, self.groups, self.act);
        let x = ins.get(0);
        let bias = self.bias.map(|b| b.of(cx.params));
        let wv = match self.dense {
            Some(r) => TensorView::Dense(Elems::F32(r.of(cx.params))),
            None => cx.model.tensor(self.weight),
        };
        let in_len = ins.elems(0);
        let out_len = self.out_c * gm.oh * gm.ow;
        let p = gm.oh * gm.ow;
        let cpg = gm.c / groups;
        let opg = self.out_c / groups;
        let k = cpg * gm.kh * gm.kw;
        for e in 0..cx.n {
            let xe = &x[e * in_len..(e + 1) * in_len];
            let ye = &mut y[e * out_len..(e + 1) * out_len];
            match wv {
                TensorView::Dense(w) if self.depthwise => {
                    par_depthwise(cx.pool, gm, xe, w, bias, act, ye);
                }
                _ => {
                    for gi in 0..groups {
                        let cols: &[f32] = if self.direct {
                            &xe[gi * cpg * p..(gi + 1) * cpg * p]
                        } else {
                            let s = &mut cx.scratch[..k * p];
                            kernels::im2col(gm, xe, gi * cpg, cpg, s);
                            s
                        };
                        let yg = &mut ye[gi * opg * p..(gi + 1) * opg * p];
                        let bg = bias.map(|b| &b[gi * opg..(gi + 1) * opg]);
                        match wv {
                            TensorView::Dense(w) => {
                                let wg = slice_elems(w, gi * opg * k);
                                let a = MatRef::row_major(wg, opg, k);
                                let bm = MatRef::row_major(Elems::F32(cols), k, p);
                                par_gemm(
                                    cx.pool,
                                    a,
                                    bm,
                                    yg,
                                    p,
                                    bg.map_or(Bias::None, Bias::Row),
                                    act,
                                    cx.gemm_ws,
                                    cx.ws_len,
                                );
                            }
                            TensorView::BlockCsr(_) => {
                                unreachable!("planning expands blocked convolution weights")
                            }
                            TensorView::Csr(w) => par_spmm(
                                cx.pool,
                                &w,
                                gi * opg..(gi + 1) * opg,
                                cols,
                                p,
                                bias,
                                act,
                                yg,
                            ),
                        }
                    }
                }
            }
        }
    }
}
