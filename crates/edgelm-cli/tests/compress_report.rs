//! `edgelm compress-report` and `edgelm eval --base-cache` through the real binary, on a tiny
//! synthetic Llama model (one layer, width 256, byte-level vocabulary) written here: a sweep
//! end to end (rows, JSON, PNG charts that decode, resuming), the base file giving the same
//! figures as a direct run, and bad arguments failing clearly. With llama.cpp's
//! llama-quantize built, the sweep also has llama.cpp rows.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgelm_gguf::{GgmlType, GgufWriter, Value};

const C: usize = 256;
const H: usize = 4;
const KV: usize = 2;
const D: usize = C / H;
const FF: usize = 256;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgelm"))
        .env("EDGELM_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("spawn edgelm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn llama_bin(tool: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("LLAMA_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/edgelm-ref/llama.cpp/build/bin")
        }
    };
    let p = dir.join(tool);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "llama.cpp's {tool} is not built ({}): no llama.cpp rows",
            p.display()
        );
        None
    }
}

/// GPT-2's byte → printable character map (the byte-level BPE alphabet).
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).unwrap();
    }
    out
}

/// A deterministic pseudo-random stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Writes the tiny model (F32 weights) to `path`.
fn tiny_model(path: &Path) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    tokens.push("he".into());
    tokens.push("<|endoftext|>".into());
    let v = tokens.len();
    let mut types = vec![1i32; v];
    types[v - 1] = 3;
    let mut w = GgufWriter::new();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(C as u32)),
        ("llama.attention.head_count", Value::U32(H as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV as u32)),
        ("llama.feed_forward_length", Value::U32(FF as u32)),
        ("llama.context_length", Value::U32(256)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.vocab_size", Value::U32(v as u32)),
        ("general.file_type", Value::U32(0)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.bos_token_id", Value::U32(v as u32 - 1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(v as u32 - 1)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ];
    for (k, val) in md {
        w.add_metadata(k, val).unwrap();
    }
    w.add_metadata("tokenizer.ggml.tokens", tokens).unwrap();
    w.add_metadata("tokenizer.ggml.token_type", types).unwrap();
    w.add_metadata("tokenizer.ggml.merges", vec!["h e".to_string()])
        .unwrap();
    let mut rng = Rng(7);
    let mut add = |name: &str, dims: &[usize], scale: f32, offset: f32| {
        let n: usize = dims.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| (offset + scale * rng.next()).to_le_bytes())
            .collect();
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        w.add_tensor(name, &dims, GgmlType::F32, data).unwrap();
    };
    add("token_embd.weight", &[C, v], 0.08, 0.0);
    add("output_norm.weight", &[C], 0.1, 1.0);
    add("blk.0.attn_norm.weight", &[C], 0.1, 1.0);
    add("blk.0.attn_q.weight", &[C, H * D], 0.1, 0.0);
    add("blk.0.attn_k.weight", &[C, KV * D], 0.1, 0.0);
    add("blk.0.attn_v.weight", &[C, KV * D], 0.1, 0.0);
    add("blk.0.attn_output.weight", &[H * D, C], 0.1, 0.0);
    add("blk.0.ffn_norm.weight", &[C], 0.1, 1.0);
    add("blk.0.ffn_gate.weight", &[C, FF], 0.1, 0.0);
    add("blk.0.ffn_up.weight", &[C, FF], 0.1, 0.0);
    add("blk.0.ffn_down.weight", &[FF, C], 0.1, 0.0);
    w.write_file(path).unwrap();
}

fn text(path: &Path) {
    let mut t = String::new();
    let words = [
        "the",
        "hello",
        "quantized",
        "model",
        "here",
        "whether",
        "shed",
    ];
    for i in 0..600 {
        t.push_str(words[(i * 7 + i / 3) % words.len()]);
        t.push(if i % 11 == 10 { '\n' } else { ' ' });
    }
    std::fs::write(path, t).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    text: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let model = root.join("tiny-f32.gguf");
    tiny_model(&model);
    let t = root.join("text.txt");
    text(&t);
    Fixture {
        _dir: dir,
        root,
        model,
        text: t,
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(o)))
}

#[test]
fn eval_with_a_base_file_equals_the_direct_run_and_refuses_mismatches() {
    let f = fixture();
    let q = f.root.join("q4_0.gguf");
    let o = run(&["quantize", s(&f.model), s(&q), "--type", "Q4_0", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cache = f.root.join("base.kld");
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "-m", s(&q), "-f", s(&f.text), "--json"];
        if !extra.contains(&"-c") {
            a.extend(["-c", "64"]);
        }
        if !extra.contains(&"--chunks") {
            a.extend(["--chunks", "4"]);
        }
        a.extend_from_slice(extra);
        run(&a)
    };
    let direct = json(&eval(&["--base", s(&f.model)]));
    let written = json(&eval(&["--base", s(&f.model), "--base-cache", s(&cache)]));
    assert!(cache.is_file());
    let read = json(&eval(&["--base", s(&f.model), "--base-cache", s(&cache)]));
    let read_no_base = json(&eval(&["--base-cache", s(&cache)]));
    assert_eq!(direct["base_cache"], serde_json::Value::Null);
    assert_eq!(written["base_cache"], "written");
    assert_eq!(read["base_cache"], "read");
    for (k, v) in direct.as_object().unwrap() {
        if k == "base_cache" {
            continue;
        }
        for other in [&written, &read, &read_no_base] {
            assert_eq!(&other[k], v, "{k}");
        }
    }
    assert!(direct["kld_mean"].as_f64().unwrap() > 0.0);
    // Another window, chunk count, text or base: refused, naming what differs.
    for (extra, needle) in [
        (vec!["-c", "32"], "windows of 64"),
        (
            vec!["--chunks", "3"],
            "holds 4 windows, this run evaluates 3",
        ),
        (vec!["--base", s(&q)], "another base model"),
    ] {
        let mut a = vec!["--base-cache", s(&cache)];
        a.extend(extra);
        let o = eval(&a);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    let other_text = f.root.join("other.txt");
    let mut t = std::fs::read_to_string(&f.text).unwrap().into_bytes();
    t[100] = if t[100] == b'x' { b'y' } else { b'x' };
    std::fs::write(&other_text, t).unwrap();
    let o = run(&[
        "eval",
        "-m",
        s(&q),
        "-f",
        s(&other_text),
        "-c",
        "64",
        "--chunks",
        "4",
        "--base-cache",
        s(&cache),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("another text"), "{}", stderr(&o));
    // A missing file without --base; a corrupt file.
    let o = eval(&["--base-cache", s(&f.root.join("none.kld"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--base"), "{}", stderr(&o));
    let bad = f.root.join("bad.kld");
    std::fs::write(&bad, b"_logits_\x01\x00").unwrap();
    let o = eval(&["--base-cache", s(&bad)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.kld"), "{}", stderr(&o));
}

#[test]
fn sweep_end_to_end_and_resume() {
    let f = fixture();
    let im = f.root.join("imatrix.gguf");
    let o = run(&[
        "imatrix",
        "-m",
        s(&f.model),
        "-f",
        s(&f.text),
        "-o",
        s(&im),
        "-c",
        "64",
        "--chunks",
        "2",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = f.root.join("sweep");
    let lq = llama_bin("llama-quantize");
    let mut args = vec![
        "compress-report",
        "-m",
        s(&f.model),
        "--types",
        "F32,Q8_0,Q4_0,Q4_K_M",
        "--methods",
        "rtn,imatrix",
        "--imatrix",
        s(&im),
        "-f",
        s(&f.text),
        "-c",
        "64",
        "--chunks",
        "3",
        "--out",
        s(&out),
    ];
    if let Some(p) = &lq {
        args.extend(["--llama-quantize", s(p)]);
    }
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("[1/"), "progress: {}", stderr(&o));
    // F32 once (no rounding to choose), three types × two methods.
    let n_edgelm = 7;
    let n = if lq.is_some() { 2 * n_edgelm } else { n_edgelm };
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), n, "{report:#}");
    let get = |t: &str, m: &str, q: &str| {
        rows.iter()
            .find(|r| r["file_type"] == t && r["method"] == m && r["quantizer"] == q)
            .unwrap_or_else(|| panic!("no row {t} {m} {q}"))
    };
    let kld = |r: &serde_json::Value| r["figures"]["kld_mean"].as_f64().unwrap();
    let f32_row = get("F32", "rtn", "edgelm");
    assert!(kld(f32_row).abs() < 1e-4, "{f32_row}");
    let q8 = get("Q8_0", "rtn", "edgelm");
    let q4 = get("Q4_0", "rtn", "edgelm");
    assert!(kld(q4) > kld(q8) && kld(q8) > 0.0, "{q4} {q8}");
    assert!(q4["bpw"].as_f64().unwrap() < q8["bpw"].as_f64().unwrap());
    assert_eq!(get("Q4_0", "imatrix", "edgelm")["bpw"], q4["bpw"]);
    for r in rows {
        assert!(Path::new(r["file"].as_str().unwrap()).is_file());
        assert!(r["quantize_s"].as_f64().unwrap() > 0.0);
        assert_eq!(r["figures"]["n_tokens_scored"], 3 * 31);
    }
    if lq.is_some() {
        // llama.cpp's RTN tensors are edgelm's, so that row is not evaluated again.
        assert_eq!(get("Q4_0", "rtn", "llama.cpp")["identical_tensors"], true);
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("edgelm compress-report"), "{md}");
    let table_rows = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| type"))
        .filter(|l| l.contains(" rtn |") || l.contains(" imatrix |"))
        .count();
    assert!(table_rows >= n, "{md}");
    let font = std::env::var_os("EDGELM_FONT").is_some()
        || Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file();
    if !font {
        eprintln!("skipped the chart checks: no font (scripts/test.sh installs fonts-dejavu-core)");
    }
    for png in ["size_ppl.png", "size_kld.png"]
        .into_iter()
        .filter(|_| font)
    {
        let bytes = std::fs::read(out.join(png)).unwrap();
        let dec = png::Decoder::new(&bytes[..]);
        let reader = dec.read_info().unwrap_or_else(|e| panic!("{png}: {e}"));
        let info = reader.info();
        assert!(info.width >= 400 && info.height >= 300, "{png}");
    }

    // Resume: everything is skipped; a deleted file's row is redone.
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("done before, skipped").count(), n);
    std::fs::remove_file(q4["file"].as_str().unwrap()).unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("done before, skipped").count(),
        n - 1,
        "{}",
        stderr(&o)
    );
    let report2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report2["rows"].as_array().unwrap().len(), n);
    assert_eq!(report2["commands"].as_array().unwrap().len(), 3);
    // Another text in the same directory is refused.
    let mut other = args.clone();
    let pos = other.iter().position(|a| *a == "-c").unwrap();
    other[pos + 1] = "32";
    let o = run(&other);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
}

#[test]
fn bad_arguments_fail_clearly() {
    let f = fixture();
    let out = f.root.join("r");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "compress-report",
            "-m",
            s(&f.model),
            "-f",
            s(&f.text),
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let missing = f.root.join("missing.gguf");
    for (extra, needle) in [
        (vec!["--types", "Q9_9"], "unknown file type 'Q9_9'"),
        (vec!["--methods", "rtn,foo"], "unknown method 'foo'"),
        (vec!["--methods", "imatrix"], "needs --imatrix"),
        (
            vec!["--methods", "imatrix", "--imatrix", s(&missing)],
            "no such file",
        ),
        (vec!["--methods", "gptq"], "--calib"),
        (
            vec!["--methods", "rtn", "--llama-quantize", s(&missing)],
            "no such file",
        ),
    ] {
        let o = base(&extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    // AWQ: an error naming --calib, or naming this build when its quantizer lacks AWQ.
    let o = base(&["--methods", "awq"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--calib") || e.contains("not supported by this edgelm build"),
        "{e}"
    );
    assert!(
        !out.exists(),
        "nothing is written before the arguments are checked"
    );
    // A model that is not GGUF fails on the first row with the quantizer's message.
    let junk = f.root.join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let o = run(&[
        "compress-report",
        "-m",
        s(&junk),
        "-f",
        s(&f.text),
        "--types",
        "Q8_0",
        "--methods",
        "rtn",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("edgelm quantize"), "{}", stderr(&o));
}
