//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it
//! (`tools/perplexity/perplexity.cpp`, `perplexity()`):
//!
//! - the token stream is cut into `n_chunks = min(requested, len / n_ctx)` windows of `n_ctx`
//!   tokens; at least `2 * n_ctx` tokens are required;
//! - each window is evaluated from an empty cache; its first token is replaced by BOS when the
//!   vocabulary adds BOS (`llama_vocab_get_add_bos`; not for SmolLM2);
//! - only the second half is scored: the logits at positions `first = n_ctx / 2 ..= n_ctx - 2`
//!   predict the tokens at `first + 1 ..= n_ctx - 1` (`n_ctx - first - 1` per window);
//! - each score is `-log_softmax` with the maximum in f32 and the sum of exponentials in f64;
//! - after each window the running estimate is `exp(nll / count)`; at the end
//!   `PPL = exp(mean)` and its error is `sqrt((mean(nll²) - mean²) / (count - 1)) * PPL`.

use std::sync::Arc;
use std::time::Instant;

use edgelm_kernels::ThreadPool;
use edgelm_model::Model;

use crate::{LogitsSource, ModelEngine, RuntimeError};

/// Parameters of a perplexity run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerplexityOptions {
    /// Window length in tokens (llama-perplexity's `-c`, default 512).
    pub n_ctx: usize,
    /// Evaluate at most this many windows (`--chunks`); `None`: all that fit.
    pub n_chunks: Option<usize>,
    /// Tokens per forward call (`-b`); values above `n_ctx` act as `n_ctx`.
    pub n_batch: usize,
    /// The BOS id when the vocabulary adds BOS (`llama_vocab_get_add_bos`), else `None`.
    pub bos: Option<u32>,
    /// The KV cache's element type (llama-perplexity's `-ctk/-ctv`).
    pub cache_type: edgelm_model::CacheType,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        Self {
            n_ctx: 512,
            n_chunks: None,
            n_batch: 2048,
            bos: None,
            cache_type: edgelm_model::CacheType::F16,
        }
    }
}

/// Progress after one window.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkProgress {
    /// 1-based index of the window just scored.
    pub chunk: usize,
    /// Windows in the run.
    pub n_chunks: usize,
    /// `exp(nll / count)` over all windows so far (what llama-perplexity prints as `[i]x`).
    pub running_ppl: f64,
    /// Seconds this window took.
    pub seconds: f64,
}

/// Result of a perplexity run.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityResult {
    /// Final perplexity.
    pub ppl: f64,
    /// llama.cpp's `±` estimate (0 when undefined, e.g. all scores equal).
    pub ppl_stderr: f64,
    /// Windows evaluated.
    pub n_chunks: usize,
    /// Tokens scored in all.
    pub n_tokens_scored: usize,
    /// Running estimate after each window.
    pub per_chunk: Vec<f64>,
}

/// Negative log-likelihood of `target` under `logits`, as llama.cpp's `log_softmax`.
pub fn token_nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    -(((logits[target] - max) as f64) - sum_exp.ln())
}

/// Runs perplexity over `tokens` with any logits source (the real model or a test double).
pub fn perplexity_with<S: LogitsSource + ?Sized>(
    source: &mut S,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut progress: impl FnMut(&ChunkProgress),
) -> Result<PerplexityResult, RuntimeError> {
    let n_ctx = opts.n_ctx;
    if n_ctx < 4 {
        return Err(RuntimeError::InvalidOption {
            name: "n_ctx",
            reason: format!("perplexity needs a context of at least 4 tokens, got {n_ctx}"),
        });
    }
    if opts.n_batch == 0 {
        return Err(RuntimeError::InvalidOption {
            name: "n_batch",
            reason: "must be at least 1".into(),
        });
    }
    if opts.n_chunks == Some(0) {
        return Err(RuntimeError::InvalidOption {
            name: "n_chunks",
            reason: "must be at least 1".into(),
        });
    }
    if tokens.len() < 2 * n_ctx {
        return Err(RuntimeError::NotEnoughTokens {
            needed: 2 * n_ctx,
            got: tokens.len(),
            n_ctx,
        });
    }
    if source.n_ctx() < n_ctx {
        return Err(RuntimeError::InvalidOption {
            name: "n_ctx",
            reason: format!(
                "the evaluation state holds {} tokens, fewer than the window of {n_ctx}",
                source.n_ctx()
            ),
        });
    }
    let n_vocab = source.n_vocab();
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id: bad, n_vocab });
    }
    if let Some(bos) = opts.bos.filter(|&b| b as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id: bos, n_vocab });
    }

    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunks = opts.n_chunks.map_or(n_chunk_max, |n| n.min(n_chunk_max));
    let n_batch = opts.n_batch.min(n_ctx);
    let first = n_ctx / 2;

    let mut window = Vec::with_capacity(n_ctx);
    let mut nll = 0.0f64;
    let mut nll2 = 0.0f64;
    let mut count = 0usize;
    let mut per_chunk = Vec::with_capacity(n_chunks);

    for chunk in 0..n_chunks {
        let t0 = Instant::now();
        let start = chunk * n_ctx;
        window.clear();
        window.extend_from_slice(&tokens[start..start + n_ctx]);
        if let Some(bos) = opts.bos {
            window[0] = bos;
        }
        source.truncate(0);
        let mut batch_start = 0;
        while batch_start < n_ctx {
            // Batches end at `first` too: the unscored first half needs no logits.
            let mut batch_end = (batch_start + n_batch).min(n_ctx);
            if batch_start < first && batch_end > first {
                batch_end = first;
            }
            let scored = batch_start >= first;
            let logits = source.eval(&window[batch_start..batch_end], scored)?;
            if !scored {
                batch_start = batch_end;
                continue;
            }
            let n_rows = batch_end - batch_start;
            if logits.len() != n_rows * n_vocab {
                return Err(RuntimeError::InvalidOption {
                    name: "logits",
                    reason: format!(
                        "expected {} logits for {n_rows} tokens, got {}",
                        n_rows * n_vocab,
                        logits.len()
                    ),
                });
            }
            for (row, pos) in (batch_start..batch_end).enumerate() {
                if pos + 1 >= n_ctx {
                    continue;
                }
                // Targets are the original tokens (never the BOS substitute).
                let target = tokens[start + pos + 1] as usize;
                let v = token_nll(&logits[row * n_vocab..(row + 1) * n_vocab], target);
                nll += v;
                nll2 += v * v;
            }
            batch_start = batch_end;
        }
        count += n_ctx - first - 1;
        let running = (nll / count as f64).exp();
        per_chunk.push(running);
        progress(&ChunkProgress {
            chunk: chunk + 1,
            n_chunks,
            running_ppl: running,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }

    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PerplexityResult {
        ppl,
        ppl_stderr,
        n_chunks,
        n_tokens_scored: count,
        per_chunk,
    })
}

/// Runs perplexity on the real model (a fresh state of `opts.n_ctx` positions).
pub fn perplexity(
    model: &Arc<Model>,
    pool: &Arc<ThreadPool>,
    tokens: &[u32],
    opts: &PerplexityOptions,
    progress: impl FnMut(&ChunkProgress),
) -> Result<PerplexityResult, RuntimeError> {
    if opts.n_ctx < 4 || opts.n_batch == 0 {
        // Reported with the proper message before any allocation.
        return perplexity_with(&mut NoSource, tokens, opts, progress);
    }
    let mut engine = ModelEngine::with_cache_type(
        Arc::clone(model),
        Arc::clone(pool),
        opts.n_ctx,
        opts.n_batch.min(opts.n_ctx),
        opts.cache_type,
    )?;
    perplexity_with(&mut engine, tokens, opts, progress)
}

/// Placeholder source used only to route option errors through [`perplexity_with`].
struct NoSource;

impl LogitsSource for NoSource {
    fn n_vocab(&self) -> usize {
        0
    }
    fn n_ctx(&self) -> usize {
        0
    }
    fn pos(&self) -> usize {
        0
    }
    fn truncate(&mut self, _n_tokens: usize) {}
    fn eval(&mut self, _tokens: &[u32], _all: bool) -> Result<&[f32], RuntimeError> {
        Ok(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic "model": logits depend on (position, token); records what it was fed.
    struct Synthetic {
        n_vocab: usize,
        n_ctx: usize,
        pos: usize,
        buf: Vec<f32>,
        fed: Vec<Vec<u32>>,
        /// (batch length, all logits requested) per eval call.
        all_flags: Vec<(usize, bool)>,
    }

    impl Synthetic {
        fn new(n_vocab: usize, n_ctx: usize) -> Self {
            Self {
                n_vocab,
                n_ctx,
                pos: 0,
                buf: Vec::new(),
                fed: vec![Vec::new()],
                all_flags: Vec::new(),
            }
        }
        fn row(n_vocab: usize, pos: usize, tok: u32) -> Vec<f32> {
            (0..n_vocab)
                .map(|v| (((v * 7 + pos * 3 + tok as usize * 5) % 13) as f32) * 0.37 - 1.0)
                .collect()
        }
    }

    impl LogitsSource for Synthetic {
        fn n_vocab(&self) -> usize {
            self.n_vocab
        }
        fn n_ctx(&self) -> usize {
            self.n_ctx
        }
        fn pos(&self) -> usize {
            self.pos
        }
        fn truncate(&mut self, n_tokens: usize) {
            assert_eq!(n_tokens, 0);
            self.pos = 0;
            self.fed.push(Vec::new());
        }
        fn eval(&mut self, tokens: &[u32], all: bool) -> Result<&[f32], RuntimeError> {
            self.buf.clear();
            for &t in tokens {
                self.buf.extend(Self::row(self.n_vocab, self.pos, t));
                self.pos += 1;
            }
            self.fed.last_mut().unwrap().extend_from_slice(tokens);
            self.all_flags.push((tokens.len(), all));
            if all {
                Ok(&self.buf)
            } else {
                Ok(&self.buf[self.buf.len() - self.n_vocab..])
            }
        }
    }

    fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
        (0..n).map(|i| ((i * 11 + 3) % n_vocab) as u32).collect()
    }

    /// Straightforward reference: explicit softmax per scored position, all in f64.
    fn reference(
        toks: &[u32],
        n_vocab: usize,
        n_ctx: usize,
        bos: Option<u32>,
    ) -> (f64, f64, usize) {
        let n_chunks = toks.len() / n_ctx;
        let mut scores = Vec::new();
        for c in 0..n_chunks {
            let win = &toks[c * n_ctx..(c + 1) * n_ctx];
            for pos in n_ctx / 2..n_ctx - 1 {
                let input = if pos == 0 {
                    bos.unwrap_or(win[0])
                } else {
                    win[pos]
                };
                let row = Synthetic::row(n_vocab, pos, input);
                let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
                let p = (row[win[pos + 1] as usize] as f64).exp() / z;
                scores.push(-p.ln());
            }
        }
        let n = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
        let ppl = mean.exp();
        (ppl, (var / (n - 1.0)).sqrt() * ppl, scores.len())
    }

    #[test]
    fn matches_reference_formula() {
        let (n_vocab, n_ctx) = (17, 8);
        let toks = tokens(8 * 5 + 3, n_vocab);
        for n_batch in [1, 3, 8, 100] {
            let mut src = Synthetic::new(n_vocab, n_ctx);
            let opts = PerplexityOptions {
                n_ctx,
                n_chunks: None,
                n_batch,
                bos: None,
                cache_type: Default::default(),
            };
            let mut seen = Vec::new();
            let r = perplexity_with(&mut src, &toks, &opts, |p| seen.push(p.chunk)).unwrap();
            let (ppl, err, n) = reference(&toks, n_vocab, n_ctx, None);
            assert_eq!(r.n_chunks, 5);
            assert_eq!(r.n_tokens_scored, n);
            assert_eq!(n, 5 * (n_ctx - n_ctx / 2 - 1));
            assert!((r.ppl - ppl).abs() < 1e-5 * ppl, "{} vs {ppl}", r.ppl);
            assert!(
                (r.ppl_stderr - err).abs() < 1e-4 * err,
                "{} vs {err}",
                r.ppl_stderr
            );
            assert_eq!(seen, vec![1, 2, 3, 4, 5]);
            // Logits are requested only for the scored half, never across `first`.
            let mut pos = 0;
            for &(len, all) in &src.all_flags {
                let p = pos % n_ctx;
                assert_eq!(
                    all,
                    p >= n_ctx / 2,
                    "batch at {p} (len {len}, n_batch {n_batch})"
                );
                assert!(p >= n_ctx / 2 || p + len <= n_ctx / 2);
                pos += len;
            }
            assert_eq!(r.per_chunk.len(), 5);
            assert!((r.per_chunk[4] - r.ppl).abs() < 1e-12);
        }
    }

    #[test]
    fn running_estimate_after_first_chunk_is_that_chunks_ppl() {
        let (n_vocab, n_ctx) = (11, 6);
        let toks = tokens(24, n_vocab);
        let mut src = Synthetic::new(n_vocab, n_ctx);
        let opts = PerplexityOptions {
            n_ctx,
            n_batch: 6,
            ..PerplexityOptions::default()
        };
        let r = perplexity_with(&mut src, &toks, &opts, |_| {}).unwrap();
        let (first_ppl, _, _) = reference(&toks[..n_ctx], n_vocab, n_ctx, None);
        assert!((r.per_chunk[0] - first_ppl).abs() < 1e-6 * first_ppl);
    }

    #[test]
    fn bos_replaces_first_token_of_each_window_and_chunks_limit() {
        let (n_vocab, n_ctx) = (13, 4);
        let toks = tokens(20, n_vocab);
        let mut src = Synthetic::new(n_vocab, n_ctx);
        let opts = PerplexityOptions {
            n_ctx,
            n_chunks: Some(3),
            n_batch: 2,
            bos: Some(12),
            cache_type: Default::default(),
        };
        let r = perplexity_with(&mut src, &toks, &opts, |_| {}).unwrap();
        assert_eq!(r.n_chunks, 3);
        let windows: Vec<&Vec<u32>> = src.fed.iter().filter(|w| !w.is_empty()).collect();
        assert_eq!(windows.len(), 3);
        for (c, w) in windows.iter().enumerate() {
            assert_eq!(w[0], 12);
            assert_eq!(&w[1..], &toks[c * n_ctx + 1..(c + 1) * n_ctx]);
        }
        let (ppl, _, _) = reference(&toks[..12], n_vocab, n_ctx, Some(12));
        assert!((r.ppl - ppl).abs() < 1e-5 * ppl);
    }

    #[test]
    fn token_nll_of_uniform_is_log_vocab() {
        let v = token_nll(&[0.5; 8], 3);
        assert!((v - 8f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut src = Synthetic::new(5, 8);
        let o = PerplexityOptions {
            n_ctx: 8,
            ..PerplexityOptions::default()
        };
        assert!(matches!(
            perplexity_with(&mut src, &tokens(15, 5), &o, |_| {}),
            Err(RuntimeError::NotEnoughTokens {
                needed: 16,
                got: 15,
                ..
            })
        ));
        let mut bad = tokens(16, 5);
        bad[3] = 9;
        assert!(matches!(
            perplexity_with(&mut src, &bad, &o, |_| {}),
            Err(RuntimeError::TokenOutOfRange { id: 9, .. })
        ));
        for o in [
            PerplexityOptions {
                n_ctx: 2,
                ..o.clone()
            },
            PerplexityOptions {
                n_batch: 0,
                ..o.clone()
            },
            PerplexityOptions {
                n_chunks: Some(0),
                ..o.clone()
            },
            PerplexityOptions {
                n_ctx: 16,
                ..o.clone()
            },
        ] {
            assert!(
                perplexity_with(&mut src, &tokens(64, 5), &o, |_| {}).is_err(),
                "{o:?}"
            );
        }
    }
}
