//! Convolution GEMM with the output channels in the vector lanes ("channels in lanes"): a
//! register tile holds `P` output pixels × `NR` output channels, each step of `k` loads `NR`
//! packed weights and broadcasts `P` input values, and the tile is transposed into `C`'s
//! channel-major rows when it is stored.
//!
//! The pixel-major GEMM ([`super::GEMM_KERNELS`]) puts pixels in the lanes, so an implicit
//! convolution computes whole vectors of the padded grid: 224 columns for a 14×14 map, 64 for a
//! 7×7 one. Here a tile covers a run of one output row exactly (any `P` up to the kernel's
//! widest), so no padded column is computed; the price is the transposing store.
//!
//! Operands:
//! - weights: a [`PackedA`] with `mr == NR` (panel `q`'s element `(i, p)` at
//!   `q·NR·k + p·NR + i`), packed once when a session is planned;
//! - input: element `(p, q)` of the patch matrix (step `p`, output pixel `q`) is
//!   `x[offs[p] + pix(q)]`, where output pixel `q = r·ow + j` of an `oh × ow` map sits at
//!   `pix(q) = r·wp + j` of the (padded) image rows `wp` wide ([`Pixels`]);
//! - output: `C[i·ldc + q]` for channel `i` and output pixel `q`.

use alloc::vec::Vec;

use super::{act_clamp, act_scalar, Activation, Isa, PackedA};

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Epilogue of one tile.
pub(crate) struct OcTile {
    /// `NR` per-channel bias values, added after the sum.
    pub bias: *const f32,
    /// Clamp the result to `[lo, hi]` before storing.
    pub clamp: bool,
    pub lo: f32,
    pub hi: f32,
    /// Prefetch the weights this many floats after each step's (0: none).
    pub prefetch: usize,
}

/// Micro-kernel of `P` pixels (fixed per function) × `NR` channels:
/// `c[i·ldc + j] = epilogue(sum_{p<k} w[p·NR + i] · x[offs[p] + j])` for `i < rows`, `j < P`.
///
/// # Safety
/// `w[0..k·NR]` and, for `p < k`, `offs[p]` and `x[offs[p] + j]` (`j < P`) are readable f32;
/// `c[i·ldc + j]` (`i < rows <= NR`, `j < P`) is writable; `t.bias` addresses `NR` readable
/// f32; the CPU supports the kernel's [`Isa`].
pub(crate) type OcFn = unsafe fn(
    k: usize,
    w: *const f32,
    x: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    t: &OcTile,
);

/// Lanes of one instruction set, as the tile body uses them.
pub(crate) trait Lanes {
    const N: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    /// `N` lanes of `*p`.
    unsafe fn splat(p: *const f32) -> Self::V;
    /// Reads `p[0..N]`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Writes `p[0..N]`.
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `acc + a * b`.
    unsafe fn fma(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// `min(max(v, lo), hi)` per lane.
    unsafe fn clamp(v: Self::V, lo: Self::V, hi: Self::V) -> Self::V;
    /// Asks for the cache line holding `p` (any address; never faults).
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
    /// Stores the tile transposed: lane `l` of `acc[j][v]` (channel `v·N + l`, pixel `j`) to
    /// `c[(v·N + l)·ldc + j]`, for channels below `rows`.
    #[inline(always)]
    unsafe fn store_tile<const P: usize, const V: usize>(
        acc: &[[Self::V; V]; P],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) where
        Self: Sized,
    {
        // SAFETY: the caller's contract.
        unsafe { store_tile_buf::<Self, P, V>(acc, c, ldc, rows) }
    }
}

/// [`Lanes::store_tile`] through a stack buffer and scalar copies.
///
/// # Safety
/// `c[i·ldc + j]` is writable for `i < rows <= V·L::N`, `j < P`; `P·V·L::N <= MAX_TILE`.
#[inline(always)]
unsafe fn store_tile_buf<L: Lanes, const P: usize, const V: usize>(
    acc: &[[L::V; V]; P],
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    let nr = V * L::N;
    let mut buf = core::mem::MaybeUninit::<[f32; MAX_TILE]>::uninit();
    let buf = buf.as_mut_ptr() as *mut f32;
    // SAFETY: `P·nr <= MAX_TILE` floats of the buffer are written, then read; the output
    // elements are the caller's.
    unsafe {
        for (j, acc) in acc.iter().enumerate() {
            for (v, &a) in acc.iter().enumerate() {
                L::store(buf.add(j * nr + v * L::N), a);
            }
        }
        for i in 0..rows {
            let cr = c.add(i * ldc);
            for j in 0..P {
                *cr.add(j) = *buf.add(j * nr + i);
            }
        }
    }
}

/// Widest `NR · P` of any kernel (the transposing store's stack buffer).
const MAX_TILE: usize = 32 * 14;

/// The tile body every [`OcFn`] instantiates: `P` pixels × `V` vectors of `L::N` channels.
///
/// # Safety
/// As [`OcFn`] with `NR = V · L::N <= 32`, `P · NR <= MAX_TILE`, called from a function
/// compiled for `L`'s instruction set.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn tile<L: Lanes, const P: usize, const V: usize>(
    k: usize,
    w: *const f32,
    x: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    t: &OcTile,
) {
    let nr = V * L::N;
    debug_assert!(nr <= 32 && P * nr <= MAX_TILE && rows <= nr);
    // SAFETY: every access below is one the caller's contract allows: `k` steps of `NR`
    // weights and `P` inputs at `x + offs[p]`, then rows `< rows` of the output tile.
    unsafe {
        let mut acc = [[L::zero(); V]; P];
        macro_rules! step {
            ($p:expr) => {
                let xp = x.add(*offs.add($p));
                let wp = w.add($p * nr);
                // Prefetch addresses use wrapping arithmetic and are never dereferenced.
                if t.prefetch != 0 {
                    L::prefetch(wp.wrapping_add(t.prefetch));
                    L::prefetch(wp.wrapping_add(t.prefetch + nr - 1));
                }
                let wv: [L::V; V] = core::array::from_fn(|v| L::load(wp.add(v * L::N)));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let b = L::splat(xp.add(j));
                    for (a, &wv) in acc.iter_mut().zip(&wv) {
                        *a = L::fma(*a, wv, b);
                    }
                }
            };
        }
        for p in (0..k / 2).map(|i| 2 * i) {
            step!(p);
            step!(p + 1);
        }
        if k % 2 == 1 {
            step!(k - 1);
        }
        let bias: [L::V; V] = core::array::from_fn(|v| L::load(t.bias.add(v * L::N)));
        let (lo, hi) = (L::splat(&t.lo), L::splat(&t.hi));
        for acc in acc.iter_mut() {
            for (a, &b) in acc.iter_mut().zip(&bias) {
                *a = L::add(*a, b);
                if t.clamp {
                    *a = L::clamp(*a, lo, hi);
                }
            }
        }
        L::store_tile::<P, V>(&acc, c, ldc, rows);
    }
}

/// Builds a `[OcFn; PMAX]` table of `$f::<P, $v>` for `P = 1..=PMAX`.
macro_rules! oc_table {
    ($m:ident::$f:ident, $v:literal; $($p:literal)*) => {
        &[$($m::$f::<$p, $v> as OcFn),*]
    };
}

/// One channels-in-lanes implementation. [`OCGEMM_KERNELS`] lists them from most to least
/// preferred.
pub struct OcGemmKernel {
    pub name: &'static str,
    pub isa: Isa,
    /// Channels per tile (the packed panels' `mr`).
    pub nr: usize,
    /// Widest tile in pixels; `fns[P - 1]` runs `P` pixels.
    pub pmax: usize,
    /// Shallowest sum for which the kernel is worth choosing over the pixel-major GEMM of the
    /// same instruction set: below it the transposing store outweighs the padded columns it
    /// saves (measured for AVX-512 and AVX2 on the `conv1x1/` bench group; NEON's is a guess
    /// on the safe side until measured on a device).
    pub min_k: usize,
    fns: &'static [OcFn],
}

/// Every channels-in-lanes kernel, most preferred first; the last runs everywhere.
pub static OCGEMM_KERNELS: &[OcGemmKernel] = &[
    #[cfg(target_arch = "x86_64")]
    OcGemmKernel {
        name: "ocgemm_f32_14x32_avx512",
        isa: Isa::Avx512F,
        nr: 32,
        pmax: 14,
        min_k: 64,
        fns: oc_table!(x86::oc_avx512, 2; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
    },
    #[cfg(target_arch = "x86_64")]
    OcGemmKernel {
        name: "ocgemm_f32_6x16_avx2fma",
        isa: Isa::Avx2Fma,
        nr: 16,
        pmax: 6,
        min_k: 384,
        fns: oc_table!(x86::oc_avx2, 2; 1 2 3 4 5 6),
    },
    #[cfg(target_arch = "aarch64")]
    OcGemmKernel {
        name: "ocgemm_f32_6x16_neon",
        isa: Isa::Neon,
        nr: 16,
        pmax: 6,
        min_k: 256,
        fns: oc_table!(neon::oc_neon, 4; 1 2 3 4 5 6),
    },
    OcGemmKernel {
        name: "ocgemm_f32_4x4_scalar",
        isa: Isa::Scalar,
        nr: 4,
        pmax: 4,
        min_k: 64,
        fns: oc_table!(scalar::oc_scalar, 4; 1 2 3 4),
    },
];

/// The channels-in-lanes kernel for this CPU.
pub fn ocgemm_kernel() -> &'static OcGemmKernel {
    OCGEMM_KERNELS
        .iter()
        .find(|k| k.isa.is_available())
        .unwrap_or(&OCGEMM_KERNELS[OCGEMM_KERNELS.len() - 1])
}

/// Where an `oh × ow` output map's pixels sit in the input: pixel `q = r·ow + j` at
/// `r·wp + j` (`wp >= ow`; an implicit convolution's padded width, or `ow` for a 1×1 one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pixels {
    pub oh: usize,
    pub ow: usize,
    pub wp: usize,
}

impl Pixels {
    /// Runs of pixels contiguous in both the input and the output: `(count, length)`.
    fn runs(&self) -> (usize, usize) {
        if self.wp == self.ow {
            (usize::from(self.oh * self.ow > 0), self.oh * self.ow)
        } else {
            (self.oh, self.ow)
        }
    }

    /// One past the input offset of the last pixel (0 for an empty map).
    fn extent(&self) -> usize {
        if self.oh == 0 || self.ow == 0 {
            0
        } else {
            (self.oh - 1) * self.wp + self.ow
        }
    }
}

impl OcGemmKernel {
    /// Tiles of `px` along its pixels: each run of pixels contiguous in both the input and the
    /// output (a row, or the whole map when `wp == ow`) cut into `ceil(len / pmax)` tiles.
    pub fn pixel_tiles(&self, px: Pixels) -> usize {
        let (runs, len) = px.runs();
        runs * len.div_ceil(self.pmax)
    }

    /// Floats of packed weights for `rows` channels and depth `k` ([`PackedA::len`]).
    pub fn packed_len(&self, rows: usize, k: usize) -> usize {
        PackedA::len(rows, k, self.nr)
    }

    /// `c[i·ldc + q] = act(bias[i] + sum_p w(i, p) · x[offs[p] + pix(q)])` for every channel
    /// `i < w.rows` and output pixel `q < oh·ow`; `k == 0` gives `act(bias)`. Other elements
    /// of `c` are untouched.
    ///
    /// Requires `w` packed for this kernel (`w.mr == nr`), `offs.len() == w.cols`, every input
    /// read inside `x`, `ldc >= oh·ow`, `c` long enough and a bias of `w.rows` values; panics
    /// otherwise. Never allocates.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        w: PackedA<'_>,
        x: &[f32],
        offs: &[usize],
        px: Pixels,
        c: &mut [f32],
        ldc: usize,
        bias: Option<&[f32]>,
        act: Activation,
    ) {
        let tiles = self.pixel_tiles(px);
        self.run_tiles(w, x, offs, px, c, ldc, bias, act, 0..tiles)
    }

    /// [`OcGemmKernel::run`] for the pixel tiles `tiles` only (of
    /// [`OcGemmKernel::pixel_tiles`], in pixel order).
    #[allow(clippy::too_many_arguments)]
    pub fn run_tiles(
        &self,
        w: PackedA<'_>,
        x: &[f32],
        offs: &[usize],
        px: Pixels,
        c: &mut [f32],
        ldc: usize,
        bias: Option<&[f32]>,
        act: Activation,
        tiles: core::ops::Range<usize>,
    ) {
        // SAFETY: `c` is an exclusive slice of `c.len()` floats.
        unsafe {
            self.run_raw(
                w,
                x,
                offs,
                px,
                c.as_mut_ptr(),
                c.len(),
                ldc,
                bias,
                act,
                tiles,
            )
        }
    }

    /// [`OcGemmKernel::run`] for channels `w.rows` (a sub-block from [`PackedA::rows`], with its
    /// bias) and the pixel tiles `tiles` (of [`OcGemmKernel::pixel_tiles`]), on an output
    /// given as a pointer, for parts of a parallel call that own disjoint parts of one `C`.
    /// Checks everything `run` checks, against `c_len`.
    ///
    /// # Safety
    /// `c` addresses `c_len` floats of one allocation; the call writes only the elements
    /// `c[i·ldc + q]` of its channels and tiles, and nothing else accesses those meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run_raw(
        &self,
        w: PackedA<'_>,
        x: &[f32],
        offs: &[usize],
        px: Pixels,
        c: *mut f32,
        c_len: usize,
        ldc: usize,
        bias: Option<&[f32]>,
        act: Activation,
        tiles: core::ops::Range<usize>,
    ) {
        assert!(
            self.isa.is_available(),
            "ocgemm: kernel {} not supported on this CPU",
            self.name
        );
        let (m, k) = (w.rows, w.cols);
        let n = px.oh * px.ow;
        if m == 0 || n == 0 {
            return;
        }
        assert_eq!(w.mr, self.nr, "ocgemm: weights packed for another kernel");
        assert!(
            w.data.len() >= PackedA::len(m, k, self.nr),
            "ocgemm: packed weights too short"
        );
        assert_eq!(
            offs.len(),
            k,
            "ocgemm: {} offsets for depth {k}",
            offs.len()
        );
        assert!(px.wp >= px.ow, "ocgemm: bad pixel map {px:?}");
        let extent = px.extent();
        assert!(
            offs.iter()
                .all(|&o| o.checked_add(extent).is_some_and(|e| e <= x.len())),
            "ocgemm: a row of the input exceeds its {} elements",
            x.len()
        );
        assert!(ldc >= n, "ocgemm: ldc {ldc} < {n} pixels");
        assert!(c_len >= (m - 1) * ldc + n, "ocgemm: output slice too short");
        if let Some(b) = bias {
            assert!(b.len() >= m, "ocgemm: bias shorter than the channels");
        }
        let (runs, len) = px.runs();
        let per_run = len.div_ceil(self.pmax);
        assert!(tiles.end <= runs * per_run, "ocgemm: tiles past the map");
        let (clamp, lo, hi, post) = act_clamp(act);
        let nr = self.nr;
        let mut bbuf = [0.0f32; 32];
        debug_assert!(nr <= bbuf.len() && self.pmax * nr <= MAX_TILE);
        for (q, i0) in (0..m).step_by(nr).enumerate() {
            let rows = nr.min(m - i0);
            match bias {
                Some(b) => {
                    bbuf[..rows].copy_from_slice(&b[i0..i0 + rows]);
                    bbuf[rows..nr].fill(0.0);
                }
                None => bbuf[..nr].fill(0.0),
            }
            let mut t = OcTile {
                bias: bbuf.as_ptr(),
                clamp,
                lo,
                hi,
                prefetch: 0,
            };
            let panel = &w.data[q * nr * k..];
            for tix in tiles.clone() {
                // A panel's first tile streams its weights from memory; the second, running
                // from the cache, brings in the next panel's meanwhile.
                t.prefetch = if tix == tiles.start + 1 && i0 + nr < m {
                    nr * k
                } else {
                    0
                };
                // Runs are cut into `per_run` tiles of nearly equal width (a 7-pixel row into
                // 4 + 3 rather than 6 + 1 for a 6-pixel kernel).
                let (run, i) = (tix / per_run, tix % per_run);
                let j0 = i * len / per_run;
                let cnt = (i + 1) * len / per_run - j0;
                let (src, dst) = if px.wp == px.ow {
                    (j0, j0)
                } else {
                    (run * px.wp + j0, run * px.ow + j0)
                };
                // SAFETY: `panel` holds `k·nr` floats (checked length); every input read
                // `offs[p] + src + j` (`j < cnt`) is below `offs[p] + extent <= x.len()`; the
                // tile's outputs `(i0 + i)·ldc + dst + j` (`i < rows`) are below
                // `(m - 1)·ldc + n <= c_len` and belong to this call; `bbuf` holds `nr`
                // values; the ISA was checked.
                unsafe {
                    (self.fns[cnt - 1])(
                        k,
                        panel.as_ptr(),
                        x.as_ptr().add(src),
                        offs.as_ptr(),
                        c.add(i0 * ldc + dst),
                        ldc,
                        rows,
                        &t,
                    );
                }
                if post {
                    for i in 0..rows {
                        // SAFETY: as above, elements of this call's tile.
                        let y = unsafe {
                            core::slice::from_raw_parts_mut(c.add((i0 + i) * ldc + dst), cnt)
                        };
                        y.iter_mut().for_each(|v| *v = act_scalar(act, *v));
                    }
                }
            }
        }
    }
}

/// The offsets of a 1×1 convolution's input rows: channel `ci` of `channels` at `ci · plane`.
pub fn channel_offsets(channels: usize, plane: usize) -> Vec<usize> {
    (0..channels).map(|ci| ci * plane).collect()
}
