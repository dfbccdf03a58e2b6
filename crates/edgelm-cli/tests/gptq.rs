//! `edgelm quantize --method gptq` through the real binary: argument and input errors on a
//! synthetic file (always), and a short real-model run (when the model is cached): one
//! calibration chunk of 64 tokens, the output keeps ggml's Q4_0 blocks, differs from the
//! round-to-nearest file, and generates in edgelm (and in llama.cpp when it is built).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter};

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

fn calib_text() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/tinyshakespeare.txt");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent", p.display());
        None
    }
}

#[test]
fn gptq_arguments_and_bad_inputs_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("llama.block_count", 1u32).unwrap();
    let data: Vec<u8> = (0..64 * 32)
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    w.add_tensor("blk.0.ffn_up.weight", &[32, 64], GgmlType::F32, data)
        .unwrap();
    let m = tmp.path().join("m.gguf");
    w.write_file(&m).unwrap();
    let text = tmp.path().join("calib.txt");
    std::fs::write(&text, "some calibration text ".repeat(200)).unwrap();
    let out = tmp.path().join("out.gguf");
    let base = ["quantize", s(&m), s(&out), "--type", "Q4_0"];
    for (extra, code, needle) in [
        (vec!["--method", "gptq"], 2, "--calib"),
        (vec!["--calib", s(&text)], 2, "only used with --method gptq"),
        (
            vec![
                "--method",
                "gptq",
                "--calib",
                s(&text),
                "--imatrix",
                s(&text),
            ],
            2,
            "cannot be combined",
        ),
        (
            vec!["--method", "gptq", "--calib", s(&text), "--gptq-damp=-1"],
            2,
            "non-negative",
        ),
        (vec!["--method", "awq"], 2, "invalid value"),
        // Not a runnable model: calibration cannot run it.
        (
            vec!["--method", "gptq", "--calib", s(&text)],
            1,
            "GPTQ calibration failed",
        ),
    ] {
        let mut full = base.to_vec();
        full.extend(extra.iter().copied());
        let o = run(&full);
        assert_eq!(o.status.code(), Some(code), "{full:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{full:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
        assert!(!out.exists());
    }
}

#[test]
fn gptq_real_model_short_calibration() {
    let Some(model) = real_model() else { return };
    let Some(text) = calib_text() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rtn = tmp.path().join("rtn.gguf");
    let gptq = tmp.path().join("gptq.gguf");
    let common = ["--type", "Q4_0", "--allow-requantize", "-q"];
    let mut a = vec!["quantize", s(&model), s(&rtn)];
    a.extend(common);
    let o = run(&a);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut a = vec![
        "quantize",
        s(&model),
        s(&gptq),
        "--method",
        "gptq",
        "--calib",
        s(&text),
        "--calib-chunks",
        "1",
        "--calib-ctx",
        "64",
    ];
    a.extend(common);
    let o = run(&a);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let (fr, fg) = (
        GgufFile::open(&rtn).unwrap(),
        GgufFile::open(&gptq).unwrap(),
    );
    assert!(fg.metadata().get("quantize.gptq.dataset").is_some());
    let mut n_diff = 0;
    for t in fr.tensors() {
        let g = fg.tensor(&t.name).unwrap();
        assert_eq!((g.ty, &g.dims), (t.ty, &t.dims), "{}", t.name);
        let differs = fr.tensor_data(t) != fg.tensor_data(g);
        // GPTQ changes exactly the blk.* Q4_0 weights (the others are rounded as before).
        let expect = t.name.starts_with("blk.") && t.ty == GgmlType::Q4_0;
        assert_eq!(differs, expect, "{}", t.name);
        n_diff += differs as usize;
        if differs {
            // Still decodes to finite values close to the RTN ones.
            let (a, b) = (
                edgelm_quant::model::tensor_to_f32(&fr, t).unwrap(),
                edgelm_quant::model::tensor_to_f32(&fg, g).unwrap(),
            );
            let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
            assert!(b.iter().all(|v| v.is_finite()), "{}", t.name);
            assert!(
                rms(&diff) < 0.5 * rms(&a),
                "{}: {} vs {}",
                t.name,
                rms(&diff),
                rms(&a)
            );
        }
    }
    assert_eq!(n_diff, 30 * 7);
    drop((fr, fg));

    let o = run(&[
        "run",
        "-m",
        s(&gptq),
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--temp",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    let llama = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".cache/edgelm-ref/llama.cpp/build/bin/llama-completion");
    if llama.is_file() {
        let st = Command::new(&llama)
            .args([
                "-m",
                s(&gptq),
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
            "llama.cpp cannot run the GPTQ file: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    } else {
        eprintln!("llama.cpp's llama-completion is not built; skipped running the file there");
    }
}
