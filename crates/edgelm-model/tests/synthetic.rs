//! A tiny synthetic llama model (2 layers, C = 64, 4 query heads sharing 2 KV heads, D = 16),
//! written with `GgufWriter`, checked against a naive f64 forward of the same math written
//! here; plus batching, rollback and error cases.

use std::sync::Arc;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use edgelm_kernels::ThreadPool;
use edgelm_model::{Logits, Model, ModelError};

const C: usize = 64;
const H: usize = 4;
const KV: usize = 2;
const D: usize = 16;
const FF: usize = 128;
const V: usize = 96;
const L: usize = 2;
const EPS: f32 = 1e-5;
const THETA: f64 = 10000.0;

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

/// f32 weights of the model, as the reference sees them (after any quantization round trip).
struct Ref {
    tensors: std::collections::HashMap<String, Vec<f32>>,
}

impl Ref {
    fn get(&self, name: &str) -> &[f32] {
        &self.tensors[name]
    }
}

struct Spec {
    matrix_ty: GgmlType,
    tied: bool,
    skip: Option<&'static str>,
    bad_dims: Option<&'static str>,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            matrix_ty: GgmlType::F32,
            tied: false,
            skip: None,
            bad_dims: None,
        }
    }
}

fn encode(ty: GgmlType, x: &[f32], row: usize) -> (Vec<u8>, Vec<f32>) {
    match ty {
        GgmlType::F32 => (x.iter().flat_map(|v| v.to_le_bytes()).collect(), x.to_vec()),
        GgmlType::Q8_0 => {
            let rb = row / 32 * 34;
            let mut bytes = vec![0u8; x.len() / row * rb];
            let mut back = vec![0.0f32; x.len()];
            for ((xr, br), yr) in x
                .chunks_exact(row)
                .zip(bytes.chunks_exact_mut(rb))
                .zip(back.chunks_exact_mut(row))
            {
                edgelm_kernels::quantize_activation(GgmlType::Q8_0, xr, br).expect("q8_0");
                edgelm_kernels::dequantize_row(GgmlType::Q8_0, br, yr).expect("deq");
            }
            (bytes, back)
        }
        other => panic!("unsupported test type {other}"),
    }
}

fn build(spec: &Spec) -> (Arc<GgufFile>, Ref) {
    let mut rng = Rng(42);
    let mut w = GgufWriter::new();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(L as u32)),
        ("llama.embedding_length", Value::U32(C as u32)),
        ("llama.attention.head_count", Value::U32(H as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV as u32)),
        ("llama.feed_forward_length", Value::U32(FF as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(EPS)),
        ("llama.rope.freq_base", Value::F32(THETA as f32)),
        ("llama.vocab_size", Value::U32(V as u32)),
    ];
    for (k, v) in md {
        w.add_metadata(k, v).expect("metadata");
    }
    let mut tensors = std::collections::HashMap::new();
    let mut add = |w: &mut GgufWriter,
                   name: String,
                   dims: Vec<usize>,
                   ty: GgmlType,
                   scale: f32,
                   offset: f32| {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = rng.vec(n, scale).into_iter().map(|v| v + offset).collect();
        let (bytes, back) = encode(ty, &x, dims[0]);
        tensors.insert(name.clone(), back);
        if spec.skip == Some(name.as_str()) {
            return;
        }
        let mut dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let mut bytes = bytes;
        if spec.bad_dims == Some(name.as_str()) {
            // Same byte count, transposed shape.
            dims.swap(0, 1);
            if ty != GgmlType::F32 {
                bytes = vec![0; (dims[0] as usize / 32) * 34 * dims[1] as usize];
            }
        }
        w.add_tensor(name, &dims, ty, bytes).expect("tensor");
    };
    let mt = spec.matrix_ty;
    add(&mut w, "token_embd.weight".into(), vec![C, V], mt, 1.0, 0.0);
    add(
        &mut w,
        "output_norm.weight".into(),
        vec![C],
        GgmlType::F32,
        0.2,
        1.0,
    );
    if !spec.tied {
        add(&mut w, "output.weight".into(), vec![C, V], mt, 0.3, 0.0);
    }
    for il in 0..L {
        let n = |s: &str| format!("blk.{il}.{s}");
        add(
            &mut w,
            n("attn_norm.weight"),
            vec![C],
            GgmlType::F32,
            0.2,
            1.0,
        );
        add(&mut w, n("attn_q.weight"), vec![C, H * D], mt, 0.3, 0.0);
        add(&mut w, n("attn_k.weight"), vec![C, KV * D], mt, 0.3, 0.0);
        add(&mut w, n("attn_v.weight"), vec![C, KV * D], mt, 0.3, 0.0);
        add(
            &mut w,
            n("attn_output.weight"),
            vec![H * D, C],
            mt,
            0.2,
            0.0,
        );
        add(
            &mut w,
            n("ffn_norm.weight"),
            vec![C],
            GgmlType::F32,
            0.2,
            1.0,
        );
        add(&mut w, n("ffn_gate.weight"), vec![C, FF], mt, 0.3, 0.0);
        add(&mut w, n("ffn_up.weight"), vec![C, FF], mt, 0.3, 0.0);
        add(&mut w, n("ffn_down.weight"), vec![FF, C], mt, 0.2, 0.0);
    }
    let file = GgufFile::from_bytes(w.to_bytes()).expect("parse synthetic file");
    (Arc::new(file), Ref { tensors })
}

// ---- naive f64 reference --------------------------------------------------------------------

fn matvec(w: &[f32], n_in: usize, x: &[f64]) -> Vec<f64> {
    w.chunks_exact(n_in)
        .map(|row| row.iter().zip(x).map(|(&a, &b)| a as f64 * b).sum())
        .collect()
}

fn rmsnorm(x: &[f64], w: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + EPS as f64).sqrt();
    x.iter().zip(w).map(|(v, &g)| v * s * g as f64).collect()
}

fn rope(x: &mut [f64], pos: usize) {
    for head in x.chunks_exact_mut(D) {
        for i in 0..D / 2 {
            let th = pos as f64 * THETA.powf(-2.0 * i as f64 / D as f64);
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * th.cos() - b * th.sin();
            head[2 * i + 1] = a * th.sin() + b * th.cos();
        }
    }
}

fn reference_forward(r: &Ref, tied: bool, tokens: &[u32]) -> Vec<Vec<f64>> {
    let emb = r.get("token_embd.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            emb[t as usize * C..(t as usize + 1) * C]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for il in 0..L {
        let n = |s: &str| format!("blk.{il}.{s}");
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let h = rmsnorm(x, r.get(&n("attn_norm.weight")));
            let mut q = matvec(r.get(&n("attn_q.weight")), C, &h);
            let mut k = matvec(r.get(&n("attn_k.weight")), C, &h);
            rope(&mut q, p);
            rope(&mut k, p);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(r.get(&n("attn_v.weight")), C, &h));
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0.0f64; H * D];
            for hh in 0..H {
                let kh = hh / (H / KV);
                let q = &qs[p][hh * D..(hh + 1) * D];
                let s: Vec<f64> = (0..=p)
                    .map(|j| {
                        let k = &ks[j][kh * D..(kh + 1) * D];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (D as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    let pj = (sj - m).exp() / z;
                    for d in 0..D {
                        att[hh * D + d] += pj * vs[j][kh * D + d];
                    }
                }
            }
            let o = matvec(r.get(&n("attn_output.weight")), H * D, &att);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            let h = rmsnorm(x, r.get(&n("ffn_norm.weight")));
            let g = matvec(r.get(&n("ffn_gate.weight")), C, &h);
            let u = matvec(r.get(&n("ffn_up.weight")), C, &h);
            let hid: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let o = matvec(r.get(&n("ffn_down.weight")), FF, &hid);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
        }
    }
    let out = r.get(if tied {
        "token_embd.weight"
    } else {
        "output.weight"
    });
    xs.iter()
        .map(|x| matvec(out, C, &rmsnorm(x, r.get("output_norm.weight"))))
        .collect()
}

const TOKENS: [u32; 11] = [3, 17, 95, 0, 42, 42, 7, 63, 88, 1, 50];

fn pool() -> ThreadPool {
    ThreadPool::new(2).expect("pool")
}

/// Max |ours - ref| / (max |ref| over the row), over all rows.
fn max_rel_row_err(ours: &[f32], reference: &[Vec<f64>]) -> f64 {
    let mut worst = 0.0f64;
    for (t, r) in reference.iter().enumerate() {
        let scale = r.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, rv) in r.iter().enumerate() {
            worst = worst.max((ours[t * V + i] as f64 - rv).abs() / scale);
        }
    }
    worst
}

fn check_against_reference(spec: Spec, budget: f64) {
    let (file, r) = build(&spec);
    let model = Model::load(file).expect("load");
    assert_eq!(model.config().tied_output, spec.tied);
    let mut st = model.new_state(32, 8).expect("state");
    let ours = model
        .forward(&pool(), &mut st, &TOKENS, Logits::All)
        .expect("forward")
        .to_vec();
    assert_eq!(ours.len(), TOKENS.len() * V);
    let reference = reference_forward(&r, spec.tied, &TOKENS);
    let err = max_rel_row_err(&ours, &reference);
    println!(
        "{:?} tied={}: max error relative to row scale = {err:.2e}",
        spec.matrix_ty, spec.tied
    );
    assert!(err < budget, "error {err} over budget {budget}");
}

#[test]
fn f32_model_matches_f64_reference() {
    // F32 weights and activations: only the F16 KV cache and f32 rounding differ (~1e-3).
    check_against_reference(Spec::default(), 5e-3);
}

#[test]
fn q8_0_tied_model_matches_f64_reference() {
    // Q8_0 activations add ~0.5% per matmul.
    check_against_reference(
        Spec {
            matrix_ty: GgmlType::Q8_0,
            tied: true,
            ..Spec::default()
        },
        5e-2,
    );
}

#[test]
fn batched_equals_token_by_token_and_rollback_recomputes() {
    let (file, _) = build(&Spec {
        matrix_ty: GgmlType::Q8_0,
        ..Spec::default()
    });
    let model = Model::load(file).expect("load");
    let pool = pool();
    // max_batch 4 splits the 11 tokens into 4 + 4 + 3.
    let mut st = model.new_state(32, 4).expect("state");
    let all = model
        .forward(&pool, &mut st, &TOKENS, Logits::All)
        .expect("fwd")
        .to_vec();
    assert_eq!(st.pos(), TOKENS.len());

    let mut one = model.new_state(32, 1).expect("state");
    for (t, &tok) in TOKENS.iter().enumerate() {
        let last = model
            .forward(&pool, &mut one, &[tok], Logits::Last)
            .expect("decode");
        for (a, b) in last.iter().zip(&all[t * V..(t + 1) * V]) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "pos {t}: {a} vs {b}"
            );
        }
    }
    // Logits::Last equals the last row of Logits::All.
    let mut st2 = model.new_state(32, 16).expect("state");
    let last = model
        .forward(&pool, &mut st2, &TOKENS, Logits::Last)
        .expect("fwd")
        .to_vec();
    assert_eq!(last.len(), V);
    let lrow = &all[(TOKENS.len() - 1) * V..];
    for (a, b) in last.iter().zip(lrow) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0));
    }

    // Roll back to 5 tokens and feed different ones, then the original ones again.
    st2.truncate(5);
    assert_eq!(st2.pos(), 5);
    let other = model
        .forward(&pool, &mut st2, &[9, 9, 9], Logits::Last)
        .expect("fwd")
        .to_vec();
    assert_ne!(other, last);
    st2.truncate(5);
    let again = model
        .forward(&pool, &mut st2, &TOKENS[5..], Logits::All)
        .expect("fwd")
        .to_vec();
    for (a, b) in again.iter().zip(&all[5 * V..]) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0));
    }
    st2.reset();
    assert_eq!(st2.pos(), 0);
}

#[test]
fn errors_are_typed() {
    let (file, _) = build(&Spec::default());
    let model = Model::load(file).expect("load");
    let pool = pool();
    assert!(matches!(
        model.new_state(0, 4),
        Err(ModelError::InvalidArgument { name: "n_ctx", .. })
    ));
    let mut st = model.new_state(8, 4).expect("state");
    assert!(matches!(
        model.forward(&pool, &mut st, &[], Logits::Last),
        Err(ModelError::EmptyInput)
    ));
    match model.forward(&pool, &mut st, &[1, V as u32], Logits::Last) {
        Err(ModelError::InvalidToken {
            token,
            index: 1,
            n_vocab,
        }) => {
            assert_eq!((token, n_vocab), (V as u32, V))
        }
        other => panic!("expected InvalidToken, got {other:?}"),
    }
    assert_eq!(st.pos(), 0);
    model
        .forward(&pool, &mut st, &[1, 2, 3, 4, 5, 6], Logits::Last)
        .expect("fits");
    match model.forward(&pool, &mut st, &[1, 2, 3], Logits::Last) {
        Err(ModelError::ContextFull {
            n_ctx: 8,
            needed: 9,
        }) => {}
        other => panic!("expected ContextFull, got {other:?}"),
    }
    assert_eq!(st.pos(), 6);
    let est = model.memory_estimate(8);
    assert_eq!(est.kv_cache_bytes as usize, st.kv_cache_bytes());
    assert!(est.weights_bytes > 0 && est.scratch_bytes > 0);

    let (file, _) = build(&Spec {
        skip: Some("blk.1.ffn_up.weight"),
        ..Spec::default()
    });
    match Model::load(file) {
        Err(ModelError::MissingTensor { name }) => assert_eq!(name, "blk.1.ffn_up.weight"),
        other => panic!("expected MissingTensor, got {:?}", other.map(|_| ())),
    }
    let (file, _) = build(&Spec {
        bad_dims: Some("blk.0.attn_k.weight"),
        ..Spec::default()
    });
    match Model::load(file) {
        Err(ModelError::TensorShape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "blk.0.attn_k.weight");
            assert_eq!(expected, vec![C as u64, (KV * D) as u64]);
            assert_eq!(found, vec![(KV * D) as u64, C as u64]);
        }
        other => panic!("expected TensorShape, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unsupported_arch_is_rejected() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("mamba".into()))
        .expect("md");
    let file = Arc::new(GgufFile::from_bytes(w.to_bytes()).expect("parse"));
    match Model::load(file) {
        Err(ModelError::UnsupportedArch { arch }) => assert_eq!(arch, "mamba"),
        other => panic!("expected UnsupportedArch, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn decode_many_equals_each_sequence_alone() {
    for matrix_ty in [GgmlType::F32, GgmlType::Q8_0] {
        let (file, _) = build(&Spec {
            matrix_ty,
            ..Spec::default()
        });
        let model = Model::load(file).expect("load");
        let pool = pool();
        let prompts: [&[u32]; 3] = [&TOKENS[..3], &TOKENS[2..9], &[5]];
        let (mut alone, mut batched): (Vec<_>, Vec<_>) = prompts
            .iter()
            .map(|p| {
                let mut a = model.new_state(32, 8).expect("state");
                let mut b = model.new_state(32, 8).expect("state");
                model.forward(&pool, &mut a, p, Logits::Last).expect("fwd");
                model.forward(&pool, &mut b, p, Logits::Last).expect("fwd");
                (a, b)
            })
            .unzip();
        let mut batch = model.new_decode_batch(4).expect("batch");
        for step in 0..5u32 {
            // The third sequence sits out every other step: batches of 3 and 2.
            let live: Vec<usize> = (0..3).filter(|&i| i < 2 || step % 2 == 0).collect();
            let tokens: Vec<u32> = live
                .iter()
                .map(|&i| (step * 7 + i as u32 * 13) % V as u32)
                .collect();
            let mut seqs: Vec<&mut edgelm_model::State> = batched
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| live.contains(i))
                .map(|(_, s)| s)
                .collect();
            let rows = model
                .forward_decode(&pool, &mut batch, &mut seqs, &tokens)
                .expect("decode")
                .to_vec();
            for (row, (&i, &tok)) in live.iter().zip(&tokens).enumerate() {
                let one = model
                    .forward(&pool, &mut alone[i], &[tok], Logits::Last)
                    .expect("decode alone");
                assert_eq!(
                    one,
                    &rows[row * V..(row + 1) * V],
                    "{matrix_ty}: step {step}, sequence {i}"
                );
                assert_eq!(alone[i].pos(), batched[i].pos());
            }
        }
        // Errors leave the states alone.
        let pos: Vec<usize> = batched.iter().map(|s| s.pos()).collect();
        let mut seqs: Vec<&mut edgelm_model::State> = batched.iter_mut().collect();
        assert!(model
            .forward_decode(&pool, &mut batch, &mut seqs, &[1, 2])
            .is_err());
        assert!(model
            .forward_decode(&pool, &mut batch, &mut seqs, &[1, 2, V as u32])
            .is_err());
        assert!(model
            .forward_decode(&pool, &mut batch, &mut [], &[])
            .is_err());
        let mut small = model.new_decode_batch(2).expect("batch");
        assert!(model
            .forward_decode(&pool, &mut small, &mut seqs, &[1, 2, 3])
            .is_err());
        assert_eq!(pos, batched.iter().map(|s| s.pos()).collect::<Vec<_>>());
    }
}
