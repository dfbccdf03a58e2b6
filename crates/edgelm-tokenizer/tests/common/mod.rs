//! Shared helpers for the tokenizer's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `crates/edgelm-tokenizer/tests/data/<name>`
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(name)
}

/// `<workspace root>/../shared/data/<name>`, or `None` (with a message) when absent.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(name);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: shared data {} is absent", path.display());
        None
    }
}

/// The SmolLM2 model file, or `None` (with a message) when absent.
pub fn smollm2_model() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: model {} is absent", path.display());
        None
    }
}

/// llama.cpp's `models/` directory (vocab-only test GGUFs), if present.
pub fn llama_cpp_models() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".cache/edgelm-ref/llama.cpp/src/vendor/llama.cpp/models");
    path.exists().then_some(path)
}

/// Little-endian u16 ids.
pub fn read_u16_ids(path: &std::path::Path) -> Vec<u32> {
    let bytes = std::fs::read(path).expect("fixture readable");
    bytes
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// Index and values of the first difference between two id lists.
pub fn first_diff(a: &[u32], b: &[u32]) -> Option<(usize, Vec<u32>, Vec<u32>)> {
    let n = a.len().min(b.len());
    let i = (0..n).find(|&i| a[i] != b[i]).unwrap_or(n);
    if i == a.len() && i == b.len() {
        return None;
    }
    let lo = i.saturating_sub(3);
    Some((
        i,
        a[lo..(i + 5).min(a.len())].to_vec(),
        b[lo..(i + 5).min(b.len())].to_vec(),
    ))
}
