//! Forward and backward of the model with LoRA adapters over a [`FrozenBase`].
//!
//! The math is [`crate::model`]'s (same ops, same order) with each adapted projection
//! `y = W·x` becoming `y = W·x + s·B·A·drop(x)`; the base's matrices come from
//! [`super::base`] (dequantized row blocks), and the backward computes gradients for the
//! adapters only: `dx` flows through every frozen op, no base gradient is formed (the
//! embedding's backward is skipped entirely).

use edgelm_kernels::ops::rope_cache;

use super::base::{frozen_matmul_backward, frozen_matmul_forward, BaseScratch, FrozenBase};
use super::{lora_backward, lora_forward, LoraParams, LoraShape, LoraTarget};
use crate::ops::{self, AttnShape, IGNORE};
use crate::TrainError;

/// Buffers of one LoRA step for `B` sequences of `T` tokens, allocated once: the
/// activations the backward needs (as [`crate::Workspace`]), each adapter's `s·A·x`, the
/// frozen matrices' row buffer and the backward scratch.
pub struct LoraWorkspace {
    b: usize,
    t: usize,
    n_valid: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    rope: Vec<f32>,
    resid: Vec<f32>,
    ln1: Vec<f32>,
    ln1_rstd: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    q_pre: Vec<f32>,
    q_rstd: Vec<f32>,
    k_pre: Vec<f32>,
    k_rstd: Vec<f32>,
    att: Vec<f32>,
    atty: Vec<f32>,
    resid2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_rstd: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    hidden: Vec<f32>,
    lnf: Vec<f32>,
    lnf_rstd: Vec<f32>,
    logits: Vec<f32>,
    losses: Vec<f32>,
    /// [n_adapters, N, R]: `s·A·drop(x)` per adapter.
    lora_u: Vec<f32>,
    /// Seed of the last forward's dropout masks (None: no dropout).
    dropout_seed: Option<u64>,
    base_scratch: BaseScratch,
    // Backward scratch.
    dresid: Vec<f32>,
    dln: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dq_pre: Vec<f32>,
    dk_pre: Vec<f32>,
    datty: Vec<f32>,
    datt: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    dhidden: Vec<f32>,
    /// dw of the frozen norms (computed by the shared op, discarded).
    dnorm: Vec<f32>,
    /// [N, R]
    du: Vec<f32>,
    /// Dropped-out adapter input and its gradient, [N, max(C, FF, H·D)] (dropout only).
    xdrop: Vec<f32>,
    dxdrop: Vec<f32>,
    logits_valid: bool,
}

fn zeros(parts: &[usize]) -> Result<Vec<f32>, TrainError> {
    let n = parts
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(TrainError::Overflow {
            what: "LoRA workspace",
        })?;
    Ok(vec![0.0; n])
}

impl LoraWorkspace {
    /// Buffers for batches of `b` sequences of `t` tokens.
    pub fn new(
        base: &FrozenBase,
        lora: &LoraParams,
        b: usize,
        t: usize,
    ) -> Result<LoraWorkspace, TrainError> {
        let cfg = base.config();
        if b == 0 || t == 0 {
            return Err(TrainError::BadBatch(format!(
                "{b} sequences of {t} tokens: both must be positive"
            )));
        }
        check_shapes(base, lora)?;
        let (l, c, ff, v) = (cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_vocab);
        let (qd, kvd, h) = (cfg.q_dim(), cfg.kv_dim(), cfg.n_head);
        let n = b * t;
        let normed = base
            .layout()
            .layers
            .first()
            .is_some_and(|lp| lp.q_norm.is_some());
        let nl = if normed { l } else { 0 };
        let mut rope = zeros(&[t, cfg.rope_dim])?;
        let theta_scale = edgelm_kernels::ops::rope_theta_scale(cfg.rope_theta, cfg.rope_dim);
        for (p, row) in rope.chunks_exact_mut(cfg.rope_dim).enumerate() {
            rope_cache(
                row,
                p,
                theta_scale,
                cfg.rope_freq_scale,
                base.rope_freqs.as_deref(),
            );
        }
        let r = lora.config().rank;
        let wide = c.max(ff).max(qd);
        let drop_n = if lora.config().dropout > 0.0 {
            n * wide
        } else {
            0
        };
        Ok(LoraWorkspace {
            b,
            t,
            n_valid: 0,
            tokens: vec![0; n],
            targets: vec![IGNORE; n],
            rope,
            resid: zeros(&[l + 1, n, c])?,
            ln1: zeros(&[l, n, c])?,
            ln1_rstd: zeros(&[l, n])?,
            q: zeros(&[l, n, qd])?,
            k: zeros(&[l, n, kvd])?,
            v: zeros(&[l, n, kvd])?,
            q_pre: zeros(&[nl, n, qd])?,
            q_rstd: zeros(&[nl, n, h])?,
            k_pre: zeros(&[nl, n, kvd])?,
            k_rstd: zeros(&[nl, n, cfg.n_head_kv])?,
            att: zeros(&[l, n, h, t])?,
            atty: zeros(&[l, n, qd])?,
            resid2: zeros(&[l, n, c])?,
            ln2: zeros(&[l, n, c])?,
            ln2_rstd: zeros(&[l, n])?,
            gate: zeros(&[l, n, ff])?,
            up: zeros(&[l, n, ff])?,
            hidden: zeros(&[l, n, ff])?,
            lnf: zeros(&[n, c])?,
            lnf_rstd: zeros(&[n])?,
            logits: zeros(&[n, v])?,
            losses: zeros(&[n])?,
            lora_u: zeros(&[lora.specs().len(), n, r])?,
            dropout_seed: None,
            base_scratch: BaseScratch::new(base, n),
            dresid: zeros(&[n, c])?,
            dln: zeros(&[n, c])?,
            dq: zeros(&[n, qd])?,
            dk: zeros(&[n, kvd])?,
            dv: zeros(&[n, kvd])?,
            dq_pre: zeros(&[n, if normed { qd } else { 0 }])?,
            dk_pre: zeros(&[n, if normed { kvd } else { 0 }])?,
            datty: zeros(&[n, qd])?,
            datt: zeros(&[n, h, t])?,
            dgate: zeros(&[n, ff])?,
            dup: zeros(&[n, ff])?,
            dhidden: zeros(&[n, ff])?,
            dnorm: zeros(&[c.max(cfg.head_dim)])?,
            du: zeros(&[n, r])?,
            xdrop: vec![0.0; drop_n],
            dxdrop: vec![0.0; drop_n],
            logits_valid: false,
        })
    }

    /// Sequences per batch (B).
    pub fn batch(&self) -> usize {
        self.b
    }

    /// Tokens per sequence (T).
    pub fn seq_len(&self) -> usize {
        self.t
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        let f = [
            &self.rope,
            &self.resid,
            &self.ln1,
            &self.ln1_rstd,
            &self.q,
            &self.k,
            &self.v,
            &self.q_pre,
            &self.q_rstd,
            &self.k_pre,
            &self.k_rstd,
            &self.att,
            &self.atty,
            &self.resid2,
            &self.ln2,
            &self.ln2_rstd,
            &self.gate,
            &self.up,
            &self.hidden,
            &self.lnf,
            &self.lnf_rstd,
            &self.logits,
            &self.losses,
            &self.lora_u,
            &self.dresid,
            &self.dln,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.dq_pre,
            &self.dk_pre,
            &self.datty,
            &self.datt,
            &self.dgate,
            &self.dup,
            &self.dhidden,
            &self.dnorm,
            &self.du,
            &self.xdrop,
            &self.dxdrop,
        ];
        f.iter().map(|v| v.len() * 4).sum::<usize>()
            + 8 * self.tokens.len()
            + self.base_scratch.bytes()
    }

    /// The logits of the last forward ([N, V]); `None` once the backward has consumed them.
    pub fn logits(&self) -> Option<&[f32]> {
        self.logits_valid.then_some(&self.logits[..])
    }

    /// Targets counted by the last forward.
    pub fn n_valid(&self) -> usize {
        self.n_valid
    }
}

/// The adapters must have been made for the base's config.
fn check_shapes(base: &FrozenBase, lora: &LoraParams) -> Result<(), TrainError> {
    let cfg = base.config();
    for s in lora.specs() {
        let (n_in, n_out) = s.target.shape(cfg);
        if s.layer >= cfg.n_layer || (s.n_in, s.n_out) != (n_in, n_out) {
            return Err(TrainError::TensorMismatch {
                name: s.base_name(),
                expected: format!(
                    "an adapter for [{n_out}, {n_in}] in one of {} blocks",
                    cfg.n_layer
                ),
                found: format!("[{}, {}] in block {}", s.n_out, s.n_in, s.layer),
            });
        }
    }
    Ok(())
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `out (+)= x ⊙ m / (1 − p)` with the keep mask `m` of (`seed`, element index): the same
/// mask for the forward's input and the backward's gradient.
fn dropout_apply(out: &mut [f32], x: &[f32], seed: u64, p: f32, accumulate: bool) {
    let inv = 1.0 / (1.0 - p);
    let thresh = (p as f64 * (1u64 << 53) as f64) as u64;
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let h = mix(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 11;
        let y = if h >= thresh { v * inv } else { 0.0 };
        if accumulate {
            *o += y;
        } else {
            *o = y;
        }
    }
}

fn mask_seed(seed: u64, adapter: usize) -> u64 {
    mix(seed ^ mix(adapter as u64 + 1))
}

/// Adds adapter `ai`'s update for input `x` ([N, C]) to `y` ([N, OC]), saving `s·A·drop(x)`.
#[allow(clippy::too_many_arguments)]
fn adapter_forward(
    lora: &LoraParams,
    lora_u: &mut [f32],
    xdrop: &mut [f32],
    dropout_seed: Option<u64>,
    ai: usize,
    x: &[f32],
    y: &mut [f32],
    n: usize,
) {
    let s = &lora.specs()[ai];
    let r = lora.config().rank;
    let (ra, rb) = lora.ranges(ai);
    let u = &mut lora_u[ai * n * r..(ai + 1) * n * r];
    let sh = LoraShape {
        n,
        c: s.n_in,
        oc: s.n_out,
        r,
        scale: lora.config().scale(),
    };
    let x = match dropout_seed {
        Some(seed) if lora.config().dropout > 0.0 => {
            let xd = &mut xdrop[..n * s.n_in];
            dropout_apply(xd, x, mask_seed(seed, ai), lora.config().dropout, false);
            &*xd
        }
        _ => x,
    };
    lora_forward(y, u, x, &lora.values[ra], &lora.values[rb], sh);
}

/// Runs `tokens` ([B, T]) through the base with adapters, saving activations in `ws`;
/// returns the mean cross-entropy against `targets`. `dropout_seed`: `Some` in training
/// (adapter dropout with masks drawn from it), `None` for evaluation.
pub fn forward(
    base: &FrozenBase,
    lora: &LoraParams,
    ws: &mut LoraWorkspace,
    tokens: &[u32],
    targets: &[u32],
    dropout_seed: Option<u64>,
) -> Result<f32, TrainError> {
    let cfg = base.config();
    let (t, n) = (ws.t, ws.b * ws.t);
    if tokens.len() != n || targets.len() != n {
        return Err(TrainError::BadBatch(format!(
            "{} tokens and {} targets for a workspace of {} x {}",
            tokens.len(),
            targets.len(),
            ws.b,
            ws.t
        )));
    }
    if ws.lora_u.len() != lora.specs().len() * n * lora.config().rank {
        return Err(TrainError::BadBatch(
            "the workspace was made for other adapters".into(),
        ));
    }
    let v = cfg.n_vocab;
    for (what, ids) in [("token", tokens), ("target", targets)] {
        if let Some((i, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &x)| x != IGNORE && x as usize >= v)
        {
            return Err(TrainError::BadBatch(format!(
                "{what} id {id} at position {i} is outside the vocabulary of {v}"
            )));
        }
    }
    if let Some(i) = tokens.iter().position(|&x| x == IGNORE) {
        return Err(TrainError::BadBatch(format!(
            "token id {IGNORE} at position {i} is outside the vocabulary of {v}"
        )));
    }
    let n_valid = targets.iter().filter(|&&x| x != IGNORE).count();
    if n_valid == 0 {
        return Err(TrainError::BadBatch(
            "no target positions to compute a loss on".into(),
        ));
    }
    ws.tokens.copy_from_slice(tokens);
    ws.targets.copy_from_slice(targets);
    ws.n_valid = n_valid;
    ws.dropout_seed = dropout_seed;

    let lay = base.layout();
    let (c, ff) = (cfg.n_embd, cfg.n_ff);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let (h, kv, d) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    let sh = AttnShape {
        b: ws.b,
        t,
        n_head: h,
        n_head_kv: kv,
        d,
    };
    let mode = cfg.arch.rope_mode();
    let eps = cfg.rms_eps;
    let (nc, nq, nkv, nf, na) = (n * c, n * qd, n * kvd, n * ff, n * h * t);
    let bs = &mut ws.base_scratch;

    base.embed(&mut ws.resid[..nc], tokens, &mut bs.rows)?;
    for (l, lp) in lay.layers.iter().enumerate() {
        let mut adapt = |target: LoraTarget, x: &[f32], y: &mut [f32]| {
            if let Some(ai) = lora.index(l, target) {
                adapter_forward(
                    lora,
                    &mut ws.lora_u,
                    &mut ws.xdrop,
                    dropout_seed,
                    ai,
                    x,
                    y,
                    n,
                );
            }
        };
        let (done, rest) = ws.resid.split_at_mut((l + 1) * nc);
        let x = &done[l * nc..];
        let x_next = &mut rest[..nc];
        let ln1 = &mut ws.ln1[l * nc..(l + 1) * nc];
        ops::rmsnorm_forward(
            ln1,
            &mut ws.ln1_rstd[l * n..(l + 1) * n],
            x,
            base.vec(lp.attn_norm),
            eps,
        );
        let q = &mut ws.q[l * nq..(l + 1) * nq];
        let k = &mut ws.k[l * nkv..(l + 1) * nkv];
        let vv = &mut ws.v[l * nkv..(l + 1) * nkv];
        frozen_matmul_forward(base, bs, lp.wq, q, ln1, n, false)?;
        frozen_matmul_forward(base, bs, lp.wk, k, ln1, n, false)?;
        frozen_matmul_forward(base, bs, lp.wv, vv, ln1, n, false)?;
        adapt(LoraTarget::Q, ln1, q);
        adapt(LoraTarget::K, ln1, k);
        adapt(LoraTarget::V, ln1, vv);
        for (y, bias) in [(&mut *q, lp.bq), (&mut *k, lp.bk), (&mut *vv, lp.bv)] {
            if let Some(bi) = bias {
                ops::bias_forward(y, base.vec(bi));
            }
        }
        if let (Some(qn), Some(kn)) = (lp.q_norm, lp.k_norm) {
            let q_pre = &mut ws.q_pre[l * nq..(l + 1) * nq];
            q_pre.copy_from_slice(q);
            let q_rstd = &mut ws.q_rstd[l * n * h..(l + 1) * n * h];
            ops::rmsnorm_forward(q, q_rstd, q_pre, base.vec(qn), eps);
            let k_pre = &mut ws.k_pre[l * nkv..(l + 1) * nkv];
            k_pre.copy_from_slice(k);
            let k_rstd = &mut ws.k_rstd[l * n * kv..(l + 1) * n * kv];
            ops::rmsnorm_forward(k, k_rstd, k_pre, base.vec(kn), eps);
        }
        ops::rope_forward(q, &ws.rope, t, h, d, mode);
        ops::rope_forward(k, &ws.rope, t, kv, d, mode);
        let atty = &mut ws.atty[l * nq..(l + 1) * nq];
        ops::attention_forward(atty, &mut ws.att[l * na..(l + 1) * na], q, k, vv, sh);
        let r2 = &mut ws.resid2[l * nc..(l + 1) * nc];
        r2.copy_from_slice(x);
        frozen_matmul_forward(base, bs, lp.wo, r2, atty, n, true)?;
        adapt(LoraTarget::O, atty, r2);
        let ln2 = &mut ws.ln2[l * nc..(l + 1) * nc];
        ops::rmsnorm_forward(
            ln2,
            &mut ws.ln2_rstd[l * n..(l + 1) * n],
            r2,
            base.vec(lp.ffn_norm),
            eps,
        );
        let gate = &mut ws.gate[l * nf..(l + 1) * nf];
        let up = &mut ws.up[l * nf..(l + 1) * nf];
        frozen_matmul_forward(base, bs, lp.w_gate, gate, ln2, n, false)?;
        frozen_matmul_forward(base, bs, lp.w_up, up, ln2, n, false)?;
        adapt(LoraTarget::Gate, ln2, gate);
        adapt(LoraTarget::Up, ln2, up);
        let hidden = &mut ws.hidden[l * nf..(l + 1) * nf];
        ops::swiglu_forward(hidden, gate, up);
        x_next.copy_from_slice(r2);
        frozen_matmul_forward(base, bs, lp.w_down, x_next, hidden, n, true)?;
        adapt(LoraTarget::Down, hidden, x_next);
    }
    let l = cfg.n_layer;
    ops::rmsnorm_forward(
        &mut ws.lnf,
        &mut ws.lnf_rstd,
        &ws.resid[l * nc..(l + 1) * nc],
        base.vec(lay.output_norm),
        eps,
    );
    frozen_matmul_forward(base, bs, lay.output, &mut ws.logits, &ws.lnf, n, false)?;
    ws.logits_valid = true;
    let (sum, count) = ops::cross_entropy_forward(&mut ws.losses, &ws.logits, targets, v);
    Ok((sum / count as f64) as f32)
}

/// Backward of adapter `ai` for `dy` ([N, OC]) with its input `x` ([N, C]): adds to the
/// adapter's gradients in `grads` and to `dx`.
#[allow(clippy::too_many_arguments)]
fn adapter_backward(
    lora: &LoraParams,
    grads: &mut [f32],
    lora_u: &[f32],
    du: &mut [f32],
    xdrop: &mut [f32],
    dxdrop: &mut [f32],
    dropout_seed: Option<u64>,
    ai: usize,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    n: usize,
) {
    let s = &lora.specs()[ai];
    let r = lora.config().rank;
    let (ra, rb) = lora.ranges(ai);
    let u = &lora_u[ai * n * r..(ai + 1) * n * r];
    let sh = LoraShape {
        n,
        c: s.n_in,
        oc: s.n_out,
        r,
        scale: lora.config().scale(),
    };
    let (ga, gb) = grads.split_at_mut(rb.start);
    let (da, db) = (&mut ga[ra.clone()], &mut gb[..rb.len()]);
    let (a, b) = (&lora.values[ra.clone()], &lora.values[rb.clone()]);
    match dropout_seed {
        Some(seed) if lora.config().dropout > 0.0 => {
            let p = lora.config().dropout;
            let ms = mask_seed(seed, ai);
            let xd = &mut xdrop[..n * s.n_in];
            dropout_apply(xd, x, ms, p, false);
            let dxd = &mut dxdrop[..n * s.n_in];
            dxd.fill(0.0);
            lora_backward(dxd, da, db, &mut du[..n * r], dy, xd, u, a, b, sh);
            dropout_apply(dx, dxd, ms, p, true);
        }
        _ => lora_backward(dx, da, db, &mut du[..n * r], dy, x, u, a, b, sh),
    }
}

/// Adds `scale · ∂loss/∂adapters` to `grads` ([`LoraParams::n_params`]) for the loss of the
/// last [`forward`] on `ws`.
pub fn backward(
    base: &FrozenBase,
    lora: &LoraParams,
    ws: &mut LoraWorkspace,
    grads: &mut [f32],
    scale: f32,
) -> Result<(), TrainError> {
    if !ws.logits_valid {
        return Err(TrainError::BadBatch(
            "backward needs a forward on this workspace first".into(),
        ));
    }
    if grads.len() != lora.n_params() {
        return Err(TrainError::BadBatch(format!(
            "{} gradients for {} adapter parameters",
            grads.len(),
            lora.n_params()
        )));
    }
    let cfg = base.config();
    let lay = base.layout();
    let (t, n) = (ws.t, ws.b * ws.t);
    let (c, ff, v) = (cfg.n_embd, cfg.n_ff, cfg.n_vocab);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let (h, kv, d) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    let sh = AttnShape {
        b: ws.b,
        t,
        n_head: h,
        n_head_kv: kv,
        d,
    };
    let mode = cfg.arch.rope_mode();
    let (nc, nq, nkv, nf, na) = (n * c, n * qd, n * kvd, n * ff, n * h * t);
    let seed = ws.dropout_seed;

    ops::cross_entropy_backward(&mut ws.logits, &ws.targets, scale / ws.n_valid as f32, v);
    ws.logits_valid = false;
    let bs = &mut ws.base_scratch;
    ws.dln.fill(0.0);
    frozen_matmul_backward(base, bs, lay.output, &mut ws.dln, &ws.logits, n)?;
    ws.dresid.fill(0.0);
    let l_n = cfg.n_layer;
    let dnorm = &mut ws.dnorm[..c];
    ops::rmsnorm_backward(
        &mut ws.dresid,
        dnorm,
        &ws.dln,
        &ws.resid[l_n * nc..(l_n + 1) * nc],
        base.vec(lay.output_norm),
        &ws.lnf_rstd,
    );
    for (l, lp) in lay.layers.iter().enumerate().rev() {
        let mut adapt = |target: LoraTarget, x: &[f32], dy: &[f32], dx: &mut [f32]| {
            if let Some(ai) = lora.index(l, target) {
                adapter_backward(
                    lora,
                    grads,
                    &ws.lora_u,
                    &mut ws.du,
                    &mut ws.xdrop,
                    &mut ws.dxdrop,
                    seed,
                    ai,
                    x,
                    dy,
                    dx,
                    n,
                );
            }
        };
        // x_next = r2 + w_down · hidden (+ adapter): dresid flows to r2 unchanged.
        let hidden = &ws.hidden[l * nf..(l + 1) * nf];
        ws.dhidden.fill(0.0);
        frozen_matmul_backward(base, bs, lp.w_down, &mut ws.dhidden, &ws.dresid, n)?;
        adapt(LoraTarget::Down, hidden, &ws.dresid, &mut ws.dhidden);
        ops::swiglu_backward(
            &mut ws.dgate,
            &mut ws.dup,
            &ws.dhidden,
            &ws.gate[l * nf..(l + 1) * nf],
            &ws.up[l * nf..(l + 1) * nf],
        );
        let ln2 = &ws.ln2[l * nc..(l + 1) * nc];
        ws.dln.fill(0.0);
        frozen_matmul_backward(base, bs, lp.w_gate, &mut ws.dln, &ws.dgate, n)?;
        frozen_matmul_backward(base, bs, lp.w_up, &mut ws.dln, &ws.dup, n)?;
        adapt(LoraTarget::Gate, ln2, &ws.dgate, &mut ws.dln);
        adapt(LoraTarget::Up, ln2, &ws.dup, &mut ws.dln);
        ops::rmsnorm_backward(
            &mut ws.dresid,
            &mut ws.dnorm[..c],
            &ws.dln,
            &ws.resid2[l * nc..(l + 1) * nc],
            base.vec(lp.ffn_norm),
            &ws.ln2_rstd[l * n..(l + 1) * n],
        );
        // r2 = x + wo · atty (+ adapter): dresid flows to x unchanged.
        let atty = &ws.atty[l * nq..(l + 1) * nq];
        ws.datty.fill(0.0);
        frozen_matmul_backward(base, bs, lp.wo, &mut ws.datty, &ws.dresid, n)?;
        adapt(LoraTarget::O, atty, &ws.dresid, &mut ws.datty);
        let (q, k) = (&ws.q[l * nq..(l + 1) * nq], &ws.k[l * nkv..(l + 1) * nkv]);
        ops::attention_backward(
            &mut ws.dq,
            &mut ws.dk,
            &mut ws.dv,
            &mut ws.datt,
            &ws.datty,
            &ws.att[l * na..(l + 1) * na],
            q,
            k,
            &ws.v[l * nkv..(l + 1) * nkv],
            sh,
        );
        ops::rope_backward(&mut ws.dq, &ws.rope, t, h, d, mode);
        ops::rope_backward(&mut ws.dk, &ws.rope, t, kv, d, mode);
        let (dq, dk): (&[f32], &[f32]) = if let (Some(qn), Some(kn)) = (lp.q_norm, lp.k_norm) {
            ws.dq_pre.fill(0.0);
            ops::rmsnorm_backward(
                &mut ws.dq_pre,
                &mut ws.dnorm[..d],
                &ws.dq,
                &ws.q_pre[l * nq..(l + 1) * nq],
                base.vec(qn),
                &ws.q_rstd[l * n * h..(l + 1) * n * h],
            );
            ws.dk_pre.fill(0.0);
            ops::rmsnorm_backward(
                &mut ws.dk_pre,
                &mut ws.dnorm[..d],
                &ws.dk,
                &ws.k_pre[l * nkv..(l + 1) * nkv],
                base.vec(kn),
                &ws.k_rstd[l * n * kv..(l + 1) * n * kv],
            );
            (&ws.dq_pre, &ws.dk_pre)
        } else {
            (&ws.dq, &ws.dk)
        };
        let ln1 = &ws.ln1[l * nc..(l + 1) * nc];
        ws.dln.fill(0.0);
        for (dy, w) in [(dq, lp.wq), (dk, lp.wk), (&ws.dv[..], lp.wv)] {
            frozen_matmul_backward(base, bs, w, &mut ws.dln, dy, n)?;
        }
        adapt(LoraTarget::Q, ln1, dq, &mut ws.dln);
        adapt(LoraTarget::K, ln1, dk, &mut ws.dln);
        adapt(LoraTarget::V, ln1, &ws.dv, &mut ws.dln);
        ops::rmsnorm_backward(
            &mut ws.dresid,
            &mut ws.dnorm[..c],
            &ws.dln,
            &ws.resid[l * nc..(l + 1) * nc],
            base.vec(lp.attn_norm),
            &ws.ln1_rstd[l * n..(l + 1) * n],
        );
    }
    Ok(())
}
