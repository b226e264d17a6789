use core::arch::x86_64::*;

use half::f16;

use super::Elems;

macro_rules! gemv_avx2 {
    ($name:ident, $rows:ident, $t:ty, $variant:ident, $features:literal, $load:expr, $cvt:expr) => {
        /// AVX2 GEMV over four rows at a time, 16 columns per step (two 8-lane accumulators per
        /// row, eight independent chains). See [`super::GemvFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::GemvFn`]; the CPU supports the enabled target features.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(
            a: Elems<'_>,
            lda: usize,
            m: usize,
            k: usize,
            x: &[f32],
            bias: Option<&[f32]>,
            y: &mut [f32],
        ) {
            let Elems::$variant(w) = a else {
                unreachable!("gemv: dtype checked by GemvKernel::run")
            };
            let (w, x) = (w.as_ptr(), x.as_ptr());
            let mut i = 0;
            while i + 4 <= m {
                // SAFETY: rows `i..i + 4` lie inside the weights (caller contract).
                let s = unsafe { $rows::<4>(w.add(i * lda), lda, k, x) };
                for (r, v) in s.iter().enumerate() {
                    y[i + r] = v + bias.map_or(0.0, |b| b[i + r]);
                }
                i += 4;
            }
            while i < m {
                // SAFETY: row `i` lies inside the weights (caller contract).
                let [s] = unsafe { $rows::<1>(w.add(i * lda), lda, k, x) };
                y[i] = s + bias.map_or(0.0, |b| b[i]);
                i += 1;
            }
        }

        /// Dot products of `R` rows (stride `lda`, `k` elements each) with `x`.
        ///
        /// # Safety
        /// `w` addresses `R` rows of `k` elements with stride `lda`, `x` addresses `k` f32; the
        /// CPU supports the enabled target features.
        #[target_feature(enable = $features)]
        unsafe fn $rows<const R: usize>(
            w: *const $t,
            lda: usize,
            k: usize,
            x: *const f32,
        ) -> [f32; R] {
            let load = $load;
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut p = 0;
            // SAFETY: every access below is at `p + 16 <= k` (or `p + 8 <= k`, or `q < k`) of
            // row `r < R` or of `x`, inside the caller's bounds.
            unsafe {
                while p + 16 <= k {
                    let (x0, x1) = (_mm256_loadu_ps(x.add(p)), _mm256_loadu_ps(x.add(p + 8)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let wr = w.add(r * lda + p);
                        acc[0] = _mm256_fmadd_ps(load(wr), x0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(load(wr.add(8)), x1, acc[1]);
                    }
                    p += 16;
                }
                if p + 8 <= k {
                    let x0 = _mm256_loadu_ps(x.add(p));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        acc[0] = _mm256_fmadd_ps(load(w.add(r * lda + p)), x0, acc[0]);
                    }
                    p += 8;
                }
                let cvt = $cvt;
                core::array::from_fn(|r| {
                    let mut s = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
                    for q in p..k {
                        s += cvt(*w.add(r * lda + q)) * *x.add(q);
                    }
                    s
                })
            }
        }
    };
}

gemv_avx2!(
    gemv_f32_4x16_avx2fma,
    rows_f32,
    f32,
    F32,
    "avx2,fma",
    // SAFETY: callers pass pointers to 8 readable f32.
    |p: *const f32| unsafe { _mm256_loadu_ps(p) },
    |v: f32| v
);

gemv_avx2!(
    gemv_f16_4x16_avx2f16c,
    rows_f16,
    f16,
    F16,
    "avx2,fma,f16c",
    // SAFETY: callers pass pointers to 8 readable f16 (16 bytes).
    |p: *const f16| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) },
    f16::to_f32
);

/// Sum of the eight lanes.
#[target_feature(enable = "avx")]
#[inline]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// AVX-512F GEMV over four rows at a time, 32 columns per step (two 16-lane accumulators per
/// row, eight independent chains). See [`super::GemvFn`] for the contract.
///
/// # Safety
/// As [`super::GemvFn`]; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn gemv_f32_4x32_avx512(
    a: Elems<'_>,
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let Elems::F32(w) = a else {
        unreachable!("gemv: dtype checked by GemvKernel::run")
    };
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let mut i = 0;
    while i + 4 <= m {
        // SAFETY: rows `i..i + 4` lie inside the weights (caller contract).
        let s = unsafe { rows_f32_avx512::<4>(w.add(i * lda), lda, k, x) };
        for (r, v) in s.iter().enumerate() {
            y[i + r] = v + bias.map_or(0.0, |b| b[i + r]);
        }
        i += 4;
    }
    while i < m {
        // SAFETY: row `i` lies inside the weights (caller contract).
        let [s] = unsafe { rows_f32_avx512::<1>(w.add(i * lda), lda, k, x) };
        y[i] = s + bias.map_or(0.0, |b| b[i]);
        i += 1;
    }
}

/// Dot products of `R` rows (stride `lda`, `k` f32 each) with `x`; the last `k % 16` columns
/// through a masked load.
///
/// # Safety
/// `w` addresses `R` rows of `k` f32 with stride `lda`, `x` addresses `k` f32; the CPU supports
/// AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_f32_avx512<const R: usize>(
    w: *const f32,
    lda: usize,
    k: usize,
    x: *const f32,
) -> [f32; R] {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let mut p = 0;
    // SAFETY: every access below is at `p + 32 <= k` or `p + 16 <= k` of row `r < R` or of `x`,
    // or masked to the lanes below `k`, inside the caller's bounds.
    unsafe {
        while p + 32 <= k {
            let (x0, x1) = (_mm512_loadu_ps(x.add(p)), _mm512_loadu_ps(x.add(p + 16)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wr = w.add(r * lda + p);
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wr), x0, acc[0]);
                acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(wr.add(16)), x1, acc[1]);
            }
            p += 32;
        }
        while p < k {
            let mask: __mmask16 = if p + 16 <= k {
                0xffff
            } else {
                (1u16 << (k - p)) - 1
            };
            let x0 = _mm512_maskz_loadu_ps(mask, x.add(p));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wr = _mm512_maskz_loadu_ps(mask, w.add(r * lda + p));
                acc[0] = _mm512_fmadd_ps(wr, x0, acc[0]);
            }
            p += 16;
        }
    }
    core::array::from_fn(|r| _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1])))
}
