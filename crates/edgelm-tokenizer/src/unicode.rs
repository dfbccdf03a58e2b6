//! Code point classes and the GPT-2 byte↔unicode mapping, exactly as llama.cpp's
//! `src/unicode.cpp` defines them (same Unicode tables, generated into [`crate::unicode_data`]).

use std::sync::OnceLock;

use crate::unicode_data::{FLAG_RUNS, LOWERCASE};

/// llama.cpp's `unicode_cpt_flags` bits.
pub(crate) mod flag {
    pub const UNDEFINED: u16 = 0x0001;
    pub const NUMBER: u16 = 0x0002;
    pub const LETTER: u16 = 0x0004;
    pub const PUNCTUATION: u16 = 0x0020;
    pub const MASK_CATEGORIES: u16 = 0x00FF;
    pub const WHITESPACE: u16 = 0x0100;
}

const MAX_CODEPOINTS: usize = 0x11_0000;

/// Flags of every code point, expanded once from the run table (2.2 MB, like llama.cpp's array).
fn flag_table() -> &'static [u16] {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![flag::UNDEFINED; MAX_CODEPOINTS];
        for (i, &(start, flags)) in FLAG_RUNS.iter().enumerate() {
            let end = FLAG_RUNS
                .get(i + 1)
                .map_or(MAX_CODEPOINTS, |r| r.0 as usize);
            table[start as usize..end].fill(flags);
        }
        table
    })
}

/// `unicode_cpt_flags_from_cpt`: flags of a code point (0 past the Unicode range).
#[inline]
pub(crate) fn cpt_flags(cpt: u32) -> u16 {
    flag_table()
        .get(cpt as usize)
        .copied()
        .unwrap_or(flag::UNDEFINED)
}

/// `unicode_tolower`: binary search in llama.cpp's lowercase map.
pub(crate) fn to_lower(cpt: u32) -> u32 {
    let i = LOWERCASE.partition_point(|&(c, _)| c < cpt);
    match LOWERCASE.get(i) {
        Some(&(c, lower)) if c == cpt => lower,
        _ => cpt,
    }
}

/// GPT-2's printable stand-in for each byte (`unicode_byte_to_utf8_map`).
pub(crate) fn byte_to_char_table() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut assigned = [false; 256];
        for b in (0x21..=0x7Eu32).chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
            table[b as usize] = char::from_u32(b).expect("Latin-1 code point");
            assigned[b as usize] = true;
        }
        let mut n = 0u32;
        for b in 0..256usize {
            if !assigned[b] {
                table[b] = char::from_u32(256 + n).expect("code point below 0x200");
                n += 1;
            }
        }
        table
    })
}

/// Inverse of [`byte_to_char_table`] (`unicode_utf8_to_byte`); `None` for other characters.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cpt = c as u32;
    match cpt {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cpt as u8),
        0x100..=0x143 => {
            // the 68 bytes that have no printable stand-in, in ascending order
            let n = cpt - 0x100;
            let mut seen = 0u32;
            for b in 0..=255u8 {
                if !matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) {
                    if seen == n {
                        return Some(b);
                    }
                    seen += 1;
                }
            }
            None
        }
        _ => None,
    }
}

/// C's `isspace` in the "C" locale (used by llama.cpp for lstrip/rstrip of special tokens).
#[inline]
pub(crate) fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_round_trips() {
        let table = byte_to_char_table();
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(table[b as usize]), Some(b), "byte {b}");
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('x'), Some(b'x'));
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn classes_match_llama_cpp() {
        assert_eq!(cpt_flags('a' as u32) & flag::LETTER, flag::LETTER);
        assert_eq!(cpt_flags('7' as u32) & flag::NUMBER, flag::NUMBER);
        assert_ne!(cpt_flags(' ' as u32) & flag::WHITESPACE, 0);
        assert_ne!(cpt_flags(0x3000) & flag::WHITESPACE, 0); // ideographic space
        assert_ne!(cpt_flags(0x00BD) & flag::NUMBER, 0); // ½
        assert_ne!(cpt_flags('中' as u32) & flag::LETTER, 0);
        assert_eq!(cpt_flags(0x10FFFF + 1), flag::UNDEFINED);
        assert_eq!(to_lower('S' as u32), 's' as u32);
        assert_eq!(to_lower('Ä' as u32), 'ä' as u32);
        assert_eq!(to_lower('s' as u32), 's' as u32);
    }
}
