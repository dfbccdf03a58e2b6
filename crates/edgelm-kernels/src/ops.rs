//! Element-wise and normalisation ops of the transformer block: RMSNorm, RoPE (NORM and NEOX),
//! softmax, SiLU / SwiGLU, and the F16 helpers of flash attention (F16 dot, F16 multiply-add,
//! one-query online-softmax attention).
//!
//! Each op reproduces, value for value, what llama.cpp's CPU backend computes on x86-64 with
//! AVX-512 (the build the reference peer uses, see `scripts/ref-venv.sh`): the same accumulation
//! types (RMSNorm sums in f64), the same lane layout for vectorised reductions (16 f32 lanes,
//! `_mm512_reduce_add_ps` as GCC expands it), the same polynomial `exp` (`ggml_v_expf`) in SiLU
//! and softmax, and libm `expf`/`cosf`/`sinf`/`powf` where llama.cpp calls them. These scalar
//! functions are the reference the SIMD versions must match; they contain no `unsafe`.
//!
//! Shapes use the project alphabet: T tokens, C channels, H heads, D head dim, KV cached positions.

use half::f16;

/// Lanes of one AVX-512 f32 vector: llama.cpp's vector width on the reference machine. Chunking
/// and reductions below follow it so that sums are associated exactly as llama.cpp's are.
const LANES: usize = 16;

/// Sums 16 lanes the way GCC's `_mm512_reduce_add_ps` does: halves, then quarters, then pairs.
#[inline]
pub(crate) fn reduce_add_16(v: &[f32; LANES]) -> f32 {
    let mut t8 = [0.0f32; 8];
    for k in 0..8 {
        t8[k] = v[k + 8] + v[k];
    }
    let mut t4 = [0.0f32; 4];
    for k in 0..4 {
        t4[k] = t8[k + 4] + t8[k];
    }
    let a = t4[0] + t4[2];
    let b = t4[1] + t4[3];
    a + b
}

/// `exp(x)` exactly as llama.cpp's vectorised `ggml_v_expf` (AVX-512 variant) computes it:
/// a degree-5 polynomial on the reduced argument, scaled by `2^n` with one rounding.
/// Max error about 1.5 ulp; overflows to +inf above ~88.38 and flushes to 0 below ~-103.97.
#[inline(always)]
pub fn expf_ggml(x: f32) -> f32 {
    const R: f32 = f32::from_bits(0x4b40_0000); // 0x1.8p23
    const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
    const C5: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    const C4: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    const C3: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    const C2: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    const C1: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1

    let z = x.mul_add(LOG2E, R);
    let n = z - R;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    // vscalefps: j * 2^n rounded once. |n| <= 192 keeps the f64 product exact; 2^n is built
    // from its bits. n as an integer is read off z's bits (z = R + n, in R's binade for
    // |n| < 2^22; outside it the lane is discarded below), integer arithmetic that vectorises
    // where a float-to-int `as` cast (saturating, NaN-checked) does not. The clamp only keeps
    // discarded lanes' exponents in range. Written without early returns so that loops over it
    // vectorise.
    let ni = (z.to_bits() as i32)
        .wrapping_sub(R.to_bits() as i32)
        .clamp(-193, 193);
    let pow2 = f64::from_bits(((ni + 1023) as u64) << 52);
    let scaled = ((j as f64) * pow2) as f32;
    let out_of_range = if n <= 0.0 { 0.0 } else { f32::INFINITY };
    if n.abs() > 192.0 {
        out_of_range
    } else {
        scaled
    }
}

/// `x / (1 + exp(-x))` as llama.cpp's vector SiLU computes it (polynomial exp).
#[inline(always)]
pub fn silu_ggml(x: f32) -> f32 {
    x / (1.0 + expf_ggml(0.0 - x))
}

/// `x / (1 + exp(-x))` as llama.cpp's scalar tail (`ggml_silu_f32`, libm `expf`) computes it.
#[inline]
pub fn silu_scalar(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SiLU over a row, `y[i] = x[i] * sigmoid(x[i])` (llama.cpp `ggml_vec_silu_f32`): full 16-lane
/// chunks use the polynomial exp, the tail uses libm.
pub fn silu_forward(y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "silu_forward: y and x lengths differ");
    let full = x.len() / LANES * LANES;
    for (yi, &xi) in y[..full].iter_mut().zip(&x[..full]) {
        *yi = silu_ggml(xi);
    }
    for (yi, &xi) in y[full..].iter_mut().zip(&x[full..]) {
        *yi = silu_scalar(xi);
    }
}

/// SwiGLU over a row, `y[i] = silu(gate[i]) * up[i]` (llama.cpp `ggml_vec_swiglu_f32`).
///
/// `#[inline(always)]`: the x86-64 table compiles this same source inside an AVX2 + FMA
/// function (bit-identical: `mul_add` rounds once either way); the scalar table calls it as is.
#[inline(always)]
pub fn swiglu_forward(y: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!(
        y.len(),
        gate.len(),
        "swiglu_forward: y and gate lengths differ"
    );
    assert_eq!(y.len(), up.len(), "swiglu_forward: y and up lengths differ");
    let n = y.len();
    let full = n / LANES * LANES;
    for ((yi, &g), &u) in y[..full].iter_mut().zip(&gate[..full]).zip(&up[..full]) {
        *yi = silu_ggml(g) * u;
    }
    for i in full..n {
        y[i] = silu_scalar(gate[i]) * up[i];
    }
}

/// RMSNorm of one row times a weight: `y = x * (1/sqrt(mean(x²) + eps)) * w`.
/// As llama.cpp: squares in f32, summed in f64; mean and scale in f32. x, y, w: [C].
pub fn rmsnorm_forward(y: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    assert_eq!(y.len(), x.len(), "rmsnorm_forward: y and x lengths differ");
    assert_eq!(
        weight.len(),
        x.len(),
        "rmsnorm_forward: weight and x lengths differ"
    );
    let scale = rms_scale(x, eps);
    for ((yi, &xi), &wi) in y.iter_mut().zip(x).zip(weight) {
        *yi = xi * scale * wi;
    }
}

/// RMSNorm of one row in place, without weight (llama.cpp `ggml_rms_norm`): `x *= 1/rms(x)`.
pub fn rmsnorm_inplace(x: &mut [f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for xi in x.iter_mut() {
        *xi *= scale;
    }
}

/// RMSNorm of one row in place, times a weight: `x = x * (1/rms(x)) * w`.
pub fn rmsnorm_weighted_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(
        weight.len(),
        x.len(),
        "rmsnorm_weighted_inplace: weight and x lengths differ"
    );
    let scale = rms_scale(x, eps);
    for (xi, &wi) in x.iter_mut().zip(weight) {
        *xi = *xi * scale * wi;
    }
}

#[inline]
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut sum = 0.0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len().max(1) as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(2i, 2i+1)` (llama.cpp `GGML_ROPE_TYPE_NORMAL`; Llama).
    Norm,
    /// Halves `(i, i + n_dims/2)` (llama.cpp `GGML_ROPE_TYPE_NEOX`; Qwen2/3, GPT-NeoX).
    Neox,
}

/// `freq_base^(-2/n_dims)` in f32, the per-pair frequency ratio (llama.cpp `theta_scale`).
pub fn rope_theta_scale(freq_base: f32, n_dims: usize) -> f32 {
    freq_base.powf(-2.0 / n_dims as f32)
}

/// Fills `cache` ([n_dims]: cos, sin interleaved per pair) for position `pos`, as llama.cpp's
/// `ggml_rope_cache_init` without YaRN (ext_factor 0, mscale 1): theta starts at `pos` and is
/// multiplied by `theta_scale` pair after pair, in f32; `freq_factors` ([n_dims/2]) divide it.
pub fn rope_cache(
    cache: &mut [f32],
    pos: usize,
    theta_scale: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
) {
    assert!(cache.len() & 1 == 0, "rope_cache: odd cache length");
    let mut theta = pos as f32;
    for (i, pair) in cache.chunks_exact_mut(2).enumerate() {
        let ff = freq_factors.map_or(1.0, |f| f[i]);
        let t = freq_scale * (theta / ff);
        pair[0] = t.cos();
        pair[1] = t.sin();
        theta *= theta_scale;
    }
}

/// Rotates one head in place with a cache from [`rope_cache`] (`cache.len() == n_dims`);
/// dimensions past `n_dims` are left as they are. x: [D].
///
/// The products are fused as GCC compiles llama.cpp's `rotate_pairs` (C++ is built with
/// `-ffp-contract=fast`, GCC's default outside ISO C): `x0·c − x1·s` becomes
/// `fma(x0, c, −(x1·s))` and `x0·s + x1·c` becomes `fma(x0, s, x1·c)`. With separate
/// multiplies the rotated values differ by an ulp now and then, enough to move edgelm's logits
/// off llama.cpp's from position 4 on.
#[inline]
pub fn rope_forward(x: &mut [f32], cache: &[f32], mode: RopeMode) {
    let n_dims = cache.len();
    assert!(n_dims <= x.len(), "rope_forward: n_dims exceeds head dim");
    match mode {
        RopeMode::Norm => {
            for i0 in (0..n_dims).step_by(2) {
                let (c, s) = (cache[i0], cache[i0 + 1]);
                let (x0, x1) = (x[i0], x[i0 + 1]);
                x[i0] = x0.mul_add(c, -(x1 * s));
                x[i0 + 1] = x0.mul_add(s, x1 * c);
            }
        }
        RopeMode::Neox => {
            let half = n_dims / 2;
            for i0 in (0..n_dims).step_by(2) {
                let ic = i0 / 2;
                let (c, s) = (cache[i0], cache[i0 + 1]);
                let (x0, x1) = (x[ic], x[ic + half]);
                x[ic] = x0.mul_add(c, -(x1 * s));
                x[ic + half] = x0.mul_add(s, x1 * c);
            }
        }
    }
}

/// Softmax of one row in place (llama.cpp `soft_max` with scale 1 and no mask): max in f32,
/// `exp(x - max)` with the polynomial exp over 16-lane chunks (libm on the tail), the sum in f64
/// of per-chunk f32 reductions, then a multiply by `1/sum`.
pub fn softmax_forward(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let full = x.len() / LANES * LANES;
    let mut sum = 0.0f64;
    for chunk in x[..full].chunks_exact_mut(LANES) {
        let mut lanes = [0.0f32; LANES];
        for (l, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = expf_ggml(*v - max);
            *l = *v;
        }
        sum += reduce_add_16(&lanes) as f64;
    }
    for v in x[full..].iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Dot product of two F16 rows with f32 products and accumulation, as llama.cpp's
/// `ggml_vec_dot_f16` on AVX-512: four 16-lane fma accumulators over 64-element steps, reduced
/// pairwise, the tail added in f64.
pub fn dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_f16: lengths differ");
    const STEP: usize = 4 * LANES;
    let n = x.len();
    let np = n / STEP * STEP;
    let mut acc = [[0.0f32; LANES]; 4];
    for i in (0..np).step_by(STEP) {
        for (j, a) in acc.iter_mut().enumerate() {
            let base = i + j * LANES;
            for (l, al) in a.iter_mut().enumerate() {
                *al = x[base + l].to_f32().mul_add(y[base + l].to_f32(), *al);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let mut lo = [0.0f32; LANES];
    for (l, v) in lo.iter_mut().enumerate() {
        *v = (a0[l] + a2[l]) + (a1[l] + a3[l]);
    }
    let mut sum = reduce_add_16(&lo) as f64;
    for i in np..n {
        sum += (x[i].to_f32() * y[i].to_f32()) as f64;
    }
    sum as f32
}

/// `y += x * v` on F16 rows, rounding to F16 after each update (llama.cpp `ggml_vec_mad_f16`:
/// fused multiply-add on 64-element steps, unfused on the tail).
pub fn mad_f16(y: &mut [f16], x: &[f16], v: f32) {
    assert_eq!(x.len(), y.len(), "mad_f16: lengths differ");
    let np = y.len() / (4 * LANES) * (4 * LANES);
    for (yi, xi) in y[..np].iter_mut().zip(&x[..np]) {
        *yi = f16::from_f32(xi.to_f32().mul_add(v, yi.to_f32()));
    }
    for (yi, xi) in y[np..].iter_mut().zip(&x[np..]) {
        *yi = f16::from_f32(yi.to_f32() + xi.to_f32() * v);
    }
}

/// `y *= v` on an F16 row, rounding to F16 (llama.cpp `ggml_vec_scale_f16`).
pub fn scale_f16(y: &mut [f16], v: f32) {
    for yi in y.iter_mut() {
        *yi = f16::from_f32(yi.to_f32() * v);
    }
}

/// Converts an f32 row to F16 (round to nearest even, as `vcvtps2ph`).
pub fn f32_to_f16_row(dst: &mut [f16], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "f32_to_f16_row: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// Attention of one query head over `n_kv` cached positions, all visible (the causal mask is the
/// caller's choice of `n_kv`), as llama.cpp's CPU flash attention computes it for F16 K/V
/// (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`): K·q by [`dot_f16`] on the F16 query,
/// times `scale`; online softmax with libm `expf`; V accumulated in F16 ([`scale_f16`],
/// [`mad_f16`]); finally divided by the sum in f32.
///
/// q: [D] (already F16), k: [KV, D] row-major, v: [KV, DV] row-major, acc: [DV] scratch,
/// out: [DV].
pub fn attention_one_query_f16(
    out: &mut [f32],
    acc: &mut [f16],
    q: &[f16],
    k: &[f16],
    v: &[f16],
    n_kv: usize,
    scale: f32,
) {
    attention_one_query_f16_with(out, acc, q, k, v, n_kv, scale, dot_f16, scale_f16, mad_f16)
}

/// The body of [`attention_one_query_f16`] over given F16 helpers (`dot`, `scale`, `mad`, each
/// computing what [`dot_f16`], [`scale_f16`] and [`mad_f16`] compute): the SIMD table passes
/// its vector versions, so the online softmax itself is written once.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_one_query_f16_with(
    out: &mut [f32],
    acc: &mut [f16],
    q: &[f16],
    k: &[f16],
    v: &[f16],
    n_kv: usize,
    scale: f32,
    dot: impl Fn(&[f16], &[f16]) -> f32,
    scale_acc: impl Fn(&mut [f16], f32),
    mad: impl Fn(&mut [f16], &[f16], f32),
) {
    let d = q.len();
    let dv = out.len();
    assert_eq!(acc.len(), dv, "attention_one_query_f16: acc length");
    assert!(k.len() >= n_kv * d, "attention_one_query_f16: k too short");
    assert!(v.len() >= n_kv * dv, "attention_one_query_f16: v too short");
    acc.fill(f16::ZERO);
    let mut sum = 0.0f32;
    let mut max = f32::NEG_INFINITY;
    for ic in 0..n_kv {
        let s = dot(&k[ic * d..(ic + 1) * d], q) * scale;
        let old_max = max;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if s > max {
            max = s;
            ms = (old_max - max).exp();
            scale_acc(acc, ms);
        } else {
            vs = (s - max).exp();
        }
        mad(acc, &v[ic * dv..(ic + 1) * dv], vs);
        // `S = S*ms + vs` in llama.cpp, contracted to one fma by GCC (C++, -ffp-contract=fast).
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a.to_f32() * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, scale: f32, seed: u64) -> Vec<f32> {
        crate::testutil::rand_vec(n, scale, &mut { seed })
    }

    fn rel_err(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn expf_ggml_is_within_two_ulp_of_exp() {
        let mut x = -103.0f32;
        while x < 88.0 {
            let got = expf_ggml(x) as f64;
            let want = (x as f64).exp();
            assert!(rel_err(got, want) < 2.5e-7, "x={x} got={got} want={want}");
            x += 0.0137;
        }
        assert_eq!(expf_ggml(0.0), 1.0);
        assert_eq!(expf_ggml(-200.0), 0.0);
        assert_eq!(expf_ggml(200.0), f32::INFINITY);
        assert!(expf_ggml(f32::NAN).is_nan());
    }

    #[test]
    fn silu_and_swiglu_match_f64() {
        let x = rand_vec(37, 12.0, 1);
        let g = rand_vec(37, 3.0, 2);
        let mut y = vec![0.0; 37];
        silu_forward(&mut y, &x);
        for (i, &xi) in x.iter().enumerate() {
            let want = xi as f64 / (1.0 + (-(xi as f64)).exp());
            assert!(
                (y[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "i={i}"
            );
        }
        swiglu_forward(&mut y, &x, &g);
        for i in 0..37 {
            let xi = x[i] as f64;
            let want = xi / (1.0 + (-xi).exp()) * g[i] as f64;
            assert!(
                (y[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "i={i}"
            );
        }
    }

    #[test]
    fn rmsnorm_matches_f64() {
        let x = rand_vec(576, 4.0, 3);
        let w = rand_vec(576, 1.0, 4);
        let mut y = vec![0.0; 576];
        rmsnorm_forward(&mut y, &x, &w, 1e-5);
        let ms: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / 576.0;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        for i in 0..576 {
            let want = x[i] as f64 * inv * w[i] as f64;
            assert!(
                (y[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "i={i}"
            );
        }
        let mut z = x.clone();
        rmsnorm_weighted_inplace(&mut z, &w, 1e-5);
        assert_eq!(z, y);
        let mut u = x.clone();
        rmsnorm_inplace(&mut u, 1e-5);
        for i in 0..576 {
            assert!((u[i] as f64 - x[i] as f64 * inv).abs() < 1e-5);
        }
    }

    fn rope_ref(x: &[f32], pos: usize, base: f64, n_dims: usize, mode: RopeMode) -> Vec<f64> {
        let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for i in 0..n_dims / 2 {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / n_dims as f64);
            let (a, b) = match mode {
                RopeMode::Norm => (2 * i, 2 * i + 1),
                RopeMode::Neox => (i, i + n_dims / 2),
            };
            let (x0, x1) = (x[a] as f64, x[b] as f64);
            out[a] = x0 * theta.cos() - x1 * theta.sin();
            out[b] = x0 * theta.sin() + x1 * theta.cos();
        }
        out
    }

    #[test]
    fn rope_norm_and_neox_match_f64() {
        for mode in [RopeMode::Norm, RopeMode::Neox] {
            for pos in [0usize, 1, 7, 100] {
                let x = rand_vec(64, 2.0, pos as u64 + 10);
                for n_dims in [64usize, 32] {
                    let mut cache = vec![0.0; n_dims];
                    rope_cache(
                        &mut cache,
                        pos,
                        rope_theta_scale(10000.0, n_dims),
                        1.0,
                        None,
                    );
                    let mut y = x.clone();
                    rope_forward(&mut y, &cache, mode);
                    let want = rope_ref(&x, pos, 10000.0, n_dims, mode);
                    for i in 0..64 {
                        // theta accumulates f32 rounding pair after pair; allow ~1e-5 * pos.
                        let tol = 1e-5 * (1.0 + pos as f64) * 2.0;
                        assert!(
                            (y[i] as f64 - want[i]).abs() < tol,
                            "{mode:?} pos={pos} n_dims={n_dims} i={i} got={} want={}",
                            y[i],
                            want[i]
                        );
                    }
                    // dims past n_dims untouched
                    assert_eq!(&y[n_dims..], &x[n_dims..]);
                }
            }
        }
        // pos 0 is the identity
        let x = rand_vec(64, 2.0, 99);
        let mut cache = vec![0.0; 64];
        rope_cache(&mut cache, 0, rope_theta_scale(10000.0, 64), 1.0, None);
        let mut y = x.clone();
        rope_forward(&mut y, &cache, RopeMode::Norm);
        assert_eq!(x, y);
    }

    #[test]
    fn softmax_matches_f64() {
        for n in [1usize, 5, 16, 33, 100] {
            let x = rand_vec(n, 10.0, n as u64);
            let mut y = x.clone();
            softmax_forward(&mut y);
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
            for i in 0..n {
                let want = (x[i] as f64 - m).exp() / z;
                assert!((y[i] as f64 - want).abs() < 1e-6, "n={n} i={i}");
            }
        }
    }

    #[test]
    fn f16_helpers_match_f64() {
        for n in [64usize, 100, 3] {
            let a: Vec<f16> = rand_vec(n, 3.0, 5)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let b: Vec<f16> = rand_vec(n, 3.0, 6)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
            assert!((dot_f16(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
            let mut y = a.clone();
            mad_f16(&mut y, &b, 0.5);
            for i in 0..n {
                let w = a[i].to_f64() + b[i].to_f64() * 0.5;
                assert!((y[i].to_f64() - w).abs() <= 2e-3 * w.abs().max(1.0));
            }
        }
    }

    #[test]
    fn attention_one_query_matches_f64() {
        let (d, n_kv) = (64usize, 9usize);
        let q: Vec<f16> = rand_vec(d, 1.0, 7)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let k: Vec<f16> = rand_vec(d * n_kv, 1.0, 8)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let v: Vec<f16> = rand_vec(d * n_kv, 1.0, 9)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let scale = 0.125f32;
        let mut out = vec![0.0f32; d];
        let mut acc = vec![f16::ZERO; d];
        attention_one_query_f16(&mut out, &mut acc, &q, &k, &v, n_kv, scale);
        let s: Vec<f64> = (0..n_kv)
            .map(|j| {
                (0..d)
                    .map(|i| q[i].to_f64() * k[j * d + i].to_f64())
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for i in 0..d {
            let want: f64 = (0..n_kv)
                .map(|j| (s[j] - m).exp() / z * v[j * d + i].to_f64())
                .sum();
            // V accumulates in F16: ~1e-3 relative
            assert!(
                (out[i] as f64 - want).abs() < 3e-3,
                "i={i} got={} want={want}",
                out[i]
            );
        }
        // one position: output is v itself
        attention_one_query_f16(&mut out, &mut acc, &q, &k, &v, 1, scale);
        for i in 0..d {
            assert_eq!(out[i], v[i].to_f32());
        }
    }
}
