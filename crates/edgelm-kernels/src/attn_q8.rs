//! Flash attention over a Q8_0 KV cache, as llama.cpp computes it with `-ctk q8_0 -ctv q8_0`
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`, which it takes for every batch size
//! when K/V are quantized): the query is quantized to Q8_0 (K's `vec_dot_type`), each score is
//! the table's Q8_0 × Q8_0 dot product times the scale, online softmax with libm `expf`, each V
//! row dequantized to f32 and accumulated with a fused multiply-add into an f32 accumulator,
//! which is divided by the sum at the end.
//!
//! The body is written once and compiled twice (scalar and with AVX2 + FMA in `arch::x86_64`);
//! the dot product comes from the kernel table.

use crate::dispatch::Kernels;
use crate::quant::q8_0::{BlockQ8_0, QK};
use crate::quant::{blocks, f16le};

/// Bytes of one Q8_0 row of `d` values.
pub fn q8_0_row_bytes(d: usize) -> usize {
    d / QK * std::mem::size_of::<BlockQ8_0>()
}

/// Attention of one query head over `n_kv` cached positions of a Q8_0 cache.
///
/// `q` is the query already quantized to Q8_0 (`q8_0_row_bytes(d)` bytes); `k` and `v` hold
/// `n_kv` rows of `q8_0_row_bytes(d)` / `q8_0_row_bytes(dv)` bytes; `acc` is an f32 scratch of
/// `dv` values; `out` gets the `dv` results. `d` and `dv` are multiples of 32.
///
/// `#[inline(always)]`: the x86-64 table compiles this same source inside an AVX2 + FMA
/// function (bit-identical: `mul_add` rounds once either way); the scalar table calls it as is.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attention_one_query_q8_0(
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
    let dv = out.len();
    let (kr, vr) = (q8_0_row_bytes(d), q8_0_row_bytes(dv));
    assert!(
        d.is_multiple_of(QK) && dv.is_multiple_of(QK),
        "attention_q8_0: dims not multiples of 32"
    );
    assert_eq!(q.len(), kr, "attention_q8_0: query length");
    assert_eq!(acc.len(), dv, "attention_q8_0: acc length");
    assert!(k.len() >= n_kv * kr, "attention_q8_0: k too short");
    assert!(v.len() >= n_kv * vr, "attention_q8_0: v too short");
    let dot = table
        .vec_dot_fn(edgelm_gguf::GgmlType::Q8_0)
        .map(|(f, _)| f)
        .expect("every table has a Q8_0 dot product");
    acc.fill(0.0);
    let mut sum = 0.0f32;
    let mut max = f32::NEG_INFINITY;
    for ic in 0..n_kv {
        let s = dot(d, &k[ic * kr..(ic + 1) * kr], q) * scale;
        let old_max = max;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if s > max {
            max = s;
            ms = (old_max - max).exp();
            for a in acc.iter_mut() {
                *a *= ms;
            }
        } else {
            vs = (s - max).exp();
        }
        // V row dequantized (q * d) and accumulated: acc = fma(v, vs, acc).
        let vb: &[BlockQ8_0] = blocks(&v[ic * vr..(ic + 1) * vr]);
        for (b, a) in vb.iter().zip(acc.chunks_exact_mut(QK)) {
            let dvb = f16le(b.d);
            for (&qv, ai) in b.qs.iter().zip(a.iter_mut()) {
                *ai = (qv as f32 * dvb).mul_add(vs, *ai);
            }
        }
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::q8_0::quantize_row;
    use crate::testutil::rand_vec;

    fn q8(x: &[f32]) -> Vec<u8> {
        let mut b = vec![
            BlockQ8_0 {
                d: [0; 2],
                qs: [0; 32]
            };
            x.len() / 32
        ];
        quantize_row(x, &mut b);
        bytemuck::cast_slice(&b).to_vec()
    }

    /// Against softmax(q·k·scale)·v in f64 over the dequantized cache: Q8_0 rounding of the
    /// query and the cache bounds the difference.
    #[test]
    fn q8_0_attention_matches_f64_softmax_within_quantization() {
        let mut seed = 9u64;
        for &(d, n_kv) in &[(64usize, 1usize), (64, 7), (128, 100), (32, 300)] {
            let q = rand_vec(d, 1.0, &mut seed);
            let k = rand_vec(n_kv * d, 1.0, &mut seed);
            let v = rand_vec(n_kv * d, 2.0, &mut seed);
            let (qq, kq, vq) = (q8(&q), q8(&k), q8(&v));
            let deq = |bytes: &[u8]| {
                let mut out = vec![0.0f32; bytes.len() / 34 * 32];
                crate::quant::q8_0::dequantize_row(blocks(bytes), &mut out);
                out
            };
            let (qf, kf, vf) = (deq(&qq), deq(&kq), deq(&vq));
            let scale = 1.0 / (d as f32).sqrt();
            let mut out = vec![0.0f32; d];
            let mut acc = vec![0.0f32; d];
            for table in [Kernels::scalar(), crate::kernels()] {
                attention_one_query_q8_0(table, &mut out, &mut acc, &qq, &kq, &vq, n_kv, d, scale);
                let s: Vec<f64> = (0..n_kv)
                    .map(|t| {
                        (0..d)
                            .map(|i| qf[i] as f64 * kf[t * d + i] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for i in 0..d {
                    let want: f64 = (0..n_kv)
                        .map(|t| (s[t] - m).exp() / z * vf[t * d + i] as f64)
                        .sum();
                    assert!(
                        (out[i] as f64 - want).abs() < 1e-4,
                        "d={d} n_kv={n_kv} i={i}"
                    );
                }
            }
        }
    }
}
