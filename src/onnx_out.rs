//! Writing models as ONNX (opset 17), so that any ONNX runtime runs a pruned model: zeros in
//! place for single-weight pruning, smaller dense tensors for channel pruning.
//!
//! Every IR value `[d...]` (per example) becomes the ONNX value `[N, d...]` with a symbolic
//! batch dimension `N`. The graph's input and output names are kept; weights are initializers
//! under their tensor names. The protobuf is encoded here (a few message types, fields as
//! numbered in `onnx.proto`), so no protobuf compiler or generated code is needed.

use std::path::Path;

use anyhow::{bail, Result};
use nap_runtime::format::{Activation, TensorId, ValueId};

use crate::ir::{HostModel, HostTensor};
use crate::ops::{host, OnnxNode};
use crate::pb::Pb;

/// The opset the writer targets.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;
const FLOAT: i64 = 1;
const INT64: i64 = 7;

/// An attribute value of a node.
pub enum Attr {
    Int(i64),
    Str(String),
    Float(f32),
    Ints(Vec<i64>),
}

/// The graph being written: nodes, initializers, fresh names.
pub struct Writer<'m> {
    tensors: &'m [HostTensor],
    /// Which tensors some node refers to (they become initializers).
    used: Vec<bool>,
    nodes: Pb,
    inits: Pb,
    fresh: usize,
    scalars: std::collections::HashSet<String>,
}

impl Writer<'_> {
    /// The ONNX name of tensor `id`, which becomes an initializer.
    pub fn tensor(&mut self, id: TensorId) -> String {
        self.used[id as usize] = true;
        self.tensors[id as usize].name.clone()
    }

    /// A weight layer's ONNX inputs: `x`, the weight and the bias if there is one.
    pub fn weighted_inputs(
        &mut self,
        x: &str,
        weight: TensorId,
        bias: Option<TensorId>,
    ) -> Vec<String> {
        let mut inputs = vec![x.to_string(), self.tensor(weight)];
        inputs.extend(bias.map(|b| self.tensor(b)));
        inputs
    }

    /// The shape of tensor `id`.
    pub fn tensor_shape(&self, id: TensorId) -> &[u32] {
        &self.tensors[id as usize].shape
    }

    /// Appends node `op` (an ONNX op type).
    pub fn node(
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
                        Attr::Str(v) => {
                            a.bytes(4, v.as_bytes());
                            a.int(20, 3);
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

    pub fn init_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) {
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

    pub fn init_i64(&mut self, name: &str, data: &[i64]) {
        self.inits.msg(5, |t| {
            t.int(1, data.len() as i64);
            t.int(2, INT64);
            t.str(8, name);
            let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.bytes(9, &raw);
        });
    }

    /// A fresh value name derived from `base`.
    pub fn tmp(&mut self, base: &str) -> String {
        self.fresh += 1;
        format!("{base}/{}", self.fresh)
    }

    /// A scalar f32 constant (shared by name).
    pub fn scalar(&mut self, v: f32) -> String {
        let name = format!("const/{v:e}");
        if self.scalars.insert(name.clone()) {
            self.init_f32(&name, &[], &[v]);
        }
        name
    }

    /// `act(x)` into `out` (an Identity for no activation).
    pub fn act(&mut self, a: Activation, name: &str, x: &str, out: &str) {
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
            Activation::LeakyRelu { alpha } => self.node(
                "LeakyRelu",
                name,
                &[x],
                out,
                &[("alpha", Attr::Float(alpha))],
            ),
            Activation::HardSigmoid { alpha, beta } => self.node(
                "HardSigmoid",
                name,
                &[x],
                out,
                &[("alpha", Attr::Float(alpha)), ("beta", Attr::Float(beta))],
            ),
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
    pub fn with_act(
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
        tensors: &m.tensors,
        used: vec![false; m.tensors.len()],
        nodes: Pb::default(),
        inits: Pb::default(),
        fresh: 0,
        scalars: Default::default(),
    };
    for n in &g.nodes {
        let inputs: Vec<&str> = n
            .inputs
            .iter()
            .map(|&v| names[v as usize].as_str())
            .collect();
        let node = OnnxNode {
            name: &n.name,
            inputs: &inputs,
            output: &names[n.output as usize],
        };
        host(&n.op).to_onnx(&mut w, &node);
    }
    let used: Vec<usize> = (0..m.tensors.len()).filter(|&i| w.used[i]).collect();
    for t in used.into_iter().map(|i| &m.tensors[i]) {
        let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        w.init_f32(&t.name, &dims, &t.data);
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
