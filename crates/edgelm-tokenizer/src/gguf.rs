//! Reading [`VocabData`] from GGUF metadata (the keys llama.cpp's `llama_vocab::impl::load` reads).

use edgelm_gguf::{Array, Metadata};

use crate::vocab::{SpecialIds, VocabData};
use crate::TokenizerError;

fn wrap(key: &str) -> impl FnOnce(edgelm_gguf::GgufError) -> TokenizerError + '_ {
    move |source| TokenizerError::Gguf {
        key: key.to_string(),
        source,
    }
}

fn opt_u32(meta: &Metadata, key: &str) -> Result<Option<u32>, TokenizerError> {
    meta.get_opt_u32(key).map_err(wrap(key))
}

fn opt_bool(meta: &Metadata, key: &str) -> Result<Option<bool>, TokenizerError> {
    meta.get_opt_bool(key).map_err(wrap(key))
}

/// Collects the tokenizer keys of a GGUF file.
pub(crate) fn vocab_from_gguf(meta: &Metadata) -> Result<VocabData, TokenizerError> {
    const MODEL: &str = "tokenizer.ggml.model";
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const SCORES: &str = "tokenizer.ggml.scores";
    const TYPES: &str = "tokenizer.ggml.token_type";
    const MERGES: &str = "tokenizer.ggml.merges";
    let model = meta
        .get_opt_str(MODEL)
        .map_err(wrap(MODEL))?
        .ok_or_else(|| TokenizerError::MissingKey { key: MODEL.into() })?
        .to_string();
    let pre = meta
        .get_opt_str("tokenizer.ggml.pre")
        .map_err(wrap("tokenizer.ggml.pre"))?
        .map(str::to_string);
    if meta.get(TOKENS).is_none() {
        return Err(TokenizerError::MissingKey { key: TOKENS.into() });
    }
    let tokens = meta.get_str_array(TOKENS).map_err(wrap(TOKENS))?.to_vec();
    let scores = match meta.get(SCORES) {
        None => None,
        Some(_) => match meta.get_array(SCORES).map_err(wrap(SCORES))? {
            Array::F32(v) => Some(v.clone()),
            Array::I32(v) => Some(v.iter().map(|&x| x as f32).collect()),
            other => {
                return Err(TokenizerError::BadKey {
                    key: SCORES.into(),
                    message: format!(
                        "expected array[f32] or array[i32], found array[{}]",
                        other.elem_type_name()
                    ),
                })
            }
        },
    };
    let token_types = match meta.get(TYPES) {
        None => None,
        Some(_) => Some(meta.get_i32_array(TYPES).map_err(wrap(TYPES))?.to_vec()),
    };
    let merges = match meta.get(MERGES) {
        None if model == "gpt2" => return Err(TokenizerError::MissingKey { key: MERGES.into() }),
        None => Vec::new(),
        Some(_) => meta.get_str_array(MERGES).map_err(wrap(MERGES))?.to_vec(),
    };
    let id = |key: &str| opt_u32(meta, key);
    let either =
        |a: &str, b: &str| -> Result<Option<u32>, TokenizerError> { Ok(id(b)?.or(id(a)?)) };
    let special = SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        eom: id("tokenizer.ggml.eom_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        sep: id("tokenizer.ggml.seperator_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        mask: id("tokenizer.ggml.mask_token_id")?,
        // llama.cpp reads the deprecated keys after the new ones, so they win when both exist
        fim_pre: either(
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.prefix_token_id",
        )?,
        fim_suf: either(
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.suffix_token_id",
        )?,
        fim_mid: either(
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.middle_token_id",
        )?,
        fim_pad: id("tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: id("tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: id("tokenizer.ggml.fim_sep_token_id")?,
    };
    Ok(VocabData {
        model,
        pre,
        tokens,
        scores,
        token_types,
        merges,
        special,
        add_bos: opt_bool(meta, "tokenizer.ggml.add_bos_token")?,
        add_eos: opt_bool(meta, "tokenizer.ggml.add_eos_token")?,
        add_space_prefix: opt_bool(meta, "tokenizer.ggml.add_space_prefix")?,
        model_name: meta
            .get_opt_str("general.name")
            .map_err(wrap("general.name"))?
            .map(str::to_string),
    })
}
