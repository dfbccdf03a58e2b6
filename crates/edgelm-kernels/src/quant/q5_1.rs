//! Q5_1: 32 weights per block, 5-bit unsigned quants with an f16 scale and f16 min:
//! `w = d * q + m`. Pairs with Q8_1.

use super::{f16le, BlockQ8_1};

/// Elements per block.
pub const QK: usize = 32;

/// ggml `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    /// Scale (f16 bits).
    pub d: [u8; 2],
    /// Min (f16 bits).
    pub m: [u8; 2],
    /// Fifth bits, little-endian u32: bit j belongs to element j.
    pub qh: [u8; 4],
    /// Low nibbles: low nibble of byte j is element j, high nibble element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

#[inline(always)]
fn quants(b: &BlockQ5_1, j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes(b.qh);
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (
        ((b.qs[j] & 0x0F) | xh_0) as i32,
        ((b.qs[j] >> 4) | xh_1) as i32,
    )
}

/// ggml `dequantize_row_q5_1`. `y.len() == x.len() * 32`.
pub fn dequantize_row(x: &[BlockQ5_1], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16le(b.d);
        let m = f16le(b.m);
        for j in 0..QK / 2 {
            let (x0, x1) = quants(b, j);
            y[j] = x0 as f32 * d + m;
            y[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// ggml `ggml_vec_dot_q5_1_q8_1_generic`: per block `(d_w * d_a) * sumi + m_w * s_a`.
pub fn vec_dot(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK / 2 {
            let (x0, x1) = quants(xb, j);
            sumi0 += x0 * yb.qs[j] as i32;
            sumi1 += x1 * yb.qs[j + QK / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (f16le(xb.d) * f16le(yb.d)) * sumi as f32 + f16le(xb.m) * f16le(yb.s);
    }
    sumf
}
