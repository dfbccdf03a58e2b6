//! `edgelm finetune`: full fine-tuning of a GGUF model's weights on a text file, in f32 on
//! the CPU (edgelm-train). Plain text is tokenized (BOS first); a `.jsonl` file holds one
//! `{"text": ...}` document or `{"messages": [...]}` chat per line (chats rendered with the
//! model's chat template, loss on the assistant's tokens only; a bad line is fatal, or
//! reported and skipped with `--on-bad-line skip`). Tokens are packed into windows of
//! `--seq-len + 1`, and the last `--eval-fraction` of windows held out for evaluation.
//!
//! Checkpoints: `OUT/checkpoint.safetensors` (weights, AdamW state, step, data cursor),
//! replaced atomically every `--save-every` steps and at the end; `--resume` continues one
//! exactly (`--stop-after` ends an invocation early on purpose). A NaN/infinite loss stops the run with exit 1 and leaves the last checkpoint.
//!
//! Output: a progress bar on stderr (loss, tokens/s; hidden with `-q`, `--json` or off a
//! terminal). `--json`: JSON Lines on stdout, one object per event:
//! - `{"event":"data","examples","tokens","train_windows","eval_windows","skipped":[{"line","reason"}]}`
//! - `{"event":"step","step","loss","lr","grad_norm","tokens","tokens_per_s"}`
//! - `{"event":"eval","step","loss","ppl"}`
//! - `{"event":"checkpoint","step","path"}`
//! - `{"event":"done","step","train_loss","seconds"}`
//! - `{"event":"export","path"}` (with `--export-gguf`: `OUT/model.gguf`, loadable by `edgelm run`)
//! - with `--lora-rank` (LoRA on the frozen base, `finetune_lora.rs`): first
//!   `{"event":"lora","rank","alpha","dropout","targets","adapter_params","buffer_bytes"}`, and
//!   the export event names `OUT/adapter.gguf`

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use edgelm_tokenizer::ChatTemplate;
use edgelm_train::data::{read_jsonl, OnBadLine};
use edgelm_train::optim::{AdamWConfig, Schedule};
use edgelm_train::train::{Dataset, StepStats, TrainOptions, Trainer};
use edgelm_train::{ExportType, TrainError, TrainModel};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::{usage, GlobalArgs};

/// Arguments of `edgelm finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// GGUF model file (default: the cached default model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Training data: UTF-8 text, or JSON Lines when the name ends in .jsonl.
    #[arg(long)]
    pub data: PathBuf,
    /// What to do with an unusable JSONL line: fail (default) or skip (reported on stderr).
    #[arg(long, default_value = "fail", value_parser = ["fail", "skip"])]
    pub on_bad_line: String,
    /// Directory for checkpoints.
    #[arg(short, long, default_value = "finetune-out")]
    pub out: PathBuf,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Sequences per micro-batch.
    #[arg(short = 'b', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..))]
    pub seq_len: u32,
    /// Micro-batches accumulated per step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub accum: u32,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long)]
    pub min_lr: Option<f32>,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// AdamW decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// Batches per evaluation.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_batches: u32,
    /// Fraction of the windows held out for evaluation.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    /// Save a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Continue from a checkpoint (its options are used; --steps may extend the run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Seed of the data order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the trained model as OUT/model.gguf with f32 or f16 matrices, at the end.
    #[arg(long, value_parser = ["f32", "f16"])]
    pub export_gguf: Option<String>,
    /// Stop after this many steps in this invocation (saving a checkpoint), though the
    /// schedule spans --steps: for time-boxed sessions continued with --resume.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// LoRA: train rank-R adapters on a frozen base (kept in its quantized types) instead
    /// of every weight; writes OUT/adapter.gguf (llama.cpp's LoRA format) at the end.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub lora_rank: Option<u32>,
    /// LoRA alpha (the update is scaled by alpha / rank; default: 2 × rank).
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f32>,
    /// LoRA dropout on the adapters' inputs.
    #[arg(long, default_value_t = 0.0, requires = "lora_rank")]
    pub lora_dropout: f32,
    /// Projections with adapters: q,k,v,o,gate,up,down (or attn, mlp, all).
    #[arg(long, default_value = "all", requires = "lora_rank")]
    pub lora_targets: String,
    #[command(flatten)]
    pub global: GlobalArgs,
}

fn check(args: &FinetuneArgs) -> Result<()> {
    check_loop_flags(
        args.lr,
        args.min_lr,
        args.weight_decay,
        args.clip,
        args.eval_fraction,
    )
}

/// The training-loop flags `edgelm finetune` and `edgelm distill` share: learning rates,
/// weight decay and clipping finite and >= 0, the held-out fraction in [0, 1).
pub(super) fn check_loop_flags(
    lr: f32,
    min_lr: Option<f32>,
    weight_decay: f32,
    clip: f32,
    eval_fraction: f64,
) -> Result<()> {
    let nonneg = |name: &str, v: f32| {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(usage(format!(
                "--{name} must be a finite number >= 0, not {v}"
            )))
        }
    };
    nonneg("lr", lr)?;
    nonneg("weight-decay", weight_decay)?;
    nonneg("clip", clip)?;
    if let Some(m) = min_lr {
        nonneg("min-lr", m)?;
    }
    if !(0.0..1.0).contains(&eval_fraction) {
        return Err(usage(format!(
            "--eval-fraction must be in [0, 1), not {eval_fraction}"
        )));
    }
    Ok(())
}

/// Runs `edgelm finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    check(args)?;
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("cannot read the training text {}", args.data.display()))?;
    let (path, file) = super::open_gguf(args.model.as_deref())?;
    let tok = super::load_tokenizer(&path, &file)?;
    let is_jsonl = args
        .data
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let seq_len = args.seq_len as usize;
    let (dataset, n_examples, n_tokens, skipped) = if is_jsonl {
        let template = ChatTemplate::from_gguf(file.metadata(), &tok)
            .with_context(|| format!("cannot read the chat template of {}", path.display()))?;
        let on_bad = if args.on_bad_line == "skip" {
            OnBadLine::Skip
        } else {
            OnBadLine::Fail
        };
        let packed = read_jsonl(&text, &tok, template.as_ref(), on_bad)
            .with_context(|| format!("unusable training data in {}", args.data.display()))?;
        for b in &packed.skipped {
            if !args.global.quiet {
                eprintln!(
                    "{}: line {}: skipped: {}",
                    args.data.display(),
                    b.line,
                    b.reason
                );
            }
        }
        let ds = Dataset::from_masked(&packed.tokens, Some(&packed.mask), seq_len);
        (ds, packed.n_examples, packed.tokens.len(), packed.skipped)
    } else {
        let tokens = tok
            .encode(&text, true, false)
            .with_context(|| format!("cannot tokenize {}", args.data.display()))?;
        (
            Dataset::from_stream(&tokens, seq_len),
            1,
            tokens.len(),
            Vec::new(),
        )
    };
    let (train_data, eval_data) = dataset.split(args.eval_fraction);
    if train_data.is_empty() {
        anyhow::bail!(
            "{} has {n_tokens} tokens: too few for one training window of {} (lower --seq-len)",
            args.data.display(),
            args.seq_len + 1
        );
    }
    if args.global.json {
        let skipped: Vec<_> = skipped
            .iter()
            .map(|b| json!({"line": b.line, "reason": b.reason}))
            .collect();
        let v = json!({"event": "data", "examples": n_examples, "tokens": n_tokens,
                       "train_windows": train_data.len(), "eval_windows": eval_data.len(),
                       "skipped": skipped});
        println!("{v}");
    }
    if args.lora_rank.is_some() {
        return super::finetune_lora::run(args, &path, &file, &train_data, &eval_data);
    }
    let model = TrainModel::from_gguf(&file)
        .with_context(|| format!("cannot load {} for training", path.display()))?;
    let n_threads = args.global.n_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n_threads)
        .build()
        .with_context(|| format!("cannot start {n_threads} worker threads"))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let ckpt = args.out.join("checkpoint.safetensors");
    let mut trainer = match &args.resume {
        Some(p) => Trainer::resume(model, p, Some(args.steps))
            .with_context(|| format!("cannot resume from {}", p.display()))?,
        None => Trainer::new(
            model,
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
        )?,
    };
    tracing::info!(
        n_params = trainer.model.layout().n_params(),
        train_windows = train_data.len(),
        eval_windows = eval_data.len(),
        "training"
    );
    pool.install(|| train_loop(args, &mut trainer, &train_data, &eval_data, &ckpt))?;
    if let Some(ty) = &args.export_gguf {
        let ty = if ty == "f16" {
            ExportType::F16
        } else {
            ExportType::F32
        };
        let out = args.out.join("model.gguf");
        trainer
            .model
            .write_gguf(&file, &out, ty)
            .with_context(|| format!("cannot write {}", out.display()))?;
        if args.global.json {
            println!(
                "{}",
                json!({"event": "export", "path": out.display().to_string()})
            );
        } else if !args.global.quiet {
            eprintln!("finetune: wrote {}", out.display());
        }
    }
    Ok(())
}

/// What the loop needs of a run: full fine-tuning ([`Trainer`]) or LoRA.
pub(super) trait Run {
    fn step(&mut self, data: &Dataset) -> Result<StepStats, TrainError>;
    fn eval(&mut self, data: &Dataset, max_batches: usize) -> Result<f32, TrainError>;
    fn save(&self, path: &std::path::Path) -> Result<(), TrainError>;
    fn step_count(&self) -> u64;
}

impl Run for Trainer {
    fn step(&mut self, data: &Dataset) -> Result<StepStats, TrainError> {
        Trainer::step(self, data)
    }
    fn eval(&mut self, data: &Dataset, max_batches: usize) -> Result<f32, TrainError> {
        Trainer::eval(self, data, max_batches)
    }
    fn save(&self, path: &std::path::Path) -> Result<(), TrainError> {
        Trainer::save(self, path)
    }
    fn step_count(&self) -> u64 {
        Trainer::step_count(self)
    }
}

pub(super) fn train_loop<R: Run>(
    args: &FinetuneArgs,
    trainer: &mut R,
    train_data: &Dataset,
    eval_data: &Dataset,
    ckpt: &std::path::Path,
) -> Result<()> {
    let json = args.global.json;
    let mut out = std::io::stdout().lock();
    let first = trainer.step_count();
    let total = args.steps;
    let stop = args.stop_after.map_or(total, |n| (first + n).min(total));
    let bar = ProgressBar::new(total);
    if json || args.global.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta}]")
            .expect("static template"),
    );
    bar.set_position(first);
    let t_run = Instant::now();
    let mut last_saved: Option<u64> = None;
    let mut last_loss = f32::NAN;
    let emit = |out: &mut std::io::StdoutLock, v: serde_json::Value| -> Result<()> {
        if json {
            serde_json::to_writer(&mut *out, &v)?;
            writeln!(out)?;
        }
        Ok(())
    };
    for _ in first..stop {
        let t0 = Instant::now();
        let s = match trainer.step(train_data) {
            Ok(s) => s,
            Err(e @ TrainError::NonFinite { .. }) => {
                bar.abandon();
                let kept = match last_saved {
                    Some(step) => format!(
                        "the checkpoint of step {step} at {} is kept",
                        ckpt.display()
                    ),
                    None => "no checkpoint was written in this run".into(),
                };
                anyhow::bail!("{e}; {kept}");
            }
            Err(e) => return Err(e.into()),
        };
        last_loss = s.loss;
        let tps = s.tokens as f64 / t0.elapsed().as_secs_f64();
        bar.set_position(s.step);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            s.loss, s.lr, tps
        ));
        emit(
            &mut out,
            json!({"event": "step", "step": s.step, "loss": s.loss, "lr": s.lr,
                   "grad_norm": s.grad_norm, "tokens": s.tokens, "tokens_per_s": tps}),
        )?;
        let last = s.step == stop;
        if !eval_data.is_empty()
            && (last || (args.eval_every > 0 && s.step.is_multiple_of(args.eval_every)))
        {
            match trainer.eval(eval_data, args.eval_batches as usize) {
                Ok(loss) => {
                    bar.println(format!(
                        "step {}: eval loss {loss:.4}, perplexity {:.3}",
                        s.step,
                        (loss as f64).exp()
                    ));
                    emit(
                        &mut out,
                        json!({"event": "eval", "step": s.step, "loss": loss,
                               "ppl": (loss as f64).exp()}),
                    )?;
                }
                Err(e) => tracing::warn!("evaluation skipped: {e}"),
            }
        }
        if last || (args.save_every > 0 && s.step.is_multiple_of(args.save_every)) {
            trainer
                .save(ckpt)
                .with_context(|| format!("cannot write the checkpoint {}", ckpt.display()))?;
            last_saved = Some(s.step);
            emit(
                &mut out,
                json!({"event": "checkpoint", "step": s.step, "path": ckpt.display().to_string()}),
            )?;
        }
    }
    bar.finish();
    emit(
        &mut out,
        json!({"event": "done", "step": trainer.step_count(), "train_loss": last_loss,
               "seconds": t_run.elapsed().as_secs_f64()}),
    )?;
    if !json && !args.global.quiet {
        eprintln!(
            "finetune: {} steps, last loss {last_loss:.4}, checkpoint {}",
            trainer.step_count(),
            ckpt.display()
        );
    }
    Ok(())
}
