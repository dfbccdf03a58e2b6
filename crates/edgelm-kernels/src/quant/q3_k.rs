//! Q3_K: 256 weights per super-block in 16 groups of 16; 3-bit quants (2 low bits in `qs`, the
//! high bit in `hmask`, stored inverted: a clear bit subtracts 4); 6-bit signed group scales
//! (offset 32) packed in 12 bytes; one f16 super-block scale. Pairs with Q8_K.

use super::{f16le, BlockQ8K, QK_K};

/// ggml `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    /// High bits of the quants.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits of the quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// 16 six-bit scales, packed.
    pub scales: [u8; 12],
    /// Super-block scale (f16 bits).
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// Unpacks the 16 six-bit scales (still offset by 32), as ggml's `kmask1/kmask2` shuffle.
#[inline(always)]
pub(crate) fn unpack_scales(s: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let tmp = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (k, byte) in w.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = *byte as i8;
        }
    }
    out
}

/// The 256 signed quants (-4..=3) of a block, in element order.
#[inline(always)]
pub(crate) fn unpack_quants(b: &BlockQ3K, a: &mut [i8; QK_K]) {
    let mut m = 1u8;
    let mut out = 0;
    for n in 0..QK_K / 128 {
        let q = &b.qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for l in 0..32 {
                let low = ((q[l] >> shift) & 3) as i8;
                a[out + l] = low - if b.hmask[l] & m != 0 { 0 } else { 4 };
            }
            out += 32;
            m <<= 1;
        }
    }
}

/// ggml `dequantize_row_q3_K`. `y.len() == x.len() * 256`.
pub fn dequantize_row(x: &[BlockQ3K], y: &mut [f32]) {
    let mut a = [0i8; QK_K];
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = f16le(b.d);
        let scales = unpack_scales(&b.scales);
        unpack_quants(b, &mut a);
        // Element order: groups of 16 follow the scales in order (is = 0..16).
        for (g, (yg, ag)) in y.chunks_exact_mut(16).zip(a.chunks_exact(16)).enumerate() {
            let dl = d_all * (scales[g] as i32 - 32) as f32;
            for (yv, &q) in yg.iter_mut().zip(ag) {
                *yv = dl * q as f32;
            }
        }
    }
}

/// ggml `ggml_vec_dot_q3_K_q8_K_generic`: 8 i32 lanes of `scale * q8 * q3` per block, folded
/// into 8 f32 lanes with `d_w * d_a`, summed lane by lane at the end.
pub fn vec_dot(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut a = [0i8; QK_K];
    let mut sums = [0.0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        unpack_quants(xb, &mut a);
        let scales = unpack_scales(&xb.scales);
        let mut aux32 = [0i32; 8];
        for j in 0..QK_K / 16 {
            let scale = scales[j] as i32 - 32;
            for half in 0..2 {
                let base = 16 * j + 8 * half;
                for l in 0..8 {
                    let p = yb.qs[base + l] as i32 * a[base + l] as i32;
                    aux32[l] += scale * p;
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
