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
        let k = w.row_range(r);
        // SAFETY: `k` lies inside `v` and `c` (CSR invariant); indices are `< x.len()`.
        let s = unsafe {
            dot(
                v[k.clone()].as_ptr(),
                c[k.clone()].as_ptr(),
                k.len(),
                x.as_ptr(),
                &cvt,
                &col,
            )
        };
        y[r - r0] = s + bias.map_or(0.0, |b| b[r]);
    }
}

/// `sum_j cvt(v[j]) * x[col(c[j])]` for `j < n` with four independent accumulators.
///
/// # Safety
/// `v` and `c` address `n` elements; every `col(c[j])` indexes `x`.
#[inline(always)]
pub(super) unsafe fn dot<V: Copy, I: Copy>(
    v: *const V,
    c: *const I,
    n: usize,
    x: *const f32,
    cvt: impl Fn(V) -> f32,
    col: impl Fn(I) -> usize,
) -> f32 {
    let mut acc = [0f32; 4];
    let mut j = 0;
    // SAFETY: every access is at `j < n` of `v`/`c`, and `x` is read at stored indices only.
    unsafe {
        let term = |j: usize| cvt(*v.add(j)) * *x.add(col(*c.add(j)));
        while j + 4 <= n {
            for (t, a) in acc.iter_mut().enumerate() {
                *a += term(j + t);
            }
            j += 4;
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        while j < n {
            s += term(j);
            j += 1;
        }
        s
    }
}
