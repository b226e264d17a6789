//! 2-D max and average pooling over CHW planes.
//!
//! Each output row is initialised and then combined with the input rows its windows cover:
//! windows fully inside a row run through a loop without bounds logic (specialised by
//! constant-folding the common kernel widths and strides into inlined copies; equal width and
//! stride becomes a walk over non-overlapping chunks), windows reaching into the padding are
//! clipped. Padding cells never take part: a max over only padding is `-inf`; an average divides
//! by the full window with `count_include_pad`, else by the number of input cells it covers.

use super::{ConvGeom, Isa};

/// Pooling operation of [`pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolOp {
    Max,
    /// Average; `count_include_pad` divides by `kh * kw` instead of the cells inside the input.
    Avg {
        count_include_pad: bool,
    },
}

/// Pooling kernel contract: see [`pool2d`].
///
/// # Safety
/// Slices satisfy the length checks of [`PoolKernel::run`]; the CPU supports the kernel's
/// [`Isa`].
type PoolFn =
    unsafe fn(g: &ConvGeom, op: PoolOp, x: &[f32], lay: PlaneLayout, y: &mut [f32], planes: usize);

/// Where a pooling call's input rows lie: row `r` of plane `p` starts at `x[p * plane + r *
/// row]`. [`pool2d`] reads `[planes, h, w]` (`plane = h * w`, `row = w`); [`maxpool2x2_grid`]
/// reads a convolution's output rows on a wider grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneLayout {
    pub plane: usize,
    pub row: usize,
}

impl PlaneLayout {
    /// `[planes, g.h, g.w]` back to back.
    pub fn dense(g: &ConvGeom) -> Self {
        PlaneLayout {
            plane: g.h * g.w,
            row: g.w,
        }
    }
}

/// One pooling implementation. [`POOL_KERNELS`] lists them from most to least preferred.
pub struct PoolKernel {
    pub name: &'static str,
    pub isa: Isa,
    run: PoolFn,
}

/// Every pooling kernel, most preferred first; the last entry runs everywhere. All share one
/// algorithm compiled for different instruction sets (the inner loops vectorise).
pub static POOL_KERNELS: &[PoolKernel] = &[
    #[cfg(target_arch = "x86_64")]
    PoolKernel {
        name: "pool_f32_rows_avx512",
        isa: Isa::Avx512F,
        run: pool_avx512,
    },
    #[cfg(target_arch = "x86_64")]
    PoolKernel {
        name: "pool_f32_rows_avx2fma",
        isa: Isa::Avx2Fma,
        run: pool_avx2fma,
    },
    PoolKernel {
        name: "pool_f32_rows_baseline",
        isa: Isa::Scalar,
        run: pool_baseline,
    },
];

/// Pools `planes` planes of `x` (`[planes, h, w]`, `g.c` is ignored) into `y`
/// (`[planes, oh, ow]`) with window `kh × kw`, `stride` and `pad` of `g` (`dilation` is
/// ignored). Never allocates. Uses the best kernel of [`POOL_KERNELS`].
pub fn pool2d(g: &ConvGeom, op: PoolOp, x: &[f32], y: &mut [f32], planes: usize) {
    pool_kernel().run(g, op, x, y, planes)
}

/// [`maxpool2d`] of a 2×2, stride-2, unpadded window over planes laid out as `lay` says (a
/// convolution's output on its padded grid, say): `y` is `[planes, g.oh, g.ow]`. Uses the best
/// kernel of [`POOL_KERNELS`]; see [`PoolKernel::max2x2_grid`].
pub fn maxpool2x2_grid(g: &ConvGeom, x: &[f32], lay: PlaneLayout, y: &mut [f32], planes: usize) {
    pool_kernel().max2x2_grid(g, x, lay, y, planes)
}

fn pool_kernel() -> &'static PoolKernel {
    POOL_KERNELS
        .iter()
        .find(|k| k.isa.is_available())
        .unwrap_or(&POOL_KERNELS[POOL_KERNELS.len() - 1])
}

/// [`pool2d`] with [`PoolOp::Max`].
pub fn maxpool2d(g: &ConvGeom, x: &[f32], y: &mut [f32], planes: usize) {
    pool2d(g, PoolOp::Max, x, y, planes)
}

/// [`pool2d`] with [`PoolOp::Avg`].
pub fn avgpool2d(g: &ConvGeom, x: &[f32], y: &mut [f32], planes: usize, count_include_pad: bool) {
    pool2d(g, PoolOp::Avg { count_include_pad }, x, y, planes)
}

impl PoolKernel {
    /// See [`pool2d`]. Panics if a slice is too short, a stride is 0 or the CPU lacks the ISA.
    pub fn run(&self, g: &ConvGeom, op: PoolOp, x: &[f32], y: &mut [f32], planes: usize) {
        assert!(
            self.isa.is_available(),
            "pool: kernel {} not supported on this CPU",
            self.name
        );
        let elems = |a: usize, b: usize| planes.checked_mul(a).and_then(|n| n.checked_mul(b));
        assert!(
            elems(g.h, g.w).is_some_and(|n| x.len() >= n),
            "pool: input too short"
        );
        assert!(
            elems(g.oh, g.ow).is_some_and(|n| y.len() >= n),
            "pool: output too short"
        );
        assert!(g.stride[0] > 0 && g.stride[1] > 0, "pool: zero stride");
        // SAFETY: lengths and ISA checked above.
        unsafe { (self.run)(g, op, x, PlaneLayout::dense(g), y, planes) }
    }

    /// [`PoolKernel::run`] with [`PoolOp::Max`] over a 2×2, stride-2, unpadded window, reading
    /// planes laid out as `lay` says: `y[(p * g.oh + oy) * g.ow + ox]` is the max of `x[p *
    /// lay.plane + (2 * oy + i) * lay.row + 2 * ox + j]` over `i, j` in `0..2`.
    ///
    /// Panics if the window is another, if `g.h < 2 * g.oh` or `g.w < 2 * g.ow`, if
    /// `lay.row < g.w`, if a slice is too short or if the CPU lacks the kernel's ISA.
    pub fn max2x2_grid(
        &self,
        g: &ConvGeom,
        x: &[f32],
        lay: PlaneLayout,
        y: &mut [f32],
        planes: usize,
    ) {
        assert!(
            self.isa.is_available(),
            "pool: kernel {} not supported on this CPU",
            self.name
        );
        assert!(
            max2x2_fits(g) && lay.row >= g.w,
            "pool: not a 2x2 stride-2 window over rows of the layout"
        );
        let out = planes.checked_mul(g.oh).and_then(|n| n.checked_mul(g.ow));
        assert!(out.is_some_and(|n| y.len() >= n), "pool: output too short");
        if planes == 0 || g.oh == 0 || g.ow == 0 {
            return;
        }
        // `g.h >= 2 * g.oh` and `g.w >= 2 * g.ow` (checked above) cannot overflow.
        let last_row = (2 * g.oh - 1).checked_mul(lay.row);
        let need = (planes - 1)
            .checked_mul(lay.plane)
            .zip(last_row)
            .and_then(|(a, b)| a.checked_add(b)?.checked_add(2 * g.ow));
        assert!(
            need.is_some_and(|n| x.len() >= n),
            "pool: input too short for its layout"
        );
        // SAFETY: window, lengths and ISA checked above.
        unsafe { (self.run)(g, PoolOp::Max, x, lay, y, planes) }
    }
}

/// A 2×2, stride-2, unpadded window whose output rows and columns each cover two input ones.
pub fn max2x2_fits(g: &ConvGeom) -> bool {
    let covers = |n: usize, o: usize| o.checked_mul(2).is_some_and(|o2| n >= o2);
    (g.kh, g.kw, g.stride, g.pad) == (2, 2, [2, 2], [0, 0])
        && covers(g.h, g.oh)
        && covers(g.w, g.ow)
}

/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pool_avx512(
    g: &ConvGeom,
    op: PoolOp,
    x: &[f32],
    lay: PlaneLayout,
    y: &mut [f32],
    planes: usize,
) {
    // SAFETY: the caller's contract, and the CPU has AVX2.
    unsafe { pool_planes_x86(g, op, x, lay, y, planes) }
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pool_avx2fma(
    g: &ConvGeom,
    op: PoolOp,
    x: &[f32],
    lay: PlaneLayout,
    y: &mut [f32],
    planes: usize,
) {
    // SAFETY: the caller's contract, and the CPU has AVX2.
    unsafe { pool_planes_x86(g, op, x, lay, y, planes) }
}

/// [`pool_planes`] with the 2×2 max in AVX2 vectors ([`max2x2_avx2`]), inlined into each x86
/// kernel.
///
/// # Safety
/// As [`PoolFn`]; the CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pool_planes_x86(
    g: &ConvGeom,
    op: PoolOp,
    x: &[f32],
    lay: PlaneLayout,
    y: &mut [f32],
    planes: usize,
) {
    if op == PoolOp::Max && max2x2_fits(g) {
        // SAFETY: `PoolKernel` checked the lengths for this layout; the CPU has AVX2.
        return unsafe { max2x2_avx2(g, x, lay, y, planes) };
    }
    pool_planes(g, op, x, lay, y, planes)
}

/// The 2×2, stride-2 max of [`max2x2`] in vectors: eight outputs from two 16-float runs of
/// each input row (vertical max, then the even and odd lanes' max); a row's last vector reads
/// only its own floats (masked) and is stored whole where later rows of `y` overwrite the rest.
///
/// # Safety
/// `x` holds `(planes - 1) * lay.plane + (2 * g.oh - 1) * lay.row + 2 * g.ow` floats (when
/// `planes`, `g.oh` and `g.ow` are positive), `y` holds `planes * g.oh * g.ow`, and
/// `lay.row >= g.w >= 2 * g.ow`; the CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max2x2_avx2(g: &ConvGeom, x: &[f32], lay: PlaneLayout, y: &mut [f32], planes: usize) {
    use core::arch::x86_64::*;
    /// `TAIL[8 - r..16 - r]` has its first `r` lanes set.
    static TAIL: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    let (oh, ow) = (g.oh, g.ow);
    let n = planes * oh * ow;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut o = 0;
    for p in 0..planes {
        for oy in 0..oh {
            let mut ox = 0;
            while ox < ow {
                let r = (ow - ox).min(8);
                // SAFETY: input row `2 * oy` (and the next) of plane `p` holds `2 * ow` floats
                // from its start, of which this reads `2 * ox..2 * (ox + r)` (masked to them
                // when `r < 8`); outputs `o + ox..o + ox + 8` lie in `y` when stored whole,
                // else the mask keeps `r <= n - o - ox` of them.
                unsafe {
                    let r0 = xp.add(p * lay.plane + 2 * oy * lay.row + 2 * ox);
                    let r1 = r0.add(lay.row);
                    let (a, b) = if r == 8 {
                        (
                            _mm256_max_ps(_mm256_loadu_ps(r0), _mm256_loadu_ps(r1)),
                            _mm256_max_ps(_mm256_loadu_ps(r0.add(8)), _mm256_loadu_ps(r1.add(8))),
                        )
                    } else {
                        let mask = |k: usize| {
                            _mm256_loadu_si256(TAIL.as_ptr().add(8 - k) as *const __m256i)
                        };
                        let (lo, hi) = (mask((2 * r).min(8)), mask((2 * r).saturating_sub(8)));
                        (
                            _mm256_max_ps(_mm256_maskload_ps(r0, lo), _mm256_maskload_ps(r1, lo)),
                            // Past the row when `r <= 4` (and the mask empty): wrapping.
                            _mm256_max_ps(
                                _mm256_maskload_ps(r0.wrapping_add(8), hi),
                                _mm256_maskload_ps(r1.wrapping_add(8), hi),
                            ),
                        )
                    };
                    // Pairs 0 1 4 5 | 2 3 6 7 in the lanes, then in order.
                    let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                    let m = _mm256_castps_pd(_mm256_max_ps(even, odd));
                    let m = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(m));
                    let at = yp.add(o + ox);
                    if o + ox + 8 <= n {
                        _mm256_storeu_ps(at, m);
                    } else {
                        let keep = _mm256_loadu_si256(TAIL.as_ptr().add(8 - r) as *const __m256i);
                        _mm256_maskstore_ps(at, keep, m);
                    }
                }
                ox += r;
            }
            o += ow;
        }
    }
}

/// # Safety
/// None; `unsafe` only to share the kernel signature.
unsafe fn pool_baseline(
    g: &ConvGeom,
    op: PoolOp,
    x: &[f32],
    lay: PlaneLayout,
    y: &mut [f32],
    planes: usize,
) {
    pool_planes(g, op, x, lay, y, planes)
}

#[inline(always)]
fn pool_planes(
    g: &ConvGeom,
    op: PoolOp,
    x: &[f32],
    lay: PlaneLayout,
    y: &mut [f32],
    planes: usize,
) {
    if op == PoolOp::Max && max2x2_fits(g) {
        return max2x2(g, x, lay, y, planes);
    }
    debug_assert_eq!(
        lay,
        PlaneLayout::dense(g),
        "pool: only the 2x2 window reads other layouts"
    );
    // Literal arguments fold into the inlined copies, specialising their inner loops.
    match (op, g.kw, g.stride[1]) {
        (PoolOp::Max, 2, 2) => planes_with(g, Max, 2, 2, x, y, planes),
        (PoolOp::Max, 3, 2) => planes_with(g, Max, 3, 2, x, y, planes),
        (PoolOp::Max, 3, 1) => planes_with(g, Max, 3, 1, x, y, planes),
        (PoolOp::Max, kw, s) => planes_with(g, Max, kw, s, x, y, planes),
        (PoolOp::Avg { count_include_pad }, 2, 2) => {
            planes_with(g, Sum(count_include_pad), 2, 2, x, y, planes)
        }
        (PoolOp::Avg { count_include_pad }, 3, 2) => {
            planes_with(g, Sum(count_include_pad), 3, 2, x, y, planes)
        }
        (PoolOp::Avg { count_include_pad }, kw, s) => {
            planes_with(g, Sum(count_include_pad), kw, s, x, y, planes)
        }
    }
}

/// Max pooling over 2×2 windows with stride 2 and no padding, every window inside the image:
/// the maximum of two rows, then of adjacent pairs, in loops the compiler vectorises.
#[inline(always)]
fn max2x2(g: &ConvGeom, x: &[f32], lay: PlaneLayout, y: &mut [f32], planes: usize) {
    let (oh, ow) = (g.oh, g.ow);
    if oh == 0 || ow == 0 {
        return;
    }
    for (p, yp) in y.chunks_exact_mut(oh * ow).take(planes).enumerate() {
        let xp = &x[p * lay.plane..];
        for (oy, yrow) in yp.chunks_exact_mut(ow).enumerate() {
            let (s0, s1) = (2 * oy * lay.row, (2 * oy + 1) * lay.row);
            let (r0, r1) = (&xp[s0..s0 + 2 * ow], &xp[s1..s1 + 2 * ow]);
            for ((o, a), b) in yrow
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                *o = a[0].max(a[1]).max(b[0].max(b[1]));
            }
        }
    }
}

/// How window values combine and finish.
trait Reduce: Copy {
    const INIT: f32;
    fn f(self, acc: f32, v: f32) -> f32;
    /// Final value of a window with `cnt` input cells out of `full`.
    fn fin(self, acc: f32, cnt: usize, full: usize) -> f32;
}

#[derive(Clone, Copy)]
struct Max;

impl Reduce for Max {
    const INIT: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn f(self, acc: f32, v: f32) -> f32 {
        acc.max(v)
    }
    #[inline(always)]
    fn fin(self, acc: f32, _: usize, _: usize) -> f32 {
        acc
    }
}

/// Sum, finished as an average; the flag is `count_include_pad`.
#[derive(Clone, Copy)]
struct Sum(bool);

impl Reduce for Sum {
    const INIT: f32 = 0.0;
    #[inline(always)]
    fn f(self, acc: f32, v: f32) -> f32 {
        acc + v
    }
    #[inline(always)]
    fn fin(self, acc: f32, cnt: usize, full: usize) -> f32 {
        acc / if self.0 { full } else { cnt } as f32
    }
}

#[inline(always)]
fn planes_with<R: Reduce>(
    g: &ConvGeom,
    r: R,
    kw: usize,
    sx: usize,
    x: &[f32],
    y: &mut [f32],
    planes: usize,
) {
    let (ih, iw, oh, ow) = (g.h, g.w, g.oh, g.ow);
    if oh == 0 || ow == 0 {
        return;
    }
    let (kh, sy, pt, pl) = (g.kh, g.stride[0], g.pad[0], g.pad[1]);
    let full = kh * kw;
    if ih == 0 || iw == 0 {
        y[..planes * oh * ow].fill(r.fin(R::INIT, 0, full));
        return;
    }
    // Interior columns: `ox * sx >= pl` and `ox * sx - pl + kw <= iw`.
    let xl = pl.div_ceil(sx).min(ow);
    let xh = if iw + pl >= kw {
        ((iw + pl - kw) / sx + 1).min(ow)
    } else {
        0
    }
    .max(xl);
    // Input columns `xs..xe` of output column `ox`.
    let cols = |ox: usize| {
        let x0 = ox * sx;
        let xs = (x0.max(pl) - pl).min(iw);
        let xe = (x0 + kw).min(iw + pl).max(pl) - pl;
        (xs, xe.max(xs))
    };
    for (xp, yp) in x
        .chunks_exact(ih * iw)
        .zip(y.chunks_exact_mut(oh * ow))
        .take(planes)
    {
        for (oy, yrow) in yp.chunks_exact_mut(ow).enumerate() {
            let y0 = oy * sy;
            let ys = (y0.max(pt) - pt).min(ih);
            let ye = ((y0 + kh).min(ih + pt).max(pt) - pt).max(ys);
            yrow.fill(R::INIT);
            for xrow in xp[ys * iw..ye * iw].chunks_exact(iw) {
                for ox in (0..xl).chain(xh..ow) {
                    let (xs, xe) = cols(ox);
                    for &v in &xrow[xs..xe] {
                        yrow[ox] = r.f(yrow[ox], v);
                    }
                }
                if xl == xh {
                    continue;
                }
                let seg = &xrow[xl * sx - pl..(xh - 1) * sx - pl + kw];
                let out = &mut yrow[xl..xh];
                if sx == kw {
                    for (o, win) in out.iter_mut().zip(seg.chunks_exact(kw)) {
                        let mut acc = *o;
                        for &v in win {
                            acc = r.f(acc, v);
                        }
                        *o = acc;
                    }
                } else {
                    for (i, o) in out.iter_mut().enumerate() {
                        let mut acc = *o;
                        for &v in &seg[i * sx..i * sx + kw] {
                            acc = r.f(acc, v);
                        }
                        *o = acc;
                    }
                }
            }
            let rows = ye - ys;
            for (ox, o) in yrow.iter_mut().enumerate() {
                let (xs, xe) = cols(ox);
                *o = r.fin(*o, rows * (xe - xs), full);
            }
        }
    }
}
