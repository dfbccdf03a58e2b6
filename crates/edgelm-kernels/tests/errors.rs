//! Bad input yields a KernelError, never a panic.

use edgelm_kernels::{
    dequantize_row, matmul, quantize_activation, quantize_activations, row_bytes, vec_dot,
    vec_dot_f32, vec_dot_type, GgmlType, KernelError, ThreadPool,
};

#[test]
fn wrong_lengths_are_errors() {
    assert!(matches!(
        row_bytes(GgmlType::Q4_K, 576),
        Err(KernelError::NotBlockMultiple {
            n: 576,
            block_size: 256,
            ..
        })
    ));
    assert_eq!(row_bytes(GgmlType::Q4_1, 576), Ok(360));
    assert!(matches!(
        row_bytes(GgmlType::Q8_0, usize::MAX - 31),
        Err(KernelError::Overflow { .. })
    ));

    let mut out = vec![0.0f32; 32];
    assert!(matches!(
        dequantize_row(GgmlType::Q4_1, &[0u8; 19], &mut out),
        Err(KernelError::BadLength {
            expected: 20,
            got: 19,
            ..
        })
    ));
    let mut out = vec![0.0f32; 33];
    assert!(matches!(
        dequantize_row(GgmlType::Q4_1, &[0u8; 20], &mut out),
        Err(KernelError::NotBlockMultiple { .. })
    ));
    assert!(matches!(
        vec_dot(GgmlType::Q4_1, 32, &[0u8; 20], &[0u8; 34]),
        Err(KernelError::BadLength {
            ty: GgmlType::Q8_1,
            expected: 36,
            got: 34,
            ..
        })
    ));
    assert!(matches!(
        vec_dot(GgmlType::Q4_1, 64, &[0u8; 20], &[0u8; 72]),
        Err(KernelError::BadLength { expected: 40, .. })
    ));
    let mut a = vec![0u8; 33];
    assert!(matches!(
        quantize_activation(GgmlType::Q8_0, &[0.0; 32], &mut a),
        Err(KernelError::BadLength { .. })
    ));
    assert!(matches!(
        vec_dot_f32(GgmlType::Q6_K, &[0u8; 210], &[0.0; 255]),
        Err(KernelError::NotBlockMultiple { .. })
    ));
    assert!(quantize_activations(GgmlType::Q8_0, &[0.0; 63], 2, 32, &mut Vec::new()).is_err());

    let pool = ThreadPool::new(2).expect("pool");
    let w = vec![0u8; 4 * 20];
    let act = vec![0u8; 2 * 36];
    let mut out = vec![0.0f32; 8];
    assert!(matmul(&pool, GgmlType::Q4_1, &w, 4, 32, &act, 2, &mut out).is_ok());
    assert!(matches!(
        matmul(&pool, GgmlType::Q4_1, &w, 4, 32, &act, 2, &mut out[..7]),
        Err(KernelError::BadLength {
            what: "matmul output",
            ..
        })
    ));
    assert!(matches!(
        matmul(&pool, GgmlType::Q4_1, &w[..79], 4, 32, &act, 2, &mut out),
        Err(KernelError::BadLength {
            what: "matmul weights",
            ..
        })
    ));
    assert!(matches!(
        matmul(&pool, GgmlType::Q4_1, &w, 4, 32, &act[..71], 2, &mut out),
        Err(KernelError::BadLength {
            what: "matmul activations",
            ..
        })
    ));
    assert!(matches!(
        matmul(&pool, GgmlType::Q4_1, &w, usize::MAX, 32, &act, 2, &mut out),
        Err(KernelError::Overflow { .. })
    ));
}

#[test]
fn unsupported_types_are_errors() {
    for ty in [
        GgmlType::IQ2_XXS,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::TQ1_0,
        GgmlType::I32,
    ] {
        let n = ty.block_size();
        let bytes = vec![0u8; ty.type_size()];
        let mut out = vec![0.0f32; n];
        assert!(matches!(
            dequantize_row(ty, &bytes, &mut out),
            Err(KernelError::Unsupported {
                op: "dequantize",
                ..
            })
        ));
        assert!(matches!(
            vec_dot_type(ty),
            Err(KernelError::Unsupported { .. })
        ));
        assert!(matches!(
            vec_dot(ty, n, &bytes, &bytes),
            Err(KernelError::Unsupported { .. })
        ));
        assert!(matches!(
            vec_dot_f32(ty, &bytes, &out),
            Err(KernelError::Unsupported { .. })
        ));
    }
    // activation-only types have no vec_dot, weight-only types no activation quantizer
    assert!(vec_dot_type(GgmlType::Q8_K).is_err());
    assert!(vec_dot(GgmlType::Q8_1, 32, &[0u8; 36], &[0u8; 36]).is_err());
    assert!(matches!(
        quantize_activation(GgmlType::Q4_0, &[0.0; 32], &mut [0u8; 18]),
        Err(KernelError::Unsupported {
            op: "quantize_activation",
            ..
        })
    ));
    assert!(quantize_activations(GgmlType::Q4_K, &[], 0, 0, &mut Vec::new()).is_err());
    let pool = ThreadPool::new(1).expect("pool");
    assert!(matches!(
        matmul(&pool, GgmlType::IQ3_S, &[], 0, 256, &[], 0, &mut []),
        Err(KernelError::Unsupported { .. })
    ));
}

#[test]
fn errors_name_their_context() {
    let e = vec_dot(GgmlType::Q4_1, 32, &[0u8; 19], &[0u8; 36]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vec_dot weights: wrong length for Q4_1: expected 20, got 19"
    );
}
