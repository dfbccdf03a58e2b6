//! llama.cpp's tiled flash attention (`ggml_compute_forward_flash_attn_ext_tiled`), which it
//! takes for batches of 64 or more query tokens: Q stays f32; for each tile of 64 cached
//! positions, scores are f32 dot products (one fused multiply-add chain per score, dimension by
//! dimension, as its `simd_gemm` computes each element), scaled, masked, then an online softmax
//! per tile (tile max, `expf` rescale of the running output and sum, polynomial `exp` of the
//! scores summed in f64 by 16-lane groups) and `V` accumulated in f32 (one fma chain per output
//! element over the tile's positions). The output is divided by the sum at the end.
//!
//! [`attention_tiled_f16`] is written once and compiled twice: as the scalar reference and,
//! inlined into an AVX2 + FMA function, in `arch::x86_64`, where
//! LLVM vectorises the independent chains; `f32::mul_add` is one rounding in both, so the two
//! are bit-identical (tested).

use half::f16;

use crate::ops::{expf_ggml, reduce_add_16};

/// Cached positions per tile (ggml `GGML_FA_TILE_KV`).
pub const KV_TILE: usize = 64;

/// Query tokens per tile (ggml `GGML_FA_TILE_Q`); llama.cpp takes this path for batches of at
/// least this many tokens.
pub const Q_TILE: usize = 64;

/// Score lanes accumulated at once (a quarter of the 32 vector registers at 8 lanes each).
const SCORE_LANES: usize = 32;

/// Output columns accumulated at once.
const OUT_LANES: usize = 32;

/// Scratch for one task of [`attention_tiled_f16`]: a K tile transposed to f32, a V tile in f32,
/// and one row of scores.
pub struct TiledScratch {
    kt: Vec<f32>,
    v32: Vec<f32>,
}

impl TiledScratch {
    /// Scratch for heads of `d` (key) and `dv` (value) dimensions.
    pub fn new(d: usize, dv: usize) -> TiledScratch {
        TiledScratch {
            kt: vec![0.0; d * KV_TILE],
            v32: vec![0.0; KV_TILE * dv],
        }
    }
}

/// Attention of `n_q` query rows of one head (q: [n_q, d] f32) over an F16 cache
/// (k: [n_kv, d], v: [n_kv, dv], rows in position order); query row `j` sees positions
/// `0..first_visible + j + 1` (causal). out: [n_q, dv]. `#[inline(always)]`: see the module
/// documentation.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn attention_tiled_f16(
    out: &mut [f32],
    q: &[f32],
    k: &[f16],
    v: &[f16],
    first_visible: usize,
    d: usize,
    scale: f32,
    scratch: &mut TiledScratch,
) {
    assert!(
        d > 0 && q.len().is_multiple_of(d),
        "attention_tiled: q shape"
    );
    let n_q = q.len() / d;
    assert!(
        n_q > 0 && out.len().is_multiple_of(n_q),
        "attention_tiled: out shape"
    );
    let dv = out.len() / n_q;
    let n_vis_max = first_visible + n_q;
    assert!(k.len() >= n_vis_max * d, "attention_tiled: k too short");
    assert!(v.len() >= n_vis_max * dv, "attention_tiled: v too short");
    assert!(
        scratch.kt.len() >= d * KV_TILE && scratch.v32.len() >= KV_TILE * dv,
        "attention_tiled: scratch too small"
    );
    let mut m = vec_fill(n_q, f32::NEG_INFINITY);
    let mut s = vec_fill(n_q, 0.0f32);
    out.fill(0.0);
    let kt = &mut scratch.kt[..d * KV_TILE];
    let v32 = &mut scratch.v32[..KV_TILE * dv];
    let mut ic = 0;
    while ic < n_vis_max {
        let tile = KV_TILE.min(n_vis_max - ic);
        // K tile transposed (kt[dk][tk]) and V tile, in f32, zero-padded.
        kt.fill(0.0);
        for tk in 0..tile {
            let row = &k[(ic + tk) * d..(ic + tk + 1) * d];
            for (dk, &x) in row.iter().enumerate() {
                kt[dk * KV_TILE + tk] = x.to_f32();
            }
        }
        v32.fill(0.0);
        for tk in 0..tile {
            let row = &v[(ic + tk) * dv..(ic + tk + 1) * dv];
            for (o, &x) in v32[tk * dv..(tk + 1) * dv].iter_mut().zip(row) {
                *o = x.to_f32();
            }
        }
        let mut j0 = 0;
        while j0 < n_q {
            let g = GROUP.min(n_q - j0);
            // Rows are in causal order, so if the group's first row sees this tile, all do.
            if g == GROUP && first_visible + j0 + 1 > ic {
                group_update(
                    out,
                    q,
                    kt,
                    v32,
                    &mut m,
                    &mut s,
                    j0,
                    first_visible,
                    ic,
                    tile,
                    d,
                    dv,
                    scale,
                );
            } else {
                for j in j0..j0 + g {
                    let n_vis = first_visible + j + 1;
                    if n_vis <= ic {
                        continue; // every position of this tile is masked for this row
                    }
                    let mut scores = [0.0f32; KV_TILE];
                    row_scores(&mut scores, &q[j * d..(j + 1) * d], kt);
                    let oj = &mut out[j * dv..(j + 1) * dv];
                    softmax_tile(&mut scores, n_vis - ic, &mut m[j], &mut s[j], oj, scale);
                    row_pv(oj, &scores, v32, tile, dv, 0);
                }
            }
            j0 += g;
        }
        ic += KV_TILE;
    }
    for j in 0..n_q {
        let inv = if s[j] == 0.0 { 0.0 } else { 1.0 / s[j] };
        for o in out[j * dv..(j + 1) * dv].iter_mut() {
            *o *= inv;
        }
    }
}

/// Query rows processed together: their score and output accumulators share every K and V
/// load (llama.cpp's `simd_gemm` register blocking); each element's FMA chain is unchanged.
const GROUP: usize = 4;

/// Key positions (score lanes) or output columns per register block of a group.
const LANES: usize = 16;

/// One row's scores over the tile: `scores[tk]` = FMA chain over dk of `kt[dk][tk] * q[dk]`.
#[inline(always)]
fn row_scores(scores: &mut [f32; KV_TILE], qj: &[f32], kt: &[f32]) {
    for (half, sc_half) in scores.chunks_exact_mut(SCORE_LANES).enumerate() {
        let mut acc = [0.0f32; SCORE_LANES];
        for (dk, &qv) in qj.iter().enumerate() {
            let base = dk * KV_TILE + half * SCORE_LANES;
            let krow = &kt[base..base + SCORE_LANES];
            for (a, &kv) in acc.iter_mut().zip(krow) {
                *a = kv.mul_add(qv, *a);
            }
        }
        sc_half.copy_from_slice(&acc);
    }
}

/// Scales and masks one row's scores (`visible` positions of the tile seen), updates its running
/// maximum `m` and sum `s`, rescales its output `oj`, and turns the scores into softmax
/// numerators (summed as ggml_vec_soft_max_f32 does with AVX-512).
#[inline(always)]
fn softmax_tile(
    scores: &mut [f32; KV_TILE],
    visible: usize,
    m: &mut f32,
    s: &mut f32,
    oj: &mut [f32],
    scale: f32,
) {
    let visible = visible.min(KV_TILE);
    for (tk, sc) in scores.iter_mut().enumerate() {
        *sc = if tk < visible {
            *sc * scale
        } else {
            f32::NEG_INFINITY
        };
    }
    let mut tile_max = f32::NEG_INFINITY;
    for &x in scores.iter() {
        tile_max = if tile_max > x { tile_max } else { x };
    }
    let m_old = *m;
    let m_new = m_old.max(tile_max);
    if m_new > m_old {
        let ms = (m_old - m_new).exp();
        for o in oj.iter_mut() {
            *o *= ms;
        }
        *s *= ms;
    }
    *m = m_new;
    let mut sum = 0.0f64;
    for chunk in scores.chunks_exact_mut(16) {
        let mut lanes = [0.0f32; 16];
        for (l, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = expf_ggml(*x - m_new);
            *l = *x;
        }
        sum += reduce_add_16(&lanes) as f64;
    }
    *s = (*s as f64 + sum) as f32;
}

/// `oj[c] += sum over tk of p[tk] * v[tk][c]` for columns `c0..`: one FMA chain per element,
/// OUT_LANES columns at a time in registers.
#[inline(always)]
fn row_pv(oj: &mut [f32], scores: &[f32; KV_TILE], v32: &[f32], tile: usize, dv: usize, c0: usize) {
    let mut c0 = c0;
    while c0 + OUT_LANES <= dv {
        let mut acc = [0.0f32; OUT_LANES];
        acc.copy_from_slice(&oj[c0..c0 + OUT_LANES]);
        for (tk, &p) in scores.iter().enumerate().take(tile) {
            let base = tk * dv + c0;
            for (a, &vv) in acc.iter_mut().zip(&v32[base..base + OUT_LANES]) {
                *a = vv.mul_add(p, *a);
            }
        }
        oj[c0..c0 + OUT_LANES].copy_from_slice(&acc);
        c0 += OUT_LANES;
    }
    for (tk, &p) in scores.iter().enumerate().take(tile) {
        let vrow = &v32[tk * dv + c0..(tk + 1) * dv];
        for (o, &vv) in oj[c0..].iter_mut().zip(vrow) {
            *o = vv.mul_add(p, *o);
        }
    }
}

/// Rows `j0..j0 + GROUP` (all seeing this tile) together: scores and the V accumulation in
/// register blocks of GROUP rows × LANES, the softmax update row by row in between.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_update(
    out: &mut [f32],
    q: &[f32],
    kt: &[f32],
    v32: &[f32],
    m: &mut [f32],
    s: &mut [f32],
    j0: usize,
    first_visible: usize,
    ic: usize,
    tile: usize,
    d: usize,
    dv: usize,
    scale: f32,
) {
    let mut sc = [[0.0f32; KV_TILE]; GROUP];
    let qg = &q[j0 * d..(j0 + GROUP) * d];
    for blk in 0..KV_TILE / LANES {
        let mut acc = [[0.0f32; LANES]; GROUP];
        for dk in 0..d {
            let base = dk * KV_TILE + blk * LANES;
            let krow = &kt[base..base + LANES];
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let qv = qg[i * d + dk];
                for (a, &kv) in acc_i.iter_mut().zip(krow) {
                    *a = kv.mul_add(qv, *a);
                }
            }
        }
        for (sc_i, acc_i) in sc.iter_mut().zip(&acc) {
            sc_i[blk * LANES..(blk + 1) * LANES].copy_from_slice(acc_i);
        }
    }
    let og = &mut out[j0 * dv..(j0 + GROUP) * dv];
    for (i, sc_i) in sc.iter_mut().enumerate() {
        let j = j0 + i;
        let oj = &mut og[i * dv..(i + 1) * dv];
        softmax_tile(
            sc_i,
            first_visible + j + 1 - ic,
            &mut m[j],
            &mut s[j],
            oj,
            scale,
        );
    }
    let mut c0 = 0;
    while c0 + LANES <= dv {
        let mut acc = [[0.0f32; LANES]; GROUP];
        for (i, acc_i) in acc.iter_mut().enumerate() {
            acc_i.copy_from_slice(&og[i * dv + c0..i * dv + c0 + LANES]);
        }
        for tk in 0..tile {
            let vrow = &v32[tk * dv + c0..tk * dv + c0 + LANES];
            for (acc_i, sc_i) in acc.iter_mut().zip(&sc) {
                let p = sc_i[tk];
                for (a, &vv) in acc_i.iter_mut().zip(vrow) {
                    *a = vv.mul_add(p, *a);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            og[i * dv + c0..i * dv + c0 + LANES].copy_from_slice(acc_i);
        }
        c0 += LANES;
    }
    if c0 < dv {
        for (i, sc_i) in sc.iter().enumerate() {
            row_pv(&mut og[i * dv..(i + 1) * dv], sc_i, v32, tile, dv, c0);
        }
    }
}

/// A small vector on the heap (n_q <= Q_TILE in practice).
fn vec_fill(n: usize, x: f32) -> Vec<f32> {
    vec![x; n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;

    /// Against softmax(q·k·scale)·v in f64, causal: the tiled online softmax is exact up to f32
    /// rounding.
    #[test]
    fn tiled_attention_matches_f64_softmax() {
        let mut seed = 5u64;
        for &(d, n_q, first) in &[
            (64usize, 64usize, 0usize),
            (64, 70, 100),
            (32, 3, 130),
            (8, 65, 0),
        ] {
            let n_kv = first + n_q;
            let q = rand_vec(n_q * d, 1.0, &mut seed);
            let k: Vec<f16> = rand_vec(n_kv * d, 1.0, &mut seed)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let v: Vec<f16> = rand_vec(n_kv * d, 2.0, &mut seed)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let scale = 1.0 / (d as f32).sqrt();
            let mut out = vec![0.0f32; n_q * d];
            let mut sc = TiledScratch::new(d, d);
            attention_tiled_f16(&mut out, &q, &k, &v, first, d, scale, &mut sc);
            for j in 0..n_q {
                let n_vis = first + j + 1;
                let s: Vec<f64> = (0..n_vis)
                    .map(|t| {
                        (0..d)
                            .map(|i| q[j * d + i] as f64 * k[t * d + i].to_f64())
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for i in 0..d {
                    let want: f64 = (0..n_vis)
                        .map(|t| (s[t] - mx).exp() / z * v[t * d + i].to_f64())
                        .sum();
                    let got = out[j * d + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "d={d} j={j} i={i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
