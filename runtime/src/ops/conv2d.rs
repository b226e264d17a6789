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
use crate::kernels::{self, AOperand, BOperand, Bias, ConvGeom, Crop, Elems, MatRef, Pixels};
use crate::model::{CsrView, Indices, Model, TensorView};
use crate::par::{
    par_depthwise, par_examples, par_gemm, par_im2col_gemm, par_ocgemm, par_phase_image, par_spmm,
    par_winograd, slice_elems, Parts,
};
use crate::pool::Pool;

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
        let dense_weight =
            dense.is_some() || matches!(cx.model.tensor(self.weight), TensorView::Dense(_));
        let implicit_ok = !depthwise && !direct && gm.implicit();
        // Dense stride-2 windows of one group read their patch rows from the image's phases.
        let phased = !depthwise && groups == 1 && !gm.implicit() && gm.phased() && dense_weight;
        // A CSR weight reads the implicit patch matrix through its column indices turned into
        // the offsets of their rows (checked once here, as a CSR matrix over offsets).
        let offs = implicit_ok.then(|| gm.implicit_offsets(c / groups));
        let sparse_idx = match (cx.model.tensor(self.weight), &offs) {
            (TensorView::Csr(w), Some(offs)) if dense.is_none() => {
                let top = offs.last().map_or(0, |&o| o + 1);
                let idx: Option<Vec<u32>> = (0..w.nnz())
                    .map(|k| u32::try_from(offs[w.col_idx().get(k)]).ok())
                    .collect();
                idx.filter(|idx| {
                    let view =
                        CsrView::new(w.rows(), top, w.row_ptr(), Indices::U32(idx), w.values());
                    view.is_ok()
                })
                .map(|idx| (idx, top))
            }
            _ => None,
        };
        let implicit = implicit_ok && (dense_weight || sparse_idx.is_some());
        // Dense f32 weights of a GEMM convolution are packed once into the kernel's panels
        // (when the copy fits the memory limit).
        let cpg = c / groups;
        let (opg, k) = (out_c / groups, cpg * gm.kh * gm.kw);
        let model = cx.model;
        let f32_weight: Option<alloc::borrow::Cow<'_, [f32]>> =
            match (dense, model.tensor(self.weight)) {
                (Some(r), _) => Some(r.of(cx.params()).to_vec().into()),
                (None, TensorView::Dense(Elems::F32(w))) => Some(w.into()),
                _ => None,
            };
        // A 3×3 stride-1 window of one group runs as Winograd where that pays, with its weights
        // transformed once, when they and its scratch (every example's padded input) fit what
        // is left of the memory limit; otherwise it takes the kernels below.
        let room = cx.param_limit.saturating_sub(cx.params.len());
        let wino = (groups == 1 && !depthwise && cx.pack_weights && cx.winograd)
            .then(|| kernels::WinoGeom::new(&gm, out_c, wino_tile(&gm, cx.batch)))
            .flatten()
            .filter(wino_pays)
            .filter(|wg| {
                let need = wg.scratch_len(cx.batch, cx.threads);
                need.saturating_add(wg.weights_len()) <= room
            });
        let wino_u = match (&wino, &f32_weight) {
            (Some(wg), Some(w)) => cx.try_alloc_params(wg.weights_len()).map(|(range, dst)| {
                kernels::winograd_weights(wg, w, dst);
                range
            }),
            _ => None,
        };
        let wino = wino.filter(|_| wino_u.is_some());
        // One group of dense f32 weights, stride 1, runs with the output channels in the
        // vector lanes where the pixel-major GEMM would compute many padded columns.
        let oc_ker = kernels::ocgemm_kernel();
        let use_oc = wino.is_none()
            && groups == 1
            && !depthwise
            && (direct || implicit_ok)
            && f32_weight.is_some()
            && oc_pays(oc_ker, &gm, out_c, k, direct);
        let packed = match f32_weight {
            _ if wino.is_some() => wino_u,
            Some(w) if cx.pack_weights && !depthwise && opg > 0 && k > 0 => {
                let mr = if use_oc {
                    oc_ker.nr
                } else {
                    kernels::gemm_kernel().mr
                };
                let per_group = kernels::PackedA::len(opg, k, mr);
                cx.try_alloc_params(per_group * groups).map(|(range, dst)| {
                    for (gi, d) in dst.chunks_exact_mut(per_group).enumerate() {
                        let a = MatRef::row_major(Elems::F32(&w[gi * opg * k..]), opg, k);
                        kernels::pack_a_panels(&a, mr, d);
                    }
                    range
                })
            }
            _ => None,
        };
        let oc = (use_oc && packed.is_some()).then(|| {
            if direct {
                kernels::channel_offsets(c, gm.h * gm.w)
            } else {
                gm.implicit_offsets(c)
            }
        });
        let mut scratch_len = 0;
        if let Some(wg) = &wino {
            // Every example's padded input, and one block of tiles per thread.
            cx.need_scratch(wg.scratch_len(cx.batch, cx.threads));
            cx.need_gemm_ws(wg.ws_len(cx.batch));
        } else if oc.is_some() {
            // The padded image, one per thread when examples run in parallel.
            if !direct {
                scratch_len = gm.padded_len();
                let copies = if cx.batch > 1 { cx.threads } else { 1 };
                cx.need_scratch(scratch_len.saturating_mul(copies));
            }
        } else if !depthwise {
            if !direct {
                // One patch matrix (or padded image and output) per thread when examples run
                // in parallel.
                scratch_len = if implicit {
                    gm.implicit_len(out_c)
                } else if phased {
                    gm.phased_len(out_c)
                } else {
                    kernels::im2col_len(&gm, cpg)
                };
                // Examples split across threads, or (im2col) output rows: a block per thread.
                let copies = if cx.batch > 1 || !(implicit || phased) {
                    cx.threads
                } else {
                    1
                };
                cx.need_scratch(scratch_len.saturating_mul(copies));
            }
            let n = if implicit {
                gm.implicit_cols()
            } else if phased {
                gm.phase_cols()
            } else {
                gm.oh * gm.ow
            };
            cx.need_gemm_ws(kernels::gemm_workspace(opg, n, k));
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
            offs: if phased {
                Some(gm.phase_offsets())
            } else {
                offs.filter(|_| implicit)
            },
            phased,
            packed,
            oc,
            wino,
            dense_weight,
            sparse_idx,
            scratch_len,
            max_pool: None,
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
    /// Row offsets of the implicit patch matrix of a group, for dense weights and stride 1
    /// (see [`ConvGeom::implicit_offsets`]); otherwise an im2col patch matrix is built.
    offs: Option<Vec<usize>>,
    /// With `offs` and a CSR weight: its column indices as offsets of the padded image's rows,
    /// and one past the largest offset (the view's column count).
    sparse_idx: Option<(Vec<u32>, usize)>,
    /// Floats of scratch per example (0 where none is used).
    scratch_len: usize,
    /// Dense f32 weights packed for [`kernels::gemm_kernel`], one [`kernels::PackedA`] of
    /// `out_c / groups` rows per group, back to back; with `oc`, packed for
    /// [`kernels::ocgemm_kernel`] instead.
    packed: Option<Range>,
    /// The input rows' offsets for the channels-in-lanes kernel, when it runs this layer: of
    /// the padded image (stride 1), or of the input's channels (1×1).
    oc: Option<Vec<usize>>,
    /// The layer's geometry and tile when it runs as Winograd; `packed` then holds its
    /// transformed weights.
    wino: Option<kernels::WinoGeom>,
    /// The stored weight is dense, or planning expanded it (`dense`).
    dense_weight: bool,
    /// A dense stride-2 window: `offs` are [`ConvGeom::phase_offsets`] into the image's phases.
    phased: bool,
    /// The 2×2, stride-2 max pooling fused after this layer ([`Kernel::fuse_max_pool`]): its
    /// geometry over this layer's output, whose pooled map the kernel writes instead.
    max_pool: Option<ConvGeom>,
}

/// Whether Winograd beats the GEMM kernels on this layer: its transforms cost per
/// input and per output channel what its GEMMs save per channel pair, so both counts must be
/// large enough. Measured (`conv3x3/` bench, AVX-512): 1.2–1.45× faster from 32 channels in and
/// out (32→64 on 14×14, 64→128 on 7×7, 64→64 on 56×56), 2× slower at 8 or 16.
fn wino_pays(wg: &kernels::WinoGeom) -> bool {
    wg.c >= WINO_MIN_CHANNELS && wg.oc >= WINO_MIN_CHANNELS
}

/// The Winograd tile for a layer run on `batch` examples: F(4×4, 3×3) (36 multiplies per 16
/// pixels instead of 16 per 4) where the batch has enough 4×4 tiles to fill the GEMMs' rows,
/// F(2×2, 3×3) otherwise. Measured (`conv3x3/` bench and M1, AVX-512): F(4×4) 1.2–1.4× faster
/// than F(2×2) from 16 tiles up (14×14, 28×28, 56×56 maps at batch 1; 7×7 at batch 64), the
/// same at 4 tiles (7×7 at batch 1).
fn wino_tile(gm: &ConvGeom, batch: usize) -> usize {
    let tiles4 = gm.oh.div_ceil(4) * gm.ow.div_ceil(4);
    if tiles4.saturating_mul(batch) >= WINO4_MIN_TILES {
        4
    } else {
        2
    }
}

/// Fewest 4×4 tiles (over the batch) that run F(4×4, 3×3).
const WINO4_MIN_TILES: usize = 16;

/// Fewest input and output channels a Winograd layer has.
const WINO_MIN_CHANNELS: usize = 32;

/// Whether the channels-in-lanes kernel beats the pixel-major GEMM on this layer: it computes
/// no padded column (the GEMM computes its tiles' full width over the padded grid), but rounds
/// the channels up to its panels and transposes every tile as it stores it, which pays back
/// only over a deep enough sum.
fn oc_pays(
    oc: &kernels::OcGemmKernel,
    gm: &ConvGeom,
    out_c: usize,
    k: usize,
    direct: bool,
) -> bool {
    let gemm = kernels::gemm_kernel();
    if k < oc.min_k || out_c == 0 || gm.oh * gm.ow == 0 {
        return false;
    }
    let p = gm.oh * gm.ow;
    let grid = if direct { p } else { gm.implicit_cols() };
    let gemm_work = out_c.next_multiple_of(gemm.mr) * grid.next_multiple_of(gemm.nr);
    let oc_work = out_c.next_multiple_of(oc.nr) * p;
    // The channels-in-lanes tile pays its transposing store and narrower tiles; ask for a
    // clear margin.
    oc_work * OC_MARGIN_DEN < gemm_work * OC_MARGIN_NUM
}

/// It runs when its work is below `NUM / DEN` of the GEMM's.
const OC_MARGIN_NUM: usize = 9;
const OC_MARGIN_DEN: usize = 10;

impl Kernel for ConvKernel {
    fn expanded(&self) -> bool {
        self.dense.is_some()
    }

    /// Only the sparse implicit path fuses: it computes its output on the padded grid and would
    /// otherwise crop it, apply the activation and store it for the pooling to read back; fused,
    /// each thread pools the rows it computed straight from the grid.
    fn fuse_max_pool(&mut self, g: ConvGeom) -> bool {
        let fits = (g.c, g.h, g.w) == (self.out_c, self.geom.oh, self.geom.ow);
        let ok = self.sparse_idx.is_some() && fits && kernels::max2x2_fits(&g);
        if ok {
            self.max_pool = Some(g);
        }
        ok
    }

    fn method(&self) -> &'static str {
        let sparse = !self.dense_weight;
        match () {
            _ if self.packed.is_some() && self.wino.is_some_and(|w| w.tile == 2) => "winograd_f2",
            _ if self.packed.is_some() && self.wino.is_some() => "winograd_f4",
            _ if self.oc.is_some() && self.packed.is_some() => "channels_in_lanes",
            _ if self.depthwise => "depthwise",
            _ if self.sparse_idx.is_some() && self.max_pool.is_some() => "implicit_spmm_maxpool",
            _ if self.sparse_idx.is_some() => "implicit_spmm",
            _ if self.phased => "phased_gemm",
            _ if self.offs.is_some() => "implicit_gemm",
            _ if self.direct && sparse => "spmm",
            _ if self.direct => "gemm",
            _ if sparse => "im2col_spmm",
            _ => "im2col_gemm",
        }
    }

    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        let gm = &self.geom;
        let x = ins.get(0);
        let bias = self.bias.map(|b| b.of(cx.params));
        let wv = match self.dense {
            Some(r) => TensorView::Dense(Elems::F32(r.of(cx.params))),
            None => cx.model.tensor(self.weight),
        };
        if let (Some(wg), Some(u)) = (&self.wino, self.packed.map(|r| r.of(cx.params))) {
            let ker = kernels::winograd_kernel();
            let (scratch, ws, ws_len) = (&mut *cx.scratch, &mut *cx.gemm_ws, cx.ws_len);
            par_winograd(
                cx.pool, ker, wg, cx.n, x, u, bias, self.act, y, scratch, ws, ws_len,
            );
            return;
        }
        let in_len = ins.elems(0);
        let p = self
            .max_pool
            .as_ref()
            .map_or(gm.oh * gm.ow, |g| g.oh * g.ow);
        let out_len = self.out_c * p;
        let ws_len = cx.ws_len;
        let packed = self.packed.map(|r| r.of(cx.params));
        let one = |pool: &Pool, e: usize, ye: &mut [f32], s: &mut [f32], ws: &mut [f32]| {
            let xe = &x[e * in_len..(e + 1) * in_len];
            self.example(pool, wv, packed, bias, xe, ye, s, ws, ws_len);
        };
        let macs = self.out_c * gm.oh * gm.ow * (gm.c / self.groups) * gm.kh * gm.kw;
        let split = par_examples(
            cx.pool,
            cx.n,
            macs,
            y,
            out_len,
            cx.scratch,
            self.scratch_len,
            cx.gemm_ws,
            ws_len,
            &one,
        );
        if !split {
            for e in 0..cx.n {
                let ye = &mut y[e * out_len..(e + 1) * out_len];
                one(cx.pool, e, ye, cx.scratch, cx.gemm_ws);
            }
        }
    }
}

impl ConvKernel {
    /// One example: `xe` `[c, h, w]` to `ye` `[out_c, oh, ow]`, with `pool`'s threads inside
    /// the kernels, `scratch` for the patch matrix and `ws` (`ws_len` floats per thread);
    /// `packed` is [`ConvKernel::packed`]'s data.
    #[allow(clippy::too_many_arguments)]
    fn example(
        &self,
        pool: &Pool,
        wv: TensorView<'_>,
        packed: Option<&[f32]>,
        bias: Option<&[f32]>,
        xe: &[f32],
        ye: &mut [f32],
        scratch: &mut [f32],
        ws: &mut [f32],
        ws_len: usize,
    ) {
        let (gm, groups, act) = (&self.geom, self.groups, self.act);
        let p = gm.oh * gm.ow;
        let cpg = gm.c / groups;
        let opg = self.out_c / groups;
        let k = cpg * gm.kh * gm.kw;
        let a_of = |w, gi| group_weights(w, packed, gi, opg, k);
        if let (Some(offs), Some(packed)) = (&self.oc, packed) {
            let ker = kernels::ocgemm_kernel();
            let w = kernels::PackedA {
                data: packed,
                rows: self.out_c,
                cols: k,
                mr: ker.nr,
            };
            let (x, px) = if self.direct {
                let px = Pixels {
                    oh: gm.oh,
                    ow: gm.ow,
                    wp: gm.ow,
                };
                (xe, px)
            } else {
                let (_, wp) = gm.padded();
                let xpad = &mut scratch[..gm.padded_len()];
                kernels::pad_image(gm, xe, xpad);
                let px = Pixels {
                    oh: gm.oh,
                    ow: gm.ow,
                    wp,
                };
                (&*xpad, px)
            };
            par_ocgemm(pool, ker, w, x, offs, px, ye, p, bias, act);
            return;
        }
        match wv {
            TensorView::Dense(w) if self.depthwise => {
                par_depthwise(pool, gm, xe, w, bias, act, ye);
            }
            TensorView::Csr(w) if self.sparse_idx.is_some() => {
                let (idx, top) = self
                    .sparse_idx
                    .as_ref()
                    .map(|(i, t)| (&i[..], *t))
                    .unwrap_or_default();
                // SAFETY: `plan` checked these parts with `CsrView::new`.
                let w = unsafe {
                    CsrView::new_unchecked(
                        w.rows(),
                        top,
                        w.row_ptr(),
                        Indices::U32(idx),
                        w.values(),
                    )
                };
                let (hp, wp) = gm.padded();
                // Fused pooling reads only the grid's pixels its windows cover (a floor-mode
                // pooling drops an odd map's last row and column); each part pools its rows from
                // the grid, then applies the activation to the pooled values where it commutes
                // with the max.
                let cols = match &self.max_pool {
                    Some(pg) if pg.oh > 0 && pg.ow > 0 => (2 * pg.oh - 1) * wp + 2 * pg.ow,
                    Some(_) => 0,
                    None => gm.implicit_cols(),
                };
                let (xpad, out) = scratch.split_at_mut(gm.padded_len());
                kernels::pad_image(gm, xe, xpad);
                let post_act = self.max_pool.is_some() && monotone(act);
                let pre_act = if post_act { Activation::None } else { act };
                let (pooled, yp) = (self.max_pool.as_ref(), Parts::new(ye));
                let lay = kernels::PlaneLayout {
                    plane: cols,
                    row: wp,
                };
                let pool_rows = |rows: core::ops::Range<usize>, grid: &[f32]| {
                    let Some(pg) = pooled else { return };
                    let pp = pg.oh * pg.ow;
                    // SAFETY: parts pool disjoint row ranges into disjoint planes of `ye`, which
                    // holds `out_c * pp` floats.
                    let yr = unsafe { yp.slice(rows.start * pp, rows.len() * pp) };
                    kernels::maxpool2x2_grid(pg, grid, lay, yr, rows.len());
                    if post_act {
                        kernels::apply_act(act, yr);
                    }
                };
                for gi in 0..groups {
                    let xg = &xpad[gi * cpg * hp * wp..];
                    let og = &mut out[gi * opg * cols..(gi + 1) * opg * cols];
                    par_spmm(
                        pool,
                        &w,
                        gi * opg..(gi + 1) * opg,
                        xg,
                        1,
                        cols,
                        bias,
                        pre_act,
                        og,
                        &pool_rows,
                    );
                }
                if pooled.is_none() {
                    kernels::crop_rows(gm, self.out_c, out, ye);
                }
            }
            TensorView::Dense(w) if self.offs.is_some() => {
                let offs = self.offs.as_deref().unwrap_or_default();
                // The patch rows are runs of the padded image (stride 1) or of its phases
                // (stride 2): output pixels on a grid `wp` wide, a group's channels `gstride`
                // floats after the previous group's.
                let (len, wp, cols, gstride) = if self.phased {
                    let (hq, wq) = gm.phase_hw();
                    (gm.phase_len(), wq, gm.phase_cols(), cpg * 4 * hq * wq)
                } else {
                    let (hp, wp) = gm.padded();
                    (gm.padded_len(), wp, gm.implicit_cols(), cpg * hp * wp)
                };
                let (xpad, out) = scratch.split_at_mut(len);
                if self.phased {
                    par_phase_image(pool, gm, xe, xpad, opg, k);
                } else {
                    kernels::pad_image(gm, xe, xpad);
                }
                // Kernels that store kept columns themselves write the output directly;
                // the others write the grid, cropped after.
                let crops = kernels::gemm_kernel().crops(k);
                for gi in 0..groups {
                    let a = a_of(w, gi);
                    let b = BOperand::Rows {
                        data: &xpad[gi * gstride..],
                        offs,
                        cols,
                        crop: crops.then_some(Crop {
                            wp,
                            ow: gm.ow,
                            first: 0,
                        }),
                    };
                    let (og, ldc) = if crops {
                        (&mut ye[gi * opg * p..(gi + 1) * opg * p], p)
                    } else {
                        (&mut out[gi * opg * cols..(gi + 1) * opg * cols], cols)
                    };
                    let bg = bias.map(|b| &b[gi * opg..(gi + 1) * opg]);
                    let bias = bg.map_or(Bias::None, Bias::Row);
                    par_gemm(pool, a, b, og, ldc, bias, act, ws, ws_len);
                }
                if !crops {
                    kernels::crop_grid(gm, self.out_c, out, cols, wp, ye);
                }
            }
            _ => {
                // One group through im2col: its output rows split across the pool where that
                // pays, each thread with its own patch rows.
                if let (TensorView::Dense(w), false, 1) = (wv, self.direct, groups) {
                    let bias = bias.map_or(Bias::None, Bias::Row);
                    let (s_len, a) = (self.scratch_len, a_of(w, 0));
                    if par_im2col_gemm(pool, gm, xe, a, bias, act, ye, scratch, s_len, ws, ws_len) {
                        return;
                    }
                }
                for gi in 0..groups {
                    let cols: &[f32] = if self.direct {
                        &xe[gi * cpg * p..(gi + 1) * cpg * p]
                    } else {
                        kernels::im2col(gm, xe, gi * cpg, cpg, scratch);
                        &scratch[..k * p]
                    };
                    let yg = &mut ye[gi * opg * p..(gi + 1) * opg * p];
                    let bg = bias.map(|b| &b[gi * opg..(gi + 1) * opg]);
                    match wv {
                        TensorView::Dense(w) => {
                            let a = a_of(w, gi);
                            let bm = BOperand::Mat(MatRef::row_major(Elems::F32(cols), k, p));
                            let bias = bg.map_or(Bias::None, Bias::Row);
                            par_gemm(pool, a, bm, yg, p, bias, act, ws, ws_len);
                        }
                        TensorView::BlockCsr(_) => {
                            unreachable!("planning expands blocked convolution weights")
                        }
                        TensorView::Csr(w) => {
                            let rows = gi * opg..(gi + 1) * opg;
                            par_spmm(pool, &w, rows, cols, p, p, bias, act, yg, &|_, _| {})
                        }
                    }
                }
            }
        }
    }
}

/// Whether `act`, as computed in floats, never decreases, so that it commutes with a max
/// exactly: `act(max(a, b)) = max(act(a), act(b))`. Piecewise-linear activations do (a product
/// by a non-negative constant, a sum and a clamp round monotonically); the others are computed
/// with approximations not guaranteed monotone to the last bit, so they run before the max.
fn monotone(act: Activation) -> bool {
    match act {
        Activation::None | Activation::Relu | Activation::Relu6 => true,
        Activation::LeakyRelu { alpha } => alpha >= 0.0,
        Activation::HardSigmoid { alpha, .. } => alpha >= 0.0,
        Activation::Sigmoid
        | Activation::Tanh
        | Activation::Gelu
        | Activation::Silu
        | Activation::HardSwish => false,
    }
}

/// Group `gi`'s `opg × k` weights as a GEMM's `A`: from `packed` (see [`ConvKernel::packed`])
/// when the session packed them, otherwise in place in `w`.
fn group_weights<'a>(
    w: Elems<'a>,
    packed: Option<&'a [f32]>,
    gi: usize,
    opg: usize,
    k: usize,
) -> AOperand<'a> {
    match packed {
        Some(p) => {
            let mr = kernels::gemm_kernel().mr;
            let len = kernels::PackedA::len(opg, k, mr);
            AOperand::Packed(kernels::PackedA {
                data: &p[gi * len..(gi + 1) * len],
                rows: opg,
                cols: k,
                mr,
            })
        }
        None => MatRef::row_major(slice_elems(w, gi * opg * k), opg, k).into(),
    }
}
