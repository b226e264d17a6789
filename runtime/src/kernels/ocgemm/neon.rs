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
    /// Each 4 channels × 4 pixels block is transposed in registers; a last block of fewer
    /// pixels is stored by halves and lanes.
    #[inline(always)]
    unsafe fn store_tile<const P: usize, const V: usize>(
        acc: &[[float32x4_t; V]; P],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        #[allow(clippy::needless_range_loop)]
        for v in 0..V {
            let n = rows.saturating_sub(4 * v).min(4);
            for j0 in (0..P).step_by(4) {
                let cnt = (P - j0).min(4);
                // SAFETY: register operations; channel `4·v + i < rows` has outputs
                // `j0..j0 + cnt` (`< P`) writable at `c + (4·v + i)·ldc`.
                unsafe {
                    let r: [float32x4_t; 4] = core::array::from_fn(|j| {
                        if j0 + j < P {
                            acc[j0 + j][v]
                        } else {
                            vdupq_n_f32(0.0)
                        }
                    });
                    let t = transpose4(r);
                    for (i, &ti) in t.iter().enumerate().take(n) {
                        let out = c.add((4 * v + i) * ldc + j0);
                        match cnt {
                            4 => vst1q_f32(out, ti),
                            3 => {
                                vst1_f32(out, vget_low_f32(ti));
                                vst1q_lane_f32::<2>(out.add(2), ti);
                            }
                            2 => vst1_f32(out, vget_low_f32(ti)),
                            _ => vst1q_lane_f32::<0>(out, ti),
                        }
                    }
                }
            }
        }
    }
}

/// The transpose of the 4×4 matrix whose rows are `r`: lane `j` of result `i` is lane `i` of
/// `r[j]`.
#[inline(always)]
unsafe fn transpose4(r: [float32x4_t; 4]) -> [float32x4_t; 4] {
    // SAFETY: register operations of NEON.
    unsafe {
        let t0 = vtrn1q_f32(r[0], r[1]);
        let t1 = vtrn2q_f32(r[0], r[1]);
        let t2 = vtrn1q_f32(r[2], r[3]);
        let t3 = vtrn2q_f32(r[2], r[3]);
        let (d0, d1, d2, d3) = (
            vreinterpretq_f64_f32(t0),
            vreinterpretq_f64_f32(t1),
            vreinterpretq_f64_f32(t2),
            vreinterpretq_f64_f32(t3),
        );
        [
            vreinterpretq_f32_f64(vtrn1q_f64(d0, d2)),
            vreinterpretq_f32_f64(vtrn1q_f64(d1, d3)),
            vreinterpretq_f32_f64(vtrn2q_f64(d0, d2)),
            vreinterpretq_f32_f64(vtrn2q_f64(d1, d3)),
        ]
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
