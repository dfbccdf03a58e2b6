//! edgelm-server: an OpenAI-compatible HTTP server (axum + tokio) over one model.
//!
//! Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (streaming
//! server-sent events ending with `data: [DONE]`, or one JSON body), `GET /health`,
//! `GET /metrics` (Prometheus text). Errors use OpenAI's JSON shape ([`ApiError`]).
//!
//! Generation runs on one engine thread ([`engine`]) that batches the next token of every
//! running request into one forward pass, keeps each slot's KV cache for prompt reuse, and
//! bounds its queue (429 beyond it). This crate owns the wire protocol and scheduling; it
//! knows no model math (`edgelm-model`) and no sampling internals (`edgelm-runtime`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod engine;
pub mod error;
pub mod json_mode;
pub mod metrics;
mod routes;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use edgelm_kernels::ThreadPool;
use edgelm_model::Model;
use edgelm_tokenizer::{ChatTemplate, Tokenizer};

pub use engine::{Engine, EngineConfig};
pub use error::ApiError;
pub use metrics::Metrics;
pub use routes::router;

/// Server settings beyond the engine's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id clients name the model by (`GET /v1/models`).
    pub model_id: String,
    /// Required bearer token for `/v1/*`, if any.
    pub api_key: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Longest a request may take, queue wait included.
    pub request_timeout: Duration,
    /// Engine settings.
    pub engine: EngineConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_id: "model".into(),
            api_key: None,
            max_body_bytes: 2 << 20,
            request_timeout: Duration::from_secs(600),
            engine: EngineConfig::default(),
        }
    }
}

/// What the handlers share.
pub struct AppState {
    cfg: ServerConfig,
    engine: Engine,
    tok: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    metrics: Arc<Metrics>,
    created: u64,
    next_id: AtomicU64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("cfg", &self.cfg).finish()
    }
}

impl AppState {
    /// Starts the engine over `model`; `template` renders chat prompts (without one,
    /// `/v1/chat/completions` answers 400).
    pub fn new(
        cfg: ServerConfig,
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        template: Option<ChatTemplate>,
        pool: Arc<ThreadPool>,
    ) -> Result<Arc<AppState>, edgelm_model::ModelError> {
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::start(
            model,
            Arc::clone(&tok),
            pool,
            cfg.engine.clone(),
            Arc::clone(&metrics),
        )?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Arc::new(AppState {
            cfg,
            engine,
            tok,
            template,
            metrics,
            created,
            next_id: AtomicU64::new(1),
        }))
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops taking requests, lets
/// running generations finish (for at most the engine's grace period, after which streams end
/// with finish reason `length`), and returns once every connection is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&state));
    let st = Arc::clone(&state);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing running generations");
        st.engine.begin_shutdown();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await?;
    let st = Arc::clone(&state);
    tokio::task::spawn_blocking(move || st.engine.join())
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
