//! A model config as a JSON file (for random students and test fixtures), converted to and
//! from `edgelm-model`'s [`ModelConfig`] — the one config type of the project.

use edgelm_model::{Arch, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The JSON form of a [`ModelConfig`]. Optional fields default as GGUF metadata does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `llama`, `qwen2` or `qwen3`.
    pub arch: String,
    /// Blocks (L).
    pub n_layer: usize,
    /// Width (C).
    pub n_embd: usize,
    /// Query heads (H).
    pub n_head: usize,
    /// Key/value heads (KV).
    pub n_head_kv: usize,
    /// Head dim (D); default C / H.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Vocabulary (V).
    pub n_vocab: usize,
    /// Context length.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base; default 10000.
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// Output projection shares the embedding matrix.
    pub tied_output: bool,
}

impl ConfigFile {
    /// Validates and converts.
    pub fn to_model_config(&self) -> Result<ModelConfig, TrainError> {
        let bad = |key: &str, reason: String| TrainError::BadConfig {
            key: key.into(),
            reason,
        };
        let arch = Arch::from_name(&self.arch)?;
        for (k, v) in [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_head_kv", self.n_head_kv),
            ("n_ff", self.n_ff),
            ("n_vocab", self.n_vocab),
            ("n_ctx_train", self.n_ctx_train),
        ] {
            if v == 0 {
                return Err(bad(k, "must be positive".into()));
            }
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(bad(
                "n_head_kv",
                format!(
                    "{} heads are not a multiple of {}",
                    self.n_head, self.n_head_kv
                ),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.n_embd.is_multiple_of(self.n_head) => self.n_embd / self.n_head,
            None => return Err(bad("n_embd", "not a multiple of n_head".into())),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(
                "head_dim",
                format!("{head_dim} must be even and positive"),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(bad(
                "rms_eps",
                format!("{} is not finite and >= 0", self.rms_eps),
            ));
        }
        let rope_theta = self.rope_theta.unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad("rope_theta", format!("{rope_theta} is not positive")));
        }
        Ok(ModelConfig {
            arch,
            n_layer: self.n_layer,
            n_embd: self.n_embd,
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            head_dim,
            n_ff: self.n_ff,
            n_vocab: self.n_vocab,
            n_ctx_train: self.n_ctx_train,
            rms_eps: self.rms_eps,
            rope_theta,
            rope_dim: head_dim,
            rope_freq_scale: 1.0,
            tied_output: self.tied_output,
        })
    }

    /// The JSON form of `cfg` (RoPE scaling and partial rotation are not represented).
    pub fn from_model_config(cfg: &ModelConfig) -> ConfigFile {
        ConfigFile {
            arch: cfg.arch.name().into(),
            n_layer: cfg.n_layer,
            n_embd: cfg.n_embd,
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: Some(cfg.head_dim),
            n_ff: cfg.n_ff,
            n_vocab: cfg.n_vocab,
            n_ctx_train: cfg.n_ctx_train,
            rms_eps: cfg.rms_eps,
            rope_theta: Some(cfg.rope_theta),
            tied_output: cfg.tied_output,
        }
    }
}
