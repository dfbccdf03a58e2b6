//! The property the `gguf_parse` fuzz target checks, shared with edgelm-gguf's replay test.

use edgelm_gguf::{GgufFile, GgufWriter};

/// Parses `data`; must never panic. When it parses: every tensor view has its declared
/// length, every metadata value can be visited, and re-writing the file then parsing it
/// again gives the same metadata, tensors and bytes.
pub fn check(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };

    let mut touched = 0u64;
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes, "tensor {}", t.name);
        touched = touched.wrapping_add(bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(file.tensor(&t.name), Some(t));
        let _ = (t.n_elements(), t.row_len(), t.n_rows());
    }
    for (key, value) in file.metadata().iter() {
        assert!(file.metadata().get(key).is_some());
        touched = touched.wrapping_add(format!("{value:?}").len() as u64);
    }
    std::hint::black_box(touched);

    let written = GgufWriter::from_file(&file)
        .expect("a parsed file can be re-written")
        .to_bytes();
    let again = GgufFile::from_bytes(written.clone()).expect("a written file parses");
    assert_eq!(again.version(), 3);
    assert_eq!(again.alignment(), file.alignment());
    // Debug rather than PartialEq so that NaN values compare equal to themselves.
    let entries = |f: &GgufFile| format!("{:?}", f.metadata().iter().collect::<Vec<_>>());
    assert_eq!(entries(&again), entries(&file));
    assert_eq!(again.tensors().len(), file.tensors().len());
    for (a, b) in file.tensors().iter().zip(again.tensors()) {
        assert_eq!(
            (&a.name, &a.dims, a.ty, a.n_bytes),
            (&b.name, &b.dims, b.ty, b.n_bytes)
        );
        assert_eq!(
            file.tensor_data(a),
            again.tensor_data(b),
            "tensor {}",
            a.name
        );
    }
    // The writer is deterministic: writing the re-parsed file gives the same bytes.
    let rewritten = GgufWriter::from_file(&again)
        .expect("a parsed file can be re-written")
        .to_bytes();
    assert!(rewritten == written, "write(parse(write(x))) != write(x)");
}
