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

use super::{act_scalar, Activation, Bias, Elems, Isa, MatRef};

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
    /// convolution's patch matrix read straight from its padded image (implicit GEMM).
    Rows {
        data: &'a [f32],
        offs: &'a [usize],
        cols: usize,
    },
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

    fn check_bounds(&self) {
        match self {
            BOperand::Mat(m) => m.check_bounds("gemm: B"),
            BOperand::Rows { data, offs, cols } => assert!(
                offs.iter()
                    .all(|&o| o.checked_add(*cols).is_some_and(|e| e <= data.len())),
                "gemm: a row of B exceeds its {} elements",
                data.len()
            ),
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
    ukernel: MicroKernel,
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
        ukernel: x86::gemm_f32_8x32_avx512,
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
        ukernel: x86::gemm_f32_6x16_avx2fma,
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
        ukernel: neon::gemm_f32_8x8_neon,
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
        ukernel: scalar::gemm_f32_4x4_scalar,
    },
];

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
pub fn gemm_b(
    a: MatRef<'_>,
    b: BOperand<'_>,
    c: &mut [f32],
    ldc: usize,
    bias: Bias<'_>,
    act: Activation,
    ws: &mut [f32],
) {
    gemm_kernel().run_b(a, b, c, ldc, bias, act, ws)
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

impl GemmKernel {
    /// Depth of the `k` blocks: at most `self.kc`, balanced so the last block is not a sliver.
    fn kc_for(&self, k: usize) -> usize {
        k.div_ceil(k.div_ceil(self.kc).max(1))
    }

    /// f32 elements of workspace this kernel needs for an `m × n × k` product.
    pub fn workspace(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        let kc = self.kc_for(k);
        kc * (self.mc.min(round_up(m, self.mr)) + self.nc.min(round_up(n, self.nr)))
    }

    /// `c[i * ldc + j] = act(sum_k a(i, k) * b(k, j) + bias(i, j))` for `i < a.rows`,
    /// `j < b.cols`; `k == 0` gives `act(bias)`. Other elements of `c` are untouched.
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
        self.run_b(a, BOperand::Mat(b), c, ldc, bias, act, ws)
    }

    /// [`GemmKernel::run`] with any [`BOperand`].
    #[allow(clippy::too_many_arguments)]
    pub fn run_b(
        &self,
        a: MatRef<'_>,
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
    /// `c[i * ldc + j]` (`i < m`, `j < n`), and nothing else accesses those during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run_b_raw(
        &self,
        a: MatRef<'_>,
        b: BOperand<'_>,
        c: *mut f32,
        c_len: usize,
        ldc: usize,
        bias: Bias<'_>,
        act: Activation,
        ws: &mut [f32],
    ) {
        assert_eq!(a.cols, b.rows(), "gemm: inner dimensions differ");
        assert!(
            self.isa.is_available(),
            "gemm: kernel {} not supported on this CPU",
            self.name
        );
        let (m, n, k) = (a.rows, b.cols(), a.cols);
        if m == 0 || n == 0 {
            return;
        }
        assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
        assert!(c_len >= (m - 1) * ldc + n, "gemm: output slice too short");
        match bias {
            Bias::None => {}
            Bias::Row(v) => assert!(v.len() >= m, "gemm: row bias shorter than m"),
            Bias::Col(v) => assert!(v.len() >= n, "gemm: column bias shorter than n"),
        }
        if k == 0 {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: `i * ldc + j < c_len` (checked above); element of this call.
                    unsafe { *c.add(i * ldc + j) = act_scalar(act, bias.at(i, j)) };
                }
            }
            return;
        }
        a.check_bounds("gemm: A");
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
        a: MatRef<'_>,
        b: BOperand<'_>,
        c: *mut f32,
        ldc: usize,
        bias: Bias<'_>,
        act: Activation,
        ws: &mut [f32],
    ) {
        let (m, n, k) = (a.rows, b.cols(), a.cols);
        let (mr, nr) = (self.mr, self.nr);
        let kc_max = self.kc_for(k);
        let mc_max = self.mc.min(round_up(m, mr));
        let (apack, rest) = ws.split_at_mut(mc_max * kc_max);
        let bpack = &mut rest[..kc_max * self.nc.min(round_up(n, nr))];
        let (clamp, lo, hi, post) = match act {
            Activation::None => (false, f32::NEG_INFINITY, f32::INFINITY, false),
            Activation::Relu => (true, 0.0, f32::INFINITY, false),
            Activation::Relu6 => (true, 0.0, 6.0, false),
            _ => (false, f32::NEG_INFINITY, f32::INFINITY, true),
        };
        let direct = match a.data {
            Elems::F32(v) if self.strided && a.cs == 1 => Some(v.as_ptr()),
            _ => None,
        };
        // Full panels of row-major f32 `B` are read in place too when a panel (`kc` rows of 64
        // bytes, two cache lines each if rows are not 64-byte aligned) fits in half of a 32 KiB L1
        // and the row stride does not map its rows onto a few L1 sets.
        let direct_b = match b {
            BOperand::Mat(b) => {
                let b_lines = if b.rs % 16 == 0 { kc_max } else { 2 * kc_max };
                match b.data {
                    Elems::F32(v)
                        if self.strided && b.cs == 1 && b.rs % 64 != 0 && b_lines <= 256 =>
                    {
                        Some((v.as_ptr(), b.rs))
                    }
                    _ => None,
                }
            }
            BOperand::Rows { .. } => None,
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
                let b_unpacked = if direct_b.is_some() { nc / nr * nr } else { 0 };
                pack_b(&b, pc, kc, jc + b_unpacked, nc - b_unpacked, nr, bpack);
                for ic in (0..m).step_by(self.mc) {
                    let mc = self.mc.min(m - ic);
                    // Direct mode reads the full panels of `A` in place and packs the rest.
                    let unpacked = if direct.is_some() { mc / mr * mr } else { 0 };
                    pack_a(&a, ic + unpacked, mc - unpacked, pc, kc, mr, apack);
                    for jr in (0..nc).step_by(nr) {
                        let nr_eff = nr.min(nc - jr);
                        let j0 = jc + jr;
                        let (bpanel, b_rs) = match direct_b {
                            // SAFETY: rows `pc..pc + kc` and columns `j0..j0 + nr` of `B` are
                            // inside its data (`check_bounds`).
                            Some((base, rs)) if jr < b_unpacked => {
                                (unsafe { base.add(pc * rs + j0) }, rs)
                            }
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
                        for ir in (0..mc).step_by(mr) {
                            let mr_eff = mr.min(mc - ir);
                            let i0 = ic + ir;
                            let (apanel, a_rs, a_cs) = match direct {
                                // SAFETY: rows `i0..i0 + mr` and columns `pc..pc + kc` of `A`
                                // are inside its data (`check_bounds`).
                                Some(base) if ir < unpacked => {
                                    (unsafe { base.add(i0 * a.rs + pc) }, a.rs, 1)
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
                            let tile = Tile {
                                accumulate: !first,
                                clamp: clamp && last,
                                lo,
                                hi,
                                bias_r,
                                bias_c,
                            };
                            // SAFETY: `i0 + mr_eff <= m` and `j0 + nr_eff <= n`, so the tile's
                            // elements lie inside `c` (caller contract).
                            let ct = unsafe { c.add(i0 * ldc + j0) };
                            if mr_eff == mr && nr_eff == nr {
                                // SAFETY: the packed panels hold `kc * mr` / `kc * nr` values
                                // (pack_a / pack_b zero-pad to full panels), the tile is full,
                                // bias pointers address `mr` / `nr` values and the caller
                                // guarantees the ISA.
                                unsafe {
                                    (self.ukernel)(
                                        kc, apanel, a_rs, a_cs, bpanel, b_rs, ct, ldc, &tile,
                                    )
                                };
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
                                    (self.ukernel)(
                                        kc,
                                        apanel,
                                        a_rs,
                                        a_cs,
                                        bpanel,
                                        b_rs,
                                        tmp.as_mut_ptr(),
                                        nr,
                                        &tile,
                                    );
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
                                        core::slice::from_raw_parts_mut(ct.add(i * ldc), nr_eff)
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
