//! Pre-tokenization (splitting text into words before BPE), as llama.cpp's
//! `unicode_regex_split` does it: a list of splitters applied in turn, each refining the chunks of
//! the previous one. The GPT-2, Llama-3 and Qwen2 patterns use ports of llama.cpp's hand-written
//! matchers (`unicode_regex_split_custom_*`); the simple class patterns llama.cpp runs through
//! `std::regex` on its "collapsed" text are implemented as run splitters with the same classes.

use crate::unicode::{cpt_flags, flag, to_lower};

/// One pattern of a pre-tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Splitter {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// Llama3's pattern with `\p{N}` instead of `\p{N}{1,3}`.
    Qwen2,
    /// `\p{N}`: every number code point on its own.
    Number,
    /// `\p{N}+`
    NumberRun,
    /// `[0-9][0-9][0-9]`
    Digits3,
    /// `[\p{P}\$\+<=>\^~\|]+` (with `` ` `` too when `backtick`)
    PunctRun { backtick: bool },
}

/// Regex sets per `tokenizer.ggml.pre`, with the flags llama.cpp sets for them.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    pub splitters: Vec<Splitter>,
    pub ignore_merges: bool,
    pub clean_spaces: bool,
    /// Whether llama.cpp turns `add_bos` on for this pre-type (metadata can override it).
    pub add_bos: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp picks for `tokenizer.ggml.pre` (`None`/empty: "default").
    pub fn for_name(pre: Option<&str>) -> Option<PreTokenizer> {
        use Splitter::*;
        let make = |splitters: Vec<Splitter>, ignore_merges, clean_spaces, add_bos| PreTokenizer {
            splitters,
            ignore_merges,
            clean_spaces,
            add_bos,
        };
        let default = || vec![PunctRun { backtick: false }, Gpt2, NumberRun, Digits3];
        let starcoder = || vec![Number, Gpt2];
        Some(match pre.unwrap_or("") {
            "" | "default" => make(default(), false, true, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => make(vec![Llama3], true, true, true),
            "dbrx" | "smaug-bpe" => make(vec![Llama3], false, true, false),
            "tekken" => return None, // tekken uses its own pattern
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => {
                make(vec![Qwen2], false, false, false)
            }
            "stablelm2" => make(vec![Qwen2], false, true, false),
            "falcon" => make(
                vec![PunctRun { backtick: true }, Gpt2, Digits3],
                false,
                true,
                false,
            ),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => make(vec![Gpt2], false, true, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "exaone4" | "minerva-7b"
            | "mellum2" => make(starcoder(), false, true, false),
            "smollm" | "command-r" => make(starcoder(), false, false, false),
            _ => return None,
        })
    }
}

/// Splits `cpts` (the text's code points) into words; returns word lengths in code points.
pub(crate) fn split(cpts: &[u32], splitters: &[Splitter]) -> Vec<usize> {
    let mut offsets = if cpts.is_empty() {
        Vec::new()
    } else {
        vec![cpts.len()]
    };
    for &splitter in splitters {
        let mut out = Vec::with_capacity(offsets.len() * 2);
        let mut start = 0;
        for &len in &offsets {
            let chunk = &cpts[start..start + len];
            match splitter {
                Splitter::Gpt2 => split_gpt2(chunk, &mut out),
                Splitter::Llama3 => split_llama3(chunk, &mut out, false),
                Splitter::Qwen2 => split_llama3(chunk, &mut out, true),
                Splitter::Number => split_runs(chunk, &mut out, is_collapsed_number, 1, 1),
                Splitter::NumberRun => {
                    split_runs(chunk, &mut out, is_collapsed_number, 1, usize::MAX)
                }
                Splitter::Digits3 => {
                    split_runs(chunk, &mut out, |c| (0x30..=0x39).contains(&c), 3, 3)
                }
                Splitter::PunctRun { backtick } => {
                    let class =
                        move |c| is_collapsed_punct(c) || (backtick && c == u32::from(b'`'));
                    split_runs(chunk, &mut out, class, 1, usize::MAX)
                }
            }
            start += len;
        }
        offsets = out;
    }
    offsets
}

/// `\p{N}` on llama.cpp's collapsed text: ASCII digits, or a non-whitespace code point whose
/// category is NUMBER.
fn is_collapsed_number(c: u32) -> bool {
    if c < 128 {
        return (0x30..=0x39).contains(&c);
    }
    let f = cpt_flags(c);
    f & flag::WHITESPACE == 0 && f & flag::MASK_CATEGORIES == flag::NUMBER
}

/// `[\p{P}\$\+<=>\^~\|]` on the collapsed text.
fn is_collapsed_punct(c: u32) -> bool {
    if c < 128 {
        return matches!(c as u8,
            b'!'..=b'#' | b'%'..=b'*' | b','..=b'/' | b':'..=b';' | b'?'..=b'@' | b'['..=b']'
            | b'_' | b'{' | b'}' | b'$' | b'+' | b'<'..=b'>' | b'^' | b'~' | b'|');
    }
    let f = cpt_flags(c);
    f & flag::WHITESPACE == 0 && f & flag::MASK_CATEGORIES == flag::PUNCTUATION
}

/// Leftmost matches of `class{min,max}` (greedy), gaps kept as their own chunks: what
/// `unicode_regex_split_stl` does for a single character-class pattern.
fn split_runs(
    chunk: &[u32],
    out: &mut Vec<usize>,
    class: impl Fn(u32) -> bool,
    min: usize,
    max: usize,
) {
    let mut gap_start = 0;
    let mut pos = 0;
    while pos < chunk.len() {
        if !class(chunk[pos]) {
            pos += 1;
            continue;
        }
        let mut end = pos;
        while end < chunk.len() && end - pos < max && class(chunk[end]) {
            end += 1;
        }
        if end - pos < min {
            pos += 1;
            continue;
        }
        if pos > gap_start {
            out.push(pos - gap_start);
        }
        out.push(end - pos);
        pos = end;
        gap_start = end;
    }
    if chunk.len() > gap_start {
        out.push(chunk.len() - gap_start);
    }
}

/// Access to a chunk with llama.cpp's out-of-range conventions.
struct Chunk<'a> {
    cpts: &'a [u32],
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

impl Chunk<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> u32 {
        self.cpts.get(pos).copied().unwrap_or(OUT_OF_RANGE)
    }
    #[inline]
    fn flags(&self, pos: usize) -> u16 {
        self.cpts.get(pos).map_or(0, |&c| cpt_flags(c))
    }
}

#[inline]
fn is_ws(f: u16) -> bool {
    f & flag::WHITESPACE != 0
}
#[inline]
fn is_letter(f: u16) -> bool {
    f & flag::LETTER != 0
}
#[inline]
fn is_number(f: u16) -> bool {
    f & flag::NUMBER != 0
}

/// Emits words of a chunk as they are completed (`_add_token`).
struct Emitter<'o> {
    out: &'o mut Vec<usize>,
    prev_end: usize,
}

impl Emitter<'_> {
    #[inline]
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

/// Port of `unicode_regex_split_custom_gpt2`.
fn split_gpt2(cpts: &[u32], out: &mut Vec<usize>) {
    let c = Chunk { cpts };
    let end = cpts.len();
    let mut em = Emitter { out, prev_end: 0 };
    let mut pos = 0;
    while pos < end {
        let cpt = c.cpt(pos);
        let flags = c.flags(pos);

        if cpt == u32::from(b'\'') && pos + 1 < end {
            let next = c.cpt(pos + 1);
            if [b's', b't', b'm', b'd']
                .iter()
                .any(|&x| next == u32::from(x))
            {
                pos += em.add(pos + 2);
                continue;
            }
            if pos + 2 < end {
                let next2 = c.cpt(pos + 2);
                if is_pair(next, next2) {
                    pos += em.add(pos + 3);
                    continue;
                }
            }
        }

        let mut flags2 = if cpt == u32::from(b' ') {
            c.flags(pos + 1)
        } else {
            flags
        };
        if is_letter(flags2) {
            pos += usize::from(cpt == u32::from(b' '));
            while is_letter(flags2) {
                pos += 1;
                flags2 = c.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if is_number(flags2) {
            pos += usize::from(cpt == u32::from(b' '));
            while is_number(flags2) {
                pos += 1;
                flags2 = c.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if !(is_ws(flags2) || is_letter(flags2) || is_number(flags2)) && flags2 != 0 {
            pos += usize::from(cpt == u32::from(b' '));
            while !(is_ws(flags2) || is_letter(flags2) || is_number(flags2)) && flags2 != 0 {
                pos += 1;
                flags2 = c.flags(pos);
            }
            em.add(pos);
            continue;
        }

        let mut num_ws = 0;
        while is_ws(c.flags(pos + num_ws)) {
            num_ws += 1;
        }
        if num_ws > 1 && c.cpt(pos + num_ws) != OUT_OF_RANGE {
            pos += num_ws - 1;
            em.add(pos);
            continue;
        }
        if num_ws > 0 {
            pos += num_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

#[inline]
fn is_pair(a: u32, b: u32) -> bool {
    let (a, b) = (char::from_u32(a), char::from_u32(b));
    matches!(
        (a, b),
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
    )
}

/// Port of `unicode_regex_split_custom_llama3` (and `_qwen2` when `single_digits`).
fn split_llama3(cpts: &[u32], out: &mut Vec<usize>, single_digits: bool) {
    let c = Chunk { cpts };
    let end = cpts.len();
    let mut em = Emitter { out, prev_end: 0 };
    let mut pos = 0;
    let (cr, lf) = (u32::from(b'\r'), u32::from(b'\n'));
    while pos < end {
        let cpt = c.cpt(pos);
        let flags = c.flags(pos);

        if cpt == u32::from(b'\'') && pos + 1 < end {
            let next = to_lower(c.cpt(pos + 1));
            if [b's', b't', b'm', b'd']
                .iter()
                .any(|&x| next == u32::from(x))
            {
                pos += em.add(pos + 2);
                continue;
            }
            if pos + 2 < end {
                let next2 = to_lower(c.cpt(pos + 2));
                if is_pair(next, next2) {
                    pos += em.add(pos + 3);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(cpt == cr || cpt == lf || is_number(flags))
            && (is_letter(flags) || is_letter(c.flags(pos + 1)))
        {
            pos += 1;
            while is_letter(c.flags(pos)) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        if is_number(flags) {
            if single_digits {
                pos += 1;
                em.add(pos);
            } else {
                let mut ini = pos;
                while is_number(c.flags(pos)) {
                    pos += 1;
                    if pos - ini >= 3 {
                        em.add(pos);
                        ini = pos;
                    }
                }
                em.add(pos);
            }
            continue;
        }

        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        let mut flags2 = if cpt == u32::from(b' ') {
            c.flags(pos + 1)
        } else {
            flags
        };
        if !(is_ws(flags2) || is_letter(flags2) || is_number(flags2)) && flags != 0 {
            pos += usize::from(cpt == u32::from(b' '));
            while !(is_ws(flags2) || is_letter(flags2) || is_number(flags2)) && flags2 != 0 {
                pos += 1;
                flags2 = c.flags(pos);
            }
            let mut cpt2 = c.cpt(pos);
            while cpt2 == cr || cpt2 == lf {
                pos += 1;
                cpt2 = c.cpt(pos);
            }
            em.add(pos);
            continue;
        }

        let mut num_ws = 0;
        let mut last_end_r_or_n = 0;
        while is_ws(c.flags(pos + num_ws)) {
            let cpt2 = c.cpt(pos + num_ws);
            if cpt2 == cr || cpt2 == lf {
                last_end_r_or_n = pos + num_ws + 1;
            }
            num_ws += 1;
        }
        if last_end_r_or_n > 0 {
            pos = last_end_r_or_n;
            em.add(pos);
            continue;
        }
        if num_ws > 1 && c.cpt(pos + num_ws) != OUT_OF_RANGE {
            pos += num_ws - 1;
            em.add(pos);
            continue;
        }
        if num_ws > 0 {
            pos += num_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, splitters: &[Splitter]) -> Vec<String> {
        let cpts: Vec<u32> = text.chars().map(u32::from).collect();
        let mut start = 0;
        split(&cpts, splitters)
            .into_iter()
            .map(|len| {
                let w: String = cpts[start..start + len]
                    .iter()
                    .map(|&c| char::from_u32(c).unwrap())
                    .collect();
                start += len;
                w
            })
            .collect()
    }

    fn check(text: &str, splitters: &[Splitter], expect: &[&str]) {
        assert_eq!(
            words(text, splitters),
            expect,
            "splitting {text:?} with {splitters:?}"
        );
    }

    #[test]
    fn gpt2_pattern() {
        use Splitter::*;
        check("Hello world", &[Gpt2], &["Hello", " world"]);
        check("it's  ok\n\n", &[Gpt2], &["it", "'s", " ", " ok", "\n\n"]);
        check("a   b", &[Gpt2], &["a", "  ", " b"]);
        check("x=12+34", &[Gpt2], &["x", "=", "12", "+", "34"]);
        check("don't!!", &[Gpt2], &["don", "'t", "!!"]);
    }

    #[test]
    fn smollm_digits_split_first() {
        use Splitter::*;
        check(
            "12345 abc",
            &[Number, Gpt2],
            &["1", "2", "3", "4", "5", " abc"],
        );
        check("a 42", &[Number, Gpt2], &["a", " ", "4", "2"]);
    }

    #[test]
    fn llama3_pattern() {
        use Splitter::*;
        check("1234567", &[Llama3], &["123", "456", "7"]);
        check(
            "IT'S ok\r\n\r\n  x",
            &[Llama3],
            &["IT", "'S", " ok", "\r\n\r\n", " ", " x"],
        );
        check(
            "hello...\n\nworld",
            &[Llama3],
            &["hello", "...\n\n", "world"],
        );
        check("1234", &[Qwen2], &["1", "2", "3", "4"]);
    }

    #[test]
    fn default_pattern() {
        use Splitter::*;
        check(
            "a, b!! 12345",
            &[PunctRun { backtick: false }, Gpt2, NumberRun, Digits3],
            &["a", ",", " b", "!!", " ", "123", "45"],
        );
    }
}
