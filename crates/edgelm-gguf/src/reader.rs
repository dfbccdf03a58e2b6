//! A bounded little-endian cursor over a borrowed byte slice (in the style of rustls'
//! `codec::Reader`): every read names its field, and running past the end is an error that
//! carries the field and its offset, never a panic.

use crate::GgufError;

/// Longest string accepted (llama.cpp's `GGUF_MAX_STRING_LENGTH`).
pub(crate) const MAX_STRING_BYTES: u64 = 1 << 30;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Absolute offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            what: what.to_owned(),
            offset: self.offset(),
        }
    }

    /// The next `n` bytes, or `Truncated` when fewer are left.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        // n <= remaining <= usize::MAX, so the cast is lossless.
        let end = self.pos + n as usize;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        match self.buf[self.pos..].split_first_chunk::<N>() {
            Some((head, _)) => {
                self.pos += N;
                Ok(*head)
            }
            None => Err(self.truncated(what)),
        }
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes. The length is checked against the
    /// 1 GiB cap and the bytes left before anything is allocated.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING_BYTES {
            return Err(GgufError::TooLarge {
                what: format!("length of {what}"),
                value: len,
                limit: MAX_STRING_BYTES,
            });
        }
        let start = self.offset();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::BadUtf8 {
                what: what.to_owned(),
                offset: start,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_names_the_field_past_the_end() {
        let bytes = [1, 0, 0, 0, 2, 0];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32("first").unwrap(), 1);
        assert_eq!(r.remaining(), 2);
        match r.u32("second") {
            Err(GgufError::Truncated { what, offset }) => {
                assert_eq!(what, "second");
                assert_eq!(offset, 4);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        // A failed read consumes nothing.
        assert_eq!(r.u16("third").unwrap(), 2);
        assert!(r.take(1, "fourth").is_err());
        assert_eq!(r.take(0, "empty").unwrap(), &[] as &[u8]);
    }

    #[test]
    fn strings_are_capped_bounded_and_utf8_checked() {
        let mut huge = (1u64 << 63).to_le_bytes().to_vec();
        huge.extend_from_slice(b"abc");
        assert!(matches!(
            Reader::new(&huge).string("key"),
            Err(GgufError::TooLarge { value, .. }) if value == 1 << 63
        ));

        let mut long = 10u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"abc");
        assert!(matches!(
            Reader::new(&long).string("key"),
            Err(GgufError::Truncated { offset: 8, .. })
        ));

        let mut bad = 2u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0xc3, 0x28]);
        assert!(matches!(
            Reader::new(&bad).string("key"),
            Err(GgufError::BadUtf8 { offset: 8, .. })
        ));

        let mut ok = 3u64.to_le_bytes().to_vec();
        ok.extend_from_slice("é!".as_bytes());
        assert_eq!(Reader::new(&ok).string("key").unwrap(), "é!");
    }
}
