//! edgelm-train against PyTorch on a committed fixture (`tests/data/torch_grad.safetensors`,
//! made by `scripts/torch_grad.py random`): a 2-layer llama (width 32, 4 query / 2 kv heads,
//! tied output), one batch of 2 × 8 tokens with two ignored targets; PyTorch computes the loss
//! and gradients in float64 from the same f32 weights. Also PyTorch's AdamW steps and
//! `clip_grad_norm_` on a small tensor.
//!
//! Tolerances: the loss within 1e-5 relative; each tensor's gradient within
//! `GRAD_REL_TOL · max|g_torch|` elementwise. PyTorch's own float32 run deviates from its
//! float64 one by up to 3.0e-6 of max|g| on this fixture (stored in the file and printed);
//! edgelm's worst tensor deviates by 3.1e-6.

use std::path::Path;

use edgelm_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use edgelm_train::st::{TensorFile, CONFIG_KEY};
use edgelm_train::{backward, forward, ConfigFile, TrainModel, Workspace, IGNORE};

/// Elementwise gradient budget, relative to the tensor's largest reference gradient.
const GRAD_REL_TOL: f64 = 2e-5;

fn fixture_named(name: &str) -> TensorFile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    TensorFile::read(&p).expect("committed fixture")
}

fn fixture() -> TensorFile {
    fixture_named("torch_grad.safetensors")
}

fn ids(v: &[i64]) -> Vec<u32> {
    v.iter()
        .map(|&x| if x < 0 { IGNORE } else { x as u32 })
        .collect()
}

#[test]
fn gradients_match_pytorch() {
    check_gradients(&fixture());
}

/// Qwen2 (Q/K/V biases) and Qwen3 (per-head Q/K RMSNorm), NEOX RoPE: one layer each,
/// `scripts/torch_grad.py random --arch qwen2|qwen3`.
#[test]
fn qwen_gradients_match_pytorch() {
    for name in [
        "torch_grad_qwen2.safetensors",
        "torch_grad_qwen3.safetensors",
    ] {
        eprintln!("{name}");
        check_gradients(&fixture_named(name));
    }
}

fn check_gradients(f: &TensorFile) {
    let cfg: ConfigFile = serde_json::from_str(&f.metadata[CONFIG_KEY]).unwrap();
    let cfg = cfg.to_model_config().unwrap();
    let mut model = TrainModel::random(cfg, 0).unwrap();
    let mut params = std::mem::take(&mut model.params);
    model.read_values(f, "weights.", &mut params).unwrap();
    model.params = params;
    let (shape, tokens) = f.i64("tokens").unwrap();
    let (b, t) = (shape[0], shape[1]);
    let tokens = ids(tokens);
    let targets = ids(f.i64("targets").unwrap().1);

    let mut ws = Workspace::new(&model, b, t).unwrap();
    let loss = forward(&model, &mut ws, &tokens, &targets).unwrap();
    let mut grads = vec![0.0f32; model.layout().n_params()];
    backward(&model, &mut ws, &mut grads, 1.0).unwrap();

    let ref_loss: f64 = f.metadata["loss"].parse().unwrap();
    eprintln!("loss: edgelm {loss}, pytorch f64 {ref_loss}");
    assert!(((loss as f64 - ref_loss) / ref_loss).abs() < 1e-5);

    let torch_dev: serde_json::Value =
        serde_json::from_str(&f.metadata["torch_f32_rel_dev"]).unwrap();
    let mut worst = 0.0f64;
    for s in model.layout().specs() {
        let (_, want) = f.f32(&format!("grads.{}", s.name)).unwrap();
        let got = &grads[s.range()];
        let scale = want.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64));
        let dev = got
            .iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .fold(0.0, f64::max)
            / scale;
        worst = worst.max(dev);
        eprintln!(
            "{:28} max|g| {scale:.3e}  edgelm dev {dev:.1e}  (pytorch f32 dev {:.1e})",
            s.name,
            torch_dev[&s.name].as_f64().unwrap_or(f64::NAN)
        );
        assert!(
            dev <= GRAD_REL_TOL,
            "{}: deviation {dev:.2e} of max|g|",
            s.name
        );
    }
    eprintln!("worst tensor deviation {worst:.2e} (budget {GRAD_REL_TOL:.0e})");
}

#[test]
fn adamw_and_clipping_match_pytorch() {
    let f = fixture();
    let (_, p0) = f.f32("adamw.p0").unwrap();
    let (_, gs) = f.f32("adamw.grads").unwrap();
    let (_, lrs) = f.f32("adamw.lrs").unwrap();
    let (_, after) = f.f32("adamw.after").unwrap();
    let n = p0.len();
    let mut opt = AdamW::for_tensor(AdamWConfig::default(), n, true);
    let mut p = p0.to_vec();
    for (step, &lr) in lrs.iter().enumerate() {
        opt.update(&mut p, &gs[step * n..(step + 1) * n], lr);
        for (i, (a, b)) in p.iter().zip(&after[step * n..(step + 1) * n]).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "step {step} [{i}]: {a} vs {b}"
            );
        }
    }
    let (_, g) = f.f32("clip.grad").unwrap();
    let (_, want) = f.f32("clip.after").unwrap();
    let (_, norm) = f.f32("clip.norm").unwrap();
    let mut g = g.to_vec();
    let got_norm = clip_grad_norm(&mut g, 0.5);
    assert!((got_norm - norm[0]).abs() <= 1e-6 * norm[0]);
    for (a, b) in g.iter().zip(want) {
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
}
