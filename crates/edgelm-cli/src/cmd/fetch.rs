//! `edgelm fetch`: makes sure the default model is in the cache (downloading and verifying it
//! when missing) and prints its path. With `-m PATH`, checks that the file exists and prints it.
//!
//! JSON output (`--json`): `{"path": "..."}`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::GlobalArgs;

/// Arguments of `edgelm fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// GGUF model file (default: the cached default model, fetched when missing).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm fetch`.
pub fn run(args: &FetchArgs) -> Result<()> {
    let path = crate::fetch::resolve_model(args.model.as_deref())?;
    let mut out = std::io::stdout().lock();
    if args.global.json {
        writeln!(out, "{}", json!({ "path": path.display().to_string() }))?;
    } else {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}
