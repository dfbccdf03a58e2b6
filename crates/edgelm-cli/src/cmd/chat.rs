//! `edgelm chat`: interactive streaming chat. Each line read is one user turn; `/reset`
//! starts over, `/exit` (or end of input) quits. When stdin is not a terminal it is read line
//! by line without prompts, so conversations can be scripted.
//!
//! The whole conversation is re-rendered by the chat template every turn; the session reuses
//! the KV state of the shared prefix, so only the new tokens are evaluated.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_runtime::{GenerateOptions, RuntimeError, Session};
use edgelm_tokenizer::ChatMessage;

use super::run::{chat_template, encode_chat, result_json, stats_line};
use super::{GlobalArgs, SamplingArgs};

/// Arguments of `edgelm chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// System message (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens to generate at most per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n_predict: usize,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(2..))]
    pub ctx_size: u32,
    /// Also stop a reply at this string (repeatable).
    #[arg(long = "stop", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    #[command(flatten)]
    pub lora: super::LoraArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm chat`.
pub fn run(args: &ChatArgs) -> Result<()> {
    let sampler = args.sampling.config()?;
    if args.stop.iter().any(String::is_empty) {
        return Err(super::usage("--stop needs a non-empty string"));
    }
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let template = chat_template(&file, &tok)?;
    let model = super::load_model_with(&path, &file, &args.lora)?;
    let pool = super::thread_pool(&args.global)?;
    let mut session = Session::with_cache_type(
        model,
        tok.clone(),
        pool,
        args.ctx_size as usize,
        sampler,
        args.cache.cache_type,
    )?;
    let opts = GenerateOptions {
        max_tokens: args.n_predict,
        stop: args.stop.clone(),
        ..GenerateOptions::default()
    };

    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut out = std::io::stdout().lock();
    let mut messages = Vec::new();
    let system = args.system.as_deref();
    let start = |messages: &mut Vec<ChatMessage>| {
        messages.clear();
        if let Some(sys) = system {
            messages.push(ChatMessage::new("system", sys));
        }
    };
    start(&mut messages);
    if interactive && !args.global.quiet {
        eprintln!("edgelm chat — type a message; /reset starts over, /exit quits.");
    }
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read stdin")?;
        let line = line.trim_end_matches('\r');
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                start(&mut messages);
                session.reset();
                if !args.global.quiet {
                    eprintln!("(conversation reset)");
                }
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let rendered = template
            .render(&messages, true)
            .context("cannot render the chat template")?;
        let prompt = encode_chat(&tok, &rendered)?;
        let mut write_err = None;
        let json = args.global.json;
        let res = session.generate(&prompt, &opts, |ev| {
            if json || ev.text().is_empty() {
                return ControlFlow::Continue(());
            }
            match out
                .write_all(ev.text().as_bytes())
                .and_then(|()| out.flush())
            {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_err = Some(e);
                    ControlFlow::Break(())
                }
            }
        });
        if let Some(e) = write_err {
            return Err(e).context("cannot write to stdout");
        }
        let result = match res {
            Ok(r) => r,
            Err(e @ RuntimeError::ContextLength { .. }) => {
                // The conversation outgrew the context: drop this turn, keep the session.
                messages.pop();
                eprintln!("error: {e}; use /reset to start over");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            serde_json::to_writer(&mut out, &result_json(&result))?;
            writeln!(out)?;
        } else {
            writeln!(out)?;
        }
        out.flush()?;
        if !args.global.quiet && (interactive || args.global.verbose > 0) {
            eprintln!("[{}]", stats_line(&result));
        }
        messages.push(ChatMessage::new("assistant", result.text.as_str()));
    }
    Ok(())
}
