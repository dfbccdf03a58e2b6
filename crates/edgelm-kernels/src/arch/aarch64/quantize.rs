//! Activation quantization to Q8_0 and Q8_1 with NEON, byte-identical to the reference
//! ([`crate::quant::q8_0::quantize_row`], [`crate::quant::q8_1::quantize_row`]: llama.cpp's x86
//! arithmetic, `id = 127 / amax`, ties to even), so the quantized activations — and with them
//! the logits — are the same on both architectures. (llama.cpp's own NEON quantizer uses
//! `id = 1 / d`; we keep one definition for every machine.)
//!
//! Per 32 values: `|x|` maximum with `FMAXNM` (ignores NaN, as `f32::max`), the products
//! `x * id` rounded by `FCVTNS` (nearest, ties to even, saturating; NaN to 0) and narrowed with
//! saturation — for every input what the reference's round-then-clamp gives.

use std::arch::aarch64::*;

use crate::quant::{blocks_mut, to_f16le, BlockQ8_0, BlockQ8_1};

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
}
