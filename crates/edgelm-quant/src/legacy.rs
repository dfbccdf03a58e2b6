//! The 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): ggml's `quantize_row_*_ref`,
//! operation for operation, so that every block is bit-identical with llama.cpp's quantizer
//! (which calls exactly these when no importance matrix is given).
//!
//! Every function takes `x.len() == y.len() * 32`.

use edgelm_kernels::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

use crate::f16_bits;

const QK: usize = 32;

/// The element of largest magnitude (the first one on ties), as ggml's `amax`/`max` loop.
#[inline(always)]
fn signed_abs_max(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's `(int8_t)f` for the in-range values these formats produce (truncation toward zero).
#[inline(always)]
fn trunc_i8(f: f32) -> i32 {
    f as i8 as i32
}

/// ggml `quantize_row_q4_0_ref`.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let max = signed_abs_max(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bits(d);
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK / 2 + j] * id;
            let xi0 = trunc_i8(x0 + 8.5).min(15) as u8;
            let xi1 = trunc_i8(x1 + 8.5).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// ggml `quantize_row_q4_1_ref`.
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bits(d);
        b.m = f16_bits(min);
        for j in 0..QK / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK / 2 + j] - min) * id;
            let xi0 = trunc_i8(x0 + 0.5).min(15) as u8;
            let xi1 = trunc_i8(x1 + 0.5).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// ggml `quantize_row_q5_0_ref`.
pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let max = signed_abs_max(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bits(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK / 2 + j] * id;
            let xi0 = trunc_i8(x0 + 16.5).min(31) as u8;
            let xi1 = trunc_i8(x1 + 16.5).min(31) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (((xi0 & 0x10) as u32) >> 4) << j;
            qh |= (((xi1 & 0x10) as u32) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// ggml `quantize_row_q5_1_ref`.
pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bits(d);
        b.m = f16_bits(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK / 2 + j] - min) * id;
            // C's `(uint8_t)(x + 0.5f)`: truncation of a value in [0.5, 31.5].
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (((xi0 & 0x10) as u32) >> 4) << j;
            qh |= (((xi1 & 0x10) as u32) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// ggml `quantize_row_q8_0_ref`: `d = amax / 127`, `q = roundf(x / d)` (ties away from zero).
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    edgelm_kernels::quant::q8_0::quantize_row_ref(x, y);
}
