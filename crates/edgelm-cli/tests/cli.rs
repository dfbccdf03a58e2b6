//! Runs the real `edgelm` binary: error paths on synthetic files (always), and the real model
//! (SmolLM2-135M-Instruct Q4_1 in the model cache) when it is present — those tests print a
//! message and pass trivially when it is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use edgelm_gguf::{GgmlType, GgufWriter};

fn edgelm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm"));
    // Never touch the network from tests.
    c.env("EDGELM_OFFLINE", "1").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    edgelm().args(args).output().expect("spawn edgelm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// The real model, if cached.
fn real_model() -> Option<PathBuf> {
    // The cache path the CLI itself uses (no download).
    let p = edgelm_runtime::default_model_path()?;
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: the real model {} is absent", p.display());
        None
    }
}

/// A valid GGUF with a little metadata and one small tensor, but no model or tokenizer.
fn synthetic_gguf(dir: &Path) -> PathBuf {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("general.name", "synthetic").unwrap();
    w.add_metadata("test.long_array", (0..1000u32).collect::<Vec<u32>>())
        .unwrap();
    let data: Vec<u8> = (0..8 * 4).map(|i| i as u8).collect();
    w.add_tensor("tiny.weight", &[4, 2], GgmlType::F32, data)
        .unwrap();
    let p = dir.join("synthetic.gguf");
    w.write_file(&p).unwrap();
    p
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn help_and_version_exit_zero() {
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("perplexity"));
    let o = run(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--threads"));
    assert_eq!(run(&["--version"]).status.code(), Some(0));
}

#[test]
fn usage_errors_exit_two() {
    for args in [
        &["run", "--bogus-flag"][..],
        &["frobnicate"],
        &[],
        &["tokenize"],
        &["run", "-p", "x", "-t", "0"],
        &["perplexity"],
        &["run", "-p", "x", "--cache-type", "q4_0"],
        &["bench", "-r", "0"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_no_panic(&o);
    }
}

#[test]
fn bad_values_are_usage_errors_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let m = synthetic_gguf(tmp.path());
    let o = run(&["run", "-m", path_str(&m), "-p", "hi", "--top-p", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("top_p"), "{}", stderr(&o));
    let o = run(&["run", "-m", path_str(&m), "-p", ""]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));
}

#[test]
fn missing_model_file_fails_clearly() {
    let o = run(&["info", "-m", "/nonexistent/model.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/model.gguf"),
        "{}",
        stderr(&o)
    );
    assert_no_panic(&o);
}

#[test]
fn garbage_file_is_not_a_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.gguf");
    std::fs::write(&p, b"this is not a gguf file at all, just text").unwrap();
    let p = path_str(&p);
    for args in [
        vec!["info", "-m", p],
        vec!["tokenize", "-m", p, "-p", "hello"],
        vec!["run", "-m", p, "-p", "hello"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("GGUF"), "{args:?}: {}", stderr(&o));
        assert_no_panic(&o);
    }
    // Truncated real header.
    let tmp2 = tempfile::tempdir().unwrap();
    let good = synthetic_gguf(tmp2.path());
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&["info", "-m", p]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_no_panic(&o);
}

#[test]
fn info_on_synthetic_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let m = synthetic_gguf(tmp.path());
    let o = run(&["info", "-m", path_str(&m)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("general.name"), "{out}");
    assert!(out.contains("[1000 items]"), "{out}");
    assert!(out.contains("tiny.weight"), "{out}");
    assert!(out.contains("memory estimate unavailable"), "{out}");

    let o = run(&["info", "-m", path_str(&m), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["metadata"]["test.long_array"]["len"], 1000);
    assert!(v["metadata"]["test.long_array"].get("values").is_none());
    assert_eq!(v["metadata"]["general.name"]["value"], "synthetic");
    assert_eq!(v["tensors"][0]["name"], "tiny.weight");
    assert_eq!(v["tensors"][0]["dims"], serde_json::json!([4, 2]));
    assert_eq!(v["tensors"][0]["bytes"], 32);
    assert_eq!(v["n_params"], 8);
    assert!(v["memory"].is_null());
}

#[test]
fn model_commands_on_a_file_without_model_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let m = synthetic_gguf(tmp.path());
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "some text ".repeat(100)).unwrap();
    for args in [
        vec!["tokenize", "-m", path_str(&m), "-p", "hello"],
        vec!["run", "-m", path_str(&m), "-p", "hello"],
        vec!["perplexity", "-m", path_str(&m), "-f", path_str(&text)],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
        assert_no_panic(&o);
    }
    let o = run(&["perplexity", "-m", path_str(&m), "-f", "/nonexistent.txt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent.txt"));
}

// ---- real model ----

fn json_of(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn real_tokenize_plain_json_and_special() {
    let Some(m) = real_model() else { return };
    let m = path_str(&m);
    let plain = run(&["tokenize", "-m", m, "-p", "Hello world"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    let plain_ids: Vec<u64> = stdout(&plain)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let j = json_of(&run(&[
        "tokenize",
        "-m",
        m,
        "-p",
        "Hello world",
        "--json",
        "-v",
    ]));
    assert_eq!(ids(&j["tokens"]), plain_ids);
    assert_eq!(j["n_tokens"], plain_ids.len());
    let pieces: String = j["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces, "Hello world");
    // Special-token text is one token only with --special.
    let s = json_of(&run(&[
        "tokenize",
        "-m",
        m,
        "-p",
        "<|im_start|>",
        "--json",
        "--special",
    ]));
    assert_eq!(s["n_tokens"], 1);
    let n = json_of(&run(&["tokenize", "-m", m, "-p", "<|im_start|>", "--json"]));
    assert!(n["n_tokens"].as_u64().unwrap() > 1);
}

#[test]
fn real_run_greedy_is_deterministic_and_stops() {
    let Some(m) = real_model() else { return };
    let m = path_str(&m);
    let prompt = "The capital of France is";
    let args = [
        "run", "-m", m, "-p", prompt, "-n", "12", "--temp", "0", "--json",
    ];
    let a = json_of(&run(&args));
    let b = json_of(&run(&args));
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["text"], b["text"]);
    let toks = ids(&a["tokens"]);
    assert!(!toks.is_empty() && toks.len() <= 12);
    assert!(["length", "eog"].contains(&a["finish_reason"].as_str().unwrap()));
    let tk = json_of(&run(&["tokenize", "-m", m, "-p", prompt, "--json"]));
    assert_eq!(a["prompt_tokens"], tk["tokens"]);

    // The plain stream prints the same text.
    let plain = run(&["run", "-m", m, "-p", prompt, "-n", "12", "--temp", "0"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    let text = a["text"].as_str().unwrap();
    assert_eq!(
        stdout(&plain).trim_end_matches('\n'),
        text.trim_end_matches('\n')
    );
    assert!(stderr(&plain).contains("tokens/s"), "{}", stderr(&plain));

    // A stop string taken from the greedy text: output is what came before it.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
        let at = text.find(&stop).unwrap();
        let s = json_of(&run(&[
            "run", "-m", m, "-p", prompt, "-n", "12", "--temp", "0", "--json", "--stop", &stop,
        ]));
        assert_eq!(s["finish_reason"], "stop");
        assert_eq!(s["text"].as_str().unwrap(), &text[..at]);
    }
}

#[test]
fn real_run_seeded_sampling_is_reproducible() {
    let Some(m) = real_model() else { return };
    let m = path_str(&m);
    let args = [
        "run",
        "-m",
        m,
        "-p",
        "Once upon a time",
        "-n",
        "8",
        "--seed",
        "7",
        "--temp",
        "1.0",
        "--json",
    ];
    let a = json_of(&run(&args));
    let b = json_of(&run(&args));
    assert_eq!(a["tokens"], b["tokens"]);
}

#[test]
fn real_over_long_prompt_fails_or_shifts() {
    let Some(m) = real_model() else { return };
    let m = path_str(&m);
    let long = "one two three four five six seven eight nine ten ".repeat(10);
    let o = run(&[
        "run", "-m", m, "-p", &long, "-c", "32", "-n", "4", "--temp", "0",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("context"), "{}", stderr(&o));
    assert_no_panic(&o);
    let j = json_of(&run(&[
        "run",
        "-m",
        m,
        "-p",
        &long,
        "-c",
        "32",
        "-n",
        "4",
        "--temp",
        "0",
        "--json",
        "--context-shift",
    ]));
    assert_eq!(ids(&j["prompt_tokens"]).len(), 28);
}

#[test]
fn real_chat_reads_turns_from_stdin() {
    let Some(m) = real_model() else { return };
    let mut child = edgelm()
        .args([
            "chat",
            "-m",
            path_str(&m),
            "-n",
            "8",
            "--temp",
            "0",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"Hi!\nWhat is 2+2?\n/reset\nHi!\n")
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let replies: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 3);
    // The second turn reuses the first turn's KV state: its prompt starts with the first.
    let p1 = ids(&replies[0]["prompt_tokens"]);
    let p2 = ids(&replies[1]["prompt_tokens"]);
    assert!(p2.len() > p1.len() && p2[..p1.len()] == p1[..]);
    assert!(replies[1]["timings"]["prompt_n"].as_u64().unwrap() < p2.len() as u64);
    // After /reset the same first turn gives the same greedy reply.
    assert_eq!(replies[2]["tokens"], replies[0]["tokens"]);
}

/// `edgelm bench` on the real model: every requested test is reported with positive speeds,
/// with both cache types; nothing to measure is a usage error.
#[test]
fn real_bench_reports_every_test() {
    let Some(m) = real_model() else { return };
    for cache in ["f16", "q8_0"] {
        let j = json_of(&run(&[
            "bench",
            "-m",
            path_str(&m),
            "-p",
            "8,16",
            "-n",
            "4",
            "-r",
            "2",
            "-t",
            "2",
            "--cache-type",
            cache,
            "--json",
        ]));
        let results = j["results"].as_array().unwrap();
        let names: Vec<&str> = results
            .iter()
            .map(|r| r["test"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["pp8", "pp16", "tg4"], "{cache}");
        for r in results {
            assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
            assert!(r["median_ts"].as_f64().unwrap() > 0.0, "{r}");
        }
        assert!(j["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    let o = run(&["bench", "-m", path_str(&m), "-p", "0", "-n", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn real_perplexity_small() {
    let Some(m) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("text.txt");
    std::fs::write(
        &f,
        "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
            .repeat(4),
    )
    .unwrap();
    let j = json_of(&run(&[
        "perplexity",
        "-m",
        path_str(&m),
        "-f",
        path_str(&f),
        "-c",
        "16",
        "--chunks",
        "2",
        "--json",
    ]));
    assert_eq!(j["n_chunks"], 2);
    assert_eq!(j["n_tokens_scored"], 2 * (16 - 8 - 1));
    let ppl = j["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");
    assert_eq!(j["per_chunk"].as_array().unwrap().len(), 2);
    // Too little text: a clear error.
    std::fs::write(&f, "short").unwrap();
    let o = run(&["perplexity", "-m", path_str(&m), "-f", path_str(&f)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("at least"), "{}", stderr(&o));
}

#[test]
fn real_broken_pipe_exits_quietly() {
    let Some(m) = real_model() else { return };
    let mut child = edgelm()
        .args([
            "run",
            "-m",
            path_str(&m),
            "-p",
            "Count: 1, 2, 3,",
            "-n",
            "24",
            "--temp",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("error"), "{}", stderr(&o));
    assert_no_panic(&o);
}
