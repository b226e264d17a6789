//! Pruning steps: exact counts, masks that stay applied, invariance of the global ranking.

use candle_core::Device;
use nap::archs;
use nap::data::Dataset;
use nap::kfac::{collect, StatsConfig};
use nap::prune::{prune_step, Criterion, Masks, StepConfig};

/// Every criterion removes the requested share, keeps masks applied and never revives a weight.
#[test]
fn masks_stay_applied_and_counts_are_exact() {
    let m = archs::random("lenet5-caffe", 1).unwrap();
    let d = Dataset {
        images: (0..16 * 784)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect(),
        labels: (0..16).map(|i| (i % 10) as u8).collect(),
        n: 16,
        shape: [1, 28, 28],
    };
    let f = collect(&m, &d, &StatsConfig::default(), &Device::Cpu).unwrap();
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
    let d = Dataset {
        images: (0..32 * 784)
            .map(|i| ((i * 104729) % 255) as f32 / 255.0)
            .collect(),
        labels: (0..32).map(|i| (i % 10) as u8).collect(),
        n: 32,
        shape: [1, 28, 28],
    };
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
    train_masked(&mut m, &train_set, &cfg, Some(&masks)).unwrap();
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
