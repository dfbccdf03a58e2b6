//! Comparing a model with a reference ("base") model on the same text, as llama-perplexity's
//! KL-divergence mode does (`--kl-divergence`): both are evaluated on the windows perplexity
//! uses (see [`crate::perplexity_with`]: `n_ctx`-token windows, second half scored), and per
//! scored token we record
//!
//! - each model's negative log-likelihood of the next token (→ both perplexities),
//! - `KL(base ‖ model) = Σ_v p_base(v) · (ln p_base(v) − ln p_model(v))` over the vocabulary,
//! - whether the two arg-maxes agree (llama.cpp's "same top p"),
//! - `Δp = p_model(next) − p_base(next)`.
//!
//! Statistics follow llama.cpp: means with `sqrt((mean(x²) − mean²) / (n − 1))` uncertainty,
//! the median as the middle value (mean of the two middle ones for even counts) and
//! percentiles by linear interpolation between sorted values. One difference: llama.cpp
//! stores the base's log-probabilities in 16 bits per token between its two runs; here both
//! models run side by side and everything is computed in f64 from the f32 logits.

use std::sync::Arc;

use edgelm_kernels::ThreadPool;
use edgelm_model::Model;

use crate::perplexity::token_nll;
use crate::{LogitsSource, ModelEngine, PerplexityOptions, RuntimeError};

/// Progress after one window.
#[derive(Debug, Clone, PartialEq)]
pub struct KldProgress {
    /// 1-based window index.
    pub chunk: usize,
    /// Windows in the run.
    pub n_chunks: usize,
    /// Running perplexity of the model.
    pub ppl: f64,
    /// Running perplexity of the base.
    pub ppl_base: f64,
    /// Running mean KL divergence.
    pub mean_kld: f64,
    /// Running top-1 agreement (0..1).
    pub same_top: f64,
}

/// A mean with llama.cpp's uncertainty estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanUnc {
    /// Mean.
    pub mean: f64,
    /// Its uncertainty.
    pub unc: f64,
}

fn mean_unc(sum: f64, sum2: f64, n: usize) -> MeanUnc {
    let mean = sum / n as f64;
    let var = sum2 / n as f64 - mean * mean;
    let unc = if n > 1 && var > 0.0 {
        (var / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    MeanUnc { mean, unc }
}

/// Result of comparing a model with its base.
#[derive(Debug, Clone, PartialEq)]
pub struct KldResult {
    /// Perplexity of the model (± llama.cpp's error).
    pub ppl: MeanUnc,
    /// Perplexity of the base.
    pub ppl_base: MeanUnc,
    /// Mean of ln(PPL(model)/PPL(base)) per token (= mean NLL difference).
    pub ln_ppl_ratio: MeanUnc,
    /// KL(base ‖ model) per token: mean.
    pub kld_mean: MeanUnc,
    /// Median KL divergence.
    pub kld_median: f64,
    /// 99th percentile.
    pub kld_p99: f64,
    /// 99.9th percentile.
    pub kld_p999: f64,
    /// Largest.
    pub kld_max: f64,
    /// Fraction of tokens whose top-1 prediction agrees.
    pub same_top: MeanUnc,
    /// Mean Δp of the next token (model − base).
    pub delta_p: MeanUnc,
    /// RMS of Δp.
    pub delta_p_rms: f64,
    /// Windows evaluated.
    pub n_chunks: usize,
    /// Tokens scored.
    pub n_tokens_scored: usize,
}

/// `ln softmax(logits)` in f64, written into `out`.
fn log_softmax(logits: &[f32], out: &mut [f64]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let ln_sum = sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l as f64 - max - ln_sum;
    }
}

fn argmax(x: &[f32]) -> usize {
    // First maximum, as std::max_element.
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// llama.cpp's percentile: linear interpolation between sorted values.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let frac = p - ip as f64;
    (1.0 - frac) * sorted[ip] + frac * sorted[(ip + 1).min(sorted.len() - 1)]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n.is_multiple_of(2) {
        0.5 * (sorted[n / 2] + sorted[n / 2 - 1])
    } else {
        sorted[n / 2]
    }
}

/// Compares `model` with `base` over `tokens` (windowing as [`PerplexityOptions`] says; the
/// BOS substitution and batch size apply to both). The sources must share a vocabulary.
pub fn kl_divergence_with<B, M>(
    base: &mut B,
    model: &mut M,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut progress: impl FnMut(&KldProgress),
) -> Result<KldResult, RuntimeError>
where
    B: LogitsSource + ?Sized,
    M: LogitsSource + ?Sized,
{
    let n_ctx = opts.n_ctx;
    if n_ctx < 4 {
        return Err(RuntimeError::InvalidOption {
            name: "n_ctx",
            reason: format!("needs a context of at least 4 tokens, got {n_ctx}"),
        });
    }
    if opts.n_batch == 0 || opts.n_chunks == Some(0) {
        return Err(RuntimeError::InvalidOption {
            name: "n_batch/n_chunks",
            reason: "must be at least 1".into(),
        });
    }
    let n_vocab = base.n_vocab();
    if model.n_vocab() != n_vocab {
        return Err(RuntimeError::InvalidOption {
            name: "model",
            reason: format!(
                "the vocabularies differ: base has {n_vocab} tokens, model {}",
                model.n_vocab()
            ),
        });
    }
    if tokens.len() < 2 * n_ctx {
        return Err(RuntimeError::NotEnoughTokens {
            needed: 2 * n_ctx,
            got: tokens.len(),
            n_ctx,
        });
    }
    if base.n_ctx() < n_ctx || model.n_ctx() < n_ctx {
        return Err(RuntimeError::InvalidOption {
            name: "n_ctx",
            reason: "an evaluation state is shorter than the window".into(),
        });
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id: bad, n_vocab });
    }
    if let Some(bos) = opts.bos.filter(|&b| b as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id: bos, n_vocab });
    }

    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunks = opts.n_chunks.map_or(n_chunk_max, |n| n.min(n_chunk_max));
    let first = n_ctx / 2;
    // The unscored first half goes in one batch (at most n_batch tokens each), the scored half
    // in batches whose logits are kept.
    let n_batch = opts.n_batch.min(n_ctx);

    let (mut nll, mut nll2, mut nll_b, mut nll_b2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut dln, mut dln2) = (0.0f64, 0.0f64);
    let (mut kld_sum, mut kld_sum2) = (0.0f64, 0.0f64);
    let (mut dp, mut dp2) = (0.0f64, 0.0f64);
    let mut same = 0usize;
    let mut klds: Vec<f64> = Vec::new();
    let mut count = 0usize;
    let mut lp_b = vec![0.0f64; n_vocab];
    let mut lp_m = vec![0.0f64; n_vocab];
    let mut base_rows: Vec<f32> = Vec::new();
    let mut window = Vec::with_capacity(n_ctx);

    for chunk in 0..n_chunks {
        let start = chunk * n_ctx;
        window.clear();
        window.extend_from_slice(&tokens[start..start + n_ctx]);
        if let Some(bos) = opts.bos {
            window[0] = bos;
        }
        base.truncate(0);
        model.truncate(0);
        let mut batch_start = 0;
        while batch_start < n_ctx {
            let mut batch_end = (batch_start + n_batch).min(n_ctx);
            if batch_start < first && batch_end > first {
                batch_end = first;
            }
            let scored = batch_start >= first;
            let batch = &window[batch_start..batch_end];
            let n_rows = batch.len();
            {
                let l = base.eval(batch, scored)?;
                if scored {
                    if l.len() != n_rows * n_vocab {
                        return Err(bad_logits(n_rows * n_vocab, l.len()));
                    }
                    base_rows.clear();
                    base_rows.extend_from_slice(l);
                }
            }
            let lm = model.eval(batch, scored)?;
            if !scored {
                batch_start = batch_end;
                continue;
            }
            if lm.len() != n_rows * n_vocab {
                return Err(bad_logits(n_rows * n_vocab, lm.len()));
            }
            for (row, pos) in (batch_start..batch_end).enumerate() {
                if pos + 1 >= n_ctx {
                    continue;
                }
                let target = tokens[start + pos + 1] as usize;
                let rb = &base_rows[row * n_vocab..(row + 1) * n_vocab];
                let rm = &lm[row * n_vocab..(row + 1) * n_vocab];
                let (vb, vm) = (token_nll(rb, target), token_nll(rm, target));
                nll += vm;
                nll2 += vm * vm;
                nll_b += vb;
                nll_b2 += vb * vb;
                dln += vm - vb;
                dln2 += (vm - vb) * (vm - vb);
                log_softmax(rb, &mut lp_b);
                log_softmax(rm, &mut lp_m);
                let kld: f64 = lp_b
                    .iter()
                    .zip(&lp_m)
                    .map(|(&b, &m)| b.exp() * (b - m))
                    .sum();
                kld_sum += kld;
                kld_sum2 += kld * kld;
                klds.push(kld);
                let d = lp_m[target].exp() - lp_b[target].exp();
                dp += d;
                dp2 += d * d;
                if argmax(rb) == argmax(rm) {
                    same += 1;
                }
                count += 1;
            }
            batch_start = batch_end;
        }
        progress(&KldProgress {
            chunk: chunk + 1,
            n_chunks,
            ppl: (nll / count as f64).exp(),
            ppl_base: (nll_b / count as f64).exp(),
            mean_kld: kld_sum / count as f64,
            same_top: same as f64 / count as f64,
        });
    }

    let ppl_of = |sum: f64, sum2: f64| {
        let m = mean_unc(sum, sum2, count);
        let ppl = m.mean.exp();
        MeanUnc {
            mean: ppl,
            unc: ppl * m.unc,
        }
    };
    klds.sort_by(f64::total_cmp);
    let frac_same = same as f64 / count as f64;
    let dpm = mean_unc(dp, dp2, count);
    Ok(KldResult {
        ppl: ppl_of(nll, nll2),
        ppl_base: ppl_of(nll_b, nll_b2),
        ln_ppl_ratio: mean_unc(dln, dln2, count),
        kld_mean: mean_unc(kld_sum, kld_sum2, count),
        kld_median: median(&klds),
        kld_p99: percentile(&klds, 0.99),
        kld_p999: percentile(&klds, 0.999),
        kld_max: klds[klds.len() - 1],
        same_top: MeanUnc {
            mean: frac_same,
            unc: if count > 1 {
                (frac_same * (1.0 - frac_same) / (count - 1) as f64).sqrt()
            } else {
                0.0
            },
        },
        delta_p: dpm,
        delta_p_rms: (dp2 / count as f64).sqrt(),
        n_chunks,
        n_tokens_scored: count,
    })
}

fn bad_logits(expected: usize, got: usize) -> RuntimeError {
    RuntimeError::InvalidOption {
        name: "logits",
        reason: format!("expected {expected} logits, got {got}"),
    }
}

/// [`kl_divergence_with`] on two real models (fresh states of `opts.n_ctx` positions each).
pub fn kl_divergence(
    base: &Arc<Model>,
    model: &Arc<Model>,
    pool: &Arc<ThreadPool>,
    tokens: &[u32],
    opts: &PerplexityOptions,
    progress: impl FnMut(&KldProgress),
) -> Result<KldResult, RuntimeError> {
    let n_batch = opts.n_batch.clamp(1, opts.n_ctx.max(1));
    let mut eb = ModelEngine::with_cache_type(
        Arc::clone(base),
        Arc::clone(pool),
        opts.n_ctx.max(4),
        n_batch,
        opts.cache_type,
    )?;
    let mut em = ModelEngine::with_cache_type(
        Arc::clone(model),
        Arc::clone(pool),
        opts.n_ctx.max(4),
        n_batch,
        opts.cache_type,
    )?;
    kl_divergence_with(&mut eb, &mut em, tokens, opts, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits that depend only on the last token: row = f(token) (+ a perturbation).
    struct Table {
        n_vocab: usize,
        scale: f32,
        pos: usize,
        out: Vec<f32>,
    }

    impl LogitsSource for Table {
        fn n_vocab(&self) -> usize {
            self.n_vocab
        }
        fn n_ctx(&self) -> usize {
            1 << 20
        }
        fn pos(&self) -> usize {
            self.pos
        }
        fn truncate(&mut self, n: usize) {
            self.pos = self.pos.min(n);
        }
        fn eval(&mut self, tokens: &[u32], all: bool) -> Result<&[f32], RuntimeError> {
            self.out.clear();
            let rows: Vec<u32> = if all {
                tokens.to_vec()
            } else {
                vec![*tokens.last().unwrap()]
            };
            for t in rows {
                for v in 0..self.n_vocab {
                    self.out
                        .push(self.scale * (((t as usize * 7 + v * 3) % 11) as f32 - 5.0));
                }
            }
            self.pos += tokens.len();
            Ok(&self.out)
        }
    }

    fn table(scale: f32) -> Table {
        Table {
            n_vocab: 13,
            scale,
            pos: 0,
            out: Vec::new(),
        }
    }

    fn tokens() -> Vec<u32> {
        (0..64u32).map(|i| (i * 5 + 3) % 13).collect()
    }

    #[test]
    fn identical_models_have_zero_divergence() {
        let opts = PerplexityOptions {
            n_ctx: 16,
            n_batch: 5,
            ..Default::default()
        };
        let r =
            kl_divergence_with(&mut table(0.4), &mut table(0.4), &tokens(), &opts, |_| {}).unwrap();
        assert_eq!(r.n_chunks, 4);
        assert_eq!(r.n_tokens_scored, 4 * 7);
        assert!(r.kld_mean.mean.abs() < 1e-12 && r.kld_max.abs() < 1e-12);
        assert_eq!(r.same_top.mean, 1.0);
        assert_eq!(r.ppl.mean, r.ppl_base.mean);
        // The base perplexity equals the perplexity runner's.
        let p = crate::perplexity_with(&mut table(0.4), &tokens(), &opts, |_| {}).unwrap();
        assert!((p.ppl - r.ppl_base.mean).abs() < 1e-12);
    }

    #[test]
    fn divergence_against_a_direct_computation() {
        let opts = PerplexityOptions {
            n_ctx: 16,
            n_batch: 16,
            ..Default::default()
        };
        let r =
            kl_divergence_with(&mut table(0.4), &mut table(0.1), &tokens(), &opts, |_| {}).unwrap();
        // Scored rows: positions 8..=14 of each window predict the next token.
        let toks = tokens();
        let mut klds = Vec::new();
        let (mut b, mut m) = (table(0.4), table(0.1));
        for c in 0..4 {
            for pos in 8..15 {
                let t = toks[c * 16 + pos];
                let rb = b.eval(&[t], false).unwrap().to_vec();
                let rm = m.eval(&[t], false).unwrap().to_vec();
                let sm = |r: &[f32]| {
                    let z: f64 = r.iter().map(|&x| (x as f64).exp()).sum();
                    r.iter()
                        .map(|&x| (x as f64).exp() / z)
                        .collect::<Vec<f64>>()
                };
                let (pb, pm) = (sm(&rb), sm(&rm));
                klds.push(
                    pb.iter()
                        .zip(&pm)
                        .map(|(p, q)| p * (p / q).ln())
                        .sum::<f64>(),
                );
            }
        }
        let mean = klds.iter().sum::<f64>() / klds.len() as f64;
        assert!(
            (r.kld_mean.mean - mean).abs() < 1e-9,
            "{} {mean}",
            r.kld_mean.mean
        );
        klds.sort_by(f64::total_cmp);
        assert!((r.kld_median - median(&klds)).abs() < 1e-12);
        assert!(r.kld_mean.mean > 0.0);
        // Same argmax (the perturbation only rescales).
        assert_eq!(r.same_top.mean, 1.0);
        assert!(r.ppl.mean != r.ppl_base.mean);
    }

    #[test]
    fn percentiles_as_llama_cpp() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert!((percentile(&v, 0.99) - 3.97).abs() < 1e-12);
    }

    #[test]
    fn mismatched_vocabularies_and_short_text_are_errors() {
        let opts = PerplexityOptions {
            n_ctx: 16,
            ..Default::default()
        };
        let mut other = table(0.1);
        other.n_vocab = 12;
        assert!(kl_divergence_with(&mut table(0.4), &mut other, &tokens(), &opts, |_| {}).is_err());
        assert!(matches!(
            kl_divergence_with(
                &mut table(0.4),
                &mut table(0.1),
                &tokens()[..20],
                &opts,
                |_| {}
            ),
            Err(RuntimeError::NotEnoughTokens { .. })
        ));
    }
}
