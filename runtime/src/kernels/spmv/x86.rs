use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use super::super::gemv::x86::hsum;
use crate::model::{CsrView, Elems, Indices};

macro_rules! spmv_avx2 {
    ($name:ident, $row:ident, $vt:ty, $vvar:ident, $it:ty, $ivar:ident, $features:literal,
     $load8:expr, $set8:expr, $idx8:expr, $cvt1:expr) => {
        /// AVX2 SpMV: per row, 16 non-zeros per step in two 8-lane FMA chains (the `x` values
        /// inserted lane by lane), then one 8-lane step without branches for the last `< 8`;
        /// rows shorter than [`SHORT_ROW`] take four scalar chains instead, which costs less
        /// than a mostly masked vector step. See [`super::SpmvFn`] for the contract.
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
                let (vp, cp) = (v[k.clone()].as_ptr(), c[k.clone()].as_ptr());
                // SAFETY: `vp` and `cp` address `k.len()` elements (CSR invariant); every index
                // is `< w.cols() <= x.len()`.
                let s = unsafe {
                    if k.len() < SHORT_ROW {
                        super::scalar::dot(vp, cp, k.len(), x.as_ptr(), $cvt1, |c| c as usize)
                    } else {
                        $row(vp, cp, k.len(), x.as_ptr())
                    }
                };
                y[r - r0] = s + bias.map_or(0.0, |b| b[r]);
            }
        }

        /// `sum_j v[j] * x[c[j]]` for `j < n`.
        ///
        /// # Safety
        /// `n >= 1`; `v` and `c` address `n` elements; every `c[j]` indexes `x`; the CPU
        /// supports the enabled target features.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $row(v: *const $vt, c: *const $it, n: usize, x: *const f32) -> f32 {
            let load8 = $load8;
            let set8 = $set8;
            let idx8 = $idx8;
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut j = 0;
            // SAFETY: every access is at `j + 16 <= n`, `j + 8 <= n` or a position clamped to
            // `n - 1` of `v`/`c`, and `x` is read only at stored column indices (function
            // contract).
            unsafe {
                // Vector loads of `x[c[j]]` would need gathers, which are microcoded and slower
                // than lane inserts on AMD Zen; the inserts run on the shuffle ports in parallel
                // with the loads.
                let xi = |i: [usize; 8]| {
                    let g = |t: usize| *x.add(i[t]);
                    _mm256_set_ps(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0))
                };
                // Eight indices come from one or two wide integer loads and shifts, which keeps
                // the load ports for `x`.
                while j + 16 <= n {
                    a0 = _mm256_fmadd_ps(load8(v.add(j)), xi(idx8(c.add(j))), a0);
                    a1 = _mm256_fmadd_ps(load8(v.add(j + 8)), xi(idx8(c.add(j + 8))), a1);
                    j += 16;
                }
                if j + 8 <= n {
                    a0 = _mm256_fmadd_ps(load8(v.add(j)), xi(idx8(c.add(j))), a0);
                    j += 8;
                }
                // The last `n - j < 8` without data-dependent branches (row lengths vary, and
                // mispredicted exits cost more than the work): positions clamp to the last
                // non-zero, and lanes past the row are masked to 0 in both factors, so an
                // infinite `x` there cannot turn into NaN.
                let p: [usize; 8] = core::array::from_fn(|t| (j + t).min(n - 1));
                let mask = _mm256_loadu_ps(TAIL_MASK.as_ptr().add(8 - (n - j)));
                let xv = _mm256_and_ps(xi(p.map(|q| *c.add(q) as usize)), mask);
                let vv = _mm256_and_ps(set8(v, p), mask);
                a1 = _mm256_fmadd_ps(vv, xv, a1);
            }
            hsum(_mm256_add_ps(a0, a1))
        }
    };
}

/// Rows with fewer non-zeros than this take the scalar path.
const SHORT_ROW: usize = 12;

/// `TAIL_MASK[8 - r..16 - r]` has its first `r` lanes all ones (as f32 bit patterns).
static TAIL_MASK: [f32; 16] = {
    let ones = f32::from_bits(u32::MAX);
    [
        ones, ones, ones, ones, ones, ones, ones, ones, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ]
};

spmv_avx2!(
    spmv_f32_u16_avx2,
    row_f32_u16,
    f32,
    F32,
    u16,
    U16,
    "avx2,fma",
    // SAFETY: callers pass a pointer to 8 readable elements / positions inside `v`.
    |p: *const f32| unsafe { _mm256_loadu_ps(p) },
    |v: *const f32, p: [usize; 8]| unsafe { set8_f32(v, p) },
    |c: *const u16| unsafe { idx8_u16(c) },
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
    |v: *const f32, p: [usize; 8]| unsafe { set8_f32(v, p) },
    |c: *const u32| unsafe { idx8_u32(c) },
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
    // SAFETY: as above.
    |p: *const f16| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) },
    |v: *const f16, p: [usize; 8]| unsafe { set8_f16(v, p) },
    |c: *const u16| unsafe { idx8_u16(c) },
    |h: f16| f16_to_f32(h)
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
    |v: *const f16, p: [usize; 8]| unsafe { set8_f16(v, p) },
    |c: *const u32| unsafe { idx8_u32(c) },
    |h: f16| f16_to_f32(h)
);

/// One f16 to f32 with F16C (the `half` crate converts in software without `std`).
#[target_feature(enable = "f16c")]
#[inline]
fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// `[c[0], ..., c[7]]` from two 8-byte loads.
///
/// # Safety
/// `c` addresses 8 readable elements.
#[inline(always)]
unsafe fn idx8_u16(c: *const u16) -> [usize; 8] {
    // SAFETY: function contract; unaligned reads of the 16 bytes.
    let (lo, hi) = unsafe {
        (
            (c as *const u64).read_unaligned(),
            (c as *const u64).add(1).read_unaligned(),
        )
    };
    let q = [lo, hi];
    core::array::from_fn(|t| (q[t / 4] >> (16 * (t % 4))) as u16 as usize)
}

/// `[c[0], ..., c[7]]` from four 8-byte loads.
///
/// # Safety
/// `c` addresses 8 readable elements.
#[inline(always)]
unsafe fn idx8_u32(c: *const u32) -> [usize; 8] {
    // SAFETY: function contract; unaligned reads of the 32 bytes.
    let q: [u64; 4] =
        core::array::from_fn(|t| unsafe { (c as *const u64).add(t).read_unaligned() });
    core::array::from_fn(|t| (q[t / 2] >> (32 * (t % 2))) as u32 as usize)
}

/// `[v[p[0]], ..., v[p[7]]]`.
///
/// # Safety
/// Every `v.add(p[t])` is readable.
#[target_feature(enable = "avx")]
#[inline]
unsafe fn set8_f32(v: *const f32, p: [usize; 8]) -> __m256 {
    // SAFETY: function contract.
    unsafe {
        _mm256_set_ps(
            *v.add(p[7]),
            *v.add(p[6]),
            *v.add(p[5]),
            *v.add(p[4]),
            *v.add(p[3]),
            *v.add(p[2]),
            *v.add(p[1]),
            *v.add(p[0]),
        )
    }
}

/// `[v[p[0]], ..., v[p[7]]]` widened to f32.
///
/// # Safety
/// Every `v.add(p[t])` is readable; the CPU supports F16C.
#[target_feature(enable = "avx,f16c")]
#[inline]
unsafe fn set8_f16(v: *const f16, p: [usize; 8]) -> __m256 {
    // SAFETY: function contract.
    let b = |t: usize| unsafe { (*v.add(p[t])).to_bits() as i16 };
    _mm256_cvtph_ps(_mm_set_epi16(
        b(7),
        b(6),
        b(5),
        b(4),
        b(3),
        b(2),
        b(1),
        b(0),
    ))
}
