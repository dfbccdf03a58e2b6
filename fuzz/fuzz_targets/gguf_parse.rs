//! Parse arbitrary bytes as GGUF; if they parse, touch everything and check that
//! write → parse is the identity. The property lives in `common/gguf_parse_check.rs`, which
//! `crates/edgelm-gguf/tests/fuzz_replay.rs` also runs over the corpus in `cargo test`.
#![no_main]

#[path = "../common/gguf_parse_check.rs"]
mod gguf_parse_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| gguf_parse_check::check(data));
