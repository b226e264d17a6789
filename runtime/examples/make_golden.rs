//! Writes the format-stability golden file `tests/data/golden-v1.0.nap`.
//!
//! ```text
//! cargo run -p nap-runtime --example make_golden -- tests/data/golden-v1.0.nap
//! ```
//!
//! The file is committed and must keep loading forever (runtime/tests/loader.rs,
//! `golden_v1_0_loads_and_runs`). Do not regenerate it after a format change: add a new
//! `golden-vX.Y.nap` next to it instead.
//!
//! Model: input [2, 6, 6] → Conv2d 2→4, 3×3, pad 1 (f16 weight, f32 bias) → BatchNorm →
//! ReLU → MaxPool 3×3 stride 3 → Flatten [16] → Linear 16→3 (CSR f32 weight, u16 indices,
//! f32 bias).

use half::f16;
use nap_runtime::format::*;

fn values(n: usize, a: usize, b: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * a + b) % 17) as f32 / 8.0 * scale - scale)
        .collect()
}

fn fc_weight() -> Vec<f32> {
    (0..48)
        .map(|i| {
            let (r, c) = (i / 16, i % 16);
            if (r + 2 * c) % 5 == 0 {
                ((r * 16 + c) % 7) as f32 / 4.0 - 0.75
            } else {
                0.0
            }
        })
        .collect()
}

fn value(name: &str, shape: &[u32]) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        shape: shape.to_vec(),
    }
}

fn dense(name: &str, shape: &[u32], dtype: DType, values: BlobRef) -> TensorEntry {
    TensorEntry {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
        layout: Layout::Dense { values },
    }
}

fn node(name: &str, op: Op, input: ValueId, output: ValueId) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: vec![input],
        output,
    }
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/data/golden-v1.0.nap".into());
    let mut fb = FileBuilder::new();

    let conv_w: Vec<f16> = values(72, 3, 1, 0.5)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let conv_w = fb.add_f16(&conv_w);
    let conv_b = fb.add_f32(&values(4, 5, 2, 0.25));
    let gamma = fb.add_f32(&[1.0, 0.5, 2.0, 1.5]);
    let beta = fb.add_f32(&[0.1, -0.2, 0.0, 0.3]);
    let mean = fb.add_f32(&[0.05, -0.1, 0.2, 0.0]);
    let var = fb.add_f32(&[1.0, 0.25, 4.0, 0.5]);

    let w = fc_weight();
    let (mut row_ptr, mut col_idx, mut nz) = (vec![0u32], Vec::new(), Vec::new());
    for r in 0..3 {
        for c in 0..16 {
            if w[r * 16 + c] != 0.0 {
                col_idx.push(c as u16);
                nz.push(w[r * 16 + c]);
            }
        }
        row_ptr.push(col_idx.len() as u32);
    }
    let fc_w = TensorEntry {
        name: "fc.w".into(),
        shape: vec![3, 16],
        dtype: DType::F32,
        layout: Layout::Csr {
            nnz: nz.len() as u64,
            index: IndexWidth::U16,
            row_ptr: fb.add_u32(&row_ptr),
            col_idx: fb.add_u16(&col_idx),
            values: fb.add_f32(&nz),
        },
    };
    let fc_b = fb.add_f32(&[0.5, -0.5, 0.25]);

    let tensors = vec![
        dense("conv.w", &[4, 2, 3, 3], DType::F16, conv_w),
        dense("conv.b", &[4], DType::F32, conv_b),
        dense("bn.gamma", &[4], DType::F32, gamma),
        dense("bn.beta", &[4], DType::F32, beta),
        dense("bn.mean", &[4], DType::F32, mean),
        dense("bn.var", &[4], DType::F32, var),
        fc_w,
        dense("fc.b", &[3], DType::F32, fc_b),
    ];
    let graph = Graph {
        values: vec![
            value("input", &[2, 6, 6]),
            value("conv", &[4, 6, 6]),
            value("bn", &[4, 6, 6]),
            value("relu", &[4, 6, 6]),
            value("pool", &[4, 2, 2]),
            value("flatten", &[16]),
            value("fc", &[3]),
        ],
        inputs: vec![0],
        outputs: vec![6],
        nodes: vec![
            node(
                "conv",
                Op::Conv2d(Conv2d {
                    weight: 0,
                    bias: Some(1),
                    stride: [1, 1],
                    padding: [1, 1],
                    dilation: [1, 1],
                    groups: 1,
                    act: Activation::None,
                }),
                0,
                1,
            ),
            node(
                "bn",
                Op::BatchNorm(BatchNorm {
                    gamma: 2,
                    beta: 3,
                    mean: 4,
                    var: 5,
                    eps: 1e-5,
                }),
                1,
                2,
            ),
            node("relu", Op::Act(Activation::Relu), 2, 3),
            node(
                "pool",
                Op::MaxPool2d(MaxPool2d {
                    kernel: [3, 3],
                    stride: [3, 3],
                    padding: [0, 0],
                }),
                3,
                4,
            ),
            node("flatten", Op::Flatten, 4, 5),
            node(
                "fc",
                Op::Linear(Linear {
                    weight: 6,
                    bias: Some(7),
                    act: Activation::None,
                }),
                5,
                6,
            ),
        ],
    };
    let header = Header {
        producer: "nap make_golden (format 1.0)".into(),
        metadata: Metadata {
            source: "runtime/examples/make_golden.rs".into(),
            arch: "golden-v1.0".into(),
            method: "dense".into(),
            preprocess: "none".into(),
            labels: String::new(),
            layers: vec![LayerStats {
                name: "fc".into(),
                params: 48,
                nonzero: nz.len() as u64,
            }],
            extra: vec![("purpose".into(), "format stability test".into())],
        },
        graph,
        tensors,
        extensions: vec![Extension {
            tag: 0x8000,
            payload: b"ignored by readers".to_vec(),
        }],
    };
    let bytes = fb.finish(&header).expect("encode header");
    std::fs::write(&out, &bytes).unwrap_or_else(|e| panic!("write {out}: {e}"));

    // Print the model's output on the test input, for the frozen numbers in the loader test.
    let m = nap_runtime::Model::from_vec(&bytes).expect("load");
    let mut s = nap_runtime::Session::new(&m, 1).expect("plan");
    let input: Vec<f32> = (0..72).map(|i| ((i * 5) % 13) as f32 / 6.0 - 1.0).collect();
    println!(
        "wrote {out} ({} bytes); output {:?}",
        bytes.len(),
        s.run(&input).expect("run")
    );
}
