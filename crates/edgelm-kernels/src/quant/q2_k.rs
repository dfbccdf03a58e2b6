//! Q2_K: 256 weights per super-block in 16 groups of 16; 2-bit quants; per group a 4-bit scale
//! and a 4-bit min, themselves scaled by the f16 `d` and `dmin`:
//! `w = d * (sc & 15) * q - dmin * (sc >> 4)`. Pairs with Q8_K.

use super::{f16le, BlockQ8K, QK_K};

/// ggml `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    /// Per group: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the scales (f16 bits).
    pub d: [u8; 2],
    /// Super-block scale for the mins (f16 bits).
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// ggml `dequantize_row_q2_K`. `y.len() == x.len() * 256`.
pub fn dequantize_row(x: &[BlockQ2K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16le(b.d);
        let min = f16le(b.dmin);
        let mut out = 0;
        let mut is = 0;
        for n in 0..QK_K / 128 {
            let q = &b.qs[32 * n..32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let sc = b.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        let qv = ((q[16 * half + l] >> shift) & 3) as f32;
                        y[out] = dl * qv - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

/// ggml `ggml_vec_dot_q2_K_q8_K_generic`: integer sums per group weighted by the 4-bit scales;
/// the mins through the activation's `bsums`; per block `dall * isum - dmin * summs`.
pub fn vec_dot(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sc = &xb.scales;
        let mut summs = 0i32;
        for (j, &s) in sc.iter().enumerate() {
            summs += yb.bsum(j) * (s >> 4) as i32;
        }
        let dall = yb.d() * f16le(xb.d);
        let dmin = yb.d() * f16le(xb.dmin);
        let mut isum = 0i32;
        let mut is = 0;
        let mut q8 = 0;
        for k in 0..QK_K / 128 {
            let q2 = &xb.qs[32 * k..32 * k + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let d = (sc[is] & 0xF) as i32;
                    is += 1;
                    let mut isuml = 0i32;
                    for l in 16 * half..16 * half + 16 {
                        isuml += yb.qs[q8 + l] as i32 * ((q2[l] >> shift) & 3) as i32;
                    }
                    isum += d * isuml;
                }
                q8 += 32;
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}
