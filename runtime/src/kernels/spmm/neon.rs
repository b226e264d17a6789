use core::arch::aarch64::*;
use core::ops::Range;

use half::f16;

use crate::model::{CsrView, Elems, Indices};

macro_rules! spmm_neon {
    ($name:ident, $tile:ident, $vt:ty, $vvar:ident, $it:ty, $ivar:ident, $cvt:expr) => {
        /// NEON SpMM: tiles of 16 and 4 pixels (4 and 1 accumulators), the last `< 4` pixels
        /// scalar. See [`super::SpmmFn`] for the contract.
        ///
        /// # Safety
        /// As [`super::SpmmFn`].
        #[target_feature(enable = "neon")]
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
            let cvt = $cvt;
            let r0 = rows.start;
            let mut j = 0;
            while j < p {
                let width = match p - j {
                    n if n >= 16 => 16,
                    n if n >= 4 => 4,
                    n => n,
                };
                for r in rows.clone() {
                    let k = w.row_range(r);
                    let b0 = bias.map_or(0.0, |bb| bb[r]);
                    // SAFETY: row `r`'s non-zeros lie inside `v`/`c`, each index is
                    // `< w.cols()`, so `b` holds `p` values from `index * b_rs`; pixels
                    // `j..j + width` are inside every row of `b` and of `y`.
                    unsafe {
                        let (vp, cp) = (v.as_ptr().add(k.start), c.as_ptr().add(k.start));
                        let bj = b.as_ptr().add(j);
                        let yp = y.as_mut_ptr().add((r - r0) * p + j);
                        match width {
                            16 => $tile::<4>(vp, cp, k.len(), bj, b_rs, b0, yp),
                            4 => $tile::<1>(vp, cp, k.len(), bj, b_rs, b0, yp),
                            n => {
                                for q in 0..n {
                                    let mut s = b0;
                                    for t in 0..k.len() {
                                        s += cvt(*vp.add(t))
                                            * *bj.add(*cp.add(t) as usize * b_rs + q);
                                    }
                                    *yp.add(q) = s;
                                }
                            }
                        }
                    }
                }
                j += width;
            }
        }

        /// One row's `4 * N` pixels: `N` accumulators over all of the row's `n` non-zeros.
        ///
        /// # Safety
        /// `v`, `c` address `n` elements; `b + c[t] * b_rs` addresses `4 * N` floats for each `t`;
        /// `y` addresses `4 * N` floats.
        #[target_feature(enable = "neon")]
        #[inline]
        unsafe fn $tile<const N: usize>(
            v: *const $vt,
            c: *const $it,
            n: usize,
            b: *const f32,
            b_rs: usize,
            b0: f32,
            y: *mut f32,
        ) {
            let cvt = $cvt;
            let mut acc = [vdupq_n_f32(b0); N];
            // SAFETY: function contract.
            unsafe {
                for t in 0..n {
                    let wv = cvt(*v.add(t));
                    let src = b.add(*c.add(t) as usize * b_rs);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = vfmaq_n_f32(*a, vld1q_f32(src.add(4 * i)), wv);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    vst1q_f32(y.add(4 * i), *a);
                }
            }
        }
    };
}

spmm_neon!(
    spmm_f32_u16_neon,
    tile_f32_u16,
    f32,
    F32,
    u16,
    U16,
    |v: f32| v
);
spmm_neon!(
    spmm_f32_u32_neon,
    tile_f32_u32,
    f32,
    F32,
    u32,
    U32,
    |v: f32| v
);
spmm_neon!(
    spmm_f16_u16_neon,
    tile_f16_u16,
    f16,
    F16,
    u16,
    U16,
    f16::to_f32
);
spmm_neon!(
    spmm_f16_u32_neon,
    tile_f16_u32,
    f16,
    F16,
    u32,
    U32,
    f16::to_f32
);
