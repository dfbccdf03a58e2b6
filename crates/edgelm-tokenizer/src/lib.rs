//! Text ↔ token ids for the models edgelm runs, exactly as llama.cpp tokenizes: byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`, with llama.cpp's per-model pre-tokenizers) and
//! SentencePiece (`"llama"`), special tokens, streaming detokenization and chat templates.
//!
//! Reads vocabularies from GGUF metadata ([`Tokenizer::from_gguf`]) or plain data
//! ([`Tokenizer::from_vocab`]). Must not know about weights or inference.
//!
//! Reference: llama.cpp's `src/llama-vocab.cpp` and `src/unicode.cpp`; the Unicode class table
//! in `unicode_data.rs` is generated from its `src/unicode-data.cpp` by
//! `scripts/gen_unicode_table.py`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chat;
mod error;
mod gguf;
mod pretokenize;
mod stream;
mod unicode;
#[rustfmt::skip]
mod unicode_data;
mod vocab;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::TokenizerError;
pub use stream::StreamDecoder;
pub use vocab::{SpecialIds, Tokenizer, VocabData};

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(meta: &edgelm_gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_vocab(gguf::vocab_from_gguf(meta)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<ChatTemplate>();
    }
}
