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
mod lora;
mod weights;

use std::sync::Arc;

use edgelm_gguf::GgufFile;
use half::f16;

pub use config::{Arch, ModelConfig};
pub use error::ModelError;
pub use forward::many::DecodeBatch;
pub use lora::LoraAdapter;

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
    /// LoRA adapters applied in the forward (`Model::with_lora`), one entry per block.
    lora: Option<Vec<lora::LayerLora>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheType {
    /// F16 (llama.cpp's default): exact to F16 rounding.
    #[default]
    F16,
    /// Q8_0 blocks (llama.cpp's `-ctk q8_0 -ctv q8_0`): 34 bytes per 32 values, 47 % less
    /// memory; the head dimension must be a multiple of 32.
    Q8_0,
}

impl CacheType {
    /// Bytes of `n` cached values.
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            CacheType::F16 => 2 * n,
            CacheType::Q8_0 => n / 32 * 34,
        }
    }
}

impl std::str::FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(CacheType::F16),
            "q8_0" => Ok(CacheType::Q8_0),
            other => Err(format!(
                "unknown cache type {other:?} (expected f16 or q8_0)"
            )),
        }
    }
}

impl std::fmt::Display for CacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheType::F16 => "f16",
            CacheType::Q8_0 => "q8_0",
        })
    }
}

/// Per-sequence state: the KV cache, the position, and every scratch buffer of the forward
/// pass (allocated once, at creation, for `max_batch` tokens).
pub struct State {
    pub(crate) n_ctx: usize,
    pub(crate) max_batch: usize,
    pub(crate) pos: usize,
    pub(crate) cache_type: CacheType,
    /// [L, KV, n_ctx, D] (F16 cache; empty otherwise)
    pub(crate) k_cache: Vec<f16>,
    /// [L, KV, n_ctx, D] (F16 cache; empty otherwise)
    pub(crate) v_cache: Vec<f16>,
    /// [L, KV, n_ctx] rows of D/32 Q8_0 blocks (Q8_0 cache; empty otherwise)
    pub(crate) k_q8: Vec<u8>,
    /// [L, KV, n_ctx] rows of D/32 Q8_0 blocks (Q8_0 cache; empty otherwise)
    pub(crate) v_q8: Vec<u8>,
    pub(crate) s: forward::Scratch,
    pub(crate) logits: Vec<f32>,
    /// Sees the input of every matrix product (importance-matrix collection); `None` in
    /// normal use, when the forward pass does no extra work.
    pub(crate) observer: Option<Box<dyn ActivationObserver>>,
    /// [T, R] scratch of LoRA adapters (grows once, on the first batch with an adapter).
    pub(crate) lora_tmp: Vec<f32>,
}

/// Receives the input rows of each weight matrix during a forward pass, before they are
/// quantized for the matrix product: what llama-imatrix collects. `x` holds `x.len() / n_in`
/// token rows of `n_in` values; `weight` is the GGUF tensor name. Called once per matrix per
/// batch (Q, K and V each get the same rows, as in llama.cpp's graph).
pub trait ActivationObserver: Send {
    /// One batch of inputs to `weight`.
    fn observe(&mut self, weight: &str, x: &[f32], n_in: usize);
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
    /// Installs (or removes) the observer of matrix-product inputs; returns the previous one.
    pub fn set_observer(
        &mut self,
        observer: Option<Box<dyn ActivationObserver>>,
    ) -> Option<Box<dyn ActivationObserver>> {
        std::mem::replace(&mut self.observer, observer)
    }

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
            + self.k_q8.len()
            + self.v_q8.len()
    }

    /// The KV cache's element type.
    pub fn cache_type(&self) -> CacheType {
        self.cache_type
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
            lora: None,
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
        self.new_state_with(n_ctx, max_batch, CacheType::F16)
    }

    /// [`Model::new_state`] with a KV cache of `cache_type`.
    pub fn new_state_with(
        &self,
        n_ctx: usize,
        max_batch: usize,
        cache_type: CacheType,
    ) -> Result<State, ModelError> {
        if cache_type == CacheType::Q8_0 && !self.config.head_dim.is_multiple_of(32) {
            return Err(ModelError::InvalidArgument {
                name: "cache_type",
                reason: format!(
                    "a Q8_0 cache needs a head dimension that is a multiple of 32, not {}",
                    self.config.head_dim
                ),
            });
        }
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
        // Zeroed allocations: the OS maps pages on first write, so a cache only costs resident
        // memory for the positions actually used.
        let (f16_len, q8_len) = match cache_type {
            CacheType::F16 => (kv_len, 0),
            CacheType::Q8_0 => (0, CacheType::Q8_0.bytes_for(kv_len)),
        };
        Ok(State {
            n_ctx,
            max_batch,
            pos: 0,
            cache_type,
            k_cache: bytemuck::zeroed_vec::<f16>(f16_len),
            v_cache: bytemuck::zeroed_vec::<f16>(f16_len),
            k_q8: vec![0u8; q8_len],
            v_q8: vec![0u8; q8_len],
            s,
            logits: vec![0.0; cfg.n_vocab],
            observer: None,
            lora_tmp: Vec::new(),
        })
    }

    /// Memory needed for a context of `n_ctx` positions (F16 cache).
    pub fn memory_estimate(&self, n_ctx: usize) -> MemoryEstimate {
        self.memory_estimate_with(n_ctx, CacheType::F16)
    }

    /// Memory needed for a context of `n_ctx` positions with a cache of `cache_type`.
    pub fn memory_estimate_with(&self, n_ctx: usize, cache_type: CacheType) -> MemoryEstimate {
        let cfg = &self.config;
        let weights_bytes = self.file.tensors().iter().map(|t| t.n_bytes).sum();
        let kv_cache_bytes = 2 * cache_type.bytes_for(cfg.n_layer * n_ctx * cfg.kv_dim()) as u64;
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

    /// Scratch for [`Model::forward_decode`] steps of up to `max_seqs` sequences.
    pub fn new_decode_batch(&self, max_seqs: usize) -> Result<DecodeBatch, ModelError> {
        forward::many::new_decode_batch(self, max_seqs)
    }

    /// One decode step for several sequences at once (continuous batching): `seqs[t]` (each
    /// with an F16 cache) takes `tokens[t]` at its own position. Returns one row of logits per
    /// sequence, bit-identical to what [`Model::forward`] would return for each alone, but the
    /// weights are read once for all of them.
    ///
    /// Errors, leaving every state unchanged: no tokens, `seqs.len() != tokens.len()`, more
    /// sequences than `batch` holds, a token id `>= n_vocab`, a Q8_0 cache, or a full context.
    pub fn forward_decode<'b>(
        &self,
        pool: &edgelm_kernels::ThreadPool,
        batch: &'b mut DecodeBatch,
        seqs: &mut [&mut State],
        tokens: &[u32],
    ) -> Result<&'b [f32], ModelError> {
        forward::many::forward_decode(self, pool, batch, seqs, tokens)
    }
}

#[cfg(test)]
mod cache_type_tests {
    use super::CacheType;

    #[test]
    fn cache_types_parse_and_size() {
        assert_eq!("f16".parse::<CacheType>(), Ok(CacheType::F16));
        assert_eq!("Q8_0".parse::<CacheType>(), Ok(CacheType::Q8_0));
        assert!("q4_0".parse::<CacheType>().is_err());
        assert_eq!(CacheType::F16.bytes_for(64), 128);
        assert_eq!(CacheType::Q8_0.bytes_for(64), 68);
        assert_eq!(CacheType::Q8_0.to_string(), "q8_0");
    }
}
