//! `edgelm bench`: prompt-processing and generation speed, in the spirit of llama-bench.
//!
//! For each thread count, each `-p N` test evaluates N tokens as one prompt from an empty cache,
//! and each `-n N` test generates N tokens one at a time from an empty cache (no sampling cost:
//! the tokens are fixed pseudo-random ids, as llama-bench does). Each test runs once to warm up,
//! then `-r` times; tokens/s is reported as mean ± standard deviation, plus the median.
//!
//! JSON output (`--json`): `{"model", "model_bytes", "n_params", "kernels", "pool", "results":
//! [{"test": "pp512", "n_threads", "n_tokens", "samples_ts": [...], "avg_ts", "stddev_ts",
//! "median_ts"}], "peak_rss_bytes"}`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_kernels::ThreadPool;
use edgelm_model::Logits;
use serde_json::json;

use super::{usage, GlobalArgs};

/// Arguments of `edgelm bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Prompt lengths to test, comma-separated (0 or empty: none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test, comma-separated (0 or empty: none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Thread counts to test, comma-separated (default: -t, else all cores).
    #[arg(long = "threads-list", value_delimiter = ',')]
    pub threads_list: Vec<u16>,
    /// Also measure memory read bandwidth (1 GiB buffer, best of 5) with each thread count,
    /// and the decode limit it implies: weight bytes read per token ÷ bandwidth.
    #[arg(long)]
    pub membw: bool,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// One test's measurements.
struct Sample {
    test: String,
    n_threads: usize,
    n_tokens: usize,
    ts: Vec<f64>,
}

impl Sample {
    fn mean(&self) -> f64 {
        self.ts.iter().sum::<f64>() / self.ts.len() as f64
    }
    fn stddev(&self) -> f64 {
        if self.ts.len() < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.ts.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (self.ts.len() - 1) as f64).sqrt()
    }
    fn median(&self) -> f64 {
        median(&self.ts)
    }
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Fixed pseudo-random token ids in `1..n_vocab` (deterministic, so runs are comparable).
fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (1 + (s >> 33) as usize % (n_vocab - 1)) as u32
        })
        .collect()
}

/// Runs `edgelm bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let model = super::load_model(&path, &file)?;
    let cfg = model.config();
    let n_vocab = cfg.n_vocab;
    if n_vocab < 2 {
        return Err(usage("the model's vocabulary is too small to benchmark"));
    }
    let prompts: Vec<usize> = args.n_prompt.iter().copied().filter(|&n| n > 0).collect();
    let gens: Vec<usize> = args.n_gen.iter().copied().filter(|&n| n > 0).collect();
    if prompts.is_empty() && gens.is_empty() && !args.membw {
        return Err(usage("nothing to measure: give -p and/or -n"));
    }
    let threads: Vec<usize> = if args.threads_list.is_empty() {
        vec![args.global.n_threads()]
    } else {
        args.threads_list
            .iter()
            .map(|&t| usize::from(t.max(1)))
            .collect()
    };
    let n_ctx = prompts
        .iter()
        .chain(&gens)
        .copied()
        .max()
        .unwrap_or(1)
        .max(2);
    let reps = args.repetitions as usize;
    let mut samples = Vec::new();
    let mut bandwidths = Vec::new();
    let mut kernels_pool = ("", "");
    // Bytes of weights a decode step reads: every tensor but the token embedding (one row),
    // unless the output matrix is the embedding (tied).
    let decode_bytes: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.name != "token_embd.weight" || cfg.tied_output)
        .map(|t| t.n_bytes)
        .sum();
    for &nt in &threads {
        let pool = ThreadPool::new(nt).with_context(|| format!("cannot start {nt} threads"))?;
        kernels_pool = (edgelm_kernels::kernels().name(), pool.backend_name());
        let mut state = model
            .new_state_with(
                n_ctx,
                n_ctx.min(edgelm_model::DEFAULT_MAX_BATCH),
                args.cache.cache_type,
            )
            .context("cannot allocate the model state")?;
        let tests = prompts
            .iter()
            .map(|&n| (format!("pp{n}"), n, true))
            .chain(gens.iter().map(|&n| (format!("tg{n}"), n, false)));
        for (test, n, prompt) in tests {
            let toks = tokens(n, n_vocab, if prompt { 42 } else { 7 } + n as u64);
            let mut ts = Vec::with_capacity(reps);
            // One warm-up run, then `reps` timed ones, each from an empty cache.
            for rep in 0..=reps {
                state.reset();
                let t0 = Instant::now();
                if prompt {
                    model
                        .forward(&pool, &mut state, &toks, Logits::Last)
                        .context("prompt evaluation failed")?;
                } else {
                    for &t in &toks {
                        model
                            .forward(&pool, &mut state, &[t], Logits::Last)
                            .context("generation step failed")?;
                    }
                }
                let secs = t0.elapsed().as_secs_f64();
                if rep > 0 {
                    ts.push(n as f64 / secs);
                }
            }
            let s = Sample {
                test,
                n_threads: nt,
                n_tokens: n,
                ts,
            };
            report_line(args, &s)?;
            samples.push(s);
        }
    }
    // Peak RSS of the speed tests, before the bandwidth buffer exists.
    let peak = edgelm_runtime::mem::peak_rss_bytes();
    for &nt in &threads {
        let pool = ThreadPool::new(nt).with_context(|| format!("cannot start {nt} threads"))?;
        if args.membw {
            let bw = edgelm_kernels::membw::read_bandwidth(&pool, 1 << 30, 5);
            let limit = bw / decode_bytes as f64;
            if !args.global.json {
                writeln!(std::io::stdout(),
                    "| threads {nt:>2} | read bandwidth {:.2} GB/s | decode reads {:.1} MB/token | limit {:.1} t/s |",
                    bw / 1e9,
                    decode_bytes as f64 / 1e6,
                    limit
                )?;
            }
            bandwidths
                .push(json!({"n_threads": nt, "read_bytes_per_s": bw, "decode_limit_ts": limit}));
        }
    }
    let model_bytes: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let n_params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    if args.global.json {
        let results: Vec<_> = samples
            .iter()
            .map(|s| {
                json!({
                    "test": s.test,
                    "n_threads": s.n_threads,
                    "n_tokens": s.n_tokens,
                    "samples_ts": s.ts,
                    "avg_ts": s.mean(),
                    "stddev_ts": s.stddev(),
                    "median_ts": s.median(),
                })
            })
            .collect();
        writeln!(
            std::io::stdout(),
            "{}",
            json!({
                "model": path.display().to_string(),
                "model_bytes": model_bytes,
                "n_params": n_params,
                "kernels": kernels_pool.0,
                "pool": kernels_pool.1,
                "results": results,
                "decode_bytes_per_token": decode_bytes,
                "bandwidth": bandwidths,
                "peak_rss_bytes": peak,
            })
        )?;
    } else {
        writeln!(
            std::io::stdout(),
            "model: {} ({:.2} MiB, {:.2} M params) | kernels: {} | pool: {} | peak RSS: {}",
            path.display(),
            model_bytes as f64 / (1024.0 * 1024.0),
            n_params as f64 / 1e6,
            kernels_pool.0,
            kernels_pool.1,
            peak.map_or("n/a".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / (1024.0 * 1024.0)
            ))
        )?;
    }
    Ok(())
}

fn report_line(args: &BenchArgs, s: &Sample) -> std::io::Result<()> {
    if args.global.json {
        return Ok(());
    }
    writeln!(
        std::io::stdout(),
        "| threads {:>2} | {:>7} | {:>9.2} ± {:>6.2} t/s | median {:>9.2} t/s |",
        s.n_threads,
        s.test,
        s.mean(),
        s.stddev(),
        s.median()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s = Sample {
            test: "tg1".into(),
            n_threads: 1,
            n_tokens: 1,
            ts: vec![1.0, 2.0, 3.0],
        };
        assert_eq!(s.mean(), 2.0);
        assert!((s.stddev() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bench_tokens_are_valid_ids() {
        let t = tokens(1000, 5, 1);
        assert!(t.iter().all(|&x| (1..5).contains(&x)));
        assert_eq!(t, tokens(1000, 5, 1));
    }
}
