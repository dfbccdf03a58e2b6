//! GGUF v2/v3 reading (memory-mapped, bounds-checked, zero-copy tensor views) and writing.
//! Owns the ggml type table ([`GgmlType`]). Must not know about math or models.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod types;
pub use types::{GgmlType, ALL_TYPES};
