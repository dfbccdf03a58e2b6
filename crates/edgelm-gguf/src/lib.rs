//! GGUF v2/v3 reading (memory-mapped, bounds-checked, zero-copy tensor views) and writing.
//! Owns the ggml type table ([`GgmlType`]). Must not know about math or models.
//!
//! Files are untrusted: [`GgufFile::open`] / [`GgufFile::from_bytes`] check every count,
//! length and offset against the bytes present and against caps before allocating, mirror
//! llama.cpp's `gguf_init_from_file` checks (dims, alignment, duplicate names), and check
//! that every tensor lies inside the data section without overlapping another. After that,
//! [`GgufFile::tensor_data`] cannot fail. Hostile input gives a [`GgufError`], never a panic.
//!
//! [`GgufWriter`] writes GGUF v3 the way llama.cpp does, rejecting anything the reader
//! would reject.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod file;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use file::{
    GgufFile, TensorInfo, DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME_BYTES,
};
pub use types::{GgmlType, ALL_TYPES};
pub use value::{Array, Metadata, Value};
pub use writer::{GgufWriter, WRITE_VERSION};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GgufFile>();
        assert_send_sync::<GgufError>();
    }
}
