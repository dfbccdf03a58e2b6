//! `edgelm finetune --lora-rank R`: LoRA adapters trained on a frozen base that stays in its
//! file's (quantized) types. Same data, schedule, loop, progress and JSON events as full
//! fine-tuning; the checkpoint `OUT/checkpoint.safetensors` holds only the adapters and
//! their AdamW moments (`--resume` with `--lora-rank` continues one; the LoRA settings come
//! from the checkpoint). At the end the adapters are written to `OUT/adapter.gguf` in
//! llama.cpp's LoRA format (F32, or F16 with `--export-gguf f16`), loadable by
//! `edgelm run --lora` and `llama-cli --lora`; the event is
//! `{"event":"export","path"}`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use edgelm_gguf::GgufFile;
use edgelm_train::lora::base::FrozenBase;
use edgelm_train::lora::trainer::LoraTrainer;
use edgelm_train::lora::{LoraConfig, LoraParams, LoraTarget};
use edgelm_train::optim::{AdamWConfig, Schedule};
use edgelm_train::train::{Dataset, StepStats, TrainOptions};
use edgelm_train::TrainError;
use serde_json::json;

use super::finetune::{train_loop, FinetuneArgs, Run};
use super::usage;

impl Run for LoraTrainer {
    fn step(&mut self, data: &Dataset) -> Result<StepStats, TrainError> {
        LoraTrainer::step(self, data)
    }
    fn eval(&mut self, data: &Dataset, max_batches: usize) -> Result<f32, TrainError> {
        LoraTrainer::eval(self, data, max_batches)
    }
    fn save(&self, path: &Path) -> Result<(), TrainError> {
        LoraTrainer::save(self, path)
    }
    fn step_count(&self) -> u64 {
        LoraTrainer::step_count(self)
    }
}

/// The LoRA branch of `edgelm finetune`, after the data is read.
pub fn run(
    args: &FinetuneArgs,
    path: &Path,
    file: &Arc<GgufFile>,
    train_data: &Dataset,
    eval_data: &Dataset,
) -> Result<()> {
    let rank = args.lora_rank.expect("the LoRA branch has a rank") as usize;
    let targets = LoraTarget::parse_list(&args.lora_targets).map_err(|e| usage(e.to_string()))?;
    let alpha = args.lora_alpha.unwrap_or(2.0 * rank as f32);
    if !alpha.is_finite() || alpha <= 0.0 {
        return Err(usage(format!("--lora-alpha must be > 0, not {alpha}")));
    }
    if !(0.0..1.0).contains(&args.lora_dropout) {
        return Err(usage(format!(
            "--lora-dropout must be in [0, 1), not {}",
            args.lora_dropout
        )));
    }
    let base = FrozenBase::from_gguf(Arc::clone(file))
        .with_context(|| format!("cannot load {} for LoRA training", path.display()))?;
    let n_threads = args.global.n_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n_threads)
        .build()
        .with_context(|| format!("cannot start {n_threads} worker threads"))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let ckpt = args.out.join("checkpoint.safetensors");
    let mut trainer = match &args.resume {
        Some(p) => LoraTrainer::resume(base, p, Some(args.steps))
            .with_context(|| format!("cannot resume from {}", p.display()))?,
        None => {
            let lora = LoraParams::new(
                base.config(),
                LoraConfig {
                    rank,
                    alpha,
                    dropout: args.lora_dropout,
                    targets,
                },
                args.seed,
            )?;
            LoraTrainer::new(
                base,
                lora,
                TrainOptions {
                    batch: args.batch as usize,
                    seq_len: args.seq_len as usize,
                    accum: args.accum as usize,
                    schedule: Schedule {
                        max_lr: args.lr,
                        min_lr: args.min_lr.unwrap_or(args.lr / 10.0),
                        warmup_steps: args.warmup,
                        total_steps: args.steps,
                    },
                    adamw: AdamWConfig {
                        weight_decay: args.weight_decay,
                        ..AdamWConfig::default()
                    },
                    clip: args.clip,
                    seed: args.seed,
                },
            )?
        }
    };
    tracing::info!(
        n_adapter_params = trainer.lora.n_params(),
        buffer_bytes = trainer.buffer_bytes(),
        train_windows = train_data.len(),
        eval_windows = eval_data.len(),
        "LoRA training"
    );
    if args.global.json {
        let c = trainer.lora.config();
        println!(
            "{}",
            json!({"event": "lora", "rank": c.rank, "alpha": c.alpha, "dropout": c.dropout,
                   "targets": c.targets.iter().map(|t| t.stem()).collect::<Vec<_>>(),
                   "adapter_params": trainer.lora.n_params(),
                   "buffer_bytes": trainer.buffer_bytes()})
        );
    }
    pool.install(|| train_loop(args, &mut trainer, train_data, eval_data, &ckpt))?;
    let out = args.out.join("adapter.gguf");
    let arch = file
        .metadata()
        .get_str("general.architecture")
        .context("the model has no general.architecture")?;
    let f16 = args.export_gguf.as_deref() == Some("f16");
    trainer
        .lora
        .write_gguf(arch, &out, f16)
        .with_context(|| format!("cannot write {}", out.display()))?;
    if args.global.json {
        println!(
            "{}",
            json!({"event": "export", "path": out.display().to_string()})
        );
    } else if !args.global.quiet {
        eprintln!("finetune: wrote the LoRA adapter {}", out.display());
    }
    Ok(())
}
