//! Loader tests: write→read round trips, robustness against corrupted files (arbitrary bytes,
//! mutated files, targeted corruptions with their typed errors), alignment, zero copy, and the
//! committed golden file.

mod common;

use common::{
    assert_close, cheap_to_run, load_err, reencode, reference, Built, Net, Raw, Rng, Store, STORES,
};
use half::f16;
use nap_runtime::format::*;
use nap_runtime::model::TensorView;
use nap_runtime::{AlignedBytes, Error, LoadOptions, Model, Session};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Random models.

#[derive(Clone, Debug)]
struct ConvSpec {
    out_c: u32,
    k: u32,
    stride: u32,
    pad: u32,
    store: usize,
    bias: bool,
}

#[derive(Clone, Debug)]
struct LinSpec {
    out: u32,
    store: usize,
    bias: bool,
}

#[derive(Clone, Debug)]
struct Spec {
    c: u32,
    h: u32,
    w: u32,
    convs: Vec<ConvSpec>,
    linears: Vec<LinSpec>,
    seed: u64,
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    let conv = (
        1u32..5,
        1u32..4,
        1u32..3,
        0u32..2,
        0usize..STORES.len(),
        any::<bool>(),
    )
        .prop_map(|(out_c, k, stride, pad, store, bias)| ConvSpec {
            out_c,
            k,
            stride,
            pad,
            store,
            bias,
        });
    let lin = (1u32..9, 0usize..STORES.len(), any::<bool>())
        .prop_map(|(out, store, bias)| LinSpec { out, store, bias });
    (
        1u32..4,
        3u32..7,
        3u32..7,
        prop::collection::vec(conv, 0..3),
        prop::collection::vec(lin, 1..3),
        any::<u64>(),
    )
        .prop_map(|(c, h, w, convs, linears, seed)| Spec {
            c,
            h,
            w,
            convs,
            linears,
            seed,
        })
}

/// Conv layers (skipped where the window does not fit) → Flatten → Linear layers.
fn build(spec: &Spec) -> Built {
    let mut rng = Rng::new(spec.seed);
    let mut net = Net::new();
    let mut x = net.input(&[spec.c, spec.h, spec.w]);
    for (i, cs) in spec.convs.iter().enumerate() {
        let s = net.shape(x).to_vec();
        if s[1] + 2 * cs.pad < cs.k || s[2] + 2 * cs.pad < cs.k {
            continue;
        }
        let shape = [cs.out_c, s[0], cs.k, cs.k];
        let n = shape.iter().product::<u32>() as usize;
        let weight = net.tensor(
            &format!("conv{i}.w"),
            &shape,
            &rng.sparse_vec(n, 0.5),
            STORES[cs.store],
        );
        let bias = cs.bias.then(|| {
            net.tensor(
                &format!("conv{i}.b"),
                &[cs.out_c],
                &rng.vec(cs.out_c as usize),
                Store::F32,
            )
        });
        let op = Op::Conv2d(Conv2d {
            weight,
            bias,
            stride: [cs.stride; 2],
            padding: [cs.pad; 2],
            dilation: [1, 1],
            groups: 1,
            act: Activation::Relu,
        });
        x = net.node(&format!("conv{i}"), op, &[x]);
    }
    x = net.node("flatten", Op::Flatten, &[x]);
    for (i, ls) in spec.linears.iter().enumerate() {
        let inp = net.shape(x)[0];
        let n = (ls.out * inp) as usize;
        let weight = net.tensor(
            &format!("fc{i}.w"),
            &[ls.out, inp],
            &rng.sparse_vec(n, 0.6),
            STORES[ls.store],
        );
        let bias = ls.bias.then(|| {
            net.tensor(
                &format!("fc{i}.b"),
                &[ls.out],
                &rng.vec(ls.out as usize),
                Store::F16,
            )
        });
        let op = Op::Linear(Linear {
            weight,
            bias,
            act: Activation::None,
        });
        x = net.node(&format!("fc{i}"), op, &[x]);
    }
    net.finish(&[x])
}

/// Checks header, preamble and every tensor of `m` against what was written.
fn check_round_trip(m: &Model<'_>, b: &Built) {
    assert_eq!(m.header(), &b.header);
    let p = m.preamble();
    assert_eq!(
        (p.major, p.minor, p.header_off, p.flags),
        (MAJOR, MINOR, 64, 0)
    );
    assert_eq!(p.data_off % BLOB_ALIGN as u64, 0);
    assert_eq!(p.data_off + p.data_len, b.bytes.len() as u64);
    for (id, raw) in b.raw.iter().enumerate() {
        let id = id as TensorId;
        let view = m.tensor(id);
        let got = match view {
            TensorView::Dense(e) => Raw::Dense { bits: elem_bits(e) },
            TensorView::Csr(c) => Raw::Csr {
                row_ptr: c.row_ptr().to_vec(),
                col_idx: (0..c.nnz()).map(|k| c.col_idx().get(k) as u32).collect(),
                bits: elem_bits(c.values()),
            },
            TensorView::BlockCsr(b) => Raw::Csr {
                row_ptr: b.row_ptr().to_vec(),
                col_idx: (0..b.blocks()).map(|k| b.col_idx().get(k) as u32).collect(),
                bits: elem_bits(b.values()),
            },
        };
        assert_eq!(&got, raw, "tensor {id} storage");
        let dense: Vec<f64> = view.to_dense_f32().iter().map(|&v| v as f64).collect();
        assert_eq!(dense, b.dense[id as usize], "tensor {id} dense values");
    }
}

fn elem_bits(e: nap_runtime::model::Elems<'_>) -> Vec<u32> {
    use nap_runtime::model::Elems;
    match e {
        Elems::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        Elems::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
    }
}

/// Byte ranges a checksum covers: preamble, header and every blob.
fn covered(b: &Built) -> Vec<(usize, usize)> {
    let p = nap_runtime::model::parse_preamble(&b.bytes).unwrap();
    let mut r = vec![(0, 64), (64, 64 + p.header_len as usize)];
    let d = p.data_off as usize;
    for t in &b.header.tensors {
        let blobs = match &t.layout {
            Layout::Dense { values } => vec![*values],
            Layout::Csr {
                row_ptr,
                col_idx,
                values,
                ..
            }
            | Layout::BlockCsr {
                row_ptr,
                col_idx,
                values,
                ..
            } => vec![*row_ptr, *col_idx, *values],
        };
        for bl in blobs {
            r.push((d + bl.offset as usize, d + (bl.offset + bl.len) as usize));
        }
    }
    r
}

/// Loads with checksums on and off; where the model loads and is small, also plans and runs it.
/// Nothing here may panic.
fn load_and_run_both(bytes: &[u8]) {
    let a = AlignedBytes::copy_from(bytes);
    for verify_blobs in [true, false] {
        if let Ok(m) = Model::from_bytes_with(
            a.as_bytes(),
            LoadOptions {
                verify_blobs,
                ..LoadOptions::default()
            },
        ) {
            if cheap_to_run(&m) {
                if let Ok(mut s) = Session::new(&m, 2) {
                    let zeros = vec![0f32; s.input_len(0) * 2];
                    let _ = s.run(&zeros);
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
}

fn arb_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| ByteEdit::Set(i, v)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| ByteEdit::Insert(i, v)),
        (any::<prop::sample::Index>(), 1usize..80).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        any::<prop::sample::Index>().prop_map(ByteEdit::Truncate),
    ]
}

fn apply_edit(bytes: &mut Vec<u8>, e: &ByteEdit) {
    if bytes.is_empty() {
        return;
    }
    match e {
        ByteEdit::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << b;
        }
        ByteEdit::Set(i, v) => {
            let i = i.index(bytes.len());
            bytes[i] = *v;
        }
        ByteEdit::Insert(i, v) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *v);
        }
        ByteEdit::Delete(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        ByteEdit::Truncate(i) => {
            let i = i.index(bytes.len());
            bytes.truncate(i);
        }
    }
}

/// A u64 near an interesting boundary.
fn wild_u64(rng: &mut Rng, v: u64) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => v.wrapping_add(1),
        2 => v.wrapping_sub(1),
        3 => u64::MAX,
        4 => u64::MAX - 63,
        5 => v.wrapping_add(64),
        6 => 1 << 32,
        7 => u32::MAX as u64,
        8 => v.wrapping_mul(2),
        _ => rng.next_u64() >> rng.below(64),
    }
}

fn wild_u32(rng: &mut Rng, v: u32) -> u32 {
    match rng.below(4) {
        0 => 1 << 16,
        1 => (1 << 31) + rng.below(3) as u32,
        _ => wild_u64(rng, v as u64) as u32,
    }
}

fn blob_mut(l: &mut Layout, which: usize) -> &mut BlobRef {
    match l {
        Layout::Dense { values } => values,
        Layout::Csr {
            row_ptr,
            col_idx,
            values,
            ..
        }
        | Layout::BlockCsr {
            row_ptr,
            col_idx,
            values,
            ..
        } => match which % 3 {
            0 => row_ptr,
            1 => col_idx,
            _ => values,
        },
    }
}

/// Attribute `k` (axis `j`) of `op`, if it has integer attributes.
fn attr_mut(op: &mut Op, k: usize, j: usize) -> Option<&mut u32> {
    Some(match op {
        Op::Conv2d(Conv2d {
            stride,
            padding,
            dilation,
            groups,
            weight,
            ..
        }) => match k % 5 {
            0 => &mut stride[j],
            1 => &mut padding[j],
            2 => &mut dilation[j],
            3 => groups,
            _ => weight,
        },
        Op::MaxPool2d(MaxPool2d {
            kernel,
            stride,
            padding,
        })
        | Op::AvgPool2d(AvgPool2d {
            kernel,
            stride,
            padding,
            ..
        }) => match k % 3 {
            0 => &mut kernel[j],
            1 => &mut stride[j],
            _ => &mut padding[j],
        },
        Op::Linear(Linear { weight, .. }) => weight,
        Op::BatchNorm(BatchNorm { gamma, var, .. }) => {
            if k.is_multiple_of(2) {
                gamma
            } else {
                var
            }
        }
        Op::Reshape(Reshape { shape }) if !shape.is_empty() => {
            let i = k % shape.len();
            &mut shape[i]
        }
        _ => return None,
    })
}

/// One random structural change to a decoded header.
fn mutate_header(h: &mut Header, rng: &mut Rng) {
    let nt = h.tensors.len();
    let nv = h.graph.values.len();
    let nn = h.graph.nodes.len();
    match rng.below(12) {
        0 if nt > 0 => {
            let t = &mut h.tensors[rng.below(nt)];
            if !t.shape.is_empty() {
                let i = rng.below(t.shape.len());
                t.shape[i] = wild_u32(rng, t.shape[i]);
            } else {
                t.shape.push(rng.below(4) as u32);
            }
        }
        1 if nt > 0 => {
            let t = &mut h.tensors[rng.below(nt)];
            let which = rng.below(3);
            let b = blob_mut(&mut t.layout, which);
            if rng.below(2) == 0 {
                b.offset = wild_u64(rng, b.offset);
            } else {
                b.len = wild_u64(rng, b.len);
            }
        }
        2 if nt > 1 => {
            // Point one blob at another one's bytes (overlap).
            let (a, c) = (rng.below(nt), rng.below(nt));
            let which = rng.below(3);
            let src = *blob_mut(&mut h.tensors[a].layout, which);
            let dst = blob_mut(&mut h.tensors[c].layout, rng.below(3));
            dst.offset = src.offset;
            if rng.below(2) == 0 {
                dst.len = src.len;
            }
        }
        3 if nt > 0 => {
            let t = &mut h.tensors[rng.below(nt)];
            t.dtype = if t.dtype == DType::F32 {
                DType::F16
            } else {
                DType::F32
            };
        }
        4 if nt > 0 => {
            let t = &mut h.tensors[rng.below(nt)];
            match &mut t.layout {
                Layout::Csr { nnz, index, .. } => {
                    if rng.below(2) == 0 {
                        *nnz = wild_u64(rng, *nnz);
                    } else {
                        *index = if *index == IndexWidth::U16 {
                            IndexWidth::U32
                        } else {
                            IndexWidth::U16
                        };
                    }
                }
                Layout::BlockCsr {
                    block, nnzb, index, ..
                } => match rng.below(3) {
                    0 => *nnzb = wild_u64(rng, *nnzb),
                    1 => *block = wild_u64(rng, *block as u64) as u32,
                    _ => {
                        *index = if *index == IndexWidth::U16 {
                            IndexWidth::U32
                        } else {
                            IndexWidth::U16
                        }
                    }
                },
                Layout::Dense { values } => {
                    // Reinterpret the dense blob as a CSR with made-up arrays.
                    t.layout = Layout::Csr {
                        nnz: rng.below(8) as u64,
                        index: IndexWidth::U16,
                        row_ptr: *values,
                        col_idx: *values,
                        values: *values,
                    };
                }
            }
        }
        5 if nv > 0 => {
            let v = &mut h.graph.values[rng.below(nv)];
            if !v.shape.is_empty() && rng.below(3) > 0 {
                let i = rng.below(v.shape.len());
                v.shape[i] = wild_u32(rng, v.shape[i]);
            } else if rng.below(2) == 0 {
                v.shape.pop();
            } else {
                v.shape.push(rng.below(3) as u32);
            }
        }
        6 if nn > 0 => {
            let n = &mut h.graph.nodes[rng.below(nn)];
            match rng.below(3) {
                0 if !n.inputs.is_empty() => {
                    let i = rng.below(n.inputs.len());
                    n.inputs[i] = rng.below(nv + 2) as u32;
                }
                1 => n.inputs.push(rng.below(nv + 1) as u32),
                _ => n.output = rng.below(nv + 2) as u32,
            }
        }
        7 if nn > 0 => {
            let n = &mut h.graph.nodes[rng.below(nn)];
            let (k, j) = (rng.below(15), rng.below(2));
            if let Some(p) = attr_mut(&mut n.op, k, j) {
                *p = wild_u32(rng, *p);
            }
        }
        8 if nn > 1 => {
            let (a, b) = (rng.below(nn), rng.below(nn));
            h.graph.nodes.swap(a, b);
        }
        9 => {
            let ops = [
                Op::Act(Activation::Gelu),
                Op::Softmax,
                Op::GlobalAvgPool,
                Op::Flatten,
                Op::Concat,
                Op::Add(Add {
                    act: Activation::Relu,
                }),
                Op::MaxPool2d(MaxPool2d {
                    kernel: [2, 2],
                    stride: [1, 1],
                    padding: [1, 1],
                }),
                Op::Reshape(Reshape {
                    shape: vec![rng.below(5) as u32, 1],
                }),
            ];
            if nn > 0 {
                let i = rng.below(nn);
                h.graph.nodes[i].op = ops[rng.below(ops.len())].clone();
            }
        }
        10 => {
            if rng.below(2) == 0 {
                h.graph.outputs = vec![rng.below(nv + 1) as u32];
            } else {
                h.graph.inputs = vec![rng.below(nv + 1) as u32];
            }
        }
        _ => {
            // Bias stored as CSR, or a parameter tensor dropped.
            if nt > 0 && rng.below(2) == 0 {
                h.tensors.pop();
            } else if nn > 0 {
                let i = rng.below(nn);
                h.graph.nodes.remove(i);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// (a) What `FileBuilder` writes, `Model::from_bytes` gives back exactly, whether checksums are
    /// verified or not, and the owned-copy loader agrees.
    #[test]
    fn round_trip(spec in arb_spec()) {
        let b = build(&spec);
        let a = AlignedBytes::copy_from(&b.bytes);
        for verify_blobs in [true, false] {
            let m = Model::from_bytes_with(a.as_bytes(), LoadOptions {
        verify_blobs,
        ..LoadOptions::default()
    }).unwrap();
            check_round_trip(&m, &b);
        }
        let m = Model::from_vec(&b.bytes).unwrap();
        check_round_trip(&m, &b);
    }

    /// (b) Arbitrary bytes never panic the loader.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        load_and_run_both(&bytes);
    }

    /// (b) Arbitrary bytes behind a valid preamble magic/version never panic either.
    #[test]
    fn arbitrary_bytes_after_magic_never_panic(tail in prop::collection::vec(any::<u8>(), 0..600), major in 0u16..3) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&major.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&ENDIAN_TAG.to_le_bytes());
        bytes.extend_from_slice(&tail);
        load_and_run_both(&bytes);
    }

    /// (b) Byte-level edits of valid files never panic.
    #[test]
    fn edited_files_never_panic(spec in arb_spec(), edits in prop::collection::vec(arb_edit(), 1..5)) {
        let mut bytes = build(&spec).bytes;
        for e in &edits {
            apply_edit(&mut bytes, e);
        }
        load_and_run_both(&bytes);
    }

    /// (b) A single bit flip is detected when checksums are on, wherever a checksum covers the
    /// byte; flips in padding are harmless.
    #[test]
    fn single_flip_is_detected(spec in arb_spec(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let b = build(&spec);
        let mut bytes = b.bytes.clone();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let is_covered = covered(&b).iter().any(|&(s, e)| (s..e).contains(&i));
        let err = load_err(&bytes, true);
        if is_covered {
            prop_assert!(err.is_some(), "flip at {} of {} not detected", i, bytes.len());
        } else {
            prop_assert_eq!(err, None, "flip at {} (padding) rejected", i);
        }
        load_and_run_both(&bytes);
    }

    /// (b) Structural changes to the header (re-encoded, so every checksum is right) never panic
    /// the loader or, for models that load, the planner and executor.
    #[test]
    fn mutated_headers_never_panic(spec in arb_spec(), seed in any::<u64>(), n in 1usize..4) {
        let b = build(&spec);
        let mut h = b.header.clone();
        let mut rng = Rng::new(seed);
        for _ in 0..n {
            mutate_header(&mut h, &mut rng);
        }
        load_and_run_both(&reencode(&h, &b.data()));
    }

    /// (b) Random data bytes with recomputed blob checksums: with or without verification, only
    /// structural validation stands between them and the executor.
    #[test]
    fn scrambled_blobs_never_panic(spec in arb_spec(), seed in any::<u64>()) {
        let b = build(&spec);
        let mut h = b.header.clone();
        let mut data = b.data();
        let mut rng = Rng::new(seed);
        for t in 0..h.tensors.len() {
            for which in 0..3 {
                let bl = blob_mut(&mut h.tensors[t].layout, which);
                if rng.below(3) == 0 {
                    let (s, e) = (bl.offset as usize, (bl.offset + bl.len) as usize);
                    for byte in &mut data[s..e] {
                        if rng.below(4) == 0 {
                            *byte = rng.next_u64() as u8;
                        }
                    }
                    bl.crc = crc32c(&data[s..e]);
                }
            }
        }
        load_and_run_both(&reencode(&h, &data));
    }
}

// ---------------------------------------------------------------------------------------------
// Targeted corruptions, each with its typed error.

/// input [2,5,5] → conv 3×3 (dense f32) → BN (gamma f16) → relu → maxpool 2 → flatten →
/// fc1 (CSR f32, u16) → relu → fc2 (CSR f16, u32) → softmax.
///
/// Tensors: 0 conv.w, 1 conv.b, 2 bn.gamma, 3 bn.beta, 4 bn.mean, 5 bn.var, 6 fc1.w, 7 fc1.b,
/// 8 fc2.w, 9 wide (CSR u32 [1, 70000], unreferenced). Values: 0 input … 8 softmax.
fn base_model() -> Built {
    let mut rng = Rng::new(7);
    let mut net = Net::new();
    let x = net.input(&[2, 5, 5]);
    let w = net.tensor("conv.w", &[3, 2, 3, 3], &rng.vec(54), Store::F32);
    let b = net.tensor("conv.b", &[3], &rng.vec(3), Store::F32);
    let x = net.node(
        "conv",
        Op::Conv2d(Conv2d {
            weight: w,
            bias: Some(b),
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
            act: Activation::None,
        }),
        &[x],
    );
    let gamma = net.tensor("bn.gamma", &[3], &[1.0, 0.5, 2.0], Store::F16);
    let beta = net.tensor("bn.beta", &[3], &rng.vec(3), Store::F32);
    let mean = net.tensor("bn.mean", &[3], &rng.vec(3), Store::F32);
    let var = net.tensor("bn.var", &[3], &[0.5, 1.0, 2.0], Store::F32);
    let x = net.node(
        "bn",
        Op::BatchNorm(BatchNorm {
            gamma,
            beta,
            mean,
            var,
            eps: 1e-5,
        }),
        &[x],
    );
    let x = net.node("relu", Op::Act(Activation::Relu), &[x]);
    let x = net.node(
        "pool",
        Op::MaxPool2d(MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        }),
        &[x],
    );
    let x = net.node("flatten", Op::Flatten, &[x]);
    let w1 = net.tensor(
        "fc1.w",
        &[6, 12],
        &rng.sparse_vec(72, 0.5),
        Store::Csr(DType::F32, IndexWidth::U16),
    );
    let b1 = net.tensor("fc1.b", &[6], &rng.vec(6), Store::F32);
    let x = net.node(
        "fc1",
        Op::Linear(Linear {
            weight: w1,
            bias: Some(b1),
            act: Activation::Relu,
        }),
        &[x],
    );
    let w2 = net.tensor(
        "fc2.w",
        &[4, 6],
        &rng.sparse_vec(24, 0.3),
        Store::Csr(DType::F16, IndexWidth::U32),
    );
    let x = net.node(
        "fc2",
        Op::Linear(Linear {
            weight: w2,
            bias: None,
            act: Activation::None,
        }),
        &[x],
    );
    let x = net.node("softmax", Op::Softmax, &[x]);
    let mut wide = vec![0f32; 70000];
    wide[3] = 1.0;
    wide[69999] = -2.0;
    net.tensor(
        "wide",
        &[1, 70000],
        &wide,
        Store::Csr(DType::F32, IndexWidth::U32),
    );
    net.finish(&[x])
}

#[test]
fn base_model_loads_and_matches_reference() {
    let b = base_model();
    let a = AlignedBytes::copy_from(&b.bytes);
    let m = Model::from_bytes(a.as_bytes()).unwrap();
    check_round_trip(&m, &b);
    let mut rng = Rng::new(99);
    let input = rng.vec(50);
    let mut s = Session::new(&m, 1).unwrap();
    let got = s.run(&input).unwrap().to_vec();
    let want = reference(
        &b.header,
        &b.dense,
        &input.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    assert_close(&got, &want, 1e-4, "base model");
}

/// `(row_ptr, col_idx, values)` blobs of CSR tensor `t`.
fn csr_blobs(h: &Header, t: usize) -> (BlobRef, BlobRef, BlobRef) {
    match &h.tensors[t].layout {
        Layout::Csr {
            row_ptr,
            col_idx,
            values,
            ..
        } => (*row_ptr, *col_idx, *values),
        _ => panic!("tensor {t} is not CSR"),
    }
}

/// Overwrites element `i` (of width `w` bytes) of blob `which` of tensor `t` and fixes its CRC,
/// so that only structural validation can catch the change.
fn patch(h: &mut Header, data: &mut [u8], t: usize, which: usize, w: usize, i: usize, v: u32) {
    let bl = blob_mut(&mut h.tensors[t].layout, which);
    let at = bl.offset as usize + i * w;
    data[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
    bl.crc = crc32c(&data[bl.offset as usize..(bl.offset + bl.len) as usize]);
}

type HeaderCase = (
    &'static str,
    fn(&mut Header, &mut Vec<u8>),
    fn(&Error) -> bool,
);

#[test]
fn header_corruptions_give_typed_errors() {
    let cases: Vec<HeaderCase> = vec![
        (
            "dense blob length disagrees with shape",
            |h, _| blob_mut(&mut h.tensors[0].layout, 0).len += 4,
            |e| matches!(e, Error::BadTensor { tensor, .. } if tensor == "conv.w"),
        ),
        (
            "shape changed under a dense blob",
            |h, _| h.tensors[1].shape = vec![4],
            |e| matches!(e, Error::BadTensor { tensor, .. } if tensor == "conv.b"),
        ),
        (
            "dtype changed under a dense blob",
            |h, _| h.tensors[0].dtype = DType::F16,
            |e| matches!(e, Error::BadTensor { tensor, .. } if tensor == "conv.w"),
        ),
        (
            "blob offset not 64-aligned",
            |h, _| blob_mut(&mut h.tensors[1].layout, 0).offset += 4,
            |e| {
                *e == Error::BadBlob {
                    tensor: "conv.b".into(),
                    reason: "offset is not 64-byte aligned",
                }
            },
        ),
        (
            "blob past the data section",
            |h, data| {
                blob_mut(&mut h.tensors[3].layout, 0).offset =
                    (data.len() as u64).next_multiple_of(64)
            },
            |e| {
                *e == Error::BadBlob {
                    tensor: "bn.beta".into(),
                    reason: "extends past the data section",
                }
            },
        ),
        (
            "blob end overflows u64",
            // conv.w holds 216 bytes, so offset + len wraps.
            |h, _| blob_mut(&mut h.tensors[0].layout, 0).offset = u64::MAX - 63,
            |e| *e == Error::Overflow("blob end"),
        ),
        (
            "two blobs share bytes",
            |h, _| {
                let beta = *blob_mut(&mut h.tensors[3].layout, 0);
                *blob_mut(&mut h.tensors[4].layout, 0) = beta;
            },
            |e| {
                matches!(e, Error::BadBlob { reason, .. } if *reason == "overlaps another blob")
                    || matches!(e, Error::ChecksumMismatch { .. })
            },
        ),
        (
            "blob overlaps a CSR array",
            |h, _| {
                let (rp, _, _) = csr_blobs(h, 6);
                let b = blob_mut(&mut h.tensors[7].layout, 0);
                b.offset = rp.offset;
                b.crc = 0;
            },
            // The CRC is wrong on purpose: with verification off only the overlap rule remains.
            |e| {
                matches!(e, Error::BadBlob { reason, .. } if *reason == "overlaps another blob")
                    || matches!(e, Error::ChecksumMismatch { what } if what == "tensor \"fc1.b\"")
            },
        ),
        (
            "shape product overflows",
            |h, _| h.tensors[0].shape = vec![u32::MAX, u32::MAX, u32::MAX],
            |e| *e == Error::Overflow("tensor shape"),
        ),
        (
            "CSR row_ptr[0] != 0",
            |h, d| patch(h, d, 6, 0, 4, 0, 1),
            |e| matches!(e, Error::BadCsr { tensor, reason: "row_ptr[0] is not 0" } if tensor == "fc1.w"),
        ),
        (
            "CSR row_ptr[rows] != nnz",
            |h, d| patch(h, d, 6, 0, 4, 6, 0),
            |e| matches!(e, Error::BadCsr { tensor, reason: "row_ptr[rows] is not nnz" } if tensor == "fc1.w"),
        ),
        (
            "CSR row_ptr decreasing",
            // row_ptr = [0, 1000, ..., nnz]: row 0 ends past nnz.
            |h, d| patch(h, d, 6, 0, 4, 1, 1000),
            |e| matches!(e, Error::BadCsr { tensor, reason: "row_ptr is not monotone" } if tensor == "fc1.w"),
        ),
        (
            "CSR row_ptr goes down inside the range",
            |h, d| {
                // A row that starts after entry 0 is made to end at 0 (still <= nnz).
                let rp = csr_row_ptr(h, d, 6);
                let i = (2..rp.len() - 1).find(|&i| rp[i - 1] > 0).unwrap();
                patch(h, d, 6, 0, 4, i, 0);
            },
            |e| matches!(e, Error::BadCsr { tensor, reason: "row_ptr is not monotone" } if tensor == "fc1.w"),
        ),
        (
            "CSR u16 column index out of range",
            |h, d| patch(h, d, 6, 1, 2, 0, 12),
            |e| matches!(e, Error::BadCsr { tensor, reason: "column index out of range" } if tensor == "fc1.w"),
        ),
        (
            "CSR u32 column index far out of range",
            |h, d| patch(h, d, 8, 1, 4, 0, u32::MAX),
            |e| matches!(e, Error::BadCsr { tensor, reason: "column index out of range" } if tensor == "fc2.w"),
        ),
        (
            "CSR column indices repeat within a row",
            |h, d| {
                let rp = csr_row_ptr(h, d, 6);
                let r = (0..rp.len() - 1)
                    .find(|&r| rp[r + 1] - rp[r] >= 2)
                    .expect("a row with 2 nnz");
                let k = rp[r] as usize;
                let first = u16::from_le_bytes(read_at(h, d, 6, 1, 2, k)[..2].try_into().unwrap());
                patch(h, d, 6, 1, 2, k + 1, first as u32);
            },
            |e| {
                matches!(e, Error::BadCsr { tensor, reason: "column indices not increasing within a row" }
                    if tensor == "fc1.w")
            },
        ),
        (
            "CSR u16 indices for more than 65536 columns",
            |h, d| {
                // Re-store tensor 9 (one row, indices 3 and 69999) with u16 indices.
                let (rp, ci, vs) = csr_blobs(h, 9);
                let mut cols = Vec::new();
                for c in [3u16, 69999u32 as u16] {
                    cols.extend_from_slice(&c.to_le_bytes());
                }
                let at = ci.offset as usize;
                d[at..at + 4].copy_from_slice(&cols);
                let new_ci = BlobRef {
                    offset: ci.offset,
                    len: 4,
                    crc: crc32c(&cols),
                };
                h.tensors[9].layout = Layout::Csr {
                    nnz: 2,
                    index: IndexWidth::U16,
                    row_ptr: rp,
                    col_idx: new_ci,
                    values: vs,
                };
            },
            |e| {
                matches!(e, Error::BadCsr { tensor, reason: "u16 indices cannot address this many columns" }
                    if tensor == "wide")
            },
        ),
        (
            "CSR nnz larger than the tensor",
            |h, _| {
                if let Layout::Csr { nnz, .. } = &mut h.tensors[8].layout {
                    *nnz = 25;
                }
            },
            |e| matches!(e, Error::BadCsr { tensor, reason: "more non-zeros than elements" } if tensor == "fc2.w"),
        ),
        (
            "CSR nnz disagrees with its arrays",
            |h, _| {
                if let Layout::Csr { nnz, .. } = &mut h.tensors[8].layout {
                    *nnz -= 1;
                }
            },
            |e| matches!(e, Error::BadTensor { tensor, .. } if tensor == "fc2.w"),
        ),
        (
            "CSR of a scalar",
            |h, _| h.tensors[9].shape = vec![],
            |e| matches!(e, Error::BadTensor { tensor, .. } if tensor == "wide"),
        ),
        (
            "node refers to a missing tensor",
            |h, _| {
                if let Op::Linear(Linear { weight, .. }) = &mut h.graph.nodes[5].op {
                    *weight = 999;
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "fc1"),
        ),
        (
            "node reads a value before it is defined",
            |h, _| h.graph.nodes[1].inputs = vec![5],
            |e| matches!(e, Error::BadGraph { node, .. } if node == "bn"),
        ),
        (
            "node reads a value that does not exist",
            |h, _| h.graph.nodes[1].inputs = vec![77],
            |e| matches!(e, Error::BadGraph { node, .. } if node == "bn"),
        ),
        (
            "node defines a value twice",
            |h, _| h.graph.nodes[2].output = 1,
            |e| matches!(e, Error::BadGraph { node, .. } if node == "relu"),
        ),
        (
            "declared shape disagrees with the op",
            |h, _| h.graph.values[4].shape = vec![3, 3, 3],
            |e| matches!(e, Error::BadGraph { node, .. } if node == "pool"),
        ),
        (
            "graph without inputs",
            |h, _| h.graph.inputs.clear(),
            |e| matches!(e, Error::BadGraph { .. }),
        ),
        (
            "output never computed",
            |h, _| {
                h.graph.nodes.pop();
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "<graph>"),
        ),
        (
            "value too large",
            |h, _| h.graph.values[8].shape = vec![1 << 29],
            |e| matches!(e, Error::BadGraph { .. }),
        ),
        (
            "value shape overflows",
            |h, _| h.graph.values[8].shape = vec![u32::MAX, u32::MAX, u32::MAX],
            |e| *e == Error::Overflow("value shape"),
        ),
        (
            "bias stored as CSR",
            |h, _| {
                if let Op::Linear(Linear { bias, .. }) = &mut h.graph.nodes[5].op {
                    *bias = Some(9);
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "fc1"),
        ),
        (
            "Linear with a conv weight",
            |h, _| {
                if let Op::Linear(Linear { weight, .. }) = &mut h.graph.nodes[5].op {
                    *weight = 0;
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "fc1"),
        ),
        (
            "conv groups do not divide channels",
            |h, _| {
                if let Op::Conv2d(Conv2d { groups, .. }) = &mut h.graph.nodes[0].op {
                    *groups = 0;
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "conv"),
        ),
        (
            "conv stride 0",
            |h, _| {
                if let Op::Conv2d(Conv2d { stride, .. }) = &mut h.graph.nodes[0].op {
                    stride[1] = 0;
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "conv"),
        ),
        (
            "conv window larger than the padded input",
            |h, _| {
                if let Op::Conv2d(Conv2d { dilation, .. }) = &mut h.graph.nodes[0].op {
                    *dilation = [u32::MAX, 1];
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "conv"),
        ),
        (
            "pool padding larger than half the window",
            |h, _| {
                if let Op::MaxPool2d(MaxPool2d { padding, .. }) = &mut h.graph.nodes[3].op {
                    *padding = [2, 0];
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "pool"),
        ),
        (
            "pool padding so large that doubling it overflows u32",
            |h, _| {
                if let Op::MaxPool2d(MaxPool2d { padding, .. }) = &mut h.graph.nodes[3].op {
                    *padding = [1 << 31, 0];
                }
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "pool"),
        ),
        (
            "reshape to another element count",
            |h, _| {
                h.graph.nodes[4].op = Op::Reshape(Reshape { shape: vec![13] });
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "flatten"),
        ),
        (
            // A softmax over the last axis of a map is valid; the Linear after it gets a map.
            "softmax in place of a flatten",
            |h, _| {
                h.graph.nodes[4].op = Op::Softmax;
                h.graph.values[5].shape = vec![3, 2, 2];
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "fc1"),
        ),
        (
            "add with one input",
            |h, _| {
                h.graph.nodes[2].op = Op::Add(Add {
                    act: Activation::None,
                });
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "relu"),
        ),
        (
            "concat with one input",
            |h, _| {
                h.graph.nodes[2].op = Op::Concat;
            },
            |e| matches!(e, Error::BadGraph { node, .. } if node == "relu"),
        ),
    ];
    let b = base_model();
    assert_eq!(load_err(&b.bytes, true), None);
    for (name, mutate, expect) in cases {
        let mut h = b.header.clone();
        let mut data = b.data();
        mutate(&mut h, &mut data);
        let bytes = reencode(&h, &data);
        for verify in [true, false] {
            match load_err(&bytes, verify) {
                None => panic!("{name} (verify {verify}): loaded"),
                Some(e) => assert!(
                    expect(&e),
                    "{name} (verify {verify}): unexpected error {e:?}"
                ),
            }
        }
    }
}

fn read_at(h: &Header, data: &[u8], t: usize, which: usize, w: usize, i: usize) -> Vec<u8> {
    let mut l = h.tensors[t].layout.clone();
    let bl = blob_mut(&mut l, which);
    let at = bl.offset as usize + i * w;
    data[at..at + w].to_vec()
}

fn csr_row_ptr(h: &Header, data: &[u8], t: usize) -> Vec<u32> {
    let (rp, _, _) = csr_blobs(h, t);
    data[rp.offset as usize..(rp.offset + rp.len) as usize]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Preamble + raw header bytes + data, with the preamble fields adjustable after the fact.
fn assemble(hdr: &[u8], data: &[u8], tweak: impl FnOnce(&mut Preamble)) -> Vec<u8> {
    let data_off = (64 + hdr.len()).next_multiple_of(64);
    let mut p = Preamble {
        major: MAJOR,
        minor: MINOR,
        header_off: 64,
        header_len: hdr.len() as u64,
        data_off: data_off as u64,
        data_len: data.len() as u64,
        flags: 0,
        header_crc: crc32c(hdr),
    };
    tweak(&mut p);
    let mut out = p.to_bytes().to_vec();
    out.extend_from_slice(hdr);
    out.resize(data_off, 0);
    out.extend_from_slice(data);
    out
}

type FileCase = (
    &'static str,
    Box<dyn Fn(&[u8], &[u8]) -> Vec<u8>>,
    Option<Error>,
);

#[test]
fn preamble_and_header_corruptions_give_typed_errors() {
    let b = base_model();
    let hdr = postcard::to_allocvec(&b.header).unwrap();
    let data = b.data();
    let len = b.bytes.len() as u64;
    let hl = hdr.len() as u64;
    let data_off = (64 + hl).next_multiple_of(64);
    let cases: Vec<FileCase> = vec![
        ("unchanged", Box::new(|h, d| assemble(h, d, |_| {})), None),
        (
            "empty file",
            Box::new(|_, _| Vec::new()),
            Some(Error::Truncated {
                what: "preamble",
                need: 64,
                have: 0,
            }),
        ),
        (
            "63 bytes",
            Box::new(|h, d| assemble(h, d, |_| {})[..63].to_vec()),
            Some(Error::Truncated {
                what: "preamble",
                need: 64,
                have: 63,
            }),
        ),
        (
            "bad magic",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f[1] = b'M';
                f
            }),
            Some(Error::BadMagic),
        ),
        (
            "text-mode CRLF→LF damage",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f.remove(4);
                f
            }),
            Some(Error::BadMagic),
        ),
        (
            "big-endian writer",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f[12..16].copy_from_slice(&ENDIAN_TAG.to_be_bytes());
                f
            }),
            Some(Error::BadEndianTag(0x0403_0201)),
        ),
        (
            "major 2",
            Box::new(|h, d| assemble(h, d, |p| p.major = 2)),
            Some(Error::UnsupportedVersion {
                major: 2,
                minor: MINOR,
            }),
        ),
        (
            "major 0",
            Box::new(|h, d| assemble(h, d, |p| (p.major, p.minor) = (0, 9))),
            Some(Error::UnsupportedVersion { major: 0, minor: 9 }),
        ),
        (
            "newer minor is accepted",
            Box::new(|h, d| assemble(h, d, |p| p.minor = 7)),
            None,
        ),
        (
            "unknown flags are ignored",
            Box::new(|h, d| assemble(h, d, |p| p.flags = 0xFFFF_0000)),
            None,
        ),
        (
            "preamble CRC wrong",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f[48] ^= 1;
                f
            }),
            Some(Error::ChecksumMismatch {
                what: "preamble".into(),
            }),
        ),
        (
            "reserved preamble bytes changed",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f[57] = 1;
                f
            }),
            Some(Error::ChecksumMismatch {
                what: "preamble".into(),
            }),
        ),
        (
            "header offset not 64",
            Box::new(|h, d| assemble(h, d, |p| p.header_off = 128)),
            Some(Error::BadPreamble("header offset is not 64")),
        ),
        (
            "header length over the cap",
            Box::new(|h, d| assemble(h, d, |p| p.header_len = MAX_HEADER_LEN + 1)),
            Some(Error::HeaderTooLarge(MAX_HEADER_LEN + 1)),
        ),
        (
            "header length u64::MAX",
            Box::new(|h, d| assemble(h, d, |p| p.header_len = u64::MAX)),
            Some(Error::HeaderTooLarge(u64::MAX)),
        ),
        (
            "data section overlaps the header",
            Box::new(move |h, d| assemble(h, d, |p| p.data_off = data_off - 64)),
            Some(Error::BadPreamble("data section overlaps the header")),
        ),
        (
            "data offset misaligned",
            Box::new(move |h, d| assemble(h, d, |p| p.data_off = data_off + 8)),
            Some(Error::BadPreamble("data offset is not 64-byte aligned")),
        ),
        (
            "data length overflows",
            Box::new(|h, d| assemble(h, d, |p| p.data_len = u64::MAX)),
            Some(Error::Overflow("data section")),
        ),
        (
            "data length one too many",
            Box::new(|h, d| assemble(h, d, |p| p.data_len += 1)),
            Some(Error::Truncated {
                what: "data section",
                need: len + 1,
                have: len,
            }),
        ),
        (
            "file truncated by one byte",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f.pop();
                f
            }),
            Some(Error::Truncated {
                what: "data section",
                need: len,
                have: len - 1,
            }),
        ),
        (
            "trailing garbage after the data section",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f.push(0);
                f
            }),
            Some(Error::Truncated {
                what: "data section",
                need: len,
                have: len + 1,
            }),
        ),
        (
            "header byte flipped",
            Box::new(|h, d| {
                let mut f = assemble(h, d, |_| {});
                f[70] ^= 0x20;
                f
            }),
            Some(Error::ChecksumMismatch {
                what: "header".into(),
            }),
        ),
        (
            "header CRC field wrong",
            Box::new(|h, d| assemble(h, d, |p| p.header_crc ^= 1)),
            Some(Error::ChecksumMismatch {
                what: "header".into(),
            }),
        ),
        (
            "empty header",
            Box::new(|_, d| assemble(&[], d, |_| {})),
            Some(Error::HeaderDecode),
        ),
        (
            "header is garbage",
            Box::new(|_, d| assemble(&[0xFF; 40], d, |_| {})),
            Some(Error::HeaderDecode),
        ),
        (
            "header cut short",
            Box::new(|h, d| assemble(&h[..h.len() - 5], d, |_| {})),
            Some(Error::HeaderDecode),
        ),
        (
            "header with trailing bytes",
            Box::new(|h, d| {
                let mut h2 = h.to_vec();
                h2.extend_from_slice(&[0, 0, 0]);
                assemble(&h2, d, |_| {})
            }),
            Some(Error::HeaderTrailingBytes(3)),
        ),
        (
            "data section cut (blobs then extend past it)",
            Box::new(|h, d| assemble(h, &d[..d.len() - 64], |_| {})),
            None, // checked below: a BadBlob for the last blob
        ),
    ];
    for (name, make, want) in &cases {
        let bytes = make(&hdr, &data);
        for verify in [true, false] {
            let got = load_err(&bytes, verify);
            if *name == "data section cut (blobs then extend past it)" {
                assert!(
                    matches!(&got, Some(Error::BadBlob { tensor, reason: "extends past the data section" }) if tensor == "wide"),
                    "{name}: {got:?}"
                );
            } else {
                assert_eq!(&got, want, "{name} (verify {verify})");
            }
        }
    }
}

#[test]
fn blob_checksums_are_checked_only_when_asked() {
    let b = base_model();
    let pre = nap_runtime::model::parse_preamble(&b.bytes).unwrap();
    let (rp, _, _) = csr_blobs(&b.header, 8);
    let mut bytes = b.bytes.clone();
    // fc2.w's values blob: its first f16 value gets a new low bit.
    let Layout::Csr { values, .. } = &b.header.tensors[8].layout else {
        unreachable!()
    };
    let at = (pre.data_off + values.offset) as usize;
    bytes[at] ^= 1;
    assert_eq!(
        load_err(&bytes, true),
        Some(Error::ChecksumMismatch {
            what: "tensor \"fc2.w\"".into()
        })
    );
    let a = AlignedBytes::copy_from(&bytes);
    let m = Model::from_bytes_with(
        a.as_bytes(),
        LoadOptions {
            verify_blobs: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let TensorView::Csr(c) = m.tensor(8) else {
        panic!()
    };
    let Raw::Csr { bits, .. } = &b.raw[8] else {
        panic!()
    };
    assert_eq!(
        elem_bits(c.values())[0],
        bits[0] ^ 1,
        "the unverified load sees the flipped bit"
    );
    assert_eq!(c.row_ptr().len() as u64 * 4, rp.len);
}

// ---------------------------------------------------------------------------------------------
// (c) alignment and (d) zero copy.

#[test]
fn misaligned_input_is_an_error_not_ub() {
    let b = base_model();
    for shift in [1usize, 2, 3, 4, 8, 16, 32, 63] {
        let mut buf = vec![0u8; shift];
        buf.extend_from_slice(&b.bytes);
        let a = AlignedBytes::copy_from(&buf);
        let slice = &a.as_bytes()[shift..];
        assert_eq!(slice.as_ptr() as usize % 64, shift);
        for verify_blobs in [true, false] {
            let got = Model::from_bytes_with(
                slice,
                LoadOptions {
                    verify_blobs,
                    ..LoadOptions::default()
                },
            )
            .err();
            if shift % 4 == 0 {
                // Aligned enough for f32, f16, u16 and u32: the loader accepts it.
                assert_eq!(got, None, "shift {shift}");
            } else {
                // conv.w (f32) is the first blob checked.
                assert_eq!(
                    got,
                    Some(Error::Misaligned {
                        tensor: "conv.w".into()
                    }),
                    "shift {shift}"
                );
            }
        }
    }
    // Only f16 blobs at an address that is 2 mod 4: still fine for f16 and u16.
    let mut net = Net::new();
    let x = net.input(&[4]);
    let w = net.tensor("w", &[2, 4], &[1.0; 8], Store::F16);
    let y = net.node(
        "fc",
        Op::Linear(Linear {
            weight: w,
            bias: None,
            act: Activation::None,
        }),
        &[x],
    );
    let f16_only = net.finish(&[y]).bytes;
    for (shift, ok) in [(1usize, false), (2, true), (3, false)] {
        let mut buf = vec![0u8; shift];
        buf.extend_from_slice(&f16_only);
        let a = AlignedBytes::copy_from(&buf);
        let got = Model::from_bytes(&a.as_bytes()[shift..]).err();
        assert_eq!(got.is_none(), ok, "f16 model at shift {shift}: {got:?}");
        if !ok {
            assert_eq!(got, Some(Error::Misaligned { tensor: "w".into() }));
        }
    }
}

/// Every slice a view hands out lies inside the loaded image.
fn assert_zero_copy(m: &Model<'_>) {
    let img = m.bytes().as_ptr_range();
    let inside = |p: *const u8, bytes: usize, what: &str| {
        let end = p.wrapping_add(bytes);
        assert!(
            img.start <= p && end <= img.end,
            "{what}: {p:?}..{end:?} outside {:?}",
            img
        );
    };
    for id in 0..m.header().tensors.len() as TensorId {
        let name = m.tensor_entry(id).name.clone();
        match m.tensor(id) {
            TensorView::Dense(e) => {
                inside(e.as_ptr(), e.len() * m.tensor_entry(id).dtype.size(), &name)
            }
            TensorView::Csr(c) => {
                inside(c.row_ptr().as_ptr().cast(), c.row_ptr().len() * 4, &name);
                let (p, n) = match c.col_idx() {
                    nap_runtime::model::Indices::U16(v) => (v.as_ptr().cast::<u8>(), v.len() * 2),
                    nap_runtime::model::Indices::U32(v) => (v.as_ptr().cast::<u8>(), v.len() * 4),
                };
                inside(p, n, &name);
                inside(
                    c.values().as_ptr(),
                    c.values().len() * m.tensor_entry(id).dtype.size(),
                    &name,
                );
            }
            TensorView::BlockCsr(b) => {
                inside(b.row_ptr().as_ptr().cast(), b.row_ptr().len() * 4, &name);
                let (p, n) = match b.col_idx() {
                    nap_runtime::model::Indices::U16(v) => (v.as_ptr().cast::<u8>(), v.len() * 2),
                    nap_runtime::model::Indices::U32(v) => (v.as_ptr().cast::<u8>(), v.len() * 4),
                };
                inside(p, n, &name);
                inside(
                    b.values().as_ptr(),
                    b.values().len() * m.tensor_entry(id).dtype.size(),
                    &name,
                );
            }
        }
    }
}

#[test]
fn from_bytes_is_zero_copy() {
    let b = base_model();
    let a = AlignedBytes::copy_from(&b.bytes);
    let m = Model::from_bytes(a.as_bytes()).unwrap();
    assert_eq!(
        m.bytes().as_ptr(),
        a.as_bytes().as_ptr(),
        "the model borrows the caller's bytes"
    );
    assert_zero_copy(&m);
    let owned = Model::from_vec(&b.bytes).unwrap();
    assert_zero_copy(&owned);
}

#[cfg(feature = "std")]
#[test]
fn open_maps_the_file_zero_copy() {
    let b = base_model();
    let path = std::env::temp_dir().join(format!("nap-loader-test-{}.nap", std::process::id()));
    std::fs::write(&path, &b.bytes).unwrap();
    let m = Model::open(&path);
    let m2 = Model::open_with(
        &path,
        LoadOptions {
            verify_blobs: false,
            ..LoadOptions::default()
        },
    );
    std::fs::remove_file(&path).unwrap();
    let (m, m2) = (m.unwrap(), m2.unwrap());
    assert_eq!(m.bytes(), &b.bytes[..]);
    assert_eq!(
        m.bytes().as_ptr() as usize % 4096,
        0,
        "a mapping starts on a page"
    );
    check_round_trip(&m, &b);
    assert_zero_copy(&m);
    assert_zero_copy(&m2);
    assert!(matches!(
        Model::open(std::env::temp_dir().join("nap-loader-test-does-not-exist.nap")),
        Err(Error::Io(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// (e) The committed golden file. Its generator is runtime/examples/make_golden.rs; everything
// below is restated here on purpose so that a change to the generator cannot hide a change to
// the format.

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/golden-v1.0.nap");

fn golden_values(n: usize, a: usize, b: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * a + b) % 17) as f32 / 8.0 * scale - scale)
        .collect()
}

fn golden_fc_weight() -> Vec<f32> {
    // [3, 16]: entry (r, c) is non-zero when (r + 2c) % 5 == 0.
    (0..48)
        .map(|i| {
            let (r, c) = (i / 16, i % 16);
            if (r + 2 * c) % 5 == 0 {
                ((r * 16 + c) % 7) as f32 / 4.0 - 0.75
            } else {
                0.0
            }
        })
        .collect()
}

fn golden_input() -> Vec<f32> {
    (0..2 * 6 * 6)
        .map(|i| ((i * 5) % 13) as f32 / 6.0 - 1.0)
        .collect()
}

/// Hand-rolled forward pass of the golden graph (conv 3×3 pad 1 → BN → ReLU → maxpool 2 →
/// flatten → linear), in f64.
fn golden_forward(x: &[f32]) -> Vec<f64> {
    let conv_w: Vec<f64> = golden_values(4 * 2 * 9, 3, 1, 0.5)
        .iter()
        .map(|&v| f16::from_f32(v).to_f32() as f64)
        .collect();
    let conv_b = golden_values(4, 5, 2, 0.25);
    let gamma = [1.0f64, 0.5, 2.0, 1.5];
    let beta = [0.1f64, -0.2, 0.0, 0.3];
    let mean = [0.05f64, -0.1, 0.2, 0.0];
    let var = [1.0f64, 0.25, 4.0, 0.5];
    let mut a = vec![0f64; 4 * 36];
    for oc in 0..4 {
        for oy in 0..6i32 {
            for ox in 0..6i32 {
                let mut acc = conv_b[oc] as f64;
                for ic in 0..2 {
                    for ki in 0..3i32 {
                        for kj in 0..3i32 {
                            let (iy, ix) = (oy + ki - 1, ox + kj - 1);
                            if (0..6).contains(&iy) && (0..6).contains(&ix) {
                                acc += conv_w[((oc * 2 + ic) * 3 + ki as usize) * 3 + kj as usize]
                                    * x[(ic * 6 + iy as usize) * 6 + ix as usize] as f64;
                            }
                        }
                    }
                }
                let bn = (acc - mean[oc]) / (var[oc] + 1e-5).sqrt() * gamma[oc] + beta[oc];
                a[(oc * 6 + oy as usize) * 6 + ox as usize] = bn.max(0.0);
            }
        }
    }
    let mut pooled = [0f64; 16];
    for c in 0..4 {
        for py in 0..2 {
            for px in 0..2 {
                let mut m = f64::NEG_INFINITY;
                for dy in 0..3 {
                    for dx in 0..3 {
                        m = m.max(a[(c * 6 + py * 3 + dy) * 6 + px * 3 + dx]);
                    }
                }
                pooled[(c * 2 + py) * 2 + px] = m;
            }
        }
    }
    let w = golden_fc_weight();
    let fc_b = [0.5f64, -0.5, 0.25];
    (0..3)
        .map(|r| {
            fc_b[r]
                + (0..16)
                    .map(|c| w[r * 16 + c] as f64 * pooled[c])
                    .sum::<f64>()
        })
        .collect()
}

fn check_golden(m: &Model<'_>) {
    let h = m.header();
    assert_eq!(h.producer, "nap make_golden (format 1.0)");
    assert_eq!(h.metadata.arch, "golden-v1.0");
    assert_eq!((m.preamble().major, m.preamble().minor), (1, 0));
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["conv.w", "conv.b", "bn.gamma", "bn.beta", "bn.mean", "bn.var", "fc.w", "fc.b"]
    );
    assert_eq!(h.tensors[0].dtype, DType::F16);
    assert!(matches!(
        h.tensors[6].layout,
        Layout::Csr {
            index: IndexWidth::U16,
            ..
        }
    ));
    let conv_w = m.tensor(0).to_dense_f32();
    let want: Vec<f32> = golden_values(72, 3, 1, 0.5)
        .iter()
        .map(|&v| f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(conv_w, want);
    assert_eq!(m.tensor(6).to_dense_f32(), golden_fc_weight());
    assert_eq!(
        m.tensor(6).stored(),
        golden_fc_weight().iter().filter(|&&v| v != 0.0).count()
    );

    let want = golden_forward(&golden_input());
    // Frozen numbers: the same forward pass, printed once when the file was made.
    let frozen = [
        GOLDEN_OUT[0] as f64,
        GOLDEN_OUT[1] as f64,
        GOLDEN_OUT[2] as f64,
    ];
    assert_close(
        &frozen.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &want,
        1e-5,
        "frozen golden numbers vs hand-rolled forward",
    );
    for batch in [1usize, 3] {
        let mut s = Session::new(m, batch).unwrap();
        let input: Vec<f32> = (0..batch).flat_map(|_| golden_input()).collect();
        let got = s.run(&input).unwrap();
        let want_b: Vec<f64> = (0..batch).flat_map(|_| want.iter().copied()).collect();
        assert_close(got, &want_b, 1e-5, "golden output");
    }
}

/// Output of the golden model on [`golden_input`].
const GOLDEN_OUT: [f32; 3] = [-0.19175813, -2.2285023, 0.42190462];

#[test]
fn golden_v1_0_loads_and_runs() {
    let bytes = std::fs::read(GOLDEN).expect("tests/data/golden-v1.0.nap is committed");
    let a = AlignedBytes::copy_from(&bytes);
    for verify_blobs in [true, false] {
        let m = Model::from_bytes_with(
            a.as_bytes(),
            LoadOptions {
                verify_blobs,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        check_golden(&m);
        assert_zero_copy(&m);
    }
    #[cfg(feature = "std")]
    {
        let m = Model::open(GOLDEN).unwrap();
        check_golden(&m);
        assert_zero_copy(&m);
    }
}

/// A Linear model of 4 inputs and 2 outputs whose f32 weight and f16 bias hold `w` and `b`.
fn linear_with(w: [f32; 8], b: [f32; 2]) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    let wr = fb.add_f32(&w);
    let br = fb.add_f16(&b.map(f16::from_f32));
    let value = |name: &str, n| ValueInfo {
        name: name.into(),
        shape: vec![n],
    };
    let tensor = |name: &str, shape: Vec<u32>, dtype, values| TensorEntry {
        name: name.into(),
        shape,
        dtype,
        layout: Layout::Dense { values },
    };
    let header = Header {
        producer: "non-finite test".into(),
        metadata: Metadata::default(),
        graph: Graph {
            values: vec![value("x", 4), value("y", 2)],
            inputs: vec![0],
            outputs: vec![1],
            nodes: vec![Node {
                name: "fc".into(),
                op: Op::Linear(Linear {
                    weight: 0,
                    bias: Some(1),
                    act: Activation::Relu,
                }),
                inputs: vec![0],
                output: 1,
            }],
        },
        tensors: vec![
            tensor("fc.weight", vec![2, 4], DType::F32, wr),
            tensor("fc.bias", vec![2], DType::F16, br),
        ],
        extensions: vec![],
    };
    fb.finish(&header).unwrap()
}

#[test]
fn issue14_non_finite_weights_are_reported_and_refused_when_strict() {
    let strict = LoadOptions {
        finite_weights: true,
        ..LoadOptions::default()
    };
    let bad = linear_with(
        [1.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY, 1.0],
        [0.0, f32::INFINITY],
    );
    let a = AlignedBytes::copy_from(&bad);
    // Loads by default (the checksums hold), and says which tensors are bad.
    let m = Model::from_bytes(a.as_bytes()).unwrap();
    assert_eq!(m.non_finite(), [(0, 2), (1, 1)]);
    // ReLU hides the NaN in the output: why a strict mode exists.
    let mut s = Session::new(&m, 1).unwrap();
    assert!(s.run(&[1.0; 4]).unwrap().iter().any(|y| y.is_finite()));
    assert_eq!(
        Model::from_bytes_with(a.as_bytes(), strict).err(),
        Some(Error::NonFinite {
            tensor: "fc.weight".into(),
            count: 2
        })
    );
    let only_bias = linear_with([0.5; 8], [f32::NAN, 0.0]);
    let a = AlignedBytes::copy_from(&only_bias);
    assert_eq!(
        Model::from_bytes_with(a.as_bytes(), strict).err(),
        Some(Error::NonFinite {
            tensor: "fc.bias".into(),
            count: 1
        })
    );
    let good = AlignedBytes::copy_from(&linear_with([0.5; 8], [0.0, 65504.0]));
    let m = Model::from_bytes_with(good.as_bytes(), strict).unwrap();
    assert!(m.non_finite().is_empty());
}
