//! A 1×1 convolution whose output only a depthwise 3×3 convolution reads (the expansion and
//! depthwise layers of an inverted residual block, MobileNetV2's), run as one kernel: for each
//! band of output rows and block of channels, the GEMM computes the band's input rows of the
//! expanded map into a buffer that stays in cache, and the depthwise kernel reads them from
//! there, instead of the whole expanded map going to memory and back. Neighbouring bands both
//! compute the input rows their windows share (one per band at stride 2, two at stride 1); the
//! threads split the channels, so none computes another's rows.

use alloc::boxed::Box;
use core::ops::Range as Span;

use super::{Conv2d, Inputs, Kernel, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::{Activation, TensorId};
use crate::kernels::{self, AOperand, BOperand, Bias, ConvGeom, Elems, MatRef, PackedA, Planes};
use crate::model::{Model, TensorView};
use crate::par::{channels_per_part, par_channels, slice_elems};

/// Fewest floats of expanded map per example for which the fused kernel runs: smaller maps stay
/// in cache between the two layers anyway.
pub(crate) const FUSE_MIN_FLOATS: usize = 1 << 18;

/// Floats of expanded map a block of channels holds per band: within a core's L2.
const BAND_FLOATS: usize = 1 << 16;

/// GEMM row panels (`MR` channels each) per block.
const BLOCK_PANELS: usize = 2;

/// Whether `first` (on a `[c, h, w]` input) followed by `second` runs as one
/// [`ExpandDepthwise`] kernel: `first` a dense 1×1, stride-1, unpadded convolution of one
/// group, `second` a dense depthwise 3×3 window (dilation 1, column stride 1 or 2, at most 2
/// rows of padding, so every band of output rows reads at least one input row) on its output,
/// and the expanded map large enough to leave the cache.
pub(crate) fn fusable(model: &Model<'_>, first: &Conv2d, second: &Conv2d, mid: &[u32]) -> bool {
    let dense = |id: TensorId| matches!(model.tensor(id), TensorView::Dense(_));
    let shape = |id: TensorId| model.tensor_entry(id).shape.clone();
    let (w1, w2) = (shape(first.weight), shape(second.weight));
    let [m, h, w] = match *mid {
        [m, h, w] => [m, h, w],
        _ => return false,
    };
    let floats = (m as usize)
        .saturating_mul(h as usize)
        .saturating_mul(w as usize);
    dense(first.weight)
        && dense(second.weight)
        && w1.len() == 4
        && w1[0] == m
        && w1[2..] == [1, 1]
        && first.stride == [1, 1]
        && first.padding == [0, 0]
        && first.dilation == [1, 1]
        && first.groups == 1
        && w2 == [m, 1, 3, 3]
        && second.groups == m
        && m > 0
        && second.dilation == [1, 1]
        && matches!(second.stride[1], 1 | 2)
        && second.stride[0] > 0
        && second.padding[0] <= 2
        && floats >= FUSE_MIN_FLOATS
}

/// Plans `first` and `second` (see [`fusable`]) as one kernel; `cx.ins` is `first`'s input,
/// `cx.out` `second`'s output.
pub(crate) fn plan(
    first: &Conv2d,
    second: &Conv2d,
    cx: &mut PlanCx<'_, '_>,
) -> Result<Box<dyn Kernel>> {
    let (input, out) = (cx.ins[0], cx.out);
    let u = |x: u32| x as usize;
    let c_in = u(input[0]);
    let mid = u(out[0]);
    let dw = ConvGeom {
        c: mid,
        h: u(input[1]),
        w: u(input[2]),
        kh: 3,
        kw: 3,
        stride: [u(second.stride[0]), u(second.stride[1])],
        pad: [u(second.padding[0]), u(second.padding[1])],
        dilation: [1, 1],
        oh: u(out[1]),
        ow: u(out[2]),
    };
    let mr = kernels::gemm_kernel().mr;
    let exp_bias = first.bias.map(|b| cx.dense_f32(b)).transpose()?;
    let dw_bias = second.bias.map(|b| cx.dense_f32(b)).transpose()?;
    let packed = match cx.model.tensor(first.weight) {
        TensorView::Dense(w) if cx.pack_weights && c_in > 0 => cx
            .try_alloc_params(PackedA::len(mid, c_in, mr))
            .map(|(range, dst)| {
                kernels::pack_a_panels(&MatRef::row_major(w, mid, c_in), mr, dst);
                range
            }),
        _ => None,
    };
    // Channels per block, and output rows per band: as many as keep a block's band of the
    // expanded map near `BAND_FLOATS`.
    let block = (BLOCK_PANELS * mr).min(channels_per_part(mid, cx.threads, mr));
    let rows_fit = BAND_FLOATS / (block * dw.w).max(1);
    let band = (rows_fit.saturating_sub(3) / dw.stride[0] + 1).min(dw.oh.max(1));
    let cap = ((band - 1) * dw.stride[0] + 3).min(dw.h);
    let scratch_len = block * cap * dw.w;
    cx.need_scratch(scratch_len.saturating_mul(cx.threads));
    cx.need_gemm_ws(kernels::gemm_workspace(block, cap * dw.w, c_in));
    Ok(Box::new(ExpandDepthwise {
        exp_weight: first.weight,
        packed,
        exp_bias,
        exp_act: first.act,
        dw_weight: second.weight,
        dw_bias,
        dw_act: second.act,
        c_in,
        geom: dw,
        band,
        block,
        scratch_len,
    }))
}

/// The planned pair; see the module documentation.
#[derive(Debug)]
struct ExpandDepthwise {
    /// The 1×1 layer: `[mid, c_in]` weights in place, or packed for [`kernels::gemm_kernel`].
    exp_weight: TensorId,
    packed: Option<Range>,
    exp_bias: Option<Range>,
    exp_act: Activation,
    /// The depthwise layer: `[mid, 1, 3, 3]` weights in place.
    dw_weight: TensorId,
    dw_bias: Option<Range>,
    dw_act: Activation,
    c_in: usize,
    /// The depthwise layer's geometry on the expanded map (`c` = its channels).
    geom: ConvGeom,
    /// Output rows per band, and channels per block (a multiple of the GEMM's `MR`).
    band: usize,
    block: usize,
    /// Floats of scratch per part.
    scratch_len: usize,
}

impl Kernel for ExpandDepthwise {
    fn method(&self) -> &'static str {
        "expand_depthwise"
    }

    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let g = &self.geom;
        let x = ins.get(0);
        let in_len = ins.elems(0);
        let plane = g.oh * g.ow;
        let params = cx.params;
        let packed = self.packed.map(|r| r.of(params));
        let TensorView::Dense(w1) = cx.model.tensor(self.exp_weight) else {
            unreachable!("fusable checked a dense expansion weight")
        };
        let TensorView::Dense(w2) = cx.model.tensor(self.dw_weight) else {
            unreachable!("fusable checked a dense depthwise weight")
        };
        let macs = g.c * (g.h * g.w * self.c_in + plane * 9);
        let part = |e: usize, ch: Span<usize>, ye: &mut [f32], s: &mut [f32], ws: &mut [f32]| {
            let a = match packed {
                Some(p) => {
                    let mr = kernels::gemm_kernel().mr;
                    let all = PackedA {
                        data: p,
                        rows: g.c,
                        cols: self.c_in,
                        mr,
                    };
                    AOperand::Packed(all.rows(ch.start, ch.end))
                }
                None => {
                    MatRef::row_major(slice_elems(w1, ch.start * self.c_in), ch.len(), self.c_in)
                        .into()
                }
            };
            let xe = &x[e * in_len..(e + 1) * in_len];
            let w2 = slice_elems(w2, ch.start * 9);
            self.channels(xe, a, w2, params, ch, ye, s, ws);
        };
        par_channels(
            cx.pool,
            cx.n,
            g.c,
            kernels::gemm_kernel().mr,
            plane,
            g.c * plane,
            macs,
            y,
            cx.scratch,
            self.scratch_len,
            cx.gemm_ws,
            cx.ws_len,
            &part,
        );
    }
}

impl ExpandDepthwise {
    /// Channels `ch` of one example: `xe` `[c_in, h, w]` to `ye`, the output planes of those
    /// channels; `a` their expansion weights, `w2` their depthwise weights.
    #[allow(clippy::too_many_arguments)]
    fn channels(
        &self,
        xe: &[f32],
        a: AOperand<'_>,
        w2: Elems<'_>,
        params: &[f32],
        ch: Span<usize>,
        ye: &mut [f32],
        scratch: &mut [f32],
        ws: &mut [f32],
    ) {
        let g = &self.geom;
        let (h, w, sy, pt) = (g.h, g.w, g.stride[0], g.pad[0]);
        let exp_bias = self.exp_bias.map(|b| &b.of(params)[ch.clone()]);
        let dw_bias = self.dw_bias.map(|b| &b.of(params)[ch.clone()]);
        let plane = g.oh * g.ow;
        for r0 in (0..g.oh).step_by(self.band) {
            let r1 = (r0 + self.band).min(g.oh);
            // The input rows of output rows `r0..r1`: `lo..hi` (`hi > lo` as `pt <= 2`).
            let lo = (r0 * sy).saturating_sub(pt);
            let hi = ((r1 - 1) * sy + 3 - pt).min(h);
            let len = (hi - lo) * w;
            let b = MatRef {
                data: Elems::F32(&xe[lo * w..]),
                rows: self.c_in,
                cols: len,
                rs: h * w,
                cs: 1,
            };
            let band = ConvGeom {
                h: hi - lo,
                oh: r1 - r0,
                pad: [lo + pt - r0 * sy, g.pad[1]],
                ..*g
            };
            // The band's expanded rows, `self.block` channels at a time.
            for c0 in (0..ch.len()).step_by(self.block) {
                let c1 = (c0 + self.block).min(ch.len());
                let buf = &mut scratch[..(c1 - c0) * len];
                let a = match a {
                    AOperand::Packed(p) => AOperand::Packed(p.rows(c0, c1)),
                    AOperand::Mat(m) => AOperand::Mat(MatRef {
                        data: slice_elems(m.data, c0 * m.rs),
                        rows: c1 - c0,
                        ..m
                    }),
                };
                let bias = exp_bias.map_or(Bias::None, |v| Bias::Row(&v[c0..c1]));
                kernels::gemm_b(a, BOperand::Mat(b), buf, len, bias, self.exp_act, ws);
                kernels::depthwise_conv2d_planes(
                    &ConvGeom { c: c1 - c0, ..band },
                    buf,
                    slice_elems(w2, c0 * 9),
                    dw_bias.map(|v| &v[c0..c1]),
                    self.dw_act,
                    &mut ye[c0 * plane + r0 * g.ow..],
                    Planes { x: len, y: plane },
                );
            }
        }
    }
}

/// The first layer of a fused pair: [`ExpandDepthwise`], planned on the next node, computes
/// its output, which no buffer holds.
#[derive(Debug)]
pub(crate) struct FusedIntoNext;

impl Kernel for FusedIntoNext {
    fn run(&self, _: &mut RunCx<'_>, _: &Inputs<'_>, _: &mut [f32]) {}

    fn method(&self) -> &'static str {
        "fused_into_next"
    }
}
