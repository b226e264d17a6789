//! The `nap` command line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nap_runtime::format::DType;
use nap_runtime::{Model, Session};
use serde::Serialize;

use crate::data::{self, Dataset};
use crate::eval::{self, agreement, Agreement};
use crate::export::{self, ExportOptions, Storage};
use crate::ir::HostModel;
use crate::train::{self, TrainConfig};
use crate::util::{softmax, top_k};
use crate::{archs, import};

#[derive(Parser)]
#[command(
    name = "nap",
    version,
    about = "Network Automatic Pruning: prune trained networks and run them fast on small devices"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreDtype {
    F32,
    F16,
}

/// A data source (`--data`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum DataSet {
    /// `digits`: the embedded 8x8 digits (no download).
    Digits,
    /// `mnist`: MNIST from --data-dir (scripts/fetch-fixtures.sh).
    Mnist,
    /// `images:DIR`: one subfolder per class, or a flat folder of unlabelled images.
    Images(PathBuf),
    /// `tensors:FILE`: .npy inputs, or .safetensors with `inputs` and optional `labels`.
    Tensors(PathBuf),
}

impl DataSet {
    /// The user's own data (no built-in train/test split).
    fn is_user(&self) -> bool {
        matches!(self, DataSet::Images(_) | DataSet::Tensors(_))
    }
}

fn parse_data(s: &str) -> std::result::Result<DataSet, String> {
    match s.split_once(':') {
        None if s == "digits" => Ok(DataSet::Digits),
        None if s == "mnist" => Ok(DataSet::Mnist),
        Some(("images", d)) if !d.is_empty() => Ok(DataSet::Images(d.into())),
        Some(("tensors", f)) if !f.is_empty() => Ok(DataSet::Tensors(f.into())),
        _ => Err(format!(
            "{s:?}: expected mnist, digits, images:DIR or tensors:FILE"
        )),
    }
}

/// A comma-separated list of values that pass `ok`, e.g. `3,224,224`.
fn parse_list<T: std::str::FromStr>(
    s: &str,
    ok: impl Fn(&T) -> bool,
    example: &str,
) -> std::result::Result<Vec<T>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .ok()
                .filter(&ok)
                .ok_or_else(|| format!("{s:?} is not a list like {example}"))
        })
        .collect()
}

fn parse_floats(s: &str) -> std::result::Result<Floats, String> {
    parse_list(s, |v: &f32| v.is_finite(), "0.485,0.456,0.406").map(Floats)
}

/// Numbers given on the command line, e.g. `0.485,0.456,0.406`.
#[derive(Clone, Debug)]
struct Floats(Vec<f32>);

/// How `images:DIR` becomes inputs.
#[derive(clap::Args, Clone)]
struct ImageArgs {
    /// images:DIR: the shorter side after resizing, before the centre crop to the model's
    /// input [default: the input's shorter side].
    #[arg(long)]
    resize: Option<u32>,
    /// images:DIR: per-channel mean of x/255 (one value or one per channel), e.g.
    /// 0.485,0.456,0.406 for ImageNet models.
    #[arg(long, value_parser = parse_floats, default_value = "0")]
    mean: Floats,
    /// images:DIR: per-channel standard deviation of x/255, e.g. 0.229,0.224,0.225.
    #[arg(long, value_parser = parse_floats, default_value = "1")]
    std: Floats,
    /// images:DIR: channels in BGR order (models trained with OpenCV) instead of RGB.
    #[arg(long)]
    bgr: bool,
    /// images:DIR: views per image (1: the centre crop; more add mirror images and corner
    /// crops, then the same at 15 % larger resizes).
    #[arg(long, default_value_t = 1)]
    views: usize,
}

impl ImageArgs {
    fn preprocess(&self) -> data::user::ImagePreprocess {
        data::user::ImagePreprocess {
            resize: self.resize,
            mean: self.mean.0.clone(),
            std: self.std.0.clone(),
            bgr: self.bgr,
            views: self.views,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum SplitArg {
    Train,
    Test,
}

#[derive(clap::Args, Clone)]
struct DataArgs {
    /// Data: mnist (from --data-dir), digits (embedded), images:DIR (one subfolder per class,
    /// or a flat folder of unlabelled images), or tensors:FILE (.npy inputs, or .safetensors
    /// with `inputs` and optional `labels`).
    #[arg(long, default_value = "mnist", value_parser = parse_data)]
    data: DataSet,
    /// Folder with the MNIST IDX files.
    #[arg(long, default_value = "fixtures/mnist")]
    data_dir: PathBuf,
    #[command(flatten)]
    image: ImageArgs,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Use only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
}

/// Where a model comes from: an .onnx file (no --arch), a checkpoint nap wrote (no --arch), or
/// a checkpoint of a built-in architecture (--arch).
#[derive(clap::Args, Clone, Default)]
struct SourceArgs {
    /// Built-in architecture whose state_dict keys a .pth/.safetensors checkpoint holds (not
    /// for .onnx files, nor for checkpoints nap wrote: those carry their graph).
    #[arg(long)]
    arch: Option<String>,
    /// ONNX models with dynamic dimensions: the per-example input shape, without the batch
    /// dimension, e.g. 3,224,224.
    #[arg(long, value_parser = parse_shape)]
    input_shape: Option<ShapeArg>,
}

impl SourceArgs {
    fn load(&self, path: &Path) -> Result<HostModel> {
        import::load_model(
            path,
            self.arch.as_deref(),
            &import::onnx::OnnxOptions {
                input_shape: self.input_shape.clone().map(|s| s.0),
            },
        )
    }
}

/// A shape given on the command line, e.g. `3,224,224`.
#[derive(Clone, Debug)]
struct ShapeArg(Vec<u32>);

fn parse_shape(s: &str) -> std::result::Result<ShapeArg, String> {
    parse_list(s, |&d: &u32| d > 0, "3,224,224").map(ShapeArg)
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a model (.onnx, or a .pth/.safetensors checkpoint) to .nap, or to .onnx (by the
    /// output's extension; BatchNorm folded, zeros kept in place).
    Convert {
        checkpoint: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        #[arg(short, long)]
        output: PathBuf,
        /// Storage type of the weights (computation is f32 either way).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: StoreDtype,
        /// Store every weight dense, even where CSR would be smaller.
        #[arg(long, conflicts_with = "policy")]
        dense: bool,
        /// Store a weight as CSR only where the device runs it faster: a policy saved by
        /// `nap bench --calibrate -o FILE` on that device.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Time a .nap model on this machine, optionally against a baseline (`--vs dense.nap`):
    /// median latency, spread, speedup, FLOP reduction and a per-node breakdown.
    Bench(nap_runtime::bench::cli::BenchArgs),
    /// Show a .nap file's graph, per-layer shapes, parameters, density, bytes and FLOPs.
    /// For an .onnx file: its op types, with every node nap cannot import named (the exit
    /// status is non-zero if there is one), and what the imported model holds.
    Inspect {
        model: PathBuf,
        /// ONNX models with dynamic dimensions: the per-example input shape (e.g. 3,224,224).
        #[arg(long, value_parser = parse_shape)]
        input_shape: Option<ShapeArg>,
        #[arg(long)]
        json: bool,
    },
    /// Run a .nap model on one input and print the top classes.
    Run {
        model: PathBuf,
        /// An image (png/jpg), `digits:N` (embedded digits example N), `mnist:N` (MNIST test
        /// example N from --data-dir), a .npy array (one example, or `[N, ...]` for N) or a raw
        /// little-endian f32 file.
        #[arg(long)]
        input: String,
        /// Also write the whole output (`[N, ...]`, f32) to this .npy file.
        #[arg(long)]
        save: Option<PathBuf>,
        #[arg(long, default_value = "fixtures/mnist")]
        data_dir: PathBuf,
        /// Class names, one per line (default: digits, or fixtures/imagenet_classes.txt).
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Refuse a model with NaN or infinite weights (without it they are a warning).
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        json: bool,
    },
    /// Accuracy of a .nap (runtime), or of an .onnx model or a checkpoint (candle reference).
    Eval {
        model: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        /// Also compare with this model (typically the dense original; .nap, .onnx or a
        /// checkpoint nap wrote): top-1 agreement and the mean KL divergence from its
        /// predictions. Needs no labels.
        #[arg(long)]
        vs: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
    /// Compare the runtime against candle's reference forward for a checkpoint: logits error,
    /// top-1 agreement and accuracy on a data set or on images.
    Check {
        checkpoint: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        data: DataArgs,
        /// Images to classify instead of a data set.
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Also write the converted model and a reference file (inputs + logits of the first 64
        /// examples) into this folder, for runtime-only checks on other machines.
        #[arg(long)]
        dump: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Train a built-in architecture from scratch on MNIST or the embedded digits.
    Train {
        #[arg(long)]
        arch: String,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Hold out this fraction of the training split (the same examples `nap prune` validates
        /// on with the same --val-fraction and --val-seed); 0 trains on everything.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f32,
        /// Hold out this fraction next to it (the examples `nap prune` confirms on with the same
        /// --confirm-fraction).
        #[arg(long, default_value_t = 0.05)]
        confirm_fraction: f32,
        #[arg(long, default_value_t = 0)]
        val_seed: u64,
        /// Output: .safetensors (weights) and/or .nap (by extension).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Prune a trained checkpoint with NAP (or a baseline criterion) until the validation
    /// accuracy would drop by more than --max-drop, or a target is reached. Writes the pruned
    /// model (.nap; .safetensors with the checkpoint's key names and the graph; .onnx with the
    /// input's names), report.json and SVG plots into --out; every step is checkpointed there
    /// and --resume continues an interrupted run.
    Prune(Box<PruneArgs>),
    /// The end-to-end demo on the embedded digits: train a small CNN, export it, run it in the
    /// runtime and check it agrees with the reference.
    Demo {
        /// Where to write the exported model.
        #[arg(long, default_value = "nap-demo/digits-cnn.nap")]
        out: PathBuf,
        #[arg(long, default_value_t = 12)]
        epochs: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct PruneArgs {
    /// The trained model: .onnx, or a .pth/.safetensors checkpoint.
    checkpoint: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    /// Training data: mnist (from --data-dir), digits (embedded), images:DIR (one subfolder
    /// per class, or a flat folder of unlabelled images: then the dense model's top-1 class is
    /// the label, so accuracy means agreement with it, and fine-tuning distils from it), or
    /// tensors:FILE (.npy inputs, or .safetensors with `inputs` and optional `labels`). The
    /// validation and confirmation splits are carved from it; only mnist and digits have a
    /// test split.
    #[arg(long, default_value = "mnist", value_parser = parse_data)]
    data: DataSet,
    #[arg(long, default_value = "fixtures/mnist")]
    data_dir: PathBuf,
    #[command(flatten)]
    image: ImageArgs,
    /// Run folder: state, checkpoints, pruned model, report and plots.
    #[arg(short, long)]
    out: PathBuf,
    /// Continue the run in --out.
    #[arg(long)]
    resume: bool,
    /// What to remove: single weights (a sparse model), whole channels and neurons (a smaller
    /// dense model), or channels first and then single weights of what remains.
    #[arg(long, value_enum, default_value = "fine")]
    mode: crate::schedule::Mode,
    /// How pruning and fine-tuning interleave: iterative (prune, then fine-tune from a fresh
    /// optimizer) or gradual (--prune-events removals on a cubic ramp during each step's
    /// fine-tuning, optimizer state kept) [default: gradual for nap and gmp; iterative for
    /// the classic baselines magnitude, magnitude-uniform and obd, and for the channel steps
    /// of --mode channel and channel-fine].
    #[arg(long, value_enum)]
    schedule: Option<crate::schedule::Schedule>,
    /// Prune events per step of the gradual schedule.
    #[arg(long, default_value_t = crate::schedule::Settings::default().prune_events)]
    prune_events: usize,
    /// Gradual schedule: fresh K-FAC statistics at every prune event (true), or the step's
    /// statistics for all its events (false; cheaper).
    #[arg(long, default_value_t = crate::schedule::Settings::default().event_stats, action = clap::ArgAction::Set)]
    event_stats: bool,
    /// Stop after this much fine-tuning: epochs ("20" or "20ep") or wall time ("15m", "2h").
    /// With --schedule gradual and a target but no tolerance, the one ramp to the target
    /// takes this many epochs.
    #[arg(long)]
    budget: Option<String>,
    /// Ranking criterion. With --mode channel: nap (group cost in loss units) or magnitude
    /// (L1-norm filter pruning).
    #[arg(long, value_enum, default_value = "nap")]
    criterion: crate::prune::Criterion,
    /// Channel mode: the group cost sums the producers' row costs (the channel's output set to
    /// zero), the consumers' column costs (the channel no longer read), or both.
    #[arg(long, value_enum, default_value = "producer")]
    channel_cost: crate::channel::ChannelCost,
    /// Channel mode: rank channels by cost / FLOPs-saved^W, so W > 0 aims at speed (0: loss
    /// only).
    #[arg(long, default_value_t = 0.0)]
    flops_weight: f64,
    /// Channel mode: stop once the multiply-accumulates fall by this factor ("5" or "5x").
    #[arg(long)]
    target_flops: Option<String>,
    /// --mode channel-fine: the tolerated drop of the channel phase, in points ("0.2%"); the
    /// fine phase then goes on to --max-drop [default: half of --max-drop].
    #[arg(long)]
    channel_drop: Option<String>,
    /// --mode channel-fine: the fraction of the channels the channel phase's first step
    /// removes (--step is the fine phase's) [default: 0.1].
    #[arg(long)]
    channel_step: Option<f64>,
    /// OBS compensation of the remaining weights (nap only).
    #[arg(long, value_enum, default_value_t = crate::schedule::Settings::default().obs_update)]
    obs_update: crate::prune::ObsUpdate,
    /// Tolerated drop of accuracy, in percentage points ("0.1%" or "0.1"). A step is accepted
    /// when the one-sided --confidence upper bound of its paired accuracy drop against the dense
    /// model on the validation split is at most this. Without a target this defaults to 0.1%.
    #[arg(long)]
    max_drop: Option<String>,
    /// Confidence of the stop rule's one-sided bounds (0.5 decides on the point estimate).
    #[arg(long, default_value_t = crate::schedule::Settings::default().confidence)]
    confidence: f64,
    /// Also require the mean KL divergence (nats) from the dense model's predictions on the
    /// validation split to stay below this (needs no labels).
    #[arg(long)]
    max_kl: Option<f64>,
    /// Stop at this fraction of zero weights ("0.98" or "98%").
    #[arg(long)]
    target_sparsity: Option<String>,
    /// Stop once the exported .nap is at most this size (bytes, or with K/M suffix).
    #[arg(long)]
    target_size: Option<String>,
    /// Fraction of the alive weights (channels) the first step removes [default: 0.2 for
    /// weights (also the fine phase of channel-fine), 0.1 for channels].
    #[arg(long)]
    step: Option<f64>,
    /// Stop when rollbacks halve the step below this (default: step / 8).
    #[arg(long)]
    min_step: Option<f64>,
    /// After an accepted step, multiply the step by this, up to --step (1: a step halved by a
    /// rollback stays halved).
    #[arg(long, default_value_t = crate::schedule::Settings::default().step_growth)]
    step_growth: f64,
    /// At most this fraction of a layer's alive weights per step.
    #[arg(long, default_value_t = crate::schedule::Settings::default().layer_cap)]
    layer_cap: f64,
    /// Channel mode: every layer keeps a multiple of N channels (a step rounds each layer's
    /// removal so; it may pass --layer-cap by fewer than N). 8 (AVX2) or 16 (AVX-512) lets
    /// ONNX Runtime's blocked x86 convolutions run the slimmed model.
    #[arg(long, default_value_t = crate::schedule::Settings::default().channel_multiple)]
    channel_multiple: usize,
    /// Prune whole blocks of R consecutive output rows at one input column ("4x1"), scored by
    /// their summed cost, instead of single weights ("1x1").
    #[arg(long, default_value = "1x1")]
    block: String,
    /// Relative damping of the K-FAC factors (times the mean diagonal).
    #[arg(long, default_value_t = crate::schedule::Settings::default().damping)]
    damping: f64,
    /// Which Fisher the K-FAC factors estimate: labels sampled from the model (true), the
    /// data's labels (empirical), or the exact expectation over the model's classes (exact).
    #[arg(long, value_enum, default_value_t = crate::schedule::Settings::default().fisher)]
    fisher: crate::kfac::Fisher,
    /// Temperature T of the model's label distribution softmax(z / T) (true, exact).
    #[arg(long, default_value_t = crate::schedule::Settings::default().fisher_temperature)]
    fisher_temperature: f64,
    /// Labels sampled per example (--fisher true).
    #[arg(long, default_value_t = crate::schedule::Settings::default().fisher_samples)]
    fisher_samples: usize,
    /// --fisher exact with K backward passes instead of one per class: each example's K-1 most
    /// likely classes exactly and one more drawn from the rest (an unbiased estimate); 0: one
    /// pass per class.
    #[arg(long, default_value_t = crate::schedule::Settings::default().fisher_classes.unwrap_or(0))]
    fisher_classes: usize,
    /// --fisher exact estimated with K Gaussian probes per example (one backward pass each,
    /// unbiased) instead of one pass per class; 0: off.
    #[arg(long, default_value_t = crate::schedule::Settings::default().fisher_probes.unwrap_or(0))]
    fisher_probes: usize,
    /// Label smoothing of --fisher empirical.
    #[arg(long, default_value_t = crate::schedule::Settings::default().label_smoothing)]
    label_smoothing: f64,
    /// Examples per K-FAC statistics pass.
    #[arg(long, default_value_t = crate::schedule::Settings::default().stats_examples)]
    stats_examples: usize,
    /// Examples per batch of the statistics passes, at most; memory grows with it, so fewer are
    /// taken where they would not fit in half the available memory (Linux).
    #[arg(long, default_value_t = crate::schedule::Settings::default().stats_batch)]
    stats_batch: usize,
    /// Examples per fine-tuning batch.
    #[arg(long, default_value_t = crate::schedule::Settings::default().ft_batch)]
    ft_batch: usize,
    /// Fine-tuning epochs after every step.
    #[arg(long, default_value_t = crate::schedule::Settings::default().ft_epochs)]
    ft_epochs: usize,
    /// Fine-tune each step on this many training examples, drawn afresh per step (default:
    /// the whole training split).
    #[arg(long)]
    ft_examples: Option<usize>,
    /// Peak learning rate of the fine-tuning (AdamW, cosine decay to 0).
    #[arg(long, default_value_t = crate::schedule::Settings::default().ft_lr)]
    ft_lr: f64,
    /// Fraction of each fine-tune over which the learning rate warms up.
    #[arg(long, default_value_t = crate::schedule::Settings::default().ft_warmup)]
    ft_warmup: f64,
    /// Weight decay (AdamW) during fine-tuning.
    #[arg(long, default_value_t = crate::schedule::Settings::default().ft_weight_decay)]
    ft_weight_decay: f64,
    /// Epochs of one last fine-tune of the final model (kept if it lowers the validation loss
    /// and still passes the stop rule).
    #[arg(long, default_value_t = crate::schedule::Settings::default().final_epochs)]
    final_epochs: usize,
    /// Weight of distillation from the dense model in fine-tuning: the loss is (1 - W) x
    /// cross-entropy + W x T^2 x KL(dense || pruned) at temperature T (1: no labels needed).
    #[arg(long, default_value_t = crate::schedule::Settings::default().distill)]
    distill: f64,
    /// Temperature T of the distillation.
    #[arg(long, default_value_t = crate::schedule::Settings::default().distill_temperature)]
    distill_temperature: f64,
    #[arg(long, default_value_t = crate::schedule::Settings::default().max_steps)]
    max_steps: usize,
    /// Fraction of the training data held out for validation (the stop rule decides on it).
    #[arg(long, default_value_t = crate::schedule::Settings::default().val_fraction)]
    val_fraction: f32,
    /// Fraction held out next to it for confirmation: nothing selects on it, and the report
    /// gives the final model's accuracy drop on it with a 95% interval (0: none).
    #[arg(long, default_value_t = crate::schedule::Settings::default().confirm_fraction)]
    confirm_fraction: f32,
    #[arg(long, default_value_t = 0)]
    val_seed: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Candle device for statistics and fine-tuning: cpu, cuda[:N] (feature cuda), metal[:N]
    /// (feature metal).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Storage type of the exported .nap weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: StoreDtype,
    /// Store a pruned weight as CSR only where the target device runs it faster: a policy
    /// saved by `nap bench --calibrate -o FILE` there (default: CSR where it is smaller).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Parses `--block RxC`: only `r × 1` blocks (rows sharing a column) exist.
fn parse_block(s: &str) -> Result<usize> {
    let bad = || anyhow!("--block: expected RxC such as 4x1 or 1x1, got {s:?}");
    let (r, c) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (r, c): (usize, usize) = (
        r.trim().parse().map_err(|_| bad())?,
        c.trim().parse().map_err(|_| bad())?,
    );
    if c != 1 {
        bail!("--block {s}: only blocks one column wide (R x 1) are supported");
    }
    Ok(r)
}

/// Parses `--budget`: epochs ("20", "20ep") or minutes ("15m", "2h", "90s").
fn parse_budget(s: &str) -> Result<(Option<f64>, Option<f64>)> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || {
        anyhow!(
            "--budget: expected epochs (\"20\" or \"20ep\") or a time (\"15m\", \"2h\"), got {s:?}"
        )
    };
    let num = |x: &str| x.trim().parse::<f64>().map_err(|_| bad());
    let v = if let Some(x) = t.strip_suffix("ep") {
        (Some(num(x)?), None)
    } else if let Some(x) = t.strip_suffix('h') {
        (None, Some(60.0 * num(x)?))
    } else if let Some(x) = t.strip_suffix("min").or_else(|| t.strip_suffix('m')) {
        (None, Some(num(x)?))
    } else if let Some(x) = t.strip_suffix('s') {
        (None, Some(num(x)? / 60.0))
    } else {
        (Some(num(&t)?), None)
    };
    if v.0.or(v.1).is_some_and(|b| !(b > 0.0 && b.is_finite())) {
        return Err(bad());
    }
    Ok(v)
}

/// Parses "0.1%" / "0.1" (percentage points) into a fraction.
fn parse_points(s: &str, what: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow!("{what}: {s:?} is not a number of percentage points"))?;
    if !(0.0..100.0).contains(&v) {
        bail!("{what}: {s:?} must be between 0% and 100%");
    }
    Ok(v / 100.0)
}

/// Parses "0.98" or "98%" into a fraction.
fn parse_fraction(s: &str, what: &str) -> Result<f64> {
    let t = s.trim();
    let v = if let Some(p) = t.strip_suffix('%') {
        p.parse::<f64>().map(|v| v / 100.0)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| anyhow!("{what}: {s:?} is not a fraction"))?;
    Ok(v)
}

/// Parses a byte count with an optional K/M/G suffix (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("--target-size: {s:?} is not a size"))?;
    if v.is_nan() || v <= 0.0 {
        bail!("--target-size must be positive");
    }
    Ok((v * mul as f64) as u64)
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Convert {
            checkpoint,
            source,
            output,
            dtype,
            dense,
            policy,
            json,
        } => convert(
            &checkpoint,
            &source,
            &output,
            dtype,
            storage(dense, policy.as_deref())?,
            json,
        ),
        Cmd::Inspect {
            model,
            input_shape,
            json,
        } => {
            if import::is_onnx(&model) {
                inspect_onnx(&model, input_shape.map(|s| s.0), json)
            } else if input_shape.is_some() {
                bail!("--input-shape applies to ONNX models only")
            } else {
                inspect(&model, json)
            }
        }
        Cmd::Bench(a) => nap_runtime::bench::cli::run(&a)
            .map(|_| ())
            .map_err(anyhow::Error::msg),
        Cmd::Run {
            model,
            input,
            save,
            data_dir,
            labels,
            top,
            strict,
            json,
        } => run(
            &model,
            &input,
            save.as_deref(),
            &data_dir,
            labels.as_deref(),
            top,
            strict,
            json,
        ),
        Cmd::Eval {
            model,
            source,
            vs,
            data,
            batch,
            json,
        } => eval_cmd(&model, &source, vs.as_deref(), &data, batch, json),
        Cmd::Check {
            checkpoint,
            source,
            data,
            images,
            batch,
            dump,
            json,
        } => check(
            &checkpoint,
            &source,
            &data,
            &images,
            batch,
            dump.as_deref(),
            json,
        ),
        Cmd::Train {
            arch,
            data,
            epochs,
            lr,
            batch,
            seed,
            val_fraction,
            confirm_fraction,
            val_seed,
            output,
        } => train_cmd(
            &arch,
            &data,
            TrainConfig {
                epochs,
                batch,
                lr,
                seed,
                ..Default::default()
            },
            (val_fraction, confirm_fraction, val_seed),
            &output,
        ),
        Cmd::Prune(a) => prune_cmd(&a),
        Cmd::Demo {
            out,
            epochs,
            seed,
            json,
        } => demo(&out, epochs, seed, json),
    }
}

fn rt<T>(r: nap_runtime::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

/// The data of `a` for a model of per-example input `input`, and whether it is labelled.
/// The user's own data has no split: `--split` does not apply to it.
fn load_data(a: &DataArgs, input: &[u32]) -> Result<(Dataset, bool)> {
    let (mut d, labelled) = match &a.data {
        DataSet::Digits => {
            let (train, test) = data::digits::load_digits().split(0.2, 0);
            (
                if a.split == SplitArg::Train {
                    train
                } else {
                    test
                },
                true,
            )
        }
        DataSet::Mnist => {
            let split = if a.split == SplitArg::Train {
                data::mnist::Split::Train
            } else {
                data::mnist::Split::Test
            };
            let d = data::mnist::load_mnist(&a.data_dir, split).with_context(|| {
                format!(
                    "loading MNIST from {} (run scripts/fetch-fixtures.sh)",
                    a.data_dir.display()
                )
            })?;
            (d, true)
        }
        DataSet::Images(dir) => data::user::load_images(dir, input, &a.image.preprocess())?,
        DataSet::Tensors(f) => data::user::load_tensors(f, input)?,
    };
    if let Some(l) = a.limit {
        d = d.take(l);
    }
    Ok((d, labelled))
}

/// Prints `v` as pretty JSON; a closed pipe (`nap ... --json | head`) is not an error.
fn print_json<T: Serialize>(v: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)? + "\n";
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The storage a writer uses: `--dense`, `--policy FILE` or the smaller of CSR and dense.
fn storage(dense: bool, policy: Option<&Path>) -> Result<Storage> {
    Ok(match (dense, policy) {
        (true, _) => Storage::Dense,
        (false, Some(p)) => {
            Storage::ForDevice(nap_runtime::bench::cli::read_policy(p).map_err(anyhow::Error::msg)?)
        }
        (false, None) => Storage::Auto,
    })
}

fn convert(
    checkpoint: &Path,
    source: &SourceArgs,
    output: &Path,
    dtype: StoreDtype,
    storage: Storage,
    json: bool,
) -> Result<()> {
    let m = source.load(checkpoint)?;
    for t in &m.tensors {
        t.check_finite("weight")?;
    }
    let arch = &m.meta.arch;
    let opts = ExportOptions {
        dtype: match dtype {
            StoreDtype::F32 => DType::F32,
            StoreDtype::F16 => DType::F16,
        },
        storage,
    };
    if import::is_onnx(output) {
        crate::onnx_out::write_onnx(&export::fuse(&m)?, output)?;
    } else {
        export::write_nap(&m, output, opts)?;
    }
    let bytes = std::fs::metadata(output)?.len();
    if json {
        print_json(&serde_json::json!({
            "output": output, "arch": arch, "params": m.param_count(), "bytes": bytes,
        }))
    } else {
        println!(
            "wrote {} ({arch}, {} parameters, {} bytes)",
            output.display(),
            m.param_count(),
            bytes
        );
        Ok(())
    }
}

fn inspect_onnx(path: &Path, input_shape: Option<Vec<u32>>, json: bool) -> Result<()> {
    let opts = import::onnx::OnnxOptions { input_shape };
    let (ops, model) = import::onnx::inspect_onnx(path, &opts)?;
    let summary = model.as_ref().map(|m| {
        serde_json::json!({
            "input_shape": m.input_shape(), "output_shape": m.output_shape(),
            "params": m.param_count(), "prunable_layers": m.prunable().len(),
            "macs": crate::channel::macs(m), "nodes": m.graph.nodes.len(),
        })
    });
    if json {
        print_json(&serde_json::json!({
            "file": path, "importable": model.is_some(), "ops": ops, "model": summary,
        }))?;
    } else {
        println!("{}: ONNX, {} op types", path.display(), ops.len());
        println!("\n{:<22} {:>6}  status", "op", "nodes");
        for o in &ops {
            let ok = o.count - o.unsupported.len().min(o.count) - o.unchecked.min(o.count);
            let status = if ok == o.count {
                "ok".to_string()
            } else {
                let mut parts = Vec::new();
                if ok > 0 {
                    parts.push(format!("ok at {ok}"));
                }
                if !o.unsupported.is_empty() {
                    parts.push(format!("NOT SUPPORTED at {}", o.unsupported.len()));
                }
                if o.unchecked > 0 {
                    parts.push(format!(
                        "not checked at {} (they follow an unsupported node)",
                        o.unchecked
                    ));
                }
                parts.join("; ")
            };
            println!("{:<22} {:>6}  {status}", o.op, o.count);
            for (node, why) in &o.unsupported {
                println!("{:<22} {:>6}    {node}: {why}", "", "");
            }
        }
        if let Some(m) = &model {
            println!(
                "\nimportable: input {:?} (per example), output {:?}, {} nodes, {} parameters, {} prunable layers, {:.1} M multiply-accumulates per example",
                m.input_shape(),
                m.output_shape(),
                m.graph.nodes.len(),
                m.param_count(),
                m.prunable().len(),
                crate::channel::macs(m) / 1e6
            );
        }
    }
    if model.is_none() {
        bail!(
            "{}: the model cannot be imported (the unsupported nodes are listed above)",
            path.display()
        );
    }
    Ok(())
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let model = rt(Model::open(path))?;
    let rows = nap_runtime::stats::layer_stats(&model);
    let meta = model.metadata();
    let (params, nonzero, flops): (usize, usize, u64) = rows.iter().fold((0, 0, 0), |a, r| {
        (a.0 + r.params, a.1 + r.nonzero, a.2 + r.flops)
    });
    let file_bytes = model.bytes().len();
    let non_finite: Vec<serde_json::Value> = model
        .non_finite()
        .into_iter()
        .map(|(id, count)| serde_json::json!({"tensor": model.tensor_entry(id).name, "count": count}))
        .collect();
    if json {
        return print_json(&serde_json::json!({
            "file": path, "bytes": file_bytes, "non_finite": non_finite, "version": [model.preamble().major, model.preamble().minor],
            "producer": model.header().producer, "arch": meta.arch, "source": meta.source, "method": meta.method,
            "params": params, "nonzero": nonzero, "flops": flops, "layers": rows,
            "input_shape": model.graph().values[model.graph().inputs[0] as usize].shape,
            "output_shape": model.graph().values[model.graph().outputs[0] as usize].shape,
        }));
    }
    println!(
        "{}: .nap {}.{}, {} bytes, written by {}",
        path.display(),
        model.preamble().major,
        model.preamble().minor,
        file_bytes,
        model.header().producer
    );
    println!(
        "arch {}  source {}  method {}  input {:?}",
        meta.arch,
        meta.source,
        meta.method,
        model.graph().values[model.graph().inputs[0] as usize].shape
    );
    println!(
        "\n{:<28} {:<22} {:<16} {:>10} {:>8} {:>10} {:>12} {:<10}",
        "node", "op", "output", "params", "density", "bytes", "FLOPs", "storage"
    );
    for r in &rows {
        println!(
            "{:<28} {:<22} {:<16} {:>10} {:>7.1}% {:>10} {:>12} {:<10}",
            r.name,
            r.op,
            format!("{:?}", r.output),
            r.params,
            100.0 * r.density,
            r.bytes,
            r.flops,
            r.storage
        );
    }
    println!(
        "\ntotal: {params} parameters, {nonzero} non-zero ({:.2}%), {:.3} MFLOPs per example",
        100.0 * nonzero as f64 / params.max(1) as f64,
        flops as f64 / 1e6
    );
    for t in &non_finite {
        println!(
            "warning: tensor {} holds {} NaN or infinite values",
            t["tensor"], t["count"]
        );
    }
    Ok(())
}

fn class_names(meta_labels: &str, explicit: Option<&Path>) -> Result<Option<Vec<String>>> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None if meta_labels == "imagenet" => {
            let p = PathBuf::from("fixtures/imagenet_classes.txt");
            p.exists().then_some(p)
        }
        None if meta_labels == "digits" => {
            return Ok(Some((0..10).map(|d| d.to_string()).collect()))
        }
        None => None,
    };
    match path {
        Some(p) => Ok(Some(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading labels {}", p.display()))?
                .lines()
                .map(str::to_string)
                .collect(),
        )),
        None => Ok(None),
    }
}

/// The examples `input` names for `model`: their values back to back, and how many.
fn parse_input(model: &Model<'_>, input: &str, data_dir: &Path) -> Result<(Vec<f32>, usize)> {
    let meta = model.metadata();
    let shape = &model.graph().values[model.graph().inputs[0] as usize].shape;
    let per: usize = shape.iter().map(|&d| d as usize).product();
    let pick = |d: Dataset, i: usize| -> Result<Vec<f32>> {
        if i >= d.n {
            bail!("example {i} out of range (the set has {})", d.n);
        }
        let p = d.images.len() / d.n;
        Ok(d.images[i * p..(i + 1) * p].to_vec())
    };
    let mut n = 1;
    let x = if let Some(i) = input.strip_prefix("digits:") {
        pick(
            data::digits::load_digits(),
            i.parse().context("digits:N needs a number")?,
        )?
    } else if let Some(i) = input.strip_prefix("mnist:") {
        pick(
            data::mnist::load_mnist(data_dir, data::mnist::Split::Test)?,
            i.parse().context("mnist:N needs a number")?,
        )?
    } else {
        let path = Path::new(input);
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if ["png", "jpg", "jpeg"].contains(&ext.as_str()) {
            match meta.preprocess.as_str() {
                "imagenet" => data::image::load_imagenet_input(path)?,
                "mnist" | "digits" if shape.len() == 3 => {
                    let pre = if meta.preprocess == "mnist" {
                        data::image::GrayPreprocess::MNIST
                    } else {
                        data::image::GrayPreprocess::UNIT
                    };
                    data::image::load_gray_input(path, shape[1] as usize, shape[2] as usize, pre)?
                }
                p => bail!("no image preprocessing known for this model (preprocess {p:?})"),
            }
        } else if ext == "npy" {
            let t = import::npy::read_npy(path)?;
            if t.shape.len() == shape.len() + 1 && t.shape[1..] == shape[..] {
                n = t.shape[0] as usize;
            } else if t.shape[..] != shape[..] {
                bail!(
                    "{}: array of shape {:?}, the model takes {shape:?} (or [N, ...] for N examples)",
                    path.display(),
                    t.shape
                );
            }
            t.data
        } else {
            let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            if b.len() % 4 != 0 {
                bail!(
                    "{} is not a raw f32 file ({} bytes)",
                    path.display(),
                    b.len()
                );
            }
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    };
    if n == 0 || x.len() != per * n {
        bail!(
            "input has {} values, the model takes {:?} = {per}",
            x.len(),
            shape
        );
    }
    if x.iter().any(|v| !v.is_finite()) {
        bail!("input holds non-finite values");
    }
    Ok((x, n))
}

#[allow(clippy::too_many_arguments)]
fn run(
    path: &Path,
    input: &str,
    save: Option<&Path>,
    data_dir: &Path,
    labels: Option<&Path>,
    top: usize,
    strict: bool,
    json: bool,
) -> Result<()> {
    let load = nap_runtime::LoadOptions {
        finite_weights: strict,
        ..Default::default()
    };
    let model = rt(Model::open_with(path, load))?;
    for (id, count) in model.non_finite() {
        eprintln!(
            "warning: tensor {} holds {count} NaN or infinite values",
            model.tensor_entry(id).name
        );
    }
    let (x, n) = parse_input(&model, input, data_dir)?;
    let names = class_names(&model.metadata().labels, labels)?;
    let mut s = rt(Session::new(&model, n))?;
    let t0 = Instant::now();
    let out = rt(s.run(&x))?.to_vec();
    let dt = t0.elapsed();
    let per = out.len() / n;
    let out_shape = &model.graph().values[model.graph().outputs[0] as usize].shape;
    if let Some(p) = save {
        let mut dims = vec![n];
        dims.extend(out_shape.iter().map(|&d| d as usize));
        crate::util::atomic_write(p, &import::npy::npy_bytes(&dims, &out))?;
    }
    let name = |i: usize| {
        names
            .as_ref()
            .and_then(|n| n.get(i))
            .cloned()
            .unwrap_or_else(|| format!("class {i}"))
    };
    let tops: Vec<Vec<(usize, f32)>> = out
        .chunks(per)
        .map(|row| top_k(&softmax(row), top))
        .collect();
    if json {
        let rows = |e: usize| -> Vec<serde_json::Value> {
            tops[e]
                .iter()
                .map(|&(i, p)| serde_json::json!({"class": i, "name": name(i), "prob": p, "logit": out[e * per + i]}))
                .collect()
        };
        let mut shape = vec![n as u32];
        shape.extend_from_slice(out_shape);
        return print_json(&serde_json::json!({
            "input": input, "examples": n, "top": rows(0),
            "tops": (0..n).map(rows).collect::<Vec<_>>(),
            "output_shape": shape, "output": out, "seconds": dt.as_secs_f64(),
        }));
    }
    println!(
        "{input}: {n} example(s) ({:.3} ms, first run)",
        dt.as_secs_f64() * 1e3
    );
    for (e, best) in tops.iter().enumerate() {
        if n > 1 {
            println!(" example {e}:");
        }
        for &(i, p) in best {
            println!("  {:>6.2}%  {:>4}  {}", 100.0 * p, i, name(i));
        }
    }
    Ok(())
}

/// A model evaluated by the runtime (a .nap file) or by the candle reference (anything else).
enum Evaluated {
    Runtime(Box<Model<'static>>),
    Reference(Box<HostModel>),
}

impl Evaluated {
    fn open(path: &Path, source: &SourceArgs) -> Result<Self> {
        Ok(if path.extension().is_some_and(|e| e == "nap") {
            Evaluated::Runtime(Box::new(rt(Model::open(path))?))
        } else {
            Evaluated::Reference(Box::new(source.load(path)?))
        })
    }

    fn input_shape(&self) -> Vec<u32> {
        match self {
            Evaluated::Runtime(m) => m.graph().values[m.graph().inputs[0] as usize].shape.clone(),
            Evaluated::Reference(m) => m.input_shape().to_vec(),
        }
    }

    fn engine(&self) -> &'static str {
        match self {
            Evaluated::Runtime(_) => "runtime",
            Evaluated::Reference(_) => "candle reference",
        }
    }

    fn logits(&self, d: &Dataset, batch: usize, progress: bool) -> Result<Vec<f32>> {
        match self {
            Evaluated::Runtime(m) => eval::runtime_logits(m, &d.images, batch, progress),
            Evaluated::Reference(m) => {
                train::check_data(m, d)?;
                eval::reference_logits(m, &d.images, batch, progress)
            }
        }
    }
}

fn eval_cmd(
    path: &Path,
    source: &SourceArgs,
    vs: Option<&Path>,
    a: &DataArgs,
    batch: usize,
    json: bool,
) -> Result<()> {
    let model = Evaluated::open(path, source)?;
    let (d, labelled) = load_data(a, &model.input_shape())?;
    if !labelled && vs.is_none() {
        bail!("--data holds no labels, so there is no accuracy to measure: give images:DIR one subfolder per class or tensors:FILE a labels tensor, or compare with the dense model (--vs)");
    }
    let t0 = Instant::now();
    let logits = model.logits(&d, batch, !json)?;
    let classes = logits.len() / d.n;
    let acc = labelled.then(|| eval::accuracy(&logits, &d.labels, classes));
    let versus = match vs {
        Some(r) => {
            let reference = Evaluated::open(r, &SourceArgs::default())?;
            if reference.input_shape() != model.input_shape() {
                bail!(
                    "{} takes {:?} but {} takes {:?}",
                    r.display(),
                    reference.input_shape(),
                    path.display(),
                    model.input_shape()
                );
            }
            let rl = reference.logits(&d, batch, !json)?;
            if rl.len() != logits.len() {
                bail!(
                    "{} has {} outputs, {} has {classes}",
                    r.display(),
                    rl.len() / d.n,
                    path.display()
                );
            }
            let ag = agreement(&logits, &rl, classes);
            Some(serde_json::json!({
                "model": r,
                "top1_agreement": 1.0 - ag.top1_mismatches as f64 / d.n as f64,
                "kl": eval::kl_divergence(&logits, &rl, classes),
                "accuracy": labelled.then(|| eval::accuracy(&rl, &d.labels, classes)),
            }))
        }
        None => None,
    };
    let secs = t0.elapsed().as_secs_f64();
    if json {
        return print_json(&serde_json::json!({
            "model": path, "engine": model.engine(), "examples": d.n, "accuracy": acc,
            "vs": versus, "seconds": secs,
        }));
    }
    if let Some(acc) = acc {
        println!(
            "{}: accuracy {:.2}% on {} examples ({}, {:.1} s)",
            path.display(),
            100.0 * acc,
            d.n,
            model.engine(),
            secs
        );
    }
    if let Some(v) = versus {
        println!(
            "{} against {}: top-1 agreement {:.2}%, KL divergence {:.4} nats (mean over {} examples)",
            path.display(),
            vs.unwrap_or(Path::new("")).display(),
            100.0 * v["top1_agreement"].as_f64().unwrap_or(0.0),
            v["kl"].as_f64().unwrap_or(f64::NAN),
            d.n
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckReport {
    arch: String,
    examples: usize,
    agreement: Agreement,
    runtime_accuracy: Option<f32>,
    reference_accuracy: Option<f32>,
    top: Vec<(String, Vec<(usize, f32)>)>,
}

#[allow(clippy::too_many_arguments)]
fn check(
    checkpoint: &Path,
    source: &SourceArgs,
    a: &DataArgs,
    images: &[PathBuf],
    batch: usize,
    dump: Option<&Path>,
    json: bool,
) -> Result<()> {
    let m = source.load(checkpoint)?;
    let arch = m.meta.arch.clone();
    let bytes = export::to_nap_bytes(&m, ExportOptions::default())?;
    let model = rt(Model::from_vec(&bytes))?;
    let (inputs, labels, names): (Vec<f32>, Option<Vec<data::Label>>, Vec<String>) =
        if images.is_empty() {
            let (d, labelled) = load_data(a, m.input_shape())?;
            train::check_data(&m, &d)?;
            (d.images, labelled.then_some(d.labels), Vec::new())
        } else {
            let mut xs = Vec::new();
            for p in images {
                xs.extend(parse_input(&model, &p.to_string_lossy(), &a.data_dir)?.0);
            }
            (
                xs,
                None,
                images.iter().map(|p| p.display().to_string()).collect(),
            )
        };
    let ours = eval::runtime_logits(&model, &inputs, batch, !json)?;
    let reference = eval::reference_logits(&m, &inputs, batch, !json)?;
    let classes = m.output_shape().iter().product::<u32>() as usize;
    let ag = agreement(&ours, &reference, classes);
    let report = CheckReport {
        arch: arch.clone(),
        examples: ag.examples,
        runtime_accuracy: labels.as_ref().map(|l| eval::accuracy(&ours, l, classes)),
        reference_accuracy: labels
            .as_ref()
            .map(|l| eval::accuracy(&reference, l, classes)),
        top: names
            .iter()
            .zip(ours.chunks(classes))
            .map(|(n, row)| (n.clone(), top_k(&softmax(row), 3)))
            .collect(),
        agreement: ag,
    };
    if let Some(dir) = dump {
        std::fs::create_dir_all(dir)?;
        crate::util::atomic_write(&dir.join(format!("{arch}.nap")), &bytes)?;
        let per = inputs.len() / report.examples;
        let k = report.examples.min(64);
        crate::util::atomic_write(
            &dir.join(format!("{arch}.ref")),
            &crate::refdump::encode(&inputs[..k * per], &reference[..k * classes], k),
        )?;
    }
    if json {
        print_json(&report)?;
    } else {
        let ag = &report.agreement;
        println!(
            "{arch}: runtime vs candle reference on {} examples: max relative error {:.2e}, max abs error {:.2e}, top-1 mismatches {}",
            ag.examples, ag.max_rel_err, ag.max_abs_err, ag.top1_mismatches
        );
        if let (Some(r), Some(c)) = (report.runtime_accuracy, report.reference_accuracy) {
            println!(
                "accuracy: runtime {:.2}%, reference {:.2}%",
                100.0 * r,
                100.0 * c
            );
        }
        let cn = class_names(&m.meta.labels, None)?;
        for (n, t) in &report.top {
            let desc: Vec<String> = t
                .iter()
                .map(|&(i, p)| {
                    let name = cn
                        .as_ref()
                        .and_then(|c| c.get(i))
                        .cloned()
                        .unwrap_or_default();
                    format!("{i} {name} {:.2}", p)
                })
                .collect();
            println!("  {n}: {}", desc.join(" | "));
        }
    }
    if report.agreement.max_rel_err > 1e-4 || report.agreement.top1_mismatches > 0 {
        bail!("the runtime disagrees with the reference");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train_cmd(
    arch: &str,
    a: &DataArgs,
    cfg: TrainConfig,
    (val_fraction, confirm_fraction, val_seed): (f32, f32, u64),
    output: &Path,
) -> Result<()> {
    let mut m = archs::random(arch, cfg.seed)?;
    if a.data.is_user() {
        bail!("nap train trains the built-in architectures on mnist or digits");
    }
    let (all, _) = load_data(
        &DataArgs {
            split: SplitArg::Train,
            ..a.clone()
        },
        m.input_shape(),
    )?;
    let (train_set, val, _confirm) = all.split3(val_fraction, confirm_fraction, val_seed);
    let (test, _) = load_data(
        &DataArgs {
            split: SplitArg::Test,
            limit: None,
            ..a.clone()
        },
        m.input_shape(),
    )?;
    m.meta.source = format!(
        "nap train --arch {arch} --epochs {} --lr {} --batch {} --seed {} --val-fraction {val_fraction} --confirm-fraction {confirm_fraction} --val-seed {val_seed}",
        cfg.epochs, cfg.lr, cfg.batch, cfg.seed
    );
    let t0 = Instant::now();
    let loss = train::train(&mut m, &train_set, &cfg)?;
    let acc = train::reference_accuracy(&m, &test, 256)?;
    let val_text = if val.n > 0 {
        format!(
            ", validation accuracy {:.2}% ({} held out)",
            100.0 * train::reference_accuracy(&m, &val, 256)?,
            val.n
        )
    } else {
        String::new()
    };
    println!(
        "trained {arch} on {} examples for {} epochs in {:.1} s: final training loss {loss:.4}, test accuracy {:.2}%{val_text}",
        train_set.n,
        cfg.epochs,
        t0.elapsed().as_secs_f64(),
        100.0 * acc
    );
    match output.extension().and_then(|e| e.to_str()) {
        Some("nap") => export::write_nap(&m, output, ExportOptions::default())?,
        Some("safetensors") => crate::ir::write_checkpoint(output, &m)?,
        _ => bail!("output must end in .nap or .safetensors"),
    }
    println!("wrote {}", output.display());
    Ok(())
}

fn prune_settings(a: &PruneArgs) -> Result<crate::schedule::Settings> {
    let target_sparsity = a
        .target_sparsity
        .as_deref()
        .map(|s| parse_fraction(s, "--target-sparsity"))
        .transpose()?;
    let target_size = a.target_size.as_deref().map(parse_bytes).transpose()?;
    let target_flops = a
        .target_flops
        .as_deref()
        .map(|s| {
            s.trim()
                .trim_end_matches(['x', 'X'])
                .parse::<f64>()
                .map_err(|_| {
                    anyhow!("--target-flops: expected a factor such as 5 or 5x, got {s:?}")
                })
        })
        .transpose()?;
    let max_drop = match &a.max_drop {
        Some(s) => Some(parse_points(s, "--max-drop")?),
        None if target_sparsity.is_none()
            && target_size.is_none()
            && target_flops.is_none()
            && a.max_kl.is_none() =>
        {
            Some(0.001)
        }
        None => None,
    };
    let step = a.step.unwrap_or(match a.mode {
        crate::schedule::Mode::Channel => crate::schedule::CHANNEL_STEP,
        _ => 0.2,
    });
    let (budget_epochs, budget_minutes) = match a.budget.as_deref() {
        None => (None, None),
        Some(b) => parse_budget(b)?,
    };
    Ok(crate::schedule::Settings {
        mode: a.mode,
        schedule: a.schedule.unwrap_or(match a.mode {
            crate::schedule::Mode::Channel => crate::schedule::Schedule::Iterative,
            _ => crate::schedule::Schedule::default_for(a.criterion),
        }),
        prune_events: a.prune_events,
        event_stats: a.event_stats,
        budget_epochs,
        budget_minutes,
        criterion: a.criterion,
        channel_cost: a.channel_cost,
        flops_weight: a.flops_weight,
        target_flops,
        channel_drop: a
            .channel_drop
            .as_deref()
            .map(|s| parse_points(s, "--channel-drop"))
            .transpose()?,
        channel_step: a.channel_step,
        obs_update: a.obs_update,
        damping: a.damping,
        step,
        min_step: a.min_step.unwrap_or(step / 8.0),
        step_growth: a.step_growth,
        layer_cap: a.layer_cap,
        channel_multiple: a.channel_multiple,
        block_rows: parse_block(&a.block)?,
        max_drop,
        confidence: a.confidence,
        max_kl: a.max_kl,
        target_sparsity,
        target_size,
        max_steps: a.max_steps,
        fisher: a.fisher,
        fisher_temperature: a.fisher_temperature,
        fisher_samples: a.fisher_samples,
        fisher_classes: (a.fisher_classes > 0).then_some(a.fisher_classes),
        fisher_probes: (a.fisher_probes > 0).then_some(a.fisher_probes),
        label_smoothing: a.label_smoothing,
        stats_examples: a.stats_examples,
        stats_batch: a.stats_batch,
        ft_batch: a.ft_batch,
        ft_epochs: a.ft_epochs,
        ft_examples: a.ft_examples,
        ft_lr: a.ft_lr,
        ft_warmup: a.ft_warmup,
        ft_weight_decay: a.ft_weight_decay,
        final_epochs: a.final_epochs,
        distill: a.distill,
        distill_temperature: a.distill_temperature,
        val_fraction: a.val_fraction,
        confirm_fraction: a.confirm_fraction,
        val_seed: a.val_seed,
        seed: a.seed,
    })
}

fn prune_cmd(a: &PruneArgs) -> Result<()> {
    let settings = prune_settings(a)?;
    settings.check()?;
    let storage = storage(false, a.policy.as_deref())?;
    let device = crate::util::parse_device(&a.device)?;
    let dense = a.source.load(&a.checkpoint)?;
    train::check_classifier(&dense)?;
    let data_args = |split| DataArgs {
        data: a.data.clone(),
        data_dir: a.data_dir.clone(),
        image: a.image.clone(),
        split,
        limit: None,
    };
    let (mut all, labelled) = load_data(&data_args(SplitArg::Train), dense.input_shape())?;
    train::check_data(&dense, &all).context("--data does not fit the model")?;
    if !labelled {
        let logits = eval::reference_logits(&dense, &all.images, 64, !a.json)?;
        let classes = dense.output_shape().iter().product::<u32>() as usize;
        data::user::pseudo_label(&mut all, &logits, classes);
        eprintln!(
            "{} unlabelled examples: their label is the dense model's top-1 class, so accuracy below means top-1 agreement with the dense model",
            all.n
        );
    }
    let test = if a.data.is_user() {
        None
    } else {
        Some(load_data(&data_args(SplitArg::Test), dense.input_shape())?.0)
    };
    let (train_set, val, confirm) = all.split3(
        settings.val_fraction,
        settings.confirm_fraction,
        settings.val_seed,
    );
    let mut log = |line: &str| eprintln!("{line}");
    let outcome = crate::schedule::run_phases(
        &dense,
        &train_set,
        &val,
        &settings,
        crate::schedule::RunOptions {
            dir: &a.out,
            resume: a.resume,
            device,
            progress: !a.json,
            log: &mut log,
            reference: None,
        },
    )?;
    let report = crate::report::finish(
        &dense,
        &outcome,
        (confirm.n > 0).then_some(&confirm),
        test.as_ref(),
        &a.out,
        ExportOptions {
            dtype: match a.dtype {
                StoreDtype::F32 => DType::F32,
                StoreDtype::F16 => DType::F16,
            },
            storage,
        },
    )?;
    if a.json {
        print_json(&report)?;
    } else {
        crate::report::print_summary(&report);
    }
    Ok(())
}

#[derive(Serialize)]
struct DemoReport {
    train_examples: usize,
    test_examples: usize,
    epochs: usize,
    train_seconds: f64,
    final_loss: f32,
    reference_accuracy: f32,
    runtime_accuracy: f32,
    agreement: Agreement,
    model_file: PathBuf,
    model_bytes: u64,
    params: usize,
    runtime_batch1_us: f64,
    pruning: DemoPrune,
}

#[derive(Serialize)]
struct DemoPrune {
    run_dir: PathBuf,
    max_drop: f64,
    /// Accuracy drop and its 95 % interval on the validation split (what the rule decided on)
    /// and on the test split.
    validation_drop: Option<(f64, (f64, f64))>,
    test_drop: Option<(f64, (f64, f64))>,
    steps: usize,
    accepted: usize,
    seconds: f64,
    compression: f64,
    val_accuracy_dense: f32,
    val_accuracy: f32,
    test_accuracy: f32,
    runtime_test_accuracy: f32,
    model_bytes: u64,
    runtime_batch1_us: f64,
}

/// Mean batch-1 latency of `model` on input `x` in µs, after warm-up.
fn latency_us(model: &Model<'_>, x: &[f32], reps: usize) -> Result<f64> {
    let mut s = rt(Session::new(model, 1))?;
    let x = &x[..s.input_len(0)];
    for _ in 0..reps / 20 + 1 {
        rt(s.run(x))?;
    }
    let t = Instant::now();
    for _ in 0..reps {
        rt(s.run(x))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / reps as f64)
}

/// The demo's tolerated accuracy drop.
const DEMO_TOLERANCE: f64 = 0.02;

fn demo(out: &Path, epochs: usize, seed: u64, json: bool) -> Result<()> {
    let (all, test_set) = data::digits::load_digits().split(0.2, seed);
    let (train_set, val_set) = all.split(0.25, seed);
    if !json {
        println!(
            "nap demo: 8x8 digits (embedded, {} train / {} validation / {} test), architecture digits-cnn",
            train_set.n, val_set.n, test_set.n
        );
    }
    let mut m = archs::random("digits-cnn", seed)?;
    m.meta.source = "nap demo".to_string();
    let cfg = TrainConfig {
        epochs,
        seed,
        progress: !json,
        ..Default::default()
    };
    let t0 = Instant::now();
    let loss = train::train(&mut m, &train_set, &cfg)?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let ref_logits = eval::reference_logits(&m, &test_set.images, 256, false)?;
    let classes = 10;
    let ref_acc = eval::accuracy(&ref_logits, &test_set.labels, classes);
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    export::write_nap(&m, out, ExportOptions::default())?;
    let model = rt(Model::open(out))?;
    let ours = eval::runtime_logits(&model, &test_set.images, 64, false)?;
    let ag = agreement(&ours, &ref_logits, classes);
    let rt_acc = eval::accuracy(&ours, &test_set.labels, classes);
    let reps = 2000;
    let us = latency_us(&model, &test_set.images, reps)?;
    // Prune it: NAP until the validation split can no longer show that the accuracy drop is
    // within the tolerance.
    let run_dir = out.with_extension("prune");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    let settings = crate::schedule::Settings {
        max_drop: Some(DEMO_TOLERANCE),
        stats_examples: 1000,
        ft_epochs: 2,
        ft_lr: 1e-3,
        seed,
        ..Default::default()
    };
    if !json {
        println!(
            "pruning with NAP (K-FAC OBS, global ranking), tolerance {} points of accuracy, decided on {} validation images:",
            100.0 * DEMO_TOLERANCE,
            val_set.n
        );
    }
    let mut log = |line: &str| {
        if !json {
            println!("  {line}");
        }
    };
    let outcome = crate::schedule::run(
        &m,
        &train_set,
        &val_set,
        &settings,
        crate::schedule::RunOptions {
            dir: &run_dir,
            resume: false,
            device: candle_core::Device::Cpu,
            progress: false,
            log: &mut log,
            reference: None,
        },
    )?;
    let pr = crate::report::finish(
        &m,
        &outcome,
        None,
        Some(&test_set),
        &run_dir,
        ExportOptions::default(),
    )?;
    let pruned_path = run_dir.join("pruned.nap");
    let pruned_model = rt(Model::open(&pruned_path))?;
    let pruned_us = latency_us(&pruned_model, &test_set.images, reps)?;
    let pruning = DemoPrune {
        run_dir: run_dir.clone(),
        max_drop: DEMO_TOLERANCE,
        validation_drop: pr.state.final_paired.map(|p| (p.drop, p.interval(0.95))),
        test_drop: pr
            .comparisons
            .iter()
            .find(|c| c.split == "test")
            .map(|c| (c.drop, c.interval95)),
        steps: pr.state.steps.len(),
        accepted: pr.state.accepted().count(),
        seconds: pr.state.seconds,
        compression: pr.pruned.compression,
        val_accuracy_dense: pr.dense.val_accuracy,
        val_accuracy: pr.pruned.val_accuracy,
        test_accuracy: pr.pruned.test_accuracy.unwrap_or(f32::NAN),
        runtime_test_accuracy: pr.pruned.runtime_test_accuracy.unwrap_or(f32::NAN),
        model_bytes: pr.pruned.nap_bytes,
        runtime_batch1_us: pruned_us,
    };
    let pruned_ag = pr.pruned.runtime_agreement.clone();
    let report = DemoReport {
        train_examples: train_set.n,
        test_examples: test_set.n,
        epochs,
        train_seconds,
        final_loss: loss,
        reference_accuracy: ref_acc,
        runtime_accuracy: rt_acc,
        agreement: ag,
        model_file: out.to_path_buf(),
        model_bytes: std::fs::metadata(out)?.len(),
        params: m.param_count(),
        runtime_batch1_us: us,
        pruning,
    };
    if json {
        print_json(&report)?;
    } else {
        println!(
            "trained {} parameters for {epochs} epochs in {:.1} s (final loss {loss:.4})",
            report.params, train_seconds
        );
        println!("candle reference: test accuracy {:.2}%", 100.0 * ref_acc);
        println!(
            "exported {} ({} bytes, BatchNorm/activations fused) and loaded it zero-copy in nap-runtime",
            out.display(),
            report.model_bytes
        );
        println!(
            "runtime: test accuracy {:.2}%, logits vs reference: max relative error {:.2e}, top-1 mismatches {}",
            100.0 * rt_acc,
            report.agreement.max_rel_err,
            report.agreement.top1_mismatches
        );
        println!(
            "runtime latency, batch 1: {us:.1} µs per image (mean of {reps} runs after warm-up)"
        );
        let p = &report.pruning;
        println!(
            "pruned in {} steps ({} accepted, {:.1} s): {:.1}x fewer weights, validation {:.2}% -> {:.2}%",
            p.steps,
            p.accepted,
            p.seconds,
            p.compression,
            100.0 * p.val_accuracy_dense,
            100.0 * p.val_accuracy
        );
        crate::report::print_summary(&pr);
        if let Some((d, _)) = p.test_drop {
            println!(
                "tolerance {:.1} points: the test split's drop of {:+.2} points is {}",
                100.0 * DEMO_TOLERANCE,
                100.0 * d,
                if d <= DEMO_TOLERANCE {
                    "within it"
                } else {
                    "beyond it"
                }
            );
        }
        println!(
            "pruned model in the runtime: test accuracy {:.2}%, {} bytes, {:.1} µs per image at batch 1",
            100.0 * p.runtime_test_accuracy,
            p.model_bytes,
            p.runtime_batch1_us
        );
    }
    let pruned_ag = pruned_ag.context("no test agreement")?;
    if report.agreement.max_rel_err > 1e-4
        || report.agreement.top1_mismatches > 0
        || pruned_ag.max_rel_err > 1e-4
        || pruned_ag.top1_mismatches > 0
    {
        bail!("the runtime disagrees with the reference");
    }
    Ok(())
}
