//! K-FAC statistics against independent oracles (nap-algorithm.md §5). Run in release.
#![allow(clippy::needless_range_loop)] // index loops mirror the formulas they check

use candle_core::{DType, Device, Tensor, Var};
use nap::data::Dataset;
use nap::ir::{GraphBuilder, HostModel, HostTensor};
use nap::kfac::{collect, Fisher, StatsConfig};
use nap::{archs, reference};
use nap_runtime::format::{Activation, Conv2d, Linear, Metadata, Op};
use rand::{Rng, SeedableRng};

fn dataset(shape: [usize; 3], n: usize, classes: u8, seed: u64) -> Dataset {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let per: usize = shape.iter().product();
    Dataset {
        images: (0..n * per).map(|_| r.gen_range(-1.0..1.0)).collect(),
        labels: (0..n).map(|_| r.gen_range(0..classes) as u32).collect(),
        n,
        shape,
    }
}

fn empirical(batch: usize) -> StatsConfig {
    StatsConfig {
        fisher: Fisher::Empirical,
        batch,
        ..Default::default()
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
        "{what}: {a} vs {b}"
    );
}

/// One Linear layer, one example: A ⊗ G is exactly the per-example Fisher vec(∇W̄) vec(∇W̄)ᵀ.
#[test]
fn single_linear_layer_batch_of_one_is_the_exact_fisher() {
    let m = archs::random("mlp-5-3", 1).unwrap();
    // A vector input is presented as [5, 1, 1] examples.
    let d = dataset([5, 1, 1], 1, 3, 2);
    let f = collect_flat(&m, &d);
    // The gradient of the example's loss with respect to W and b, from candle's backward on Vars.
    let dev = Device::Cpu;
    let vars: Vec<Var> = reference::params(&m, &dev)
        .unwrap()
        .into_iter()
        .map(|t| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let x = Tensor::from_slice(&d.images, (1, 5), &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let logits = reference::forward(&m.graph, &ts, &x).unwrap();
    let y = Tensor::from_slice(&[d.labels[0]], 1, &dev).unwrap();
    let grads = candle_nn::loss::cross_entropy(&logits, &y)
        .unwrap()
        .backward()
        .unwrap();
    let gw = grads.get(&ts[0]).unwrap().to_vec2::<f64>().unwrap();
    let gb = grads.get(&ts[1]).unwrap().to_vec1::<f64>().unwrap();
    let grad = |i: usize, j: usize| if j < 5 { gw[i][j] } else { gb[i] };
    let l = &f[0];
    assert_eq!((l.a_dim, l.g_dim), (6, 3));
    for i in 0..3 {
        for j in 0..6 {
            for i2 in 0..3 {
                for j2 in 0..6 {
                    let kron = l.a[j * 6 + j2] * l.g[i * 3 + i2];
                    close(kron, grad(i, j) * grad(i2, j2), "A⊗G vs per-example Fisher");
                }
            }
        }
    }
}

fn collect_flat(m: &HostModel, d: &Dataset) -> Vec<nap::kfac::LayerFactors> {
    collect(m, d, &empirical(d.n), &Device::Cpu).unwrap()
}

/// A conv layer's factors equal a direct computation over explicit patches (KFC expand), with
/// G from the analytic gradient of cross-entropy through the following Linear layer.
#[test]
fn conv_statistics_equal_explicit_patches() {
    let (c, h, co, k, stride, pad, classes) =
        (2usize, 5usize, 3usize, 3usize, 2usize, 1usize, 4usize);
    let oh = (h + 2 * pad - k) / stride + 1;
    let t = oh * oh;
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    let mut rand_t = |name: &str, shape: &[u32]| HostTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: (0..shape.iter().product::<u32>())
            .map(|_| r.gen_range(-0.5..0.5))
            .collect(),
    };
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[c as u32, h as u32, h as u32]);
    let w1 = b.tensor(rand_t(
        "conv.weight",
        &[co as u32, c as u32, k as u32, k as u32],
    ));
    let b1 = b.tensor(rand_t("conv.bias", &[co as u32]));
    let s = b
        .node(
            "conv",
            Op::Conv2d(Conv2d {
                weight: w1,
                bias: Some(b1),
                stride: [stride as u32; 2],
                padding: [pad as u32; 2],
                dilation: [1, 1],
                groups: 1,
                act: Activation::None,
            }),
            &[x],
        )
        .unwrap();
    let f = b.node("flatten", Op::Flatten, &[s]).unwrap();
    let w2 = b.tensor(rand_t("fc.weight", &[classes as u32, (co * t) as u32]));
    let b2 = b.tensor(rand_t("fc.bias", &[classes as u32]));
    let y = b
        .node(
            "fc",
            Op::Linear(Linear {
                weight: w2,
                bias: Some(b2),
                act: Activation::None,
            }),
            &[f],
        )
        .unwrap();
    let m = b.finish(&[y], Metadata::default()).unwrap();
    let n = 3;
    let d = dataset([c, h, h], n, classes as u8, 6);
    let factors = collect(&m, &d, &empirical(2), &Device::Cpu).unwrap();
    let conv = &factors[0];
    let kk = c * k * k + 1;
    assert_eq!((conv.a_dim, conv.g_dim, conv.positions), (kk, co, t));

    let (wc, bc, wf, bf) = (
        &m.tensors[0].data,
        &m.tensors[1].data,
        &m.tensors[2].data,
        &m.tensors[3].data,
    );
    let mut a_exp = vec![0f64; kk * kk];
    let mut g_exp = vec![0f64; co * co];
    for e in 0..n {
        let img = &d.images[e * c * h * h..(e + 1) * c * h * h];
        let px = |ch: usize, iy: isize, ix: isize| -> f64 {
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= h as isize {
                0.0
            } else {
                img[ch * h * h + iy as usize * h + ix as usize] as f64
            }
        };
        let mut patches = Vec::new();
        for oy in 0..oh {
            for ox in 0..oh {
                let mut p = Vec::with_capacity(kk);
                for ch in 0..c {
                    for ki in 0..k {
                        for kj in 0..k {
                            p.push(px(
                                ch,
                                (oy * stride + ki) as isize - pad as isize,
                                (ox * stride + kj) as isize - pad as isize,
                            ));
                        }
                    }
                }
                p.push(1.0);
                patches.push(p);
            }
        }
        for p in &patches {
            for i in 0..kk {
                for j in 0..kk {
                    a_exp[i * kk + j] += p[i] * p[j] / (t * n) as f64;
                }
            }
        }
        // s[o][t] = conv output; logits = Wf · flatten(s) + bf; g = Wfᵀ (softmax − onehot).
        let mut sv = vec![0f64; co * t];
        for o in 0..co {
            for (ti, p) in patches.iter().enumerate() {
                let mut acc = bc[o] as f64;
                for q in 0..kk - 1 {
                    acc += wc[o * (kk - 1) + q] as f64 * p[q];
                }
                sv[o * t + ti] = acc;
            }
        }
        let logits: Vec<f64> = (0..classes)
            .map(|cl| {
                bf[cl] as f64
                    + (0..co * t)
                        .map(|q| wf[cl * co * t + q] as f64 * sv[q])
                        .sum::<f64>()
            })
            .collect();
        let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|v| (v - mx).exp()).sum();
        let delta: Vec<f64> = (0..classes)
            .map(|cl| {
                (logits[cl] - mx).exp() / z - if cl == d.labels[e] as usize { 1.0 } else { 0.0 }
            })
            .collect();
        for ti in 0..t {
            let gv: Vec<f64> = (0..co)
                .map(|o| {
                    (0..classes)
                        .map(|cl| wf[cl * co * t + o * t + ti] as f64 * delta[cl])
                        .sum()
                })
                .collect();
            for i in 0..co {
                for j in 0..co {
                    g_exp[i * co + j] += gv[i] * gv[j] / n as f64;
                }
            }
        }
    }
    for (q, (a, b)) in conv.a.iter().zip(&a_exp).enumerate() {
        close(*a, *b, &format!("A[{q}]"));
    }
    for (q, (a, b)) in conv.g.iter().zip(&g_exp).enumerate() {
        close(*a, *b, &format!("G[{q}]"));
    }
}

/// True-Fisher labels are sampled from the model: the factors differ from the empirical ones but
/// are reproducible for a seed, symmetric and positive on the diagonal.
#[test]
fn true_fisher_is_reproducible_and_symmetric() {
    let m = archs::random("lenet5-caffe", 3).unwrap();
    let d = dataset([1, 28, 28], 20, 10, 7);
    let cfg = StatsConfig {
        batch: 8,
        ..Default::default()
    };
    let a = collect(&m, &d, &cfg, &Device::Cpu).unwrap();
    let b = collect(&m, &d, &cfg, &Device::Cpu).unwrap();
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.a, y.a);
        assert_eq!(x.g, y.g);
        for (dim, mat) in [(x.a_dim, &x.a), (x.g_dim, &x.g)] {
            for i in 0..dim {
                assert!(mat[i * dim + i] >= 0.0);
                for j in 0..dim {
                    close(mat[i * dim + j], mat[j * dim + i], "symmetry");
                }
            }
        }
        assert_eq!(x.examples, 20);
    }
}

/// A 4-4-4-4 deep linear network (three Linear layers with bias, no activations) and 32
/// random inputs.
fn deep_linear() -> (HostModel, Dataset, [usize; 4]) {
    // Equal widths: a narrowing layer makes later A singular, a widening one makes G singular.
    let dims = [4usize, 4, 4, 4];
    let mut b = GraphBuilder::new();
    let mut x = b.input("x", &[dims[0] as u32]);
    let mut state = 12345u64;
    let mut rnd = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for l in 0..3 {
        let (i, o) = (dims[l], dims[l + 1]);
        let w = b.tensor(HostTensor {
            name: format!("l{l}.weight"),
            shape: vec![o as u32, i as u32],
            data: (0..o * i).map(|_| rnd()).collect(),
        });
        let bias = b.tensor(HostTensor {
            name: format!("l{l}.bias"),
            shape: vec![o as u32],
            data: (0..o).map(|_| rnd()).collect(),
        });
        x = b
            .node(
                &format!("l{l}"),
                Op::Linear(Linear {
                    weight: w,
                    bias: Some(bias),
                    act: Activation::None,
                }),
                &[x],
            )
            .unwrap();
    }
    let m = b.finish(&[x], Metadata::default()).unwrap();
    let n = 32;
    let d = Dataset {
        images: (0..n * dims[0]).map(|_| rnd()).collect(),
        labels: (0..n).map(|i| (i % dims[3]) as u32).collect(),
        n,
        shape: [dims[0], 1, 1],
    };
    (m, d, dims)
}

/// Mean `½‖f(x) − t‖²` of a deep linear net in f64, from its weights and biases.
fn deep_linear_loss(
    params: &[(Vec<f64>, Vec<f64>)],
    dims: &[usize; 4],
    d: &Dataset,
    targets: &[Vec<f64>],
) -> f64 {
    let mut total = 0.0;
    for e in 0..d.n {
        let f = deep_linear_forward(params, dims, &d.images[e * dims[0]..(e + 1) * dims[0]]);
        total += f
            .iter()
            .zip(&targets[e])
            .map(|(v, t)| 0.5 * (v - t) * (v - t))
            .sum::<f64>();
    }
    total / d.n as f64
}

fn deep_linear_forward(params: &[(Vec<f64>, Vec<f64>)], dims: &[usize; 4], x: &[f32]) -> Vec<f64> {
    let mut a: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (l, (w, b)) in params.iter().enumerate() {
        let (i, o) = (dims[l], dims[l + 1]);
        a = (0..o)
            .map(|r| (0..i).map(|c| w[r * i + c] * a[c]).sum::<f64>() + b[r])
            .collect();
    }
    a
}

fn f64_params(m: &HostModel) -> Vec<(Vec<f64>, Vec<f64>)> {
    (0..3)
        .map(|l| {
            let cast = |t: &HostTensor| t.data.iter().map(|&v| v as f64).collect();
            (cast(&m.tensors[2 * l]), cast(&m.tensors[2 * l + 1]))
        })
        .collect()
}

/// At a minimum (targets = the network's own outputs) the predicted loss increase of removing
/// one weight with the OBS update is the measured one; with more weights removed at once the
/// independent update ignores their interactions and the prediction only bounds the order of
/// magnitude (`nap-algorithm.md` §5, oracle 4).
#[test]
fn predicted_loss_increase_matches_measured_for_a_tiny_step() {
    use nap::kfac::Loss;
    use nap::prune::{prune_step, Criterion, Masks, ObsUpdate, StepConfig};
    let (m, d, dims) = deep_linear();
    let targets: Vec<Vec<f64>> = (0..d.n)
        .map(|e| {
            deep_linear_forward(
                &f64_params(&m),
                &dims,
                &d.images[e * dims[0]..(e + 1) * dims[0]],
            )
        })
        .collect();
    let cfg = StatsConfig {
        fisher: Fisher::Exact,
        loss: Loss::Mse,
        ..Default::default()
    };
    let factors = collect(&m, &d, &cfg, &Device::Cpu).unwrap();
    let total = Masks::from_model(&m).alive();
    let mut ratios = Vec::new();
    for (k, update) in [
        (1usize, ObsUpdate::Independent),
        (1, ObsUpdate::Row),
        (4, ObsUpdate::Row),
        (12, ObsUpdate::Row),
        (12, ObsUpdate::Independent),
    ] {
        let mut p = m.clone();
        let mut masks = Masks::from_model(&p);
        let rep = prune_step(
            &mut p,
            &mut masks,
            &factors,
            &StepConfig {
                criterion: Criterion::Nap,
                fraction: k as f64 / total as f64,
                layer_cap: 1.0,
                update,
                damping: 1e-12,
                block_rows: 1,
            },
        )
        .unwrap();
        assert_eq!(rep.removed.iter().sum::<usize>(), k);
        let measured = deep_linear_loss(&f64_params(&p), &dims, &d, &targets);
        ratios.push((k, update, rep.predicted_loss_increase, measured));
    }
    for &(_, update, pred, meas) in &ratios[..2] {
        assert!(meas > 0.0 && pred > 0.0);
        // f32 weights after the update limit the agreement.
        assert!(
            (pred / meas - 1.0).abs() < 1e-3,
            "one weight, {update:?}: predicted {pred} vs measured {meas}"
        );
    }
    let (_, _, pred4, meas4) = ratios[2];
    assert!(
        (pred4 / meas4 - 1.0).abs() < 1.0,
        "4 weights: predicted {pred4} vs measured {meas4}"
    );
    // Twelve weights across rows and layers interact strongly in this ill-conditioned net: the
    // sum of scores under-predicts, and the row-joint update loses far less than the
    // independent one.
    let (row12, ind12) = (ratios[3].3, ratios[4].3);
    assert!(row12 < ind12, "row {row12} vs independent {ind12}");
}

/// A deep linear network with MSE: every layer's exact Hessian block equals `A ⊗ G` of K-FAC
/// "expand" with the exact Fisher, and OBS scores and updates from the K-FAC inverses equal
/// brute-force OBS on that Hessian (`nap-algorithm.md` §5, oracle 2).
#[test]
fn deep_linear_mse_kfac_is_exact() {
    use nap::curvature::{spd_inverse, Inverses};
    use nap::kfac::Loss;

    let (m, d, dims) = deep_linear();
    let cfg = StatsConfig {
        fisher: nap::kfac::Fisher::Exact,
        loss: Loss::Mse,
        batch: 7,
        ..Default::default()
    };
    let factors = collect(&m, &d, &cfg, &Device::Cpu).unwrap();
    // Independent forward in f64: loss of the mean ½‖f − onehot(y)‖² with layer `layer`'s
    // [W | b] replaced by `wb`.
    let params = f64_params(&m);
    let onehot: Vec<Vec<f64>> = d
        .labels
        .iter()
        .map(|&y| {
            (0..dims[3])
                .map(|c| if c == y as usize { 1.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let loss = |layer: usize, wb: &[f64]| -> f64 {
        let cols = dims[layer] + 1;
        let mut p = params.clone();
        p[layer] = (
            wb.chunks(cols)
                .flat_map(|r| r[..cols - 1].to_vec())
                .collect(),
            wb.chunks(cols).map(|r| r[cols - 1]).collect(),
        );
        deep_linear_loss(&p, &dims, &d, &onehot)
    };
    for (l, f) in factors.iter().enumerate() {
        let (i, o) = (dims[l], dims[l + 1]);
        let cols = i + 1;
        let p = o * cols;
        let w0: Vec<f64> = (0..p)
            .map(|k| {
                let (r, c) = (k / cols, k % cols);
                if c < i {
                    params[l].0[r * i + c]
                } else {
                    params[l].1[r]
                }
            })
            .collect();
        // The loss is exactly quadratic in one layer's weights: second differences are exact.
        let l0 = loss(l, &w0);
        let bump = |ks: &[usize]| {
            let mut w = w0.clone();
            for &k in ks {
                w[k] += 1.0;
            }
            loss(l, &w)
        };
        let single: Vec<f64> = (0..p).map(|k| bump(&[k])).collect();
        let mut h = vec![0.0; p * p];
        let mut hmax = 0f64;
        for a in 0..p {
            for b in 0..p {
                h[a * p + b] = if a == b {
                    let mut w = w0.clone();
                    w[a] += 2.0;
                    loss(l, &w) - 2.0 * single[a] + l0
                } else {
                    bump(&[a, b]) - single[a] - single[b] + l0
                };
                hmax = hmax.max(h[a * p + b].abs());
            }
        }
        for a in 0..p {
            for b in 0..p {
                let (ra, ca, rb, cb) = (a / cols, a % cols, b / cols, b % cols);
                let kfac = f.a[ca * f.a_dim + cb] * f.g[ra * f.g_dim + rb];
                assert!(
                    (kfac - h[a * p + b]).abs() <= 1e-9 * hmax,
                    "layer {l}: H[{a},{b}] = {} but A⊗G gives {kfac}",
                    h[a * p + b]
                );
            }
        }
        // OBS on the exact Hessian against the K-FAC inverses (negligible damping).
        let hinv =
            spd_inverse(&faer::Mat::from_fn(p, p, |a, b| h[a * p + b])).unwrap_or_else(|e| {
                panic!(
                    "layer {l}: {e}; G diag {:?} A diag {:?}",
                    (0..f.g_dim)
                        .map(|i| f.g[i * f.g_dim + i])
                        .collect::<Vec<_>>(),
                    (0..f.a_dim)
                        .map(|i| f.a[i * f.a_dim + i])
                        .collect::<Vec<_>>()
                )
            });
        let inv = Inverses::new(f, 1e-13).unwrap();
        for q in [0, p / 2, p - 1] {
            let (r, c) = (q / cols, q % cols);
            let brute = 0.5 * w0[q] * w0[q] / hinv[(q, q)];
            let score = inv.obs_score(w0[q], r, c);
            assert!(
                (score - brute).abs() <= 1e-6 * brute.abs(),
                "layer {l}, weight {q}: score {score} vs {brute}"
            );
            let mut w = w0.clone();
            let mut remove = vec![false; p];
            remove[q] = true;
            inv.obs_update(&mut w, &remove);
            for k in 0..p {
                let want = if k == q {
                    0.0
                } else {
                    w0[k] - w0[q] / hinv[(q, q)] * hinv[(k, q)]
                };
                assert!(
                    (w[k] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "layer {l}, weight {q}: update of {k} is {} vs {want}",
                    w[k]
                );
            }
        }
    }
}

/// The exact Fisher of softmax regression: `G = E_n[diag(p_n) − p_n p_nᵀ]` from the logits, and
/// the sampled (true) Fisher converges to it.
#[test]
fn exact_fisher_of_softmax_regression() {
    let m = archs::random("mlp-5-3", 4).unwrap();
    let d = dataset([5, 1, 1], 40, 3, 5);
    let exact = StatsConfig {
        fisher: Fisher::Exact,
        batch: 16,
        ..Default::default()
    };
    let f = &collect(&m, &d, &exact, &Device::Cpu).unwrap()[0];
    let logits = reference::logits(&m, &d.images).unwrap();
    let mut want = [0f64; 9];
    for row in logits.chunks(3) {
        let p: Vec<f64> = nap::util::softmax(row).iter().map(|&v| v as f64).collect();
        for i in 0..3 {
            for j in 0..3 {
                want[i * 3 + j] += (if i == j { p[i] } else { 0.0 } - p[i] * p[j]) / 40.0;
            }
        }
    }
    for k in 0..9 {
        assert!(
            (f.g[k] - want[k]).abs() < 1e-6,
            "G[{k}] = {} vs {}",
            f.g[k],
            want[k]
        );
    }
    // Many sampled labels per example average to the same matrix.
    let many = Dataset {
        images: d.images.repeat(200),
        labels: d.labels.repeat(200),
        n: 8000,
        shape: d.shape,
    };
    let sampled = &collect(&m, &many, &StatsConfig::default(), &Device::Cpu).unwrap()[0];
    for k in 0..9 {
        assert!(
            (sampled.g[k] - want[k]).abs() < 0.1 * want[0].abs().max(want[4].abs()),
            "sampled G[{k}] = {} vs {}",
            sampled.g[k],
            want[k]
        );
    }
}

/// The Fisher variants issue 12 chose among, on softmax regression (G is then the output
/// curvature itself): labels from `softmax(z / T)` with the model's own loss, the top-k
/// estimator of the exact expectation, and label-smoothed empirical labels.
#[test]
fn issue12_fisher_temperature_top_classes_and_label_smoothing() {
    let c = 5;
    let m = archs::random("mlp-5-5", 4).unwrap();
    let d = dataset([5, 1, 1], 40, c as u8, 6);
    let logits = reference::logits(&m, &d.images).unwrap();
    let g_of = |cfg: StatsConfig, data: &Dataset| {
        collect(&m, data, &cfg, &Device::Cpu).unwrap()[0].g.clone()
    };
    let t = 2.0;
    let mut tempered = vec![0f64; c * c];
    let mut smoothed = vec![0f64; c * c];
    for (row, &y) in logits.chunks(c).zip(&d.labels) {
        let p: Vec<f64> = nap::util::softmax(row).iter().map(|&v| v as f64).collect();
        let scaled: Vec<f32> = row.iter().map(|v| v / t as f32).collect();
        let pt: Vec<f64> = nap::util::softmax(&scaled)
            .iter()
            .map(|&v| v as f64)
            .collect();
        for k in 0..c {
            let g: Vec<f64> = (0..c).map(|i| p[i] - (i == k) as u8 as f64).collect();
            for i in 0..c {
                for j in 0..c {
                    tempered[i * c + j] += pt[k] * g[i] * g[j] / 40.0;
                }
            }
        }
        let target: Vec<f64> = (0..c)
            .map(|i| 0.9 * (i == y as usize) as u8 as f64 + 0.1 / c as f64)
            .collect();
        for i in 0..c {
            for j in 0..c {
                smoothed[i * c + j] += (p[i] - target[i]) * (p[j] - target[j]) / 40.0;
            }
        }
    }
    let exact_t = g_of(
        StatsConfig {
            fisher: Fisher::Exact,
            temperature: t,
            batch: 16,
            ..Default::default()
        },
        &d,
    );
    let scale = tempered.iter().fold(0f64, |a, v| a.max(v.abs()));
    for k in 0..c * c {
        assert!((exact_t[k] - tempered[k]).abs() < 1e-6 * scale, "G[{k}]");
    }
    let ls = g_of(
        StatsConfig {
            fisher: Fisher::Empirical,
            label_smoothing: 0.1,
            batch: 16,
            ..Default::default()
        },
        &d,
    );
    for k in 0..c * c {
        assert!(
            (ls[k] - smoothed[k]).abs() < 1e-6 * scale,
            "smoothed G[{k}]"
        );
    }
    // Two passes (the top class exactly, one more drawn from the rest), and one Gaussian probe
    // per example (ε ~ N(0, Σ_c p_c (p − e_c)(p − e_c)ᵀ)), each average to the exact matrix
    // over many draws.
    let many = Dataset {
        images: d.images.repeat(300),
        labels: d.labels.repeat(300),
        n: 12_000,
        shape: d.shape,
    };
    for (name, top_classes, probes) in [("top-2", Some(2), None), ("probed", None, Some(1))] {
        let g = g_of(
            StatsConfig {
                fisher: Fisher::Exact,
                temperature: t,
                top_classes,
                probes,
                batch: 500,
                ..Default::default()
            },
            &many,
        );
        for k in 0..c * c {
            assert!(
                (g[k] - tempered[k]).abs() < 0.05 * scale,
                "{name} G[{k}] = {} vs {}",
                g[k],
                tempered[k]
            );
        }
    }
}
