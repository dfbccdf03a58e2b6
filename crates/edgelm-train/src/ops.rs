//! The model's operations as `<op>_forward` / `<op>_backward` pairs, f32, multi-threaded with
//! rayon over rows. Shapes use the alphabet B (batch), T (tokens per sequence), C (width),
//! H (query heads), KV (key/value heads), D (head dim), FF (feed-forward width), V (vocab);
//! `N = B·T` rows. Backward functions say which gradients they overwrite (`=`) and which they
//! add to (`+=`); none allocates.

use edgelm_kernels::dense::{sgemm, Layout};
use edgelm_kernels::ops::RopeMode;
use rayon::prelude::*;

/// Target id meaning "no loss at this position" (padding, prompt tokens of a chat).
pub const IGNORE: u32 = u32::MAX;

/// Rows per rayon task for cheap row-wise ops.
const ROWS_PER_TASK: usize = 8;

// ------------------------------------------------------------------------------------------
// Embedding

/// `out[i] = table[tokens[i]]`. out: [N, C], table: [V, C], tokens: [N] (ids checked by caller).
pub fn embedding_forward(out: &mut [f32], table: &[f32], tokens: &[u32], c: usize) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .for_each(|(row, &tok)| {
            let t = tok as usize;
            row.copy_from_slice(&table[t * c..(t + 1) * c]);
        });
}

/// `dtable[tokens[i]] += dout[i]` (a token seen twice gets both rows). Serial: rows may collide.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    // out[i] = table[tokens[i]]
    for (row, &tok) in dout.chunks_exact(c).zip(tokens) {
        let t = tok as usize;
        for (d, g) in dtable[t * c..(t + 1) * c].iter_mut().zip(row) {
            *d += g;
        }
    }
}

// ------------------------------------------------------------------------------------------
// RMSNorm

/// `out = x · rstd · w` with `rstd = 1/sqrt(mean(x²) + eps)` per row, as inference computes it
/// (squares in f32 summed in f64, mean and scale in f32). out, x: [N, C]; rstd: [N]; w: [C].
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    out.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((o, r), xr)| {
            let mut sum = 0.0f64;
            for &v in xr {
                sum += (v * v) as f64;
            }
            let mean = (sum / c as f64) as f32;
            let s = 1.0 / (mean + eps).sqrt();
            *r = s;
            for ((oi, &xi), &wi) in o.iter_mut().zip(xr).zip(w) {
                *oi = xi * s * wi;
            }
        });
}

/// dx `+=`, dw `+=`. dout, x, dx: [N, C]; w, dw: [C]; rstd: [N] saved by the forward.
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
) {
    let c = w.len();
    // out_i = x_i · r · w_i,  r = (mean(x²) + eps)^-1/2,  ∂r/∂x_j = −r³ x_j / C
    // dx_j = r w_j dout_j − (r³ x_j / C) Σ_i dout_i w_i x_i
    dx.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(x.par_chunks(c))
        .zip(rstd.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((dxr, dor), xr), &r)| {
            let mut dot = 0.0f64;
            for ((&g, &wi), &xi) in dor.iter().zip(w).zip(xr) {
                dot += (g * wi * xi) as f64;
            }
            let k = (r * r * r) * (dot as f32) / c as f32;
            for (((d, &g), &wi), &xi) in dxr.iter_mut().zip(dor).zip(w).zip(xr) {
                *d += r * wi * g - k * xi;
            }
        });
    // dw_i = Σ_rows dout_i x_i r  (parallel over column blocks: rows would collide)
    let block = 64;
    dw.par_chunks_mut(block).enumerate().for_each(|(bi, dwb)| {
        let c0 = bi * block;
        for ((dor, xr), &r) in dout.chunks_exact(c).zip(x.chunks_exact(c)).zip(rstd) {
            for (j, d) in dwb.iter_mut().enumerate() {
                *d += dor[c0 + j] * xr[c0 + j] * r;
            }
        }
    });
}

// ------------------------------------------------------------------------------------------
// Matmul

/// `out = inp · wᵀ`. inp: [N, C], w: [OC, C] (a weight row per output), out: [N, OC].
pub fn matmul_forward(out: &mut [f32], inp: &[f32], w: &[f32], n: usize, c: usize, oc: usize) {
    sgemm(
        n,
        oc,
        c,
        inp,
        Layout::Normal,
        w,
        Layout::Transposed,
        out,
        false,
        rayon::current_num_threads(),
    )
    .expect("matmul_forward: buffers sized by the caller's layout");
}

/// `out += inp · wᵀ` (the residual connections add the projection in place).
pub fn matmul_forward_add(out: &mut [f32], inp: &[f32], w: &[f32], n: usize, c: usize, oc: usize) {
    sgemm(
        n,
        oc,
        c,
        inp,
        Layout::Normal,
        w,
        Layout::Transposed,
        out,
        true,
        rayon::current_num_threads(),
    )
    .expect("matmul_forward_add: buffers sized by the caller's layout");
}

/// dinp `+=` dout · w ([N, C]); dw `+=` doutᵀ · inp ([OC, C]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) {
    let threads = rayon::current_num_threads();
    // out[n, o] = Σ_c inp[n, c] w[o, c]
    sgemm(
        n,
        c,
        oc,
        dout,
        Layout::Normal,
        w,
        Layout::Normal,
        dinp,
        true,
        threads,
    )
    .expect("matmul_backward dinp: buffers sized by the caller's layout");
    sgemm(
        oc,
        c,
        n,
        dout,
        Layout::Transposed,
        inp,
        Layout::Normal,
        dw,
        true,
        threads,
    )
    .expect("matmul_backward dw: buffers sized by the caller's layout");
}

// ------------------------------------------------------------------------------------------
// Bias

/// `out[i] += b` for every row. out: [N, W]; b: [W].
pub fn bias_forward(out: &mut [f32], b: &[f32]) {
    out.par_chunks_mut(b.len())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|row| {
            for (o, &bi) in row.iter_mut().zip(b) {
                *o += bi;
            }
        });
}

/// db `+=` Σ_rows dout. dout: [N, W]; db: [W].
pub fn bias_backward(db: &mut [f32], dout: &[f32]) {
    let (w, block) = (db.len(), 64);
    db.par_chunks_mut(block).enumerate().for_each(|(bi, dbb)| {
        let c0 = bi * block;
        for row in dout.chunks_exact(w) {
            for (j, d) in dbb.iter_mut().enumerate() {
                *d += row[c0 + j];
            }
        }
    });
}

// ------------------------------------------------------------------------------------------
// RoPE

/// Rotates every head of every row in place. x: [B, T, NH, D]; cache: [T, rope_dim] (cos, sin
/// per pair, from [`edgelm_kernels::ops::rope_cache`] for positions 0..T: each sequence
/// starts at position 0). The same rotation inference applies.
pub fn rope_forward(
    x: &mut [f32],
    cache: &[f32],
    t: usize,
    n_heads: usize,
    d: usize,
    mode: RopeMode,
) {
    let rd = cache.len() / t;
    x.par_chunks_mut(n_heads * d)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(i, row)| {
            let cs = &cache[(i % t) * rd..(i % t + 1) * rd];
            for head in row.chunks_exact_mut(d) {
                edgelm_kernels::ops::rope_forward(head, cs, mode);
            }
        });
}

/// dx = Rᵀ · dout in place (the rotation by −θ). Shapes as [`rope_forward`].
pub fn rope_backward(
    dx: &mut [f32],
    cache: &[f32],
    t: usize,
    n_heads: usize,
    d: usize,
    mode: RopeMode,
) {
    let rd = cache.len() / t;
    dx.par_chunks_mut(n_heads * d)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(i, row)| {
            let cs = &cache[(i % t) * rd..(i % t + 1) * rd];
            for head in row.chunks_exact_mut(d) {
                // y0 = x0 c − x1 s, y1 = x0 s + x1 c  ⇒  dx0 = dy0 c + dy1 s, dx1 = −dy0 s + dy1 c
                for p in 0..rd / 2 {
                    let (c, s) = (cs[2 * p], cs[2 * p + 1]);
                    let (i0, i1) = match mode {
                        RopeMode::Norm => (2 * p, 2 * p + 1),
                        RopeMode::Neox => (p, p + rd / 2),
                    };
                    let (g0, g1) = (head[i0], head[i1]);
                    head[i0] = g0 * c + g1 * s;
                    head[i1] = g1 * c - g0 * s;
                }
            }
        });
}

// ------------------------------------------------------------------------------------------
// Causal self-attention with grouped-query heads

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Sequences (B).
    pub b: usize,
    /// Tokens per sequence (T).
    pub t: usize,
    /// Query heads (H).
    pub n_head: usize,
    /// Key/value heads (KV); query head `h` reads kv head `h / (H / KV)`, as inference does.
    pub n_head_kv: usize,
    /// Head dim (D).
    pub d: usize,
}

impl AttnShape {
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// out[b,t,h] = Σ_{s≤t} p[b,t,h,s] v[b,s,h/G] with p = softmax_s(q[b,t,h]·k[b,s,h/G] / √D).
/// out, q: [B, T, H·D]; k, v: [B, T, KV·D]; att (saved probabilities): [B, T, H, T], zero
/// above the diagonal.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sh: AttnShape,
) {
    let AttnShape {
        t,
        n_head,
        n_head_kv,
        d,
        ..
    } = sh;
    let (qd, kvd) = (n_head * d, n_head_kv * d);
    let group = n_head / n_head_kv;
    let scale = sh.scale();
    out.par_chunks_mut(qd)
        .zip(att.par_chunks_mut(n_head * t))
        .enumerate()
        .for_each(|(i, (orow, arow))| {
            let (bi, ti) = (i / t, i % t);
            for h in 0..n_head {
                let kvh = h / group;
                let qv = &q[i * qd + h * d..i * qd + (h + 1) * d];
                let p = &mut arow[h * t..(h + 1) * t];
                let mut max = f32::NEG_INFINITY;
                for (s, ps) in p[..=ti].iter_mut().enumerate() {
                    let r = (bi * t + s) * kvd + kvh * d;
                    *ps = dot(qv, &k[r..r + d]) * scale;
                    max = max.max(*ps);
                }
                let mut sum = 0.0f32;
                for ps in p[..=ti].iter_mut() {
                    *ps = (*ps - max).exp();
                    sum += *ps;
                }
                let inv = 1.0 / sum;
                for ps in p[..=ti].iter_mut() {
                    *ps *= inv;
                }
                p[ti + 1..].fill(0.0);
                let o = &mut orow[h * d..(h + 1) * d];
                o.fill(0.0);
                for (s, &ps) in p[..=ti].iter().enumerate() {
                    let r = (bi * t + s) * kvd + kvh * d;
                    for (oj, &vj) in o.iter_mut().zip(&v[r..r + d]) {
                        *oj += ps * vj;
                    }
                }
            }
        });
}

/// dq `=`, dk `=`, dv `=` from dout. datt: scratch [B, T, H, T] (holds ∂L/∂score·scale).
/// Other shapes as [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    att: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sh: AttnShape,
) {
    let AttnShape {
        t,
        n_head,
        n_head_kv,
        d,
        ..
    } = sh;
    let (qd, kvd) = (n_head * d, n_head_kv * d);
    let group = n_head / n_head_kv;
    let scale = sh.scale();
    // Pass 1, per query row: dp_s = dout·v_s; dscore_s = p_s (dp_s − Σ p dp); dq = Σ dscore_s k_s
    dq.par_chunks_mut(qd)
        .zip(datt.par_chunks_mut(n_head * t))
        .enumerate()
        .for_each(|(i, (dqrow, drow))| {
            let (bi, ti) = (i / t, i % t);
            let arow = &att[i * n_head * t..(i + 1) * n_head * t];
            for h in 0..n_head {
                let kvh = h / group;
                let go = &dout[i * qd + h * d..i * qd + (h + 1) * d];
                let p = &arow[h * t..(h + 1) * t];
                let ds = &mut drow[h * t..(h + 1) * t];
                let mut pdp = 0.0f32;
                for (s, dss) in ds[..=ti].iter_mut().enumerate() {
                    let r = (bi * t + s) * kvd + kvh * d;
                    *dss = dot(go, &v[r..r + d]);
                    pdp += p[s] * *dss;
                }
                for (dss, &ps) in ds[..=ti].iter_mut().zip(p) {
                    *dss = ps * (*dss - pdp) * scale;
                }
                ds[ti + 1..].fill(0.0);
                let g = &mut dqrow[h * d..(h + 1) * d];
                g.fill(0.0);
                for (s, &dss) in ds[..=ti].iter().enumerate() {
                    let r = (bi * t + s) * kvd + kvh * d;
                    for (gj, &kj) in g.iter_mut().zip(&k[r..r + d]) {
                        *gj += dss * kj;
                    }
                }
            }
        });
    let datt = &*datt;
    // Pass 2, per key row s: dk_s = Σ_{t≥s} dscore_{t,s} q_t; dv_s = Σ_{t≥s} p_{t,s} dout_t,
    // summed over the query heads that share the kv head.
    dk.par_chunks_mut(kvd)
        .zip(dv.par_chunks_mut(kvd))
        .enumerate()
        .for_each(|(i, (dkrow, dvrow))| {
            let (bi, si) = (i / t, i % t);
            dkrow.fill(0.0);
            dvrow.fill(0.0);
            for h in 0..n_head {
                let kvh = h / group;
                let gk = &mut dkrow[kvh * d..(kvh + 1) * d];
                for ti in si..t {
                    let row = bi * t + ti;
                    let ds = datt[(row * n_head + h) * t + si];
                    let qv = &q[row * qd + h * d..row * qd + (h + 1) * d];
                    for (gj, &qj) in gk.iter_mut().zip(qv) {
                        *gj += ds * qj;
                    }
                }
                let gv = &mut dvrow[kvh * d..(kvh + 1) * d];
                for ti in si..t {
                    let row = bi * t + ti;
                    let ps = att[(row * n_head + h) * t + si];
                    let go = &dout[row * qd + h * d..row * qd + (h + 1) * d];
                    for (gj, &oj) in gv.iter_mut().zip(go) {
                        *gj += ps * oj;
                    }
                }
            }
        });
}

// ------------------------------------------------------------------------------------------
// SwiGLU

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `out = silu(gate) · up`, silu(g) = g·σ(g). All [N, FF].
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096))
        .zip(up.par_chunks(4096))
        .for_each(|((o, g), u)| {
            for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
                *oi = gi * sigmoid(gi) * ui;
            }
        });
}

/// dgate `=`, dup `=`. All [N, FF].
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    // out = g σ(g) u  ⇒  ∂/∂g = u σ(g) (1 + g (1 − σ(g))),  ∂/∂u = g σ(g)
    dgate
        .par_chunks_mut(4096)
        .zip(dup.par_chunks_mut(4096))
        .zip(dout.par_chunks(4096))
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(((dg, du), go), (g, u))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                dg[i] = go[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                du[i] = go[i] * g[i] * s;
            }
        });
}

// ------------------------------------------------------------------------------------------
// Cross-entropy

/// losses[i] = −log softmax(logits[i])[targets[i]], 0 where the target is [`IGNORE`].
/// logits: [N, V]; targets, losses: [N]. Returns (Σ losses in f64, number of targets counted).
pub fn cross_entropy_forward(
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    v: usize,
) -> (f64, usize) {
    losses
        .par_iter_mut()
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter())
        .for_each(|((l, row), &tgt)| {
            if tgt == IGNORE {
                *l = 0.0;
                return;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| ((x - max).exp()) as f64).sum();
            *l = (sum.ln() + max as f64 - row[tgt as usize] as f64) as f32;
        });
    let n = targets.iter().filter(|&&t| t != IGNORE).count();
    (losses.iter().map(|&x| x as f64).sum(), n)
}

/// logits are replaced by ∂L/∂logits for L = dloss · Σ losses: (softmax − onehot) · dloss
/// per counted row, 0 on ignored rows. logits: [N, V].
pub fn cross_entropy_backward(logits: &mut [f32], targets: &[u32], dloss: f32, v: usize) {
    logits
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .for_each(|(row, &tgt)| {
            if tgt == IGNORE {
                row.fill(0.0);
                return;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f64;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x as f64;
            }
            let inv = (1.0 / sum) as f32;
            for x in row.iter_mut() {
                *x *= inv * dloss;
            }
            row[tgt as usize] -= dloss;
        });
}

#[cfg(test)]
mod tests;
