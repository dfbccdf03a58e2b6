//! Subcommands and what they share: global flags, logging, loading a model.

pub mod bench;
pub mod chat;
pub mod compress_report;
pub mod distill;
pub mod eval;
pub mod fetch;
pub mod finetune;
pub mod finetune_lora;
pub mod gptq;
pub mod imatrix;
pub mod info;
pub mod lora_merge;
pub mod perplexity;
pub mod quantize;
pub mod report_train;
pub mod run;
pub mod serve;
pub mod tokenize;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_gguf::GgufFile;
use edgelm_kernels::ThreadPool;
use edgelm_model::Model;
use edgelm_runtime::SamplerConfig;
use edgelm_tokenizer::Tokenizer;

/// Flags every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Worker threads (default: the number of available cores).
    #[arg(short = 't', long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr (no statistics).
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalArgs {
    /// Threads to use.
    pub fn n_threads(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The KV cache flag shared by run, chat, perplexity, bench and info.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// KV cache type: f16 (default) or q8_0 (47 % smaller, as llama.cpp's -ctk/-ctv q8_0).
    #[arg(long = "cache-type", default_value = "f16")]
    pub cache_type: edgelm_model::CacheType,
}

/// Sampling flags shared by `run` and `chat` (defaults are llama.cpp's).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Top-k (0 disables).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p / nucleus mass (1 disables).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0 disables).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 disables).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back on (0 disables).
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Presence penalty (0 disables).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Frequency penalty (0 disables).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// RNG seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The validated sampler configuration.
    pub fn config(&self) -> Result<SamplerConfig> {
        let cfg = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        cfg.validate().map_err(|e| usage(e.to_string()))?;
        Ok(cfg)
    }
}

/// An error in how the program was called (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Whether `e` is a usage error.
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<UsageError>().is_some()
}

/// Whether `e` comes from writing to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Installs the stderr log subscriber: `RUST_LOG` when set, else from -v/-q.
pub fn init_logging(g: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let level = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::try_new(s).unwrap_or_else(|_| EnvFilter::new(level)),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

/// Resolves `-m` (or the default model) and opens the GGUF file.
pub fn open_gguf(model: Option<&Path>) -> Result<(PathBuf, Arc<GgufFile>)> {
    let path = crate::fetch::resolve_model(model)?;
    let file = GgufFile::open(&path)
        .with_context(|| format!("cannot read GGUF file {}", path.display()))?;
    tracing::info!(path = %path.display(), "opened model file");
    Ok((path, Arc::new(file)))
}

/// The tokenizer stored in the file's metadata.
pub fn load_tokenizer(path: &Path, file: &GgufFile) -> Result<Arc<Tokenizer>> {
    let tok = Tokenizer::from_gguf(file.metadata())
        .with_context(|| format!("cannot build the tokenizer of {}", path.display()))?;
    Ok(Arc::new(tok))
}

/// The model bound to the file's tensors.
pub fn load_model(path: &Path, file: &Arc<GgufFile>) -> Result<Arc<Model>> {
    let model = Model::load(Arc::clone(file))
        .with_context(|| format!("cannot load the model in {}", path.display()))?;
    Ok(Arc::new(model))
}

/// `--lora FILE [--lora-scale S]`: a LoRA adapter (GGUF, llama.cpp's format) applied to the
/// model in every forward.
#[derive(Debug, Clone, Args)]
pub struct LoraArgs {
    /// LoRA adapter GGUF to apply (made by `edgelm finetune --lora-rank`, or llama.cpp's
    /// convert_lora_to_gguf.py).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Multiplier of the adapter's alpha / rank.
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    pub lora_scale: f32,
}

/// The model bound to the file's tensors, with the adapter of `lora` when one is given.
pub fn load_model_with(path: &Path, file: &Arc<GgufFile>, lora: &LoraArgs) -> Result<Arc<Model>> {
    let Some(lp) = &lora.lora else {
        return load_model(path, file);
    };
    let model = Model::load(Arc::clone(file))
        .with_context(|| format!("cannot load the model in {}", path.display()))?;
    let af = GgufFile::open(lp)
        .with_context(|| format!("cannot read the LoRA adapter {}", lp.display()))?;
    let adapter = edgelm_model::LoraAdapter::from_gguf(&af)
        .with_context(|| format!("cannot read the LoRA adapter {}", lp.display()))?;
    let model = model
        .with_lora(&adapter, lora.lora_scale)
        .with_context(|| {
            format!(
                "cannot apply the LoRA adapter {} to {}",
                lp.display(),
                path.display()
            )
        })?;
    tracing::info!(adapter = %lp.display(), scale = lora.lora_scale, "LoRA adapter applied");
    Ok(Arc::new(model))
}

/// The worker pool.
pub fn thread_pool(g: &GlobalArgs) -> Result<Arc<ThreadPool>> {
    let n = g.n_threads();
    let pool = ThreadPool::new(n).with_context(|| format!("cannot start {n} worker threads"))?;
    Ok(Arc::new(pool))
}

/// Reads a text file for a prompt or an evaluation.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
