use core::arch::x86_64::*;

use super::{BRows, Tile};

/// AVX2 + FMA 6×16 micro-kernel: 12 accumulators of 8 lanes, two `B` loads and six broadcasts of
/// `A` per step of `k`. See [`super::MicroKernel`] for the contract.
///
/// # Safety
/// As [`super::MicroKernel`] with `MR = 6`, `NR = 16`; the CPU supports AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm_f32_6x16_avx2fma(
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
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe {
        let no_offs = core::ptr::null();
        if a_rs == 1 && a_cs == 6 {
            avx2_6x16::<true, false>(kc, a, 1, 6, b, b_rs, no_offs, c, ldc, t)
        } else {
            avx2_6x16::<false, false>(kc, a, a_rs, a_cs, b, b_rs, no_offs, c, ldc, t)
        }
    }
}

/// [`gemm_f32_6x16_avx2fma`] reading row `p` of `B` at `b + b_offs[p]` (an implicit-GEMM patch
/// matrix in its padded image) instead of packing it. See [`super::RowsKernel`].
///
/// # Safety
/// As [`super::RowsKernel`] with `MR = 6`, `NR = 16`; the CPU supports AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm_f32_6x16_avx2fma_rows(
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
    unsafe {
        if a_rs == 1 && a_cs == 6 {
            avx2_6x16::<true, true>(kc, a, 1, 6, b, 0, b_offs, c, ldc, t)
        } else {
            avx2_6x16::<false, true>(kc, a, a_rs, a_cs, b, 0, b_offs, c, ldc, t)
        }
    }
}

/// Body of [`gemm_f32_6x16_avx2fma`] and [`gemm_f32_6x16_avx2fma_rows`]; with `PACKED` the
/// caller has checked `a_rs == 1` and `a_cs == 6`; with `ROWS` row `p` of `B` starts at
/// `b + b_offs[p]`, otherwise at `b + p * b_rs`.
///
/// # Safety
/// As [`gemm_f32_6x16_avx2fma`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_6x16<const PACKED: bool, const ROWS: bool>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
) {
    let (a_rs, a_cs) = if PACKED { (1, 6) } else { (a_rs, a_cs) };
    const MR: usize = 6;
    const NR: usize = 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY: row pointers of the `A` panel, dereferenced only at offsets the caller allows.
    let ar: [*const f32; MR] = core::array::from_fn(|i| unsafe { a.add(i * a_rs) });
    for i in 0..MR {
        // The tile rows the epilogue touches (a prefetch never faults).
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + NR - 1) as *const i8);
    }
    let (mut off, mut rows) = (0, BRows::<ROWS>::new(b, b_rs, b_offs));
    // SAFETY (every `step!`): step `p` reads `a[i * a_rs + p * a_cs]` for `i < MR` and `NR`
    // floats of row `p` of `B` (and `b_offs[p]` with `ROWS`); `kc` steps stay inside what the
    // caller provides.
    macro_rules! step {
        () => {
            unsafe {
                let b = rows.next();
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (acc, ai) in acc.iter_mut().zip(&ar) {
                    let ai = _mm256_broadcast_ss(&*ai.add(off));
                    acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
                }
                off += a_cs;
            }
        };
    }
    for _ in 0..kc / 4 {
        step!();
        step!();
        step!();
        step!();
    }
    for _ in 0..kc % 4 {
        step!();
    }
    let (lo, hi) = (_mm256_set1_ps(t.lo), _mm256_set1_ps(t.hi));
    // SAFETY: rows `0..MR` of the tile, 16 values each, are writable; the bias pointers address
    // `MR` / `NR` values.
    unsafe {
        let (bc0, bc1) = (_mm256_loadu_ps(t.bias_c), _mm256_loadu_ps(t.bias_c.add(8)));
        for (i, acc) in acc.iter().enumerate() {
            let cr = c.add(i * ldc);
            let (mut x0, mut x1) = (acc[0], acc[1]);
            if t.accumulate {
                x0 = _mm256_add_ps(x0, _mm256_loadu_ps(cr));
                x1 = _mm256_add_ps(x1, _mm256_loadu_ps(cr.add(8)));
            } else {
                let br = _mm256_broadcast_ss(&*t.bias_r.add(i));
                x0 = _mm256_add_ps(x0, _mm256_add_ps(br, bc0));
                x1 = _mm256_add_ps(x1, _mm256_add_ps(br, bc1));
            }
            if t.clamp {
                x0 = _mm256_min_ps(_mm256_max_ps(x0, lo), hi);
                x1 = _mm256_min_ps(_mm256_max_ps(x1, lo), hi);
            }
            _mm256_storeu_ps(cr, x0);
            _mm256_storeu_ps(cr.add(8), x1);
        }
    }
}

/// AVX-512F 8×32 micro-kernel: 16 accumulators of 16 lanes, two `B` loads and eight broadcasts
/// of `A` per step of `k`; with `PF`, it also prefetches row `p` of `B` `t.prefetch` floats
/// ahead (the variant [`super::GemmKernel::ukernel_pf`] lists). See [`super::MicroKernel`] for
/// the contract.
///
/// # Safety
/// As [`super::MicroKernel`] with `MR = 8`, `NR = 32`; the CPU supports AVX-512F.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gemm_f32_8x32_avx512<const PF: bool>(
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
    // A packed panel gets a loop with constant offsets; general strides cost an address
    // computation per row and step.
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe {
        let no_offs = core::ptr::null();
        if a_rs == 1 && a_cs == 8 {
            avx512_8x32::<true, false, PF>(kc, a, 1, 8, b, b_rs, no_offs, c, ldc, t)
        } else {
            avx512_8x32::<false, false, PF>(kc, a, a_rs, a_cs, b, b_rs, no_offs, c, ldc, t)
        }
    }
}

/// [`gemm_f32_8x32_avx512`] reading row `p` of `B` at `b + b_offs[p]` (an implicit-GEMM patch
/// matrix in its padded image) instead of packing it. See [`super::RowsKernel`].
///
/// # Safety
/// As [`super::RowsKernel`] with `MR = 8`, `NR = 32`; the CPU supports AVX-512F.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gemm_f32_8x32_avx512_rows<const PF: bool>(
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
    unsafe {
        if a_rs == 1 && a_cs == 8 {
            avx512_8x32::<true, true, PF>(kc, a, 1, 8, b, 0, b_offs, c, ldc, t)
        } else {
            avx512_8x32::<false, true, PF>(kc, a, a_rs, a_cs, b, 0, b_offs, c, ldc, t)
        }
    }
}

/// Body of [`gemm_f32_8x32_avx512`] and [`gemm_f32_8x32_avx512_rows`];
/// with `PACKED` the caller has checked `a_rs == 1` and `a_cs == 8`; with `ROWS` row `p` of `B`
/// starts at `b + b_offs[p]`, otherwise at `b + p * b_rs`; with `PF` each step also prefetches
/// its row of `B` `t.prefetch` floats ahead (wrapping address arithmetic, never dereferenced).
///
/// # Safety
/// As [`gemm_f32_8x32_avx512`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_8x32<const PACKED: bool, const ROWS: bool, const PF: bool>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
) {
    let (a_rs, a_cs) = if PACKED { (1, 8) } else { (a_rs, a_cs) };
    const MR: usize = 8;
    const NR: usize = 32;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: row pointers of the `A` panel, dereferenced only at offsets the caller allows.
    let ar: [*const f32; MR] = core::array::from_fn(|i| unsafe { a.add(i * a_rs) });
    for i in 0..MR {
        // The tile rows the epilogue touches (a prefetch never faults).
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + NR - 1) as *const i8);
    }
    let (mut off, mut rows) = (0, BRows::<ROWS>::new(b, b_rs, b_offs));
    let pf = t.prefetch;
    // SAFETY (every `step!`): step `p` reads `a[i * a_rs + p * a_cs]` for `i < MR` and `NR`
    // floats of row `p` of `B` (and `b_offs[p]` with `ROWS`); `kc` steps stay inside what the
    // caller provides; prefetching never faults.
    macro_rules! step {
        () => {
            unsafe {
                let b = rows.next();
                if PF {
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(pf) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(pf + NR / 2) as *const i8);
                }
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                for (acc, ai) in acc.iter_mut().zip(&ar) {
                    let ai = _mm512_set1_ps(*ai.add(off));
                    acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
                off += a_cs;
            }
        };
    }
    for _ in 0..kc / 4 {
        step!();
        step!();
        step!();
        step!();
    }
    for _ in 0..kc % 4 {
        step!();
    }
    let (lo, hi) = (_mm512_set1_ps(t.lo), _mm512_set1_ps(t.hi));
    // SAFETY: rows `0..MR` of the tile, 32 values each, are writable; the bias pointers address
    // `MR` / `NR` values.
    unsafe {
        let (bc0, bc1) = (_mm512_loadu_ps(t.bias_c), _mm512_loadu_ps(t.bias_c.add(16)));
        for (i, acc) in acc.iter().enumerate() {
            let cr = c.add(i * ldc);
            let (mut x0, mut x1) = (acc[0], acc[1]);
            if t.accumulate {
                x0 = _mm512_add_ps(x0, _mm512_loadu_ps(cr));
                x1 = _mm512_add_ps(x1, _mm512_loadu_ps(cr.add(16)));
            } else {
                let br = _mm512_set1_ps(*t.bias_r.add(i));
                x0 = _mm512_add_ps(x0, _mm512_add_ps(br, bc0));
                x1 = _mm512_add_ps(x1, _mm512_add_ps(br, bc1));
            }
            if t.clamp {
                x0 = _mm512_min_ps(_mm512_max_ps(x0, lo), hi);
                x1 = _mm512_min_ps(_mm512_max_ps(x1, lo), hi);
            }
            match t.crop {
                // Kept columns packed to the left, stored under a mask of as many lanes (no
                // lane past them is read or written).
                Some(keep) if ROWS => {
                    let (k0, k1) = (keep as u16, (keep >> 16) as u16);
                    let n0 = k0.count_ones();
                    let low = |n: u32| ((1u32 << n) - 1) as u16;
                    _mm512_mask_storeu_ps(cr, low(n0), _mm512_maskz_compress_ps(k0, x0));
                    let n1 = k1.count_ones();
                    let c1 = cr.add(n0 as usize);
                    _mm512_mask_storeu_ps(c1, low(n1), _mm512_maskz_compress_ps(k1, x1));
                }
                _ => {
                    _mm512_storeu_ps(cr, x0);
                    _mm512_storeu_ps(cr.add(16), x1);
                }
            }
        }
    }
}
