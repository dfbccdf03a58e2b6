//! `edgelm compress-report`: a quantization sweep. For each file type × method it quantizes the
//! model with edgelm (and with llama.cpp's `llama-quantize` when `--llama-quantize` is given,
//! same importance matrix), times both, evaluates each file against the base (`edgelm eval`:
//! PPL, KL divergence mean/p99, top-1 agreement) and writes
//!
//! - `DIR/report.json`: the configuration, the command line and one object per row,
//! - `DIR/report.md`: the same as Markdown tables (with the quantize-time ratios),
//! - `DIR/size_ppl.png`, `DIR/size_kld.png`: size against PPL and KLD, one series per
//!   quantizer and method (plotters).
//!
//! The base's log-probabilities are computed once (`--base-cache`, default `DIR/base.kld`)
//! and reused by every evaluation. A llama.cpp file whose tensors are byte-for-byte edgelm's
//! is not evaluated again: its row reuses edgelm's figures and says "identical tensors"
//! (`--eval-identical` evaluates it anyway). The sweep is resumable: rows already in
//! `DIR/report.json` (with their file present) are skipped, so an interrupted run continues
//! where it stopped. Quantized files stay in `DIR/files/`. Progress goes to stderr.
//!
//! Methods: `rtn` (round to nearest), `imatrix` (rtn weighted by `--imatrix`), and the
//! error-compensating ones `edgelm quantize --method` knows (`gptq`, `awq`, with `--calib`);
//! llama.cpp has rtn and imatrix rows only. A method this binary's quantizer does not know is
//! an error before anything runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use edgelm_gguf::GgufFile;
use edgelm_quant::recipe::{FileType, ALL_FILE_TYPES};
use serde::{Deserialize, Serialize};

use super::{usage, GlobalArgs};

/// Methods the report knows; whether edgelm's quantizer supports one is asked of `quantize`.
pub const METHODS: &[&str] = &["rtn", "imatrix", "gptq", "awq"];

/// Arguments of `edgelm compress-report`.
#[derive(Debug, Args)]
pub struct CompressReportArgs {
    /// The model to quantize: an F32 (or F16/BF16) GGUF, the full-precision base.
    #[arg(short, long)]
    pub model: PathBuf,
    /// File types, comma-separated (default: all 17).
    #[arg(long, value_delimiter = ',', value_parser = parse_file_type)]
    pub types: Vec<FileType>,
    /// Methods, comma-separated: rtn, imatrix, gptq, awq.
    #[arg(long, value_delimiter = ',', default_value = "rtn,imatrix")]
    pub methods: Vec<String>,
    /// Importance matrix for the `imatrix` method (both quantizers use it).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Calibration text for the gptq and awq methods.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration chunks for gptq and awq.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub calib_chunks: u32,
    /// llama.cpp's llama-quantize: also quantize with it (rtn and imatrix rows).
    #[arg(long)]
    pub llama_quantize: Option<PathBuf>,
    /// Evaluation text (e.g. WikiText-2 raw test).
    #[arg(short, long)]
    pub file: PathBuf,
    /// Evaluation windows (default: all the text holds).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: Option<u32>,
    /// Window length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(4..))]
    pub ctx_size: u32,
    /// The base's log-probabilities (llama.cpp's --kl-divergence-base format): read when it
    /// exists, else computed from --model and written (default DIR/base.kld).
    #[arg(long, value_name = "FILE")]
    pub base_cache: Option<PathBuf>,
    /// Evaluate with llama.cpp's llama-perplexity (`--kl-divergence` against the same base
    /// file, which it then also writes when missing) instead of `edgelm eval`: same
    /// statistics, llama.cpp's kernels (faster where edgelm runs a scalar reference).
    #[arg(long, value_name = "PATH")]
    pub llama_perplexity: Option<PathBuf>,
    /// Evaluate llama.cpp files even when their tensors equal edgelm's.
    #[arg(long)]
    pub eval_identical: bool,
    /// Output directory (report.md, report.json, PNG charts, files/).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub global: GlobalArgs,
}

fn parse_file_type(s: &str) -> Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = ALL_FILE_TYPES.iter().map(|t| t.name()).collect();
        format!("unknown file type '{s}' (one of: {})", names.join(", "))
    })
}

/// What one evaluation measured (from `edgelm eval --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Perplexity of the file.
    pub ppl: f64,
    /// Its uncertainty.
    pub ppl_stderr: f64,
    /// Perplexity of the base.
    pub ppl_base: f64,
    /// Mean KL divergence from the base.
    pub kld_mean: f64,
    /// Its uncertainty.
    pub kld_mean_stderr: f64,
    /// Median KL divergence.
    pub kld_median: f64,
    /// 99th percentile.
    pub kld_p99: f64,
    /// Top-1 agreement with the base (0..1).
    pub same_top: f64,
    /// Tokens scored.
    pub n_tokens_scored: u64,
    /// Seconds the evaluation took.
    pub eval_s: f64,
}

/// One row: a file type, a method, a quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// File type name (Q4_K_M, ...).
    pub file_type: String,
    /// rtn, imatrix, gptq, awq.
    pub method: String,
    /// "edgelm" or "llama.cpp".
    pub quantizer: String,
    /// The quantized file.
    pub file: String,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// Bits per weight over all tensors (tensor data only, as llama-quantize reports).
    pub bpw: f64,
    /// Wall time of the quantizer process (load, quantize, write), seconds.
    pub quantize_s: f64,
    /// A llama.cpp row whose tensors are byte-identical to edgelm's (figures copied).
    pub identical_tensors: bool,
    /// The evaluation.
    pub figures: Figures,
}

impl Row {
    fn key(&self) -> (String, String, String) {
        (
            self.file_type.clone(),
            self.method.clone(),
            self.quantizer.clone(),
        )
    }
}

/// What a report was made with; a resumed sweep must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The base model.
    pub model: String,
    /// Evaluation text.
    pub text: String,
    /// Window length.
    pub n_ctx: u32,
    /// Windows (None: all).
    pub chunks: Option<u32>,
    /// Importance matrix.
    pub imatrix: Option<String>,
    /// Calibration text.
    pub calib: Option<String>,
    /// Calibration chunks.
    pub calib_chunks: u32,
    /// Evaluator: "edgelm eval" or "llama-perplexity".
    #[serde(default)]
    pub evaluator: String,
}

impl Config {
    /// Whether a sweep with `self` may continue one made with `old`: same base, text,
    /// windows and evaluator; an importance matrix or calibration text may be added, not
    /// changed.
    fn continues(&self, old: &Config) -> bool {
        let same_or_new = |a: &Option<String>, b: &Option<String>| b.is_none() || a == b;
        self.model == old.model
            && self.text == old.text
            && self.n_ctx == old.n_ctx
            && self.chunks == old.chunks
            && self.evaluator == old.evaluator
            && same_or_new(&self.imatrix, &old.imatrix)
            && same_or_new(&self.calib, &old.calib)
            && (old.calib.is_none() || self.calib_chunks == old.calib_chunks)
    }
}

/// `DIR/report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Format version (1).
    pub version: u32,
    /// The command lines that produced it (one per run of the sweep).
    pub commands: Vec<String>,
    /// Configuration.
    pub config: Config,
    /// Finished rows.
    pub rows: Vec<Row>,
}

fn is_float(t: FileType) -> bool {
    matches!(t, FileType::F32 | FileType::F16 | FileType::BF16)
}

/// The values `edgelm quantize --method` accepts in this build.
fn quantize_methods() -> Vec<String> {
    use clap::Args as _;
    let cmd = super::quantize::QuantizeArgs::augment_args(clap::Command::new("quantize"));
    let values: Vec<String> = cmd
        .get_arguments()
        .find(|a| a.get_id() == "method")
        .map(|a| {
            a.get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect()
        })
        .unwrap_or_default();
    values
}

fn check_args(args: &CompressReportArgs) -> Result<()> {
    let known = quantize_methods();
    if args.methods.is_empty() {
        return Err(usage("--methods is empty"));
    }
    for m in &args.methods {
        if !METHODS.contains(&m.as_str()) {
            return Err(usage(format!(
                "unknown method '{m}' (one of: {})",
                METHODS.join(", ")
            )));
        }
        let q = if m == "imatrix" { "rtn" } else { m.as_str() };
        if !known.iter().any(|k| k == q) {
            return Err(usage(format!(
                "method '{m}' is not supported by this edgelm build (edgelm quantize --method \
                 accepts: {})",
                known.join(", ")
            )));
        }
        if m == "imatrix" && args.imatrix.is_none() {
            return Err(usage("method imatrix needs --imatrix FILE"));
        }
        if (m == "gptq" || m == "awq") && args.calib.is_none() {
            return Err(usage(format!(
                "method {m} needs calibration text (--calib FILE)"
            )));
        }
    }
    let mut files: Vec<(&Path, &str)> = vec![(&args.model, "--model"), (&args.file, "--file")];
    if let Some(p) = &args.imatrix {
        files.push((p, "--imatrix"));
    }
    if let Some(p) = &args.calib {
        files.push((p, "--calib"));
    }
    if let Some(p) = &args.llama_quantize {
        files.push((p, "--llama-quantize"));
    }
    if let Some(p) = &args.llama_perplexity {
        files.push((p, "--llama-perplexity"));
    }
    for (p, flag) in files {
        if !p.is_file() {
            return Err(usage(format!("{flag} {}: no such file", p.display())));
        }
    }
    Ok(())
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_line() -> String {
    let mut v: Vec<String> = std::env::args().collect();
    if let Some(first) = v.first_mut() {
        *first = "edgelm".into();
    }
    v.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd`, returning its stdout and wall time; a failure carries its stderr.
fn run_timed(cmd: &mut Command, what: &str) -> Result<(String, f64)> {
    let t0 = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), secs))
}

/// `(bits per weight over tensor data, tensor bytes)` of a GGUF file.
fn gguf_bpw(path: &Path) -> Result<f64> {
    let f = GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (bytes, elems) = f.tensors().iter().fold((0u64, 0u64), |(b, e), t| {
        (b + t.n_bytes, e + t.n_elements())
    });
    Ok(if elems == 0 {
        0.0
    } else {
        8.0 * bytes as f64 / elems as f64
    })
}

/// Whether two GGUF files hold the same tensors (names, shapes, types and data bytes).
fn same_tensors(a: &Path, b: &Path) -> Result<bool> {
    let fa = GgufFile::open(a).with_context(|| format!("cannot read {}", a.display()))?;
    let fb = GgufFile::open(b).with_context(|| format!("cannot read {}", b.display()))?;
    if fa.tensors().len() != fb.tensors().len() {
        return Ok(false);
    }
    for ta in fa.tensors() {
        let Some(tb) = fb.tensor(&ta.name) else {
            return Ok(false);
        };
        if ta.ty != tb.ty || ta.dims != tb.dims || fa.tensor_data(ta) != fb.tensor_data(tb) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The statistics of llama-perplexity's `--kl-divergence` output.
pub fn parse_llama_kld(text: &str) -> Result<Figures> {
    let value = |prefix: &str| -> Result<(f64, f64)> {
        let line = text
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no \"{prefix}\" line in its output"))?;
        let rest = line[prefix.len()..].trim_start_matches([' ', ':']);
        let rest = rest.trim_end_matches(['%', ' ']);
        let mut parts = rest
            .split('±')
            .map(|p| p.trim().trim_end_matches(['%', ' ']));
        let num = |p: Option<&str>| -> Result<f64> {
            p.with_context(|| format!("no number in \"{line}\""))?
                .trim()
                .parse::<f64>()
                .with_context(|| format!("bad number in \"{line}\""))
        };
        let v = num(parts.next())?;
        let u = match parts.next() {
            Some(p) => num(Some(p))?,
            None => 0.0,
        };
        Ok((v, u))
    };
    let (ppl, ppl_stderr) = value("Mean PPL(Q)")?;
    let (ppl_base, _) = value("Mean PPL(base)")?;
    let (kld_mean, kld_mean_stderr) = value("Mean    KLD:")?;
    let (kld_median, _) = value("Median  KLD:")?;
    let (kld_p99, _) = value("99.0%   KLD:")?;
    let (same_top, _) = value("Same top p:")?;
    Ok(Figures {
        ppl,
        ppl_stderr,
        ppl_base,
        kld_mean,
        kld_mean_stderr,
        kld_median,
        kld_p99,
        same_top: same_top / 100.0,
        n_tokens_scored: 0,
        eval_s: 0.0,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

struct Sweep<'a> {
    args: &'a CompressReportArgs,
    exe: PathBuf,
    base_cache: PathBuf,
    files_dir: PathBuf,
    report: Report,
}

impl Sweep<'_> {
    fn threads(&self) -> usize {
        self.args.global.n_threads()
    }

    fn done(&self, t: FileType, method: &str, quantizer: &str) -> Option<&Row> {
        self.report.rows.iter().find(|r| {
            r.file_type == t.name()
                && r.method == method
                && r.quantizer == quantizer
                && Path::new(&r.file).is_file()
        })
    }

    fn edgelm_quantize(&self, t: FileType, method: &str, out: &Path) -> Result<f64> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("quantize")
            .arg(&self.args.model)
            .arg(out)
            .args(["--type", t.name(), "--json", "-t"])
            .arg(self.threads().to_string());
        match method {
            "rtn" => {}
            "imatrix" => {
                cmd.arg("--imatrix")
                    .arg(self.args.imatrix.as_ref().expect("checked"));
            }
            m => {
                cmd.args(["--method", m, "--calib"])
                    .arg(self.args.calib.as_ref().expect("checked"))
                    .args(["--calib-chunks", &self.args.calib_chunks.to_string()]);
            }
        }
        Ok(run_timed(&mut cmd, &format!("edgelm quantize --type {t} ({method})"))?.1)
    }

    fn llama_quantize(&self, t: FileType, method: &str, out: &Path) -> Result<f64> {
        let mut cmd = Command::new(self.args.llama_quantize.as_ref().expect("given"));
        if method == "imatrix" {
            cmd.arg("--imatrix")
                .arg(self.args.imatrix.as_ref().expect("checked"));
        }
        cmd.arg(&self.args.model)
            .arg(out)
            .arg(t.name())
            .arg(self.threads().to_string());
        Ok(run_timed(&mut cmd, &format!("llama-quantize {t} ({method})"))?.1)
    }

    fn evaluate(&self, file: &Path) -> Result<Figures> {
        match &self.args.llama_perplexity {
            // Once more on a failure: llama-perplexity's output has been seen cut short.
            Some(lp) => self.evaluate_llama(lp, file).or_else(|e| {
                eprintln!("warning: {e:#}; running llama-perplexity once more");
                self.evaluate_llama(lp, file)
            }),
            None => self.evaluate_edgelm(file),
        }
    }

    /// llama-perplexity's KL-divergence mode on `file` (writing the base file first when it
    /// is missing).
    fn evaluate_llama(&self, lp: &Path, file: &Path) -> Result<Figures> {
        let a = self.args;
        let common = |cmd: &mut Command| {
            cmd.args(["-c", &a.ctx_size.to_string(), "-b", &a.ctx_size.to_string()])
                .args(["-t", &self.threads().to_string()]);
        };
        if !self.base_cache.is_file() {
            let mut tmp = self.base_cache.as_os_str().to_owned();
            tmp.push(".tmp");
            let mut cmd = Command::new(lp);
            cmd.arg("-m")
                .arg(&a.model)
                .arg("-f")
                .arg(&a.file)
                .arg("--kl-divergence-base")
                .arg(&tmp);
            if let Some(n) = a.chunks {
                cmd.args(["--chunks", &n.to_string()]);
            }
            common(&mut cmd);
            if !a.global.quiet {
                eprintln!(
                    "writing the base's log-probabilities to {} (llama-perplexity)",
                    self.base_cache.display()
                );
            }
            run_timed(&mut cmd, "llama-perplexity --kl-divergence-base")?;
            std::fs::rename(&tmp, &self.base_cache)
                .with_context(|| format!("cannot write {}", self.base_cache.display()))?;
        }
        let mut cmd = Command::new(lp);
        cmd.arg("-m")
            .arg(file)
            .arg("--kl-divergence-base")
            .arg(&self.base_cache)
            .arg("--kl-divergence");
        common(&mut cmd);
        let t0 = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {}", lp.display()))?;
        let secs = t0.elapsed().as_secs_f64();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            bail!(
                "llama-perplexity --kl-divergence on {} failed ({}):\n{}",
                file.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let mut f = parse_llama_kld(&text)
            .with_context(|| format!("llama-perplexity on {}", file.display()))?;
        f.eval_s = secs;
        let info = edgelm_runtime::KldBaseReader::open(&self.base_cache)?;
        let i = info.info();
        f.n_tokens_scored = (i.n_chunks * (i.n_ctx - 1 - i.n_ctx / 2)) as u64;
        Ok(f)
    }

    fn evaluate_edgelm(&self, file: &Path) -> Result<Figures> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("eval")
            .arg("--base")
            .arg(&self.args.model)
            .arg("--base-cache")
            .arg(&self.base_cache)
            .arg("-m")
            .arg(file)
            .arg("-f")
            .arg(&self.args.file)
            .args(["-c", &self.args.ctx_size.to_string(), "--json", "-t"])
            .arg(self.threads().to_string());
        if let Some(n) = self.args.chunks {
            cmd.args(["--chunks", &n.to_string()]);
        }
        let (out, secs) = run_timed(&mut cmd, &format!("edgelm eval {}", file.display()))?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("edgelm eval printed no JSON: {out}"))?;
        let f = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_f64())
                .with_context(|| format!("edgelm eval's JSON has no {k}"))
        };
        Ok(Figures {
            ppl: f("ppl")?,
            ppl_stderr: f("ppl_stderr")?,
            ppl_base: f("ppl_base")?,
            kld_mean: f("kld_mean")?,
            kld_mean_stderr: f("kld_mean_stderr")?,
            kld_median: f("kld_median")?,
            kld_p99: f("kld_p99")?,
            same_top: f("same_top")?,
            n_tokens_scored: f("n_tokens_scored")? as u64,
            eval_s: secs,
        })
    }

    fn save(&self) -> Result<()> {
        let dir = &self.args.out;
        let json = serde_json::to_string_pretty(&self.report)?;
        write_atomically(&dir.join("report.json"), json.as_bytes())?;
        write_atomically(
            &dir.join("report.md"),
            render_markdown(&self.report).as_bytes(),
        )?;
        if let Err(e) = draw_charts(&self.report.rows, dir) {
            eprintln!("warning: charts not drawn: {e:#}");
        }
        Ok(())
    }

    fn push(&mut self, row: Row) -> Result<()> {
        self.report.rows.retain(|r| r.key() != row.key());
        self.report.rows.push(row);
        self.save()
    }

    /// Quantizes, compares and evaluates one row and records it.
    fn row(&mut self, tag: &str, t: FileType, method: &str, quantizer: &str) -> Result<()> {
        let quiet = self.args.global.quiet;
        let file = self.files_dir.join(format!(
            "{}-{method}-{}.gguf",
            t.name(),
            if quantizer == "edgelm" {
                "edgelm"
            } else {
                "llamacpp"
            }
        ));
        if !quiet {
            eprintln!("{tag}: quantizing ...");
        }
        let quantize_s = if quantizer == "edgelm" {
            self.edgelm_quantize(t, method, &file)?
        } else {
            self.llama_quantize(t, method, &file)?
        };
        let bpw = gguf_bpw(&file)?;
        let file_bytes = std::fs::metadata(&file)?.len();
        let twin = (quantizer != "edgelm")
            .then(|| self.done(t, method, "edgelm").cloned())
            .flatten();
        let identical = match &twin {
            Some(tw) => same_tensors(&file, Path::new(&tw.file))?,
            None => false,
        };
        let figures = match twin.filter(|_| identical && !self.args.eval_identical) {
            Some(tw) => tw.figures,
            None => {
                if !quiet {
                    eprintln!("{tag}: quantized in {quantize_s:.1} s, evaluating ...");
                }
                self.evaluate(&file)?
            }
        };
        if !quiet {
            eprintln!(
                "{tag}: {:.2} MiB, {bpw:.3} bpw, PPL {:.4}, KLD {:.6}, top-1 {:.2} %, quantize \
                 {quantize_s:.1} s{}",
                file_bytes as f64 / (1 << 20) as f64,
                figures.ppl,
                figures.kld_mean,
                100.0 * figures.same_top,
                if identical {
                    " (tensors identical to edgelm's)"
                } else {
                    ""
                }
            );
        }
        self.push(Row {
            file_type: t.name().into(),
            method: method.into(),
            quantizer: quantizer.into(),
            file: file.display().to_string(),
            file_bytes,
            bpw,
            quantize_s,
            identical_tensors: identical,
            figures,
        })
    }
}

/// Runs `edgelm compress-report`.
pub fn run(args: &CompressReportArgs) -> Result<()> {
    check_args(args)?;
    let types: Vec<FileType> = if args.types.is_empty() {
        ALL_FILE_TYPES.to_vec()
    } else {
        args.types.clone()
    };
    std::fs::create_dir_all(args.out.join("files"))
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let config = Config {
        model: abs(&args.model).display().to_string(),
        text: abs(&args.file).display().to_string(),
        n_ctx: args.ctx_size,
        chunks: args.chunks,
        imatrix: args
            .imatrix
            .as_deref()
            .map(|p| abs(p).display().to_string()),
        calib: args.calib.as_deref().map(|p| abs(p).display().to_string()),
        calib_chunks: args.calib_chunks,
        evaluator: if args.llama_perplexity.is_some() {
            "llama-perplexity".into()
        } else {
            "edgelm eval".into()
        },
    };
    let json_path = args.out.join("report.json");
    let mut report = if json_path.is_file() {
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("cannot read {}", json_path.display()))?;
        let old: Report = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a compress-report file; use another --out",
                json_path.display()
            )
        })?;
        if !config.continues(&old.config) {
            return Err(usage(format!(
                "{} holds a sweep with other settings ({:?}); use another --out to start anew",
                json_path.display(),
                old.config
            )));
        }
        let mut old = old;
        old.config.imatrix = config.imatrix.clone().or(old.config.imatrix);
        old.config.calib = config.calib.clone().or(old.config.calib);
        old.config.calib_chunks = config.calib_chunks;
        old
    } else {
        Report {
            version: 1,
            commands: Vec::new(),
            config,
            rows: Vec::new(),
        }
    };
    report.commands.push(command_line());
    let exe = std::env::current_exe().context("cannot locate the edgelm binary")?;
    let mut sweep = Sweep {
        args,
        exe,
        base_cache: args
            .base_cache
            .clone()
            .unwrap_or_else(|| args.out.join("base.kld")),
        files_dir: args.out.join("files"),
        report,
    };
    let quiet = args.global.quiet;
    let mut jobs: Vec<(FileType, &str, &str)> = Vec::new();
    for &t in &types {
        for m in &args.methods {
            if is_float(t) && m != "rtn" {
                continue; // no rounding to choose: one conversion per float type
            }
            jobs.push((t, m, "edgelm"));
            if args.llama_quantize.is_some() && (m == "rtn" || m == "imatrix") {
                jobs.push((t, m, "llama.cpp"));
            }
        }
    }
    let n = jobs.len();
    let mut failed = Vec::new();
    for (i, (t, method, quantizer)) in jobs.into_iter().enumerate() {
        let tag = format!("[{}/{n}] {t} {method} {quantizer}", i + 1);
        if sweep.done(t, method, quantizer).is_some() {
            if !quiet {
                eprintln!("{tag}: done before, skipped");
            }
            continue;
        }
        // A failed row is reported and the sweep goes on (a rerun retries it).
        if let Err(e) = sweep.row(&tag, t, method, quantizer) {
            eprintln!("{tag}: FAILED: {e:#}");
            failed.push(tag);
        }
    }
    sweep.save()?;
    if !failed.is_empty() {
        bail!(
            "{} of {n} rows failed ({}); rerun the same command to retry them",
            failed.len(),
            failed.join("; ")
        );
    }
    if !quiet {
        eprintln!(
            "wrote {} and {}",
            args.out.join("report.md").display(),
            args.out.join("report.json").display()
        );
    }
    Ok(())
}

fn type_rank(name: &str) -> usize {
    ALL_FILE_TYPES
        .iter()
        .position(|t| t.name() == name)
        .unwrap_or(usize::MAX)
}

fn method_rank(m: &str) -> usize {
    METHODS.iter().position(|x| *x == m).unwrap_or(usize::MAX)
}

fn sorted(rows: &[Row]) -> Vec<&Row> {
    let mut v: Vec<&Row> = rows.iter().collect();
    v.sort_by_key(|r| {
        (
            type_rank(&r.file_type),
            method_rank(&r.method),
            r.quantizer != "edgelm",
        )
    });
    v
}

/// The Markdown report.
pub fn render_markdown(report: &Report) -> String {
    let mut s = String::new();
    let c = &report.config;
    let _ = writeln!(s, "# Quantization sweep\n");
    let _ = writeln!(s, "Commands:\n");
    for cmd in &report.commands {
        let _ = writeln!(s, "    {cmd}");
    }
    let _ = writeln!(
        s,
        "\nBase `{}`; text `{}`, windows of {} tokens, {} windows; importance matrix {}; \
         evaluated with {}.\n\
         KLD is KL(base ‖ file) per token (nats); top-1 is agreement of the arg-max with the \
         base. A llama.cpp row marked \"identical tensors\" has tensor data byte-for-byte equal \
         to edgelm's file of the same type and method, so its figures are edgelm's.\n",
        c.model,
        c.text,
        c.n_ctx,
        c.chunks.map_or("all".into(), |n| n.to_string()),
        c.imatrix
            .as_deref()
            .map_or("none".into(), |p| format!("`{p}`")),
        c.evaluator,
    );
    let _ = writeln!(
        s,
        "| type | method | quantizer | size MiB | bpw | PPL | KLD mean | KLD p99 | top-1 % | quantize s | note |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in sorted(&report.rows) {
        let f = &r.figures;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.3} | {:.4} ± {:.4} | {:.6} ± {:.6} | {:.5} | {:.2} | {:.1} | {} |",
            r.file_type,
            r.method,
            r.quantizer,
            r.file_bytes as f64 / (1 << 20) as f64,
            r.bpw,
            f.ppl,
            f.ppl_stderr,
            f.kld_mean,
            f.kld_mean_stderr,
            f.kld_p99,
            100.0 * f.same_top,
            r.quantize_s,
            if r.identical_tensors {
                "identical tensors"
            } else {
                ""
            }
        );
    }
    // Quantize-time ratios per (type, method) where both quantizers ran.
    // (type, method, edgelm seconds, llama.cpp seconds) per (type rank, method rank).
    type Pair = (String, String, Option<f64>, Option<f64>);
    let mut pairs: BTreeMap<(usize, usize), Pair> = BTreeMap::new();
    for r in &report.rows {
        let e = pairs
            .entry((type_rank(&r.file_type), method_rank(&r.method)))
            .or_insert_with(|| (r.file_type.clone(), r.method.clone(), None, None));
        if r.quantizer == "edgelm" {
            e.2 = Some(r.quantize_s);
        } else {
            e.3 = Some(r.quantize_s);
        }
    }
    let both: Vec<_> = pairs
        .values()
        .filter_map(|(t, m, a, b)| Some((t, m, (*a)?, (*b)?)))
        .collect();
    if !both.is_empty() {
        let _ = writeln!(
            s,
            "\nQuantize wall time (whole process: load, quantize, write; one run each):\n"
        );
        let _ = writeln!(s, "| type | method | edgelm s | llama.cpp s | ratio |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|");
        let mut ratios = Vec::new();
        for (t, m, a, b) in both {
            ratios.push(a / b);
            let _ = writeln!(s, "| {t} | {m} | {a:.2} | {b:.2} | {:.2}× |", a / b);
        }
        ratios.sort_by(f64::total_cmp);
        let k = ratios.len();
        let median = 0.5 * (ratios[(k - 1) / 2] + ratios[k / 2]);
        let _ = writeln!(
            s,
            "\nMedian ratio edgelm / llama.cpp: {median:.2}× over {k} pairs"
        );
    }
    let _ = writeln!(
        s,
        "\n![size against PPL](size_ppl.png)\n\n![size against KLD](size_kld.png)"
    );
    s
}

/// A TrueType font for the charts' text (plotters draws none of its own).
fn font() -> Result<&'static [u8]> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("EDGELM_FONT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
        "/Library/Fonts/Arial.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
    ] {
        candidates.push(PathBuf::from(p));
    }
    for p in &candidates {
        if let Ok(b) = std::fs::read(p) {
            return Ok(Box::leak(b.into_boxed_slice()));
        }
    }
    bail!(
        "no TrueType font found (install fonts-dejavu-core, or set EDGELM_FONT=FILE.ttf); \
         looked at {}",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn register_font() -> Result<()> {
    use std::sync::OnceLock;
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = font().map_err(|e| format!("{e:#}"))?;
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_owned())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A chart series: its name and `(MiB, PPL, KLD)` points.
type Series = (String, Vec<(f64, f64, f64)>);

/// Draws `size_ppl.png` and `size_kld.png` into `dir`.
pub fn draw_charts(rows: &[Row], dir: &Path) -> Result<()> {
    register_font()?;
    let mut series: BTreeMap<(usize, bool), Series> = BTreeMap::new();
    for r in rows {
        let e = series
            .entry((method_rank(&r.method), r.quantizer != "edgelm"))
            .or_insert_with(|| (format!("{} {}", r.quantizer, r.method), Vec::new()));
        e.1.push((
            r.file_bytes as f64 / (1 << 20) as f64,
            r.figures.ppl,
            r.figures.kld_mean,
        ));
    }
    let series: Vec<Series> = series
        .into_values()
        .map(|(name, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name, pts)
        })
        .collect();
    draw_one(&series, &dir.join("size_ppl.png"), "PPL", false, |p| p.1)?;
    draw_one(
        &series,
        &dir.join("size_kld.png"),
        "mean KLD vs base (log)",
        true,
        |p| p.2,
    )?;
    Ok(())
}

fn draw_one(
    series: &[Series],
    path: &Path,
    y_label: &str,
    log_y: bool,
    y_of: impl Fn(&(f64, f64, f64)) -> f64,
) -> Result<()> {
    use plotters::prelude::*;
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| (p.0, y_of(p))))
        .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
        .collect();
    if pts.is_empty() {
        bail!("no points to draw for {}", path.display());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = |a: f64, b: f64| {
        let d = ((b - a) * 0.05).max(b.abs() * 0.01).max(1e-9);
        (a - d, b + d)
    };
    let (x0, x1) = pad(x0, x1);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("file size (MiB)")
                .y_desc(y_label)
                .draw()
                .map_err(|e| err(&e))?;
            for (i, (name, v)) in series.iter().enumerate() {
                let c = colors[i % colors.len()];
                let data: Vec<(f64, f64)> = v
                    .iter()
                    .map(|p| (p.0, y_of(p)))
                    .filter(|&(_, y)| y.is_finite() && (!log_y || y > 0.0))
                    .collect();
                chart
                    .draw_series(LineSeries::new(data.clone(), c.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                // Alternate markers so identical points of two series stay visible.
                if i % 2 == 0 {
                    chart
                        .draw_series(data.iter().map(|&p| Circle::new(p, 4, c.filled())))
                        .map_err(|e| err(&e))?;
                } else {
                    chart
                        .draw_series(data.iter().map(|&p| Cross::new(p, 6, c.stroke_width(2))))
                        .map_err(|e| err(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    let caption = format!("{y_label} against file size");
    if log_y {
        let (y0, y1) = (y0 / 1.5, y1 * 1.5);
        body!(ChartBuilder::on(&root)
            .caption(&caption, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| err(&e))?);
    } else {
        let (y0, y1) = pad(y0, y1);
        body!(ChartBuilder::on(&root)
            .caption(&caption, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
