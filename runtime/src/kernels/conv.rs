use super::{act_scalar, Activation, Elems};

/// Geometry of one 2-D convolution over a single image in CHW layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels (of the whole layer, not per group).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

/// Length of the patch matrix [`im2col`] writes for `channels` input channels.
pub fn im2col_len(g: &ConvGeom, channels: usize) -> usize {
    channels * g.kh * g.kw * g.oh * g.ow
}

/// Writes the patch matrix of input channels `c0..c0 + channels` of `x` (`[c, h, w]`) into
/// `cols`, row-major `[(channels * kh * kw), (oh * ow)]`, rows ordered (channel, ki, kj) like a
/// PyTorch weight `[out, in, kh, kw]` flattened; padding reads as 0.
pub fn im2col(g: &ConvGeom, x: &[f32], c0: usize, channels: usize, cols: &mut [f32]) {
    let p = g.oh * g.ow;
    let mut row = 0;
    for c in c0..c0 + channels {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let dst = &mut cols[row * p..(row + 1) * p];
                for oy in 0..g.oh {
                    let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                    let d = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, o) in d.iter_mut().enumerate() {
                        let ix = (ox * g.stride[1] + kj * g.dilation[1]) as isize - g.pad[1] as isize;
                        *o = if ix < 0 || ix >= g.w as isize { 0.0 } else { src[ix as usize] };
                    }
                }
                row += 1;
            }
        }
    }
}

/// Depthwise convolution (groups == channels, one filter per channel): `w` is `[c, 1, kh, kw]`,
/// `x` is `[c, h, w]`, `y` is `[c, oh, ow]`; `y = act(conv + bias)`.
pub fn depthwise_conv2d(
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (kh, kw) = (g.kh, g.kw);
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let mut k = [0f32; 64];
        let taps = kh * kw;
        let big;
        let kern: &[f32] = if taps <= 64 {
            for (t, kv) in k[..taps].iter_mut().enumerate() {
                *kv = w.get_f32(c * taps + t);
            }
            &k[..taps]
        } else {
            big = (0..taps).map(|t| w.get_f32(c * taps + t)).collect::<alloc::vec::Vec<_>>();
            &big
        };
        let b = bias.map_or(0.0, |b| b[c]);
        let out = &mut y[c * g.oh * g.ow..(c + 1) * g.oh * g.ow];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = b;
                for ki in 0..kh {
                    let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for kj in 0..kw {
                        let ix = (ox * g.stride[1] + kj * g.dilation[1]) as isize - g.pad[1] as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        acc += kern[ki * kw + kj] * plane[iy as usize * g.w + ix as usize];
                    }
                }
                out[oy * g.ow + ox] = act_scalar(act, acc);
            }
        }
    }
}
