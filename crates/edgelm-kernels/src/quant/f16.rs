//! F16: IEEE binary16 values, little-endian. Pairs with F16 activations.

use crate::convert::{f16_to_f32, f32_to_f16};

/// Converts little-endian f16 bytes to f32 (`src.len() == 2 * y.len()`).
pub fn dequantize_row(src: &[u8], y: &mut [f32]) {
    for (v, b) in y.iter_mut().zip(src.chunks_exact(2)) {
        *v = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// ggml `ggml_cpu_fp32_to_fp16` (F16C, round to nearest even) into little-endian bytes.
pub fn quantize_row(x: &[f32], dst: &mut [u8]) {
    for (v, b) in x.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
    }
}

/// ggml `ggml_vec_dot_f16` without SIMD: products of the f32 conversions summed in f64.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        let x = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
        let y = f16_to_f32(u16::from_le_bytes([y[0], y[1]]));
        sumf += (x * y) as f64;
    }
    sumf as f32
}
