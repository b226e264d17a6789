//! Arbitrary bytes as a `.nap` file: the loader (checksums on and off) and, for files that
//! load, `Session::new` and `run` on zeros must never panic or misbehave.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nap_runtime::AlignedBytes;

mod common;

fuzz_target!(|data: &[u8]| {
    common::load_and_run(&AlignedBytes::copy_from(data), &[true, false]);
});
