//! Graph operations, one module each: the op's attributes (part of the file format), its shape
//! inference, its cost, and its planned kernel.
//!
//! [`Op`] is the compile-time list of operations; [`Op::def`] is the one `match` over it, and
//! everything else (validation, planning, execution, statistics) goes through [`OpDef`]. Adding
//! an op means one module here, one variant in [`Op`] (appended, so older files keep their
//! encoding) and one arm in [`Op::def`].

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Debug;

use crate::error::{Error, Result};
use crate::exec::SparsePolicy;
use crate::format::{Op, TensorId};
use crate::kernels::{self, ConvGeom};
use crate::model::{Model, TensorView};
use crate::pool::Pool;

mod act;
mod add;
mod attention;
mod batchnorm;
mod concat;
mod conv2d;
mod conv_transpose2d;
pub(crate) mod fused;
mod global_avg_pool;
mod layer_norm;
mod linear;
mod lrn;
mod mul;
mod pad;
mod pool;
mod reshape;
mod slice;
mod softmax;
mod transpose;
mod upsample;

pub use add::Add;
pub use attention::Attention;
pub use batchnorm::BatchNorm;
pub use concat::Concat;
pub use conv2d::Conv2d;
pub use conv_transpose2d::ConvTranspose2d;
pub use global_avg_pool::GlobalAvgPool;
pub use layer_norm::LayerNorm;
pub use linear::{Linear, LinearRows};
pub use lrn::Lrn;
pub use mul::Mul;
pub use pad::Pad;
pub use pool::{AvgPool2d, AvgPool2dUneven, MaxPool2d};
pub use reshape::{Flatten, Reshape};
pub use slice::Slice;
pub use softmax::Softmax;
pub use transpose::Transpose;
pub use upsample::Upsample;

/// What every graph operation provides.
pub trait OpDef: Debug + Sync {
    /// Output shape (per example) from the input shapes; checks the op's tensors and attributes.
    fn infer(&self, cx: &InferCx<'_>, ins: &[&[u32]]) -> Result<Vec<u32>>;

    /// Short name with the attributes a reader needs to tell layers apart, e.g. `Conv2d(g1)+Relu`.
    fn label(&self) -> String;

    /// Floating-point operations per example: 2 per multiply-add of a stored weight (all of a
    /// dense tensor, the non-zeros of a CSR one, every block entry of a blocked one) and 2 per
    /// output element for element-wise arithmetic; 0 for data movement. `ins` and `out` are the
    /// node's input and output shapes. Returns
    /// `(as stored, with every weight counted)`.
    fn flops(&self, _model: &Model<'_>, _ins: &[&[u32]], _out: &[u32]) -> (u64, u64) {
        (0, 0)
    }

    /// Prepares the op's kernel for a session: converts parameters, chooses kernels and states
    /// the scratch space it needs.
    fn plan(&self, cx: &mut PlanCx<'_, '_>) -> Result<Box<dyn Kernel>>;
}

/// A planned op, ready to run on a batch.
pub trait Kernel: Debug + Send + Sync {
    /// Computes the output `y` (`batch` examples back to back) from the inputs.
    fn run(&self, cx: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]);

    /// Whether a sparse weight was expanded to dense when planning (see [`SparsePolicy`]).
    fn expanded(&self) -> bool {
        false
    }

    /// Which of the op's algorithms runs it, where it has several (a convolution:
    /// `winograd_f4`, `channels_in_lanes`, `implicit_gemm`, ...); empty otherwise.
    fn method(&self) -> &'static str {
        ""
    }

    /// Fuses the 2×2, stride-2, unpadded max pooling of geometry `g` (over this kernel's output)
    /// after this kernel, so that it writes the pooled map, where it can; returns whether it
    /// did (otherwise the kernel is unchanged).
    fn fuse_max_pool(&mut self, g: ConvGeom) -> bool {
        let _ = g;
        false
    }
}

impl Op {
    /// The op's implementation: the one `match` over the list of operations.
    pub fn def(&self) -> &dyn OpDef {
        match self {
            Op::Linear(o) => o,
            Op::Conv2d(o) => o,
            Op::BatchNorm(o) => o,
            Op::Act(a) => a,
            Op::MaxPool2d(o) => o,
            Op::AvgPool2d(o) => o,
            Op::GlobalAvgPool => &GlobalAvgPool,
            Op::Add(o) => o,
            Op::Concat => &Concat,
            Op::Flatten => &Flatten,
            Op::Reshape(o) => o,
            Op::Softmax => &Softmax,
            Op::Mul => &Mul,
            Op::Upsample(o) => o,
            Op::ConvTranspose2d(o) => o,
            Op::Pad(o) => o,
            Op::Transpose(o) => o,
            Op::Lrn(o) => o,
            Op::AvgPool2dUneven(o) => o,
            Op::LinearRows(o) => o,
            Op::LayerNorm(o) => o,
            Op::Slice(o) => o,
            Op::Attention(o) => o,
        }
    }
}

/// What shape inference needs to know about the tensor table.
pub trait TensorTable {
    /// Shape of tensor `id`, `None` if it does not exist.
    fn tensor_shape(&self, id: TensorId) -> Option<&[u32]>;
    /// Whether tensor `id` is stored dense.
    fn tensor_is_dense(&self, id: TensorId) -> bool;
}

/// The node under inference and the tensors it may refer to; builds the typed errors.
pub struct InferCx<'a> {
    pub tensors: &'a dyn TensorTable,
    pub node: &'a str,
}

impl InferCx<'_> {
    pub fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadGraph {
            node: self.node.to_string(),
            reason: reason.into(),
        }
    }

    pub fn arity(&self, ins: &[&[u32]], n: usize) -> Result<()> {
        if ins.len() == n {
            Ok(())
        } else {
            Err(self.bad(format!("expects {n} inputs, got {}", ins.len())))
        }
    }

    pub fn tensor(&self, id: TensorId) -> Result<&[u32]> {
        self.tensors
            .tensor_shape(id)
            .ok_or_else(|| self.bad(format!("tensor {id} does not exist")))
    }

    /// Checks that `id` has shape `want` and is stored dense (parameter vectors are).
    pub fn dense_vector(&self, id: TensorId, want: &[u32], what: &str) -> Result<()> {
        let t = self.tensor(id)?;
        if t != want {
            return Err(self.bad(format!(
                "{what} (tensor {id}) has shape {t:?}, expected {want:?}"
            )));
        }
        if !self.tensors.tensor_is_dense(id) {
            return Err(self.bad("parameter vectors must be stored dense"));
        }
        Ok(())
    }

    pub fn chw(&self, s: &[u32]) -> Result<[u32; 3]> {
        match s {
            [c, hh, w] => Ok([*c, *hh, *w]),
            _ => Err(self.bad(format!("expects a [C, H, W] input, got {s:?}"))),
        }
    }
}

/// Output size of a sliding window along one axis, `None` if the window does not fit.
pub fn window_out(input: u32, kernel: u32, stride: u32, pad: u32, dilation: u32) -> Option<u32> {
    if stride == 0 || kernel == 0 || dilation == 0 {
        return None;
    }
    let span = (dilation as u64) * (kernel as u64 - 1) + 1;
    let padded = input as u64 + 2 * pad as u64;
    if padded < span {
        return None;
    }
    u32::try_from((padded - span) / stride as u64 + 1).ok()
}

/// A range of the session's converted parameters.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    off: usize,
    len: usize,
}

impl Range {
    pub fn of(self, params: &[f32]) -> &[f32] {
        &params[self.off..self.off + self.len]
    }
}

/// Planning state shared by the ops of one session.
pub struct PlanCx<'a, 'm> {
    pub model: &'a Model<'m>,
    pub batch: usize,
    /// Threads of the session.
    pub threads: usize,
    pub policy: SparsePolicy,
    /// [`crate::SessionOptions::pack_weights`].
    pub pack_weights: bool,
    /// [`crate::SessionOptions::winograd`].
    pub winograd: bool,
    /// Most floats the session's converted parameters may reach: its memory limit less the
    /// other buffers planned so far.
    pub param_limit: usize,
    /// Input shapes and output shape of the node being planned.
    pub ins: &'a [&'a [u32]],
    pub out: &'a [u32],
    pub(crate) params: &'a mut Vec<f32>,
    pub(crate) scratch_len: &'a mut usize,
    pub(crate) ws_len: &'a mut usize,
}

impl PlanCx<'_, '_> {
    /// Tensor `id` converted to f32 (densified if sparse) and appended to the parameters; an
    /// error, before allocating, if that would pass [`PlanCx::param_limit`].
    pub fn dense_f32(&mut self, id: TensorId) -> Result<Range> {
        let off = self.params.len();
        let v = self.model.tensor(id);
        let n = v.numel().ok_or(Error::Overflow("tensor shape"))?;
        if n > self.param_limit.saturating_sub(off) {
            return Err(Error::TooLarge {
                what: "session buffers with a weight converted to f32 (bytes)",
                size: (off as u64 + n as u64).saturating_mul(4),
                limit: (self.param_limit as u64).saturating_mul(4),
            });
        }
        match v {
            TensorView::Dense(e) => self.params.extend((0..e.len()).map(|i| e.get_f32(i))),
            v => {
                self.params.resize(off + n, 0.0);
                v.scatter_into(&mut self.params[off..]);
            }
        }
        Ok(Range { off, len: n })
    }

    /// Appends computed parameters.
    pub fn push_params(&mut self, values: impl IntoIterator<Item = f32>) -> Range {
        let off = self.params.len();
        self.params.extend(values);
        Range {
            off,
            len: self.params.len() - off,
        }
    }

    pub fn params(&self) -> &[f32] {
        self.params
    }

    /// `len` zeroed floats appended to the parameters for a kernel to fill, or `None` where
    /// they would pass [`PlanCx::param_limit`] (for copies a kernel can do without).
    pub fn try_alloc_params(&mut self, len: usize) -> Option<(Range, &mut [f32])> {
        let off = self.params.len();
        if len > self.param_limit.saturating_sub(off) {
            return None;
        }
        self.params.resize(off + len, 0.0);
        Some((Range { off, len }, &mut self.params[off..]))
    }

    /// Weight `id` expanded to a dense f32 copy when the session should run it dense: a CSR
    /// weight denser than `limit` (kept sparse if the copy would not fit in
    /// [`PlanCx::param_limit`]), or a blocked-CSR weight that no blocked kernel runs here
    /// (`blocks_ok`, the blocked limit where a blocked kernel applies, is `None`; blocks other
    /// than 4×1; or denser than that limit), an error if it does not fit.
    pub fn densify(
        &mut self,
        id: TensorId,
        limit: f32,
        blocks_ok: Option<f32>,
    ) -> Result<Option<Range>> {
        let room = self.param_limit.saturating_sub(self.params.len());
        match self.model.tensor(id) {
            // Kept sparse when the copy does not fit.
            TensorView::Csr(c) => Ok(match c.rows().checked_mul(c.cols()) {
                Some(n) if n <= room && c.nnz() as f64 > limit as f64 * n as f64 => {
                    Some(self.dense_f32(id)?)
                }
                _ => None,
            }),
            TensorView::BlockCsr(b) => {
                let n = b
                    .rows()
                    .checked_mul(b.cols())
                    .ok_or(Error::Overflow("tensor shape"))?;
                let stored = b.values().len() as f64;
                if blocks_ok.is_some_and(|l| {
                    b.block() == kernels::BSPMV_BLOCK && stored <= l as f64 * n as f64
                }) {
                    return Ok(None);
                }
                Ok(Some(self.dense_f32(id)?))
            }
            TensorView::Dense(_) => Ok(None),
        }
    }

    /// Reserves `len` floats of scratch shared by all ops (used one op at a time).
    pub fn need_scratch(&mut self, len: usize) {
        *self.scratch_len = (*self.scratch_len).max(len);
    }

    /// Reserves a GEMM workspace of `len` floats per thread.
    pub fn need_gemm_ws(&mut self, len: usize) {
        *self.ws_len = (*self.ws_len).max(len);
    }

    /// Window geometry from the node's `[C, H, W]` input and output shapes.
    pub fn geom(&self, k: [u32; 2], s: [u32; 2], p: [u32; 2], d: [u32; 2]) -> ConvGeom {
        let u = |x: u32| x as usize;
        let (input, output) = (self.ins[0], self.out);
        ConvGeom {
            c: u(input[0]),
            h: u(input[1]),
            w: u(input[2]),
            kh: u(k[0]),
            kw: u(k[1]),
            stride: [u(s[0]), u(s[1])],
            pad: [u(p[0]), u(p[1])],
            dilation: [u(d[0]), u(d[1])],
            oh: u(output[1]),
            ow: u(output[2]),
        }
    }
}

/// What a kernel may use while running.
pub struct RunCx<'a> {
    pub model: &'a Model<'a>,
    /// Examples in the batch.
    pub n: usize,
    pub params: &'a [f32],
    pub(crate) pool: &'a Pool,
    pub scratch: &'a mut [f32],
    /// `threads` GEMM workspaces of `ws_len` floats each.
    pub gemm_ws: &'a mut [f32],
    pub ws_len: usize,
}

/// A running node's inputs: disjoint from its output, which the executor splits off the arena.
pub struct Inputs<'a> {
    /// The arena before the output (arena offset 0) and after it (offset `post_base`).
    pub(crate) pre: &'a [f32],
    pub(crate) post: &'a [f32],
    pub(crate) post_base: usize,
    /// `(arena offset, elements per example)` of each input.
    pub(crate) bufs: &'a [(usize, usize)],
    pub(crate) n: usize,
}

impl<'a> Inputs<'a> {
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Elements per example of input `i`.
    pub fn elems(&self, i: usize) -> usize {
        self.bufs[i].1
    }

    /// Input `i`, the whole batch.
    pub fn get(&self, i: usize) -> &'a [f32] {
        let (off, len) = self.bufs[i];
        let len = len * self.n;
        if len == 0 {
            // A zero-length value reserves nothing: its offset may be the output's.
            return &[];
        }
        if off < self.pre.len() {
            &self.pre[off..off + len]
        } else {
            &self.post[off - self.post_base..off - self.post_base + len]
        }
    }
}

/// A kernel that copies its input (reshapes of contiguous data).
#[derive(Debug)]
pub(crate) struct CopyKernel;

impl Kernel for CopyKernel {
    fn run(&self, _: &mut RunCx<'_>, ins: &Inputs<'_>, y: &mut [f32]) {
        y.copy_from_slice(ins.get(0));
    }
}

/// FLOPs of weight `weight` applied at `positions` output positions, `(as stored, dense)`.
pub(crate) fn weight_flops(model: &Model<'_>, weight: TensorId, positions: u64) -> (u64, u64) {
    let e = model.tensor_entry(weight);
    let all: u64 = e.shape.iter().map(|&d| d as u64).product();
    (
        2 * model.tensor(weight).stored() as u64 * positions,
        2 * all * positions,
    )
}

/// 2 FLOPs per output element.
pub(crate) fn elementwise_flops(out: &[u32]) -> (u64, u64) {
    let f = 2 * out.iter().map(|&d| d as u64).product::<u64>();
    (f, f)
}
