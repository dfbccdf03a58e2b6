//! `edgelm info`: metadata, tensor table, totals and a memory estimate.
//!
//! JSON output (`--json`), one object:
//! `{"path", "version", "metadata": {KEY: {"type", "value"} | {"type", "len", "values"?}},
//!   "tensors": [{"name", "type", "dims", "bytes"}], "n_tensors", "n_params", "tensor_bytes",
//!   "memory": {"n_ctx", "weights_bytes", "kv_cache_bytes", "scratch_bytes", "total_bytes"}
//!   | null, "memory_error"?}`. Arrays longer than 16 elements are summarised (no "values").

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use edgelm_gguf::{Array, Value};
use edgelm_model::Model;
use serde_json::{json, Map};

use super::GlobalArgs;

/// Arrays up to this length are printed in full.
const MAX_ARRAY_SHOWN: usize = 16;
/// Strings longer than this are cut in plain output.
const MAX_STRING_SHOWN: usize = 120;

/// Arguments of `edgelm info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Context size for the memory estimate.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub ctx_size: u32,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let n_ctx = args.ctx_size as usize;
    let memory =
        Model::load(file.clone()).map(|m| m.memory_estimate_with(n_ctx, args.cache.cache_type));
    let tensors = file.tensors();
    let n_params: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    let tensor_bytes: u64 = tensors.iter().map(|t| t.n_bytes).sum();
    let mut out = std::io::stdout().lock();

    if args.global.json {
        let mut meta = Map::new();
        for (k, v) in file.metadata().iter() {
            meta.insert(k.to_string(), value_json(v));
        }
        let tensors_json: Vec<_> = tensors
            .iter()
            .map(|t| json!({"name": t.name, "type": t.ty.name(), "dims": t.dims, "bytes": t.n_bytes}))
            .collect();
        let mut obj = json!({
            "path": path.display().to_string(),
            "version": file.version(),
            "metadata": meta,
            "tensors": tensors_json,
            "n_tensors": tensors.len(),
            "n_params": n_params,
            "tensor_bytes": tensor_bytes,
        });
        match &memory {
            Ok(m) => {
                obj["memory"] = json!({
                    "n_ctx": n_ctx,
                    "weights_bytes": m.weights_bytes,
                    "kv_cache_bytes": m.kv_cache_bytes,
                    "scratch_bytes": m.scratch_bytes,
                    "total_bytes": m.weights_bytes + m.kv_cache_bytes + m.scratch_bytes,
                });
            }
            Err(e) => {
                obj["memory"] = serde_json::Value::Null;
                obj["memory_error"] = json!(format!("{e}"));
            }
        }
        serde_json::to_writer_pretty(&mut out, &obj)?;
        writeln!(out)?;
        return Ok(());
    }

    writeln!(out, "file: {}", path.display())?;
    writeln!(
        out,
        "GGUF v{}, {} metadata entries, {} tensors, {} file bytes",
        file.version(),
        file.metadata().len(),
        tensors.len(),
        file.file_size()
    )?;
    writeln!(out, "\nmetadata:")?;
    for (k, v) in file.metadata().iter() {
        writeln!(out, "  {k:<44} {:<14} {}", v.type_name(), value_text(v))?;
    }
    writeln!(out, "\ntensors:")?;
    writeln!(
        out,
        "  {:<40} {:<6} {:<24} {:>12}",
        "name", "type", "dims", "bytes"
    )?;
    for t in tensors {
        let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "  {:<40} {:<6} {:<24} {:>12}",
            t.name,
            t.ty.name(),
            dims.join(" x "),
            t.n_bytes
        )?;
    }
    writeln!(
        out,
        "\ntotal: {} tensors, {} parameters ({:.1} M), {} bytes ({})",
        tensors.len(),
        n_params,
        n_params as f64 / 1e6,
        tensor_bytes,
        human_bytes(tensor_bytes)
    )?;
    match memory {
        Ok(m) => {
            let total = m.weights_bytes + m.kv_cache_bytes + m.scratch_bytes;
            writeln!(
                out,
                "memory for a context of {n_ctx}: weights {} + KV cache {} + scratch {} = {}",
                human_bytes(m.weights_bytes),
                human_bytes(m.kv_cache_bytes),
                human_bytes(m.scratch_bytes),
                human_bytes(total)
            )?;
        }
        Err(e) => writeln!(out, "memory estimate unavailable: {e}")?,
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn scalar_json(v: &Value) -> serde_json::Value {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => array_values_json(a),
    }
}

fn array_values_json(a: &Array) -> serde_json::Value {
    match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F32(v) => json!(v),
        Array::F64(v) => json!(v),
        Array::Bool(v) => json!(v),
        Array::String(v) => json!(v),
        Array::Array(v) => serde_json::Value::Array(v.iter().map(array_values_json).collect()),
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Array(a) if a.len() > MAX_ARRAY_SHOWN => {
            json!({"type": v.type_name(), "len": a.len()})
        }
        Value::Array(a) => {
            json!({"type": v.type_name(), "len": a.len(), "values": array_values_json(a)})
        }
        _ => json!({"type": v.type_name(), "value": scalar_json(v)}),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Array(a) if a.len() > MAX_ARRAY_SHOWN => format!("[{} items]", a.len()),
        Value::String(s) => {
            let escaped = format!("{s:?}");
            if escaped.chars().count() > MAX_STRING_SHOWN {
                let cut: String = escaped.chars().take(MAX_STRING_SHOWN).collect();
                format!("{cut}… ({} bytes)", s.len())
            } else {
                escaped
            }
        }
        _ => scalar_json(v).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_arrays_are_summarised() {
        let v = Value::Array(Array::U32((0..100).collect()));
        assert_eq!(value_text(&v), "[100 items]");
        let j = value_json(&v);
        assert_eq!(j["len"], 100);
        assert!(j.get("values").is_none());
        let short = Value::Array(Array::I32(vec![1, 2]));
        assert_eq!(value_text(&short), "[1,2]");
        assert_eq!(value_json(&short)["values"], json!([1, 2]));
    }

    #[test]
    fn long_strings_are_cut_in_plain_text() {
        let s = Value::String("x\n".repeat(200));
        let t = value_text(&s);
        assert!(t.ends_with("(400 bytes)"), "{t}");
        assert!(!t.contains('\n'));
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.00 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.00 MiB");
    }
}
