//! The crate's error type.

/// Errors from sampling, generation and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A sampler parameter is out of range.
    #[error("invalid sampler setting {field} = {value}: {reason}")]
    InvalidSampler {
        /// Field name in [`crate::SamplerConfig`].
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// Some other option is out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Generation was asked to continue an empty prompt.
    #[error("the prompt is empty (it tokenizes to no tokens)")]
    EmptyPrompt,
    /// The prompt does not fit in the context window.
    #[error(
        "the prompt has {prompt} tokens but the context holds {n_ctx} \
         (at least one slot must stay free for generation); use a larger context \
         or the sliding-window overflow policy"
    )]
    ContextLength {
        /// Prompt length in tokens.
        prompt: usize,
        /// Context size in tokens.
        n_ctx: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// Too little text for a perplexity run.
    #[error(
        "perplexity with a context of {n_ctx} needs at least {needed} tokens, \
         but the text has only {got}"
    )]
    NotEnoughTokens {
        /// Tokens required (`2 * n_ctx`).
        needed: usize,
        /// Tokens available.
        got: usize,
        /// Window length.
        n_ctx: usize,
    },
    /// The model failed to evaluate a batch.
    #[error("model evaluation failed at position {pos} ({n_tokens} tokens)")]
    Model {
        /// Position of the batch's first token.
        pos: usize,
        /// Batch length.
        n_tokens: usize,
        /// The model's error.
        #[source]
        source: edgelm_model::ModelError,
    },
    /// The evaluation state could not be created.
    #[error("cannot create a model state for a context of {n_ctx} tokens")]
    State {
        /// Requested context.
        n_ctx: usize,
        /// The model's error.
        #[source]
        source: edgelm_model::ModelError,
    },
    /// A model file could not be opened or parsed ([`crate::Llm::load`]).
    #[error("cannot read the GGUF file {path}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's error.
        #[source]
        source: edgelm_gguf::GgufError,
    },
    /// The file's tensors could not be bound to a model ([`crate::Llm::load`]).
    #[error("cannot load the model in {path}")]
    Load {
        /// The file.
        path: std::path::PathBuf,
        /// The model's error.
        #[source]
        source: edgelm_model::ModelError,
    },
    /// Tokenizing, building the tokenizer or rendering a chat template failed.
    #[error("{what}")]
    Tokenizer {
        /// What was being done.
        what: &'static str,
        /// The tokenizer's error.
        #[source]
        source: edgelm_tokenizer::TokenizerError,
    },
    /// A chat was asked of a model without a chat template (`tokenizer.chat_template`).
    #[error("the model has no chat template (tokenizer.chat_template)")]
    NoChatTemplate,
    /// The worker threads could not be started.
    #[error("cannot start {n_threads} worker threads")]
    Threads {
        /// Threads asked for.
        n_threads: usize,
        /// The pool's error.
        #[source]
        source: edgelm_kernels::KernelError,
    },
    /// A KL-divergence base file is unreadable, malformed or made for another run.
    #[error("KL-divergence base file {path}: {reason}")]
    BaseFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
