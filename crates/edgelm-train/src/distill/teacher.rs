//! The teacher's top-k distributions: computed by the inference engine (`edgelm-model`, on
//! the quantized teacher file as it is), and optionally kept in an append-only cache file
//! that later students reuse.
//!
//! Cache layout (little-endian): `EDGELMKD`, u32 version, u32 header length, the header as
//! JSON ([`CacheHeader`]: teacher and data fingerprints, windows, T, k, temperature, V), then
//! fixed-size records, one per window computed: u32 window index, `T·k` u32 ids, `T·k` f32
//! log-probabilities, `T` f32 log tail masses. A record cut short (an interrupted run) is
//! ignored and overwritten by the next append.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgelm_gguf::GgufFile;
use edgelm_kernels::ThreadPool;
use edgelm_model::{Logits, Model, State};
use serde::{Deserialize, Serialize};

use super::loss::{top_k_row, TeacherRow};
use crate::TrainError;

/// The teacher's top-k rows for the `T` positions of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowTargets {
    /// k.
    pub k: usize,
    /// [T, k] token ids.
    pub ids: Vec<u32>,
    /// [T, k] log-probabilities at the temperature.
    pub logp: Vec<f32>,
    /// [T] log of the mass outside the top-k.
    pub log_tail: Vec<f32>,
}

impl WindowTargets {
    /// Row of position `t`.
    pub fn row(&self, t: usize) -> TeacherRow<'_> {
        let r = t * self.k..(t + 1) * self.k;
        TeacherRow {
            ids: &self.ids[r.clone()],
            logp: &self.logp[r],
            log_tail: self.log_tail[t],
        }
    }
}

/// FNV-1a (64 bit) of a byte stream: a fingerprint, not a security check.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Fingerprint of a file's bytes.
pub fn file_fingerprint(path: &Path) -> Result<String, TrainError> {
    let io = |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Fnv::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.hex())
}

/// Fingerprint of a token stream cut into windows of `seq_len`.
pub fn data_fingerprint(stream: &[u32], seq_len: usize) -> String {
    let mut h = Fnv::default();
    h.update(&(seq_len as u64).to_le_bytes());
    for t in stream {
        h.update(&t.to_le_bytes());
    }
    h.hex()
}

/// What a cache was computed from; a cache is used only when all of it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheHeader {
    /// Fingerprint of the teacher GGUF file.
    pub teacher: String,
    /// Fingerprint of the training token stream and T.
    pub data: String,
    /// Windows in the training data.
    pub n_windows: usize,
    /// Tokens per window (T).
    pub seq_len: usize,
    /// Tokens kept per position.
    pub k: usize,
    /// Temperature of the stored log-probabilities.
    pub temperature: f32,
    /// Teacher vocabulary.
    pub n_vocab: usize,
}

const MAGIC: &[u8; 8] = b"EDGELMKD";
const VERSION: u32 = 1;

/// The on-disk cache, fully read into memory, appended to as windows are computed.
pub struct TeacherCache {
    path: PathBuf,
    header: CacheHeader,
    file: std::fs::File,
    /// Byte offset where the next record goes.
    end: u64,
    windows: HashMap<usize, WindowTargets>,
}

impl std::fmt::Debug for TeacherCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherCache")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("windows", &self.windows.len())
            .finish()
    }
}

impl TeacherCache {
    fn err(path: &Path, reason: String) -> TrainError {
        TrainError::TeacherCache {
            path: path.display().to_string(),
            reason,
        }
    }

    fn record_bytes(h: &CacheHeader) -> usize {
        4 + h.seq_len * h.k * 8 + h.seq_len * 4
    }

    /// Opens the cache at `path` for `header`, creating it when absent. An existing cache
    /// made for another teacher, data, T, k, temperature or vocabulary is refused.
    pub fn open(path: &Path, header: CacheHeader) -> Result<TeacherCache, TrainError> {
        let io = |source| TrainError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io)?;
            let json = serde_json::to_vec(&header).expect("plain data serializes");
            let mut head = Vec::with_capacity(16 + json.len());
            head.extend_from_slice(MAGIC);
            head.extend_from_slice(&VERSION.to_le_bytes());
            head.extend_from_slice(&(json.len() as u32).to_le_bytes());
            head.extend_from_slice(&json);
            file.write_all(&head).map_err(io)?;
            return Ok(TeacherCache {
                path: path.to_path_buf(),
                header,
                file,
                end: head.len() as u64,
                windows: HashMap::new(),
            });
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(Self::err(path, "not an edgelm teacher cache".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(Self::err(
                path,
                format!("version {version}, expected {VERSION}"),
            ));
        }
        let hlen = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let body = bytes
            .get(16..16usize.saturating_add(hlen))
            .ok_or_else(|| Self::err(path, "the header is cut short".into()))?;
        let found: CacheHeader = serde_json::from_slice(body)
            .map_err(|e| Self::err(path, format!("bad header: {e}")))?;
        if found != header {
            let mut diffs = Vec::new();
            if found.teacher != header.teacher {
                diffs.push("another teacher file".to_string());
            }
            if found.data != header.data || found.n_windows != header.n_windows {
                diffs.push("other training data".to_string());
            }
            for (what, a, b) in [
                ("seq_len", found.seq_len, header.seq_len),
                ("top-k", found.k, header.k),
                ("vocabulary", found.n_vocab, header.n_vocab),
            ] {
                if a != b {
                    diffs.push(format!("{what} {a} (this run: {b})"));
                }
            }
            if found.temperature != header.temperature {
                diffs.push(format!(
                    "temperature {} (this run: {})",
                    found.temperature, header.temperature
                ));
            }
            return Err(Self::err(
                path,
                format!(
                    "it was made for {}; delete it or name another --teacher-cache",
                    diffs.join(", ")
                ),
            ));
        }
        let rec = Self::record_bytes(&header);
        let (t, k) = (header.seq_len, header.k);
        let mut windows = HashMap::new();
        let mut off = 16 + hlen;
        while off + rec <= bytes.len() {
            let r = &bytes[off..off + rec];
            let w = u32::from_le_bytes(r[..4].try_into().expect("4 bytes")) as usize;
            if w >= header.n_windows {
                return Err(Self::err(
                    path,
                    format!("record at byte {off}: window {w} of {}", header.n_windows),
                ));
            }
            let words = |a: usize, n: usize| {
                r[a..a + 4 * n]
                    .chunks_exact(4)
                    .map(|c| c.try_into().expect("4 bytes"))
            };
            let ids: Vec<u32> = words(4, t * k).map(u32::from_le_bytes).collect();
            let logp: Vec<f32> = words(4 + 4 * t * k, t * k)
                .map(f32::from_le_bytes)
                .collect();
            let log_tail: Vec<f32> = words(4 + 8 * t * k, t).map(f32::from_le_bytes).collect();
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= header.n_vocab) {
                return Err(Self::err(
                    path,
                    format!("record at byte {off}: token id {id} outside the vocabulary"),
                ));
            }
            if logp.iter().any(|x| x.is_nan() || *x > 1e-3)
                || log_tail.iter().any(|x| x.is_nan() || *x > 1e-3)
            {
                return Err(Self::err(
                    path,
                    format!("record at byte {off}: a log-probability that is NaN or above 0"),
                ));
            }
            windows.insert(
                w,
                WindowTargets {
                    k,
                    ids,
                    logp,
                    log_tail,
                },
            );
            off += rec;
        }
        Ok(TeacherCache {
            path: path.to_path_buf(),
            header,
            file,
            end: off as u64,
            windows,
        })
    }

    /// The header.
    pub fn header(&self) -> &CacheHeader {
        &self.header
    }

    /// Windows stored.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// True when nothing is stored yet.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The stored targets of `window`.
    pub fn get(&self, window: usize) -> Option<&WindowTargets> {
        self.windows.get(&window)
    }

    /// Stores `targets` for `window` (appended to the file).
    pub fn insert(&mut self, window: usize, targets: WindowTargets) -> Result<(), TrainError> {
        let io = |source| TrainError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut rec = Vec::with_capacity(Self::record_bytes(&self.header));
        rec.extend_from_slice(&(window as u32).to_le_bytes());
        rec.extend(targets.ids.iter().flat_map(|x| x.to_le_bytes()));
        rec.extend(targets.logp.iter().flat_map(|x| x.to_le_bytes()));
        rec.extend(targets.log_tail.iter().flat_map(|x| x.to_le_bytes()));
        if rec.len() != Self::record_bytes(&self.header) {
            return Err(Self::err(&self.path, "a record of the wrong size".into()));
        }
        self.file.seek(SeekFrom::Start(self.end)).map_err(io)?;
        self.file.write_all(&rec).map_err(io)?;
        self.end += rec.len() as u64;
        self.windows.insert(window, targets);
        Ok(())
    }
}

/// The teacher model on the inference engine.
pub struct Teacher {
    model: Model,
    state: State,
    pool: ThreadPool,
    k: usize,
    temperature: f32,
    order: Vec<u32>,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("k", &self.k)
            .field("temperature", &self.temperature)
            .finish()
    }
}

impl Teacher {
    /// The teacher in `file`, run on `n_threads` threads for windows of `seq_len` tokens,
    /// keeping the top `k` tokens at `temperature`.
    pub fn new(
        file: Arc<GgufFile>,
        n_threads: usize,
        seq_len: usize,
        k: usize,
        temperature: f32,
    ) -> Result<Teacher, TrainError> {
        if k == 0 {
            return Err(TrainError::BadConfig {
                key: "top_k".into(),
                reason: "must be positive".into(),
            });
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(TrainError::BadConfig {
                key: "temperature".into(),
                reason: format!("{temperature} is not a positive number"),
            });
        }
        let model = Model::load(file)?;
        let state = model.new_state(seq_len, seq_len)?;
        let pool = ThreadPool::new(n_threads).map_err(|source| TrainError::Kernel {
            op: "teacher thread pool".into(),
            source,
        })?;
        let k = k.min(model.config().n_vocab);
        Ok(Teacher {
            model,
            state,
            pool,
            k,
            temperature,
            order: Vec::new(),
        })
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.model.config().n_vocab
    }

    /// k (at most the vocabulary).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The top-k targets of `tokens` (one window, positions 0..T).
    pub fn targets(&mut self, tokens: &[u32]) -> Result<WindowTargets, TrainError> {
        let (k, v) = (self.k, self.n_vocab());
        self.state.truncate(0);
        let logits = self
            .model
            .forward(&self.pool, &mut self.state, tokens, Logits::All)?;
        let t = tokens.len();
        let mut out = WindowTargets {
            k,
            ids: vec![0; t * k],
            logp: vec![0.0; t * k],
            log_tail: vec![0.0; t],
        };
        for (i, row) in logits.chunks_exact(v).enumerate() {
            out.log_tail[i] = top_k_row(
                row,
                k,
                self.temperature,
                &mut self.order,
                &mut out.ids[i * k..(i + 1) * k],
                &mut out.logp[i * k..(i + 1) * k],
            );
        }
        Ok(out)
    }
}
