//! Packed GEMM in the BLIS style: the `k` dimension is cut into `kc` blocks, columns of `B` into
//! `nc` blocks and rows of `A` into `mc` blocks; each block is packed into the caller's workspace
//! and a register-blocked `MR × NR` micro-kernel computes one tile of `C` at a time.
//!
//! Packed layouts (all f32, f16 inputs are converted while packing):
//! - `A` block (`mc × kc`): `ceil(mc / MR)` panels of `MR × kc`; panel element `(i, p)` sits at
//!   `p * MR + i`. Rows past `mc` are zero.
//! - `B` block (`kc × nc`): `ceil(nc / NR)` panels of `kc × NR`; panel element `(p, j)` sits at
//!   `p * NR + j`. Columns past `nc` are zero.
//!
//! Bias is loaded into the accumulators' epilogue on the first `kc` block, later blocks add the
//! partial result already in `C`; on the last block ReLU / ReLU6 are applied in registers and
//! the other activations on the tile right after it is stored.

use half::f16;

use super::{act_clamp, act_scalar, Activation, Bias, Elems, Isa, MatRef};

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Largest `MR` / `NR` of any registered kernel (edge tiles go through a stack buffer this big).
const MAX_MR: usize = 8;
const MAX_NR: usize = 32;
const _: () = assert!(MAX_NR >= MAX_MR);
static ZEROS: [f32; MAX_NR] = [0.0; MAX_NR];

/// The `B` operand of [`GemmKernel::run_b`].
#[derive(Clone, Copy, Debug)]
pub enum BOperand<'a> {
    /// A strided matrix.
    Mat(MatRef<'a>),
    /// A `offs.len() × cols` f32 matrix whose row `p` is `data[offs[p]..offs[p] + cols]`: a
    /// convolution's patch matrix read straight from its padded image (implicit GEMM). With a
    /// `crop`, `C` keeps only the columns that are output pixels (see [`Crop`]).
    Rows {
        data: &'a [f32],
        offs: &'a [usize],
        cols: usize,
        crop: Option<Crop>,
    },
}

/// The output pixels among an implicit convolution's columns: column `j` is pixel `first + j`
/// of a grid `wp` wide, an output pixel when `(first + j) % wp < ow`. Output pixels are stored
/// in order, packed: column `j` goes to `C`'s column `packed(first + j) - packed(first)` with
/// `packed(q) = (q / wp) * ow + min(q % wp, ow)`; the other columns are computed and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub wp: usize,
    pub ow: usize,
    pub first: usize,
}

impl Crop {
    fn packed(&self, q: usize) -> usize {
        (q / self.wp) * self.ow + (q % self.wp).min(self.ow)
    }

    /// Output columns of `C` for columns `j0..j1` of `B`, and the first one's position.
    fn span(&self, j0: usize, j1: usize) -> (usize, usize) {
        let base = self.packed(self.first);
        let (a, b) = (self.packed(self.first + j0), self.packed(self.first + j1));
        (a - base, b - a)
    }

    /// Bit `l` set when column `j0 + l` (`l < len`) is an output pixel.
    fn keep(&self, j0: usize, len: usize) -> u32 {
        let mut keep = 0u32;
        let mut x = (self.first + j0) % self.wp;
        for l in 0..len.min(32) {
            if x < self.ow {
                keep |= 1 << l;
            }
            x += 1;
            if x == self.wp {
                x = 0;
            }
        }
        keep
    }

    /// `C`'s columns that columns `0..j` of the operand fill.
    pub fn packed_cols(&self, j: usize) -> usize {
        self.span(0, j).1
    }

    /// The same crop for columns `j0..` of the operand.
    pub fn shifted(self, j0: usize) -> Self {
        Crop {
            first: self.first + j0,
            ..self
        }
    }
}

impl BOperand<'_> {
    fn rows(&self) -> usize {
        match self {
            BOperand::Mat(m) => m.rows,
            BOperand::Rows { offs, .. } => offs.len(),
        }
    }

    fn cols(&self) -> usize {
        match self {
            BOperand::Mat(m) => m.cols,
            BOperand::Rows { cols, .. } => *cols,
        }
    }

    fn crop(&self) -> Option<Crop> {
        match self {
            BOperand::Rows { crop, .. } => *crop,
            BOperand::Mat(_) => None,
        }
    }

    /// Columns of `C`: all of `B`'s, or those its crop keeps.
    fn out_cols(&self) -> usize {
        match self.crop() {
            Some(cr) => cr.packed_cols(self.cols()),
            None => self.cols(),
        }
    }

    fn check_bounds(&self) {
        match self {
            BOperand::Mat(m) => m.check_bounds("gemm: B"),
            BOperand::Rows {
                data,
                offs,
                cols,
                crop,
            } => {
                assert!(
                    offs.iter()
                        .all(|&o| o.checked_add(*cols).is_some_and(|e| e <= data.len())),
                    "gemm: a row of B exceeds its {} elements",
                    data.len()
                );
                if let Some(cr) = crop {
                    assert!(cr.wp > 0 && cr.ow <= cr.wp, "gemm: bad crop {cr:?}");
                }
            }
        }
    }
}

/// `A` packed ahead of time by [`pack_a_panels`] for kernels with `mr`-row tiles: a
/// `rows × cols` f32 matrix stored as `ceil(rows / mr)` panels of `mr × cols`, panel `q`'s
/// element `(i, p)` (row `q * mr + i`) at `q * mr * cols + p * mr + i`, rows past `rows` zero.
/// Constant weights packed once when a session is planned save the per-call packing and let
/// the micro-kernel read `A` at constant offsets.
#[derive(Clone, Copy, Debug)]
pub struct PackedA<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub mr: usize,
}

impl<'a> PackedA<'a> {
    /// Floats [`pack_a_panels`] writes for a `rows × cols` matrix and `mr`-row panels.
    pub fn len(rows: usize, cols: usize, mr: usize) -> usize {
        rows.div_ceil(mr) * mr * cols
    }

    /// Rows `r0..r1` (`r0` a multiple of `mr`).
    pub fn rows(self, r0: usize, r1: usize) -> Self {
        assert!(r0.is_multiple_of(self.mr) && r0 <= r1 && r1 <= self.rows);
        PackedA {
            data: &self.data[r0 * self.cols..],
            rows: r1 - r0,
            ..self
        }
    }
}

/// Writes `a` into `dst` (at least [`PackedA::len`] floats) in the layout of [`PackedA`].
pub fn pack_a_panels<'d>(a: &MatRef<'_>, mr: usize, dst: &'d mut [f32]) -> PackedA<'d> {
    let len = PackedA::len(a.rows, a.cols, mr);
    let dst = &mut dst[..len];
    if len > 0 {
        a.check_bounds("pack_a_panels");
        pack_a(a, 0, a.rows, 0, a.cols, mr, dst);
    }
    PackedA {
        data: dst,
        rows: a.rows,
        cols: a.cols,
        mr,
    }
}

/// The `A` operand of [`GemmKernel::run_b`]: a strided matrix, or one packed by
/// [`pack_a_panels`] for the kernel that runs it.
#[derive(Clone, Copy, Debug)]
pub enum AOperand<'a> {
    Mat(MatRef<'a>),
    Packed(PackedA<'a>),
}

impl<'a> From<MatRef<'a>> for AOperand<'a> {
    fn from(m: MatRef<'a>) -> Self {
        AOperand::Mat(m)
    }
}

impl<'a> From<PackedA<'a>> for AOperand<'a> {
    fn from(p: PackedA<'a>) -> Self {
        AOperand::Packed(p)
    }
}

impl AOperand<'_> {
    pub fn rows(&self) -> usize {
        match self {
            AOperand::Mat(m) => m.rows,
            AOperand::Packed(p) => p.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            AOperand::Mat(m) => m.cols,
            AOperand::Packed(p) => p.cols,
        }
    }
}

/// Epilogue of one micro-tile, shared by every micro-kernel.
pub(crate) struct Tile {
    /// `acc += C` (every `kc` block after the first) instead of `acc += bias_r[i] + bias_c[j]`.
    pub accumulate: bool,
    /// Clamp the result to `[lo, hi]` before storing.
    pub clamp: bool,
    pub lo: f32,
    pub hi: f32,
    /// `MR` row-bias values.
    pub bias_r: *const f32,
    /// `NR` column-bias values.
    pub bias_c: *const f32,
    /// Store only the tile's columns whose bit is set, each row's kept columns packed to the
    /// left (`c + i * ldc` onwards). Set only for [`RowsKernel`]s of kernels with
    /// [`GemmKernel::crops`]; the others always get `None`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub crop: Option<u32>,
    /// Prefetch `B`'s row `p` this many floats ahead of where the kernel reads it (0: none).
    /// Set on a row block's first tile when `B` is read in place (`GemmKernel::ukernel_pf`).
    /// Kernels without the option ignore it.
    pub prefetch: usize,
}

/// Micro-kernel: `C[0..MR, 0..NR] = epilogue(sum_p a[i * a_rs + p * a_cs] * b[p * b_rs + j])`
/// where `c` addresses row `i` at `c + i * ldc`. Packed panels have `a_rs = 1`, `a_cs = MR`,
/// `b_rs = NR`; kernels with [`GemmKernel::strided`] also accept other strides (the driver
/// passes unpacked row-major operands: `a_cs = 1`, `b_rs = ldb`), the others only packed ones.
///
/// # Safety
/// Every `a[i * a_rs + p * a_cs]` and `b[p * b_rs + j]` (`i < MR`, `j < NR`, `p < kc`) is
/// readable f32; `c` addresses a writable `MR × NR` tile with row stride `ldc`; `t`'s bias pointers
/// address `MR` / `NR` readable f32; the CPU supports the kernel's [`Isa`].
pub(crate) type MicroKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
);

/// [`MicroKernel`] reading row `p` of `B` at `b + b_offs[p]` (a [`BOperand::Rows`] operand in
/// place, without packing).
///
/// # Safety
/// As [`MicroKernel`], with `b[b_offs[p] + j]` (`j < NR`, `p < kc`) readable f32 instead of
/// `b[p * b_rs + j]`, and `b_offs[p]` readable for `p < kc`; with `t.crop` of `keep`, only
/// `c[i * ldc .. i * ldc + keep.count_ones()]` need be writable, and `t.accumulate` is false.
pub(crate) type RowsKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
);

/// Where a micro-kernel's steps find the rows of `B`: row `p` at `b + p * b_rs` (a
/// [`MicroKernel`]), or at `b + b_offs[p]` with `ROWS` (a [`RowsKernel`]).
pub(crate) struct BRows<const ROWS: bool> {
    base: *const f32,
    next: *const f32,
    stride: usize,
    offs: *const usize,
}

impl<const ROWS: bool> BRows<ROWS> {
    #[inline(always)]
    pub(crate) fn new(b: *const f32, b_rs: usize, b_offs: *const usize) -> Self {
        BRows {
            base: b,
            next: b,
            stride: b_rs,
            offs: b_offs,
        }
    }

    /// The next row.
    ///
    /// # Safety
    /// Called at most `kc` times, within what the kernel's caller provides (with `ROWS`,
    /// `b_offs[p]` is readable and `b + b_offs[p]` lies in `B`'s allocation).
    #[inline(always)]
    pub(crate) unsafe fn next(&mut self) -> *const f32 {
        // SAFETY: the caller's contract.
        unsafe {
            if ROWS {
                let row = self.base.add(*self.offs);
                self.offs = self.offs.add(1);
                row
            } else {
                let row = self.next;
                self.next = self.next.wrapping_add(self.stride);
                row
            }
        }
    }
}

/// One GEMM implementation: a micro-kernel with its tile and cache-block sizes. [`GEMM_KERNELS`]
/// lists them from most to least preferred.
pub struct GemmKernel {
    pub name: &'static str,
    pub isa: Isa,
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// Cache blocks: rows of `A`, depth, columns of `B` per packed block.
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
    /// The micro-kernel reads `A` and `B` through arbitrary strides, so full panels of
    /// row-major f32 operands are used in place instead of being packed.
    pub strided: bool,
    /// Variants of the micro-kernel and its rows variant that prefetch `B` ahead
    /// ([`Tile::prefetch`]), run on a row block's first tile when `B` is read in place and
    /// larger than the caches: its rows are more strided streams than the hardware prefetchers
    /// follow, so a map that has left the cache stalls every panel. Measured per kernel; kept
    /// apart so the other tiles run the plain kernels.
    ukernel_pf: Option<(MicroKernel, RowsKernel)>,
    ukernel: MicroKernel,
    /// The micro-kernel's variant for [`BOperand::Rows`] read in place, if it has one.
    ukernel_rows: Option<RowsKernel>,
    /// The rows variant stores the columns a [`Crop`] keeps itself ([`Tile::crop`]).
    crop_store: bool,
}

/// Every GEMM micro-kernel, most preferred first; the last entry runs everywhere.
pub static GEMM_KERNELS: &[GemmKernel] = &[
    #[cfg(target_arch = "x86_64")]
    GemmKernel {
        name: "gemm_f32_8x32_avx512",
        isa: Isa::Avx512F,
        mr: 8,
        nr: 32,
        mc: 128,
        kc: 256,
        nc: 2048,
        strided: true,
        ukernel_pf: Some((
            x86::gemm_f32_8x32_avx512::<true>,
            x86::gemm_f32_8x32_avx512_rows::<true>,
        )),
        ukernel: x86::gemm_f32_8x32_avx512::<false>,
        ukernel_rows: Some(x86::gemm_f32_8x32_avx512_rows::<false>),
        crop_store: true,
    },
    #[cfg(target_arch = "x86_64")]
    GemmKernel {
        name: "gemm_f32_6x16_avx2fma",
        isa: Isa::Avx2Fma,
        mr: 6,
        nr: 16,
        mc: 144,
        kc: 256,
        nc: 2048,
        strided: true,
        ukernel_pf: None,
        ukernel: x86::gemm_f32_6x16_avx2fma,
        ukernel_rows: Some(x86::gemm_f32_6x16_avx2fma_rows),
        crop_store: false,
    },
    #[cfg(target_arch = "aarch64")]
    GemmKernel {
        name: "gemm_f32_8x8_neon",
        isa: Isa::Neon,
        mr: 8,
        nr: 8,
        mc: 128,
        kc: 256,
        nc: 1024,
        strided: false,
        ukernel_pf: None,
        ukernel: neon::gemm_f32_8x8_neon,
        ukernel_rows: Some(neon::gemm_f32_8x8_neon_rows),
        crop_store: false,
    },
    GemmKernel {
        name: "gemm_f32_4x4_scalar",
        isa: Isa::Scalar,
        mr: 4,
        nr: 4,
        mc: 64,
        kc: 256,
        nc: 512,
        strided: false,
        ukernel_pf: None,
        ukernel: scalar::gemm_f32_4x4_scalar,
        ukernel_rows: None,
        crop_store: false,
    },
];

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// f32 elements of workspace that [`gemm`] (with any registered kernel) needs for an
/// `m × n × k` product: one packed `A` block and one packed `B` block.
pub fn gemm_workspace(m: usize, n: usize, k: usize) -> usize {
    GEMM_KERNELS
        .iter()
        .map(|ker| ker.workspace(m, n, k))
        .max()
        .unwrap_or(0)
}

/// The kernel [`gemm`] uses on this CPU.
pub fn gemm_kernel() -> &'static GemmKernel {
    GEMM_KERNELS
        .iter()
        .find(|k| k.isa.is_available())
        .unwrap_or(&GEMM_KERNELS[GEMM_KERNELS.len() - 1])
}

/// GEMM with the best kernel for this CPU and any [`BOperand`]; see [`GemmKernel::run`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_b<'a>(
    a: impl Into<AOperand<'a>>,
    b: BOperand<'_>,
    c: &mut [f32],
    ldc: usize,
    bias: Bias<'_>,
    act: Activation,
    ws: &mut [f32],
) {
    gemm_kernel().run_b(a.into(), b, c, ldc, bias, act, ws)
}

/// GEMM with the best kernel for this CPU; see [`GemmKernel::run`].
pub fn gemm(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    bias: Bias<'_>,
    act: Activation,
    ws: &mut [f32],
) {
    gemm_kernel().run(a, b, c, ldc, bias, act, ws)
}

/// Panels of `B` ahead of the current one that a prefetching tile asks for.
const PREFETCH_PANELS: usize = 2;

/// Smallest `B` (floats spanned by its rows, 512 KB) whose in-place panels are prefetched.
const PREFETCH_MIN_FLOATS: usize = 1 << 17;

/// Deepest `k` a [`RowsKernel`] runs in one block, storing each tile once (which a [`Crop`]
/// needs to store it packed).
const ROWS_MAX_K: usize = 4608;

impl GemmKernel {
    /// Depth of the `k` blocks: at most `self.kc`, balanced so the last block is not a sliver.
    fn kc_for(&self, k: usize) -> usize {
        k.div_ceil(k.div_ceil(self.kc).max(1))
    }

    /// Whether a [`BOperand::Rows`] with a [`Crop`] of depth `k` runs at the micro-kernel's
    /// speed here: the kernel reads it in place and stores kept columns itself. Otherwise a
    /// cropped product goes through a scalar copy per tile, and a caller had better crop after.
    pub fn crops(&self, k: usize) -> bool {
        self.crop_store && self.ukernel_rows.is_some() && k <= ROWS_MAX_K
    }

    /// Whether this kernel has variants that prefetch `B` (`GemmKernel::ukernel_pf`), run
    /// when `B` is read in place and spans at least 512 KB.
    pub fn prefetches(&self) -> bool {
        self.ukernel_pf.is_some()
    }

    /// Depth of the `k` blocks for `b`: one block for a rows kernel's `Rows` operand.
    fn kc_for_b(&self, b: &BOperand<'_>, k: usize) -> usize {
        match b {
            BOperand::Rows { .. } if self.crops(k) => k,
            _ => self.kc_for(k),
        }
    }

    /// f32 elements of workspace this kernel needs for an `m × n × k` product.
    pub fn workspace(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        let (mc, nc) = (
            self.mc.min(round_up(m, self.mr)),
            self.nc.min(round_up(n, self.nr)),
        );
        // One packed `A` block and one packed `B` block; in one block of depth `k` (a rows
        // kernel's `Rows` operand) only the last panel of `B` may need packing.
        let rows = if self.crops(k) { k * (mc + self.nr) } else { 0 };
        (self.kc_for(k) * (mc + nc)).max(rows)
    }

    /// `c[i * ldc + j] = act(sum_k a(i, k) * b(k, j) + bias(i, j))` for `i < a.rows`,
    /// `j < b.cols` (with a [`Crop`], only the columns it keeps, at their packed positions);
    /// `k == 0` gives `act(bias)`. Other elements of `c` are untouched.
    ///
    /// Requires `a.cols == b.rows`, `ldc >= b.cols`, `c.len() >= (a.rows - 1) * ldc + b.cols`,
    /// a bias of at least `a.rows` (row) or `b.cols` (column) values, and
    /// `ws.len() >= gemm_workspace(m, n, k)`; panics otherwise. Never allocates.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: &mut [f32],
        ldc: usize,
        bias: Bias<'_>,
        act: Activation,
        ws: &mut [f32],
    ) {
        self.run_b(AOperand::Mat(a), BOperand::Mat(b), c, ldc, bias, act, ws)
    }

    /// [`GemmKernel::run`] with any [`BOperand`].
    #[allow(clippy::too_many_arguments)]
    pub fn run_b(
        &self,
        a: AOperand<'_>,
        b: BOperand<'_>,
        c: &mut [f32],
        ldc: usize,
        bias: Bias<'_>,
        act: Activation,
        ws: &mut [f32],
    ) {
        // SAFETY: `c` is an exclusive slice of `c.len()` floats.
        unsafe { self.run_b_raw(a, b, c.as_mut_ptr(), c.len(), ldc, bias, act, ws) }
    }

    /// [`GemmKernel::run_b`] on an output given as a pointer, for parts of a parallel GEMM that
    /// own disjoint columns of one `C`. Checks everything `run_b` checks, against `c_len`.
    ///
    /// # Safety
    /// `c` addresses `c_len` floats of one allocation; the call reads and writes only elements
    /// `c[i * ldc + j]` (`i < m`, `j <` the output columns: `n`, or those a crop keeps), and
    /// nothing else accesses those during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run_b_raw(
        &self,
        a: AOperand<'_>,
        b: BOperand<'_>,
        c: *mut f32,
        c_len: usize,
        ldc: usize,
        bias: Bias<'_>,
        act: Activation,
        ws: &mut [f32],
    ) {
        assert_eq!(a.cols(), b.rows(), "gemm: inner dimensions differ");
        assert!(
            self.isa.is_available(),
            "gemm: kernel {} not supported on this CPU",
            self.name
        );
        let (m, n, k) = (a.rows(), b.cols(), a.cols());
        if m == 0 || n == 0 {
            return;
        }
        let n_out = b.out_cols();
        assert!(ldc >= n_out, "gemm: ldc {ldc} < n {n_out}");
        assert!(
            c_len >= (m - 1) * ldc + n_out,
            "gemm: output slice too short"
        );
        match bias {
            Bias::None => {}
            Bias::Row(v) => assert!(v.len() >= m, "gemm: row bias shorter than m"),
            Bias::Col(v) => assert!(v.len() >= n, "gemm: column bias shorter than n"),
        }
        if k == 0 {
            let crop = b.crop();
            for i in 0..m {
                for j in 0..n {
                    let jo = match crop {
                        Some(cr) if cr.keep(j, 1) == 0 => continue,
                        Some(cr) => cr.packed_cols(j),
                        None => j,
                    };
                    // SAFETY: `i * ldc + jo < c_len` (checked above); element of this call.
                    unsafe { *c.add(i * ldc + jo) = act_scalar(act, bias.at(i, j)) };
                }
            }
            return;
        }
        match a {
            AOperand::Mat(a) => a.check_bounds("gemm: A"),
            AOperand::Packed(p) => {
                assert_eq!(p.mr, self.mr, "gemm: A packed for another kernel");
                assert!(
                    p.data.len() >= PackedA::len(m, k, p.mr),
                    "gemm: packed A too short"
                );
            }
        }
        b.check_bounds();
        let need = self.workspace(m, n, k);
        assert!(ws.len() >= need, "gemm: workspace {} < {need}", ws.len());
        // SAFETY: the checks above establish every invariant `run_blocked` documents.
        unsafe { self.run_blocked(a, b, c, ldc, bias, act, ws) }
    }

    /// # Safety
    /// `m, n, k > 0`; `c` addresses `(m - 1) * ldc + n` writable f32 with `ldc >= n`; `a` and `b`
    /// pass `check_bounds`; the bias has `m` / `n` values; `ws` holds `self.workspace(m, n, k)`;
    /// the CPU supports `self.isa`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_blocked(
        &self,
        a: AOperand<'_>,
        b: BOperand<'_>,
        c: *mut f32,
        ldc: usize,
        bias: Bias<'_>,
        act: Activation,
        ws: &mut [f32],
    ) {
        let (m, n, k) = (a.rows(), b.cols(), a.cols());
        let (mr, nr) = (self.mr, self.nr);
        let kc_max = self.kc_for_b(&b, k);
        let mc_max = self.mc.min(round_up(m, mr));
        let (apack, rest) = ws.split_at_mut(mc_max * kc_max);
        // A rows kernel packs at most the last panel of `B`.
        let b_packed = match (b, self.ukernel_rows) {
            (BOperand::Rows { .. }, Some(_)) => nr,
            _ => self.nc.min(round_up(n, nr)),
        };
        let bpack = &mut rest[..kc_max * b_packed];
        let crop = b.crop();
        let (clamp, lo, hi, post) = act_clamp(act);
        // `A` is read in place when packed ahead of time, or when its full panels are
        // row-major f32 and the kernel takes strides.
        let (direct, prepacked) = match a {
            AOperand::Packed(p) => (None, Some(p.data.as_ptr())),
            AOperand::Mat(MatRef {
                data: Elems::F32(v),
                cs: 1,
                ..
            }) if self.strided => (Some(v.as_ptr()), None),
            AOperand::Mat(_) => (None, None),
        };
        // Full panels of row-major f32 `B` are read in place too when the panel is short
        // (`kc` rows, counted twice when rows are not 64-byte aligned, at most 256) and its
        // rows do not crowd a few L1 sets: a row stride of `s` cache lines (rows 64-byte
        // aligned) maps rows onto `64 / gcd(s, 64)` groups of sets, and at most 12 rows may
        // share a group (a 12-way L1; strides of 32 or 64 lines take a short panel only).
        let direct_b = match b {
            BOperand::Mat(b) => {
                let b_lines = if b.rs % 16 == 0 { kc_max } else { 2 * kc_max };
                let spread = b.rs % 16 != 0 || kc_max <= 12 * (64 / gcd((b.rs / 16) % 64, 64));
                match b.data {
                    Elems::F32(v) if self.strided && b.cs == 1 && spread && b_lines <= 256 => {
                        Some((v.as_ptr(), b.rs))
                    }
                    _ => None,
                }
            }
            BOperand::Rows { .. } => None,
        };
        // A `Rows` operand is read in place by kernels with a rows variant; the last panel too
        // when its full `nr` columns lie inside the data (the extra columns are dropped).
        let rows_b = match (b, self.ukernel_rows) {
            (
                BOperand::Rows {
                    data, offs, cols, ..
                },
                Some(_),
            ) => {
                let top = offs.iter().max().copied().unwrap_or(0);
                let edge_ok = top + round_up(cols, nr) <= data.len();
                Some((data.as_ptr(), offs.as_ptr(), edge_ok))
            }
            _ => None,
        };
        // Only a `B` larger than the caches ask to keep is worth prefetching; on cached
        // operands the prefetches cost more than they save.
        let b_span = match b {
            BOperand::Mat(bm) => k * bm.rs,
            BOperand::Rows { data, .. } => data.len(),
        };
        let prefetch = match self.ukernel_pf {
            Some(_) if b_span >= PREFETCH_MIN_FLOATS => PREFETCH_PANELS * nr,
            _ => 0,
        };
        let mut brow = [0f32; MAX_MR];
        let mut bcol = [0f32; MAX_NR];
        let mut tmp = [0f32; MAX_MR * MAX_NR];
        for jc in (0..n).step_by(self.nc) {
            let nc = self.nc.min(n - jc);
            for pc in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - pc);
                let (first, last) = (pc == 0, pc + kc == k);
                // Direct mode reads the full panels of `B` in place and packs the rest.
                let b_unpacked = match rows_b {
                    Some((.., true)) => nc,
                    Some(_) => nc / nr * nr,
                    None if direct_b.is_some() => nc / nr * nr,
                    None => 0,
                };
                pack_b(&b, pc, kc, jc + b_unpacked, nc - b_unpacked, nr, bpack);
                for ic in (0..m).step_by(self.mc) {
                    let mc = self.mc.min(m - ic);
                    // Direct mode reads the full panels of `A` in place and packs the rest.
                    let unpacked = if direct.is_some() { mc / mr * mr } else { 0 };
                    if let AOperand::Mat(a) = &a {
                        pack_a(a, ic + unpacked, mc - unpacked, pc, kc, mr, apack);
                    }
                    for jr in (0..nc).step_by(nr) {
                        let nr_eff = nr.min(nc - jr);
                        let j0 = jc + jr;
                        let (bpanel, b_rs) = match direct_b {
                            // SAFETY: rows `pc..pc + kc` and columns `j0..j0 + nr` of `B` are
                            // inside its data (`check_bounds`).
                            Some((base, rs)) if jr < b_unpacked => {
                                (unsafe { base.add(pc * rs + j0) }, rs)
                            }
                            // Unused: a rows kernel reads this panel in place.
                            _ if jr < b_unpacked => (core::ptr::null(), nr),
                            _ => (bpack[(jr - b_unpacked) * kc..].as_ptr(), nr),
                        };
                        let bias_c = match bias {
                            Bias::Col(v) if nr_eff == nr => v[j0..].as_ptr(),
                            Bias::Col(v) => {
                                bcol[..nr].fill(0.0);
                                bcol[..nr_eff].copy_from_slice(&v[j0..j0 + nr_eff]);
                                bcol.as_ptr()
                            }
                            _ => ZEROS.as_ptr(),
                        };
                        let in_place = rows_b.is_some() && jr < b_unpacked;
                        // Columns of `C` this panel writes: the first and how many, and
                        // which of the panel's columns they are (with a crop).
                        let (col, cnt, keep) = match crop {
                            Some(cr) => {
                                let (col, cnt) = cr.span(j0, j0 + nr_eff);
                                (col, cnt, cr.keep(j0, nr_eff))
                            }
                            None => (j0, nr_eff, 0),
                        };
                        for ir in (0..mc).step_by(mr) {
                            let mr_eff = mr.min(mc - ir);
                            let i0 = ic + ir;
                            let (apanel, a_rs, a_cs) = match (direct, prepacked, &a) {
                                // SAFETY: rows `i0..i0 + mr` and columns `pc..pc + kc` of `A`
                                // are inside its data (`check_bounds`).
                                (Some(base), _, AOperand::Mat(a)) if ir < unpacked => {
                                    (unsafe { base.add(i0 * a.rs + pc) }, a.rs, 1)
                                }
                                // SAFETY: `i0` is a multiple of `mr` (`mc` blocks are), and
                                // panel `i0 / mr` holds `mr * k` floats (checked length).
                                (_, Some(base), _) => {
                                    (unsafe { base.add(i0 * k + pc * mr) }, 1, mr)
                                }
                                _ => (apack[(ir - unpacked) * kc..].as_ptr(), 1, mr),
                            };
                            let bias_r = match bias {
                                Bias::Row(v) if mr_eff == mr => v[i0..].as_ptr(),
                                Bias::Row(v) => {
                                    brow[..mr].fill(0.0);
                                    brow[..mr_eff].copy_from_slice(&v[i0..i0 + mr_eff]);
                                    brow.as_ptr()
                                }
                                _ => ZEROS.as_ptr(),
                            };
                            // A cropped tile is stored by the kernel when it reads `B` in
                            // place, the tile is full height and `k` is one block.
                            let native = crop.is_some()
                                && self.crop_store
                                && in_place
                                && mr_eff == mr
                                && first
                                && last;
                            let tile = Tile {
                                accumulate: !first,
                                clamp: clamp && last,
                                lo,
                                hi,
                                bias_r,
                                bias_c,
                                crop: native.then_some(keep),
                                prefetch: if ir == 0 && jr < b_unpacked {
                                    prefetch
                                } else {
                                    0
                                },
                            };
                            // SAFETY: `i0 + mr_eff <= m` and `col + cnt` is at most the output
                            // columns, so the tile's elements lie inside `c` (caller contract).
                            let ct = unsafe { c.add(i0 * ldc + col) };
                            // SAFETY (both calls below): the packed panels hold `kc * mr` /
                            // `kc * nr` values (pack_a / pack_b zero-pad to full panels); a rows
                            // kernel reads row `p` of this panel at `offs[pc + p] + j0`, `nr`
                            // floats inside the data (`check_bounds` for full panels, `edge_ok`
                            // for the last); bias pointers address `mr` / `nr` values and the
                            // caller guarantees the ISA. `ct` addresses the tile's output.
                            let (uk_mat, uk_rows) = match (self.ukernel_pf, tile.prefetch) {
                                (Some(pf), 1..) => (pf.0, Some(pf.1)),
                                _ => (self.ukernel, self.ukernel_rows),
                            };
                            let run = |ct: *mut f32, ldc: usize| unsafe {
                                match (rows_b, uk_rows) {
                                    (Some((data, offs, _)), Some(uk)) if in_place => uk(
                                        kc,
                                        apanel,
                                        a_rs,
                                        a_cs,
                                        data.add(j0),
                                        offs.add(pc),
                                        ct,
                                        ldc,
                                        &tile,
                                    ),
                                    _ => {
                                        uk_mat(kc, apanel, a_rs, a_cs, bpanel, b_rs, ct, ldc, &tile)
                                    }
                                }
                            };
                            if native || (crop.is_none() && mr_eff == mr && nr_eff == nr) {
                                // The kernel stores the tile (or its kept columns) itself.
                                run(ct, ldc);
                            } else if crop.is_some() {
                                // SAFETY: the kernel writes the full tile into `tmp` (row
                                // stride `nr`); the `cnt` kept columns of its first `mr_eff`
                                // rows are read from and written to `c` in order.
                                unsafe {
                                    let kept = || (0..nr).filter(|l| keep >> l & 1 == 1);
                                    if !first {
                                        for i in 0..mr_eff {
                                            for (d, l) in kept().enumerate() {
                                                tmp[i * nr + l] = *ct.add(i * ldc + d);
                                            }
                                        }
                                    }
                                    run(tmp.as_mut_ptr(), nr);
                                    for i in 0..mr_eff {
                                        for (d, l) in kept().enumerate() {
                                            *ct.add(i * ldc + d) = tmp[i * nr + l];
                                        }
                                    }
                                }
                            } else {
                                // SAFETY: as above, but the kernel writes the full tile into
                                // `tmp` (`MAX_MR * MAX_NR >= mr * nr`, row stride `nr`) and only
                                // the `mr_eff × nr_eff` part inside `c` is read and written.
                                unsafe {
                                    if !first {
                                        for i in 0..mr_eff {
                                            core::ptr::copy_nonoverlapping(
                                                ct.add(i * ldc),
                                                tmp.as_mut_ptr().add(i * nr),
                                                nr_eff,
                                            );
                                        }
                                    }
                                    run(tmp.as_mut_ptr(), nr);
                                    for i in 0..mr_eff {
                                        core::ptr::copy_nonoverlapping(
                                            tmp.as_ptr().add(i * nr),
                                            ct.add(i * ldc),
                                            nr_eff,
                                        );
                                    }
                                }
                            }
                            if post && last {
                                for i in 0..mr_eff {
                                    // SAFETY: row `i0 + i` of the tile lies inside `c` and no
                                    // other reference to it is live.
                                    let row = unsafe {
                                        core::slice::from_raw_parts_mut(ct.add(i * ldc), cnt)
                                    };
                                    row.iter_mut().for_each(|v| *v = act_scalar(act, *v));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs rows `i0..i0 + mc`, columns `p0..p0 + kc` of `a` into `MR`-row panels (see the module
/// docs), zero-padding the last panel.
fn pack_a(a: &MatRef<'_>, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
    match a.data {
        Elems::F32(v) => pack_a_t(v, a.rs, a.cs, i0, mc, p0, kc, mr, dst),
        Elems::F16(v) => pack_a_t(v, a.rs, a.cs, i0, mc, p0, kc, mr, dst),
    }
}

/// Packs rows `p0..p0 + kc`, columns `j0..j0 + nc` of `b` into `NR`-column panels (see the
/// module docs), zero-padding the last panel.
fn pack_b(
    b: &BOperand<'_>,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    nr: usize,
    dst: &mut [f32],
) {
    // B(p, j) is A'(j, p) with A' = B^T, and a B panel has the layout of an A panel of B^T.
    match *b {
        BOperand::Mat(b) => match b.data {
            Elems::F32(v) => pack_a_t(v, b.cs, b.rs, j0, nc, p0, kc, nr, dst),
            Elems::F16(v) => pack_a_t(v, b.cs, b.rs, j0, nc, p0, kc, nr, dst),
        },
        BOperand::Rows { data, offs, .. } => {
            let offs = &offs[p0..p0 + kc];
            for (panel, jp) in (0..nc).step_by(nr).enumerate() {
                let d = &mut dst[panel * nr * kc..(panel + 1) * nr * kc];
                let start = j0 + jp;
                match (nr, nr.min(nc - jp)) {
                    (32, 32) => copy_rows::<32>(data, offs, start, d),
                    (16, 16) => copy_rows::<16>(data, offs, start, d),
                    (8, 8) => copy_rows::<8>(data, offs, start, d),
                    (_, cols) => {
                        for (dp, &o) in d.chunks_exact_mut(nr).zip(offs) {
                            dp[..cols].copy_from_slice(&data[o + start..o + start + cols]);
                            dp[cols..].fill(0.0);
                        }
                    }
                }
            }
        }
    }
}

/// `d[p * N..(p + 1) * N] = data[offs[p] + start..][..N]` for every `p`, in fixed-size copies.
#[inline(always)]
fn copy_rows<const N: usize>(data: &[f32], offs: &[usize], start: usize, d: &mut [f32]) {
    for (dp, &o) in d.chunks_exact_mut(N).zip(offs) {
        let src: &[f32; N] = data[o + start..o + start + N].try_into().expect("row");
        dp.copy_from_slice(src);
    }
}

trait Elem: Copy {
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// Panel packing of the `mc × kc` block at `(i0, p0)` of `src` (element `(i, p)` at
/// `i * rs + p * cs`) into `r`-row panels: `dst[(i / r) * r * kc + p * r + i % r]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack_a_t<T: Elem>(
    src: &[T],
    rs: usize,
    cs: usize,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    r: usize,
    dst: &mut [f32],
) {
    for (panel, ip) in (0..mc).step_by(r).enumerate() {
        let rows = r.min(mc - ip);
        let d = &mut dst[panel * r * kc..(panel + 1) * r * kc];
        match r {
            4 => pack_panel::<T, 4>(src, rs, cs, i0 + ip, rows, p0, d),
            6 => pack_panel::<T, 6>(src, rs, cs, i0 + ip, rows, p0, d),
            8 => pack_panel::<T, 8>(src, rs, cs, i0 + ip, rows, p0, d),
            16 => pack_panel::<T, 16>(src, rs, cs, i0 + ip, rows, p0, d),
            32 => pack_panel::<T, 32>(src, rs, cs, i0 + ip, rows, p0, d),
            _ => unreachable!("gemm: no kernel has a {r}-wide panel"),
        }
    }
}

/// Packs `rows <= R` rows starting at `row0` (columns `p0..p0 + d.len() / R`) into one panel
/// `d[p * R + i]`, zero-filling rows `rows..R`.
#[inline(always)]
fn pack_panel<T: Elem, const R: usize>(
    src: &[T],
    rs: usize,
    cs: usize,
    row0: usize,
    rows: usize,
    p0: usize,
    d: &mut [f32],
) {
    let kc = d.len() / R;
    if cs == 1 && rows == R {
        let s: [&[T]; R] = core::array::from_fn(|i| &src[(row0 + i) * rs + p0..][..kc]);
        for (p, dp) in d.chunks_exact_mut(R).enumerate() {
            for (dv, si) in dp.iter_mut().zip(&s) {
                *dv = si[p].f32();
            }
        }
    } else if rs == 1 {
        for (p, dp) in d.chunks_exact_mut(R).enumerate() {
            let s = &src[(p0 + p) * cs + row0..][..rows];
            for (dv, &x) in dp.iter_mut().zip(s) {
                *dv = x.f32();
            }
            dp[rows..].fill(0.0);
        }
    } else {
        for (p, dp) in d.chunks_exact_mut(R).enumerate() {
            for (i, dv) in dp.iter_mut().enumerate() {
                *dv = if i < rows {
                    src[(row0 + i) * rs + (p0 + p) * cs].f32()
                } else {
                    0.0
                };
            }
        }
    }
}
