use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use super::{store4, BLOCK};
use crate::model::{BlockCsrView, Elems, Indices};

macro_rules! bspmv_avx2 {
    ($name:ident, $vt:ty, $vvar:ident, $ivar:ident, $features:literal, $load4:expr, $load8:expr) => {
        /// AVX2 4×1-blocked SpMV: two consecutive blocks per 8-lane FMA (`x[col]` of each
        /// broadcast into one half), four independent accumulators so the FMA latency is hidden.
        /// See [`super::BspmvFn`] for the contract.
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
            let (load4, load8) = ($load4, $load8);
            let r0 = BLOCK * brows.start;
            for b in brows {
                let k = w.block_range(b);
                let mut a = [_mm256_setzero_ps(); 4];
                // SAFETY: blocks `k` lie inside `c` and their values inside `v` (invariants:
                // `values.len() == 4 * blocks`); every index is `< w.cols() <= x.len()`. Pairs
                // read blocks `t` and `t + 1 < k.end`.
                let s = unsafe {
                    let (vp, cp, xp) = (v.as_ptr(), c.as_ptr(), x.as_ptr());
                    let pair = |t: usize| {
                        let lo = _mm_broadcast_ss(&*xp.add(*cp.add(t) as usize));
                        let hi = _mm_broadcast_ss(&*xp.add(*cp.add(t + 1) as usize));
                        let xx = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
                        (load8(vp.add(BLOCK * t)), xx)
                    };
                    let mut t = k.start;
                    while t + 8 <= k.end {
                        for (j, acc) in a.iter_mut().enumerate() {
                            let (w8, x8) = pair(t + 2 * j);
                            *acc = _mm256_fmadd_ps(w8, x8, *acc);
                        }
                        t += 8;
                    }
                    while t + 2 <= k.end {
                        let (w8, x8) = pair(t);
                        a[0] = _mm256_fmadd_ps(w8, x8, a[0]);
                        t += 2;
                    }
                    let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
                    let mut s4 =
                        _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
                    if t < k.end {
                        let x0 = _mm_broadcast_ss(&*xp.add(*cp.add(t) as usize));
                        let w4 = load4(vp.add(BLOCK * t));
                        s4 = _mm_fmadd_ps(w4, x0, s4);
                    }
                    let mut s = [0f32; BLOCK];
                    _mm_storeu_ps(s.as_mut_ptr(), s4);
                    s
                };
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
    // SAFETY (both loads): callers pass a pointer to 4 (8) readable values.
    |p: *const f32| unsafe { _mm_loadu_ps(p) },
    |p: *const f32| unsafe { _mm256_loadu_ps(p) }
);
bspmv_avx2!(
    bspmv_f32_u32_avx2,
    f32,
    F32,
    U32,
    "avx2,fma",
    // SAFETY: as above.
    |p: *const f32| unsafe { _mm_loadu_ps(p) },
    |p: *const f32| unsafe { _mm256_loadu_ps(p) }
);
bspmv_avx2!(
    bspmv_f16_u16_avx2,
    f16,
    F16,
    U16,
    "avx2,fma,f16c",
    // SAFETY: as above (8 and 16 bytes).
    |p: *const f16| unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) },
    |p: *const f16| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
);
bspmv_avx2!(
    bspmv_f16_u32_avx2,
    f16,
    F16,
    U32,
    "avx2,fma,f16c",
    // SAFETY: as above.
    |p: *const f16| unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) },
    |p: *const f16| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
);
