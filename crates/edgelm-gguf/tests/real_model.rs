//! Parses the real SmolLM2-135M Q4_1 model. Skipped (with a message) when the file is absent.
//! `EDGELM_TEST_MODEL` overrides the path.

use std::path::PathBuf;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter};

fn model_path() -> Option<PathBuf> {
    let path = match std::env::var_os("EDGELM_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipped: model file {} is absent", path.display());
        None
    }
}

#[test]
fn parses_smollm2_135m() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    let md = f.metadata();

    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(md.arch().unwrap(), "llama");
    assert_eq!(md.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(md.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(md.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(md.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(md.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert!(
        md.get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap()
            > 0.0
    );
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert!(md.get_opt_str("tokenizer.chat_template").unwrap().is_some());

    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        md.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );
    assert!(!md
        .get_str_array("tokenizer.ggml.merges")
        .unwrap()
        .is_empty());
    let bos = md.get_u32("tokenizer.ggml.bos_token_id").unwrap() as usize;
    assert!(bos < tokens.len());

    // 30 layers × 9 tensors + token_embd + output_norm (output is tied to token_embd).
    assert_eq!(f.tensors().len(), 30 * 9 + 2);
    for layer in 0..30 {
        for part in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let name = format!("blk.{layer}.{part}.weight");
            let t = f.tensor(&name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        }
    }
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.ty, q.dims.as_slice()),
        (GgmlType::Q4_1, &[576u64, 576][..])
    );
    let k = f.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.dims, [576, 3 * 64]);

    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.ty, GgmlType::Q8_0);
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!((embd.row_len(), embd.n_rows()), (576, 49152));
    assert_eq!(f.tensor_data(embd).len(), 576 / 32 * 34 * 49152);
    assert!(f.tensor("output.weight").is_none());

    let mut total = 0u64;
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        total += t.n_bytes;
    }
    assert!(f.data_offset() + total <= f.file_size());
}

#[test]
fn rewriting_the_real_model_reproduces_it_byte_for_byte() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    let bytes = GgufWriter::from_file(&f).unwrap().to_bytes();
    let original = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), original.len());
    assert!(
        bytes == original,
        "re-written file differs from the original"
    );
}
