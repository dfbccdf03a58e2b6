//! A whole model: plan every tensor's type, convert those that change, and lay out the
//! output GGUF exactly as llama-quantize does (tensor order, metadata order, alignment), so
//! that without an importance matrix the output file is byte-identical with llama.cpp's.

use edgelm_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, TensorInfo, Value};
use rayon::prelude::*;

use crate::imatrix::{Imatrix, ImatrixError};
use crate::recipe::{
    is_quantized, llama_tensor_order, FileType, ModelInfo, Planner, RecipeError, RecipeOptions,
    TensorDesc,
};
use crate::QuantError;

/// Errors of [`quantize_model`].
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Planning failed (bad pattern, no fallback).
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// Writing the output's metadata or tensors failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tensor is already quantized and would be quantized again.
    #[error(
        "tensor {name} is already quantized ({from}); requantizing to {to} loses precision twice \
         (allow requantizing to do it anyway, or start from an F32/F16/BF16 model)"
    )]
    Requantize {
        /// Tensor.
        name: String,
        /// Its type.
        from: GgmlType,
        /// The planned type.
        to: GgmlType,
    },
    /// A source tensor could not be converted to f32.
    #[error("cannot convert tensor {name} ({ty}) to f32: {source}")]
    Dequantize {
        /// Tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
        /// Why.
        source: edgelm_kernels::KernelError,
    },
    /// The importance matrix does not fit a tensor.
    #[error(transparent)]
    Imatrix(#[from] ImatrixError),
    /// GPTQ failed on a tensor (bad Hessian, shapes).
    #[error("GPTQ failed on tensor {name} ({ty}): {source}")]
    Gptq {
        /// Tensor.
        name: String,
        /// Target type.
        ty: GgmlType,
        /// Why.
        source: crate::gptq::GptqError,
    },
    /// Quantizing a tensor failed (non-finite weights, unsupported type).
    #[error("cannot quantize tensor {name} to {ty}: {source}")]
    Quantize {
        /// Tensor.
        name: String,
        /// Target type.
        ty: GgmlType,
        /// Why.
        source: QuantError,
    },
}

/// What to do, beyond the input file.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Target file type.
    pub file_type: FileType,
    /// Recipe choices (overrides, output/embedding types, pure).
    pub recipe: RecipeOptions,
    /// Convert already-quantized tensors to another quantized type.
    pub allow_requantize: bool,
    /// Importance matrix and the path to record in the metadata (`quantize.imatrix.file`).
    pub imatrix: Option<(Imatrix, String)>,
}

/// One planned tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Name.
    pub name: String,
    /// Source type.
    pub from: GgmlType,
    /// Output type.
    pub to: GgmlType,
    /// The recipe's type when a fallback replaced it.
    pub fallback_from: Option<GgmlType>,
    /// Elements.
    pub n_elements: u64,
}

/// Totals of a conversion.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Tensors converted.
    pub n_converted: usize,
    /// Tensors that took a fallback type.
    pub n_fallback: usize,
    /// Whether some already-quantized tensor was quantized again.
    pub requantized: bool,
    /// Bytes of tensor data in the input.
    pub size_in: u64,
    /// Bytes of tensor data in the output.
    pub size_out: u64,
    /// Elements over all tensors.
    pub n_elements: u64,
}

impl Summary {
    /// Bits per weight of the input's tensor data.
    pub fn bpw_in(&self) -> f64 {
        self.size_in as f64 * 8.0 / self.n_elements.max(1) as f64
    }

    /// Bits per weight of the output's tensor data.
    pub fn bpw_out(&self) -> f64 {
        self.size_out as f64 * 8.0 / self.n_elements.max(1) as f64
    }
}

/// The recipe inputs from GGUF metadata (absent keys read as 0).
pub fn model_info(file: &GgufFile) -> ModelInfo {
    let md = file.metadata();
    let arch = md.arch().unwrap_or("").to_owned();
    let get = |k: &str| md.get_u64(&format!("{arch}.{k}")).unwrap_or(0) as usize;
    let n_head = get("attention.head_count");
    let n_head_kv = match md.get(&format!("{arch}.attention.head_count_kv")) {
        Some(_) => get("attention.head_count_kv"),
        None => n_head,
    };
    ModelInfo {
        n_layer: get("block_count"),
        n_head,
        n_head_kv,
        n_expert: get("expert_count"),
        arch,
    }
}

/// The file's tensors in llama.cpp's order.
fn ordered(file: &GgufFile) -> Vec<&TensorInfo> {
    let mut tensors: Vec<&TensorInfo> = file.tensors().iter().collect();
    tensors.sort_by(|a, b| llama_tensor_order(&a.name, &b.name));
    tensors
}

/// Chooses every tensor's output type (in llama.cpp's tensor order), refusing to requantize
/// unless allowed.
pub fn plan(file: &GgufFile, opts: &QuantizeOptions) -> Result<Vec<PlannedTensor>, ModelError> {
    let tensors = ordered(file);
    let mut planner = Planner::new(
        opts.file_type,
        model_info(file),
        opts.recipe.clone(),
        tensors.iter().map(|t| t.name.as_str()),
    )?;
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let choice = planner.choose(&TensorDesc {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })?;
        if choice.ty != t.ty
            && is_quantized(t.ty)
            && is_quantized(choice.ty)
            && !opts.allow_requantize
        {
            return Err(ModelError::Requantize {
                name: t.name.clone(),
                from: t.ty,
                to: choice.ty,
            });
        }
        out.push(PlannedTensor {
            name: t.name.clone(),
            from: t.ty,
            to: choice.ty,
            fallback_from: choice.fallback_from,
            n_elements: t.n_elements(),
        });
    }
    Ok(out)
}

/// Dequantizes a whole tensor to f32, in parallel over rows.
pub fn tensor_to_f32(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
    let data = file.tensor_data(t);
    let n_per_row = t.row_len();
    let row_bytes = t.row_bytes();
    let mut out = vec![0.0f32; t.n_elements() as usize];
    if n_per_row == 0 || out.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(n_per_row)
        .zip(data.par_chunks(row_bytes))
        .try_for_each(|(dst, src)| edgelm_kernels::dequantize_row(t.ty, src, dst))
        .map_err(|source| ModelError::Dequantize {
            name: t.name.clone(),
            ty: t.ty,
            source,
        })?;
    Ok(out)
}

/// Converts `file` as planned by [`plan`]: the returned writer holds the new metadata
/// (`general.file_type`, `general.quantization_version`; split keys dropped), converted
/// tensors, and borrowed views of the unchanged ones. `progress` is called after each tensor
/// with its plan. Runs on the current rayon pool.
pub fn quantize_model<'a>(
    file: &'a GgufFile,
    opts: &QuantizeOptions,
    progress: impl FnMut(&PlannedTensor),
) -> Result<(GgufWriter<'a>, Summary), ModelError> {
    quantize_model_with(file, opts, None, progress)
}

/// [`quantize_model`], with GPTQ for the tensors [`GptqCalibration::for_tensor`] accepts
/// (the others are quantized as without it).
pub fn quantize_model_with<'a>(
    file: &'a GgufFile,
    opts: &QuantizeOptions,
    gptq: Option<&GptqCalibration>,
    mut progress: impl FnMut(&PlannedTensor),
) -> Result<(GgufWriter<'a>, Summary), ModelError> {
    let planned = plan(file, opts)?;
    // As llama.cpp's gguf_set_val_*: a key that is set again moves to the end.
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata().iter() {
        if key.starts_with("split.")
            || key == "general.quantization_version"
            || key == "general.file_type"
        {
            continue;
        }
        w.add_metadata(key, value.clone())?;
    }
    w.add_metadata("general.quantization_version", Value::U32(2))?;
    w.add_metadata("general.file_type", Value::U32(opts.file_type.id()))?;
    if let Some((im, path)) = &opts.imatrix {
        // llama-quantize records these as key/value overrides.
        w.set_metadata("quantize.imatrix.file", truncate_127(path))?;
        if let Some(d) = im.datasets.first() {
            w.set_metadata("quantize.imatrix.dataset", truncate_127(d))?;
        }
        w.set_metadata(
            "quantize.imatrix.entries_count",
            Value::U32(im.entries.len() as u32),
        )?;
        w.set_metadata("quantize.imatrix.chunks_count", Value::U32(im.chunk_count))?;
    }
    if let Some(g) = gptq {
        w.set_metadata("quantize.gptq.dataset", truncate_127(&g.dataset))?;
        w.set_metadata(
            "quantize.gptq.entries_count",
            Value::U32(g.hessians.len() as u32),
        )?;
    }

    let mut summary = Summary::default();
    for p in &planned {
        let t = file
            .tensor(&p.name)
            .expect("planned tensors come from the file");
        summary.size_in += t.n_bytes;
        summary.n_elements += t.n_elements();
        if p.fallback_from.is_some() {
            summary.n_fallback += 1;
        }
        if p.to == t.ty {
            summary.size_out += t.n_bytes;
            w.add_tensor(t.name.clone(), &t.dims, t.ty, file.tensor_data(t))?;
        } else {
            if is_quantized(t.ty) && is_quantized(p.to) {
                summary.requantized = true;
            }
            // F32 sources are read in place when the mapping is aligned (it is for files with
            // the default alignment); otherwise converted like any other type.
            let f32s: std::borrow::Cow<[f32]> =
                match bytemuck::try_cast_slice::<u8, f32>(file.tensor_data(t)) {
                    Ok(v) if t.ty == GgmlType::F32 => std::borrow::Cow::Borrowed(v),
                    _ => std::borrow::Cow::Owned(tensor_to_f32(file, t)?),
                };
            let n_per_row = t.row_len();
            let n_expert = t.dims.get(2).copied().unwrap_or(1) as usize;
            let importance = match &opts.imatrix {
                Some((im, _)) => match im.for_tensor(&t.name, n_per_row, n_expert) {
                    Ok(v) => v,
                    // llama.cpp tolerates a token embedding without a fitting entry.
                    Err(_) if t.name == "token_embd.weight" => None,
                    Err(e) => return Err(e.into()),
                },
                None => None,
            };
            let quant_err = |source| ModelError::Quantize {
                name: t.name.clone(),
                ty: p.to,
                source,
            };
            let hessian = gptq.and_then(|g| g.for_tensor(&t.name, p.to, &t.dims));
            let data = match (hessian, importance) {
                (Some(h), qw) => crate::gptq::quantize_rows_gptq(
                    p.to,
                    &f32s,
                    n_per_row,
                    h,
                    qw.filter(|v| v.len() == n_per_row),
                    &gptq.expect("hessian implies gptq").options,
                )
                .map_err(|source| ModelError::Gptq {
                    name: t.name.clone(),
                    ty: p.to,
                    source,
                })?,
                (None, Some(qw)) => {
                    let rows_per_expert = t.dims.get(1).copied().unwrap_or(1) as usize;
                    let row_size = crate::row_bytes(p.to, n_per_row).map_err(quant_err)?;
                    let mut out = vec![0u8; t.n_rows() * row_size];
                    crate::quantize_rows_weighted(
                        p.to,
                        &f32s,
                        n_per_row,
                        &mut out,
                        qw,
                        rows_per_expert,
                    )
                    .map_err(quant_err)?;
                    out
                }
                (None, None) => crate::quantize(p.to, &f32s, n_per_row).map_err(quant_err)?,
            };
            summary.size_out += data.len() as u64;
            summary.n_converted += 1;
            w.add_tensor(t.name.clone(), &t.dims, p.to, data)?;
        }
        progress(p);
    }
    Ok((w, summary))
}

/// Calibration for GPTQ: one Hessian per distinct weight input, keyed by
/// [`crate::gptq::hessian_key`] of the weight's name.
#[derive(Debug, Clone, Default)]
pub struct GptqCalibration {
    /// `Xᵀ X` per input.
    pub hessians: std::collections::BTreeMap<String, crate::gptq::Hessian>,
    /// Damping.
    pub options: crate::gptq::GptqOptions,
    /// Where the calibration came from (recorded as `quantize.gptq.dataset`).
    pub dataset: String,
}

impl GptqCalibration {
    /// The Hessian GPTQ uses for `name` quantized to `ty`, when GPTQ applies (a 2-D weight
    /// with a Hessian of its row width, and a target type with a GPTQ grid).
    pub fn for_tensor(
        &self,
        name: &str,
        ty: GgmlType,
        dims: &[u64],
    ) -> Option<&crate::gptq::Hessian> {
        if crate::gptq_grid::group_len(ty).is_none() || dims.len() != 2 {
            return None;
        }
        self.hessians
            .get(&crate::gptq::hessian_key(name))
            .filter(|h| h.n() as u64 == dims[0] && h.count() > 0)
    }
}

/// llama.cpp copies override strings into 128-byte buffers.
fn truncate_127(s: &str) -> String {
    let mut end = s.len().min(127);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
