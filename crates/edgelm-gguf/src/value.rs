//! Metadata values: the thirteen GGUF value types, typed arrays, and the ordered key/value map.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::reader::{Reader, MAX_STRING_BYTES};
use crate::GgufError;

/// Most elements accepted in one array (llama.cpp's `GGUF_MAX_ARRAY_ELEMENTS`).
pub(crate) const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Deepest nesting of arrays inside arrays. llama.cpp reads no nested arrays at all; the
/// format (and gguf-py) allows them, so we accept a few levels.
pub(crate) const MAX_ARRAY_DEPTH: usize = 4;

// GGUF value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one element type per array, stored unboxed (a 49k-entry vocabulary is
/// a `Vec<String>`, not a `Vec<Value>`). Arrays of arrays may mix element types.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    /// The GGUF type name: "u32", "string", `"array[string]"`, ...
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array[{}]", a.elem_type_name()),
            other => scalar_type_name(other.type_id()).to_owned(),
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => T_U8,
            Value::I8(_) => T_I8,
            Value::U16(_) => T_U16,
            Value::I16(_) => T_I16,
            Value::U32(_) => T_U32,
            Value::I32(_) => T_I32,
            Value::F32(_) => T_F32,
            Value::Bool(_) => T_BOOL,
            Value::String(_) => T_STRING,
            Value::Array(_) => T_ARRAY,
            Value::U64(_) => T_U64,
            Value::I64(_) => T_I64,
            Value::F64(_) => T_F64,
        }
    }

    /// The value as an `i128` when it is an integer of any width.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type name: "u8", "string", "array", ...
    pub fn elem_type_name(&self) -> &'static str {
        scalar_type_name(self.elem_type_id())
    }

    fn elem_type_id(&self) -> u32 {
        match self {
            Array::U8(_) => T_U8,
            Array::I8(_) => T_I8,
            Array::U16(_) => T_U16,
            Array::I16(_) => T_I16,
            Array::U32(_) => T_U32,
            Array::I32(_) => T_I32,
            Array::F32(_) => T_F32,
            Array::Bool(_) => T_BOOL,
            Array::String(_) => T_STRING,
            Array::Array(_) => T_ARRAY,
            Array::U64(_) => T_U64,
            Array::I64(_) => T_I64,
            Array::F64(_) => T_F64,
        }
    }
}

fn scalar_type_name(id: u32) -> &'static str {
    match id {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

/// Fewest bytes one element of type `id` takes in a file (used to bound counts before
/// allocating), or `None` for an unknown id.
fn min_encoded_size(id: u32) -> Option<u64> {
    Some(match id {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,    // u64 length
        T_ARRAY => 4 + 8, // element type + count
        _ => return None,
    })
}

macro_rules! impl_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::$variant(v) }
        }
        impl From<Vec<$t>> for Array {
            fn from(v: Vec<$t>) -> Array { Array::$variant(v) }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Value { Value::Array(Array::$variant(v)) }
        }
    )*};
}

impl_from!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64,
);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Value {
        Value::Array(v)
    }
}

impl From<Vec<Array>> for Value {
    fn from(v: Vec<Array>) -> Value {
        Value::Array(Array::Array(v))
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Value {
        Value::Array(Array::String(v.into_iter().map(str::to_owned).collect()))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads a value of type `id` (the type id has already been read).
pub(crate) fn read_value(r: &mut Reader<'_>, key: &str, id: u32) -> Result<Value, GgufError> {
    Ok(match id {
        T_U8 => Value::U8(r.u8("u8 value")?),
        T_I8 => Value::I8(r.u8("i8 value")? as i8),
        T_U16 => Value::U16(r.u16("u16 value")?),
        T_I16 => Value::I16(r.u16("i16 value")? as i16),
        T_U32 => Value::U32(r.u32("u32 value")?),
        T_I32 => Value::I32(r.u32("i32 value")? as i32),
        T_F32 => Value::F32(f32::from_bits(r.u32("f32 value")?)),
        // Like llama.cpp: any nonzero byte is true.
        T_BOOL => Value::Bool(r.u8("bool value")? != 0),
        T_STRING => Value::String(r.string("string value")?),
        T_ARRAY => Value::Array(read_array(r, key, 1)?),
        T_U64 => Value::U64(r.u64("u64 value")?),
        T_I64 => Value::I64(r.u64("i64 value")? as i64),
        T_F64 => Value::F64(f64::from_bits(r.u64("f64 value")?)),
        _ => {
            return Err(GgufError::UnknownValueType {
                key: key.to_owned(),
                id,
            })
        }
    })
}

/// Decodes `bytes` (a whole number of `N`-byte little-endian elements) with `f`.
fn decode<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N-byte chunks")))
        .collect()
}

/// Reads an array (element type id, u64 count, elements) at nesting depth `depth` (1 for a
/// top-level array value).
fn read_array(r: &mut Reader<'_>, key: &str, depth: usize) -> Result<Array, GgufError> {
    let id = r.u32("array element type")?;
    let count_offset = r.offset();
    let count = r.u64("array length")?;
    let Some(min_size) = min_encoded_size(id) else {
        return Err(GgufError::UnknownValueType {
            key: key.to_owned(),
            id,
        });
    };
    if count > MAX_ARRAY_LEN {
        return Err(GgufError::TooLarge {
            what: "array length".to_owned(),
            value: count,
            limit: MAX_ARRAY_LEN,
        });
    }
    // count <= 2^30 and min_size <= 12: no overflow.
    let n_bytes = count * min_size;
    if n_bytes > r.remaining() {
        return Err(GgufError::Truncated {
            what: format!("{count} array elements"),
            offset: count_offset,
        });
    }
    Ok(match id {
        T_U8 => Array::U8(r.take(n_bytes, "array elements")?.to_vec()),
        T_I8 => Array::I8(decode(
            r.take(n_bytes, "array elements")?,
            i8::from_le_bytes,
        )),
        T_BOOL => Array::Bool(
            r.take(n_bytes, "array elements")?
                .iter()
                .map(|&b| b != 0)
                .collect(),
        ),
        T_U16 => Array::U16(decode(
            r.take(n_bytes, "array elements")?,
            u16::from_le_bytes,
        )),
        T_I16 => Array::I16(decode(
            r.take(n_bytes, "array elements")?,
            i16::from_le_bytes,
        )),
        T_U32 => Array::U32(decode(
            r.take(n_bytes, "array elements")?,
            u32::from_le_bytes,
        )),
        T_I32 => Array::I32(decode(
            r.take(n_bytes, "array elements")?,
            i32::from_le_bytes,
        )),
        T_F32 => Array::F32(decode(
            r.take(n_bytes, "array elements")?,
            f32::from_le_bytes,
        )),
        T_U64 => Array::U64(decode(
            r.take(n_bytes, "array elements")?,
            u64::from_le_bytes,
        )),
        T_I64 => Array::I64(decode(
            r.take(n_bytes, "array elements")?,
            i64::from_le_bytes,
        )),
        T_F64 => Array::F64(decode(
            r.take(n_bytes, "array elements")?,
            f64::from_le_bytes,
        )),
        T_STRING => {
            // count * 8 <= remaining, so this capacity is bounded by the file size.
            let mut v = Vec::with_capacity(count as usize);
            for _ in 0..count {
                v.push(r.string("array string")?);
            }
            Array::String(v)
        }
        T_ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::TooLarge {
                    what: "array nesting depth".to_owned(),
                    value: depth as u64 + 1,
                    limit: MAX_ARRAY_DEPTH as u64,
                });
            }
            let mut v = Vec::with_capacity(count as usize);
            for _ in 0..count {
                v.push(read_array(r, key, depth + 1)?);
            }
            Array::Array(v)
        }
        _ => unreachable!("min_encoded_size rejected unknown ids"),
    })
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Checks that the reader will accept `value` (string and array caps, nesting depth).
pub(crate) fn validate_value(key: &str, value: &Value) -> Result<(), GgufError> {
    fn check_string(key: &str, s: &str) -> Result<(), GgufError> {
        if s.len() as u64 > MAX_STRING_BYTES {
            return Err(GgufError::TooLarge {
                what: format!("length of a string in key '{key}'"),
                value: s.len() as u64,
                limit: MAX_STRING_BYTES,
            });
        }
        Ok(())
    }
    fn check_array(key: &str, a: &Array, depth: usize) -> Result<(), GgufError> {
        // Same rule as the reader: an array of arrays may not sit at the deepest level, even
        // when empty.
        if matches!(a, Array::Array(_)) && depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::TooLarge {
                what: format!("array nesting depth of key '{key}'"),
                value: depth as u64 + 1,
                limit: MAX_ARRAY_DEPTH as u64,
            });
        }
        if a.len() as u64 > MAX_ARRAY_LEN {
            return Err(GgufError::TooLarge {
                what: format!("array length of key '{key}'"),
                value: a.len() as u64,
                limit: MAX_ARRAY_LEN,
            });
        }
        match a {
            Array::String(v) => v.iter().try_for_each(|s| check_string(key, s)),
            Array::Array(v) => v.iter().try_for_each(|a| check_array(key, a, depth + 1)),
            _ => Ok(()),
        }
    }
    check_string(key, key)?;
    match value {
        Value::String(s) => check_string(key, s),
        Value::Array(a) => check_array(key, a, 1),
        _ => Ok(()),
    }
}

pub(crate) fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// Writes the value's type id followed by its payload.
pub(crate) fn write_typed_value(w: &mut impl Write, value: &Value) -> io::Result<()> {
    w.write_all(&value.type_id().to_le_bytes())?;
    match value {
        Value::U8(v) => w.write_all(&v.to_le_bytes()),
        Value::I8(v) => w.write_all(&v.to_le_bytes()),
        Value::U16(v) => w.write_all(&v.to_le_bytes()),
        Value::I16(v) => w.write_all(&v.to_le_bytes()),
        Value::U32(v) => w.write_all(&v.to_le_bytes()),
        Value::I32(v) => w.write_all(&v.to_le_bytes()),
        Value::F32(v) => w.write_all(&v.to_le_bytes()),
        Value::Bool(v) => w.write_all(&[u8::from(*v)]),
        Value::String(s) => write_string(w, s),
        Value::Array(a) => write_array(w, a),
        Value::U64(v) => w.write_all(&v.to_le_bytes()),
        Value::I64(v) => w.write_all(&v.to_le_bytes()),
        Value::F64(v) => w.write_all(&v.to_le_bytes()),
    }
}

/// Writes element type id, u64 count and the elements.
fn write_array(w: &mut impl Write, a: &Array) -> io::Result<()> {
    w.write_all(&a.elem_type_id().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => {
            let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
            w.write_all(&bytes)
        }
        Array::String(v) => v.iter().try_for_each(|s| write_string(w, s)),
        Array::Array(v) => v.iter().try_for_each(|a| write_array(w, a)),
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// The key/value metadata of a GGUF file, in file order, with typed accessors.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

macro_rules! opt_getter {
    ($(#[$doc:meta])* $name:ident => $get:ident -> $t:ty) => {
        $(#[$doc])*
        pub fn $name(&self, key: &str) -> Result<Option<$t>, GgufError> {
            if self.get(key).is_none() {
                return Ok(None);
            }
            self.$get(key).map(Some)
        }
    };
}

impl Metadata {
    /// Appends an entry; `DuplicateKey` if `key` is present.
    pub(crate) fn insert(&mut self, key: String, value: Value) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Replaces the value of `key` in place, or appends it.
    pub(crate) fn set(&mut self, key: String, value: Value) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// All entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found: found.type_name(),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            other => Err(Self::wrong(key, "string", other)),
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, target: &'static str) -> Result<T, GgufError> {
        let v = self.require(key)?;
        let n = v.as_int().ok_or_else(|| Self::wrong(key, target, v))?;
        T::try_from(n).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: n.to_string(),
            target,
        })
    }

    /// An integer of any width whose value fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_int(key, "u32")
    }

    /// An integer of any width whose value fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_int(key, "u64")
    }

    /// An integer of any width whose value fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.get_int(key, "i64")
    }

    /// An `f32`, an `f64` (rounded) or an integer (converted).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        match *v {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            _ => v
                .as_int()
                .map(|n| n as f32)
                .ok_or_else(|| Self::wrong(key, "f32", v)),
        }
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(Self::wrong(key, "bool", other)),
        }
    }

    opt_getter!(
        /// Like [`Metadata::get_u32`], `Ok(None)` when the key is absent.
        get_opt_u32 => get_u32 -> u32);
    opt_getter!(
        /// Like [`Metadata::get_u64`], `Ok(None)` when the key is absent.
        get_opt_u64 => get_u64 -> u64);
    opt_getter!(
        /// Like [`Metadata::get_f32`], `Ok(None)` when the key is absent.
        get_opt_f32 => get_f32 -> f32);
    opt_getter!(
        /// Like [`Metadata::get_bool`], `Ok(None)` when the key is absent.
        get_opt_bool => get_bool -> bool);

    /// Like [`Metadata::get_str`], `Ok(None)` when the key is absent.
    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.get_str(key).map(Some)
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            other => Err(Self::wrong(key, "array", other)),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.require(key)? {
            Value::Array(Array::String(v)) => Ok(v),
            other => Err(Self::wrong(key, "array[string]", other)),
        }
    }

    /// An array of `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        match self.require(key)? {
            Value::Array(Array::F32(v)) => Ok(v),
            other => Err(Self::wrong(key, "array[f32]", other)),
        }
    }

    /// An array of `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        match self.require(key)? {
            Value::Array(Array::I32(v)) => Ok(v),
            other => Err(Self::wrong(key, "array[i32]", other)),
        }
    }

    /// `general.architecture` ("llama", "qwen2", ...).
    pub fn arch(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(entries: Vec<(&str, Value)>) -> Metadata {
        let mut m = Metadata::default();
        for (k, v) in entries {
            m.insert(k.to_owned(), v).unwrap();
        }
        m
    }

    #[test]
    fn getters_convert_integers_that_fit_and_name_the_key_otherwise() {
        let m = md(vec![
            ("a.u8", Value::U8(7)),
            ("a.i64", Value::I64(1 << 40)),
            ("a.neg", Value::I32(-1)),
            ("a.f64", Value::F64(0.5)),
            ("a.s", "x".into()),
            ("a.b", true.into()),
            ("a.toks", vec!["x", "y"].into()),
        ]);
        assert_eq!(m.get_u32("a.u8").unwrap(), 7);
        assert_eq!(m.get_u64("a.i64").unwrap(), 1 << 40);
        assert_eq!(m.get_f32("a.f64").unwrap(), 0.5);
        assert_eq!(m.get_f32("a.u8").unwrap(), 7.0);
        assert!(m.get_bool("a.b").unwrap());
        assert_eq!(m.get_str_array("a.toks").unwrap(), ["x", "y"]);
        match m.get_u32("a.i64") {
            Err(GgufError::OutOfRange { key, target, .. }) => {
                assert_eq!((key.as_str(), target), ("a.i64", "u32"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            m.get_u64("a.neg"),
            Err(GgufError::OutOfRange { .. })
        ));
        match m.get_str("a.u8") {
            Err(GgufError::WrongType {
                key,
                expected,
                found,
            }) => assert_eq!(
                (key.as_str(), expected, found.as_str()),
                ("a.u8", "string", "u8")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(m.get_str("nope"), Err(GgufError::MissingKey(k)) if k == "nope"));
        assert_eq!(m.get_opt_u32("nope").unwrap(), None);
        assert_eq!(m.get_opt_str("a.s").unwrap(), Some("x"));
        assert!(m.get_opt_f32("a.s").is_err());
        assert!(matches!(
            m.get_i32_array("a.toks"),
            Err(GgufError::WrongType { found, .. }) if found == "array[string]"
        ));
        let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys[0], "a.u8");
        assert_eq!(keys[6], "a.toks");
    }

    #[test]
    fn duplicate_keys_are_rejected_and_set_replaces_in_place() {
        let mut m = md(vec![("k", 1u32.into()), ("j", 2u32.into())]);
        assert!(
            matches!(m.insert("k".into(), 3u32.into()), Err(GgufError::DuplicateKey(k)) if k == "k")
        );
        m.set("k".into(), 5u32.into());
        assert_eq!(m.iter().next().unwrap(), ("k", &Value::U32(5)));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn arrays_round_trip_through_write_and_read() {
        let values: Vec<Value> = vec![
            vec![1u8, 2].into(),
            vec![-1i8].into(),
            vec![3u16].into(),
            vec![-3i16].into(),
            vec![4u32].into(),
            vec![-4i32].into(),
            vec![1.5f32].into(),
            vec![true, false].into(),
            vec!["a", ""].into(),
            vec![5u64].into(),
            vec![-5i64].into(),
            vec![2.5f64].into(),
            vec![Array::U8(vec![]), Array::String(vec!["z".into()])].into(),
        ];
        for v in values {
            let mut bytes = Vec::new();
            write_typed_value(&mut bytes, &v).unwrap();
            let mut r = Reader::new(&bytes);
            let id = r.u32("type").unwrap();
            assert_eq!(read_value(&mut r, "k", id).unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn nesting_deeper_than_the_cap_is_rejected() {
        let mut a = Array::U8(vec![1]);
        for _ in 0..MAX_ARRAY_DEPTH {
            a = Array::Array(vec![a]);
        }
        let v = Value::Array(a);
        assert!(validate_value("k", &v).is_err());
        let mut bytes = Vec::new();
        write_typed_value(&mut bytes, &v).unwrap();
        let mut r = Reader::new(&bytes);
        let id = r.u32("type").unwrap();
        assert!(matches!(
            read_value(&mut r, "k", id),
            Err(GgufError::TooLarge { what, .. }) if what.contains("depth")
        ));
    }
}
