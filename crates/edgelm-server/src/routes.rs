//! HTTP routes: request decoding, prompt building, submission to the engine, and the JSON or
//! server-sent-event responses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{self, GenRequest, Params, Prompt};
use crate::engine::{Event, Finish, Job, Usage};
use crate::{ApiError, AppState};

type St = State<Arc<AppState>>;

/// The application: every route, the body limit, the API-key check and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), count))
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .with_state(state)
}

async fn count(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let resp = next.run(req).await;
    st.metrics.count_request(&route, resp.status().as_u16());
    resp
}

async fn auth(State(st): St, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Constant-time comparison: the key's length may leak, its bytes do not.
        let ok = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn health(State(st): St) -> Response {
    if st.engine.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(st): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.cfg.model_id,
        "object": "model",
        "created": st.created,
        "owned_by": "edgelm",
        "meta": {"n_ctx": st.cfg.engine.n_ctx, "n_vocab": st.tok.n_vocab()},
    })
}

async fn models(State(st): St) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&st)]}))
}

async fn model_by_id(State(st): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id == st.cfg.model_id {
        Ok(Json(model_object(&st)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(st): St, body: Result<Bytes, BytesRejection>) -> Response {
    generate(st, body, Kind::Chat).await
}

async fn completions(State(st): St, body: Result<Bytes, BytesRejection>) -> Response {
    generate(st, body, Kind::Completion).await
}

fn body_error(st: &AppState, r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(st.cfg.max_body_bytes)
    } else {
        ApiError::bad_request(format!(
            "Could not read the request body: {}",
            r.body_text()
        ))
    }
}

/// Tokenizes the request's prompt (chat template for chat) and checks it fits the context.
fn prompt_tokens(
    st: &AppState,
    req: &GenRequest,
    kind: Kind,
    params: &Params,
) -> Result<(Vec<u32>, usize), ApiError> {
    let (tokens, param) = match kind {
        Kind::Chat => {
            let messages = req.chat_messages()?;
            let template = st.template.as_ref().ok_or_else(|| {
                ApiError::bad_request("This model has no chat template; use /v1/completions.")
            })?;
            let text = template
                .render(&messages, true)
                .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
            let bos_in_text = st
                .tok
                .bos()
                .and_then(|b| st.tok.token_text(b))
                .is_some_and(|b| !b.is_empty() && text.starts_with(b));
            let ids = st
                .tok
                .encode(&text, !bos_in_text, true)
                .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
            (ids, "messages")
        }
        Kind::Completion => {
            let ids = match &req.prompt {
                None => return Err(ApiError::invalid_param("prompt", "'prompt' is required")),
                Some(Prompt::Text(t)) => st.tok.encode(t, true, true),
                Some(Prompt::Texts(v)) if v.len() == 1 => st.tok.encode(&v[0], true, true),
                Some(Prompt::Texts(v)) => {
                    return Err(ApiError::invalid_param(
                        "prompt",
                        format!("only one prompt per request is supported, got {}", v.len()),
                    ))
                }
                Some(Prompt::Tokens(ids)) => {
                    let n = st.tok.n_vocab();
                    if let Some(bad) = ids.iter().find(|&&t| t as usize >= n) {
                        return Err(ApiError::invalid_param(
                            "prompt",
                            format!("token id {bad} is out of range (vocabulary of {n})"),
                        ));
                    }
                    Ok(ids.clone())
                }
            }
            .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?;
            (ids, "prompt")
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid_param(param, "the prompt is empty"));
    }
    let n_ctx = st.cfg.engine.n_ctx;
    let n = tokens.len();
    let max_tokens = match params.max_tokens {
        _ if n >= n_ctx => return Err(ApiError::context_length(param, n, n_ctx, 0)),
        Some(m) if m > n_ctx - n => return Err(ApiError::context_length(param, n, n_ctx, m)),
        Some(m) => m,
        None => n_ctx - n,
    };
    Ok((tokens, max_tokens))
}

async fn generate(st: Arc<AppState>, body: Result<Bytes, BytesRejection>, kind: Kind) -> Response {
    let arrived = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(&st, r).into_response(),
    };
    let req = match api::decode(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    drop(body);
    if let Some(m) = &req.model {
        if *m != st.cfg.model_id {
            return ApiError::model_not_found(m).into_response();
        }
    }
    let params = match req.params() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let st2 = Arc::clone(&st);
    let params2 = params.clone();
    let built =
        tokio::task::spawn_blocking(move || prompt_tokens(&st2, &req, kind, &params2)).await;
    let (prompt, max_tokens) = match built {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let n_prompt = prompt.len();
    let job = Job {
        prompt,
        max_tokens,
        sampler: params.sampler.clone(),
        stop: params.stop.clone(),
        json: params.json,
        arrived,
        deadline: arrived + st.cfg.request_timeout,
        events: tx,
    };
    if let Err(e) = st.engine.submit(job) {
        return e.into_response();
    }
    tracing::debug!(
        n_prompt,
        max_tokens,
        stream = params.stream,
        "request queued"
    );

    // Errors before the first token are plain HTTP errors, also for streams.
    match rx.recv().await {
        Some(Event::Started) => {}
        Some(Event::Error(e)) => return e.into_response(),
        Some(Event::Done { finish, usage }) => {
            // Nothing generated (e.g. no token allowed): an empty answer.
            return finished_response(&st, kind, String::new(), finish, usage, &params);
        }
        Some(Event::Text(_)) | None => {
            return ApiError::internal("the engine dropped a request").into_response()
        }
    }
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    if params.stream {
        let stream = StreamState {
            rx,
            pending: VecDeque::new(),
            done: false,
            meta: ChunkMeta {
                id: match kind {
                    Kind::Chat => format!("chatcmpl-{id}"),
                    Kind::Completion => format!("cmpl-{id}"),
                },
                created: unix_now(),
                model: st.cfg.model_id.clone(),
                kind,
                include_usage: params.include_usage,
            },
        };
        let mut stream = stream;
        if kind == Kind::Chat {
            let first = stream
                .meta
                .chunk(Some(json!({"role": "assistant", "content": ""})), None);
            stream.pending.push_back(first);
        }
        let events = futures_util::stream::unfold(stream, |mut s| async move {
            loop {
                if let Some(ev) = s.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(ev), s));
                }
                if s.done {
                    return None;
                }
                match s.rx.recv().await {
                    Some(Event::Started) => {}
                    Some(Event::Text(t)) => {
                        let ev = s.meta.text_chunk(t);
                        s.pending.push_back(ev);
                    }
                    Some(Event::Done { finish, usage }) => {
                        let ev = s.meta.finish_chunk(finish);
                        s.pending.push_back(ev);
                        if s.meta.include_usage {
                            let ev = s.meta.usage_chunk(usage);
                            s.pending.push_back(ev);
                        }
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        s.done = true;
                    }
                    Some(Event::Error(e)) => {
                        s.pending.push_back(SseEvent::default().data(e.body_json()));
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        s.done = true;
                    }
                    None => {
                        let e = ApiError::internal("the engine dropped a stream");
                        s.pending.push_back(SseEvent::default().data(e.body_json()));
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        s.done = true;
                    }
                }
            }
        });
        return Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
    }

    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Started) => {}
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done { finish, usage }) => {
                return finished_response(&st, kind, text, finish, usage, &params)
            }
            Some(Event::Error(e)) => return e.into_response(),
            None => return ApiError::internal("the engine dropped a request").into_response(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

fn finished_response(
    st: &AppState,
    kind: Kind,
    text: String,
    finish: Finish,
    usage: Usage,
    params: &Params,
) -> Response {
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let created = unix_now();
    if params.stream {
        // The stream ended before it started (nothing generated): still a well-formed stream.
        let meta = ChunkMeta {
            id: format!("gen-{id}"),
            created,
            model: st.cfg.model_id.clone(),
            kind,
            include_usage: params.include_usage,
        };
        let mut evs = vec![meta.finish_chunk(finish)];
        if params.include_usage {
            evs.push(meta.usage_chunk(usage));
        }
        evs.push(SseEvent::default().data("[DONE]"));
        let s = futures_util::stream::iter(evs.into_iter().map(Ok::<_, Infallible>));
        return Sse::new(s).into_response();
    }
    let body = match kind {
        Kind::Chat => json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": created,
            "model": st.cfg.model_id,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }],
            "usage": usage_json(usage),
        }),
        Kind::Completion => json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": created,
            "model": st.cfg.model_id,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }],
            "usage": usage_json(usage),
        }),
    };
    Json(body).into_response()
}

struct ChunkMeta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    include_usage: bool,
}

impl ChunkMeta {
    fn chunk(&self, delta: Option<Value>, finish: Option<Finish>) -> SseEvent {
        let finish = finish.map(Finish::as_str);
        let body = match self.kind {
            Kind::Chat => json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "delta": delta.unwrap_or_else(|| json!({})),
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            }),
            Kind::Completion => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "text": delta.and_then(|d| d.get("content").cloned()).unwrap_or(json!("")),
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            }),
        };
        SseEvent::default().data(body.to_string())
    }

    fn text_chunk(&self, text: String) -> SseEvent {
        self.chunk(Some(json!({"content": text})), None)
    }

    fn finish_chunk(&self, finish: Finish) -> SseEvent {
        self.chunk(None, Some(finish))
    }

    fn usage_chunk(&self, usage: Usage) -> SseEvent {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let body = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage_json(usage),
        });
        SseEvent::default().data(body.to_string())
    }
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<SseEvent>,
    done: bool,
    meta: ChunkMeta,
}
