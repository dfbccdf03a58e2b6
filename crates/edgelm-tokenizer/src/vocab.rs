//! The vocabulary and the encoder/decoder, following llama.cpp's `src/llama-vocab.cpp`
//! (`llama_vocab::impl::load`, `tokenize`, `token_to_piece`, `detokenize`).

use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::pretokenize::{self, PreTokenizer};
use crate::unicode::{byte_to_char_table, c_isspace, char_to_byte};
use crate::TokenizerError;

/// Token attributes (llama.cpp's `llama_token_attr` bits).
pub(crate) mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// Special token ids as stored in the metadata (`None`: key absent).
#[derive(Debug, Clone, Default)]
pub struct SpecialIds {
    /// `tokenizer.ggml.bos_token_id`
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`
    pub eot: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`
    pub eom: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`
    pub unk: Option<u32>,
    /// `tokenizer.ggml.seperator_token_id` (sic)
    pub sep: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`
    pub pad: Option<u32>,
    /// `tokenizer.ggml.mask_token_id`
    pub mask: Option<u32>,
    /// `tokenizer.ggml.fim_pre_token_id` (or the deprecated `prefix_token_id`)
    pub fim_pre: Option<u32>,
    /// `tokenizer.ggml.fim_suf_token_id` (or `suffix_token_id`)
    pub fim_suf: Option<u32>,
    /// `tokenizer.ggml.fim_mid_token_id` (or `middle_token_id`)
    pub fim_mid: Option<u32>,
    /// `tokenizer.ggml.fim_pad_token_id`
    pub fim_pad: Option<u32>,
    /// `tokenizer.ggml.fim_rep_token_id`
    pub fim_rep: Option<u32>,
    /// `tokenizer.ggml.fim_sep_token_id`
    pub fim_sep: Option<u32>,
}

/// Everything the tokenizer reads from a model's metadata, as plain data. [`crate::Tokenizer::from_gguf`]
/// fills it from GGUF keys; tests and other formats can build one directly.
#[derive(Debug, Clone, Default)]
pub struct VocabData {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre` (BPE pre-tokenizer name).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece piece scores).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` ("left right" strings; rank = index).
    pub merges: Vec<String>,
    /// Special token ids from the metadata.
    pub special: SpecialIds,
    /// `tokenizer.ggml.add_bos_token`
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`
    pub add_space_prefix: Option<bool>,
    /// `general.name` (llama.cpp keys a few per-token attributes on it).
    pub model_name: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct TokenData {
    pub text: String,
    pub score: f32,
    pub attr: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VocabKind {
    Bpe,
    Spm,
}

/// BPE merge table over interned symbols: token ids, then extra ids for merge strings that are
/// not tokens.
#[derive(Debug, Default)]
struct Merges {
    extra_syms: HashMap<String, u32>,
    extra_text: Vec<String>,
    ranks: HashMap<(u32, u32), (u32, u32)>,
}

/// A text tokenizer built from a model's vocabulary: byte-level BPE or SentencePiece, with
/// special tokens, exactly as llama.cpp tokenizes.
#[derive(Debug)]
pub struct Tokenizer {
    pub(crate) kind: VocabKind,
    pub(crate) tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
    merges: Merges,
    pre: Option<PreTokenizer>,
    /// `token_to_piece(id, special = true)` for every id.
    pieces: Vec<Vec<u8>>,
    /// Control, user-defined and unknown tokens, longest text first.
    special_cache: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: HashSet<u32>,
    pub(crate) add_bos: bool,
    add_eos: bool,
    pub(crate) add_space_prefix: bool,
    clean_spaces: bool,
    ignore_merges: bool,
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// A piece of the input: raw text (byte range) or an already-recognised special token.
#[derive(Debug, Clone, Copy)]
enum Fragment {
    Text { start: usize, end: usize },
    Token(u32),
}

impl Tokenizer {
    /// Builds a tokenizer from plain vocabulary data (see [`VocabData`]).
    pub fn from_vocab(data: VocabData) -> Result<Tokenizer, TokenizerError> {
        let kind = match data.model.as_str() {
            "gpt2" => VocabKind::Bpe,
            "llama" => VocabKind::Spm,
            other => {
                return Err(TokenizerError::UnsupportedModel {
                    model: other.to_string(),
                })
            }
        };
        let n_tokens = data.tokens.len();
        if n_tokens == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n_tokens).is_err() {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.tokens".into(),
                message: format!("{n_tokens} tokens do not fit 32-bit ids"),
            });
        }
        if let Some(scores) = &data.scores {
            if scores.len() < n_tokens {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.scores".into(),
                    expected: n_tokens,
                    actual: scores.len(),
                });
            }
        }
        if let Some(types) = &data.token_types {
            if types.len() < n_tokens {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.token_type".into(),
                    expected: n_tokens,
                    actual: types.len(),
                });
            }
        }

        // per-vocab-type defaults (llama_vocab::impl::load)
        let pre = match kind {
            VocabKind::Bpe => {
                Some(PreTokenizer::for_name(data.pre.as_deref()).ok_or_else(|| {
                    TokenizerError::UnsupportedPreTokenizer {
                        pre: data.pre.clone().unwrap_or_default(),
                    }
                })?)
            }
            VocabKind::Spm => None,
        };
        let (mut add_bos, mut add_eos, mut add_space_prefix, clean_spaces, ignore_merges) =
            match &pre {
                Some(p) => (p.add_bos, false, false, p.clean_spaces, p.ignore_merges),
                None => (true, false, true, false, false),
            };
        let (def_bos, def_eos, def_unk) = match kind {
            VocabKind::Bpe => (Some(11), Some(11), None),
            VocabKind::Spm => (Some(1), Some(2), Some(0)),
        };
        if let Some(v) = data.add_space_prefix {
            add_space_prefix = v;
        }

        // tokens
        let mut tokens = Vec::with_capacity(n_tokens);
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n_tokens);
        for (i, text) in data.tokens.into_iter().enumerate() {
            let id = i as u32;
            let text = if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text
            };
            if let Some(&first) = token_to_id.get(&text) {
                return Err(TokenizerError::DuplicateToken {
                    text,
                    first,
                    second: id,
                });
            }
            token_to_id.insert(text.clone(), id);
            let score = data.scores.as_ref().map_or(0.0, |s| s[i]);
            let attr = match data.token_types.as_ref().map(|t| t[i]) {
                None => attr::NORMAL,
                Some(1) => attr::NORMAL,
                Some(2) => attr::UNKNOWN,
                Some(3) => attr::CONTROL,
                Some(4) => attr::USER_DEFINED,
                Some(5) => attr::UNUSED,
                Some(6) => attr::BYTE,
                Some(_) => 0,
            };
            tokens.push(TokenData { text, score, attr });
        }

        // merges
        let mut merges = Merges::default();
        if kind == VocabKind::Bpe {
            for (rank, merge) in data.merges.iter().enumerate() {
                // `word.find(' ', 1)`: the first space at byte 1 or later
                let Some(pos) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                    continue;
                };
                let (first, second) = (&merge[..pos], &merge[pos + 1..]);
                if first.is_empty() || second.is_empty() {
                    continue;
                }
                let l = merges.intern(&token_to_id, first);
                let r = merges.intern(&token_to_id, second);
                let joined = format!("{first}{second}");
                let m = merges.intern(&token_to_id, &joined);
                merges.ranks.entry((l, r)).or_insert((rank as u32, m));
            }
        }

        // special ids: defaults (dropped when out of range), then metadata (ignored when out of range)
        let n = n_tokens as u32;
        let pick = |default: Option<u32>, meta: Option<u32>| -> Option<u32> {
            let default = default.filter(|&d| d < n);
            match meta {
                Some(m) if m < n => Some(m),
                _ => default,
            }
        };
        let s = &data.special;
        let bos = pick(def_bos, s.bos);
        let eos = pick(def_eos, s.eos);
        let mut eot = pick(None, s.eot);
        let mut eom = pick(None, s.eom);
        let _unk = pick(def_unk, s.unk);
        let mut fim_pre = pick(None, s.fim_pre);
        let mut fim_suf = pick(None, s.fim_suf);
        let mut fim_mid = pick(None, s.fim_mid);
        let mut fim_pad = pick(None, s.fim_pad);
        let mut fim_rep = pick(None, s.fim_rep);
        let mut fim_sep = pick(None, s.fim_sep);
        if let Some(v) = data.add_bos {
            add_bos = v;
        }
        if let Some(v) = data.add_eos {
            add_eos = v;
        }

        // auto-detect special tokens by text. llama.cpp walks an `unordered_map`, so when several
        // tokens match, its pick follows libstdc++'s hash order. For EOT we take the candidate
        // listed first in EOT_TEXTS (what llama.cpp picks for Llama 3, Qwen2 and Phi-3; for
        // SmolLM2 it picks `<|endoftext|>` where we pick `<|im_end|>`, both end generation);
        // for the others, the lowest matching id.
        if eot.is_none() {
            let best = EOT_TEXTS.iter().find_map(|t| token_to_id.get(*t).copied());
            if let Some(id) = best {
                eot = Some(id);
                tokens[id as usize].attr |= attr::CONTROL;
            }
        }
        for id in 0..n {
            let t = &mut tokens[id as usize];
            let mut detect = |slot: &mut Option<u32>, texts: &[&str]| {
                if slot.is_none() && texts.contains(&t.text.as_str()) {
                    *slot = Some(id);
                    t.attr |= attr::CONTROL;
                }
            };
            detect(&mut eom, &["<|eom_id|>"]);
            detect(&mut fim_pre, FIM_PRE_TEXTS);
            detect(&mut fim_suf, FIM_SUF_TEXTS);
            detect(&mut fim_mid, FIM_MID_TEXTS);
            detect(&mut fim_pad, FIM_PAD_TEXTS);
            detect(&mut fim_rep, FIM_REP_TEXTS);
            detect(&mut fim_sep, FIM_SEP_TEXTS);
        }
        let _ = (fim_pre, fim_suf, fim_mid);
        for t in tokens.iter_mut() {
            if t.attr & attr::CONTROL != 0
                && t.attr & attr::UNUSED == 0
                && t.text.contains("unused")
            {
                t.attr |= attr::UNUSED;
            }
        }

        // end-of-generation set
        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for (id, t) in tokens.iter_mut().enumerate() {
            if EOG_TEXTS.contains(&t.text.as_str()) {
                eog.insert(id as u32);
                t.attr |= attr::CONTROL;
            }
        }
        for t in tokens.iter_mut() {
            if matches!(
                t.text.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                t.attr = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        {
            let text_of = |id: u32| tokens[id as usize].text.as_str();
            let has = |s: &str| eog.iter().any(|&id| text_of(id) == s);
            let end_id = eog.iter().copied().find(|&id| text_of(id) == "<|end|>");
            let has_call = has("<|call|>") || has("<|calls|>");
            if let Some(end_id) = end_id {
                if has_call && (has("<|return|>") || has("<|flush|>")) {
                    eog.remove(&end_id);
                    tokens[end_id as usize].attr = attr::USER_DEFINED;
                }
            }
        }
        {
            let text_of = |id: u32| tokens[id as usize].text.as_str();
            let marker = eog
                .iter()
                .any(|&id| matches!(text_of(id), "<|tool_response>" | "<|plamo:eos|>"));
            let s_id = eog.iter().copied().find(|&id| text_of(id) == "</s>");
            if let (true, Some(s_id)) = (marker, s_id) {
                eog.remove(&s_id);
                tokens[s_id as usize].attr = attr::NORMAL;
            }
        }

        let mut special_cache: Vec<u32> = (0..n)
            .filter(|&id| {
                tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_cache.sort_by(|&a, &b| {
            tokens[b as usize]
                .text
                .len()
                .cmp(&tokens[a as usize].text.len())
        });

        let mut tok = Tokenizer {
            kind,
            tokens,
            token_to_id,
            merges,
            pre,
            pieces: Vec::new(),
            special_cache,
            bos,
            eos,
            eot,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            ignore_merges,
        };
        tok.pieces = (0..n).map(|id| tok.compute_piece(id)).collect();

        // per-token attributes keyed on the model name (after the piece cache, as in llama.cpp)
        let name = data.model_name.unwrap_or_default().to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &tok.special_cache {
                tok.tokens[id as usize].attr |= attr::RSTRIP;
            }
            for (text, on) in [
                ("</s>", true),
                ("<unk>", false),
                ("<s>", false),
                ("<|endoftext|>", false),
            ] {
                if let Some(&id) = tok.token_to_id.get(text) {
                    let a = &mut tok.tokens[id as usize].attr;
                    *a = if on {
                        *a | attr::RSTRIP
                    } else {
                        *a & !attr::RSTRIP
                    };
                }
            }
        }
        Ok(tok)
    }

    /// `token_to_piece(id, special = true)` as llama.cpp computes it for its piece cache.
    fn compute_piece(&self, id: u32) -> Vec<u8> {
        let t = &self.tokens[id as usize];
        if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return t.text.as_bytes().to_vec();
        }
        if t.attr & attr::NORMAL != 0 {
            return match self.kind {
                VocabKind::Spm => t.text.replace('\u{2581}', " ").into_bytes(),
                VocabKind::Bpe => {
                    let mut out = Vec::with_capacity(t.text.len());
                    for c in t.text.chars() {
                        match char_to_byte(c) {
                            Some(b) => out.push(b),
                            None => {
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                let mut buf = [0u8; 4];
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                out.extend_from_slice(t.text.as_bytes());
                                out.push(b']');
                            }
                        }
                    }
                    out
                }
            };
        }
        if t.attr & attr::BYTE != 0 {
            return vec![byte_of_byte_token(&t.text)];
        }
        Vec::new()
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (from metadata, else detected by text as llama.cpp does).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether generation should stop at `id` (llama.cpp's end-of-generation set).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eog.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The token's vocabulary text (as stored, e.g. `Ġthe` or `▁the`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Whether the token is a control (or unknown) token, which decoding hides unless asked.
    pub fn is_control(&self, id: u32) -> bool {
        self.tokens
            .get(id as usize)
            .is_some_and(|t| t.attr & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    /// The bytes the token stands for; control tokens render their text. Empty for unknown ids.
    pub fn token_to_piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The bytes the token stands for; control/unknown tokens are empty unless `render_special`.
    pub fn piece(&self, id: u32, render_special: bool) -> &[u8] {
        if !render_special && self.is_control(id) {
            return &[];
        }
        self.token_to_piece(id)
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the model's metadata asks; `parse_special`
    /// turns control-token text (e.g. `<|im_start|>`) into those tokens (user-defined tokens are
    /// always matched, as in llama.cpp).
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.push(
                self.bos
                    .ok_or(TokenizerError::MissingSpecialToken { which: "BOS" })?,
            );
        }
        match self.kind {
            VocabKind::Spm => {
                let mut is_prev_special = true;
                let mut buf = String::new();
                for frag in fragments {
                    match frag {
                        Fragment::Text { start, end } => {
                            buf.clear();
                            if self.add_space_prefix && is_prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[start..end].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            self.spm_tokenize(&buf, &mut out)?;
                            is_prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            is_prev_special = true;
                        }
                    }
                }
            }
            VocabKind::Bpe => {
                let mut scratch = BpeScratch::default();
                for frag in fragments {
                    match frag {
                        Fragment::Text { start, end } => {
                            self.bpe_tokenize(&text[start..end], &mut out, &mut scratch)
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(
                self.eos
                    .ok_or(TokenizerError::MissingSpecialToken { which: "EOS" })?,
            );
        }
        Ok(out)
    }

    /// `tokenizer_st_partition`: split out special tokens, longest first.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text {
            start: 0,
            end: text.len(),
        });
        let bytes = text.as_bytes();
        for &id in &self.special_cache {
            let t = &self.tokens[id as usize];
            if !parse_special && t.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = t.text.as_str();
            if !frags.iter().any(|f| matches!(f, Fragment::Text { start, end } if text[*start..*end].contains(needle))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text { start, end } = frag else {
                    next.push(frag);
                    continue;
                };
                let mut base = start;
                loop {
                    let Some(rel) = text[base..end].find(needle) else {
                        if base < end {
                            next.push(Fragment::Text { start: base, end });
                        }
                        break;
                    };
                    let m = base + rel;
                    if m > base {
                        let mut left_end = m;
                        if t.attr & attr::LSTRIP != 0 {
                            while left_end > base && c_isspace(bytes[left_end - 1]) {
                                left_end -= 1;
                            }
                        }
                        if left_end > base {
                            next.push(Fragment::Text {
                                start: base,
                                end: left_end,
                            });
                        }
                    }
                    next.push(Fragment::Token(id));
                    let mut right = m + needle.len();
                    if right >= end {
                        break;
                    }
                    if t.attr & attr::RSTRIP != 0 {
                        while right < end && c_isspace(bytes[right]) {
                            right += 1;
                        }
                    }
                    base = right;
                    if base >= end {
                        break;
                    }
                }
            }
            frags = next;
        }
        frags
    }

    /// `llm_tokenizer_bpe_session::tokenize` for one raw fragment.
    fn bpe_tokenize(&self, text: &str, out: &mut Vec<u32>, s: &mut BpeScratch) {
        let pre = self
            .pre
            .as_ref()
            .expect("BPE vocabularies always have a pre-tokenizer");
        s.cpts.clear();
        s.cpts.extend(text.chars().map(u32::from));
        let lens = pretokenize::split(&s.cpts, &pre.splitters);
        let byte_chars = byte_to_char_table();
        let mut start = 0;
        for len in lens {
            // byte-encode the word (GPT-2 mapping of its UTF-8 bytes)
            s.word.clear();
            for &cpt in &s.cpts[start..start + len] {
                let c = char::from_u32(cpt).expect("code points come from a str");
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    s.word.push(byte_chars[b as usize]);
                }
            }
            start += len;
            self.bpe_word(out, s);
        }
    }

    fn sym_id(&self, text: &str) -> Option<u32> {
        self.token_to_id
            .get(text)
            .or_else(|| self.merges.extra_syms.get(text))
            .copied()
    }

    fn sym_text<'a>(&'a self, sym: u32, word: &'a str, start: usize, len: usize) -> &'a str {
        let n = self.tokens.len() as u32;
        if sym == RAW {
            &word[start..start + len]
        } else if sym < n {
            &self.tokens[sym as usize].text
        } else {
            &self.merges.extra_text[(sym - n) as usize]
        }
    }

    fn bpe_word(&self, out: &mut Vec<u32>, s: &mut BpeScratch) {
        let word = s.word.as_str();
        if self.ignore_merges {
            if let Some(&id) = self.token_to_id.get(word) {
                out.push(id);
                return;
            }
        }
        let syms = &mut s.syms;
        syms.clear();
        for (i, (off, c)) in word.char_indices().enumerate() {
            let len = c.len_utf8();
            let id = self.sym_id(&word[off..off + len]).unwrap_or(RAW);
            syms.push(Symbol {
                prev: i as i32 - 1,
                next: i as i32 + 1,
                start: off,
                len,
                sym: id,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = -1;
        }
        let heap = &mut s.heap;
        heap.clear();
        let rank_of = |l: u32, r: u32| -> Option<(u32, u32)> {
            if l == RAW || r == RAW {
                return None;
            }
            self.merges.ranks.get(&(l, r)).copied()
        };
        for i in 1..syms.len() {
            if let Some((rank, _)) = rank_of(syms[i - 1].sym, syms[i].sym) {
                heap.push(std::cmp::Reverse((
                    rank,
                    i - 1,
                    i,
                    syms[i - 1].sym,
                    syms[i].sym,
                )));
            }
        }
        while let Some(std::cmp::Reverse((_, left, right, lsym, rsym))) = heap.pop() {
            let (l, r) = (syms[left], syms[right]);
            if l.len == 0 || r.len == 0 || l.sym != lsym || r.sym != rsym {
                continue; // outdated
            }
            let merged = rank_of(lsym, rsym).expect("queued pairs have a merge").1;
            syms[left].len += r.len;
            syms[left].sym = merged;
            syms[right].len = 0;
            syms[left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = left as i32;
            }
            let l = syms[left];
            if l.prev >= 0 {
                let p = l.prev as usize;
                if let Some((rank, _)) = rank_of(syms[p].sym, l.sym) {
                    heap.push(std::cmp::Reverse((rank, p, left, syms[p].sym, l.sym)));
                }
            }
            if l.next >= 0 {
                let nx = l.next as usize;
                if let Some((rank, _)) = rank_of(l.sym, syms[nx].sym) {
                    heap.push(std::cmp::Reverse((rank, left, nx, l.sym, syms[nx].sym)));
                }
            }
        }
        let n = self.tokens.len() as u32;
        for sym in syms.iter().filter(|s| s.len > 0) {
            if sym.sym < n {
                out.push(sym.sym);
                continue;
            }
            // not a token: each byte of the (byte-encoded) text as a one-byte token, if any
            let text = self.sym_text(sym.sym, word, sym.start, sym.len);
            for &b in text.as_bytes() {
                if b < 0x80 {
                    let one = [b];
                    let one = std::str::from_utf8(&one).expect("ASCII");
                    if let Some(&id) = self.token_to_id.get(one) {
                        out.push(id);
                    }
                }
            }
        }
    }

    /// `llm_tokenizer_spm_session::tokenize` on whitespace-escaped text.
    fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (off, c)) in text.char_indices().enumerate() {
            syms.push(Symbol {
                prev: i as i32 - 1,
                next: i as i32 + 1,
                start: off,
                len: c.len_utf8(),
                sym: 0,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = -1;
        }
        let mut heap: BinaryHeap<SpmBigram> = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<SpmBigram>, syms: &[Symbol], left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (syms[left as usize], syms[right as usize]);
            let piece = &text[l.start..l.start + l.len + r.len];
            if let Some(&id) = self.token_to_id.get(piece) {
                heap.push(SpmBigram {
                    score: self.tokens[id as usize].score,
                    left: left as usize,
                    right: right as usize,
                    size: piece.len(),
                });
            }
        };
        for i in 1..syms.len() as i32 {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(bigram) = heap.pop() {
            let (l, r) = (syms[bigram.left], syms[bigram.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
                continue;
            }
            syms[bigram.left].len += r.len;
            syms[bigram.right].len = 0;
            syms[bigram.left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = bigram.left as i32;
            }
            let l = syms[bigram.left];
            try_add(&mut heap, &syms, l.prev, bigram.left as i32);
            try_add(&mut heap, &syms, bigram.left as i32, l.next);
        }
        // Resegment: merged symbols are always tokens (a bigram is only queued when its text is a
        // token), so llama.cpp's rev_merge lookup can only fire for single characters, which it
        // never holds; what is left is byte fallback.
        let mut i = if syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = syms[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        out.push(self.byte_to_token(b)?);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    /// `llama_vocab::byte_to_token` for SentencePiece: `<0xXX>`, else the byte itself.
    fn byte_to_token(&self, b: u8) -> Result<u32, TokenizerError> {
        let hex = format!("<0x{b:02X}>");
        if let Some(&id) = self.token_to_id.get(&hex) {
            return Ok(id);
        }
        std::str::from_utf8(&[b])
            .ok()
            .and_then(|s| self.token_to_id.get(s).copied())
            .ok_or(TokenizerError::MissingByteToken { byte: b })
    }

    /// Detokenizes as llama.cpp's `llama_detokenize(remove_special = skip_special,
    /// unparse_special = !skip_special)`: pieces concatenated, SentencePiece's leading space
    /// removed, llama.cpp's `clean_spaces` rules applied where the vocabulary asks; invalid
    /// UTF-8 is replaced only at the end.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    /// [`Tokenizer::decode`] without the final UTF-8 conversion.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if skip_special && self.add_bos && ids.first().is_some_and(|&id| Some(id) == self.bos) {
            remove_space = false;
            ids = &ids[1..];
        }
        if skip_special && self.add_eos && ids.last().is_some_and(|&id| Some(id) == self.eos) {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let mut piece = self.piece(id, !skip_special);
            if remove_space {
                if let [b' ', rest @ ..] = piece {
                    piece = rest;
                }
            }
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_spaces(&mut text);
        }
        text
    }
}

/// llama.cpp's three `clean_spaces` passes over detokenized text.
fn clean_spaces(text: &mut Vec<u8>) {
    // " ?", " !", " .", " ,"
    let mut total = usize::from(!text.is_empty());
    for i in 1..text.len() {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
    // " ' "
    let n = text.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            text[i + 1] = 0;
            i += 1;
            text[total] = x;
            total += 1;
            // llama.cpp's loop increment skips the space it just cleared
            i += 1;
            continue;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    text.truncate(total);
    // " 's", " 'm", " 're", " 've"
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < n {
                let x2 = text[i + 2];
                if x2 == b'e' && (x1 == b'r' || x1 == b'v') {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

/// `token_to_byte`: the two hex digits after `<0x` (lenient, like `strtol`).
fn byte_of_byte_token(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..5).unwrap_or(&[]);
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

const RAW: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Symbol {
    prev: i32,
    next: i32,
    start: usize,
    len: usize,
    sym: u32,
}

/// `(rank, left index, right index, left symbol, right symbol)`: the heap pops the lowest rank,
/// then the leftmost pair, as llama.cpp's `llm_bigram_bpe::comparator` orders them.
type BpeBigram = (u32, usize, usize, u32, u32);

#[derive(Default)]
struct BpeScratch {
    cpts: Vec<u32>,
    word: String,
    syms: Vec<Symbol>,
    heap: BinaryHeap<std::cmp::Reverse<BpeBigram>>,
}

struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SpmBigram {
    /// Highest score first, then leftmost.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl Merges {
    fn intern(&mut self, tokens: &HashMap<String, u32>, text: &str) -> u32 {
        if let Some(&id) = tokens.get(text) {
            return id;
        }
        if let Some(&id) = self.extra_syms.get(text) {
            return id;
        }
        let id = tokens.len() as u32 + self.extra_text.len() as u32;
        self.extra_syms.insert(text.to_string(), id);
        self.extra_text.push(text.to_string());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamDecoder;

    /// A tiny SentencePiece vocabulary; expected ids below are derived by hand from
    /// llama.cpp's algorithm (highest-score bigram first, byte fallback).
    fn spm() -> Tokenizer {
        let pieces: &[(&str, f32, i32)] = &[
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<0x0A>", 0.0, 6),
            ("<0xE2>", 0.0, 6),
            ("<0x82>", 0.0, 6),
            ("<0xAC>", 0.0, 6),
            ("▁", -1.0, 1),
            ("h", -2.0, 1),
            ("e", -2.0, 1),
            ("l", -2.0, 1),
            ("o", -2.0, 1),
            ("▁h", -5.0, 1),
            ("he", -3.0, 1),
            ("ll", -1.0, 1),
            ("hell", -0.5, 1),
            ("▁hell", -4.0, 1),
        ];
        Tokenizer::from_vocab(VocabData {
            model: "llama".into(),
            tokens: pieces.iter().map(|p| p.0.to_string()).collect(),
            scores: Some(pieces.iter().map(|p| p.1).collect()),
            token_types: Some(pieces.iter().map(|p| p.2).collect()),
            ..VocabData::default()
        })
        .unwrap()
    }

    fn check(tok: &Tokenizer, text: &str, add_special: bool, parse_special: bool, expect: &[u32]) {
        assert_eq!(
            tok.encode(text, add_special, parse_special).unwrap(),
            expect,
            "encoding {text:?}"
        );
    }

    #[test]
    fn spm_merges_by_score() {
        let tok = spm();
        // ▁ h e l l o: ll(-1) → he(-3) → hell(-0.5) → ▁hell(-4); "▁hello" is not a piece
        check(&tok, "hello", false, false, &[16, 11]);
        check(&tok, "hello", true, false, &[1, 16, 11]);
        assert_eq!(
            (tok.bos(), tok.eos(), tok.add_bos()),
            (Some(1), Some(2), true)
        );
        assert!(tok.is_eog(2));
    }

    #[test]
    fn spm_byte_fallback_and_specials() {
        let tok = spm();
        // "€" is not a piece: its UTF-8 bytes E2 82 AC
        check(&tok, "h€", false, false, &[12, 4, 5, 6]);
        // after a special token the text gets the space prefix again
        check(&tok, "he</s>lo", true, true, &[1, 7, 13, 2, 7, 10, 11]);
        assert!(matches!(
            tok.encode("x", false, false),
            Err(TokenizerError::MissingByteToken { byte: b'x' })
        ));
    }

    #[test]
    fn spm_decode_and_stream() {
        let tok = spm();
        assert_eq!(tok.decode(&[16, 11], false), "hello");
        assert_eq!(tok.decode(&[1, 16, 11], false), "<s> hello");
        // llama_detokenize keeps the space when it removed a leading BOS
        assert_eq!(tok.decode(&[1, 16, 11], true), " hello");
        assert_eq!(tok.decode(&[12, 4, 5, 6], false), "h€");
        let mut s = StreamDecoder::new(&tok);
        let chunks: Vec<String> = [12, 4, 5, 6].iter().map(|&id| s.push(id)).collect();
        assert_eq!(chunks, ["h", "", "", "€"]);
        assert_eq!(s.finish(), "");
    }

    fn bpe() -> Tokenizer {
        let tokens = [
            "<|endoftext|>",
            "a",
            "b",
            "c",
            "Ġ",
            "ab",
            "Ġab",
            "abc",
            "Ġabc",
            "Ã",
            "©",
        ];
        let mut types = vec![1; tokens.len()];
        types[0] = 3;
        Tokenizer::from_vocab(VocabData {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            token_types: Some(types),
            merges: ["a b", "Ġ ab", "ab c", "Ġab c"]
                .iter()
                .map(|m| m.to_string())
                .collect(),
            ..VocabData::default()
        })
        .unwrap()
    }

    #[test]
    fn bpe_merges_by_rank() {
        let tok = bpe();
        // " abc": (a,b)#0 → (Ġ,ab)#1 → (Ġab,c)#3 ; " ab": (a,b)#0 → (Ġ,ab)#1
        check(&tok, " abc ab", true, false, &[8, 6]);
        check(&tok, "ca", false, false, &[3, 1]);
        check(&tok, "é", false, false, &[9, 10]);
        check(&tok, "<|endoftext|>a", false, true, &[0, 1]);
        assert_eq!(tok.token_to_piece(8), b" abc");
        assert_eq!(tok.token_to_piece(9), &[0xC3]);
        assert_eq!(
            (tok.eot(), tok.is_eog(0), tok.add_bos()),
            (Some(0), true, false)
        );
    }

    #[test]
    fn bpe_stream_holds_partial_characters() {
        let tok = bpe();
        let mut s = StreamDecoder::new(&tok);
        assert_eq!(s.push(9), "");
        assert_eq!(s.push(10), "é");
        assert_eq!(s.push(0), "", "control tokens are hidden");
        assert_eq!(s.push(9), "");
        assert_eq!(s.finish(), "\u{FFFD}");
        assert_eq!(tok.decode(&[8, 0, 9, 10], true), " abcé");
        assert_eq!(tok.decode(&[8, 0, 9, 10], false), " abc<|endoftext|>é");
    }

    #[test]
    fn clean_spaces_rules() {
        let mut t = b"Hello , world ! it 's he ' s we 're".to_vec();
        clean_spaces(&mut t);
        assert_eq!(
            String::from_utf8(t).unwrap(),
            "Hello, world! it's he's we're"
        );
    }

    #[test]
    fn rejects_bad_vocabularies() {
        let base = VocabData {
            model: "gpt2".into(),
            tokens: vec!["a".into()],
            ..VocabData::default()
        };
        assert!(matches!(
            Tokenizer::from_vocab(VocabData {
                model: "t5".into(),
                ..base.clone()
            }),
            Err(TokenizerError::UnsupportedModel { .. })
        ));
        assert!(matches!(
            Tokenizer::from_vocab(VocabData {
                pre: Some("nope".into()),
                ..base.clone()
            }),
            Err(TokenizerError::UnsupportedPreTokenizer { .. })
        ));
        assert!(matches!(
            Tokenizer::from_vocab(VocabData {
                tokens: vec!["a".into(), "a".into()],
                ..base.clone()
            }),
            Err(TokenizerError::DuplicateToken { .. })
        ));
        assert!(matches!(
            Tokenizer::from_vocab(VocabData {
                token_types: Some(vec![]),
                ..base.clone()
            }),
            Err(TokenizerError::LengthMismatch { .. })
        ));
        assert!(matches!(
            Tokenizer::from_vocab(VocabData {
                tokens: vec![],
                ..base
            }),
            Err(TokenizerError::EmptyVocab)
        ));
    }
}
