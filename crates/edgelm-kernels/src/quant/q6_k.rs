//! Q6_K: 256 weights per super-block in 16 groups of 16; 6-bit quants (4 low bits in `ql`,
//! 2 high bits in `qh`) offset by 32; signed 8-bit group scales; one f16 super-block scale:
//! `w = d * sc * (q - 32)`. Pairs with Q8_K.

use super::{f16le, BlockQ8K, QK_K};

/// ggml `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale (f16 bits).
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// The 256 signed quants (-32..32) of a block, in element order.
#[inline(always)]
pub(crate) fn unpack_quants(b: &BlockQ6K, a: &mut [i8; QK_K]) {
    for n in 0..QK_K / 128 {
        let ql = &b.ql[64 * n..64 * n + 64];
        let qh = &b.qh[32 * n..32 * n + 32];
        let a = &mut a[128 * n..128 * n + 128];
        for l in 0..32 {
            a[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

/// ggml `dequantize_row_q6_K`: `y = (d * sc) * q`. `y.len() == x.len() * 256`.
pub fn dequantize_row(x: &[BlockQ6K], y: &mut [f32]) {
    let mut a = [0i8; QK_K];
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16le(b.d);
        unpack_quants(b, &mut a);
        for (g, (yg, ag)) in y.chunks_exact_mut(16).zip(a.chunks_exact(16)).enumerate() {
            let ds = d * b.scales[g] as f32;
            for (yv, &q) in yg.iter_mut().zip(ag) {
                *yv = ds * q as f32;
            }
        }
    }
}

/// ggml `ggml_vec_dot_q6_K_q8_K_generic`: 8 i32 lanes of `scale * q8 * q6`, folded into 8 f32
/// lanes with `d_w * d_a`, lanes added at the end.
pub fn vec_dot(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut a = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        unpack_quants(xb, &mut a);
        let mut aux32 = [0i32; 8];
        for j in 0..QK_K / 16 {
            let scale = xb.scales[j] as i32;
            for half in 0..2 {
                let base = 16 * j + 8 * half;
                for l in 0..8 {
                    aux32[l] += scale * (yb.qs[base + l] as i32 * a[base + l] as i32);
                }
            }
        }
        let d = f16le(xb.d) * yb.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}
