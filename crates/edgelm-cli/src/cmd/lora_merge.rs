//! `edgelm lora-merge -m BASE --lora ADAPTER -o OUT.gguf [--type f32|f16] [--lora-scale S]`:
//! writes BASE with the adapter merged into its weights (`W + scale·B·A` for each adapted
//! matrix, F32 or F16; every other tensor copied in its own type), a model `edgelm run` and
//! llama.cpp load without `--lora`. `edgelm quantize` requantizes it if wanted.
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
    /// Type of the merged matrices.
    #[arg(long = "type", default_value = "f16", value_parser = ["f32", "f16"])]
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
    let w = adapter
        .merge_into_gguf(&file, args.lora_scale, args.ty == "f16")
        .with_context(|| {
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
