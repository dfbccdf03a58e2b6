//! The request bodies of `/v1/chat/completions` and `/v1/completions`, decoded from untrusted
//! bytes and validated into [`Params`]. Unknown fields are ignored (as OpenAI's SDKs add new
//! ones); fields with the wrong type, out-of-range values and unsupported options are 400s
//! naming the field.

use edgelm_runtime::SamplerConfig;
use serde::Deserialize;

use crate::error::ApiError;

/// One message's content: a string, or an array of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": "..."}]`.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// Only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct MessageIn {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text; `null` only for assistant messages.
    pub content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four.
    Many(Vec<String>),
}

/// `prompt` of `/v1/completions`: a string, a one-element array of strings, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Several texts (only one is supported).
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// `stream_options`.
#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    /// Send a last chunk with token counts.
    pub include_usage: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    /// `text` or `json_object`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The fields of both generation endpoints (`messages` for chat, `prompt` for completions).
#[derive(Debug, Deserialize)]
pub struct GenRequest {
    /// The model's id (optional; when given it must be the served model).
    pub model: Option<String>,
    /// Chat messages.
    pub messages: Option<Vec<MessageIn>>,
    /// Completion prompt.
    pub prompt: Option<Prompt>,
    /// Tokens to generate at most (legacy name).
    pub max_tokens: Option<u64>,
    /// Tokens to generate at most.
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature in [0, 2].
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f32>,
    /// RNG seed.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Output format.
    pub response_format: Option<ResponseFormat>,
    /// Choices per request (only 1).
    pub n: Option<u64>,
    /// Presence penalty in [-2, 2].
    pub presence_penalty: Option<f32>,
    /// Frequency penalty in [-2, 2].
    pub frequency_penalty: Option<f32>,
}

/// A validated request, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Explicit token limit.
    pub max_tokens: Option<usize>,
    /// Sampler settings.
    pub sampler: SamplerConfig,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Add a usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Constrain the output to a JSON object.
    pub json: bool,
}

/// Decodes a request body: malformed JSON and wrong types are 400s with serde's message.
pub fn decode(body: &[u8]) -> Result<GenRequest, ApiError> {
    serde_json::from_slice::<GenRequest>(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "We could not parse the JSON body of your request"
        } else {
            "Invalid request body"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

fn in_range(name: &str, v: Option<f32>, lo: f32, hi: f32, lo_open: bool) -> Result<(), ApiError> {
    if let Some(x) = v {
        let ok = x.is_finite() && x <= hi && if lo_open { x > lo } else { x >= lo };
        if !ok {
            let l = if lo_open { "(" } else { "[" };
            return Err(ApiError::invalid_param(
                name,
                format!("'{name}' must be a number in {l}{lo}, {hi}], got {x}"),
            ));
        }
    }
    Ok(())
}

impl GenRequest {
    /// Checks every option and builds the sampler settings (llama.cpp's defaults where the
    /// request says nothing: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
    pub fn params(&self) -> Result<Params, ApiError> {
        in_range("temperature", self.temperature, 0.0, 2.0, false)?;
        in_range("top_p", self.top_p, 0.0, 1.0, true)?;
        in_range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        in_range(
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
            false,
        )?;
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("only n = 1 is supported, got {n}"),
                ));
            }
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            Some((name, 0)) => {
                return Err(ApiError::invalid_param(
                    name,
                    format!("'{name}' must be at least 1"),
                ))
            }
            Some((_, m)) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid_param(
                "stop",
                format!("at most 4 stop sequences are allowed, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        let json = match self.response_format.as_ref().map(|f| f.kind.as_str()) {
            None | Some("text") => false,
            Some("json_object") => true,
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "response_format",
                    format!(
                        "response_format type '{other}' is not supported (use 'text' or \
                         'json_object')"
                    ),
                ))
            }
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid_param(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        let mut sampler = SamplerConfig::default();
        if let Some(t) = self.temperature {
            sampler.temperature = t;
        }
        if let Some(p) = self.top_p {
            sampler.top_p = p;
        }
        if let Some(p) = self.presence_penalty {
            sampler.presence_penalty = p;
        }
        if let Some(p) = self.frequency_penalty {
            sampler.frequency_penalty = p;
        }
        sampler.seed = self.seed.map(|s| s as u64);
        sampler
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Params {
            max_tokens,
            sampler,
            stop,
            stream,
            include_usage,
            json,
        })
    }

    /// The chat messages as the template takes them.
    pub fn chat_messages(&self) -> Result<Vec<edgelm_tokenizer::ChatMessage>, ApiError> {
        let messages = self
            .messages
            .as_ref()
            .ok_or_else(|| ApiError::invalid_param("messages", "'messages' is required"))?;
        if messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "'messages' must contain at least one message",
            ));
        }
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let param = format!("messages[{i}]");
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    other => {
                        return Err(ApiError::invalid_param(
                            &format!("{param}.role"),
                            format!(
                                "role '{other}' is not supported (system, developer, user, \
                                 assistant)"
                            ),
                        ))
                    }
                };
                let text = match &m.content {
                    None if role == "assistant" => String::new(),
                    None => {
                        return Err(ApiError::invalid_param(
                            &format!("{param}.content"),
                            "content is required",
                        ))
                    }
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                _ => {
                                    return Err(ApiError::invalid_param(
                                        &format!("{param}.content[{j}]"),
                                        "only text content parts are supported",
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                Ok(edgelm_tokenizer::ChatMessage::new(role, text))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(body: &str) -> ApiError {
        match decode(body.as_bytes()).and_then(|r| r.params().map(|_| r)) {
            Ok(_) => panic!("accepted {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_requests_decode() {
        let r = decode(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,
                "temperature":0,"top_p":0.5,"seed":-3,"stop":["a","b"],"stream":true,
                "stream_options":{"include_usage":true},"response_format":{"type":"json_object"},
                "unknown_field":{"x":[1,2]}}"#,
        )
        .unwrap();
        let p = r.params().unwrap();
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.sampler.temperature, 0.0);
        assert_eq!(p.sampler.top_p, 0.5);
        assert_eq!(p.sampler.seed, Some(-3i64 as u64));
        assert_eq!(p.stop, vec!["a", "b"]);
        assert!(p.stream && p.include_usage && p.json);
        let m = r.chat_messages().unwrap();
        assert_eq!(m[0].content, "hi");
        let r = decode(br#"{"prompt":"x","stop":"s","max_completion_tokens":3,"max_tokens":9}"#)
            .unwrap();
        let p = r.params().unwrap();
        assert_eq!((p.max_tokens, p.stop), (Some(3), vec!["s".to_string()]));
        let r = decode(br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).unwrap();
        assert_eq!(r.chat_messages().unwrap()[0].content, "ab");
    }

    #[test]
    fn bad_requests_are_400s_naming_the_field() {
        for (body, param) in [
            (r#"{"temperature":3}"#, Some("temperature")),
            (r#"{"top_p":0}"#, Some("top_p")),
            (r#"{"n":2}"#, Some("n")),
            (r#"{"max_tokens":0}"#, Some("max_tokens")),
            (r#"{"stop":["a","b","c","d","e"]}"#, Some("stop")),
            (r#"{"stop":""}"#, Some("stop")),
            (
                r#"{"response_format":{"type":"json_schema"}}"#,
                Some("response_format"),
            ),
            (
                r#"{"stream_options":{"include_usage":true}}"#,
                Some("stream_options"),
            ),
            (r#"{"temperature":"hot"}"#, None),
            (r#"{"max_tokens":-1}"#, None),
            (r#"{"messages":"hi"}"#, None),
            (r#"{"model":"#, None),
            ("[1,2]", None),
            ("", None),
        ] {
            let e = err(body);
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
        }
        let r = decode(br#"{"messages":[{"role":"tool","content":"x"}]}"#).unwrap();
        assert_eq!(
            r.chat_messages().unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
        let r = decode(br#"{"messages":[]}"#).unwrap();
        assert!(r.chat_messages().is_err());
        let r =
            decode(br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#).unwrap();
        assert!(r.chat_messages().is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder or the validation.
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = decode(&body) {
                let _ = r.params();
                let _ = r.chat_messages();
            }
        }

        /// Structured near-misses: valid JSON objects with fields of arbitrary JSON types.
        #[test]
        fn arbitrary_field_values_never_panic(
            fields in prop::collection::vec((
                prop::sample::select(vec!["model", "messages", "prompt", "max_tokens",
                    "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream",
                    "stream_options", "response_format", "n", "presence_penalty",
                    "frequency_penalty", "role", "content"]),
                arb_json(),
            ), 0..6),
        ) {
            let obj: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let body = serde_json::to_vec(&obj).unwrap();
            if let Ok(r) = decode(&body) {
                let _ = r.params();
                let _ = r.chat_messages();
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            ".{0,6}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "role",
                        "content",
                        "type",
                        "text",
                        "include_usage",
                        "x"
                    ]),
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }
}
