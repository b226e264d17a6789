//! The host side of each graph operation, one module per op: the candle reference, how the op
//! couples channels ([`crate::groups`]), which constants it carries when channels are removed
//! ([`crate::channel::removed_constants`]) and how it is written as ONNX ([`crate::onnx_out`]).
//!
//! The op's attributes, shape inference and runtime kernel live in `nap_runtime::ops`; [`host`]
//! is the one `match` over [`Op`] on this side.

use anyhow::{bail, Result};
use candle_core::Tensor;
use nap_runtime::format::{
    Concat, Flatten, GlobalAvgPool, Mul, Node, Op, Softmax, TensorId, ValueId,
};

use crate::groups::{find, Member};
use crate::ir::{HostModel, HostTensor};
use crate::onnx_out::{Attr, Writer};

mod act;
mod add;
mod attention;
mod batchnorm;
mod concat;
mod constant_maps;
mod conv2d;
mod conv_transpose2d;
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

pub use act::activation;
pub use conv2d::fold_batchnorm;

/// What the pruner needs of every graph operation.
pub trait HostOp {
    /// The node's output for a batch (`[N, ...]` inputs); `params[i]` is tensor `i`. `probe`,
    /// where given, is added to a Linear's or Conv2d's output before its activation.
    fn eval(&self, ins: &[&Tensor], params: &[Tensor], probe: Option<&Tensor>) -> Result<Tensor>;

    /// Ties the channels of the node's inputs and output together and records the tensor slices
    /// that belong to them. The default pins every channel the node touches (never pruned).
    fn couple(&self, cx: &mut Coupling<'_>) {
        cx.pin_all();
    }

    /// The constant each output channel carries, given the constants of the input channels
    /// (`None`: not constant). The default knows none.
    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        vec![None; cx.out_channels()]
    }

    /// The op to use once its inputs have the shapes `ins` (after channels were removed), where
    /// its attributes depend on them; `None` keeps it as it is.
    fn refit(&self, _ins: &[&[u32]]) -> Option<Op> {
        None
    }

    /// Writes the node as ONNX nodes into `w`.
    fn to_onnx(&self, w: &mut Writer<'_>, node: &OnnxNode<'_>);
}

/// The host side of `op`: the one `match` over the list of operations.
pub fn host(op: &Op) -> &dyn HostOp {
    match op {
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

/// The state of the channel coupling analysis at one node (see [`crate::groups`]).
pub struct Coupling<'a> {
    pub(crate) m: &'a HostModel,
    pub(crate) index: usize,
    pub(crate) node: &'a Node,
    /// `offset[v]`: the first slot of value `v`; `offset[v + 1] - offset[v]` its channels.
    pub(crate) offset: &'a [usize],
    pub(crate) parent: &'a mut [usize],
    pub(crate) pinned: &'a mut [bool],
    pub(crate) members: &'a mut Vec<(usize, Member)>,
}

impl Coupling<'_> {
    /// Index of the node in the graph.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn input(&self, i: usize) -> ValueId {
        self.node.inputs[i]
    }

    pub fn inputs(&self) -> &[ValueId] {
        &self.node.inputs
    }

    pub fn output(&self) -> ValueId {
        self.node.output
    }

    /// Channels per example of value `v` (its first dimension).
    pub fn channels(&self, v: ValueId) -> usize {
        self.offset[v as usize + 1] - self.offset[v as usize]
    }

    pub fn tensor(&self, id: TensorId) -> &HostTensor {
        &self.m.tensors[id as usize]
    }

    fn slot(&self, v: ValueId, c: usize) -> usize {
        self.offset[v as usize] + c
    }

    /// Channel `ca` of `a` and channel `cb` of `b` are one channel.
    pub fn tie(&mut self, a: ValueId, ca: usize, b: ValueId, cb: usize) {
        let (ra, rb) = (self.slot(a, ca), self.slot(b, cb));
        let (ra, rb) = (find(self.parent, ra), find(self.parent, rb));
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo;
        }
    }

    /// Channel `c` of `input` is channel `c` of the output, for every output channel.
    pub fn pass(&mut self, input: ValueId) {
        for c in 0..self.channels(self.output()) {
            self.tie(input, c, self.output(), c);
        }
    }

    /// The channels of `v` are never pruned.
    pub fn pin(&mut self, v: ValueId) {
        let (a, b) = (self.offset[v as usize], self.offset[v as usize + 1]);
        self.pinned[a..b].fill(true);
    }

    /// Pins every input and the output.
    pub fn pin_all(&mut self) {
        for i in 0..self.node.inputs.len() {
            self.pin(self.node.inputs[i]);
        }
        self.pin(self.output());
    }

    /// `member` belongs to channel `c` of value `v`.
    pub fn member(&mut self, v: ValueId, c: usize, member: Member) {
        let s = self.slot(v, c);
        self.members.push((s, member));
    }
}

/// Constant propagation at one node (see [`crate::channel::removed_constants`]).
pub struct Constants<'a> {
    pub m: &'a HostModel,
    pub node: &'a Node,
    /// The constants found so far, per value and channel.
    pub(crate) known: &'a [Vec<Option<f32>>],
    /// Whether output channel `c` belongs to a removed group.
    pub(crate) removed: &'a dyn Fn(usize) -> bool,
}

impl Constants<'_> {
    /// The constants of input `i`, per channel.
    pub fn input(&self, i: usize) -> &[Option<f32>] {
        &self.known[self.node.inputs[i] as usize]
    }

    pub fn out_channels(&self) -> usize {
        self.known[self.node.output as usize].len()
    }

    /// Whether output channel `c` is removed (its producer rows are zero).
    pub fn removed(&self, c: usize) -> bool {
        (self.removed)(c)
    }

    pub fn tensor(&self, id: TensorId) -> &[f32] {
        &self.m.tensors[id as usize].data
    }
}

/// A node being written as ONNX: its name and the ONNX names of its values.
pub struct OnnxNode<'a> {
    pub name: &'a str,
    pub inputs: &'a [&'a str],
    pub output: &'a str,
}

/// Pads the two last dimensions of `x` by `p` on each side with `value`.
pub(crate) fn pad2d(x: &Tensor, p: [u32; 2], value: f32) -> Result<Tensor> {
    pad_sides(x, [p[0], p[1], p[0], p[1]], value)
}

/// Pads the two last dimensions of `x` by `[top, left, bottom, right]` with `value`.
pub(crate) fn pad_sides(x: &Tensor, pads: [u32; 4], value: f32) -> Result<Tensor> {
    let mut x = x.clone();
    let [t, l, b, r] = pads.map(|v| v as usize);
    for (dim, before, after) in [(2usize, t, b), (3, l, r)] {
        let side = |n: usize| -> Result<Tensor> {
            let mut shape = x.dims().to_vec();
            shape[dim] = n;
            Ok(Tensor::full(value, shape, x.device())?.to_dtype(x.dtype())?)
        };
        let mut parts = Vec::with_capacity(3);
        if before > 0 {
            parts.push(side(before)?);
        }
        parts.push(x.clone());
        if after > 0 {
            parts.push(side(after)?);
        }
        if parts.len() > 1 {
            x = Tensor::cat(&parts, dim)?;
        }
    }
    Ok(x)
}

/// The one value of a `[height, width]` pair that candle's convolution takes.
pub(crate) fn square(a: [u32; 2], what: &str) -> Result<usize> {
    if a[0] != a[1] {
        bail!("the candle reference supports only equal {what} along height and width, got {a:?}");
    }
    Ok(a[0] as usize)
}

/// `y + b` with `b` one value per channel (dimension 1 of `y`).
pub(crate) fn add_channel_bias(y: Tensor, b: &Tensor) -> Result<Tensor> {
    if constant_maps::applies(&y) && !b.track_op() {
        let shift = b.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        return constant_maps::channel_affine(&y, vec![1.0; shift.len()], shift);
    }
    let mut shape = vec![1; y.rank()];
    shape[1] = b.elem_count();
    Ok(y.broadcast_add(&b.reshape(shape)?)?)
}

/// `y + probe` where a probe is given.
pub(crate) fn probed(y: Tensor, probe: Option<&Tensor>) -> Result<Tensor> {
    Ok(match probe {
        Some(p) => (y + p)?,
        None => y,
    })
}

/// The ONNX attributes of a sliding window (convolution or pooling) with symmetric padding.
pub(crate) fn window_attrs(
    kernel: [u32; 2],
    stride: [u32; 2],
    padding: [u32; 2],
) -> Vec<(&'static str, Attr)> {
    vec![
        ("kernel_shape", Attr::Ints(onnx_pair(kernel))),
        ("strides", Attr::Ints(onnx_pair(stride))),
        ("pads", Attr::Ints(onnx_pads(padding))),
    ]
}

/// An ONNX `pads` attribute for symmetric padding.
pub(crate) fn onnx_pads(p: [u32; 2]) -> Vec<i64> {
    [p[0], p[1], p[0], p[1]].map(|v| v as i64).to_vec()
}

/// An ONNX pair attribute.
pub(crate) fn onnx_pair(p: [u32; 2]) -> Vec<i64> {
    vec![p[0] as i64, p[1] as i64]
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{DType, Tensor};

    /// The largest absolute difference of two tensors of one shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64))
            .and_then(|d| d.to_scalar::<f64>())
            .expect("tensors of one shape")
    }
}
