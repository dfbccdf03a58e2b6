//! Divergences between the teacher's and the student's next-token distributions at a
//! temperature, over the teacher's top-k tokens plus one tail bucket, and their gradients
//! with respect to the student's logits.
//!
//! The teacher is known through its `k` most likely tokens (log-probabilities at temperature
//! τ) and the log of the mass left on all other tokens (the tail). The student's distribution
//! `π = softmax(s / τ)` over the whole vocabulary is coarsened the same way: `Q_j = π_j` for
//! the teacher's top-k tokens and `Q_tail = Σ_{v ∉ top-k} π_v`. Each divergence is exact on
//! these k + 1 outcomes (a lower bound of the full-vocabulary one, equal to it when the tail
//! is one token or the student's tail is proportional to the teacher's), and every outcome
//! keeps its true mass: nothing is renormalised away.
//!
//! Gradient: with `g_J = ∂D/∂Q_J` and `G = Σ_J g_J Q_J`, for a token `v` in bucket `J(v)`,
//! `∂D/∂s_v = π_v (g_J(v) − G) / τ` (softmax Jacobian summed over the bucket).

/// Which divergence of the student Q from the teacher P.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Divergence {
    /// Forward KL(P ‖ Q): mass-covering (the usual distillation loss).
    Kl,
    /// Reverse KL(Q ‖ P): mode-seeking.
    ReverseKl,
    /// Jensen–Shannon: ½ KL(P ‖ M) + ½ KL(Q ‖ M), M = (P + Q) / 2.
    Jsd,
}

impl Divergence {
    /// Parses `kl`, `rkl` or `jsd`.
    pub fn from_name(name: &str) -> Option<Divergence> {
        match name {
            "kl" => Some(Divergence::Kl),
            "rkl" => Some(Divergence::ReverseKl),
            "jsd" => Some(Divergence::Jsd),
            _ => None,
        }
    }

    /// `kl`, `rkl` or `jsd`.
    pub fn name(self) -> &'static str {
        match self {
            Divergence::Kl => "kl",
            Divergence::ReverseKl => "rkl",
            Divergence::Jsd => "jsd",
        }
    }
}

/// The teacher's distribution at one position: `ids` ([k], distinct, `< V`), their
/// log-probabilities `logp` ([k]) and `log_tail`, the log of the remaining mass (`-inf` when
/// the top-k covers the vocabulary).
#[derive(Debug, Clone, Copy)]
pub struct TeacherRow<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Their log-probabilities at the temperature.
    pub logp: &'a [f32],
    /// Log of the mass on every other token.
    pub log_tail: f32,
}

/// `x ln(x / y)` with the conventions `0 ln(0/y) = 0`.
fn xlogx_over(x: f64, lx: f64, ly: f64) -> f64 {
    if x > 0.0 {
        x * (lx - ly)
    } else {
        0.0
    }
}

/// Divergence `div` between the teacher `row` and the student's `logits` ([V]) at
/// `temperature`; writes `scale · ∂D/∂logits` into `grad` ([V], overwritten).
pub fn divergence_row(
    div: Divergence,
    logits: &[f32],
    row: TeacherRow<'_>,
    temperature: f32,
    scale: f32,
    grad: &mut [f32],
) -> f64 {
    let tau = temperature as f64;
    let k = row.ids.len();
    // Student: u = s / τ, lse = log Σ exp(u).
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / tau;
    let z: f64 = logits.iter().map(|&s| (s as f64 / tau - m).exp()).sum();
    let lse = m + z.ln();
    let lq = |id: u32| logits[id as usize] as f64 / tau - lse;
    let top_sum: f64 = row.ids.iter().map(|&id| (lq(id) + lse - m).exp()).sum();
    let has_tail = k < logits.len();
    // Student tail mass, from the sum of the other terms (kept ≥ 0).
    let tail_sum = (z - top_sum).max(0.0);
    let lq_tail = if has_tail && tail_sum > 0.0 {
        tail_sum.ln() + m - lse
    } else {
        f64::NEG_INFINITY
    };
    // Floor for log P (only reached for a stored -inf tail next to a non-empty student tail).
    const LOG_FLOOR: f64 = -700.0;
    let lp_tail = if has_tail {
        (row.log_tail as f64).max(LOG_FLOOR)
    } else {
        f64::NEG_INFINITY
    };
    // Buckets: the k tokens, then the tail. (log P, log Q) of bucket j.
    let bucket = |j: usize| -> (f64, f64) {
        if j < k {
            ((row.logp[j] as f64).max(LOG_FLOOR), lq(row.ids[j]))
        } else {
            (lp_tail, lq_tail)
        }
    };
    let n_buckets = if has_tail { k + 1 } else { k };
    // Loss and g_J = ∂D/∂Q_J (as g_J · Q_J and g_J to avoid 0/0).
    let mut loss = 0.0f64;
    let mut big_g = 0.0f64; // Σ g_J Q_J
    let mut gs = [0.0f64; 1]; // tail's g, set below
    let g_of = |lp: f64, lqj: f64| -> (f64, f64, f64) {
        // (loss term, g, g·Q)
        let (p, q) = (lp.exp(), lqj.exp());
        match div {
            Divergence::Kl => {
                let term = xlogx_over(p, lp, lqj);
                // g = -P/Q; g·Q = -P.
                let g = if q > 0.0 { -p / q } else { 0.0 };
                (term, g, -p)
            }
            Divergence::ReverseKl => {
                let term = xlogx_over(q, lqj, lp);
                let g = if q > 0.0 { lqj - lp + 1.0 } else { 0.0 };
                (term, g, g * q)
            }
            Divergence::Jsd => {
                let mm = 0.5 * (p + q);
                let lm = if mm > 0.0 { mm.ln() } else { f64::NEG_INFINITY };
                let term = 0.5 * xlogx_over(p, lp, lm) + 0.5 * xlogx_over(q, lqj, lm);
                let g = if q > 0.0 { 0.5 * (lqj - lm) } else { 0.0 };
                (term, g, g * q)
            }
        }
    };
    for j in 0..n_buckets {
        let (lp, lqj) = bucket(j);
        let (term, g, gq) = g_of(lp, lqj);
        loss += term;
        big_g += gq;
        if j == k {
            gs[0] = g;
        }
    }
    // ∂D/∂u_v = π_v (g_J(v) − G); the tail first, then the k tokens.
    let c = scale as f64 / tau;
    let g_tail = gs[0];
    for (d, &s) in grad.iter_mut().zip(logits) {
        let pi = (s as f64 / tau - lse).exp();
        *d = (c * pi * (g_tail - big_g)) as f32;
    }
    for j in 0..k {
        let (lp, lqj) = bucket(j);
        let (_, g, _) = g_of(lp, lqj);
        let pi = lqj.exp();
        grad[row.ids[j] as usize] = (c * pi * (g - big_g)) as f32;
    }
    loss
}

/// The teacher row of a full logits vector: its top-`k` tokens at `temperature` (by logit,
/// ties to the lower id), their log-probabilities and the log tail mass. `order` is scratch
/// of V indices.
pub fn top_k_row(
    logits: &[f32],
    k: usize,
    temperature: f32,
    order: &mut Vec<u32>,
    ids: &mut [u32],
    logp: &mut [f32],
) -> f32 {
    let v = logits.len();
    let k = k.min(v);
    let tau = temperature as f64;
    order.clear();
    order.extend(0..v as u32);
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < v {
        order.select_nth_unstable_by(k, cmp);
    }
    order[..k].sort_unstable_by(cmp);
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / tau;
    let mut top = 0.0f64;
    for (i, &id) in order[..k].iter().enumerate() {
        top += (logits[id as usize] as f64 / tau - m).exp();
        ids[i] = id;
    }
    let tail: f64 = order[k..]
        .iter()
        .map(|&id| (logits[id as usize] as f64 / tau - m).exp())
        .sum();
    let lse = m + (top + tail).ln();
    for (i, &id) in order[..k].iter().enumerate() {
        logp[i] = (logits[id as usize] as f64 / tau - lse) as f32;
    }
    if tail > 0.0 {
        (tail.ln() + m - lse) as f32
    } else {
        f32::NEG_INFINITY
    }
}
