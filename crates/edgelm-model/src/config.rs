//! Hyper-parameters read from GGUF metadata (`{arch}.*` keys), as llama.cpp's
//! `llama_model::load_hparams` reads them for the architectures we implement.

use edgelm_gguf::{GgufFile, Metadata};
use edgelm_kernels::ops::RopeMode;

use crate::ModelError;

/// A supported architecture (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama family (Llama 2/3, SmolLM, Mistral-style dense): RoPE NORM (adjacent pairs).
    Llama,
    /// Qwen2: RoPE NEOX, biases on Q/K/V.
    Qwen2,
    /// Qwen3: RoPE NEOX, RMSNorm of each Q and K head (`attn_q_norm`, `attn_k_norm`).
    Qwen3,
}

impl Arch {
    /// Parses `general.architecture`.
    pub fn from_name(name: &str) -> Result<Arch, ModelError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(ModelError::UnsupportedArch {
                arch: other.to_owned(),
            }),
        }
    }

    /// The name used as metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// How RoPE pairs dimensions (llama.cpp `llama_model_rope_type`).
    pub fn rope_mode(self) -> RopeMode {
        match self {
            Arch::Llama => RopeMode::Norm,
            Arch::Qwen2 | Arch::Qwen3 => RopeMode::Neox,
        }
    }
}

/// Model hyper-parameters. Counts are `usize`, validated non-zero and mutually consistent.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Number of transformer blocks (L).
    pub n_layer: usize,
    /// Residual width (C).
    pub n_embd: usize,
    /// Query heads (H).
    pub n_head: usize,
    /// Key/value heads (KV); `n_head % n_head_kv == 0`.
    pub n_head_kv: usize,
    /// Dimension of one head (D), for keys and values.
    pub head_dim: usize,
    /// Hidden width of the feed-forward block.
    pub n_ff: usize,
    /// Vocabulary size (V).
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE frequency base.
    pub rope_theta: f32,
    /// Dimensions of each head that RoPE rotates (`rope.dimension_count`, default D).
    pub rope_dim: usize,
    /// RoPE position scale: 1 / linear scaling factor (1 when unscaled).
    pub rope_freq_scale: f32,
    /// True when there is no `output.weight` and the logits use `token_embd.weight`.
    pub tied_output: bool,
}

impl ModelConfig {
    /// Reads and validates the config of `file`. Tensors are not looked at except to decide
    /// `tied_output` and, when the metadata has no vocabulary, `n_vocab`.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let md = file.metadata();
        let arch = Arch::from_name(md.arch()?)?;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let count = |md: &Metadata, k: &str| -> Result<usize, ModelError> {
            let full = key(k);
            let v = md.get_u64(&full)?;
            let v = usize::try_from(v).map_err(|_| ModelError::bad_config(&full, "too large"))?;
            if v == 0 {
                return Err(ModelError::bad_config(full, "must be positive"));
            }
            Ok(v)
        };
        let opt_count = |md: &Metadata, k: &str| -> Result<Option<usize>, ModelError> {
            if md.get(&key(k)).is_none() {
                return Ok(None);
            }
            count(md, k).map(Some)
        };

        let n_layer = count(md, "block_count")?;
        let n_embd = count(md, "embedding_length")?;
        let n_head = count(md, "attention.head_count")?;
        let n_head_kv = opt_count(md, "attention.head_count_kv")?.unwrap_or(n_head);
        let n_ff = count(md, "feed_forward_length")?;
        let n_ctx_train = count(md, "context_length")?;
        let rms_eps = md.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let rope_theta = md.get_opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);

        if n_head % n_head_kv != 0 {
            return Err(ModelError::bad_config(
                key("attention.head_count_kv"),
                format!("{n_head} query heads are not a multiple of {n_head_kv} kv heads"),
            ));
        }
        let head_dim = match opt_count(md, "attention.key_length")? {
            Some(d) => d,
            None => {
                if n_embd % n_head != 0 {
                    return Err(ModelError::bad_config(
                        key("embedding_length"),
                        format!("{n_embd} is not a multiple of {n_head} heads"),
                    ));
                }
                n_embd / n_head
            }
        };
        if head_dim == 0 || head_dim > crate::forward::MAX_HEAD_DIM {
            return Err(ModelError::bad_config(
                key("attention.key_length"),
                format!(
                    "head dim {head_dim} is outside 1..={}",
                    crate::forward::MAX_HEAD_DIM
                ),
            ));
        }
        if let Some(dv) = opt_count(md, "attention.value_length")? {
            if dv != head_dim {
                return Err(ModelError::bad_config(
                    key("attention.value_length"),
                    format!("value length {dv} differs from key length {head_dim}"),
                ));
            }
        }
        let rope_dim = opt_count(md, "rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::bad_config(
                key("rope.dimension_count"),
                format!("{rope_dim} must be even and at most the head dim {head_dim}"),
            ));
        }
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(ModelError::bad_config(
                key("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps} is not a finite non-negative number"),
            ));
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(ModelError::bad_config(
                key("rope.freq_base"),
                format!("{rope_theta} is not a finite positive number"),
            ));
        }
        let rope_freq_scale = rope_freq_scale(md, a)?;

        let n_vocab = match opt_count(md, "vocab_size")? {
            Some(v) => v,
            None => match md.get("tokenizer.ggml.tokens") {
                Some(_) => md.get_array("tokenizer.ggml.tokens")?.len(),
                None => file
                    .tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .and_then(|v| usize::try_from(v).ok())
                    .unwrap_or(0),
            },
        };
        if n_vocab == 0 {
            return Err(ModelError::bad_config(
                "n_vocab",
                "no vocab_size key, token list or token_embd.weight to size the vocabulary",
            ));
        }
        let tied_output = file.tensor("output.weight").is_none();

        Ok(ModelConfig {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope_theta,
            rope_dim,
            rope_freq_scale,
            tied_output,
        })
    }

    /// Width of the concatenated query heads (H·D).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the concatenated key (or value) heads (KV·D).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// The attention scale `1/sqrt(D)`, in f32 as llama.cpp computes it.
    pub fn kq_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// `1/factor` for linear RoPE scaling, 1 when unscaled; other scaling types are rejected.
fn rope_freq_scale(md: &Metadata, a: &str) -> Result<f32, ModelError> {
    let type_key = format!("{a}.rope.scaling.type");
    let factor_key = format!("{a}.rope.scaling.factor");
    let scaling = md.get_opt_str(&type_key)?;
    let factor = match md.get_opt_f32(&factor_key)? {
        Some(f) => Some(f),
        // Older files: `{arch}.rope.scale_linear`.
        None => md.get_opt_f32(&format!("{a}.rope.scale_linear"))?,
    };
    match scaling {
        None | Some("none") | Some("linear") => {}
        Some(other) => {
            return Err(ModelError::bad_config(
                type_key,
                format!("RoPE scaling '{other}' is not supported (none, linear)"),
            ))
        }
    }
    if scaling == Some("none") {
        return Ok(1.0);
    }
    match factor {
        None => Ok(1.0),
        Some(f) if f == 0.0 || f == 1.0 => Ok(1.0),
        Some(f) if f.is_finite() && f > 0.0 => Ok(1.0 / f),
        Some(f) => Err(ModelError::bad_config(
            factor_key,
            format!("{f} is not a positive scaling factor"),
        )),
    }
}
