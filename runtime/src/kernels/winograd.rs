//! Winograd F(2×2, 3×3) convolution (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", CVPR 2016) for 3×3, stride-1, undilated, one-group layers with dense f32 weights.
//!
//! Every 2×2 block of output pixels (a *tile*) of one output channel is
//! `Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`, where `d_c` is the 4×4 window of input channel `c`
//! above the tile and `g_c` the 3×3 kernel. A layer then costs 16 multiplies per tile and
//! channel pair instead of 36: one GEMM per point `ξ` of the 4×4 transformed domain, over all
//! tiles, plus the input and output transforms (additions only).
//!
//! Layouts (f32):
//! - transformed weights `U` ([`transform_weights`], planned once): `[16][c][oc]`, each `ξ` a
//!   row-major `c × oc` matrix (the GEMM's `B`).
//! - scratch ([`WinoGeom::scratch_len`]): the zero-padded input in channels-last order
//!   `[hp][wp][c]` with `hp = 2·th + 2`, `wp = 2·tw + 2` over a `th × tw` tile grid, then for one
//!   block of at most [`WinoGeom::block_tiles`] tiles `V` `[16][tb][c]` (the GEMM's `A`, tiles as
//!   rows) and `M` `[16][tb][oc]` (its `C`), each point padded by a cache line.
//!
//! Tiles are numbered row-major over the tile grid. Windows past an odd output edge read the
//! zeros of the padded input, and the pixels they would give are not stored. The transforms run
//! with the channels in the vector lanes, `L` channels at a time (compiled per instruction set).

use super::{act_clamp, act_scalar, gemm_kernel, gemm_workspace, Activation, Bias, ConvGeom, Isa};
use super::{Elems, MatRef};

/// Points of the transformed domain (4 × 4).
pub const WINO_POINTS: usize = 16;

/// Floats one block's `V` and `M` may take together (512 KB), so they stay in L2 between the
/// transforms and the 16 GEMMs.
const BLOCK_FLOATS: usize = 1 << 17;

/// Geometry of a layer [`WinogradKernel::run`] computes, for one example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinoGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oc: usize,
    /// Zero padding, top and bottom / left and right.
    pub pad: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

impl WinoGeom {
    /// The geometry of `g` with `oc` outputs, if it is a 3×3, stride-1, undilated window.
    pub fn new(g: &ConvGeom, oc: usize) -> Option<Self> {
        let ok = g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.dilation == [1, 1];
        ok.then_some(WinoGeom {
            c: g.c,
            h: g.h,
            w: g.w,
            oc,
            pad: g.pad,
            oh: g.oh,
            ow: g.ow,
        })
    }

    /// Tile rows and columns.
    pub fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }

    /// Rows and columns of the padded channels-last input.
    pub fn padded(&self) -> (usize, usize) {
        let (th, tw) = self.tiles();
        (2 * th + 2, 2 * tw + 2)
    }

    pub(crate) fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        hp * wp * self.c
    }

    /// Tiles per block: as many as fit [`BLOCK_FLOATS`], a multiple of 8, at least 8.
    pub fn block_tiles(&self) -> usize {
        let (th, tw) = self.tiles();
        let per_tile = WINO_POINTS * (self.c + self.oc).max(1);
        let tb = (BLOCK_FLOATS / per_tile).max(8) / 8 * 8;
        tb.min(th * tw).max(1)
    }

    /// Floats between consecutive points of `V` (`M` with `oc` for `c`): one block's values
    /// and one cache line, so the 16 points a transform reads or writes at once never share
    /// an L1 set when a block's values are a multiple of 4 KB.
    fn point_stride(&self, channels: usize) -> usize {
        (self.block_tiles() * channels).next_multiple_of(16) + 16
    }

    /// Floats of scratch [`WinogradKernel::run`] needs.
    pub fn scratch_len(&self) -> usize {
        self.padded_len() + WINO_POINTS * (self.point_stride(self.c) + self.point_stride(self.oc))
    }

    /// Floats of GEMM workspace [`WinogradKernel::run`] needs.
    pub fn ws_len(&self) -> usize {
        gemm_workspace(self.block_tiles(), self.oc, self.c)
    }

    /// Floats of the transformed weights.
    pub fn weights_len(&self) -> usize {
        WINO_POINTS * self.c * self.oc
    }

    /// Multiply-adds of the 16 GEMMs for one example.
    pub fn macs(&self) -> usize {
        let (th, tw) = self.tiles();
        WINO_POINTS * th * tw * self.c * self.oc
    }
}

/// `G`: the weight transform's 4 × 3 matrix.
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// Writes `U = G g Gᵀ` of the `[oc, c, 3, 3]` weights `w` into `u` (at least
/// [`WinoGeom::weights_len`] floats) in the layout of the module doc; computed in f64.
pub fn transform_weights(g: &WinoGeom, w: &[f32], u: &mut [f32]) {
    let (c, oc) = (g.c, g.oc);
    assert!(w.len() >= oc * c * 9 && u.len() >= g.weights_len());
    for o in 0..oc {
        for ch in 0..c {
            let k = &w[(o * c + ch) * 9..][..9];
            // t = G g (4 × 3), then t Gᵀ (4 × 4).
            let mut t = [[0f64; 3]; 4];
            for (i, row) in t.iter_mut().enumerate() {
                for (v, tv) in row.iter_mut().enumerate() {
                    *tv = (0..3).map(|r| G[i][r] * k[r * 3 + v] as f64).sum();
                }
            }
            for i in 0..4 {
                for j in 0..4 {
                    let val: f64 = (0..3).map(|v| t[i][v] * G[j][v]).sum();
                    u[(i * 4 + j) * c * oc + ch * oc + o] = val as f32;
                }
            }
        }
    }
}

/// Writes `x` (`[c, h, w]`) zero-padded, channels last, into `xh` (`[hp][wp][c]`).
fn pad_channels_last(g: &WinoGeom, x: &[f32], xh: &mut [f32]) {
    let (hp, wp) = g.padded();
    let c = g.c;
    let xh = &mut xh[..hp * wp * c];
    xh.fill(0.0);
    for ch in 0..c {
        for iy in 0..g.h {
            let src = &x[(ch * g.h + iy) * g.w..][..g.w];
            let dst = &mut xh[((iy + g.pad[0]) * wp + g.pad[1]) * c + ch..];
            for (ix, &v) in src.iter().enumerate() {
                dst[ix * c] = v;
            }
        }
    }
}

type Lane<const N: usize> = [f32; N];

#[inline(always)]
fn add<const N: usize>(a: Lane<N>, b: Lane<N>) -> Lane<N> {
    core::array::from_fn(|l| a[l] + b[l])
}

#[inline(always)]
fn sub<const N: usize>(a: Lane<N>, b: Lane<N>) -> Lane<N> {
    core::array::from_fn(|l| a[l] - b[l])
}

#[inline(always)]
fn load<const N: usize>(s: &[f32], at: usize) -> Lane<N> {
    let mut v = [0f32; N];
    v.copy_from_slice(&s[at..at + N]);
    v
}

/// `V = Bᵀ d B` for `N` channels of one tile: `d[r][s]` at `xh[b + r·rs + s·cs..]`, `V_ξ` at
/// `v[vb + ξ·vs..]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn input_chunk<const N: usize>(
    xh: &[f32],
    b: usize,
    rs: usize,
    cs: usize,
    v: &mut [f32],
    vb: usize,
    vs: usize,
) {
    // Bᵀ d, column by column: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3.
    let mut t = [[[0f32; N]; 4]; 4];
    for s in 0..4 {
        let d: [Lane<N>; 4] = core::array::from_fn(|r| load(xh, b + r * rs + s * cs));
        t[0][s] = sub(d[0], d[2]);
        t[1][s] = add(d[1], d[2]);
        t[2][s] = sub(d[2], d[1]);
        t[3][s] = sub(d[1], d[3]);
    }
    // (Bᵀ d) B, row by row.
    for (i, [a, bb, c, e]) in t.into_iter().enumerate() {
        let out = [sub(a, c), add(bb, c), sub(c, bb), sub(bb, e)];
        for (j, o) in out.iter().enumerate() {
            v[vb + (i * 4 + j) * vs..][..N].copy_from_slice(o);
        }
    }
}

/// The input transform of tiles `t0..t1` into `V` (`vs` floats per point).
#[inline(always)]
fn input_body<const L: usize>(
    g: &WinoGeom,
    xh: &[f32],
    t0: usize,
    t1: usize,
    vs: usize,
    v: &mut [f32],
) {
    let c = g.c;
    let (_, tw) = g.tiles();
    let (_, wp) = g.padded();
    let (rs, cs) = (wp * c, c);
    for t in t0..t1 {
        let (ty, tx) = (t / tw, t % tw);
        let base = (2 * ty * wp + 2 * tx) * c;
        let vb = (t - t0) * c;
        let mut c0 = 0;
        while c0 + L <= c {
            input_chunk::<L>(xh, base + c0, rs, cs, v, vb + c0, vs);
            c0 += L;
        }
        while c0 < c {
            input_chunk::<1>(xh, base + c0, rs, cs, v, vb + c0, vs);
            c0 += 1;
        }
    }
}

/// Where one tile's outputs go: `y[o·plane + off + i·ow + j]` for `i < rows`, `j < cols`.
#[derive(Clone, Copy)]
struct OutTile {
    plane: usize,
    off: usize,
    ow: usize,
    rows: usize,
    cols: usize,
}

/// `Y = Aᵀ M A` for `N` output channels `o0..` of one tile (`M_ξ` at `m[mb + ξ·ms..]`), plus
/// bias, activated and stored.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn output_chunk<const N: usize>(
    m: &[f32],
    mb: usize,
    ms: usize,
    o0: usize,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    y_len: usize,
    ot: OutTile,
) {
    // Aᵀ M, column by column: rows m0 + m1 + m2 and m1 - m2 - m3.
    let mut s = [[[0f32; N]; 4]; 2];
    for j in 0..4 {
        let r: [Lane<N>; 4] = core::array::from_fn(|i| load(m, mb + (i * 4 + j) * ms));
        s[0][j] = add(add(r[0], r[1]), r[2]);
        s[1][j] = sub(sub(r[1], r[2]), r[3]);
    }
    // (Aᵀ M) A, row by row.
    let mut out = [[0f32; N]; 4];
    for (i, [a, b, c, e]) in s.into_iter().enumerate() {
        out[2 * i] = add(add(a, b), c);
        out[2 * i + 1] = sub(sub(b, c), e);
    }
    if let Some(bias) = bias {
        let bv: Lane<N> = load(bias, o0);
        for o in out.iter_mut() {
            *o = add(*o, bv);
        }
    }
    let (clamp, lo, hi, post) = act_clamp(act);
    if clamp {
        for o in out.iter_mut() {
            *o = core::array::from_fn(|l| o[l].max(lo).min(hi));
        }
    }
    if post {
        for o in out.iter_mut() {
            *o = core::array::from_fn(|l| act_scalar(act, o[l]));
        }
    }
    let last = (o0 + N - 1) * ot.plane + ot.off + (ot.rows - 1) * ot.ow + ot.cols - 1;
    assert!(last < y_len);
    // SAFETY: every element written is at most `last`, inside `y` (asserted above); the caller
    // owns this tile's pixels.
    unsafe {
        if ot.rows == 2 && ot.cols == 2 {
            // Each output row of the tile is a pair of adjacent floats.
            let top: [[f32; 2]; N] = core::array::from_fn(|l| [out[0][l], out[1][l]]);
            let bottom: [[f32; 2]; N] = core::array::from_fn(|l| [out[2][l], out[3][l]]);
            for l in 0..N {
                let p = y.add((o0 + l) * ot.plane + ot.off);
                p.cast::<[f32; 2]>().write_unaligned(top[l]);
                p.add(ot.ow).cast::<[f32; 2]>().write_unaligned(bottom[l]);
            }
        } else {
            for l in 0..N {
                let p = y.add((o0 + l) * ot.plane + ot.off);
                for i in 0..ot.rows {
                    for j in 0..ot.cols {
                        *p.add(i * ot.ow + j) = out[2 * i + j][l];
                    }
                }
            }
        }
    }
}

/// The output transform of tiles `t0..t1` from `M` (`ms` floats per point) into `y`
/// (`[oc, oh, ow]`, `y_len` floats); writes only those tiles' pixels.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_body<const L: usize>(
    g: &WinoGeom,
    m: &[f32],
    t0: usize,
    t1: usize,
    ms: usize,
    bias: Option<&[f32]>,
    act: Activation,
    y: *mut f32,
    y_len: usize,
) {
    let oc = g.oc;
    let (_, tw) = g.tiles();
    for t in t0..t1 {
        let (oy, ox) = (2 * (t / tw), 2 * (t % tw));
        let ot = OutTile {
            plane: g.oh * g.ow,
            off: oy * g.ow + ox,
            ow: g.ow,
            rows: (g.oh - oy).min(2),
            cols: (g.ow - ox).min(2),
        };
        let mb = (t - t0) * oc;
        let mut o0 = 0;
        while o0 + L <= oc {
            output_chunk::<L>(m, mb + o0, ms, o0, bias, act, y, y_len, ot);
            o0 += L;
        }
        while o0 < oc {
            output_chunk::<1>(m, mb + o0, ms, o0, bias, act, y, y_len, ot);
            o0 += 1;
        }
    }
}

type InputFn = unsafe fn(&WinoGeom, &[f32], usize, usize, usize, &mut [f32]);
type OutputFn =
    unsafe fn(&WinoGeom, &[f32], usize, usize, usize, Option<&[f32]>, Activation, *mut f32, usize);

/// One build of the transforms; the 16 GEMMs run on [`gemm_kernel`]. [`WINOGRAD_KERNELS`]
/// lists them from most to least preferred.
pub struct WinogradKernel {
    pub name: &'static str,
    pub isa: Isa,
    input: InputFn,
    output: OutputFn,
}

/// The transforms compiled for one instruction set with `$l` channels per step.
macro_rules! transforms {
    ($input:ident, $output:ident, $l:literal $(, $feat:literal)?) => {
        $(#[target_feature(enable = $feat)])?
        unsafe fn $input(
            g: &WinoGeom,
            xh: &[f32],
            t0: usize,
            t1: usize,
            vs: usize,
            v: &mut [f32],
        ) {
            input_body::<$l>(g, xh, t0, t1, vs, v)
        }

        $(#[target_feature(enable = $feat)])?
        #[allow(clippy::too_many_arguments)]
        unsafe fn $output(
            g: &WinoGeom,
            m: &[f32],
            t0: usize,
            t1: usize,
            ms: usize,
            bias: Option<&[f32]>,
            act: Activation,
            y: *mut f32,
            y_len: usize,
        ) {
            output_body::<$l>(g, m, t0, t1, ms, bias, act, y, y_len)
        }
    };
}

#[cfg(target_arch = "x86_64")]
transforms!(input_avx512, output_avx512, 16, "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
transforms!(input_avx2, output_avx2, 8, "avx2,fma");
#[cfg(target_arch = "aarch64")]
transforms!(input_neon, output_neon, 8);
transforms!(input_scalar, output_scalar, 4);

/// Every Winograd transform build, most preferred first; the last entry runs everywhere.
pub static WINOGRAD_KERNELS: &[WinogradKernel] = &[
    #[cfg(target_arch = "x86_64")]
    WinogradKernel {
        name: "winograd_f32_2x2_3x3_avx512",
        isa: Isa::Avx512F,
        input: input_avx512,
        output: output_avx512,
    },
    #[cfg(target_arch = "x86_64")]
    WinogradKernel {
        name: "winograd_f32_2x2_3x3_avx2fma",
        isa: Isa::Avx2Fma,
        input: input_avx2,
        output: output_avx2,
    },
    #[cfg(target_arch = "aarch64")]
    WinogradKernel {
        name: "winograd_f32_2x2_3x3_neon",
        isa: Isa::Neon,
        input: input_neon,
        output: output_neon,
    },
    WinogradKernel {
        name: "winograd_f32_2x2_3x3_scalar",
        isa: Isa::Scalar,
        input: input_scalar,
        output: output_scalar,
    },
];

/// The Winograd transforms used on this CPU.
pub fn winograd_kernel() -> &'static WinogradKernel {
    WINOGRAD_KERNELS
        .iter()
        .find(|k| k.isa.is_available())
        .unwrap_or(&WINOGRAD_KERNELS[WINOGRAD_KERNELS.len() - 1])
}

impl WinogradKernel {
    /// `y = act(conv(x, w) + bias)` for one example: `x` `[c, h, w]`, `y` `[oc, oh, ow]`, `u`
    /// the weights transformed by [`transform_weights`], `bias` `oc` values. Needs
    /// [`WinoGeom::scratch_len`] floats of `scratch` and [`WinoGeom::ws_len`] of `ws`; panics
    /// on shorter buffers or a CPU without this build's instruction set. Never allocates.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        g: &WinoGeom,
        x: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
        scratch: &mut [f32],
        ws: &mut [f32],
    ) {
        assert!(scratch.len() >= g.scratch_len());
        let (xh, vm) = scratch.split_at_mut(g.padded_len());
        self.pad(g, x, xh);
        let (th, tw) = g.tiles();
        // SAFETY: `y` is an exclusive slice.
        unsafe {
            self.run_tiles(
                g,
                xh,
                u,
                bias,
                act,
                0..th * tw,
                y.as_mut_ptr(),
                y.len(),
                vm,
                ws,
            )
        }
    }

    /// Writes `x` into the first [`WinoGeom::padded_len`] floats of `xh` as
    /// [`WinogradKernel::run_tiles`] reads it.
    pub(crate) fn pad(&self, g: &WinoGeom, x: &[f32], xh: &mut [f32]) {
        assert!(x.len() >= g.c * g.h * g.w && xh.len() >= g.padded_len());
        pad_channels_last(g, x, xh);
    }

    /// Floats of `vm` one [`WinogradKernel::run_tiles`] call needs.
    pub(crate) fn tiles_len(&self, g: &WinoGeom) -> usize {
        g.scratch_len() - g.padded_len()
    }

    /// [`WinogradKernel::run`] for tiles `tiles` of the padded input `xh` ([`Self::pad`]),
    /// `vm` holding [`Self::tiles_len`] floats.
    ///
    /// # Safety
    /// `y` addresses `y_len` floats of one allocation; the call writes only the pixels of
    /// `tiles` (of every output channel), and nothing else accesses those during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run_tiles(
        &self,
        g: &WinoGeom,
        xh: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        tiles: core::ops::Range<usize>,
        y: *mut f32,
        y_len: usize,
        vm: &mut [f32],
        ws: &mut [f32],
    ) {
        assert!(
            self.isa.is_available(),
            "winograd: {} not supported on this CPU",
            self.name
        );
        let (c, oc) = (g.c, g.oc);
        let (th, tw) = g.tiles();
        assert!(y_len >= oc * g.oh * g.ow && tiles.end <= th * tw);
        assert!(u.len() >= g.weights_len() && vm.len() >= self.tiles_len(g));
        assert!(xh.len() >= g.padded_len() && bias.is_none_or(|b| b.len() >= oc));
        assert!(g.oh + 2 == g.h + 2 * g.pad[0] && g.ow + 2 == g.w + 2 * g.pad[1]);
        if oc == 0 {
            return;
        }
        let tb = g.block_tiles();
        let (vs, ms) = (g.point_stride(c), g.point_stride(oc));
        let (v, rest) = vm.split_at_mut(WINO_POINTS * vs);
        let m = &mut rest[..WINO_POINTS * ms];
        let gemm = gemm_kernel();
        for t0 in tiles.clone().step_by(tb) {
            let t1 = (t0 + tb).min(tiles.end);
            let nb = t1 - t0;
            // SAFETY: the instruction set is available (asserted above); the bodies index
            // their slices with bounds checks.
            unsafe { (self.input)(g, xh, t0, t1, vs, v) };
            for xi in 0..WINO_POINTS {
                let a = MatRef::row_major(Elems::F32(&v[xi * vs..][..nb * c]), nb, c);
                let b = MatRef::row_major(Elems::F32(&u[xi * c * oc..][..c * oc]), c, oc);
                let mx = &mut m[xi * ms..][..nb * oc];
                gemm.run(a, b, mx, oc, Bias::None, Activation::None, ws);
            }
            // SAFETY: as for the input transform; the body writes inside `y_len` floats (it
            // asserts so), only the pixels of tiles `t0..t1`, which the caller owns.
            unsafe { (self.output)(g, m, t0, t1, ms, bias, act, y, y_len) };
        }
    }
}
