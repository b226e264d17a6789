//! Pairs of convolutions run as one kernel, so the map between them never goes to memory: an
//! inverted residual block's 1×1 expansion and depthwise 3×3 layer (MobileNetV2's), or a
//! depthwise 3×3 layer and the 1×1 projection after it (MobileNetV1's, the first block of
//! MobileNetV2), where the map between them is too large to stay in cache.
//!
//! The kernel walks bands of output rows. For a band, the expansion's GEMM computes the band's
//! input rows of the expanded map, a block of channels at a time, into a buffer that stays in
//! cache, and the depthwise kernel reads them from there; neighbouring bands both compute the
//! expanded rows their windows share (one per band at stride 2, two at stride 1). The threads
//! split the bands where the map has a band per thread anyway (each thread then reads and
//! writes only its rows, as the pixel-split layers around it do), else the channels. Before a
//! projection, the depthwise kernel writes the band's rows of every channel into a buffer that
//! the projection's GEMM reads as its `B`, and the threads split the bands.
//!
//! The three layers of a block are not chained: the projection needs every channel of a band,
//! and a band of the expanded map's channels small enough for the cache is so few rows that
//! the expansion's shared rows cost more than the traffic saved (MobileNetV2's third block,
//! AVX-512: 707–757 µs as three, 634 µs as a pair and a projection).

use alloc::boxed::Box;
use core::ops::Range as Span;

use super::{Conv2d, Inputs, Kernel, PlanCx, Range, RunCx};
use crate::error::Result;
use crate::format::{Activation, Graph, Op, TensorId, ValueId};
use crate::kernels::{self, AOperand, BOperand, Bias, ConvGeom, Elems, MatRef, PackedA, Planes};
use crate::model::{Model, TensorView};
use crate::par::{channels_per_part, par_channels, par_items, slice_elems, Parts};

/// Floats of expanded map a block of channels holds per band, and of depthwise output a band
/// holds for the projection: each within a core's L2.
const BAND_FLOATS: usize = 1 << 16;

/// GEMM row panels (`MR` channels each) per block of the expansion.
const BLOCK_PANELS: usize = 2;

/// A dense 1×1, stride-1, unpadded convolution of one group.
fn pointwise(model: &Model<'_>, c: &Conv2d) -> bool {
    let w = &model.tensor_entry(c.weight).shape;
    matches!(model.tensor(c.weight), TensorView::Dense(_))
        && w.len() == 4
        && w[2..] == [1, 1]
        && c.stride == [1, 1]
        && c.padding == [0, 0]
        && c.dilation == [1, 1]
        && c.groups == 1
}

/// A dense depthwise 3×3 window on `channels` channels: dilation 1, column stride 1 or 2, and
/// at most 2 rows of padding, so every band of output rows reads at least one input row.
fn depthwise(model: &Model<'_>, c: &Conv2d, channels: u32) -> bool {
    matches!(model.tensor(c.weight), TensorView::Dense(_))
        && model.tensor_entry(c.weight).shape == [channels, 1, 3, 3]
        && c.groups == channels
        && channels > 0
        && c.dilation == [1, 1]
        && matches!(c.stride[1], 1 | 2)
        && c.stride[0] > 0
        && c.padding[0] <= 2
}

/// Which layers from node `i` on run as one fused kernel: an expansion and a depthwise layer,
/// or a depthwise layer and a projection. A pair fuses where the map between them is
/// at least `min_floats` per example and only the second reads it (`single_use`: no other node,
/// not a graph output); an expansion takes its depthwise layer before the depthwise layer takes
/// its projection.
pub(crate) fn chain(
    model: &Model<'_>,
    g: &Graph,
    i: usize,
    min_floats: usize,
    single_use: &dyn Fn(ValueId) -> bool,
) -> Option<Links> {
    let conv = |j: usize| match g.nodes.get(j).map(|n| &n.op) {
        Some(Op::Conv2d(c)) => Some(c),
        _ => None,
    };
    let shape = |v: ValueId| g.values[v as usize].shape.as_slice();
    let floats = |j: usize| {
        let v = g.nodes[j].output;
        shape(v)
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d as usize))
    };
    // Node `j`'s output is large and read only by node `j + 1`, as its one input.
    let feeds = |j: usize| {
        let v = g.nodes[j].output;
        single_use(v)
            && g.nodes.get(j + 1).is_some_and(|n| n.inputs == [v])
            && floats(j) >= min_floats
    };
    let channels = |j: usize| match g.nodes.get(j).map(|n| &n.inputs[..]) {
        Some(&[v]) if shape(v).len() == 3 => Some(shape(v)[0]),
        _ => None,
    };
    let dw_at = |j: usize| {
        conv(j)
            .zip(channels(j))
            .is_some_and(|(c, ch)| depthwise(model, c, ch))
    };
    let pw_at = |j: usize| conv(j).is_some_and(|c| pointwise(model, c)) && channels(j).is_some();
    if pw_at(i) && dw_at(i + 1) && feeds(i) {
        return Some(Links {
            exp: true,
            proj: false,
        });
    }
    (dw_at(i) && pw_at(i + 1) && feeds(i)).then_some(Links {
        exp: false,
        proj: true,
    })
}

/// The layers of a fused chain besides its depthwise one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Links {
    pub exp: bool,
    pub proj: bool,
}

impl Links {
    /// Nodes in the chain.
    pub fn len(self) -> usize {
        1 + usize::from(self.exp) + usize::from(self.proj)
    }
}

/// A 1×1 layer of a chain: `[rows, cols]` weights in place, or packed for
/// [`kernels::gemm_kernel`].
#[derive(Debug)]
struct Pointwise {
    weight: TensorId,
    packed: Option<Range>,
    bias: Option<Range>,
    act: Activation,
    rows: usize,
    cols: usize,
}

impl Pointwise {
    fn plan(c: &Conv2d, rows: usize, cols: usize, cx: &mut PlanCx<'_, '_>) -> Result<Self> {
        let mr = kernels::gemm_kernel().mr;
        let bias = c.bias.map(|b| cx.dense_f32(b)).transpose()?;
        let packed = match cx.model.tensor(c.weight) {
            TensorView::Dense(w) if cx.pack_weights && cols > 0 => cx
                .try_alloc_params(PackedA::len(rows, cols, mr))
                .map(|(range, dst)| {
                    kernels::pack_a_panels(&MatRef::row_major(w, rows, cols), mr, dst);
                    range
                }),
            _ => None,
        };
        Ok(Pointwise {
            weight: c.weight,
            packed,
            bias,
            act: c.act,
            rows,
            cols,
        })
    }

    /// Rows `r` of the weights as a GEMM's `A` (`r.start` a multiple of `MR` when packed).
    fn a<'a>(&self, model: &'a Model<'a>, params: &'a [f32], r: Span<usize>) -> AOperand<'a> {
        match self.packed {
            Some(p) => {
                let all = PackedA {
                    data: p.of(params),
                    rows: self.rows,
                    cols: self.cols,
                    mr: kernels::gemm_kernel().mr,
                };
                AOperand::Packed(all.rows(r.start, r.end))
            }
            None => {
                let TensorView::Dense(w) = model.tensor(self.weight) else {
                    unreachable!("`pointwise` checked a dense weight")
                };
                let w = slice_elems(w, r.start * self.cols);
                MatRef::row_major(w, r.len(), self.cols).into()
            }
        }
    }

    fn bias<'a>(&self, params: &'a [f32], r: Span<usize>) -> Bias<'a> {
        self.bias
            .map_or(Bias::None, |b| Bias::Row(&b.of(params)[r]))
    }
}

/// Plans the chain [`chain`] found: `exp` (if any), `dw` and `proj` (if any) as one kernel;
/// `cx.ins` is the first layer's input and `cx.out` the last one's output.
pub(crate) fn plan(
    exp: Option<&Conv2d>,
    dw: &Conv2d,
    proj: Option<&Conv2d>,
    cx: &mut PlanCx<'_, '_>,
) -> Result<Box<dyn Kernel>> {
    let (input, out) = (cx.ins[0], cx.out);
    let u = |x: u32| x as usize;
    let c_in = u(input[0]);
    let mid = exp.map_or(c_in, |e| u(cx.model.tensor_entry(e.weight).shape[0]));
    let (h, w, oh, ow) = (u(input[1]), u(input[2]), u(out[1]), u(out[2]));
    let geom = ConvGeom {
        c: mid,
        h,
        w,
        kh: 3,
        kw: 3,
        stride: [u(dw.stride[0]), u(dw.stride[1])],
        pad: [u(dw.padding[0]), u(dw.padding[1])],
        dilation: [1, 1],
        oh,
        ow,
    };
    let exp = exp.map(|e| Pointwise::plan(e, mid, c_in, cx)).transpose()?;
    let dw_bias = dw.bias.map(|b| cx.dense_f32(b)).transpose()?;
    let out_c = u(out[0]);
    let proj = proj
        .map(|q| Pointwise::plan(q, out_c, mid, cx))
        .transpose()?;
    let mr = kernels::gemm_kernel().mr;
    // Channels per block of the expansion: up to `BLOCK_PANELS` panels of the channels one
    // thread computes.
    let block_of = |per_part: usize| (BLOCK_PANELS * mr).min(per_part).max(1);
    // Output rows per band: as many as keep a block's band of the expanded map, and the band's
    // depthwise output, near `BAND_FLOATS`.
    let band_rows = |block: usize| {
        let rows_fit = BAND_FLOATS / (block * w).max(1);
        let mut band = rows_fit.saturating_sub(3) / geom.stride[0] + 1;
        if proj.is_some() {
            band = band.min(BAND_FLOATS / (mid * ow).max(1));
        }
        band.clamp(1, oh.max(1))
    };
    // The threads split the bands where there is a projection (it needs every channel of a
    // band), and where the map has at least a band per thread anyway: each thread then reads
    // only its rows of the input and writes only its rows of the output, as the layers before
    // and after, split by pixels, do. Otherwise (a short map, whose extra bands would each
    // compute their shared expanded rows again) they split the channels.
    let all = block_of(mid);
    let split_bands =
        proj.is_some() || (cx.threads > 1 && oh.div_ceil(band_rows(all)) >= cx.threads);
    let block = if split_bands {
        all
    } else {
        block_of(channels_per_part(mid, cx.threads, mr))
    };
    let mut band = band_rows(block);
    if split_bands {
        // As many bands as fill every thread equally.
        let bands = oh.div_ceil(band).next_multiple_of(cx.threads).max(1);
        band = oh.div_ceil(bands).max(1);
    }
    let cap = ((band - 1) * geom.stride[0] + 3).min(h);
    let exp_len = if exp.is_some() {
        block.saturating_mul(cap).saturating_mul(w)
    } else {
        0
    };
    let dw_len = if proj.is_some() {
        mid.saturating_mul(band).saturating_mul(ow)
    } else {
        0
    };
    let scratch_len = exp_len.saturating_add(dw_len);
    cx.need_scratch(scratch_len.saturating_mul(cx.threads));
    if exp.is_some() {
        cx.need_gemm_ws(kernels::gemm_workspace(block, cap * w, c_in));
    }
    if proj.is_some() {
        cx.need_gemm_ws(kernels::gemm_workspace(out_c, band * ow, mid));
    }
    Ok(Box::new(Chain {
        exp,
        dw_weight: dw.weight,
        dw_bias,
        dw_act: dw.act,
        proj,
        c_in,
        out_c,
        geom,
        band,
        block,
        split_bands,
        exp_len,
        scratch_len,
    }))
}

/// The planned chain; see the module documentation.
#[derive(Debug)]
struct Chain {
    exp: Option<Pointwise>,
    /// The depthwise layer: `[mid, 1, 3, 3]` weights in place.
    dw_weight: TensorId,
    dw_bias: Option<Range>,
    dw_act: Activation,
    proj: Option<Pointwise>,
    c_in: usize,
    out_c: usize,
    /// The depthwise layer's geometry (`c` = its channels).
    geom: ConvGeom,
    /// Output rows per band, and channels per block of the expansion (a multiple of the GEMM's
    /// `MR`, or all).
    band: usize,
    block: usize,
    /// The threads split the bands (always with a projection), or else the channels.
    split_bands: bool,
    /// Floats of scratch per part: the expansion's block buffer, then the depthwise output.
    exp_len: usize,
    scratch_len: usize,
}

/// Where one band's depthwise input comes from.
enum Source<'a> {
    /// The expansion, computed from `[c_in, h, w]`.
    Expand(&'a Pointwise, &'a [f32]),
    /// The chain's input, `[mid, h, w]`.
    Map(&'a [f32]),
}

impl Kernel for Chain {
    fn method(&self) -> &'static str {
        match (&self.exp, &self.proj) {
            (Some(_), Some(_)) => "expand_depthwise_project",
            (Some(_), None) => "expand_depthwise",
            _ => "depthwise_project",
        }
    }

    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let g = &self.geom;
        let x = ins.get(0);
        let in_len = ins.elems(0);
        let (model, params) = (cx.model, cx.params);
        let TensorView::Dense(w2) = model.tensor(self.dw_weight) else {
            unreachable!("`depthwise` checked a dense weight")
        };
        let plane = g.oh * g.ow;
        let out_len = self.out_c * plane;
        let exp_macs = self.exp.as_ref().map_or(0, |_| g.h * g.w * self.c_in);
        let proj_macs = self.proj.as_ref().map_or(0, |_| plane * self.out_c);
        let macs = g.c * (exp_macs + plane * 9 + proj_macs);
        let source = |e: usize| {
            let xe = &x[e * in_len..(e + 1) * in_len];
            match &self.exp {
                Some(p) => Source::Expand(p, xe),
                None => Source::Map(xe),
            }
        };
        let planes = Planes { x: 0, y: plane };
        if !self.split_bands {
            // The threads split the channels (no projection: `plan` splits bands with one).
            let part =
                |e: usize, ch: Span<usize>, ye: &mut [f32], s: &mut [f32], ws: &mut [f32]| {
                    assert!(ye.len() >= ch.len() * plane);
                    let (buf, _) = s.split_at_mut(self.exp_len);
                    for r0 in (0..g.oh).step_by(self.band) {
                        let rows = r0..(r0 + self.band).min(g.oh);
                        // SAFETY: `ye` holds the planes of channels `ch` (asserted above), and
                        // the `&mut` keeps anyone else from them.
                        unsafe {
                            let yb = ye.as_mut_ptr().add(r0 * g.ow);
                            let src = source(e);
                            self.band_dw(
                                model,
                                params,
                                w2,
                                &src,
                                ch.clone(),
                                rows,
                                yb,
                                planes,
                                buf,
                                ws,
                            );
                        }
                    }
                };
            par_channels(
                cx.pool,
                cx.n,
                g.c,
                kernels::gemm_kernel().mr,
                plane,
                out_len,
                macs,
                y,
                cx.scratch,
                self.scratch_len,
                cx.gemm_ws,
                cx.ws_len,
                &part,
            );
            return;
        }
        // The threads split the bands (of every example); each writes its rows of every
        // output plane: the depthwise layer's directly, or the projection's from the band's
        // depthwise output in the part's scratch.
        let bands = g.oh.div_ceil(self.band);
        assert!(y.len() >= cx.n * out_len);
        let (yp, y_len) = (Parts::new(y), y.len());
        let part = |items: Span<usize>, s: &mut [f32], ws: &mut [f32]| {
            let (buf, rest) = s.split_at_mut(self.exp_len);
            for item in items {
                let (e, r0) = (item / bands, item % bands * self.band);
                let rows = r0..(r0 + self.band).min(g.oh);
                let (n, src) = (rows.len() * g.ow, source(e));
                let at = e * out_len + r0 * g.ow;
                // SAFETY: without a projection, the band's rows of every output plane of example
                // `e`, which lie in `y` (asserted above) and which no other item (another band
                // or example) writes; with one, `band` rows of every channel in `rest`, which
                // the `&mut` keeps from anyone else.
                unsafe {
                    let (out, out_planes) = match self.proj {
                        None => (yp.at(at), planes),
                        Some(_) => {
                            let band_planes = Planes {
                                x: 0,
                                y: self.band * g.ow,
                            };
                            (rest[..g.c * self.band * g.ow].as_mut_ptr(), band_planes)
                        }
                    };
                    self.band_dw(
                        model,
                        params,
                        w2,
                        &src,
                        0..g.c,
                        rows,
                        out,
                        out_planes,
                        buf,
                        ws,
                    );
                }
                let Some(proj) = &self.proj else {
                    continue;
                };
                let dwout = &rest[..g.c * self.band * g.ow];
                let b = MatRef {
                    data: Elems::F32(dwout),
                    rows: g.c,
                    cols: n,
                    rs: self.band * g.ow,
                    cs: 1,
                };
                // SAFETY: `at < y_len` (row `r0 < oh` of example `e < n` of `y`); the GEMM
                // writes columns `r0 * ow..r0 * ow + n` of every output plane of example `e`,
                // which no other item (another band or example) writes.
                unsafe {
                    kernels::gemm_kernel().run_b_raw(
                        proj.a(model, params, 0..self.out_c),
                        BOperand::Mat(b),
                        yp.at(at),
                        y_len - at,
                        plane,
                        proj.bias(params, 0..self.out_c),
                        proj.act,
                        ws,
                    )
                };
            }
        };
        par_items(
            cx.pool,
            cx.n * bands,
            1,
            cx.n * macs,
            cx.scratch,
            self.scratch_len,
            cx.gemm_ws,
            cx.ws_len,
            &part,
        );
    }
}

impl Chain {
    /// The depthwise layer's output rows `rows` of channels `ch` into `out` (channel `c`'s rows
    /// from `out[(c - ch.start) * planes.y]`), from `src`; `buf` holds the expansion's block.
    ///
    /// # Safety
    /// For every channel `c` of `ch`, `out[(c - ch.start) * planes.y..][..rows.len() * ow]` is
    /// valid for writes and nothing else reads or writes it during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn band_dw(
        &self,
        model: &Model<'_>,
        params: &[f32],
        w2: Elems<'_>,
        src: &Source<'_>,
        ch: Span<usize>,
        rows: Span<usize>,
        out: *mut f32,
        planes: Planes,
        buf: &mut [f32],
        ws: &mut [f32],
    ) {
        let g = &self.geom;
        let (h, w, sy, pt) = (g.h, g.w, g.stride[0], g.pad[0]);
        let (r0, r1) = (rows.start, rows.end);
        // The input rows of output rows `r0..r1`: `lo..hi` (`hi > lo` as `pt <= 2`).
        let lo = (r0 * sy).saturating_sub(pt);
        let hi = ((r1 - 1) * sy + 3 - pt).min(h);
        let len = (hi - lo) * w;
        let band = ConvGeom {
            h: hi - lo,
            oh: r1 - r0,
            pad: [lo + pt - r0 * sy, g.pad[1]],
            ..*g
        };
        let dw_bias = self.dw_bias.map(|b| b.of(params));
        let step = match src {
            Source::Expand(..) => self.block,
            Source::Map(_) => ch.len(),
        };
        for c0 in (ch.start..ch.end).step_by(step.max(1)) {
            let c1 = (c0 + step).min(ch.end);
            let (x, x_plane) = match src {
                Source::Expand(p, xe) => {
                    let b = MatRef {
                        data: Elems::F32(&xe[lo * w..]),
                        rows: self.c_in,
                        cols: len,
                        rs: h * w,
                        cs: 1,
                    };
                    let dst = &mut buf[..(c1 - c0) * len];
                    let a = p.a(model, params, c0..c1);
                    let bias = p.bias(params, c0..c1);
                    kernels::gemm_b(a, BOperand::Mat(b), dst, len, bias, p.act, ws);
                    (&*dst, len)
                }
                Source::Map(xe) => (&xe[c0 * h * w + lo * w..], h * w),
            };
            // SAFETY: channels `c0..c1` of `ch`, whose output rows are the caller's.
            unsafe {
                kernels::depthwise_kernel().run_planes_raw(
                    &ConvGeom { c: c1 - c0, ..band },
                    x,
                    slice_elems(w2, c0 * 9),
                    dw_bias.map(|v| &v[c0..c1]),
                    self.dw_act,
                    out.add((c0 - ch.start) * planes.y),
                    Planes {
                        x: x_plane,
                        ..planes
                    },
                )
            };
        }
    }
}

/// A node whose work another node's kernel does, so it runs nothing and no buffer holds its
/// output; its method names which: `fused_into_next` (the next node's fused kernel, [`chain`],
/// computes it) or `fused_into_prev` (a max pooling the previous node's kernel computes,
/// [`Kernel::fuse_max_pool`], whose step writes this node's output).
#[derive(Debug)]
pub(crate) struct FusedAway(pub &'static str);

impl Kernel for FusedAway {
    fn run(&self, _: &mut RunCx<'_>, _: &Inputs<'_>, _: &mut [f32]) {}

    fn method(&self) -> &'static str {
        self.0
    }
}
