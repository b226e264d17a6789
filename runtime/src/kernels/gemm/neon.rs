use core::arch::aarch64::*;

use super::{BRows, Tile};

/// NEON 8×8 micro-kernel: 16 accumulators of 4 lanes fed by `vfmaq_laneq_f32` (one `A` lane per
/// output row), two `A` and two `B` loads per step of `k`. See [`super::MicroKernel`].
///
/// # Safety
/// As [`super::MicroKernel`] with `MR = NR = 8`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_f32_8x8_neon(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
) {
    debug_assert!(b_rs == 8, "packed panels only");
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { neon_8x8::<false>(kc, a, a_rs, a_cs, b, core::ptr::null(), c, ldc, t) }
}

/// [`gemm_f32_8x8_neon`] reading row `p` of `B` at `b + b_offs[p]` (an implicit-GEMM patch
/// matrix in its padded image) instead of a packed panel. See [`super::RowsKernel`].
///
/// # Safety
/// As [`super::RowsKernel`] with `MR = NR = 8`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_f32_8x8_neon_rows(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
) {
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { neon_8x8::<true>(kc, a, a_rs, a_cs, b, b_offs, c, ldc, t) }
}

/// Body of both: `A` is a packed panel; with `ROWS` row `p` of `B` starts at `b + b_offs[p]`,
/// otherwise at `b + 8 * p`.
///
/// # Safety
/// As [`gemm_f32_8x8_neon`] / [`gemm_f32_8x8_neon_rows`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
#[inline]
unsafe fn neon_8x8<const ROWS: bool>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
) {
    const MR: usize = 8;
    const NR: usize = 8;
    debug_assert!(a_rs == 1 && a_cs == MR, "packed panels only");
    let z = vdupq_n_f32(0.0);
    let mut acc = [[z; 2]; MR];
    let (mut a, mut rows) = (a, BRows::<ROWS>::new(b, NR, b_offs));
    macro_rules! row {
        ($i:expr, $av:expr, $lane:literal, $b0:expr, $b1:expr) => {
            acc[$i][0] = vfmaq_laneq_f32::<$lane>(acc[$i][0], $b0, $av);
            acc[$i][1] = vfmaq_laneq_f32::<$lane>(acc[$i][1], $b1, $av);
        };
    }
    for _ in 0..kc {
        // SAFETY: each step reads `MR` values of `a` and `NR` of row `p` of `B` (and `b_offs[p]`
        // with `ROWS`); `kc` steps stay inside what the caller provides.
        unsafe {
            let b = rows.next();
            let (b0, b1) = (vld1q_f32(b), vld1q_f32(b.add(4)));
            let (a0, a1) = (vld1q_f32(a), vld1q_f32(a.add(4)));
            row!(0, a0, 0, b0, b1);
            row!(1, a0, 1, b0, b1);
            row!(2, a0, 2, b0, b1);
            row!(3, a0, 3, b0, b1);
            row!(4, a1, 0, b0, b1);
            row!(5, a1, 1, b0, b1);
            row!(6, a1, 2, b0, b1);
            row!(7, a1, 3, b0, b1);
            a = a.add(MR);
        }
    }
    let (lo, hi) = (vdupq_n_f32(t.lo), vdupq_n_f32(t.hi));
    // SAFETY: rows `0..MR` of the tile, 8 values each, are writable; the bias pointers address
    // `MR` / `NR` values.
    unsafe {
        let (bc0, bc1) = (vld1q_f32(t.bias_c), vld1q_f32(t.bias_c.add(4)));
        for (i, acc) in acc.iter().enumerate() {
            let cr = c.add(i * ldc);
            let (mut x0, mut x1) = (acc[0], acc[1]);
            if t.accumulate {
                x0 = vaddq_f32(x0, vld1q_f32(cr));
                x1 = vaddq_f32(x1, vld1q_f32(cr.add(4)));
            } else {
                let br = vdupq_n_f32(*t.bias_r.add(i));
                x0 = vaddq_f32(x0, vaddq_f32(br, bc0));
                x1 = vaddq_f32(x1, vaddq_f32(br, bc1));
            }
            if t.clamp {
                x0 = vminq_f32(vmaxq_f32(x0, lo), hi);
                x1 = vminq_f32(vmaxq_f32(x1, lo), hi);
            }
            vst1q_f32(cr, x0);
            vst1q_f32(cr.add(4), x1);
        }
    }
}
