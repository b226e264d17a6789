use super::{act_scalar, Activation, Bias, Elems, Isa, MatRef};

/// One GEMM implementation. `GEMM_KERNELS` lists them from most to least preferred; dispatch
/// takes the first that [`Isa::is_available`] on this CPU, tests and benches run all of them.
pub struct GemmKernel {
    pub name: &'static str,
    pub isa: Isa,
    run: fn(MatRef<'_>, MatRef<'_>, &mut [f32], usize, Bias<'_>, Activation, &mut [f32]),
}

impl GemmKernel {
    /// `c[i * ldc + j] = act(sum_k a(i, k) * b(k, j) + bias(i, j))` for `i < a.rows`,
    /// `j < b.cols`. Requires `a.cols == b.rows`, `ldc >= b.cols`, `c` long enough and
    /// `ws.len() >= gemm_workspace(m, n, k)`.
    pub fn run(&self, a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, bias: Bias<'_>, act: Activation, ws: &mut [f32]) {
        assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
        assert!(self.isa.is_available(), "gemm: kernel {} not supported on this CPU", self.name);
        (self.run)(a, b, c, ldc, bias, act, ws)
    }
}

pub static GEMM_KERNELS: &[GemmKernel] = &[GemmKernel { name: "gemm_f32_scalar", isa: Isa::Scalar, run: gemm_scalar }];

/// Scratch `gemm` needs for an `m × n × k` product.
pub fn gemm_workspace(_m: usize, _n: usize, _k: usize) -> usize {
    0
}

/// GEMM with the best kernel for this CPU; see [`GemmKernel::run`].
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, bias: Bias<'_>, act: Activation, ws: &mut [f32]) {
    let k = GEMM_KERNELS.iter().find(|k| k.isa.is_available()).unwrap_or(&GEMM_KERNELS[GEMM_KERNELS.len() - 1]);
    k.run(a, b, c, ldc, bias, act, ws)
}

fn gemm_scalar(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, bias: Bias<'_>, act: Activation, _ws: &mut [f32]) {
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = 0f32;
            for k in 0..a.cols {
                acc += a.at(i, k) * b.at(k, j);
            }
            c[i * ldc + j] = act_scalar(act, acc + bias.at(i, j));
        }
    }
}

/// Matrix-vector product for batch 1: `y[i] = act(sum_k a[i * lda + k] * x[k] + bias[i])`,
/// `a` row-major `m × k` with row stride `lda`.
pub fn gemv(a: Elems<'_>, lda: usize, m: usize, k: usize, x: &[f32], bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    for i in 0..m {
        let mut acc = 0f32;
        for (kk, xv) in x[..k].iter().enumerate() {
            acc += a.get_f32(i * lda + kk) * xv;
        }
        y[i] = act_scalar(act, acc + bias.map_or(0.0, |b| b[i]));
    }
}
