use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use crate::model::{CsrView, Elems, Indices};

macro_rules! spmm_avx2 {
    ($name:ident, $tile:ident, $vt:ty, $vvar:ident, $it:ty, $ivar:ident, $features:literal,
     $bcast:expr) => {
        /// AVX2 SpMM: passes of up to 64 pixels in up to eight 8-lane accumulators (eight
        /// independent FMA chains hide the FMA latency), the last vector of a pass masked.
        /// See [`super::SpmmFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::SpmmFn`]; the CPU supports the enabled target features.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(
            w: &CsrView<'_>,
            rows: Range<usize>,
            b: &[f32],
            b_rs: usize,
            p: usize,
            bias: Option<&[f32]>,
            y: &mut [f32],
        ) {
            let (Elems::$vvar(v), Indices::$ivar(c)) = (w.values(), w.col_idx()) else {
                unreachable!("spmm: storage checked by SpmmKernel::run")
            };
            let r0 = rows.start;
            let mut j = 0;
            while j < p {
                // Up to 64 pixels per pass; the last vector of a pass may be partial (masked), so
                // a 7×7 map (49 pixels) is one pass of seven vectors, not four passes.
                let width = (p - j).min(64);
                let vecs = width.div_ceil(8);
                // SAFETY: `1 <= width - 8 * (vecs - 1) <= 8`, so the 8 lanes lie in TAIL_MASK.
                let mask = unsafe {
                    _mm256_loadu_si256(
                        TAIL_MASK.as_ptr().add(8 - (width - 8 * (vecs - 1))) as *const __m256i
                    )
                };
                for r in rows.clone() {
                    let k = w.row_range(r);
                    let b0 = bias.map_or(0.0, |bb| bb[r]);
                    // SAFETY: row `r`'s non-zeros lie inside `v`/`c`, each index is
                    // `< w.cols()`, so `b` holds `p` values from `index * b_rs`; pixels
                    // `j..j + width` are inside every row of `b` and of `y`, and the masked
                    // last vector touches only those.
                    unsafe {
                        let (vp, cp) = (v.as_ptr().add(k.start), c.as_ptr().add(k.start));
                        let bj = b.as_ptr().add(j);
                        let yp = y.as_mut_ptr().add((r - r0) * p + j);
                        let n = k.len();
                        match vecs {
                            1 => $tile::<1>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            2 => $tile::<2>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            3 => $tile::<3>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            4 => $tile::<4>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            5 => $tile::<5>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            6 => $tile::<6>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            7 => $tile::<7>(vp, cp, n, bj, b_rs, b0, mask, yp),
                            _ => $tile::<8>(vp, cp, n, bj, b_rs, b0, mask, yp),
                        }
                    }
                }
                j += width;
            }
        }

        /// One row's `8 * N` pixels, the last vector masked by `mask`: `N` accumulators over
        /// all of the row's `n` non-zeros.
        ///
        /// # Safety
        /// `v`, `c` address `n` elements; `b + c[t] * b_rs` addresses `8 * (N - 1)` floats plus the
        /// lanes of `mask` for each `t`; so does `y`; the CPU supports the enabled target
        /// features.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $tile<const N: usize>(
            v: *const $vt,
            c: *const $it,
            n: usize,
            b: *const f32,
            b_rs: usize,
            b0: f32,
            mask: __m256i,
            y: *mut f32,
        ) {
            let bcast = $bcast;
            let mut acc = [_mm256_set1_ps(b0); N];
            // SAFETY: function contract.
            unsafe {
                for t in 0..n {
                    let wv = bcast(v.add(t));
                    let src = b.add(*c.add(t) as usize * b_rs);
                    for (i, a) in acc.iter_mut().enumerate().take(N - 1) {
                        *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(src.add(8 * i)), *a);
                    }
                    let last = _mm256_maskload_ps(src.add(8 * (N - 1)), mask);
                    acc[N - 1] = _mm256_fmadd_ps(wv, last, acc[N - 1]);
                }
                for (i, a) in acc.iter().enumerate().take(N - 1) {
                    _mm256_storeu_ps(y.add(8 * i), *a);
                }
                _mm256_maskstore_ps(y.add(8 * (N - 1)), mask, acc[N - 1]);
            }
        }
    };
}

/// `TAIL_MASK[8 - r..16 - r]` has its first `r` lanes all ones.
static TAIL_MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

spmm_avx2!(
    spmm_f32_u16_avx2,
    tile_f32_u16,
    f32,
    F32,
    u16,
    U16,
    "avx2,fma",
    // SAFETY: callers pass a readable pointer.
    |p: *const f32| unsafe { _mm256_broadcast_ss(&*p) }
);

spmm_avx2!(
    spmm_f32_u32_avx2,
    tile_f32_u32,
    f32,
    F32,
    u32,
    U32,
    "avx2,fma",
    // SAFETY: as above.
    |p: *const f32| unsafe { _mm256_broadcast_ss(&*p) }
);

spmm_avx2!(
    spmm_f16_u16_avx2,
    tile_f16_u16,
    f16,
    F16,
    u16,
    U16,
    "avx2,fma,f16c",
    // SAFETY: as above.
    |p: *const f16| unsafe {
        _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (*p).to_bits() as i32,
        ))))
    }
);

spmm_avx2!(
    spmm_f16_u32_avx2,
    tile_f16_u32,
    f16,
    F16,
    u32,
    U32,
    "avx2,fma,f16c",
    // SAFETY: as above.
    |p: *const f16| unsafe {
        _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (*p).to_bits() as i32,
        ))))
    }
);
