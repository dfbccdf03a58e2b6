//! LoRA through the real binary on the real model (skipped with a message when absent):
//! `finetune --lora-rank` trains and writes an adapter, `--resume` continues it, `run` and
//! `perplexity --lora` apply it, `lora-merge` writes a model whose perplexity is the
//! adapter's, and bad adapters get a clear error and exit 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n\
Speak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n\
Resolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the \
people.\n\nAll:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him, and we'll have corn \
at our own price.\nIs't a verdict?\n";

fn ok(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what} failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn finetune(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    edgelm()
        .arg("finetune")
        .arg("-m")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--batch", "1", "--seq-len", "16", "--warmup", "1"])
        .args([
            "--eval-every",
            "0",
            "--save-every",
            "0",
            "--json",
            "-t",
            "2",
        ])
        .args(extra)
        .output()
        .expect("run edgelm")
}

fn ppl(model: &Path, data: &Path, extra: &[&str]) -> f64 {
    let o = edgelm()
        .arg("perplexity")
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(data)
        .args(["-c", "32", "--json", "-t", "2"])
        .args(extra)
        .output()
        .expect("run edgelm");
    let s = ok(&o, "perplexity");
    let v: serde_json::Value = serde_json::from_str(s.trim()).expect("perplexity JSON");
    v["ppl"].as_f64().expect("ppl")
}

#[test]
fn lora_finetune_run_perplexity_merge() {
    let Some(model) = real_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(&data, TEXT.repeat(3)).unwrap();
    let out = dir.path().join("ft");
    // A large learning rate so that two steps move the model measurably.
    let o = finetune(
        &model,
        &data,
        &out,
        &[
            "--lora-rank",
            "4",
            "--lora-targets",
            "q,v,down",
            "--steps",
            "3",
            "--stop-after",
            "2",
            "--lr",
            "3e-2",
        ],
    );
    let s = ok(&o, "finetune --lora-rank");
    assert!(s.contains("\"event\":\"lora\""), "{s}");
    let ckpt = out.join("checkpoint.safetensors");
    assert!(ckpt.is_file());
    let o = finetune(
        &model,
        &data,
        &out,
        &[
            "--lora-rank",
            "4",
            "--steps",
            "3",
            "--resume",
            ckpt.to_str().unwrap(),
        ],
    );
    let s = ok(&o, "finetune --resume");
    assert!(s.contains("\"step\":3"), "{s}");
    let adapter = out.join("adapter.gguf");
    assert!(adapter.is_file());

    let o = edgelm()
        .arg("run")
        .arg("-m")
        .arg(&model)
        .arg("--lora")
        .arg(&adapter)
        .args(["-p", "First Citizen:", "-n", "4", "--temp", "0", "-t", "2"])
        .output()
        .unwrap();
    ok(&o, "run --lora");

    let base = ppl(&model, &data, &[]);
    let lora = ppl(&model, &data, &["--lora", adapter.to_str().unwrap()]);
    let merged = dir.path().join("merged.gguf");
    let o = edgelm()
        .arg("lora-merge")
        .arg("-m")
        .arg(&model)
        .arg("--lora")
        .arg(&adapter)
        .arg("-o")
        .arg(&merged)
        .args(["--type", "f32", "--json"])
        .output()
        .unwrap();
    let s = ok(&o, "lora-merge");
    assert!(s.contains("\"n_merged\":90"), "30 blocks x 3 matrices: {s}");
    let m = ppl(&merged, &data, &[]);
    eprintln!("perplexity: base {base:.3}, with the adapter {lora:.3}, merged {m:.3}");
    // The merged model (F32 matrices, F32 activations) and the adapter on the Q4_1 base
    // (Q8_1 activations) differ by the activations' quantization only.
    assert!(
        (lora - base).abs() / base > 0.05,
        "the adapter moves the perplexity"
    );
    assert!(
        (m - lora).abs() / lora < 0.02,
        "merged {m} vs adapter {lora}"
    );

    // Requantized to the base's own types: a file of the base's size that loads and runs.
    let same = dir.path().join("merged-q.gguf");
    let o = edgelm()
        .arg("lora-merge")
        .arg("-m")
        .arg(&model)
        .arg("--lora")
        .arg(&adapter)
        .arg("-o")
        .arg(&same)
        .args(["--type", "same", "-q"])
        .output()
        .unwrap();
    ok(&o, "lora-merge --type same");
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(len(&same), len(&model));
    let q = ppl(&same, &data, &[]);
    eprintln!("perplexity merged and requantized: {q:.3}");
    assert!(q.is_finite() && q > 1.0);

    // A model is not an adapter; an adapter cannot be merged into a file that is not GGUF.
    let o = edgelm()
        .arg("run")
        .arg("-m")
        .arg(&model)
        .arg("--lora")
        .arg(&model)
        .args(["-p", "x", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("general.type"), "{err}");
    let o = edgelm()
        .arg("lora-merge")
        .arg("-m")
        .arg(&data)
        .arg("--lora")
        .arg(&adapter)
        .arg("-o")
        .arg(dir.path().join("x.gguf"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));

    // Bad LoRA flags are usage errors.
    let o = finetune(
        &model,
        &data,
        &out,
        &["--lora-rank", "4", "--lora-targets", "qq"],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = finetune(&model, &data, &out, &["--lora-dropout", "0.1"]);
    assert_eq!(o.status.code(), Some(2), "--lora-dropout needs --lora-rank");
}
