//! `edgelm eval --base A --model B -f TEXT`: how far a (quantized) model is from its base on a
//! text, as llama-perplexity's KL-divergence mode reports it: both perplexities, KL divergence
//! of the model's next-token distribution from the base's (mean, median, p99, p99.9, max),
//! top-1 agreement and Δp of the next token. Windows as `edgelm perplexity`.
//!
//! `--base-cache FILE` saves the base's 16-bit log-probabilities on the first run (llama.cpp's
//! `--kl-divergence-base` format, plus a trailer naming the base by SHA-256) and reuses them
//! afterwards, so a sweep runs the base once; a file made for another base, text, window
//! length or window count is refused. llama-perplexity's own base files are read too. The
//! figures are the same with or without the file (the base is encoded in 16 bits either way,
//! as llama.cpp does).
//!
//! The full-precision reference for edgelm's default model is its F32 dump
//! (`edgelm quantize MODEL base.gguf --type F32`), since the model is distributed as Q4_1.
//!
//! Plain output: per-window progress on stderr, a llama-perplexity-style report on stdout.
//! JSON output (`--json`): `{"ppl", "ppl_stderr", "ppl_base", "ppl_base_stderr",
//! "ln_ppl_ratio", "ln_ppl_ratio_stderr", "kld_mean", "kld_mean_stderr", "kld_median",
//! "kld_p99", "kld_p999", "kld_max", "same_top", "same_top_stderr", "delta_p_mean",
//! "delta_p_rms", "n_chunks", "n_tokens_scored", "n_ctx", "base_cache"}` (fractions, not percent;
//! `base_cache` is `"written"`, `"read"` or null).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_runtime::{
    kl_divergence, kl_divergence_from, kld_engine, kld_windows, KldBaseReader, KldBaseWriter,
    KldProgress, KldResult, LiveBase, PerplexityOptions,
};
use serde_json::json;

use super::{usage, GlobalArgs};

/// Arguments of `edgelm eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The reference model (e.g. the F32 dump of the default model). Optional when
    /// --base-cache names an existing file.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The base's log-probabilities: read from FILE when it exists (checked against the text,
    /// window, chunks, vocabulary and --base when given), else computed and written there.
    #[arg(long, value_name = "FILE")]
    pub base_cache: Option<PathBuf>,
    /// The model to judge (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Text file to evaluate on.
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
    pub global: GlobalArgs,
}

/// `sha256:HEX` of a file: the base's identity in a base file's trailer.
pub fn file_digest(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// Runs `edgelm eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let existing = args.base_cache.as_ref().filter(|c| c.exists());
    if existing.is_none() && args.base.is_none() {
        return Err(usage(match &args.base_cache {
            Some(c) => format!(
                "{} does not exist yet: give --base to compute the base's log-probabilities",
                c.display()
            ),
            None => "--base MODEL (or --base-cache with an existing file) is required".into(),
        }));
    }
    let text = super::read_text(&args.file)?;
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let tokens = tok
        .encode(&text, true, false)
        .with_context(|| format!("cannot tokenize {}", args.file.display()))?;
    let opts = PerplexityOptions {
        n_ctx: args.ctx_size as usize,
        n_chunks: args.chunks.map(|n| n as usize),
        n_batch: args.batch_size as usize,
        bos: if tok.add_bos() { tok.bos() } else { None },
        cache_type: args.cache.cache_type,
    };
    let (n_chunks, n_ctx) = kld_windows(&tokens, tok.n_vocab(), &opts)?;
    let show = !args.global.quiet && !args.global.json;
    let progress = |p: &KldProgress| {
        if show {
            eprintln!(
                "[{}/{}] PPL {:.4} base {:.4} KLD {:.6} same top {:.3} %",
                p.chunk,
                p.n_chunks,
                p.ppl,
                p.ppl_base,
                p.mean_kld,
                100.0 * p.same_top
            );
        }
    };
    let (r, base_shown, cache_state): (KldResult, String, Option<&str>) =
        match (existing, &args.base) {
            (Some(cache), base) => {
                let mut reader = KldBaseReader::open(cache)?;
                let base_id = base.as_deref().map(file_digest).transpose()?;
                reader
                    .info()
                    .check(
                        cache,
                        &tokens,
                        n_ctx,
                        n_chunks,
                        tok.n_vocab(),
                        base_id.as_deref(),
                    )
                    .map_err(|e| usage(e.to_string()))?;
                let model = super::load_model(&path, &file)?;
                let pool = super::thread_pool(&args.global)?;
                let r = kl_divergence_from(&mut reader, &model, &pool, &tokens, &opts, progress)?;
                let shown = match base {
                    Some(b) => format!("{} (from {})", b.display(), cache.display()),
                    None => cache.display().to_string(),
                };
                (r, shown, Some("read"))
            }
            (None, Some(base_path)) => {
                let (base_path, base_file) = super::open_gguf(Some(base_path))?;
                let base_tok = super::load_tokenizer(&base_path, &base_file)?;
                if base_tok.n_vocab() != tok.n_vocab() {
                    return Err(usage(format!(
                        "{} and {} have different vocabularies ({} and {} tokens)",
                        base_path.display(),
                        path.display(),
                        base_tok.n_vocab(),
                        tok.n_vocab()
                    )));
                }
                let base = super::load_model(&base_path, &base_file)?;
                let model = super::load_model(&path, &file)?;
                let pool = super::thread_pool(&args.global)?;
                match &args.base_cache {
                    None => {
                        let r = kl_divergence(&base, &model, &pool, &tokens, &opts, progress)?;
                        (r, base_path.display().to_string(), None)
                    }
                    Some(cache) => {
                        let mut writer = KldBaseWriter::create(
                            cache,
                            &tokens,
                            n_ctx,
                            n_chunks,
                            tok.n_vocab(),
                            Some(file_digest(&base_path)?),
                        )?;
                        let mut engine = kld_engine(&base, &pool, &opts)?;
                        let mut sink = |rows: &[u16]| writer.write_chunk(rows);
                        let mut live = LiveBase::new(&mut engine, Some(&mut sink));
                        let r =
                            kl_divergence_from(&mut live, &model, &pool, &tokens, &opts, progress)?;
                        writer.finish()?;
                        (r, base_path.display().to_string(), Some("written"))
                    }
                }
            }
            (None, None) => return Err(usage("--base MODEL is required")),
        };
    let mut out = std::io::stdout().lock();
    if args.global.json {
        let obj = json!({
            "ppl": r.ppl.mean,
            "ppl_stderr": r.ppl.unc,
            "ppl_base": r.ppl_base.mean,
            "ppl_base_stderr": r.ppl_base.unc,
            "ln_ppl_ratio": r.ln_ppl_ratio.mean,
            "ln_ppl_ratio_stderr": r.ln_ppl_ratio.unc,
            "kld_mean": r.kld_mean.mean,
            "kld_mean_stderr": r.kld_mean.unc,
            "kld_median": r.kld_median,
            "kld_p99": r.kld_p99,
            "kld_p999": r.kld_p999,
            "kld_max": r.kld_max,
            "same_top": r.same_top.mean,
            "same_top_stderr": r.same_top.unc,
            "delta_p_mean": r.delta_p.mean,
            "delta_p_rms": r.delta_p_rms,
            "n_chunks": r.n_chunks,
            "n_tokens_scored": r.n_tokens_scored,
            "n_ctx": opts.n_ctx,
            "base_cache": cache_state,
        });
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else {
        writeln!(out, "base : {base_shown}")?;
        writeln!(out, "model: {}", path.display())?;
        writeln!(
            out,
            "{} windows of {} tokens, {} tokens scored",
            r.n_chunks, opts.n_ctx, r.n_tokens_scored
        )?;
        writeln!(
            out,
            "Mean PPL(Q)            : {:10.6} ± {:10.6}",
            r.ppl.mean, r.ppl.unc
        )?;
        writeln!(
            out,
            "Mean PPL(base)         : {:10.6} ± {:10.6}",
            r.ppl_base.mean, r.ppl_base.unc
        )?;
        writeln!(
            out,
            "Mean ln(PPL(Q)/PPL(base)): {:10.6} ± {:10.6}",
            r.ln_ppl_ratio.mean, r.ln_ppl_ratio.unc
        )?;
        writeln!(
            out,
            "Mean    KLD: {:10.6} ± {:10.6}",
            r.kld_mean.mean, r.kld_mean.unc
        )?;
        writeln!(out, "Maximum KLD: {:10.6}", r.kld_max)?;
        writeln!(out, "99.9%   KLD: {:10.6}", r.kld_p999)?;
        writeln!(out, "99.0%   KLD: {:10.6}", r.kld_p99)?;
        writeln!(out, "Median  KLD: {:10.6}", r.kld_median)?;
        writeln!(
            out,
            "Mean    Δp: {:6.3} %, RMS Δp: {:6.3} %",
            100.0 * r.delta_p.mean,
            100.0 * r.delta_p_rms
        )?;
        writeln!(
            out,
            "Same top p: {:6.3} ± {:5.3} %",
            100.0 * r.same_top.mean,
            100.0 * r.same_top.unc
        )?;
    }
    Ok(())
}
