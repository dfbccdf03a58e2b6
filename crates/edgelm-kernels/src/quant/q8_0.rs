//! Q8_0: 32 values per block, signed 8-bit quants and one f16 scale: `w = d * q`. Both a weight
//! format and the activation format paired with Q4_0, Q5_0 and Q8_0 weights.

use super::{f16le, to_f16le};

/// Elements per block.
pub const QK: usize = 32;

/// ggml `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    /// Scale (f16 bits).
    pub d: [u8; 2],
    /// Quants.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// ggml `dequantize_row_q8_0`. `y.len() == x.len() * 32`.
pub fn dequantize_row(x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16le(b.d);
        for (yj, &q) in y.iter_mut().zip(&b.qs) {
            *yj = q as f32 * d;
        }
    }
}

/// Largest |x| of a block, as `_mm256_max_ps` over `andnot(sign, x)` finds it (for inputs
/// without NaN, the plain maximum of the absolute values).
#[inline(always)]
pub(crate) fn abs_max(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Activation quantization as llama.cpp runs it on x86 with AVX2 (`quantize_row_q8_0` in
/// `ggml-cpu/arch/x86/quants.c`), which differs from `quantize_row_q8_0_ref`:
/// - the multiplier is `id = 127 / amax` (the reference uses `1 / d` with `d = amax / 127`,
///   which can differ in the last bit);
/// - rounding is `_mm256_round_ps(_MM_ROUND_NEAREST)`: ties to even (the reference's `roundf`
///   rounds ties away from zero).
///
/// We follow the x86 path because it is what produces llama.cpp's logits on this machine.
/// `x.len() == y.len() * 32`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ8_0]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = abs_max(x);
        let d = amax / 127.0;
        b.d = to_f16le(d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(x) {
            // |v * id| <= 127 up to one rounding, so the clamp (the saturation of the
            // `packs` instructions) only matters for non-finite input.
            *q = super::round_ties_even(v * id).clamp(-128.0, 127.0) as i8;
        }
    }
}

/// ggml `quantize_row_q8_0_ref` (used to create model files; `gguf-py` reproduces it):
/// `id = 1/d`, `roundf` (ties away from zero).
pub fn quantize_row_ref(x: &[f32], y: &mut [BlockQ8_0]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = abs_max(x);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16le(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round().clamp(-128.0, 127.0) as i8;
        }
    }
}

/// ggml `ggml_vec_dot_q8_0_q8_0_generic`: per block `sumi * (d_w * d_a)`.
pub fn vec_dot(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (&a, &b) in xb.qs.iter().zip(&yb.qs) {
            sumi += a as i32 * b as i32;
        }
        sumf += sumi as f32 * (f16le(xb.d) * f16le(yb.d));
    }
    sumf
}
