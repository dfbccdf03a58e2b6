//! x86-64 kernels (AVX2 + FMA), installed into the table when the CPU has them.
//!
//! Each mirrors the arithmetic of ggml's AVX2 kernel in `ggml-cpu/arch/x86/quants.c` — the
//! code llama.cpp runs on this machine — so that our logits follow llama.cpp's: exact 32-bit
//! integer sums of 4 adjacent products in 8 lanes, `acc = fma(d_w * d_a, lane_sum, acc)` per
//! block, then `hsum_float_8`. (Checked in the disassembly of the reference build's
//! `libggml-cpu.so`: the Q4_1 min term is contracted to a scalar FMA, reproduced here.)

use std::arch::x86_64::*;

use half::f16;

use crate::dispatch::Kernels;
use crate::quant::{
    blocks, blocks_mut, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1,
};
use crate::GgmlType;

mod attn;
mod fdots;
mod kquants;
mod ktile;

/// Replaces the kernels this CPU can speed up and names the table.
pub(crate) fn install(k: &mut Kernels) {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return;
    }
    for row in k.rows.iter_mut() {
        match row.ty {
            GgmlType::Q8_0 => {
                row.vec_dot = Some(vec_dot_q8_0_q8_0);
                row.vec_dot4 = Some(vec_dot4_q8_0_q8_0);
                row.vec_dot2x4 = Some(vec_dot2x4_q8_0_q8_0);
                row.vec_dot_pre = Some(vec_dot_pre_q8_0);
                row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q8_0);
            }
            GgmlType::Q4_1 => {
                row.vec_dot = Some(vec_dot_q4_1_q8_1);
                row.vec_dot4 = Some(vec_dot4_q4_1_q8_1);
                row.vec_dot2x4 = Some(vec_dot2x4_q4_1_q8_1);
                row.vec_dot_pre = Some(vec_dot_pre_q4_1);
                row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q4_1);
            }
            GgmlType::Q4_0 => {
                row.vec_dot = Some(vec_dot_q4_0_q8_0);
                row.vec_dot2x4 = Some(vec_dot2x4_q4_0_q8_0);
                row.vec_dot_pre = Some(vec_dot_pre_q4_0);
                row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q4_0);
            }
            GgmlType::Q5_0 => {
                row.vec_dot = Some(vec_dot_q5_0_q8_0);
                row.vec_dot2x4 = Some(vec_dot2x4_q5_0_q8_0);
                row.vec_dot_pre = Some(vec_dot_pre_q5_0);
                row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q5_0);
            }
            GgmlType::Q4_K => {
                row.vec_dot = Some(vec_dot_q4_k_q8_k);
                row.vec_dot4 = Some(vec_dot4_q4_k_q8_k);
            }
            GgmlType::Q6_K => {
                row.vec_dot = Some(vec_dot_q6_k_q8_k);
                row.vec_dot4 = Some(vec_dot4_q6_k_q8_k);
            }
            GgmlType::F32 => {
                row.vec_dot = Some(fdots::vec_dot_f32);
                row.vec_dot4 = Some(fdots::vec_dot4_f32);
            }
            GgmlType::F16 => {
                row.vec_dot = Some(fdots::vec_dot_f16);
                row.vec_dot4 = Some(fdots::vec_dot4_f16);
            }
            GgmlType::BF16 => {
                row.vec_dot = Some(fdots::vec_dot_bf16);
                row.vec_dot4 = Some(fdots::vec_dot4_bf16);
            }
            _ => {}
        }
    }
    for row in k.rows.iter_mut() {
        match row.ty {
            GgmlType::Q8_0 => row.quantize = Some(quantize_q8_0_avx2),
            GgmlType::Q8_1 => row.quantize = Some(quantize_q8_1_avx2),
            GgmlType::Q8_K => row.quantize = Some(quantize_q8_k_avx2),
            _ => {}
        }
    }
    k.attn = attention_avx2;
    k.to_f16 = f32_to_f16_avx2;
    k.tiled = tiled_avx2;
    k.swiglu = swiglu_avx2;
    k.rope = rope_fma;
    k.attn_q8 = attn_q8_avx2;
    k.name = "avx2+fma+f16c";
    if vnni() {
        for row in k.rows.iter_mut() {
            match row.ty {
                GgmlType::Q8_0 => {
                    row.vec_dot = Some(vec_dot_q8_0_q8_0_vnni);
                    row.vec_dot4 = Some(vec_dot4_q8_0_q8_0_vnni);
                    row.vec_dot2x4 = Some(vec_dot2x4_q8_0_q8_0_vnni);
                    row.vec_dot4x4 = Some(vec_dot4x4_q8_0_q8_0_vnni);
                    row.vec_dot_pre = Some(vec_dot_pre_q8_0_vnni);
                    row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q8_0_vnni);
                }
                GgmlType::Q4_0 => {
                    row.vec_dot2x4 = Some(vec_dot2x4_q4_0_q8_0_vnni);
                    row.vec_dot4x4 = Some(vec_dot4x4_q4_0_q8_0_vnni);
                    row.to_q8_0 = Some(q4_0_to_q8_0_avx2);
                    row.vec_dot_pre = Some(vec_dot_pre_q4_0_vnni);
                    row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q4_0_vnni);
                }
                GgmlType::Q5_0 => {
                    row.vec_dot2x4 = Some(vec_dot2x4_q5_0_q8_0_vnni);
                    row.vec_dot4x4 = Some(vec_dot4x4_q5_0_q8_0_vnni);
                    row.to_q8_0 = Some(q5_0_to_q8_0_avx2);
                    row.vec_dot_pre = Some(vec_dot_pre_q5_0_vnni);
                    row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q5_0_vnni);
                }
                GgmlType::Q4_1 => {
                    row.vec_dot = Some(vec_dot_q4_1_q8_1_vnni);
                    row.vec_dot4 = Some(vec_dot4_q4_1_q8_1_vnni);
                    row.vec_dot2x4 = Some(vec_dot2x4_q4_1_q8_1_vnni);
                    row.vec_dot_pre = Some(vec_dot_pre_q4_1_vnni);
                    row.vec_dot_pre_rows = Some(vec_dot_pre_rows_q4_1_vnni);
                }
                _ => {}
            }
        }
        // K-quant prompt tiles over packed rows; `EDGELM_NO_PACKED` leaves them out (to
        // measure the 1 × 4 vector dots they replace in the same build).
        if std::env::var_os("EDGELM_NO_PACKED").is_none() {
            install_packed(k);
        }
        k.name = "avx2+fma+f16c+avx512vnni";
    } else if std::env::var_os("EDGELM_NO_PACKED").is_none() {
        install_packed_avx2(k);
    }
}

/// The AVX2 forms of the packed tiles, for CPUs without AVX-512 VNNI (16 vector registers:
/// the 16 accumulators spill, which still beats the scalar dots of Q2_K and Q3_K).
fn install_packed_avx2(k: &mut Kernels) {
    let tiles: [(
        GgmlType,
        usize,
        crate::dispatch::PackRows4Fn,
        crate::dispatch::PackedDot4x4Fn,
    ); 4] = [
        (
            GgmlType::Q4_K,
            ktile::Q4K_PACKED,
            ktile::pack4_q4_k,
            ktile::tile_q4_k_avx2,
        ),
        (
            GgmlType::Q6_K,
            ktile::Q6K_PACKED,
            ktile::pack4_q6_k,
            ktile::tile_q6_k_avx2,
        ),
        (
            GgmlType::Q2_K,
            ktile::Q2K_PACKED,
            ktile::pack4_q2_k,
            ktile::tile_q2_k_avx2,
        ),
        (
            GgmlType::Q3_K,
            ktile::Q3K_PACKED,
            ktile::pack4_q3_k,
            ktile::tile_q3_k_avx2,
        ),
    ];
    for (ty, block_bytes, pack, dot) in tiles {
        k.packed.push(crate::dispatch::PackedTile {
            ty,
            block_bytes,
            pack,
            dot,
        });
    }
}

/// The packed K-quant 4 × 4 tiles (`ktile`; AVX-512 VNNI and VL checked by the caller; Q5_K's
/// also needs VBMI).
fn install_packed(k: &mut Kernels) {
    k.packed.push(crate::dispatch::PackedTile {
        ty: GgmlType::Q4_K,
        block_bytes: ktile::Q4K_PACKED,
        pack: ktile::pack4_q4_k,
        dot: ktile::tile_q4_k,
    });
    k.packed.push(crate::dispatch::PackedTile {
        ty: GgmlType::Q6_K,
        block_bytes: ktile::Q6K_PACKED,
        pack: ktile::pack4_q6_k,
        dot: ktile::tile_q6_k,
    });
    k.packed.push(crate::dispatch::PackedTile {
        ty: GgmlType::Q2_K,
        block_bytes: ktile::Q2K_PACKED,
        pack: ktile::pack4_q2_k,
        dot: ktile::tile_q2_k,
    });
    k.packed.push(crate::dispatch::PackedTile {
        ty: GgmlType::Q3_K,
        block_bytes: ktile::Q3K_PACKED,
        pack: ktile::pack4_q3_k,
        dot: ktile::tile_q3_k,
    });
    if is_x86_feature_detected!("avx512vbmi") {
        k.packed.push(crate::dispatch::PackedTile {
            ty: GgmlType::Q5_K,
            block_bytes: ktile::Q5K_PACKED,
            pack: ktile::pack4_q5_k,
            dot: ktile::tile_q5_k,
        });
    }
}

/// ggml's AVX2 activation quantizer for one 32-value block, exactly as the scalar reference
/// (`quant::q8_0::quantize_row`) computes it: |x| maximum ignoring NaN lanes (`max(new, acc)`
/// returns `acc` for a NaN `new`), `d = amax / 127`, `id = 127 / amax`, `x * id` rounded to
/// nearest-even by the same `(x + 1.5·2^23) − 1.5·2^23`, converted to i32 with saturation (NaN
/// to 0), then the saturating packs. Returns the 32 quants as i32 lanes (for Q8_1's sum) packed into bytes, and `d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block_avx2(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    assert_eq!(x.len(), 32, "quantize_block: 32 values");
    // SAFETY: x holds 32 floats: four unaligned 256-bit loads.
    let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) });
    let sign = _mm256_set1_ps(-0.0);
    let mut amax = _mm256_setzero_ps();
    for vk in v {
        amax = _mm256_max_ps(_mm256_andnot_ps(sign, vk), amax);
    }
    let mut m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let magic = _mm256_set1_ps(12_582_912.0);
    let i: [__m256i; 4] = v.map(|vk| {
        let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(vk, id), magic), magic);
        // The reference's saturating `as i32`: NaN lanes to +0 first; `cvtt` gives i32::MIN
        // for every out-of-range value, which is right below and flipped to i32::MAX above
        // (0x8000_0000 ^ 0xFFFF_FFFF).
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        let big = _mm256_cmp_ps::<_CMP_GE_OQ>(r, _mm256_set1_ps(2_147_483_648.0));
        _mm256_xor_si256(_mm256_cvttps_epi32(r), _mm256_castps_si256(big))
    });
    let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let s128 = _mm_add_epi32(
        _mm256_extracti128_si256(sum, 1),
        _mm256_castsi256_si128(sum),
    );
    let s128 = _mm_add_epi32(s128, _mm_unpackhi_epi64(s128, s128));
    let s128 = _mm_add_epi32(s128, _mm_shuffle_epi32::<1>(s128));
    let p01 = _mm256_packs_epi32(i[0], i[1]);
    let p23 = _mm256_packs_epi32(i[2], i[3]);
    let p = _mm256_packs_epi16(p01, p23);
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: qs is 32 bytes: one unaligned 256-bit store.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
    (d, _mm_cvtsi128_si32(s128))
}

/// Table entry: Q8_0 activation quantizer (AVX2, FMA and F16C detected by `install`).
fn quantize_q8_0_avx2(x: &[f32], dst: &mut [u8]) {
    let y: &mut [BlockQ8_0] = blocks_mut(dst);
    assert_eq!(x.len(), y.len() * 32, "quantize_q8_0: lengths");
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: `install` put this function in the table only after detecting AVX2/F16C.
        let (d, _) = unsafe { quantize_block_avx2(xb, &mut b.qs) };
        b.d = crate::f32_to_f16(d).to_le_bytes();
    }
}

/// Table entry: Q8_1 activation quantizer (AVX2, FMA and F16C detected by `install`):
/// `s = f16(d * sum(q))` over the quants before saturation, as the reference.
fn quantize_q8_1_avx2(x: &[f32], dst: &mut [u8]) {
    let y: &mut [BlockQ8_1] = blocks_mut(dst);
    assert_eq!(x.len(), y.len() * 32, "quantize_q8_1: lengths");
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: as above.
        let (d, sum) = unsafe { quantize_block_avx2(xb, &mut b.qs) };
        b.d = crate::f32_to_f16(d).to_le_bytes();
        b.s = crate::f32_to_f16(d * sum as f32).to_le_bytes();
    }
}

/// Table entry: Q8_K activation quantizer (AVX2 detected by `install`), byte for byte the
/// scalar `quant::q8_k::quantize_row`.
fn quantize_q8_k_avx2(x: &[f32], dst: &mut [u8]) {
    let y: &mut [BlockQ8K] = blocks_mut(dst);
    assert_eq!(x.len(), y.len() * 256, "quantize_q8_k: lengths");
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(256)) {
        // SAFETY: `install` put this function in the table only after detecting AVX2.
        unsafe { quantize_q8_k_block(xb, b) };
    }
}

/// One Q8_K block as the scalar reference computes it: the value of largest magnitude (the
/// first one, NaN skipped: `max(new, acc)` keeps `acc` for a NaN `new`, and NaN never compares
/// equal), `iscale = -127 / max`, each quant `nearest_int(iscale * x)` by the same 1.5·2^23 bit
/// trick, clamped to [-128, 127], the 16-quant sums, `d = 1 / iscale`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_k_block(x: &[f32], b: &mut BlockQ8K) {
    assert_eq!(x.len(), 256, "quantize_q8_k: 256 values");
    let load = |k: usize| {
        // SAFETY: k < 32, so the 8 floats from 8k lie inside x's 256.
        unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) }
    };
    let sign = _mm256_set1_ps(-0.0);
    let mut acc = _mm256_setzero_ps();
    for k in 0..32 {
        acc = _mm256_max_ps(_mm256_andnot_ps(sign, load(k)), acc);
    }
    let mut m4 = _mm_max_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    if amax == 0.0 {
        b.d = 0.0f32.to_le_bytes();
        b.qs = [0; 256];
        b.bsums = [[0; 2]; 16];
        return;
    }
    let am = _mm256_set1_ps(amax);
    let mut max = 0.0f32;
    for k in 0..32 {
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            _mm256_andnot_ps(sign, load(k)),
            am,
        ));
        if hit != 0 {
            max = x[8 * k + hit.trailing_zeros() as usize];
            break;
        }
    }
    let iscale = -127.0 / max;
    let vs = _mm256_set1_ps(iscale);
    let magic = _mm256_set1_ps(12_582_912.0);
    let (mant, half) = (
        _mm256_set1_epi32(0x007f_ffff),
        _mm256_set1_epi32(0x0040_0000),
    );
    let (lo, hi) = (_mm256_set1_epi32(-128), _mm256_set1_epi32(127));
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for g in 0..8 {
        let q: [__m256i; 4] = std::array::from_fn(|j| {
            let val = _mm256_add_ps(_mm256_mul_ps(load(4 * g + j), vs), magic);
            let i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(val), mant), half);
            _mm256_min_epi32(_mm256_max_epi32(i, lo), hi)
        });
        // Sums of quants 16 at a time (exact in i32; the reference stores them as i16).
        for h in 0..2 {
            let s = _mm256_add_epi32(q[2 * h], q[2 * h + 1]);
            let s = _mm_add_epi32(_mm256_extracti128_si256(s, 1), _mm256_castsi256_si128(s));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
            b.bsums[2 * g + h] = (_mm_cvtsi128_si32(s) as i16).to_le_bytes();
        }
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, perm);
        // SAFETY: 32 bytes from 32g lie inside qs's 256: one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(b.qs.as_mut_ptr().add(32 * g).cast(), p) };
    }
    b.d = (1.0 / iscale).to_le_bytes();
}

/// AVX-512 VNNI on 256-bit vectors (with AVX2, FMA and F16C, checked by the caller), unless
/// `EDGELM_NO_VNNI` is set (to measure or test the plain AVX2 path on the same machine).
fn vnni() -> bool {
    is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && std::env::var_os("EDGELM_NO_VNNI").is_none()
}

/// Table entry: Q5_0 × Q8_0 (AVX2, FMA and F16C detected by `install`).
fn vec_dot_q5_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ5_0], &[BlockQ8_0]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q5_0_q8_0: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { kquants::q5_0_q8_0(x, y) }
}

/// Table entry: Q4_K × Q8_K (AVX2, FMA and F16C detected by `install`).
fn vec_dot_q4_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ4K], &[BlockQ8K]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q4_k_q8_k: block counts differ");
    // SAFETY: as above.
    unsafe { kquants::q4_k_q8_k(x, y) }
}

/// Table entry: Q4_K × four Q8_K activation rows, each bit-identical to the single-row kernel
/// (AVX2, FMA and F16C detected by `install`).
fn vec_dot4_q4_k_q8_k(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let x: &[BlockQ4K] = blocks(w);
    let ys = blocks4::<BlockQ8K>(a, x.len());
    // SAFETY: as above.
    unsafe { kquants::q4_k_q8_k_xn::<4>(x, ys) }
}

/// Table entry: Q6_K × four Q8_K activation rows, each bit-identical to the single-row kernel
/// (AVX2, FMA and F16C detected by `install`).
fn vec_dot4_q6_k_q8_k(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let x: &[BlockQ6K] = blocks(w);
    let ys = blocks4::<BlockQ8K>(a, x.len());
    // SAFETY: as above.
    unsafe { kquants::q6_k_q8_k_xn::<4>(x, ys) }
}

/// Table entry: Q6_K × Q8_K (AVX2, FMA and F16C detected by `install`).
fn vec_dot_q6_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ6K], &[BlockQ8K]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q6_k_q8_k: block counts differ");
    // SAFETY: as above.
    unsafe { kquants::q6_k_q8_k(x, y) }
}

/// Table entry: flash attention (AVX2, FMA and F16C detected by `install`).
fn attention_avx2(
    out: &mut [f32],
    acc: &mut [f16],
    q: &[f16],
    k: &[f16],
    v: &[f16],
    n_kv: usize,
    scale: f32,
) {
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { attn::attention_one_query_f16(out, acc, q, k, v, n_kv, scale) }
}

/// Table entry: attention over a Q8_0 cache, the reference body compiled with AVX2 + FMA.
#[allow(clippy::too_many_arguments)]
fn attn_q8_avx2(
    table: &Kernels,
    out: &mut [f32],
    acc: &mut [f32],
    q: &[u8],
    k: &[u8],
    v: &[u8],
    n_kv: usize,
    d: usize,
    scale: f32,
) {
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { attn_q8_avx2_inner(table, out, acc, q, k, v, n_kv, d, scale) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attn_q8_avx2_inner(
    table: &Kernels,
    out: &mut [f32],
    acc: &mut [f32],
    q: &[u8],
    k: &[u8],
    v: &[u8],
    n_kv: usize,
    d: usize,
    scale: f32,
) {
    crate::attn_q8::attention_one_query_q8_0(table, out, acc, q, k, v, n_kv, d, scale)
}

/// Table entry: SwiGLU, the reference body compiled with AVX2 + FMA.
fn swiglu_avx2(y: &mut [f32], gate: &[f32], up: &[f32]) {
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { swiglu_avx2_inner(y, gate, up) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn swiglu_avx2_inner(y: &mut [f32], gate: &[f32], up: &[f32]) {
    crate::ops::swiglu_forward(y, gate, up)
}

/// Table entry: tiled flash attention, the reference body compiled with AVX2 + FMA.
#[allow(clippy::too_many_arguments)]
fn tiled_avx2(
    out: &mut [f32],
    q: &[f32],
    k: &[f16],
    v: &[f16],
    first_visible: usize,
    d: usize,
    scale: f32,
    scratch: &mut crate::tiled::TiledScratch,
) {
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { tiled_avx2_inner(out, q, k, v, first_visible, d, scale, scratch) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiled_avx2_inner(
    out: &mut [f32],
    q: &[f32],
    k: &[f16],
    v: &[f16],
    first_visible: usize,
    d: usize,
    scale: f32,
    scratch: &mut crate::tiled::TiledScratch,
) {
    crate::tiled::attention_tiled_f16(out, q, k, v, first_visible, d, scale, scratch)
}

/// Table entry: f32 → F16 row (AVX2, FMA and F16C detected by `install`).
fn f32_to_f16_avx2(dst: &mut [f16], src: &[f32]) {
    // SAFETY: as above.
    unsafe { attn::f32_to_f16_row(dst, src) }
}

/// Table entry: Q8_0 weights × Q8_0 activations (AVX2, FMA and F16C detected by `install`).
fn vec_dot_q8_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ8_0], &[BlockQ8_0]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q8_0_q8_0: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q8_0_q8_0_avx2(x, y) }
}

/// Table entry: Q4_1 weights × Q8_1 activations (AVX2, FMA and F16C detected by `install`).
fn vec_dot_q4_1_q8_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ4_1], &[BlockQ8_1]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q4_1_q8_1: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q4_1_q8_1_avx2(x, y) }
}

/// Table entry: Q8_0 × Q8_0 with AVX-512 VNNI (detected by `install`).
fn vec_dot_q8_0_q8_0_vnni(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ8_0], &[BlockQ8_0]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q8_0_q8_0: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q8_0_q8_0_vnni(x, y) }
}

/// Table entry: Q4_1 × Q8_1 with AVX-512 VNNI (detected by `install`).
fn vec_dot_q4_1_q8_1_vnni(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ4_1], &[BlockQ8_1]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q4_1_q8_1: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q4_1_q8_1_vnni(x, y) }
}

/// An F16 field as f32 with F16C, inline (bit-identical to the software conversion).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16c(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

/// Two adjacent F16 fields (4 little-endian bytes) as f32 lanes 0 and 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16c_pair(b: [u8; 4]) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(b)))
}

/// ggml's `hsum_float_8`: (hi + lo) halves, then (0+2, 1+3), then the two.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_float_8(x: __m256) -> f32 {
    let mut res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// 8 lanes of `sum(ax[4l..4l+4] * sy[4l..4l+4])` as f32 (ax unsigned, sy signed bytes; the
/// pair sums of `maddubs` cannot saturate for |ax| <= 128 and |sy| <= 127).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
}

/// The same 8 lane sums with one VNNI instruction (exact: no intermediate saturation).
#[inline]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
fn mul_sum_us8_pairs_float_vnni(ax: __m256i, sy: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy))
}

/// Q8_0 × Q8_0 body, parameterised by the lane-sum function.
///
/// Like ggml, it takes |x| and moves x's sign onto y; this is exact unless an activation
/// quant is -128, which our activation quantizer never produces (|q| <= 127).
macro_rules! q8_0_q8_0_body {
    ($x:expr, $y:expr, $mul_sum:ident) => {{
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in $x.iter().zip($y) {
            let d = _mm256_set1_ps(f16c(xb.d) * f16c(yb.d));
            // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
            let qx = unsafe { _mm256_loadu_si256(xb.qs.as_ptr().cast()) };
            // SAFETY: as above.
            let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
            let ax = _mm256_sign_epi8(qx, qx);
            let sy = _mm256_sign_epi8(qy, qx);
            let q = $mul_sum(ax, sy);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }};
}

/// Signed-byte weights (Q8_0, Q5_0) × Q8_0 with the activation's block scales given in f32
/// (`ad[ib]` equals the block's f16 `d` converted): the same arithmetic as the single-row
/// kernels, one conversion less per block.
macro_rules! i8w_pre_body {
    ($x:expr, $y:expr, $ad:expr, $unpack:ident, $mul_sum:ident) => {{
        let mut acc = _mm256_setzero_ps();
        for ((xb, yb), &dy) in $x.iter().zip($y).zip($ad) {
            let (qx, dx) = $unpack(xb);
            let d = _mm256_set1_ps(dx * dy);
            // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
            let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
            let ax = _mm256_sign_epi8(qx, qx);
            let sy = _mm256_sign_epi8(qy, qx);
            acc = _mm256_fmadd_ps(d, $mul_sum(ax, sy), acc);
        }
        hsum_float_8(acc)
    }};
}

macro_rules! i8w_pre_entry {
    ($name:ident, $inner:ident, $rows:ident, $inner_rows:ident, $wb:ty, $unpack:ident, $mul_sum:ident, $features:literal) => {
        /// Table entry: `out.len()` consecutive weight rows × one Q8_0 activation row with
        /// prepared scales, each result that of the single-row form (features detected by
        /// `install`).
        fn $rows(_n: usize, w: &[u8], a: &[u8], ad: &[f32], out: &mut [f32]) {
            let (x, y): (&[$wb], &[BlockQ8_0]) = (blocks(w), blocks(a));
            assert!(
                y.len() == ad.len() && x.len() == y.len() * out.len(),
                "vec_dot_pre_rows: lengths differ"
            );
            if y.is_empty() {
                out.fill(0.0);
                return;
            }
            // SAFETY: as for the single-row entry.
            unsafe { $inner_rows(x, y, ad, out) }
        }

        /// # Safety
        /// The CPU must support the enabled features; `x` holds `out.len()` rows of `y.len()`
        /// (non-zero) blocks, `ad` as long as `y`.
        #[target_feature(enable = $features)]
        unsafe fn $inner_rows(x: &[$wb], y: &[BlockQ8_0], ad: &[f32], out: &mut [f32]) {
            let n = y.len();
            for (r, (o, xr)) in out.iter_mut().zip(x.chunks_exact(n)).enumerate() {
                crate::arch::prefetch_row_ahead(x, r, n);
                *o = i8w_pre_body!(xr, y, ad, $unpack, $mul_sum);
            }
        }

        /// Table entry: weights × Q8_0 with prepared activation scales (features detected by
        /// `install`).
        fn $name(_n: usize, w: &[u8], a: &[u8], ad: &[f32]) -> f32 {
            let (x, y): (&[$wb], &[BlockQ8_0]) = (blocks(w), blocks(a));
            assert!(
                x.len() == y.len() && y.len() == ad.len(),
                "vec_dot_pre: lengths differ"
            );
            // SAFETY: `install` put this function in the table only after detecting the
            // features `$inner` is compiled for.
            unsafe { $inner(x, y, ad) }
        }

        /// # Safety
        /// The CPU must support the enabled features; `x`, `y`, `ad` of equal length.
        #[target_feature(enable = $features)]
        unsafe fn $inner(x: &[$wb], y: &[BlockQ8_0], ad: &[f32]) -> f32 {
            i8w_pre_body!(x, y, ad, $unpack, $mul_sum)
        }
    };
}

i8w_pre_entry!(
    vec_dot_pre_q8_0,
    q8_0_pre_avx2,
    vec_dot_pre_rows_q8_0,
    q8_0_pre_rows_avx2,
    BlockQ8_0,
    unpack_q8_0,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
i8w_pre_entry!(
    vec_dot_pre_q8_0_vnni,
    q8_0_pre_vnni,
    vec_dot_pre_rows_q8_0_vnni,
    q8_0_pre_rows_vnni,
    BlockQ8_0,
    unpack_q8_0,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);
i8w_pre_entry!(
    vec_dot_pre_q5_0,
    q5_0_pre_avx2,
    vec_dot_pre_rows_q5_0,
    q5_0_pre_rows_avx2,
    BlockQ5_0,
    unpack_q5_0,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
i8w_pre_entry!(
    vec_dot_pre_q5_0_vnni,
    q5_0_pre_vnni,
    vec_dot_pre_rows_q5_0_vnni,
    q5_0_pre_rows_vnni,
    BlockQ5_0,
    unpack_q5_0,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);

i8w_pre_entry!(
    vec_dot_pre_q4_0,
    q4_0_pre_avx2,
    vec_dot_pre_rows_q4_0,
    q4_0_pre_rows_avx2,
    BlockQ4_0,
    unpack_q4_0,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
i8w_pre_entry!(
    vec_dot_pre_q4_0_vnni,
    q4_0_pre_vnni,
    vec_dot_pre_rows_q4_0_vnni,
    q4_0_pre_rows_vnni,
    BlockQ4_0,
    unpack_q4_0,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);

/// Table entry: Q4_0 × Q8_0 as ggml's AVX2 kernel computes it (nibbles − 8 as signed bytes,
/// `d = d_w · d_a` per block, one FMA per block into 8 lanes, `hsum_float_8`); AVX2, FMA and
/// F16C detected by `install`.
fn vec_dot_q4_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y): (&[BlockQ4_0], &[BlockQ8_0]) = (blocks(w), blocks(a));
    assert_eq!(x.len(), y.len(), "vec_dot_q4_0_q8_0: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting AVX2/FMA/F16C.
    unsafe { q4_0_q8_0_avx2(x, y) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_q8_0_avx2(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let (qx, dx) = unpack_q4_0(xb);
        let d = _mm256_set1_ps(dx * f16c(yb.d));
        // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
        let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
        let ax = _mm256_sign_epi8(qx, qx);
        let sy = _mm256_sign_epi8(qy, qx);
        acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(ax, sy), acc);
    }
    hsum_float_8(acc)
}

/// Q4_1 × Q8_1 body, parameterised by the lane-sum function. The two f16 fields of each block
/// (`d`, `m` of the weight; `d`, `s` of the activation) are adjacent, so one conversion turns
/// each pair into two f32 lanes; lane 0 gives `d_w · d_a`, and a 4-lane FMA keeps ggml's scalar
/// `summs = fma(m, s, summs)` chain in lane 1 (lane 0 of that accumulator is unused).
macro_rules! q4_1_q8_1_body {
    ($x:expr, $y:expr, $mul_sum:ident) => {
        q4_1_q8_1_loop!(
            $x.iter().zip($y).map(|(xb, yb)| (xb, yb, ())),
            (xb, yb, _),
            f16c_pair([yb.d[0], yb.d[1], yb.s[0], yb.s[1]]),
            $mul_sum
        )
    };
}

/// [`q4_1_q8_1_body`] with the activation's `d` and `s` given as f32 pairs (`ads`, converted
/// once per matmul for every weight row): lanes 0, 1 = d, s and 2, 3 = 0, as the F16
/// conversion of the pair gives, so the same lanes, roundings and order.
macro_rules! q4_1_q8_1_pre_body {
    ($x:expr, $y:expr, $ads:expr, $mul_sum:ident) => {
        q4_1_q8_1_loop!(
            $x.iter()
                .zip($y)
                .zip($ads.chunks_exact(2))
                .map(|((xb, yb), ds)| (xb, yb, ds)),
            (xb, yb, ds),
            _mm_setr_ps(ds[0], ds[1], 0.0, 0.0),
            $mul_sum
        )
    };
}

/// The Q4_1 × Q8_1 loop both bodies share: `$yds` gives the activation's (d, s) lanes for the
/// block bound to `$yb` (and `$extra`).
macro_rules! q4_1_q8_1_loop {
    ($blocks:expr, ($xb:ident, $yb:ident, $extra:pat), $yds:expr, $mul_sum:ident) => {{
        let mut acc = _mm256_setzero_ps();
        let mut summs = _mm_setzero_ps();
        let low_mask = _mm256_set1_epi8(0x0F);
        for ($xb, $yb, $extra) in $blocks {
            let xdm = f16c_pair([$xb.d[0], $xb.d[1], $xb.m[0], $xb.m[1]]);
            let yds = $yds;
            summs = _mm_fmadd_ps(xdm, yds, summs);
            let d0d1 = _mm256_broadcastss_ps(_mm_mul_ss(xdm, yds));
            // SAFETY: `qs` is 16 bytes, exactly one unaligned 128-bit load.
            let tmp = unsafe { _mm_loadu_si128($xb.qs.as_ptr().cast()) };
            // Low nibbles (elements 0..16) in the low half, high nibbles (16..32) in the high
            // half.
            let qx = _mm256_and_si256(low_mask, _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp));
            // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
            let qy = unsafe { _mm256_loadu_si256($yb.qs.as_ptr().cast()) };
            let xy = $mul_sum(qx, qy);
            acc = _mm256_fmadd_ps(d0d1, xy, acc);
        }
        hsum_float_8(acc) + _mm_cvtss_f32(_mm_movehdup_ps(summs))
    }};
}

macro_rules! q4_1_pre_entry {
    ($name:ident, $inner:ident, $rows:ident, $inner_rows:ident, $mul_sum:ident, $features:literal) => {
        /// Table entry: `out.len()` consecutive Q4_1 rows × one Q8_1 activation row with
        /// prepared scales, each result that of the single-row form (features detected by
        /// `install`).
        fn $rows(_n: usize, w: &[u8], a: &[u8], ads: &[f32], out: &mut [f32]) {
            let (x, y): (&[BlockQ4_1], &[BlockQ8_1]) = (blocks(w), blocks(a));
            assert!(
                2 * y.len() == ads.len() && x.len() == y.len() * out.len(),
                "vec_dot_pre_rows: lengths differ"
            );
            if y.is_empty() {
                out.fill(0.0);
                return;
            }
            // SAFETY: as for the single-row entry.
            unsafe { $inner_rows(x, y, ads, out) }
        }

        /// # Safety
        /// The CPU must support the enabled features; `x` holds `out.len()` rows of `y.len()`
        /// (non-zero) blocks, `ads` twice as long as `y`.
        #[target_feature(enable = $features)]
        unsafe fn $inner_rows(x: &[BlockQ4_1], y: &[BlockQ8_1], ads: &[f32], out: &mut [f32]) {
            let n = y.len();
            for (r, (o, xr)) in out.iter_mut().zip(x.chunks_exact(n)).enumerate() {
                crate::arch::prefetch_row_ahead(x, r, n);
                *o = q4_1_q8_1_pre_body!(xr, y, ads, $mul_sum);
            }
        }

        /// Table entry: Q4_1 × Q8_1 with prepared activation scales (`d`, `s` per block;
        /// features detected by `install`).
        fn $name(_n: usize, w: &[u8], a: &[u8], ads: &[f32]) -> f32 {
            let (x, y): (&[BlockQ4_1], &[BlockQ8_1]) = (blocks(w), blocks(a));
            assert!(
                x.len() == y.len() && 2 * y.len() == ads.len(),
                "vec_dot_pre: lengths differ"
            );
            // SAFETY: `install` put this function in the table only after detecting the
            // features `$inner` is compiled for.
            unsafe { $inner(x, y, ads) }
        }

        /// # Safety
        /// The CPU must support the enabled features; `x`, `y` of equal length, `ads` twice it.
        #[target_feature(enable = $features)]
        unsafe fn $inner(x: &[BlockQ4_1], y: &[BlockQ8_1], ads: &[f32]) -> f32 {
            q4_1_q8_1_pre_body!(x, y, ads, $mul_sum)
        }
    };
}

q4_1_pre_entry!(
    vec_dot_pre_q4_1,
    q4_1_pre_avx2,
    vec_dot_pre_rows_q4_1,
    q4_1_pre_rows_avx2,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
q4_1_pre_entry!(
    vec_dot_pre_q4_1_vnni,
    q4_1_pre_vnni,
    vec_dot_pre_rows_q4_1_vnni,
    q4_1_pre_rows_vnni,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);

/// One weight row against four activation rows: each result is computed exactly as the
/// single-row body computes it (its own lane accumulator and scalar sum, blocks in order), with
/// the weight block unpacked once for the four.
macro_rules! q4_1_q8_1_x4_body {
    ($x:expr, $ys:expr, $mul_sum:ident) => {{
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [_mm_setzero_ps(); 4];
        let low_mask = _mm256_set1_epi8(0x0F);
        for (ib, xb) in $x.iter().enumerate() {
            let xdm = f16c_pair([xb.d[0], xb.d[1], xb.m[0], xb.m[1]]);
            // SAFETY: `qs` is 16 bytes, exactly one unaligned 128-bit load.
            let tmp = unsafe { _mm_loadu_si128(xb.qs.as_ptr().cast()) };
            let qx = _mm256_and_si256(low_mask, _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp));
            for j in 0..4 {
                let yb = &$ys[j][ib];
                let yds = f16c_pair([yb.d[0], yb.d[1], yb.s[0], yb.s[1]]);
                summs[j] = _mm_fmadd_ps(xdm, yds, summs[j]);
                let d0d1 = _mm256_broadcastss_ps(_mm_mul_ss(xdm, yds));
                // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
                let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
                acc[j] = _mm256_fmadd_ps(d0d1, $mul_sum(qx, qy), acc[j]);
            }
        }
        let mut out = [0.0f32; 4];
        for j in 0..4 {
            out[j] = hsum_float_8(acc[j]) + _mm_cvtss_f32(_mm_movehdup_ps(summs[j]));
        }
        out
    }};
}

/// Two Q4_1 weight rows against four activation rows: eight results, each computed exactly as
/// the single-row body computes it; activation blocks are loaded and converted once for both
/// rows.
macro_rules! q4_1_q8_1_2x4_body {
    ($x0:expr, $x1:expr, $ys:expr, $mul_sum:ident) => {{
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let mut summs = [[_mm_setzero_ps(); 4]; 2];
        let low_mask = _mm256_set1_epi8(0x0F);
        for ib in 0..$x0.len() {
            let xb = [&$x0[ib], &$x1[ib]];
            let mut qx = [_mm256_setzero_si256(); 2];
            let mut xdm = [_mm_setzero_ps(); 2];
            for r in 0..2 {
                // SAFETY: `qs` is 16 bytes, exactly one unaligned 128-bit load.
                let tmp = unsafe { _mm_loadu_si128(xb[r].qs.as_ptr().cast()) };
                qx[r] = _mm256_and_si256(low_mask, _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp));
                xdm[r] = f16c_pair([xb[r].d[0], xb[r].d[1], xb[r].m[0], xb[r].m[1]]);
            }
            for j in 0..4 {
                let yb = &$ys[j][ib];
                let yds = f16c_pair([yb.d[0], yb.d[1], yb.s[0], yb.s[1]]);
                // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
                let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
                for r in 0..2 {
                    summs[r][j] = _mm_fmadd_ps(xdm[r], yds, summs[r][j]);
                    let d0d1 = _mm256_broadcastss_ps(_mm_mul_ss(xdm[r], yds));
                    acc[r][j] = _mm256_fmadd_ps(d0d1, $mul_sum(qx[r], qy), acc[r][j]);
                }
            }
        }
        let mut out = [[0.0f32; 4]; 2];
        for r in 0..2 {
            for j in 0..4 {
                out[r][j] = hsum_float_8(acc[r][j]) + _mm_cvtss_f32(_mm_movehdup_ps(summs[r][j]));
            }
        }
        out
    }};
}

/// Table entry: two Q4_1 rows × four activation rows (AVX2, FMA, F16C detected by `install`).
fn vec_dot2x4_q4_1_q8_1(_n: usize, w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
    let (x0, x1): (&[BlockQ4_1], &[BlockQ4_1]) = (blocks(w[0]), blocks(w[1]));
    assert_eq!(x0.len(), x1.len(), "vec_dot2x4: block counts differ");
    let ys = blocks4::<BlockQ8_1>(a, x0.len());
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q4_1_q8_1_2x4_avx2(x0, x1, ys) }
}

/// Table entry: the same with VNNI (detected by `install`).
fn vec_dot2x4_q4_1_q8_1_vnni(_n: usize, w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
    let (x0, x1): (&[BlockQ4_1], &[BlockQ4_1]) = (blocks(w[0]), blocks(w[1]));
    assert_eq!(x0.len(), x1.len(), "vec_dot2x4: block counts differ");
    let ys = blocks4::<BlockQ8_1>(a, x0.len());
    // SAFETY: as above.
    unsafe { q4_1_q8_1_2x4_vnni(x0, x1, ys) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x1` and every `ys[j]` are as long as `x0`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_q8_1_2x4_avx2(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    ys: [&[BlockQ8_1]; 4],
) -> [[f32; 4]; 2] {
    q4_1_q8_1_2x4_body!(x0, x1, ys, mul_sum_us8_pairs_float)
}

/// # Safety
/// As [`q4_1_q8_1_2x4_avx2`], plus AVX-512 VNNI and VL.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4_1_q8_1_2x4_vnni(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    ys: [&[BlockQ8_1]; 4],
) -> [[f32; 4]; 2] {
    q4_1_q8_1_2x4_body!(x0, x1, ys, mul_sum_us8_pairs_float_vnni)
}

/// Q8_0 × four Q8_0 activation rows, each exactly as the single-row body.
macro_rules! q8_0_q8_0_x4_body {
    ($x:expr, $ys:expr, $mul_sum:ident) => {{
        let mut acc = [_mm256_setzero_ps(); 4];
        for (ib, xb) in $x.iter().enumerate() {
            let dx = f16c(xb.d);
            // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
            let qx = unsafe { _mm256_loadu_si256(xb.qs.as_ptr().cast()) };
            let ax = _mm256_sign_epi8(qx, qx);
            for j in 0..4 {
                let yb = &$ys[j][ib];
                let d = _mm256_set1_ps(dx * f16c(yb.d));
                // SAFETY: as above.
                let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
                let sy = _mm256_sign_epi8(qy, qx);
                acc[j] = _mm256_fmadd_ps(d, $mul_sum(ax, sy), acc[j]);
            }
        }
        let mut out = [0.0f32; 4];
        for j in 0..4 {
            out[j] = hsum_float_8(acc[j]);
        }
        out
    }};
}

/// A Q8_0 weight block as signed bytes and its scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q8_0(b: &BlockQ8_0) -> (__m256i, f32) {
    // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
    (
        unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) },
        f16c(b.d),
    )
}

/// A Q4_0 weight block as signed bytes (nibble − 8, in -8..7) and its scale, as ggml's AVX2
/// kernel builds it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q4_0(b: &BlockQ4_0) -> (__m256i, f32) {
    let (q, d) = unpack_q4_0_bits(b);
    (q, f16c(d.to_le_bytes()))
}

/// A Q4_0 weight block as signed bytes and its raw F16 scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q4_0_bits(b: &BlockQ4_0) -> (__m256i, u16) {
    let qx = kquants::bytes_from_nibbles_32(&b.qs);
    (
        _mm256_sub_epi8(qx, _mm256_set1_epi8(8)),
        u16::from_le_bytes(b.d),
    )
}

/// A Q5_0 weight block as signed bytes (-16..15) and its scale, as ggml's AVX2 kernel builds it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q5_0(b: &BlockQ5_0) -> (__m256i, f32) {
    let qx = kquants::bytes_from_nibbles_32(&b.qs);
    let hi = _mm256_andnot_si256(
        kquants::bytes_from_bits_32(b.qh),
        _mm256_set1_epi8(0xF0u8 as i8),
    );
    (_mm256_or_si256(qx, hi), f16c(b.d))
}

/// Two weight rows of signed-byte blocks (Q8_0, Q5_0) against four Q8_0 activation rows, each
/// result exactly as the single-row kernel computes it (`d = d_w * d_a`, |x| and x's sign moved
/// onto y, one lane-sum, one 8-lane FMA per block, `hsum_float_8`).
macro_rules! i8w_2x4_body {
    ($x0:expr, $x1:expr, $ys:expr, $unpack:ident, $mul_sum:ident) => {{
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        for ib in 0..$x0.len() {
            let (q0, d0) = $unpack(&$x0[ib]);
            let (q1, d1) = $unpack(&$x1[ib]);
            let qx = [q0, q1];
            let dx = [d0, d1];
            let ax = [_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(q1, q1)];
            for j in 0..4 {
                let yb = &$ys[j][ib];
                let dy = f16c(yb.d);
                // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
                let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
                for r in 0..2 {
                    let d = _mm256_set1_ps(dx[r] * dy);
                    let sy = _mm256_sign_epi8(qy, qx[r]);
                    acc[r][j] = _mm256_fmadd_ps(d, $mul_sum(ax[r], sy), acc[r][j]);
                }
            }
        }
        let mut out = [[0.0f32; 4]; 2];
        for r in 0..2 {
            for j in 0..4 {
                out[r][j] = hsum_float_8(acc[r][j]);
            }
        }
        out
    }};
}

macro_rules! i8w_2x4_entry {
    ($name:ident, $inner:ident, $wb:ty, $unpack:ident, $mul_sum:ident, $features:literal) => {
        /// Table entry: two weight rows × four Q8_0 activation rows (features detected by
        /// `install`).
        fn $name(_n: usize, w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
            let (x0, x1): (&[$wb], &[$wb]) = (blocks(w[0]), blocks(w[1]));
            assert_eq!(x0.len(), x1.len(), "vec_dot2x4: block counts differ");
            let ys = blocks4::<BlockQ8_0>(a, x0.len());
            // SAFETY: `install` put this function in the table only after detecting the
            // features `$inner` is compiled for.
            unsafe { $inner(x0, x1, ys) }
        }

        /// # Safety
        /// The CPU must support the enabled features; `x1` and every `ys[j]` as long as `x0`.
        #[target_feature(enable = $features)]
        unsafe fn $inner(x0: &[$wb], x1: &[$wb], ys: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 2] {
            i8w_2x4_body!(x0, x1, ys, $unpack, $mul_sum)
        }
    };
}

i8w_2x4_entry!(
    vec_dot2x4_q8_0_q8_0,
    q8_0_2x4_avx2,
    BlockQ8_0,
    unpack_q8_0,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
i8w_2x4_entry!(
    vec_dot2x4_q8_0_q8_0_vnni,
    q8_0_2x4_vnni,
    BlockQ8_0,
    unpack_q8_0,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);
i8w_2x4_entry!(
    vec_dot2x4_q4_0_q8_0,
    q4_0_2x4_avx2,
    BlockQ4_0,
    unpack_q4_0,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
i8w_2x4_entry!(
    vec_dot2x4_q4_0_q8_0_vnni,
    q4_0_2x4_vnni,
    BlockQ4_0,
    unpack_q4_0,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);
i8w_2x4_entry!(
    vec_dot2x4_q5_0_q8_0,
    q5_0_2x4_avx2,
    BlockQ5_0,
    unpack_q5_0,
    mul_sum_us8_pairs_float,
    "avx2,fma,f16c"
);
i8w_2x4_entry!(
    vec_dot2x4_q5_0_q8_0_vnni,
    q5_0_2x4_vnni,
    BlockQ5_0,
    unpack_q5_0,
    mul_sum_us8_pairs_float_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);

/// A Q8_0 weight block as signed bytes and its raw F16 scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q8_0_bits(b: &BlockQ8_0) -> (__m256i, u16) {
    // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
    (
        unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) },
        u16::from_le_bytes(b.d),
    )
}

/// A Q5_0 weight block as signed bytes and its raw F16 scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q5_0_bits(b: &BlockQ5_0) -> (__m256i, u16) {
    let qx = kquants::bytes_from_nibbles_32(&b.qs);
    let hi = _mm256_andnot_si256(
        kquants::bytes_from_bits_32(b.qh),
        _mm256_set1_epi8(0xF0u8 as i8),
    );
    (_mm256_or_si256(qx, hi), u16::from_le_bytes(b.d))
}

/// Four F16 values as four f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x4(d: [u16; 4]) -> __m128 {
    let bits = d[0] as u64 | (d[1] as u64) << 16 | (d[2] as u64) << 32 | (d[3] as u64) << 48;
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// Four weight rows of signed-byte blocks (Q8_0, Q5_0) against four Q8_0 activation rows
/// (tinyBLAS's 4×N tile), each result exactly as the single-row kernel computes it: the four
/// products `d_w[r] * d_a` of a token are one 4-lane multiply (the same roundings as the scalar
/// products), then |x| and x's sign moved onto y, one lane-sum, one 8-lane FMA per block and
/// `hsum_float_8`. It needs 16 accumulators and the weight rows live at once, so it is only
/// built with AVX-512VL's 32 vector registers.
macro_rules! i8w_4x4_body {
    ($xs:expr, $ys:expr, $unpack:ident) => {{
        let [x0, x1, x2, x3] = $xs;
        let [y0, y1, y2, y3] = $ys;
        let n = x0.len();
        assert!(
            [
                x1.len(),
                x2.len(),
                x3.len(),
                y0.len(),
                y1.len(),
                y2.len(),
                y3.len()
            ]
            .iter()
            .all(|&l| l == n),
            "vec_dot4x4: block counts differ"
        );
        let mut acc = [[_mm256_setzero_ps(); 4]; 4];
        for ib in 0..n {
            let (q0, d0) = $unpack(&x0[ib]);
            let (q1, d1) = $unpack(&x1[ib]);
            let (q2, d2) = $unpack(&x2[ib]);
            let (q3, d3) = $unpack(&x3[ib]);
            let dw = f16x4([d0, d1, d2, d3]);
            let qx = [q0, q1, q2, q3];
            let ax = qx.map(|q| _mm256_sign_epi8(q, q));
            for (j, yb) in [&y0[ib], &y1[ib], &y2[ib], &y3[ib]].into_iter().enumerate() {
                let dj = _mm_mul_ps(dw, _mm_set1_ps(f16c(yb.d)));
                let dj = _mm256_set_m128(dj, dj);
                // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
                let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
                macro_rules! lane {
                        ($r:literal, $imm:literal) => {
                            // One in-lane permute (both halves of `dj` hold the four products);
                            // written as asm because LLVM otherwise lowers the lane broadcast as an
                            // extract plus a broadcast, two shuffles per (row, token).
                            let d: __m256;
                            // SAFETY: a register-only AVX instruction; the enclosing function is
                            // compiled for (and only called on) CPUs with AVX2.
                            unsafe {
                                std::arch::asm!(
                                    "vpermilps {d}, {s}, {imm}",
                                    d = lateout(ymm_reg) d,
                                    s = in(ymm_reg) dj,
                                    imm = const $imm,
                                    options(pure, nomem, nostack, preserves_flags)
                                );
                            }
                            let sy = _mm256_sign_epi8(qy, qx[$r]);
                            let sum = mul_sum_us8_pairs_float_vnni(ax[$r], sy);
                            acc[$r][j] = _mm256_fmadd_ps(d, sum, acc[$r][j]);
                        };
                    }
                lane!(0, 0x00);
                lane!(1, 0x55);
                lane!(2, 0xAA);
                lane!(3, 0xFF);
            }
        }
        [
            hsum4_float_8(acc[0]),
            hsum4_float_8(acc[1]),
            hsum4_float_8(acc[2]),
            hsum4_float_8(acc[3]),
        ]
    }};
}

/// `hsum_float_8` of four vectors at once, each sum associated exactly as `hsum_float_8`
/// associates it ((hi + lo) halves, then (0 + 2) and (1 + 3), then the two): the halves of two
/// vectors are added in one 256-bit add, the lanes reordered to (0, 2, 1, 3) so that two
/// horizontal adds form the pairs and then the totals.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum4_float_8(v: [__m256; 4]) -> [f32; 4] {
    let [a, b, c, d] = v;
    // [a.lo + a.hi | b.lo + b.hi] and [c.lo + c.hi | d.lo + d.hi]
    let ab = _mm256_add_ps(
        _mm256_permute2f128_ps(a, b, 0x31),
        _mm256_permute2f128_ps(a, b, 0x20),
    );
    let cd = _mm256_add_ps(
        _mm256_permute2f128_ps(c, d, 0x31),
        _mm256_permute2f128_ps(c, d, 0x20),
    );
    // Lanes (0, 2, 1, 3) in each half, so that hadd adds 0 + 2 and 1 + 3.
    let ab = _mm256_permute_ps(ab, 0b11_01_10_00);
    let cd = _mm256_permute_ps(cd, 0b11_01_10_00);
    // [a02, a13, c02, c13 | b02, b13, d02, d13], then [a, c, a, c | b, d, b, d].
    let pairs = _mm256_hadd_ps(ab, cd);
    let sums = _mm256_hadd_ps(pairs, pairs);
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds 8 f32, one unaligned 256-bit store.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
    [out[0], out[4], out[1], out[5]]
}

macro_rules! i8w_4x4_entry {
    ($name:ident, $inner:ident, $wb:ty, $unpack:ident) => {
        /// Table entry: four weight rows × four Q8_0 activation rows (AVX2, FMA, F16C,
        /// AVX-512 VNNI and VL detected by `install`).
        fn $name(_n: usize, w: [&[u8]; 4], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
            let xs: [&[$wb]; 4] = w.map(|r| blocks(r));
            let ys = blocks4::<BlockQ8_0>(a, xs[0].len());
            // SAFETY: `install` put this function in the table only after detecting the
            // features `$inner` is compiled for.
            unsafe { $inner(xs, ys) }
        }

        /// # Safety
        /// The CPU must support the enabled features.
        #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
        unsafe fn $inner(xs: [&[$wb]; 4], ys: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 4] {
            i8w_4x4_body!(xs, ys, $unpack)
        }
    };
}

i8w_4x4_entry!(
    vec_dot4x4_q8_0_q8_0_vnni,
    q8_0_4x4_vnni,
    BlockQ8_0,
    unpack_q8_0_bits
);
i8w_4x4_entry!(
    vec_dot4x4_q4_0_q8_0_vnni,
    q4_0_4x4_vnni,
    BlockQ4_0,
    unpack_q4_0_bits
);
i8w_4x4_entry!(
    vec_dot4x4_q5_0_q8_0_vnni,
    q5_0_4x4_vnni,
    BlockQ5_0,
    unpack_q5_0_bits
);

/// Table entry: RoPE with its `mul_add`s as FMA instructions (a baseline build calls libm's
/// `fmaf`, the same value behind a function call); FMA detected by `install`.
fn rope_fma(x: &mut [f32], cache: &[f32], mode: crate::ops::RopeMode) {
    // SAFETY: `install` put this function in the table only after detecting FMA.
    unsafe { rope_fma_inner(x, cache, mode) }
}

/// # Safety
/// The CPU must support FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn rope_fma_inner(x: &mut [f32], cache: &[f32], mode: crate::ops::RopeMode) {
    crate::ops::rope_forward(x, cache, mode)
}

/// Table entry: a Q4_0 row rewritten as Q8_0 blocks (nibble − 8 as signed bytes, the same
/// scale), so that prompt batches run Q8_0's 4 × 4 tile (AVX2 detected by `install`).
fn q4_0_to_q8_0_avx2(src: &[u8], dst: &mut [u8]) {
    let (x, y): (&[BlockQ4_0], &mut [BlockQ8_0]) = (blocks(src), blocks_mut(dst));
    assert_eq!(x.len(), y.len(), "to_q8_0: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting AVX2/FMA/F16C.
    unsafe { q4_0_to_q8_0_inner(x, y) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_to_q8_0_inner(x: &[BlockQ4_0], y: &mut [BlockQ8_0]) {
    for (b, o) in x.iter().zip(y.iter_mut()) {
        let (q, d) = unpack_q4_0_bits(b);
        o.d = d.to_le_bytes();
        // SAFETY: `qs` is 32 bytes: one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(o.qs.as_mut_ptr().cast(), q) };
    }
}

/// Table entry: a Q5_0 row rewritten as Q8_0 blocks (the unpacked signed bytes and the same
/// scale), as the scalar `quant::q5_0::to_q8_0` does (AVX2 detected by `install`).
fn q5_0_to_q8_0_avx2(src: &[u8], dst: &mut [u8]) {
    let (x, y): (&[BlockQ5_0], &mut [BlockQ8_0]) = (blocks(src), blocks_mut(dst));
    assert_eq!(x.len(), y.len(), "to_q8_0: block counts differ");
    // SAFETY: `install` put this function in the table only after detecting AVX2/FMA/F16C.
    unsafe { q5_0_to_q8_0_inner(x, y) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_to_q8_0_inner(x: &[BlockQ5_0], y: &mut [BlockQ8_0]) {
    for (b, o) in x.iter().zip(y.iter_mut()) {
        let (q, d) = unpack_q5_0_bits(b);
        o.d = d.to_le_bytes();
        // SAFETY: `qs` is 32 bytes: one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(o.qs.as_mut_ptr().cast(), q) };
    }
}

/// Splits four activation rows into blocks, each as long as `n_blocks`.
fn blocks4<B: bytemuck::Pod>(a: [&[u8]; 4], n_blocks: usize) -> [&[B]; 4] {
    let ys = a.map(|r| blocks::<B>(r));
    for y in &ys {
        assert_eq!(y.len(), n_blocks, "vec_dot_x4: block counts differ");
    }
    ys
}

/// Table entry: Q4_1 × 4 activation rows (AVX2, FMA, F16C detected by `install`).
fn vec_dot4_q4_1_q8_1(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let x: &[BlockQ4_1] = blocks(w);
    let ys = blocks4::<BlockQ8_1>(a, x.len());
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q4_1_q8_1_x4_avx2(x, ys) }
}

/// Table entry: Q4_1 × 4 activation rows with VNNI (detected by `install`).
fn vec_dot4_q4_1_q8_1_vnni(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let x: &[BlockQ4_1] = blocks(w);
    let ys = blocks4::<BlockQ8_1>(a, x.len());
    // SAFETY: as above.
    unsafe { q4_1_q8_1_x4_vnni(x, ys) }
}

/// Table entry: Q8_0 × 4 activation rows (AVX2, FMA, F16C detected by `install`).
fn vec_dot4_q8_0_q8_0(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let x: &[BlockQ8_0] = blocks(w);
    let ys = blocks4::<BlockQ8_0>(a, x.len());
    // SAFETY: as above.
    unsafe { q8_0_q8_0_x4_avx2(x, ys) }
}

/// Table entry: Q8_0 × 4 activation rows with VNNI (detected by `install`).
fn vec_dot4_q8_0_q8_0_vnni(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let x: &[BlockQ8_0] = blocks(w);
    let ys = blocks4::<BlockQ8_0>(a, x.len());
    // SAFETY: as above.
    unsafe { q8_0_q8_0_x4_vnni(x, ys) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `ys[j]` is as long as `x`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_q8_1_x4_avx2(x: &[BlockQ4_1], ys: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    q4_1_q8_1_x4_body!(x, ys, mul_sum_us8_pairs_float)
}

/// # Safety
/// As [`q4_1_q8_1_x4_avx2`], plus AVX-512 VNNI and VL.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4_1_q8_1_x4_vnni(x: &[BlockQ4_1], ys: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    q4_1_q8_1_x4_body!(x, ys, mul_sum_us8_pairs_float_vnni)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `ys[j]` is as long as `x`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_q8_0_x4_avx2(x: &[BlockQ8_0], ys: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    q8_0_q8_0_x4_body!(x, ys, mul_sum_us8_pairs_float)
}

/// # Safety
/// As [`q8_0_q8_0_x4_avx2`], plus AVX-512 VNNI and VL.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q8_0_q8_0_x4_vnni(x: &[BlockQ8_0], ys: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    q8_0_q8_0_x4_body!(x, ys, mul_sum_us8_pairs_float_vnni)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_q8_0_avx2(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    q8_0_q8_0_body!(x, y, mul_sum_us8_pairs_float)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI and VL. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q8_0_q8_0_vnni(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    q8_0_q8_0_body!(x, y, mul_sum_us8_pairs_float_vnni)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_q8_1_avx2(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    q4_1_q8_1_body!(x, y, mul_sum_us8_pairs_float)
}

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI and VL. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4_1_q8_1_vnni(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    q4_1_q8_1_body!(x, y, mul_sum_us8_pairs_float_vnni)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;
    use crate::Kernels;

    /// Whether this CPU runs the kernels under test (says so when it does not).
    fn simd_available() -> bool {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if !ok {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
        }
        ok
    }

    /// Q5_0, Q4_K and Q6_K: random weight bytes (with sane f16 scales) against quantized random
    /// activations; equal to the scalar reference up to f32 accumulation order.
    #[test]
    fn avx2_q5_0_and_k_quant_dots_match_scalar_reference() {
        if !simd_available() {
            return;
        }
        let scalar = Kernels::scalar();
        let mut s = 99u64;
        for case in 0..120usize {
            for ty in [GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
                let bs = ty.block_size();
                let n = bs * (1 + case % 5);
                let x: Vec<f32> = (0..n)
                    .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0)
                    .collect();
                let ts = ty.type_size();
                let mut w: Vec<u8> = (0..n / bs * ts).map(|_| lcg(&mut s) as u8).collect();
                // f16 scale fields at their offsets, small and finite.
                let scale_offsets: &[usize] = match ty {
                    GgmlType::Q5_0 => &[0],
                    GgmlType::Q4_K => &[0, 2],
                    _ => &[ts - 2],
                };
                for b in w.chunks_exact_mut(ts) {
                    for &o in scale_offsets {
                        let v = (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 0.02;
                        b[o..o + 2].copy_from_slice(&crate::f32_to_f16(v).to_le_bytes());
                    }
                }
                let act_ty = scalar.vec_dot_type(ty).expect("weight type");
                let mut a = vec![0u8; crate::row_bytes(act_ty, n).expect("bytes")];
                scalar
                    .quantize_activation(act_ty, &x, &mut a)
                    .expect("quantize");
                let want = scalar.vec_dot(ty, n, &w, &a).expect("dot");
                let got = match ty {
                    GgmlType::Q5_0 => vec_dot_q5_0_q8_0(n, &w, &a),
                    GgmlType::Q4_K => vec_dot_q4_k_q8_k(n, &w, &a),
                    _ => vec_dot_q6_k_q8_k(n, &w, &a),
                };
                let mut wf = vec![0.0f32; n];
                let mut af = vec![0.0f32; n];
                scalar.dequantize_row(ty, &w, &mut wf).expect("deq");
                scalar.dequantize_row(act_ty, &a, &mut af).expect("deq");
                let mag: f64 = wf
                    .iter()
                    .zip(&af)
                    .map(|(p, q)| (*p as f64 * *q as f64).abs())
                    .sum();
                if ty == GgmlType::Q4_K || ty == GgmlType::Q6_K {
                    // Four activation rows (rotations of this one by whole blocks): the x4
                    // kernel gives each exactly the single-row result.
                    let ab = act_ty.type_size();
                    let rows: Vec<Vec<u8>> = (0..4)
                        .map(|k| {
                            let mut r = a.clone();
                            r.rotate_left((k * ab) % a.len());
                            r
                        })
                        .collect();
                    let (f4, f1): (crate::dispatch::VecDot4Fn, crate::dispatch::VecDotFn) =
                        if ty == GgmlType::Q4_K {
                            (vec_dot4_q4_k_q8_k, vec_dot_q4_k_q8_k)
                        } else {
                            (vec_dot4_q6_k_q8_k, vec_dot_q6_k_q8_k)
                        };
                    let got4 = f4(n, &w, [&rows[0], &rows[1], &rows[2], &rows[3]]);
                    for (k, r) in rows.iter().enumerate() {
                        let one = f1(n, &w, r);
                        assert_eq!(got4[k].to_bits(), one.to_bits(), "case {case} x4 {k}");
                    }
                }
                assert!(
                    ((got - want) as f64).abs() <= 1e-5 * mag + 1e-30,
                    "{ty} case {case}: avx2 {got} scalar {want} (mag {mag})"
                );
            }
        }
    }

    /// Q8_0 and Q5_0 2x4 tiles equal the table's single-row kernel bit for bit.
    #[test]
    fn signed_byte_2x4_tiles_match_single_dots() {
        if !simd_available() {
            return;
        }
        let scalar = Kernels::scalar();
        let mut s = 17u64;
        for case in 0..60usize {
            let n = 32 * (1 + case % 9);
            for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
                let ts = ty.type_size();
                let mut w: Vec<u8> = (0..2 * n / 32 * ts).map(|_| lcg(&mut s) as u8).collect();
                for b in w.chunks_exact_mut(ts) {
                    let v = (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 0.05;
                    b[0..2].copy_from_slice(&crate::f32_to_f16(v).to_le_bytes());
                }
                let (w0, w1) = w.split_at(n / 32 * ts);
                let rb = crate::row_bytes(GgmlType::Q8_0, n).expect("bytes");
                let mut a = vec![0u8; 4 * rb];
                for j in 0..4 {
                    let x: Vec<f32> = (0..n)
                        .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 3.0)
                        .collect();
                    scalar
                        .quantize_activation(GgmlType::Q8_0, &x, &mut a[j * rb..(j + 1) * rb])
                        .expect("quantize");
                }
                let rows = [&a[..rb], &a[rb..2 * rb], &a[2 * rb..3 * rb], &a[3 * rb..]];
                let mut fs: Vec<(crate::dispatch::VecDot2x4Fn, crate::dispatch::VecDotFn)> =
                    match ty {
                        GgmlType::Q8_0 => vec![(vec_dot2x4_q8_0_q8_0, vec_dot_q8_0_q8_0)],
                        _ => vec![(vec_dot2x4_q5_0_q8_0, vec_dot_q5_0_q8_0)],
                    };
                if vnni() {
                    match ty {
                        GgmlType::Q8_0 => fs.push((vec_dot2x4_q8_0_q8_0_vnni, vec_dot_q8_0_q8_0)),
                        _ => fs.push((vec_dot2x4_q5_0_q8_0_vnni, vec_dot_q5_0_q8_0)),
                    }
                }
                let ad: Vec<f32> = rows[0]
                    .chunks_exact(34)
                    .map(|b| crate::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect();
                let pres: Vec<crate::dispatch::VecDotPreFn> = match ty {
                    GgmlType::Q8_0 => vec![vec_dot_pre_q8_0, vec_dot_pre_q8_0_vnni],
                    _ => vec![vec_dot_pre_q5_0, vec_dot_pre_q5_0_vnni],
                };
                let single: crate::dispatch::VecDotFn = match ty {
                    GgmlType::Q8_0 => vec_dot_q8_0_q8_0,
                    _ => vec_dot_q5_0_q8_0,
                };
                for (k, f) in pres.into_iter().enumerate() {
                    if k == 1 && !vnni() {
                        continue;
                    }
                    let want = single(n, w0, rows[0]);
                    assert_eq!(f(n, w0, rows[0], &ad).to_bits(), want.to_bits(), "{ty} pre");
                }
                for (f, one) in fs {
                    let got = f(n, [w0, w1], rows);
                    for (r, wr) in [w0, w1].into_iter().enumerate() {
                        for j in 0..4 {
                            let want = one(n, wr, rows[j]);
                            assert_eq!(
                                got[r][j].to_bits(),
                                want.to_bits(),
                                "{ty} case {case} {r} {j}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Q8_0 and Q5_0 4x4 tiles (VNNI) equal the table's single-row kernel bit for bit,
    /// including weights of -128 and activations of ±127.
    #[test]
    fn signed_byte_4x4_tiles_match_single_dots() {
        if !simd_available() || !vnni() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        let scalar = Kernels::scalar();
        let mut s = 23u64;
        for case in 0..60usize {
            let n = 32 * (1 + case % 9);
            for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
                let ts = ty.type_size();
                let nb = n / 32;
                let mut w: Vec<u8> = (0..4 * nb * ts).map(|_| lcg(&mut s) as u8).collect();
                for (i, b) in w.chunks_exact_mut(ts).enumerate() {
                    let v = (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 0.05;
                    b[0..2].copy_from_slice(&crate::f32_to_f16(v).to_le_bytes());
                    if ty == GgmlType::Q8_0 && i % 3 == 0 {
                        b[2] = 0x80; // -128
                    }
                }
                let wr: Vec<&[u8]> = w.chunks_exact(nb * ts).collect();
                let rb = crate::row_bytes(GgmlType::Q8_0, n).expect("bytes");
                let mut a = vec![0u8; 4 * rb];
                for j in 0..4 {
                    let x: Vec<f32> = (0..n)
                        .map(|i| {
                            if i % 7 == 0 {
                                10.0 // the block maximum: quantizes to ±127
                            } else {
                                (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 3.0
                            }
                        })
                        .collect();
                    scalar
                        .quantize_activation(GgmlType::Q8_0, &x, &mut a[j * rb..(j + 1) * rb])
                        .expect("quantize");
                }
                let rows: [&[u8]; 4] = std::array::from_fn(|j| &a[j * rb..(j + 1) * rb]);
                let (f, one): (crate::dispatch::VecDot4x4Fn, crate::dispatch::VecDotFn) = match ty {
                    GgmlType::Q8_0 => (vec_dot4x4_q8_0_q8_0_vnni, vec_dot_q8_0_q8_0),
                    _ => (vec_dot4x4_q5_0_q8_0_vnni, vec_dot_q5_0_q8_0),
                };
                let got = f(n, [wr[0], wr[1], wr[2], wr[3]], rows);
                for (r, w_r) in wr.iter().enumerate() {
                    for (j, a_j) in rows.iter().enumerate() {
                        let want = one(n, w_r, a_j);
                        let reference = scalar.vec_dot(ty, n, w_r, a_j).expect("scalar");
                        assert_eq!(
                            got[r][j].to_bits(),
                            want.to_bits(),
                            "{ty} case {case} {r} {j}"
                        );
                        let tol = 1e-4 * (1.0 + reference.abs());
                        assert!((got[r][j] - reference).abs() <= tol, "{ty}: vs scalar");
                    }
                }
            }
        }
    }

    /// The multi-row decode forms equal the single-row kernels bit for bit, row by row.
    #[test]
    fn pre_rows_match_single_dots() {
        if !simd_available() {
            return;
        }
        let scalar = Kernels::scalar();
        let mut s = 29u64;
        type Case = (
            GgmlType,
            crate::dispatch::VecDotPreRowsFn,
            crate::dispatch::VecDotFn,
        );
        let mut cases: Vec<Case> = vec![
            (GgmlType::Q8_0, vec_dot_pre_rows_q8_0, vec_dot_q8_0_q8_0),
            (GgmlType::Q5_0, vec_dot_pre_rows_q5_0, vec_dot_q5_0_q8_0),
            (GgmlType::Q4_1, vec_dot_pre_rows_q4_1, vec_dot_q4_1_q8_1),
        ];
        if vnni() {
            cases.push((
                GgmlType::Q8_0,
                vec_dot_pre_rows_q8_0_vnni,
                vec_dot_q8_0_q8_0,
            ));
            cases.push((
                GgmlType::Q5_0,
                vec_dot_pre_rows_q5_0_vnni,
                vec_dot_q5_0_q8_0,
            ));
            cases.push((
                GgmlType::Q4_1,
                vec_dot_pre_rows_q4_1_vnni,
                vec_dot_q4_1_q8_1,
            ));
        }
        for case in 0..20usize {
            let n = 32 * (1 + case % 7);
            let n_rows = 1 + case % 5;
            for &(ty, rows_fn, one) in &cases {
                let ts = ty.type_size();
                let row_b = n / 32 * ts;
                let mut w: Vec<u8> = (0..n_rows * row_b).map(|_| lcg(&mut s) as u8).collect();
                for b in w.chunks_exact_mut(ts) {
                    let v = (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 0.05;
                    b[0..2].copy_from_slice(&crate::f32_to_f16(v).to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        b[2..4].copy_from_slice(&crate::f32_to_f16(-v).to_le_bytes());
                    }
                }
                let act_ty = scalar.vec_dot_type(ty).expect("act type");
                let x: Vec<f32> = (0..n)
                    .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 3.0)
                    .collect();
                let mut a = vec![0u8; crate::row_bytes(act_ty, n).expect("bytes")];
                scalar
                    .quantize_activation(act_ty, &x, &mut a)
                    .expect("quantize");
                let fields = if act_ty == GgmlType::Q8_1 { 2 } else { 1 };
                let scales: Vec<f32> = a
                    .chunks_exact(act_ty.type_size())
                    .flat_map(|b| {
                        (0..fields)
                            .map(|f| {
                                crate::f16_to_f32(u16::from_le_bytes([b[2 * f], b[2 * f + 1]]))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let mut out = vec![f32::NAN; n_rows];
                rows_fn(n, &w, &a, &scales, &mut out);
                for (r, o) in out.iter().enumerate() {
                    let want = one(n, &w[r * row_b..(r + 1) * row_b], &a);
                    assert_eq!(o.to_bits(), want.to_bits(), "{ty} case {case} row {r}");
                }
            }
        }
    }

    /// The AVX2 activation quantizers write the scalar reference's bytes, on random rows and on
    /// edge blocks: zeros, ties (x * id exactly k + 0.5), a single huge value, subnormals, ±inf
    /// and NaN.
    #[test]
    fn activation_quantizers_match_reference() {
        if !simd_available() {
            return;
        }
        let scalar = Kernels::scalar();
        let mut s = 31u64;
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for n_blocks in 1..6 {
            rows.push(crate::testutil::rand_vec(32 * n_blocks, 4.0, &mut s));
        }
        rows.push(vec![0.0; 32]);
        rows.push((0..32).map(|i| i as f32 + 0.5).collect());
        rows.push(
            (0..32)
                .map(|i| (i as f32 - 16.0) * (127.0 / 15.5) / 127.0 * 0.5)
                .collect(),
        );
        rows.push((0..32).map(|i| if i == 5 { 1e30 } else { 1.0 }).collect());
        rows.push((0..32).map(|i| f32::from_bits(i as u32 + 1)).collect());
        rows.push(
            (0..32)
                .map(|i| if i == 3 { f32::INFINITY } else { -2.0 })
                .collect(),
        );
        rows.push(
            (0..32)
                .map(|i| if i % 5 == 0 { f32::NAN } else { i as f32 })
                .collect(),
        );
        rows.push(vec![f32::NAN; 32]);
        rows.push(
            (0..32)
                .map(|i| if i == 9 { f32::NEG_INFINITY } else { f32::NAN })
                .collect(),
        );
        // Q8_K takes 256-value blocks: the rows above, each repeated to 256 values (and a
        // few blocks in which the extreme value sits late or appears twice with both signs).
        let mut rows_k: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| r.iter().copied().cycle().take(256).collect())
            .collect();
        for n_blocks in 1..4 {
            rows_k.push(crate::testutil::rand_vec(256 * n_blocks, 4.0, &mut s));
        }
        rows_k.push(
            (0..256)
                .map(|i| if i == 250 { -9.0 } else { 1.0 })
                .collect(),
        );
        rows_k.push(
            (0..256)
                .map(|i| match i {
                    40 => 7.0,
                    41 => -7.0,
                    _ => 0.5,
                })
                .collect(),
        );
        rows_k.push(
            (0..256)
                .map(|i| match i {
                    7 => -7.0,
                    200 => 7.0,
                    _ => f32::NAN,
                })
                .collect(),
        );
        for (ty, f, rows) in [
            (
                GgmlType::Q8_0,
                quantize_q8_0_avx2 as crate::dispatch::QuantizeFn,
                &rows,
            ),
            (GgmlType::Q8_1, quantize_q8_1_avx2, &rows),
            (GgmlType::Q8_K, quantize_q8_k_avx2, &rows_k),
        ] {
            for (k, x) in rows.iter().enumerate() {
                let n = crate::row_bytes(ty, x.len()).expect("bytes");
                let mut want = vec![0u8; n];
                scalar
                    .quantize_activation(ty, x, &mut want)
                    .expect("scalar");
                let mut got = vec![0u8; n];
                f(x, &mut got);
                assert_eq!(got, want, "{ty} row {k}");
            }
        }
    }

    /// The vectorised SwiGLU equals the scalar reference bit for bit, over the whole range of
    /// the exponential (overflow, underflow, subnormal results) and odd tails.
    #[test]
    fn swiglu_avx2_is_bit_identical() {
        if !simd_available() {
            return;
        }
        let mut s = 23u64;
        for &n in &[1usize, 15, 16, 17, 64, 1536, 1539] {
            let gate: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 => 120.0,
                    1 => -120.0,
                    2 => -95.0,
                    _ => (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 40.0,
                })
                .collect();
            let up: Vec<f32> = (0..n)
                .map(|_| lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5)
                .collect();
            let mut y1 = vec![0.0f32; n];
            let mut y2 = vec![0.0f32; n];
            crate::ops::swiglu_forward(&mut y1, &gate, &up);
            swiglu_avx2(&mut y2, &gate, &up);
            let b1: Vec<u32> = y1.iter().map(|x| x.to_bits()).collect();
            let b2: Vec<u32> = y2.iter().map(|x| x.to_bits()).collect();
            assert_eq!(b1, b2, "n={n}");
        }
    }

    /// Four horizontal sums at once equal four `hsum_float_8` calls bit for bit (values of
    /// mixed magnitudes, so that the association order shows).
    #[test]
    fn hsum4_matches_hsum_float_8() {
        if !simd_available() {
            return;
        }
        let mut s = 31u64;
        for _ in 0..2000 {
            let mut r = || {
                let e = (lcg(&mut s) % 40) as i32 - 20;
                (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 2f32.powi(e)
            };
            let lanes: [[f32; 8]; 4] = std::array::from_fn(|_| std::array::from_fn(|_| r()));
            // SAFETY: AVX2 and FMA were detected above; each load reads 8 f32.
            let (got, want) = unsafe {
                let v = lanes.map(|l| _mm256_loadu_ps(l.as_ptr()));
                (
                    hsum4_float_8(v),
                    [
                        hsum_float_8(v[0]),
                        hsum_float_8(v[1]),
                        hsum_float_8(v[2]),
                        hsum_float_8(v[3]),
                    ],
                )
            };
            assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "{lanes:?}");
        }
    }

    /// RoPE with FMA instructions equals the scalar reference bit for bit (both modes, partial
    /// rotation, large angles).
    #[test]
    fn rope_fma_is_bit_identical() {
        if !simd_available() {
            return;
        }
        let mut s = 29u64;
        let mut r = || (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0;
        for mode in [crate::ops::RopeMode::Norm, crate::ops::RopeMode::Neox] {
            for (d, n_dims) in [(64usize, 64usize), (64, 32), (128, 128), (8, 8)] {
                for pos in [0usize, 1, 7, 4095] {
                    let mut cache = vec![0.0f32; n_dims];
                    let theta_scale = crate::ops::rope_theta_scale(10000.0, n_dims);
                    crate::ops::rope_cache(&mut cache, pos, theta_scale, 1.0, None);
                    let x: Vec<f32> = (0..d).map(|_| r()).collect();
                    let (mut a, mut b) = (x.clone(), x);
                    crate::ops::rope_forward(&mut a, &cache, mode);
                    rope_fma(&mut b, &cache, mode);
                    let a: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
                    let b: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(a, b, "{mode:?} d={d} n_dims={n_dims} pos={pos}");
                }
            }
        }
    }

    /// The vectorised tiled attention equals the scalar reference bit for bit.
    #[test]
    fn tiled_attention_avx2_is_bit_identical() {
        if !simd_available() {
            return;
        }
        let mut s = 3u64;
        let mut r = |scale: f32| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * scale;
        for &(d, n_q, first) in &[
            (64usize, 64usize, 0usize),
            (64, 64, 200),
            (128, 70, 5),
            (8, 64, 63),
            (64, 67, 1),
            (24, 66, 130),
        ] {
            let n_kv = first + n_q;
            let q: Vec<f32> = (0..n_q * d).map(|_| r(3.0)).collect();
            let k: Vec<f16> = (0..n_kv * d).map(|_| f16::from_f32(r(3.0))).collect();
            let v: Vec<f16> = (0..n_kv * d).map(|_| f16::from_f32(r(5.0))).collect();
            let mut o1 = vec![0.0f32; n_q * d];
            let mut o2 = vec![0.0f32; n_q * d];
            let mut s1 = crate::tiled::TiledScratch::new(d, d);
            let mut s2 = crate::tiled::TiledScratch::new(d, d);
            crate::tiled::attention_tiled_f16(&mut o1, &q, &k, &v, first, d, 0.125, &mut s1);
            tiled_avx2(&mut o2, &q, &k, &v, first, d, 0.125, &mut s2);
            let b1: Vec<u32> = o1.iter().map(|x| x.to_bits()).collect();
            let b2: Vec<u32> = o2.iter().map(|x| x.to_bits()).collect();
            assert_eq!(b1, b2, "d={d} n_q={n_q} first={first}");
        }
    }

    /// Random blocks, including edge quants (all 0x00, all 0xFF, -128/127 weights) and zero /
    /// extreme f16 scales; the results must equal the scalar reference up to the order of the
    /// f32 block accumulation (8 FMA lanes instead of one running sum).
    #[test]
    fn avx2_dots_match_scalar_reference() {
        if !simd_available() {
            return;
        }
        let scalar = Kernels::scalar();
        let mut s = 42u64;
        for case in 0..200usize {
            let n = 32 * (1 + case % 17);
            let x: Vec<f32> = (0..n)
                .map(|i| match case % 5 {
                    0 => 0.0,
                    1 if i % 7 == 0 => 1e4,
                    _ => (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 3.0,
                })
                .collect();
            for ty in [GgmlType::Q8_0, GgmlType::Q4_1] {
                let ts = ty.type_size();
                let mut w: Vec<u8> = (0..n / 32 * ts).map(|_| lcg(&mut s) as u8).collect();
                for (bi, b) in w.chunks_exact_mut(ts).enumerate() {
                    match (case + bi) % 4 {
                        0 => b.fill(0xFF),
                        1 => b.fill(0x80),
                        _ => {}
                    }
                    let scale = match (case + bi) % 6 {
                        0 => 0.0,
                        1 => 65504.0,
                        _ => (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 0.1,
                    };
                    b[0..2].copy_from_slice(&crate::f32_to_f16(scale).to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        b[2..4].copy_from_slice(&crate::f32_to_f16(-scale * 3.0).to_le_bytes());
                    }
                }
                let act_ty = scalar.vec_dot_type(ty).expect("weight type");
                let mut a = vec![0u8; crate::row_bytes(act_ty, n).expect("bytes")];
                scalar
                    .quantize_activation(act_ty, &x, &mut a)
                    .expect("quantize");
                let want = scalar.vec_dot(ty, n, &w, &a).expect("dot");
                let got = match ty {
                    GgmlType::Q8_0 => vec_dot_q8_0_q8_0(n, &w, &a),
                    _ => vec_dot_q4_1_q8_1(n, &w, &a),
                };
                let a_row = a.len();
                let mut a4 = a.clone();
                a4.extend_from_slice(&a);
                a4.extend_from_slice(&a);
                a4.extend_from_slice(&a);
                // Four different activation rows: rotate each copy's bytes by whole blocks.
                let at = act_ty.type_size();
                for j in 1..4 {
                    a4[j * a_row..(j + 1) * a_row].rotate_left((j * at) % a_row.max(1));
                }
                let rows4 = [
                    &a4[..a_row],
                    &a4[a_row..2 * a_row],
                    &a4[2 * a_row..3 * a_row],
                    &a4[3 * a_row..],
                ];
                let mut fns: Vec<crate::dispatch::VecDot4Fn> = vec![];
                match ty {
                    GgmlType::Q8_0 => fns.push(vec_dot4_q8_0_q8_0),
                    _ => fns.push(vec_dot4_q4_1_q8_1),
                }
                if vnni() {
                    match ty {
                        GgmlType::Q8_0 => fns.push(vec_dot4_q8_0_q8_0_vnni),
                        _ => fns.push(vec_dot4_q4_1_q8_1_vnni),
                    }
                }
                for f4 in fns {
                    let got4 = f4(n, &w, rows4);
                    for j in 0..4 {
                        let one = match ty {
                            GgmlType::Q8_0 => vec_dot_q8_0_q8_0(n, &w, rows4[j]),
                            _ => vec_dot_q4_1_q8_1(n, &w, rows4[j]),
                        };
                        assert_eq!(
                            got4[j].to_bits(),
                            one.to_bits(),
                            "{ty} case {case} x4 row {j}"
                        );
                    }
                }
                if ty == GgmlType::Q8_0 {
                    let ad: Vec<f32> = a
                        .chunks_exact(34)
                        .map(|b| crate::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                        .collect();
                    let mut fs: Vec<crate::dispatch::VecDotPreFn> = vec![vec_dot_pre_q8_0];
                    if vnni() {
                        fs.push(vec_dot_pre_q8_0_vnni);
                    }
                    for f in fs {
                        let one = vec_dot_q8_0_q8_0(n, &w, &a);
                        assert_eq!(
                            f(n, &w, &a, &ad).to_bits(),
                            one.to_bits(),
                            "case {case} pre"
                        );
                    }
                }
                if ty == GgmlType::Q4_1 {
                    let ads: Vec<f32> = a
                        .chunks_exact(36)
                        .flat_map(|b| {
                            [
                                crate::f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
                                crate::f16_to_f32(u16::from_le_bytes([b[2], b[3]])),
                            ]
                        })
                        .collect();
                    let mut fs: Vec<crate::dispatch::VecDotPreFn> = vec![vec_dot_pre_q4_1];
                    if vnni() {
                        fs.push(vec_dot_pre_q4_1_vnni);
                    }
                    for f in fs {
                        let one = vec_dot_q4_1_q8_1(n, &w, &a);
                        assert_eq!(
                            f(n, &w, &a, &ads).to_bits(),
                            one.to_bits(),
                            "case {case} q4_1 pre"
                        );
                    }
                }
                if ty == GgmlType::Q4_1 {
                    // A second weight row: the first one's blocks in reverse order.
                    let mut w2 = w.clone();
                    let nb = n / 32;
                    for bi in 0..nb {
                        w2[bi * ts..(bi + 1) * ts]
                            .copy_from_slice(&w[(nb - 1 - bi) * ts..(nb - bi) * ts]);
                    }
                    let mut f2: Vec<crate::dispatch::VecDot2x4Fn> = vec![vec_dot2x4_q4_1_q8_1];
                    if vnni() {
                        f2.push(vec_dot2x4_q4_1_q8_1_vnni);
                    }
                    for f in f2 {
                        let got = f(n, [&w, &w2], rows4);
                        for (r, wr) in [&w, &w2].into_iter().enumerate() {
                            for j in 0..4 {
                                let one = vec_dot_q4_1_q8_1(n, wr, rows4[j]);
                                assert_eq!(
                                    got[r][j].to_bits(),
                                    one.to_bits(),
                                    "case {case} 2x4 {r} {j}"
                                );
                            }
                        }
                    }
                }
                if vnni() {
                    let got_vnni = match ty {
                        GgmlType::Q8_0 => vec_dot_q8_0_q8_0_vnni(n, &w, &a),
                        _ => vec_dot_q4_1_q8_1_vnni(n, &w, &a),
                    };
                    assert_eq!(got.to_bits(), got_vnni.to_bits(), "{ty} case {case}: vnni");
                }
                // Budget: accumulation-order rounding, relative to the sum of |block terms|.
                let mut mag = 0.0f64;
                let mut wf = vec![0.0f32; n];
                let mut af = vec![0.0f32; n];
                scalar.dequantize_row(ty, &w, &mut wf).expect("deq");
                scalar.dequantize_row(act_ty, &a, &mut af).expect("deq");
                for (p, q) in wf.iter().zip(&af) {
                    mag += (*p as f64 * *q as f64).abs();
                }
                if want.is_finite() {
                    assert!(
                        ((got - want) as f64).abs() <= 1e-5 * mag + 1e-30,
                        "{ty} case {case}: avx2 {got} scalar {want}"
                    );
                } else {
                    assert_eq!(got.is_nan(), want.is_nan(), "{ty} case {case}");
                }
            }
        }
    }
}
