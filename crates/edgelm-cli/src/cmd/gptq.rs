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
    /// Hessian cache file (read when present, written otherwise).
    pub cache: Option<&'a Path>,
}

/// Runs `file`'s model over the calibration text and returns its Hessians. Call inside the
/// rayon pool that should do the accumulation.
pub fn calibrate(
    path: &Path,
    file: &Arc<GgufFile>,
    calib: &CalibArgs<'_>,
    global: &GlobalArgs,
) -> Result<GptqCalibration> {
    if let Some(cache) = calib.cache.filter(|p| p.exists()) {
        let bytes =
            std::fs::read(cache).with_context(|| format!("cannot read {}", cache.display()))?;
        let hessians = edgelm_quant::gptq::read_hessians(&bytes)
            .with_context(|| format!("bad calibration cache {}", cache.display()))?;
        tracing::info!("GPTQ Hessians from {}", cache.display());
        return Ok(GptqCalibration {
            hessians: hessians.into_iter().collect(),
            options: GptqOptions { damp: calib.damp },
            dataset: calib.text.display().to_string(),
        });
    }
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
    if let Some(cache) = calib.cache {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(cache)
                .with_context(|| format!("cannot create {}", cache.display()))?,
        );
        edgelm_quant::gptq::write_hessians(&mut f, &acc.hessians)
            .and_then(|()| std::io::Write::flush(&mut f))
            .with_context(|| format!("cannot write {}", cache.display()))?;
    }
    Ok(GptqCalibration {
        hessians: acc.hessians,
        options: GptqOptions { damp: calib.damp },
        dataset: calib.text.display().to_string(),
    })
}

/// `--method awq` / `awq-gptq`: searches AWQ scales against the calibration Hessians for
/// the types `opts` will give each weight, folds them into a copy of the model, and turns
/// the importance (the `--imatrix` entries, or the Hessians' diagonals without one) and the
/// Hessians into those of the scaled inputs. Returns the scaled model, to be quantized with
/// `opts` (and `calib` for GPTQ).
pub fn apply_awq(
    file: &GgufFile,
    opts: &mut edgelm_quant::model::QuantizeOptions,
    calib: &mut GptqCalibration,
    global: &GlobalArgs,
) -> Result<GgufFile> {
    use edgelm_quant::awq;
    let planned = edgelm_quant::model::plan(file, opts).context("cannot plan the quantization")?;
    let target: BTreeMap<String, edgelm_gguf::GgmlType> =
        planned.iter().map(|p| (p.name.clone(), p.to)).collect();
    let n_layers = file
        .tensors()
        .iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let groups = awq::llama_groups(n_layers);
    // The importance of every weight that has a Hessian: the imatrix entry or diag(H)/tokens.
    let mut im = opts
        .imatrix
        .as_ref()
        .map(|(m, _)| m.clone())
        .unwrap_or_default();
    let from_file = opts.imatrix.is_some();
    for t in file.tensors() {
        if im.entries.contains_key(&t.name) || t.dims.len() != 2 {
            continue;
        }
        if let Some(h) = calib.hessians.get(&hessian_key(&t.name)) {
            if h.n() == t.row_len() && h.count() > 0 && !from_file {
                let v = (0..h.n())
                    .map(|i| (h.get(i, i) / h.count() as f64) as f32)
                    .collect();
                im.entries.insert(t.name.clone(), v);
            }
        }
    }
    let bar = if global.quiet || global.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(groups.len() as u64);
        b.set_style(
            ProgressStyle::with_template("AWQ search {bar:40} {pos}/{len} {elapsed_precise}")
                .expect("static template"),
        );
        b
    };
    let results = awq::search(
        file,
        &groups,
        &calib.hessians,
        &|name: &str| target.get(name).copied(),
        &|name: &str| im.entries.get(name).cloned(),
        &awq::AwqOptions::default(),
        |r| {
            bar.inc(1);
            tracing::debug!(
                "AWQ {}: alpha {:.2}, output error {:.4e} -> {:.4e}",
                r.key,
                r.alpha,
                r.error_before,
                r.error_after
            );
        },
    )?;
    bar.finish_and_clear();
    let (before, after) = results.iter().fold((0.0, 0.0), |(a, b), r| {
        (a + r.error_before, b + r.error_after)
    });
    tracing::info!(
        "AWQ: {} groups scaled; sampled output error {:.4e} -> {:.4e}",
        results.len(),
        before,
        after
    );
    let bytes = awq::apply(file, &groups, &results)?;
    let scaled = GgufFile::from_bytes(bytes).context("the AWQ-scaled model does not parse")?;
    for r in &results {
        let group = groups
            .iter()
            .find(|g| g.key == r.key)
            .expect("searched groups");
        for w in &group.weights {
            if let Some(v) = im.entries.get_mut(w) {
                for (x, s) in v.iter_mut().zip(&r.scales) {
                    *x /= s * s;
                }
            }
        }
        if let Some(h) = calib.hessians.get_mut(&r.key) {
            *h = awq::scale_hessian(h, &r.scales);
        }
    }
    let label = match &opts.imatrix {
        Some((_, p)) => format!("{p} (AWQ-scaled)"),
        None => format!("{} (GPTQ Hessian diagonals, AWQ-scaled)", calib.dataset),
    };
    opts.imatrix = Some((im, label));
    opts.recipe.has_imatrix = true;
    Ok(scaled)
}
