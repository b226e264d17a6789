use alloc::vec::Vec;
use core::ops::Range;

use super::dw3x3;
use super::{act_scalar, Activation, Elems, Isa};

/// Geometry of one 2-D convolution over a single image in CHW layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels (of the whole layer, not per group).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

/// Output positions `o` in `0..n` whose input coordinate `o * stride + off - pad` lies in
/// `0..len`, as a half-open range (possibly empty), and the input coordinate of its first element.
#[inline(always)]
fn valid_range(
    n: usize,
    len: usize,
    stride: usize,
    off: usize,
    pad: usize,
) -> (usize, usize, usize) {
    // First o with o * stride + off >= pad.
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(stride)
    };
    // One past the last o with o * stride + off - pad <= len - 1.
    let hi = if len + pad <= off {
        0
    } else {
        (len + pad - off - 1) / stride + 1
    };
    let (lo, hi) = (lo.min(n), hi.min(n));
    if lo >= hi {
        return (0, 0, 0);
    }
    (lo, hi, lo * stride + off - pad)
}

/// Floats [`im2col`] copies at a time along a row; it may write up to this many past the patch
/// matrix.
const CHUNK: usize = 8;

/// Length of the buffer [`im2col`] needs for `channels` input channels: the patch matrix and
/// `CHUNK` floats after it that it may overwrite.
pub fn im2col_len(g: &ConvGeom, channels: usize) -> usize {
    channels * g.kh * g.kw * g.oh * g.ow + CHUNK
}

/// Writes the patch matrix of input channels `c0..c0 + channels` of `x` (`[c, h, w]`) into
/// `cols`, row-major `[(channels * kh * kw), (oh * ow)]`, rows ordered (channel, ki, kj) like a
/// PyTorch weight `[out, in, kh, kw]` flattened; padding reads as 0. `cols` holds at least
/// [`im2col_len`] floats; the ones past the matrix are clobbered. Never allocates.
///
/// With a horizontal stride of 1, each output row's run of input pixels is copied in fixed
/// chunks of `CHUNK` floats (plain moves, no `memcpy` call per run of a few pixels): a chunk
/// may run past the run, into pixels written later or into the slack, and the row's padding is
/// zeroed after its copy.
pub fn im2col(g: &ConvGeom, x: &[f32], c0: usize, channels: usize, cols: &mut [f32]) {
    im2col_rows(g, x, c0, channels, 0..g.oh, cols)
}

/// [`im2col`] for output rows `oy` only: the `(channels * kh * kw) × (oy.len() * ow)` patch
/// matrix of those output pixels, in `cols`, which holds at least that many floats and
/// `CHUNK` more (clobbered).
pub fn im2col_rows(
    g: &ConvGeom,
    x: &[f32],
    c0: usize,
    channels: usize,
    oy: core::ops::Range<usize>,
    cols: &mut [f32],
) {
    assert!(
        oy.start <= oy.end && oy.end <= g.oh,
        "im2col: rows {oy:?} of {}",
        g.oh
    );
    let p = oy.len() * g.ow;
    let len = channels * g.kh * g.kw * p;
    assert!(
        cols.len() >= len + CHUNK,
        "im2col: buffer shorter than im2col_len"
    );
    let mut row = 0;
    for c in c0..c0 + channels {
        let plane = c * g.h * g.w;
        for ki in 0..g.kh {
            let (ylo, yhi, iy0) = valid_range(g.oh, g.h, g.stride[0], ki * g.dilation[0], g.pad[0]);
            // Rows of this tap inside the requested range, relative to its start.
            let (lo, hi) = (ylo.clamp(oy.start, oy.end), yhi.clamp(oy.start, oy.end));
            let (rlo, rhi) = (lo - oy.start, hi.max(lo) - oy.start);
            for kj in 0..g.kw {
                let base = row * p;
                row += 1;
                cols[base..base + rlo * g.ow].fill(0.0);
                let (xlo, xhi, ix0) =
                    valid_range(g.ow, g.w, g.stride[1], kj * g.dilation[1], g.pad[1]);
                let n = xhi - xlo;
                for oyy in lo..hi {
                    let src = plane + (iy0 + (oyy - ylo) * g.stride[0]) * g.w + ix0;
                    let dst = base + (oyy - oy.start) * g.ow;
                    if n > 0 && g.stride[1] == 1 {
                        copy_run(x, src, cols, dst + xlo, n);
                    } else if n > 0 && g.stride[1] == 2 && src + 2 * n <= x.len() {
                        let d = &mut cols[dst + xlo..dst + xhi];
                        for (o, pair) in d.iter_mut().zip(x[src..src + 2 * n].chunks_exact(2)) {
                            *o = pair[0];
                        }
                    } else if n > 0 {
                        let d = &mut cols[dst + xlo..dst + xhi];
                        for (o, s) in d.iter_mut().zip(x[src..].iter().step_by(g.stride[1])) {
                            *o = *s;
                        }
                    }
                    cols[dst..dst + xlo].fill(0.0);
                    cols[dst + xhi..dst + g.ow].fill(0.0);
                }
                // After the copies, whose last chunk may run into these rows.
                cols[base + rhi * g.ow..base + p].fill(0.0);
            }
        }
    }
}

/// Implicit GEMM for convolutions of stride 1: the patch matrix is never built. On the image
/// zero-padded to `hp × wp` ([`ConvGeom::padded`]), patch-matrix row `(c, ki, kj)` is the run
/// of the padded image starting at `offs[(c, ki, kj)] = c·hp·wp + ki·d·wp + kj·d`
/// ([`ConvGeom::implicit_offsets`]), when output pixels are numbered on the padded grid
/// (`oy·wp + ox`); the GEMM ([`super::BOperand::Rows`]) packs its panels straight from those
/// runs. The `wp - ow` columns past each output row are computed and dropped by
/// [`crop_rows`].
impl ConvGeom {
    /// Whether [`ConvGeom::implicit_offsets`] applies (stride 1).
    pub fn implicit(&self) -> bool {
        self.stride == [1, 1]
    }

    /// Height and width of the zero-padded image.
    pub fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad[0], self.w + 2 * self.pad[1])
    }

    /// Columns of the implicit patch matrix: output pixels on the padded grid, up to the last.
    pub fn implicit_cols(&self) -> usize {
        let (_, wp) = self.padded();
        if self.oh == 0 || self.ow == 0 {
            return 0;
        }
        (self.oh - 1) * wp + self.ow
    }

    /// Row offsets of the implicit patch matrix of `channels` channels, in the order of
    /// [`im2col`]'s rows.
    pub fn implicit_offsets(&self, channels: usize) -> Vec<usize> {
        let (hp, wp) = self.padded();
        let [dy, dx] = self.dilation;
        let mut offs = Vec::with_capacity(channels * self.kh * self.kw);
        for c in 0..channels {
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    offs.push(c * hp * wp + ki * dy * wp + kj * dx);
                }
            }
        }
        offs
    }

    /// Floats of the buffer [`pad_image`] writes: the padded image and `CHUNK` of slack.
    pub fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        self.c * hp * wp + CHUNK
    }

    /// Floats of scratch an implicit-GEMM convolution of `out_c` outputs needs: the padded
    /// image ([`ConvGeom::padded_len`]), then the output on the padded grid and `CHUNK` of
    /// slack.
    pub fn implicit_len(&self, out_c: usize) -> usize {
        self.padded_len() + out_c * self.implicit_cols() + CHUNK
    }
}

/// Stride-2 windows as a stride-1 implicit GEMM: the zero-padded image split into its four
/// phases (even and odd rows × even and odd columns), each `[hq, wq]` ([`ConvGeom::phase_hw`]),
/// stored `[c][row phase][column phase][hq][wq]` by [`phase_image`]. Output pixel `(oy, ox)`
/// reads kernel tap `(ki, kj)` of channel `c` at `(oy + ki/2, ox + kj/2)` of phase
/// `(ki % 2, kj % 2)`, so with output pixels numbered on a grid `wq` wide, the patch matrix's
/// row for that tap is one run of the phase buffer from [`ConvGeom::phase_offsets`]. Nothing is
/// copied per tap, and the `wq - ow` columns past each output row are computed and dropped.
impl ConvGeom {
    /// Whether [`ConvGeom::phase_offsets`] applies: stride 2 both ways, no dilation.
    pub fn phased(&self) -> bool {
        self.stride == [2, 2] && self.dilation == [1, 1]
    }

    /// Height and width of each phase of the padded image.
    pub fn phase_hw(&self) -> (usize, usize) {
        let (hp, wp) = self.padded();
        (hp.div_ceil(2), wp.div_ceil(2))
    }

    /// Columns of the phased patch matrix: output pixels on the phase grid, up to the last.
    pub fn phase_cols(&self) -> usize {
        let (_, wq) = self.phase_hw();
        if self.oh == 0 || self.ow == 0 {
            return 0;
        }
        (self.oh - 1) * wq + self.ow
    }

    /// Row offsets of the phased patch matrix, in the order of [`im2col`]'s rows.
    pub fn phase_offsets(&self) -> Vec<usize> {
        let (hq, wq) = self.phase_hw();
        let mut offs = Vec::with_capacity(self.c * self.kh * self.kw);
        for c in 0..self.c {
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let plane = c * 4 + (ki % 2) * 2 + kj % 2;
                    offs.push((plane * hq + ki / 2) * wq + kj / 2);
                }
            }
        }
        offs
    }

    /// Floats of the buffer [`phase_image`] writes: the four phases and `CHUNK` of slack.
    pub fn phase_len(&self) -> usize {
        let (hq, wq) = self.phase_hw();
        self.c * 4 * hq * wq + CHUNK
    }

    /// Floats of scratch a phased convolution of `out_c` outputs needs: the phases
    /// ([`ConvGeom::phase_len`]), then the output on the phase grid and `CHUNK` of slack.
    pub fn phased_len(&self, out_c: usize) -> usize {
        self.phase_len() + out_c * self.phase_cols() + CHUNK
    }
}

/// Writes the four phases of `x` (`[c, h, w]`) zero-padded into `xq` (at least
/// [`ConvGeom::phase_len`] floats), as [`ConvGeom::phase_offsets`] reads them.
pub fn phase_image(g: &ConvGeom, x: &[f32], xq: &mut [f32]) {
    assert!(xq.len() >= g.phase_len() && x.len() >= g.c * g.h * g.w);
    // SAFETY: `xq` is borrowed exclusively and holds every phase row (asserted above).
    unsafe { phase_rows(g, x, xq.as_mut_ptr(), 0..g.phase_hw().0) }
}

/// [`phase_image`] for phase rows `rows` only (of every channel and phase), so that threads
/// can write disjoint row ranges of one buffer.
///
/// # Safety
/// `xq` addresses [`ConvGeom::phase_len`] writable floats, of which no other thread accesses
/// the phase rows in `rows` meanwhile; `x` holds `g.c * g.h * g.w` floats; `rows.end <= hq`.
pub(crate) unsafe fn phase_rows(g: &ConvGeom, x: &[f32], xq: *mut f32, rows: Range<usize>) {
    let (hq, wq) = g.phase_hw();
    let (pt, pl, w) = (g.pad[0], g.pad[1], g.w);
    debug_assert!(rows.end <= hq && x.len() >= g.c * g.h * w);
    let plane = hq * wq;
    // Padded column `x + pl` of input column `x` is column `(x + pl) / 2` of phase
    // `(x + pl) % 2`. Each input row is split into both column phases in one pass over pairs
    // of columns, from the first column of phase 0 on.
    let x0 = pl % 2;
    let pairs = w.saturating_sub(x0) / 2;
    let jb = (x0 + pl) / 2;
    // Columns `j0..j1` of phase `s` (`0 <= 2j + s - pl < w`) come from the input.
    let cols = |s: usize| {
        let j1 = (w + pl).saturating_sub(s).div_ceil(2).min(wq);
        (pl.saturating_sub(s).div_ceil(2).min(j1), j1)
    };
    let spans = [cols(0), cols(1)];
    for c in 0..g.c {
        for r in 0..2 {
            let base = (c * 4 + r * 2) * plane;
            for i in rows.clone() {
                // SAFETY: row `i < hq` of planes `c * 4 + r * 2` and the next lies inside the
                // phase buffer, and only this call touches it (function contract).
                let (e, o) = unsafe {
                    (
                        core::slice::from_raw_parts_mut(xq.add(base + i * wq), wq),
                        core::slice::from_raw_parts_mut(xq.add(base + plane + i * wq), wq),
                    )
                };
                // Padded row `2i + r` is input row `2i + r - pt`.
                let iy = (2 * i + r).checked_sub(pt).filter(|&iy| iy < g.h);
                let Some(iy) = iy else {
                    e.fill(0.0);
                    o.fill(0.0);
                    continue;
                };
                let src = &x[(c * g.h + iy) * w..][..w];
                for (row, &(j0, j1)) in [&mut *e, &mut *o].into_iter().zip(&spans) {
                    row[..j0].fill(0.0);
                    row[j1..].fill(0.0);
                }
                if x0 == 1 && w > 0 {
                    o[pl / 2] = src[0];
                }
                let pairs_src = src[x0..x0 + 2 * pairs].chunks_exact(2);
                for ((a, b), p) in e[jb..jb + pairs]
                    .iter_mut()
                    .zip(&mut o[jb..jb + pairs])
                    .zip(pairs_src)
                {
                    *a = p[0];
                    *b = p[1];
                }
                if x0 + 2 * pairs < w {
                    e[jb + pairs] = src[w - 1];
                }
            }
        }
    }
}

/// Writes `x` (`[c, h, w]`) zero-padded to `[c, hp, wp]` into `xpad`, which holds at least
/// `c·hp·wp + CHUNK` floats (the ones past the image are clobbered).
pub fn pad_image(g: &ConvGeom, x: &[f32], xpad: &mut [f32]) {
    let (hp, wp) = g.padded();
    let (pt, pl) = (g.pad[0], g.pad[1]);
    let plane = hp * wp;
    assert!(xpad.len() >= g.c * plane + CHUNK && x.len() >= g.c * g.h * g.w);
    for c in 0..g.c {
        let base = c * plane;
        // Every run may overrun forward into what is written after it (the slack at the end).
        zero_run(xpad, base, pt * wp + pl);
        for iy in 0..g.h {
            let src = (c * g.h + iy) * g.w;
            let dst = base + (iy + pt) * wp + pl;
            copy_run(x, src, xpad, dst, g.w);
            // This row's right padding and the next row's left padding, after the copy,
            // whose last chunk may run into them.
            zero_run(xpad, dst + g.w, 2 * pl);
        }
        let bottom = base + (pt + g.h) * wp;
        zero_run(xpad, bottom, base + plane - bottom);
    }
}

/// Copies the implicit GEMM's output (`out_c` rows of [`ConvGeom::implicit_cols`] pixels on the
/// padded grid, with `CHUNK` floats of slack) to `y`, `[out_c, oh, ow]`.
pub fn crop_rows(g: &ConvGeom, out_c: usize, src: &[f32], y: &mut [f32]) {
    let (_, wp) = g.padded();
    crop_grid(g, out_c, src, g.implicit_cols(), wp, y);
}

/// Copies `out_c` rows of `cols` output pixels numbered on a grid `wp` wide (row `oy` from
/// column `oy·wp`; `CHUNK` floats of slack after them) to `y`, `[out_c, oh, ow]`.
pub(crate) fn crop_grid(
    g: &ConvGeom,
    out_c: usize,
    src: &[f32],
    cols: usize,
    wp: usize,
    y: &mut [f32],
) {
    for i in 0..out_c {
        for oy in 0..g.oh {
            copy_run(src, i * cols + oy * wp, y, (i * g.oh + oy) * g.ow, g.ow);
        }
    }
}

/// `dst[d..d + n] = src[s..s + n]` in fixed chunks of `CHUNK` floats (plain moves instead of a
/// `memcpy` call for a run of a few floats), which may overwrite up to `CHUNK - 1` floats after
/// `d + n`; exact where a chunk would pass the end of either slice.
#[inline(always)]
fn copy_run(src: &[f32], s: usize, dst: &mut [f32], d: usize, n: usize) {
    let r = n.next_multiple_of(CHUNK);
    if s + r <= src.len() && d + r <= dst.len() {
        let (sp, dp) = (src[s..].as_ptr(), dst[d..].as_mut_ptr());
        let mut k = 0;
        while k < n {
            // SAFETY: `k + CHUNK <= r`, and `s + r` / `d + r` are within the slices (checked
            // above), which cannot overlap (one is borrowed shared, the other exclusive).
            unsafe { core::ptr::copy_nonoverlapping(sp.add(k), dp.add(k), CHUNK) };
            k += CHUNK;
        }
    } else {
        dst[d..d + n].copy_from_slice(&src[s..s + n]);
    }
}

/// `dst[d..d + n] = 0` in fixed chunks of `CHUNK` floats (plain stores instead of a `memset`
/// call for the few floats of an image's padding), which may overwrite up to `CHUNK - 1`
/// floats after `d + n`; exact where a chunk would pass the end of `dst`.
#[inline(always)]
fn zero_run(dst: &mut [f32], d: usize, n: usize) {
    let r = n.next_multiple_of(CHUNK);
    if d + r <= dst.len() {
        for k in (0..n).step_by(CHUNK) {
            dst[d + k..d + k + CHUNK].copy_from_slice(&[0.0; CHUNK]);
        }
    } else {
        dst[d..d + n].fill(0.0);
    }
}

/// Depthwise kernel contract: see [`depthwise_conv2d`]; channel `c`'s output plane is
/// `y[c * planes.y..][..oh * ow]`.
///
/// # Safety
/// The inputs satisfy the checks of [`DepthwiseKernel::run_planes_raw`] and `y` its contract;
/// the CPU supports the kernel's [`Isa`].
type DepthwiseFn = unsafe fn(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
);

/// One depthwise convolution implementation. [`DEPTHWISE_KERNELS`] lists them from most to
/// least preferred.
pub struct DepthwiseKernel {
    pub name: &'static str,
    pub isa: Isa,
    run: DepthwiseFn,
}

/// Every depthwise kernel, most preferred first; the last entry runs everywhere; every entry
/// accepts every geometry. The `rows` kernels share one row-oriented algorithm (for each output
/// row and tap, a multiply-add of one input row segment into the output row), compiled for
/// different instruction sets; stride-1 rows vectorise. The `3x3` kernels compute 3×3 windows
/// with dilation 1 and column stride 1 or 2 in registers, vectorised across the output width
/// (see `dw3x3.rs`), and take the row algorithm for every other geometry.
pub static DEPTHWISE_KERNELS: &[DepthwiseKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DepthwiseKernel {
        name: "depthwise_f32_3x3_avx2fma",
        isa: Isa::Avx2Fma,
        run: depthwise_3x3_avx2fma,
    },
    #[cfg(target_arch = "aarch64")]
    DepthwiseKernel {
        name: "depthwise_f32_3x3_neon",
        isa: Isa::Neon,
        run: depthwise_3x3_neon,
    },
    #[cfg(target_arch = "x86_64")]
    DepthwiseKernel {
        name: "depthwise_f32_rows_avx2fma",
        isa: Isa::Avx2Fma,
        run: depthwise_avx2fma,
    },
    DepthwiseKernel {
        name: "depthwise_f32_rows_baseline",
        isa: Isa::Scalar,
        run: depthwise_baseline,
    },
];

/// Where a depthwise convolution's channel planes lie: channel `c`'s input plane (`h × w`,
/// row-major) starts at `x[c * x]`, its output plane (`oh × ow`) at `y[c * y]`. Contiguous
/// planes are [`Planes::packed`]; wider strides let a caller run a band of rows of every
/// channel, in and out of larger maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    pub x: usize,
    pub y: usize,
}

impl Planes {
    /// Planes back to back.
    pub fn packed(g: &ConvGeom) -> Self {
        Planes {
            x: g.h * g.w,
            y: g.oh * g.ow,
        }
    }
}

/// Depthwise convolution (groups == channels, one filter per channel): `w` is `[c, 1, kh, kw]`,
/// `x` is `[c, h, w]`, `y` is `[c, oh, ow]`; `y = act(conv + bias)`. Any kernel size, stride,
/// dilation and padding; never allocates. Uses the best kernel of [`DEPTHWISE_KERNELS`].
pub fn depthwise_conv2d(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    depthwise_conv2d_planes(g, x, w, bias, act, y, Planes::packed(g))
}

/// [`depthwise_conv2d`] with the channel planes `planes` apart.
pub fn depthwise_conv2d_planes(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    planes: Planes,
) {
    depthwise_kernel().run_planes(g, x, w, bias, act, y, planes)
}

/// The kernel [`depthwise_conv2d`] uses on this CPU.
pub fn depthwise_kernel() -> &'static DepthwiseKernel {
    DEPTHWISE_KERNELS
        .iter()
        .find(|k| k.isa.is_available())
        .unwrap_or(&DEPTHWISE_KERNELS[DEPTHWISE_KERNELS.len() - 1])
}

impl DepthwiseKernel {
    /// See [`depthwise_conv2d`]. Panics if a slice is too short or the CPU lacks the ISA.
    pub fn run(
        &self,
        g: &ConvGeom,
        x: &[f32],
        w: Elems<'_>,
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) {
        self.run_planes(g, x, w, bias, act, y, Planes::packed(g))
    }

    /// See [`depthwise_conv2d_planes`]. Panics if a slice is too short, planes overlap or the
    /// CPU lacks the ISA.
    #[allow(clippy::too_many_arguments)]
    pub fn run_planes(
        &self,
        g: &ConvGeom,
        x: &[f32],
        w: Elems<'_>,
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
        planes: Planes,
    ) {
        assert!(
            y.len() >= span(g.c, planes.y, g.oh * g.ow),
            "depthwise: output too short"
        );
        // SAFETY: `y` holds every output plane (checked above), and the caller's `&mut` keeps
        // anyone else from it.
        unsafe { self.run_planes_raw(g, x, w, bias, act, y.as_mut_ptr(), planes) }
    }

    /// [`Self::run_planes`] into output planes that need not be one slice: channel `c`'s is
    /// `y[c * planes.y..][..oh * ow]`, and the elements between planes are not touched, so
    /// threads may write different bands of rows of the same planes. Panics as `run_planes`
    /// does, except on the output's length.
    ///
    /// # Safety
    /// For every channel `c < g.c`, `y[c * planes.y..][..oh * ow]` is valid for writes and
    /// nothing else reads or writes it during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_planes_raw(
        &self,
        g: &ConvGeom,
        x: &[f32],
        w: Elems<'_>,
        bias: Option<&[f32]>,
        act: Activation,
        y: *mut f32,
        planes: Planes,
    ) {
        assert!(
            self.isa.is_available(),
            "depthwise: kernel {} not supported on this CPU",
            self.name
        );
        let (pin, pout) = (g.h * g.w, g.oh * g.ow);
        assert!(
            planes.x >= pin && planes.y >= pout,
            "depthwise: planes overlap"
        );
        assert!(
            x.len() >= span(g.c, planes.x, pin),
            "depthwise: input too short"
        );
        assert!(w.len() >= g.c * g.kh * g.kw, "depthwise: weights too short");
        assert!(g.stride[0] > 0 && g.stride[1] > 0, "depthwise: zero stride");
        if let Some(b) = bias {
            assert!(b.len() >= g.c, "depthwise: bias too short");
        }
        // SAFETY: lengths and ISA checked above; the output planes are the caller's.
        unsafe { (self.run)(g, x, w, bias, act, y, planes) }
    }
}

/// Elements from the first of `c` planes `stride` apart, each `plane` long, to the end of the
/// last.
fn span(c: usize, stride: usize, plane: usize) -> usize {
    match c {
        0 => 0,
        c => (c - 1) * stride + plane,
    }
}

/// # Safety
/// As [`DepthwiseFn`]; the CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_3x3_avx2fma(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
) {
    if dw3x3::supported(g) {
        // SAFETY: geometry checked; lengths are the caller's; AVX2 + FMA cover both lane types.
        unsafe { dw3x3::depthwise3x3::<dw3x3::Avx2, dw3x3::Sse>(g, x, w, bias, act, y, planes) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { depthwise_rows(g, x, w, bias, act, y, planes) }
    }
}

/// # Safety
/// As [`DepthwiseFn`].
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn depthwise_3x3_neon(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
) {
    if dw3x3::supported(g) {
        // SAFETY: geometry checked; lengths are the caller's; NEON is baseline on aarch64.
        unsafe { dw3x3::depthwise3x3::<dw3x3::Neon8, dw3x3::Neon4>(g, x, w, bias, act, y, planes) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { depthwise_rows(g, x, w, bias, act, y, planes) }
    }
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_avx2fma(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
) {
    // SAFETY: forwarded contract.
    unsafe { depthwise_rows(g, x, w, bias, act, y, planes) }
}

/// # Safety
/// As [`DepthwiseFn`].
unsafe fn depthwise_baseline(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
) {
    // SAFETY: forwarded contract.
    unsafe { depthwise_rows(g, x, w, bias, act, y, planes) }
}

/// The row algorithm of every depthwise kernel.
///
/// # Safety
/// As [`DepthwiseFn`] (without the instruction set).
#[inline(always)]
unsafe fn depthwise_rows(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
) {
    let (kh, kw) = (g.kh, g.kw);
    let taps = kh * kw;
    let (s1, d1) = (g.stride[1], g.dilation[1]);
    if g.ow == 0 {
        return;
    }
    for c in 0..g.c {
        let plane = &x[c * planes.x..c * planes.x + g.h * g.w];
        let b = bias.map_or(0.0, |b| b[c]);
        // SAFETY: channel `c`'s output plane is the caller's, and no other channel's.
        let out = unsafe { core::slice::from_raw_parts_mut(y.add(c * planes.y), g.oh * g.ow) };
        for (oy, orow) in out.chunks_exact_mut(g.ow).enumerate() {
            orow.fill(b);
            for ki in 0..kh {
                let iy = oy * g.stride[0] + ki * g.dilation[0];
                if iy < g.pad[0] || iy - g.pad[0] >= g.h {
                    continue;
                }
                let irow = &plane[(iy - g.pad[0]) * g.w..(iy - g.pad[0] + 1) * g.w];
                for kj in 0..kw {
                    let wv = w.get_f32(c * taps + ki * kw + kj);
                    let (lo, hi, ix0) = valid_range(g.ow, g.w, s1, kj * d1, g.pad[1]);
                    let n = hi - lo;
                    if n == 0 {
                        continue;
                    }
                    let o = &mut orow[lo..hi];
                    if s1 == 1 {
                        for (ov, iv) in o.iter_mut().zip(&irow[ix0..ix0 + n]) {
                            *ov += wv * iv;
                        }
                    } else {
                        for (ov, iv) in o.iter_mut().zip(irow[ix0..].iter().step_by(s1)) {
                            *ov += wv * iv;
                        }
                    }
                }
            }
            match act {
                Activation::None => {}
                Activation::Relu => orow.iter_mut().for_each(|v| *v = v.max(0.0)),
                Activation::Relu6 => orow.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
                _ => orow.iter_mut().for_each(|v| *v = act_scalar(act, *v)),
            }
        }
    }
}
