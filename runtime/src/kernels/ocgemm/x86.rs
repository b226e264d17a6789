use core::arch::x86_64::*;

use super::{tile, Lanes, OcTile};

/// 16 lanes of AVX-512F.
pub(super) struct Avx512;

/// 8 lanes of AVX2 + FMA.
pub(super) struct Avx2;

// SAFETY (every method): the callers are compiled for AVX-512F (`oc_avx512`), which makes the
// intrinsics available; each pointer access covers exactly the documented elements.
impl Lanes for Avx512 {
    const N: usize = 16;
    type V = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(acc: __m512, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn clamp(v: __m512, lo: __m512, hi: __m512) -> __m512 {
        unsafe { _mm512_min_ps(_mm512_max_ps(v, lo), hi) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    /// Each block of 16 channels is transposed in registers and stored as `P`-wide masked rows.
    #[inline(always)]
    unsafe fn store_tile<const P: usize, const V: usize>(
        acc: &[[__m512; V]; P],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        if P > 16 {
            // SAFETY: the caller's contract.
            return unsafe { super::store_tile_buf::<Self, P, V>(acc, c, ldc, rows) };
        }
        let mask = ((1u32 << P) - 1) as __mmask16;
        #[allow(clippy::needless_range_loop)]
        for v in 0..V {
            // SAFETY: register operations; channel `16·v + i < rows` has `P` writable outputs
            // at `c + (16·v + i)·ldc`, which the mask keeps the store to.
            unsafe {
                let r = core::array::from_fn(|j| {
                    if j < P {
                        acc[j][v]
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let t = transpose16(r);
                for (i, &ti) in t
                    .iter()
                    .enumerate()
                    .take(rows.saturating_sub(16 * v).min(16))
                {
                    _mm512_mask_storeu_ps(c.add((16 * v + i) * ldc), mask, ti);
                }
            }
        }
    }
}

/// The transpose of the 16×16 matrix whose rows are `r`: lane `j` of result `i` is lane `i` of
/// `r[j]`.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: register operations of AVX-512F, which the callers are compiled for.
    unsafe {
        let lo_ps = |a, b| _mm512_unpacklo_ps(a, b);
        let hi_ps = |a, b| _mm512_unpackhi_ps(a, b);
        let lo_pd =
            |a, b| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
        let hi_pd =
            |a, b| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
        // Pairs of rows interleaved, then pairs of pairs: each 128-bit lane holds a 4×4 block.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = lo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = hi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let b = 4 * q;
            u[b] = lo_pd(t[b], t[b + 2]);
            u[b + 1] = hi_pd(t[b], t[b + 2]);
            u[b + 2] = lo_pd(t[b + 1], t[b + 3]);
            u[b + 3] = hi_pd(t[b + 1], t[b + 3]);
        }
        // The 4×4 blocks moved into place: even then odd 128-bit lanes, twice.
        for h in 0..2 {
            let b = 8 * h;
            for i in 0..4 {
                t[b + i] = _mm512_shuffle_f32x4::<0x88>(u[b + i], u[b + 4 + i]);
                t[b + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(u[b + i], u[b + 4 + i]);
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            out[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
            out[8 + i] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[8 + i]);
        }
        out
    }
}

// SAFETY (every method): the callers are compiled for AVX2 + FMA (`oc_avx2`); each pointer
// access covers exactly the documented elements.
impl Lanes for Avx2 {
    const N: usize = 8;
    type V = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(acc: __m256, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn clamp(v: __m256, lo: __m256, hi: __m256) -> __m256 {
        unsafe { _mm256_min_ps(_mm256_max_ps(v, lo), hi) }
    }
    /// Each block of 8 channels is transposed in registers and stored as `P`-wide masked rows.
    #[inline(always)]
    unsafe fn store_tile<const P: usize, const V: usize>(
        acc: &[[__m256; V]; P],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        if P > 8 {
            // SAFETY: the caller's contract.
            return unsafe { super::store_tile_buf::<Self, P, V>(acc, c, ldc, rows) };
        }
        // SAFETY (this block and the loop's): register operations of AVX2; channel
        // `8·v + i < rows` has `P` writable outputs at `c + (8·v + i)·ldc`, which the mask
        // keeps the store to.
        let mask = unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(P as i32), lanes)
        };
        #[allow(clippy::needless_range_loop)]
        for v in 0..V {
            unsafe {
                let r = core::array::from_fn(|j| {
                    if j < P {
                        acc[j][v]
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                let t = transpose8(r);
                for (i, &ti) in t.iter().enumerate().take(rows.saturating_sub(8 * v).min(8)) {
                    _mm256_maskstore_ps(c.add((8 * v + i) * ldc), mask, ti);
                }
            }
        }
    }
}

/// The transpose of the 8×8 matrix whose rows are `r`: lane `j` of result `i` is lane `i` of
/// `r[j]`.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register operations of AVX, which the callers are compiled for.
    unsafe {
        let mut t = [_mm256_setzero_ps(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let b = 4 * h;
            u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
            u[b + 1] = _mm256_shuffle_ps::<0xee>(t[b], t[b + 2]);
            u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            u[b + 3] = _mm256_shuffle_ps::<0xee>(t[b + 1], t[b + 3]);
        }
        let mut out = [_mm256_setzero_ps(); 8];
        for i in 0..4 {
            out[i] = _mm256_permute2f128_ps::<0x20>(u[i], u[4 + i]);
            out[4 + i] = _mm256_permute2f128_ps::<0x31>(u[i], u[4 + i]);
        }
        out
    }
}

/// `P` pixels × `16·V` channels with AVX-512F. See [`super::OcFn`].
///
/// # Safety
/// As [`super::OcFn`] with `NR = 16·V`; the CPU supports AVX-512F.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn oc_avx512<const P: usize, const V: usize>(
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
    unsafe { tile::<Avx512, P, V>(k, w, x, offs, c, ldc, rows, t) }
}

/// `P` pixels × `8·V` channels with AVX2 + FMA. See [`super::OcFn`].
///
/// # Safety
/// As [`super::OcFn`] with `NR = 8·V`; the CPU supports AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn oc_avx2<const P: usize, const V: usize>(
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
    unsafe { tile::<Avx2, P, V>(k, w, x, offs, c, ldc, rows, t) }
}
