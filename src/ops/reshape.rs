//! Flatten and Reshape. Flatten ties channel `c` of `[C, H, W]` to the `H·W` features it
//! becomes. A Reshape that keeps the channel count (`[C] -> [C, 1, 1]` before a gate's
//! convolution) or spreads each channel over whole output channels does the same; any other
//! Reshape pins its channels.

use anyhow::Result;
use candle_core::Tensor;
use nap_runtime::format::{Flatten, Op, Reshape};

use super::{Constants, Coupling, HostOp, OnnxNode};
use crate::onnx_out::{Attr, Writer};

/// Output channels per input channel when the values of input channel `c` are exactly output
/// channels `c·k .. (c + 1)·k` (channel-major layout), else `None`.
fn spread(x: &[u32], y: &[u32]) -> Option<usize> {
    let (&cin, &cout) = (x.first()?, y.first()?);
    (cin > 0 && cout % cin == 0).then_some((cout / cin) as usize)
}

/// Ties input channel `c` to output channels `c·per .. (c + 1)·per`.
fn tie_spread(cx: &mut Coupling<'_>, per: usize) {
    let (x, out) = (cx.input(0), cx.output());
    for c in 0..cx.channels(x) {
        for k in 0..per {
            cx.tie(x, c, out, c * per + k);
        }
    }
}

/// Each input channel's constant repeated `per` times.
fn spread_constants(cx: &Constants<'_>) -> Vec<Option<f32>> {
    let x = cx.input(0);
    let per = cx.out_channels() / x.len().max(1);
    x.iter()
        .flat_map(|&v| std::iter::repeat_n(v, per))
        .collect()
}

impl HostOp for Flatten {
    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        Ok(ins[0].flatten_from(1)?)
    }

    fn couple(&self, cx: &mut Coupling<'_>) {
        let per = cx.channels(cx.output()) / cx.channels(cx.input(0)).max(1);
        tie_spread(cx, per);
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        spread_constants(cx)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        w.node(
            "Flatten",
            n.name,
            n.inputs,
            n.output,
            &[("axis", Attr::Int(1))],
        );
    }
}

impl HostOp for Reshape {
    fn couple(&self, cx: &mut Coupling<'_>) {
        let shape = |v| cx.m.graph.values[v as usize].shape.clone();
        match spread(&shape(cx.input(0)), &shape(cx.output())) {
            Some(per) => tie_spread(cx, per),
            None => cx.pin_all(),
        }
    }

    fn constants(&self, cx: &Constants<'_>) -> Vec<Option<f32>> {
        let shape = |v| &cx.m.graph.values[v as usize].shape;
        match spread(shape(cx.node.inputs[0]), shape(cx.node.output)) {
            Some(_) => spread_constants(cx),
            None => vec![None; cx.out_channels()],
        }
    }

    /// Keeps the trailing dimensions; the first takes up the input's new element count.
    fn refit(&self, ins: &[&[u32]]) -> Option<Op> {
        let n: u64 = ins.first()?.iter().map(|&d| d as u64).product();
        let rest: u64 = self.shape.iter().skip(1).map(|&d| d as u64).product();
        let first = u32::try_from(n / rest.max(1)).ok()?;
        let mut shape = self.shape.clone();
        *shape.first_mut()? = first;
        Some(Op::Reshape(Reshape { shape }))
    }

    fn eval(&self, ins: &[&Tensor], _: &[Tensor], _: Option<&Tensor>) -> Result<Tensor> {
        let x = ins[0];
        let mut s = vec![x.dim(0)?];
        s.extend(self.shape.iter().map(|&d| d as usize));
        Ok(x.reshape(s)?)
    }

    fn to_onnx(&self, w: &mut Writer<'_>, n: &OnnxNode<'_>) {
        let s = w.tmp(&format!("{}/shape", n.name));
        let mut dims = vec![-1i64];
        dims.extend(self.shape.iter().map(|&d| d as i64));
        w.init_i64(&s, &dims);
        w.node("Reshape", n.name, &[n.inputs[0], &s], n.output, &[]);
    }
}
