//! Shared by the loader and executor tests: a deterministic RNG, a model builder on top of
//! `format::FileBuilder` that remembers what it wrote, and a naive f64 reference interpreter that
//! shares no code with the runtime's executor or kernels.

#![allow(dead_code)]

use half::f16;
use nap_runtime::format::*;
use nap_runtime::{AlignedBytes, Error, LoadOptions, Model};

/// xorshift64*: deterministic, tiny, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }

    /// Like [`Rng::vec`], with about `zero_frac` of the entries exactly zero.
    pub fn sparse_vec(&mut self, n: usize, zero_frac: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let keep = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 >= zero_frac;
                if keep {
                    self.unit()
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// How a weight tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    F32,
    F16,
    Csr(DType, IndexWidth),
    /// Blocked CSR with 4×1 blocks.
    Bcsr4(DType, IndexWidth),
}

pub const STORES: [Store; 8] = [
    Store::F32,
    Store::F16,
    Store::Csr(DType::F32, IndexWidth::U16),
    Store::Csr(DType::F32, IndexWidth::U32),
    Store::Csr(DType::F16, IndexWidth::U16),
    Store::Csr(DType::F16, IndexWidth::U32),
    Store::Bcsr4(DType::F32, IndexWidth::U16),
    Store::Bcsr4(DType::F16, IndexWidth::U32),
];

/// Exactly what was written for one tensor: bit patterns of the stored elements (f16 bits
/// zero-extended), and the CSR index arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raw {
    Dense {
        bits: Vec<u32>,
    },
    Csr {
        row_ptr: Vec<u32>,
        col_idx: Vec<u32>,
        bits: Vec<u32>,
    },
}

fn stored(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::F16 => f16::from_f32(v).to_f32(),
    }
}

fn bits(dtype: DType, v: f32) -> u32 {
    match dtype {
        DType::F32 => v.to_bits(),
        DType::F16 => f16::from_f32(v).to_bits() as u32,
    }
}

/// A model under construction.
pub struct Net {
    fb: FileBuilder,
    pub tensors: Vec<TensorEntry>,
    /// Logical dense values of every tensor as stored (after f16 rounding).
    pub dense: Vec<Vec<f64>>,
    pub raw: Vec<Raw>,
    pub graph: Graph,
}

/// A finished model file and what went into it.
pub struct Built {
    pub bytes: Vec<u8>,
    pub header: Header,
    pub dense: Vec<Vec<f64>>,
    pub raw: Vec<Raw>,
}

impl Built {
    /// The data section (everything from `data_off`).
    pub fn data(&self) -> Vec<u8> {
        let pre = nap_runtime::model::parse_preamble(&self.bytes).expect("valid preamble");
        self.bytes[pre.data_off as usize..].to_vec()
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Self {
        Net {
            fb: FileBuilder::new(),
            tensors: Vec::new(),
            dense: Vec::new(),
            raw: Vec::new(),
            graph: Graph {
                values: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                nodes: Vec::new(),
            },
        }
    }

    /// Adds a tensor of logical row-major values `vals`; CSR storage keeps the non-zeros.
    pub fn tensor(&mut self, name: &str, shape: &[u32], vals: &[f32], store: Store) -> TensorId {
        let n: usize = shape.iter().map(|&d| d as usize).product();
        assert_eq!(vals.len(), n, "tensor {name}: value count");
        let (dtype, layout, raw) = match store {
            Store::F32 => (
                DType::F32,
                Layout::Dense {
                    values: self.fb.add_f32(vals),
                },
                Raw::Dense {
                    bits: vals.iter().map(|&v| bits(DType::F32, v)).collect(),
                },
            ),
            Store::F16 => {
                let h: Vec<f16> = vals.iter().map(|&v| f16::from_f32(v)).collect();
                (
                    DType::F16,
                    Layout::Dense {
                        values: self.fb.add_f16(&h),
                    },
                    Raw::Dense {
                        bits: vals.iter().map(|&v| bits(DType::F16, v)).collect(),
                    },
                )
            }
            Store::Csr(dtype, index) => {
                let rows = shape[0] as usize;
                let cols = n.checked_div(rows).unwrap_or(0);
                let mut row_ptr = vec![0u32];
                let mut col_idx = Vec::new();
                let mut nz = Vec::new();
                for r in 0..rows {
                    for c in 0..cols {
                        let v = vals[r * cols + c];
                        if v != 0.0 {
                            col_idx.push(c as u32);
                            nz.push(v);
                        }
                    }
                    row_ptr.push(col_idx.len() as u32);
                }
                let (rp, ci, vs) = self.sparse_blobs(&row_ptr, &col_idx, &nz, dtype, index);
                (
                    dtype,
                    Layout::Csr {
                        nnz: nz.len() as u64,
                        index,
                        row_ptr: rp,
                        col_idx: ci,
                        values: vs,
                    },
                    Raw::Csr {
                        row_ptr,
                        col_idx,
                        bits: nz.iter().map(|&v| bits(dtype, v)).collect(),
                    },
                )
            }
            Store::Bcsr4(dtype, index) => {
                let rows = shape[0] as usize;
                let cols = n.checked_div(rows).unwrap_or(0);
                let b = nap_runtime::model::BlockCsrBuf::from_dense(
                    rows,
                    cols,
                    4,
                    vals,
                    nap_runtime::kernels::Dtype::F32,
                    IndexWidth::U32,
                );
                let w = b.view();
                let row_ptr = w.row_ptr().to_vec();
                let col_idx: Vec<u32> =
                    (0..w.blocks()).map(|k| w.col_idx().get(k) as u32).collect();
                let nz = w.values().to_f32_vec();
                let (rp, ci, vs) = self.sparse_blobs(&row_ptr, &col_idx, &nz, dtype, index);
                (
                    dtype,
                    Layout::BlockCsr {
                        block: 4,
                        nnzb: col_idx.len() as u64,
                        index,
                        row_ptr: rp,
                        col_idx: ci,
                        values: vs,
                    },
                    Raw::Csr {
                        row_ptr,
                        col_idx,
                        bits: nz.iter().map(|&v| bits(dtype, v)).collect(),
                    },
                )
            }
        };
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype,
            layout,
        });
        self.dense
            .push(vals.iter().map(|&v| stored(dtype, v) as f64).collect());
        self.raw.push(raw);
        (self.tensors.len() - 1) as TensorId
    }

    /// Row pointers, column indices (as `index`) and values (as `dtype`) of a CSR or blocked-CSR
    /// tensor as blobs.
    fn sparse_blobs(
        &mut self,
        row_ptr: &[u32],
        col_idx: &[u32],
        nz: &[f32],
        dtype: DType,
        index: IndexWidth,
    ) -> (BlobRef, BlobRef, BlobRef) {
        let rp = self.fb.add_u32(row_ptr);
        let ci = match index {
            IndexWidth::U16 => self
                .fb
                .add_u16(&col_idx.iter().map(|&c| c as u16).collect::<Vec<_>>()),
            IndexWidth::U32 => self.fb.add_u32(col_idx),
        };
        let vs = match dtype {
            DType::F32 => self.fb.add_f32(nz),
            DType::F16 => self
                .fb
                .add_f16(&nz.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()),
        };
        (rp, ci, vs)
    }

    pub fn input(&mut self, shape: &[u32]) -> ValueId {
        let id = self.value("input", shape.to_vec());
        self.graph.inputs.push(id);
        id
    }

    fn value(&mut self, name: &str, shape: Vec<u32>) -> ValueId {
        self.graph.values.push(ValueInfo {
            name: name.to_string(),
            shape,
        });
        (self.graph.values.len() - 1) as ValueId
    }

    pub fn shape(&self, v: ValueId) -> &[u32] {
        &self.graph.values[v as usize].shape
    }

    /// Appends a node; its output shape comes from the runtime's shape inference (the reference
    /// interpreter recomputes every shape on its own and checks it against this one).
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        let node = Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            output: self.graph.values.len() as ValueId,
        };
        let h = self.header_with_outputs(&[]);
        let shapes: Vec<&[u32]> = inputs.iter().map(|&i| self.shape(i)).collect();
        let shape = nap_runtime::graph::infer(&h, &node, &shapes)
            .unwrap_or_else(|e| panic!("test model node {name}: {e}"));
        let out = self.value(name, shape);
        self.graph.nodes.push(node);
        out
    }

    fn header_with_outputs(&self, outputs: &[ValueId]) -> Header {
        let mut graph = self.graph.clone();
        graph.outputs = outputs.to_vec();
        Header {
            producer: "nap-runtime tests".to_string(),
            metadata: Metadata {
                source: "generated".to_string(),
                arch: "test".to_string(),
                method: "dense".to_string(),
                preprocess: "none".to_string(),
                labels: String::new(),
                layers: Vec::new(),
                extra: vec![("k".to_string(), "v".to_string())],
            },
            graph,
            tensors: self.tensors.clone(),
            extensions: Vec::new(),
        }
    }

    pub fn finish(self, outputs: &[ValueId]) -> Built {
        let header = self.header_with_outputs(outputs);
        let bytes = self.fb.finish(&header).expect("encode header");
        Built {
            bytes,
            header,
            dense: self.dense,
            raw: self.raw,
        }
    }
}

/// Encodes `header` in front of an existing data section (blob offsets stay valid because the
/// whole section becomes one blob at offset 0).
pub fn reencode(header: &Header, data: &[u8]) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    if !data.is_empty() {
        let r = fb.add_blob(data);
        assert_eq!(r.offset, 0);
    }
    fb.finish(header).expect("encode header")
}

/// Loads `bytes` from an aligned copy; returns the error, if any.
pub fn load_err(bytes: &[u8], verify_blobs: bool) -> Option<Error> {
    let a = AlignedBytes::copy_from(bytes);
    Model::from_bytes_with(
        a.as_bytes(),
        LoadOptions {
            verify_blobs,
            ..LoadOptions::default()
        },
    )
    .err()
}

/// Whether a model that loaded is small enough to plan and run in a test (a structurally valid
/// header may still describe gigabytes of activations or absurd convolution windows).
pub fn cheap_to_run(m: &Model<'_>) -> bool {
    let mul = |xs: &[u64]| xs.iter().try_fold(1u64, |a, &x| a.checked_mul(x));
    let g = m.graph();
    let mut total = 0u64;
    for v in &g.values {
        match mul(&v.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()) {
            Some(n) => total = total.saturating_add(n),
            None => return false,
        }
    }
    if total > 1 << 16 {
        return false;
    }
    for n in &g.nodes {
        let out = &g.values[n.output as usize].shape;
        let out_n = mul(&out.iter().map(|&d| d as u64).collect::<Vec<_>>()).unwrap_or(u64::MAX);
        let work = match &n.op {
            Op::Conv2d(Conv2d { weight, .. }) => {
                let ws = &m.tensor_entry(*weight).shape;
                let in_c = g.values[n.inputs[0] as usize].shape[0] as u64;
                let taps = mul(&[ws[1] as u64, ws[2] as u64, ws[3] as u64, in_c.max(1)]);
                taps.and_then(|t| t.checked_mul(out_n.max(1)))
            }
            Op::MaxPool2d(MaxPool2d { kernel, .. }) | Op::AvgPool2d(AvgPool2d { kernel, .. }) => {
                mul(&[kernel[0] as u64, kernel[1] as u64, out_n.max(1)])
            }
            Op::Linear(Linear { weight, .. }) => {
                mul(&[m.tensor_entry(*weight).shape[1] as u64, out_n])
            }
            _ => Some(out_n),
        };
        if work.is_none_or(|w| w > 1 << 22) {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Reference interpreter (f64, one example at a time, written from the op definitions).

pub fn act_ref(a: Activation, x: f64) -> f64 {
    match a {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
        Activation::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                alpha as f64 * x
            }
        }
    }
}

fn out_len(input: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    (input + 2 * p - d * (k - 1) - 1) / s + 1
}

type Val = (Vec<u32>, Vec<f64>);

fn conv_ref(h: &Header, w: &[Vec<f64>], op: &Op, x: &Val) -> Val {
    let Op::Conv2d(Conv2d {
        weight,
        bias,
        stride,
        padding,
        dilation,
        groups,
        act,
    }) = op
    else {
        unreachable!()
    };
    let ws: Vec<usize> = h.tensors[*weight as usize]
        .shape
        .iter()
        .map(|&d| d as usize)
        .collect();
    let (co, cig, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let (c, ih, iw) = (x.0[0] as usize, x.0[1] as usize, x.0[2] as usize);
    let [s0, s1] = stride.map(|v| v as usize);
    let [p0, p1] = padding.map(|v| v as usize);
    let [d0, d1] = dilation.map(|v| v as usize);
    let g = *groups as usize;
    assert_eq!(cig * g, c);
    let (oh, ow) = (out_len(ih, kh, s0, p0, d0), out_len(iw, kw, s1, p1, d1));
    let wt = &w[*weight as usize];
    let mut y = vec![0f64; co * oh * ow];
    let opg = co / g;
    for oc in 0..co {
        let grp = oc / opg;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias.map_or(0.0, |b| w[b as usize][oc]);
                for ic in 0..cig {
                    let ci = grp * cig + ic;
                    for ki in 0..kh {
                        let iy = (oy * s0 + ki * d0) as isize - p0 as isize;
                        if iy < 0 || iy >= ih as isize {
                            continue;
                        }
                        for kj in 0..kw {
                            let ix = (ox * s1 + kj * d1) as isize - p1 as isize;
                            if ix < 0 || ix >= iw as isize {
                                continue;
                            }
                            acc += wt[((oc * cig + ic) * kh + ki) * kw + kj]
                                * x.1[(ci * ih + iy as usize) * iw + ix as usize];
                        }
                    }
                }
                y[(oc * oh + oy) * ow + ox] = act_ref(*act, acc);
            }
        }
    }
    (vec![co as u32, oh as u32, ow as u32], y)
}

fn pool_ref(
    x: &Val,
    kernel: [u32; 2],
    stride: [u32; 2],
    pads: [u32; 4],
    mode: Option<bool>,
) -> Val {
    let (c, ih, iw) = (x.0[0] as usize, x.0[1] as usize, x.0[2] as usize);
    let [k0, k1] = kernel.map(|v| v as usize);
    let [s0, s1] = stride.map(|v| v as usize);
    let [p0, p1, e0, e1] = pads.map(|v| v as usize);
    let (oh, ow) = ((ih + p0 + e0 - k0) / s0 + 1, (iw + p1 + e1 - k1) / s1 + 1);
    let mut y = vec![0f64; c * oh * ow];
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut mx, mut sum, mut cnt) = (f64::NEG_INFINITY, 0.0, 0usize);
                for ki in 0..k0 {
                    for kj in 0..k1 {
                        let iy = (oy * s0 + ki) as isize - p0 as isize;
                        let ix = (ox * s1 + kj) as isize - p1 as isize;
                        if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                            continue;
                        }
                        let v = x.1[(ch * ih + iy as usize) * iw + ix as usize];
                        mx = mx.max(v);
                        sum += v;
                        cnt += 1;
                    }
                }
                y[(ch * oh + oy) * ow + ox] = match mode {
                    None => mx,
                    Some(true) => sum / (k0 * k1) as f64,
                    Some(false) => sum / cnt as f64,
                };
            }
        }
    }
    (vec![c as u32, oh as u32, ow as u32], y)
}

fn sym(p: [u32; 2]) -> [u32; 4] {
    [p[0], p[1], p[0], p[1]]
}

/// Runs graph `h` on one example with weights `w` (logical dense values per tensor).
pub fn reference(h: &Header, w: &[Vec<f64>], input: &[f64]) -> Vec<f64> {
    let g = &h.graph;
    let mut vals: Vec<Option<Val>> = vec![None; g.values.len()];
    let i0 = g.inputs[0] as usize;
    vals[i0] = Some((g.values[i0].shape.clone(), input.to_vec()));
    for node in &g.nodes {
        let ins: Vec<&Val> = node
            .inputs
            .iter()
            .map(|&i| vals[i as usize].as_ref().unwrap())
            .collect();
        let x = ins[0];
        let out: Val = match &node.op {
            Op::Linear(Linear { weight, bias, act }) => {
                let ws = &h.tensors[*weight as usize].shape;
                let (o, n) = (ws[0] as usize, ws[1] as usize);
                assert_eq!(x.1.len(), n);
                let wt = &w[*weight as usize];
                let y = (0..o)
                    .map(|r| {
                        let dot: f64 = (0..n).map(|k| wt[r * n + k] * x.1[k]).sum();
                        act_ref(*act, dot + bias.map_or(0.0, |b| w[b as usize][r]))
                    })
                    .collect();
                (vec![o as u32], y)
            }
            op @ Op::Conv2d(Conv2d { .. }) => conv_ref(h, w, op, x),
            Op::BatchNorm(BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            }) => {
                let c = x.0[0] as usize;
                let plane = x.1.len() / c;
                let p = |t: &TensorId, ch: usize| w[*t as usize][ch];
                let y =
                    x.1.iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let ch = i / plane;
                            (v - p(mean, ch)) / (p(var, ch) + *eps as f64).sqrt() * p(gamma, ch)
                                + p(beta, ch)
                        })
                        .collect();
                (x.0.clone(), y)
            }
            Op::Act(a) => (x.0.clone(), x.1.iter().map(|&v| act_ref(*a, v)).collect()),
            Op::MaxPool2d(MaxPool2d {
                kernel,
                stride,
                padding,
            }) => pool_ref(x, *kernel, *stride, sym(*padding), None),
            Op::AvgPool2d(AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
            }) => pool_ref(x, *kernel, *stride, sym(*padding), Some(*count_include_pad)),
            Op::AvgPool2dUneven(AvgPool2dUneven {
                kernel,
                stride,
                pads,
            }) => pool_ref(x, *kernel, *stride, *pads, Some(false)),
            Op::Transpose(Transpose { perm }) => {
                let shape: Vec<u32> = perm.iter().map(|&p| x.0[p as usize]).collect();
                let n = x.1.len();
                let mut y = vec![0f64; n];
                for (o, yv) in y.iter_mut().enumerate() {
                    // Output multi-index, last axis fastest; input index through `perm`.
                    let (mut rest, mut idx) = (o, vec![0usize; shape.len()]);
                    for a in (0..shape.len()).rev() {
                        idx[a] = rest % shape[a] as usize;
                        rest /= shape[a] as usize;
                    }
                    let mut at = vec![0usize; shape.len()];
                    for (a, &p) in perm.iter().enumerate() {
                        at[p as usize] = idx[a];
                    }
                    let i = at
                        .iter()
                        .zip(&x.0)
                        .fold(0usize, |acc, (&j, &d)| acc * d as usize + j);
                    *yv = x.1[i];
                }
                (shape, y)
            }
            Op::Lrn(Lrn {
                size,
                alpha,
                beta,
                bias,
            }) => {
                let c = x.0[0] as usize;
                let plane = x.1.len() / c;
                let size = *size as usize;
                let y = (0..x.1.len())
                    .map(|i| {
                        let (ch, p) = (i / plane, i % plane);
                        let lo = ch.saturating_sub((size - 1) / 2);
                        let hi = (ch + size / 2).min(c - 1);
                        let sq: f64 = (lo..=hi).map(|j| x.1[j * plane + p].powi(2)).sum();
                        let d = *bias as f64 + *alpha as f64 / size as f64 * sq;
                        x.1[i] / d.powf(*beta as f64)
                    })
                    .collect();
                (x.0.clone(), y)
            }
            Op::GlobalAvgPool => {
                let c = x.0[0] as usize;
                let plane = x.1.len() / c;
                let y =
                    x.1.chunks(plane)
                        .map(|p| p.iter().sum::<f64>() / plane as f64)
                        .collect();
                (vec![c as u32], y)
            }
            Op::Add(Add { act }) => {
                assert_eq!(x.0, ins[1].0);
                let y =
                    x.1.iter()
                        .zip(&ins[1].1)
                        .map(|(a, b)| act_ref(*act, a + b))
                        .collect();
                (x.0.clone(), y)
            }
            Op::Upsample(Upsample { scale }) => {
                let (c, h, wd) = (x.0[0] as usize, x.0[1] as usize, x.0[2] as usize);
                let [sh, sw] = scale.map(|v| v as usize);
                let (oh, ow) = (h * sh, wd * sw);
                let y = (0..c * oh * ow)
                    .map(|i| {
                        let (ch, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
                        x.1[(ch * h + oy / sh) * wd + ox / sw]
                    })
                    .collect();
                (vec![c as u32, oh as u32, ow as u32], y)
            }
            Op::ConvTranspose2d(ConvTranspose2d {
                weight,
                bias,
                stride,
                padding,
                output_padding,
                dilation,
            }) => {
                let ws = &h.tensors[*weight as usize].shape;
                let [ci, co, kh, kw] = [ws[0], ws[1], ws[2], ws[3]].map(|v| v as usize);
                let (ih, iw) = (x.0[1] as usize, x.0[2] as usize);
                let [s0, s1, p0, p1, o0, o1, d0, d1] = [stride, padding, output_padding, dilation]
                    .map(|a| a.map(|v| v as i64))
                    .concat()[..]
                else {
                    unreachable!()
                };
                let oh = ((ih as i64 - 1) * s0 - 2 * p0 + d0 * (kh as i64 - 1) + 1 + o0) as usize;
                let ow = ((iw as i64 - 1) * s1 - 2 * p1 + d1 * (kw as i64 - 1) + 1 + o1) as usize;
                let wt = &w[*weight as usize];
                let mut y = vec![0f64; co * oh * ow];
                for o in 0..co {
                    for v in &mut y[o * oh * ow..(o + 1) * oh * ow] {
                        *v = bias.map_or(0.0, |b| w[b as usize][o]);
                    }
                }
                for i in 0..ci {
                    for o in 0..co {
                        for iy in 0..ih {
                            for ix in 0..iw {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let oy = iy as i64 * s0 - p0 + ky as i64 * d0;
                                        let ox = ix as i64 * s1 - p1 + kx as i64 * d1;
                                        if (0..oh as i64).contains(&oy)
                                            && (0..ow as i64).contains(&ox)
                                        {
                                            y[(o * oh + oy as usize) * ow + ox as usize] += x.1
                                                [(i * ih + iy) * iw + ix]
                                                * wt[((i * co + o) * kh + ky) * kw + kx];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                (vec![co as u32, oh as u32, ow as u32], y)
            }
            Op::Pad(Pad { pads, value }) => {
                let (c, h, wd) = (x.0[0] as usize, x.0[1] as usize, x.0[2] as usize);
                let [t, l, b, r] = pads.map(|v| v as usize);
                let (oh, ow) = (t + h + b, l + wd + r);
                let y = (0..c * oh * ow)
                    .map(|i| {
                        let (ch, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
                        match (oy.checked_sub(t), ox.checked_sub(l)) {
                            (Some(iy), Some(ix)) if iy < h && ix < wd => {
                                x.1[(ch * h + iy) * wd + ix]
                            }
                            _ => *value as f64,
                        }
                    })
                    .collect();
                (vec![c as u32, oh as u32, ow as u32], y)
            }
            Op::Mul => {
                let g = ins[1];
                let per = if g.0 == x.0 { 1 } else { x.1.len() / g.1.len() };
                let y =
                    x.1.iter()
                        .enumerate()
                        .map(|(i, v)| v * g.1[i / per])
                        .collect();
                (x.0.clone(), y)
            }
            Op::Concat => {
                let mut shape = x.0.clone();
                shape[0] = ins.iter().map(|v| v.0[0]).sum();
                (
                    shape,
                    ins.iter().flat_map(|v| v.1.iter().copied()).collect(),
                )
            }
            Op::Flatten => (vec![x.1.len() as u32], x.1.clone()),
            Op::Reshape(Reshape { shape }) => (shape.clone(), x.1.clone()),
            Op::Softmax => {
                let d = *x.0.last().unwrap() as usize;
                let mut y = Vec::with_capacity(x.1.len());
                for row in x.1.chunks(d) {
                    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    y.extend(e.iter().map(|v| v / s));
                }
                (x.0.clone(), y)
            }
            Op::LinearRows(LinearRows { weight, bias, act }) => {
                let ws = &h.tensors[*weight as usize].shape;
                let (o, n) = (ws[0] as usize, ws[1] as usize);
                let wt = &w[*weight as usize];
                let mut y = Vec::new();
                for row in x.1.chunks(n) {
                    for r in 0..o {
                        let dot: f64 = (0..n).map(|k| wt[r * n + k] * row[k]).sum();
                        let b = bias.map_or(0.0, |b| w[b as usize][r]);
                        y.push(act_ref(*act, dot + b));
                    }
                }
                let mut shape = x.0.clone();
                *shape.last_mut().unwrap() = o as u32;
                (shape, y)
            }
            Op::LayerNorm(LayerNorm { gamma, beta, eps }) => {
                let d = *x.0.last().unwrap() as usize;
                let (g, b) = (&w[*gamma as usize], &w[*beta as usize]);
                let mut y = Vec::with_capacity(x.1.len());
                for row in x.1.chunks(d) {
                    let mean = row.iter().sum::<f64>() / d as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                    let sd = (var + *eps as f64).sqrt();
                    y.extend(
                        row.iter()
                            .enumerate()
                            .map(|(i, v)| (v - mean) / sd * g[i] + b[i]),
                    );
                }
                (x.0.clone(), y)
            }
            Op::Slice(Slice { axis, start, end }) => {
                let a = *axis as usize;
                let inner: usize = x.0[a + 1..].iter().map(|&d| d as usize).product();
                let len = x.0[a] as usize;
                let mut y = Vec::new();
                for block in x.1.chunks(len * inner) {
                    y.extend_from_slice(&block[*start as usize * inner..*end as usize * inner]);
                }
                let mut shape = x.0.clone();
                shape[a] = end - start;
                (shape, y)
            }
            Op::Attention(Attention { scale }) => {
                let (k, v) = (ins[1], ins[2]);
                let (hh, t, d) = (x.0[0] as usize, x.0[1] as usize, x.0[2] as usize);
                let (sl, dv) = (k.0[1] as usize, v.0[2] as usize);
                let mut y = vec![0f64; hh * t * dv];
                for h in 0..hh {
                    for i in 0..t {
                        let scores: Vec<f64> = (0..sl)
                            .map(|j| {
                                (0..d)
                                    .map(|e| x.1[(h * t + i) * d + e] * k.1[(h * sl + j) * d + e])
                                    .sum::<f64>()
                                    * *scale as f64
                            })
                            .collect();
                        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                        for (j, sj) in scores.iter().enumerate() {
                            let p = (sj - m).exp() / z;
                            for e in 0..dv {
                                y[(h * t + i) * dv + e] += p * v.1[(h * sl + j) * dv + e];
                            }
                        }
                    }
                }
                (vec![hh as u32, t as u32, dv as u32], y)
            }
        };
        let declared = &g.values[node.output as usize].shape;
        assert_eq!(&out.0, declared, "reference shape of node {}", node.name);
        let n: usize = declared.iter().map(|&d| d as usize).product();
        assert_eq!(out.1.len(), n, "reference length of node {}", node.name);
        vals[node.output as usize] = Some(out);
    }
    vals[g.outputs[0] as usize].take().unwrap().1
}

/// `|got - want| <= tol * (1 + |want|)` element-wise.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w} (err {err:e})"
        );
    }
}
