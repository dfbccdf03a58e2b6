//! Parsing a whole GGUF file: header, metadata, tensor infos, data section; all checks happen
//! here, once, so that tensor views afterwards cannot fail.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::reader::Reader;
use crate::value::{read_value, Metadata, Value};
use crate::{GgmlType, GgufError};

/// The GGUF magic, as the first four bytes of a file.
pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment (a `u32` power of two).
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes (`GGML_MAX_NAME` is 64 including the NUL).
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

// Fewest bytes one entry can take, to bound counts before allocating.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1; // key length, 1-byte key, type, 1-byte value
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8; // name length, n_dims, type, offset

/// Where a tensor is and what it holds. Produced by [`GgufFile`] after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name ("blk.0.attn_q.weight").
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (ne0). At most [`MAX_DIMS`].
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of dims; 1 for zero dims).
    pub fn n_elements(&self) -> u64 {
        // Checked at open not to overflow i64.
        self.dims.iter().product()
    }

    /// Elements per row (`dims[0]`; 1 for a zero-dimensional tensor).
    pub fn row_len(&self) -> usize {
        // Every dim is at most n_elements (or the tensor is empty), checked to fit usize.
        self.dims.first().map_or(1, |&d| d as usize)
    }

    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.ty.block_size() * self.ty.type_size()
    }
}

/// Checks a tensor's dims and type the way llama.cpp's `gguf_init_from_file` does and
/// returns its size in bytes.
pub(crate) fn tensor_n_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason: String| GgufError::BadShape {
        name: name.to_owned(),
        dims: dims.to_vec(),
        reason,
    };
    if dims.len() > MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions, at most {MAX_DIMS} allowed",
            dims.len()
        )));
    }
    // Each dim is an int64 in ggml; the element count must stay representable.
    let mut n: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return Err(bad(format!("dimension {d} is negative as an int64")));
        }
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad("element count overflows int64".to_owned()))?;
    }
    if usize::try_from(n).is_err() {
        return Err(bad("element count does not fit in usize".to_owned()));
    }
    let row_len = dims.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if row_len % block != 0 {
        return Err(bad(format!(
            "row length {row_len} is not a multiple of the {ty} block size {block}"
        )));
    }
    ty.bytes_for(n)
        .ok_or_else(|| bad("size in bytes overflows u64".to_owned()))
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF v2/v3 file: metadata, tensor infos, and zero-copy views of the
/// tensor data. The bytes are a read-only memory map ([`GgufFile::open`]) or an owned buffer
/// ([`GgufFile::from_bytes`]).
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps `path` read-only and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and we never hand out a mutable view. As with every
        // mmap-based loader (llama.cpp included), another process truncating or rewriting the
        // file while it is mapped is outside what we can guard against.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Storage::Mmap(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let parsed = parse(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            tensor_index: parsed
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: parsed.tensors,
            data_offset: parsed.data_offset,
        })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and tensors (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The key/value metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t`, borrowed from the file. Every tensor's range was validated at open,
    /// so this cannot fail for a [`TensorInfo`] from this file; a `TensorInfo` whose range is
    /// not inside this file's data section gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = || {
            let start = usize::try_from(self.data_offset.checked_add(t.offset)?).ok()?;
            let end = start.checked_add(usize::try_from(t.n_bytes).ok()?)?;
            self.storage.bytes().get(start..end)
        };
        range().unwrap_or_default()
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Absolute offset of the data section (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
}

fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut r = Reader::new(bytes);

    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        let mut found = [0; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Each entry takes some bytes; more entries than that allows cannot fit.
    for (what, n, min) in [
        ("metadata count", n_kv, MIN_KV_BYTES),
        ("tensor count", n_tensors, MIN_TENSOR_INFO_BYTES),
    ] {
        let limit = r.remaining() / min;
        if n > limit {
            return Err(GgufError::TooLarge {
                what: format!("{what} (bounded by the bytes left in the file)"),
                value: n,
                limit,
            });
        }
    }

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = r.string("metadata key")?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index: i });
        }
        if metadata.get(&key).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
        let value = r
            .u32("value type")
            .and_then(|id| read_value(&mut r, &key, id))
            .map_err(|e| e.within(|| format!("key '{key}'")))?;
        metadata.insert(key, value)?;
    }

    let alignment = match metadata.get(KEY_ALIGNMENT) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => return Err(GgufError::BadAlignment(u64::from(*a))),
        Some(other) => {
            return Err(GgufError::WrongType {
                key: KEY_ALIGNMENT.to_owned(),
                expected: "u32",
                found: other.type_name(),
            })
        }
    };

    // n_tensors <= remaining / 24, so this capacity is bounded by the file size.
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names: HashMap<&str, ()> = HashMap::new();
    for _ in 0..n_tensors {
        let t = read_tensor_info(&mut r)?;
        tensors.push(t);
    }
    for t in &tensors {
        if names.insert(t.name.as_str(), ()).is_some() {
            return Err(GgufError::DuplicateTensor(t.name.clone()));
        }
    }

    // The data section starts at the next multiple of the alignment. A file without tensors
    // may end before that padding.
    let header_end = r.offset();
    let file_size = bytes.len() as u64;
    let aligned = header_end.div_ceil(alignment) * alignment;
    let data_offset = if aligned <= file_size {
        aligned
    } else if tensors.is_empty() {
        header_end
    } else {
        return Err(GgufError::Truncated {
            what: "padding before the data section".to_owned(),
            offset: header_end,
        });
    };
    let data_size = file_size - data_offset;

    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::TensorMisaligned {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        if t.offset
            .checked_add(t.n_bytes)
            .is_none_or(|end| end > data_size)
        {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                offset: t.offset,
                n_bytes: t.n_bytes,
                data_size,
            });
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // In bounds, so a.offset + a.n_bytes cannot overflow.
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::TensorOverlap {
                a: a.name.clone(),
                b: b.name.clone(),
            });
        }
    }

    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

fn read_tensor_info(r: &mut Reader<'_>) -> Result<TensorInfo, GgufError> {
    let name = r.string("tensor name")?;
    if name.len() > MAX_TENSOR_NAME_BYTES {
        return Err(GgufError::TooLarge {
            what: format!("length of tensor name '{name}'"),
            value: name.len() as u64,
            limit: MAX_TENSOR_NAME_BYTES as u64,
        });
    }
    let ctx = || format!("tensor '{name}'");
    let n_dims = r.u32("dimension count").map_err(|e| e.within(ctx))?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::BadShape {
            name,
            dims: Vec::new(),
            reason: format!("{n_dims} dimensions, at most {MAX_DIMS} allowed"),
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.u64("dimension").map_err(|e| e.within(ctx))?);
    }
    let type_id = r.u32("type").map_err(|e| e.within(ctx))?;
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownType {
            tensor: name,
            id: type_id,
        });
    };
    let n_bytes = tensor_n_bytes(&name, &dims, ty)?;
    let offset = r.u64("data offset").map_err(|e| e.within(ctx))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_llama_cpp_rules() {
        assert_eq!(
            tensor_n_bytes("t", &[576, 49152], GgmlType::Q8_0).unwrap(),
            30081024
        );
        assert_eq!(tensor_n_bytes("t", &[], GgmlType::F32).unwrap(), 4);
        assert_eq!(tensor_n_bytes("t", &[0, 7], GgmlType::F32).unwrap(), 0);
        assert_eq!(
            tensor_n_bytes("t", &[1 << 62, 0], GgmlType::F32).unwrap(),
            0
        );
        for (dims, ty) in [
            (&[1u64, 1, 1, 1, 1][..], GgmlType::F32),
            (&[1 << 63][..], GgmlType::F32),
            (&[1 << 32, 1 << 31][..], GgmlType::F32),
            (&[48][..], GgmlType::Q4_1),
            (&[][..], GgmlType::Q4_1),
            (&[1 << 62][..], GgmlType::F32), // bytes overflow u64
        ] {
            assert!(
                matches!(
                    tensor_n_bytes("t", dims, ty),
                    Err(GgufError::BadShape { .. })
                ),
                "{dims:?} {ty}"
            );
        }
    }

    #[test]
    fn tensor_info_row_helpers() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![64, 3, 2],
            ty: GgmlType::Q8_0,
            offset: 0,
            n_bytes: 6 * 68,
        };
        assert_eq!(
            (t.n_elements(), t.row_len(), t.n_rows(), t.row_bytes()),
            (384, 64, 6, 68)
        );
    }
}
