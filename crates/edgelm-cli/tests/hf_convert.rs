//! `edgelm quantize DIR OUT`: Hugging Face model directories. A small directory (two layers)
//! is made from the real model's weights — dequantized to F32, renamed, q/k un-permuted to
//! Hugging Face's layout, tokenizer.json and tokenizer_config.json rebuilt from the GGUF
//! metadata — and converted back: the tensors and tokenizer must come back identical, and the
//! converted model must generate exactly what the same weights do in GGUF form. Broken
//! directories give clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use serde_json::json;

const N_LAYER: usize = 2;

fn edgelm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm"));
    c.env("EDGELM_OFFLINE", "1").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    edgelm().args(args).output().expect("spawn edgelm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn real_model() -> Option<PathBuf> {
    // The cache path the CLI itself uses (no download).
    let p = edgelm_runtime::default_model_path()?;
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: the real model {} is absent", p.display());
        None
    }
}

/// Inverse of convert_hf_to_gguf.py's `permute`: ggml's interleaved rows back to HF's halves.
fn unpermute(data: &[u8], n_rows: usize, n_head: usize) -> Vec<u8> {
    let row = data.len() / n_rows;
    let per_head = n_rows / n_head;
    let half = per_head / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let hf = h * per_head + j * half + i;
                let gg = h * per_head + i * 2 + j;
                out[hf * row..(hf + 1) * row].copy_from_slice(&data[gg * row..(gg + 1) * row]);
            }
        }
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the HF directory and the equivalent GGUF (same weights, original metadata with 2
/// layers); returns the GGUF's path.
fn make_hf_dir(model: &Path, dir: &Path) -> PathBuf {
    let src = GgufFile::open(model).unwrap();
    let md = src.metadata();
    let hf_names = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        ("attn_norm", "input_layernorm"),
        ("ffn_norm", "post_attention_layernorm"),
    ];
    let mut hf: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut gguf = GgufWriter::new();
    for (k, v) in md.iter() {
        let v = if k == "llama.block_count" {
            Value::U32(N_LAYER as u32)
        } else {
            v.clone()
        };
        let v = if k == "general.file_type" {
            Value::U32(0)
        } else {
            v
        };
        gguf.add_metadata(k, v).unwrap();
    }
    let mut add = |gname: String, hname: String, permute: Option<usize>| {
        let t = src.tensor(&gname).unwrap();
        let data = f32_bytes(&edgelm_quant::model::tensor_to_f32(&src, t).unwrap());
        gguf.add_tensor(gname, &t.dims, GgmlType::F32, data.clone())
            .unwrap();
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let data = match permute {
            Some(n) => unpermute(&data, shape[0], n),
            None => data,
        };
        hf.push((hname, shape, data));
    };
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        None,
    );
    add(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        None,
    );
    for l in 0..N_LAYER {
        for (g, h) in hf_names {
            let permute = match g {
                "attn_q" => Some(9),
                "attn_k" => Some(3),
                _ => None,
            };
            add(
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{h}.weight"),
                permute,
            );
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = hf
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let gguf_path = dir.join("expected.gguf");
    gguf.write_file(&gguf_path).unwrap();

    std::fs::write(
        dir.join("config.json"),
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": N_LAYER,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "vocab_size": 49152,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true,
            "bos_token_id": 1,
            "eos_token_id": 2,
        })
        .to_string(),
    )
    .unwrap();
    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap();
    let types = md.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let merges = md.get_str_array("tokenizer.ggml.merges").unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3)
        .map(|(i, _)| json!({"id": i, "content": tokens[i], "special": true, "normalized": false}))
        .collect();
    std::fs::write(
        dir.join("tokenizer.json"),
        json!({
            "added_tokens": added,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
            "model": {"type": "BPE", "vocab": vocab, "merges": merges},
        })
        .to_string(),
    )
    .unwrap();
    let id = |k: &str| tokens[md.get_u32(k).unwrap() as usize].clone();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "add_bos_token": false,
            "bos_token": id("tokenizer.ggml.bos_token_id"),
            "eos_token": id("tokenizer.ggml.eos_token_id"),
            "unk_token": id("tokenizer.ggml.unknown_token_id"),
            "pad_token": id("tokenizer.ggml.padding_token_id"),
            "chat_template": md.get_str("tokenizer.chat_template").unwrap(),
        })
        .to_string(),
    )
    .unwrap();
    gguf_path
}

#[test]
fn hf_directory_round_trips_the_real_model() {
    let Some(model) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    std::fs::create_dir(&dir).unwrap();
    let expected = make_hf_dir(&model, &dir);
    let out = tmp.path().join("converted.gguf");
    let o = run(&["quantize", s(&dir), s(&out), "--type", "F32", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (got, want) = (
        GgufFile::open(&out).unwrap(),
        GgufFile::open(&expected).unwrap(),
    );
    assert_eq!(got.tensors().len(), want.tensors().len());
    for t in want.tensors() {
        let g = got
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((g.ty, &g.dims), (t.ty, &t.dims), "{}", t.name);
        assert!(
            got.tensor_data(g) == want.tensor_data(t),
            "{}: data differs",
            t.name
        );
    }
    let wanted: HashMap<&str, &Value> = want.metadata().iter().collect();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.chat_template",
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "llama.rope.dimension_count",
        "llama.context_length",
    ] {
        assert_eq!(got.metadata().get(key), wanted.get(key).copied(), "{key}");
    }
    // Same weights, same metadata: the same greedy continuation.
    let gen = |m: &Path| {
        let o = run(&[
            "run",
            "-m",
            s(m),
            "-p",
            "The capital of France is",
            "-n",
            "12",
            "--temp",
            "0",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(gen(&out), gen(&expected));
    // And the same logits: identical perplexity over a text (every scored position's
    // log-softmax enters it).
    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let ppl = |m: &Path| {
        let o = run(&[
            "perplexity",
            "-m",
            s(m),
            "-f",
            s(&text),
            "-c",
            "64",
            "--chunks",
            "2",
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        j["ppl"].as_f64().unwrap()
    };
    assert_eq!(ppl(&out).to_bits(), ppl(&expected).to_bits());
    // And straight to a quantized type.
    let q = tmp.path().join("q8.gguf");
    let o = run(&["quantize", s(&dir), s(&q), "--type", "Q8_0", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        GgufFile::open(&q)
            .unwrap()
            .tensor("blk.1.ffn_up.weight")
            .unwrap()
            .ty,
        GgmlType::Q8_0
    );
}

fn small_dir(dir: &Path, hidden: u64, tensors: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 64, "vocab_size": 8, "tie_word_embeddings": true,
        })
        .to_string(),
    )
    .unwrap();
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape)| {
            (
                n.to_string(),
                shape.clone(),
                vec![0u8; 4 * shape.iter().product::<usize>()],
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, sh, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn broken_directories_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.gguf");
    let check = |dir: &Path, needle: &str| {
        let o = run(&["quantize", s(dir), s(&out), "--type", "Q8_0"]);
        assert_eq!(o.status.code(), Some(1), "{needle}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "wanted '{needle}' in: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"));
        assert!(!out.exists());
    };
    // No config.json.
    let d = tmp.path().join("empty");
    std::fs::create_dir(&d).unwrap();
    check(&d, "config.json");
    // Wrong shape for the configured width.
    let d = tmp.path().join("shape");
    small_dir(&d, 32, &[("model.embed_tokens.weight", vec![8, 16])]);
    check(&d, "shape");
    // A tensor a Llama model does not have.
    let d = tmp.path().join("name");
    small_dir(&d, 32, &[("model.layers.0.mlp.experts.weight", vec![4, 4])]);
    check(&d, "not part of a Llama model");
    // Missing tensors.
    let d = tmp.path().join("missing");
    small_dir(&d, 32, &[("model.embed_tokens.weight", vec![8, 32])]);
    check(&d, "lack tensor");
    // A corrupt safetensors header.
    let d = tmp.path().join("corrupt");
    small_dir(&d, 32, &[("model.embed_tokens.weight", vec![8, 32])]);
    std::fs::write(
        d.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7f{",
    )
    .unwrap();
    check(&d, "not a valid safetensors file");
    // Not a Llama model.
    let d = tmp.path().join("arch");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("config.json"), r#"{"architectures": ["BertModel"]}"#).unwrap();
    check(&d, "only Llama-family");
}
