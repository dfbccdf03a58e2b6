//! LoRA: low-rank adapters trained on top of a frozen (quantized) base model.
//!
//! A projection `y = W·x` (`W`: `[OC, C]`) gains `y += s · B·(A·drop(x))` with `A`: `[R, C]`,
//! `B`: `[OC, R]`, `s = alpha / R` (PEFT's and llama.cpp's convention). `A` starts
//! kaiming-uniform (PEFT's `kaiming_uniform_(a = √5)`: U(−1/√C, 1/√C)), `B` at zero, so a fresh
//! adapter leaves the model unchanged. Only the adapters are trained: the base stays in its
//! file's (quantized) types and is dequantized one row block at a time ([`base`]).
//!
//! - [`LoraConfig`], [`LoraTarget`]: which projections, rank, alpha, dropout.
//! - [`LoraParams`]: the adapter table and its one flat f32 buffer (weights, gradients and
//!   AdamW moments share the layout), GGUF adapter export (llama.cpp's format).
//! - [`lora_forward`] / [`lora_backward`]: the op pair for one projection.
//! - [`model`]: forward and backward of the whole model with adapters; [`trainer`]: the loop.

use std::path::Path;

use edgelm_gguf::{GgmlType, GgufWriter, Value};
use edgelm_kernels::dense::{sgemm, Layout};
use edgelm_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::TrainError;

pub mod base;
pub mod model;
pub mod trainer;

/// A projection of a block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LoraTarget {
    /// `attn_q`
    Q,
    /// `attn_k`
    K,
    /// `attn_v`
    V,
    /// `attn_output`
    O,
    /// `ffn_gate`
    Gate,
    /// `ffn_up`
    Up,
    /// `ffn_down`
    Down,
}

impl LoraTarget {
    /// Every target, in block order.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The GGUF tensor stem (`blk.N.<stem>.weight`).
    pub fn stem(self) -> &'static str {
        match self {
            LoraTarget::Q => "attn_q",
            LoraTarget::K => "attn_k",
            LoraTarget::V => "attn_v",
            LoraTarget::O => "attn_output",
            LoraTarget::Gate => "ffn_gate",
            LoraTarget::Up => "ffn_up",
            LoraTarget::Down => "ffn_down",
        }
    }

    /// (n_in, n_out) of the projection in `cfg`.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let (c, ff, qd, kvd) = (cfg.n_embd, cfg.n_ff, cfg.q_dim(), cfg.kv_dim());
        match self {
            LoraTarget::Q => (c, qd),
            LoraTarget::K | LoraTarget::V => (c, kvd),
            LoraTarget::O => (qd, c),
            LoraTarget::Gate | LoraTarget::Up => (c, ff),
            LoraTarget::Down => (ff, c),
        }
    }

    /// Parses a comma-separated list (`q,k,v,o,gate,up,down`, or `all`, or `attn`, `mlp`).
    pub fn parse_list(s: &str) -> Result<Vec<LoraTarget>, TrainError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let add: &[LoraTarget] = match part.to_ascii_lowercase().as_str() {
                "q" => &[LoraTarget::Q],
                "k" => &[LoraTarget::K],
                "v" => &[LoraTarget::V],
                "o" => &[LoraTarget::O],
                "gate" => &[LoraTarget::Gate],
                "up" => &[LoraTarget::Up],
                "down" => &[LoraTarget::Down],
                "attn" => &LoraTarget::ALL[..4],
                "mlp" => &LoraTarget::ALL[4..],
                "all" => &LoraTarget::ALL,
                other => {
                    return Err(TrainError::BadConfig {
                        key: "lora-targets".into(),
                        reason: format!(
                            "unknown projection {other:?} (expected q, k, v, o, gate, up, down, \
                             attn, mlp or all)"
                        ),
                    })
                }
            };
            out.extend_from_slice(add);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(TrainError::BadConfig {
                key: "lora-targets".into(),
                reason: "no projection given".into(),
            });
        }
        Ok(out)
    }
}

/// Adapter hyper-parameters (stored in checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank R.
    pub rank: usize,
    /// Alpha: the update is scaled by `alpha / rank`.
    pub alpha: f32,
    /// Dropout probability on the adapter's input (training only).
    pub dropout: f32,
    /// Projections with an adapter, in every block.
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |key: &str, reason: String| {
            Err(TrainError::BadConfig {
                key: key.into(),
                reason,
            })
        };
        if self.rank == 0 || self.rank > 4096 {
            return bad("lora-rank", format!("{} (expected 1..=4096)", self.rank));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad("lora-alpha", format!("{} (expected > 0)", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "lora-dropout",
                format!("{} (expected 0 <= p < 1)", self.dropout),
            );
        }
        if self.targets.is_empty() {
            return bad("lora-targets", "no projection given".into());
        }
        Ok(())
    }
}

/// One adapter: where its `A` and `B` live in the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// Block index.
    pub layer: usize,
    /// Projection.
    pub target: LoraTarget,
    /// Input width C of the projection.
    pub n_in: usize,
    /// Output width OC.
    pub n_out: usize,
    /// Offset of `A` ([R, C] row-major); `B` ([OC, R]) follows it.
    pub offset: usize,
}

impl AdapterSpec {
    /// The GGUF name of the base tensor.
    pub fn base_name(&self) -> String {
        format!("blk.{}.{}.weight", self.layer, self.target.stem())
    }
}

/// The adapters of a model: config, table and values.
#[derive(Debug, Clone)]
pub struct LoraParams {
    config: LoraConfig,
    specs: Vec<AdapterSpec>,
    /// `[L][target index]` → index into `specs` (None: no adapter there).
    by_layer: Vec<[Option<usize>; 7]>,
    /// Flat values: per adapter `A` then `B`.
    pub values: Vec<f32>,
}

impl LoraParams {
    /// Fresh adapters for `cfg`: `A` kaiming-uniform from `seed`, `B` zero.
    pub fn new(cfg: &ModelConfig, config: LoraConfig, seed: u64) -> Result<LoraParams, TrainError> {
        config.check()?;
        let r = config.rank;
        let mut specs = Vec::new();
        let mut by_layer = vec![[None; 7]; cfg.n_layer];
        let mut offset = 0usize;
        for (l, slots) in by_layer.iter_mut().enumerate() {
            for (ti, t) in LoraTarget::ALL.iter().enumerate() {
                if !config.targets.contains(t) {
                    continue;
                }
                let (n_in, n_out) = t.shape(cfg);
                slots[ti] = Some(specs.len());
                specs.push(AdapterSpec {
                    layer: l,
                    target: *t,
                    n_in,
                    n_out,
                    offset,
                });
                offset = (n_in + n_out)
                    .checked_mul(r)
                    .and_then(|n| n.checked_add(offset))
                    .ok_or(TrainError::Overflow { what: "adapters" })?;
            }
        }
        let mut values = vec![0.0f32; offset];
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for spec in &specs {
            let bound = 1.0 / (spec.n_in as f64).sqrt();
            let a = &mut values[spec.offset..spec.offset + r * spec.n_in];
            for x in a.iter_mut() {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                *x = ((2.0 * u - 1.0) * bound) as f32;
            }
        }
        Ok(LoraParams {
            config,
            specs,
            by_layer,
            values,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every adapter, in buffer order.
    pub fn specs(&self) -> &[AdapterSpec] {
        &self.specs
    }

    /// Number of trained values.
    pub fn n_params(&self) -> usize {
        self.values.len()
    }

    /// The adapter of `target` in block `layer`.
    pub fn get(&self, layer: usize, target: LoraTarget) -> Option<&AdapterSpec> {
        let ti = LoraTarget::ALL.iter().position(|&t| t == target)?;
        self.by_layer.get(layer)?[ti].map(|i| &self.specs[i])
    }

    /// Index of the adapter of `target` in block `layer` in [`LoraParams::specs`].
    pub(crate) fn index(&self, layer: usize, target: LoraTarget) -> Option<usize> {
        let ti = LoraTarget::ALL.iter().position(|&t| t == target)?;
        self.by_layer.get(layer)?[ti]
    }

    /// Ranges of `A` and `B` of adapter `i` in the flat buffer.
    pub fn ranges(&self, i: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let s = &self.specs[i];
        let r = self.config.rank;
        let a = s.offset..s.offset + r * s.n_in;
        (a.clone(), a.end..a.end + s.n_out * r)
    }

    /// Writes the adapters as a GGUF LoRA adapter llama.cpp loads (`--lora FILE`):
    /// `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per adapter
    /// `blk.N.<stem>.weight.lora_a` (ggml dims `[C, R]`, i.e. `A` `[R, C]` row-major) and
    /// `.lora_b` (ggml dims `[R, OC]`, `B` `[OC, R]`), in F32 or F16.
    pub fn write_gguf(&self, arch: &str, path: &Path, f16: bool) -> Result<(), TrainError> {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", Value::String(arch.into()))?;
        w.add_metadata("general.type", Value::String("adapter".into()))?;
        w.add_metadata("general.name", Value::String("edgelm LoRA adapter".into()))?;
        w.add_metadata("adapter.type", Value::String("lora".into()))?;
        w.add_metadata("adapter.lora.alpha", Value::F32(self.config.alpha))?;
        let r = self.config.rank as u64;
        for (i, s) in self.specs.iter().enumerate() {
            let (ra, rb) = self.ranges(i);
            let enc = |v: &[f32]| -> (GgmlType, Vec<u8>) {
                if f16 {
                    (
                        GgmlType::F16,
                        v.iter()
                            .flat_map(|&x| edgelm_kernels::f32_to_f16(x).to_le_bytes())
                            .collect(),
                    )
                } else {
                    (
                        GgmlType::F32,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    )
                }
            };
            let (ty, bytes) = enc(&self.values[ra]);
            w.add_tensor(
                format!("{}.lora_a", s.base_name()),
                &[s.n_in as u64, r],
                ty,
                bytes,
            )?;
            let (ty, bytes) = enc(&self.values[rb]);
            w.add_tensor(
                format!("{}.lora_b", s.base_name()),
                &[r, s.n_out as u64],
                ty,
                bytes,
            )?;
        }
        w.write_file(path)?;
        Ok(())
    }

    /// Adds `scale · B·A` of every adapter to the matching matrix of an f32 model's weights
    /// (`params` laid out by `layout`): the merged model.
    pub fn merge_into(
        &self,
        layout: &crate::ParamLayout,
        params: &mut [f32],
    ) -> Result<(), TrainError> {
        let r = self.config.rank;
        for (i, s) in self.specs.iter().enumerate() {
            let name = s.base_name();
            let spec = layout.get(&name).ok_or_else(|| TrainError::MissingTensor {
                name: name.clone(),
                file: "the base model".into(),
            })?;
            if spec.shape != [s.n_out, s.n_in] {
                return Err(TrainError::TensorMismatch {
                    name,
                    expected: format!("[{}, {}]", s.n_out, s.n_in),
                    found: format!("{:?}", spec.shape),
                });
            }
            let (ra, rb) = self.ranges(i);
            let mut ab = vec![0.0f32; s.n_out * s.n_in];
            sgemm(
                s.n_out,
                s.n_in,
                r,
                &self.values[rb],
                Layout::Normal,
                &self.values[ra],
                Layout::Normal,
                &mut ab,
                false,
                0,
            )
            .map_err(|source| TrainError::Kernel {
                op: format!("merge {name}"),
                source,
            })?;
            let sc = self.config.scale();
            for (w, d) in params[spec.range()].iter_mut().zip(&ab) {
                *w += sc * d;
            }
        }
        Ok(())
    }
}

/// Shape of one adapter application: `N` rows, `C` in, `OC` out, rank `R`, scale `s`.
#[derive(Debug, Clone, Copy)]
pub struct LoraShape {
    /// Rows (tokens).
    pub n: usize,
    /// Input width.
    pub c: usize,
    /// Output width.
    pub oc: usize,
    /// Rank.
    pub r: usize,
    /// `alpha / R`.
    pub scale: f32,
}

fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: (&[f32], Layout),
    b: (&[f32], Layout),
    c: &mut [f32],
    acc: bool,
) {
    sgemm(
        m,
        n,
        k,
        a.0,
        a.1,
        b.0,
        b.1,
        c,
        acc,
        rayon::current_num_threads(),
    )
    .expect("lora gemm: buffers sized by the caller's shape");
}

/// `u = s · x · Aᵀ` ([N, R], saved for the backward); `y += u · Bᵀ` ([N, OC]). `x` is the
/// (dropped-out) input [N, C].
pub fn lora_forward(y: &mut [f32], u: &mut [f32], x: &[f32], a: &[f32], b: &[f32], sh: LoraShape) {
    let LoraShape { n, c, oc, r, scale } = sh;
    // u[n, r] = s Σ_c x[n, c] a[r, c]
    gemm(
        n,
        r,
        c,
        (x, Layout::Normal),
        (a, Layout::Transposed),
        u,
        false,
    );
    for v in u.iter_mut() {
        *v *= scale;
    }
    // y[n, o] += Σ_r u[n, r] b[o, r]
    gemm(
        n,
        oc,
        r,
        (u, Layout::Normal),
        (b, Layout::Transposed),
        y,
        true,
    );
}

/// Backward of [`lora_forward`] for `dy` ([N, OC]): `dB += dyᵀ · u`, `du = s · dy · B`
/// ([N, R], into `du`), `dA += duᵀ · x`, `dx += du · A` ([N, C]).
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dx: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    du: &mut [f32],
    dy: &[f32],
    x: &[f32],
    u: &[f32],
    a: &[f32],
    b: &[f32],
    sh: LoraShape,
) {
    let LoraShape { n, c, oc, r, scale } = sh;
    // y += u · Bᵀ: dB[o, r] += Σ_n dy[n, o] u[n, r]
    gemm(
        oc,
        r,
        n,
        (dy, Layout::Transposed),
        (u, Layout::Normal),
        db,
        true,
    );
    // du[n, r] = s Σ_o dy[n, o] b[o, r]
    gemm(
        n,
        r,
        oc,
        (dy, Layout::Normal),
        (b, Layout::Normal),
        du,
        false,
    );
    for v in du.iter_mut() {
        *v *= scale;
    }
    // u = s · x · Aᵀ: dA[r, c] += Σ_n du[n, r] x[n, c]
    gemm(
        r,
        c,
        n,
        (du, Layout::Transposed),
        (x, Layout::Normal),
        da,
        true,
    );
    // dx[n, c] += Σ_r du[n, r] a[r, c]
    gemm(n, c, r, (du, Layout::Normal), (a, Layout::Normal), dx, true);
}

#[cfg(test)]
mod tests;
