//! KL-divergence base files: the base model's 16-bit log-probabilities on a text, saved once
//! and reused for every model compared with it (a quantization sweep runs the base once).
//!
//! The layout is llama.cpp's `llama-perplexity --kl-divergence-base FILE` format, so files go
//! both ways (all little-endian):
//!
//! ```text
//! "_logits_"                      8 bytes
//! n_ctx    u32
//! n_vocab  i32
//! n_chunk  i32
//! tokens   i32 × n_ctx·n_chunk    the text's tokens (before the BOS substitution)
//! rows     per window: n_ctx − 1 − n_ctx/2 rows of base_row_len(n_vocab) u16
//! ```
//!
//! edgelm appends a trailer that llama.cpp does not read (it stops after the last window):
//! a JSON object (`{"base": "sha256:…"}`, the base GGUF's digest), its length as u64 and the
//! magic `"edgelmKB"`. A file without the trailer (llama.cpp's) is accepted; its base cannot
//! be checked then.
//!
//! Reading checks every size against the file's length before allocating.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::kld::{base_row_len, BaseRows};
use crate::RuntimeError;

const MAGIC: &[u8; 8] = b"_logits_";
const TRAILER_MAGIC: &[u8; 8] = b"edgelmKB";
/// Largest trailer we read.
const MAX_TRAILER: u64 = 1 << 16;
const MAX_VOCAB: u64 = 1 << 24;
const MAX_CTX: u64 = 1 << 24;

fn err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BaseFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// What a base file covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KldBaseInfo {
    /// Window length.
    pub n_ctx: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Windows.
    pub n_chunks: usize,
    /// The evaluated tokens (`n_ctx · n_chunks`, before the BOS substitution).
    pub tokens: Vec<u32>,
    /// The base model's identity from edgelm's trailer (None for llama.cpp's files).
    pub base: Option<String>,
}

impl KldBaseInfo {
    /// Checks that this file was made for `tokens` (the whole tokenized text), windows of
    /// `n_ctx`, `n_chunks` windows and a vocabulary of `n_vocab`; and, when both are known,
    /// for the base `base_id`. The error names what differs.
    pub fn check(
        &self,
        path: &Path,
        tokens: &[u32],
        n_ctx: usize,
        n_chunks: usize,
        n_vocab: usize,
        base_id: Option<&str>,
    ) -> Result<(), RuntimeError> {
        if self.n_ctx != n_ctx {
            return Err(err(
                path,
                format!(
                    "made with windows of {} tokens, this run uses {n_ctx}",
                    self.n_ctx
                ),
            ));
        }
        if self.n_chunks != n_chunks {
            return Err(err(
                path,
                format!(
                    "holds {} windows, this run evaluates {n_chunks}",
                    self.n_chunks
                ),
            ));
        }
        if self.n_vocab != n_vocab {
            return Err(err(
                path,
                format!(
                    "made for a vocabulary of {} tokens, the model has {n_vocab}",
                    self.n_vocab
                ),
            ));
        }
        let n = n_ctx * n_chunks;
        if tokens.len() < n || tokens[..n] != self.tokens[..] {
            let at = self
                .tokens
                .iter()
                .zip(tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(tokens.len().min(n));
            return Err(err(
                path,
                format!("made on another text (the tokens differ from position {at})"),
            ));
        }
        if let (Some(have), Some(want)) = (self.base.as_deref(), base_id) {
            if have != want {
                return Err(err(
                    path,
                    format!("made with another base model ({have}, this base is {want})"),
                ));
            }
        }
        Ok(())
    }
}

/// Reads a base file window by window (a [`BaseRows`] source).
pub struct KldBaseReader {
    path: PathBuf,
    info: KldBaseInfo,
    reader: BufReader<File>,
    next_chunk: usize,
    bytes: Vec<u8>,
    rows: Vec<u16>,
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl KldBaseReader {
    /// Opens and validates `path`: magic, header against the file's length, trailer.
    pub fn open(path: &Path) -> Result<Self, RuntimeError> {
        let io = |e: std::io::Error| err(path, e.to_string());
        let mut f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut magic = [0u8; 8];
        if len < 20 || f.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(err(
                path,
                "not a KL-divergence base file (no \"_logits_\" header)",
            ));
        }
        let n_ctx = read_u32(&mut f).map_err(io)? as u64;
        let n_vocab = read_u32(&mut f).map_err(io)? as u64;
        let n_chunks = read_u32(&mut f).map_err(io)? as u64;
        if !(4..=MAX_CTX).contains(&n_ctx) || n_vocab == 0 || n_vocab > MAX_VOCAB || n_chunks == 0 {
            return Err(err(
                path,
                format!("bad header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunks}"),
            ));
        }
        let rows_per_chunk = n_ctx - 1 - n_ctx / 2;
        let chunk_bytes = rows_per_chunk * base_row_len(n_vocab as usize) as u64 * 2;
        let body = n_chunks
            .checked_mul(n_ctx)
            .and_then(|t| t.checked_mul(4))
            .and_then(|t| n_chunks.checked_mul(chunk_bytes)?.checked_add(t))
            .and_then(|b| b.checked_add(20));
        let Some(body) = body.filter(|&b| b <= len) else {
            return Err(err(
                path,
                format!(
                    "truncated: {n_chunks} windows of {n_ctx} tokens over {n_vocab} need more \
                     than its {len} bytes"
                ),
            ));
        };
        let base = if len > body {
            let extra = len - body;
            let bad = || {
                err(
                    path,
                    format!("{extra} unexpected bytes after the last window"),
                )
            };
            if extra < 16 {
                return Err(bad());
            }
            f.seek(SeekFrom::End(-16)).map_err(io)?;
            let mut tail = [0u8; 16];
            f.read_exact(&mut tail).map_err(io)?;
            let json_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
            if &tail[8..] != TRAILER_MAGIC || json_len != extra - 16 || json_len > MAX_TRAILER {
                return Err(bad());
            }
            f.seek(SeekFrom::Start(body)).map_err(io)?;
            let mut json = vec![0u8; json_len as usize];
            f.read_exact(&mut json).map_err(io)?;
            let v: serde_json::Value = serde_json::from_slice(&json)
                .map_err(|e| err(path, format!("bad trailer: {e}")))?;
            v.get("base").and_then(|b| b.as_str()).map(str::to_owned)
        } else {
            None
        };
        f.seek(SeekFrom::Start(20)).map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let n_tok = (n_ctx * n_chunks) as usize;
        let mut raw = vec![0u8; n_tok * 4];
        reader.read_exact(&mut raw).map_err(io)?;
        let tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Ok(Self {
            path: path.to_owned(),
            info: KldBaseInfo {
                n_ctx: n_ctx as usize,
                n_vocab: n_vocab as usize,
                n_chunks: n_chunks as usize,
                tokens,
                base,
            },
            reader,
            next_chunk: 0,
            bytes: Vec::new(),
            rows: Vec::new(),
        })
    }

    /// What the file covers.
    pub fn info(&self) -> &KldBaseInfo {
        &self.info
    }
}

impl BaseRows for KldBaseReader {
    fn n_vocab(&self) -> usize {
        self.info.n_vocab
    }

    fn chunk_rows(
        &mut self,
        chunk: usize,
        window: &[u32],
        _n_batch: usize,
    ) -> Result<&[u16], RuntimeError> {
        let n_ctx = self.info.n_ctx;
        if chunk != self.next_chunk || chunk >= self.info.n_chunks || window.len() != n_ctx {
            return Err(err(
                &self.path,
                format!(
                    "window {chunk} of {n_ctx} tokens asked out of order or out of range \
                     (next {}, {} windows of {n_ctx})",
                    self.next_chunk, self.info.n_chunks
                ),
            ));
        }
        let n = (n_ctx - 1 - n_ctx / 2) * base_row_len(self.info.n_vocab);
        self.bytes.resize(n * 2, 0);
        self.reader
            .read_exact(&mut self.bytes)
            .map_err(|e| err(&self.path, format!("window {chunk}: {e}")))?;
        self.rows.clear();
        self.rows.extend(
            self.bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
        self.next_chunk += 1;
        Ok(&self.rows)
    }
}

/// Writes a base file to `PATH.tmp`, renamed to `PATH` by [`KldBaseWriter::finish`] (an
/// interrupted run leaves no partial file under the real name).
pub struct KldBaseWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    rows_per_chunk: usize,
    chunks_left: usize,
    base: Option<String>,
}

impl KldBaseWriter {
    /// Starts a file for `n_chunks` windows of `n_ctx` over `tokens` (at least
    /// `n_ctx · n_chunks`), for a base identified by `base` (stored in the trailer).
    pub fn create(
        path: &Path,
        tokens: &[u32],
        n_ctx: usize,
        n_chunks: usize,
        n_vocab: usize,
        base: Option<String>,
    ) -> Result<Self, RuntimeError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |e: std::io::Error| err(path, e.to_string());
        let too_big = |what: &str| err(path, format!("{what} does not fit the format"));
        let n_tok = n_ctx * n_chunks;
        if tokens.len() < n_tok {
            return Err(err(path, "fewer tokens than the windows cover"));
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        out.write_all(MAGIC).map_err(io)?;
        for (v, what) in [
            (n_ctx, "n_ctx"),
            (n_vocab, "n_vocab"),
            (n_chunks, "n_chunk"),
        ] {
            let v = i32::try_from(v).map_err(|_| too_big(what))?;
            out.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        for &t in &tokens[..n_tok] {
            out.write_all(&t.to_le_bytes()).map_err(io)?;
        }
        Ok(Self {
            path: path.to_owned(),
            tmp,
            out,
            rows_per_chunk: (n_ctx - 1 - n_ctx / 2) * base_row_len(n_vocab),
            chunks_left: n_chunks,
            base,
        })
    }

    /// Appends one window's rows (as [`BaseRows::chunk_rows`] gives them).
    pub fn write_chunk(&mut self, rows: &[u16]) -> Result<(), RuntimeError> {
        if rows.len() != self.rows_per_chunk || self.chunks_left == 0 {
            return Err(err(
                &self.path,
                format!(
                    "a window of {} values written where {} were expected ({} windows left)",
                    rows.len(),
                    self.rows_per_chunk,
                    self.chunks_left
                ),
            ));
        }
        let mut buf = Vec::with_capacity(rows.len() * 2);
        for &r in rows {
            buf.extend_from_slice(&r.to_le_bytes());
        }
        self.out
            .write_all(&buf)
            .map_err(|e| err(&self.path, e.to_string()))?;
        self.chunks_left -= 1;
        Ok(())
    }

    /// Writes the trailer and moves the file to its name; every window must be written.
    pub fn finish(mut self) -> Result<(), RuntimeError> {
        let io = |e: std::io::Error| err(&self.path, e.to_string());
        if self.chunks_left != 0 {
            return Err(err(
                &self.path,
                format!("{} windows were never written", self.chunks_left),
            ));
        }
        let json = serde_json::json!({ "base": self.base }).to_string();
        self.out.write_all(json.as_bytes()).map_err(io)?;
        self.out
            .write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(TRAILER_MAGIC).map_err(io)?;
        self.out.flush().map_err(io)?;
        drop(self.out);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| err(&self.path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kld::encode_base_row;

    fn rows(n_ctx: usize, n_vocab: usize, seed: u32) -> Vec<u16> {
        let nv = base_row_len(n_vocab);
        let mut out = vec![0u16; (n_ctx - 1 - n_ctx / 2) * nv];
        for (r, row) in out.chunks_exact_mut(nv).enumerate() {
            let logits: Vec<f32> = (0..n_vocab)
                .map(|v| ((v as u32 * 31 + r as u32 * 7 + seed) % 17) as f32 * 0.5)
                .collect();
            encode_base_row(&logits, row);
        }
        out
    }

    #[test]
    fn round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.kld");
        let (n_ctx, n_vocab, n_chunks) = (8, 11, 3);
        let tokens: Vec<u32> = (0..30).map(|i| i % 11).collect();
        let mut w = KldBaseWriter::create(
            &p,
            &tokens,
            n_ctx,
            n_chunks,
            n_vocab,
            Some("sha256:ab".into()),
        )
        .unwrap();
        assert!(w.write_chunk(&[1, 2, 3]).is_err());
        for c in 0..n_chunks {
            w.write_chunk(&rows(n_ctx, n_vocab, c as u32)).unwrap();
        }
        assert!(!p.exists());
        w.finish().unwrap();
        let mut r = KldBaseReader::open(&p).unwrap();
        assert_eq!(r.info().tokens, tokens[..24]);
        assert_eq!(r.info().base.as_deref(), Some("sha256:ab"));
        let ok = |t: &[u32], c, k, v, b| r.info().check(&p, t, c, k, v, b);
        ok(&tokens, 8, 3, 11, Some("sha256:ab")).unwrap();
        ok(&tokens, 8, 3, 11, None).unwrap();
        assert!(ok(&tokens, 16, 3, 11, None).is_err());
        assert!(ok(&tokens, 8, 2, 11, None).is_err());
        assert!(ok(&tokens, 8, 3, 12, None).is_err());
        assert!(ok(&tokens, 8, 3, 11, Some("sha256:cd")).is_err());
        let mut other = tokens.clone();
        other[5] = 0;
        let e = ok(&other, 8, 3, 11, None).unwrap_err().to_string();
        assert!(e.contains("position 5"), "{e}");
        for c in 0..n_chunks {
            let w = vec![0u32; n_ctx];
            assert_eq!(
                r.chunk_rows(c, &w, 4).unwrap(),
                &rows(n_ctx, n_vocab, c as u32)[..]
            );
        }
        assert!(r.chunk_rows(3, &[0; 8], 4).is_err());
    }

    #[test]
    fn hostile_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.kld");
        let tokens: Vec<u32> = (0..16).collect();
        let mut w = KldBaseWriter::create(&p, &tokens, 8, 2, 16, None).unwrap();
        w.write_chunk(&rows(8, 16, 0)).unwrap();
        w.write_chunk(&rows(8, 16, 1)).unwrap();
        w.finish().unwrap();
        let good = std::fs::read(&p).unwrap();
        let q = dir.path().join("bad.kld");
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"_logits_".to_vec(),
            good[..good.len() / 2].to_vec(),
            [&good[..], b"x"].concat(),
        ];
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(huge);
        let mut magic = good.clone();
        magic[0] = b'X';
        cases.push(magic);
        let mut zero = good.clone();
        zero[16..20].copy_from_slice(&0u32.to_le_bytes());
        cases.push(zero);
        for (i, c) in cases.iter().enumerate() {
            std::fs::write(&q, c).unwrap();
            let e = KldBaseReader::open(&q).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("bad.kld")),
                "case {i}: {e:?}"
            );
        }
        // llama.cpp's files have no trailer.
        let body = good.len() - 16 - {
            let n = good.len();
            u64::from_le_bytes(good[n - 16..n - 8].try_into().unwrap()) as usize
        };
        std::fs::write(&q, &good[..body]).unwrap();
        assert_eq!(KldBaseReader::open(&q).unwrap().info().base, None);
    }
}
