//! Permutation of axes: moves channels around (a channel shuffle, attention heads), so its
//! channels are pinned.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::Transpose;

use super::{HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

/// The permutation of the batched value: the batch axis stays first.
fn batched(perm: &[u32]) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(perm.iter().map(|&p| p as usize + 1))
}

impl HostOp for Transpose {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let perm: Vec<usize> = batched(&self.perm).collect();
        Ok(ins[0].permute(perm)?.contiguous()?)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let perm = batched(&self.perm).map(|p| p as i64).collect();
        w.node(
            "Transpose",
            n.name,
            n.inputs,
            n.output,
            &[("perm", Attr::Ints(perm))],
        );
    }
}
