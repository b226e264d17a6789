//! Writing models as ONNX (opset 17), so that any ONNX runtime runs a pruned model: zeros in
//! place for single-weight pruning, smaller dense tensors for channel pruning.
//!
//! Every IR value `[d...]` (per example) becomes the ONNX value `[N, d...]` with a symbolic
//! batch dimension `N`. The graph's input and output names are kept; weights are initializers
//! under their tensor names. The protobuf is encoded here (a few message types, fields as
//! numbered in `onnx.proto`), so no protobuf compiler or generated code is needed.

use std::path::Path;

use anyhow::{bail, Result};
use nap_runtime::format::{Activation, Op, ValueId};

use crate::ir::HostModel;
use crate::pb::Pb;

/// The opset the writer targets.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;
const FLOAT: i64 = 1;
const INT64: i64 = 7;

/// An attribute value of a node.
enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

/// The graph being written: nodes, initializers, fresh names.
struct Writer {
    nodes: Pb,
    inits: Pb,
    fresh: usize,
    scalars: std::collections::HashSet<String>,
}

impl Writer {
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: &[(&str, Attr)],
    ) {
        self.nodes.msg(1, |n| {
            for i in inputs {
                n.str(1, i);
            }
            n.str(2, output);
            n.str(3, name);
            n.str(4, op);
            for (k, v) in attrs {
                n.msg(5, |a| {
                    a.str(1, k);
                    match v {
                        Attr::Float(f) => {
                            a.float(2, *f);
                            a.int(20, 1);
                        }
                        Attr::Int(i) => {
                            a.int(3, *i);
                            a.int(20, 2);
                        }
                        Attr::Ints(is) => {
                            for &i in is {
                                a.int(8, i);
                            }
                            a.int(20, 7);
                        }
                    }
                });
            }
        });
    }

    fn init_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) {
        self.inits.msg(5, |t| {
            for &d in dims {
                t.int(1, d);
            }
            t.int(2, FLOAT);
            t.str(8, name);
            let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.bytes(9, &raw);
        });
    }

    fn init_i64(&mut self, name: &str, data: &[i64]) {
        self.inits.msg(5, |t| {
            t.int(1, data.len() as i64);
            t.int(2, INT64);
            t.str(8, name);
            let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.bytes(9, &raw);
        });
    }

    /// A fresh value name derived from `base`.
    fn tmp(&mut self, base: &str) -> String {
        self.fresh += 1;
        format!("{base}/{}", self.fresh)
    }

    /// A scalar f32 constant (shared by name).
    fn scalar(&mut self, v: f32) -> String {
        let name = format!("const/{v:e}");
        if self.scalars.insert(name.clone()) {
            self.init_f32(&name, &[], &[v]);
        }
        name
    }

    /// `act(x)` into `out` (an Identity for no activation).
    fn act(&mut self, a: Activation, name: &str, x: &str, out: &str) {
        match a {
            Activation::None => self.node("Identity", name, &[x], out, &[]),
            Activation::Relu => self.node("Relu", name, &[x], out, &[]),
            Activation::Relu6 => {
                let (lo, hi) = (self.scalar(0.0), self.scalar(6.0));
                self.node("Clip", name, &[x, &lo, &hi], out, &[]);
            }
            Activation::Sigmoid => self.node("Sigmoid", name, &[x], out, &[]),
            Activation::Tanh => self.node("Tanh", name, &[x], out, &[]),
            Activation::HardSwish => self.node("HardSwish", name, &[x], out, &[]),
            Activation::Silu => {
                let s = self.tmp(name);
                self.node("Sigmoid", &format!("{name}/sigmoid"), &[x], &s, &[]);
                self.node("Mul", name, &[x, &s], out, &[]);
            }
            Activation::Gelu => {
                // x * 0.5 * (1 + erf(x / sqrt 2)), the pattern torch exports before opset 20.
                let (r2, one, half) = (
                    self.scalar(std::f32::consts::SQRT_2),
                    self.scalar(1.0),
                    self.scalar(0.5),
                );
                let (d, e, p, h) = (
                    self.tmp(name),
                    self.tmp(name),
                    self.tmp(name),
                    self.tmp(name),
                );
                self.node("Div", &format!("{name}/div"), &[x, &r2], &d, &[]);
                self.node("Erf", &format!("{name}/erf"), &[&d], &e, &[]);
                self.node("Add", &format!("{name}/add"), &[&e, &one], &p, &[]);
                self.node("Mul", &format!("{name}/half"), &[x, &half], &h, &[]);
                self.node("Mul", name, &[&h, &p], out, &[]);
            }
        }
    }

    /// A node whose output is followed by `act`: writes `op` into `out` directly when there is
    /// no activation, else into a temporary and then the activation.
    fn with_act(
        &mut self,
        a: Activation,
        op: &str,
        name: &str,
        inputs: &[&str],
        out: &str,
        attrs: &[(&str, Attr)],
    ) {
        if a == Activation::None {
            self.node(op, name, inputs, out, attrs);
        } else {
            let t = self.tmp(name);
            self.node(op, name, inputs, &t, attrs);
            self.act(a, &format!("{name}/act"), &t, out);
        }
    }
}

fn value_info(g: &mut Pb, field: u32, name: &str, shape: &[u32]) {
    g.msg(field, |v| {
        v.str(1, name);
        v.msg(2, |t| {
            t.msg(1, |tt| {
                tt.int(1, FLOAT);
                tt.msg(2, |s| {
                    s.msg(1, |d| d.str(2, "N"));
                    for &x in shape {
                        s.msg(1, |d| d.int(1, x as i64));
                    }
                });
            });
        });
    });
}

/// Encodes `m` as an ONNX model. BatchNorm stays a node; call [`crate::export::fuse`] first
/// to fold it into the convolutions.
pub fn to_onnx_bytes(m: &HostModel) -> Result<Vec<u8>> {
    m.validate()?;
    let g = &m.graph;
    let is_io = |v: ValueId| g.inputs.contains(&v) || g.outputs.contains(&v);
    let names: Vec<String> = g
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if is_io(i as ValueId) {
                v.name.clone()
            } else {
                format!("{}:{i}", v.name)
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for &v in g.inputs.iter().chain(&g.outputs) {
        if !seen.insert(&names[v as usize]) {
            bail!("two graph inputs/outputs are named {:?}", names[v as usize]);
        }
    }
    let mut w = Writer {
        nodes: Pb::default(),
        inits: Pb::default(),
        fresh: 0,
        scalars: Default::default(),
    };
    let tname = |id: u32| m.tensors[id as usize].name.clone();
    let mut used = vec![false; m.tensors.len()];
    for n in &g.nodes {
        let ins: Vec<&str> = n
            .inputs
            .iter()
            .map(|&v| names[v as usize].as_str())
            .collect();
        let out = names[n.output as usize].as_str();
        let name = n.name.as_str();
        let mut tensor = |id: u32| {
            used[id as usize] = true;
            tname(id)
        };
        match &n.op {
            Op::Linear { weight, bias, act } => {
                let mut inputs = vec![ins[0].to_string(), tensor(*weight)];
                if let Some(b) = bias {
                    inputs.push(tensor(*b));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                w.with_act(
                    *act,
                    "Gemm",
                    name,
                    &inputs,
                    out,
                    &[("transB", Attr::Int(1))],
                );
            }
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
                act,
            } => {
                let ks = &m.tensors[*weight as usize].shape;
                let mut inputs = vec![ins[0].to_string(), tensor(*weight)];
                if let Some(b) = bias {
                    inputs.push(tensor(*b));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let pair = |p: [u32; 2]| Attr::Ints(vec![p[0] as i64, p[1] as i64]);
                w.with_act(
                    *act,
                    "Conv",
                    name,
                    &inputs,
                    out,
                    &[
                        ("kernel_shape", Attr::Ints(vec![ks[2] as i64, ks[3] as i64])),
                        ("strides", pair(*stride)),
                        ("dilations", pair(*dilation)),
                        (
                            "pads",
                            Attr::Ints(
                                [padding[0], padding[1], padding[0], padding[1]]
                                    .map(|p| p as i64)
                                    .to_vec(),
                            ),
                        ),
                        ("group", Attr::Int(*groups as i64)),
                    ],
                );
            }
            Op::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } => {
                let inputs = [
                    ins[0].to_string(),
                    tensor(*gamma),
                    tensor(*beta),
                    tensor(*mean),
                    tensor(*var),
                ];
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                w.node(
                    "BatchNormalization",
                    name,
                    &inputs,
                    out,
                    &[("epsilon", Attr::Float(*eps))],
                );
            }
            Op::Act(a) => w.act(*a, name, ins[0], out),
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
            }
            | Op::AvgPool2d {
                kernel,
                stride,
                padding,
                ..
            } => {
                let pair = |p: [u32; 2]| Attr::Ints(vec![p[0] as i64, p[1] as i64]);
                let mut attrs = vec![
                    ("kernel_shape", pair(*kernel)),
                    ("strides", pair(*stride)),
                    (
                        "pads",
                        Attr::Ints(
                            [padding[0], padding[1], padding[0], padding[1]]
                                .map(|p| p as i64)
                                .to_vec(),
                        ),
                    ),
                ];
                let op = match n.op {
                    Op::AvgPool2d {
                        count_include_pad, ..
                    } => {
                        attrs.push(("count_include_pad", Attr::Int(count_include_pad as i64)));
                        "AveragePool"
                    }
                    _ => "MaxPool",
                };
                w.node(op, name, &ins, out, &attrs);
            }
            Op::GlobalAvgPool => {
                let t = w.tmp(name);
                w.node("GlobalAveragePool", name, &ins, &t, &[]);
                w.node(
                    "Flatten",
                    &format!("{name}/flatten"),
                    &[&t],
                    out,
                    &[("axis", Attr::Int(1))],
                );
            }
            Op::Add { act } => w.with_act(*act, "Add", name, &ins, out, &[]),
            Op::Concat => w.node("Concat", name, &ins, out, &[("axis", Attr::Int(1))]),
            Op::Flatten => w.node("Flatten", name, &ins, out, &[("axis", Attr::Int(1))]),
            Op::Reshape { shape } => {
                let s = w.tmp(&format!("{name}/shape"));
                let mut dims = vec![-1i64];
                dims.extend(shape.iter().map(|&d| d as i64));
                w.init_i64(&s, &dims);
                w.node("Reshape", name, &[ins[0], &s], out, &[]);
            }
            Op::Softmax => w.node("Softmax", name, &ins, out, &[("axis", Attr::Int(-1))]),
        }
    }
    for (i, t) in m.tensors.iter().enumerate() {
        if used[i] {
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            w.init_f32(&t.name, &dims, &t.data);
        }
    }
    let mut graph = Pb::default();
    graph.0.extend_from_slice(&w.nodes.0);
    graph.str(2, &m.meta.arch);
    graph.0.extend_from_slice(&w.inits.0);
    for &v in &g.inputs {
        value_info(
            &mut graph,
            11,
            &names[v as usize],
            &g.values[v as usize].shape,
        );
    }
    for &v in &g.outputs {
        value_info(
            &mut graph,
            12,
            &names[v as usize],
            &g.values[v as usize].shape,
        );
    }
    let mut model = Pb::default();
    model.int(1, IR_VERSION);
    model.str(2, "nap");
    model.str(3, env!("CARGO_PKG_VERSION"));
    model.bytes(7, &graph.0);
    model.msg(8, |o| {
        o.str(1, "");
        o.int(2, OPSET);
    });
    Ok(model.0)
}

/// Writes `m` as ONNX to `path` atomically.
pub fn write_onnx(m: &HostModel, path: &Path) -> Result<()> {
    crate::util::atomic_write(path, &to_onnx_bytes(m)?)
}
