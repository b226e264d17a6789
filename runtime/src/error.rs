use alloc::string::String;
use core::fmt;

/// Everything that can be wrong with a `.nap` file or with a request to run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input is shorter than the structure it must hold.
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    BadMagic,
    /// Written on a machine of another byte order, or corrupted.
    BadEndianTag(u32),
    UnsupportedVersion {
        major: u16,
        minor: u16,
    },
    ChecksumMismatch {
        what: String,
    },
    /// An offset or length of the preamble is out of range or misaligned.
    BadPreamble(&'static str),
    HeaderTooLarge(u64),
    /// postcard could not decode the header.
    HeaderDecode,
    /// The header decoded but left bytes unread.
    HeaderTrailingBytes(u64),
    /// A blob lies outside the data section, is misaligned or overlaps another.
    BadBlob {
        tensor: String,
        reason: &'static str,
    },
    /// A blob is not aligned in memory for its element type (the input slice was misaligned).
    Misaligned {
        tensor: String,
    },
    /// A tensor's shape, dtype or layout is inconsistent.
    BadTensor {
        tensor: String,
        reason: String,
    },
    /// A CSR invariant does not hold.
    BadCsr {
        tensor: String,
        reason: &'static str,
    },
    /// The graph refers to a missing value or tensor, or shapes do not agree.
    BadGraph {
        node: String,
        reason: String,
    },
    /// A size computation overflowed.
    Overflow(&'static str),
    /// A caller passed a buffer of the wrong size.
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A request exceeds a resource limit of the runtime.
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// A stored weight is NaN or infinite (refused under [`crate::LoadOptions::finite_weights`]).
    NonFinite {
        tensor: String,
        count: u64,
    },
    /// Reading or mapping a file failed (std only).
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { what, need, have } => {
                write!(f, "truncated {what}: need {need} bytes, have {have}")
            }
            Error::BadMagic => write!(f, "not a .nap file (bad magic)"),
            Error::BadEndianTag(t) => write!(f, "bad endianness tag {t:#010x}"),
            Error::UnsupportedVersion { major, minor } => write!(
                f,
                "unsupported .nap version {major}.{minor} (this runtime reads {}.x)",
                crate::format::MAJOR
            ),
            Error::ChecksumMismatch { what } => write!(f, "checksum mismatch in {what}"),
            Error::BadPreamble(r) => write!(f, "bad preamble: {r}"),
            Error::HeaderTooLarge(n) => write!(f, "header of {n} bytes exceeds the limit"),
            Error::HeaderDecode => write!(f, "header does not decode"),
            Error::HeaderTrailingBytes(n) => write!(f, "header has {n} trailing bytes"),
            Error::BadBlob { tensor, reason } => write!(f, "tensor {tensor:?}: blob {reason}"),
            Error::Misaligned { tensor } => {
                write!(
                    f,
                    "tensor {tensor:?}: blob misaligned in memory (load from an aligned buffer)"
                )
            }
            Error::BadTensor { tensor, reason } => write!(f, "tensor {tensor:?}: {reason}"),
            Error::BadCsr { tensor, reason } => write!(f, "tensor {tensor:?}: CSR {reason}"),
            Error::BadGraph { node, reason } => write!(f, "graph node {node:?}: {reason}"),
            Error::Overflow(what) => write!(f, "size overflow in {what}"),
            Error::Shape {
                what,
                expected,
                got,
            } => {
                write!(f, "{what}: expected {expected} elements, got {got}")
            }
            Error::TooLarge { what, size, limit } => {
                write!(f, "{what}: {size} exceeds the limit of {limit}")
            }
            Error::NonFinite { tensor, count } => {
                write!(
                    f,
                    "tensor {tensor}: {count} stored values are NaN or infinite"
                )
            }
            Error::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T, E = Error> = core::result::Result<T, E>;
