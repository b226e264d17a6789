//! Batch-1 matrix-vector product with 4×1 blocked CSR weights ([`BlockCsrView`] with
//! `block() == 4`): four consecutive output rows share each column index, so one load of
//! `x[col]` (broadcast) feeds four weights in one 4-lane FMA. Unstructured CSR needs one indirect
//! load per weight; this is what lets a block-pruned layer (`nap prune --block 4x1`) run faster
//! than unstructured CSR at the same density.

use core::ops::Range;

use super::{apply_act, Activation, Dtype, Isa};
use crate::format::IndexWidth;
use crate::model::BlockCsrView;

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Rows per block these kernels take.
pub const BLOCK: usize = 4;

/// Kernel contract: for block rows `b` in `brows` and each of their rows `r < w.rows()`:
/// `y[r - 4 * brows.start] = sum_{k in w.block_range(b)} values[4k + r % 4] * x[col_idx[k]] +
/// bias[r]` (no activation).
///
/// # Safety
/// `w.block() == 4`; `w`'s values and indices have the kernel's types; `brows.end <=
/// w.block_rows()`, `x.len() >= w.cols()`, `y` holds the rows of `brows`, `bias` (if any) has
/// `w.rows()` values; the CPU supports the kernel's [`Isa`].
pub(crate) type BspmvFn = unsafe fn(
    w: &BlockCsrView<'_>,
    brows: Range<usize>,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
);

/// One 4×1-blocked SpMV kernel for one (values, indices) storage pair.
pub struct BspmvKernel {
    pub name: &'static str,
    pub isa: Isa,
    pub dtype: Dtype,
    pub index: IndexWidth,
    run: BspmvFn,
}

macro_rules! bspmv_entry {
    ($name:literal, $isa:ident, $dtype:ident, $index:ident, $f:path) => {
        BspmvKernel {
            name: $name,
            isa: Isa::$isa,
            dtype: Dtype::$dtype,
            index: IndexWidth::$index,
            run: $f,
        }
    };
}

/// Every 4×1-blocked SpMV kernel, most preferred first; for each (dtype, index) pair the last
/// entry runs everywhere.
pub static BSPMV_KERNELS: &[BspmvKernel] = &[
    #[cfg(target_arch = "x86_64")]
    bspmv_entry!(
        "bspmv4_f32_u16_avx2fma",
        Avx2Fma,
        F32,
        U16,
        x86::bspmv_f32_u16_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    bspmv_entry!(
        "bspmv4_f32_u32_avx2fma",
        Avx2Fma,
        F32,
        U32,
        x86::bspmv_f32_u32_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    bspmv_entry!(
        "bspmv4_f16_u16_avx2f16c",
        Avx2FmaF16c,
        F16,
        U16,
        x86::bspmv_f16_u16_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    bspmv_entry!(
        "bspmv4_f16_u32_avx2f16c",
        Avx2FmaF16c,
        F16,
        U32,
        x86::bspmv_f16_u32_avx2
    ),
    #[cfg(target_arch = "aarch64")]
    bspmv_entry!(
        "bspmv4_f32_u16_neon",
        Neon,
        F32,
        U16,
        neon::bspmv_f32_u16_neon
    ),
    #[cfg(target_arch = "aarch64")]
    bspmv_entry!(
        "bspmv4_f32_u32_neon",
        Neon,
        F32,
        U32,
        neon::bspmv_f32_u32_neon
    ),
    #[cfg(target_arch = "aarch64")]
    bspmv_entry!(
        "bspmv4_f16_u16_neon",
        Neon,
        F16,
        U16,
        neon::bspmv_f16_u16_neon
    ),
    #[cfg(target_arch = "aarch64")]
    bspmv_entry!(
        "bspmv4_f16_u32_neon",
        Neon,
        F16,
        U32,
        neon::bspmv_f16_u32_neon
    ),
    bspmv_entry!(
        "bspmv4_f32_u16_scalar",
        Scalar,
        F32,
        U16,
        scalar::bspmv_scalar
    ),
    bspmv_entry!(
        "bspmv4_f32_u32_scalar",
        Scalar,
        F32,
        U32,
        scalar::bspmv_scalar
    ),
    bspmv_entry!(
        "bspmv4_f16_u16_scalar",
        Scalar,
        F16,
        U16,
        scalar::bspmv_scalar
    ),
    bspmv_entry!(
        "bspmv4_f16_u32_scalar",
        Scalar,
        F16,
        U32,
        scalar::bspmv_scalar
    ),
];

/// The kernel [`bspmv`] uses on this CPU for this storage.
pub fn bspmv_kernel(dtype: Dtype, index: IndexWidth) -> &'static BspmvKernel {
    BSPMV_KERNELS
        .iter()
        .find(|k| k.dtype == dtype && k.index == index && k.isa.is_available())
        .expect("a scalar bspmv kernel exists for every storage")
}

/// `y = act(W x + bias)` for all rows of a 4×1-blocked `w` with the best kernel for this CPU.
pub fn bspmv(
    w: &BlockCsrView<'_>,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    bspmv_kernel(w.values().dtype(), w.col_idx().width()).run(w, 0..w.block_rows(), x, bias, act, y)
}

impl BspmvKernel {
    /// `y[r - 4 * brows.start] = act(sum_k W[r, k] x[k] + bias[r])` for the rows `r <
    /// w.rows()` of block rows `brows`.
    ///
    /// Panics if `w` does not have 4-row blocks of the kernel's storage types, if `brows`
    /// exceeds `w`, if a slice is too short or if the CPU lacks the kernel's ISA. Never
    /// allocates.
    pub fn run(
        &self,
        w: &BlockCsrView<'_>,
        brows: Range<usize>,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) {
        assert_eq!(w.block(), BLOCK, "bspmv: kernels take {BLOCK}-row blocks");
        assert!(
            w.values().dtype() == self.dtype && w.col_idx().width() == self.index,
            "bspmv: kernel {} reads {:?} values with {:?} indices",
            self.name,
            self.dtype,
            self.index
        );
        assert!(
            self.isa.is_available(),
            "bspmv: kernel {} not supported on this CPU",
            self.name
        );
        if brows.is_empty() {
            return;
        }
        assert!(
            brows.end <= w.block_rows(),
            "bspmv: block rows beyond the matrix"
        );
        assert!(
            x.len() >= w.cols(),
            "bspmv: input shorter than the matrix's columns"
        );
        let n = (BLOCK * brows.end).min(w.rows()) - BLOCK * brows.start;
        assert!(y.len() >= n, "bspmv: output shorter than the rows");
        if let Some(b) = bias {
            assert!(b.len() >= w.rows(), "bspmv: bias shorter than the rows");
        }
        // SAFETY: block size, storage types, lengths and ISA were checked above; the blocked
        // CSR invariants hold for every `BlockCsrView`.
        unsafe { (self.run)(w, brows, x, bias, y) };
        apply_act(act, &mut y[..n]);
    }
}

/// Writes the four sums `s` of block row `b` (rows `4b..`, relative to `r0`) plus bias into `y`,
/// dropping rows past `rows`.
#[inline(always)]
fn store4(s: [f32; BLOCK], b: usize, r0: usize, rows: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    for (t, v) in s.iter().enumerate() {
        let r = BLOCK * b + t;
        if r < rows {
            y[r - r0] = v + bias.map_or(0.0, |bb| bb[r]);
        }
    }
}
