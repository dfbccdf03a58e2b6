//! LoRA: the op pair against finite differences; the whole model over a quantized base
//! against the f32 training model on the dequantized (and merged) weights; dropout's
//! backward; export; the loop (learning, exact resume).

use std::sync::Arc;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};

use super::base::FrozenBase;
use super::model::{backward, forward, LoraWorkspace};
use super::trainer::LoraTrainer;
use super::*;
use crate::optim::{AdamWConfig, Schedule};
use crate::train::{Dataset, TrainOptions};
use crate::{ConfigFile, TrainModel, Workspace, IGNORE};

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

#[test]
fn lora_op_backward_matches_finite_differences() {
    let sh = LoraShape {
        n: 5,
        c: 7,
        oc: 6,
        r: 3,
        scale: 2.5,
    };
    let mut rng = Rng(3);
    let x = rng.vec(sh.n * sh.c, 1.0);
    let a = rng.vec(sh.r * sh.c, 0.5);
    let b = rng.vec(sh.oc * sh.r, 0.5);
    let base_y = rng.vec(sh.n * sh.oc, 1.0);
    let gy = rng.vec(sh.n * sh.oc, 1.0);
    // L = Σ gy ⊙ y
    let loss = |x: &[f32], a: &[f32], b: &[f32]| -> f64 {
        let mut y = base_y.clone();
        let mut u = vec![0.0; sh.n * sh.r];
        lora_forward(&mut y, &mut u, x, a, b, sh);
        y.iter().zip(&gy).map(|(&p, &q)| p as f64 * q as f64).sum()
    };
    let mut y = base_y.clone();
    let mut u = vec![0.0; sh.n * sh.r];
    lora_forward(&mut y, &mut u, &x, &a, &b, sh);
    let (mut dx, mut da, mut db, mut du) = (
        vec![0.0; x.len()],
        vec![0.0; a.len()],
        vec![0.0; b.len()],
        vec![0.0; sh.n * sh.r],
    );
    lora_backward(&mut dx, &mut da, &mut db, &mut du, &gy, &x, &u, &a, &b, sh);
    let h = 1e-2f32;
    let mut worst = 0.0f64;
    for (which, g) in [(0, &dx), (1, &da), (2, &db)] {
        for i in 0..g.len() {
            let mut p = [x.clone(), a.clone(), b.clone()];
            p[which][i] += h;
            let lp = loss(&p[0], &p[1], &p[2]);
            p[which][i] -= 2.0 * h;
            let lm = loss(&p[0], &p[1], &p[2]);
            let fd = (lp - lm) / (2.0 * h as f64);
            let err = (fd - g[i] as f64).abs() / (1.0 + fd.abs());
            worst = worst.max(err);
        }
    }
    eprintln!("lora op: worst relative error {worst:.2e}");
    assert!(worst < 2e-4, "{worst}");
}

fn config(tied: bool) -> edgelm_model::ModelConfig {
    ConfigFile {
        arch: "llama".into(),
        n_layer: 2,
        n_embd: 32,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        n_ff: 64,
        n_vocab: 40,
        n_ctx_train: 64,
        rms_eps: 1e-5,
        rope_theta: None,
        tied_output: tied,
    }
    .to_model_config()
    .unwrap()
}

/// A random model written as GGUF with its matrices in `ty` (Q8_0: a quantized base).
fn quantized_file(tied: bool, ty: GgmlType) -> Arc<GgufFile> {
    let cfg = config(tied);
    let mut m = TrainModel::random(cfg.clone(), 9).unwrap();
    let mut rng = Rng(11);
    for p in m.params.iter_mut() {
        *p = if *p == 1.0 {
            1.0 + 0.2 * rng.next()
        } else {
            0.3 * rng.next()
        };
    }
    let mut w = GgufWriter::new();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(cfg.n_layer as u32)),
        ("llama.embedding_length", Value::U32(cfg.n_embd as u32)),
        ("llama.attention.head_count", Value::U32(cfg.n_head as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(cfg.n_head_kv as u32),
        ),
        ("llama.feed_forward_length", Value::U32(cfg.n_ff as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.vocab_size", Value::U32(cfg.n_vocab as u32)),
    ];
    for (k, v) in md {
        w.add_metadata(k, v).unwrap();
    }
    for spec in m.layout().specs() {
        let vals = &m.params[spec.range()];
        let dims: Vec<u64> = spec.shape.iter().rev().map(|&d| d as u64).collect();
        if spec.is_matrix() && ty == GgmlType::Q8_0 {
            let row = spec.shape[1];
            let rb = row / 32 * 34;
            let mut bytes = vec![0u8; spec.shape[0] * rb];
            for (xr, br) in vals.chunks_exact(row).zip(bytes.chunks_exact_mut(rb)) {
                edgelm_kernels::quantize_activation(GgmlType::Q8_0, xr, br).unwrap();
            }
            w.add_tensor(spec.name.clone(), &dims, GgmlType::Q8_0, bytes)
                .unwrap();
        } else {
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.add_tensor(spec.name.clone(), &dims, GgmlType::F32, bytes)
                .unwrap();
        }
    }
    Arc::new(GgufFile::from_bytes(w.to_bytes()).unwrap())
}

fn lora_config(dropout: f32) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: LoraTarget::ALL.to_vec(),
    }
}

/// Adapters with non-zero B (a fresh adapter's B is zero, which hides half the math).
fn random_adapters(cfg: &edgelm_model::ModelConfig, dropout: f32) -> LoraParams {
    let mut p = LoraParams::new(cfg, lora_config(dropout), 4).unwrap();
    let mut rng = Rng(21);
    for i in 0..p.specs().len() {
        let (_, rb) = p.ranges(i);
        for v in &mut p.values[rb] {
            *v = 0.2 * rng.next();
        }
    }
    p
}

const B: usize = 2;
const T: usize = 6;

fn batch() -> (Vec<u32>, Vec<u32>) {
    let tokens: Vec<u32> = (0..B * T).map(|i| ((i * 7 + 3) % 40) as u32).collect();
    let mut targets: Vec<u32> = (0..B * T).map(|i| ((i * 11 + 5) % 40) as u32).collect();
    targets[4] = IGNORE;
    (tokens, targets)
}

fn lora_grads(
    base: &FrozenBase,
    lora: &LoraParams,
    seed: Option<u64>,
) -> (f32, Vec<f32>, Vec<f32>) {
    let (tokens, targets) = batch();
    let mut ws = LoraWorkspace::new(base, lora, B, T).unwrap();
    let loss = forward(base, lora, &mut ws, &tokens, &targets, seed).unwrap();
    let logits = ws.logits().unwrap().to_vec();
    let mut g = vec![0.0; lora.n_params()];
    backward(base, lora, &mut ws, &mut g, 1.0).unwrap();
    (loss, g, logits)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |a, &x| a.max(x.abs()))
}

#[test]
fn quantized_base_gradient_equals_the_f32_path_on_dequantized_weights() {
    for tied in [true, false] {
        let file = quantized_file(tied, GgmlType::Q8_0);
        let q_base = FrozenBase::from_gguf(Arc::clone(&file)).unwrap();
        assert!(q_base.owned_bytes() < 4 * 2000, "matrices stay in the file");
        let deq = TrainModel::from_gguf(&file).unwrap();
        let f_base = FrozenBase::from_train_model(&deq);
        let lora = random_adapters(q_base.config(), 0.0);
        let (lq, gq, _) = lora_grads(&q_base, &lora, None);
        let (lf, gf, _) = lora_grads(&f_base, &lora, None);
        let scale = max_abs(&gf);
        let diff = gq
            .iter()
            .zip(&gf)
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        eprintln!("tied {tied}: loss {lq} vs {lf}, max grad diff {diff:.2e} of {scale:.2e}");
        assert!((lq - lf).abs() < 1e-5, "{lq} vs {lf}");
        assert!(diff <= 1e-5 * scale, "{diff} of {scale}");
    }
}

/// With `W' = W + s·B·A`, the full model's gradient `G = ∂L/∂W'` gives the adapters'
/// gradients `∂L/∂A = s·Bᵀ·G` and `∂L/∂B = s·G·Aᵀ`: the LoRA path over the quantized base
/// must agree with the (finite-difference-tested) f32 model on the merged weights.
#[test]
fn adapter_gradients_match_the_full_models_gradient_on_merged_weights() {
    let file = quantized_file(true, GgmlType::Q8_0);
    let base = FrozenBase::from_gguf(Arc::clone(&file)).unwrap();
    let lora = random_adapters(base.config(), 0.0);
    let (loss, g, logits) = lora_grads(&base, &lora, None);

    let mut merged = TrainModel::from_gguf(&file).unwrap();
    let layout = merged.layout().clone();
    lora.merge_into(&layout, &mut merged.params).unwrap();
    let (tokens, targets) = batch();
    let mut ws = Workspace::new(&merged, B, T).unwrap();
    let mloss = forward_full(&merged, &mut ws, &tokens, &targets);
    let mlogits = ws.logits().unwrap().to_vec();
    let ldiff = logits
        .iter()
        .zip(&mlogits)
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!((loss - mloss).abs() < 1e-4, "{loss} vs {mloss}");
    assert!(ldiff < 1e-4, "logits differ by {ldiff}");
    let mut gw = vec![0.0; layout.n_params()];
    crate::backward(&merged, &mut ws, &mut gw, 1.0).unwrap();

    let (r, s) = (lora.config().rank, lora.config().scale());
    let mut worst = 0.0f32;
    for (i, spec) in lora.specs().iter().enumerate() {
        let gm = &gw[layout.get(&spec.base_name()).unwrap().range()];
        let (ra, rb) = lora.ranges(i);
        let (a, b) = (&lora.values[ra.clone()], &lora.values[rb.clone()]);
        let (oc, c) = (spec.n_out, spec.n_in);
        // dA[r, c] = s Σ_o B[o, r] G[o, c]; dB[o, r] = s Σ_c G[o, c] A[r, c]
        let mut da = vec![0.0f32; r * c];
        let mut db = vec![0.0f32; oc * r];
        for o in 0..oc {
            for k in 0..r {
                for j in 0..c {
                    da[k * c + j] += s * b[o * r + k] * gm[o * c + j];
                    db[o * r + k] += s * gm[o * c + j] * a[k * c + j];
                }
            }
        }
        for (want, got) in [(&da, &g[ra]), (&db, &g[rb])] {
            let sc = max_abs(want).max(1e-6);
            let d = want
                .iter()
                .zip(got)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(d / sc);
        }
    }
    eprintln!("adapter grads vs merged full model: worst {worst:.2e} of max|g|");
    assert!(worst < 1e-4, "{worst}");
}

fn forward_full(m: &TrainModel, ws: &mut Workspace, tokens: &[u32], targets: &[u32]) -> f32 {
    crate::forward(m, ws, tokens, targets).unwrap()
}

#[test]
fn a_fresh_adapter_leaves_the_model_unchanged() {
    let file = quantized_file(false, GgmlType::Q8_0);
    let base = FrozenBase::from_gguf(Arc::clone(&file)).unwrap();
    let lora = LoraParams::new(base.config(), lora_config(0.0), 1).unwrap();
    assert!(max_abs(&lora.values) > 0.0, "A is initialised");
    let (loss, _, _) = lora_grads(&base, &lora, None);
    let m = TrainModel::from_gguf(&file).unwrap();
    let (tokens, targets) = batch();
    let mut ws = Workspace::new(&m, B, T).unwrap();
    let full = forward_full(&m, &mut ws, &tokens, &targets);
    assert!((loss - full).abs() < 1e-5, "{loss} vs {full}");
}

/// With dropout the gradient is that of the loss under the step's fixed masks.
#[test]
fn dropout_gradient_matches_finite_differences() {
    let file = quantized_file(true, GgmlType::F32);
    let base = FrozenBase::from_gguf(Arc::clone(&file)).unwrap();
    let mut lora = random_adapters(base.config(), 0.3);
    let seed = Some(77);
    let (_, g, _) = lora_grads(&base, &lora, seed);
    let (l_no, _, _) = lora_grads(&base, &lora, None);
    let (l_drop, _, _) = lora_grads(&base, &lora, seed);
    assert!((l_no - l_drop).abs() > 1e-6, "dropout changes the loss");
    let (tokens, targets) = batch();
    let mut ws = LoraWorkspace::new(&base, &lora, B, T).unwrap();
    let scale = max_abs(&g) as f64;
    let mut worst = 0.0f64;
    let n = lora.n_params();
    for i in (0..n).step_by(n / 61) {
        let orig = lora.values[i];
        let h = 1e-2;
        lora.values[i] = orig + h;
        let lp = forward(&base, &lora, &mut ws, &tokens, &targets, seed).unwrap() as f64;
        lora.values[i] = orig - h;
        let lm = forward(&base, &lora, &mut ws, &tokens, &targets, seed).unwrap() as f64;
        lora.values[i] = orig;
        let fd = (lp - lm) / (2.0 * h as f64);
        worst = worst.max((fd - g[i] as f64).abs() / scale);
    }
    eprintln!("dropout: worst FD error {worst:.2e} of max|g|");
    assert!(worst < 3e-3, "{worst}");
}

#[test]
fn adapters_for_another_model_are_refused() {
    let file = quantized_file(true, GgmlType::Q8_0);
    let base = FrozenBase::from_gguf(file).unwrap();
    let mut other = config(true);
    other.n_ff = 96;
    let lora = LoraParams::new(&other, lora_config(0.0), 1).unwrap();
    let e = LoraWorkspace::new(&base, &lora, 1, 4).err().unwrap();
    assert!(e.to_string().contains("ffn_gate"), "{e}");
    assert!(LoraTarget::parse_list("q,zz").is_err());
    assert_eq!(
        LoraTarget::parse_list("v, q,q").unwrap(),
        vec![LoraTarget::Q, LoraTarget::V]
    );
    let bad = LoraConfig {
        rank: 0,
        ..lora_config(0.0)
    };
    assert!(LoraParams::new(&other, bad, 1).is_err());
}

#[test]
fn exported_adapter_has_llama_cpp_layout() {
    let file = quantized_file(true, GgmlType::Q8_0);
    let base = FrozenBase::from_gguf(file).unwrap();
    let lora = random_adapters(base.config(), 0.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.gguf");
    lora.write_gguf("llama", &path, false).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_str("general.type").unwrap(), "adapter");
    assert_eq!(md.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(md.get_f32("adapter.lora.alpha").unwrap(), 8.0);
    let a = f.tensor("blk.1.ffn_down.weight.lora_a").unwrap();
    let b = f.tensor("blk.1.ffn_down.weight.lora_b").unwrap();
    // ggml dims: A [n_in, r], B [r, n_out]
    assert_eq!(a.dims, vec![64, 4]);
    assert_eq!(b.dims, vec![4, 32]);
    let i = lora.index(1, LoraTarget::Down).unwrap();
    let (ra, _) = lora.ranges(i);
    let mut back = vec![0.0f32; ra.len()];
    edgelm_kernels::dequantize_row(a.ty, f.tensor_data(a), &mut back).unwrap();
    assert_eq!(back, lora.values[ra]);
}

fn options(total_steps: u64) -> TrainOptions {
    TrainOptions {
        batch: 2,
        seq_len: 8,
        accum: 2,
        schedule: Schedule {
            max_lr: 1e-2,
            min_lr: 1e-3,
            warmup_steps: 2,
            total_steps,
        },
        adamw: AdamWConfig::default(),
        clip: 1.0,
        seed: 5,
    }
}

fn stream(n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| [1u32, 4, 9, 16, 8, 2, 11, 30, 22][i % 9])
        .collect()
}

#[test]
fn lora_training_learns_and_resumes_exactly() {
    let file = quantized_file(true, GgmlType::Q8_0);
    let (train, eval) = Dataset::from_stream(&stream(1200), 8).split(0.1);
    let new = || {
        let base = FrozenBase::from_gguf(Arc::clone(&file)).unwrap();
        let lora = LoraParams::new(base.config(), lora_config(0.1), 3).unwrap();
        LoraTrainer::new(base, lora, options(60)).unwrap()
    };
    let mut tr = new();
    let before = tr.eval(&eval, 4).unwrap();
    for _ in 0..60 {
        tr.step(&train).unwrap();
    }
    let after = tr.eval(&eval, 4).unwrap();
    eprintln!("LoRA on a frozen Q8_0 base: eval loss {before:.3} -> {after:.3}");
    assert!(after < 0.5 * before, "{before} -> {after}");

    // Interrupted after 3 steps, resumed: the same losses and adapters as straight through.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.safetensors");
    let mut straight = new();
    let mut a = new();
    let mut losses = Vec::new();
    for i in 0..6 {
        losses.push(straight.step(&train).unwrap().loss);
        if i < 3 {
            a.step(&train).unwrap();
        }
    }
    a.save(&ck).unwrap();
    let base = FrozenBase::from_gguf(Arc::clone(&file)).unwrap();
    let mut b = LoraTrainer::resume(base, &ck, None).unwrap();
    for loss in &losses[3..] {
        assert_eq!(b.step(&train).unwrap().loss, *loss);
    }
    assert_eq!(b.lora.values, straight.lora.values);
    assert_eq!(b.opt.m, straight.opt.m);

    // A full-training checkpoint is not a LoRA checkpoint.
    let other = quantized_file(false, GgmlType::Q8_0);
    let e = LoraTrainer::resume(FrozenBase::from_gguf(other).unwrap(), &ck, None)
        .err()
        .unwrap();
    assert!(e.to_string().contains("another model"), "{e}");
}
