//! The server's routes, driven in-process with `oneshot` over the real SmolLM2-135M model
//! (skipped, with a message, when it is absent): every error case, both endpoints streaming and
//! not, JSON mode, the prompt cache, the bounded queue, cancellation by disconnect, and
//! hostile bodies — after each of which the server still serves.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use edgelm_gguf::GgufFile;
use edgelm_kernels::ThreadPool;
use edgelm_model::Model;
use edgelm_server::{AppState, EngineConfig, ServerConfig};
use edgelm_tokenizer::{ChatTemplate, Tokenizer};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const MODEL_ID: &str = "smollm2";

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("EDGELM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: real model {} is absent", p.display());
        None
    }
}

fn server(tweak: impl FnOnce(&mut ServerConfig)) -> Option<(Router, Arc<AppState>)> {
    let path = model_path()?;
    let file = Arc::new(GgufFile::open(&path).expect("open model"));
    let tok = Arc::new(Tokenizer::from_gguf(file.metadata()).expect("tokenizer"));
    let template = ChatTemplate::from_gguf(file.metadata(), &tok).expect("template");
    let model = Arc::new(Model::load(file).expect("load"));
    let pool = Arc::new(ThreadPool::new(1).expect("pool"));
    let mut cfg = ServerConfig {
        model_id: MODEL_ID.into(),
        api_key: None,
        max_body_bytes: 64 << 10,
        request_timeout: Duration::from_secs(120),
        engine: EngineConfig {
            n_slots: 2,
            n_ctx: 256,
            queue_capacity: 8,
            prefill_chunk: 64,
            prompt_cache: true,
            shutdown_grace: Duration::from_secs(5),
        },
    };
    tweak(&mut cfg);
    let state = AppState::new(cfg, model, tok, template, pool).expect("state");
    Some((edgelm_server::router(Arc::clone(&state)), state))
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn post_json(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = send(app, post(path, body.to_string())).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// `{"error": {"message", "type", "param", "code"}}` with the given status and code.
fn assert_openai_error(status: StatusCode, v: &Value, want: StatusCode, code: Option<&str>) {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
}

/// The server still answers a small chat request correctly.
async fn still_serves(app: &Router) {
    let (status, v) = post_json(app, "/v1/chat/completions", chat_body("Hi", 3)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_answer() {
    let Some((app, state)) = server(|_| {}) else {
        return;
    };
    let (status, _, text) = send(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL_ID);
    let (status, _, text) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );

    // Non-streaming chat: greedy, so two identical requests give identical answers.
    let (status, a) = post_json(&app, "/v1/chat/completions", chat_body("Name a color.", 8)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let text = a["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    let u = &a["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    let (_, b) = post_json(&app, "/v1/chat/completions", chat_body("Name a color.", 8)).await;
    assert_eq!(a["choices"], b["choices"]);
    // The repeated prompt reused its cached prefix.
    assert!(
        b["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 5,
        "{b}"
    );

    // Streaming chat: the deltas add up to the non-streamed text, then usage, then [DONE].
    let mut body = chat_body("Name a color.", 8);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, sse) = send(&app, post("/v1/chat/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let datas: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{sse}");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(
        fin["choices"][0]["finish_reason"],
        a["choices"][0]["finish_reason"]
    );
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        a["usage"]["completion_tokens"]
    );

    // Completions, with a stop string and a seed (same seed, same text).
    let body = json!({"prompt": "The numbers: 1, 2, 3,", "max_tokens": 12, "temperature": 0.9,
                      "seed": 7, "stop": ["9"]});
    let (status, c1) = post_json(&app, "/v1/completions", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{c1}");
    assert_eq!(c1["object"], "text_completion");
    let (_, c2) = post_json(&app, "/v1/completions", body).await;
    assert_eq!(c1["choices"][0]["text"], c2["choices"][0]["text"]);
    assert!(!c1["choices"][0]["text"].as_str().unwrap().contains('9'));

    // Streaming completion ends with [DONE].
    let body = json!({"prompt": "Once upon a time", "max_tokens": 5, "stream": true});
    let (status, _, sse) = send(&app, post("/v1/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");

    // Metrics count what happened.
    let (_, _, m) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(
        m.contains("edgelm_requests_total{route=\"/v1/chat/completions\",code=\"200\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("edgelm_time_to_first_token_seconds_count 6"),
        "{m}"
    );
    assert!(state.metrics().completion_tokens.load(Ordering::Relaxed) > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_output_is_valid_json() {
    let Some((app, _)) = server(|_| {}) else {
        return;
    };
    for (max_tokens, prompt) in [
        (60, "Describe a cat as a JSON object with name and age."),
        // Too few tokens for what the model wants to write: the object is closed in time.
        (6, "Give me a JSON object listing ten fruits."),
    ] {
        let mut body = chat_body(prompt, max_tokens);
        body["response_format"] = json!({"type": "json_object"});
        body["temperature"] = json!(0.7);
        body["seed"] = json!(1);
        let (status, v) = post_json(&app, "/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Result<serde_json::Map<String, Value>, _> = serde_json::from_str(content);
        assert!(parsed.is_ok(), "not a JSON object: {content:?}");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= max_tokens);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_shaped_and_the_server_keeps_serving() {
    let Some((app, _)) = server(|c| c.api_key = Some("sekret".into())) else {
        return;
    };
    let authed = |mut r: Request<Body>| {
        r.headers_mut()
            .insert(header::AUTHORIZATION, "Bearer sekret".parse().unwrap());
        r
    };
    let call = |r: Request<Body>| {
        let app = app.clone();
        async move {
            let (s, h, t) = send(&app, r).await;
            let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"));
            (s, h, v)
        }
    };
    let chat = "/v1/chat/completions";
    // 401 without or with a wrong key.
    let (s, _, v) = call(post(chat, chat_body("Hi", 2).to_string())).await;
    assert_openai_error(s, &v, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    let mut r = post(chat, chat_body("Hi", 2).to_string());
    r.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer wrong!".parse().unwrap());
    let (s, _, v) = call(r).await;
    assert_openai_error(s, &v, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
    // /health and /metrics need no key.
    let (s, _, _) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);

    // 400: malformed JSON, wrong types, bad values.
    for body in [
        "{\"messages\": [",
        "not json",
        r#"{"messages": "hello"}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 5}"#,
        r#"{"messages": [{"role": "user", "content": 5}]}"#,
        r#"{"messages": []}"#,
        r#"{"model": "smollm2"}"#,
    ] {
        let (s, _, v) = call(authed(post(chat, body))).await;
        assert_openai_error(s, &v, StatusCode::BAD_REQUEST, None);
    }
    // 400 context_length_exceeded: a prompt longer than the context, or prompt + max_tokens.
    let long = "word ".repeat(400);
    let (s, _, v) = call(authed(post(chat, chat_body(&long, 4).to_string()))).await;
    assert_openai_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        Some("context_length_exceeded"),
    );
    let (s, _, v) = call(authed(post(chat, chat_body("Hi", 1000).to_string()))).await;
    assert_openai_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        Some("context_length_exceeded"),
    );
    // 404: unknown model, unknown route.
    let mut body = chat_body("Hi", 2);
    body["model"] = json!("gpt-17");
    let (s, _, v) = call(authed(post(chat, body.to_string()))).await;
    assert_openai_error(s, &v, StatusCode::NOT_FOUND, Some("model_not_found"));
    let (s, _, v) = call(authed(
        Request::get("/v1/nothing").body(Body::empty()).unwrap(),
    ))
    .await;
    assert_openai_error(s, &v, StatusCode::NOT_FOUND, None);
    // 413: a body over the limit.
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(100 << 10));
    let (s, _, v) = call(authed(post("/v1/completions", huge))).await;
    assert_openai_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, None);

    // Still serving.
    let (s, _, v) = call(authed(post(chat, chat_body("Hi", 3).to_string()))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_never_crash() {
    let Some((app, _)) = server(|_| {}) else {
        return;
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = chat_body("Hello there", 2).to_string().into_bytes();
    let mut bodies: Vec<Vec<u8>> = vec![
        "[".repeat(5000).into_bytes(),
        format!("{{\"messages\":{}", "[".repeat(100_000)).into_bytes(),
        br#"{"messages":[{"role":"user","content":"\ud800"}]}"#.to_vec(),
        br#"{"prompt":[4294967295]}"#.to_vec(),
        br#"{"prompt":[]}"#.to_vec(),
        br#"{"prompt":""}"#.to_vec(),
        br#"{"prompt":"x","max_tokens":18446744073709551615}"#.to_vec(),
        br#"{"prompt":"x","seed":1e400}"#.to_vec(),
        vec![0xff; 1000],
        Vec::new(),
    ];
    // Mutations of a valid body: flipped, dropped and duplicated bytes.
    for _ in 0..60 {
        let mut b = valid.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[i] ^= 1 << (next() % 8),
                1 => {
                    b.remove(i);
                }
                _ => {
                    let x = b[i];
                    b.insert(i, x);
                }
            }
        }
        bodies.push(b);
    }
    for b in bodies {
        for path in ["/v1/chat/completions", "/v1/completions"] {
            let resp = app
                .clone()
                .oneshot(post(path, b.clone()))
                .await
                .expect("infallible");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            if status != StatusCode::OK {
                assert!(
                    status.is_client_error(),
                    "{status} for {:?}",
                    String::from_utf8_lossy(&b)
                );
                let v: Value = serde_json::from_slice(&bytes).expect("JSON error body");
                assert!(v["error"]["message"].is_string());
            }
        }
    }
    still_serves(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_and_disconnect_cancels() {
    let Some((app, state)) = server(|c| {
        c.engine.n_slots = 1;
        c.engine.queue_capacity = 1;
    }) else {
        return;
    };
    // A long stream occupies the only slot; read its first bytes.
    let mut body = chat_body("Count from one to one hundred.", 200);
    body["stream"] = json!(true);
    let resp = app
        .clone()
        .oneshot(post("/v1/chat/completions", body.to_string()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body();
    let first = stream.frame().await.expect("a frame").expect("ok");
    assert!(first.into_data().is_ok());
    // One request may wait; the next is refused with 429 and Retry-After.
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            post_json(
                &app,
                "/v1/completions",
                json!({"prompt": "Hi", "max_tokens": 2}),
            )
            .await
        })
    };
    let t0 = Instant::now();
    while state.metrics().queue_depth.load(Ordering::SeqCst) < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the second request never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, h, t) = send(
        &app,
        post("/v1/completions", json!({"prompt": "Hi"}).to_string()),
    )
    .await;
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_openai_error(s, &v, StatusCode::TOO_MANY_REQUESTS, Some("queue_full"));
    assert!(
        h[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );

    // Dropping the stream cancels its generation; the waiting request then runs.
    drop(stream);
    let (s, v) = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the queued request finished")
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(state.metrics().cancelled.load(Ordering::Relaxed), 1);
    still_serves(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_reuses_a_conversation_prefix() {
    let Some((app, _)) = server(|c| c.engine.n_ctx = 512) else {
        return;
    };
    let system = "You are a helpful assistant who answers briefly. ".repeat(6);
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": "What is two plus two?"}),
    ];
    let (_, v1) = post_json(
        &app,
        "/v1/chat/completions",
        json!({"messages": messages, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    let n1 = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    messages.push(json!({"role": "assistant", "content": v1["choices"][0]["message"]["content"]}));
    messages.push(json!({"role": "user", "content": "And three plus three?"}));
    let (_, v2) = post_json(
        &app,
        "/v1/chat/completions",
        json!({"messages": messages, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // At least the whole first prompt (system prompt and first turn) came from the cache.
    assert!(
        cached >= n1,
        "cached {cached} of the first prompt's {n1}: {v2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_ends_a_generation_cleanly() {
    let Some((app, state)) = server(|c| c.request_timeout = Duration::from_millis(300)) else {
        return;
    };
    let body = json!({"prompt": "Once upon a time", "max_tokens": 240, "temperature": 0.8,
                      "seed": 1});
    let (status, v) = post_json(&app, "/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() < 240,
        "{v}"
    );
    assert_eq!(state.metrics().timed_out.load(Ordering::Relaxed), 1);
}
