//! `edgelm quantize` through the real binary: hostile input on synthetic files (always), the
//! committed llama-quantize fixtures (always), and the real model (when cached): the F32 dump
//! is exact, every output loads and generates in edgelm, and — when llama.cpp's tools are
//! built — files are byte-identical with llama-quantize's and load in llama.cpp.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter};

fn edgelm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm"));
    c.env("EDGELM_OFFLINE", "1").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    edgelm().args(args).output().expect("spawn edgelm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

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

/// llama.cpp's built tools (LLAMA_BIN or the reference build), if present.
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
        eprintln!("skipped: llama.cpp's {tool} is not built ({})", p.display());
        None
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../edgelm-quant/tests/data")
        .join(name)
}

/// A small llama-like file with one 2D F32 weight holding `values` (rows of 32).
fn f32_model(dir: &Path, values: &[f32], ty: GgmlType, name: &str) -> PathBuf {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("llama.block_count", 1u32).unwrap();
    let data: Vec<u8> = match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => edgelm_quant::quantize(other, values, 32).unwrap(),
    };
    w.add_tensor(
        "blk.0.ffn_up.weight",
        &[32, values.len() as u64 / 32],
        ty,
        data,
    )
    .unwrap();
    let p = dir.join(name);
    w.write_file(&p).unwrap();
    p
}

#[test]
fn bad_arguments_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let m = f32_model(tmp.path(), &[0.5; 64], GgmlType::F32, "m.gguf");
    let out = tmp.path().join("out.gguf");
    for (args, needle) in [
        (vec!["--type", "Q9_9"], "unknown file type"),
        (vec!["--type", "IQ2_XXS"], "unknown file type"),
        (
            vec!["--type", "Q4_0", "--tensor-type", "ffn"],
            "PATTERN=TYPE",
        ),
        (
            vec!["--type", "Q4_0", "--tensor-type", "ffn=Q7_7"],
            "unsupported tensor type",
        ),
        (
            vec!["--type", "Q4_0", "--tensor-type", "=Q8_0"],
            "missing tensor name",
        ),
        (
            vec!["--type", "Q4_0", "--tensor-type", "(=Q8_0"],
            "bad --tensor-type pattern",
        ),
    ] {
        let mut full = vec!["quantize", s(&m), s(&out)];
        full.extend(args.iter().copied());
        let o = run(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{full:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
        assert!(!out.exists());
    }
}

#[test]
fn hostile_files_fail_clearly_and_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.gguf");
    // Not a GGUF file.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let o = run(&["quantize", s(&junk), s(&out), "--type", "Q4_0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot read GGUF file"),
        "{}",
        stderr(&o)
    );
    // NaN and infinite weights.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = vec![0.25f32; 64];
        v[40] = bad;
        let m = f32_model(tmp.path(), &v, GgmlType::F32, "nan.gguf");
        let o = run(&["quantize", s(&m), s(&out), "--type", "Q4_K_M"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
        assert!(stderr(&o).contains("blk.0.ffn_up.weight"), "{}", stderr(&o));
        assert!(!out.exists());
    }
    // Too large for F16.
    let mut v = vec![0.25f32; 64];
    v[3] = 1e6;
    let m = f32_model(tmp.path(), &v, GgmlType::F32, "big.gguf");
    let o = run(&["quantize", s(&m), s(&out), "--type", "F16"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("too large for F16"), "{}", stderr(&o));
}

#[test]
fn requantizing_needs_a_flag_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let v: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
    let m = f32_model(tmp.path(), &v, GgmlType::Q8_0, "q8.gguf");
    let out = tmp.path().join("out.gguf");
    let o = run(&["quantize", s(&m), s(&out), "--type", "Q4_0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--allow-requantize") || stderr(&o).contains("allow requantizing"));
    assert!(!out.exists());
    let o = run(&[
        "quantize",
        s(&m),
        s(&out),
        "--type",
        "Q4_0",
        "--allow-requantize",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("requantized"), "{}", stderr(&o));
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("blk.0.ffn_up.weight").unwrap().ty, GgmlType::Q4_0);
    // Dequantizing to a float type is lossless and needs no flag.
    let o = run(&["quantize", s(&m), s(&out), "--type", "F32"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn cli_output_matches_the_llama_quantize_fixture_and_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.gguf");
    let o = run(&[
        "quantize",
        s(&fixture("source-f32.gguf")),
        s(&out),
        "--type",
        "q3_k_m",
        "--json",
        "-t",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("llama-q3_k_m.gguf")).unwrap()
    );
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["file_type"], "Q3_K_M");
    assert_eq!(j["n_tensors"], 12);
    assert!(j["n_fallback"].as_u64().unwrap() > 0);
    let (bin, bout) = (
        j["bpw_in"].as_f64().unwrap(),
        j["bpw_out"].as_f64().unwrap(),
    );
    assert!(
        (bin - 32.0).abs() < 1e-9 && bout > 3.0 && bout < 8.0,
        "{bin} {bout}"
    );
    // Overrides: every attn tensor Q8_0; 100-wide rows fall back to F16.
    let o = run(&[
        "quantize",
        s(&fixture("source-f32.gguf")),
        s(&out),
        "--type",
        "Q4_0",
        "--tensor-type",
        "attn_=q8_0",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let f = GgufFile::open(&out).unwrap();
    for t in f.tensors() {
        let want = if t.dims.len() == 1 {
            GgmlType::F32
        } else if t.name.contains("attn_") || t.name == "token_embd.weight" {
            // attn_*: the override; token_embd (tied): the output's recipe, 576 % 256 != 0.
            GgmlType::Q8_0
        } else if t.dims[0] == 100 {
            GgmlType::F16
        } else {
            GgmlType::Q4_0
        };
        assert_eq!(t.ty, want, "{}", t.name);
    }
}

/// The real model: dump to F32 (exact), quantize to every file type, generate with each; with
/// llama.cpp's tools, compare the files with llama-quantize's and generate with llama.cpp.
#[test]
fn real_model_round_trip_and_llama_cpp_parity() {
    let Some(model) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let f32_path = tmp.path().join("f32.gguf");
    let o = run(&["quantize", s(&model), s(&f32_path), "--type", "F32", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let src = GgufFile::open(&model).unwrap();
    let dump = GgufFile::open(&f32_path).unwrap();
    for t in src.tensors() {
        let d = dump.tensor(&t.name).unwrap();
        assert_eq!(d.ty, GgmlType::F32, "{}", t.name);
        let want = edgelm_quant::model::tensor_to_f32(&src, t).unwrap();
        let got: Vec<f32> = dump
            .tensor_data(d)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            t.name
        );
    }
    drop(dump);
    let quantize = llama_bin("llama-quantize");
    let completion = llama_bin("llama-completion");
    // Every file type: generates in edgelm; with llama.cpp's tools, equals llama-quantize's
    // file and generates in llama.cpp too.
    for ty in [
        "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_S", "Q5_K_M", "Q5_0", "Q5_1", "Q4_K_S", "Q4_K_M",
        "Q4_0", "Q4_1", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q2_K",
    ] {
        let out = tmp.path().join(format!("{ty}.gguf"));
        let o = run(&["quantize", s(&f32_path), s(&out), "--type", ty, "-q"]);
        assert_eq!(o.status.code(), Some(0), "{ty}: {}", stderr(&o));
        let o = run(&[
            "run",
            "-m",
            s(&out),
            "-p",
            "The capital of France is",
            "-n",
            "8",
            "--temp",
            "0",
        ]);
        assert_eq!(o.status.code(), Some(0), "{ty}: {}", stderr(&o));
        assert!(!stdout(&o).trim().is_empty(), "{ty}: no text generated");
        if let Some(q) = &quantize {
            let reference = tmp.path().join(format!("{ty}-llama.gguf"));
            let st = Command::new(q)
                .args([s(&f32_path), s(&reference), ty, "2"])
                .output()
                .unwrap();
            assert!(st.status.success(), "llama-quantize {ty} failed");
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&reference).unwrap(),
                "{ty}: edgelm's file differs from llama-quantize's"
            );
            std::fs::remove_file(&reference).unwrap();
        }
        if let Some(c) = &completion {
            let st = Command::new(c)
                .args([
                    "-m",
                    s(&out),
                    "-p",
                    "The capital of France is",
                    "-n",
                    "8",
                    "--temp",
                    "0",
                    "-no-cnv",
                    "-t",
                    "2",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "llama.cpp cannot run {ty}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }
        std::fs::remove_file(&out).unwrap();
    }
}

fn wikitext() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/wikitext-2-raw-test.txt");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent", p.display());
        None
    }
}

#[test]
fn eval_bad_input_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "hello").unwrap();
    let o = run(&[
        "eval",
        "--base",
        "/nonexistent.gguf",
        "-m",
        "/nonexistent2.gguf",
        "-f",
        s(&text),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nonexistent"), "{}", stderr(&o));
    let o = run(&["eval", "-f", s(&text)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["eval", "--base", "x", "-f", s(&text), "-c", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let Some(model) = real_model() else { return };
    // Too little text for two windows.
    let o = run(&[
        "eval",
        "--base",
        s(&model),
        "-m",
        s(&model),
        "-f",
        s(&text),
        "-c",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("token"), "{}", stderr(&o));
}

/// A model against itself diverges by ~0 (the base's 16-bit encoding) and agrees; against its F32 dump (the
/// same weights, so the same logits up to activation rounding) KLD is tiny; a Q2_K model
/// diverges more than a Q8_0 one.
#[test]
fn eval_real_model() {
    let (Some(model), Some(text)) = (real_model(), wikitext()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let eval = |base: &Path, m: &Path| -> serde_json::Value {
        let o = run(&[
            "eval",
            "--base",
            s(base),
            "-m",
            s(m),
            "-f",
            s(&text),
            "-c",
            "128",
            "--chunks",
            "2",
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    let j = eval(&model, &model);
    // Only the base's 16-bit log-probabilities (llama.cpp's encoding) separate them.
    assert!(j["kld_mean"].as_f64().unwrap().abs() < 1e-4, "{j}");
    assert!(j["kld_max"].as_f64().unwrap().abs() < 1e-3, "{j}");
    assert!(j["same_top"].as_f64().unwrap() >= 0.99, "{j}");
    let (p, pb) = (j["ppl"].as_f64().unwrap(), j["ppl_base"].as_f64().unwrap());
    assert!((p / pb - 1.0).abs() < 1e-3, "{j}");
    assert_eq!(j["n_tokens_scored"], 2 * 63);
    let f32_path = tmp.path().join("f32.gguf");
    let o = run(&["quantize", s(&model), s(&f32_path), "--type", "F32", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut kld = Vec::new();
    for ty in ["Q8_0", "Q2_K"] {
        let q = tmp.path().join(format!("{ty}.gguf"));
        let o = run(&["quantize", s(&f32_path), s(&q), "--type", ty, "-q"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let j = eval(&f32_path, &q);
        let (mean, median, p99) = (
            j["kld_mean"].as_f64().unwrap(),
            j["kld_median"].as_f64().unwrap(),
            j["kld_p99"].as_f64().unwrap(),
        );
        assert!(
            mean > 0.0 && median > 0.0 && median <= p99 && p99 <= j["kld_max"].as_f64().unwrap()
        );
        kld.push((ty, mean, j["same_top"].as_f64().unwrap()));
    }
    assert!(
        kld[0].1 < kld[1].1,
        "Q8_0 should diverge less than Q2_K: {kld:?}"
    );
    assert!(
        kld[0].2 > kld[1].2,
        "Q8_0 should agree more than Q2_K: {kld:?}"
    );
}

#[test]
fn bad_importance_matrices_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("source-f32.gguf");
    let out = tmp.path().join("out.gguf");
    let junk = tmp.path().join("junk.dat");
    std::fs::write(&junk, b"\x05\x00\x00\x00abc").unwrap();
    // Wrong shape: the fixture's matrix has 512 values for blk.0.attn_q; give it 3.
    let mut stats = std::collections::BTreeMap::new();
    stats.insert(
        "blk.0.attn_q.weight".to_owned(),
        edgelm_quant::imatrix::Stats {
            in_sum2: vec![1.0; 3],
            counts: vec![1.0],
        },
    );
    let wrong = tmp.path().join("wrong.gguf");
    edgelm_quant::imatrix::write_gguf(&stats, &[], 1, 512)
        .unwrap()
        .write_file(&wrong)
        .unwrap();
    stats.insert(
        "blk.0.attn_q.weight".to_owned(),
        edgelm_quant::imatrix::Stats {
            in_sum2: vec![f32::NAN; 512],
            counts: vec![1.0],
        },
    );
    let nan = tmp.path().join("nan.gguf");
    edgelm_quant::imatrix::write_gguf(&stats, &[], 1, 512)
        .unwrap()
        .write_file(&nan)
        .unwrap();
    for (m, needle) in [
        (junk, "legacy imatrix"),
        (wrong, "imatrix size 3 is different from tensor size 512"),
        (nan, "non-finite"),
        (
            tmp.path().join("missing.gguf"),
            "cannot load the importance matrix",
        ),
    ] {
        let o = run(&[
            "quantize",
            s(&src),
            s(&out),
            "--type",
            "Q4_K_M",
            "--imatrix",
            s(&m),
        ]);
        assert_eq!(o.status.code(), Some(1), "{needle}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "wanted '{needle}': {}",
            stderr(&o)
        );
        assert!(!out.exists());
    }
}

/// `edgelm imatrix` on the real model equals llama-imatrix's file byte for byte (same
/// activations, same f32 sums), and quantizing with it equals llama-quantize --imatrix.
#[test]
fn imatrix_real_model_matches_llama_cpp() {
    let (Some(model), Some(text)) = (real_model(), wikitext()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.imatrix.gguf");
    let o = run(&[
        "imatrix",
        "-m",
        s(&model),
        "-f",
        s(&text),
        "-c",
        "128",
        "--chunks",
        "2",
        "-o",
        s(&ours),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["n_entries"], 30 * 7);
    assert_eq!(j["n_chunks"], 2);
    let im = edgelm_quant::imatrix::Imatrix::load(&ours).unwrap();
    assert_eq!(im.entries["blk.0.ffn_down.weight"].len(), 1536);
    assert!(im
        .entries
        .values()
        .flatten()
        .all(|v| v.is_finite() && *v >= 0.0));
    if let Some(li) = llama_bin("llama-imatrix") {
        let reference = tmp.path().join("llama.imatrix.gguf");
        let st = Command::new(li)
            .args([
                "-m",
                s(&model),
                "-f",
                s(&text),
                "-c",
                "128",
                "--chunks",
                "2",
                "-o",
                s(&reference),
                "-t",
                "2",
            ])
            .output()
            .unwrap();
        assert!(st.status.success(), "llama-imatrix failed");
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&reference).unwrap(),
            "imatrix files differ"
        );
    }
    // Quantize the F32 dump with it.
    let f32_path = tmp.path().join("f32.gguf");
    let o = run(&["quantize", s(&model), s(&f32_path), "--type", "F32", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let q = tmp.path().join("q4km.gguf");
    let o = run(&[
        "quantize",
        s(&f32_path),
        s(&q),
        "--type",
        "Q4_K_M",
        "--imatrix",
        s(&ours),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&[
        "run",
        "-m",
        s(&q),
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--temp",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    if let Some(lq) = llama_bin("llama-quantize") {
        let reference = tmp.path().join("q4km-llama.gguf");
        let st = Command::new(lq)
            .args([
                "--imatrix",
                s(&ours),
                s(&f32_path),
                s(&reference),
                "Q4_K_M",
                "2",
            ])
            .output()
            .unwrap();
        assert!(st.status.success(), "llama-quantize --imatrix failed");
        assert!(
            std::fs::read(&q).unwrap() == std::fs::read(&reference).unwrap(),
            "Q4_K_M with imatrix differs"
        );
    }
}
