//! Golden tests against gguf-py (`scripts/gen_kernel_fixtures.py`): dequantization bit for bit
//! on random blocks of every format and on real rows of the SmolLM2 model, and Q8_0 reference
//! quantization byte for byte.

use std::path::PathBuf;

use edgelm_kernels::{dequantize_row, quant, GgmlType};

struct Fixture {
    ty: GgmlType,
    n_elements: usize,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Reads `tests/data/<name>`; panics (fails the test) if it is absent: the fixtures are
/// committed, regenerate them with scripts/gen_kernel_fixtures.py.
fn load(name: &str) -> Fixture {
    let path = data_dir().join(name);
    let raw = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); run scripts/gen_kernel_fixtures.py",
            path.display()
        )
    });
    assert_eq!(&raw[..4], b"EDGK", "{name}: bad magic");
    let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
    assert_eq!(u32_at(4), 1, "{name}: version");
    let ty = GgmlType::from_id(u32_at(8)).expect("known type id");
    let n_elements = u32_at(12) as usize;
    let n_bytes = u32_at(16) as usize;
    let body = &raw[20..];
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    };
    let (bytes, values) = if name.starts_with("quantref") {
        (
            body[4 * n_elements..].to_vec(),
            floats(&body[..4 * n_elements]),
        )
    } else {
        (body[..n_bytes].to_vec(), floats(&body[n_bytes..]))
    };
    assert_eq!(bytes.len(), n_bytes, "{name}: byte count");
    assert_eq!(values.len(), n_elements, "{name}: element count");
    Fixture {
        ty,
        n_elements,
        bytes,
        values,
    }
}

fn assert_bit_exact(name: &str, got: &[f32], want: &[f32]) {
    let mut bad = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.to_bits() != w.to_bits() {
            if bad < 5 {
                eprintln!(
                    "{name}[{i}]: got {g:e} ({:#x}) want {w:e} ({:#x})",
                    g.to_bits(),
                    w.to_bits()
                );
            }
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{name}: {bad} of {} values differ", want.len());
}

#[test]
fn dequantize_is_bit_exact_with_gguf_py_for_every_format() {
    let types = [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for ty in types {
        let name = format!("dequant_{}.bin", ty.name());
        let f = load(&name);
        assert_eq!(f.ty, ty);
        let mut out = vec![0.0f32; f.n_elements];
        dequantize_row(ty, &f.bytes, &mut out).expect("dequantize");
        assert_bit_exact(&name, &out, &f.values);
        // the scalar table too, whatever EDGELM_KERNELS says
        let mut out2 = vec![0.0f32; f.n_elements];
        edgelm_kernels::Kernels::scalar()
            .dequantize_row(ty, &f.bytes, &mut out2)
            .expect("dequantize");
        assert_bit_exact(&name, &out2, &f.values);
    }
}

#[test]
fn dequantize_real_model_rows_matches_gguf_py() {
    for name in ["model_Q4_1.bin", "model_Q8_0.bin"] {
        let f = load(name);
        let mut out = vec![0.0f32; f.n_elements];
        dequantize_row(f.ty, &f.bytes, &mut out).expect("dequantize");
        assert_bit_exact(name, &out, &f.values);
    }
}

#[test]
fn q8_0_reference_quantization_matches_gguf_py() {
    let f = load("quantref_Q8_0.bin");
    let n_blocks = f.n_elements / 32;
    let mut blocks = vec![
        quant::BlockQ8_0 {
            d: [0; 2],
            qs: [0; 32]
        };
        n_blocks
    ];
    quant::q8_0::quantize_row_ref(&f.values, &mut blocks);
    let got: Vec<u8> = blocks
        .iter()
        .flat_map(|b| b.d.iter().copied().chain(b.qs.iter().map(|&q| q as u8)))
        .collect();
    assert_eq!(got, f.bytes);
}
