//! The pruner's in-memory model: the runtime's graph IR plus host-side f32 tensors.

use anyhow::{anyhow, bail, Context, Result};
use nap_runtime::format::{Graph, Metadata, Node, Op, TensorId, ValueId, ValueInfo};
use nap_runtime::graph::{self, TensorTable};

use crate::ops::host;

/// A model the pruner works on: graph (same types as the `.nap` file), tensors indexed by
/// [`TensorId`], metadata.
#[derive(Clone, Debug)]
pub struct HostModel {
    pub graph: Graph,
    pub tensors: Vec<HostTensor>,
    pub meta: Metadata,
}

/// A dense row-major f32 tensor.
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<u32>,
    pub data: Vec<f32>,
}

/// Name and shape only: a model's weights would fill a test log.
impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTensor({:?}, {:?})", self.name, self.shape)
    }
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The shape as `usize`s.
    pub fn dims(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| d as usize).collect()
    }
}

/// `dims` as a tensor shape, or an error naming `what` if a dimension exceeds `u32`.
pub fn shape_u32(dims: &[usize], what: &str) -> Result<Vec<u32>> {
    dims.iter()
        .map(|&d| u32::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("{what}: dimension too large in {dims:?}"))
}

struct Shapes<'a>(&'a [HostTensor]);

impl TensorTable for Shapes<'_> {
    fn tensor_shape(&self, id: TensorId) -> Option<&[u32]> {
        self.0.get(id as usize).map(|t| t.shape.as_slice())
    }

    fn tensor_is_dense(&self, id: TensorId) -> bool {
        (id as usize) < self.0.len()
    }
}

impl HostModel {
    /// Checks the graph with the runtime's own validator.
    pub fn validate(&self) -> Result<()> {
        graph::validate_graph(&self.graph, &Shapes(&self.tensors)).map_err(|e| anyhow!("{e}"))
    }

    pub fn input_shape(&self) -> &[u32] {
        &self.graph.values[self.graph.inputs[0] as usize].shape
    }

    pub fn output_shape(&self) -> &[u32] {
        &self.graph.values[self.graph.outputs[0] as usize].shape
    }

    /// Weight tensors of prunable layers (Linear and Conv2d), in graph order.
    pub fn prunable(&self) -> Vec<(usize, TensorId)> {
        self.graph
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i, n.op.weight_bias()?.0)))
            .collect()
    }

    /// Weights in each prunable layer ([`HostModel::prunable`] order).
    pub fn prunable_sizes(&self) -> Vec<usize> {
        self.prunable()
            .iter()
            .map(|&(_, w)| self.tensors[w as usize].numel())
            .collect()
    }

    /// Recomputes every value's shape from the inputs and the tensors (after tensors changed
    /// shape), and validates the graph.
    pub fn reinfer_shapes(&mut self) -> Result<()> {
        let g = &mut self.graph;
        for i in 0..g.nodes.len() {
            let ins: Vec<&[u32]> = g.nodes[i]
                .inputs
                .iter()
                .map(|&v| g.values[v as usize].shape.as_slice())
                .collect();
            if let Some(op) = host(&g.nodes[i].op).refit(&ins) {
                g.nodes[i].op = op;
            }
            let shape = graph::infer(&Shapes(&self.tensors), &g.nodes[i], &ins)
                .map_err(|e| anyhow!("{e}"))?;
            let out = g.nodes[i].output as usize;
            g.values[out].shape = shape;
        }
        self.validate()
    }

    pub fn param_count(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }
}

/// The output shape of `node` from its inputs' shapes in `values` and the tensors.
fn infer_output(tensors: &[HostTensor], values: &[ValueInfo], node: &Node) -> Result<Vec<u32>> {
    let shapes: Vec<&[u32]> = node
        .inputs
        .iter()
        .map(|&v| values[v as usize].shape.as_slice())
        .collect();
    graph::infer(&Shapes(tensors), node, &shapes).map_err(|e| anyhow!("{e}"))
}

/// Builds a [`HostModel`] node by node, inferring every value's shape.
pub struct GraphBuilder {
    graph: Graph,
    tensors: Vec<HostTensor>,
}

impl GraphBuilder {
    pub fn new() -> Self {
        GraphBuilder {
            graph: Graph {
                values: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                nodes: Vec::new(),
            },
            tensors: Vec::new(),
        }
    }

    pub fn input(&mut self, name: &str, shape: &[u32]) -> ValueId {
        let id = self.graph.values.len() as ValueId;
        self.graph.values.push(ValueInfo {
            name: name.to_string(),
            shape: shape.to_vec(),
        });
        self.graph.inputs.push(id);
        id
    }

    pub fn tensor(&mut self, t: HostTensor) -> TensorId {
        self.tensors.push(t);
        (self.tensors.len() - 1) as TensorId
    }

    pub fn value_shape(&self, v: ValueId) -> &[u32] {
        &self.graph.values[v as usize].shape
    }

    /// Appends a node and returns its output value.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let node = Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            output: self.graph.values.len() as ValueId,
        };
        let shape = infer_output(&self.tensors, &self.graph.values, &node)?;
        self.graph.values.push(ValueInfo {
            name: name.to_string(),
            shape,
        });
        let out = node.output;
        self.graph.nodes.push(node);
        Ok(out)
    }

    pub fn finish(mut self, outputs: &[ValueId], meta: Metadata) -> Result<HostModel> {
        self.graph.outputs = outputs.to_vec();
        let m = HostModel {
            graph: self.graph,
            tensors: self.tensors,
            meta,
        };
        m.validate()?;
        Ok(m)
    }
}

impl Default for GraphBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A state dict being consumed by an architecture builder: every key must be used exactly once.
pub struct StateDict {
    entries: Vec<Option<HostTensor>>,
}

impl StateDict {
    pub fn new(tensors: Vec<HostTensor>) -> Self {
        StateDict {
            entries: tensors.into_iter().map(Some).collect(),
        }
    }

    /// Removes `key`, checking its shape.
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.remove(key)?;
        if t.dims() != shape {
            bail!(
                "checkpoint tensor {key:?} has shape {:?}, the architecture expects {:?} (wrong --arch?)",
                t.shape,
                shape
            );
        }
        checked(t)
    }

    /// Removes `key`, of any shape of rank `rank` (a channel-pruned checkpoint).
    pub fn take_rank(&mut self, key: &str, rank: usize) -> Result<HostTensor> {
        let t = self.remove(key)?;
        if t.shape.len() != rank {
            bail!(
                "checkpoint tensor {key:?} has shape {:?}, the architecture expects rank {rank} (wrong --arch?)",
                t.shape
            );
        }
        checked(t)
    }

    /// Removes `key` if the checkpoint has it.
    pub fn take_optional(&mut self, key: &str) -> Option<Result<HostTensor>> {
        self.remove(key).ok().map(checked)
    }

    fn remove(&mut self, key: &str) -> Result<HostTensor> {
        let slot = self
            .entries
            .iter_mut()
            .find(|e| e.as_ref().is_some_and(|t| t.name == key))
            .ok_or_else(|| anyhow!("checkpoint has no tensor {key:?} (wrong --arch?)"))?;
        Ok(slot.take().expect("found above"))
    }

    /// Fails if tensors remain unused (the checkpoint is not of this architecture).
    pub fn finish(self) -> Result<()> {
        let left: Vec<&str> = self
            .entries
            .iter()
            .flatten()
            .map(|t| t.name.as_str())
            .filter(|n| !n.ends_with("num_batches_tracked"))
            .collect();
        if !left.is_empty() {
            bail!(
                "checkpoint has {} tensors this architecture does not use, e.g. {:?} (wrong --arch?)",
                left.len(),
                &left[..left.len().min(3)]
            );
        }
        Ok(())
    }
}

/// `t`, refusing non-finite values.
fn checked(t: HostTensor) -> Result<HostTensor> {
    t.check_finite("checkpoint tensor")?;
    Ok(t)
}

impl HostTensor {
    /// An error naming the tensor (as `what`), the first NaN or infinite value and how many
    /// there are.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            let n = self.data.iter().filter(|v| !v.is_finite()).count();
            bail!(
                "{what} {:?} holds {n} non-finite value(s), the first ({}) at index {i}",
                self.name,
                self.data[i]
            );
        }
        Ok(())
    }
}

/// Key of the model card in the metadata of the safetensors checkpoints nap writes.
pub const MODEL_CARD_KEY: &str = "nap.model";

/// A [`HostModel`] without its tensor data: the graph, every tensor's name and shape, and the
/// metadata. Stored (as JSON) in every checkpoint nap writes, so that the checkpoint alone
/// rebuilds the model, whatever its source (ONNX, a built-in architecture, a channel-slimmed
/// run) and without an architecture name.
#[derive(serde::Serialize, serde::Deserialize)]
struct ModelCard {
    graph: Graph,
    tensors: Vec<(String, Vec<u32>)>,
    meta: Metadata,
}

/// The model card of `m` (see [`MODEL_CARD_KEY`]).
pub fn model_card(m: &HostModel) -> String {
    let card = ModelCard {
        graph: m.graph.clone(),
        tensors: m
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect(),
        meta: m.meta.clone(),
    };
    serde_json::to_string(&card).expect("the graph serialises")
}

/// Rebuilds a model from its card and the checkpoint's tensors (taken by name; each must have
/// the card's shape and finite values; extra tensors are an error).
pub fn from_model_card(card: &str, tensors: Vec<HostTensor>) -> Result<HostModel> {
    let card: ModelCard =
        serde_json::from_str(card).context("the checkpoint's model card is not readable")?;
    let mut sd = StateDict::new(tensors);
    let mut out = Vec::with_capacity(card.tensors.len());
    for (name, shape) in &card.tensors {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        out.push(sd.take(name, &shape)?);
    }
    sd.finish()?;
    let m = HostModel {
        graph: card.graph,
        tensors: out,
        meta: card.meta,
    };
    m.validate()
        .context("the checkpoint's model card does not describe a valid graph")?;
    Ok(m)
}

/// Writes `m`'s tensors to a safetensors checkpoint with its model card (atomically).
pub fn write_checkpoint(path: &std::path::Path, m: &HostModel) -> Result<()> {
    crate::import::write_safetensors_with(path, &m.tensors, Some((MODEL_CARD_KEY, &model_card(m))))
}
