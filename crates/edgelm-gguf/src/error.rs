//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong reading, querying or writing a GGUF file.
///
/// Offsets are absolute byte offsets into the file; `what` names the field being read
/// (with the key or tensor it belongs to where known).
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes of the file.
        found: [u8; 4],
    },
    /// GGUF v1 (obsolete), v0, or a version newer than 3 (a huge value usually means a
    /// big-endian file).
    #[error(
        "unsupported GGUF version {0} (supported: 2 and 3; v1 is obsolete; \
         a huge value suggests a big-endian file)"
    )]
    UnsupportedVersion(u32),
    /// The file ends (or a declared length runs) past the end of the data.
    #[error("file truncated: {what} at offset {offset} runs past the end of the file")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where it starts.
        offset: u64,
    },
    /// A count or length exceeds a sanity cap.
    #[error("{what} is {value}, more than the limit of {limit}")]
    TooLarge {
        /// The field.
        what: String,
        /// Its value in the file.
        value: u64,
        /// The largest value accepted.
        limit: u64,
    },
    /// A tensor's ggml type id is not one this crate knows.
    #[error("tensor '{tensor}' has unknown ggml type id {id}")]
    UnknownType {
        /// The tensor.
        tensor: String,
        /// The type id in the file.
        id: u32,
    },
    /// A metadata value (or array element) type id is not a GGUF value type.
    #[error("metadata key '{key}' has unknown value type id {id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id in the file.
        id: u32,
    },
    /// A string is not valid UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        what: String,
        /// Where the string's bytes start.
        offset: u64,
    },
    /// A metadata key is the empty string.
    #[error("metadata key #{index} is empty")]
    EmptyKey {
        /// The key's index in the file.
        index: u64,
    },
    /// A tensor's bytes do not lie inside the data section.
    #[error(
        "tensor '{name}' bytes [{offset}, {offset} + {n_bytes}) lie outside the data section \
         of {data_size} bytes"
    )]
    TensorOutOfBounds {
        /// The tensor.
        name: String,
        /// Its offset, relative to the data section.
        offset: u64,
        /// Its size.
        n_bytes: u64,
        /// The size of the data section (file size minus data offset).
        data_size: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors '{a}' and '{b}' overlap")]
    TensorOverlap {
        /// The tensor at the lower offset.
        a: String,
        /// The tensor that starts inside it.
        b: String,
    },
    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}")]
    TensorMisaligned {
        /// The tensor.
        name: String,
        /// Its offset, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's shape is invalid for its type (too many dims, overflow, partial blocks,
    /// or data of the wrong length handed to the writer).
    #[error("tensor '{name}' has a bad shape {dims:?}: {reason}")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its dims as read so far (ggml order).
        dims: Vec<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key appears twice.
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),
    /// A tensor name appears twice.
    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment is {0}, not a nonzero power of two")]
    BadAlignment(u64),
    /// A required metadata key is absent.
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    /// A metadata value has another type than the one asked for.
    #[error("metadata key '{key}' is {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type asked for.
        expected: &'static str,
        /// The type in the file.
        found: String,
    },
    /// An integer metadata value does not fit the type asked for.
    #[error("metadata key '{key}' value {value} does not fit in {target}")]
    OutOfRange {
        /// The key.
        key: String,
        /// The value, printed.
        value: String,
        /// The type asked for.
        target: &'static str,
    },
    /// Opening, mapping or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl GgufError {
    /// Appends ` of <ctx>` to the field description of positional errors, so that a failure
    /// deep in a value names the key or tensor it belongs to.
    pub(crate) fn within(mut self, ctx: impl FnOnce() -> String) -> Self {
        match &mut self {
            GgufError::Truncated { what, .. }
            | GgufError::TooLarge { what, .. }
            | GgufError::BadUtf8 { what, .. } => {
                what.push_str(" of ");
                what.push_str(&ctx());
            }
            _ => {}
        }
        self
    }
}
