use core::arch::aarch64::*;
use core::ops::Range;

use half::f16;

use super::super::gemv::neon::widen;
use super::{store4, BLOCK};
use crate::model::{BlockCsrView, Elems, Indices};

macro_rules! bspmv_neon {
    ($name:ident, $vt:ty, $vvar:ident, $ivar:ident, $load4:expr) => {
        /// NEON 4×1-blocked SpMV: per block one scalar load of `x[col]` and one 4-lane FMA by
        /// it, four independent accumulators. See [`super::BspmvFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::BspmvFn`].
        #[target_feature(enable = "neon")]
        pub(crate) unsafe fn $name(
            w: &BlockCsrView<'_>,
            brows: Range<usize>,
            x: &[f32],
            bias: Option<&[f32]>,
            y: &mut [f32],
        ) {
            let (Elems::$vvar(v), Indices::$ivar(c)) = (w.values(), w.col_idx()) else {
                unreachable!("bspmv: storage checked by BspmvKernel::run")
            };
            let load4 = $load4;
            let r0 = BLOCK * brows.start;
            for b in brows {
                let k = w.block_range(b);
                let mut a = [vdupq_n_f32(0.0); 4];
                // SAFETY: blocks `k` lie inside `c` and their values inside `v`; every index is
                // `< w.cols() <= x.len()`.
                unsafe {
                    let (vp, cp, xp) = (v.as_ptr(), c.as_ptr(), x.as_ptr());
                    let mut t = k.start;
                    while t + 4 <= k.end {
                        for (j, acc) in a.iter_mut().enumerate() {
                            let x0 = *xp.add(*cp.add(t + j) as usize);
                            *acc = vfmaq_n_f32(*acc, load4(vp.add(BLOCK * (t + j))), x0);
                        }
                        t += 4;
                    }
                    while t < k.end {
                        let x0 = *xp.add(*cp.add(t) as usize);
                        a[0] = vfmaq_n_f32(a[0], load4(vp.add(BLOCK * t)), x0);
                        t += 1;
                    }
                }
                let mut s = [0f32; BLOCK];
                let sum = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
                // SAFETY: `s` holds four floats.
                unsafe { vst1q_f32(s.as_mut_ptr(), sum) };
                store4(s, b, r0, w.rows(), bias, y);
            }
        }
    };
}

bspmv_neon!(
    bspmv_f32_u16_neon,
    f32,
    F32,
    U16,
    // SAFETY: callers pass a pointer to 4 readable values.
    |p: *const f32| unsafe { vld1q_f32(p) }
);
bspmv_neon!(
    bspmv_f32_u32_neon,
    f32,
    F32,
    U32,
    // SAFETY: as above.
    |p: *const f32| unsafe { vld1q_f32(p) }
);
bspmv_neon!(
    bspmv_f16_u16_neon,
    f16,
    F16,
    U16,
    // SAFETY: as above (8 bytes); `widen` of 8 halves, the low four used.
    |p: *const f16| unsafe { widen(vcombine_u16(vld1_u16(p as *const u16), vdup_n_u16(0))).0 }
);
bspmv_neon!(
    bspmv_f16_u32_neon,
    f16,
    F16,
    U32,
    // SAFETY: as above.
    |p: *const f16| unsafe { widen(vcombine_u16(vld1_u16(p as *const u16), vdup_n_u16(0))).0 }
);
