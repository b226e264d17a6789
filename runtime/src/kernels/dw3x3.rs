//! Depthwise 3×3 convolution with dilation 1 and column stride 1 or 2 (any row stride, any
//! padding), vectorised across the output width.
//!
//! Each output row is cut into a left border (columns whose window starts in the padding), an
//! interior (all three input columns of every tap inside the row) and a right border. Interior
//! blocks of `N` outputs are computed in registers from the (up to) three input rows with the
//! bias as the starting value, clamped in registers for ReLU / ReLU6 and stored; the last
//! partial block is recomputed overlapping the previous one (every block only stores, so the
//! overlap is harmless), a narrower vector type covers interiors shorter than `N`, and the
//! borders are computed one output at a time with bounds checks. Input rows in the vertical
//! padding are skipped through a per-row mask. Other activations run over the stored row.

use super::{apply_act, Activation, ConvGeom, Elems};

/// The vector operations the 3×3 kernel needs, over `N` f32 lanes.
///
/// # Safety
/// Every method may only run on a CPU supporting the implementation's instruction set; pointer
/// methods access exactly the elements their documentation names.
pub(super) trait Lanes {
    const N: usize;
    type V: Copy;
    unsafe fn splat(v: f32) -> Self::V;
    /// Reads `p[0..N]`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Writes `p[0..N]`.
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `acc + a * b`.
    unsafe fn fma(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// `min(max(v, lo), hi)` per lane.
    unsafe fn clamp(v: Self::V, lo: Self::V, hi: Self::V) -> Self::V;
    /// Reads `p[0..2N + 1]` and returns the inputs of the three taps of `N` stride-2 outputs:
    /// `p[2i]`, `p[2i + 1]`, `p[2i + 2]` for `i < N`, in an implementation-defined lane order
    /// that [`Lanes::unscramble`] turns into `i` order.
    unsafe fn load_s2(p: *const f32) -> (Self::V, Self::V, Self::V);
    /// Puts lanes in the order [`Lanes::load_s2`] left them back in output order.
    unsafe fn unscramble(v: Self::V) -> Self::V;

    /// [`Lanes::load`] of columns `col..col + N` of a row of `w` readable elements starting at
    /// `row`; columns outside `0..w` read as 0 and are never accessed.
    #[inline(always)]
    unsafe fn load_part(row: *const f32, col: isize, w: usize) -> Self::V {
        let mut b = [0.0f32; 2 * MAX_N + 1];
        // SAFETY: only columns inside `0..w` are read; `b` holds `2 * MAX_N + 1 >= N` values.
        unsafe {
            gather_part(&mut b[..Self::N], row, col, w);
            Self::load(b.as_ptr())
        }
    }

    /// [`Lanes::load_s2`] of columns `col..col + 2N + 1` of a row as in [`Lanes::load_part`].
    #[inline(always)]
    unsafe fn load_s2_part(row: *const f32, col: isize, w: usize) -> (Self::V, Self::V, Self::V) {
        let mut b = [0.0f32; 2 * MAX_N + 1];
        // SAFETY: as in `load_part`, with `2 * N + 1 <= 2 * MAX_N + 1` values.
        unsafe {
            gather_part(&mut b[..2 * Self::N + 1], row, col, w);
            Self::load_s2(b.as_ptr())
        }
    }
}

/// `b[j] = row[col + j]` where `0 <= col + j < w`, else 0.
///
/// # Safety
/// `row` addresses `w` readable elements.
#[inline(always)]
unsafe fn gather_part(b: &mut [f32], row: *const f32, col: isize, w: usize) {
    for (j, v) in b.iter_mut().enumerate() {
        let c = col + j as isize;
        *v = if c >= 0 && (c as usize) < w {
            // SAFETY: `0 <= c < w`.
            unsafe { *row.add(c as usize) }
        } else {
            0.0
        };
    }
}

/// Whether [`depthwise3x3`] handles `g`; other geometries take the generic row algorithm.
pub(super) fn supported(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.dilation == [1, 1]
        && (g.stride[1] == 1 || g.stride[1] == 2)
        && g.stride[0] > 0
        && g.h > 0
        && g.w > 0
        // Column arithmetic of the edge loads runs in i32 lanes.
        && g.w < 1 << 28
        && g.pad[1] < 1 << 28
}

/// Everything one output row needs, fixed per layer or per channel.
struct RowCtx<'a, V: Lanes, H: Lanes> {
    /// Input width and left padding.
    w: usize,
    pad: usize,
    /// Interior output columns `xl..xr`.
    xl: usize,
    xr: usize,
    /// In-register clamp for ReLU / ReLU6.
    clamp: Option<(f32, f32)>,
    v: &'a Vecs<V>,
    hv: &'a Vecs<H>,
}

/// Per-channel splatted taps, bias and clamp bounds of one vector type.
struct Vecs<L: Lanes> {
    taps: [L::V; 9],
    bias: L::V,
    lo: L::V,
    hi: L::V,
}

impl<L: Lanes> Vecs<L> {
    /// # Safety
    /// The CPU supports `L`.
    #[inline(always)]
    unsafe fn new(taps: &[f32; 9], bias: f32, clamp: Option<(f32, f32)>) -> Self {
        let (lo, hi) = clamp.unwrap_or((0.0, 0.0));
        // SAFETY: splatting needs only CPU support, which the caller guarantees.
        unsafe {
            Vecs {
                taps: taps.map(|t| L::splat(t)),
                bias: L::splat(bias),
                lo: L::splat(lo),
                hi: L::splat(hi),
            }
        }
    }
}

/// [`super::depthwise_conv2d`] for a geometry with [`supported`].
///
/// # Safety
/// `supported(g)`; `x`, `w`, `bias` and `y` pass the length checks of
/// `DepthwiseKernel::run`; the CPU supports `V` and `H`.
#[inline(always)]
pub(super) unsafe fn depthwise3x3<V: Lanes, H: Lanes>(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    // SAFETY: forwarded contract; the column stride is 1 or 2 by `supported`.
    unsafe {
        if g.stride[1] == 1 {
            channels::<V, H, 1>(g, x, w, bias, act, y)
        } else {
            channels::<V, H, 2>(g, x, w, bias, act, y)
        }
    }
}

/// # Safety
/// As [`depthwise3x3`], with `S == g.stride[1]`.
#[inline(always)]
unsafe fn channels<V: Lanes, H: Lanes, const S: usize>(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (ih, iw, oh, ow) = (g.h, g.w, g.oh, g.ow);
    if oh == 0 || ow == 0 {
        return;
    }
    let (pt, pl, sy) = (g.pad[0], g.pad[1], g.stride[0]);
    let clamp = match act {
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Relu6 => Some((0.0, 6.0)),
        _ => None,
    };
    let post = !matches!(act, Activation::None | Activation::Relu | Activation::Relu6);
    // Interior: `ox * S >= pl` and `ox * S - pl + 2 <= iw - 1`.
    let xl = pl.div_ceil(S).min(ow);
    let xr = if iw + pl >= 3 {
        ((iw + pl - 3) / S + 1).min(ow)
    } else {
        0
    }
    .max(xl);
    for c in 0..g.c {
        let taps: [f32; 9] = core::array::from_fn(|i| w.get_f32(c * 9 + i));
        let b = bias.map_or(0.0, |b| b[c]);
        let plane = &x[c * ih * iw..(c + 1) * ih * iw];
        let out = &mut y[c * oh * ow..(c + 1) * oh * ow];
        // SAFETY: the caller guarantees CPU support for `V` and `H`.
        let (v, hv) = unsafe {
            (
                Vecs::<V>::new(&taps, b, clamp),
                Vecs::<H>::new(&taps, b, clamp),
            )
        };
        let ctx = RowCtx {
            w: iw,
            pad: pl,
            xl,
            xr,
            clamp,
            v: &v,
            hv: &hv,
        };
        for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
            let mut rows = [plane.as_ptr(); 3];
            let mut mask = 0u32;
            for (k, r) in rows.iter_mut().enumerate() {
                let iy = oy * sy + k;
                if iy >= pt && iy - pt < ih {
                    *r = plane[(iy - pt) * iw..].as_ptr();
                    mask |= 1 << k;
                }
            }
            // SAFETY: every row pointer with its `mask` bit set addresses a full input row of
            // `iw` elements; `orow` has `ow` elements; CPU support is the caller's.
            unsafe {
                if mask == 7 {
                    row::<V, H, S, true>(&ctx, &rows, 7, orow);
                } else {
                    row::<V, H, S, false>(&ctx, &rows, mask, orow);
                }
            }
            if post {
                apply_act(act, orow);
            }
        }
    }
}

/// One output row.
///
/// # Safety
/// `rows[k]` addresses `ctx.w` readable elements for every bit `k` set in `mask` (all three
/// with `FULL`); the CPU supports `V` and `H`.
#[inline(always)]
unsafe fn row<V: Lanes, H: Lanes, const S: usize, const FULL: bool>(
    ctx: &RowCtx<'_, V, H>,
    rows: &[*const f32; 3],
    mask: u32,
    orow: &mut [f32],
) {
    let ow = orow.len();
    let (xl, xr) = (ctx.xl, ctx.xr);
    let n = xr - xl;
    let clamp = ctx.clamp.is_some();
    let op = orow.as_mut_ptr();
    // SAFETY (interior blocks): blocks start at `ox0 >= xl` and end at `ox0 + N <= xr <= ow`, so
    // the stores stay in `orow` and the window of every output is inside the input row (see the
    // interior bounds in `channels`).
    unsafe {
        if n >= V::N {
            let mut ox0 = xl;
            while ox0 + V::N <= xr {
                block::<V, S, FULL>(ctx.v, clamp, rows, mask, ox0 * S - ctx.pad, op.add(ox0));
                ox0 += V::N;
            }
            if ox0 < xr {
                let ox0 = xr - V::N;
                block::<V, S, FULL>(ctx.v, clamp, rows, mask, ox0 * S - ctx.pad, op.add(ox0));
            }
        } else if n >= H::N {
            let mut ox0 = xl;
            while ox0 + H::N <= xr {
                block::<H, S, FULL>(ctx.hv, clamp, rows, mask, ox0 * S - ctx.pad, op.add(ox0));
                ox0 += H::N;
            }
            if ox0 < xr {
                let ox0 = xr - H::N;
                block::<H, S, FULL>(ctx.hv, clamp, rows, mask, ox0 * S - ctx.pad, op.add(ox0));
            }
        }
    }
    let short = if n < H::N { xl..xr } else { 0..0 };
    for r in [0..xl, short, xr..ow] {
        for ox0 in r.clone().step_by(H::N) {
            let end = (ox0 + H::N).min(r.end);
            // SAFETY: forwarded row contract.
            unsafe {
                edge_block::<H, S>(
                    ctx.hv,
                    clamp,
                    ctx.w,
                    ctx.pad,
                    rows,
                    mask,
                    ox0,
                    &mut orow[ox0..end],
                );
            }
        }
    }
}

/// Most lanes of any [`Lanes`] implementation (sizes the stack windows of [`edge_block`]).
const MAX_N: usize = 8;

/// Outputs `ox0..ox0 + out.len()` (at most `L::N`) of a row whose windows may reach into the
/// padding: the input windows are copied into zero-filled stack buffers first.
///
/// # Safety
/// As [`row`] (for the rows `mask` names), and the CPU supports `L`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn edge_block<L: Lanes, const S: usize>(
    v: &Vecs<L>,
    clamp: bool,
    w: usize,
    pad: usize,
    rows: &[*const f32; 3],
    mask: u32,
    ox0: usize,
    out: &mut [f32],
) {
    const { assert!(L::N <= MAX_N) };
    let col = (ox0 * S) as isize - pad as isize;
    let mut tmp = [0.0f32; MAX_N];
    // SAFETY: present rows have `w` readable elements and the edge loads read only inside
    // them; `tmp` holds `MAX_N >= N` values; CPU support for `L` is the caller's.
    unsafe {
        block_cols::<L, S, false, true>(v, clamp, rows, mask, col, w, tmp.as_mut_ptr());
    }
    out.copy_from_slice(&tmp[..out.len()]);
}

/// `N` interior outputs whose leftmost window starts at input column `ix0`; with `FULL` all
/// three rows are present whatever `mask` says.
///
/// # Safety
/// For every row `k` present, `rows[k][ix0..ix0 + (N - 1) * S + 3]` is readable; `out[0..N]`
/// is writable; the CPU supports `L`.
#[inline(always)]
unsafe fn block<L: Lanes, const S: usize, const FULL: bool>(
    v: &Vecs<L>,
    clamp: bool,
    rows: &[*const f32; 3],
    mask: u32,
    ix0: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded contract; interior columns are never outside the row.
    unsafe { block_cols::<L, S, FULL, false>(v, clamp, rows, mask, ix0 as isize, usize::MAX, out) }
}

/// [`block`] whose leftmost window starts at column `col` of rows `w` wide, reading columns
/// outside `0..w` as 0 when `EDGE` (without `EDGE`, `w` is ignored and every column read must be
/// inside the rows).
///
/// # Safety
/// As [`block`]; with `EDGE` only `rows[k][0..w]` need be readable.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block_cols<L: Lanes, const S: usize, const FULL: bool, const EDGE: bool>(
    v: &Vecs<L>,
    clamp: bool,
    rows: &[*const f32; 3],
    mask: u32,
    col: isize,
    w: usize,
    out: *mut f32,
) {
    // SAFETY: the reads cover `ix0..ix0 + N + 2` (stride 1) or `ix0..ix0 + 2N + 1` (stride 2)
    // of present rows, inside the readable range the caller guarantees; the store writes
    // `out[0..N]`.
    unsafe {
        let t = &v.taps;
        let zero = L::splat(0.0);
        // One accumulator per input row keeps the dependency chains three FMAs long.
        let mut acc = [v.bias, zero, zero];
        for k in 0..3 {
            if FULL || mask & (1 << k) != 0 {
                let r = rows[k];
                let (a, b, c) = match (S, EDGE) {
                    (1, false) => {
                        let p = r.offset(col);
                        (L::load(p), L::load(p.add(1)), L::load(p.add(2)))
                    }
                    (_, false) => L::load_s2(r.offset(col)),
                    (1, true) => (
                        L::load_part(r, col, w),
                        L::load_part(r, col + 1, w),
                        L::load_part(r, col + 2, w),
                    ),
                    (_, true) => L::load_s2_part(r, col, w),
                };
                acc[k] = L::fma(acc[k], a, t[3 * k]);
                acc[k] = L::fma(acc[k], b, t[3 * k + 1]);
                acc[k] = L::fma(acc[k], c, t[3 * k + 2]);
            }
        }
        let mut r = L::add(L::add(acc[0], acc[1]), acc[2]);
        if S != 1 {
            r = L::unscramble(r);
        }
        if clamp {
            r = L::clamp(r, v.lo, v.hi);
        }
        L::store(out, r);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx2, Sse};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::Lanes;

    /// 8 lanes of AVX2 + FMA.
    pub(in super::super) struct Avx2;
    /// 4 lanes of SSE with FMA (the narrow type of the AVX2 kernel).
    pub(in super::super) struct Sse;

    // SAFETY (every method): the trait contract makes CPU support for AVX2 + FMA the caller's
    // obligation, and each pointer access covers exactly the documented elements (masked loads
    // access only lanes inside the row; `supported` keeps columns within i32).
    impl Lanes for Avx2 {
        const N: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(acc: __m256, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        unsafe fn clamp(v: __m256, lo: __m256, hi: __m256) -> __m256 {
            unsafe { _mm256_min_ps(_mm256_max_ps(v, lo), hi) }
        }
        /// Lane order `[0, 1, 4, 5, 2, 3, 6, 7]` (in-lane shuffles only).
        #[inline(always)]
        unsafe fn load_s2(p: *const f32) -> (__m256, __m256, __m256) {
            unsafe {
                let (a0, b0) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                let (a1, b1) = (_mm256_loadu_ps(p.add(1)), _mm256_loadu_ps(p.add(9)));
                (
                    _mm256_shuffle_ps::<0b10_00_10_00>(a0, b0),
                    _mm256_shuffle_ps::<0b11_01_11_01>(a0, b0),
                    _mm256_shuffle_ps::<0b11_01_11_01>(a1, b1),
                )
            }
        }
        #[inline(always)]
        unsafe fn unscramble(v: __m256) -> __m256 {
            unsafe { _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v))) }
        }
    }

    // SAFETY (every method): as for `Avx2`.
    impl Lanes for Sse {
        const N: usize = 4;
        type V = __m128;
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m128 {
            unsafe { _mm_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m128 {
            unsafe { _mm_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m128) {
            unsafe { _mm_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(acc: __m128, a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        unsafe fn clamp(v: __m128, lo: __m128, hi: __m128) -> __m128 {
            unsafe { _mm_min_ps(_mm_max_ps(v, lo), hi) }
        }
        /// Natural lane order.
        #[inline(always)]
        unsafe fn load_s2(p: *const f32) -> (__m128, __m128, __m128) {
            unsafe {
                let (a0, b0) = (_mm_loadu_ps(p), _mm_loadu_ps(p.add(4)));
                let (a1, b1) = (_mm_loadu_ps(p.add(1)), _mm_loadu_ps(p.add(5)));
                (
                    _mm_shuffle_ps::<0b10_00_10_00>(a0, b0),
                    _mm_shuffle_ps::<0b11_01_11_01>(a0, b0),
                    _mm_shuffle_ps::<0b11_01_11_01>(a1, b1),
                )
            }
        }
        #[inline(always)]
        unsafe fn unscramble(v: __m128) -> __m128 {
            v
        }
        #[inline(always)]
        unsafe fn load_part(row: *const f32, col: isize, w: usize) -> __m128 {
            unsafe {
                let idx = _mm_add_epi32(_mm_set1_epi32(col as i32), _mm_setr_epi32(0, 1, 2, 3));
                let inside = _mm_and_si128(
                    _mm_cmpgt_epi32(idx, _mm_set1_epi32(-1)),
                    _mm_cmpgt_epi32(_mm_set1_epi32(w as i32), idx),
                );
                // Masked-off lanes are not accessed, so the address may lie outside the row.
                _mm_maskload_ps(row.wrapping_offset(col), inside)
            }
        }
        #[inline(always)]
        unsafe fn load_s2_part(row: *const f32, col: isize, w: usize) -> (__m128, __m128, __m128) {
            unsafe {
                let (a0, b0) = (
                    Self::load_part(row, col, w),
                    Self::load_part(row, col + 4, w),
                );
                let (a1, b1) = (
                    Self::load_part(row, col + 1, w),
                    Self::load_part(row, col + 5, w),
                );
                (
                    _mm_shuffle_ps::<0b10_00_10_00>(a0, b0),
                    _mm_shuffle_ps::<0b11_01_11_01>(a0, b0),
                    _mm_shuffle_ps::<0b11_01_11_01>(a1, b1),
                )
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) use neon::{Neon4, Neon8};

#[cfg(target_arch = "aarch64")]
mod neon {
    use core::arch::aarch64::*;

    use super::Lanes;

    /// 4 lanes of NEON.
    pub(in super::super) struct Neon4;
    /// 8 lanes of NEON as two registers (two independent dependency chains).
    pub(in super::super) struct Neon8;

    // SAFETY (every method): NEON is baseline on aarch64; each pointer access covers exactly
    // the documented elements.
    impl Lanes for Neon4 {
        const N: usize = 4;
        type V = float32x4_t;
        #[inline(always)]
        unsafe fn splat(v: f32) -> float32x4_t {
            unsafe { vdupq_n_f32(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(acc: float32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vfmaq_f32(acc, a, b) }
        }
        #[inline(always)]
        unsafe fn clamp(v: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> float32x4_t {
            unsafe { vminq_f32(vmaxq_f32(v, lo), hi) }
        }
        /// Natural lane order (`vld2q` deinterleaves).
        #[inline(always)]
        unsafe fn load_s2(p: *const f32) -> (float32x4_t, float32x4_t, float32x4_t) {
            unsafe {
                let a = vld2q_f32(p);
                let b = vld2q_f32(p.add(1));
                (a.0, a.1, b.1)
            }
        }
        #[inline(always)]
        unsafe fn unscramble(v: float32x4_t) -> float32x4_t {
            v
        }
    }

    // SAFETY (every method): as for `Neon4`.
    impl Lanes for Neon8 {
        const N: usize = 8;
        type V = (float32x4_t, float32x4_t);
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self::V {
            unsafe { (vdupq_n_f32(v), vdupq_n_f32(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            unsafe { (vld1q_f32(p), vld1q_f32(p.add(4))) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            unsafe {
                vst1q_f32(p, v.0);
                vst1q_f32(p.add(4), v.1);
            }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { (vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1)) }
        }
        #[inline(always)]
        unsafe fn fma(acc: Self::V, a: Self::V, b: Self::V) -> Self::V {
            unsafe { (vfmaq_f32(acc.0, a.0, b.0), vfmaq_f32(acc.1, a.1, b.1)) }
        }
        #[inline(always)]
        unsafe fn clamp(v: Self::V, lo: Self::V, hi: Self::V) -> Self::V {
            unsafe {
                (
                    vminq_f32(vmaxq_f32(v.0, lo.0), hi.0),
                    vminq_f32(vmaxq_f32(v.1, lo.1), hi.1),
                )
            }
        }
        /// Natural lane order.
        #[inline(always)]
        unsafe fn load_s2(p: *const f32) -> (Self::V, Self::V, Self::V) {
            unsafe {
                let (a0, b0) = (vld2q_f32(p), vld2q_f32(p.add(1)));
                let (a1, b1) = (vld2q_f32(p.add(8)), vld2q_f32(p.add(9)));
                ((a0.0, a1.0), (a0.1, a1.1), (b0.1, b1.1))
            }
        }
        #[inline(always)]
        unsafe fn unscramble(v: Self::V) -> Self::V {
            v
        }
    }
}
