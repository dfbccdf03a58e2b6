//! The one-call facade over the library crates: [`Llm`] is a GGUF file loaded with its
//! tokenizer, chat template and worker threads; [`Chat`] is a conversation over it that
//! re-renders the chat template every turn and reuses the KV cache of the shared prefix.
//!
//! Used by the README example and the C API (`edgelm-capi`); the CLI wires the same pieces
//! itself because it exposes every knob.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgelm_gguf::GgufFile;
use edgelm_kernels::ThreadPool;
use edgelm_model::{CacheType, Model};
use edgelm_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

use crate::{GenerateOptions, GenerationResult, RuntimeError, SamplerConfig, Session};

/// File name of the default model (SmolLM2-135M-Instruct, GGUF Q4_1) in the model cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model cache folder: `$EDGELM_HOME/models`, else `$XDG_CACHE_HOME/edgelm/models`, else
/// `~/.cache/edgelm/models`; `None` when none of those variables is set.
pub fn default_models_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = var("EDGELM_HOME") {
        return Some(PathBuf::from(home).join("models"));
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(cache).join("edgelm").join("models"));
    }
    let home = var("HOME")?;
    Some(
        PathBuf::from(home)
            .join(".cache")
            .join("edgelm")
            .join("models"),
    )
}

/// Where the default model lives in the cache (whether or not it has been fetched yet:
/// `edgelm fetch` downloads it).
pub fn default_model_path() -> Option<PathBuf> {
    default_models_dir().map(|d| d.join(DEFAULT_MODEL_FILE))
}

/// How [`Llm::load_with`] sets up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Worker threads; 0 means one per available core.
    pub n_threads: usize,
}

/// A model ready to use: memory-mapped weights, tokenizer, chat template (when the file has
/// one) and a worker pool. Cloning is cheap (shared handles); `Llm` is `Send + Sync`, and every
/// session made from it may run on its own thread (the pool serves one job at a time and runs
/// a concurrent caller's work on that caller's thread).
#[derive(Clone)]
pub struct Llm {
    path: PathBuf,
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    pool: Arc<ThreadPool>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("path", &self.path)
            .field("n_vocab", &self.tokenizer.n_vocab())
            .field("chat_template", &self.template.is_some())
            .field("n_threads", &self.pool.n_threads())
            .finish()
    }
}

impl Llm {
    /// Loads `path` with one worker thread per core.
    pub fn load(path: impl AsRef<Path>) -> Result<Llm, RuntimeError> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads `path`: parses the GGUF file, builds the tokenizer and chat template from its
    /// metadata, binds and validates the weights, starts the worker pool.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Llm, RuntimeError> {
        let path = path.as_ref().to_path_buf();
        let file = GgufFile::open(&path).map_err(|source| RuntimeError::Open {
            path: path.clone(),
            source,
        })?;
        let file = Arc::new(file);
        let tokenizer =
            Tokenizer::from_gguf(file.metadata()).map_err(|source| RuntimeError::Tokenizer {
                what: "cannot build the model's tokenizer",
                source,
            })?;
        let template = ChatTemplate::from_gguf(file.metadata(), &tokenizer).map_err(|source| {
            RuntimeError::Tokenizer {
                what: "cannot compile the model's chat template",
                source,
            }
        })?;
        let model = Model::load(Arc::clone(&file)).map_err(|source| RuntimeError::Load {
            path: path.clone(),
            source,
        })?;
        let pool = ThreadPool::new(opts.n_threads).map_err(|source| RuntimeError::Threads {
            n_threads: opts.n_threads,
            source,
        })?;
        Ok(Llm {
            path,
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template: template.map(Arc::new),
            pool: Arc::new(pool),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model (weights and config).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The chat template, when the file has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_deref()
    }

    /// The worker pool.
    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the model's metadata asks, except that
    /// with `parse_special` a BOS already written at the start of the text (as some chat
    /// templates render it) is not doubled; `parse_special` turns control-token text (e.g.
    /// `<|im_start|>`) into those tokens. Text rendered by [`Llm::apply_chat_template`] is
    /// tokenized with both on.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, RuntimeError> {
        let tok = &self.tokenizer;
        let bos_in_text = parse_special
            && tok
                .bos()
                .and_then(|b| tok.token_text(b))
                .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        tok.encode(text, add_special && !bos_in_text, parse_special)
            .map_err(|source| RuntimeError::Tokenizer {
                what: "cannot tokenize the text",
                source,
            })
    }

    /// The text of `ids`; control tokens are left out when `skip_special`, else rendered.
    /// Ids outside the vocabulary are an error.
    pub fn detokenize(&self, ids: &[u32], skip_special: bool) -> Result<String, RuntimeError> {
        let n_vocab = self.tokenizer.n_vocab();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(RuntimeError::TokenOutOfRange { id, n_vocab });
        }
        Ok(self.tokenizer.decode(ids, skip_special))
    }

    /// Renders `messages` with the model's chat template; with `add_generation_prompt` the text
    /// ends with the assistant's turn header.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, RuntimeError> {
        let template = self.template.as_ref().ok_or(RuntimeError::NoChatTemplate)?;
        template
            .render(messages, add_generation_prompt)
            .map_err(|source| RuntimeError::Tokenizer {
                what: "cannot render the chat template",
                source,
            })
    }

    /// A generation session with a fresh F16 KV cache of `n_ctx` positions.
    pub fn session(&self, n_ctx: usize, sampler: SamplerConfig) -> Result<Session, RuntimeError> {
        self.session_with_cache(n_ctx, sampler, CacheType::F16)
    }

    /// [`Llm::session`] with a KV cache of `cache_type`.
    pub fn session_with_cache(
        &self,
        n_ctx: usize,
        sampler: SamplerConfig,
        cache_type: CacheType,
    ) -> Result<Session, RuntimeError> {
        if n_ctx < 2 {
            return Err(RuntimeError::InvalidOption {
                name: "n_ctx",
                reason: format!("the context must hold at least 2 tokens, got {n_ctx}"),
            });
        }
        Session::with_cache_type(
            Arc::clone(&self.model),
            Arc::clone(&self.tokenizer),
            Arc::clone(&self.pool),
            n_ctx,
            sampler,
            cache_type,
        )
    }

    /// A conversation over the model's chat template.
    pub fn chat(&self, opts: ChatOptions) -> Result<Chat, RuntimeError> {
        let template = self.template.clone().ok_or(RuntimeError::NoChatTemplate)?;
        let session = self.session(opts.n_ctx, opts.sampler)?;
        let mut chat = Chat {
            llm: self.clone(),
            template,
            session,
            messages: Vec::new(),
            system: opts.system,
            generate: GenerateOptions {
                max_tokens: opts.max_tokens,
                ..GenerateOptions::default()
            },
        };
        chat.reset();
        Ok(chat)
    }
}

/// Settings of a [`Chat`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOptions {
    /// Context size in tokens (the whole conversation must fit).
    pub n_ctx: usize,
    /// Tokens per reply at most.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// System message; `None` keeps the template's own default.
    pub system: Option<String>,
}

impl Default for ChatOptions {
    /// 2048 tokens of context, replies of at most 256 tokens, llama.cpp's default sampling.
    fn default() -> Self {
        Self {
            n_ctx: 2048,
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            system: None,
        }
    }
}

/// A conversation: the messages so far and a session whose KV cache holds them, so each turn
/// evaluates only its new tokens.
#[derive(Debug)]
pub struct Chat {
    llm: Llm,
    template: Arc<ChatTemplate>,
    session: Session,
    messages: Vec<ChatMessage>,
    system: Option<String>,
    generate: GenerateOptions,
}

impl Chat {
    /// Sends one user message and generates the reply, calling `on_text` with each piece of
    /// text as it is released; `ControlFlow::Break` stops the reply there
    /// ([`crate::FinishReason::Cancelled`]). The reply (also a cut-short one) joins the
    /// conversation; on an error the user message is taken back and the conversation is as
    /// before.
    pub fn send(
        &mut self,
        user: &str,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationResult, RuntimeError> {
        self.messages.push(ChatMessage::new("user", user));
        let result = self.reply(&mut on_text);
        match &result {
            Ok(r) => self
                .messages
                .push(ChatMessage::new("assistant", r.text.as_str())),
            Err(_) => {
                self.messages.pop();
            }
        }
        result
    }

    fn reply(
        &mut self,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationResult, RuntimeError> {
        let rendered = self
            .template
            .render(&self.messages, true)
            .map_err(|source| RuntimeError::Tokenizer {
                what: "cannot render the chat template",
                source,
            })?;
        let prompt = self.llm.tokenize(&rendered, true, true)?;
        self.session.generate(&prompt, &self.generate, |ev| {
            let text = ev.text();
            if text.is_empty() {
                ControlFlow::Continue(())
            } else {
                on_text(text)
            }
        })
    }

    /// The conversation so far (the system message first, when one was given).
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Starts over: only the system message is kept, the KV cache is emptied.
    pub fn reset(&mut self) {
        self.messages.clear();
        if let Some(sys) = &self.system {
            self.messages.push(ChatMessage::new("system", sys.as_str()));
        }
        self.session.reset();
    }

    /// The generation options of each reply (e.g. to change `max_tokens` or add stop strings).
    pub fn options_mut(&mut self) -> &mut GenerateOptions {
        &mut self.generate
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facade_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Llm>();
        send::<Session>();
        send::<Chat>();
    }

    #[test]
    fn default_model_path_ends_with_the_default_file() {
        if let Some(p) = default_model_path() {
            assert!(p.ends_with(Path::new("models").join(DEFAULT_MODEL_FILE)));
        }
    }

    #[test]
    fn load_reports_a_missing_file_with_its_path() {
        let err = Llm::load("/nonexistent/edgelm/model.gguf").unwrap_err();
        assert!(matches!(err, RuntimeError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/edgelm/model.gguf"));
    }
}
