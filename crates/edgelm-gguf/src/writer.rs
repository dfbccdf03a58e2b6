//! Writing GGUF v3 files the way llama.cpp's `gguf_write_to_file` lays them out: header,
//! metadata, tensor infos, padding to the alignment, then each tensor's data padded to the
//! alignment. (One difference: a file without tensors gets no padding after its header.)
//!
//! Nested arrays (arrays of arrays) are valid GGUF and gguf-py reads them, but llama.cpp
//! rejects any file that contains one.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use crate::file::{tensor_n_bytes, DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC, MAX_TENSOR_NAME_BYTES};
use crate::value::{validate_value, write_string, write_typed_value, Metadata, Value};
use crate::{GgmlType, GgufError, GgufFile};

/// The GGUF version the writer produces.
pub const WRITE_VERSION: u32 = 3;

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file from metadata and tensors. Everything added is validated with the
/// reader's rules, so whatever it writes, [`GgufFile`] (and llama.cpp) can read back.
///
/// Tensor data may be owned (`Vec<u8>`) or borrowed (`&'a [u8]`, e.g. from another
/// [`GgufFile`]).
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Metadata,
    tensors: Vec<PendingTensor<'a>>,
    tensor_names: HashSet<String>,
}

impl<'a> GgufWriter<'a> {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer holding a copy of `file`'s metadata and borrowing all its tensors, in file
    /// order (offsets are recomputed).
    pub fn from_file(file: &'a GgufFile) -> Result<Self, GgufError> {
        let mut w = Self::new();
        for (key, value) in file.metadata().iter() {
            w.add_metadata(key, value.clone())?;
        }
        for t in file.tensors() {
            w.add_tensor(t.name.clone(), &t.dims, t.ty, file.tensor_data(t))?;
        }
        Ok(w)
    }

    fn check_metadata(key: &str, value: &Value) -> Result<(), GgufError> {
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index: 0 });
        }
        validate_value(key, value)?;
        if key == KEY_ALIGNMENT {
            match value {
                Value::U32(a) if a.is_power_of_two() => {}
                Value::U32(a) => return Err(GgufError::BadAlignment(u64::from(*a))),
                other => {
                    return Err(GgufError::WrongType {
                        key: key.to_owned(),
                        expected: "u32",
                        found: other.type_name(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Appends a metadata entry. Errors on a duplicate or empty key, on values the reader
    /// would reject (over-long strings or arrays, deep nesting), and on a `general.alignment`
    /// that is not a `u32` power of two.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<(), GgufError> {
        let (key, value) = (key.into(), value.into());
        Self::check_metadata(&key, &value)?;
        self.metadata.insert(key, value)
    }

    /// Sets a metadata entry, replacing the value in place if the key exists (e.g. to change
    /// `general.file_type` of a copied file), appending it otherwise.
    pub fn set_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<(), GgufError> {
        let (key, value) = (key.into(), value.into());
        Self::check_metadata(&key, &value)?;
        self.metadata.set(key, value);
        Ok(())
    }

    /// The metadata added so far.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Appends a tensor. `dims` are in ggml order (`dims[0]` = row length); `data` must be
    /// exactly the size the shape and type require.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), GgufError> {
        let (name, data) = (name.into(), data.into());
        if name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(GgufError::TooLarge {
                what: format!("length of tensor name '{name}'"),
                value: name.len() as u64,
                limit: MAX_TENSOR_NAME_BYTES as u64,
            });
        }
        if self.tensor_names.contains(&name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        let n_bytes = tensor_n_bytes(&name, dims, ty)?;
        if data.len() as u64 != n_bytes {
            return Err(GgufError::BadShape {
                name,
                dims: dims.to_vec(),
                reason: format!("{} bytes of data given, {ty} needs {n_bytes}", data.len()),
            });
        }
        self.tensor_names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// The alignment the file will use (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        match self.metadata.get(KEY_ALIGNMENT) {
            Some(Value::U32(a)) => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Writes the file to `w`; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: W) -> io::Result<u64> {
        let mut w = Counting { inner: w, n: 0 };
        let align = self.alignment();

        w.write_all(&MAGIC)?;
        w.write_all(&WRITE_VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in self.metadata.iter() {
            write_string(&mut w, key)?;
            write_typed_value(&mut w, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += padded(t.data.len() as u64, align);
        }
        // The data section starts aligned. Without tensors there is no data section, and no
        // padding (llama.cpp pads anyway, but reads either): a hostile `general.alignment` of
        // 2^31 must not turn a tiny file into a huge one when copied.
        if !self.tensors.is_empty() {
            w.pad(align)?;
        }
        for t in &self.tensors {
            w.write_all(&t.data)?;
            w.pad(align)?;
        }
        w.inner.flush()?;
        Ok(w.n)
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to a Vec<u8> cannot fail");
        out
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        self.write_to(io::BufWriter::new(file)).map_err(io)
    }
}

fn padded(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// A writer that counts bytes, for padding.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Counting<W> {
    fn pad(&mut self, align: u64) -> io::Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut left = padded(self.n, align) - self.n;
        while left > 0 {
            let k = left.min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..k])?;
            left -= k as u64;
        }
        Ok(())
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_readable() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama").unwrap();
        w.add_metadata(KEY_ALIGNMENT, 64u32).unwrap();
        w.add_tensor("a", &[3], GgmlType::F32, vec![0u8; 12])
            .unwrap();
        w.add_tensor("b", &[32, 2], GgmlType::Q8_0, vec![7u8; 68])
            .unwrap();
        let bytes = w.to_bytes();
        assert_eq!(bytes.len() % 64, 0);
        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!((f.version(), f.alignment()), (3, 64));
        assert_eq!(f.data_offset() % 64, 0);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.offset, 64);
        assert_eq!(f.tensor_data(b), &[7u8; 68][..]);
    }

    #[test]
    fn rejects_what_the_reader_would_reject() {
        let mut w = GgufWriter::new();
        assert!(matches!(
            w.add_metadata(KEY_ALIGNMENT, 24u32),
            Err(GgufError::BadAlignment(24))
        ));
        assert!(matches!(
            w.add_metadata(KEY_ALIGNMENT, 32u64),
            Err(GgufError::WrongType { .. })
        ));
        assert!(matches!(
            w.add_metadata("", 1u8),
            Err(GgufError::EmptyKey { .. })
        ));
        w.add_metadata("k", 1u8).unwrap();
        assert!(matches!(
            w.add_metadata("k", 2u8),
            Err(GgufError::DuplicateKey(_))
        ));
        w.set_metadata("k", 3u8).unwrap();
        assert_eq!(w.metadata().get("k"), Some(&Value::U8(3)));

        assert!(matches!(
            w.add_tensor("t", &[31], GgmlType::Q8_0, vec![0u8; 34]),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 15]),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            w.add_tensor("x".repeat(64), &[1], GgmlType::F32, vec![0u8; 4]),
            Err(GgufError::TooLarge { .. })
        ));
        w.add_tensor("t", &[1], GgmlType::F32, &[0u8; 4][..])
            .unwrap();
        assert!(matches!(
            w.add_tensor("t", &[1], GgmlType::F32, vec![0u8; 4]),
            Err(GgufError::DuplicateTensor(_))
        ));
    }
}
