//! Tests of the checkpoint importers and the datasets.
//!
//! Run with `cargo test --release --test import`. The tests on real models, MNIST and photos
//! need `NAP_FIXTURES` to name the folder filled by `scripts/fetch-fixtures.sh`; without it they
//! print a notice and pass, with it a missing file is a failure.

mod common;

use std::io::Write;
use std::path::Path;

use common::{fixture, fixtures};
use nap::data::image::{
    gray_input, imagenet_input, load_gray_input, load_imagenet_input, read_class_names,
    GrayPreprocess, IMAGENET_MEAN, IMAGENET_STD,
};
use nap::data::{load_digits, load_mnist, Dataset, Split};
use nap::import::pickle::{self, PickleError, Value};
use nap::import::{
    read_checkpoint, read_pth, read_pth_all, read_pth_all_bytes, read_pth_bytes, read_safetensors,
    write_safetensors, DType, TensorData,
};
use nap::ir::HostTensor;

// ---------------------------------------------------------------------------------------------
// A tiny pickle writer for hand-built test inputs.

struct Pk(Vec<u8>);

impl Pk {
    fn new(proto: u8) -> Self {
        Pk(vec![0x80, proto])
    }
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn mark(&mut self) -> &mut Self {
        self.op(b'(')
    }
    fn tuple(&mut self) -> &mut Self {
        self.op(b't')
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, i: i64) -> &mut Self {
        if (0..256).contains(&i) {
            self.op(b'K').op(i as u8)
        } else if (0..65536).contains(&i) {
            self.op(b'M');
            self.0.extend_from_slice(&(i as u16).to_le_bytes());
            self
        } else if i32::try_from(i).is_ok() {
            self.op(b'J');
            self.0.extend_from_slice(&(i as i32).to_le_bytes());
            self
        } else {
            self.op(0x8a).op(8);
            self.0.extend_from_slice(&i.to_le_bytes());
            self
        }
    }
    fn ints(&mut self, xs: &[i64]) -> &mut Self {
        self.mark();
        for &x in xs {
            self.int(x);
        }
        self.tuple()
    }
    fn binput(&mut self, k: u8) -> &mut Self {
        self.op(b'q').op(k)
    }
    fn binget(&mut self, k: u8) -> &mut Self {
        self.op(b'h').op(k)
    }
    fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
    /// `_rebuild_tensor_v2(pid(('storage', torch.<stype>, key, 'cpu', numel[, None])), ...)`.
    #[allow(clippy::too_many_arguments)]
    fn tensor(
        &mut self,
        stype: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
        legacy: bool,
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .str("storage")
            .global("torch", stype)
            .str(key)
            .str("cpu")
            .int(numel);
        if legacy {
            self.op(b'N');
        }
        self.tuple().op(b'Q');
        self.int(offset).ints(size).ints(stride).op(0x89);
        self.ordered_dict();
        self.tuple().op(b'R')
    }
    fn stop(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.0)
    }
}

fn s(x: &str) -> Value {
    Value::Str(x.to_owned())
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(t: &nap::import::PthTensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        TensorData::I64(_) => panic!("{} is an integer tensor", t.name),
    }
}

// ---------------------------------------------------------------------------------------------
// Pickle VM

/// `pickle.dumps(OrderedDict([('x', l), ('y', {'k': (None, 1.5, -7, 2**40, 'é', b'\x00\x01')}),
/// ('z', True), ('w', l), ('big', 2**80), ('neg', -2**70), ('t', (False,)), ('e', ())]),
/// protocol=2)` with `l = [1, 2, 3]`, from CPython 3.11.
const PY_PROTO2: &[u8] = b"\x80\x02\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x0a\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x00\x29\x52\x71\x01\x28\x58\x01\x00\x00\x00\x78\x71\x02\x5d\x71\x03\x28\x4b\x01\x4b\x02\x4b\x03\x65\x58\x01\x00\x00\x00\x79\x71\x04\x7d\x71\x05\x58\x01\x00\x00\x00\x6b\x71\x06\x28\x4e\x47\x3f\xf8\x00\x00\x00\x00\x00\x00\x4a\xf9\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x58\x02\x00\x00\x00\xc3\xa9\x71\x07\x63\x5f\x63\x6f\x64\x65\x63\x73\x0a\x65\x6e\x63\x6f\x64\x65\x0a\x71\x08\x58\x02\x00\x00\x00\x00\x01\x71\x09\x58\x06\x00\x00\x00\x6c\x61\x74\x69\x6e\x31\x71\x0a\x86\x71\x0b\x52\x71\x0c\x74\x71\x0d\x73\x58\x01\x00\x00\x00\x7a\x71\x0e\x88\x58\x01\x00\x00\x00\x77\x71\x0f\x68\x03\x58\x03\x00\x00\x00\x62\x69\x67\x71\x10\x8a\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x58\x03\x00\x00\x00\x6e\x65\x67\x71\x11\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0\x58\x01\x00\x00\x00\x74\x71\x12\x89\x85\x71\x13\x58\x01\x00\x00\x00\x65\x71\x14\x29\x75\x2e";

/// The same object at protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, bytes).
const PY_PROTO4: &[u8] = b"\x80\x04\x95\x9c\x00\x00\x00\x00\x00\x00\x00\x8c\x0b\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x94\x8c\x0b\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x94\x93\x94\x29\x52\x94\x28\x8c\x01\x78\x94\x5d\x94\x28\x4b\x01\x4b\x02\x4b\x03\x65\x8c\x01\x79\x94\x7d\x94\x8c\x01\x6b\x94\x28\x4e\x47\x3f\xf8\x00\x00\x00\x00\x00\x00\x4a\xf9\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8c\x02\xc3\xa9\x94\x43\x02\x00\x01\x94\x74\x94\x73\x8c\x01\x7a\x94\x88\x8c\x01\x77\x94\x68\x05\x8c\x03\x62\x69\x67\x94\x8a\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x8c\x03\x6e\x65\x67\x94\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0\x8c\x01\x74\x94\x89\x85\x94\x8c\x01\x65\x94\x29\x75\x2e";

fn expected_py_object(bytes_value: Value) -> Value {
    let l = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
    let mut big = vec![0u8; 11];
    big[10] = 1;
    let mut neg = vec![0u8; 9];
    neg[8] = 0xc0;
    Value::Dict(vec![
        (s("x"), l.clone()),
        (
            s("y"),
            Value::Dict(vec![(
                s("k"),
                Value::Tuple(vec![
                    Value::None,
                    Value::Float(1.5),
                    Value::Int(-7),
                    Value::Int(1 << 40),
                    s("é"),
                    bytes_value,
                ]),
            )]),
        ),
        (s("z"), Value::Bool(true)),
        // Memo references share the object: `l` was memoised empty, then filled by APPENDS.
        (s("w"), l),
        (s("big"), Value::BigInt(big)),
        (s("neg"), Value::BigInt(neg)),
        (s("t"), Value::Tuple(vec![Value::Bool(false)])),
        (s("e"), Value::Tuple(vec![])),
    ])
}

#[test]
fn pickle_protocol2_from_python() {
    let p = pickle::parse(PY_PROTO2).unwrap();
    assert_eq!(p.consumed, PY_PROTO2.len());
    // Protocol 2 pickles bytes as _codecs.encode(str, 'latin1').
    let bytes_value = Value::Object {
        callable: Box::new(Value::Global {
            module: "_codecs".into(),
            name: "encode".into(),
        }),
        args: vec![s("\u{0}\u{1}"), s("latin1")],
        state: None,
    };
    assert_eq!(p.value, expected_py_object(bytes_value));
}

#[test]
fn pickle_protocol4_from_python() {
    let v = pickle::loads(PY_PROTO4).unwrap();
    assert_eq!(v, expected_py_object(Value::Bytes(vec![0, 1])));
    assert_eq!(v.get("z"), Some(&Value::Bool(true)));
    assert_eq!(v.get("nope"), None);
}

#[test]
fn pickle_hand_built_nested_and_memo() {
    // {'a': (1, [2, {'b': None}], ()), 'c': <memo of the inner list>, 'd': 'a'} at protocol 2,
    // with SETITEM, APPEND, TUPLE3, LONG_BINPUT/LONG_BINGET, BINSTRING, SHORT_BINSTRING,
    // BINFLOAT, NEWOBJ and BUILD.
    let mut p = Pk::new(2);
    p.op(b'}').binput(0);
    p.str("a").int(1);
    p.op(b']').op(b'r').0.extend_from_slice(&7u32.to_le_bytes());
    p.int(2).op(b'a');
    p.op(b'}').str("b").op(b'N').op(b's').op(b'a');
    p.op(b')').op(0x87); // TUPLE3
    p.op(b's');
    p.str("c").op(b'j').0.extend_from_slice(&7u32.to_le_bytes());
    p.op(b's');
    p.op(b'U').op(1).op(b'd'); // SHORT_BINSTRING 'd'
    p.op(b'T').0.extend_from_slice(&1u32.to_le_bytes());
    p.op(b'a'); // BINSTRING 'a'
    p.op(b's');
    p.str("f")
        .op(b'G')
        .0
        .extend_from_slice(&(-0.5f64).to_be_bytes());
    p.op(b's');
    p.str("o").global("__main__", "Thing").op(b')').op(0x81);
    p.op(b'}').str("k").int(70000).op(b's').op(b'b').op(b's');
    let bytes = p.stop();
    let v = pickle::loads(&bytes).unwrap();
    let inner = Value::List(vec![
        Value::Int(2),
        Value::Dict(vec![(s("b"), Value::None)]),
    ]);
    let expected = Value::Dict(vec![
        (
            s("a"),
            Value::Tuple(vec![Value::Int(1), inner.clone(), Value::Tuple(vec![])]),
        ),
        (s("c"), inner),
        (s("d"), s("a")),
        (s("f"), Value::Float(-0.5)),
        (
            s("o"),
            Value::Object {
                callable: Box::new(Value::Global {
                    module: "__main__".into(),
                    name: "Thing".into(),
                }),
                args: vec![],
                state: Some(Box::new(Value::Dict(vec![(s("k"), Value::Int(70000))]))),
            },
        ),
    ]);
    assert_eq!(v, expected);
}

#[test]
fn pickle_trailing_bytes_and_errors() {
    // Trailing data is left alone and reported.
    let mut with_tail = Pk::new(2).int(5).stop();
    with_tail.extend_from_slice(b"tail");
    let p = pickle::parse(&with_tail).unwrap();
    assert_eq!(p.value, Value::Int(5));
    assert_eq!(p.consumed, with_tail.len() - 4);

    let err = |b: &[u8]| pickle::loads(b).unwrap_err();
    assert!(matches!(err(b"\x80\x02"), PickleError::NoStop));
    assert!(matches!(
        err(b"\x80\x02X\xff\x00\x00\x00ab."),
        PickleError::Truncated { .. }
    ));
    assert!(matches!(
        err(b"\x80\x02."),
        PickleError::StackUnderflow { .. }
    ));
    assert!(matches!(
        err(b"\x80\x02\xff."),
        PickleError::UnknownOpcode { op: 0xff, .. }
    ));
    assert!(matches!(
        err(b"\x80\x02h\x03."),
        PickleError::MissingMemo { key: 3, .. }
    ));
    assert!(matches!(
        err(b"\x80\x02K\x01u."),
        PickleError::NoMark { .. }
    ));
    assert!(matches!(err(b"\x80\x09N."), PickleError::Protocol(9)));
    // SETITEMS with no dict below its MARK; SETITEMS without MARK; SETITEMS on a list.
    assert!(matches!(
        err(b"\x80\x02(K\x01K\x02K\x03}u."),
        PickleError::StackUnderflow { .. }
    ));
    assert!(matches!(
        err(b"\x80\x02]K\x01u."),
        PickleError::NoMark { .. }
    ));
    assert!(matches!(
        err(b"\x80\x02](K\x01K\x02u."),
        PickleError::Invalid { .. }
    ));
    assert!(matches!(
        err(b"\x80\x02\x82\x01."),
        PickleError::UnsupportedOpcode { .. }
    ));
    // Huge declared lengths fail before allocating.
    assert!(matches!(
        err(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f."),
        PickleError::Truncated { .. }
    ));
    // Error messages name the problem and the position.
    let msg = err(b"\x80\x02h\x03.").to_string();
    assert!(
        msg.contains("memo key 3") && msg.contains("byte 2"),
        "{msg}"
    );
}

#[test]
fn pickle_bombs_are_rejected() {
    // Nesting a million tuples deep: rejected by the depth bound, no stack overflow.
    let mut p = Pk::new(2);
    p.op(b')');
    for _ in 0..1_000_000 {
        p.op(0x85);
    }
    let e = pickle::loads(&p.stop()).unwrap_err();
    assert!(matches!(e, PickleError::TooDeep { .. }), "{e}");

    // A list that contains itself.
    let e = pickle::loads(b"\x80\x02]q\x00h\x00a.").unwrap_err();
    assert!(matches!(e, PickleError::TooDeep { .. }), "{e}");

    // "Billion laughs": each level holds the previous one twice (2^60 nodes once expanded).
    let mut p = Pk::new(2);
    p.int(0).binput(0);
    for i in 1..=60u8 {
        p.binget(i - 1).binget(i - 1).op(0x86).binput(i);
    }
    let e = pickle::loads(&p.stop()).unwrap_err();
    assert!(matches!(e, PickleError::TooLarge { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Zip-format checkpoints built by hand

fn zip_bytes(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A state dict with contiguous, transposed, offset, permuted, f16, f64, i64, empty, scalar and
/// Parameter-wrapped tensors.
fn crafted_state_dict_pickle(legacy: bool) -> Vec<u8> {
    let mut p = Pk::new(2);
    p.ordered_dict().binput(0).mark();
    p.str("w")
        .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1], legacy);
    p.str("wt")
        .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3], legacy);
    p.str("p").global("torch._utils", "_rebuild_parameter");
    p.mark()
        .tensor("FloatStorage", "1", 5, 2, &[3], &[1], legacy)
        .op(0x88)
        .ordered_dict()
        .tuple()
        .op(b'R');
    p.str("h")
        .tensor("HalfStorage", "2", 4, 1, &[2], &[2], legacy);
    p.str("d")
        .tensor("DoubleStorage", "3", 2, 0, &[2, 1], &[1, 1], legacy);
    p.str("n")
        .tensor("LongStorage", "4", 1, 0, &[], &[], legacy);
    p.str("e")
        .tensor("FloatStorage", "5", 0, 0, &[0, 3], &[3, 1], legacy);
    p.str("s")
        .tensor("FloatStorage", "0", 6, 5, &[], &[], legacy);
    p.str("perm")
        .tensor("FloatStorage", "6", 8, 0, &[2, 2, 2], &[1, 4, 2], legacy);
    p.op(b'u');
    // OrderedDict state (torch's `_metadata`) is ignored.
    p.op(b'}').str("_metadata").op(b'}').op(b's').op(b'b');
    p.stop()
}

fn crafted_storages() -> Vec<(&'static str, Vec<u8>)> {
    let half: Vec<u8> = [1.0f32, -2.5, 0.5, 65504.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let double: Vec<u8> = [1.5f64, -0.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    vec![
        ("0", f32s(&[0., 1., 2., 3., 4., 5.])),
        ("1", f32s(&[10., 11., 12., 13., 14.])),
        ("2", half),
        ("3", double),
        ("4", 7i64.to_le_bytes().to_vec()),
        ("5", Vec::new()),
        ("6", f32s(&[0., 1., 2., 3., 4., 5., 6., 7.])),
    ]
}

fn crafted_zip(top: &str) -> Vec<u8> {
    let mut files = vec![
        (format!("{top}/data.pkl"), crafted_state_dict_pickle(false)),
        (format!("{top}/byteorder"), b"little".to_vec()),
        (format!("{top}/version"), b"3\n".to_vec()),
    ];
    for (k, v) in crafted_storages() {
        files.push((format!("{top}/data/{k}"), v));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    zip_bytes(&refs)
}

fn check_crafted(ts: &[nap::import::PthTensor]) {
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "wt", "p", "h", "d", "n", "e", "s", "perm"]);
    let by = |n: &str| ts.iter().find(|t| t.name == n).unwrap();
    assert_eq!(by("w").shape, [2, 3]);
    assert_eq!(floats(by("w")), [0., 1., 2., 3., 4., 5.]);
    // Transposed view: element [i][j] = storage[i + 3j].
    assert_eq!(by("wt").shape, [3, 2]);
    assert_eq!(floats(by("wt")), [0., 3., 1., 4., 2., 5.]);
    // Storage offset 2, wrapped in a Parameter.
    assert_eq!(floats(by("p")), [12., 13., 14.]);
    // f16, offset 1, stride 2.
    assert_eq!(by("h").dtype, DType::F16);
    assert_eq!(floats(by("h")), [-2.5, 65504.0]);
    assert_eq!(by("d").dtype, DType::F64);
    assert_eq!(by("d").shape, [2, 1]);
    assert_eq!(floats(by("d")), [1.5, -0.25]);
    assert_eq!(by("n").dtype, DType::I64);
    assert_eq!(by("n").shape, Vec::<usize>::new());
    assert_eq!(by("n").data, TensorData::I64(vec![7]));
    assert_eq!(by("e").shape, [0, 3]);
    assert!(by("e").data.is_empty());
    assert_eq!(by("s").shape, Vec::<usize>::new());
    assert_eq!(floats(by("s")), [5.]);
    // Permuted 3-D: element [i][j][k] = storage[i + 4j + 2k].
    let mut expect = Vec::new();
    for i in 0..2 {
        for j in 0..2 {
            for k in 0..2 {
                expect.push((i + 4 * j + 2 * k) as f32);
            }
        }
    }
    assert_eq!(floats(by("perm")), expect.as_slice());
}

#[test]
fn zip_checkpoint_strides_offsets_dtypes() {
    let bytes = crafted_zip("my_model_v2");
    let all = read_pth_all_bytes(&bytes).unwrap();
    check_crafted(&all);
    // The f32 view skips integer tensors and keeps the order.
    let f = read_pth_bytes(&bytes).unwrap();
    let names: Vec<&str> = f.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "wt", "p", "h", "d", "e", "s", "perm"]);

    // Same through a file, with read_checkpoint's detection by content (odd extension).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.bin");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(read_pth(&path).unwrap(), f);
    assert_eq!(read_checkpoint(&path).unwrap(), f);
    assert_eq!(read_pth_all(&path).unwrap(), all);
}

#[test]
fn zip_checkpoint_big_endian() {
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1], false);
    p.op(b'u');
    let pkl = p.stop();
    let data: Vec<u8> = [1.25f32, -3.0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let z = zip_bytes(&[
        ("archive/data.pkl", pkl),
        ("archive/byteorder", b"big".to_vec()),
        ("archive/data/0", data),
    ]);
    let ts = read_pth_bytes(&z).unwrap();
    assert_eq!(ts[0].data, [1.25, -3.0]);
}

#[test]
fn checkpoint_wrappers_and_modules() {
    // {'epoch': 3, 'state_dict': {...}}
    let mut p = Pk::new(2);
    p.op(b'}').mark().str("epoch").int(3).str("state_dict");
    p.ordered_dict().mark();
    p.str("a.weight")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1], false);
    p.op(b'u').op(b'u');
    let z = zip_bytes(&[
        ("archive/data.pkl", p.stop()),
        ("archive/data/0", f32s(&[1., 2.])),
    ]);
    let ts = read_pth_bytes(&z).unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].name, "a.weight");

    // A whole pickled module: parameters, persistent buffers, then submodules.
    let module = |p: &mut Pk, cls: &str, body: &dyn Fn(&mut Pk)| {
        p.global("__main__", cls).op(b')').op(0x81);
        p.op(b'}').mark();
        p.str("training").op(0x88);
        body(p);
        p.op(b'u').op(b'b');
    };
    let mut p = Pk::new(2);
    module(&mut p, "Net", &|p: &mut Pk| {
        p.str("_parameters").ordered_dict().mark();
        p.str("weight")
            .tensor("FloatStorage", "0", 2, 0, &[2], &[1], false);
        p.str("bias").op(b'N');
        p.op(b'u');
        p.str("_buffers").ordered_dict().mark();
        p.str("running")
            .tensor("FloatStorage", "0", 2, 1, &[1], &[1], false);
        p.str("scratch")
            .tensor("FloatStorage", "0", 2, 0, &[1], &[1], false);
        p.op(b'u');
        p.str("_non_persistent_buffers_set")
            .op(0x8f)
            .mark()
            .str("scratch")
            .op(0x90);
        p.str("_modules").ordered_dict().mark();
        p.str("fc");
        module(p, "Linear", &|p: &mut Pk| {
            p.str("_parameters").ordered_dict().mark();
            p.str("weight")
                .tensor("FloatStorage", "0", 2, 0, &[1, 2], &[2, 1], false);
            p.op(b'u');
            p.str("_modules").ordered_dict();
        });
        p.op(b'u');
    });
    let z = zip_bytes(&[
        ("archive/data.pkl", p.stop()),
        ("archive/data/0", f32s(&[1., 2.])),
    ]);
    let ts = read_pth_bytes(&z).unwrap();
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["weight", "running", "fc.weight"]);
    assert_eq!(ts[1].data, [2.]);
}

#[test]
fn malformed_checkpoints_fail_cleanly() {
    let err = |b: &[u8]| format!("{:#}", read_pth_all_bytes(b).unwrap_err());

    // Strides addressing past the end of the storage.
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x")
        .tensor("FloatStorage", "0", 6, 0, &[3, 3], &[3, 1], false);
    p.op(b'u');
    let z = zip_bytes(&[("a/data.pkl", p.stop()), ("a/data/0", f32s(&[0.; 6]))]);
    let m = err(&z);
    assert!(m.contains("\"x\"") && m.contains("address"), "{m}");

    // Storage file shorter than the header says.
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x")
        .tensor("FloatStorage", "0", 6, 0, &[6], &[1], false);
    p.op(b'u');
    let pkl = p.stop();
    let z = zip_bytes(&[("a/data.pkl", pkl.clone()), ("a/data/0", f32s(&[0.; 5]))]);
    let m = err(&z);
    assert!(m.contains("has 20 bytes"), "{m}");

    // Missing storage file.
    let z = zip_bytes(&[("a/data.pkl", pkl)]);
    let m = err(&z);
    assert!(m.contains("a/data/0"), "{m}");

    // No data.pkl, garbage, unknown storage type, path-like storage keys, huge sizes.
    assert!(err(&zip_bytes(&[("a/other", vec![1])])).contains("data.pkl"));
    assert!(err(b"hello world").contains("not a PyTorch checkpoint"));
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x")
        .tensor("ComplexFloatStorage", "0", 1, 0, &[1], &[1], false);
    p.op(b'u');
    let z = zip_bytes(&[("a/data.pkl", p.stop()), ("a/data/0", vec![0; 8])]);
    assert!(err(&z).contains("ComplexFloatStorage"));
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x")
        .tensor("FloatStorage", "../x", 1, 0, &[1], &[1], false);
    p.op(b'u');
    let z = zip_bytes(&[("a/data.pkl", p.stop())]);
    assert!(err(&z).contains("invalid storage key"));
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x").tensor(
        "FloatStorage",
        "0",
        i64::MAX / 2,
        0,
        &[i64::MAX / 4, 4],
        &[4, 1],
        false,
    );
    p.op(b'u');
    let z = zip_bytes(&[("a/data.pkl", p.stop()), ("a/data/0", vec![0; 8])]);
    let m = err(&z);
    assert!(!m.is_empty());
    // Stride-0 broadcast far beyond what the file could hold: refused, not allocated.
    let mut p = Pk::new(2);
    p.ordered_dict().mark();
    p.str("x")
        .tensor("FloatStorage", "0", 1, 0, &[1 << 40], &[0], false);
    p.op(b'u');
    let z = zip_bytes(&[("a/data.pkl", p.stop()), ("a/data/0", vec![0; 4])]);
    assert!(err(&z).contains("materialise"), "{}", err(&z));
    // A dict without tensors.
    let mut p = Pk::new(2);
    p.op(b'}').str("epoch").int(3).op(b's');
    let z = zip_bytes(&[("a/data.pkl", p.stop())]);
    assert!(err(&z).contains("no tensors"), "{}", err(&z));
}

// ---------------------------------------------------------------------------------------------
// Legacy format built by hand

fn legacy_bytes(wrap: bool) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic number 0x1950a86a20f9469cfc6c as LONG1.
    out.extend(
        Pk::new(2)
            .op(0x8a)
            .op(10)
            .op(0x6c)
            .op(0xfc)
            .op(0x9c)
            .op(0x46)
            .op(0xf9)
            .op(0x20)
            .op(0x6a)
            .op(0xa8)
            .op(0x50)
            .op(0x19)
            .stop(),
    );
    out.extend(Pk::new(2).int(1001).stop());
    out.extend(
        Pk::new(2)
            .op(b'}')
            .mark()
            .str("protocol_version")
            .int(1001)
            .str("little_endian")
            .op(0x88)
            .op(b'u')
            .stop(),
    );
    let sd = crafted_state_dict_pickle(true);
    if wrap {
        // {'model': <state dict>}
        let mut p = Pk::new(2);
        p.op(b'}').str("model");
        let mut body = sd[2..sd.len() - 1].to_vec(); // without PROTO and STOP
        p.0.append(&mut body);
        p.op(b's');
        out.extend(p.stop());
    } else {
        out.extend(sd);
    }
    // Storage keys in an order different from their first use.
    let storages = crafted_storages();
    let order = [3usize, 0, 6, 1, 5, 2, 4];
    let mut keys = Pk::new(2);
    keys.op(b']').mark();
    for &i in &order {
        keys.str(storages[i].0);
    }
    keys.op(b'e');
    out.extend(keys.stop());
    let sizes = [4usize, 4, 2, 8, 8, 4, 4];
    for &i in &order {
        let data = &storages[i].1;
        out.extend(((data.len() / sizes[i]) as i64).to_le_bytes());
        out.extend(data);
    }
    out
}

#[test]
fn legacy_checkpoint_reads() {
    check_crafted(&read_pth_all_bytes(&legacy_bytes(false)).unwrap());
    check_crafted(&read_pth_all_bytes(&legacy_bytes(true)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.pth");
    std::fs::write(&path, legacy_bytes(false)).unwrap();
    assert_eq!(read_checkpoint(&path).unwrap().len(), 8);
}

#[test]
fn corrupted_checkpoints_never_panic() {
    // Every truncation and a byte flip at every position: errors (or, rarely, a different
    // valid reading), never a panic.
    let legacy = legacy_bytes(false);
    for n in 0..legacy.len() {
        let _ = read_pth_all_bytes(&legacy[..n]);
    }
    let mut truncated_ok = 0;
    for n in 0..legacy.len() {
        if read_pth_all_bytes(&legacy[..n]).is_ok() {
            truncated_ok += 1;
        }
    }
    assert_eq!(truncated_ok, 0, "a truncated file was accepted");
    for i in 0..legacy.len() {
        for x in [0xffu8, 0x01, 0x80] {
            let mut b = legacy.clone();
            b[i] ^= x;
            let _ = read_pth_all_bytes(&b);
        }
    }
    let pkl = crafted_state_dict_pickle(false);
    for i in 0..pkl.len() {
        let mut b = pkl.clone();
        b[i] ^= 0xff;
        let _ = pickle::loads(&b);
        let _ = pickle::loads(&pkl[..i]);
    }
    let z = crafted_zip("archive");
    for i in (0..z.len()).step_by(3) {
        let mut b = z.clone();
        b[i] ^= 0x55;
        let _ = read_pth_all_bytes(&b);
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let tensors = vec![
        HostTensor {
            name: "b.weight".into(),
            shape: vec![2, 3],
            data: vec![1., -2., 3.5, 0., f32::MIN_POSITIVE, 1e30],
        },
        HostTensor {
            name: "a.bias".into(),
            shape: vec![3],
            data: vec![0.25, 0.5, 0.75],
        },
        HostTensor {
            name: "scalar".into(),
            shape: vec![],
            data: vec![42.],
        },
    ];
    write_safetensors(&path, &tensors).unwrap();
    // Atomic write: only the final file is left.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
    let mut back = read_safetensors(&path).unwrap();
    back.sort_by(|a, b| a.name.cmp(&b.name));
    let mut expect = tensors.clone();
    expect.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(back, expect);
    let mut via = read_checkpoint(&path).unwrap();
    via.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(via, expect);

    // Overwriting works; bad inputs fail without leaving files behind.
    write_safetensors(&path, &tensors[1..]).unwrap();
    assert_eq!(read_safetensors(&path).unwrap().len(), 2);
    let bad = HostTensor {
        name: "x".into(),
        shape: vec![2, 2],
        data: vec![1.],
    };
    assert!(write_safetensors(&path, &[bad]).is_err());
    let dup = [tensors[1].clone(), tensors[1].clone()];
    assert!(write_safetensors(&path, &dup).is_err());
    assert!(write_safetensors(&dir.path().join("no/such/dir/x.safetensors"), &tensors).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert!(read_safetensors(&dir.path().join("missing.safetensors")).is_err());
    std::fs::write(
        dir.path().join("junk.safetensors"),
        b"\x10\0\0\0\0\0\0\0{junk",
    )
    .unwrap();
    assert!(read_safetensors(&dir.path().join("junk.safetensors")).is_err());
}

#[test]
fn safetensors_other_dtypes() {
    use candle_core::{DType as CDType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    let dev = Device::Cpu;
    let mut map = std::collections::HashMap::new();
    let f = Tensor::new(&[1.5f32, -2.0, 0.125], &dev).unwrap();
    map.insert("h", f.to_dtype(CDType::F16).unwrap());
    map.insert("bf", f.to_dtype(CDType::BF16).unwrap());
    map.insert("d", f.to_dtype(CDType::F64).unwrap());
    map.insert("i", Tensor::new(&[1i64, 2], &dev).unwrap());
    candle_core::safetensors::save(&map, &path).unwrap();
    let ts = read_safetensors(&path).unwrap();
    assert_eq!(ts.len(), 3, "the integer tensor is skipped");
    for t in &ts {
        assert_eq!(t.shape, [3]);
        assert_eq!(t.data, [1.5, -2.0, 0.125], "{}", t.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Datasets and images

#[test]
fn digits_embedded() {
    let d = load_digits();
    assert_eq!(d.n, 1797);
    assert_eq!(d.shape, [1, 8, 8]);
    assert_eq!(d.images.len(), 1797 * 64);
    assert_eq!(d.labels.len(), 1797);
    assert_eq!(d.num_classes(), 10);
    assert!(d.images.iter().all(|&x| (0.0..=1.0).contains(&x)));
    let mut counts = [0usize; 10];
    for &l in &d.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    // First sample: a zero; its first row is 0 0 5 13 9 1 0 0.
    assert_eq!(d.labels[0], 0);
    let row: Vec<f32> = [0., 0., 5., 13., 9., 1., 0., 0.]
        .iter()
        .map(|x| x / 16.)
        .collect();
    assert_eq!(&d.image(0)[..8], row.as_slice());

    let (train, test) = d.split(0.2, 42);
    assert_eq!(test.n, 359);
    assert_eq!(train.n, 1797 - 359);
    assert_eq!(train.images.len(), train.n * 64);
    assert_eq!(d.split(0.2, 42), (train.clone(), test.clone()));
    assert_ne!(d.split(0.2, 43).1, test);
    let mut all: Vec<u32> = train.labels.iter().chain(&test.labels).copied().collect();
    let mut orig = d.labels.clone();
    all.sort();
    orig.sort();
    assert_eq!(all, orig);
    let (tr, te) = d.split(0.0, 1);
    assert_eq!((tr.n, te.n), (1797, 0));
    let (tr, te) = d.split(1.5, 1);
    assert_eq!((tr.n, te.n), (0, 1797));
}

fn write_idx(path: &Path, magic: [u8; 4], dims: &[u32], data: &[u8]) {
    let mut b = magic.to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn mnist_idx_parsing_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 10) as u8).collect();
    write_idx(
        &p.join("t10k-images-idx3-ubyte"),
        [0, 0, 8, 3],
        &[2, 3, 4],
        &pixels,
    );
    write_idx(
        &p.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1],
        &[2],
        &[7, 1],
    );
    let d = load_mnist(p, Split::Test).unwrap();
    assert_eq!((d.n, d.shape, d.labels.clone()), (2, [1, 3, 4], vec![7, 1]));
    assert!((d.images[1] - (10.0 / 255.0 - 0.1307) / 0.3081).abs() < 1e-6);

    let e = |split| format!("{:#}", load_mnist(p, split).unwrap_err());
    assert!(e(Split::Train).contains("train-images-idx3-ubyte"));
    write_idx(
        &p.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1],
        &[3],
        &[7, 1, 2],
    );
    assert!(e(Split::Test).contains("labels"), "{}", e(Split::Test));
    write_idx(
        &p.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1],
        &[2],
        &[7, 12],
    );
    assert!(e(Split::Test).contains("label 12"), "{}", e(Split::Test));
    write_idx(
        &p.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 3],
        &[2],
        &[7, 1],
    );
    assert!(e(Split::Test).contains("dimensions"), "{}", e(Split::Test));
    write_idx(
        &p.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1],
        &[2],
        &[7, 1],
    );
    write_idx(
        &p.join("t10k-images-idx3-ubyte"),
        [0, 0, 8, 3],
        &[2, 3, 4],
        &pixels[1..],
    );
    assert!(e(Split::Test).contains("data bytes"), "{}", e(Split::Test));
    write_idx(
        &p.join("t10k-images-idx3-ubyte"),
        [1, 2, 8, 3],
        &[2, 3, 4],
        &pixels,
    );
    assert!(e(Split::Test).contains("magic"), "{}", e(Split::Test));
    std::fs::write(p.join("t10k-images-idx3-ubyte"), [0u8, 0]).unwrap();
    assert!(e(Split::Test).contains("short"), "{}", e(Split::Test));

    // gzip-compressed files are read too.
    std::fs::remove_file(p.join("t10k-images-idx3-ubyte")).unwrap();
    let mut raw = vec![0u8, 0, 8, 3];
    for d in [2u32, 3, 4] {
        raw.extend(d.to_be_bytes());
    }
    raw.extend(&pixels);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    std::fs::write(p.join("t10k-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
    assert_eq!(load_mnist(p, Split::Test).unwrap().n, 2);
}

#[test]
fn image_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    // A constant colour stays constant through resize and crop.
    let path = dir.path().join("c.png");
    image::RgbImage::from_pixel(300, 200, image::Rgb([200, 100, 50]))
        .save(&path)
        .unwrap();
    let x = load_imagenet_input(&path).unwrap();
    assert_eq!(x.len(), 3 * 224 * 224);
    for (c, v) in [200.0f32, 100.0, 50.0].iter().enumerate() {
        let want = (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        let plane = &x[c * 224 * 224..(c + 1) * 224 * 224];
        assert!(
            plane.iter().all(|&p| (p - want).abs() < 1e-5),
            "channel {c}"
        );
    }
    // Grayscale input is replicated to RGB; a horizontal gradient keeps its orientation.
    let g = image::GrayImage::from_fn(400, 256, |x, _| image::Luma([(x * 255 / 399) as u8]));
    let x = imagenet_input(&image::DynamicImage::ImageLuma8(g)).unwrap();
    let px = |c: usize, y: usize, xx: usize| {
        x[c * 224 * 224 + y * 224 + xx] * IMAGENET_STD[c] + IMAGENET_MEAN[c]
    };
    for c in 1..3 {
        assert!((px(c, 100, 50) - px(0, 100, 50)).abs() < 1e-5);
    }
    assert!(px(0, 10, 0) < px(0, 10, 223));
    // Centre crop of 400x256 -> resized to 400x256 (short side already 256): columns 88..312.
    assert!((px(0, 0, 0) - ((88 * 255 / 399) as f32 / 255.0)).abs() < 2.0 / 255.0);

    // MNIST-style grayscale input.
    let path = dir.path().join("w.png");
    image::RgbImage::from_pixel(56, 56, image::Rgb([255, 255, 255]))
        .save(&path)
        .unwrap();
    let v = load_gray_input(&path, 28, 28, GrayPreprocess::MNIST).unwrap();
    assert_eq!(v.len(), 784);
    assert!(v
        .iter()
        .all(|&p| (p - (1.0 - 0.1307) / 0.3081).abs() < 1e-5));
    let v = load_gray_input(&path, 28, 28, GrayPreprocess::UNIT.inverted()).unwrap();
    assert!(v.iter().all(|&p| p == 0.0));
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::new(10, 10));
    assert!(gray_input(&img, 0, 28, GrayPreprocess::MNIST).is_err());

    // Errors name the file.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let m = format!("{:#}", load_imagenet_input(&bad).unwrap_err());
    assert!(m.contains("bad.png"), "{m}");
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::new(1, 1).save(&tiny).unwrap();
    assert_eq!(load_imagenet_input(&tiny).unwrap().len(), 3 * 224 * 224);
}

// ---------------------------------------------------------------------------------------------
// Real models and data (NAP_FIXTURES)

#[test]
fn fixture_m1_zip_checkpoint() {
    let Some(dir) = fixtures("fixture_m1_zip_checkpoint") else {
        return;
    };
    let path = fixture(&dir, "m1.pth");
    let ts = read_pth(&path).unwrap();
    let got: Vec<(&str, &[u32])> = ts
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let want: Vec<(&str, &[u32])> = vec![
        ("conv_layers.0.weight", &[32, 1, 3, 3]),
        ("conv_layers.0.bias", &[32]),
        ("conv_layers.3.weight", &[64, 32, 3, 3]),
        ("conv_layers.3.bias", &[64]),
        ("conv_layers.6.weight", &[128, 64, 3, 3]),
        ("conv_layers.6.bias", &[128]),
        ("fc_layers.0.weight", &[256, 1152]),
        ("fc_layers.0.bias", &[256]),
        ("fc_layers.2.weight", &[10, 256]),
        ("fc_layers.2.bias", &[10]),
    ];
    assert_eq!(got, want);
    let total: usize = ts.iter().map(|t| t.data.len()).sum();
    assert_eq!(total, 390_410);
    assert!(ts.iter().all(|t| t.data.iter().all(|x| x.is_finite())));
    assert_eq!(
        &ts[0].data[..3],
        [-0.048_746_057, 0.026_828_056, 0.025_933_761]
    );
    assert_eq!(read_checkpoint(&path).unwrap(), ts);

    // Independent cross-check with candle's own .pth reader.
    let theirs = candle_core::pickle::read_all(&path).unwrap();
    assert_eq!(theirs.len(), ts.len());
    for (name, t) in theirs {
        let mine = ts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(t.dims(), mine.dims().as_slice(), "{name}");
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, mine.data, "{name}");
    }
}

#[test]
fn fixture_m2_legacy_checkpoint() {
    let Some(dir) = fixtures("fixture_m2_legacy_checkpoint") else {
        return;
    };
    let path = fixture(&dir, "m2.pth");
    let all = read_pth_all(&path).unwrap();
    assert_eq!(all.len(), 314);
    let ints: Vec<_> = all.iter().filter(|t| t.dtype == DType::I64).collect();
    assert_eq!(ints.len(), 52);
    assert!(ints
        .iter()
        .all(|t| t.name.ends_with("num_batches_tracked") && t.shape.is_empty()));

    let ts = read_pth(&path).unwrap();
    assert_eq!(ts.len(), 262);
    let names: Vec<&str> = ts.iter().take(6).map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "features.0.0.weight",
            "features.0.1.weight",
            "features.0.1.bias",
            "features.0.1.running_mean",
            "features.0.1.running_var",
            "features.1.conv.0.0.weight",
        ]
    );
    let by = |n: &str| ts.iter().find(|t| t.name == n).unwrap();
    assert_eq!(by("features.0.0.weight").shape, [32, 3, 3, 3]);
    assert_eq!(by("features.18.0.weight").shape, [1280, 320, 1, 1]);
    assert_eq!(by("classifier.1.weight").shape, [1000, 1280]);
    assert_eq!(ts.last().unwrap().name, "classifier.1.bias");
    assert_eq!(
        &by("features.0.0.weight").data[..3],
        [0.013_185_34, -0.004_321_294_4, 0.014_823_136]
    );
    assert_eq!(
        &by("classifier.1.bias").data[..3],
        [0.047_188_025, 0.009_949_382, -0.033_395_123]
    );
    let total: usize = ts.iter().map(|t| t.data.len()).sum();
    assert_eq!(
        total, 3_538_984,
        "all float tensors, BN running stats included"
    );
    let params: usize = ts
        .iter()
        .filter(|t| !t.name.ends_with("running_mean") && !t.name.ends_with("running_var"))
        .map(|t| t.data.len())
        .sum();
    assert_eq!(params, 3_504_872, "trainable parameters");
    assert!(ts.iter().all(|t| t.data.iter().all(|x| x.is_finite())));
    for t in ts.iter().filter(|t| t.name.ends_with("running_var")) {
        assert!(t.data.iter().all(|&v| v > 0.0), "{}", t.name);
    }
    assert_eq!(read_checkpoint(&path).unwrap(), ts);
}

#[test]
fn fixture_mnist() {
    let Some(dir) = fixtures("fixture_mnist") else {
        return;
    };
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        fixture(&dir, &format!("mnist/{f}"));
    }
    let mdir = dir.join("mnist");
    let train: Dataset = load_mnist(&mdir, Split::Train).unwrap();
    assert_eq!((train.n, train.shape), (60_000, [1, 28, 28]));
    let n = train.images.len() as f64;
    let mean = train.images.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = train
        .images
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(
        mean.abs() < 0.01 && (var.sqrt() - 1.0).abs() < 0.01,
        "{mean} {var}"
    );
    let test = load_mnist(&mdir, Split::Test).unwrap();
    assert_eq!(test.n, 10_000);
    let mut counts = [0usize; 10];
    for &l in &test.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(
        counts,
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
}

#[test]
fn fixture_photos_and_classes() {
    let Some(dir) = fixtures("fixture_photos_and_classes") else {
        return;
    };
    for f in [
        "coffee.png",
        "camera.png",
        "chelsea.png",
        "motorcycle_left.png",
        "china.jpg",
    ] {
        let p = fixture(&dir, &format!("photos/{f}"));
        let x = load_imagenet_input(&p).unwrap();
        assert_eq!(x.len(), 3 * 224 * 224, "{f}");
        assert!(
            x.iter().all(|v| v.is_finite() && (-2.2..=2.7).contains(v)),
            "{f}"
        );
    }
    let names = read_class_names(&fixture(&dir, "imagenet_classes.txt")).unwrap();
    assert_eq!(names.len(), 1000);
    assert_eq!(names[967], "espresso");
    assert_eq!(names[872], "tripod");
    assert_eq!(names[665], "moped");
    assert_eq!(names[698], "palace");
    assert_eq!(names[285], "Egyptian cat");
}
