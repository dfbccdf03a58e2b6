//! The generation engine: one thread that owns every slot (a KV cache and the token history it
//! holds) and runs continuous batching over them.
//!
//! Each turn of its loop:
//! 1. takes new jobs into a FIFO (the HTTP side bounds it: a full queue is a 429);
//! 2. drops waiting jobs whose client went away or whose deadline passed;
//! 3. gives each waiting job a free slot — the one whose cached tokens share the longest prefix
//!    with the job's prompt (the prompt cache), least recently used on ties;
//! 4. evaluates up to `prefill_chunk` prompt tokens (spread over the slots still reading their
//!    prompts, so a long prompt delays the others' next token by one chunk at most);
//! 5. decodes one token for every generating slot in a single batched forward pass
//!    ([`Model::forward_decode`]: the weights are read once for all of them).
//!
//! A job's events go back over its own channel; a dropped receiver (the client disconnected)
//! cancels the generation at the next turn.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgelm_kernels::ThreadPool;
use edgelm_model::{DecodeBatch, Logits, Model, State};
use edgelm_runtime::{Sampler, SamplerConfig, StopMatcher};
use edgelm_tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::json_mode::{JsonState, JsonVocab};
use crate::metrics::Metrics;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences generating at once.
    pub n_slots: usize,
    /// Context (KV cache positions) of each slot.
    pub n_ctx: usize,
    /// Requests that may wait for a slot; one more is refused with 429.
    pub queue_capacity: usize,
    /// Prompt tokens evaluated per engine turn (also each slot's batch size).
    pub prefill_chunk: usize,
    /// Reuse the KV state of a prompt's cached prefix.
    pub prompt_cache: bool,
    /// After shutdown begins, generations still running are ended after this long.
    pub shutdown_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_slots: 8,
            n_ctx: 2048,
            queue_capacity: 64,
            prefill_chunk: 256,
            prompt_cache: true,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// One generation request, validated and tokenized.
#[derive(Debug)]
pub struct Job {
    /// Prompt tokens (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Constrain the output to a JSON object.
    pub json: bool,
    /// When the request arrived.
    pub arrived: Instant,
    /// When generation is cut short (finish reason `length`), or the job dropped if still
    /// waiting (503).
    pub deadline: Instant,
    /// Where events go.
    pub events: UnboundedSender<Event>,
}

/// Why a generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, stop string, or a completed JSON object.
    Stop,
    /// `max_tokens`, the context, the request timeout or server shutdown.
    Length,
}

impl Finish {
    /// `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Token counts of a finished generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, reused from the prompt cache.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// What the engine tells a request.
#[derive(Debug)]
pub enum Event {
    /// The prompt is evaluated; text follows.
    Started,
    /// Newly generated text.
    Text(String),
    /// Generation ended.
    Done {
        /// Why.
        finish: Finish,
        /// Token counts.
        usage: Usage,
    },
    /// The request failed before or during generation.
    Error(ApiError),
}

struct Shared {
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Milliseconds after `epoch` at which draining generations are ended.
    drain_deadline_ms: AtomicU64,
    epoch: Instant,
}

/// The HTTP side's handle on the engine thread.
pub struct Engine {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    shared: Arc<Shared>,
    cfg: EngineConfig,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("cfg", &self.cfg).finish()
    }
}

impl Engine {
    /// Allocates the slots and starts the engine thread.
    pub fn start(
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        pool: Arc<ThreadPool>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, edgelm_model::ModelError> {
        if cfg.n_slots == 0 {
            return Err(edgelm_model::ModelError::InvalidArgument {
                name: "n_slots",
                reason: "the server needs at least one slot".into(),
            });
        }
        let chunk = cfg.prefill_chunk.clamp(1, cfg.n_ctx);
        let slots = (0..cfg.n_slots)
            .map(|_| {
                Ok(SlotCache {
                    state: model.new_state(cfg.n_ctx, chunk)?,
                    history: Vec::new(),
                    last_used: 0,
                })
            })
            .collect::<Result<Vec<_>, edgelm_model::ModelError>>()?;
        let batch = model.new_decode_batch(cfg.n_slots)?;
        let shared = Arc::new(Shared {
            metrics,
            draining: AtomicBool::new(false),
            drain_deadline_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        });
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            model,
            pool,
            cfg: cfg.clone(),
            shared: Arc::clone(&shared),
        };
        let thread = std::thread::Builder::new()
            .name("edgelm-engine".into())
            .spawn(move || worker.run(&tok, slots, batch, rx))
            .map_err(|e| edgelm_model::ModelError::InvalidArgument {
                name: "engine thread",
                reason: e.to_string(),
            })?;
        Ok(Engine {
            tx: Mutex::new(Some(tx)),
            shared,
            cfg,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Queues a job: 429 when the queue is full, 503 while shutting down.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("The server is shutting down."));
        }
        let m = &self.shared.metrics;
        let cap = self.cfg.queue_capacity as u64;
        let admitted = m
            .queue_depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < cap).then_some(q + 1)
            })
            .is_ok();
        if !admitted {
            m.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::queue_full(self.retry_after_s()));
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent {
            Ok(())
        } else {
            m.queue_depth.fetch_sub(1, Ordering::SeqCst);
            Err(ApiError::unavailable("The server is shutting down."))
        }
    }

    /// A guess at when a slot frees: the mean request time so far, at least one second.
    fn retry_after_s(&self) -> u32 {
        let m = &self.shared.metrics;
        let (n, sum) = m.request_seconds.count_and_sum();
        if n == 0 {
            1
        } else {
            ((sum / n as f64).ceil() as u32).clamp(1, 60)
        }
    }

    /// Stops taking jobs; running and queued ones go on for at most the grace period, then end
    /// with finish reason `length`.
    pub fn begin_shutdown(&self) {
        let ms = self.shared.epoch.elapsed() + self.cfg.shutdown_grace;
        self.shared
            .drain_deadline_ms
            .store(ms.as_millis() as u64, Ordering::SeqCst);
        self.shared.draining.store(true, Ordering::SeqCst);
        // Dropping the sender wakes the thread once the queue is empty.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Waits for the engine thread to end (after [`Engine::begin_shutdown`]).
    pub fn join(&self) {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

/// A slot's KV cache and the tokens in it (`state.pos() == history.len()`).
struct SlotCache {
    state: State,
    history: Vec<u32>,
    last_used: u64,
}

/// A generation in progress in a slot.
struct Gen<'t> {
    job: Job,
    sampler: Sampler,
    stop: StopMatcher,
    decoder: StreamDecoder<'t>,
    json: Option<JsonState>,
    /// Prompt tokens in the cache so far.
    n_prompt_done: usize,
    n_cached: usize,
    /// The token sampled last, evaluated at the next decode step.
    next: Option<u32>,
    n_generated: usize,
}

enum End {
    Eog,
    StopString,
    Length,
    TimedOut,
    Cancelled,
}

struct Worker {
    model: Arc<Model>,
    pool: Arc<ThreadPool>,
    cfg: EngineConfig,
    shared: Arc<Shared>,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Worker {
    fn run(
        self,
        tok: &Tokenizer,
        mut caches: Vec<SlotCache>,
        mut batch: DecodeBatch,
        rx: mpsc::Receiver<Job>,
    ) {
        let json_vocab = JsonVocab::new(tok);
        let n_vocab = self.model.config().n_vocab;
        let mut gens: Vec<Option<Gen<'_>>> = caches.iter().map(|_| None).collect();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut scratch = vec![0.0f32; n_vocab];
        let mut turn: u64 = 0;
        let mut rx = Some(rx);
        let m = Arc::clone(&self.shared.metrics);
        loop {
            turn += 1;
            // 1. intake
            let idle = waiting.is_empty() && gens.iter().all(Option::is_none);
            if let Some(r) = &rx {
                if idle {
                    match r.recv_timeout(Duration::from_millis(200)) {
                        Ok(job) => waiting.push_back(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => rx = None,
                    }
                }
            }
            if let Some(r) = &rx {
                loop {
                    match r.try_recv() {
                        Ok(job) => waiting.push_back(job),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            rx = None;
                            break;
                        }
                    }
                }
            }
            let now = Instant::now();
            let draining = self.shared.draining.load(Ordering::SeqCst);
            let drain_over = draining
                && now.duration_since(self.shared.epoch).as_millis() as u64
                    >= self.shared.drain_deadline_ms.load(Ordering::SeqCst);
            if rx.is_none() && waiting.is_empty() && gens.iter().all(Option::is_none) {
                break;
            }

            // 2. waiting jobs that are gone or late
            waiting.retain(|job| {
                let keep = if job.events.is_closed() {
                    m.cancelled.fetch_add(1, Ordering::Relaxed);
                    false
                } else if drain_over {
                    let _ = job.events.send(Event::Error(ApiError::unavailable(
                        "The server shut down before this request got a slot.",
                    )));
                    false
                } else if now >= job.deadline {
                    m.timed_out.fetch_add(1, Ordering::Relaxed);
                    let _ = job.events.send(Event::Error(ApiError::unavailable(
                        "The request timed out waiting for a generation slot.",
                    )));
                    false
                } else {
                    true
                };
                if !keep {
                    m.queue_depth.fetch_sub(1, Ordering::SeqCst);
                }
                keep
            });

            // Running generations that are gone or late.
            for (cache, g) in caches.iter_mut().zip(gens.iter_mut()) {
                let Some(gen) = g else { continue };
                let end = if gen.job.events.is_closed() {
                    Some(End::Cancelled)
                } else if drain_over {
                    Some(End::Length)
                } else if now >= gen.job.deadline {
                    Some(End::TimedOut)
                } else {
                    None
                };
                if let Some(end) = end {
                    self.finish(cache, g, end, turn);
                }
            }

            // 3. free slots to waiting jobs
            while !waiting.is_empty() {
                let free = caches
                    .iter()
                    .zip(&gens)
                    .enumerate()
                    .filter(|(_, (_, g))| g.is_none())
                    .map(|(i, (c, _))| (i, c));
                let job = &waiting[0];
                let best = free.max_by_key(|(_, c)| {
                    let shared = if self.cfg.prompt_cache {
                        common_prefix(&c.history, &job.prompt)
                    } else {
                        0
                    };
                    (shared, std::cmp::Reverse(c.last_used))
                });
                let Some((i, _)) = best else { break };
                let job = waiting.pop_front().expect("not empty");
                m.queue_depth.fetch_sub(1, Ordering::SeqCst);
                m.queue_seconds
                    .observe(now.duration_since(job.arrived).as_secs_f64());
                gens[i] = self.assign(tok, &mut caches[i], job, n_vocab);
            }

            // 4. prompts, up to one chunk per turn
            let mut budget = self.cfg.prefill_chunk.max(1);
            for (cache, g) in caches.iter_mut().zip(gens.iter_mut()) {
                if budget == 0 {
                    break;
                }
                let Some(gen) = g else { continue };
                if gen.next.is_some() || gen.n_prompt_done == gen.job.prompt.len() {
                    continue;
                }
                let prompt = &gen.job.prompt;
                let n = (prompt.len() - gen.n_prompt_done).min(budget);
                let piece = &prompt[gen.n_prompt_done..gen.n_prompt_done + n];
                budget -= n;
                let r = self
                    .model
                    .forward(&self.pool, &mut cache.state, piece, Logits::Last);
                let logits = match r {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = gen.job.events.send(Event::Error(ApiError::internal(e)));
                        cache.state.reset();
                        cache.history.clear();
                        *g = None;
                        m.active_slots.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                };
                cache.history.extend_from_slice(piece);
                gen.n_prompt_done += n;
                if gen.n_prompt_done < gen.job.prompt.len() {
                    continue;
                }
                let _ = gen.job.events.send(Event::Started);
                let end = match sample(gen, logits, &cache.history, &json_vocab, &mut scratch) {
                    Some(id) => self.on_token(tok, gen, id, cache.state.pos()),
                    None => Some(End::Length),
                };
                if let Some(end) = end {
                    self.finish(cache, g, end, turn);
                }
            }

            // 5. one batched decode step for every generating slot
            let mut states: Vec<&mut State> = Vec::new();
            let mut tokens: Vec<u32> = Vec::new();
            let mut members: Vec<usize> = Vec::new();
            for (i, (cache, g)) in caches.iter_mut().zip(gens.iter()).enumerate() {
                if let Some(id) = g.as_ref().and_then(|g| g.next) {
                    states.push(&mut cache.state);
                    tokens.push(id);
                    members.push(i);
                }
            }
            if tokens.is_empty() {
                continue;
            }
            m.decode_steps.fetch_add(1, Ordering::Relaxed);
            m.decode_seqs
                .fetch_add(tokens.len() as u64, Ordering::Relaxed);
            let r = self
                .model
                .forward_decode(&self.pool, &mut batch, &mut states, &tokens);
            drop(states);
            let rows = match r {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "batched decode failed");
                    for &i in &members {
                        if let Some(gen) = &gens[i] {
                            let _ = gen.job.events.send(Event::Error(ApiError::internal(&e)));
                        }
                        caches[i].state.reset();
                        caches[i].history.clear();
                        gens[i] = None;
                        m.active_slots.fetch_sub(1, Ordering::SeqCst);
                    }
                    continue;
                }
            };
            for (row, (&i, &id)) in members.iter().zip(&tokens).enumerate() {
                let cache = &mut caches[i];
                let g = &mut gens[i];
                let gen = g.as_mut().expect("member slots are generating");
                cache.history.push(id);
                gen.next = None;
                let logits = &rows[row * n_vocab..(row + 1) * n_vocab];
                let end = match sample(gen, logits, &cache.history, &json_vocab, &mut scratch) {
                    Some(id) => self.on_token(tok, gen, id, cache.state.pos()),
                    None => Some(End::Length),
                };
                if let Some(end) = end {
                    self.finish(cache, g, end, turn);
                }
            }
        }
        tracing::info!("engine stopped");
    }

    fn assign<'t>(
        &self,
        tok: &'t Tokenizer,
        cache: &mut SlotCache,
        job: Job,
        n_vocab: usize,
    ) -> Option<Gen<'t>> {
        let m = &self.shared.metrics;
        let sampler = Sampler::new(job.sampler.clone(), n_vocab);
        let stop = StopMatcher::new(&job.stop);
        let (sampler, stop) = match (sampler, stop) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => {
                let _ = job
                    .events
                    .send(Event::Error(ApiError::bad_request(e.to_string())));
                return None;
            }
        };
        // Reuse the cached prefix; the last prompt token is always evaluated for its logits.
        let shared = if self.cfg.prompt_cache {
            common_prefix(&cache.history, &job.prompt).min(job.prompt.len() - 1)
        } else {
            0
        };
        cache.state.truncate(shared);
        cache.history.truncate(shared);
        m.active_slots.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(
            n_prompt = job.prompt.len(),
            n_cached = shared,
            "generation starts"
        );
        Some(Gen {
            json: job.json.then(JsonState::new),
            job,
            sampler,
            stop,
            decoder: StreamDecoder::new(tok),
            n_prompt_done: shared,
            n_cached: shared,
            next: None,
            n_generated: 0,
        })
    }

    /// Takes a sampled token; `Some` when generation ends with it.
    fn on_token(&self, tok: &Tokenizer, gen: &mut Gen<'_>, id: u32, pos: usize) -> Option<End> {
        if gen.n_generated == 0 {
            self.shared
                .metrics
                .ttft_seconds
                .observe(gen.job.arrived.elapsed().as_secs_f64());
        }
        if tok.is_eog(id) {
            return Some(End::Eog);
        }
        gen.n_generated += 1;
        if let Some(js) = &mut gen.json {
            js.feed(tok.token_to_piece(id));
        }
        let piece = gen.decoder.push(id);
        let out = gen.stop.push(&piece);
        if !out.emit.is_empty() {
            let _ = gen.job.events.send(Event::Text(out.emit));
        }
        if out.stopped {
            return Some(End::StopString);
        }
        if gen.json.is_some_and(|js| js.is_complete()) {
            return Some(End::Eog);
        }
        if gen.n_generated >= gen.job.max_tokens || pos >= self.cfg.n_ctx {
            return Some(End::Length);
        }
        gen.next = Some(id);
        None
    }

    /// Ends the generation in `g`, telling its client why (unless it went away).
    fn finish(&self, cache: &mut SlotCache, g: &mut Option<Gen<'_>>, end: End, turn: u64) {
        let Some(mut gen) = g.take() else { return };
        let m = &self.shared.metrics;
        m.active_slots.fetch_sub(1, Ordering::SeqCst);
        cache.last_used = turn;
        debug_assert_eq!(cache.state.pos(), cache.history.len());
        let finish = match end {
            End::Cancelled => {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(n_generated = gen.n_generated, "generation cancelled");
                return;
            }
            End::StopString => Finish::Stop,
            End::Eog => Finish::Stop,
            End::Length => Finish::Length,
            End::TimedOut => {
                m.timed_out.fetch_add(1, Ordering::Relaxed);
                Finish::Length
            }
        };
        if !matches!(end, End::StopString) {
            // Release what the stop matcher and the UTF-8 decoder held back.
            let tail = gen.decoder.finish();
            let mut rest = gen.stop.push(&tail).emit;
            if !gen.stop.is_stopped() {
                rest.push_str(&gen.stop.finish());
            }
            if !rest.is_empty() {
                let _ = gen.job.events.send(Event::Text(rest));
            }
        }
        let usage = Usage {
            prompt_tokens: gen.job.prompt.len(),
            cached_tokens: gen.n_cached,
            completion_tokens: gen.n_generated,
        };
        m.prompt_tokens
            .fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
        m.cached_prompt_tokens
            .fetch_add(usage.cached_tokens as u64, Ordering::Relaxed);
        m.completion_tokens
            .fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
        m.request_seconds
            .observe(gen.job.arrived.elapsed().as_secs_f64());
        let _ = gen.job.events.send(Event::Done { finish, usage });
    }
}

/// Samples the next token, with the JSON mask when the job asks for JSON; `None` when the mask
/// leaves nothing.
fn sample(
    gen: &mut Gen<'_>,
    logits: &[f32],
    history: &[u32],
    json_vocab: &JsonVocab,
    scratch: &mut [f32],
) -> Option<u32> {
    match &gen.json {
        Some(js) => {
            scratch.copy_from_slice(logits);
            let left = gen.job.max_tokens.saturating_sub(gen.n_generated + 1);
            if json_vocab.mask(js, left, scratch) == 0 {
                return None;
            }
            Some(gen.sampler.sample(scratch, history))
        }
        None => Some(gen.sampler.sample(logits, history)),
    }
}
