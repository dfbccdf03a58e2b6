//! Importance matrices in llama.cpp's formats: the GGUF one written by today's
//! `llama-imatrix` (per weight `NAME.in_sum2`: sums of squared input activations, F32
//! `[n_per_row, n_mat]`; `NAME.counts`: tokens seen, F32 `[n_mat]`; metadata
//! `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`) and the legacy `.dat`
//! (`n_entries`, then per entry name, `ncall`, `nval` and `nval` floats, optionally followed
//! by the chunk count and dataset name). Loading normalizes as llama-quantize does: GGUF
//! sums are divided by their count (a zero count gives 1s), legacy values by `ncall`.

use std::collections::BTreeMap;

use edgelm_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};

/// Errors reading or writing an importance matrix.
#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    /// The GGUF container is bad.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The content is not an importance matrix.
    #[error("not an importance matrix: {0}")]
    Invalid(String),
}

/// Accumulated statistics for one weight (what `llama-imatrix` collects).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Sum over tokens of the squared input activation, per input column (and expert).
    pub in_sum2: Vec<f32>,
    /// Tokens seen, per expert (one entry for a dense weight).
    pub counts: Vec<f32>,
}

/// An importance matrix: per weight name, the normalized importance of each input column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    /// Weight name → importance (`n_per_row` values per expert).
    pub entries: BTreeMap<String, Vec<f32>>,
    /// Calibration data sets named in the file.
    pub datasets: Vec<String>,
    /// Chunks the statistics were collected over.
    pub chunk_count: u32,
}

const MAX_ENTRIES: usize = 1 << 20;

impl Imatrix {
    /// Parses either format from bytes (GGUF first, as llama.cpp tries).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Imatrix, ImatrixError> {
        if bytes.starts_with(b"GGUF") {
            let f = GgufFile::from_bytes(bytes)?;
            return Self::from_gguf(&f);
        }
        Self::from_legacy(&bytes)
    }

    /// Reads a file in either format.
    pub fn load(path: &std::path::Path) -> Result<Imatrix, ImatrixError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(bytes)
    }

    /// The GGUF format.
    pub fn from_gguf(f: &GgufFile) -> Result<Imatrix, ImatrixError> {
        let md = f.metadata();
        let bad = |m: String| ImatrixError::Invalid(m);
        let datasets = match md.get("imatrix.datasets") {
            Some(_) => md.get_str_array("imatrix.datasets")?.to_vec(),
            None => Vec::new(),
        };
        if md.get("imatrix.chunk_count").is_none() || md.get("imatrix.chunk_size").is_none() {
            return Err(bad(
                "missing imatrix.chunk_count / imatrix.chunk_size metadata".into(),
            ));
        }
        let chunk_count = md.get_u32("imatrix.chunk_count")?;
        let mut pairs: BTreeMap<
            String,
            (
                Option<&edgelm_gguf::TensorInfo>,
                Option<&edgelm_gguf::TensorInfo>,
            ),
        > = BTreeMap::new();
        for t in f.tensors() {
            if let Some(n) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(n.to_owned()).or_default().0 = Some(t);
            } else if let Some(n) = t.name.strip_suffix(".counts") {
                pairs.entry(n.to_owned()).or_default().1 = Some(t);
            }
        }
        if pairs.is_empty() {
            return Err(bad("no .in_sum2/.counts tensors".into()));
        }
        let floats = |t: &edgelm_gguf::TensorInfo| -> Result<Vec<f32>, ImatrixError> {
            if t.ty != GgmlType::F32 {
                return Err(bad(format!("tensor {} is {}, not F32", t.name, t.ty)));
            }
            Ok(f.tensor_data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let mut entries = BTreeMap::new();
        for (name, (sums, counts)) in pairs {
            let (Some(sums), Some(counts)) = (sums, counts) else {
                return Err(bad(format!("mismatched sums and counts for {name}")));
            };
            let (sums, counts) = (floats(sums)?, floats(counts)?);
            if counts.is_empty() || sums.is_empty() || sums.len() % counts.len() != 0 {
                return Err(bad(format!(
                    "{name}: {} sums do not split into {} experts",
                    sums.len(),
                    counts.len()
                )));
            }
            let ne0 = sums.len() / counts.len();
            let mut v = vec![0.0f32; sums.len()];
            for (j, &c) in counts.iter().enumerate() {
                for i in 0..ne0 {
                    v[j * ne0 + i] = if c > 0.0 { sums[j * ne0 + i] / c } else { 1.0 };
                }
            }
            check_values(&name, &v)?;
            entries.insert(name, v);
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
        })
    }

    /// The legacy `.dat` format.
    pub fn from_legacy(bytes: &[u8]) -> Result<Imatrix, ImatrixError> {
        let bad = |m: &str| ImatrixError::Invalid(format!("legacy imatrix: {m}"));
        let mut pos = 0usize;
        let i32_at = |pos: &mut usize| -> Result<i32, ImatrixError> {
            let b = bytes.get(*pos..*pos + 4).ok_or_else(|| bad("truncated"))?;
            *pos += 4;
            Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let n_entries = i32_at(&mut pos)?;
        if n_entries < 1 || n_entries as usize > MAX_ENTRIES {
            return Err(bad("no entries"));
        }
        let mut entries = BTreeMap::new();
        for _ in 0..n_entries {
            let len = i32_at(&mut pos)?;
            if len < 0 || len as usize > bytes.len() - pos {
                return Err(bad("bad name length"));
            }
            let name = std::str::from_utf8(&bytes[pos..pos + len as usize])
                .map_err(|_| bad("name is not UTF-8"))?
                .to_owned();
            pos += len as usize;
            let ncall = i32_at(&mut pos)?;
            let nval = i32_at(&mut pos)?;
            if nval < 1 || (nval as usize).saturating_mul(4) > bytes.len() - pos {
                return Err(bad("bad number of values"));
            }
            let mut v: Vec<f32> = bytes[pos..pos + 4 * nval as usize]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            pos += 4 * nval as usize;
            if ncall > 0 {
                for x in &mut v {
                    *x /= ncall as f32;
                }
            }
            check_values(&name, &v)?;
            entries.insert(name, v);
        }
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if pos + 4 <= bytes.len() {
            chunk_count = i32_at(&mut pos)?.max(0) as u32;
            if pos + 4 <= bytes.len() {
                let len = i32_at(&mut pos)?;
                if len > 0 && len as usize <= bytes.len() - pos {
                    datasets.push(
                        String::from_utf8_lossy(&bytes[pos..pos + len as usize]).into_owned(),
                    );
                }
            }
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
        })
    }

    /// The importance vector for a weight, checked against its shape (`n_per_row` values per
    /// expert). `Ok(None)` when the matrix has no entry for it.
    pub fn for_tensor(
        &self,
        name: &str,
        n_per_row: usize,
        n_expert: usize,
    ) -> Result<Option<&[f32]>, ImatrixError> {
        match self.entries.get(name) {
            None => Ok(None),
            Some(v) if v.len() == n_per_row * n_expert.max(1) => Ok(Some(v)),
            Some(v) => Err(ImatrixError::Invalid(format!(
                "imatrix size {} is different from tensor size {} for {name}",
                v.len(),
                n_per_row * n_expert.max(1)
            ))),
        }
    }
}

fn check_values(name: &str, v: &[f32]) -> Result<(), ImatrixError> {
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        return Err(ImatrixError::Invalid(format!(
            "imatrix contains non-finite value {x} (entry {name})"
        )));
    }
    Ok(())
}

/// Writes statistics in llama-imatrix's GGUF format.
pub fn write_gguf(
    stats: &BTreeMap<String, Stats>,
    datasets: &[String],
    chunk_count: u32,
    chunk_size: u32,
) -> Result<GgufWriter<'static>, ImatrixError> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.type", "imatrix")?;
    w.add_metadata("imatrix.datasets", datasets.to_vec())?;
    w.add_metadata("imatrix.chunk_count", Value::U32(chunk_count))?;
    w.add_metadata("imatrix.chunk_size", Value::U32(chunk_size))?;
    for (name, s) in stats {
        let n_mat = s.counts.len().max(1);
        let ne0 = s.in_sum2.len() / n_mat;
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // Dims as gguf writes them (`ggml_n_dims`: trailing 1s dropped).
        let dims = |d: [u64; 2]| if d[1] == 1 { vec![d[0]] } else { d.to_vec() };
        w.add_tensor(
            format!("{name}.in_sum2"),
            &dims([ne0 as u64, n_mat as u64]),
            GgmlType::F32,
            bytes(&s.in_sum2),
        )?;
        w.add_tensor(
            format!("{name}.counts"),
            &dims([1, n_mat as u64]),
            GgmlType::F32,
            bytes(&s.counts),
        )?;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_round_trip_and_normalization() {
        let mut stats = BTreeMap::new();
        stats.insert(
            "blk.0.ffn_up.weight".to_owned(),
            Stats {
                in_sum2: vec![2.0, 4.0, 6.0, 8.0],
                counts: vec![2.0],
            },
        );
        stats.insert(
            "zero".to_owned(),
            Stats {
                in_sum2: vec![5.0, 5.0],
                counts: vec![0.0],
            },
        );
        let w = write_gguf(&stats, &["calib.txt".into()], 3, 512).unwrap();
        let m = Imatrix::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(m.entries["blk.0.ffn_up.weight"], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.entries["zero"], vec![1.0, 1.0]);
        assert_eq!(m.datasets, vec!["calib.txt".to_owned()]);
        assert_eq!(m.chunk_count, 3);
        assert!(m.for_tensor("blk.0.ffn_up.weight", 4, 1).unwrap().is_some());
        assert!(m.for_tensor("blk.0.ffn_up.weight", 8, 1).is_err());
        assert!(m.for_tensor("other", 4, 1).unwrap().is_none());
    }

    /// Deterministic byte mutations of valid files in both formats: errors or values, never a
    /// panic.
    #[test]
    fn mutated_files_never_panic() {
        let mut stats = BTreeMap::new();
        stats.insert(
            "a.weight".to_owned(),
            Stats {
                in_sum2: vec![1.0; 8],
                counts: vec![3.0],
            },
        );
        let gguf = write_gguf(&stats, &["d".into()], 2, 64).unwrap().to_bytes();
        let mut legacy = Vec::new();
        legacy.extend_from_slice(&1i32.to_le_bytes());
        legacy.extend_from_slice(&1i32.to_le_bytes());
        legacy.extend_from_slice(b"a");
        legacy.extend_from_slice(&1i32.to_le_bytes());
        legacy.extend_from_slice(&2i32.to_le_bytes());
        legacy.extend_from_slice(&[0u8; 8]);
        let mut seed = 12345u64;
        for base in [gguf, legacy] {
            for _ in 0..2000 {
                let mut b = base.clone();
                for _ in 0..3 {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let i = (seed >> 33) as usize % b.len();
                    b[i] = (seed >> 20) as u8;
                }
                let _ = Imatrix::from_bytes(b);
            }
        }
    }

    #[test]
    fn legacy_format() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&3i32.to_le_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&2i32.to_le_bytes()); // ncall
        b.extend_from_slice(&2i32.to_le_bytes()); // nval
        b.extend_from_slice(&4.0f32.to_le_bytes());
        b.extend_from_slice(&6.0f32.to_le_bytes());
        b.extend_from_slice(&10i32.to_le_bytes());
        b.extend_from_slice(&4i32.to_le_bytes());
        b.extend_from_slice(b"wiki");
        let m = Imatrix::from_bytes(b.clone()).unwrap();
        assert_eq!(m.entries["abc"], vec![2.0, 3.0]);
        assert_eq!(
            (m.chunk_count, m.datasets.clone()),
            (10, vec!["wiki".to_owned()])
        );
        // Truncations and hostile lengths are errors, never panics.
        for cut in 0..b.len() - 8 {
            let _ = Imatrix::from_bytes(b[..cut].to_vec());
        }
        let mut h = b.clone();
        h[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(Imatrix::from_bytes(h).is_err());
        let mut nan = b.clone();
        nan[23..27].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(
            matches!(Imatrix::from_bytes(nan), Err(ImatrixError::Invalid(m)) if m.contains("non-finite"))
        );
        assert!(Imatrix::from_bytes(b"junk".to_vec()).is_err());
    }
}
