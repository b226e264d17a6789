//! Sparse matrix-vector product for batch 1: `y = act(W x + b)` with `W` in CSR ([`CsrView`]).
//!
//! Like the dense GEMV this is bound by memory traffic, plus one indirect load of `x` per
//! non-zero. Every kernel keeps several independent accumulators per row (8-lane gathers on AVX2,
//! 4-lane lane loads on NEON, four scalars elsewhere), so a row is never one serial chain of
//! dependent additions, and rows are independent so the CPU overlaps them.
//!
//! Column indices are stored as u16 (when the matrix has at most 65,536 columns) or u32, values as
//! f32 or f16 (widened to f32; arithmetic is always f32). Each (values, indices) pair has its own
//! kernel; [`SPMV_KERNELS`] lists them most preferred first.

use core::ops::Range;

use super::{apply_act, Activation, Dtype, Isa};
use crate::format::IndexWidth;
use crate::model::CsrView;

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Kernel contract: `y[i - rows.start] = sum_{k in W.row_range(i)} values[k] * x[col_idx[k]] +
/// bias[i]` for `i` in `rows` (no activation).
///
/// # Safety
/// `w`'s values and indices have the kernel's types (the [`CsrView`] invariants hold for every
/// view); `rows.end <= w.rows()`, `x.len() >= w.cols()`, `y.len() >= rows.len()`, `bias` (if any)
/// has at least `rows.end` values; the CPU supports the kernel's [`Isa`].
pub(crate) type SpmvFn =
    unsafe fn(w: &CsrView<'_>, rows: Range<usize>, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]);

/// One sparse matrix-vector kernel for one (values, indices) storage pair.
pub struct SpmvKernel {
    pub name: &'static str,
    pub isa: Isa,
    /// Value type this kernel reads.
    pub dtype: Dtype,
    /// Column index width this kernel reads.
    pub index: IndexWidth,
    /// Non-zeros of one row combined per step.
    pub lanes: usize,
    run: SpmvFn,
}

macro_rules! spmv_entry {
    ($name:literal, $isa:ident, $dtype:ident, $index:ident, $lanes:literal, $f:path) => {
        SpmvKernel {
            name: $name,
            isa: Isa::$isa,
            dtype: Dtype::$dtype,
            index: IndexWidth::$index,
            lanes: $lanes,
            run: $f,
        }
    };
}

/// Every SpMV kernel, most preferred first; for each (dtype, index) pair the last entry runs
/// everywhere.
pub static SPMV_KERNELS: &[SpmvKernel] = &[
    #[cfg(target_arch = "x86_64")]
    spmv_entry!(
        "spmv_f32_u16_1x16_avx2fma",
        Avx2Fma,
        F32,
        U16,
        16,
        x86::spmv_f32_u16_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    spmv_entry!(
        "spmv_f32_u32_1x16_avx2fma",
        Avx2Fma,
        F32,
        U32,
        16,
        x86::spmv_f32_u32_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    spmv_entry!(
        "spmv_f16_u16_1x16_avx2f16c",
        Avx2FmaF16c,
        F16,
        U16,
        16,
        x86::spmv_f16_u16_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    spmv_entry!(
        "spmv_f16_u32_1x16_avx2f16c",
        Avx2FmaF16c,
        F16,
        U32,
        16,
        x86::spmv_f16_u32_avx2
    ),
    #[cfg(target_arch = "aarch64")]
    spmv_entry!(
        "spmv_f32_u16_1x8_neon",
        Neon,
        F32,
        U16,
        8,
        neon::spmv_f32_u16_neon
    ),
    #[cfg(target_arch = "aarch64")]
    spmv_entry!(
        "spmv_f32_u32_1x8_neon",
        Neon,
        F32,
        U32,
        8,
        neon::spmv_f32_u32_neon
    ),
    #[cfg(target_arch = "aarch64")]
    spmv_entry!(
        "spmv_f16_u16_1x8_neon",
        Neon,
        F16,
        U16,
        8,
        neon::spmv_f16_u16_neon
    ),
    #[cfg(target_arch = "aarch64")]
    spmv_entry!(
        "spmv_f16_u32_1x8_neon",
        Neon,
        F16,
        U32,
        8,
        neon::spmv_f16_u32_neon
    ),
    spmv_entry!(
        "spmv_f32_u16_1x4_scalar",
        Scalar,
        F32,
        U16,
        4,
        scalar::spmv_scalar
    ),
    spmv_entry!(
        "spmv_f32_u32_1x4_scalar",
        Scalar,
        F32,
        U32,
        4,
        scalar::spmv_scalar
    ),
    spmv_entry!(
        "spmv_f16_u16_1x4_scalar",
        Scalar,
        F16,
        U16,
        4,
        scalar::spmv_scalar
    ),
    spmv_entry!(
        "spmv_f16_u32_1x4_scalar",
        Scalar,
        F16,
        U32,
        4,
        scalar::spmv_scalar
    ),
];

/// The kernel [`spmv`] uses on this CPU for this storage.
pub fn spmv_kernel(dtype: Dtype, index: IndexWidth) -> &'static SpmvKernel {
    SPMV_KERNELS
        .iter()
        .find(|k| k.dtype == dtype && k.index == index && k.isa.is_available())
        .expect("a scalar spmv kernel exists for every storage")
}

/// `y = act(W x + bias)` for all rows of `w` with the best kernel for this CPU; see
/// [`SpmvKernel::run`].
pub fn spmv(w: &CsrView<'_>, x: &[f32], bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    spmv_kernel(w.values().dtype(), w.col_idx().width()).run(w, 0..w.rows(), x, bias, act, y)
}

impl SpmvKernel {
    /// `y[i - rows.start] = act(sum_k W[i, k] x[k] + bias[i])` for `i` in `rows`.
    ///
    /// Panics if `w` is stored in other types than the kernel reads, if `rows` exceeds `w`, if a
    /// slice is too short or if the CPU lacks the kernel's ISA. Never allocates.
    pub fn run(
        &self,
        w: &CsrView<'_>,
        rows: Range<usize>,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) {
        assert!(
            w.values().dtype() == self.dtype && w.col_idx().width() == self.index,
            "spmv: kernel {} reads {:?} values with {:?} indices",
            self.name,
            self.dtype,
            self.index
        );
        assert!(
            self.isa.is_available(),
            "spmv: kernel {} not supported on this CPU",
            self.name
        );
        if rows.is_empty() {
            return;
        }
        assert!(rows.end <= w.rows(), "spmv: rows beyond the matrix");
        assert!(
            x.len() >= w.cols(),
            "spmv: input shorter than the matrix's columns"
        );
        assert!(y.len() >= rows.len(), "spmv: output shorter than the rows");
        if let Some(b) = bias {
            assert!(b.len() >= rows.end, "spmv: bias shorter than the rows");
        }
        let n = rows.len();
        // SAFETY: storage types, lengths and ISA were checked above; the CSR invariants hold for
        // every `CsrView`.
        unsafe { (self.run)(w, rows, x, bias, y) };
        apply_act(act, &mut y[..n]);
    }
}
