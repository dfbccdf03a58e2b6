//! Q4_K: 256 weights per super-block in 8 groups of 32; 4-bit quants; per group a 6-bit scale
//! and 6-bit min (packed in 12 bytes) scaled by the f16 `d` and `dmin`:
//! `w = d * sc * q - dmin * m`. Pairs with Q8_K.

use super::{f16le, scale_min_k4, BlockQ8K, QK_K};

/// ggml `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the scales (f16 bits).
    pub d: [u8; 2],
    /// Super-block scale for the mins (f16 bits).
    pub dmin: [u8; 2],
    /// 8 six-bit scales and 8 six-bit mins, packed.
    pub scales: [u8; 12],
    /// Nibbles: 64 elements per 32 bytes, low nibbles first.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// ggml `dequantize_row_q4_K`. `y.len() == x.len() * 256`.
pub fn dequantize_row(x: &[BlockQ4K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16le(b.d);
        let min = f16le(b.dmin);
        for j in 0..QK_K / 64 {
            let q = &b.qs[32 * j..32 * j + 32];
            let (sc1, m1) = scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// ggml `ggml_vec_dot_q4_K_q8_K_generic`: 8 i32 lanes of `scale * q8 * q4` per block folded
/// into 8 f32 lanes with `d_w * d_a`; the mins as `dmin_w * d_a * sum(bsums * m)` subtracted
/// from the running sum; lanes added at the end.
pub fn vec_dot(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    let mut a = [0u8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for j in 0..QK_K / 64 {
            for l in 0..32 {
                a[64 * j + l] = xb.qs[32 * j + l] & 0xF;
                a[64 * j + 32 + l] = xb.qs[32 * j + l] >> 4;
            }
        }
        let mut scales = [0u8; 8];
        let mut mins = [0u8; 8];
        for j in 0..8 {
            (scales[j], mins[j]) = scale_min_k4(j, &xb.scales);
        }
        let mut sumi = 0i32;
        for j in 0..QK_K / 16 {
            sumi += yb.bsum(j) * mins[j / 2] as i32;
        }
        let mut aux32 = [0i32; 8];
        for j in 0..QK_K / 32 {
            let scale = scales[j] as i32;
            for k in 0..4 {
                let base = 32 * j + 8 * k;
                for l in 0..8 {
                    aux32[l] += scale * (yb.qs[base + l] as i32 * a[base + l] as i32);
                }
            }
        }
        let d = f16le(xb.d) * yb.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = f16le(xb.dmin) * yb.d();
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}
