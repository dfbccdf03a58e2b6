//! K-quant prompt tiles: four Q4_K or Q6_K weight rows × four Q8_K activation rows (AVX-512
//! VNNI on 256-bit vectors, which also gives the 32 vector registers the 16 accumulators need).
//!
//! Each group of four weight rows is first rewritten ("packed", once per group and token
//! block, by [`pack_q4_k`] / [`pack_q6_k`]) into a layout the tile reads with plain loads:
//! every 32-value sub-block (chunk) of each row as 32 unsigned bytes, its scale as a vector of
//! 16-bit lanes, the block's f16 scales as f32. The tile then computes, for each (row, token)
//! pair, exactly the integers ggml's AVX2 vector dot computes — 8 lanes, lane `l` holding the
//! scaled sum of the products at offsets `4l..4l+4` of every chunk — with one `maddubs` and one
//! `vpdpwssd` per chunk (integer sums: their order does not matter, and no intermediate can
//! saturate: |q| <= 63, |y| <= 128, so a `maddubs` pair is at most 16 128), and then the f32
//! operations of that dot in the same order: `acc = fma(d, lanes, acc)` per block,
//! Q4_K's 4-lane min accumulator `acc_m = fma(dmin, mins·bsums, acc_m)`, `hsum_float_8`. Every
//! result is therefore bit-identical to `kquants::q4_k_q8_k` / `q6_k_q8_k` (tested, with
//! `arch::lane_model` as the scalar reference).

use std::arch::x86_64::*;

use super::{f16c, hsum_float_8};
use crate::quant::{blocks, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

/// Packed bytes of one Q4_K block of four rows: quants `[8 sub-blocks][4 rows][32]` (1024),
/// scales `[8][4]` as two copies of the 16-bit scale in a u32 (128), mins `[4 rows][8]` i16
/// (64), `d` `[4]` f32 (16), `dmin` `[4]` f32 (16).
pub(crate) const Q4K_PACKED: usize = 1248;
const Q4K_SC: usize = 1024;
const Q4K_MN: usize = 1152;
const Q4K_D: usize = 1216;
const Q4K_DM: usize = 1232;

/// Packed bytes of one Q6_K block of four rows: quants (0..63) `[8 chunks][4 rows][32]`
/// (1024), chunk scales `[8][4]` as 16 i16 lanes (8 × the first 16-value group's scale, 8 ×
/// the second's) (1024), `-32 × scale` of the 16 groups `[4 rows][16]` i16 (128), `d` `[4]`
/// f32 (16), padding to a multiple of 32 (16).
pub(crate) const Q6K_PACKED: usize = 2208;
const Q6K_SC: usize = 1024;
const Q6K_NB: usize = 2048;
const Q6K_D: usize = 2176;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: at least 32 bytes (checked), one unaligned 256-bit load.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store(p: &mut [u8], v: __m256i) {
    assert!(p.len() >= 32);
    // SAFETY: at least 32 bytes (checked), one unaligned 256-bit store.
    unsafe { _mm256_storeu_si256(p.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x4(p: &[u8]) -> __m128 {
    assert!(p.len() >= 16);
    // SAFETY: at least 16 bytes (checked), one unaligned 128-bit load.
    unsafe { _mm_loadu_ps(p.as_ptr().cast()) }
}

/// `acc + a.lo * b.lo + a.hi * b.hi` in 32-bit lanes (16-bit products): one VNNI instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn dpwssd_vnni(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

/// The same exact integers with AVX2 (`vpmaddwd`, then an add).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dpwssd_avx2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// Q4_K's 12 packed scale bytes as (8 scales, 8 mins), ggml's `utmp` unpacking.
fn q4_k_scales_mins(scales: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mut utmp = [0u32; 4];
    for (k, u) in utmp.iter_mut().take(3).enumerate() {
        *u = u32::from_le_bytes([
            scales[4 * k],
            scales[4 * k + 1],
            scales[4 * k + 2],
            scales[4 * k + 3],
        ]);
    }
    utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
    let uaux = utmp[1] & KMASK1;
    utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
    utmp[2] = uaux;
    utmp[0] &= KMASK1;
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&utmp[0].to_le_bytes());
    sc[4..].copy_from_slice(&utmp[1].to_le_bytes());
    mn[..4].copy_from_slice(&utmp[2].to_le_bytes());
    mn[4..].copy_from_slice(&utmp[3].to_le_bytes());
    (sc, mn)
}

/// Packs four Q4_K rows (`nb` blocks each) into `dst` (`nb * Q4K_PACKED` bytes).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pack_q4_k(rows: [&[BlockQ4K]; 4], dst: &mut [u8]) {
    let nb = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == nb) && dst.len() >= nb * Q4K_PACKED);
    let m4 = _mm256_set1_epi8(0xF);
    for (ib, pb) in dst.chunks_exact_mut(Q4K_PACKED).take(nb).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let xb = &row[ib];
            for j in 0..4 {
                let bits = load(&xb.qs[32 * j..]);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                store(&mut pb[(2 * j) * 128 + 32 * r..], lo);
                store(&mut pb[(2 * j + 1) * 128 + 32 * r..], hi);
            }
            let (sc, mn) = q4_k_scales_mins(&xb.scales);
            for s in 0..8 {
                let o = Q4K_SC + 16 * s + 4 * r;
                pb[o..o + 4].copy_from_slice(&(sc[s] as u32 * 0x0001_0001).to_le_bytes());
                let o = Q4K_MN + 16 * r + 2 * s;
                pb[o..o + 2].copy_from_slice(&(mn[s] as u16).to_le_bytes());
            }
            let o = Q4K_D + 4 * r;
            pb[o..o + 4].copy_from_slice(&f16c(xb.d).to_le_bytes());
            let o = Q4K_DM + 4 * r;
            pb[o..o + 4].copy_from_slice(&f16c(xb.dmin).to_le_bytes());
        }
    }
}

/// Lane `r` of `d4` in all 8 lanes of a 256-bit vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_bcast(d8: __m256, r: usize) -> __m256 {
    match r {
        0 => _mm256_permute_ps::<0x00>(d8),
        1 => _mm256_permute_ps::<0x55>(d8),
        2 => _mm256_permute_ps::<0xAA>(d8),
        _ => _mm256_permute_ps::<0xFF>(d8),
    }
}

/// ggml's reduction of Q4_K's 4-lane min accumulator: (0 + 2) + (1 + 3).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_float_4(am: __m128) -> f32 {
    let am = _mm_add_ps(am, _mm_movehl_ps(am, am));
    _mm_cvtss_f32(_mm_add_ss(am, _mm_movehdup_ps(am)))
}

/// Four packed Q4_K rows (`p`, from [`pack_q4_k`]) × four Q8_K rows: `out[r][t]` is
/// bit-identical to `kquants::q4_k_q8_k(row r, ys[t])`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI and VL.
macro_rules! q4_k_tile_fn {
    ($name:ident, $features:literal, $dp:ident) => {
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(p: &[u8], ys: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
            let nb = ys[0].len();
            assert!(ys.iter().all(|y| y.len() == nb) && p.len() >= nb * Q4K_PACKED);
            let mut acc = [[_mm256_setzero_ps(); 4]; 4];
            // [t][rows 0, 1 | rows 2, 3]: each 128-bit half is one pair's 4-lane `acc_m`.
            let mut acc_m = [[_mm256_setzero_ps(); 2]; 4];
            let idx_lo = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            let idx_hi = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
            for ib in 0..nb {
                let pb = &p[ib * Q4K_PACKED..(ib + 1) * Q4K_PACKED];
                let yb: [&BlockQ8K; 4] = std::array::from_fn(|t| &ys[t][ib]);
                let mut sumi = [[_mm256_setzero_si256(); 4]; 4];
                for s in 0..8 {
                    let q: [__m256i; 4] = std::array::from_fn(|r| load(&pb[128 * s + 32 * r..]));
                    let sc: [__m256i; 4] = std::array::from_fn(|r| {
                        let o = Q4K_SC + 16 * s + 4 * r;
                        _mm256_set1_epi32(i32::from_le_bytes([
                            pb[o],
                            pb[o + 1],
                            pb[o + 2],
                            pb[o + 3],
                        ]))
                    });
                    for t in 0..4 {
                        // SAFETY: `qs` is 256 bytes; 32 * s + 32 <= 256.
                        let y = unsafe { _mm256_loadu_si256(yb[t].qs.as_ptr().add(32 * s).cast()) };
                        for r in 0..4 {
                            let p16 = _mm256_maddubs_epi16(q[r], y);
                            sumi[r][t] = $dp(sumi[r][t], p16, sc[r]);
                        }
                    }
                }
                let xd = load_f32x4(&pb[Q4K_D..]);
                let xdmin = _mm256_castps128_ps256(load_f32x4(&pb[Q4K_DM..]));
                let mins01 = load(&pb[Q4K_MN..]);
                let mins23 = load(&pb[Q4K_MN + 32..]);
                for t in 0..4 {
                    let yd = f32::from_le_bytes(yb[t].d);
                    // ggml: d = y.d * x.d, dmin = -y.d * x.dmin (one rounding each, lane-wise here).
                    let d4 = _mm_mul_ps(_mm_set1_ps(yd), xd);
                    let dm = _mm256_mul_ps(_mm256_set1_ps(-yd), xdmin);
                    // SAFETY: `bsums` is 16 i16 = 32 bytes.
                    let q8sums = unsafe { _mm256_loadu_si256(yb[t].bsums.as_ptr().cast()) };
                    let q8s = _mm_hadd_epi16(
                        _mm256_castsi256_si128(q8sums),
                        _mm256_extracti128_si256::<1>(q8sums),
                    );
                    let q8s = _mm256_set_m128i(q8s, q8s);
                    let prod01 = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins01, q8s));
                    let prod23 = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins23, q8s));
                    let dm01 = _mm256_permutevar8x32_ps(dm, idx_lo);
                    let dm23 = _mm256_permutevar8x32_ps(dm, idx_hi);
                    acc_m[t][0] = _mm256_fmadd_ps(dm01, prod01, acc_m[t][0]);
                    acc_m[t][1] = _mm256_fmadd_ps(dm23, prod23, acc_m[t][1]);
                    let d8 = _mm256_set_m128(d4, d4);
                    for r in 0..4 {
                        let d = lane_bcast(d8, r);
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
                    }
                }
            }
            let mut out = [[0.0f32; 4]; 4];
            for t in 0..4 {
                let am = [
                    _mm256_castps256_ps128(acc_m[t][0]),
                    _mm256_extractf128_ps::<1>(acc_m[t][0]),
                    _mm256_castps256_ps128(acc_m[t][1]),
                    _mm256_extractf128_ps::<1>(acc_m[t][1]),
                ];
                for r in 0..4 {
                    out[r][t] = hsum_float_8(acc[r][t]) + hsum_float_4(am[r]);
                }
            }
            out
        }
    };
}
q4_k_tile_fn!(q4_k_tile, "avx2,fma,f16c,avx512vnni,avx512vl", dpwssd_vnni);
q4_k_tile_fn!(q4_k_tile_avx2, "avx2,fma,f16c", dpwssd_avx2);

/// Packs four Q6_K rows (`nb` blocks each) into `dst` (`nb * Q6K_PACKED` bytes).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pack_q6_k(rows: [&[BlockQ6K]; 4], dst: &mut [u8]) {
    let nb = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == nb) && dst.len() >= nb * Q6K_PACKED);
    let m3 = _mm256_set1_epi8(3);
    let m15 = _mm256_set1_epi8(15);
    for (ib, pb) in dst.chunks_exact_mut(Q6K_PACKED).take(nb).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let xb = &row[ib];
            for j in 0..2 {
                let q4bits1 = load(&xb.ql[64 * j..]);
                let q4bits2 = load(&xb.ql[64 * j + 32..]);
                let q4bits_h = load(&xb.qh[32 * j..]);
                let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(q4bits_h, m3));
                let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(12)));
                let h2 = _mm256_and_si256(q4bits_h, _mm256_set1_epi8(48));
                let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(-64)));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(q4bits1, m15), h0),
                    _mm256_or_si256(_mm256_and_si256(q4bits2, m15), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits1), m15), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits2), m15), h3),
                ];
                for (k, qk) in q.into_iter().enumerate() {
                    store(&mut pb[(4 * j + k) * 128 + 32 * r..], qk);
                }
            }
            let mut sc = [0u8; 16];
            for (s, &v) in sc.iter_mut().zip(&xb.scales) {
                *s = v as u8;
            }
            // SAFETY: 16 bytes, one unaligned 128-bit load.
            let scales = unsafe { _mm_loadu_si128(sc.as_ptr().cast()) };
            for c in 0..8 {
                // Bytes 2c (8 times) then 2c + 1 (8 times), sign-extended to i16.
                let m = _mm_setr_epi8(
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                    2 * c as i8 + 1,
                );
                let v = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, m));
                store(&mut pb[Q6K_SC + 128 * c + 32 * r..], v);
            }
            // -32 × scale: |.| <= 4096, an i16.
            let neg = _mm256_sub_epi16(
                _mm256_setzero_si256(),
                _mm256_slli_epi16::<5>(_mm256_cvtepi8_epi16(scales)),
            );
            store(&mut pb[Q6K_NB + 32 * r..], neg);
            let o = Q6K_D + 4 * r;
            pb[o..o + 4].copy_from_slice(&f16c(xb.d).to_le_bytes());
        }
    }
}

/// Four packed Q6_K rows (`p`, from [`pack_q6_k`]) × four Q8_K rows: `out[r][t]` is
/// bit-identical to `kquants::q6_k_q8_k(row r, ys[t])`. ggml's `- 32 * (bsums · scales)` lane
/// term is the accumulators' starting value.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI and VL.
macro_rules! q6_k_tile_fn {
    ($name:ident, $features:literal, $dp:ident) => {
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(p: &[u8], ys: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
            let nb = ys[0].len();
            assert!(ys.iter().all(|y| y.len() == nb) && p.len() >= nb * Q6K_PACKED);
            let mut acc = [[_mm256_setzero_ps(); 4]; 4];
            for ib in 0..nb {
                let pb = &p[ib * Q6K_PACKED..(ib + 1) * Q6K_PACKED];
                let yb: [&BlockQ8K; 4] = std::array::from_fn(|t| &ys[t][ib]);
                let mut sumi = [[_mm256_setzero_si256(); 4]; 4];
                let neg: [__m256i; 4] = std::array::from_fn(|r| load(&pb[Q6K_NB + 32 * r..]));
                for t in 0..4 {
                    // SAFETY: `bsums` is 16 i16 = 32 bytes.
                    let q8sums = unsafe { _mm256_loadu_si256(yb[t].bsums.as_ptr().cast()) };
                    for r in 0..4 {
                        sumi[r][t] = _mm256_madd_epi16(q8sums, neg[r]);
                    }
                }
                for c in 0..8 {
                    let q: [__m256i; 4] = std::array::from_fn(|r| load(&pb[128 * c + 32 * r..]));
                    let sc: [__m256i; 4] =
                        std::array::from_fn(|r| load(&pb[Q6K_SC + 128 * c + 32 * r..]));
                    for t in 0..4 {
                        // SAFETY: `qs` is 256 bytes; 32 * c + 32 <= 256.
                        let y = unsafe { _mm256_loadu_si256(yb[t].qs.as_ptr().add(32 * c).cast()) };
                        for r in 0..4 {
                            let p16 = _mm256_maddubs_epi16(q[r], y);
                            sumi[r][t] = $dp(sumi[r][t], p16, sc[r]);
                        }
                    }
                }
                let xd = load_f32x4(&pb[Q6K_D..]);
                for t in 0..4 {
                    let d4 = _mm_mul_ps(_mm_set1_ps(f32::from_le_bytes(yb[t].d)), xd);
                    let d8 = _mm256_set_m128(d4, d4);
                    for r in 0..4 {
                        let d = lane_bcast(d8, r);
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
                    }
                }
            }
            let mut out = [[0.0f32; 4]; 4];
            for r in 0..4 {
                for t in 0..4 {
                    out[r][t] = hsum_float_8(acc[r][t]);
                }
            }
            out
        }
    };
}
q6_k_tile_fn!(q6_k_tile, "avx2,fma,f16c,avx512vnni,avx512vl", dpwssd_vnni);
q6_k_tile_fn!(q6_k_tile_avx2, "avx2,fma,f16c", dpwssd_avx2);

/// Table entry: packs four Q4_K rows (AVX2, FMA and F16C detected by `install`).
pub(super) fn pack4_q4_k(w: [&[u8]; 4], dst: &mut [u8]) {
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { pack_q4_k(w.map(blocks::<BlockQ4K>), dst) }
}

/// Table entry: packs four Q6_K rows (AVX2, FMA and F16C detected by `install`).
pub(super) fn pack4_q6_k(w: [&[u8]; 4], dst: &mut [u8]) {
    // SAFETY: as above.
    unsafe { pack_q6_k(w.map(blocks::<BlockQ6K>), dst) }
}

/// Table entry: packed Q4_K tile (AVX2, FMA, F16C, AVX-512 VNNI and VL detected by `install`).
pub(super) fn tile_q4_k(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    let ys = a.map(blocks::<BlockQ8K>);
    // SAFETY: as above.
    unsafe { q4_k_tile(p, ys) }
}

/// Table entry: packed Q6_K tile (AVX2, FMA, F16C, AVX-512 VNNI and VL detected by `install`).
pub(super) fn tile_q6_k(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    let ys = a.map(blocks::<BlockQ8K>);
    // SAFETY: as above.
    unsafe { q6_k_tile(p, ys) }
}

/// Packed bytes of one Q5_K block of four rows: quants (0..31) `[8 sub-blocks][4 rows][32]`,
/// each sub-block permuted so that bytes `4l..4l+4` hold elements `l, l+8, l+16, l+24` (1024);
/// scales `[8][4]` as two copies of the 16-bit scale in a u32 (128); `mins[g / 2]` for the 16
/// activation groups `[4 rows][16]` i16 (128); `d` `[4]` f32 (16); `dmin` `[4]` f32 (16).
pub(crate) const Q5K_PACKED: usize = 1312;
const Q5K_SC: usize = 1024;
const Q5K_MN: usize = 1152;
const Q5K_D: usize = 1280;
const Q5K_DM: usize = 1296;

/// Byte `p` of a permuted 32-value sub-block is element `Q5K_PERM[p]` (`p = 4l + k` holds
/// element `8k + l`): each 32-bit lane then sums exactly the elements the scalar dot's lane
/// `l` (`aux32[l]`) sums.
const Q5K_PERM: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut p = 0;
    while p < 32 {
        t[p] = (8 * (p % 4) + p / 4) as u8;
        p += 1;
    }
    t
};

/// Packs four Q5_K rows (`nb` blocks each) into `dst` (`nb * Q5K_PACKED` bytes).
pub(crate) fn pack_q5_k(rows: [&[BlockQ5K]; 4], dst: &mut [u8]) {
    let nb = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == nb) && dst.len() >= nb * Q5K_PACKED);
    let mut a = [0u8; 256];
    for (ib, pb) in dst.chunks_exact_mut(Q5K_PACKED).take(nb).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let xb = &row[ib];
            crate::quant::q5_k::unpack_quants(xb, &mut a);
            for j in 0..8 {
                let o = 128 * j + 32 * r;
                for (p, &e) in Q5K_PERM.iter().enumerate() {
                    pb[o + p] = a[32 * j + e as usize];
                }
                let (sc, m) = crate::quant::scale_min_k4(j, &xb.scales);
                let o = Q5K_SC + 16 * j + 4 * r;
                pb[o..o + 4].copy_from_slice(&(sc as u32 * 0x0001_0001).to_le_bytes());
                for g in [2 * j, 2 * j + 1] {
                    let o = Q5K_MN + 32 * r + 2 * g;
                    pb[o..o + 2].copy_from_slice(&(m as u16).to_le_bytes());
                }
            }
            let o = Q5K_D + 4 * r;
            pb[o..o + 4]
                .copy_from_slice(&crate::f16_to_f32(u16::from_le_bytes(xb.d)).to_le_bytes());
            let o = Q5K_DM + 4 * r;
            pb[o..o + 4]
                .copy_from_slice(&crate::f16_to_f32(u16::from_le_bytes(xb.dmin)).to_le_bytes());
        }
    }
}

/// Four packed Q5_K rows (`p`, from [`pack_q5_k`]) × four Q8_K rows: `out[r][t]` is
/// bit-identical to the scalar `quant::q5_k::vec_dot(row r, ys[t])` (the table's Q5_K dot on
/// x86-64): per block, `sums[l] += d * aux32[l]` (a multiply, then an add) in 8 lanes and
/// `sumf -= dmin * sumi` (the min term, one lane per row); at the end `sumf += sums[l]` for
/// `l` in order. The activations are permuted like the weights with one `vpermb` per chunk.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI, VL and VBMI.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512vbmi")]
pub(crate) unsafe fn q5_k_tile(p: &[u8], ys: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
    let nb = ys[0].len();
    assert!(ys.iter().all(|y| y.len() == nb) && p.len() >= nb * Q5K_PACKED);
    // SAFETY: 32 bytes, one unaligned 256-bit load.
    let perm = unsafe { _mm256_loadu_si256(Q5K_PERM.as_ptr().cast()) };
    let mut sums = [[_mm256_setzero_ps(); 4]; 4];
    // [t]: lane r is row r's `sumf`.
    let mut sumf = [_mm_setzero_ps(); 4];
    for ib in 0..nb {
        let pb = &p[ib * Q5K_PACKED..(ib + 1) * Q5K_PACKED];
        let yb: [&BlockQ8K; 4] = std::array::from_fn(|t| &ys[t][ib]);
        let mut aux = [[_mm256_setzero_si256(); 4]; 4];
        for j in 0..8 {
            let q: [__m256i; 4] = std::array::from_fn(|r| load(&pb[128 * j + 32 * r..]));
            let sc: [__m256i; 4] = std::array::from_fn(|r| {
                let o = Q5K_SC + 16 * j + 4 * r;
                _mm256_set1_epi32(i32::from_le_bytes([pb[o], pb[o + 1], pb[o + 2], pb[o + 3]]))
            });
            for t in 0..4 {
                // SAFETY: `qs` is 256 bytes; 32 * j + 32 <= 256.
                let y = unsafe { _mm256_loadu_si256(yb[t].qs.as_ptr().add(32 * j).cast()) };
                let y = _mm256_permutexvar_epi8(perm, y);
                for r in 0..4 {
                    let p16 = _mm256_maddubs_epi16(q[r], y);
                    aux[r][t] = _mm256_dpwssd_epi32(aux[r][t], p16, sc[r]);
                }
            }
        }
        let xd = load_f32x4(&pb[Q5K_D..]);
        let xdmin = load_f32x4(&pb[Q5K_DM..]);
        let mn: [__m256i; 4] = std::array::from_fn(|r| load(&pb[Q5K_MN + 32 * r..]));
        for t in 0..4 {
            let yd = f32::from_le_bytes(yb[t].d);
            // SAFETY: `bsums` is 16 i16 = 32 bytes.
            let bs = unsafe { _mm256_loadu_si256(yb[t].bsums.as_ptr().cast()) };
            // sumi of each row: sum over the 16 groups of bsum * min (exact integers).
            let m: [__m256i; 4] = std::array::from_fn(|r| _mm256_madd_epi16(bs, mn[r]));
            let sumi = hsum_i32x8x4(m);
            // sumf -= dmin * sumi, dmin = x.dmin * y.d.
            let dmin = _mm_mul_ps(xdmin, _mm_set1_ps(yd));
            sumf[t] = _mm_sub_ps(sumf[t], _mm_mul_ps(dmin, _mm_cvtepi32_ps(sumi)));
            let d4 = _mm_mul_ps(xd, _mm_set1_ps(yd));
            let d8 = _mm256_set_m128(d4, d4);
            for r in 0..4 {
                let d = lane_bcast(d8, r);
                let prod = _mm256_mul_ps(d, _mm256_cvtepi32_ps(aux[r][t]));
                sums[r][t] = _mm256_add_ps(sums[r][t], prod);
            }
        }
    }
    let mut out = [[0.0f32; 4]; 4];
    for t in 0..4 {
        let mut sf = [0.0f32; 4];
        // SAFETY: 4 f32, one unaligned 128-bit store.
        unsafe { _mm_storeu_ps(sf.as_mut_ptr(), sumf[t]) };
        for r in 0..4 {
            let mut l8 = [0.0f32; 8];
            // SAFETY: 8 f32, one unaligned 256-bit store.
            unsafe { _mm256_storeu_ps(l8.as_mut_ptr(), sums[r][t]) };
            let mut v = sf[r];
            for x in l8 {
                v += x;
            }
            out[r][t] = v;
        }
    }
    out
}

/// Table entry: packs four Q5_K rows.
pub(super) fn pack4_q5_k(w: [&[u8]; 4], dst: &mut [u8]) {
    pack_q5_k(w.map(blocks::<BlockQ5K>), dst)
}

/// Table entry: packed Q5_K tile (AVX2, FMA, F16C, AVX-512 VNNI, VL and VBMI detected by
/// `install`).
pub(super) fn tile_q5_k(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    let ys = a.map(blocks::<BlockQ8K>);
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q5_k_tile(p, ys) }
}

/// Packed bytes of one Q2_K block of four rows: quants (0..3) `[8 chunks][4 rows][32]` in
/// element order (1024); group scales `[8][4]` as 16 i16 lanes (8 × the chunk's first 16-value
/// group's scale, 8 × the second's) (1024); the 16 group mins `[4 rows][16]` i16 (128); `d`
/// `[4]` f32 (16); `dmin` `[4]` f32 (16).
pub(crate) const Q2K_PACKED: usize = 2208;
const Q2K_SC: usize = 1024;
const Q2K_MN: usize = 2048;
const Q2K_D: usize = 2176;
const Q2K_DM: usize = 2192;

/// Packs four Q2_K rows (`nb` blocks each) into `dst` (`nb * Q2K_PACKED` bytes).
pub(crate) fn pack_q2_k(rows: [&[BlockQ2K]; 4], dst: &mut [u8]) {
    let nb = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == nb) && dst.len() >= nb * Q2K_PACKED);
    for (ib, pb) in dst.chunks_exact_mut(Q2K_PACKED).take(nb).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let xb = &row[ib];
            for c in 0..8 {
                // Chunk c: elements 32c.., the bits at 2 * (c % 4) of bytes 32 * (c / 4)...
                let (k, shift) = (c / 4, 2 * (c % 4));
                let o = 128 * c + 32 * r;
                for l in 0..32 {
                    pb[o + l] = (xb.qs[32 * k + l] >> shift) & 3;
                }
                let o = Q2K_SC + 128 * c + 32 * r;
                for (h, g) in [2 * c, 2 * c + 1].into_iter().enumerate() {
                    let v = ((xb.scales[g] & 0xF) as u16).to_le_bytes();
                    for e in 0..8 {
                        pb[o + 16 * h + 2 * e..o + 16 * h + 2 * e + 2].copy_from_slice(&v);
                    }
                }
            }
            for g in 0..16 {
                let o = Q2K_MN + 32 * r + 2 * g;
                pb[o..o + 2].copy_from_slice(&((xb.scales[g] >> 4) as u16).to_le_bytes());
            }
            let o = Q2K_D + 4 * r;
            pb[o..o + 4]
                .copy_from_slice(&crate::f16_to_f32(u16::from_le_bytes(xb.d)).to_le_bytes());
            let o = Q2K_DM + 4 * r;
            pb[o..o + 4]
                .copy_from_slice(&crate::f16_to_f32(u16::from_le_bytes(xb.dmin)).to_le_bytes());
        }
    }
}

/// The sums of the 8 lanes of each of four vectors (exact integers), as four lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32x8x4(m: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(m[0], m[1]), _mm256_hadd_epi32(m[2], m[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Four packed Q2_K rows (`p`, from [`pack_q2_k`]) × four Q8_K rows: `out[r][t]` is
/// bit-identical to the scalar `quant::q2_k::vec_dot(row r, ys[t])` (the table's Q2_K dot):
/// per block the exact integers `isum` (scaled group dots) and `summs` (bsums × mins), then
/// `sumf += dall * isum - dmin * summs`, one lane per row.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI and VL.
macro_rules! q2_k_tile_fn {
    ($name:ident, $features:literal, $dp:ident) => {
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(p: &[u8], ys: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
            let nb = ys[0].len();
            assert!(ys.iter().all(|y| y.len() == nb) && p.len() >= nb * Q2K_PACKED);
            // [t]: lane r is row r's `sumf`.
            let mut sumf = [_mm_setzero_ps(); 4];
            for ib in 0..nb {
                let pb = &p[ib * Q2K_PACKED..(ib + 1) * Q2K_PACKED];
                let yb: [&BlockQ8K; 4] = std::array::from_fn(|t| &ys[t][ib]);
                let mut isum = [[_mm256_setzero_si256(); 4]; 4];
                for c in 0..8 {
                    let q: [__m256i; 4] = std::array::from_fn(|r| load(&pb[128 * c + 32 * r..]));
                    let sc: [__m256i; 4] =
                        std::array::from_fn(|r| load(&pb[Q2K_SC + 128 * c + 32 * r..]));
                    for t in 0..4 {
                        // SAFETY: `qs` is 256 bytes; 32 * c + 32 <= 256.
                        let y = unsafe { _mm256_loadu_si256(yb[t].qs.as_ptr().add(32 * c).cast()) };
                        for r in 0..4 {
                            let p16 = _mm256_maddubs_epi16(q[r], y);
                            isum[r][t] = $dp(isum[r][t], p16, sc[r]);
                        }
                    }
                }
                let xd = load_f32x4(&pb[Q2K_D..]);
                let xdmin = load_f32x4(&pb[Q2K_DM..]);
                let mn: [__m256i; 4] = std::array::from_fn(|r| load(&pb[Q2K_MN + 32 * r..]));
                for t in 0..4 {
                    let yd = _mm_set1_ps(f32::from_le_bytes(yb[t].d));
                    // SAFETY: `bsums` is 16 i16 = 32 bytes.
                    let bs = unsafe { _mm256_loadu_si256(yb[t].bsums.as_ptr().cast()) };
                    let summs = hsum_i32x8x4(std::array::from_fn(|r| _mm256_madd_epi16(bs, mn[r])));
                    let is = hsum_i32x8x4(std::array::from_fn(|r| isum[r][t]));
                    // dall = y.d * x.d, dmin = y.d * x.dmin.
                    let a = _mm_mul_ps(_mm_mul_ps(yd, xd), _mm_cvtepi32_ps(is));
                    let b = _mm_mul_ps(_mm_mul_ps(yd, xdmin), _mm_cvtepi32_ps(summs));
                    sumf[t] = _mm_add_ps(sumf[t], _mm_sub_ps(a, b));
                }
            }
            let mut out = [[0.0f32; 4]; 4];
            for t in 0..4 {
                let mut sf = [0.0f32; 4];
                // SAFETY: 4 f32, one unaligned 128-bit store.
                unsafe { _mm_storeu_ps(sf.as_mut_ptr(), sumf[t]) };
                for r in 0..4 {
                    out[r][t] = sf[r];
                }
            }
            out
        }
    };
}
q2_k_tile_fn!(q2_k_tile, "avx2,fma,f16c,avx512vnni,avx512vl", dpwssd_vnni);
q2_k_tile_fn!(q2_k_tile_avx2, "avx2,fma,f16c", dpwssd_avx2);

/// Table entry: packs four Q2_K rows.
pub(super) fn pack4_q2_k(w: [&[u8]; 4], dst: &mut [u8]) {
    pack_q2_k(w.map(blocks::<BlockQ2K>), dst)
}

/// Table entry: packed Q2_K tile (AVX2, FMA, F16C, AVX-512 VNNI and VL detected by `install`).
pub(super) fn tile_q2_k(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    let ys = a.map(blocks::<BlockQ8K>);
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q2_k_tile(p, ys) }
}

/// Packed bytes of one Q3_K block of four rows: the quants times their group scale
/// (`(scale - 32) * q`, in -124..=128) as i16, `[8 chunks][4 rows][2][16]` (2048): per chunk
/// of 32 values, half 0 holds elements `m, m + 8` (m = 0..8) at i16 positions `2m, 2m + 1`,
/// half 1 elements `16 + m, 24 + m`, so that 32-bit lane `m` of both sums exactly the elements
/// the scalar dot's lane `m` (`aux32[m]`) sums; then `d` `[4]` f32 (16), padding (16).
pub(crate) const Q3K_PACKED: usize = 2080;
const Q3K_D: usize = 2048;

/// In-lane byte shuffle of an activation chunk into the i8 order of [`Q3K_PACKED`]'s halves
/// (byte `p` of each 128-bit half takes byte `(p % 2) * 8 + p / 2`).
const Q3K_SHUF: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut p = 0;
    while p < 32 {
        let q = p % 16;
        t[p] = ((q % 2) * 8 + q / 2) as u8;
        p += 1;
    }
    t
};

/// Packs four Q3_K rows (`nb` blocks each) into `dst` (`nb * Q3K_PACKED` bytes).
pub(crate) fn pack_q3_k(rows: [&[BlockQ3K]; 4], dst: &mut [u8]) {
    let nb = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == nb) && dst.len() >= nb * Q3K_PACKED);
    let mut a = [0i8; 256];
    for (ib, pb) in dst.chunks_exact_mut(Q3K_PACKED).take(nb).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let xb = &row[ib];
            crate::quant::q3_k::unpack_quants(xb, &mut a);
            let scales = crate::quant::q3_k::unpack_scales(&xb.scales);
            for c in 0..8 {
                for h in 0..2 {
                    let sc = scales[2 * c + h] as i16 - 32;
                    // i16 index of the half's first value.
                    let o = ((4 * c + r) * 2 + h) * 16;
                    for m in 0..8 {
                        for k in 0..2 {
                            let e = 32 * c + 16 * h + 8 * k + m;
                            let v = (sc * a[e] as i16).to_le_bytes();
                            let at = 2 * (o + 2 * m + k);
                            pb[at..at + 2].copy_from_slice(&v);
                        }
                    }
                }
            }
            let o = Q3K_D + 4 * r;
            pb[o..o + 4]
                .copy_from_slice(&crate::f16_to_f32(u16::from_le_bytes(xb.d)).to_le_bytes());
        }
    }
}

/// Four packed Q3_K rows (`p`, from [`pack_q3_k`]) × four Q8_K rows: `out[r][t]` is
/// bit-identical to the scalar `quant::q3_k::vec_dot(row r, ys[t])` (the table's Q3_K dot):
/// per block `sums[l] += d * aux32[l]` (a multiply, then an add) in 8 lanes, and at the end
/// `0 + sums[0] + ... + sums[7]` in order. Two `vpdpwssd` per chunk on 16-bit values.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 VNNI and VL.
macro_rules! q3_k_tile_fn {
    ($name:ident, $features:literal, $dp:ident) => {
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(p: &[u8], ys: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
            let nb = ys[0].len();
            assert!(ys.iter().all(|y| y.len() == nb) && p.len() >= nb * Q3K_PACKED);
            // SAFETY: 32 bytes, one unaligned 256-bit load.
            let shuf = unsafe { _mm256_loadu_si256(Q3K_SHUF.as_ptr().cast()) };
            let mut sums = [[_mm256_setzero_ps(); 4]; 4];
            for ib in 0..nb {
                let pb = &p[ib * Q3K_PACKED..(ib + 1) * Q3K_PACKED];
                let yb: [&BlockQ8K; 4] = std::array::from_fn(|t| &ys[t][ib]);
                let mut aux = [[_mm256_setzero_si256(); 4]; 4];
                for c in 0..8 {
                    let w: [[__m256i; 2]; 4] = std::array::from_fn(|r| {
                        [
                            load(&pb[256 * c + 64 * r..]),
                            load(&pb[256 * c + 64 * r + 32..]),
                        ]
                    });
                    for t in 0..4 {
                        // SAFETY: `qs` is 256 bytes; 32 * c + 32 <= 256.
                        let y = unsafe { _mm256_loadu_si256(yb[t].qs.as_ptr().add(32 * c).cast()) };
                        let y = _mm256_shuffle_epi8(y, shuf);
                        let y0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(y));
                        let y1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(y));
                        for r in 0..4 {
                            aux[r][t] = $dp(aux[r][t], w[r][0], y0);
                            aux[r][t] = $dp(aux[r][t], w[r][1], y1);
                        }
                    }
                }
                let xd = load_f32x4(&pb[Q3K_D..]);
                for t in 0..4 {
                    let d4 = _mm_mul_ps(xd, _mm_set1_ps(f32::from_le_bytes(yb[t].d)));
                    let d8 = _mm256_set_m128(d4, d4);
                    for r in 0..4 {
                        let d = lane_bcast(d8, r);
                        let prod = _mm256_mul_ps(d, _mm256_cvtepi32_ps(aux[r][t]));
                        sums[r][t] = _mm256_add_ps(sums[r][t], prod);
                    }
                }
            }
            let mut out = [[0.0f32; 4]; 4];
            for t in 0..4 {
                for r in 0..4 {
                    let mut l8 = [0.0f32; 8];
                    // SAFETY: 8 f32, one unaligned 256-bit store.
                    unsafe { _mm256_storeu_ps(l8.as_mut_ptr(), sums[r][t]) };
                    let mut v = 0.0f32;
                    for x in l8 {
                        v += x;
                    }
                    out[r][t] = v;
                }
            }
            out
        }
    };
}
q3_k_tile_fn!(q3_k_tile, "avx2,fma,f16c,avx512vnni,avx512vl", dpwssd_vnni);
q3_k_tile_fn!(q3_k_tile_avx2, "avx2,fma,f16c", dpwssd_avx2);

/// Table entry: packs four Q3_K rows.
pub(super) fn pack4_q3_k(w: [&[u8]; 4], dst: &mut [u8]) {
    pack_q3_k(w.map(blocks::<BlockQ3K>), dst)
}

/// Table entry: packed Q3_K tile (AVX2, FMA, F16C, AVX-512 VNNI and VL detected by `install`).
pub(super) fn tile_q3_k(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    let ys = a.map(blocks::<BlockQ8K>);
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q3_k_tile(p, ys) }
}

/// Table entries of the AVX2 forms (16-bit products summed with `vpmaddwd` + add instead of
/// `vpdpwssd`: the same integers; AVX2, FMA and F16C detected by `install`), for CPUs without
/// AVX-512 VNNI.
pub(super) fn tile_q4_k_avx2(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: `install` put this function in the table only after detecting the features.
    unsafe { q4_k_tile_avx2(p, a.map(blocks::<BlockQ8K>)) }
}

/// See [`tile_q4_k_avx2`].
pub(super) fn tile_q6_k_avx2(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: as above.
    unsafe { q6_k_tile_avx2(p, a.map(blocks::<BlockQ8K>)) }
}

/// See [`tile_q4_k_avx2`].
pub(super) fn tile_q2_k_avx2(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: as above.
    unsafe { q2_k_tile_avx2(p, a.map(blocks::<BlockQ8K>)) }
}

/// See [`tile_q4_k_avx2`].
pub(super) fn tile_q3_k_avx2(p: &[u8], a: [&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: as above.
    unsafe { q3_k_tile_avx2(p, a.map(blocks::<BlockQ8K>)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::lane_model::{self, inputs};
    use crate::testutil::lcg;
    use crate::GgmlType;

    /// Whether this CPU runs the tiles (says so when it does not).
    fn tiles_available() -> bool {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl");
        if !ok {
            eprintln!("skipped: CPU lacks AVX-512 VNNI/VL (the K-quant tiles are not installed)");
        }
        ok
    }

    /// Weight rows with the extremes of each format in some blocks: Q4_K all quants 15 with
    /// scales and mins 63 (every byte 0xFF), or all 0; Q6_K all quants 63 with group scales
    /// -128 or 127, or all quants 0.
    fn edge_weights(ty: GgmlType, n: usize, s: &mut u64) -> Vec<u8> {
        let mut w = inputs::weights(ty, n, s);
        let ts = ty.type_size();
        for b in w.chunks_exact_mut(ts) {
            match (ty, lcg(s) % 4) {
                (GgmlType::Q4_K, 0) => b[4..].fill(0xFF),
                (GgmlType::Q4_K, 1) => b[4..].fill(0x00),
                (GgmlType::Q6_K, 0) => {
                    b[..192].fill(0xFF);
                    let sc = if lcg(s).is_multiple_of(2) { 0x80 } else { 0x7F };
                    b[192..208].fill(sc);
                }
                (GgmlType::Q6_K, 1) => b[..192].fill(0x00),
                (GgmlType::Q5_K, 0) => b[4..].fill(0xFF),
                (GgmlType::Q5_K, 1) => b[4..].fill(0x00),
                (GgmlType::Q2_K, 0) => b[..80].fill(0xFF),
                (GgmlType::Q2_K, 1) => b[16..80].fill(0x00),
                // Quants all -4 (high bits clear) with scales 0 (-32): products of 128.
                (GgmlType::Q3_K, 0) => b[..108].fill(0x00),
                (GgmlType::Q3_K, 1) => b[..108].fill(0xFF),
                _ => {}
            }
            // d and dmin where the helper sets only one f16 field: small and finite.
            let f16_fields: &[usize] = match ty {
                GgmlType::Q5_K => &[2],
                GgmlType::Q2_K => &[80, 82],
                GgmlType::Q3_K => &[108],
                _ => &[],
            };
            for &o in f16_fields {
                let v = (lcg(s) as f32 / (1u64 << 31) as f32 - 0.5) * 0.05;
                b[o..o + 2].copy_from_slice(&crate::f32_to_f16(v).to_le_bytes());
            }
        }
        w
    }

    /// Activation rows: random (some with a zero block and large values), and some with every
    /// quant -128 (all inputs equal and negative) or +127.
    fn edge_activations(n: usize, s: &mut u64) -> Vec<u8> {
        match lcg(s) % 5 {
            0 | 1 => {
                let v = if lcg(s).is_multiple_of(2) { -3.0 } else { 3.0 };
                let x = vec![v; n];
                let mut a = vec![0u8; crate::row_bytes(GgmlType::Q8_K, n).expect("bytes")];
                crate::Kernels::scalar()
                    .quantize_activation(GgmlType::Q8_K, &x, &mut a)
                    .expect("quantize");
                a
            }
            _ => inputs::activations(GgmlType::Q8_K, n, s),
        }
    }

    /// Q5_K, Q2_K and Q3_K: every element of the packed tiles equals the table's dot (the
    /// scalar reference on x86-64) bit for bit.
    #[test]
    fn q5_k_q2_k_q3_k_tiles_match_scalar_dots() {
        if !tiles_available() {
            return;
        }
        let mut s = 43u64;
        for case in 0..144usize {
            let nb = 1 + case % 5;
            let n = 256 * nb;
            let ty = [GgmlType::Q5_K, GgmlType::Q2_K, GgmlType::Q3_K][case % 3];
            if ty == GgmlType::Q5_K && !is_x86_feature_detected!("avx512vbmi") {
                eprintln!("skipped Q5_K: no AVX-512 VBMI");
                continue;
            }
            let w: Vec<Vec<u8>> = (0..4).map(|_| edge_weights(ty, n, &mut s)).collect();
            let a: Vec<Vec<u8>> = (0..4).map(|_| edge_activations(n, &mut s)).collect();
            let wr: [&[u8]; 4] = std::array::from_fn(|r| w[r].as_slice());
            let ar: [&[u8]; 4] = std::array::from_fn(|t| a[t].as_slice());
            let (bytes, pack, tile): (
                usize,
                crate::dispatch::PackRows4Fn,
                crate::dispatch::PackedDot4x4Fn,
            ) = match ty {
                GgmlType::Q5_K => (Q5K_PACKED, pack4_q5_k, tile_q5_k),
                GgmlType::Q3_K => (Q3K_PACKED, pack4_q3_k, tile_q3_k),
                _ => (Q2K_PACKED, pack4_q2_k, tile_q2_k),
            };
            let mut packed: Vec<u8> = (0..nb * bytes).map(|_| lcg(&mut s) as u8).collect();
            pack(wr, &mut packed);
            let got = tile(&packed, ar);
            for r in 0..4 {
                for t in 0..4 {
                    let want = match ty {
                        GgmlType::Q5_K => crate::quant::q5_k::vec_dot(blocks(wr[r]), blocks(ar[t])),
                        GgmlType::Q3_K => crate::quant::q3_k::vec_dot(blocks(wr[r]), blocks(ar[t])),
                        _ => crate::quant::q2_k::vec_dot(blocks(wr[r]), blocks(ar[t])),
                    };
                    assert_eq!(
                        got[r][t].to_bits(),
                        want.to_bits(),
                        "{ty} case {case} r{r} t{t}: {} vs {want}",
                        got[r][t]
                    );
                }
            }
        }
    }

    /// Every element of the packed tiles equals the single-row AVX2 kernel and the scalar lane
    /// model (`arch::lane_model`, the definition of that arithmetic) bit for bit.
    #[test]
    fn k_quant_tiles_match_vector_dots_and_lane_model() {
        if !tiles_available() {
            return;
        }
        let mut s = 41u64;
        for case in 0..48usize {
            let nb = 1 + case % 5;
            let n = 256 * nb;
            for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
                let w: Vec<Vec<u8>> = (0..4).map(|_| edge_weights(ty, n, &mut s)).collect();
                let a: Vec<Vec<u8>> = (0..4).map(|_| edge_activations(n, &mut s)).collect();
                let wr: [&[u8]; 4] = std::array::from_fn(|r| w[r].as_slice());
                let ar: [&[u8]; 4] = std::array::from_fn(|t| a[t].as_slice());
                let (bytes, pack, tile): (
                    usize,
                    crate::dispatch::PackRows4Fn,
                    crate::dispatch::PackedDot4x4Fn,
                ) = match ty {
                    GgmlType::Q4_K => (Q4K_PACKED, pack4_q4_k, tile_q4_k),
                    _ => (Q6K_PACKED, pack4_q6_k, tile_q6_k),
                };
                // Stale bytes in the buffer must not matter.
                let mut packed: Vec<u8> = (0..nb * bytes).map(|_| lcg(&mut s) as u8).collect();
                pack(wr, &mut packed);
                let got = tile(&packed, ar);
                for r in 0..4 {
                    for t in 0..4 {
                        let (ys, x) = (blocks::<BlockQ8K>(ar[t]), wr[r]);
                        // SAFETY: `tiles_available` checked the features.
                        let (one, model) = unsafe {
                            match ty {
                                GgmlType::Q4_K => (
                                    super::super::kquants::q4_k_q8_k(blocks(x), ys),
                                    lane_model::q4_k(blocks(x), ys),
                                ),
                                _ => (
                                    super::super::kquants::q6_k_q8_k(blocks(x), ys),
                                    lane_model::q6_k(blocks(x), ys),
                                ),
                            }
                        };
                        assert_eq!(
                            got[r][t].to_bits(),
                            one.to_bits(),
                            "{ty} case {case} r{r} t{t}: {} vs {one}",
                            got[r][t]
                        );
                        assert_eq!(
                            got[r][t].to_bits(),
                            model.to_bits(),
                            "{ty} case {case} r{r} t{t}: lane model"
                        );
                    }
                }
            }
        }
    }
    /// The AVX2 forms (for CPUs without AVX-512 VNNI) equal the table's single-row dots bit
    /// for bit: the AVX2 vector dots (and the lane model) for Q4_K and Q6_K, the scalar dots
    /// for Q2_K and Q3_K.
    #[test]
    fn avx2_tiles_match_single_dots() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut s = 47u64;
        for case in 0..96usize {
            let nb = 1 + case % 5;
            let n = 256 * nb;
            let ty = [
                GgmlType::Q4_K,
                GgmlType::Q6_K,
                GgmlType::Q2_K,
                GgmlType::Q3_K,
            ][case % 4];
            let w: Vec<Vec<u8>> = (0..4).map(|_| edge_weights(ty, n, &mut s)).collect();
            let a: Vec<Vec<u8>> = (0..4).map(|_| edge_activations(n, &mut s)).collect();
            let wr: [&[u8]; 4] = std::array::from_fn(|r| w[r].as_slice());
            let ar: [&[u8]; 4] = std::array::from_fn(|t| a[t].as_slice());
            let (bytes, pack, tile): (
                usize,
                crate::dispatch::PackRows4Fn,
                crate::dispatch::PackedDot4x4Fn,
            ) = match ty {
                GgmlType::Q4_K => (Q4K_PACKED, pack4_q4_k, tile_q4_k_avx2),
                GgmlType::Q6_K => (Q6K_PACKED, pack4_q6_k, tile_q6_k_avx2),
                GgmlType::Q2_K => (Q2K_PACKED, pack4_q2_k, tile_q2_k_avx2),
                _ => (Q3K_PACKED, pack4_q3_k, tile_q3_k_avx2),
            };
            let mut packed: Vec<u8> = (0..nb * bytes).map(|_| lcg(&mut s) as u8).collect();
            pack(wr, &mut packed);
            let got = tile(&packed, ar);
            for r in 0..4 {
                for t in 0..4 {
                    let (x, ys) = (wr[r], blocks::<BlockQ8K>(ar[t]));
                    // SAFETY: AVX2, FMA and F16C checked above.
                    let want = unsafe {
                        match ty {
                            GgmlType::Q4_K => super::super::kquants::q4_k_q8_k(blocks(x), ys),
                            GgmlType::Q6_K => super::super::kquants::q6_k_q8_k(blocks(x), ys),
                            GgmlType::Q2_K => crate::quant::q2_k::vec_dot(blocks(x), ys),
                            _ => crate::quant::q3_k::vec_dot(blocks(x), ys),
                        }
                    };
                    assert_eq!(
                        got[r][t].to_bits(),
                        want.to_bits(),
                        "{ty} case {case} r{r} t{t}: {} vs {want}",
                        got[r][t]
                    );
                }
            }
        }
    }
}
