//! `edgelm tokenize`: token ids as llama.cpp tokenizes a prompt.
//!
//! Plain output: the ids separated by spaces on one line. JSON output (`--json`):
//! `{"tokens": [ids], "n_tokens": N}`, plus `"pieces": [text of each token]` with `-v`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::GlobalArgs;

/// Arguments of `edgelm tokenize`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "file"])))]
pub struct TokenizeArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Text to tokenize.
    #[arg(short, long, allow_hyphen_values = true)]
    pub prompt: Option<String>,
    /// File whose content is tokenized.
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Parse special-token text (e.g. "<|im_start|>") into special tokens.
    #[arg(long)]
    pub special: bool,
    /// Do not add the model's BOS/EOS tokens.
    #[arg(long)]
    pub no_bos: bool,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm tokenize`.
pub fn run(args: &TokenizeArgs) -> Result<()> {
    let text = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => super::read_text(f)?,
        (None, None) => return Err(super::usage("give the text with -p or -f")),
    };
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let ids = tok
        .encode(&text, !args.no_bos, args.special)
        .context("tokenization failed")?;
    let mut out = std::io::stdout().lock();
    if args.global.json {
        let mut obj = json!({"tokens": ids, "n_tokens": ids.len()});
        if args.global.verbose > 0 {
            let pieces: Vec<String> = ids
                .iter()
                .map(|&id| String::from_utf8_lossy(tok.piece(id, true)).into_owned())
                .collect();
            obj["pieces"] = json!(pieces);
        }
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", line.join(" "))?;
    }
    Ok(())
}
