//! `nap`: the host-side pruner. Imports trained networks (ONNX, PyTorch `.pth`, safetensors) into
//! the runtime's graph IR, runs them with candle as the reference, trains, prunes and exports
//! `.nap` files for `nap-runtime` and ONNX files for any ONNX runtime.

pub mod archs;
pub mod channel;
pub mod cli;
pub mod curvature;
pub mod data;
pub mod eval;
pub mod export;
pub mod groups;
pub mod import;
pub mod ir;
pub mod kfac;
pub mod obs;
pub mod onnx_out;
pub mod ops;
pub mod pb;
pub mod plot;
pub mod prune;
pub mod refdump;
pub mod reference;
pub mod report;
pub mod schedule;
pub mod stop;
pub mod train;
pub mod util;
