//! Reference files: inputs and the candle reference's logits for a few examples, so that the
//! runtime can be checked on machines without candle (aarch64 under qemu).
//!
//! Layout (little-endian): magic `b"NAPREF1\0"`, u32 examples, u32 input values per example,
//! u32 classes, then `examples * per` f32 inputs, then `examples * classes` f32 logits.

pub const MAGIC: &[u8; 8] = b"NAPREF1\0";

pub fn encode(inputs: &[f32], logits: &[f32], examples: usize) -> Vec<u8> {
    let per = inputs.len() / examples.max(1);
    let classes = logits.len() / examples.max(1);
    let mut out = Vec::with_capacity(20 + 4 * (inputs.len() + logits.len()));
    out.extend_from_slice(MAGIC);
    for v in [examples, per, classes] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    for v in inputs.iter().chain(logits) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
