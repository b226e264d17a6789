use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use super::Elems;

/// NEON GEMV over four rows at a time, 8 columns per step (two 4-lane accumulators per row).
/// See [`super::GemvFn`] for the contract.
///
/// # Safety
/// As [`super::GemvFn`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemv_f32_4x8_neon(
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
    for_row_blocks(m, bias, y, |i, out: &mut [f32]| {
        // SAFETY: rows `i..i + out.len()` lie inside the weights (caller contract).
        unsafe {
            match out.len() {
                4 => {
                    out.copy_from_slice(&rows_f32::<4>(w.as_ptr().add(i * lda), lda, k, x.as_ptr()))
                }
                _ => {
                    out.copy_from_slice(&rows_f32::<1>(w.as_ptr().add(i * lda), lda, k, x.as_ptr()))
                }
            }
        }
    });
}

/// NEON GEMV for f16 weights: widened to f32 with `vcvt_f32_f16` (baseline ARMv8.0), f32
/// arithmetic; otherwise as [`gemv_f32_4x8_neon`].
///
/// # Safety
/// As [`super::GemvFn`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemv_f16_4x8_neon(
    a: Elems<'_>,
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let Elems::F16(w) = a else {
        unreachable!("gemv: dtype checked by GemvKernel::run")
    };
    let w = w.as_ptr() as *const u16;
    for_row_blocks(m, bias, y, |i, out: &mut [f32]| {
        // SAFETY: rows `i..i + out.len()` lie inside the weights (caller contract).
        unsafe {
            match out.len() {
                4 => out.copy_from_slice(&rows_f16::<4>(w.add(i * lda), lda, 0, k, x.as_ptr())),
                _ => out.copy_from_slice(&rows_f16::<1>(w.add(i * lda), lda, 0, k, x.as_ptr())),
            }
        }
    });
}

/// f16-weight GEMV with half-precision arithmetic (FEAT_FP16): `x` is rounded to f16 and each
/// row's products are accumulated by `FMLA Vd.8H` in f16 over blocks of [`FP16_STEPS`] × 8
/// columns (so every f16 lane sums [`FP16_STEPS`] products), then widened and summed in f32.
///
/// Accuracy: per output, the error is bounded by about `(FP16_STEPS + 2) * 2^-11 * sum |w * x|`
/// (rounding of `x`, of each f16 product-sum; the f32 part is negligible), in practice a few
/// 1e-4 of `sum |w * x|`. `x` values below 2^-24 in magnitude flush to zero. If any f16 value
/// overflows (|x| or a lane's partial sum beyond 65504), the infinity reaches the f32 result,
/// and such rows are recomputed with f32 arithmetic, so the result is never a spurious
/// infinity or NaN.
///
/// # Safety
/// As [`super::GemvFn`]; the CPU supports FEAT_FP16.
#[target_feature(enable = "neon,fp16")]
pub(crate) unsafe fn gemv_f16_4x32_neonfp16(
    a: Elems<'_>,
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let Elems::F16(w) = a else {
        unreachable!("gemv: dtype checked by GemvKernel::run")
    };
    let w = w.as_ptr() as *const u16;
    for_row_blocks(m, bias, y, |i, out: &mut [f32]| {
        // SAFETY: rows `i..i + out.len()` lie inside the weights (caller contract); FEAT_FP16 is
        // guaranteed by the caller.
        unsafe {
            let wi = w.add(i * lda);
            match out.len() {
                4 => out.copy_from_slice(&rows_fp16::<4>(wi, lda, k, x.as_ptr())),
                _ => out.copy_from_slice(&rows_fp16::<1>(wi, lda, k, x.as_ptr())),
            }
            for (r, o) in out.iter_mut().enumerate() {
                if !o.is_finite() {
                    *o = rows_f16::<1>(wi.add(r * lda), lda, 0, k, x.as_ptr())[0];
                }
            }
        }
    });
}

/// f16 lane-accumulation steps (of 8 columns each) before widening to f32.
const FP16_STEPS: usize = 4;

/// Calls `f(i, &mut y[i..i + r])` for blocks of four rows, then single rows, and adds the bias.
#[inline(always)]
fn for_row_blocks(
    m: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    mut f: impl FnMut(usize, &mut [f32]),
) {
    let mut i = 0;
    while i < m {
        let r = if i + 4 <= m { 4 } else { 1 };
        let out = &mut y[i..i + r];
        f(i, out);
        if let Some(b) = bias {
            out.iter_mut().zip(&b[i..i + r]).for_each(|(o, b)| *o += b);
        }
        i += r;
    }
}

/// Dot products of `R` f32 rows (stride `lda`, `k` elements) with `x`.
///
/// # Safety
/// `w` addresses `R` rows of `k` f32 with stride `lda`; `x` addresses `k` f32.
#[target_feature(enable = "neon")]
unsafe fn rows_f32<const R: usize>(w: *const f32, lda: usize, k: usize, x: *const f32) -> [f32; R] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    let mut p = 0;
    // SAFETY: every access is at column `p + 8 <= k` (or `q < k`) of row `r < R` or of `x`.
    unsafe {
        while p + 8 <= k {
            let (x0, x1) = (vld1q_f32(x.add(p)), vld1q_f32(x.add(p + 4)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wr = w.add(r * lda + p);
                acc[0] = vfmaq_f32(acc[0], vld1q_f32(wr), x0);
                acc[1] = vfmaq_f32(acc[1], vld1q_f32(wr.add(4)), x1);
            }
            p += 8;
        }
        core::array::from_fn(|r| {
            let mut s = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
            for q in p..k {
                s += *w.add(r * lda + q) * *x.add(q);
            }
            s
        })
    }
}

/// Dot products of columns `p0..k` of `R` f16 rows (stride `lda`) with `x`, widened to f32.
///
/// # Safety
/// `w` addresses `R` rows of `k` f16 (as bits) with stride `lda`; `x` addresses `k` f32.
#[target_feature(enable = "neon")]
unsafe fn rows_f16<const R: usize>(
    w: *const u16,
    lda: usize,
    p0: usize,
    k: usize,
    x: *const f32,
) -> [f32; R] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    let mut p = p0;
    // SAFETY: every access is at column `p + 8 <= k` (or `q < k`) of row `r < R` or of `x`.
    unsafe {
        while p + 8 <= k {
            let (x0, x1) = (vld1q_f32(x.add(p)), vld1q_f32(x.add(p + 4)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let (lo, hi) = widen(vld1q_u16(w.add(r * lda + p)));
                acc[0] = vfmaq_f32(acc[0], lo, x0);
                acc[1] = vfmaq_f32(acc[1], hi, x1);
            }
            p += 8;
        }
        core::array::from_fn(|r| {
            let mut s = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
            for q in p..k {
                s += f16::from_bits(*w.add(r * lda + q)).to_f32() * *x.add(q);
            }
            s
        })
    }
}

/// FEAT_FP16 dot products of `R` f16 rows with `x`; see [`gemv_f16_4x32_neonfp16`].
///
/// # Safety
/// `w` addresses `R` rows of `k` f16 (as bits) with stride `lda`; `x` addresses `k` f32; the CPU
/// supports FEAT_FP16.
#[target_feature(enable = "neon,fp16")]
unsafe fn rows_fp16<const R: usize>(
    w: *const u16,
    lda: usize,
    k: usize,
    x: *const f32,
) -> [f32; R] {
    const BLOCK: usize = 8 * FP16_STEPS;
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    let mut p = 0;
    // SAFETY: every access is at column `p + BLOCK <= k` of row `r < R` or of `x`; the asm
    // blocks only read and write the named vector registers (FP16 arithmetic is guaranteed by
    // the caller).
    unsafe {
        while p + BLOCK <= k {
            let mut h = [vdupq_n_u16(0); R];
            for s in 0..FP16_STEPS {
                let q = p + 8 * s;
                let xh: uint16x8_t;
                asm!(
                    "fcvtn {o:v}.4h, {l:v}.4s",
                    "fcvtn2 {o:v}.8h, {h:v}.4s",
                    o = out(vreg) xh,
                    l = in(vreg) vld1q_f32(x.add(q)),
                    h = in(vreg) vld1q_f32(x.add(q + 4)),
                    options(pure, nomem, nostack),
                );
                for (r, h) in h.iter_mut().enumerate() {
                    asm!(
                        "fmla {a:v}.8h, {w:v}.8h, {x:v}.8h",
                        a = inout(vreg) *h,
                        w = in(vreg) vld1q_u16(w.add(r * lda + q)),
                        x = in(vreg) xh,
                        options(pure, nomem, nostack),
                    );
                }
            }
            for (acc, u) in acc.iter_mut().zip(h) {
                let (lo, hi) = widen(u);
                acc[0] = vaddq_f32(acc[0], lo);
                acc[1] = vaddq_f32(acc[1], hi);
            }
            p += BLOCK;
        }
        let tail = rows_f16::<R>(w, lda, p, k, x);
        core::array::from_fn(|r| vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1])) + tail[r])
    }
}

/// The eight f16 values (as bits) of `h` converted to f32: lanes 0..4 and 4..8. `FCVTL` is
/// baseline ARMv8.0; the intrinsics for it need a newer compiler than the crate's MSRV.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only conversion instructions, available on every aarch64 CPU.
    unsafe {
        asm!(
            "fcvtl {l:v}.4s, {h:v}.4h",
            "fcvtl2 {u:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            l = out(vreg) lo,
            u = out(vreg) hi,
            options(pure, nomem, nostack),
        );
    }
    (lo, hi)
}
