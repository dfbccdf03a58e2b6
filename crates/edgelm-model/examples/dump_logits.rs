//! Writes the logits of every position of a token sequence as little-endian f32
//! (`[n_tokens, n_vocab]`), for comparisons with other engines (bench/lora_llamacpp.py):
//!
//! `dump_logits MODEL.gguf OUT.f32 [--lora ADAPTER.gguf [--scale S]] TOKEN...`

use std::sync::Arc;

use edgelm_gguf::GgufFile;
use edgelm_kernels::ThreadPool;
use edgelm_model::{Logits, LoraAdapter, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let lora = match args.iter().position(|a| a == "--lora") {
        Some(i) if i + 1 < args.len() => {
            let p = args.remove(i + 1);
            args.remove(i);
            Some(p)
        }
        _ => None,
    };
    let scale: f32 = match args.iter().position(|a| a == "--scale") {
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1).parse()?;
            args.remove(i);
            v
        }
        _ => 1.0,
    };
    if args.len() < 3 {
        return Err(
            "usage: dump_logits MODEL.gguf OUT.f32 [--lora ADAPTER.gguf [--scale S]] TOKEN..."
                .into(),
        );
    }
    let file = Arc::new(GgufFile::open(&args[0])?);
    let mut model = Model::load(file)?;
    if let Some(p) = lora {
        model = model.with_lora(&LoraAdapter::from_gguf(&GgufFile::open(p)?)?, scale)?;
    }
    let tokens: Vec<u32> = args[2..]
        .iter()
        .map(|t| t.parse())
        .collect::<Result<_, _>>()?;
    let pool = ThreadPool::new(2)?;
    let mut st = model.new_state(tokens.len().max(2), tokens.len().max(1))?;
    let logits = model.forward(&pool, &mut st, &tokens, Logits::All)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&args[1], bytes)?;
    Ok(())
}
