//! ONNX models in: parsed by `onnx-ir` (Burn's ONNX front end: typed nodes, constant folding,
//! external data), mapped here onto the pruner's IR.
//!
//! The IR works per example: the ONNX batch dimension (the first of every activation) is
//! dropped, so an ONNX value `[N, C, H, W]` becomes `[C, H, W]` and a Gemm input `[N, K]`
//! becomes `[K]`. Weights must be constants (initializers or `Constant` nodes).
//!
//! Every node is mapped before anything is returned; the nodes that cannot be mapped are all
//! reported in one [`Unsupported`] error, with their names and the reason.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nap_runtime::format::{
    Activation, Add, Attention, AvgPool2d, AvgPool2dUneven, BatchNorm, Conv2d, ConvTranspose2d,
    LayerNorm, Linear, LinearRows, Lrn, MaxPool2d, Metadata, Op, Pad, Reshape, Slice, TensorId,
    Transpose, Upsample, ValueId,
};
use onnx_ir::{ArgType, Argument, Node, OnnxGraph, OnnxGraphBuilder, TensorDataExt};

use crate::ir::{GraphBuilder, HostModel, HostTensor};

/// How to read an ONNX file.
#[derive(Clone, Debug, Default)]
pub struct OnnxOptions {
    /// The per-example input shape (without the batch dimension), for graphs whose input has
    /// dynamic dimensions besides the batch.
    pub input_shape: Option<Vec<u32>>,
}

/// One node the importer cannot map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedNode {
    pub node: String,
    pub op: String,
    pub reason: String,
}

/// Every node of a graph the importer cannot map.
#[derive(Clone, Debug)]
pub struct Unsupported {
    pub file: String,
    pub nodes: Vec<UnsupportedNode>,
    /// `(node, op)` of the nodes that read the output of an unsupported node whose shape is
    /// unknown, so they could not be checked.
    pub unchecked: Vec<(String, String)>,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ops: Vec<&str> = self.nodes.iter().map(|n| n.op.as_str()).collect();
        ops.sort_unstable();
        ops.dedup();
        writeln!(
            f,
            "{}: {} node(s) cannot be imported (op types: {}):",
            self.file,
            self.nodes.len(),
            ops.join(", ")
        )?;
        for n in &self.nodes {
            writeln!(f, "  {} ({}): {}", n.node, n.op, n.reason)?;
        }
        if !self.unchecked.is_empty() {
            writeln!(
                f,
                "{} node(s) after these could not be checked (their input shapes are unknown)",
                self.unchecked.len()
            )?;
        }
        write!(f, "nothing was written")
    }
}

impl std::error::Error for Unsupported {}

/// One op type of a graph, for `nap inspect`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpCount {
    pub op: String,
    pub count: usize,
    /// Names of the nodes of this type that cannot be imported, with the reason.
    pub unsupported: Vec<(String, String)>,
    /// Nodes of this type that could not be checked: they read the output of an unsupported
    /// node whose shape is unknown.
    pub unchecked: usize,
}

/// The graph's ops as `onnx-ir` parsed them, with the ones the importer rejects marked.
pub fn inspect_onnx(path: &Path, opts: &OnnxOptions) -> Result<(Vec<OpCount>, Option<HostModel>)> {
    let (g, quirks) = parse(path, opts)?;
    let mut counts: Vec<OpCount> = Vec::new();
    for n in &g.nodes {
        let op = op_name(n);
        match counts.iter_mut().find(|c| c.op == op) {
            Some(c) => c.count += 1,
            None => counts.push(OpCount {
                op,
                count: 1,
                unsupported: Vec::new(),
                unchecked: 0,
            }),
        }
    }
    let model = match map_graph(&g, &quirks, path, opts) {
        Ok(m) => Some(m),
        Err(e) => match e.downcast::<Unsupported>() {
            Ok(u) => {
                for (_, op) in &u.unchecked {
                    if let Some(c) = counts.iter_mut().find(|c| &c.op == op) {
                        c.unchecked += 1;
                    }
                }
                for n in u.nodes {
                    if let Some(c) = counts.iter_mut().find(|c| c.op == n.op) {
                        c.unsupported.push((n.node, n.reason));
                    } else {
                        counts.push(OpCount {
                            op: n.op,
                            count: 0,
                            unsupported: vec![(n.node, n.reason)],
                            unchecked: 0,
                        });
                    }
                }
                None
            }
            Err(e) => return Err(e),
        },
    };
    Ok((counts, model))
}

/// Reads an ONNX file into a [`HostModel`] (unfused: BatchNorm and activations stay nodes).
pub fn read_onnx(path: &Path, opts: &OnnxOptions) -> Result<HostModel> {
    let (g, quirks) = parse(path, opts)?;
    map_graph(&g, &quirks, path, opts)
}

/// What onnx-ir reads differently from the ONNX specification, found in the protobuf.
#[derive(Default)]
struct Quirks {
    /// For each BatchNormalization node, in file order: whether it has no `epsilon` attribute.
    /// The specification's default is 1e-5; onnx-ir takes 0. (onnx-ir renames nodes and values,
    /// so they are matched by order.)
    bn_default_epsilon: Vec<bool>,
}

/// The specification's default BatchNormalization epsilon.
const BN_DEFAULT_EPSILON: f32 = 1e-5;

fn quirks(model: &[u8]) -> Quirks {
    use crate::pb::fields;
    let mut q = Quirks::default();
    let nodes = || -> Option<Vec<Vec<crate::pb::Field<'_>>>> {
        let graph = fields(model)?
            .into_iter()
            .find(|f| f.num == 7 && f.wire == 2)?;
        fields(graph.payload)?
            .into_iter()
            .filter(|f| f.num == 1 && f.wire == 2)
            .map(|n| fields(n.payload))
            .collect()
    };
    for n in nodes().unwrap_or_default() {
        let is = |num: u32, want: &[u8]| {
            n.iter()
                .any(|f| f.num == num && f.wire == 2 && f.payload == want)
        };
        if !is(4, b"BatchNormalization") {
            continue;
        }
        let has_eps = n.iter().filter(|f| f.num == 5 && f.wire == 2).any(|a| {
            fields(a.payload).is_some_and(|af| {
                af.iter()
                    .any(|f| f.num == 1 && f.wire == 2 && f.payload == b"epsilon")
            })
        });
        q.bn_default_epsilon.push(!has_eps);
    }
    q
}

fn parse(path: &Path, opts: &OnnxOptions) -> Result<(OnnxGraph, Quirks)> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a read-only map, dropped before this function returns. It relies, as onnx-ir's
    // own map of the same file does, on no other process writing the file meanwhile; every
    // read of it is a bounds-checked protobuf walk.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("reading {}", path.display()))?;
    // With a static input shape (batch 1), onnx-ir folds the shape arithmetic of dynamic
    // exports (Shape, Gather, Concat into a Reshape) and infers every value's shape. The bytes
    // are patched only where the declared shape differs (a patched model is copied whole, the
    // file itself is mapped), and only without external data, whose files are found relative to
    // the path.
    let patched = match proto_input(&bytes) {
        Some((input, external)) => {
            let per = per_example_dims(&input, opts)
                .with_context(|| format!("{}: input {:?}", path.display(), input.name))?;
            match per {
                Some(per) if !external => {
                    let mut dims = vec![1u64];
                    dims.extend(per.iter().map(|&d| d as u64));
                    let declared: Vec<Option<u64>> = dims.iter().map(|&d| Some(d)).collect();
                    (input.dims != declared)
                        .then(|| patch_input_shape(&bytes, &input.name, input.elem, &dims))
                        .flatten()
                }
                _ => None,
            }
        }
        None => None,
    };
    let quirks = quirks(&bytes);
    drop(bytes);
    // onnx-ir panics on some malformed protobufs instead of returning an error.
    let p = path.to_path_buf();
    let parsed = std::panic::catch_unwind(move || match patched {
        Some(b) => OnnxGraphBuilder::new().parse_bytes(&b),
        None => OnnxGraphBuilder::new().parse_file(&p),
    });
    match parsed {
        Ok(Ok(g)) => Ok((g, quirks)),
        Ok(Err(e)) => Err(anyhow!(
            "{}: not a readable ONNX model: {e}",
            path.display()
        )),
        Err(_) => Err(anyhow!(
            "{}: not a readable ONNX model (the parser gave up)",
            path.display()
        )),
    }
}

/// A graph input as the protobuf declares it.
struct ProtoInput {
    name: String,
    /// ONNX element type (1 = float).
    elem: u64,
    /// Dimensions; `None` for a symbolic or missing one.
    dims: Vec<Option<u64>>,
}

/// The model's input (its first graph input that is not an initializer), and whether any
/// initializer keeps its data in an external file. `None` if the bytes are not a model.
fn proto_input(model: &[u8]) -> Option<(ProtoInput, bool)> {
    use crate::pb::fields;
    let graph = fields(model)?
        .into_iter()
        .find(|f| f.num == 7 && f.wire == 2)?;
    let gf = fields(graph.payload)?;
    let mut inits = std::collections::HashSet::new();
    let mut external = false;
    for t in gf.iter().filter(|f| f.num == 5 && f.wire == 2) {
        for f in fields(t.payload)? {
            match (f.num, f.wire) {
                (8, 2) => {
                    inits.insert(f.payload);
                }
                (14, 0) if f.value == 1 => external = true,
                _ => {}
            }
        }
    }
    for vi in gf.iter().filter(|f| f.num == 11 && f.wire == 2) {
        let vf = fields(vi.payload)?;
        let name = vf.iter().find(|f| f.num == 1 && f.wire == 2)?.payload;
        if inits.contains(name) {
            continue;
        }
        let mut input = ProtoInput {
            name: String::from_utf8(name.to_vec()).ok()?,
            elem: 0,
            dims: Vec::new(),
        };
        let ty = vf.iter().find(|f| f.num == 2 && f.wire == 2)?;
        let tensor = fields(ty.payload)?
            .into_iter()
            .find(|f| f.num == 1 && f.wire == 2)?;
        for f in fields(tensor.payload)? {
            match (f.num, f.wire) {
                (1, 0) => input.elem = f.value,
                (2, 2) => {
                    for d in fields(f.payload)?
                        .iter()
                        .filter(|d| d.num == 1 && d.wire == 2)
                    {
                        let v = fields(d.payload)?
                            .iter()
                            .find(|x| x.num == 1 && x.wire == 0)
                            .map(|x| x.value as i64)
                            .filter(|&v| v > 0)
                            .map(|v| v as u64);
                        input.dims.push(v);
                    }
                }
                _ => {}
            }
        }
        return Some((input, external));
    }
    None
}

/// The per-example input shape from `--input-shape` (checked against the model's static
/// dimensions) or from the model (`None` if it has dynamic dimensions besides the batch).
fn per_example_dims(input: &ProtoInput, opts: &OnnxOptions) -> Result<Option<Vec<u32>>> {
    if input.dims.len() < 2 {
        return Ok(opts.input_shape.clone());
    }
    let Some(s) = &opts.input_shape else {
        return Ok(input.dims[1..]
            .iter()
            .map(|d| d.and_then(|d| u32::try_from(d).ok()))
            .collect());
    };
    check_rank(s, input.dims.len())?;
    for (i, (&want, have)) in s.iter().zip(&input.dims[1..]).enumerate() {
        if let Some(h) = *have {
            if h != want as u64 {
                bail!(
                    "--input-shape {s:?} disagrees with the model's dimension {} = {h}",
                    i + 1
                );
            }
        }
    }
    Ok(Some(s.clone()))
}

/// `model` with the type of graph input `name` replaced by a tensor of `elem` and `dims`.
fn patch_input_shape(model: &[u8], name: &str, elem: u64, dims: &[u64]) -> Option<Vec<u8>> {
    use crate::pb::{fields, Pb};
    let mut out = Pb::default();
    for f in fields(model)? {
        if !(f.num == 7 && f.wire == 2) {
            out.0.extend_from_slice(f.raw);
            continue;
        }
        let mut g = Pb::default();
        for gf in fields(f.payload)? {
            let is_input = gf.num == 11
                && gf.wire == 2
                && fields(gf.payload)?
                    .iter()
                    .any(|x| x.num == 1 && x.wire == 2 && x.payload == name.as_bytes());
            if !is_input {
                g.0.extend_from_slice(gf.raw);
                continue;
            }
            g.msg(11, |vi| {
                vi.str(1, name);
                vi.msg(2, |t| {
                    t.msg(1, |tt| {
                        tt.int(1, elem as i64);
                        tt.msg(2, |sh| {
                            for &d in dims {
                                sh.msg(1, |dm| dm.int(1, d as i64));
                            }
                        });
                    });
                });
            });
        }
        out.bytes(7, &g.0);
    }
    Some(out.0)
}

/// The ONNX op type of a node (onnx-ir's own names, e.g. `Conv2d` for a 2-D `Conv`).
fn op_name(n: &Node) -> String {
    match n {
        Node::Custom(c) => format!("{}::{}", c.domain, c.op_type),
        _ => format!("{:?}", n.node_type()),
    }
}

/// A value during mapping.
#[derive(Clone, Debug)]
enum Val {
    /// A runtime value of the IR; `shape` is its ONNX shape without the batch dimension (it may
    /// differ from the IR value's shape in layout only, e.g. `[C, 1, 1]` for a `[C]` pooled
    /// vector).
    Rt { id: ValueId, shape: Vec<u32> },
    /// Computed from constants only (e.g. a Cast of a constant that onnx-ir leaves in place).
    Const(Const),
    /// Produced by a node that could not be mapped.
    Failed,
    /// A value whose batch axis is not first (a Transpose moved it): the ONNX value is the IR
    /// value `id` (per-example ONNX shape `shape`) with its batch axis put first, transposed
    /// by `perm`. Only Slice and Squeeze take it, until the batch axis is first again.
    Moved {
        id: ValueId,
        shape: Vec<u32>,
        perm: Vec<usize>,
    },
    /// A step of a layer normalisation over the last axis of `x` (ONNX shape `shape`) written
    /// out in primitive ops; it becomes one LayerNorm node named `name` where something else
    /// takes it.
    Ln {
        x: ValueId,
        shape: Vec<u32>,
        step: LnStep,
        name: String,
    },
}

/// The steps of `(x − mean) / sqrt(mean((x − mean)²) + eps) · gamma + beta` as exports write
/// them: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, then Mul and Add by constants.
#[derive(Clone, Debug)]
enum LnStep {
    Mean,
    Centred,
    Squared,
    Var,
    VarEps(f32),
    Std(f32),
    Normed {
        eps: f32,
        gamma: Option<Vec<f32>>,
        beta: Option<Vec<f32>>,
    },
}

/// A constant tensor (weights, shapes, scalars), in f32.
#[derive(Clone, Debug)]
struct Const {
    shape: Vec<usize>,
    data: Vec<f32>,
}

struct Mapper<'q> {
    b: GraphBuilder,
    quirks: &'q Quirks,
    /// BatchNormalization nodes in onnx-ir's graph, and how many were mapped so far.
    bn_total: usize,
    bn_seen: usize,
    vals: HashMap<String, Val>,
    /// `Sigmoid` outputs and their inputs, to recognise `x * sigmoid(x)` as SiLU.
    sigmoid_of: HashMap<String, String>,
}

/// The reason given for an op type the importer has no mapping for.
const UNSUPPORTED_OP: &str = "op not supported";

/// Why one node cannot be mapped; the caller attaches the node.
type NodeResult = std::result::Result<(), NodeError>;

/// Why one node cannot be mapped. `shape`: the reason depends on the input shapes, which are
/// guesses downstream of an unsupported node (so such a reason is not reported there).
struct NodeError {
    reason: String,
    shape: bool,
}

impl From<String> for NodeError {
    fn from(reason: String) -> Self {
        NodeError {
            reason,
            shape: false,
        }
    }
}

impl From<&str> for NodeError {
    fn from(reason: &str) -> Self {
        reason.to_string().into()
    }
}

/// A reason that depends on the input shapes.
fn shape_err(reason: impl Into<String>) -> NodeError {
    NodeError {
        reason: reason.into(),
        shape: true,
    }
}

fn map_graph(g: &OnnxGraph, quirks: &Quirks, path: &Path, opts: &OnnxOptions) -> Result<HostModel> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if g.inputs.len() != 1 {
        let names: Vec<&str> = g.inputs.iter().map(|a| a.name.as_str()).collect();
        bail!(
            "{file}: the graph has {} inputs ({names:?}); nap imports single-input models",
            g.inputs.len()
        );
    }
    let input = &g.inputs[0];
    let shape =
        input_shape(input, opts).with_context(|| format!("{file}: input {:?}", input.name))?;
    let mut m = Mapper {
        b: GraphBuilder::new(),
        vals: HashMap::new(),
        sigmoid_of: HashMap::new(),
        quirks,
        bn_total: g
            .nodes
            .iter()
            .filter(|n| matches!(n, Node::BatchNormalization(_)))
            .count(),
        bn_seen: 0,
    };
    let id = m.b.input(&input.name, &shape);
    m.vals.insert(input.name.clone(), Val::Rt { id, shape });

    let mut bad = Vec::new();
    let mut unchecked = Vec::new();
    // Values computed from a stand-in (below): their shapes are onnx-ir's guesses.
    let mut guessed = std::collections::HashSet::new();
    for n in &g.nodes {
        let failed_input = n
            .inputs()
            .iter()
            .any(|a| matches!(m.vals.get(&a.name), Some(Val::Failed)));
        let from_guess = n.inputs().iter().any(|a| guessed.contains(&a.name));
        let r = if failed_input {
            unchecked.push((n.name().to_string(), op_name(n)));
            Err(NodeError::from(String::new()))
        } else {
            m.node(n)
        };
        if from_guess {
            guessed.extend(n.outputs().iter().map(|o| o.name.clone()));
        }
        if let Err(NodeError { reason, shape }) = r {
            // Where onnx-ir knows an output's shape, a stand-in value lets the nodes downstream
            // be checked (and reported) too; the graph is discarded.
            for o in n.outputs() {
                let v = match per_example_static(o) {
                    Some(shape) if !reason.is_empty() => Val::Rt {
                        id: m.b.input(&o.name, &shape),
                        shape,
                    },
                    _ => Val::Failed,
                };
                m.vals.insert(o.name.clone(), v);
                guessed.insert(o.name.clone());
            }
            // Downstream of an unsupported node, a reason that depends on shapes may come from
            // the stand-in's guessed shape: it is not reported.
            if !(reason.is_empty() || from_guess && shape) {
                bad.push(UnsupportedNode {
                    node: n.name().to_string(),
                    op: op_name(n),
                    reason,
                });
            }
        }
    }
    if !bad.is_empty() {
        return Err(Unsupported {
            file,
            nodes: bad,
            unchecked,
        }
        .into());
    }

    let mut outputs = Vec::new();
    for o in &g.outputs {
        let (id, shape) = match m.vals.get(&o.name) {
            Some(Val::Rt { id, shape }) => (*id, shape.clone()),
            _ => bail!(
                "{file}: graph output {:?} is not computed from the input",
                o.name
            ),
        };
        let id = m
            .as_shape(id, &shape, &o.name)
            .map_err(|e| anyhow!("{file}: output {:?}: {}", o.name, e.reason))?;
        outputs.push(id);
    }
    let stem = path
        .file_stem()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "onnx".into());
    let meta = Metadata {
        source: file.clone(),
        arch: stem,
        method: "dense".into(),
        preprocess: "none".into(),
        labels: String::new(),
        layers: Vec::new(),
        extra: vec![("format".into(), "onnx".into())],
    };
    let mut model = m.b.finish(&outputs, meta)?;
    for (o, &id) in g.outputs.iter().zip(&outputs) {
        model.graph.values[id as usize].name = o.name.clone();
    }
    remove_dead_nodes(&mut model);
    model.validate()?;
    Ok(model)
}

/// Checks that `--input-shape` (per example) fits an ONNX input of rank `rank` (with its batch
/// dimension).
fn check_rank(s: &[u32], rank: usize) -> Result<()> {
    if rank != s.len() + 1 {
        let example = if rank >= 2 {
            format!("{} numbers", rank - 1)
        } else {
            "a shape of rank 0".to_string()
        };
        bail!(
            "--input-shape {s:?} does not fit the model's input of rank {rank}: --input-shape is \
             per example, without the batch dimension, so give {example}"
        );
    }
    Ok(())
}

/// The per-example input shape: the ONNX shape without its first (batch) dimension.
fn input_shape(input: &Argument, opts: &OnnxOptions) -> Result<Vec<u32>> {
    let ArgType::Tensor(t) = &input.ty else {
        bail!("is not a tensor");
    };
    if let Some(s) = &opts.input_shape {
        check_rank(s, t.rank)?;
        if let Some(st) = &t.static_shape {
            for (i, (&want, &have)) in s.iter().zip(&st[1..]).enumerate() {
                if let Some(h) = have {
                    if h as u32 != want {
                        bail!(
                            "--input-shape {s:?} disagrees with the model's dimension {} = {h}",
                            i + 1
                        );
                    }
                }
            }
        }
        return Ok(s.clone());
    }
    if t.rank < 2 {
        bail!("has rank {}; nap expects a batch dimension first", t.rank);
    }
    let dims: Vec<Option<u32>> = match &t.static_shape {
        Some(s) => s
            .iter()
            .map(|d| d.and_then(|d| u32::try_from(d).ok()))
            .collect(),
        None => vec![None; t.rank],
    };
    let per: Option<Vec<u32>> = dims[1..].iter().copied().collect();
    per.ok_or_else(|| {
        let names = ["C", "H", "W"];
        let shown: Vec<String> = dims
            .iter()
            .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
            .collect();
        let example: Vec<String> = dims[1..]
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Some(d) => d.to_string(),
                None if dims.len() == 4 => names[i].to_string(),
                None => format!("D{}", i + 1),
            })
            .collect();
        anyhow!(
            "has dynamic dimensions [{}]; give the per-example shape with --input-shape {}",
            shown.join(", "),
            example.join(",")
        )
    })
}

/// The static shape of `a` without its batch dimension, if onnx-ir inferred it.
fn per_example_static(a: &Argument) -> Option<Vec<u32>> {
    let ArgType::Tensor(t) = &a.ty else {
        return None;
    };
    let s = t.static_shape.as_ref()?;
    if s.len() < 2 {
        return None;
    }
    s[1..].iter().map(|d| d.map(|d| d as u32)).collect()
}

/// Removes nodes whose output nothing reads (e.g. the `Sigmoid` of a fused SiLU).
fn remove_dead_nodes(m: &mut HostModel) {
    loop {
        let mut used = vec![false; m.graph.values.len()];
        for &o in &m.graph.outputs {
            used[o as usize] = true;
        }
        for n in &m.graph.nodes {
            for &i in &n.inputs {
                used[i as usize] = true;
            }
        }
        let before = m.graph.nodes.len();
        m.graph.nodes.retain(|n| used[n.output as usize]);
        if m.graph.nodes.len() == before {
            break;
        }
    }
}

fn static_value(a: &Argument) -> Option<Const> {
    let d = a.value()?;
    let data = d.to_f32_vec().ok()?;
    let shape = d.shape().to_vec();
    Some(Const { shape, data })
}

impl Mapper<'_> {
    /// The value of `a` if it is a constant: onnx-ir's, or one computed here.
    fn constant(&self, a: &Argument) -> Option<Const> {
        static_value(a).or_else(|| match self.vals.get(&a.name) {
            Some(Val::Const(c)) => Some(c.clone()),
            _ => None,
        })
    }

    /// The epsilon of the next BatchNormalization node, as onnx-ir read it (`read`), with the
    /// specification's default where the file gives none.
    fn bn_epsilon(&mut self, read: f32) -> std::result::Result<f32, NodeError> {
        let lacks = &self.quirks.bn_default_epsilon;
        let i = self.bn_seen;
        self.bn_seen += 1;
        let default = if self.bn_total == lacks.len() {
            lacks[i]
        } else if lacks.iter().all(|&l| l == lacks[0]) {
            lacks.first().copied().unwrap_or(false)
        } else {
            return Err(
                "cannot tell whether this BatchNormalization has an epsilon attribute (onnx-ir merged some); give every one an explicit epsilon"
                    .into(),
            );
        };
        Ok(if default { BN_DEFAULT_EPSILON } else { read })
    }

    fn rt(&mut self, a: &Argument) -> std::result::Result<(ValueId, Vec<u32>), String> {
        match self.vals.get(&a.name).cloned() {
            Some(Val::Rt { id, shape }) => Ok((id, shape)),
            Some(Val::Ln {
                x,
                shape,
                step: LnStep::Normed { eps, gamma, beta },
                name,
            }) => {
                let d = *shape.last().ok_or("LayerNorm of a scalar")? as usize;
                let mut t = |what: &str, v: Option<Vec<f32>>, fill: f32| {
                    self.b.tensor(HostTensor {
                        name: format!("{name}.{what}"),
                        shape: vec![d as u32],
                        data: v.unwrap_or_else(|| vec![fill; d]),
                    })
                };
                let (gamma, beta) = (t("gamma", gamma, 1.0), t("beta", beta, 0.0));
                let x = self.as_shape(x, &shape, &name).map_err(|e| e.reason)?;
                let op = Op::LayerNorm(LayerNorm { gamma, beta, eps });
                let id = self.b.node(&name, op, &[x]).map_err(|e| format!("{e:#}"))?;
                self.vals.insert(
                    a.name.clone(),
                    Val::Rt {
                        id,
                        shape: shape.clone(),
                    },
                );
                Ok((id, shape))
            }
            Some(Val::Ln { .. }) => Err(format!(
                "input {:?} is part of a layer normalisation written out in ReduceMean, Sub, Pow, Sqrt and Div, used by another op (not supported)",
                a.name
            )),
            Some(Val::Moved { perm, .. }) => Err(format!(
                "input {:?} has its batch axis moved by a Transpose ({perm:?}); only Slice and Squeeze that bring it back first are supported",
                a.name
            )),
            Some(Val::Failed) => Err(String::new()),
            Some(Val::Const(_)) => Err(format!(
                "input {:?} is a constant where a computed value is expected",
                a.name
            )),
            None => Err(format!(
                "input {:?} is not computed from the model input",
                a.name
            )),
        }
    }

    fn weight(
        &mut self,
        a: &Argument,
        name: String,
    ) -> std::result::Result<(HostTensor, Const), String> {
        let c = self
            .constant(a)
            .ok_or_else(|| format!("{name} is not a constant"))?;
        if let Some(i) = c.data.iter().position(|v| !v.is_finite()) {
            return Err(format!("{name} holds a non-finite value at index {i}"));
        }
        let t = HostTensor {
            name,
            shape: c.shape.iter().map(|&d| d as u32).collect(),
            data: c.data.clone(),
        };
        Ok((t, c))
    }

    fn set(&mut self, n: &Node, id: ValueId, shape: Vec<u32>) {
        self.vals
            .insert(n.outputs()[0].name.clone(), Val::Rt { id, shape });
    }

    fn alias(&mut self, n: &Node, from: &Argument) -> NodeResult {
        let v = self
            .vals
            .get(&from.name)
            .cloned()
            .ok_or("input is not computed")?;
        self.vals.insert(n.outputs()[0].name.clone(), v);
        Ok(())
    }

    /// Records `k` as the value of `n`'s (first) output: computed from constants only.
    fn set_const(&mut self, n: &Node, k: Const) {
        self.vals.insert(n.outputs()[0].name.clone(), Val::Const(k));
    }

    fn emit(
        &mut self,
        n: &Node,
        op: Op,
        inputs: &[ValueId],
    ) -> std::result::Result<ValueId, NodeError> {
        self.b
            .node(n.name(), op, inputs)
            .map_err(|e| shape_err(format!("{e:#}")))
    }

    /// `id` with the IR shape `shape` (a Reshape when the IR value has another layout).
    fn as_shape(
        &mut self,
        id: ValueId,
        shape: &[u32],
        name: &str,
    ) -> std::result::Result<ValueId, NodeError> {
        if self.b.value_shape(id) == shape {
            return Ok(id);
        }
        self.b
            .node(
                &format!("{name}.reshape"),
                Op::Reshape(Reshape {
                    shape: shape.to_vec(),
                }),
                &[id],
            )
            .map_err(|e| shape_err(format!("{e:#}")))
    }

    /// The node's first input as an IR value of exactly its ONNX shape.
    fn input(&mut self, n: &Node, i: usize) -> std::result::Result<(ValueId, Vec<u32>), NodeError> {
        let a = n.inputs().get(i).ok_or("missing input")?;
        let (id, shape) = self.rt(a)?;
        let id = self.as_shape(id, &shape, n.name())?;
        Ok((id, shape))
    }

    fn act(&mut self, n: &Node, a: Activation) -> NodeResult {
        let (x, shape) = self.input(n, 0)?;
        let y = self.emit(n, Op::Act(a), &[x])?;
        self.set(n, y, shape);
        Ok(())
    }

    fn node(&mut self, n: &Node) -> NodeResult {
        match n {
            Node::Constant(_) => Ok(()),
            Node::Identity(x) => self.alias(n, &x.inputs[0]),
            Node::Dropout(x) => self.alias(n, &x.inputs[0]),
            Node::Relu(_) => self.act(n, Activation::Relu),
            Node::Tanh(_) => self.act(n, Activation::Tanh),
            Node::HardSwish(_) => self.act(n, Activation::HardSwish),
            Node::LeakyRelu(l) => self.act(
                n,
                Activation::LeakyRelu {
                    alpha: l.config.alpha as f32,
                },
            ),
            Node::HardSigmoid(h) => self.act(
                n,
                Activation::HardSigmoid {
                    alpha: h.config.alpha as f32,
                    beta: h.config.beta as f32,
                },
            ),
            Node::Shape(sh) => {
                // The batch is 1 here (see `patch_input_shape`), every other dimension static.
                let (_, shape) = self.rt(&sh.inputs[0])?;
                let full: Vec<f32> = std::iter::once(1.0)
                    .chain(shape.iter().map(|&d| d as f32))
                    .collect();
                let (start, end) = (
                    sh.config.start.min(full.len()),
                    sh.config.end.min(full.len()),
                );
                let data = full[start..end.max(start)].to_vec();
                let k = Const {
                    shape: vec![data.len()],
                    data,
                };
                self.set_const(n, k);
                Ok(())
            }
            Node::Slice(sl) => {
                use onnx_ir::node::slice::SliceInput;
                let values = |i: &SliceInput| match i {
                    SliceInput::Static(v) => (v.len() == 1).then(|| v[0]),
                    SliceInput::Runtime(r) => self
                        .constant(&sl.inputs[r.input_index])
                        .filter(|c| c.data.len() == 1)
                        .map(|c| c.data[0] as i64),
                };
                let (Some(start), Some(end)) = (values(&sl.config.starts), values(&sl.config.ends))
                else {
                    return Err(
                        "Slice with computed bounds or of several axes is not supported".into(),
                    );
                };
                let step = sl.config.steps.as_ref().map_or(Some(1), values);
                if step != Some(1) {
                    return Err("Slice with a step other than 1".into());
                }
                let axis = sl.config.axes.as_ref().map_or(Some(0), values);
                let Some(k) = self.constant(&sl.inputs[0]).filter(|k| k.shape.len() == 1) else {
                    let axis = axis.ok_or("Slice along a computed axis")?;
                    return self.slice(n, &sl.inputs[0], axis, start, end);
                };
                let (a, b) = clamp_range(start, end, k.data.len() as i64);
                let data = k.data[a as usize..b as usize].to_vec();
                let k = Const {
                    shape: vec![data.len()],
                    data,
                };
                self.set_const(n, k);
                Ok(())
            }
            Node::Cast(c) => {
                let to = c.config.to;
                if let Some(k) = self.constant(&c.inputs[0]) {
                    let data = if to.is_float() {
                        k.data
                    } else {
                        k.data.iter().map(|v| v.trunc()).collect()
                    };
                    let k = Const { data, ..k };
                    self.set_const(n, k);
                    return Ok(());
                }
                if !to.is_float() {
                    return Err(format!("Cast of a computed tensor to {to:?}").into());
                }
                self.alias(n, &c.inputs[0])
            }
            Node::Sigmoid(s) => {
                self.sigmoid_of
                    .insert(s.outputs[0].name.clone(), s.inputs[0].name.clone());
                self.act(n, Activation::Sigmoid)
            }
            Node::Gelu(g) => {
                if g.config.approximate != onnx_ir::node::gelu::GeluApproximate::Exact {
                    return Err("only the exact (erf) GELU is supported".into());
                }
                self.act(n, Activation::Gelu)
            }
            Node::Clip(c) => {
                let bound = |b: &Option<onnx_ir::node::clip::ClipInput>| match b {
                    None => Ok(None),
                    Some(onnx_ir::node::clip::ClipInput::Static(v)) => Ok(Some(*v)),
                    Some(_) => Err("Clip bounds must be constants".to_string()),
                };
                match (bound(&c.config.min)?, bound(&c.config.max)?) {
                    (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => {
                        self.act(n, Activation::Relu6)
                    }
                    (Some(0.0), None) => self.act(n, Activation::Relu),
                    (lo, hi) => Err(NodeError::from(format!(
                        "Clip to [{lo:?}, {hi:?}] is not supported (only [0, 6] and [0, inf))"
                    ))),
                }
            }
            Node::Conv2d(c) => self.conv(n, &c.inputs, &c.config),
            Node::ConvTranspose2d(c) => self.conv_transpose(n, &c.inputs, &c.config),
            Node::Resize(r) => self.resize(n, &r.config),
            Node::Pad(p) => {
                use onnx_ir::node::pad::{ConstantValueInput, PadInput, PadMode};
                if p.config.mode != PadMode::Constant {
                    return Err(format!("Pad in {:?} mode (only constant)", p.config.mode).into());
                }
                let value = match &p.config.constant_value {
                    ConstantValueInput::Static(v) => *v,
                    ConstantValueInput::Runtime(r) => self
                        .constant(&p.inputs[r.input_index])
                        .and_then(|c| c.data.first().copied())
                        .ok_or("Pad with a computed value is not supported")?,
                };
                let PadInput::Static(pads) = &p.config.pads else {
                    return Err("Pad with computed pads is not supported".into());
                };
                let (x, shape) = self.input(n, 0)?;
                match pads[..] {
                    [(0, 0), (0, 0), (t, b), (l, r)] if shape.len() == 3 => {
                        let pads = [t, l, b, r].map(|v| v as u32);
                        let y = self.emit(n, Op::Pad(Pad { pads, value }), &[x])?;
                        let s = self.b.value_shape(y).to_vec();
                        self.set(n, y, s);
                        Ok(())
                    }
                    _ => Err(shape_err(format!(
                        "Pad by {pads:?} (only the height and width of an [N, C, H, W] value)"
                    ))),
                }
            }
            Node::Transpose(t) => {
                let (x, shape) = self.input(n, 0)?;
                let perm = &t.config.perm;
                let mut seen = vec![false; shape.len() + 1];
                let valid = perm.len() == seen.len()
                    && perm.iter().all(|&p| {
                        usize::try_from(p)
                            .ok()
                            .and_then(|p| seen.get_mut(p))
                            .is_some_and(|s| !std::mem::replace(s, true))
                    });
                if !valid {
                    return Err(shape_err(format!(
                        "Transpose by {perm:?} of a rank-{} value",
                        shape.len() + 1
                    )));
                }
                if perm[0] != 0 {
                    let perm = perm.iter().map(|&p| p as usize).collect();
                    self.vals.insert(
                        n.outputs()[0].name.clone(),
                        Val::Moved { id: x, shape, perm },
                    );
                    return Ok(());
                }
                let perm = perm[1..]
                    .iter()
                    .map(|&p| u32::try_from(p - 1).map_err(|_| format!("perm {perm:?}")))
                    .collect::<std::result::Result<Vec<u32>, _>>()?;
                let y = self.emit(n, Op::Transpose(Transpose { perm }), &[x])?;
                let s = self.b.value_shape(y).to_vec();
                self.set(n, y, s);
                Ok(())
            }
            Node::Lrn(l) => {
                let c = &l.config;
                let size = u32::try_from(c.size).map_err(|_| format!("LRN of size {}", c.size))?;
                let (x, shape) = self.input(n, 0)?;
                let op = Op::Lrn(Lrn {
                    size,
                    alpha: c.alpha,
                    beta: c.beta,
                    bias: c.bias,
                });
                let y = self.emit(n, op, &[x])?;
                self.set(n, y, shape);
                Ok(())
            }
            Node::Squeeze(sq) => {
                use onnx_ir::node::squeeze::SqueezeInput;
                let axes = match &sq.config.axes {
                    Some(SqueezeInput::Static(a)) => a.clone(),
                    Some(SqueezeInput::Runtime(r)) => self
                        .constant(&sq.inputs[r.input_index])
                        .map(|c| c.data.iter().map(|&v| v as i64).collect())
                        .ok_or("Squeeze of computed axes")?,
                    None => return Err("Squeeze without axes (of every axis of size 1)".into()),
                };
                self.squeeze(n, &sq.inputs[0], &axes)
            }
            Node::Unsqueeze(u) => {
                use onnx_ir::node::unsqueeze::UnsqueezeConfig;
                let axes = match &u.config {
                    UnsqueezeConfig::Static(a) => a.clone(),
                    UnsqueezeConfig::Runtime(r) => self
                        .constant(&u.inputs[r.input_index])
                        .map(|c| c.data.iter().map(|&v| v as i64).collect())
                        .ok_or("Unsqueeze of computed axes")?,
                };
                let (x, shape) = self.rt(&u.inputs[0])?;
                let rank = (shape.len() + 1 + axes.len()) as i64;
                let mut full: Vec<Option<u32>> = std::iter::once(None)
                    .chain(shape.iter().map(|&d| Some(d)))
                    .collect();
                let mut axes: Vec<i64> = axes.iter().map(|&a| from_end(a, rank)).collect();
                axes.sort();
                for &a in &axes {
                    if a < 1 || a as usize > full.len() {
                        return Err(shape_err(format!(
                            "Unsqueeze at axis {a} of a rank-{} value",
                            shape.len() + 1
                        )));
                    }
                    full.insert(a as usize, Some(1));
                }
                let shape: Vec<u32> = full[1..]
                    .iter()
                    .map(|d| d.expect("only the batch is None"))
                    .collect();
                self.set(n, x, shape);
                Ok(())
            }
            Node::Split(sp) => {
                use onnx_ir::node::split::SplitSizesInput;
                let (_, shape) = self.rt(&sp.inputs[0])?;
                let axis = sp.config.axis;
                let len = *shape.get(axis.wrapping_sub(1)).ok_or_else(|| {
                    shape_err(format!(
                        "Split along axis {axis} of a rank-{} value",
                        shape.len() + 1
                    ))
                })? as usize;
                let outs = sp.outputs.len();
                let sizes: Vec<usize> = match (&sp.config.split_sizes, sp.config.split_size) {
                    (Some(SplitSizesInput::Static(v)), _) => v.clone(),
                    (Some(SplitSizesInput::Runtime(r)), _) => self
                        .constant(&sp.inputs[r.input_index])
                        .map(|c| c.data.iter().map(|&v| v as usize).collect())
                        .ok_or("Split by computed sizes")?,
                    (None, Some(k)) => (0..outs)
                        .map(|i| k.min(len.saturating_sub(i * k)))
                        .collect(),
                    (None, None) => vec![len.div_ceil(outs.max(1)); outs],
                };
                if sizes.len() != outs || sizes.iter().sum::<usize>() != len {
                    return Err(shape_err(format!("Split of {len} into {sizes:?}")));
                }
                let mut start = 0i64;
                for (o, &size) in sp.outputs.iter().zip(&sizes) {
                    let name = format!("{}.{}", n.name(), o.name);
                    let (id, s) = self.slice_value(
                        &sp.inputs[0],
                        axis as i64,
                        start,
                        start + size as i64,
                        &name,
                    )?;
                    self.vals.insert(o.name.clone(), Val::Rt { id, shape: s });
                    start += size as i64;
                }
                Ok(())
            }
            Node::Attention(at) => {
                use onnx_ir::node::attention::AttentionQkMatmulOutputMode as Mode;
                let c = &at.config;
                if at.inputs.len() > 3 && at.inputs[3..].iter().any(|a| !a.is_optional()) {
                    return Err("Attention with a mask or a cache is not supported".into());
                }
                if c.is_causal
                    || c.softcap != 0.0
                    || at.outputs.len() > 1 && c.qk_matmul_output_mode != Mode::Matmul
                {
                    return Err("Attention that is causal, soft-capped or returns its scores is not supported".into());
                }
                let (q, sq) = self.input(n, 0)?;
                let (k, _) = self.input(n, 1)?;
                let (v, sv) = self.input(n, 2)?;
                if sq.len() != 3 {
                    return Err(shape_err(format!(
                        "Attention of rank-{} values (only [N, heads, T, d])",
                        sq.len() + 1
                    )));
                }
                let scale = c.scale.unwrap_or(1.0 / (sq[2] as f64).sqrt()) as f32;
                let y = self.emit(n, Op::Attention(Attention { scale }), &[q, k, v])?;
                self.set(n, y, vec![sq[0], sq[1], sv[2]]);
                Ok(())
            }
            Node::LayerNormalization(ln) => {
                let (x, shape) = self.input(n, 0)?;
                let rank = shape.len() as i64 + 1;
                let axis = from_end(ln.config.axis, rank);
                if axis != rank - 1 {
                    return Err(shape_err(format!("LayerNormalization from axis {} of a rank-{rank} value (only the last axis)", ln.config.axis)));
                }
                let d = *shape.last().ok_or("LayerNormalization of a [N] value")? as usize;
                let mut param = |i: usize,
                                 what: &str,
                                 fill: f32|
                 -> std::result::Result<TensorId, NodeError> {
                    let t = match ln.inputs.get(i).filter(|a| !a.is_optional()) {
                        Some(a) => self.weight(a, format!("{}.{what}", n.name()))?.0,
                        None => HostTensor {
                            name: format!("{}.{what}", n.name()),
                            shape: vec![d as u32],
                            data: vec![fill; d],
                        },
                    };
                    if t.data.len() != d {
                        return Err(format!("{what} of shape {:?} for {d} values", t.shape).into());
                    }
                    Ok(self.b.tensor(HostTensor {
                        shape: vec![d as u32],
                        ..t
                    }))
                };
                let gamma = param(1, "gamma", 1.0)?;
                let beta = param(2, "beta", 0.0)?;
                let op = Op::LayerNorm(LayerNorm {
                    gamma,
                    beta,
                    eps: ln.config.epsilon as f32,
                });
                let y = self.emit(n, op, &[x])?;
                self.set(n, y, shape);
                Ok(())
            }
            Node::ReduceMean(r) => self.reduce_mean(n, &r.inputs[0], &r.config),
            Node::Pow(p) => {
                let e = self
                    .constant(&p.inputs[1])
                    .filter(|c| c.data.len() == 1)
                    .map(|c| c.data[0]);
                match (self.vals.get(&p.inputs[0].name).cloned(), e) {
                    (
                        Some(Val::Ln {
                            x,
                            shape,
                            step: LnStep::Centred,
                            name,
                        }),
                        Some(2.0),
                    ) => {
                        self.set_ln(n, x, shape, LnStep::Squared, name);
                        Ok(())
                    }
                    _ => Err("Pow is supported only as the square in a layer normalisation".into()),
                }
            }
            Node::Sqrt(q) => match self.vals.get(&q.inputs[0].name).cloned() {
                Some(Val::Ln {
                    x,
                    shape,
                    step: LnStep::VarEps(eps),
                    name,
                }) => {
                    self.set_ln(n, x, shape, LnStep::Std(eps), name);
                    Ok(())
                }
                _ => Err("Sqrt is supported only in a layer normalisation".into()),
            },
            Node::Linear(l) => {
                let w = &l.inputs[1];
                self.linear(n, w, !l.config.transpose_weight, 1.0, l.inputs.get(2), 1.0)
            }
            Node::Gemm(g) => {
                if g.config.trans_a != 0 {
                    return Err("Gemm with transA = 1 is not supported".into());
                }
                self.linear(
                    n,
                    &g.inputs[1],
                    g.config.trans_b == 0,
                    g.config.alpha,
                    g.inputs.get(2),
                    g.config.beta,
                )
            }
            Node::MatMul(mm) => {
                if self.constant(&mm.inputs[1]).is_none() {
                    return Err("MatMul of two computed tensors is not supported".into());
                }
                self.linear(n, &mm.inputs[1], true, 1.0, None, 1.0)
            }
            Node::BatchNormalization(bn) => {
                let onnx_ir::node::batch_norm::BatchNormConfig::Static(cfg) = &bn.config else {
                    return Err("BatchNormalization parameters must be constants".into());
                };
                let (x, shape) = self.input(n, 0)?;
                let mut ids = [0u32; 4];
                for (k, what) in ["gamma", "beta", "mean", "var"].iter().enumerate() {
                    let (t, _) = self.weight(&bn.inputs[k + 1], format!("{}.{what}", n.name()))?;
                    ids[k] = self.b.tensor(t);
                }
                let op = Op::BatchNorm(BatchNorm {
                    gamma: ids[0],
                    beta: ids[1],
                    mean: ids[2],
                    var: ids[3],
                    eps: self.bn_epsilon(cfg.epsilon as f32)?,
                });
                let y = self.emit(n, op, &[x])?;
                self.set(n, y, shape);
                Ok(())
            }
            Node::MaxPool2d(p) => {
                let c = &p.config;
                let pool = Pool {
                    kernel: c.kernel_size,
                    stride: c.strides,
                    dilation: c.dilation,
                    padding: &c.padding,
                    auto_pad: &c.auto_pad,
                    ceil_mode: c.ceil_mode,
                    avg_count_pad: None,
                };
                self.pool(n, pool)
            }
            Node::AveragePool2d(p) => {
                let c = &p.config;
                let pool = Pool {
                    kernel: c.kernel_size,
                    stride: c.strides,
                    dilation: c.dilation,
                    padding: &c.padding,
                    auto_pad: &c.auto_pad,
                    ceil_mode: c.ceil_mode,
                    avg_count_pad: Some(c.count_include_pad),
                };
                self.pool(n, pool)
            }
            Node::GlobalAveragePool(_) => {
                let (x, shape) = self.input(n, 0)?;
                if shape.len() != 3 {
                    return Err(shape_err(format!(
                        "GlobalAveragePool of a rank-{} value",
                        shape.len() + 1
                    )));
                }
                let y = self.emit(n, Op::GlobalAvgPool, &[x])?;
                self.set(n, y, vec![shape[0], 1, 1]);
                Ok(())
            }
            Node::Flatten(f) => {
                if f.config.axis != 1 {
                    return Err(NodeError::from(format!(
                        "Flatten on axis {} (only axis 1, which keeps the batch, is supported)",
                        f.config.axis
                    )));
                }
                let (x, shape) = self.rt(&f.inputs[0])?;
                let numel: u32 = shape.iter().product();
                let y = if self.b.value_shape(x).len() == 1 {
                    x
                } else {
                    self.emit(n, Op::Flatten, &[x])?
                };
                self.set(n, y, vec![numel]);
                Ok(())
            }
            Node::Reshape(r) => {
                let target = match &r.config.shape {
                    onnx_ir::node::reshape::ReshapeInput::Static(s) => s.clone(),
                    _ => match r.inputs.get(1).and_then(|a| self.constant(a)) {
                        Some(c) => c.data.iter().map(|&v| v as i64).collect(),
                        None => return Err("Reshape to a computed shape is not supported".into()),
                    },
                };
                let (x, shape) = self.rt(&r.inputs[0])?;
                let to = reshape_target(&shape, &target).map_err(shape_err)?;
                let y = self.as_shape(x, &to, n.name())?;
                self.set(n, y, to);
                Ok(())
            }
            Node::Softmax(s) => {
                // Over the last axis, or over the C values of [N, C, 1, 1] (a pooled map), where
                // every opset's convention agrees.
                let (x, shape) = self.rt(&s.inputs[0])?;
                let per = if s.config.axis == shape.len() {
                    shape.clone()
                } else if s.config.axis == 1 && shape[1..].iter().all(|&d| d == 1) {
                    shape[..1].to_vec()
                } else {
                    return Err(shape_err(format!(
                        "Softmax over axis {} of a value of shape [N, {}] (only over the last axis, or the C of [N, C, 1, 1])",
                        s.config.axis,
                        shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                };
                let x = self.as_shape(x, &per, n.name())?;
                let y = self.emit(n, Op::Softmax, &[x])?;
                self.set(n, y, shape);
                Ok(())
            }
            Node::Concat(c) => {
                let consts: Option<Vec<Const>> =
                    c.inputs.iter().map(|a| self.constant(a)).collect();
                if let Some(ks) = consts.filter(|ks| ks.iter().all(|k| k.shape.len() == 1)) {
                    let data: Vec<f32> = ks.into_iter().flat_map(|k| k.data).collect();
                    let k = Const {
                        shape: vec![data.len()],
                        data,
                    };
                    self.set_const(n, k);
                    return Ok(());
                }
                if c.config.axis != 1 {
                    return Err(NodeError::from(format!(
                        "Concat on axis {} (only channels, axis 1)",
                        c.config.axis
                    )));
                }
                let mut ids = Vec::new();
                let mut shape = Vec::new();
                for i in 0..c.inputs.len() {
                    let (id, s) = self.input(n, i)?;
                    if shape.is_empty() {
                        shape = s;
                    } else {
                        shape[0] += s[0];
                    }
                    ids.push(id);
                }
                let y = self.emit(n, Op::Concat, &ids)?;
                self.set(n, y, shape);
                Ok(())
            }
            Node::Sum(s) => {
                if s.inputs.len() == 1 {
                    return self.alias(n, &s.inputs[0]);
                }
                let (mut acc, shape) = self.input(n, 0)?;
                for i in 1..s.inputs.len() {
                    let (b, _) = self.input(n, i)?;
                    acc = self
                        .b
                        .node(
                            &format!("{}.{i}", n.name()),
                            Op::Add(Add {
                                act: Activation::None,
                            }),
                            &[acc, b],
                        )
                        .map_err(|e| format!("{e:#}"))?;
                }
                self.set(n, acc, shape);
                Ok(())
            }
            Node::Add(x) => self.binary(n, &x.inputs, Binary::Add),
            Node::Sub(x) => self.binary(n, &x.inputs, Binary::Sub),
            Node::Mul(x) => self.binary(n, &x.inputs, Binary::Mul),
            Node::Div(x) => self.binary(n, &x.inputs, Binary::Div),
            _ => Err(UNSUPPORTED_OP.into()),
        }
    }

    /// Records the layer-normalisation step `step` as the value of `n`'s output.
    fn set_ln(&mut self, n: &Node, x: ValueId, shape: Vec<u32>, step: LnStep, name: String) {
        self.vals.insert(
            n.outputs()[0].name.clone(),
            Val::Ln {
                x,
                shape,
                step,
                name,
            },
        );
    }

    /// ReduceMean over the last axis, keeping it: the first or the second mean of a layer
    /// normalisation.
    fn reduce_mean(
        &mut self,
        n: &Node,
        a: &Argument,
        c: &onnx_ir::node::reduce::ReduceConfig,
    ) -> NodeResult {
        use onnx_ir::node::reduce::ReduceAxes;
        let v = self.vals.get(&a.name).cloned();
        let (x, shape, step, name) = match v {
            Some(Val::Ln {
                x,
                shape,
                step: LnStep::Squared,
                name,
            }) => (x, shape, LnStep::Var, name),
            _ => {
                let (x, shape) = self.input(n, 0)?;
                (x, shape, LnStep::Mean, n.name().to_string())
            }
        };
        if let (LnStep::Mean, ReduceAxes::Static(v), 3) = (&step, &c.axes, shape.len()) {
            if v[..] == [2, 3] {
                // The mean over height and width (torch's `x.mean((2, 3))`).
                let y = self.emit(n, Op::GlobalAvgPool, &[x])?;
                let out = if c.keepdims {
                    vec![shape[0], 1, 1]
                } else {
                    vec![shape[0]]
                };
                self.set(n, y, out);
                return Ok(());
            }
        }
        let last = matches!(&c.axes, ReduceAxes::Static(v) if v[..] == [shape.len()]);
        if !(last && c.keepdims) {
            return Err(shape_err(
                "ReduceMean is supported only over height and width, or over the last axis (keeping it) in a layer normalisation",
            ));
        }
        self.set_ln(n, x, shape, step, name);
        Ok(())
    }

    /// The steps of a layer normalisation that are binary ops: `x − mean`, `var + eps`,
    /// `centred / std`, `normed · gamma` and `normed + beta`. `false` if `n` is not one.
    fn ln_binary(
        &mut self,
        n: &Node,
        ins: &[Argument],
        kind: Binary,
    ) -> std::result::Result<bool, NodeError> {
        let get = |i: usize| self.vals.get(&ins[i].name).cloned();
        let (a, b) = (get(0), get(1));
        let scalar = |i: usize| {
            self.constant(&ins[i])
                .filter(|c| c.data.len() == 1)
                .map(|c| c.data[0])
        };
        match (kind, a, b) {
            (
                Binary::Sub,
                Some(Val::Rt { id, .. }),
                Some(Val::Ln {
                    x,
                    shape,
                    step: LnStep::Mean,
                    name,
                }),
            ) => {
                let (xa, _) = self.input(n, 0)?;
                if xa != x && id != x {
                    return Err("a difference with the mean of another value".into());
                }
                self.set_ln(n, x, shape, LnStep::Centred, name);
            }
            (
                Binary::Add,
                Some(Val::Ln {
                    x,
                    shape,
                    step: LnStep::Var,
                    name,
                }),
                _,
            ) => {
                let eps = scalar(1).ok_or("the variance plus a non-scalar")?;
                self.set_ln(n, x, shape, LnStep::VarEps(eps), name);
            }
            (
                Binary::Div,
                Some(Val::Ln {
                    x,
                    shape,
                    step: LnStep::Centred,
                    name,
                }),
                Some(Val::Ln {
                    x: x2,
                    step: LnStep::Std(eps),
                    ..
                }),
            ) if x == x2 => {
                let step = LnStep::Normed {
                    eps,
                    gamma: None,
                    beta: None,
                };
                self.set_ln(n, x, shape, step, name);
            }
            (
                Binary::Mul | Binary::Add,
                Some(Val::Ln {
                    x,
                    shape,
                    step: LnStep::Normed { eps, gamma, beta },
                    name,
                }),
                _,
            ) => {
                let d = *shape.last().expect("a normalised axis") as usize;
                let Some(c) = self.constant(&ins[1]) else {
                    return Ok(false);
                };
                let per = match c.data.len() {
                    1 => vec![c.data[0]; d],
                    l if l == d && c.shape.iter().rev().skip(1).all(|&s| s == 1) => c.data.clone(),
                    _ => return Ok(false),
                };
                let step = match (kind, gamma, beta) {
                    (Binary::Mul, None, None) => LnStep::Normed {
                        eps,
                        gamma: Some(per),
                        beta: None,
                    },
                    (Binary::Add, gamma, None) => LnStep::Normed {
                        eps,
                        gamma,
                        beta: Some(per),
                    },
                    _ => return Ok(false),
                };
                self.set_ln(n, x, shape, step, name);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `start..end` (ONNX conventions: negative from the end, clamped) along ONNX axis `axis`
    /// of the computed value `a`, as the output of `n`.
    fn slice(&mut self, n: &Node, a: &Argument, axis: i64, start: i64, end: i64) -> NodeResult {
        if let Some(Val::Moved {
            id,
            mut shape,
            perm,
        }) = self.vals.get(&a.name).cloned()
        {
            let axis = from_end(axis, perm.len() as i64);
            let src = usize::try_from(axis)
                .ok()
                .and_then(|a| perm.get(a))
                .copied();
            let Some(src) = src.filter(|&s| s > 0) else {
                return Err(shape_err(format!(
                    "Slice along the batch axis (axis {axis} after the Transpose by {perm:?})"
                )));
            };
            let len = shape[src - 1] as i64;
            let (s0, e0) = clamp_range(start, end, len);
            let x = self.as_shape(id, &shape, n.name())?;
            let op = Op::Slice(Slice {
                axis: src as u32 - 1,
                start: s0,
                end: e0,
            });
            let y = self.emit(n, op, &[x])?;
            shape[src - 1] = e0 - s0;
            self.vals.insert(
                n.outputs()[0].name.clone(),
                Val::Moved { id: y, shape, perm },
            );
            return Ok(());
        }
        let (id, shape) = self.slice_value(a, axis, start, end, n.name())?;
        self.set(n, id, shape);
        Ok(())
    }

    /// A Slice node named `name` of the computed value `a`: its id and ONNX shape.
    fn slice_value(
        &mut self,
        a: &Argument,
        axis: i64,
        start: i64,
        end: i64,
        name: &str,
    ) -> std::result::Result<(ValueId, Vec<u32>), NodeError> {
        let (x, mut shape) = self.rt(a)?;
        let axis = from_end(axis, shape.len() as i64 + 1);
        if axis < 1 || axis as usize > shape.len() {
            return Err(shape_err(format!(
                "Slice along axis {axis} of a rank-{} value (not the batch)",
                shape.len() + 1
            )));
        }
        let ax = axis as usize - 1;
        let (s0, e0) = clamp_range(start, end, shape[ax] as i64);
        if (s0, e0) == (0, shape[ax]) {
            return Ok((x, shape));
        }
        let x = self.as_shape(x, &shape, name)?;
        let op = Op::Slice(Slice {
            axis: ax as u32,
            start: s0,
            end: e0,
        });
        let y = self
            .b
            .node(name, op, &[x])
            .map_err(|e| shape_err(format!("{e:#}")))?;
        shape[ax] = e0 - s0;
        Ok((y, shape))
    }

    /// Squeeze of ONNX `axes` (each of size 1) of `a`; a value whose batch axis was moved
    /// becomes an ordinary one once the batch is first again.
    fn squeeze(&mut self, n: &Node, a: &Argument, axes: &[i64]) -> NodeResult {
        let norm = |rank: usize| -> Vec<i64> {
            let mut v: Vec<i64> = axes.iter().map(|&x| from_end(x, rank as i64)).collect();
            v.sort();
            v.reverse();
            v
        };
        if let Some(Val::Moved {
            id,
            mut shape,
            mut perm,
        }) = self.vals.get(&a.name).cloned()
        {
            for ax in norm(perm.len()) {
                let src = usize::try_from(ax).ok().and_then(|x| perm.get(x)).copied();
                match src {
                    Some(s) if s > 0 && shape[s - 1] == 1 => {
                        shape.remove(s - 1);
                        perm.remove(ax as usize);
                        perm.iter_mut().filter(|p| **p > s).for_each(|p| *p -= 1);
                    }
                    _ => return Err(shape_err(format!("Squeeze of axis {ax}, which is not of size 1 (after the Transpose by {perm:?})"))),
                }
            }
            if perm[0] != 0 {
                self.vals
                    .insert(n.outputs()[0].name.clone(), Val::Moved { id, shape, perm });
                return Ok(());
            }
            let x = self.as_shape(id, &shape, n.name())?;
            let per: Vec<u32> = perm[1..].iter().map(|&p| p as u32 - 1).collect();
            if per.iter().enumerate().all(|(i, &p)| p as usize == i) {
                self.set(n, x, shape);
                return Ok(());
            }
            let y = self.emit(n, Op::Transpose(Transpose { perm: per }), &[x])?;
            let s = self.b.value_shape(y).to_vec();
            self.set(n, y, s);
            return Ok(());
        }
        let (x, mut shape) = self.rt(a)?;
        for ax in norm(shape.len() + 1) {
            if ax < 1 || ax as usize > shape.len() || shape[ax as usize - 1] != 1 {
                return Err(shape_err(format!(
                    "Squeeze of axis {ax} of a value of shape [N, {shape:?}]"
                )));
            }
            shape.remove(ax as usize - 1);
        }
        self.set(n, x, shape);
        Ok(())
    }

    fn conv(
        &mut self,
        n: &Node,
        inputs: &[Argument],
        c: &onnx_ir::node::conv2d::Conv2dConfig,
    ) -> NodeResult {
        let (x, shape) = self.input(n, 0)?;
        if shape.len() != 3 {
            return Err(shape_err(format!(
                "Conv of a rank-{} value",
                shape.len() + 1
            )));
        }
        let (padding, uneven) = split_padding(&c.padding, &c.auto_pad)?;
        let x = self.pad_first(n, x, uneven, 0.0)?;
        let (wid, bias) = self.weight_and_bias(n, inputs)?;
        let op = Op::Conv2d(Conv2d {
            weight: wid,
            bias,
            stride: c.stride.map(|s| s as u32),
            padding,
            dilation: c.dilation.map(|d| d as u32),
            groups: c.groups as u32,
            act: Activation::None,
        });
        let y = self.emit(n, op, &[x])?;
        let oshape = self.b.value_shape(y).to_vec();
        self.set(n, y, oshape);
        Ok(())
    }

    /// `x` padded by `uneven` (`[top, left, bottom, right]`) with `value`, for a convolution or
    /// pooling whose own padding is the symmetric part.
    fn pad_first(
        &mut self,
        n: &Node,
        x: ValueId,
        uneven: Option<[u32; 4]>,
        value: f32,
    ) -> std::result::Result<ValueId, NodeError> {
        let Some(pads) = uneven else {
            return Ok(x);
        };
        self.b
            .node(
                &format!("{}.pad", n.name()),
                Op::Pad(Pad { pads, value }),
                &[x],
            )
            .map_err(|e| shape_err(format!("{e:#}")))
    }

    /// A convolution's weight (input 1) and optional bias (input 2) as model tensors.
    fn weight_and_bias(
        &mut self,
        n: &Node,
        inputs: &[Argument],
    ) -> std::result::Result<(TensorId, Option<TensorId>), NodeError> {
        let (w, _) = self.weight(&inputs[1], format!("{}.weight", n.name()))?;
        let wid = self.b.tensor(w);
        let bias = match inputs.get(2).filter(|a| !a.is_optional()) {
            Some(a) => {
                let (t, _) = self.weight(a, format!("{}.bias", n.name()))?;
                Some(self.b.tensor(t))
            }
            None => None,
        };
        Ok((wid, bias))
    }

    fn conv_transpose(
        &mut self,
        n: &Node,
        inputs: &[Argument],
        c: &onnx_ir::node::conv_transpose2d::ConvTranspose2dConfig,
    ) -> NodeResult {
        use onnx_ir::node::padding::AutoPad;
        let (x, shape) = self.input(n, 0)?;
        if shape.len() != 3 {
            return Err(shape_err(format!(
                "ConvTranspose of a rank-{} value",
                shape.len() + 1
            )));
        }
        if c.groups != 1 {
            return Err(format!("ConvTranspose with {} groups (only 1)", c.groups).into());
        }
        if c.output_shape.is_some() || !matches!(c.auto_pad, AutoPad::NotSet | AutoPad::Valid) {
            return Err("ConvTranspose with output_shape or SAME auto_pad".into());
        }
        let (wid, bias) = self.weight_and_bias(n, inputs)?;
        let u = |p: [usize; 2]| p.map(|v| v as u32);
        let op = Op::ConvTranspose2d(ConvTranspose2d {
            weight: wid,
            bias,
            stride: u(c.stride),
            padding: if matches!(c.auto_pad, AutoPad::Valid) {
                [0, 0]
            } else {
                u(c.padding)
            },
            output_padding: u(c.padding_out),
            dilation: u(c.dilation),
        });
        let y = self.emit(n, op, &[x])?;
        let oshape = self.b.value_shape(y).to_vec();
        self.set(n, y, oshape);
        Ok(())
    }

    /// Resize in nearest mode by integer factors on H and W whose coordinate rule makes it a
    /// plain replication: `asymmetric` with `floor`, or the half-pixel modes with rounding.
    fn resize(&mut self, n: &Node, c: &onnx_ir::node::resize::ResizeConfig) -> NodeResult {
        use onnx_ir::node::resize::{
            CoordinateTransformMode as Ct, NearestMode as Nm, ResizeMode, ResizeScales, ResizeSizes,
        };
        let (x, shape) = self.input(n, 0)?;
        if shape.len() != 3 {
            return Err(shape_err(format!(
                "Resize of a rank-{} value",
                shape.len() + 1
            )));
        }
        if c.mode != ResizeMode::Nearest {
            return Err(format!("Resize in {:?} mode (only nearest)", c.mode).into());
        }
        let replicates = matches!(
            (&c.coordinate_transformation_mode, &c.nearest_mode),
            (Ct::Asymmetric, Nm::Floor)
                | (
                    Ct::HalfPixel | Ct::PytorchHalfPixel,
                    Nm::RoundPreferFloor | Nm::RoundPreferCeil
                )
        );
        if !replicates {
            return Err(format!(
                "Resize with {:?} coordinates and {:?} rounding (only asymmetric with floor, or half_pixel with rounding)",
                c.coordinate_transformation_mode, c.nearest_mode
            )
            .into());
        }
        let factors: Vec<f64> = match (&c.scales, &c.sizes) {
            (Some(ResizeScales::Static(s)), _) if !s.is_empty() => {
                s.iter().map(|&v| v as f64).collect()
            }
            (_, Some(ResizeSizes::Static(s))) if !s.is_empty() => {
                let spatial = &s[s.len().saturating_sub(2)..];
                spatial
                    .iter()
                    .zip(&shape[1..])
                    .map(|(&o, &i)| o as f64 / i as f64)
                    .collect()
            }
            _ => return Err("Resize to a computed size or scale is not supported".into()),
        };
        let spatial = &factors[factors.len().saturating_sub(2)..];
        let lead_ok = factors[..factors.len() - spatial.len()]
            .iter()
            .all(|&f| f == 1.0);
        let scale: Vec<u32> = spatial
            .iter()
            .filter(|f| f.fract() == 0.0 && **f >= 1.0)
            .map(|&f| f as u32)
            .collect();
        let (true, &[sh, sw]) = (lead_ok, &scale[..]) else {
            return Err(shape_err(format!(
                "Resize by {factors:?} (only whole factors on height and width)"
            )));
        };
        let y = self.emit(n, Op::Upsample(Upsample { scale: [sh, sw] }), &[x])?;
        self.set(n, y, vec![shape[0], shape[1] * sh, shape[2] * sw]);
        Ok(())
    }

    /// `y = alpha * x W' + beta * c`, with `W'` the weight as given (`[out, in]`) or transposed
    /// (`transposed`: stored `[in, out]`).
    fn linear(
        &mut self,
        n: &Node,
        w: &Argument,
        transposed: bool,
        alpha: f32,
        bias: Option<&Argument>,
        beta: f32,
    ) -> NodeResult {
        let (x, shape) = self.input(n, 0)?;
        if shape.is_empty() {
            return Err(shape_err("a matrix product of a [N] value"));
        }
        let (mut wt, c) = self.weight(w, format!("{}.weight", n.name()))?;
        if c.shape.len() != 2 {
            return Err(NodeError::from(format!(
                "weight of shape {:?} is not a matrix",
                c.shape
            )));
        }
        if transposed {
            let (i, o) = (c.shape[0], c.shape[1]);
            wt.data = (0..o * i).map(|k| c.data[(k % i) * o + k / i]).collect();
            wt.shape = vec![o as u32, i as u32];
        }
        if alpha != 1.0 {
            wt.data.iter_mut().for_each(|v| *v *= alpha);
        }
        let out = wt.shape[0] as usize;
        let wid = self.b.tensor(wt);
        let bias = match bias.filter(|a| !a.is_optional()) {
            Some(a) => {
                let (mut t, c) = self.weight(a, format!("{}.bias", n.name()))?;
                if c.data.len() == 1 && out > 1 {
                    t.data = vec![c.data[0]; out];
                } else if c.data.len() != out {
                    return Err(NodeError::from(format!(
                        "bias of shape {:?} for {out} outputs",
                        c.shape
                    )));
                }
                t.shape = vec![out as u32];
                t.data.iter_mut().for_each(|v| *v *= beta);
                Some(self.b.tensor(t))
            }
            None => None,
        };
        let act = Activation::None;
        let op = if shape.len() == 1 {
            Op::Linear(Linear {
                weight: wid,
                bias,
                act,
            })
        } else {
            Op::LinearRows(LinearRows {
                weight: wid,
                bias,
                act,
            })
        };
        let y = self.emit(n, op, &[x])?;
        let mut shape = shape;
        *shape.last_mut().expect("checked above") = out as u32;
        self.set(n, y, shape);
        Ok(())
    }

    fn pool(&mut self, n: &Node, p: Pool<'_>) -> NodeResult {
        if p.dilation != [1, 1] {
            return Err("dilated pooling is not supported".into());
        }
        let Pool {
            kernel,
            stride,
            padding: pad,
            auto_pad,
            ceil_mode,
            avg_count_pad,
            ..
        } = p;
        let (x, shape) = self.input(n, 0)?;
        if shape.len() != 3 {
            return Err(shape_err(format!(
                "pooling of a rank-{} value",
                shape.len() + 1
            )));
        }
        let mut pads = explicit_pads(pad, auto_pad)?;
        let kernel = kernel.map(|k| k as u32);
        let stride = stride.map(|s| s as u32);
        if ceil_mode {
            // The windows that start inside the input or its leading padding, where the floor
            // rule drops a last partial one (ONNX Runtime's and PyTorch's rule): extra cells at
            // the end, which never win a maximum and never count in an average.
            for a in 0..2 {
                let (input, k, st) = (shape[1 + a], kernel[a], stride[a]);
                let span = input + pads[a] + pads[a + 2];
                if span < k || st == 0 {
                    return Err(shape_err("the pooling window does not fit the input"));
                }
                let mut out = (span - k).div_ceil(st) + 1;
                if (out - 1) * st >= input + pads[a] {
                    out -= 1;
                }
                let extra = ((out - 1) * st + k).saturating_sub(span);
                if extra > 0 && avg_count_pad == Some(true) {
                    return Err(shape_err(
                        "AveragePool with ceil_mode = 1 and count_include_pad = 1 where ceil_mode adds a window (not supported)",
                    ));
                }
                pads[a + 2] += extra;
            }
        }
        let (padding, uneven) = split_pads(pads);
        if let (Some(_), Some(false)) = (uneven, avg_count_pad) {
            // A Pad would be counted in the mean: the op takes the uneven padding itself.
            let op = Op::AvgPool2dUneven(AvgPool2dUneven {
                kernel,
                stride,
                pads,
            });
            let y = self.emit(n, op, &[x])?;
            let s = self.b.value_shape(y).to_vec();
            self.set(n, y, s);
            return Ok(());
        }
        // Max pooling never picks a padding cell; an average that counts them adds 0.
        let fill = if avg_count_pad.is_none() {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        let x = self.pad_first(n, x, uneven, fill)?;
        let op = match avg_count_pad {
            None => Op::MaxPool2d(MaxPool2d {
                kernel,
                stride,
                padding,
            }),
            Some(count_include_pad) => Op::AvgPool2d(AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
            }),
        };
        let y = self.emit(n, op, &[x])?;
        let s = self.b.value_shape(y).to_vec();
        self.set(n, y, s);
        Ok(())
    }

    /// Add/Sub/Mul/Div: of two computed values of one shape (Add only), `x * sigmoid(x)`
    /// (SiLU), or of a computed value and a per-channel (or scalar) constant, which becomes a
    /// per-channel affine map (an inference BatchNorm with mean 0 and variance 1).
    fn binary(&mut self, n: &Node, ins: &[Argument], kind: Binary) -> NodeResult {
        if self.ln_binary(n, ins, kind)? {
            return Ok(());
        }
        let (ca, cb) = (self.constant(&ins[0]), self.constant(&ins[1]));
        match (ca, cb) {
            (None, None) => {
                if kind == Binary::Mul {
                    let (a, b) = (&ins[0].name, &ins[1].name);
                    let x = if self.sigmoid_of.get(b) == Some(a) {
                        Some(0)
                    } else if self.sigmoid_of.get(a) == Some(b) {
                        Some(1)
                    } else {
                        None
                    };
                    if let Some(i) = x {
                        let (x, shape) = self.input(n, i)?;
                        let y = self.emit(n, Op::Act(Activation::Silu), &[x])?;
                        self.set(n, y, shape);
                        return Ok(());
                    }
                }
                let (a, sa) = self.input(n, 0)?;
                let (b, sb) = self.input(n, 1)?;
                if kind == Binary::Mul {
                    // The map first, the per-channel gate second.
                    let gate_of = nap_runtime::ops::Mul::is_gate;
                    let (a, b, shape) = if sa == sb || gate_of(&sa, &sb) {
                        (a, b, sa)
                    } else if gate_of(&sb, &sa) {
                        (b, a, sb)
                    } else {
                        return Err(shape_err(format!(
                            "Mul with broadcasting other than a per-channel gate ({sa:?} * {sb:?}) is not supported"
                        )));
                    };
                    let y = self.emit(n, Op::Mul, &[a, b])?;
                    self.set(n, y, shape);
                    return Ok(());
                }
                if kind != Binary::Add {
                    return Err(NodeError::from(format!(
                        "{kind:?} of two computed tensors is not supported (only Add and Mul)"
                    )));
                }
                if sa != sb {
                    return Err(shape_err(format!(
                        "Add with broadcasting ({sa:?} + {sb:?}) is not supported"
                    )));
                }
                let op = Op::Add(Add {
                    act: Activation::None,
                });
                let y = self.emit(n, op, &[a, b])?;
                self.set(n, y, sa);
                Ok(())
            }
            (Some(c), None) | (None, Some(c)) => {
                let const_first = self.constant(&ins[0]).is_some();
                if const_first && matches!(kind, Binary::Sub | Binary::Div) {
                    return Err(NodeError::from(format!(
                        "{kind:?} of a constant by a computed tensor is not supported"
                    )));
                }
                let (x, shape) = self.input(n, if const_first { 1 } else { 0 })?;
                let per = per_channel(&c, &shape)
                    .ok_or_else(|| shape_err(format!("{kind:?} by a constant of shape {:?} (only per-channel or scalar constants broadcast to {shape:?})", c.shape)))?;
                let (gamma, beta): (Vec<f32>, Vec<f32>) = match kind {
                    Binary::Add => (vec![1.0; per.len()], per),
                    Binary::Sub => (vec![1.0; per.len()], per.iter().map(|v| -v).collect()),
                    Binary::Mul => (per.clone(), vec![0.0; per.len()]),
                    Binary::Div => (per.iter().map(|v| 1.0 / v).collect(), vec![0.0; per.len()]),
                };
                if gamma.iter().chain(&beta).any(|v| !v.is_finite()) {
                    return Err("the constant holds a non-finite value (or a zero divisor)".into());
                }
                let ch = gamma.len() as u32;
                let mut t = |what: &str, data: Vec<f32>| {
                    self.b.tensor(HostTensor {
                        name: format!("{}.{what}", n.name()),
                        shape: vec![ch],
                        data,
                    })
                };
                let op = Op::BatchNorm(BatchNorm {
                    gamma: t("gamma", gamma),
                    beta: t("beta", beta),
                    mean: t("mean", vec![0.0; ch as usize]),
                    var: t("var", vec![1.0; ch as usize]),
                    eps: 0.0,
                });
                let y = self.emit(n, op, &[x])?;
                self.set(n, y, shape);
                Ok(())
            }
            (Some(_), Some(_)) => Err("an op of two constants (not folded)".into()),
        }
    }
}

/// ONNX axis or index `a` of `len` (of a rank or an axis): negative counts from the end.
fn from_end(a: i64, len: i64) -> i64 {
    if a < 0 {
        a + len
    } else {
        a
    }
}

/// `start..end` of an axis of `len` under ONNX's conventions (negative from the end, clamped).
fn clamp_range(start: i64, end: i64, len: i64) -> (u32, u32) {
    let clamp = |v: i64| from_end(v, len).clamp(0, len) as u32;
    let (a, b) = (clamp(start), clamp(end));
    (a, b.max(a))
}

/// A MaxPool or AveragePool as onnx-ir parsed it (`avg_count_pad`: `None` for max pooling,
/// else AveragePool's `count_include_pad`).
struct Pool<'a> {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: &'a onnx_ir::node::padding::PaddingConfig2d,
    auto_pad: &'a onnx_ir::node::padding::AutoPad,
    ceil_mode: bool,
    avg_count_pad: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// A constant that broadcasts against the per-example shape `x` as one value per channel
/// (the first per-example dimension): its values, one per channel.
fn per_channel(c: &Const, x: &[u32]) -> Option<Vec<f32>> {
    let channels = *x.first()? as usize;
    if c.data.len() == 1 {
        return Some(vec![c.data[0]; channels]);
    }
    // Right-aligned broadcasting against [N, x...]: drop leading ones, then the constant must
    // be [C, 1, ..., 1] spanning exactly the per-example rank.
    let mut s: &[usize] = &c.shape;
    while s.len() > x.len() && s[0] == 1 {
        s = &s[1..];
    }
    if s.len() != x.len() || s[0] != channels || s[1..].iter().any(|&d| d != 1) {
        return None;
    }
    Some(c.data.clone())
}

/// The padding `[top, left, bottom, right]` split into its symmetric part (which the op
/// itself applies) and the rest, `None` where the padding is symmetric.
fn split_padding(
    p: &onnx_ir::node::padding::PaddingConfig2d,
    auto: &onnx_ir::node::padding::AutoPad,
) -> std::result::Result<([u32; 2], Option<[u32; 4]>), String> {
    Ok(split_pads(explicit_pads(p, auto)?))
}

/// The padding `[top, left, bottom, right]` of a window.
fn explicit_pads(
    p: &onnx_ir::node::padding::PaddingConfig2d,
    auto: &onnx_ir::node::padding::AutoPad,
) -> std::result::Result<[u32; 4], String> {
    use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};
    match auto {
        AutoPad::NotSet | AutoPad::Valid => {}
        other => {
            return Err(format!(
                "auto_pad {other:?} is not supported; export with explicit pads"
            ))
        }
    }
    Ok(match *p {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            [top, left, bottom, right].map(|v| v as u32)
        }
    })
}

/// `[top, left, bottom, right]` split into its symmetric part and the rest, `None` where the
/// padding is symmetric.
fn split_pads([t, l, b, r]: [u32; 4]) -> ([u32; 2], Option<[u32; 4]>) {
    let sym = [t.min(b), l.min(r)];
    let rest = [t - sym[0], l - sym[1], b - sym[0], r - sym[1]];
    (sym, (rest != [0; 4]).then_some(rest))
}

/// The per-example shape of `Reshape(x, target)`, `x` of per-example shape `shape` and
/// `target` the ONNX shape with its batch entry first (`0`: copy, `-1`: infer).
fn reshape_target(shape: &[u32], target: &[i64]) -> std::result::Result<Vec<u32>, String> {
    let numel: i64 = shape.iter().map(|&d| d as i64).product();
    let Some((&first, rest)) = target.split_first() else {
        return Err("Reshape to a scalar".into());
    };
    let mut out = Vec::with_capacity(rest.len());
    let mut infer = None;
    for (i, &d) in rest.iter().enumerate() {
        match d {
            0 => {
                out.push(*shape.get(i).ok_or_else(|| {
                    format!("Reshape copies dimension {} that the input lacks", i + 1)
                })? as i64)
            }
            -1 => {
                if infer.is_some() || first == -1 {
                    return Err(format!("Reshape to {target:?} leaves the batch ambiguous"));
                }
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(d),
            d => return Err(format!("Reshape to {target:?}: bad dimension {d}")),
        }
    }
    if !(first == 0 || first == -1 || first == 1) {
        return Err(format!(
            "Reshape to {target:?} changes the batch dimension (first entry must be 0, -1 or the batch size 1)"
        ));
    }
    let known: i64 = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || numel % known != 0 {
            return Err(format!("cannot reshape {shape:?} to {target:?}"));
        }
        out[i] = numel / known;
    }
    if out.iter().product::<i64>() != numel {
        return Err(format!(
            "cannot reshape per-example {shape:?} to {target:?}"
        ));
    }
    Ok(out.into_iter().map(|d| d as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_target_handles_batch_conventions() {
        assert_eq!(reshape_target(&[64, 2, 2], &[0, -1]).unwrap(), vec![256]);
        assert_eq!(reshape_target(&[64, 2, 2], &[-1, 256]).unwrap(), vec![256]);
        assert_eq!(reshape_target(&[64, 2, 2], &[1, 256]).unwrap(), vec![256]);
        assert_eq!(
            reshape_target(&[64, 2, 2], &[0, 0, 4]).unwrap(),
            vec![64, 4]
        );
        assert!(reshape_target(&[64, 2, 2], &[2, 128]).is_err());
        assert!(reshape_target(&[64, 2, 2], &[-1, -1]).is_err());
        assert!(reshape_target(&[64, 2, 2], &[0, 100]).is_err());
    }

    #[test]
    fn per_channel_broadcasts() {
        let c = |shape: Vec<usize>, n: usize| Const {
            shape,
            data: (0..n).map(|v| v as f32).collect(),
        };
        assert_eq!(
            per_channel(&c(vec![3, 1, 1], 3), &[3, 5, 5]).unwrap().len(),
            3
        );
        assert_eq!(
            per_channel(&c(vec![1, 3, 1, 1], 3), &[3, 5, 5])
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            per_channel(&c(vec![1], 1), &[3, 5, 5]).unwrap(),
            vec![0.0; 3]
        );
        assert!(per_channel(&c(vec![5], 5), &[3, 5, 5]).is_none());
        assert!(per_channel(&c(vec![3, 5, 5], 75), &[3, 5, 5]).is_none());
        assert_eq!(per_channel(&c(vec![1, 4], 4), &[4]).unwrap().len(), 4);
    }
}
