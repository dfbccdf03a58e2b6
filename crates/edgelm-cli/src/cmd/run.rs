//! `edgelm run`: continue a prompt, streaming the text to stdout.
//!
//! JSON output (`--json`), one object after generation:
//! `{"prompt_tokens": [ids], "tokens": [generated ids], "text": "...", "finish_reason":
//!   "stop"|"length"|"eog"|"cancelled", "peak_rss_bytes", "timings": {"prompt_n", "prompt_ms",
//!   "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_second"}}`.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_runtime::{ContextOverflow, GenerateOptions, GenerationResult, Session};
use edgelm_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde_json::json;

use super::{GlobalArgs, SamplingArgs};

/// Arguments of `edgelm run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "file"])))]
pub struct RunArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// The prompt.
    #[arg(short, long, allow_hyphen_values = true)]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(2..))]
    pub ctx_size: u32,
    /// Wrap the prompt as one user turn in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Stop when the text contains this string (repeatable); it is not printed.
    #[arg(long = "stop", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// Parse special-token text in a plain prompt (always on with --chat).
    #[arg(long)]
    pub special: bool,
    /// Instead of failing, keep the most recent tokens when the context overflows.
    #[arg(long)]
    pub context_shift: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    #[command(flatten)]
    pub lora: super::LoraArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Tokenizes a chat rendered by the template: special tokens parsed; BOS added by the
/// tokenizer only when the rendered text does not already start with it.
pub fn encode_chat(tok: &Tokenizer, rendered: &str) -> Result<Vec<u32>> {
    let bos_in_text = tok
        .bos()
        .and_then(|b| tok.token_text(b))
        .is_some_and(|b| !b.is_empty() && rendered.starts_with(b));
    tok.encode(rendered, !bos_in_text, true)
        .context("cannot tokenize the chat prompt")
}

/// The model's chat template, or an error saying it has none.
pub fn chat_template(file: &edgelm_gguf::GgufFile, tok: &Tokenizer) -> Result<ChatTemplate> {
    ChatTemplate::from_gguf(file.metadata(), tok)
        .context("cannot compile the model's chat template")?
        .context("the model has no chat template (tokenizer.chat_template); run without --chat")
}

/// Runs `edgelm run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let sampler = args.sampling.config()?;
    let text = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => super::read_text(f)?,
        (None, None) => return Err(super::usage("give the prompt with -p or -f")),
    };
    if text.is_empty() {
        return Err(super::usage("the prompt is empty"));
    }
    for s in &args.stop {
        if s.is_empty() {
            return Err(super::usage("--stop needs a non-empty string"));
        }
    }
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let prompt = if args.chat {
        let template = chat_template(&file, &tok)?;
        let mut messages = Vec::new();
        if let Some(sys) = &args.system {
            messages.push(ChatMessage::new("system", sys.as_str()));
        }
        messages.push(ChatMessage::new("user", text.as_str()));
        let rendered = template
            .render(&messages, true)
            .context("cannot render the chat template")?;
        tracing::debug!(%rendered, "chat prompt");
        encode_chat(&tok, &rendered)?
    } else {
        tok.encode(&text, true, args.special)
            .context("cannot tokenize the prompt")?
    };
    if prompt.is_empty() {
        anyhow::bail!("the prompt tokenizes to no tokens");
    }
    let model = super::load_model_with(&path, &file, &args.lora)?;
    let pool = super::thread_pool(&args.global)?;
    let mut session = Session::with_cache_type(
        model,
        tok,
        pool,
        args.ctx_size as usize,
        sampler,
        args.cache.cache_type,
    )?;
    let opts = GenerateOptions {
        max_tokens: args.n_predict,
        stop: args.stop.clone(),
        overflow: if args.context_shift {
            ContextOverflow::SlidingWindow
        } else {
            ContextOverflow::Error
        },
    };

    let mut out = std::io::stdout().lock();
    if args.global.json {
        let result = session.generate(&prompt, &opts, |_| ControlFlow::Continue(()))?;
        serde_json::to_writer(&mut out, &result_json(&result))?;
        writeln!(out)?;
        return Ok(());
    }
    let mut write_err = None;
    let result = session.generate(&prompt, &opts, |ev| {
        let text = ev.text();
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }
    if !result.text.ends_with('\n') {
        writeln!(out)?;
    }
    if !args.global.quiet {
        eprintln!("{}", stats_line(&result));
    }
    Ok(())
}

/// One line of statistics for stderr.
pub fn stats_line(r: &GenerationResult) -> String {
    let t = &r.timings;
    format!(
        "prompt: {} tokens ({} reused) in {:.1} ms ({:.1} tokens/s) | generation: {} tokens in {:.1} ms ({:.1} tokens/s) | finish: {} | peak RSS: {}",
        t.n_prompt_tokens,
        r.n_reused_tokens,
        t.prompt_ms,
        t.prompt_tokens_per_s(),
        t.n_gen_tokens,
        t.gen_ms,
        t.gen_tokens_per_s(),
        r.finish_reason,
        edgelm_runtime::mem::peak_rss_bytes().map_or("n/a".to_string(), |b| format!(
            "{:.1} MiB",
            b as f64 / (1024.0 * 1024.0)
        ))
    )
}

/// The `--json` object of a generation.
pub fn result_json(r: &GenerationResult) -> serde_json::Value {
    let t = &r.timings;
    json!({
        "prompt_tokens": r.prompt_tokens,
        "tokens": r.tokens,
        "text": r.text,
        "finish_reason": r.finish_reason.as_str(),
        "timings": {
            "prompt_n": t.n_prompt_tokens,
            "prompt_ms": t.prompt_ms,
            "prompt_per_second": t.prompt_tokens_per_s(),
            "predicted_n": t.n_gen_tokens,
            "predicted_ms": t.gen_ms,
            "predicted_per_second": t.gen_tokens_per_s(),
        },
        "peak_rss_bytes": edgelm_runtime::mem::peak_rss_bytes(),
    })
}
