//! Splitting one kernel call across the session's pool: each part takes a disjoint range of
//! output rows (or channels), sized so small operations stay on one thread.

use crate::format::Activation;
use crate::kernels::{self, AOperand, BOperand, Bias, ConvGeom, Elems, MatRef, PackedA, Pixels};
use crate::model::CsrView;
use crate::pool::Pool;

/// Below this many multiply-adds an operation runs on one thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// The part of `0..len` that part `part` of `parts` handles, in multiples of `align`.
fn part_range(len: usize, parts: usize, align: usize, part: usize) -> (usize, usize) {
    let step = len.div_ceil(parts).div_ceil(align) * align;
    let r0 = (part * step).min(len);
    (r0, (r0 + step).min(len))
}

/// Steps each thread's share of a [`split`] is cut into when the pool finds its threads
/// running unevenly ([`Pool::run_steps`]).
const STEPS: usize = 4;

/// Runs `f(slot, r0, r1)` over `0..len` split across the pool's threads as [`part_range`]
/// splits it (in multiples of `align`), each thread's share possibly cut into steps (no more
/// than the first share has multiples of `align`) that a thread done with its own share may
/// take over ([`Pool::run_steps`]); `slot` names the thread, and one thread may run several
/// ranges. Empty ranges are skipped.
fn split(pool: &Pool, len: usize, align: usize, f: &(dyn Fn(usize, usize, usize) + Sync)) {
    let parts = pool.threads();
    let units = |(p0, p1): (usize, usize)| (p1 - p0).div_ceil(align);
    let max_steps = STEPS.min(units(part_range(len, parts, align, 0))).max(1);
    let piece = |part, step, steps| {
        let (p0, p1) = part_range(len, parts, align, part);
        let n = units((p0, p1));
        let at = |s: usize| (p0 + (n * s).div_ceil(steps) * align).min(p1);
        (at(step), at(step + 1))
    };
    run_pieces(pool, max_steps, &piece, f);
}

/// What [`run_pieces`] runs: `piece(part, step, steps)` is the range of step `step` of
/// `steps` of part `part`.
type PieceFn<'a> = dyn Fn(usize, usize, usize) -> (usize, usize) + Sync + 'a;

/// Runs `f(slot, r0, r1)` for the range `piece(part, step, steps)` of every part and step
/// [`Pool::run_steps`] hands out (at most `max_steps` steps per part); empty ranges are
/// skipped. The pieces of all parts and steps are disjoint.
fn run_pieces(
    pool: &Pool,
    max_steps: usize,
    piece: &PieceFn<'_>,
    f: &(dyn Fn(usize, usize, usize) + Sync),
) {
    pool.run_steps(max_steps, &|slot, part, step, steps| {
        let (r0, r1) = piece(part, step, steps);
        if r0 < r1 {
            f(slot, r0, r1);
        }
        r0 < r1
    });
}

/// [`split`] for the rows `rows` of a sparse `w`, by non-zeros: part `part`'s share is
/// [`nnz_range`]'s, each step of it an equal share of its non-zeros.
fn split_nnz(
    pool: &Pool,
    w: &CsrView<'_>,
    rows: core::ops::Range<usize>,
    f: &(dyn Fn(usize, usize, usize) + Sync),
) {
    let parts = pool.threads();
    let max_steps = STEPS.min(rows.len() / parts).max(1);
    let piece = |part, step, steps| nnz_range(w, rows.clone(), parts * steps, part * steps + step);
    run_pieces(pool, max_steps, &piece, f);
}

/// A mutable base pointer handed to the pool's parts, each of which touches a disjoint range.
#[derive(Clone, Copy)]
pub(crate) struct Parts(*mut f32);

// SAFETY: every user derives disjoint ranges per part or step (from `part_range`, `split`,
// `nnz_range` or the row ranges of `par_phase_image`; see the call sites).
unsafe impl Sync for Parts {}

impl Parts {
    pub(crate) fn new(v: &mut [f32]) -> Self {
        Parts(v.as_mut_ptr())
    }

    /// # Safety
    /// `at` lies inside the allocation.
    pub(crate) unsafe fn at(&self, at: usize) -> *mut f32 {
        // SAFETY: guaranteed by the caller.
        unsafe { self.0.add(at) }
    }

    /// # Safety
    /// `start..start + len` lies inside the allocation and no other part uses it concurrently.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { core::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

pub(crate) fn slice_elems(e: Elems<'_>, from: usize) -> Elems<'_> {
    match e {
        Elems::F32(v) => Elems::F32(&v[from..]),
        Elems::F16(v) => Elems::F16(&v[from..]),
    }
}

/// How [`par_gemm`] splits a `rows × depth` by `depth × n` product over `parts` threads: `None`
/// (one thread), `Some(true)` (the columns of `B` and `C`: `A` has too few rows to give every
/// part several row panels) or `Some(false)` (the rows of `A` and `C`).
fn gemm_split(parts: usize, rows: usize, depth: usize, n: usize) -> Option<bool> {
    let columns = n >= rows && n >= 64 * parts;
    let serial = parts == 1 || (rows < 16 && !columns) || rows * depth * n < PAR_MIN_MACS;
    (!serial).then_some(columns)
}

/// The first column of part `part` of `n` when [`par_gemm`] splits columns.
fn gemm_column_start(n: usize, parts: usize, part: usize) -> usize {
    part_range(n, parts, GEMM_COLUMN_ALIGN, part).0
}

/// Columns of a [`par_gemm`] part are a multiple of this.
const GEMM_COLUMN_ALIGN: usize = 32;

/// [`kernels::phase_image`] for the phased convolution whose GEMM ([`par_gemm`]) has `rows`
/// rows of `A` and a sum `depth` deep, split across the pool by phase rows as that GEMM splits
/// its columns (output pixels on the phase grid), so that the thread that writes a part's rows
/// is, unless a thread takes over a late or slower thread's part or steps ([`Pool::run`],
/// [`Pool::run_steps`]), the one whose GEMM part reads them, all but the row below its last.
pub(crate) fn par_phase_image(
    pool: &Pool,
    g: &ConvGeom,
    x: &[f32],
    xq: &mut [f32],
    rows: usize,
    depth: usize,
) {
    let parts = pool.threads();
    let n = g.phase_cols();
    let (hq, wq) = g.phase_hw();
    if gemm_split(parts, rows, depth, n) != Some(true) || wq == 0 {
        kernels::phase_image(g, x, xq);
        return;
    }
    assert!(xq.len() >= g.phase_len() && x.len() >= g.c * g.h * g.w);
    let xp = Parts::new(xq);
    // Part `p` writes rows `first(p)..first(p + 1)`: disjoint, and together `0..hq`.
    let first = |p: usize| match p {
        0 => 0,
        p if p >= parts => hq,
        p => (gemm_column_start(n, parts, p) / wq).min(hq),
    };
    pool.run(&|part| {
        let (i0, i1) = (first(part), first(part + 1));
        if i0 < i1 {
            // SAFETY: `xq` holds the phase rows (asserted above), and parts write disjoint row
            // ranges.
            unsafe { kernels::phase_rows(g, x, xp.at(0), i0..i1) };
        }
    });
}

/// [`kernels::gemm`], with the rows of `a` (and `c`) split across the pool when it pays.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_gemm<'a>(
    pool: &Pool,
    a: impl Into<AOperand<'a>>,
    b: BOperand<'_>,
    c: &mut [f32],
    ldc: usize,
    bias: Bias<'_>,
    act: Activation,
    ws: &mut [f32],
    ws_len: usize,
) {
    let a: AOperand<'a> = a.into();
    let parts = pool.threads();
    let n = match b {
        BOperand::Mat(m) => m.cols,
        BOperand::Rows { cols, .. } => cols,
    };
    let (rows, depth) = (a.rows(), a.cols());
    let Some(columns) = gemm_split(parts, rows, depth, n) else {
        kernels::gemm_b(a, b, c, ldc, bias, act, &mut ws[..ws_len]);
        return;
    };
    let (c_len, cp, wp) = (c.len(), Parts(c.as_mut_ptr()), Parts(ws.as_mut_ptr()));
    // Split the longer side: the rows of `A` (and `C`), or the columns of `B` (and `C`) when
    // `A` has too few rows to give every part several row panels.
    if columns {
        split(pool, n, GEMM_COLUMN_ALIGN, &|slot, j0, j1| {
            // SAFETY: each thread has its own `ws_len` block of the workspace, which holds
            // `threads * ws_len` floats.
            let w = unsafe { wp.slice(slot * ws_len, ws_len) };
            let sub = match b {
                BOperand::Mat(m) => BOperand::Mat(MatRef {
                    data: slice_elems(m.data, j0 * m.cs),
                    cols: j1 - j0,
                    ..m
                }),
                BOperand::Rows {
                    data, offs, crop, ..
                } => BOperand::Rows {
                    data: &data[j0..],
                    offs,
                    cols: j1 - j0,
                    crop: crop.map(|c| c.shifted(j0)),
                },
            };
            // Where column `j0` lands in `C`.
            let c0 = match b {
                BOperand::Rows { crop: Some(c), .. } => c.packed_cols(j0),
                _ => j0,
            };
            let bias = match bias {
                Bias::Col(v) => Bias::Col(&v[j0..j1]),
                other => other,
            };
            // SAFETY: `C` from column `c0` on lies in `c` (`c_len - c0` floats); this part
            // reads and writes only the output columns of `j0..j1` in its rows, which no other
            // part touches.
            unsafe {
                kernels::gemm_kernel().run_b_raw(a, sub, cp.at(c0), c_len - c0, ldc, bias, act, w)
            };
        });
        return;
    }
    let (c_len, cp, wp) = (c.len(), Parts(c.as_mut_ptr()), Parts(ws.as_mut_ptr()));
    // Packed panels split at panel boundaries.
    let align = match a {
        AOperand::Packed(p) => p.mr,
        AOperand::Mat(_) => 8,
    };
    split(pool, rows, align, &|slot, r0, r1| {
        let end = if r1 == rows { c_len } else { r1 * ldc };
        // SAFETY: parts own disjoint row ranges, so `r0 * ldc..end` are disjoint ranges of `c`
        // (inside it: `end <= c_len`), and each part has its own `ws_len` block of the
        // workspace, which holds `threads * ws_len` floats.
        let (cc, w) = unsafe {
            (
                cp.slice(r0 * ldc, end - r0 * ldc),
                wp.slice(slot * ws_len, ws_len),
            )
        };
        let sub = match a {
            AOperand::Mat(a) => AOperand::Mat(MatRef {
                data: slice_elems(a.data, r0 * a.rs),
                rows: r1 - r0,
                ..a
            }),
            AOperand::Packed(p) => AOperand::Packed(p.rows(r0, r1)),
        };
        let bias = match bias {
            Bias::Row(v) => Bias::Row(&v[r0..r1]),
            other => other,
        };
        kernels::gemm_b(sub, b, cc, ldc, bias, act, w);
    });
}

/// [`kernels::OcGemmKernel::run`], split across the pool by channel panels (when there are
/// enough to share evenly) or by pixel tiles.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_ocgemm(
    pool: &Pool,
    ker: &kernels::OcGemmKernel,
    w: PackedA<'_>,
    x: &[f32],
    offs: &[usize],
    px: Pixels,
    c: &mut [f32],
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    let parts = pool.threads();
    let tiles = ker.pixel_tiles(px);
    let panels = w.rows.div_ceil(ker.nr);
    if parts == 1 || w.rows * w.cols * px.oh * px.ow < PAR_MIN_MACS {
        ker.run(w, x, offs, px, c, ldc, bias, act);
        return;
    }
    let by_channels = panels >= 4 * parts || (panels >= parts && panels.is_multiple_of(parts));
    let (c_len, cp) = (c.len(), Parts(c.as_mut_ptr()));
    let (len, align) = if by_channels {
        (w.rows, ker.nr)
    } else {
        (tiles, 1)
    };
    split(pool, len, align, &|_, i0, i1| {
        let (w, bias, c0, t) = if by_channels {
            (w.rows(i0, i1), bias.map(|b| &b[i0..i1]), i0 * ldc, 0..tiles)
        } else {
            (w, bias, 0, i0..i1)
        };
        // SAFETY: ranges are disjoint channel rows (from row `i0`, inside `c`) or disjoint
        // pixel tiles of every row, so no two write the same element of `c`.
        unsafe { ker.run_raw(w, x, offs, px, cp.at(c0), c_len - c0, ldc, bias, act, t) };
    });
}

/// [`kernels::WinogradKernel::run`] for `n` examples, split across the pool when the layer is
/// big enough: the examples are padded (split by examples), then each part transforms,
/// multiplies and writes back its own range of tiles with its own block of `scratch` and of
/// `ws` (`ws_len` floats per part). `scratch` holds [`kernels::WinoGeom::scratch_len`] for the
/// pool's threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_winograd(
    pool: &Pool,
    ker: &kernels::WinogradKernel,
    g: &kernels::WinoGeom,
    n: usize,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    scratch: &mut [f32],
    ws: &mut [f32],
    ws_len: usize,
) {
    let parts = pool.threads();
    let tiles = n * g.tiles_per_example();
    if parts == 1 || tiles < 2 * parts || n.saturating_mul(g.macs()) < PAR_MIN_MACS {
        ker.run(g, n, x, u, bias, act, y, scratch, &mut ws[..ws_len]);
        return;
    }
    let len = g.padded_len();
    let (xh, vm) = scratch.split_at_mut(n * len);
    if n >= parts {
        let xp = Parts(xh.as_mut_ptr());
        pool.run(&|part| {
            let (e0, e1) = part_range(n, parts, 1, part);
            // SAFETY: parts pad disjoint example ranges of `xh`, which holds `n` examples.
            let xs = unsafe { xp.slice(e0 * len, (e1 - e0) * len) };
            ker.pad(g, e0..e1, x, xs);
        });
    } else {
        ker.pad(g, 0..n, x, xh);
    }
    let vm_len = g.tiles_len(n);
    assert!(vm.len() >= parts * vm_len && ws.len() >= parts * ws_len);
    let (y_len, yp) = (y.len(), Parts(y.as_mut_ptr()));
    let (vp, wp) = (Parts(vm.as_mut_ptr()), Parts(ws.as_mut_ptr()));
    let xh = &*xh;
    split(pool, tiles, 1, &|slot, t0, t1| {
        // SAFETY: each thread has its own block of the scratch and of the workspace (asserted
        // above to hold `parts` blocks), and each range its own tiles, whose pixels no other
        // range writes.
        unsafe {
            let (v, w) = (
                vp.slice(slot * vm_len, vm_len),
                wp.slice(slot * ws_len, ws_len),
            );
            ker.run_tiles(g, n, xh, u, bias, act, t0..t1, yp.at(0), y_len, v, w);
        }
    });
}

/// [`kernels::gemv`] over a row-major `m × k` matrix, rows split across the pool when it pays.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_gemv(
    pool: &Pool,
    w: Elems<'_>,
    k: usize,
    m: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    if parts == 1 || m < 32 || m * k < PAR_MIN_MACS {
        kernels::gemv(w, k, m, k, x, bias, act, y);
        return;
    }
    let yp = Parts(y.as_mut_ptr());
    split(pool, m, 8, &|_, r0, r1| {
        // SAFETY: ranges are disjoint row ranges `r0..r1` of `y`, which has `m >= r1` elements.
        let yy = unsafe { yp.slice(r0, r1 - r0) };
        kernels::gemv(
            slice_elems(w, r0 * k),
            k,
            r1 - r0,
            k,
            x,
            bias.map(|b| &b[r0..r1]),
            act,
            yy,
        );
    });
}

/// Rows `rows` of `w` split into `parts` ranges of about equal non-zero counts; part `part`'s.
fn nnz_range(
    w: &CsrView<'_>,
    rows: core::ops::Range<usize>,
    parts: usize,
    part: usize,
) -> (usize, usize) {
    let rp = w.row_ptr();
    let (n0, n1) = (rp[rows.start] as usize, rp[rows.end] as usize);
    let at = |q: usize| {
        let target = n0 + (n1 - n0) * q / parts;
        let i = rp[rows.start..=rows.end].partition_point(|&v| (v as usize) < target);
        (rows.start + i).min(rows.end)
    };
    let r0 = if part == 0 { rows.start } else { at(part) };
    let r1 = if part + 1 == parts {
        rows.end
    } else {
        at(part + 1)
    };
    (r0, r1.max(r0))
}

/// [`kernels::spmv`] with rows split across the pool by non-zeros when it pays.
pub(crate) fn par_spmv(
    pool: &Pool,
    w: &CsrView<'_>,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    if parts == 1 || w.rows() < 32 || w.nnz() < PAR_MIN_MACS / 16 {
        kernels::spmv(w, x, bias, act, y);
        return;
    }
    let ker = kernels::spmv_kernel(w.values().dtype(), w.col_idx().width());
    let yp = Parts(y.as_mut_ptr());
    split_nnz(pool, w, 0..w.rows(), &|_, r0, r1| {
        // SAFETY: ranges are disjoint row ranges `r0..r1` of `y`, which has `w.rows() >= r1`
        // elements.
        let yy = unsafe { yp.slice(r0, r1 - r0) };
        ker.run(w, r0..r1, x, bias, act, yy);
    });
}

/// What [`par_spmm`] runs on each part's rows once they are computed: `(rows, y_rows)`, the
/// rows of `w` and their `rows.len() × p` outputs.
pub(crate) type RowsFn<'a> = dyn Fn(core::ops::Range<usize>, &[f32]) + Sync + 'a;

/// [`kernels::spmm`] over rows `rows` of `w` (output `y`: `rows.len() × p`) with the rows split
/// across the pool by non-zeros when it pays; each part then runs `then` on its rows, on the
/// thread that computed them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_spmm(
    pool: &Pool,
    w: &CsrView<'_>,
    rows: core::ops::Range<usize>,
    b: &[f32],
    b_rs: usize,
    p: usize,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    then: &RowsFn<'_>,
) {
    let parts = pool.threads();
    let nnz = (w.row_ptr()[rows.end] - w.row_ptr()[rows.start]) as usize;
    if parts == 1 || rows.len() < 16 || nnz * p < PAR_MIN_MACS {
        kernels::spmm_strided(w, rows.clone(), b, b_rs, p, bias, act, y);
        then(rows.clone(), &y[..rows.len() * p]);
        return;
    }
    let ker = kernels::spmm_kernel(w.values().dtype(), w.col_idx().width());
    assert!(
        y.len() >= rows.len() * p,
        "spmm: output shorter than rows * p"
    );
    let (g0, yp) = (rows.start, Parts(y.as_mut_ptr()));
    split_nnz(pool, w, rows.clone(), &|_, r0, r1| {
        // SAFETY: ranges are disjoint row ranges, so `(r0 - g0) * p..(r1 - g0) * p` are disjoint
        // ranges of `y`, which holds `rows.len() * p` elements (asserted above).
        let yy = unsafe { yp.slice((r0 - g0) * p, (r1 - r0) * p) };
        ker.run_strided(w, r0..r1, b, b_rs, p, bias, act, yy);
        then(r0..r1, yy);
    });
}

/// [`kernels::depthwise_conv2d`] with channels split across the pool when it pays.
pub(crate) fn par_depthwise(
    pool: &Pool,
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    // A depthwise multiply-add costs several of a GEMM's (it reuses no input across channels).
    if parts == 1 || g.c < 2 || g.c * g.oh * g.ow * g.kh * g.kw < PAR_MIN_MACS / 8 {
        kernels::depthwise_conv2d(g, x, w, bias, act, y);
        return;
    }
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let yp = Parts(y.as_mut_ptr());
    split(pool, g.c, 1, &|_, c0, c1| {
        // SAFETY: ranges are disjoint channel ranges, i.e. disjoint planes of `y` (`c * oh * ow`
        // elements).
        let yy = unsafe { yp.slice(c0 * plane_out, (c1 - c0) * plane_out) };
        let gg = ConvGeom { c: c1 - c0, ..*g };
        kernels::depthwise_conv2d(
            &gg,
            &x[c0 * plane_in..c1 * plane_in],
            slice_elems(w, c0 * taps),
            bias.map(|b| &b[c0..c1]),
            act,
            yy,
        );
    });
}

/// One example of [`par_examples`]: `(pool, example, its output, scratch, workspace)`.
pub(crate) type ExampleFn<'a> =
    dyn Fn(&Pool, usize, &mut [f32], &mut [f32], &mut [f32]) + Sync + 'a;

/// A block of planes of [`par_planes`]: `(input, output, planes)`.
pub(crate) type PlanesFn<'a> = dyn Fn(&[f32], &mut [f32], usize) + Sync + 'a;

/// Runs `f(pool, e, y_e, scratch, ws)` for every example `e < n` with the examples split across
/// the pool's threads, when there are at least as many examples as threads and the batch's
/// work (`macs` per example) is worth it: each part gets its examples' outputs `y_e` (`out_len`
/// elements of `y` each), its own `scratch_len` block of `scratch` and `ws_len` block of `ws`,
/// and a serial pool for the kernels inside. Returns `false`, having done nothing, when it does
/// not split; the caller then runs the examples one by one with the whole pool.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_examples(
    pool: &Pool,
    n: usize,
    macs: usize,
    y: &mut [f32],
    out_len: usize,
    scratch: &mut [f32],
    scratch_len: usize,
    ws: &mut [f32],
    ws_len: usize,
    f: &ExampleFn<'_>,
) -> bool {
    let parts = pool.threads();
    if parts == 1 || n < parts || n.saturating_mul(macs) < PAR_MIN_MACS {
        return false;
    }
    assert!(y.len() >= n * out_len);
    let yp = Parts(y.as_mut_ptr());
    let work = n.saturating_mul(macs);
    par_items(
        pool,
        n,
        1,
        work,
        scratch,
        scratch_len,
        ws,
        ws_len,
        &|es, s, w| {
            let serial = Pool::serial();
            for e in es {
                // SAFETY: parts own disjoint example ranges, so the outputs are disjoint ranges of
                // `y`, which holds `n * out_len` elements (asserted above).
                let ye = unsafe { yp.slice(e * out_len, out_len) };
                f(&serial, e, ye, s, w);
            }
        },
    );
    true
}

/// What [`par_elems`] runs on each part.
pub(crate) type ElemsFn<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// Below this many input elements a plane-wise operation runs on one thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// `f(x_part, y_part, planes_in_part)` over `planes` planes of `in_plane` input and `out_plane`
/// output elements each, the planes split across the pool when the input is big enough.
pub(crate) fn par_planes(
    pool: &Pool,
    planes: usize,
    in_plane: usize,
    out_plane: usize,
    x: &[f32],
    y: &mut [f32],
    f: &PlanesFn<'_>,
) {
    let parts = pool.threads();
    if parts == 1 || planes < 2 || planes * in_plane < PAR_MIN_ELEMS {
        f(x, y, planes);
        return;
    }
    assert!(x.len() >= planes * in_plane && y.len() >= planes * out_plane);
    let yp = Parts(y.as_mut_ptr());
    split(pool, planes, 1, &|_, p0, p1| {
        // SAFETY: ranges are disjoint plane ranges, so disjoint ranges of `y`, which holds
        // `planes * out_plane` elements (asserted above).
        let yy = unsafe { yp.slice(p0 * out_plane, (p1 - p0) * out_plane) };
        f(&x[p0 * in_plane..p1 * in_plane], yy, p1 - p0);
    });
}

/// `f(start, y_part)` over `y` cut into one contiguous part per thread (`y_part` is
/// `y[start..start + y_part.len()]`), on one thread below [`PAR_MIN_ELEMS`] elements.
pub(crate) fn par_elems(pool: &Pool, y: &mut [f32], f: &ElemsFn<'_>) {
    let (parts, len) = (pool.threads(), y.len());
    if parts == 1 || len < PAR_MIN_ELEMS {
        f(0, y);
        return;
    }
    let yp = Parts(y.as_mut_ptr());
    split(pool, len, 16, &|_, e0, e1| {
        // SAFETY: ranges are disjoint element ranges inside `y`'s `len` elements.
        let yy = unsafe { yp.slice(e0, e1 - e0) };
        f(e0, yy);
    });
}

/// A convolution through im2col with its output rows split across the pool: each part builds
/// the patch matrix of its rows in its own `scratch_len` block of `scratch` and multiplies it
/// into its columns of `y` (`[a.rows, oh * ow]`), so neither the patches nor the product cross
/// cores. Returns false (and does nothing) where one thread should run it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_im2col_gemm(
    pool: &Pool,
    g: &ConvGeom,
    x: &[f32],
    a: AOperand<'_>,
    bias: Bias<'_>,
    act: Activation,
    y: &mut [f32],
    scratch: &mut [f32],
    scratch_len: usize,
    ws: &mut [f32],
    ws_len: usize,
) -> bool {
    let (parts, p, k, m) = (pool.threads(), g.oh * g.ow, a.cols(), a.rows());
    if parts == 1
        || g.oh < 2 * parts
        || m * k * p < PAR_MIN_MACS
        || scratch.len() < parts * scratch_len
        || ws.len() < parts * ws_len
        || y.len() < m * p
    {
        return false;
    }
    let (cp, c_len) = (Parts(y.as_mut_ptr()), y.len());
    par_items(
        pool,
        g.oh,
        1,
        m * k * p,
        scratch,
        scratch_len,
        ws,
        ws_len,
        &|rows, cols, w| {
            kernels::im2col_rows(g, x, 0, g.c, rows.clone(), cols);
            let n = rows.len() * g.ow;
            let b = MatRef::row_major(Elems::F32(cols), k, n);
            let j0 = rows.start * g.ow;
            // SAFETY: `C` from column `j0` on lies in `y` (`c_len - j0` floats); this part writes
            // only columns `j0..j0 + n` of its rows, which no other part touches.
            unsafe {
                kernels::gemm_kernel().run_b_raw(
                    a,
                    BOperand::Mat(b),
                    cp.at(j0),
                    c_len - j0,
                    p,
                    bias,
                    act,
                    w,
                )
            };
        },
    );
    true
}

/// Channels per part when [`par_channels`] splits `channels` across `parts` in multiples of
/// `align`: the largest part's share.
pub(crate) fn channels_per_part(channels: usize, parts: usize, align: usize) -> usize {
    let (r0, r1) = part_range(channels, parts.max(1), align.max(1), 0);
    r1 - r0
}

/// One block of [`par_channels`]: `(example, channels, their output planes, scratch, workspace)`.
pub(crate) type ChannelsFn<'a> =
    dyn Fn(usize, core::ops::Range<usize>, &mut [f32], &mut [f32], &mut [f32]) + Sync + 'a;

/// Runs `f(e, c0..c1, y_e[c0 * plane..c1 * plane], scratch, ws)` for every example `e < n`
/// (`y_e` the `out_len` elements of example `e` in `y`) with the channels split across the
/// pool in multiples of `align` ([`par_items`]) when the work (`macs` per example) is worth
/// it, each thread with its own `scratch_len` block of `scratch` and `ws_len` block of `ws`
/// (reused by every channel range the thread runs); otherwise one call per example with
/// every channel, all of `scratch` and the first workspace.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_channels(
    pool: &Pool,
    n: usize,
    channels: usize,
    align: usize,
    plane: usize,
    out_len: usize,
    macs: usize,
    y: &mut [f32],
    scratch: &mut [f32],
    scratch_len: usize,
    ws: &mut [f32],
    ws_len: usize,
    f: &ChannelsFn<'_>,
) {
    assert!(channels * plane <= out_len && y.len() >= n * out_len);
    let yp = Parts(y.as_mut_ptr());
    let work = n.saturating_mul(macs);
    par_items(
        pool,
        channels,
        align,
        work,
        scratch,
        scratch_len,
        ws,
        ws_len,
        &|ch, s, w| {
            for e in 0..n {
                // SAFETY: parts own disjoint channel ranges, so disjoint plane ranges of each
                // example's output, inside `y` (`n * out_len` elements, asserted above).
                let ye = unsafe { yp.slice(e * out_len + ch.start * plane, ch.len() * plane) };
                f(e, ch.clone(), ye, s, w);
            }
        },
    );
}

/// One part of [`par_items`]: `(its items, scratch, workspace)`.
pub(crate) type ItemsFn<'a> = dyn Fn(core::ops::Range<usize>, &mut [f32], &mut [f32]) + Sync + 'a;

/// Runs `f(i0..i1, scratch, ws)` over `0..items` split across the threads ([`split`]: a
/// contiguous share per thread, in multiples of `align`, possibly in several ranges that any
/// thread may run) when there are more than `align` items and the work (`macs` in all) is
/// worth it, each thread with its own `scratch_len` block of `scratch` and `ws_len` block of
/// `ws`, reused by every range it runs; otherwise once over every item with all of `scratch`
/// and the first workspace. `f` writes its outputs itself, disjoint per item.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_items(
    pool: &Pool,
    items: usize,
    align: usize,
    macs: usize,
    scratch: &mut [f32],
    scratch_len: usize,
    ws: &mut [f32],
    ws_len: usize,
    f: &ItemsFn<'_>,
) {
    let parts = pool.threads();
    if parts == 1 || items <= align || macs < PAR_MIN_MACS {
        f(0..items, scratch, &mut ws[..ws_len]);
        return;
    }
    assert!(scratch.len() >= parts * scratch_len && ws.len() >= parts * ws_len);
    let (sp, wp) = (Parts(scratch.as_mut_ptr()), Parts(ws.as_mut_ptr()));
    split(pool, items, align, &|slot, i0, i1| {
        // SAFETY: each thread has its own block of the scratch and the workspace, which hold
        // `parts` blocks (asserted above).
        let (s, w) = unsafe {
            (
                sp.slice(slot * scratch_len, scratch_len),
                wp.slice(slot * ws_len, ws_len),
            )
        };
        f(i0..i1, s, w);
    });
}
