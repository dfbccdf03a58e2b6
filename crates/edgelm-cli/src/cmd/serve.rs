//! `edgelm serve`: the OpenAI-compatible HTTP server of `edgelm-server` over one model. Prints
//! `listening on http://HOST:PORT` on stderr once it accepts connections; SIGINT or SIGTERM
//! stop it gracefully (running generations finish, for at most `--shutdown-grace` seconds).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_server::{AppState, EngineConfig, ServerConfig};

use super::GlobalArgs;

/// Arguments of `edgelm serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests generating at once (each has its own KV cache of --ctx-size positions).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub slots: u16,
    /// Context size of each slot, in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(2..))]
    pub ctx_size: u32,
    /// Requests that may wait for a slot; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Prompt tokens evaluated per scheduling turn.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefill_chunk: u32,
    /// Evaluate every prompt in full (no reuse of a cached prefix's KV state).
    #[arg(long)]
    pub no_prompt_cache: bool,
    /// Require this bearer token on /v1/* (default: $EDGELM_API_KEY if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request may take, queue wait included; a generation running past it ends
    /// with finish reason "length".
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Seconds running generations get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Model id clients use (default: the file name without .gguf).
    #[arg(long)]
    pub alias: Option<String>,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm serve`.
pub fn run(args: &ServeArgs) -> Result<()> {
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let template = edgelm_tokenizer::ChatTemplate::from_gguf(file.metadata(), &tok)
        .context("cannot compile the model's chat template")?;
    if template.is_none() {
        tracing::warn!("the model has no chat template: /v1/chat/completions will answer 400");
    }
    let model = super::load_model(&path, &file)?;
    let pool = super::thread_pool(&args.global)?;
    let model_id = args.alias.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| "model".into())
    });
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("EDGELM_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let cfg = ServerConfig {
        model_id,
        api_key,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        engine: EngineConfig {
            n_slots: usize::from(args.slots),
            n_ctx: args.ctx_size as usize,
            queue_capacity: args.queue,
            prefill_chunk: args.prefill_chunk as usize,
            prompt_cache: !args.no_prompt_cache,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        },
    };
    let state = AppState::new(cfg, model, tok, template, pool)
        .context("cannot allocate the generation slots")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("no local address")?;
        eprintln!("listening on http://{local}");
        edgelm_server::serve(
            listener,
            Arc::clone(&state),
            edgelm_server::shutdown_signal(),
        )
        .await
        .context("server error")?;
        eprintln!("server stopped");
        Ok(())
    })
}
