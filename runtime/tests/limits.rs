//! Resource limits of loading and planning: bad batch sizes, oversized plans, hostile headers
//! and sessions past their memory limit are typed errors, raised before the memory is
//! allocated. A counting allocator measures what each attempt allocates.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use nap_runtime::format::*;
use nap_runtime::{Error, Model, Session, SessionOptions};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::SeqCst);
            let now = LIVE.fetch_add(new, Ordering::SeqCst) + new;
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        q
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Tests of this file run one at a time, so one test's allocations do not count in another's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f`'s result and the most bytes live during it beyond those live before it.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

const MIB: usize = 1 << 20;

fn linear_model(inputs: u32, outputs: u32) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    let w = fb.add_f32(&vec![0.5; (inputs * outputs) as usize]);
    let layout = Layout::Dense { values: w };
    linear_file(fb, inputs, outputs, layout)
}

/// A model of one Linear layer whose weight is stored as `layout`.
fn linear_file(fb: FileBuilder, inputs: u32, outputs: u32, layout: Layout) -> Vec<u8> {
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
            layout,
        }],
        extensions: vec![],
    };
    fb.finish(&header).unwrap()
}

#[test]
fn batch_zero_is_an_error() {
    let _s = serial();
    let m = Model::from_vec(&linear_model(4, 3)).unwrap();
    assert!(matches!(
        Session::new(&m, 0),
        Err(Error::Shape { what: "batch", .. })
    ));
}

#[test]
fn oversized_plans_are_refused() {
    let _s = serial();
    let m = Model::from_vec(&linear_model(4, 3)).unwrap();
    for batch in [1usize << 31, usize::MAX / 2, usize::MAX] {
        match Session::new(&m, batch) {
            Err(Error::TooLarge { .. }) | Err(Error::Overflow(_)) => {}
            other => panic!("batch {batch}: {:?}", other.err()),
        }
    }
    assert!(Session::new(&m, 1 << 20).is_ok());
}

/// An empty blocked-CSR weight of `rows × cols` in blocks of 64 rows (no blocked kernel runs
/// those, so a session expands it to dense).
fn empty_blocked_linear(rows: u32, cols: u32) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    let row_ptr = fb.add_u32(&vec![0; rows.div_ceil(64) as usize + 1]);
    let col_idx = fb.add_u16(&[]);
    let values = fb.add_f32(&[]);
    let layout = Layout::BlockCsr {
        block: 64,
        nnzb: 0,
        index: IndexWidth::for_cols(cols as usize),
        row_ptr,
        col_idx,
        values,
    };
    linear_file(fb, cols, rows, layout)
}

#[test]
fn issue14_expanding_a_huge_blocked_weight_is_refused_before_allocating() {
    let _s = serial();
    let bytes = empty_blocked_linear(32768, 32768);
    assert!(bytes.len() < 4096, "{} bytes", bytes.len());
    let m = Model::from_vec(&bytes).unwrap();
    let (r, peak) = peak_during(|| Session::new(&m, 1).map(|_| ()));
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert!(peak < 16 * MIB, "refusing allocated {peak} bytes");

    // A small one expands within its session's limit, and not past it.
    let m = Model::from_vec(&empty_blocked_linear(512, 512)).unwrap();
    let weight = 512 * 512 * 4;
    let opts = |memory_limit| SessionOptions {
        memory_limit,
        ..SessionOptions::default()
    };
    let (r, peak) = peak_during(|| Session::with_options(&m, 1, opts(weight as u64)).map(|_| ()));
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert!(peak < weight / 2, "refusing allocated {peak} bytes");
    let mut s = Session::with_options(&m, 1, opts(2 * weight as u64)).unwrap();
    assert_eq!(s.expanded(), [true]);
    assert!(s.run(&[1.0; 512]).unwrap().iter().all(|&y| y == 0.0));
}

#[test]
fn issue14_sessions_keep_to_their_memory_limit() {
    let _s = serial();
    let m = Model::from_vec(&linear_model(1000, 1000)).unwrap();
    let batch = 256;
    let need = Session::new(&m, batch).unwrap().planned_floats() as u64 * 4;
    assert!(need >= (batch * 2000 * 4) as u64);
    let opts = |memory_limit| SessionOptions {
        memory_limit,
        ..SessionOptions::default()
    };
    let (r, peak) = peak_during(|| Session::with_options(&m, batch, opts(need - 4)).map(|_| ()));
    match r {
        Err(Error::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (need, need - 4)),
        other => panic!("{other:?}"),
    }
    assert!(
        peak < (need / 4) as usize,
        "refusing allocated {peak} bytes of {need}"
    );
    let (s, peak) = peak_during(|| Session::with_options(&m, batch, opts(need)));
    assert_eq!(s.unwrap().planned_floats() as u64 * 4, need);
    assert!(
        peak as u64 <= need + MIB as u64,
        "{peak} bytes for a plan of {need}"
    );
}

fn header_with_nodes(nodes: Vec<Node>) -> Vec<u8> {
    let header = Header {
        producer: String::new(),
        metadata: Metadata::default(),
        graph: Graph {
            values: vec![],
            inputs: vec![],
            outputs: vec![],
            nodes,
        },
        tensors: vec![],
        extensions: vec![],
    };
    FileBuilder::new().finish(&header).unwrap()
}

#[test]
fn issue14_header_decoding_is_bounded_by_the_header() {
    let _s = serial();
    let node = |inputs: usize| Node {
        name: String::new(),
        op: Op::Flatten,
        inputs: vec![0; inputs],
        output: 0,
    };
    // More list entries than the format allows: refused while decoding.
    let bytes = header_with_nodes(vec![node(0); MAX_LIST_LEN + 1]);
    assert!(bytes.len() < MIB);
    let (r, peak) = peak_during(|| Model::from_vec(&bytes).map(|_| ()));
    assert_eq!(r, Err(Error::HeaderDecode));
    assert!(peak < 16 * MIB, "{peak} bytes");

    // The largest header allowed, of as many nodes as allowed: what decoding it allocates (the
    // graph is invalid, so loading fails after that) stays a small multiple of its size.
    // A node of `per` inputs encodes in `per + 5` bytes.
    let per = (MAX_HEADER_LEN as usize - 1024) / MAX_LIST_LEN - 5;
    let bytes = header_with_nodes(vec![node(per); MAX_LIST_LEN]);
    let header = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    assert!(header <= MAX_HEADER_LEN as usize && header > MAX_HEADER_LEN as usize * 9 / 10);
    let (r, peak) = peak_during(|| Model::from_vec(&bytes).map(|_| ()));
    assert!(matches!(r, Err(Error::BadGraph { .. })), "{r:?}");
    eprintln!("decoding a header of {header} bytes allocated at most {peak}");
    assert!(peak < 7 * header, "{peak} bytes for a header of {header}");

    // A header past the cap is refused before decoding.
    let bytes = header_with_nodes(vec![node(per + 8); MAX_LIST_LEN]);
    let (r, peak) = peak_during(|| Model::from_vec(&bytes).map(|_| ()));
    assert!(matches!(r, Err(Error::HeaderTooLarge(_))), "{r:?}");
    assert!(peak <= bytes.len() + MIB, "{peak} bytes");
}
