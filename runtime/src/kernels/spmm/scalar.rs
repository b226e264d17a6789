use core::ops::Range;

use half::f16;

use crate::model::{CsrView, Elems, Indices};

/// Portable SpMM: tiles of 8 pixels in 8 accumulators per row. See [`super::SpmmFn`].
///
/// # Safety
/// As [`super::SpmmFn`].
pub(crate) unsafe fn spmm_scalar(
    w: &CsrView<'_>,
    rows: Range<usize>,
    b: &[f32],
    b_rs: usize,
    p: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    match (w.values(), w.col_idx()) {
        (Elems::F32(v), Indices::U16(c)) => run(w, rows, v, c, b, b_rs, p, bias, y, |v| v),
        (Elems::F32(v), Indices::U32(c)) => run(w, rows, v, c, b, b_rs, p, bias, y, |v| v),
        (Elems::F16(v), Indices::U16(c)) => run(w, rows, v, c, b, b_rs, p, bias, y, f16::to_f32),
        (Elems::F16(v), Indices::U32(c)) => run(w, rows, v, c, b, b_rs, p, bias, y, f16::to_f32),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run<V: Copy, I: Copy + Into<u64>>(
    w: &CsrView<'_>,
    rows: Range<usize>,
    v: &[V],
    c: &[I],
    b: &[f32],
    b_rs: usize,
    p: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    cvt: impl Fn(V) -> f32,
) {
    const T: usize = 8;
    let r0 = rows.start;
    for r in rows {
        let k = w.row_range(r);
        let (v, c) = (&v[k.clone()], &c[k]);
        let b0 = bias.map_or(0.0, |bb| bb[r]);
        let yr = &mut y[(r - r0) * p..(r - r0 + 1) * p];
        let mut j = 0;
        while j < p {
            let t = T.min(p - j);
            let mut acc = [b0; T];
            for (&vv, &ci) in v.iter().zip(c) {
                let wv = cvt(vv);
                let row = &b[ci.into() as usize * b_rs + j..][..t];
                for (a, &bv) in acc.iter_mut().zip(row) {
                    *a += wv * bv;
                }
            }
            yr[j..j + t].copy_from_slice(&acc[..t]);
            j += t;
        }
    }
}
