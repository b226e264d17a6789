use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use crate::model::{CsrView, Elems, Indices};

macro_rules! spmv_avx2 {
    ($name:ident, $row:ident, $vt:ty, $vvar:ident, $it:ty, $ivar:ident, $features:literal,
     $load8:expr, $load4:expr, $cvt:expr) => {
        /// AVX2 SpMV: per row, 16 non-zeros per step in two 8-lane FMA chains (the `x` values
        /// inserted lane by lane), then 4 in one 4-lane FMA, the rest scalar. See
        /// [`super::SpmvFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::SpmvFn`]; the CPU supports the enabled target features.
        #[target_feature(enable = $features)]
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
        /// `v` and `c` address `n` elements; every `c[j]` indexes `x`; the CPU supports the
        /// enabled target features.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $row(v: *const $vt, c: *const $it, n: usize, x: *const f32) -> f32 {
            let load8 = $load8;
            let load4 = $load4;
            let cvt = $cvt;
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut j = 0;
            // SAFETY: every access is at `j + 16 <= n`, `j + 8 <= n`, `j + 4 <= n` or `j < n` of
            // `v`/`c`, and `x` is read only at stored column indices (function contract).
            unsafe {
                let g = |t: usize| *x.add(*c.add(t) as usize);
                // Vector loads of `x[c[j]]` do not exist without gathers, which are microcoded
                // and slower than lane inserts on AMD Zen; the eight inserts per step run on the
                // shuffle ports in parallel with the loads.
                let xs = |t: usize| {
                    _mm256_set_ps(
                        g(t + 7),
                        g(t + 6),
                        g(t + 5),
                        g(t + 4),
                        g(t + 3),
                        g(t + 2),
                        g(t + 1),
                        g(t),
                    )
                };
                while j + 16 <= n {
                    a0 = _mm256_fmadd_ps(load8(v.add(j)), xs(j), a0);
                    a1 = _mm256_fmadd_ps(load8(v.add(j + 8)), xs(j + 8), a1);
                    j += 16;
                }
                if j + 8 <= n {
                    a0 = _mm256_fmadd_ps(load8(v.add(j)), xs(j), a0);
                    j += 8;
                }
                let mut s4 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps::<1>(a0));
                s4 = _mm_add_ps(
                    s4,
                    _mm_add_ps(_mm256_castps256_ps128(a1), _mm256_extractf128_ps::<1>(a1)),
                );
                if j + 4 <= n {
                    let x4 = _mm_set_ps(g(j + 3), g(j + 2), g(j + 1), g(j));
                    s4 = _mm_fmadd_ps(load4(v.add(j)), x4, s4);
                    j += 4;
                }
                let mut s = hsum4(s4);
                while j < n {
                    s += cvt(*v.add(j)) * g(j);
                    j += 1;
                }
                s
            }
        }
    };
}

spmv_avx2!(
    spmv_f32_u16_avx2,
    row_f32_u16,
    f32,
    F32,
    u16,
    U16,
    "avx2,fma",
    // SAFETY: callers pass pointers to 8 (or 4) readable elements.
    |p: *const f32| unsafe { _mm256_loadu_ps(p) },
    |p: *const f32| unsafe { _mm_loadu_ps(p) },
    |v: f32| v
);

spmv_avx2!(
    spmv_f32_u32_avx2,
    row_f32_u32,
    f32,
    F32,
    u32,
    U32,
    "avx2,fma",
    // SAFETY: as above.
    |p: *const f32| unsafe { _mm256_loadu_ps(p) },
    |p: *const f32| unsafe { _mm_loadu_ps(p) },
    |v: f32| v
);

spmv_avx2!(
    spmv_f16_u16_avx2,
    row_f16_u16,
    f16,
    F16,
    u16,
    U16,
    "avx2,fma,f16c",
    // SAFETY: callers pass pointers to 8 (or 4) readable elements.
    |p: *const f16| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) },
    |p: *const f16| unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) },
    f16::to_f32
);

spmv_avx2!(
    spmv_f16_u32_avx2,
    row_f16_u32,
    f16,
    F16,
    u32,
    U32,
    "avx2,fma,f16c",
    // SAFETY: as above.
    |p: *const f16| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) },
    |p: *const f16| unsafe { _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)) },
    f16::to_f32
);

/// Sum of the four lanes.
#[target_feature(enable = "sse3")]
#[inline]
fn hsum4(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}
