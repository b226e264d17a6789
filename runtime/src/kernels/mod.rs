//! Compute kernels. Contracts are stated on each function; every kernel has a scalar version that
//! serves as the reference in tests.

mod act;
mod conv;
mod gemm;

pub use act::{act_scalar, apply_act};
pub use conv::{depthwise_conv2d, im2col, im2col_len, ConvGeom};
pub use gemm::{gemm, gemm_workspace, gemv, GemmKernel, GEMM_KERNELS};

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
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data.get_f32(i * self.rs + j * self.cs)
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
    Avx2Fma,
    Neon,
}

impl Isa {
    /// Whether this CPU can run kernels of this instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            Isa::Avx2Fma => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
            Isa::Avx2Fma => cfg!(all(target_feature = "avx2", target_feature = "fma")),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma => false,
            Isa::Neon => cfg!(target_arch = "aarch64"),
        }
    }
}
