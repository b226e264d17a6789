//! Built-in architectures: map a checkpoint's state_dict keys onto the graph IR, or initialise
//! fresh weights for training.

use anyhow::{bail, Result};
use nap_runtime::format::{
    Activation, Add, BatchNorm, Conv2d, Linear, MaxPool2d, Metadata, Op, ValueId,
};
use rand::{Rng, SeedableRng};

use crate::ir::{GraphBuilder, HostModel, HostTensor, StateDict};

/// Architectures `--arch` accepts.
pub const ARCHS: &[(&str, &str)] = &[
    (
        "mnist-cnn",
        "MNIST CNN (M1): 3 conv 3x3 + maxpool, 1152-256-10",
    ),
    ("lenet-300-100", "LeNet-300-100 MLP, 784-300-100-10"),
    (
        "mlp-IN-H1-...-OUT",
        "any ReLU MLP, keys fc1..fcN (a 784 input takes 28x28 images)",
    ),
    (
        "lenet5-caffe",
        "LeNet-5-Caffe: conv 20-5x5, conv 50-5x5, fc 500, fc 10",
    ),
    ("mobilenet-v2", "MobileNetV2, torchvision ImageNet keys"),
    ("digits-cnn", "small CNN for the 8x8 digits (demo)"),
];

/// Role of a parameter, for initialisation.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Weight { fan_in: usize },
    Bias { fan_in: usize },
    BnGamma,
    BnBeta,
    BnMean,
    BnVar,
}

/// Where parameters come from.
pub trait ParamSource {
    fn get(&mut self, key: &str, shape: &[usize], role: Role) -> Result<HostTensor>;
}

impl ParamSource for StateDict {
    fn get(&mut self, key: &str, shape: &[usize], _role: Role) -> Result<HostTensor> {
        self.take(key, shape)
    }
}

/// Fresh He-uniform weights, zero biases, identity BatchNorm.
pub struct RandomInit(rand::rngs::StdRng);

impl RandomInit {
    pub fn new(seed: u64) -> Self {
        RandomInit(rand::rngs::StdRng::seed_from_u64(seed))
    }
}

impl ParamSource for RandomInit {
    fn get(&mut self, key: &str, shape: &[usize], role: Role) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        let data = match role {
            Role::Weight { fan_in } => {
                let b = (6.0 / fan_in as f32).sqrt();
                (0..n).map(|_| self.0.gen_range(-b..b)).collect()
            }
            Role::Bias { .. } | Role::BnBeta | Role::BnMean => vec![0.0; n],
            Role::BnGamma | Role::BnVar => vec![1.0; n],
        };
        Ok(HostTensor {
            name: key.to_string(),
            shape: shape.iter().map(|&d| d as u32).collect(),
            data,
        })
    }
}

struct Net<'s> {
    b: GraphBuilder,
    src: &'s mut dyn ParamSource,
}

impl Net<'_> {
    fn param(&mut self, key: &str, shape: &[usize], role: Role) -> Result<u32> {
        let t = self.src.get(key, shape, role)?;
        Ok(self.b.tensor(t))
    }

    fn channels(&self, v: ValueId) -> usize {
        self.b.value_shape(v)[0] as usize
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        prefix: &str,
        x: ValueId,
        out: usize,
        k: usize,
        stride: u32,
        pad: u32,
        groups: usize,
        bias: bool,
    ) -> Result<ValueId> {
        let cin = self.channels(x) / groups;
        let fan_in = cin * k * k;
        let weight = self.param(
            &format!("{prefix}.weight"),
            &[out, cin, k, k],
            Role::Weight { fan_in },
        )?;
        let bias = if bias {
            Some(self.param(&format!("{prefix}.bias"), &[out], Role::Bias { fan_in })?)
        } else {
            None
        };
        self.b.node(
            prefix,
            Op::Conv2d(Conv2d {
                weight,
                bias,
                stride: [stride; 2],
                padding: [pad; 2],
                dilation: [1, 1],
                groups: groups as u32,
                act: Activation::None,
            }),
            &[x],
        )
    }

    fn bn(&mut self, prefix: &str, x: ValueId) -> Result<ValueId> {
        let c = self.channels(x);
        let gamma = self.param(&format!("{prefix}.weight"), &[c], Role::BnGamma)?;
        let beta = self.param(&format!("{prefix}.bias"), &[c], Role::BnBeta)?;
        let mean = self.param(&format!("{prefix}.running_mean"), &[c], Role::BnMean)?;
        let var = self.param(&format!("{prefix}.running_var"), &[c], Role::BnVar)?;
        self.b.node(
            prefix,
            Op::BatchNorm(BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps: 1e-5,
            }),
            &[x],
        )
    }

    fn linear(&mut self, prefix: &str, x: ValueId, out: usize) -> Result<ValueId> {
        let fan_in = self.b.value_shape(x)[0] as usize;
        let weight = self.param(
            &format!("{prefix}.weight"),
            &[out, fan_in],
            Role::Weight { fan_in },
        )?;
        let bias = Some(self.param(&format!("{prefix}.bias"), &[out], Role::Bias { fan_in })?);
        self.b.node(
            prefix,
            Op::Linear(Linear {
                weight,
                bias,
                act: Activation::None,
            }),
            &[x],
        )
    }

    fn act(&mut self, name: &str, x: ValueId, a: Activation) -> Result<ValueId> {
        self.b.node(name, Op::Act(a), &[x])
    }

    fn maxpool(&mut self, name: &str, x: ValueId, k: u32) -> Result<ValueId> {
        self.b.node(
            name,
            Op::MaxPool2d(MaxPool2d {
                kernel: [k; 2],
                stride: [k; 2],
                padding: [0; 2],
            }),
            &[x],
        )
    }

    fn flatten(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.b.node(name, Op::Flatten, &[x])
    }
}

fn meta(arch: &str, preprocess: &str, labels: &str) -> Metadata {
    Metadata {
        arch: arch.to_string(),
        method: "dense".to_string(),
        preprocess: preprocess.to_string(),
        labels: labels.to_string(),
        ..Default::default()
    }
}

/// Builds `arch` with parameters from `src`.
pub fn build(arch: &str, src: &mut dyn ParamSource) -> Result<HostModel> {
    let mut n = Net {
        b: GraphBuilder::new(),
        src,
    };
    let relu = Activation::Relu;
    let model = match arch {
        "mnist-cnn" => {
            let mut x = n.b.input("input", &[1, 28, 28]);
            for (i, c) in [(0, 32), (3, 64), (6, 128)] {
                x = n.conv(&format!("conv_layers.{i}"), x, c, 3, 1, 1, 1, true)?;
                x = n.act(&format!("conv_layers.{}", i + 1), x, relu)?;
                x = n.maxpool(&format!("conv_layers.{}", i + 2), x, 2)?;
            }
            x = n.flatten("flatten", x)?;
            x = n.linear("fc_layers.0", x, 256)?;
            x = n.act("fc_layers.1", x, relu)?;
            x = n.linear("fc_layers.2", x, 10)?;
            n.b.finish(&[x], meta(arch, "mnist", "digits"))?
        }
        "lenet-300-100" => mlp(n, arch, &[784, 300, 100, 10])?,
        _ if arch.starts_with("mlp-") => {
            let dims = arch[4..]
                .split('-')
                .map(|d| d.parse::<usize>().ok().filter(|&d| d > 0))
                .collect::<Option<Vec<_>>>()
                .filter(|d| d.len() >= 2)
                .ok_or_else(|| anyhow::anyhow!("bad MLP spec {arch:?}: expected mlp-IN-HIDDEN...-OUT, e.g. mlp-784-300-100-10"))?;
            mlp(n, arch, &dims)?
        }
        "lenet5-caffe" => {
            let mut x = n.b.input("input", &[1, 28, 28]);
            x = n.conv("conv1", x, 20, 5, 1, 0, 1, true)?;
            x = n.maxpool("pool1", x, 2)?;
            x = n.conv("conv2", x, 50, 5, 1, 0, 1, true)?;
            x = n.maxpool("pool2", x, 2)?;
            x = n.flatten("flatten", x)?;
            x = n.linear("fc1", x, 500)?;
            x = n.act("relu1", x, relu)?;
            x = n.linear("fc2", x, 10)?;
            n.b.finish(&[x], meta(arch, "mnist", "digits"))?
        }
        "digits-cnn" => {
            let mut x = n.b.input("input", &[1, 8, 8]);
            x = n.conv("conv1", x, 16, 3, 1, 1, 1, true)?;
            x = n.act("relu1", x, relu)?;
            x = n.maxpool("pool1", x, 2)?;
            x = n.conv("conv2", x, 32, 3, 1, 1, 1, true)?;
            x = n.act("relu2", x, relu)?;
            x = n.maxpool("pool2", x, 2)?;
            x = n.flatten("flatten", x)?;
            x = n.linear("fc", x, 10)?;
            n.b.finish(&[x], meta(arch, "digits", "digits"))?
        }
        "mobilenet-v2" => mobilenet_v2(n)?,
        _ => bail!(
            "unknown architecture {arch:?}; known: {}",
            ARCHS.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
        ),
    };
    Ok(model)
}

#[allow(clippy::too_many_arguments)]
/// Fully connected ReLU network `dims[0] → … → dims[last]` with keys `fc1`, `fc2`, …; a 784-wide
/// input takes 28×28 images (flattened), as the MNIST MLPs do.
fn mlp(mut n: Net, arch: &str, dims: &[usize]) -> Result<HostModel> {
    let mut x = if dims[0] == 784 {
        let x = n.b.input("input", &[1, 28, 28]);
        n.flatten("flatten", x)?
    } else {
        n.b.input("input", &[dims[0] as u32])
    };
    let last = dims.len() - 1;
    for (i, &d) in dims[1..].iter().enumerate() {
        x = n.linear(&format!("fc{}", i + 1), x, d)?;
        if i + 1 < last {
            x = n.act(&format!("relu{}", i + 1), x, Activation::Relu)?;
        }
    }
    let (pre, labels) = match (dims[0], dims[last]) {
        (784, 10) => ("mnist", "digits"),
        (784, _) => ("mnist", ""),
        _ => ("none", ""),
    };
    n.b.finish(&[x], meta(arch, pre, labels))
}

#[allow(clippy::too_many_arguments)]
fn conv_bn(
    n: &mut Net,
    prefix: &str,
    x: ValueId,
    out: usize,
    k: usize,
    stride: u32,
    groups: usize,
    act: bool,
) -> Result<ValueId> {
    let pad = (k as u32 - 1) / 2;
    let y = n.conv(
        &format!("{prefix}.0"),
        x,
        out,
        k,
        stride,
        pad,
        groups,
        false,
    )?;
    let y = n.bn(&format!("{prefix}.1"), y)?;
    if act {
        n.act(&format!("{prefix}.2"), y, Activation::Relu6)
    } else {
        Ok(y)
    }
}

fn mobilenet_v2(mut n: Net) -> Result<HostModel> {
    let mut x = n.b.input("input", &[3, 224, 224]);
    x = conv_bn(&mut n, "features.0", x, 32, 3, 2, 1, true)?;
    let mut idx = 1;
    let mut cin = 32;
    for (t, c, reps, s) in [
        (1, 16, 1, 2 - 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ] {
        for r in 0..reps {
            let stride = if r == 0 { s } else { 1 };
            let p = format!("features.{idx}.conv");
            let hidden = cin * t;
            let input = x;
            let mut y = x;
            let mut j = 0;
            if t != 1 {
                y = conv_bn(&mut n, &format!("{p}.{j}"), y, hidden, 1, 1, 1, true)?;
                j += 1;
            }
            y = conv_bn(
                &mut n,
                &format!("{p}.{j}"),
                y,
                hidden,
                3,
                stride,
                hidden,
                true,
            )?;
            y = n.conv(&format!("{p}.{}", j + 1), y, c, 1, 1, 0, 1, false)?;
            y = n.bn(&format!("{p}.{}", j + 2), y)?;
            if stride == 1 && cin == c {
                y = n.b.node(
                    &format!("features.{idx}.add"),
                    Op::Add(Add {
                        act: Activation::None,
                    }),
                    &[input, y],
                )?;
            }
            x = y;
            cin = c;
            idx += 1;
        }
    }
    x = conv_bn(&mut n, "features.18", x, 1280, 1, 1, 1, true)?;
    x = n.b.node("pool", Op::GlobalAvgPool, &[x])?;
    x = n.linear("classifier.1", x, 1000)?;
    n.b.finish(&[x], meta("mobilenet-v2", "imagenet", "imagenet"))
}

/// Builds `arch` from checkpoint tensors; every tensor must be used.
pub fn from_checkpoint(arch: &str, tensors: Vec<HostTensor>) -> Result<HostModel> {
    let mut sd = StateDict::new(tensors);
    let m = build(arch, &mut sd)?;
    sd.finish()?;
    Ok(m)
}

/// Builds `arch` from a checkpoint whose tensors may have fewer channels than the architecture
/// (the output of channel pruning, `nap prune --mode channel`): the graph is the
/// architecture's, every tensor is taken from the checkpoint by name whatever its shape, a
/// `<layer>.bias` the architecture lacks becomes that layer's bias, depthwise convolutions take
/// their group count from their weight, and the value shapes are inferred anew. Shapes that do
/// not fit together are an error naming the node. A checkpoint with the architecture's own
/// shapes gives the same model as [`from_checkpoint`].
pub fn from_slimmed_checkpoint(arch: &str, tensors: Vec<HostTensor>) -> Result<HostModel> {
    let mut m = random(arch, 0)?;
    let mut sd = StateDict::new(tensors);
    for t in &mut m.tensors {
        *t = sd.take_rank(&t.name, t.shape.len())?;
    }
    for ni in 0..m.graph.nodes.len() {
        if !matches!(m.graph.nodes[ni].op.weight_bias(), Some((_, None))) {
            continue;
        }
        if let Some(b) = sd.take_optional(&format!("{}.bias", m.graph.nodes[ni].name)) {
            m.tensors.push(b?);
            let id = (m.tensors.len() - 1) as u32;
            if let Op::Linear(Linear { bias, .. }) | Op::Conv2d(Conv2d { bias, .. }) =
                &mut m.graph.nodes[ni].op
            {
                *bias = Some(id);
            }
        }
    }
    sd.finish()?;
    for node in &mut m.graph.nodes {
        if let Op::Conv2d(Conv2d { weight, groups, .. }) = &mut node.op {
            let w = &m.tensors[*weight as usize].shape;
            if *groups != 1 && w[1] == 1 {
                *groups = w[0];
            }
        }
    }
    m.reinfer_shapes()?;
    Ok(m)
}

/// Builds `arch` with fresh weights.
pub fn random(arch: &str, seed: u64) -> Result<HostModel> {
    build(arch, &mut RandomInit::new(seed))
}
