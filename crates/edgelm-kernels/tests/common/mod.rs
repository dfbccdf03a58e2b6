//! Shared helpers: random weight rows and activations for every format.
#![allow(dead_code)]

use edgelm_kernels::{f32_to_bf16, f32_to_f16, row_bytes, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Weight types with a `vec_dot`.
pub const WEIGHT_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Byte offsets of the f16 scale fields inside one block (ggml-common.h).
pub fn f16_offsets(ty: GgmlType) -> &'static [usize] {
    use GgmlType as T;
    match ty {
        T::Q4_0 | T::Q5_0 | T::Q8_0 => &[0],
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => &[0, 2],
        T::Q2_K => &[80, 82],
        T::Q3_K => &[108],
        T::Q6_K => &[208],
        _ => &[],
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Random f32 values, magnitudes around `scale`; `edge` adds an all-zero block of 32, a block
/// at ±scale exactly, and a few huge/tiny values.
pub fn random_f32(r: &mut StdRng, n: usize, scale: f32, edge: bool) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0f32..1.0) * scale).collect();
    if edge && n >= 96 {
        x[..32].fill(0.0);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = if i % 2 == 0 { scale } else { -scale };
        }
        x[64] = scale * 100.0;
        x[65] = scale * 1e-6;
        x[66] = -0.0;
    }
    x
}

/// One random weight row of `n` elements of `ty`: random quant bytes, f16 scale fields drawn
/// around `scale` (the first block's scales zero when `edge`, the second block's quants all
/// ones bits).
pub fn random_row(r: &mut StdRng, ty: GgmlType, n: usize, scale: f32, edge: bool) -> Vec<u8> {
    let bytes = row_bytes(ty, n).expect("whole blocks");
    match ty {
        GgmlType::F32 => random_f32(r, n, scale, edge)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlType::F16 => random_f32(r, n, scale, edge)
            .iter()
            .flat_map(|v| f32_to_f16(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => random_f32(r, n, scale, edge)
            .iter()
            .flat_map(|v| f32_to_bf16(*v).to_le_bytes())
            .collect(),
        _ => {
            let ts = ty.type_size();
            let mut w: Vec<u8> = (0..bytes).map(|_| r.gen()).collect();
            for (bi, block) in w.chunks_exact_mut(ts).enumerate() {
                if edge && bi == 1 {
                    block.fill(0xFF);
                }
                for &off in f16_offsets(ty) {
                    let v = if edge && bi == 0 {
                        0.0
                    } else {
                        r.gen_range(-1.0f32..1.0) * scale
                    };
                    block[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
                }
            }
            w
        }
    }
}
