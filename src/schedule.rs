//! The iterative pruning schedule that stops by itself.
//!
//! Each step scores the alive weights of the current best model, removes a fraction of them
//! ([`crate::prune::prune_step`]), fine-tunes with masked gradients and evaluates on a validation
//! split carved from the training data. The step is accepted when the validation accuracy stays
//! within the tolerance of the dense model's; otherwise the model is rolled back and the step
//! fraction halves. The run stops when the fraction falls below its minimum, or when a target
//! sparsity or file size is reached.
//!
//! Every step (accepted or not) is recorded in `state.json` in the run folder, written
//! atomically after the weights of the current best model (`best-NNNN.safetensors`, checkpoint
//! key names), so an interrupted run resumes from its last completed step.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::channel::{self, ChannelCost};
use crate::data::{permutation, Dataset};
use crate::eval;
use crate::export::{self, ExportOptions};
use crate::ir::{self, HostModel};
use crate::kfac::{self, Fisher, LayerFactors, StatsConfig};
use crate::prune::{self, Criterion, Masks, ObsUpdate, StepConfig};
use crate::stop::{self, Paired, StopRule};
use crate::train::{self, OptState, Teacher, TrainConfig};
use crate::util::atomic_write;
use crate::{groups, import, reference};

/// What a run removes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Single weights (or `--block` blocks): a sparse model.
    #[default]
    Fine,
    /// Whole channels and neurons ([`crate::groups`]): a smaller dense model.
    Channel,
    /// Channels first, then single weights of what remains, one tolerance for both.
    ChannelFine,
}

/// How pruning and fine-tuning interleave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Each step prunes once, then fine-tunes from a fresh optimizer.
    #[default]
    Iterative,
    /// Each step prunes during its fine-tuning: `--prune-events` removals on a cubic ramp over
    /// the first three quarters of the step's batches (Zhu & Gupta), the optimizer's state kept
    /// from step to step.
    Gradual,
}

impl Schedule {
    /// The schedule a criterion runs in unless one is given: gradual for NAP and gmp,
    /// iterative for the classic baselines.
    pub fn default_for(c: Criterion) -> Schedule {
        match c {
            Criterion::Nap | Criterion::Gmp => Schedule::Gradual,
            _ => Schedule::Iterative,
        }
    }
}

/// The share of a gradual step's batches over which its prune events are spread (the rest
/// recovers).
pub const RAMP: f64 = 0.75;

/// The first step of channel pruning when none is given: this fraction of the alive channels.
pub const CHANNEL_STEP: f64 = 0.1;

/// Everything that determines a run (saved with it; a resumed run must use the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub schedule: Schedule,
    /// Prune events per step of the gradual schedule.
    #[serde(default = "four")]
    pub prune_events: usize,
    /// Gradual schedule: collect fresh K-FAC statistics at every prune event (else the
    /// step's statistics serve all its events, with each event's own masks and weights).
    #[serde(default = "yes")]
    pub event_stats: bool,
    /// Stop once the fine-tuning epochs of all steps reach this many.
    #[serde(default)]
    pub budget_epochs: Option<f64>,
    /// Stop once the run has taken this many minutes.
    #[serde(default)]
    pub budget_minutes: Option<f64>,
    pub criterion: Criterion,
    pub obs_update: ObsUpdate,
    /// Relative damping of both K-FAC factors.
    pub damping: f64,
    /// First step: this fraction of the alive weights.
    pub step: f64,
    /// Stop when a rolled-back step would go below this fraction.
    pub min_step: f64,
    /// After an accepted step the step grows by this factor, up to `step` (1: a step halved by
    /// a rollback stays halved).
    #[serde(default = "unit")]
    pub step_growth: f64,
    /// At most this fraction of one layer's alive weights per step.
    pub layer_cap: f64,
    /// Rows per pruning block (`--block 4x1` is 4): whole `r × 1` blocks are scored by their
    /// summed cost and removed together; 1 prunes single weights.
    #[serde(default = "one")]
    pub block_rows: usize,
    /// Tolerated drop of validation accuracy below the dense model's, as a fraction (0.001 =
    /// 0.1 points), judged by [`crate::stop`]. `None`: no accuracy condition.
    pub max_drop: Option<f64>,
    /// Tolerated mean KL divergence (nats) of the pruned model's predictions from the dense
    /// model's on the validation split (needs no labels).
    #[serde(default)]
    pub max_kl: Option<f64>,
    /// One-sided confidence of the stop rule's upper bounds (0.5: the point estimates).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Stop once this fraction of the prunable weights is zero.
    pub target_sparsity: Option<f64>,
    /// Stop once the exported `.nap` (f32, CSR where smaller) is at most this many bytes.
    pub target_size: Option<u64>,
    /// Channel mode: stop once the dense model's multiply-accumulates over the pruned one's
    /// reach this factor.
    #[serde(default)]
    pub target_flops: Option<f64>,
    /// Channel mode: which members' costs a group's cost sums.
    #[serde(default)]
    pub channel_cost: ChannelCost,
    /// Channel mode: rank groups by `cost / flops^β` with this β (0: loss only).
    #[serde(default)]
    pub flops_weight: f64,
    /// Channel mode: every layer keeps a multiple of this many channels (1: any number).
    #[serde(default = "one")]
    pub channel_multiple: usize,
    /// `channel-fine`: tolerated drop of the channel phase (the fine phase then goes on to
    /// `max_drop`, both measured from the input model); `None`: half of `max_drop`.
    #[serde(default)]
    pub channel_drop: Option<f64>,
    /// `channel-fine`: the first step of the channel phase (`step` is the fine phase's);
    /// `None`: [`CHANNEL_STEP`].
    #[serde(default)]
    pub channel_step: Option<f64>,
    /// Steps (accepted or not) before the run stops; may change on `--resume`.
    pub max_steps: usize,
    pub fisher: Fisher,
    /// Temperature of the Fisher's label distribution (`true`, `exact`).
    #[serde(default = "unit")]
    pub fisher_temperature: f64,
    /// Labels sampled per example (`--fisher true`).
    #[serde(default = "one")]
    pub fisher_samples: usize,
    /// `--fisher exact` with this many backward passes (the most likely classes exactly, one
    /// more drawn from the rest); `None`: one per class.
    #[serde(default)]
    pub fisher_classes: Option<usize>,
    /// `--fisher exact` estimated with this many Gaussian probes (one backward pass each).
    #[serde(default)]
    pub fisher_probes: Option<usize>,
    /// Label smoothing of `--fisher empirical`.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Examples per K-FAC statistics pass.
    pub stats_examples: usize,
    pub stats_batch: usize,
    /// Fine-tuning after every step.
    pub ft_epochs: usize,
    /// Fine-tune each step on this many training examples drawn afresh per step (all if
    /// `None`).
    #[serde(default)]
    pub ft_examples: Option<usize>,
    pub ft_lr: f64,
    pub ft_batch: usize,
    pub ft_weight_decay: f64,
    /// Fraction of each fine-tune spent warming the learning rate up.
    #[serde(default)]
    pub ft_warmup: f64,
    /// One longer fine-tune of the final model (kept only if validation accuracy does not
    /// drop).
    pub final_epochs: usize,
    /// Weight of distillation from the dense model in every fine-tune (0: labels only, 1: the
    /// dense model's predictions only).
    #[serde(default)]
    pub distill: f64,
    /// Temperature of the distillation.
    #[serde(default = "two")]
    pub distill_temperature: f64,
    /// Validation split carved from the training data (same split as `nap train`).
    pub val_fraction: f32,
    /// Confirmation split carved next to it, which nothing selects on.
    #[serde(default)]
    pub confirm_fraction: f32,
    pub val_seed: u64,
    /// Seed of statistics sampling and fine-tuning order.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Fine,
            schedule: Schedule::Gradual,
            prune_events: 4,
            event_stats: true,
            budget_epochs: None,
            budget_minutes: None,
            criterion: Criterion::Nap,
            obs_update: ObsUpdate::Masked,
            damping: 1e-1,
            step: 0.2,
            min_step: 0.025,
            step_growth: 1.0,
            layer_cap: 0.5,
            channel_multiple: 1,
            block_rows: 1,
            max_drop: Some(0.001),
            max_kl: None,
            confidence: DEFAULT_CONFIDENCE,
            target_sparsity: None,
            target_size: None,
            target_flops: None,
            channel_cost: ChannelCost::Producer,
            flops_weight: 0.0,
            channel_drop: None,
            channel_step: None,
            max_steps: 100,
            fisher: Fisher::Exact,
            fisher_temperature: 2.0,
            fisher_samples: 1,
            fisher_classes: None,
            fisher_probes: Some(2),
            label_smoothing: 0.0,
            stats_examples: 4000,
            stats_batch: 128,
            ft_epochs: 2,
            ft_examples: None,
            ft_lr: 3e-4,
            ft_batch: 64,
            ft_weight_decay: 0.0,
            ft_warmup: 0.1,
            final_epochs: 0,
            distill: 1.0,
            distill_temperature: 2.0,
            val_fraction: 0.1,
            confirm_fraction: 0.05,
            val_seed: 0,
            seed: 0,
        }
    }
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if !(self.step > 0.0 && self.step < 1.0) {
            bail!("--step must be in (0, 1), got {}", self.step);
        }
        if !(self.min_step > 0.0 && self.min_step <= self.step) {
            bail!(
                "--min-step must be in (0, step = {}], got {}",
                self.step,
                self.min_step
            );
        }
        if !(self.step_growth >= 1.0 && self.step_growth.is_finite()) {
            bail!("--step-growth must be at least 1, got {}", self.step_growth);
        }
        if !(1..=64).contains(&self.block_rows) {
            bail!("--block must have 1 to 64 rows, got {}", self.block_rows);
        }
        if self.channel_multiple == 0 {
            bail!("--channel-multiple must be at least 1");
        }
        if self.channel_multiple > 1 && self.mode == Mode::Fine {
            bail!("--channel-multiple applies to --mode channel and channel-fine");
        }
        if !(self.layer_cap > 0.0 && self.layer_cap <= 1.0) {
            bail!("--layer-cap must be in (0, 1], got {}", self.layer_cap);
        }
        if let Some(d) = self.max_drop {
            if !(0.0..1.0).contains(&d) {
                bail!("--max-drop must be in [0, 100%), got {}", d);
            }
        }
        if let Some(s) = self.target_sparsity {
            if !(s > 0.0 && s < 1.0) {
                bail!("--target-sparsity must be in (0, 1), got {s}");
            }
        }
        if !(self.confidence >= 0.5 && self.confidence < 1.0) {
            bail!("--confidence must be in [0.5, 1), got {}", self.confidence);
        }
        if let Some(k) = self.max_kl {
            if !(k > 0.0 && k.is_finite()) {
                bail!("--max-kl must be positive, got {k}");
            }
        }
        if !(0.0..=1.0).contains(&self.distill) {
            bail!("--distill must be in [0, 1], got {}", self.distill);
        }
        if !(self.distill_temperature > 0.0 && self.distill_temperature.is_finite()) {
            bail!(
                "--distill-temperature must be positive, got {}",
                self.distill_temperature
            );
        }
        if !(self.confirm_fraction >= 0.0 && self.val_fraction + self.confirm_fraction < 1.0) {
            bail!(
                "--confirm-fraction must be at least 0 and leave training data (validation {} + confirmation {})",
                self.val_fraction,
                self.confirm_fraction
            );
        }
        if self.max_drop.is_none()
            && self.max_kl.is_none()
            && self.target_sparsity.is_none()
            && self.target_size.is_none()
            && self.target_flops.is_none()
        {
            bail!(
                "nothing would stop the run: give --max-drop, --target-sparsity, --target-size or --target-flops"
            );
        }
        if let Some(t) = self.target_flops {
            if !(t > 1.0 && t.is_finite()) {
                bail!("--target-flops must be a reduction factor above 1, got {t}");
            }
            if self.mode == Mode::Fine {
                bail!("--target-flops needs --mode channel or channel-fine");
            }
        }
        if self.criterion == Criterion::Gmp && self.schedule != Schedule::Gradual {
            bail!("--criterion gmp is magnitude pruning in --schedule gradual");
        }
        if self.schedule == Schedule::Gradual {
            if self.mode == Mode::Channel {
                bail!("--schedule gradual prunes single weights (--mode fine, or the fine phase of channel-fine)");
            }
            if self.ft_epochs == 0 {
                bail!(
                    "--schedule gradual prunes during fine-tuning: --ft-epochs must be at least 1"
                );
            }
            if self.prune_events == 0 {
                bail!("--prune-events must be at least 1");
            }
        }
        for (b, what) in [
            (self.budget_epochs, "--budget"),
            (self.budget_minutes, "--budget"),
        ] {
            if let Some(b) = b {
                if !(b > 0.0 && b.is_finite()) {
                    bail!("{what} must be positive, got {b}");
                }
            }
        }
        if self.mode != Mode::Fine {
            if !matches!(self.criterion, Criterion::Nap | Criterion::Magnitude) {
                bail!(
                    "--mode {:?}: the criterion must be nap or magnitude (L1-norm filter pruning), got {:?}",
                    self.mode,
                    self.criterion
                );
            }
            if self.block_rows != 1 && self.mode == Mode::Channel {
                bail!("--block applies to fine-grained pruning, not to --mode channel");
            }
            if self.target_sparsity.is_some() && self.mode == Mode::Channel {
                bail!("--target-sparsity counts single weights; with --mode channel give --target-flops or --target-size");
            }
        }
        if let Some(c) = self.channel_step {
            if self.mode != Mode::ChannelFine {
                bail!("--channel-step applies to --mode channel-fine (elsewhere give --step)");
            }
            if !(c > 0.0 && c < 1.0) {
                bail!("--channel-step must be in (0, 1), got {c}");
            }
        }
        if let Some(c) = self.channel_drop {
            if self.mode != Mode::ChannelFine {
                bail!("--channel-drop applies to --mode channel-fine");
            }
            if !(c >= 0.0 && self.max_drop.is_some_and(|d| c <= d)) {
                bail!("--channel-drop must be in [0, --max-drop], got {c}");
            }
        }
        if !(self.flops_weight >= 0.0 && self.flops_weight.is_finite()) {
            bail!(
                "--flops-weight must be non-negative, got {}",
                self.flops_weight
            );
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            bail!(
                "--val-fraction must be in (0, 1), got {}",
                self.val_fraction
            );
        }
        if self.stats_examples == 0 || self.stats_batch == 0 || self.ft_batch == 0 {
            bail!("statistics examples and batch sizes must be positive");
        }
        if !(self.damping > 0.0 && self.damping.is_finite()) {
            bail!("--damping must be positive, got {}", self.damping);
        }
        Ok(())
    }

    /// The fine-tuning configuration for `epochs` epochs.
    fn finetune(&self, epochs: usize, seed: u64, progress: bool, dev: &Device) -> TrainConfig {
        TrainConfig {
            epochs,
            batch: self.ft_batch,
            lr: self.ft_lr,
            weight_decay: self.ft_weight_decay,
            seed,
            progress,
            device: dev.clone(),
            warmup: self.ft_warmup,
        }
    }

    /// The stop rule these settings describe.
    pub fn rule(&self) -> StopRule {
        StopRule {
            max_drop: self.max_drop,
            max_kl: self.max_kl,
            confidence: self.confidence,
        }
    }

    fn needs_curvature(&self) -> bool {
        matches!(self.criterion, Criterion::Nap | Criterion::Obd)
    }

    /// The settings of one phase of a channel-then-fine run.
    pub fn phase(&self, mode: Mode) -> Settings {
        let mut s = self.clone();
        s.mode = mode;
        s.channel_drop = None;
        s.channel_step = None;
        if mode == Mode::Fine {
            s.target_flops = None;
            s.channel_multiple = 1;
        } else {
            s.schedule = Schedule::Iterative;
            s.block_rows = 1;
            s.target_sparsity = None;
            s.target_size = None;
            if self.mode == Mode::ChannelFine {
                s.max_drop = self.channel_drop.or(self.max_drop.map(|d| d / 2.0));
                // The same rollback depth below the first step as the fine phase.
                s.step = self.channel_step.unwrap_or(CHANNEL_STEP);
                s.min_step = self.min_step * s.step / self.step;
            }
        }
        s
    }
}

fn default_confidence() -> f64 {
    DEFAULT_CONFIDENCE
}

/// The stop rule's default one-sided confidence.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

fn two() -> f64 {
    2.0
}

fn yes() -> bool {
    true
}

fn four() -> usize {
    4
}

fn one() -> usize {
    1
}

fn unit() -> f64 {
    1.0
}

/// Accuracy and loss of one model on the validation split.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ValScore {
    pub accuracy: f32,
    pub loss: f64,
}

/// One step of the schedule, accepted or rolled back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    /// Fraction of the alive weights this step tried to remove.
    pub fraction: f64,
    pub accepted: bool,
    pub removed: usize,
    /// Alive prunable weights after the step (if accepted).
    pub alive: usize,
    /// Prunable weights / alive ones after the step.
    pub compression: f64,
    /// Multiply-accumulates per example of the dense model over the step's result.
    #[serde(default)]
    pub flops_reduction: Option<f64>,
    /// Sum of the removed weights' scores (loss units for nap and obd).
    pub predicted_dl: f64,
    /// Validation loss right after pruning (before fine-tuning) minus before.
    pub measured_dl: f64,
    /// The same change of the loss on the statistics examples (training data, where the
    /// curvature was estimated).
    #[serde(default)]
    pub measured_dl_train: Option<f64>,
    /// The symmetric second difference of the validation loss along the step `δ`,
    /// `½ (L(θ + δ) + L(θ − δ)) − L(θ)`: the step's second-order increase on validation data,
    /// with the first-order term (which no curvature predicts) cancelled.
    #[serde(default)]
    pub measured_d2_val: Option<f64>,
    /// Validation accuracy right after pruning, before fine-tuning.
    pub pruned_accuracy: f32,
    /// Validation of the step's result.
    pub val: ValScore,
    /// The step's result against the dense model on the validation split, example by example.
    #[serde(default)]
    pub paired: Option<Paired>,
    /// The upper confidence bound of the accuracy drop the decision compared with the
    /// tolerance.
    #[serde(default)]
    pub drop_bound: Option<f64>,
    pub removed_per_layer: Vec<usize>,
    pub predicted_per_layer: Vec<f64>,
    pub stats_s: f64,
    pub prune_s: f64,
    pub finetune_s: f64,
}

/// The dense starting point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DenseInfo {
    pub val: ValScore,
    /// Weights of the prunable layers.
    pub prunable: usize,
    /// Non-zero prunable weights at the start.
    pub alive: usize,
    /// All parameters (biases, BatchNorm included).
    pub params: usize,
    pub layers: Vec<String>,
    pub layer_params: Vec<usize>,
    /// Multiply-accumulates per example of the Linear and Conv2d layers.
    #[serde(default)]
    pub macs: f64,
    /// The validation score the tolerance is measured from, when it is not this run's input
    /// (the second phase of `--mode channel-fine` measures from the original model).
    #[serde(default)]
    pub reference_val: Option<ValScore>,
}

impl DenseInfo {
    /// The validation score the tolerance is measured from.
    pub fn reference(&self) -> ValScore {
        self.reference_val.unwrap_or(self.val)
    }
}

/// The run folder's `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub arch: String,
    pub settings: Settings,
    pub dense: DenseInfo,
    pub steps: Vec<StepRecord>,
    /// The fraction the next step will try.
    pub fraction: f64,
    /// File (in the run folder) holding the current best weights; `None` = the dense input.
    pub best: Option<String>,
    /// Why the run stopped, once it has.
    pub stopped: Option<String>,
    /// The final fine-tune has run (its result is `best` if it was kept).
    #[serde(default)]
    pub final_done: bool,
    /// The stop was `max_steps` (a resumed run with a larger budget goes on).
    #[serde(default)]
    pub stopped_by_budget: bool,
    /// Validation after the final fine-tune, if it was kept.
    #[serde(default)]
    pub final_val: Option<ValScore>,
    /// The final model against the dense one on the validation split.
    #[serde(default)]
    pub final_paired: Option<Paired>,
    /// Warnings the run gave (each once).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Fine-tuning epochs run so far (all steps, accepted or not).
    #[serde(default)]
    pub ft_epochs_done: f64,
    /// File (in the run folder) holding the optimizer state of the best model (gradual).
    #[serde(default)]
    pub best_opt: Option<String>,
    /// Wall time spent so far, over all sessions.
    pub seconds: f64,
    /// Seconds per phase over the whole run.
    pub stats_s: f64,
    pub finetune_s: f64,
}

impl RunState {
    pub fn accepted(&self) -> impl Iterator<Item = &StepRecord> {
        self.steps.iter().filter(|s| s.accepted)
    }

    /// Validation score of the current best model.
    pub fn best_val(&self) -> ValScore {
        self.final_val
            .or_else(|| self.accepted().last().map(|s| s.val))
            .unwrap_or(self.dense.val)
    }

    /// Predicted loss increase per layer, summed over accepted steps.
    pub fn predicted_per_layer(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.dense.layers.len()];
        for s in self.accepted() {
            for (o, p) in out.iter_mut().zip(&s.predicted_per_layer) {
                *o += p;
            }
        }
        out
    }
}

/// The outcome of [`run`].
pub struct Outcome {
    pub model: HostModel,
    pub state: RunState,
}

/// Where to put things and what to show.
pub struct RunOptions<'a> {
    pub dir: &'a Path,
    pub resume: bool,
    pub device: Device,
    pub progress: bool,
    /// One line per event (steps, stops).
    pub log: &'a mut dyn FnMut(&str),
    /// Measure the tolerance from (and distil from) this model instead of the input.
    pub reference: Option<&'a HostModel>,
}

const STATE: &str = "state.json";

/// Logits of `m` on `data`, in candle.
pub fn logits(m: &HostModel, data: &Dataset, dev: &Device) -> Result<Vec<f32>> {
    eval::reference_logits_on(m, &data.images, 512, false, dev)
}

impl ValScore {
    pub fn of(logits: &[f32], data: &Dataset) -> ValScore {
        let classes = logits.len() / data.n.max(1);
        ValScore {
            accuracy: eval::accuracy(logits, &data.labels, classes),
            loss: eval::cross_entropy(logits, &data.labels, classes),
        }
    }
}

/// Validation accuracy and loss of `m` on `val`.
pub fn score(m: &HostModel, val: &Dataset, dev: &Device) -> Result<ValScore> {
    Ok(ValScore::of(&logits(m, val, dev)?, val))
}

/// The rows of `logits` (`classes` each) at `idx`.
fn gather(logits: &[f32], idx: &[usize], classes: usize) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| logits[i * classes..(i + 1) * classes].iter().copied())
        .collect()
}

/// Prunable weights / alive weights.
pub fn compression(prunable: usize, alive: usize) -> f64 {
    prunable as f64 / alive.max(1) as f64
}

/// Alive weights at sparsity `target` (rounded so the sparsity is at least the target).
fn keep_for(target: f64, prunable: usize) -> usize {
    ((1.0 - target) * prunable as f64).floor() as usize
}

fn save_state(dir: &Path, st: &RunState) -> Result<()> {
    atomic_write(&dir.join(STATE), &serde_json::to_vec_pretty(st)?)
}

/// Reads the state of a run folder, if it has one.
pub fn load_state(dir: &Path) -> Result<Option<RunState>> {
    let p = dir.join(STATE);
    if !p.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
        format!("{} is not a nap prune state file", p.display())
    })?))
}

/// Names the settings that differ between two runs.
/// `max_steps` is a budget, not part of the method: a resumed run may raise it.
fn settings_diff(a: &Settings, b: &Settings) -> Vec<String> {
    let (ja, jb) = (serde_json::to_value(a), serde_json::to_value(b));
    match (ja, jb) {
        (Ok(serde_json::Value::Object(x)), Ok(serde_json::Value::Object(y))) => x
            .iter()
            .filter(|(k, v)| *k != "max_steps" && y.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} (saved) vs {} (now)", y[k]))
            .collect(),
        _ => vec!["unreadable settings".into()],
    }
}

/// Runs (or resumes) the schedule on `dense`, checkpointing into `opts.dir`.
pub fn run(
    dense: &HostModel,
    train_set: &Dataset,
    val: &Dataset,
    settings: &Settings,
    opts: RunOptions<'_>,
) -> Result<Outcome> {
    settings.check()?;
    train::check_classifier(dense)?;
    train::check_data(dense, train_set)?;
    train::check_data(dense, val).context("validation split")?;
    let dir = opts.dir;
    let dev = opts.device.clone();
    let log = opts.log;
    let reference_model = opts.reference.unwrap_or(dense);
    let classes = dense.output_shape().iter().product::<u32>() as usize;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let t_start = Instant::now();
    let ref_logits = logits(reference_model, val, &dev)?;
    let (mut st, mut best) = match load_state(dir)? {
        Some(st) if opts.resume => {
            if st.arch != dense.meta.arch {
                bail!(
                    "{} holds a run of {}, not of {}",
                    dir.display(),
                    st.arch,
                    dense.meta.arch
                );
            }
            let mut st = st;
            let diff = settings_diff(&st.settings, settings);
            if !diff.is_empty() {
                bail!(
                    "cannot resume {}: settings differ ({})",
                    dir.display(),
                    diff.join("; ")
                );
            }
            let best = match &st.best {
                Some(f) => {
                    let p = dir.join(f);
                    import::load_model(&p, None, &Default::default())
                        .with_context(|| format!("loading {}", p.display()))?
                }
                None => dense.clone(),
            };
            if st.stopped.is_some() && st.stopped_by_budget && st.steps.len() < settings.max_steps {
                // Continue from the current best (the final fine-tune, if kept, included).
                st.stopped = None;
                st.final_done = false;
                st.final_val = None;
                st.final_paired = None;
            }
            st.settings.max_steps = settings.max_steps;
            log(&format!(
                "resuming {}: {} steps done, {} accepted, compression {:.1}x",
                dir.display(),
                st.steps.len(),
                st.accepted().count(),
                compression(st.dense.prunable, Masks::from_model(&best).alive())
            ));
            (st, best)
        }
        Some(_) => bail!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            dir.display()
        ),
        None => {
            let val_score = score(dense, val, &dev)?;
            let masks = Masks::from_model(dense);
            let layers = dense.prunable();
            let mut st = RunState {
                arch: dense.meta.arch.clone(),
                settings: settings.clone(),
                dense: DenseInfo {
                    val: val_score,
                    prunable: dense.prunable_sizes().iter().sum(),
                    alive: masks.alive(),
                    params: dense.param_count(),
                    layers: layers
                        .iter()
                        .map(|&(n, _)| dense.graph.nodes[n].name.clone())
                        .collect(),
                    layer_params: dense.prunable_sizes(),
                    macs: channel::macs(dense),
                    reference_val: opts.reference.map(|_| ValScore::of(&ref_logits, val)),
                },
                steps: Vec::new(),
                fraction: settings.step,
                best: None,
                stopped: None,
                final_done: false,
                final_val: None,
                final_paired: None,
                warnings: Vec::new(),
                ft_epochs_done: 0.0,
                best_opt: None,
                stopped_by_budget: false,
                seconds: 0.0,
                stats_s: 0.0,
                finetune_s: 0.0,
            };
            log(&format!(
                "dense: validation accuracy {:.2}% (loss {:.4}) on {} examples, {} prunable weights",
                100.0 * val_score.accuracy,
                val_score.loss,
                val.n,
                st.dense.prunable
            ));
            if let Some(t) = settings.max_drop {
                log(&format!(
                    "stop rule: a step is accepted when the {:.0}% upper bound of its paired accuracy drop on the validation split is at most {:.3}%",
                    100.0 * settings.confidence,
                    100.0 * t
                ));
                if let Some(w) = stop::resolution_warning(t, val.n, 0, settings.confidence) {
                    log(&format!("warning: {w}"));
                    st.warnings.push(w);
                }
            }
            save_state(dir, &st)?;
            (st, dense.clone())
        }
    };
    let seconds_before = st.seconds;
    let channels = settings.mode == Mode::Channel;
    if settings.mode == Mode::ChannelFine {
        bail!("--mode channel-fine runs as two phases (schedule::run_phases)");
    }
    let rule = settings.rule();
    let judge_on = |logits: &[f32]| -> (ValScore, Paired) {
        (
            ValScore::of(logits, val),
            Paired::compare(logits, &ref_logits, Some(&val.labels), classes),
        )
    };
    let teacher_logits =
        if settings.distill > 0.0 && (settings.ft_epochs > 0 || settings.final_epochs > 0) {
            Some(logits(reference_model, train_set, &dev)?)
        } else {
            None
        };
    let teacher_for = |idx: Option<&[usize]>| -> Option<Vec<f32>> {
        teacher_logits.as_ref().map(|t| match idx {
            Some(i) => gather(t, i, classes),
            None => t.clone(),
        })
    };
    let gradual = settings.schedule == Schedule::Gradual;
    let target_only = settings.max_drop.is_none() && settings.max_kl.is_none();
    let mut opt_state: Option<OptState> = match (&st.best_opt, gradual) {
        (Some(f), true) => Some(OptState::from_named(import::read_checkpoint(
            &dir.join(f),
        )?)?),
        (None, true) => Some(OptState::default()),
        _ => None,
    };
    let mut masks = Masks::from_model(&best);
    let mut best_val = st.best_val();
    // K-FAC factors of the current best model, reused after a rollback.
    let mut factors: Option<Vec<LayerFactors>> = None;
    let n_layers = st.dense.layers.len();
    while st.stopped.is_none() {
        let k = st.steps.len() + 1;
        // Channel mode: the current model's groups, for the count, the statistics and the step.
        let best_groups = channels.then(|| groups::analyze(&best)).transpose()?;
        let alive = match &best_groups {
            Some(g) => g.groups.len(),
            None => masks.alive(),
        };
        let macs_now = channel::macs(&best);
        st.stopped_by_budget = k > settings.max_steps;
        let stop = if k > settings.max_steps {
            Some(format!("reached --max-steps {}", settings.max_steps))
        } else if st.fraction < settings.min_step {
            Some(format!(
                "the step fell below --min-step {} after rollbacks",
                settings.min_step
            ))
        } else if let Some(b) = settings
            .budget_epochs
            .filter(|&b| st.ft_epochs_done >= b - 1e-9)
        {
            Some(format!("reached --budget {b} epochs"))
        } else if let Some(b) = settings
            .budget_minutes
            .filter(|&b| seconds_before + t_start.elapsed().as_secs_f64() >= 60.0 * b)
        {
            Some(format!("reached --budget {b} minutes"))
        } else if !channels && alive <= n_layers {
            Some("only one weight per layer is left".to_string())
        } else if channels && alive == 0 {
            Some("no prunable channel is left".to_string())
        } else if let Some(t) = settings
            .target_flops
            .filter(|&t| st.dense.macs >= t * macs_now * (1.0 - 1e-9))
        {
            Some(format!("reached --target-flops {t}x"))
        } else if let Some(t) = settings
            .target_sparsity
            .filter(|&t| alive <= keep_for(t, st.dense.prunable))
        {
            Some(format!("reached --target-sparsity {t}"))
        } else {
            settings
                .target_size
                .filter(|&t| {
                    export::to_nap_bytes(&best, ExportOptions::default())
                        .map(|b| b.len() as u64 <= t)
                        .unwrap_or(false)
                })
                .map(|t| format!("reached --target-size {t} bytes"))
        };
        if let Some(reason) = stop {
            log(&format!("stop: {reason}"));
            st.stopped = Some(reason);
            break;
        }
        let mut fraction = st.fraction;
        if let (Some(t), false) = (settings.target_sparsity, channels) {
            let keep = keep_for(t, st.dense.prunable);
            let needed = alive.saturating_sub(keep) as f64 / alive as f64;
            // Gradual pruning to a target is one ramp over the whole budget.
            fraction = if gradual && target_only {
                needed
            } else {
                fraction.min(needed)
            };
        }
        let step_epochs = if gradual && target_only {
            settings
                .budget_epochs
                .map_or(settings.ft_epochs, |b| (b.ceil() as usize).max(1))
        } else {
            settings.ft_epochs
        };
        // Statistics.
        let t0 = Instant::now();
        // Seeded by the model's generation, so a resumed run draws what an uninterrupted one
        // reuses after a rollback.
        let generation = st.accepted().count() as u64;
        let stats_set = || {
            let idx = permutation(train_set.n, settings.seed.wrapping_add(generation));
            train_set.subset(&idx[..settings.stats_examples.min(train_set.n)])
        };
        let stats_cfg = |nodes| StatsConfig {
            fisher: settings.fisher,
            temperature: settings.fisher_temperature,
            samples: settings.fisher_samples,
            top_classes: settings.fisher_classes,
            probes: settings.fisher_probes,
            label_smoothing: settings.label_smoothing,
            batch: settings.stats_batch,
            max_examples: None,
            seed: settings.seed.wrapping_add(1000 + generation),
            progress: opts.progress,
            nodes,
            ..Default::default()
        };
        if settings.needs_curvature() && factors.is_none() {
            let cfg = stats_cfg(best_groups.as_ref().map(channel::curvature_nodes));
            factors = Some(kfac::collect(&best, &stats_set(), &cfg, &dev)?);
        }
        let mut stats_s = t0.elapsed().as_secs_f64();
        let step_cfg = |fraction: f64| StepConfig {
            criterion: settings.criterion,
            fraction,
            layer_cap: settings.layer_cap,
            update: settings.obs_update,
            damping: settings.damping,
            block_rows: settings.block_rows,
        };
        // The fine-tuning data of this step and the teacher's logits on it.
        let ft_idx = settings.ft_examples.filter(|&n| n < train_set.n).map(|n| {
            permutation(train_set.n, settings.seed.wrapping_add(5000 + k as u64))[..n].to_vec()
        });
        let ft_subset = ft_idx.as_ref().map(|i| train_set.subset(i));
        let ft_data = ft_subset.as_ref().unwrap_or(train_set);
        let ft_teacher = teacher_for(ft_idx.as_deref());
        let teacher = ft_teacher.as_ref().map(|l| Teacher {
            logits: l,
            weight: settings.distill,
            temperature: settings.distill_temperature,
        });
        let ft_cfg = settings.finetune(
            step_epochs,
            settings.seed.wrapping_add(k as u64),
            opts.progress,
            &dev,
        );
        let mut trial = best.clone();
        let mut trial_masks = masks.clone();
        let mut trial_opt = opt_state.clone();
        let (
            removed,
            removed_per_layer,
            predicted_dl,
            predicted_per_layer,
            pruned,
            prune_s,
            finetune_s,
        );
        let (mut measured_dl_train, mut measured_d2_val) = (None, None);
        if gradual {
            // Prune events on a cubic ramp from `alive` to `alive_end` during fine-tuning.
            let alive_end = alive - (fraction * alive as f64).round() as usize;
            let ev = settings.prune_events;
            let targets: Vec<usize> = (1..=ev)
                .map(|e| {
                    let f = 1.0 - e as f64 / ev as f64;
                    alive_end + ((alive - alive_end) as f64 * f * f * f).round() as usize
                })
                .collect();
            let total = (step_epochs * ft_data.n.div_ceil(settings.ft_batch)).max(1);
            let ramp = ((RAMP * total as f64) as usize).max(1);
            let events: Vec<usize> = (0..ev).map(|e| e * ramp / ev).collect();
            let mut per_layer = vec![0usize; n_layers];
            let mut pred_layer = vec![0f64; n_layers];
            let mut first: Option<(f64, ValScore)> = None;
            let mut event_stats_s = 0.0;
            let mut hook_s = 0.0;
            let cached = factors.clone();
            let t_train;
            {
                let mut hook = |m: &mut HostModel, mk: &mut Masks, e: usize| -> Result<()> {
                    let t_hook = Instant::now();
                    let now = mk.alive();
                    if now <= targets[e] {
                        return Ok(());
                    }
                    let f = match (e, &cached) {
                        (0, Some(f)) => f.clone(),
                        (_, Some(f)) if !settings.event_stats => f.clone(),
                        _ if settings.needs_curvature() => {
                            let t = Instant::now();
                            let f = kfac::collect(m, &stats_set(), &stats_cfg(None), &dev)?;
                            event_stats_s += t.elapsed().as_secs_f64();
                            f
                        }
                        _ => Vec::new(),
                    };
                    let r = prune::prune_step(
                        m,
                        mk,
                        &f,
                        &step_cfg((now - targets[e]) as f64 / now as f64),
                    )?;
                    for (a, b) in per_layer.iter_mut().zip(&r.removed) {
                        *a += b;
                    }
                    for (a, b) in pred_layer.iter_mut().zip(&r.predicted_per_layer) {
                        *a += b;
                    }
                    if first.is_none() {
                        first = Some((r.predicted_loss_increase, score(m, val, &dev)?));
                    }
                    hook_s += t_hook.elapsed().as_secs_f64();
                    Ok(())
                };
                t_train = Instant::now();
                train::train_with_events(
                    &mut trial,
                    ft_data,
                    &ft_cfg,
                    Some(&mut trial_masks),
                    teacher.as_ref(),
                    trial_opt.as_mut(),
                    &events,
                    &mut hook,
                )?;
            }
            let (p0, s0) = first.unwrap_or((0.0, best_val));
            removed = per_layer.iter().sum::<usize>();
            removed_per_layer = per_layer;
            predicted_dl = p0;
            predicted_per_layer = pred_layer;
            pruned = s0;
            prune_s = hook_s - event_stats_s;
            stats_s += event_stats_s;
            finetune_s = t_train.elapsed().as_secs_f64() - hook_s;
            if removed == 0 {
                let reason = "the per-layer caps allow no further removal".to_string();
                log(&format!("stop: {reason}"));
                st.stopped = Some(reason);
                break;
            }
        } else {
            // Prune a copy.
            let t1 = Instant::now();
            (
                removed,
                removed_per_layer,
                predicted_dl,
                predicted_per_layer,
            ) = if let Some(bg) = &best_groups {
                let (t, r) = channel::channel_step(
                    &best,
                    bg,
                    factors.as_deref().unwrap_or(&[]),
                    &channel::ChannelStepConfig {
                        criterion: settings.criterion,
                        cost: settings.channel_cost,
                        fraction,
                        layer_cap: settings.layer_cap,
                        flops_weight: settings.flops_weight,
                        damping: settings.damping,
                        compensate: settings.obs_update.compensates(),
                        max_macs: settings.target_flops.map(|t| macs_now - st.dense.macs / t),
                        channel_multiple: settings.channel_multiple,
                    },
                )?;
                trial = t;
                // Removing channels and compensating shifts the statistics every later BatchNorm
                // normalises with: recompute them (no-op without BatchNorm).
                let idx = permutation(train_set.n, settings.seed.wrapping_add(7000 + k as u64));
                let calib = train_set.subset(&idx[..train_set.n.min(256)]);
                reference::recalibrate_batchnorm(&mut trial, &calib.images)?;
                trial_masks = Masks::from_model(&trial);
                (
                    r.removed,
                    r.removed_per_layer,
                    r.predicted_loss_increase,
                    r.predicted_per_layer,
                )
            } else {
                let r = prune::prune_step(
                    &mut trial,
                    &mut trial_masks,
                    factors.as_deref().unwrap_or(&[]),
                    &step_cfg(fraction),
                )?;
                (
                    r.removed.iter().sum(),
                    r.removed,
                    r.predicted_loss_increase,
                    r.predicted_per_layer,
                )
            };
            pruned = score(&trial, val, &dev)?;
            if settings.needs_curvature() && !channels {
                let train_loss = |m: &HostModel| -> Result<f64> {
                    let d = stats_set();
                    Ok(ValScore::of(&logits(m, &d, &dev)?, &d).loss)
                };
                measured_dl_train = Some(train_loss(&trial)? - train_loss(&best)?);
                let mut mirror = best.clone();
                for (t, (b, p)) in mirror
                    .tensors
                    .iter_mut()
                    .zip(best.tensors.iter().zip(&trial.tensors))
                {
                    for (x, (xb, xp)) in t.data.iter_mut().zip(b.data.iter().zip(&p.data)) {
                        *x = 2.0 * xb - xp;
                    }
                }
                let back = score(&mirror, val, &dev)?;
                measured_d2_val = Some(0.5 * (pruned.loss + back.loss) - best_val.loss);
            }
            prune_s = t1.elapsed().as_secs_f64();
            if removed == 0 {
                let reason = "the per-layer caps allow no further removal".to_string();
                log(&format!("stop: {reason}"));
                st.stopped = Some(reason);
                break;
            }
            // Fine-tune with the pruned weights held at zero.
            let t2 = Instant::now();
            if settings.ft_epochs > 0 {
                train::train_masked(
                    &mut trial,
                    ft_data,
                    &ft_cfg,
                    (!channels).then_some(&trial_masks),
                    teacher.as_ref(),
                )?;
            }
            finetune_s = t2.elapsed().as_secs_f64();
        }
        let (tuned, paired) = judge_on(&logits(&trial, val, &dev)?);
        let verdict = rule.judge(&paired);
        let accepted = verdict.accept;
        if let Some(t) = settings.max_drop {
            let unresolved = !accepted
                && paired.drop <= t
                && stop::resolution(paired.n, paired.lost + paired.gained, settings.confidence) > t;
            if unresolved && !st.warnings.iter().any(|w| w.contains("cannot certify")) {
                let w = format!(
                    "step {k} was rolled back although its estimated drop ({:.3}%) is within --max-drop: with {} examples on which the models differ, {} validation examples cannot certify {:.3}% at {:.0}% confidence (the bound is {:.3}%); more validation data or a larger tolerance would let the run go further",
                    100.0 * paired.drop,
                    paired.lost + paired.gained,
                    paired.n,
                    100.0 * t,
                    100.0 * settings.confidence,
                    100.0 * verdict.drop_bound.unwrap_or(f64::NAN)
                );
                log(&format!("warning: {w}"));
                st.warnings.push(w);
            }
        }
        let alive_after = if channels {
            alive - removed
        } else {
            trial_masks.alive()
        };
        let flops_reduction = st.dense.macs / channel::macs(&trial);
        let rec = StepRecord {
            step: k,
            fraction,
            accepted,
            removed,
            alive: if accepted { alive_after } else { alive },
            compression: compression(st.dense.prunable, trial_masks.alive()),
            flops_reduction: Some(flops_reduction),
            predicted_dl,
            measured_dl: pruned.loss - best_val.loss,
            measured_dl_train,
            measured_d2_val,
            pruned_accuracy: pruned.accuracy,
            val: tuned,
            paired: Some(paired),
            drop_bound: verdict.drop_bound,
            removed_per_layer,
            predicted_per_layer,
            stats_s,
            prune_s,
            finetune_s,
        };
        let (lo, hi) = paired.interval(0.95);
        log(&format!(
            "step {k:>3}: remove {:>5.1}% ({removed} {}) -> {:>6.1}x{}, validation {:.2}% after pruning, {:.2}% after fine-tuning (drop {:+.3}%, 95% interval [{:+.3}, {:+.3}]{}): {}",
            100.0 * fraction,
            if channels { "channels" } else { "weights" },
            rec.compression,
            if channels { format!(" params, {flops_reduction:.2}x FLOPs") } else { String::new() },
            100.0 * pruned.accuracy,
            100.0 * tuned.accuracy,
            100.0 * paired.drop,
            100.0 * lo,
            100.0 * hi,
            verdict
                .drop_bound
                .map(|b| format!(", bound {:.3}%", 100.0 * b))
                .unwrap_or_default(),
            if accepted { "accepted".to_string() } else { format!("rolled back, step -> {:.2}%", 50.0 * st.fraction) }
        ));
        st.stats_s += stats_s;
        st.finetune_s += finetune_s;
        st.ft_epochs_done += step_epochs as f64;
        if accepted {
            let file = format!("best-{k:04}.safetensors");
            ir::write_checkpoint(&dir.join(&file), &trial)?;
            if let Some(o) = &trial_opt {
                let f = format!("opt-{k:04}.safetensors");
                import::write_safetensors(&dir.join(&f), &o.to_named()?)?;
                if let Some(old) = st.best_opt.replace(f) {
                    let _ = std::fs::remove_file(dir.join(old));
                }
                opt_state = trial_opt;
            }
            let old = st.best.replace(file);
            best = trial;
            masks = trial_masks;
            best_val = tuned;
            factors = None;
            st.fraction = (st.fraction * settings.step_growth).min(settings.step);
            st.steps.push(rec);
            st.seconds = seconds_before + t_start.elapsed().as_secs_f64();
            save_state(dir, &st)?;
            if let Some(old) = old {
                let _ = std::fs::remove_file(dir.join(old));
            }
        } else {
            st.fraction /= 2.0;
            st.steps.push(rec);
            st.seconds = seconds_before + t_start.elapsed().as_secs_f64();
            save_state(dir, &st)?;
        }
    }
    if settings.final_epochs > 0 && !st.final_done {
        let t = Instant::now();
        let mut trial = best.clone();
        let tl = teacher_for(None);
        train::train_masked(
            &mut trial,
            train_set,
            &settings.finetune(
                settings.final_epochs,
                settings.seed.wrapping_add(999_999),
                opts.progress,
                &dev,
            ),
            (!channels).then_some(&masks),
            tl.as_ref()
                .map(|l| Teacher {
                    logits: l,
                    weight: settings.distill,
                    temperature: settings.distill_temperature,
                })
                .as_ref(),
        )?;
        let (tuned, paired) = judge_on(&logits(&trial, val, &dev)?);
        // Decided on validation loss (a far less noisy signal than accuracy), and only if the
        // result still passes the stop rule.
        let keep = tuned.loss < best_val.loss && rule.judge(&paired).accept;
        log(&format!(
            "final fine-tune ({} epochs): validation loss {:.4} -> {:.4}, accuracy {:.2}% -> {:.2}%: {}",
            settings.final_epochs,
            best_val.loss,
            tuned.loss,
            100.0 * best_val.accuracy,
            100.0 * tuned.accuracy,
            if keep { "kept" } else { "discarded" }
        ));
        st.finetune_s += t.elapsed().as_secs_f64();
        if keep {
            let file = "best-final.safetensors".to_string();
            ir::write_checkpoint(&dir.join(&file), &trial)?;
            st.best = Some(file);
            st.final_val = Some(tuned);
            best = trial;
        }
        st.final_done = true;
    }
    st.final_paired = Some(judge_on(&logits(&best, val, &dev)?).1);
    st.seconds = seconds_before + t_start.elapsed().as_secs_f64();
    save_state(dir, &st)?;
    Ok(Outcome {
        model: best,
        state: st,
    })
}

/// Runs `settings.mode`: one schedule, or for `channel-fine` a channel phase in `DIR/channel`
/// (tolerance `channel_drop`, default half of `max_drop`; first step `channel_step`) and then
/// a fine-grained phase in `DIR/fine` on its result (tolerance `max_drop`), both measured from
/// the input model. `--resume` resumes whichever phase was interrupted.
pub fn run_phases(
    dense: &HostModel,
    train_set: &Dataset,
    val: &Dataset,
    settings: &Settings,
    opts: RunOptions<'_>,
) -> Result<Outcome> {
    if settings.mode != Mode::ChannelFine {
        return run(dense, train_set, val, settings, opts);
    }
    settings.check()?;
    let RunOptions {
        dir,
        resume,
        device,
        progress,
        log,
        reference,
    } = opts;
    if !resume && dir.join("channel").exists() {
        bail!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            dir.display()
        );
    }
    log("phase 1: channels");
    let first = run(
        dense,
        train_set,
        val,
        &settings.phase(Mode::Channel),
        RunOptions {
            dir: &dir.join("channel"),
            resume,
            device: device.clone(),
            progress,
            log: &mut *log,
            reference,
        },
    )?;
    log("phase 2: single weights of the remaining channels");
    run(
        &first.model,
        train_set,
        val,
        &settings.phase(Mode::Fine),
        RunOptions {
            dir: &dir.join("fine"),
            resume: resume && dir.join("fine").exists(),
            device,
            progress,
            log,
            reference: Some(reference.unwrap_or(dense)),
        },
    )
}

/// The files a finished run leaves next to its state.
pub fn output_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("pruned.nap"), dir.join("pruned.safetensors"))
}
