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
//! stores the base's log-probabilities in 16 bits per token between its two runs; so does this
//! module, whether the base runs alongside or its rows come from a base file
//! ([`crate::kld_base`], llama.cpp's `--kl-divergence-base` format), so both give the same
//! figures. Per-token arithmetic is llama.cpp's (f32 terms, f64 sums).

use std::sync::Arc;

use edgelm_kernels::ThreadPool;
use edgelm_model::Model;

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

/// `u16`s per base row in llama.cpp's KL-divergence base format: two `f32` (scale, smallest
/// log-probability) then one `u16` per token, padded to an even count
/// (`nv = 2*((n_vocab + 1)/2) + 4` in llama.cpp's perplexity.cpp).
pub fn base_row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Encodes one row of base logits as llama.cpp's `--kl-divergence-base` file holds it
/// (perplexity.cpp `log_softmax(n_vocab, logits, log_prob, tok)`): log-probabilities in
/// `[max − 16, max]` quantized linearly to 16 bits, `scale` and the smallest log-probability
/// as two `f32` in the first four `u16`s. `out.len()` is [`base_row_len`].
pub fn encode_base_row(logits: &[f32], out: &mut [u16]) {
    debug_assert_eq!(out.len(), base_row_len(logits.len()));
    let mut max = logits[0];
    let mut min = logits[0];
    for &l in &logits[1..] {
        max = max.max(l);
        min = min.min(l);
    }
    min = min.max(max - 16.0);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (s, m) = (scale.to_bits(), min_log_prob.to_bits());
    out[0] = s as u16;
    out[1] = (s >> 16) as u16;
    out[2] = m as u16;
    out[3] = (m >> 16) as u16;
    let q = &mut out[4..];
    q.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (o, &l) in q.iter_mut().zip(logits) {
            if l > min {
                *o = (inv * (l - min)).round_ties_even().clamp(0.0, 65535.0) as u16;
            }
        }
    }
}

/// `(scale, min_log_prob, quants)` of an encoded base row.
fn decode_header(row: &[u16]) -> (f32, f32, &[u16]) {
    let scale = f32::from_bits(row[0] as u32 | (row[1] as u32) << 16);
    let min = f32::from_bits(row[2] as u32 | (row[3] as u32) << 16);
    (scale, min, &row[4..])
}

/// Per-token comparison of the model's logits with an encoded base row.
struct RowStats {
    kld: f64,
    nll: f64,
    nll_base: f64,
    same_top: bool,
    p_diff: f64,
}

/// llama.cpp's comparison (perplexity.cpp `log_softmax(n_vocab, logits, base_log_prob, tok,
/// kld)`): the base's terms below a log-probability of −16 are left out of the sum.
fn compare_row(logits: &[f32], base: &[u16], tok: usize) -> RowStats {
    let mut max = logits[0];
    let mut imax = 0;
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > max {
            max = l;
            imax = i;
        }
    }
    let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let (scale, min_log_prob, q) = decode_header(base);
    let nll = max + log_sum_exp - logits[tok];
    let nll_base = -(scale * q[tok] as f32 + min_log_prob);
    let norm = max + log_sum_exp;
    let mut sum = 0.0f64;
    let mut imax_base = 0;
    let mut lp_max = f32::NEG_INFINITY;
    for (i, (&qi, &l)) in q.iter().zip(logits).enumerate() {
        let lp = scale * qi as f32 + min_log_prob;
        if i == 0 || lp > lp_max {
            lp_max = lp;
            imax_base = i;
        }
        if lp > -16.0 {
            sum += (lp.exp() * (lp - l + norm)) as f64;
        }
    }
    RowStats {
        kld: sum,
        nll: nll as f64,
        nll_base: nll_base as f64,
        same_top: imax == imax_base,
        p_diff: ((-nll).exp() - (-nll_base).exp()) as f64,
    }
}

/// Where the base's encoded rows come from: a base model run alongside ([`LiveBase`]) or a
/// file written earlier ([`crate::KldBaseReader`]).
pub trait BaseRows {
    /// Vocabulary size.
    fn n_vocab(&self) -> usize;
    /// The encoded rows of window `chunk` (its tokens, BOS already substituted, in
    /// `window`): `n_ctx − 1 − n_ctx/2` rows of [`base_row_len`] `u16`s, for positions
    /// `n_ctx/2 ..= n_ctx − 2`.
    fn chunk_rows(
        &mut self,
        chunk: usize,
        window: &[u32],
        n_batch: usize,
    ) -> Result<&[u16], RuntimeError>;
}

/// Receives each window's encoded base rows (e.g. [`crate::KldBaseWriter::write_chunk`]).
pub type RowSink<'a> = &'a mut dyn FnMut(&[u16]) -> Result<(), RuntimeError>;

/// A base model evaluated window by window, its rows encoded (and handed to `sink`, e.g. a
/// [`crate::KldBaseWriter`], when one is given).
pub struct LiveBase<'a, S: LogitsSource + ?Sized> {
    src: &'a mut S,
    rows: Vec<u16>,
    sink: Option<RowSink<'a>>,
}

impl<'a, S: LogitsSource + ?Sized> LiveBase<'a, S> {
    /// Wraps `src`; `sink` receives each window's rows as they are made.
    pub fn new(src: &'a mut S, sink: Option<RowSink<'a>>) -> Self {
        Self {
            src,
            rows: Vec::new(),
            sink,
        }
    }
}

impl<S: LogitsSource + ?Sized> BaseRows for LiveBase<'_, S> {
    fn n_vocab(&self) -> usize {
        self.src.n_vocab()
    }

    fn chunk_rows(
        &mut self,
        _chunk: usize,
        window: &[u32],
        n_batch: usize,
    ) -> Result<&[u16], RuntimeError> {
        let n_vocab = self.src.n_vocab();
        let nv = base_row_len(n_vocab);
        let n_ctx = window.len();
        let first = n_ctx / 2;
        self.rows.clear();
        self.rows.resize((n_ctx - 1 - first) * nv, 0);
        let rows = &mut self.rows;
        eval_window(&mut *self.src, window, n_batch, |pos, row| {
            let r = pos - first;
            encode_base_row(row, &mut rows[r * nv..(r + 1) * nv]);
        })?;
        if let Some(sink) = self.sink.as_mut() {
            sink(&self.rows)?;
        }
        Ok(&self.rows)
    }
}

/// Runs `window` through `src` from an empty state (first half in unscored batches, then
/// batches of at most `n_batch`), calling `f(pos, logits)` for each scored position
/// `n_ctx/2 ..= n_ctx − 2`.
fn eval_window<S: LogitsSource + ?Sized>(
    src: &mut S,
    window: &[u32],
    n_batch: usize,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<(), RuntimeError> {
    let n_ctx = window.len();
    let first = n_ctx / 2;
    let n_vocab = src.n_vocab();
    src.truncate(0);
    let mut batch_start = 0;
    while batch_start < n_ctx {
        let mut batch_end = (batch_start + n_batch).min(n_ctx);
        if batch_start < first && batch_end > first {
            batch_end = first;
        }
        let scored = batch_start >= first;
        let batch = &window[batch_start..batch_end];
        let l = src.eval(batch, scored)?;
        if scored {
            if l.len() != batch.len() * n_vocab {
                return Err(bad_logits(batch.len() * n_vocab, l.len()));
            }
            for (row, pos) in (batch_start..batch_end).enumerate() {
                if pos + 1 < n_ctx {
                    f(pos, &l[row * n_vocab..(row + 1) * n_vocab]);
                }
            }
        }
        batch_start = batch_end;
    }
    Ok(())
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
/// The base's rows are encoded in 16 bits as llama.cpp does, exactly as a base file
/// ([`crate::KldBaseWriter`]) stores them, so a run from a file gives the same result.
pub fn kl_divergence_with<B, M>(
    base: &mut B,
    model: &mut M,
    tokens: &[u32],
    opts: &PerplexityOptions,
    progress: impl FnMut(&KldProgress),
) -> Result<KldResult, RuntimeError>
where
    B: LogitsSource + ?Sized,
    M: LogitsSource + ?Sized,
{
    check_base_ctx(&*base, opts.n_ctx)?;
    let mut live = LiveBase::new(base, None);
    kl_divergence_rows(&mut live, model, tokens, opts, progress)
}

fn check_base_ctx<S: LogitsSource + ?Sized>(s: &S, n_ctx: usize) -> Result<(), RuntimeError> {
    if s.n_ctx() < n_ctx {
        return Err(RuntimeError::InvalidOption {
            name: "n_ctx",
            reason: "an evaluation state is shorter than the window".into(),
        });
    }
    Ok(())
}

/// The windows `opts` asks for over `tokens`: `(n_chunks, n_ctx)`, after the checks every
/// KL-divergence run makes (window of at least 4, two windows of text, ids in the
/// vocabulary).
pub fn kld_windows(
    tokens: &[u32],
    n_vocab: usize,
    opts: &PerplexityOptions,
) -> Result<(usize, usize), RuntimeError> {
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
    if tokens.len() < 2 * n_ctx {
        return Err(RuntimeError::NotEnoughTokens {
            needed: 2 * n_ctx,
            got: tokens.len(),
            n_ctx,
        });
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id: bad, n_vocab });
    }
    if let Some(bos) = opts.bos.filter(|&b| b as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id: bos, n_vocab });
    }
    let n_chunk_max = tokens.len() / n_ctx;
    Ok((
        opts.n_chunks.map_or(n_chunk_max, |n| n.min(n_chunk_max)),
        n_ctx,
    ))
}

/// [`kl_divergence_with`] with the base's rows from any [`BaseRows`] (a live model or a
/// base file).
pub fn kl_divergence_rows<B, M>(
    base: &mut B,
    model: &mut M,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut progress: impl FnMut(&KldProgress),
) -> Result<KldResult, RuntimeError>
where
    B: BaseRows + ?Sized,
    M: LogitsSource + ?Sized,
{
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
    let (n_chunks, n_ctx) = kld_windows(tokens, n_vocab, opts)?;
    check_base_ctx(&*model, n_ctx)?;
    let first = n_ctx / 2;
    let nv = base_row_len(n_vocab);
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
    let mut window = Vec::with_capacity(n_ctx);

    for chunk in 0..n_chunks {
        let start = chunk * n_ctx;
        window.clear();
        window.extend_from_slice(&tokens[start..start + n_ctx]);
        if let Some(bos) = opts.bos {
            window[0] = bos;
        }
        let rows = base.chunk_rows(chunk, &window, n_batch)?;
        if rows.len() != (n_ctx - 1 - first) * nv {
            return Err(bad_logits((n_ctx - 1 - first) * nv, rows.len()));
        }
        eval_window(&mut *model, &window, n_batch, |pos, lm| {
            let r = pos - first;
            let target = tokens[start + pos + 1] as usize;
            let st = compare_row(lm, &rows[r * nv..(r + 1) * nv], target);
            nll += st.nll;
            nll2 += st.nll * st.nll;
            nll_b += st.nll_base;
            nll_b2 += st.nll_base * st.nll_base;
            let d = st.nll - st.nll_base;
            dln += d;
            dln2 += d * d;
            kld_sum += st.kld;
            kld_sum2 += st.kld * st.kld;
            klds.push(st.kld);
            dp += st.p_diff;
            dp2 += st.p_diff * st.p_diff;
            same += usize::from(st.same_top);
            count += 1;
        })?;
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
    let mut eb = engine(base, pool, opts)?;
    let mut em = engine(model, pool, opts)?;
    kl_divergence_with(&mut eb, &mut em, tokens, opts, progress)
}

/// [`kl_divergence_rows`] on a real model: the base's rows from `base` (a base file, or a
/// [`LiveBase`] over [`kld_engine`] that also writes one).
pub fn kl_divergence_from(
    base: &mut dyn BaseRows,
    model: &Arc<Model>,
    pool: &Arc<ThreadPool>,
    tokens: &[u32],
    opts: &PerplexityOptions,
    progress: impl FnMut(&KldProgress),
) -> Result<KldResult, RuntimeError> {
    let mut em = engine(model, pool, opts)?;
    kl_divergence_rows(base, &mut em, tokens, opts, progress)
}

/// The evaluation state [`kl_divergence`] gives each model.
pub fn kld_engine(
    model: &Arc<Model>,
    pool: &Arc<ThreadPool>,
    opts: &PerplexityOptions,
) -> Result<ModelEngine, RuntimeError> {
    engine(model, pool, opts)
}

fn engine(
    model: &Arc<Model>,
    pool: &Arc<ThreadPool>,
    opts: &PerplexityOptions,
) -> Result<ModelEngine, RuntimeError> {
    let n_batch = opts.n_batch.clamp(1, opts.n_ctx.max(1));
    ModelEngine::with_cache_type(
        Arc::clone(model),
        Arc::clone(pool),
        opts.n_ctx.max(4),
        n_batch,
        opts.cache_type,
    )
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
        // Only the base's 16-bit encoding (steps of 4/65535 here) separates them.
        assert!(
            r.kld_mean.mean.abs() < 1e-4 && r.kld_max.abs() < 1e-4,
            "{r:?}"
        );
        assert_eq!(r.same_top.mean, 1.0);
        assert!((r.ppl.mean / r.ppl_base.mean - 1.0).abs() < 1e-4);
        // The base perplexity equals the perplexity runner's.
        let p = crate::perplexity_with(&mut table(0.4), &tokens(), &opts, |_| {}).unwrap();
        assert!((p.ppl / r.ppl_base.mean - 1.0).abs() < 1e-4);
        assert!((p.ppl / r.ppl.mean - 1.0).abs() < 1e-6);
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
        // Within the 16-bit encoding's error of the exact f64 figures.
        assert!(
            (r.kld_mean.mean - mean).abs() < 1e-4 * mean,
            "{} {mean}",
            r.kld_mean.mean
        );
        klds.sort_by(f64::total_cmp);
        assert!((r.kld_median - median(&klds)).abs() < 1e-4 * median(&klds));
        assert!(r.kld_mean.mean > 0.0);
        // Same argmax (the perturbation only rescales).
        assert_eq!(r.same_top.mean, 1.0);
        assert!(r.ppl.mean != r.ppl_base.mean);
    }

    #[test]
    fn encoded_rows_hold_log_probabilities_within_half_a_step() {
        let logits: Vec<f32> = (0..101)
            .map(|i| ((i * 37) % 101) as f32 * 0.3 - 9.0)
            .collect();
        let mut row = vec![0u16; base_row_len(logits.len())];
        assert_eq!(row.len(), 2 * 51 + 4);
        encode_base_row(&logits, &mut row);
        let (scale, min_lp, q) = decode_header(&row);
        let max = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        assert!((scale as f64 - 16.0 / 65535.0).abs() < 1e-9);
        for (i, &l) in logits.iter().enumerate() {
            let exact = l as f64 - max - z.ln();
            let got = scale as f64 * q[i] as f64 + min_lp as f64;
            if exact > min_lp as f64 {
                assert!((got - exact).abs() < 0.6 * scale as f64 + 1e-5, "{i}");
            } else {
                assert_eq!(q[i], 0);
            }
        }
        assert_eq!(row[4 + 101], 0, "padding");
        // A flat row: scale 0, all zeros.
        let mut flat = vec![7u16; base_row_len(4)];
        encode_base_row(&[1.0; 4], &mut flat);
        assert_eq!(decode_header(&flat).0, 0.0);
        assert!(flat[4..].iter().all(|&q| q == 0));
    }

    #[test]
    fn a_base_file_gives_the_live_result() {
        let opts = PerplexityOptions {
            n_ctx: 16,
            n_batch: 5,
            bos: Some(1),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.kld");
        let toks = tokens();
        let (n_chunks, n_ctx) = kld_windows(&toks, 13, &opts).unwrap();
        let mut w = crate::KldBaseWriter::create(&path, &toks, n_ctx, n_chunks, 13, None).unwrap();
        let mut b = table(0.4);
        let mut sink = |rows: &[u16]| w.write_chunk(rows);
        let mut live = LiveBase::new(&mut b, Some(&mut sink));
        let r1 = kl_divergence_rows(&mut live, &mut table(0.1), &toks, &opts, |_| {}).unwrap();
        w.finish().unwrap();
        let r0 =
            kl_divergence_with(&mut table(0.4), &mut table(0.1), &toks, &opts, |_| {}).unwrap();
        let mut file = crate::KldBaseReader::open(&path).unwrap();
        file.info()
            .check(&path, &toks, n_ctx, n_chunks, 13, None)
            .unwrap();
        let r2 = kl_divergence_rows(&mut file, &mut table(0.1), &toks, &opts, |_| {}).unwrap();
        assert_eq!(r0, r1);
        assert_eq!(r1, r2);
        assert!(r2.kld_mean.mean > 0.0);
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
