use half::f16;

use super::Elems;

/// Portable GEMV: four rows at a time, four independent accumulators. Reads f32 or f16 weights;
/// see [`super::GemvFn`] for the contract.
///
/// # Safety
/// None beyond the bounds [`super::GemvKernel::run`] checks; it is `unsafe` only to share the
/// kernel signature.
pub(crate) unsafe fn gemv_4x1_scalar(
    a: Elems<'_>,
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    match a {
        Elems::F32(w) => rows(w, lda, m, k, x, bias, y, |v: f32| v),
        Elems::F16(w) => rows(w, lda, m, k, x, bias, y, f16::to_f32),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows<T: Copy>(
    w: &[T],
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    cvt: impl Fn(T) -> f32,
) {
    let x = &x[..k];
    let mut i = 0;
    while i + 4 <= m {
        let r: [&[T]; 4] = core::array::from_fn(|r| &w[(i + r) * lda..(i + r) * lda + k]);
        let mut acc = [0f32; 4];
        for (p, &xv) in x.iter().enumerate() {
            for (a, row) in acc.iter_mut().zip(&r) {
                *a += cvt(row[p]) * xv;
            }
        }
        for (r, a) in acc.iter().enumerate() {
            y[i + r] = a + bias.map_or(0.0, |b| b[i + r]);
        }
        i += 4;
    }
    for i in i..m {
        let row = &w[i * lda..i * lda + k];
        let mut acc = [0f32; 4];
        let mut chunks = row.chunks_exact(4).zip(x.chunks_exact(4));
        for (wc, xc) in &mut chunks {
            for l in 0..4 {
                acc[l] += cvt(wc[l]) * xc[l];
            }
        }
        let tail: f32 = row[k / 4 * 4..]
            .iter()
            .zip(&x[k / 4 * 4..])
            .map(|(&w, &x)| cvt(w) * x)
            .sum();
        y[i] = (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail + bias.map_or(0.0, |b| b[i]);
    }
}
