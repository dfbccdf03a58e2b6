//! `edgelm lora-merge -m BASE --lora ADAPTER -o OUT.gguf [--type f16|f32|same] [--lora-scale S]`:
//! writes BASE with the adapter merged into its weights (`W + scale·B·A` for each adapted
//! matrix, computed in f32 and written as F16, F32, or with `same` requantized to the base
//! matrix's own type by edgelm-quant's reference quantizer; every other tensor copied in its
//! own type), a model `edgelm run` and llama.cpp load without `--lora`. Requantizing to a
//! 4-bit type rounds most of a small adapter's update away (docs/training.md, "LoRA"):
//! F16 is the default, as llama.cpp's llama-export-lora writes merged matrices.
//! `--json`: one object `{"base", "adapter", "output", "n_merged", "bytes"}` on stdout.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_gguf::GgufFile;
use edgelm_model::LoraAdapter;
use serde_json::json;

use super::GlobalArgs;

/// Arguments of `edgelm lora-merge`.
#[derive(Debug, Args)]
pub struct LoraMergeArgs {
    /// Base GGUF model (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// LoRA adapter GGUF.
    #[arg(long)]
    pub lora: PathBuf,
    /// Output GGUF.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Type of the merged matrices: f16, f32, or same (each base matrix's own type, e.g.
    /// Q4_1: a merged file the size of the base).
    #[arg(long = "type", default_value = "f16", value_parser = ["f32", "f16", "same"])]
    pub ty: String,
    /// Multiplier of the adapter's alpha / rank.
    #[arg(long, default_value_t = 1.0)]
    pub lora_scale: f32,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm lora-merge`.
pub fn run(args: &LoraMergeArgs) -> Result<()> {
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let af = GgufFile::open(&args.lora)
        .with_context(|| format!("cannot read the LoRA adapter {}", args.lora.display()))?;
    let adapter = LoraAdapter::from_gguf(&af)
        .with_context(|| format!("cannot read the LoRA adapter {}", args.lora.display()))?;
    let merged = if args.ty == "same" {
        adapter.merge_into_gguf_with(&file, args.lora_scale, |t, values: &[f32]| {
            let n_in = t.dims.first().copied().unwrap_or(1) as usize;
            let bytes = edgelm_quant::quantize(t.ty, values, n_in)
                .with_context(|| format!("cannot requantize {} to {}", t.name, t.ty))?;
            Ok::<_, anyhow::Error>((t.ty, bytes))
        })
    } else {
        adapter
            .merge_into_gguf(&file, args.lora_scale, args.ty == "f16")
            .map_err(anyhow::Error::from)
    };
    let w = merged.with_context(|| {
        format!(
            "cannot merge {} into {}",
            args.lora.display(),
            path.display()
        )
    })?;
    let bytes = w
        .write_file(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let n = adapter.tensor_names().count();
    if args.global.json {
        println!(
            "{}",
            json!({"base": path.display().to_string(), "adapter": args.lora.display().to_string(),
                   "output": args.output.display().to_string(), "n_merged": n, "bytes": bytes})
        );
    } else if !args.global.quiet {
        println!(
            "merged {n} adapted matrices into {} ({bytes} bytes)",
            args.output.display()
        );
    }
    Ok(())
}
