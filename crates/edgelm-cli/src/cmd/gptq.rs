//! GPTQ calibration for `edgelm quantize --method gptq --calib FILE`: the model being
//! quantized is run over `--calib-chunks` chunks of `--calib-ctx` tokens of calibration text
//! (the first token of each chunk replaced by BOS when the vocabulary adds one, as
//! `edgelm imatrix` does), and for every distinct input of a `blk.*` weight the full
//! `Xᵀ X` is summed (attn_q/k/v share one, ffn_gate/up share one; attn_output and ffn_down
//! have their own). `edgelm_quant::gptq` then rounds each weight against its Hessian.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use edgelm_gguf::GgufFile;
use edgelm_model::{ActivationObserver, CacheType, Logits};
use edgelm_quant::gptq::{hessian_key, GptqOptions, Hessian};
use edgelm_quant::model::GptqCalibration;
use indicatif::{ProgressBar, ProgressStyle};

use super::GlobalArgs;

#[derive(Default)]
struct Acc {
    hessians: BTreeMap<String, Hessian>,
    error: Option<String>,
}

/// Sums `Xᵀ X` per distinct weight input.
struct Collector(Arc<Mutex<Acc>>);

impl ActivationObserver for Collector {
    fn observe(&mut self, weight: &str, x: &[f32], n_in: usize) {
        if !weight.starts_with("blk.") || n_in == 0 || hessian_key(weight) != weight {
            // Inputs shared with another weight are accumulated once, under its name.
            return;
        }
        let mut acc = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let h = acc
            .hessians
            .entry(weight.to_owned())
            .or_insert_with(|| Hessian::new(n_in));
        if h.n() != n_in {
            acc.error = Some(format!("{weight}: inputs of {n_in} values, then {}", h.n()));
            return;
        }
        if let Err(e) = h.accumulate(x) {
            acc.error = Some(format!("{weight}: {e}"));
        }
    }
}

/// Calibration settings.
pub struct CalibArgs<'a> {
    /// Calibration text.
    pub text: &'a Path,
    /// Chunks to use (at most).
    pub chunks: usize,
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Damping fraction.
    pub damp: f64,
}

/// Runs `file`'s model over the calibration text and returns its Hessians. Call inside the
/// rayon pool that should do the accumulation.
pub fn calibrate(
    path: &Path,
    file: &Arc<GgufFile>,
    calib: &CalibArgs<'_>,
    global: &GlobalArgs,
) -> Result<GptqCalibration> {
    let text = super::read_text(calib.text)?;
    let tok = super::load_tokenizer(path, file)?;
    let tokens = tok
        .encode(&text, true, false)
        .with_context(|| format!("cannot tokenize {}", calib.text.display()))?;
    let n_ctx = calib.n_ctx;
    let n_chunks = calib.chunks.min(tokens.len() / n_ctx);
    if n_chunks == 0 {
        bail!(
            "{} tokenizes to {} tokens; at least one chunk of {n_ctx} is needed for GPTQ",
            calib.text.display(),
            tokens.len()
        );
    }
    let model = super::load_model(path, file)?;
    let pool = super::thread_pool(global)?;
    let mut state = model
        .new_state_with(n_ctx, n_ctx.min(512), CacheType::F16)
        .context("cannot allocate the calibration state")?;
    let acc: Arc<Mutex<Acc>> = Arc::default();
    state.set_observer(Some(Box::new(Collector(Arc::clone(&acc)))));
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let bar = if global.quiet || global.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(n_chunks as u64);
        b.set_style(
            ProgressStyle::with_template(
                "calibrating {bar:40} {pos}/{len} chunks {elapsed_precise}",
            )
            .expect("static template"),
        );
        b
    };
    let mut window = Vec::with_capacity(n_ctx);
    for chunk in 0..n_chunks {
        window.clear();
        window.extend_from_slice(&tokens[chunk * n_ctx..(chunk + 1) * n_ctx]);
        if let Some(b) = bos {
            window[0] = b;
        }
        state.truncate(0);
        model
            .forward(&pool, &mut state, &window, Logits::Last)
            .with_context(|| format!("calibration forward pass failed on chunk {}", chunk + 1))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    state.set_observer(None);
    let acc = std::mem::take(&mut *acc.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(e) = acc.error {
        bail!("GPTQ calibration failed: {e}");
    }
    Ok(GptqCalibration {
        hessians: acc.hessians,
        options: GptqOptions { damp: calib.damp },
        dataset: calib.text.display().to_string(),
    })
}
