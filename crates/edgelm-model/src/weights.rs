//! Binding tensor names to the weights of each block, validated against the config. Matrices
//! stay borrowed byte ranges of the memory-mapped file (zero-copy); only the small vectors
//! (norm weights, biases, RoPE frequency factors) are converted to owned f32.
//! This is the one place where tensor names appear.

use edgelm_gguf::{GgmlType, GgufFile, TensorInfo};
use edgelm_kernels::vec_dot_type;

use crate::config::{Arch, ModelConfig};
use crate::ModelError;

/// A matrix `[n_out rows, n_in columns]` (ggml dims `[n_in, n_out]`) stored in the file.
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    pub name: String,
    pub ty: GgmlType,
    /// Type the activations are quantized to before the dot products.
    pub act_ty: GgmlType,
    /// Index of the tensor in `GgufFile::tensors()`.
    pub index: usize,
    pub n_in: usize,
    pub n_out: usize,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub bo: Option<Vec<f32>>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    pub token_embd: Matrix,
    pub output_norm: Vec<f32>,
    pub output: Matrix,
    pub rope_freqs: Option<Vec<f32>>,
    pub layers: Vec<Layer>,
}

impl Matrix {
    /// The weight bytes, borrowed from `file` (zero-copy).
    pub fn data<'a>(&self, file: &'a GgufFile) -> &'a [u8] {
        // `index` was taken from this same file's tensor list at load time.
        file.tensor_data(&file.tensors()[self.index])
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.n_in / self.ty.block_size() * self.ty.type_size()
    }
}

fn find<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        name: name.to_owned(),
    })
}

fn check_dims(t: &TensorInfo, expected: &[usize]) -> Result<(), ModelError> {
    let exp: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
    // Trailing dims of 1 are equivalent in ggml.
    let mut found = t.dims.clone();
    while found.len() > exp.len() && found.last() == Some(&1) {
        found.pop();
    }
    if found != exp {
        return Err(ModelError::TensorShape {
            name: t.name.clone(),
            expected: exp,
            found: t.dims.clone(),
        });
    }
    Ok(())
}

/// An f32 vector of length `n` (F32, F16 or BF16 in the file).
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = find(file, name)?;
    check_dims(t, &[n])?;
    to_f32(file, t)
}

fn opt_vector(file: &GgufFile, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(_) => vector(file, name, n).map(Some),
    }
}

fn to_f32(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
    let bytes = file.tensor_data(t);
    let n = t.n_elements() as usize;
    let v: Vec<f32> = match t.ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|b| edgelm_kernels::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| edgelm_kernels::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        ty => {
            return Err(ModelError::TensorType {
                name: t.name.clone(),
                ty,
                role: "a vector (norm weight, bias, frequency factors: F32/F16/BF16)",
            })
        }
    };
    if v.len() != n {
        return Err(ModelError::TensorShape {
            name: t.name.clone(),
            expected: vec![n as u64],
            found: vec![v.len() as u64],
        });
    }
    Ok(v)
}

fn matrix(file: &GgufFile, name: &str, n_in: usize, n_out: usize) -> Result<Matrix, ModelError> {
    let t = find(file, name)?;
    check_dims(t, &[n_in, n_out])?;
    let act_ty = vec_dot_type(t.ty).map_err(|_| ModelError::TensorType {
        name: name.to_owned(),
        ty: t.ty,
        role: "a matmul weight (no dot-product kernel for this type)",
    })?;
    let index = file
        .tensors()
        .iter()
        .position(|x| x.name == name)
        .ok_or_else(|| ModelError::MissingTensor {
            name: name.to_owned(),
        })?;
    Ok(Matrix {
        name: name.to_owned(),
        ty: t.ty,
        act_ty,
        index,
        n_in,
        n_out,
    })
}

impl Weights {
    /// Binds and validates every tensor `cfg` needs.
    pub fn bind(file: &GgufFile, cfg: &ModelConfig) -> Result<Weights, ModelError> {
        let c = cfg.n_embd;
        let token_embd = matrix(file, "token_embd.weight", c, cfg.n_vocab)?;
        let output = if cfg.tied_output {
            token_embd.clone()
        } else {
            matrix(file, "output.weight", c, cfg.n_vocab)?
        };
        let output_norm = vector(file, "output_norm.weight", c)?;
        let rope_freqs = opt_vector(file, "rope_freqs.weight", cfg.rope_dim / 2)?;
        let mut layers = Vec::with_capacity(cfg.n_layer.min(4096));
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
            let biased = cfg.arch == Arch::Qwen2;
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                if biased {
                    vector(file, &n(s), len).map(Some)
                } else {
                    opt_vector(file, &n(s), len)
                }
            };
            let head_norm = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                if cfg.arch == Arch::Qwen3 {
                    vector(file, &n(s), cfg.head_dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: vector(file, &n("attn_norm.weight"), c)?,
                wq: matrix(file, &n("attn_q.weight"), c, q)?,
                wk: matrix(file, &n("attn_k.weight"), c, kv)?,
                wv: matrix(file, &n("attn_v.weight"), c, kv)?,
                wo: matrix(file, &n("attn_output.weight"), q, c)?,
                bo: opt_vector(file, &n("attn_output.bias"), c)?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: head_norm("attn_q_norm.weight")?,
                k_norm: head_norm("attn_k_norm.weight")?,
                ffn_norm: vector(file, &n("ffn_norm.weight"), c)?,
                w_gate: matrix(file, &n("ffn_gate.weight"), c, cfg.n_ff)?,
                w_up: matrix(file, &n("ffn_up.weight"), c, cfg.n_ff)?,
                w_down: matrix(file, &n("ffn_down.weight"), cfg.n_ff, c)?,
            });
        }
        Ok(Weights {
            token_embd,
            output_norm,
            output,
            rope_freqs,
            layers,
        })
    }
}
