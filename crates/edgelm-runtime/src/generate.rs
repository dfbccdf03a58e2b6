//! The generation loop: prompt (reusing the cached prefix) → sample → stream → stop rules.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::{LogitsSource, RuntimeError, Sampler, StopMatcher};

/// What to do when the prompt (or the generation) does not fit in the context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextOverflow {
    /// A prompt that does not fit is an error; generation reaching the end of the context stops
    /// with [`FinishReason::Length`].
    #[default]
    Error,
    /// Keep the most recent tokens (llama.cpp's context shift, simplest form): an over-long
    /// prompt keeps its last `max(n_ctx - max_tokens, n_ctx / 2)` tokens; when generation fills
    /// the context, the last `n_ctx / 2` tokens are re-evaluated from an empty cache.
    SlidingWindow,
}

/// Per-call generation options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Generate at most this many tokens (EOG tokens are not counted nor returned).
    pub max_tokens: usize,
    /// Stop strings: generation stops when the text contains one; it is not part of the output.
    pub stop: Vec<String>,
    /// Context overflow policy.
    pub overflow: ContextOverflow,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            stop: Vec::new(),
            overflow: ContextOverflow::Error,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string matched.
    Stop,
    /// `max_tokens` was reached, or the context is full.
    Length,
    /// The model produced an end-of-generation token.
    Eog,
    /// The event callback returned `Break`.
    Cancelled,
}

impl FinishReason {
    /// Lower-case name, as used in JSON output: `stop`, `length`, `eog`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Eog => "eog",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Streamed to the caller during generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationEvent<'a> {
    /// The prompt has been evaluated.
    PromptProcessed {
        /// Prompt length (after any sliding-window truncation).
        n_prompt_tokens: usize,
        /// Leading prompt tokens whose KV state was reused from the previous call.
        n_reused_tokens: usize,
    },
    /// A token was generated; `text` is what may be shown now (possibly empty while a stop
    /// string or an incomplete UTF-8 sequence is held back).
    Token {
        /// The token id.
        id: u32,
        /// Newly released text.
        text: &'a str,
    },
    /// Text held back until the end, released when generation ends without a stop match.
    Text {
        /// The released text.
        text: &'a str,
    },
}

impl GenerationEvent<'_> {
    /// The text this event releases ("" for `PromptProcessed`).
    pub fn text(&self) -> &str {
        match self {
            Self::PromptProcessed { .. } => "",
            Self::Token { text, .. } | Self::Text { text } => text,
        }
    }
}

/// Wall-clock timings of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Prompt tokens evaluated (reused ones excluded).
    pub n_prompt_tokens: usize,
    /// Milliseconds spent evaluating the prompt (and sampling the first token).
    pub prompt_ms: f64,
    /// Tokens generated.
    pub n_gen_tokens: usize,
    /// Milliseconds spent after the prompt.
    pub gen_ms: f64,
}

impl Timings {
    /// Prompt evaluation speed.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        per_second(self.n_prompt_tokens, self.prompt_ms)
    }
    /// Generation speed.
    pub fn gen_tokens_per_s(&self) -> f64 {
        per_second(self.n_gen_tokens, self.gen_ms)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Outcome of one [`crate::Session::generate`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationResult {
    /// The prompt as evaluated (after any sliding-window truncation).
    pub prompt_tokens: Vec<u32>,
    /// Generated token ids (the final EOG token, if any, is not included).
    pub tokens: Vec<u32>,
    /// Generated text, without any stop string.
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Leading prompt tokens reused from the KV state of the previous call.
    pub n_reused_tokens: usize,
    /// Timings.
    pub timings: Timings,
}

/// Token-level hooks the loop needs from the tokenizer.
pub(crate) trait TokenText {
    /// Whether `id` ends generation.
    fn is_eog(&self, id: u32) -> bool;
    /// Streams the text of `id` (bytes of incomplete UTF-8 sequences held back).
    fn push(&mut self, id: u32) -> String;
}

/// Length of the common prefix of two token sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The loop behind [`crate::Session::generate`]; `history` mirrors the tokens in `source`'s
/// state and is kept in sync (or cleared together with the state on errors).
pub(crate) fn generate_loop<S: LogitsSource + ?Sized>(
    source: &mut S,
    sampler: &mut Sampler,
    history: &mut Vec<u32>,
    text_hooks: &mut dyn TokenText,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_event: &mut dyn FnMut(&GenerationEvent) -> ControlFlow<()>,
) -> Result<GenerationResult, RuntimeError> {
    if prompt.is_empty() {
        return Err(RuntimeError::EmptyPrompt);
    }
    let n_vocab = source.n_vocab();
    if let Some(&id) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(RuntimeError::TokenOutOfRange { id, n_vocab });
    }
    let mut stop = StopMatcher::new(&opts.stop)?;
    let n_ctx = source.n_ctx();
    if n_ctx < 2 {
        return Err(RuntimeError::InvalidOption {
            name: "n_ctx",
            reason: format!("the context must hold at least 2 tokens, got {n_ctx}"),
        });
    }

    let prompt = if prompt.len() >= n_ctx {
        match opts.overflow {
            ContextOverflow::Error => {
                return Err(RuntimeError::ContextLength {
                    prompt: prompt.len(),
                    n_ctx,
                })
            }
            ContextOverflow::SlidingWindow => {
                let keep = n_ctx
                    .saturating_sub(opts.max_tokens)
                    .max(n_ctx / 2)
                    .clamp(1, n_ctx - 1);
                &prompt[prompt.len() - keep..]
            }
        }
    } else {
        prompt
    };

    let mut result = GenerationResult {
        prompt_tokens: prompt.to_vec(),
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        n_reused_tokens: 0,
        timings: Timings::default(),
    };
    if opts.max_tokens == 0 {
        return Ok(result);
    }

    // Reuse the cached prefix; at least the last prompt token is evaluated for its logits.
    if source.pos() != history.len() {
        history.clear();
    }
    let common = common_prefix(history, prompt).min(prompt.len() - 1);
    source.truncate(common);
    history.truncate(common);
    result.n_reused_tokens = common;
    result.timings.n_prompt_tokens = prompt.len() - common;

    let t_start = Instant::now();
    let mut t_gen = t_start;
    let mut input: Vec<u32> = prompt[common..].to_vec();
    let mut first = true;

    let finish = loop {
        if source.pos() + input.len() > n_ctx {
            match opts.overflow {
                ContextOverflow::Error => break FinishReason::Length,
                ContextOverflow::SlidingWindow => {
                    let keep = (n_ctx / 2).min(history.len());
                    let mut tail = history[history.len() - keep..].to_vec();
                    tail.extend_from_slice(&input);
                    input = tail;
                    source.truncate(0);
                    history.clear();
                    tracing::debug!(n_ctx, kept = input.len(), "context full: sliding window");
                }
            }
        }
        history.extend_from_slice(&input);
        let id = match source.eval(&input, false) {
            Ok(logits) => sampler.sample(logits, history),
            Err(e) => {
                source.truncate(0);
                history.clear();
                return Err(e);
            }
        };
        if first {
            first = false;
            t_gen = Instant::now();
            result.timings.prompt_ms = (t_gen - t_start).as_secs_f64() * 1e3;
            let ev = GenerationEvent::PromptProcessed {
                n_prompt_tokens: prompt.len(),
                n_reused_tokens: common,
            };
            if on_event(&ev).is_break() {
                break FinishReason::Cancelled;
            }
        }
        if text_hooks.is_eog(id) {
            break FinishReason::Eog;
        }
        result.tokens.push(id);
        let piece = text_hooks.push(id);
        let out = stop.push(&piece);
        result.text.push_str(&out.emit);
        if out.stopped {
            // Nothing more is released, but the caller still sees the token.
            let _ = on_event(&GenerationEvent::Token {
                id,
                text: &out.emit,
            });
            break FinishReason::Stop;
        }
        if on_event(&GenerationEvent::Token {
            id,
            text: &out.emit,
        })
        .is_break()
        {
            break FinishReason::Cancelled;
        }
        if result.tokens.len() >= opts.max_tokens {
            break FinishReason::Length;
        }
        input.clear();
        input.push(id);
    };

    if matches!(finish, FinishReason::Length | FinishReason::Eog) {
        let rest = stop.finish();
        if !rest.is_empty() {
            result.text.push_str(&rest);
            let _ = on_event(&GenerationEvent::Text { text: &rest });
        }
    }
    result.finish_reason = finish;
    result.timings.n_gen_tokens = result.tokens.len();
    if !first {
        result.timings.gen_ms = t_gen.elapsed().as_secs_f64() * 1e3;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplerConfig;

    /// Model double: the next token is `(last + 1) % n_vocab`, via one-hot logits. Records the
    /// batches it evaluated.
    struct Counter {
        n_vocab: usize,
        n_ctx: usize,
        pos: usize,
        logits: Vec<f32>,
        batches: Vec<Vec<u32>>,
        truncations: Vec<usize>,
    }

    impl Counter {
        fn new(n_vocab: usize, n_ctx: usize) -> Self {
            Self {
                n_vocab,
                n_ctx,
                pos: 0,
                logits: vec![0.0; n_vocab],
                batches: Vec::new(),
                truncations: Vec::new(),
            }
        }
    }

    impl LogitsSource for Counter {
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
            self.pos = self.pos.min(n_tokens);
            self.truncations.push(n_tokens);
        }
        fn eval(&mut self, tokens: &[u32], all: bool) -> Result<&[f32], RuntimeError> {
            assert!(!all);
            assert!(self.pos + tokens.len() <= self.n_ctx, "context overflow");
            self.pos += tokens.len();
            self.batches.push(tokens.to_vec());
            let next = (*tokens.last().unwrap() as usize + 1) % self.n_vocab;
            self.logits.fill(0.0);
            self.logits[next] = 10.0;
            Ok(&self.logits)
        }
    }

    /// Token i has text "<i>", except: 0 is EOG, 10 is "\n", 11 is "U", 12 is "ser".
    struct Text;
    impl TokenText for Text {
        fn is_eog(&self, id: u32) -> bool {
            id == 0
        }
        fn push(&mut self, id: u32) -> String {
            match id {
                10 => "\n".into(),
                11 => "U".into(),
                12 => "ser".into(),
                _ => format!("<{id}>"),
            }
        }
    }

    fn run(
        src: &mut Counter,
        history: &mut Vec<u32>,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> (Result<GenerationResult, RuntimeError>, String) {
        let mut sampler = Sampler::new(SamplerConfig::greedy(), src.n_vocab).unwrap();
        let mut streamed = String::new();
        let r = generate_loop(
            src,
            &mut sampler,
            history,
            &mut Text,
            prompt,
            opts,
            &mut |ev| {
                streamed.push_str(ev.text());
                ControlFlow::Continue(())
            },
        );
        (r, streamed)
    }

    fn opts(max_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            ..GenerateOptions::default()
        }
    }

    #[test]
    fn stops_on_max_tokens() {
        let mut src = Counter::new(100, 64);
        let (r, streamed) = run(&mut src, &mut Vec::new(), &[1, 2, 3], &opts(3));
        let r = r.unwrap();
        assert_eq!(r.tokens, vec![4, 5, 6]);
        assert_eq!(r.text, "<4><5><6>");
        assert_eq!(streamed, r.text);
        assert_eq!(r.finish_reason, FinishReason::Length);
        // Prompt as one batch, then one token at a time; the last token is never evaluated.
        assert_eq!(src.batches, vec![vec![1, 2, 3], vec![4], vec![5]]);
    }

    #[test]
    fn stops_on_eog_without_returning_it() {
        let mut src = Counter::new(20, 64);
        let (r, _) = run(&mut src, &mut Vec::new(), &[17], &opts(10));
        let r = r.unwrap();
        assert_eq!(r.tokens, vec![18, 19]);
        assert_eq!(r.finish_reason, FinishReason::Eog);
    }

    #[test]
    fn stop_string_across_tokens_is_held_back_and_removed() {
        let mut src = Counter::new(20, 64);
        let o = GenerateOptions {
            stop: vec!["\nUser".into()],
            ..opts(10)
        };
        let (r, streamed) = run(&mut src, &mut Vec::new(), &[8], &o);
        let r = r.unwrap();
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert_eq!(r.tokens, vec![9, 10, 11, 12]);
        assert_eq!(r.text, "<9>");
        assert_eq!(streamed, "<9>");
    }

    #[test]
    fn held_back_text_is_released_at_the_end() {
        let mut src = Counter::new(20, 64);
        let o = GenerateOptions {
            stop: vec!["\nUser".into()],
            ..opts(2)
        };
        let (r, streamed) = run(&mut src, &mut Vec::new(), &[8], &o);
        let r = r.unwrap();
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(r.text, "<9>\n");
        assert_eq!(streamed, "<9>\n");
    }

    #[test]
    fn callback_break_cancels() {
        let mut src = Counter::new(100, 64);
        let mut sampler = Sampler::new(SamplerConfig::greedy(), 100).unwrap();
        let mut n = 0;
        let r = generate_loop(
            &mut src,
            &mut sampler,
            &mut Vec::new(),
            &mut Text,
            &[1],
            &opts(50),
            &mut |ev| {
                if matches!(ev, GenerationEvent::Token { .. }) {
                    n += 1;
                }
                if n == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
        assert_eq!(r.finish_reason, FinishReason::Cancelled);
        assert_eq!(r.tokens, vec![2, 3]);
    }

    #[test]
    fn over_long_prompt_is_an_error_or_slides() {
        let mut src = Counter::new(100, 8);
        let prompt: Vec<u32> = (1..=8).collect();
        let (r, _) = run(&mut src, &mut Vec::new(), &prompt, &opts(4));
        match r {
            Err(RuntimeError::ContextLength {
                prompt: 8,
                n_ctx: 8,
            }) => {}
            other => panic!("{other:?}"),
        }
        let o = GenerateOptions {
            overflow: ContextOverflow::SlidingWindow,
            ..opts(2)
        };
        let (r, _) = run(&mut src, &mut Vec::new(), &prompt, &o);
        let r = r.unwrap();
        // keep max(8 - 2, 4) = 6 last tokens.
        assert_eq!(r.prompt_tokens, vec![3, 4, 5, 6, 7, 8]);
        assert_eq!(r.tokens, vec![9, 10]);
    }

    #[test]
    fn generation_reaching_context_end_stops_or_slides() {
        let mut src = Counter::new(100, 8);
        let (r, _) = run(&mut src, &mut Vec::new(), &[1, 2, 3, 4, 5], &opts(10));
        let r = r.unwrap();
        // Positions 5, 6, 7 hold generated tokens 6, 7, 8; token 9 is sampled but cannot be
        // evaluated, so generation ends there.
        assert_eq!(r.tokens, vec![6, 7, 8, 9]);
        assert_eq!(r.finish_reason, FinishReason::Length);

        let mut src = Counter::new(100, 8);
        let o = GenerateOptions {
            overflow: ContextOverflow::SlidingWindow,
            ..opts(10)
        };
        let (r, _) = run(&mut src, &mut Vec::new(), &[1, 2, 3, 4, 5], &o);
        let r = r.unwrap();
        assert_eq!(r.tokens, (6..16).collect::<Vec<_>>());
        assert_eq!(r.finish_reason, FinishReason::Length);
        // When the window slid, the last n_ctx / 2 = 4 evaluated tokens plus the new one were
        // re-evaluated.
        assert!(
            src.batches.contains(&vec![5, 6, 7, 8, 9]),
            "{:?}",
            src.batches
        );
    }

    #[test]
    fn continuation_reuses_common_prefix() {
        let mut src = Counter::new(100, 64);
        let mut history = Vec::new();
        let (r, _) = run(&mut src, &mut history, &[1, 2, 3], &opts(2));
        assert_eq!(r.unwrap().tokens, vec![4, 5]);
        // State holds 1 2 3 4 (5 was sampled, never evaluated).
        assert_eq!(history, vec![1, 2, 3, 4]);
        src.batches.clear();
        // Next turn: previous prompt + answer + new text.
        let (r, _) = run(&mut src, &mut history, &[1, 2, 3, 4, 5, 50, 51], &opts(1));
        let r = r.unwrap();
        assert_eq!(r.n_reused_tokens, 4);
        assert_eq!(r.timings.n_prompt_tokens, 3);
        assert_eq!(src.batches, vec![vec![5, 50, 51]]);
        assert_eq!(r.tokens, vec![52]);
        // A diverging prompt truncates to the common prefix.
        src.batches.clear();
        let (r, _) = run(&mut src, &mut history, &[1, 2, 9], &opts(1));
        assert_eq!(r.unwrap().n_reused_tokens, 2);
        assert_eq!(src.batches, vec![vec![9]]);
        // The identical prompt re-evaluates its last token to get logits.
        src.batches.clear();
        let (r, _) = run(&mut src, &mut history, &[1, 2, 9], &opts(1));
        assert_eq!(r.unwrap().n_reused_tokens, 2);
        assert_eq!(src.batches, vec![vec![9]]);
    }

    #[test]
    fn empty_and_out_of_range_prompts_are_errors() {
        let mut src = Counter::new(10, 64);
        assert!(matches!(
            run(&mut src, &mut Vec::new(), &[], &opts(4)).0,
            Err(RuntimeError::EmptyPrompt)
        ));
        assert!(matches!(
            run(&mut src, &mut Vec::new(), &[3, 10], &opts(4)).0,
            Err(RuntimeError::TokenOutOfRange { id: 10, .. })
        ));
        let o = GenerateOptions {
            stop: vec![String::new()],
            ..opts(4)
        };
        assert!(run(&mut src, &mut Vec::new(), &[3], &o).0.is_err());
    }
}
