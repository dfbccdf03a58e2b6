//! The f32 training model: master weights, the activations a step saves, the forward pass
//! and its backward, composed from the op pairs of [`crate::ops`].
//!
//! The forward computes, for `B` sequences of `T` tokens (`N = B·T` rows), each sequence at
//! positions `0..T`:
//! `x = token_embd[tokens]`; per block `x += wo · attn(rope(wq·n1), rope(wk·n1), wv·n1)` with
//! `n1 = rmsnorm(x)·attn_norm`, then `x += w_down · (silu(w_gate·n2) ⊙ (w_up·n2))` with
//! `n2 = rmsnorm(x)·ffn_norm`; `logits = output · (rmsnorm(x)·output_norm)` (`output` is
//! `token_embd` when tied); loss = mean cross-entropy over the targets not [`IGNORE`]d.

use edgelm_gguf::GgufFile;
use edgelm_kernels::ops::rope_cache;
use edgelm_model::ModelConfig;

use crate::ops::{self, AttnShape, IGNORE};
use crate::params::ParamLayout;
use crate::TrainError;

/// A model being trained: config, parameter table and f32 master weights.
#[derive(Debug, Clone)]
pub struct TrainModel {
    config: ModelConfig,
    layout: ParamLayout,
    /// Flat f32 weights, carved by [`TrainModel::layout`].
    pub params: Vec<f32>,
    /// Llama-3 RoPE frequency factors (`rope_freqs.weight`), not trained.
    rope_freqs: Option<Vec<f32>>,
}

impl TrainModel {
    /// f32 master weights dequantized from a GGUF model.
    pub fn from_gguf(file: &GgufFile) -> Result<TrainModel, TrainError> {
        let config = ModelConfig::from_gguf(file)?;
        let layout = ParamLayout::new(&config)?;
        let mut params = vec![0.0f32; layout.n_params()];
        layout.load_gguf(file, &mut params)?;
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            None => None,
            Some(t) => {
                let mut v = vec![0.0f32; config.rope_dim / 2];
                if t.n_elements() as usize != v.len() {
                    return Err(TrainError::TensorMismatch {
                        name: t.name.clone(),
                        expected: format!("{} elements", v.len()),
                        found: format!("{:?}", t.dims),
                    });
                }
                edgelm_kernels::dequantize_row(t.ty, file.tensor_data(t), &mut v).map_err(
                    |source| TrainError::Kernel {
                        op: "dequantize rope_freqs.weight".into(),
                        source,
                    },
                )?;
                Some(v)
            }
        };
        Ok(TrainModel {
            config,
            layout,
            params,
            rope_freqs,
        })
    }

    /// A model with `params` (laid out as [`ParamLayout::new`]`(&config)`).
    pub fn from_params(config: ModelConfig, params: Vec<f32>) -> Result<TrainModel, TrainError> {
        let layout = ParamLayout::new(&config)?;
        if params.len() != layout.n_params() {
            return Err(TrainError::BadConfig {
                key: "params".into(),
                reason: format!(
                    "{} values for a layout of {}",
                    params.len(),
                    layout.n_params()
                ),
            });
        }
        Ok(TrainModel {
            config,
            layout,
            params,
            rope_freqs: None,
        })
    }

    /// Random initialisation (GPT-2's: matrices N(0, 0.02²) by a seeded generator, norms 1,
    /// biases 0).
    pub fn random(config: ModelConfig, seed: u64) -> Result<TrainModel, TrainError> {
        let layout = ParamLayout::new(&config)?;
        let mut params = vec![0.0f32; layout.n_params()];
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        for spec in layout.specs() {
            let dst = &mut params[spec.range()];
            if spec.name.ends_with(".bias") {
                dst.fill(0.0);
            } else if spec.is_matrix() {
                for x in dst.iter_mut() {
                    // Box-Muller
                    let (u1, u2) = (uniform(), uniform());
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    *x = (0.02 * z) as f32;
                }
            } else {
                dst.fill(1.0);
            }
        }
        Ok(TrainModel {
            config,
            layout,
            params,
            rope_freqs: None,
        })
    }

    /// Llama-3 RoPE frequency factors, when the model has them.
    pub fn rope_freqs(&self) -> Option<&[f32]> {
        self.rope_freqs.as_deref()
    }

    /// This model with RoPE frequency factors `f` (a student keeps its teacher's).
    pub fn with_rope_freqs(mut self, f: Option<Vec<f32>>) -> TrainModel {
        self.rope_freqs = f;
        self
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameter table.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The weights of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.layout.get(name).map(|s| &self.params[s.range()])
    }

    fn p(&self, index: usize) -> &[f32] {
        &self.params[self.layout.range(index)]
    }
}

/// Every buffer one step needs for `B` sequences of `T` tokens, allocated once and reused:
/// the activations the forward saves for the backward (one slice per block) and the backward's
/// scratch (one block's worth).
pub struct Workspace {
    b: usize,
    t: usize,
    n_valid: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    /// RoPE cos/sin per position [T, rope_dim].
    rope: Vec<f32>,
    // Saved activations, per block l: [L, N, ·]. resid has L+1 slices: block inputs, then
    // the final residual.
    resid: Vec<f32>,
    ln1: Vec<f32>,
    ln1_rstd: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Q and K before their per-head norm, and its 1/rms per head (qwen3; empty otherwise).
    q_pre: Vec<f32>,
    q_rstd: Vec<f32>,
    k_pre: Vec<f32>,
    k_rstd: Vec<f32>,
    /// [L, B, T, H, T] attention probabilities.
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
    /// [N, V]; the backward overwrites it with ∂L/∂logits.
    logits: Vec<f32>,
    losses: Vec<f32>,
    // Backward scratch.
    dresid: Vec<f32>,
    dln: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// Gradients of Q and K before their per-head norm (qwen3; empty otherwise).
    dq_pre: Vec<f32>,
    dk_pre: Vec<f32>,
    datty: Vec<f32>,
    datt: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    dhidden: Vec<f32>,
    logits_valid: bool,
}

fn zeros(parts: &[usize]) -> Result<Vec<f32>, TrainError> {
    let n = parts
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(TrainError::Overflow {
            what: "training workspace",
        })?;
    Ok(vec![0.0; n])
}

impl Workspace {
    /// Buffers for batches of `b` sequences of `t` tokens of `model`.
    pub fn new(model: &TrainModel, b: usize, t: usize) -> Result<Workspace, TrainError> {
        let cfg = model.config();
        if b == 0 || t == 0 {
            return Err(TrainError::BadBatch(format!(
                "{b} sequences of {t} tokens: both must be positive"
            )));
        }
        let (l, c, ff, v) = (cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_vocab);
        let (qd, kvd, h) = (cfg.q_dim(), cfg.kv_dim(), cfg.n_head);
        let n = b * t;
        let normed = model
            .layout
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
                model.rope_freqs.as_deref(),
            );
        }
        Ok(Workspace {
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
            &self.dq_pre,
            &self.dk_pre,
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
            &self.dresid,
            &self.dln,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.datty,
            &self.datt,
            &self.dgate,
            &self.dup,
            &self.dhidden,
        ];
        f.iter().map(|v| v.len() * 4).sum::<usize>() + 8 * self.tokens.len()
    }

    /// The logits of the last forward ([N, V]); `None` once the backward has consumed them.
    pub fn logits(&self) -> Option<&[f32]> {
        self.logits_valid.then_some(&self.logits[..])
    }

    /// Per-position losses of the last forward ([N], 0 at ignored targets).
    pub fn losses(&self) -> &[f32] {
        &self.losses
    }

    /// Targets counted by the last forward.
    pub fn n_valid(&self) -> usize {
        self.n_valid
    }
}

/// Runs `tokens` ([B, T]) through the model, saving activations in `ws`; returns the mean
/// cross-entropy against `targets` ([B, T]; [`IGNORE`] positions not counted).
pub fn forward(
    model: &TrainModel,
    ws: &mut Workspace,
    tokens: &[u32],
    targets: &[u32],
) -> Result<f32, TrainError> {
    let cfg = model.config();
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

    let lay = model.layout();
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

    ops::embedding_forward(&mut ws.resid[..nc], model.p(lay.token_embd), tokens, c);
    for (l, lp) in lay.layers.iter().enumerate() {
        let (done, rest) = ws.resid.split_at_mut((l + 1) * nc);
        let x = &done[l * nc..];
        let x_next = &mut rest[..nc];
        let ln1 = &mut ws.ln1[l * nc..(l + 1) * nc];
        ops::rmsnorm_forward(
            ln1,
            &mut ws.ln1_rstd[l * n..(l + 1) * n],
            x,
            model.p(lp.attn_norm),
            eps,
        );
        let q = &mut ws.q[l * nq..(l + 1) * nq];
        let k = &mut ws.k[l * nkv..(l + 1) * nkv];
        let vv = &mut ws.v[l * nkv..(l + 1) * nkv];
        ops::matmul_forward(q, ln1, model.p(lp.wq), n, c, qd);
        ops::matmul_forward(k, ln1, model.p(lp.wk), n, c, kvd);
        ops::matmul_forward(vv, ln1, model.p(lp.wv), n, c, kvd);
        for (y, bias) in [(&mut *q, lp.bq), (&mut *k, lp.bk), (&mut *vv, lp.bv)] {
            if let Some(bi) = bias {
                ops::bias_forward(y, model.p(bi));
            }
        }
        if let (Some(qn), Some(kn)) = (lp.q_norm, lp.k_norm) {
            // Per-head RMSNorm: rows of D values, one weight shared by the heads.
            let q_pre = &mut ws.q_pre[l * nq..(l + 1) * nq];
            q_pre.copy_from_slice(q);
            let q_rstd = &mut ws.q_rstd[l * n * h..(l + 1) * n * h];
            ops::rmsnorm_forward(q, q_rstd, q_pre, model.p(qn), eps);
            let k_pre = &mut ws.k_pre[l * nkv..(l + 1) * nkv];
            k_pre.copy_from_slice(k);
            let k_rstd = &mut ws.k_rstd[l * n * kv..(l + 1) * n * kv];
            ops::rmsnorm_forward(k, k_rstd, k_pre, model.p(kn), eps);
        }
        ops::rope_forward(q, &ws.rope, t, h, d, mode);
        ops::rope_forward(k, &ws.rope, t, kv, d, mode);
        let atty = &mut ws.atty[l * nq..(l + 1) * nq];
        ops::attention_forward(atty, &mut ws.att[l * na..(l + 1) * na], q, k, vv, sh);
        let r2 = &mut ws.resid2[l * nc..(l + 1) * nc];
        r2.copy_from_slice(x);
        ops::matmul_forward_add(r2, atty, model.p(lp.wo), n, qd, c);
        let ln2 = &mut ws.ln2[l * nc..(l + 1) * nc];
        ops::rmsnorm_forward(
            ln2,
            &mut ws.ln2_rstd[l * n..(l + 1) * n],
            r2,
            model.p(lp.ffn_norm),
            eps,
        );
        let gate = &mut ws.gate[l * nf..(l + 1) * nf];
        let up = &mut ws.up[l * nf..(l + 1) * nf];
        ops::matmul_forward(gate, ln2, model.p(lp.w_gate), n, c, ff);
        ops::matmul_forward(up, ln2, model.p(lp.w_up), n, c, ff);
        let hidden = &mut ws.hidden[l * nf..(l + 1) * nf];
        ops::swiglu_forward(hidden, gate, up);
        x_next.copy_from_slice(r2);
        ops::matmul_forward_add(x_next, hidden, model.p(lp.w_down), n, ff, c);
    }
    let l = cfg.n_layer;
    ops::rmsnorm_forward(
        &mut ws.lnf,
        &mut ws.lnf_rstd,
        &ws.resid[l * nc..(l + 1) * nc],
        model.p(lay.output_norm),
        eps,
    );
    ops::matmul_forward(&mut ws.logits, &ws.lnf, model.p(lay.output), n, c, v);
    ws.logits_valid = true;
    let (sum, count) = ops::cross_entropy_forward(&mut ws.losses, &ws.logits, targets, v);
    Ok((sum / count as f64) as f32)
}

/// Adds `scale · ∂loss/∂params` to `grads` ([n_params]) for the loss of the last
/// [`forward`] on `ws` (`scale = 1/k` averages `k` accumulated micro-batches).
pub fn backward(
    model: &TrainModel,
    ws: &mut Workspace,
    grads: &mut [f32],
    scale: f32,
) -> Result<(), TrainError> {
    backward_mixed(model, ws, grads, scale, None)
}

/// [`backward`] for the loss `scale · cross-entropy + E`, where `extra_dlogits` ([N, V]) is
/// `∂E/∂logits` of an extra loss on the last forward's logits (distillation), already scaled.
pub fn backward_mixed(
    model: &TrainModel,
    ws: &mut Workspace,
    grads: &mut [f32],
    scale: f32,
    extra_dlogits: Option<&[f32]>,
) -> Result<(), TrainError> {
    if !ws.logits_valid {
        return Err(TrainError::BadBatch(
            "backward needs a forward on this workspace first".into(),
        ));
    }
    if grads.len() != model.layout().n_params() {
        return Err(TrainError::BadBatch(format!(
            "{} gradients for {} parameters",
            grads.len(),
            model.layout().n_params()
        )));
    }
    let cfg = model.config();
    let lay = model.layout();
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
    let g = |i: usize| lay.range(i);

    // loss = (1/n_valid) Σ losses
    if let Some(extra) = extra_dlogits {
        if extra.len() != ws.logits.len() {
            return Err(TrainError::BadBatch(format!(
                "{} extra logit gradients for {} logits",
                extra.len(),
                ws.logits.len()
            )));
        }
    }
    ops::cross_entropy_backward(&mut ws.logits, &ws.targets, scale / ws.n_valid as f32, v);
    if let Some(extra) = extra_dlogits {
        use rayon::prelude::*;
        ws.logits
            .par_chunks_mut(v)
            .zip(extra.par_chunks(v))
            .for_each(|(d, e)| d.iter_mut().zip(e).for_each(|(d, e)| *d += e));
    }
    ws.logits_valid = false;
    let dlogits = &ws.logits;
    ws.dln.fill(0.0);
    ops::matmul_backward(
        &mut ws.dln,
        &mut grads[g(lay.output)],
        dlogits,
        &ws.lnf,
        model.p(lay.output),
        n,
        c,
        v,
    );
    ws.dresid.fill(0.0);
    let l_n = cfg.n_layer;
    ops::rmsnorm_backward(
        &mut ws.dresid,
        &mut grads[g(lay.output_norm)],
        &ws.dln,
        &ws.resid[l_n * nc..(l_n + 1) * nc],
        model.p(lay.output_norm),
        &ws.lnf_rstd,
    );
    for (l, lp) in lay.layers.iter().enumerate().rev() {
        // x_next = r2 + w_down · hidden: dresid flows to r2 unchanged.
        ws.dhidden.fill(0.0);
        ops::matmul_backward(
            &mut ws.dhidden,
            &mut grads[g(lp.w_down)],
            &ws.dresid,
            &ws.hidden[l * nf..(l + 1) * nf],
            model.p(lp.w_down),
            n,
            ff,
            c,
        );
        ops::swiglu_backward(
            &mut ws.dgate,
            &mut ws.dup,
            &ws.dhidden,
            &ws.gate[l * nf..(l + 1) * nf],
            &ws.up[l * nf..(l + 1) * nf],
        );
        let ln2 = &ws.ln2[l * nc..(l + 1) * nc];
        ws.dln.fill(0.0);
        ops::matmul_backward(
            &mut ws.dln,
            &mut grads[g(lp.w_gate)],
            &ws.dgate,
            ln2,
            model.p(lp.w_gate),
            n,
            c,
            ff,
        );
        ops::matmul_backward(
            &mut ws.dln,
            &mut grads[g(lp.w_up)],
            &ws.dup,
            ln2,
            model.p(lp.w_up),
            n,
            c,
            ff,
        );
        ops::rmsnorm_backward(
            &mut ws.dresid,
            &mut grads[g(lp.ffn_norm)],
            &ws.dln,
            &ws.resid2[l * nc..(l + 1) * nc],
            model.p(lp.ffn_norm),
            &ws.ln2_rstd[l * n..(l + 1) * n],
        );
        // r2 = x + wo · atty: dresid flows to x unchanged.
        ws.datty.fill(0.0);
        ops::matmul_backward(
            &mut ws.datty,
            &mut grads[g(lp.wo)],
            &ws.dresid,
            &ws.atty[l * nq..(l + 1) * nq],
            model.p(lp.wo),
            n,
            qd,
            c,
        );
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
                &mut grads[g(qn)],
                &ws.dq,
                &ws.q_pre[l * nq..(l + 1) * nq],
                model.p(qn),
                &ws.q_rstd[l * n * h..(l + 1) * n * h],
            );
            ws.dk_pre.fill(0.0);
            ops::rmsnorm_backward(
                &mut ws.dk_pre,
                &mut grads[g(kn)],
                &ws.dk,
                &ws.k_pre[l * nkv..(l + 1) * nkv],
                model.p(kn),
                &ws.k_rstd[l * n * kv..(l + 1) * n * kv],
            );
            (&ws.dq_pre, &ws.dk_pre)
        } else {
            (&ws.dq, &ws.dk)
        };
        for (dy, bias) in [(dq, lp.bq), (dk, lp.bk), (&ws.dv[..], lp.bv)] {
            if let Some(bi) = bias {
                ops::bias_backward(&mut grads[g(bi)], dy);
            }
        }
        let ln1 = &ws.ln1[l * nc..(l + 1) * nc];
        ws.dln.fill(0.0);
        for (dy, w, od) in [(dq, lp.wq, qd), (dk, lp.wk, kvd), (&ws.dv[..], lp.wv, kvd)] {
            ops::matmul_backward(&mut ws.dln, &mut grads[g(w)], dy, ln1, model.p(w), n, c, od);
        }
        ops::rmsnorm_backward(
            &mut ws.dresid,
            &mut grads[g(lp.attn_norm)],
            &ws.dln,
            &ws.resid[l * nc..(l + 1) * nc],
            model.p(lp.attn_norm),
            &ws.ln1_rstd[l * n..(l + 1) * n],
        );
    }
    ops::embedding_backward(&mut grads[g(lay.token_embd)], &ws.dresid, &ws.tokens, c);
    Ok(())
}

#[cfg(test)]
mod tests;
