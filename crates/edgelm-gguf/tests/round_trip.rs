//! Writer → reader round trips: every value type, arrays of strings, nested arrays, tensors of
//! several types, owned and mapped files, v2 headers.

use edgelm_gguf::{Array, GgmlType, GgufFile, GgufWriter, Value, KEY_ALIGNMENT};

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(-1.25e-7)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::String("héllo, wörld ✓".into())),
        ("t.empty_string", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("a.u8", vec![0u8, 255].into()),
        ("a.i8", vec![-128i8, 127].into()),
        ("a.u16", vec![1u16, 65535].into()),
        ("a.i16", vec![-1i16].into()),
        ("a.u32", vec![7u32; 5].into()),
        ("a.i32", vec![-7i32, 0, 7].into()),
        ("a.f32", vec![0.5f32, -0.0, f32::INFINITY].into()),
        ("a.bool", vec![true, false, true].into()),
        ("a.string", vec!["<|im_start|>", "Ġthe", "", "日本"].into()),
        ("a.u64", vec![u64::MAX, 0].into()),
        ("a.i64", vec![i64::MIN, i64::MAX].into()),
        ("a.f64", vec![1e300f64].into()),
        ("a.empty", Array::F32(vec![]).into()),
        (
            "a.nested",
            vec![
                Array::I32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::U8(vec![9]), Array::Array(vec![])]),
            ]
            .into(),
        ),
    ]
}

fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn tensors() -> Vec<(&'static str, Vec<u64>, GgmlType, Vec<u8>)> {
    let spec: Vec<(&str, Vec<u64>, GgmlType)> = vec![
        ("token_embd.weight", vec![64, 10], GgmlType::Q8_0),
        ("blk.0.attn_q.weight", vec![32, 3], GgmlType::Q4_1),
        ("blk.0.ffn_down.weight", vec![256, 2], GgmlType::Q4_K),
        ("blk.0.attn_norm.weight", vec![7], GgmlType::F32),
        ("h.f16", vec![3, 2, 2], GgmlType::F16),
        ("h.4d", vec![2, 1, 3, 2], GgmlType::BF16),
        ("h.empty", vec![0, 5], GgmlType::F32),
        ("h.scalar", vec![], GgmlType::I32),
    ];
    spec.into_iter()
        .enumerate()
        .map(|(i, (name, dims, ty))| {
            let n: u64 = dims.iter().product();
            let n_bytes = ty.bytes_for(n).unwrap() as usize;
            (name, dims, ty, pseudo_random_bytes(n_bytes, i as u64))
        })
        .collect()
}

fn build(alignment: Option<u32>) -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    if let Some(a) = alignment {
        w.add_metadata(KEY_ALIGNMENT, a).unwrap();
    }
    for (k, v) in every_value() {
        w.add_metadata(k, v).unwrap();
    }
    for (name, dims, ty, data) in tensors() {
        w.add_tensor(name, &dims, ty, data).unwrap();
    }
    w
}

fn check(f: &GgufFile, alignment: u64) {
    assert_eq!(f.alignment(), alignment);
    assert_eq!(f.data_offset() % alignment, 0);
    assert_eq!(f.metadata().arch().unwrap(), "llama");
    let expected = every_value();
    let extra = if alignment == 32 { 1 } else { 2 };
    assert_eq!(f.metadata().len(), expected.len() + extra);
    for (k, v) in &expected {
        assert_eq!(f.metadata().get(k), Some(v), "key {k}");
    }
    // File order is kept.
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k).skip(extra).collect();
    let want: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, want);
    assert_eq!(f.metadata().get_str_array("a.string").unwrap()[1], "Ġthe");

    let want = tensors();
    assert_eq!(f.tensors().len(), want.len());
    for ((name, dims, ty, data), t) in want.iter().zip(f.tensors()) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.dims, dims);
        assert_eq!(t.ty, *ty);
        assert_eq!(t.offset % alignment, 0, "{name}");
        assert_eq!(t.n_bytes as usize, data.len());
        assert_eq!(f.tensor_data(t), &data[..], "{name}");
        assert_eq!(f.tensor(name), Some(t));
    }
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.row_len(), q.n_rows(), q.n_elements()), (32, 3, 96));
    assert!(f.tensor("missing").is_none());
}

#[test]
fn owned_round_trip_keeps_every_value_and_tensor() {
    let bytes = build(None).to_bytes();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.file_size(), bytes.len() as u64);
    check(&f, 32);

    // Re-writing a parsed file reproduces it byte for byte.
    assert_eq!(GgufWriter::from_file(&f).unwrap().to_bytes(), bytes);
}

#[test]
fn mapped_round_trip_with_custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let n = build(Some(128)).write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.file_size(), n);
    check(&f, 128);
}

#[test]
fn version_2_files_are_accepted() {
    let mut bytes = build(None).to_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.version(), 2);
    check(&f, 32);
}

#[test]
fn borrowed_tensor_data_and_set_metadata() {
    let source = GgufFile::from_bytes(build(None).to_bytes()).unwrap();
    let mut w = GgufWriter::from_file(&source).unwrap();
    w.set_metadata("t.u32", 5u32).unwrap();
    w.set_metadata("t.new", "appended").unwrap();
    let copy = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(copy.metadata().get_u32("t.u32").unwrap(), 5);
    assert_eq!(copy.metadata().iter().last().unwrap().0, "t.new");
    for (a, b) in source.tensors().iter().zip(copy.tensors()) {
        assert_eq!(source.tensor_data(a), copy.tensor_data(b));
    }
}

#[test]
fn empty_file_round_trips() {
    // Without tensors the writer does not pad the 24-byte header.
    let bytes = GgufWriter::new().to_bytes();
    assert_eq!(bytes.len(), 24);
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert!(f.tensors().is_empty() && f.metadata().is_empty());
    assert_eq!(f.data_offset(), 24);
    // llama.cpp pads anyway; that reads too.
    let mut padded = bytes;
    padded.resize(32, 0);
    assert_eq!(GgufFile::from_bytes(padded).unwrap().data_offset(), 32);

    // A huge alignment does not inflate a file without tensors.
    let mut w = GgufWriter::new();
    w.add_metadata(KEY_ALIGNMENT, 1u32 << 31).unwrap();
    let bytes = w.to_bytes();
    assert!(bytes.len() < 100);
    assert_eq!(GgufFile::from_bytes(bytes).unwrap().alignment(), 1 << 31);
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = GgufFile::open("/nonexistent/dir/x.gguf").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir/x.gguf"), "{err}");
}
