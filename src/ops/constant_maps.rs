//! Element-wise maps with constant operands (per-channel affine maps, clamping activations) as
//! candle custom ops on the CPU, whose backward pass yields the input's gradient only.
//!
//! candle's binary ops also accumulate a gradient for a constant operand. For a broadcast
//! constant (a bias, a BatchNorm vector, the bounds of a clamp) that gradient has the full size
//! of the activation, and since nothing downstream consumes it, it stays in the gradient store
//! until the backward pass ends: the K-FAC statistics of a MobileNet then held several times
//! its activations. On other devices the callers fall back to candle's ops.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use nap_runtime::format::Activation;

/// Whether the custom ops apply: a CPU tensor of f32 or f64.
pub(crate) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// `y[n, c, ...] = x[n, c, ...] · scale[c] + shift[c]` for a constant `scale` and `shift`.
pub(crate) fn channel_affine(x: &Tensor, scale: Vec<f64>, shift: Vec<f64>) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(ChannelAffine { scale, shift })?)
}

/// `act(x)` for Relu6, HardSwish, HardSigmoid and LeakyRelu.
pub(crate) fn clamp_act(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(ClampAct(act))?)
}

/// Applies `f(value, channel)` to a contiguous `[N, C, ...]` storage.
fn map_channels(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(f64, usize) -> f64,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expects a contiguous tensor".into()))?;
    let dims = layout.dims();
    let c = dims.get(1).copied().unwrap_or(1).max(1);
    let inner: usize = dims.iter().skip(2).product::<usize>().max(1);
    let ch = |i: usize| (i / inner) % c;
    let out = match storage {
        CpuStorage::F32(v) => CpuStorage::F32(
            v[start..end]
                .iter()
                .enumerate()
                .map(|(i, &x)| f(x as f64, ch(i)) as f32)
                .collect(),
        ),
        CpuStorage::F64(v) => CpuStorage::F64(
            v[start..end]
                .iter()
                .enumerate()
                .map(|(i, &x)| f(x, ch(i)))
                .collect(),
        ),
        _ => return Err(candle_core::Error::Msg("expects f32 or f64".into())),
    };
    Ok((out, layout.shape().clone()))
}

struct ChannelAffine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l.dims().get(1).copied().unwrap_or(1) != self.scale.len() {
            return Err(candle_core::Error::Msg(format!(
                "channel-affine of {} channels on {:?}",
                self.scale.len(),
                l.dims()
            )));
        }
        map_channels(s, l, |x, c| x * self.scale[c] + self.shift[c])
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = ChannelAffine {
            scale: self.scale.clone(),
            shift: vec![0.0; self.scale.len()],
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

struct ClampAct(Activation);

impl ClampAct {
    /// The activation and its derivative at `x`.
    fn eval(&self, x: f64) -> (f64, f64) {
        match self.0 {
            Activation::Relu6 => (x.clamp(0.0, 6.0), (x > 0.0 && x < 6.0) as u8 as f64),
            Activation::HardSwish => {
                let y = x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
                let d = if x <= -3.0 {
                    0.0
                } else if x >= 3.0 {
                    1.0
                } else {
                    (2.0 * x + 3.0) / 6.0
                };
                (y, d)
            }
            Activation::HardSigmoid { alpha, beta } => {
                let z = alpha as f64 * x + beta as f64;
                (
                    z.clamp(0.0, 1.0),
                    (z > 0.0 && z < 1.0) as u8 as f64 * alpha as f64,
                )
            }
            Activation::LeakyRelu { alpha } => {
                let a = alpha as f64;
                if x >= 0.0 {
                    (x, 1.0)
                } else {
                    (a * x, a)
                }
            }
            other => unreachable!("{other:?} is not a clamping activation"),
        }
    }
}

impl CustomOp1 for ClampAct {
    fn name(&self) -> &'static str {
        "clamp-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map_channels(s, l, |x, _| self.eval(x).0)
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let slope = arg.contiguous()?.apply_op1_no_bwd(&Slope(self))?;
        Ok(Some(grad.mul(&slope)?))
    }
}

/// The derivative of a [`ClampAct`].
struct Slope<'a>(&'a ClampAct);

impl CustomOp1 for Slope<'_> {
    fn name(&self) -> &'static str {
        "clamp-activation-slope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map_channels(s, l, |x, _| self.0.eval(x).1)
    }
}

/// A depthwise convolution with a constant kernel `w` (`[C, 1, kh, kw]` flattened) of `x`
/// `[N, C, H, W]`: one op whose backward pass is the transposed convolution, instead of one
/// stored tensor per tap.
pub(crate) fn depthwise(x: &Tensor, w: Vec<f64>, geom: DepthwiseGeom) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Depthwise { w, g: geom })?)
}

/// The window of a depthwise convolution: `[height, width]` pairs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DepthwiseGeom {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub out: [usize; 2],
}

impl DepthwiseGeom {
    /// Calls `f(input offset, output offset, weight offset)` for every product of one
    /// `[H, W]` plane; `hw` is the input plane's size.
    fn for_each(&self, hw: [usize; 2], mut f: impl FnMut(usize, usize, usize)) {
        let [kh, kw] = self.kernel;
        for oy in 0..self.out[0] {
            for i in 0..kh {
                let iy = (oy * self.stride[0] + i * self.dilation[0]).wrapping_sub(self.pad[0]);
                if iy >= hw[0] {
                    continue;
                }
                for ox in 0..self.out[1] {
                    for j in 0..kw {
                        let ix =
                            (ox * self.stride[1] + j * self.dilation[1]).wrapping_sub(self.pad[1]);
                        if ix < hw[1] {
                            f(iy * hw[1] + ix, oy * self.out[1] + ox, i * kw + j);
                        }
                    }
                }
            }
        }
    }
}

struct Depthwise {
    w: Vec<f64>,
    g: DepthwiseGeom,
}

/// The planes of a contiguous `[N, C, H, W]` layout.
#[derive(Clone, Copy)]
struct Planes {
    /// `N · C`.
    count: usize,
    channels: usize,
    /// The input's `[H, W]`.
    hw: [usize; 2],
}

fn planes(l: &Layout) -> candle_core::Result<Planes> {
    match l.dims() {
        &[n, c, h, w] => Ok(Planes {
            count: n * c,
            channels: c,
            hw: [h, w],
        }),
        d => Err(candle_core::Error::Msg(format!("depthwise of {d:?}"))),
    }
}

impl Depthwise {
    /// `y = conv(x)` (`forward`) or `x += convᵀ(y)` over contiguous planes.
    fn run<T: Copy>(
        &self,
        src: &[T],
        p: Planes,
        forward: bool,
        to: impl Fn(T) -> f64,
        from: impl Fn(f64) -> T,
    ) -> Vec<T> {
        let (planes, c, hw) = (p.count, p.channels, p.hw);
        let k = self.g.kernel[0] * self.g.kernel[1];
        let (in_plane, out_plane) = (hw[0] * hw[1], self.g.out[0] * self.g.out[1]);
        let (src_plane, dst_plane) = if forward {
            (in_plane, out_plane)
        } else {
            (out_plane, in_plane)
        };
        let mut dst = vec![0f64; planes * dst_plane];
        for p in 0..planes {
            let w = &self.w[(p % c) * k..(p % c + 1) * k];
            let s = &src[p * src_plane..(p + 1) * src_plane];
            let d = &mut dst[p * dst_plane..(p + 1) * dst_plane];
            self.g.for_each(hw, |xi, yi, wi| {
                if forward {
                    d[yi] += to(s[xi]) * w[wi];
                } else {
                    d[xi] += to(s[yi]) * w[wi];
                }
            });
        }
        dst.into_iter().map(from).collect()
    }

    fn apply(
        &self,
        s: &CpuStorage,
        l: &Layout,
        p: Planes,
        forward: bool,
    ) -> candle_core::Result<CpuStorage> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("expects a contiguous tensor".into()))?;
        Ok(match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(self.run(&v[start..end], p, forward, |x| x as f64, |x| x as f32))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(self.run(&v[start..end], p, forward, |x| x, |x| x))
            }
            _ => return Err(candle_core::Error::Msg("expects f32 or f64".into())),
        })
    }
}

impl CustomOp1 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-constant-kernel"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = planes(l)?;
        let out = self.apply(s, l, p, true)?;
        let n = p.count / p.channels.max(1);
        Ok((
            out,
            Shape::from((n, p.channels, self.g.out[0], self.g.out[1])),
        ))
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = DepthwiseBack {
            op: self,
            input: arg.dims().to_vec(),
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// The gradient of a [`Depthwise`] with respect to its input.
struct DepthwiseBack<'a> {
    op: &'a Depthwise,
    input: Vec<usize>,
}

impl CustomOp1 for DepthwiseBack<'_> {
    fn name(&self) -> &'static str {
        "depthwise-constant-kernel-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = Planes {
            hw: [self.input[2], self.input[3]],
            ..planes(l)?
        };
        let out = self.op.apply(s, l, p, false)?;
        Ok((out, Shape::from(self.input.clone())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use nap_runtime::format::Activation;

    use super::{channel_affine, clamp_act};
    use crate::ops::tests::max_diff;

    /// Output and input gradient of `f` and of `reference` (candle's own ops) agree.
    fn same(f: impl Fn(&Tensor) -> Tensor, reference: impl Fn(&Tensor) -> Tensor, what: &str) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f64, 4.0, (3, 5, 4, 2), &dev).unwrap())).unwrap();
        let r = Tensor::randn(0f64, 1.0, (3, 5, 4, 2), &dev).unwrap();
        let run = |g: &dyn Fn(&Tensor) -> Tensor| {
            let y = g(x.as_tensor());
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let (y0, g0) = run(&f);
        let (y1, g1) = run(&reference);
        assert!(max_diff(&y0, &y1) < 1e-12, "{what}: output");
        assert!(max_diff(&g0, &g1) < 1e-12, "{what}: gradient");
    }

    #[test]
    fn clamping_activations_and_their_gradients_equal_candle_ops() {
        same(
            |x| clamp_act(x, Activation::Relu6).unwrap(),
            |x| x.clamp(0f64, 6f64).unwrap(),
            "relu6",
        );
        same(
            |x| clamp_act(x, Activation::HardSwish).unwrap(),
            |x| (x * ((x + 3.0).unwrap().clamp(0f64, 6f64).unwrap() / 6.0).unwrap()).unwrap(),
            "hardswish",
        );
        let hard_sigmoid = Activation::HardSigmoid {
            alpha: 0.25,
            beta: 0.5,
        };
        same(
            |x| clamp_act(x, hard_sigmoid).unwrap(),
            |x| x.affine(0.25, 0.5).unwrap().clamp(0f64, 1f64).unwrap(),
            "hardsigmoid",
        );
        same(
            |x| clamp_act(x, Activation::LeakyRelu { alpha: 0.25 }).unwrap(),
            |x| x.maximum(&x.affine(0.25, 0.0).unwrap()).unwrap(),
            "leaky relu",
        );
    }

    #[test]
    fn channel_affine_and_its_gradient_equal_candle_ops() {
        let (scale, shift) = (
            vec![0.5, -2.0, 1.0, 3.0, 0.0],
            vec![1.0, 0.0, -1.5, 2.0, 0.25],
        );
        let dev = Device::Cpu;
        let s = Tensor::new(scale.clone(), &dev)
            .unwrap()
            .reshape((1, 5, 1, 1))
            .unwrap();
        let t = Tensor::new(shift.clone(), &dev)
            .unwrap()
            .reshape((1, 5, 1, 1))
            .unwrap();
        same(
            |x| channel_affine(x, scale.clone(), shift.clone()).unwrap(),
            |x| x.broadcast_mul(&s).unwrap().broadcast_add(&t).unwrap(),
            "channel affine",
        );
    }
}
