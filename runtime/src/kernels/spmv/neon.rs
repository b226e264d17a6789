use core::arch::aarch64::*;
use core::ops::Range;

use half::f16;

use super::super::gemv::neon::widen;
use crate::model::{CsrView, Elems, Indices};

macro_rules! spmv_neon {
    ($name:ident, $row:ident, $vt:ty, $vvar:ident, $it:ty, $ivar:ident, $load_vals:expr, $cvt:expr) => {
        /// NEON SpMV: per row, 8 non-zeros per step into two 4-lane accumulators (the `x` values
        /// gathered by lane loads), the rest scalar. See [`super::SpmvFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::SpmvFn`].
        #[target_feature(enable = "neon")]
        pub(crate) unsafe fn $name(
            w: &CsrView<'_>,
            rows: Range<usize>,
            x: &[f32],
            bias: Option<&[f32]>,
            y: &mut [f32],
        ) {
            let (Elems::$vvar(v), Indices::$ivar(c)) = (w.values(), w.col_idx()) else {
                unreachable!("spmv: storage checked by SpmvKernel::run")
            };
            let r0 = rows.start;
            for r in rows {
                let k = w.row_range(r);
                // SAFETY: `k` lies inside `v` and `c` (CSR invariant); every index in it is
                // `< w.cols() <= x.len()`.
                let s = unsafe {
                    $row(
                        v.as_ptr().add(k.start),
                        c.as_ptr().add(k.start),
                        k.len(),
                        x.as_ptr(),
                    )
                };
                y[r - r0] = s + bias.map_or(0.0, |b| b[r]);
            }
        }

        /// `sum_j v[j] * x[c[j]]` for `j < n`.
        ///
        /// # Safety
        /// `v` and `c` address `n` elements; every `c[j]` indexes `x`.
        #[target_feature(enable = "neon")]
        #[inline]
        unsafe fn $row(v: *const $vt, c: *const $it, n: usize, x: *const f32) -> f32 {
            let load_vals = $load_vals;
            let cvt = $cvt;
            let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut j = 0;
            // SAFETY: every access is at `j + 8 <= n` (or `j < n`) of `v`/`c`, and `x` is read
            // only at stored column indices (function contract).
            unsafe {
                while j + 8 <= n {
                    let g = |t: usize| x.add(*c.add(j + t) as usize);
                    let mut x0 = vld1q_dup_f32(g(0));
                    x0 = vld1q_lane_f32::<1>(g(1), x0);
                    x0 = vld1q_lane_f32::<2>(g(2), x0);
                    x0 = vld1q_lane_f32::<3>(g(3), x0);
                    let mut x1 = vld1q_dup_f32(g(4));
                    x1 = vld1q_lane_f32::<1>(g(5), x1);
                    x1 = vld1q_lane_f32::<2>(g(6), x1);
                    x1 = vld1q_lane_f32::<3>(g(7), x1);
                    let (w0, w1) = load_vals(v.add(j));
                    a0 = vfmaq_f32(a0, w0, x0);
                    a1 = vfmaq_f32(a1, w1, x1);
                    j += 8;
                }
                let mut s = vaddvq_f32(vaddq_f32(a0, a1));
                while j < n {
                    s += cvt(*v.add(j)) * *x.add(*c.add(j) as usize);
                    j += 1;
                }
                s
            }
        }
    };
}

spmv_neon!(
    spmv_f32_u16_neon,
    row_f32_u16,
    f32,
    F32,
    u16,
    U16,
    // SAFETY: callers pass pointers to 8 readable elements.
    |p: *const f32| unsafe { (vld1q_f32(p), vld1q_f32(p.add(4))) },
    |v: f32| v
);

spmv_neon!(
    spmv_f32_u32_neon,
    row_f32_u32,
    f32,
    F32,
    u32,
    U32,
    // SAFETY: as above.
    |p: *const f32| unsafe { (vld1q_f32(p), vld1q_f32(p.add(4))) },
    |v: f32| v
);

spmv_neon!(
    spmv_f16_u16_neon,
    row_f16_u16,
    f16,
    F16,
    u16,
    U16,
    // SAFETY: as above.
    |p: *const f16| unsafe { widen(vld1q_u16(p as *const u16)) },
    f16::to_f32
);

spmv_neon!(
    spmv_f16_u32_neon,
    row_f16_u32,
    f16,
    F16,
    u32,
    U32,
    // SAFETY: as above.
    |p: *const f16| unsafe { widen(vld1q_u16(p as *const u16)) },
    f16::to_f32
);
