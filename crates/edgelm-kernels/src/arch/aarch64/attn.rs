//! F16 helpers of flash attention with NEON: the same arithmetic as the scalar reference
//! ([`crate::ops::dot_f16`], [`crate::ops::mad_f16`], [`crate::ops::scale_f16`],
//! [`crate::ops::f32_to_f16_row`], themselves llama.cpp's AVX-512 flash attention), value for
//! value. A 16-lane accumulator of the reference is four 4-lane registers here; every lane sees
//! the same fused multiply-adds in the same order and the reductions pair lanes as the
//! reference does, so the results are bit-identical (tested). F16 ↔ f32 conversions use
//! `FCVTL` / `FCVTN` (base ARMv8 Advanced SIMD; round to nearest even, as F16C and the
//! software conversion).

use std::arch::aarch64::*;

use half::f16;

use super::dots::{cvt_f16x4_f32, cvt_f32x8_f16, cvt_high_f16x8_f32, hsum_float_8};

/// Elements per step of the reference (4 accumulators × 16 lanes).
const STEP: usize = 64;

/// Eight F16 values at `p` as two f32 vectors.
///
/// # Safety
/// `p` points at 8 readable F16 values.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load8(p: *const f16) -> [float32x4_t; 2] {
    // SAFETY: the caller guarantees 16 readable bytes.
    let h = unsafe { vld1q_u16(p.cast()) };
    [cvt_f16x4_f32(vget_low_u16(h)), cvt_high_f16x8_f32(h)]
}

/// Stores eight f32 values as F16 (round to nearest even).
///
/// # Safety
/// `p` points at 8 writable F16 values.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store8(p: *mut f16, v: [float32x4_t; 2]) {
    let h = cvt_f32x8_f16(v[0], v[1]);
    // SAFETY: the caller guarantees 16 writable bytes.
    unsafe { vst1q_u16(p.cast(), h) }
}

/// `dot_f16` of the reference: x, y of equal length.
#[target_feature(enable = "neon")]
pub(super) fn dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_f16: lengths differ");
    let n = x.len();
    let np = n / STEP * STEP;
    // acc[j][q] holds lanes 4q..4q+4 of the reference's accumulator j.
    let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            for h in 0..2 {
                let o = i + j * 16 + h * 8;
                // SAFETY: o + 8 <= np <= n for both slices.
                let (xv, yv) = unsafe { (load8(xp.add(o)), load8(yp.add(o))) };
                a[2 * h] = vfmaq_f32(a[2 * h], xv[0], yv[0]);
                a[2 * h + 1] = vfmaq_f32(a[2 * h + 1], xv[1], yv[1]);
            }
        }
        i += STEP;
    }
    // lo[l] = (a0[l] + a2[l]) + (a1[l] + a3[l]), four lanes at a time.
    let lo: [float32x4_t; 4] = std::array::from_fn(|q| {
        vaddq_f32(
            vaddq_f32(acc[0][q], acc[2][q]),
            vaddq_f32(acc[1][q], acc[3][q]),
        )
    });
    // reduce_add_16: t8 = hi + lo (lanes 8..16 + 0..8), then as hsum_float_8.
    let t8 = [vaddq_f32(lo[2], lo[0]), vaddq_f32(lo[3], lo[1])];
    let mut sum = hsum_float_8(t8) as f64;
    for k in np..n {
        sum += (x[k].to_f32() * y[k].to_f32()) as f64;
    }
    sum as f32
}

/// `mad_f16` of the reference: `y = f16(fma(x, v, y))` on whole steps, unfused on the tail.
#[target_feature(enable = "neon")]
pub(super) fn mad_f16(y: &mut [f16], x: &[f16], v: f32) {
    assert_eq!(x.len(), y.len(), "mad_f16: lengths differ");
    let np = y.len() / STEP * STEP;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i < np {
        // SAFETY: i + 8 <= np <= len for both slices.
        unsafe {
            let (xv, yv) = (load8(xp.add(i)), load8(yp.add(i)));
            let r = [vfmaq_n_f32(yv[0], xv[0], v), vfmaq_n_f32(yv[1], xv[1], v)];
            store8(yp.add(i), r);
        }
        i += 8;
    }
    for (yi, xi) in y[np..].iter_mut().zip(&x[np..]) {
        *yi = f16::from_f32(yi.to_f32() + xi.to_f32() * v);
    }
}

/// `scale_f16` of the reference: `y = f16(y * v)`.
#[target_feature(enable = "neon")]
pub(super) fn scale_f16(y: &mut [f16], v: f32) {
    let n8 = y.len() / 8 * 8;
    let yp = y.as_mut_ptr();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n8 <= len.
        unsafe {
            let yv = load8(yp.add(i));
            store8(yp.add(i), [vmulq_n_f32(yv[0], v), vmulq_n_f32(yv[1], v)]);
        }
        i += 8;
    }
    for yi in &mut y[n8..] {
        *yi = f16::from_f32(yi.to_f32() * v);
    }
}

/// Converts an f32 row to F16 (round to nearest even).
#[target_feature(enable = "neon")]
pub(super) fn f32_to_f16_row(dst: &mut [f16], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "f32_to_f16_row: lengths differ");
    let n8 = src.len() / 8 * 8;
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n8 <= len of both.
        unsafe {
            let p = src.as_ptr().add(i);
            store8(dst.as_mut_ptr().add(i), [vld1q_f32(p), vld1q_f32(p.add(4))]);
        }
        i += 8;
    }
    for (d, &s) in dst[n8..].iter_mut().zip(&src[n8..]) {
        *d = f16::from_f32(s);
    }
}

/// Table entry: f32 row to F16.
pub(super) fn f32_to_f16_entry(dst: &mut [f16], src: &[f32]) {
    // SAFETY: NEON is part of every aarch64 target's baseline.
    unsafe { f32_to_f16_row(dst, src) }
}

/// Table entry: `attention_one_query_f16` of the reference, with the helpers above.
pub(super) fn attention_one_query_f16(
    out: &mut [f32],
    acc: &mut [f16],
    q: &[f16],
    k: &[f16],
    v: &[f16],
    n_kv: usize,
    scale: f32,
) {
    // SAFETY: NEON is part of every aarch64 target's baseline.
    unsafe { attention_neon(out, acc, q, k, v, n_kv, scale) }
}

#[target_feature(enable = "neon")]
fn attention_neon(
    out: &mut [f32],
    acc: &mut [f16],
    q: &[f16],
    k: &[f16],
    v: &[f16],
    n_kv: usize,
    scale: f32,
) {
    crate::ops::attention_one_query_f16_with(
        out,
        acc,
        q,
        k,
        v,
        n_kv,
        scale,
        |x, y| dot_f16(x, y),
        |y, s| scale_f16(y, s),
        |y, x, s| mad_f16(y, x, s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;

    fn rand_f16(n: usize, scale: f32, seed: &mut u64) -> Vec<f16> {
        crate::testutil::rand_vec(n, scale, seed)
            .into_iter()
            .map(f16::from_f32)
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Random heads of several widths (whole steps and tails), many cache lengths: the NEON
    /// attention equals the scalar reference bit for bit.
    #[test]
    fn neon_attention_is_bit_identical_to_reference() {
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
                attention_one_query_f16(&mut o2, &mut a2, &q, &k, &v, n_kv, scale);
                assert_eq!(bits(&o1), bits(&o2), "d={d} n_kv={n_kv}");
            }
        }
    }

    /// Each helper on lengths around the vector widths (8) and the step (64), and the f32 →
    /// F16 conversion on values that round (ties, overflow to infinity, subnormals).
    #[test]
    fn neon_f16_helpers_match_reference() {
        let mut seed = 11u64;
        for &n in &[0usize, 1, 7, 8, 9, 63, 64, 65, 128, 131, 576] {
            let x = rand_f16(n, 30.0, &mut seed);
            let y = rand_f16(n, 30.0, &mut seed);
            // SAFETY (every call below): NEON is part of every aarch64 target's baseline.
            let got = unsafe { dot_f16(&x, &y) };
            assert_eq!(got.to_bits(), ops::dot_f16(&x, &y).to_bits(), "dot n={n}");
            let (mut y1, mut y2) = (y.clone(), y.clone());
            ops::mad_f16(&mut y1, &x, 0.37);
            unsafe { mad_f16(&mut y2, &x, 0.37) };
            assert_eq!(y1, y2, "mad n={n}");
            ops::scale_f16(&mut y1, 0.61);
            unsafe { scale_f16(&mut y2, 0.61) };
            assert_eq!(y1, y2, "scale n={n}");
            let src: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, h)| match i % 11 {
                    // Halfway between two F16 values (ties to even), beyond F16's range,
                    // F16 subnormals and f32 values that underflow to zero.
                    3 => 1.0 + f32::powi(2.0, -11),
                    4 => 70000.0 * h.to_f32().signum(),
                    5 => h.to_f32() * 1e-6,
                    6 => h.to_f32() * 1e-12,
                    7 => f32::NEG_INFINITY,
                    _ => h.to_f32() * 1.001 + 1e-4,
                })
                .collect();
            let (mut h1, mut h2) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
            ops::f32_to_f16_row(&mut h1, &src);
            unsafe { f32_to_f16_row(&mut h2, &src) };
            let b1: Vec<u16> = h1.iter().map(|h| h.to_bits()).collect();
            let b2: Vec<u16> = h2.iter().map(|h| h.to_bits()).collect();
            assert_eq!(b1, b2, "convert n={n}");
        }
    }
}
