//! The parameter table: every trainable tensor of the model, named as in GGUF, carved out of
//! one f32 allocation (weights, gradients and optimizer moments share the layout). This is the
//! one place training binds tensor names.

use std::ops::Range;

use edgelm_gguf::GgufFile;
use edgelm_model::{Arch, ModelConfig};

use crate::TrainError;

/// One tensor of the table. Shapes are row-major: a matrix is `[n_out, n_in]` (ggml's dims
/// reversed), a vector `[n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
}

impl TensorSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for an empty tensor (never in a valid layout).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its elements in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }

    /// True for matrices (weight decay applies to these, not to norm weights).
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }
}

/// Indices into [`ParamLayout::specs`] of one block's tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerParams {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    pub ffn_norm: usize,
    pub w_gate: usize,
    pub w_up: usize,
    pub w_down: usize,
    /// Q/K/V biases (qwen2).
    pub bq: Option<usize>,
    pub bk: Option<usize>,
    pub bv: Option<usize>,
    /// Per-head RMSNorm weights of Q and K (qwen3).
    pub q_norm: Option<usize>,
    pub k_norm: Option<usize>,
}

/// The table for one config.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    specs: Vec<TensorSpec>,
    n_params: usize,
    pub(crate) token_embd: usize,
    pub(crate) output_norm: usize,
    /// Equals `token_embd` when the output is tied to the embedding.
    pub(crate) output: usize,
    pub(crate) layers: Vec<LayerParams>,
}

impl ParamLayout {
    /// The table for `cfg`: llama; qwen2 adds Q/K/V biases; qwen3 per-head Q/K norms.
    pub fn new(cfg: &ModelConfig) -> Result<ParamLayout, TrainError> {
        let mut specs = Vec::new();
        let mut offset = 0usize;
        let mut add = |name: String, shape: Vec<usize>| -> Result<usize, TrainError> {
            let len = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or(TrainError::Overflow { what: "parameters" })?;
            specs.push(TensorSpec {
                name,
                shape,
                offset,
            });
            offset = offset
                .checked_add(len)
                .ok_or(TrainError::Overflow { what: "parameters" })?;
            Ok(specs.len() - 1)
        };
        let (c, ff) = (cfg.n_embd, cfg.n_ff);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let token_embd = add("token_embd.weight".into(), vec![cfg.n_vocab, c])?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let attn_norm = add(n("attn_norm.weight"), vec![c])?;
            let wq = add(n("attn_q.weight"), vec![qd, c])?;
            let wk = add(n("attn_k.weight"), vec![kvd, c])?;
            let wv = add(n("attn_v.weight"), vec![kvd, c])?;
            let biased = cfg.arch == Arch::Qwen2;
            let (bq, bk, bv) = if biased {
                (
                    Some(add(n("attn_q.bias"), vec![qd])?),
                    Some(add(n("attn_k.bias"), vec![kvd])?),
                    Some(add(n("attn_v.bias"), vec![kvd])?),
                )
            } else {
                (None, None, None)
            };
            let (q_norm, k_norm) = if cfg.arch == Arch::Qwen3 {
                (
                    Some(add(n("attn_q_norm.weight"), vec![cfg.head_dim])?),
                    Some(add(n("attn_k_norm.weight"), vec![cfg.head_dim])?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerParams {
                attn_norm,
                wq,
                wk,
                wv,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                wo: add(n("attn_output.weight"), vec![c, qd])?,
                ffn_norm: add(n("ffn_norm.weight"), vec![c])?,
                w_gate: add(n("ffn_gate.weight"), vec![ff, c])?,
                w_up: add(n("ffn_up.weight"), vec![ff, c])?,
                w_down: add(n("ffn_down.weight"), vec![c, ff])?,
            });
        }
        let output_norm = add("output_norm.weight".into(), vec![c])?;
        let output = if cfg.tied_output {
            token_embd
        } else {
            add("output.weight".into(), vec![cfg.n_vocab, c])?
        };
        Ok(ParamLayout {
            specs,
            n_params: offset,
            token_embd,
            output_norm,
            output,
            layers,
        })
    }

    /// Every tensor, in buffer order.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Total number of parameters.
    pub fn n_params(&self) -> usize {
        self.n_params
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub(crate) fn range(&self, index: usize) -> Range<usize> {
        self.specs[index].range()
    }

    /// Fills `params` with the tensors of `file`, dequantized to f32 (every ggml type the
    /// kernels dequantize). Shapes are checked against the layout.
    pub fn load_gguf(&self, file: &GgufFile, params: &mut [f32]) -> Result<(), TrainError> {
        // A tensor training would ignore (an output bias, say) would silently change the
        // model: refuse the file instead. rope_freqs.weight is a constant, read elsewhere.
        if let Some(t) = file
            .tensors()
            .iter()
            .find(|t| t.name != "rope_freqs.weight" && self.get(&t.name).is_none())
        {
            return Err(TrainError::TensorMismatch {
                name: t.name.clone(),
                expected: "only the tensors training implements".into(),
                found: "a tensor training does not know".into(),
            });
        }
        for spec in &self.specs {
            let t = file
                .tensor(&spec.name)
                .ok_or_else(|| TrainError::MissingTensor {
                    name: spec.name.clone(),
                    file: "the GGUF file".into(),
                })?;
            let mut dims: Vec<u64> = t.dims.clone();
            while dims.len() > spec.shape.len() && dims.last() == Some(&1) {
                dims.pop();
            }
            let want: Vec<u64> = spec.shape.iter().rev().map(|&d| d as u64).collect();
            if dims != want {
                return Err(TrainError::TensorMismatch {
                    name: spec.name.clone(),
                    expected: format!("ggml dims {want:?}"),
                    found: format!("{:?}", t.dims),
                });
            }
            edgelm_kernels::dequantize_row(t.ty, file.tensor_data(t), &mut params[spec.range()])
                .map_err(|source| TrainError::Kernel {
                    op: format!("dequantize {}", spec.name),
                    source,
                })?;
        }
        Ok(())
    }
}
