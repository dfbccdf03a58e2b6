//! Every backward against central finite differences of its forward. The scalar checked is
//! `L = Σ g · out` with a fixed random `g` (summed in f64); each input element (or a spread
//! sample of them) is moved by ±h in f32 and `(L+ − L−) / (x+ − x−)` compared with the
//! analytic gradient. Budget: |analytic − fd| ≤ 2e-4 · max(1, |fd|) — the f32 forward's
//! rounding divided by 2h, plus the O(h²) truncation, stays under 3e-5 in these shapes, while a
//! wrong backward is off by O(1).

use super::*;

pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

fn weighted(out: &[f32], g: &[f32]) -> f64 {
    out.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Compares `analytic` with central differences of `loss` over (a sample of) `x`.
fn fd_check(name: &str, x: &[f32], analytic: &[f32], h: f32, loss: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut xs = x.to_vec();
    let step = (x.len() / 97).max(1);
    let mut worst = 0.0f64;
    for i in (0..x.len()).step_by(step) {
        let orig = xs[i];
        xs[i] = orig + h;
        let (xp, lp) = (xs[i], loss(&xs));
        xs[i] = orig - h;
        let (xm, lm) = (xs[i], loss(&xs));
        xs[i] = orig;
        let fd = (lp - lm) / (xp as f64 - xm as f64);
        let err = (analytic[i] as f64 - fd).abs() / fd.abs().max(1.0);
        worst = worst.max(err);
        assert!(
            err <= 2e-4,
            "{name}[{i}]: analytic {} vs finite difference {fd} (rel err {err:.2e})",
            analytic[i]
        );
    }
    eprintln!("{name}: worst rel err {worst:.2e}");
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let (v, c) = (7, 5);
    let tokens = [3u32, 1, 3, 6];
    let mut r = Rng::new(1);
    let table = r.vec(v * c, 1.0);
    let g = r.vec(tokens.len() * c, 1.0);
    let loss = |tab: &[f32]| {
        let mut out = vec![0.0; tokens.len() * c];
        embedding_forward(&mut out, tab, &tokens, c);
        weighted(&out, &g)
    };
    let mut dtable = vec![0.0; v * c];
    embedding_backward(&mut dtable, &g, &tokens, c);
    fd_check("embedding dtable", &table, &dtable, 1e-2, loss);
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, c, eps) = (6, 24, 1e-5);
    let mut r = Rng::new(2);
    let x = r.vec(n * c, 2.0);
    let w = r.vec(c, 1.5);
    let g = r.vec(n * c, 1.0);
    let run = |x: &[f32], w: &[f32]| {
        let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward(&mut out, &mut rstd, x, w, eps);
        (out, rstd)
    };
    let (_, rstd) = run(&x, &w);
    // Gradients accumulate: start from a known non-zero value and subtract it.
    let (mut dx, mut dw) = (vec![0.5; n * c], vec![-0.25; c]);
    rmsnorm_backward(&mut dx, &mut dw, &g, &x, &w, &rstd);
    dx.iter_mut().for_each(|d| *d -= 0.5);
    dw.iter_mut().for_each(|d| *d += 0.25);
    fd_check("rmsnorm dx", &x, &dx, 1e-2, |x| weighted(&run(x, &w).0, &g));
    fd_check("rmsnorm dw", &w, &dw, 1e-2, |w| weighted(&run(&x, w).0, &g));
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let (n, c, oc) = (5, 12, 9);
    let mut r = Rng::new(3);
    let inp = r.vec(n * c, 1.0);
    let w = r.vec(oc * c, 1.0);
    let g = r.vec(n * oc, 1.0);
    let run = |inp: &[f32], w: &[f32]| {
        let mut out = vec![0.0; n * oc];
        matmul_forward(&mut out, inp, w, n, c, oc);
        weighted(&out, &g)
    };
    let (mut dinp, mut dw) = (vec![1.0; n * c], vec![1.0; oc * c]);
    matmul_backward(&mut dinp, &mut dw, &g, &inp, &w, n, c, oc);
    dinp.iter_mut().for_each(|d| *d -= 1.0);
    dw.iter_mut().for_each(|d| *d -= 1.0);
    fd_check("matmul dinp", &inp, &dinp, 1e-2, |x| run(x, &w));
    fd_check("matmul dw", &w, &dw, 1e-2, |x| run(&inp, x));
    // matmul_forward_add adds the same product.
    let mut out = vec![0.0; n * oc];
    matmul_forward(&mut out, &inp, &w, n, c, oc);
    let mut acc = vec![2.0; n * oc];
    matmul_forward_add(&mut acc, &inp, &w, n, c, oc);
    for (a, o) in acc.iter().zip(&out) {
        assert!((a - 2.0 - o).abs() < 1e-5);
    }
}

fn rope_table(t: usize, rope_dim: usize) -> Vec<f32> {
    let mut cache = vec![0.0; t * rope_dim];
    let ts = edgelm_kernels::ops::rope_theta_scale(10000.0, rope_dim);
    for (p, row) in cache.chunks_exact_mut(rope_dim).enumerate() {
        edgelm_kernels::ops::rope_cache(row, p, ts, 1.0, None);
    }
    cache
}

#[test]
fn rope_backward_matches_finite_differences() {
    let (b, t, nh, d) = (2, 5, 3, 8);
    for mode in [RopeMode::Norm, RopeMode::Neox] {
        // rope_dim < d: the last dimensions pass through unrotated.
        for rope_dim in [8, 6] {
            let cache = rope_table(t, rope_dim);
            let mut r = Rng::new(4);
            let x = r.vec(b * t * nh * d, 1.0);
            let g = r.vec(b * t * nh * d, 1.0);
            let mut dx = g.clone();
            rope_backward(&mut dx, &cache, t, nh, d, mode);
            fd_check(
                &format!("rope {mode:?} rope_dim {rope_dim}"),
                &x,
                &dx,
                1e-2,
                |x| {
                    let mut y = x.to_vec();
                    rope_forward(&mut y, &cache, t, nh, d, mode);
                    weighted(&y, &g)
                },
            );
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences_with_gqa_and_causal_mask() {
    let sh = AttnShape {
        b: 2,
        t: 5,
        n_head: 4,
        n_head_kv: 2,
        d: 8,
    };
    let (n, qd, kvd) = (sh.b * sh.t, sh.n_head * sh.d, sh.n_head_kv * sh.d);
    let mut r = Rng::new(5);
    let q = r.vec(n * qd, 1.0);
    let k = r.vec(n * kvd, 1.0);
    let v = r.vec(n * kvd, 1.0);
    let g = r.vec(n * qd, 1.0);
    let att_len = sh.b * sh.t * sh.n_head * sh.t;
    let run = |q: &[f32], k: &[f32], v: &[f32]| {
        let (mut out, mut att) = (vec![0.0; n * qd], vec![0.0; att_len]);
        attention_forward(&mut out, &mut att, q, k, v, sh);
        (out, att)
    };
    let (out, att) = run(&q, &k, &v);
    // Causality: probabilities above the diagonal are zero and each row sums to one.
    for (row_i, row) in att.chunks_exact(sh.t).enumerate() {
        let ti = (row_i / sh.n_head) % sh.t;
        assert!(row[ti + 1..].iter().all(|&p| p == 0.0));
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // The first token of each sequence attends only to itself: out = v of its kv head.
    for bi in 0..sh.b {
        for h in 0..sh.n_head {
            let kvh = h / (sh.n_head / sh.n_head_kv);
            let o = &out[bi * sh.t * qd + h * sh.d..][..sh.d];
            let vv = &v[bi * sh.t * kvd + kvh * sh.d..][..sh.d];
            for (a, b) in o.iter().zip(vv) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
    let (mut dq, mut dk, mut dv) = (vec![9.0; n * qd], vec![9.0; n * kvd], vec![9.0; n * kvd]);
    let mut datt = vec![0.0; att_len];
    attention_backward(
        &mut dq, &mut dk, &mut dv, &mut datt, &g, &att, &q, &k, &v, sh,
    );
    let h = 1e-2;
    fd_check("attention dq", &q, &dq, h, |x| {
        weighted(&run(x, &k, &v).0, &g)
    });
    fd_check("attention dk", &k, &dk, h, |x| {
        weighted(&run(&q, x, &v).0, &g)
    });
    fd_check("attention dv", &v, &dv, h, |x| {
        weighted(&run(&q, &k, x).0, &g)
    });
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let n = 40;
    let mut r = Rng::new(6);
    let gate = r.vec(n, 4.0);
    let up = r.vec(n, 2.0);
    let g = r.vec(n, 1.0);
    let run = |gate: &[f32], up: &[f32]| {
        let mut out = vec![0.0; n];
        swiglu_forward(&mut out, gate, up);
        weighted(&out, &g)
    };
    let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&mut dgate, &mut dup, &g, &gate, &up);
    fd_check("swiglu dgate", &gate, &dgate, 1e-2, |x| run(x, &up));
    fd_check("swiglu dup", &up, &dup, 1e-2, |x| run(&gate, x));
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let (n, v) = (4, 11);
    let targets = [3u32, IGNORE, 10, 0];
    let mut r = Rng::new(7);
    let logits = r.vec(n * v, 3.0);
    let dloss = 0.7f32;
    let run = |x: &[f32]| {
        let mut losses = vec![0.0; n];
        let (sum, count) = cross_entropy_forward(&mut losses, x, &targets, v);
        assert_eq!(count, 3);
        assert_eq!(losses[1], 0.0);
        sum * dloss as f64
    };
    let mut d = logits.clone();
    cross_entropy_backward(&mut d, &targets, dloss, v);
    assert!(
        d[v..2 * v].iter().all(|&x| x == 0.0),
        "ignored row has no gradient"
    );
    fd_check("cross-entropy dlogits", &logits, &d, 1e-2, run);
    // The loss of a uniform row is ln V.
    let mut l = [0.0f32];
    cross_entropy_forward(&mut l, &vec![0.5; v], &[2], v);
    assert!((l[0] - (v as f32).ln()).abs() < 1e-6);
}

#[test]
fn bias_backward_matches_finite_differences() {
    let (n, w) = (5, 70);
    let mut r = Rng::new(8);
    let x = r.vec(n * w, 1.0);
    let b = r.vec(w, 1.0);
    let g = r.vec(n * w, 1.0);
    let mut db = vec![0.5; w];
    bias_backward(&mut db, &g);
    db.iter_mut().for_each(|d| *d -= 0.5);
    fd_check("bias db", &b, &db, 1e-2, |b| {
        let mut out = x.clone();
        bias_forward(&mut out, b);
        weighted(&out, &g)
    });
}
