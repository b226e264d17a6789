//! The pruning schedule on the embedded digits: tolerance, masks, targets, checkpoints and
//! resume, and the finished run's outputs.

use candle_core::Device;
use nap::archs;
use nap::data::{digits::load_digits, Dataset};
use nap::export::ExportOptions;
use nap::import::read_checkpoint;
use nap::ir::HostModel;
use nap::prune::{Criterion, Masks};
use nap::schedule::{load_state, run, Outcome, RunOptions, Schedule, Settings};
use nap::train::{train, TrainConfig};

struct Setup {
    dense: HostModel,
    train: Dataset,
    val: Dataset,
    test: Dataset,
}

fn setup() -> Setup {
    let (all, test) = load_digits().split(0.2, 0);
    let (train_set, val) = all.split(0.15, 0);
    let mut dense = archs::random("digits-cnn", 0).unwrap();
    train(
        &mut dense,
        &train_set,
        &TrainConfig {
            epochs: 8,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    Setup {
        dense,
        train: train_set,
        val,
        test,
    }
}

fn settings() -> Settings {
    Settings {
        max_drop: Some(0.02),
        stats_examples: 400,
        ft_epochs: 1,
        max_steps: 5,
        ..Default::default()
    }
}

fn go(
    s: &Setup,
    settings: &Settings,
    dir: &std::path::Path,
    resume: bool,
) -> anyhow::Result<Outcome> {
    run(
        &s.dense,
        &s.train,
        &s.val,
        settings,
        RunOptions {
            dir,
            resume,
            device: Device::Cpu,
            progress: false,
            log: &mut |_| {},
            reference: None,
        },
    )
}

fn weights(m: &HostModel) -> Vec<Vec<f32>> {
    m.tensors.iter().map(|t| t.data.clone()).collect()
}

/// Accepted steps respect the tolerance, rolled-back ones do not change the model, masks hold
/// and the state on disk describes the returned model.
#[test]
fn schedule_respects_tolerance_and_checkpoints() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Settings {
        step: 0.5,
        step_growth: 1.5,
        max_steps: 6,
        ..settings()
    };
    let out = go(&s, &cfg, dir.path(), false).unwrap();
    let st = &out.state;
    assert!(!st.steps.is_empty());
    // A rollback halves the step, an accepted step grows it back towards the first.
    for w in st.steps.windows(2) {
        let want = if w[0].accepted {
            (w[0].fraction * 1.5).min(cfg.step)
        } else {
            w[0].fraction / 2.0
        };
        assert_eq!(w[1].fraction, want, "{:?}", st.steps);
    }
    assert!(
        st.steps.windows(3).any(|w| !w[0].accepted && w[1].accepted),
        "no step grew after a rollback: {:?}",
        st.steps
    );
    assert!(st.stopped.is_some());
    let mut alive = st.dense.alive;
    let tol = cfg.max_drop.unwrap();
    for step in &st.steps {
        // The decision is the paired bound against the tolerance.
        let p = step.paired.unwrap();
        let bound = step.drop_bound.unwrap();
        assert_eq!(bound, p.upper(cfg.confidence));
        assert_eq!(p.n, s.val.n);
        if step.accepted {
            assert!(bound <= tol + 1e-12, "{step:?}");
            assert_eq!(step.alive, alive - step.removed);
            alive = step.alive;
        } else {
            assert!(bound > tol, "{step:?}");
            assert_eq!(step.alive, alive);
        }
    }
    // The final comparison is the returned model's, recomputed independently.
    let classes = 10;
    let dl = nap::schedule::logits(&s.dense, &s.val, &Device::Cpu).unwrap();
    let ml = nap::schedule::logits(&out.model, &s.val, &Device::Cpu).unwrap();
    let mut lost = 0;
    let mut gained = 0;
    for ((a, b), &y) in ml
        .chunks(classes)
        .zip(dl.chunks(classes))
        .zip(&s.val.labels)
    {
        let am = nap::util::argmax(a) == y as usize;
        let bm = nap::util::argmax(b) == y as usize;
        lost += (bm && !am) as usize;
        gained += (am && !bm) as usize;
    }
    let fp = st.final_paired.unwrap();
    assert_eq!((fp.lost, fp.gained), (lost, gained));
    let masks = Masks::from_model(&out.model);
    assert_eq!(masks.alive(), alive);
    assert!(
        st.accepted().count() > 0,
        "nothing was accepted: {:?}",
        st.steps
    );
    // The state file and the best checkpoint on disk are this run.
    let saved = load_state(dir.path()).unwrap().unwrap();
    assert_eq!(saved.steps.len(), st.steps.len());
    // The checkpoint carries its graph: no architecture name is needed to load it.
    let best = nap::import::load_model(
        &dir.path().join(saved.best.as_ref().unwrap()),
        None,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(weights(&best), weights(&out.model));
    // Validation accuracy recorded for the best model is what it scores.
    let v = nap::schedule::score(&out.model, &s.val, &Device::Cpu).unwrap();
    assert_eq!(v.accuracy, st.best_val().accuracy);
    // A second run into the same folder needs --resume; --resume with other settings fails.
    let err = go(&s, &cfg, dir.path(), false).err().unwrap().to_string();
    assert!(err.contains("--resume"), "{err}");
    let other = Settings {
        damping: 0.5,
        ..cfg.clone()
    };
    let err = format!("{:#}", go(&s, &other, dir.path(), true).err().unwrap());
    assert!(err.contains("damping"), "{err}");
}

/// Runs `cfg` once without a break (into `full`) and once stopped after two steps and resumed:
/// both end with the same steps and weights. Returns the uninterrupted run.
fn resume_matches_uninterrupted(s: &Setup, cfg: &Settings, full: &std::path::Path) -> Outcome {
    let a = go(s, cfg, full, false).unwrap();
    let part = tempfile::tempdir().unwrap();
    let first = go(
        s,
        &Settings {
            max_steps: 2,
            ..cfg.clone()
        },
        part.path(),
        false,
    )
    .unwrap();
    assert_eq!(first.state.steps.len(), 2);
    let b = go(s, cfg, part.path(), true).unwrap();
    assert_eq!(b.state.steps.len(), a.state.steps.len());
    for (x, y) in a.state.steps.iter().zip(&b.state.steps) {
        assert_eq!(
            (x.accepted, x.removed, x.alive),
            (y.accepted, y.removed, y.alive)
        );
        assert_eq!(x.val.accuracy, y.val.accuracy);
    }
    assert_eq!(weights(&a.model), weights(&b.model));
    a
}

/// An interrupted run resumed from its checkpoint ends exactly where an uninterrupted run ends.
#[test]
fn issue3_resume_matches_uninterrupted_run() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    resume_matches_uninterrupted(
        &s,
        &Settings {
            schedule: Schedule::Iterative,
            max_steps: 4,
            ..settings()
        },
        dir.path(),
    );
}

/// `--target-sparsity` without a tolerance prunes exactly to the target and stops there.
#[test]
fn target_sparsity_is_reached_exactly() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Settings {
        max_drop: None,
        target_sparsity: Some(0.6),
        criterion: Criterion::Magnitude,
        schedule: Schedule::Iterative,
        ft_epochs: 0,
        max_steps: 20,
        ..settings()
    };
    let out = go(&s, &cfg, dir.path(), false).unwrap();
    let st = &out.state;
    let alive = Masks::from_model(&out.model).alive();
    let keep = ((1.0 - 0.6) * st.dense.prunable as f64).floor() as usize;
    // Rounding of the last step's fraction may leave at most one weight per layer over.
    assert!(
        alive <= keep + st.dense.layers.len(),
        "{alive} alive, target {keep}"
    );
    assert!(
        alive + st.dense.layers.len() >= keep,
        "{alive} alive, target {keep}"
    );
    assert!(
        st.stopped.as_deref().unwrap().contains("target-sparsity"),
        "{:?} after {:?}",
        st.stopped,
        st.steps
            .iter()
            .map(|s| (s.fraction, s.removed))
            .collect::<Vec<_>>()
    );
    assert!(st.steps.iter().all(|s| s.accepted));
}

/// The finished run writes a `.nap` whose runtime accuracy equals the pruner's own evaluation,
/// safetensors under the checkpoint's key names with the zeros in place, a report and plots.
#[test]
fn finished_run_exports_consistent_files() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let out = go(&s, &settings(), dir.path(), false).unwrap();
    let r = nap::report::finish(
        &s.dense,
        &out,
        None,
        Some(&s.test),
        dir.path(),
        ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(r.pruned.runtime_test_accuracy, r.pruned.test_accuracy);
    let ag = r.pruned.runtime_agreement.as_ref().unwrap();
    assert_eq!(ag.top1_mismatches, 0);
    assert!(ag.max_rel_err < 1e-4);
    assert!(r.pruned.compression > 1.0);
    let kept: usize = r.layers.iter().map(|l| l.kept).sum();
    assert_eq!(kept, r.pruned.alive);
    let st = read_checkpoint(&dir.path().join("pruned.safetensors")).unwrap();
    let names: Vec<&str> = st.iter().map(|t| t.name.as_str()).collect();
    for t in &s.dense.tensors {
        assert!(names.contains(&t.name.as_str()), "{} missing", t.name);
    }
    let back = archs::from_checkpoint("digits-cnn", st).unwrap();
    assert_eq!(weights(&back), weights(&out.model));
    let path = dir.path().join("pruned.nap");
    let model = nap_runtime::Model::open(&path).unwrap();
    assert_eq!(r.pruned.nap_bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(model.metadata().arch, "digits-cnn");
    for f in ["report.json", "accuracy.svg", "density.svg"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(text.len() > 100, "{f} is nearly empty");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["layers"].as_array().unwrap().len(), r.layers.len());
}

/// The gradual schedule (prune events during fine-tuning, optimizer state kept, distillation)
/// resumed mid-run ends exactly where the uninterrupted run ends.
#[test]
fn issue12_gradual_resume_matches_uninterrupted_run() {
    let s = setup();
    let cfg = Settings {
        schedule: Schedule::Gradual,
        prune_events: 3,
        distill: 1.0,
        max_steps: 4,
        step: 0.4,
        ..settings()
    };
    let dir = tempfile::tempdir().unwrap();
    let a = resume_matches_uninterrupted(&s, &cfg, dir.path());
    assert!(a.state.accepted().count() > 0, "{:?}", a.state.steps);
    let opt = a.state.best_opt.as_ref().expect("optimizer state saved");
    let state =
        nap::train::OptState::from_named(read_checkpoint(&dir.path().join(opt)).unwrap()).unwrap();
    assert!(state.t > 0 && state.m.len() == a.model.tensors.len());
}

/// Gradual pruning to a target is one cubic ramp over the budget; `gmp` is magnitude pruning
/// in it, and needs it.
#[test]
fn issue12_gradual_target_is_one_ramp_and_gmp_needs_it() {
    let s = setup();
    for criterion in [Criterion::Nap, Criterion::Gmp] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Settings {
            schedule: Schedule::Gradual,
            criterion,
            max_drop: None,
            target_sparsity: Some(0.8),
            budget_epochs: Some(2.0),
            prune_events: 5,
            ..settings()
        };
        let out = go(&s, &cfg, dir.path(), false).unwrap();
        let st = &out.state;
        assert_eq!(st.steps.len(), 1, "{:?}", st.steps);
        let keep = ((1.0 - 0.8) * st.dense.prunable as f64).floor() as usize;
        let alive = Masks::from_model(&out.model).alive();
        assert!(alive.abs_diff(keep) <= 1, "{alive} alive, target {keep}");
        assert_eq!(st.ft_epochs_done, 2.0);
    }
    let dir = tempfile::tempdir().unwrap();
    let err = go(
        &s,
        &Settings {
            criterion: Criterion::Gmp,
            schedule: Schedule::Iterative,
            ..settings()
        },
        dir.path(),
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("gradual"), "{err}");
}
