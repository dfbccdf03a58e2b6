//! Writing trained weights back to a GGUF file that `edgelm run` (and llama.cpp) can load:
//! the source file's metadata and untrained tensors, the trained matrices in F32 or F16 and
//! the norm weights in F32 (as ggml stores them).

use std::path::Path;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};

use crate::model::TrainModel;
use crate::TrainError;

/// Element type of the exported matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    /// f32, exact.
    F32,
    /// IEEE half (round to nearest even), half the size.
    F16,
}

impl TrainModel {
    /// Writes the model as GGUF to `path`: `src`'s metadata (with `general.file_type` set to
    /// llama.cpp's ALL_F32 / MOSTLY_F16) and its tensors, the trained ones replaced.
    pub fn write_gguf(
        &self,
        src: &GgufFile,
        path: &Path,
        ty: ExportType,
    ) -> Result<(), TrainError> {
        let mut w = GgufWriter::new();
        for (key, value) in src.metadata().iter() {
            w.add_metadata(key, value.clone())?;
        }
        let file_type: u32 = match ty {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
        };
        w.set_metadata("general.file_type", Value::U32(file_type))?;
        // A student with fewer blocks than its source (distillation): the block count
        // follows the model, and the source's extra blocks are left out.
        let n_layer = self.config().n_layer;
        w.set_metadata(
            format!("{}.block_count", self.config().arch.name()),
            Value::U32(n_layer as u32),
        )?;
        // A narrower student: its widths replace the source's where they differ (the head
        // dimension is written out when it no longer follows from width / heads).
        let cfg = self.config();
        let arch = cfg.arch.name();
        let src_u64 = |k: &str| src.metadata().get_u64(&format!("{arch}.{k}")).ok();
        let mut widths = vec![
            ("embedding_length", cfg.n_embd),
            ("attention.head_count", cfg.n_head),
            ("attention.head_count_kv", cfg.n_head_kv),
            ("feed_forward_length", cfg.n_ff),
        ];
        if cfg.n_embd != cfg.n_head * cfg.head_dim {
            widths.push(("attention.key_length", cfg.head_dim));
            widths.push(("attention.value_length", cfg.head_dim));
        }
        for (k, v) in widths {
            if src_u64(k) != Some(v as u64) {
                w.set_metadata(format!("{arch}.{k}"), Value::U32(v as u32))?;
            }
        }
        let beyond = |name: &str| {
            name.strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, _)| i.parse::<usize>().ok())
                .is_some_and(|i| i >= n_layer)
        };
        for t in src.tensors() {
            if beyond(&t.name) {
                continue;
            }
            let Some(spec) = self.layout().get(&t.name) else {
                // Not trained (e.g. rope_freqs.weight): copied as it is.
                w.add_tensor(t.name.clone(), &t.dims, t.ty, src.tensor_data(t))?;
                continue;
            };
            let values = &self.params[spec.range()];
            let dims: Vec<u64> = spec.shape.iter().rev().map(|&d| d as u64).collect();
            let (gty, bytes): (GgmlType, Vec<u8>) = if ty == ExportType::F16 && spec.is_matrix() {
                let v: Vec<u8> = values
                    .iter()
                    .flat_map(|&x| edgelm_kernels::f32_to_f16(x).to_le_bytes())
                    .collect();
                (GgmlType::F16, v)
            } else {
                (
                    GgmlType::F32,
                    values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            };
            w.add_tensor(t.name.clone(), &dims, gty, bytes)?;
        }
        for spec in self.layout().specs() {
            if src.tensor(&spec.name).is_none() {
                return Err(TrainError::MissingTensor {
                    name: spec.name.clone(),
                    file: "the source GGUF".into(),
                });
            }
        }
        w.write_file(path)?;
        Ok(())
    }
}
