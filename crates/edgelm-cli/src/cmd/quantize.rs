//! `edgelm quantize IN OUT --type T`: writes a copy of a model with its weights converted to
//! another type, choosing per tensor as llama-quantize does (mixed recipes, `--tensor-type`
//! overrides, fallbacks for rows that do not fit a block).
//!
//! IN is a GGUF file or a Hugging Face model directory (`config.json`, `tokenizer.json`,
//! `*.safetensors`), which is converted to GGUF first. Without `--imatrix`, every block is
//! bit-identical with llama-quantize's output for the same F32 source.
//!
//! Plain output: a progress bar and per-tensor warnings on stderr, a summary on stdout.
//! JSON output (`--json`): one object `{"input", "output", "file_type", "n_tensors",
//! "n_quantized", "n_fallback", "n_elements", "size_in_bytes", "size_out_bytes", "bpw_in",
//! "bpw_out", "file_bytes", "seconds", "types": {"Q4_K": n, ...}}` where sizes count tensor
//! data and bits per weight are over all tensors.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use edgelm_quant::recipe::{
    is_quantized, llama_tensor_order, FileType, ModelInfo, Planner, RecipeOptions, TensorDesc,
};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;

use super::{usage, GlobalArgs};

/// Arguments of `edgelm quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Input: a GGUF file, or a Hugging Face model directory (safetensors + config.json +
    /// tokenizer.json).
    pub input: PathBuf,
    /// Output GGUF file (written to a temporary name, then renamed).
    pub output: PathBuf,
    /// File type: F32, F16, BF16, Q8_0, Q6_K, Q5_K_S, Q5_K_M, Q5_0, Q5_1, Q4_K_S, Q4_K_M,
    /// Q4_0, Q4_1, Q3_K_S, Q3_K_M, Q3_K_L, Q2_K.
    #[arg(long = "type", value_parser = parse_file_type)]
    pub file_type: FileType,
    /// Per-tensor type, PATTERN=TYPE (regex searched in the tensor name; the first match
    /// wins). Repeatable.
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
            let names: Vec<&str> = edgelm_quant::SUPPORTED_TYPES.iter().map(|t| t.name()).collect();
            format!("unknown or unsupported tensor type '{s}' (one of: {})", names.join(", "))
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

/// `ModelInfo` from GGUF metadata (absent keys read as 0).
fn model_info(file: &GgufFile) -> ModelInfo {
    let md = file.metadata();
    let arch = md.arch().unwrap_or("").to_owned();
    let get = |k: &str| md.get_u64(&format!("{arch}.{k}")).unwrap_or(0) as usize;
    let n_head = get("attention.head_count");
    let n_head_kv = match md.get(&format!("{arch}.attention.head_count_kv")) {
        Some(_) => get("attention.head_count_kv"),
        None => n_head,
    };
    ModelInfo {
        n_layer: get("block_count"),
        n_head,
        n_head_kv,
        n_expert: get("expert_count"),
        arch,
    }
}

/// Dequantizes a whole tensor to f32, in parallel over rows.
pub(crate) fn tensor_to_f32(file: &GgufFile, t: &edgelm_gguf::TensorInfo) -> Result<Vec<f32>> {
    let data = file.tensor_data(t);
    let n_per_row = t.row_len();
    let row_bytes = t.row_bytes();
    let mut out = vec![0.0f32; t.n_elements() as usize];
    if n_per_row == 0 || out.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(n_per_row)
        .zip(data.par_chunks(row_bytes))
        .try_for_each(|(dst, src)| edgelm_kernels::dequantize_row(t.ty, src, dst))
        .with_context(|| format!("cannot convert tensor {} ({}) to f32", t.name, t.ty))?;
    Ok(out)
}

struct Summary {
    n_quantized: usize,
    size_in: u64,
    size_out: u64,
    n_elements: u64,
    types: BTreeMap<String, usize>,
}

/// Runs `edgelm quantize`.
pub fn run(args: &QuantizeArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (_, file) = super::open_gguf(Some(&args.input))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.global.n_threads())
        .build()
        .context("cannot start worker threads")?;
    let summary = pool.install(|| quantize_file(args, &file))?;
    let (writer, summary) = summary;
    let file_bytes = write_atomically(&writer, &args.output)?;
    let seconds = t0.elapsed().as_secs_f64();
    let bpw = |b: u64| b as f64 * 8.0 / summary.n_elements.max(1) as f64;
    let mut out = std::io::stdout().lock();
    if args.global.json {
        let obj = json!({
            "input": args.input.display().to_string(),
            "output": args.output.display().to_string(),
            "file_type": args.file_type.name(),
            "n_tensors": file.tensors().len(),
            "n_quantized": summary.n_quantized,
            "n_elements": summary.n_elements,
            "size_in_bytes": summary.size_in,
            "size_out_bytes": summary.size_out,
            "bpw_in": bpw(summary.size_in),
            "bpw_out": bpw(summary.size_out),
            "file_bytes": file_bytes,
            "seconds": seconds,
            "types": summary.types,
        });
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else if !args.global.quiet {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            out,
            "model size: {:8.2} MiB ({:.2} BPW)",
            mib(summary.size_in),
            bpw(summary.size_in)
        )?;
        writeln!(
            out,
            "quant size: {:8.2} MiB ({:.2} BPW), {} {}",
            mib(summary.size_out),
            bpw(summary.size_out),
            args.file_type,
            summary
                .types
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
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

/// Plans and converts every tensor; returns the writer (borrowing unchanged tensors) and the
/// summary.
fn quantize_file<'a>(
    args: &QuantizeArgs,
    file: &'a GgufFile,
) -> Result<(GgufWriter<'a>, Summary)> {
    let info = model_info(file);
    let mut tensors: Vec<&edgelm_gguf::TensorInfo> = file.tensors().iter().collect();
    tensors.sort_by(|a, b| llama_tensor_order(&a.name, &b.name));
    let opts = RecipeOptions {
        overrides: args.tensor_type.clone(),
        output_tensor_type: args.output_tensor_type,
        token_embedding_type: args.token_embedding_type,
        pure: args.pure,
        leave_output_tensor: args.leave_output_tensor,
        has_imatrix: false,
    };
    let mut planner = Planner::new(
        args.file_type,
        info,
        opts,
        tensors.iter().map(|t| t.name.as_str()),
    )
    .map_err(|e| usage(e.to_string()))?;

    // Plan everything first, so that a refused requantization fails before any work.
    let mut plan = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let desc = TensorDesc {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        };
        let choice = planner.choose(&desc)?;
        if let Some(from) = choice.fallback_from {
            tracing::warn!(
                "{}: rows of {} not divisible by the {} block size {}; falling back to {}",
                t.name,
                t.row_len(),
                from,
                from.block_size(),
                choice.ty
            );
        }
        if choice.ty != t.ty && is_quantized(t.ty) && is_quantized(choice.ty) {
            if !args.allow_requantize {
                bail!(
                    "tensor {} is already quantized ({}); requantizing to {} loses precision twice \
                     (pass --allow-requantize to do it anyway, or start from an F32/F16/BF16 model)",
                    t.name,
                    t.ty,
                    choice.ty
                );
            }
        }
        plan.push(choice);
    }
    if args.allow_requantize
        && tensors
            .iter()
            .zip(&plan)
            .any(|(t, c)| c.ty != t.ty && is_quantized(t.ty) && is_quantized(c.ty))
    {
        tracing::warn!("requantizing already-quantized tensors: quality is lower than quantizing from the original weights");
        if !args.global.quiet && !args.global.json {
            eprintln!("warning: requantizing from a quantized source (quality is lower than from F32/F16/BF16)");
        }
    }
    if planner.n_fallback() > 0 && !args.global.quiet && !args.global.json {
        eprintln!(
            "warning: {} of {} tensors required fallback quantization",
            planner.n_fallback(),
            tensors.len()
        );
    }

    // As llama.cpp's gguf_set_val_*: a key that is set again moves to the end.
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata().iter() {
        if key.starts_with("split.")
            || key == "general.quantization_version"
            || key == "general.file_type"
        {
            continue;
        }
        w.add_metadata(key, value.clone())?;
    }
    w.add_metadata("general.quantization_version", Value::U32(2))?;
    w.add_metadata("general.file_type", Value::U32(args.file_type.id()))?;

    let total: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    let bar = if args.global.quiet || args.global.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} {msg}")
                .expect("static template"),
        );
        b
    };
    let mut summary = Summary {
        n_quantized: 0,
        size_in: 0,
        size_out: 0,
        n_elements: total,
        types: BTreeMap::new(),
    };
    for (t, choice) in tensors.iter().zip(&plan) {
        bar.set_message(t.name.clone());
        summary.size_in += t.n_bytes;
        *summary.types.entry(choice.ty.name().to_owned()).or_default() += 1;
        if choice.ty == t.ty {
            summary.size_out += t.n_bytes;
            w.add_tensor(t.name.clone(), &t.dims, t.ty, file.tensor_data(t))?;
        } else {
            let f32s = tensor_to_f32(file, t)?;
            let data = edgelm_quant::quantize(choice.ty, &f32s, t.row_len())
                .with_context(|| format!("cannot quantize tensor {} to {}", t.name, choice.ty))?;
            summary.size_out += data.len() as u64;
            summary.n_quantized += 1;
            w.add_tensor(t.name.clone(), &t.dims, choice.ty, data)?;
        }
        bar.inc(t.n_elements());
    }
    bar.finish_and_clear();
    Ok((w, summary))
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
