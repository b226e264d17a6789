//! Executor tests: every op of `format::Op`, with dense f32, f16 and CSR weights and batches of
//! one and more, against the naive f64 reference interpreter in `common`; and a counting global allocator
//! that proves `Session::run` allocates nothing once the session is planned.

mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use common::{assert_close, reference, Built, Net, Rng, Store};
use nap_runtime::format::*;
use nap_runtime::{
    AlignedBytes, Error, Fusion, Model, Session, SessionOptions, SparsePolicy, Split,
};

// ---------------------------------------------------------------------------------------------
// Allocation counting: only allocations made by the current thread while it is armed count, so
// tests running in parallel do not disturb each other.

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    if ARMED.try_with(|a| a.get()).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees carry over; the bookkeeping touches only const-initialised thread-locals without
// destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded verbatim; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        note_alloc();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through this type) with
        // `layout`; the caller upholds the rest of `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, COUNT.with(|c| c.get()))
}

// ---------------------------------------------------------------------------------------------
// Helpers.

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

const WEIGHT_STORES: [Store; 6] = [
    Store::F32,
    Store::F16,
    Store::Csr(DType::F32, IndexWidth::U16),
    Store::Csr(DType::F16, IndexWidth::U32),
    Store::Bcsr4(DType::F32, IndexWidth::U16),
    Store::Bcsr4(DType::F16, IndexWidth::U32),
];

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs `b` on `batch` random examples (scaled by `scale`) and compares with the reference; runs
/// twice more to check that a session can be reused and keeps no state between runs.
fn check_scaled(b: &Built, batch: usize, scale: f32, what: &str) {
    let a = AlignedBytes::copy_from(&b.bytes);
    let m = Model::from_bytes(a.as_bytes()).unwrap_or_else(|e| panic!("{what}: load: {e}"));
    for policy in [SparsePolicy::KEEP_CSR, SparsePolicy::default()] {
        check_policy(b, &m, batch, scale, &format!("{what} ({policy:?})"), policy);
    }
}

fn check_policy(
    b: &Built,
    m: &Model<'_>,
    batch: usize,
    scale: f32,
    what: &str,
    policy: SparsePolicy,
) {
    let mut s =
        Session::with_policy(m, batch, 1, policy).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
    assert_eq!(s.batch(), batch);
    let in_len = s.input_len(0);
    let mut rng = Rng::new(seed_of(what) ^ batch as u64);
    let input: Vec<f32> = rng.vec(in_len * batch).iter().map(|v| v * scale).collect();
    let want: Vec<f64> = input
        .chunks(in_len)
        .flat_map(|x| {
            reference(
                &b.header,
                &b.dense,
                &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            )
        })
        .collect();
    let got = s.run(&input).unwrap().to_vec();
    assert_eq!(got.len(), s.output_len(0) * batch, "{what}: output length");
    assert_close(&got, &want, 1e-4, &format!("{what} (batch {batch})"));
    let other: Vec<f32> = rng.vec(in_len * batch);
    s.run(&other).unwrap();
    assert_eq!(s.run(&input).unwrap(), &got[..], "{what}: rerun differs");
}

fn check(b: &Built, batch: usize, what: &str) {
    check_scaled(b, batch, 1.0, what)
}

fn linear(
    net: &mut Net,
    rng: &mut Rng,
    x: ValueId,
    out: u32,
    store: Store,
    bias: bool,
    act: Activation,
) -> ValueId {
    let inp = net.shape(x)[0];
    let n = (out * inp) as usize;
    let i = net.tensors.len();
    let weight = net.tensor(
        &format!("fc{i}.w"),
        &[out, inp],
        &rng.sparse_vec(n, 0.4),
        store,
    );
    let bias = bias.then(|| {
        net.tensor(
            &format!("fc{i}.b"),
            &[out],
            &rng.vec(out as usize),
            Store::F32,
        )
    });
    net.node(
        &format!("fc{i}"),
        Op::Linear(Linear { weight, bias, act }),
        &[x],
    )
}

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    name: &'static str,
    c: u32,
    o: u32,
    hw: [u32; 2],
    k: [u32; 2],
    s: [u32; 2],
    p: [u32; 2],
    d: [u32; 2],
    g: u32,
    bias: bool,
    act: Activation,
}

fn conv(net: &mut Net, rng: &mut Rng, x: ValueId, cc: &ConvCase, store: Store) -> ValueId {
    let shape = [cc.o, cc.c / cc.g, cc.k[0], cc.k[1]];
    let n = shape.iter().product::<u32>() as usize;
    let i = net.tensors.len();
    let weight = net.tensor(
        &format!("conv{i}.w"),
        &shape,
        &rng.sparse_vec(n, 0.4),
        store,
    );
    let bias = cc.bias.then(|| {
        net.tensor(
            &format!("conv{i}.b"),
            &[cc.o],
            &rng.vec(cc.o as usize),
            Store::F32,
        )
    });
    let op = Op::Conv2d(Conv2d {
        weight,
        bias,
        stride: cc.s,
        padding: cc.p,
        dilation: cc.d,
        groups: cc.g,
        act: cc.act,
    });
    net.node(&format!("conv{i}"), op, &[x])
}

#[allow(clippy::too_many_arguments)]
const fn cc(
    name: &'static str,
    c: u32,
    o: u32,
    hw: [u32; 2],
    k: [u32; 2],
    s: [u32; 2],
    p: [u32; 2],
    d: [u32; 2],
    g: u32,
    bias: bool,
    act: Activation,
) -> ConvCase {
    ConvCase {
        name,
        c,
        o,
        hw,
        k,
        s,
        p,
        d,
        g,
        bias,
        act,
    }
}

use Activation as A;

const CONVS: &[ConvCase] = &[
    cc(
        "3x3 s1 p1",
        3,
        4,
        [5, 5],
        [3, 3],
        [1, 1],
        [1, 1],
        [1, 1],
        1,
        true,
        A::Relu,
    ),
    cc(
        "3x3 s2 p0",
        2,
        3,
        [7, 6],
        [3, 3],
        [2, 2],
        [0, 0],
        [1, 1],
        1,
        false,
        A::None,
    ),
    cc(
        "3x3 s2 p1",
        3,
        2,
        [6, 7],
        [3, 3],
        [2, 2],
        [1, 1],
        [1, 1],
        1,
        true,
        A::Relu6,
    ),
    cc(
        "dilation 2",
        2,
        2,
        [7, 7],
        [3, 3],
        [1, 1],
        [2, 2],
        [2, 2],
        1,
        true,
        A::Tanh,
    ),
    cc(
        "3x2 d[2,1] s[1,2] p[1,0]",
        2,
        3,
        [6, 7],
        [3, 2],
        [1, 2],
        [1, 0],
        [2, 1],
        1,
        true,
        A::Silu,
    ),
    cc(
        "5x5 p2",
        1,
        2,
        [6, 6],
        [5, 5],
        [1, 1],
        [2, 2],
        [1, 1],
        1,
        true,
        A::Sigmoid,
    ),
    cc(
        "groups 2",
        4,
        6,
        [5, 5],
        [3, 3],
        [1, 1],
        [1, 1],
        [1, 1],
        2,
        true,
        A::Gelu,
    ),
    cc(
        "groups 3 1x1",
        6,
        3,
        [4, 4],
        [1, 1],
        [1, 1],
        [0, 0],
        [1, 1],
        3,
        false,
        A::None,
    ),
    cc(
        "depthwise 3x3",
        4,
        4,
        [6, 6],
        [3, 3],
        [1, 1],
        [1, 1],
        [1, 1],
        4,
        true,
        A::Relu6,
    ),
    cc(
        "depthwise s2",
        3,
        3,
        [7, 7],
        [3, 3],
        [2, 2],
        [1, 1],
        [1, 1],
        3,
        false,
        A::HardSwish,
    ),
    cc(
        "depthwise d2",
        2,
        2,
        [7, 7],
        [3, 3],
        [1, 1],
        [2, 2],
        [2, 2],
        2,
        true,
        A::None,
    ),
    cc(
        "depthwise multiplier 2",
        3,
        6,
        [5, 5],
        [3, 3],
        [1, 1],
        [1, 1],
        [1, 1],
        3,
        true,
        A::Relu,
    ),
    cc(
        "1x1",
        5,
        3,
        [4, 4],
        [1, 1],
        [1, 1],
        [0, 0],
        [1, 1],
        1,
        true,
        A::None,
    ),
    cc(
        "1x1 s2",
        3,
        2,
        [5, 5],
        [1, 1],
        [2, 2],
        [0, 0],
        [1, 1],
        1,
        false,
        A::Relu,
    ),
    cc(
        "1x1 p1",
        2,
        2,
        [3, 3],
        [1, 1],
        [1, 1],
        [1, 1],
        [1, 1],
        1,
        true,
        A::None,
    ),
    cc(
        "kernel = input",
        2,
        3,
        [4, 4],
        [4, 4],
        [1, 1],
        [0, 0],
        [1, 1],
        1,
        true,
        A::None,
    ),
    cc(
        "1x3 p[0,1]",
        2,
        2,
        [5, 5],
        [1, 3],
        [1, 1],
        [0, 1],
        [1, 1],
        1,
        true,
        A::None,
    ),
];

// ---------------------------------------------------------------------------------------------
// One op at a time.

#[test]
fn linear_every_storage_activation_and_batch() {
    for store in WEIGHT_STORES {
        for act in ACTS {
            for bias in [false, true] {
                let what = format!("linear {store:?} {act:?} bias {bias}");
                let mut rng = Rng::new(seed_of(&what));
                let mut net = Net::new();
                let x = net.input(&[7]);
                let y = linear(&mut net, &mut rng, x, 5, store, bias, act);
                let b = net.finish(&[y]);
                for batch in [1, 3] {
                    check_scaled(&b, batch, 3.0, &what);
                }
            }
        }
    }
}

#[test]
fn conv2d_every_geometry_and_storage() {
    for c in CONVS {
        for store in WEIGHT_STORES {
            let what = format!("conv {} {store:?}", c.name);
            let mut rng = Rng::new(seed_of(&what));
            let mut net = Net::new();
            let x = net.input(&[c.c, c.hw[0], c.hw[1]]);
            let y = conv(&mut net, &mut rng, x, c, store);
            let b = net.finish(&[y]);
            for batch in [1, 2] {
                check(&b, batch, &what);
            }
        }
    }
}

#[test]
fn batchnorm_on_maps_and_vectors() {
    for (shape, store) in [
        (&[3u32, 4, 5][..], Store::F32),
        (&[3, 4, 5], Store::F16),
        (&[6], Store::F32),
    ] {
        let what = format!("batchnorm {shape:?} {store:?}");
        let mut rng = Rng::new(seed_of(&what));
        let mut net = Net::new();
        let x = net.input(shape);
        let c = shape[0] as usize;
        let gamma = net.tensor("gamma", &[c as u32], &rng.vec(c), store);
        let beta = net.tensor("beta", &[c as u32], &rng.vec(c), store);
        let mean = net.tensor("mean", &[c as u32], &rng.vec(c), Store::F32);
        let var: Vec<f32> = rng.vec(c).iter().map(|v| v.abs() + 0.1).collect();
        let var = net.tensor("var", &[c as u32], &var, store);
        let y = net.node(
            "bn",
            Op::BatchNorm(BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps: 1e-3,
            }),
            &[x],
        );
        let b = net.finish(&[y]);
        for batch in [1, 3] {
            check(&b, batch, &what);
        }
    }
}

#[test]
fn standalone_activations() {
    for act in ACTS {
        let what = format!("act {act:?}");
        let mut net = Net::new();
        let x = net.input(&[2, 3, 3]);
        let y = net.node("act", Op::Act(act), &[x]);
        let b = net.finish(&[y]);
        for batch in [1, 2] {
            // Inputs in [-8, 8) reach the clamps of Relu6 and HardSwish and the tails of the rest.
            check_scaled(&b, batch, 8.0, &what);
        }
    }
}

const POOLS: &[([u32; 2], [u32; 2], [u32; 2])] = &[
    ([2, 2], [2, 2], [0, 0]),
    ([3, 3], [2, 2], [1, 1]),
    ([3, 3], [1, 1], [1, 1]),
    ([2, 2], [1, 1], [0, 0]),
    ([2, 3], [2, 1], [1, 1]),
    ([1, 1], [2, 2], [0, 0]),
    ([3, 2], [3, 2], [0, 1]),
];

#[test]
fn maxpool_with_padding() {
    for &(kernel, stride, padding) in POOLS {
        let what = format!("maxpool k{kernel:?} s{stride:?} p{padding:?}");
        let mut net = Net::new();
        let x = net.input(&[2, 5, 6]);
        let y = net.node(
            "pool",
            Op::MaxPool2d(MaxPool2d {
                kernel,
                stride,
                padding,
            }),
            &[x],
        );
        let b = net.finish(&[y]);
        for batch in [1, 3] {
            check(&b, batch, &what);
        }
    }
}

#[test]
fn maxpool_padding_never_wins() {
    let mut net = Net::new();
    let x = net.input(&[1, 3, 3]);
    let y = net.node(
        "pool",
        Op::MaxPool2d(MaxPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        }),
        &[x],
    );
    let b = net.finish(&[y]);
    let m = Model::from_vec(&b.bytes).unwrap();
    let mut s = Session::new(&m, 1).unwrap();
    let input: Vec<f32> = (1..=9).map(|v| -(v as f32)).collect();
    // Windows (rows/cols) {0,1}×{0,1}, {0,1}×{1,2}, {1,2}×{0,1}, {1,2}×{1,2} of -1..-9.
    assert_eq!(s.run(&input).unwrap(), &[-1.0, -2.0, -4.0, -5.0]);
}

#[test]
fn avgpool_count_include_pad_both_ways() {
    for &(kernel, stride, padding) in POOLS {
        for count_include_pad in [true, false] {
            let what =
                format!("avgpool k{kernel:?} s{stride:?} p{padding:?} cip {count_include_pad}");
            let mut net = Net::new();
            let x = net.input(&[2, 5, 6]);
            let y = net.node(
                "pool",
                Op::AvgPool2d(AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    count_include_pad,
                }),
                &[x],
            );
            let b = net.finish(&[y]);
            for batch in [1, 3] {
                check(&b, batch, &what);
            }
        }
    }
}

#[test]
fn avgpool_corner_divisors() {
    // All ones, 3×3 window, padding 1: the corner window covers 4 real cells.
    for (cip, corner) in [(true, 4.0 / 9.0), (false, 1.0)] {
        let mut net = Net::new();
        let x = net.input(&[1, 4, 4]);
        let y = net.node(
            "pool",
            Op::AvgPool2d(AvgPool2d {
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
                count_include_pad: cip,
            }),
            &[x],
        );
        let b = net.finish(&[y]);
        let m = Model::from_vec(&b.bytes).unwrap();
        let mut s = Session::new(&m, 1).unwrap();
        let out = s.run(&[1.0; 16]).unwrap();
        assert!(
            (out[0] - corner).abs() < 1e-6,
            "cip {cip}: corner {}",
            out[0]
        );
        assert!(
            (out[5] - 1.0).abs() < 1e-6,
            "cip {cip}: interior {}",
            out[5]
        );
    }
}

#[test]
fn global_avg_pool() {
    // Planes shorter than, a multiple of and between multiples of the eight partial sums.
    for shape in [[3, 4, 5], [2, 1, 3], [2, 4, 4], [2, 7, 7]] {
        let mut net = Net::new();
        let x = net.input(&shape);
        let y = net.node("gap", Op::GlobalAvgPool, &[x]);
        let b = net.finish(&[y]);
        for batch in [1, 4] {
            check(&b, batch, &format!("global avg pool {shape:?}"));
        }
    }
}

#[test]
fn add_with_activation() {
    for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
        let what = format!("add {act:?}");
        let mut net = Net::new();
        let x = net.input(&[2, 3, 3]);
        let t = net.node("tanh", Op::Act(Activation::Tanh), &[x]);
        let y = net.node("add", Op::Add(Add { act }), &[x, t]);
        let b = net.finish(&[y]);
        for batch in [1, 3] {
            check(&b, batch, &what);
        }
        // Both operands the same value.
        let mut net = Net::new();
        let x = net.input(&[5]);
        let y = net.node("double", Op::Add(Add { act }), &[x, x]);
        let b = net.finish(&[y]);
        for batch in [1, 2] {
            check(&b, batch, &format!("{what} x + x"));
        }
    }
}

#[test]
fn concat_two_and_three_inputs() {
    let mut rng = Rng::new(5);
    let mut net = Net::new();
    let x = net.input(&[2, 4, 4]);
    let one = cc(
        "1x1",
        2,
        3,
        [4, 4],
        [1, 1],
        [1, 1],
        [0, 0],
        [1, 1],
        1,
        true,
        A::None,
    );
    let a = conv(&mut net, &mut rng, x, &one, Store::F32);
    let t = net.node("sig", Op::Act(Activation::Sigmoid), &[x]);
    let two = net.node("cat2", Op::Concat, &[a, t]);
    let three = net.node("cat3", Op::Concat, &[t, two, x]);
    assert_eq!(net.shape(three), &[2 + 5 + 2, 4, 4]);
    let y = net.node("gap", Op::GlobalAvgPool, &[three]);
    let b = net.finish(&[y]);
    for batch in [1, 3] {
        check(&b, batch, "concat of maps");
    }
    // Vectors.
    let mut net = Net::new();
    let x = net.input(&[6]);
    let a = linear(
        &mut net,
        &mut rng,
        x,
        4,
        Store::Csr(DType::F32, IndexWidth::U16),
        true,
        A::None,
    );
    let c2 = net.node("cat2", Op::Concat, &[x, a]);
    let c3 = net.node("cat3", Op::Concat, &[a, c2, a]);
    let b = net.finish(&[c3]);
    for batch in [1, 2] {
        check(&b, batch, "concat of vectors");
    }
}

#[test]
fn flatten_reshape_and_softmax() {
    let mut rng = Rng::new(11);
    let mut net = Net::new();
    let x = net.input(&[2, 3, 4]);
    let r = net.node(
        "reshape",
        Op::Reshape(Reshape {
            shape: vec![6, 2, 2],
        }),
        &[x],
    );
    let c = conv(
        &mut net,
        &mut rng,
        r,
        &cc(
            "after reshape",
            6,
            2,
            [2, 2],
            [2, 2],
            [1, 1],
            [0, 0],
            [1, 1],
            2,
            true,
            A::None,
        ),
        Store::F32,
    );
    let f = net.node("flatten", Op::Flatten, &[r]);
    let fc = net.node("flatten conv", Op::Flatten, &[c]);
    let cat = net.node("cat", Op::Concat, &[f, fc]);
    let y = linear(&mut net, &mut rng, cat, 10, Store::F16, true, A::None);
    let s = net.node("softmax", Op::Softmax, &[y]);
    let b = net.finish(&[s]);
    for batch in [1, 3] {
        // Logits of size ~30 make a naive exp overflow-prone softmax visible.
        check_scaled(&b, batch, 10.0, "flatten/reshape/softmax");
    }
    let m = Model::from_vec(&b.bytes).unwrap();
    let mut s = Session::new(&m, 2).unwrap();
    let out = s.run(&[0.5; 48]).unwrap();
    for row in out.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

/// A small residual/inception-like graph touching most ops together, with mixed storage.
fn mixed_graph() -> Built {
    let mut rng = Rng::new(2024);
    let mut net = Net::new();
    let x = net.input(&[4, 6, 6]);
    let c1 = conv(
        &mut net,
        &mut rng,
        x,
        &cc(
            "c1",
            4,
            4,
            [6, 6],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
            true,
            A::None,
        ),
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let gamma = net.tensor("gamma", &[4], &[1.0, 0.5, 2.0, 1.5], Store::F16);
    let beta = net.tensor("beta", &[4], &rng.vec(4), Store::F32);
    let mean = net.tensor("mean", &[4], &rng.vec(4), Store::F32);
    let var = net.tensor("var", &[4], &[0.5, 1.0, 2.0, 0.25], Store::F32);
    let bn = net.node(
        "bn",
        Op::BatchNorm(BatchNorm {
            gamma,
            beta,
            mean,
            var,
            eps: 1e-5,
        }),
        &[c1],
    );
    let r = net.node("relu", Op::Act(A::Relu), &[bn]);
    let c2 = conv(
        &mut net,
        &mut rng,
        r,
        &cc(
            "c2",
            4,
            4,
            [6, 6],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
            false,
            A::None,
        ),
        Store::F16,
    );
    let res = net.node("residual", Op::Add(Add { act: A::Relu }), &[x, c2]);
    let dw = conv(
        &mut net,
        &mut rng,
        res,
        &cc(
            "dw",
            4,
            4,
            [6, 6],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            4,
            true,
            A::Relu6,
        ),
        Store::F32,
    );
    let pw = conv(
        &mut net,
        &mut rng,
        res,
        &cc(
            "pw",
            4,
            2,
            [6, 6],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
            1,
            true,
            A::HardSwish,
        ),
        Store::Csr(DType::F16, IndexWidth::U32),
    );
    let cat = net.node("cat", Op::Concat, &[dw, pw, res]);
    let mp = net.node(
        "maxpool",
        Op::MaxPool2d(MaxPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        }),
        &[cat],
    );
    let ap = net.node(
        "avgpool",
        Op::AvgPool2d(AvgPool2d {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [0, 0],
            count_include_pad: false,
        }),
        &[mp],
    );
    let gap = net.node("gap", Op::GlobalAvgPool, &[ap]);
    let flat = net.node("flatten", Op::Flatten, &[ap]);
    let f1 = linear(
        &mut net,
        &mut rng,
        flat,
        8,
        Store::Csr(DType::F32, IndexWidth::U32),
        true,
        A::Gelu,
    );
    let g1 = linear(&mut net, &mut rng, gap, 8, Store::F32, false, A::None);
    let sum = net.node("sum", Op::Add(Add { act: A::None }), &[f1, g1]);
    let logits = linear(&mut net, &mut rng, sum, 5, Store::F16, true, A::None);
    let y = net.node("softmax", Op::Softmax, &[logits]);
    net.finish(&[y])
}

#[test]
fn mixed_graph_matches_reference() {
    let b = mixed_graph();
    for batch in [1, 2, 5] {
        check(&b, batch, "mixed graph");
    }
}

/// A squeeze-and-excitation block as PP-OCR's MobileNetV3 has it: a map scaled per channel by
/// a gate (global pooling, 1×1 convolutions, HardSigmoid), then multiplied by itself.
#[test]
fn issue13_mul_by_gate_and_by_itself_matches_reference() {
    use Activation as A;
    let mut rng = Rng::new(13);
    let mut net = Net::new();
    let x = net.input(&[4, 6, 5]);
    let map = conv(
        &mut net,
        &mut rng,
        x,
        &cc(
            "map",
            4,
            4,
            [6, 5],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
            true,
            A::None,
        ),
        Store::F32,
    );
    let gap = net.node("gap", Op::GlobalAvgPool, &[map]);
    let col = net.node(
        "col",
        Op::Reshape(Reshape {
            shape: vec![4, 1, 1],
        }),
        &[gap],
    );
    let squeeze = conv(
        &mut net,
        &mut rng,
        col,
        &cc(
            "sq",
            4,
            2,
            [1, 1],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
            1,
            true,
            A::Relu,
        ),
        Store::F32,
    );
    let hard_sigmoid = A::HardSigmoid {
        alpha: 0.2,
        beta: 0.5,
    };
    let gate = conv(
        &mut net,
        &mut rng,
        squeeze,
        &cc(
            "ex",
            2,
            4,
            [1, 1],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
            1,
            true,
            hard_sigmoid,
        ),
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let scaled = net.node("scale", Op::Mul, &[map, gate]);
    let squared = net.node("square", Op::Mul, &[scaled, scaled]);
    let flat = net.node("flatten", Op::Flatten, &[squared]);
    let y = linear(&mut net, &mut rng, flat, 3, Store::F32, true, A::None);
    let b = net.finish(&[y]);
    for batch in [1, 3] {
        check(&b, batch, "squeeze-excite");
    }
    let node = Node {
        name: "scale".to_string(),
        op: Op::Mul,
        inputs: vec![0, 1],
        output: 2,
    };
    for (a, g) in [
        (&[4, 6, 5][..], &[2, 1, 1][..]),
        (&[4, 1, 1], &[4, 6, 5]),
        (&[4, 6, 5], &[4, 6, 1]),
    ] {
        let e = nap_runtime::graph::infer(&b.header, &node, &[a, g]).unwrap_err();
        assert!(
            e.to_string().contains("one value per channel"),
            "{a:?} * {g:?}: {e}"
        );
    }
}

/// A detector's upsampling path: a transposed convolution (stride 2, and stride 2 with padding,
/// output padding and dilation) and nearest upsampling by 2×3, then uneven padding (minus
/// infinity before a max pooling, and a constant), against the reference.
#[test]
fn issue13_conv_transpose_upsample_and_pad_match_reference() {
    use Activation as A;
    let mut rng = Rng::new(31);
    let mut net = Net::new();
    let x = net.input(&[3, 5, 4]);
    let mut ct = |net: &mut Net, x, name: &str, cin, cout, k: u32, op: ConvTranspose2d| {
        let n = (cin * cout * k * k) as usize;
        let weight = net.tensor(
            &format!("{name}.w"),
            &[cin, cout, k, k],
            &rng.vec(n),
            Store::F32,
        );
        let bias = net.tensor(
            &format!("{name}.b"),
            &[cout],
            &rng.vec(cout as usize),
            Store::F32,
        );
        let op = Op::ConvTranspose2d(ConvTranspose2d {
            weight,
            bias: Some(bias),
            ..op
        });
        net.node(name, op, &[x])
    };
    let plain = ConvTranspose2d {
        weight: 0,
        bias: None,
        stride: [2, 2],
        padding: [0, 0],
        output_padding: [0, 0],
        dilation: [1, 1],
    };
    let up1 = ct(&mut net, x, "up1", 3, 4, 2, plain.clone());
    let odd = ConvTranspose2d {
        stride: [2, 3],
        padding: [1, 0],
        output_padding: [1, 2],
        dilation: [2, 1],
        ..plain
    };
    let up2 = ct(&mut net, up1, "up2", 4, 2, 3, odd);
    let up3 = net.node("up3", Op::Upsample(Upsample { scale: [2, 3] }), &[up2]);
    // Inception's uneven pooling padding: minus infinity on two sides, then a max pooling.
    let pad = Pad {
        pads: [0, 1, 2, 0],
        value: f32::NEG_INFINITY,
    };
    let padded = net.node("pad", Op::Pad(pad), &[up3]);
    let pool = Op::MaxPool2d(MaxPool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [0, 0],
    });
    let pooled = net.node("pool", pool, &[padded]);
    let zeros = Pad {
        pads: [1, 0, 0, 2],
        value: 0.5,
    };
    let up4 = net.node("pad2", Op::Pad(zeros), &[pooled]);
    let flat = net.node("flatten", Op::Flatten, &[up4]);
    let y = linear(&mut net, &mut rng, flat, 3, Store::F32, true, A::None);
    let b = net.finish(&[y]);
    for batch in [1, 2] {
        check(&b, batch, "conv-transpose and upsample");
    }
}

/// A channel shuffle (Reshape, Transpose, Reshape), a head split's transpose of three axes,
/// LRN, and an average pool with uneven padding that counts only the map's cells.
#[test]
fn issue13_transpose_lrn_and_uneven_average_pool_match_reference() {
    let mut rng = Rng::new(37);
    let mut net = Net::new();
    let x = net.input(&[6, 5, 7]);
    let split = net.node(
        "split",
        Op::Reshape(Reshape {
            shape: vec![2, 3, 5, 7],
        }),
        &[x],
    );
    let shuffled = net.node(
        "shuffle",
        Op::Transpose(Transpose {
            perm: vec![1, 0, 2, 3],
        }),
        &[split],
    );
    let merged = net.node(
        "merge",
        Op::Reshape(Reshape {
            shape: vec![6, 5, 7],
        }),
        &[shuffled],
    );
    let lrn = Lrn {
        size: 4,
        alpha: 0.3,
        beta: 0.75,
        bias: 1.5,
    };
    let normed = net.node("lrn", Op::Lrn(lrn), &[merged]);
    let pool = AvgPool2dUneven {
        kernel: [3, 4],
        stride: [2, 1],
        pads: [0, 2, 2, 1],
    };
    let pooled = net.node("pool", Op::AvgPool2dUneven(pool), &[normed]);
    let rotated = net.node(
        "rotate",
        Op::Transpose(Transpose {
            perm: vec![2, 0, 1],
        }),
        &[pooled],
    );
    let flat = net.node("flatten", Op::Flatten, &[rotated]);
    let y = linear(
        &mut net,
        &mut rng,
        flat,
        3,
        Store::F32,
        true,
        Activation::None,
    );
    let b = net.finish(&[y]);
    for batch in [1, 3] {
        check(&b, batch, "transpose, LRN and uneven average pool");
    }
}

/// A transformer block as PP-OCR's recogniser runs it: LayerNorm, a projection of every row
/// (dense and CSR weights), query, key and value sliced from it, attention of two heads, a
/// softmax over the last axis of each row.
#[test]
fn issue13_transformer_ops_match_reference() {
    let mut rng = Rng::new(41);
    let mut net = Net::new();
    let (t, dm, heads, dh) = (5u32, 8u32, 2u32, 3u32);
    let x = net.input(&[t, dm]);
    let vector = |net: &mut Net, name: &str, n: u32, rng: &mut Rng| {
        net.tensor(name, &[n], &rng.vec(n as usize), Store::F32)
    };
    let gamma = vector(&mut net, "ln.g", dm, &mut rng);
    let beta = vector(&mut net, "ln.b", dm, &mut rng);
    let normed = net.node(
        "ln",
        Op::LayerNorm(LayerNorm {
            gamma,
            beta,
            eps: 1e-5,
        }),
        &[x],
    );
    let qkv_out = 3 * heads * dh;
    let wq = net.tensor(
        "qkv.w",
        &[qkv_out, dm],
        &rng.sparse_vec((qkv_out * dm) as usize, 0.5),
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let bq = vector(&mut net, "qkv.b", qkv_out, &mut rng);
    let qkv = net.node(
        "qkv",
        Op::LinearRows(LinearRows {
            weight: wq,
            bias: Some(bq),
            act: Activation::None,
        }),
        &[normed],
    );
    let split = net.node(
        "split",
        Op::Reshape(Reshape {
            shape: vec![t, 3, heads, dh],
        }),
        &[qkv],
    );
    let heads_first = net.node(
        "heads",
        Op::Transpose(Transpose {
            perm: vec![1, 2, 0, 3],
        }),
        &[split],
    );
    let part = |net: &mut Net, i: u32| {
        let s = net.node(
            &format!("part{i}"),
            Op::Slice(Slice {
                axis: 0,
                start: i,
                end: i + 1,
            }),
            &[heads_first],
        );
        net.node(
            &format!("part{i}.r"),
            Op::Reshape(Reshape {
                shape: vec![heads, t, dh],
            }),
            &[s],
        )
    };
    let (q, k, v) = (part(&mut net, 0), part(&mut net, 1), part(&mut net, 2));
    let att = net.node("att", Op::Attention(Attention { scale: 0.7 }), &[q, k, v]);
    let back = net.node(
        "back",
        Op::Transpose(Transpose {
            perm: vec![1, 0, 2],
        }),
        &[att],
    );
    let rows = net.node(
        "rows",
        Op::Reshape(Reshape {
            shape: vec![t, heads * dh],
        }),
        &[back],
    );
    let wo = net.tensor(
        "out.w",
        &[4, heads * dh],
        &rng.vec((4 * heads * dh) as usize),
        Store::F32,
    );
    let out = net.node(
        "out",
        Op::LinearRows(LinearRows {
            weight: wo,
            bias: None,
            act: Activation::Relu,
        }),
        &[rows],
    );
    let y = net.node("softmax", Op::Softmax, &[out]);
    let b = net.finish(&[y]);
    for batch in [1, 3] {
        check(&b, batch, "transformer block");
    }
}

#[test]
fn issue13_new_ops_reject_bad_attributes() {
    let cases: [(Op, &str); 4] = [
        (
            Op::Transpose(Transpose {
                perm: vec![0, 0, 1],
            }),
            "not a permutation",
        ),
        (Op::Transpose(Transpose { perm: vec![1, 0] }), "rank-3"),
        (
            Op::Lrn(Lrn {
                size: 0,
                alpha: 1.0,
                beta: 1.0,
                bias: 1.0,
            }),
            "0 channels",
        ),
        (
            Op::AvgPool2dUneven(AvgPool2dUneven {
                kernel: [2, 2],
                stride: [1, 1],
                pads: [0, 0, 2, 0],
            }),
            "as large as the pooling window",
        ),
    ];
    let b = Net::new().finish(&[]);
    for (op, want) in cases {
        let node = Node {
            name: "bad".to_string(),
            op,
            inputs: vec![0],
            output: 1,
        };
        let e = nap_runtime::graph::infer(&b.header, &node, &[&[2, 4, 4]]).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[test]
fn input_length_is_checked() {
    let b = mixed_graph();
    let m = Model::from_vec(&b.bytes).unwrap();
    let mut s = Session::new(&m, 2).unwrap();
    assert_eq!(
        s.run(&[0.0; 10]).err(),
        Some(Error::Shape {
            what: "input",
            expected: 2 * 144,
            got: 10
        })
    );
}

// ---------------------------------------------------------------------------------------------
// No allocation after prepare.

#[test]
fn allocation_counter_counts() {
    let (v, n) = count_allocs(|| vec![1u8; 100]);
    assert_eq!((v.len(), n), (100, 1));
    let (_, n) = count_allocs(|| 1 + 1);
    assert_eq!(n, 0);
}

#[test]
fn run_allocates_nothing() {
    // Conv (dense, CSR, grouped, depthwise, 1×1), pools, linear (dense + CSR) and the rest.
    let b = mixed_graph();
    let m = Model::from_vec(&b.bytes).unwrap();
    let mut rng = Rng::new(3);
    for (batch, threads) in [(1usize, 1usize), (4, 1), (1, 2), (4, 3)] {
        let mut s = Session::with_threads(&m, batch, threads).unwrap();
        let input = rng.vec(s.input_len(0) * batch);
        let (len, n) = count_allocs(|| s.run(&input).map(|o| o.len()));
        assert_eq!(len.unwrap(), 5 * batch);
        assert_eq!(
            n, 0,
            "Session::run allocated {n} times at batch {batch}, {threads} threads"
        );
    }
    for c in CONVS {
        for store in WEIGHT_STORES {
            let mut net = Net::new();
            let x = net.input(&[c.c, c.hw[0], c.hw[1]]);
            let y = conv(&mut net, &mut rng, x, c, store);
            let p = net.node(
                "pool",
                Op::AvgPool2d(AvgPool2d {
                    kernel: [1, 1],
                    stride: [1, 1],
                    padding: [0, 0],
                    count_include_pad: true,
                }),
                &[y],
            );
            let f = net.node("flatten", Op::Flatten, &[p]);
            let z = linear(&mut net, &mut rng, f, 3, store, true, A::Relu);
            let b = net.finish(&[z]);
            let m = Model::from_vec(&b.bytes).unwrap();
            for batch in [1usize, 4] {
                let mut s = Session::new(&m, batch).unwrap();
                let input = rng.vec(s.input_len(0) * batch);
                let (r, n) = count_allocs(|| s.run(&input).is_ok());
                assert!(r);
                assert_eq!(
                    n, 0,
                    "conv {} {store:?} batch {batch}: {n} allocations",
                    c.name
                );
            }
        }
    }
}

/// Zero-sized values are legal in a file (nothing forbids a zero dimension); planning and
/// running such a graph must not panic, and produces no output elements.
#[test]
fn zero_sized_values_do_not_panic() {
    let mut cases: Vec<(&str, Built)> = Vec::new();
    let mut net = Net::new();
    let x = net.input(&[0]);
    let y = net.node("softmax", Op::Softmax, &[x]);
    cases.push(("softmax of [0]", net.finish(&[y])));
    for shape in [[3u32, 0, 4], [0, 2, 2]] {
        let mut net = Net::new();
        let x = net.input(&shape);
        let c = shape[0];
        let p: Vec<TensorId> = ["g", "b", "m", "v"]
            .iter()
            .map(|n| net.tensor(n, &[c], &vec![1.0; c as usize], Store::F32))
            .collect();
        let bn = Op::BatchNorm(BatchNorm {
            gamma: p[0],
            beta: p[1],
            mean: p[2],
            var: p[3],
            eps: 1e-5,
        });
        let y = net.node("bn", bn, &[x]);
        let z = net.node("act", Op::Act(A::Gelu), &[y]);
        cases.push((
            if c == 0 {
                "batchnorm of [0, 2, 2]"
            } else {
                "batchnorm of [3, 0, 4]"
            },
            net.finish(&[z]),
        ));
    }
    for (what, b) in &cases {
        let m = Model::from_vec(&b.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        for batch in [1, 2] {
            let mut s = Session::new(&m, batch).unwrap();
            assert_eq!(s.run(&[]).unwrap(), &[] as &[f32], "{what}");
        }
    }
}

/// Issue 14: zero-element values that made `Session::run` panic (an index underflow where a
/// zero-length value and the next output share an offset): a Linear with a `[0, 16]` weight, an
/// input of shape `[0]`, a `[C, 0, 0]` map into a pooling, and 1×1 and depthwise convolutions
/// whose padding exceeds a zero-size map. Each loads, plans and runs, or is a typed error.
#[test]
fn issue14_zero_element_values_do_not_panic() {
    let mut rng = Rng::new(5);
    let mut cases: Vec<(&str, Built)> = Vec::new();
    {
        let mut net = Net::new();
        let x = net.input(&[16]);
        let w = net.tensor("w", &[0, 16], &[], Store::F32);
        let y = net.node(
            "fc",
            Op::Linear(Linear {
                weight: w,
                bias: None,
                act: A::Relu,
            }),
            &[x],
        );
        let z = net.node("softmax", Op::Softmax, &[y]);
        cases.push(("linear [0, 16]", net.finish(&[z])));
    }
    {
        let mut net = Net::new();
        let x = net.input(&[0]);
        let y = net.node("relu", Op::Act(A::Relu), &[x]);
        let z = net.node("flatten", Op::Flatten, &[y]);
        cases.push(("input [0]", net.finish(&[z])));
    }
    // Without padding a window over an empty map is refused when the graph is built.
    for pad in [1u32, 2] {
        let mut net = Net::new();
        let x = net.input(&[3, 0, 0]);
        let w1 = net.tensor("c1.w", &[4, 3, 1, 1], &rng.vec(12), Store::F32);
        let b1 = net.tensor("c1.b", &[4], &rng.vec(4), Store::F32);
        let conv = |weight, bias, groups| {
            Op::Conv2d(Conv2d {
                weight,
                bias: Some(bias),
                stride: [1, 1],
                padding: [pad, pad],
                dilation: [1, 1],
                groups,
                act: A::Relu,
            })
        };
        let y = net.node("c1", conv(w1, b1, 1), &[x]);
        let w2 = net.tensor("dw.w", &[4, 1, 3, 3], &rng.vec(36), Store::F32);
        let b2 = net.tensor("dw.b", &[4], &rng.vec(4), Store::F32);
        let y = net.node("dw", conv(w2, b2, 4), &[y]);
        let p = net.node(
            "pool",
            Op::MaxPool2d(MaxPool2d {
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
            }),
            &[y],
        );
        let g = net.node("gap", Op::GlobalAvgPool, &[p]);
        cases.push(("padded convolutions of a [3, 0, 0] map", net.finish(&[g])));
    }
    // Convolutions to no channels, dense (implicit GEMM) and CSR, and a pool of the empty map.
    for store in [Store::F32, Store::Csr(DType::F32, IndexWidth::U16)] {
        let mut net = Net::new();
        let x = net.input(&[3, 6, 6]);
        let w = net.tensor("c.w", &[0, 3, 3, 3], &[], store);
        let y = net.node(
            "c",
            Op::Conv2d(Conv2d {
                weight: w,
                bias: None,
                stride: [1, 1],
                padding: [1, 1],
                dilation: [1, 1],
                groups: 1,
                act: A::Relu,
            }),
            &[x],
        );
        let p = net.node(
            "pool",
            Op::MaxPool2d(MaxPool2d {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
            }),
            &[y],
        );
        cases.push(("convolution to no channels", net.finish(&[p])));
    }
    for (what, b) in &cases {
        let m = match Model::from_vec(&b.bytes) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{what}: refused at load: {e}");
                continue;
            }
        };
        for (batch, threads) in [(1, 1), (3, 1), (3, 2)] {
            let mut s = match Session::with_threads(&m, batch, threads) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{what}: refused when planning: {e}");
                    continue;
                }
            };
            let input = vec![0.5; s.input_len(0) * batch];
            let y = s.run(&input).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                y.iter().all(|v| !v.is_nan()) || y.is_empty(),
                "{what}: {y:?}"
            );
        }
    }
}

/// The default policy expands a CSR Linear weight of density 0.4 (above the batch-1 limit 0.2)
/// into a dense copy and keeps one of density 0.1 sparse; `KEEP_CSR` expands neither. Outputs
/// agree either way.
#[test]
fn sparse_policy_densifies_only_above_the_limit() {
    let mut rng = Rng::new(7);
    let mut net = Net::new();
    let x = net.input(&[64]);
    let dense40 = rng.sparse_vec(32 * 64, 0.6);
    let dense10 = rng.sparse_vec(16 * 32, 0.9);
    let w1 = net.tensor(
        "fc1.w",
        &[32, 64],
        &dense40,
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let h = net.node(
        "fc1",
        Op::Linear(Linear {
            weight: w1,
            bias: None,
            act: Activation::Relu,
        }),
        &[x],
    );
    let w2 = net.tensor(
        "fc2.w",
        &[16, 32],
        &dense10,
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let y = net.node(
        "fc2",
        Op::Linear(Linear {
            weight: w2,
            bias: None,
            act: Activation::None,
        }),
        &[h],
    );
    let b = net.finish(&[y]);
    let m = Model::from_vec(&b.bytes).unwrap();
    let density = |v: &[f32]| v.iter().filter(|x| **x != 0.0).count() as f64 / v.len() as f64;
    let limit = SparsePolicy::default().max_density_gemv as f64;
    assert!(density(&dense40) > limit && density(&dense10) < limit);
    let mut keep = Session::with_policy(&m, 1, 1, SparsePolicy::KEEP_CSR).unwrap();
    let mut def = Session::with_policy(&m, 1, 1, SparsePolicy::default()).unwrap();
    assert_eq!(def.planned_floats() - keep.planned_floats(), 32 * 64);
    let input = rng.vec(64);
    let a = keep.run(&input).unwrap().to_vec();
    let d = def.run(&input).unwrap().to_vec();
    assert_close(
        &d,
        &a.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        1e-5,
        "policies agree",
    );
}

/// Sparse layers big enough to be split across threads (a 256×4096 CSR Linear at 60 % density,
/// a CSR 3×3 convolution over 16×16 pixels), with a dense 1024×256 Linear among them, give the
/// same output with 1, 2 and 3 threads under every [`Split`], at batch 1 (row-split SpMV and
/// GEMV) and batch 3 (one SpMM over the batch), and match the reference.
#[test]
fn sparse_layers_split_across_threads_match() {
    let mut rng = Rng::new(11);
    let mut net = Net::new();
    let x = net.input(&[16, 16, 16]);
    let cc = ConvCase {
        name: "big",
        c: 16,
        o: 16,
        hw: [16, 16],
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
        d: [1, 1],
        g: 1,
        bias: true,
        act: Activation::Relu,
    };
    let h = conv(
        &mut net,
        &mut rng,
        x,
        &cc,
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let f = net.node("flatten", Op::Flatten, &[h]);
    let f1 = linear(
        &mut net,
        &mut rng,
        f,
        256,
        Store::Csr(DType::F32, IndexWidth::U32),
        true,
        Activation::Relu,
    );
    // Dense, big enough for a row-split GEMV at batch 1.
    let f2 = linear(
        &mut net,
        &mut rng,
        f1,
        1024,
        Store::F32,
        true,
        Activation::Relu,
    );
    let y = linear(
        &mut net,
        &mut rng,
        f2,
        64,
        Store::Csr(DType::F16, IndexWidth::U16),
        true,
        Activation::None,
    );
    let b = net.finish(&[y]);
    let m = Model::from_vec(&b.bytes).unwrap();
    for batch in [1, 3] {
        let mut one = Session::with_policy(&m, batch, 1, SparsePolicy::KEEP_CSR).unwrap();
        let input = rng.vec(one.input_len(0) * batch);
        let a = one.run(&input).unwrap().to_vec();
        for threads in [2, 3] {
            for split in [Split::Adaptive, Split::Static, Split::Steps] {
                let opts = SessionOptions {
                    threads,
                    split,
                    policy: SparsePolicy::KEEP_CSR,
                    ..SessionOptions::default()
                };
                let mut s = Session::with_options(&m, batch, opts).unwrap();
                assert_eq!(
                    s.run(&input).unwrap(),
                    &a[..],
                    "batch {batch}, {threads} threads, {split:?}: threads change the output"
                );
            }
        }
        let want: Vec<f64> = input
            .chunks(one.input_len(0))
            .flat_map(|x| {
                reference(
                    &b.header,
                    &b.dense,
                    &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                )
            })
            .collect();
        // Outputs reach ~800 from sums of thousands of terms: compare against that scale.
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in a.iter().zip(&want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= 1e-5 * scale,
                "batch {batch}: element {i}: got {g}, want {w}, scale {scale}"
            );
        }
    }
}

/// A 4×1-blocked Linear weight with 40 % of its blocks stored runs blocked under the default
/// policy (blocked limit 0.5) and is expanded when the blocked limit is 0.3; at batch 2 it is
/// always expanded. Outputs agree throughout.
#[test]
fn blocked_weights_follow_the_blocked_limit() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (32usize, 64usize);
    let mut w = vec![0f32; rows * cols];
    for b in 0..rows / 4 {
        for j in 0..cols {
            if (b * 7 + j * 3) % 5 < 2 {
                for r in 4 * b..4 * b + 4 {
                    w[r * cols + j] = rng.vec(1)[0];
                }
            }
        }
    }
    let mut net = Net::new();
    let x = net.input(&[cols as u32]);
    let wt = net.tensor(
        "fc.w",
        &[rows as u32, cols as u32],
        &w,
        Store::Bcsr4(DType::F32, IndexWidth::U16),
    );
    let y = net.node(
        "fc",
        Op::Linear(Linear {
            weight: wt,
            bias: None,
            act: Activation::None,
        }),
        &[x],
    );
    let b = net.finish(&[y]);
    let m = Model::from_vec(&b.bytes).unwrap();
    let tight = SparsePolicy {
        max_density_blocked: 0.3,
        ..SparsePolicy::default()
    };
    let keep = Session::with_policy(&m, 1, 1, SparsePolicy::default()).unwrap();
    let expand = Session::with_policy(&m, 1, 1, tight).unwrap();
    assert_eq!(expand.planned_floats() - keep.planned_floats(), rows * cols);
    let batch2 = Session::with_policy(&m, 2, 1, SparsePolicy::KEEP_CSR).unwrap();
    let keep2 = Session::with_policy(&m, 1, 1, SparsePolicy::KEEP_CSR).unwrap();
    assert!(batch2.planned_floats() >= keep2.planned_floats() + rows * cols);
    for policy in [SparsePolicy::default(), tight] {
        for batch in [1, 2] {
            check_policy(
                &b,
                &m,
                batch,
                1.0,
                &format!("blocked fc {policy:?} batch {batch}"),
                policy,
            );
        }
    }
}

/// Convolutions down every GEMM path (implicit 3×3, 1×1 split by columns, stride 2 through the
/// image's phases), a depthwise one, a pool and a linear layer, f32 weights.
fn every_gemm_path_net(rng: &mut Rng) -> Built {
    let mut net = Net::new();
    let x = net.input(&[8, 40, 40]);
    let s = Store::F32;
    // Implicit GEMM (3×3, stride 1): a tall GEMM, split by rows at batch 1.
    let h = conv(
        &mut net,
        rng,
        x,
        &cc(
            "c3",
            8,
            48,
            [40, 40],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
            true,
            Activation::Relu,
        ),
        s,
    );
    // 1×1 to few channels over many pixels: split by columns.
    let h = conv(
        &mut net,
        rng,
        h,
        &cc(
            "pw",
            48,
            8,
            [40, 40],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
            1,
            true,
            Activation::None,
        ),
        s,
    );
    // Stride 2 through the image's phases, and a depthwise convolution.
    let h = conv(
        &mut net,
        rng,
        h,
        &cc(
            "s2",
            8,
            24,
            [40, 40],
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            true,
            Activation::Relu6,
        ),
        s,
    );
    let h = conv(
        &mut net,
        rng,
        h,
        &cc(
            "dw",
            24,
            24,
            [20, 20],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            24,
            false,
            Activation::Relu,
        ),
        s,
    );
    let h = net.node(
        "pool",
        Op::MaxPool2d(MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        }),
        &[h],
    );
    let f = net.node("flatten", Op::Flatten, &[h]);
    let y = linear(&mut net, rng, f, 10, Store::F32, true, Activation::None);
    net.finish(&[y])
}

/// A 1×1 and a 3×3 convolution on a 7×7 map, where the pixel-major GEMM would compute 56–64
/// columns for 49 pixels, with sums deep enough (400, 576) for every instruction set's
/// channels-in-lanes kernel: both run with the output channels in the vector lanes.
fn channels_in_lanes_net(rng: &mut Rng) -> Built {
    let mut net = Net::new();
    let h = net.input(&[400, 7, 7]);
    let s = Store::F32;
    let h = conv(
        &mut net,
        rng,
        h,
        &cc(
            "oc1",
            400,
            64,
            [7, 7],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
            1,
            true,
            Activation::Relu,
        ),
        s,
    );
    let h = conv(
        &mut net,
        rng,
        h,
        &cc(
            "oc3",
            64,
            32,
            [7, 7],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
            true,
            Activation::Relu6,
        ),
        s,
    );
    let f = net.node("flatten", Op::Flatten, &[h]);
    let y = linear(&mut net, rng, f, 10, Store::F32, true, Activation::None);
    net.finish(&[y])
}

/// Every way a dense operation splits across threads (a batch by example, a GEMM by rows or by
/// columns, a channels-in-lanes convolution by channels or by pixels, a pool by planes, a
/// depthwise convolution by channels), one share per thread or in steps that threads take over
/// ([`Split`]), computes exactly what one thread computes, and both match the f64 reference.
#[test]
fn issue14_threads_split_dense_work_like_one_thread() {
    let mut rng = Rng::new(14);
    let nets = [
        (every_gemm_path_net(&mut rng), &[1, 2, 5][..]),
        (channels_in_lanes_net(&mut rng), &[1, 4][..]),
    ];
    for (b, batches) in nets {
        let m = Model::from_vec(&b.bytes).unwrap();
        for &batch in batches {
            let mut one = Session::new(&m, batch).unwrap();
            let input = rng.vec(one.input_len(0) * batch);
            let want = one.run(&input).unwrap().to_vec();
            for threads in [2, 3] {
                for split in [Split::Adaptive, Split::Static, Split::Steps] {
                    let opts = SessionOptions {
                        threads,
                        split,
                        ..SessionOptions::default()
                    };
                    let mut s = Session::with_options(&m, batch, opts).unwrap();
                    assert_eq!(
                        s.run(&input).unwrap(),
                        &want[..],
                        "batch {batch}, {threads} threads, {split:?}"
                    );
                }
            }
            // The nets are dense, so one sparse policy covers them; the reference (slow in
            // debug builds under qemu) is checked at the smallest and the largest batch.
            if batch == batches[0] || batch == batches[batches.len() - 1] {
                let what = format!("threads test, batch {batch}");
                check_policy(&b, &m, batch, 1.0, &what, SparsePolicy::default());
            }
        }
    }
}

/// The default session runs the deep 3×3 convolution of `channels_in_lanes_net` as Winograd
/// (none of the shallow ones of `every_gemm_path_net`, and none under a memory limit only the
/// other kernels fit) and agrees with the session that computes every sum directly, at every
/// batch and thread count; the f64 reference of the default session is checked by
/// `issue14_threads_split_dense_work_like_one_thread`.
#[test]
fn issue14_winograd_sessions_match_direct_sessions() {
    let mut rng = Rng::new(16);
    for (wanted, b) in [
        (0, every_gemm_path_net(&mut rng)),
        (1, channels_in_lanes_net(&mut rng)),
    ] {
        let m = Model::from_vec(&b.bytes).unwrap();
        // Batch 1 runs F(2×2, 3×3) on the 7×7 map, batch 4 F(4×4, 3×3) (16 tiles).
        for (batch, threads) in [(1, 1), (4, 2)] {
            let opts = |winograd| SessionOptions {
                threads,
                winograd,
                ..SessionOptions::default()
            };
            let mut direct = Session::with_options(&m, batch, opts(false)).unwrap();
            let mut wino = Session::with_options(&m, batch, opts(true)).unwrap();
            let tile = if batch == 1 {
                "winograd_f2"
            } else {
                "winograd_f4"
            };
            let count = |s: &Session<'_>, k: &str| s.methods().iter().filter(|&&m| m == k).count();
            assert_eq!(count(&wino, tile), wanted, "{:?}", wino.methods());
            let direct_methods = direct.methods();
            assert!(!direct_methods.iter().any(|m| m.starts_with("winograd")));
            let input = rng.vec(direct.input_len(0) * batch);
            let want: Vec<f64> = direct
                .run(&input)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let got = wino.run(&input).unwrap();
            assert_close(got, &want, 1e-4, &format!("winograd, batch {batch}"));
            // Under a memory limit the direct session fits and Winograd's transformed weights
            // and scratch do not, planning takes the other kernels instead of failing.
            if wanted > 0 {
                let tight = SessionOptions {
                    memory_limit: 4 * direct.planned_floats() as u64,
                    ..opts(true)
                };
                let s = Session::with_options(&m, batch, tight).unwrap();
                assert!(!s.methods().iter().any(|m| m.starts_with("winograd")));
            }
        }
    }
}

/// Dense stride-2 convolutions read their patch rows from the padded image's four phases: odd
/// and even sizes, paddings 0 to 2, 3×3, 5×5, 1×1 and 2×2 windows match the f64 reference at
/// batches 1 and 2, and two threads compute what one does.
#[test]
fn issue14_stride2_convolutions_read_the_image_phases() {
    let mut rng = Rng::new(17);
    let layers = [
        cc(
            "a",
            3,
            8,
            [23, 21],
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            true,
            Activation::Relu6,
        ),
        cc(
            "b",
            8,
            6,
            [12, 11],
            [5, 5],
            [2, 2],
            [2, 2],
            [1, 1],
            1,
            false,
            Activation::None,
        ),
        cc(
            "c",
            6,
            5,
            [6, 6],
            [1, 1],
            [2, 2],
            [0, 0],
            [1, 1],
            1,
            true,
            Activation::Relu,
        ),
        cc(
            "d",
            5,
            4,
            [3, 3],
            [2, 2],
            [2, 2],
            [0, 1],
            [1, 1],
            1,
            true,
            Activation::None,
        ),
    ];
    let mut net = Net::new();
    let mut h = net.input(&[3, 23, 21]);
    for l in &layers {
        h = conv(&mut net, &mut rng, h, l, Store::F32);
    }
    let f = net.node("flatten", Op::Flatten, &[h]);
    let b = net.finish(&[f]);
    let m = Model::from_vec(&b.bytes).unwrap();
    for batch in [1, 2] {
        let mut one = Session::new(&m, batch).unwrap();
        assert_eq!(
            one.methods()[..4],
            ["phased_gemm"; 4],
            "{:?}",
            one.methods()
        );
        check_policy(&b, &m, batch, 1.0, "stride 2", SparsePolicy::default());
        let input = rng.vec(one.input_len(0) * batch);
        let want = one.run(&input).unwrap().to_vec();
        let mut two = Session::with_threads(&m, batch, 2).unwrap();
        assert_eq!(
            two.run(&input).unwrap(),
            &want[..],
            "batch {batch}, 2 threads"
        );
    }
}

/// Packing convolution weights at planning (the default) takes memory for the pixel-major GEMM's
/// convolutions and changes no result (bit for bit, or to rounding where it moves layers with
/// sums deeper than 256 to the channels-in-lanes kernel).
#[test]
fn issue14_packing_weights_changes_memory_not_results() {
    let mut rng = Rng::new(15);
    for (nets, b) in [
        every_gemm_path_net(&mut rng),
        channels_in_lanes_net(&mut rng),
    ]
    .into_iter()
    .enumerate()
    {
        let m = Model::from_vec(&b.bytes).unwrap();
        for (batch, threads) in [(1, 1), (3, 2)] {
            let opts = |pack_weights| SessionOptions {
                threads,
                pack_weights,
                winograd: false,
                ..SessionOptions::default()
            };
            let mut plain = Session::with_options(&m, batch, opts(false)).unwrap();
            let mut packed = Session::with_options(&m, batch, opts(true)).unwrap();
            let input = rng.vec(plain.input_len(0) * batch);
            let want = plain.run(&input).unwrap().to_vec();
            let got = packed.run(&input).unwrap();
            if nets == 0 {
                assert_eq!(got, &want[..], "batch {batch}");
            } else {
                // Sums deeper than one GEMM `k` block (256) are added up in another order.
                let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
                assert_close(got, &want, 1e-4, &format!("packed, batch {batch}"));
            }
            // The GEMM convolutions' weights, each at least once more. (The channels-in-lanes
            // convolutions need no GEMM workspace or output grid instead, which may pay for
            // more than their packed weights: only their results are compared.)
            if nets == 0 {
                let weights = 48 * 8 * 9 + 8 * 48 + 24 * 8 * 9;
                assert!(
                    packed.planned_floats() >= plain.planned_floats() + weights,
                    "{} floats packed against {} plain",
                    packed.planned_floats(),
                    plain.planned_floats()
                );
            }
        }
    }
}

/// Convolution pairs whose map between them only the second reads run as one kernel: a depthwise
/// 3×3 layer and a 1×1 projection, a 1×1 expansion and a depthwise layer (column strides 1 and 2,
/// a row stride of 3, paddings 0 to 2; also before a projection); in several bands of rows and
/// blocks of channels, with f16 weights, with and without biases, several activations, batches 1
/// and 2, one and two threads (which split the bands of the tall stride-2 pair, the channels of
/// the others), weights packed or in place. They match the f64 reference and the separate
/// layers, two threads compute what one does, and the maps between take no buffer. A
/// map something else also reads keeps its layers apart, and `Fusion::Large` leaves maps this
/// small alone.
#[test]
fn issue14_convolution_pairs_run_fused_in_bands() {
    let mut rng = Rng::new(18);
    let dw = |name, c, hw, s, p, bias, act| cc(name, c, c, hw, [3, 3], s, p, [1, 1], c, bias, act);
    let pw = |name, c, o, hw, bias, act| {
        cc(name, c, o, hw, [1, 1], [1, 1], [0, 0], [1, 1], 1, bias, act)
    };
    let mut net = Net::new();
    let x = net.input(&[24, 41, 200]);
    let d0 = dw("d0", 24, [41, 200], [1, 1], [1, 1], true, A::Relu6);
    let d0 = conv(&mut net, &mut rng, x, &d0, Store::F32);
    let mut h = conv(
        &mut net,
        &mut rng,
        d0,
        &pw("p0", 24, 6, [41, 200], true, A::None),
        Store::F32,
    );
    let e1 = conv(
        &mut net,
        &mut rng,
        h,
        &pw("e1", 6, 24, [41, 200], true, A::Relu6),
        Store::F32,
    );
    h = e1;
    for (l, store) in [
        (
            dw("d1", 24, [41, 200], [2, 2], [1, 1], true, A::Relu6),
            Store::F32,
        ),
        (pw("e4", 24, 28, [21, 100], true, A::Relu), Store::F16),
        (
            dw("d4", 28, [21, 100], [3, 1], [2, 0], true, A::None),
            Store::F32,
        ),
        (pw("e2", 28, 32, [8, 98], false, A::None), Store::F16),
        (
            dw("d2", 32, [8, 98], [1, 1], [1, 1], true, A::HardSwish),
            Store::F16,
        ),
        (pw("p2", 32, 8, [8, 98], true, A::None), Store::F32),
    ] {
        h = conv(&mut net, &mut rng, h, &l, store);
    }
    // Read by the depthwise layer and by the sum: not fused.
    let e3 = conv(
        &mut net,
        &mut rng,
        h,
        &pw("e3", 8, 24, [8, 98], true, A::Relu6),
        Store::F32,
    );
    let d3 = dw("d3", 24, [8, 98], [1, 1], [1, 1], false, A::Relu);
    let d3 = conv(&mut net, &mut rng, e3, &d3, Store::F32);
    h = net.node("sum", Op::Add(Add { act: A::None }), &[e3, d3]);
    let f = net.node("flatten", Op::Flatten, &[h]);
    let b = net.finish(&[f]);
    let m = Model::from_vec(&b.bytes).unwrap();
    let exp = ["fused_into_next", "expand_depthwise"];
    let proj = ["fused_into_next", "depthwise_project"];
    let opts = |threads, fuse| SessionOptions {
        threads,
        fuse,
        ..SessionOptions::default()
    };
    let large = Session::with_options(&m, 1, opts(1, Fusion::Large)).unwrap();
    assert!(!large.methods().contains(&"fused_into_next"));
    let input = rng.vec(large.input_len(0));
    let want: Vec<f64> = reference(
        &b.header,
        &b.dense,
        &input.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    for batch in [1, 2] {
        let mut one = Session::with_options(&m, batch, opts(1, Fusion::All)).unwrap();
        let methods = one.methods();
        for (pair, want) in [(0, proj), (2, exp), (4, exp), (6, exp)] {
            assert_eq!(methods[pair..pair + 2], want, "{methods:?}");
        }
        assert_eq!(methods[8..11], ["gemm", "gemm", "depthwise"], "{methods:?}");
        // The maps inside fused pairs have no buffer; the others do.
        let mut sep = Session::with_options(&m, batch, opts(1, Fusion::Off)).unwrap();
        assert!(!sep.methods().contains(&"fused_into_next"));
        for (v, held) in [(d0, false), (e1, false), (e3, true)] {
            assert_eq!(one.value(v).is_some(), held, "value {v}");
            assert!(sep.value(v).is_some(), "value {v}");
        }
        let input: Vec<f32> = (0..batch).flat_map(|_| input.iter().copied()).collect();
        let got = one.run(&input).unwrap().to_vec();
        let want: Vec<f64> = (0..batch).flat_map(|_| want.iter().copied()).collect();
        assert_close(&got, &want, 1e-4, &format!("fused, batch {batch}"));
        let separate: Vec<f64> = sep.run(&input).unwrap().iter().map(|&v| v as f64).collect();
        assert_close(
            &got,
            &separate,
            1e-5,
            &format!("fused against separate, batch {batch}"),
        );
        for split in [Split::Adaptive, Split::Steps] {
            let two = SessionOptions {
                split,
                ..opts(2, Fusion::All)
            };
            let mut two = Session::with_options(&m, batch, two).unwrap();
            assert_eq!(two.methods(), methods);
            assert_eq!(
                two.run(&input).unwrap(),
                &got[..],
                "batch {batch}, 2 threads, {split:?}"
            );
        }
        // The 1×1 weights read in place instead of packed.
        let in_place = SessionOptions {
            pack_weights: false,
            ..opts(2, Fusion::All)
        };
        let mut in_place = Session::with_options(&m, batch, in_place).unwrap();
        assert_eq!(in_place.methods(), methods);
        let got = in_place.run(&input).unwrap();
        assert_close(got, &separate, 1e-5, &format!("unpacked, batch {batch}"));
    }
}

/// A 2×2, stride-2 max pooling that alone reads a sparse convolution's output runs inside the
/// convolution's kernel, pooled straight from its padded grid by the thread that computed each
/// channel: with ReLU and a leaky ReLU (applied after the max) and SiLU (before it, since it is
/// not monotone), one and two groups, even and odd maps, batches 1 and 3, one and two threads.
/// It matches the f64 reference and the separate layers, and the unpooled map takes no buffer;
/// a map that is also a graph output is pooled separately, and `Fusion::Off` fuses nothing.
#[test]
fn issue14_sparse_convolution_fuses_its_max_pooling() {
    let mut rng = Rng::new(41);
    let pool = || {
        Op::MaxPool2d(MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        })
    };
    let csr = Store::Csr(DType::F32, IndexWidth::U16);
    let mut net = Net::new();
    let x = net.input(&[8, 41, 36]);
    let p1 = [1, 1];
    let c1 = cc(
        "c1",
        8,
        32,
        [41, 36],
        [3, 3],
        [1, 1],
        p1,
        [1, 1],
        1,
        true,
        A::Relu,
    );
    let c1 = conv(&mut net, &mut rng, x, &c1, csr);
    let h = net.node("pool1", pool(), &[c1]);
    let leaky = A::LeakyRelu { alpha: 0.1 };
    let c2 = cc(
        "c2",
        32,
        24,
        [20, 18],
        [3, 3],
        [1, 1],
        p1,
        [1, 1],
        2,
        false,
        leaky,
    );
    let c2 = conv(&mut net, &mut rng, h, &c2, csr);
    let h = net.node("pool2", pool(), &[c2]);
    let c3 = cc(
        "c3",
        24,
        8,
        [10, 9],
        [3, 3],
        [1, 1],
        p1,
        [1, 1],
        1,
        true,
        A::Silu,
    );
    let c3 = conv(&mut net, &mut rng, h, &c3, csr);
    let h = net.node("pool3", pool(), &[c3]);
    let c4 = cc(
        "c4",
        8,
        16,
        [5, 4],
        [3, 3],
        [1, 1],
        p1,
        [1, 1],
        1,
        true,
        A::Relu,
    );
    let c4 = conv(&mut net, &mut rng, h, &c4, csr);
    let h = net.node("pool4", pool(), &[c4]);
    let f = net.node("flatten", Op::Flatten, &[h]);
    // c4's map is also an output, so its pooling stays a node of its own.
    let b = net.finish(&[f, c4]);
    let m = Model::from_vec(&b.bytes).unwrap();
    let opts = |threads, fuse| SessionOptions {
        threads,
        fuse,
        policy: SparsePolicy::KEEP_CSR,
        ..SessionOptions::default()
    };
    let fused = ["implicit_spmm_maxpool", "fused_into_prev"];
    let input = rng.vec(8 * 41 * 36);
    let want = reference(
        &b.header,
        &b.dense,
        &input.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    for batch in [1, 3] {
        let mut sep = Session::with_options(&m, batch, opts(1, Fusion::Off)).unwrap();
        assert_eq!(sep.methods()[..2], ["implicit_spmm", ""]);
        let input: Vec<f32> = (0..batch).flat_map(|_| input.iter().copied()).collect();
        let separate: Vec<f64> = sep.run(&input).unwrap().iter().map(|&v| v as f64).collect();
        for threads in [1, 2] {
            let mut s = Session::with_options(&m, batch, opts(threads, Fusion::Large)).unwrap();
            let methods = s.methods();
            for at in [0, 2, 4] {
                assert_eq!(methods[at..at + 2], fused, "{methods:?}");
            }
            assert_eq!(methods[6..8], ["implicit_spmm", ""], "{methods:?}");
            let got = s.run(&input).unwrap().to_vec();
            let what = format!("batch {batch}, {threads} threads");
            let want: Vec<f64> = (0..batch).flat_map(|_| want.iter().copied()).collect();
            assert_close(&got, &want, 1e-4, &what);
            assert_close(&got, &separate, 1e-5, &what);
            for (v, held) in [(c1, false), (c2, false), (c3, false), (c4, true)] {
                assert_eq!(s.value(v).is_some(), held, "value {v}, {what}");
            }
        }
    }
}

/// A stride-2 convolution large enough to split its GEMM's columns across threads also splits
/// writing the image's phases across them, by phase rows: with two and three threads (row
/// ranges meeting inside an output row's window), odd and even input sizes, padding 1 and 0,
/// it matches the f64 reference and one thread's result bit for bit.
#[test]
fn issue14_phased_convolution_splits_its_phases_across_threads() {
    let mut rng = Rng::new(44);
    for (hw, p) in [([97, 90], [1, 1]), ([64, 71], [0, 0]), ([40, 200], [1, 0])] {
        let mut net = Net::new();
        let x = net.input(&[3, hw[0], hw[1]]);
        let stem = cc(
            "stem",
            3,
            32,
            hw,
            [3, 3],
            [2, 2],
            p,
            [1, 1],
            1,
            true,
            A::Relu6,
        );
        let h = conv(&mut net, &mut rng, x, &stem, Store::F32);
        let f = net.node("flatten", Op::Flatten, &[h]);
        let b = net.finish(&[f]);
        let m = Model::from_vec(&b.bytes).unwrap();
        let mut one = Session::new(&m, 1).unwrap();
        assert_eq!(one.methods()[0], "phased_gemm");
        let input = rng.vec(one.input_len(0));
        let want = reference(
            &b.header,
            &b.dense,
            &input.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        let got = one.run(&input).unwrap().to_vec();
        assert_close(&got, &want, 1e-5, &format!("{hw:?}, 1 thread"));
        for threads in [2, 3] {
            let mut s = Session::with_threads(&m, 1, threads).unwrap();
            assert_eq!(
                s.run(&input).unwrap(),
                &got[..],
                "{hw:?}, {threads} threads"
            );
        }
    }
}
