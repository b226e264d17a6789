//! Max and average pooling over 2-D windows.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{window_out, InferCx, Inputs, Kernel, OpDef, PlanCx, RunCx};
use crate::error::Result;
use crate::kernels::{self, ConvGeom};
use crate::par::par_planes;

/// Max pooling; padding cells never win (they count as minus infinity). Attributes are
/// `[height, width]` pairs; padding is symmetric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaxPool2d {
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub padding: [u32; 2],
}

/// Average pooling; with `count_include_pad` padding cells count as zeros in the mean, otherwise
/// the mean is over the cells inside the map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvgPool2d {
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub padding: [u32; 2],
    pub count_include_pad: bool,
}

/// Average pooling over the cells inside the map with uneven padding `[top, left, bottom,
/// right]` (ONNX `AveragePool` with `count_include_pad = 0`): each window's mean is over the
/// input cells it covers. Every pad is smaller than the window, so every window covers one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvgPool2dUneven {
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub pads: [u32; 4],
}

fn pool_out(
    cx: &InferCx<'_>,
    ins: &[&[u32]],
    kernel: [u32; 2],
    stride: [u32; 2],
    padding: [u32; 2],
) -> Result<Vec<u32>> {
    cx.arity(ins, 1)?;
    let [c, hh, w] = cx.chw(ins[0])?;
    if padding[0] as u64 * 2 > kernel[0] as u64 || padding[1] as u64 * 2 > kernel[1] as u64 {
        return Err(cx.bad("padding exceeds half the pooling window"));
    }
    let oh = window_out(hh, kernel[0], stride[0], padding[0], 1);
    let ow = window_out(w, kernel[1], stride[1], padding[1], 1);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(vec![c, oh, ow]),
        _ => Err(cx.bad("pooling window does not fit the input")),
    }
}

impl OpDef for MaxPool2d {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        pool_out(cx, ins, self.kernel, self.stride, self.padding)
    }

    fn label(&self) -> String {
        "MaxPool2d".to_string()
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(PoolKernel {
            g: cx.geom(self.kernel, self.stride, self.padding, [1, 1]),
            avg: None,
        }))
    }
}

impl OpDef for AvgPool2d {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        pool_out(cx, ins, self.kernel, self.stride, self.padding)
    }

    fn label(&self) -> String {
        "AvgPool2d".to_string()
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(PoolKernel {
            g: cx.geom(self.kernel, self.stride, self.padding, [1, 1]),
            avg: Some(self.count_include_pad),
        }))
    }
}

impl OpDef for AvgPool2dUneven {
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>> {
        cx.arity(ins, 1)?;
        let [c, hh, w] = cx.chw(ins[0])?;
        let [t, l, b, r] = self.pads;
        if t.max(b) >= self.kernel[0] || l.max(r) >= self.kernel[1] {
            return Err(cx.bad("a pad as large as the pooling window"));
        }
        let out = |n: u32, before: u32, after: u32, a: usize| {
            let padded = n.checked_add(before)?.checked_add(after)?;
            window_out(padded, self.kernel[a], self.stride[a], 0, 1)
        };
        match (out(hh, t, b, 0), out(w, l, r, 1)) {
            (Some(oh), Some(ow)) => Ok(vec![c, oh, ow]),
            _ => Err(cx.bad("pooling window does not fit the input")),
        }
    }

    fn label(&self) -> String {
        format!("AvgPool2d{:?}", self.pads)
    }

    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>> {
        // The kernel clips windows at the map's far edges, so only the near pads matter.
        let [t, l, _, _] = self.pads;
        Ok(Box::new(PoolKernel {
            g: cx.geom(self.kernel, self.stride, [t, l], [1, 1]),
            avg: Some(false),
        }))
    }
}

#[derive(Debug)]
struct PoolKernel {
    g: ConvGeom,
    /// `None` for max pooling, else `count_include_pad`.
    avg: Option<bool>,
}

impl Kernel for PoolKernel {
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let (x, planes, g) = (ins.get(0), cx.n * self.g.c, &self.g);
        let f = |x: &[f32], y: &mut [f32], planes: usize| match self.avg {
            None => kernels::maxpool2d(g, x, y, planes),
            Some(count_include_pad) => kernels::avgpool2d(g, x, y, planes, count_include_pad),
        };
        par_planes(cx.pool, planes, g.h * g.w, g.oh * g.ow, x, y, &f);
    }
}
