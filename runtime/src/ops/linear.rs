//! Fully connected layer: `y = act(W x + b)`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{weight_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::{Activation, TensorId};
use crate::kernels::{self, BOperand, Bias, Elems, MatRef};
use crate::model::{Model, TensorView};
use crate::par::{par_gemm, par_gemv, par_spmm, par_spmv};

/// `y = act(W x + b)`, `W` of shape `[out, in]`, input `[in]`. A pruning candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub act: Activation,
}

/// [`Linear`] applied to each row of a `[rows, in]` value (any number of leading axes), giving
/// `[rows, out]`: a transformer's projections (ONNX `MatMul` by a constant of a rank-3 value).
/// Not a pruning candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearRows {
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub act: Activation,
}

/// `[out, in]` of the weight, checked against the input's last axis and the bias.
fn linear_dims(
    cx: &InferCx<'_>,
    x: &[u32],
    weight: TensorId,
    bias: Option<TensorId>,
) -> Result<[u32; 2]> {
    let w = cx.tensor(weight)?;
    let [out, inp] = match w[..] {
        [o, i] => [o, i],
        _ => return Err(cx.bad("Linear weight must be [out, in]")),
    };
    if x.last() != Some(&inp) {
        return Err(cx.bad(format!("input {x:?} does not match weight [{out}, {inp}]")));
    }
    if let Some(b) = bias {
        cx.dense_vector(b, &[out], "bias")?;
    }
    Ok([out, inp])
}

impl OpDef for Linear {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        if ins[0].len() != 1 {
            return Err(cx.bad(format!("input {:?} is not a vector", ins[0])));
        }
        let [out, _] = linear_dims(cx, ins[0], self.weight, self.bias)?;
        Ok(vec![out])
    }

    fn label(&self) -> String {
        format!("Linear+{:?}", self.act)
    }

    fn flops(&self, model: &Model<'_>, _ins: &[&[u32]], _out: &[u32]) -> (u64, u64) {
        weight_flops(model, self.weight, 1)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        plan_linear(cx, self.weight, self.bias, self.act, 1)
    }
}

impl OpDef for LinearRows {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [out, _] = linear_dims(cx, ins[0], self.weight, self.bias)?;
        let mut y = ins[0].to_vec();
        *y.last_mut().expect("checked by linear_dims") = out;
        Ok(y)
    }

    fn label(&self) -> String {
        format!("LinearRows+{:?}", self.act)
    }

    fn flops(&self, model: &Model<'_>, ins: &[&[u32]], _out: &[u32]) -> (u64, u64) {
        let rows = ins[0][..ins[0].len() - 1]
            .iter()
            .map(|&d| d as u64)
            .product();
        weight_flops(model, self.weight, rows)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let x = cx.ins[0];
        let rows = x[..x.len() - 1].iter().map(|&d| d as usize).product();
        plan_linear(cx, self.weight, self.bias, self.act, rows)
    }
}

/// The kernel of a Linear applied to `rows` rows of every example.
fn plan_linear(
    cx: &mut PlanCx<'_, '_>,
    weight: TensorId,
    bias: Option<TensorId>,
    act: Activation,
    rows: usize,
) -> Result<Box<dyn Kernel>> {
    let out = *cx.out.last().expect("a Linear's output has an axis") as usize;
    let inp = *cx.ins[0].last().expect("a Linear's input has an axis") as usize;
    let batch = cx.batch.saturating_mul(rows);
    cx.need_gemm_ws(kernels::gemm_workspace(batch, out, inp));
    let policy = cx.policy;
    let limit = if batch == 1 {
        policy.max_density_gemv
    } else {
        policy.max_density_gemm
    };
    let dense = cx.densify(
        weight,
        limit,
        (batch == 1).then_some(policy.max_density_blocked),
    )?;
    if batch > 1 && dense.is_none() && matches!(cx.model.tensor(weight), TensorView::Csr(_)) {
        // Transposed input and output of the batched sparse product.
        cx.need_scratch(inp.saturating_add(out).saturating_mul(batch));
    }
    Ok(Box::new(LinearKernel {
        weight,
        dense,
        bias: bias.map(|b| cx.dense_f32(b)).transpose()?,
        act,
        inp,
        out,
        rows,
    }))
}

#[derive(Debug)]
struct LinearKernel {
    weight: TensorId,
    /// The sparse weight expanded into the parameters by the [`crate::SparsePolicy`].
    dense: Option<Range>,
    bias: Option<Range>,
    act: Activation,
    inp: usize,
    out: usize,
    /// Rows per example.
    rows: usize,
}

impl Kernel for LinearKernel {
    fn expanded(&self) -> bool {
        self.dense.is_some()
    }

    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (n, inp, outf, act) = (cx.n * self.rows, self.inp, self.out, self.act);
        let x = ins.get(0);
        let bias = self.bias.map(|b| b.of(cx.params));
        let wv = match self.dense {
            Some(r) => TensorView::Dense(Elems::F32(r.of(cx.params))),
            None => cx.model.tensor(self.weight),
        };
        match wv {
            TensorView::Dense(w) => {
                if n == 1 {
                    par_gemv(cx.pool, w, inp, outf, x, bias, act, y);
                } else {
                    let a = MatRef::row_major(Elems::F32(x), n, inp);
                    let bm = MatRef::row_major(w, outf, inp).t();
                    let bias = bias.map_or(Bias::None, Bias::Col);
                    let bm = BOperand::Mat(bm);
                    par_gemm(cx.pool, a, bm, y, outf, bias, act, cx.gemm_ws, cx.ws_len);
                }
            }
            TensorView::Csr(w) if n == 1 => par_spmv(cx.pool, &w, x, bias, act, y),
            // Planning expands blocked weights unless the batch is 1.
            TensorView::BlockCsr(w) => kernels::bspmv(&w, x, bias, act, y),
            TensorView::Csr(w) => {
                // One sparse × dense product for the whole batch (the weights are read once,
                // not once per example): examples become columns.
                let (xt, yt) = cx.scratch[..(inp + outf) * n].split_at_mut(inp * n);
                for (e, xe) in x.chunks_exact(inp).enumerate() {
                    for (i, &v) in xe.iter().enumerate() {
                        xt[i * n + e] = v;
                    }
                }
                par_spmm(cx.pool, &w, 0..outf, xt, n, n, bias, act, yt, &|_, _| {});
                for (e, ye) in y.chunks_exact_mut(outf).enumerate() {
                    for (o, v) in ye.iter_mut().enumerate() {
                        *v = yt[o * n + e];
                    }
                }
            }
        }
    }
}
