//! Compute kernels. Contracts are stated on each function; every kernel family has a scalar
//! version compiled on every target.
//!
//! Each family has one static registry ([`GEMM_KERNELS`], [`GEMV_KERNELS`],
//! [`DEPTHWISE_KERNELS`], [`POOL_KERNELS`], [`SPMV_KERNELS`], [`SPMM_KERNELS`],
//! [`BSPMV_KERNELS`], [`OCGEMM_KERNELS`], [`WINOGRAD_KERNELS`]) listed from most to least preferred. Dispatch takes
//! the first entry whose [`Isa`] is available on the running CPU; tests and benches iterate every
//! available entry, so a kernel added to a registry is dispatched, tested and benchmarked without
//! further edits.
//! Kernel names follow `<op>_<dtype>_<MR>x<NR>_<isa>`.

mod act;
mod bspmv;
mod conv;
mod dw3x3;
mod gemm;
mod gemv;
mod ocgemm;
mod pool;
mod spmm;
mod spmv;
mod winograd;

pub(crate) use act::act_clamp;
pub use act::{act_scalar, apply_act};
pub use bspmv::{bspmv, bspmv_kernel, BspmvKernel, BLOCK as BSPMV_BLOCK, BSPMV_KERNELS};
pub(crate) use conv::crop_grid;
pub(crate) use conv::phase_rows;
pub use conv::{
    crop_rows, depthwise_conv2d, depthwise_conv2d_planes, depthwise_kernel, im2col, im2col_len,
    im2col_rows, pad_image, phase_image, ConvGeom, DepthwiseKernel, Planes, DEPTHWISE_KERNELS,
};
pub use gemm::{
    gemm, gemm_b, gemm_kernel, gemm_workspace, pack_a_panels, AOperand, BOperand, Crop, GemmKernel,
    PackedA, GEMM_KERNELS,
};
pub use gemv::{gemv, gemv_kernel, gemv_kernel_with, GemvKernel, GEMV_KERNELS};
pub use ocgemm::{channel_offsets, ocgemm_kernel, OcGemmKernel, Pixels, OCGEMM_KERNELS};
pub use pool::{
    avgpool2d, max2x2_fits, maxpool2d, maxpool2x2_grid, pool2d, PlaneLayout, PoolKernel, PoolOp,
    POOL_KERNELS,
};
pub use spmm::{spmm, spmm_kernel, spmm_strided, SpmmKernel, SPMM_KERNELS};
pub use spmv::{spmv, spmv_kernel, SpmvKernel, SPMV_KERNELS};
pub use winograd::{
    transform_weights as winograd_weights, winograd_kernel, WinoGeom, WinogradKernel,
    WINOGRAD_KERNELS,
};

pub use crate::format::Activation;
pub use crate::model::Elems;

/// A strided read-only matrix of f32 or f16 elements: element `(i, j)` is
/// `data[i * rs + j * cs]`. Every addressed element must lie inside `data`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: Elems<'a>,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `rows × cols` matrix with contiguous rows.
    pub fn row_major(data: Elems<'a>, rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data.get_f32(i * self.rs + j * self.cs)
    }

    /// Panics unless every element `(i, j)`, `i < rows`, `j < cols`, lies inside `data`; the
    /// kernels rely on this before reading through raw pointers.
    pub(crate) fn check_bounds(&self, what: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1).checked_mul(self.rs).and_then(|r| {
            (self.cols - 1)
                .checked_mul(self.cs)
                .and_then(|c| r.checked_add(c))
        });
        assert!(
            matches!(last, Some(l) if l < self.data.len()),
            "{what}: {}x{} matrix with strides ({}, {}) exceeds its {} elements",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// Bias added before the activation: one value per output row or per output column.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    None,
    Row(&'a [f32]),
    Col(&'a [f32]),
}

impl Bias<'_> {
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        match self {
            Bias::None => 0.0,
            Bias::Row(b) => b[i],
            Bias::Col(b) => b[j],
        }
    }
}

/// Instruction sets the runtime has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2Fma,
    /// x86-64 AVX2 + FMA + F16C (f16 <-> f32 conversion).
    Avx2FmaF16c,
    /// x86-64 AVX-512 Foundation (with AVX2 and FMA, which every AVX-512 CPU has).
    Avx512F,
    /// aarch64 Advanced SIMD (baseline on aarch64).
    Neon,
    /// aarch64 Advanced SIMD with half-precision arithmetic (FEAT_FP16, ARMv8.2+); detected at
    /// run time, so needs feature `std`.
    NeonFp16,
}

impl Isa {
    /// Whether this CPU can run kernels of this instruction set. Without feature `std` only
    /// statically enabled target features count.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2Fma => x86_has_avx2_fma(),
            Isa::Avx2FmaF16c => x86_has_avx2_fma() && x86_has_f16c(),
            Isa::Avx512F => x86_has_avx512f(),
            Isa::Neon => cfg!(target_arch = "aarch64"),
            Isa::NeonFp16 => aarch64_has_fp16(),
        }
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn x86_has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn x86_has_avx512f() -> bool {
    std::is_x86_feature_detected!("avx512f") && x86_has_avx2_fma()
}

#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
fn x86_has_avx512f() -> bool {
    cfg!(all(
        target_feature = "avx512f",
        target_feature = "avx2",
        target_feature = "fma"
    ))
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_has_avx512f() -> bool {
    false
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn x86_has_f16c() -> bool {
    std::is_x86_feature_detected!("f16c")
}

#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
fn x86_has_avx2_fma() -> bool {
    cfg!(all(target_feature = "avx2", target_feature = "fma"))
}

#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
fn x86_has_f16c() -> bool {
    cfg!(target_feature = "f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_has_avx2_fma() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_has_f16c() -> bool {
    false
}

#[cfg(all(target_arch = "aarch64", feature = "std"))]
fn aarch64_has_fp16() -> bool {
    std::arch::is_aarch64_feature_detected!("fp16")
}

#[cfg(not(all(target_arch = "aarch64", feature = "std")))]
fn aarch64_has_fp16() -> bool {
    cfg!(all(target_arch = "aarch64", target_feature = "fp16"))
}

/// Element type of a kernel's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
}

impl Elems<'_> {
    pub(crate) fn dtype(&self) -> Dtype {
        match self {
            Elems::F32(_) => Dtype::F32,
            Elems::F16(_) => Dtype::F16,
        }
    }
}
