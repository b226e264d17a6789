use super::{tile, Lanes, OcTile};

/// One lane of plain f32 arithmetic.
pub(super) struct Scalar;

// SAFETY (every method): each pointer access covers exactly the documented element.
impl Lanes for Scalar {
    const N: usize = 1;
    type V = f32;
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> f32 {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn fma(acc: f32, a: f32, b: f32) -> f32 {
        acc + a * b
    }
    #[inline(always)]
    unsafe fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
        v.max(lo).min(hi)
    }
}

/// `P` pixels × `V` channels in scalar code. See [`super::OcFn`].
///
/// # Safety
/// As [`super::OcFn`] with `NR = V`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn oc_scalar<const P: usize, const V: usize>(
    k: usize,
    w: *const f32,
    x: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    t: &OcTile,
) {
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { tile::<Scalar, P, V>(k, w, x, offs, c, ldc, rows, t) }
}
