//! Activation quantization to Q8_0, Q8_1 and Q8_K with NEON, byte-identical to the reference
//! ([`crate::quant::q8_0::quantize_row`], [`crate::quant::q8_1::quantize_row`]: llama.cpp's x86
//! arithmetic, `id = 127 / amax`, ties to even; [`crate::quant::q8_k::quantize_row`]: ggml's
//! `quantize_row_q8_K_ref`), so the quantized activations — and with them the logits — are the
//! same on both architectures. (llama.cpp's own NEON Q8_0 quantizer uses `id = 1 / d`; we keep
//! one definition for every machine.)
//!
//! Per 32 values: `|x|` maximum with `FMAXNM` (ignores NaN, as `f32::max`), the products
//! `x * id` rounded by `FCVTNS` (nearest, ties to even, saturating; NaN to 0) and narrowed with
//! saturation — for every input what the reference's round-then-clamp gives.

use std::arch::aarch64::*;

use crate::quant::{blocks_mut, to_f16le, BlockQ8K, BlockQ8_0, BlockQ8_1, QK_K};

/// The 32 values of a block scaled by 127 / amax and rounded, with the block's `d` and the sum
/// of the unclamped integers (what Q8_1's `s` is made of).
#[inline]
#[target_feature(enable = "neon")]
fn block(x: &[f32]) -> ([i8; 32], f32, i32) {
    assert_eq!(x.len(), 32);
    // SAFETY: 32 readable f32 values (checked), eight unaligned 4-lane loads.
    let v: [float32x4_t; 8] = std::array::from_fn(|k| unsafe { vld1q_f32(x.as_ptr().add(4 * k)) });
    let mut m = vabsq_f32(v[0]);
    for vk in &v[1..] {
        m = vmaxnmq_f32(m, vabsq_f32(*vk));
    }
    let amax = vmaxnmvq_f32(m).max(0.0);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let i: [int32x4_t; 8] = std::array::from_fn(|k| vcvtnq_s32_f32(vmulq_n_f32(v[k], id)));
    let mut s = vaddq_s32(i[0], i[1]);
    for ik in &i[2..] {
        s = vaddq_s32(s, *ik);
    }
    let sum = vaddvq_s32(s);
    let mut q = [0i8; 32];
    for h in 0..2 {
        let i16s = [
            vcombine_s16(vqmovn_s32(i[4 * h]), vqmovn_s32(i[4 * h + 1])),
            vcombine_s16(vqmovn_s32(i[4 * h + 2]), vqmovn_s32(i[4 * h + 3])),
        ];
        let i8s = vcombine_s8(vqmovn_s16(i16s[0]), vqmovn_s16(i16s[1]));
        // SAFETY: 16 writable bytes at 16 * h of a 32-byte array.
        unsafe { vst1q_s8(q.as_mut_ptr().add(16 * h), i8s) };
    }
    (q, d, sum)
}

/// Table entry: f32 row to Q8_0 blocks (`dst` holds `x.len() / 32` blocks).
pub(super) fn quantize_q8_0(x: &[f32], dst: &mut [u8]) {
    let y: &mut [BlockQ8_0] = blocks_mut(dst);
    for (b, x) in y.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: NEON is part of every aarch64 target's baseline.
        let (q, d, _) = unsafe { block(x) };
        b.d = to_f16le(d);
        b.qs = q;
    }
}

/// Table entry: f32 row to Q8_1 blocks (`dst` holds `x.len() / 32` blocks).
pub(super) fn quantize_q8_1(x: &[f32], dst: &mut [u8]) {
    let y: &mut [BlockQ8_1] = blocks_mut(dst);
    for (b, x) in y.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: as above.
        let (q, d, sum) = unsafe { block(x) };
        b.d = to_f16le(d);
        b.s = to_f16le(d * sum as f32);
        b.qs = q;
    }
}

/// One Q8_K super-block, as the reference: the signed value of largest magnitude (the first
/// one; NaN never wins), `iscale = -127 / max`, `q = clamp(nearest_int(iscale * x))` with ggml's
/// `nearest_int` bit trick done lane-wise (so non-finite products round exactly as there),
/// `bsums` of the clamped quants, `d = 1 / iscale`.
#[inline]
#[target_feature(enable = "neon")]
fn block_q8_k(x: &[f32], b: &mut BlockQ8K) {
    assert_eq!(x.len(), QK_K);
    // SAFETY: 256 readable f32 values (checked), 64 unaligned 4-lane loads.
    let v: [float32x4_t; 64] = std::array::from_fn(|k| unsafe { vld1q_f32(x.as_ptr().add(4 * k)) });
    let mut m = vabsq_f32(v[0]);
    for vk in &v[1..] {
        m = vmaxnmq_f32(m, vabsq_f32(*vk));
    }
    let amax = vmaxnmvq_f32(m);
    // `!(amax > 0)`: all zero, or all NaN (which the reference's `ax > amax` also skips).
    let Some(&max) = x.iter().find(|v| amax > 0.0 && v.abs() == amax) else {
        b.d = 0.0f32.to_le_bytes();
        b.qs = [0; QK_K];
        b.bsums = [[0; 2]; QK_K / 16];
        return;
    };
    let iscale = -127.0 / max;
    let magic = vdupq_n_f32(12_582_912.0);
    let mantissa = vdupq_n_s32(0x007f_ffff);
    let offset = vdupq_n_s32(0x0040_0000);
    for g in 0..QK_K / 16 {
        let q: [int32x4_t; 4] = std::array::from_fn(|k| {
            let val = vaddq_f32(vmulq_n_f32(v[4 * g + k], iscale), magic);
            let i = vsubq_s32(vandq_s32(vreinterpretq_s32_f32(val), mantissa), offset);
            vmaxq_s32(vminq_s32(i, vdupq_n_s32(127)), vdupq_n_s32(-128))
        });
        let sum = vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
        b.bsums[g] = (sum as i16).to_le_bytes();
        let lo = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
        let hi = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
        // SAFETY: 16 writable bytes at 16 * g of the 256-byte array.
        unsafe {
            vst1q_s8(
                b.qs.as_mut_ptr().add(16 * g),
                vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)),
            )
        };
    }
    b.d = (1.0 / iscale).to_le_bytes();
}

/// Table entry: f32 row to Q8_K blocks (`dst` holds `x.len() / 256` blocks).
pub(super) fn quantize_q8_k(x: &[f32], dst: &mut [u8]) {
    let y: &mut [BlockQ8K] = blocks_mut(dst);
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        // SAFETY: NEON is part of every aarch64 target's baseline.
        unsafe { block_q8_k(x, b) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;
    use crate::{row_bytes, GgmlType, Kernels};

    /// Rows of 1 to 20 blocks: random values of several magnitudes, all-zero blocks, exact
    /// ties (`x * id` halfway between integers), a block holding ±0 and subnormals, one
    /// whose maximum is subnormal (127 / amax overflows to infinity) and, for Q8_0, NaN and
    /// infinities: byte-identical to the reference.
    #[test]
    fn neon_activation_quantizers_match_reference() {
        let scalar = Kernels::scalar();
        let mut s = 5u64;
        for case in 0..200usize {
            let n = 32 * (1 + case % 20);
            let scale = [1e-3f32, 1.0, 3.0, 1e4][case % 4];
            let mut x: Vec<f32> = (0..n)
                .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * scale)
                .collect();
            match case % 7 {
                0 => x[..32].fill(0.0),
                1 => {
                    // amax = 127: x * id = x, and k + 0.5 rounds to the even neighbour.
                    x[0] = 127.0;
                    for (i, v) in x[1..32].iter_mut().enumerate() {
                        *v = i as f32 - 15.5;
                    }
                }
                _ => {}
            }
            for act_ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
                let mut xs = x.clone();
                // Only for Q8_0: the reference's Q8_1 sum of saturated integers would
                // overflow (a debug-build panic in the reference, not a kernel difference).
                if act_ty == GgmlType::Q8_0 && case % 7 == 2 {
                    for (i, v) in xs[..32].iter_mut().enumerate() {
                        *v = if i % 2 == 0 {
                            -0.0
                        } else {
                            f32::from_bits(i as u32)
                        };
                    }
                }
                if act_ty == GgmlType::Q8_0 && case % 7 == 3 {
                    xs[5] = f32::NAN;
                    xs[9] = f32::INFINITY;
                    xs[n - 1] = f32::NEG_INFINITY;
                }
                let rb = row_bytes(act_ty, n).expect("bytes");
                let (mut want, mut got) = (vec![0u8; rb], vec![0u8; rb]);
                scalar
                    .quantize_activation(act_ty, &xs, &mut want)
                    .expect("quantize");
                match act_ty {
                    GgmlType::Q8_0 => quantize_q8_0(&xs, &mut got),
                    _ => quantize_q8_1(&xs, &mut got),
                }
                assert_eq!(got, want, "{act_ty} case {case}");
            }
        }
    }

    /// Q8_K rows of 1 to 4 super-blocks: random values, an all-zero block, an all-NaN block,
    /// ties of the largest magnitude with both signs (the first wins), a subnormal maximum
    /// (`-127 / max` overflows), infinities and NaN: byte-identical to the reference.
    #[test]
    fn neon_q8_k_quantizer_matches_reference() {
        let scalar = Kernels::scalar();
        let mut s = 9u64;
        for case in 0..60usize {
            let n = 256 * (1 + case % 4);
            let mut x: Vec<f32> = (0..n)
                .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 6.0)
                .collect();
            let b = &mut x[..256];
            match case % 8 {
                0 => b.fill(0.0),
                1 => b.fill(f32::NAN),
                2 => {
                    b[7] = -5.0;
                    b[100] = 5.0;
                }
                3 => {
                    b[3] = 5.0;
                    b[9] = -5.0;
                }
                4 => {
                    for (i, v) in b.iter_mut().enumerate() {
                        *v = f32::from_bits(i as u32 % 7) * if i % 2 == 0 { 1.0 } else { -1.0 };
                    }
                }
                5 => {
                    b[1] = f32::INFINITY;
                    b[2] = f32::NAN;
                }
                6 => {
                    b[0] = f32::NAN;
                    b[200] = -f32::INFINITY;
                }
                _ => {}
            }
            let rb = row_bytes(GgmlType::Q8_K, n).expect("bytes");
            let (mut want, mut got) = (vec![0u8; rb], vec![0u8; rb]);
            scalar
                .quantize_activation(GgmlType::Q8_K, &x, &mut want)
                .expect("quantize");
            quantize_q8_k(&x, &mut got);
            assert_eq!(got, want, "case {case}");
        }
    }
}
