//! Q8_1: 32 values per block, signed 8-bit quants, an f16 scale and an f16 `s = d * sum(q)`.
//! Activation format only (paired with Q4_1 and Q5_1 weights); ggml has no Q8_1 weights.

use super::q8_0::abs_max;
use super::{f16le, to_f16le};

/// Elements per block.
pub const QK: usize = 32;

/// ggml `block_q8_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_1 {
    /// Scale (f16 bits).
    pub d: [u8; 2],
    /// `d * sum(qs)` (f16 bits).
    pub s: [u8; 2],
    /// Quants.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// `y = d * q` (ggml registers no Q8_1 dequantizer; this is the obvious one).
pub fn dequantize_row(x: &[BlockQ8_1], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16le(b.d);
        for (yj, &q) in y.iter_mut().zip(&b.qs) {
            *yj = q as f32 * d;
        }
    }
}

/// Activation quantization as llama.cpp runs it on x86 with AVX2 (`quantize_row_q8_1` in
/// `ggml-cpu/arch/x86/quants.c`): like Q8_0's x86 path (`id = 127 / amax`, ties to even), and
/// `s = f16(d * (float)sum(q))` where `d` is the f32 scale before its f16 rounding — the same
/// product the reference computes (`sum * d`), only the quants themselves may differ.
/// `x.len() == y.len() * 32`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ8_1]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = abs_max(x);
        let d = amax / 127.0;
        b.d = to_f16le(d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            // The sum is taken over the i32 values before the saturating packs, which only
            // differ for non-finite input.
            let i = super::round_ties_even(v * id) as i32;
            sum += i;
            *q = i.clamp(-128, 127) as i8;
        }
        b.s = to_f16le(d * sum as f32);
    }
}
