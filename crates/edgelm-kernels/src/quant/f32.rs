//! F32: plain little-endian f32 values. Pairs with F32 activations.

/// Copies little-endian f32 bytes into `y` (`src.len() == 4 * y.len()`).
pub fn dequantize_row(src: &[u8], y: &mut [f32]) {
    for (v, b) in y.iter_mut().zip(src.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Writes `x` as little-endian f32 bytes (`dst.len() == 4 * x.len()`).
pub fn quantize_row(x: &[f32], dst: &mut [u8]) {
    for (v, b) in x.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// ggml `ggml_vec_dot_f32` without SIMD: f32 products summed in f64 (`ggml_float`).
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f64;
    for (x, y) in w.chunks_exact(4).zip(a.chunks_exact(4)) {
        let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        let y = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        sumf += (x * y) as f64;
    }
    sumf as f32
}
