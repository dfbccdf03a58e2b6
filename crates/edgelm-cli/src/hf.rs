//! Hugging Face model directory → GGUF, as llama.cpp's `convert_hf_to_gguf.py` converts a
//! Llama-family model (`LlamaForCausalLM`): `config.json` hyper-parameters become `llama.*`
//! metadata, `tokenizer.json` (byte-level BPE) becomes `tokenizer.ggml.*` (tokens, types,
//! merges, special ids, the pre-tokenizer found by llama.cpp's hash of a probe text),
//! `tokenizer_config.json` gives the chat template and BOS/EOS, and the `*.safetensors` weights
//! are renamed, transposed to ggml's dim order and — for `q_proj`/`k_proj` — permuted from
//! Hugging Face's rotate-half RoPE layout to ggml's interleaved one (`LlamaModel.permute`).
//!
//! Weights keep their stored type (F32, F16 or BF16); 1-D tensors become F32. The result is
//! an in-memory GGUF for `edgelm quantize` to convert further.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use edgelm_gguf::{GgmlType, GgufWriter, Value};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// llama.cpp's probe text for identifying BPE pre-tokenizers (`get_vocab_base_pre`).
const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// sha256 of the probe's token ids (as Python prints the list) → pre-tokenizer name, for the
/// pre-tokenizers edgelm implements (from llama.cpp's `conversion/base.py`).
const PRE_HASHES: &[(&str, &str)] = &[
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ),
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ),
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ),
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ),
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ),
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ),
    (
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
        "dbrx",
    ),
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ),
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ),
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ),
];

// gguf TokenType values.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn get_u64(cfg: &Json, key: &str) -> Result<u64> {
    cfg.get(key)
        .and_then(Json::as_u64)
        .ok_or_else(|| anyhow!("config.json: '{key}' is missing or not a non-negative integer"))
}

fn get_f64(cfg: &Json, key: &str, default: f64) -> Result<f64> {
    match cfg.get(key) {
        None | Some(Json::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| anyhow!("config.json: '{key}' is not a number")),
    }
}

/// The hyper-parameters convert_hf_to_gguf.py reads for llama.
struct Hparams {
    n_layer: u64,
    n_embd: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    n_ctx: u64,
    n_vocab: u64,
    rope_theta: f64,
    rms_eps: f64,
    tied: bool,
}

fn hparams(cfg: &Json) -> Result<Hparams> {
    let archs: Vec<&str> = cfg
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let model_type = cfg.get("model_type").and_then(Json::as_str).unwrap_or("");
    if !archs.contains(&"LlamaForCausalLM") && model_type != "llama" {
        bail!(
            "unsupported model (architectures {archs:?}, model_type '{model_type}'): only Llama-family \
             models (LlamaForCausalLM) can be converted"
        );
    }
    let n_head = get_u64(cfg, "num_attention_heads")?;
    let h = Hparams {
        n_layer: get_u64(cfg, "num_hidden_layers")?,
        n_embd: get_u64(cfg, "hidden_size")?,
        n_ff: get_u64(cfg, "intermediate_size")?,
        n_head,
        n_head_kv: cfg
            .get("num_key_value_heads")
            .and_then(Json::as_u64)
            .unwrap_or(n_head),
        n_ctx: get_u64(cfg, "max_position_embeddings")?,
        n_vocab: get_u64(cfg, "vocab_size")?,
        rope_theta: get_f64(cfg, "rope_theta", 10000.0)?,
        rms_eps: get_f64(cfg, "rms_norm_eps", 1e-6)?,
        tied: cfg
            .get("tie_word_embeddings")
            .and_then(Json::as_bool)
            .unwrap_or(false),
    };
    if h.n_head == 0
        || h.n_head_kv == 0
        || !h.n_embd.is_multiple_of(h.n_head)
        || !h.n_head.is_multiple_of(h.n_head_kv)
        || h.n_layer == 0
        || h.n_layer > 4096
        || h.n_vocab == 0
        || h.n_vocab > (1 << 24)
    {
        bail!(
            "config.json: inconsistent sizes (hidden_size {}, heads {}, kv heads {}, layers {}, vocab {})",
            h.n_embd,
            h.n_head,
            h.n_head_kv,
            h.n_layer,
            h.n_vocab
        );
    }
    Ok(h)
}

/// The GGUF name of a Hugging Face llama tensor, and whether it needs the RoPE permutation
/// (with the head count to use).
fn map_name(name: &str, h: &Hparams) -> Option<(String, Option<u64>)> {
    match name {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    let (gguf, permute) = match rest {
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(h.n_head)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(h.n_head_kv)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "self_attn.rotary_emb.inv_freq" => return Some((String::new(), None)),
        _ => return None,
    };
    Some((format!("blk.{layer}.{gguf}"), permute))
}

/// `LlamaModel.permute`: rows grouped per head as (2, half) become (half, 2).
fn permute_rows(data: &[u8], n_rows: usize, n_head: usize) -> Result<Vec<u8>> {
    if n_head == 0 || !n_rows.is_multiple_of(2 * n_head) {
        bail!("{n_rows} rows cannot be split into {n_head} heads of rotary pairs");
    }
    let row_bytes = data.len() / n_rows;
    let per_head = n_rows / n_head;
    let half = per_head / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * per_head + j * half + i;
                let dst = h * per_head + i * 2 + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

fn to_f32_bytes(dtype: Dtype, data: &[u8]) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => data.to_vec(),
        Dtype::F16 => data
            .chunks_exact(2)
            .flat_map(|b| {
                edgelm_kernels::f16_to_f32(u16::from_le_bytes([b[0], b[1]])).to_le_bytes()
            })
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .flat_map(|b| {
                edgelm_kernels::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])).to_le_bytes()
            })
            .collect(),
        other => bail!("unsupported weight type {other:?} (F32, F16 or BF16 expected)"),
    })
}

fn expected_shape(gguf_name: &str, h: &Hparams) -> Option<Vec<u64>> {
    let (e, f, v) = (h.n_embd, h.n_ff, h.n_vocab);
    let kv = h.n_embd / h.n_head * h.n_head_kv;
    let suffix = gguf_name
        .rsplit_once("blk.")
        .map_or(gguf_name, |(_, r)| r.split_once('.').map_or(r, |x| x.1));
    Some(match suffix {
        "token_embd.weight" | "output.weight" => vec![e, v],
        "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => vec![e],
        "attn_q.weight" | "attn_output.weight" => vec![e, e],
        "attn_k.weight" | "attn_v.weight" => vec![e, kv],
        "ffn_gate.weight" | "ffn_up.weight" => vec![e, f],
        "ffn_down.weight" => vec![f, e],
        _ => return None,
    })
}

/// A token string from tokenizer_config.json (`"<s>"` or `{"content": "<s>"}`).
fn token_content(v: &Json) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Json::as_str))
}

fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Adds the `tokenizer.*` keys.
fn add_tokenizer(
    w: &mut GgufWriter,
    dir: &Path,
    h: &Hparams,
    pre_override: Option<&str>,
) -> Result<()> {
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let model = tj
        .get("model")
        .ok_or_else(|| anyhow!("tokenizer.json: no 'model'"))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        bail!("tokenizer.json: only BPE tokenizers are supported");
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| anyhow!("tokenizer.json: model.vocab is missing"))?;
    let n_vocab = h.n_vocab as usize;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![NORMAL; n_vocab];
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .filter(|&i| (i as usize) < n_vocab)
            .ok_or_else(|| anyhow!("tokenizer.json: token {tok:?} has id {id}, outside the vocabulary of {n_vocab}"))?;
        tokens[id as usize] = Some(tok.clone());
    }
    let mut by_content: HashMap<String, u32> = HashMap::new();
    if let Some(added) = tj.get("added_tokens").and_then(Json::as_array) {
        for a in added {
            let id = a
                .get("id")
                .and_then(Json::as_u64)
                .filter(|&i| (i as usize) < n_vocab)
                .ok_or_else(|| anyhow!("tokenizer.json: an added token has no valid id"))?
                as usize;
            let content = a
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| anyhow!("tokenizer.json: added token {id} has no content"))?;
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            tokens[id] = Some(content.to_owned());
            types[id] = if special || looks_special(content) {
                CONTROL
            } else {
                USER_DEFINED
            };
            by_content.insert(content.to_owned(), id as u32);
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();
    for (tok, id) in vocab {
        by_content
            .entry(tok.clone())
            .or_insert(id.as_u64().unwrap_or(0) as u32);
    }
    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        Some(m) => m
            .iter()
            .map(|e| match e {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )),
                _ => Err(anyhow!(
                    "tokenizer.json: a merge is neither \"a b\" nor [a, b]"
                )),
            })
            .collect::<Result<_>>()?,
        None => bail!("tokenizer.json: model.merges is missing"),
    };
    let add_prefix_space = tj
        .get("pre_tokenizer")
        .and_then(|p| p.get("add_prefix_space"))
        .and_then(Json::as_bool);
    if let Some(b) = add_prefix_space {
        w.add_metadata("tokenizer.ggml.add_space_prefix", b)?;
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    if let Some(b) = tc.get("add_bos_token").and_then(Json::as_bool) {
        w.add_metadata("tokenizer.ggml.add_bos_token", b)?;
    }
    if let Some(b) = tc.get("add_eos_token").and_then(Json::as_bool) {
        w.add_metadata("tokenizer.ggml.add_eos_token", b)?;
    }
    w.add_metadata("tokenizer.ggml.model", "gpt2")?;
    w.add_metadata("tokenizer.ggml.pre", "default")?;
    w.add_metadata("tokenizer.ggml.tokens", tokens)?;
    w.add_metadata("tokenizer.ggml.token_type", types)?;
    w.add_metadata("tokenizer.ggml.merges", merges)?;
    let cfg_json = read_json(&dir.join("config.json"))?;
    for (which, key) in [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
    ] {
        let from_tc = tc
            .get(format!("{which}_token"))
            .and_then(token_content)
            .and_then(|c| by_content.get(c).copied());
        let from_cfg = cfg_json
            .get(format!("{which}_token_id"))
            .and_then(Json::as_u64)
            .map(|v| v as u32);
        if let Some(id) = from_tc.or(from_cfg).filter(|&i| (i as usize) < n_vocab) {
            w.add_metadata(key, Value::U32(id))?;
        }
    }
    if let Some(t) = tc.get("chat_template").and_then(Json::as_str) {
        w.add_metadata("tokenizer.chat_template", t)?;
    }
    let pre = match pre_override {
        Some(p) => p.to_owned(),
        None => detect_pre(w)?,
    };
    w.set_metadata("tokenizer.ggml.pre", pre)?;
    Ok(())
}

/// llama.cpp's pre-tokenizer detection: encode the probe text with each pre-tokenizer edgelm
/// knows and look the ids' hash up in llama.cpp's table.
fn detect_pre(w: &mut GgufWriter) -> Result<String> {
    let mut tried = std::collections::HashSet::new();
    for (_, name) in PRE_HASHES {
        if !tried.insert(*name) {
            continue;
        }
        w.set_metadata("tokenizer.ggml.pre", *name)?;
        let Ok(tok) = edgelm_tokenizer::Tokenizer::from_gguf(w.metadata()) else {
            continue;
        };
        let Ok(ids) = tok.encode(CHKTXT, true, false) else {
            continue;
        };
        let list = format!(
            "[{}]",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let hash = format!("{:x}", Sha256::digest(list.as_bytes()));
        if let Some((_, found)) = PRE_HASHES.iter().find(|(h, _)| *h == hash) {
            if found == name {
                return Ok((*found).to_owned());
            }
        }
    }
    bail!(
        "cannot identify the tokenizer's pre-tokenizer (none of edgelm's reproduces a known \
         llama.cpp hash); pass --tokenizer-pre NAME (e.g. smollm, llama-bpe, gpt-2, qwen2)"
    )
}

/// Converts the model directory `dir` into GGUF (F32/F16/BF16 weights as stored).
pub fn convert_dir(dir: &Path, pre_override: Option<&str>) -> Result<Vec<u8>> {
    let cfg = read_json(&dir.join("config.json"))?;
    let h = hparams(&cfg)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.safetensors files in {}", dir.display());
    }
    // name → (dims in ggml order, type, data)
    let mut tensors: BTreeMap<String, (Vec<u64>, GgmlType, Vec<u8>)> = BTreeMap::new();
    let mut all_f32 = true;
    let mut any_bf16 = false;
    for path in &files {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        for (name, view) in st.tensors() {
            let (gguf_name, permute) = map_name(&name, &h).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {name} is not part of a Llama model",
                    path.display()
                )
            })?;
            if gguf_name.is_empty() {
                continue;
            }
            let shape: Vec<u64> = view.shape().iter().rev().map(|&d| d as u64).collect();
            let want = expected_shape(&gguf_name, &h)
                .ok_or_else(|| anyhow!("tensor {name}: unexpected name"))?;
            if shape != want {
                bail!(
                    "tensor {name} has shape {:?}, config.json implies {:?}",
                    view.shape(),
                    want.iter().rev().collect::<Vec<_>>()
                );
            }
            let one_d = shape.len() == 1;
            let (ty, data) = match (view.dtype(), one_d) {
                (Dtype::F32, _) => (GgmlType::F32, view.data().to_vec()),
                (d, true) => (GgmlType::F32, to_f32_bytes(d, view.data())?),
                (Dtype::F16, false) => (GgmlType::F16, view.data().to_vec()),
                (Dtype::BF16, false) => (GgmlType::BF16, view.data().to_vec()),
                (d, false) => {
                    bail!("tensor {name}: unsupported type {d:?} (F32, F16 or BF16 expected)")
                }
            };
            if !one_d {
                all_f32 &= ty == GgmlType::F32;
                any_bf16 |= ty == GgmlType::BF16;
            }
            let data = match permute {
                Some(n) => permute_rows(&data, shape[1] as usize, n as usize)
                    .with_context(|| format!("tensor {name}"))?,
                None => data,
            };
            if tensors
                .insert(gguf_name.clone(), (shape, ty, data))
                .is_some()
            {
                bail!("tensor {name} appears twice");
            }
        }
    }
    let mut required = vec![
        "token_embd.weight".to_owned(),
        "output_norm.weight".to_owned(),
    ];
    if !h.tied {
        required.push("output.weight".into());
    }
    for l in 0..h.n_layer {
        for n in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_norm",
            "ffn_norm",
        ] {
            required.push(format!("blk.{l}.{n}.weight"));
        }
    }
    for r in &required {
        if !tensors.contains_key(r) {
            bail!(
                "the safetensors files lack tensor {r} (for {} layers)",
                h.n_layer
            );
        }
    }
    if h.tied {
        tensors.remove("output.weight");
    }

    let mut w = GgufWriter::new();
    let name = cfg
        .get("_name_or_path")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            dir.file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned())
        });
    w.add_metadata("general.architecture", "llama")?;
    w.add_metadata("general.type", "model")?;
    w.add_metadata("general.name", name)?;
    w.add_metadata("llama.block_count", Value::U32(h.n_layer as u32))?;
    w.add_metadata("llama.context_length", Value::U32(h.n_ctx as u32))?;
    w.add_metadata("llama.embedding_length", Value::U32(h.n_embd as u32))?;
    w.add_metadata("llama.feed_forward_length", Value::U32(h.n_ff as u32))?;
    w.add_metadata("llama.attention.head_count", Value::U32(h.n_head as u32))?;
    w.add_metadata(
        "llama.attention.head_count_kv",
        Value::U32(h.n_head_kv as u32),
    )?;
    w.add_metadata("llama.rope.freq_base", Value::F32(h.rope_theta as f32))?;
    w.add_metadata(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(h.rms_eps as f32),
    )?;
    let file_type = if all_f32 {
        0
    } else if any_bf16 {
        32
    } else {
        1
    };
    w.add_metadata("general.file_type", Value::U32(file_type))?;
    w.add_metadata("llama.vocab_size", Value::U32(h.n_vocab as u32))?;
    w.add_metadata(
        "llama.rope.dimension_count",
        Value::U32((h.n_embd / h.n_head) as u32),
    )?;
    add_tokenizer(&mut w, dir, &h, pre_override)?;
    // convert_hf_to_gguf.py writes tensors in the safetensors order; edgelm's quantizer
    // reorders them as llama.cpp does anyway.
    for (name, (dims, ty, data)) in tensors {
        w.add_tensor(name, &dims, ty, data)?;
    }
    Ok(w.to_bytes())
}
