//! Incremental detokenization that only ever emits complete UTF-8.

use crate::Tokenizer;

/// Turns a stream of token ids into text, holding back bytes of a UTF-8 character until the
/// token that completes it arrives. Control tokens are not rendered unless asked for
/// ([`StreamDecoder::with_special`]). Concatenating every `push` and the final `finish` gives
/// the same text as [`Tokenizer::decode`] for vocabularies without llama.cpp's `clean_spaces`
/// post-processing (SmolLM2, Llama 3, Qwen2, SentencePiece models).
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    render_special: bool,
    first: bool,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that hides control tokens.
    pub fn new(tok: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder::with_special(tok, false)
    }

    /// A decoder that renders control tokens' text when `render_special`.
    pub fn with_special(tok: &'a Tokenizer, render_special: bool) -> StreamDecoder<'a> {
        StreamDecoder {
            tok,
            pending: Vec::new(),
            render_special,
            first: true,
        }
    }

    /// Adds one token; returns the text completed so far and not yet returned (maybe empty).
    pub fn push(&mut self, id: u32) -> String {
        let mut piece = self.tok.piece(id, self.render_special);
        if self.first {
            // SentencePiece's added space prefix, removed as llama_detokenize does
            if self.tok.add_space_prefix {
                if let [b' ', rest @ ..] = piece {
                    piece = rest;
                }
            }
            self.first = false;
        }
        self.pending.extend_from_slice(piece);
        self.take_complete()
    }

    /// Returns whatever is held back, with incomplete sequences replaced by U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked by from_utf8"));
                    match e.error_len() {
                        // an incomplete sequence at the end: wait for more bytes
                        None => {
                            rest = after;
                            break;
                        }
                        // invalid bytes can never become valid: replace them now
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }
}
