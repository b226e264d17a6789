//! Dense kernels against `gemm` (0.19, `Parallelism::None`) and `matrixmultiply` (0.3), all
//! single-threaded, on shapes from the M1 (MNIST CNN) and M2 (MobileNetV2) models plus squares.
//! Every kernel of [`GEMM_KERNELS`] / [`GEMV_KERNELS`] available on this CPU is measured; GEMM
//! throughput is in FLOP (criterion prints it as elem/s), GEMV and the memory baseline in bytes
//! of weights streamed.

use std::hint::black_box;
use std::time::Duration;

mod common;

use common::{data, gemm_crate};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use nap_runtime::kernels::{
    channel_offsets, crop_rows, gemm_b, gemm_kernel, gemm_workspace, im2col, im2col_len,
    pack_a_panels, pad_image, winograd_weights, AOperand, Activation, BOperand, Bias, ConvGeom,
    Crop, Dtype, Elems, MatRef, PackedA, Pixels, WinoGeom, DEPTHWISE_KERNELS, GEMM_KERNELS,
    GEMV_KERNELS, OCGEMM_KERNELS, WINOGRAD_KERNELS,
};

/// `(name, m, n, k)`: `C[m × n] = A[m × k] · B[k × n]`, all row-major.
const GEMM_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("m1_conv2", 64, 196, 288),
    ("m1_conv3", 128, 49, 576),
    ("m1_fc_b64", 64, 256, 1152),
    ("m2_pw_144x24x3136", 144, 3136, 24),
    ("m2_pw_32x144x784", 32, 784, 144),
    ("m2_pw_192x32x784", 192, 784, 32),
    ("m2_pw_384x64x196", 384, 196, 64),
    ("m2_pw_960x160x49", 960, 49, 160),
    ("m2_pw_1280x320x49", 1280, 49, 320),
    ("square_256", 256, 256, 256),
    ("square_512", 512, 512, 512),
    ("square_1024", 1024, 1024, 1024),
];

/// `(name, rows m, columns k)` of the weight matrix.
const GEMV_SHAPES: &[(&str, usize, usize)] = &[
    ("1024x1024", 1024, 1024),
    ("4096x1024", 4096, 1024),
    ("m1_fc_256x1152", 256, 1152),
    ("dram_16384x4096", 16384, 4096),
];

/// Runs our dispatched kernel, `gemm` and `matrixmultiply` on one shape; `which` selects.
#[allow(clippy::too_many_arguments)]
fn run_gemm_impl(
    which: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    ws: &mut [f32],
) {
    match which {
        0 => {
            let am = MatRef::row_major(Elems::F32(a), m, k);
            let bm = MatRef::row_major(Elems::F32(b), k, n);
            nap_runtime::kernels::gemm(am, bm, out, n, Bias::None, Activation::None, ws);
        }
        1 => gemm_crate(m, n, k, a, b, out),
        // SAFETY: as above; strides are (row, column) in elements.
        _ => unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                out.as_mut_ptr(),
                n as isize,
                1,
            )
        },
    }
}

/// `NAP_BENCH_INTERLEAVED=1`: instead of criterion, time ours / gemm / matrixmultiply in
/// interleaved rounds and report the best round of each (robust on a shared, noisy machine).
fn interleaved() {
    println!("| case | ours GFLOP/s | gemm GFLOP/s | matrixmultiply GFLOP/s | ours / faster |");
    println!("|---|---:|---:|---:|---:|");
    for &(name, m, n, k) in GEMM_SHAPES {
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let mut out = vec![0f32; m * n];
        let mut ws = vec![0f32; gemm_workspace(m, n, k)];
        let flop = (2 * m * n * k) as f64;
        let reps = ((5e7 / flop) as usize).max(1);
        let mut best = [f64::INFINITY; 3];
        for _ in 0..60 {
            for (which, best) in best.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    run_gemm_impl(which, m, n, k, &a, &b, &mut out, &mut ws);
                    black_box(&out);
                }
                *best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
        }
        let g = best.map(|t| flop / t / 1e9);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2} |",
            g[0],
            g[1],
            g[2],
            g[0] / g[1].max(g[2])
        );
    }
}

fn bench_gemm(c: &mut Criterion) {
    if std::env::var_os("NAP_BENCH_INTERLEAVED").is_some() {
        interleaved();
        return;
    }
    for &(name, m, n, k) in GEMM_SHAPES {
        let mut g = c.benchmark_group(format!("gemm/{name}"));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.sample_size(10);
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let mut out = vec![0f32; m * n];
        let mut ws = vec![0f32; gemm_workspace(m, n, k)];
        for ker in GEMM_KERNELS.iter().filter(|k| k.isa.is_available()) {
            g.bench_function(BenchmarkId::from_parameter(ker.name), |bch| {
                bch.iter(|| {
                    let am = MatRef::row_major(Elems::F32(&a), m, k);
                    let bm = MatRef::row_major(Elems::F32(&b), k, n);
                    ker.run(am, bm, &mut out, n, Bias::None, Activation::None, &mut ws);
                    black_box(&out);
                })
            });
        }
        g.bench_function(BenchmarkId::from_parameter("gemm_crate"), |bch| {
            bch.iter(|| {
                gemm_crate(m, n, k, &a, &b, &mut out);
                black_box(&out);
            })
        });
        g.bench_function(BenchmarkId::from_parameter("matrixmultiply"), |bch| {
            bch.iter(|| {
                // SAFETY: as above; strides are (row, column) in elements.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                };
                black_box(&out);
            })
        });
        g.finish();
    }
}

/// `(name, in channels, out channels, height = width)`: 3×3, stride 1, padding 1: M1's three
/// convolutions, ResNet-18's first stage and a middle-sized one.
const CONV_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("m1_conv1", 1, 32, 28),
    ("m1_conv2", 32, 64, 14),
    ("m1_conv3", 64, 128, 7),
    ("resnet18_layer1", 64, 64, 56),
    ("c32_28x28", 32, 32, 28),
];

/// The dense 3×3 convolutions of M1 as the runtime runs them (implicit GEMM: padding, the GEMM
/// reading the padded image, cropping) and through im2col, against the GEMM alone on the same
/// `(out, pixels, in·9)` shape; throughput in FLOP of the convolution.
fn bench_conv(c: &mut Criterion) {
    for &(name, ci, co, hw) in CONV_SHAPES {
        let g = ConvGeom {
            c: ci,
            h: hw,
            w: hw,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
            dilation: [1, 1],
            oh: hw,
            ow: hw,
        };
        let (m, n, k) = (co, hw * hw, ci * 9);
        let mut grp = c.benchmark_group(format!("conv3x3/{name}"));
        grp.throughput(Throughput::Elements((2 * m * n * k) as u64));
        grp.sample_size(20);
        let x = data(ci * hw * hw, 5);
        let w = data(m * k, 6);
        let bias = data(m, 7);
        // The weights packed once, as a session does.
        let ker = gemm_kernel();
        let mut packed = vec![0f32; PackedA::len(m, k, ker.mr)];
        let pa = pack_a_panels(
            &MatRef::row_major(Elems::F32(&w), m, k),
            ker.mr,
            &mut packed,
        );
        let a = || AOperand::Packed(pa);
        let crops = ker.crops(k);
        let mut y = vec![0f32; m * n];
        let cols = g.implicit_cols();
        let mut ws = vec![0f32; gemm_workspace(m, cols.max(n), k)];
        let offs = g.implicit_offsets(ci);
        let mut scratch = vec![0f32; g.implicit_len(m).max(im2col_len(&g, ci))];
        grp.bench_function(BenchmarkId::from_parameter("implicit_gemm"), |bch| {
            bch.iter(|| {
                let (xpad, out) = scratch.split_at_mut(g.padded_len());
                pad_image(&g, &x, xpad);
                // As the runtime runs it: cropped while stored where the kernel can.
                let crop = crops.then_some(Crop {
                    wp: hw + 2,
                    ow: hw,
                    first: 0,
                });
                let b = BOperand::Rows {
                    data: xpad,
                    offs: &offs,
                    cols,
                    crop,
                };
                let (c, ldc) = if crops {
                    (&mut y[..], n)
                } else {
                    (&mut out[..], cols)
                };
                gemm_b(a(), b, c, ldc, Bias::Row(&bias), Activation::Relu, &mut ws);
                if !crops {
                    crop_rows(&g, m, out, &mut y);
                }
                black_box(&y);
            })
        });
        grp.bench_function(BenchmarkId::from_parameter("im2col_gemm"), |bch| {
            bch.iter(|| {
                im2col(&g, &x, 0, ci, &mut scratch);
                let b = MatRef::row_major(Elems::F32(&scratch), k, n);
                gemm_b(
                    a(),
                    BOperand::Mat(b),
                    &mut y,
                    n,
                    Bias::Row(&bias),
                    Activation::Relu,
                    &mut ws,
                );
                black_box(&y);
            })
        });
        for oc in OCGEMM_KERNELS.iter().filter(|k| k.isa.is_available()) {
            let mut opacked = vec![0f32; oc.packed_len(m, k)];
            let opa = pack_a_panels(
                &MatRef::row_major(Elems::F32(&w), m, k),
                oc.nr,
                &mut opacked,
            );
            let px = Pixels {
                oh: hw,
                ow: hw,
                wp: hw + 2,
            };
            grp.bench_function(BenchmarkId::new("channels_in_lanes", oc.name), |bch| {
                bch.iter(|| {
                    let xpad = &mut scratch[..g.padded_len()];
                    pad_image(&g, &x, xpad);
                    let b = Some(&bias[..]);
                    oc.run(opa, xpad, &offs, px, &mut y, n, b, Activation::Relu);
                    black_box(&y);
                })
            });
        }
        for tile in [2, 4] {
            let wg = WinoGeom::new(&g, m, tile).expect("a 3x3 stride-1 window");
            let mut u = vec![0f32; wg.weights_len()];
            winograd_weights(&wg, &w, &mut u);
            let mut wscratch = vec![0f32; wg.scratch_len(1, 1)];
            let mut wws = vec![0f32; wg.ws_len(1)];
            for wk in WINOGRAD_KERNELS.iter().filter(|k| k.isa.is_available()) {
                let id = BenchmarkId::new(format!("winograd_f{tile}"), wk.name);
                grp.bench_function(id, |bch| {
                    bch.iter(|| {
                        let b = Some(&bias[..]);
                        let (sc, ws) = (&mut wscratch, &mut wws);
                        wk.run(&wg, 1, &x, &u, b, Activation::Relu, &mut y, sc, ws);
                        black_box(&y);
                    })
                });
            }
        }
        let patches = data(k * n, 8);
        grp.bench_function(BenchmarkId::from_parameter("gemm_alone"), |bch| {
            bch.iter(|| {
                let b = MatRef::row_major(Elems::F32(&patches), k, n);
                gemm_b(
                    a(),
                    BOperand::Mat(b),
                    &mut y,
                    n,
                    Bias::Row(&bias),
                    Activation::Relu,
                    &mut ws,
                );
                black_box(&y);
            })
        });
        grp.finish();
    }
}

/// `(name, out, in, pixels)`: MobileNetV2's 1×1 convolutions.
const PW_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("m2_pw_16x32x12544", 16, 32, 12544),
    ("m2_pw_96x16x12544", 96, 16, 12544),
    ("m2_pw_24x96x3136", 24, 96, 3136),
    ("m2_pw_144x24x3136", 144, 24, 3136),
    ("m2_pw_24x144x3136", 24, 144, 3136),
    ("m2_pw_32x144x784", 32, 144, 784),
    ("m2_pw_192x32x784", 192, 32, 784),
    ("m2_pw_32x192x784", 32, 192, 784),
    ("m2_pw_384x64x196", 384, 64, 196),
    ("m2_pw_64x384x196", 64, 384, 196),
    ("m2_pw_96x576x196", 96, 576, 196),
    ("m2_pw_960x160x49", 960, 160, 49),
    ("m2_pw_160x960x49", 160, 960, 49),
    ("m2_pw_1280x320x49", 1280, 320, 49),
];

/// 1×1 convolutions as the runtime runs them with packed weights: the pixel-major GEMM kernels
/// reading the input in place against the channels-in-lanes kernels (each of this CPU's).
fn bench_pointwise(c: &mut Criterion) {
    for &(name, m, k, n) in PW_SHAPES {
        let mut grp = c.benchmark_group(format!("conv1x1/{name}"));
        grp.throughput(Throughput::Elements((2 * m * n * k) as u64));
        grp.sample_size(20);
        let x = data(k * n, 5);
        let w = data(m * k, 6);
        let bias = data(m, 7);
        let a = MatRef::row_major(Elems::F32(&w), m, k);
        let mut y = vec![0f32; m * n];
        let mut ws = vec![0f32; gemm_workspace(m, n, k)];
        for ker in GEMM_KERNELS.iter().filter(|k| k.isa.is_available()) {
            let mut packed = vec![0f32; PackedA::len(m, k, ker.mr)];
            let pa = pack_a_panels(&a, ker.mr, &mut packed);
            grp.bench_function(BenchmarkId::new("gemm", ker.name), |bch| {
                bch.iter(|| {
                    let b = BOperand::Mat(MatRef::row_major(Elems::F32(&x), k, n));
                    let (bias, act) = (Bias::Row(&bias), Activation::Relu6);
                    ker.run_b(AOperand::Packed(pa), b, &mut y, n, bias, act, &mut ws);
                    black_box(&y);
                })
            });
        }
        let offs = channel_offsets(k, n);
        let px = Pixels {
            oh: 1,
            ow: n,
            wp: n,
        };
        for oc in OCGEMM_KERNELS.iter().filter(|k| k.isa.is_available()) {
            let mut opacked = vec![0f32; oc.packed_len(m, k)];
            let opa = pack_a_panels(&a, oc.nr, &mut opacked);
            grp.bench_function(BenchmarkId::new("channels_in_lanes", oc.name), |bch| {
                bch.iter(|| {
                    oc.run(
                        opa,
                        &x,
                        &offs,
                        px,
                        &mut y,
                        n,
                        Some(&bias),
                        Activation::Relu6,
                    );
                    black_box(&y);
                })
            });
        }
        grp.finish();
    }
}

fn bench_gemv(c: &mut Criterion) {
    for &(name, m, k) in GEMV_SHAPES {
        let w = data(m * k, 3);
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let x = data(k, 4);
        let mut y = vec![0f32; m];
        for (dtype, bytes) in [(Dtype::F32, 4), (Dtype::F16, 2)] {
            let mut g = c.benchmark_group(format!(
                "gemv/{name}_{}",
                if dtype == Dtype::F32 { "f32" } else { "f16" }
            ));
            g.throughput(Throughput::Bytes((m * k * bytes) as u64));
            g.sample_size(10);
            let a = if dtype == Dtype::F32 {
                Elems::F32(&w)
            } else {
                Elems::F16(&w16)
            };
            for ker in GEMV_KERNELS
                .iter()
                .filter(|k| k.dtype == dtype && k.isa.is_available())
            {
                g.bench_function(BenchmarkId::from_parameter(ker.name), |bch| {
                    bch.iter(|| {
                        ker.run(a, k, m, k, &x, None, Activation::None, &mut y);
                        black_box(&y);
                    })
                });
            }
            g.finish();
        }
    }
}

/// Memory bandwidth baseline: a read-sum and a copy of 256 MiB.
fn bench_memory(c: &mut Criterion) {
    const N: usize = 64 << 20;
    let src = data(N, 5);
    let mut dst = vec![0f32; N];
    let mut g = c.benchmark_group("memory");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((N * 4) as u64));
    g.bench_function("read_sum_256MiB", |bch| {
        bch.iter(|| {
            let mut acc = [0f32; 16];
            for ch in black_box(&src).chunks_exact(16) {
                for (a, v) in acc.iter_mut().zip(ch) {
                    *a += v;
                }
            }
            black_box(acc)
        })
    });
    g.throughput(Throughput::Bytes((2 * N * 4) as u64));
    g.bench_function("copy_256MiB_read_plus_write", |bch| {
        bch.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

/// `(name, channels, h, w, stride)` of MobileNetV2's depthwise 3×3 layers (padding 1).
const DW_SHAPES: &[(&str, usize, usize, usize, usize)] = &[
    ("m2_f2_96x112_s2", 96, 112, 112, 2),
    ("m2_f3_144x56", 144, 56, 56, 1),
    ("m2_f8_384x14", 384, 14, 14, 1),
    ("m2_f14_576x14_s2", 576, 14, 14, 2),
    ("m2_f15_960x7", 960, 7, 7, 1),
];

fn bench_depthwise(c: &mut Criterion) {
    for &(name, ch, h, w, s) in DW_SHAPES {
        let g = ConvGeom {
            c: ch,
            h,
            w,
            kh: 3,
            kw: 3,
            stride: [s, s],
            pad: [1, 1],
            dilation: [1, 1],
            oh: (h - 1) / s + 1,
            ow: (w - 1) / s + 1,
        };
        let mut grp = c.benchmark_group(format!("depthwise/{name}"));
        grp.throughput(Throughput::Elements((2 * 9 * ch * g.oh * g.ow) as u64));
        grp.sample_size(20);
        let x = data(ch * h * w, 8);
        let wt = data(ch * 9, 9);
        let bias = data(ch, 10);
        let mut y = vec![0f32; ch * g.oh * g.ow];
        for ker in DEPTHWISE_KERNELS.iter().filter(|k| k.isa.is_available()) {
            grp.bench_function(BenchmarkId::from_parameter(ker.name), |bch| {
                bch.iter(|| {
                    let (wt, act) = (Elems::F32(&wt), Activation::Relu6);
                    ker.run(&g, &x, wt, Some(&bias), act, &mut y);
                    black_box(&y);
                })
            });
        }
        grp.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_memory, bench_gemv, bench_gemm, bench_conv, bench_pointwise, bench_depthwise
}
criterion_main!(benches);
