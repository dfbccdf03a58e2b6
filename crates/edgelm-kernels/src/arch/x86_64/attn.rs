//! Flash attention over an F16 KV cache with AVX2 + FMA + F16C: the same arithmetic as the
//! scalar reference [`crate::ops::attention_one_query_f16`] (itself llama.cpp's AVX-512 flash
//! attention), value for value. A 16-lane accumulator of the reference is two 8-lane registers
//! here; every lane sees the same fused multiply-adds in the same order, and the reductions
//! pair lanes exactly as the reference does, so the results are bit-identical (tested).

use std::arch::x86_64::*;

use half::f16;

/// Elements per step of the reference (4 accumulators × 16 lanes).
const STEP: usize = 64;

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `p` points at 8 readable F16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable values (16 bytes).
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `p` points at 8 writable F16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store8(p: *mut f16, v: __m256) {
    let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v);
    // SAFETY: the caller guarantees 8 writable values (16 bytes).
    unsafe { _mm_storeu_si128(p.cast(), h) }
}

/// `dot_f16` of the reference: x, y of equal length.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_f16: lengths differ");
    let n = x.len();
    let np = n / STEP * STEP;
    // acc[j][0] holds lanes 0..8 of the reference's accumulator j, acc[j][1] lanes 8..16.
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            for (h, ah) in a.iter_mut().enumerate() {
                let o = i + j * 16 + h * 8;
                // SAFETY: o + 8 <= np <= n for both slices.
                let (xv, yv) = unsafe { (load8(xp.add(o)), load8(yp.add(o))) };
                *ah = _mm256_fmadd_ps(xv, yv, *ah);
            }
        }
        i += STEP;
    }
    // lo[l] = (a0[l] + a2[l]) + (a1[l] + a3[l]), in two 8-lane halves.
    let half = |h: usize| {
        _mm256_add_ps(
            _mm256_add_ps(acc[0][h], acc[2][h]),
            _mm256_add_ps(acc[1][h], acc[3][h]),
        )
    };
    // reduce_add_16: t8 = hi + lo; t4 = t8[4..] + t8[..4]; (t4[0] + t4[2]) + (t4[1] + t4[3]).
    let t8 = _mm256_add_ps(half(1), half(0));
    let t4 = _mm_add_ps(_mm256_extractf128_ps::<1>(t8), _mm256_castps256_ps128(t8));
    let t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    let t1 = _mm_add_ss(t2, _mm_movehdup_ps(t2));
    let mut sum = _mm_cvtss_f32(t1) as f64;
    for k in np..n {
        sum += (x[k].to_f32() * y[k].to_f32()) as f64;
    }
    sum as f32
}

/// `mad_f16` of the reference: `y = f16(fma(x, v, y))` on whole steps, unfused on the tail.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn mad_f16(y: &mut [f16], x: &[f16], v: f32) {
    assert_eq!(x.len(), y.len(), "mad_f16: lengths differ");
    let np = y.len() / STEP * STEP;
    let vv = _mm256_set1_ps(v);
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i < np {
        // SAFETY: i + 8 <= np <= len for both slices.
        unsafe {
            let r = _mm256_fmadd_ps(load8(xp.add(i)), vv, load8(yp.add(i)));
            store8(yp.add(i), r);
        }
        i += 8;
    }
    for (yi, xi) in y[np..].iter_mut().zip(&x[np..]) {
        *yi = f16::from_f32(yi.to_f32() + xi.to_f32() * v);
    }
}

/// `scale_f16` of the reference: `y = f16(y * v)`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scale_f16(y: &mut [f16], v: f32) {
    let n8 = y.len() / 8 * 8;
    let vv = _mm256_set1_ps(v);
    let yp = y.as_mut_ptr();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n8 <= len.
        unsafe { store8(yp.add(i), _mm256_mul_ps(load8(yp.add(i)), vv)) };
        i += 8;
    }
    for yi in &mut y[n8..] {
        *yi = f16::from_f32(yi.to_f32() * v);
    }
}

/// Converts an f32 row to F16 (round to nearest even).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32_to_f16_row(dst: &mut [f16], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "f32_to_f16_row: lengths differ");
    let n8 = src.len() / 8 * 8;
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n8 <= len of both.
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            store8(dst.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for (d, &s) in dst[n8..].iter_mut().zip(&src[n8..]) {
        *d = f16::from_f32(s);
    }
}

/// `attention_one_query_f16` of the reference, with the helpers above.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attention_one_query_f16(
    out: &mut [f32],
    acc: &mut [f16],
    q: &[f16],
    k: &[f16],
    v: &[f16],
    n_kv: usize,
    scale: f32,
) {
    // SAFETY (the three helpers): the features were enabled by our caller's contract.
    crate::ops::attention_one_query_f16_with(
        out,
        acc,
        q,
        k,
        v,
        n_kv,
        scale,
        |x, y| unsafe { dot_f16(x, y) },
        |y, s| unsafe { scale_f16(y, s) },
        |y, x, s| unsafe { mad_f16(y, x, s) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;

    fn has() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    fn rand_f16(n: usize, scale: f32, seed: &mut u64) -> Vec<f16> {
        crate::testutil::rand_vec(n, scale, seed)
            .into_iter()
            .map(f16::from_f32)
            .collect()
    }

    /// Random heads of several widths (whole steps and tails), many cache lengths: the SIMD
    /// attention equals the scalar reference bit for bit.
    #[test]
    fn simd_attention_is_bit_identical_to_reference() {
        if !has() {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut seed = 7u64;
        for &d in &[64usize, 128, 80, 8, 3, 200] {
            for &n_kv in &[1usize, 2, 5, 17, 64, 300] {
                let q = rand_f16(d, 2.0, &mut seed);
                let k = rand_f16(n_kv * d, 2.0, &mut seed);
                let v = rand_f16(n_kv * d, 4.0, &mut seed);
                let scale = 1.0 / (d as f32).sqrt();
                let (mut o1, mut o2) = (vec![0.0f32; d], vec![0.0f32; d]);
                let (mut a1, mut a2) = (vec![f16::ZERO; d], vec![f16::ZERO; d]);
                ops::attention_one_query_f16(&mut o1, &mut a1, &q, &k, &v, n_kv, scale);
                // SAFETY: features checked above.
                unsafe { attention_one_query_f16(&mut o2, &mut a2, &q, &k, &v, n_kv, scale) };
                let b1: Vec<u32> = o1.iter().map(|x| x.to_bits()).collect();
                let b2: Vec<u32> = o2.iter().map(|x| x.to_bits()).collect();
                assert_eq!(b1, b2, "d={d} n_kv={n_kv}");
            }
        }
    }

    #[test]
    fn simd_f16_helpers_match_reference() {
        if !has() {
            eprintln!("skipped: CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut seed = 11u64;
        for &n in &[0usize, 1, 7, 8, 63, 64, 65, 128, 131, 576] {
            let x = rand_f16(n, 30.0, &mut seed);
            let y = rand_f16(n, 30.0, &mut seed);
            // SAFETY: features checked above.
            let got = unsafe { dot_f16(&x, &y) };
            assert_eq!(got.to_bits(), ops::dot_f16(&x, &y).to_bits(), "dot n={n}");
            let (mut y1, mut y2) = (y.clone(), y.clone());
            ops::mad_f16(&mut y1, &x, 0.37);
            // SAFETY: as above.
            unsafe { mad_f16(&mut y2, &x, 0.37) };
            assert_eq!(y1, y2, "mad n={n}");
            ops::scale_f16(&mut y1, 0.61);
            // SAFETY: as above.
            unsafe { scale_f16(&mut y2, 0.61) };
            assert_eq!(y1, y2, "scale n={n}");
            let src: Vec<f32> = x.iter().map(|h| h.to_f32() * 1.001 + 1e-4).collect();
            let (mut h1, mut h2) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
            ops::f32_to_f16_row(&mut h1, &src);
            // SAFETY: as above.
            unsafe { f32_to_f16_row(&mut h2, &src) };
            assert_eq!(h1, h2, "convert n={n}");
        }
    }
}
