//! Q4_0: 32 weights per block, 4-bit unsigned quants with an implicit offset of 8 and one f16
//! scale: `w = d * (q - 8)`. Activations pair with Q8_0.

use super::{f16le, BlockQ8_0};

/// Elements per block.
pub const QK: usize = 32;

/// ggml `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    /// Scale (f16 bits, little-endian).
    pub d: [u8; 2],
    /// Nibbles: low nibble of byte j is element j, high nibble element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// ggml `dequantize_row_q4_0`. `y.len() == x.len() * 32`.
pub fn dequantize_row(x: &[BlockQ4_0], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16le(b.d);
        for j in 0..QK / 2 {
            let x0 = (b.qs[j] & 0x0F) as i32 - 8;
            let x1 = (b.qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

/// ggml `ggml_vec_dot_q4_0_q8_0_generic`: per block `sumi * d_w * d_a` (in that order).
pub fn vec_dot(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK / 2 {
            let v0 = (xb.qs[j] & 0x0F) as i32 - 8;
            let v1 = (xb.qs[j] >> 4) as i32 - 8;
            sumi0 += v0 * yb.qs[j] as i32;
            sumi1 += v1 * yb.qs[j + QK / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += sumi as f32 * f16le(xb.d) * f16le(yb.d);
    }
    sumf
}
