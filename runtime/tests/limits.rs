//! Resource limits of `Session::new`: bad batch sizes and oversized plans are typed errors.

use nap_runtime::format::*;
use nap_runtime::{Error, Model, Session};

fn linear_model(inputs: u32, outputs: u32) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    let w = fb.add_f32(&vec![0.5; (inputs * outputs) as usize]);
    let header = Header {
        producer: "limits test".into(),
        metadata: Metadata::default(),
        graph: Graph {
            values: vec![
                ValueInfo {
                    name: "x".into(),
                    shape: vec![inputs],
                },
                ValueInfo {
                    name: "y".into(),
                    shape: vec![outputs],
                },
            ],
            inputs: vec![0],
            outputs: vec![1],
            nodes: vec![Node {
                name: "fc".into(),
                op: Op::Linear(Linear {
                    weight: 0,
                    bias: None,
                    act: Activation::None,
                }),
                inputs: vec![0],
                output: 1,
            }],
        },
        tensors: vec![TensorEntry {
            name: "w".into(),
            shape: vec![outputs, inputs],
            dtype: DType::F32,
            layout: Layout::Dense { values: w },
        }],
        extensions: vec![],
    };
    fb.finish(&header).unwrap()
}

#[test]
fn batch_zero_is_an_error() {
    let m = Model::from_vec(&linear_model(4, 3)).unwrap();
    assert!(matches!(
        Session::new(&m, 0),
        Err(Error::Shape { what: "batch", .. })
    ));
}

#[test]
fn oversized_plans_are_refused() {
    let m = Model::from_vec(&linear_model(4, 3)).unwrap();
    for batch in [1usize << 31, usize::MAX / 2, usize::MAX] {
        match Session::new(&m, batch) {
            Err(Error::TooLarge { .. }) | Err(Error::Overflow(_)) => {}
            other => panic!("batch {batch}: {:?}", other.err()),
        }
    }
    assert!(Session::new(&m, 1 << 20).is_ok());
}
