//! Structured pruning (issue 5): dependency groups, group costs against brute-force OBS on the
//! Kronecker Fisher, compensation, and physical removal against the masked model.

use std::collections::BTreeMap;

mod common;
use common::solve;

use candle_core::Device;
use nap::channel::{
    channel_step, compensate, curvature_nodes, curvatures, group_costs, group_flops, macs,
    remove_channels, wbar, ChannelCost, ChannelStepConfig, LayerCurvature, MacCut,
};
use nap::data::Dataset;
use nap::groups::{analyze, Member};
use nap::ir::{GraphBuilder, HostModel, HostTensor};
use nap::kfac::{collect, StatsConfig};
use nap::{archs, reference};
use nap_runtime::format::{
    Activation, Add, BatchNorm, Conv2d, Linear, MaxPool2d, Metadata, Op, Reshape, TensorId, ValueId,
};
use rand::{Rng, SeedableRng};

struct Tiny {
    b: GraphBuilder,
    r: rand::rngs::StdRng,
}

impl Tiny {
    fn t(&mut self, name: &str, shape: &[u32], lo: f32, hi: f32) -> TensorId {
        let n: u32 = shape.iter().product();
        let data = (0..n).map(|_| self.r.gen_range(lo..hi)).collect();
        self.b.tensor(HostTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        x: ValueId,
        out: u32,
        k: u32,
        groups: u32,
        bias: bool,
        act: Activation,
    ) -> ValueId {
        let cin = self.b.value_shape(x)[0] / groups;
        let s = 1.0 / ((cin * k * k) as f32).sqrt();
        let weight = self.t(&format!("{name}.weight"), &[out, cin, k, k], -s, s);
        let bias = bias.then(|| self.t(&format!("{name}.bias"), &[out], -0.3, 0.3));
        self.b
            .node(
                name,
                Op::Conv2d(Conv2d {
                    weight,
                    bias,
                    stride: [1, 1],
                    padding: [0, 0],
                    dilation: [1, 1],
                    groups,
                    act,
                }),
                &[x],
            )
            .unwrap()
    }

    fn bn(&mut self, name: &str, x: ValueId) -> ValueId {
        let c = self.b.value_shape(x)[0];
        let gamma = self.t(&format!("{name}.weight"), &[c], 0.5, 1.5);
        let beta = self.t(&format!("{name}.bias"), &[c], -0.5, 0.5);
        let mean = self.t(&format!("{name}.running_mean"), &[c], -0.5, 0.5);
        let var = self.t(&format!("{name}.running_var"), &[c], 0.5, 2.0);
        self.b
            .node(
                name,
                Op::BatchNorm(BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps: 1e-5,
                }),
                &[x],
            )
            .unwrap()
    }

    fn linear(&mut self, name: &str, x: ValueId, out: u32, act: Activation) -> ValueId {
        let i = self.b.value_shape(x)[0];
        let s = 1.0 / (i as f32).sqrt();
        let weight = self.t(&format!("{name}.weight"), &[out, i], -s, s);
        let bias = Some(self.t(&format!("{name}.bias"), &[out], -0.3, 0.3));
        self.b
            .node(name, Op::Linear(Linear { weight, bias, act }), &[x])
            .unwrap()
    }

    fn op(&mut self, name: &str, op: Op, xs: &[ValueId]) -> ValueId {
        self.b.node(name, op, xs).unwrap()
    }
}

/// Input `[3, 8, 8]`, three classes; every group type: a residual Add whose stream runs through
/// a depthwise convolution, a Concat, a Flatten into a Linear, hidden Linear neurons. No
/// padding, so a removed channel's constant folds exactly.
fn tiny(seed: u64) -> HostModel {
    let relu = Activation::Relu;
    let mut n = Tiny {
        b: GraphBuilder::new(),
        r: rand::rngs::StdRng::seed_from_u64(seed),
    };
    let x = n.b.input("input", &[3, 8, 8]);
    let c1 = n.conv("c1", x, 8, 3, 1, true, Activation::None);
    let b1 = n.bn("bn1", c1);
    let r1 = n.op("relu1", Op::Act(relu), &[b1]);
    let c2 = n.conv("c2", r1, 8, 1, 1, false, Activation::None);
    let b2 = n.bn("bn2", c2);
    let a = n.op("add", Op::Add(Add { act: relu }), &[r1, b2]);
    let dw = n.conv("dw", a, 8, 3, 8, false, Activation::None);
    let b3 = n.bn("bn3", dw);
    let r3 = n.op("relu3", Op::Act(Activation::Relu6), &[b3]);
    let c3 = n.conv("c3", a, 4, 3, 1, true, relu);
    let cat = n.op("cat", Op::Concat, &[r3, c3]);
    let c4 = n.conv("c4", cat, 6, 1, 1, true, relu);
    let p = n.op(
        "pool",
        Op::MaxPool2d(MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        }),
        &[c4],
    );
    let f = n.op("flatten", Op::Flatten, &[p]);
    let fc1 = n.linear("fc1", f, 10, relu);
    let fc2 = n.linear("fc2", fc1, 3, Activation::None);
    n.b.finish(&[fc2], Metadata::default()).unwrap()
}

fn node(m: &HostModel, name: &str) -> usize {
    m.graph.nodes.iter().position(|n| n.name == name).unwrap()
}

fn data(n: usize, seed: u64) -> Dataset {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    Dataset {
        images: (0..n * 192).map(|_| r.gen_range(-1.0..1.0)).collect(),
        labels: (0..n).map(|i| (i % 3) as u32).collect(),
        n,
        shape: [3, 8, 8],
    }
}

/// The model with the producer rows (weights and bias) of the removed groups zeroed.
fn masked(m: &HostModel, groups: &nap::groups::Groups, remove: &[bool]) -> HostModel {
    let mut out = m.clone();
    for (g, _) in groups.groups.iter().zip(remove).filter(|(_, r)| **r) {
        for (ni, row) in g.producers() {
            let (w, b) = match out.graph.nodes[ni].op {
                Op::Linear(Linear { weight, bias, .. })
                | Op::Conv2d(Conv2d { weight, bias, .. }) => (weight, bias),
                _ => unreachable!(),
            };
            let t = &mut out.tensors[w as usize];
            let per = t.numel() / t.shape[0] as usize;
            t.data[row * per..(row + 1) * per].fill(0.0);
            if let Some(b) = b {
                out.tensors[b as usize].data[row] = 0.0;
            }
        }
    }
    out
}

#[test]
fn issue5_groups_tie_residual_concat_depthwise_and_flatten() {
    let m = tiny(1);
    let gs = analyze(&m).unwrap();
    // 8 residual channels, 4 from c3, 6 from c4, 10 hidden neurons; inputs and classes pinned.
    assert_eq!(gs.groups.len(), 28);
    let (c1, c2, c3, c4, fc1, fc2) = (
        node(&m, "c1"),
        node(&m, "c2"),
        node(&m, "c3"),
        node(&m, "c4"),
        node(&m, "fc1"),
        node(&m, "fc2"),
    );
    let (bn1, bn2, bn3, dw) = (
        node(&m, "bn1"),
        node(&m, "bn2"),
        node(&m, "bn3"),
        node(&m, "dw"),
    );
    let g = &gs.groups[gs.slot_group[m.graph.nodes[c1].output as usize][5].unwrap()];
    let mut want = vec![
        Member::Producer { node: c1, row: 5 },
        Member::Norm { node: bn1, ch: 5 },
        Member::Consumer {
            node: c2,
            slot: 5,
            cols: 5..6,
        },
        Member::Producer { node: c2, row: 5 },
        Member::Norm { node: bn2, ch: 5 },
        Member::Depthwise { node: dw, ch: 5 },
        Member::Norm { node: bn3, ch: 5 },
        Member::Consumer {
            node: c3,
            slot: 5,
            cols: 45..54,
        },
        Member::Consumer {
            node: c4,
            slot: 5,
            cols: 5..6,
        },
    ];
    let mut got = g.members.clone();
    let key = |m: &Member| format!("{m:?}");
    want.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(got, want, "residual channel 5");
    // c3's channel 2 is channel 10 of the concat; c4's channel 1 is four columns of fc1.
    let g = &gs.groups[gs.slot_group[m.graph.nodes[c3].output as usize][2].unwrap()];
    assert!(g.members.contains(&Member::Consumer {
        node: c4,
        slot: 10,
        cols: 10..11
    }));
    let g = &gs.groups[gs.slot_group[m.graph.nodes[c4].output as usize][1].unwrap()];
    let cols: Vec<usize> = g
        .consumers()
        .filter(|(n, _)| *n == fc1)
        .flat_map(|(_, c)| c)
        .collect();
    assert_eq!(cols, vec![4, 5, 6, 7]);
    // Nothing of the input or the class outputs.
    assert!(gs.slot_group[m.graph.inputs[0] as usize]
        .iter()
        .all(Option::is_none));
    assert!(gs.slot_group[m.graph.nodes[fc2].output as usize]
        .iter()
        .all(Option::is_none));
    // FLOPs saved by residual channel 5: c1 row 27·36, c2 row and column 8·36 each less their
    // shared weight, depthwise 9·16, c3 column block 9·4·16, c4 column 6·16.
    let fl = group_flops(&m, &gs);
    let gi = gs.slot_group[m.graph.nodes[c1].output as usize][5].unwrap();
    assert_eq!(
        fl[gi],
        (27 * 36 + (8 + 8 - 1) * 36 + 9 * 16 + 9 * 4 * 16 + 6 * 16) as f64
    );
}

#[test]
fn issue5_removal_matches_the_masked_model_exactly() {
    let m = tiny(2);
    let gs = analyze(&m).unwrap();
    let x = data(6, 3);
    let mut fold_effect = 0f32;
    for seed in 0..4u64 {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let remove: Vec<bool> = (0..gs.groups.len()).map(|_| r.gen_bool(0.4)).collect();
        let pruned = remove_channels(&m, &gs, &remove, true).unwrap();
        let want = reference::logits(&masked(&m, &gs, &remove), &x.images).unwrap();
        let got = reference::logits(&pruned, &x.images).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "seed {seed}: {a} vs masked {b}"
            );
        }
        // Both sides of the Add and every tensor shrank together.
        let add = &m.graph.nodes[node(&m, "add")];
        let kept_res = (0..8)
            .filter(|&c| {
                !remove[gs.slot_group[m.graph.nodes[node(&m, "c1")].output as usize][c].unwrap()]
            })
            .count() as u32;
        for &v in &add.inputs {
            assert_eq!(pruned.graph.values[v as usize].shape[0], kept_res);
        }
        let dw = match pruned.graph.nodes[node(&m, "dw")].op {
            Op::Conv2d(Conv2d { groups, .. }) => groups,
            _ => unreachable!(),
        };
        assert_eq!(dw, kept_res);
        let removed = remove.iter().filter(|r| **r).count();
        assert_eq!(analyze(&pruned).unwrap().groups.len(), 28 - removed);
        // The MACs the removal saves, as counted before removing, are what the smaller model lost.
        let mut cut = MacCut::new(&m);
        for (g, _) in gs.groups.iter().zip(&remove).filter(|(_, r)| **r) {
            cut.add(g);
        }
        assert_eq!(cut.saved, macs(&m) - macs(&pruned), "seed {seed}");
        // Without folding the constants the outputs differ (the BatchNorms' constants matter).
        let unfolded = remove_channels(&m, &gs, &remove, false).unwrap();
        let u = reference::logits(&unfolded, &x.images).unwrap();
        fold_effect = u
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(fold_effect, f32::max);
    }
    assert!(
        fold_effect > 1e-2,
        "folding changed nothing ({fold_effect})"
    );
}

/// Dense inverse, column by column through the shared Gaussian elimination.
fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            solve(
                a.to_vec(),
                (0..n).map(|i| f64::from(u8::from(i == j))).collect(),
            )
        })
        .collect();
    (0..n * n).map(|k| cols[k % n][k / n]).collect()
}

/// Brute-force OBS for removing the entries `s` (row-major indices of `W̄`) under the explicit
/// `F = A ⊗ G` (entry `(i, j), (i', j')` is `G_ii' A_jj'`): the loss increase
/// `½ w_Sᵀ ([F⁻¹]_SS)⁻¹ w_S` and the updated `W̄ = W̄ − F⁻¹[:, S] ([F⁻¹]_SS)⁻¹ w_S`.
fn brute_obs(lc: &LayerCurvature, w: &[f64], s: &[usize]) -> (f64, Vec<f64>) {
    let (rows, d) = (lc.g.nrows(), lc.a.nrows());
    let n = rows * d;
    let f: Vec<f64> = (0..n * n)
        .map(|k| {
            let (p, q) = (k / n, k % n);
            lc.g[(p / d, q / d)] * lc.a[(p % d, q % d)]
        })
        .collect();
    let fi = inverse(&f, n);
    let fss: Vec<f64> = s
        .iter()
        .flat_map(|&p| s.iter().map(move |&q| (p, q)))
        .map(|(p, q)| fi[p * n + q])
        .collect();
    let fss_inv = inverse(&fss, s.len());
    let c: Vec<f64> = (0..s.len())
        .map(|a| {
            (0..s.len())
                .map(|b| fss_inv[a * s.len() + b] * w[s[b]])
                .sum()
        })
        .collect();
    let dl = 0.5 * s.iter().zip(&c).map(|(&p, ci)| w[p] * ci).sum::<f64>();
    let mut out = w.to_vec();
    for (p, o) in out.iter_mut().enumerate() {
        *o -= s
            .iter()
            .zip(&c)
            .map(|(&q, ci)| fi[p * n + q] * ci)
            .sum::<f64>();
    }
    (dl, out)
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * (1e-12 + a.abs().max(b.abs())),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn issue5_row_and_column_costs_and_compensation_equal_brute_force_obs() {
    let m = tiny(4);
    let gs = analyze(&m).unwrap();
    let nodes = curvature_nodes(&gs);
    let cfg = StatsConfig {
        nodes: Some(nodes.clone()),
        batch: 8,
        ..Default::default()
    };
    let f = collect(&m, &data(24, 5), &cfg, &Device::Cpu).unwrap();
    assert_eq!(f.len(), nodes.len());
    let curv = curvatures(&f, 1e-2).unwrap();
    for (name, rows, cols) in [
        ("c1", vec![2usize], vec![]),
        ("c2", vec![0, 5], vec![3usize]),
        ("c4", vec![1], (10..11).collect::<Vec<_>>()),
        ("c3", vec![3], (9..18).collect()),
        ("fc1", vec![4, 7], vec![0, 1, 2, 3]),
    ] {
        let ni = node(&m, name);
        let lc = &curv[&ni];
        let (r, c, w) = wbar(&m, ni).unwrap();
        let d = c + 1;
        assert_eq!(r * d, w.len());
        // One row: the closed form against brute force.
        let s: Vec<usize> = (0..d).map(|j| rows[0] * d + j).collect();
        let (dl, _) = brute_obs(lc, &w, &s);
        close(
            lc.row_costs(&w)[rows[0]],
            dl,
            1e-8,
            &format!("{name} row cost"),
        );
        // A set of rows: the joint compensation.
        let s: Vec<usize> = rows
            .iter()
            .flat_map(|&i| (0..d).map(move |j| i * d + j))
            .collect();
        let (_, want) = brute_obs(lc, &w, &s);
        let mut got = w.clone();
        lc.remove_rows(&mut got, &rows).unwrap();
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() < 1e-8 * (1.0 + b.abs()),
                "{name} rows: W̄[{k}] {a} vs {b}"
            );
        }
        if cols.is_empty() {
            continue;
        }
        // A column block (one input channel): cost and compensation.
        let s: Vec<usize> = (0..r)
            .flat_map(|i| cols.iter().map(move |&j| i * d + j))
            .collect();
        let (dl, want) = brute_obs(lc, &w, &s);
        close(
            lc.column_cost(&w, &cols).unwrap(),
            dl,
            1e-8,
            &format!("{name} column cost"),
        );
        let mut got = w.clone();
        lc.remove_columns(&mut got, &cols).unwrap();
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() < 1e-8 * (1.0 + b.abs()),
                "{name} cols: W̄[{k}] {a} vs {b}"
            );
        }
    }
    // A group's cost is the sum of its members' brute-force costs.
    let costs: BTreeMap<&str, Vec<f64>> = [
        ("producer", ChannelCost::Producer),
        ("consumer", ChannelCost::Consumer),
        ("sum", ChannelCost::Sum),
    ]
    .into_iter()
    .map(|(k, c)| (k, group_costs(&m, &gs, &curv, c).unwrap()))
    .collect();
    for (gi, g) in gs.groups.iter().enumerate() {
        let (mut prod, mut cons) = (0.0, 0.0);
        for (ni, row) in g.producers() {
            let (_, c, w) = wbar(&m, ni).unwrap();
            let s: Vec<usize> = (0..=c).map(|j| row * (c + 1) + j).collect();
            prod += brute_obs(&curv[&ni], &w, &s).0;
        }
        let mut by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (ni, cs) in g.consumers() {
            by_node.entry(ni).or_default().extend(cs);
        }
        for (ni, cs) in by_node {
            let (r, c, w) = wbar(&m, ni).unwrap();
            let s: Vec<usize> = (0..r)
                .flat_map(|i| cs.iter().map(move |&j| i * (c + 1) + j))
                .collect();
            cons += brute_obs(&curv[&ni], &w, &s).0;
        }
        let name = g.name(&m);
        close(
            costs["producer"][gi],
            prod,
            1e-7,
            &format!("{name} producer"),
        );
        close(
            costs["consumer"][gi],
            cons,
            1e-7,
            &format!("{name} consumer"),
        );
        close(costs["sum"][gi], prod + cons, 1e-7, &format!("{name} sum"));
    }
}

#[test]
fn issue5_compensation_lowers_the_loss_increase_of_removal() {
    // Removing the cheapest groups with the producer compensation changes the outputs less than
    // removing them without it: the OBS update uses the correlation between rows.
    let m = tiny(6);
    let gs = analyze(&m).unwrap();
    let cfg = StatsConfig {
        nodes: Some(curvature_nodes(&gs)),
        fisher: nap::kfac::Fisher::Exact,
        ..Default::default()
    };
    let d = data(64, 7);
    let f = collect(&m, &d, &cfg, &Device::Cpu).unwrap();
    let curv = curvatures(&f, 1e-2).unwrap();
    let cost = group_costs(&m, &gs, &curv, ChannelCost::Producer).unwrap();
    assert!(cost.iter().all(|c| c.is_finite() && *c >= 0.0));
    let mut order: Vec<usize> = (0..cost.len()).collect();
    order.sort_by(|&a, &b| cost[a].total_cmp(&cost[b]));
    let mut remove = vec![false; cost.len()];
    for &g in &order[..5] {
        remove[g] = true;
    }
    let base = reference::logits(&m, &d.images).unwrap();
    let dist = |p: &HostModel| {
        let l = reference::logits(p, &d.images).unwrap();
        l.iter()
            .zip(&base)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
    };
    let plain = remove_channels(&m, &gs, &remove, true).unwrap();
    let mut comp = m.clone();
    compensate(&mut comp, &gs, &remove, &curv, ChannelCost::Producer).unwrap();
    let comp = remove_channels(&comp, &gs, &remove, true).unwrap();
    let (dp, dc) = (dist(&plain), dist(&comp));
    assert!(dc < dp, "compensated {dc} vs plain {dp}");
}

#[test]
fn issue5_mobilenet_v2_groups_and_removal() {
    let m = archs::random("mobilenet-v2", 1).unwrap();
    let gs = analyze(&m).unwrap();
    // Stem (32, tied through block 1's depthwise), the expansion channels of blocks 2-17
    // (7104), the stage streams 16+24+32+64+96+160+320 (residual stages are one group per
    // channel across their blocks), the 1280 last features.
    assert_eq!(gs.groups.len(), 32 + 7104 + 712 + 1280);
    let proj = |b: usize| node(&m, &format!("features.{b}.conv.2"));
    // Blocks 2 and 3 share the 24-channel stream; block 4 starts the 32-channel stage.
    let g = &gs.groups[gs.slot_group[m.graph.nodes[proj(2)].output as usize][7].unwrap()];
    let producers: Vec<usize> = g.producers().map(|(n, _)| n).collect();
    assert_eq!(producers, vec![proj(2), proj(3)]);
    let mut r = rand::rngs::StdRng::seed_from_u64(8);
    let remove: Vec<bool> = (0..gs.groups.len()).map(|_| r.gen_bool(0.3)).collect();
    let pruned = remove_channels(&m, &gs, &remove, true).unwrap();
    assert!(pruned.param_count() < m.param_count());
    // The slimmed tensors under their checkpoint names load back onto the architecture (some
    // depthwise convolutions now have fewer groups, some convolutions a new bias).
    let back = archs::from_slimmed_checkpoint("mobilenet-v2", pruned.tensors.clone()).unwrap();
    assert_eq!(back.graph, pruned.graph);
    assert_eq!(back.tensors, pruned.tensors);
    let x: Vec<f32> = (0..3 * 224 * 224).map(|_| r.gen_range(-1.0..1.0)).collect();
    let out = reference::logits(&pruned, &x).unwrap();
    assert_eq!(out.len(), 1000);
    assert!(out.iter().all(|v| v.is_finite()));
}

#[test]
fn issue5_batchnorm_recalibration_matches_input_statistics() {
    let mut m = tiny(9);
    let d = data(5, 10);
    reference::recalibrate_batchnorm(&mut m, &d.images).unwrap();
    let dev = Device::Cpu;
    let vals = reference::forward_all(
        &m.graph,
        &reference::params(&m, &dev).unwrap(),
        &reference::input(&m, &d.images, &dev).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for node in &m.graph.nodes {
        let Op::BatchNorm(BatchNorm { mean, var, .. }) = node.op else {
            continue;
        };
        // The BatchNorm's input, [n, C, H, W], recomputed with every earlier BatchNorm
        // already recalibrated: its per-channel mean and unbiased variance.
        let x = vals[node.inputs[0] as usize].as_ref().unwrap();
        let (n, c, h, w) = x.dims4().unwrap();
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for ch in 0..c {
            let xs: Vec<f64> = (0..n)
                .flat_map(|i| (0..h * w).map(move |k| (i * c + ch) * h * w + k))
                .map(|k| v[k] as f64)
                .collect();
            let mu = xs.iter().sum::<f64>() / xs.len() as f64;
            let var_u = xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
            let (gm, gv) = (
                m.tensors[mean as usize].data[ch] as f64,
                m.tensors[var as usize].data[ch] as f64,
            );
            assert!(
                (gm - mu).abs() < 1e-4 * (1.0 + mu.abs()),
                "{}: mean {gm} vs {mu}",
                node.name
            );
            assert!(
                (gv - var_u).abs() < 1e-4 * (1.0 + var_u),
                "{}: var {gv} vs {var_u}",
                node.name
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// Issue 13: `channel_multiple` keeps every layer's channel count a multiple (ONNX Runtime's
/// blocked x86 convolutions need multiples of 8 or 16), where the plain step does not.
#[test]
fn issue13_channel_multiple_rounds_every_layer() {
    let m = tiny(3);
    let gs = analyze(&m).unwrap();
    let rows = |m: &HostModel| -> Vec<(String, u32)> {
        m.prunable()
            .iter()
            .map(|&(n, w)| {
                (
                    m.graph.nodes[n].name.clone(),
                    m.tensors[w as usize].shape[0],
                )
            })
            .collect()
    };
    let cfg = |mult: usize| ChannelStepConfig {
        criterion: nap::prune::Criterion::Magnitude,
        cost: ChannelCost::Producer,
        fraction: 0.4,
        layer_cap: 0.9,
        flops_weight: 0.0,
        damping: 0.1,
        compensate: false,
        max_macs: None,
        channel_multiple: mult,
    };
    let before = rows(&m);
    let (plain, _) = channel_step(&m, &gs, &[], &cfg(1)).unwrap();
    let (rounded, rep) = channel_step(&m, &gs, &[], &cfg(4)).unwrap();
    assert!(rep.removed > 0);
    let off = |r: &[(String, u32)]| {
        r.iter()
            .zip(&before)
            .filter(|((name, k), (_, k0))| name != "fc2" && k != k0 && k % 4 != 0)
            .count()
    };
    assert!(
        off(&rows(&plain)) > 0,
        "the plain step already rounds: {:?}",
        rows(&plain)
    );
    assert_eq!(off(&rows(&rounded)), 0, "{:?}", rows(&rounded));
    for ((name, k), (_, k0)) in rows(&rounded).iter().zip(&before) {
        assert!(*k >= 4.min(*k0), "{name}: {k} of {k0}");
    }
    rounded.validate().unwrap();
}

/// A squeeze-and-excitation block (PP-OCR's MobileNetV3): the gate's rows and the channels they
/// scale are one group, and removing channels folds the gated constant exactly.
#[test]
fn issue13_squeeze_excite_gate_is_pruned_with_its_channel() {
    let relu = Activation::Relu;
    let mut n = Tiny {
        b: GraphBuilder::new(),
        r: rand::rngs::StdRng::seed_from_u64(13),
    };
    let x = n.b.input("input", &[3, 8, 8]);
    let c1 = n.conv("c1", x, 8, 3, 1, true, relu);
    let gap = n.op("gap", Op::GlobalAvgPool, &[c1]);
    let col = n.op(
        "col",
        Op::Reshape(Reshape {
            shape: vec![8, 1, 1],
        }),
        &[gap],
    );
    let sq = n.conv("sq", col, 4, 1, 1, true, relu);
    let hard_sigmoid = Activation::HardSigmoid {
        alpha: 0.2,
        beta: 0.5,
    };
    let ex = n.conv("ex", sq, 8, 1, 1, true, hard_sigmoid);
    let gated = n.op("gate", Op::Mul, &[c1, ex]);
    let c2 = n.conv("c2", gated, 6, 1, 1, true, relu);
    let f = n.op("flatten", Op::Flatten, &[c2]);
    let fc = n.linear("fc", f, 3, Activation::None);
    let m = n.b.finish(&[fc], Metadata::default()).unwrap();

    let gs = analyze(&m).unwrap();
    let (c1, ex) = (node(&m, "c1"), node(&m, "ex"));
    for c in 0..8 {
        let g = gs.slot_group[m.graph.nodes[c1].output as usize][c].expect("c1 channel pinned");
        let producers: Vec<(usize, usize)> = gs.groups[g].producers().collect();
        assert_eq!(producers, vec![(c1, c), (ex, c)], "channel {c}");
    }
    let x = data(4, 5);
    for seed in 0..3u64 {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let remove: Vec<bool> = (0..gs.groups.len()).map(|_| r.gen_bool(0.4)).collect();
        let pruned = remove_channels(&m, &gs, &remove, true).unwrap();
        let want = reference::logits(&masked(&m, &gs, &remove), &x.images).unwrap();
        let got = reference::logits(&pruned, &x.images).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "seed {seed}: {a} vs masked {b}"
            );
        }
    }
}

/// A ShuffleNet v2 unit's Split (two Slices along channels): each half's channels belong to
/// the producer before the split and to the consumers after it; removing some moves the
/// ranges, and matches the masked model. Emptying a slice is an error naming it.
#[test]
fn issue13_split_couples_channels_across_its_slices() {
    use nap_runtime::format::Slice;
    let relu = Activation::Relu;
    let mut n = Tiny {
        b: GraphBuilder::new(),
        r: rand::rngs::StdRng::seed_from_u64(17),
    };
    let x = n.b.input("input", &[3, 8, 8]);
    let c1 = n.conv("c1", x, 8, 1, 1, true, relu);
    let half = |n: &mut Tiny, name: &str, start: u32| {
        let op = Op::Slice(Slice {
            axis: 0,
            start,
            end: start + 4,
        });
        n.op(name, op, &[c1])
    };
    let (a, b) = (half(&mut n, "a", 0), half(&mut n, "b", 4));
    let b2 = n.conv("c2", b, 4, 1, 1, true, relu);
    let cat = n.op("cat", Op::Concat, &[a, b2]);
    let c3 = n.conv("c3", cat, 6, 1, 1, true, relu);
    let f = n.op("flatten", Op::Flatten, &[c3]);
    let fc = n.linear("fc", f, 3, Activation::None);
    let m = n.b.finish(&[fc], Metadata::default()).unwrap();

    let gs = analyze(&m).unwrap();
    let (c1n, c2n) = (node(&m, "c1"), node(&m, "c2"));
    let c1_out = m.graph.nodes[c1n].output as usize;
    for c in 0..8 {
        let g = gs.slot_group[c1_out][c].expect("c1 channel pinned");
        let producers: Vec<(usize, usize)> = gs.groups[g].producers().collect();
        assert_eq!(producers, vec![(c1n, c)], "channel {c}");
        let slice = if c < 4 { "a" } else { "b" };
        assert!(
            gs.groups[g]
                .members
                .iter()
                .any(|mb| matches!(mb, Member::Sliced { node: s, ch } if *s == node(&m, slice) && *ch == c)),
            "channel {c} is not a member of slice {slice}"
        );
    }
    // c2's channels join the second half of the concatenation.
    let cat_out = m.graph.nodes[node(&m, "cat")].output as usize;
    for c in 0..4 {
        let g = gs.slot_group[cat_out][4 + c].unwrap();
        assert_eq!(gs.groups[g].producers().collect::<Vec<_>>(), vec![(c2n, c)]);
    }
    let group_of = |c: usize| gs.slot_group[c1_out][c].unwrap();
    let x = data(4, 5);
    let mut checked = 0;
    for seed in 0..12u64 {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        // Only c1's and c2's channels, at random.
        let remove: Vec<bool> = gs
            .groups
            .iter()
            .map(|g| g.producers().any(|(p, _)| p == c1n || p == c2n) && r.gen_bool(0.45))
            .collect();
        let empties = |lo: usize| (lo..lo + 4).all(|c| remove[group_of(c)]);
        let c2_gone = (0..4).all(|c| remove[gs.slot_group[cat_out][4 + c].unwrap()]);
        match remove_channels(&m, &gs, &remove, true) {
            Err(e) => {
                let e = format!("{e:#}");
                if empties(0) || empties(4) {
                    let c1_gone = empties(0) && empties(4) && e.contains("every output of \"c1\"");
                    assert!(
                        c1_gone || e.contains("every channel of slice"),
                        "seed {seed}: {e}"
                    );
                } else {
                    assert!(
                        c2_gone && e.contains("every output of \"c2\""),
                        "seed {seed}: {e}"
                    );
                }
            }
            Ok(pruned) => {
                assert!(!empties(0) && !empties(4), "seed {seed}: emptied a slice");
                let want = reference::logits(&masked(&m, &gs, &remove), &x.images).unwrap();
                let got = reference::logits(&pruned, &x.images).unwrap();
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "seed {seed}: {a} vs masked {b}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} selections kept both halves");

    // A step that takes as much as it may leaves each slice a channel.
    let cfg = ChannelStepConfig {
        criterion: nap::prune::Criterion::Magnitude,
        cost: ChannelCost::Producer,
        fraction: 0.95,
        layer_cap: 1.0,
        flops_weight: 0.0,
        damping: 0.1,
        compensate: false,
        max_macs: None,
        channel_multiple: 1,
    };
    let (pruned, rep) = channel_step(&m, &gs, &[], &cfg).unwrap();
    assert!(rep.removed > 0);
    for name in ["a", "b"] {
        let Op::Slice(Slice { start, end, .. }) = pruned.graph.nodes[node(&pruned, name)].op else {
            unreachable!()
        };
        assert_eq!(
            end - start,
            1,
            "slice {name} keeps one channel of 4 ({start}..{end})"
        );
    }
    // Rounding c1's 8 channels to a multiple of 4 keeps the 4 that cost most, here all of
    // slice b's (slice a's rows are scaled down): slice a keeps a channel anyway.
    let mut m = m.clone();
    let Op::Conv2d(Conv2d { weight, bias, .. }) = m.graph.nodes[c1n].op else {
        unreachable!()
    };
    let per = m.tensors[weight as usize].numel() / 8;
    m.tensors[weight as usize].data[..4 * per]
        .iter_mut()
        .for_each(|v| *v *= 0.01);
    m.tensors[bias.unwrap() as usize].data[..4]
        .iter_mut()
        .for_each(|v| *v *= 0.01);
    for fraction in [0.3, 0.5, 0.7, 0.95] {
        let cfg = ChannelStepConfig {
            fraction,
            channel_multiple: 4,
            ..cfg.clone()
        };
        let (pruned, _) = channel_step(&m, &gs, &[], &cfg)
            .unwrap_or_else(|e| panic!("fraction {fraction}: {e:#}"));
        for name in ["a", "b"] {
            let Op::Slice(Slice { start, end, .. }) = pruned.graph.nodes[node(&pruned, name)].op
            else {
                unreachable!()
            };
            assert!(end > start, "fraction {fraction}: slice {name} emptied");
        }
    }
}
