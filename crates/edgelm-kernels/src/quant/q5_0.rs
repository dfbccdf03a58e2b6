//! Q5_0: 32 weights per block, 5-bit quants (4 low bits in nibbles, the 5th bit in a 32-bit
//! mask) with an implicit offset of 16 and one f16 scale: `w = d * (q - 16)`. Pairs with Q8_0.

use super::{f16le, BlockQ8_0};

/// Elements per block.
pub const QK: usize = 32;

/// ggml `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    /// Scale (f16 bits).
    pub d: [u8; 2],
    /// Fifth bits, little-endian u32: bit j belongs to element j.
    pub qh: [u8; 4],
    /// Low nibbles: low nibble of byte j is element j, high nibble element j + 16.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

#[inline(always)]
fn quants(b: &BlockQ5_0, j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes(b.qh);
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (
        ((b.qs[j] & 0x0F) | xh_0) as i32 - 16,
        ((b.qs[j] >> 4) | xh_1) as i32 - 16,
    )
}

/// ggml `dequantize_row_q5_0`. `y.len() == x.len() * 32`.
pub fn dequantize_row(x: &[BlockQ5_0], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16le(b.d);
        for j in 0..QK / 2 {
            let (x0, x1) = quants(b, j);
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

/// The same values as Q8_0 blocks (quants `q - 16` as signed bytes, the same f16 scale), which
/// is exact: any Q8_0 × Q8_0 kernel then computes the Q5_0 × Q8_0 dot. `y.len() == x.len()`.
pub fn to_q8_0(x: &[BlockQ5_0], y: &mut [BlockQ8_0]) {
    for (b, o) in x.iter().zip(y.iter_mut()) {
        o.d = b.d;
        for j in 0..QK / 2 {
            let (x0, x1) = quants(b, j);
            o.qs[j] = x0 as i8;
            o.qs[j + QK / 2] = x1 as i8;
        }
    }
}

/// ggml `ggml_vec_dot_q5_0_q8_0_generic`: per block `(d_w * d_a) * sumi`.
pub fn vec_dot(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
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
        sumf += (f16le(xb.d) * f16le(yb.d)) * sumi as f32;
    }
    sumf
}
