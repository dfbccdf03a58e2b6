//! LoRA adapters at inference, in llama.cpp's GGUF adapter format: `general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha`, and per adapted matrix `W` (`[OC, C]`) the
//! tensors `<W>.lora_a` (ggml dims `[C, R]`: `A` `[R, C]` row-major) and `<W>.lora_b` (ggml
//! dims `[R, OC]`: `B` `[OC, R]`). The forward adds `scale · B·(A·x)` to `W·x` (before any
//! bias, as llama.cpp's `build_lora_mm` does), in f32, with
//! `scale = user_scale · alpha / R` (`user_scale` when alpha is 0).

use std::collections::BTreeMap;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, TensorInfo};
use edgelm_kernels::dense::{sgemm, Layout};

use crate::weights::{Matrix, Weights};
use crate::{Model, ModelError};

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::BadAdapter {
        reason: reason.into(),
    }
}

/// One of `lora_a` / `lora_b`: values and ggml dims.
type Half = (Vec<f32>, u64, u64);

/// One adapted matrix: `A` [R, C], `B` [OC, R] as f32.
#[derive(Debug, Clone)]
struct Pair {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    n_in: usize,
    n_out: usize,
}

/// A LoRA adapter read from a GGUF file (not yet bound to a model).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    arch: String,
    alpha: f32,
    /// Base tensor name → its pair.
    pairs: BTreeMap<String, Pair>,
}

impl LoraAdapter {
    /// Reads an adapter file (tensors of any type the kernels dequantize; F32 and F16 in
    /// practice). Checks the metadata and that each `lora_a` has its `lora_b` of matching
    /// rank; shapes against a model are checked by [`Model::with_lora`].
    pub fn from_gguf(file: &GgufFile) -> Result<LoraAdapter, ModelError> {
        let md = file.metadata();
        let ty = md.get_opt_str("general.type")?.unwrap_or("");
        if ty != "adapter" {
            return Err(bad(format!(
                "general.type is {ty:?}, expected \"adapter\" (is this a model, not an adapter?)"
            )));
        }
        let aty = md.get_opt_str("adapter.type")?.unwrap_or("");
        if aty != "lora" {
            return Err(bad(format!("adapter.type is {aty:?}, expected \"lora\"")));
        }
        let arch = md
            .get_opt_str("general.architecture")?
            .ok_or_else(|| bad("no general.architecture"))?
            .to_string();
        let alpha = if md.get("adapter.lora.alpha").is_some() {
            md.get_f32("adapter.lora.alpha")?
        } else {
            0.0
        };
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(bad(format!("adapter.lora.alpha is {alpha}")));
        }
        let mut halves: BTreeMap<String, [Option<Half>; 2]> = BTreeMap::new();
        for t in file.tensors() {
            let (base, which) = if let Some(b) = t.name.strip_suffix(".lora_a") {
                (b, 0)
            } else if let Some(b) = t.name.strip_suffix(".lora_b") {
                (b, 1)
            } else {
                return Err(bad(format!(
                    "tensor {} is neither a .lora_a nor a .lora_b",
                    t.name
                )));
            };
            let mut dims = t.dims.clone();
            while dims.len() > 2 && dims.last() == Some(&1) {
                dims.pop();
            }
            if dims.len() != 2 {
                return Err(bad(format!("tensor {} has dims {:?}", t.name, t.dims)));
            }
            let n = usize::try_from(t.n_elements())
                .map_err(|_| ModelError::Overflow { what: "adapter" })?;
            let mut v = vec![0.0f32; n];
            edgelm_kernels::dequantize_row(t.ty, file.tensor_data(t), &mut v).map_err(
                |source| ModelError::Kernel {
                    op: format!("dequantize {}", t.name),
                    source,
                },
            )?;
            halves.entry(base.to_string()).or_default()[which] = Some((v, dims[0], dims[1]));
        }
        let mut pairs = BTreeMap::new();
        for (name, [a, b]) in halves {
            let (Some((a, a0, a1)), Some((b, b0, b1))) = (a, b) else {
                return Err(bad(format!("{name} has only one of lora_a / lora_b")));
            };
            // A: ggml [C, R]; B: ggml [R, OC].
            if a1 != b0 || a1 == 0 {
                return Err(bad(format!(
                    "{name}: lora_a dims [{a0}, {a1}] and lora_b dims [{b0}, {b1}] disagree on \
                     the rank (lora_a must be [n_in, rank], lora_b [rank, n_out])"
                )));
            }
            pairs.insert(
                name,
                Pair {
                    a,
                    b,
                    r: a1 as usize,
                    n_in: a0 as usize,
                    n_out: b1 as usize,
                },
            );
        }
        if pairs.is_empty() {
            return Err(bad("no lora_a / lora_b tensors"));
        }
        Ok(LoraAdapter { arch, alpha, pairs })
    }

    /// `adapter.lora.alpha` (0 when absent).
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The architecture the adapter was made for.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Names of the adapted base tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.pairs.keys().map(String::as_str)
    }

    /// `(A [R, C], B [OC, R], R, scale)` of base tensor `name` at `user_scale`.
    pub fn get(&self, name: &str, user_scale: f32) -> Option<(&[f32], &[f32], usize, f32)> {
        self.pairs
            .get(name)
            .map(|p| (&p.a[..], &p.b[..], p.r, self.scale(p.r, user_scale)))
    }

    fn scale(&self, r: usize, user_scale: f32) -> f32 {
        if self.alpha == 0.0 {
            user_scale
        } else {
            user_scale * self.alpha / r as f32
        }
    }
}

impl LoraAdapter {
    /// The merged model: `base`'s metadata and tensors, each adapted matrix `W` replaced by
    /// `W + scale·B·A` (computed in f32 from the dequantized `W`, written as F32, or F16
    /// when `f16`); the other tensors are copied in their own types. Every adapter tensor
    /// must name a matrix of `base` with its shape.
    pub fn merge_into_gguf<'a>(
        &self,
        base: &'a GgufFile,
        user_scale: f32,
        f16: bool,
    ) -> Result<GgufWriter<'a>, ModelError> {
        self.merge_into_gguf_with(base, user_scale, |_, wv: &[f32]| {
            Ok::<_, ModelError>(if f16 {
                (
                    GgmlType::F16,
                    wv.iter()
                        .flat_map(|&x| edgelm_kernels::f32_to_f16(x).to_le_bytes())
                        .collect(),
                )
            } else {
                (
                    GgmlType::F32,
                    wv.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
        })
    }

    /// [`LoraAdapter::merge_into_gguf`] with the merged matrices encoded by `encode` (given
    /// the base tensor and the merged values, row-major `[OC, C]`): to requantize them to
    /// the base's own type, say.
    pub fn merge_into_gguf_with<'a, E: From<ModelError>>(
        &self,
        base: &'a GgufFile,
        user_scale: f32,
        mut encode: impl FnMut(&TensorInfo, &[f32]) -> Result<(GgmlType, Vec<u8>), E>,
    ) -> Result<GgufWriter<'a>, E> {
        let gg = |e: edgelm_gguf::GgufError| E::from(ModelError::from(e));
        let arch = base
            .metadata()
            .get_opt_str("general.architecture")
            .map_err(gg)?
            .unwrap_or("");
        if arch != self.arch {
            return Err(bad(format!(
                "made for architecture {}, the model is {arch}",
                self.arch
            ))
            .into());
        }
        for name in self.pairs.keys() {
            if base.tensor(name).is_none() {
                return Err(bad(format!(
                    "tensor {name} does not exist in the base model (wrong base model?)"
                ))
                .into());
            }
        }
        let mut w = GgufWriter::new();
        for (key, value) in base.metadata().iter() {
            w.add_metadata(key, value.clone()).map_err(gg)?;
        }
        for t in base.tensors() {
            let Some(p) = self.pairs.get(&t.name) else {
                w.add_tensor(t.name.clone(), &t.dims, t.ty, base.tensor_data(t))
                    .map_err(gg)?;
                continue;
            };
            let mut dims = t.dims.clone();
            while dims.len() > 2 && dims.last() == Some(&1) {
                dims.pop();
            }
            if dims != [p.n_in as u64, p.n_out as u64] {
                return Err(bad(format!(
                    "{}: the adapter is for ggml dims [{}, {}], the model's are {:?} (an \
                     adapter for another model?)",
                    t.name, p.n_in, p.n_out, t.dims
                ))
                .into());
            }
            let mut wv = vec![0.0f32; p.n_in * p.n_out];
            edgelm_kernels::dequantize_row(t.ty, base.tensor_data(t), &mut wv)
                .map_err(|source| ModelError::Kernel {
                    op: format!("dequantize {}", t.name),
                    source,
                })
                .map_err(E::from)?;
            // B·A scaled, then added: W[o, c] += s Σ_r B[o, r] A[r, c]
            let mut ab = vec![0.0f32; p.n_out * p.n_in];
            sgemm(
                p.n_out,
                p.n_in,
                p.r,
                &p.b,
                Layout::Normal,
                &p.a,
                Layout::Normal,
                &mut ab,
                false,
                0,
            )
            .map_err(|source| {
                E::from(ModelError::Kernel {
                    op: format!("merge {}", t.name),
                    source,
                })
            })?;
            let s = self.scale(p.r, user_scale);
            for (x, d) in wv.iter_mut().zip(&ab) {
                *x += s * d;
            }
            let (ty, bytes) = encode(t, &wv)?;
            w.add_tensor(t.name.clone(), &dims, ty, bytes).map_err(gg)?;
        }
        Ok(w)
    }
}

/// An adapter bound to one matrix of the model.
#[derive(Debug, Clone)]
pub(crate) struct LoraMat {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    n_in: usize,
    n_out: usize,
    scale: f32,
}

impl LoraMat {
    /// `y += scale · (x·Aᵀ)·Bᵀ` for `t_n` rows; `x`: [T, C], `y`: [T, OC]; `tmp` grows to
    /// [T, R] once and is reused.
    pub(crate) fn apply(&self, y: &mut [f32], x: &[f32], t_n: usize, tmp: &mut Vec<f32>) {
        let n = t_n * self.r;
        if tmp.len() < n {
            tmp.resize(n, 0.0);
        }
        let u = &mut tmp[..n];
        let done = sgemm(
            t_n,
            self.r,
            self.n_in,
            &x[..t_n * self.n_in],
            Layout::Normal,
            &self.a,
            Layout::Transposed,
            u,
            false,
            1,
        )
        .and_then(|()| {
            for v in u.iter_mut() {
                *v *= self.scale;
            }
            sgemm(
                t_n,
                self.n_out,
                self.r,
                u,
                Layout::Normal,
                &self.b,
                Layout::Transposed,
                &mut y[..t_n * self.n_out],
                true,
                1,
            )
        });
        done.expect("adapter shapes were checked against the model when it was bound");
    }
}

/// The adapters of one block (None: that matrix has none).
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerLora {
    pub q: Option<LoraMat>,
    pub k: Option<LoraMat>,
    pub v: Option<LoraMat>,
    pub o: Option<LoraMat>,
    pub gate: Option<LoraMat>,
    pub up: Option<LoraMat>,
    pub down: Option<LoraMat>,
}

/// Applies `m` (if any) to `y` for input `x`.
pub(crate) fn apply(m: &Option<LoraMat>, y: &mut [f32], x: &[f32], t_n: usize, tmp: &mut Vec<f32>) {
    if let Some(m) = m {
        m.apply(y, x, t_n, tmp);
    }
}

fn bind(
    adapter: &LoraAdapter,
    m: &Matrix,
    user_scale: f32,
    used: &mut usize,
) -> Result<Option<LoraMat>, ModelError> {
    let Some(p) = adapter.pairs.get(&m.name) else {
        return Ok(None);
    };
    if (p.n_in, p.n_out) != (m.n_in, m.n_out) {
        return Err(bad(format!(
            "{}: the adapter is for a [{}, {}] matrix (rows, columns), the model's is [{}, {}] \
             (an adapter for another model?)",
            m.name, p.n_out, p.n_in, m.n_out, m.n_in
        )));
    }
    *used += 1;
    Ok(Some(LoraMat {
        a: p.a.clone(),
        b: p.b.clone(),
        r: p.r,
        n_in: p.n_in,
        n_out: p.n_out,
        scale: adapter.scale(p.r, user_scale),
    }))
}

pub(crate) fn bind_all(
    w: &Weights,
    model_arch: &str,
    adapter: &LoraAdapter,
    user_scale: f32,
) -> Result<Vec<LayerLora>, ModelError> {
    if adapter.arch != model_arch {
        return Err(bad(format!(
            "made for architecture {}, the model is {model_arch}",
            adapter.arch
        )));
    }
    let mut used = 0;
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        layers.push(LayerLora {
            q: bind(adapter, &l.wq, user_scale, &mut used)?,
            k: bind(adapter, &l.wk, user_scale, &mut used)?,
            v: bind(adapter, &l.wv, user_scale, &mut used)?,
            o: bind(adapter, &l.wo, user_scale, &mut used)?,
            gate: bind(adapter, &l.w_gate, user_scale, &mut used)?,
            up: bind(adapter, &l.w_up, user_scale, &mut used)?,
            down: bind(adapter, &l.w_down, user_scale, &mut used)?,
        });
    }
    if used != adapter.pairs.len() {
        let known: Vec<&str> = w
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .map(|m| m.name.as_str())
            .collect();
        let missing = adapter
            .pairs
            .keys()
            .find(|k| !known.contains(&k.as_str()))
            .cloned()
            .unwrap_or_default();
        return Err(bad(format!(
            "tensor {missing} is not a block projection of this model (wrong base model, or \
             an adapter on the embedding / output, which edgelm does not apply)"
        )));
    }
    Ok(layers)
}

impl Model {
    /// This model with `adapter` applied in every forward (`user_scale` multiplies the
    /// adapter's `alpha / rank`, as llama.cpp's `--lora-scaled`). Refused with
    /// [`ModelError::BadAdapter`] when the adapter names a tensor the model lacks, has
    /// other shapes, or another architecture.
    pub fn with_lora(
        mut self,
        adapter: &LoraAdapter,
        user_scale: f32,
    ) -> Result<Model, ModelError> {
        if !user_scale.is_finite() {
            return Err(bad(format!("scale {user_scale}")));
        }
        let arch = self.config.arch.name();
        self.lora = Some(bind_all(&self.weights, arch, adapter, user_scale)?);
        Ok(self)
    }

    /// Whether a LoRA adapter is applied.
    pub fn has_lora(&self) -> bool {
        self.lora.is_some()
    }
}
