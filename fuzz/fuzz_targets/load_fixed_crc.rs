//! Like `load`, but the preamble and header checksums are recomputed before loading (and blob
//! checksums are not verified), so mutations reach header decoding, structural validation,
//! planning and execution instead of stopping at a checksum mismatch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nap_runtime::format::{crc32c, PREAMBLE_LEN};
use nap_runtime::AlignedBytes;

mod common;

fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    if v.len() >= PREAMBLE_LEN {
        let header_len = u64::from_le_bytes(v[24..32].try_into().unwrap());
        let end = (PREAMBLE_LEN as u64).checked_add(header_len);
        if let Some(end) = end.filter(|&e| e <= v.len() as u64) {
            let crc = crc32c(&v[PREAMBLE_LEN..end as usize]);
            v[52..56].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c(&v[..60]);
        v[60..64].copy_from_slice(&crc.to_le_bytes());
    }
    common::load_and_run(&AlignedBytes::copy_from(&v), &[false]);
});
