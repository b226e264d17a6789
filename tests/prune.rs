//! Pruning steps: exact counts, masks that stay applied, invariance of the global ranking.

use candle_core::Device;
use nap::archs;
use nap::data::Dataset;
use nap::kfac::{collect, StatsConfig};
use nap::prune::{prune_step, Criterion, Masks, StepConfig};

/// `n` deterministic 28×28 images (pixel `i` is `(i · prime) mod 255`, scaled to [0, 1]) with
/// labels 0..9 in turn.
fn toy_mnist(n: usize, prime: usize) -> Dataset {
    Dataset {
        images: (0..n * 784)
            .map(|i| ((i * prime) % 255) as f32 / 255.0)
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u32).collect(),
        n,
        shape: [1, 28, 28],
    }
}

/// Every criterion removes the requested share, keeps masks applied and never revives a weight.
#[test]
fn masks_stay_applied_and_counts_are_exact() {
    let m = archs::random("lenet5-caffe", 1).unwrap();
    let f = collect(
        &m,
        &toy_mnist(16, 7919),
        &StatsConfig::default(),
        &Device::Cpu,
    )
    .unwrap();
    for criterion in [
        Criterion::Nap,
        Criterion::Obd,
        Criterion::Magnitude,
        Criterion::MagnitudeUniform,
    ] {
        let mut p = m.clone();
        let mut masks = Masks::from_model(&p);
        let total = masks.alive();
        let cfg = StepConfig {
            criterion,
            fraction: 0.3,
            ..Default::default()
        };
        prune_step(&mut p, &mut masks, &f, &cfg).unwrap();
        let first = masks.clone();
        prune_step(&mut p, &mut masks, &f, &cfg).unwrap();
        let left = masks.alive() as f64 / total as f64;
        assert!((left - 0.49).abs() < 0.01, "{criterion:?}: {left} alive");
        for (l, (&(_, w), mask)) in p.prunable().iter().zip(&masks.0).enumerate() {
            for (k, (&v, &alive)) in p.tensors[w as usize].data.iter().zip(mask).enumerate() {
                assert!(alive || v == 0.0, "{criterion:?}: dead weight is non-zero");
                assert!(first.0[l][k] || !alive, "{criterion:?}: a weight came back");
            }
        }
        if criterion == Criterion::MagnitudeUniform {
            for (a, b) in Masks::from_model(&m).0.iter().zip(&masks.0) {
                let share = b.iter().filter(|x| **x).count() as f64 / a.len() as f64;
                assert!((share - 0.49).abs() < 0.02, "uniform share {share}");
            }
        }
    }
}

/// Scaling the loss (G ← c·G) rescales every score and leaves the selection unchanged.
#[test]
fn loss_rescaling_leaves_the_ranking_unchanged() {
    let m = archs::random("lenet-300-100", 2).unwrap();
    let d = toy_mnist(32, 104729);
    let f = collect(&m, &d, &StatsConfig::default(), &Device::Cpu).unwrap();
    let mut f7 = f.clone();
    f7.iter_mut()
        .for_each(|l| l.g.iter_mut().for_each(|v| *v *= 7.0));
    let cfg = StepConfig {
        fraction: 0.25,
        ..Default::default()
    };
    let (mut a, mut b) = (m.clone(), m.clone());
    let (mut ma, mut mb) = (Masks::from_model(&a), Masks::from_model(&b));
    let ra = prune_step(&mut a, &mut ma, &f, &cfg).unwrap();
    let rb = prune_step(&mut b, &mut mb, &f7, &cfg).unwrap();
    assert_eq!(ma, mb);
    assert!((rb.predicted_loss_increase / ra.predicted_loss_increase - 7.0).abs() < 1e-6);
}

/// Fine-tuning with masks keeps every pruned weight at exactly zero and recovers some loss.
#[test]
fn masked_fine_tuning_keeps_pruned_weights_dead() {
    use nap::train::{train, train_masked, TrainConfig};
    let (train_set, _) = nap::data::digits::load_digits().split(0.2, 1);
    let mut m = archs::random("digits-cnn", 1).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        progress: false,
        ..Default::default()
    };
    train(&mut m, &train_set, &cfg).unwrap();
    let mut masks = Masks::from_model(&m);
    let step = StepConfig {
        criterion: Criterion::Magnitude,
        fraction: 0.6,
        ..Default::default()
    };
    prune_step(&mut m, &mut masks, &[], &step).unwrap();
    let acc_pruned = nap::train::reference_accuracy(&m, &train_set, 512).unwrap();
    train_masked(&mut m, &train_set, &cfg, Some(&masks), None).unwrap();
    for (&(_, w), mask) in m.prunable().iter().zip(&masks.0) {
        for (&v, &alive) in m.tensors[w as usize].data.iter().zip(mask) {
            assert!(alive || v == 0.0, "a pruned weight moved to {v}");
        }
    }
    assert_eq!(Masks::from_model(&m).alive(), masks.alive());
    let acc_tuned = nap::train::reference_accuracy(&m, &train_set, 512).unwrap();
    assert!(
        acc_tuned >= acc_pruned,
        "fine-tuning lost accuracy: {acc_pruned} -> {acc_tuned}"
    );
}

/// Two independent branches built in either node order: the global ranking picks the same
/// weights and the OBS update produces the same values (`nap-algorithm.md` §5, oracle 5).
#[test]
fn ranking_is_invariant_to_layer_order() {
    use nap::ir::{GraphBuilder, HostModel, HostTensor};
    use nap::kfac::Fisher;
    use nap::prune::ObsUpdate;
    use nap_runtime::format::{Activation, Linear, Metadata, Op};

    fn tensor(name: &str, shape: &[u32], seed: u32) -> HostTensor {
        let n: u32 = shape.iter().product();
        HostTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: (0..n)
                .map(|i| {
                    (((i * 2654435761u32.wrapping_add(seed)) >> 7) % 1000) as f32 / 1000.0 - 0.5
                })
                .collect(),
        }
    }
    fn build(p_first: bool) -> HostModel {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[8]);
        let branch = |b: &mut GraphBuilder, name: &str, seed: u32| {
            let w = b.tensor(tensor(&format!("{name}.weight"), &[4, 8], seed));
            let bias = b.tensor(tensor(&format!("{name}.bias"), &[4], seed + 1));
            b.node(
                name,
                Op::Linear(Linear {
                    weight: w,
                    bias: Some(bias),
                    act: Activation::Relu,
                }),
                &[x],
            )
            .unwrap()
        };
        let (p, q) = if p_first {
            let p = branch(&mut b, "p", 1);
            (p, branch(&mut b, "q", 7))
        } else {
            let q = branch(&mut b, "q", 7);
            (branch(&mut b, "p", 1), q)
        };
        let cat = b.node("cat", Op::Concat, &[p, q]).unwrap();
        let w = b.tensor(tensor("r.weight", &[3, 8], 3));
        let bias = b.tensor(tensor("r.bias", &[3], 4));
        let r = b
            .node(
                "r",
                Op::Linear(Linear {
                    weight: w,
                    bias: Some(bias),
                    act: Activation::None,
                }),
                &[cat],
            )
            .unwrap();
        b.finish(&[r], Metadata::default()).unwrap()
    }
    let d = Dataset {
        images: (0..64 * 8)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.3)
            .collect(),
        labels: (0..64).map(|i| (i % 3) as u32).collect(),
        n: 64,
        shape: [8, 1, 1],
    };
    let cfg = StatsConfig {
        fisher: Fisher::Empirical,
        ..Default::default()
    };
    let mut results = Vec::new();
    for p_first in [true, false] {
        let mut m = build(p_first);
        let f = collect(&m, &d, &cfg, &Device::Cpu).unwrap();
        let mut masks = Masks::from_model(&m);
        let step = StepConfig {
            criterion: Criterion::Nap,
            fraction: 0.3,
            layer_cap: 1.0,
            update: ObsUpdate::Independent,
            damping: 1e-2,
            block_rows: 1,
        };
        let rep = prune_step(&mut m, &mut masks, &f, &step).unwrap();
        let mut by_name: Vec<(String, Vec<f32>)> = m
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.data.clone()))
            .collect();
        by_name.sort_by(|a, b| a.0.cmp(&b.0));
        results.push((by_name, rep.predicted_loss_increase));
    }
    let (a, b) = (&results[0], &results[1]);
    for ((na, wa), (nb, wb)) in a.0.iter().zip(&b.0) {
        assert_eq!(na, nb);
        let zeros_a: Vec<bool> = wa.iter().map(|v| *v == 0.0).collect();
        let zeros_b: Vec<bool> = wb.iter().map(|v| *v == 0.0).collect();
        assert_eq!(zeros_a, zeros_b, "{na}: different weights pruned");
        for (x, y) in wa.iter().zip(wb) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{na}: {x} vs {y}");
        }
    }
    assert!((a.1 - b.1).abs() <= 1e-9 * a.1.abs().max(1e-12));
    assert!(a.0.iter().any(|(_, w)| w.contains(&0.0)));
}

/// `block_rows = 4` removes whole 4×1 blocks (the four rows of a block at one column are all alive
/// or all dead), the requested share to within one block, and exactly the blocks with the
/// smallest summed scores (NAP: K-FAC OBS costs; magnitude: |w|).
#[test]
fn issue4_block_pruning_removes_whole_blocks_by_summed_cost() {
    use nap::curvature::Inverses;
    use nap::prune::ObsUpdate;
    let m = archs::random("lenet-300-100", 3).unwrap();
    let d = toy_mnist(32, 7907);
    let f = collect(&m, &d, &StatsConfig::default(), &Device::Cpu).unwrap();
    for criterion in [Criterion::Nap, Criterion::Magnitude] {
        let cfg = StepConfig {
            criterion,
            fraction: 0.3,
            layer_cap: 1.0,
            update: ObsUpdate::None,
            damping: 0.1,
            block_rows: 4,
        };
        let mut p = m.clone();
        let mut masks = Masks::from_model(&p);
        let total = masks.alive();
        prune_step(&mut p, &mut masks, &f, &cfg).unwrap();
        let removed = total - masks.alive();
        let want = (total as f64 * 0.3).round() as usize;
        assert!(
            removed >= want && removed < want + 4,
            "{criterion:?}: removed {removed}, want {want}"
        );
        let (mut gone, mut kept) = (f64::NEG_INFINITY, f64::INFINITY);
        for (l, &(_, w)) in m.prunable().iter().enumerate() {
            let t = &m.tensors[w as usize];
            let rows = t.shape[0] as usize;
            let cols = t.numel() / rows;
            let inv = Inverses::new(&f[l], 0.1).unwrap();
            for r0 in (0..rows).step_by(4) {
                for j in 0..cols {
                    let members: Vec<usize> =
                        (r0..(r0 + 4).min(rows)).map(|i| i * cols + j).collect();
                    let alive = masks.0[l][members[0]];
                    assert!(
                        members.iter().all(|&k| masks.0[l][k] == alive),
                        "{criterion:?}: layer {l} block ({r0}, {j}) split"
                    );
                    let score: f64 = members
                        .iter()
                        .map(|&k| match criterion {
                            Criterion::Nap => inv.obs_score(t.data[k] as f64, k / cols, j),
                            _ => t.data[k].abs() as f64,
                        })
                        .sum();
                    if alive {
                        kept = kept.min(score);
                    } else {
                        gone = gone.max(score);
                    }
                }
            }
        }
        assert!(
            gone <= kept,
            "{criterion:?}: removed a block of cost {gone} over a kept one of {kept}"
        );
    }
}

/// `--obs-update masked-select` removes exactly the weights the masked OBS removes and leaves
/// every surviving weight (and bias) at its value; the masked OBS moves the survivors.
#[test]
fn issue12_masked_select_is_the_masked_choice_without_compensation() {
    use nap::prune::ObsUpdate;
    let m = archs::random("lenet-300-100", 3).unwrap();
    let f = collect(
        &m,
        &toy_mnist(64, 7919),
        &StatsConfig::default(),
        &Device::Cpu,
    )
    .unwrap();
    let run = |update| {
        let mut p = m.clone();
        let mut masks = Masks::from_model(&p);
        let cfg = StepConfig {
            criterion: Criterion::Nap,
            fraction: 0.3,
            update,
            ..Default::default()
        };
        prune_step(&mut p, &mut masks, &f, &cfg).unwrap();
        (p, masks)
    };
    let (compensated, mc) = run(ObsUpdate::Masked);
    let (selected, ms) = run(ObsUpdate::MaskedSelect);
    assert_eq!(mc.0, ms.0, "the same weights go");
    let mut moved = 0usize;
    for (t, ((orig, s), c)) in m
        .tensors
        .iter()
        .zip(&selected.tensors)
        .zip(&compensated.tensors)
        .enumerate()
    {
        let weight = selected
            .prunable()
            .iter()
            .position(|&(_, w)| w as usize == t);
        for (k, ((&o, &sv), &cv)) in orig.data.iter().zip(&s.data).zip(&c.data).enumerate() {
            let alive = weight.is_none_or(|l| ms.0[l][k]);
            if alive {
                assert_eq!(
                    sv, o,
                    "tensor {t}[{k}]: a survivor moved without compensation"
                );
                moved += usize::from(cv != o);
            } else {
                assert_eq!(sv, 0.0);
            }
        }
    }
    assert!(moved > 0, "the masked OBS compensates");
}
