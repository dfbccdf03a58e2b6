//! `edgelm perplexity`: perplexity of a text file, computed as llama-perplexity does.
//!
//! Plain output: the running estimate of each window on stderr (`[1]12.3456,[2]...`) and
//! `Final estimate: PPL = X +/- Y` on stdout. JSON output (`--json`): `{"ppl", "ppl_stderr",
//! "n_chunks", "n_tokens_scored", "n_ctx", "n_tokens", "per_chunk": [running estimates]}`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_runtime::{perplexity, PerplexityOptions};
use serde_json::json;

use super::GlobalArgs;

/// Arguments of `edgelm perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Text file to evaluate.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Window length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(4..))]
    pub ctx_size: u32,
    /// Evaluate at most this many windows (default: all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: Option<u32>,
    /// Tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    #[command(flatten)]
    pub lora: super::LoraArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm perplexity`.
pub fn run(args: &PerplexityArgs) -> Result<()> {
    let text = super::read_text(&args.file)?;
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let t0 = std::time::Instant::now();
    let tokens = tok
        .encode(&text, true, false)
        .with_context(|| format!("cannot tokenize {}", args.file.display()))?;
    tracing::info!(
        n_tokens = tokens.len(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "tokenized"
    );
    let model = super::load_model_with(&path, &file, &args.lora)?;
    let pool = super::thread_pool(&args.global)?;
    let opts = PerplexityOptions {
        n_ctx: args.ctx_size as usize,
        n_chunks: args.chunks.map(|n| n as usize),
        n_batch: args.batch_size as usize,
        bos: if tok.add_bos() { tok.bos() } else { None },
        cache_type: args.cache.cache_type,
    };
    let show_progress = !args.global.quiet && !args.global.json;
    let result = perplexity(&model, &pool, &tokens, &opts, |p| {
        if show_progress {
            if p.chunk == 1 {
                eprintln!(
                    "perplexity: {} chunks of {} tokens, {:.2} s per chunk",
                    p.n_chunks, opts.n_ctx, p.seconds
                );
            }
            eprint!("[{}]{:.4},", p.chunk, p.running_ppl);
            if p.chunk == p.n_chunks {
                eprintln!();
            }
        }
    })?;
    let mut out = std::io::stdout().lock();
    if args.global.json {
        let obj = json!({
            "ppl": result.ppl,
            "ppl_stderr": result.ppl_stderr,
            "n_chunks": result.n_chunks,
            "n_tokens_scored": result.n_tokens_scored,
            "n_ctx": opts.n_ctx,
            "n_tokens": tokens.len(),
            "per_chunk": result.per_chunk,
        });
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "Final estimate: PPL = {:.4} +/- {:.5}",
            result.ppl, result.ppl_stderr
        )?;
    }
    Ok(())
}
