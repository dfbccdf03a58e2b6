//! A generation session: model state, tokenizer, sampler and the token history that mirrors
//! the KV cache, so a conversation re-sent turn by turn only evaluates its new tokens.

use std::ops::ControlFlow;
use std::sync::Arc;

use edgelm_kernels::ThreadPool;
use edgelm_model::Model;
use edgelm_tokenizer::{StreamDecoder, Tokenizer};

use crate::generate::{generate_loop, TokenText};
use crate::{
    GenerateOptions, GenerationEvent, GenerationResult, LogitsSource, ModelEngine, RuntimeError,
    Sampler, SamplerConfig,
};

/// One conversation (or completion stream) over a model.
#[derive(Debug)]
pub struct Session<S: LogitsSource = ModelEngine> {
    source: S,
    tokenizer: Arc<Tokenizer>,
    sampler: Sampler,
    /// The tokens whose KV entries are in `source`'s state, in order.
    history: Vec<u32>,
}

impl Session<ModelEngine> {
    /// A session with a fresh state of `n_ctx` positions (prompts are evaluated in batches of
    /// at most `min(n_ctx, 512)` tokens).
    pub fn new(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        pool: Arc<ThreadPool>,
        n_ctx: usize,
        sampler: SamplerConfig,
    ) -> Result<Self, RuntimeError> {
        Self::with_cache_type(
            model,
            tokenizer,
            pool,
            n_ctx,
            sampler,
            edgelm_model::CacheType::F16,
        )
    }

    /// [`Session::new`] with a KV cache of `cache_type`.
    pub fn with_cache_type(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        pool: Arc<ThreadPool>,
        n_ctx: usize,
        sampler: SamplerConfig,
        cache_type: edgelm_model::CacheType,
    ) -> Result<Self, RuntimeError> {
        let max_batch = n_ctx.min(edgelm_model::DEFAULT_MAX_BATCH);
        let engine = ModelEngine::with_cache_type(model, pool, n_ctx, max_batch, cache_type)?;
        Self::with_source(engine, tokenizer, sampler)
    }
}

impl<S: LogitsSource> Session<S> {
    /// A session over any logits source.
    pub fn with_source(
        source: S,
        tokenizer: Arc<Tokenizer>,
        sampler: SamplerConfig,
    ) -> Result<Self, RuntimeError> {
        let sampler = Sampler::new(sampler, source.n_vocab())?;
        Ok(Self {
            source,
            tokenizer,
            sampler,
            history: Vec::new(),
        })
    }

    /// Replaces the sampler (and its RNG).
    pub fn set_sampler(&mut self, cfg: SamplerConfig) -> Result<(), RuntimeError> {
        self.sampler = Sampler::new(cfg, self.source.n_vocab())?;
        Ok(())
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The logits source (for the real model: [`ModelEngine`]).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Tokens currently held in the KV state.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Context size in tokens.
    pub fn n_ctx(&self) -> usize {
        self.source.n_ctx()
    }

    /// Forgets the conversation (empties the KV state).
    pub fn reset(&mut self) {
        self.history.clear();
        self.source.truncate(0);
    }

    /// Continues `prompt` (the full token sequence, e.g. the whole conversation rendered by
    /// the chat template): the prefix shared with the previous call is reused from the KV
    /// state, the rest is evaluated as one batch, then tokens are sampled until EOG,
    /// `max_tokens`, a stop string, the end of the context or the callback's `Break`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_event: impl FnMut(&GenerationEvent) -> ControlFlow<()>,
    ) -> Result<GenerationResult, RuntimeError> {
        let mut hooks = TokenizerText {
            tok: &self.tokenizer,
            stream: StreamDecoder::new(&self.tokenizer),
        };
        let _span = tracing::debug_span!("generate", n_prompt = prompt.len()).entered();
        generate_loop(
            &mut self.source,
            &mut self.sampler,
            &mut self.history,
            &mut hooks,
            prompt,
            opts,
            &mut on_event,
        )
    }
}

struct TokenizerText<'a> {
    tok: &'a Tokenizer,
    stream: StreamDecoder<'a>,
}

impl TokenText for TokenizerText<'_> {
    fn is_eog(&self, id: u32) -> bool {
        self.tok.is_eog(id)
    }
    fn push(&mut self, id: u32) -> String {
        self.stream.push(id)
    }
}
