//! Transposed 2-D convolution (PyTorch `ConvTranspose2d`, groups 1): detectors' learned
//! upsampling.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{weight_flops, InferCx, Inputs, Kernel, OpDef, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::TensorId;
use crate::model::Model;

/// `y[o, iy·s − p + ky·d, ix·s − p + kx·d] += x[i, iy, ix] · W[i, o, ky, kx]`, plus the bias;
/// weight `[in, out, kh, kw]`. Output size `(H − 1)·s − 2p + d·(k − 1) + 1 + output_padding`.
/// Attributes are `[height, width]` pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvTranspose2d {
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub stride: [u32; 2],
    pub padding: [u32; 2],
    pub output_padding: [u32; 2],
    pub dilation: [u32; 2],
}

impl ConvTranspose2d {
    fn out_size(&self, input: u32, k: u32, axis: usize) -> Option<u32> {
        let (s, p, op, d) = (
            self.stride[axis] as u64,
            self.padding[axis] as u64,
            self.output_padding[axis] as u64,
            self.dilation[axis] as u64,
        );
        let full = (input as u64).checked_sub(1)? * s + d * (k as u64).checked_sub(1)? + 1 + op;
        u32::try_from(full.checked_sub(2 * p)?).ok()
    }
}

impl OpDef for ConvTranspose2d {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [c, h, w] = cx.chw(ins[0])?;
        let ws = cx.tensor(self.weight)?;
        let [ci, co, kh, kw] = match ws[..] {
            [a, b, c, d] => [a, b, c, d],
            _ => return Err(cx.bad("ConvTranspose2d weight must be [in, out, kh, kw]")),
        };
        if ci != c {
            return Err(cx.bad(format!("input channels {c} do not match weight {ws:?}")));
        }
        if self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(cx.bad("stride and dilation must be positive"));
        }
        if (0..2).any(|a| self.output_padding[a] >= self.stride[a].max(self.dilation[a])) {
            return Err(cx.bad("output padding must be smaller than the stride or dilation"));
        }
        let (Some(oh), Some(ow)) = (self.out_size(h, kh, 0), self.out_size(w, kw, 1)) else {
            return Err(cx.bad("transposed convolution output is empty"));
        };
        if let Some(b) = self.bias {
            cx.dense_vector(b, &[co], "bias")?;
        }
        Ok(vec![co, oh, ow])
    }

    fn label(&self) -> String {
        "ConvTranspose2d".to_string()
    }

    /// Every weight meets every input position once.
    fn flops(&self, model: &Model<'_>, ins: &[&[u32]], _out: &[u32]) -> (u64, u64) {
        let positions = ins[0].iter().skip(1).map(|&d| d as u64).product();
        weight_flops(model, self.weight, positions)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        let ws = cx.model.tensor_entry(self.weight).shape.clone();
        let u = |v: u32| v as usize;
        Ok(Box::new(ConvTransposeKernel {
            weight: cx.dense_f32(self.weight)?,
            bias: self.bias.map(|b| cx.dense_f32(b)).transpose()?,
            cin: u(ws[0]),
            cout: u(ws[1]),
            k: [u(ws[2]), u(ws[3])],
            hw: [u(cx.ins[0][1]), u(cx.ins[0][2])],
            out: [u(cx.out[1]), u(cx.out[2])],
            stride: self.stride.map(u),
            padding: self.padding.map(u),
            dilation: self.dilation.map(u),
        }))
    }
}

#[derive(Debug)]
struct ConvTransposeKernel {
    weight: Range,
    bias: Option<Range>,
    cin: usize,
    cout: usize,
    k: [usize; 2],
    hw: [usize; 2],
    out: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Kernel for ConvTransposeKernel {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let w = self.weight.of(cx.params);
        let ([h, wd], [oh, ow], [kh, kw]) = (self.hw, self.out, self.k);
        let (in_len, out_len) = (self.cin * h * wd, self.cout * oh * ow);
        for (xe, ye) in ins.get(0).chunks(in_len).zip(y.chunks_mut(out_len)) {
            match self.bias {
                Some(b) => {
                    for (yc, &bv) in ye.chunks_mut(oh * ow).zip(b.of(cx.params)) {
                        yc.fill(bv);
                    }
                }
                None => ye.fill(0.0),
            }
            for i in 0..self.cin {
                for o in 0..self.cout {
                    let wk = &w[(i * self.cout + o) * kh * kw..][..kh * kw];
                    let yc = &mut ye[o * oh * ow..(o + 1) * oh * ow];
                    for iy in 0..h {
                        for ky in 0..kh {
                            let oy = (iy * self.stride[0] + ky * self.dilation[0])
                                .wrapping_sub(self.padding[0]);
                            if oy >= oh {
                                continue;
                            }
                            let xr = &xe[(i * h + iy) * wd..][..wd];
                            for kx in 0..kw {
                                let wv = wk[ky * kw + kx];
                                for (ix, &xv) in xr.iter().enumerate() {
                                    let ox = (ix * self.stride[1] + kx * self.dilation[1])
                                        .wrapping_sub(self.padding[1]);
                                    if ox < ow {
                                        yc[oy * ow + ox] += xv * wv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
