//! Test-only: the f32 arithmetic of the SIMD dot products (ggml's AVX2 kernels, which
//! `arch::x86_64` reproduces and `arch::aarch64` reproduces with NEON) written out in scalar
//! code. Per block, 8 lanes each hold an exact integer sum of 4 adjacent products (times the
//! sub-block scale, for K-quants); the lanes are accumulated with one fused multiply-add each
//! (`acc[l] = fma(d, lane[l], acc[l])`) and reduced at the end with `hsum_float_8`. Each SIMD
//! table is tested bit for bit against this model, which ties the x86-64 and aarch64 results
//! to each other.

use crate::quant::{
    scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1,
};

fn f16(b: [u8; 2]) -> f32 {
    crate::f16_to_f32(u16::from_le_bytes(b))
}

/// Lane `l` of 8: `sum(x[4l..4l+4] * y[4l..4l+4])` over a 32-element chunk.
fn lanes(x: &[i32], y: &[i8]) -> [i32; 8] {
    std::array::from_fn(|l| (0..4).map(|k| x[4 * l + k] * y[4 * l + k] as i32).sum())
}

fn fma8(acc: &mut [f32; 8], d: f32, s: [i32; 8]) {
    for (a, v) in acc.iter_mut().zip(s) {
        *a = d.mul_add(v as f32, *a);
    }
}

/// ggml's `hsum_float_8`: (hi + lo) halves, then (0+2, 1+3), then the two.
fn hsum8(acc: [f32; 8]) -> f32 {
    let s: [f32; 4] = std::array::from_fn(|i| acc[4 + i] + acc[i]);
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Signed-byte weights (already unpacked, 32 per block, with their scales) × Q8_0.
fn i8w(xq: &[[i32; 32]], xd: &[f32], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0.0f32; 8];
    for ((q, &dx), yb) in xq.iter().zip(xd).zip(y) {
        fma8(&mut acc, dx * f16(yb.d), lanes(q, &yb.qs));
    }
    hsum8(acc)
}

/// Q8_0 × Q8_0.
pub(crate) fn q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let xq: Vec<[i32; 32]> = x.iter().map(|b| b.qs.map(|q| q as i32)).collect();
    let xd: Vec<f32> = x.iter().map(|b| f16(b.d)).collect();
    i8w(&xq, &xd, y)
}

/// Q4_0 × Q8_0.
pub(crate) fn q4_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let xq: Vec<[i32; 32]> = x
        .iter()
        .map(|b| {
            std::array::from_fn(|e| {
                let nib = if e < 16 {
                    b.qs[e] & 0xF
                } else {
                    b.qs[e - 16] >> 4
                };
                nib as i32 - 8
            })
        })
        .collect();
    let xd: Vec<f32> = x.iter().map(|b| f16(b.d)).collect();
    i8w(&xq, &xd, y)
}

/// Q5_0 × Q8_0.
pub(crate) fn q5_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let xq: Vec<[i32; 32]> = x
        .iter()
        .map(|b| {
            let qh = u32::from_le_bytes(b.qh);
            std::array::from_fn(|e| {
                let nib = if e < 16 {
                    b.qs[e] & 0xF
                } else {
                    b.qs[e - 16] >> 4
                } as i32;
                nib + 16 * ((qh >> e) & 1) as i32 - 16
            })
        })
        .collect();
    let xd: Vec<f32> = x.iter().map(|b| f16(b.d)).collect();
    i8w(&xq, &xd, y)
}

/// Q4_1 × Q8_1: the min term is a scalar chain `summs = fma(m, s, summs)`, added at the end.
pub(crate) fn q4_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let q: [i32; 32] = std::array::from_fn(|e| {
            if e < 16 {
                (xb.qs[e] & 0xF) as i32
            } else {
                (xb.qs[e - 16] >> 4) as i32
            }
        });
        summs = f16(xb.m).mul_add(f16(yb.s), summs);
        fma8(&mut acc, f16(xb.d) * f16(yb.d), lanes(&q, &yb.qs));
    }
    hsum8(acc) + summs
}

fn bsum(y: &BlockQ8K, j: usize) -> i32 {
    i16::from_le_bytes(y.bsums[j]) as i32
}

/// Q4_K × Q8_K: 8 lanes over the 8 sub-blocks (scale × 4 adjacent products at offset `4l` of
/// each), and a 4-lane min accumulator over pairs of sub-blocks.
pub(crate) fn q4_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut acc_m = [0.0f32; 4];
    for (xb, yb) in x.iter().zip(y) {
        let yd = f32::from_le_bytes(yb.d);
        let d = yd * f16(xb.d);
        let dmin = -yd * f16(xb.dmin);
        let mut s = [0i32; 8];
        let mut mins = [0i32; 8];
        for (sb, min) in mins.iter_mut().enumerate() {
            let (sc, m) = scale_min_k4(sb, &xb.scales);
            *min = m as i32;
            let (j, high) = (sb / 2, sb % 2 == 1);
            let q: [i32; 32] = std::array::from_fn(|e| {
                let b = xb.qs[32 * j + e];
                if high {
                    (b >> 4) as i32
                } else {
                    (b & 0xF) as i32
                }
            });
            let l = lanes(&q, &yb.qs[32 * sb..32 * sb + 32]);
            for (sl, v) in s.iter_mut().zip(l) {
                *sl += sc as i32 * v;
            }
        }
        let q8s: [i32; 8] = std::array::from_fn(|k| bsum(yb, 2 * k) + bsum(yb, 2 * k + 1));
        for (m, a) in acc_m.iter_mut().enumerate() {
            let prod = mins[2 * m] * q8s[2 * m] + mins[2 * m + 1] * q8s[2 * m + 1];
            *a = dmin.mul_add(prod as f32, *a);
        }
        fma8(&mut acc, d, s);
    }
    hsum8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// Q6_K × Q8_K: unsigned quants (0..63), lanes as Q4_K's, minus
/// `32 * (bsum[2l] * scale[2l] + bsum[2l+1] * scale[2l+1])` in lane `l`.
pub(crate) fn q6_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let mut q = [0i8; 256];
        crate::quant::q6_k::unpack_quants(xb, &mut q);
        let d = f32::from_le_bytes(yb.d) * f16(xb.d);
        let sc = |g: usize| xb.scales[g] as i32;
        let mut s = [0i32; 8];
        for c in 0..8 {
            let qc: [i32; 32] = std::array::from_fn(|e| q[32 * c + e] as i32 + 32);
            let l = lanes(&qc, &yb.qs[32 * c..32 * c + 32]);
            for (k, (sl, v)) in s.iter_mut().zip(l).enumerate() {
                *sl += sc(2 * c + k / 4) * v;
            }
        }
        for (l, sl) in s.iter_mut().enumerate() {
            *sl -= 32 * (bsum(yb, 2 * l) * sc(2 * l) + bsum(yb, 2 * l + 1) * sc(2 * l + 1));
        }
        fma8(&mut acc, d, s);
    }
    hsum8(acc)
}

/// Random rows for the model tests: weight bytes with sane f16 scale fields (and some edge
/// blocks), activations quantized by the reference.
#[cfg(test)]
pub(crate) mod inputs {
    use crate::testutil::lcg;
    use crate::{row_bytes, GgmlType, Kernels};

    fn unit(s: &mut u64) -> f32 {
        lcg(s) as f32 / (1u64 << 31) as f32 - 0.5
    }

    /// `n` weights of `ty`: random bytes, the f16 scale fields set to small finite values;
    /// every 4th block's quant bytes all 0xFF and every 4th (offset) all 0x00.
    pub(crate) fn weights(ty: GgmlType, n: usize, s: &mut u64) -> Vec<u8> {
        let ts = ty.type_size();
        let mut w: Vec<u8> = (0..n / ty.block_size() * ts)
            .map(|_| lcg(s) as u8)
            .collect();
        let scale_offsets: &[usize] = match ty {
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K => &[0, 2],
            GgmlType::Q6_K => &[ts - 2],
            _ => &[0],
        };
        for (bi, b) in w.chunks_exact_mut(ts).enumerate() {
            let quants_from = scale_offsets.last().map_or(0, |&o| o + 2).min(ts - 2);
            match (bi + n) % 4 {
                0 if ty != GgmlType::Q6_K => b[quants_from..].fill(0xFF),
                1 if ty != GgmlType::Q6_K => b[quants_from..].fill(0x00),
                _ => {}
            }
            for &o in scale_offsets {
                let v = unit(s) * 0.05;
                b[o..o + 2].copy_from_slice(&crate::f32_to_f16(v).to_le_bytes());
            }
        }
        w
    }

    /// `n` activations quantized to `act_ty` by the reference; every 5th row has an all-zero
    /// block and large values.
    pub(crate) fn activations(act_ty: GgmlType, n: usize, s: &mut u64) -> Vec<u8> {
        let edge = lcg(s).is_multiple_of(5);
        let x: Vec<f32> = (0..n)
            .map(|i| match (edge, i) {
                (true, i) if i < 32 => 0.0,
                (true, i) if i % 7 == 0 => 1e4,
                _ => unit(s) * 4.0,
            })
            .collect();
        let mut a = vec![0u8; row_bytes(act_ty, n).expect("bytes")];
        Kernels::scalar()
            .quantize_activation(act_ty, &x, &mut a)
            .expect("quantize");
        a
    }
}

#[cfg(test)]
mod tests {
    use super::inputs::{activations, weights};
    use crate::quant::blocks;
    use crate::{GgmlType, Kernels};

    /// The model itself is a correct dot product: within the scalar reference's rounding.
    /// On x86-64 with AVX2 it also equals the table's kernels bit for bit, which — with the
    /// aarch64 tests against the same model — makes the two architectures' dots identical.
    #[test]
    fn lane_model_matches_reference_and_the_x86_table() {
        let scalar = Kernels::scalar();
        let best = Kernels::best();
        let avx2 = best.name().starts_with("avx2");
        let mut s = 1u64;
        for case in 0..60usize {
            for ty in [
                GgmlType::Q8_0,
                GgmlType::Q4_0,
                GgmlType::Q5_0,
                GgmlType::Q4_1,
                GgmlType::Q4_K,
                GgmlType::Q6_K,
            ] {
                let n = ty.block_size() * (1 + case % 7);
                let act_ty = scalar.vec_dot_type(ty).expect("type");
                let w = weights(ty, n, &mut s);
                let a = activations(act_ty, n, &mut s);
                let model = match ty {
                    GgmlType::Q8_0 => super::q8_0(blocks(&w), blocks(&a)),
                    GgmlType::Q4_0 => super::q4_0(blocks(&w), blocks(&a)),
                    GgmlType::Q5_0 => super::q5_0(blocks(&w), blocks(&a)),
                    GgmlType::Q4_1 => super::q4_1(blocks(&w), blocks(&a)),
                    GgmlType::Q4_K => super::q4_k(blocks(&w), blocks(&a)),
                    _ => super::q6_k(blocks(&w), blocks(&a)),
                };
                let want = scalar.vec_dot(ty, n, &w, &a).expect("dot");
                let mag: f32 = {
                    let mut wf = vec![0.0f32; n];
                    let mut af = vec![0.0f32; n];
                    scalar.dequantize_row(ty, &w, &mut wf).expect("deq");
                    scalar.dequantize_row(act_ty, &a, &mut af).expect("deq");
                    wf.iter().zip(&af).map(|(p, q)| (p * q).abs()).sum()
                };
                assert!(
                    (model - want).abs() <= 2e-3 * mag + 1e-30,
                    "{ty} case {case}: model {model} reference {want}"
                );
                if avx2 {
                    let got = best.vec_dot(ty, n, &w, &a).expect("dot");
                    assert_eq!(got.to_bits(), model.to_bits(), "{ty} case {case}: avx2");
                }
            }
        }
    }
}
