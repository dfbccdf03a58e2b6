//! Which type each tensor gets: llama.cpp's file types ("Q4_K_M", …) and its
//! `llama_tensor_get_type` (src/llama-quant.cpp), ported branch for branch for the file types
//! edgelm offers. A file type names a default tensor type; the *mixed* recipes (`_S`, `_M`,
//! `_L`, `Q2_K`) give some tensors more bits: the output (and a tied token embedding) Q6_K,
//! `attn_v` and `ffn_down` of some layers Q5_K/Q6_K, and so on.
//!
//! Tensors must be planned in llama.cpp's order ([`llama_tensor_order`]): the recipes count
//! `attn_v` and `ffn_down` tensors as they pass.

use std::cmp::Ordering;

use edgelm_gguf::GgmlType;
use regex::Regex;

/// A llama.cpp file type (`general.file_type`, `LLAMA_FTYPE_*`), as `llama-quantize` names
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6_K,
    Q5_K_S,
    Q5_K_M,
    Q5_0,
    Q5_1,
    Q4_K_S,
    Q4_K_M,
    Q4_0,
    Q4_1,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q2_K,
}

/// Every file type edgelm can write, most bits first.
pub const ALL_FILE_TYPES: &[FileType] = &[
    FileType::F32,
    FileType::F16,
    FileType::BF16,
    FileType::Q8_0,
    FileType::Q6_K,
    FileType::Q5_K_S,
    FileType::Q5_K_M,
    FileType::Q5_0,
    FileType::Q5_1,
    FileType::Q4_K_S,
    FileType::Q4_K_M,
    FileType::Q4_0,
    FileType::Q4_1,
    FileType::Q3_K_S,
    FileType::Q3_K_M,
    FileType::Q3_K_L,
    FileType::Q2_K,
];

impl FileType {
    /// The `LLAMA_FTYPE_*` value written to `general.file_type`.
    pub fn id(self) -> u32 {
        use FileType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q2_K => 10,
            Q3_K_S => 11,
            Q3_K_M => 12,
            Q3_K_L => 13,
            Q4_K_S => 14,
            Q4_K_M => 15,
            Q5_K_S => 16,
            Q5_K_M => 17,
            Q6_K => 18,
            BF16 => 32,
        }
    }

    /// The name llama-quantize uses.
    pub fn name(self) -> &'static str {
        use FileType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q8_0 => "Q8_0",
            Q6_K => "Q6_K",
            Q5_K_S => "Q5_K_S",
            Q5_K_M => "Q5_K_M",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q4_K_S => "Q4_K_S",
            Q4_K_M => "Q4_K_M",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q3_K_S => "Q3_K_S",
            Q3_K_M => "Q3_K_M",
            Q3_K_L => "Q3_K_L",
            Q2_K => "Q2_K",
        }
    }

    /// Parses a name (case-insensitive); `Q4_K`, `Q5_K` and `Q3_K` mean their `_M` variants,
    /// as in llama-quantize.
    pub fn from_name(s: &str) -> Option<FileType> {
        let upper = s.to_ascii_uppercase();
        let alias = match upper.as_str() {
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            "Q3_K" => "Q3_K_M",
            other => other,
        };
        ALL_FILE_TYPES.iter().copied().find(|t| t.name() == alias)
    }

    /// The tensor type most tensors get (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        use FileType::*;
        match self {
            F32 => GgmlType::F32,
            F16 => GgmlType::F16,
            BF16 => GgmlType::BF16,
            Q8_0 => GgmlType::Q8_0,
            Q6_K => GgmlType::Q6_K,
            Q5_K_S | Q5_K_M => GgmlType::Q5_K,
            Q5_0 => GgmlType::Q5_0,
            Q5_1 => GgmlType::Q5_1,
            Q4_K_S | Q4_K_M => GgmlType::Q4_K,
            Q4_0 => GgmlType::Q4_0,
            Q4_1 => GgmlType::Q4_1,
            Q3_K_S | Q3_K_M | Q3_K_L => GgmlType::Q3_K,
            Q2_K => GgmlType::Q2_K,
        }
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a type is a block-quantized one (`ggml_is_quantized`).
pub fn is_quantized(ty: GgmlType) -> bool {
    ty.block_size() > 1
}

/// llama.cpp's tensor order (`weight_name_comparer`): by layer number (tensors outside a
/// `blk.N.` come first), then by name.
pub fn llama_tensor_order(a: &str, b: &str) -> Ordering {
    fn layer(name: &str) -> i64 {
        name.strip_prefix("blk.")
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                // sscanf("blk.%d.") needs the dot after the number only to match the rest,
                // and assigns the number either way.
                digits.parse::<i64>().ok()
            })
            .unwrap_or(-1)
    }
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

/// What the recipes need to know about the model (from its GGUF metadata).
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub arch: String,
    /// Layers (`{arch}.block_count`).
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Experts (`{arch}.expert_count`, 0 without).
    pub n_expert: usize,
}

impl ModelInfo {
    fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// llama.cpp's `LLM_TYPE_70B` for the llama architecture: 80 layers with grouped KV heads.
    fn is_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// A tensor as the planner sees it.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    /// Name.
    pub name: String,
    /// Dims in ggml order (`dims[0]` = row length).
    pub dims: Vec<u64>,
    /// Its type in the source file.
    pub ty: GgmlType,
}

/// User choices beyond the file type (llama-quantize's flags).
#[derive(Debug, Clone, Default)]
pub struct RecipeOptions {
    /// `--tensor-type PATTERN=TYPE`: the first pattern found (regex search) in a tensor's name
    /// sets its type, replacing the recipe (patterns are lower-cased, as llama.cpp does).
    pub overrides: Vec<(String, GgmlType)>,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--pure`: no mixed recipe, the default type everywhere (fallbacks still apply).
    pub pure: bool,
    /// `--leave-output-tensor`: keep `output.weight` as it is.
    pub leave_output_tensor: bool,
    /// An importance matrix is used (changes the Q4_0/Q5_0 `ffn_down` recipe).
    pub has_imatrix: bool,
}

/// The decision for one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Tensor type to write.
    pub ty: GgmlType,
    /// Whether the tensor may be quantized at all (2D+ weights, not norms, ...).
    pub quantizable: bool,
    /// Set when the recipe's type did not fit the row length and a fallback was taken.
    pub fallback_from: Option<GgmlType>,
    /// Set when a `--tensor-type` pattern chose the type.
    pub overridden: bool,
}

/// Errors of the planner.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// A `--tensor-type` pattern is not a valid regular expression.
    #[error("bad --tensor-type pattern '{pattern}': {source}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// Why.
        source: regex::Error,
    },
    /// A type has no fallback for rows it cannot hold.
    #[error("tensor {name}: no fallback type for {ty} with rows of {n_per_row}")]
    NoFallback {
        /// Tensor.
        name: String,
        /// Type.
        ty: GgmlType,
        /// Row length.
        n_per_row: u64,
    },
    /// An expert tensor's name does not tell its layer.
    #[error("cannot tell the layer of tensor {0}")]
    NoLayer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    Output,
    AttentionQkv,
    AttentionKvB,
    AttentionV,
    AttentionK,
    AttentionQ,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    for (pat, cat) in [
        ("attn_qkv.weight", AttentionQkv),
        ("attn_kv_b.weight", AttentionKvB),
        ("attn_v.weight", AttentionV),
        ("attn_k.weight", AttentionK),
        ("attn_q.weight", AttentionQ),
        ("attn_output.weight", AttentionOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ] {
        if name.contains(pat) {
            return cat;
        }
    }
    Other
}

fn is_attn_v(c: Category) -> bool {
    matches!(
        c,
        Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB
    )
}

/// `ggml_n_dims`: dimensions up to the last one larger than 1 (at least 1).
fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// llama.cpp's `tensor_allows_quantization` (the architecture-specific name lists included,
/// since they cost nothing).
fn allows_quantization(opts: &RecipeOptions, t: &TensorDesc) -> bool {
    if n_dims(&t.dims) < 2 {
        return false;
    }
    let name = t.name.as_str();
    if !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    if opts.leave_output_tensor && name == "output.weight" {
        return false;
    }
    if name == "position_embd.weight" || name == "token_types.weight" {
        return false;
    }
    const KEEP: &[&str] = &[
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    !KEEP.iter().any(|k| name.contains(k))
}

fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// Chooses tensor types the way llama-quantize does. Feed it every tensor of the model in
/// [`llama_tensor_order`] via [`Planner::choose`].
#[derive(Debug)]
pub struct Planner {
    ftype: FileType,
    model: ModelInfo,
    opts: RecipeOptions,
    patterns: Vec<(Regex, GgmlType)>,
    has_tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_ffn_down: i64,
    i_ffn_down: i64,
    n_fallback: usize,
}

impl Planner {
    /// A planner for `tensor_names` (all of the model's tensors: the recipes count `attn_v`
    /// tensors and look for `output.weight`).
    pub fn new<'a>(
        ftype: FileType,
        model: ModelInfo,
        opts: RecipeOptions,
        tensor_names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Planner, RecipeError> {
        let mut patterns = Vec::new();
        for (p, ty) in &opts.overrides {
            let lower = p.to_lowercase();
            let re = Regex::new(&lower).map_err(|source| RecipeError::BadPattern {
                pattern: p.clone(),
                source,
            })?;
            patterns.push((re, *ty));
        }
        let mut n_attention_wv = 0;
        let mut has_tied_embeddings = true;
        for name in tensor_names {
            let c = category(name);
            if is_attn_v(c) {
                n_attention_wv += 1;
            }
            if c == Category::Output {
                has_tied_embeddings = false;
            }
        }
        let n_ffn_down = model.n_layer as i64;
        Ok(Planner {
            ftype,
            model,
            opts,
            patterns,
            has_tied_embeddings,
            n_attention_wv,
            i_attention_wv: 0,
            n_ffn_down,
            i_ffn_down: 0,
            n_fallback: 0,
        })
    }

    /// How many tensors took a fallback type so far.
    pub fn n_fallback(&self) -> usize {
        self.n_fallback
    }

    /// The type for the next tensor (`llama_tensor_get_type`).
    pub fn choose(&mut self, t: &TensorDesc) -> Result<Choice, RecipeError> {
        let keep = Choice {
            ty: t.ty,
            quantizable: false,
            fallback_from: None,
            overridden: false,
        };
        if !allows_quantization(&self.opts, t) {
            return Ok(keep);
        }
        let cat = category(&t.name);
        let chosen = |ty| Choice {
            ty,
            quantizable: true,
            fallback_from: None,
            overridden: false,
        };
        if let (Some(ty), Category::TokenEmbd) = (self.opts.token_embedding_type, cat) {
            return Ok(chosen(ty));
        }
        if let (Some(ty), Category::Output) = (self.opts.output_tensor_type, cat) {
            return Ok(chosen(ty));
        }
        let default_type = self.ftype.default_type();
        let mut choice = chosen(default_type);
        if is_quantized(default_type) {
            let mut manual = false;
            for (re, ty) in &self.patterns {
                if re.is_match(&t.name) {
                    choice.ty = *ty;
                    choice.overridden = true;
                    manual = true;
                    break;
                }
            }
            if !manual && !self.opts.pure {
                choice.ty = self.recipe(choice.ty, t, cat)?;
            }
            let fitted = self.fallback(t, choice.ty)?;
            if fitted != choice.ty {
                choice.fallback_from = Some(choice.ty);
                choice.ty = fitted;
            }
        }
        Ok(choice)
    }

    /// `tensor_type_fallback`: a type whose block fits the row length.
    fn fallback(&mut self, t: &TensorDesc, ty: GgmlType) -> Result<GgmlType, RecipeError> {
        let ncols = t.dims.first().copied().unwrap_or(1);
        let block = ty.block_size() as u64;
        if ncols % block == 0 {
            return Ok(ty);
        }
        self.n_fallback += 1;
        let mut out = match ty {
            GgmlType::IQ1_S
            | GgmlType::IQ1_M
            | GgmlType::IQ2_XXS
            | GgmlType::IQ2_XS
            | GgmlType::IQ2_S
            | GgmlType::IQ3_XXS
            | GgmlType::IQ3_S
            | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            other if block <= 32 => other,
            other => {
                return Err(RecipeError::NoFallback {
                    name: t.name.clone(),
                    ty: other,
                    n_per_row: ncols,
                })
            }
        };
        if ncols % out.block_size() as u64 != 0 {
            out = GgmlType::F16;
        }
        Ok(out)
    }

    fn layer_info(
        &self,
        counter: i64,
        n_layer: i64,
        name: &str,
    ) -> Result<(i64, i64), RecipeError> {
        if self.model.n_expert.max(1) > 1 {
            let layer = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|d| d.parse::<i64>().ok())
                .filter(|&l| l >= 0 && l < n_layer)
                .ok_or_else(|| RecipeError::NoLayer(name.to_owned()))?;
            return Ok((layer, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl` for edgelm's file types.
    fn recipe(
        &mut self,
        mut new_type: GgmlType,
        t: &TensorDesc,
        cat: Category,
    ) -> Result<GgmlType, RecipeError> {
        use FileType as F;
        use GgmlType as G;
        let ftype = self.ftype;
        let falcon = self.model.is_falcon();
        let n_expert = self.model.n_expert;
        let n_gqa = self.model.n_gqa();
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            if let Some(ty) = self.opts.output_tensor_type {
                new_type = ty;
            } else {
                let nx = t.dims.first().copied().unwrap_or(1);
                if falcon || nx % new_type.block_size() as u64 != 0 {
                    new_type = G::Q8_0;
                } else if new_type != G::Q8_0 {
                    new_type = G::Q6_K;
                }
            }
        } else if cat == Category::TokenEmbd {
            // The IQ/TQ file types lower the embedding; none of edgelm's do.
        } else if is_attn_v(cat) {
            let i = self.i_attention_wv;
            match ftype {
                F::Q2_K => new_type = if n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q3_K_M => new_type = if i < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => new_type = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, self.n_attention_wv) => {
                    new_type = G::Q6_K
                }
                F::Q4_K_S if i < 4 => new_type = G::Q5_K,
                _ => {}
            }
            if self.model.is_70b() && (new_type == G::Q3_K || new_type == G::Q4_K) {
                new_type = G::Q5_K;
            }
            if n_expert == 8 {
                new_type = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if n_expert == 8 {
                new_type = G::Q8_0;
            }
        } else if cat == Category::AttentionQ {
            // Only the IQ3 file types change attn_q.
        } else if cat == Category::FfnDown {
            let (i_layer, n_layer) = self.layer_info(self.i_ffn_down, self.n_ffn_down, &t.name)?;
            match ftype {
                F::Q2_K => new_type = G::Q3_K,
                F::Q3_K_M => {
                    new_type = if i_layer < n_layer / 16 {
                        G::Q5_K
                    } else if !falcon || use_more_bits(i_layer, n_layer) {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_L => new_type = if falcon { G::Q4_K } else { G::Q5_K },
                F::Q4_K_M => {
                    if falcon {
                        new_type = if i_layer < n_layer / 16 {
                            G::Q6_K
                        } else if use_more_bits(i_layer, n_layer) {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        };
                    } else if use_more_bits(i_layer, n_layer) {
                        new_type = G::Q6_K;
                    }
                }
                F::Q5_K_M if use_more_bits(i_layer, n_layer) => new_type = G::Q6_K,
                F::Q4_K_S if !falcon && i_layer < n_layer / 8 => new_type = G::Q5_K,
                F::Q4_0 | F::Q5_0 if self.opts.has_imatrix && i_layer < n_layer / 8 => {
                    new_type = if ftype == F::Q4_0 { G::Q4_1 } else { G::Q5_1 };
                }
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if !falcon {
                if n_expert == 8 {
                    if matches!(
                        ftype,
                        F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M
                    ) {
                        new_type = G::Q5_K;
                    }
                } else {
                    match ftype {
                        F::Q2_K => new_type = G::Q3_K,
                        F::Q3_K_M => new_type = G::Q4_K,
                        F::Q3_K_L => new_type = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == F::Q3_K_L {
                new_type = G::Q4_K;
            }
        } else if cat == Category::FfnGate || cat == Category::FfnUp {
            // Only IQ3_XS changes these; llama.cpp still checks the layer of expert tensors.
            if n_expert > 1 {
                self.layer_info(0, self.n_ffn_down, &t.name)?;
            }
        }
        Ok(new_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_like() -> (ModelInfo, Vec<TensorDesc>) {
        let info = ModelInfo {
            arch: "llama".into(),
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
            n_expert: 0,
        };
        let mut t = vec![
            TensorDesc {
                name: "token_embd.weight".into(),
                dims: vec![576, 49152],
                ty: GgmlType::F32,
            },
            TensorDesc {
                name: "output_norm.weight".into(),
                dims: vec![576],
                ty: GgmlType::F32,
            },
        ];
        for l in 0..30 {
            for (n, d) in [
                ("attn_q.weight", [576u64, 576]),
                ("attn_k.weight", [576, 192]),
                ("attn_v.weight", [576, 192]),
                ("attn_output.weight", [576, 576]),
                ("ffn_gate.weight", [576, 1536]),
                ("ffn_up.weight", [576, 1536]),
                ("ffn_down.weight", [1536, 576]),
                ("attn_norm.weight", [576, 1]),
            ] {
                t.push(TensorDesc {
                    name: format!("blk.{l}.{n}"),
                    dims: d.to_vec(),
                    ty: GgmlType::F32,
                });
            }
        }
        t.sort_by(|a, b| llama_tensor_order(&a.name, &b.name));
        (info, t)
    }

    fn plan(ftype: FileType, opts: RecipeOptions) -> Vec<(String, GgmlType)> {
        let (info, ts) = smollm_like();
        let mut p = Planner::new(ftype, info, opts, ts.iter().map(|t| t.name.as_str())).unwrap();
        ts.iter()
            .map(|t| (t.name.clone(), p.choose(t).unwrap().ty))
            .collect()
    }

    fn ty_of(plan: &[(String, GgmlType)], name: &str) -> GgmlType {
        plan.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn order_is_layer_then_name() {
        let mut v = vec![
            "blk.10.a",
            "blk.2.b",
            "output.weight",
            "blk.2.a",
            "token_embd.weight",
        ];
        v.sort_by(|a, b| llama_tensor_order(a, b));
        assert_eq!(
            v,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.a",
                "blk.2.b",
                "blk.10.a"
            ]
        );
    }

    #[test]
    fn q4_k_m_recipe_on_a_576_wide_model() {
        let p = plan(FileType::Q4_K_M, RecipeOptions::default());
        // Tied embedding: treated as the output; 576 is not a multiple of 256 -> Q8_0.
        assert_eq!(ty_of(&p, "token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(ty_of(&p, "output_norm.weight"), GgmlType::F32);
        assert_eq!(ty_of(&p, "blk.0.attn_norm.weight"), GgmlType::F32);
        // 576-wide rows: Q4_K falls back to Q5_0, Q6_K to Q8_0.
        assert_eq!(ty_of(&p, "blk.5.attn_q.weight"), GgmlType::Q5_0);
        assert_eq!(ty_of(&p, "blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(ty_of(&p, "blk.5.attn_v.weight"), GgmlType::Q8_0); // (5-3)%3 == 2
        assert_eq!(ty_of(&p, "blk.6.attn_v.weight"), GgmlType::Q5_0);
        // ffn_down rows are 1536 = 6 x 256: Q6_K on use_more_bits layers, Q4_K elsewhere.
        assert_eq!(ty_of(&p, "blk.0.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(ty_of(&p, "blk.4.ffn_down.weight"), GgmlType::Q4_K); // (4-3)%3 != 2
        assert_eq!(ty_of(&p, "blk.5.ffn_down.weight"), GgmlType::Q6_K); // (5-3)%3 == 2
        assert_eq!(ty_of(&p, "blk.6.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(ty_of(&p, "blk.29.ffn_down.weight"), GgmlType::Q6_K);
    }

    #[test]
    fn overrides_and_non_quantized_defaults() {
        let opts = RecipeOptions {
            overrides: vec![
                ("FFN_DOWN".into(), GgmlType::Q8_0),
                ("attn_.*".into(), GgmlType::Q4_K),
            ],
            ..Default::default()
        };
        let p = plan(FileType::Q4_0, opts.clone());
        assert_eq!(ty_of(&p, "blk.3.ffn_down.weight"), GgmlType::Q8_0);
        // Q4_K override on 576-wide rows still falls back.
        assert_eq!(ty_of(&p, "blk.3.attn_k.weight"), GgmlType::Q5_0);
        assert_eq!(ty_of(&p, "blk.3.ffn_up.weight"), GgmlType::Q4_0);
        // Overrides do nothing for float file types, as in llama.cpp.
        let p = plan(FileType::F16, opts);
        assert_eq!(ty_of(&p, "blk.3.ffn_down.weight"), GgmlType::F16);
        assert!(matches!(
            Planner::new(
                FileType::Q4_0,
                ModelInfo::default(),
                RecipeOptions {
                    overrides: vec![("(".into(), GgmlType::Q8_0)],
                    ..Default::default()
                },
                []
            ),
            Err(RecipeError::BadPattern { .. })
        ));
    }

    #[test]
    fn file_type_names() {
        for t in ALL_FILE_TYPES {
            assert_eq!(FileType::from_name(t.name()), Some(*t));
        }
        assert_eq!(FileType::from_name("q4_k"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::from_name("Q9_9"), None);
    }
}
