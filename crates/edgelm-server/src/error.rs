//! Errors as OpenAI sends them: a status code and
//! `{"error": {"message", "type", "param", "code"}}`. Internal failures reach the client as a
//! generic message; the details are logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Machine-readable code (`context_length_exceeded`, `model_not_found`, ...).
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after_s: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// 400: the request is malformed or asks for something invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_param(param)
    }

    /// 400 `context_length_exceeded`.
    pub fn context_length(param: &str, n_prompt: usize, n_ctx: usize, max_tokens: usize) -> Self {
        let msg = if n_prompt >= n_ctx {
            format!(
                "This model's maximum context length is {n_ctx} tokens. However, your prompt \
                 has {n_prompt} tokens. Please reduce the length of the prompt."
            )
        } else {
            format!(
                "This model's maximum context length is {n_ctx} tokens. However, you requested \
                 {} tokens ({n_prompt} in the prompt, {max_tokens} for the completion). Please \
                 reduce the length of the prompt or the completion.",
                n_prompt + max_tokens
            )
        };
        let mut e = Self::invalid_param(param, msg);
        e.code = Some("context_length_exceeded");
        e
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
        );
        e.code = Some("invalid_api_key");
        e
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model '{model}' does not exist or you do not have access to it."),
        )
        .with_param("model");
        e.code = Some("model_not_found");
        e
    }

    /// 404 for an unknown route.
    pub fn not_found(path: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {path}"),
        );
        e.code = Some("unknown_url");
        e
    }

    /// 413: the body is over the limit.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than {limit_bytes} bytes."),
        );
        e.code = Some("request_too_large");
        e
    }

    /// 429: the queue is full.
    pub fn queue_full(retry_after_s: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "The server is busy: every generation slot and queue place is taken. Retry later.",
        );
        e.code = Some("queue_full");
        e.retry_after_s = Some(retry_after_s);
        e
    }

    /// 503: shutting down, or the request waited in the queue past its timeout.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after_s = Some(1);
        e
    }

    /// 500 with a generic message; `detail` is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request.",
        )
    }

    /// The same error naming the field at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// The JSON body.
    pub fn body_json(&self) -> String {
        serde_json::to_string(&Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .expect("serializing plain strings cannot fail")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body_json(),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
