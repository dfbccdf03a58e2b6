//! The whole real model's gradient (SmolLM2-135M-Instruct, weights dequantized to f32) on one
//! batch against PyTorch: the weights and batch are exported to safetensors, and
//! `scripts/torch_grad.py weights` runs the PyTorch twin in float64 (and float32, to measure
//! its own rounding) in the virtualenv of `scripts/torch-venv.sh`.
//!
//! Budget: per tensor, max |g_edgelm − g_torch64| ≤ `REL_TOL` · max |g_torch64|; measured
//! deviations are printed beside PyTorch float32's own.
//!
//! Skipped, with a message, when the model or the PyTorch virtualenv is absent (the venv is
//! ~5 GB: `bash scripts/torch-venv.sh` makes it; `EDGELM_TORCH_VENV` points elsewhere).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use edgelm_gguf::GgufFile;
use edgelm_train::st::{self, TensorFile, WriteTensor, CONFIG_KEY};
use edgelm_train::{backward, forward, TrainModel, Workspace, IGNORE};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Per-tensor budget relative to the largest reference gradient of the tensor.
/// Measured: 3.6e-5 (PyTorch float32: 3.1e-5), 32 tokens.
const REL_TOL: f64 = 3e-4;
const N_TOKENS: usize = 32;

fn model_path() -> Option<PathBuf> {
    let dir = if let Some(home) = std::env::var_os("EDGELM_HOME").filter(|s| !s.is_empty()) {
        PathBuf::from(home).join("models")
    } else if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|s| !s.is_empty()) {
        PathBuf::from(xdg).join("edgelm/models")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache/edgelm/models")
    };
    Some(dir.join(MODEL_FILE))
}

fn torch_python() -> Option<PathBuf> {
    let venv = match std::env::var_os("EDGELM_TORCH_VENV").filter(|s| !s.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            cache.join("edgelm-venv-torch")
        }
    };
    let py = venv.join("bin/python");
    py.exists().then_some(py)
}

#[test]
fn real_model_gradient_matches_pytorch() {
    let Some(path) = model_path().filter(|p| p.exists()) else {
        eprintln!("skipped: {MODEL_FILE} is not in the model cache (run `edgelm fetch`)");
        return;
    };
    let Some(python) = torch_python() else {
        eprintln!("skipped: no PyTorch virtualenv (run `bash scripts/torch-venv.sh`)");
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let model = TrainModel::from_gguf(&file).unwrap();
    // Fixed ids spread over the vocabulary (the tokenizer is not under test here).
    let v = model.config().n_vocab as u64;
    let tokens: Vec<u32> = (0..N_TOKENS as u64)
        .map(|i| ((i * 7919 + 13) * 2654435761 % v) as u32)
        .collect();
    let mut targets: Vec<u32> = tokens[1..].to_vec();
    targets.push(IGNORE);

    let dir = tempfile::tempdir().unwrap();
    let (w_path, g_path) = (
        dir.path().join("weights.safetensors"),
        dir.path().join("grads.safetensors"),
    );
    let tok64: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
    let tgt64: Vec<i64> = targets
        .iter()
        .map(|&x| if x == IGNORE { -1 } else { x as i64 })
        .collect();
    let mut tensors = model.named_tensors("", &model.params);
    tensors.push(("tokens".into(), WriteTensor::I64(vec![1, N_TOKENS], &tok64)));
    tensors.push((
        "targets".into(),
        WriteTensor::I64(vec![1, N_TOKENS], &tgt64),
    ));
    let meta = HashMap::from([(CONFIG_KEY.to_string(), model.config_json())]);
    st::write(&w_path, tensors, meta).unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/torch_grad.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(["weights", "--threads", "2", "--weights"])
        .arg(&w_path)
        .arg("--out")
        .arg(&g_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "torch_grad.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = TensorFile::read(&g_path).unwrap();

    let mut ws = Workspace::new(&model, 1, N_TOKENS).unwrap();
    let loss = forward(&model, &mut ws, &tokens, &targets).unwrap();
    let mut grads = vec![0.0f32; model.layout().n_params()];
    backward(&model, &mut ws, &mut grads, 1.0).unwrap();
    let ref_loss: f64 = reference.metadata["loss"].parse().unwrap();
    eprintln!("loss: edgelm {loss}, pytorch float64 {ref_loss}");
    assert!(((loss as f64 - ref_loss) / ref_loss).abs() < 1e-5);

    let torch_dev: serde_json::Value =
        serde_json::from_str(&reference.metadata["torch_f32_rel_dev"]).unwrap();
    let (mut worst, mut worst_torch) = (0.0f64, 0.0f64);
    for s in model.layout().specs() {
        let (_, want) = reference.f32(&format!("grads.{}", s.name)).unwrap();
        let got = &grads[s.range()];
        let scale = want.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64));
        let dev = got
            .iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .fold(0.0, f64::max)
            / scale;
        let tdev = torch_dev[&s.name].as_f64().unwrap_or(f64::NAN);
        if dev > worst {
            worst = dev;
            eprintln!(
                "{:28} edgelm dev {dev:.1e} (pytorch f32 {tdev:.1e})",
                s.name
            );
        }
        worst_torch = worst_torch.max(tdev);
        assert!(dev <= REL_TOL, "{}: deviation {dev:.2e} of max|g|", s.name);
    }
    eprintln!(
        "worst tensor deviation from float64: edgelm {worst:.2e}, pytorch float32 {worst_torch:.2e}"
    );
}
