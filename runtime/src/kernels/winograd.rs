//! Winograd convolution F(m×m, 3×3), `m` = 2 or 4 (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016), for 3×3, stride-1, undilated, one-group layers
//! with dense f32 weights.
//!
//! Every `m × m` block of output pixels (a *tile*) of one output channel is
//! `Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`, where `d_c` is the `α × α` window (`α = m + 2`) of
//! input channel `c` under the tile and `g_c` the 3×3 kernel. A layer then costs `α²`
//! multiplies per tile and channel pair instead of `9·m²` (16 against 36 for F(2×2, 3×3), 36
//! against 144 for F(4×4, 3×3)): one GEMM per point `ξ` of the `α × α` transformed domain, over
//! the tiles of every example, plus the input and output transforms (a few additions and
//! multiplications by small constants per value).
//!
//! Layouts (f32):
//! - transformed weights `U` ([`transform_weights`], planned once): `[α²][c][oc]`, each `ξ` a
//!   row-major `c × oc` matrix (the GEMM's `B`).
//! - scratch ([`WinoGeom::scratch_len`]): each example's zero-padded input in channels-last
//!   order `[hp][wp][c]` ([`WinoGeom::padded`]: `m·th + 2` rows by `m·tw + 2` columns over a
//!   `th × tw` tile grid), then per thread, for one block of at most [`WinoGeom::block_tiles`]
//!   tiles, `V` `[α²][tb][c]` (the GEMM's `A`, tiles as rows) and `M` `[α²][tb][oc]` (its `C`),
//!   each point padded by a cache line.
//!
//! Tiles are numbered example by example, row-major over each example's tile grid. Windows past
//! an output edge read the zeros of the padded input, and the pixels they would give are not
//! stored. The transforms run with the channels in the vector lanes, `L` channels at a time, then
//! `L/2`, then one (compiled per instruction set from one generic body).

use super::{act_clamp, act_scalar, gemm_kernel, gemm_workspace, Activation, Bias, ConvGeom, Isa};
use super::{Elems, MatRef};

/// Floats one block's `V` and `M` may take together (512 KB), so they stay in L2 between the
/// transforms and the GEMMs.
const BLOCK_FLOATS: usize = 1 << 17;

/// Geometry of a layer [`WinogradKernel::run`] computes (per example) and its tile size.
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
    /// Output tile size `m`: 2 for F(2×2, 3×3), 4 for F(4×4, 3×3).
    pub tile: usize,
}

impl WinoGeom {
    /// The geometry of `g` with `oc` outputs and `tile` (2 or 4), if `g` is a 3×3, stride-1,
    /// undilated window.
    pub fn new(g: &ConvGeom, oc: usize, tile: usize) -> Option<Self> {
        let ok = g.kh == 3
            && g.kw == 3
            && g.stride == [1, 1]
            && g.dilation == [1, 1]
            && matches!(tile, 2 | 4);
        ok.then_some(WinoGeom {
            c: g.c,
            h: g.h,
            w: g.w,
            oc,
            pad: g.pad,
            oh: g.oh,
            ow: g.ow,
            tile,
        })
    }

    /// Points of the transformed domain, `α²`.
    pub fn points(&self) -> usize {
        (self.tile + 2) * (self.tile + 2)
    }

    /// Tile rows and columns of one example.
    pub fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(self.tile), self.ow.div_ceil(self.tile))
    }

    /// Tiles of one example.
    pub fn tiles_per_example(&self) -> usize {
        let (th, tw) = self.tiles();
        th * tw
    }

    /// Rows and columns of one example's padded channels-last input.
    pub fn padded(&self) -> (usize, usize) {
        let (th, tw) = self.tiles();
        (self.tile * th + 2, self.tile * tw + 2)
    }

    /// Floats of one example's padded input.
    pub fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        hp * wp * self.c
    }

    /// Tiles per block for `n` examples: as many as fit `BLOCK_FLOATS` (a multiple of 8, at
    /// least 8), at most all of them.
    pub fn block_tiles(&self, n: usize) -> usize {
        let per_tile = self.points() * (self.c + self.oc).max(1);
        let tb = (BLOCK_FLOATS / per_tile).max(8) / 8 * 8;
        tb.min(n.saturating_mul(self.tiles_per_example())).max(1)
    }

    /// Floats between consecutive points of `V` (of `M` with `oc` for `c`): one block's values
    /// and one cache line, so the points a transform reads or writes at once never share an L1
    /// set when a block's values are a multiple of 4 KB.
    fn point_stride(&self, n: usize, channels: usize) -> usize {
        (self.block_tiles(n) * channels).next_multiple_of(16) + 16
    }

    /// Floats of one thread's `V` and `M` for `n` examples.
    pub fn tiles_len(&self, n: usize) -> usize {
        self.points() * (self.point_stride(n, self.c) + self.point_stride(n, self.oc))
    }

    /// Floats of scratch [`WinogradKernel::run`] needs for `n` examples on `threads` threads.
    pub fn scratch_len(&self, n: usize, threads: usize) -> usize {
        n.saturating_mul(self.padded_len())
            .saturating_add(threads.saturating_mul(self.tiles_len(n)))
    }

    /// Floats of GEMM workspace one thread of [`WinogradKernel::run`] needs for `n` examples.
    pub fn ws_len(&self, n: usize) -> usize {
        gemm_workspace(self.block_tiles(n), self.oc, self.c)
    }

    /// Floats of the transformed weights.
    pub fn weights_len(&self) -> usize {
        self.points() * self.c * self.oc
    }

    /// Multiply-adds of the GEMMs for one example.
    pub fn macs(&self) -> usize {
        [self.tiles_per_example(), self.c, self.oc]
            .iter()
            .fold(self.points(), |a, &b| a.saturating_mul(b))
    }
}

/// `G` of F(2×2, 3×3) (4 × 3) and of F(4×4, 3×3) (6 × 3).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const G4: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Writes `U = G g Gᵀ` of the `[oc, c, 3, 3]` weights `w` into `u` (at least
/// [`WinoGeom::weights_len`] floats) in the layout of the module doc; computed in f64.
pub fn transform_weights(g: &WinoGeom, w: &[f32], u: &mut [f32]) {
    let (c, oc) = (g.c, g.oc);
    assert!(w.len() >= oc * c * 9 && u.len() >= g.weights_len());
    let gm: &[[f64; 3]] = if g.tile == 2 { &G2 } else { &G4 };
    let a = gm.len();
    for o in 0..oc {
        for ch in 0..c {
            let k = &w[(o * c + ch) * 9..][..9];
            for i in 0..a {
                // Row i of G g.
                let t: [f64; 3] =
                    core::array::from_fn(|v| (0..3).map(|r| gm[i][r] * k[r * 3 + v] as f64).sum());
                for j in 0..a {
                    let val: f64 = (0..3).map(|v| t[v] * gm[j][v]).sum();
                    u[(i * a + j) * c * oc + ch * oc + o] = val as f32;
                }
            }
        }
    }
}

/// Writes `n` examples of `x` (`[c, h, w]` each) zero-padded, channels last, into `xh`.
fn pad_channels_last(g: &WinoGeom, n: usize, x: &[f32], xh: &mut [f32]) {
    let (_, wp) = g.padded();
    let (c, len) = (g.c, g.padded_len());
    for e in 0..n {
        let xh = &mut xh[e * len..][..len];
        xh.fill(0.0);
        for ch in 0..c {
            for iy in 0..g.h {
                let src = &x[((e * c + ch) * g.h + iy) * g.w..][..g.w];
                let dst = &mut xh[((iy + g.pad[0]) * wp + g.pad[1]) * c + ch..];
                for (ix, &v) in src.iter().enumerate() {
                    dst[ix * c] = v;
                }
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

/// `a + k·b`.
#[inline(always)]
fn add_k<const N: usize>(a: Lane<N>, k: f32, b: Lane<N>) -> Lane<N> {
    core::array::from_fn(|l| a[l] + k * b[l])
}

#[inline(always)]
fn load<const N: usize>(s: &[f32], at: usize) -> Lane<N> {
    let mut v = [0f32; N];
    v.copy_from_slice(&s[at..at + N]);
    v
}

/// `o = Bᵀ d` along one dimension: F(2×2, 3×3) for 4 values, F(4×4, 3×3) for 6.
#[inline(always)]
fn bt<const N: usize>(d: &[Lane<N>], o: &mut [Lane<N>]) {
    if d.len() == 4 {
        o[0] = sub(d[0], d[2]);
        o[1] = add(d[1], d[2]);
        o[2] = sub(d[2], d[1]);
        o[3] = sub(d[1], d[3]);
    } else {
        let (s12, d12) = (add(d[1], d[2]), sub(d[1], d[2]));
        let (s34, d43) = (add(d[3], d[4]), sub(d[4], d[3]));
        let (d42, d31) = (sub(d[4], d[2]), sub(d[3], d[1]));
        o[0] = add_k(add_k(d[4], 4.0, d[0]), -5.0, d[2]);
        o[1] = add_k(s34, -4.0, s12);
        o[2] = add_k(d43, 4.0, d12);
        o[3] = add_k(d42, 2.0, d31);
        o[4] = add_k(d42, -2.0, d31);
        o[5] = add_k(add_k(d[5], 4.0, d[1]), -5.0, d[3]);
    }
}

/// `o = Aᵀ m` along one dimension: F(2×2, 3×3) for 4 values, F(4×4, 3×3) for 6.
#[inline(always)]
fn at<const N: usize>(m: &[Lane<N>], o: &mut [Lane<N>]) {
    if m.len() == 4 {
        o[0] = add(add(m[0], m[1]), m[2]);
        o[1] = sub(sub(m[1], m[2]), m[3]);
    } else {
        let (s12, d12) = (add(m[1], m[2]), sub(m[1], m[2]));
        let (s34, d34) = (add(m[3], m[4]), sub(m[3], m[4]));
        o[0] = add(add(m[0], s12), s34);
        o[1] = add_k(d12, 2.0, d34);
        o[2] = add_k(s12, 4.0, s34);
        o[3] = add(add_k(d12, 8.0, d34), m[5]);
    }
}

/// `V = Bᵀ d B` for `N` channels of one tile (`α` = `A`): `d[r][s]` at `xh[b + r·rs + s·cs..]`,
/// `V_ξ` at `v[vb + ξ·vs..]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn input_chunk<const N: usize, const A: usize>(
    xh: &[f32],
    b: usize,
    rs: usize,
    cs: usize,
    v: &mut [f32],
    vb: usize,
    vs: usize,
) {
    // Bᵀ d, column by column (`t[s]` is column `s`).
    let mut t = [[[0f32; N]; A]; A];
    for s in 0..A {
        let col: [Lane<N>; A] = core::array::from_fn(|r| load(xh, b + r * rs + s * cs));
        bt(&col, &mut t[s]);
    }
    // (Bᵀ d) B, row by row.
    let mut row = [[0f32; N]; A];
    let mut o = [[0f32; N]; A];
    for i in 0..A {
        for s in 0..A {
            row[s] = t[s][i];
        }
        bt(&row, &mut o);
        for j in 0..A {
            v[vb + (i * A + j) * vs..][..N].copy_from_slice(&o[j]);
        }
    }
}

/// The input transform of tiles `t0..t1` (of examples padded in `xh`) into `V` (`vs` floats
/// per point).
#[inline(always)]
#[allow(clippy::int_plus_one)]
fn input_body<const L: usize, const H: usize>(
    g: &WinoGeom,
    xh: &[f32],
    t0: usize,
    t1: usize,
    vs: usize,
    v: &mut [f32],
) {
    let (c, m) = (g.c, g.tile);
    let (th, tw) = g.tiles();
    let (_, wp) = g.padded();
    let (rs, cs, len) = (wp * c, c, g.padded_len());
    for t in t0..t1 {
        let (e, r) = (t / (th * tw), t % (th * tw));
        let base = e * len + (m * (r / tw) * wp + m * (r % tw)) * c;
        let vb = (t - t0) * c;
        let mut c0 = 0;
        // `n` channels per step while `n` are left, for `n` = `L`, `H`, 1.
        macro_rules! steps {
            ($n:tt) => {
                while c0 + $n <= c {
                    if m == 2 {
                        input_chunk::<$n, 4>(xh, base + c0, rs, cs, v, vb + c0, vs);
                    } else {
                        input_chunk::<$n, 6>(xh, base + c0, rs, cs, v, vb + c0, vs);
                    }
                    c0 += $n;
                }
            };
        }
        steps!(L);
        steps!(H);
        steps!(1);
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

/// `Y = Aᵀ M A` for `N` output channels `o0..` of one tile (`α` = `A`, tile `T`; `M_ξ` at
/// `m[mb + ξ·ms..]`), plus bias, activated and stored.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn output_chunk<const N: usize, const A: usize, const T: usize>(
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
    // Aᵀ M, column by column (`s[j]` is column `j`).
    let mut s = [[[0f32; N]; T]; A];
    for j in 0..A {
        let col: [Lane<N>; A] = core::array::from_fn(|i| load(m, mb + (i * A + j) * ms));
        at(&col, &mut s[j]);
    }
    // (Aᵀ M) A, row by row.
    let mut out = [[[0f32; N]; T]; T];
    let mut row = [[0f32; N]; A];
    for i in 0..T {
        for j in 0..A {
            row[j] = s[j][i];
        }
        at(&row, &mut out[i]);
    }
    let (clamp, lo, hi, post) = act_clamp(act);
    let bv: Lane<N> = bias.map_or([0.0; N], |b| load(b, o0));
    for row in out.iter_mut() {
        for o in row.iter_mut() {
            *o = add(*o, bv);
            if clamp {
                *o = core::array::from_fn(|l| o[l].max(lo).min(hi));
            }
            if post {
                *o = core::array::from_fn(|l| act_scalar(act, o[l]));
            }
        }
    }
    let last = (o0 + N - 1) * ot.plane + ot.off + (ot.rows - 1) * ot.ow + ot.cols - 1;
    assert!(last < y_len);
    // SAFETY: every element written is at most `last`, inside `y` (asserted above); the caller
    // owns this tile's pixels.
    unsafe {
        for i in 0..ot.rows {
            let o = &out[i];
            for l in 0..N {
                let p = y.add((o0 + l) * ot.plane + ot.off + i * ot.ow);
                if ot.cols == T {
                    let r: [f32; T] = core::array::from_fn(|j| o[j][l]);
                    p.cast::<[f32; T]>().write_unaligned(r);
                } else {
                    for j in 0..ot.cols {
                        *p.add(j) = o[j][l];
                    }
                }
            }
        }
    }
}

/// The output transform of tiles `t0..t1` from `M` (`ms` floats per point) into `y`
/// (`[oc, oh, ow]` per example, `y_len` floats); writes only those tiles' pixels.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::int_plus_one)]
fn output_body<const L: usize, const H: usize>(
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
    let (oc, tile) = (g.oc, g.tile);
    let (th, tw) = g.tiles();
    let plane = g.oh * g.ow;
    for t in t0..t1 {
        let (e, r) = (t / (th * tw), t % (th * tw));
        let (oy, ox) = (tile * (r / tw), tile * (r % tw));
        let ot = OutTile {
            plane,
            off: e * oc * plane + oy * g.ow + ox,
            ow: g.ow,
            rows: (g.oh - oy).min(tile),
            cols: (g.ow - ox).min(tile),
        };
        let mb = (t - t0) * oc;
        let mut o0 = 0;
        // `n` channels per step while `n` are left, for `n` = `L`, `H`, 1.
        macro_rules! steps {
            ($n:tt) => {
                while o0 + $n <= oc {
                    if tile == 2 {
                        output_chunk::<$n, 4, 2>(m, mb + o0, ms, o0, bias, act, y, y_len, ot);
                    } else {
                        output_chunk::<$n, 6, 4>(m, mb + o0, ms, o0, bias, act, y, y_len, ot);
                    }
                    o0 += $n;
                }
            };
        }
        steps!(L);
        steps!(H);
        steps!(1);
    }
}

type InputFn = unsafe fn(&WinoGeom, &[f32], usize, usize, usize, &mut [f32]);
type OutputFn =
    unsafe fn(&WinoGeom, &[f32], usize, usize, usize, Option<&[f32]>, Activation, *mut f32, usize);

/// One build of the transforms; the GEMMs run on [`gemm_kernel`]. [`WINOGRAD_KERNELS`] lists
/// them from most to least preferred.
pub struct WinogradKernel {
    pub name: &'static str,
    pub isa: Isa,
    input: InputFn,
    output: OutputFn,
}

/// The transforms compiled for one instruction set with `$l` channels per step (then `$h`,
/// then one, for the channels left).
macro_rules! transforms {
    ($input:ident, $output:ident, $l:literal, $h:literal $(, $feat:literal)?) => {
        $(#[target_feature(enable = $feat)])?
        unsafe fn $input(
            g: &WinoGeom,
            xh: &[f32],
            t0: usize,
            t1: usize,
            vs: usize,
            v: &mut [f32],
        ) {
            input_body::<$l, $h>(g, xh, t0, t1, vs, v)
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
            output_body::<$l, $h>(g, m, t0, t1, ms, bias, act, y, y_len)
        }
    };
}

#[cfg(target_arch = "x86_64")]
transforms!(input_avx512, output_avx512, 16, 8, "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
transforms!(input_avx2, output_avx2, 8, 4, "avx2,fma");
#[cfg(target_arch = "aarch64")]
transforms!(input_neon, output_neon, 8, 4);
transforms!(input_scalar, output_scalar, 4, 2);

/// Every Winograd transform build, most preferred first; the last entry runs everywhere.
pub static WINOGRAD_KERNELS: &[WinogradKernel] = &[
    #[cfg(target_arch = "x86_64")]
    WinogradKernel {
        name: "winograd_f32_3x3_avx512",
        isa: Isa::Avx512F,
        input: input_avx512,
        output: output_avx512,
    },
    #[cfg(target_arch = "x86_64")]
    WinogradKernel {
        name: "winograd_f32_3x3_avx2fma",
        isa: Isa::Avx2Fma,
        input: input_avx2,
        output: output_avx2,
    },
    #[cfg(target_arch = "aarch64")]
    WinogradKernel {
        name: "winograd_f32_3x3_neon",
        isa: Isa::Neon,
        input: input_neon,
        output: output_neon,
    },
    WinogradKernel {
        name: "winograd_f32_3x3_scalar",
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
    /// `y = act(conv(x, w) + bias)` for `n` examples back to back: `x` `[c, h, w]` each, `y`
    /// `[oc, oh, ow]` each, `u` the weights transformed by [`transform_weights`] for `g`,
    /// `bias` `oc` values. Needs [`WinoGeom::scratch_len`]`(n, 1)` floats of `scratch` and
    /// [`WinoGeom::ws_len`]`(n)` of `ws`; panics on shorter buffers or a CPU without this
    /// build's instruction set. Never allocates.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        g: &WinoGeom,
        n: usize,
        x: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
        scratch: &mut [f32],
        ws: &mut [f32],
    ) {
        assert!(scratch.len() >= g.scratch_len(n, 1));
        let (xh, vm) = scratch.split_at_mut(n * g.padded_len());
        self.pad(g, 0..n, x, xh);
        let tiles = n * g.tiles_per_example();
        // SAFETY: `y` is an exclusive slice.
        unsafe {
            self.run_tiles(
                g,
                n,
                xh,
                u,
                bias,
                act,
                0..tiles,
                y.as_mut_ptr(),
                y.len(),
                vm,
                ws,
            )
        }
    }

    /// Writes examples `examples` of `x` (all examples, `[c, h, w]` each) into `xh` (their
    /// padded inputs, [`WinoGeom::padded_len`] floats each) as [`Self::run_tiles`] reads them.
    pub(crate) fn pad(
        &self,
        g: &WinoGeom,
        examples: core::ops::Range<usize>,
        x: &[f32],
        xh: &mut [f32],
    ) {
        let n = examples.len();
        let (x0, len) = (examples.start * g.c * g.h * g.w, g.padded_len());
        assert!(x.len() >= x0 + n * g.c * g.h * g.w && xh.len() >= n * len);
        pad_channels_last(g, n, &x[x0..], xh);
    }

    /// [`WinogradKernel::run`] for tiles `tiles` of `n` examples padded in `xh`
    /// ([`Self::pad`]), `vm` holding [`WinoGeom::tiles_len`]`(n)` floats and `ws`
    /// [`WinoGeom::ws_len`]`(n)`.
    ///
    /// # Safety
    /// `y` addresses `y_len` floats of one allocation; the call writes only the pixels of
    /// `tiles` (of every output channel), and nothing else accesses those during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run_tiles(
        &self,
        g: &WinoGeom,
        n: usize,
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
        let (c, oc, points) = (g.c, g.oc, g.points());
        assert!(matches!(g.tile, 2 | 4));
        assert!(y_len >= n * oc * g.oh * g.ow && tiles.end <= n * g.tiles_per_example());
        assert!(u.len() >= g.weights_len() && vm.len() >= g.tiles_len(n));
        assert!(xh.len() >= n * g.padded_len() && bias.is_none_or(|b| b.len() >= oc));
        assert!(g.oh + 2 == g.h + 2 * g.pad[0] && g.ow + 2 == g.w + 2 * g.pad[1]);
        if oc == 0 {
            return;
        }
        let tb = g.block_tiles(n);
        let (vs, ms) = (g.point_stride(n, c), g.point_stride(n, oc));
        let (v, rest) = vm.split_at_mut(points * vs);
        let m = &mut rest[..points * ms];
        let gemm = gemm_kernel();
        for t0 in tiles.clone().step_by(tb) {
            let t1 = (t0 + tb).min(tiles.end);
            let nb = t1 - t0;
            // SAFETY: the instruction set is available (asserted above); the bodies index
            // their slices with bounds checks.
            unsafe { (self.input)(g, xh, t0, t1, vs, v) };
            for xi in 0..points {
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
