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
        (vec!["--method", "awq"], 2, "--calib"),
        (vec!["--method", "awq-gptq"], 2, "--calib"),
        (vec!["--calib", s(&text)], 2, "only used with --method gptq"),
        (
            // The importance matrix is read (for the group scales): a bad one is an error.
            vec![
                "--method",
                "gptq",
                "--calib",
                s(&text),
                "--imatrix",
                s(&text),
            ],
            1,
            "cannot load the importance matrix",
        ),
        (
            vec!["--method", "gptq", "--calib", s(&text), "--gptq-damp=-1"],
            2,
            "non-negative",
        ),
        (vec!["--method", "bogus"], 2, "invalid value"),
        // Not a runnable model: calibration cannot run it.
        (
            vec!["--method", "gptq", "--calib", s(&text)],
            1,
            "GPTQ calibration failed",
        ),
        (
            vec!["--method", "awq", "--calib", s(&text)],
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
    // AWQ only makes sense for a quantized output type.
    for ty in ["F32", "F16", "BF16"] {
        let o = run(&[
            "quantize",
            s(&m),
            s(&out),
            "--type",
            ty,
            "--method",
            "awq",
            "--calib",
            s(&text),
        ]);
        assert_eq!(o.status.code(), Some(2), "{ty}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not a quantized type"),
            "{ty}: {}",
            stderr(&o)
        );
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
        // GPTQ rounds with an importance, so the recipe is llama.cpp's imatrix one: Q4_1 for
        // the first n_layer/8 = 3 ffn_down weights.
        let first_down = ["blk.0.", "blk.1.", "blk.2."]
            .iter()
            .any(|p| t.name.starts_with(p))
            && t.name.contains("ffn_down");
        let want = if first_down { GgmlType::Q4_1 } else { t.ty };
        assert_eq!((g.ty, &g.dims), (want, &t.dims), "{}", t.name);
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

/// The AWQ fold on the real model: with random positive scales in every group, the scaled
/// model's logits equal the unscaled model's. Every matrix is turned to F32 first, so that
/// no activation is rounded to 8 bits on the way (a quantized matmul's input rounding would
/// turn f32-level differences into whole quantization steps).
#[test]
fn awq_fold_keeps_the_real_models_function() {
    use std::sync::Arc;
    let Some(model) = real_model() else { return };
    let q = GgufFile::open(&model).unwrap();
    let mut w = GgufWriter::new();
    for (key, value) in q.metadata().iter() {
        w.add_metadata(key, value.clone()).unwrap();
    }
    for t in q.tensors() {
        let v = edgelm_quant::model::tensor_to_f32(&q, t).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(t.name.clone(), &t.dims, GgmlType::F32, bytes)
            .unwrap();
    }
    let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
    drop(q);
    let groups = edgelm_quant::awq::llama_groups(30);
    let mut seed = 12345u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    let results =
        |random: bool, rnd: &mut dyn FnMut() -> f32| -> Vec<edgelm_quant::awq::GroupResult> {
            groups
                .iter()
                .map(|g| {
                    let n = file.tensor(&g.weights[0]).unwrap().row_len();
                    edgelm_quant::awq::GroupResult {
                        key: g.key.clone(),
                        alpha: 0.0,
                        error_before: 0.0,
                        error_after: 0.0,
                        scales: (0..n)
                            .map(|_| if random { 0.5 + 1.5 * rnd() } else { 1.0 })
                            .collect(),
                    }
                })
                .collect()
        };
    let ones = results(false, &mut rnd);
    let random = results(true, &mut rnd);
    let logits = |res: &[edgelm_quant::awq::GroupResult]| -> Vec<f32> {
        let bytes = edgelm_quant::awq::apply(&file, &groups, res).unwrap();
        let f = Arc::new(GgufFile::from_bytes(bytes).unwrap());
        let m = edgelm_model::Model::load(f).unwrap();
        let pool = edgelm_kernels::ThreadPool::new(2).unwrap();
        let mut st = m
            .new_state_with(32, 32, edgelm_model::CacheType::F16)
            .unwrap();
        let toks: Vec<u32> = (0..16).map(|i| 100 + 37 * i).collect();
        m.forward(&pool, &mut st, &toks, edgelm_model::Logits::All)
            .unwrap()
            .to_vec()
    };
    let (a, b) = (logits(&ones), logits(&random));
    assert_eq!(a.len(), b.len());
    let max_abs = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    eprintln!("AWQ fold: max |logit| {max_abs}, max difference {max_diff}");
    assert!(
        max_diff < 1e-3 * max_abs.max(1.0),
        "{max_diff} vs {max_abs}"
    );
    // And the weights did change.
    assert_ne!(
        edgelm_quant::awq::apply(&file, &groups, &ones).unwrap(),
        edgelm_quant::awq::apply(&file, &groups, &random).unwrap()
    );
}

/// `--method awq-gptq --type Q2_K` on the real model with a short calibration: K-quant
/// GPTQ (ffn_down is Q3_K there) and the AWQ fold; the file keeps llama-quantize's types
/// and shapes, decodes to finite values, and generates in edgelm (and llama.cpp when built).
#[test]
fn awq_gptq_real_model_q2_k() {
    let Some(model) = real_model() else { return };
    let Some(text) = calib_text() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rtn = tmp.path().join("rtn.gguf");
    let awq = tmp.path().join("awq.gguf");
    let common = ["--type", "Q2_K", "--allow-requantize", "-q"];
    let mut a = vec!["quantize", s(&model), s(&rtn)];
    a.extend(common);
    let o = run(&a);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut a = vec![
        "quantize",
        s(&model),
        s(&awq),
        "--method",
        "awq-gptq",
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
    let (fr, fa) = (GgufFile::open(&rtn).unwrap(), GgufFile::open(&awq).unwrap());
    let mut k_quant = 0;
    for t in fr.tensors() {
        let g = fa.tensor(&t.name).unwrap();
        assert_eq!((g.ty, &g.dims), (t.ty, &t.dims), "{}", t.name);
        if t.name.starts_with("blk.") && t.dims.len() == 2 {
            assert_ne!(fr.tensor_data(t), fa.tensor_data(g), "{}", t.name);
            let v = edgelm_quant::model::tensor_to_f32(&fa, g).unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
            k_quant += (g.ty == GgmlType::Q3_K) as usize;
        }
    }
    assert_eq!(k_quant, 30, "ffn_down is Q3_K in every layer");
    drop((fr, fa));
    let o = run(&[
        "run",
        "-m",
        s(&awq),
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
        let o = Command::new(&llama)
            .args([
                "-m",
                s(&awq),
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
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    } else {
        eprintln!("llama.cpp check skipped: {} is absent", llama.display());
    }
}
