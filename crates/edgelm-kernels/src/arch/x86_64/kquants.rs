//! AVX2 dot products for Q5_0 × Q8_0, Q4_K × Q8_K and Q6_K × Q8_K, ported from ggml's AVX2
//! kernels in `ggml-cpu/arch/x86/quants.c` (the code llama.cpp runs here): the integer parts
//! are exact, and the f32 parts (which lane accumulates what, the order of the FMAs and the
//! horizontal sums) follow ggml's so that the results are llama.cpp's.

use std::arch::x86_64::*;

use super::{f16c, hsum_float_8};
use crate::quant::{BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0};

/// ggml `bytes_from_bits_32`: byte j is 0xFF where bit j of `x` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_from_bits_32(x: [u8; 4]) -> __m256i {
    let x32 = i32::from_le_bytes(x);
    let shuf_mask = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf_mask);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    let bytes = _mm256_or_si256(bytes, bit_mask);
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// ggml `bytes_from_nibbles_32`: low nibbles of the 16 bytes, then the high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_from_nibbles_32(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 bytes, exactly one unaligned 128-bit load.
    let tmp = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(_mm256_set1_epi8(0x0F), bytes)
}

/// ggml `mul_sum_i8_pairs_float` (AVX2 without VNNI: the integer result is the same either way).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let d = _mm256_set1_ps(f16c(xb.d) * f16c(yb.d));
        let mut qx = bytes_from_nibbles_32(&xb.qs);
        let bxhi = _mm256_andnot_si256(bytes_from_bits_32(xb.qh), _mm256_set1_epi8(0xF0u8 as i8));
        qx = _mm256_or_si256(qx, bxhi);
        // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit load.
        let qy = unsafe { _mm256_loadu_si256(yb.qs.as_ptr().cast()) };
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
    }
    hsum_float_8(acc)
}

const K4_SHUFFLE: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut i = 0;
    while i < 8 {
        let mut j = 0;
        while j < 32 {
            t[i][j] = (2 * i + (j & 1)) as u8;
            j += 1;
        }
        i += 1;
    }
    t
};

const K6_SHUFFLE: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut i = 0;
    while i < 8 {
        let mut j = 0;
        while j < 16 {
            t[i][j] = (2 * i + j / 8) as u8;
            j += 1;
        }
        i += 1;
    }
    t
};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load256(p: &[u8; 32]) -> __m256i {
    // SAFETY: 32 bytes, one unaligned 256-bit load.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load256_i8(p: &[i8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: at least 32 bytes (checked), one unaligned 256-bit load.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load256_u8(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: at least 32 bytes (checked), one unaligned 256-bit load.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    // SAFETY: same features.
    let [r] = unsafe { q4_k_q8_k_xn::<1>(x, [y]) };
    r
}

/// Q4_K × Q8_K for one weight row and `N` activation rows: each result computed exactly as
/// ggml's single-row AVX2 kernel does (its own `acc`, `acc_m`, blocks in order); the weight
/// block's scales and nibbles are unpacked once for the `N` rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. Every `ys[j]` is as long as `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_k_q8_k_xn<const N: usize>(
    x: &[BlockQ4K],
    ys: [&[BlockQ8K]; N],
) -> [f32; N] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut acc_m = [_mm_setzero_ps(); N];
    for (i, xb) in x.iter().enumerate() {
        let xd = f16c(xb.d);
        let xdmin = f16c(xb.dmin);
        let mut utmp = [0u32; 4];
        for (k, u) in utmp.iter_mut().take(3).enumerate() {
            *u = u32::from_le_bytes([
                xb.scales[4 * k],
                xb.scales[4 * k + 1],
                xb.scales[4 * k + 2],
                xb.scales[4 * k + 3],
            ]);
        }
        utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
        let uaux = utmp[1] & KMASK1;
        utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
        utmp[2] = uaux;
        utmp[0] &= KMASK1;
        let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
            utmp[3] as i32,
            utmp[2] as i32,
            utmp[1] as i32,
            utmp[0] as i32,
        ));
        let mins = _mm256_extracti128_si256::<1>(mins_and_scales);
        let sc128 = _mm256_extracti128_si256::<0>(mins_and_scales);
        let scales = _mm256_set_m128i(sc128, sc128);
        let mut sl = [_mm256_setzero_si256(); 4];
        let mut sh = [_mm256_setzero_si256(); 4];
        let mut q4l = [_mm256_setzero_si256(); 4];
        let mut q4h = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            sl[j] = _mm256_shuffle_epi8(scales, load256(&K4_SHUFFLE[2 * j]));
            sh[j] = _mm256_shuffle_epi8(scales, load256(&K4_SHUFFLE[2 * j + 1]));
            let q4bits = load256_u8(&xb.qs[32 * j..]);
            q4l[j] = _mm256_and_si256(q4bits, m4);
            q4h[j] = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
        }
        for t in 0..N {
            let yb = &ys[t][i];
            let yd = f32::from_le_bytes(yb.d);
            let d = yd * xd;
            let dmin = -yd * xdmin;
            let mut bs = [0u8; 32];
            for (k, b) in yb.bsums.iter().enumerate() {
                bs[2 * k..2 * k + 2].copy_from_slice(b);
            }
            let q8sums = load256(&bs);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256::<0>(q8sums),
                _mm256_extracti128_si256::<1>(q8sums),
            );
            let prod = _mm_madd_epi16(mins, q8s);
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[t]);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q8l = load256_i8(&yb.qs[64 * j..]);
                let p16l = _mm256_madd_epi16(sl[j], _mm256_maddubs_epi16(q4l[j], q8l));
                let q8h = load256_i8(&yb.qs[64 * j + 32..]);
                let p16h = _mm256_madd_epi16(sh[j], _mm256_maddubs_epi16(q4h[j], q8h));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        let mut am = acc_m[t];
        am = _mm_add_ps(am, _mm_movehl_ps(am, am));
        am = _mm_add_ss(am, _mm_movehdup_ps(am));
        out[t] = hsum_float_8(acc[t]) + _mm_cvtss_f32(am);
    }
    out
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `x` and `y` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    // SAFETY: same features.
    let [r] = unsafe { q6_k_q8_k_xn::<1>(x, [y]) };
    r
}

/// Q6_K × Q8_K for one weight row and `N` activation rows, each result exactly as ggml's
/// single-row AVX2 kernel computes it; the weight block is unpacked once for the `N` rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. Every `ys[j]` is as long as `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6_k_q8_k_xn<const N: usize>(
    x: &[BlockQ6K],
    ys: [&[BlockQ8K]; N],
) -> [f32; N] {
    let m3 = _mm256_set1_epi8(3);
    let m15 = _mm256_set1_epi8(15);
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, xb) in x.iter().enumerate() {
        let xd = f16c(xb.d);
        let mut sc = [0u8; 16];
        for (s, &v) in sc.iter_mut().zip(&xb.scales) {
            *s = v as u8;
        }
        // SAFETY: 16 bytes, one unaligned 128-bit load.
        let scales = unsafe { _mm_loadu_si128(sc.as_ptr().cast()) };
        let scales_16 = _mm256_cvtepi8_epi16(scales);
        // The weight block unpacked: q4[j][k] for the two 128-value halves, and their scales.
        let mut q4 = [[_mm256_setzero_si256(); 4]; 2];
        let mut scl = [[_mm256_setzero_si256(); 4]; 2];
        for j in 0..2 {
            let q4bits1 = load256_u8(&xb.ql[64 * j..]);
            let q4bits2 = load256_u8(&xb.ql[64 * j + 32..]);
            let q4bits_h = load256_u8(&xb.qh[32 * j..]);
            let q4h_0 = _mm256_slli_epi16::<4>(_mm256_and_si256(q4bits_h, m3));
            let q4h_1 = _mm256_slli_epi16::<2>(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(12)));
            let q4h_2 = _mm256_and_si256(q4bits_h, _mm256_set1_epi8(48));
            let q4h_3 = _mm256_srli_epi16::<2>(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(-64)));
            q4[j][0] = _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0);
            q4[j][1] = _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1);
            q4[j][2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits1), m15),
                q4h_2,
            );
            q4[j][3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits2), m15),
                q4h_3,
            );
            for k in 0..4 {
                // SAFETY: 16 bytes, one unaligned 128-bit load.
                let m = unsafe { _mm_loadu_si128(K6_SHUFFLE[4 * j + k].as_ptr().cast()) };
                scl[j][k] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, m));
            }
        }
        for t in 0..N {
            let yb = &ys[t][i];
            let d = f32::from_le_bytes(yb.d) * xd;
            let mut bs = [0u8; 32];
            for (k, b) in yb.bsums.iter().enumerate() {
                bs[2 * k..2 * k + 2].copy_from_slice(b);
            }
            let q8sums = load256(&bs);
            let q8sclsub = _mm256_slli_epi32::<5>(_mm256_madd_epi16(q8sums, scales_16));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let q8 = &yb.qs[128 * j..];
                let p16_0 = _mm256_maddubs_epi16(q4[j][0], load256_i8(&q8[0..]));
                let p16_1 = _mm256_maddubs_epi16(q4[j][1], load256_i8(&q8[32..]));
                let p16_2 = _mm256_maddubs_epi16(q4[j][2], load256_i8(&q8[64..]));
                let p16_3 = _mm256_maddubs_epi16(q4[j][3], load256_i8(&q8[96..]));
                let p16_0 = _mm256_madd_epi16(scl[j][0], p16_0);
                let p16_1 = _mm256_madd_epi16(scl[j][1], p16_1);
                let p16_2 = _mm256_madd_epi16(scl[j][2], p16_2);
                let p16_3 = _mm256_madd_epi16(scl[j][3], p16_3);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_2, p16_3));
            }
            sumi = _mm256_sub_epi32(sumi, q8sclsub);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum_float_8(acc[t]);
    }
    out
}
