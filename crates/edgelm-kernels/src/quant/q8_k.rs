//! Q8_K: 256 values per super-block, signed 8-bit quants, an f32 scale and the sums of each
//! 16 quants (`bsums`, used for the min terms of the K-quant dots). Activation format only.

use super::{nearest_int, QK_K};

/// ggml `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8K {
    /// Scale (f32 bits, little-endian).
    pub d: [u8; 4],
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants (i16, little-endian).
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    /// The scale.
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    /// Sum of quants `16*j .. 16*j+16`.
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes(self.bsums[j]) as i32
    }
}

/// ggml `dequantize_row_q8_K`. `y.len() == x.len() * 256`.
pub fn dequantize_row(x: &[BlockQ8K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (yj, &q) in y.iter_mut().zip(&b.qs) {
            *yj = d * q as f32;
        }
    }
}

/// ggml `quantize_row_q8_K_ref`, which is also what x86 runs (`quantize_row_q8_K` in
/// `arch/x86/quants.c` calls the reference): the scale comes from the signed value of largest
/// magnitude (first one wins), `iscale = -127 / max`, `q = min(127, nearest_int(iscale * x))`
/// (ties to even), `d = 1 / iscale`. `x.len() == y.len() * 256`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ8K]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            b.d = 0.0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            // nearest_int lies in [-127, 127] here except for non-finite input; the low clamp
            // keeps the `as i8` cast from wrapping where C's conversion would be undefined.
            *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
        }
        for j in 0..QK_K / 16 {
            let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            b.bsums[j] = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
