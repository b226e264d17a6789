use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use super::{store4, BLOCK};
use crate::model::{BlockCsrView, Elems, Indices};

macro_rules! bspmv_avx2 {
    ($name:ident, $vt:ty, $vvar:ident, $ivar:ident, $features:literal, $load4:expr) => {
        /// AVX2 4×1-blocked SpMV: per block one broadcast of `x[col]` and one 4-lane FMA, two
        /// alternating accumulators. See [`super::BspmvFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::BspmvFn`]; the CPU supports the enabled target features.
        #[target_feature(enable = $features)]
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
                let (mut a0, mut a1) = (_mm_setzero_ps(), _mm_setzero_ps());
                // SAFETY: blocks `k` lie inside `c` and their values inside `v` (invariants:
                // `values.len() == 4 * blocks`); every index is `< w.cols() <= x.len()`.
                unsafe {
                    let (vp, cp, xp) = (v.as_ptr(), c.as_ptr(), x.as_ptr());
                    let mut t = k.start;
                    while t + 2 <= k.end {
                        let x0 = _mm_broadcast_ss(&*xp.add(*cp.add(t) as usize));
                        let x1 = _mm_broadcast_ss(&*xp.add(*cp.add(t + 1) as usize));
                        a0 = _mm_fmadd_ps(load4(vp.add(BLOCK * t)), x0, a0);
                        a1 = _mm_fmadd_ps(load4(vp.add(BLOCK * (t + 1))), x1, a1);
                        t += 2;
                    }
                    if t < k.end {
                        let x0 = _mm_broadcast_ss(&*xp.add(*cp.add(t) as usize));
                        a0 = _mm_fmadd_ps(load4(vp.add(BLOCK * t)), x0, a0);
                    }
                }
                let mut s = [0f32; BLOCK];
                // SAFETY: `s` holds four floats.
                unsafe { _mm_storeu_ps(s.as_mut_ptr(), _mm_add_ps(a0, a1)) };
                store4(s, b, r0, w.rows(), bias, y);
            }
        }
    };
}

bspmv_avx2!(
    bspmv_f32_u16_avx2,
    f32,
    F32,
    U16,
    "avx2,fma",
    // SAFETY: callers pass a pointer to 4 readable values.
    |p: *const f32| unsafe { _mm_loadu_ps(p) }
);
bspmv_avx2!(
    bspmv_f32_u32_avx2,
    f32,
    F32,
    U32,
    "avx2,fma",
    // SAFETY: as above.
    |p: *const f32| unsafe { _mm_loadu_ps(p) }
);
bspmv_avx2!(
    bspmv_f16_u16_avx2,
    f16,
    F16,
    U16,
    "avx2,fma,f16c",
    // SAFETY: as above (8 bytes).
    |p: *const f16| unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) }
);
bspmv_avx2!(
    bspmv_f16_u32_avx2,
    f16,
    F16,
    U32,
    "avx2,fma,f16c",
    // SAFETY: as above.
    |p: *const f16| unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) }
);
