//! `nap-runtime`: loads `.nap` models without copying their weights and runs them with dense and
//! sparse kernels. `#![no_std]` + `alloc` by default; feature `std` adds memory-mapped loading,
//! CPU feature detection at run time, threads and timing.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(target_endian = "big")]
compile_error!(
    "nap-runtime reads little-endian blobs in place and supports little-endian targets only"
);

#[cfg(feature = "std")]
pub mod bench;
pub mod error;
pub mod exec;
pub mod format;
pub mod graph;
pub mod kernels;
pub mod model;
pub mod ops;
mod par;
mod pool;
#[cfg(feature = "std")]
pub use pool::physical_cores;
pub mod stats;

pub use error::{Error, Result};
pub use exec::{
    Fusion, Session, SessionOptions, SparsePolicy, Split, DEFAULT_MEMORY_LIMIT, FUSE_MIN_FLOATS,
};
pub use model::{AlignedBytes, LoadOptions, Model, TensorView};
