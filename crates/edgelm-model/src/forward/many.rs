//! One decode step for several independent sequences at once (continuous batching): each
//! sequence contributes one token at its own position and attends to its own KV cache, while
//! the matmuls run over all the tokens together, so the weights are read from memory once per
//! step instead of once per sequence. On a memory-bound CPU that is what makes serving several
//! clients at once pay off.
//!
//! The per-token math is [`super::forward_batch`]'s one-token path operation by operation
//! (matmul rows are independent and the tile kernels are bit-identical to the single-row dot),
//! so a sequence decoded here gets bit-for-bit the logits it would get alone.

use edgelm_kernels::ops::{self, rope_cache};
use edgelm_kernels::ThreadPool;
use half::f16;

use super::{add_bias, add_into, shared_input_matmuls, Scratch, MAX_HEAD_DIM};
use crate::kern;
use crate::{CacheType, Model, ModelError, State};

/// Scratch buffers for [`Model::forward_decode`]: activations of up to `max_seqs` tokens and
/// their logits, allocated once.
pub struct DecodeBatch {
    max_seqs: usize,
    s: Scratch,
    /// [max_seqs, V]
    logits: Vec<f32>,
}

impl std::fmt::Debug for DecodeBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeBatch")
            .field("max_seqs", &self.max_seqs)
            .finish()
    }
}

impl DecodeBatch {
    /// Most sequences one step takes.
    pub fn max_seqs(&self) -> usize {
        self.max_seqs
    }
}

pub(crate) fn new_decode_batch(model: &Model, max_seqs: usize) -> Result<DecodeBatch, ModelError> {
    if max_seqs == 0 {
        return Err(ModelError::InvalidArgument {
            name: "max_seqs",
            reason: "must be positive".into(),
        });
    }
    let s = Scratch::new(&model.config, &model.weights, max_seqs)?;
    let n_logits = max_seqs
        .checked_mul(model.config.n_vocab)
        .ok_or(ModelError::Overflow { what: "logits" })?;
    Ok(DecodeBatch {
        max_seqs,
        s,
        logits: vec![0.0; n_logits],
    })
}

/// `seqs[t]` takes `tokens[t]` at its position; returns the logits, one row per sequence.
pub(crate) fn forward_decode<'b>(
    model: &Model,
    pool: &ThreadPool,
    batch: &'b mut DecodeBatch,
    seqs: &mut [&mut State],
    tokens: &[u32],
) -> Result<&'b [f32], ModelError> {
    let cfg = &model.config;
    let t_n = tokens.len();
    if t_n == 0 {
        return Err(ModelError::EmptyInput);
    }
    if seqs.len() != t_n || t_n > batch.max_seqs {
        return Err(ModelError::InvalidArgument {
            name: "seqs",
            reason: format!(
                "{} sequences for {t_n} tokens (at most {} per step)",
                seqs.len(),
                batch.max_seqs
            ),
        });
    }
    if let Some((index, &token)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= cfg.n_vocab)
    {
        return Err(ModelError::InvalidToken {
            token,
            index,
            n_vocab: cfg.n_vocab,
        });
    }
    for st in seqs.iter() {
        if st.cache_type != CacheType::F16 {
            return Err(ModelError::InvalidArgument {
                name: "cache_type",
                reason: "batched decoding needs an F16 KV cache".into(),
            });
        }
        if st.pos + 1 > st.n_ctx {
            return Err(ModelError::ContextFull {
                n_ctx: st.n_ctx,
                needed: st.pos + 1,
            });
        }
    }
    if model.lora.is_some() {
        return Err(ModelError::InvalidArgument {
            name: "lora",
            reason: "batched decoding (forward_decode) does not apply LoRA adapters; use \
                     Model::forward, or merge the adapter (edgelm lora-merge)"
                .into(),
        });
    }
    let _span = tracing::debug_span!("forward_decode", n_seqs = t_n).entered();

    let file = &*model.file;
    let w = &model.weights;
    let (c, d) = (cfg.n_embd, cfg.head_dim);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let s = &mut batch.s;
    let k_tab = edgelm_kernels::kernels();
    let theta_scale = ops::rope_theta_scale(cfg.rope_theta, cfg.rope_dim);
    let mode = cfg.arch.rope_mode();
    let scale = cfg.kq_scale();
    let group = cfg.n_head / cfg.n_head_kv;

    // 1. embeddings
    for (t, &tok) in tokens.iter().enumerate() {
        kern::dequantize_row(
            file,
            &w.token_embd,
            tok as usize,
            &mut s.x[t * c..(t + 1) * c],
        )?;
    }

    for (il, l) in w.layers.iter().enumerate() {
        // 2a. attention norm
        for t in 0..t_n {
            let r = t * c..(t + 1) * c;
            ops::rmsnorm_forward(&mut s.xn[r.clone()], &s.x[r], &l.attn_norm, cfg.rms_eps);
        }
        // 2b. Q, K, V for all sequences' tokens at once
        let xn = &s.xn[..t_n * c];
        shared_input_matmuls(
            pool,
            file,
            xn,
            t_n,
            &mut s.act,
            [(&l.wq, &mut s.q), (&l.wk, &mut s.k), (&l.wv, &mut s.v)],
        )?;
        add_bias(&mut s.q[..t_n * qd], l.bq.as_deref());
        add_bias(&mut s.k[..t_n * kvd], l.bk.as_deref());
        add_bias(&mut s.v[..t_n * kvd], l.bv.as_deref());
        if let Some(qn) = &l.q_norm {
            for head in s.q[..t_n * qd].chunks_exact_mut(d) {
                ops::rmsnorm_weighted_inplace(head, qn, cfg.rms_eps);
            }
        }
        if let Some(kn) = &l.k_norm {
            for head in s.k[..t_n * kvd].chunks_exact_mut(d) {
                ops::rmsnorm_weighted_inplace(head, kn, cfg.rms_eps);
            }
        }
        // 2c. RoPE at each sequence's own position; K and V into its own cache
        for (t, st) in seqs.iter_mut().enumerate() {
            let (p, n_ctx) = (st.pos, st.n_ctx);
            let layer_len = n_ctx * kvd;
            let rope = &mut s.rope[..cfg.rope_dim];
            rope_cache(
                rope,
                p,
                theta_scale,
                cfg.rope_freq_scale,
                w.rope_freqs.as_deref(),
            );
            for head in s.q[t * qd..(t + 1) * qd].chunks_exact_mut(d) {
                k_tab.rope(head, rope, mode);
            }
            for head in s.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(d) {
                k_tab.rope(head, rope, mode);
            }
            let kc = &mut st.k_cache[il * layer_len..(il + 1) * layer_len];
            let vc = &mut st.v_cache[il * layer_len..(il + 1) * layer_len];
            for h in 0..cfg.n_head_kv {
                let src = t * kvd + h * d;
                let dst = (h * n_ctx + p) * d;
                k_tab.f32_to_f16_row(&mut kc[dst..dst + d], &s.k[src..src + d]);
                k_tab.f32_to_f16_row(&mut vc[dst..dst + d], &s.v[src..src + d]);
            }
        }
        // 2d. attention: token t against its own sequence's cache, one query per head
        let caches: Vec<(&[f16], &[f16], usize, usize)> = seqs
            .iter()
            .map(|st| {
                let layer_len = st.n_ctx * kvd;
                (
                    &st.k_cache[il * layer_len..(il + 1) * layer_len],
                    &st.v_cache[il * layer_len..(il + 1) * layer_len],
                    st.n_ctx,
                    st.pos + 1,
                )
            })
            .collect();
        let q_all = &s.q[..t_n * qd];
        pool.for_each_row_mut(&mut s.attn[..t_n * qd], d, 4, |i, out| {
            let (t, h) = (i / cfg.n_head, i % cfg.n_head);
            let (kc, vc, n_ctx, n_kv) = caches[t];
            let base = (h / group) * n_ctx * d;
            let mut q16 = [f16::ZERO; MAX_HEAD_DIM];
            let mut acc16 = [f16::ZERO; MAX_HEAD_DIM];
            let (q16, acc16) = (&mut q16[..d], &mut acc16[..d]);
            k_tab.f32_to_f16_row(q16, &q_all[i * d..(i + 1) * d]);
            k_tab.attention_one_query_f16(
                out,
                acc16,
                q16,
                &kc[base..base + n_kv * d],
                &vc[base..base + n_kv * d],
                n_kv,
                scale,
            );
        });
        drop(caches);
        // 2e. output projection and residual
        let act = kern::quantize(
            pool,
            l.wo.act_ty,
            &s.attn[..t_n * qd],
            qd,
            &mut s.act,
            &l.wo.name,
        )?;
        kern::matmul(pool, file, &l.wo, act, t_n, &mut s.proj)?;
        add_bias(&mut s.proj[..t_n * c], l.bo.as_deref());
        add_into(&mut s.x[..t_n * c], &s.proj[..t_n * c]);

        // 2f. feed-forward
        for t in 0..t_n {
            let r = t * c..(t + 1) * c;
            ops::rmsnorm_forward(&mut s.xn[r.clone()], &s.x[r], &l.ffn_norm, cfg.rms_eps);
        }
        let xn = &s.xn[..t_n * c];
        shared_input_matmuls(
            pool,
            file,
            xn,
            t_n,
            &mut s.act,
            [(&l.w_gate, &mut s.gate), (&l.w_up, &mut s.up)],
        )?;
        let ff = t_n * cfg.n_ff;
        let (gate, up) = (&s.gate, &s.up);
        pool.for_each_row_mut(&mut s.hidden[..ff], cfg.n_ff, 1, |t, h| {
            let r = t * cfg.n_ff..(t + 1) * cfg.n_ff;
            k_tab.swiglu(h, &gate[r.clone()], &up[r]);
        });
        let act = kern::quantize(
            pool,
            l.w_down.act_ty,
            &s.hidden[..ff],
            cfg.n_ff,
            &mut s.act,
            &l.w_down.name,
        )?;
        kern::matmul(pool, file, &l.w_down, act, t_n, &mut s.proj)?;
        add_into(&mut s.x[..t_n * c], &s.proj[..t_n * c]);
    }

    // 3. output norm and projection of every row
    for t in 0..t_n {
        let r = t * c..(t + 1) * c;
        ops::rmsnorm_forward(&mut s.xn[r.clone()], &s.x[r], &w.output_norm, cfg.rms_eps);
    }
    let act = kern::quantize(
        pool,
        w.output.act_ty,
        &s.xn[..t_n * c],
        c,
        &mut s.act,
        &w.output.name,
    )?;
    let v = cfg.n_vocab;
    kern::matmul(
        pool,
        file,
        &w.output,
        act,
        t_n,
        &mut batch.logits[..t_n * v],
    )?;
    for st in seqs.iter_mut() {
        st.pos += 1;
    }
    Ok(&batch.logits[..t_n * v])
}
