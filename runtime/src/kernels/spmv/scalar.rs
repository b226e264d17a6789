use core::ops::Range;

use half::f16;

use crate::model::{CsrView, Elems, Indices};

/// Portable SpMV: four accumulators per row over consecutive non-zeros. Reads every storage
/// pair; see [`super::SpmvFn`] for the contract.
///
/// # Safety
/// As [`super::SpmvFn`]: the column indices are `< w.cols() <= x.len()`.
pub(crate) unsafe fn spmv_scalar(
    w: &CsrView<'_>,
    rows: Range<usize>,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match (w.values(), w.col_idx()) {
            (Elems::F32(v), Indices::U16(c)) => {
                run(w, rows, v, c, x, bias, y, |v| v, |c| c as usize)
            }
            (Elems::F32(v), Indices::U32(c)) => {
                run(w, rows, v, c, x, bias, y, |v| v, |c| c as usize)
            }
            (Elems::F16(v), Indices::U16(c)) => {
                run(w, rows, v, c, x, bias, y, f16::to_f32, |c| c as usize)
            }
            (Elems::F16(v), Indices::U32(c)) => {
                run(w, rows, v, c, x, bias, y, f16::to_f32, |c| c as usize)
            }
        }
    }
}

/// # Safety
/// Every `col(c[k])` is `< x.len()` (CSR invariant plus caller contract).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn run<V: Copy, I: Copy>(
    w: &CsrView<'_>,
    rows: Range<usize>,
    v: &[V],
    c: &[I],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    cvt: impl Fn(V) -> f32,
    col: impl Fn(I) -> usize,
) {
    let r0 = rows.start;
    for r in rows {
        let range = w.row_range(r);
        let (v, c) = (&v[range.clone()], &c[range]);
        let mut acc = [0f32; 4];
        let mut vc = v.chunks_exact(4);
        let mut cc = c.chunks_exact(4);
        for (vv, ci) in (&mut vc).zip(&mut cc) {
            for j in 0..4 {
                // SAFETY: column indices are `< x.len()` (function contract).
                acc[j] += cvt(vv[j]) * unsafe { *x.get_unchecked(col(ci[j])) };
            }
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for (&vv, &ci) in vc.remainder().iter().zip(cc.remainder()) {
            // SAFETY: as above.
            s += cvt(vv) * unsafe { *x.get_unchecked(col(ci)) };
        }
        y[r - r0] = s + bias.map_or(0.0, |b| b[r]);
    }
}
