//! Q5_K: as Q4_K with a fifth bit per weight in `qh`: `w = d * sc * q - dmin * m`, q in 0..32.
//! Pairs with Q8_K.

use super::{f16le, scale_min_k4, BlockQ8K, QK_K};

/// ggml `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale for the scales (f16 bits).
    pub d: [u8; 2],
    /// Super-block scale for the mins (f16 bits).
    pub dmin: [u8; 2],
    /// 8 six-bit scales and 8 six-bit mins, packed.
    pub scales: [u8; 12],
    /// Fifth bits: bit 2j of byte l is element 64j + l, bit 2j+1 element 64j + 32 + l.
    pub qh: [u8; QK_K / 8],
    /// Low nibbles: 64 elements per 32 bytes, low nibbles first.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// The 256 unsigned quants (0..32) of a block, in element order.
#[inline(always)]
pub(crate) fn unpack_quants(b: &BlockQ5K, a: &mut [u8; QK_K]) {
    for j in 0..QK_K / 64 {
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        for l in 0..32 {
            let q = b.qs[32 * j + l];
            a[64 * j + l] = (q & 0xF) + if b.qh[l] & u1 != 0 { 16 } else { 0 };
            a[64 * j + 32 + l] = (q >> 4) + if b.qh[l] & u2 != 0 { 16 } else { 0 };
        }
    }
}

/// ggml `dequantize_row_q5_K`. `y.len() == x.len() * 256`.
pub fn dequantize_row(x: &[BlockQ5K], y: &mut [f32]) {
    let mut a = [0u8; QK_K];
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16le(b.d);
        let min = f16le(b.dmin);
        unpack_quants(b, &mut a);
        for (g, (yg, ag)) in y.chunks_exact_mut(32).zip(a.chunks_exact(32)).enumerate() {
            let (sc, m) = scale_min_k4(g, &b.scales);
            let (dl, ml) = (d * sc as f32, min * m as f32);
            for (yv, &q) in yg.iter_mut().zip(ag) {
                *yv = dl * q as f32 - ml;
            }
        }
    }
}

/// ggml `ggml_vec_dot_q5_K_q8_K_generic` (same structure as Q4_K's).
pub fn vec_dot(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    let mut a = [0u8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        unpack_quants(xb, &mut a);
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
