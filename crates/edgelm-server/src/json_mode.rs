//! `response_format: {"type": "json_object"}`: a byte-level state machine that accepts exactly
//! the prefixes of JSON texts whose top-level value is an object, and the token mask built on
//! it. Before each token is sampled, every token whose bytes would take the output out of the
//! language is masked, and so is every token that would leave more characters to close the
//! value than tokens remain (each closing character is a single-byte token, so the output can
//! always be finished within `max_tokens`). Once the object is closed, only end-of-generation
//! tokens remain allowed.
//!
//! Whitespace between tokens is allowed in runs of at most [`MAX_WS_RUN`] bytes, and none
//! before the opening brace, so a model cannot stall in blank space.

/// Longest run of whitespace bytes allowed between JSON tokens.
pub const MAX_WS_RUN: u8 = 16;
/// Deepest nesting allowed.
pub const MAX_DEPTH: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    /// After `-`: a digit must follow.
    Minus,
    /// A leading `0`.
    Zero,
    /// Integer digits.
    Int,
    /// After `.`: a digit must follow.
    Dot,
    /// Fraction digits.
    Frac,
    /// After `e`/`E`: a sign or digit must follow.
    Exp,
    /// After the exponent's sign: a digit must follow.
    ExpSign,
    /// Exponent digits.
    ExpDigits,
}

impl Num {
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing yet: only `{`.
    Start,
    /// A value must come (after `:` or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// Inside a string; `escape` counts what an escape still needs (1 after `\`, 4..1 in
    /// `\uXXXX`).
    Str { key: bool, escape: u8 },
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the container's closer.
    AfterValue,
    /// Inside a number.
    Number(Num),
    /// Inside `true`, `false` or `null`: `rest` is what is left to type.
    Literal { rest: &'static [u8] },
    /// The top-level object is closed.
    Done,
}

/// Where the output stands in the JSON grammar. `Copy`, so a candidate token is tried on a
/// copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonState {
    /// Bit `i` set: open container `i` is an object (else an array).
    stack: u64,
    depth: u8,
    ws_run: u8,
    mode: Mode,
}

impl Default for JsonState {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonState {
    /// Before the first byte.
    pub fn new() -> Self {
        JsonState {
            stack: 0,
            depth: 0,
            ws_run: 0,
            mode: Mode::Start,
        }
    }

    /// Whether the output so far is one complete JSON object.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && self.stack & (1 << (self.depth - 1)) != 0
    }

    fn push(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = if object {
            Mode::ObjectFirst
        } else {
            Mode::ArrayFirst
        };
        true
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.top_is_object() != object {
            return false;
        }
        self.depth -= 1;
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::AfterValue
        };
        true
    }

    /// A value begins with `b`.
    fn value(&mut self, b: u8) -> bool {
        match b {
            b'{' => self.push(true),
            b'[' => self.push(false),
            b'"' => {
                self.mode = Mode::Str {
                    key: false,
                    escape: 0,
                };
                true
            }
            b'-' => {
                self.mode = Mode::Number(Num::Minus);
                true
            }
            b'0' => {
                self.mode = Mode::Number(Num::Zero);
                true
            }
            b'1'..=b'9' => {
                self.mode = Mode::Number(Num::Int);
                true
            }
            b't' => {
                self.mode = Mode::Literal { rest: b"rue" };
                true
            }
            b'f' => {
                self.mode = Mode::Literal { rest: b"alse" };
                true
            }
            b'n' => {
                self.mode = Mode::Literal { rest: b"ull" };
                true
            }
            _ => false,
        }
    }

    fn after_value(&mut self, b: u8) -> bool {
        match b {
            b',' => {
                self.mode = if self.top_is_object() {
                    Mode::Key
                } else {
                    Mode::Value
                };
                true
            }
            b'}' => self.close(true),
            b']' => self.close(false),
            _ => false,
        }
    }

    /// Feeds one byte; `false` (state unspecified) when the output would stop being a JSON
    /// prefix.
    pub fn step(&mut self, b: u8) -> bool {
        let ws_ok = matches!(
            self.mode,
            Mode::Value
                | Mode::ArrayFirst
                | Mode::ObjectFirst
                | Mode::Key
                | Mode::Colon
                | Mode::AfterValue
        );
        if ws_ok && is_ws(b) {
            self.ws_run += 1;
            return self.ws_run <= MAX_WS_RUN;
        }
        self.ws_run = 0;
        match self.mode {
            Mode::Start => b == b'{' && self.push(true),
            Mode::Done => false,
            Mode::Value => self.value(b),
            Mode::ArrayFirst => b == b']' && self.close(false) || b != b']' && self.value(b),
            Mode::ObjectFirst | Mode::Key => {
                if b == b'"' {
                    self.mode = Mode::Str {
                        key: true,
                        escape: 0,
                    };
                    true
                } else {
                    self.mode == Mode::ObjectFirst && b == b'}' && self.close(true)
                }
            }
            Mode::Colon => {
                if b == b':' {
                    self.mode = Mode::Value;
                    true
                } else {
                    false
                }
            }
            Mode::AfterValue => self.after_value(b),
            Mode::Str { key, escape } => match escape {
                0 => match b {
                    b'"' => {
                        self.mode = if key { Mode::Colon } else { Mode::AfterValue };
                        true
                    }
                    b'\\' => {
                        self.mode = Mode::Str { key, escape: 5 };
                        true
                    }
                    0..=0x1f => false,
                    _ => true,
                },
                // Just after the backslash.
                5 => {
                    let next = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 0,
                        b'u' => 4,
                        _ => return false,
                    };
                    self.mode = Mode::Str { key, escape: next };
                    true
                }
                n => {
                    if b.is_ascii_hexdigit() {
                        self.mode = Mode::Str { key, escape: n - 1 };
                        true
                    } else {
                        false
                    }
                }
            },
            Mode::Number(n) => {
                let next = match (n, b) {
                    (Num::Minus, b'0') => Some(Num::Zero),
                    (Num::Minus, b'1'..=b'9') => Some(Num::Int),
                    (Num::Int, b'0'..=b'9') => Some(Num::Int),
                    (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
                    (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
                    (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Some(Num::ExpDigits),
                    _ => None,
                };
                match next {
                    Some(n) => {
                        self.mode = Mode::Number(n);
                        true
                    }
                    None if n.can_end() => {
                        // The number ended; `b` belongs to what follows it.
                        self.mode = Mode::AfterValue;
                        self.step(b)
                    }
                    None => false,
                }
            }
            Mode::Literal { rest } => {
                if rest.first() == Some(&b) {
                    self.mode = if rest.len() == 1 {
                        Mode::AfterValue
                    } else {
                        Mode::Literal { rest: &rest[1..] }
                    };
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Feeds `bytes`; `false` when any of them is rejected.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(b))
    }

    /// The fewest bytes that complete the object from here (each a one-byte token).
    pub fn min_completion(&self) -> usize {
        let extra = match self.mode {
            Mode::Start => 2,
            Mode::Done => return 0,
            Mode::Value => 1,
            Mode::ArrayFirst | Mode::ObjectFirst | Mode::AfterValue => 0,
            Mode::Key => 4,
            Mode::Colon => 2,
            Mode::Str { key, escape } => {
                let esc = if escape == 5 { 1 } else { escape as usize };
                esc + if key { 3 } else { 1 }
            }
            Mode::Number(n) => usize::from(!n.can_end()),
            Mode::Literal { rest } => rest.len(),
        };
        extra + self.depth as usize
    }
}

/// Per-model data for masking: each token's bytes, or `None` for tokens never allowed in JSON
/// output (control tokens, empty pieces); end-of-generation tokens are listed apart.
#[derive(Debug)]
pub struct JsonVocab {
    pieces: Vec<Option<Vec<u8>>>,
    eog: Vec<bool>,
}

impl JsonVocab {
    /// From the tokenizer.
    pub fn new(tok: &edgelm_tokenizer::Tokenizer) -> Self {
        let n = tok.n_vocab();
        let mut pieces = Vec::with_capacity(n);
        let mut eog = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let is_eog = tok.is_eog(id);
            eog.push(is_eog);
            let piece = tok.token_to_piece(id);
            pieces.push(
                (!is_eog && !tok.is_control(id) && !piece.is_empty()).then(|| piece.to_vec()),
            );
        }
        JsonVocab { pieces, eog }
    }

    /// Sets the logits of every disallowed token to −∞: a token is allowed when its bytes
    /// keep the output a JSON prefix that `tokens_left` more tokens (after it) can complete;
    /// end-of-generation tokens only once the object is complete. Returns how many tokens are
    /// allowed.
    pub fn mask(&self, state: &JsonState, tokens_left: usize, logits: &mut [f32]) -> usize {
        let mut n_allowed = 0;
        let complete = state.is_complete();
        for (id, l) in logits.iter_mut().enumerate() {
            let ok = if self.eog.get(id).copied().unwrap_or(false) {
                complete
            } else if complete {
                false
            } else {
                match self.pieces.get(id) {
                    Some(Some(piece)) => {
                        let mut s = *state;
                        s.feed(piece) && s.min_completion() <= tokens_left
                    }
                    _ => false,
                }
            };
            if ok {
                n_allowed += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        n_allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accepts(s: &str) -> Option<JsonState> {
        let mut st = JsonState::new();
        st.feed(s.as_bytes()).then_some(st)
    }

    #[test]
    fn complete_objects_are_accepted() {
        for s in [
            "{}",
            r#"{"a":1}"#,
            r#"{ "a" : [1, -2.5e+3, 0, true, false, null, "x\"\u00e9\n"], "b": {"c": {}} }"#,
            r#"{"k":"ünïcödé"}"#,
            r#"{"a":[[],[{}]]}"#,
        ] {
            let st = accepts(s).unwrap_or_else(|| panic!("rejected {s}"));
            assert!(st.is_complete(), "{s}");
            assert_eq!(st.min_completion(), 0);
            serde_json::from_str::<serde_json::Value>(s).expect("really JSON");
        }
    }

    #[test]
    fn invalid_text_is_rejected() {
        for s in [
            " {}",
            "[]",
            "\"x\"",
            "{}}",
            "{} ",
            "{a}",
            r#"{"a" 1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}x"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\n\"}",
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
        ] {
            assert!(accepts(s).is_none(), "accepted {s:?}");
        }
    }

    #[test]
    fn min_completion_is_exact_for_a_few_prefixes() {
        for (prefix, completion) in [
            ("", "{}"),
            ("{", "}"),
            (r#"{"a"#, r#"":0}"#),
            (r#"{"a":"#, "0}"),
            (r#"{"a":[1,"#, "0]}"),
            (r#"{"a":"x\u00"#, r#"00"}"#),
            (r#"{"a":1e"#, "0}"),
            (r#"{"a":nu"#, "ll}"),
            (r#"{"a":1,"#, r#""":0}"#),
        ] {
            let st = accepts(prefix).unwrap();
            assert_eq!(st.min_completion(), completion.len(), "{prefix}");
            let mut done = st;
            assert!(
                done.feed(completion.as_bytes()) && done.is_complete(),
                "{prefix}{completion}"
            );
        }
    }

    #[test]
    fn whitespace_runs_are_bounded() {
        let mut st = accepts("{").unwrap();
        assert!(st.feed(&[b' '; MAX_WS_RUN as usize]));
        let mut more = st;
        assert!(!more.step(b' '));
        assert!(st.feed(b"}"));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            (-1e6f64..1e6).prop_map(|f| serde_json::json!(f)),
            ".{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Every prefix of a serialized object is accepted, the whole is complete, and the
        /// completion bound never exceeds what the real text still needed.
        #[test]
        fn serialized_objects_and_their_prefixes(
            m in prop::collection::btree_map(".{0,6}", json_value(), 0..4),
            pretty in any::<bool>(),
        ) {
            let v = serde_json::Value::Object(m.into_iter().collect());
            let s = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
            let mut st = JsonState::new();
            for (i, &b) in s.as_bytes().iter().enumerate() {
                prop_assert!(st.step(b), "rejected byte {i} of {s}");
                prop_assert!(st.min_completion() < s.len() - i);
            }
            prop_assert!(st.is_complete());
        }

        /// Whatever bytes are fed, a state that says complete holds a valid JSON object.
        #[test]
        fn accepted_complete_text_is_json(bytes in prop::collection::vec(
            prop::sample::select(b"{}[]\":,0123456789.eE+-tfrulsna\\ \nx".to_vec()), 0..40)) {
            let mut st = JsonState::new();
            let mut n = 0;
            for &b in &bytes {
                if !st.step(b) { break; }
                n += 1;
            }
            if st.is_complete() {
                let text = std::str::from_utf8(&bytes[..n]).unwrap();
                prop_assert!(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_ok(), "{text}");
            }
        }
    }
}
