//! Depthwise 3×3 convolution with dilation 1 and column stride 1 or 2 (any row stride, any
//! padding), vectorised across the output width.
//!
//! Each output row is cut into a left border (columns whose window starts in the padding), an
//! interior (all three input columns of every tap inside the row) and a right border. Interior
//! blocks of `N` outputs are computed in registers from the (up to) three input rows with the
//! bias as the starting value, clamped in registers for ReLU / ReLU6 and stored; the last
//! partial block is recomputed overlapping the previous one (every block only stores, so the
//! overlap is harmless) and a narrower vector type covers interiors shorter than `N`. Borders of
//! one or two outputs are computed tap by tap; wider ones (and interiors shorter than the narrow
//! type) as vector blocks whose loads read columns outside the row as 0 (masked loads on x86, a
//! zero-filled stack window on NEON). Input rows in the vertical padding are skipped through a
//! per-row mask. Other activations run over the stored row.

use super::{apply_act, Activation, ConvGeom, Elems, Planes};

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
    /// Puts lanes in the order [`Lanes::load_s2`] left them back in output order; its own
    /// inverse.
    unsafe fn unscramble(v: Self::V) -> Self::V;

    /// Lane `i` of the result is lane `i - 1` of `v`, lane 0 is 0.
    unsafe fn shift_in_left(v: Self::V) -> Self::V;
    /// Lane `i` of the result is lane `i + 1` of `v`, lane `N - 1` is 0.
    unsafe fn shift_in_right(v: Self::V) -> Self::V;
    /// What the loads and the store of one edge block need (lane masks), computed once per
    /// block and shared by its rows.
    type Edge: Copy;
    /// Prepares a block whose leftmost window starts at column `col` (possibly negative) of
    /// rows `w` wide, with column stride `S`, storing `cnt <= N` outputs.
    unsafe fn edge<const S: usize>(col: isize, w: usize, cnt: usize) -> Self::Edge;
    /// The three tap vectors ([`Lanes::load`] at columns `col`, `col + 1`, `col + 2`, or
    /// [`Lanes::load_s2`] at `col`) of the row starting at `row` (`w` readable elements) for the
    /// block `e` describes; columns outside `0..w` read as 0 and are never accessed.
    unsafe fn load_edge<const S: usize>(
        row: *const f32,
        e: &Self::Edge,
    ) -> (Self::V, Self::V, Self::V);
    /// Writes the first `cnt` lanes of `v` to `out[0..cnt]`.
    unsafe fn store_edge(out: *mut f32, v: Self::V, e: &Self::Edge);
}

/// [`Lanes::Edge`] of implementations without masked loads: the columns are copied into a
/// zero-filled stack buffer.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(super) struct EdgeBuf {
    col: isize,
    w: usize,
    cnt: usize,
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
impl EdgeBuf {
    fn new(col: isize, w: usize, cnt: usize) -> Self {
        EdgeBuf { col, w, cnt }
    }

    /// [`Lanes::load_edge`] through a stack buffer.
    ///
    /// # Safety
    /// As [`Lanes::load_edge`].
    #[inline(always)]
    unsafe fn load<L: Lanes, const S: usize>(&self, row: *const f32) -> (L::V, L::V, L::V) {
        let span = (L::N - 1) * S + 3;
        let mut b = [0.0f32; 2 * MAX_N + 1];
        for (j, v) in b[..span].iter_mut().enumerate() {
            let c = self.col + j as isize;
            if c >= 0 && (c as usize) < self.w {
                // SAFETY: `0 <= c < w` and the row has `w` readable elements.
                *v = unsafe { *row.add(c as usize) };
            }
        }
        let p = b.as_ptr();
        // SAFETY: `b` holds `2 * MAX_N + 1 >= span` values, what the loads below read.
        unsafe {
            if S == 1 {
                (L::load(p), L::load(p.add(1)), L::load(p.add(2)))
            } else {
                L::load_s2(p)
            }
        }
    }

    /// [`Lanes::store_edge`] through a stack buffer.
    ///
    /// # Safety
    /// As [`Lanes::store_edge`].
    #[inline(always)]
    unsafe fn store<L: Lanes>(&self, out: *mut f32, v: L::V) {
        let mut b = [0.0f32; MAX_N];
        // SAFETY: `b` holds `MAX_N >= N` values; `out[0..cnt]` is writable.
        unsafe {
            L::store(b.as_mut_ptr(), v);
            core::ptr::copy_nonoverlapping(b.as_ptr(), out, self.cnt);
        }
    }
}

/// `clamp(bias + sum over present rows k of taps(k) · load(k))` for lane type `$L` and column
/// stride `$S`, one accumulator per row so the dependency chains stay three FMAs long. A macro so
/// the loads expand in place (closures here are not reliably inlined). Must be used inside an
/// `unsafe` block whose safety comment covers the loads.
macro_rules! combine {
    ($L:ty, $S:expr, $full:expr, $v:expr, $clamp:expr, $mask:expr, |$k:ident| $load:expr) => {{
        let v = $v;
        let t = &v.taps;
        let zero = <$L>::splat(0.0);
        let mut acc = [v.bias, zero, zero];
        for $k in 0..3 {
            if $full || $mask & (1 << $k) != 0 {
                let (a, b, c) = $load;
                acc[$k] = <$L>::fma(acc[$k], a, t[3 * $k]);
                acc[$k] = <$L>::fma(acc[$k], b, t[3 * $k + 1]);
                acc[$k] = <$L>::fma(acc[$k], c, t[3 * $k + 2]);
            }
        }
        let mut r = <$L>::add(<$L>::add(acc[0], acc[1]), acc[2]);
        if $S != 1 {
            r = <$L>::unscramble(r);
        }
        if $clamp {
            r = <$L>::clamp(r, v.lo, v.hi);
        }
        r
    }};
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
    taps: [f32; 9],
    bias: f32,
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
                taps: [
                    L::splat(taps[0]),
                    L::splat(taps[1]),
                    L::splat(taps[2]),
                    L::splat(taps[3]),
                    L::splat(taps[4]),
                    L::splat(taps[5]),
                    L::splat(taps[6]),
                    L::splat(taps[7]),
                    L::splat(taps[8]),
                ],
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
/// `supported(g)`; `x`, `w` and `bias` pass the checks of `DepthwiseKernel::run_planes_raw`
/// and `y` meets its contract; the CPU supports `V` and `H`.
#[inline(always)]
pub(super) unsafe fn depthwise3x3<V: Lanes, H: Lanes>(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    planes: Planes,
) {
    // SAFETY: forwarded contract; the column stride is 1 or 2 by `supported`.
    unsafe {
        if g.stride[1] == 1 {
            channels::<V, H, 1>(g, x, w, bias, act, y, planes)
        } else {
            channels::<V, H, 2>(g, x, w, bias, act, y, planes)
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
    y: *mut f32,
    planes: Planes,
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
    // Small same-size stride-1 maps run flat (see `channel_flat`) on a copy with a zero row
    // above and below, zeroed once: each channel overwrites only its plane.
    let total = oh * ow;
    let flat = S == 1
        && sy == 1
        && pt == 1
        && pl == 1
        && (oh, ow) == (ih, iw)
        && total >= V::N
        && total + 2 * iw + 2 <= FLAT_MAX;
    // The padded copy and the column masks, set up only for flat maps.
    let mut flat_bufs = flat.then(|| {
        let (mut left, mut right) = ([0f32; FLAT_MAX], [0f32; FLAT_MAX]);
        for q in 0..total {
            left[q] = if q % ow != 0 { 1.0 } else { 0.0 };
            right[q] = if q % ow != ow - 1 { 1.0 } else { 0.0 };
        }
        ([0f32; FLAT_MAX + MAX_N], left, right)
    });
    let taps_of = |c: usize| {
        let mut taps = [0f32; 9];
        for (i, t) in taps.iter_mut().enumerate() {
            *t = w.get_f32(c * 9 + i);
        }
        (taps, bias.map_or(0.0, |b| b[c]))
    };
    // Stride-2 maps whose output rows fit one vector run a row per vector (see
    // `channel_s2_narrow`), instead of the narrow type's blocks and a scalar left border.
    if S == 2 && sy == 2 && pt == 1 && pl == 1 && ow <= V::N && iw == 2 * ow && ih == 2 * oh {
        for c in 0..g.c {
            let (taps, b) = taps_of(c);
            // SAFETY: channel `c`'s output plane is the caller's, and no other channel's.
            let out = unsafe { core::slice::from_raw_parts_mut(y.add(c * planes.y), oh * ow) };
            // SAFETY: CPU support is the caller's; the plane's rows lie in `x` (the caller's
            // length checks) and the geometry is the one `channel_s2_narrow` takes.
            unsafe {
                let v = Vecs::<V>::new(&taps, b, clamp);
                channel_s2_narrow::<V>(&v, clamp.is_some(), x, c * planes.x, iw, out);
            }
            if post {
                apply_act(act, out);
            }
        }
        return;
    }
    if let Some((padded, left, right)) = &mut flat_bufs {
        for c in 0..g.c {
            let (taps, b) = taps_of(c);
            let plane = &x[c * planes.x..c * planes.x + ih * iw];
            // SAFETY: channel `c`'s output plane is the caller's, and no other channel's.
            let out = unsafe { core::slice::from_raw_parts_mut(y.add(c * planes.y), oh * ow) };
            // SAFETY: CPU support is the caller's; `padded` holds the plane after `iw + 1`
            // zeros and `iw + 1 + MAX_N` zeros after it, `left` / `right` `total` masks, `out`
            // `total` values.
            unsafe {
                let v = Vecs::<V>::new(&taps, b, clamp);
                copy_lanes::<V>(plane, &mut padded[iw + 1..iw + 1 + total]);
                channel_flat::<V>(&v, clamp.is_some(), padded, left, right, iw, out);
            }
            if post {
                apply_act(act, out);
            }
        }
        return;
    }
    for c in 0..g.c {
        let (taps, b) = taps_of(c);
        let plane = &x[c * planes.x..c * planes.x + ih * iw];
        // SAFETY: channel `c`'s output plane is the caller's, and no other channel's.
        let out = unsafe { core::slice::from_raw_parts_mut(y.add(c * planes.y), oh * ow) };
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
            taps,
            bias: b,
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

/// `dst.copy_from_slice(src)` in vectors of `L`, except that `-0.0` becomes `0.0`: a plane of
/// a small map is too short for a call to `memcpy` to pay, and adding `0.0` (which IEEE
/// arithmetic may not drop) keeps the compiler from turning the loop back into one.
///
/// # Safety
/// The CPU supports `L`.
#[inline(always)]
unsafe fn copy_lanes<L: Lanes>(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let mut d = dst.chunks_exact_mut(L::N);
    let mut s = src.chunks_exact(L::N);
    // SAFETY: CPU support is the caller's.
    let zero = unsafe { L::splat(0.0) };
    for (d, s) in (&mut d).zip(&mut s) {
        // SAFETY: both chunks hold `N` floats; CPU support is the caller's.
        unsafe { L::store(d.as_mut_ptr(), L::add(L::load(s.as_ptr()), zero)) };
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s + 0.0;
    }
}

/// Largest zero-padded plane (floats) that [`channel_flat`] handles, on the stack.
const FLAT_MAX: usize = 1024;

/// A 3×3 stride-1, padding-1 channel of a small map as one run of `L::N`-wide blocks instead
/// of rows too short to vectorise. Output pixel `q = oy * w + ox` takes its taps from
/// `padded[q + ki * w + kj]`, where `padded` is the plane after `w + 1` zeros (so rows above and
/// below read as 0); taps with `kj = 0` at `ox = 0` and `kj = 2` at `ox = w - 1` would read the
/// neighbouring row's edge, and `left[q]` / `right[q]` (0 there, 1 elsewhere) cancel them. The
/// last block overlaps the one before instead of passing the end (blocks only store).
///
/// # Safety
/// `out.len() >= L::N`; `padded` holds `out.len() + 2 * w + 2 + L::N` readable values and
/// `left` / `right` `out.len()`; the CPU supports `L`.
#[inline(always)]
unsafe fn channel_flat<L: Lanes>(
    v: &Vecs<L>,
    clamp: bool,
    padded: &[f32],
    left: &[f32],
    right: &[f32],
    w: usize,
    out: &mut [f32],
) {
    let total = out.len();
    assert!(
        total >= L::N
            && padded.len() >= total + 2 * w + 2 + L::N
            && left.len() >= total
            && right.len() >= total
    );
    let (src, dst) = (padded.as_ptr(), out.as_mut_ptr());
    let t = &v.taps;
    for start in (0..total).step_by(L::N) {
        let q = start.min(total - L::N);
        // SAFETY: `q + N <= total`: the block reads `padded[q + ki * w + kj..][..N]` (inside
        // `total + 2w + 2 + N`) and `left` / `right[q..q + N]`, and writes `out[q..q + N]`.
        unsafe {
            let (mut l, mut m, mut r) = (L::splat(0.0), v.bias, L::splat(0.0));
            for k in 0..3 {
                let p = src.add(q + k * w);
                l = L::fma(l, L::load(p), t[3 * k]);
                m = L::fma(m, L::load(p.add(1)), t[3 * k + 1]);
                r = L::fma(r, L::load(p.add(2)), t[3 * k + 2]);
            }
            m = L::fma(m, l, L::load(left.as_ptr().add(q)));
            m = L::fma(m, r, L::load(right.as_ptr().add(q)));
            if clamp {
                m = L::clamp(m, v.lo, v.hi);
            }
            L::store(dst.add(q), m);
        }
    }
}

/// A 3×3 stride-2, padding-1 channel whose input is `2 * oh` rows of `w = 2 * ow` and whose
/// output rows fit one vector (`ow <= L::N`): output row `oy` is one vector computed from input
/// rows `2 * oy - 1` (0 above the first), `2 * oy` and `2 * oy + 1`, each read once as its even
/// columns, its odd columns and the odd columns shifted one lane right (the left taps, 0 at the
/// left edge) by one [`Lanes::load_s2`]; the last two rows' inputs carry into the next output
/// row. Lanes at and past `ow` read past the row and are dropped: each row's store runs into
/// the next row's place, which that row then overwrites, and a store that would pass the plane
/// goes through a stack buffer.
///
/// # Safety
/// `x[base..base + out.len() * 4]` is the plane (`out.len() = oh * ow`); `w == 2 * ow`,
/// `ow <= L::N <= MAX_N`; the CPU supports `L`.
#[inline(always)]
unsafe fn channel_s2_narrow<L: Lanes>(
    v: &Vecs<L>,
    clamp: bool,
    x: &[f32],
    base: usize,
    w: usize,
    out: &mut [f32],
) {
    let ow = w / 2;
    let total = out.len();
    assert!(
        ow > 0
            && ow <= L::N
            && L::N <= MAX_N
            && total.is_multiple_of(ow)
            && base + 4 * total <= x.len()
    );
    let oh = total / ow;
    // A row's load reads `2N + 1` floats from its start; rows too close to the end of `x`
    // are read from a copy.
    let mut tmp = [0f32; 2 * MAX_N + 2];
    let mut last = [0f32; MAX_N];
    let t = &v.taps;
    // Only used inside the `unsafe` block below: `p` addresses `2N + 1` readable floats
    // (from `at` in `x`, or the copy).
    macro_rules! row {
        ($r:expr) => {{
            let at = base + $r * w;
            let p = if at + 2 * L::N < x.len() {
                x.as_ptr().add(at)
            } else {
                tmp[..w].copy_from_slice(&x[at..at + w]);
                tmp.as_ptr()
            };
            let (e, o, _) = L::load_s2(p);
            let (e, o) = (L::unscramble(e), L::unscramble(o));
            (L::shift_in_left(o), e, o)
        }};
    }
    // SAFETY: CPU support is the caller's; every row load reads `2N + 1` floats inside `x` or
    // the copy (`row!`); each store writes `N` floats at `oy * ow` only when they lie in
    // `out`, else `ow` floats through `last`.
    unsafe {
        let z = L::splat(0.0);
        let (mut l0, mut e0, mut o0) = (z, z, z);
        for oy in 0..oh {
            let (l1, e1, o1) = row!(2 * oy);
            let (l2, e2, o2) = row!(2 * oy + 1);
            let mut acc = v.bias;
            acc = L::fma(acc, l0, t[0]);
            acc = L::fma(acc, e0, t[1]);
            acc = L::fma(acc, o0, t[2]);
            acc = L::fma(acc, l1, t[3]);
            acc = L::fma(acc, e1, t[4]);
            acc = L::fma(acc, o1, t[5]);
            acc = L::fma(acc, l2, t[6]);
            acc = L::fma(acc, e2, t[7]);
            acc = L::fma(acc, o2, t[8]);
            (l0, e0, o0) = (l2, e2, o2);
            if clamp {
                acc = L::clamp(acc, v.lo, v.hi);
            }
            if oy * ow + L::N <= total {
                L::store(out.as_mut_ptr().add(oy * ow), acc);
            } else {
                L::store(last.as_mut_ptr(), acc);
                out[oy * ow..oy * ow + ow].copy_from_slice(&last[..ow]);
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
    let clamp = ctx.clamp.is_some();
    if S == 1 && ctx.pad == 1 && ow == ctx.w {
        // SAFETY: forwarded row contract; the widths are checked.
        unsafe {
            if ctx.w > V::N {
                return row_pad1::<V, FULL>(ctx.v, clamp, rows, mask, orow);
            } else if ctx.w > H::N {
                return row_pad1::<H, FULL>(ctx.hv, clamp, rows, mask, orow);
            }
        }
    }
    if S == 2 && ctx.pad == 1 {
        // SAFETY: forwarded row contract; the widths are checked.
        unsafe {
            if ctx.w > 2 * V::N {
                return row_s2_pad1::<V, FULL>(ctx, ctx.v, rows, mask, orow);
            } else if ctx.w > 2 * H::N {
                return row_s2_pad1::<H, FULL>(ctx, ctx.hv, rows, mask, orow);
            }
        }
    }
    let (xl, xr) = (ctx.xl, ctx.xr);
    let n = xr - xl;
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
        if r.len() <= 2 {
            for ox in r {
                // SAFETY: forwarded row contract.
                orow[ox] = unsafe {
                    edge_one::<S>(
                        &ctx.taps, ctx.bias, ctx.clamp, ctx.w, ctx.pad, rows, mask, ox,
                    )
                };
            }
            continue;
        }
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

/// A stride-1 row with one column of padding on each side (`orow.len() == w > L::N`), all in
/// vector blocks: the first block's left taps and the last block's right taps shift the zero
/// padding in from a register instead of loading it.
///
/// # Safety
/// `rows[k]` addresses `orow.len()` readable elements for every row `k` present; the CPU
/// supports `L`.
#[inline(always)]
unsafe fn row_pad1<L: Lanes, const FULL: bool>(
    v: &Vecs<L>,
    clamp: bool,
    rows: &[*const f32; 3],
    mask: u32,
    orow: &mut [f32],
) {
    let w = orow.len();
    let op = orow.as_mut_ptr();
    // SAFETY: the left block reads columns `0..N + 1` and writes outputs `0..N`; interior blocks
    // at `1 <= ox0`, `ox0 + N <= w - 1` read `ox0 - 1..ox0 + N + 1` and write `ox0..ox0 + N`; the
    // right block reads `w - N - 1..w` and writes `w - N..w`. All inside the rows and `orow`
    // because `w > N`.
    unsafe {
        let r = combine!(L, 1, FULL, v, clamp, mask, |k| {
            let (b, c) = (L::load(rows[k]), L::load(rows[k].add(1)));
            (L::shift_in_left(b), b, c)
        });
        L::store(op, r);
        let mut ox0 = L::N;
        while ox0 + L::N < w {
            block::<L, 1, FULL>(v, clamp, rows, mask, ox0 - 1, op.add(ox0));
            ox0 += L::N;
        }
        let ox0 = w - L::N;
        let r = combine!(L, 1, FULL, v, clamp, mask, |k| {
            let (a, b) = (L::load(rows[k].add(ox0 - 1)), L::load(rows[k].add(ox0)));
            (a, b, L::shift_in_right(b))
        });
        L::store(op.add(ox0), r);
    }
}

/// A stride-2 row with one column of left padding (`w > 2 * L::N`): the first block takes its
/// left taps from the odd columns shifted by one output with the zero padding shifted in, the
/// interior runs in vector blocks, and outputs whose windows reach past the right end of the row
/// are computed tap by tap.
///
/// # Safety
/// As [`row`], with `ctx.pad == 1`, `ctx.w > 2 * L::N` and the CPU supporting `L`.
#[inline(always)]
unsafe fn row_s2_pad1<L: Lanes, const FULL: bool>(
    ctx: &RowCtx<'_, impl Lanes, impl Lanes>,
    v: &Vecs<L>,
    rows: &[*const f32; 3],
    mask: u32,
    orow: &mut [f32],
) {
    let (ow, xr) = (orow.len(), ctx.xr);
    let clamp = ctx.clamp.is_some();
    let op = orow.as_mut_ptr();
    if ow < L::N {
        // `xr <= ow`; nothing here is wide enough for a block.
        for (ox, o) in orow.iter_mut().enumerate() {
            // SAFETY: forwarded row contract.
            *o = unsafe { edge_one::<2>(&ctx.taps, ctx.bias, ctx.clamp, ctx.w, 1, rows, mask, ox) };
        }
        return;
    }
    // SAFETY: the first block reads columns `0..2N + 1` (inside the row as `w > 2N`) and writes
    // outputs `0..N` (`N <= ow`); interior blocks start at `ox0 >= 1` and end at
    // `ox0 + N <= xr <= ow`, so their windows lie inside the row (see `channels`).
    unsafe {
        let r = combine!(L, 2, FULL, v, clamp, mask, |k| {
            let (even, odd, _) = L::load_s2(rows[k]);
            let left = L::unscramble(L::shift_in_left(L::unscramble(odd)));
            (left, even, odd)
        });
        L::store(op, r);
        let mut ox0 = L::N;
        while ox0 + L::N <= xr {
            block::<L, 2, FULL>(v, clamp, rows, mask, 2 * ox0 - 1, op.add(ox0));
            ox0 += L::N;
        }
        if ox0 < xr {
            let ox0 = xr - L::N;
            block::<L, 2, FULL>(v, clamp, rows, mask, 2 * ox0 - 1, op.add(ox0));
        }
    }
    let from = xr.max(L::N);
    for (ox, o) in orow.iter_mut().enumerate().skip(from) {
        // SAFETY: forwarded row contract.
        *o = unsafe { edge_one::<2>(&ctx.taps, ctx.bias, ctx.clamp, ctx.w, 1, rows, mask, ox) };
    }
}

/// Output `ox` of a row computed one tap at a time, skipping columns outside the row (borders
/// of one or two outputs are cheaper this way than as a vector block).
///
/// # Safety
/// As [`row`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn edge_one<const S: usize>(
    taps: &[f32; 9],
    bias: f32,
    clamp: Option<(f32, f32)>,
    w: usize,
    pad: usize,
    rows: &[*const f32; 3],
    mask: u32,
    ox: usize,
) -> f32 {
    let base = (ox * S) as isize - pad as isize;
    let jlo = (-base).clamp(0, 3) as usize;
    let jhi = (w as isize - base).clamp(jlo as isize, 3) as usize;
    let mut acc = bias;
    for (k, &r) in rows.iter().enumerate() {
        if mask & (1 << k) != 0 {
            for j in jlo..jhi {
                // SAFETY: `0 <= base + j < w` and present rows have `w` readable elements.
                acc += taps[3 * k + j] * unsafe { *r.offset(base + j as isize) };
            }
        }
    }
    match clamp {
        Some((lo, hi)) => acc.max(lo).min(hi),
        None => acc,
    }
}

/// Most lanes of any [`Lanes`] implementation (sizes the stack windows of [`edge_block`]).
const MAX_N: usize = 8;

/// Outputs `ox0..ox0 + out.len()` (at most `L::N`) of a row whose windows may reach into the
/// padding: loads read columns outside the row as 0, the store writes only `out`.
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
    // SAFETY: CPU support for `L` is the caller's; present rows have `w` readable elements and
    // the edge loads read only inside them; the edge store writes `out[0..out.len()]`.
    unsafe {
        let e = L::edge::<S>(col, w, out.len());
        let r = combine!(L, S, false, v, clamp, mask, |k| L::load_edge::<S>(
            rows[k], &e
        ));
        L::store_edge(out.as_mut_ptr(), r, &e);
    }
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
    // SAFETY: the loads read `ix0..ix0 + N + 2` (stride 1) or `ix0..ix0 + 2N + 1` (stride 2)
    // of present rows, inside the readable range the caller guarantees; the store writes
    // `out[0..N]`; CPU support is the caller's.
    unsafe {
        let r = combine!(L, S, FULL, v, clamp, mask, |k| {
            let p = rows[k].add(ix0);
            if S == 1 {
                (L::load(p), L::load(p.add(1)), L::load(p.add(2)))
            } else {
                L::load_s2(p)
            }
        });
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

    /// Lane masks of one edge block: loads (stride 1: columns `col`, `col + 1`, `col + 2`;
    /// stride 2: `col`, `col + N`, `col + 1`, `col + N + 1`, each `N` wide) and the outputs stored.
    #[derive(Clone, Copy)]
    pub(in super::super) struct Masks<M> {
        col: isize,
        load: [M; 4],
        cnt: usize,
    }
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
        #[inline(always)]
        unsafe fn shift_in_left(v: __m256) -> __m256 {
            unsafe {
                let p = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6));
                _mm256_blend_ps::<0b0000_0001>(p, _mm256_setzero_ps())
            }
        }
        #[inline(always)]
        unsafe fn shift_in_right(v: __m256) -> __m256 {
            unsafe {
                let p = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
                _mm256_blend_ps::<0b1000_0000>(p, _mm256_setzero_ps())
            }
        }
        type Edge = Masks<__m256i>;
        #[inline(always)]
        unsafe fn edge<const S: usize>(col: isize, w: usize, cnt: usize) -> Masks<__m256i> {
            unsafe {
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let w = _mm256_set1_epi32(w as i32);
                // A macro, not a closure: a closure would not be compiled with the caller's
                // target features.
                macro_rules! inside {
                    ($c:expr) => {{
                        let idx = _mm256_add_epi32(_mm256_set1_epi32(($c) as i32), lanes);
                        _mm256_andnot_si256(
                            _mm256_cmpgt_epi32(_mm256_setzero_si256(), idx),
                            _mm256_cmpgt_epi32(w, idx),
                        )
                    }};
                }
                let offs = if S == 1 { [0, 1, 2, 0] } else { [0, 8, 1, 9] };
                Masks {
                    col,
                    load: [
                        inside!(col + offs[0]),
                        inside!(col + offs[1]),
                        inside!(col + offs[2]),
                        inside!(col + offs[3]),
                    ],
                    cnt,
                }
            }
        }
        #[inline(always)]
        unsafe fn load_edge<const S: usize>(
            row: *const f32,
            e: &Masks<__m256i>,
        ) -> (__m256, __m256, __m256) {
            unsafe {
                // Masked-off lanes are not accessed, so the address may lie outside the row.
                let p = row.wrapping_offset(e.col);
                let m = &e.load;
                if S == 1 {
                    (
                        _mm256_maskload_ps(p, m[0]),
                        _mm256_maskload_ps(p.wrapping_add(1), m[1]),
                        _mm256_maskload_ps(p.wrapping_add(2), m[2]),
                    )
                } else {
                    let (a0, b0) = (
                        _mm256_maskload_ps(p, m[0]),
                        _mm256_maskload_ps(p.wrapping_add(8), m[1]),
                    );
                    let (a1, b1) = (
                        _mm256_maskload_ps(p.wrapping_add(1), m[2]),
                        _mm256_maskload_ps(p.wrapping_add(9), m[3]),
                    );
                    (
                        _mm256_shuffle_ps::<0b10_00_10_00>(a0, b0),
                        _mm256_shuffle_ps::<0b11_01_11_01>(a0, b0),
                        _mm256_shuffle_ps::<0b11_01_11_01>(a1, b1),
                    )
                }
            }
        }
        #[inline(always)]
        unsafe fn store_edge(out: *mut f32, v: __m256, e: &Masks<__m256i>) {
            // A masked store is slow on some cores; the lanes go through the stack instead.
            let mut b = [0.0f32; 8];
            unsafe { _mm256_storeu_ps(b.as_mut_ptr(), v) };
            for (i, &x) in b.iter().enumerate().take(e.cnt) {
                unsafe { *out.add(i) = x };
            }
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
        unsafe fn shift_in_left(v: __m128) -> __m128 {
            unsafe { _mm_castsi128_ps(_mm_slli_si128::<4>(_mm_castps_si128(v))) }
        }
        #[inline(always)]
        unsafe fn shift_in_right(v: __m128) -> __m128 {
            unsafe { _mm_castsi128_ps(_mm_srli_si128::<4>(_mm_castps_si128(v))) }
        }
        type Edge = Masks<__m128i>;
        #[inline(always)]
        unsafe fn edge<const S: usize>(col: isize, w: usize, cnt: usize) -> Masks<__m128i> {
            unsafe {
                let lanes = _mm_setr_epi32(0, 1, 2, 3);
                let w = _mm_set1_epi32(w as i32);
                // A macro, not a closure: a closure would not be compiled with the caller's
                // target features.
                macro_rules! inside {
                    ($c:expr) => {{
                        let idx = _mm_add_epi32(_mm_set1_epi32(($c) as i32), lanes);
                        _mm_andnot_si128(
                            _mm_cmpgt_epi32(_mm_setzero_si128(), idx),
                            _mm_cmpgt_epi32(w, idx),
                        )
                    }};
                }
                let offs = if S == 1 { [0, 1, 2, 0] } else { [0, 4, 1, 5] };
                Masks {
                    col,
                    load: [
                        inside!(col + offs[0]),
                        inside!(col + offs[1]),
                        inside!(col + offs[2]),
                        inside!(col + offs[3]),
                    ],
                    cnt,
                }
            }
        }
        #[inline(always)]
        unsafe fn load_edge<const S: usize>(
            row: *const f32,
            e: &Masks<__m128i>,
        ) -> (__m128, __m128, __m128) {
            unsafe {
                // Masked-off lanes are not accessed, so the address may lie outside the row.
                let p = row.wrapping_offset(e.col);
                let m = &e.load;
                if S == 1 {
                    (
                        _mm_maskload_ps(p, m[0]),
                        _mm_maskload_ps(p.wrapping_add(1), m[1]),
                        _mm_maskload_ps(p.wrapping_add(2), m[2]),
                    )
                } else {
                    let (a0, b0) = (
                        _mm_maskload_ps(p, m[0]),
                        _mm_maskload_ps(p.wrapping_add(4), m[1]),
                    );
                    let (a1, b1) = (
                        _mm_maskload_ps(p.wrapping_add(1), m[2]),
                        _mm_maskload_ps(p.wrapping_add(5), m[3]),
                    );
                    (
                        _mm_shuffle_ps::<0b10_00_10_00>(a0, b0),
                        _mm_shuffle_ps::<0b11_01_11_01>(a0, b0),
                        _mm_shuffle_ps::<0b11_01_11_01>(a1, b1),
                    )
                }
            }
        }
        #[inline(always)]
        unsafe fn store_edge(out: *mut f32, v: __m128, e: &Masks<__m128i>) {
            // A masked store is slow on some cores; the lanes go through the stack instead.
            let mut b = [0.0f32; 4];
            unsafe { _mm_storeu_ps(b.as_mut_ptr(), v) };
            for (i, &x) in b.iter().enumerate().take(e.cnt) {
                unsafe { *out.add(i) = x };
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) use neon::{Neon4, Neon8};

#[cfg(target_arch = "aarch64")]
mod neon {
    use core::arch::aarch64::*;

    use super::{EdgeBuf, Lanes};

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
        #[inline(always)]
        unsafe fn shift_in_left(v: float32x4_t) -> float32x4_t {
            unsafe { vextq_f32::<3>(vdupq_n_f32(0.0), v) }
        }
        #[inline(always)]
        unsafe fn shift_in_right(v: float32x4_t) -> float32x4_t {
            unsafe { vextq_f32::<1>(v, vdupq_n_f32(0.0)) }
        }
        type Edge = EdgeBuf;
        #[inline(always)]
        unsafe fn edge<const S: usize>(col: isize, w: usize, cnt: usize) -> EdgeBuf {
            EdgeBuf::new(col, w, cnt)
        }
        #[inline(always)]
        unsafe fn load_edge<const S: usize>(
            row: *const f32,
            e: &EdgeBuf,
        ) -> (Self::V, Self::V, Self::V) {
            unsafe { e.load::<Self, S>(row) }
        }
        #[inline(always)]
        unsafe fn store_edge(out: *mut f32, v: Self::V, e: &EdgeBuf) {
            unsafe { e.store::<Self>(out, v) }
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
        #[inline(always)]
        unsafe fn shift_in_left(v: Self::V) -> Self::V {
            unsafe {
                (
                    vextq_f32::<3>(vdupq_n_f32(0.0), v.0),
                    vextq_f32::<3>(v.0, v.1),
                )
            }
        }
        #[inline(always)]
        unsafe fn shift_in_right(v: Self::V) -> Self::V {
            unsafe {
                (
                    vextq_f32::<1>(v.0, v.1),
                    vextq_f32::<1>(v.1, vdupq_n_f32(0.0)),
                )
            }
        }
        type Edge = EdgeBuf;
        #[inline(always)]
        unsafe fn edge<const S: usize>(col: isize, w: usize, cnt: usize) -> EdgeBuf {
            EdgeBuf::new(col, w, cnt)
        }
        #[inline(always)]
        unsafe fn load_edge<const S: usize>(
            row: *const f32,
            e: &EdgeBuf,
        ) -> (Self::V, Self::V, Self::V) {
            unsafe { e.load::<Self, S>(row) }
        }
        #[inline(always)]
        unsafe fn store_edge(out: *mut f32, v: Self::V, e: &EdgeBuf) {
            unsafe { e.store::<Self>(out, v) }
        }
    }
}
