//! Token sampling, in the order of llama.cpp's default chain
//! (`common/sampling.cpp`): penalties → top-k → top-p → min-p → temperature → draw.
//!
//! The per-step functions follow `src/llama-sampler.cpp`:
//! - penalties: a token seen `count` times in the last `repeat_last_n` history tokens has its
//!   logit divided by `repeat_penalty` (multiplied when the logit is ≤ 0), then
//!   `count * frequency_penalty + presence_penalty` subtracted;
//! - top-k keeps the `k` largest logits (k = 0 disables);
//! - top-p keeps the smallest prefix (by descending probability) whose mass reaches `p`;
//! - min-p keeps tokens whose probability is at least `min_p` times the largest one;
//! - temperature divides the logits; the draw is a softmax over what is left.
//!
//! Temperature 0 is greedy: the arg max of the penalised logits, ties going to the lowest id.
//! Candidates live in a buffer allocated once with the sampler: `sample` allocates nothing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::RuntimeError;

/// Sampling parameters. The defaults are llama.cpp's (`common_params_sampling`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 means greedy (arg max). Must be ≥ 0.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus sampling mass in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, in [0, 1]; 0 disables.
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 disables.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the penalties look at; 0 disables.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token present in the window; 0 disables.
    pub presence_penalty: f32,
    /// Subtracted `count` times from the logit of a token seen `count` times; 0 disables.
    pub frequency_penalty: f32,
    /// RNG seed; `None` seeds from the operating system.
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0), other fields at their defaults.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        fn bad(field: &'static str, value: f32, reason: &'static str) -> RuntimeError {
            RuntimeError::InvalidSampler {
                field,
                value: value.to_string(),
                reason,
            }
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(bad(
                "temperature",
                self.temperature,
                "must be a finite number >= 0",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p, "must be in [0, 1]"));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(bad(
                "repeat_penalty",
                self.repeat_penalty,
                "must be a finite number > 0",
            ));
        }
        if !self.presence_penalty.is_finite() {
            return Err(bad(
                "presence_penalty",
                self.presence_penalty,
                "must be finite",
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(bad(
                "frequency_penalty",
                self.frequency_penalty,
                "must be finite",
            ));
        }
        Ok(())
    }

    fn penalties_enabled(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// One candidate token: id, (possibly modified) logit and probability.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    p: f32,
}

/// Descending logit, ties to the lowest id: a total order, so sorting is deterministic.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// A configured sampler with its RNG and scratch buffers.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    n_vocab: usize,
    rng: StdRng,
    /// Scratch: candidate set, capacity `n_vocab`.
    candidates: Vec<Candidate>,
    /// Scratch: per-token counts in the penalty window, all zero between calls.
    counts: Vec<u32>,
}

impl Sampler {
    /// Builds a sampler for a vocabulary of `n_vocab` tokens.
    pub fn new(cfg: SamplerConfig, n_vocab: usize) -> Result<Self, RuntimeError> {
        cfg.validate()?;
        if n_vocab == 0 {
            return Err(RuntimeError::InvalidOption {
                name: "n_vocab",
                reason: "the vocabulary is empty".into(),
            });
        }
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let counts = if cfg.penalties_enabled() {
            vec![0; n_vocab]
        } else {
            Vec::new()
        };
        Ok(Self {
            cfg,
            n_vocab,
            rng,
            candidates: Vec::with_capacity(n_vocab),
            counts,
        })
    }

    /// The configuration this sampler was built with.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Picks the next token from `logits` (one per vocabulary entry; extra entries are ignored)
    /// given the tokens seen so far (`history`, oldest first; only its last `repeat_last_n`
    /// entries matter).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let n = logits.len().min(self.n_vocab);
        self.candidates.clear();
        self.candidates
            .extend(logits[..n].iter().enumerate().map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
                p: 0.0,
            }));
        if self.candidates.is_empty() {
            return 0;
        }
        self.apply_penalties(history);

        if self.cfg.temperature == 0.0 {
            return self.argmax();
        }

        let mut sorted = false;
        // top-k
        let k = self.cfg.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
            self.candidates.sort_unstable_by(by_logit_desc);
            sorted = true;
        }
        // top-p
        if self.cfg.top_p < 1.0 {
            if !sorted {
                self.candidates.sort_unstable_by(by_logit_desc);
                sorted = true;
            }
            self.softmax_sorted();
            let mut cum = 0.0f32;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.p;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
        }
        // min-p
        if self.cfg.min_p > 0.0 {
            let max_logit = if sorted {
                self.candidates[0].logit
            } else {
                self.candidates
                    .iter()
                    .map(|c| c.logit)
                    .fold(f32::NEG_INFINITY, f32::max)
            };
            let min_logit = max_logit + self.cfg.min_p.ln();
            // `retain` keeps the order; the maximum always passes (ln p ≤ 0).
            self.candidates.retain(|c| c.logit >= min_logit);
            if self.candidates.is_empty() {
                // Only reachable with NaN logits: fall back to greedy over the raw logits.
                return argmax_slice(&logits[..n]);
            }
        }
        // temperature
        let inv_t = 1.0 / self.cfg.temperature;
        for c in &mut self.candidates {
            c.logit *= inv_t;
        }
        self.draw()
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        if !self.cfg.penalties_enabled() || history.is_empty() {
            return;
        }
        let window = &history[history.len().saturating_sub(self.cfg.repeat_last_n)..];
        for &t in window {
            if let Some(c) = self.counts.get_mut(t as usize) {
                *c += 1;
            }
        }
        let (repeat, freq, presence) = (
            self.cfg.repeat_penalty,
            self.cfg.frequency_penalty,
            self.cfg.presence_penalty,
        );
        // Candidates are still in id order here, so candidate i is token i.
        for &t in window {
            let Some(slot) = self.counts.get_mut(t as usize) else {
                continue;
            };
            let count = std::mem::take(slot);
            if count == 0 {
                continue; // already applied for an earlier occurrence
            }
            let Some(c) = self.candidates.get_mut(t as usize) else {
                continue;
            };
            if c.logit <= 0.0 {
                c.logit *= repeat;
            } else {
                c.logit /= repeat;
            }
            c.logit -= count as f32 * freq + presence;
        }
    }

    fn argmax(&self) -> u32 {
        let mut best = &self.candidates[0];
        for c in &self.candidates[1..] {
            if c.logit > best.logit {
                best = c;
            }
        }
        best.id
    }

    /// Softmax over candidates sorted by descending logit.
    fn softmax_sorted(&mut self) {
        let max_l = self.candidates[0].logit;
        let mut sum = 0.0f32;
        for c in &mut self.candidates {
            c.p = (c.logit - max_l).exp();
            sum += c.p;
        }
        for c in &mut self.candidates {
            c.p /= sum;
        }
    }

    /// llama.cpp's `dist` sampler: softmax (sum in f64) and one uniform draw in [0, 1).
    fn draw(&mut self) -> u32 {
        let rnd: f64 = self.rng.gen::<f64>();
        if self.candidates.len() == 1 {
            return self.candidates[0].id;
        }
        let max_l = self
            .candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for c in &mut self.candidates {
            c.p = (c.logit - max_l).exp();
            sum += c.p as f64;
        }
        let target = sum * rnd;
        let mut run = 0.0f64;
        for c in &self.candidates {
            run += c.p as f64;
            if run >= target {
                return c.id;
            }
        }
        // Rounding left the target just past the total: the last candidate.
        self.candidates[self.candidates.len() - 1].id
    }
}

fn argmax_slice(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SamplerConfig {
        SamplerConfig {
            seed: Some(42),
            ..SamplerConfig::default()
        }
    }

    /// The set of ids that the sampler can return, by sampling many times.
    fn support(cfg: SamplerConfig, logits: &[f32], history: &[u32]) -> Vec<u32> {
        let mut s = Sampler::new(cfg, logits.len()).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4000 {
            seen.insert(s.sample(logits, history));
        }
        seen.into_iter().collect()
    }

    #[test]
    fn greedy_picks_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplerConfig::greedy(), 5).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9, 0.0], &[]), 1);
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0, 0.0], &[]), 1);
        assert_eq!(s.sample(&[-5.0, -5.0, -5.0, -5.0, -5.0], &[]), 0);
        assert_eq!(s.sample(&[0.0, 0.0, 0.0, 0.0, 7.0], &[]), 4);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut greedy = Sampler::new(SamplerConfig::greedy(), 100).unwrap();
        let mut k1 = Sampler::new(
            SamplerConfig {
                top_k: 1,
                temperature: 1.5,
                ..cfg()
            },
            100,
        )
        .unwrap();
        for _ in 0..50 {
            let logits: Vec<f32> = (0..100).map(|_| rng.gen_range(-5.0..5.0)).collect();
            assert_eq!(greedy.sample(&logits, &[]), k1.sample(&logits, &[]));
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(
                SamplerConfig {
                    seed: Some(seed),
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    temperature: 2.0,
                    ..SamplerConfig::default()
                },
                64,
            )
            .unwrap();
            (0..64).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75].
        let logits = [1f32.ln(), 3f32.ln()];
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..cfg()
            },
            2,
        )
        .unwrap();
        let n = 20000;
        let ones = (0..n).filter(|_| s.sample(&logits, &[]) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "fraction of id 1: {frac}");
    }

    #[test]
    fn top_k_restricts_support() {
        let logits = [1.0, 4.0, 3.0, 2.0, 0.0];
        let c = SamplerConfig {
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 5.0,
            ..cfg()
        };
        assert_eq!(support(c, &logits, &[]), vec![1, 2]);
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_mass() {
        // probabilities 0.5, 0.25, 0.15, 0.1 (logits = ln p).
        let p = [0.5f32, 0.25, 0.15, 0.1];
        let logits: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        let base = SamplerConfig {
            top_k: 0,
            min_p: 0.0,
            temperature: 1.0,
            ..cfg()
        };
        // Hand computation: cumulative 0.5, 0.75, 0.9, 1.0.
        for (top_p, expect) in [
            (0.4, vec![0]),
            (0.5, vec![0]),
            (0.6, vec![0, 1]),
            (0.8, vec![0, 1, 2]),
            (0.95, vec![0, 1, 2, 3]),
        ] {
            let c = SamplerConfig {
                top_p,
                ..base.clone()
            };
            assert_eq!(support(c, &logits, &[]), expect, "top_p {top_p}");
        }
    }

    #[test]
    fn min_p_keeps_tokens_above_fraction_of_max() {
        let p = [0.5f32, 0.25, 0.15, 0.1];
        let logits: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        let base = SamplerConfig {
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            ..cfg()
        };
        // p_i / p_max = 1, 0.5, 0.3, 0.2.
        for (min_p, expect) in [
            (0.6, vec![0]),
            (0.45, vec![0, 1]),
            (0.25, vec![0, 1, 2]),
            (0.1, vec![0, 1, 2, 3]),
        ] {
            let c = SamplerConfig {
                min_p,
                ..base.clone()
            };
            assert_eq!(support(c, &logits, &[]), expect, "min_p {min_p}");
        }
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative() {
        // Token 0 (logit 2.0) was seen: 2.0 / 2.5 = 0.8 < 1.0 → greedy picks token 1.
        let c = SamplerConfig {
            repeat_penalty: 2.5,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(c.clone(), 3).unwrap();
        assert_eq!(s.sample(&[2.0, 1.0, -3.0], &[0]), 1);
        // Without history: token 0.
        assert_eq!(s.sample(&[2.0, 1.0, -3.0], &[]), 0);
        // Negative logits get more negative: -0.5 * 2.5 = -1.25 < -1.0.
        assert_eq!(s.sample(&[-0.5, -1.0, -3.0], &[0]), 1);
        // Outside the window (repeat_last_n = 1): only the last token counts.
        let mut s = Sampler::new(
            SamplerConfig {
                repeat_last_n: 1,
                ..c
            },
            3,
        )
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.0, -3.0], &[0, 2]), 0);
    }

    #[test]
    fn frequency_and_presence_penalties() {
        // Token 0 seen 3 times: 3.0 - 3 * 0.5 - 0.2 = 1.3 < 1.4.
        let c = SamplerConfig {
            frequency_penalty: 0.5,
            presence_penalty: 0.2,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(c.clone(), 3).unwrap();
        assert_eq!(s.sample(&[3.0, 1.4, 0.0], &[0, 0, 0]), 1);
        // Seen twice: 3.0 - 1.0 - 0.2 = 1.8 > 1.4.
        assert_eq!(s.sample(&[3.0, 1.4, 0.0], &[0, 2, 0]), 0);
        // Counts do not leak between calls.
        assert_eq!(s.sample(&[3.0, 1.4, 0.0], &[]), 0);
        // Out-of-vocabulary history ids are ignored.
        assert_eq!(s.sample(&[3.0, 1.4, 0.0], &[99]), 0);
    }

    #[test]
    fn bad_configs_are_errors() {
        let bad = [
            SamplerConfig {
                temperature: -0.1,
                ..cfg()
            },
            SamplerConfig {
                temperature: f32::NAN,
                ..cfg()
            },
            SamplerConfig {
                top_p: 0.0,
                ..cfg()
            },
            SamplerConfig {
                top_p: 1.5,
                ..cfg()
            },
            SamplerConfig {
                top_p: f32::NAN,
                ..cfg()
            },
            SamplerConfig {
                min_p: -0.5,
                ..cfg()
            },
            SamplerConfig {
                min_p: f32::NAN,
                ..cfg()
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..cfg()
            },
            SamplerConfig {
                presence_penalty: f32::INFINITY,
                ..cfg()
            },
            SamplerConfig {
                frequency_penalty: f32::NAN,
                ..cfg()
            },
        ];
        for c in bad {
            let err = Sampler::new(c.clone(), 10).expect_err(&format!("{c:?} accepted"));
            assert!(matches!(err, RuntimeError::InvalidSampler { .. }), "{err}");
        }
        assert!(Sampler::new(cfg(), 0).is_err());
        assert!(Sampler::new(cfg(), 10).is_ok());
    }

    #[test]
    fn short_or_empty_logits_do_not_panic() {
        let mut s = Sampler::new(cfg(), 10).unwrap();
        assert_eq!(s.sample(&[], &[]), 0);
        assert!(s.sample(&[1.0, 2.0], &[5]) < 2);
        let mut s = Sampler::new(cfg(), 3).unwrap();
        let _ = s.sample(&[f32::NAN, f32::NAN, f32::NAN], &[]);
    }
}
