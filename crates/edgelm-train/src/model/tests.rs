//! The whole model's gradient against finite differences of its loss, gradient accumulation,
//! and the batch checks.

use super::*;
use crate::ConfigFile;

fn arch_config(arch: &str, tied: bool) -> ModelConfig {
    ConfigFile {
        arch: arch.into(),
        n_layer: 2,
        n_embd: 16,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        n_ff: 24,
        n_vocab: 11,
        n_ctx_train: 64,
        rms_eps: 1e-5,
        rope_theta: None,
        tied_output: tied,
    }
    .to_model_config()
    .unwrap()
}

/// A tiny model with weights large enough that the loss moves measurably in f32.
fn tiny_model(tied: bool) -> TrainModel {
    arch_model("llama", tied)
}

fn arch_model(arch: &str, tied: bool) -> TrainModel {
    let mut m = TrainModel::random(arch_config(arch, tied), 42).unwrap();
    let mut s = 7u64;
    for p in m.params.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        *p = 0.3 * u + if *p == 1.0 { 1.0 } else { 0.0 };
    }
    m
}

const TOKENS: [u32; 10] = [1, 5, 9, 2, 2, 0, 10, 3, 7, 4];
const TARGETS: [u32; 10] = [5, 9, 2, 2, IGNORE, 10, 3, 7, 4, 6];

fn grads_of(m: &TrainModel, b: usize, t: usize, tokens: &[u32], targets: &[u32]) -> Vec<f32> {
    let mut ws = Workspace::new(m, b, t).unwrap();
    let mut g = vec![0.0; m.layout().n_params()];
    forward(m, &mut ws, tokens, targets).unwrap();
    backward(m, &mut ws, &mut g, 1.0).unwrap();
    g
}

#[test]
fn model_gradient_matches_finite_differences() {
    for (arch, tied) in [
        ("llama", true),
        ("llama", false),
        ("qwen2", true),
        ("qwen3", true),
    ] {
        let mut m = arch_model(arch, tied);
        let (b, t) = (2, 5);
        let g = grads_of(&m, b, t, &TOKENS, &TARGETS);
        let mut ws = Workspace::new(&m, b, t).unwrap();
        let specs = m.layout().specs().to_vec();
        for spec in &specs {
            let r = spec.range();
            let scale = g[r.clone()].iter().fold(0.0f32, |a, &x| a.max(x.abs())) as f64;
            assert!(scale > 0.0, "{}: all-zero gradient", spec.name);
            let mut worst = 0.0f64;
            for i in r.clone().step_by((r.len() / 13).max(1)) {
                let orig = m.params[i];
                // Qwen3's per-head RMSNorm over D = 4 values is strongly curved where a head's
                // values are small: a smaller step keeps the O(h²) truncation in budget there.
                let h = if arch == "qwen3" { 2e-3 } else { 1e-2 };
                m.params[i] = orig + h;
                let lp = forward(&m, &mut ws, &TOKENS, &TARGETS).unwrap() as f64;
                m.params[i] = orig - h;
                let lm = forward(&m, &mut ws, &TOKENS, &TARGETS).unwrap() as f64;
                m.params[i] = orig;
                let fd = (lp - lm) / (2.0 * h as f64);
                let err = (g[i] as f64 - fd).abs();
                worst = worst.max(err / scale);
                // f32 loss rounding (~2e-7) over 2h gives ~1e-5 of noise; truncation O(h²).
                assert!(
                    err <= 3e-3 * scale + 2e-5,
                    "{arch} {} (tied {tied}) [{}]: analytic {} vs finite difference {fd}",
                    spec.name,
                    i - r.start,
                    g[i]
                );
            }
            eprintln!(
                "{arch} tied {tied} {}: worst err / max|g| {worst:.1e}",
                spec.name
            );
        }
    }
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let m = tiny_model(true);
    // Every target counted, so both halves weigh the same in the batch mean.
    let targets: Vec<u32> = TARGETS
        .iter()
        .map(|&x| if x == IGNORE { 1 } else { x })
        .collect();
    let whole = grads_of(&m, 2, 5, &TOKENS, &targets);
    let mut ws = Workspace::new(&m, 1, 5).unwrap();
    let mut acc = vec![0.0; m.layout().n_params()];
    for half in 0..2 {
        let r = half * 5..half * 5 + 5;
        forward(&m, &mut ws, &TOKENS[r.clone()], &targets[r]).unwrap();
        backward(&m, &mut ws, &mut acc, 0.5).unwrap();
    }
    let scale = whole.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
    for (i, (a, w)) in acc.iter().zip(&whole).enumerate() {
        assert!((a - w).abs() <= 1e-5 * scale, "[{i}] {a} vs {w}");
    }
}

#[test]
fn workspace_reuse_gives_identical_gradients() {
    let m = tiny_model(true);
    let mut ws = Workspace::new(&m, 2, 5).unwrap();
    let mut g1 = vec![0.0; m.layout().n_params()];
    let mut g2 = g1.clone();
    let l1 = forward(&m, &mut ws, &TOKENS, &TARGETS).unwrap();
    backward(&m, &mut ws, &mut g1, 1.0).unwrap();
    let other: Vec<u32> = TOKENS.iter().rev().copied().collect();
    forward(&m, &mut ws, &other, &TARGETS).unwrap();
    let l2 = forward(&m, &mut ws, &TOKENS, &TARGETS).unwrap();
    backward(&m, &mut ws, &mut g2, 1.0).unwrap();
    assert_eq!(l1, l2);
    assert_eq!(g1, g2);
}

#[test]
fn bad_batches_are_rejected() {
    let m = tiny_model(true);
    let mut ws = Workspace::new(&m, 2, 5).unwrap();
    let mut g = vec![0.0; m.layout().n_params()];
    assert!(matches!(
        backward(&m, &mut ws, &mut g, 1.0),
        Err(TrainError::BadBatch(_))
    ));
    let e = forward(&m, &mut ws, &TOKENS[..9], &TARGETS[..9]).unwrap_err();
    assert!(e.to_string().contains("9 tokens"), "{e}");
    let mut bad = TOKENS;
    bad[3] = 11;
    let e = forward(&m, &mut ws, &bad, &TARGETS).unwrap_err();
    assert!(e.to_string().contains("token id 11 at position 3"), "{e}");
    let e = forward(&m, &mut ws, &TOKENS, &[IGNORE; 10]).unwrap_err();
    assert!(e.to_string().contains("no target"), "{e}");
    assert!(Workspace::new(&m, 0, 5).is_err());
}
