//! `edgelm quantize IN OUT --type T`: writes a copy of a model with its weights converted to
//! another type, choosing per tensor as llama-quantize does (mixed recipes, `--tensor-type`
//! overrides, fallbacks for rows that do not fit a block). The work is
//! `edgelm_quant::model::quantize_model`; without an importance matrix the output file is
//! byte-identical with llama-quantize's for the same input.
//!
//! Plain output: a progress bar and warnings on stderr, a summary on stdout. JSON output
//! (`--json`): one object `{"input", "output", "file_type", "n_tensors", "n_converted",
//! "n_fallback", "requantized", "n_elements", "size_in_bytes", "size_out_bytes", "bpw_in",
//! "bpw_out", "file_bytes", "seconds", "types": {"Q4_K": n, ...}}`, where sizes count tensor
//! data and bits per weight are over all tensors (as llama-quantize reports them).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use edgelm_gguf::{GgmlType, GgufWriter};
use edgelm_quant::model::{quantize_model_with, ModelError, QuantizeOptions};
use edgelm_quant::recipe::{FileType, RecipeOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{usage, GlobalArgs};

/// Arguments of `edgelm quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Input: a GGUF file, or a Hugging Face Llama model directory (config.json,
    /// tokenizer.json, tokenizer_config.json, *.safetensors), converted first as
    /// convert_hf_to_gguf.py does.
    pub input: PathBuf,
    /// Output GGUF file (written to OUTPUT.tmp, then renamed).
    pub output: PathBuf,
    /// File type: F32, F16, BF16, Q8_0, Q6_K, Q5_K_S, Q5_K_M, Q5_0, Q5_1, Q4_K_S, Q4_K_M,
    /// Q4_0, Q4_1, Q3_K_S, Q3_K_M, Q3_K_L, Q2_K.
    #[arg(long = "type", value_parser = parse_file_type)]
    pub file_type: FileType,
    /// Per-tensor type, PATTERN=TYPE (regex searched in the tensor name; the first match
    /// wins). Repeatable. As in llama-quantize, only for quantized file types.
    #[arg(long = "tensor-type", value_parser = parse_tensor_type)]
    pub tensor_type: Vec<(String, GgmlType)>,
    /// Type of output.weight.
    #[arg(long, value_parser = parse_tensor_ggml_type)]
    pub output_tensor_type: Option<GgmlType>,
    /// Type of token_embd.weight.
    #[arg(long, value_parser = parse_tensor_ggml_type)]
    pub token_embedding_type: Option<GgmlType>,
    /// Leave output.weight as it is.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// Same type for every tensor: no mixed recipe (fallbacks still apply).
    #[arg(long)]
    pub pure: bool,
    /// Allow converting already-quantized tensors to another quantized type (lossy twice).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Importance matrix (llama-imatrix's GGUF or legacy .dat format, or `edgelm imatrix`'s):
    /// weights the rounding of Q4_0..Q5_1 and the K-quants by input-column importance.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Rounding method: `rtn` (round to nearest, llama-quantize's, optionally
    /// importance-weighted with --imatrix) or `gptq` (error-compensating rounding against
    /// each weight input's Hessian from --calib text; Q4_0..Q8_0 and Q2_K..Q6_K tensors, the
    /// others as rtn), `awq` (activation-aware input scales searched on --calib text and
    /// folded into the norms / ffn_up, then importance-weighted rtn) or `awq-gptq` (both).
    /// The output blocks are the same ggml formats either way.
    #[arg(long, default_value = "rtn", value_parser = ["rtn", "gptq", "awq", "awq-gptq"])]
    pub method: String,
    /// Calibration text for --method gptq (the model being quantized is run over it).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration chunks for --method gptq (at most; fewer if the text is short).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub calib_chunks: u32,
    /// Tokens per calibration chunk.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(2..))]
    pub calib_ctx: u32,
    /// GPTQ calibration cache: Hessians are read from this file when it exists, otherwise
    /// computed from --calib and written to it (the file does not record the text or chunks:
    /// delete it when those change).
    #[arg(long)]
    pub calib_cache: Option<PathBuf>,
    /// GPTQ damping: this fraction of the Hessian's mean diagonal is added to its diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub gptq_damp: f64,
    /// Pre-tokenizer name for a Hugging Face input (default: found by llama.cpp's probe hash).
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
    #[command(flatten)]
    pub global: GlobalArgs,
}

fn parse_file_type(s: &str) -> Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = edgelm_quant::recipe::ALL_FILE_TYPES
            .iter()
            .map(|t| t.name())
            .collect();
        format!("unknown file type '{s}' (one of: {})", names.join(", "))
    })
}

fn parse_tensor_ggml_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s)
        .filter(|t| edgelm_quant::SUPPORTED_TYPES.contains(t))
        .ok_or_else(|| {
            let names: Vec<&str> = edgelm_quant::SUPPORTED_TYPES
                .iter()
                .map(|t| t.name())
                .collect();
            format!(
                "unknown or unsupported tensor type '{s}' (one of: {})",
                names.join(", ")
            )
        })
}

fn parse_tensor_type(s: &str) -> Result<(String, GgmlType), String> {
    let (pat, ty) = s
        .split_once('=')
        .ok_or_else(|| format!("malformed tensor type '{s}': expected PATTERN=TYPE"))?;
    if pat.is_empty() {
        return Err(format!("missing tensor name pattern in '{s}'"));
    }
    Ok((pat.to_owned(), parse_tensor_ggml_type(ty)?))
}

/// Runs `edgelm quantize`.
pub fn run(args: &QuantizeArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let gptq = args.method == "gptq" || args.method == "awq-gptq";
    let awq = args.method.starts_with("awq");
    let method = args.method.as_str();
    if gptq || awq {
        if args.calib.is_none() {
            return Err(usage(format!(
                "--method {method} needs calibration text (--calib FILE): it uses the full \
                 input Hessian, which an importance matrix (its diagonal) does not hold"
            )));
        }
        if awq
            && matches!(
                args.file_type,
                FileType::F32 | FileType::F16 | FileType::BF16
            )
        {
            return Err(usage(format!(
                "--method {method} cannot produce {}: AWQ scales protect weights from \
                 quantization error, and {} is not a quantized type",
                args.file_type.name(),
                args.file_type.name()
            )));
        }
        if !(args.gptq_damp.is_finite() && args.gptq_damp >= 0.0) {
            return Err(usage(format!(
                "--gptq-damp must be a non-negative number, not {}",
                args.gptq_damp
            )));
        }
    } else if args.calib.is_some() {
        return Err(usage(
            "--calib is only used with --method gptq, awq or awq-gptq",
        ));
    }
    let file = if args.input.is_dir() {
        let bytes = crate::hf::convert_dir(&args.input, args.tokenizer_pre.as_deref())
            .with_context(|| {
                format!(
                    "cannot convert the model directory {}",
                    args.input.display()
                )
            })?;
        std::sync::Arc::new(
            edgelm_gguf::GgufFile::from_bytes(bytes)
                .context("the converted model does not parse")?,
        )
    } else {
        super::open_gguf(Some(&args.input))?.1
    };
    let imatrix = match &args.imatrix {
        Some(p) => Some((
            edgelm_quant::imatrix::Imatrix::load(p)
                .with_context(|| format!("cannot load the importance matrix {}", p.display()))?,
            p.display().to_string(),
        )),
        None => None,
    };
    let mut opts = QuantizeOptions {
        file_type: args.file_type,
        recipe: RecipeOptions {
            overrides: args.tensor_type.clone(),
            output_tensor_type: args.output_tensor_type,
            token_embedding_type: args.token_embedding_type,
            pure: args.pure,
            leave_output_tensor: args.leave_output_tensor,
            // GPTQ and AWQ always round with an importance (the imatrix or diag(H)), so the
            // recipe is the imatrix one (Q4_0/Q5_0: Q4_1/Q5_1 for the first ffn_down layers).
            has_imatrix: imatrix.is_some() || gptq || awq,
        },
        allow_requantize: args.allow_requantize,
        imatrix,
    };
    let interactive = !args.global.quiet && !args.global.json;
    let total: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    let bar = if interactive {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} {msg}")
                .expect("static template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.global.n_threads())
        .build()
        .context("cannot start worker threads")?;
    let mut calibration = match &args.calib {
        Some(text) if gptq || awq => Some(
            pool.install(|| {
                super::gptq::calibrate(
                    &args.input,
                    &file,
                    &super::gptq::CalibArgs {
                        text,
                        chunks: args.calib_chunks as usize,
                        n_ctx: args.calib_ctx as usize,
                        damp: args.gptq_damp,
                        cache: args.calib_cache.as_deref(),
                    },
                    &args.global,
                )
            })
            .context("GPTQ calibration failed")?,
        ),
        _ => None,
    };
    let file = match (&mut calibration, awq) {
        (Some(calib), true) => {
            let scaled =
                pool.install(|| super::gptq::apply_awq(&file, &mut opts, calib, &args.global))?;
            std::sync::Arc::new(scaled)
        }
        _ => file,
    };
    let calibration = if gptq { calibration } else { None };
    let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fallbacks: BTreeMap<(&'static str, &'static str), usize> = BTreeMap::new();
    let result = pool.install(|| {
        quantize_model_with(&file, &opts, calibration.as_ref(), |p| {
            *types.entry(p.to.name()).or_default() += 1;
            if let Some(from) = p.fallback_from {
                *fallbacks.entry((from.name(), p.to.name())).or_default() += 1;
                bar.suspend(|| {
                    tracing::info!(
                        "{}: rows not divisible by the {} block size {}; falling back to {}",
                        p.name,
                        from,
                        from.block_size(),
                        p.to
                    )
                });
            }
            bar.set_message(p.name.clone());
            bar.inc(p.n_elements);
        })
    });
    bar.finish_and_clear();
    let (writer, summary) = match result {
        Ok(r) => r,
        Err(e @ (ModelError::Requantize { .. } | ModelError::Recipe(_))) => {
            return Err(usage(e.to_string()))
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot quantize {}", args.input.display()))
        }
    };
    if summary.requantized && interactive {
        eprintln!(
            "warning: requantized already-quantized tensors (quality is lower than from F32/F16/BF16 weights)"
        );
    }
    if summary.n_fallback > 0 && interactive {
        let list: Vec<String> = fallbacks
            .iter()
            .map(|((from, to), n)| format!("{from} -> {to}: {n}"))
            .collect();
        eprintln!(
            "warning: {} of {} tensors required fallback quantization (rows not a multiple of \
             the block size; {}; -v lists them)",
            summary.n_fallback,
            file.tensors().len(),
            list.join(", ")
        );
    }
    let file_bytes = write_atomically(&writer, &args.output)?;
    let seconds = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.global.json {
        let obj = json!({
            "input": args.input.display().to_string(),
            "output": args.output.display().to_string(),
            "file_type": args.file_type.name(),
            "method": args.method,
            "n_tensors": file.tensors().len(),
            "n_converted": summary.n_converted,
            "n_fallback": summary.n_fallback,
            "requantized": summary.requantized,
            "n_elements": summary.n_elements,
            "size_in_bytes": summary.size_in,
            "size_out_bytes": summary.size_out,
            "bpw_in": summary.bpw_in(),
            "bpw_out": summary.bpw_out(),
            "file_bytes": file_bytes,
            "seconds": seconds,
            "types": types,
        });
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else if !args.global.quiet {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            out,
            "model size: {:8.2} MiB ({:.2} BPW)",
            mib(summary.size_in),
            summary.bpw_in()
        )?;
        writeln!(
            out,
            "quant size: {:8.2} MiB ({:.2} BPW), {}: {}",
            mib(summary.size_out),
            summary.bpw_out(),
            args.file_type,
            types
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            out,
            "wrote {} ({} bytes) in {:.2} s",
            args.output.display(),
            file_bytes,
            seconds
        )?;
    }
    Ok(())
}

/// Writes to `path.tmp` and renames, so a failure never leaves a truncated `path` (and the
/// input may be the output).
fn write_atomically(w: &GgufWriter, path: &Path) -> Result<u64> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let n = w
        .write_file(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(n)
}
