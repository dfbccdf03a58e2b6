//! The `edgelm` binary: a thin front end over the edgelm crates. Each subcommand lives in its
//! own file under `cmd/`; this file parses arguments, installs logging and maps outcomes to
//! exit codes: 0 success, 1 failure, 2 usage error. A closed stdout (broken pipe) ends the
//! program quietly with 0.
#![forbid(unsafe_code)]

mod cmd;
mod fetch;
mod hf;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cmd::GlobalArgs;

/// edgelm: run small Llama-family language models from GGUF files on the CPU.
#[derive(Debug, Parser)]
#[command(name = "edgelm", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a GGUF file's metadata, tensors and memory needs.
    Info(cmd::info::InfoArgs),
    /// Turn text into token ids, as llama.cpp tokenizes a prompt.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Continue a prompt, streaming the generated text.
    Run(cmd::run::RunArgs),
    /// Chat interactively (one user turn per line when stdin is not a terminal).
    Chat(cmd::chat::ChatArgs),
    /// Measure perplexity on a text file, as llama-perplexity does.
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Download the default model into the cache if it is missing; print its path.
    Fetch(cmd::fetch::FetchArgs),
    /// Measure prompt-processing and generation speed, as llama-bench does.
    Bench(cmd::bench::BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(cmd::serve::ServeArgs),
    /// Fine-tune a model's weights on a text file (f32, on the CPU), with checkpoints.
    Finetune(cmd::finetune::FinetuneArgs),
    /// Merge a LoRA adapter into a model's weights, writing a new GGUF.
    LoraMerge(cmd::lora_merge::LoraMergeArgs),
    /// Convert a model's weights to another type, as llama-quantize does.
    Quantize(cmd::quantize::QuantizeArgs),
    /// Compare a model with its base on a text: both perplexities, KL divergence, top-1 agreement.
    Eval(cmd::eval::EvalArgs),
    /// Compute an importance matrix from calibration text, as llama-imatrix does.
    Imatrix(cmd::imatrix::ImatrixArgs),
    /// Distil a teacher model into a smaller student (f32 training on the CPU).
    Distill(cmd::distill::DistillArgs),
    /// Draw the loss curves of a `--json` training log as a PNG.
    ReportTrain(cmd::report_train::ReportTrainArgs),
    /// Sweep quantization types and methods: size, PPL, KLD against the base, vs llama.cpp.
    CompressReport(cmd::compress_report::CompressReportArgs),
}

impl Command {
    fn global(&self) -> &GlobalArgs {
        match self {
            Command::Info(a) => &a.global,
            Command::Tokenize(a) => &a.global,
            Command::Run(a) => &a.global,
            Command::Chat(a) => &a.global,
            Command::Perplexity(a) => &a.global,
            Command::Fetch(a) => &a.global,
            Command::Bench(a) => &a.global,
            Command::Serve(a) => &a.global,
            Command::Finetune(a) => &a.global,
            Command::LoraMerge(a) => &a.global,
            Command::Quantize(a) => &a.global,
            Command::Eval(a) => &a.global,
            Command::Imatrix(a) => &a.global,
            Command::Distill(a) => &a.global,
            Command::ReportTrain(a) => &a.global,
            Command::CompressReport(a) => &a.global,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    cmd::init_logging(cli.command.global());
    let result = match &cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Finetune(a) => cmd::finetune::run(a),
        Command::LoraMerge(a) => cmd::lora_merge::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Imatrix(a) => cmd::imatrix::run(a),
        Command::Distill(a) => cmd::distill::run(a),
        Command::ReportTrain(a) => cmd::report_train::run(a),
        Command::CompressReport(a) => cmd::compress_report::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cmd::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if cmd::is_usage_error(&e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
