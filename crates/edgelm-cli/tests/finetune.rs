//! `edgelm finetune` through the real binary: an interrupted and resumed run equals the
//! uninterrupted one, and bad input (unreadable text, a checkpoint that is not one, bad
//! flags) gets a clear error and the right exit code. The runs use the real model
//! (SmolLM2-135M-Instruct Q4_1) and skip with a message when it is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgelm_train::st::TensorFile;

fn edgelm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm"));
    c.env("EDGELM_OFFLINE", "1").env_remove("RUST_LOG");
    c
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

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n\
Speak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n\
Resolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the \
people.\n\nAll:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him, and we'll have corn \
at our own price.\nIs't a verdict?\n";

/// Runs `edgelm finetune` with small defaults that `extra` may override.
fn finetune(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ("--batch", "1"),
        ("--seq-len", "16"),
        ("--warmup", "1"),
        ("--lr", "1e-4"),
        ("--eval-every", "0"),
        ("--save-every", "0"),
    ];
    edgelm()
        .arg("finetune")
        .arg("-m")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(
            defaults
                .iter()
                .filter(|(flag, _)| !extra.contains(flag))
                .flat_map(|(f, v)| [*f, *v]),
        )
        .args(["--json", "-t", "2"])
        .args(extra)
        .output()
        .expect("spawn edgelm")
}

fn events(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn step_losses(ev: &[serde_json::Value]) -> Vec<(u64, f64)> {
    ev.iter()
        .filter(|e| e["event"] == "step")
        .map(|e| (e["step"].as_u64().unwrap(), e["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn resumed_run_equals_the_uninterrupted_one() {
    let Some(model) = real_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(&data, TEXT).unwrap();

    let full = finetune(
        &model,
        &data,
        &dir.path().join("full"),
        &["--steps", "3", "--export-gguf", "f16"],
    );
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let ev = events(&full);
    let full_losses = step_losses(&ev);
    assert_eq!(
        full_losses.iter().map(|x| x.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        ev.iter().any(|e| e["event"] == "eval"),
        "a final evaluation"
    );
    assert_eq!(ev.last().unwrap()["event"], "export");
    // The exported model runs.
    let exported = dir.path().join("full/model.gguf");
    let o = edgelm()
        .arg("run")
        .arg("-m")
        .arg(&exported)
        .args(["-p", "First Citizen:", "-n", "4", "--temp", "0", "-t", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let part_dir = dir.path().join("part");
    let part = finetune(
        &model,
        &data,
        &part_dir,
        &["--steps", "3", "--stop-after", "2"],
    );
    assert!(
        part.status.success(),
        "{}",
        String::from_utf8_lossy(&part.stderr)
    );
    let ckpt = part_dir.join("checkpoint.safetensors");
    let resumed = finetune(
        &model,
        &data,
        &part_dir,
        &["--steps", "3", "--resume", ckpt.to_str().unwrap()],
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let mut losses = step_losses(&events(&part));
    losses.extend(step_losses(&events(&resumed)));
    assert_eq!(
        losses, full_losses,
        "resumed losses differ from the uninterrupted run"
    );
    let a = TensorFile::read(&dir.path().join("full/checkpoint.safetensors")).unwrap();
    let b = TensorFile::read(&ckpt).unwrap();
    assert!(
        a.tensors == b.tensors,
        "final weights or optimizer state differ"
    );
    assert_eq!(a.metadata, b.metadata);
}

#[test]
fn bad_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Not UTF-8 text: fails before the model is needed.
    let bin = dir.path().join("bin.txt");
    std::fs::write(&bin, [0xffu8, 0xfe, 0x00, 0x81]).unwrap();
    let o = finetune(
        Path::new("/nonexistent.gguf"),
        &bin,
        &out,
        &["--steps", "1"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot read the training text"), "{err}");
    // A flag out of range is a usage error.
    let o = finetune(
        Path::new("/nonexistent.gguf"),
        &bin,
        &out,
        &["--eval-fraction", "1.5"],
    );
    assert_eq!(o.status.code(), Some(2));

    let Some(model) = real_model() else { return };
    let data = dir.path().join("text.txt");
    std::fs::write(&data, TEXT).unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let o = finetune(
        &model,
        &data,
        &out,
        &["--steps", "1", "--resume", garbage.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot resume") && !err.contains("panicked"),
        "{err}"
    );
    // JSONL with a malformed line: fatal by default, with its number; skipped on request.
    let jsonl = dir.path().join("chat.jsonl");
    let chat = r#"{"messages":[{"role":"user","content":"Name a colour."},{"role":"assistant","content":"Blue. Also red, green and yellow are colours people often name first."}]}"#;
    std::fs::write(
        &jsonl,
        format!(
            "{chat}
{{\"messages\": 3}}
{chat}
"
        ),
    )
    .unwrap();
    let o = finetune(&model, &jsonl, &out, &["--steps", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2"), "{err}");
    let o = finetune(
        &model,
        &jsonl,
        &out,
        &["--steps", "1", "--on-bad-line", "skip"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2: skipped"), "{err}");
    let ev = events(&o);
    assert_eq!(ev[0]["event"], "data");
    assert_eq!(ev[0]["examples"], 2);
    assert_eq!(ev[0]["skipped"][0]["line"], 2);
    // A learning rate that blows the weights up: the run stops at the first non-finite loss,
    // names the step, and keeps the checkpoint written before it.
    let o = finetune(
        &model,
        &data,
        &dir.path().join("nan"),
        &[
            "--steps",
            "4",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--save-every",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not finite") && err.contains("is kept"),
        "{err}"
    );
    assert!(dir.path().join("nan/checkpoint.safetensors").is_file());
    // Text shorter than one window.
    std::fs::write(&data, "Hi.").unwrap();
    let o = finetune(&model, &data, &out, &["--steps", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("too few"), "{err}");
}
