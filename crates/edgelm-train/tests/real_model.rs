//! The f32 training forward against edgelm-model's inference on the real model
//! (SmolLM2-135M-Instruct Q4_1): same weights (training dequantizes them to f32 master
//! copies), same tokens. Inference multiplies Q4_1/Q8_0 weights by activations quantized to
//! Q8_1/Q8_0 and keeps K/V in F16; training multiplies f32 by f32. So the two agree to the
//! rounding of quantized activations, not bit for bit. Budgets (measured values in the
//! comments, 48 tokens of English prose):
//! - mean KL(inference ‖ training) over positions < `MAX_MEAN_KL`,
//! - the argmax token agrees at ≥ `MIN_TOP1_AGREEMENT` of positions,
//! - the mean cross-entropy on the next tokens agrees within `MAX_LOSS_DIFF` nats.
//!
//! Skipped, with a message, when the model file is absent.

use std::path::PathBuf;
use std::sync::Arc;

use edgelm_gguf::GgufFile;
use edgelm_model::{Logits, Model};
use edgelm_tokenizer::Tokenizer;
use edgelm_train::{forward, TrainModel, Workspace, IGNORE};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Measured: 3.6e-3 (for scale: llama.cpp's own quantized path is at 5.9e-3 from the exact
/// float64 computation on edgelm-cli's logits16 fixture).
const MAX_MEAN_KL: f64 = 1e-2;
/// Measured: 0.979 (47 of 48).
const MIN_TOP1_AGREEMENT: f64 = 0.95;
/// Measured: 0.021 (2.927 vs 2.907).
const MAX_LOSS_DIFF: f64 = 0.05;

const TEXT: &str = "The tower is 324 metres tall, about the same height as an 81-storey \
building, and the tallest structure in Paris. Its base is square, measuring 125 metres on \
each side. During its construction, the Eiffel Tower surpassed the Washington Monument.";

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

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

#[test]
fn training_forward_matches_inference_logits() {
    let Some(path) = model_path().filter(|p| p.exists()) else {
        eprintln!("skipped: {MODEL_FILE} is not in the model cache (run `edgelm fetch`)");
        return;
    };
    let file = Arc::new(GgufFile::open(&path).unwrap());
    let tok = Tokenizer::from_gguf(file.metadata()).unwrap();
    let mut tokens = tok.encode(TEXT, true, false).unwrap();
    tokens.truncate(48);
    let t = tokens.len();
    let mut targets: Vec<u32> = tokens[1..].to_vec();
    targets.push(IGNORE);

    let train = TrainModel::from_gguf(&file).unwrap();
    let mut ws = Workspace::new(&train, 1, t).unwrap();
    let train_loss = forward(&train, &mut ws, &tokens, &targets).unwrap() as f64;
    let train_logits = ws.logits().unwrap().to_vec();

    let model = Model::load(file.clone()).unwrap();
    let pool = edgelm_kernels::ThreadPool::new(2).unwrap();
    let mut state = model.new_state(t, t).unwrap();
    let inf_logits = model
        .forward(&pool, &mut state, &tokens, Logits::All)
        .unwrap()
        .to_vec();

    let v = model.config().n_vocab;
    let (mut kl_sum, mut agree, mut inf_nll, mut max_abs) = (0.0f64, 0usize, 0.0f64, 0.0f32);
    for i in 0..t {
        let (a, b) = (
            &inf_logits[i * v..(i + 1) * v],
            &train_logits[i * v..(i + 1) * v],
        );
        let (la, lb) = (log_softmax(a), log_softmax(b));
        kl_sum += la
            .iter()
            .zip(&lb)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum::<f64>();
        agree += usize::from(argmax(a) == argmax(b));
        if targets[i] != IGNORE {
            inf_nll -= la[targets[i] as usize];
        }
        max_abs = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(max_abs, f32::max);
    }
    let mean_kl = kl_sum / t as f64;
    let top1 = agree as f64 / t as f64;
    let inf_loss = inf_nll / (t - 1) as f64;
    eprintln!(
        "{t} tokens: mean KL {mean_kl:.2e}, top-1 agreement {top1:.3}, loss training \
         {train_loss:.4} vs inference {inf_loss:.4}, max |logit diff| {max_abs:.3}"
    );
    assert!(mean_kl < MAX_MEAN_KL, "mean KL {mean_kl}");
    assert!(top1 >= MIN_TOP1_AGREEMENT, "top-1 agreement {top1}");
    assert!(
        (train_loss - inf_loss).abs() < MAX_LOSS_DIFF,
        "loss {train_loss} vs {inf_loss}"
    );
}

/// Budget of max |training − exact| over all 16 × 49152 logits. Measured: 1.3e-4 (mean KL
/// 1.3e-11).
const MAX_ABS_VS_EXACT: f32 = 1e-3;

/// The training forward against the exact float64 forward of the same quantized file
/// (`scripts/ref_exact.py`, fixture shared with edgelm-cli's reference tests: the first 16
/// WikiText-2 tokens). Training computes that function in f32, so only f32 rounding separates
/// them — far less than inference's quantized activations do.
#[test]
fn training_forward_matches_exact_float64_logits() {
    let Some(path) = model_path().filter(|p| p.exists()) else {
        eprintln!("skipped: {MODEL_FILE} is not in the model cache (run `edgelm fetch`)");
        return;
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edgelm-cli/tests/data/reference");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("logits16.json")).unwrap()).unwrap();
    let tokens: Vec<u32> = fx["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let exact: Vec<f32> = std::fs::read(dir.join("logits16_exact.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let file = GgufFile::open(&path).unwrap();
    let train = TrainModel::from_gguf(&file).unwrap();
    let t = tokens.len();
    let mut ws = Workspace::new(&train, 1, t).unwrap();
    let mut targets = tokens[1..].to_vec();
    targets.push(IGNORE);
    forward(&train, &mut ws, &tokens, &targets).unwrap();
    let got = ws.logits().unwrap();
    assert_eq!(got.len(), exact.len());
    let max_abs = got
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let v = train.config().n_vocab;
    let mut kl = 0.0;
    for i in 0..t {
        let (le, lg) = (
            log_softmax(&exact[i * v..(i + 1) * v]),
            log_softmax(&got[i * v..(i + 1) * v]),
        );
        kl += le
            .iter()
            .zip(&lg)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum::<f64>();
    }
    eprintln!(
        "16 tokens vs exact float64: max |logit diff| {max_abs:.2e}, mean KL {:.2e}",
        kl / t as f64
    );
    assert!(
        max_abs < MAX_ABS_VS_EXACT,
        "max |training − exact| = {max_abs}"
    );
}

/// Chat JSONL on the real tokenizer and template: the segments tokenized one by one give the
/// same ids as the whole rendered chat, the trained (masked-in) tokens are exactly the
/// assistant replies with their end marker, and a bad line is reported by number.
#[test]
fn chat_jsonl_trains_only_on_assistant_tokens() {
    use edgelm_tokenizer::ChatTemplate;
    use edgelm_train::data::{read_jsonl, OnBadLine};
    let Some(path) = model_path().filter(|p| p.exists()) else {
        eprintln!("skipped: {MODEL_FILE} is not in the model cache (run `edgelm fetch`)");
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(file.metadata()).unwrap();
    let template = ChatTemplate::from_gguf(file.metadata(), &tok)
        .unwrap()
        .unwrap();
    let chat = r#"{"messages":[{"role":"user","content":"What is 2+2?"},{"role":"assistant","content":"4."},{"role":"user","content":"And 3+3?"},{"role":"assistant","content":"6, of course."}]}"#;
    let text = format!("{chat}\n\n{{\"text\": \"Plain text.\"}}\nnot json\n");
    let packed = read_jsonl(&text, &tok, Some(&template), OnBadLine::Skip).unwrap();
    assert_eq!(packed.n_examples, 2);
    assert_eq!(packed.skipped.len(), 1);
    assert_eq!(packed.skipped[0].line, 4);
    let e = read_jsonl(&text, &tok, Some(&template), OnBadLine::Fail).unwrap_err();
    assert!(e.to_string().starts_with("line 4: not valid JSON"), "{e}");

    // The chat alone: ids equal those of the whole rendering.
    let one = read_jsonl(chat, &tok, Some(&template), OnBadLine::Fail).unwrap();
    let msgs: serde_json::Value = serde_json::from_str(chat).unwrap();
    let msgs: Vec<edgelm_tokenizer::ChatMessage> =
        serde_json::from_value(msgs["messages"].clone()).unwrap();
    let whole = tok
        .encode(&template.render(&msgs, false).unwrap(), true, true)
        .unwrap();
    assert_eq!(one.tokens, whole);
    let trained: Vec<u32> = one
        .tokens
        .iter()
        .zip(&one.mask)
        .filter(|(_, &m)| m)
        .map(|(&t, _)| t)
        .collect();
    let trained_text: String = trained
        .iter()
        .map(|&t| tok.token_text(t).unwrap_or("?").to_string())
        .collect();
    eprintln!("trained tokens: {trained_text:?}");
    assert!(trained_text.starts_with('4') && trained_text.contains("<|im_end|>"));
    assert!(trained_text.contains("6,") && !trained_text.contains("3+3"));
}

/// Trained weights written back to GGUF run in edgelm-model: with F32 matrices inference
/// multiplies f32 activations (only the F16 KV cache rounds), so its logits follow the
/// training forward closely; F16 matrices add the weights' half-precision rounding.
/// Measured: max |logit diff| F32 0.022, F16 0.046 (budgets below); both files load with all
/// the source's tensors.
#[test]
fn exported_gguf_runs_in_inference() {
    use edgelm_train::ExportType;
    let Some(path) = model_path().filter(|p| p.exists()) else {
        eprintln!("skipped: {MODEL_FILE} is not in the model cache (run `edgelm fetch`)");
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let mut train = TrainModel::from_gguf(&file).unwrap();
    // Move the weights off the quantization grid, as training would.
    for (i, p) in train.params.iter_mut().enumerate() {
        *p *= 1.0 + 1e-3 * ((i % 7) as f32 - 3.0);
    }
    let tok = Tokenizer::from_gguf(file.metadata()).unwrap();
    let tokens = tok.encode(TEXT, true, false).unwrap()[..24].to_vec();
    let mut targets = tokens[1..].to_vec();
    targets.push(IGNORE);
    let mut ws = Workspace::new(&train, 1, tokens.len()).unwrap();
    forward(&train, &mut ws, &tokens, &targets).unwrap();
    let want = ws.logits().unwrap().to_vec();
    let dir = tempfile::tempdir().unwrap();
    for (ty, budget) in [(ExportType::F32, 0.05f32), (ExportType::F16, 0.15)] {
        let out = dir.path().join(format!("{ty:?}.gguf"));
        train.write_gguf(&file, &out, ty).unwrap();
        let exported = Arc::new(GgufFile::open(&out).unwrap());
        assert_eq!(exported.tensors().len(), file.tensors().len());
        let model = Model::load(exported).unwrap();
        let pool = edgelm_kernels::ThreadPool::new(2).unwrap();
        let mut state = model.new_state(tokens.len(), tokens.len()).unwrap();
        let got = model
            .forward(&pool, &mut state, &tokens, Logits::All)
            .unwrap();
        let max_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{ty:?} export: max |inference − training logits| {max_abs:.3}");
        assert!(max_abs < budget, "{ty:?}: {max_abs}");
    }
}
