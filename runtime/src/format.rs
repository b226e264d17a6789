//! The `.nap` file format: types shared by the writer (the `nap` pruner) and the loader.
//!
//! # Layout
//!
//! ```text
//! offset 0   Preamble, 64 bytes, little-endian, parsed field by field:
//!              magic        [u8; 8]  = MAGIC
//!              major        u16      readers refuse any other major
//!              minor        u16      readers accept any minor (additions live in `extensions`)
//!              endian_tag   u32      = ENDIAN_TAG, written little-endian
//!              header_off   u64      = 64
//!              header_len   u64      postcard bytes of `Header`
//!              data_off     u64      multiple of BLOB_ALIGN, >= header_off + header_len
//!              data_len     u64      data_off + data_len == file length
//!              flags        u32      reserved, 0
//!              header_crc   u32      CRC-32C of the header bytes
//!              reserved     u32      0
//!              preamble_crc u32      CRC-32C of bytes 0..60
//! offset 64  Header: postcard(Header)
//!            zero padding up to data_off
//! data_off   Blobs: raw little-endian arrays, each at an offset (relative to data_off) that is a
//!            multiple of BLOB_ALIGN, zero padding between, no overlaps.
//! ```
//!
//! Because a memory map starts page-aligned and `data_off` and every blob offset are multiples of
//! 64, every blob is 64-byte aligned in memory, so the loader hands out `&[f32]`, `&[f16]`,
//! `&[u16]` and `&[u32]` slices of the mapping without copying.
//!
//! # Tensors
//!
//! A tensor has a logical dense shape (row-major, PyTorch order: Linear `[out, in]`, Conv2d
//! `[out, in/groups, kh, kw]`) and a [`Layout`]. A CSR tensor views its shape as a matrix of
//! `rows = shape[0]` by `cols = product(shape[1..])`; `row_ptr` has `rows + 1` u32 entries,
//! `row_ptr[0] == 0`, non-decreasing, `row_ptr[rows] == nnz`; `col_idx` has `nnz` entries of the
//! declared [`IndexWidth`], each `< cols` and strictly increasing within a row; `values` has `nnz`
//! entries of the tensor's dtype.
//!
//! # Graph
//!
//! Values carry per-example shapes (no batch dimension): `[features]` for vectors and
//! `[channels, height, width]` for feature maps (NCHW without N). Nodes are stored in execution
//! order; each node reads values defined earlier and defines exactly one new value.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub use crate::ops::{
    Add, Attention, AvgPool2d, AvgPool2dUneven, BatchNorm, Concat, Conv2d, ConvTranspose2d,
    Flatten, GlobalAvgPool, LayerNorm, Linear, LinearRows, Lrn, MaxPool2d, Mul, Pad, Reshape,
    Slice, Softmax, Transpose, Upsample,
};

/// First eight bytes of every `.nap` file (PNG-style: catches text-mode transfers).
pub const MAGIC: [u8; 8] = *b"\x89NAP\r\n\x1a\n";
/// Major version written and read by this crate.
pub const MAJOR: u16 = 1;
/// Minor version written by this crate (1: adds [`Layout::BlockCsr`]).
pub const MINOR: u16 = 1;
/// Written little-endian; a reader on a foreign byte order sees it reversed.
pub const ENDIAN_TAG: u32 = 0x0102_0304;
/// Size of the fixed preamble.
pub const PREAMBLE_LEN: usize = 64;
/// Alignment of `data_off` and of every blob offset.
pub const BLOB_ALIGN: usize = 64;
/// Largest header the loader accepts.
pub const MAX_HEADER_LEN: u64 = 16 << 20;
/// Most entries the loader accepts in each of the header's lists of records (values, nodes,
/// tensors, layer statistics, metadata pairs, extensions). A record decodes to up to about 30
/// times its smallest encoding, so this and [`MAX_HEADER_LEN`] together bound what decoding a
/// header allocates to a small multiple of its length.
pub const MAX_LIST_LEN: usize = 1 << 16;

/// Deserializes a list of at most [`MAX_LIST_LEN`] entries, failing as soon as the declared or
/// the actual count passes it.
fn bounded<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(core::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
            write!(f, "a list of at most {MAX_LIST_LEN} entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let declared = seq.size_hint().unwrap_or(0);
            if declared > MAX_LIST_LEN {
                return Err(serde::de::Error::invalid_length(declared, &self));
            }
            let mut v = Vec::with_capacity(declared.min(1024));
            while let Some(x) = seq.next_element()? {
                if v.len() == MAX_LIST_LEN {
                    return Err(serde::de::Error::invalid_length(v.len() + 1, &self));
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Bounded(core::marker::PhantomData))
}

/// Element type of a stored tensor. Values are computed in f32 whatever the storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

/// Width of CSR column indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexWidth {
    U16,
    U32,
}

impl IndexWidth {
    pub fn size(self) -> usize {
        match self {
            IndexWidth::U16 => 2,
            IndexWidth::U32 => 4,
        }
    }

    /// The narrowest width that can index `cols` columns.
    pub fn for_cols(cols: usize) -> Self {
        if cols <= 1 << 16 {
            IndexWidth::U16
        } else {
            IndexWidth::U32
        }
    }
}

/// A byte range of the data section, `offset` relative to `data_off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub offset: u64,
    pub len: u64,
    /// CRC-32C of the blob's bytes.
    pub crc: u32,
}

/// How a tensor's values are stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Row-major dense values.
    Dense { values: BlobRef },
    /// Compressed sparse rows over `[shape[0], product(shape[1..])]`; see the module docs.
    Csr {
        nnz: u64,
        index: IndexWidth,
        row_ptr: BlobRef,
        col_idx: BlobRef,
        values: BlobRef,
    },
    /// Blocked CSR over `[shape[0], product(shape[1..])]`: `block` consecutive rows share each
    /// column index (`block × 1` blocks). `row_ptr` (u32) has `ceil(rows / block) + 1` entries
    /// over block rows, `col_idx` one index per block (`nnzb`), `values` the `block` values of
    /// each block in row order (`nnzb * block`, entries of rows past the last are padding). See
    /// [`crate::model::BlockCsrView`]. Written from minor version 1 on.
    BlockCsr {
        block: u32,
        nnzb: u64,
        index: IndexWidth,
        row_ptr: BlobRef,
        col_idx: BlobRef,
        values: BlobRef,
    },
}

/// One entry of the tensor table; nodes refer to tensors by their index in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<u32>,
    pub dtype: DType,
    pub layout: Layout,
}

/// Element-wise activation, standalone or fused into the producing op.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    None,
    Relu,
    Relu6,
    Sigmoid,
    Tanh,
    /// Exact GELU, `x * Φ(x)` with the error function.
    Gelu,
    Silu,
    HardSwish,
    /// `clamp(alpha * x + beta, 0, 1)` (ONNX `HardSigmoid`; PyTorch's is alpha 1/6, beta 0.5).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x` for `x ≥ 0`, else `alpha · x`.
    LeakyRelu {
        alpha: f32,
    },
}

/// Index into [`Header::tensors`].
pub type TensorId = u32;
/// Index into [`Graph::values`].
pub type ValueId = u32;

/// Graph operations, the compile-time list; each variant's attributes and behaviour live in its
/// module of [`crate::ops`]. New variants go at the end: the variant index is the encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Linear(Linear),
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Act(Activation),
    MaxPool2d(MaxPool2d),
    AvgPool2d(AvgPool2d),
    GlobalAvgPool,
    Add(Add),
    Concat,
    Flatten,
    Reshape(Reshape),
    Softmax,
    Mul,
    Upsample(Upsample),
    ConvTranspose2d(ConvTranspose2d),
    Pad(Pad),
    Transpose(Transpose),
    Lrn(Lrn),
    AvgPool2dUneven(AvgPool2dUneven),
    LinearRows(LinearRows),
    LayerNorm(LayerNorm),
    Slice(Slice),
    Attention(Attention),
}

impl Op {
    /// The weight and bias of a Linear or Conv2d; `None` for every other op.
    pub fn weight_bias(&self) -> Option<(TensorId, Option<TensorId>)> {
        match self {
            Op::Linear(Linear { weight, bias, .. }) | Op::Conv2d(Conv2d { weight, bias, .. }) => {
                Some((*weight, *bias))
            }
            _ => None,
        }
    }

    /// The activation fused into a Linear, LinearRows, Conv2d or Add; `None` for every other op.
    pub fn fused_act(&self) -> Option<Activation> {
        self.clone().act_mut().copied()
    }

    /// [`Op::fused_act`], to change it.
    pub fn act_mut(&mut self) -> Option<&mut Activation> {
        match self {
            Op::Linear(Linear { act, .. })
            | Op::LinearRows(LinearRows { act, .. })
            | Op::Conv2d(Conv2d { act, .. })
            | Op::Add(Add { act }) => Some(act),
            _ => None,
        }
    }

    /// Replaces every tensor id the op refers to by `f(id)`.
    pub fn map_tensors(&mut self, mut f: impl FnMut(TensorId) -> TensorId) {
        match self {
            Op::Linear(Linear { weight, bias, .. })
            | Op::LinearRows(LinearRows { weight, bias, .. })
            | Op::Conv2d(Conv2d { weight, bias, .. })
            | Op::ConvTranspose2d(ConvTranspose2d { weight, bias, .. }) => {
                *weight = f(*weight);
                if let Some(b) = bias {
                    *b = f(*b);
                }
            }
            Op::BatchNorm(BatchNorm {
                gamma,
                beta,
                mean,
                var,
                ..
            }) => {
                for t in [gamma, beta, mean, var] {
                    *t = f(*t);
                }
            }
            Op::LayerNorm(LayerNorm { gamma, beta, .. }) => {
                *gamma = f(*gamma);
                *beta = f(*beta);
            }
            _ => {}
        }
    }

    /// Calls `f` with every tensor id the op refers to.
    pub fn for_each_tensor(&self, mut f: impl FnMut(TensorId)) {
        self.clone().map_tensors(|t| {
            f(t);
            t
        });
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueInfo {
    pub name: String,
    /// Per-example shape, no batch dimension.
    pub shape: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    #[serde(deserialize_with = "bounded")]
    pub values: Vec<ValueInfo>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// In execution order.
    #[serde(deserialize_with = "bounded")]
    pub nodes: Vec<Node>,
}

/// Per-layer statistics written by the pruner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    pub name: String,
    pub params: u64,
    pub nonzero: u64,
}

/// Provenance of a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Where the weights came from (file name of the checkpoint).
    pub source: String,
    /// Architecture name (`mnist-cnn`, `mobilenet-v2`, ...).
    pub arch: String,
    /// `dense` or the pruning method.
    pub method: String,
    /// Input preprocessing: `mnist`, `digits`, `imagenet` or `none`.
    pub preprocess: String,
    /// Class label set: `digits`, `imagenet` or empty.
    pub labels: String,
    #[serde(deserialize_with = "bounded")]
    pub layers: Vec<LayerStats>,
    /// Free-form key/value pairs.
    #[serde(deserialize_with = "bounded")]
    pub extra: Vec<(String, String)>,
}

/// Forward-compatible additions within a major version: readers skip unknown tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub tag: u32,
    pub payload: Vec<u8>,
}

/// The postcard-encoded header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Name and version of the writer.
    pub producer: String,
    pub metadata: Metadata,
    pub graph: Graph,
    #[serde(deserialize_with = "bounded")]
    pub tensors: Vec<TensorEntry>,
    #[serde(deserialize_with = "bounded")]
    pub extensions: Vec<Extension>,
}

/// The fixed preamble, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub major: u16,
    pub minor: u16,
    pub header_off: u64,
    pub header_len: u64,
    pub data_off: u64,
    pub data_len: u64,
    pub flags: u32,
    pub header_crc: u32,
}

impl Preamble {
    pub fn to_bytes(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&ENDIAN_TAG.to_le_bytes());
        b[16..24].copy_from_slice(&self.header_off.to_le_bytes());
        b[24..32].copy_from_slice(&self.header_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_off.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_len.to_le_bytes());
        b[48..52].copy_from_slice(&self.flags.to_le_bytes());
        b[52..56].copy_from_slice(&self.header_crc.to_le_bytes());
        let crc = crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli), as used for the preamble, the header and every blob.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Assembles a `.nap` file: add blobs, then encode the header that refers to them.
#[derive(Default)]
pub struct FileBuilder {
    data: Vec<u8>,
}

impl FileBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends raw bytes at the next aligned offset of the data section.
    pub fn add_blob(&mut self, bytes: &[u8]) -> BlobRef {
        let offset = align_up(self.data.len(), BLOB_ALIGN);
        self.data.resize(offset, 0);
        self.data.extend_from_slice(bytes);
        BlobRef {
            offset: offset as u64,
            len: bytes.len() as u64,
            crc: crc32c(bytes),
        }
    }

    pub fn add_f32(&mut self, v: &[f32]) -> BlobRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_blob(&bytes)
    }

    pub fn add_f16(&mut self, v: &[half::f16]) -> BlobRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_blob(&bytes)
    }

    pub fn add_u16(&mut self, v: &[u16]) -> BlobRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_blob(&bytes)
    }

    pub fn add_u32(&mut self, v: &[u32]) -> BlobRef {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_blob(&bytes)
    }

    /// Encodes preamble, header and data into one file image.
    pub fn finish(self, header: &Header) -> Result<Vec<u8>, postcard::Error> {
        let hdr = postcard::to_allocvec(header)?;
        let data_off = align_up(PREAMBLE_LEN + hdr.len(), BLOB_ALIGN);
        let pre = Preamble {
            major: MAJOR,
            minor: MINOR,
            header_off: PREAMBLE_LEN as u64,
            header_len: hdr.len() as u64,
            data_off: data_off as u64,
            data_len: self.data.len() as u64,
            flags: 0,
            header_crc: crc32c(&hdr),
        };
        let mut out = Vec::with_capacity(data_off + self.data.len());
        out.extend_from_slice(&pre.to_bytes());
        out.extend_from_slice(&hdr);
        out.resize(data_off, 0);
        out.extend_from_slice(&self.data);
        Ok(out)
    }
}
