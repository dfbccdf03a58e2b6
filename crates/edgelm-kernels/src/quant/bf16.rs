//! BF16: bfloat16 values, little-endian. Pairs with BF16 activations.

use crate::convert::{bf16_to_f32, f32_to_bf16};

/// Converts little-endian bf16 bytes to f32 (`src.len() == 2 * y.len()`).
pub fn dequantize_row(src: &[u8], y: &mut [f32]) {
    for (v, b) in y.iter_mut().zip(src.chunks_exact(2)) {
        *v = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// ggml `ggml_cpu_fp32_to_bf16` (`GGML_FP32_TO_BF16` per element) into little-endian bytes.
pub fn quantize_row(x: &[f32], dst: &mut [u8]) {
    for (v, b) in x.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
    }
}

/// ggml `ggml_vec_dot_bf16` without SIMD: products of the f32 conversions summed in f64.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        let x = bf16_to_f32(u16::from_le_bytes([x[0], x[1]]));
        let y = bf16_to_f32(u16::from_le_bytes([y[0], y[1]]));
        sumf += (x * y) as f64;
    }
    sumf as f32
}
