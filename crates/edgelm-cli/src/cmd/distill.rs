//! `edgelm distill`: knowledge distillation from a teacher GGUF into a student trained in
//! f32 on the CPU (edgelm-train). The student is an existing GGUF (`--student S.gguf`), or
//! made of some of the teacher's blocks: `--student-layers 0,2,4`, `--keep-layers N`
//! (`--layer-pick even|ends`), or `--student CONFIG.json` (a config that differs from the
//! teacher's in its block count and widths only); a student built from the teacher may also
//! be narrower: `--student-embd C --student-heads H --student-kv-heads KV --student-ff F`
//! keep that many of the teacher's residual channels, whole heads and FFN neurons
//! (`--width-pick magnitude|first`, edgelm_train::distill::student). The teacher runs on the
//! inference engine as it is stored (quantized) and gives, per position, its top `--top-k` tokens and the mass of the
//! rest at `--temperature`; `--teacher-cache FILE` keeps them on disk for later students.
//!
//! Objective: `α · CE(data) + (1 − α) · τ² · D(teacher ‖ student)`, D = `--loss kl|rkl|jsd`
//! over the top-k tokens plus one tail bucket (see edgelm_train::distill::loss).
//!
//! Data: `--data FILE` (repeatable) plain text, each tokenized with BOS and the streams
//! concatenated; windows of `--seq-len + 1` tokens, the last `--eval-fraction` held out.
//! Output in `--out DIR`: `checkpoint.safetensors` (resumable with `--resume`, as
//! `edgelm finetune`), `student.gguf` (F32 or `--export-gguf f16`) at the end, and with
//! `--report` the loss curves `loss.png`.
//!
//! `--json`: JSON Lines on stdout:
//! - `{"event":"data","tokens","train_windows","eval_windows"}`
//! - `{"event":"student","layers","n_layer","n_embd","n_head","n_head_kv","n_ff","n_params"}`
//!   (`layers`: teacher blocks, or null)
//! - `{"event":"step","step","loss","div","lr","grad_norm","tokens","tokens_per_s","teacher_computed","teacher_reused"}`
//!   (`loss`: the whole objective; `div`: the raw divergence D, mean over the step)
//! - `{"event":"eval","step","loss","ppl"}` (data cross-entropy of the held-out windows)
//! - `{"event":"checkpoint","step","path"}`, `{"event":"done","step","train_loss","seconds"}`,
//!   `{"event":"export","path"}`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use edgelm_gguf::GgufFile;
use edgelm_train::distill::{
    pick_layers, pick_width, student_from_layers, student_from_width, teacher, CacheHeader,
    DistillLoss, DistillOptions, Divergence, LayerPick, Teacher, TeacherCache, TeacherSource,
    WidthPick, Widths,
};
use edgelm_train::optim::{AdamWConfig, Schedule};
use edgelm_train::train::{Dataset, TrainOptions, Trainer};
use edgelm_train::{ConfigFile, ExportType, TrainError, TrainModel};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::{usage, GlobalArgs};

/// Arguments of `edgelm distill`.
#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The teacher GGUF (run as stored, e.g. quantized).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student: a GGUF file, or a JSON model config (the teacher's but for n_layer).
    #[arg(long)]
    pub student: Option<PathBuf>,
    /// The teacher blocks the student starts from, e.g. 0,2,4 (comma-separated, increasing).
    #[arg(long, value_delimiter = ',', conflicts_with = "keep_layers")]
    pub student_layers: Option<Vec<usize>>,
    /// Keep N of the teacher's blocks (picked by --layer-pick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_layers: Option<u32>,
    /// How --keep-layers (or a config's n_layer) picks blocks: even (evenly spaced, first and
    /// last included) or ends (the first and the last halves).
    #[arg(long, default_value = "even", value_parser = ["even", "ends"])]
    pub layer_pick: String,
    /// A narrower student: residual width (channels kept of the teacher's, see --width-pick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub student_embd: Option<u32>,
    /// A narrower student: query heads (whole heads of the teacher's head dimension).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub student_heads: Option<u32>,
    /// A narrower student: key/value heads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub student_kv_heads: Option<u32>,
    /// A narrower student: feed-forward width.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub student_ff: Option<u32>,
    /// Which channels, heads and FFN neurons a narrower student keeps: magnitude (the
    /// strongest by weight norms: structured magnitude pruning) or first (truncation).
    #[arg(long, default_value = "magnitude", value_parser = ["magnitude", "first"])]
    pub width_pick: String,
    /// Training text (repeatable).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Output directory.
    #[arg(short, long, default_value = "distill-out")]
    pub out: PathBuf,
    /// Divergence: kl (forward), rkl (reverse) or jsd.
    #[arg(long, default_value = "kl", value_parser = ["kl", "rkl", "jsd"])]
    pub loss: String,
    /// Temperature of the teacher's and the student's distributions.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Weight of the data cross-entropy (the divergence gets 1 - alpha).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Teacher tokens kept per position.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Keep the teacher's top-k in this file (reused when it matches teacher, data, T, k, τ).
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
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
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f32,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long)]
    pub min_lr: Option<f32>,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// AdamW decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// Batches per evaluation.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_batches: u32,
    /// Fraction of the windows held out for evaluation.
    #[arg(long, default_value_t = 0.02)]
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
    /// Element type of the exported OUT/student.gguf.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub export_gguf: String,
    /// Stop after this many steps in this invocation (checkpoint saved; continue with --resume).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// Only build the student and write it untrained as OUT/student.gguf (the "before" of
    /// an evaluation); no teacher run, no training.
    #[arg(long)]
    pub init_only: bool,
    /// Also write OUT/loss.png (loss curves) at the end.
    #[arg(long)]
    pub report: bool,
    #[command(flatten)]
    pub global: GlobalArgs,
}

fn check(args: &DistillArgs) -> Result<()> {
    super::finetune::check_loop_flags(
        args.lr,
        args.min_lr,
        args.weight_decay,
        args.clip,
        args.eval_fraction,
    )?;
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        return Err(usage(format!(
            "--temperature must be a positive number, not {}",
            args.temperature
        )));
    }
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(usage(format!(
            "--alpha must be in [0, 1], not {}",
            args.alpha
        )));
    }
    let n_sources = usize::from(args.student.is_some())
        + usize::from(args.student_layers.is_some())
        + usize::from(args.keep_layers.is_some());
    if n_sources > 1 || (n_sources == 0 && !has_width_flags(args)) {
        return Err(usage(
            "name the student once: --student FILE.gguf|CONFIG.json, --student-layers LIST or \
             --keep-layers N (or only narrower widths: --student-embd/-heads/-kv-heads/-ff)",
        ));
    }
    if let (Some(path), true) = (&args.student, has_width_flags(args)) {
        return Err(usage(if is_config(path) {
            "give the widths either in the student config or as --student-* flags"
        } else {
            "--student-embd/-heads/-kv-heads/-ff shape a student built from the teacher; they \
             do not apply to an existing student GGUF"
        }));
    }
    Ok(())
}

/// True when `--student` names a JSON model config rather than a GGUF.
fn is_config(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

fn has_width_flags(args: &DistillArgs) -> bool {
    args.student_embd.is_some()
        || args.student_heads.is_some()
        || args.student_kv_heads.is_some()
        || args.student_ff.is_some()
}

/// The student and the GGUF its export copies metadata from.
struct Student {
    model: TrainModel,
    layers: Option<Vec<usize>>,
    /// The GGUF whose metadata and tokenizer the exported student carries.
    src: Arc<GgufFile>,
}

fn build_student(args: &DistillArgs, teacher_file: &Arc<GgufFile>) -> Result<Student> {
    let pick = if args.layer_pick == "ends" {
        LayerPick::Ends
    } else {
        LayerPick::Even
    };
    let width_pick = if args.width_pick == "first" {
        WidthPick::First
    } else {
        WidthPick::Magnitude
    };
    let tcfg =
        edgelm_model::ModelConfig::from_gguf(teacher_file).context("the teacher's config")?;
    let n_teacher = tcfg.n_layer;
    // The widths from the flags, each defaulting to the teacher's.
    let flag_widths = Widths {
        n_embd: args.student_embd.map_or(tcfg.n_embd, |v| v as usize),
        n_head: args.student_heads.map_or(tcfg.n_head, |v| v as usize),
        n_head_kv: args.student_kv_heads.map_or(tcfg.n_head_kv, |v| v as usize),
        n_ff: args.student_ff.map_or(tcfg.n_ff, |v| v as usize),
    };
    let from_teacher = |layers: Vec<usize>, widths: Widths| -> Result<Student> {
        let t = TrainModel::from_gguf(teacher_file)
            .context("cannot load the teacher's weights to build the student")?;
        let mut model = student_from_layers(&t, &layers).context("cannot build the student")?;
        drop(t);
        if widths != Widths::of(model.config()) {
            let keep = pick_width(&model, widths, width_pick).map_err(|e| usage(e.to_string()))?;
            model = student_from_width(&model, &keep).context("cannot build the student")?;
        }
        Ok(Student {
            model,
            layers: Some(layers),
            src: Arc::clone(teacher_file),
        })
    };
    if let Some(layers) = &args.student_layers {
        return from_teacher(layers.clone(), flag_widths);
    }
    if let Some(n) = args.keep_layers {
        let layers = pick_layers(n_teacher, n as usize, pick).map_err(|e| usage(e.to_string()))?;
        return from_teacher(layers, flag_widths);
    }
    let Some(path) = args.student.as_ref() else {
        // Only narrower widths: every block.
        return from_teacher((0..n_teacher).collect(), flag_widths);
    };
    if is_config(path) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the student config {}", path.display()))?;
        let cf: ConfigFile = serde_json::from_str(&text)
            .with_context(|| format!("bad student config {}", path.display()))?;
        let cfg = cf.to_model_config()?;
        let mut same = tcfg.clone();
        same.n_layer = cfg.n_layer;
        same.n_embd = cfg.n_embd;
        same.n_head = cfg.n_head;
        same.n_head_kv = cfg.n_head_kv;
        same.n_ff = cfg.n_ff;
        if ConfigFile::from_model_config(&same) != ConfigFile::from_model_config(&cfg) {
            bail!(
                "{}: a student config may differ from the teacher's only in n_layer, n_embd, \
                 n_head, n_head_kv and n_ff (its weights are the teacher's; head_dim, the \
                 vocabulary and the rest stay)",
                path.display()
            );
        }
        let layers = pick_layers(n_teacher, cfg.n_layer, pick).map_err(|e| usage(e.to_string()))?;
        return from_teacher(layers, Widths::of(&cfg));
    }
    let (spath, sfile) = super::open_gguf(Some(path))?;
    let model = TrainModel::from_gguf(&sfile)
        .with_context(|| format!("cannot load {} as the student", spath.display()))?;
    Ok(Student {
        model,
        layers: None,
        src: sfile,
    })
}

/// Runs `edgelm distill`.
pub fn run(args: &DistillArgs) -> Result<()> {
    check(args)?;
    let (tpath, tfile) = super::open_gguf(Some(&args.teacher))?;
    let tok = super::load_tokenizer(&tpath, &tfile)?;
    let student = build_student(args, &tfile)?;
    let t_vocab = edgelm_model::ModelConfig::from_gguf(&tfile)?.n_vocab;
    let s_vocab = student.model.config().n_vocab;
    if s_vocab != t_vocab {
        bail!(
            "the student has a vocabulary of {s_vocab} tokens and the teacher {} one of \
             {t_vocab}: distillation needs the same tokenizer",
            tpath.display()
        );
    }
    if let Some(path) = &args.student {
        let key = "tokenizer.ggml.tokens";
        if student.layers.is_none() && student.src.metadata().get(key) != tfile.metadata().get(key)
        {
            bail!(
                "{} and {} have different tokenizers (their {key} differ)",
                path.display(),
                tpath.display()
            );
        }
    }
    let ty = if args.export_gguf == "f16" {
        ExportType::F16
    } else {
        ExportType::F32
    };
    if args.init_only {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        let out = args.out.join("student.gguf");
        student
            .model
            .write_gguf(&student.src, &out, ty)
            .with_context(|| format!("cannot write {}", out.display()))?;
        if args.global.json {
            println!(
                "{}",
                json!({"event": "export", "path": out.display().to_string()})
            );
        } else if !args.global.quiet {
            eprintln!("distill: wrote the untrained student {}", out.display());
        }
        return Ok(());
    }
    let seq_len = args.seq_len as usize;
    let mut stream = Vec::new();
    for p in &args.data {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the training text {}", p.display()))?;
        let t = tok
            .encode(&text, true, false)
            .with_context(|| format!("cannot tokenize {}", p.display()))?;
        stream.extend(t);
    }
    let (train_data, eval_data) = Dataset::from_stream(&stream, seq_len).split(args.eval_fraction);
    if train_data.is_empty() {
        bail!(
            "the training data has {} tokens: too few for one window of {} (lower --seq-len)",
            stream.len(),
            seq_len + 1
        );
    }
    let json = args.global.json;
    let emit = |v: serde_json::Value| -> Result<()> {
        if json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        }
        Ok(())
    };
    emit(
        json!({"event": "data", "tokens": stream.len(), "train_windows": train_data.len(),
                "eval_windows": eval_data.len()}),
    )?;
    let sc = student.model.config();
    emit(json!({"event": "student", "layers": student.layers,
                "n_layer": sc.n_layer, "n_embd": sc.n_embd, "n_head": sc.n_head,
                "n_head_kv": sc.n_head_kv, "n_ff": sc.n_ff,
                "n_params": student.model.layout().n_params()}))?;
    if !json && !args.global.quiet {
        eprintln!(
            "distill: student of {} blocks, width {}, {}/{} heads, FFN {}{} ({} parameters), \
             {} training windows of {seq_len}",
            sc.n_layer,
            sc.n_embd,
            sc.n_head,
            sc.n_head_kv,
            sc.n_ff,
            student
                .layers
                .as_ref()
                .map_or(String::new(), |l| format!(" (teacher blocks {l:?})")),
            student.model.layout().n_params(),
            train_data.len()
        );
    }
    let n_threads = args.global.n_threads();
    let teacher = Teacher::new(
        Arc::clone(&tfile),
        n_threads,
        seq_len,
        args.top_k as usize,
        args.temperature,
    )
    .with_context(|| format!("cannot load the teacher {}", tpath.display()))?;
    let cache = match &args.teacher_cache {
        None => None,
        Some(p) => {
            let header = CacheHeader {
                teacher: teacher::file_fingerprint(&tpath)?,
                data: teacher::data_fingerprint(&stream, seq_len),
                n_windows: train_data.len(),
                seq_len,
                k: teacher.k(),
                temperature: args.temperature,
                n_vocab: t_vocab,
            };
            let c = TeacherCache::open(p, header)?;
            tracing::info!(windows = c.len(), "teacher cache");
            Some(c)
        }
    };
    let options = DistillOptions {
        divergence: Divergence::from_name(&args.loss).expect("clap checked the name"),
        temperature: args.temperature,
        alpha: args.alpha,
    };
    let mut dloss = DistillLoss::new(
        options,
        TeacherSource::new(Some(teacher), cache),
        args.batch as usize * seq_len,
        s_vocab,
    )?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n_threads)
        .build()
        .with_context(|| format!("cannot start {n_threads} worker threads"))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let ckpt = args.out.join("checkpoint.safetensors");
    let mut trainer = match &args.resume {
        Some(p) => Trainer::resume(student.model, p, Some(args.steps))
            .with_context(|| format!("cannot resume from {}", p.display()))?,
        None => Trainer::new(
            student.model,
            TrainOptions {
                batch: args.batch as usize,
                seq_len,
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
    let mut log = Vec::new();
    pool.install(|| {
        train_loop(
            args,
            &mut trainer,
            &mut dloss,
            &train_data,
            &eval_data,
            &ckpt,
            &emit,
            &mut log,
        )
    })?;
    let out = args.out.join("student.gguf");
    trainer
        .model
        .write_gguf(&student.src, &out, ty)
        .with_context(|| format!("cannot write {}", out.display()))?;
    emit(json!({"event": "export", "path": out.display().to_string()}))?;
    if !json && !args.global.quiet {
        eprintln!("distill: wrote {}", out.display());
    }
    if args.report {
        let png = args.out.join("loss.png");
        super::report_train::plot(&log, &png, "edgelm distill")
            .with_context(|| format!("cannot draw {}", png.display()))?;
        if !json && !args.global.quiet {
            eprintln!("distill: wrote {}", png.display());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train_loop(
    args: &DistillArgs,
    trainer: &mut Trainer,
    dloss: &mut DistillLoss,
    train_data: &Dataset,
    eval_data: &Dataset,
    ckpt: &Path,
    emit: &dyn Fn(serde_json::Value) -> Result<()>,
    log: &mut Vec<serde_json::Value>,
) -> Result<()> {
    let first = trainer.step_count();
    let total = args.steps;
    let stop = args.stop_after.map_or(total, |n| (first + n).min(total));
    let bar = ProgressBar::new(total);
    if args.global.json || args.global.quiet {
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
    let mut record = |v: serde_json::Value| -> Result<()> {
        emit(v.clone())?;
        log.push(v);
        Ok(())
    };
    for _ in first..stop {
        let t0 = Instant::now();
        let s = match trainer.step_with(train_data, Some(dloss)) {
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
                bail!("{e}; {kept}");
            }
            Err(e) => return Err(e.into()),
        };
        let div = dloss.take_mean_divergence();
        last_loss = s.loss;
        let tps = s.tokens as f64 / t0.elapsed().as_secs_f64();
        bar.set_position(s.step);
        bar.set_message(format!(
            "loss {:.4} D {div:.4} lr {:.2e} {tps:.0} tok/s",
            s.loss, s.lr
        ));
        record(
            json!({"event": "step", "step": s.step, "loss": s.loss, "div": div, "lr": s.lr,
                      "grad_norm": s.grad_norm, "tokens": s.tokens, "tokens_per_s": tps,
                      "teacher_computed": dloss.source.computed,
                      "teacher_reused": dloss.source.reused}),
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
                    record(json!({"event": "eval", "step": s.step, "loss": loss,
                                  "ppl": (loss as f64).exp()}))?;
                }
                Err(e) => tracing::warn!("evaluation skipped: {e}"),
            }
        }
        if last || (args.save_every > 0 && s.step.is_multiple_of(args.save_every)) {
            trainer
                .save(ckpt)
                .with_context(|| format!("cannot write the checkpoint {}", ckpt.display()))?;
            last_saved = Some(s.step);
            record(
                json!({"event": "checkpoint", "step": s.step, "path": ckpt.display().to_string()}),
            )?;
        }
    }
    bar.finish();
    record(
        json!({"event": "done", "step": trainer.step_count(), "train_loss": last_loss,
                  "seconds": t_run.elapsed().as_secs_f64()}),
    )?;
    if !args.global.json && !args.global.quiet {
        eprintln!(
            "distill: {} steps, last loss {last_loss:.4}, teacher windows computed {} / reused {}",
            trainer.step_count(),
            dloss.source.computed,
            dloss.source.reused
        );
    }
    Ok(())
}
