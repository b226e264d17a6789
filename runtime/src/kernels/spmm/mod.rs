//! Sparse × dense matrix product for convolutions and batches: `Y = act(W B + bias)` with `W` in
//! CSR ([`CsrView`], `[M, K]`) and `B` dense row-major `[K, P]`, `Y` row-major `[M, P]`.
//!
//! The layout of XNNPACK's sparse kernels ("Fast Sparse ConvNets", Elsen et al. 2020): `B` is a
//! channel-major activation (`P` pixels per input channel, the im2col patches or the input of a
//! 1×1 convolution itself), so every non-zero multiplies a contiguous run of pixels. Each kernel
//! walks tiles of pixels, keeps the tile's outputs of one row in registers over all of that row's
//! non-zeros (one broadcast of the weight, vector loads of `B`, FMAs) and stores them once.

use core::ops::Range;

use super::{apply_act, Activation, Dtype, Isa};
use crate::format::IndexWidth;
use crate::model::CsrView;

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Kernel contract: `y[(i - rows.start) * p + j] = sum_{k in W.row_range(i)} values[k] *
/// b[col_idx[k] * b_rs + j] + bias[i]` for `i` in `rows`, `j < p` (no activation).
///
/// # Safety
/// `w`'s values and indices have the kernel's types; `rows.end <= w.rows()`,
/// `b.len() >= (w.cols() - 1) * b_rs + p`, `y.len() >= rows.len() * p`, `bias` (if any) has at
/// least `rows.end` values; the CPU supports the kernel's [`Isa`].
pub(crate) type SpmmFn = unsafe fn(
    w: &CsrView<'_>,
    rows: Range<usize>,
    b: &[f32],
    b_rs: usize,
    p: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
);

/// One sparse × dense kernel for one (values, indices) storage pair.
pub struct SpmmKernel {
    pub name: &'static str,
    pub isa: Isa,
    pub dtype: Dtype,
    pub index: IndexWidth,
    /// Most pixels (columns of `B`) per register tile.
    pub tile: usize,
    run: SpmmFn,
}

macro_rules! spmm_entry {
    ($name:literal, $isa:ident, $dtype:ident, $index:ident, $tile:literal, $f:path) => {
        SpmmKernel {
            name: $name,
            isa: Isa::$isa,
            dtype: Dtype::$dtype,
            index: IndexWidth::$index,
            tile: $tile,
            run: $f,
        }
    };
}

/// Every SpMM kernel, most preferred first; for each (dtype, index) pair the last entry runs
/// everywhere.
pub static SPMM_KERNELS: &[SpmmKernel] = &[
    #[cfg(target_arch = "x86_64")]
    spmm_entry!(
        "spmm_f32_u16_1x64_avx2fma",
        Avx2Fma,
        F32,
        U16,
        64,
        x86::spmm_f32_u16_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    spmm_entry!(
        "spmm_f32_u32_1x64_avx2fma",
        Avx2Fma,
        F32,
        U32,
        64,
        x86::spmm_f32_u32_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    spmm_entry!(
        "spmm_f16_u16_1x64_avx2f16c",
        Avx2FmaF16c,
        F16,
        U16,
        64,
        x86::spmm_f16_u16_avx2
    ),
    #[cfg(target_arch = "x86_64")]
    spmm_entry!(
        "spmm_f16_u32_1x64_avx2f16c",
        Avx2FmaF16c,
        F16,
        U32,
        64,
        x86::spmm_f16_u32_avx2
    ),
    #[cfg(target_arch = "aarch64")]
    spmm_entry!(
        "spmm_f32_u16_1x16_neon",
        Neon,
        F32,
        U16,
        16,
        neon::spmm_f32_u16_neon
    ),
    #[cfg(target_arch = "aarch64")]
    spmm_entry!(
        "spmm_f32_u32_1x16_neon",
        Neon,
        F32,
        U32,
        16,
        neon::spmm_f32_u32_neon
    ),
    #[cfg(target_arch = "aarch64")]
    spmm_entry!(
        "spmm_f16_u16_1x16_neon",
        Neon,
        F16,
        U16,
        16,
        neon::spmm_f16_u16_neon
    ),
    #[cfg(target_arch = "aarch64")]
    spmm_entry!(
        "spmm_f16_u32_1x16_neon",
        Neon,
        F16,
        U32,
        16,
        neon::spmm_f16_u32_neon
    ),
    spmm_entry!(
        "spmm_f32_u16_1x8_scalar",
        Scalar,
        F32,
        U16,
        8,
        scalar::spmm_scalar
    ),
    spmm_entry!(
        "spmm_f32_u32_1x8_scalar",
        Scalar,
        F32,
        U32,
        8,
        scalar::spmm_scalar
    ),
    spmm_entry!(
        "spmm_f16_u16_1x8_scalar",
        Scalar,
        F16,
        U16,
        8,
        scalar::spmm_scalar
    ),
    spmm_entry!(
        "spmm_f16_u32_1x8_scalar",
        Scalar,
        F16,
        U32,
        8,
        scalar::spmm_scalar
    ),
];

/// The kernel [`spmm`] uses on this CPU for this storage.
pub fn spmm_kernel(dtype: Dtype, index: IndexWidth) -> &'static SpmmKernel {
    SPMM_KERNELS
        .iter()
        .find(|k| k.dtype == dtype && k.index == index && k.isa.is_available())
        .expect("a scalar spmm kernel exists for every storage")
}

/// `Y = act(W[rows] B + bias[rows])` with the best kernel for this CPU; see [`SpmmKernel::run`].
pub fn spmm(
    w: &CsrView<'_>,
    rows: Range<usize>,
    b: &[f32],
    p: usize,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    spmm_kernel(w.values().dtype(), w.col_idx().width()).run(w, rows, b, p, bias, act, y)
}

/// [`spmm`] with `B`'s rows `b_rs` floats apart; see [`SpmmKernel::run_strided`].
#[allow(clippy::too_many_arguments)]
pub fn spmm_strided(
    w: &CsrView<'_>,
    rows: Range<usize>,
    b: &[f32],
    b_rs: usize,
    p: usize,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    spmm_kernel(w.values().dtype(), w.col_idx().width())
        .run_strided(w, rows, b, b_rs, p, bias, act, y)
}

impl SpmmKernel {
    /// `y[(i - rows.start) * p + j] = act(sum_k W[i, k] b[k * p + j] + bias[i])` for `i` in
    /// `rows`, `j < p`.
    ///
    /// Panics if `w` is stored in other types than the kernel reads, if `rows` exceeds `w`, if a
    /// slice is too short or if the CPU lacks the kernel's ISA. Never allocates.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        w: &CsrView<'_>,
        rows: Range<usize>,
        b: &[f32],
        p: usize,
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) {
        self.run_strided(w, rows, b, p, p, bias, act, y)
    }

    /// [`SpmmKernel::run`] with row `k` of `B` at `b[k * b_rs..][..p]`: `b_rs = p` is a
    /// row-major `[K, p]` matrix; `b_rs = 1` with column indices that are offsets reads rows
    /// anywhere in `b` (the implicit patch matrix of a convolution).
    #[allow(clippy::too_many_arguments)]
    pub fn run_strided(
        &self,
        w: &CsrView<'_>,
        rows: Range<usize>,
        b: &[f32],
        b_rs: usize,
        p: usize,
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) {
        assert!(
            w.values().dtype() == self.dtype && w.col_idx().width() == self.index,
            "spmm: kernel {} reads {:?} values with {:?} indices",
            self.name,
            self.dtype,
            self.index
        );
        assert!(
            self.isa.is_available(),
            "spmm: kernel {} not supported on this CPU",
            self.name
        );
        if rows.is_empty() || p == 0 {
            return;
        }
        assert!(rows.end <= w.rows(), "spmm: rows beyond the matrix");
        let need_b = w
            .cols()
            .saturating_sub(1)
            .checked_mul(b_rs)
            .and_then(|n| n.checked_add(p))
            .expect("spmm: B's extent overflows");
        assert!(
            w.cols() == 0 || b.len() >= need_b,
            "spmm: B shorter than (cols - 1) * b_rs + p"
        );
        let n = rows.len() * p;
        assert!(y.len() >= n, "spmm: output shorter than rows * p");
        if let Some(bb) = bias {
            assert!(bb.len() >= rows.end, "spmm: bias shorter than the rows");
        }
        // SAFETY: storage types, lengths and ISA were checked above; the CSR invariants hold for
        // every `CsrView`.
        unsafe { (self.run)(w, rows, b, b_rs, p, bias, y) };
        apply_act(act, &mut y[..n]);
    }
}
