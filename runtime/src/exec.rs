//! The executor: [`Session::new`] plans every buffer once; [`Session::run`] allocates nothing.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use alloc::boxed::Box;

use crate::format::{Op, ValueId};
use crate::model::{numel, Model};
use crate::ops::{fused, Inputs, Kernel, PlanCx, RunCx};
use crate::pool::Pool;

#[derive(Clone, Copy, Debug)]
struct Buf {
    off: usize,
    /// Elements per example.
    len: usize,
}

struct Step {
    kernel: Box<dyn Kernel>,
    /// `(arena offset, elements per example)` of each input.
    inputs: Vec<(usize, usize)>,
    output: Buf,
}

/// Which CSR weights a [`Session`] runs with sparse kernels: a CSR weight denser than the limit
/// for its product is expanded to a dense f32 copy when the session is planned (costing that
/// memory) and runs with the dense kernels, which are faster there.
///
/// The defaults are break-even densities measured on x86-64 AVX2 (BENCHMARKS.md §6): batch-1
/// matrix-vector products of random matrices break even at density 0.25–0.3 with operands in
/// cache, pruned LeNet layers lower, so 0.2; convolutions at 0.3–0.7 depending on the shape, so
/// 0.5; 4×1 blocks at 0.4–0.7, so 0.5. `nap bench --calibrate` measures them on the device.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparsePolicy {
    /// For Linear layers at batch 1.
    pub max_density_gemv: f32,
    /// For convolutions and Linear layers at batch > 1.
    pub max_density_gemm: f32,
    /// For 4×1-blocked weights (batch-1 Linear layers; counting stored block entries).
    #[serde(default = "default_blocked")]
    pub max_density_blocked: f32,
}

fn default_blocked() -> f32 {
    SparsePolicy::default().max_density_blocked
}

impl SparsePolicy {
    /// Every CSR weight runs as CSR.
    pub const KEEP_CSR: SparsePolicy = SparsePolicy {
        max_density_gemv: 1.0,
        max_density_gemm: 1.0,
        max_density_blocked: 1.0,
    };
}

impl Default for SparsePolicy {
    fn default() -> Self {
        SparsePolicy {
            max_density_gemv: 0.2,
            max_density_gemm: 0.5,
            max_density_blocked: 0.5,
        }
    }
}

/// Default of [`SessionOptions::memory_limit`]: 4 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// How a [`Session`] is planned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SessionOptions {
    /// Threads per large operation (std only; without std the session is single-threaded).
    pub threads: usize,
    /// Which CSR weights run as CSR.
    pub policy: SparsePolicy,
    /// Most bytes the session's buffers may take: activations, scratch, GEMM workspaces and the
    /// parameters it converts or expands. Planning checks every buffer against it before
    /// allocating, so a valid but hostile file cannot make the runtime allocate without bound,
    /// and an app can hold a model to its own budget. The model's file is not counted.
    pub memory_limit: u64,
    /// Copy dense f32 weights of GEMM convolutions into the GEMM kernel's panel layout once,
    /// when planning (where the copy fits `memory_limit`), instead of reading them in place
    /// from the model: faster convolutions for as much memory again as those weights, and the
    /// channels-in-lanes kernel for layers whose padded grid would waste the pixel-major GEMM
    /// (it needs packed weights). Off, they stay zero-copy in the file. Results agree to float
    /// rounding (bit for bit where the sums are at most 256 deep).
    pub pack_weights: bool,
    /// Run 3×3, stride-1 convolutions of one group and dense f32 weights as Winograd
    /// F(4×4, 3×3) or F(2×2, 3×3) where that pays (it needs `pack_weights`, and 4 or 16/9 times
    /// those weights' memory for their transformed copy): 36 multiplies per 4×4 output tile and
    /// channel pair instead of 144 (16 per 2×2 instead of 36). Results agree with the direct
    /// sum to float rounding of a few more operations. A session that would not fit
    /// `memory_limit` with them is planned without them.
    pub winograd: bool,
    /// Which pairs of convolutions run as one kernel, a band of rows at a time, so the map
    /// between them never goes to memory: a 1×1 expansion and the depthwise 3×3 layer that
    /// alone reads its output, or a depthwise 3×3 layer and the 1×1 projection that alone
    /// reads its output. The first layer's output then has no buffer ([`Session::value`]
    /// returns `None` for it) and its time counts in the second's. Results agree with the
    /// separate layers to float rounding. Unless `Fusion::Off`, a sparse stride-1 convolution
    /// also takes a 2×2, stride-2 max pooling that alone reads its output, and pools each
    /// channel as it computes it: the convolution's map then has no buffer either, the pooling
    /// node's kernel shows `fused_into_prev` and its time counts in the convolution's. Results
    /// are the same (a piecewise-linear activation is applied after the max, which it commutes
    /// with exactly), except where a NaN meets a max: the vector max may return it where the
    /// scalar one returns the other value.
    pub fuse: Fusion,
    /// How a parallel operation's work is handed to the threads (std only).
    pub split: Split,
}

/// How a session's parallel operations hand their work to the threads
/// ([`SessionOptions::split`]). Either way every thread first takes its own share (a static
/// split), and each output element is computed the same way, so results do not depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Split {
    /// Watch the operations as they run: where the threads finish unevenly (a slower core,
    /// or a core shared with other work), cut each thread's share into steps that a thread
    /// done early takes over; where waiting for a worker costs more than the caller alone
    /// would take (a worker descheduled mid-share), run operations on the caller for a while.
    #[default]
    Adaptive,
    /// One share per thread, always (a share that no thread has started by the time another
    /// is done with its own goes to that one).
    Static,
    /// Every share in steps that a thread done early takes over, always; otherwise as
    /// `Adaptive`.
    Steps,
}

/// Which convolution pairs a session fuses ([`SessionOptions::fuse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// None.
    Off,
    /// Those whose map between the layers is at least [`FUSE_MIN_FLOATS`] per example: maps
    /// that leave the cache. On smaller ones fusing measured no faster (AVX-512, MobileNetV2).
    Large,
    /// Every pair that qualifies, whatever its size (for cores with small caches).
    All,
}

/// Floats per example of the map between two convolutions from which [`Fusion::Large`] fuses
/// them: 4 MB. Measured on MobileNetV2 (AVX-512, one thread): its 4.8 MB expanded map runs
/// 1.3–1.5× faster fused (expansion, depthwise and projection together); its 1.6–1.8 MB maps
/// within 5 % either way.
pub const FUSE_MIN_FLOATS: usize = 1 << 20;

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 1,
            policy: SparsePolicy::default(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            pack_weights: true,
            winograd: true,
            fuse: Fusion::Large,
            split: Split::default(),
        }
    }
}

/// A model prepared for a fixed batch size.
pub struct Session<'m> {
    model: &'m Model<'m>,
    batch: usize,
    steps: Vec<Step>,
    values: Vec<Option<Buf>>,
    inputs: Vec<Buf>,
    outputs: Vec<Buf>,
    arena: Vec<f32>,
    scratch: Vec<f32>,
    /// `threads` workspaces of `ws_len` floats each.
    gemm_ws: Vec<f32>,
    ws_len: usize,
    params: Vec<f32>,
    pool: Pool,
    #[cfg(feature = "std")]
    times: Option<Vec<std::time::Duration>>,
}

/// Floats of the session's buffers: the arena, scratch, one GEMM workspace per thread and the
/// converted parameters.
fn planned_floats(
    arena: usize,
    scratch: usize,
    ws: usize,
    threads: usize,
    params: usize,
) -> Result<usize> {
    [arena, scratch, ws.saturating_mul(threads), params]
        .iter()
        .try_fold(0usize, |a, &b| a.checked_add(b))
        .ok_or(Error::Overflow("planned buffers"))
}

/// Buffer planner: first fit over freed blocks, else grow the arena.
struct Planner {
    free: Vec<(usize, usize)>,
    top: usize,
}

impl Planner {
    fn alloc(&mut self, len: usize) -> Result<usize> {
        if let Some(i) = self.free.iter().position(|&(_, l)| l >= len) {
            let (off, l) = self.free[i];
            if l == len {
                self.free.remove(i);
            } else {
                self.free[i] = (off + len, l - len);
            }
            return Ok(off);
        }
        let off = self.top;
        self.top = self
            .top
            .checked_add(len)
            .ok_or(Error::Overflow("planned buffers"))?;
        Ok(off)
    }

    fn release(&mut self, off: usize, len: usize) {
        self.free.push((off, len));
        self.free.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.free.len());
        for &(o, l) in &self.free {
            match merged.last_mut() {
                Some((mo, ml)) if *mo + *ml == o => *ml += l,
                _ => merged.push((o, l)),
            }
        }
        self.free = merged;
    }
}

impl<'m> Session<'m> {
    /// Plans buffers and converts small parameter vectors for `batch` examples per run.
    pub fn new(model: &'m Model<'m>, batch: usize) -> Result<Self> {
        Self::with_threads(model, batch, 1)
    }

    /// [`Session::new`] with up to `threads` threads per large operation (std only; without std
    /// the session is single-threaded). The worker threads start here and live as long as the
    /// session; runs allocate nothing either way.
    pub fn with_threads(model: &'m Model<'m>, batch: usize, threads: usize) -> Result<Self> {
        Self::with_policy(model, batch, threads, SparsePolicy::default())
    }

    /// [`Session::with_threads`] with an explicit choice of which CSR weights run as CSR.
    pub fn with_policy(
        model: &'m Model<'m>,
        batch: usize,
        threads: usize,
        policy: SparsePolicy,
    ) -> Result<Self> {
        Self::with_options(
            model,
            batch,
            SessionOptions {
                threads,
                policy,
                ..SessionOptions::default()
            },
        )
    }

    /// A session for `batch` examples per run, planned as `opts` says. Where the Winograd
    /// weights and scratch push it over `memory_limit`, it is planned again without them (see
    /// [`SessionOptions::winograd`]).
    pub fn with_options(model: &'m Model<'m>, batch: usize, opts: SessionOptions) -> Result<Self> {
        match Self::plan(model, batch, opts) {
            Err(Error::TooLarge { .. }) if opts.winograd => {
                let opts = SessionOptions {
                    winograd: false,
                    ..opts
                };
                Self::plan(model, batch, opts)
            }
            r => r,
        }
    }

    fn plan(model: &'m Model<'m>, batch: usize, opts: SessionOptions) -> Result<Self> {
        let SessionOptions {
            threads,
            policy,
            memory_limit,
            pack_weights,
            winograd,
            fuse,
            split,
        } = opts;
        let threads = if cfg!(feature = "std") {
            threads.max(1)
        } else {
            1
        };
        let limit = usize::try_from(memory_limit / 4).unwrap_or(usize::MAX);
        let g = model.graph();
        if batch == 0 {
            return Err(Error::Shape {
                what: "batch",
                expected: 1,
                got: 0,
            });
        }
        let shape = |v: u32| g.values[v as usize].shape.as_slice();
        let elems = |v: u32| numel(shape(v)).ok_or(Error::Overflow("value shape"));

        let mut keep = vec![false; g.values.len()];
        for &v in g.inputs.iter().chain(&g.outputs) {
            keep[v as usize] = true;
        }
        let mut uses = vec![0usize; g.values.len()];
        for n in &g.nodes {
            for &v in &n.inputs {
                uses[v as usize] += 1;
            }
        }
        // `fused[i]`: node `i`'s output is computed by node `i + 1`'s kernel (see
        // `ops::fused`), which reads the chain's first node's inputs; `links[j]`: the chain
        // ending at node `j`.
        let mut fused = vec![false; g.nodes.len()];
        let mut links = vec![None; g.nodes.len()];
        let single_use = |v: ValueId| !keep[v as usize] && uses[v as usize] == 1;
        let min_floats = match fuse {
            Fusion::Off => None,
            Fusion::Large => Some(FUSE_MIN_FLOATS),
            Fusion::All => Some(0),
        };
        let mut i = 0;
        while i < g.nodes.len() {
            match min_floats.and_then(|min| fused::chain(model, g, i, min, &single_use)) {
                Some(l) => {
                    fused[i..i + l.len() - 1].fill(true);
                    links[i + l.len() - 1] = Some(l);
                    i += l.len();
                }
                None => i += 1,
            }
        }
        // The inputs a node's kernel reads.
        let node_inputs = |i: usize| match links[i] {
            Some(l) => &g.nodes[i + 1 - l.len()].inputs,
            None if fused[i] => &[][..],
            None => &g.nodes[i].inputs,
        };
        let mut last_use = vec![usize::MAX; g.values.len()];
        for i in 0..g.nodes.len() {
            for &v in node_inputs(i) {
                last_use[v as usize] = i;
            }
        }

        let mut planner = Planner {
            free: Vec::new(),
            top: 0,
        };
        let mut values: Vec<Option<Buf>> = vec![None; g.values.len()];
        let mut inputs = Vec::new();
        for &v in &g.inputs {
            let len = elems(v)?;
            let b = Buf {
                off: planner.alloc(len.checked_mul(batch).ok_or(Error::Overflow("batch"))?)?,
                len,
            };
            values[v as usize] = Some(b);
            inputs.push(b);
        }

        let mut params = Vec::new();
        let mut steps = Vec::with_capacity(g.nodes.len());
        let mut scratch_len = 0usize;
        let mut ws_len = 0usize;
        // `pooled[i]`: node `i` is a max pooling that node `i - 1`'s kernel computes.
        let mut pooled = vec![false; g.nodes.len()];
        for (i, node) in g.nodes.iter().enumerate() {
            let away = match (pooled[i], fused[i]) {
                (true, _) => Some("fused_into_prev"),
                (_, true) => Some("fused_into_next"),
                _ => None,
            };
            if let Some(method) = away {
                steps.push(Step {
                    kernel: Box::new(fused::FusedAway(method)),
                    inputs: Vec::new(),
                    output: Buf { off: 0, len: 0 },
                });
                continue;
            }
            let ins: Vec<(usize, usize)> = node_inputs(i)
                .iter()
                .map(|&v| {
                    values[v as usize]
                        .map(|b| (b.off, b.len))
                        .ok_or(Error::BadGraph {
                            node: node.name.clone(),
                            reason: "input not computed".into(),
                        })
                })
                .collect::<Result<_>>()?;
            let in_shapes: Vec<&[u32]> = node_inputs(i).iter().map(|&v| shape(v)).collect();
            let others = planned_floats(planner.top, scratch_len, ws_len, threads, 0)?;
            let mut cx = PlanCx {
                model,
                batch,
                threads,
                policy,
                pack_weights,
                winograd,
                param_limit: limit.saturating_sub(others),
                ins: &in_shapes,
                out: shape(node.output),
                params: &mut params,
                scratch_len: &mut scratch_len,
                ws_len: &mut ws_len,
            };
            let kernel = match links[i] {
                Some(l) => {
                    let conv = |j: usize| match &g.nodes[j].op {
                        Op::Conv2d(c) => c,
                        _ => unreachable!("fused::chain takes convolutions only"),
                    };
                    let first = i + 1 - l.len();
                    let exp = l.exp.then(|| conv(first));
                    let dw = conv(first + usize::from(l.exp));
                    let proj = l.proj.then(|| conv(i));
                    fused::plan(exp, dw, proj, &mut cx)?
                }
                None => node.op.def().plan(&mut cx)?,
            };
            // A 2×2, stride-2 max pooling that alone reads this output fuses into its kernel
            // where the kernel can; the pooled map is then this step's output.
            let pool_next = g.nodes.get(i + 1).and_then(|n| match &n.op {
                Op::MaxPool2d(m)
                    if fuse != Fusion::Off
                        && links[i].is_none()
                        && n.inputs == [node.output]
                        && single_use(node.output)
                        && m.kernel == [2, 2]
                        && m.stride == [2, 2]
                        && m.padding == [0, 0] =>
                {
                    Some(n.output)
                }
                _ => None,
            });
            let (mut kernel, mut out_value) = (kernel, node.output);
            if let Some((v, &[c, h, w], &[pc, oh, ow])) =
                pool_next.map(|v| (v, shape(node.output), shape(v)))
            {
                debug_assert_eq!(c, pc, "a pooling keeps its channels");
                let u = |x: u32| x as usize;
                let pg = crate::kernels::ConvGeom {
                    c: u(c),
                    h: u(h),
                    w: u(w),
                    kh: 2,
                    kw: 2,
                    stride: [2, 2],
                    pad: [0, 0],
                    dilation: [1, 1],
                    oh: u(oh),
                    ow: u(ow),
                };
                if kernel.fuse_max_pool(pg) {
                    pooled[i + 1] = true;
                    out_value = v;
                }
            }
            let len = elems(out_value)?;
            let total = len.checked_mul(batch).ok_or(Error::Overflow("batch"))?;
            let output = Buf {
                off: planner.alloc(total)?,
                len,
            };
            values[out_value as usize] = Some(output);
            for &v in node_inputs(i) {
                let v = v as usize;
                if last_use[v] == i && !keep[v] {
                    if let Some(b) = values[v] {
                        planner.release(b.off, b.len * batch);
                        last_use[v] = usize::MAX - 1;
                    }
                }
            }
            steps.push(Step {
                kernel,
                inputs: ins,
                output,
            });
        }
        let outputs = g
            .outputs
            .iter()
            .map(|&v| {
                values[v as usize].ok_or(Error::BadGraph {
                    node: "<graph>".into(),
                    reason: "output not computed".into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let planned = planned_floats(planner.top, scratch_len, ws_len, threads, params.len())?;
        if planned > limit {
            return Err(Error::TooLarge {
                what: "planned buffers (bytes)",
                size: (planned as u64).saturating_mul(4),
                limit: memory_limit,
            });
        }
        Ok(Session {
            model,
            batch,
            steps,
            values,
            inputs,
            outputs,
            arena: vec![0.0; planner.top],
            scratch: vec![0.0; scratch_len],
            gemm_ws: vec![0.0; ws_len * threads],
            ws_len,
            params,
            pool: Pool::new(threads, split),
            #[cfg(feature = "std")]
            times: None,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Elements per example of graph input `i`.
    pub fn input_len(&self, i: usize) -> usize {
        self.inputs[i].len
    }

    /// Elements per example of graph output `i`.
    pub fn output_len(&self, i: usize) -> usize {
        self.outputs[i].len
    }

    /// Total f32 elements held by the planned buffers (activations, scratch, parameters).
    pub fn planned_floats(&self) -> usize {
        self.arena.len() + self.scratch.len() + self.gemm_ws.len() + self.params.len()
    }

    /// Runs a single-input, single-output model on `batch` examples laid out back to back
    /// (`[batch, ...per-example shape]`) and returns the output, `[batch, ...]`.
    pub fn run(&mut self, input: &[f32]) -> Result<&[f32]> {
        let b = self.inputs[0];
        let want = b.len * self.batch;
        if input.len() != want {
            return Err(Error::Shape {
                what: "input",
                expected: want,
                got: input.len(),
            });
        }
        self.arena[b.off..b.off + want].copy_from_slice(input);
        self.execute();
        let o = self.outputs[0];
        Ok(&self.arena[o.off..o.off + o.len * self.batch])
    }

    /// Buffer of value `v` after the last run, if it is still live (graph inputs and outputs are).
    pub fn value(&self, v: u32) -> Option<&[f32]> {
        let b = self.values.get(v as usize).copied().flatten()?;
        Some(&self.arena[b.off..b.off + b.len * self.batch])
    }

    /// Records the time of every node in each following run (std only); see [`Session::node_times`].
    #[cfg(feature = "std")]
    pub fn set_profiling(&mut self, on: bool) {
        self.times = on.then(|| vec![std::time::Duration::ZERO; self.steps.len()]);
    }

    /// For each node (graph order): whether its sparse weight was expanded to dense when the
    /// session was planned (see [`SparsePolicy`]), so it runs with the dense kernels.
    pub fn expanded(&self) -> Vec<bool> {
        self.steps.iter().map(|s| s.kernel.expanded()).collect()
    }

    /// For each node (graph order): the algorithm its kernel runs, where the op has several
    /// (see [`crate::ops::Kernel::method`]); empty otherwise.
    pub fn methods(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.kernel.method()).collect()
    }

    /// Time spent in each node (graph order), summed over the runs since profiling was switched on.
    #[cfg(feature = "std")]
    pub fn node_times(&self) -> Option<&[std::time::Duration]> {
        self.times.as_deref()
    }

    fn execute(&mut self) {
        let n = self.batch;
        for (si, step) in self.steps.iter().enumerate() {
            #[cfg(feature = "std")]
            let t0 = self.times.is_some().then(std::time::Instant::now);
            #[cfg(not(feature = "std"))]
            let _ = si;
            let out = step.output;
            // Inputs and output never overlap: an input's block is released only after the
            // output block is taken.
            let (pre, rest) = self.arena.split_at_mut(out.off);
            let (y, post) = rest.split_at_mut(out.len * n);
            let ins = Inputs {
                pre,
                post,
                post_base: out.off + out.len * n,
                bufs: &step.inputs,
                n,
            };
            let mut cx = RunCx {
                model: self.model,
                n,
                params: &self.params,
                pool: &self.pool,
                scratch: &mut self.scratch,
                gemm_ws: &mut self.gemm_ws,
                ws_len: self.ws_len,
            };
            step.kernel.run(&mut cx, &ins, y);
            #[cfg(feature = "std")]
            if let (Some(t0), Some(times)) = (t0, self.times.as_mut()) {
                times[si] += t0.elapsed();
            }
        }
    }
}
