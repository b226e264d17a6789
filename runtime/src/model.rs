//! Loading: validate a `.nap` image once, then hand out borrowed slices of it.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use half::f16;

use crate::error::{Error, Result};
use crate::format::*;
use crate::graph;

/// Options for [`Model::from_bytes_with`].
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Check the CRC-32C of every blob. Touches every page of the file.
    pub verify_blobs: bool,
    /// Refuse a model with a NaN or infinite stored weight ([`Error::NonFinite`], naming the
    /// first such tensor). Touches every page of the file. Off by default, since a checksum
    /// only proves the weights are the ones written; [`Model::non_finite`] reports them.
    pub finite_weights: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify_blobs: true,
            finite_weights: false,
        }
    }
}

/// Values of a tensor, in its storage type.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Elems<'a> {
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(v) => v.len(),
            Elems::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Elems::F32(v) => v[i],
            Elems::F16(v) => v[i].to_f32(),
        }
    }

    /// Address of the first element, for zero-copy checks.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            Elems::F32(v) => v.as_ptr() as *const u8,
            Elems::F16(v) => v.as_ptr() as *const u8,
        }
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get_f32(i)).collect()
    }

    /// Elements that are NaN or infinite.
    pub fn count_non_finite(&self) -> usize {
        match self {
            Elems::F32(v) => v.iter().filter(|x| !x.is_finite()).count(),
            Elems::F16(v) => v.iter().filter(|x| !x.is_finite()).count(),
        }
    }
}

/// CSR column indices, in their stored width.
#[derive(Clone, Copy, Debug)]
pub enum Indices<'a> {
    U16(&'a [u16]),
    U32(&'a [u32]),
}

impl Indices<'_> {
    /// The stored index width.
    pub fn width(&self) -> IndexWidth {
        match self {
            Indices::U16(_) => IndexWidth::U16,
            Indices::U32(_) => IndexWidth::U32,
        }
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> usize {
        match self {
            Indices::U16(v) => v[i] as usize,
            Indices::U32(v) => v[i] as usize,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Indices::U16(v) => v.len(),
            Indices::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated CSR matrix: row `r` holds the non-zeros `values[k]` at columns `col_idx[k]` for
/// `k` in `row_ptr[r]..row_ptr[r + 1]`.
///
/// Invariants (checked once by [`CsrView::new`] or at load; the sparse kernels read through raw
/// pointers relying on them): `row_ptr` has `rows + 1` entries, starts at 0, never decreases and
/// ends at `nnz = col_idx.len() = values.len()`; within a row the column indices increase strictly
/// and are `< cols`; u16 indices only when `cols <= 65536`.
#[derive(Clone, Copy, Debug)]
pub struct CsrView<'a> {
    rows: usize,
    cols: usize,
    row_ptr: &'a [u32],
    col_idx: Indices<'a>,
    values: Elems<'a>,
}

impl<'a> CsrView<'a> {
    /// Checks the invariants (O(nnz)) and wraps the slices.
    pub fn new(
        rows: usize,
        cols: usize,
        row_ptr: &'a [u32],
        col_idx: Indices<'a>,
        values: Elems<'a>,
    ) -> core::result::Result<Self, &'static str> {
        let nnz = values.len();
        if col_idx.len() != nnz {
            return Err("has different numbers of column indices and values");
        }
        if rows.checked_add(1) != Some(row_ptr.len()) {
            return Err("row_ptr does not have rows + 1 entries");
        }
        let width = col_idx.width();
        check_csr_invariants(
            rows,
            cols,
            nnz,
            width,
            |r| row_ptr[r] as usize,
            |k| col_idx.get(k),
        )?;
        Ok(CsrView {
            rows,
            cols,
            row_ptr,
            col_idx,
            values,
        })
    }

    /// Wraps the slices without checking.
    ///
    /// # Safety
    /// The invariants [`CsrView::new`] checks hold (e.g. it accepted the same parts before).
    pub(crate) unsafe fn new_unchecked(
        rows: usize,
        cols: usize,
        row_ptr: &'a [u32],
        col_idx: Indices<'a>,
        values: Elems<'a>,
    ) -> Self {
        CsrView {
            rows,
            cols,
            row_ptr,
            col_idx,
            values,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    pub fn row_ptr(&self) -> &'a [u32] {
        self.row_ptr
    }

    pub fn col_idx(&self) -> Indices<'a> {
        self.col_idx
    }

    pub fn values(&self) -> Elems<'a> {
        self.values
    }

    /// Range of `values`/`col_idx` positions holding row `r`.
    #[inline(always)]
    pub fn row_range(&self, r: usize) -> core::ops::Range<usize> {
        self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize
    }
}

/// An owned CSR matrix built from dense row-major values (exact zeros dropped), in any of the
/// storage types the kernels read; for writers, tests, benchmarks and calibration.
#[derive(Clone, Debug)]
pub struct CsrBuf {
    rows: usize,
    cols: usize,
    row_ptr: Vec<u32>,
    idx: IndexBuf,
    vals: ValueBuf,
}

#[derive(Clone, Debug)]
enum IndexBuf {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

#[derive(Clone, Debug)]
enum ValueBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl IndexBuf {
    fn new(c: Vec<u32>, index: IndexWidth) -> Self {
        match index {
            IndexWidth::U16 => IndexBuf::U16(c.iter().map(|&j| j as u16).collect()),
            IndexWidth::U32 => IndexBuf::U32(c),
        }
    }

    fn view(&self) -> Indices<'_> {
        match self {
            IndexBuf::U16(c) => Indices::U16(c),
            IndexBuf::U32(c) => Indices::U32(c),
        }
    }
}

impl ValueBuf {
    fn new(v: Vec<f32>, dtype: crate::kernels::Dtype) -> Self {
        match dtype {
            crate::kernels::Dtype::F32 => ValueBuf::F32(v),
            crate::kernels::Dtype::F16 => {
                ValueBuf::F16(v.iter().map(|&x| f16::from_f32(x)).collect())
            }
        }
    }

    fn view(&self) -> Elems<'_> {
        match self {
            ValueBuf::F32(v) => Elems::F32(v),
            ValueBuf::F16(v) => Elems::F16(v),
        }
    }
}

impl CsrBuf {
    /// Panics if `dense` is shorter than `rows * cols`, if u16 indices cannot address `cols`, or
    /// if there are 2^32 or more non-zeros.
    pub fn from_dense(
        rows: usize,
        cols: usize,
        dense: &[f32],
        dtype: crate::kernels::Dtype,
        index: IndexWidth,
    ) -> Self {
        assert!(
            dense.len() >= rows * cols,
            "CsrBuf: dense shorter than rows * cols"
        );
        assert!(
            index == IndexWidth::U32 || cols <= 1 << 16,
            "CsrBuf: u16 indices cannot address {cols} columns"
        );
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut c = Vec::new();
        let mut v = Vec::new();
        row_ptr.push(0u32);
        for row in dense[..rows * cols].chunks_exact(cols.max(1)).take(rows) {
            for (j, &x) in row.iter().enumerate() {
                if x != 0.0 {
                    c.push(j as u32);
                    v.push(x);
                }
            }
            row_ptr.push(u32::try_from(v.len()).expect("CsrBuf: 2^32 or more non-zeros"));
        }
        row_ptr.resize(rows + 1, 0);
        let (idx, vals) = (IndexBuf::new(c, index), ValueBuf::new(v, dtype));
        CsrBuf {
            rows,
            cols,
            row_ptr,
            idx,
            vals,
        }
    }

    /// The matrix as a kernel operand.
    pub fn view(&self) -> CsrView<'_> {
        CsrView {
            rows: self.rows,
            cols: self.cols,
            row_ptr: &self.row_ptr,
            col_idx: self.idx.view(),
            values: self.vals.view(),
        }
    }
}

/// Blocked CSR with `block × 1` blocks: `block` consecutive rows share each column index.
/// Block row `b` (rows `b * block..(b + 1) * block`, the last one possibly partial) holds the
/// blocks `k` in `row_ptr[b]..row_ptr[b + 1]`: column `col_idx[k]`, values
/// `values[k * block..(k + 1) * block]` for its rows in order (entries of rows past `rows` are
/// padding and never read into an output).
///
/// Invariants (checked by [`BlockCsrView::new`]): `block >= 1`; `row_ptr` has
/// `ceil(rows / block) + 1` entries, starts at 0, never decreases and ends at `nnzb =
/// col_idx.len()`; `values.len() == nnzb * block`; within a block row the column indices increase
/// strictly and are `< cols`; u16 indices only when `cols <= 65536`.
#[derive(Clone, Copy, Debug)]
pub struct BlockCsrView<'a> {
    rows: usize,
    cols: usize,
    block: usize,
    row_ptr: &'a [u32],
    col_idx: Indices<'a>,
    values: Elems<'a>,
}

impl<'a> BlockCsrView<'a> {
    /// Checks the invariants (O(blocks)) and wraps the slices.
    pub fn new(
        rows: usize,
        cols: usize,
        block: usize,
        row_ptr: &'a [u32],
        col_idx: Indices<'a>,
        values: Elems<'a>,
    ) -> core::result::Result<Self, &'static str> {
        if block == 0 {
            return Err("block has zero rows");
        }
        let nnzb = col_idx.len();
        if nnzb.checked_mul(block) != Some(values.len()) {
            return Err("values are not block * blocks long");
        }
        let brows = rows.div_ceil(block);
        if brows.checked_add(1) != Some(row_ptr.len()) {
            return Err("row_ptr does not have ceil(rows / block) + 1 entries");
        }
        let width = col_idx.width();
        check_csr_invariants(
            brows,
            cols,
            nnzb,
            width,
            |r| row_ptr[r] as usize,
            |k| col_idx.get(k),
        )?;
        Ok(BlockCsrView {
            rows,
            cols,
            block,
            row_ptr,
            col_idx,
            values,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Block rows: `ceil(rows / block)`.
    pub fn block_rows(&self) -> usize {
        self.row_ptr.len() - 1
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.col_idx.len()
    }

    pub fn row_ptr(&self) -> &'a [u32] {
        self.row_ptr
    }

    pub fn col_idx(&self) -> Indices<'a> {
        self.col_idx
    }

    pub fn values(&self) -> Elems<'a> {
        self.values
    }

    /// Range of block positions (into `col_idx`; values at `block` times these) of block row `b`.
    #[inline(always)]
    pub fn block_range(&self, b: usize) -> core::ops::Range<usize> {
        self.row_ptr[b] as usize..self.row_ptr[b + 1] as usize
    }

    /// The matrix as dense row-major f32 (allocates; for tools and tests).
    pub fn to_dense_f32(&self) -> Vec<f32> {
        TensorView::BlockCsr(*self).to_dense_f32()
    }
}

/// An owned [`BlockCsrView`] built from dense row-major values: a block is stored when any of
/// its entries is non-zero.
#[derive(Clone, Debug)]
pub struct BlockCsrBuf {
    rows: usize,
    cols: usize,
    block: usize,
    row_ptr: Vec<u32>,
    idx: IndexBuf,
    vals: ValueBuf,
}

impl BlockCsrBuf {
    /// Panics if `block` is 0, if `dense` is shorter than `rows * cols`, if u16 indices cannot
    /// address `cols`, or if there are 2^32 or more blocks.
    pub fn from_dense(
        rows: usize,
        cols: usize,
        block: usize,
        dense: &[f32],
        dtype: crate::kernels::Dtype,
        index: IndexWidth,
    ) -> Self {
        assert!(block > 0, "BlockCsrBuf: block of zero rows");
        assert!(
            dense.len() >= rows * cols,
            "BlockCsrBuf: dense shorter than rows * cols"
        );
        assert!(
            index == IndexWidth::U32 || cols <= 1 << 16,
            "BlockCsrBuf: u16 indices cannot address {cols} columns"
        );
        let at = |r: usize, c: usize| if r < rows { dense[r * cols + c] } else { 0.0 };
        let (mut row_ptr, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new());
        row_ptr.push(0u32);
        for b in 0..rows.div_ceil(block) {
            for j in 0..cols {
                if (0..block).any(|t| at(b * block + t, j) != 0.0) {
                    c.push(j as u32);
                    v.extend((0..block).map(|t| at(b * block + t, j)));
                }
            }
            row_ptr.push(u32::try_from(c.len()).expect("BlockCsrBuf: 2^32 or more blocks"));
        }
        let (idx, vals) = (IndexBuf::new(c, index), ValueBuf::new(v, dtype));
        BlockCsrBuf {
            rows,
            cols,
            block,
            row_ptr,
            idx,
            vals,
        }
    }

    /// The matrix as a kernel operand.
    pub fn view(&self) -> BlockCsrView<'_> {
        BlockCsrView {
            rows: self.rows,
            cols: self.cols,
            block: self.block,
            row_ptr: &self.row_ptr,
            col_idx: self.idx.view(),
            values: self.vals.view(),
        }
    }
}

/// A tensor's storage, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub enum TensorView<'a> {
    Dense(Elems<'a>),
    Csr(CsrView<'a>),
    BlockCsr(BlockCsrView<'a>),
}

impl<'a> TensorView<'a> {
    /// Stored non-zeros (all elements for dense storage).
    pub fn stored(&self) -> usize {
        match self {
            TensorView::Dense(e) => e.len(),
            TensorView::Csr(c) => c.values.len(),
            TensorView::BlockCsr(b) => b.values.len(),
        }
    }

    /// Elements of the dense tensor, `None` if that overflows `usize`.
    pub fn numel(&self) -> Option<usize> {
        match self {
            TensorView::Dense(e) => Some(e.len()),
            TensorView::Csr(c) => c.rows.checked_mul(c.cols),
            TensorView::BlockCsr(b) => b.rows.checked_mul(b.cols),
        }
    }

    /// Writes the stored elements into `out`, a row-major dense buffer of at least
    /// [`TensorView::numel`] elements; entries not stored are left as they are (zero them first
    /// for a dense copy).
    pub fn scatter_into(&self, out: &mut [f32]) {
        match self {
            TensorView::Dense(e) => {
                for (i, o) in out[..e.len()].iter_mut().enumerate() {
                    *o = e.get_f32(i);
                }
            }
            TensorView::Csr(c) => {
                for r in 0..c.rows {
                    for k in c.row_ptr[r] as usize..c.row_ptr[r + 1] as usize {
                        out[r * c.cols + c.col_idx.get(k)] = c.values.get_f32(k);
                    }
                }
            }
            TensorView::BlockCsr(b) => {
                for br in 0..b.block_rows() {
                    for k in b.block_range(br) {
                        let col = b.col_idx.get(k);
                        for t in 0..b.block {
                            let r = br * b.block + t;
                            if r < b.rows {
                                out[r * b.cols + col] = b.values.get_f32(k * b.block + t);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The tensor as a dense row-major f32 vector (allocates; for tools and tests).
    pub fn to_dense_f32(&self) -> Vec<f32> {
        let mut out = alloc::vec![0f32; self.numel().expect("validated tensor shape")];
        self.scatter_into(&mut out);
        out
    }
}

/// 64 bytes at a 64-byte aligned address.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

/// A 64-byte aligned, owned byte buffer, for inputs that are not memory-mapped.
pub struct AlignedBytes {
    chunks: Vec<Chunk>,
    len: usize,
}

impl AlignedBytes {
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut chunks = alloc::vec![Chunk([0; 64]); bytes.len().div_ceil(64)];
        for (dst, src) in chunks.iter_mut().zip(bytes.chunks(64)) {
            dst.0[..src.len()].copy_from_slice(src);
        }
        AlignedBytes {
            chunks,
            len: bytes.len(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of `chunks` are initialised and owned by `self`.
        unsafe { core::slice::from_raw_parts(self.chunks.as_ptr() as *const u8, self.len) }
    }
}

enum Storage<'a> {
    Borrowed(&'a [u8]),
    Owned(AlignedBytes),
    #[cfg(feature = "std")]
    Mapped(memmap2::Mmap),
}

impl Storage<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Borrowed(b) => b,
            Storage::Owned(a) => a.as_bytes(),
            #[cfg(feature = "std")]
            Storage::Mapped(m) => m,
        }
    }
}

/// Absolute byte range of a blob, validated.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    len: usize,
}

#[derive(Clone, Copy, Debug)]
enum TensorSpans {
    Dense {
        values: Span,
    },
    Csr {
        rows: usize,
        cols: usize,
        index: IndexWidth,
        row_ptr: Span,
        col_idx: Span,
        values: Span,
    },
    BlockCsr {
        rows: usize,
        cols: usize,
        block: usize,
        index: IndexWidth,
        row_ptr: Span,
        col_idx: Span,
        values: Span,
    },
}

/// A validated `.nap` model. Weight accessors borrow from the loaded bytes without copying.
pub struct Model<'a> {
    storage: Storage<'a>,
    header: Header,
    preamble: Preamble,
    spans: Vec<TensorSpans>,
}

impl core::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Model")
            .field("preamble", &self.preamble)
            .field("tensors", &self.header.tensors.len())
            .field("nodes", &self.header.graph.nodes.len())
            .finish()
    }
}

/// Number of elements of `shape`, with overflow checks.
pub fn numel(shape: &[u32]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Parses and checks the fixed preamble against the file length.
pub fn parse_preamble(bytes: &[u8]) -> Result<Preamble> {
    if bytes.len() < PREAMBLE_LEN {
        return Err(Error::Truncated {
            what: "preamble",
            need: PREAMBLE_LEN as u64,
            have: bytes.len() as u64,
        });
    }
    if bytes[0..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let tag = u32_le(bytes, 12);
    if tag != ENDIAN_TAG {
        return Err(Error::BadEndianTag(tag));
    }
    let major = u16_le(bytes, 8);
    let minor = u16_le(bytes, 10);
    if major != MAJOR {
        return Err(Error::UnsupportedVersion { major, minor });
    }
    if u32_le(bytes, 60) != crc32c(&bytes[..60]) {
        return Err(Error::ChecksumMismatch {
            what: "preamble".to_string(),
        });
    }
    let p = Preamble {
        major,
        minor,
        header_off: u64_le(bytes, 16),
        header_len: u64_le(bytes, 24),
        data_off: u64_le(bytes, 32),
        data_len: u64_le(bytes, 40),
        flags: u32_le(bytes, 48),
        header_crc: u32_le(bytes, 52),
    };
    if p.header_off != PREAMBLE_LEN as u64 {
        return Err(Error::BadPreamble("header offset is not 64"));
    }
    if p.header_len > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge(p.header_len));
    }
    let header_end = p.header_off + p.header_len;
    if p.data_off < header_end {
        return Err(Error::BadPreamble("data section overlaps the header"));
    }
    if !p.data_off.is_multiple_of(BLOB_ALIGN as u64) {
        return Err(Error::BadPreamble("data offset is not 64-byte aligned"));
    }
    let end = p
        .data_off
        .checked_add(p.data_len)
        .ok_or(Error::Overflow("data section"))?;
    if end != bytes.len() as u64 {
        return Err(Error::Truncated {
            what: "data section",
            need: end,
            have: bytes.len() as u64,
        });
    }
    Ok(p)
}

fn decode_header(bytes: &[u8], p: &Preamble) -> Result<Header> {
    let h = &bytes[p.header_off as usize..(p.header_off + p.header_len) as usize];
    if crc32c(h) != p.header_crc {
        return Err(Error::ChecksumMismatch {
            what: "header".to_string(),
        });
    }
    let (header, rest) = postcard::take_from_bytes::<Header>(h).map_err(|_| Error::HeaderDecode)?;
    if !rest.is_empty() {
        return Err(Error::HeaderTrailingBytes(rest.len() as u64));
    }
    Ok(header)
}

struct BlobChecker<'b> {
    bytes: &'b [u8],
    data_off: usize,
    data_len: u64,
    verify: bool,
    seen: Vec<(u64, u64)>,
}

impl BlobChecker<'_> {
    fn check(&mut self, name: &str, b: &BlobRef, elem: usize, count: usize) -> Result<Span> {
        let bad = |reason| Error::BadBlob {
            tensor: name.to_string(),
            reason,
        };
        let want = count
            .checked_mul(elem)
            .ok_or(Error::Overflow("blob length"))? as u64;
        if b.len != want {
            return Err(Error::BadTensor {
                tensor: name.to_string(),
                reason: format!("blob holds {} bytes, shape needs {}", b.len, want),
            });
        }
        if !b.offset.is_multiple_of(BLOB_ALIGN as u64) {
            return Err(bad("offset is not 64-byte aligned"));
        }
        let end = b
            .offset
            .checked_add(b.len)
            .ok_or(Error::Overflow("blob end"))?;
        if end > self.data_len {
            return Err(bad("extends past the data section"));
        }
        let start = self.data_off + b.offset as usize;
        let len = b.len as usize;
        let slice = &self.bytes[start..start + len];
        if !(slice.as_ptr() as usize).is_multiple_of(elem) {
            return Err(Error::Misaligned {
                tensor: name.to_string(),
            });
        }
        if self.verify && crc32c(slice) != b.crc {
            return Err(Error::ChecksumMismatch {
                what: format!("tensor {name:?}"),
            });
        }
        if len > 0 {
            self.seen.push((b.offset, end));
        }
        Ok(Span { start, len })
    }

    fn check_overlaps(&mut self) -> Result<()> {
        self.seen.sort_unstable();
        for w in self.seen.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::BadBlob {
                    tensor: format!("at offset {}", w[1].0),
                    reason: "overlaps another blob",
                });
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn check_csr(
    name: &str,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    nnz: usize,
    index: IndexWidth,
    row_ptr: Span,
    col_idx: Span,
) -> Result<()> {
    check_csr_invariants(
        rows,
        cols,
        nnz,
        index,
        |r| u32_le(bytes, row_ptr.start + 4 * r) as usize,
        |k| match index {
            IndexWidth::U16 => u16_le(bytes, col_idx.start + 2 * k) as usize,
            IndexWidth::U32 => u32_le(bytes, col_idx.start + 4 * k) as usize,
        },
    )
    .map_err(|reason| Error::BadCsr {
        tensor: name.to_string(),
        reason,
    })
}

/// The [`CsrView`] invariants over `rows + 1` row pointers `rp` and `nnz` column indices `col`.
fn check_csr_invariants(
    rows: usize,
    cols: usize,
    nnz: usize,
    index: IndexWidth,
    rp: impl Fn(usize) -> usize,
    col: impl Fn(usize) -> usize,
) -> core::result::Result<(), &'static str> {
    if rp(0) != 0 {
        return Err("row_ptr[0] is not 0");
    }
    if rp(rows) != nnz {
        return Err("row_ptr[rows] is not nnz");
    }
    if index == IndexWidth::U16 && cols > 1 << 16 {
        return Err("u16 indices cannot address this many columns");
    }
    for r in 0..rows {
        let (a, b) = (rp(r), rp(r + 1));
        if b < a || b > nnz {
            return Err("row_ptr is not monotone");
        }
        let mut prev: Option<usize> = None;
        for k in a..b {
            let c = col(k);
            if c >= cols {
                return Err("column index out of range");
            }
            if prev.is_some_and(|p| c <= p) {
                return Err("column indices not increasing within a row");
            }
            prev = Some(c);
        }
    }
    Ok(())
}

fn validate_tensors(
    bytes: &[u8],
    p: &Preamble,
    h: &Header,
    verify: bool,
) -> Result<Vec<TensorSpans>> {
    let mut bc = BlobChecker {
        bytes,
        data_off: p.data_off as usize,
        data_len: p.data_len,
        verify,
        seen: Vec::new(),
    };
    let mut spans = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        let name = t.name.as_str();
        let n = numel(&t.shape).ok_or(Error::Overflow("tensor shape"))?;
        let es = t.dtype.size();
        let span = match &t.layout {
            Layout::Dense { values } => TensorSpans::Dense {
                values: bc.check(name, values, es, n)?,
            },
            Layout::Csr {
                nnz,
                index,
                row_ptr,
                col_idx,
                values,
            } => {
                if t.shape.is_empty() {
                    return Err(Error::BadTensor {
                        tensor: name.to_string(),
                        reason: "CSR tensor needs at least one dimension".to_string(),
                    });
                }
                let rows = t.shape[0] as usize;
                let cols = numel(&t.shape[1..]).ok_or(Error::Overflow("tensor shape"))?;
                let nnz = usize::try_from(*nnz).map_err(|_| Error::Overflow("nnz"))?;
                if nnz > n {
                    return Err(Error::BadCsr {
                        tensor: name.to_string(),
                        reason: "more non-zeros than elements",
                    });
                }
                let rows1 = rows.checked_add(1).ok_or(Error::Overflow("rows"))?;
                let rp = bc.check(name, row_ptr, 4, rows1)?;
                let ci = bc.check(name, col_idx, index.size(), nnz)?;
                let vs = bc.check(name, values, es, nnz)?;
                check_csr(name, bytes, rows, cols, nnz, *index, rp, ci)?;
                TensorSpans::Csr {
                    rows,
                    cols,
                    index: *index,
                    row_ptr: rp,
                    col_idx: ci,
                    values: vs,
                }
            }
            Layout::BlockCsr {
                block,
                nnzb,
                index,
                row_ptr,
                col_idx,
                values,
            } => {
                let bad = |reason| Error::BadCsr {
                    tensor: name.to_string(),
                    reason,
                };
                if t.shape.is_empty() {
                    return Err(bad("blocked CSR tensor needs at least one dimension"));
                }
                let block = *block as usize;
                if !(1..=64).contains(&block) {
                    return Err(bad("block must have 1 to 64 rows"));
                }
                let rows = t.shape[0] as usize;
                let cols = numel(&t.shape[1..]).ok_or(Error::Overflow("tensor shape"))?;
                let brows = rows.div_ceil(block);
                let nnzb = usize::try_from(*nnzb).map_err(|_| Error::Overflow("nnzb"))?;
                if brows.checked_mul(cols).is_none_or(|m| nnzb > m) {
                    return Err(bad("more blocks than block positions"));
                }
                let nvals = nnzb.checked_mul(block).ok_or(Error::Overflow("nnzb"))?;
                let brows1 = brows.checked_add(1).ok_or(Error::Overflow("rows"))?;
                let rp = bc.check(name, row_ptr, 4, brows1)?;
                let ci = bc.check(name, col_idx, index.size(), nnzb)?;
                let vs = bc.check(name, values, es, nvals)?;
                check_csr(name, bytes, brows, cols, nnzb, *index, rp, ci)?;
                TensorSpans::BlockCsr {
                    rows,
                    cols,
                    block,
                    index: *index,
                    row_ptr: rp,
                    col_idx: ci,
                    values: vs,
                }
            }
        };
        spans.push(span);
    }
    bc.check_overlaps()?;
    Ok(spans)
}

impl<'a> Model<'a> {
    /// Validates `bytes` (see the crate docs for the checks) and borrows them.
    /// Blobs are cast in place, so `bytes` must be aligned like its elements (a memory map or an
    /// [`AlignedBytes`] is; otherwise [`Error::Misaligned`]).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, LoadOptions::default())
    }

    pub fn from_bytes_with(bytes: &'a [u8], opts: LoadOptions) -> Result<Self> {
        Self::new(Storage::Borrowed(bytes), opts)
    }

    fn new(storage: Storage<'a>, opts: LoadOptions) -> Result<Self> {
        let bytes = storage.bytes();
        let preamble = parse_preamble(bytes)?;
        let header = decode_header(bytes, &preamble)?;
        let spans = validate_tensors(bytes, &preamble, &header, opts.verify_blobs)?;
        graph::validate(&header)?;
        let m = Model {
            storage,
            header,
            preamble,
            spans,
        };
        if opts.finite_weights {
            if let Some(&(id, count)) = m.non_finite().first() {
                return Err(Error::NonFinite {
                    tensor: m.tensor_entry(id).name.clone(),
                    count: count as u64,
                });
            }
        }
        Ok(m)
    }

    /// Tensors with NaN or infinite stored values, with how many each has, in table order.
    pub fn non_finite(&self) -> Vec<(TensorId, usize)> {
        (0..self.header.tensors.len() as TensorId)
            .filter_map(|id| {
                let n = match self.tensor(id) {
                    TensorView::Dense(e) => e.count_non_finite(),
                    TensorView::Csr(c) => c.values.count_non_finite(),
                    TensorView::BlockCsr(b) => b.values.count_non_finite(),
                };
                (n > 0).then_some((id, n))
            })
            .collect()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    pub fn graph(&self) -> &Graph {
        &self.header.graph
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn tensor_entry(&self, id: TensorId) -> &TensorEntry {
        &self.header.tensors[id as usize]
    }

    /// The whole loaded image.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    fn elems(&self, dtype: DType, s: Span) -> Elems<'_> {
        let b = &self.storage.bytes()[s.start..s.start + s.len];
        // SAFETY: `s` was checked at load to lie inside the image and to be aligned for `dtype`
        // (address % size == 0), its length is a multiple of the element size, the image is never
        // mutated while `self` lives, and f32 and f16 accept every bit pattern.
        unsafe {
            match dtype {
                DType::F32 => Elems::F32(core::slice::from_raw_parts(
                    b.as_ptr() as *const f32,
                    s.len / 4,
                )),
                DType::F16 => Elems::F16(core::slice::from_raw_parts(
                    b.as_ptr() as *const f16,
                    s.len / 2,
                )),
            }
        }
    }

    /// Borrowed view of tensor `id`.
    ///
    /// # Panics
    /// If `id` is not an index of the tensor table (graph references are validated at load).
    pub fn tensor(&self, id: TensorId) -> TensorView<'_> {
        let dtype = self.header.tensors[id as usize].dtype;
        match self.spans[id as usize] {
            TensorSpans::Dense { values } => TensorView::Dense(self.elems(dtype, values)),
            TensorSpans::Csr {
                rows,
                cols,
                index,
                row_ptr,
                col_idx,
                values,
            } => {
                let (row_ptr, col_idx) = self.index_slices(index, row_ptr, col_idx);
                TensorView::Csr(CsrView {
                    rows,
                    cols,
                    row_ptr,
                    col_idx,
                    values: self.elems(dtype, values),
                })
            }
            TensorSpans::BlockCsr {
                rows,
                cols,
                block,
                index,
                row_ptr,
                col_idx,
                values,
            } => {
                let (row_ptr, col_idx) = self.index_slices(index, row_ptr, col_idx);
                TensorView::BlockCsr(BlockCsrView {
                    rows,
                    cols,
                    block,
                    row_ptr,
                    col_idx,
                    values: self.elems(dtype, values),
                })
            }
        }
    }

    /// The row pointers and column indices of a sparse tensor, borrowed from the image.
    fn index_slices(
        &self,
        index: IndexWidth,
        row_ptr: Span,
        col_idx: Span,
    ) -> (&[u32], Indices<'_>) {
        let bytes = self.storage.bytes();
        // SAFETY: as in `elems`: spans checked at load for bounds, alignment and length.
        unsafe {
            let rp = core::slice::from_raw_parts(
                bytes[row_ptr.start..].as_ptr() as *const u32,
                row_ptr.len / 4,
            );
            let ci = match index {
                IndexWidth::U16 => Indices::U16(core::slice::from_raw_parts(
                    bytes[col_idx.start..].as_ptr() as *const u16,
                    col_idx.len / 2,
                )),
                IndexWidth::U32 => Indices::U32(core::slice::from_raw_parts(
                    bytes[col_idx.start..].as_ptr() as *const u32,
                    col_idx.len / 4,
                )),
            };
            (rp, ci)
        }
    }

    /// Elements of tensor `id` (dense size) and how many are non-zero in storage.
    pub fn tensor_density(&self, id: TensorId) -> (usize, usize) {
        let n = numel(&self.header.tensors[id as usize].shape).unwrap_or(0);
        match self.tensor(id) {
            TensorView::Dense(e) => {
                let nz = (0..e.len()).filter(|&i| e.get_f32(i) != 0.0).count();
                (n, nz)
            }
            TensorView::Csr(c) => (n, c.values.len()),
            TensorView::BlockCsr(b) => {
                let v = b.values;
                (n, (0..v.len()).filter(|&i| v.get_f32(i) != 0.0).count())
            }
        }
    }
}

impl Model<'static> {
    /// Copies `bytes` into an aligned buffer, then loads it.
    pub fn from_vec(bytes: &[u8]) -> Result<Self> {
        Self::new(
            Storage::Owned(AlignedBytes::copy_from(bytes)),
            LoadOptions::default(),
        )
    }

    /// Memory-maps `path` and loads it without copying any blob.
    ///
    /// The file must not be modified or truncated while the model lives (the mapping would change
    /// under the validated views).
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::open_with(path, LoadOptions::default())
    }

    #[cfg(feature = "std")]
    pub fn open_with(path: impl AsRef<std::path::Path>, opts: LoadOptions) -> Result<Self> {
        use std::string::ToString;
        let path = path.as_ref();
        let file =
            std::fs::File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        // SAFETY: the mapping is read-only and private to this process; the documented contract of
        // `open` is that the file is not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io(e.to_string()))?;
        Self::new(Storage::Mapped(map), opts)
    }
}
