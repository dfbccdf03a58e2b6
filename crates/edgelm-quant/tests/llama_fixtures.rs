//! Bit-exactness against llama.cpp: the synthetic F32 model in tests/data/ was quantized
//! by llama-quantize to each of the 17 file types (scripts/gen_quant_fixtures.sh). Quantizing
//! the same source here must give the same *file*, byte for byte; when it does not, the test
//! reports which tensors and how many blocks differ, and by how much.

use std::path::PathBuf;

use edgelm_gguf::GgufFile;
use edgelm_quant::compare::compare_files;
use edgelm_quant::model::{quantize_model, QuantizeOptions};
use edgelm_quant::recipe::{FileType, RecipeOptions, ALL_FILE_TYPES};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn quantize(source: &GgufFile, file_type: FileType) -> Vec<u8> {
    let opts = QuantizeOptions {
        file_type,
        recipe: RecipeOptions::default(),
        allow_requantize: false,
        imatrix: None,
    };
    let (w, _) = quantize_model(source, &opts, |_| {}).unwrap();
    w.to_bytes()
}

#[test]
fn every_file_type_is_byte_identical_with_llama_quantize() {
    let source = GgufFile::open(data_dir().join("source-f32.gguf")).unwrap();
    let mut failures = Vec::new();
    for &ft in ALL_FILE_TYPES {
        let path = data_dir().join(format!("llama-{}.gguf", ft.name().to_lowercase()));
        let reference_bytes = std::fs::read(&path).unwrap();
        let ours = quantize(&source, ft);
        if ours == reference_bytes {
            continue;
        }
        let ours = GgufFile::from_bytes(ours).unwrap();
        let reference = GgufFile::from_bytes(reference_bytes).unwrap();
        let mut report = format!("{ft}: files differ");
        for d in compare_files(&ours, &reference) {
            if !d.is_exact() {
                report += &format!(
                    "\n  {}: ours {:?} llama {}: {} of {} blocks differ, max |diff| {}",
                    d.name, d.ours, d.reference, d.n_blocks_differ, d.n_blocks, d.max_abs_diff
                );
            }
        }
        failures.push(report);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let source = GgufFile::open(data_dir().join("source-f32.gguf")).unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for ft in [FileType::Q4_K_M, FileType::Q8_0] {
        assert_eq!(
            one.install(|| quantize(&source, ft)),
            three.install(|| quantize(&source, ft))
        );
    }
}

/// With an importance matrix (llama-imatrix's GGUF format, synthetic values): llama-quantize's
/// `quantize_row_*_impl` paths for every importance-weighted tensor type.
#[test]
fn importance_weighted_quantization_is_byte_identical_with_llama_quantize() {
    let source = GgufFile::open(data_dir().join("source-f32.gguf")).unwrap();
    let imatrix = edgelm_quant::imatrix::Imatrix::load(&data_dir().join("imatrix.gguf")).unwrap();
    let mut failures = Vec::new();
    for name in [
        "Q2_K", "Q3_K_S", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_S", "Q5_K_S", "Q6_K",
    ] {
        let ft = FileType::from_name(name).unwrap();
        let opts = QuantizeOptions {
            file_type: ft,
            recipe: RecipeOptions {
                has_imatrix: true,
                ..Default::default()
            },
            allow_requantize: false,
            // The path llama-quantize was given (scripts/gen_quant_fixtures.sh), which it records.
            imatrix: Some((
                imatrix.clone(),
                "crates/edgelm-quant/tests/data/imatrix.gguf".into(),
            )),
        };
        let (w, _) = quantize_model(&source, &opts, |_| {}).unwrap();
        let ours = w.to_bytes();
        let path = data_dir().join(format!("llama-imatrix-{}.gguf", name.to_lowercase()));
        let reference_bytes = std::fs::read(&path).unwrap();
        if ours == reference_bytes {
            continue;
        }
        let ours = GgufFile::from_bytes(ours).unwrap();
        let reference = GgufFile::from_bytes(reference_bytes).unwrap();
        let mut report = format!("{name} with imatrix: files differ");
        for d in compare_files(&ours, &reference) {
            if !d.is_exact() {
                report += &format!(
                    "\n  {}: ours {:?} llama {}: {} of {} blocks differ, max |diff| {}",
                    d.name, d.ours, d.reference, d.n_blocks_differ, d.n_blocks, d.max_abs_diff
                );
            }
        }
        failures.push(report);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
