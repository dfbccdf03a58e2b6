//! Llama-family transformer models (llama, qwen2, qwen3) over GGUF weights: config from
//! metadata, weight binding and validation, and the forward pass with an F16 KV cache.
//! Must not know about the CLI, sampling or the network.
//!
//! The math follows llama.cpp's CPU graph for these architectures operation by operation
//! (see `docs` on [`Model::forward`]) so that logits agree with llama.cpp to rounding.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod forward;
mod kern;
mod weights;

use std::sync::Arc;

use edgelm_gguf::GgufFile;
use half::f16;

pub use config::{Arch, ModelConfig};
pub use error::ModelError;

use weights::Weights;

/// Batch size [`Model::memory_estimate`] assumes for the scratch buffers.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Which logits [`Model::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `n_vocab` logits of the last token.
    Last,
    /// `tokens.len() × n_vocab` logits, row-major, one row per input token.
    All,
}

/// Bytes a model needs besides the file itself, for a given context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Tensor data in the (memory-mapped) file.
    pub weights_bytes: u64,
    /// The F16 KV cache.
    pub kv_cache_bytes: u64,
    /// Activation scratch for a batch of [`DEFAULT_MAX_BATCH`] tokens (or `n_ctx` if smaller),
    /// logits of one token included.
    pub scratch_bytes: u64,
}

/// A loaded model: config and validated, memory-mapped weights. `Send + Sync`; many
/// [`State`]s can run on one model.
pub struct Model {
    file: Arc<GgufFile>,
    config: ModelConfig,
    weights: Weights,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

/// Per-sequence state: the KV cache, the position, and every scratch buffer of the forward
/// pass (allocated once, at creation, for `max_batch` tokens).
pub struct State {
    pub(crate) n_ctx: usize,
    pub(crate) max_batch: usize,
    pub(crate) pos: usize,
    /// [L, KV, n_ctx, D]
    pub(crate) k_cache: Vec<f16>,
    /// [L, KV, n_ctx, D]
    pub(crate) v_cache: Vec<f16>,
    pub(crate) s: forward::Scratch,
    pub(crate) logits: Vec<f32>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("n_ctx", &self.n_ctx)
            .field("max_batch", &self.max_batch)
            .field("pos", &self.pos)
            .finish()
    }
}

impl State {
    /// Number of positions filled (the next token goes here).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Context size (positions the KV cache holds).
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Largest number of tokens processed in one batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Forgets every position from `n` on (no-op when `n >= pos`): the next forward continues
    /// at `n`, as if only the first `n` tokens had been seen.
    pub fn truncate(&mut self, n: usize) {
        self.pos = self.pos.min(n);
    }

    /// Forgets everything (`truncate(0)`).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Bytes of the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        (self.k_cache.len() + self.v_cache.len()) * std::mem::size_of::<f16>()
    }

    /// Bytes of the scratch buffers and logits.
    pub fn scratch_bytes(&self) -> usize {
        self.s.bytes() + self.logits.capacity() * 4
    }
}

impl Model {
    /// Reads the config from `file`'s metadata, binds and validates every tensor.
    pub fn load(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        let config = ModelConfig::from_gguf(&file)?;
        let weights = Weights::bind(&file, &config)?;
        tracing::debug!(?config, "model loaded");
        Ok(Model {
            file,
            config,
            weights,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The file the weights live in.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// A fresh state for `n_ctx` positions, processing at most `max_batch` tokens at once.
    /// `n_ctx` above the training context is allowed (with a warning).
    pub fn new_state(&self, n_ctx: usize, max_batch: usize) -> Result<State, ModelError> {
        if n_ctx == 0 {
            return Err(ModelError::InvalidArgument {
                name: "n_ctx",
                reason: "must be positive".into(),
            });
        }
        if max_batch == 0 {
            return Err(ModelError::InvalidArgument {
                name: "max_batch",
                reason: "must be positive".into(),
            });
        }
        if n_ctx > self.config.n_ctx_train {
            tracing::warn!(
                n_ctx,
                n_ctx_train = self.config.n_ctx_train,
                "context longer than the model was trained for; quality may degrade"
            );
        }
        let max_batch = max_batch.min(n_ctx);
        let cfg = &self.config;
        let kv_len = cfg
            .n_layer
            .checked_mul(n_ctx)
            .and_then(|x| x.checked_mul(cfg.kv_dim()))
            .ok_or(ModelError::Overflow { what: "KV cache" })?;
        let s = forward::Scratch::new(cfg, &self.weights, max_batch)?;
        Ok(State {
            n_ctx,
            max_batch,
            pos: 0,
            // Zeroed allocations: the OS maps pages on first write, so a cache only costs
            // resident memory for the positions actually used.
            k_cache: bytemuck::zeroed_vec::<f16>(kv_len),
            v_cache: bytemuck::zeroed_vec::<f16>(kv_len),
            s,
            logits: vec![0.0; cfg.n_vocab],
        })
    }

    /// Memory needed for a context of `n_ctx` positions.
    pub fn memory_estimate(&self, n_ctx: usize) -> MemoryEstimate {
        let cfg = &self.config;
        let weights_bytes = self.file.tensors().iter().map(|t| t.n_bytes).sum();
        let kv_cache_bytes = 2 * (cfg.n_layer * n_ctx * cfg.kv_dim()) as u64 * 2;
        let batch = n_ctx.clamp(1, DEFAULT_MAX_BATCH);
        let scratch_bytes =
            forward::Scratch::bytes_for(cfg, &self.weights, batch) as u64 + cfg.n_vocab as u64 * 4;
        MemoryEstimate {
            weights_bytes,
            kv_cache_bytes,
            scratch_bytes,
        }
    }

    /// Runs `tokens` through the model at positions `state.pos()..`, appends them to the KV
    /// cache, and returns the requested logits (borrowed from `state`). Splits the input into
    /// batches of at most `state.max_batch()` tokens.
    ///
    /// Errors, leaving `state` unchanged: empty input, a token id `>= n_vocab`, or more tokens
    /// than the context has room for ([`ModelError::ContextFull`]).
    pub fn forward<'s>(
        &self,
        pool: &edgelm_kernels::ThreadPool,
        state: &'s mut State,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<&'s [f32], ModelError> {
        forward::forward(self, pool, state, tokens, logits)
    }
}
