//! `edgelm imatrix -m MODEL -f CALIB -o imatrix.gguf`: an importance matrix from calibration
//! text, as llama-imatrix computes it: the text is cut into `-c`-token chunks (the first
//! token of each replaced by BOS when the vocabulary adds one), every chunk is run through the
//! model, and for every `blk.*` weight the squared inputs of its matrix product are summed per
//! input column (in f32, token by token, as llama.cpp does), with the number of tokens seen.
//! The file is llama-imatrix's GGUF format (`NAME.in_sum2`, `NAME.counts`,
//! `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`), which llama-quantize and
//! `edgelm quantize --imatrix` read.
//!
//! JSON output (`--json`): `{"output", "n_entries", "n_chunks", "chunk_size", "n_tokens",
//! "seconds"}`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Args;
use edgelm_model::{ActivationObserver, CacheType, Logits};
use edgelm_quant::imatrix::{write_gguf, Stats};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::GlobalArgs;

/// Arguments of `edgelm imatrix`.
#[derive(Debug, Args)]
pub struct ImatrixArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Calibration text file.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Output file.
    #[arg(short, long, default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Chunk length in tokens (llama-imatrix's -c).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(2..))]
    pub ctx_size: u32,
    /// Use at most this many chunks (default: all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: Option<u32>,
    /// Tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Default)]
struct Acc {
    sums: Vec<f32>,
    count: u64,
    non_finite: bool,
}

/// Accumulates squared inputs per weight (llama-imatrix's `collect_imatrix` for dense weights).
struct Collector(Arc<Mutex<BTreeMap<String, Acc>>>);

impl ActivationObserver for Collector {
    fn observe(&mut self, weight: &str, x: &[f32], n_in: usize) {
        if !weight.starts_with("blk.") || n_in == 0 {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(weight.to_owned()).or_default();
        if e.sums.len() != n_in {
            e.sums = vec![0.0; n_in];
        }
        for row in x.chunks_exact(n_in) {
            for (acc, &v) in e.sums.iter_mut().zip(row) {
                *acc += v * v;
            }
        }
        e.count += (x.len() / n_in) as u64;
        if e.sums.iter().any(|v| !v.is_finite()) {
            e.non_finite = true;
        }
    }
}

/// Runs `edgelm imatrix`.
pub fn run(args: &ImatrixArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let text = super::read_text(&args.file)?;
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let tokens = tok
        .encode(&text, true, false)
        .with_context(|| format!("cannot tokenize {}", args.file.display()))?;
    let n_ctx = args.ctx_size as usize;
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{} tokenizes to {} tokens; at least {} (two chunks of {n_ctx}) are needed",
            args.file.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunks = args
        .chunks
        .map_or(n_chunk_max, |c| (c as usize).min(n_chunk_max));
    let model = super::load_model(&path, &file)?;
    let pool = super::thread_pool(&args.global)?;
    let n_batch = (args.batch_size as usize).min(n_ctx);
    let mut state = model
        .new_state_with(n_ctx, n_batch, CacheType::F16)
        .context("cannot allocate the evaluation state")?;
    let stats: Arc<Mutex<BTreeMap<String, Acc>>> = Arc::default();
    state.set_observer(Some(Box::new(Collector(Arc::clone(&stats)))));
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let bar = if args.global.quiet || args.global.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(n_chunks as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {elapsed_precise}")
                .expect("static template"),
        );
        b
    };
    let mut window = Vec::with_capacity(n_ctx);
    for chunk in 0..n_chunks {
        window.clear();
        window.extend_from_slice(&tokens[chunk * n_ctx..(chunk + 1) * n_ctx]);
        if let Some(b) = bos {
            window[0] = b;
        }
        state.truncate(0);
        model
            .forward(&pool, &mut state, &window, Logits::Last)
            .with_context(|| format!("forward pass failed on chunk {}", chunk + 1))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    state.set_observer(None);
    let map = std::mem::take(&mut *stats.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out_stats = BTreeMap::new();
    for (name, acc) in map {
        if acc.non_finite {
            bail!("non-finite activations in the inputs of {name}");
        }
        out_stats.insert(
            name,
            Stats {
                in_sum2: acc.sums,
                counts: vec![acc.count as f32],
            },
        );
    }
    let n_entries = out_stats.len();
    let w = write_gguf(
        &out_stats,
        &[args.file.display().to_string()],
        n_chunks as u32,
        n_ctx as u32,
    )?;
    let mut tmp = args.output.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    w.write_file(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let seconds = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.global.json {
        serde_json::to_writer(
            &mut out,
            &json!({
                "output": args.output.display().to_string(),
                "n_entries": n_entries,
                "n_chunks": n_chunks,
                "chunk_size": n_ctx,
                "n_tokens": n_chunks * n_ctx,
                "seconds": seconds,
            }),
        )?;
        writeln!(out)?;
    } else if !args.global.quiet {
        writeln!(
            out,
            "wrote {} ({n_entries} entries, {n_chunks} chunks of {n_ctx} tokens) in {seconds:.2} s",
            args.output.display()
        )?;
    }
    Ok(())
}
