//! The model as the runtime sees it: something that evaluates tokens and returns logits.

use crate::RuntimeError;

/// A causal language model with its evaluation state (KV cache): the real one is
/// [`crate::ModelEngine`]; tests use small doubles.
pub trait LogitsSource {
    /// Vocabulary size: the length of one logits row.
    fn n_vocab(&self) -> usize;
    /// Context capacity in tokens.
    fn n_ctx(&self) -> usize;
    /// Tokens currently in the state (the position of the next token).
    fn pos(&self) -> usize;
    /// Forgets every token from position `n_tokens` on (no-op when already shorter).
    fn truncate(&mut self, n_tokens: usize);
    /// Evaluates `tokens` at positions `pos()..`; returns the logits of the last token
    /// (`all == false`, one row) or of every token (`all == true`, `tokens.len()` rows).
    fn eval(&mut self, tokens: &[u32], all: bool) -> Result<&[f32], RuntimeError>;
}

use std::sync::Arc;

use edgelm_kernels::ThreadPool;
use edgelm_model::{Logits, Model, State};

/// The real model behind [`LogitsSource`]: shared weights, a thread pool and one state.
#[derive(Debug)]
pub struct ModelEngine {
    model: Arc<Model>,
    pool: Arc<ThreadPool>,
    state: State,
}

impl ModelEngine {
    /// A fresh state of `n_ctx` positions, evaluating at most `max_batch` tokens per step
    /// (longer inputs are split by the model).
    pub fn new(
        model: Arc<Model>,
        pool: Arc<ThreadPool>,
        n_ctx: usize,
        max_batch: usize,
    ) -> Result<Self, RuntimeError> {
        Self::with_cache_type(model, pool, n_ctx, max_batch, edgelm_model::CacheType::F16)
    }

    /// [`ModelEngine::new`] with a KV cache of `cache_type`.
    pub fn with_cache_type(
        model: Arc<Model>,
        pool: Arc<ThreadPool>,
        n_ctx: usize,
        max_batch: usize,
        cache_type: edgelm_model::CacheType,
    ) -> Result<Self, RuntimeError> {
        let state = model
            .new_state_with(n_ctx, max_batch, cache_type)
            .map_err(|source| RuntimeError::State { n_ctx, source })?;
        Ok(Self { model, pool, state })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The thread pool.
    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }

    /// The evaluation state.
    pub fn state(&self) -> &State {
        &self.state
    }
}

impl LogitsSource for ModelEngine {
    fn n_vocab(&self) -> usize {
        self.model.config().n_vocab
    }
    fn n_ctx(&self) -> usize {
        self.state.n_ctx()
    }
    fn pos(&self) -> usize {
        self.state.pos()
    }
    fn truncate(&mut self, n_tokens: usize) {
        self.state.truncate(n_tokens);
    }
    fn eval(&mut self, tokens: &[u32], all: bool) -> Result<&[f32], RuntimeError> {
        let pos = self.state.pos();
        let which = if all { Logits::All } else { Logits::Last };
        self.model
            .forward(&self.pool, &mut self.state, tokens, which)
            .map_err(|source| RuntimeError::Model {
                pos,
                n_tokens: tokens.len(),
                source,
            })
    }
}
