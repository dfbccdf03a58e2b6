//! The forward pass, mirroring llama.cpp's CPU graph (`llm_build_llama`, `build_attn`,
//! `build_ffn`) operation by operation:
//!
//! 1. `x = token_embd[token]` (row dequantized, `ggml_get_rows`).
//! 2. Per block: `xn = rmsnorm(x) * attn_norm`; Q, K, V = matmuls with `xn` quantized to the
//!    weight's `vec_dot_type` (llama.cpp's quantized-activation path), plus biases (qwen2);
//!    per-head RMSNorm of Q and K (qwen3); RoPE on Q and K (NORM for llama, NEOX for qwen);
//!    K and V stored in the F16 cache; attention as llama.cpp's CPU flash attention (see
//!    below); `x += wo · attn`; `xn = rmsnorm(x) * ffn_norm`;
//!    `x += w_down · (silu(w_gate · xn) * (w_up · xn))`.
//! 3. `logits = output · (rmsnorm(x) * output_norm)` for the rows asked for.
//!
//! **Attention path mirrored.** llama.cpp's default `flash_attn_type` is AUTO, which resolves
//! to *enabled* when the device running the layer supports `FLASH_ATTN_EXT` — always true for
//! the CPU backend with an F16 cache. So `llama-cli`, `llama-perplexity` and the server use
//! flash attention on CPU by default (llama-cpp-python's `Llama(flash_attn=False)` is the
//! exception: it forces it off). We mirror `ggml_compute_forward_flash_attn_ext_f16_one_chunk`:
//! Q rounded to F16, K·Q with the F16 dot (f32 accumulation), scale, online softmax with
//! `expf`, V accumulated in an F16 buffer, divided by the sum at the end
//! ([`edgelm_kernels::ops::attention_one_query_f16`]). llama.cpp takes that path for batches
//! under 64 tokens with fewer than 512 cached cells; for larger batches (tiled path) and long
//! single-token decodes (split-KV path) its rounding differs slightly from ours.

use edgelm_gguf::GgmlType;
use edgelm_kernels::ops::{self, rope_cache};
use edgelm_kernels::tiled::{TiledScratch, Q_TILE};
use edgelm_kernels::ThreadPool;
use half::f16;

use crate::config::ModelConfig;
use crate::kern::{self, act_bytes};
use crate::lora;
use crate::weights::{Matrix, Weights};
use crate::{CacheType, Logits, Model, ModelError, State};

pub(crate) mod many;

/// Largest head dimension the forward pass handles (checked when the model loads).
pub(crate) const MAX_HEAD_DIM: usize = 512;

/// Activation buffers for a batch of up to `max_batch` tokens (T), allocated once.
pub(crate) struct Scratch {
    /// Residual stream [T, C].
    x: Vec<f32>,
    /// Normed input of a sub-block [T, C].
    xn: Vec<f32>,
    /// Quantized activations (largest of all matmul inputs) [T, row bytes].
    act: Vec<u8>,
    /// [T, H·D]
    q: Vec<f32>,
    /// [T, KV·D]
    k: Vec<f32>,
    /// [T, KV·D]
    v: Vec<f32>,
    /// Attention output [T, H·D].
    attn: Vec<f32>,
    /// Output of wo / w_down [T, C].
    proj: Vec<f32>,
    /// [T, FF]
    gate: Vec<f32>,
    /// [T, FF]
    up: Vec<f32>,
    /// silu(gate) * up [T, FF]
    hidden: Vec<f32>,
    /// RoPE cos/sin of each token's position [T, rope_dim].
    rope: Vec<f32>,
}

fn matrices(w: &Weights) -> impl Iterator<Item = &Matrix> {
    std::iter::once(&w.output).chain(
        w.layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].into_iter()),
    )
}

impl Scratch {
    fn sizes(cfg: &ModelConfig, w: &Weights, t: usize) -> [usize; 3] {
        let act = matrices(w)
            .map(|m| act_bytes(m.act_ty, t, m.n_in))
            .max()
            .unwrap_or(0);
        let f32s =
            t * (4 * cfg.n_embd + 2 * cfg.q_dim() + 2 * cfg.kv_dim() + 3 * cfg.n_ff + cfg.rope_dim);
        [act, f32s, 0]
    }

    /// Bytes of the scratch for a batch of `t` tokens.
    pub fn bytes_for(cfg: &ModelConfig, w: &Weights, t: usize) -> usize {
        let [a, f, h] = Self::sizes(cfg, w, t);
        a + 4 * f + 2 * h
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.act.len()
            + 4 * (self.x.len()
                + self.xn.len()
                + self.q.len()
                + self.k.len()
                + self.v.len()
                + self.attn.len()
                + self.proj.len()
                + self.gate.len()
                + self.up.len()
                + self.hidden.len()
                + self.rope.len())
    }

    pub fn new(cfg: &ModelConfig, w: &Weights, t: usize) -> Result<Scratch, ModelError> {
        let over = ModelError::Overflow {
            what: "scratch buffers",
        };
        let n = |width: usize| {
            t.checked_mul(width).ok_or(ModelError::Overflow {
                what: "scratch buffers",
            })
        };
        let act = matrices(w)
            .map(|m| {
                let row = m.n_in / m.act_ty.block_size() * m.act_ty.type_size();
                t.checked_mul(row)
            })
            .try_fold(0usize, |acc, b| b.map(|b| acc.max(b)))
            .ok_or(over)?;
        Ok(Scratch {
            x: vec![0.0; n(cfg.n_embd)?],
            xn: vec![0.0; n(cfg.n_embd)?],
            act: vec![0; act],
            q: vec![0.0; n(cfg.q_dim())?],
            k: vec![0.0; n(cfg.kv_dim())?],
            v: vec![0.0; n(cfg.kv_dim())?],
            attn: vec![0.0; n(cfg.q_dim())?],
            proj: vec![0.0; n(cfg.n_embd)?],
            gate: vec![0.0; n(cfg.n_ff)?],
            up: vec![0.0; n(cfg.n_ff)?],
            hidden: vec![0.0; n(cfg.n_ff)?],
            rope: vec![0.0; n(cfg.rope_dim)?],
        })
    }
}

pub(crate) fn forward<'s>(
    model: &Model,
    pool: &ThreadPool,
    state: &'s mut State,
    tokens: &[u32],
    logits: Logits,
) -> Result<&'s [f32], ModelError> {
    let cfg = &model.config;
    if tokens.is_empty() {
        return Err(ModelError::EmptyInput);
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
    let needed = state
        .pos
        .checked_add(tokens.len())
        .ok_or(ModelError::Overflow { what: "position" })?;
    if needed > state.n_ctx {
        return Err(ModelError::ContextFull {
            n_ctx: state.n_ctx,
            needed,
        });
    }
    let span = tracing::debug_span!("forward", n_tokens = tokens.len(), pos = state.pos);
    let _enter = span.enter();

    let n_out_rows = match logits {
        Logits::Last => 1,
        Logits::All => tokens.len(),
    };
    let n_logits = n_out_rows
        .checked_mul(cfg.n_vocab)
        .ok_or(ModelError::Overflow { what: "logits" })?;
    // Grows only when a caller asks for more rows than ever before (Logits::All over a longer
    // input); never inside the per-batch loop.
    if state.logits.len() < n_logits {
        state.logits.resize(n_logits, 0.0);
    }

    let start_pos = state.pos;
    let mut done = 0;
    let result = (|| {
        while done < tokens.len() {
            let n = (tokens.len() - done).min(state.max_batch);
            let piece = &tokens[done..done + n];
            let out = match logits {
                Logits::All => Some((0, done)),
                Logits::Last if done + n == tokens.len() => Some((n - 1, 0)),
                Logits::Last => None,
            };
            forward_batch(model, pool, state, piece, out)?;
            state.pos += n;
            done += n;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Cached positions past start_pos may be half-written: forget them.
        state.pos = start_pos;
        return Err(e);
    }
    Ok(&state.logits[..n_logits])
}

/// Runs one batch at `state.pos`. `out = Some((first_row, dst_row))`: the logits of batch rows
/// `first_row..` are written to logits rows `dst_row..`.
fn forward_batch(
    model: &Model,
    pool: &ThreadPool,
    state: &mut State,
    tokens: &[u32],
    out: Option<(usize, usize)>,
) -> Result<(), ModelError> {
    let cfg = &model.config;
    let file = &*model.file;
    let w = &model.weights;
    let t_n = tokens.len();
    let (c, d) = (cfg.n_embd, cfg.head_dim);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let n_ctx = state.n_ctx;
    let pos0 = state.pos;
    let State {
        k_cache,
        v_cache,
        k_q8,
        v_q8,
        cache_type,
        s,
        logits,
        observer,
        lora_tmp,
        ..
    } = state;
    // Inputs of the matrix products, for an installed observer (importance matrices).
    let mut observe = |name: &str, x: &[f32], n_in: usize| {
        if let Some(o) = observer.as_mut() {
            o.observe(name, x, n_in);
        }
    };
    let cache_type = *cache_type;
    // Bytes of one cached Q8_0 row of D values, and of one layer of the Q8_0 cache.
    let q8_row = CacheType::Q8_0.bytes_for(cfg.head_dim);
    let q8_layer = cfg.n_head_kv * n_ctx * q8_row;

    // 1. embeddings
    for (t, &tok) in tokens.iter().enumerate() {
        kern::dequantize_row(
            file,
            &w.token_embd,
            tok as usize,
            &mut s.x[t * c..(t + 1) * c],
        )?;
    }

    let k_tab = edgelm_kernels::kernels();
    let theta_scale = ops::rope_theta_scale(cfg.rope_theta, cfg.rope_dim);
    let mode = cfg.arch.rope_mode();
    let scale = cfg.kq_scale();
    let group = cfg.n_head / cfg.n_head_kv;
    let layer_len = n_ctx * kvd;

    for (il, l) in w.layers.iter().enumerate() {
        let _span = tracing::trace_span!("layer", il).entered();
        // 2a. attention norm
        rmsnorm_rows(
            pool,
            &mut s.xn[..t_n * c],
            &s.x[..t_n * c],
            &l.attn_norm,
            cfg.rms_eps,
        );
        // 2b. Q, K, V
        let xn = &s.xn[..t_n * c];
        for m in [&l.wq, &l.wk, &l.wv] {
            observe(&m.name, xn, c);
        }
        shared_input_matmuls(
            pool,
            file,
            xn,
            t_n,
            &mut s.act,
            [(&l.wq, &mut s.q), (&l.wk, &mut s.k), (&l.wv, &mut s.v)],
        )?;
        let ll = model.lora.as_ref().map(|v| &v[il]);
        if let Some(ll) = ll {
            lora::apply(&ll.q, &mut s.q, xn, t_n, lora_tmp);
            lora::apply(&ll.k, &mut s.k, xn, t_n, lora_tmp);
            lora::apply(&ll.v, &mut s.v, xn, t_n, lora_tmp);
        }
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
        // 2c. RoPE, then K and V into the cache: [L, KV, n_ctx, D] (F16 values or Q8_0 rows)
        let (kc, vc): (&mut [f16], &mut [f16]) = match cache_type {
            CacheType::F16 => (
                &mut k_cache[il * layer_len..(il + 1) * layer_len],
                &mut v_cache[il * layer_len..(il + 1) * layer_len],
            ),
            CacheType::Q8_0 => (&mut [], &mut []),
        };
        let (kq, vq): (&mut [u8], &mut [u8]) = match cache_type {
            CacheType::F16 => (&mut [], &mut []),
            CacheType::Q8_0 => (
                &mut k_q8[il * q8_layer..(il + 1) * q8_layer],
                &mut v_q8[il * q8_layer..(il + 1) * q8_layer],
            ),
        };
        // Each token's cos/sin table, then its Q and K heads rotated: per token, so the
        // tokens of a batch run in parallel (the same values as one after the other).
        let rd = cfg.rope_dim;
        let freqs = w.rope_freqs.as_deref();
        pool.for_each_row_mut(&mut s.rope[..t_n * rd], rd, 8, |t, table| {
            rope_cache(table, pos0 + t, theta_scale, cfg.rope_freq_scale, freqs);
        });
        let rope = &s.rope;
        for (buf, width) in [(&mut s.q, qd), (&mut s.k, kvd)] {
            pool.for_each_row_mut(&mut buf[..t_n * width], width, 8, |t, row| {
                for head in row.chunks_exact_mut(d) {
                    k_tab.rope(head, &rope[t * rd..(t + 1) * rd], mode);
                }
            });
        }
        for t in 0..t_n {
            let p = pos0 + t;
            for h in 0..cfg.n_head_kv {
                let src = t * kvd + h * d;
                match cache_type {
                    CacheType::F16 => {
                        let dst = (h * n_ctx + p) * d;
                        k_tab.f32_to_f16_row(&mut kc[dst..dst + d], &s.k[src..src + d]);
                        k_tab.f32_to_f16_row(&mut vc[dst..dst + d], &s.v[src..src + d]);
                    }
                    CacheType::Q8_0 => {
                        // llama.cpp's copy into a Q8_0 cache uses the type's `from_float`.
                        let dst = (h * n_ctx + p) * q8_row;
                        let q8 = |out: &mut [u8], x: &[f32]| {
                            edgelm_kernels::quantize_activation(GgmlType::Q8_0, x, out).map_err(
                                |source| ModelError::Kernel {
                                    op: "quantize the KV cache".into(),
                                    source,
                                },
                            )
                        };
                        q8(&mut kq[dst..dst + q8_row], &s.k[src..src + d])?;
                        q8(&mut vq[dst..dst + q8_row], &s.v[src..src + d])?;
                    }
                }
            }
        }
        // 2d. causal attention: token t sees positions 0..=pos0+t. llama.cpp takes its tiled
        // path for batches of 64 or more tokens and its one-query path below that; so do we.
        let q_all = &s.q[..t_n * qd];
        let (kc, vc) = (&*kc, &*vc);
        let (kq, vq) = (&*kq, &*vq);
        if cache_type == CacheType::Q8_0 {
            // llama.cpp takes the one-query path for a quantized cache at every batch size,
            // with each query head quantized to Q8_0 (K's vec_dot_type) first. The activation
            // scratch holds wo's input ([T, H·D] in wo's activation type, never smaller than
            // Q8_0), so it holds these too.
            let q8 = kern::quantize(pool, GgmlType::Q8_0, q_all, d, &mut s.act, "attention")?;
            pool.for_each_row_mut(&mut s.attn[..t_n * qd], d, 4, |i, out| {
                let (t, h) = (i / cfg.n_head, i % cfg.n_head);
                let n_kv = pos0 + t + 1;
                let base = (h / group) * n_ctx * q8_row;
                let mut acc = [0.0f32; MAX_HEAD_DIM];
                k_tab.attention_one_query_q8_0(
                    out,
                    &mut acc[..d],
                    &q8[i * q8_row..(i + 1) * q8_row],
                    &kq[base..base + n_kv * q8_row],
                    &vq[base..base + n_kv * q8_row],
                    n_kv,
                    d,
                    scale,
                );
            });
        } else if t_n >= Q_TILE {
            pool.for_each_row_group_mut(&mut s.attn[..t_n * qd], qd, Q_TILE, |t0, rows| {
                let n_q = rows.len() / qd;
                let mut scratch = TiledScratch::new(d, d);
                let mut qh = vec![0.0f32; n_q * d];
                let mut oh = vec![0.0f32; n_q * d];
                for h in 0..cfg.n_head {
                    let base = (h / group) * n_ctx * d;
                    for j in 0..n_q {
                        let src = (t0 + j) * qd + h * d;
                        qh[j * d..(j + 1) * d].copy_from_slice(&q_all[src..src + d]);
                    }
                    let n_vis = pos0 + t0 + n_q;
                    k_tab.attention_tiled_f16(
                        &mut oh,
                        &qh,
                        &kc[base..base + n_vis * d],
                        &vc[base..base + n_vis * d],
                        pos0 + t0,
                        d,
                        scale,
                        &mut scratch,
                    );
                    for j in 0..n_q {
                        rows[j * qd + h * d..j * qd + (h + 1) * d]
                            .copy_from_slice(&oh[j * d..(j + 1) * d]);
                    }
                }
            });
        } else {
            pool.for_each_row_mut(&mut s.attn[..t_n * qd], d, 4, |i, out| {
                let (t, h) = (i / cfg.n_head, i % cfg.n_head);
                let n_kv = pos0 + t + 1;
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
        }
        // 2e. output projection and residual
        observe(&l.wo.name, &s.attn[..t_n * qd], qd);
        let act = kern::quantize(
            pool,
            l.wo.act_ty,
            &s.attn[..t_n * qd],
            qd,
            &mut s.act,
            &l.wo.name,
        )?;
        kern::matmul(pool, file, &l.wo, act, t_n, &mut s.proj)?;
        if let Some(ll) = ll {
            lora::apply(&ll.o, &mut s.proj, &s.attn[..t_n * qd], t_n, lora_tmp);
        }
        add_bias(&mut s.proj[..t_n * c], l.bo.as_deref());
        add_into(&mut s.x[..t_n * c], &s.proj[..t_n * c]);

        // 2f. feed-forward
        rmsnorm_rows(
            pool,
            &mut s.xn[..t_n * c],
            &s.x[..t_n * c],
            &l.ffn_norm,
            cfg.rms_eps,
        );
        let xn = &s.xn[..t_n * c];
        observe(&l.w_gate.name, xn, c);
        observe(&l.w_up.name, xn, c);
        shared_input_matmuls(
            pool,
            file,
            xn,
            t_n,
            &mut s.act,
            [(&l.w_gate, &mut s.gate), (&l.w_up, &mut s.up)],
        )?;
        if let Some(ll) = ll {
            lora::apply(&ll.gate, &mut s.gate, xn, t_n, lora_tmp);
            lora::apply(&ll.up, &mut s.up, xn, t_n, lora_tmp);
        }
        let ff = t_n * cfg.n_ff;
        let (gate, up) = (&s.gate, &s.up);
        pool.for_each_row_mut(&mut s.hidden[..ff], cfg.n_ff, 1, |t, h| {
            let r = t * cfg.n_ff..(t + 1) * cfg.n_ff;
            k_tab.swiglu(h, &gate[r.clone()], &up[r]);
        });
        observe(&l.w_down.name, &s.hidden[..ff], cfg.n_ff);
        let act = kern::quantize(
            pool,
            l.w_down.act_ty,
            &s.hidden[..ff],
            cfg.n_ff,
            &mut s.act,
            &l.w_down.name,
        )?;
        kern::matmul(pool, file, &l.w_down, act, t_n, &mut s.proj)?;
        if let Some(ll) = ll {
            lora::apply(&ll.down, &mut s.proj, &s.hidden[..ff], t_n, lora_tmp);
        }
        add_into(&mut s.x[..t_n * c], &s.proj[..t_n * c]);
    }

    // 3. output norm and projection of the rows asked for
    if let Some((first, dst_row)) = out {
        let n_rows = t_n - first;
        for t in first..t_n {
            let (src, dst) = (t * c..(t + 1) * c, (t - first) * c..(t - first + 1) * c);
            ops::rmsnorm_forward(&mut s.xn[dst], &s.x[src], &w.output_norm, cfg.rms_eps);
        }
        let act = kern::quantize(
            pool,
            w.output.act_ty,
            &s.xn[..n_rows * c],
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
            n_rows,
            &mut logits[dst_row * v..(dst_row + n_rows) * v],
        )?;
    }
    Ok(())
}

/// `out_i = W_i · x` for matrices that share their input `x` ([T, n_in]): `x` is quantized once
/// per activation type (Q, K and V, or gate and up, usually share one), not once per matrix.
fn shared_input_matmuls<const N: usize>(
    pool: &ThreadPool,
    file: &edgelm_gguf::GgufFile,
    x: &[f32],
    t_n: usize,
    act_buf: &mut [u8],
    jobs: [(&Matrix, &mut Vec<f32>); N],
) -> Result<(), ModelError> {
    let first = jobs[0].0;
    let shared = N <= edgelm_kernels::MAX_MATMUL_JOBS
        && jobs
            .iter()
            .all(|(m, _)| m.act_ty == first.act_ty && m.n_in == first.n_in);
    if shared {
        // One quantization and one parallel section for all of them.
        let act = kern::quantize(pool, first.act_ty, x, first.n_in, act_buf, &first.name)?;
        let mut mm = jobs.map(|(m, out)| edgelm_kernels::MatmulJob {
            ty: m.ty,
            w: m.data(file),
            n_rows: m.n_out,
            out: &mut out[..t_n * m.n_out],
        });
        return edgelm_kernels::matmul_many(pool, &mut mm, first.n_in, act, t_n).map_err(
            |source| ModelError::Kernel {
                op: format!("matmul {} (and the matrices sharing its input)", first.name),
                source,
            },
        );
    }
    let mut quantized: Option<(edgelm_gguf::GgmlType, usize, usize)> = None;
    for (m, out) in jobs {
        let n_bytes = match quantized {
            Some((ty, n_in, n)) if ty == m.act_ty && n_in == m.n_in => n,
            _ => {
                let n = kern::quantize(pool, m.act_ty, x, m.n_in, act_buf, &m.name)?.len();
                quantized = Some((m.act_ty, m.n_in, n));
                n
            }
        };
        kern::matmul(pool, file, m, &act_buf[..n_bytes], t_n, out)?;
    }
    Ok(())
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            for (xi, bi) in row.iter_mut().zip(b) {
                *xi += bi;
            }
        }
    }
}

/// `y[t] = rmsnorm(x[t]) * weight` for every token row, the rows in parallel.
fn rmsnorm_rows(pool: &ThreadPool, y: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let c = weight.len();
    pool.for_each_row_mut(y, c, 8, |t, yr| {
        ops::rmsnorm_forward(yr, &x[t * c..(t + 1) * c], weight, eps);
    });
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
