//! The crate's error type.

/// Errors from building a tokenizer, encoding text or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key is absent.
    #[error("tokenizer metadata key `{key}` is missing")]
    MissingKey {
        /// The GGUF key.
        key: String,
    },
    /// The GGUF reader rejected a metadata key (wrong type, out of range).
    #[error("tokenizer metadata key `{key}`")]
    Gguf {
        /// The GGUF key.
        key: String,
        /// The reader's error.
        #[source]
        source: edgelm_gguf::GgufError,
    },
    /// A metadata key has an unexpected type or could not be read.
    #[error("tokenizer metadata key `{key}`: {message}")]
    BadKey {
        /// The GGUF key.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// A per-token array is shorter than the token list.
    #[error("`{key}` has {actual} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        /// The GGUF key of the short array.
        key: String,
        /// Number of tokens.
        expected: usize,
        /// Number of entries in the array.
        actual: usize,
    },
    /// `tokenizer.ggml.model` names a tokenizer we do not implement.
    #[error("unsupported tokenizer model `{model}` (supported: gpt2, llama)")]
    UnsupportedModel {
        /// The model name from the metadata.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error("unsupported BPE pre-tokenizer `{pre}`")]
    UnsupportedPreTokenizer {
        /// The pre-tokenizer name from the metadata.
        pre: String,
    },
    /// The vocabulary has no tokens.
    #[error("the vocabulary is empty")]
    EmptyVocab,
    /// Two tokens have the same text.
    #[error("tokens {first} and {second} have the same text {text:?}")]
    DuplicateToken {
        /// The shared text.
        text: String,
        /// The first id.
        first: u32,
        /// The second id.
        second: u32,
    },
    /// Byte fallback needs a byte token the vocabulary lacks.
    #[error("the vocabulary has no token for byte 0x{byte:02X}")]
    MissingByteToken {
        /// The byte.
        byte: u8,
    },
    /// The model asks for BOS/EOS to be added but has no such token.
    #[error("the model asks for a {which} token but defines none")]
    MissingSpecialToken {
        /// "BOS" or "EOS".
        which: &'static str,
    },
    /// A chat template failed to compile or render.
    #[error("chat template: {0:#}")]
    Template(#[from] minijinja::Error),
}
