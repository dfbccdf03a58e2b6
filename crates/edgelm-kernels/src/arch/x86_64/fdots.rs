//! F32, F16 and BF16 weight rows against activations of the same type (the table's
//! `vec_dot_type` for these weights): AVX2 + FMA (+ F16C) dot products with f32 lane
//! accumulators, one row × one token and one row × four tokens (the weight row converted once
//! for the four).
//!
//! The scalar reference (`quant::{f32,f16,bf16}::vec_dot`, ggml's non-SIMD path) sums the
//! products in f64; these kernels sum them in 8 f32 lanes, as ggml's own SIMD builds do (in
//! their own lane order), so the two agree to f32 rounding rather than bit for bit: the tests
//! bound the difference by a few ulps of the sum of |products|. The products themselves are
//! exact for F16 and BF16 inputs (11- and 8-bit significands), so only the order differs.

use std::arch::x86_64::*;

/// How a weight/activation element type becomes 8 f32 lanes.
#[derive(Clone, Copy)]
enum Elem {
    F32,
    F16,
    BF16,
}

impl Elem {
    const fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }

    /// 8 consecutive values from `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` must point at 8 readable elements; the CPU must support AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(self, p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 8 readable elements at `p`.
        unsafe {
            match self {
                Elem::F32 => _mm256_loadu_ps(p.cast()),
                Elem::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                Elem::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm_loadu_si128(p.cast()),
                ))),
            }
        }
    }

    /// One value at element index `i` of `b` as f32.
    #[inline(always)]
    fn get(self, b: &[u8], i: usize) -> f32 {
        match self {
            Elem::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
            Elem::F16 => crate::f16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])),
            Elem::BF16 => {
                f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16)
            }
        }
    }
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds 8 f32: one unaligned 256-bit store (AVX, implied by the callers).
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    ((out[0] + out[4]) + (out[2] + out[6])) + ((out[1] + out[5]) + (out[3] + out[7]))
}

/// `sum(w[i] * a[i])` over `n` elements of type `e`.
///
/// Panics when `w` or `a` holds fewer than `n` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot1(e: Elem, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let sz = e.bytes();
    assert!(w.len() >= n * sz && a.len() >= n * sz, "fdot: short rows");
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    // Two accumulators over 16-element steps, then one 8-element step into the first: the
    // same association as `dot4`, so that prompt batches equal one-token products bit for bit.
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    // SAFETY (every load below): i + 16 <= n or i + 8 <= n elements, inside both rows.
    while i + 16 <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let o = (i + 8 * u) * sz;
            unsafe { *acc = _mm256_fmadd_ps(e.load8(pw.add(o)), e.load8(pa.add(o)), *acc) };
        }
        i += 16;
    }
    while i + 8 <= n {
        let o = i * sz;
        unsafe { acc[0] = _mm256_fmadd_ps(e.load8(pw.add(o)), e.load8(pa.add(o)), acc[0]) };
        i += 8;
    }
    let v = _mm256_add_ps(acc[0], acc[1]);
    let mut s = hsum(v);
    for j in i..n {
        s += e.get(w, j) * e.get(a, j);
    }
    s
}

/// Four tokens' dots with one weight row, the weights converted once per 8 elements.
///
/// Panics when a row holds fewer than `n` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4(e: Elem, n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let sz = e.bytes();
    assert!(
        w.len() >= n * sz && a.iter().all(|r| r.len() >= n * sz),
        "fdot4: short rows"
    );
    let pw = w.as_ptr();
    let pa = a.map(|r| r.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    // SAFETY (every load below): i + 16 <= n or i + 8 <= n elements, inside every row.
    while i + 16 <= n {
        for u in 0..2 {
            let o = (i + 8 * u) * sz;
            let wv = unsafe { e.load8(pw.add(o)) };
            for (acc, p) in acc.iter_mut().zip(&pa) {
                acc[u] = unsafe { _mm256_fmadd_ps(wv, e.load8(p.add(o)), acc[u]) };
            }
        }
        i += 16;
    }
    while i + 8 <= n {
        let o = i * sz;
        let wv = unsafe { e.load8(pw.add(o)) };
        for (t, p) in pa.iter().enumerate() {
            acc[t][0] = unsafe { _mm256_fmadd_ps(wv, e.load8(p.add(o)), acc[t][0]) };
        }
        i += 8;
    }
    let mut out = [0.0f32; 4];
    for t in 0..4 {
        out[t] = hsum(_mm256_add_ps(acc[t][0], acc[t][1]));
        for j in i..n {
            out[t] += e.get(w, j) * e.get(a[t], j);
        }
    }
    out
}

macro_rules! entries {
    ($one:ident, $four:ident, $one_in:ident, $four_in:ident, $e:expr) => {
        /// Table entry (AVX2, FMA and F16C detected by `install`).
        pub(super) fn $one(n: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: `install` put this function in the table only after detecting the
            // features; `dot1` checks the lengths.
            unsafe { $one_in(n, w, a) }
        }

        /// Table entry, four tokens (AVX2, FMA and F16C detected by `install`).
        pub(super) fn $four(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            // SAFETY: as above.
            unsafe { $four_in(n, w, a) }
        }

        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $one_in(n: usize, w: &[u8], a: &[u8]) -> f32 {
            dot1($e, n, w, a)
        }

        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $four_in(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            dot4($e, n, w, a)
        }
    };
}

entries!(
    vec_dot_f32,
    vec_dot4_f32,
    dot_f32_in,
    dot4_f32_in,
    Elem::F32
);
entries!(
    vec_dot_f16,
    vec_dot4_f16,
    dot_f16_in,
    dot4_f16_in,
    Elem::F16
);
entries!(
    vec_dot_bf16,
    vec_dot4_bf16,
    dot_bf16_in,
    dot4_bf16_in,
    Elem::BF16
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;
    use crate::GgmlType;

    /// Each SIMD dot against the f64-summed scalar reference, on random rows of every tail
    /// length: within 4 f32 ulps of the sum of |products|; the four-token form bit for bit
    /// equal to the one-token form.
    #[test]
    fn float_dots_match_scalar_reference() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        let scalar = crate::Kernels::scalar();
        let mut s = 7u64;
        type One = fn(usize, &[u8], &[u8]) -> f32;
        type Four = fn(usize, &[u8], [&[u8]; 4]) -> [f32; 4];
        let cases: [(GgmlType, One, Four); 3] = [
            (GgmlType::F32, vec_dot_f32, vec_dot4_f32),
            (GgmlType::F16, vec_dot_f16, vec_dot4_f16),
            (GgmlType::BF16, vec_dot_bf16, vec_dot4_bf16),
        ];
        for (ty, one, four) in cases {
            for n in [1usize, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 576, 1536] {
                let rows: Vec<Vec<u8>> = (0..5)
                    .map(|_| {
                        let x: Vec<f32> = (0..n)
                            .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0)
                            .collect();
                        let mut b = vec![0u8; crate::row_bytes(ty, n).expect("bytes")];
                        scalar.quantize_activation(ty, &x, &mut b).expect("to type");
                        b
                    })
                    .collect();
                let w = &rows[0];
                let acts: [&[u8]; 4] = std::array::from_fn(|t| rows[t + 1].as_slice());
                let got4 = four(n, w, acts);
                for t in 0..4 {
                    let want = scalar.vec_dot(ty, n, w, acts[t]).expect("dot");
                    // Bound: the sum of |w_i a_i|, from the dequantized values.
                    let mut wf = vec![0.0f32; n];
                    let mut af = vec![0.0f32; n];
                    scalar.dequantize_row(ty, w, &mut wf).expect("deq");
                    scalar.dequantize_row(ty, acts[t], &mut af).expect("deq");
                    let mag: f32 = wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum();
                    let tol = 4.0 * f32::EPSILON * mag.max(f32::MIN_POSITIVE);
                    let got1 = one(n, w, acts[t]);
                    assert!((got1 - want).abs() <= tol, "{ty} n={n}: {got1} vs {want}");
                    // Prompt batches (four tokens) equal one-token products exactly.
                    assert_eq!(got4[t].to_bits(), got1.to_bits(), "{ty} n={n} token {t}");
                }
            }
        }
    }
}
