use core::arch::aarch64::*;

use super::{tile, Lanes, OcTile};

/// 4 lanes of NEON.
pub(super) struct Neon;

// SAFETY (every method): NEON is baseline on aarch64; each pointer access covers exactly the
// documented elements.
impl Lanes for Neon {
    const N: usize = 4;
    type V = float32x4_t;
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> float32x4_t {
        unsafe { vld1q_dup_f32(p) }
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
}

/// `P` pixels × `4·V` channels with NEON. See [`super::OcFn`].
///
/// # Safety
/// As [`super::OcFn`] with `NR = 4·V`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn oc_neon<const P: usize, const V: usize>(
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
    unsafe { tile::<Neon, P, V>(k, w, x, offs, c, ldc, rows, t) }
}
