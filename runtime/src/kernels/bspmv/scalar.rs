use core::ops::Range;

use half::f16;

use super::{store4, BLOCK};
use crate::model::{BlockCsrView, Elems, Indices};

/// Portable 4×1-blocked SpMV: one accumulator per row of the block. See [`super::BspmvFn`].
///
/// # Safety
/// As [`super::BspmvFn`].
pub(crate) unsafe fn bspmv_scalar(
    w: &BlockCsrView<'_>,
    brows: Range<usize>,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    match (w.values(), w.col_idx()) {
        (Elems::F32(v), Indices::U16(c)) => run(w, brows, v, c, x, bias, y, |v| v),
        (Elems::F32(v), Indices::U32(c)) => run(w, brows, v, c, x, bias, y, |v| v),
        (Elems::F16(v), Indices::U16(c)) => run(w, brows, v, c, x, bias, y, f16::to_f32),
        (Elems::F16(v), Indices::U32(c)) => run(w, brows, v, c, x, bias, y, f16::to_f32),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run<V: Copy, I: Copy + Into<u64>>(
    w: &BlockCsrView<'_>,
    brows: Range<usize>,
    v: &[V],
    c: &[I],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    cvt: impl Fn(V) -> f32,
) {
    let r0 = BLOCK * brows.start;
    for b in brows {
        let mut s = [0f32; BLOCK];
        for k in w.block_range(b) {
            let xv = x[c[k].into() as usize];
            for (t, a) in s.iter_mut().enumerate() {
                *a += cvt(v[BLOCK * k + t]) * xv;
            }
        }
        store4(s, b, r0, w.rows(), bias, y);
    }
}
