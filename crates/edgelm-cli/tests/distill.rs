//! `edgelm distill` and `edgelm report-train` through the real binary: a short run with the
//! real teacher (SmolLM2-135M-Instruct Q4_1; skipped with a message when absent) whose
//! exported student has the chosen block count, reuse of the teacher cache by a second
//! student, refusal of a mismatched cache, a student with another vocabulary, bad flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};

fn edgelm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm"));
    c.env("EDGELM_OFFLINE", "1").env_remove("RUST_LOG");
    c
}

fn real_model() -> Option<PathBuf> {
    let p = edgelm_runtime::default_model_path()?;
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: the real model {} is absent", p.display());
        None
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn events(o: &Output, name: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == name)
        .collect()
}

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n\
Speak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n\
Resolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the \
people.\n\nAll:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him, and we'll have corn \
at our own price.\nIs't a verdict?\n";

fn distill(teacher: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    edgelm()
        .arg("distill")
        .arg("--teacher")
        .arg(teacher)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "-b",
            "1",
            "--seq-len",
            "16",
            "--steps",
            "2",
            "--warmup",
            "1",
        ])
        .args(["--eval-every", "0", "--save-every", "0", "--top-k", "8"])
        .args(["--json", "-t", "2"])
        .args(extra)
        .output()
        .expect("spawn edgelm")
}

#[test]
fn distill_runs_reuses_its_cache_and_exports_a_smaller_model() {
    let Some(model) = real_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(&data, TEXT).unwrap();
    let cache = dir.path().join("teacher.cache");
    let cache_s = cache.to_str().unwrap();
    let out1 = dir.path().join("a");
    let o = distill(
        &model,
        &data,
        &out1,
        &["--keep-layers", "2", "--teacher-cache", cache_s, "--report"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let steps = events(&o, "step");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1]["teacher_computed"], 2);
    assert!(steps.iter().all(|s| s["div"].as_f64().unwrap().is_finite()));
    let f = GgufFile::open(out1.join("student.gguf")).unwrap();
    assert_eq!(f.metadata().get("llama.block_count"), Some(&Value::U32(2)));
    assert!(f.tensor("blk.1.ffn_down.weight").is_some());
    assert!(f.tensor("blk.2.ffn_down.weight").is_none());
    let png = std::fs::read(out1.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A second student (other blocks) on the same data reuses the cache: no teacher forward.
    let out2 = dir.path().join("b");
    let o = distill(
        &model,
        &data,
        &out2,
        &["--student-layers", "0,29", "--teacher-cache", cache_s],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let steps = events(&o, "step");
    assert_eq!(steps[1]["teacher_computed"], 0);
    assert_eq!(steps[1]["teacher_reused"], 2);

    // Another temperature: the cache is refused with the reason.
    let o = distill(
        &model,
        &data,
        &dir.path().join("c"),
        &[
            "--keep-layers",
            "2",
            "--teacher-cache",
            cache_s,
            "--temperature",
            "2",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("temperature 1 (this run: 2)"),
        "{}",
        stderr(&o)
    );

    // The JSON log draws as a PNG.
    let steps_log = dir.path().join("steps.jsonl");
    let lines: String = steps.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&steps_log, lines).unwrap();
    let png2 = dir.path().join("r.png");
    let o = edgelm()
        .arg("report-train")
        .arg(&steps_log)
        .arg("-o")
        .arg(&png2)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(&png2).unwrap().starts_with(b"\x89PNG"));
}

/// A tiny llama GGUF with a vocabulary of 11 tokens.
fn tiny_student(dir: &Path) -> PathBuf {
    let (c, ff, v) = (8u64, 16u64, 11u64);
    let mut w = GgufWriter::new();
    for (k, val) in [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(c as u32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.feed_forward_length", Value::U32(ff as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(v as u32)),
    ] {
        w.add_metadata(k, val).unwrap();
    }
    let mut add = |name: &str, dims: &[u64]| {
        let n: u64 = dims.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| (0.01 * i as f32).to_le_bytes())
            .collect();
        w.add_tensor(name, dims, GgmlType::F32, bytes).unwrap();
    };
    add("token_embd.weight", &[c, v]);
    for n in ["attn_norm", "ffn_norm"] {
        add(&format!("blk.0.{n}.weight"), &[c]);
    }
    for n in ["attn_q", "attn_k", "attn_v", "attn_output"] {
        add(&format!("blk.0.{n}.weight"), &[c, c]);
    }
    add("blk.0.ffn_gate.weight", &[c, ff]);
    add("blk.0.ffn_up.weight", &[c, ff]);
    add("blk.0.ffn_down.weight", &[ff, c]);
    add("output_norm.weight", &[c]);
    let p = dir.join("tiny.gguf");
    w.write_file(&p).unwrap();
    p
}

#[test]
fn bad_students_and_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(&data, TEXT).unwrap();
    let out = dir.path().join("o");
    // Flags: no student, two students, bad alpha / temperature (usage errors, exit 2).
    let tiny = tiny_student(dir.path());
    let tiny_s = tiny.to_str().unwrap();
    for extra in [
        &[][..],
        &["--keep-layers", "2", "--student", tiny_s],
        &["--keep-layers", "2", "--alpha", "1.5"],
        &["--keep-layers", "2", "--temperature", "0"],
        &["--keep-layers", "2", "--loss", "kld"],
        &["--student", tiny_s, "--student-ff", "8"],
    ] {
        let o = distill(&tiny, &data, &out, extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    let Some(model) = real_model() else { return };
    let o = distill(&model, &data, &out, &["--student", tiny_s]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("vocabulary of 11 tokens"),
        "{}",
        stderr(&o)
    );
    let o = distill(&model, &data, &out, &["--keep-layers", "31"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("30"), "{}", stderr(&o));
}

#[test]
fn a_narrower_student_is_built_trained_and_exported_with_its_widths() {
    let Some(model) = real_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(&data, TEXT).unwrap();
    let out = dir.path().join("narrow");
    // 4 of 30 blocks, 384 of 576 channels, 6/2 of 9/3 heads (D = 64 stays), FFN 1024.
    let o = distill(
        &model,
        &data,
        &out,
        &[
            "--keep-layers",
            "4",
            "--student-embd",
            "384",
            "--student-heads",
            "6",
            "--student-kv-heads",
            "2",
            "--student-ff",
            "1024",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = &events(&o, "student")[0];
    assert_eq!(
        (
            &s["n_layer"],
            &s["n_embd"],
            &s["n_head"],
            &s["n_head_kv"],
            &s["n_ff"]
        ),
        (&4.into(), &384.into(), &6.into(), &2.into(), &1024.into())
    );
    let steps = events(&o, "step");
    assert_eq!(steps.len(), 2);
    assert!(steps
        .iter()
        .all(|e| e["loss"].as_f64().unwrap().is_finite()));
    let f = GgufFile::open(out.join("student.gguf")).unwrap();
    let cfg = edgelm_model::ModelConfig::from_gguf(&f).unwrap();
    assert_eq!(
        (
            cfg.n_layer,
            cfg.n_embd,
            cfg.n_head,
            cfg.n_head_kv,
            cfg.n_ff,
            cfg.head_dim
        ),
        (4, 384, 6, 2, 1024, 64)
    );
    // The exported student runs.
    let o = edgelm()
        .args(["run", "-p", "Hello", "-n", "4", "--temp", "0", "-m"])
        .arg(out.join("student.gguf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // Widths the teacher cannot give are usage errors.
    for extra in [
        &["--keep-layers", "2", "--student-heads", "7"][..],
        &["--keep-layers", "2", "--student-embd", "600"],
        &["--student-heads", "6", "--student-kv-heads", "1"],
    ] {
        let o = distill(&model, &data, &out, extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}
