//! Every registered kernel available on this CPU against naive references (f64 accumulation).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use half::f16;
use nap_runtime::format::IndexWidth;
use nap_runtime::kernels::{
    act_scalar, avgpool2d, channel_offsets, crop_rows, depthwise_conv2d, gemm, gemm_workspace,
    gemv, im2col, im2col_len, im2col_rows, maxpool2d, pack_a_panels, pad_image, spmm_kernel, spmv,
    spmv_kernel, winograd_weights, AOperand, Activation, BOperand, Bias, ConvGeom, Crop, Dtype,
    Elems, GemmKernel, Isa, MatRef, Pixels, PlaneLayout, Planes, PoolOp, SpmmKernel, SpmvKernel,
    WinoGeom, BSPMV_KERNELS, DEPTHWISE_KERNELS, GEMM_KERNELS, GEMV_KERNELS, OCGEMM_KERNELS,
    POOL_KERNELS, SPMM_KERNELS, SPMV_KERNELS, WINOGRAD_KERNELS,
};
use nap_runtime::model::{BlockCsrBuf, BlockCsrView, CsrBuf, CsrView, Indices};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local
// without destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

const ACTS: [Activation; 10] = [
    Activation::None,
    Activation::Relu,
    Activation::Relu6,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Gelu,
    Activation::Silu,
    Activation::HardSwish,
    Activation::HardSigmoid {
        alpha: 0.2,
        beta: 0.5,
    },
    Activation::LeakyRelu { alpha: 0.1 },
];

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-2, 2).
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn available<T>(list: &'static [T], isa: impl Fn(&T) -> Isa) -> impl Iterator<Item = &'static T> {
    list.iter().filter(move |k| isa(k).is_available())
}

/// Owned storage of one test matrix.
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    fn elems(&self) -> Elems<'_> {
        match self {
            Store::F32(v) => Elems::F32(v),
            Store::F16(v) => Elems::F16(v),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout2 {
    RowMajor,
    /// Stored as the transpose, viewed through `MatRef::t`.
    ColMajor,
    /// Row stride `cols + 3`.
    Padded,
    /// Column stride 2, row stride `2 * cols + 1`.
    Strided,
}

/// A random `rows × cols` matrix in the given layout and dtype.
fn matrix(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    layout: Layout2,
    half: bool,
) -> (Store, usize, usize) {
    let (len, rs, cs) = match layout {
        Layout2::RowMajor => (rows * cols, cols, 1),
        Layout2::ColMajor => (rows * cols, 1, rows),
        Layout2::Padded => (rows * (cols + 3), cols + 3, 1),
        Layout2::Strided => (rows * (2 * cols + 1), 2 * cols + 1, 2),
    };
    let v = rng.vec(len);
    let store = if half {
        Store::F16(v.iter().map(|&x| f16::from_f32(x)).collect())
    } else {
        Store::F32(v)
    };
    (store, rs, cs)
}

fn mat<'a>(s: &'a Store, rows: usize, cols: usize, rs: usize, cs: usize) -> MatRef<'a> {
    MatRef {
        data: s.elems(),
        rows,
        cols,
        rs,
        cs,
    }
}

#[derive(Clone, Copy, Debug)]
struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    la: Layout2,
    lb: Layout2,
    a16: bool,
    b16: bool,
    ldc_extra: usize,
    /// 0 none, 1 row, 2 column.
    bias: u8,
    act: Activation,
}

impl GemmCase {
    fn new(m: usize, n: usize, k: usize) -> Self {
        GemmCase {
            m,
            n,
            k,
            la: Layout2::RowMajor,
            lb: Layout2::RowMajor,
            a16: false,
            b16: false,
            ldc_extra: 0,
            bias: 0,
            act: Activation::None,
        }
    }
}

fn close(got: f32, pre: f64, scale: f64, k: usize, act: Activation, rel: f64) -> bool {
    let tol = rel * (k as f64 + 2.0) * scale + 1e-6;
    let want = act_scalar(act, pre as f32) as f64;
    let tol = 1.5 * tol + 2e-6 * (1.0 + want.abs());
    (got as f64 - want).abs() <= tol
}

/// Runs `run` on case `cs` and compares with the f64 reference. `rel` is the per-term relative
/// tolerance (summation error grows with `k`).
fn check_gemm_with(
    cs: GemmCase,
    seed: u64,
    name: &str,
    run: impl Fn(MatRef<'_>, MatRef<'_>, &mut [f32], usize, Bias<'_>, &mut [f32]),
) {
    let mut rng = Rng(seed);
    let GemmCase { m, n, k, .. } = cs;
    let (sa, ars, acs) = matrix(&mut rng, m, k, cs.la, cs.a16);
    let (sb, brs, bcs) = matrix(&mut rng, k, n, cs.lb, cs.b16);
    let a = mat(&sa, m, k, ars, acs);
    let b = mat(&sb, k, n, brs, bcs);
    let bias_v = rng.vec(m.max(n));
    let bias = match cs.bias {
        0 => Bias::None,
        1 => Bias::Row(&bias_v[..m]),
        _ => Bias::Col(&bias_v[..n]),
    };
    let ldc = n + cs.ldc_extra;
    let sentinel = -12345.0f32;
    let mut c = vec![sentinel; m.saturating_sub(1) * ldc + n + cs.ldc_extra];
    let mut ws = vec![f32::NAN; gemm_workspace(m, n, k)];
    run(a, b, &mut c, ldc, bias, &mut ws);
    for i in 0..m {
        for j in 0..ldc {
            let got = c[i * ldc + j];
            if j >= n {
                assert_eq!(
                    got, sentinel,
                    "{name} {cs:?}: wrote outside the tile at ({i}, {j})"
                );
                continue;
            }
            let (mut pre, mut scale) = (bias.at(i, j) as f64, bias.at(i, j).abs() as f64);
            for p in 0..k {
                let t = a.at(i, p) as f64 * b.at(p, j) as f64;
                pre += t;
                scale += t.abs();
            }
            assert!(
                close(got, pre, scale, k, cs.act, 6e-8),
                "{name} {cs:?}: c[{i}][{j}] = {got}, want act({pre})"
            );
        }
    }
    if let Some(&v) = c.get(m * ldc) {
        assert_eq!(v, sentinel, "{name} {cs:?}: wrote past the last row");
    }
}

fn check_gemm(ker: &GemmKernel, cs: GemmCase, seed: u64) {
    check_gemm_with(cs, seed, ker.name, |a, b, c, ldc, bias, ws| {
        ker.run(a, b, c, ldc, bias, cs.act, ws)
    });
}

fn gemm_cases(ker: &GemmKernel) -> Vec<GemmCase> {
    let (mr, nr) = (ker.mr, ker.nr);
    let mut cases = Vec::new();
    let mut ns = vec![1, nr - 1, nr, nr + 1, 2 * nr + 1];
    ns.dedup();
    for m in 1..=mr + 1 {
        for &n in &ns {
            for (t, k) in [1, 3, 17].into_iter().enumerate() {
                let mut c = GemmCase::new(m, n, k);
                c.bias = ((m + t) % 3) as u8;
                c.act = [Activation::None, Activation::Relu, Activation::Relu6][(m + n + t) % 3];
                cases.push(c);
            }
        }
    }
    if ker.prefetches() {
        // `B` large enough that the kernel prefetches its in-place panels.
        let mut c = GemmCase::new(mr + 1, 1040, 160);
        c.bias = 2;
        c.act = Activation::Relu;
        cases.push(c);
    }
    for (bias, act) in [
        (0, Activation::None),
        (1, Activation::Relu6),
        (2, Activation::Sigmoid),
        (1, Activation::HardSwish),
    ] {
        let mut c = GemmCase::new(mr + 2, nr + 3, 0);
        c.bias = bias;
        c.act = act;
        c.ldc_extra = 2;
        cases.push(c);
    }
    for (m, n, k) in [
        (mr + 1, nr + 1, 300),
        (5, 3, 1152),
        (2 * mr + 1, 2 * nr - 1, ker.kc + 1),
        (ker.mc + mr + 1, nr + 3, 20),
        (3, ker.nc + nr + 1, 5),
    ] {
        let mut c = GemmCase::new(m, n, k);
        c.bias = 2;
        c.act = Activation::Relu;
        cases.push(c);
    }
    let layouts = [
        Layout2::RowMajor,
        Layout2::ColMajor,
        Layout2::Padded,
        Layout2::Strided,
    ];
    for la in layouts {
        for lb in layouts {
            let mut c = GemmCase::new(mr + 2, nr + 3, 19);
            c.la = la;
            c.lb = lb;
            c.ldc_extra = 5;
            c.bias = 1;
            cases.push(c);
        }
    }
    for (a16, b16, la, lb) in [
        (true, false, Layout2::RowMajor, Layout2::RowMajor),
        (false, true, Layout2::RowMajor, Layout2::ColMajor),
        (true, true, Layout2::ColMajor, Layout2::Padded),
        (true, false, Layout2::Strided, Layout2::RowMajor),
    ] {
        let mut c = GemmCase::new(mr + 1, nr + 1, 33);
        c.a16 = a16;
        c.b16 = b16;
        c.la = la;
        c.lb = lb;
        c.bias = 2;
        cases.push(c);
    }
    for bias in 0..3 {
        for act in ACTS {
            let mut c = GemmCase::new(mr + 1, nr + 2, 9);
            c.bias = bias;
            c.act = act;
            cases.push(c);
        }
    }
    for act in [Activation::Relu6, Activation::Gelu, Activation::Tanh] {
        let mut c = GemmCase::new(mr + 1, nr + 1, ker.kc + 5);
        c.bias = 1;
        c.act = act;
        cases.push(c);
    }
    cases
}

#[test]
fn gemm_every_kernel_matches_reference() {
    let mut ran = Vec::new();
    for ker in available(GEMM_KERNELS, |k| k.isa) {
        let cases = gemm_cases(ker);
        for (i, cs) in cases.iter().enumerate() {
            check_gemm(ker, *cs, 1000 + i as u64);
        }
        ran.push(format!("{} ({} cases)", ker.name, cases.len()));
    }
    eprintln!("gemm kernels run: {}", ran.join(", "));
    assert!(!ran.is_empty());
}

#[test]
fn gemm_dispatch_matches_reference() {
    for (i, (m, n, k)) in [
        (64, 49, 72),
        (1, 1, 1),
        (13, 130, 257),
        (0, 5, 3),
        (4, 0, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = GemmCase::new(m, n, k);
        c.bias = 2;
        c.act = Activation::Relu;
        check_gemm_with(c, 77 + i as u64, "gemm", |a, b, cc, ldc, bias, ws| {
            gemm(a, b, cc, ldc, bias, c.act, ws)
        });
    }
}

fn check_gemv(
    ker: &nap_runtime::kernels::GemvKernel,
    m: usize,
    k: usize,
    lda: usize,
    with_bias: bool,
    act: Activation,
    seed: u64,
) -> f64 {
    let mut rng = Rng(seed);
    let w = rng.vec(m.saturating_sub(1) * lda + k);
    let x = rng.vec(k);
    let bias = rng.vec(m);
    let store = match ker.dtype {
        nap_runtime::kernels::Dtype::F32 => Store::F32(w),
        nap_runtime::kernels::Dtype::F16 => {
            Store::F16(w.iter().map(|&v| f16::from_f32(v)).collect())
        }
    };
    let a = store.elems();
    let sentinel = -777.0;
    let mut y = vec![sentinel; m + 1];
    let bias_o = with_bias.then_some(&bias[..]);
    ker.run(a, lda, m, k, &x, bias_o, act, &mut y);
    let rel = if ker.isa == Isa::NeonFp16 {
        6.0 * (0.5f64).powi(11)
    } else {
        6e-8
    };
    let mut worst = 0f64;
    for i in 0..m {
        let (mut pre, mut scale) = (bias_o.map_or(0.0, |b| b[i] as f64), 0.0);
        for (p, &xv) in x.iter().enumerate() {
            let t = a.get_f32(i * lda + p) as f64 * xv as f64;
            pre += t;
            scale += t.abs();
        }
        if act == Activation::None && scale > 0.0 {
            worst = worst.max((y[i] as f64 - pre).abs() / scale);
        }
        let kk = if ker.isa == Isa::NeonFp16 { 0 } else { k };
        assert!(
            close(y[i], pre, scale, kk, act, rel),
            "{} m={m} k={k} lda={lda}: y[{i}] = {}, want act({pre})",
            ker.name,
            y[i]
        );
    }
    assert_eq!(y[m], sentinel, "{}: wrote past m", ker.name);
    worst
}

#[test]
fn gemv_every_kernel_matches_reference() {
    let mut ran = Vec::new();
    for ker in available(GEMV_KERNELS, |k| k.isa) {
        let (mut n, mut worst) = (0, 0f64);
        for m in [1, 2, 3, 4, 5, 7, 9, 17] {
            for k in [0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 300] {
                for pad in [0, 3] {
                    let act = ACTS[(m + k + pad) % ACTS.len()];
                    worst = worst.max(check_gemv(
                        ker,
                        m,
                        k,
                        k + pad,
                        (m + k) % 2 == 0,
                        act,
                        (m * 1000 + k * 10 + pad) as u64,
                    ));
                    n += 1;
                }
            }
        }
        for (m, k) in [(33, 1152), (6, 4097)] {
            worst = worst.max(check_gemv(ker, m, k, k, true, Activation::None, 5));
            n += 1;
        }
        ran.push(format!(
            "{} ({n} cases, max |err| / sum|w*x| = {worst:.1e})",
            ker.name
        ));
    }
    eprintln!("gemv kernels run: {}", ran.join(", "));
}

#[test]
fn gemv_f16_overflowing_partial_sums_stay_exact() {
    // Products beyond the f16 range: any kernel with f16 arithmetic must fall back to f32.
    let (m, k) = (5, 70);
    let w: Vec<f16> = (0..m * k)
        .map(|i| f16::from_f32(if i % 2 == 0 { 300.0 } else { -299.0 }))
        .collect();
    let x: Vec<f32> = (0..k)
        .map(|i| if i % 3 == 0 { 1000.0 } else { 250.0 })
        .collect();
    for ker in
        available(GEMV_KERNELS, |k| k.isa).filter(|k| k.dtype == nap_runtime::kernels::Dtype::F16)
    {
        let mut y = vec![0.0; m];
        ker.run(Elems::F16(&w), k, m, k, &x, None, Activation::None, &mut y);
        for (i, &got) in y.iter().enumerate() {
            let want: f64 = (0..k).map(|p| w[i * k + p].to_f64() * x[p] as f64).sum();
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{}: y[{i}] = {got}, want {want}",
                ker.name
            );
        }
    }
}

#[test]
fn gemv_dispatch_f32_and_f16() {
    let mut rng = Rng(9);
    let (m, k) = (13, 45);
    let w = rng.vec(m * k);
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let x = rng.vec(k);
    for a in [Elems::F32(&w), Elems::F16(&w16)] {
        let mut y = vec![0.0; m];
        gemv(a, k, m, k, &x, None, Activation::None, &mut y);
        for (i, &got) in y.iter().enumerate() {
            let want: f64 = x
                .iter()
                .enumerate()
                .map(|(p, &xv)| a.get_f32(i * k + p) as f64 * xv as f64)
                .sum();
            assert!((got as f64 - want).abs() < 1e-2, "gemv dispatch {a:?}");
        }
    }
}

fn out_size(len: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    (len + 2 * p - d * (k - 1) - 1) / s + 1
}

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
    groups: usize,
}

impl ConvCase {
    fn geom(&self) -> ConvGeom {
        ConvGeom {
            c: self.c,
            h: self.h,
            w: self.w,
            kh: self.k[0],
            kw: self.k[1],
            stride: self.s,
            pad: self.p,
            dilation: self.d,
            oh: out_size(self.h, self.k[0], self.s[0], self.p[0], self.d[0]),
            ow: out_size(self.w, self.k[1], self.s[1], self.p[1], self.d[1]),
        }
    }
}

/// Direct convolution, f64 accumulation: returns (pre-activation, sum of |terms|).
fn naive_conv(
    cc: &ConvCase,
    x: &[f32],
    w: &Elems<'_>,
    bias: Option<&[f32]>,
) -> (Vec<f64>, Vec<f64>) {
    let g = cc.geom();
    let (cpg, opg) = (cc.c / cc.groups, cc.cout / cc.groups);
    let mut out = vec![0f64; cc.cout * g.oh * g.ow];
    let mut scale = vec![0f64; out.len()];
    for o in 0..cc.cout {
        let grp = o / opg;
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let b = bias.map_or(0.0, |b| b[o] as f64);
                let (mut acc, mut sc) = (b, b.abs());
                for ci in 0..cpg {
                    let ch = grp * cpg + ci;
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize
                                - g.pad[0] as isize;
                            let ix = (ox * g.stride[1] + kj * g.dilation[1]) as isize
                                - g.pad[1] as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            let wv = w.get_f32(((o * cpg + ci) * g.kh + ki) * g.kw + kj) as f64;
                            let t = wv * x[(ch * g.h + iy as usize) * g.w + ix as usize] as f64;
                            acc += t;
                            sc += t.abs();
                        }
                    }
                }
                out[(o * g.oh + oy) * g.ow + ox] = acc;
                scale[(o * g.oh + oy) * g.ow + ox] = sc;
            }
        }
    }
    (out, scale)
}

const CONV_CASES: [ConvCase; 8] = [
    ConvCase {
        c: 3,
        h: 9,
        w: 8,
        cout: 4,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        groups: 1,
    },
    ConvCase {
        c: 4,
        h: 10,
        w: 7,
        cout: 6,
        k: [3, 3],
        s: [2, 2],
        p: [1, 1],
        d: [1, 1],
        groups: 2,
    },
    ConvCase {
        c: 2,
        h: 8,
        w: 9,
        cout: 3,
        k: [1, 1],
        s: [1, 1],
        p: [0, 0],
        d: [1, 1],
        groups: 1,
    },
    ConvCase {
        c: 3,
        h: 11,
        w: 10,
        cout: 2,
        k: [3, 2],
        s: [2, 1],
        p: [2, 0],
        d: [2, 1],
        groups: 1,
    },
    ConvCase {
        c: 6,
        h: 7,
        w: 7,
        cout: 6,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        groups: 6,
    },
    ConvCase {
        c: 2,
        h: 5,
        w: 5,
        cout: 2,
        k: [5, 5],
        s: [1, 1],
        p: [2, 2],
        d: [1, 1],
        groups: 1,
    },
    ConvCase {
        c: 1,
        h: 4,
        w: 4,
        cout: 1,
        k: [3, 3],
        s: [3, 3],
        p: [0, 0],
        d: [1, 1],
        groups: 1,
    },
    ConvCase {
        c: 4,
        h: 6,
        w: 13,
        cout: 8,
        k: [2, 3],
        s: [1, 3],
        p: [3, 4],
        d: [3, 2],
        groups: 4,
    },
];

#[test]
fn im2col_gemm_conv_matches_direct_conv() {
    for (ci, cc) in CONV_CASES.iter().enumerate() {
        let mut rng = Rng(300 + ci as u64);
        let g = cc.geom();
        let (cpg, opg) = (cc.c / cc.groups, cc.cout / cc.groups);
        let kk = cpg * g.kh * g.kw;
        let p = g.oh * g.ow;
        let x = rng.vec(cc.c * cc.h * cc.w);
        let wv = rng.vec(cc.cout * kk);
        let bias = rng.vec(cc.cout);
        let act = ACTS[ci % ACTS.len()];
        for half in [false, true] {
            let store = if half {
                Store::F16(wv.iter().map(|&v| f16::from_f32(v)).collect())
            } else {
                Store::F32(wv.clone())
            };
            let w = store.elems();
            let (want, scale) = naive_conv(cc, &x, &w, Some(&bias));
            let mut y = vec![f32::NAN; cc.cout * p];
            let mut cols = vec![f32::NAN; im2col_len(&g, cpg)];
            let mut ws = vec![f32::NAN; gemm_workspace(opg, p, kk)];
            for gi in 0..cc.groups {
                im2col(&g, &x, gi * cpg, cpg, &mut cols);
                let wg = match w {
                    Elems::F32(v) => Elems::F32(&v[gi * opg * kk..(gi + 1) * opg * kk]),
                    Elems::F16(v) => Elems::F16(&v[gi * opg * kk..(gi + 1) * opg * kk]),
                };
                let a = MatRef::row_major(wg, opg, kk);
                let b = MatRef::row_major(Elems::F32(&cols), kk, p);
                let yg = &mut y[gi * opg * p..(gi + 1) * opg * p];
                gemm(
                    a,
                    b,
                    yg,
                    p,
                    Bias::Row(&bias[gi * opg..(gi + 1) * opg]),
                    act,
                    &mut ws,
                );
            }
            for (i, &got) in y.iter().enumerate() {
                assert!(
                    close(got, want[i], scale[i], kk, act, 6e-8),
                    "conv {cc:?} f16={half}: y[{i}] = {got}, want act({})",
                    want[i]
                );
            }
        }
    }
}

/// Every GEMM kernel on implicit-GEMM convolutions (stride 1, `B` read from the padded image
/// through row offsets), with `A` strided or packed ahead of time, `C` on the padded grid and
/// cropped after or cropped while stored ([`Crop`]), in one call or split by columns as the
/// pool splits it, with and without slack after the image (the last panel read in place or
/// packed), and deep enough for `k` blocks.
#[test]
fn issue14_implicit_gemm_packed_a_and_cropped_c_match_direct_conv() {
    let base = ConvCase {
        c: 3,
        h: 9,
        w: 8,
        cout: 4,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        groups: 1,
    };
    let cases = [
        base,
        ConvCase {
            c: 5,
            h: 14,
            w: 14,
            cout: 19,
            ..base
        },
        ConvCase {
            c: 2,
            h: 7,
            w: 23,
            cout: 9,
            k: [3, 5],
            p: [0, 2],
            d: [2, 1],
            ..base
        },
        ConvCase {
            c: 1,
            h: 28,
            w: 28,
            cout: 8,
            ..base
        },
        // k = 4689: more than one block of `k` for every kernel.
        ConvCase {
            c: 521,
            h: 4,
            w: 5,
            cout: 3,
            ..base
        },
        // An image large enough that kernels with prefetching variants prefetch it (run only
        // for those); more channels than a row tile, so full tiles store their cropped columns
        // themselves.
        ConvCase {
            c: 3,
            h: 214,
            w: 214,
            cout: 9,
            ..base
        },
    ];
    let sentinel = -12345.0f32;
    let mut ran = 0;
    for ker in available(GEMM_KERNELS, |k| k.isa) {
        for (ci, cc) in cases.iter().enumerate() {
            if cc.h * cc.w > 1 << 15 && !ker.prefetches() {
                continue;
            }
            let mut rng = Rng(700 + ci as u64);
            let g = cc.geom();
            let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
            let kk = cc.c * g.kh * g.kw;
            let p = g.oh * g.ow;
            let cols = (g.oh - 1) * wp + g.ow;
            let x = rng.vec(cc.c * cc.h * cc.w);
            let wv = rng.vec(cc.cout * kk);
            let bias = rng.vec(cc.cout);
            let act = ACTS[ci % ACTS.len()];
            let (want, scale) = naive_conv(cc, &x, &Elems::F32(&wv), Some(&bias));
            let offs = g.implicit_offsets(cc.c);
            let a = MatRef::row_major(Elems::F32(&wv), cc.cout, kk);
            let mut packed =
                vec![f32::NAN; nap_runtime::kernels::PackedA::len(cc.cout, kk, ker.mr)];
            let pa = pack_a_panels(&a, ker.mr, &mut packed);
            let mut ws = vec![f32::NAN; gemm_workspace(cc.cout, cols, kk)];
            for slack in [0, 64] {
                let mut xpad = vec![f32::NAN; g.padded_len() + slack];
                pad_image(&g, &x, &mut xpad);
                assert_eq!(xpad.len(), cc.c * hp * wp + 8 + slack);
                for (a_op, a_name) in [
                    (AOperand::Mat(a), "strided A"),
                    (AOperand::Packed(pa), "packed A"),
                ] {
                    for (split, cropped) in [
                        (None, false),
                        (None, true),
                        (Some(37), true),
                        (Some(64), false),
                    ] {
                        let what = format!(
                            "{} {cc:?} {a_name} slack {slack} split {split:?} cropped {cropped}",
                            ker.name
                        );
                        let parts: Vec<(usize, usize)> = match split {
                            Some(s) if s < cols => vec![(0, s), (s, cols)],
                            _ => vec![(0, cols)],
                        };
                        let mut y = vec![sentinel; cc.cout * p];
                        let mut wide = vec![sentinel; cc.cout * cols + 8];
                        for (j0, j1) in parts {
                            let crop = cropped.then_some(Crop {
                                wp,
                                ow: g.ow,
                                first: j0,
                            });
                            let b = BOperand::Rows {
                                data: &xpad[j0..],
                                offs: &offs,
                                cols: j1 - j0,
                                crop,
                            };
                            let bias = Bias::Row(&bias);
                            if cropped {
                                let c0 = Crop {
                                    wp,
                                    ow: g.ow,
                                    first: 0,
                                }
                                .packed_cols(j0);
                                ker.run_b(a_op, b, &mut y[c0..], p, bias, act, &mut ws);
                            } else {
                                ker.run_b(a_op, b, &mut wide[j0..], cols, bias, act, &mut ws);
                            }
                        }
                        if !cropped {
                            crop_rows(&g, cc.cout, &wide, &mut y);
                        }
                        for (i, &got) in y.iter().enumerate() {
                            assert!(
                                close(got, want[i], scale[i], kk, act, 6e-8),
                                "{what}: y[{i}] = {got}, want act({})",
                                want[i]
                            );
                        }
                        ran += 1;
                    }
                }
            }
        }
    }
    assert!(ran > 0);
}

/// The channels-in-lanes kernels compute implicit (stride 1, padded image) and 1×1 convolutions
/// like the direct convolution: every tile width (maps narrower and wider than a tile, runs
/// across rows for 1×1), channel counts that leave a partial panel, every activation, no bias,
/// `k` = 0, and any split of the tiles (as the pool splits them) writes each output once.
#[test]
fn issue14_channels_in_lanes_kernels_match_direct_conv() {
    let base = ConvCase {
        c: 3,
        h: 9,
        w: 8,
        cout: 4,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        groups: 1,
    };
    let cases = [
        base,
        ConvCase {
            c: 5,
            h: 14,
            w: 14,
            cout: 37,
            ..base
        },
        ConvCase {
            c: 2,
            h: 7,
            w: 23,
            cout: 9,
            k: [3, 5],
            p: [0, 2],
            d: [2, 1],
            ..base
        },
        ConvCase {
            c: 6,
            h: 7,
            w: 7,
            cout: 64,
            ..base
        },
        ConvCase {
            c: 40,
            h: 7,
            w: 7,
            cout: 33,
            k: [1, 1],
            p: [0, 0],
            ..base
        },
        ConvCase {
            c: 3,
            h: 1,
            w: 29,
            cout: 16,
            k: [1, 1],
            p: [0, 0],
            ..base
        },
        ConvCase {
            c: 0,
            h: 4,
            w: 5,
            cout: 5,
            k: [1, 1],
            p: [0, 0],
            ..base
        },
    ];
    let sentinel = -12345.0f32;
    let mut ran = 0;
    for ker in available(OCGEMM_KERNELS, |k| k.isa) {
        for (ci, cc) in cases.iter().enumerate() {
            let mut rng = Rng(900 + ci as u64);
            let g = cc.geom();
            let (_, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
            let kk = cc.c * g.kh * g.kw;
            let p = g.oh * g.ow;
            let x = rng.vec(cc.c * cc.h * cc.w);
            let wv = rng.vec(cc.cout * kk);
            let bias = rng.vec(cc.cout);
            let one_by_one = g.kh == 1 && g.kw == 1;
            let (xin, offs, px) = if one_by_one {
                let px = Pixels {
                    oh: g.oh,
                    ow: g.ow,
                    wp: g.ow,
                };
                (x.clone(), channel_offsets(cc.c, cc.h * cc.w), px)
            } else {
                let mut xpad = vec![f32::NAN; g.padded_len()];
                pad_image(&g, &x, &mut xpad);
                let px = Pixels {
                    oh: g.oh,
                    ow: g.ow,
                    wp,
                };
                (xpad, g.implicit_offsets(cc.c), px)
            };
            let a = MatRef::row_major(Elems::F32(&wv), cc.cout, kk);
            let mut packed = vec![f32::NAN; ker.packed_len(cc.cout, kk)];
            let pa = pack_a_panels(&a, ker.nr, &mut packed);
            let tiles = ker.pixel_tiles(px);
            for (with_bias, act) in [(true, ACTS[ci % ACTS.len()]), (false, Activation::Relu)] {
                let (want, scale) =
                    naive_conv(cc, &x, &Elems::F32(&wv), with_bias.then_some(&bias[..]));
                for split in [None, Some(1), Some(tiles / 2)] {
                    let what = format!(
                        "{} {cc:?} bias {with_bias} {act:?} split {split:?}",
                        ker.name
                    );
                    let ldc = p + 3;
                    let mut y = vec![sentinel; cc.cout * ldc];
                    let b = with_bias.then_some(&bias[..]);
                    match split {
                        Some(s) if s > 0 && s < tiles => {
                            let half = cc.cout.div_ceil(2 * ker.nr) * ker.nr;
                            // Tiles split at `s`, channels at a panel boundary.
                            let parts = [(0, half.min(cc.cout)), (half.min(cc.cout), cc.cout)];
                            for (r0, r1) in parts.into_iter().filter(|(r0, r1)| r0 < r1) {
                                for t in [0..s, s..tiles] {
                                    let sub = pa.rows(r0, r1);
                                    let bs = b.map(|b| &b[r0..r1]);
                                    ker.run_tiles(
                                        sub,
                                        &xin,
                                        &offs,
                                        px,
                                        &mut y[r0 * ldc..],
                                        ldc,
                                        bs,
                                        act,
                                        t,
                                    );
                                }
                            }
                        }
                        _ => ker.run(pa, &xin, &offs, px, &mut y, ldc, b, act),
                    }
                    for o in 0..cc.cout {
                        for q in 0..ldc {
                            let got = y[o * ldc + q];
                            if q >= p {
                                assert_eq!(got, sentinel, "{what}: wrote past the map at {o}, {q}");
                                continue;
                            }
                            let i = o * p + q;
                            assert!(
                                close(got, want[i], scale[i], kk, act, 6e-8),
                                "{what}: y[{o}, {q}] = {got}, want act({})",
                                want[i]
                            );
                        }
                    }
                    ran += 1;
                }
            }
        }
    }
    assert!(ran > 0);
}

/// The Winograd builds, F(2×2, 3×3) and F(4×4, 3×3), compute 3×3 stride-1 convolutions like the
/// direct convolution: odd and even maps (tiles past the edge), paddings 0 to 2, channel counts
/// that leave partial vector steps, one map smaller than a tile, no input channel
/// (`act(bias)`), more tiles than one block, blocks across examples, every activation, with and
/// without bias; nothing is written past the output, and the scratch needs no initialisation.
#[test]
fn issue14_winograd_kernels_match_direct_conv() {
    let base = ConvCase {
        c: 3,
        h: 9,
        w: 8,
        cout: 4,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        groups: 1,
    };
    let cases = [
        base,
        ConvCase {
            c: 17,
            h: 7,
            w: 7,
            cout: 33,
            ..base
        },
        ConvCase {
            c: 8,
            h: 6,
            w: 11,
            cout: 16,
            p: [0, 0],
            ..base
        },
        ConvCase {
            c: 5,
            h: 4,
            w: 5,
            cout: 9,
            p: [2, 1],
            ..base
        },
        ConvCase {
            c: 2,
            h: 1,
            w: 1,
            cout: 3,
            ..base
        },
        ConvCase {
            c: 0,
            h: 4,
            w: 4,
            cout: 5,
            ..base
        },
        ConvCase {
            c: 24,
            h: 30,
            w: 30,
            cout: 40,
            ..base
        },
    ];
    let sentinel = -12345.0f32;
    let mut ran = 0;
    for ker in available(WINOGRAD_KERNELS, |k| k.isa) {
        for (ci, cc) in cases.iter().enumerate() {
            // The last case (more tiles than a block) is slow to check in debug under qemu:
            // one example.
            let big = ci == cases.len() - 1;
            let runs: &[(usize, usize)] = if big {
                &[(2, 1), (4, 1)]
            } else {
                &[(2, 1), (4, 1), (2, 2), (4, 3)]
            };
            for &(tile, n) in runs {
                let mut rng = Rng(1400 + ci as u64);
                let g = cc.geom();
                let wg = WinoGeom::new(&g, cc.cout, tile).expect("3x3 stride 1");
                if big {
                    assert!(wg.block_tiles(n) < wg.tiles_per_example(), "spans blocks");
                }
                let kk = cc.c * 9;
                let (p, in_len) = (g.oh * g.ow, cc.c * cc.h * cc.w);
                let x = rng.vec(n * in_len);
                let wv = rng.vec(cc.cout * kk);
                let bias = rng.vec(cc.cout);
                let mut u = vec![f32::NAN; wg.weights_len()];
                winograd_weights(&wg, &wv, &mut u);
                for (with_bias, act) in [(true, ACTS[ci % ACTS.len()]), (false, Activation::Relu)] {
                    let what = format!(
                        "{} F({tile}) n {n} {cc:?} bias {with_bias} {act:?}",
                        ker.name
                    );
                    let out = cc.cout * p;
                    let mut y = vec![sentinel; n * out + 5];
                    let mut scratch = vec![f32::NAN; wg.scratch_len(n, 1)];
                    let mut ws = vec![f32::NAN; wg.ws_len(n)];
                    let b = with_bias.then_some(&bias[..]);
                    ker.run(&wg, n, &x, &u, b, act, &mut y, &mut scratch, &mut ws);
                    assert!(
                        y[n * out..].iter().all(|&v| v == sentinel),
                        "{what}: wrote past y"
                    );
                    for e in 0..n {
                        let xe = &x[e * in_len..(e + 1) * in_len];
                        let (want, scale) =
                            naive_conv(cc, xe, &Elems::F32(&wv), with_bias.then_some(&bias[..]));
                        for (i, &got) in y[e * out..(e + 1) * out].iter().enumerate() {
                            assert!(
                                close(got, want[i], scale[i], kk, act, 2e-7),
                                "{what}: example {e}, y[{i}] = {got}, want act({})",
                                want[i]
                            );
                        }
                    }
                    ran += 1;
                }
            }
        }
    }
    assert!(ran > 0);
}

/// The patch matrix of a range of output rows (what a thread builds when a convolution's rows
/// are split) is those rows' columns of the whole patch matrix, for every range.
#[test]
fn issue14_im2col_rows_are_columns_of_im2col() {
    for (ci, cc) in CONV_CASES.iter().enumerate() {
        let mut rng = Rng(400 + ci as u64);
        let g = cc.geom();
        let cpg = cc.c / cc.groups;
        let (kk, p) = (cpg * g.kh * g.kw, g.oh * g.ow);
        let x = rng.vec(cc.c * cc.h * cc.w);
        let mut whole = vec![f32::NAN; im2col_len(&g, cpg)];
        im2col(&g, &x, 0, cpg, &mut whole);
        for r0 in 0..g.oh {
            for r1 in r0..=g.oh {
                let n = (r1 - r0) * g.ow;
                let mut part = vec![f32::NAN; kk * n + 8];
                im2col_rows(&g, &x, 0, cpg, r0..r1, &mut part);
                for row in 0..kk {
                    assert_eq!(
                        part[row * n..(row + 1) * n],
                        whole[row * p + r0 * g.ow..row * p + r1 * g.ow],
                        "{cc:?} rows {r0}..{r1}, patch row {row}"
                    );
                }
            }
        }
    }
}

#[test]
fn depthwise_every_kernel_matches_direct_conv() {
    let dw = |c, h, w, k: [usize; 2], s, p, d| ConvCase {
        c,
        h,
        w,
        cout: c,
        k,
        s,
        p,
        d,
        groups: c,
    };
    let cases = [
        dw(3, 9, 9, [3, 3], [1, 1], [1, 1], [1, 1]),
        dw(3, 10, 11, [3, 3], [2, 2], [1, 1], [1, 1]),
        dw(2, 8, 8, [5, 5], [1, 1], [2, 2], [1, 1]),
        dw(2, 9, 7, [3, 3], [1, 2], [0, 1], [2, 1]),
        dw(1, 12, 12, [9, 9], [1, 1], [4, 4], [1, 1]),
        dw(4, 7, 7, [1, 1], [1, 1], [0, 0], [1, 1]),
        dw(2, 3, 3, [3, 3], [1, 1], [2, 2], [1, 1]),
        dw(3, 17, 16, [3, 3], [2, 2], [0, 1], [1, 1]),
        dw(2, 6, 5, [2, 4], [3, 1], [1, 3], [2, 2]),
    ];
    let mut ran = Vec::new();
    for ker in available(DEPTHWISE_KERNELS, |k| k.isa) {
        for (ci, cc) in cases.iter().enumerate() {
            let mut rng = Rng(500 + ci as u64);
            let g = cc.geom();
            let x = rng.vec(cc.c * cc.h * cc.w);
            let wv = rng.vec(cc.c * g.kh * g.kw);
            let bias = rng.vec(cc.c);
            for (ai, act) in ACTS.iter().enumerate().filter(|(ai, _)| (ai + ci) % 3 == 0) {
                for half in [false, true] {
                    let store = if half {
                        Store::F16(wv.iter().map(|&v| f16::from_f32(v)).collect())
                    } else {
                        Store::F32(wv.clone())
                    };
                    let w = store.elems();
                    let b = (ai % 2 == 0).then_some(&bias[..]);
                    let (want, scale) = naive_conv(cc, &x, &w, b);
                    let mut y = vec![f32::NAN; cc.c * g.oh * g.ow + 1];
                    ker.run(&g, &x, w, b, *act, &mut y);
                    for (i, &got) in y[..want.len()].iter().enumerate() {
                        assert!(
                            close(got, want[i], scale[i], g.kh * g.kw, *act, 6e-8),
                            "{} {cc:?} {act:?} f16={half}: y[{i}] = {got}, want act({})",
                            ker.name,
                            want[i]
                        );
                    }
                    assert!(
                        y[want.len()].is_nan(),
                        "{}: wrote past the output",
                        ker.name
                    );
                }
            }
        }
        ran.push(ker.name);
    }
    eprintln!("depthwise kernels run: {}", ran.join(", "));
}

/// Every depthwise kernel over the 3×3 geometries the specialised kernels take (and their
/// neighbours): H and W from 1 to 17 (edge tiles, interiors shorter than a vector, no interior at
/// all), strides 1 and 2 per axis, paddings 0 to 2, all activations, f32 and f16 weights.
#[test]
fn depthwise_every_kernel_sweeps_3x3_geometries() {
    let heights = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17];
    let mut ran = Vec::new();
    for ker in available(DEPTHWISE_KERNELS, |k| k.isa) {
        let mut idx = 0usize;
        for s in [[1, 1], [2, 2], [2, 1], [1, 2]] {
            for p in [[0, 0], [1, 1], [2, 2], [0, 1], [2, 1]] {
                for h in heights {
                    for w in (1..=17).chain([23, 31, 32, 33, 40]) {
                        if h + 2 * p[0] < 3 || w + 2 * p[1] < 3 {
                            continue;
                        }
                        idx += 1;
                        let cc = ConvCase {
                            c: 1 + idx % 3,
                            h,
                            w,
                            cout: 1 + idx % 3,
                            k: [3, 3],
                            s,
                            p,
                            d: [1, 1],
                            groups: 1 + idx % 3,
                        };
                        let mut rng = Rng(9000 + idx as u64);
                        let g = cc.geom();
                        let x = rng.vec(cc.c * h * w);
                        let wv = rng.vec(cc.c * 9);
                        let bias = rng.vec(cc.c);
                        let act = ACTS[idx % ACTS.len()];
                        let half = idx % 5 < 2;
                        let store = if half {
                            Store::F16(wv.iter().map(|&v| f16::from_f32(v)).collect())
                        } else {
                            Store::F32(wv)
                        };
                        let w = store.elems();
                        let b = (!idx.is_multiple_of(7)).then_some(&bias[..]);
                        let (want, scale) = naive_conv(&cc, &x, &w, b);
                        // Every other case with the planes apart: NaN between the input planes
                        // must not be read, nor the gaps between output planes written.
                        let (pin, pout) = (h * g.w, g.oh * g.ow);
                        let planes = match idx % 2 {
                            0 => Planes { x: pin, y: pout },
                            _ => Planes {
                                x: pin + 3,
                                y: pout + 5,
                            },
                        };
                        let mut xs = vec![f32::NAN; cc.c * planes.x];
                        let mut y = vec![f32::NAN; cc.c * planes.y + 1];
                        for c in 0..cc.c {
                            xs[c * planes.x..c * planes.x + pin]
                                .copy_from_slice(&x[c * pin..(c + 1) * pin]);
                        }
                        ker.run_planes(&g, &xs, w, b, act, &mut y, planes);
                        for (i, &got) in y.iter().enumerate() {
                            let (c, q) = (i / planes.y, i % planes.y);
                            if c >= cc.c || q >= pout {
                                assert!(
                                    got.is_nan(),
                                    "{}: wrote y[{i}] outside the planes",
                                    ker.name
                                );
                                continue;
                            }
                            let j = c * pout + q;
                            assert!(
                                close(got, want[j], scale[j], 9, act, 6e-8),
                                "{} {cc:?} {act:?} f16={half} {planes:?}: y[{i}] = {got}, want act({})",
                                ker.name,
                                want[j]
                            );
                        }
                        assert!(
                            y[cc.c * planes.y].is_nan(),
                            "{}: wrote past the output",
                            ker.name
                        );
                    }
                }
            }
        }
        ran.push(ker.name);
    }
    eprintln!("depthwise kernels swept: {}", ran.join(", "));
}

/// Naive pooling: windows clipped to the input, f64 accumulation.
fn naive_pool(g: &ConvGeom, op: PoolOp, x: &[f32], planes: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for pl in 0..planes {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let (mut mx, mut sum, mut cnt) = (f32::NEG_INFINITY, 0f64, 0usize);
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let iy = (oy * g.stride[0] + ki) as isize - g.pad[0] as isize;
                        let ix = (ox * g.stride[1] + kj) as isize - g.pad[1] as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let v = x[(pl * g.h + iy as usize) * g.w + ix as usize];
                        mx = mx.max(v);
                        sum += v as f64;
                        cnt += 1;
                    }
                }
                out.push(match op {
                    PoolOp::Max => mx,
                    PoolOp::Avg { count_include_pad } => {
                        let d = if count_include_pad { g.kh * g.kw } else { cnt };
                        (sum / d as f64) as f32
                    }
                });
            }
        }
    }
    out
}

/// The grid pooling's bounds check cannot wrap around: a row stride whose last row lies past
/// the address space is refused, by every kernel, before anything is read.
#[test]
fn issue14_max2x2_grid_refuses_an_overflowing_layout() {
    let g = ConvGeom {
        c: 1,
        h: 2,
        w: 2,
        kh: 2,
        kw: 2,
        stride: [2, 2],
        pad: [0, 0],
        dilation: [1, 1],
        oh: 1,
        ow: 1,
    };
    let x = [1.0f32; 4];
    for ker in available(POOL_KERNELS, |k| k.isa) {
        for lay in [
            PlaneLayout {
                plane: 4,
                row: usize::MAX,
            },
            PlaneLayout {
                plane: usize::MAX / 2 + 1,
                row: 2,
            },
        ] {
            let mut y = [0.0f32; 4];
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ker.max2x2_grid(&g, &x, lay, &mut y, 2)
            }));
            assert!(r.is_err(), "{} read through {lay:?}", ker.name);
        }
    }
}

/// Every pooling kernel's 2×2 max over planes on a wider grid (a convolution's output rows
/// `row` floats apart, planes `plane` apart, as the fused sparse convolution leaves them) equals
/// the naive pooling of the same planes copied out dense: even and odd sizes, rows just wide
/// enough and wider, the last plane ending at its last read.
#[test]
fn issue14_max2x2_grid_every_kernel_matches_naive() {
    let mut ran = Vec::new();
    for ker in available(POOL_KERNELS, |k| k.isa) {
        let mut idx = 0u64;
        for h in [2, 3, 4, 7, 14, 28] {
            for w in [2, 3, 5, 7, 14, 17, 28] {
                for extra in [0, 1, 2, 9] {
                    idx += 1;
                    let planes = 1 + idx as usize % 4;
                    let row = w + extra;
                    let plane = (h - 1) * row + w;
                    let g = ConvGeom {
                        c: planes,
                        h,
                        w,
                        kh: 2,
                        kw: 2,
                        stride: [2, 2],
                        pad: [0, 0],
                        dilation: [1, 1],
                        oh: h / 2,
                        ow: w / 2,
                    };
                    let grid = Rng(900 + idx).vec(planes * plane);
                    let dense: Vec<f32> = (0..planes)
                        .flat_map(|p| (0..h).map(move |r| (p, r)))
                        .flat_map(|(p, r)| grid[p * plane + r * row..][..w].to_vec())
                        .collect();
                    let want = naive_pool(&g, PoolOp::Max, &dense, planes);
                    let mut y = vec![f32::NAN; want.len() + 1];
                    ker.max2x2_grid(&g, &grid, PlaneLayout { plane, row }, &mut y, planes);
                    assert_eq!(&y[..want.len()], &want[..], "{} {g:?} row {row}", ker.name);
                    assert!(
                        y[want.len()].is_nan(),
                        "{}: wrote past the output",
                        ker.name
                    );
                }
            }
        }
        ran.push(ker.name);
    }
    assert!(!ran.is_empty());
}

/// Every pooling kernel against [`naive_pool`]: windows 1×1 to 3×3 (square and not), strides 1
/// to 3, paddings up to the window size minus one, H and W from 1 to 12, max and both averages.
#[test]
fn pool_every_kernel_matches_naive() {
    let ops = [
        PoolOp::Max,
        PoolOp::Avg {
            count_include_pad: true,
        },
        PoolOp::Avg {
            count_include_pad: false,
        },
    ];
    let mut ran = Vec::new();
    for ker in available(POOL_KERNELS, |k| k.isa) {
        let mut idx = 0u64;
        for k in [[2, 2], [3, 3], [1, 1], [2, 3], [3, 1]] {
            for s in [[2, 2], [1, 1], [3, 2], [1, 2]] {
                for p in [[0, 0], [1, 1], [0, 1], [2, 1]] {
                    if p[0] >= k[0] || p[1] >= k[1] {
                        continue;
                    }
                    for h in [1, 2, 3, 4, 5, 7, 8, 12] {
                        for w in 1..=12 {
                            if h + 2 * p[0] < k[0] || w + 2 * p[1] < k[1] {
                                continue;
                            }
                            idx += 1;
                            let planes = 1 + idx as usize % 3;
                            let g = ConvGeom {
                                c: planes,
                                h,
                                w,
                                kh: k[0],
                                kw: k[1],
                                stride: s,
                                pad: p,
                                dilation: [1, 1],
                                oh: out_size(h, k[0], s[0], p[0], 1),
                                ow: out_size(w, k[1], s[1], p[1], 1),
                            };
                            let x = Rng(700 + idx).vec(planes * h * w);
                            for op in ops {
                                let want = naive_pool(&g, op, &x, planes);
                                let mut y = vec![f32::NAN; want.len() + 1];
                                ker.run(&g, op, &x, &mut y, planes);
                                for (i, (&got, &wv)) in y.iter().zip(&want).enumerate() {
                                    assert!(
                                        (got - wv).abs() <= 1e-6 * (1.0 + wv.abs()),
                                        "{} {g:?} {op:?}: y[{i}] = {got}, want {wv}",
                                        ker.name
                                    );
                                }
                                assert!(
                                    y[want.len()].is_nan(),
                                    "{}: wrote past the output",
                                    ker.name
                                );
                            }
                        }
                    }
                }
            }
        }
        ran.push(ker.name);
    }
    eprintln!("pool kernels run: {}", ran.join(", "));
}

/// Windows entirely in the padding: max gives -inf, average 0 or NaN (0 / 0 cells) as the
/// executor always did.
#[test]
fn pool_windows_in_padding_only() {
    let g = ConvGeom {
        c: 1,
        h: 1,
        w: 1,
        kh: 2,
        kw: 2,
        stride: [2, 2],
        pad: [1, 1],
        dilation: [1, 1],
        oh: 2,
        ow: 2,
    };
    let x = [5.0];
    let mut y = [0.0; 4];
    maxpool2d(&g, &x, &mut y, 1);
    assert_eq!(
        y,
        [5.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY]
    );
    avgpool2d(&g, &x, &mut y, 1, true);
    assert_eq!(y, [1.25, 0.0, 0.0, 0.0]);
    avgpool2d(&g, &x, &mut y, 1, false);
    assert_eq!(y[0], 5.0);
    assert!(y[1..].iter().all(|v| v.is_nan()));
}

#[test]
fn kernels_do_not_allocate() {
    let mut rng = Rng(42);
    let (m, n, k) = (20, 37, 300);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    let mut c = vec![0.0; m * n];
    let mut ws = vec![0.0; gemm_workspace(m, n, k)];
    let x = rng.vec(k);
    let mut y = vec![0.0; m];
    let g = ConvCase {
        c: 4,
        h: 9,
        w: 9,
        cout: 4,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        groups: 4,
    }
    .geom();
    let img = rng.vec(4 * 81);
    let mut cols = vec![0.0; im2col_len(&g, 4)];
    let mut dwo = vec![0.0; 4 * g.oh * g.ow];
    let big = ConvCase {
        c: 1,
        h: 12,
        w: 12,
        cout: 1,
        k: [9, 9],
        s: [1, 1],
        p: [4, 4],
        d: [1, 1],
        groups: 1,
    }
    .geom();
    let mut bigo = vec![0.0; big.oh * big.ow];
    let mut pooled = vec![0.0; 4 * 16];
    let (srows, scols, snnz) = (3, 7, 5);
    let rp = [0u32, 2, 2, 5];
    let (c16, c32) = ([1u16, 6, 0, 3, 4], [1u32, 6, 0, 3, 4]);
    let h: Vec<f16> = a[..snnz].iter().map(|&v| f16::from_f32(v)).collect();
    let before = allocs();
    for ker in available(GEMM_KERNELS, |k| k.isa) {
        let am = MatRef::row_major(Elems::F32(&a), m, k);
        let bm = MatRef::row_major(Elems::F32(&b), k, n);
        ker.run(
            am,
            bm,
            &mut c,
            n,
            Bias::Col(&b[..n]),
            Activation::Gelu,
            &mut ws,
        );
        ker.run(
            am,
            bm,
            &mut c,
            n,
            Bias::Row(&b[..m]),
            Activation::Relu,
            &mut ws,
        );
    }
    for ker in
        available(GEMV_KERNELS, |k| k.isa).filter(|k| k.dtype == nap_runtime::kernels::Dtype::F32)
    {
        ker.run(Elems::F32(&a), k, m, k, &x, None, Activation::Silu, &mut y);
    }
    gemv(Elems::F32(&a), k, m, k, &x, None, Activation::Relu, &mut y);
    im2col(&g, &img, 0, 4, &mut cols);
    depthwise_conv2d(
        &g,
        &img,
        Elems::F32(&a[..36]),
        Some(&x[..4]),
        Activation::Relu6,
        &mut dwo,
    );
    depthwise_conv2d(
        &big,
        &img[..144],
        Elems::F32(&a[..81]),
        None,
        Activation::None,
        &mut bigo,
    );
    let pg = ConvGeom {
        kh: 2,
        kw: 2,
        stride: [2, 2],
        pad: [0, 0],
        oh: 4,
        ow: 4,
        ..g
    };
    for ker in available(POOL_KERNELS, |k| k.isa) {
        ker.run(&pg, PoolOp::Max, &img, &mut pooled, 4);
    }
    maxpool2d(&pg, &img, &mut pooled, 4);
    avgpool2d(&g, &img, &mut dwo, 4, false);
    for ker in available(SPMV_KERNELS, |k| k.isa) {
        let ci = match ker.index {
            IndexWidth::U16 => Indices::U16(&c16),
            IndexWidth::U32 => Indices::U32(&c32),
        };
        let v = match ker.dtype {
            Dtype::F32 => Elems::F32(&a[..snnz]),
            Dtype::F16 => Elems::F16(&h),
        };
        let w = CsrView::new(srows, scols, &rp, ci, v).unwrap();
        ker.run(&w, 0..srows, &x, Some(&b), Activation::Relu, &mut y);
        spmv(&w, &x, None, Activation::None, &mut y);
        let sk = spmm_kernel(ker.dtype, ker.index);
        sk.run(
            &w,
            0..srows,
            &a[..scols * 5],
            5,
            Some(&b),
            Activation::Gelu,
            &mut c[..srows * 5],
        );
    }
    assert_eq!(allocs(), before, "a kernel allocated");
}

/// Default dispatch keeps "store f16, compute f32": reduced-precision kernels are opt-in.
#[test]
fn default_gemv_dispatch_computes_in_f32() {
    use nap_runtime::kernels::{gemv_kernel, gemv_kernel_with, Dtype};
    for d in [Dtype::F32, Dtype::F16] {
        let k = gemv_kernel(d);
        assert!(!k.reduced_precision, "{} is reduced precision", k.name);
        eprintln!(
            "default gemv for {d:?}: {} (opt-in: {})",
            k.name,
            gemv_kernel_with(d, true).name
        );
    }
}

/// A random dense `rows × cols` matrix: each entry non-zero with probability `density`, every
/// fifth row empty.
fn sparse_dense(rng: &mut Rng, rows: usize, cols: usize, density: f64) -> Vec<f32> {
    let mut d = vec![0f32; rows * cols];
    for (i, v) in d.iter_mut().enumerate() {
        let keep = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= density;
        if keep && density > 0.0 && (i / cols.max(1)) % 5 != 3 {
            *v = rng.f32();
        }
    }
    d
}

/// Runs `ker` on rows `lo..hi` of `dense` stored as CSR and compares with a dense f64 multiply.
#[allow(clippy::too_many_arguments)]
fn check_spmv(
    ker: &SpmvKernel,
    (rows, cols): (usize, usize),
    dense: &[f32],
    x: &[f32],
    lo: usize,
    hi: usize,
    act: Activation,
    seed: u64,
) {
    let buf = CsrBuf::from_dense(rows, cols, dense, ker.dtype, ker.index);
    let w = buf.view();
    let q = |v: f32| match ker.dtype {
        Dtype::F32 => v as f64,
        Dtype::F16 => f16::from_f32(v).to_f32() as f64,
    };
    let bias = Rng(seed).vec(rows);
    let bias_o = seed.is_multiple_of(2).then_some(&bias[..]);
    let sentinel = -777.0;
    let mut y = vec![sentinel; hi - lo + 1];
    ker.run(&w, lo..hi, x, bias_o, act, &mut y);
    for i in lo..hi {
        let (mut pre, mut scale, mut k) = (bias_o.map_or(0.0, |b| b[i] as f64), 0.0, 0);
        for (p, &xv) in x[..cols].iter().enumerate() {
            let t = q(dense[i * cols + p]) * xv as f64;
            pre += t;
            scale += t.abs();
            k += (dense[i * cols + p] != 0.0) as usize;
        }
        assert!(
            close(y[i - lo], pre, scale, k, act, 6e-8),
            "{} {rows}x{cols} rows {lo}..{hi}: y[{i}] = {}, want act({pre})",
            ker.name,
            y[i - lo]
        );
    }
    assert_eq!(y[hi - lo], sentinel, "{}: wrote past the rows", ker.name);
}

#[test]
fn spmv_every_kernel_matches_dense_reference() {
    let mut ran = Vec::new();
    for ker in available(SPMV_KERNELS, |k| k.isa) {
        let mut n = 0;
        for rows in [1, 2, 5, 17] {
            for cols in [1, 7, 8, 15, 16, 17, 31, 33, 100, 1000] {
                for density in [0.0, 0.05, 0.3, 0.9, 1.0] {
                    let seed = (rows * 100_000 + cols * 10 + (density * 7.0) as usize) as u64;
                    let mut rng = Rng(seed);
                    let d = sparse_dense(&mut rng, rows, cols, density);
                    let x = rng.vec(cols + 3);
                    let act = ACTS[n % ACTS.len()];
                    check_spmv(ker, (rows, cols), &d, &x, 0, rows, act, seed);
                    check_spmv(
                        ker,
                        (rows, cols),
                        &d,
                        &x,
                        rows / 2,
                        rows,
                        Activation::None,
                        seed + 1,
                    );
                    n += 2;
                }
            }
        }
        if ker.index == IndexWidth::U32 {
            let mut rng = Rng(9);
            let d = sparse_dense(&mut rng, 3, 70_000, 0.01);
            check_spmv(
                ker,
                (3, 70_000),
                &d,
                &rng.vec(70_000),
                0,
                3,
                Activation::None,
                4,
            );
            n += 1;
        }
        ran.push(format!("{} ({n} cases)", ker.name));
    }
    eprintln!("spmv kernels run: {}", ran.join(", "));
}

/// Lanes past a row's last non-zero must not read `x`: an infinite input at a column the row
/// does not use leaves the result finite.
#[test]
fn spmv_tail_lanes_ignore_unused_inputs() {
    for ker in available(SPMV_KERNELS, |k| k.isa) {
        for nnz in 1..40 {
            let mut rng = Rng(nnz as u64);
            let cols = 64;
            let mut d = vec![0f32; cols];
            d[1..=nnz].copy_from_slice(&rng.vec(nnz));
            let buf = CsrBuf::from_dense(1, cols, &d, ker.dtype, ker.index);
            let mut x = rng.vec(cols);
            x[0] = f32::INFINITY;
            x[cols - 1] = f32::NAN;
            let mut y = [0.0];
            ker.run(&buf.view(), 0..1, &x, None, Activation::None, &mut y);
            assert!(y[0].is_finite(), "{} nnz={nnz}: {}", ker.name, y[0]);
        }
    }
}

#[test]
fn spmv_dispatch_covers_every_storage() {
    for dtype in [Dtype::F32, Dtype::F16] {
        for index in [IndexWidth::U16, IndexWidth::U32] {
            let k = spmv_kernel(dtype, index);
            assert!(k.dtype == dtype && k.index == index && k.isa.is_available());
            eprintln!("spmv {dtype:?}/{index:?}: {}", k.name);
        }
    }
    let mut rng = Rng(3);
    let d = sparse_dense(&mut rng, 9, 40, 0.2);
    let x = rng.vec(40);
    let buf = CsrBuf::from_dense(9, 40, &d, Dtype::F32, IndexWidth::U16);
    let w = buf.view();
    let mut y = vec![0.0; 9];
    spmv(&w, &x, None, Activation::None, &mut y);
    let mut want = vec![0.0; 9];
    spmv_kernel(Dtype::F32, IndexWidth::U16).run(&w, 0..9, &x, None, Activation::None, &mut want);
    assert_eq!(y, want);
}

#[test]
fn csr_view_rejects_broken_invariants() {
    let v = [1.0f32, 2.0, 3.0];
    let ok = |rp: &[u32], c: &[u32], cols| {
        CsrView::new(
            rp.len() - 1,
            cols,
            rp,
            Indices::U32(c),
            Elems::F32(&v[..c.len()]),
        )
        .err()
    };
    assert_eq!(ok(&[0, 1, 3], &[0, 1, 2], 3), None);
    assert_eq!(ok(&[1, 1, 3], &[0, 1, 2], 3), Some("row_ptr[0] is not 0"));
    assert_eq!(
        ok(&[0, 1, 2], &[0, 1, 2], 3),
        Some("row_ptr[rows] is not nnz")
    );
    assert_eq!(
        ok(&[0, 3, 2, 3], &[0, 1, 2], 3),
        Some("row_ptr is not monotone")
    );
    assert_eq!(
        ok(&[0, 1, 3], &[0, 1, 3], 3),
        Some("column index out of range")
    );
    assert_eq!(
        ok(&[0, 1, 3], &[0, 2, 2], 3),
        Some("column indices not increasing within a row")
    );
    assert!(CsrView::new(1, 3, &[0, 2], Indices::U32(&[0, 1]), Elems::F32(&v)).is_err());
    assert!(CsrView::new(2, 3, &[0, 2], Indices::U32(&[0, 1]), Elems::F32(&v[..2])).is_err());
    assert!(
        CsrView::new(1, 70_000, &[0, 1], Indices::U16(&[5]), Elems::F32(&v[..1])).is_err(),
        "u16 indices over 65536 columns"
    );
}

/// Runs `ker` on rows `lo..hi` of `dense` (`rows × k`) stored as CSR times `b` (`k × p`) and
/// compares with a dense f64 product.
#[allow(clippy::too_many_arguments)]
fn check_spmm(
    ker: &SpmmKernel,
    (rows, k, p): (usize, usize, usize),
    dense: &[f32],
    b: &[f32],
    lo: usize,
    hi: usize,
    act: Activation,
    seed: u64,
) {
    let buf = CsrBuf::from_dense(rows, k, dense, ker.dtype, ker.index);
    let q = |v: f32| match ker.dtype {
        Dtype::F32 => v as f64,
        Dtype::F16 => f16::from_f32(v).to_f32() as f64,
    };
    let bias = Rng(seed).vec(rows);
    let bias_o = seed.is_multiple_of(2).then_some(&bias[..]);
    let sentinel = -777.0;
    let mut y = vec![sentinel; (hi - lo) * p + 1];
    ker.run(&buf.view(), lo..hi, b, p, bias_o, act, &mut y);
    for i in lo..hi {
        for j in 0..p {
            let (mut pre, mut scale, mut n) = (bias_o.map_or(0.0, |bb| bb[i] as f64), 0.0, 0);
            for t in 0..k {
                let term = q(dense[i * k + t]) * b[t * p + j] as f64;
                pre += term;
                scale += term.abs();
                n += (dense[i * k + t] != 0.0) as usize;
            }
            let got = y[(i - lo) * p + j];
            assert!(
                close(got, pre, scale, n, act, 6e-8),
                "{} {rows}x{k} * {k}x{p}, rows {lo}..{hi}: y[{i}, {j}] = {got}, want act({pre})",
                ker.name
            );
        }
    }
    assert_eq!(
        y[(hi - lo) * p],
        sentinel,
        "{}: wrote past the rows",
        ker.name
    );
}

#[test]
fn spmm_every_kernel_matches_dense_reference() {
    let mut ran = Vec::new();
    for ker in available(SPMM_KERNELS, |k| k.isa) {
        let mut n = 0;
        for (rows, k) in [(1, 1), (3, 9), (7, 16), (16, 75)] {
            for p in [
                1, 3, 4, 7, 8, 9, 15, 16, 31, 32, 33, 49, 63, 64, 65, 100, 196,
            ] {
                for density in [0.0, 0.1, 0.5, 1.0] {
                    let seed =
                        (rows * 1_000_000 + k * 1000 + p * 10 + (density * 7.0) as usize) as u64;
                    let mut rng = Rng(seed);
                    let d = sparse_dense(&mut rng, rows, k, density);
                    let b = rng.vec(k * p);
                    let act = ACTS[n % ACTS.len()];
                    check_spmm(ker, (rows, k, p), &d, &b, 0, rows, act, seed);
                    check_spmm(
                        ker,
                        (rows, k, p),
                        &d,
                        &b,
                        rows / 2,
                        rows,
                        Activation::None,
                        seed + 1,
                    );
                    n += 2;
                }
            }
        }
        ran.push(format!("{} ({n} cases)", ker.name));
    }
    eprintln!("spmm kernels run: {}", ran.join(", "));
}

#[test]
fn spmm_dispatch_covers_every_storage() {
    for dtype in [Dtype::F32, Dtype::F16] {
        for index in [IndexWidth::U16, IndexWidth::U32] {
            let k = spmm_kernel(dtype, index);
            assert!(k.dtype == dtype && k.index == index && k.isa.is_available());
            eprintln!("spmm {dtype:?}/{index:?}: {}", k.name);
        }
    }
}

/// A random dense `rows × cols` matrix whose non-zeros fill whole 4×1 blocks (each kept with
/// probability `density`), plus a few isolated non-zeros when `loose` (stored as padded blocks).
fn block_sparse_dense(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    density: f64,
    loose: bool,
) -> Vec<f32> {
    let mut d = vec![0f32; rows * cols];
    for b in 0..rows.div_ceil(4) {
        for j in 0..cols {
            let keep = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= density;
            if keep && density > 0.0 {
                for r in 4 * b..(4 * b + 4).min(rows) {
                    d[r * cols + j] = rng.f32();
                }
            }
        }
    }
    if loose && rows * cols > 0 {
        for _ in 0..3 {
            let k = (rng.next_u64() % (rows * cols) as u64) as usize;
            d[k] = rng.f32();
        }
    }
    d
}

/// Every 4×1-blocked SpMV kernel against a dense f64 product: rows not a multiple of 4, empty
/// block rows, sub-ranges of block rows, f16 values, u32 indices, padded blocks.
#[test]
fn bspmv_every_kernel_matches_dense_reference() {
    let mut ran = Vec::new();
    for ker in available(BSPMV_KERNELS, |k| k.isa) {
        let mut n = 0;
        for rows in [1, 3, 4, 5, 8, 17, 64] {
            for cols in [1, 7, 16, 33, 300] {
                for density in [0.0, 0.1, 0.5, 1.0] {
                    let seed = (rows * 10_000 + cols * 10 + (density * 7.0) as usize) as u64;
                    let mut rng = Rng(seed);
                    let d = block_sparse_dense(&mut rng, rows, cols, density, n % 3 == 0);
                    let x = rng.vec(cols + 1);
                    let buf = BlockCsrBuf::from_dense(rows, cols, 4, &d, ker.dtype, ker.index);
                    let w = buf.view();
                    let q = |v: f32| match ker.dtype {
                        Dtype::F32 => v as f64,
                        Dtype::F16 => f16::from_f32(v).to_f32() as f64,
                    };
                    let bias = rng.vec(rows);
                    let act = ACTS[n % ACTS.len()];
                    let brows = w.block_rows();
                    for (lo, hi) in [(0, brows), (brows / 2, brows)] {
                        let r0 = 4 * lo;
                        let r1 = (4 * hi).min(rows);
                        let sentinel = -777.0;
                        let mut y = vec![sentinel; r1 - r0 + 1];
                        ker.run(&w, lo..hi, &x, Some(&bias), act, &mut y);
                        for r in r0..r1 {
                            let (mut pre, mut scale, mut k) = (bias[r] as f64, 0.0, 0);
                            for j in 0..cols {
                                let t = q(d[r * cols + j]) * x[j] as f64;
                                pre += t;
                                scale += t.abs();
                                k += (d[r * cols + j] != 0.0) as usize;
                            }
                            assert!(
                                close(y[r - r0], pre, scale, k.max(cols / 4), act, 6e-8),
                                "{} {rows}x{cols} d={density} block rows {lo}..{hi}: y[{r}] = {}, want act({pre})",
                                ker.name,
                                y[r - r0]
                            );
                        }
                        assert_eq!(y[r1 - r0], sentinel, "{}: wrote past the rows", ker.name);
                        n += 1;
                    }
                }
            }
        }
        ran.push(format!("{} ({n} cases)", ker.name));
    }
    eprintln!("bspmv kernels run: {}", ran.join(", "));
}

#[test]
fn block_csr_view_rejects_broken_invariants() {
    let v = [1.0f32; 12];
    let view = |rows, block, rp: &[u32], c: &[u32], nv: usize| {
        BlockCsrView::new(rows, 5, block, rp, Indices::U32(c), Elems::F32(&v[..nv])).err()
    };
    assert_eq!(view(6, 4, &[0, 1, 3], &[0, 1, 4], 12), None);
    assert_eq!(
        view(6, 0, &[0, 1, 3], &[0, 1, 4], 12),
        Some("block has zero rows")
    );
    assert_eq!(
        view(6, 4, &[0, 1, 3], &[0, 1, 4], 11),
        Some("values are not block * blocks long")
    );
    assert_eq!(
        view(9, 4, &[0, 1, 3], &[0, 1, 4], 12),
        Some("row_ptr does not have ceil(rows / block) + 1 entries")
    );
    assert_eq!(
        view(6, 4, &[0, 1, 3], &[0, 4, 1], 12),
        Some("column indices not increasing within a row")
    );
    assert_eq!(
        view(6, 4, &[0, 1, 3], &[0, 1, 5], 12),
        Some("column index out of range")
    );
    let d: Vec<f32> = (0..30)
        .map(|i| if i % 7 == 0 { i as f32 } else { 0.0 })
        .collect();
    let b = BlockCsrBuf::from_dense(6, 5, 4, &d, Dtype::F32, IndexWidth::U16);
    assert_eq!(b.view().to_dense_f32(), d, "round trip through 4x1 blocks");
}
