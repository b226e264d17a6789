//! Matrix-vector product for batch 1. Memory-bandwidth bound: every kernel streams several weight
//! rows at once into independent accumulators, so the loop is limited by loads, not by the
//! latency of one dependency chain.

use super::{act_scalar, Activation, Dtype, Elems, Isa};

#[cfg(target_arch = "aarch64")]
pub(super) mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
pub(super) mod x86;

/// Kernel contract: `y[i] = sum_p a[i * lda + p] * x[p] + bias[i]` for `i < m` (no activation).
///
/// # Safety
/// `a` has the kernel's dtype and holds `(m - 1) * lda + k` elements when `m > 0`;
/// `x.len() >= k`, `y.len() >= m`, `bias` (if any) has `m` values; the CPU supports the
/// kernel's [`Isa`].
pub(crate) type GemvFn = unsafe fn(
    a: Elems<'_>,
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
);

/// One GEMV implementation for one weight dtype. [`GEMV_KERNELS`] lists them from most to least
/// preferred.
pub struct GemvKernel {
    pub name: &'static str,
    pub isa: Isa,
    /// Weight element type this kernel reads.
    pub dtype: Dtype,
    /// Rows computed together.
    pub rows: usize,
    /// Whether the kernel computes in reduced precision (f16 arithmetic). Such kernels are never
    /// picked by default dispatch, which keeps "store f16, compute f32"; callers opt in with
    /// [`gemv_kernel_with`].
    pub reduced_precision: bool,
    run: GemvFn,
}

/// Every GEMV kernel, most preferred first; per dtype the last entry runs everywhere.
pub static GEMV_KERNELS: &[GemvKernel] = &[
    #[cfg(target_arch = "x86_64")]
    GemvKernel {
        name: "gemv_f32_4x32_avx512",
        isa: Isa::Avx512F,
        dtype: Dtype::F32,
        rows: 4,
        reduced_precision: false,
        run: x86::gemv_f32_4x32_avx512,
    },
    #[cfg(target_arch = "x86_64")]
    GemvKernel {
        name: "gemv_f32_4x16_avx2fma",
        isa: Isa::Avx2Fma,
        dtype: Dtype::F32,
        rows: 4,
        reduced_precision: false,
        run: x86::gemv_f32_4x16_avx2fma,
    },
    #[cfg(target_arch = "x86_64")]
    GemvKernel {
        name: "gemv_f16_4x16_avx2f16c",
        isa: Isa::Avx2FmaF16c,
        dtype: Dtype::F16,
        rows: 4,
        reduced_precision: false,
        run: x86::gemv_f16_4x16_avx2f16c,
    },
    #[cfg(target_arch = "aarch64")]
    GemvKernel {
        name: "gemv_f16_4x32_neonfp16",
        isa: Isa::NeonFp16,
        dtype: Dtype::F16,
        rows: 4,
        reduced_precision: true,
        run: neon::gemv_f16_4x32_neonfp16,
    },
    #[cfg(target_arch = "aarch64")]
    GemvKernel {
        name: "gemv_f32_4x8_neon",
        isa: Isa::Neon,
        dtype: Dtype::F32,
        rows: 4,
        reduced_precision: false,
        run: neon::gemv_f32_4x8_neon,
    },
    #[cfg(target_arch = "aarch64")]
    GemvKernel {
        name: "gemv_f16_4x8_neon",
        isa: Isa::Neon,
        dtype: Dtype::F16,
        rows: 4,
        reduced_precision: false,
        run: neon::gemv_f16_4x8_neon,
    },
    GemvKernel {
        name: "gemv_f32_4x1_scalar",
        isa: Isa::Scalar,
        dtype: Dtype::F32,
        rows: 4,
        reduced_precision: false,
        run: scalar::gemv_4x1_scalar,
    },
    GemvKernel {
        name: "gemv_f16_4x1_scalar",
        isa: Isa::Scalar,
        dtype: Dtype::F16,
        rows: 4,
        reduced_precision: false,
        run: scalar::gemv_4x1_scalar,
    },
];

/// The kernel [`gemv`] uses on this CPU for weights of `dtype` (f32 arithmetic only).
pub fn gemv_kernel(dtype: Dtype) -> &'static GemvKernel {
    gemv_kernel_with(dtype, false)
}

/// The most preferred kernel on this CPU for `dtype`, including reduced-precision kernels when
/// `allow_reduced` is set.
pub fn gemv_kernel_with(dtype: Dtype, allow_reduced: bool) -> &'static GemvKernel {
    GEMV_KERNELS
        .iter()
        .find(|k| {
            k.dtype == dtype && k.isa.is_available() && (allow_reduced || !k.reduced_precision)
        })
        .expect("a scalar gemv kernel exists for every dtype")
}

/// Matrix-vector product for batch 1 with the best kernel for this CPU; see [`GemvKernel::run`].
#[allow(clippy::too_many_arguments)]
pub fn gemv(
    a: Elems<'_>,
    lda: usize,
    m: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    gemv_kernel(a.dtype()).run(a, lda, m, k, x, bias, act, y)
}

impl GemvKernel {
    /// `y[i] = act(sum_p a[i * lda + p] * x[p] + bias[i])` for `i < m`: `a` is a row-major
    /// `m × k` weight matrix with row stride `lda >= k`, stored as f32 or f16 (f16 is converted
    /// to f32, except in [`Isa::NeonFp16`] kernels whose accuracy is documented on them).
    ///
    /// Panics if `a` has another dtype than the kernel, if a slice is too short or if the CPU
    /// lacks the kernel's ISA. Never allocates.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        a: Elems<'_>,
        lda: usize,
        m: usize,
        k: usize,
        x: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
    ) {
        assert_eq!(
            a.dtype(),
            self.dtype,
            "gemv: kernel {} reads {:?} weights",
            self.name,
            self.dtype
        );
        assert!(
            self.isa.is_available(),
            "gemv: kernel {} not supported on this CPU",
            self.name
        );
        assert!(y.len() >= m, "gemv: output shorter than m");
        if m == 0 {
            return;
        }
        assert!(lda >= k, "gemv: lda {lda} < k {k}");
        assert!(x.len() >= k, "gemv: input shorter than k");
        assert!(
            a.len() >= (m - 1) * lda + k,
            "gemv: weights shorter than (m - 1) * lda + k"
        );
        if let Some(b) = bias {
            assert!(b.len() >= m, "gemv: bias shorter than m");
        }
        // SAFETY: dtype, lengths and ISA were checked above.
        unsafe { (self.run)(a, lda, m, k, x, bias, y) };
        if act != Activation::None {
            y[..m].iter_mut().for_each(|v| *v = act_scalar(act, *v));
        }
    }
}
