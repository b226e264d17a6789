//! Channel dependency groups: every tensor slice coupled to one channel index, found once over
//! the graph IR, so that a channel is removed from all of them together.
//!
//! Each value `[C, ...]` (or `[F]`) has one *slot* per channel (feature). Ops tie slots together
//! (union-find), each in its `couple` ([`crate::ops::HostOp::couple`]):
//!
//! * Linear and Conv2d with `groups == 1` end a channel (their input columns are *consumers*) and
//!   start new ones (their output rows are *producers*);
//! * a depthwise Conv2d (`groups == C_in == C_out`), BatchNorm, activations, pools and global
//!   pooling carry channel `c` of their input to channel `c` of their output;
//! * Add ties channel `c` of both inputs and of its output (a residual stream becomes one group
//!   over all of its blocks); Concat ties each input channel to its offset in the output;
//! * Flatten ties channel `c` of `[C, H, W]` to the `H·W` features `c·H·W + k` it becomes, so a
//!   Linear that reads a flattened map consumes `H·W` columns per channel.
//!
//! Slots of the network's inputs and outputs, and of anything an op does not model (the default:
//! Reshape, Softmax, grouped convolutions other than depthwise), are *pinned*: their groups are
//! never pruned. Every other class of slots with at least one producer is a [`Group`].

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{bail, Result};
use nap_runtime::format::ValueId;

use crate::ir::HostModel;
use crate::ops::{host, Coupling};

/// One tensor slice that belongs to a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    /// Output row `row` (weight row and bias entry) of a Linear or Conv2d with `groups == 1`.
    Producer { node: usize, row: usize },
    /// Columns `cols` of a Linear or Conv2d (`groups == 1`) weight flattened to
    /// `[out, in·kh·kw]`, fed by channel `slot` of the node's input: one column of a Linear, the
    /// `kh·kw` columns of one input channel of a convolution.
    Consumer {
        node: usize,
        slot: usize,
        cols: Range<usize>,
    },
    /// Entry `ch` of a BatchNorm's four vectors.
    Norm { node: usize, ch: usize },
    /// Channel `ch` of a depthwise Conv2d: its weight row (input and output channel) and bias.
    Depthwise { node: usize, ch: usize },
    /// Input channel `ch` of a Slice along channels (an ONNX Split): removing it moves the
    /// slice's range.
    Sliced { node: usize, ch: usize },
}

impl Member {
    pub fn node(&self) -> usize {
        match *self {
            Member::Producer { node, .. }
            | Member::Consumer { node, .. }
            | Member::Norm { node, .. }
            | Member::Depthwise { node, .. }
            | Member::Sliced { node, .. } => node,
        }
    }
}

/// The members of one prunable channel, in graph order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub members: Vec<Member>,
}

impl Group {
    /// A readable name: the first producer's node and row, e.g. `conv1[3]`.
    pub fn name(&self, m: &HostModel) -> String {
        match self.members.iter().find_map(|mb| match *mb {
            Member::Producer { node, row } => Some((node, row)),
            _ => None,
        }) {
            Some((node, row)) => format!("{}[{row}]", m.graph.nodes[node].name),
            None => "?".to_string(),
        }
    }

    pub fn producers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.members.iter().filter_map(|mb| match *mb {
            Member::Producer { node, row } => Some((node, row)),
            _ => None,
        })
    }

    pub fn consumers(&self) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
        self.members.iter().filter_map(|mb| match mb {
            Member::Consumer { node, cols, .. } => Some((*node, cols.clone())),
            _ => None,
        })
    }
}

/// The dependency groups of a model.
#[derive(Clone, Debug)]
pub struct Groups {
    pub groups: Vec<Group>,
    /// `slot_group[v][c]`: the group of channel `c` of value `v`, `None` if pinned.
    pub slot_group: Vec<Vec<Option<usize>>>,
}

/// The root of `x`'s class in the union-find forest `parent` (halving the path on the way).
pub(crate) fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Channels per example of a value: the first dimension.
fn channels(m: &HostModel, v: ValueId) -> usize {
    m.graph.values[v as usize]
        .shape
        .first()
        .copied()
        .unwrap_or(1) as usize
}

/// Finds the dependency groups of `m`.
pub fn analyze(m: &HostModel) -> Result<Groups> {
    let g = &m.graph;
    let mut offset = Vec::with_capacity(g.values.len() + 1);
    let mut total = 0;
    for v in 0..g.values.len() {
        offset.push(total);
        total += channels(m, v as ValueId);
    }
    offset.push(total);
    let mut parent: Vec<usize> = (0..total).collect();
    let mut pinned = vec![false; total];
    let mut members: Vec<(usize, Member)> = Vec::new();
    for &v in g.inputs.iter().chain(&g.outputs) {
        pinned[offset[v as usize]..offset[v as usize + 1]].fill(true);
    }
    let mut users = vec![0usize; m.tensors.len()];
    for node in &g.nodes {
        node.op.for_each_tensor(|t| users[t as usize] += 1);
    }
    if let Some(t) = users.iter().position(|&u| u > 1) {
        bail!(
            "tensor {:?} is used by more than one node; channel groups need one owner per tensor",
            m.tensors[t].name
        );
    }
    for (index, node) in g.nodes.iter().enumerate() {
        host(&node.op).couple(&mut Coupling {
            m,
            index,
            node,
            offset: &offset,
            parent: &mut parent,
            pinned: &mut pinned,
            members: &mut members,
        });
    }
    let mut root_pinned = vec![false; total];
    for (s, &p) in pinned.iter().enumerate() {
        if p {
            let r = find(&mut parent, s);
            root_pinned[r] = true;
        }
    }
    let mut by_root: BTreeMap<usize, Group> = BTreeMap::new();
    for (s, mb) in members {
        let r = find(&mut parent, s);
        if !root_pinned[r] {
            by_root
                .entry(r)
                .or_insert_with(|| Group {
                    members: Vec::new(),
                })
                .members
                .push(mb);
        }
    }
    by_root.retain(|_, gr| gr.producers().next().is_some());
    let index: BTreeMap<usize, usize> = by_root.keys().enumerate().map(|(i, &r)| (r, i)).collect();
    let slot_group: Vec<Vec<Option<usize>>> = (0..g.values.len())
        .map(|v| {
            (offset[v]..offset[v + 1])
                .map(|s| index.get(&find(&mut parent, s)).copied())
                .collect()
        })
        .collect();
    Ok(Groups {
        groups: by_root.into_values().collect(),
        slot_group,
    })
}
