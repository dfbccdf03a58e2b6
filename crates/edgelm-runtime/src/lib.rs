//! edgelm-runtime: what turns a model into text — sampling, the generation loop with stop
//! strings and streaming, chat sessions that reuse the KV cache, and perplexity evaluation.
//!
//! It owns no model math (that is `edgelm-model`) and knows nothing of how it is served
//! (CLI, HTTP, C API). The model is reached through [`LogitsSource`], implemented for the real
//! model by [`ModelEngine`] and by small doubles in tests. [`Llm`] and [`Chat`] are the
//! one-call facade (load a GGUF file with its tokenizer, template and threads; chat over it).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod engine;
mod error;
mod generate;
mod kld;
pub mod kld_base;
mod llm;
pub mod mem;
mod perplexity;
mod sampler;
mod session;
mod stop;

pub use engine::{LogitsSource, ModelEngine};
pub use error::RuntimeError;
pub use generate::{
    ContextOverflow, FinishReason, GenerateOptions, GenerationEvent, GenerationResult, Timings,
};
pub use kld::{
    base_row_len, encode_base_row, kl_divergence, kl_divergence_from, kl_divergence_rows,
    kl_divergence_with, kld_engine, kld_windows, BaseRows, KldProgress, KldResult, LiveBase,
    MeanUnc, RowSink,
};
pub use kld_base::{KldBaseInfo, KldBaseReader, KldBaseWriter};
pub use llm::{
    default_model_path, default_models_dir, Chat, ChatOptions, Llm, LoadOptions, DEFAULT_MODEL_FILE,
};
pub use perplexity::{
    perplexity, perplexity_with, token_nll, ChunkProgress, PerplexityOptions, PerplexityResult,
};
pub use sampler::{Sampler, SamplerConfig};
pub use session::Session;
pub use stop::{StopMatcher, StopOutcome};

/// A chat message, as [`Llm::apply_chat_template`] takes it.
pub use edgelm_tokenizer::ChatMessage;

/// The README's Rust example, compiled and run as a doc-test (it skips when the default model
/// has not been fetched).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
