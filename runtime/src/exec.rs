//! The executor: [`Session::new`] plans every buffer once; [`Session::run`] allocates nothing.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::format::{Activation, Op, TensorId};
use crate::kernels::{self, act_scalar, apply_act, Bias, ConvGeom, Elems, MatRef};
use crate::model::{numel, CsrView, Model, TensorView};
use crate::pool::Pool;

#[derive(Clone, Copy, Debug)]
struct Buf {
    off: usize,
    /// Elements per example.
    len: usize,
}

#[derive(Clone, Copy, Debug)]
struct Range {
    off: usize,
    len: usize,
}

#[derive(Debug)]
enum Kind {
    Linear {
        weight: TensorId,
        /// The CSR weight expanded into `params` by the [`SparsePolicy`].
        dense: Option<Range>,
        bias: Option<Range>,
        act: Activation,
        inp: usize,
        out: usize,
    },
    Conv {
        weight: TensorId,
        /// The CSR weight expanded into `params` by the [`SparsePolicy`].
        dense: Option<Range>,
        bias: Option<Range>,
        act: Activation,
        geom: ConvGeom,
        groups: usize,
        out_c: usize,
        depthwise: bool,
        /// 1×1, stride 1, no padding: the input is its own patch matrix.
        direct: bool,
    },
    /// `y = x * scale[c] + shift[c]` per channel.
    ChannelAffine {
        scale: Range,
        shift: Range,
        c: usize,
    },
    Act(Activation),
    MaxPool {
        g: ConvGeom,
    },
    AvgPool {
        g: ConvGeom,
        count_include_pad: bool,
    },
    GlobalAvgPool {
        hw: usize,
    },
    Add(Activation),
    Concat,
    Copy,
    Softmax,
}

#[derive(Debug)]
struct Step {
    kind: Kind,
    inputs: Vec<Buf>,
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

/// Weight `id` expanded to a dense f32 copy in `params` when the session should run it dense: a
/// CSR weight denser than `limit` (kept sparse if the copy would not fit in
/// [`MAX_PLANNED_FLOATS`]), or a blocked-CSR weight that no blocked kernel runs here
/// (`blocks_ok`, the blocked limit where a blocked kernel applies, is `None`; blocks other than
/// 4×1; or denser than that limit).
fn densify(
    model: &Model<'_>,
    id: TensorId,
    limit: f32,
    blocks_ok: Option<f32>,
    params: &mut Vec<f32>,
) -> Result<Option<Range>> {
    match model.tensor(id) {
        TensorView::Csr(c) => Ok((|| {
            let n = c.rows().checked_mul(c.cols())?;
            let fits = params.len().checked_add(n)? <= MAX_PLANNED_FLOATS;
            (fits && c.nnz() as f64 > limit as f64 * n as f64)
                .then(|| dense_f32_into(model, id, params))
        })()),
        TensorView::BlockCsr(b) => {
            let n = b
                .rows()
                .checked_mul(b.cols())
                .ok_or(Error::Overflow("tensor shape"))?;
            let stored = b.values().len() as f64;
            if blocks_ok
                .is_some_and(|l| b.block() == kernels::BSPMV_BLOCK && stored <= l as f64 * n as f64)
            {
                return Ok(None);
            }
            let total = params.len().saturating_add(n);
            if total > MAX_PLANNED_FLOATS {
                return Err(Error::TooLarge {
                    what: "expanded blocked-CSR weight (f32 elements)",
                    size: total as u64,
                    limit: MAX_PLANNED_FLOATS as u64,
                });
            }
            Ok(Some(dense_f32_into(model, id, params)))
        }
        TensorView::Dense(_) => Ok(None),
    }
}

/// Largest total of activation, scratch and parameter buffers a session plans (4 GiB of f32):
/// a valid but hostile file must not make the runtime allocate without bound.
pub const MAX_PLANNED_FLOATS: usize = 1 << 30;

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

fn dense_f32_into(model: &Model<'_>, id: TensorId, params: &mut Vec<f32>) -> Range {
    let off = params.len();
    let v = model.tensor(id);
    match v {
        TensorView::Dense(e) => params.extend((0..e.len()).map(|i| e.get_f32(i))),
        TensorView::Csr(_) | TensorView::BlockCsr(_) => params.extend(v.to_dense_f32()),
    }
    Range {
        off,
        len: params.len() - off,
    }
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

/// Window geometry of a conv or pooling node from its `[C, H, W]` input and output shapes.
fn geom(
    input: &[u32],
    output: &[u32],
    k: [u32; 2],
    s: [u32; 2],
    p: [u32; 2],
    d: [u32; 2],
) -> ConvGeom {
    let u = |x: u32| x as usize;
    ConvGeom {
        c: u(input[0]),
        h: u(input[1]),
        w: u(input[2]),
        kh: u(k[0]),
        kw: u(k[1]),
        stride: [u(s[0]), u(s[1])],
        pad: [u(p[0]), u(p[1])],
        dilation: [u(d[0]), u(d[1])],
        oh: u(output[1]),
        ow: u(output[2]),
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
        let threads = if cfg!(feature = "std") {
            threads.max(1)
        } else {
            1
        };
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

        let mut last_use = vec![usize::MAX; g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last_use[v as usize] = i;
            }
        }
        let mut keep = vec![false; g.values.len()];
        for &v in g.inputs.iter().chain(&g.outputs) {
            keep[v as usize] = true;
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
        for (i, node) in g.nodes.iter().enumerate() {
            let ins: Vec<Buf> = node
                .inputs
                .iter()
                .map(|&v| {
                    values[v as usize].ok_or(Error::BadGraph {
                        node: node.name.clone(),
                        reason: "input not computed".into(),
                    })
                })
                .collect::<Result<_>>()?;
            let in_shape = shape(node.inputs[0]);
            let out_shape = shape(node.output);
            let kind = match &node.op {
                Op::Linear { weight, bias, act } => {
                    let (out, inp) = (out_shape[0] as usize, in_shape[0] as usize);
                    ws_len = ws_len.max(kernels::gemm_workspace(batch, out, inp));
                    let limit = if batch == 1 {
                        policy.max_density_gemv
                    } else {
                        policy.max_density_gemm
                    };
                    let dense = densify(
                        model,
                        *weight,
                        limit,
                        (batch == 1).then_some(policy.max_density_blocked),
                        &mut params,
                    )?;
                    if batch > 1
                        && dense.is_none()
                        && matches!(model.tensor(*weight), TensorView::Csr(_))
                    {
                        // Transposed input and output of the batched sparse product.
                        scratch_len =
                            scratch_len.max(inp.saturating_add(out).saturating_mul(batch));
                    }
                    Kind::Linear {
                        weight: *weight,
                        dense,
                        bias: bias.map(|b| dense_f32_into(model, b, &mut params)),
                        act: *act,
                        inp,
                        out,
                    }
                }
                Op::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                    dilation,
                    groups,
                    act,
                } => {
                    let ws = &model.tensor_entry(*weight).shape;
                    let c = in_shape[0] as usize;
                    let (out_c, oh, ow) = (
                        out_shape[0] as usize,
                        out_shape[1] as usize,
                        out_shape[2] as usize,
                    );
                    let gm = geom(
                        in_shape,
                        out_shape,
                        [ws[2], ws[3]],
                        *stride,
                        *padding,
                        *dilation,
                    );
                    let groups = *groups as usize;
                    let dense =
                        densify(model, *weight, policy.max_density_gemm, None, &mut params)?;
                    // The depthwise kernel takes dense weights only; CSR depthwise weights go
                    // through the grouped path, which needs the im2col scratch.
                    let depthwise = groups == c
                        && out_c == c
                        && groups > 1
                        && (dense.is_some()
                            || matches!(model.tensor(*weight), TensorView::Dense(_)));
                    let direct =
                        gm.kh == 1 && gm.kw == 1 && gm.stride == [1, 1] && gm.pad == [0, 0];
                    if !depthwise {
                        let cpg = c / groups;
                        if !direct {
                            scratch_len = scratch_len.max(kernels::im2col_len(&gm, cpg));
                        }
                        ws_len = ws_len.max(kernels::gemm_workspace(
                            out_c / groups,
                            oh * ow,
                            cpg * gm.kh * gm.kw,
                        ));
                    }
                    Kind::Conv {
                        weight: *weight,
                        dense,
                        bias: bias.map(|b| dense_f32_into(model, b, &mut params)),
                        act: *act,
                        geom: gm,
                        groups,
                        out_c,
                        depthwise,
                        direct,
                    }
                }
                Op::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps,
                } => {
                    let c = in_shape[0] as usize;
                    let gm = dense_f32_into(model, *gamma, &mut params);
                    let bt = dense_f32_into(model, *beta, &mut params);
                    let mn = dense_f32_into(model, *mean, &mut params);
                    let vr = dense_f32_into(model, *var, &mut params);
                    let scale = Range {
                        off: params.len(),
                        len: c,
                    };
                    for j in 0..c {
                        let s = params[gm.off + j] / libm::sqrtf(params[vr.off + j] + eps);
                        params.push(s);
                    }
                    let shift = Range {
                        off: params.len(),
                        len: c,
                    };
                    for j in 0..c {
                        let t = params[bt.off + j] - params[mn.off + j] * params[scale.off + j];
                        params.push(t);
                    }
                    Kind::ChannelAffine { scale, shift, c }
                }
                Op::Act(a) => Kind::Act(*a),
                Op::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                } => Kind::MaxPool {
                    g: geom(in_shape, out_shape, *kernel, *stride, *padding, [1, 1]),
                },
                Op::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    count_include_pad,
                } => Kind::AvgPool {
                    g: geom(in_shape, out_shape, *kernel, *stride, *padding, [1, 1]),
                    count_include_pad: *count_include_pad,
                },
                Op::GlobalAvgPool => Kind::GlobalAvgPool {
                    hw: in_shape[1] as usize * in_shape[2] as usize,
                },
                Op::Add { act } => Kind::Add(*act),
                Op::Concat => Kind::Concat,
                Op::Flatten | Op::Reshape { .. } => Kind::Copy,
                Op::Softmax => Kind::Softmax,
            };
            let len = elems(node.output)?;
            let total = len.checked_mul(batch).ok_or(Error::Overflow("batch"))?;
            let output = Buf {
                off: planner.alloc(total)?,
                len,
            };
            values[node.output as usize] = Some(output);
            for &v in &node.inputs {
                let v = v as usize;
                if last_use[v] == i && !keep[v] {
                    if let Some(b) = values[v] {
                        planner.release(b.off, b.len * batch);
                        last_use[v] = usize::MAX - 1;
                    }
                }
            }
            steps.push(Step {
                kind,
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
        let planned = [
            planner.top,
            scratch_len,
            ws_len.saturating_mul(threads),
            params.len(),
        ]
        .iter()
        .try_fold(0usize, |a, &b| a.checked_add(b))
        .ok_or(Error::Overflow("planned buffers"))?;
        if planned > MAX_PLANNED_FLOATS {
            return Err(Error::TooLarge {
                what: "planned buffers (f32 elements)",
                size: planned as u64,
                limit: MAX_PLANNED_FLOATS as u64,
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
            pool: Pool::new(threads),
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
        self.steps
            .iter()
            .map(|s| match &s.kind {
                Kind::Linear { dense, .. } | Kind::Conv { dense, .. } => dense.is_some(),
                _ => false,
            })
            .collect()
    }

    /// Time spent in each node (graph order), summed over the runs since profiling was switched on.
    #[cfg(feature = "std")]
    pub fn node_times(&self) -> Option<&[std::time::Duration]> {
        self.times.as_deref()
    }

    fn execute(&mut self) {
        let n = self.batch;
        let pool = &self.pool;
        let ws_len = self.ws_len;
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
            let post_base = out.off + out.len * n;
            let input = |b: Buf| -> &[f32] {
                if b.off < out.off {
                    &pre[b.off..b.off + b.len * n]
                } else {
                    &post[b.off - post_base..b.off - post_base + b.len * n]
                }
            };
            let params = &self.params;
            let prange = |r: Range| &params[r.off..r.off + r.len];
            match &step.kind {
                Kind::Linear {
                    weight,
                    dense,
                    bias,
                    act,
                    inp,
                    out: outf,
                } => {
                    let x = input(step.inputs[0]);
                    let bias = bias.map(prange);
                    let wv = match dense {
                        Some(r) => TensorView::Dense(Elems::F32(prange(*r))),
                        None => self.model.tensor(*weight),
                    };
                    match wv {
                        TensorView::Dense(w) => {
                            if n == 1 {
                                par_gemv(pool, w, *inp, *outf, x, bias, *act, y);
                            } else {
                                let a = MatRef::row_major(Elems::F32(x), n, *inp);
                                let bm = MatRef::row_major(w, *outf, *inp).t();
                                let bias = bias.map_or(Bias::None, Bias::Col);
                                par_gemm(
                                    pool,
                                    a,
                                    bm,
                                    y,
                                    *outf,
                                    bias,
                                    *act,
                                    &mut self.gemm_ws,
                                    ws_len,
                                );
                            }
                        }
                        TensorView::Csr(w) if n == 1 => par_spmv(pool, &w, x, bias, *act, y),
                        // Planning expands blocked weights unless the batch is 1.
                        TensorView::BlockCsr(w) => kernels::bspmv(&w, x, bias, *act, y),
                        TensorView::Csr(w) => {
                            // One sparse × dense product for the whole batch (the weights are
                            // read once, not once per example): examples become columns.
                            let (xt, yt) = self.scratch[..(inp + outf) * n].split_at_mut(inp * n);
                            for (e, xe) in x.chunks_exact(*inp).enumerate() {
                                for (i, &v) in xe.iter().enumerate() {
                                    xt[i * n + e] = v;
                                }
                            }
                            par_spmm(pool, &w, 0..*outf, xt, n, bias, *act, yt);
                            for (e, ye) in y.chunks_exact_mut(*outf).enumerate() {
                                for (o, v) in ye.iter_mut().enumerate() {
                                    *v = yt[o * n + e];
                                }
                            }
                        }
                    }
                }
                Kind::Conv {
                    weight,
                    dense,
                    bias,
                    act,
                    geom: gm,
                    groups,
                    out_c,
                    depthwise,
                    direct,
                } => {
                    let x = input(step.inputs[0]);
                    let bias = bias.map(prange);
                    let wv = match dense {
                        Some(r) => TensorView::Dense(Elems::F32(prange(*r))),
                        None => self.model.tensor(*weight),
                    };
                    let (in_len, out_len) = (step.inputs[0].len, out.len);
                    let p = gm.oh * gm.ow;
                    let cpg = gm.c / groups;
                    let opg = out_c / groups;
                    let k = cpg * gm.kh * gm.kw;
                    for e in 0..n {
                        let xe = &x[e * in_len..(e + 1) * in_len];
                        let ye = &mut y[e * out_len..(e + 1) * out_len];
                        match wv {
                            TensorView::Dense(w) if *depthwise => {
                                par_depthwise(pool, gm, xe, w, bias, *act, ye);
                            }
                            _ => {
                                for gi in 0..*groups {
                                    let cols: &[f32] = if *direct {
                                        &xe[gi * cpg * p..(gi + 1) * cpg * p]
                                    } else {
                                        let s = &mut self.scratch[..k * p];
                                        kernels::im2col(gm, xe, gi * cpg, cpg, s);
                                        s
                                    };
                                    let yg = &mut ye[gi * opg * p..(gi + 1) * opg * p];
                                    let bg = bias.map(|b| &b[gi * opg..(gi + 1) * opg]);
                                    match wv {
                                        TensorView::Dense(w) => {
                                            let wg = slice_elems(w, gi * opg * k);
                                            let a = MatRef::row_major(wg, opg, k);
                                            let bm = MatRef::row_major(Elems::F32(cols), k, p);
                                            par_gemm(
                                                pool,
                                                a,
                                                bm,
                                                yg,
                                                p,
                                                bg.map_or(Bias::None, Bias::Row),
                                                *act,
                                                &mut self.gemm_ws,
                                                ws_len,
                                            );
                                        }
                                        TensorView::BlockCsr(_) => unreachable!(
                                            "planning expands blocked convolution weights"
                                        ),
                                        TensorView::Csr(w) => par_spmm(
                                            pool,
                                            &w,
                                            gi * opg..(gi + 1) * opg,
                                            cols,
                                            p,
                                            bias,
                                            *act,
                                            yg,
                                        ),
                                    }
                                }
                            }
                        }
                    }
                }
                Kind::ChannelAffine { scale, shift, c } => {
                    let x = input(step.inputs[0]);
                    let (s, t) = (prange(*scale), prange(*shift));
                    // `max(1)`: a zero-sized value (c == 0 or an empty map) has nothing to do,
                    // but `chunks` needs a non-zero size.
                    let hw = (out.len / (*c).max(1)).max(1);
                    for (ch, (yc, xc)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                        let j = ch % c;
                        for (yv, xv) in yc.iter_mut().zip(xc) {
                            *yv = xv * s[j] + t[j];
                        }
                    }
                }
                Kind::Act(a) => {
                    y.copy_from_slice(input(step.inputs[0]));
                    apply_act(*a, y);
                }
                Kind::MaxPool { g } => {
                    kernels::maxpool2d(g, input(step.inputs[0]), y, n * g.c);
                }
                Kind::AvgPool {
                    g,
                    count_include_pad,
                } => {
                    let x = input(step.inputs[0]);
                    kernels::avgpool2d(g, x, y, n * g.c, *count_include_pad);
                }
                Kind::GlobalAvgPool { hw } => {
                    let x = input(step.inputs[0]);
                    let inv = 1.0 / *hw as f32;
                    for (yv, xc) in y.iter_mut().zip(x.chunks(*hw)) {
                        *yv = xc.iter().sum::<f32>() * inv;
                    }
                }
                Kind::Add(a) => {
                    let (x0, x1) = (input(step.inputs[0]), input(step.inputs[1]));
                    for ((yv, a0), a1) in y.iter_mut().zip(x0).zip(x1) {
                        *yv = act_scalar(*a, a0 + a1);
                    }
                }
                Kind::Concat => {
                    let mut at = 0;
                    for e in 0..n {
                        for &b in &step.inputs {
                            let x = input(b);
                            y[at..at + b.len].copy_from_slice(&x[e * b.len..(e + 1) * b.len]);
                            at += b.len;
                        }
                    }
                }
                Kind::Copy => y.copy_from_slice(input(step.inputs[0])),
                Kind::Softmax => {
                    let x = input(step.inputs[0]);
                    let n = out.len.max(1); // zero-sized vectors: nothing to do
                    for (yc, xc) in y.chunks_mut(n).zip(x.chunks(n)) {
                        let m = xc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut s = 0.0;
                        for (yv, xv) in yc.iter_mut().zip(xc) {
                            *yv = libm::expf(xv - m);
                            s += *yv;
                        }
                        yc.iter_mut().for_each(|v| *v /= s);
                    }
                }
            }
            #[cfg(feature = "std")]
            if let (Some(t0), Some(times)) = (t0, self.times.as_mut()) {
                times[si] += t0.elapsed();
            }
        }
    }
}

/// Below this many multiply-adds an operation runs on one thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// The part of `0..len` that part `part` of `parts` handles, in multiples of `align`.
fn part_range(len: usize, parts: usize, align: usize, part: usize) -> (usize, usize) {
    let step = len.div_ceil(parts).div_ceil(align) * align;
    let r0 = (part * step).min(len);
    (r0, (r0 + step).min(len))
}

/// A mutable base pointer handed to the pool's parts, each of which touches a disjoint range.
#[derive(Clone, Copy)]
struct Parts(*mut f32);

// SAFETY: every user derives disjoint ranges per part from `part_range` (see the call sites).
unsafe impl Sync for Parts {}

impl Parts {
    /// # Safety
    /// `start..start + len` lies inside the allocation and no other part uses it concurrently.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { core::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

fn slice_elems(e: Elems<'_>, from: usize) -> Elems<'_> {
    match e {
        Elems::F32(v) => Elems::F32(&v[from..]),
        Elems::F16(v) => Elems::F16(&v[from..]),
    }
}

/// [`kernels::gemm`], with the rows of `a` (and `c`) split across the pool when it pays.
#[allow(clippy::too_many_arguments)]
fn par_gemm(
    pool: &Pool,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    bias: Bias<'_>,
    act: Activation,
    ws: &mut [f32],
    ws_len: usize,
) {
    let parts = pool.threads();
    if parts == 1 || a.rows < 16 || a.rows * a.cols * b.cols < PAR_MIN_MACS {
        kernels::gemm(a, b, c, ldc, bias, act, &mut ws[..ws_len]);
        return;
    }
    let (c_len, cp, wp) = (c.len(), Parts(c.as_mut_ptr()), Parts(ws.as_mut_ptr()));
    pool.run(&|part| {
        let (r0, r1) = part_range(a.rows, parts, 8, part);
        if r0 == r1 {
            return;
        }
        let end = if r1 == a.rows { c_len } else { r1 * ldc };
        // SAFETY: parts own disjoint row ranges, so `r0 * ldc..end` are disjoint ranges of `c`
        // (inside it: `end <= c_len`), and each part has its own `ws_len` block of the
        // workspace, which holds `threads * ws_len` floats.
        let (cc, w) = unsafe {
            (
                cp.slice(r0 * ldc, end - r0 * ldc),
                wp.slice(part * ws_len, ws_len),
            )
        };
        let sub = MatRef {
            data: slice_elems(a.data, r0 * a.rs),
            rows: r1 - r0,
            ..a
        };
        let bias = match bias {
            Bias::Row(v) => Bias::Row(&v[r0..r1]),
            other => other,
        };
        kernels::gemm(sub, b, cc, ldc, bias, act, w);
    });
}

/// [`kernels::gemv`] over a row-major `m × k` matrix, rows split across the pool when it pays.
#[allow(clippy::too_many_arguments)]
fn par_gemv(
    pool: &Pool,
    w: Elems<'_>,
    k: usize,
    m: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    if parts == 1 || m < 32 || m * k < PAR_MIN_MACS {
        kernels::gemv(w, k, m, k, x, bias, act, y);
        return;
    }
    let yp = Parts(y.as_mut_ptr());
    pool.run(&|part| {
        let (r0, r1) = part_range(m, parts, 8, part);
        if r0 == r1 {
            return;
        }
        // SAFETY: parts own disjoint row ranges `r0..r1` of `y`, which has `m >= r1` elements.
        let yy = unsafe { yp.slice(r0, r1 - r0) };
        kernels::gemv(
            slice_elems(w, r0 * k),
            k,
            r1 - r0,
            k,
            x,
            bias.map(|b| &b[r0..r1]),
            act,
            yy,
        );
    });
}

/// Rows `rows` of `w` split into `parts` ranges of about equal non-zero counts; part `part`'s.
fn nnz_range(
    w: &CsrView<'_>,
    rows: core::ops::Range<usize>,
    parts: usize,
    part: usize,
) -> (usize, usize) {
    let rp = w.row_ptr();
    let (n0, n1) = (rp[rows.start] as usize, rp[rows.end] as usize);
    let at = |q: usize| {
        let target = n0 + (n1 - n0) * q / parts;
        let i = rp[rows.start..=rows.end].partition_point(|&v| (v as usize) < target);
        (rows.start + i).min(rows.end)
    };
    let r0 = if part == 0 { rows.start } else { at(part) };
    let r1 = if part + 1 == parts {
        rows.end
    } else {
        at(part + 1)
    };
    (r0, r1.max(r0))
}

/// [`kernels::spmv`] with rows split across the pool by non-zeros when it pays.
fn par_spmv(
    pool: &Pool,
    w: &CsrView<'_>,
    x: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    if parts == 1 || w.rows() < 32 || w.nnz() < PAR_MIN_MACS {
        kernels::spmv(w, x, bias, act, y);
        return;
    }
    let ker = kernels::spmv_kernel(w.values().dtype(), w.col_idx().width());
    let yp = Parts(y.as_mut_ptr());
    pool.run(&|part| {
        let (r0, r1) = nnz_range(w, 0..w.rows(), parts, part);
        if r0 == r1 {
            return;
        }
        // SAFETY: parts own disjoint row ranges `r0..r1` of `y`, which has `w.rows() >= r1`
        // elements.
        let yy = unsafe { yp.slice(r0, r1 - r0) };
        ker.run(w, r0..r1, x, bias, act, yy);
    });
}

/// [`kernels::spmm`] over rows `rows` of `w` (output `y`: `rows.len() × p`) with the rows split
/// across the pool by non-zeros when it pays.
#[allow(clippy::too_many_arguments)]
fn par_spmm(
    pool: &Pool,
    w: &CsrView<'_>,
    rows: core::ops::Range<usize>,
    b: &[f32],
    p: usize,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    let nnz = (w.row_ptr()[rows.end] - w.row_ptr()[rows.start]) as usize;
    if parts == 1 || rows.len() < 16 || nnz * p < PAR_MIN_MACS {
        kernels::spmm(w, rows, b, p, bias, act, y);
        return;
    }
    let ker = kernels::spmm_kernel(w.values().dtype(), w.col_idx().width());
    let (g0, yp) = (rows.start, Parts(y.as_mut_ptr()));
    pool.run(&|part| {
        let (r0, r1) = nnz_range(w, rows.clone(), parts, part);
        if r0 == r1 {
            return;
        }
        // SAFETY: parts own disjoint row ranges, so `(r0 - g0) * p..(r1 - g0) * p` are disjoint
        // ranges of `y`, which holds `rows.len() * p` elements.
        let yy = unsafe { yp.slice((r0 - g0) * p, (r1 - r0) * p) };
        ker.run(w, r0..r1, b, p, bias, act, yy);
    });
}

/// [`kernels::depthwise_conv2d`] with channels split across the pool when it pays.
fn par_depthwise(
    pool: &Pool,
    g: &ConvGeom,
    x: &[f32],
    w: Elems<'_>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let parts = pool.threads();
    if parts == 1 || g.c < 2 || g.c * g.oh * g.ow * g.kh * g.kw < PAR_MIN_MACS {
        kernels::depthwise_conv2d(g, x, w, bias, act, y);
        return;
    }
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let yp = Parts(y.as_mut_ptr());
    pool.run(&|part| {
        let (c0, c1) = part_range(g.c, parts, 1, part);
        if c0 == c1 {
            return;
        }
        // SAFETY: parts own disjoint channel ranges, i.e. disjoint planes of `y` (`c * oh * ow`
        // elements).
        let yy = unsafe { yp.slice(c0 * plane_out, (c1 - c0) * plane_out) };
        let gg = ConvGeom { c: c1 - c0, ..*g };
        kernels::depthwise_conv2d(
            &gg,
            &x[c0 * plane_in..c1 * plane_in],
            slice_elems(w, c0 * taps),
            bias.map(|b| &b[c0..c1]),
            act,
            yy,
        );
    });
}
