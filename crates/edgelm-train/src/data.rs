//! Training data from JSON Lines: `{"text": "..."}` documents and
//! `{"messages": [{"role": "...", "content": "..."}, ...]}` chats. A chat is rendered with the
//! model's chat template, and only the assistant's tokens are trained on (their mask is set);
//! the rest (system and user turns, the template's markup up to each assistant reply) is
//! context. Bad lines are reported with their line number, and skipped or fatal.

use edgelm_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde::Deserialize;

use crate::TrainError;

/// What to do with a line that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadLine {
    /// Report it and go on.
    Skip,
    /// Stop with [`TrainError::BadData`].
    Fail,
}

/// A line that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Why it was not used.
    pub reason: String,
}

/// Token stream and mask of the usable lines, packed in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// All examples' tokens back to back.
    pub tokens: Vec<u32>,
    /// Whether each token is a training target.
    pub mask: Vec<bool>,
    /// Examples used.
    pub n_examples: usize,
    /// Lines skipped (empty with [`OnBadLine::Fail`]).
    pub skipped: Vec<BadLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
}

/// The text pieces of a chat in order, each flagged when it is an assistant reply (trained
/// on). Rendering a chat up to each assistant reply (with the generation prompt) must give a
/// prefix of rendering it through that reply; the difference is the reply.
pub fn chat_segments(
    template: &ChatTemplate,
    messages: &[ChatMessage],
) -> Result<Vec<(String, bool)>, String> {
    if messages.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to train on".into());
    }
    let render = |m: &[ChatMessage], gen: bool| {
        template
            .render(m, gen)
            .map_err(|e| format!("chat template: {e}"))
    };
    let mut segments = Vec::new();
    let mut done = 0; // bytes of the full rendering already emitted
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prefix = render(&messages[..i], true)?;
        let through = render(&messages[..=i], false)?;
        if !through.starts_with(&prefix) || prefix.len() < done {
            return Err(format!(
                "the chat template does not render message {i} as a continuation of the \
                 ones before it; cannot tell the assistant's tokens apart"
            ));
        }
        if prefix.len() > done {
            segments.push((prefix[done..].to_string(), false));
        }
        segments.push((through[prefix.len()..].to_string(), true));
        done = through.len();
    }
    let full = render(messages, false)?;
    if full.len() > done {
        if !full.starts_with(&segments.iter().map(|s| s.0.as_str()).collect::<String>()) {
            return Err(
                "the chat template renders the whole chat differently from its parts".into(),
            );
        }
        segments.push((full[done..].to_string(), false));
    }
    Ok(segments)
}

/// Parses `text` (JSON Lines) into one packed stream. `template` is needed for chat lines.
/// Text documents get BOS (when the model adds one) and EOS; every token of a text document
/// is a target. Empty lines are ignored.
pub fn read_jsonl(
    text: &str,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    on_bad: OnBadLine,
) -> Result<Packed, TrainError> {
    let mut out = Packed::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match example(line, tok, template) {
            Ok((tokens, mask)) => {
                out.tokens.extend_from_slice(&tokens);
                out.mask.extend_from_slice(&mask);
                out.n_examples += 1;
            }
            Err(reason) => match on_bad {
                OnBadLine::Fail => return Err(TrainError::BadData { line: n, reason }),
                OnBadLine::Skip => out.skipped.push(BadLine { line: n, reason }),
            },
        }
    }
    Ok(out)
}

fn example(
    line: &str,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    let parsed: Line = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    match (parsed.text, parsed.messages) {
        (Some(text), None) => {
            if text.is_empty() {
                return Err("\"text\" is empty".into());
            }
            let mut tokens = tok
                .encode(&text, true, false)
                .map_err(|e| format!("cannot tokenize: {e}"))?;
            if let Some(eos) = tok.eos() {
                tokens.push(eos);
            }
            let mask = vec![true; tokens.len()];
            Ok((tokens, mask))
        }
        (None, Some(messages)) => {
            let template = template.ok_or("a chat line, but the model has no chat template")?;
            let segments = chat_segments(template, &messages)?;
            let (mut tokens, mut mask) = (Vec::new(), Vec::new());
            for (k, (piece, trained)) in segments.iter().enumerate() {
                let ids = tok
                    .encode(piece, k == 0, true)
                    .map_err(|e| format!("cannot tokenize: {e}"))?;
                mask.extend(std::iter::repeat_n(*trained, ids.len()));
                tokens.extend(ids);
            }
            Ok((tokens, mask))
        }
        (Some(_), Some(_)) => Err("has both \"text\" and \"messages\"".into()),
        (None, None) => Err("expected an object with \"text\" or \"messages\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ChatML, as SmolLM2 and Qwen use.
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chat_segments_mark_only_the_assistant_replies() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "Bye"),
            ChatMessage::new("assistant", "Bye."),
        ];
        let s = chat_segments(&t, &msgs).unwrap();
        let trained: Vec<&str> = s.iter().filter(|x| x.1).map(|x| x.0.as_str()).collect();
        assert_eq!(trained, ["Hello!<|im_end|>\n", "Bye.<|im_end|>\n"]);
        let all: String = s.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(all, t.render(&msgs, false).unwrap());
        assert!(s[0].0.ends_with("<|im_start|>assistant\n") && !s[0].1);
    }

    #[test]
    fn unusable_chats_are_explained() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        assert!(chat_segments(&t, &[]).unwrap_err().contains("empty"));
        let e = chat_segments(&t, &[ChatMessage::new("user", "Hi")]).unwrap_err();
        assert!(e.contains("no assistant"), "{e}");
        // A template that drops earlier turns is not incremental.
        let last_only = ChatTemplate::new(
            "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}",
            "",
            "",
        )
        .unwrap();
        let e = chat_segments(
            &last_only,
            &[
                ChatMessage::new("user", "Hi"),
                ChatMessage::new("assistant", "Yo"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("continuation"), "{e}");
    }
}
