//! Hostile files: every one gives a specific error, never a panic or a huge allocation.

use edgelm_gguf::{GgmlType, GgufError, GgufFile, GgufWriter};

/// Hand-assembles GGUF bytes, bypassing the writer's checks.
struct Raw {
    buf: Vec<u8>,
}

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut buf = b"GGUF".to_vec();
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&n_tensors.to_le_bytes());
        buf.extend_from_slice(&n_kv.to_le_bytes());
        Raw { buf }
    }
    fn u32(mut self, v: u32) -> Raw {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Raw {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.buf.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pads to `align` and appends `n` data bytes.
    fn data(mut self, align: usize, n: usize) -> Vec<u8> {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
        self.buf.resize(self.buf.len() + n, 0xAB);
        self.buf
    }
}

fn parse(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(f) => panic!("hostile file parsed: {f:?}"),
        Err(e) => {
            // Every error renders.
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

fn small_valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("tokenizer.ggml.tokens", vec!["a", "bc", "déf"])
        .unwrap();
    w.add_metadata("x.nested", vec![edgelm_gguf::Array::U16(vec![1, 2])])
        .unwrap();
    w.add_metadata("x.f", 0.5f32).unwrap();
    w.add_tensor("w", &[32, 2], GgmlType::Q8_0, vec![1u8; 68])
        .unwrap();
    w.add_tensor("n", &[5], GgmlType::F32, vec![2u8; 20])
        .unwrap();
    w.to_bytes()
}

#[test]
fn every_truncation_is_an_error_until_the_last_tensor_byte() {
    let bytes = small_valid_file();
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    let needed = full.data_offset()
        + full
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap();
    assert!(needed < bytes.len() as u64, "the file has trailing padding");
    for len in 0..bytes.len() {
        let res = GgufFile::from_bytes(bytes[..len].to_vec());
        if (len as u64) < needed {
            let err = res.expect_err("a truncated file parsed");
            assert!(
                matches!(
                    err,
                    GgufError::Truncated { .. }
                        | GgufError::TooLarge { .. }
                        | GgufError::TensorOutOfBounds { .. }
                ),
                "prefix {len}: {err}"
            );
        } else {
            // Only trailing padding is missing: still a complete file.
            assert_eq!(res.unwrap().tensors().len(), 2);
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = small_valid_file();
    bytes[0] = b'g';
    assert!(matches!(parse(bytes), GgufError::BadMagic { found } if &found == b"gGUF"));
    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut bytes = small_valid_file();
        bytes[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(parse(bytes), GgufError::UnsupportedVersion(x) if x == v));
    }
}

#[test]
fn absurd_counts_and_lengths() {
    // kv count 2^60, tensor count 2^60.
    let e = parse(Raw::new(3, 0, 1 << 60).kv_u32("a", 1).buf);
    assert!(
        matches!(e, GgufError::TooLarge { value, .. } if value == 1 << 60),
        "{e}"
    );
    let e = parse(Raw::new(3, 1 << 60, 0).data(32, 64));
    assert!(
        matches!(e, GgufError::TooLarge { value, .. } if value == 1 << 60),
        "{e}"
    );
    // i64-negative counts.
    let e = parse(Raw::new(3, u64::MAX, 0).buf);
    assert!(matches!(e, GgufError::TooLarge { .. }), "{e}");

    // Key length 2^63, value string length 2^63, and a length just past the end.
    let e = parse(
        Raw::new(3, 0, 1)
            .u64(1 << 63)
            .bytes(b"key")
            .bytes(&[0; 16])
            .buf,
    );
    assert!(
        matches!(e, GgufError::TooLarge { value, .. } if value == 1 << 63),
        "{e}"
    );
    let e = parse(
        Raw::new(3, 0, 1)
            .str("k")
            .u32(8)
            .u64(1 << 63)
            .bytes(&[0; 16])
            .buf,
    );
    assert!(
        matches!(&e, GgufError::TooLarge { what, .. } if what.contains("'k'")),
        "{e}"
    );
    let e = parse(
        Raw::new(3, 0, 1)
            .str("k")
            .u32(8)
            .u64(10)
            .bytes(b"short")
            .buf,
    );
    assert!(
        matches!(&e, GgufError::Truncated { what, offset: 45 } if what.contains("'k'")),
        "{e}"
    );

    // Array counts: over the cap, and under it but past the end of the file.
    let e = parse(Raw::new(3, 0, 1).str("k").u32(9).u32(0).u64(1 << 40).buf);
    assert!(
        matches!(e, GgufError::TooLarge { value, .. } if value == 1 << 40),
        "{e}"
    );
    let e = parse(
        Raw::new(3, 0, 1)
            .str("arr")
            .u32(9)
            .u32(8)
            .u64(1 << 29)
            .bytes(&[0; 64])
            .buf,
    );
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("'arr'")),
        "{e}"
    );
    // Nested arrays whose inner counts lie.
    let e = parse(
        Raw::new(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(9)
            .u64(1)
            .u32(6)
            .u64(1 << 28)
            .buf,
    );
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
}

#[test]
fn nesting_beyond_the_cap() {
    let mut r = Raw::new(3, 0, 1).str("deep").u32(9);
    for _ in 0..10 {
        r = r.u32(9).u64(1);
    }
    let e = parse(r.u32(0).u64(0).buf);
    assert!(
        matches!(&e, GgufError::TooLarge { what, .. } if what.contains("depth")),
        "{e}"
    );
}

#[test]
fn unknown_type_ids() {
    let e = parse(Raw::new(3, 0, 1).str("k").u32(13).u32(0).buf);
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, id: 13 } if key == "k"),
        "{e}"
    );
    let e = parse(Raw::new(3, 0, 1).str("k").u32(9).u32(77).u64(0).buf);
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, id: 77 } if key == "k"),
        "{e}"
    );
    for id in [4u32, 31, 1000, u32::MAX] {
        let e = parse(Raw::new(3, 1, 0).tensor("t", &[32], id, 0).data(32, 128));
        assert!(
            matches!(&e, GgufError::UnknownType { tensor, id: x } if tensor == "t" && *x == id),
            "{e}"
        );
    }
}

#[test]
fn keys_and_names() {
    let e = parse(Raw::new(3, 0, 2).kv_u32("a", 1).kv_u32("a", 2).buf);
    assert!(matches!(&e, GgufError::DuplicateKey(k) if k == "a"), "{e}");
    let e = parse(Raw::new(3, 0, 1).kv_u32("", 1).buf);
    assert!(matches!(e, GgufError::EmptyKey { index: 0 }), "{e}");
    let e = parse(
        Raw::new(3, 0, 1)
            .u64(2)
            .bytes(&[0xff, 0xfe])
            .u32(4)
            .u32(1)
            .buf,
    );
    assert!(matches!(e, GgufError::BadUtf8 { offset: 32, .. }), "{e}");
    let e = parse(Raw::new(3, 0, 1).str("k").u32(8).u64(1).bytes(&[0x80]).buf);
    assert!(
        matches!(&e, GgufError::BadUtf8 { what, .. } if what.contains("'k'")),
        "{e}"
    );

    let e = parse(
        Raw::new(3, 2, 0)
            .tensor("t", &[1], 0, 0)
            .tensor("t", &[1], 0, 32)
            .data(32, 64),
    );
    assert!(
        matches!(&e, GgufError::DuplicateTensor(n) if n == "t"),
        "{e}"
    );
    let long = "x".repeat(64);
    let e = parse(Raw::new(3, 1, 0).tensor(&long, &[1], 0, 0).data(32, 32));
    assert!(matches!(e, GgufError::TooLarge { value: 64, .. }), "{e}");
    let e = parse(Raw::new(3, 1, 0).u64(1).bytes(&[0xc0]).u32(0).data(32, 32));
    assert!(matches!(e, GgufError::BadUtf8 { .. }), "{e}");
}

#[test]
fn alignment_rules() {
    for bad in [0u32, 24, 33, u32::MAX] {
        let e = parse(Raw::new(3, 0, 1).kv_u32("general.alignment", bad).buf);
        assert!(
            matches!(e, GgufError::BadAlignment(a) if a == u64::from(bad)),
            "{e}"
        );
    }
    // Not a u32.
    let e = parse(
        Raw::new(3, 0, 1)
            .str("general.alignment")
            .u32(10)
            .u64(32)
            .buf,
    );
    assert!(
        matches!(
            e,
            GgufError::WrongType {
                expected: "u32",
                ..
            }
        ),
        "{e}"
    );

    let e = parse(Raw::new(3, 1, 0).tensor("t", &[4], 0, 16).data(32, 64));
    assert!(
        matches!(&e, GgufError::TensorMisaligned { name, offset: 16, alignment: 32 } if name == "t"),
        "{e}"
    );
    // With alignment 16 the same offset is fine.
    let ok = Raw::new(3, 1, 1)
        .kv_u32("general.alignment", 16)
        .tensor("t", &[4], 0, 16)
        .data(16, 32);
    assert_eq!(GgufFile::from_bytes(ok).unwrap().alignment(), 16);
}

#[test]
fn tensor_ranges() {
    // Past the end.
    let e = parse(Raw::new(3, 1, 0).tensor("t", &[32], 0, 0).data(32, 127));
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, n_bytes: 128, data_size: 127, .. } if name == "t"),
        "{e}"
    );
    // offset + n_bytes overflows u64.
    let e = parse(
        Raw::new(3, 1, 0)
            .tensor("t", &[32], 0, u64::MAX - 31)
            .data(32, 128),
    );
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    // Overlap, listed out of order.
    let e = parse(
        Raw::new(3, 2, 0)
            .tensor("b", &[16], 0, 32)
            .tensor("a", &[16], 0, 0)
            .data(32, 128),
    );
    assert!(
        matches!(&e, GgufError::TensorOverlap { a, b } if a == "a" && b == "b"),
        "{e}"
    );
    // Adjacent is fine, and an empty tensor may sit anywhere in bounds.
    let ok = Raw::new(3, 3, 0)
        .tensor("b", &[8], 0, 32)
        .tensor("a", &[8], 0, 0)
        .tensor("z", &[0], 0, 32)
        .data(32, 64);
    assert_eq!(GgufFile::from_bytes(ok).unwrap().tensors().len(), 3);
}

#[test]
fn shapes() {
    let e = parse(
        Raw::new(3, 1, 0)
            .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
            .data(32, 32),
    );
    assert!(
        matches!(&e, GgufError::BadShape { name, .. } if name == "t"),
        "{e}"
    );
    // n_dims = 2^32 - 1 is rejected before any dims are read.
    let e = parse(Raw::new(3, 1, 0).str("t").u32(u32::MAX).data(32, 32));
    assert!(matches!(e, GgufError::BadShape { .. }), "{e}");
    for dims in [
        &[1u64 << 32, 1 << 32][..], // overflows int64 elements
        &[u64::MAX][..],            // negative as int64
        &[1 << 62][..],             // bytes overflow
        &[1 << 31, 1 << 31, 4][..], // 2^64 elements
    ] {
        let e = parse(Raw::new(3, 1, 0).tensor("t", dims, 0, 0).data(32, 32));
        assert!(matches!(e, GgufError::BadShape { .. }), "{dims:?}: {e}");
    }
    // Row length not a multiple of the Q4_1 block size.
    let e = parse(Raw::new(3, 1, 0).tensor("t", &[48, 2], 3, 0).data(32, 256));
    assert!(
        matches!(&e, GgufError::BadShape { reason, .. } if reason.contains("block size")),
        "{e}"
    );
}

#[test]
fn missing_padding_before_data_section() {
    // A tensor table that ends before the aligned data section start.
    let mut bytes = Raw::new(3, 1, 0).tensor("t", &[0], 0, 0).buf;
    bytes.push(0);
    assert!(!bytes.len().is_multiple_of(32));
    let e = parse(bytes);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
}
