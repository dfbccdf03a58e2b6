//! LoRA adapters at inference: a tiny F32 llama model with an adapter gives the logits of
//! the model with the adapter merged into its weights (prefill and decode); adapters for
//! another model, with bad shapes or bad metadata are refused with a clear error.

use std::collections::HashMap;
use std::sync::Arc;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use edgelm_kernels::ThreadPool;
use edgelm_model::{Logits, LoraAdapter, Model, ModelError};

const C: usize = 64;
const H: usize = 4;
const KV: usize = 2;
const D: usize = 16;
const FF: usize = 96;
const V: usize = 50;
const L: usize = 2;
const R: usize = 4;
const ALPHA: f32 = 6.0;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// (name, [n_out, n_in]) of every block projection.
fn projections() -> Vec<(String, [usize; 2])> {
    let mut v = Vec::new();
    for il in 0..L {
        for (stem, shape) in [
            ("attn_q", [H * D, C]),
            ("attn_k", [KV * D, C]),
            ("attn_v", [KV * D, C]),
            ("attn_output", [C, H * D]),
            ("ffn_gate", [FF, C]),
            ("ffn_up", [FF, C]),
            ("ffn_down", [C, FF]),
        ] {
            v.push((format!("blk.{il}.{stem}.weight"), shape));
        }
    }
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The model's tensors as (name, row-major shape, values).
fn weights() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(5);
    let mut t = vec![(
        "token_embd.weight".to_string(),
        vec![V, C],
        rng.vec(V * C, 1.0),
    )];
    for (name, [o, i]) in projections() {
        let il = &name[..name.find(".attn").or(name.find(".ffn")).unwrap()];
        if name.ends_with("attn_q.weight") {
            let norm: Vec<f32> = rng.vec(C, 0.2).iter().map(|v| v + 1.0).collect();
            t.push((format!("{il}.attn_norm.weight"), vec![C], norm));
        }
        if name.ends_with("ffn_gate.weight") {
            let norm: Vec<f32> = rng.vec(C, 0.2).iter().map(|v| v + 1.0).collect();
            t.push((format!("{il}.ffn_norm.weight"), vec![C], norm));
        }
        t.push((name, vec![o, i], rng.vec(o * i, 0.25)));
    }
    let norm: Vec<f32> = rng.vec(C, 0.2).iter().map(|v| v + 1.0).collect();
    t.push(("output_norm.weight".into(), vec![C], norm));
    t
}

fn model_file(tensors: &[(String, Vec<usize>, Vec<f32>)], ff: usize) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(L as u32)),
        ("llama.embedding_length", Value::U32(C as u32)),
        ("llama.attention.head_count", Value::U32(H as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV as u32)),
        ("llama.feed_forward_length", Value::U32(ff as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.vocab_size", Value::U32(V as u32)),
    ] {
        w.add_metadata(k, v).unwrap();
    }
    for (name, shape, vals) in tensors {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        w.add_tensor(name.clone(), &dims, GgmlType::F32, f32_bytes(vals))
            .unwrap();
    }
    Arc::new(GgufFile::from_bytes(w.to_bytes()).unwrap())
}

/// Base tensor name → (A [R, C], B [OC, R], [OC, C]).
type Adapters = HashMap<String, (Vec<f32>, Vec<f32>, [usize; 2])>;

/// Adapters on every projection.
fn adapters() -> Adapters {
    let mut rng = Rng(17);
    projections()
        .into_iter()
        .map(|(name, [o, i])| (name, (rng.vec(R * i, 0.3), rng.vec(o * R, 0.3), [o, i])))
        .collect()
}

fn adapter_file(ad: &Adapters, md: &[(&str, Value)], a_dims_swapped: bool) -> GgufFile {
    let mut w = GgufWriter::new();
    for (k, v) in md {
        w.add_metadata(*k, v.clone()).unwrap();
    }
    let mut names: Vec<&String> = ad.keys().collect();
    names.sort();
    for name in names {
        let (a, b, [o, i]) = &ad[name];
        let a_dims = if a_dims_swapped {
            [R as u64, *i as u64]
        } else {
            [*i as u64, R as u64]
        };
        w.add_tensor(
            format!("{name}.lora_a"),
            &a_dims,
            GgmlType::F32,
            f32_bytes(a),
        )
        .unwrap();
        w.add_tensor(
            format!("{name}.lora_b"),
            &[R as u64, *o as u64],
            GgmlType::F32,
            f32_bytes(b),
        )
        .unwrap();
    }
    GgufFile::from_bytes(w.to_bytes()).unwrap()
}

fn good_md() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(ALPHA)),
    ]
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let pool = ThreadPool::new(2).unwrap();
    let mut st = model.new_state(32, 8).unwrap();
    // Prefill in batches of 8 (the prompt path), then decode the last two one at a time.
    let n = tokens.len();
    let mut out = model
        .forward(&pool, &mut st, &tokens[..n - 2], Logits::All)
        .unwrap()
        .to_vec();
    for &t in &tokens[n - 2..] {
        out.extend_from_slice(model.forward(&pool, &mut st, &[t], Logits::Last).unwrap());
    }
    out
}

#[test]
fn adapter_logits_equal_the_merged_models() {
    let tensors = weights();
    let ad = adapters();
    let base = Model::load(model_file(&tensors, FF)).unwrap();
    let adapter = LoraAdapter::from_gguf(&adapter_file(&ad, &good_md(), false)).unwrap();
    assert_eq!(adapter.alpha(), ALPHA);
    let with = base.with_lora(&adapter, 1.0).unwrap();
    assert!(with.has_lora());

    // W' = W + (alpha / R) · B·A, in f64.
    let s = ALPHA as f64 / R as f64;
    let merged: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(name, shape, vals)| {
            let Some((a, b, [o, i])) = ad.get(name) else {
                return (name.clone(), shape.clone(), vals.clone());
            };
            let mut w = vals.clone();
            for r in 0..*o {
                for c in 0..*i {
                    let d: f64 = (0..R)
                        .map(|k| b[r * R + k] as f64 * a[k * i + c] as f64)
                        .sum();
                    w[r * i + c] = (w[r * i + c] as f64 + s * d) as f32;
                }
            }
            (name.clone(), shape.clone(), w)
        })
        .collect();
    let merged = Model::load(model_file(&merged, FF)).unwrap();
    let plain = Model::load(model_file(&tensors, FF)).unwrap();

    let tokens: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % V as u32).collect();
    let (la, lm, lp) = (
        logits(&with, &tokens),
        logits(&merged, &tokens),
        logits(&plain, &tokens),
    );
    let max_diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
    };
    let d = max_diff(&la, &lm);
    let moved = max_diff(&la, &lp);
    let top = lm.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    eprintln!(
        "adapter vs merged: max |logit diff| {d:.2e} (max |logit| {top:.1}); the adapter moved \
         logits by {moved:.2}"
    );
    assert!(moved > 0.1, "the adapter changes the logits ({moved})");
    // f32 rounding of the two orders of summation, amplified where a K/V value rounds to the
    // other side of an F16 step in the cache: a few 1e-5 of the logits' range.
    let mut diffs: Vec<f32> = la.iter().zip(&lm).map(|(a, b)| (a - b).abs()).collect();
    diffs.sort_by(f32::total_cmp);
    let median = diffs[diffs.len() / 2];
    eprintln!("median |logit diff| {median:.2e}");
    assert!(d < 2e-4 * top, "adapter vs merged {d} of {top}");
    assert!(
        median < 1e-5 * top,
        "adapter vs merged: median {median} of {top}"
    );

    // The library's merge (what `edgelm lora-merge` writes) gives the same logits.
    let base_file = model_file(&tensors, FF);
    let out = adapter.merge_into_gguf(&base_file, 1.0, false).unwrap();
    let merged2 = Model::load(Arc::new(GgufFile::from_bytes(out.to_bytes()).unwrap())).unwrap();
    let d2 = max_diff(&logits(&merged2, &tokens), &lm);
    eprintln!("merge_into_gguf vs f64 merge: max |logit diff| {d2:.2e}");
    assert!(d2 < 2e-4 * top, "{d2}");
    let e = adapter
        .merge_into_gguf(&model_file(&tensors[..3], FF), 1.0, false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");

    // Scale 0 is the base model.
    let zero = Model::load(model_file(&tensors, FF))
        .unwrap()
        .with_lora(&adapter, 0.0)
        .unwrap();
    assert!(max_diff(&logits(&zero, &tokens), &lp) < 1e-5);
}

#[test]
fn bad_adapters_are_refused_clearly() {
    let tensors = weights();
    let ad = adapters();
    let load = || Model::load(model_file(&tensors, FF)).unwrap();
    let msg = |e: ModelError| e.to_string();

    // An adapter made for a model with another FFN width.
    let other = Model::load(model_file(
        &tensors
            .iter()
            .map(|(n, s, v)| {
                if n.contains("ffn_gate") || n.contains("ffn_up") {
                    (n.clone(), vec![FF + 32, C], vec![0.0; (FF + 32) * C])
                } else if n.contains("ffn_down") {
                    (n.clone(), vec![C, FF + 32], vec![0.0; (FF + 32) * C])
                } else {
                    (n.clone(), s.clone(), v.clone())
                }
            })
            .collect::<Vec<_>>(),
        FF + 32,
    ))
    .unwrap();
    let adapter = LoraAdapter::from_gguf(&adapter_file(&ad, &good_md(), false)).unwrap();
    let e = msg(other.with_lora(&adapter, 1.0).unwrap_err());
    assert!(e.contains("ffn_gate") && e.contains("another model"), "{e}");

    // lora_a stored untransposed ([R, C]): the rank does not match lora_b's.
    let e = msg(LoraAdapter::from_gguf(&adapter_file(&ad, &good_md(), true)).unwrap_err());
    assert!(e.contains("rank"), "{e}");

    // Not an adapter; another architecture; a tensor the model lacks.
    let mut md = good_md();
    md[1] = ("general.type", Value::String("model".into()));
    let e = msg(LoraAdapter::from_gguf(&adapter_file(&ad, &md, false)).unwrap_err());
    assert!(e.contains("general.type"), "{e}");
    let mut md = good_md();
    md[0] = ("general.architecture", Value::String("qwen2".into()));
    let a = LoraAdapter::from_gguf(&adapter_file(&ad, &md, false)).unwrap();
    let e = msg(load().with_lora(&a, 1.0).unwrap_err());
    assert!(e.contains("qwen2"), "{e}");
    let mut extra = ad.clone();
    extra.insert(
        "blk.7.attn_q.weight".into(),
        (vec![0.0; R * C], vec![0.0; H * D * R], [H * D, C]),
    );
    let a = LoraAdapter::from_gguf(&adapter_file(&extra, &good_md(), false)).unwrap();
    let e = msg(load().with_lora(&a, 1.0).unwrap_err());
    assert!(e.contains("blk.7.attn_q.weight"), "{e}");

    // Batched decoding refuses a model with an adapter instead of ignoring it.
    let with = load().with_lora(&adapter, 1.0).unwrap();
    let mut batch = with.new_decode_batch(2).unwrap();
    let mut st = with.new_state(16, 4).unwrap();
    let pool = ThreadPool::new(1).unwrap();
    let e = with
        .forward_decode(&pool, &mut batch, &mut [&mut st], &[1])
        .err()
        .map(msg)
        .unwrap_or_default();
    assert!(e.contains("LoRA"), "{e}");
}
